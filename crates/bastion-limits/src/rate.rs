//! Rates, and the GCRA arithmetic both backends share.
//!
//! A bucket is one number, its theoretical arrival time (TAT): the instant
//! at which the bucket would be full again. With `T` the emission interval
//! and `burst × T` the bucket's capacity in time, a request at `now`
//! computes
//!
//! ```text
//! tat'      = max(tat, now) + T
//! allowed   iff tat' - now <= burst × T
//! retry     = tat' - now - burst × T                 (when denied)
//! remaining = floor((burst × T - (tat' - now)) / T)  (when allowed)
//! reset     = tat' - now                             (until full again)
//! ```
//!
//! and stores `tat'` when allowed. An absent bucket is `tat = 0`, which is
//! never ahead of `now`: a full bucket.

use std::time::Duration;

use crate::LimitError;

/// The shortest emission interval a [`Rate`] may have. The Redis backend
/// counts in whole microseconds, so this is one microsecond.
pub const MIN_INTERVAL: Duration = Duration::from_micros(1);

/// The longest a bucket may take to refill from empty (`burst × interval`):
/// ten years of 366 days. This keeps every number the Redis script handles
/// (microseconds since the epoch plus a window) below 2^53, where Lua's
/// doubles are still exact integers.
pub const MAX_WINDOW: Duration = Duration::from_secs(10 * 366 * 86_400);

/// A rate: `count` per `period`, with a burst (bucket capacity) of `burst`
/// tokens, at least one.
///
/// Stored as the emission interval (`period / count`, in nanoseconds,
/// rounded down) and the burst; two rates that give the same interval and
/// burst are equal, whatever text they were written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rate {
    interval_ns: u64,
    burst: u32,
}

impl Rate {
    /// A rate of `count` per `period` with a bucket of `burst` tokens.
    ///
    /// Fails with [`LimitError::Invalid`] if `count` is 0, `period` is
    /// zero, `burst` is 0, the interval rounds to 0 ns or is shorter than
    /// [`MIN_INTERVAL`], or the bucket takes longer than [`MAX_WINDOW`] to
    /// refill.
    pub fn new(count: u32, period: Duration, burst: u32) -> Result<Rate, LimitError> {
        if count == 0 {
            return Err(LimitError::Invalid("the count must be at least 1".into()));
        }
        if period.is_zero() {
            return Err(LimitError::Invalid("the period must not be zero".into()));
        }
        if burst == 0 {
            return Err(LimitError::Invalid("the burst must be at least 1".into()));
        }
        let interval = period.as_nanos() / u128::from(count);
        if interval == 0 {
            return Err(LimitError::Invalid(format!("{count} per {period:?} is an interval of 0 ns")));
        }
        if interval < MIN_INTERVAL.as_nanos() {
            return Err(LimitError::Invalid(format!("{count} per {period:?} is more than one per microsecond")));
        }
        if interval * u128::from(burst) > MAX_WINDOW.as_nanos() {
            return Err(LimitError::Invalid(format!(
                "a burst of {burst} at {count} per {period:?} takes more than ten years to refill"
            )));
        }
        let interval_ns =
            u64::try_from(interval).map_err(|_| LimitError::Invalid(format!("{count} per {period:?} is too slow")))?;
        Ok(Rate { interval_ns, burst })
    }

    /// Parses a rate written `N/unit` or `N/<k><unit>`: `5/s`, `1000/s`,
    /// `2/m`, `100/h`, `10000/d`, `10/5s`, `30/15m`. Units are `s`, `m`
    /// (minute), `h` and `d`, or spelt out: `second`, `minute`, `hour`,
    /// `day` (also `sec`, `min` and the plurals). Whitespace around the
    /// parts is ignored.
    ///
    /// `burst` of `None` makes the burst the count: `10/m` allows ten calls
    /// at once, then one every six seconds.
    pub fn parse(text: &str, burst: Option<u32>) -> Result<Rate, LimitError> {
        let shown = text.trim();
        let invalid = |why: &str| LimitError::Invalid(format!("`{shown}`: {why}"));
        let (count, per) = shown.split_once('/').ok_or_else(|| invalid("expected `N/unit`, e.g. `10/s` or `100/m`"))?;
        let count = digits(count.trim())
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| invalid("the count must be a whole number"))?;
        let per = per.trim();
        let split = per.find(|c: char| !c.is_ascii_digit()).unwrap_or(per.len());
        let (multiple, unit) = per.split_at(split);
        let multiple = if multiple.is_empty() {
            1
        } else {
            digits(multiple).ok_or_else(|| invalid("the period's multiple is too large"))?
        };
        let unit_secs: u64 = match unit.trim() {
            "s" | "sec" | "second" | "secs" | "seconds" => 1,
            "m" | "min" | "minute" | "mins" | "minutes" => 60,
            "h" | "hour" | "hours" => 3_600,
            "d" | "day" | "days" => 86_400,
            _ => return Err(invalid("the unit must be s, m, h or d")),
        };
        let secs = multiple.checked_mul(unit_secs).ok_or_else(|| invalid("the period is too long"))?;
        Rate::new(count, Duration::from_secs(secs), burst.unwrap_or(count)).map_err(|error| match error {
            LimitError::Invalid(why) => invalid(&why),
            other => other,
        })
    }

    /// The emission interval: one token comes back per interval.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns)
    }

    /// The emission interval in nanoseconds.
    pub fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    /// The bucket's capacity in tokens.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The bucket's capacity in time, `burst × interval`: how long an empty
    /// bucket takes to fill.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.capacity_ns())
    }

    /// The policy the IETF `RateLimit-Policy` header states for this rate:
    /// `burst` tokens per `burst × interval`, as (quota, window in seconds
    /// rounded up, at least 1).
    pub fn policy(&self) -> (u32, u64) {
        let secs = self.capacity_ns().div_ceil(1_000_000_000).max(1);
        (self.burst, secs)
    }

    /// `burst × interval` in nanoseconds. Below [`MAX_WINDOW`], so it fits.
    pub(crate) fn capacity_ns(&self) -> u64 {
        self.interval_ns.saturating_mul(u64::from(self.burst))
    }
}

/// `text` as a number if it is nothing but ASCII digits (no sign).
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// One bucket a request takes a token from: a key (who or what is limited,
/// e.g. `key:alice` or `tool:github/create_issue`) at a rate.
#[derive(Debug, Clone)]
pub struct Take {
    /// What the bucket limits. The same key at another rate is another
    /// bucket.
    pub key: String,
    /// The bucket's rate.
    pub rate: Rate,
}

/// The state of one bucket after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    /// Tokens left in the bucket.
    pub remaining: u32,
    /// Time until the bucket is full again.
    pub reset: Duration,
}

/// The outcome of checking several buckets at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `None`: every bucket had a token and one was taken from each.
    /// `Some(i)`: `takes[i]` had none, and no bucket was charged.
    pub denied: Option<usize>,
    /// When the denied bucket will have a token (zero when allowed).
    pub retry_after: Duration,
    /// One per take, in order: after charging when allowed, as they stand
    /// (uncharged) when denied.
    pub states: Vec<BucketState>,
}

impl Verdict {
    /// Whether every bucket had a token.
    pub fn allowed(&self) -> bool {
        self.denied.is_none()
    }

    /// The state with the fewest tokens left (the first of equals), which
    /// is what a single `RateLimit` header reports; `None` without takes.
    pub fn tightest(&self) -> Option<(usize, BucketState)> {
        if let Some(denied) = self.denied {
            return self.states.get(denied).map(|state| (denied, *state));
        }
        self.states.iter().copied().enumerate().min_by_key(|(_, state)| state.remaining)
    }
}

/// The GCRA step, pure: given a bucket's stored TAT (`tat`, nanoseconds,
/// 0 for none) and `now` (nanoseconds on the same clock), returns
/// `Ok(new_tat)` if the bucket has a token, to be stored, or
/// `Err(retry_after_ns)` if it has none, the bucket unchanged.
///
/// ```text
/// tat' = max(tat, now) + T
/// allowed iff tat' - now <= burst × T
/// retry = tat' - now - burst × T
/// ```
///
/// A clock that goes backwards (`now` before an earlier `now`) only makes
/// `tat' - now` larger, so it can never grant more than the burst. The
/// arithmetic is done in 128 bits; a TAT past `u64::MAX` (which a clock in
/// nanoseconds reaches after 584 years) is refused with the longest retry.
pub fn gcra(tat: u64, now: u64, rate: Rate) -> Result<u64, u64> {
    let interval = u128::from(rate.interval_ns);
    let capacity = u128::from(rate.capacity_ns());
    let now_wide = u128::from(now);
    // tat' = max(tat, now) + T
    let new_tat = u128::from(tat.max(now)) + interval;
    // How far the bucket is ahead of now: the tokens in use, in time.
    let ahead = new_tat - now_wide;
    if ahead > capacity {
        // retry = tat' - now - burst × T; below tat', so it fits.
        return Err(u64::try_from(ahead - capacity).unwrap_or(u64::MAX));
    }
    u64::try_from(new_tat).map_err(|_| u64::MAX)
}

/// The state of a bucket whose TAT is `tat` at `now`, without charging it:
///
/// ```text
/// reset     = max(tat, now) - now
/// remaining = floor((burst × T - reset) / T)
/// ```
///
/// After a successful [`gcra`] step, `peek(new_tat, now, rate)` is the
/// state the caller reports.
pub fn peek(tat: u64, now: u64, rate: Rate) -> BucketState {
    let ahead = tat.saturating_sub(now);
    let capacity = rate.capacity_ns();
    let remaining = capacity.saturating_sub(ahead) / rate.interval_ns.max(1);
    BucketState {
        // At most the burst, which is a u32.
        remaining: u32::try_from(remaining).unwrap_or(rate.burst),
        reset: Duration::from_nanos(ahead),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn rate(text: &str, burst: Option<u32>) -> Rate {
        Rate::parse(text, burst).unwrap()
    }

    #[test]
    fn new_checks_its_arguments() {
        let second = Duration::from_secs(1);
        assert!(matches!(Rate::new(0, second, 1), Err(LimitError::Invalid(_))));
        assert!(matches!(Rate::new(1, Duration::ZERO, 1), Err(LimitError::Invalid(_))));
        assert!(matches!(Rate::new(1, second, 0), Err(LimitError::Invalid(_))));
        // 2^32-1 per nanosecond rounds to 0 ns.
        assert!(Rate::new(u32::MAX, Duration::from_nanos(1), 1).is_err());
        // Below a microsecond: the Redis backend could not express it.
        assert!(Rate::new(2_000_000, second, 1).is_err());
        let fastest = Rate::new(1_000_000, second, 1).unwrap();
        assert_eq!(fastest.interval(), MIN_INTERVAL);
        // A bucket that takes more than ten years to fill.
        assert!(Rate::new(1, Duration::from_secs(86_400), 4_000).is_err());
        assert!(Rate::new(1, Duration::from_secs(86_400), 3_000).is_ok());

        let r = Rate::new(3, second, 5).unwrap();
        assert_eq!(r.interval_ns(), 333_333_333);
        assert_eq!(r.burst(), 5);
        assert_eq!(r.window(), Duration::from_nanos(5 * 333_333_333));
    }

    #[test]
    fn parse_accepts() {
        assert_eq!(rate("5/s", None), Rate::new(5, Duration::from_secs(1), 5).unwrap());
        assert_eq!(rate("1000/s", None).interval(), Duration::from_millis(1));
        assert_eq!(rate("2/m", None).interval(), Duration::from_secs(30));
        assert_eq!(rate("2/minute", None).interval(), Duration::from_secs(30));
        assert_eq!(rate("60/h", None).interval(), Duration::from_secs(60));
        assert_eq!(rate("24/day", None).interval(), Duration::from_secs(3_600));
        assert_eq!(rate("1/second", None).interval(), Duration::from_secs(1));
        assert_eq!(rate("10/5s", None).interval(), Duration::from_millis(500));
        assert_eq!(rate("30/15m", None).interval(), Duration::from_secs(30));
        assert_eq!(rate(" 10 / 5 s ", None), rate("10/5s", None));
        assert_eq!(rate("1/hour", None).burst(), 1);
        assert_eq!(rate("10/s", None).burst(), 10);
        assert_eq!(rate("10/s", Some(3)).burst(), 3);
        assert_eq!(rate("10/s", Some(3)).interval(), Duration::from_millis(100));
    }

    #[test]
    fn parse_rejects() {
        for text in [
            "0/s",
            "5",
            "x/s",
            "5/fortnight",
            "-1/s",
            "+1/s",
            "1.5/s",
            "5/",
            "/s",
            "",
            "5/0s",
            "5/-2s",
            "5/s/s",
            "5/ms",
            "99999999999/s",
            "5/99999999999999999999d",
            "2000000/s",
        ] {
            let error = Rate::parse(text, None).expect_err(text);
            assert!(matches!(error, LimitError::Invalid(_)), "{text}");
        }
        assert!(Rate::parse("5/s", Some(0)).is_err());
        let message = Rate::parse("5/fortnight", None).unwrap_err().to_string();
        assert!(message.starts_with("invalid rate: `5/fortnight`"), "{message}");
    }

    #[test]
    fn policy_states_the_burst_window() {
        // 10 per second, burst 10: 10 per 1 s.
        assert_eq!(rate("10/s", None).policy(), (10, 1));
        // 100 per minute, burst 20: 20 per 12 s.
        assert_eq!(rate("100/m", Some(20)).policy(), (20, 12));
        // 3 per second, burst 1: 1 per 333 ms, rounded up to 1 s.
        assert_eq!(rate("3/s", Some(1)).policy(), (1, 1));
        // 3 per second, burst 4: 4 per 1.33 s, rounded up.
        assert_eq!(rate("3/s", Some(4)).policy(), (4, 2));
        assert_eq!(rate("1/d", None).policy(), (1, 86_400));
    }

    #[test]
    fn burst_at_once_then_one_per_interval() {
        // 1 per 100 ms, burst 3.
        let r = rate("10/s", Some(3));
        let now = 50 * SEC;
        let mut tat = 0;
        for left in [2, 1, 0] {
            tat = gcra(tat, now, r).unwrap();
            let state = peek(tat, now, r);
            assert_eq!(state.remaining, left);
            assert_eq!(state.reset, Duration::from_millis(100 * (3 - u64::from(left))));
        }
        assert_eq!(tat, now + 300 * MS);
        // Empty: the next token is 100 ms away.
        assert_eq!(gcra(tat, now, r), Err(100 * MS));
        assert_eq!(gcra(tat, now + 40 * MS, r), Err(60 * MS));
        assert_eq!(gcra(tat, now + 100 * MS - 1, r), Err(1));
        // At exactly the retry, one token and no more.
        let t1 = now + 100 * MS;
        tat = gcra(tat, t1, r).unwrap();
        assert_eq!(peek(tat, t1, r), BucketState { remaining: 0, reset: Duration::from_millis(300) });
        assert_eq!(gcra(tat, t1, r), Err(100 * MS));
        // Then one per interval.
        for k in 2..10 {
            let t = now + k * 100 * MS;
            tat = gcra(tat, t, r).unwrap();
            assert_eq!(gcra(tat, t, r), Err(100 * MS));
        }
        // Half an interval idle gives nothing; a whole one gives one token.
        let t = now + 950 * MS;
        assert_eq!(gcra(tat, t, r), Err(50 * MS));
        assert_eq!(peek(tat, t, r).remaining, 0);
        let t = now + 1_000 * MS;
        assert_eq!(peek(tat, t, r).remaining, 1);
    }

    #[test]
    fn uneven_interval_is_exact() {
        // 1 per 333 333 333 ns, burst 2.
        let r = rate("3/s", Some(2));
        let t = r.interval_ns();
        let now = 7 * SEC;
        let tat = gcra(0, now, r).unwrap();
        let tat = gcra(tat, now, r).unwrap();
        assert_eq!(tat, now + 2 * t);
        assert_eq!(gcra(tat, now, r), Err(t));
        assert_eq!(gcra(tat, now + t - 1, r), Err(1));
        assert_eq!(gcra(tat, now + t, r), Ok(now + 3 * t));
        assert_eq!(peek(tat, now + t / 2, r), BucketState { remaining: 0, reset: Duration::from_nanos(2 * t - t / 2) });
    }

    #[test]
    fn absent_bucket_is_full() {
        let r = rate("5/m", None);
        assert_eq!(peek(0, 9 * SEC, r), BucketState { remaining: 5, reset: Duration::ZERO });
        // At time zero too.
        assert_eq!(gcra(0, 0, r), Ok(12 * SEC));
        assert_eq!(peek(12 * SEC, 0, r).remaining, 4);
    }

    #[test]
    fn long_idle_resets_to_full() {
        let r = rate("1/s", Some(4));
        let now = 100 * SEC;
        let mut tat = 0;
        for _ in 0..4 {
            tat = gcra(tat, now, r).unwrap();
        }
        assert!(gcra(tat, now, r).is_err());
        // An hour later the bucket is full, not fuller.
        let later = now + 3_600 * SEC;
        assert_eq!(peek(tat, later, r), BucketState { remaining: 4, reset: Duration::ZERO });
        for _ in 0..4 {
            tat = gcra(tat, later, r).unwrap();
        }
        assert_eq!(gcra(tat, later, r), Err(SEC));
    }

    #[test]
    fn clock_going_backwards_grants_nothing_extra() {
        let r = rate("10/s", Some(3));
        let now = 10 * SEC;
        let mut tat = gcra(0, now, r).unwrap();
        // The clock steps back 50 ms: the bucket is further ahead, not behind.
        let earlier = now - 50 * MS;
        assert_eq!(peek(tat, earlier, r).remaining, 1);
        tat = gcra(tat, earlier, r).unwrap();
        assert_eq!(gcra(tat, earlier, r), Err(50 * MS));
        // Far back: nothing at all, and no panic.
        assert_eq!(peek(tat, 0, r).remaining, 0);
        assert!(gcra(tat, 0, r).is_err());
        assert!(gcra(tat, 1, r).is_err());
        // Back at the original time: still only the burst in total.
        let mut allowed = 2;
        while gcra(tat, now, r).is_ok() {
            tat = gcra(tat, now, r).unwrap();
            allowed += 1;
        }
        assert_eq!(allowed, 3);
    }

    #[test]
    fn huge_values_saturate_without_panicking() {
        let slow = Rate::new(1, MAX_WINDOW, 1).unwrap();
        let fast = rate("1000000/s", Some(1));
        for r in [slow, fast] {
            for (tat, now) in [
                (u64::MAX, u64::MAX),
                (u64::MAX, 0),
                (0, u64::MAX),
                (u64::MAX - 1, u64::MAX - 1),
                (u64::MAX / 2, u64::MAX),
            ] {
                let _ = peek(tat, now, r);
                match gcra(tat, now, r) {
                    Ok(new) => {
                        assert!(new > tat.max(now));
                        assert!(new - now <= r.capacity_ns());
                    }
                    Err(retry) => assert!(retry > 0),
                }
            }
            // No TAT beyond u64::MAX: refused, not wrapped.
            assert_eq!(gcra(u64::MAX, u64::MAX, r), Err(u64::MAX));
            assert_eq!(gcra(0, u64::MAX, r), Err(u64::MAX));
            // tat far ahead of now: the retry is the distance, exactly.
            assert_eq!(gcra(u64::MAX - r.interval_ns(), 0, r), Err(u64::MAX - r.capacity_ns()));
        }
    }

    #[test]
    fn tightest_state() {
        let state = |remaining| BucketState { remaining, reset: Duration::ZERO };
        let verdict = Verdict { denied: None, retry_after: Duration::ZERO, states: vec![state(5), state(2), state(2)] };
        assert!(verdict.allowed());
        assert_eq!(verdict.tightest(), Some((1, state(2))));
        let verdict = Verdict { denied: Some(2), ..verdict };
        assert_eq!(verdict.tightest(), Some((2, state(2))));
    }
}
