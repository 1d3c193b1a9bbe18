//! A listener's client certificate verification (`client_ca_file`, `client_certificate`,
//! `crl_file` in its `tls`): the settings and their default, the bundle and lists kept for
//! Envoy as read, and every way they can be wrong, each reported at the field to fix.

mod common;

use common::{assert_error_at, errors_with_files, Files};
use tollgate_routes::{parse, parse_with_files, ClientCertificates};

const CERT: &[u8] = include_bytes!("fixtures/gateway.pem");
const KEY: &[u8] = include_bytes!("fixtures/gateway.key");
const CLIENT_CA: &[u8] = include_bytes!("fixtures/client-ca.pem");
const CLIENT_CA_CRL: &[u8] = include_bytes!("fixtures/client-ca.crl");
const CLIENT_CA_CRL_V1: &[u8] = include_bytes!("fixtures/client-ca-v1.crl");
const OTHER_CA: &[u8] = include_bytes!("fixtures/other-ca.pem");
const OTHER_CA_CRL: &[u8] = include_bytes!("fixtures/other-ca.crl");

/// One TLS listener serving the test pair, with `extra` (`, field: value…`) in its flow-style
/// `tls:` mapping, which opens at line 5, column 10.
fn with_tls(extra: &str) -> String {
    format!(
        "version: 1\nlisteners:\n  - name: partners\n    address: 127.0.0.1:8443\n    tls: {}\n",
        tls(extra)
    )
}

fn tls(extra: &str) -> String {
    format!("{{cert_file: gw.pem, key_file: gw.key{extra}}}")
}

/// `LINE:COL:` of `needle` in the `tls:` mapping of [`with_tls`]`(extra)`.
fn at(extra: &str, needle: &str) -> String {
    let offset = tls(extra)
        .find(needle)
        .expect("the needle is in the mapping");
    format!("5:{}:", 10 + offset)
}

/// The test pair, and `more`.
fn files(more: &[(&str, &[u8])]) -> Files {
    let mut all: Vec<(&str, &[u8])> = vec![("gw.pem", CERT), ("gw.key", KEY)];
    all.extend_from_slice(more);
    Files::new(&all)
}

/// The listener's client certificate settings, validated reading `files`.
fn client_certificates(extra: &str, files: &Files) -> Option<ClientCertificates> {
    match parse_with_files("routes.yaml", &with_tls(extra), files) {
        Ok((config, _)) => config.listeners[0]
            .tls
            .as_ref()
            .expect("a TLS listener")
            .client_certificates
            .clone(),
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    }
}

/// Asserts that validating with `files` reports, at `needle`'s position, an error
/// containing `contains`.
fn assert_file_error(extra: &str, files: &Files, needle: &str, contains: &str) {
    let errors = errors_with_files(&with_tls(extra), files);
    let at = at(extra, needle);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&at) && e.contains(contains)),
        "no error at {at} containing {contains:?}; got {errors:#?}"
    );
}

#[test]
fn a_listener_without_client_ca_file_asks_for_no_client_certificate() {
    assert_eq!(client_certificates("", &files(&[])), None);
}

#[test]
fn a_client_ca_file_alone_requires_a_certificate_and_keeps_the_bundle_for_envoy() {
    let settings = client_certificates(
        ", client_ca_file: certs/partners-ca.pem",
        &files(&[("certs/partners-ca.pem", CLIENT_CA)]),
    );
    assert_eq!(
        settings,
        Some(ClientCertificates {
            ca_file: "certs/partners-ca.pem".into(),
            ca_pem: Some(CLIENT_CA.to_vec()),
            crl_file: None,
            crl_pem: None,
            required: true,
        })
    );
}

#[test]
fn client_certificate_is_required_or_optional() {
    let files = files(&[("ca.pem", CLIENT_CA)]);
    let required = |mode: &str| {
        client_certificates(
            &format!(", client_ca_file: ca.pem, client_certificate: {mode}"),
            &files,
        )
        .map(|c| c.required)
    };
    assert_eq!(required("required"), Some(true));
    assert_eq!(required("optional"), Some(false));
}

#[test]
fn a_crl_file_is_read_and_kept_for_envoy_beside_the_bundle() {
    let settings = client_certificates(
        ", client_ca_file: ca.pem, crl_file: certs/partners.crl",
        &files(&[("ca.pem", CLIENT_CA), ("certs/partners.crl", CLIENT_CA_CRL)]),
    )
    .expect("client certificates");
    assert_eq!(settings.crl_file, Some("certs/partners.crl".into()));
    assert_eq!(settings.crl_pem.as_deref(), Some(CLIENT_CA_CRL));
}

#[test]
fn a_version_1_crl_is_accepted_as_envoy_accepts_it() {
    let settings = client_certificates(
        ", client_ca_file: ca.pem, crl_file: v1.crl",
        &files(&[("ca.pem", CLIENT_CA), ("v1.crl", CLIENT_CA_CRL_V1)]),
    )
    .expect("client certificates");
    assert_eq!(settings.crl_pem.as_deref(), Some(CLIENT_CA_CRL_V1));
}

#[test]
fn a_bundle_of_several_cas_needs_a_crl_from_each_in_one_crl_file() {
    let bundle = [CLIENT_CA, OTHER_CA].concat();
    let lists = [CLIENT_CA_CRL, OTHER_CA_CRL].concat();
    let settings = client_certificates(
        ", client_ca_file: ca.pem, crl_file: all.crl",
        &files(&[("ca.pem", &bundle), ("all.crl", &lists)]),
    )
    .expect("client certificates");
    assert_eq!(settings.crl_pem, Some(lists));
}

#[test]
fn without_files_the_bundle_and_lists_are_only_named() {
    // The sidecars parse routes.yaml too; only the control plane reads what it names.
    let config = parse(
        "routes.yaml",
        &with_tls(", client_ca_file: ca.pem, client_certificate: optional, crl_file: ca.crl"),
    )
    .expect("files are not read");
    let settings = config.listeners[0]
        .tls
        .as_ref()
        .and_then(|t| t.client_certificates.clone());
    assert_eq!(
        settings,
        Some(ClientCertificates {
            ca_file: "ca.pem".into(),
            ca_pem: None,
            crl_file: Some("ca.crl".into()),
            crl_pem: None,
            required: false,
        })
    );
}

#[test]
fn client_certificate_without_client_ca_file_is_refused_at_its_line() {
    let extra = ", client_certificate: required";
    assert_error_at(
        &with_tls(extra),
        &at(extra, "required"),
        "listener \"partners\": client_certificate needs a client_ca_file",
    );
}

#[test]
fn crl_file_without_client_ca_file_is_refused_at_its_line() {
    let extra = ", crl_file: partners.crl";
    assert_error_at(
        &with_tls(extra),
        &at(extra, "partners.crl"),
        "listener \"partners\": crl_file needs a client_ca_file",
    );
}

#[test]
fn an_unknown_client_certificate_mode_is_refused_with_the_choices() {
    let extra = ", client_ca_file: ca.pem, client_certificate: request";
    assert_error_at(
        &with_tls(extra),
        &at(extra, "request"),
        "unknown client_certificate \"request\": expected required or optional",
    );
}

#[test]
fn empty_paths_are_refused_at_their_fields() {
    let extra = ", client_ca_file: \"\", crl_file: \"\"";
    let errors = common::errors(&with_tls(extra));
    let ca_at = at(extra, "\"\", crl");
    let crl_at = format!(
        "5:{}:",
        10 + tls(extra).rfind("\"\"").expect("the second \"\"")
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&ca_at) && e.ends_with("client_ca_file is empty")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&crl_at) && e.ends_with("crl_file is empty")),
        "{errors:#?}"
    );
}

#[test]
fn a_client_ca_file_that_cannot_be_trusted_is_refused_at_its_field() {
    let garbage_block = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let files = files(&[("key.pem", KEY), ("garbage.pem", garbage_block)]);
    for (ca_file, expected) in [
        ("missing.pem", "cannot read client_ca_file \"missing.pem\""),
        (
            "key.pem",
            "client_ca_file \"key.pem\" is not a PEM certificate bundle",
        ),
        (
            "garbage.pem",
            "client_ca_file \"garbage.pem\" holds no X.509 certificate",
        ),
    ] {
        let extra = format!(", client_ca_file: {ca_file}");
        assert_file_error(&extra, &files, ca_file, expected);
    }
}

#[test]
fn a_crl_file_that_is_not_pem_crls_is_refused_at_its_field() {
    // A certificate in a CRL's armour: PEM that decodes, DER that is no CertificateList.
    let relabelled = String::from_utf8_lossy(CLIENT_CA)
        .replace("CERTIFICATE", "X509 CRL")
        .into_bytes();
    let files = files(&[
        ("ca.pem", CLIENT_CA),
        ("cert.crl", CLIENT_CA),
        ("notes.txt", b"revoked: alice"),
        ("relabelled.crl", &relabelled),
    ]);
    for (crl_file, expected) in [
        ("missing.crl", "cannot read crl_file \"missing.crl\""),
        (
            "cert.crl",
            "crl_file \"cert.crl\" is not a PEM certificate revocation list (expected -----BEGIN X509 CRL----- blocks)",
        ),
        (
            "notes.txt",
            "crl_file \"notes.txt\" is not a PEM certificate revocation list",
        ),
        (
            "relabelled.crl",
            "crl_file \"relabelled.crl\" holds a block that is not an X.509 certificate revocation list",
        ),
    ] {
        let extra = format!(", client_ca_file: ca.pem, crl_file: {crl_file}");
        assert_file_error(&extra, &files, crl_file, expected);
    }
}

#[test]
fn a_crl_file_without_a_crl_from_a_ca_of_the_bundle_is_refused_naming_that_ca() {
    // Envoy checks revocation along the whole chain: without a CRL from a trusted CA, every
    // certificate that CA issued would be refused, revoked or not.
    let bundle = [CLIENT_CA, OTHER_CA].concat();
    let files = files(&[
        ("both.pem", &bundle),
        ("client.pem", CLIENT_CA),
        ("client.crl", CLIENT_CA_CRL),
        ("other.crl", OTHER_CA_CRL),
    ]);
    let extra = ", client_ca_file: both.pem, crl_file: client.crl";
    assert_file_error(
        extra,
        &files,
        "client.crl",
        "crl_file \"client.crl\" has no CRL issued by \"Tollgate other-ca\", a CA in client_ca_file",
    );
    let extra = ", client_ca_file: client.pem, crl_file: other.crl";
    assert_file_error(
        extra,
        &files,
        "other.crl",
        "has no CRL issued by \"Tollgate client-ca\"",
    );
}

#[test]
fn a_refused_bundle_and_a_bad_crl_file_are_both_reported() {
    let files = files(&[("key.pem", KEY), ("cert.crl", CLIENT_CA)]);
    let extra = ", client_ca_file: key.pem, crl_file: cert.crl";
    let errors = errors_with_files(&with_tls(extra), &files);
    assert_eq!(errors.len(), 2, "{errors:#?}");
}

#[test]
fn the_new_fields_are_listed_among_the_expected_ones() {
    let extra = ", client_ca: ca.pem";
    assert_error_at(
        &with_tls(extra),
        &at(extra, "client_ca:"),
        "expected one of cert_file, key_file, min_version, sni_certificates, client_ca_file, client_certificate, crl_file",
    );
}
