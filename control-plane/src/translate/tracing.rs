//! OpenTelemetry tracing on Envoy's side: the HTTP connection manager's `tracing` with the
//! `envoy.tracers.opentelemetry` provider, exporting over OTLP/gRPC through an HTTP/2
//! cluster for the collector.
//!
//! Nothing else is needed for one trace per request: Envoy's tracer reads and writes W3C
//! `traceparent`, the router injects the request span's context into the upstream request,
//! and Envoy's gRPC client starts a child span for each ext_authz and ratelimit call and
//! injects *its* context into the call's metadata, where the sidecars pick it up.

use tollgate_proto::envoy::config::cluster::v3::Cluster;
use tollgate_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use tollgate_proto::envoy::config::trace::v3::{tracing::http, OpenTelemetryConfig};
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as HcmTracing;
use tollgate_proto::envoy::config::core::v3::TypedExtensionConfig;
use tollgate_proto::envoy::extensions::tracers::opentelemetry::samplers::v3::{
    ParentBasedSamplerConfig, TraceIdRatioBasedSamplerConfig,
};
use tollgate_proto::envoy::r#type::v3::{
    fractional_percent::DenominatorType, FractionalPercent, Percent,
};
use tollgate_proto::envoy::config::trace::v3::tracing::Http as TracingProvider;
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::RequestIdExtension;
use tollgate_proto::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig;
use tollgate_proto::google::protobuf::{BoolValue, UInt32Value};
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
    // One collector: no health service is ever asked for.
    cluster::sidecar(
        CLUSTER,
        std::slice::from_ref(&tracing.otlp_endpoint),
        "",
        None,
        EXPORT_TIMEOUT,
    )
}

/// The connection manager's tracing settings.
pub(super) fn hcm_tracing(tracing: &Tracing) -> HcmTracing {
    let provider = TracingProvider {
        name: TRACER.to_string(),
        config_type: Some(http::ConfigType::TypedConfig(any(&OpenTelemetryConfig {
            grpc_service: Some(grpc_service(CLUSTER, EXPORT_TIMEOUT, 1)),
            service_name: tracing.service_name.clone(),
            max_cache_size: Some(UInt32Value {
                value: MAX_CACHED_SPANS,
            }),
            sampler: Some(sampler(tracing.sample_rate)),
            ..Default::default()
        }))),
    };
    HcmTracing {
        // With request ids out of sampling (see `request_id_extension`) the tracer's own
        // sampler decides; the connection manager's percentages are stated to agree with it.
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

/// OpenTelemetry's parent-based sampling, in Envoy: a request whose `traceparent` says
/// sampled (or not) keeps its caller's decision, so a trace begun upstream of the gateway
/// stays whole; any other request starts a trace with probability `sample_rate`, decided
/// from its trace id as every OpenTelemetry SDK decides it.
fn sampler(sample_rate: f64) -> TypedExtensionConfig {
    // Parts per million: the finest denominator Envoy offers (0.0001%).
    let per_million = (sample_rate * 1_000_000.0).round() as u32;
    let ratio = TypedExtensionConfig {
        name: "envoy.tracers.opentelemetry.samplers.trace_id_ratio_based".to_string(),
        typed_config: Some(any(&TraceIdRatioBasedSamplerConfig {
            sampling_percentage: Some(FractionalPercent {
                numerator: per_million,
                denominator: DenominatorType::Million as i32,
            }),
        })),
    };
    TypedExtensionConfig {
        name: "envoy.tracers.opentelemetry.samplers.parent_based".to_string(),
        typed_config: Some(any(&ParentBasedSamplerConfig {
            wrapped_sampler: Some(ratio),
        })),
    }
}

/// Request ids that neither decide nor record sampling. By default Envoy derives the trace
/// decision from the `x-request-id` UUID and writes it back into the UUID; with client
/// request ids kept (`preserve_external_request_id`), a client's id that is not a UUID would
/// make its request untraceable, and a client's UUID would come back altered, breaking the
/// promise to echo it unchanged. Envoy then leaves the decision to the tracer's sampler.
pub(super) fn request_id_extension() -> RequestIdExtension {
    RequestIdExtension {
        typed_config: Some(any(&UuidRequestIdConfig {
            pack_trace_reason: Some(BoolValue { value: false }),
            use_request_id_for_trace_sampling: Some(BoolValue { value: false }),
        })),
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
