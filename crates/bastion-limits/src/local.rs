//! The in-process backend: buckets in a sharded map.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::rate::{BucketState, Rate, Take, Verdict, gcra, peek};

/// Nanoseconds since a fixed, process-wide origin on the monotonic clock:
/// the `now` [`LocalLimiter::check`] and [`LocalLimiter::sweep`] use.
pub fn monotonic_now() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A bucket's identity: its key and its rate, so that a changed rate is a
/// fresh bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct BucketKey {
    key: String,
    rate: Rate,
}

/// One bucket's TAT (nanoseconds), locked while a check uses it.
type Bucket = Arc<Mutex<u64>>;

/// Token buckets in this process, for a gateway running as a single
/// replica (or where each replica may have its own budget).
///
/// Each bucket is a TAT behind its own lock. A check first looks up the
/// buckets it needs (briefly holding the map's shard locks), then locks
/// them in one order — sorted by key and rate — so that two checks over
/// overlapping buckets neither deadlock nor both take the last token.
#[derive(Debug, Default)]
pub struct LocalLimiter {
    buckets: DashMap<BucketKey, Bucket>,
}

impl LocalLimiter {
    /// An empty limiter: every bucket starts full.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks all `takes` at `now_ns` (nanoseconds on the caller's
    /// monotonic clock), all-or-nothing: either a token is taken from every
    /// bucket, or none is and the verdict names the first take that had
    /// none.
    ///
    /// Buckets are keyed by key and rate: a take whose rate changed starts
    /// from a full bucket, and unchanged ones keep their state. The same
    /// bucket listed twice is charged twice.
    pub fn check_at(&self, takes: &[Take], now_ns: u64) -> Verdict {
        if takes.is_empty() {
            return Verdict { denied: None, retry_after: Duration::ZERO, states: Vec::new() };
        }
        // The distinct buckets, in lock order; `slot[i]` is take i's bucket.
        let mut order: Vec<usize> = (0..takes.len()).collect();
        order.sort_by(|&a, &b| (takes[a].key.as_str(), takes[a].rate).cmp(&(takes[b].key.as_str(), takes[b].rate)));
        let mut buckets: Vec<Bucket> = Vec::with_capacity(takes.len());
        let mut slot = vec![0; takes.len()];
        let mut previous: Option<&Take> = None;
        for &i in &order {
            let take = &takes[i];
            let same = previous.is_some_and(|p| p.key == take.key && p.rate == take.rate);
            if !same {
                buckets.push(self.bucket(take));
            }
            slot[i] = buckets.len() - 1;
            previous = Some(take);
        }

        let mut guards: Vec<MutexGuard<'_, u64>> = buckets.iter().map(|b| lock(b)).collect();
        let stored: Vec<u64> = guards.iter().map(|guard| **guard).collect();
        let mut pending = stored.clone();
        for (i, take) in takes.iter().enumerate() {
            match gcra(pending[slot[i]], now_ns, take.rate) {
                Ok(tat) => pending[slot[i]] = tat,
                Err(retry_ns) => {
                    return Verdict {
                        denied: Some(i),
                        retry_after: Duration::from_nanos(retry_ns),
                        states: states(takes, &slot, &stored, now_ns),
                    };
                }
            }
        }
        for (guard, tat) in guards.iter_mut().zip(&pending) {
            **guard = *tat;
        }
        Verdict { denied: None, retry_after: Duration::ZERO, states: states(takes, &slot, &pending, now_ns) }
    }

    /// [`check_at`](Self::check_at) with now from [`monotonic_now`].
    pub fn check(&self, takes: &[Take]) -> Verdict {
        self.check_at(takes, monotonic_now())
    }

    /// Drops the buckets that are full again at `now_ns` (TAT not ahead of
    /// now), which is the same as their being absent, and returns how many
    /// remain. Buckets a check is using are kept.
    pub fn sweep_at(&self, now_ns: u64) -> usize {
        self.buckets.retain(|_, bucket| {
            // The map's shard is locked, so nobody can take a new reference
            // to this bucket: if this is the only one, nobody is using it.
            if Arc::strong_count(bucket) > 1 {
                return true;
            }
            match bucket.try_lock() {
                Ok(tat) => *tat > now_ns,
                Err(TryLockError::Poisoned(poisoned)) => *poisoned.into_inner() > now_ns,
                Err(TryLockError::WouldBlock) => true,
            }
        });
        self.buckets.len()
    }

    /// [`sweep_at`](Self::sweep_at) with now from [`monotonic_now`].
    pub fn sweep(&self) -> usize {
        self.sweep_at(monotonic_now())
    }

    /// How many buckets are held.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// The bucket for `take`, created full if absent.
    fn bucket(&self, take: &Take) -> Bucket {
        let key = BucketKey { key: take.key.clone(), rate: take.rate };
        if let Some(bucket) = self.buckets.get(&key) {
            return Arc::clone(&bucket);
        }
        Arc::clone(&self.buckets.entry(key).or_default())
    }
}

/// A bucket's lock. No code panics while holding one, but a poisoned lock
/// still holds a valid TAT.
fn lock(bucket: &Mutex<u64>) -> MutexGuard<'_, u64> {
    bucket.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Each take's state given its bucket's TAT.
fn states(takes: &[Take], slot: &[usize], tats: &[u64], now_ns: u64) -> Vec<BucketState> {
    takes.iter().zip(slot).map(|(take, &s)| peek(tats[s], now_ns, take.rate)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const SEC: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn take(key: &str, rate: &str, burst: u32) -> Take {
        Take { key: key.into(), rate: Rate::parse(rate, Some(burst)).unwrap() }
    }

    #[test]
    fn one_bucket_burst_then_interval() {
        let limiter = LocalLimiter::new();
        let takes = [take("k", "10/s", 3)];
        let now = 5 * SEC;
        for left in [2, 1, 0] {
            let verdict = limiter.check_at(&takes, now);
            assert_eq!(verdict.denied, None);
            assert_eq!(verdict.retry_after, Duration::ZERO);
            assert_eq!(verdict.states[0].remaining, left);
        }
        let verdict = limiter.check_at(&takes, now + 30 * MS);
        assert_eq!(verdict.denied, Some(0));
        assert_eq!(verdict.retry_after, Duration::from_millis(70));
        assert_eq!(verdict.states, vec![BucketState { remaining: 0, reset: Duration::from_millis(270) }]);
        assert!(limiter.check_at(&takes, now + 100 * MS).allowed());
        assert!(!limiter.check_at(&takes, now + 100 * MS).allowed());
    }

    #[test]
    fn denial_charges_nothing() {
        let limiter = LocalLimiter::new();
        let wide = take("key:a", "100/s", 100);
        let narrow = take("tool:t", "1/s", 2);
        let now = SEC;
        let both = [wide.clone(), narrow.clone()];
        assert!(limiter.check_at(&both, now).allowed());
        assert!(limiter.check_at(&both, now).allowed());
        let verdict = limiter.check_at(&both, now);
        assert_eq!(verdict.denied, Some(1));
        assert_eq!(verdict.retry_after, Duration::from_secs(1));
        // The wide bucket was not charged for the denied call.
        assert_eq!(verdict.states[0].remaining, 98);
        assert_eq!(verdict.states[1].remaining, 0);
        let verdict = limiter.check_at(std::slice::from_ref(&wide), now);
        assert!(verdict.allowed());
        assert_eq!(verdict.states[0].remaining, 97);

        // Denied by the first bucket: the later ones are untouched too.
        let limiter = LocalLimiter::new();
        let empty = take("e", "1/m", 1);
        let spare = take("s", "1/m", 5);
        assert!(limiter.check_at(std::slice::from_ref(&empty), now).allowed());
        for _ in 0..3 {
            let verdict = limiter.check_at(&[empty.clone(), spare.clone()], now);
            assert_eq!(verdict.denied, Some(0));
            assert_eq!(verdict.retry_after, Duration::from_secs(60));
            assert_eq!(verdict.states[1], BucketState { remaining: 5, reset: Duration::ZERO });
        }
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn the_same_bucket_twice_is_charged_twice() {
        let limiter = LocalLimiter::new();
        let t = take("k", "1/s", 3);
        let twice = [t.clone(), t.clone()];
        let verdict = limiter.check_at(&twice, SEC);
        assert!(verdict.allowed());
        assert_eq!(verdict.states[0].remaining, 1);
        assert_eq!(verdict.states[1].remaining, 1);
        // One left, two needed: denied at the second, nothing charged.
        let verdict = limiter.check_at(&twice, SEC);
        assert_eq!(verdict.denied, Some(1));
        assert_eq!(verdict.retry_after, Duration::from_secs(1));
        assert_eq!(verdict.states[0].remaining, 1);
        assert!(limiter.check_at(&[t], SEC).allowed());
    }

    #[test]
    fn buckets_are_keyed_by_rate() {
        let limiter = LocalLimiter::new();
        let now = SEC;
        let a = take("key:a", "10/m", 10);
        let b = take("key:b", "10/m", 10);
        for _ in 0..4 {
            assert!(limiter.check_at(&[a.clone(), b.clone()], now).allowed());
        }
        // A reload changes a's rate and leaves b's alone.
        let a2 = take("key:a", "20/m", 10);
        let verdict = limiter.check_at(&[a2.clone(), b.clone()], now);
        assert!(verdict.allowed());
        assert_eq!(verdict.states[0].remaining, 9);
        assert_eq!(verdict.states[1].remaining, 5);
        // Same text written differently is the same rate, the same bucket.
        let b_again = Take { key: "key:b".into(), rate: Rate::parse("10/minute", Some(10)).unwrap() };
        assert_eq!(limiter.check_at(&[b_again], now).states[0].remaining, 4);
    }

    #[test]
    fn sweep_drops_full_buckets() {
        let limiter = LocalLimiter::new();
        assert!(limiter.is_empty());
        let now = 10 * SEC;
        limiter.check_at(&[take("fast", "10/s", 1)], now);
        limiter.check_at(&[take("slow", "1/m", 2)], now);
        assert_eq!(limiter.len(), 2);
        assert_eq!(limiter.sweep_at(now), 2);
        assert_eq!(limiter.sweep_at(now + 100 * MS - 1), 2);
        // The fast bucket is full again at exactly its TAT.
        assert_eq!(limiter.sweep_at(now + 100 * MS), 1);
        assert_eq!(limiter.sweep_at(now + 30 * SEC), 1);
        assert_eq!(limiter.sweep_at(now + 60 * SEC), 0);
        assert!(limiter.is_empty());
        // A swept bucket is full, as it would have been.
        let verdict = limiter.check_at(&[take("slow", "1/m", 2)], now + 60 * SEC);
        assert_eq!(verdict.states[0].remaining, 1);
        // The real clock moves forward.
        let real = LocalLimiter::new();
        assert!(real.check(&[take("r", "1/s", 1)]).allowed());
        assert!(!real.check(&[take("r", "1/s", 1)]).allowed());
        assert_eq!(real.sweep(), 1);
    }

    #[test]
    fn empty_check_allows() {
        let limiter = LocalLimiter::new();
        let verdict = limiter.check_at(&[], SEC);
        assert!(verdict.allowed());
        assert!(verdict.states.is_empty());
        assert!(limiter.is_empty());
    }

    #[test]
    fn threads_never_share_the_last_token() {
        let limiter = Arc::new(LocalLimiter::new());
        let allowed = Arc::new(AtomicUsize::new(0));
        let burst = 100;
        let now = 42 * SEC;
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                let allowed = Arc::clone(&allowed);
                std::thread::spawn(move || {
                    let takes = [take("hot", "1/h", burst)];
                    for _ in 0..50 {
                        if limiter.check_at(&takes, now).allowed() {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(allowed.load(Ordering::Relaxed), burst as usize);
    }

    #[test]
    fn overlapping_checks_in_any_order_neither_deadlock_nor_overspend() {
        // Each thread takes from two of three buckets, listed in its own
        // order, while another thread sweeps.
        let limiter = Arc::new(LocalLimiter::new());
        let now = 42 * SEC;
        let keys = ["a", "b", "c"];
        let counts: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
        let threads: Vec<_> = (0..6)
            .map(|n| {
                let limiter = Arc::clone(&limiter);
                let counts = Arc::clone(&counts);
                std::thread::spawn(move || {
                    let (x, y) = [(0, 1), (1, 0), (1, 2), (2, 1), (2, 0), (0, 2)][n];
                    let takes = [take(keys[x], "1/h", 60), take(keys[y], "1/h", 60)];
                    for _ in 0..200 {
                        if limiter.check_at(&takes, now).allowed() {
                            counts[x].fetch_add(1, Ordering::Relaxed);
                            counts[y].fetch_add(1, Ordering::Relaxed);
                        }
                        limiter.sweep_at(now);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let spent: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        for (n, &used) in spent.iter().enumerate() {
            assert!(used <= 60, "bucket {n} spent {used}");
            let state = limiter.check_at(&[take(keys[n], "1/h", 60)], now);
            if state.allowed() {
                // The check just now took one more.
                assert_eq!(state.states[0].remaining as usize, 60 - used - 1);
            } else {
                assert_eq!(used, 60);
            }
        }
        // Three buckets of 60, two per call: at most 90 calls.
        assert!(spent.iter().sum::<usize>() <= 180);
    }
}
