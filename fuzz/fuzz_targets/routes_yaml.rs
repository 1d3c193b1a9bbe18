//! routes.yaml: reading, validation and translation never panic, and every document that
//! validates translates into resources that decode as their Envoy type and encode back to
//! the very bytes served, with the same content-hash version. Translating the same
//! document twice gives the same snapshot version.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tollgate_control_plane::snapshot::{type_url, Resource};
use tollgate_control_plane::translate::translate;
use tollgate_proto::envoy::config::cluster::v3::Cluster;
use tollgate_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use tollgate_proto::envoy::config::listener::v3::Listener;
use tollgate_proto::envoy::config::route::v3::RouteConfiguration;
use tollgate_proto::envoy::extensions::transport_sockets::tls::v3::Secret;

/// `served` decoded as `M` and made into a resource again, as the control plane makes one.
fn round_trip<M: Message + Default>(served: &Resource) -> Resource {
    let url = served.body.type_url.as_str();
    let message = M::decode(served.body.value.as_slice())
        .unwrap_or_else(|error| panic!("a translated {url} does not decode: {error}"));
    Resource::new(served.name.clone(), url, &message)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = tollgate_routes::parse("routes.yaml", text) else {
        return;
    };
    let snapshot = translate(&config, &Default::default());
    for url in type_url::ORDERED {
        for (name, served) in &snapshot.resources(url).resources {
            assert_eq!(&served.name, name);
            assert_eq!(served.body.type_url, url);
            let again = match url {
                type_url::CLUSTER => round_trip::<Cluster>(served),
                type_url::ENDPOINT => round_trip::<ClusterLoadAssignment>(served),
                type_url::LISTENER => round_trip::<Listener>(served),
                type_url::ROUTE => round_trip::<RouteConfiguration>(served),
                type_url::SECRET => round_trip::<Secret>(served),
                other => panic!("unexpected type {other}"),
            };
            assert!(
                again == *served,
                "{url} {name:?} does not encode back to the bytes served"
            );
        }
    }
    assert_eq!(
        translate(&config, &Default::default()).version(),
        snapshot.version()
    );
});
