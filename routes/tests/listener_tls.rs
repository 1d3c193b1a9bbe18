//! A listener's `tls`: the settings, their defaults, and every way its files can be wrong,
//! each reported at the field that names the file.

mod common;

use common::{assert_error_at, errors_with_files, Files};
use tollgate_routes::{parse, parse_with_files, ListenerTls, TlsVersion};

const CERT: &[u8] = include_bytes!("fixtures/gateway.pem");
const KEY: &[u8] = include_bytes!("fixtures/gateway.key");
const OTHER_KEY: &[u8] = include_bytes!("fixtures/other.key");
const ED25519_KEY: &[u8] = include_bytes!("fixtures/ed25519.key");

/// One TLS listener whose `tls:` mapping is `tls` (flow style).
fn with_tls(tls: &str) -> String {
    format!(
        "version: 1\nlisteners:\n  - name: secure\n    address: 127.0.0.1:8443\n    tls: {tls}\n"
    )
}

fn good_files() -> Files {
    Files::new(&[("certs/gw.pem", CERT), ("certs/gw.key", KEY)])
}

#[test]
fn a_tls_listener_defaults_to_tls_1_2_and_carries_its_checked_certificate() {
    let text = with_tls("{cert_file: certs/gw.pem, key_file: certs/gw.key}");
    let (config, certificates) =
        parse_with_files("routes.yaml", &text, &good_files()).expect("valid");
    assert_eq!(
        config.listeners[0].tls,
        Some(ListenerTls {
            cert_file: "certs/gw.pem".into(),
            key_file: "certs/gw.key".into(),
            min_version: TlsVersion::Tls12,
            sni_certificates: Vec::new(),
            client_certificates: None,
        })
    );
    let [served] = certificates.listener("secure") else {
        panic!("one certificate expected")
    };
    assert_eq!(served.cert_file, std::path::PathBuf::from("certs/gw.pem"));
    let certificate = &served.certificate;
    assert_eq!(certificate.certificate_chain(), CERT);
    assert_eq!(certificate.private_key(), KEY);
    // `openssl x509 -enddate` says Oct 31 04:04:43 2126 GMT (a GeneralizedTime, past 2049).
    assert_eq!(certificate.not_after_unix(), Some(4_949_093_083));
}

#[test]
fn min_version_1_3_is_accepted_quoted_or_not() {
    for version in ["\"1.3\"", "1.3"] {
        let text = with_tls(&format!(
            "{{cert_file: certs/gw.pem, key_file: certs/gw.key, min_version: {version}}}"
        ));
        let (config, _) = parse_with_files("routes.yaml", &text, &good_files()).expect("valid");
        assert_eq!(
            config.listeners[0].tls.as_ref().map(|t| t.min_version),
            Some(TlsVersion::Tls13)
        );
    }
}

#[test]
fn the_key_never_shows_in_debug_output() {
    let text = with_tls("{cert_file: certs/gw.pem, key_file: certs/gw.key}");
    let (_, certificates) = parse_with_files("routes.yaml", &text, &good_files()).expect("valid");
    let debug = format!("{certificates:?}");
    assert!(debug.contains("<redacted>"), "{debug}");
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
}

#[test]
fn parse_without_files_checks_the_settings_but_reads_nothing() {
    let text = with_tls("{cert_file: /nonexistent/gw.pem, key_file: /nonexistent/gw.key}");
    let config = parse("routes.yaml", &text).expect("files are not read");
    assert!(config.listeners[0].tls.is_some());
}

#[test]
fn an_unknown_min_version_is_rejected_with_the_choices() {
    assert_error_at(
        &with_tls("{cert_file: a.pem, key_file: a.key, min_version: \"1.1\"}"),
        "5:59:",
        "unknown min_version \"1.1\": expected \"1.2\" or \"1.3\"",
    );
}

#[test]
fn cert_file_and_key_file_are_required() {
    assert_error_at(
        &with_tls("{key_file: a.key}"),
        "5:10:",
        "listener \"secure\": tls needs a cert_file",
    );
    assert_error_at(
        &with_tls("{cert_file: a.pem}"),
        "5:10:",
        "listener \"secure\": tls needs a key_file",
    );
}

#[test]
fn unknown_tls_fields_are_rejected() {
    assert_error_at(
        &with_tls("{cert_file: a.pem, key_file: a.key, ciphers: [RC4]}"),
        "5:46:",
        "unknown field `ciphers`, expected one of cert_file, key_file, min_version",
    );
}

#[test]
fn a_missing_file_is_reported_at_its_field() {
    let errors = errors_with_files(
        &with_tls("{cert_file: certs/gw.pem, key_file: certs/missing.key}"),
        &good_files(),
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("5:46: cannot read key_file \"certs/missing.key\""),
        "{errors:?}"
    );
}

#[test]
fn a_file_that_is_not_a_pem_certificate_is_refused() {
    let files = Files::new(&[("gw.pem", KEY), ("gw.key", KEY)]);
    let errors = errors_with_files(&with_tls("{cert_file: gw.pem, key_file: gw.key}"), &files);
    assert_eq!(
        errors,
        ["5:22: cert_file \"gw.pem\" is not a PEM certificate (expected -----BEGIN CERTIFICATE-----)"]
    );
}

#[test]
fn a_certificate_block_that_is_not_x509_is_refused() {
    let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let files = Files::new(&[("gw.pem", garbage), ("gw.key", KEY)]);
    let errors = errors_with_files(&with_tls("{cert_file: gw.pem, key_file: gw.key}"), &files);
    assert!(
        errors[0].contains("cert_file \"gw.pem\" is not a PEM certificate"),
        "{errors:?}"
    );
}

#[test]
fn a_file_that_is_not_a_pem_private_key_is_refused() {
    let files = Files::new(&[("gw.pem", CERT), ("gw.key", CERT)]);
    let errors = errors_with_files(&with_tls("{cert_file: gw.pem, key_file: gw.key}"), &files);
    assert_eq!(
        errors,
        ["5:40: key_file \"gw.key\" is not a PEM private key (expected an unencrypted PKCS#8, RSA or EC key)"]
    );
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused() {
    let files = Files::new(&[("gw.pem", CERT), ("gw.key", OTHER_KEY)]);
    let errors = errors_with_files(&with_tls("{cert_file: gw.pem, key_file: gw.key}"), &files);
    assert_eq!(
        errors,
        ["5:40: key_file \"gw.key\" does not match the certificate in cert_file"]
    );
}

#[test]
fn an_ed25519_key_is_refused_because_envoy_cannot_serve_it() {
    let files = Files::new(&[("gw.pem", CERT), ("gw.key", ED25519_KEY)]);
    let errors = errors_with_files(&with_tls("{cert_file: gw.pem, key_file: gw.key}"), &files);
    assert!(
        errors[0].contains("is not an RSA or ECDSA key"),
        "{errors:?}"
    );
}

#[test]
fn file_errors_are_reported_together_with_every_other_error() {
    let text = format!(
        "{}routes:\n  - name: r\n    match: {{prefix: /}}\n    service: nope\n",
        with_tls("{cert_file: missing.pem, key_file: missing.key}")
    );
    let errors = errors_with_files(&text, &good_files());
    assert_eq!(errors.len(), 3, "{errors:?}");
}

/// The test pair under two more names, as if issued for two more host names.
fn sni_files() -> Files {
    Files::new(&[
        ("certs/gw.pem", CERT),
        ("certs/gw.key", KEY),
        ("certs/api.pem", CERT),
        ("certs/api.key", KEY),
        ("certs/admin.pem", CERT),
        ("certs/admin.key", KEY),
        ("certs/other.key", OTHER_KEY),
    ])
}

#[test]
fn sni_certificates_are_read_after_the_default_in_file_order() {
    let text = with_tls(
        "{cert_file: certs/gw.pem, key_file: certs/gw.key, sni_certificates: [{cert_file: certs/api.pem, key_file: certs/api.key}, {cert_file: certs/admin.pem, key_file: certs/admin.key}]}",
    );
    let (config, certificates) =
        parse_with_files("routes.yaml", &text, &sni_files()).expect("valid");
    let tls = config.listeners[0].tls.as_ref().expect("tls");
    let named: Vec<_> = tls
        .sni_certificates
        .iter()
        .map(|c| (c.cert_file.to_str(), c.key_file.to_str()))
        .collect();
    assert_eq!(
        named,
        [
            (Some("certs/api.pem"), Some("certs/api.key")),
            (Some("certs/admin.pem"), Some("certs/admin.key"))
        ]
    );
    let served: Vec<_> = certificates
        .listener("secure")
        .iter()
        .map(|s| s.cert_file.to_str())
        .collect();
    assert_eq!(
        served,
        [
            Some("certs/gw.pem"),
            Some("certs/api.pem"),
            Some("certs/admin.pem")
        ]
    );
}

#[test]
fn a_bad_sni_certificate_is_refused_at_its_field() {
    let text = with_tls(
        "{cert_file: certs/gw.pem, key_file: certs/gw.key, sni_certificates: [{cert_file: certs/api.pem, key_file: certs/other.key}]}",
    );
    let errors = errors_with_files(&text, &sni_files());
    assert!(
        errors.iter().any(|e| e.starts_with("5:116:")
            && e.contains("key_file \"certs/other.key\" does not match the certificate")),
        "{errors:#?}"
    );
    assert_error_at(
        &with_tls("{cert_file: a.pem, key_file: a.key, sni_certificates: [{cert_file: b.pem}]}"),
        "5:66",
        "missing field `key_file`",
    );
    assert_error_at(
        &with_tls(
            "{cert_file: a.pem, key_file: a.key, sni_certificates: [{cert_file: \"\", key_file: b.key}]}",
        ),
        "5:77",
        "cert_file is empty",
    );
}
