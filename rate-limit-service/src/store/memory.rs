//! Counters in this process's memory: for a single instance, or for trying things out.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{storage_key, Check, Store, StoreError};
use crate::algorithm::{Decision, Policy, SlidingCounts};

/// Expired entries are swept after this many checks.
const SWEEP_EVERY: u64 = 4_096;

#[derive(Debug)]
enum State {
    Count(u64),
    Sliding(SlidingCounts),
    Tat(u64),
}

#[derive(Debug)]
struct Entry {
    state: State,
    /// When the state means nothing any more, as Redis's EXPIRE would have it.
    expires_us: u64,
}

#[derive(Debug, Default)]
struct Counters {
    entries: HashMap<String, Entry>,
    checks: u64,
}

/// The in-memory store; all checks of a request are judged under one lock.
#[derive(Debug, Default)]
pub struct MemoryStore {
    counters: Mutex<Counters>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many keys are held (for tests of expiry).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        // A panic while holding the lock cannot leave a counter half-written: every update
        // is a single assignment. Keep serving.
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The synchronous core, also used by benchmarks and tests.
    pub fn check_now(&self, checks: &[Check<'_>], now_us: u64) -> Vec<Decision> {
        let mut counters = self.lock();
        counters.checks += 1;
        if counters.checks.is_multiple_of(SWEEP_EVERY) {
            counters.entries.retain(|_, e| e.expires_us > now_us);
        }
        checks
            .iter()
            .map(|check| {
                let key = storage_key(check, now_us);
                let entry = counters
                    .entries
                    .remove(&key)
                    .filter(|e| e.expires_us > now_us);
                let (decision, entry) = decide(check, entry, now_us);
                counters.entries.insert(key, entry);
                decision
            })
            .collect()
    }
}

fn decide(check: &Check<'_>, entry: Option<Entry>, now_us: u64) -> (Decision, Entry) {
    let state = entry.map(|e| e.state);
    match check.policy {
        Policy::Fixed(window) => {
            let count = match state {
                Some(State::Count(n)) => n,
                _ => 0,
            }
            .saturating_add(check.hits);
            let decision = window.decide(count, now_us);
            let expires_us = window.window_start_us(now_us) + window.window.as_micros() as u64;
            (
                decision,
                Entry {
                    state: State::Count(count),
                    expires_us,
                },
            )
        }
        Policy::Sliding(window) => {
            let mut counts = match state {
                Some(State::Sliding(c)) => c,
                _ => SlidingCounts::default(),
            };
            let decision = window.decide(&mut counts, now_us, check.hits);
            let expires_us = now_us + window.window_us() + window.bucket_us();
            (
                decision,
                Entry {
                    state: State::Sliding(counts),
                    expires_us,
                },
            )
        }
        Policy::TokenBucket(bucket) => {
            let tat = match state {
                Some(State::Tat(t)) => Some(t),
                _ => None,
            };
            let (decision, tat) = bucket.decide(tat, now_us, check.hits);
            (
                decision,
                Entry {
                    state: State::Tat(tat),
                    expires_us: tat.max(now_us + 1),
                },
            )
        }
    }
}

impl Store for MemoryStore {
    async fn check<'a>(
        &'a self,
        checks: &'a [Check<'a>],
        now_us: u64,
    ) -> Result<Vec<Decision>, StoreError> {
        Ok(self.check_now(checks, now_us))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::algorithm::{FixedWindow, SlidingWindow, TokenBucket};

    const T0: u64 = 1_700_000_000_000_000;

    #[test]
    fn fixed_counters_are_per_key_and_per_window() {
        let store = MemoryStore::new();
        let policy = Policy::Fixed(FixedWindow::new(2, Duration::from_secs(1)));
        let a = Check {
            key: "d_k_a_",
            policy: &policy,
            hits: 1,
        };
        let b = Check {
            key: "d_k_b_",
            policy: &policy,
            hits: 1,
        };
        let allowed = |checks: &[Check<'_>], now| -> Vec<bool> {
            store
                .check_now(checks, now)
                .iter()
                .map(|d| d.allowed)
                .collect()
        };
        assert_eq!(allowed(&[a, a], T0), vec![true, true]);
        assert_eq!(allowed(&[a, b], T0), vec![false, true]);
        assert_eq!(allowed(&[a], T0 + 1_000_000), vec![true]);
    }

    #[test]
    fn hits_addend_counts_several_and_zero_only_asks() {
        let store = MemoryStore::new();
        let policy = Policy::Fixed(FixedWindow::new(10, Duration::from_secs(60)));
        let check = |hits| Check {
            key: "d_k_v_",
            policy: &policy,
            hits,
        };
        assert_eq!(store.check_now(&[check(7)], T0)[0].remaining, 3);
        let query = store.check_now(&[check(0)], T0)[0];
        assert_eq!((query.allowed, query.remaining), (true, 3));
        assert!(!store.check_now(&[check(4)], T0)[0].allowed);
    }

    #[test]
    fn sliding_and_bucket_state_survive_between_checks_and_expire() {
        let store = MemoryStore::new();
        let sliding = Policy::Sliding(SlidingWindow::new(1, Duration::from_secs(1)));
        let bucket = Policy::TokenBucket(TokenBucket::new(1, Duration::from_secs(1), 1));
        let checks = [
            Check {
                key: "d_s_",
                policy: &sliding,
                hits: 1,
            },
            Check {
                key: "d_b_",
                policy: &bucket,
                hits: 1,
            },
        ];
        assert!(store.check_now(&checks, T0).iter().all(|d| d.allowed));
        assert!(store.check_now(&checks, T0 + 10).iter().all(|d| !d.allowed));
        assert!(store
            .check_now(&checks, T0 + 2_000_000)
            .iter()
            .all(|d| d.allowed));
        for i in 0..SWEEP_EVERY {
            store.check_now(&[], T0 + 10_000_000 + i);
        }
        assert!(store.is_empty());
    }
}
