//! The control plane's own HTTP endpoints: liveness, readiness and Prometheus metrics as
//! every Tollgate service serves them (`tollgate_runtime::http`), and a JSON `/status` that
//! says what every connected Envoy accepted or rejected, and `/members`, the Envoys this
//! replica holds, for the others.
//!
//! Its metrics describe state kept elsewhere (the reloader's counts, the node registry), so
//! they are read from that state at every scrape by a [`Collector`] rather than kept twice.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Json;
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tollgate_runtime::http::{self, Readiness};

use crate::fleet::peers::{MembersReport, ReportedMember};
use crate::fleet::{Fleet, SharingStatus};
use crate::reload::{ReloadStatus, Reloader};
use crate::snapshot::SnapshotCache;
use crate::xds::{NodeRegistry, NodeStatus};

/// What the admin endpoints read; they never write.
#[derive(Clone, Debug)]
pub struct AdminState {
    pub reloader: Arc<Reloader>,
    pub cache: Arc<SnapshotCache>,
    pub nodes: Arc<NodeRegistry>,
    pub fleet: Arc<Fleet>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    /// The version of the snapshot being served; null until a valid config has loaded.
    pub version: Option<String>,
    pub routes_file: String,
    pub last_reload: ReloadStatus,
    pub nodes: Vec<NodeStatus>,
    /// Envoys counted per group, and each local rate limit's share of its budget there.
    pub budget_sharing: SharingStatus,
}

/// `/healthz`, `/readyz` (ready once a valid configuration is served), `/metrics` and
/// `/status`.
pub fn router(state: AdminState) -> Router {
    let readiness = Readiness::default();
    // `serve` starts only once routes.yaml has loaded, and a later bad edit keeps it.
    readiness.set(state.cache.current().is_some());
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StateMetrics(state.clone())));
    http::router(Arc::new(registry), readiness).merge(
        Router::new()
            .route("/status", get(status))
            .route("/members", get(members))
            .with_state(state),
    )
}

/// Serves the admin endpoints on an already-bound listener until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    http::serve(listener, router(state), shutdown).await
}

fn current_status(state: &AdminState) -> Status {
    let current = state.cache.current_served();
    Status {
        version: current.as_ref().map(|s| s.whole().version().to_string()),
        routes_file: state.reloader.path().display().to_string(),
        last_reload: state.reloader.status(),
        nodes: state.nodes.statuses(current.as_deref()),
        budget_sharing: state.fleet.status(),
    }
}

async fn status(State(state): State<AdminState>) -> Json<Status> {
    Json(current_status(&state))
}

/// The nodes holding a stream to this replica, for the other replicas' budget sharing
/// ([`crate::fleet::peers`]).
async fn members(State(state): State<AdminState>) -> Json<MembersReport> {
    let members = state
        .nodes
        .members()
        .into_iter()
        .filter(|member| member.connected)
        .map(|member| ReportedMember {
            id: member.id,
            group: member.group,
        })
        .collect();
    Json(MembersReport { members })
}

/// The control plane's metrics, read from [`AdminState`] at every scrape.
#[derive(Debug)]
struct StateMetrics(AdminState);

impl Collector for StateMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = &self.0;
        let status = current_status(state);
        let (ok, failed) = state.reloader.counts();
        let mut reloads = encoder.encode_descriptor(
            "tollgate_config_reloads",
            "Attempts to load routes.yaml, by result.",
            None,
            MetricType::Counter,
        )?;
        for (result, count) in [("ok", ok), ("error", failed)] {
            ConstCounter::new(count).encode(reloads.encode_family(&[("result", result)])?)?;
        }
        gauge(
            &mut encoder,
            "tollgate_config_last_reload_success",
            "1 if the last attempt to load routes.yaml succeeded.",
            u64::from(status.last_reload.ok),
        )?;
        gauge(
            &mut encoder,
            "tollgate_config_last_reload_timestamp_seconds",
            "When routes.yaml was last loaded or rejected.",
            status.last_reload.at_unix_ms / 1000,
        )?;
        let expiry = state.reloader.config().certificate_expiry();
        let seconds = |not_after: i64| u64::try_from(not_after).unwrap_or(0);
        gauges(
            &mut encoder,
            "tollgate_listener_certificate_expiry_timestamp_seconds",
            "When a certificate a TLS listener serves expires (notAfter, Unix seconds).",
            expiry
                .listeners
                .iter()
                .map(|((listener, file), &not_after)| {
                    (
                        [
                            ("listener", listener.as_str()),
                            ("cert_file", file.as_str()),
                        ],
                        seconds(not_after),
                    )
                }),
        )?;
        gauges(
            &mut encoder,
            "tollgate_upstream_client_certificate_expiry_timestamp_seconds",
            "When the client certificate presented to a service expires (notAfter, Unix seconds).",
            expiry
                .upstream_clients
                .iter()
                .map(|(service, &not_after)| ([("service", service.as_str())], seconds(not_after))),
        )?;
        let connected = status.nodes.iter().filter(|n| n.connected).count();
        let in_sync = status
            .nodes
            .iter()
            .filter(|n| n.connected && n.in_sync)
            .count();
        gauge(
            &mut encoder,
            "tollgate_xds_connected_nodes",
            "Envoy nodes with an open ADS stream.",
            connected as u64,
        )?;
        gauge(
            &mut encoder,
            "tollgate_xds_nodes_in_sync",
            "Connected Envoy nodes that have acknowledged the current configuration.",
            in_sync as u64,
        )?;
        gauges(
            &mut encoder,
            "tollgate_xds_node_rejecting",
            "1 while a node's last answer for some resource type was a NACK.",
            status.nodes.iter().map(|n| {
                let nacking = n.types.values().any(|t| t.nack.is_some());
                ([("node", n.id.as_str())], u64::from(nacking))
            }),
        )?;
        gauges(
            &mut encoder,
            "tollgate_group_envoys",
            "Envoys counted per gateway group (here and at the peers), which share each local rate limit's budget.",
            status
                .budget_sharing
                .groups
                .iter()
                .map(|(group, &envoys)| ([("group", group.as_str())], u64::from(envoys))),
        )
    }
}

fn gauge_value(value: u64) -> ConstGauge {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

/// A gauge without labels.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    gauge_value(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// A gauge with one sample per label set; described even when it has none.
fn gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut described = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        gauge_value(value).encode(described.encode_family(&labels)?)?;
    }
    Ok(())
}
