//! Checks for the policy sections: per-route rate limits and the sidecars Envoy consults.
//! Auth providers and per-route auth are in [`super::auth`].

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_saphyr::Spanned;

use super::{host_port, is_header_name, is_valid_name, positive_duration, service_policy, Errors};
use crate::certificates::Certificates;
use crate::document::{Document, RateLimitDoc, RouteDoc, SidecarAddressDoc};
use crate::endpoint::Endpoint;
use crate::listener_tls::FileSource;
use crate::policy::{
    ExtAuthzSidecar, LimitAlgorithm, LimitKey, LimitMode, LimitQuota, Per, Quota, RateLimitRule,
    RateLimitSidecar, Sidecars, DEFAULT_MAX_KEYS, EXT_AUTHZ_CLUSTER, MAX_MAX_KEYS,
    RATE_LIMIT_CLUSTER,
};

/// Envoy's ext_authz default; a JWT check with cached keys takes well under a millisecond.
const DEFAULT_EXT_AUTHZ_TIMEOUT: Duration = Duration::from_millis(200);
const DEFAULT_RATE_LIMIT_TIMEOUT: Duration = Duration::from_millis(50);

pub(super) fn rate_limits(
    doc: &Document,
    route: &RouteDoc,
    errors: &mut Errors,
) -> Vec<RateLimitRule> {
    let mut ids = HashSet::new();
    let mut rules = Vec::new();
    for node in &route.rate_limit {
        if let Some(rule) = rate_limit(doc, route, node, errors) {
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
    // Only global rules need the service; local ones are Envoy's alone.
    let needs_service = route.rate_limit.iter().find(|node| !is_local(&node.value));
    if let Some(node) = needs_service {
        if doc
            .sidecars
            .as_ref()
            .and_then(|s| s.rate_limit.as_ref())
            .is_none()
        {
            errors.at(
                node,
                format!(
                    "route \"{}\" has rate limits but sidecars.rate_limit is not configured (or make them `mode: local`)",
                    route.name.value
                ),
            );
        }
    }
    rules
}

/// Whether the rule as written asks for local mode (an unknown mode is reported by
/// [`limit_mode`]).
fn is_local(doc: &RateLimitDoc) -> bool {
    doc.mode.as_ref().is_some_and(|mode| mode.value == "local")
}

fn rate_limit(
    file: &Document,
    route: &RouteDoc,
    node: &Spanned<RateLimitDoc>,
    errors: &mut Errors,
) -> Option<RateLimitRule> {
    let before = errors.found.len();
    let doc = &node.value;
    let key = limit_key(file, route, doc, errors);
    let quota = limit_quota(node, errors);
    let mode = limit_mode(route, doc, errors);
    let algorithm = match mode {
        Some(LimitMode::Local { .. }) => local_algorithm(route, doc, errors),
        _ => limit_algorithm(doc, errors),
    };
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
    let mode = mode?;
    if mode.is_local() {
        local_counts_fit(node, &quota, errors);
    }
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
        mode,
    })
}

/// `mode` and `max_keys`: global unless told otherwise; `max_keys` only bounds Envoy's own
/// buckets, so it means nothing to a global rule.
fn limit_mode(route: &RouteDoc, doc: &RateLimitDoc, errors: &mut Errors) -> Option<LimitMode> {
    let local = match doc.mode.as_ref().map(|m| (m, m.value.as_str())) {
        None | Some((_, "global")) => false,
        Some((_, "local")) => true,
        Some((mode, other)) => {
            errors.at(
                mode,
                format!("unknown rate limit mode \"{other}\": expected global or local"),
            );
            return None;
        }
    };
    match (&doc.max_keys, local) {
        (None, false) => Some(LimitMode::Global),
        (Some(max_keys), false) => {
            errors.at(
                max_keys,
                format!(
                    "max_keys in route \"{}\" only goes with `mode: local`: a global rule is counted by the rate-limit service, which keeps every key in its store",
                    route.name.value
                ),
            );
            None
        }
        (None, true) => Some(LimitMode::Local {
            max_keys: DEFAULT_MAX_KEYS,
        }),
        (Some(max_keys), true) => match u32::try_from(max_keys.value) {
            Ok(n) if (1..=MAX_MAX_KEYS).contains(&n) => Some(LimitMode::Local { max_keys: n }),
            _ => {
                errors.at(
                    max_keys,
                    format!(
                        "max_keys {} is out of range: between 1 and {MAX_MAX_KEYS} (each key's bucket is kept in every Envoy's memory)",
                        max_keys.value
                    ),
                );
                None
            }
        },
    }
}

/// A local rule is a token bucket, the one thing Envoy's local_ratelimit filter counts
/// with: `requests` refill continuously over `per`, and the bucket holds `burst` (by
/// default `requests`), exactly the service's `token_bucket`. A fixed or sliding window
/// has no local equivalent, so asking for one is refused rather than quietly changed.
fn local_algorithm(route: &RouteDoc, doc: &RateLimitDoc, errors: &mut Errors) -> LimitAlgorithm {
    if let Some(algorithm) = &doc.algorithm {
        if algorithm.value != "token_bucket" {
            errors.at(
                algorithm,
                format!(
                    "algorithm {} in route \"{}\" cannot be done with `mode: local`: Envoy counts local limits with token buckets only; drop `algorithm` (a local rule is a token_bucket) or use `mode: global`",
                    algorithm.value, route.name.value
                ),
            );
        }
    }
    LimitAlgorithm::TokenBucket
}

/// Envoy's token buckets count in 32 bits.
fn local_counts_fit(node: &Spanned<RateLimitDoc>, quota: &LimitQuota, errors: &mut Errors) {
    let doc = &node.value;
    let too_big = |n: u64| u32::try_from(n).is_err();
    if let Some(requests) = doc.requests.as_ref().filter(|r| too_big(r.value)) {
        errors.at(
            requests,
            format!(
                "requests {} is too many for `mode: local`: Envoy's buckets hold at most {}",
                requests.value,
                u32::MAX
            ),
        );
    }
    if let Some(burst) = doc.burst.as_ref().filter(|b| too_big(b.value)) {
        errors.at(
            burst,
            format!(
                "burst {} is too many for `mode: local`: Envoy's buckets hold at most {}",
                burst.value,
                u32::MAX
            ),
        );
    }
    if let LimitQuota::Tiered { tiers, .. } = quota {
        for (tier, quota) in tiers.iter().filter(|(_, q)| too_big(q.requests)) {
            errors.at(
                node,
                format!(
                    "tier \"{tier}\" allows {} requests, too many for `mode: local`: Envoy's buckets hold at most {}",
                    quota.requests,
                    u32::MAX
                ),
            );
        }
    }
}

/// What the rule counts by: the consumer (which needs auth on the route), the client's
/// address or a header (not one the route's API keys travel in, see [`key_provider_of`]).
fn limit_key(
    file: &Document,
    route: &RouteDoc,
    doc: &RateLimitDoc,
    errors: &mut Errors,
) -> Option<LimitKey> {
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
            } else if let Some(provider) = key_provider_of(file, route, &lower) {
                errors.at(
                    header,
                    format!(
                        "rate limit by header \"{}\" in route \"{}\" would never apply: API key provider \"{provider}\" reads its keys from that header, which the gateway removes before limits are counted (keys never reach upstreams); use `by: consumer`, which counts per key's consumer",
                        header.value, route.name.value
                    ),
                );
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

/// The API key provider of `route` whose keys travel in header `lower` (lower case), if any:
/// ext-authz removes that header from the requests it admits, and the rate-limit filter,
/// which runs after it so that limits can count per consumer, no longer sees it.
fn key_provider_of<'a>(file: &'a Document, route: &'a RouteDoc, lower: &str) -> Option<&'a str> {
    let auth = &route.auth.as_ref()?.value;
    let named = auth
        .provider
        .iter()
        .chain(auth.any_of.iter().flat_map(|list| &list.value));
    named.map(|name| name.value.as_str()).find(|name| {
        file.auth_providers.get(*name).is_some_and(|provider| {
            let provider = &provider.value;
            provider
                .kind
                .as_ref()
                .is_some_and(|kind| kind.value == "api_key")
                && provider
                    .header
                    .as_ref()
                    .is_some_and(|header| header.value.eq_ignore_ascii_case(lower))
        })
    })
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

/// A sidecar's replicas: one `HOST:PORT` or a list of distinct ones. The list's entries are
/// reported at the `address` field.
fn sidecar_addresses(
    node: &Spanned<SidecarAddressDoc>,
    errors: &mut Errors,
) -> Option<Vec<Endpoint>> {
    let texts: Vec<&String> = match &node.value {
        SidecarAddressDoc::One(text) => vec![text],
        SidecarAddressDoc::Replicas(list) => list.iter().collect(),
    };
    if texts.is_empty() {
        errors.at(node, "sidecar address list is empty".to_string());
        return None;
    }
    let mut addresses = Vec::new();
    for text in texts {
        let at = Spanned::new(text.clone(), node.referenced, node.defined);
        let address = host_port(&at, "sidecar address", errors)?;
        if addresses.contains(&address) {
            errors.at(node, format!("sidecar address \"{text}\" is listed twice"));
            return None;
        }
        addresses.push(address);
    }
    Some(addresses)
}

/// The sidecars; with `files`, a `tls` block's CA bundle is read and checked and its client
/// certificate put in `certificates` under the sidecar's cluster name.
pub(super) fn sidecars(
    doc: &Document,
    files: Option<&dyn FileSource>,
    certificates: &mut Certificates,
    errors: &mut Errors,
) -> Sidecars {
    let Some(sidecars) = &doc.sidecars else {
        return Sidecars::default();
    };
    let ext_authz = sidecars.ext_authz.as_ref().and_then(|node| {
        let addresses = sidecar_addresses(&node.value.address, errors)?;
        let tls = match &node.value.tls {
            Some(tls) => Some(service_policy::tls(
                "sidecars.ext_authz",
                EXT_AUTHZ_CLUSTER,
                tls,
                &addresses,
                files,
                certificates,
                errors,
            )?),
            None => None,
        };
        Some(ExtAuthzSidecar {
            addresses,
            timeout: positive_duration(node.value.timeout.as_ref(), errors)
                .unwrap_or(DEFAULT_EXT_AUTHZ_TIMEOUT),
            failure_mode_allow: node.value.failure_mode_allow,
            tls,
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
        let addresses = sidecar_addresses(&node.value.address, errors)?;
        let tls = match &node.value.tls {
            Some(tls) => Some(service_policy::tls(
                "sidecars.rate_limit",
                RATE_LIMIT_CLUSTER,
                tls,
                &addresses,
                files,
                certificates,
                errors,
            )?),
            None => None,
        };
        Some(RateLimitSidecar {
            addresses,
            timeout: positive_duration(node.value.timeout.as_ref(), errors)
                .unwrap_or(DEFAULT_RATE_LIMIT_TIMEOUT),
            failure_mode_deny: node.value.failure_mode_deny,
            domain,
            tls,
        })
    });
    Sidecars {
        ext_authz,
        rate_limit,
    }
}
