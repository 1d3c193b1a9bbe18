//! tollgate-ext-authz under test, as a guarded process, and the tokens to feed it.
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

use crate::{binaries, http, ports, process::Process};

/// Signing keys, JWKS documents and tokens minted by hand (valid, malformed and hostile).
/// The same file ext-authz's own tests use, so both suites build tokens the same way.
#[path = "../../ext-authz/src/testkeys.rs"]
pub mod tokens;

/// The JWKS file name, next to routes.yaml; routes.yaml says `jwks_file: jwks.json`.
pub const JWKS_FILE: &str = "jwks.json";

/// Loading routes.yaml and the key files is quick, but a debug build starting on a loaded
/// 2-core machine next to Envoy can take a while to answer.
const READY_PATIENCE: Duration = Duration::from_secs(60);

/// Builder for a tollgate-ext-authz process.
#[derive(Debug, Clone)]
pub struct ExtAuthz {
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
    routes: Option<PathBuf>,
    jwks: Option<String>,
    log: Option<String>,
}

impl Default for ExtAuthz {
    fn default() -> Self {
        Self::new()
    }
}

impl ExtAuthz {
    /// Reserves the gRPC and metrics ports, so routes.yaml can name the gRPC address
    /// before the service starts.
    pub fn new() -> Self {
        Self {
            grpc_addr: ports::reserve_addr(),
            metrics_addr: ports::reserve_addr(),
            routes: None,
            jwks: None,
            log: None,
        }
    }

    /// The service's `TOLLGATE_LOG` filter, e.g. `info,tollgate_ext_authz=debug` to see a
    /// line per check (default: the test process's `TOLLGATE_LOG`, or `info`).
    pub fn log_filter(mut self, filter: &str) -> Self {
        self.log = Some(filter.to_owned());
        self
    }

    /// Where Envoy will call `Authorization/Check`: routes.yaml's `sidecars.ext_authz.address`.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The routes.yaml to serve, usually `cp.routes_path()`.
    pub fn routes_file(mut self, path: &Path) -> Self {
        self.routes = Some(path.to_path_buf());
        self
    }

    /// A JWKS document to write as `jwks.json` next to routes.yaml before starting.
    pub fn jwks(mut self, json: &str) -> Self {
        self.jwks = Some(json.to_owned());
        self
    }

    /// Writes the JWKS file, starts the service and waits until `/readyz` answers 200.
    pub async fn start(self) -> RunningExtAuthz {
        let routes = self
            .routes
            .expect("call .routes_file(path) before starting ext-authz");
        let config_dir = match routes.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut authz = RunningExtAuthz {
            process: None,
            killed: None,
            dir: crate::process::scratch_dir("tollgate-ext-authz-"),
            routes,
            config_dir,
            grpc_addr: self.grpc_addr,
            metrics_addr: self.metrics_addr,
            log: self.log,
        };
        if let Some(jwks) = &self.jwks {
            authz.write_jwks(jwks);
        }
        authz.spawn().await;
        authz
    }
}

/// A running tollgate-ext-authz; dropping it kills the process.
#[derive(Debug)]
pub struct RunningExtAuthz {
    // Field order matters for Drop: the process dies before its log directory is removed.
    process: Option<Process>,
    killed: Option<Process>,
    dir: tempfile::TempDir,
    routes: PathBuf,
    config_dir: PathBuf,
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
    log: Option<String>,
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
        let temporary = self.config_dir.join(".jwks.json.tmp");
        std::fs::write(&temporary, json)
            .unwrap_or_else(|e| panic!("write {}: {e}", temporary.display()));
        let path = self.jwks_path();
        std::fs::rename(&temporary, &path)
            .unwrap_or_else(|e| panic!("rename over {}: {e}", path.display()));
    }

    /// Sends `GET path` to the metrics server (`/metrics`, `/healthz`, `/readyz`).
    pub async fn metrics_get(&self, path: &str) -> anyhow::Result<http::Response> {
        http::get(self.metrics_addr.port(), path).await
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

    /// The guard of the running process, e.g. to read its logs.
    pub fn process(&self) -> Option<&Process> {
        self.process.as_ref()
    }

    /// Kills the service (SIGKILL), as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
            // Kept so that its logs are still printed if the test fails before a restart
            // (a restarted process appends to the same log files and prints them itself).
            self.killed = Some(process);
        }
    }

    /// Kills the service and starts it again on the same ports and files.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let mut command = binaries::tollgate_command("tollgate-ext-authz");
        command
            .arg("--routes")
            .arg(&self.routes)
            .args(["--grpc-addr", &self.grpc_addr.to_string()])
            .args(["--metrics-addr", &self.metrics_addr.to_string()]);
        if let Some(filter) = &self.log {
            command.env("TOLLGATE_LOG", filter);
        }
        let mut process = Process::spawn("ext-authz", command, self.dir.path())
            .expect("spawn tollgate-ext-authz");
        process
            .wait_until_ok(self.metrics_addr.port(), "/readyz", READY_PATIENCE)
            .await;
        self.process = Some(process);
        self.killed = None;
    }
}
