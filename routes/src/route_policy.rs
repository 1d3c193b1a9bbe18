//! The validated per-route traffic policies of routes.yaml: retries, idle timeout, CORS,
//! header edits, regex and host rewrites, a request body limit, and a response cache.
//!
//! Each is plain data that says what the gateway does, in routes.yaml's terms; the control
//! plane turns them into Envoy route settings and per-route filter configs.

use std::collections::BTreeMap;
use std::time::Duration;

/// Everything a route may say about how its traffic is handled, beyond where it goes.
/// A route's timeout when it sets none: Envoy's own default.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrafficPolicy {
    pub retries: Option<RetryPolicy>,
    /// How long a request or response stream may sit without any bytes moving.
    pub idle_timeout: Option<Duration>,
    pub cors: RouteCors,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    /// Rewrites the path by regex before forwarding (never together with `rewrite_prefix`).
    pub rewrite_regex: Option<RegexRewrite>,
    /// The `Host` (`:authority`) the upstream sees.
    pub host_rewrite: Option<String>,
    /// Requests with a larger body are refused with 413 before reaching the upstream.
    pub max_request_bytes: Option<u32>,
    /// GET and HEAD answers kept by the gateway and served without an upstream hop.
    pub cache: Option<ResponseCache>,
    /// WebSocket upgrades pass (HTTP/1.1 `Upgrade`, HTTP/2 extended CONNECT); refused on
    /// every route without it.
    pub websocket: bool,
}

/// A shared response cache for GET and HEAD (Envoy's `cache_v2` filter): an answer is
/// kept while fresh by RFC 9111 and served without reaching the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseCache {
    /// How long an answer stays fresh when the upstream says nothing about freshness (no
    /// `Cache-Control`); whole seconds, as `max-age` is (RFC 9111 §1.2.2).
    pub ttl: Duration,
}

/// Retry a failed request on the same service.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Tries in total, the first one included: `3` means up to two retries.
    pub attempts: u32,
    /// A deadline for each try; `None` lets a try run until the route's `timeout`.
    pub per_try_timeout: Option<Duration>,
    /// What counts as a failure worth retrying; never empty.
    pub on: Vec<RetryOn>,
    /// The jittered exponential backoff between tries.
    pub backoff: Backoff,
}

/// A failure condition that triggers a retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RetryOn {
    /// Any 5xx answer, or no answer at all (reset, connect failure, per-try timeout).
    ServerError,
    /// 502, 503 or 504 only.
    GatewayError,
    /// The upstream reset or closed the connection before answering.
    Reset,
    /// The connection to the upstream could not be made.
    ConnectFailure,
    /// 409 Conflict (the only 4xx that retrying can fix).
    Retriable4xx,
    /// The upstream refused an HTTP/2 stream (REFUSED_STREAM), so it did no work.
    RefusedStream,
    /// One specific status code.
    Status(u16),
}

impl RetryOn {
    /// The routes.yaml spelling.
    pub fn parse(text: &str) -> Option<RetryOn> {
        Some(match text {
            "5xx" => RetryOn::ServerError,
            "gateway-error" => RetryOn::GatewayError,
            "reset" => RetryOn::Reset,
            "connect-failure" => RetryOn::ConnectFailure,
            "retriable-4xx" => RetryOn::Retriable4xx,
            "refused-stream" => RetryOn::RefusedStream,
            code => match code.parse::<u16>() {
                Ok(status) if (100..=599).contains(&status) => RetryOn::Status(status),
                _ => return None,
            },
        })
    }
}

/// Tries are spaced by a random delay in `[0, min(base · 2^n, max)]`, as Envoy computes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    /// Envoy's own defaults: 25 ms base, ten times that at most.
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

/// Whether CORS applies to a route, and by which policy.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum RouteCors {
    /// The top-level `cors`, if there is one.
    #[default]
    Inherit,
    /// None at all, whatever the top level says (`cors: {enabled: false}`).
    Off,
    Own(CorsPolicy),
}

/// Cross-origin resource sharing (the Fetch standard's CORS protocol), answered by the
/// gateway: preflights never reach the upstream, actual requests get the allow headers.
#[derive(Clone, Debug, PartialEq)]
pub struct CorsPolicy {
    pub origins: Vec<AllowedOrigin>,
    /// Upper-case method names for `access-control-allow-methods`.
    pub methods: Vec<String>,
    /// Lower-case request header names for `access-control-allow-headers`.
    pub headers: Vec<String>,
    /// Lower-case response header names for `access-control-expose-headers`.
    pub expose_headers: Vec<String>,
    pub credentials: bool,
    /// How long a browser may cache a preflight answer; `None` leaves it to the browser.
    pub max_age: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedOrigin {
    /// `*`: every origin.
    Any,
    /// One origin, `scheme://host[:port]`, compared exactly.
    Exact(String),
}

/// Header edits, applied by the gateway: `remove` first, then `set`, then `add`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Lower-case name → value, appended to any values already present.
    pub add: BTreeMap<String, String>,
    /// Lower-case name → value, replacing any values already present.
    pub set: BTreeMap<String, String>,
    /// Lower-case names.
    pub remove: Vec<String>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }
}

/// A path rewrite: every match of `pattern` (RE2) is replaced by `substitution`, where `\1`
/// and so on are the pattern's capture groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegexRewrite {
    pub pattern: String,
    pub substitution: String,
}
