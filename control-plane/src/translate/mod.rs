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
mod json_format;
mod listener;
mod listener_tls;
mod local_reply;
mod rate_limit;
mod response_cache;
mod retry;
mod route;
mod secret;
mod tracing;

use envoy_types::pb::envoy::config::core::v3::{
    config_source::ConfigSourceSpecifier, AggregatedConfigSource, ApiVersion, ConfigSource,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::{Any, Duration as ProtoDuration};
use prost::Name;
use tollgate_routes::route_policy::RouteCors;
use tollgate_routes::{Certificates, Route, RoutesConfig};

pub use auth::CONSUMER_HEADER;

use crate::snapshot::{type_url, Resource, Snapshot};

/// Builds the complete Envoy configuration for `config`, with the certificates its TLS
/// listeners serve and its services' client certificates (as read with it by
/// [`tollgate_routes::parse_with_files`]).
pub fn translate(config: &RoutesConfig, certificates: &Certificates) -> Snapshot {
    let mut resources: Vec<(&'static str, Resource)> = Vec::new();
    let mut add_cluster = |cluster: envoy_types::pb::envoy::config::cluster::v3::Cluster,
                           assignment: Option<_>| {
        if let Some(assignment) = assignment {
            resources.push((
                type_url::ENDPOINT,
                Resource::new(&cluster.name, type_url::ENDPOINT, &assignment),
            ));
        }
        resources.push((
            type_url::CLUSTER,
            Resource::new(&cluster.name, type_url::CLUSTER, &cluster),
        ));
    };
    for service in config.services.values() {
        let assignment = cluster::uses_eds(service).then(|| cluster::load_assignment(service));
        add_cluster(cluster::cluster(service), assignment);
    }
    if let Some(sidecar) = &config.sidecars.ext_authz {
        let (c, a) = cluster::sidecar(auth::CLUSTER, &sidecar.address);
        add_cluster(c, a);
    }
    if let Some(sidecar) = &config.sidecars.rate_limit {
        let (c, a) = cluster::sidecar(rate_limit::CLUSTER, &sidecar.address);
        add_cluster(c, a);
    }
    if let Some(tracing) = &config.observability.tracing {
        let (c, a) = tracing::collector_cluster(tracing);
        add_cluster(c, a);
    }
    for (service, certificate) in certificates.upstream_clients() {
        let presents = config
            .services
            .get(service)
            .and_then(|s| s.policy.tls.as_ref())
            .is_some_and(|tls| tls.client_certificate.is_some());
        if presents {
            let name = secret::upstream_client_secret_name(service);
            resources.push(secret_resource(secret::certificate_secret(
                name,
                certificate,
            )));
        }
    }

    let strip_headers = tollgate_routes::policy::identity_headers(&config.auth_providers);
    let access_log = config
        .observability
        .access_log
        .as_ref()
        .map(access_log::access_log);
    let tracing = config
        .observability
        .tracing
        .as_ref()
        .map(tracing::hcm_tracing);
    for l in &config.listeners {
        let routes: Vec<&Route> = config.routes_on(&l.name).collect();
        let ext_authz = config
            .sidecars
            .ext_authz
            .as_ref()
            .filter(|_| routes.iter().any(|r| r.auth.is_some()));
        let rate_limit = config
            .sidecars
            .rate_limit
            .as_ref()
            .filter(|_| routes.iter().any(|r| !r.rate_limits.is_empty()));
        let cached = routes.iter().any(|r| r.traffic.cache.is_some());
        let cors = config.cors.is_some()
            || routes
                .iter()
                .any(|r| matches!(r.traffic.cors, RouteCors::Own(_)));
        let filters = listener::ListenerFilters {
            strip_headers: strip_headers.clone(),
            ext_authz: ext_authz.map(|sidecar| auth::filter(sidecar, &config.auth_providers)),
            rate_limit: rate_limit.map(rate_limit::filter),
            cors: cors.then(cors::filter),
            body_limit: routes
                .iter()
                .filter_map(|r| r.traffic.max_request_bytes)
                .max()
                .map(body_limit::filter),
            cache: cached.then(|| response_cache::filter(&l.name)),
            access_log: access_log.clone(),
            tracing: tracing.clone(),
        };
        resources.push((
            type_url::LISTENER,
            Resource::new(
                &l.name,
                type_url::LISTENER,
                &listener::listener(l, &filters),
            ),
        ));
        let table = route::RouteTable {
            ext_authz: ext_authz.is_some(),
            rate_limit: rate_limit.is_some(),
            cors,
            default_cors: config.cors.as_ref(),
            services: &config.services,
            route_stats: config.observability.route_stats,
        };
        let route_configuration = route::route_configuration(l, &routes, &table);
        resources.push((
            type_url::ROUTE,
            Resource::new(&l.name, type_url::ROUTE, &route_configuration),
        ));
        if l.tls.is_some() {
            for (index, served) in certificates.listener(&l.name).iter().enumerate() {
                let name = secret::listener_secret_name(&l.name, index);
                resources.push(secret_resource(secret::certificate_secret(
                    name,
                    &served.certificate,
                )));
            }
        }
        if cached {
            let name = response_cache::fill_name(&l.name);
            let cluster = response_cache::fill_cluster(&l.name);
            resources.push((
                type_url::CLUSTER,
                Resource::new(&name, type_url::CLUSTER, &cluster),
            ));
            resources.push((
                type_url::LISTENER,
                Resource::new(
                    &name,
                    type_url::LISTENER,
                    &response_cache::fill_listener(&l.name),
                ),
            ));
            let fill = route::cache_fill_configuration(l, &routes, &table);
            resources.push((
                type_url::ROUTE,
                Resource::new(&name, type_url::ROUTE, &fill),
            ));
        }
    }
    Snapshot::new(resources)
}

/// A protobuf map with a deterministic encoding.
///
/// Protobuf maps are `HashMap`s, and prost encodes them in iteration order, which differs
/// between maps with different hashers: without this, an unchanged config would hash to a
/// new version on every translation and be pushed again. Maps built from one shared hasher
/// with the same insertions iterate alike. (Only within this process: versions of
/// resources with maps differ between control-plane processes, which costs a no-op re-apply
/// on reconnect, nothing more.)
fn stable_map<K: Eq + std::hash::Hash + Ord, V>(
    entries: impl IntoIterator<Item = (K, V)>,
) -> std::collections::HashMap<K, V> {
    static HASHER: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut sorted: Vec<(K, V)> = entries.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut map = std::collections::HashMap::with_hasher(
        HASHER
            .get_or_init(std::collections::hash_map::RandomState::new)
            .clone(),
    );
    map.extend(sorted);
    map
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

/// An SDS secret as a resource of the snapshot.
fn secret_resource(secret: Secret) -> (&'static str, Resource) {
    (
        type_url::SECRET,
        Resource::new(&secret.name, type_url::SECRET, &secret),
    )
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
