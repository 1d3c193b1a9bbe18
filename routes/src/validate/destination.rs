//! A route's destination (`service`, `split` or `redirect`), its `mirror`, and a listener's
//! `redirect_to_https`.

use serde_saphyr::Spanned;

use super::Errors;
use crate::config::PathMatch;
use crate::destination::{
    Destination, HttpsRedirect, Mirror, Redirect, RedirectPath, WeightedService,
};
use crate::document::{Document, ListenerDoc, MirrorDoc, RedirectDoc, RouteDoc, SplitDoc};

const REDIRECT_CODES: [u16; 5] = [301, 302, 303, 307, 308];

/// Exactly one of `service`, `split` and `redirect`, each naming what exists.
pub(super) fn destination(
    doc: &Document,
    route: &RouteDoc,
    path: Option<&PathMatch>,
    errors: &mut Errors,
) -> Option<Destination> {
    let name = &route.name.value;
    match (&route.service, &route.split, &route.redirect) {
        (Some(service), None, None) => known_service(doc, name, service, errors)
            .then(|| Destination::Service(service.value.clone())),
        (None, Some(split), None) => self::split(doc, name, split, errors).map(Destination::Split),
        (None, None, Some(redirect)) => {
            redirect_only(route, errors);
            self::redirect(name, redirect, path, errors).map(Destination::Redirect)
        }
        _ => {
            errors.at(
                &route.name,
                format!("route \"{name}\" needs exactly one of service, split or redirect"),
            );
            None
        }
    }
}

fn known_service(
    doc: &Document,
    route: &str,
    service: &Spanned<String>,
    errors: &mut Errors,
) -> bool {
    let known = doc.services.contains_key(&service.value);
    if !known {
        errors.at(
            service,
            format!("unknown service \"{}\" in route \"{route}\"", service.value),
        );
    }
    known
}

/// Two or more services, each once, with whole-number weights adding up to 100.
fn split(
    doc: &Document,
    route: &str,
    split: &Spanned<Vec<Spanned<SplitDoc>>>,
    errors: &mut Errors,
) -> Option<Vec<WeightedService>> {
    let before = errors.found.len();
    if split.value.len() < 2 {
        errors.at(
            split,
            format!(
                "route \"{route}\": a split needs two or more services (for one, use `service`)"
            ),
        );
    }
    let mut services: Vec<WeightedService> = Vec::new();
    for entry in &split.value {
        let SplitDoc { service, weight } = &entry.value;
        known_service(doc, route, service, errors);
        if services.iter().any(|s| s.service == service.value) {
            errors.at(
                service,
                format!(
                    "route \"{route}\": service \"{}\" is in the split twice",
                    service.value
                ),
            );
        }
        if weight.value > 100 {
            errors.at(
                weight,
                format!("route \"{route}\": weight {} is over 100", weight.value),
            );
        }
        services.push(WeightedService {
            service: service.value.clone(),
            weight: u32::try_from(weight.value.min(100)).unwrap_or(100),
        });
    }
    let total: u64 = split.value.iter().map(|e| e.value.weight.value).sum();
    if total != 100 {
        errors.at(
            split,
            format!("route \"{route}\": the split's weights add up to {total}, not 100"),
        );
    }
    (errors.found.len() == before).then_some(services)
}

/// What changes in the URL; at least one thing must, or the client would be sent back to
/// where it was.
fn redirect(
    route: &str,
    node: &Spanned<RedirectDoc>,
    matched: Option<&PathMatch>,
    errors: &mut Errors,
) -> Option<Redirect> {
    let before = errors.found.len();
    let doc = &node.value;
    let code = doc.code.as_ref().map_or(301, |code| code.value);
    if let Some(code_node) = doc
        .code
        .as_ref()
        .filter(|_| !REDIRECT_CODES.iter().any(|&c| u64::from(c) == code))
    {
        errors.at(
            code_node,
            format!("redirect code {code}: expected 301, 302, 303, 307 or 308"),
        );
    }
    if let Some(host) = &doc.host {
        if host.value.is_empty() || host.value.contains(['*', ':', '/', ' ']) {
            errors.at(
                host,
                format!(
                    "redirect host \"{}\": expected a host name without port or path",
                    host.value
                ),
            );
        }
    }
    let port = doc
        .port
        .as_ref()
        .and_then(|port| match u16::try_from(port.value) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                errors.at(
                    port,
                    format!("redirect port {}: expected 1 to 65535", port.value),
                );
                None
            }
        });
    let path = match (&doc.path, &doc.path_prefix) {
        (Some(_), Some(prefix)) => {
            errors.at(
                prefix,
                "a redirect takes `path` or `path_prefix`, not both".to_string(),
            );
            None
        }
        (Some(path), None) => super::absolute_path(path, "redirect path", errors)
            .then(|| RedirectPath::Path(path.value.clone())),
        (None, Some(prefix)) => {
            if matches!(matched, Some(PathMatch::Regex(_))) {
                errors.at(
                    prefix,
                    format!(
                        "route \"{route}\": path_prefix needs a prefix or path match, not regex"
                    ),
                );
            }
            super::absolute_path(prefix, "redirect path_prefix", errors)
                .then(|| RedirectPath::Prefix(prefix.value.clone()))
        }
        (None, None) => None,
    };
    if !doc.https
        && doc.host.is_none()
        && doc.port.is_none()
        && doc.path.is_none()
        && doc.path_prefix.is_none()
    {
        errors.at(
            node,
            format!("route \"{route}\": the redirect changes nothing; give https, host, port, path or path_prefix"),
        );
    }
    (errors.found.len() == before).then(|| Redirect {
        https: doc.https,
        host: doc.host.as_ref().map(|h| h.value.to_ascii_lowercase()),
        port,
        path,
        code: u16::try_from(code).unwrap_or(301),
        strip_query: doc.strip_query,
    })
}

/// A redirect is answered by the gateway: what only applies to a forwarded request is
/// refused rather than silently ignored.
fn redirect_only(route: &RouteDoc, errors: &mut Errors) {
    let name = &route.name.value;
    refuse(errors, name, "mirror", route.mirror.as_deref());
    refuse(
        errors,
        name,
        "rewrite_prefix",
        route.rewrite_prefix.as_ref(),
    );
    refuse(
        errors,
        name,
        "rewrite_regex",
        route.rewrite_regex.as_deref(),
    );
    refuse(errors, name, "host_rewrite", route.host_rewrite.as_ref());
    refuse(errors, name, "timeout", route.timeout.as_ref());
    refuse(errors, name, "idle_timeout", route.idle_timeout.as_ref());
    refuse(errors, name, "retries", route.retries.as_deref());
    refuse(errors, name, "cache", route.cache.as_deref());
    refuse(
        errors,
        name,
        "max_request_bytes",
        route.max_request_bytes.as_ref(),
    );
    refuse(
        errors,
        name,
        "request_headers",
        route.request_headers.as_ref(),
    );
    refuse(errors, name, "rate_limit", route.rate_limit.first());
    refuse(errors, name, "websocket", route.websocket.as_ref());
    refuse(errors, name, "transcode", route.transcode.as_deref());
}

fn refuse<T>(errors: &mut Errors, route: &str, field: &str, node: Option<&Spanned<T>>) {
    if let Some(node) = node {
        errors.at(
            node,
            format!("route \"{route}\": `{field}` does not apply to a redirect"),
        );
    }
}

/// A copy of some requests to a known service.
pub(super) fn mirror(doc: &Document, route: &RouteDoc, errors: &mut Errors) -> Option<Mirror> {
    let node = route.mirror.as_ref()?;
    let MirrorDoc { service, percent } = &node.value;
    let mut valid = known_service(doc, &route.name.value, service, errors);
    let percent_value = percent.as_ref().map_or(100.0, |p| p.value);
    if let Some(percent) = percent
        .as_ref()
        .filter(|_| !(percent_value > 0.0 && percent_value <= 100.0))
    {
        errors.at(
            percent,
            format!(
                "mirror percent {}: expected above 0 and at most 100",
                percent.value
            ),
        );
        valid = false;
    }
    valid.then(|| Mirror {
        service: service.value.clone(),
        percent: percent_value,
    })
}

/// `redirect_to_https`: the name of another listener, one with `tls`, while this one has none.
pub(super) fn https_redirect(
    doc: &Document,
    listener: &ListenerDoc,
    errors: &mut Errors,
) -> Option<HttpsRedirect> {
    let target = listener.redirect_to_https.as_ref()?;
    if listener.tls.is_some() {
        errors.at(
            target,
            format!(
                "listener \"{}\" has tls itself; redirect_to_https belongs on a plain-HTTP listener",
                listener.name.value
            ),
        );
        return None;
    }
    let Some(tls_listener) = doc.listeners.iter().find(|l| l.name.value == target.value) else {
        errors.at(
            target,
            format!("unknown listener \"{}\" in redirect_to_https", target.value),
        );
        return None;
    };
    if tls_listener.tls.is_none() {
        errors.at(
            target,
            format!("listener \"{}\" has no tls to redirect to", target.value),
        );
        return None;
    }
    let port = tls_listener
        .address
        .value
        .parse::<std::net::SocketAddr>()
        .ok()?
        .port();
    Some(HttpsRedirect {
        listener: target.value.clone(),
        port,
    })
}
