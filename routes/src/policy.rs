//! The validated policy parts of routes.yaml: JWT auth providers, per-route auth and rate
//! limits, and the sidecar services Envoy consults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::endpoint::Endpoint;
use crate::service_policy::UpstreamTls;

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

/// A way API consumers prove who they are, and what the upstream learns when they do.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthProvider {
    pub name: String,
    /// Claim name → header name, forwarded upstream on success. A token's claims for JWT;
    /// for API keys and client certificates, the consumer's `tier` and its attributes.
    pub forward_claims: BTreeMap<String, String>,
    pub credentials: Credentials,
}

impl AuthProvider {
    /// The request header the credential travels in, which ext-authz must be sent: none for
    /// a query parameter (the path is always sent) or a certificate (the connection's).
    pub fn credential_header(&self) -> Option<&str> {
        match &self.credentials {
            Credentials::Jwt(jwt) => jwt.token.header(),
            Credentials::ApiKey(key) => key.location.header(),
            Credentials::ClientCertificate(_) => None,
        }
    }

    /// The JWT settings, when this is a JWT provider.
    pub fn jwt(&self) -> Option<&JwtProvider> {
        match &self.credentials {
            Credentials::Jwt(jwt) => Some(jwt),
            _ => None,
        }
    }
}

/// What a provider accepts as proof.
#[derive(Clone, Debug, PartialEq)]
pub enum Credentials {
    /// A signed token from an issuer (`type: jwt`, the default).
    Jwt(JwtProvider),
    /// A key from a keys file, stored as its SHA-256.
    ApiKey(ApiKeyProvider),
    /// The TLS client certificate Envoy verified against the listener's `client_ca_file`.
    ClientCertificate(CertificateProvider),
}

/// A JWT issuer whose tokens routes can require.
#[derive(Clone, Debug, PartialEq)]
pub struct JwtProvider {
    pub issuer: String,
    /// A token must carry at least one of these in `aud`.
    pub audiences: Vec<String>,
    pub keys: KeySource,
    pub algorithms: Vec<Algorithm>,
    pub clock_skew: Duration,
    /// The claim whose value becomes `x-consumer-id`.
    pub consumer_claim: String,
    pub token: TokenSource,
    /// Who checks the tokens.
    pub enforce: Enforcement,
}

/// Who checks a JWT provider's tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Enforcement {
    /// tollgate-ext-authz, called by Envoy's ext_authz filter on every request.
    #[default]
    ExtAuthz,
    /// Envoy's own jwt_authn filter, with no call.
    Envoy,
}

impl Enforcement {
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::ExtAuthz => "ext_authz",
            Enforcement::Envoy => "envoy",
        }
    }
}

impl AuthProvider {
    /// Whether Envoy itself checks this provider's credentials (`enforce: envoy`).
    pub fn enforced_by_envoy(&self) -> bool {
        self.jwt()
            .is_some_and(|jwt| jwt.enforce == Enforcement::Envoy)
    }
}

/// API keys: where a request carries its key, and the file of keys accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyProvider {
    pub location: KeyLocation,
    /// The keys file (see [`crate::api_keys`]); relative to routes.yaml's directory as
    /// written, reloaded live when it changes.
    pub keys_file: PathBuf,
}

/// Where a request carries its API key: the whole value of a header, or a query parameter.
/// Either is removed before the request goes upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyLocation {
    /// A lower-case header name.
    Header(String),
    Query(String),
}

impl KeyLocation {
    pub fn header(&self) -> Option<&str> {
        match self {
            KeyLocation::Header(name) => Some(name),
            KeyLocation::Query(_) => None,
        }
    }
}

/// Client certificates: which field of the verified certificate names the consumer, and
/// what is known about each consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateProvider {
    pub consumer_from: CertificateField,
    /// When given, only these consumers are admitted (any other certificate is a 403),
    /// each with its tier and attributes; when `None`, every verified certificate is.
    pub consumers: Option<BTreeMap<String, ConsumerProfile>>,
}

/// The certificate field a consumer id is taken from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateField {
    /// The first DNS name among the subject alternative names (RFC 5280 §4.2.1.6).
    SanDns,
    /// The first URI among the subject alternative names (a SPIFFE id, for example).
    SanUri,
    /// The subject's common name.
    SubjectCn,
}

impl CertificateField {
    pub const NAMES: &'static str = "san_dns, san_uri or subject_cn";

    pub fn parse(text: &str) -> Option<CertificateField> {
        match text {
            "san_dns" => Some(CertificateField::SanDns),
            "san_uri" => Some(CertificateField::SanUri),
            "subject_cn" => Some(CertificateField::SubjectCn),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CertificateField::SanDns => "san_dns",
            CertificateField::SanUri => "san_uri",
            CertificateField::SubjectCn => "subject_cn",
        }
    }
}

/// What is known about a consumer besides its id: sent upstream by `forward_claims`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumerProfile {
    pub tier: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

impl ConsumerProfile {
    /// The value of a forwarded "claim": `tier`, or an attribute.
    pub fn claim(&self, name: &str) -> Option<&str> {
        match name {
            "tier" => self.tier.as_deref(),
            _ => self.attributes.get(name).map(String::as_str),
        }
    }
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

/// A route's requirement: a valid credential from one of `providers` (tried in order),
/// a token carrying every scope listed, and a consumer among `consumers` when any are named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteAuth {
    /// One provider, or `any_of` several; never empty.
    pub providers: Vec<String>,
    /// Only for routes whose providers are all JWT.
    pub scopes: Vec<String>,
    /// Consumer ids admitted; empty admits every consumer.
    pub consumers: Vec<String>,
}

/// The Envoy cluster of the ext-authz sidecar; its client certificate, if any, is kept in
/// [`crate::Certificates`] under this name (service names cannot start with `tollgate_`).
pub const EXT_AUTHZ_CLUSTER: &str = "tollgate_ext_authz";
/// The Envoy cluster of the rate-limit sidecar, as [`EXT_AUTHZ_CLUSTER`].
pub const RATE_LIMIT_CLUSTER: &str = "tollgate_ratelimit";

/// The services Envoy consults on the request path.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sidecars {
    pub ext_authz: Option<ExtAuthzSidecar>,
    pub rate_limit: Option<RateLimitSidecar>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ExtAuthzSidecar {
    /// Every replica: Envoy balances the checks over them, skipping those its health checks
    /// find down. Never empty.
    pub addresses: Vec<Endpoint>,
    pub timeout: Duration,
    /// Let requests through when the service fails or is slow; default false (fail closed).
    pub failure_mode_allow: bool,
    /// TLS to the replicas (their `--tls-cert`); `None`: plaintext.
    pub tls: Option<UpstreamTls>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RateLimitSidecar {
    /// Every replica, as for ext-authz. Never empty.
    pub addresses: Vec<Endpoint>,
    pub timeout: Duration,
    /// Deny requests when the service fails or is slow; default false (fail open).
    pub failure_mode_deny: bool,
    pub domain: String,
    /// TLS to the replicas, as for ext-authz.
    pub tls: Option<UpstreamTls>,
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

impl Quota {
    /// Orders quotas by the rate they allow, lowest first; at equal rates the smaller
    /// quota (the shorter window).
    pub fn cmp_strictness(&self, other: &Quota) -> std::cmp::Ordering {
        let rate = u128::from(self.requests) * u128::from(other.per.duration().as_secs());
        let other_rate = u128::from(other.requests) * u128::from(self.per.duration().as_secs());
        rate.cmp(&other_rate)
            .then(self.requests.cmp(&other.requests))
    }
}

impl LimitQuota {
    /// The tier a request without a known tier is limited as: the one allowing the lowest
    /// rate, so that neither a missing nor an invented tier escapes the limit.
    pub fn strictest_tier(&self) -> Option<(&str, Quota)> {
        match self {
            LimitQuota::Flat(_) => None,
            LimitQuota::Tiered { tiers, .. } => tiers
                .iter()
                .min_by(|a, b| a.1.cmp_strictness(b.1))
                .map(|(name, quota)| (name.as_str(), *quota)),
        }
    }
}

/// Buckets per key-bearing descriptor that each Envoy keeps for a local rule by default.
/// Envoy's own default, 20, would let the 21st client evict the least recent one and so
/// start a fresh budget for whoever returns; 10,000 active clients per rule cost each
/// Envoy a few megabytes (a bucket and an LRU entry of a few hundred bytes each).
pub const DEFAULT_MAX_KEYS: u32 = 10_000;
/// Beyond this, one rule could hold hundreds of megabytes in every Envoy.
pub const MAX_MAX_KEYS: u32 = 1_000_000;

/// Where a rule is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitMode {
    /// By the rate-limit service, in one store every Envoy shares: exact, at the cost of a
    /// gRPC call per request.
    Global,
    /// By each Envoy in its own token buckets (Envoy's `local_ratelimit` filter): no call
    /// at all, and for now each Envoy grants the whole budget.
    Local {
        /// Buckets each Envoy keeps per key-bearing descriptor; past it, the least recently
        /// seen key's bucket is dropped, and that key starts afresh.
        max_keys: u32,
    },
}

impl LimitMode {
    pub fn is_local(self) -> bool {
        matches!(self, LimitMode::Local { .. })
    }
}

/// One rate limit rule on a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitRule {
    /// Unique within its route; the descriptor value both Envoy and the service use.
    pub id: String,
    pub key: LimitKey,
    pub quota: LimitQuota,
    pub burst: Option<u64>,
    /// Always [`LimitAlgorithm::TokenBucket`] for a local rule.
    pub algorithm: LimitAlgorithm,
    pub mode: LimitMode,
}
