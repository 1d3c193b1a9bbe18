//! One RouteConfiguration per listener: the routes served there, in file order, each with
//! its traffic policies (retries, timeouts, rewrites, header edits, CORS, body limit, cache),
//! and for listeners with cached routes the cache-fill configuration those routes share.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use tollgate_proto::envoy::config::core::v3::RuntimeFractionalPercent;
use tollgate_proto::envoy::config::route::v3::{
    query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier},
    route::Action,
    route_action::ClusterSpecifier,
    route_action::HostRewriteSpecifier,
    route_action::MaxStreamDuration,
    route_action::RequestMirrorPolicy,
    route_action::UpgradeConfig as RouteUpgradeConfig,
    route_match::GrpcRouteMatchOptions,
    route_match::PathSpecifier,
    weighted_cluster::ClusterWeight,
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction,
    Route as EnvoyRoute, RouteAction, RouteConfiguration, RouteMatch as EnvoyRouteMatch,
    VirtualHost, WeightedCluster,
};
use tollgate_proto::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatchAndSubstitute, StringMatcher,
};
use tollgate_proto::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use tollgate_proto::google::protobuf::Any;
use tollgate_proto::google::protobuf::{BoolValue, UInt32Value};
use tollgate_routes::ip_rules::IpRules;
use tollgate_routes::policy::{AuthProvider, RateLimitRule};
use tollgate_routes::route_policy::{CorsPolicy, RouteCors, DEFAULT_ROUTE_TIMEOUT};
use tollgate_routes::service_policy::Protocol;
use tollgate_routes::{
    Destination, HttpsRedirect, Listener, Mirror, PathMatch, QueryMatch, Redirect, RedirectPath,
    Route, RouteMatch, Service, WeightedService,
};

use super::json_format::json_format;
use super::matcher::{header, regex_matcher};
use super::{
    auth, body_limit, cluster, cors, headers, ip_rules, jwt_authn, listener, local_rate_limit,
    proto_duration, proto_map, rate_limit, response_cache, retry, transcode,
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
    /// The listener runs jwt_authn (a route's providers are enforced by Envoy).
    pub jwt_authn: bool,
    /// The listener runs the RBAC filter for such routes' scopes and consumers (the claims
    /// filter runs with jwt_authn).
    pub jwt_scopes: bool,
    /// Every auth provider, to tell who enforces a route's.
    pub auth_providers: &'a BTreeMap<String, AuthProvider>,
    /// The listener runs the ratelimit filter.
    pub rate_limit: bool,
    /// The listener runs the local_ratelimit filter.
    pub local_rate_limit: bool,
    /// How many Envoys share each local rule's budget.
    pub local_rate_limit_envoys: NonZeroU32,
    /// The listener runs the cors filter.
    pub cors: bool,
    /// The top-level `cors`, for routes without their own.
    pub default_cors: Option<&'a CorsPolicy>,
    /// Where a route's service says how requests hash (ring hash on a header).
    pub services: &'a BTreeMap<String, Service>,
    /// `observability.route_stats`: whether routes carry a stat prefix.
    pub route_stats: bool,
    /// The listener runs the RBAC filter, with these rules of its own.
    pub ip_rules: Option<&'a IpRules>,
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
    let first: Vec<EnvoyRoute> = health
        .into_iter()
        .chain(
            listener
                .redirect_to_https
                .as_ref()
                .map(|to| https_redirect_route(to, table)),
        )
        .collect();
    let envoy_routes: Vec<(&Route, EnvoyRoute)> =
        routes.iter().map(|r| (*r, route(r, table))).collect();
    by_host(&listener.name, &first, envoy_routes, &virtual_host_filters)
}

/// A plain-HTTP listener's one route after its health path: every request is sent, with its
/// host, path and query, to the same URL on the TLS listener, permanently.
fn https_redirect_route(to: &HttpsRedirect, table: &RouteTable) -> EnvoyRoute {
    EnvoyRoute {
        name: "tollgate_https_redirect".into(),
        r#match: Some(EnvoyRouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(Action::Redirect(RedirectAction {
            scheme_rewrite_specifier: Some(SchemeRewriteSpecifier::HttpsRedirect(true)),
            // 443 is https' own port: Envoy then leaves the port out of the location.
            port_redirect: u32::from(to.port),
            response_code: RedirectResponseCode::MovedPermanently as i32,
            ..Default::default()
        })),
        typed_per_filter_config: proto_map(sidecar_filters_off(table, None)),
        ..Default::default()
    }
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
    let envoy_routes: Vec<(&Route, EnvoyRoute)> = routes
        .iter()
        .filter_map(|r| {
            let cache = r.traffic.cache.as_ref()?;
            let mut fill = forwarding_route(r, false, table);
            // After the route's own edits, so a `cache-control` the route sets counts as
            // the upstream's.
            fill.response_headers_to_add
                .push(response_cache::default_freshness(cache));
            Some((*r, fill))
        })
        .collect();
    by_host(
        &response_cache::fill_name(&listener.name),
        &[],
        envoy_routes,
        &[],
    )
}

/// A route table named `name`: `first` and then, in file order, the routes that accept the
/// request's host.
///
/// Envoy picks one virtual host by the request's host (an exact name before the longest
/// `*.` suffix, before `*`) and only then matches routes, in order, within it. So each
/// virtual host holds every route that accepts its names, those without `hosts` included,
/// and names that would hold the same routes share one virtual host. Routes without `hosts`
/// alone serve the `*` virtual host, named like the table. The port of `Host` is ignored.
fn by_host(
    name: &str,
    first: &[EnvoyRoute],
    mut routes: Vec<(&Route, EnvoyRoute)>,
    per_filter: &[(String, Any)],
) -> RouteConfiguration {
    let mut domains: Vec<&str> = Vec::new();
    for (route, _) in &routes {
        for host in &route.matcher.hosts {
            if !domains.contains(&host.as_str()) {
                domains.push(host);
            }
        }
    }
    // Which routes each name gets, grouped: names with the same routes share a host.
    let mut groups: Vec<(Vec<usize>, Vec<String>)> = Vec::new();
    for domain in domains {
        let serving: Vec<usize> = (0..routes.len())
            .filter(|&i| routes[i].0.matcher.accepts_host(domain))
            .collect();
        match groups.iter_mut().find(|(same, _)| *same == serving) {
            Some((_, names)) => names.push(domain.to_string()),
            None => groups.push((serving, vec![domain.to_string()])),
        }
    }
    let any_host: Vec<usize> = (0..routes.len())
        .filter(|&i| routes[i].0.matcher.hosts.is_empty())
        .collect();
    groups.push((any_host, vec!["*".to_string()]));
    // A route goes into every virtual host that serves it: copied into all but the last,
    // moved into that one. With no `hosts` anywhere, every route is moved, none copied (a
    // route is some hundred bytes of nested messages; 10,000 copies were a tenth of a
    // reload's own time).
    let mut last_group = vec![0; routes.len()];
    for (g, (serving, _)) in groups.iter().enumerate() {
        for &i in serving {
            last_group[i] = g;
        }
    }
    let mut names: Vec<String> = Vec::new();
    let virtual_hosts = groups
        .into_iter()
        .enumerate()
        .map(|(g, (serving, domains))| {
            let host_name = virtual_host_name(name, &domains, &names);
            names.push(host_name.clone());
            let mut host_routes = Vec::with_capacity(first.len() + serving.len());
            host_routes.extend(first.iter().cloned());
            host_routes.extend(serving.iter().map(|&i| {
                if last_group[i] == g {
                    std::mem::take(&mut routes[i].1)
                } else {
                    routes[i].1.clone()
                }
            }));
            VirtualHost {
                name: host_name,
                domains,
                routes: host_routes,
                typed_per_filter_config: proto_map(per_filter.iter().cloned()),
                ..Default::default()
            }
        })
        .collect();
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts,
        ignore_port_in_host_matching: true,
        ..Default::default()
    }
}

/// The table's own name for `*`; otherwise the table's and the first host's, in the
/// characters Envoy's stats keep as one name (`vhost.<name>.route.<route>.*`), unique in
/// the table.
fn virtual_host_name(table: &str, domains: &[String], taken: &[String]) -> String {
    if domains.len() == 1 && domains[0] == "*" {
        return table.to_string();
    }
    let host: String = domains[0]
        .replace('*', "any")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let base = format!("{table}_{host}");
    let mut candidate = base.clone();
    let mut n = 2;
    while taken.contains(&candidate) || candidate == table {
        candidate = format!("{base}_{n}");
        n += 1;
    }
    candidate
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
        typed_per_filter_config: proto_map(
            sidecar_filters_off(table, None).chain(
                table
                    .ip_rules
                    .filter(|rules| !rules.is_empty())
                    .map(|_| (ip_rules::FILTER_NAME.to_string(), ip_rules::off())),
            ),
        ),
        ..Default::default()
    }
}

/// Switches off, for one route, the sidecar filters its listener runs but the route does not
/// use: ext_authz without `auth`, ratelimit without global rules, local_ratelimit without
/// local ones. `None`: one of the gateway's own routes (health, redirect), which use none.
fn sidecar_filters_off(
    table: &RouteTable,
    route: Option<&Route>,
) -> impl Iterator<Item = (String, Any)> {
    let by_envoy = route.is_some_and(|r| jwt_authn::enforced_by_envoy(r, table.auth_providers));
    let has_auth = route.is_some_and(|r| r.auth.is_some()) && !by_envoy;
    let has_token_rules = by_envoy
        && route
            .and_then(|r| r.auth.as_ref())
            .is_some_and(jwt_authn::has_token_rules);
    let has_global = route.is_some_and(|r| r.global_rate_limits().next().is_some());
    let has_local = route.is_some_and(|r| r.local_rate_limits().next().is_some());
    [
        (auth::FILTER_NAME, table.ext_authz && !has_auth),
        (jwt_authn::FILTER_NAME, table.jwt_authn && !by_envoy),
        (jwt_authn::CLAIMS_FILTER_NAME, table.jwt_authn && !by_envoy),
        (
            jwt_authn::SCOPES_FILTER_NAME,
            table.jwt_scopes && !has_token_rules,
        ),
        (rate_limit::FILTER_NAME, table.rate_limit && !has_global),
        (
            local_rate_limit::FILTER_NAME,
            table.local_rate_limit && !has_local,
        ),
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
        action.rate_limits = rate_limit::route_rate_limits(&route.name, route.global_rate_limits());
    }
    let local_rules: Vec<&RateLimitRule> = route.local_rate_limits().collect();
    let by_envoy = jwt_authn::enforced_by_envoy(route, table.auth_providers);
    envoy_route.typed_per_filter_config = proto_map(
        sidecar_filters_off(table, Some(route))
            .chain(
                route
                    .auth
                    .as_ref()
                    .filter(|_| table.ext_authz && !by_envoy)
                    .map(|auth| {
                        (
                            auth::FILTER_NAME.to_string(),
                            auth::per_route(&route.name, auth),
                        )
                    }),
            )
            .chain(
                route
                    .auth
                    .as_ref()
                    .filter(|_| by_envoy)
                    .into_iter()
                    .flat_map(|auth| {
                        [
                            (
                                jwt_authn::FILTER_NAME.to_string(),
                                jwt_authn::per_route(auth),
                            ),
                            (
                                jwt_authn::CLAIMS_FILTER_NAME.to_string(),
                                jwt_authn::claims_per_route(auth, table.auth_providers),
                            ),
                        ]
                    }),
            )
            .chain(
                route
                    .auth
                    .as_ref()
                    .filter(|auth| by_envoy && jwt_authn::has_token_rules(auth))
                    .map(|auth| {
                        (
                            jwt_authn::SCOPES_FILTER_NAME.to_string(),
                            jwt_authn::scopes_per_route(auth, table.auth_providers),
                        )
                    }),
            )
            .chain((!local_rules.is_empty()).then(|| {
                (
                    local_rate_limit::FILTER_NAME.to_string(),
                    local_rate_limit::per_route(
                        &route.name,
                        &local_rules,
                        table.local_rate_limit_envoys,
                    ),
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
            }))
            .chain(
                table
                    .ip_rules
                    .filter(|_| !route.ip_rules.is_empty())
                    .map(|listener| {
                        (
                            ip_rules::FILTER_NAME.to_string(),
                            ip_rules::per_route(listener, &route.ip_rules),
                        )
                    }),
            )
            .chain(route.transcode.as_ref().map(|transcode| {
                (
                    transcode::FILTER_NAME.to_string(),
                    transcode::per_route(transcode),
                )
            })),
    );
    envoy_route.metadata = route
        .auth
        .as_ref()
        .filter(|auth| by_envoy && !auth.scopes.is_empty())
        .map(|auth| jwt_authn::scopes_metadata(&auth.scopes));
    envoy_route
}

/// What the router does with a request of this route, wherever it is served: the match
/// (`cors`: see [`route_match`]), the destination and every route action, and the header
/// edits.
fn forwarding_route(route: &Route, cors: bool, table: &RouteTable) -> EnvoyRoute {
    let traffic = &route.traffic;
    let action = match &route.destination {
        Destination::Service(service) => Action::Route(route_action(
            route,
            ClusterSpecifier::Cluster(service.clone()),
            table,
        )),
        Destination::Split(split) => Action::Route(route_action(
            route,
            ClusterSpecifier::WeightedClusters(weighted_clusters(split)),
            table,
        )),
        Destination::Redirect(redirect) => Action::Redirect(redirect_action(redirect)),
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
        action: Some(action),
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        ..Default::default()
    }
}

/// Forwarding to `clusters`, with the route's rewrites, timeouts, retries and mirror.
fn route_action(route: &Route, clusters: ClusterSpecifier, table: &RouteTable) -> RouteAction {
    let traffic = &route.traffic;
    // A service balanced by a hash of the request needs the route to say what to hash; for
    // a split, each service's own, in the order written.
    let mut hash_policy = Vec::new();
    for policy in route
        .destination
        .services()
        .filter_map(|name| table.services.get(name))
        .flat_map(cluster::hash_policy)
    {
        if !hash_policy.contains(&policy) {
            hash_policy.push(policy);
        }
    }
    RouteAction {
        cluster_specifier: Some(clusters),
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
        hash_policy,
        request_mirror_policies: route.mirror.iter().map(mirror_policy).collect(),
        // A gRPC client's `grpc-timeout` is its deadline, honoured up to the route's timeout.
        max_stream_duration: route
            .destination
            .services()
            .filter_map(|name| table.services.get(name))
            .any(|s| s.policy.protocol == Protocol::Grpc)
            .then(|| {
                // With a grpc-timeout cap, Envoy no longer applies the route's timeout to
                // gRPC calls (it waits for ever on a call that sends none), so the route's
                // timeout is also the stream's longest life.
                let timeout = Some(proto_duration(
                    route.timeout.unwrap_or(DEFAULT_ROUTE_TIMEOUT),
                ));
                MaxStreamDuration {
                    max_stream_duration: timeout,
                    grpc_timeout_header_max: timeout,
                    ..Default::default()
                }
            }),
        upgrade_configs: traffic
            .websocket
            .then(|| RouteUpgradeConfig {
                upgrade_type: listener::WEBSOCKET.to_string(),
                enabled: Some(BoolValue { value: true }),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// Each request to one service of the split, by weight. A weight edit is a route-table
/// update: connections stay, and only later requests are spread anew.
fn weighted_clusters(split: &[WeightedService]) -> WeightedCluster {
    WeightedCluster {
        clusters: split
            .iter()
            .map(|s| ClusterWeight {
                name: s.service.clone(),
                weight: Some(UInt32Value { value: s.weight }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Envoy sends the copy without waiting for it, and drops its answer and its failure.
fn mirror_policy(mirror: &Mirror) -> RequestMirrorPolicy {
    // Per million, so a fractional percent (0.5) keeps its precision.
    let per_million = (mirror.percent * 10_000.0).round() as u32;
    RequestMirrorPolicy {
        cluster: mirror.service.clone(),
        runtime_fraction: Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: per_million,
                denominator: DenominatorType::Million as i32,
            }),
            runtime_key: String::new(),
        }),
        ..Default::default()
    }
}

fn redirect_action(redirect: &Redirect) -> RedirectAction {
    let response_code = match redirect.code {
        302 => RedirectResponseCode::Found,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        _ => RedirectResponseCode::MovedPermanently,
    };
    RedirectAction {
        scheme_rewrite_specifier: redirect
            .https
            .then_some(SchemeRewriteSpecifier::HttpsRedirect(true)),
        host_redirect: redirect.host.clone().unwrap_or_default(),
        port_redirect: redirect.port.map(u32::from).unwrap_or_default(),
        path_rewrite_specifier: redirect.path.as_ref().map(|path| match path {
            RedirectPath::Path(path) => PathRewriteSpecifier::PathRedirect(path.clone()),
            RedirectPath::Prefix(prefix) => PathRewriteSpecifier::PrefixRewrite(prefix.clone()),
        }),
        response_code: response_code as i32,
        strip_query: redirect.strip_query,
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
    let query_parameters = matcher
        .query
        .iter()
        .map(|(name, wanted)| QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: Some(match wanted {
                QueryMatch::Exact(value) => {
                    QueryParameterMatchSpecifier::StringMatch(StringMatcher {
                        match_pattern: Some(MatchPattern::Exact(value.clone())),
                        ignore_case: false,
                    })
                }
                QueryMatch::Present => QueryParameterMatchSpecifier::PresentMatch(true),
            }),
        })
        .collect();
    EnvoyRouteMatch {
        path_specifier: Some(path_specifier),
        headers,
        query_parameters,
        grpc: matcher.grpc.then_some(GrpcRouteMatchOptions {}),
        ..Default::default()
    }
}

#[cfg(test)]
#[path = "route_policy_tests.rs"]
mod route_policy_tests;
