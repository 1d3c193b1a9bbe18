//! `observability.tracing`: what a valid block becomes, and where each mistake is reported.

mod common;

use common::{assert_error_at, errors};
use tollgate_routes::{parse, Endpoint, Tracing};

const BASE: &str = "\
version: 1
listeners:
  - {name: public, address: 0.0.0.0:8080}
services: {}
routes: []
observability:
";

fn with_tracing(block: &str) -> String {
    format!("{BASE}  tracing: {block}\n")
}

#[test]
fn a_tracing_block_parses_with_its_defaults() {
    let config = parse(
        "routes.yaml",
        &with_tracing("{otlp_endpoint: \"otel-collector:4317\"}"),
    )
    .expect("valid");
    assert_eq!(
        config.observability.tracing,
        Some(Tracing {
            otlp_endpoint: Endpoint {
                host: "otel-collector".into(),
                port: 4317
            },
            sample_rate: 1.0,
            service_name: "tollgate-gateway".into(),
        })
    );
    // Tracing is an addition: the access log keeps its default.
    assert!(config.observability.access_log.is_some());
}

#[test]
fn every_tracing_field_is_taken_as_written() {
    let config = parse(
        "routes.yaml",
        &with_tracing(
            "{otlp_endpoint: \"127.0.0.1:4317\", sample_rate: 0.01, service_name: edge-eu}",
        ),
    )
    .expect("valid");
    let tracing = config.observability.tracing.expect("tracing on");
    assert_eq!(tracing.otlp_endpoint.to_string(), "127.0.0.1:4317");
    assert!((tracing.sample_rate - 0.01).abs() < f64::EPSILON);
    assert_eq!(tracing.service_name, "edge-eu");
}

#[test]
fn whole_numbers_zero_and_one_are_valid_rates() {
    for rate in ["0", "1", "0.0", "1.0"] {
        let text = with_tracing(&format!(
            "{{otlp_endpoint: \"127.0.0.1:4317\", sample_rate: {rate}}}"
        ));
        parse("routes.yaml", &text).unwrap_or_else(|e| panic!("sample_rate {rate}: {e}"));
    }
}

#[test]
fn without_a_tracing_block_tracing_is_off() {
    let config = parse("routes.yaml", BASE.trim_end_matches("observability:\n")).expect("valid");
    assert_eq!(config.observability.tracing, None);
}

#[test]
fn a_rate_above_one_is_refused_where_it_stands() {
    let text = with_tracing("{otlp_endpoint: \"127.0.0.1:4317\", sample_rate: 50}");
    assert_error_at(&text, "7:59:", "sample_rate 50 is out of range");
}

#[test]
fn a_negative_rate_is_refused() {
    let text = with_tracing("{otlp_endpoint: \"127.0.0.1:4317\", sample_rate: -0.5}");
    assert_error_at(&text, "7:59:", "out of range");
}

#[test]
fn a_percentage_string_is_refused_as_the_wrong_type() {
    let text = with_tracing("{otlp_endpoint: \"127.0.0.1:4317\", sample_rate: 1%}");
    let errors = errors(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("7:"), "{errors:?}");
}

#[test]
fn an_endpoint_without_a_port_is_refused() {
    let text = with_tracing("{otlp_endpoint: otel-collector}");
    assert_error_at(&text, "7:28:", "invalid otlp_endpoint \"otel-collector\"");
}

#[test]
fn a_url_endpoint_is_refused_with_the_expected_form() {
    let text = with_tracing("{otlp_endpoint: \"http://otel-collector:4317\"}");
    assert_error_at(&text, "7:28:", "without a scheme");
}

#[test]
fn an_unknown_tracing_field_is_refused_where_it_stands() {
    let text = with_tracing("{otlp_endpoint: \"127.0.0.1:4317\", sampling: 0.5}");
    assert_error_at(&text, "7:", "unknown field `sampling`");
}

#[test]
fn an_empty_service_name_is_refused() {
    let text = with_tracing("{otlp_endpoint: \"127.0.0.1:4317\", service_name: \"\"}");
    assert_error_at(&text, "7:", "invalid service_name");
}

#[test]
fn every_tracing_mistake_is_reported_at_once() {
    let text = with_tracing("{otlp_endpoint: \"nope\", sample_rate: 2, service_name: \" \"}");
    let errors = errors(&text);
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

#[test]
fn an_ipv6_endpoint_is_written_back_in_brackets() {
    let config = parse(
        "routes.yaml",
        &with_tracing("{otlp_endpoint: \"[::1]:4317\"}"),
    )
    .expect("valid");
    let tracing = config.observability.tracing.expect("tracing on");
    assert_eq!(tracing.otlp_endpoint.to_string(), "[::1]:4317");
}
