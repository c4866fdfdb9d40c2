//! The Redis backend: buckets shared by every replica.
//!
//! One check is one round trip: `EVALSHA` of [`SCRIPT`] (loaded again if
//! the server answers `NOSCRIPT`), which reads the time with `TIME` — so
//! replicas whose clocks disagree still share one clock — checks every
//! bucket, and only if all have a token writes each charged bucket back
//! with an expiry at which it is full again, so idle buckets vanish.
//!
//! The arithmetic is [`gcra`](crate::gcra)'s, in microseconds rather than
//! nanoseconds: Lua's numbers are doubles, exact for integers below 2^53,
//! and microseconds since the epoch stay far below that (the longest
//! bucket window, [`MAX_WINDOW`](crate::MAX_WINDOW), included). Intervals
//! are rounded to the nearest whole microsecond, which is why
//! [`Rate::new`](crate::Rate::new) refuses intervals shorter than one.
//!
//! The keys of one check are used by one script, so they must live on one
//! server: a single Redis or a primary with replicas, not Redis Cluster.

use std::time::Duration;

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::LimitError;
use crate::rate::{BucketState, Take, Verdict};

/// How long connecting, and each check, may take before the backend is
/// taken as unavailable.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

/// The check, all-or-nothing over every key.
///
/// `KEYS[i]` is a bucket; `ARGV[2i-1]` and `ARGV[2i]` are its interval in
/// microseconds and its burst. A bucket's value is its TAT in microseconds
/// since the epoch. Takes are applied in order, so a bucket listed twice
/// is charged twice; the first take without a token denies the check and
/// nothing is written.
///
/// Returns `{denied, retry_after_us, remaining_1, reset_1_us, ...}`:
/// `denied` is 0 when allowed, else the 1-based index of the denied take;
/// the states are after charging when allowed and as stored when denied.
const SCRIPT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

-- floor(a / b) for non-negative integers below 2^53, corrected for the
-- rounding of the floating-point quotient.
local function div(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 end
  if (q + 1) * b <= a then q = q + 1 end
  return q
end

local n = #KEYS
local stored, pending = {}, {}
for i = 1, n do
  local key = KEYS[i]
  if stored[key] == nil then
    local value = redis.call('GET', key)
    stored[key] = (value and tonumber(value)) or 0
    pending[key] = stored[key]
  end
end

-- tat' = max(tat, now) + T; allowed iff tat' - now <= burst * T;
-- retry = tat' - now - burst * T.
local denied, retry = 0, 0
for i = 1, n do
  local key = KEYS[i]
  local interval = tonumber(ARGV[2 * i - 1])
  local capacity = interval * tonumber(ARGV[2 * i])
  local tat = math.max(pending[key], now) + interval
  if tat - now <= capacity then
    pending[key] = tat
  else
    denied, retry = i, tat - now - capacity
    break
  end
end

-- reset = max(tat, now) - now; remaining = floor((burst * T - reset) / T).
local reply = {denied, retry}
for i = 1, n do
  local key = KEYS[i]
  local interval = tonumber(ARGV[2 * i - 1])
  local capacity = interval * tonumber(ARGV[2 * i])
  local tat = stored[key]
  if denied == 0 then tat = pending[key] end
  local ahead = math.max(tat, now) - now
  local remaining = 0
  if ahead < capacity then remaining = div(capacity - ahead, interval) end
  reply[#reply + 1] = remaining
  reply[#reply + 1] = ahead
end

if denied == 0 then
  local written = {}
  for i = 1, n do
    local key = KEYS[i]
    local tat = pending[key]
    if not written[key] and tat ~= stored[key] then
      written[key] = true
      local ttl = math.ceil((tat - now) / 1000) + 1
      redis.call('SET', key, string.format('%.0f', tat), 'PX', string.format('%.0f', ttl))
    end
  end
end
return reply
"#;

/// Token buckets in Redis, shared by every replica of the gateway.
///
/// Keys are `{prefix}{key}|{interval_ns}|{burst}`, so a changed rate is a
/// fresh bucket, as with [`LocalLimiter`](crate::LocalLimiter).
#[derive(Clone)]
pub struct RedisLimiter {
    connection: ConnectionManager,
    script: Script,
    prefix: String,
    /// The server's URL without credentials, for error messages.
    shown: String,
    timeout: Duration,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("url", &self.shown)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// Connects to the Redis at `url` (`redis://[user:password@]host:port/db`)
    /// and loads the script, failing within about a second if Redis cannot
    /// be reached. `prefix` starts every key, e.g. `bastion:rl:`.
    ///
    /// Connecting and each check time out after 500 ms.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisLimiter, LimitError> {
        Self::connect_with_timeout(url, prefix, DEFAULT_TIMEOUT).await
    }

    /// [`connect`](Self::connect) with another timeout for connecting and
    /// for each check.
    pub async fn connect_with_timeout(url: &str, prefix: &str, timeout: Duration) -> Result<RedisLimiter, LimitError> {
        let shown = redact(url);
        let failed = |error: &dyn std::fmt::Display| LimitError::Backend(scrub(&format!("{shown}: {error}"), url));
        let client = redis::Client::open(url).map_err(|e| failed(&e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(timeout);
        let script = Script::new(SCRIPT);
        let connect = async {
            let mut connection = ConnectionManager::new_with_config(client, config).await?;
            script.prepare_invoke().load_async(&mut connection).await?;
            Ok::<_, redis::RedisError>(connection)
        };
        let connection = tokio::time::timeout(timeout * 3, connect)
            .await
            .map_err(|_| failed(&"timed out connecting"))?
            .map_err(|e| failed(&e))?;
        Ok(RedisLimiter { connection, script, prefix: prefix.to_owned(), shown, timeout })
    }

    /// Checks all `takes` on Redis's clock, all-or-nothing, in one round
    /// trip; see [`LocalLimiter::check_at`](crate::LocalLimiter::check_at)
    /// for the semantics, which are the same. Fails with
    /// [`LimitError::Backend`] if Redis does not answer in time.
    pub async fn check(&self, takes: &[Take]) -> Result<Verdict, LimitError> {
        if takes.is_empty() {
            return Ok(Verdict { denied: None, retry_after: Duration::ZERO, states: Vec::new() });
        }
        let mut invocation = self.script.prepare_invoke();
        for take in takes {
            let interval_us = take.rate.interval_ns().saturating_add(500) / 1_000;
            invocation.key(self.bucket_key(take)).arg(interval_us.max(1)).arg(take.rate.burst());
        }
        let mut connection = self.connection.clone();
        let reply: Vec<i64> = tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection))
            .await
            .map_err(|_| LimitError::Backend(format!("{}: timed out", self.shown)))?
            .map_err(|e| LimitError::Backend(format!("{}: {e}", self.shown)))?;
        verdict(&reply, takes.len()).ok_or_else(|| LimitError::Backend(format!("{}: unexpected reply", self.shown)))
    }

    /// The Redis key of `take`'s bucket.
    fn bucket_key(&self, take: &Take) -> String {
        format!("{}{}|{}|{}", self.prefix, take.key, take.rate.interval_ns(), take.rate.burst())
    }
}

/// The script's reply as a verdict, if it has the expected shape.
fn verdict(reply: &[i64], takes: usize) -> Option<Verdict> {
    let (&[denied, retry_us], states) = reply.split_first_chunk::<2>()?;
    if states.len() != 2 * takes {
        return None;
    }
    let micros = |us: i64| u64::try_from(us).ok().map(Duration::from_micros);
    let denied = match usize::try_from(denied).ok()? {
        0 => None,
        i if i <= takes => Some(i - 1),
        _ => return None,
    };
    let states = states
        .chunks_exact(2)
        .map(|pair| Some(BucketState { remaining: u32::try_from(pair[0]).ok()?, reset: micros(pair[1])? }))
        .collect::<Option<Vec<_>>>()?;
    Some(Verdict { denied, retry_after: micros(retry_us)?, states })
}

/// `url` without its credentials, query or fragment: what error messages
/// and logs may show.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(unparsable Redis URL)".into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let path = tail.split(['?', '#']).next().unwrap_or("");
    format!("{scheme}://{host}{path}")
}

/// `message` with the password `url` carries (in its user information or
/// a `pass`/`password` parameter), or the whole URL, replaced, in case an
/// error quoted them.
fn scrub(message: &str, url: &str) -> String {
    let mut secrets = vec![url.to_owned()];
    if let Some((_, rest)) = url.split_once("://") {
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            secrets.push(userinfo.to_owned());
            if let Some((_, password)) = userinfo.split_once(':') {
                secrets.push(password.to_owned());
            }
        }
        if let Some((_, query)) = rest.split_once('?') {
            for pair in query.split(['&', '#']) {
                if let Some(("pass" | "password", value)) = pair.split_once('=') {
                    secrets.push(value.to_owned());
                }
            }
        }
    }
    secrets
        .iter()
        .filter(|secret| !secret.is_empty())
        .fold(message.to_owned(), |text, secret| text.replace(secret.as_str(), "***"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LocalLimiter, Rate};
    use std::time::Instant;

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(redact("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        assert_eq!(redact("redis://:s3cret@cache:6379/2"), "redis://cache:6379/2");
        assert_eq!(redact("rediss://user:p@ss@cache"), "rediss://cache");
        assert_eq!(redact("redis+unix:///run/redis.sock?db=1&pass=s3cret"), "redis+unix:///run/redis.sock");
        assert_eq!(redact("cache:6379"), "(unparsable Redis URL)");

        let url = "redis://admin:s3cret@cache/0?password=t0ken";
        let message = scrub(&format!("failed for {url}: bad s3cret, t0ken"), url);
        assert!(!message.contains("s3cret") && !message.contains("t0ken"), "{message}");
        assert_eq!(scrub("connection refused", url), "connection refused");
    }

    #[test]
    fn replies_are_checked() {
        assert_eq!(
            verdict(&[2, 1_500, 4, 600_000, 0, 100_000], 2),
            Some(Verdict {
                denied: Some(1),
                retry_after: Duration::from_micros(1_500),
                states: vec![
                    BucketState { remaining: 4, reset: Duration::from_millis(600) },
                    BucketState { remaining: 0, reset: Duration::from_millis(100) },
                ],
            })
        );
        assert_eq!(verdict(&[0, 0, 1, 2], 1).unwrap().denied, None);
        assert_eq!(verdict(&[0, 0, 1, 2], 2), None);
        assert_eq!(verdict(&[2, 0, 1, 2], 1), None);
        assert_eq!(verdict(&[0, -1, 1, 2], 1), None);
        assert_eq!(verdict(&[0, 0, -1, 2], 1), None);
        assert_eq!(verdict(&[0], 0), None);
    }

    #[tokio::test]
    async fn unreachable_redis_fails_fast_without_the_password() {
        let started = Instant::now();
        let error = RedisLimiter::connect("redis://user:s3cret@127.0.0.1:1/0", "t:").await.unwrap_err();
        assert!(matches!(error, LimitError::Backend(_)), "{error}");
        let message = error.to_string();
        assert!(!message.contains("s3cret"), "{message}");
        assert!(message.contains("redis://127.0.0.1:1/0"), "{message}");
        // Generous: a refused connection fails in milliseconds, and the
        // whole attempt is bounded by three timeouts.
        assert!(started.elapsed() < Duration::from_secs(5));

        let error = RedisLimiter::connect("not a url", "t:").await.unwrap_err();
        assert!(matches!(error, LimitError::Backend(_)), "{error}");
    }

    /// The Redis to test against, from `BASTION_TEST_REDIS_URL`.
    fn redis_url() -> Option<String> {
        let url = std::env::var("BASTION_TEST_REDIS_URL").ok().filter(|u| !u.is_empty());
        if url.is_none() {
            println!("BASTION_TEST_REDIS_URL is not set: skipping the Redis test");
        }
        url
    }

    fn take(key: &str, rate: &str, burst: u32) -> Take {
        Take { key: key.into(), rate: Rate::parse(rate, Some(burst)).unwrap() }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_backend() {
        let Some(url) = redis_url() else {
            return;
        };
        // A prefix of its own, so reruns and other users do not collide.
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let prefix = format!("bastion:test:{}:{stamp}:", std::process::id());
        let limiter = RedisLimiter::connect(&url, &prefix).await.unwrap();
        assert!(format!("{limiter:?}").contains(&prefix));

        // Burst, then denial. One per hour, so the clock does not refill
        // anything during the test.
        let slow = [take("burst", "1/h", 3)];
        for left in [2, 1, 0] {
            let verdict = limiter.check(&slow).await.unwrap();
            assert_eq!(verdict.denied, None);
            assert_eq!(verdict.states[0].remaining, left);
            assert_eq!(verdict.retry_after, Duration::ZERO);
        }
        let verdict = limiter.check(&slow).await.unwrap();
        assert_eq!(verdict.denied, Some(0));
        assert_eq!(verdict.states[0].remaining, 0);
        assert!(verdict.retry_after > Duration::from_secs(3_590));
        assert!(verdict.retry_after <= Duration::from_secs(3_600));
        assert!(verdict.states[0].reset > Duration::from_secs(3 * 3_600 - 10));

        // A fast bucket refills: the retry it gives is honoured.
        let fast = [take("fast", "20/s", 1)];
        assert!(limiter.check(&fast).await.unwrap().allowed());
        let verdict = limiter.check(&fast).await.unwrap();
        if verdict.denied == Some(0) {
            assert!(verdict.retry_after <= Duration::from_millis(50));
            tokio::time::sleep(verdict.retry_after + Duration::from_millis(5)).await;
        }
        assert!(limiter.check(&fast).await.unwrap().allowed());

        // All-or-nothing: a denial charges no other bucket.
        let wide = take("wide", "1/h", 100);
        let narrow = take("narrow", "1/h", 2);
        let both = [wide.clone(), narrow.clone()];
        assert!(limiter.check(&both).await.unwrap().allowed());
        assert!(limiter.check(&both).await.unwrap().allowed());
        for _ in 0..3 {
            let verdict = limiter.check(&both).await.unwrap();
            assert_eq!(verdict.denied, Some(1));
            assert_eq!(verdict.states[0].remaining, 98);
        }
        let verdict = limiter.check(std::slice::from_ref(&wide)).await.unwrap();
        assert_eq!(verdict.states[0].remaining, 97);

        // The same sequence gives the same verdicts locally.
        let local = LocalLimiter::new();
        let sequence = [
            vec![take("s1", "1/h", 2), take("s2", "1/h", 3)],
            vec![take("s2", "1/h", 3)],
            vec![take("s2", "1/h", 3), take("s2", "1/h", 3)],
            vec![take("s1", "1/h", 2), take("s2", "1/h", 3)],
            vec![take("s1", "1/h", 2)],
            vec![take("s1", "1/h", 2)],
            vec![take("s1", "2/h", 2)],
        ];
        for takes in &sequence {
            let here = local.check(takes);
            let there = limiter.check(takes).await.unwrap();
            assert_eq!(here.denied, there.denied, "{takes:?}");
            let left = |v: &Verdict| v.states.iter().map(|s| s.remaining).collect::<Vec<_>>();
            assert_eq!(left(&here), left(&there), "{takes:?}");
        }

        // Charged keys expire when their bucket is full again.
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut direct = client.get_multiplexed_async_connection().await.unwrap();
        let expiring = take("expiring", "1/m", 5);
        let verdict = limiter.check(std::slice::from_ref(&expiring)).await.unwrap();
        let pttl: i64 = redis::cmd("PTTL").arg(limiter.bucket_key(&expiring)).query_async(&mut direct).await.unwrap();
        assert!(pttl > 0, "{pttl}");
        assert!(pttl <= verdict.states[0].reset.as_millis() as i64 + 1, "{pttl}");
        assert!(pttl > 11_000, "{pttl}");
        // A denied check writes nothing, not even a bucket it could charge.
        let untouched = take("untouched", "1/h", 5);
        let verdict = limiter.check(&[untouched.clone(), slow[0].clone()]).await.unwrap();
        assert_eq!(verdict.denied, Some(1));
        assert_eq!(verdict.states[0].remaining, 5);
        let absent: Option<String> =
            redis::cmd("GET").arg(limiter.bucket_key(&untouched)).query_async(&mut direct).await.unwrap();
        assert_eq!(absent, None);

        // After the script cache is flushed, EVALSHA falls back and loads it.
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut direct).await.unwrap();
        assert!(limiter.check(&[take("flushed", "1/s", 1)]).await.unwrap().allowed());

        // Two limiters, as on two replicas, share one budget exactly.
        let other = RedisLimiter::connect(&url, &prefix).await.unwrap();
        let shared = [take("shared", "1/h", 10)];
        let mut tasks = Vec::new();
        for limiter in [limiter.clone(), other] {
            for _ in 0..4 {
                let limiter = limiter.clone();
                let shared = shared.clone();
                tasks.push(tokio::spawn(async move {
                    let mut allowed = 0;
                    for _ in 0..5 {
                        if limiter.check(&shared).await.unwrap().allowed() {
                            allowed += 1;
                        }
                    }
                    allowed
                }));
            }
        }
        let mut allowed = 0;
        for task in tasks {
            allowed += task.await.unwrap();
        }
        assert_eq!(allowed, 10);
    }
}
