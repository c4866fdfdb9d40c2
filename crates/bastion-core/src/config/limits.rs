//! The `limits` key: what one caller may hold at once, rate limits at every
//! level, concurrency per server, quotas, and where shared buckets live.
//!
//! ```yaml
//! limits:
//!   redis: redis://127.0.0.1:6379/0           # absent: in process
//!   on_redis_error: refuse                    # or local
//!   rules:
//!     - { scope: global, rate: 1000/s, burst: 200 }
//!     - { scope: user, rate: 5/s, burst: 5 }
//!     - { scope: tool, match: time__convert_time, rate: 2/s }
//!     - { scope: server, match: everything, concurrency: 8 }
//!     - { scope: user, on: [list], rate: 20/s }
//!   quotas:
//!     - { scope: user, per: day, calls: 10000 }
//! ```
//!
//! A rule limits tool calls, resource reads and prompt gets unless `on`
//! names other classes; list calls are limited only by rules that name
//! `list`, so that they can have their own, looser budget. Every rule a
//! request falls under must have a token for it to go on; a request
//! refused by one rule takes nothing from the others.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::PrincipalCaps;
use crate::redact;

/// The `limits` key.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// What one principal may hold at once (sessions, streams, calls in
    /// flight).
    #[serde(default)]
    pub per_principal: PrincipalCaps,
    /// Where rate buckets live: absent, in this process; a `redis://` (or
    /// `rediss://`) URL, in Redis, shared by every replica using it.
    #[serde(default)]
    pub redis: Option<RedisUrl>,
    /// What happens to a request when Redis cannot be asked: `refuse`
    /// (the default: fail closed) or `local` (this process's own buckets,
    /// with a warning and a metric).
    #[serde(default)]
    pub on_redis_error: OnRedisError,
    /// Rate and concurrency rules.
    #[serde(default)]
    pub rules: Vec<LimitRule>,
    /// Calls per principal per day or month, counted in the store.
    #[serde(default)]
    pub quotas: Vec<QuotaRule>,
}

/// `limits.on_redis_error`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisError {
    #[default]
    Refuse,
    Local,
}

/// What a rule counts by.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// One budget for every caller.
    Global,
    /// One budget per principal (`match`: only that user).
    User,
    /// One budget per group the principal belongs to, shared by its
    /// members (`match`: only that group).
    Group,
    /// One budget per server (`match`: only that server).
    Server,
    /// One budget per tool, prompt or resource, named as the aggregate
    /// endpoint shows it (`server__tool`, `server+uri`; `match`: only that
    /// one, or those it starts, with a trailing `*`).
    Tool,
    /// One budget per principal and tool (`match`: only that tool).
    UserTool,
}

impl LimitScope {
    /// The name written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Global => "global",
            LimitScope::User => "user",
            LimitScope::Group => "group",
            LimitScope::Server => "server",
            LimitScope::Tool => "tool",
            LimitScope::UserTool => "user_tool",
        }
    }

    /// Whether the scope names an item or its server, which a list call
    /// (fanned out to every server) has not.
    pub fn is_per_item(self) -> bool {
        matches!(self, LimitScope::Server | LimitScope::Tool | LimitScope::UserTool)
    }
}

/// The classes of requests a rule limits.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum LimitedClass {
    /// `tools/call`.
    Call,
    /// `resources/read`.
    Read,
    /// `prompts/get`.
    Get,
    /// `tools/list`, `prompts/list`, `resources/list`,
    /// `resources/templates/list`.
    List,
}

/// One entry of `limits.rules`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitRule {
    pub scope: LimitScope,
    /// Only this user, group, server or tool (by the name callers see).
    /// A trailing `*` matches any rest. Absent: each one has its own budget.
    #[serde(default, rename = "match")]
    pub matches: Option<String>,
    /// `N/s`, `N/m`, `N/h`, `N/d` (or `N/10s`…): the sustained rate.
    #[serde(default)]
    pub rate: Option<RateSpec>,
    /// How many requests may come at once after a quiet spell. Default:
    /// the rate's count.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Calls in flight at once (scope `server` only): past it a call waits
    /// up to `wait` for one to end, then is refused.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// How long a call waits for a concurrency slot. Default 2s.
    #[serde(default, deserialize_with = "super::opt_duration")]
    pub wait: Option<Duration>,
    /// The classes limited. Default `[call, read, get]`.
    #[serde(default)]
    pub on: Option<Vec<LimitedClass>>,
}

/// How long a call waits for a concurrency slot by default.
pub const DEFAULT_CONCURRENCY_WAIT: Duration = Duration::from_secs(2);

impl LimitRule {
    /// Whether the rule limits `class`.
    pub fn limits(&self, class: LimitedClass) -> bool {
        match &self.on {
            Some(on) => on.contains(&class),
            None => class != LimitedClass::List,
        }
    }

    /// Whether `name` is one the rule's `match` selects (any, without one).
    pub fn selects(&self, name: &str) -> bool {
        match self.matches.as_deref() {
            None => true,
            Some(m) => match m.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == m,
            },
        }
    }

    /// The concurrency wait in force.
    pub fn concurrency_wait(&self) -> Duration {
        self.wait.unwrap_or(DEFAULT_CONCURRENCY_WAIT)
    }

    /// How the rule is named in audit records and refusals: its scope and
    /// position, and its match, e.g. `limit:tool[2]=time__convert_time`.
    pub fn label(&self, index: usize) -> String {
        match &self.matches {
            Some(m) => format!("limit:{}[{index}]={m}", self.scope.as_str()),
            None => format!("limit:{}[{index}]", self.scope.as_str()),
        }
    }

    fn validate(&self) -> Result<(), String> {
        let at = |msg: &str| msg.to_string();
        if self.rate.is_none() && self.concurrency.is_none() {
            return Err(at("a rule needs a rate or a concurrency"));
        }
        if self.burst.is_some() && self.rate.is_none() {
            return Err(at("burst needs a rate"));
        }
        if self.burst == Some(0) {
            return Err(at("burst must be at least 1"));
        }
        if self.concurrency == Some(0) {
            return Err(at("concurrency must be at least 1"));
        }
        if self.concurrency.is_some() && self.scope != LimitScope::Server {
            return Err(at("concurrency is limited per server: use scope server"));
        }
        if self.wait.is_some() && self.concurrency.is_none() {
            return Err(at("wait applies to a concurrency limit"));
        }
        if self.wait.is_some_and(|w| w > Duration::from_secs(60)) {
            return Err(at("wait may be at most 60s"));
        }
        if self.scope == LimitScope::Global && self.matches.is_some() {
            return Err(at("a global rule matches every request; remove match"));
        }
        if self.matches.as_deref().is_some_and(|m| m.is_empty() || m == "*") {
            return Err(at("match must name something; leave it out to match all"));
        }
        if let Some(on) = &self.on {
            if on.is_empty() {
                return Err(at("on must name at least one of call, read, get, list"));
            }
            if self.scope.is_per_item() && on.contains(&LimitedClass::List) {
                return Err(at("a list call has no single server or tool: use scope global, user or group"));
            }
            if self.concurrency.is_some() && on.contains(&LimitedClass::List) {
                return Err(at("concurrency does not apply to list calls"));
            }
        }
        Ok(())
    }
}

/// A rate as written: `count` per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateSpec {
    pub count: u32,
    pub period: Duration,
}

impl RateSpec {
    /// Parses `N/s`, `N/m`, `N/h`, `N/d`, the long unit names, or a
    /// multiple such as `N/10s`.
    pub fn parse(text: &str) -> Result<RateSpec, String> {
        let bad = || format!("{text:?} is not a rate such as 5/s, 100/m or 10/5s");
        let (count, unit) = text.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!("{text:?}: the count must be at least 1"));
        }
        let unit = unit.trim();
        let digits = unit.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let times: u64 = if digits == 0 { 1 } else { unit[..digits].parse().map_err(|_| bad())? };
        let seconds = match &unit[digits..] {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => return Err(bad()),
        };
        if times == 0 || times > 366 * 86_400 / seconds {
            return Err(format!("{text:?}: the period must be between 1 second and a year"));
        }
        let period = Duration::from_secs(times * seconds);
        if period.as_micros() / u128::from(count) == 0 {
            return Err(format!("{text:?}: at most a million per second"));
        }
        Ok(RateSpec { count, period })
    }
}

impl<'de> Deserialize<'de> for RateSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RateSpec::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for RateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}s", self.count, self.period.as_secs())
    }
}

/// What a quota counts by: only principals.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum QuotaScope {
    User,
}

/// A quota's period, in UTC.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum QuotaPeriod {
    Day,
    Month,
}

impl QuotaPeriod {
    /// The name written in the config and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaPeriod::Day => "day",
            QuotaPeriod::Month => "month",
        }
    }
}

/// One entry of `limits.quotas`: calls, reads and gets per principal per
/// day or month.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuotaRule {
    pub scope: QuotaScope,
    pub per: QuotaPeriod,
    pub calls: u64,
    /// Only this user (a trailing `*` matches any rest).
    #[serde(default, rename = "match")]
    pub matches: Option<String>,
}

impl QuotaRule {
    /// Whether the quota applies to `user`.
    pub fn selects(&self, user: &str) -> bool {
        match self.matches.as_deref() {
            None => true,
            Some(m) => match m.strip_suffix('*') {
                Some(prefix) => user.starts_with(prefix),
                None => user == m,
            },
        }
    }

    /// How the quota is named in audit records and refusals.
    pub fn label(&self, index: usize) -> String {
        format!("quota:user[{index}]/{}", self.per.as_str())
    }
}

/// A `redis://`, `rediss://` or `redis+unix://` URL as written. It may hold
/// a password: `Display` and `Debug` leave it out; [`RedisUrl::expose`] is
/// for the client alone.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL, password included: for the Redis client, never a log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact::url(&self.0))
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({:?})", redact::url(&self.0))
    }
}

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let scheme = s.split_once("://").map(|(scheme, _)| scheme);
        if !matches!(scheme, Some("redis" | "rediss" | "redis+unix" | "unix")) {
            return Err(serde::de::Error::custom(format!("{} is not a redis:// or rediss:// URL", redact::url(&s))));
        }
        Ok(RedisUrl(s))
    }
}

impl LimitsConfig {
    /// Checks what serde cannot: see each field.
    pub(super) fn validate(
        &self,
        is_server: impl Fn(&str) -> bool,
        is_group: impl Fn(&str) -> bool,
    ) -> Result<(), (String, String)> {
        let caps = &self.per_principal;
        for (key, v) in [
            ("sessions", caps.sessions),
            ("streams", caps.streams),
            ("listen_streams", caps.listen_streams),
            ("parked_calls", caps.parked_calls),
            ("calls_in_flight", caps.calls_in_flight),
        ] {
            if v == 0 {
                return Err((format!("limits.per_principal.{key}"), "must be at least 1".into()));
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate().map_err(|e| (format!("limits.rules[{i}]"), e))?;
            // A name that matches nothing is a mistake, not a rule.
            if let Some(m) = rule.matches.as_deref().filter(|m| !m.ends_with('*')) {
                let unknown = match rule.scope {
                    LimitScope::Server => (!is_server(m)).then_some("server"),
                    LimitScope::Group => (!is_group(m)).then_some("group"),
                    _ => None,
                };
                if let Some(what) = unknown {
                    return Err((format!("limits.rules[{i}].match"), format!("no {what} named {m:?}")));
                }
            }
        }
        for (i, quota) in self.quotas.iter().enumerate() {
            if quota.calls == 0 {
                return Err((format!("limits.quotas[{i}].calls"), "must be at least 1".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        let r = RateSpec::parse("5/s").unwrap();
        assert_eq!((r.count, r.period), (5, Duration::from_secs(1)));
        assert_eq!(RateSpec::parse(" 2 / m").unwrap().period, Duration::from_secs(60));
        assert_eq!(RateSpec::parse("10/5s").unwrap().period, Duration::from_secs(5));
        assert_eq!(RateSpec::parse("100/hour").unwrap().period, Duration::from_secs(3600));
        assert_eq!(RateSpec::parse("1/d").unwrap().period, Duration::from_secs(86_400));
        for bad in ["0/s", "5", "x/s", "5/fortnight", "-1/s", "5/0s", "5/", "/s", "2000000/s", "1/400d"] {
            assert!(RateSpec::parse(bad).is_err(), "{bad}");
        }
    }

    fn rule(yaml: &str) -> Result<LimitRule, String> {
        let rule: LimitRule = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        rule.validate()?;
        Ok(rule)
    }

    #[test]
    fn rules_are_checked() {
        assert!(rule("{ scope: user, rate: 5/s, burst: 5 }").is_ok());
        assert!(rule("{ scope: server, match: everything, concurrency: 8 }").is_ok());
        assert!(rule("{ scope: user, on: [list], rate: 20/s }").is_ok());
        for bad in [
            "{ scope: user }",
            "{ scope: user, burst: 3 }",
            "{ scope: user, rate: 5/s, burst: 0 }",
            "{ scope: tool, concurrency: 2 }",
            "{ scope: global, match: x, rate: 1/s }",
            "{ scope: tool, on: [list], rate: 1/s }",
            "{ scope: user, on: [], rate: 1/s }",
            "{ scope: user, rate: 1/s, wait: 1s }",
            "{ scope: nobody, rate: 1/s }",
            "{ scope: user, rate: 1/s, extra: 1 }",
        ] {
            assert!(rule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn classes_and_matches() {
        let r = rule("{ scope: tool, match: time__*, rate: 2/s }").unwrap();
        assert!(r.limits(LimitedClass::Call) && r.limits(LimitedClass::Read) && !r.limits(LimitedClass::List));
        assert!(r.selects("time__convert_time") && !r.selects("fs__read"));
        assert_eq!(r.label(3), "limit:tool[3]=time__*");
    }

    #[test]
    fn redis_urls_hide_passwords() {
        let u: RedisUrl = serde_saphyr::from_str("redis://:hunter2@127.0.0.1:6379/0").unwrap();
        assert!(!format!("{u} {u:?}").contains("hunter2"));
        assert!(serde_saphyr::from_str::<RedisUrl>("http://127.0.0.1").is_err());
    }
}
