//! TLS listeners as Envoy resources: the downstream TLS context, its SDS secret, and the
//! codec that lets ALPN (or an HTTP/2 preface) pick the protocol.

use std::path::Path;

use tollgate_proto::envoy::config::core::v3::transport_socket::ConfigType;
use tollgate_proto::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use tollgate_proto::envoy::config::listener::v3::Listener;
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::CodecType;
use tollgate_proto::envoy::extensions::transport_sockets::tls::v3::{
    tls_parameters::TlsProtocol, DownstreamTlsContext,
};
use prost::Message;
use tollgate_routes::FileSource;

use super::super::tests::{decode, manager, secret_names, secret_pair};
use crate::snapshot::{type_url, Snapshot};
use crate::translate::translate;

const CERT: &[u8] = include_bytes!("../../../routes/tests/fixtures/gateway.pem");
const KEY: &[u8] = include_bytes!("../../../routes/tests/fixtures/gateway.key");

/// `gw.pem` and `gw.key` are the test pair; nothing else exists.
struct TestPair;

impl FileSource for TestPair {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        match path.to_str() {
            Some("gw.pem") => Ok(CERT.to_vec()),
            Some("gw.key") => Ok(KEY.to_vec()),
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
