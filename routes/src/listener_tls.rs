//! TLS termination on a listener: the validated settings, and how files named in routes.yaml
//! are read.
//!
//! The settings ([`ListenerTls`]) are plain configuration and travel in every
//! [`crate::RoutesConfig`], with the client CA bundle and revocation lists they name once
//! read (public material, as for a service's `ca_file`). The certificate and key they name do
//! not (see [`crate::certificates`]). Reading files goes through a [`FileSource`] the caller
//! provides.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::certificates::CertificateFiles;

/// A listener's `tls` section: clients must speak TLS, and the listener offers HTTP/2 and
/// HTTP/1.1 by ALPN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTls {
    /// As written in routes.yaml; a relative path is relative to routes.yaml's directory.
    pub cert_file: PathBuf,
    /// As written in routes.yaml; a relative path is relative to routes.yaml's directory.
    pub key_file: PathBuf,
    pub min_version: TlsVersion,
    /// More certificates, each served instead of `cert_file` to clients whose SNI is one of
    /// its DNS names (Envoy picks among them; `cert_file` is the default for any other name
    /// and for clients that send none).
    pub sni_certificates: Vec<CertificateFiles>,
    /// Client certificate verification (mutual TLS); `None`: the listener asks clients for
    /// no certificate.
    pub client_certificates: Option<ClientCertificates>,
}

/// How a listener verifies the certificates clients present: routes.yaml's `client_ca_file`,
/// `client_certificate` and `crl_file`. A certificate that is presented must always verify;
/// `required` says whether a client may present none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertificates {
    /// PEM bundle of the CAs client certificate chains must lead to, as written in
    /// routes.yaml (relative to routes.yaml's directory).
    pub ca_file: PathBuf,
    /// The bundle `ca_file` named, read and checked when validation was given the files:
    /// Envoy gets these bytes, so what was checked is what it trusts. `None` when validation
    /// read no files, as the sidecars' does.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM certificate revocation lists, as written in routes.yaml; `None`: revocation is not
    /// checked.
    pub crl_file: Option<PathBuf>,
    /// The lists `crl_file` named, read and checked (see [`crate::revocation`]) when
    /// validation was given the files.
    pub crl_pem: Option<Vec<u8>>,
    /// `true` (`client_certificate: required`, the default): a handshake without a client
    /// certificate fails. `false` (`optional`): a client may present none, and routes decide
    /// what such a client may do.
    pub required: bool,
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
