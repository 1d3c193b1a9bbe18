//! A local memory of keys already over their limit, so that a client hammering a closed
//! window is answered without a Redis round trip (envoyproxy/ratelimit's local cache).
//!
//! Remembering a denial is safe because counts only grow until the moment recorded here:
//! a fixed window stays over until it ends; a sliding window cannot regain room before its
//! oldest counted bucket leaves. Token buckets refill continuously and are not remembered.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::algorithm::{Decision, Policy};

/// Past this many keys, expired ones are swept; if that is not enough, all are forgotten
/// (which only costs Redis round trips).
const MAX_KEYS: usize = 100_000;

#[derive(Clone, Copy, Debug)]
struct Denial {
    until_us: u64,
    capacity: u64,
    remaining: u64,
}

#[derive(Debug, Default)]
pub struct OverLimitCache {
    denials: Mutex<HashMap<String, Denial>>,
}

impl OverLimitCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Denial>> {
        self.denials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A denial for `hits` on `key`, if one is known to hold at `now_us`.
    pub fn lookup(&self, key: &str, hits: u64, now_us: u64) -> Option<Decision> {
        let denials = self.lock();
        let denial = denials.get(key)?;
        (denial.until_us > now_us && hits > denial.remaining).then(|| {
            Decision::denied_from_cache(
                denial.capacity,
                denial.remaining,
                Duration::from_micros(denial.until_us - now_us),
            )
        })
    }

    /// Remembers a denial Redis just gave, until the count could first go down.
    pub fn remember(&self, key: &str, policy: &Policy, decision: &Decision, now_us: u64) {
        if decision.allowed || matches!(policy, Policy::TokenBucket(_)) {
            return;
        }
        let until_us = now_us.saturating_add(decision.reset.as_micros() as u64);
        if until_us <= now_us {
            return;
        }
        let mut denials = self.lock();
        if denials.len() >= MAX_KEYS {
            denials.retain(|_, d| d.until_us > now_us);
            if denials.len() >= MAX_KEYS {
                denials.clear();
            }
        }
        denials.insert(
            key.to_string(),
            Denial {
                until_us,
                capacity: decision.capacity,
                remaining: decision.remaining,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::FixedWindow;

    #[test]
    fn a_fixed_window_denial_holds_until_the_window_ends() {
        let cache = OverLimitCache::new();
        let window = FixedWindow::new(1, Duration::from_secs(1));
        let policy = Policy::Fixed(window);
        let now = 1_700_000_000_250_000;
        let denied = window.decide(2, now);
        cache.remember("k_1700000000", &policy, &denied, now);
        assert!(cache.lookup("k_1700000000", 1, now + 700_000).is_some());
        assert!(
            cache.lookup("k_1700000000", 0, now).is_none(),
            "a query goes to redis"
        );
        assert!(cache.lookup("k_1700000000", 1, now + 750_000).is_none());
    }
}
