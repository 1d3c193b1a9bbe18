//! The validated configuration: plain data that translation can trust without re-checking.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::destination::{Destination, HttpsRedirect, Mirror};
use crate::endpoint::Endpoint;
use crate::policy::{AuthProvider, RateLimitRule, RouteAuth, Sidecars};

/// A whole, valid routes.yaml.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutesConfig {
    pub listeners: Vec<Listener>,
    /// By name; names are unique.
    pub services: BTreeMap<String, Service>,
    /// In file order, which is match order.
    pub routes: Vec<Route>,
    /// JWT issuers, by name.
    pub auth_providers: BTreeMap<String, AuthProvider>,
    pub sidecars: Sidecars,
    pub observability: Observability,
    /// The CORS policy of routes that have none of their own.
    pub cors: Option<crate::route_policy::CorsPolicy>,
}

impl RoutesConfig {
    /// The routes served on `listener`, in match order: none on a listener that redirects
    /// every request to https.
    pub fn routes_on<'a>(&'a self, listener: &'a str) -> impl Iterator<Item = &'a Route> + 'a {
        let redirects = self
            .listeners
            .iter()
            .any(|l| l.name == listener && l.redirect_to_https.is_some());
        self.routes
            .iter()
            .filter(move |r| !redirects && r.listener.as_deref().is_none_or(|l| l == listener))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// Answered by the gateway itself (no upstream hop); `None` when disabled.
    pub health_path: Option<String>,
    pub escaped_slashes: EscapedSlashes,
    /// `None`: plaintext (HTTP/1.1, or HTTP/2 with prior knowledge).
    pub tls: Option<crate::listener_tls::ListenerTls>,
    /// Every request (but the health path) is sent to this TLS listener instead of routed.
    pub redirect_to_https: Option<HttpsRedirect>,
    /// Client addresses every route here admits (the health path excepted).
    pub ip_rules: crate::ip_rules::IpRules,
    /// How many proxies (load balancers) in front of the listener append to
    /// `x-forwarded-for`: the client is the address that many entries from its right end.
    /// 0 (the default): the client is the peer of the connection, and `x-forwarded-for` is
    /// not trusted at all.
    pub trusted_proxies: u32,
    /// Header size and time, idle times, streams, connections and buffers per client.
    pub limits: crate::listener_limits::ListenerLimits,
}

/// What to do with `%2F`, `%5C` (encoded `/` and `\\`) in a path. Left alone they let a
/// path dodge a route (and its auth) that the upstream would decode to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// 400: the safe default for an API.
    Reject,
    /// Decode them and redirect the client to the decoded path.
    Redirect,
    /// Pass them through undecoded (only for upstreams that never decode them).
    Keep,
}

/// Request logging and tracing.
#[derive(Clone, Debug, PartialEq)]
pub struct Observability {
    /// Where JSON access log lines go; `None` when disabled.
    pub access_log: Option<AccessLogSink>,
    /// Per-route request counts, status classes and latency histograms in Envoy's stats.
    /// They cost Envoy time on every route-table update: a 1,000-route table reloads
    /// measurably faster without them (see BENCHMARKS.md).
    pub route_stats: bool,
    /// Where spans go; `None` when tracing is off.
    pub tracing: Option<Tracing>,
}

/// OpenTelemetry tracing: Envoy and the sidecars export spans over OTLP/gRPC.
#[derive(Clone, Debug, PartialEq)]
pub struct Tracing {
    /// The OTLP/gRPC collector (`HOST:PORT`, plaintext HTTP/2).
    pub otlp_endpoint: Endpoint,
    /// The fraction of requests without a sampled parent that start a trace, 0.0 to 1.0.
    pub sample_rate: f64,
    /// The `service.name` of the gateway's (Envoy's) spans.
    pub service_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLogSink {
    Stdout,
    File(std::path::PathBuf),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub connect_timeout: Duration,
    pub policy: crate::service_policy::ServicePolicy,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub name: String,
    /// The one listener this route is served on; `None` means every listener.
    pub listener: Option<String>,
    pub matcher: RouteMatch,
    pub destination: Destination,
    /// A copy of some requests to another service.
    pub mirror: Option<Mirror>,
    /// JSON requests transcoded to the service's gRPC methods.
    pub transcode: Option<crate::destination::Transcode>,
    /// Client addresses this route admits, besides its listener's rules.
    pub ip_rules: crate::ip_rules::IpRules,
    pub rewrite_prefix: Option<String>,
    pub timeout: Option<Duration>,
    /// `None`: a public route.
    pub auth: Option<RouteAuth>,
    /// Every rule applies; a request over any one is refused.
    pub rate_limits: Vec<RateLimitRule>,
    /// Retries, timeouts, CORS, header edits, rewrites and limits.
    pub traffic: crate::route_policy::TrafficPolicy,
}

impl Route {
    /// The rules the rate-limit service counts.
    pub fn global_rate_limits(&self) -> impl Iterator<Item = &RateLimitRule> + '_ {
        self.rate_limits.iter().filter(|rule| !rule.mode.is_local())
    }

    /// The rules each Envoy counts itself.
    pub fn local_rate_limits(&self) -> impl Iterator<Item = &RateLimitRule> + '_ {
        self.rate_limits.iter().filter(|rule| rule.mode.is_local())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// Upper-case method names; empty means any method.
    pub methods: Vec<String>,
    /// Lower-case header names to exact values.
    pub headers: BTreeMap<String, String>,
    /// Lower-case host names, each exact or a `*.` wildcard prefix, as written; empty means
    /// any host. The `Host` (`:authority`) port is ignored.
    pub hosts: Vec<String>,
    /// Query parameters by name (case-sensitive, as in the URL).
    pub query: BTreeMap<String, QueryMatch>,
    /// Only gRPC requests (`content-type: application/grpc…`): `grpc_service` was matched.
    pub grpc: bool,
}

impl RouteMatch {
    /// Whether `host` (lower case, exact or `*.` wildcard) is among the hosts this route
    /// accepts: every host when it names none.
    pub fn accepts_host(&self, host: &str) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|h| host_covers(h, host))
    }
}

/// Whether the host pattern `pattern` matches every host `host` matches: the same name, or a
/// `*.` wildcard whose suffix `host` (a name or a narrower wildcard) ends with.
pub fn host_covers(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        // The suffix starts with its dot, so it never matches a name on its own.
        Some(suffix) => host.strip_prefix('*').unwrap_or(host).ends_with(suffix),
        None => pattern == host,
    }
}

/// What a query parameter must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryMatch {
    /// Exactly this value.
    Exact(String),
    /// Present, with any value.
    Present,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    /// A regex that must match the whole path (RE2 syntax, as Envoy evaluates it).
    Regex(String),
}
