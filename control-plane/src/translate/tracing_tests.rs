use prost::Message;
use tollgate_proto::envoy::config::cluster::v3::Cluster;
use tollgate_proto::envoy::config::core::v3::grpc_service::TargetSpecifier;
use tollgate_proto::envoy::config::trace::v3::{tracing::http, OpenTelemetryConfig};

use super::super::tests::{decode, manager};
use super::super::translate;
use super::CLUSTER;
use crate::snapshot::{type_url, Snapshot};

fn with_observability(observability: &str) -> Snapshot {
    let text = format!(
        "version: 1
listeners:
  - {{name: public, address: 0.0.0.0:8080}}
services:
  api: {{endpoints: [\"127.0.0.1:3000\"]}}
routes:
  - {{name: all, match: {{prefix: /}}, service: api}}
{observability}"
    );
    translate(
        &tollgate_routes::parse("routes.yaml", &text).expect("valid"),
        &Default::default(),
    )
}

fn traced(block: &str) -> Snapshot {
    with_observability(&format!("observability:\n  tracing: {block}\n"))
}

fn opentelemetry(snapshot: &Snapshot) -> OpenTelemetryConfig {
    let tracing = manager(snapshot, "public").tracing.expect("tracing on");
    let provider = tracing.provider.expect("a provider");
    assert_eq!(provider.name, "envoy.tracers.opentelemetry");
    let Some(http::ConfigType::TypedConfig(any)) = provider.config_type else {
        panic!("typed config expected")
    };
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
    );
    OpenTelemetryConfig::decode(any.value.as_slice()).expect("decodes")
}

#[test]
fn without_tracing_there_is_no_tracer_and_no_collector_cluster() {
    let snapshot = with_observability("");
    assert!(manager(&snapshot, "public").tracing.is_none());
    assert!(!snapshot
        .resources(type_url::CLUSTER)
        .resources
        .contains_key(CLUSTER));
}

#[test]
fn spans_go_over_grpc_to_an_http2_cluster_for_the_collector() {
    let snapshot = traced("{otlp_endpoint: \"127.0.0.1:4317\"}");
    let exporter = opentelemetry(&snapshot).grpc_service.expect("OTLP/gRPC");
    let Some(TargetSpecifier::EnvoyGrpc(grpc)) = exporter.target_specifier else {
        panic!("Envoy's own gRPC client expected")
    };
    assert_eq!(grpc.cluster_name, CLUSTER);
    let cluster: Cluster = decode(&snapshot, type_url::CLUSTER, CLUSTER);
    assert!(cluster
        .typed_extension_protocol_options
        .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"));
    assert!(snapshot
        .resources(type_url::ENDPOINT)
        .resources
        .contains_key(CLUSTER));
}

#[test]
fn a_collector_named_by_dns_is_resolved_by_envoy() {
    let snapshot = traced("{otlp_endpoint: \"otel-collector:4317\"}");
    let cluster: Cluster = decode(&snapshot, type_url::CLUSTER, CLUSTER);
    assert!(cluster.load_assignment.is_some(), "STRICT_DNS, no EDS");
}

#[test]
fn the_sample_rate_fraction_becomes_envoys_random_sampling_percentage() {
    let snapshot = traced("{otlp_endpoint: \"127.0.0.1:4317\", sample_rate: 0.01}");
    let tracing = manager(&snapshot, "public").tracing.expect("tracing on");
    let random = tracing.random_sampling.expect("random sampling").value;
    assert!((random - 1.0).abs() < 1e-9, "1% expected, got {random}");
    assert_eq!(tracing.overall_sampling.map(|p| p.value), Some(100.0));
    assert_eq!(
        tracing.client_sampling.map(|p| p.value),
        Some(0.0),
        "x-client-trace-id must not force a trace"
    );
}

#[test]
fn the_tracer_samples_parent_based_with_the_rate_in_parts_per_million() {
    use tollgate_proto::envoy::extensions::tracers::opentelemetry::samplers::v3::{
        ParentBasedSamplerConfig, TraceIdRatioBasedSamplerConfig,
    };
    let snapshot = traced("{otlp_endpoint: \"127.0.0.1:4317\", sample_rate: 0.01}");
    let sampler = opentelemetry(&snapshot).sampler.expect("a sampler");
    assert_eq!(
        sampler.name,
        "envoy.tracers.opentelemetry.samplers.parent_based"
    );
    let parent_based =
        ParentBasedSamplerConfig::decode(sampler.typed_config.expect("config").value.as_slice())
            .expect("decodes");
    let ratio = parent_based.wrapped_sampler.expect("a wrapped sampler");
    assert_eq!(
        ratio.name,
        "envoy.tracers.opentelemetry.samplers.trace_id_ratio_based"
    );
    let ratio = TraceIdRatioBasedSamplerConfig::decode(
        ratio.typed_config.expect("config").value.as_slice(),
    )
    .expect("decodes");
    let percentage = ratio.sampling_percentage.expect("a percentage");
    assert_eq!((percentage.numerator, percentage.denominator), (10_000, 2));
}

#[test]
fn a_zero_rate_samples_nothing_rather_than_envoys_default_of_everything() {
    let snapshot = traced("{otlp_endpoint: \"127.0.0.1:4317\", sample_rate: 0}");
    let tracing = manager(&snapshot, "public").tracing.expect("tracing on");
    assert_eq!(tracing.random_sampling.map(|p| p.value), Some(0.0));
}

#[test]
fn envoys_spans_carry_the_configured_or_default_service_name() {
    let default = traced("{otlp_endpoint: \"127.0.0.1:4317\"}");
    assert_eq!(opentelemetry(&default).service_name, "tollgate-gateway");
    let named = traced("{otlp_endpoint: \"127.0.0.1:4317\", service_name: edge-eu}");
    assert_eq!(opentelemetry(&named).service_name, "edge-eu");
}

#[test]
fn access_log_lines_carry_the_trace_id() {
    let snapshot = traced("{otlp_endpoint: \"127.0.0.1:4317\"}");
    use tollgate_proto::envoy::config::accesslog::v3::access_log::ConfigType;
    use tollgate_proto::envoy::extensions::access_loggers::stream::v3::StdoutAccessLog;
    let hcm = manager(&snapshot, "public");
    let Some(ConfigType::TypedConfig(any)) = &hcm.access_log[0].config_type else {
        panic!("typed config expected")
    };
    let log = format!(
        "{:?}",
        StdoutAccessLog::decode(any.value.as_slice()).expect("decodes")
    );
    assert!(
        log.contains("\"trace_id\"") && log.contains("%TRACE_ID%"),
        "{log}"
    );
}

#[test]
fn request_ids_neither_decide_nor_carry_the_sampling_decision() {
    use tollgate_proto::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig;
    let snapshot = traced("{otlp_endpoint: \"127.0.0.1:4317\"}");
    let extension = manager(&snapshot, "public")
        .request_id_extension
        .and_then(|e| e.typed_config)
        .expect("a request id extension");
    let config = UuidRequestIdConfig::decode(extension.value.as_slice()).expect("decodes");
    assert_eq!(
        config.use_request_id_for_trace_sampling.map(|b| b.value),
        Some(false)
    );
    assert_eq!(config.pack_trace_reason.map(|b| b.value), Some(false));
}
