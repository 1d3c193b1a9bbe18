//! Service traffic policies in routes.yaml: what is accepted with which defaults, and each
//! mistake reported at its line and column.

mod common;

use common::{assert_error_at, errors_with_files, Files};

fn assert_one_error(snippet: &str, at: &str, contains: &str) {
    assert_error_at(&with_policy(snippet), at, contains)
}

use std::path::PathBuf;
use std::time::Duration;

use tollgate_routes::service_policy::{
    CircuitBreaker, HealthCheck, HealthProbe, LoadBalancing, OutlierDetection, Protocol,
    ServicePolicy, UpstreamTls,
};
use tollgate_routes::CertificateFiles;
use tollgate_routes::{parse, parse_with_files};

/// A config whose only service, `svc`, has `policy` (indented four spaces) after its
/// endpoints; its first policy line is line 5.
fn with_policy(policy: &str) -> String {
    format!(
        "version: 1\nservices:\n  svc:\n    endpoints: [\"127.0.0.1:3000\", \"127.0.0.1:3001\"]\n{policy}"
    )
}

fn policy(text: &str) -> ServicePolicy {
    match parse("routes.yaml", &with_policy(text)) {
        Ok(config) => config.services["svc"].policy.clone(),
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

#[test]
fn a_service_without_policies_gets_the_defaults() {
    assert_eq!(policy(""), ServicePolicy::default());
    assert_eq!(
        ServicePolicy::default().load_balancing,
        LoadBalancing::RoundRobin
    );
}

#[test]
fn every_field_of_the_contract_is_accepted() {
    let policy = policy(
        "    connect_timeout: 1s
    health_check: {path: /health, interval: 5s, timeout: 1s, unhealthy_threshold: 3, healthy_threshold: 2}
    load_balancing: ring_hash
    hash_on: {header: X-User-Id}
    circuit_breaker: {max_connections: 1000, max_pending_requests: 1000, max_requests: 1000, max_retries: 3}
    outlier_detection: {consecutive_5xx: 5, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 50}
    tls: {sni: invoices.internal, ca_file: /etc/ssl/ca.pem}
",
    );
    assert_eq!(
        policy,
        ServicePolicy {
            protocol: Protocol::Http1,
            health_check: Some(HealthCheck {
                probe: HealthProbe::Http {
                    path: "/health".into()
                },
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(1),
                unhealthy_threshold: 3,
                healthy_threshold: 2,
            }),
            load_balancing: LoadBalancing::RingHash {
                header: "x-user-id".into()
            },
            circuit_breaker: Some(CircuitBreaker {
                max_connections: Some(1000),
                max_pending_requests: Some(1000),
                max_requests: Some(1000),
                max_retries: Some(3),
            }),
            outlier_detection: Some(OutlierDetection {
                consecutive_5xx: 5,
                interval: Duration::from_secs(10),
                base_ejection_time: Duration::from_secs(30),
                max_ejection_percent: 50,
            }),
            tls: Some(UpstreamTls {
                sni: "invoices.internal".into(),
                ca_file: PathBuf::from("/etc/ssl/ca.pem"),
                ca_pem: None,
                client_certificate: None,
            }),
        }
    );
}

#[test]
fn outlier_detection_fields_default_to_envoys() {
    assert_eq!(
        policy("    outlier_detection: {}\n").outlier_detection,
        Some(OutlierDetection {
            consecutive_5xx: 5,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
        })
    );
}

#[test]
fn empty_tls_on_a_dns_service_verifies_its_host_name_against_the_system_cas() {
    let config = parse(
        "routes.yaml",
        "version: 1\nservices:\n  api:\n    endpoints: [\"API.example.com:443\"]\n    tls: {}\n",
    )
    .expect("valid");
    assert_eq!(
        config.services["api"].policy.tls,
        Some(UpstreamTls {
            sni: "api.example.com".into(),
            ca_file: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            ca_pem: None,
            client_certificate: None,
        })
    );
}

#[test]
fn tls_to_ip_endpoints_needs_an_sni() {
    assert_one_error("    tls: {}\n", "5:10", "tls needs an sni");
}

#[test]
fn an_ip_address_is_not_an_sni() {
    assert_one_error(
        "    tls: {sni: 10.0.0.1}\n",
        "5:16",
        "invalid sni \"10.0.0.1\"",
    );
}

const CA: &[u8] = include_bytes!("fixtures/gateway.pem");
const KEY: &[u8] = include_bytes!("fixtures/gateway.key");

/// The service's `tls` with `ca_file` as written, validated with `files`.
fn tls_with_ca_file(ca_file: &str, files: &Files) -> Result<Option<UpstreamTls>, Vec<String>> {
    let text = with_policy(&format!(
        "    tls: {{sni: a.internal, ca_file: {ca_file}}}\n"
    ));
    parse_with_files("routes.yaml", &text, files)
        .map(|(config, _)| config.services["svc"].policy.tls.clone())
        .map_err(|errors| {
            errors
                .iter()
                .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
                .collect()
        })
}

#[test]
fn a_relative_ca_file_is_read_and_its_bundle_kept_for_envoy() {
    let files = Files::new(&[("certs/ca.pem", CA)]);
    let tls = tls_with_ca_file("certs/ca.pem", &files)
        .expect("valid")
        .expect("tls");
    assert_eq!(tls.ca_file, PathBuf::from("certs/ca.pem"));
    assert_eq!(tls.ca_pem.as_deref(), Some(CA));
}

#[test]
fn without_files_the_ca_file_is_only_named() {
    // The sidecars parse routes.yaml too; only the control plane reads what it names.
    let tls = policy("    tls: {sni: a.internal, ca_file: certs/ca.pem}\n")
        .tls
        .expect("tls");
    assert_eq!(tls.ca_pem, None);
}

#[test]
fn a_ca_file_that_cannot_be_trusted_is_refused_at_its_field() {
    let garbage_block = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let files = Files::new(&[
        ("key.pem", KEY),
        ("notes.txt", b"not a certificate"),
        ("garbage.pem", garbage_block),
    ]);
    for (ca_file, expected) in [
        ("missing.pem", "cannot read ca_file \"missing.pem\""),
        (
            "key.pem",
            "ca_file \"key.pem\" is not a PEM certificate bundle",
        ),
        (
            "notes.txt",
            "ca_file \"notes.txt\" is not a PEM certificate bundle",
        ),
        (
            "garbage.pem",
            "ca_file \"garbage.pem\" holds no X.509 certificate",
        ),
        ("\"\"", "ca_file is empty"),
    ] {
        let errors = tls_with_ca_file(ca_file, &files).expect_err(ca_file);
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("5:37:") && e.contains(expected)),
            "{ca_file}: no error at 5:37 containing {expected:?}; got {errors:#?}"
        );
    }
}

const OTHER_KEY: &[u8] = include_bytes!("fixtures/other.key");

/// The service's `tls` naming a client certificate by `cert_and_key` (`cert_file: …,
/// key_file: …`), validated with `files`.
fn with_client_certificate(cert_and_key: &str) -> String {
    with_policy(&format!("    tls: {{sni: a.internal, {cert_and_key}}}\n"))
}

#[test]
fn a_client_certificate_is_read_for_the_control_plane_and_named_in_the_policy() {
    let files = Files::new(&[("certs/client.pem", CA), ("certs/client.key", KEY)]);
    let text = with_client_certificate("cert_file: certs/client.pem, key_file: certs/client.key");
    let (config, certificates) = parse_with_files("routes.yaml", &text, &files).expect("valid");
    let tls = config.services["svc"].policy.tls.clone().expect("tls");
    assert_eq!(
        tls.client_certificate,
        Some(CertificateFiles {
            cert_file: "certs/client.pem".into(),
            key_file: "certs/client.key".into(),
        })
    );
    let pair = certificates
        .upstream_client("svc")
        .expect("the service's client certificate");
    assert_eq!(pair.certificate_chain(), CA);
    assert_eq!(pair.private_key(), KEY);
    assert!(
        certificates.listener("svc").is_empty(),
        "a client certificate is no listener's"
    );
    // The sidecars parse without files: the paths only, never the key.
    let named = parse("routes.yaml", &text).expect("valid");
    assert_eq!(named.services["svc"].policy.tls, Some(tls));
}

#[test]
fn a_client_certificate_needs_both_files() {
    assert_one_error(
        "    tls: {sni: a.internal, cert_file: client.pem}\n",
        "5:39",
        "service \"svc\": a client certificate needs both cert_file and key_file",
    );
    assert_one_error(
        "    tls: {sni: a.internal, key_file: client.key}\n",
        "5:38",
        "needs both cert_file and key_file",
    );
    assert_one_error(
        "    tls: {sni: a.internal, cert_file: \"\", key_file: client.key}\n",
        "5:39",
        "cert_file is empty",
    );
}

#[test]
fn a_client_certificate_that_cannot_be_presented_is_refused_at_its_field() {
    let files = Files::new(&[
        ("client.pem", CA),
        ("client.key", KEY),
        ("other.key", OTHER_KEY),
        ("notes.txt", b"not PEM"),
    ]);
    for (cert_and_key, at, expected) in [
        (
            "cert_file: missing.pem, key_file: client.key",
            "5:39",
            "cannot read cert_file \"missing.pem\"",
        ),
        (
            "cert_file: notes.txt, key_file: client.key",
            "5:39",
            "cert_file \"notes.txt\" is not a PEM certificate",
        ),
        (
            "cert_file: client.pem, key_file: notes.txt",
            "5:61",
            "key_file \"notes.txt\" is not a PEM private key",
        ),
        (
            "cert_file: client.pem, key_file: other.key",
            "5:61",
            "key_file \"other.key\" does not match the certificate in cert_file",
        ),
    ] {
        let errors = errors_with_files(&with_client_certificate(cert_and_key), &files);
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(&format!("{at}:")) && e.contains(expected)),
            "{cert_and_key}: no error at {at} containing {expected:?}; got {errors:#?}"
        );
    }
}

#[test]
fn unknown_load_balancing_is_rejected_with_the_choices() {
    assert_one_error(
        "    load_balancing: fastest\n",
        "5:21",
        "unknown load_balancing \"fastest\": expected round_robin, least_request, random or ring_hash",
    );
}

#[test]
fn ring_hash_without_hash_on_is_rejected() {
    assert_one_error(
        "    load_balancing: ring_hash\n",
        "5:21",
        "ring_hash needs hash_on",
    );
}

#[test]
fn hash_on_without_ring_hash_is_rejected() {
    assert_one_error(
        "    load_balancing: random\n    hash_on: {header: x-user-id}\n",
        "6:14",
        "hash_on applies only with load_balancing: ring_hash",
    );
    assert_one_error(
        "    hash_on: {header: x-user-id}\n",
        "5:14",
        "hash_on applies only with load_balancing: ring_hash",
    );
}

#[test]
fn hash_on_an_invalid_header_is_rejected() {
    assert_one_error(
        "    load_balancing: ring_hash\n    hash_on: {header: \"x user\"}\n",
        "6:23",
        "invalid header name \"x user\"",
    );
}

#[test]
fn health_check_needs_an_absolute_path() {
    assert_one_error(
        "    health_check: {interval: 5s}\n",
        "5:19",
        "health_check needs a path",
    );
    assert_one_error(
        "    health_check: {path: health}\n",
        "5:26",
        "health_check path \"health\" must start with '/'",
    );
}

#[test]
fn health_check_timeout_longer_than_its_interval_is_rejected() {
    assert_one_error(
        "    health_check: {path: /health, interval: 1s, timeout: 2s}\n",
        "5:58",
        "health_check timeout 2s is longer than its interval 1s",
    );
}

#[test]
fn zero_thresholds_and_limits_are_rejected() {
    assert_one_error(
        "    health_check: {path: /health, unhealthy_threshold: 0}\n",
        "5:56",
        "0 is out of range: expected 1 to 4294967295",
    );
    assert_one_error(
        "    circuit_breaker: {max_requests: 0}\n",
        "5:37",
        "0 is out of range",
    );
    assert_one_error(
        "    circuit_breaker: {max_connections: 4294967296}\n",
        "5:40",
        "4294967296 is out of range",
    );
}

#[test]
fn zero_retries_is_a_valid_limit() {
    let policy = policy("    circuit_breaker: {max_retries: 0}\n");
    assert_eq!(policy.circuit_breaker.and_then(|c| c.max_retries), Some(0));
}

#[test]
fn max_ejection_percent_over_100_is_rejected() {
    assert_one_error(
        "    outlier_detection: {max_ejection_percent: 150}\n",
        "5:47",
        "max_ejection_percent 150 must be between 1 and 100",
    );
}

#[test]
fn unknown_policy_fields_are_rejected() {
    assert_one_error("    circuit_breaker: {max_conns: 10}\n", "5:", "max_conns");
}
