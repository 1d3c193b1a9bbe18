//! TLS termination on a listener: a `DownstreamTlsContext` whose certificate, and the CAs it
//! verifies client certificates against, come over SDS (see [`super::secret`] for why).

use tollgate_proto::envoy::config::core::v3::TransportSocket;
use tollgate_proto::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, tls_parameters::TlsProtocol, CommonTlsContext,
    DownstreamTlsContext, TlsParameters,
};
use tollgate_proto::google::protobuf::BoolValue;
use tollgate_routes::{ListenerTls, TlsVersion};

use super::secret::{client_ca_secret_name, listener_secret_name, sds_reference};
use super::tls_transport_socket;

/// Offered by ALPN, most preferred first (RFC 7301 §3.2): HTTP/2 to every client that can,
/// HTTP/1.1 to the rest.
const ALPN: [&str; 2] = ["h2", "http/1.1"];

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
            // Envoy presents the certificate whose DNS names match the client's SNI, and the
            // first (the default) to a client whose SNI matches none or that sends none.
            tls_certificate_sds_secret_configs: (0..=tls.sni_certificates.len())
                .map(|index| sds_reference(listener_secret_name(listener, index)))
                .collect(),
            alpn_protocols: ALPN.iter().map(|p| (*p).to_string()).collect(),
            // With a validation context Envoy asks every client for a certificate and refuses
            // the handshake when a presented one does not verify; whether a client may present
            // none is `require_client_certificate`'s to say.
            validation_context_type: tls.client_certificates.as_ref().map(|_| {
                ValidationContextType::ValidationContextSdsSecretConfig(sds_reference(
                    client_ca_secret_name(listener),
                ))
            }),
            ..Default::default()
        }),
        require_client_certificate: tls.client_certificates.as_ref().map(|client| BoolValue {
            value: client.required,
        }),
        ..Default::default()
    };
    tls_transport_socket(&context)
}

#[cfg(test)]
#[path = "listener_tls_tests.rs"]
mod listener_tls_tests;
