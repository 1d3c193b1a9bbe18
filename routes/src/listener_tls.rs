//! TLS termination on a listener: the validated settings, the certificate and key it serves,
//! and the checks that make a certificate file acceptable.
//!
//! The settings ([`ListenerTls`]) are plain configuration and travel in every
//! [`crate::RoutesConfig`]. The key material ([`ListenerCertificates`]) does not: it is read
//! only by [`crate::parse_with_files`], for the one service that hands it to Envoy, so the
//! other services never need read access to a private key. Checking PEM text is pure (bytes
//! in, verdict out); reading files goes through a [`FileSource`] the caller provides.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A listener's `tls` section: clients must speak TLS, and the listener offers HTTP/2 and
/// HTTP/1.1 by ALPN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTls {
    /// As written in routes.yaml; a relative path is relative to routes.yaml's directory.
    pub cert_file: PathBuf,
    /// As written in routes.yaml; a relative path is relative to routes.yaml's directory.
    pub key_file: PathBuf,
    pub min_version: TlsVersion,
}

/// The lowest TLS version a listener accepts. Nothing below 1.2: RFC 8996 deprecates 1.0 and
/// 1.1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3: every maintained client, as Envoy's own default.
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

impl TlsVersion {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "1.2" => Some(TlsVersion::Tls12),
            "1.3" => Some(TlsVersion::Tls13),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        }
    }
}

/// Reads the files routes.yaml names, given the path as written there. The control plane
/// reads the disk relative to routes.yaml's directory (and notes what it read, to watch it);
/// tests read a map.
pub trait FileSource {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
}

/// A [`FileSource`] that reads each path once, however often validation asks for it: one
/// parse may validate twice (quickly, then with locations), and both must see the same
/// bytes, even when a file is replaced in between.
pub(crate) struct ReadOnce<'a> {
    files: &'a dyn FileSource,
    read: std::cell::RefCell<BTreeMap<PathBuf, FileRead>>,
}

/// One file's bytes, or why it could not be read (`io::Error` is not `Clone`).
type FileRead = Result<Vec<u8>, (std::io::ErrorKind, String)>;

impl<'a> ReadOnce<'a> {
    pub(crate) fn new(files: &'a dyn FileSource) -> Self {
        ReadOnce {
            files,
            read: Default::default(),
        }
    }
}

impl FileSource for ReadOnce<'_> {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let mut read = self.read.borrow_mut();
        let outcome = read
            .entry(path.to_path_buf())
            .or_insert_with(|| self.files.read(path).map_err(|e| (e.kind(), e.to_string())));
        outcome
            .clone()
            .map_err(|(kind, message)| std::io::Error::new(kind, message))
    }
}

/// The certificate chain and private key one TLS listener serves, both PEM, as read from
/// its files and checked to be a matching pair.
#[derive(Clone, PartialEq, Eq)]
pub struct ServingCertificate {
    certificate_chain: Vec<u8>,
    private_key: Vec<u8>,
    /// The leaf's `notAfter`, seconds since the Unix epoch.
    not_after: Option<i64>,
}

impl ServingCertificate {
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
        // BoringSSL in Envoy serves RSA and ECDSA server certificates only.
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
        Ok(ServingCertificate {
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

    /// When the served (leaf) certificate expires, in seconds since the Unix epoch.
    pub fn not_after_unix(&self) -> Option<i64> {
        self.not_after
    }
}

impl fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCertificate")
            .field(
                "certificate_chain",
                &format_args!("{} bytes", self.certificate_chain.len()),
            )
            .field("private_key", &format_args!("<redacted>"))
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// Why a certificate/key pair cannot be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("is not a PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NotPemCertificate,
    #[error("is not a PEM private key (expected an unencrypted PKCS#8, RSA or EC key)")]
    NotPemPrivateKey,
    #[error("is not an RSA or ECDSA key (the only kinds Envoy serves)")]
    UnsupportedKey,
    #[error("does not match the certificate in cert_file")]
    KeyMismatch,
}

/// The certificate of every TLS listener, by listener name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenerCertificates(BTreeMap<String, ServingCertificate>);

impl ListenerCertificates {
    pub fn get(&self, listener: &str) -> Option<&ServingCertificate> {
        self.0.get(listener)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &ServingCertificate)> {
        self.0.iter().map(|(name, cert)| (name.as_str(), cert))
    }

    pub(crate) fn insert(&mut self, listener: String, certificate: ServingCertificate) {
        self.0.insert(listener, certificate);
    }
}
