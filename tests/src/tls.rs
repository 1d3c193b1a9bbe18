//! TLS for conformance tests: throwaway certificate authorities made with the `openssl` CLI
//! (which `scripts/provision.sh` installs), one for servers ([`TestCa`]) and one for clients
//! that can also revoke ([`ClientCa`]), and an HTTPS client on rustls and hyper that presents
//! a client certificate when given one and reports what the handshake settled: the ALPN
//! protocol, the TLS version and the certificate the gateway presented.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use anyhow::Context as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    AlertDescription, ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion,
};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tollgate_testkit::process::scratch_dir;

use crate::http::{read_response, RequestBuilder, Response, CLIENT_TIMEOUT};

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

/// A self-signed P-256 CA of `/CN=common_name`, valid for two days, in `ca.pem` and `ca.key`,
/// with `extensions` (`-addext` arguments) beside OpenSSL's defaults.
fn self_signed_ca(dir: &Path, common_name: &str, extensions: &[&str]) {
    let subject = format!("/CN={common_name}");
    let mut args = vec![
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
        &subject,
    ];
    args.extend_from_slice(extensions);
    args.extend_from_slice(&["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &args);
}

/// A new P-256 key in `key` and a request for a certificate of `/CN=common_name` in `csr`.
fn key_and_request(dir: &Path, common_name: &str, key: &str, csr: &str) {
    let subject = format!("/CN={common_name}");
    openssl(
        dir,
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
            key,
            "-out",
            csr,
        ],
    );
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
        self_signed_ca(dir.path(), "Tollgate test CA", &[]);
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
        key_and_request(self.dir.path(), common_name, &key, &csr);
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
            client_certificate: None,
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A certificate authority for client certificates in a temporary directory (deleted on
/// drop), kept with `openssl ca` so it can revoke what it issued and publish a CRL.
///
/// ```no_run
/// # let ca = tollgate_conformance::ClientCa::new("Partners CA");
/// let alice = ca
///     .certificate("alice")
///     .dns_san("alice.partners.test")
///     .uri_san("spiffe://partners.test/alice")
///     .issue();
/// let lapsed = ca.certificate("lapsed").expired().issue();
/// ca.revoke(&lapsed);
/// let crl = ca.crl_pem();
/// ```
#[derive(Debug)]
pub struct ClientCa {
    dir: tempfile::TempDir,
    /// Certificates issued so far. `openssl ca` keeps its database in files, so it runs
    /// under this lock, one command at a time.
    issued: Mutex<u32>,
}

/// A client certificate issued by a [`ClientCa`]: PEM files that stay in the CA's directory
/// while it lives, and their content.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// A client certificate about to be issued; see [`ClientCa::certificate`].
#[derive(Debug)]
#[must_use = "call .issue()"]
pub struct ClientCertificateRequest<'ca> {
    ca: &'ca ClientCa,
    common_name: String,
    subject_alt_names: Vec<String>,
    expired: bool,
}

/// The `openssl ca` configuration of a [`ClientCa`]: its files, and any subject with a CN.
const CLIENT_CA_CONFIG: &str = "[ca]
default_ca = client_ca
[client_ca]
database = index.txt
new_certs_dir = issued
certificate = ca.pem
private_key = ca.key
serial = serial
crlnumber = crlnumber
default_md = sha256
policy = any_subject
unique_subject = no
[any_subject]
commonName = supplied
";

impl ClientCa {
    /// A new CA with subject `CN=common_name`, valid for two days, that may sign
    /// certificates and CRLs.
    pub fn new(common_name: &str) -> Self {
        let dir = scratch_dir("tollgate-client-ca-");
        let path = dir.path();
        std::fs::write(path.join("ca.cnf"), CLIENT_CA_CONFIG).expect("write ca.cnf");
        std::fs::write(path.join("index.txt"), "").expect("write index.txt");
        std::fs::write(path.join("serial"), "1000\n").expect("write serial");
        // A CRL number makes a version 2 CRL, as CAs publish them.
        std::fs::write(path.join("crlnumber"), "1000\n").expect("write crlnumber");
        std::fs::create_dir(path.join("issued")).expect("create issued/");
        // RFC 5280 §4.2.1.9 and §4.2.1.3: a CA, for certificates and CRLs. BoringSSL
        // refuses a CRL from a CA whose key usage leaves out cRLSign.
        self_signed_ca(
            path,
            common_name,
            &[
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        ClientCa {
            dir,
            issued: Mutex::new(0),
        }
    }

    /// The CA's own certificate, a PEM file: what a `client_ca_file` names to trust it.
    pub fn cert_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The CA's own certificate, PEM.
    pub fn cert_pem(&self) -> Vec<u8> {
        read(self.cert_file())
    }

    /// Starts a client certificate with subject `CN=common_name`, no subject alternative
    /// names, valid from now for a day (each has its own key and serial number).
    pub fn certificate(&self, common_name: &str) -> ClientCertificateRequest<'_> {
        ClientCertificateRequest {
            ca: self,
            common_name: common_name.to_owned(),
            subject_alt_names: Vec::new(),
            expired: false,
        }
    }

    /// Marks `certificate` revoked: every [`Self::crl_pem`] from now on lists it.
    pub fn revoke(&self, certificate: &ClientCertificate) {
        let _database = self.issued.lock().unwrap_or_else(PoisonError::into_inner);
        let cert = certificate.cert_file.to_string_lossy();
        openssl(
            self.dir.path(),
            &["ca", "-config", "ca.cnf", "-batch", "-revoke", &cert],
        );
    }

    /// A CRL signed now, valid for a day, listing every certificate revoked so far, PEM.
    pub fn crl_pem(&self) -> Vec<u8> {
        let _database = self.issued.lock().unwrap_or_else(PoisonError::into_inner);
        openssl(
            self.dir.path(),
            &[
                "ca", "-config", "ca.cnf", "-batch", "-gencrl", "-crldays", "1", "-out", "crl.pem",
            ],
        );
        read(self.dir.path().join("crl.pem"))
    }
}

impl ClientCertificateRequest<'_> {
    /// Adds the DNS name `name` to the subject alternative names.
    pub fn dns_san(mut self, name: &str) -> Self {
        self.subject_alt_names.push(format!("DNS:{name}"));
        self
    }

    /// Adds the URI `uri` (a SPIFFE ID, say) to the subject alternative names.
    pub fn uri_san(mut self, uri: &str) -> Self {
        self.subject_alt_names.push(format!("URI:{uri}"));
        self
    }

    /// Makes the certificate one that expired long ago (valid for a day in January 2020).
    pub fn expired(mut self) -> Self {
        self.expired = true;
        self
    }

    /// Signs the certificate: a new key, and a certificate for client authentication.
    pub fn issue(self) -> ClientCertificate {
        let dir = self.ca.dir.path();
        let mut issued = self
            .ca
            .issued
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = *issued;
        *issued += 1;
        let (key, csr, cert, ext) = (
            format!("client{n}.key"),
            format!("client{n}.csr"),
            format!("client{n}.pem"),
            format!("client{n}.ext"),
        );
        // What a TLS server checks of a client certificate: not a CA, for clientAuth.
        let mut extensions = String::from(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        );
        if !self.subject_alt_names.is_empty() {
            extensions.push_str(&format!(
                "subjectAltName={}\n",
                self.subject_alt_names.join(",")
            ));
        }
        std::fs::write(dir.join(&ext), extensions).expect("write the extensions file");
        key_and_request(dir, &self.common_name, &key, &csr);
        // `openssl ca` rather than `openssl x509 -req`: it records the certificate so it can
        // be revoked, and OpenSSL 3.0's x509 has no way to set dates in the past.
        let validity: &[&str] = if self.expired {
            &[
                "-startdate",
                "20200101000000Z",
                "-enddate",
                "20200102000000Z",
            ]
        } else {
            &["-days", "1"]
        };
        let mut args = vec![
            "ca", "-config", "ca.cnf", "-batch", "-notext", "-in", &csr, "-out", &cert, "-extfile",
            &ext,
        ];
        args.extend_from_slice(validity);
        openssl(dir, &args);
        ClientCertificate {
            cert_file: dir.join(&cert),
            key_file: dir.join(&key),
            cert_pem: read(dir.join(&cert)),
            key_pem: read(dir.join(&key)),
        }
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
    /// The certificate presented when the server asks for one: its chain and key, PEM.
    client_certificate: Option<(Vec<u8>, Vec<u8>)>,
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

    /// Presents `certificate` when the server asks for a client certificate (whatever CAs
    /// the server says it trusts: a test decides what is presented, the gateway what passes).
    pub fn client_certificate(mut self, certificate: &ClientCertificate) -> Self {
        self.client_certificate = Some((certificate.cert_pem.clone(), certificate.key_pem.clone()));
        self
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
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&self.versions)
            .context("protocol versions")?
            .with_root_certificates(self.roots.clone());
        let mut config = match &self.client_certificate {
            None => builder.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .context("the client certificate is PEM")?;
                let key =
                    PrivateKeyDer::from_pem_slice(key_pem).context("the client key is PEM")?;
                builder
                    .with_client_auth_cert(chain, key)
                    .context("the client certificate and key")?
            }
        };
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

    /// A gRPC channel to `127.0.0.1:port` over this client's TLS (ALPN should offer `h2`),
    /// connecting at once; each reconnection handshakes again.
    pub async fn grpc_channel(&self, port: u16) -> anyhow::Result<tonic::transport::Channel> {
        let connector = GrpcOverTls {
            client: self.clone(),
            port,
        };
        tonic::transport::Endpoint::from_static("http://grpc.test")
            .connect_with_connector(connector)
            .await
            .with_context(|| format!("gRPC over TLS to 127.0.0.1:{port}"))
    }

    /// The fatal alert the server at `127.0.0.1:port` refuses this client's handshake with;
    /// an error if it sends none (it accepted the client, or the connection failed
    /// otherwise) within the client timeout.
    ///
    /// Nothing is sent after the handshake. In TLS 1.3 the server judges the client's
    /// certificate only after the client has finished its side of the handshake, so the
    /// verdict arrives as the first record read; a request written meanwhile could have the
    /// server reset the connection, and the alert, which says why, be lost.
    pub async fn refusal_alert(&self, port: u16) -> anyhow::Result<AlertDescription> {
        let verdict = async {
            let mut stream = match self.handshake(port).await {
                Ok(stream) => stream,
                Err(refused) => return alert_in(&refused),
            };
            let mut first = [0u8; 1];
            match stream.read(&mut first).await {
                Ok(0) => anyhow::bail!("the server closed the connection without an alert"),
                Ok(_) => anyhow::bail!("the server accepted the handshake and sent data"),
                Err(error) => alert_in(&anyhow::Error::from(error)),
            }
        };
        tokio::time::timeout(CLIENT_TIMEOUT, verdict)
            .await
            .with_context(|| {
                format!("no alert from 127.0.0.1:{port} within {CLIENT_TIMEOUT:?}: the server accepted the handshake")
            })?
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

/// The alert the server sent, when that is what `error` comes down to.
fn alert_in(error: &anyhow::Error) -> anyhow::Result<AlertDescription> {
    // tokio-rustls reports rustls' errors as `io::Error`s wrapping them.
    let rustls_error = error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .find_map(|io| io.get_ref()?.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::AlertReceived(alert)) => Ok(*alert),
        _ => Err(anyhow::anyhow!("no alert from the server: {error:#}")),
    }
}

/// Tonic's connector for [`TlsClient::grpc_channel`]: every connection is a
/// [`TlsClient::handshake`].
#[derive(Clone)]
struct GrpcOverTls {
    client: TlsClient,
    port: u16,
}

impl tonic::codegen::Service<hyper::Uri> for GrpcOverTls {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = anyhow::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Self::Future {
        let (client, port) = (self.client.clone(), self.port);
        Box::pin(async move { Ok(TokioIo::new(client.handshake(port).await?)) })
    }
}
