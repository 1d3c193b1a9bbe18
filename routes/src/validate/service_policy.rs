//! Checks for a service's traffic policies: health checks, load balancing, circuit breaking,
//! outlier detection and upstream TLS. Defaults are applied here, so the validated
//! [`ServicePolicy`] is exactly what translation hands to Envoy.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::{
    absolute_path, ca_bundle, certificate_and_key, certificate_files, certificate_pair,
    is_dns_name, is_header_name, positive_duration, Errors,
};
use crate::certificates::Certificates;
use crate::document::{CircuitBreakerDoc, HealthCheckDoc, OutlierDetectionDoc, ServiceDoc, TlsDoc};
use crate::endpoint::Endpoint;
use crate::listener_tls::FileSource;
use crate::service_policy::{
    CircuitBreaker, HealthCheck, HealthProbe, LoadBalancing, OutlierDetection, Protocol,
    ServicePolicy, UpstreamTls,
};

/// Frequent enough to notice a dead endpoint within half a minute at the default threshold,
/// rare enough that checks are no load on the service.
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Three failures in a row: one lost packet or slow GC pause does not take an endpoint out.
const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;

/// Envoy's own outlier-detection defaults.
const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
const DEFAULT_OUTLIER_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

/// The CA bundle of Debian, Ubuntu and Alpine (and the Envoy images built on them): Envoy
/// has no working "system trust store" option, and verifying nothing is never a default.
pub(crate) const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The service's policies; a client certificate its `tls` names is read (when `files` is
/// given) into `certificates`.
pub(super) fn service_policy(
    name: &str,
    doc: &ServiceDoc,
    endpoints: &[Endpoint],
    files: Option<&dyn FileSource>,
    certificates: &mut Certificates,
    errors: &mut Errors,
) -> ServicePolicy {
    let protocol = protocol(doc, errors);
    ServicePolicy {
        protocol,
        health_check: doc
            .health_check
            .as_ref()
            .and_then(|h| health_check(name, protocol, h, errors)),
        load_balancing: load_balancing(name, doc, errors),
        circuit_breaker: doc
            .circuit_breaker
            .as_ref()
            .map(|c| circuit_breaker(&c.value, errors)),
        outlier_detection: doc
            .outlier_detection
            .as_ref()
            .map(|o| outlier_detection(&o.value, errors)),
        tls: doc.tls.as_ref().and_then(|t| {
            let owner = format!("service \"{name}\"");
            tls(&owner, name, t, endpoints, files, certificates, errors)
        }),
    }
}

/// `http1` (the default), `http2` or `grpc`.
pub(super) fn protocol(doc: &ServiceDoc, errors: &mut Errors) -> Protocol {
    match doc.protocol.as_ref().map(|p| p.value.as_str()) {
        None | Some("http1") => Protocol::Http1,
        Some("http2") => Protocol::Http2,
        Some("grpc") => Protocol::Grpc,
        Some(other) => {
            if let Some(node) = &doc.protocol {
                errors.at(
                    node,
                    format!("unknown protocol \"{other}\": expected http1, http2 or grpc"),
                );
            }
            Protocol::Http1
        }
    }
}

fn health_check(
    service: &str,
    protocol: Protocol,
    node: &Spanned<HealthCheckDoc>,
    errors: &mut Errors,
) -> Option<HealthCheck> {
    let doc = &node.value;
    let probe = if protocol == Protocol::Grpc {
        // A gRPC server answers grpc.health.v1, not a path.
        if let Some(path) = &doc.path {
            errors.at(
                path,
                format!("service \"{service}\": a grpc service is checked by grpc.health.v1; give grpc_service (or nothing, for the whole server) instead of path"),
            );
        }
        Some(HealthProbe::Grpc {
            service: doc
                .grpc_service
                .as_ref()
                .map(|s| s.value.clone())
                .unwrap_or_default(),
        })
    } else {
        if let Some(grpc) = &doc.grpc_service {
            errors.at(
                grpc,
                format!("service \"{service}\": grpc_service needs protocol: grpc"),
            );
        }
        http_path(service, node, errors).map(|path| HealthProbe::Http { path })
    };
    let interval =
        positive_duration(doc.interval.as_ref(), errors).unwrap_or(DEFAULT_HEALTH_INTERVAL);
    let timeout = positive_duration(doc.timeout.as_ref(), errors).unwrap_or(DEFAULT_HEALTH_TIMEOUT);
    // A check still running when the next is due would overlap it; Envoy would not wait.
    if timeout > interval {
        let message = format!(
            "service \"{service}\": health_check timeout {timeout:?} is longer than its interval {interval:?}"
        );
        match &doc.timeout {
            Some(at) => errors.at(at, message),
            None => errors.at(node, message),
        }
    }
    let unhealthy_threshold =
        count(doc.unhealthy_threshold.as_ref(), 1, errors).unwrap_or(DEFAULT_UNHEALTHY_THRESHOLD);
    let healthy_threshold =
        count(doc.healthy_threshold.as_ref(), 1, errors).unwrap_or(DEFAULT_HEALTHY_THRESHOLD);
    Some(HealthCheck {
        probe: probe?,
        interval,
        timeout,
        unhealthy_threshold,
        healthy_threshold,
    })
}

/// The path of an HTTP health check, written as Envoy puts it in the request line.
fn http_path(service: &str, node: &Spanned<HealthCheckDoc>, errors: &mut Errors) -> Option<String> {
    match &node.value.path {
        None => {
            errors.at(
                node,
                format!("service \"{service}\": health_check needs a path, e.g. /health"),
            );
            None
        }
        // Envoy writes the path into the request line as is.
        Some(path) if path.value.bytes().any(|b| !b.is_ascii_graphic()) => {
            errors.at(
                path,
                format!(
                    "health_check path \"{}\" has spaces or characters that need escaping",
                    path.value
                ),
            );
            None
        }
        Some(path) => absolute_path(path, "health_check path", errors).then(|| path.value.clone()),
    }
}

fn load_balancing(service: &str, doc: &ServiceDoc, errors: &mut Errors) -> LoadBalancing {
    let header = doc
        .hash_on
        .as_ref()
        .and_then(|hash_on| match &hash_on.value.header {
            None => {
                errors.at(
                    hash_on,
                    format!(
                        "service \"{service}\": hash_on needs a header, e.g. {{header: x-user-id}}"
                    ),
                );
                None
            }
            Some(header) if !is_header_name(&header.value) => {
                errors.at(header, format!("invalid header name \"{}\"", header.value));
                None
            }
            Some(header) => Some(header.value.to_ascii_lowercase()),
        });
    let Some(node) = &doc.load_balancing else {
        if let Some(hash_on) = &doc.hash_on {
            errors.at(
                hash_on,
                format!(
                    "service \"{service}\": hash_on applies only with load_balancing: ring_hash"
                ),
            );
        }
        return LoadBalancing::RoundRobin;
    };
    let policy = match node.value.as_str() {
        "round_robin" => LoadBalancing::RoundRobin,
        "least_request" => LoadBalancing::LeastRequest,
        "random" => LoadBalancing::Random,
        "ring_hash" => match (&doc.hash_on, header) {
            (_, Some(header)) => return LoadBalancing::RingHash { header },
            // The header was wrong, and that error is already reported.
            (Some(_), None) => return LoadBalancing::RoundRobin,
            (None, None) => {
                // Without a hash key every request hashes alike at random: the same spread
                // as `random`, which is never what choosing ring_hash meant.
                errors.at(
                    node,
                    format!("service \"{service}\": load_balancing ring_hash needs hash_on: {{header: NAME}}"),
                );
                return LoadBalancing::RoundRobin;
            }
        },
        other => {
            errors.at(
                node,
                format!(
                    "unknown load_balancing \"{other}\": expected round_robin, least_request, random or ring_hash"
                ),
            );
            return LoadBalancing::RoundRobin;
        }
    };
    if let Some(hash_on) = &doc.hash_on {
        errors.at(
            hash_on,
            format!("service \"{service}\": hash_on applies only with load_balancing: ring_hash"),
        );
    }
    policy
}

fn circuit_breaker(doc: &CircuitBreakerDoc, errors: &mut Errors) -> CircuitBreaker {
    // A zero connection or request limit would refuse every request; zero retries is a
    // meaningful "never retry concurrently".
    CircuitBreaker {
        max_connections: count(doc.max_connections.as_ref(), 1, errors),
        max_pending_requests: count(doc.max_pending_requests.as_ref(), 1, errors),
        max_requests: count(doc.max_requests.as_ref(), 1, errors),
        max_retries: count(doc.max_retries.as_ref(), 0, errors),
    }
}

fn outlier_detection(doc: &OutlierDetectionDoc, errors: &mut Errors) -> OutlierDetection {
    let max_ejection_percent = match &doc.max_ejection_percent {
        Some(node) if !(1..=100).contains(&node.value) => {
            errors.at(
                node,
                format!(
                    "max_ejection_percent {} must be between 1 and 100",
                    node.value
                ),
            );
            DEFAULT_MAX_EJECTION_PERCENT
        }
        Some(node) => u32::try_from(node.value).unwrap_or(DEFAULT_MAX_EJECTION_PERCENT),
        None => DEFAULT_MAX_EJECTION_PERCENT,
    };
    OutlierDetection {
        consecutive_5xx: count(doc.consecutive_5xx.as_ref(), 1, errors)
            .unwrap_or(DEFAULT_CONSECUTIVE_5XX),
        interval: positive_duration(doc.interval.as_ref(), errors)
            .unwrap_or(DEFAULT_OUTLIER_INTERVAL),
        base_ejection_time: positive_duration(doc.base_ejection_time.as_ref(), errors)
            .unwrap_or(DEFAULT_BASE_EJECTION_TIME),
        max_ejection_percent,
    }
}

/// Upstream TLS for `owner` (`service "api"`, `sidecars.ext_authz`, for messages), whose client
/// certificate is kept in `certificates` under `certificate_key` (the Envoy cluster name).
pub(super) fn tls(
    owner: &str,
    certificate_key: &str,
    node: &Spanned<TlsDoc>,
    endpoints: &[Endpoint],
    files: Option<&dyn FileSource>,
    certificates: &mut Certificates,
    errors: &mut Errors,
) -> Option<UpstreamTls> {
    let doc = &node.value;
    let sni = match &doc.sni {
        Some(sni) if sni.value.parse::<IpAddr>().is_ok() || !is_dns_name(&sni.value) => {
            // RFC 6066 §3: SNI carries a DNS host name, never an IP literal.
            errors.at(
                sni,
                format!("invalid sni \"{}\": expected a DNS name", sni.value),
            );
            None
        }
        Some(sni) => Some(sni.value.to_ascii_lowercase()),
        None => {
            // Verification needs a name to check the certificate against: the endpoints'
            // own host name when they all share one, otherwise it has to be said.
            // Endpoints are valid already: a host that is no IP literal is a DNS name.
            let first = endpoints.first();
            match first {
                Some(e) if !e.is_ip() && endpoints.iter().all(|o| o.host == e.host) => {
                    Some(e.host.to_ascii_lowercase())
                }
                _ => {
                    errors.at(
                        node,
                        format!("{owner}: tls needs an sni (the name the upstream certificate is issued for) unless every endpoint is the same DNS name"),
                    );
                    None
                }
            }
        }
    };
    let (ca_file, ca_pem) = match &doc.ca_file {
        None => (Some(PathBuf::from(SYSTEM_CA_FILE)), None),
        Some(file) if file.value.is_empty() => {
            errors.at(file, "ca_file is empty".into());
            (None, None)
        }
        Some(file) => {
            let pem = files.and_then(|files| ca_bundle(files, file, "ca_file", errors));
            (Some(PathBuf::from(&file.value)), pem)
        }
    };
    // Ok(None): no client certificate; Err: a mistake, already reported.
    let client_certificate = match (&doc.cert_file, &doc.key_file) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => match certificate_pair(cert, key, errors) {
            None => Err(()),
            Some((cert, key)) => {
                let pair = files.and_then(|files| certificate_and_key(files, cert, key, errors));
                if let Some(pair) = pair {
                    certificates.insert_upstream_client(certificate_key.to_string(), pair);
                }
                Ok(Some(certificate_files(cert, key)))
            }
        },
        (Some(only), None) | (None, Some(only)) => {
            errors.at(
                only,
                format!("{owner}: a client certificate needs both cert_file and key_file"),
            );
            Err(())
        }
    };
    Some(UpstreamTls {
        sni: sni?,
        ca_file: ca_file?,
        ca_pem,
        client_certificate: client_certificate.ok()?,
    })
}

/// A count that Envoy stores as a `uint32`, at least `min`.
fn count(node: Option<&Spanned<u64>>, min: u32, errors: &mut Errors) -> Option<u32> {
    let node = node?;
    match u32::try_from(node.value) {
        Ok(n) if n >= min => Some(n),
        _ => {
            errors.at(
                node,
                format!(
                    "{} is out of range: expected {min} to {}",
                    node.value,
                    u32::MAX
                ),
            );
            None
        }
    }
}
