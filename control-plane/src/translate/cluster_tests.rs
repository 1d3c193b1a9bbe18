//! Service traffic policies as Envoy cluster settings, one behaviour per test.

use prost::Message;
use tollgate_proto::envoy::config::cluster::v3::{cluster::LbPolicy, Cluster};
use tollgate_proto::envoy::config::core::v3::{
    data_source, health_check::HealthChecker, transport_socket::ConfigType,
};
use tollgate_proto::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
use tollgate_proto::envoy::config::route::v3::{route::Action, RouteConfiguration};
use tollgate_proto::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, subject_alt_name_matcher::SanType,
    UpstreamTlsContext,
};
use tollgate_proto::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use tollgate_routes::{RoutesConfig, Service};

use super::super::tests::{decode, route_named, secret_names, secret_pair};
use super::cluster;
use crate::snapshot::type_url;

/// A config with one listener, one route per service, and `services` as the services block.
fn config(services: &str) -> RoutesConfig {
    let names: Vec<&str> = services
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   ") && l.trim_end().ends_with(':'))
        .map(|l| l.trim().trim_end_matches(':'))
        .collect();
    let routes: String = names
        .iter()
        .map(|n| format!("  - {{name: {n}, match: {{prefix: /{n}}}, service: {n}}}\n"))
        .collect();
    let text = format!(
        "version: 1\nlisteners:\n  - {{name: public, address: 127.0.0.1:8080}}\nservices:\n{services}routes:\n{routes}"
    );
    tollgate_routes::parse("routes.yaml", &text)
        .unwrap_or_else(|e| panic!("valid config expected, got {e}:\n{text}"))
}

fn service<'a>(config: &'a RoutesConfig, name: &str) -> &'a Service {
    &config.services[name]
}

#[test]
fn a_service_without_policies_keeps_envoys_defaults() {
    let config = config("  plain:\n    endpoints: [\"127.0.0.1:3000\"]\n");
    let cluster = cluster(service(&config, "plain"));
    assert_eq!(cluster.lb_policy, LbPolicy::RoundRobin as i32);
    assert!(cluster.health_checks.is_empty());
    assert_eq!(cluster.circuit_breakers, None);
    assert_eq!(cluster.outlier_detection, None);
    assert_eq!(
        cluster.transport_socket, None,
        "plaintext unless tls is set"
    );
}

#[test]
fn health_check_becomes_an_http_check_with_its_timings_and_thresholds() {
    let config = config(
        "  checked:
    endpoints: [\"127.0.0.1:3000\"]
    health_check: {path: /healthz, interval: 5s, timeout: 500ms, unhealthy_threshold: 4, healthy_threshold: 1}
",
    );
    let cluster = cluster(service(&config, "checked"));
    let [check] = cluster.health_checks.as_slice() else {
        panic!("one health check expected, got {:?}", cluster.health_checks);
    };
    assert_eq!(check.interval.map(|d| d.seconds), Some(5));
    assert_eq!(
        check.no_traffic_interval, check.interval,
        "an idle service is checked as often as a busy one"
    );
    assert_eq!(check.timeout.map(|d| d.nanos), Some(500_000_000));
    assert_eq!(check.unhealthy_threshold.map(|v| v.value), Some(4));
    assert_eq!(check.healthy_threshold.map(|v| v.value), Some(1));
    let Some(HealthChecker::HttpHealthCheck(http)) = &check.health_checker else {
        panic!("an HTTP health check expected");
    };
    assert_eq!(http.path, "/healthz");
    assert_eq!(
        http.expected_statuses
            .iter()
            .map(|r| (r.start, r.end))
            .collect::<Vec<_>>(),
        vec![(200, 300)],
        "any 2xx is healthy"
    );
}

#[test]
fn health_check_defaults_apply_when_only_the_path_is_given() {
    let config = config(
        "  checked:\n    endpoints: [\"127.0.0.1:3000\"]\n    health_check: {path: /health}\n",
    );
    let check = &cluster(service(&config, "checked")).health_checks[0];
    assert_eq!(check.interval.map(|d| d.seconds), Some(10));
    assert_eq!(check.timeout.map(|d| d.seconds), Some(1));
    assert_eq!(check.unhealthy_threshold.map(|v| v.value), Some(3));
    assert_eq!(check.healthy_threshold.map(|v| v.value), Some(2));
}

#[test]
fn each_load_balancing_name_selects_envoys_policy() {
    let config = config(
        "  rr:
    endpoints: [\"127.0.0.1:3000\"]
    load_balancing: round_robin
  lr:
    endpoints: [\"127.0.0.1:3000\"]
    load_balancing: least_request
  rand:
    endpoints: [\"127.0.0.1:3000\"]
    load_balancing: random
  ring:
    endpoints: [\"127.0.0.1:3000\"]
    load_balancing: ring_hash
    hash_on: {header: X-User-Id}
",
    );
    for (name, expected) in [
        ("rr", LbPolicy::RoundRobin),
        ("lr", LbPolicy::LeastRequest),
        ("rand", LbPolicy::Random),
        ("ring", LbPolicy::RingHash),
    ] {
        assert_eq!(
            cluster(service(&config, name)).lb_policy,
            expected as i32,
            "service {name}"
        );
    }
}

#[test]
fn only_routes_to_a_ring_hash_service_hash_on_its_header() {
    let config = config(
        "  ring:
    endpoints: [\"127.0.0.1:3000\"]
    load_balancing: ring_hash
    hash_on: {header: X-User-Id}
  rr:
    endpoints: [\"127.0.0.1:3001\"]
",
    );
    let snapshot = super::super::translate(&config, &Default::default());
    let routes: RouteConfiguration = decode(&snapshot, type_url::ROUTE, "public");
    let hash_of = |name: &str| {
        let Some(Action::Route(action)) = &route_named(&routes, name).action else {
            panic!("route {name} forwards");
        };
        action
            .hash_policy
            .iter()
            .map(|p| match &p.policy_specifier {
                Some(PolicySpecifier::Header(h)) => h.header_name.clone(),
                other => panic!("a header hash expected, got {other:?}"),
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(hash_of("ring"), vec!["x-user-id".to_string()]);
    assert!(hash_of("rr").is_empty());
}

#[test]
fn circuit_breaker_sets_only_the_limits_written() {
    let config = config(
        "  guarded:
    endpoints: [\"127.0.0.1:3000\"]
    circuit_breaker: {max_pending_requests: 10, max_requests: 20}
",
    );
    let breakers = cluster(service(&config, "guarded"))
        .circuit_breakers
        .expect("circuit breakers");
    let [limits] = breakers.thresholds.as_slice() else {
        panic!("one threshold set expected");
    };
    assert_eq!(limits.max_pending_requests.map(|v| v.value), Some(10));
    assert_eq!(limits.max_requests.map(|v| v.value), Some(20));
    assert_eq!(limits.max_connections, None, "Envoy's default stays");
    assert_eq!(limits.max_retries, None, "Envoy's default stays");
}

#[test]
fn outlier_detection_ejects_on_consecutive_5xx_only() {
    let config = config(
        "  ejecting:
    endpoints: [\"127.0.0.1:3000\"]
    outlier_detection: {consecutive_5xx: 2, interval: 1s, base_ejection_time: 1m, max_ejection_percent: 50}
",
    );
    let outlier = cluster(service(&config, "ejecting"))
        .outlier_detection
        .expect("outlier detection");
    assert_eq!(outlier.consecutive_5xx.map(|v| v.value), Some(2));
    assert_eq!(outlier.interval.map(|d| d.seconds), Some(1));
    assert_eq!(outlier.base_ejection_time.map(|d| d.seconds), Some(60));
    assert_eq!(outlier.max_ejection_percent.map(|v| v.value), Some(50));
    assert_eq!(
        outlier.enforcing_success_rate.map(|v| v.value),
        Some(0),
        "success-rate ejection is not something routes.yaml asked for"
    );
}

fn tls_context(service: &Service) -> UpstreamTlsContext {
    let socket = cluster(service).transport_socket.expect("a TLS socket");
    assert_eq!(socket.name, "envoy.transport_sockets.tls");
    let Some(ConfigType::TypedConfig(any)) = socket.config_type else {
        panic!("typed TLS config expected");
    };
    UpstreamTlsContext::decode(any.value.as_slice()).expect("an UpstreamTlsContext")
}

/// (where the trusted CAs come from, DNS names the certificate must carry).
fn verification(context: &UpstreamTlsContext) -> (data_source::Specifier, Vec<String>) {
    let common = context.common_tls_context.as_ref().expect("common context");
    let Some(ValidationContextType::ValidationContext(validation)) =
        &common.validation_context_type
    else {
        panic!("the certificate must be validated");
    };
    let ca = validation
        .trusted_ca
        .as_ref()
        .and_then(|d| d.specifier.clone())
        .expect("trusted CAs");
    let names = validation
        .match_typed_subject_alt_names
        .iter()
        .map(|m| {
            assert_eq!(m.san_type, SanType::Dns as i32);
            match m.matcher.as_ref().and_then(|m| m.match_pattern.clone()) {
                Some(MatchPattern::Exact(name)) => name,
                other => panic!("an exact SAN match expected, got {other:?}"),
            }
        })
        .collect();
    (ca, names)
}

#[test]
fn upstream_tls_sends_sni_and_verifies_chain_and_name() {
    let config = config(
        "  secure:
    endpoints: [\"127.0.0.1:3443\"]
    tls: {sni: invoices.internal, ca_file: /etc/tollgate/ca.pem}
",
    );
    let context = tls_context(service(&config, "secure"));
    assert_eq!(context.sni, "invoices.internal");
    assert_eq!(
        verification(&context),
        (
            data_source::Specifier::Filename("/etc/tollgate/ca.pem".to_string()),
            vec!["invoices.internal".to_string()]
        )
    );
}

#[test]
fn empty_tls_verifies_the_endpoint_name_against_the_system_cas() {
    let config = config("  public-api:\n    endpoints: [\"api.example.com:443\"]\n    tls: {}\n");
    let context = tls_context(service(&config, "public-api"));
    assert_eq!(context.sni, "api.example.com");
    assert_eq!(
        verification(&context),
        (
            data_source::Specifier::Filename("/etc/ssl/certs/ca-certificates.crt".to_string()),
            vec!["api.example.com".to_string()]
        )
    );
}

#[test]
fn a_ca_bundle_read_by_validation_reaches_envoy_inline() {
    // What the control plane checked is what Envoy trusts: a file replaced after the check
    // cannot slip in, and a relative ca_file needs no agreement on working directories.
    let mut config = config(
        "  secure:\n    endpoints: [\"127.0.0.1:3443\"]\n    tls: {sni: a.internal, ca_file: ca.pem}\n",
    );
    let tls = config
        .services
        .get_mut("secure")
        .and_then(|s| s.policy.tls.as_mut())
        .expect("tls");
    tls.ca_pem = Some(b"checked bundle".to_vec());
    let context = tls_context(service(&config, "secure"));
    assert_eq!(
        verification(&context).0,
        data_source::Specifier::InlineBytes(b"checked bundle".to_vec())
    );
}

#[test]
fn a_service_without_a_client_certificate_presents_none() {
    let config =
        config("  secure:\n    endpoints: [\"127.0.0.1:3443\"]\n    tls: {sni: a.internal}\n");
    let context = tls_context(service(&config, "secure"));
    let common = context.common_tls_context.expect("common context");
    assert!(common.tls_certificate_sds_secret_configs.is_empty());
    assert!(common.tls_certificates.is_empty());
}

/// Reads the test pair as `client.pem` and `client.key`, with `suffix` appended to the
/// certificate (a newline keeps it valid and makes it other bytes: a rotation).
struct ClientPair {
    suffix: &'static [u8],
}

impl tollgate_routes::FileSource for ClientPair {
    fn read(&self, path: &std::path::Path) -> std::io::Result<Vec<u8>> {
        match path.to_str() {
            Some("client.pem") => Ok([CLIENT_CERT, self.suffix].concat()),
            Some("client.key") => Ok(CLIENT_KEY.to_vec()),
            _ => Err(std::io::ErrorKind::NotFound.into()),
        }
    }
}

const CLIENT_CERT: &[u8] = include_bytes!("../../../routes/tests/fixtures/gateway.pem");
const CLIENT_KEY: &[u8] = include_bytes!("../../../routes/tests/fixtures/gateway.key");
const MUTUAL_TLS: &str = "version: 1
services:
  secure:
    endpoints: [\"127.0.0.1:3443\"]
    tls: {sni: a.internal, cert_file: client.pem, key_file: client.key}
  plain:
    endpoints: [\"127.0.0.1:3000\"]
";

fn mutual_tls_snapshot(files: &ClientPair) -> crate::snapshot::Snapshot {
    let (config, certificates) =
        tollgate_routes::parse_with_files("routes.yaml", MUTUAL_TLS, files).expect("valid");
    crate::translate::translate(&config, &certificates)
}

#[test]
fn a_client_certificate_comes_over_sds_under_the_services_name() {
    let snapshot = mutual_tls_snapshot(&ClientPair { suffix: b"" });
    let cluster: Cluster = decode(&snapshot, type_url::CLUSTER, "secure");
    let Some(ConfigType::TypedConfig(any)) = cluster.transport_socket.and_then(|s| s.config_type)
    else {
        panic!("typed TLS config expected");
    };
    let context = UpstreamTlsContext::decode(any.value.as_slice()).expect("upstream context");
    let common = context.common_tls_context.expect("common context");
    let references: Vec<_> = common
        .tls_certificate_sds_secret_configs
        .iter()
        .map(|r| (r.name.as_str(), r.sds_config.is_some()))
        .collect();
    assert_eq!(references, [("upstream_client/secure", true)]);
    assert!(
        common.tls_certificates.is_empty(),
        "the key travels in the secret only, never inline in the cluster"
    );

    assert_eq!(
        secret_pair(&snapshot, "upstream_client/secure"),
        (CLIENT_CERT.to_vec(), CLIENT_KEY.to_vec())
    );
    assert_eq!(
        secret_names(&snapshot),
        ["upstream_client/secure"],
        "only the service that presents a certificate has a secret"
    );
}

#[test]
fn a_rotated_client_certificate_changes_only_the_secret() {
    let before = mutual_tls_snapshot(&ClientPair { suffix: b"" });
    let after = mutual_tls_snapshot(&ClientPair { suffix: b"\n" });
    for unchanged in [type_url::CLUSTER, type_url::ENDPOINT] {
        assert_eq!(
            before.resources(unchanged).version,
            after.resources(unchanged).version,
            "{unchanged}"
        );
    }
    assert_ne!(
        before.resources(type_url::SECRET).version,
        after.resources(type_url::SECRET).version
    );
}

const SIDECARS_OVER_TLS: &str = "version: 1
sidecars:
  ext_authz:
    address: \"127.0.0.1:9191\"
    tls: {sni: sidecars.internal, cert_file: client.pem, key_file: client.key}
  rate_limit:
    address: \"127.0.0.1:8081\"
    tls: {sni: sidecars.internal}
";

#[test]
fn a_sidecar_with_tls_is_called_over_tls_with_its_client_certificate_over_sds() {
    let (config, certificates) = tollgate_routes::parse_with_files(
        "routes.yaml",
        SIDECARS_OVER_TLS,
        &ClientPair { suffix: b"" },
    )
    .expect("valid");
    let snapshot = crate::translate::translate(&config, &certificates);
    let context = |name: &str| {
        let cluster: Cluster = decode(&snapshot, type_url::CLUSTER, name);
        let Some(ConfigType::TypedConfig(any)) =
            cluster.transport_socket.and_then(|s| s.config_type)
        else {
            panic!("{name}: typed TLS config expected");
        };
        UpstreamTlsContext::decode(any.value.as_slice()).expect("upstream context")
    };
    let authz = context("tollgate_ext_authz");
    assert_eq!(authz.sni, "sidecars.internal");
    assert_eq!(
        verification(&authz).1,
        ["sidecars.internal"],
        "the sidecar's certificate name is checked"
    );
    let references: Vec<_> = authz
        .common_tls_context
        .expect("common context")
        .tls_certificate_sds_secret_configs
        .iter()
        .map(|r| r.name.clone())
        .collect();
    assert_eq!(references, ["upstream_client/tollgate_ext_authz"]);
    assert_eq!(
        secret_pair(&snapshot, "upstream_client/tollgate_ext_authz"),
        (CLIENT_CERT.to_vec(), CLIENT_KEY.to_vec())
    );
    let rate_limit = context("tollgate_ratelimit");
    assert!(rate_limit
        .common_tls_context
        .expect("common context")
        .tls_certificate_sds_secret_configs
        .is_empty());
    assert_eq!(
        secret_names(&snapshot),
        ["upstream_client/tollgate_ext_authz"]
    );
}

#[test]
fn a_sidecar_without_tls_is_called_in_plaintext() {
    let config: RoutesConfig = tollgate_routes::parse(
        "routes.yaml",
        "version: 1\nsidecars:\n  ext_authz: {address: \"127.0.0.1:9191\"}\n",
    )
    .expect("valid");
    let snapshot = crate::translate::translate(&config, &Default::default());
    let cluster: Cluster = decode(&snapshot, type_url::CLUSTER, "tollgate_ext_authz");
    assert!(cluster.transport_socket.is_none());
}
