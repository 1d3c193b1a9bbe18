//! One Envoy cluster per routes.yaml service, and its endpoints.
//!
//! Services whose endpoints are all IP literals are EDS clusters fed over ADS, so an endpoint
//! change updates a ClusterLoadAssignment without touching the cluster (no drain, no
//! re-warming). A service naming DNS hosts becomes a STRICT_DNS cluster that Envoy resolves
//! itself, since EDS carries addresses, not names.

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy},
    Cluster,
};
use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, Address, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint,
    LocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{
        explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
    },
    HttpProtocolOptions,
};
use tollgate_routes::{Endpoint, Service};

use super::{ads_config_source, any, proto_duration, stable_map};

/// How long Envoy waits to connect to a sidecar; its call timeouts bound the rest.
const SIDECAR_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A cluster for a gRPC sidecar (ext-authz, rate limit): HTTP/2 to one address.
pub(super) fn sidecar(name: &str, address: &Endpoint) -> (Cluster, Option<ClusterLoadAssignment>) {
    let service = Service {
        name: name.to_string(),
        endpoints: vec![address.clone()],
        connect_timeout: SIDECAR_CONNECT_TIMEOUT,
    };
    let mut cluster = cluster(&service);
    let http2 = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    };
    cluster.typed_extension_protocol_options = stable_map([(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
        any(&http2),
    )]);
    let assignment = uses_eds(&service).then(|| load_assignment(&service));
    (cluster, assignment)
}

pub(super) fn uses_eds(service: &Service) -> bool {
    service.endpoints.iter().all(|e| e.is_ip())
}

pub(super) fn cluster(service: &Service) -> Cluster {
    let mut cluster = Cluster {
        name: service.name.clone(),
        connect_timeout: Some(proto_duration(service.connect_timeout)),
        lb_policy: LbPolicy::RoundRobin as i32,
        ..Default::default()
    };
    if uses_eds(service) {
        cluster.cluster_discovery_type =
            Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
        cluster.eds_cluster_config = Some(EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            service_name: String::new(),
        });
    } else {
        cluster.cluster_discovery_type =
            Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
        cluster.load_assignment = Some(load_assignment(service));
    }
    cluster
}

pub(super) fn load_assignment(service: &Service) -> ClusterLoadAssignment {
    let lb_endpoints = service
        .endpoints
        .iter()
        .map(|endpoint| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: endpoint.host.clone(),
                        port_specifier: Some(PortSpecifier::PortValue(u32::from(endpoint.port))),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: service.name.clone(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}
