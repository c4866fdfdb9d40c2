#![forbid(unsafe_code)]
//! Bastion's rate limits, without HTTP and without the gateway's
//! configuration types: token buckets, a concurrency gate and quota
//! windows.
//!
//! # Buckets
//!
//! A [`Rate`] is a bucket of `burst` tokens that refills one token per
//! emission interval. Buckets are kept as GCRA state (the generic cell rate
//! algorithm): one number per bucket, its *theoretical arrival time*, from
//! which the tokens left and the time to refill follow. The arithmetic is
//! [`gcra`]; both backends run exactly it:
//!
//! - [`LocalLimiter`], buckets in this process, for a single replica;
//! - [`RedisLimiter`], buckets in Redis, checked by one Lua script per call
//!   on Redis's clock, so that replicas share one budget.
//!
//! A call usually takes from several buckets at once (per key, per tool,
//! per server). A check is all-or-nothing: either every bucket had a token
//! and one is taken from each, or nothing is charged and the [`Verdict`]
//! names the first bucket that had none.
//!
//! Buckets are keyed by key *and* rate, so a bucket whose rate changes on
//! a configuration reload starts afresh while the others keep their state.
//!
//! # Concurrency
//!
//! [`Gate`] bounds the calls in flight per key; a call waits at most a
//! given time for a permit and is refused as [`LimitError::Busy`] past it.
//!
//! # Quotas
//!
//! [`Period`] names the day or month (UTC) a counter belongs to and the
//! time left until it ends; the counting itself lives with the store.
//!
//! # Use
//!
//! ```
//! use bastion_limits::{LocalLimiter, Rate, Take};
//!
//! let limiter = LocalLimiter::new();
//! let takes = [Take { key: "key:alice".into(), rate: Rate::parse("2/s", None).unwrap() }];
//! let now = 1_000_000_000;
//! assert_eq!(limiter.check_at(&takes, now).denied, None);
//! assert_eq!(limiter.check_at(&takes, now).denied, None);
//! let verdict = limiter.check_at(&takes, now);
//! assert_eq!(verdict.denied, Some(0));
//! assert_eq!(verdict.retry_after.as_millis(), 500);
//! ```

mod gate;
mod local;
mod quota;
mod rate;
mod shared;

pub use gate::{Gate, GatePermit};
pub use local::{LocalLimiter, monotonic_now};
pub use quota::Period;
pub use rate::{BucketState, MAX_WINDOW, MIN_INTERVAL, Rate, Take, Verdict, gcra, peek};
pub use shared::RedisLimiter;

/// Why a limit could not be set up or checked.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// A rate, limit or period that cannot be used.
    #[error("invalid rate: {0}")]
    Invalid(String),
    /// The shared backend could not be reached or answered wrongly.
    #[error("rate-limit backend unavailable: {0}")]
    Backend(String),
    /// No concurrency permit came free within the wait allowed.
    #[error("too many calls in flight")]
    Busy,
}
