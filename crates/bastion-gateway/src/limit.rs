//! The limit phase of the request path, between authorize and inspect
//! request: the emergency lockdown, rate limits (`limits.rules`), quotas
//! (`limits.quotas`) and calls in flight per server.
//!
//! - **Lockdown** (`bastion lockdown on [--server NAME]`) is kept in the
//!   store and read again whenever the store says it changed, so every
//!   replica refuses within moments. Until it has been read once, nothing
//!   is let through.
//! - **Rates** are GCRA buckets (`bastion_limits`): in this process, or in
//!   Redis with `limits.redis` so that replicas share each budget. A
//!   request takes one token from every bucket it falls under, or none:
//!   the first empty bucket refuses it. A bucket is keyed by its rule's
//!   scope, match and subject and by its rate, so a reload keeps the
//!   buckets of rules that did not change.
//! - **Quotas** count admitted calls per principal per UTC day or month:
//!   counted here, added to the store's totals every second (the store
//!   answers with the total of every replica), so a quota holds across
//!   restarts and replicas, overshooting by at most what other replicas
//!   admitted in that second.
//! - **Concurrency** per server waits up to the rule's `wait` for a call
//!   in flight to end.
//!
//! A refusal is JSON-RPC error [`jsonrpc::LIMIT_REACHED`] whose `data`
//! carries `retryAfter` (seconds) and the IETF rate-limit fields; the HTTP
//! edge turns it into 429 with `Retry-After`, `RateLimit` and
//! `RateLimit-Policy` where the answer is not already on a stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bastion_core::config::{LimitScope, LimitedClass, LimitsConfig, OnRedisError, QuotaPeriod};
use bastion_core::jsonrpc;
use bastion_limits::{GatePermit, LocalLimiter, Period, Rate, RedisLimiter, Take, Verdict};
use bastion_store::Store;
use dashmap::DashMap;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Denial, Metrics};
use crate::proxy::Refusal;

/// Prefix of the bucket keys in Redis.
const REDIS_PREFIX: &str = "bastion:rl:";
/// How often quota counts are added to the store's totals.
const QUOTA_FLUSH: Duration = Duration::from_secs(1);
/// How often full buckets and idle gates are dropped from memory.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// A quota counter unused this long is forgotten (its total stays in the
/// store).
const QUOTA_IDLE_SECS: u64 = 600;

/// What the limits look at in one request.
pub struct Subject<'a> {
    pub user: &'a str,
    pub groups: &'a [String],
    /// `None`: a method only the lockdown applies to.
    pub class: Option<LimitedClass>,
    /// The server and the item's name as callers see it (`server__tool`,
    /// or the resource's URI); `None` for a list call.
    pub item: Option<(&'a str, &'a str)>,
}

/// What an admitted request holds until it ends.
#[must_use]
pub struct Admission {
    _permits: Vec<GatePermit>,
}

impl Admission {
    /// An admission that holds nothing.
    pub fn none() -> Admission {
        Admission { _permits: Vec::new() }
    }
}

/// The name tools a server does not list are counted under by `tool` and
/// `user_tool` rules.
pub const UNLISTED: &str = "(unlisted)";

/// A rule, ready for checking.
struct Compiled {
    rules: Vec<CompiledRule>,
    /// Whether a `tool` or `user_tool` rule without `match` gives each
    /// item a budget of its own.
    each_item: bool,
}

struct CompiledRule {
    scope: LimitScope,
    rule: bastion_core::config::LimitRule,
    rate: Option<Rate>,
    label: String,
    /// Identifies the rule in bucket keys without its position, so that a
    /// reload that moves it keeps its buckets.
    key_prefix: String,
}

/// The lockdowns in force, as last read from the store.
#[derive(Debug, Default)]
pub struct LockdownState {
    /// Whether the store has been read at least once.
    loaded: bool,
    /// Every server locked, with the reason given.
    all: Option<Option<String>>,
    /// Servers locked one by one.
    servers: HashMap<String, Option<String>>,
}

impl LockdownState {
    /// Whether the store has been read.
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Whether nothing is locked down.
    pub fn is_clear(&self) -> bool {
        self.loaded && self.all.is_none() && self.servers.is_empty()
    }
}

/// The limits of one gateway process.
pub struct Limits {
    compiled: ArcSwap<Compiled>,
    local: LocalLimiter,
    redis: ArcSwapOption<RedisBackend>,
    gate: bastion_limits::Gate,
    quotas: Quotas,
    lockdown: ArcSwap<LockdownState>,
}

struct RedisBackend {
    url: String,
    limiter: RedisLimiter,
}

impl Limits {
    pub fn new(config: &LimitsConfig) -> Limits {
        Limits {
            compiled: ArcSwap::from_pointee(compile(config)),
            local: LocalLimiter::new(),
            redis: ArcSwapOption::empty(),
            gate: bastion_limits::Gate::new(),
            quotas: Quotas::default(),
            lockdown: ArcSwap::from_pointee(LockdownState::default()),
        }
    }

    /// Takes a new configuration: unchanged rules keep their buckets.
    pub fn apply(&self, config: &LimitsConfig) {
        self.compiled.store(Arc::new(compile(config)));
    }

    /// Whether some rule gives each tool a budget of its own, so that the
    /// tool must be one its server lists to have its own bucket.
    pub fn budgets_each_item(&self) -> bool {
        self.compiled.load().each_item
    }

    /// The lockdowns in force.
    pub fn lockdown(&self) -> arc_swap::Guard<Arc<LockdownState>> {
        self.lockdown.load()
    }

    /// Forgets the lockdown state when it cannot be read when it may have
    /// changed: calls are refused until it can.
    pub fn forget_lockdown(&self) {
        self.lockdown.store(Arc::new(LockdownState::default()));
    }

    /// Reads the lockdowns from the store again.
    pub async fn refresh_lockdown(&self, store: &Store) -> Result<(), bastion_store::StoreError> {
        let rows = store.lockdowns().await?;
        let mut state = LockdownState { loaded: true, ..Default::default() };
        for row in rows {
            if row.scope == "*" {
                state.all = Some(row.reason);
            } else {
                state.servers.insert(row.scope, row.reason);
            }
        }
        let before = self.lockdown.load();
        if before.all != state.all || before.servers != state.servers || !before.loaded {
            tracing::warn!(
                all = state.all.is_some(),
                servers = ?state.servers.keys().collect::<Vec<_>>(),
                "lockdown state read from the store"
            );
        }
        self.lockdown.store(Arc::new(state));
        Ok(())
    }

    /// The limit phase for one request: the lockdown, then every rate the
    /// request falls under (all or none), then its quotas, then a slot
    /// among its server's calls in flight.
    pub async fn admit(
        &self,
        config: &LimitsConfig,
        store: &Store,
        metrics: &Metrics,
        s: &Subject<'_>,
    ) -> Result<Admission, Refusal> {
        self.check_lockdown(s, metrics)?;
        let Some(class) = s.class else { return Ok(Admission::none()) };
        let compiled = self.compiled.load();
        if compiled.rules.is_empty() && config.quotas.is_empty() {
            return Ok(Admission::none());
        }
        let mut takes = Vec::new();
        let mut owners = Vec::new();
        for (i, c) in compiled.rules.iter().enumerate() {
            let Some(rate) = c.rate else { continue };
            if !c.rule.limits(class) {
                continue;
            }
            for subject in subjects(c, s) {
                let key = format!("{}{subject}", c.key_prefix);
                // Two identical rules are one budget, charged once.
                if !takes.iter().any(|t: &Take| t.key == key && t.rate == rate) {
                    takes.push(Take { key, rate });
                    owners.push(i);
                }
            }
        }
        // Calls in flight first: a refusal below gives the slot back at
        // once, where a slot refused after the rates would have spent them.
        let mut permits = Vec::new();
        if let Some((server, _)) = s.item {
            for c in compiled.rules.iter() {
                let Some(limit) = c.rule.concurrency else { continue };
                if !c.rule.limits(class) || !c.rule.selects(server) {
                    continue;
                }
                let key = format!("{}{server}", c.key_prefix);
                match self.gate.acquire(&key, limit, c.rule.concurrency_wait()).await {
                    Ok(p) => permits.push(p),
                    Err(_) => {
                        metrics.denied(Denial::Concurrency);
                        tracing::info!(user = s.user, server, rule = %c.label, "too many calls in flight");
                        return Err(limited(
                            format!("{server} has {limit} calls in flight; retry later"),
                            &c.label,
                            Duration::from_secs(1),
                            (limit, 1),
                        ));
                    }
                }
            }
        }
        let quotas = class != LimitedClass::List;
        if quotas {
            self.quotas.check(config, store, metrics, s.user).await?;
        }
        if !takes.is_empty() {
            let verdict = self.check_rates(config, metrics, &takes).await?;
            if let Some(d) = verdict.denied {
                let c = &compiled.rules[owners[d]];
                let rate = takes[d].rate;
                metrics.denied(Denial::RateLimit);
                tracing::info!(user = s.user, rule = %c.label, retry_after_ms = verdict.retry_after.as_millis() as u64, "rate limit reached");
                return Err(limited(
                    format!(
                        "rate limit reached ({}); retry later",
                        c.rule.rate.map(|r| r.to_string()).unwrap_or_default()
                    ),
                    &c.label,
                    verdict.retry_after,
                    rate.policy(),
                ));
            }
        }
        if quotas {
            self.quotas.take(config, store, metrics, s.user).await?;
        }
        Ok(Admission { _permits: permits })
    }

    fn check_lockdown(&self, s: &Subject<'_>, metrics: &Metrics) -> Result<(), Refusal> {
        let state = self.lockdown.load();
        if state.is_clear() {
            return Ok(());
        }
        let (policy, message) = if !state.loaded {
            ("lockdown:unknown", "calls are refused until the lockdown state can be read".to_string())
        } else if let Some(reason) = &state.all {
            ("lockdown", lockdown_message("every server", reason.as_deref()))
        } else if let Some((server, reason)) = s.item.and_then(|(server, _)| state.servers.get_key_value(server)) {
            ("lockdown:server", lockdown_message(server, reason.as_deref()))
        } else {
            return Ok(());
        };
        metrics.denied(Denial::Lockdown);
        Err(Refusal {
            error: json!({"code": jsonrpc::FORBIDDEN, "message": message, "data": {"lockdown": true}}),
            policy: Some(policy.into()),
        })
    }

    async fn check_rates(&self, config: &LimitsConfig, metrics: &Metrics, takes: &[Take]) -> Result<Verdict, Refusal> {
        let Some(url) = &config.redis else { return Ok(self.local.check(takes)) };
        let backend = self.redis.load();
        let error = match backend.as_deref() {
            Some(b) if b.url == url.expose() => match b.limiter.check(takes).await {
                Ok(v) => return Ok(v),
                Err(e) => e.to_string(),
            },
            _ => "not connected".to_string(),
        };
        metrics.limit_backend_error();
        match config.on_redis_error {
            OnRedisError::Refuse => {
                tracing::warn!(redis = %url, error = %error, "rate limits cannot be checked: refusing");
                metrics.denied(Denial::RateLimit);
                Err(Refusal {
                    error: json!({
                        "code": jsonrpc::UPSTREAM_UNAVAILABLE,
                        "message": "rate limits cannot be checked right now; try again shortly",
                        "data": {"retryAfter": 1},
                    }),
                    policy: Some("limit:unavailable".into()),
                })
            }
            OnRedisError::Local => {
                tracing::warn!(redis = %url, error = %error, "rate limits checked in this process only");
                Ok(self.local.check(takes))
            }
        }
    }

    /// Keeps the Redis connection of the live configuration: connects when
    /// `limits.redis` is set or changes, retrying until it succeeds; and
    /// every [`SWEEP_INTERVAL`] drops the buckets that are full again and
    /// the gates no call holds, so memory follows the callers of the
    /// moment.
    pub async fn maintain(
        self: Arc<Self>,
        config: impl Fn() -> Option<bastion_core::config::RedisUrl>,
        shutdown: CancellationToken,
    ) {
        let mut wait = Duration::from_millis(100);
        let mut last_sweep = std::time::Instant::now();
        loop {
            let wanted = config();
            let current = self.redis.load().as_ref().map(|b| b.url.clone());
            match wanted {
                None => {
                    if current.is_some() {
                        self.redis.store(None);
                    }
                }
                Some(url) if current.as_deref() != Some(url.expose()) => {
                    match RedisLimiter::connect(url.expose(), REDIS_PREFIX).await {
                        Ok(limiter) => {
                            tracing::info!(redis = %url, "rate limits kept in Redis");
                            self.redis.store(Some(Arc::new(RedisBackend { url: url.expose().to_string(), limiter })));
                            wait = Duration::from_millis(100);
                        }
                        Err(e) => {
                            tracing::warn!(redis = %url, error = %e, "cannot connect to Redis for rate limits");
                            wait = (wait * 2).min(Duration::from_secs(2));
                        }
                    }
                }
                Some(_) => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if last_sweep.elapsed() >= SWEEP_INTERVAL {
                self.local.sweep();
                self.gate.sweep();
                last_sweep = std::time::Instant::now();
            }
        }
    }

    /// Adds quota counts to the store every second until shutdown (the
    /// last ones are added by [`Limits::flush`] once requests have ended).
    /// Past windows are pruned from the store hourly: days after
    /// [`QUOTA_KEEP_DAYS`], months after [`QUOTA_KEEP_MONTHS`].
    pub async fn flush_quotas(self: Arc<Self>, store: Store, shutdown: CancellationToken) {
        let mut rounds: u64 = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(QUOTA_FLUSH) => {}
            }
            self.quotas.flush(&store).await;
            if rounds.is_multiple_of(3600) {
                prune_quota_windows(&store).await;
            }
            rounds += 1;
        }
    }

    /// Adds the quota counts not yet in the store now.
    pub async fn flush(&self, store: &Store) {
        self.quotas.flush(store).await;
    }
}

/// Days of daily quota counts kept in the store.
pub const QUOTA_KEEP_DAYS: i64 = 90;
/// Months of monthly quota counts kept in the store.
pub const QUOTA_KEEP_MONTHS: u32 = 24;

async fn prune_quota_windows(store: &Store) {
    let now = chrono::Utc::now();
    let day = (now - chrono::Duration::days(QUOTA_KEEP_DAYS)).format("%Y-%m-%d").to_string();
    let month = now
        .date_naive()
        .checked_sub_months(chrono::Months::new(QUOTA_KEEP_MONTHS))
        .map(|d| d.format("%Y-%m").to_string());
    let mut pruned = store.prune_quota_usage("day", &day).await;
    if let Some(month) = month {
        pruned = pruned.and(store.prune_quota_usage("month", &month).await);
    }
    if let Err(e) = pruned {
        tracing::debug!(error = %e, "old quota counts not pruned");
    }
}

fn lockdown_message(what: &str, reason: Option<&str>) -> String {
    match reason {
        Some(r) => {
            format!("the gateway is in lockdown for {what}: calls are refused until an administrator ends it ({r})")
        }
        None => format!("the gateway is in lockdown for {what}: calls are refused until an administrator ends it"),
    }
}

fn compile(config: &LimitsConfig) -> Compiled {
    let rules = config
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let rate = rule.rate.and_then(|r| match Rate::new(r.count, r.period, rule.burst.unwrap_or(r.count)) {
                Ok(rate) => Some(rate),
                Err(e) => {
                    // The config check refuses such rates; should one pass,
                    // the rule limits nothing rather than everything.
                    tracing::error!(rule = i, error = %e, "rate not usable");
                    None
                }
            });
            let key_prefix = format!(
                "{}\u{1f}{}\u{1f}{}\u{1f}",
                rule.scope.as_str(),
                rule.matches.as_deref().unwrap_or(""),
                rule.on.as_ref().map(|on| format!("{on:?}")).unwrap_or_default()
            );
            CompiledRule { scope: rule.scope, rule: rule.clone(), rate, label: rule.label(i), key_prefix }
        })
        .collect::<Vec<CompiledRule>>();
    let each_item =
        rules.iter().any(|c| matches!(c.scope, LimitScope::Tool | LimitScope::UserTool) && c.rule.matches.is_none());
    Compiled { rules, each_item }
}

/// The subjects a rule counts this request under: none when it does not
/// apply.
fn subjects(c: &CompiledRule, s: &Subject<'_>) -> Vec<String> {
    let one = |name: &str| if c.rule.selects(name) { vec![name.to_string()] } else { Vec::new() };
    match c.scope {
        LimitScope::Global => vec![String::new()],
        LimitScope::User => one(s.user),
        LimitScope::Group => s.groups.iter().filter(|g| c.rule.selects(g)).cloned().collect(),
        LimitScope::Server => s.item.map_or_else(Vec::new, |(server, _)| one(server)),
        LimitScope::Tool => s.item.map_or_else(Vec::new, |(_, item)| one(item)),
        LimitScope::UserTool => match s.item {
            Some((_, item)) if c.rule.selects(item) => vec![format!("{}\u{1f}{item}", s.user)],
            _ => Vec::new(),
        },
    }
}

/// The refusal of a request over a limit.
fn limited(message: String, policy: &str, retry_after: Duration, (quota, window): (u32, u64)) -> Refusal {
    let retry = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let retry = retry.max(1);
    Refusal {
        error: json!({
            "code": jsonrpc::LIMIT_REACHED,
            "message": message,
            "data": {
                "retryAfter": retry,
                "policy": policy,
                "quota": quota,
                "window": window,
                "remaining": 0,
            },
        }),
        policy: Some(policy.to_string()),
    }
}

/// The HTTP side of a refusal: `(status, headers)` for an error object
/// this phase made (or any -32000 that says when to retry: 503 with
/// `Retry-After`), `None` for any other.
pub fn http_headers(error: &Value) -> Option<(http::StatusCode, Vec<(http::HeaderName, String)>)> {
    let code = error.get("code").and_then(Value::as_i64)?;
    let data = error.get("data")?;
    let retry = data.get("retryAfter").and_then(Value::as_u64)?;
    if code == jsonrpc::UPSTREAM_UNAVAILABLE {
        return Some((http::StatusCode::SERVICE_UNAVAILABLE, vec![(http::header::RETRY_AFTER, retry.to_string())]));
    }
    if code != jsonrpc::LIMIT_REACHED {
        return None;
    }
    let policy = data.get("policy").and_then(Value::as_str).unwrap_or("limit");
    // A structured-field string: printable ASCII without quote or backslash.
    let name: String =
        policy.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' { c } else { '_' }).collect();
    let quota = data.get("quota").and_then(Value::as_u64).unwrap_or(0);
    let window = data.get("window").and_then(Value::as_u64).unwrap_or(1);
    Some((
        http::StatusCode::TOO_MANY_REQUESTS,
        vec![
            (http::header::RETRY_AFTER, retry.to_string()),
            (http::HeaderName::from_static("ratelimit"), format!("\"{name}\";r=0;t={retry}")),
            (http::HeaderName::from_static("ratelimit-policy"), format!("\"{name}\";q={quota};w={window}")),
        ],
    ))
}

/// Quota counters of this process: per principal, period and window.
#[derive(Default)]
struct Quotas {
    counters: DashMap<(Arc<str>, QuotaPeriod, String), Arc<Counter>>,
}

#[derive(Default)]
struct Counter {
    /// The store's total when last read (every replica's calls).
    base: AtomicU64,
    /// Calls being added to the store right now.
    flushing: AtomicU64,
    /// Calls admitted here and not yet added.
    pending: AtomicU64,
    /// Unix seconds of the last use.
    used: AtomicU64,
}

impl Counter {
    fn used(&self) -> u64 {
        self.base.load(Ordering::Acquire) + self.flushing.load(Ordering::Acquire) + self.pending.load(Ordering::Acquire)
    }
}

fn period(p: QuotaPeriod) -> Period {
    match p {
        QuotaPeriod::Day => Period::Day,
        QuotaPeriod::Month => Period::Month,
    }
}

impl Quotas {
    /// Refuses a call when one of `user`'s quotas is used up, counting
    /// nothing: checked before the rates, so that a call a quota refuses
    /// spends no rate token.
    async fn check(&self, config: &LimitsConfig, store: &Store, metrics: &Metrics, user: &str) -> Result<(), Refusal> {
        self.apply(config, store, metrics, user, false).await
    }

    /// Counts one call against every quota of `user`, or refuses it (and
    /// counts it against none).
    async fn take(&self, config: &LimitsConfig, store: &Store, metrics: &Metrics, user: &str) -> Result<(), Refusal> {
        self.apply(config, store, metrics, user, true).await
    }

    async fn apply(
        &self,
        config: &LimitsConfig,
        store: &Store,
        metrics: &Metrics,
        user: &str,
        count: bool,
    ) -> Result<(), Refusal> {
        if config.quotas.is_empty() {
            return Ok(());
        }
        let now = chrono::Utc::now();
        let secs = now.timestamp().max(0) as u64;
        let mut taken: Vec<Arc<Counter>> = Vec::new();
        let give_back = |taken: &[Arc<Counter>]| {
            for c in taken {
                c.pending.fetch_sub(1, Ordering::AcqRel);
            }
        };
        for (i, q) in config.quotas.iter().enumerate() {
            if !q.selects(user) {
                continue;
            }
            let (window, left) = period(q.per).window(now);
            let counter = match self.counter(store, user, q.per, window).await {
                Ok(c) => c,
                Err(e) => {
                    give_back(&taken);
                    tracing::warn!(user, error = %e, "quota cannot be read: refusing");
                    metrics.denied(Denial::Quota);
                    return Err(Refusal {
                        error: json!({
                            "code": jsonrpc::UPSTREAM_UNAVAILABLE,
                            "message": "the call quota cannot be checked right now; try again shortly",
                            "data": {"retryAfter": 1},
                        }),
                        policy: Some(q.label(i)),
                    });
                }
            };
            counter.used.store(secs, Ordering::Relaxed);
            let over = if count {
                counter.pending.fetch_add(1, Ordering::AcqRel);
                let over = counter.used() > q.calls;
                if over {
                    counter.pending.fetch_sub(1, Ordering::AcqRel);
                }
                over
            } else {
                counter.used() >= q.calls
            };
            if over {
                give_back(&taken);
                metrics.denied(Denial::Quota);
                tracing::info!(user, quota = %q.label(i), "call quota used up");
                let window = match q.per {
                    QuotaPeriod::Day => 86_400,
                    QuotaPeriod::Month => 30 * 86_400,
                };
                let calls = u32::try_from(q.calls).unwrap_or(u32::MAX);
                return Err(limited(
                    format!("call quota used up: {} calls per {}", q.calls, q.per.as_str()),
                    &q.label(i),
                    left,
                    (calls, window),
                ));
            }
            if count {
                taken.push(counter);
            }
        }
        Ok(())
    }

    async fn counter(
        &self,
        store: &Store,
        user: &str,
        per: QuotaPeriod,
        window: String,
    ) -> Result<Arc<Counter>, bastion_store::StoreError> {
        let key = (Arc::<str>::from(user), per, window);
        if let Some(c) = self.counters.get(&key) {
            return Ok(c.clone());
        }
        let total = store.add_quota_usage(user, per.as_str(), &key.2, 0).await?;
        let entry = self.counters.entry(key).or_insert_with(|| {
            let c = Counter::default();
            c.base.store(total, Ordering::Release);
            Arc::new(c)
        });
        Ok(entry.clone())
    }

    /// Adds what was counted here to the store, and reads every total
    /// back (other replicas count too).
    async fn flush(&self, store: &Store) {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let counters: Vec<_> = self.counters.iter().map(|e| (e.key().clone(), e.value().clone())).collect();
        for ((user, per, window), c) in counters {
            let n = c.pending.swap(0, Ordering::AcqRel);
            c.flushing.fetch_add(n, Ordering::AcqRel);
            match store.add_quota_usage(&user, per.as_str(), &window, n).await {
                Ok(total) => {
                    c.base.store(total, Ordering::Release);
                    c.flushing.fetch_sub(n, Ordering::AcqRel);
                }
                Err(e) => {
                    c.flushing.fetch_sub(n, Ordering::AcqRel);
                    c.pending.fetch_add(n, Ordering::AcqRel);
                    tracing::warn!(error = %e, "quota counts not saved; retrying");
                    continue;
                }
            }
            let (current, _) = period(per).window(chrono::Utc::now());
            let idle = now.saturating_sub(c.used.load(Ordering::Relaxed)) > QUOTA_IDLE_SECS;
            if (window != current || idle) && c.pending.load(Ordering::Acquire) == 0 {
                self.counters.remove_if(&(user, per, window), |_, v| v.pending.load(Ordering::Acquire) == 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_become_429_with_rate_limit_headers() {
        let r = limited("over".into(), "limit:user[1]", Duration::from_millis(1500), (5, 1));
        let (status, headers) = http_headers(&r.error).unwrap();
        assert_eq!(status, http::StatusCode::TOO_MANY_REQUESTS);
        let get = |n: &str| headers.iter().find(|(k, _)| k.as_str() == n).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(get("retry-after"), "2");
        assert_eq!(get("ratelimit"), "\"limit:user[1]\";r=0;t=2");
        assert_eq!(get("ratelimit-policy"), "\"limit:user[1]\";q=5;w=1");
        assert!(http_headers(&json!({"code": -32003, "message": "no"})).is_none());
        assert!(http_headers(&json!({"code": jsonrpc::LIMIT_REACHED, "message": "cap"})).is_none());
    }

    fn config(yaml: &str) -> LimitsConfig {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn subject<'a>(user: &'a str, groups: &'a [String], item: Option<(&'a str, &'a str)>) -> Subject<'a> {
        Subject { user, groups, class: Some(LimitedClass::Call), item }
    }

    #[test]
    fn subjects_follow_scopes() {
        let cfg = config(
            "rules:
  - { scope: global, rate: 5/s }
  - { scope: user, match: alice, rate: 5/s }
  - { scope: group, rate: 5/s }
  - { scope: server, match: time, rate: 5/s }
  - { scope: tool, match: time__*, rate: 5/s }
  - { scope: user_tool, rate: 5/s }",
        );
        let c = compile(&cfg);
        let groups = vec!["eng".to_string(), "ops".to_string()];
        let s = subject("alice", &groups, Some(("time", "time__convert_time")));
        let got: Vec<Vec<String>> = c.rules.iter().map(|r| subjects(r, &s)).collect();
        assert_eq!(got[0], vec![String::new()]);
        assert_eq!(got[1], vec!["alice"]);
        assert_eq!(got[2], vec!["eng", "ops"]);
        assert_eq!(got[3], vec!["time"]);
        assert_eq!(got[4], vec!["time__convert_time"]);
        assert_eq!(got[5], vec!["alice\u{1f}time__convert_time"]);
        let bob = subject("bob", &[], Some(("fs", "fs__read")));
        let got: Vec<usize> = c.rules.iter().map(|r| subjects(r, &bob).len()).collect();
        assert_eq!(got, vec![1, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn unchanged_rules_keep_their_keys_across_reloads() {
        let a = compile(&config("rules: [{ scope: user, rate: 5/s }, { scope: tool, match: x, rate: 1/s }]"));
        let b = compile(&config("rules: [{ scope: tool, match: x, rate: 1/s }, { scope: user, rate: 5/s }]"));
        assert_eq!(a.rules[0].key_prefix, b.rules[1].key_prefix);
        assert_eq!(a.rules[0].rate, b.rules[1].rate);
        assert_ne!(a.rules[0].key_prefix, a.rules[1].key_prefix);
    }
}
