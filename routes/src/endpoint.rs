//! An address Envoy connects to: a service's endpoint, a sidecar, a collector. Its own
//! module because both the routes model (`config`) and the policies (`policy`) hold one.

/// An upstream address: an IP literal or a DNS name, and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    /// `HOST:PORT`, with an IPv6 host in brackets (RFC 3986 §3.2.2).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Endpoint {
    /// True when `host` is an IP literal, so no DNS resolution is needed.
    pub fn is_ip(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }
}
