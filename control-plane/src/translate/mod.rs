//! Translation: a validated [`RoutesConfig`] in, a [`Snapshot`] of Envoy resources out.
//!
//! Pure functions over data, one module per resource kind. Nothing here reads files, clocks
//! or sockets, so every push is reproducible and its version is a hash of its content.

mod cluster;
mod listener;
mod route;

use envoy_types::pb::envoy::config::core::v3::{
    config_source::ConfigSourceSpecifier, AggregatedConfigSource, ApiVersion, ConfigSource,
};
use envoy_types::pb::google::protobuf::{Any, Duration as ProtoDuration};
use prost::Name;
use tollgate_routes::RoutesConfig;

use crate::snapshot::{type_url, Resource, Snapshot};

/// Builds the complete Envoy configuration for `config`.
pub fn translate(config: &RoutesConfig) -> Snapshot {
    let clusters = config.services.values().map(|service| {
        let cluster = cluster::cluster(service);
        (
            type_url::CLUSTER,
            Resource::new(&service.name, type_url::CLUSTER, &cluster),
        )
    });
    let endpoints = config
        .services
        .values()
        .filter(|service| cluster::uses_eds(service))
        .map(|service| {
            let assignment = cluster::load_assignment(service);
            (
                type_url::ENDPOINT,
                Resource::new(&service.name, type_url::ENDPOINT, &assignment),
            )
        });
    let listeners = config.listeners.iter().map(|l| {
        (
            type_url::LISTENER,
            Resource::new(&l.name, type_url::LISTENER, &listener::listener(l)),
        )
    });
    let routes = config.listeners.iter().map(|l| {
        let route_config = route::route_configuration(&l.name, config.routes_on(&l.name));
        (
            type_url::ROUTE,
            Resource::new(&l.name, type_url::ROUTE, &route_config),
        )
    });
    Snapshot::new(clusters.chain(endpoints).chain(listeners).chain(routes))
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
