//! Checks for the policy sections: auth providers, per-route auth and rate limits, sidecars.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::{host_port, is_header_name, is_valid_name, positive_duration, Errors};
use crate::document::{AuthProviderDoc, Document, RateLimitDoc, RouteAuthDoc, RouteDoc, TokenDoc};
use crate::duration;
use crate::policy::{
    Algorithm, AuthProvider, ExtAuthzSidecar, KeySource, LimitAlgorithm, LimitKey, LimitQuota, Per,
    Quota, RateLimitRule, RateLimitSidecar, RouteAuth, Sidecars, TokenSource, CONSUMER_HEADER,
};

/// Envoy's ext_authz default; a JWT check with cached keys takes well under a millisecond.
const DEFAULT_EXT_AUTHZ_TIMEOUT: Duration = Duration::from_millis(200);
const DEFAULT_RATE_LIMIT_TIMEOUT: Duration = Duration::from_millis(50);
/// Envoy jwt_authn's default allowance for clocks that disagree.
const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Headers a forwarded claim may never overwrite: they carry routing, framing or the
/// credentials themselves, or the identity ext-authz sets from `consumer_claim`.
const RESERVED_HEADERS: [&str; 9] = [
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "cookie",
    CONSUMER_HEADER,
];

pub(super) fn auth_providers(
    doc: &Document,
    errors: &mut Errors,
) -> BTreeMap<String, AuthProvider> {
    doc.auth_providers
        .iter()
        .filter_map(|(name, provider)| {
            auth_provider(name, provider, errors).map(|p| (name.clone(), p))
        })
        .collect()
}

fn auth_provider(
    name: &str,
    node: &Spanned<AuthProviderDoc>,
    errors: &mut Errors,
) -> Option<AuthProvider> {
    let before = errors.found.len();
    let doc = &node.value;
    if !is_valid_name(name) {
        errors.at(
            node,
            format!("invalid auth provider name \"{name}\": use letters, digits, '.', '_' and '-'"),
        );
    }
    if doc.issuer.value.is_empty() {
        errors.at(
            &doc.issuer,
            format!("auth provider \"{name}\": issuer is empty"),
        );
    }
    let audiences = audiences(name, node, errors);
    let keys = key_source(name, node, errors);
    let shared_secret = matches!(
        keys,
        Some(KeySource::SharedSecretFile(_) | KeySource::SharedSecretEnv(_))
    );
    let algorithms = algorithms(name, node, shared_secret, errors);
    let clock_skew = clock_skew(doc, errors);
    let consumer_claim = consumer_claim(doc, errors);
    let forward_claims = forward_claims(doc, errors);
    let token = doc
        .token
        .as_ref()
        .map(|t| token_source(name, t, errors))
        .unwrap_or_else(|| Some(TokenSource::BearerHeader("authorization".into())));

    let (keys, token) = (keys?, token?);
    (errors.found.len() == before).then(|| AuthProvider {
        name: name.to_string(),
        issuer: doc.issuer.value.clone(),
        audiences,
        keys,
        algorithms,
        clock_skew,
        consumer_claim,
        forward_claims,
        token,
    })
}

/// The audiences a token must name one of.
fn audiences(name: &str, node: &Spanned<AuthProviderDoc>, errors: &mut Errors) -> Vec<String> {
    // RFC 8725 §3.9: without an audience check a token minted for another service of the
    // same issuer would be accepted here.
    match &node.value.audiences {
        Some(list) if !list.value.is_empty() => {
            for audience in list.value.iter().filter(|a| a.value.is_empty()) {
                errors.at(audience, "empty audience".to_string());
            }
            list.value.iter().map(|a| a.value.clone()).collect()
        }
        Some(list) => {
            errors.at(
                list,
                format!("auth provider \"{name}\": audiences is empty"),
            );
            Vec::new()
        }
        None => {
            errors.at(
                node,
                format!("auth provider \"{name}\" needs audiences: tokens must be meant for this gateway"),
            );
            Vec::new()
        }
    }
}

/// Where the provider's keys come from: exactly one source.
fn key_source(
    name: &str,
    node: &Spanned<AuthProviderDoc>,
    errors: &mut Errors,
) -> Option<KeySource> {
    let doc = &node.value;
    let sources: Vec<(&Spanned<String>, KeySource)> = [
        doc.jwks_uri
            .as_ref()
            .map(|v| (v, KeySource::JwksUri(v.value.clone()))),
        doc.jwks_file
            .as_ref()
            .map(|v| (v, KeySource::JwksFile(PathBuf::from(&v.value)))),
        doc.shared_secret_file
            .as_ref()
            .map(|v| (v, KeySource::SharedSecretFile(PathBuf::from(&v.value)))),
        doc.shared_secret_env
            .as_ref()
            .map(|v| (v, KeySource::SharedSecretEnv(v.value.clone()))),
    ]
    .into_iter()
    .flatten()
    .collect();
    let keys = match sources.as_slice() {
        [(_, keys)] => Some(keys.clone()),
        [] => {
            errors.at(
                node,
                format!("auth provider \"{name}\" needs one of jwks_uri, jwks_file, shared_secret_file or shared_secret_env"),
            );
            None
        }
        [_, (second, _), ..] => {
            errors.at(
                *second,
                format!("auth provider \"{name}\": give only one of jwks_uri, jwks_file, shared_secret_file or shared_secret_env"),
            );
            None
        }
    };
    if let Some(uri) = &doc.jwks_uri {
        if !(uri.value.starts_with("https://") || uri.value.starts_with("http://")) {
            errors.at(
                uri,
                format!("jwks_uri \"{}\" must be an http(s) URL", uri.value),
            );
        }
    }
    keys
}

/// The algorithms accepted: given, or every one that fits the key source.
fn algorithms(
    name: &str,
    node: &Spanned<AuthProviderDoc>,
    shared_secret: bool,
    errors: &mut Errors,
) -> Vec<Algorithm> {
    match &node.value.algorithms {
        None if shared_secret => vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        None => Algorithm::ALL
            .into_iter()
            .filter(|a| !a.is_symmetric())
            .collect(),
        Some(list) => {
            if list.is_empty() {
                errors.at(
                    node,
                    format!("auth provider \"{name}\": algorithms is empty"),
                );
            }
            let mut algorithms = Vec::new();
            for alg in list {
                match Algorithm::parse(&alg.value) {
                    // RFC 8725 §3.1: an HMAC key must never be a public key, and a
                    // public-key provider must never accept HMAC (the confusion attack).
                    Some(a) if a.is_symmetric() != shared_secret => errors.at(
                        alg,
                        if shared_secret {
                            format!("algorithm {} needs a JWKS, not a shared secret", a.as_str())
                        } else {
                            format!("algorithm {} needs shared_secret_file or shared_secret_env", a.as_str())
                        },
                    ),
                    Some(a) => algorithms.push(a),
                    None => errors.at(
                        alg,
                        format!(
                            "unknown algorithm \"{}\": expected one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512",
                            alg.value
                        ),
                    ),
                }
            }
            algorithms
        }
    }
}

fn clock_skew(doc: &AuthProviderDoc, errors: &mut Errors) -> Duration {
    match &doc.clock_skew {
        None => DEFAULT_CLOCK_SKEW,
        Some(skew) if skew.value == "0s" || skew.value == "0ms" => Duration::ZERO,
        Some(skew) => duration::parse(&skew.value).unwrap_or_else(|message| {
            errors.at(skew, message);
            DEFAULT_CLOCK_SKEW
        }),
    }
}

/// The claim that names the consumer (`sub` unless told otherwise).
fn consumer_claim(doc: &AuthProviderDoc, errors: &mut Errors) -> String {
    match &doc.consumer_claim {
        Some(claim) if claim.value.is_empty() => {
            errors.at(claim, "consumer_claim is empty".to_string());
            String::new()
        }
        Some(claim) => claim.value.clone(),
        None => "sub".to_string(),
    }
}

/// Claims forwarded upstream, each as its own header: valid, unreserved and distinct names.
fn forward_claims(doc: &AuthProviderDoc, errors: &mut Errors) -> BTreeMap<String, String> {
    let mut forward_claims = BTreeMap::new();
    let mut headers_seen = HashSet::new();
    for (claim, header) in &doc.forward_claims {
        let lower = header.value.to_ascii_lowercase();
        if !is_header_name(&lower) || lower.starts_with(':') {
            errors.at(
                header,
                format!(
                    "invalid header name \"{}\" for claim \"{claim}\"",
                    header.value
                ),
            );
        } else if RESERVED_HEADERS.contains(&lower.as_str()) {
            errors.at(header, format!("claim \"{claim}\" may not be forwarded as \"{lower}\": that header is reserved"));
        } else if !headers_seen.insert(lower.clone()) {
            errors.at(header, format!("header \"{lower}\" is used for two claims"));
        }
        forward_claims.insert(claim.clone(), lower);
    }
    forward_claims
}

fn token_source(
    provider: &str,
    node: &Spanned<TokenDoc>,
    errors: &mut Errors,
) -> Option<TokenSource> {
    let doc = &node.value;
    let given: Vec<(&Spanned<String>, TokenSource)> = [
        doc.header
            .as_ref()
            .map(|h| (h, TokenSource::BearerHeader(h.value.to_ascii_lowercase()))),
        doc.query
            .as_ref()
            .map(|q| (q, TokenSource::Query(q.value.clone()))),
        doc.cookie
            .as_ref()
            .map(|c| (c, TokenSource::Cookie(c.value.clone()))),
    ]
    .into_iter()
    .flatten()
    .collect();
    match given.as_slice() {
        [(value, source)] if !value.value.is_empty() => Some(source.clone()),
        _ => {
            errors.at(
                node,
                format!("auth provider \"{provider}\": token needs exactly one non-empty header, query or cookie"),
            );
            None
        }
    }
}

pub(super) fn route_auth(
    doc: &Document,
    route: &str,
    node: &Spanned<RouteAuthDoc>,
    errors: &mut Errors,
) -> Option<RouteAuth> {
    let auth = &node.value;
    let before = errors.found.len();
    if !doc.auth_providers.contains_key(&auth.provider.value) {
        errors.at(
            &auth.provider,
            format!(
                "unknown auth provider \"{}\" in route \"{route}\"",
                auth.provider.value
            ),
        );
    }
    if doc
        .sidecars
        .as_ref()
        .and_then(|s| s.ext_authz.as_ref())
        .is_none()
    {
        errors.at(
            node,
            format!("route \"{route}\" requires auth but sidecars.ext_authz is not configured"),
        );
    }
    for scope in &auth.scopes {
        if scope.value.is_empty() || scope.value.contains(char::is_whitespace) {
            errors.at(
                scope,
                format!("invalid scope \"{}\": scopes are single words", scope.value),
            );
        }
    }
    (errors.found.len() == before).then(|| RouteAuth {
        provider: auth.provider.value.clone(),
        scopes: auth.scopes.iter().map(|s| s.value.clone()).collect(),
    })
}

pub(super) fn rate_limits(
    doc: &Document,
    route: &RouteDoc,
    errors: &mut Errors,
) -> Vec<RateLimitRule> {
    if !route.rate_limit.is_empty()
        && doc
            .sidecars
            .as_ref()
            .and_then(|s| s.rate_limit.as_ref())
            .is_none()
    {
        errors.at(
            &route.rate_limit[0],
            format!(
                "route \"{}\" has rate limits but sidecars.rate_limit is not configured",
                route.name.value
            ),
        );
    }
    let mut ids = HashSet::new();
    let mut rules = Vec::new();
    for node in &route.rate_limit {
        if let Some(rule) = rate_limit(route, node, errors) {
            if !ids.insert(rule.id.clone()) {
                errors.at(
                    node,
                    format!(
                        "route \"{}\" has two rate limits with id \"{}\": give one a distinct name",
                        route.name.value, rule.id
                    ),
                );
            }
            rules.push(rule);
        }
    }
    rules
}

fn rate_limit(
    route: &RouteDoc,
    node: &Spanned<RateLimitDoc>,
    errors: &mut Errors,
) -> Option<RateLimitRule> {
    let before = errors.found.len();
    let doc = &node.value;
    let key = limit_key(route, doc, errors);
    let quota = limit_quota(node, errors);
    let algorithm = limit_algorithm(doc, errors);
    if let Some(burst) = &doc.burst {
        if burst.value == 0 {
            errors.at(burst, "burst must be at least 1".to_string());
        }
    }
    if let Some(name) = &doc.name {
        if !is_valid_name(&name.value) {
            errors.at(
                name,
                format!(
                    "invalid rate limit name \"{}\": use letters, digits, '.', '_' and '-'",
                    name.value
                ),
            );
        }
    }
    let key = key?;
    let quota = quota?;
    let id = match &doc.name {
        Some(name) => name.value.clone(),
        None => default_rule_id(&key, &quota),
    };
    (errors.found.len() == before).then(|| RateLimitRule {
        id,
        key,
        quota,
        burst: doc.burst.as_ref().map(|b| b.value),
        algorithm,
    })
}

/// What the rule counts by: the consumer (which needs auth on the route), the client's
/// address or a header.
fn limit_key(route: &RouteDoc, doc: &RateLimitDoc, errors: &mut Errors) -> Option<LimitKey> {
    match (doc.by.value.as_str(), &doc.header) {
        ("consumer", None) => {
            if route.auth.is_none() {
                errors.at(
                    &doc.by,
                    format!("rate limit by consumer in route \"{}\" needs auth on the route: the consumer comes from the token", route.name.value),
                );
            }
            Some(LimitKey::Consumer)
        }
        ("client_ip", None) => Some(LimitKey::ClientIp),
        ("header", Some(header)) => {
            let lower = header.value.to_ascii_lowercase();
            if !is_header_name(&lower) || lower.starts_with(':') {
                errors.at(header, format!("invalid header name \"{}\"", header.value));
            }
            Some(LimitKey::Header(lower))
        }
        ("header", None) => {
            errors.at(&doc.by, "rate limit by header needs `header:`".to_string());
            None
        }
        ("consumer" | "client_ip", Some(header)) => {
            errors.at(
                header,
                format!(
                    "`header:` only goes with `by: header`, not `by: {}`",
                    doc.by.value
                ),
            );
            None
        }
        (other, _) => {
            errors.at(
                &doc.by,
                format!(
                    "unknown rate limit key \"{other}\": expected consumer, client_ip or header"
                ),
            );
            None
        }
    }
}

/// How much: one quota, or one per tier named by a header.
fn limit_quota(node: &Spanned<RateLimitDoc>, errors: &mut Errors) -> Option<LimitQuota> {
    let doc = &node.value;
    match (&doc.requests, &doc.per, &doc.tier_header, &doc.tiers) {
        (Some(requests), Some(per), None, None) => {
            let per_value = Per::parse(&per.value);
            if per_value.is_none() {
                errors.at(
                    per,
                    format!(
                        "unknown window \"{}\": expected second, minute, hour or day",
                        per.value
                    ),
                );
            }
            if requests.value == 0 {
                errors.at(requests, "requests must be at least 1".to_string());
            }
            per_value.map(|per| {
                LimitQuota::Flat(Quota {
                    requests: requests.value,
                    per,
                })
            })
        }
        (None, None, Some(header), Some(tiers)) => {
            let lower = header.value.to_ascii_lowercase();
            if !is_header_name(&lower) || lower.starts_with(':') {
                errors.at(header, format!("invalid header name \"{}\"", header.value));
            }
            if tiers.is_empty() {
                errors.at(header, "tiers is empty".to_string());
            }
            let mut parsed = BTreeMap::new();
            for (tier, quota) in tiers {
                match parse_quota(&quota.value) {
                    Some(q) => {
                        parsed.insert(tier.clone(), q);
                    }
                    None => errors.at(
                        quota,
                        format!("invalid quota \"{}\" for tier \"{tier}\": expected REQUESTS/WINDOW, e.g. 100/minute", quota.value),
                    ),
                }
            }
            Some(LimitQuota::Tiered {
                header: lower,
                tiers: parsed,
            })
        }
        _ => {
            errors.at(
                node,
                "a rate limit needs either `requests` and `per`, or `tier_header` and `tiers`"
                    .to_string(),
            );
            None
        }
    }
}

/// The window arithmetic: sliding unless told otherwise, a token bucket when a burst is
/// given.
fn limit_algorithm(doc: &RateLimitDoc, errors: &mut Errors) -> LimitAlgorithm {
    match (&doc.algorithm, &doc.burst) {
        (None, None) => LimitAlgorithm::Sliding,
        (None, Some(_)) => LimitAlgorithm::TokenBucket,
        (Some(a), burst) => {
            match (a.value.as_str(), burst) {
                ("token_bucket", _) => LimitAlgorithm::TokenBucket,
                ("fixed" | "sliding", Some(burst)) => {
                    errors.at(
                        burst,
                        format!("burst needs algorithm token_bucket, not {}", a.value),
                    );
                    LimitAlgorithm::TokenBucket
                }
                ("fixed", None) => LimitAlgorithm::Fixed,
                ("sliding", None) => LimitAlgorithm::Sliding,
                (other, _) => {
                    errors.at(a, format!("unknown algorithm \"{other}\": expected fixed, sliding or token_bucket"));
                    LimitAlgorithm::Sliding
                }
            }
        }
    }
}

/// Ids name what a rule counts, so the one Envoy sends and the one the service reads agree
/// without either numbering rules.
fn default_rule_id(key: &LimitKey, quota: &LimitQuota) -> String {
    let base = match key {
        LimitKey::Consumer => "consumer".to_string(),
        LimitKey::ClientIp => "client_ip".to_string(),
        LimitKey::Header(h) => format!("header.{h}"),
    };
    match quota {
        LimitQuota::Flat(_) => base,
        LimitQuota::Tiered { header, .. } => format!("{base}.tiered.{header}"),
    }
}

/// `100/minute`.
fn parse_quota(text: &str) -> Option<Quota> {
    let (requests, per) = text.split_once('/')?;
    let requests: u64 = requests.trim().parse().ok().filter(|r| *r > 0)?;
    Some(Quota {
        requests,
        per: Per::parse(per.trim())?,
    })
}

pub(super) fn sidecars(doc: &Document, errors: &mut Errors) -> Sidecars {
    let Some(sidecars) = &doc.sidecars else {
        return Sidecars::default();
    };
    let ext_authz = sidecars.ext_authz.as_ref().and_then(|node| {
        let address = host_port(&node.value.address, "sidecar address", errors)?;
        Some(ExtAuthzSidecar {
            address,
            timeout: positive_duration(node.value.timeout.as_ref(), errors)
                .unwrap_or(DEFAULT_EXT_AUTHZ_TIMEOUT),
            failure_mode_allow: node.value.failure_mode_allow,
        })
    });
    let rate_limit = sidecars.rate_limit.as_ref().and_then(|node| {
        let domain = match &node.value.domain {
            Some(d) if !is_valid_name(&d.value) => {
                errors.at(d, format!("invalid rate limit domain \"{}\"", d.value));
                return None;
            }
            Some(d) => d.value.clone(),
            None => "tollgate".to_string(),
        };
        let address = host_port(&node.value.address, "sidecar address", errors)?;
        Some(RateLimitSidecar {
            address,
            timeout: positive_duration(node.value.timeout.as_ref(), errors)
                .unwrap_or(DEFAULT_RATE_LIMIT_TIMEOUT),
            failure_mode_deny: node.value.failure_mode_deny,
            domain,
        })
    });
    Sidecars {
        ext_authz,
        rate_limit,
    }
}
