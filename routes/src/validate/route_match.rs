//! A route's `match`: path, methods, headers, host names and query parameters, and the
//! check that no route is made unreachable by one before it.

use std::collections::{BTreeMap, HashMap};

use serde_saphyr::Spanned;

use super::{absolute_path, compile_regex, is_header_name, methods, Errors};
use crate::config::{host_covers, PathMatch, QueryMatch, Route, RouteMatch};
use crate::document::{MatchDoc, QueryValueDoc, RouteDoc};

pub(super) fn route_match(
    route: &str,
    doc: &Spanned<MatchDoc>,
    errors: &mut Errors,
) -> Option<RouteMatch> {
    let m = &doc.value;
    if let Some(service) = &m.grpc_service {
        if m.prefix.is_some() || m.path.is_some() || m.regex.is_some() {
            errors.at(
                service,
                format!("route \"{route}\": grpc_service is a path match; give it without prefix, path or regex"),
            );
        } else if !is_grpc_service_name(&service.value) {
            errors.at(
                service,
                format!(
                    "grpc_service \"{}\": expected a full service name, e.g. shop.v1.Orders",
                    service.value
                ),
            );
        }
    }
    let path = match (&m.prefix, &m.path, &m.regex) {
        (None, None, None) if m.grpc_service.is_some() => m
            .grpc_service
            .as_ref()
            .map(|service| PathMatch::Prefix(format!("/{}/", service.value))),
        (Some(prefix), None, None) => {
            absolute_path(prefix, "prefix", errors).then(|| PathMatch::Prefix(prefix.value.clone()))
        }
        (None, Some(path), None) => {
            absolute_path(path, "path", errors).then(|| PathMatch::Exact(path.value.clone()))
        }
        (None, None, Some(regex)) => {
            compile_regex(regex, &format!("^(?:{})$", regex.value), errors)
                .map(|_| PathMatch::Regex(regex.value.clone()))
        }
        _ => {
            errors.at(
                doc,
                format!("route \"{route}\": match needs exactly one of prefix, path, regex or grpc_service"),
            );
            None
        }
    };
    let methods = methods(&m.methods, errors);
    let mut headers = BTreeMap::new();
    for (name, value) in &m.headers {
        if !is_header_name(name) {
            errors.at(value, format!("invalid header name \"{name}\""));
        } else if name.starts_with(':') {
            errors.at(
                value,
                format!(
                    "header \"{name}\": match pseudo-headers with prefix, path, regex or methods"
                ),
            );
        }
        headers.insert(name.to_ascii_lowercase(), value.value.clone());
    }
    Some(RouteMatch {
        path: path?,
        methods,
        headers,
        hosts: hosts(&m.hosts, errors),
        query: query(&m.query, errors),
        grpc: m.grpc_service.is_some(),
    })
}

/// A protobuf full name: dot-separated identifiers (package, then service).
fn is_grpc_service_name(name: &str) -> bool {
    name.split('.').all(|part| {
        part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// Host names, lower-cased (Envoy compares them so); each a DNS name or IP address, or a
/// `*.` wildcard followed by one.
fn hosts(nodes: &[Spanned<String>], errors: &mut Errors) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    for node in nodes {
        let host = node.value.to_ascii_lowercase();
        if let Some(problem) = host_problem(&host) {
            errors.at(node, format!("invalid host \"{}\": {problem}", node.value));
        } else if hosts.contains(&host) {
            errors.at(node, format!("host \"{}\" is listed twice", node.value));
        } else {
            hosts.push(host);
        }
    }
    hosts
}

fn host_problem(host: &str) -> Option<&'static str> {
    if host == "*" {
        return Some("leave out `hosts` to match any host");
    }
    if host.contains(':') {
        return Some("a host matches without its port; leave the port out");
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.contains('*') {
        return Some("a wildcard is only `*.` before a name, as in \"*.example.com\"");
    }
    let labels_ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    (!labels_ok).then_some("expected a DNS name or an IPv4 address, perhaps after `*.`")
}

/// Query parameters: a value (text, or a number written as its decimal text) or presence.
fn query(
    nodes: &BTreeMap<String, Spanned<QueryValueDoc>>,
    errors: &mut Errors,
) -> BTreeMap<String, QueryMatch> {
    let mut query = BTreeMap::new();
    for (name, node) in nodes {
        if name.is_empty() {
            errors.at(node, "a query parameter needs a name".to_string());
            continue;
        }
        let matcher = match &node.value {
            QueryValueDoc::Text(value) => QueryMatch::Exact(value.clone()),
            QueryValueDoc::Integer(value) => QueryMatch::Exact(value.to_string()),
            QueryValueDoc::Present(present) if present.present => QueryMatch::Present,
            QueryValueDoc::Present(_) => {
                errors.at(
                    node,
                    format!(
                        "query parameter \"{name}\": `present: false` cannot be matched; leave the parameter out"
                    ),
                );
                continue;
            }
        };
        query.insert(name.clone(), matcher);
    }
    query
}

/// Refuses every route that a route before it makes unreachable: one served on the same
/// listeners that matches every request it would match. Both routes are named, each with
/// its line, so the fix (reorder, or narrow the first) is plain.
///
/// Only a route whose path covers a later one's can cover it, so the routes seen so far are
/// indexed by path and each route is compared with those alone: a table of 10,000 routes
/// would otherwise take 50 million comparisons at every reload.
pub(super) fn unreachable(routes: &[(&RouteDoc, &Route)], errors: &mut Errors) {
    let mut seen = PathIndex::default();
    for (later_index, (later_doc, later)) in routes.iter().enumerate() {
        let earlier = seen
            .candidates(&later.matcher.path)
            .into_iter()
            .map(|index| &routes[index])
            .find(|(_, earlier)| covers(earlier, later));
        seen.insert(&later.matcher.path, later_index);
        if let Some((earlier_doc, earlier)) = earlier {
            errors.at(
                &later_doc.matcher,
                format!(
                    "route \"{}\" is never matched: route \"{}\" (line {}) comes first and matches every request it would",
                    later.name,
                    earlier.name,
                    earlier_doc.matcher.referenced.line()
                ),
            );
        }
    }
}

/// Routes by path, as positions in the table.
#[derive(Default)]
struct PathIndex<'r> {
    prefixes: HashMap<&'r str, Vec<usize>>,
    exact: HashMap<&'r str, Vec<usize>>,
    regexes: HashMap<&'r str, Vec<usize>>,
}

impl<'r> PathIndex<'r> {
    fn insert(&mut self, path: &'r PathMatch, index: usize) {
        let (map, key) = match path {
            PathMatch::Prefix(prefix) => (&mut self.prefixes, prefix),
            PathMatch::Exact(exact) => (&mut self.exact, exact),
            PathMatch::Regex(regex) => (&mut self.regexes, regex),
        };
        map.entry(key.as_str()).or_default().push(index);
    }

    /// The routes whose path may cover `path`, in table order: the prefixes of a prefix or
    /// an exact path, the same exact path, the same regex.
    fn candidates(&self, path: &PathMatch) -> Vec<usize> {
        let leading = |path: &'_ str| -> Vec<usize> {
            (0..=path.len())
                .filter(|&end| path.is_char_boundary(end))
                .filter_map(|end| self.prefixes.get(&path[..end]))
                .flatten()
                .copied()
                .collect()
        };
        let mut found = match path {
            PathMatch::Prefix(prefix) => leading(prefix),
            PathMatch::Exact(exact) => {
                let mut found = leading(exact);
                found.extend(self.exact.get(exact.as_str()).into_iter().flatten());
                found
            }
            PathMatch::Regex(regex) => self
                .regexes
                .get(regex.as_str())
                .cloned()
                .unwrap_or_default(),
        };
        found.sort_unstable();
        found
    }
}

/// Whether every request `later` matches is matched by `earlier` first. Conservative: a
/// regex only covers the same regex, so a pair it cannot decide is let through.
fn covers(earlier: &Route, later: &Route) -> bool {
    let (a, b) = (&earlier.matcher, &later.matcher);
    let listener = earlier.listener.is_none() || earlier.listener == later.listener;
    let hosts = a.hosts.is_empty()
        || (!b.hosts.is_empty()
            && b.hosts
                .iter()
                .all(|host| a.hosts.iter().any(|pattern| host_covers(pattern, host))));
    let methods = a.methods.is_empty()
        || (!b.methods.is_empty() && b.methods.iter().all(|m| a.methods.contains(m)));
    let headers = a
        .headers
        .iter()
        .all(|(name, value)| b.headers.get(name) == Some(value));
    let query = a
        .query
        .iter()
        .all(|(name, wanted)| match (wanted, b.query.get(name)) {
            (QueryMatch::Present, Some(_)) => true,
            (QueryMatch::Exact(value), Some(QueryMatch::Exact(other))) => value == other,
            _ => false,
        });
    let path = match (&a.path, &b.path) {
        (PathMatch::Prefix(prefix), PathMatch::Prefix(other) | PathMatch::Exact(other)) => {
            other.starts_with(prefix.as_str())
        }
        (PathMatch::Exact(path), PathMatch::Exact(other)) => path == other,
        (PathMatch::Regex(regex), PathMatch::Regex(other)) => regex == other,
        _ => false,
    };
    let grpc = !a.grpc || b.grpc;
    listener && hosts && methods && headers && query && path && grpc
}
