//! Per-service traffic policies: how the gateway picks, checks, limits and talks to the
//! endpoints of one service (active health checks, load balancing, circuit breaking,
//! outlier ejection and TLS to the upstream).
//!
//! Every value here is already validated and has its default applied, so translation can
//! map it onto Envoy's cluster settings one to one.

use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::certificates::CertificateFiles;

/// Everything a routes.yaml service says about traffic to its endpoints besides where they
/// are. [`ServicePolicy::default`] is what a service with none of the fields gets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServicePolicy {
    /// How requests reach the endpoints.
    pub protocol: Protocol,
    /// `None`: no active checks; an endpoint is used until passive checks (if any) eject it.
    pub health_check: Option<HealthCheck>,
    pub load_balancing: LoadBalancing,
    /// `None`: Envoy's own limits (1024 connections, pending and active requests, 3 retries).
    pub circuit_breaker: Option<CircuitBreaker>,
    /// `None`: endpoints are never ejected for the answers they give.
    pub outlier_detection: Option<OutlierDetection>,
    /// `None`: plaintext HTTP to the endpoints.
    pub tls: Option<UpstreamTls>,
}

/// The protocol a service speaks to its endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c), or by ALPN over `tls`.
    Http2,
    /// gRPC: HTTP/2, and gRPC health checks.
    Grpc,
}

impl Protocol {
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

/// An active health check on every endpoint every `interval`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: HealthProbe,
    pub interval: Duration,
    /// A check that takes longer counts as failed.
    pub timeout: Duration,
    /// Consecutive failed checks that take a healthy endpoint out of rotation.
    pub unhealthy_threshold: u32,
    /// Consecutive passed checks that put an unhealthy endpoint back.
    pub healthy_threshold: u32,
}

/// What a health check asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthProbe {
    /// `GET path`; any 2xx is healthy.
    Http { path: String },
    /// `grpc.health.v1.Health/Check` for this service name (`""`: the whole server); SERVING
    /// is healthy.
    Grpc { service: String },
}

/// How a request picks one of the service's healthy endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LoadBalancing {
    #[default]
    RoundRobin,
    /// The endpoint with fewer requests in flight out of two picked at random.
    LeastRequest,
    Random,
    /// Consistent hashing on a request header: one value keeps going to one endpoint while
    /// the set of endpoints is unchanged.
    RingHash {
        /// Lower-case header name.
        header: String,
    },
}

/// Limits on what the gateway sends one service at a time; over a limit a request is
/// answered 503 at once instead of piling onto a struggling service. `None` fields keep
/// Envoy's default for that limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CircuitBreaker {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_retries: Option<u32>,
}

/// Passive health checking: an endpoint answering `consecutive_5xx` 5xx in a row is ejected
/// for `base_ejection_time` (times the number of its past ejections).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierDetection {
    pub consecutive_5xx: u32,
    /// How often ejections are reviewed and ejected endpoints brought back.
    pub interval: Duration,
    pub base_ejection_time: Duration,
    /// At most this share of the endpoints is ejected at once (Envoy ejects at least one).
    pub max_ejection_percent: u32,
}

/// TLS to the service's endpoints; the server certificate is always verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Sent as SNI, and the DNS name the certificate must carry in its subject alt names.
    pub sni: String,
    /// PEM bundle of the certificate authorities trusted for this service: routes.yaml's
    /// `ca_file` as written (relative to routes.yaml's directory), or the system bundle.
    pub ca_file: PathBuf,
    /// The bundle `ca_file` named, read and checked when validation was given the files:
    /// Envoy gets these bytes, so what was checked is what it trusts. `None` for the system
    /// bundle, which Envoy reads from its own machine.
    pub ca_pem: Option<Vec<u8>>,
    /// The certificate the gateway presents to endpoints that ask for one (mutual TLS);
    /// `None`: it presents none. The certificate and key themselves are in
    /// [`crate::Certificates`], under the service's name.
    pub client_certificate: Option<CertificateFiles>,
}

/// Why a `ca_file` cannot be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CaBundleError {
    #[error("is not a PEM certificate bundle (expected -----BEGIN CERTIFICATE----- blocks)")]
    NotPem,
    #[error("holds no X.509 certificate that could be trusted")]
    NoCertificate,
}

/// Checks a PEM CA bundle before Envoy is given it: Envoy would refuse the whole cluster
/// update for a bundle it cannot load. A bundle where only some certificates parse is
/// accepted, as Envoy accepts it: system bundles carry a few old certificates that strict
/// parsers refuse.
pub fn check_ca_bundle(pem: &[u8]) -> Result<(), CaBundleError> {
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|_| CaBundleError::NotPem)?;
    if certificates.is_empty() {
        return Err(CaBundleError::NotPem);
    }
    let mut roots = rustls::RootCertStore::empty();
    let (usable, _) = roots.add_parsable_certificates(certificates);
    if usable == 0 {
        return Err(CaBundleError::NoCertificate);
    }
    Ok(())
}
