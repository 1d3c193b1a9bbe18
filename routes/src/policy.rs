//! The validated policy parts of routes.yaml: JWT auth providers, per-route auth and rate
//! limits, and the sidecar services Envoy consults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::endpoint::Endpoint;

/// Signature algorithms a provider may accept (RFC 7518 §3.1, RFC 8037 for EdDSA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl Algorithm {
    pub const ALL: [Algorithm; 12] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
    ];

    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
        }
    }

    pub fn parse(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// HMAC algorithms need a shared secret, never a public key (RFC 8725 §3.1).
    pub fn is_symmetric(self) -> bool {
        matches!(self, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    }
}

/// The header ext-authz sets to the verified consumer's id; no client may send it.
pub const CONSUMER_HEADER: &str = "x-consumer-id";

/// The gateway's correlation id, which Envoy keeps or makes for every request; ext-authz
/// names its log lines and spans by it.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Every header ext-authz may set, sorted: the consumer id and each forwarded claim's.
pub fn identity_headers(providers: &BTreeMap<String, AuthProvider>) -> Vec<String> {
    let mut headers: std::collections::BTreeSet<String> = providers
        .values()
        .flat_map(|p| p.forward_claims.values().cloned())
        .collect();
    headers.insert(CONSUMER_HEADER.to_string());
    headers.into_iter().collect()
}

/// A JWT issuer whose tokens routes can require.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthProvider {
    pub name: String,
    pub issuer: String,
    /// A token must carry at least one of these in `aud`.
    pub audiences: Vec<String>,
    pub keys: KeySource,
    pub algorithms: Vec<Algorithm>,
    pub clock_skew: Duration,
    /// The claim whose value becomes `x-consumer-id`.
    pub consumer_claim: String,
    /// Claim name → header name, forwarded upstream on success.
    pub forward_claims: BTreeMap<String, String>,
    pub token: TokenSource,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS fetched over HTTP(S), cached and refreshed.
    JwksUri(String),
    /// A JWKS on disk, reloaded when it changes. Relative paths are relative to routes.yaml.
    JwksFile(PathBuf),
    /// An HMAC secret read from a file (raw bytes), for HS* algorithms only.
    SharedSecretFile(PathBuf),
    /// An HMAC secret read from an environment variable, for HS* algorithms only.
    SharedSecretEnv(String),
}

/// Where the token is looked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `NAME: Bearer <token>`; `authorization` by default.
    BearerHeader(String),
    Query(String),
    Cookie(String),
}

impl TokenSource {
    /// The request header the token travels in: the one named, `cookie`, or none for a
    /// query parameter, which travels in the path.
    pub fn header(&self) -> Option<&str> {
        match self {
            TokenSource::BearerHeader(name) => Some(name),
            TokenSource::Cookie(_) => Some("cookie"),
            TokenSource::Query(_) => None,
        }
    }
}

/// A route's requirement: a valid token from `provider` carrying every scope listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteAuth {
    pub provider: String,
    pub scopes: Vec<String>,
}

/// The services Envoy consults on the request path.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sidecars {
    pub ext_authz: Option<ExtAuthzSidecar>,
    pub rate_limit: Option<RateLimitSidecar>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ExtAuthzSidecar {
    pub address: Endpoint,
    pub timeout: Duration,
    /// Let requests through when the service fails or is slow; default false (fail closed).
    pub failure_mode_allow: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RateLimitSidecar {
    pub address: Endpoint,
    pub timeout: Duration,
    /// Deny requests when the service fails or is slow; default false (fail open).
    pub failure_mode_deny: bool,
    pub domain: String,
}

/// A rate limit window length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Per {
    Second,
    Minute,
    Hour,
    Day,
}

impl Per {
    pub fn parse(text: &str) -> Option<Per> {
        match text {
            "second" => Some(Per::Second),
            "minute" => Some(Per::Minute),
            "hour" => Some(Per::Hour),
            "day" => Some(Per::Day),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Per::Second => "second",
            Per::Minute => "minute",
            Per::Hour => "hour",
            Per::Day => "day",
        }
    }

    pub fn duration(self) -> Duration {
        Duration::from_secs(match self {
            Per::Second => 1,
            Per::Minute => 60,
            Per::Hour => 3600,
            Per::Day => 86_400,
        })
    }
}

/// `requests` per window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub requests: u64,
    pub per: Per,
}

/// What a limit counts by: each distinct value gets its own budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitKey {
    /// The `x-consumer-id` ext-authz set from the token.
    Consumer,
    /// The client's address as Envoy saw it.
    ClientIp,
    /// The value of a request header.
    Header(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitAlgorithm {
    Fixed,
    Sliding,
    /// GCRA: a steady rate with room for `burst` requests at once.
    TokenBucket,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitQuota {
    Flat(Quota),
    /// The quota is chosen by the value of `header` (forwarded from a JWT claim by ext-authz).
    Tiered {
        header: String,
        tiers: BTreeMap<String, Quota>,
    },
}

/// One rate limit rule on a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitRule {
    /// Unique within its route; the descriptor value both Envoy and the service use.
    pub id: String,
    pub key: LimitKey,
    pub quota: LimitQuota,
    pub burst: Option<u64>,
    pub algorithm: LimitAlgorithm,
}
