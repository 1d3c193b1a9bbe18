//! One RouteConfiguration per listener: the routes served there, in file order, each with
//! its traffic policies (retries, timeouts, rewrites, header edits, CORS, body limit, cache),
//! and for listeners with cached routes the cache-fill configuration those routes share.

use std::collections::BTreeMap;

use tollgate_proto::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, route::Action, route_action::ClusterSpecifier,
    route_action::HostRewriteSpecifier, route_match::PathSpecifier, DirectResponseAction,
    HeaderMatcher, Route as EnvoyRoute, RouteAction, RouteConfiguration,
    RouteMatch as EnvoyRouteMatch, VirtualHost,
};
use tollgate_proto::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatchAndSubstitute, RegexMatcher, StringMatcher,
};
use tollgate_proto::google::protobuf::Any;
use tollgate_routes::route_policy::{CorsPolicy, RouteCors};
use tollgate_routes::{Listener, PathMatch, Route, RouteMatch, Service};

use super::json_format::json_format;
use super::{
    auth, body_limit, cluster, cors, headers, listener, proto_duration, rate_limit, response_cache,
    retry, stable_map,
};

/// What every route of one listener's table is built with.
///
/// Each route says, for every filter its listener runs, whether the filter applies to it;
/// where it does not, the route switches it off ([`listener::filter_off`]) rather than
/// leave Envoy to build a filter that has nothing to do.
pub(super) struct RouteTable<'a> {
    /// The listener runs the ext_authz filter, so every route says whether it applies (a
    /// route without a per-route setting would be checked with no provider).
    pub ext_authz: bool,
    /// The listener runs the ratelimit filter.
    pub rate_limit: bool,
    /// The listener runs the cors filter.
    pub cors: bool,
    /// The top-level `cors`, for routes without their own.
    pub default_cors: Option<&'a CorsPolicy>,
    /// Where a route's service says how requests hash (ring hash on a header).
    pub services: &'a BTreeMap<String, Service>,
    /// `observability.route_stats`: whether routes carry a stat prefix.
    pub route_stats: bool,
}

pub(super) fn route_configuration(
    listener: &Listener,
    routes: &[&Route],
    table: &RouteTable,
) -> RouteConfiguration {
    let health = listener
        .health_path
        .as_deref()
        .map(|path| health_route(path, table));
    // Per-filter settings on the virtual host apply to every route that has none of its
    // own: the CORS default, and buffering off where no body limit is set.
    let buffering = routes.iter().any(|r| r.traffic.max_request_bytes.is_some());
    let virtual_host_filters: Vec<(String, Any)> = table
        .default_cors
        .map(|c| (cors::FILTER_NAME.to_string(), cors::per_route(c)))
        .into_iter()
        .chain(buffering.then(|| (body_limit::FILTER_NAME.to_string(), listener::filter_off())))
        .collect();
    let envoy_routes = health
        .into_iter()
        .chain(routes.iter().map(|r| route(r, table)))
        .collect();
    single_host(&listener.name, envoy_routes, virtual_host_filters)
}

/// The routes the cache filter's side channel reaches through the internal listener
/// ([`response_cache`]): the cached routes only, in file order, with the same route actions
/// as on the public listener and nothing for filters the internal listener does not run.
/// Each adds `cache-control: max-age=<ttl>` where the upstream sent none.
pub(super) fn cache_fill_configuration(
    listener: &Listener,
    routes: &[&Route],
    table: &RouteTable,
) -> RouteConfiguration {
    let envoy_routes = routes
        .iter()
        .filter_map(|r| {
            let cache = r.traffic.cache.as_ref()?;
            let mut fill = forwarding_route(r, false, table);
            // After the route's own edits, so a `cache-control` the route sets counts as
            // the upstream's.
            fill.response_headers_to_add
                .push(response_cache::default_freshness(cache));
            Some(fill)
        })
        .collect();
    single_host(
        &response_cache::fill_name(&listener.name),
        envoy_routes,
        Vec::new(),
    )
}

/// A route table of one virtual host for every domain, named like the table.
fn single_host(
    name: &str,
    routes: Vec<EnvoyRoute>,
    per_filter: Vec<(String, Any)>,
) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_string(),
            domains: vec!["*".into()],
            routes,
            typed_per_filter_config: stable_map(per_filter),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The gateway's own liveness answer: first, so no user route can shadow it, and direct,
/// so it says the gateway is up without depending on any upstream, a token or a limit.
fn health_route(path: &str, table: &RouteTable) -> EnvoyRoute {
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
        typed_per_filter_config: stable_map(sidecar_filters_off(table, false, false)),
        ..Default::default()
    }
}

/// Switches off, for one route, the sidecar filters its listener runs but the route does not
/// use: ext_authz without `auth`, ratelimit without `rate_limit`.
fn sidecar_filters_off(
    table: &RouteTable,
    uses_auth: bool,
    uses_limits: bool,
) -> impl Iterator<Item = (String, Any)> {
    [
        (auth::FILTER_NAME, table.ext_authz && !uses_auth),
        (rate_limit::FILTER_NAME, table.rate_limit && !uses_limits),
    ]
    .into_iter()
    .filter(|(_, off)| *off)
    .map(|(name, _)| (name.to_string(), listener::filter_off()))
}

/// A route as the public listener serves it: [`forwarding_route`], plus its rate limits and
/// the per-route settings of the filters that run before the router.
fn route(route: &Route, table: &RouteTable) -> EnvoyRoute {
    let traffic = &route.traffic;
    let default_cors = table.default_cors.is_some();
    let cors = match traffic.cors {
        RouteCors::Own(_) => true,
        RouteCors::Inherit => default_cors,
        RouteCors::Off => false,
    };
    let mut envoy_route = forwarding_route(route, cors, table);
    if let Some(Action::Route(action)) = envoy_route.action.as_mut() {
        action.rate_limits = rate_limit::route_rate_limits(&route.name, &route.rate_limits);
    }
    envoy_route.typed_per_filter_config = stable_map(
        sidecar_filters_off(table, route.auth.is_some(), !route.rate_limits.is_empty())
            .chain(route.auth.as_ref().filter(|_| table.ext_authz).map(|auth| {
                (
                    auth::FILTER_NAME.to_string(),
                    auth::per_route(&route.name, auth),
                )
            }))
            .chain(
                match &traffic.cors {
                    RouteCors::Own(policy) => Some(cors::per_route(policy)),
                    // The virtual host's default applies.
                    RouteCors::Inherit if cors => None,
                    RouteCors::Off | RouteCors::Inherit => table.cors.then(listener::filter_off),
                }
                .map(|config| (cors::FILTER_NAME.to_string(), config)),
            )
            .chain(traffic.max_request_bytes.map(|bytes| {
                (
                    body_limit::FILTER_NAME.to_string(),
                    body_limit::per_route(bytes),
                )
            }))
            .chain(traffic.cache.map(|_| {
                (
                    response_cache::FILTER_NAME.to_string(),
                    response_cache::per_route(),
                )
            })),
    );
    envoy_route
}

/// What the router does with a request of this route, wherever it is served: the match
/// (`cors`: see [`route_match`]), the upstream and every route action, and the header edits.
fn forwarding_route(route: &Route, cors: bool, table: &RouteTable) -> EnvoyRoute {
    let traffic = &route.traffic;
    let action = RouteAction {
        cluster_specifier: Some(ClusterSpecifier::Cluster(route.service.clone())),
        prefix_rewrite: route.rewrite_prefix.clone().unwrap_or_default(),
        regex_rewrite: traffic
            .rewrite_regex
            .as_ref()
            .map(|r| RegexMatchAndSubstitute {
                pattern: Some(regex_matcher(r.pattern.clone())),
                substitution: r.substitution.clone(),
            }),
        host_rewrite_specifier: traffic
            .host_rewrite
            .clone()
            .map(HostRewriteSpecifier::HostRewriteLiteral),
        timeout: route.timeout.map(proto_duration),
        idle_timeout: traffic.idle_timeout.map(proto_duration),
        retry_policy: traffic.retries.as_ref().map(retry::retry_policy),
        hash_policy: table
            .services
            .get(&route.service)
            .map(cluster::hash_policy)
            .unwrap_or_default(),
        ..Default::default()
    };
    let (request_headers_to_add, request_headers_to_remove) =
        headers::header_edits(&traffic.request_headers);
    let (response_headers_to_add, response_headers_to_remove) =
        headers::header_edits(&traffic.response_headers);
    EnvoyRoute {
        name: route.name.clone(),
        // Envoy keeps per-route request counts, status classes and latency histograms only
        // for routes with a stat prefix (`vhost.<listener>.route.<name>.*`). Each costs Envoy
        // a stats scope that it builds anew on every route-table update.
        stat_prefix: if table.route_stats {
            route.name.clone()
        } else {
            String::new()
        },
        r#match: Some(route_match(&route.matcher, cors)),
        action: Some(Action::Route(action)),
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        ..Default::default()
    }
}

/// `cors`: a CORS policy applies to the route, so a preflight (always `OPTIONS`) must match
/// it even when the route names its methods: the CORS filter finds the policy through the
/// route the request matched.
fn route_match(matcher: &RouteMatch, cors: bool) -> EnvoyRouteMatch {
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
        let mut methods: Vec<&str> = matcher.methods.iter().map(String::as_str).collect();
        if cors && !methods.contains(&"OPTIONS") {
            methods.push("OPTIONS");
        }
        // Method names are validated tokens, so the alternation needs no escaping.
        let methods = format!("^(?:{})$", methods.join("|"));
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

#[cfg(test)]
#[path = "route_policy_tests.rs"]
mod route_policy_tests;
