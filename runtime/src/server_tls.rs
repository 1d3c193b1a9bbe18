//! TLS for the gRPC servers Tollgate runs (the control plane's xDS, the sidecars' ports): a
//! certificate and key, and optionally a CA that every client must present a certificate
//! from, read from PEM files and re-read when they change.
//!
//! A certificate manager rotates files while the server runs; each new connection is
//! accepted with the newest valid configuration, and connections already open keep the one
//! they were accepted with. A version of the files that does not make a configuration (a key
//! that does not match the certificate, a half-written file) is refused and the last good
//! one keeps serving, as routes.yaml reloads do ([`crate::reload`]).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::file_watch::WatchError;
use crate::reload::{self, Config, Read, Reloader};

/// ALPN for gRPC: HTTP/2 only (gRPC over HTTP/2, "PROTOCOL-HTTP2.md"). Envoy offers `h2` on
/// a TLS gRPC cluster whose `alpn_protocols` say so.
pub const ALPN_H2: &[u8] = b"h2";

/// Where a server's TLS material lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The server's certificate chain, leaf first, PEM.
    pub cert: PathBuf,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate issued by one of the CAs in this PEM
    /// file; otherwise no client certificate is asked for.
    pub client_ca: Option<PathBuf>,
}

/// The contents of [`ServerTlsFiles`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTlsPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("no PEM certificate in {0}")]
    NoCertificate(String),
    #[error("no PEM private key in {0}")]
    NoKey(String),
    #[error("no usable CA certificate in {0}")]
    NoClientCa(String),
    #[error("the certificate in {cert} and the key in {key} do not make a TLS server: {source}")]
    CertificateAndKey {
        cert: String,
        key: String,
        source: rustls::Error,
    },
    #[error("cannot verify clients with the CAs in {path}: {source}")]
    ClientVerifier {
        path: String,
        source: rustls::server::VerifierBuilderError,
    },
}

impl ServerTlsFiles {
    /// Reads the files.
    pub fn read(&self) -> Result<ServerTlsPem, ServerTlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| ServerTlsError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        Ok(ServerTlsPem {
            cert: read(&self.cert)?,
            key: read(&self.key)?,
            client_ca: self.client_ca.as_deref().map(read).transpose()?,
        })
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(self.cert.as_path()), Some(self.key.as_path())]
            .into_iter()
            .chain([self.client_ca.as_deref()])
            .flatten()
    }
}

/// Builds a server configuration from PEM: TLS 1.3 and 1.2 on the aws-lc-rs provider, the
/// given ALPN protocols, and client certificates required from `pem.client_ca` when set.
/// `files` only names the files in errors.
pub fn server_config(
    pem: &ServerTlsPem,
    files: &ServerTlsFiles,
    alpn: &[&[u8]],
) -> Result<ServerConfig, ServerTlsError> {
    let name = |path: &Path| path.display().to_string();
    let chain = CertificateDer::pem_slice_iter(&pem.cert)
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|chain| !chain.is_empty())
        .ok_or_else(|| ServerTlsError::NoCertificate(name(&files.cert)))?;
    let key = PrivateKeyDer::from_pem_slice(&pem.key)
        .map_err(|_| ServerTlsError::NoKey(name(&files.key)))?;
    // Explicit, not the process default: feature unification could make another provider
    // the default and fail at run time (STYLE.md, "Protocol facts").
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| ServerTlsError::CertificateAndKey {
            cert: name(&files.cert),
            key: name(&files.key),
            source,
        })?;
    let builder = match (&pem.client_ca, &files.client_ca) {
        (Some(ca_pem), Some(ca_path)) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca_pem).flatten() {
                // A certificate webpki cannot use as a trust anchor is skipped; none at all
                // is an error below.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(ServerTlsError::NoClientCa(name(ca_path)));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| ServerTlsError::ClientVerifier {
                    path: name(ca_path),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|source| {
        ServerTlsError::CertificateAndKey {
            cert: name(&files.cert),
            key: name(&files.key),
            source,
        }
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A TLS server configuration read from files; [`watch`] keeps it current.
#[derive(Debug)]
pub struct ServerTls {
    files: ServerTlsFiles,
    alpn: Vec<&'static [u8]>,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Reads the files and builds the configuration; an error here is a bad configuration.
    pub fn load(files: ServerTlsFiles, alpn: &[&'static [u8]]) -> Result<Self, ServerTlsError> {
        let config = server_config(&files.read()?, &files, alpn)?;
        Ok(ServerTls {
            files,
            alpn: alpn.to_vec(),
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// An acceptor with the newest configuration, for one new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current())
    }

    /// The newest configuration.
    pub fn current(&self) -> Arc<ServerConfig> {
        // A poisoned lock only means a panic elsewhere while swapping an Arc; read on.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificate(&self) -> bool {
        self.files.client_ca.is_some()
    }
}

impl Config for ServerTls {
    type Loaded = ServerConfig;
    type Error = ServerTlsError;
    const NAME: &'static str = "TLS certificate";

    async fn read(&self, _path: &Path) -> Read<Self> {
        let outcome = self
            .files
            .read()
            .and_then(|pem| server_config(&pem, &self.files, &self.alpn));
        Read {
            outcome,
            files: self.files.paths().map(Path::to_path_buf).collect(),
        }
    }

    fn serve(&self, loaded: ServerConfig) -> Option<String> {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(loaded);
        Some("new connections use the new certificate files".to_owned())
    }
}

/// Starts watching `tls`'s files: the future returned re-reads them on every change until
/// `shutdown`, and the `ServerTls` handed back is the one to accept connections with.
pub async fn watch(
    tls: ServerTls,
    shutdown: impl Future<Output = ()>,
) -> Result<(Arc<Reloader<ServerTls>>, impl Future<Output = ()>), WatchError> {
    let reloader = Arc::new(Reloader::new(tls.files.cert.clone(), tls));
    // The first attempt records what the files hold and which files to watch; were they
    // already changed since `load`, the newer version is served from here.
    if let Err(error) = reloader.reload().await {
        tracing::warn!(%error, "TLS certificate files changed since start and are unusable; still serving the ones read at start");
    }
    let reloads = reload::watch(reloader.clone(), shutdown)?;
    Ok((reloader, reloads))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> ServerTlsFiles {
        ServerTlsFiles {
            cert: "cert.pem".into(),
            key: "key.pem".into(),
            client_ca: None,
        }
    }

    // Test-only material from the routes crate's fixtures (see their README).
    const CERT: &[u8] = include_bytes!("../../routes/tests/fixtures/gateway.pem");
    const KEY: &[u8] = include_bytes!("../../routes/tests/fixtures/gateway.key");
    const OTHER_KEY: &[u8] = include_bytes!("../../routes/tests/fixtures/other.key");
    const CLIENT_CA: &[u8] = include_bytes!("../../routes/tests/fixtures/client-ca.pem");

    fn pem(key: &[u8], client_ca: Option<&[u8]>) -> ServerTlsPem {
        ServerTlsPem {
            cert: CERT.to_vec(),
            key: key.to_vec(),
            client_ca: client_ca.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn a_certificate_and_its_key_make_an_h2_server() {
        let config = server_config(&pem(KEY, None), &files(), &[ALPN_H2]).expect("a server");
        assert_eq!(config.alpn_protocols, [b"h2".to_vec()]);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let error = server_config(&pem(OTHER_KEY, None), &files(), &[ALPN_H2])
            .expect_err("the key does not match");
        assert!(
            error.to_string().starts_with(
                "the certificate in cert.pem and the key in key.pem do not make a TLS server"
            ),
            "{error}"
        );
    }

    #[test]
    fn a_client_ca_makes_a_server_that_verifies_clients() {
        let files = ServerTlsFiles {
            client_ca: Some("ca.pem".into()),
            ..files()
        };
        server_config(&pem(KEY, Some(CLIENT_CA)), &files, &[ALPN_H2]).expect("a server");
        let error =
            server_config(&pem(KEY, Some(b"not pem")), &files, &[ALPN_H2]).expect_err("no CA");
        assert_eq!(error.to_string(), "no usable CA certificate in ca.pem");
    }

    #[test]
    fn files_without_pem_are_refused_with_their_names() {
        let pem = ServerTlsPem {
            cert: b"not pem".to_vec(),
            key: Vec::new(),
            client_ca: None,
        };
        let error = server_config(&pem, &files(), &[ALPN_H2]).expect_err("refused");
        assert_eq!(error.to_string(), "no PEM certificate in cert.pem");
    }

    #[test]
    fn missing_files_are_reported_by_path() {
        let error = files().read().expect_err("no such files here");
        assert!(error.to_string().starts_with("cannot read cert.pem: "));
    }
}
