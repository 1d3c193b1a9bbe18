//! routes.yaml as ext-authz serves it: a provider table, loaded at start-up and whenever
//! the file changes by the reload loop every service shares (`tollgate_runtime::reload`).
//! All or nothing: a file that does not parse, validate or load keeps the old providers
//! serving, and every problem is logged as `file:line:col: message`.

use std::path::Path;
use std::sync::Arc;

use tollgate_runtime::reload::{Config, Outcome, Read};
use tollgate_sidecar::telemetry::{Telemetry, TelemetryError};

use crate::providers::{ProviderError, ProviderSettings, ProviderTable, Providers};

/// Loads routes.yaml into the provider table, and reloads it.
pub type Reloader = tollgate_runtime::reload::Reloader<AuthProviders>;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Routes(#[from] tollgate_routes::LoadError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

/// The auth providers routes.yaml declares, served to checks: ext-authz's [`Config`].
pub struct AuthProviders {
    pub providers: Arc<Providers>,
    pub settings: ProviderSettings,
    /// Where spans go, which `observability.tracing` says; a new collector takes effect
    /// with the new providers.
    pub telemetry: Option<Telemetry>,
}

impl AuthProviders {
    /// Reads and validates routes.yaml and builds its providers, reusing unchanged ones from
    /// the table served now, then points `telemetry` at the file's collector.
    async fn load(&self, path: &Path) -> Result<ProviderTable, LoadError> {
        let config = tollgate_routes::load(path)?;
        let current = self.providers.load();
        let table = ProviderTable::build(&config, Some(&current), &self.settings).await?;
        if let Some(telemetry) = &self.telemetry {
            let collector = config.observability.tracing.map(|t| t.otlp_endpoint);
            telemetry.configure(collector.as_ref().map(ToString::to_string).as_deref())?;
        }
        Ok(table)
    }
}

impl Config for AuthProviders {
    type Loaded = ProviderTable;
    type Error = LoadError;
    const NAME: &'static str = "routes.yaml";

    async fn read(&self, path: &Path) -> Read<Self> {
        Read {
            outcome: self.load(path).await,
            files: Vec::new(),
        }
    }

    fn serve(&self, table: ProviderTable) -> Option<String> {
        let served = format!("{} auth providers", table.len());
        self.providers.store(table);
        Some(served)
    }

    fn reloaded(&self, outcome: Outcome) {
        self.settings.metrics.reload(outcome != Outcome::Refused);
    }
}
