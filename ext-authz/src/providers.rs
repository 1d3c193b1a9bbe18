//! The provider table: each auth provider of routes.yaml with its live key store, built
//! from a validated [`RoutesConfig`] and swapped whole (an `Arc`) on reload, so a check
//! sees one consistent table from start to end.
//!
//! Building reads key files and secrets (the I/O edge); everything after is data. A
//! provider whose configuration did not change keeps its key store across reloads, so an
//! edit elsewhere in routes.yaml neither refetches its JWKS nor empties its token cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::task::JoinHandle;
use tollgate_routes::policy::{AuthProvider, KeySource};
use tollgate_routes::RoutesConfig;
use tollgate_runtime::file_watch::{FileChanges, WatchError};

use crate::jwks::{FetchError, HttpClient, JwksError, KeyOrigin, KeySet, KeyStore, RemoteJwks};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("auth provider \"{provider}\": cannot read {path}: {source}")]
    Read {
        provider: String,
        path: String,
        source: std::io::Error,
    },
    #[error("auth provider \"{provider}\": environment variable {var} is not set or not UTF-8")]
    Env { provider: String, var: String },
    #[error("auth provider \"{provider}\": {origin}: {source}")]
    Keys {
        provider: String,
        origin: String,
        source: JwksError,
    },
    #[error("auth provider \"{provider}\": {source}")]
    Remote {
        provider: String,
        source: FetchError,
    },
    #[error("auth provider \"{provider}\": {source}")]
    Watch {
        provider: String,
        source: WatchError,
    },
}

/// What every provider build needs besides its own configuration.
#[derive(Clone, Debug)]
pub struct ProviderSettings {
    /// routes.yaml's directory: relative key paths are relative to it.
    pub base_dir: PathBuf,
    pub client: HttpClient,
    /// How often a remote JWKS is refetched when all is well.
    pub refresh_interval: Duration,
    /// The unknown-`kid` refetch cooldown, and the retry delay after a failed fetch.
    pub cooldown: Duration,
    pub metrics: Arc<Metrics>,
}

/// Aborts a background task when the provider that owns it is dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One auth provider, ready to verify.
#[derive(Debug)]
pub struct Provider {
    /// As configured, with key paths made absolute.
    pub config: AuthProvider,
    pub keys: Arc<KeyStore>,
    _refresh: Option<AbortOnDrop>,
}

impl Provider {
    async fn build(
        config: AuthProvider,
        settings: &ProviderSettings,
    ) -> Result<Provider, ProviderError> {
        let name = config.name.clone();
        let metrics = Arc::clone(&settings.metrics);
        let store = |origin, keys| {
            Arc::new(KeyStore::new(
                &name,
                origin,
                keys,
                settings.cooldown,
                Arc::clone(&metrics),
            ))
        };
        let keys_error = |origin: &dyn std::fmt::Display, source| ProviderError::Keys {
            provider: name.clone(),
            origin: origin.to_string(),
            source,
        };
        let (keys, refresh) = match &config.keys {
            KeySource::SharedSecretFile(path) => {
                let secret = read(&name, path).await?;
                let set =
                    KeySet::from_secret(&secret).map_err(|e| keys_error(&path.display(), e))?;
                (store(KeyOrigin::Secret, set), None)
            }
            KeySource::SharedSecretEnv(var) => {
                let secret = std::env::var(var).map_err(|_| ProviderError::Env {
                    provider: name.clone(),
                    var: var.clone(),
                })?;
                let set = KeySet::from_secret(secret.as_bytes())
                    .map_err(|e| keys_error(&format!("${var}"), e))?;
                (store(KeyOrigin::Secret, set), None)
            }
            KeySource::JwksFile(path) => {
                let bytes = read(&name, path).await?;
                let set = KeySet::parse_jwks(&bytes).map_err(|e| keys_error(&path.display(), e))?;
                let changes = FileChanges::watch(path).map_err(|source| ProviderError::Watch {
                    provider: name.clone(),
                    source,
                })?;
                let keys = store(KeyOrigin::File(path.clone()), set);
                let task = tokio::spawn(watch_file(Arc::clone(&keys), changes));
                (keys, Some(AbortOnDrop(task)))
            }
            KeySource::JwksUri(uri) => {
                let remote = RemoteJwks::new(uri, settings.client.clone()).map_err(|source| {
                    ProviderError::Remote {
                        provider: name.clone(),
                        source,
                    }
                })?;
                // Empty until the first fetch; tokens meanwhile get "unknown key", which
                // joins the in-flight fetch.
                let keys = store(KeyOrigin::Remote(Box::new(remote)), KeySet::default());
                let task = tokio::spawn(refresh_remote(
                    Arc::clone(&keys),
                    settings.refresh_interval,
                    settings.cooldown,
                ));
                (keys, Some(AbortOnDrop(task)))
            }
        };
        Ok(Provider {
            config,
            keys,
            _refresh: refresh,
        })
    }
}

async fn read(provider: &str, path: &Path) -> Result<Vec<u8>, ProviderError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| ProviderError::Read {
            provider: provider.to_string(),
            path: path.display().to_string(),
            source,
        })
}

async fn watch_file(keys: Arc<KeyStore>, mut changes: FileChanges) {
    loop {
        changes.changed().await;
        if let Err(error) = keys.reload_file().await {
            if let KeyOrigin::File(path) = keys.origin() {
                tracing::warn!(file = %path.display(), %error, "JWKS file not reloaded; keeping the current keys");
            }
        }
    }
}

/// The least delay between retries of a failing fetch, even with a zero cooldown.
const MIN_RETRY: Duration = Duration::from_secs(1);

async fn refresh_remote(keys: Arc<KeyStore>, interval: Duration, retry: Duration) {
    // The first fetch is due at once; after that one per interval, sooner after a failure.
    let mut since_last = interval;
    loop {
        let wait = match keys.scheduled_refresh(since_last).await {
            Ok(_) => interval,
            Err(error) => {
                tracing::warn!(%error, "JWKS fetch failed; keeping the current keys");
                retry.min(interval).max(MIN_RETRY)
            }
        };
        keys.mark_loaded();
        since_last = wait / 2;
        tokio::time::sleep(wait).await;
    }
}

/// Every provider, by name.
#[derive(Debug, Default)]
pub struct ProviderTable {
    providers: HashMap<String, Arc<Provider>>,
}

impl ProviderTable {
    /// Builds the table for `config`, reusing providers of `previous` whose configuration
    /// is unchanged. All or nothing: the first failure is returned and nothing is kept.
    pub async fn build(
        config: &RoutesConfig,
        previous: Option<&ProviderTable>,
        settings: &ProviderSettings,
    ) -> Result<ProviderTable, ProviderError> {
        let mut providers = HashMap::new();
        for (name, provider) in &config.auth_providers {
            let resolved = resolve_paths(provider, &settings.base_dir);
            let reused = previous
                .and_then(|table| table.providers.get(name))
                .filter(|old| old.config == resolved)
                .cloned();
            let provider = match reused {
                Some(old) => old,
                None => Arc::new(Provider::build(resolved, settings).await?),
            };
            providers.insert(name.clone(), provider);
        }
        Ok(ProviderTable { providers })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.get(name)
    }

    pub fn len(&self) -> usize {
        self.providers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Waits until every remote provider has tried its first fetch (for readiness).
    pub async fn wait_loaded(&self) {
        for provider in self.providers.values() {
            provider.keys.wait_loaded().await;
        }
    }
}

fn resolve_paths(provider: &AuthProvider, base: &Path) -> AuthProvider {
    let mut resolved = provider.clone();
    match &mut resolved.keys {
        KeySource::JwksFile(path) | KeySource::SharedSecretFile(path) if path.is_relative() => {
            *path = base.join(&*path);
        }
        _ => {}
    }
    resolved
}

/// The current table, replaced atomically on reload.
#[derive(Debug, Default)]
pub struct Providers {
    current: RwLock<Arc<ProviderTable>>,
}

impl Providers {
    pub fn new(table: ProviderTable) -> Providers {
        Providers {
            current: RwLock::new(Arc::new(table)),
        }
    }

    pub fn load(&self) -> Arc<ProviderTable> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn store(&self, table: ProviderTable) {
        let table = Arc::new(table);
        match self.current.write() {
            Ok(mut guard) => *guard = table,
            Err(poisoned) => *poisoned.into_inner() = table,
        }
    }
}
