//! One Envoy cluster per routes.yaml service, and its endpoints.
//!
//! Services whose endpoints are all IP literals are EDS clusters fed over ADS, so an endpoint
//! change updates a ClusterLoadAssignment without touching the cluster (no drain, no
//! re-warming). A service naming DNS hosts becomes a STRICT_DNS cluster that Envoy resolves
//! itself (IPv4 preferred), since EDS carries addresses, not names.
//!
//! A service's traffic policies (active health checks, load balancing, circuit breaking,
//! outlier detection, upstream TLS) are Envoy's own cluster settings, set here one to one;
//! ring-hash balancing also needs a hash key on every route to the service, which
//! [`hash_policy`] supplies.

use tollgate_proto::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds, CircuitBreakers, OutlierDetection as EnvoyOutlierDetection,
};
use tollgate_proto::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType, DnsLookupFamily, EdsClusterConfig, LbPolicy},
    Cluster,
};
use tollgate_proto::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, Address, SocketAddress,
};
use tollgate_proto::envoy::config::core::v3::{
    data_source, health_check, DataSource, HealthCheck as EnvoyHealthCheck, RoutingPriority,
    TransportSocket,
};
use tollgate_proto::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint,
    LocalityLbEndpoints,
};
use tollgate_proto::envoy::config::route::v3::route_action::{hash_policy, HashPolicy};
use tollgate_proto::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, subject_alt_name_matcher::SanType,
    CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, UpstreamTlsContext,
};
use tollgate_proto::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{
        explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
    },
    HttpProtocolOptions,
};
use tollgate_proto::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use tollgate_proto::envoy::r#type::v3::Int64Range;
use tollgate_proto::google::protobuf::UInt32Value;
use tollgate_routes::service_policy::{
    CircuitBreaker, HealthCheck, HealthProbe, LoadBalancing, OutlierDetection, ServicePolicy,
    UpstreamTls,
};
use tollgate_routes::{Endpoint, Service};

use super::secret::{sds_reference, upstream_client_secret_name};
use super::{ads_config_source, any, proto_duration, proto_map, tls_transport_socket};

/// How long Envoy waits to connect to a sidecar (TCP and TLS handshake) at most; its call
/// timeouts bound the rest.
const SIDECAR_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// The shortest connect timeout a replicated sidecar gets, whatever its call timeout: a TLS
/// handshake on a loaded machine must still fit.
const MIN_REPLICA_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);
/// Retries Envoy lets run at once towards a replicated sidecar (its circuit breaker's
/// `max_retries`, 3 by default): as many as calls in flight (Envoy's default `max_requests`),
/// since each call is retried at most once.
const REPLICA_MAX_RETRIES: u32 = 1024;
/// How often Envoy checks each replica of a replicated sidecar.
const SIDECAR_HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A cluster for a gRPC sidecar (ext-authz, rate limit): HTTP/2 to its replicas.
///
/// With several replicas, `grpc.health.v1` checks of `health_service` (which both sidecars
/// serve) every second take one that stopped answering out of rotation within 2 s, and
/// outlier detection ejects one that refuses or drops two calls in a row at once, so a
/// lost replica costs at most a call or two, not a timeout per request. One replica is
/// called whatever its state: there is nowhere else to go.
///
/// With `tls` (the sidecars' `--tls-cert`), calls go over TLS verified against its CA and
/// name, so that no one on the network can answer a check or a decision in a sidecar's place.
///
/// A call waiting for a connection is not yet in its try: Envoy starts a try's timeout once
/// the connection is up. So with several replicas the connect timeout is kept within half a
/// try ([`replica_connect_timeout`]): a call queued on a connection to a replica that went
/// silent fails as a connect failure and is retried on another while its `call_timeout`
/// still leaves room, instead of waiting out the whole timeout. So many calls can be queued
/// on one such connection that Envoy's default of 3 retries at once would refuse most of
/// their retries; its circuit breaker admits one per call in flight instead.
pub(super) fn sidecar(
    name: &str,
    addresses: &[Endpoint],
    health_service: &str,
    tls: Option<&UpstreamTls>,
    call_timeout: std::time::Duration,
) -> (Cluster, Option<ClusterLoadAssignment>) {
    let replicated = addresses.len() > 1;
    let service = Service {
        name: name.to_string(),
        endpoints: addresses.to_vec(),
        connect_timeout: if replicated {
            replica_connect_timeout(call_timeout)
        } else {
            SIDECAR_CONNECT_TIMEOUT
        },
        policy: ServicePolicy {
            circuit_breaker: replicated.then_some(CircuitBreaker {
                max_retries: Some(REPLICA_MAX_RETRIES),
                ..CircuitBreaker::default()
            }),
            health_check: replicated.then(|| HealthCheck {
                probe: HealthProbe::Grpc {
                    service: health_service.to_string(),
                },
                interval: SIDECAR_HEALTH_INTERVAL,
                timeout: SIDECAR_HEALTH_INTERVAL,
                unhealthy_threshold: 2,
                healthy_threshold: 1,
            }),
            outlier_detection: replicated.then_some(OutlierDetection {
                consecutive_5xx: 2,
                interval: SIDECAR_HEALTH_INTERVAL,
                base_ejection_time: std::time::Duration::from_secs(5),
                max_ejection_percent: 50,
            }),
            tls: tls.cloned(),
            ..ServicePolicy::default()
        },
    };
    let mut cluster = cluster(&service);
    cluster.typed_extension_protocol_options = http2_only();
    let assignment = uses_eds(&service).then(|| load_assignment(&service));
    (cluster, assignment)
}

/// A replicated sidecar's connect timeout: half of one try of a call, within
/// [`MIN_REPLICA_CONNECT_TIMEOUT`] and [`SIDECAR_CONNECT_TIMEOUT`].
pub(super) fn replica_connect_timeout(call_timeout: std::time::Duration) -> std::time::Duration {
    (super::auth::per_try_timeout(call_timeout) / 2)
        .clamp(MIN_REPLICA_CONNECT_TIMEOUT, SIDECAR_CONNECT_TIMEOUT)
}

pub(super) fn uses_eds(service: &Service) -> bool {
    service.endpoints.iter().all(|e| e.is_ip())
}

/// Bytes Envoy buffers for each upstream connection before it stops reading from it: 32 KiB,
/// as Envoy's edge-proxy guide advises (its default, 1 MiB, lets a slow client make the
/// gateway hold a megabyte of a fast upstream's answer per connection).
pub(super) const UPSTREAM_CONNECTION_BUFFER_BYTES: u32 = 32 * 1024;

/// Requests to the cluster's endpoints go over HTTP/2 (prior knowledge, or TLS), with the
/// flow-control windows of Envoy's edge-proxy guide: 64 KiB per stream, 1 MiB per connection
/// (Envoy's defaults, 256 MiB and 256 MiB, let one upstream fill the gateway's memory).
fn http2_only() -> std::collections::HashMap<String, tollgate_proto::google::protobuf::Any> {
    let http2 = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(
                    ProtocolConfig::Http2ProtocolOptions(super::http2::windows()),
                ),
            },
        )),
        ..Default::default()
    };
    proto_map([(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
        any(&http2),
    )])
}

pub(super) fn cluster(service: &Service) -> Cluster {
    let policy = &service.policy;
    let mut cluster = Cluster {
        name: service.name.clone(),
        connect_timeout: Some(proto_duration(service.connect_timeout)),
        lb_policy: lb_policy(&policy.load_balancing) as i32,
        health_checks: policy.health_check.iter().map(health_check).collect(),
        circuit_breakers: policy.circuit_breaker.as_ref().map(circuit_breakers),
        outlier_detection: policy.outlier_detection.as_ref().map(outlier_detection),
        transport_socket: policy
            .tls
            .as_ref()
            .map(|tls| upstream_tls(&service.name, tls)),
        per_connection_buffer_limit_bytes: Some(UInt32Value {
            value: UPSTREAM_CONNECTION_BUFFER_BYTES,
        }),
        ..Default::default()
    };
    if policy.protocol.is_http2() {
        cluster.typed_extension_protocol_options = http2_only();
    }
    if uses_eds(service) {
        cluster.cluster_discovery_type =
            Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
        cluster.eds_cluster_config = Some(EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            service_name: String::new(),
        });
    } else {
        cluster.cluster_discovery_type =
            Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
        // Envoy's default (AUTO) takes a name's IPv6 address when it has one: `localhost`
        // became `[::1]`, refused by an upstream listening on IPv4 alone, as most do. IPv4
        // first, IPv6 for names without an A record, as Kong resolves them.
        cluster.dns_lookup_family = DnsLookupFamily::V4Preferred as i32;
        cluster.load_assignment = Some(load_assignment(service));
    }
    cluster
}

pub(super) fn load_assignment(service: &Service) -> ClusterLoadAssignment {
    let lb_endpoints = service
        .endpoints
        .iter()
        .map(|endpoint| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: endpoint.host.clone(),
                        port_specifier: Some(PortSpecifier::PortValue(u32::from(endpoint.port))),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: service.name.clone(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The route-level half of ring-hash balancing: what to hash for requests routed to
/// `service`. Empty for every other policy, where a hash would be computed and ignored.
pub(super) fn hash_policy(service: &Service) -> Vec<HashPolicy> {
    match &service.policy.load_balancing {
        LoadBalancing::RingHash { header } => vec![HashPolicy {
            policy_specifier: Some(hash_policy::PolicySpecifier::Header(hash_policy::Header {
                header_name: header.clone(),
                regex_rewrite: None,
            })),
            terminal: false,
        }],
        _ => Vec::new(),
    }
}

fn lb_policy(load_balancing: &LoadBalancing) -> LbPolicy {
    match load_balancing {
        LoadBalancing::RoundRobin => LbPolicy::RoundRobin,
        LoadBalancing::LeastRequest => LbPolicy::LeastRequest,
        LoadBalancing::Random => LbPolicy::Random,
        LoadBalancing::RingHash { .. } => LbPolicy::RingHash,
    }
}

fn health_check(check: &HealthCheck) -> EnvoyHealthCheck {
    let interval = proto_duration(check.interval);
    EnvoyHealthCheck {
        timeout: Some(proto_duration(check.timeout)),
        interval: Some(interval),
        // Envoy checks a cluster that has never had traffic only every 60 s by default; the
        // gateway should know which endpoints are up before the first request, not after.
        no_traffic_interval: Some(interval),
        unhealthy_threshold: Some(UInt32Value {
            value: check.unhealthy_threshold,
        }),
        healthy_threshold: Some(UInt32Value {
            value: check.healthy_threshold,
        }),
        health_checker: Some(match &check.probe {
            HealthProbe::Http { path } => {
                health_check::HealthChecker::HttpHealthCheck(health_check::HttpHealthCheck {
                    path: path.clone(),
                    // Any 2xx is healthy (Envoy's default accepts only 200): 204 No Content
                    // is a common health answer.
                    expected_statuses: vec![Int64Range {
                        start: 200,
                        end: 300,
                    }],
                    ..Default::default()
                })
            }
            HealthProbe::Grpc { service } => {
                health_check::HealthChecker::GrpcHealthCheck(health_check::GrpcHealthCheck {
                    service_name: service.clone(),
                    ..Default::default()
                })
            }
        }),
        ..Default::default()
    }
}

fn circuit_breakers(limits: &CircuitBreaker) -> CircuitBreakers {
    let limit = |value: Option<u32>| value.map(|value| UInt32Value { value });
    CircuitBreakers {
        // Routes use the default priority; high-priority limits stay Envoy's own.
        thresholds: vec![Thresholds {
            priority: RoutingPriority::Default as i32,
            max_connections: limit(limits.max_connections),
            max_pending_requests: limit(limits.max_pending_requests),
            max_requests: limit(limits.max_requests),
            max_retries: limit(limits.max_retries),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn outlier_detection(outlier: &OutlierDetection) -> EnvoyOutlierDetection {
    EnvoyOutlierDetection {
        consecutive_5xx: Some(UInt32Value {
            value: outlier.consecutive_5xx,
        }),
        interval: Some(proto_duration(outlier.interval)),
        base_ejection_time: Some(proto_duration(outlier.base_ejection_time)),
        max_ejection_percent: Some(UInt32Value {
            value: outlier.max_ejection_percent,
        }),
        // Envoy enforces success-rate ejection whenever outlier detection is configured at
        // all; routes.yaml promises only consecutive-5xx ejection, so that is all there is.
        enforcing_success_rate: Some(UInt32Value { value: 0 }),
        ..Default::default()
    }
}

/// The bundle the control plane read and checked, inline; the system bundle by its path on
/// Envoy's machine.
fn trusted_ca(tls: &UpstreamTls) -> data_source::Specifier {
    match &tls.ca_pem {
        Some(pem) => data_source::Specifier::InlineBytes(pem.clone()),
        None => data_source::Specifier::Filename(tls.ca_file.to_string_lossy().into_owned()),
    }
}

fn upstream_tls(service: &str, tls: &UpstreamTls) -> TransportSocket {
    // Mutual TLS: the gateway's client certificate for this service comes over SDS.
    let client_certificate = tls
        .client_certificate
        .as_ref()
        .map(|_| sds_reference(upstream_client_secret_name(service)));
    let context = UpstreamTlsContext {
        sni: tls.sni.clone(),
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: client_certificate.into_iter().collect(),
            // Without a validation context Envoy accepts any certificate; with trusted_ca
            // alone it accepts any name that CA signed. Both the chain and the name are
            // checked, as an HTTPS client would.
            validation_context_type: Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(DataSource {
                        specifier: Some(trusted_ca(tls)),
                        ..Default::default()
                    }),
                    match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                        san_type: SanType::Dns as i32,
                        matcher: Some(StringMatcher {
                            match_pattern: Some(MatchPattern::Exact(tls.sni.clone())),
                            ignore_case: false,
                        }),
                        oid: String::new(),
                    }],
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    tls_transport_socket(&context)
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod cluster_tests;
