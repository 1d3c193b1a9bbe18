//! [`KeyStore`]: the current key set of one provider, swapped whole when its source changes,
//! with an epoch that tells the token cache when verified tokens may no longer be trusted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::remote::{FetchError, RemoteJwks};
use super::{JwksError, KeySet};
use crate::metrics::Metrics;

/// How long after one fetch an unknown `kid` may trigger another (panva/jose's default).
/// Without it a stream of tokens with made-up kids would turn into a stream of requests to
/// the issuer; with it, a real rotation is picked up within this delay at worst.
pub const KEY_REFRESH_COOLDOWN: Duration = Duration::from_secs(30);

/// Epochs are unique across every store in the process, so a cache entry made under one
/// provider instance is never valid for a replacement of the same name.
static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);

fn next_epoch() -> u64 {
    NEXT_EPOCH.fetch_add(1, Ordering::Relaxed)
}

/// Where a store's keys come from.
#[derive(Debug)]
pub enum KeyOrigin {
    /// A shared secret: fixed for the life of the provider.
    Secret,
    /// A JWKS file, re-read when it changes.
    File(PathBuf),
    /// A JWKS URL, fetched and refreshed.
    Remote(Box<RemoteJwks>),
}

#[derive(Debug)]
pub struct KeyStore {
    provider: String,
    origin: KeyOrigin,
    current: RwLock<Arc<KeySet>>,
    epoch: AtomicU64,
    /// When the last remote fetch started, for the unknown-`kid` cooldown.
    last_fetch: Mutex<Option<Instant>>,
    /// Held for the duration of a fetch: one fetch at a time, and waiters share its result.
    fetching: tokio::sync::Mutex<()>,
    /// True while a fetch runs, so a check can tell "fetched recently" from "being fetched
    /// now" (wait for it) without touching the lock.
    fetch_in_flight: std::sync::atomic::AtomicBool,
    cooldown: Duration,
    metrics: Arc<Metrics>,
    /// Becomes true once a remote origin has tried its first fetch.
    loaded: tokio::sync::watch::Sender<bool>,
}

impl KeyStore {
    pub fn new(
        provider: &str,
        origin: KeyOrigin,
        initial: KeySet,
        cooldown: Duration,
        metrics: Arc<Metrics>,
    ) -> KeyStore {
        metrics.set_keys(provider, initial.len());
        let remote = matches!(origin, KeyOrigin::Remote(_));
        KeyStore {
            loaded: tokio::sync::watch::Sender::new(!remote),
            provider: provider.to_string(),
            origin,
            current: RwLock::new(Arc::new(initial)),
            epoch: AtomicU64::new(next_epoch()),
            last_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            fetch_in_flight: std::sync::atomic::AtomicBool::new(false),
            cooldown,
            metrics,
        }
    }

    /// Records that the first fetch was tried, whatever its outcome.
    pub fn mark_loaded(&self) {
        self.loaded.send_replace(true);
    }

    /// Resolves once the keys are as loaded as they will be without retries.
    pub async fn wait_loaded(&self) {
        let mut loaded = self.loaded.subscribe();
        // Err only if the sender is gone, and it lives as long as `self`.
        let _ = loaded.wait_for(|done| *done).await;
    }

    pub fn origin(&self) -> &KeyOrigin {
        &self.origin
    }

    /// The keys to verify with now.
    pub fn current(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            // A panic while swapping cannot leave a half-written Arc; keep serving.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Changes whenever the key set does; cached tokens carry the epoch they were verified in.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Installs `keys` if they differ from the current set; returns whether they did.
    pub fn replace(&self, keys: KeySet) -> bool {
        if keys.fingerprint() == self.current().fingerprint() {
            return false;
        }
        let count = keys.len();
        {
            let mut guard = match self.current.write() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            *guard = Arc::new(keys);
            // Bumped under the write lock so no reader pairs the new set with the old epoch.
            self.epoch.store(next_epoch(), Ordering::Release);
        }
        self.metrics.set_keys(&self.provider, count);
        tracing::info!(provider = %self.provider, keys = count, "key set changed");
        true
    }

    /// Re-reads a file origin; a bad file keeps the old keys.
    pub async fn reload_file(&self) -> Result<bool, JwksError> {
        let KeyOrigin::File(path) = &self.origin else {
            return Ok(false);
        };
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| JwksError::Syntax(format!("cannot read {}: {e}", path.display())))?;
        Ok(self.replace(KeySet::parse_jwks(&bytes)?))
    }

    /// Fetches a remote origin now (a scheduled refresh). On failure the old set stays.
    pub async fn refresh(&self) -> Result<bool, FetchError> {
        let KeyOrigin::Remote(remote) = &self.origin else {
            return Ok(false);
        };
        let _fetching = self.fetching.lock().await;
        self.fetch_locked(remote).await
    }

    /// The background refresh: like [`KeyStore::refresh`], but skipped when another fetch
    /// (one for an unknown `kid`) started less than `interval` ago, so the issuer sees one
    /// fetch per interval at most from the schedule.
    pub async fn scheduled_refresh(&self, interval: Duration) -> Result<bool, FetchError> {
        let KeyOrigin::Remote(remote) = &self.origin else {
            return Ok(false);
        };
        let _fetching = self.fetching.lock().await;
        if self.fetched_within(interval) {
            return Ok(false);
        }
        self.fetch_locked(remote).await
    }

    /// Called when a token names a `kid` the set lacks: fetches again unless a fetch
    /// started within the cooldown, and shares an in-flight fetch rather than starting a
    /// second. Returns whether the key set changed (so the token is worth a second look).
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        let KeyOrigin::Remote(remote) = &self.origin else {
            return false;
        };
        // Checked before the fetch lock too: a flood of made-up kids within the cooldown
        // is refused without any task queueing on the lock. A fetch under way is waited
        // for instead (its keys may be the ones this token needs).
        if self.fetched_within(self.cooldown)
            && !self
                .fetch_in_flight
                .load(std::sync::atomic::Ordering::Acquire)
        {
            self.metrics.jwks_fetch(&self.provider, "cooldown");
            return false;
        }
        let before = self.epoch();
        let _fetching = match self.fetching.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // A fetch is running: wait for it instead of starting another.
                drop(self.fetching.lock().await);
                return self.epoch() != before;
            }
        };
        // Another task may have fetched between the check above and taking the lock.
        if self.fetched_within(self.cooldown) {
            self.metrics.jwks_fetch(&self.provider, "cooldown");
            return false;
        }
        match self.fetch_locked(remote).await {
            Ok(changed) => changed,
            Err(error) => {
                tracing::warn!(provider = %self.provider, %error, "JWKS fetch failed; keeping the current keys");
                false
            }
        }
    }

    fn fetched_within(&self, period: Duration) -> bool {
        self.last_fetch
            .lock()
            .ok()
            .and_then(|last| *last)
            .is_some_and(|at| at.elapsed() < period)
    }

    async fn fetch_locked(&self, remote: &RemoteJwks) -> Result<bool, FetchError> {
        /// Lowers the flag however the fetch ends: a Check whose stream Envoy resets
        /// mid-fetch drops this future at the `.await`, and a flag left up would let every
        /// later unknown `kid` past the cooldown.
        struct InFlight<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.store(false, std::sync::atomic::Ordering::Release);
            }
        }
        self.fetch_in_flight
            .store(true, std::sync::atomic::Ordering::Release);
        let _in_flight = InFlight(&self.fetch_in_flight);
        self.fetch_now(remote).await
    }

    async fn fetch_now(&self, remote: &RemoteJwks) -> Result<bool, FetchError> {
        if let Ok(mut last) = self.last_fetch.lock() {
            *last = Some(Instant::now());
        }
        let result = remote
            .fetch()
            .await
            .and_then(|bytes| KeySet::parse_jwks(&bytes).map_err(FetchError::Jwks));
        match result {
            Ok(keys) => {
                let changed = self.replace(keys);
                self.metrics.jwks_fetch(
                    &self.provider,
                    if changed { "changed" } else { "unchanged" },
                );
                Ok(changed)
            }
            Err(error) => {
                self.metrics.jwks_fetch(&self.provider, "error");
                Err(error)
            }
        }
    }
}
