//! The flags that put a sidecar's gRPC port on TLS, the same in both sidecars.

use std::path::PathBuf;

use tollgate_runtime::server_tls::ServerTlsFiles;

/// `--tls-cert`, `--tls-key` and `--client-ca`, for flattening into a sidecar's flags.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsFlags {
    /// Serve gRPC over TLS with this certificate chain (PEM, leaf first); re-read when it
    /// changes. Envoy's side is the sidecar's `tls` block in routes.yaml.
    #[arg(long, env = "TOLLGATE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "TOLLGATE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Also require every client (Envoy) to present a certificate issued by a CA in this PEM
    /// file: the `cert_file` of the sidecar's `tls` block.
    #[arg(long, env = "TOLLGATE_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
}

impl TlsFlags {
    /// The files to serve TLS with; `None`: plaintext.
    pub fn files(&self) -> Option<ServerTlsFiles> {
        Some(ServerTlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.client_ca.clone(),
        })
    }
}
