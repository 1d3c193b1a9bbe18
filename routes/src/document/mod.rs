//! The routes.yaml document as written, with the source location of every value that
//! validation may need to point at.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::{Options, Spanned};

use crate::error::{ConfigError, ConfigErrors};

mod route_policy;

pub(crate) use route_policy::{
    BackoffDoc, CacheDoc, CorsDoc, HeaderEditsDoc, RegexRewriteDoc, RetriesDoc,
};

mod service_policy;
pub(crate) use service_policy::{
    CircuitBreakerDoc, HashOnDoc, HealthCheckDoc, OutlierDetectionDoc, TlsDoc,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Document {
    pub version: Spanned<u64>,
    #[serde(default)]
    pub listeners: Vec<ListenerDoc>,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceDoc>,
    #[serde(default, deserialize_with = "routes_sized_once")]
    pub routes: Vec<RouteDoc>,
    #[serde(default)]
    pub auth_providers: BTreeMap<String, Spanned<AuthProviderDoc>>,
    pub sidecars: Option<SidecarsDoc>,
    pub observability: Option<ObservabilityDoc>,
    /// The CORS policy of every route without its own.
    pub cors: Option<Spanned<CorsDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ObservabilityDoc {
    pub access_log: Option<Spanned<AccessLogDoc>>,
    #[serde(default = "enabled")]
    pub route_stats: bool,
    pub tracing: Option<Spanned<TracingDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TracingDoc {
    pub otlp_endpoint: Spanned<String>,
    pub sample_rate: Option<Spanned<f64>>,
    pub service_name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessLogDoc {
    #[serde(default = "enabled")]
    pub enabled: bool,
    pub path: Option<Spanned<String>>,
}

fn enabled() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerDoc {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    pub health_path: Option<Spanned<String>>,
    pub escaped_slashes: Option<Spanned<String>>,
    pub tls: Option<Spanned<ListenerTlsDoc>>,
    pub redirect_to_https: Option<Spanned<String>>,
    pub allow_ips: Option<Spanned<Vec<Spanned<String>>>>,
    pub deny_ips: Option<Spanned<Vec<Spanned<String>>>>,
    /// Proxies in front of the listener whose `x-forwarded-for` entries are trusted.
    pub trusted_proxies: Option<Spanned<u64>>,
    pub limits: Option<Spanned<ListenerLimitsDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerLimitsDoc {
    pub max_request_headers_kb: Option<Spanned<u64>>,
    pub request_headers_timeout: Option<Spanned<String>>,
    pub stream_idle_timeout: Option<Spanned<String>>,
    pub connection_idle_timeout: Option<Spanned<String>>,
    pub max_concurrent_streams: Option<Spanned<u64>>,
    pub max_connections: Option<Spanned<u64>>,
    pub connection_buffer_kb: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerTlsDoc {
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
    pub min_version: Option<Spanned<String>>,
    #[serde(default)]
    pub sni_certificates: Vec<Spanned<CertificateFilesDoc>>,
    pub client_ca_file: Option<Spanned<String>>,
    pub client_certificate: Option<Spanned<String>>,
    pub crl_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertificateFilesDoc {
    pub cert_file: Spanned<String>,
    pub key_file: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceDoc {
    pub endpoints: Spanned<Vec<Spanned<String>>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub protocol: Option<Spanned<String>>,
    pub health_check: Option<Spanned<HealthCheckDoc>>,
    pub load_balancing: Option<Spanned<String>>,
    pub hash_on: Option<Spanned<HashOnDoc>>,
    pub circuit_breaker: Option<Spanned<CircuitBreakerDoc>>,
    pub outlier_detection: Option<Spanned<OutlierDetectionDoc>>,
    pub tls: Option<Spanned<TlsDoc>>,
}

/// The larger settings few routes use are boxed: a route as read was 4 KB, most of it empty
/// `Option`s, and at 10,000 routes moving them about was a good part of a reload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteDoc {
    pub name: Spanned<String>,
    pub listener: Option<Spanned<String>>,
    #[serde(rename = "match")]
    pub matcher: Spanned<MatchDoc>,
    pub service: Option<Spanned<String>>,
    pub split: Option<Spanned<Vec<Spanned<SplitDoc>>>>,
    pub mirror: Option<Box<Spanned<MirrorDoc>>>,
    pub redirect: Option<Box<Spanned<RedirectDoc>>>,
    pub rewrite_prefix: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub auth: Option<Box<Spanned<RouteAuthDoc>>>,
    #[serde(default)]
    pub rate_limit: Vec<Spanned<RateLimitDoc>>,
    pub retries: Option<Box<Spanned<RetriesDoc>>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub cors: Option<Box<Spanned<CorsDoc>>>,
    pub request_headers: Option<Spanned<HeaderEditsDoc>>,
    pub response_headers: Option<Spanned<HeaderEditsDoc>>,
    pub rewrite_regex: Option<Box<Spanned<RegexRewriteDoc>>>,
    pub host_rewrite: Option<Spanned<String>>,
    pub max_request_bytes: Option<Spanned<u64>>,
    pub cache: Option<Box<Spanned<CacheDoc>>>,
    pub websocket: Option<Spanned<bool>>,
    pub transcode: Option<Box<Spanned<TranscodeDoc>>>,
    pub allow_ips: Option<Spanned<Vec<Spanned<String>>>>,
    pub deny_ips: Option<Spanned<Vec<Spanned<String>>>>,
}

/// The route list in one allocation when the reader knows its length (the quick reader
/// does): serde's own `Vec` reader starts at 1 MiB whatever the hint and doubles from there,
/// which at 10,000 routes copied every route read so far five times over.
fn routes_sized_once<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<RouteDoc>, D::Error> {
    struct Routes;
    impl<'de> serde::de::Visitor<'de> for Routes {
        type Value = Vec<RouteDoc>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of routes")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            // A hint is only a hint: past this many, the list grows as any other.
            const MOST_RESERVED: usize = 100_000;
            let mut routes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MOST_RESERVED));
            while let Some(route) = seq.next_element()? {
                routes.push(route);
            }
            Ok(routes)
        }
    }
    deserializer.deserialize_seq(Routes)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TranscodeDoc {
    pub descriptor_set: Spanned<String>,
    pub services: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SplitDoc {
    pub service: Spanned<String>,
    pub weight: Spanned<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MirrorDoc {
    pub service: Spanned<String>,
    pub percent: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedirectDoc {
    #[serde(default)]
    pub https: bool,
    pub host: Option<Spanned<String>>,
    pub port: Option<Spanned<u64>>,
    pub path: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub code: Option<Spanned<u64>>,
    #[serde(default)]
    pub strip_query: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteAuthDoc {
    /// One provider; or `any_of` several, tried in order.
    pub provider: Option<Spanned<String>>,
    pub any_of: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub scopes: Vec<Spanned<String>>,
    /// Consumer ids admitted; absent admits every consumer.
    pub consumers: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitDoc {
    pub name: Option<Spanned<String>>,
    pub by: Spanned<String>,
    pub header: Option<Spanned<String>>,
    pub requests: Option<Spanned<u64>>,
    pub per: Option<Spanned<String>>,
    pub burst: Option<Spanned<u64>>,
    pub algorithm: Option<Spanned<String>>,
    pub tier_header: Option<Spanned<String>>,
    pub tiers: Option<BTreeMap<String, Spanned<String>>>,
    /// `global` (the default: the rate-limit service) or `local` (Envoy's own buckets).
    pub mode: Option<Spanned<String>>,
    /// Local rules only: how many distinct keys each Envoy keeps a bucket for.
    pub max_keys: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthProviderDoc {
    /// `jwt` (the default), `api_key` or `client_certificate`.
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub issuer: Option<Spanned<String>>,
    pub audiences: Option<Spanned<Vec<Spanned<String>>>>,
    pub jwks_uri: Option<Spanned<String>>,
    pub jwks_file: Option<Spanned<String>>,
    pub shared_secret_file: Option<Spanned<String>>,
    pub shared_secret_env: Option<Spanned<String>>,
    pub algorithms: Option<Vec<Spanned<String>>>,
    pub clock_skew: Option<Spanned<String>>,
    pub consumer_claim: Option<Spanned<String>>,
    /// jwt: who checks the tokens, `ext_authz` (the default) or `envoy`.
    pub enforce: Option<Spanned<String>>,
    #[serde(default)]
    pub forward_claims: BTreeMap<String, Spanned<String>>,
    pub token: Option<Spanned<TokenDoc>>,
    /// api_key: the header or query parameter the key travels in, and the keys file.
    pub header: Option<Spanned<String>>,
    pub query: Option<Spanned<String>>,
    pub keys_file: Option<Spanned<String>>,
    /// client_certificate: the field naming the consumer, and the consumers admitted.
    pub consumer_from: Option<Spanned<String>>,
    pub consumers: Option<Spanned<BTreeMap<String, Spanned<ConsumerDoc>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsumerDoc {
    pub tier: Option<Spanned<String>>,
    #[serde(default)]
    pub attributes: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenDoc {
    pub header: Option<Spanned<String>>,
    pub query: Option<Spanned<String>>,
    pub cookie: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SidecarsDoc {
    pub ext_authz: Option<Spanned<ExtAuthzDoc>>,
    pub rate_limit: Option<Spanned<RateLimitSidecarDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExtAuthzDoc {
    pub address: Spanned<SidecarAddressDoc>,
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub failure_mode_allow: bool,
    pub tls: Option<Spanned<service_policy::TlsDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitSidecarDoc {
    pub address: Spanned<SidecarAddressDoc>,
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub failure_mode_deny: bool,
    pub domain: Option<Spanned<String>>,
    pub tls: Option<Spanned<service_policy::TlsDoc>>,
}

/// A sidecar's `HOST:PORT`, or a list of them, one per replica.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum SidecarAddressDoc {
    One(String),
    Replicas(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MatchDoc {
    pub prefix: Option<Spanned<String>>,
    pub grpc_service: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub regex: Option<Spanned<String>>,
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub query: BTreeMap<String, Spanned<QueryValueDoc>>,
}

/// A query parameter's match: a value (a number is its decimal text), or `{present: true}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum QueryValueDoc {
    Text(String),
    Integer(i64),
    Present(PresentDoc),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PresentDoc {
    pub present: bool,
}

/// Reads the YAML into a [`Document`] quickly, without source locations, or `None` when the
/// text is not plainly a valid document; the caller then reads it again with [`read`].
///
/// serde-saphyr, which gives every value its location, parses about three times slower than
/// libyaml (serde_yaml_ng): some 15 ms for a 1,000-route file, most of a reload's own cost.
/// Locations only matter when something is wrong, so a file is read here first, and read
/// again with locations only if this read or its validation fails. The detour through
/// `Value` is deliberate: its mappings refuse duplicate keys, as serde-saphyr does, where a
/// map read directly would silently keep the last one. Merge keys (`<<`), which only
/// serde-saphyr expands, arrive here as unknown fields and take the slow path.
///
/// A null anywhere, or a tag, also takes the slow path: serde_yaml_ng reads a null where a
/// list or a map is expected as an empty one (`routes:` with nothing after it would be a
/// file with no routes), where serde-saphyr refuses it; the located reader's answer is the
/// one users get, whichever reader runs first.
///
/// So does a `#` right after another character: YAML 1.2 (§6.6) wants a comment separated
/// from what precedes it by whitespace, and libyaml reads `services: {}#…` as a comment where
/// serde-saphyr refuses it (found by fuzz/'s routes_yaml). A `#` inside a value (`a#b`, a URL
/// fragment) is no comment and reads the same in both; it only costs the slow path.
pub(crate) fn read_quick(text: &str) -> Option<Document> {
    if has_unseparated_hash(text) {
        return None;
    }
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).ok()?;
    if !plain_values_only(&value) {
        return None;
    }
    serde_yaml_ng::from_value(value).ok()
}

/// Whether a `#` anywhere follows something other than YAML's whitespace (space, tab) or a
/// line break. Unicode's other spaces (U+00A0, U+0085…) are not whitespace to YAML.
fn has_unseparated_hash(text: &str) -> bool {
    text.as_bytes()
        .windows(2)
        .any(|pair| pair[1] == b'#' && !matches!(pair[0], b' ' | b'\t' | b'\n' | b'\r'))
}

/// Whether `value` holds no null and no tag, at any depth.
fn plain_values_only(value: &serde_yaml_ng::Value) -> bool {
    use serde_yaml_ng::Value;
    match value {
        Value::Null | Value::Tagged(_) => false,
        Value::Bool(_) | Value::Number(_) | Value::String(_) => true,
        Value::Sequence(items) => items.iter().all(plain_values_only),
        Value::Mapping(entries) => entries
            .iter()
            .all(|(key, item)| plain_values_only(key) && plain_values_only(item)),
    }
}

/// Reads the YAML into a [`Document`] (or another document of ours, such as an API key
/// file); a syntax or schema error is reported at its location.
pub(crate) fn read<T: serde::de::DeserializeOwned>(
    file: &str,
    text: &str,
) -> Result<T, ConfigErrors> {
    let mut options = Options::default();
    options.with_snippet = false;
    serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            line,
            column,
            message: strip_location_suffix(&e.to_string()),
        }])
    })
}

/// serde-saphyr appends its own " at line L, column C"; ours leads the message instead.
fn strip_location_suffix(message: &str) -> String {
    let first_line = message.lines().next().unwrap_or(message).trim();
    match first_line.rfind(" at line ") {
        Some(at) => first_line[..at].to_string(),
        None => first_line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::read_quick;

    /// The quick reader is only a shortcut: were it to refuse every file, every test would
    /// still pass through the located reader, and only reloads would get slower.
    #[test]
    fn the_quick_reader_takes_a_realistic_file() {
        let example = include_str!("../../../examples/routes.yaml");
        let document = read_quick(example).expect("the example reads quickly");
        assert!(!document.routes.is_empty());
    }

    #[test]
    fn the_quick_reader_leaves_duplicate_keys_and_merge_keys_to_the_located_one() {
        assert!(read_quick("version: 1\nversion: 1\n").is_none());
        assert!(
            read_quick("version: 1\nservices: {a: {endpoints: []}, a: {endpoints: []}}\n")
                .is_none()
        );
        assert!(read_quick("version: 1\nservices:\n  a: {<<: {endpoints: []}}\n").is_none());
    }

    /// Found by `make fuzz-smoke`: serde_yaml_ng reads a null list as an empty one, which
    /// the located reader refuses; so a null, or a tag, is left to the located reader.
    #[test]
    fn the_quick_reader_leaves_nulls_and_tags_to_the_located_one() {
        assert!(read_quick("version: 1\nroutes: []\n").is_some());
        assert!(read_quick("version: 1\nroutes:\n").is_none());
        assert!(read_quick("version: 1\nroutes: ~\n").is_none());
        assert!(read_quick("version: 1\nservices: {a: {endpoints: null}}\n").is_none());
        assert!(read_quick("version: 1\nroutes: !custom []\n").is_none());
        // A comment glued to a flow collection, which only libyaml reads as a comment.
        assert!(read_quick("version: 1\nservices: {}#\nroutes: []\n").is_none());
        assert!(read_quick("version: 1\nservices: {} # a comment\nroutes: []\n").is_some());
        assert!(read_quick("version: 1\nservices: {}\u{a0}#\nroutes: []\n").is_none());
    }
}
