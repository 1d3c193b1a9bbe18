//! Loading routes.yaml into a provider table, at start-up and whenever the file changes.
//! All or nothing: a file that does not parse, validate or load keeps the old providers
//! serving, and every problem is logged as `file:line:col: message`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tollgate_routes::ConfigErrors;
use tollgate_runtime::file_watch::FileChanges;
use tollgate_sidecar::telemetry::{Telemetry, TelemetryError};

use crate::providers::{ProviderError, ProviderSettings, ProviderTable, Providers};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(ConfigErrors),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

/// What one routes.yaml gives this service.
pub struct Loaded {
    pub table: ProviderTable,
    /// A hash of the text, to skip no-op reloads.
    pub hash: [u8; 32],
    /// `observability.tracing.otlp_endpoint`, `HOST:PORT`: where spans go.
    pub otlp_endpoint: Option<String>,
}

/// Reads and validates routes.yaml and builds its providers, reusing unchanged ones from
/// `previous`.
pub async fn load(
    path: &Path,
    previous: Option<&ProviderTable>,
    settings: &ProviderSettings,
) -> Result<Loaded, LoadError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
    let hash = Sha256::digest(text.as_bytes()).into();
    let config =
        tollgate_routes::parse(&path.display().to_string(), &text).map_err(LoadError::Invalid)?;
    let table = ProviderTable::build(&config, previous, settings).await?;
    let otlp_endpoint = config
        .observability
        .tracing
        .map(|t| t.otlp_endpoint.to_string());
    Ok(Loaded {
        table,
        hash,
        otlp_endpoint,
    })
}

/// Reloads on every change of `path` until the task is dropped; a new collector in
/// `observability.tracing` takes effect with the new providers.
pub async fn watch(
    path: PathBuf,
    mut changes: FileChanges,
    providers: Arc<Providers>,
    settings: ProviderSettings,
    telemetry: Option<Telemetry>,
    mut loaded_hash: [u8; 32],
) {
    loop {
        changes.changed().await;
        let current = providers.load();
        let loaded = load(&path, Some(&current), &settings)
            .await
            .and_then(|loaded| {
                if let Some(telemetry) = &telemetry {
                    telemetry.configure(loaded.otlp_endpoint.as_deref())?;
                }
                Ok(loaded)
            });
        match loaded {
            Ok(loaded) if loaded.hash == loaded_hash => {}
            Ok(Loaded { table, hash, .. }) => {
                tracing::info!(file = %path.display(), providers = table.len(), "routes.yaml reloaded");
                providers.store(table);
                loaded_hash = hash;
                settings.metrics.reload(true);
            }
            Err(error) => {
                settings.metrics.reload(false);
                match &error {
                    LoadError::Invalid(errors) => {
                        for line in errors.to_string().lines() {
                            tracing::error!("{line}");
                        }
                        tracing::error!(file = %path.display(), "routes.yaml rejected; keeping the previous auth providers");
                    }
                    other => {
                        tracing::error!(file = %path.display(), error = %other, "routes.yaml not reloaded; keeping the previous auth providers");
                    }
                }
            }
        }
    }
}
