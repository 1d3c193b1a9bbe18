//! Checks for the per-route traffic policies (retries, idle timeout, CORS, header edits,
//! rewrites, body limit, response cache) and the top-level CORS default.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::{compile_regex, is_dns_name, is_header_name, methods, positive_duration, Errors};
use crate::document::{
    BackoffDoc, CacheDoc, CorsDoc, Document, HeaderEditsDoc, RegexRewriteDoc, RetriesDoc, RouteDoc,
};
use crate::duration;
use crate::route_policy::{
    AllowedOrigin, Backoff, CorsPolicy, HeaderEdits, RegexRewrite, ResponseCache, RetryOn,
    RetryPolicy, RouteCors, TrafficPolicy,
};

/// Each retry multiplies the load a struggling upstream sees; beyond this many tries a
/// retry policy turns one slow dependency into an outage (the "retry storm").
const MAX_ATTEMPTS: u64 = 10;

/// Without `on`, retry only failures where the upstream certainly did no work, so that
/// retrying a POST can never apply it twice.
const DEFAULT_RETRY_ON: [RetryOn; 2] = [RetryOn::ConnectFailure, RetryOn::RefusedStream];

/// Headers no route may add, set or remove: they frame the message or name the hop
/// (RFC 9110 §7.6.1), and Envoy refuses edits of `host` and pseudo-headers outright
/// (`host_rewrite` is the way to change the host).
const FRAMING_HEADERS: [&str; 8] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
];

pub(super) fn global_cors(doc: &Document, errors: &mut Errors) -> Option<CorsPolicy> {
    match doc.cors.as_ref().map(|c| cors(c, errors)) {
        Some(RouteCors::Own(policy)) => Some(policy),
        _ => None,
    }
}

/// Everything a route says about its traffic; `rewrite_prefix` is the route's own, for the
/// one-rewrite-at-a-time rule.
pub(super) fn traffic_policy(
    route: &RouteDoc,
    identity_headers: &[String],
    errors: &mut Errors,
) -> TrafficPolicy {
    let name = &route.name.value;
    let route_timeout = route
        .timeout
        .as_ref()
        .and_then(|t| duration::parse(&t.value).ok())
        .unwrap_or(crate::route_policy::DEFAULT_ROUTE_TIMEOUT);
    TrafficPolicy {
        retries: route
            .retries
            .as_ref()
            .and_then(|r| retries(name, r, route_timeout, errors)),
        idle_timeout: positive_duration(route.idle_timeout.as_ref(), errors),
        cors: route
            .cors
            .as_ref()
            .map(|c| cors(c, errors))
            .unwrap_or_default(),
        request_headers: route
            .request_headers
            .as_ref()
            .map(|h| header_edits(name, "request_headers", h, identity_headers, errors))
            .unwrap_or_default(),
        response_headers: route
            .response_headers
            .as_ref()
            .map(|h| header_edits(name, "response_headers", h, &[], errors))
            .unwrap_or_default(),
        rewrite_regex: route.rewrite_regex.as_ref().and_then(|r| {
            if route.rewrite_prefix.is_some() {
                errors.at(
                    r,
                    format!("route \"{name}\": use rewrite_prefix or rewrite_regex, not both"),
                );
            }
            rewrite_regex(r, errors)
        }),
        host_rewrite: route
            .host_rewrite
            .as_ref()
            .and_then(|h| host_rewrite(h, errors)),
        max_request_bytes: route.max_request_bytes.as_ref().and_then(|m| {
            // Envoy's buffer limit is a uint32.
            match u32::try_from(m.value) {
                Ok(bytes) if bytes > 0 => Some(bytes),
                _ => {
                    errors.at(
                        m,
                        format!(
                            "max_request_bytes {} is out of range: expected 1 to {}",
                            m.value,
                            u32::MAX
                        ),
                    );
                    None
                }
            }
        }),
        cache: route
            .cache
            .as_ref()
            .and_then(|c| response_cache(route, c, errors)),
        websocket: route.websocket.as_ref().is_some_and(|w| w.value),
    }
}

/// The cache key is the URL alone (Envoy's cache_v2 has no per-consumer key), so a cached
/// answer on a route with `auth` would be served to every other consumer, and to clients
/// with no token at all once ext-authz had let the first one through.
fn response_cache(
    route: &RouteDoc,
    node: &Spanned<CacheDoc>,
    errors: &mut Errors,
) -> Option<ResponseCache> {
    let before = errors.found.len();
    let name = &route.name.value;
    if route.auth.is_some() {
        errors.at(
            node,
            format!("route \"{name}\": cache cannot be combined with auth: the cache key has no identity, so one consumer's answer would be served to others"),
        );
    }
    // Envoy caches only GET and HEAD: on a route matching neither, `cache` would do nothing.
    let methods = &route.matcher.value.methods;
    if !methods.is_empty()
        && !methods
            .iter()
            .any(|m| m.value.eq_ignore_ascii_case("GET") || m.value.eq_ignore_ascii_case("HEAD"))
    {
        errors.at(
            node,
            format!("route \"{name}\": cache applies only to GET and HEAD, and the route matches neither"),
        );
    }
    let ttl = positive_duration(Some(&node.value.ttl), errors);
    if let Some(ttl) = ttl {
        // The TTL becomes `max-age`, which is delta-seconds.
        if ttl.subsec_nanos() != 0 {
            errors.at(
                &node.value.ttl,
                format!(
                    "cache.ttl \"{}\" must be whole seconds",
                    node.value.ttl.value
                ),
            );
        }
    }
    let ttl = ttl?;
    (errors.found.len() == before).then_some(ResponseCache { ttl })
}

fn retries(
    route: &str,
    node: &Spanned<RetriesDoc>,
    route_timeout: Duration,
    errors: &mut Errors,
) -> Option<RetryPolicy> {
    let before = errors.found.len();
    let doc = &node.value;
    let attempts = doc.attempts.value;
    if !(1..=MAX_ATTEMPTS).contains(&attempts) {
        errors.at(
            &doc.attempts,
            format!("route \"{route}\": retries.attempts {attempts} is out of range: expected 1 to {MAX_ATTEMPTS} (tries in total, the first included)"),
        );
    }
    let per_try_timeout = positive_duration(doc.per_try_timeout.as_ref(), errors);
    if let (Some(per_try), Some(node)) = (per_try_timeout, &doc.per_try_timeout) {
        // A try that may outlast the whole exchange leaves no time for another one.
        if per_try > route_timeout {
            errors.at(
                node,
                format!(
                    "route \"{route}\": per_try_timeout {} is longer than the route's timeout ({route_timeout:?})",
                    node.value
                ),
            );
        }
    }
    let on = match &doc.on {
        None => DEFAULT_RETRY_ON.to_vec(),
        Some(list) if list.value.is_empty() => {
            errors.at(
                list,
                format!("route \"{route}\": retries.on is empty: leave it out for the default, or list conditions"),
            );
            Vec::new()
        }
        Some(list) => {
            let mut on = Vec::new();
            for condition in &list.value {
                match RetryOn::parse(&condition.value) {
                    Some(c) if on.contains(&c) => errors.at(
                        condition,
                        format!("duplicate retry condition \"{}\"", condition.value),
                    ),
                    Some(c) => on.push(c),
                    None => errors.at(
                        condition,
                        format!(
                            "unknown retry condition \"{}\": expected 5xx, gateway-error, reset, connect-failure, retriable-4xx, refused-stream or a status code",
                            condition.value
                        ),
                    ),
                }
            }
            on
        }
    };
    let backoff = doc
        .backoff
        .as_ref()
        .map(|b| backoff(route, b, errors))
        .unwrap_or_default();
    (errors.found.len() == before).then(|| RetryPolicy {
        attempts: u32::try_from(attempts).unwrap_or(1),
        per_try_timeout,
        on,
        backoff,
    })
}

fn backoff(route: &str, node: &Spanned<BackoffDoc>, errors: &mut Errors) -> Backoff {
    let doc = &node.value;
    let base = positive_duration(Some(&doc.base), errors).unwrap_or(Backoff::default().base);
    // Envoy's default ceiling is ten times the base.
    let max = positive_duration(doc.max.as_ref(), errors).unwrap_or(base.saturating_mul(10));
    if max < base {
        if let Some(node) = &doc.max {
            errors.at(
                node,
                format!(
                    "route \"{route}\": backoff max {} is shorter than base {}",
                    node.value, doc.base.value
                ),
            );
        }
    }
    Backoff { base, max }
}

/// A disabled policy's other fields are still checked: switching it back on must not
/// uncover errors.
fn cors(node: &Spanned<CorsDoc>, errors: &mut Errors) -> RouteCors {
    let before = errors.found.len();
    let doc = &node.value;
    let no_origins = Vec::new();
    let listed = match &doc.origins {
        Some(origins) if origins.value.is_empty() => {
            errors.at(
                origins,
                "cors.origins is empty: list the origins allowed, or \"*\"".to_string(),
            );
            &origins.value
        }
        Some(origins) => &origins.value,
        None if doc.enabled => {
            errors.at(
                node,
                "cors needs origins: list the origins allowed, or \"*\"".to_string(),
            );
            &no_origins
        }
        None => &no_origins,
    };
    let mut origins = Vec::new();
    for origin in listed {
        if origin.value == "*" {
            // The Fetch standard ignores a wildcard on credentialed requests, so the
            // configuration could never do what it seems to say.
            if doc.credentials {
                errors.at(
                    origin,
                    "cors: origin \"*\" cannot be combined with credentials: true; list the origins".to_string(),
                );
            }
            origins.push(AllowedOrigin::Any);
        } else if let Some(o) = normalize_origin(&origin.value) {
            origins.push(AllowedOrigin::Exact(o));
        } else {
            errors.at(
                origin,
                format!(
                    "invalid cors origin \"{}\": expected \"*\" or scheme://host[:port], e.g. https://app.example.com",
                    origin.value
                ),
            );
        }
    }
    let methods = methods(&doc.methods, errors);
    let headers = header_names(&doc.headers, errors);
    let expose_headers = header_names(&doc.expose_headers, errors);
    let max_age = positive_duration(doc.max_age.as_ref(), errors);
    if let (Some(age), Some(node)) = (max_age, &doc.max_age) {
        // Access-Control-Max-Age is delta-seconds.
        if age.subsec_nanos() != 0 {
            errors.at(
                node,
                format!("cors.max_age \"{}\" must be whole seconds", node.value),
            );
        }
    }
    if !doc.enabled {
        return RouteCors::Off;
    }
    if errors.found.len() != before {
        return RouteCors::Inherit;
    }
    RouteCors::Own(CorsPolicy {
        origins,
        methods,
        headers,
        expose_headers,
        credentials: doc.credentials,
        max_age,
    })
}

/// An origin as browsers serialize it (RFC 6454 §6.2): lower-case scheme and host, a port
/// only when given, no path.
fn normalize_origin(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://")?;
    if !matches!(scheme, "http" | "https") || rest.is_empty() {
        return None;
    }
    valid_host_and_port(rest).then_some(lower)
}

/// `host[:port]`: an RFC 1123 name, an IPv4 literal or a bracketed IPv6 literal.
fn valid_host_and_port(text: &str) -> bool {
    let valid_port = |port: &str| port.parse::<u16>().is_ok_and(|p| p != 0);
    if let Some(rest) = text.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        return v6.parse::<std::net::Ipv6Addr>().is_ok()
            && (after.is_empty() || after.strip_prefix(':').is_some_and(valid_port));
    }
    let (host, port) = match text.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    port.is_none_or(valid_port) && is_dns_name(host)
}

fn header_names(names: &[Spanned<String>], errors: &mut Errors) -> Vec<String> {
    let mut valid = Vec::new();
    for name in names {
        if !is_header_name(&name.value) || name.value.starts_with(':') {
            errors.at(name, format!("invalid header name \"{}\"", name.value));
        } else {
            valid.push(name.value.to_ascii_lowercase());
        }
    }
    valid
}

fn header_edits(
    route: &str,
    field: &str,
    node: &Spanned<HeaderEditsDoc>,
    identity_headers: &[String],
    errors: &mut Errors,
) -> HeaderEdits {
    let doc = &node.value;
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let mut check = |name: &str, at: &Spanned<String>, op: &'static str, errors: &mut Errors| {
        let lower = name.to_ascii_lowercase();
        if !is_header_name(name) || name.starts_with(':') {
            errors.at(
                at,
                format!("invalid header name \"{name}\" in {field}.{op}"),
            );
            return None;
        }
        if FRAMING_HEADERS.contains(&lower.as_str()) {
            errors.at(
                at,
                format!(
                    "route \"{route}\": {field} may not change \"{lower}\"{}",
                    if lower == "host" {
                        "; use host_rewrite"
                    } else {
                        ""
                    }
                ),
            );
            return None;
        }
        // Envoy overwrites `server` on every response after route edits, so an added or
        // set value would silently never be seen (and an upstream's never leaks).
        if op != "remove" && field == "response_headers" && lower == "server" {
            errors.at(
                at,
                format!("route \"{route}\": response_headers.{op} cannot change \"server\": the gateway always sets its own"),
            );
            return None;
        }
        if op != "remove" && identity_headers.contains(&lower) {
            errors.at(
                at,
                format!("route \"{route}\": {field}.{op} may not set \"{lower}\": ext-authz sets it from a verified token"),
            );
            return None;
        }
        if let Some(other) = seen.insert(lower.clone(), op) {
            errors.at(
                at,
                format!("route \"{route}\": header \"{lower}\" is in both {field}.{other} and {field}.{op}"),
            );
            return None;
        }
        Some(lower)
    };
    let mut edits = HeaderEdits::default();
    for name in &doc.remove {
        if let Some(lower) = check(&name.value, name, "remove", errors) {
            edits.remove.push(lower);
        }
    }
    for (op, entries) in [("set", &doc.set), ("add", &doc.add)] {
        for (name, value) in entries {
            // CR or LF would end the header and start another (response splitting).
            if value
                .value
                .bytes()
                .any(|b| b.is_ascii_control() && b != b'\t')
            {
                errors.at(
                    value,
                    format!("header \"{name}\" in {field}.{op}: value has a control character"),
                );
                continue;
            }
            if let Some(lower) = check(name, value, op, errors) {
                let target = if op == "set" {
                    &mut edits.set
                } else {
                    &mut edits.add
                };
                target.insert(lower, value.value.clone());
            }
        }
    }
    edits
}

fn rewrite_regex(node: &Spanned<RegexRewriteDoc>, errors: &mut Errors) -> Option<RegexRewrite> {
    let doc = &node.value;
    let groups = compile_regex(&doc.pattern, &doc.pattern.value, errors)?.captures_len() - 1;
    // RE2's rewrite strings know only `\0`..`\9` and `\\`; anything else is refused by
    // Envoy at load time, so refuse it here with a location instead.
    let mut chars = doc.substitution.value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            continue;
        }
        match chars.next() {
            Some('\\') => {}
            Some(d) if d.is_ascii_digit() => {
                let group = d.to_digit(10).unwrap_or(0) as usize;
                if group > groups {
                    errors.at(
                        &doc.substitution,
                        format!(
                            "substitution \"{}\" refers to group \\{group}, but the pattern has {groups}",
                            doc.substitution.value
                        ),
                    );
                    return None;
                }
            }
            _ => {
                errors.at(
                    &doc.substitution,
                    format!(
                        "substitution \"{}\": a backslash must be followed by a group digit or another backslash",
                        doc.substitution.value
                    ),
                );
                return None;
            }
        }
    }
    Some(RegexRewrite {
        pattern: doc.pattern.value.clone(),
        substitution: doc.substitution.value.clone(),
    })
}

fn host_rewrite(node: &Spanned<String>, errors: &mut Errors) -> Option<String> {
    if valid_host_and_port(&node.value) {
        Some(node.value.to_ascii_lowercase())
    } else {
        errors.at(
            node,
            format!(
                "invalid host_rewrite \"{}\": expected host[:port], e.g. invoices.internal",
                node.value
            ),
        );
        None
    }
}
