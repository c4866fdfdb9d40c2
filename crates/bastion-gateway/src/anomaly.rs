//! Anomaly signals, read off the audit trail as it is written: a principal
//! calling far more than usual, a principal (or, for refused credentials,
//! a client address) refused again and again — probing for a way in —, and
//! unusually large responses. Each signal is an audit event of its own
//! (`anomaly.call_rate`, `anomaly.denials`, `anomaly.large_response`), a
//! warning in the log and a count by kind; the thresholds are
//! `audit.anomaly` in the configuration.
//!
//! Counts are kept per principal in a sliding window (two fixed buckets,
//! the older one weighted by how much of it the window still covers), so
//! the state is a few words per principal and the check a handful of
//! arithmetic. A signal is not raised again for the same principal and
//! kind within `cooldown`, so a flood is one event, not thousands.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bastion_audit::{Event, Fields, Outcome};
use bastion_core::config::AnomalyConfig;
use dashmap::DashMap;
use serde_json::json;

/// Principals and addresses followed at once, at most. Beyond, the idle
/// ones are forgotten; if none is, new ones go unwatched (and a warning
/// says so once).
const MAX_KEYS: usize = 100_000;

/// The kinds of signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    CallRate,
    Denials,
    LargeResponse,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::CallRate, Signal::Denials, Signal::LargeResponse];

    /// The signal's name: the audit event's kind after `anomaly.`, and the
    /// metric's label.
    pub fn name(self) -> &'static str {
        match self {
            Signal::CallRate => "call_rate",
            Signal::Denials => "denials",
            Signal::LargeResponse => "large_response",
        }
    }
}

/// Events counted in a sliding window.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// When the current bucket began.
    start: Instant,
    current: u64,
    previous: u64,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window { start: now, current: 0, previous: 0 }
    }

    /// Counts one at `now` and returns the estimate of the last `length`.
    fn add(&mut self, now: Instant, length: Duration) -> u64 {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed >= length {
            let buckets = (elapsed.as_nanos() / length.as_nanos().max(1)) as u32;
            self.previous = if buckets == 1 { self.current } else { 0 };
            self.current = 0;
            self.start += length * buckets;
        }
        self.current += 1;
        let into = now.saturating_duration_since(self.start).as_secs_f64() / length.as_secs_f64();
        let weight = (1.0 - into).clamp(0.0, 1.0);
        self.current + (self.previous as f64 * weight).round() as u64
    }
}

#[derive(Debug)]
struct State {
    calls: Window,
    denials: Window,
    /// When each kind was last raised.
    raised: [Option<Instant>; 3],
    seen: Instant,
}

/// The anomaly detector.
pub struct Watch {
    config: AnomalyConfig,
    by_key: DashMap<Box<str>, Mutex<State>>,
    raised: [AtomicU64; 3],
    full_warned: AtomicBool,
}

impl Watch {
    pub fn new(config: AnomalyConfig) -> Watch {
        Watch { config, by_key: DashMap::new(), raised: Default::default(), full_warned: AtomicBool::new(false) }
    }

    /// Signals raised so far, by kind.
    pub fn raised(&self) -> [(Signal, u64); 3] {
        Signal::ALL.map(|s| (s, self.raised[s as usize].load(Ordering::Relaxed)))
    }

    /// Takes in a record on its way to the trail; returns the signals it
    /// raises, as events to record after it.
    pub fn observe(&self, event: &Fields<'_>, now: Instant) -> Vec<Event> {
        if event.kind.starts_with("anomaly.") || event.kind.starts_with("audit.") {
            return Vec::new();
        }
        let call = event.kind == "mcp.request";
        let denied = event.outcome == Outcome::Denied;
        let large = event.bytes_out.is_some_and(|b| b > self.config.response_bytes);
        if !(call || denied || large) {
            return Vec::new();
        }
        let key: &str = match (event.user, event.client_ip) {
            (Some(user), _) => user,
            (None, Some(ip)) => ip,
            (None, None) => return Vec::new(),
        };
        let Some(entry) = self.entry(key, now) else { return Vec::new() };
        let mut state = entry.lock().unwrap_or_else(|p| p.into_inner());
        state.seen = now;
        let mut found: Vec<(Signal, u64, u64, Option<Duration>)> = Vec::new();
        if call {
            let n = state.calls.add(now, self.config.call_rate.window);
            if n > self.config.call_rate.calls {
                found.push((Signal::CallRate, n, self.config.call_rate.calls, Some(self.config.call_rate.window)));
            }
        }
        if denied {
            let n = state.denials.add(now, self.config.denials.window);
            if n > self.config.denials.count {
                found.push((Signal::Denials, n, self.config.denials.count, Some(self.config.denials.window)));
            }
        }
        if large {
            let bytes = event.bytes_out.unwrap_or(0);
            found.push((Signal::LargeResponse, bytes, self.config.response_bytes, None));
        }
        let mut out = Vec::new();
        for (signal, observed, threshold, window) in found {
            let last = &mut state.raised[signal as usize];
            if last.is_some_and(|t| now.saturating_duration_since(t) < self.config.cooldown) {
                continue;
            }
            *last = Some(now);
            self.raised[signal as usize].fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                signal = signal.name(),
                user = event.user.unwrap_or("-"),
                client_ip = event.client_ip.unwrap_or("-"),
                observed,
                threshold,
                window_s = window.map(|w| w.as_secs()),
                "anomaly: {}",
                match signal {
                    Signal::CallRate => "a principal's call rate is over its threshold",
                    Signal::Denials => "repeated refusals: a principal or address may be probing",
                    Signal::LargeResponse => "an unusually large response",
                }
            );
            let mut e = Event::new(format!("anomaly.{}", signal.name()), Outcome::Ok);
            e.user = event.user.map(str::to_owned);
            e.auth = event.auth.map(str::to_owned);
            e.client_ip = event.client_ip.map(str::to_owned);
            e.trace_id = event.trace_id.map(str::to_owned);
            e.request_id = event.request_id.map(str::to_owned);
            if signal == Signal::LargeResponse {
                e.session = event.session.map(str::to_owned);
                e.method = event.method.map(str::to_owned);
                e.server = event.server.map(str::to_owned);
                e.tool = event.tool.map(str::to_owned);
                e.bytes_out = event.bytes_out;
            }
            e.detail = Some(json!({
                "observed": observed,
                "threshold": threshold,
                "window_s": window.map(|w| w.as_secs()),
            }));
            out.push(e);
        }
        out
    }

    /// The state of `key`, made when new (room allowing).
    fn entry(&self, key: &str, now: Instant) -> Option<dashmap::mapref::one::Ref<'_, Box<str>, Mutex<State>>> {
        if let Some(e) = self.by_key.get(key) {
            return Some(e);
        }
        if self.by_key.len() >= MAX_KEYS {
            let idle = self.config.call_rate.window.max(self.config.denials.window).max(self.config.cooldown) * 2;
            self.by_key.retain(|_, s| now.saturating_duration_since(s.get_mut().map(|s| s.seen).unwrap_or(now)) < idle);
            if self.by_key.len() >= MAX_KEYS {
                if !self.full_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        max = MAX_KEYS,
                        "anomaly signals: too many active principals; new ones go unwatched"
                    );
                }
                return None;
            }
        }
        self.by_key.entry(key.into()).or_insert_with(|| {
            Mutex::new(State { calls: Window::new(now), denials: Window::new(now), raised: [None; 3], seen: now })
        });
        self.by_key.get(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bastion_core::config::{DenialThreshold, Threshold};

    fn config() -> AnomalyConfig {
        AnomalyConfig {
            enabled: true,
            call_rate: Threshold { calls: 10, window: Duration::from_secs(10) },
            denials: DenialThreshold { count: 3, window: Duration::from_secs(60) },
            response_bytes: 1000,
            cooldown: Duration::from_secs(30),
        }
    }

    fn call(user: &str, outcome: Outcome, bytes: u64) -> Event {
        let mut e = Event::new("mcp.request", outcome);
        e.user = Some(user.into());
        e.bytes_out = Some(bytes);
        e
    }

    fn kinds(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.kind.as_str()).collect()
    }

    #[test]
    fn a_call_rate_over_the_threshold_is_signalled_once_per_cooldown() {
        let w = Watch::new(config());
        let t0 = Instant::now();
        let mut raised = Vec::new();
        // 30 calls in 3 seconds: the 11th is over 10 in 10 s.
        for i in 0..30u64 {
            let out = w.observe(&call("alice", Outcome::Ok, 10).fields(), t0 + Duration::from_millis(i * 100));
            if !out.is_empty() {
                raised.push((i, out));
            }
        }
        assert_eq!(raised.len(), 1, "one signal within the cooldown");
        assert_eq!(raised[0].0, 10);
        let e = &raised[0].1[0];
        assert_eq!(e.kind, "anomaly.call_rate");
        assert_eq!(e.user.as_deref(), Some("alice"));
        assert_eq!(e.detail.as_ref().unwrap()["observed"], 11);
        assert_eq!(e.detail.as_ref().unwrap()["threshold"], 10);
        // Another principal's calls are its own.
        assert!(w.observe(&call("bob", Outcome::Ok, 10).fields(), t0 + Duration::from_secs(3)).is_empty());
        // After the cooldown, still too fast: raised again.
        let mut again = 0;
        for i in 0..20u64 {
            again += w
                .observe(
                    &call("alice", Outcome::Ok, 10).fields(),
                    t0 + Duration::from_secs(31) + Duration::from_millis(i * 10),
                )
                .len();
        }
        assert_eq!(again, 1);
        assert_eq!(w.raised()[0], (Signal::CallRate, 2));
    }

    #[test]
    fn a_steady_rate_under_the_threshold_is_never_signalled() {
        let w = Watch::new(config());
        let t0 = Instant::now();
        // 0.9 calls a second for ten minutes: 9 in any 10 s window.
        for i in 0..540u64 {
            let out = w.observe(&call("alice", Outcome::Ok, 10).fields(), t0 + Duration::from_millis(i * 1111));
            assert!(out.is_empty(), "call {i}: {:?}", kinds(&out));
        }
    }

    #[test]
    fn the_window_slides() {
        let mut win = Window::new(Instant::now());
        let t0 = win.start;
        let len = Duration::from_secs(10);
        for _ in 0..10 {
            win.add(t0, len);
        }
        // Halfway through the next bucket, half the old one still counts.
        assert_eq!(win.add(t0 + Duration::from_secs(15), len), 1 + 5);
        // Two windows later, nothing of it.
        assert_eq!(win.add(t0 + Duration::from_secs(31), len), 1);
    }

    #[test]
    fn repeated_denials_are_signalled_by_principal_or_by_address() {
        let w = Watch::new(config());
        let t0 = Instant::now();
        let mut out = Vec::new();
        for i in 0..5u64 {
            out.extend(w.observe(&call("mallory", Outcome::Denied, 10).fields(), t0 + Duration::from_secs(i)));
        }
        assert_eq!(kinds(&out), ["anomaly.denials"]);
        // Refused credentials have no principal: counted by address.
        let mut out = Vec::new();
        for i in 0..5u64 {
            let mut e = Event::new("auth.failure", Outcome::Denied);
            e.client_ip = Some("192.0.2.7".into());
            out.extend(w.observe(&e.fields(), t0 + Duration::from_secs(i)));
        }
        assert_eq!(kinds(&out), ["anomaly.denials"]);
        assert_eq!(out[0].client_ip.as_deref(), Some("192.0.2.7"));
        assert_eq!(out[0].user, None);
        // Errors that are not refusals do not count.
        let quiet = Watch::new(config());
        for i in 0..10u64 {
            assert!(
                quiet.observe(&call("alice", Outcome::Error, 10).fields(), t0 + Duration::from_secs(i * 3)).is_empty()
            );
        }
    }

    #[test]
    fn large_responses_are_signalled_with_what_answered() {
        let w = Watch::new(config());
        let mut e = call("alice", Outcome::Ok, 5000);
        e.server = Some("files".into());
        e.tool = Some("read_file".into());
        let out = w.observe(&e.fields(), Instant::now());
        assert_eq!(kinds(&out), ["anomaly.large_response"]);
        assert_eq!(out[0].server.as_deref(), Some("files"));
        assert_eq!(out[0].tool.as_deref(), Some("read_file"));
        assert_eq!(out[0].bytes_out, Some(5000));
        assert!(
            w.observe(&call("alice", Outcome::Ok, 1000).fields(), Instant::now()).is_empty(),
            "at the threshold is not over it"
        );
    }

    #[test]
    fn signals_never_feed_themselves() {
        let w = Watch::new(AnomalyConfig { response_bytes: 1, ..config() });
        let mut e = Event::new("anomaly.large_response", Outcome::Ok);
        e.user = Some("alice".into());
        e.bytes_out = Some(10);
        assert!(w.observe(&e.fields(), Instant::now()).is_empty());
    }
}
