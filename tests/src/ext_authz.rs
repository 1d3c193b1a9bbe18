//! tollgate-ext-authz under test, as a guarded process.
//!
//! The gRPC address must be known before routes.yaml is written (its `sidecars.ext_authz`
//! points Envoy there) while the service needs the routes file the control plane was
//! started with, so the builder reserves its ports first:
//!
//! ```ignore
//! let authz = ExtAuthz::new();
//! let cp = ControlPlane::new().routes(yaml_naming(authz.grpc_addr())).start().await;
//! let authz = authz.routes_file(cp.routes_path()).jwks(&jwks(&[&key])).start().await;
//! ```
//!
//! The service reads `auth_providers` from that same routes.yaml, as in production, so the
//! JWKS file is written next to it (`jwks_file: jwks.json` resolves against the routes
//! file's directory) and rotated there with [`RunningExtAuthz::write_jwks`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tollgate_testkit::process::{scratch_dir, Process};

use crate::http;
use crate::sidecar::Sidecar;

/// The JWKS file name, next to routes.yaml; routes.yaml says `jwks_file: jwks.json`.
pub const JWKS_FILE: &str = "jwks.json";

/// Loading routes.yaml and the key files is quick, but a debug build starting on a loaded
/// 2-core machine next to Envoy can take a while to answer.
const READY_PATIENCE: Duration = Duration::from_secs(60);

/// Builder for a tollgate-ext-authz process.
pub type ExtAuthz = Sidecar<ExtAuthzSettings>;

/// What only ext-authz is started with.
#[derive(Debug, Clone, Default)]
pub struct ExtAuthzSettings {
    jwks: Option<String>,
}

impl Sidecar<ExtAuthzSettings> {
    /// A JWKS document to write as `jwks.json` next to routes.yaml before starting.
    pub fn jwks(mut self, json: &str) -> Self {
        self.settings.jwks = Some(json.to_owned());
        self
    }

    /// Writes the JWKS file, starts the service and waits until `/readyz` answers 200.
    pub async fn start(self) -> RunningExtAuthz {
        let config_dir = match self.routes().parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if let Some(jwks) = &self.settings.jwks {
            write_jwks(&config_dir, jwks);
        }
        let dir = scratch_dir("tollgate-ext-authz-");
        let command = self.command("tollgate-ext-authz");
        let process =
            Process::spawn("ext-authz", command, dir.path()).expect("spawn tollgate-ext-authz");
        let mut authz = RunningExtAuthz {
            process,
            _dir: dir,
            config_dir,
            grpc_addr: self.grpc_addr(),
            metrics_addr: self.metrics_addr(),
        };
        authz.wait_until_ready().await;
        authz
    }
}

/// A running tollgate-ext-authz; dropping it kills the process.
#[derive(Debug)]
pub struct RunningExtAuthz {
    // Field order matters for Drop: the process dies before its log directory is removed.
    process: Process,
    _dir: tempfile::TempDir,
    config_dir: PathBuf,
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
}

impl RunningExtAuthz {
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The JWKS file the provider in routes.yaml reads.
    pub fn jwks_path(&self) -> PathBuf {
        self.config_dir.join(JWKS_FILE)
    }

    /// Replaces the JWKS file atomically (a sibling temporary file renamed over it), as a
    /// key-rotation job would, so the service never reads half a document.
    pub fn write_jwks(&mut self, json: &str) {
        write_jwks(&self.config_dir, json);
    }

    /// Sends `GET path` to the metrics server (`/metrics`, `/healthz`, `/readyz`).
    pub async fn metrics_get(&self, path: &str) -> anyhow::Result<http::Response> {
        http::get_at(self.metrics_addr, path).await
    }

    /// The value of the Prometheus sample whose name-and-labels is exactly `series`, e.g.
    /// `tollgate_ext_authz_checks_total{result="denied",reason="expired"}`; `None` if absent
    /// (a labelled counter appears only once it has counted something).
    pub async fn metric(&self, series: &str) -> anyhow::Result<Option<f64>> {
        let response = self.metrics_get("/metrics").await?;
        response.expect_status(200)?;
        Ok(response.text().lines().find_map(|line| {
            let value = line.strip_prefix(series)?.trim();
            value.split_whitespace().next()?.parse().ok()
        }))
    }

    /// The guard of the process, e.g. to read its logs.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Kills the service (SIGKILL), as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Freezes the service (SIGSTOP): Envoy's calls reach an open socket and wait out the
    /// sidecar timeout, as with a process stalled or behind a dead network.
    pub fn pause(&self) {
        self.process.pause();
    }

    /// Lets a [paused](Self::pause) service run again (SIGCONT).
    pub fn resume(&self) {
        self.process.resume();
    }

    /// Kills the service and starts it again on the same ports and files.
    pub async fn restart(&mut self) {
        self.process.restart().expect("spawn tollgate-ext-authz");
        self.wait_until_ready().await;
    }

    async fn wait_until_ready(&mut self) {
        let metrics_addr = self.metrics_addr;
        http::wait_until_ok(&mut self.process, metrics_addr, "/readyz", READY_PATIENCE).await;
    }
}

/// Writes the JWKS file `jwks.json` in `config_dir` atomically (see
/// [`RunningExtAuthz::write_jwks`]).
fn write_jwks(config_dir: &Path, json: &str) {
    let temporary = config_dir.join(".jwks.json.tmp");
    std::fs::write(&temporary, json)
        .unwrap_or_else(|e| panic!("write {}: {e}", temporary.display()));
    let path = config_dir.join(JWKS_FILE);
    std::fs::rename(&temporary, &path)
        .unwrap_or_else(|e| panic!("rename over {}: {e}", path.display()));
}
