//! One RouteConfiguration per listener: the routes served there, in file order.

use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, route::Action, route_action::ClusterSpecifier,
    route_match::PathSpecifier, DirectResponseAction, HeaderMatcher, Route as EnvoyRoute,
    RouteAction, RouteConfiguration, RouteMatch as EnvoyRouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatcher, StringMatcher,
};
use tollgate_routes::{Listener, PathMatch, Route, RouteMatch};

use super::json_format::json_format;
use super::{auth, proto_duration, rate_limit, stable_map};

pub(super) fn route_configuration<'a>(
    listener: &Listener,
    routes: impl Iterator<Item = &'a Route>,
    ext_authz: bool,
) -> RouteConfiguration {
    let health = listener
        .health_path
        .as_deref()
        .map(|path| health_route(path, ext_authz));
    RouteConfiguration {
        name: listener.name.clone(),
        virtual_hosts: vec![VirtualHost {
            name: listener.name.clone(),
            domains: vec!["*".into()],
            routes: health
                .into_iter()
                .chain(routes.map(|r| route(r, ext_authz)))
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The gateway's own liveness answer: first, so no user route can shadow it, and direct,
/// so it says the gateway is up without depending on any upstream.
fn health_route(path: &str, ext_authz: bool) -> EnvoyRoute {
    EnvoyRoute {
        name: "tollgate_health".into(),
        r#match: Some(EnvoyRouteMatch {
            path_specifier: Some(PathSpecifier::Path(path.to_string())),
            ..Default::default()
        }),
        action: Some(Action::DirectResponse(DirectResponseAction {
            status: 200,
            body: None,
            body_format: Some(json_format(&[("status", "ok")])),
        })),
        typed_per_filter_config: stable_map(
            ext_authz.then(|| (auth::FILTER_NAME.to_string(), auth::per_route(None))),
        ),
        ..Default::default()
    }
}

/// `ext_authz`: the listener runs the ext_authz filter, so every route says whether it
/// applies (a route without a per-route setting would be checked with no provider).
fn route(route: &Route, ext_authz: bool) -> EnvoyRoute {
    let action = RouteAction {
        cluster_specifier: Some(ClusterSpecifier::Cluster(route.service.clone())),
        prefix_rewrite: route.rewrite_prefix.clone().unwrap_or_default(),
        timeout: route.timeout.map(proto_duration),
        rate_limits: rate_limit::route_rate_limits(&route.name, &route.rate_limits),
        ..Default::default()
    };
    let typed_per_filter_config = stable_map(ext_authz.then(|| {
        (
            auth::FILTER_NAME.to_string(),
            auth::per_route(route.auth.as_ref()),
        )
    }));
    EnvoyRoute {
        name: route.name.clone(),
        r#match: Some(route_match(&route.matcher)),
        action: Some(Action::Route(action)),
        typed_per_filter_config,
        ..Default::default()
    }
}

fn route_match(matcher: &RouteMatch) -> EnvoyRouteMatch {
    let path_specifier = match &matcher.path {
        PathMatch::Prefix(prefix) => PathSpecifier::Prefix(prefix.clone()),
        PathMatch::Exact(path) => PathSpecifier::Path(path.clone()),
        PathMatch::Regex(regex) => PathSpecifier::SafeRegex(regex_matcher(regex.clone())),
    };
    let mut headers: Vec<HeaderMatcher> = matcher
        .headers
        .iter()
        .map(|(name, value)| header(name, MatchPattern::Exact(value.clone())))
        .collect();
    if !matcher.methods.is_empty() {
        // Method names are validated tokens, so the alternation needs no escaping.
        let methods = format!("^(?:{})$", matcher.methods.join("|"));
        headers.push(header(
            ":method",
            MatchPattern::SafeRegex(regex_matcher(methods)),
        ));
    }
    EnvoyRouteMatch {
        path_specifier: Some(path_specifier),
        headers,
        ..Default::default()
    }
}

fn header(name: &str, pattern: MatchPattern) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(pattern),
            ignore_case: false,
        })),
        ..Default::default()
    }
}

/// Envoy's safe_regex is RE2 and must match the whole value, as validation assumed.
fn regex_matcher(regex: String) -> RegexMatcher {
    RegexMatcher {
        regex,
        engine_type: None,
    }
}
