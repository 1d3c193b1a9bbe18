//! TLS for conformance tests: a throwaway certificate authority made with the `openssl` CLI
//! (which `scripts/provision.sh` installs), and an HTTPS client on rustls and hyper that
//! reports what the handshake settled: the ALPN protocol, the TLS version and the certificate
//! the gateway presented.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tollgate_testkit::process::scratch_dir;

use crate::http::{read_response, RequestBuilder, Response};

/// The DNS name every issued certificate is for, and the SNI the client sends.
pub const SERVER_NAME: &str = "gateway.test";

/// A certificate authority in a temporary directory, deleted on drop.
#[derive(Debug)]
pub struct TestCa {
    dir: tempfile::TempDir,
    cert_pem: Vec<u8>,
    issued: AtomicU32,
}

/// A certificate signed by a [`TestCa`], and its key, both PEM.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl IssuedCertificate {
    /// The certificate as DER, as a TLS peer presents it.
    pub fn der(&self) -> Vec<u8> {
        CertificateDer::from_pem_slice(&self.cert_pem)
            .expect("an issued certificate is PEM")
            .to_vec()
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (scripts/provision.sh installs it)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

impl TestCa {
    pub fn new() -> Self {
        let dir = scratch_dir("tollgate-ca-");
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=Tollgate test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        );
        let cert_pem = read(dir.path().join("ca.pem"));
        TestCa {
            dir,
            cert_pem,
            issued: AtomicU32::new(0),
        }
    }

    /// The CA's own certificate, PEM: what a peer trusts to accept what it issued.
    pub fn cert_pem(&self) -> &[u8] {
        &self.cert_pem
    }

    /// A new key and a certificate for [`SERVER_NAME`] with subject `CN=common_name`; every
    /// certificate gets its own serial number.
    pub fn issue(&self, common_name: &str) -> IssuedCertificate {
        self.issue_for(common_name, SERVER_NAME)
    }

    /// Like [`Self::issue`], for the DNS name `dns_name`.
    pub fn issue_for(&self, common_name: &str, dns_name: &str) -> IssuedCertificate {
        // A server certificate as webpki insists on it: not a CA, for serverAuth, with the
        // name in subjectAltName (RFC 6125: the CN is not looked at).
        self.issue_with(
            common_name,
            &format!("basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:{dns_name}\n"),
        )
    }

    /// A new key and a client certificate (extendedKeyUsage clientAuth, which a TLS server
    /// checks) with subject `CN=common_name`.
    pub fn issue_client(&self, common_name: &str) -> IssuedCertificate {
        self.issue_with(
            common_name,
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )
    }

    fn issue_with(&self, common_name: &str, extensions: &str) -> IssuedCertificate {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let (key, csr, cert, ext) = (
            format!("leaf{n}.key"),
            format!("leaf{n}.csr"),
            format!("leaf{n}.pem"),
            format!("leaf{n}.ext"),
        );
        std::fs::write(self.dir.path().join(&ext), extensions).expect("write the extensions file");
        let subject = format!("/CN={common_name}");
        openssl(
            self.dir.path(),
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &subject,
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        );
        let serial = (1000 + n).to_string();
        openssl(
            self.dir.path(),
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial,
                "-days",
                "1",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
        );
        IssuedCertificate {
            cert_pem: read(self.dir.path().join(cert)),
            key_pem: read(self.dir.path().join(key)),
        }
    }

    /// A client trusting only this CA, offering ALPN `h2, http/1.1` and TLS 1.2 and 1.3.
    pub fn client(&self) -> TlsClient {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.cert_pem) {
            roots
                .add(cert.expect("the CA certificate is PEM"))
                .expect("the CA certificate is usable as a root");
        }
        TlsClient {
            roots,
            server_name: SERVER_NAME.to_string(),
            alpn: vec!["h2".into(), "http/1.1".into()],
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// An HTTPS client for `127.0.0.1` that sends [`SERVER_NAME`] (or the name it is given) as
/// SNI and checks the certificate against that name; a fresh connection per request.
#[derive(Debug, Clone)]
pub struct TlsClient {
    roots: RootCertStore,
    server_name: String,
    alpn: Vec<String>,
    versions: Vec<&'static SupportedProtocolVersion>,
}

/// A response over TLS and what the handshake settled.
#[derive(Debug, Clone)]
pub struct TlsResponse {
    pub response: Response,
    /// The ALPN protocol the server chose, if any.
    pub alpn: Option<String>,
    pub tls_version: Option<ProtocolVersion>,
    /// The leaf certificate the server presented, DER.
    pub peer_certificate: Vec<u8>,
}

impl TlsClient {
    /// Offers exactly these ALPN protocols, most preferred first.
    pub fn alpn(mut self, protocols: &[&str]) -> Self {
        self.alpn = protocols.iter().map(|p| (*p).to_owned()).collect();
        self
    }

    /// Sends `name` as SNI (and as the request's authority) instead of [`SERVER_NAME`].
    pub fn server_name(mut self, name: &str) -> Self {
        self.server_name = name.to_owned();
        self
    }

    /// The name this client sends as SNI.
    pub fn sni(&self) -> &str {
        &self.server_name
    }

    /// Offers TLS 1.2 only.
    pub fn tls12_only(mut self) -> Self {
        self.versions = vec![&rustls::version::TLS12];
        self
    }

    /// Offers TLS 1.3 only.
    pub fn tls13_only(mut self) -> Self {
        self.versions = vec![&rustls::version::TLS13];
        self
    }

    /// Connects to `127.0.0.1:port` and completes the TLS handshake.
    pub async fn handshake(&self, port: u16) -> anyhow::Result<TlsStream<TcpStream>> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&self.versions)
            .context("protocol versions")?
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("connect to 127.0.0.1:{port}"))?;
        let name = ServerName::try_from(self.server_name.clone()).context("server name")?;
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with 127.0.0.1:{port}"))
    }

    /// Sends `request` over a new TLS connection, in HTTP/2 if ALPN chose `h2`, else HTTP/1.1.
    pub async fn send(&self, request: &RequestBuilder) -> anyhow::Result<TlsResponse> {
        let port = request.port();
        let server_name = &self.server_name;
        let uri = format!("https://{server_name}:{port}{}", request.path_and_query());
        request
            .within_timeout(&uri, async {
                let stream = self.handshake(port).await?;
                let (_, session) = stream.get_ref();
                let alpn = session
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned());
                let tls_version = session.protocol_version();
                let peer_certificate = session
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|leaf| leaf.to_vec())
                    .context("the server presented no certificate")?;
                let io = TokioIo::new(stream);
                let response = if alpn.as_deref() == Some("h2") {
                    let (mut sender, connection) =
                        hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                    tokio::spawn(connection);
                    sender.send_request(request.build(&uri)?).await?
                } else {
                    let (mut sender, connection) =
                        hyper::client::conn::http1::handshake(io).await?;
                    tokio::spawn(connection);
                    let mut http1 = request.build(request.path_and_query())?;
                    http1.headers_mut().insert(
                        hyper::header::HOST,
                        hyper::header::HeaderValue::from_str(&format!("{server_name}:{port}"))?,
                    );
                    sender.send_request(http1).await?
                };
                Ok(TlsResponse {
                    response: read_response(response).await?,
                    alpn,
                    tls_version,
                    peer_certificate,
                })
            })
            .await
    }
}
