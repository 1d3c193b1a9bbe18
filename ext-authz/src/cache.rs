//! The verified-token cache: a reused token costs a SHA-256 and a map lookup instead of a
//! signature check.
//!
//! Keys are SHA-256 of (provider, token), so the cache holds no token text. Each entry
//! remembers the key-set epoch it was verified under and is ignored once the provider's
//! keys change (a removed key must stop vouching for its tokens at once) or once the
//! token's `exp` has passed. It caches claims, not decisions: scopes are still checked
//! per route.
//!
//! Bounding is by generations, per shard: new entries go to `current`; when it is full it
//! becomes `previous` and the old `previous` is dropped whole; a hit in `previous` moves
//! back to `current`. That keeps recently used tokens, costs O(1) per operation and never
//! holds more than the capacity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::verify::VerifiedToken;

/// Shards spread lock contention across cores.
const SHARDS: usize = 16;

pub type CacheKey = [u8; 32];

/// The cache key of `token` under `provider`; the separator keeps ("a", "b.c") and
/// ("a.b", "c") apart.
pub fn cache_key(provider: &str, token: &str) -> CacheKey {
    let mut hasher = Sha256::new();
    hasher.update(provider.as_bytes());
    hasher.update([0u8]);
    hasher.update(token.as_bytes());
    hasher.finalize().into()
}

#[derive(Clone)]
struct Entry {
    epoch: u64,
    token: Arc<VerifiedToken>,
}

#[derive(Default)]
struct Shard {
    current: HashMap<CacheKey, Entry>,
    previous: HashMap<CacheKey, Entry>,
}

pub struct TokenCache {
    shards: Vec<Mutex<Shard>>,
    /// Entries per generation per shard: two generations fill the capacity.
    generation_size: usize,
}

impl TokenCache {
    /// A cache of at most `capacity` entries; 0 disables caching.
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            generation_size: capacity / (2 * SHARDS),
        }
    }

    fn shard(&self, key: &CacheKey) -> Option<std::sync::MutexGuard<'_, Shard>> {
        if self.generation_size == 0 {
            return None;
        }
        let shard = &self.shards[usize::from(key[0]) % SHARDS];
        // A poisoned shard only means another check panicked mid-lookup; the maps are intact.
        Some(
            shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// The token verified under `epoch`, if it is still before its `exp` at `now`.
    pub fn get(&self, key: &CacheKey, epoch: u64, now: u64) -> Option<Arc<VerifiedToken>> {
        let mut shard = self.shard(key)?;
        let usable = |entry: &Entry| entry.epoch == epoch && (now as f64) < entry.token.expires_at;
        if let Some(entry) = shard.current.get(key) {
            if usable(entry) {
                return Some(Arc::clone(&entry.token));
            }
            shard.current.remove(key);
            return None;
        }
        let entry = shard.previous.remove(key)?;
        if !usable(&entry) {
            return None;
        }
        let token = Arc::clone(&entry.token);
        self.insert_locked(&mut shard, *key, entry);
        Some(token)
    }

    pub fn insert(&self, key: CacheKey, epoch: u64, token: Arc<VerifiedToken>) {
        if let Some(mut shard) = self.shard(&key) {
            self.insert_locked(&mut shard, key, Entry { epoch, token });
        }
    }

    fn insert_locked(&self, shard: &mut Shard, key: CacheKey, entry: Entry) {
        if shard.current.len() >= self.generation_size && !shard.current.contains_key(&key) {
            shard.previous = std::mem::take(&mut shard.current);
        }
        shard.current.insert(key, entry);
    }

    /// Entries held now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|p| p.into_inner());
                s.current.len() + s.previous.len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_at: f64) -> Arc<VerifiedToken> {
        Arc::new(VerifiedToken {
            expires_at,
            scopes: vec![],
            identity: crate::identity::Identity {
                consumer: None,
                claim_headers: vec![],
                absent_headers: vec![],
            },
        })
    }

    #[test]
    fn a_stored_token_is_found_under_the_same_epoch() {
        let cache = TokenCache::new(1000);
        let key = cache_key("p", "t");
        cache.insert(key, 7, token(200.0));
        assert!(cache.get(&key, 7, 100).is_some());
    }

    #[test]
    fn an_entry_is_never_served_past_exp() {
        let cache = TokenCache::new(1000);
        let key = cache_key("p", "t");
        cache.insert(key, 7, token(200.0));
        assert!(cache.get(&key, 7, 200).is_none());
        assert!(cache.is_empty(), "the expired entry is dropped");
    }

    #[test]
    fn a_key_set_change_invalidates_entries() {
        let cache = TokenCache::new(1000);
        let key = cache_key("p", "t");
        cache.insert(key, 7, token(200.0));
        assert!(cache.get(&key, 8, 100).is_none());
    }

    #[test]
    fn the_same_token_under_another_provider_is_another_entry() {
        assert_ne!(cache_key("a", "b.c"), cache_key("a.b", "c"));
        assert_ne!(cache_key("p1", "t"), cache_key("p2", "t"));
    }

    #[test]
    fn the_cache_never_grows_past_its_capacity() {
        let cache = TokenCache::new(320);
        for i in 0..10_000 {
            cache.insert(cache_key("p", &i.to_string()), 1, token(1e12));
        }
        assert!(cache.len() <= 320, "{}", cache.len());
        assert!(cache.len() >= 160, "{}", cache.len());
    }

    #[test]
    fn a_recently_used_entry_survives_a_generation_turn() {
        let cache = TokenCache::new(2 * SHARDS * 4);
        let hot = cache_key("p", "hot");
        cache.insert(hot, 1, token(1e12));
        for i in 0..2000 {
            assert!(cache.get(&hot, 1, 0).is_some(), "lost after {i} inserts");
            cache.insert(cache_key("p", &i.to_string()), 1, token(1e12));
        }
    }

    #[test]
    fn capacity_zero_disables_the_cache() {
        let cache = TokenCache::new(0);
        let key = cache_key("p", "t");
        cache.insert(key, 1, token(1e12));
        assert!(cache.get(&key, 1, 0).is_none());
    }
}
