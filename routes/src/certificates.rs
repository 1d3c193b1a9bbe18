//! Key material named in routes.yaml: certificate chains with their private keys, and the
//! checks that make a pair acceptable.
//!
//! Unlike the settings, which travel in every [`crate::RoutesConfig`], [`Certificates`] are
//! read only by [`crate::parse_with_files`], for the one service that hands them to Envoy, so
//! the other services never need read access to a private key. Checking PEM text is pure
//! (bytes in, verdict out).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where a certificate chain and its private key are, as written in routes.yaml (relative to
/// routes.yaml's directory): settings, which travel in [`crate::RoutesConfig`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A certificate chain and its private key, both PEM, as read from their files and checked to
/// be a matching pair: what a TLS listener serves, or what the gateway presents to a service
/// that asks for a client certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateAndKey {
    certificate_chain: Vec<u8>,
    private_key: Vec<u8>,
    /// The leaf's `notAfter`, seconds since the Unix epoch.
    not_after: Option<i64>,
}

impl CertificateAndKey {
    /// Checks that `certificate_chain` holds PEM certificates, leaf first, and `private_key`
    /// a PEM private key for the leaf; the error says what is wrong, never what the key is.
    pub fn from_pem(
        certificate_chain: Vec<u8>,
        private_key: Vec<u8>,
    ) -> Result<Self, CertificateError> {
        let certificates: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&certificate_chain)
                .collect::<Result<_, _>>()
                .map_err(|_| CertificateError::NotPemCertificate)?;
        if certificates.is_empty() {
            return Err(CertificateError::NotPemCertificate);
        }
        let key = PrivateKeyDer::from_pem_slice(&private_key)
            .map_err(|_| CertificateError::NotPemPrivateKey)?;
        let signing_key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
            .map_err(|_| CertificateError::UnsupportedKey)?;
        // Envoy's BoringSSL presents RSA and ECDSA certificates only, as server or client.
        if signing_key.algorithm() == rustls::SignatureAlgorithm::ED25519 {
            return Err(CertificateError::UnsupportedKey);
        }
        let not_after = certificates
            .first()
            .and_then(|leaf| crate::certificate_expiry::not_after_unix(leaf));
        let pair = rustls::sign::CertifiedKey::new(certificates, signing_key);
        match pair.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(CertificateError::KeyMismatch)
            }
            // Could not compare: the leaf is not a certificate webpki can parse.
            Err(_) => return Err(CertificateError::NotPemCertificate),
        }
        Ok(CertificateAndKey {
            certificate_chain,
            private_key,
            not_after,
        })
    }

    /// The PEM certificate chain, as read.
    pub fn certificate_chain(&self) -> &[u8] {
        &self.certificate_chain
    }

    /// The PEM private key, as read. Never log it.
    pub fn private_key(&self) -> &[u8] {
        &self.private_key
    }

    /// When the leaf certificate expires, in seconds since the Unix epoch.
    pub fn not_after_unix(&self) -> Option<i64> {
        self.not_after
    }
}

impl fmt::Debug for CertificateAndKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAndKey")
            .field(
                "certificate_chain",
                &format_args!("{} bytes", self.certificate_chain.len()),
            )
            .field("private_key", &format_args!("<redacted>"))
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// Why a certificate/key pair cannot be presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("is not a PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NotPemCertificate,
    #[error("is not a PEM private key (expected an unencrypted PKCS#8, RSA or EC key)")]
    NotPemPrivateKey,
    #[error("is not an RSA or ECDSA key (the only kinds Envoy presents)")]
    UnsupportedKey,
    #[error("does not match the certificate in cert_file")]
    KeyMismatch,
}

/// One certificate a TLS listener serves, and the file it came from (for alerts and logs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedCertificate {
    /// As written in routes.yaml.
    pub cert_file: PathBuf,
    pub certificate: CertificateAndKey,
}

/// The key material routes.yaml names: the certificates of every TLS listener, by listener
/// name, the client certificate of every service that presents one, by service name, and the
/// public keys of the JWT providers Envoy enforces itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Certificates {
    listeners: BTreeMap<String, Vec<ServedCertificate>>,
    upstream_clients: BTreeMap<String, CertificateAndKey>,
    /// The key set of every provider Envoy enforces (`enforce: envoy`), by provider name:
    /// the `jwks_file` as read, checked to be a JSON Web Key Set.
    provider_jwks: BTreeMap<String, String>,
}

impl Certificates {
    /// The certificates the TLS listener `listener` serves: its default (`cert_file`) first,
    /// then those chosen by SNI, in routes.yaml's order. Empty for a plaintext listener.
    pub fn listener(&self, listener: &str) -> &[ServedCertificate] {
        self.listeners.get(listener).map_or(&[], Vec::as_slice)
    }

    /// Every TLS listener's certificates, by listener name.
    pub fn listeners(&self) -> impl Iterator<Item = (&str, &[ServedCertificate])> {
        self.listeners
            .iter()
            .map(|(name, certs)| (name.as_str(), certs.as_slice()))
    }

    /// The client certificate the gateway presents to `service`'s endpoints.
    pub fn upstream_client(&self, service: &str) -> Option<&CertificateAndKey> {
        self.upstream_clients.get(service)
    }

    /// Every service's client certificate, by service name.
    pub fn upstream_clients(&self) -> impl Iterator<Item = (&str, &CertificateAndKey)> {
        self.upstream_clients
            .iter()
            .map(|(name, cert)| (name.as_str(), cert))
    }

    /// The JSON Web Key Set of `provider`, when Envoy enforces it.
    pub fn provider_jwks(&self, provider: &str) -> Option<&str> {
        self.provider_jwks.get(provider).map(String::as_str)
    }

    /// Gives `provider` the key set `jwks` (checked with [`key_set_text`]): one read from
    /// its `jwks_file`, or, for a `jwks_uri`, one the control plane fetched.
    pub fn insert_provider_jwks(&mut self, provider: String, jwks: String) {
        self.provider_jwks.insert(provider, jwks);
    }

    pub(crate) fn insert_listener(&mut self, listener: String, served: Vec<ServedCertificate>) {
        self.listeners.insert(listener, served);
    }

    pub(crate) fn insert_upstream_client(
        &mut self,
        service: String,
        certificate: CertificateAndKey,
    ) {
        self.upstream_clients.insert(service, certificate);
    }
}

/// `bytes` as text, when they are a JSON Web Key Set: a JSON object with a non-empty `keys`
/// array. Envoy is handed the text as it is and checks each key itself.
pub fn key_set_text(bytes: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    match value.get("keys").and_then(serde_json::Value::as_array) {
        Some(keys) if !keys.is_empty() => Ok(text.to_string()),
        Some(_) => Err("its keys array is empty".to_string()),
        None => Err("it has no keys array".to_string()),
    }
}
