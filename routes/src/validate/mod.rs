//! Semantic checks over a [`Document`]: every problem is collected, none stops the others.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_saphyr::Spanned;

pub(crate) mod api_keys;
mod auth;
mod destination;
mod ip_rules;
mod listener_limits;
mod listener_tls;
mod observability;
mod policy;
mod route_match;
mod route_policy;
mod service_policy;
mod transcode;

use crate::certificates::{CertificateAndKey, CertificateError, CertificateFiles, Certificates};
use crate::config::{
    EscapedSlashes, Listener, PathMatch, Route, RouteMatch, RoutesConfig, Service,
};
use crate::document::{Document, RouteDoc, ServiceDoc};
use crate::duration;
use crate::endpoint::Endpoint;
use crate::error::{ConfigError, ConfigErrors};
use crate::listener_tls::FileSource;

/// The default upstream connect timeout, Envoy's own default for clusters.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const RESERVED_PREFIX: &str = "tollgate_";
const DEFAULT_HEALTH_PATH: &str = "/health";

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Validates `doc`; with `files`, also reads and checks the certificate of every TLS listener
/// and the client CA bundle and CRLs of one that verifies clients, and the CA bundle and
/// client certificate of every TLS service that names them.
pub(crate) fn validate(
    file: &str,
    doc: Document,
    files: Option<&dyn FileSource>,
) -> Result<(RoutesConfig, Certificates), ConfigErrors> {
    let mut errors = Errors {
        file,
        found: Vec::new(),
    };
    if doc.version.value != 1 {
        errors.at(
            &doc.version,
            format!("unsupported version {}: expected 1", doc.version.value),
        );
    }
    let (listeners, mut certificates) = listeners(&doc, files, &mut errors);
    let services: BTreeMap<String, Service> = doc
        .services
        .iter()
        .filter_map(|(name, service)| {
            self::service(name, service, files, &mut certificates, &mut errors)
        })
        .map(|s| (s.name.clone(), s))
        .collect();
    let auth_providers = auth::auth_providers(&doc, &mut errors);
    if let Some(files) = files {
        auth::provider_key_sets(&doc, &auth_providers, files, &mut certificates, &mut errors);
    }
    let sidecars = policy::sidecars(&doc, files, &mut certificates, &mut errors);
    let routes = routes(
        &doc,
        &crate::policy::identity_headers(&auth_providers),
        files,
        &mut errors,
    );
    auth::certificate_listeners(&doc, &listeners, &routes, &auth_providers, &mut errors);
    let observability = observability::observability(&doc, &mut errors);
    let cors = route_policy::global_cors(&doc, &mut errors);

    if errors.found.is_empty() {
        let config = RoutesConfig {
            listeners,
            services,
            routes,
            auth_providers,
            sidecars,
            observability,
            cors,
        };
        Ok((config, certificates))
    } else {
        errors.found.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(errors.found))
    }
}

pub(crate) struct Errors<'f> {
    file: &'f str,
    found: Vec<ConfigError>,
}

impl<'f> Errors<'f> {
    pub(crate) fn new(file: &'f str) -> Self {
        Errors {
            file,
            found: Vec::new(),
        }
    }

    /// `value` if nothing was found wrong; every problem otherwise, in file order.
    pub(crate) fn into_result<T>(mut self, value: T) -> Result<T, ConfigErrors> {
        if self.found.is_empty() {
            Ok(value)
        } else {
            self.found.sort_by_key(|e| (e.line, e.column));
            Err(ConfigErrors(self.found))
        }
    }
}

impl Errors<'_> {
    pub(crate) fn at<T>(&mut self, node: &Spanned<T>, message: String) {
        self.at_location(node.referenced, message);
    }

    pub(crate) fn at_location(&mut self, location: serde_saphyr::Location, message: String) {
        self.found.push(ConfigError {
            file: self.file.to_string(),
            line: location.line(),
            column: location.column(),
            message,
        });
    }
}

fn listeners(
    doc: &Document,
    files: Option<&dyn FileSource>,
    errors: &mut Errors,
) -> (Vec<Listener>, Certificates) {
    let mut names = HashMap::new();
    let mut addresses: Vec<(SocketAddr, &str)> = Vec::new();
    let mut valid = Vec::new();
    let mut certificates = Certificates::default();
    for listener in &doc.listeners {
        check_name(&listener.name, "listener", errors);
        if names.insert(listener.name.value.as_str(), ()).is_some() {
            errors.at(
                &listener.name,
                format!("duplicate listener name \"{}\"", listener.name.value),
            );
        }
        let address = match listener.address.value.parse::<SocketAddr>() {
            Ok(address) => address,
            Err(_) => {
                errors.at(
                    &listener.address,
                    format!(
                        "invalid listener address \"{}\": expected IP:PORT, e.g. 0.0.0.0:8080",
                        listener.address.value
                    ),
                );
                continue;
            }
        };
        // A wildcard address takes the port on every interface, so it clashes with any
        // other listener on that port, as bind(2) would.
        if let Some((_, other)) = addresses.iter().find(|(a, _)| {
            a.port() == address.port()
                && (a.ip() == address.ip()
                    || a.ip().is_unspecified()
                    || address.ip().is_unspecified())
        }) {
            errors.at(
                &listener.address,
                format!(
                    "listener \"{}\" address {} overlaps listener \"{}\"",
                    listener.name.value, address, other
                ),
            );
        }
        addresses.push((address, &listener.name.value));
        let health_path = match &listener.health_path {
            Some(path) if !path.value.is_empty() && !absolute_path(path, "health_path", errors) => {
                None
            }
            _ => listener_health_path(listener),
        };
        let escaped_slashes = match listener.escaped_slashes.as_ref() {
            None => EscapedSlashes::Reject,
            Some(node) => match node.value.as_str() {
                "reject" => EscapedSlashes::Reject,
                "redirect" => EscapedSlashes::Redirect,
                "keep" => EscapedSlashes::Keep,
                other => {
                    errors.at(
                        node,
                        format!("unknown escaped_slashes \"{other}\": expected reject, redirect or keep"),
                    );
                    EscapedSlashes::Reject
                }
            },
        };
        let (tls, served) = match &listener.tls {
            Some(tls) => listener_tls::listener_tls(&listener.name.value, tls, files, errors),
            None => (None, Vec::new()),
        };
        if !served.is_empty() {
            certificates.insert_listener(listener.name.value.clone(), served);
        }
        let redirect_to_https = destination::https_redirect(doc, listener, errors);
        let ip_rules = ip_rules::ip_rules(&listener.allow_ips, &listener.deny_ips, errors);
        let trusted_proxies = trusted_proxies(listener.trusted_proxies.as_ref(), errors);
        let limits = listener_limits::listener_limits(listener.limits.as_ref(), errors);
        valid.push(Listener {
            name: listener.name.value.clone(),
            address,
            health_path,
            escaped_slashes,
            tls,
            redirect_to_https,
            ip_rules,
            trusted_proxies,
            limits,
        });
    }
    (valid, certificates)
}

/// More hops than any real chain of load balancers: a larger number is a typo, and would
/// let clients choose their address by padding `x-forwarded-for`.
const MAX_TRUSTED_PROXIES: u64 = 8;

fn trusted_proxies(node: Option<&Spanned<u64>>, errors: &mut Errors) -> u32 {
    match node {
        None => 0,
        Some(node) if node.value > MAX_TRUSTED_PROXIES => {
            errors.at(
                node,
                format!(
                    "trusted_proxies {} is out of range: expected 0 to {MAX_TRUSTED_PROXIES}, the number of proxies in front of the listener",
                    node.value
                ),
            );
            0
        }
        Some(node) => node.value as u32,
    }
}

fn service(
    name: &str,
    doc: &ServiceDoc,
    files: Option<&dyn FileSource>,
    certificates: &mut Certificates,
    errors: &mut Errors,
) -> Option<Service> {
    let before = errors.found.len();
    if !is_valid_name(name) {
        errors.at(
            &doc.endpoints,
            format!("invalid service name \"{name}\": use letters, digits, '.', '_' and '-'"),
        );
    }
    // Envoy clusters Tollgate adds itself (the xDS connection, the sidecars) use this prefix.
    if name.starts_with(RESERVED_PREFIX) {
        errors.at(
            &doc.endpoints,
            format!("service name \"{name}\" is reserved: names starting with \"{RESERVED_PREFIX}\" are Tollgate's own"),
        );
    }
    if doc.endpoints.value.is_empty() {
        errors.at(
            &doc.endpoints,
            format!("service \"{name}\" has no endpoints"),
        );
    }
    let endpoints: Vec<Endpoint> = doc
        .endpoints
        .value
        .iter()
        .filter_map(|e| match parse_endpoint(&e.value) {
            Some(endpoint) => Some(endpoint),
            None => {
                errors.at(
                    e,
                    format!(
                        "invalid endpoint \"{}\" in service \"{name}\": expected HOST:PORT",
                        e.value
                    ),
                );
                None
            }
        })
        .collect();
    let connect_timeout =
        positive_duration(doc.connect_timeout.as_ref(), errors).unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let policy = service_policy::service_policy(name, doc, &endpoints, files, certificates, errors);
    (errors.found.len() == before).then(|| Service {
        name: name.to_string(),
        endpoints,
        connect_timeout,
        policy,
    })
}

/// `identity_headers`: what ext-authz sets, which no route may set instead.
fn routes(
    doc: &Document,
    identity_headers: &[String],
    files: Option<&dyn FileSource>,
    errors: &mut Errors,
) -> Vec<Route> {
    let mut names = HashMap::with_capacity(doc.routes.len());
    // Each valid route beside the document it came from, in two lists so that the routes
    // need no second move into a list of their own.
    let mut valid = Vec::with_capacity(doc.routes.len());
    let mut valid_docs = Vec::with_capacity(doc.routes.len());
    for route in &doc.routes {
        check_name(&route.name, "route", errors);
        if names.insert(route.name.value.as_str(), ()).is_some() {
            errors.at(
                &route.name,
                format!("duplicate route name \"{}\"", route.name.value),
            );
        }
        if let Some(valid_route) = self::route(doc, route, identity_headers, files, errors) {
            valid_docs.push(route);
            valid.push(valid_route);
        }
    }
    let in_order: Vec<(&RouteDoc, &Route)> = valid_docs.into_iter().zip(&valid).collect();
    route_match::unreachable(&in_order, errors);
    valid
}

fn route(
    doc: &Document,
    route: &RouteDoc,
    identity_headers: &[String],
    files: Option<&dyn FileSource>,
    errors: &mut Errors,
) -> Option<Route> {
    let before = errors.found.len();
    let name = &route.name.value;
    if let Some(listener) = &route.listener {
        match doc.listeners.iter().find(|l| l.name.value == listener.value) {
            None => errors.at(
                listener,
                format!(
                    "unknown listener \"{}\" in route \"{name}\"",
                    listener.value
                ),
            ),
            Some(l) if l.redirect_to_https.is_some() => errors.at(
                listener,
                format!(
                    "route \"{name}\" is never matched: listener \"{}\" redirects every request to https",
                    listener.value
                ),
            ),
            Some(_) => {}
        }
    }
    let matcher = route_match::route_match(name, &route.matcher, errors);
    let destination =
        destination::destination(doc, route, matcher.as_ref().map(|m| &m.path), errors);
    let mirror = destination::mirror(doc, route, errors);
    let ip_rules = ip_rules::ip_rules(&route.allow_ips, &route.deny_ips, errors);
    let transcode = route
        .transcode
        .as_ref()
        .and_then(|t| transcode::transcode(t, files, errors));
    if let (Some(m), Some(destination)) = (&matcher, &destination) {
        if m.grpc || route.transcode.is_some() {
            grpc_services_only(doc, route, destination, errors);
        }
    }
    if let Some(rewrite) = &route.rewrite_prefix {
        if !rewrite.value.starts_with('/') {
            errors.at(
                rewrite,
                format!("rewrite_prefix \"{}\" must start with '/'", rewrite.value),
            );
        }
        if matches!(
            matcher,
            Some(RouteMatch {
                path: PathMatch::Regex(_),
                ..
            })
        ) {
            errors.at(
                rewrite,
                format!("route \"{name}\": rewrite_prefix needs a prefix or path match, not regex"),
            );
        }
    }
    if let (Some(m), Some(path)) = (&matcher, &route.matcher.value.path) {
        // The gateway answers its health path itself, before any route: a route for exactly
        // that path would never see a request, so say so instead of silently shadowing it.
        if let PathMatch::Exact(exact) = &m.path {
            let shadowed_on: Vec<&str> = doc
                .listeners
                .iter()
                .filter(|l| {
                    route
                        .listener
                        .as_ref()
                        .is_none_or(|r| r.value == l.name.value)
                })
                .filter(|l| listener_health_path(l).as_deref() == Some(exact.as_str()))
                .map(|l| l.name.value.as_str())
                .collect();
            if !shadowed_on.is_empty() {
                errors.at(
                    path,
                    format!(
                        "route \"{name}\": {exact} is the gateway's own health path on listener \"{}\"; set that listener's health_path to another path (or \"\" to turn it off)",
                        shadowed_on.join("\", \"")
                    ),
                );
            }
        }
    }
    let timeout = positive_duration(route.timeout.as_ref(), errors);
    let auth = route
        .auth
        .as_ref()
        .and_then(|a| auth::route_auth(doc, name, a, errors));
    let rate_limits = policy::rate_limits(doc, route, errors);
    let traffic = route_policy::traffic_policy(route, identity_headers, errors);
    let matcher = matcher?;
    let destination = destination?;
    (errors.found.len() == before).then(|| Route {
        name: name.clone(),
        listener: route.listener.as_ref().map(|l| l.value.clone()),
        matcher,
        destination,
        mirror,
        transcode,
        ip_rules,
        rewrite_prefix: route.rewrite_prefix.as_ref().map(|r| r.value.clone()),
        timeout,
        auth,
        rate_limits,
        traffic,
    })
}

/// A `grpc_service` route forwards to services that speak gRPC: an HTTP/1.1 upstream cannot
/// carry it.
fn grpc_services_only(
    doc: &Document,
    route: &RouteDoc,
    destination: &crate::destination::Destination,
    errors: &mut Errors,
) {
    for service in destination.services() {
        let speaks_grpc = doc
            .services
            .get(service)
            .is_some_and(|s| s.protocol.as_ref().is_some_and(|p| p.value == "grpc"));
        if !speaks_grpc {
            errors.at(
                &route.matcher,
                format!(
                    "route \"{}\" forwards gRPC, but service \"{service}\" has no `protocol: grpc`",
                    route.name.value
                ),
            );
        }
    }
}

/// Compiles `pattern` (the regex of `node`, perhaps anchored); a bad one is reported at `node`
/// with the compiler's own reason.
pub(super) fn compile_regex(
    node: &Spanned<String>,
    pattern: &str,
    errors: &mut Errors,
) -> Option<regex::Regex> {
    regex::Regex::new(pattern)
        .map_err(|e| {
            let reason = e.to_string();
            let reason = reason.lines().last().unwrap_or(&reason).trim().to_string();
            errors.at(node, format!("invalid regex \"{}\": {reason}", node.value));
        })
        .ok()
}

/// Method names, upper-cased; an unknown one is reported where it stands.
pub(super) fn methods(nodes: &[Spanned<String>], errors: &mut Errors) -> Vec<String> {
    let mut methods = Vec::new();
    for method in nodes {
        let upper = method.value.to_ascii_uppercase();
        if METHODS.contains(&upper.as_str()) {
            methods.push(upper);
        } else {
            errors.at(method, format!("unknown HTTP method \"{}\"", method.value));
        }
    }
    methods
}

pub(super) fn absolute_path(node: &Spanned<String>, field: &str, errors: &mut Errors) -> bool {
    let ok = node.value.starts_with('/');
    if !ok {
        errors.at(
            node,
            format!("{field} \"{}\" must start with '/'", node.value),
        );
    }
    ok
}

/// The file routes.yaml names at `node` (as its `field`), or an error there saying why not.
pub(super) fn read_file(
    files: &dyn FileSource,
    node: &Spanned<String>,
    field: &str,
    errors: &mut Errors,
) -> Option<Vec<u8>> {
    match files.read(std::path::Path::new(&node.value)) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            errors.at(node, format!("cannot read {field} \"{}\": {e}", node.value));
            None
        }
    }
}

/// The bundle the CA file at `node` (the `field` there) names, when it is PEM and at least
/// one of its certificates can be trusted (see [`crate::service_policy::check_ca_bundle`]).
pub(super) fn ca_bundle(
    files: &dyn FileSource,
    node: &Spanned<String>,
    field: &str,
    errors: &mut Errors,
) -> Option<Vec<u8>> {
    let pem = read_file(files, node, field, errors)?;
    match crate::service_policy::check_ca_bundle(&pem) {
        Ok(()) => Some(pem),
        Err(problem) => {
            errors.at(node, format!("{field} \"{}\" {problem}", node.value));
            None
        }
    }
}

/// The path at `node`, unless it is empty (reported there).
pub(super) fn non_empty<'d>(
    node: &'d Spanned<String>,
    field: &str,
    errors: &mut Errors,
) -> Option<&'d Spanned<String>> {
    if node.value.is_empty() {
        errors.at(node, format!("{field} is empty"));
        return None;
    }
    Some(node)
}

/// The `cert_file` and `key_file` at `cert` and `key`, when neither is empty (each empty one
/// is reported where it stands).
fn certificate_pair<'d>(
    cert: &'d Spanned<String>,
    key: &'d Spanned<String>,
    errors: &mut Errors,
) -> Option<(&'d Spanned<String>, &'d Spanned<String>)> {
    let cert = non_empty(cert, "cert_file", errors);
    let key = non_empty(key, "key_file", errors);
    Some((cert?, key?))
}

/// A certificate pair's paths as written, for the validated settings.
fn certificate_files(cert: &Spanned<String>, key: &Spanned<String>) -> CertificateFiles {
    CertificateFiles {
        cert_file: PathBuf::from(&cert.value),
        key_file: PathBuf::from(&key.value),
    }
}

/// The certificate chain `cert_node` names and the private key `key_node` names, when both
/// can be read and are a pair Envoy can present; otherwise an error at the field to fix.
fn certificate_and_key(
    files: &dyn FileSource,
    cert_node: &Spanned<String>,
    key_node: &Spanned<String>,
    errors: &mut Errors,
) -> Option<CertificateAndKey> {
    let chain = read_file(files, cert_node, "cert_file", errors);
    let key = read_file(files, key_node, "key_file", errors);
    let (chain, key) = (chain?, key?);
    match CertificateAndKey::from_pem(chain, key) {
        Ok(certificate) => Some(certificate),
        Err(problem) => {
            let (field, node) = match problem {
                CertificateError::NotPemCertificate => ("cert_file", cert_node),
                _ => ("key_file", key_node),
            };
            errors.at(node, format!("{field} \"{}\" {problem}", node.value));
            None
        }
    }
}

/// The path a listener answers health checks on: `/health` unless set, `None` when `""`.
fn listener_health_path(listener: &crate::document::ListenerDoc) -> Option<String> {
    match &listener.health_path {
        None => Some(DEFAULT_HEALTH_PATH.to_string()),
        Some(path) if path.value.is_empty() => None,
        Some(path) => Some(path.value.clone()),
    }
}

pub(crate) fn positive_duration(
    node: Option<&Spanned<String>>,
    errors: &mut Errors,
) -> Option<Duration> {
    let node = node?;
    match duration::parse(&node.value) {
        Ok(d) if d.is_zero() => {
            errors.at(
                node,
                format!("duration \"{}\" must be greater than zero", node.value),
            );
            None
        }
        Ok(d) => Some(d),
        Err(message) => {
            errors.at(node, message);
            None
        }
    }
}

pub(crate) fn check_name(node: &Spanned<String>, kind: &str, errors: &mut Errors) {
    if !is_valid_name(&node.value) {
        errors.at(
            node,
            format!(
                "invalid {kind} name \"{}\": use letters, digits, '.', '_' and '-'",
                node.value
            ),
        );
    }
}

/// Names become Envoy resource names and stat prefixes, so keep them to a safe alphabet.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// RFC 9110 §5.1 field names are tokens.
pub(crate) fn is_header_name(name: &str) -> bool {
    let token = name.strip_prefix(':').unwrap_or(name);
    !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
pub(crate) fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `node` as `HOST:PORT`, or an error naming it as `what`.
pub(crate) fn host_port(
    node: &Spanned<String>,
    what: &str,
    errors: &mut Errors,
) -> Option<Endpoint> {
    let parsed = parse_endpoint(&node.value);
    if parsed.is_none() {
        errors.at(
            node,
            format!("invalid {what} \"{}\": expected HOST:PORT", node.value),
        );
    }
    parsed
}

pub(crate) fn parse_endpoint(text: &str) -> Option<Endpoint> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(Endpoint {
            host: addr.ip().to_string(),
            port: addr.port(),
        });
    }
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    is_dns_name(host).then(|| Endpoint {
        host: host.to_string(),
        port,
    })
}
