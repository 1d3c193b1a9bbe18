//! The provider table: each auth provider of routes.yaml with its live key store, built
//! from a validated [`RoutesConfig`] and swapped whole (an `Arc`) on reload, so a check
//! sees one consistent table from start to end.
//!
//! Building reads key files, keys files and secrets (the I/O edge); everything after is
//! data. A provider whose configuration did not change keeps its key store across reloads,
//! so an edit elsewhere in routes.yaml neither refetches its JWKS, nor empties its token
//! cache, nor re-reads its API keys.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::task::JoinHandle;
use tollgate_routes::policy::{
    AuthProvider, CertificateField, ConsumerProfile, Credentials, JwtProvider, KeyLocation,
    KeySource,
};
use tollgate_routes::RoutesConfig;
use tollgate_runtime::file_watch::{FileChanges, WatchError};

use crate::api_keys::{KeyFile, KeyFileError};
use crate::identity::Identity;
use crate::jwks::{FetchError, HttpClient, JwksError, KeyOrigin, KeySet, KeyStore, RemoteJwks};
use crate::metrics::{Metrics, ProviderOutcomes};

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
    KeyFile {
        provider: String,
        source: KeyFileError,
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

/// One auth provider, ready to check credentials.
#[derive(Debug)]
pub struct Provider {
    /// As configured, with file paths made absolute.
    pub config: AuthProvider,
    pub verifier: Verifier,
    /// This provider's outcome counters.
    pub outcomes: ProviderOutcomes,
    _refresh: Option<AbortOnDrop>,
}

/// What a provider checks a credential against, built from its configuration.
#[derive(Debug)]
pub enum Verifier {
    Jwt {
        rules: JwtProvider,
        keys: Arc<KeyStore>,
    },
    ApiKey {
        location: KeyLocation,
        keys: Arc<KeyFile>,
    },
    ClientCertificate(CertificateConsumers),
}

/// Who a client certificate names, and what the upstream is told about them.
#[derive(Debug)]
pub struct CertificateConsumers {
    /// The certificate field naming the consumer.
    pub field: CertificateField,
    /// The consumers admitted with their identities, built once; `None` admits every
    /// verified certificate.
    listed: Option<HashMap<String, Arc<Identity>>>,
    forward_claims: std::collections::BTreeMap<String, String>,
}

impl CertificateConsumers {
    fn new(
        field: CertificateField,
        listed: Option<&std::collections::BTreeMap<String, ConsumerProfile>>,
        forward_claims: &std::collections::BTreeMap<String, String>,
    ) -> CertificateConsumers {
        let listed = listed.map(|profiles| {
            profiles
                .iter()
                .map(|(id, profile)| {
                    let identity = Identity::of_consumer(id, profile, forward_claims);
                    (id.clone(), Arc::new(identity))
                })
                .collect()
        });
        CertificateConsumers {
            field,
            listed,
            forward_claims: forward_claims.clone(),
        }
    }

    /// The identity of the consumer `id`, or `None` when the provider's consumer list does
    /// not admit it.
    pub fn identity(&self, id: &str) -> Option<Arc<Identity>> {
        match &self.listed {
            Some(admitted) => admitted.get(id).cloned(),
            None => Some(Arc::new(Identity::of_consumer(
                id,
                &ConsumerProfile::default(),
                &self.forward_claims,
            ))),
        }
    }
}

impl Provider {
    async fn build(
        config: AuthProvider,
        settings: &ProviderSettings,
    ) -> Result<Provider, ProviderError> {
        let name = config.name.clone();
        let (verifier, refresh) = match &config.credentials {
            Credentials::Jwt(rules) => {
                let (keys, refresh) = jwt_keys(&name, rules, settings).await?;
                let rules = rules.clone();
                (Verifier::Jwt { rules, keys }, refresh)
            }
            Credentials::ApiKey(key) => {
                let error = |source| ProviderError::KeyFile {
                    provider: name.clone(),
                    source,
                };
                let keys = KeyFile::load(
                    &name,
                    &key.keys_file,
                    &config.forward_claims,
                    Arc::clone(&settings.metrics),
                )
                .await
                .map_err(error)?;
                let changes =
                    FileChanges::watch(&key.keys_file).map_err(|source| ProviderError::Watch {
                        provider: name.clone(),
                        source,
                    })?;
                let keys = Arc::new(keys);
                let task = tokio::spawn(watch_keys_file(Arc::clone(&keys), changes));
                let location = key.location.clone();
                (Verifier::ApiKey { location, keys }, Some(AbortOnDrop(task)))
            }
            Credentials::ClientCertificate(certificates) => {
                let consumers = CertificateConsumers::new(
                    certificates.consumer_from,
                    certificates.consumers.as_ref(),
                    &config.forward_claims,
                );
                (Verifier::ClientCertificate(consumers), None)
            }
        };
        Ok(Provider {
            outcomes: settings.metrics.provider_outcomes(&name),
            config,
            verifier,
            _refresh: refresh,
        })
    }

    /// Waits until the provider can answer as configured: a remote JWKS's first fetch tried.
    async fn wait_loaded(&self) {
        if let Verifier::Jwt { keys, .. } = &self.verifier {
            keys.wait_loaded().await;
        }
    }
}

/// A JWT provider's key store, and the task that keeps it current (file watch or refresh).
async fn jwt_keys(
    name: &str,
    rules: &JwtProvider,
    settings: &ProviderSettings,
) -> Result<(Arc<KeyStore>, Option<AbortOnDrop>), ProviderError> {
    let metrics = Arc::clone(&settings.metrics);
    let store = |origin, keys| {
        Arc::new(KeyStore::new(
            name,
            origin,
            keys,
            settings.cooldown,
            Arc::clone(&metrics),
        ))
    };
    let keys_error = |origin: &dyn std::fmt::Display, source| ProviderError::Keys {
        provider: name.to_string(),
        origin: origin.to_string(),
        source,
    };
    Ok(match &rules.keys {
        KeySource::SharedSecretFile(path) => {
            let secret = read(name, path).await?;
            let set = KeySet::from_secret(&secret).map_err(|e| keys_error(&path.display(), e))?;
            (store(KeyOrigin::Secret, set), None)
        }
        KeySource::SharedSecretEnv(var) => {
            let secret = std::env::var(var).map_err(|_| ProviderError::Env {
                provider: name.to_string(),
                var: var.clone(),
            })?;
            let set = KeySet::from_secret(secret.as_bytes())
                .map_err(|e| keys_error(&format!("${var}"), e))?;
            (store(KeyOrigin::Secret, set), None)
        }
        KeySource::JwksFile(path) => {
            let bytes = read(name, path).await?;
            let set = KeySet::parse_jwks(&bytes).map_err(|e| keys_error(&path.display(), e))?;
            let changes = FileChanges::watch(path).map_err(|source| ProviderError::Watch {
                provider: name.to_string(),
                source,
            })?;
            let keys = store(KeyOrigin::File(path.clone()), set);
            let task = tokio::spawn(watch_file(Arc::clone(&keys), changes));
            (keys, Some(AbortOnDrop(task)))
        }
        KeySource::JwksUri(uri) => {
            let remote = RemoteJwks::new(uri, settings.client.clone()).map_err(|source| {
                ProviderError::Remote {
                    provider: name.to_string(),
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
    })
}

/// Re-reads a keys file whenever it changes; a version that does not read or validate is
/// logged with its `file:line:col` errors (which never hold a key: the file has hashes)
/// and the current keys keep serving.
async fn watch_keys_file(keys: Arc<KeyFile>, mut changes: FileChanges) {
    loop {
        changes.changed().await;
        match keys.reload().await {
            Ok(count) => {
                tracing::info!(file = %keys.path().display(), keys = count, "API keys reloaded")
            }
            Err(error) => {
                tracing::warn!(file = %keys.path().display(), %error, "API keys not reloaded; keeping the current keys")
            }
        }
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
            provider.wait_loaded().await;
        }
    }
}

fn resolve_paths(provider: &AuthProvider, base: &Path) -> AuthProvider {
    let mut resolved = provider.clone();
    let path = match &mut resolved.credentials {
        Credentials::Jwt(jwt) => match &mut jwt.keys {
            KeySource::JwksFile(path) | KeySource::SharedSecretFile(path) => Some(path),
            KeySource::JwksUri(_) | KeySource::SharedSecretEnv(_) => None,
        },
        Credentials::ApiKey(key) => Some(&mut key.keys_file),
        Credentials::ClientCertificate(_) => None,
    };
    if let Some(path) = path.filter(|p| p.is_relative()) {
        *path = base.join(&*path);
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
