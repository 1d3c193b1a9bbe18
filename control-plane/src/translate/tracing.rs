//! OpenTelemetry tracing on Envoy's side: the HTTP connection manager's `tracing` with the
//! `envoy.tracers.opentelemetry` provider, exporting over OTLP/gRPC through an HTTP/2
//! cluster for the collector.
//!
//! Nothing else is needed for one trace per request: Envoy's tracer reads and writes W3C
//! `traceparent`, the router injects the request span's context into the upstream request,
//! and Envoy's gRPC client starts a child span for each ext_authz and ratelimit call and
//! injects *its* context into the call's metadata, where the sidecars pick it up.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::trace::v3::{tracing::http, OpenTelemetryConfig};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as HcmTracing;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::envoy::config::trace::v3::tracing::Http as TracingProvider;
use envoy_types::pb::google::protobuf::UInt32Value;
use tollgate_routes::Tracing;

use super::auth::grpc_service;
use super::{any, cluster};

pub(super) const CLUSTER: &str = "tollgate_otlp";
const TRACER: &str = "envoy.tracers.opentelemetry";

/// How long one export to the collector may take. Exports are off the request path (Envoy
/// batches spans and flushes them every 5 s), so this bounds only how long a slow
/// collector holds one batch.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Spans Envoy keeps while the collector cannot take them; past this it drops them rather
/// than grow (Envoy's default, stated so the bound is visible here).
const MAX_CACHED_SPANS: u32 = 1024;

/// The collector's cluster: HTTP/2 to `otlp_endpoint`, like the sidecars' clusters.
pub(super) fn collector_cluster(tracing: &Tracing) -> (Cluster, Option<ClusterLoadAssignment>) {
    cluster::sidecar(CLUSTER, &tracing.otlp_endpoint)
}

/// The connection manager's tracing settings.
pub(super) fn hcm_tracing(tracing: &Tracing) -> HcmTracing {
    let provider = TracingProvider {
        name: TRACER.to_string(),
        config_type: Some(http::ConfigType::TypedConfig(any(&OpenTelemetryConfig {
            grpc_service: Some(grpc_service(CLUSTER, EXPORT_TIMEOUT)),
            service_name: tracing.service_name.clone(),
            max_cache_size: Some(UInt32Value {
                value: MAX_CACHED_SPANS,
            }),
            ..Default::default()
        }))),
    };
    HcmTracing {
        // Envoy's sampling settings are percentages; routes.yaml's rate is a fraction, as
        // OpenTelemetry's samplers take it.
        random_sampling: Some(percent(tracing.sample_rate)),
        // `x-client-trace-id` would let any client force a trace past `sample_rate`; a
        // client that wants its request traced sends a sampled `traceparent` instead, which
        // Envoy's OpenTelemetry tracer honours as the parent's decision.
        client_sampling: Some(percent(0.0)),
        overall_sampling: Some(percent(1.0)),
        provider: Some(provider),
        ..Default::default()
    }
}

fn percent(fraction: f64) -> Percent {
    Percent {
        value: fraction * 100.0,
    }
}

#[cfg(test)]
#[path = "tracing_tests.rs"]
mod tracing_tests;
