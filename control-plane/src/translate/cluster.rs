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
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, Address, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint,
    LocalityLbEndpoints,
};
use tollgate_routes::Service;

use super::{ads_config_source, proto_duration};

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
