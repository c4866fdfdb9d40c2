//! Calls in flight per key, with a bounded wait.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::LimitError;

/// Bounds the calls in flight per key: a semaphore of `limit` permits per
/// key and limit.
///
/// A changed limit (after a configuration reload) is a fresh semaphore;
/// calls still holding permits of the old one release them there, and
/// [`in_flight`](Self::in_flight) counts both until they finish.
#[derive(Debug, Default)]
pub struct Gate {
    semaphores: DashMap<String, Vec<(u32, Arc<Semaphore>)>>,
}

/// A call's place in a [`Gate`]; the place is given back when this drops.
#[derive(Debug)]
pub struct GatePermit {
    _permit: OwnedSemaphorePermit,
}

impl Gate {
    /// A gate with no calls in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits at most `wait` for one of `limit` places under `key`.
    ///
    /// Fails with [`LimitError::Busy`] if none came free in time (at once
    /// for a zero `wait`), and with [`LimitError::Invalid`] for a `limit`
    /// of 0. Waiters are served in arrival order.
    pub async fn acquire(&self, key: &str, limit: u32, wait: Duration) -> Result<GatePermit, LimitError> {
        if limit == 0 {
            return Err(LimitError::Invalid("a concurrency limit must be at least 1".into()));
        }
        let semaphore = self.semaphore(key, limit);
        match Arc::clone(&semaphore).try_acquire_owned() {
            Ok(permit) => return Ok(GatePermit { _permit: permit }),
            Err(TryAcquireError::NoPermits) if !wait.is_zero() => {}
            Err(_) => return Err(LimitError::Busy),
        }
        match tokio::time::timeout(wait, semaphore.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(GatePermit { _permit: permit }),
            // The semaphore is never closed; a timeout is the only refusal.
            Ok(Err(_)) | Err(_) => Err(LimitError::Busy),
        }
    }

    /// How many calls under `key` hold a place now.
    pub fn in_flight(&self, key: &str) -> usize {
        self.semaphores.get(key).map_or(0, |semaphores| {
            semaphores
                .iter()
                .map(|(limit, semaphore)| (*limit as usize).saturating_sub(semaphore.available_permits()))
                .sum()
        })
    }

    /// Drops the semaphores nobody holds or waits for (an idle semaphore is
    /// the same as an absent one) and returns how many remain. Called
    /// periodically to bound memory.
    pub fn sweep(&self) -> usize {
        // Permits and waiters hold a reference to their semaphore, and the
        // map's shard is locked, so a count of one means idle.
        self.semaphores.retain(|_, semaphores| {
            semaphores.retain(|(_, semaphore)| Arc::strong_count(semaphore) > 1);
            !semaphores.is_empty()
        });
        self.semaphores.iter().map(|entry| entry.len()).sum()
    }

    /// The semaphore for `key` at `limit`, created if absent.
    fn semaphore(&self, key: &str, limit: u32) -> Arc<Semaphore> {
        if let Some(semaphores) = self.semaphores.get(key)
            && let Some((_, semaphore)) = semaphores.iter().find(|(l, _)| *l == limit)
        {
            return Arc::clone(semaphore);
        }
        let mut semaphores = self.semaphores.entry(key.to_owned()).or_default();
        if let Some((_, semaphore)) = semaphores.iter().find(|(l, _)| *l == limit) {
            return Arc::clone(semaphore);
        }
        let semaphore = Arc::new(Semaphore::new(limit as usize));
        semaphores.push((limit, Arc::clone(&semaphore)));
        semaphore
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn limit_is_respected_and_the_wait_bounded() {
        let gate = Gate::new();
        let wait = Duration::from_millis(250);
        let first = gate.acquire("k", 2, wait).await.unwrap();
        let _second = gate.acquire("k", 2, wait).await.unwrap();
        assert_eq!(gate.in_flight("k"), 2);
        // Other keys are separate.
        let _other = gate.acquire("other", 2, wait).await.unwrap();
        assert_eq!(gate.in_flight("other"), 1);

        let started = Instant::now();
        let refused = gate.acquire("k", 2, wait).await;
        assert!(matches!(refused, Err(LimitError::Busy)));
        // With time paused the wait is exact.
        assert_eq!(started.elapsed(), wait);
        // A zero wait refuses at once.
        let started = Instant::now();
        assert!(matches!(gate.acquire("k", 2, Duration::ZERO).await, Err(LimitError::Busy)));
        assert_eq!(started.elapsed(), Duration::ZERO);

        drop(first);
        assert_eq!(gate.in_flight("k"), 1);
        let _third = gate.acquire("k", 2, Duration::ZERO).await.unwrap();
        assert_eq!(gate.in_flight("k"), 2);
        assert_eq!(gate.in_flight("nobody"), 0);
        assert!(matches!(gate.acquire("k", 0, wait).await, Err(LimitError::Invalid(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_permit_lets_a_waiter_through() {
        let gate = Arc::new(Gate::new());
        let held = gate.acquire("k", 1, Duration::ZERO).await.unwrap();
        let waiter = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move {
                let started = Instant::now();
                let permit = gate.acquire("k", 1, Duration::from_secs(10)).await;
                (permit.is_ok(), started.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(gate.in_flight("k"), 1);
        drop(held);
        let (got, waited) = waiter.await.unwrap();
        assert!(got);
        assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(10));
        // The waiter's permit dropped with its task.
        assert_eq!(gate.in_flight("k"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_limit_is_a_fresh_semaphore() {
        let gate = Gate::new();
        let old = gate.acquire("k", 1, Duration::ZERO).await.unwrap();
        assert!(gate.acquire("k", 1, Duration::ZERO).await.is_err());
        // Reloaded with a limit of 2: the old call does not count against it.
        let a = gate.acquire("k", 2, Duration::ZERO).await.unwrap();
        let b = gate.acquire("k", 2, Duration::ZERO).await.unwrap();
        assert!(gate.acquire("k", 2, Duration::ZERO).await.is_err());
        assert_eq!(gate.in_flight("k"), 3);
        assert_eq!(gate.sweep(), 2);
        drop((old, a));
        assert_eq!(gate.in_flight("k"), 1);
        // The idle limit-1 semaphore goes; the one still in use stays.
        assert_eq!(gate.sweep(), 1);
        drop(b);
        assert_eq!(gate.sweep(), 0);
        assert_eq!(gate.in_flight("k"), 0);
        assert!(gate.acquire("k", 2, Duration::ZERO).await.is_ok());
    }
}
