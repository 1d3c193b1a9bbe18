//! SDS secrets: the certificate chains and private keys Envoy presents, as TLS listeners
//! serve them and as the gateway's client certificate to services that ask for one.
//!
//! Key material travels as separate resources rather than inline in listeners and clusters
//! so a rotation is an SDS push only: Envoy swaps the certificate for new handshakes and
//! keeps the listener or cluster, where changing either would drain its connections. Envoy
//! re-reads certificate *files* only for secrets delivered by SDS (`TlsCertificate` in
//! `api/envoy/extensions/transport_sockets/tls/v3/common.proto`); here the control plane
//! reads and checks the files itself and sends their content, so a bad rotation is refused
//! like a bad edit and Envoy never needs access to a key file.

use tollgate_proto::envoy::config::core::v3::{data_source, DataSource};
use tollgate_proto::envoy::extensions::transport_sockets::tls::v3::{
    secret, SdsSecretConfig, Secret, TlsCertificate,
};
use tollgate_routes::CertificateAndKey;

use super::ads_config_source;

/// The SDS name of a listener's certificate number `index`: its default certificate (0) under
/// the listener's own name, its SNI certificates under `LISTENER/sni/N`, N from 1.
pub(super) fn listener_secret_name(listener: &str, index: usize) -> String {
    match index {
        0 => listener.to_string(),
        n => format!("{listener}/sni/{n}"),
    }
}

/// The SDS name of the client certificate presented to a service. Neither listener nor
/// service names may contain '/', so it cannot collide with a listener's.
pub(super) fn upstream_client_secret_name(service: &str) -> String {
    format!("upstream_client/{service}")
}

/// Where a TLS context gets the secret `name`: over the ADS stream.
pub(super) fn sds_reference(name: String) -> SdsSecretConfig {
    SdsSecretConfig {
        name,
        sds_config: Some(ads_config_source()),
    }
}

/// The SDS secret `name` with `certificate`'s chain and key, inline.
pub(super) fn certificate_secret(name: String, certificate: &CertificateAndKey) -> Secret {
    let inline = |bytes: &[u8]| DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    };
    Secret {
        name,
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(certificate.certificate_chain())),
            // Marked `sensitive` in Envoy's proto, so /config_dump shows it redacted.
            private_key: Some(inline(certificate.private_key())),
            ..Default::default()
        })),
    }
}
