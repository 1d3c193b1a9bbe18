//! One Envoy listener per routes.yaml listener, each an HTTP connection manager whose routes
//! arrive over RDS under the listener's own name.

use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, Address, SocketAddress,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::BoolValue;
use tollgate_routes::Listener as ListenerConfig;

use super::{ads_config_source, any};

pub(super) fn listener(config: &ListenerConfig) -> Listener {
    let manager = HttpConnectionManager {
        stat_prefix: config.name.clone(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: config.name.clone(),
        })),
        // The gateway is the edge: trust the peer address, not a client-supplied
        // x-forwarded-for, when deciding who the client is.
        use_remote_address: Some(BoolValue { value: true }),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(
                any(&Router::default()),
            )),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: config.name.clone(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: config.address.ip().to_string(),
                port_specifier: Some(PortSpecifier::PortValue(u32::from(config.address.port()))),
                ..Default::default()
            })),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&manager))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}
