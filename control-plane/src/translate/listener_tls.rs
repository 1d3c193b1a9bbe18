//! TLS termination on a listener: a `DownstreamTlsContext` whose certificate comes over SDS,
//! and the SDS `Secret` that carries it.
//!
//! The certificate travels as a separate resource rather than inline in the listener so a
//! rotation is an SDS push only: Envoy swaps the certificate for new handshakes and keeps the
//! listener and its open connections, where changing the listener would drain them. Envoy
//! re-reads certificate *files* only for secrets delivered by SDS (`TlsCertificate` in
//! `api/envoy/extensions/transport_sockets/tls/v3/common.proto`); here the control plane
//! reads and checks the files itself and sends their content, so a bad rotation is refused
//! like a bad edit and Envoy never needs access to the key file.

use envoy_types::pb::envoy::config::core::v3::{
    data_source, transport_socket, DataSource, TransportSocket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, tls_parameters::TlsProtocol, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    Secret, TlsCertificate, TlsParameters,
};
use tollgate_routes::listener_tls::ServingCertificate;
use tollgate_routes::{ListenerTls, TlsVersion};

use super::{ads_config_source, any};

/// Offered by ALPN, most preferred first (RFC 7301 §3.2): HTTP/2 to every client that can,
/// HTTP/1.1 to the rest.
const ALPN: [&str; 2] = ["h2", "http/1.1"];

/// The SDS name of a listener's certificate: its own name (one certificate per listener).
pub(super) fn secret_name(listener: &str) -> String {
    listener.to_string()
}

/// The transport socket of a TLS listener's filter chain.
///
/// Cipher suites, curves and the maximum version are Envoy's defaults (ECDHE with AES-GCM or
/// ChaCha20-Poly1305 for TLS 1.2, every TLS 1.3 suite, up to TLS 1.3; see `TlsParameters` in
/// the same proto file), which follow BoringSSL's current recommendations.
pub(super) fn downstream_tls(listener: &str, tls: &ListenerTls) -> TransportSocket {
    let minimum = match tls.min_version {
        TlsVersion::Tls12 => TlsProtocol::TlSv12,
        TlsVersion::Tls13 => TlsProtocol::TlSv13,
    };
    let context = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: minimum as i32,
                ..Default::default()
            }),
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                name: secret_name(listener),
                sds_config: Some(ads_config_source()),
            }],
            alpn_protocols: ALPN.iter().map(|p| (*p).to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&context))),
    }
}

/// The SDS secret with a listener's certificate chain and key, inline.
pub(super) fn secret(listener: &str, certificate: &ServingCertificate) -> Secret {
    let inline = |bytes: &[u8]| DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    };
    Secret {
        name: secret_name(listener),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(certificate.certificate_chain())),
            // Marked `sensitive` in Envoy's proto, so /config_dump shows it redacted.
            private_key: Some(inline(certificate.private_key())),
            ..Default::default()
        })),
    }
}

#[cfg(test)]
#[path = "listener_tls_tests.rs"]
mod listener_tls_tests;
