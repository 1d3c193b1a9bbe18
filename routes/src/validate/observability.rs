//! Checks for `observability`: the access log, per-route stats and OpenTelemetry tracing.

use serde_saphyr::Spanned;

use super::{host_port, Errors};
use crate::config::{AccessLogSink, Observability, Tracing};
use crate::document::{Document, TracingDoc};

/// The `service.name` of Envoy's spans when routes.yaml names none; the sidecars report as
/// `tollgate-ext-authz` and `tollgate-ratelimit`.
const DEFAULT_SERVICE_NAME: &str = "tollgate-gateway";

/// Every request starts a trace unless told otherwise: OpenTelemetry's default sampler
/// (`parentbased_always_on`) and Envoy's default `random_sampling` (100%) agree on it.
const DEFAULT_SAMPLE_RATE: f64 = 1.0;

pub(super) fn observability(doc: &Document, errors: &mut Errors) -> Observability {
    let observability = doc.observability.as_ref();
    let access_log = match observability.and_then(|o| o.access_log.as_ref()) {
        None => Some(AccessLogSink::Stdout),
        Some(log) if !log.value.enabled => None,
        Some(log) => match &log.value.path {
            None => Some(AccessLogSink::Stdout),
            Some(path) if path.value == "/dev/stdout" || path.value == "-" => {
                Some(AccessLogSink::Stdout)
            }
            Some(path) if path.value.is_empty() => {
                errors.at(path, "access_log path is empty".to_string());
                None
            }
            Some(path) => Some(AccessLogSink::File(path.value.clone().into())),
        },
    };
    let tracing = observability
        .and_then(|o| o.tracing.as_ref())
        .and_then(|t| tracing(&t.value, errors));
    Observability {
        access_log,
        route_stats: observability.is_none_or(|o| o.route_stats),
        tracing,
    }
}

fn tracing(doc: &TracingDoc, errors: &mut Errors) -> Option<Tracing> {
    let before = errors.found.len();
    let endpoint = &doc.otlp_endpoint;
    let otlp_endpoint = if endpoint.value.contains("://") {
        // Envoy and the sidecars speak OTLP/gRPC in plaintext to HOST:PORT; a URL would
        // suggest a scheme (https, or OTLP/HTTP's /v1/traces) that is not what happens.
        errors.at(
            endpoint,
            format!(
                "invalid otlp_endpoint \"{}\": expected HOST:PORT of an OTLP/gRPC collector (e.g. otel-collector:4317), without a scheme",
                endpoint.value
            ),
        );
        None
    } else {
        host_port(endpoint, "otlp_endpoint", errors)
    };
    let sample_rate = match &doc.sample_rate {
        None => DEFAULT_SAMPLE_RATE,
        Some(rate) if rate.value.is_finite() && (0.0..=1.0).contains(&rate.value) => rate.value,
        Some(rate) => {
            errors.at(
                rate,
                format!(
                    "sample_rate {} is out of range: a fraction from 0.0 (no request starts a trace) to 1.0 (every request does), e.g. 0.01 for 1%",
                    rate.value
                ),
            );
            DEFAULT_SAMPLE_RATE
        }
    };
    let service_name = match &doc.service_name {
        None => DEFAULT_SERVICE_NAME.to_string(),
        Some(name) => {
            check_service_name(name, errors);
            name.value.clone()
        }
    };
    let otlp_endpoint = otlp_endpoint?;
    (errors.found.len() == before).then_some(Tracing {
        otlp_endpoint,
        sample_rate,
        service_name,
    })
}

/// A name tracing backends show and index: printable, on one line, of a sane length.
fn check_service_name(name: &Spanned<String>, errors: &mut Errors) {
    let value = &name.value;
    if value.trim().is_empty() || value.len() > 255 || value.chars().any(char::is_control) {
        errors.at(
            name,
            format!("invalid service_name {value:?}: use 1 to 255 printable characters"),
        );
    }
}
