//! Translation: a validated [`RoutesConfig`] in, a [`Snapshot`] of Envoy resources out.
//!
//! Pure functions over data, one module per resource kind or filter. Nothing here reads
//! files, clocks or sockets, so every push is reproducible and its version is a hash of its
//! content.

mod access_log;
mod auth;
mod body_limit;
mod cluster;
mod cors;
mod headers;
mod http2;
mod ip_rules;
mod json_format;
mod jwt_authn;
mod listener;
mod listener_tls;
mod local_rate_limit;
mod local_reply;
mod matcher;
mod rate_limit;
mod response_cache;
mod retry;
mod route;
mod secret;
mod tracing;
mod transcode;

use std::num::NonZeroU32;

use tollgate_proto::envoy::config::accesslog::v3::AccessLog;
use tollgate_proto::envoy::config::cluster::v3::Cluster;
use tollgate_proto::envoy::config::core::v3::{
    config_source::ConfigSourceSpecifier, transport_socket, AggregatedConfigSource, ApiVersion,
    ConfigSource, TransportSocket,
};
use tollgate_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as HcmTracing;
use tollgate_proto::envoy::extensions::transport_sockets::tls::v3::Secret;
use tollgate_proto::google::protobuf::{Any, Duration as ProtoDuration};
use prost::Name;
use tollgate_routes::route_policy::RouteCors;
use tollgate_routes::{Certificates, Listener, Route, RoutesConfig};

pub use auth::CONSUMER_HEADER;
pub use local_rate_limit::share;

use crate::snapshot::{type_url, Resource, Snapshot};

/// Builds the complete Envoy configuration for `config`, with the certificates its TLS
/// listeners serve and its services' client certificates (as read with it by
/// [`tollgate_routes::parse_with_files`]), for an Envoy alone.
pub fn translate(config: &RoutesConfig, certificates: &Certificates) -> Snapshot {
    translate_shared(config, certificates, NonZeroU32::MIN)
}

/// [`translate`] for each of `envoys` Envoys sharing the local rate limits' budgets: the
/// same but for those budgets, each an `envoys`th ([`local_rate_limit::share`]).
pub fn translate_shared(
    config: &RoutesConfig,
    certificates: &Certificates,
    envoys: NonZeroU32,
) -> Snapshot {
    let mut resources = Resources::default();
    add_clusters(&mut resources, config);
    add_upstream_client_secrets(&mut resources, config, certificates);
    let shared = SharedFilters::of(config);
    for listener in &config.listeners {
        add_listener(
            &mut resources,
            config,
            certificates,
            listener,
            &shared,
            envoys,
        );
    }
    Snapshot::new(resources.0)
}

/// Whether what Envoy is served depends on how many Envoys share budgets.
pub fn has_shared_budgets(config: &RoutesConfig) -> bool {
    config
        .routes
        .iter()
        .any(|r| r.local_rate_limits().next().is_some())
}

/// The resources of a snapshot as they are made, each with its type.
#[derive(Default)]
struct Resources(Vec<(&'static str, Resource)>);

impl Resources {
    fn add(&mut self, type_url: &'static str, name: &str, message: &impl prost::Message) {
        self.0
            .push((type_url, Resource::new(name, type_url, message)));
    }

    /// A cluster, and its endpoints when they come over EDS.
    fn add_cluster(&mut self, (cluster, assignment): (Cluster, Option<ClusterLoadAssignment>)) {
        if let Some(assignment) = assignment {
            self.add(type_url::ENDPOINT, &cluster.name, &assignment);
        }
        self.add(type_url::CLUSTER, &cluster.name, &cluster);
    }

    fn add_secret(&mut self, secret: Secret) {
        self.add(type_url::SECRET, &secret.name, &secret);
    }
}

/// A cluster per service, per sidecar and for the trace collector.
fn add_clusters(resources: &mut Resources, config: &RoutesConfig) {
    for service in config.services.values() {
        let assignment = cluster::uses_eds(service).then(|| cluster::load_assignment(service));
        resources.add_cluster((cluster::cluster(service), assignment));
    }
    if let Some(sidecar) = &config.sidecars.ext_authz {
        resources.add_cluster(cluster::sidecar(
            auth::CLUSTER,
            &sidecar.addresses,
            auth::HEALTH_SERVICE,
            sidecar.tls.as_ref(),
            sidecar.timeout,
        ));
    }
    if let Some(sidecar) = &config.sidecars.rate_limit {
        resources.add_cluster(cluster::sidecar(
            rate_limit::CLUSTER,
            &sidecar.addresses,
            rate_limit::HEALTH_SERVICE,
            sidecar.tls.as_ref(),
            sidecar.timeout,
        ));
    }
    if let Some(tracing) = &config.observability.tracing {
        resources.add_cluster(tracing::collector_cluster(tracing));
    }
}

/// The client certificate of every service and sidecar that presents one.
fn add_upstream_client_secrets(
    resources: &mut Resources,
    config: &RoutesConfig,
    certificates: &Certificates,
) {
    let sidecars = &config.sidecars;
    for (service, certificate) in certificates.upstream_clients() {
        let tls = match service {
            auth::CLUSTER => sidecars.ext_authz.as_ref().and_then(|s| s.tls.as_ref()),
            rate_limit::CLUSTER => sidecars.rate_limit.as_ref().and_then(|s| s.tls.as_ref()),
            _ => config
                .services
                .get(service)
                .and_then(|s| s.policy.tls.as_ref()),
        };
        let presents = tls.is_some_and(|tls| tls.client_certificate.is_some());
        if presents {
            let name = secret::upstream_client_secret_name(service);
            resources.add_secret(secret::certificate_secret(name, certificate));
        }
    }
}

/// What every listener's filter chain shares, made once per translation.
struct SharedFilters {
    strip_headers: Vec<String>,
    access_log: Option<AccessLog>,
    tracing: Option<HcmTracing>,
}

impl SharedFilters {
    fn of(config: &RoutesConfig) -> Self {
        let observability = &config.observability;
        SharedFilters {
            strip_headers: tollgate_routes::policy::identity_headers(&config.auth_providers),
            access_log: observability
                .access_log
                .as_ref()
                .map(access_log::access_log),
            tracing: observability.tracing.as_ref().map(tracing::hcm_tracing),
        }
    }
}

/// One listener: its filter chain (only the filters its routes use), its route table, the
/// certificates it serves, the CAs it verifies client certificates against and, when a route
/// caches, the response cache's fill path.
fn add_listener(
    resources: &mut Resources,
    config: &RoutesConfig,
    certificates: &Certificates,
    l: &Listener,
    shared: &SharedFilters,
    envoys: NonZeroU32,
) {
    let routes: Vec<&Route> = config.routes_on(&l.name).collect();
    let by_envoy = |r: &Route| jwt_authn::enforced_by_envoy(r, &config.auth_providers);
    let ext_authz = config
        .sidecars
        .ext_authz
        .as_ref()
        .filter(|_| routes.iter().any(|r| r.auth.is_some() && !by_envoy(r)));
    let jwt_authn = routes.iter().any(|r| by_envoy(r));
    let jwt_scopes = routes
        .iter()
        .any(|r| by_envoy(r) && r.auth.as_ref().is_some_and(jwt_authn::has_token_rules));
    let rate_limit = config.sidecars.rate_limit.as_ref().filter(|_| {
        routes
            .iter()
            .any(|r| r.global_rate_limits().next().is_some())
    });
    let local_rate_limit = routes
        .iter()
        .any(|r| r.local_rate_limits().next().is_some());
    let cached = routes.iter().any(|r| r.traffic.cache.is_some());
    let cors = config.cors.is_some()
        || routes
            .iter()
            .any(|r| matches!(r.traffic.cors, RouteCors::Own(_)));
    let ip_rules = (!l.ip_rules.is_empty() || routes.iter().any(|r| !r.ip_rules.is_empty()))
        .then(|| ip_rules::filter(&l.ip_rules));
    let filters = listener::ListenerFilters {
        ip_rules,
        strip_headers: shared.strip_headers.clone(),
        jwt_authn: jwt_authn
            .then(|| jwt_authn::filter(&routes, &config.auth_providers, certificates)),
        jwt_claims: jwt_authn.then(jwt_authn::rules_filter),
        jwt_scopes: jwt_scopes.then(jwt_authn::rules_filter),
        reply_mappers: if jwt_authn {
            jwt_authn::reply_mappers()
        } else {
            Vec::new()
        },
        ext_authz: ext_authz.map(|sidecar| auth::filter(sidecar, &config.auth_providers)),
        local_rate_limit: local_rate_limit.then(local_rate_limit::filter),
        rate_limit: rate_limit.map(rate_limit::filter),
        cors: cors.then(cors::filter),
        body_limit: routes
            .iter()
            .filter_map(|r| r.traffic.max_request_bytes)
            .max()
            .map(body_limit::filter),
        cache: cached.then(|| response_cache::filter(&l.name)),
        access_log: shared.access_log.clone(),
        tracing: shared.tracing.clone(),
        websocket: routes.iter().any(|r| r.traffic.websocket),
        transcode: routes
            .iter()
            .find_map(|r| r.transcode.as_ref())
            .map(transcode::filter),
    };
    resources.add(
        type_url::LISTENER,
        &l.name,
        &listener::listener(l, &filters),
    );
    let table = route::RouteTable {
        ext_authz: ext_authz.is_some(),
        jwt_authn,
        jwt_scopes,
        auth_providers: &config.auth_providers,
        rate_limit: rate_limit.is_some(),
        local_rate_limit,
        local_rate_limit_envoys: envoys,
        cors,
        default_cors: config.cors.as_ref(),
        services: &config.services,
        route_stats: config.observability.route_stats,
        ip_rules: filters.ip_rules.is_some().then_some(&l.ip_rules),
    };
    resources.add(
        type_url::ROUTE,
        &l.name,
        &route::route_configuration(l, &routes, &table),
    );
    if let Some(tls) = &l.tls {
        for (index, served) in certificates.listener(&l.name).iter().enumerate() {
            let name = secret::listener_secret_name(&l.name, index);
            resources.add_secret(secret::certificate_secret(name, &served.certificate));
        }
        if let Some(client) = &tls.client_certificates {
            let name = secret::client_ca_secret_name(&l.name);
            resources.add_secret(secret::validation_context_secret(name, client));
        }
    }
    if cached {
        let name = response_cache::fill_name(&l.name);
        resources.add(
            type_url::CLUSTER,
            &name,
            &response_cache::fill_cluster(&l.name),
        );
        resources.add(
            type_url::LISTENER,
            &name,
            &response_cache::fill_listener(&l.name),
        );
        resources.add(
            type_url::ROUTE,
            &name,
            &route::cache_fill_configuration(l, &routes, &table),
        );
    }
}

/// A protobuf map.
///
/// Prost encodes a map in its iteration order, which follows the map's hasher;
/// [`crate::canonical`] sorts the entries when a resource is encoded, so versions do not
/// depend on it. Each map gets a hasher of its own, on purpose: a map that the canonical
/// encoding missed then gives a new version on each translation, which the tests catch.
fn proto_map<K: Eq + std::hash::Hash, V>(
    entries: impl IntoIterator<Item = (K, V)>,
) -> std::collections::HashMap<K, V> {
    entries.into_iter().collect()
}

/// Envoy's TLS transport socket with `context`, an upstream or a downstream TLS context.
fn tls_transport_socket<M: Name>(context: &M) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(context))),
    }
}

/// Packs a message into an `Any` with its canonical type URL.
fn any<M: Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

fn proto_duration(duration: std::time::Duration) -> ProtoDuration {
    ProtoDuration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

/// Everything dynamic comes over the one ADS stream, so ordering across types holds.
fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
