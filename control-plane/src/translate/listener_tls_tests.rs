//! TLS listeners as Envoy resources: the downstream TLS context, its SDS secret, and the
//! codec that lets ALPN (or an HTTP/2 preface) pick the protocol.

use std::path::Path;

use tollgate_proto::envoy::config::core::v3::transport_socket::ConfigType;
use tollgate_proto::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use tollgate_proto::envoy::config::listener::v3::Listener;
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::CodecType;
use tollgate_proto::envoy::config::core::v3::data_source::Specifier;
use tollgate_proto::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, secret, tls_parameters::TlsProtocol,
    CertificateValidationContext, DownstreamTlsContext, Secret,
};
use prost::Message;
use tollgate_routes::FileSource;

use super::super::tests::{decode, manager, secret_names, secret_pair};
use crate::snapshot::{type_url, Snapshot};
use crate::translate::translate;

const CERT: &[u8] = include_bytes!("../../../routes/tests/fixtures/gateway.pem");
const KEY: &[u8] = include_bytes!("../../../routes/tests/fixtures/gateway.key");
const CLIENT_CA: &[u8] = include_bytes!("../../../routes/tests/fixtures/client-ca.pem");
const CLIENT_CA_CRL: &[u8] = include_bytes!("../../../routes/tests/fixtures/client-ca.crl");

/// `gw.pem` and `gw.key` are the test pair, `ca.pem` a client CA and `ca.crl` its CRL;
/// nothing else exists.
struct TestPair;

impl FileSource for TestPair {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        match path.to_str() {
            Some("gw.pem") => Ok(CERT.to_vec()),
            Some("gw.key") => Ok(KEY.to_vec()),
            Some("ca.pem") => Ok(CLIENT_CA.to_vec()),
            Some("ca.crl") => Ok(CLIENT_CA_CRL.to_vec()),
            _ => Err(std::io::ErrorKind::NotFound.into()),
        }
    }
}

/// A TLS listener `secure` with `extra` in its `tls:` mapping, and a plaintext `plain`.
fn snapshot(extra: &str) -> Snapshot {
    let text = format!(
        "version: 1
listeners:
  - name: secure
    address: 127.0.0.1:8443
    tls: {{cert_file: gw.pem, key_file: gw.key{extra}}}
  - name: plain
    address: 127.0.0.1:8080
"
    );
    let (config, certificates) =
        tollgate_routes::parse_with_files("routes.yaml", &text, &TestPair).expect("valid");
    translate(&config, &certificates)
}

fn tls_context(listener: &Listener) -> Option<DownstreamTlsContext> {
    let socket = listener.filter_chains[0].transport_socket.as_ref()?;
    let Some(ConfigType::TypedConfig(any)) = &socket.config_type else {
        panic!("typed transport socket config expected")
    };
    Some(DownstreamTlsContext::decode(any.value.as_slice()).expect("downstream tls context"))
}

#[test]
fn a_tls_listener_offers_h2_then_http1_with_its_certificate_over_ads() {
    let snapshot = snapshot("");
    let listener: Listener = decode(&snapshot, type_url::LISTENER, "secure");
    let common = tls_context(&listener)
        .and_then(|c| c.common_tls_context)
        .expect("a TLS transport socket");
    assert_eq!(common.alpn_protocols, ["h2", "http/1.1"]);
    assert_eq!(common.tls_certificate_sds_secret_configs.len(), 1);
    let sds = &common.tls_certificate_sds_secret_configs[0];
    assert_eq!(sds.name, "secure");
    assert!(matches!(
        sds.sds_config
            .as_ref()
            .and_then(|c| c.config_source_specifier.as_ref()),
        Some(ConfigSourceSpecifier::Ads(_))
    ));
    assert!(
        common.tls_certificates.is_empty(),
        "the key travels only in the secret"
    );
}

#[test]
fn the_minimum_version_defaults_to_1_2_and_can_be_1_3() {
    let min = |snapshot: &Snapshot| {
        let listener: Listener = decode(snapshot, type_url::LISTENER, "secure");
        let params = tls_context(&listener)
            .and_then(|c| c.common_tls_context)
            .and_then(|c| c.tls_params)
            .expect("tls params");
        // Envoy's defaults choose the ciphers and the maximum (TLS 1.3).
        assert!(params.cipher_suites.is_empty());
        assert_eq!(
            params.tls_maximum_protocol_version,
            TlsProtocol::TlsAuto as i32
        );
        TlsProtocol::try_from(params.tls_minimum_protocol_version).expect("known version")
    };
    assert_eq!(min(&snapshot("")), TlsProtocol::TlSv12);
    assert_eq!(
        min(&snapshot(", min_version: \"1.3\"")),
        TlsProtocol::TlSv13
    );
}

#[test]
fn the_secret_carries_the_files_as_read() {
    let snapshot = snapshot("");
    assert_eq!(
        secret_pair(&snapshot, "secure"),
        (CERT.to_vec(), KEY.to_vec())
    );
}

#[test]
fn a_plaintext_listener_has_no_transport_socket_and_no_secret() {
    let snapshot = snapshot("");
    let listener: Listener = decode(&snapshot, type_url::LISTENER, "plain");
    assert!(tls_context(&listener).is_none());
    assert_eq!(secret_names(&snapshot), ["secure"]);
}

#[test]
fn every_listener_lets_the_client_choose_http2() {
    let snapshot = snapshot("");
    for name in ["secure", "plain"] {
        let codec = CodecType::try_from(manager(&snapshot, name).codec_type);
        assert_eq!(codec, Ok(CodecType::Auto), "{name}");
    }
}

#[test]
fn a_rotated_certificate_changes_only_the_secret() {
    struct OtherCert;
    impl FileSource for OtherCert {
        fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
            // The same pair with one more trailing newline: different bytes, still valid.
            TestPair.read(path).map(|mut bytes| {
                if path.to_str() == Some("gw.pem") {
                    bytes.extend_from_slice(b"\n");
                }
                bytes
            })
        }
    }
    let text = "version: 1\nlisteners:\n  - {name: secure, address: 127.0.0.1:8443, tls: {cert_file: gw.pem, key_file: gw.key}}\n";
    let before = {
        let (config, certs) =
            tollgate_routes::parse_with_files("routes.yaml", text, &TestPair).expect("valid");
        translate(&config, &certs)
    };
    let after = {
        let (config, certs) =
            tollgate_routes::parse_with_files("routes.yaml", text, &OtherCert).expect("valid");
        translate(&config, &certs)
    };
    for unchanged in [type_url::CLUSTER, type_url::LISTENER, type_url::ROUTE] {
        assert_eq!(
            before.resources(unchanged).version,
            after.resources(unchanged).version
        );
    }
    assert_ne!(
        before.resources(type_url::SECRET).version,
        after.resources(type_url::SECRET).version
    );
}

#[test]
fn sni_certificates_follow_the_default_each_in_a_secret_of_its_own() {
    let snapshot = snapshot(
        ", sni_certificates: [{cert_file: gw.pem, key_file: gw.key}, {cert_file: gw.pem, key_file: gw.key}]",
    );
    let listener: Listener = decode(&snapshot, type_url::LISTENER, "secure");
    let context = tls_context(&listener).expect("a TLS listener");
    let common = context.common_tls_context.expect("common context");
    let references: Vec<&str> = common
        .tls_certificate_sds_secret_configs
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    // The default first: Envoy presents the first certificate when no SNI matches.
    assert_eq!(references, ["secure", "secure/sni/1", "secure/sni/2"]);
    assert_eq!(
        secret_names(&snapshot),
        ["secure", "secure/sni/1", "secure/sni/2"]
    );
    assert_eq!(
        secret_pair(&snapshot, "secure/sni/2"),
        (CERT.to_vec(), KEY.to_vec())
    );
}

/// The listener `secure`'s client certificate settings as Envoy gets them: the SDS secret its
/// validation context is referenced by, and `require_client_certificate`.
fn client_verification(snapshot: &Snapshot) -> (Option<String>, Option<bool>) {
    let listener: Listener = decode(snapshot, type_url::LISTENER, "secure");
    let context = tls_context(&listener).expect("a TLS listener");
    let reference = match context
        .common_tls_context
        .and_then(|c| c.validation_context_type)
    {
        None => None,
        Some(ValidationContextType::ValidationContextSdsSecretConfig(sds)) => {
            assert!(matches!(
                sds.sds_config.and_then(|c| c.config_source_specifier),
                Some(ConfigSourceSpecifier::Ads(_))
            ));
            Some(sds.name)
        }
        Some(other) => panic!("a validation context over SDS expected, got {other:?}"),
    };
    (
        reference,
        context.require_client_certificate.map(|r| r.value),
    )
}

/// The validation context in the SDS secret `name`.
fn validation_context(snapshot: &Snapshot, name: &str) -> CertificateValidationContext {
    let secret: Secret = decode(snapshot, type_url::SECRET, name);
    let Some(secret::Type::ValidationContext(context)) = secret.r#type else {
        panic!("a validation context secret expected")
    };
    context
}

fn inline_bytes(source: Option<tollgate_proto::envoy::config::core::v3::DataSource>) -> Vec<u8> {
    match source.and_then(|s| s.specifier) {
        Some(Specifier::InlineBytes(bytes)) => bytes,
        other => panic!("inline bytes expected, got {other:?}"),
    }
}

#[test]
fn a_listener_without_client_ca_file_asks_for_no_client_certificate() {
    assert_eq!(client_verification(&snapshot("")), (None, None));
}

#[test]
fn a_client_ca_file_is_verified_against_over_sds_and_a_certificate_required_by_default() {
    let snapshot = snapshot(", client_ca_file: ca.pem");
    assert_eq!(
        client_verification(&snapshot),
        (Some("client_ca/secure".to_owned()), Some(true))
    );
    assert_eq!(secret_names(&snapshot), ["client_ca/secure", "secure"]);
}

#[test]
fn an_optional_client_certificate_is_verified_but_not_required() {
    let snapshot = snapshot(", client_ca_file: ca.pem, client_certificate: optional");
    assert_eq!(
        client_verification(&snapshot),
        (Some("client_ca/secure".to_owned()), Some(false))
    );
}

#[test]
fn the_validation_secret_carries_the_bundle_and_the_crl_as_read() {
    let snapshot = snapshot(", client_ca_file: ca.pem, crl_file: ca.crl");
    let context = validation_context(&snapshot, "client_ca/secure");
    assert_eq!(inline_bytes(context.trusted_ca), CLIENT_CA);
    assert_eq!(inline_bytes(context.crl), CLIENT_CA_CRL);
    // Revocation along the whole chain, Envoy's default: a revoked intermediate is refused.
    assert!(!context.only_verify_leaf_cert_crl);
    // Nothing else loosens or narrows what verifies.
    assert!(!context.allow_expired_certificate);
    assert_eq!(context.trust_chain_verification, 0, "VERIFY_TRUST_CHAIN");
    assert!(context.match_typed_subject_alt_names.is_empty());
}

#[test]
fn without_a_crl_file_the_validation_secret_has_no_crl() {
    let snapshot = snapshot(", client_ca_file: ca.pem");
    let context = validation_context(&snapshot, "client_ca/secure");
    assert_eq!(inline_bytes(context.trusted_ca), CLIENT_CA);
    assert!(context.crl.is_none());
}

#[test]
fn a_rotated_client_ca_or_crl_changes_only_the_secrets() {
    /// The CA bundle and the CRL with one more trailing newline each: different bytes,
    /// still valid.
    struct Rotated;
    impl FileSource for Rotated {
        fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
            TestPair.read(path).map(|mut bytes| {
                if matches!(path.to_str(), Some("ca.pem" | "ca.crl")) {
                    bytes.extend_from_slice(b"\n");
                }
                bytes
            })
        }
    }
    let text = "version: 1\nlisteners:\n  - {name: secure, address: 127.0.0.1:8443, tls: {cert_file: gw.pem, key_file: gw.key, client_ca_file: ca.pem, crl_file: ca.crl}}\n";
    let translated = |files: &dyn FileSource| {
        let (config, certs) =
            tollgate_routes::parse_with_files("routes.yaml", text, files).expect("valid");
        translate(&config, &certs)
    };
    let (before, after) = (translated(&TestPair), translated(&Rotated));
    // The listener is unchanged, so Envoy keeps it and its connections: no drain.
    for unchanged in [type_url::CLUSTER, type_url::LISTENER, type_url::ROUTE] {
        assert_eq!(
            before.resources(unchanged).version,
            after.resources(unchanged).version
        );
    }
    assert_ne!(
        before.resources(type_url::SECRET).version,
        after.resources(type_url::SECRET).version
    );
    let rotated = validation_context(&after, "client_ca/secure");
    assert_eq!(
        inline_bytes(rotated.trusted_ca),
        [CLIENT_CA, b"\n"].concat()
    );
}
