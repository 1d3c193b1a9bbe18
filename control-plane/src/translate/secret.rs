//! SDS secrets: the certificate chains and private keys Envoy presents, as TLS listeners
//! serve them and as the gateway's client certificate to services that ask for one; and the
//! CA bundles and revocation lists TLS listeners verify client certificates with.
//!
//! Key material travels as separate resources rather than inline in listeners and clusters
//! so a rotation is an SDS push only: Envoy swaps the certificate for new handshakes and
//! keeps the listener or cluster, where changing either would drain its connections. Envoy
//! re-reads certificate *files* only for secrets delivered by SDS (`TlsCertificate` in
//! `api/envoy/extensions/transport_sockets/tls/v3/common.proto`); here the control plane
//! reads and checks the files itself and sends their content, so a bad rotation is refused
//! like a bad edit and Envoy never needs access to a key file. A client CA bundle and its
//! CRLs travel the same way for the same reason: a listener that carried them inline would be
//! replaced, and drained, at every rotation or revocation.

use std::path::Path;

use tollgate_proto::envoy::config::core::v3::{data_source, DataSource};
use tollgate_proto::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, SdsSecretConfig, Secret, TlsCertificate,
};
use tollgate_routes::{CertificateAndKey, ClientCertificates};

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

/// The SDS name of the validation context a listener checks client certificates with. A
/// prefix of its own rather than a suffix: `LISTENER/client_ca` would be
/// `upstream_client/client_ca` for a listener named `upstream_client`, which is also the
/// name of the client certificate of a service named `client_ca`.
pub(super) fn client_ca_secret_name(listener: &str) -> String {
    format!("client_ca/{listener}")
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

/// The SDS secret `name`: a validation context trusting `client`'s CA bundle and, when it has
/// one, refusing what its CRLs revoke, both inline as the control plane read and checked them.
///
/// Revocation is checked along the whole chain, Envoy's default (`only_verify_leaf_cert_crl`
/// stays false): a revoked intermediate is refused too, and validation made sure every CA in
/// the bundle has a CRL (see `tollgate_routes::revocation`).
pub(super) fn validation_context_secret(name: String, client: &ClientCertificates) -> Secret {
    Secret {
        name,
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(read_or_named(client.ca_pem.as_deref(), &client.ca_file)),
                crl: client
                    .crl_file
                    .as_deref()
                    .map(|file| read_or_named(client.crl_pem.as_deref(), file)),
                ..Default::default()
            },
        )),
    }
}

/// The bytes the control plane read, inline; only a configuration validated without its
/// files (never the control plane's own) leaves Envoy the path to read itself.
fn read_or_named(read: Option<&[u8]>, path: &Path) -> DataSource {
    let specifier = match read {
        Some(bytes) => data_source::Specifier::InlineBytes(bytes.to_vec()),
        None => data_source::Specifier::Filename(path.to_string_lossy().into_owned()),
    };
    DataSource {
        specifier: Some(specifier),
        ..Default::default()
    }
}
