//! What starting either sidecar under test takes: both binaries serve the limits or auth
//! providers of the control plane's routes.yaml (`--routes`) on a gRPC and a metrics address
//! (`--grpc-addr`, `--metrics-addr`), logging at `TOLLGATE_LOG`.
//!
//! Envoy finds a sidecar at the address routes.yaml names (`sidecars.*.address`), and the
//! sidecar reads that same routes.yaml, so the builder reserves its ports before the control
//! plane starts; see [`crate::ext_authz`] and [`crate::ratelimit`] for the flags only one
//! of them takes (`S`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use tollgate_testkit::ports::reserve_addr;

use crate::binaries;
use crate::netns::{Host, NetworkNamespace};

/// Builder for a sidecar process, with `S` the settings only that sidecar has.
#[derive(Debug, Clone)]
pub struct Sidecar<S> {
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
    routes: Option<PathBuf>,
    log: Option<String>,
    /// `--tls-cert`, `--tls-key`, `--client-ca` and their files.
    tls_flags: Vec<(&'static str, PathBuf)>,
    /// A network namespace to run in, or (`None`) loopback here.
    host: Option<Host>,
    pub(crate) settings: S,
}

impl<S: Default> Default for Sidecar<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Default> Sidecar<S> {
    /// Reserves the gRPC and metrics ports, so routes.yaml can name the gRPC address
    /// before the service starts.
    pub fn new() -> Self {
        Self {
            grpc_addr: reserve_addr(),
            metrics_addr: reserve_addr(),
            routes: None,
            log: None,
            tls_flags: Vec::new(),
            host: None,
            settings: S::default(),
        }
    }

    /// Runs inside `ns`, as on a host of its own, serving gRPC on its address port 9191 and
    /// metrics on 9192 (the defaults, free in a namespace of its own), so that
    /// [`NetworkNamespace::cut`] cuts it off.
    pub fn in_namespace(ns: &NetworkNamespace) -> Self {
        let host = ns.host();
        Self {
            grpc_addr: SocketAddr::new(host.ip(), 9191),
            metrics_addr: SocketAddr::new(host.ip(), 9192),
            routes: None,
            log: None,
            tls_flags: Vec::new(),
            host: Some(host),
            settings: S::default(),
        }
    }
}

impl<S> Sidecar<S> {
    /// The service's `TOLLGATE_LOG` filter, e.g. `info,tollgate_ext_authz=debug` or
    /// `info,tollgate_ratelimit=debug` to see a line per check or decision (default: the
    /// test process's `TOLLGATE_LOG`, or `info`).
    pub fn log_filter(mut self, filter: &str) -> Self {
        self.log = Some(filter.to_owned());
        self
    }

    /// Where Envoy will call it: the `sidecars.ext_authz.address` or
    /// `sidecars.rate_limit.address` of routes.yaml.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The routes.yaml to serve (`--routes`), normally `cp.routes_path()`.
    pub fn routes_file(mut self, path: &Path) -> Self {
        self.routes = Some(path.to_path_buf());
        self
    }

    /// Serve gRPC over TLS with `cert` and `key` (PEM files), requiring client certificates
    /// from `client_ca` when given.
    pub fn grpc_tls(mut self, cert: &Path, key: &Path, client_ca: Option<&Path>) -> Self {
        self.tls_flags = vec![
            ("--tls-cert", cert.to_path_buf()),
            ("--tls-key", key.to_path_buf()),
        ];
        if let Some(ca) = client_ca {
            self.tls_flags.push(("--client-ca", ca.to_path_buf()));
        }
        self
    }

    /// The namespace it runs in, if not here.
    pub(crate) fn host(&self) -> Option<&Host> {
        self.host.as_ref()
    }

    /// The routes.yaml given with [`Self::routes_file`].
    pub(crate) fn routes(&self) -> &Path {
        self.routes
            .as_deref()
            .expect("call .routes_file(cp.routes_path()) before .start()")
    }

    /// `binary` with the flags both sidecars take.
    pub(crate) fn command(&self, binary: &str) -> Command {
        let mut command = binaries::tollgate_command(binary);
        command
            .arg("--routes")
            .arg(self.routes())
            .args(["--grpc-addr", &self.grpc_addr.to_string()])
            .args(["--metrics-addr", &self.metrics_addr.to_string()]);
        for (flag, path) in &self.tls_flags {
            command.arg(flag).arg(path);
        }
        if let Some(filter) = &self.log {
            command.env("TOLLGATE_LOG", filter);
        }
        match &self.host {
            Some(host) => host.wrap(&command),
            None => command,
        }
    }
}
