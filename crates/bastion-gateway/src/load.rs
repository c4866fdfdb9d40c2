//! What each principal holds at once — sessions, streams, parked calls,
//! calls in flight — counted against the caps of `limits.per_principal`.
//!
//! A holding is a [`Slot`]: taken before the work starts, given back when
//! the slot is dropped, however the work ends. Reaching a cap is answered
//! with 429 and `Retry-After`; nothing queues without bound. The caps are
//! read from the live configuration at each acquisition, so a reload
//! applies at once (holdings above a lowered cap run to their end).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bastion_core::config::PrincipalCaps;
use dashmap::DashMap;

/// Kinds of holdings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Session,
    Stream,
    ListenStream,
    Parked,
    InFlight,
}

impl Kind {
    const ALL: usize = 5;

    fn index(self) -> usize {
        self as usize
    }

    fn cap(self, caps: &PrincipalCaps) -> usize {
        match self {
            Kind::Session => caps.sessions,
            Kind::Stream => caps.streams,
            Kind::ListenStream => caps.listen_streams,
            Kind::Parked => caps.parked_calls,
            Kind::InFlight => caps.calls_in_flight,
        }
    }

    /// The key of its cap under `limits.per_principal`.
    pub fn config_key(self) -> &'static str {
        match self {
            Kind::Session => "sessions",
            Kind::Stream => "streams",
            Kind::ListenStream => "listen_streams",
            Kind::Parked => "parked_calls",
            Kind::InFlight => "calls_in_flight",
        }
    }

    /// What the caller is told.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Session => "live sessions",
            Kind::Stream => "open streams",
            Kind::ListenStream => "subscriptions/listen streams",
            Kind::Parked => "calls waiting for input",
            Kind::InFlight => "requests in flight",
        }
    }
}

/// A cap was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many {} for this caller (at most {cap}); retry later", kind.describe())]
pub struct LimitReached {
    pub kind: Kind,
    pub cap: usize,
}

type Counters = Arc<[AtomicUsize; Kind::ALL]>;

/// Every principal's holdings.
#[derive(Default)]
pub struct PrincipalLoad {
    by_user: DashMap<Arc<str>, Counters>,
}

impl PrincipalLoad {
    /// Takes one slot of `kind` for `user`, unless the cap is reached.
    pub fn acquire(&self, user: &Arc<str>, kind: Kind, caps: &PrincipalCaps) -> Result<Slot, LimitReached> {
        let counters = match self.by_user.get(user) {
            Some(c) => c.clone(),
            None => self.by_user.entry(user.clone()).or_default().clone(),
        };
        let cap = kind.cap(caps);
        let counter = &counters[kind.index()];
        let held = counter.fetch_add(1, Ordering::AcqRel);
        if held >= cap {
            counter.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitReached { kind, cap });
        }
        Ok(Slot { counters, kind })
    }

    /// How many slots of `kind` a user holds (for tests and status).
    pub fn held(&self, user: &str, kind: Kind) -> usize {
        self.by_user.get(user).map(|c| c[kind.index()].load(Ordering::Acquire)).unwrap_or(0)
    }

    /// Forgets users who hold nothing (periodic, so the map stays small).
    pub fn prune(&self) {
        self.by_user.retain(|_, c| Arc::strong_count(c) > 1 || c.iter().any(|n| n.load(Ordering::Acquire) > 0));
    }
}

/// One holding, given back on drop.
#[derive(Debug)]
pub struct Slot {
    counters: Counters,
    kind: Kind,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counters[self.kind.index()].fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(n: usize) -> PrincipalCaps {
        PrincipalCaps { sessions: n, streams: n, listen_streams: n, parked_calls: n, calls_in_flight: n }
    }

    #[test]
    fn caps_are_per_user_and_kind_and_slots_come_back() {
        let load = PrincipalLoad::default();
        let (alice, bob): (Arc<str>, Arc<str>) = ("alice".into(), "bob".into());
        let a1 = load.acquire(&alice, Kind::Stream, &caps(2)).unwrap();
        let _a2 = load.acquire(&alice, Kind::Stream, &caps(2)).unwrap();
        let err = load.acquire(&alice, Kind::Stream, &caps(2)).unwrap_err();
        assert_eq!(err, LimitReached { kind: Kind::Stream, cap: 2 });
        assert!(err.to_string().contains("open streams"));
        // other kinds and other users are not affected
        let _s = load.acquire(&alice, Kind::Session, &caps(2)).unwrap();
        let _b = load.acquire(&bob, Kind::Stream, &caps(2)).unwrap();
        drop(a1);
        assert_eq!(load.held("alice", Kind::Stream), 1);
        assert!(load.acquire(&alice, Kind::Stream, &caps(2)).is_ok());
        // a lowered cap applies to new holdings at once
        assert!(load.acquire(&alice, Kind::Session, &caps(1)).is_err());
    }

    #[test]
    fn prune_keeps_users_with_holdings() {
        let load = PrincipalLoad::default();
        let alice: Arc<str> = "alice".into();
        let slot = load.acquire(&alice, Kind::InFlight, &caps(1)).unwrap();
        load.prune();
        assert_eq!(load.held("alice", Kind::InFlight), 1);
        drop(slot);
        load.prune();
        assert!(load.by_user.is_empty());
    }
}
