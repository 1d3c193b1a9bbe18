//! The control plane's own HTTP endpoints: liveness, readiness, Prometheus metrics, and a
//! JSON status that says what every connected Envoy accepted or rejected.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use crate::reload::{ReloadStatus, Reloader};
use crate::snapshot::SnapshotCache;
use crate::xds::{NodeRegistry, NodeStatus};

/// What the admin endpoints read; they never write.
#[derive(Clone, Debug)]
pub struct AdminState {
    pub reloader: Arc<Reloader>,
    pub cache: Arc<SnapshotCache>,
    pub nodes: Arc<NodeRegistry>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    /// The version of the snapshot being served; null until a valid config has loaded.
    pub version: Option<String>,
    pub routes_file: String,
    pub last_reload: ReloadStatus,
    pub nodes: Vec<NodeStatus>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves the admin endpoints on an already-bound listener until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn ready(State(state): State<AdminState>) -> Response {
    if state.cache.current().is_some() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no valid configuration loaded\n",
        )
            .into_response()
    }
}

fn current_status(state: &AdminState) -> Status {
    let current = state.cache.current();
    Status {
        version: current.as_ref().map(|s| s.version().to_string()),
        routes_file: state.reloader.path().display().to_string(),
        last_reload: state.reloader.status(),
        nodes: state.nodes.statuses(current.as_deref()),
    }
}

async fn status(State(state): State<AdminState>) -> Json<Status> {
    Json(current_status(&state))
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let status = current_status(&state);
    let (ok, failed) = state.reloader.counts();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    metric(
        "tollgate_config_reloads_total",
        "counter",
        "Attempts to load routes.yaml, by result.",
        &[
            (labels(&[("result", "ok")]), ok),
            (labels(&[("result", "error")]), failed),
        ],
    );
    metric(
        "tollgate_config_last_reload_success",
        "gauge",
        "1 if the last attempt to load routes.yaml succeeded.",
        &[(String::new(), u64::from(status.last_reload.ok))],
    );
    metric(
        "tollgate_config_last_reload_timestamp_seconds",
        "gauge",
        "When routes.yaml was last loaded or rejected.",
        &[(String::new(), status.last_reload.at_unix_ms / 1000)],
    );
    let expiry = state.reloader.certificate_expiry();
    let seconds = |not_after: i64| u64::try_from(not_after).unwrap_or(0);
    let listeners: Vec<(String, u64)> = expiry
        .listeners
        .iter()
        .map(|((listener, file), &not_after)| {
            (
                labels(&[("listener", listener), ("cert_file", file)]),
                seconds(not_after),
            )
        })
        .collect();
    metric(
        "tollgate_listener_certificate_expiry_timestamp_seconds",
        "gauge",
        "When a certificate a TLS listener serves expires (notAfter, Unix seconds).",
        &listeners,
    );
    let clients: Vec<(String, u64)> = expiry
        .upstream_clients
        .iter()
        .map(|(service, &not_after)| (labels(&[("service", service)]), seconds(not_after)))
        .collect();
    metric(
        "tollgate_upstream_client_certificate_expiry_timestamp_seconds",
        "gauge",
        "When the client certificate presented to a service expires (notAfter, Unix seconds).",
        &clients,
    );
    let connected = status.nodes.iter().filter(|n| n.connected).count() as u64;
    let in_sync = status
        .nodes
        .iter()
        .filter(|n| n.connected && n.in_sync)
        .count() as u64;
    metric(
        "tollgate_xds_connected_nodes",
        "gauge",
        "Envoy nodes with an open ADS stream.",
        &[(String::new(), connected)],
    );
    metric(
        "tollgate_xds_nodes_in_sync",
        "gauge",
        "Connected Envoy nodes that have acknowledged the current configuration.",
        &[(String::new(), in_sync)],
    );
    let rejecting: Vec<(String, u64)> = status
        .nodes
        .iter()
        .map(|n| {
            let nacking = n.types.values().any(|t| t.nack.is_some());
            (labels(&[("node", &n.id)]), u64::from(nacking))
        })
        .collect();
    metric(
        "tollgate_xds_node_rejecting",
        "gauge",
        "1 while a node's last answer for some resource type was a NACK.",
        &rejecting,
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// A sample's label set, `{name="value",…}`, each value escaped.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(name, value)| format!("{name}=\"{}\"", escape_label(value)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// Prometheus text format §"Comments, help text, and type information": escape \, " and \n.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
