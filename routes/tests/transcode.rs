//! A route's `transcode`: its descriptor set is read beside routes.yaml and must declare the
//! services named; only gRPC services can be transcoded to.

mod common;

use common::{assert_error_at, errors_with_files, Files};

use prost::Message as _;
use prost_types::{FileDescriptorProto, FileDescriptorSet, ServiceDescriptorProto};
use tollgate_routes::parse_with_files;

/// A descriptor set declaring `shop.v1.Orders` and `shop.v1.Payments`.
fn descriptor_set() -> Vec<u8> {
    FileDescriptorSet {
        file: vec![FileDescriptorProto {
            name: Some("shop.proto".into()),
            package: Some("shop.v1".into()),
            service: ["Orders", "Payments"]
                .iter()
                .map(|name| ServiceDescriptorProto {
                    name: Some((*name).into()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

const ROUTES: &str = "version: 1
services:
  orders: {endpoints: [\"127.0.0.1:50051\"], protocol: grpc}
  web: {endpoints: [\"127.0.0.1:3000\"]}
routes:
  - name: orders-rest
    match: {prefix: /v1/orders}
    service: orders
    transcode: {descriptor_set: protos/shop.pb, services: [shop.v1.Orders]}
";

#[test]
fn the_descriptor_set_is_read_beside_routes_yaml_into_the_model() {
    let files = Files::new(&[("protos/shop.pb", &descriptor_set())]);
    let (config, _) = parse_with_files("routes.yaml", ROUTES, &files).expect("valid");
    let transcode = config.routes[0].transcode.as_ref().expect("transcode");
    assert_eq!(transcode.services, ["shop.v1.Orders"]);
    assert_eq!(transcode.descriptor_set, descriptor_set());
    assert_eq!(transcode.descriptor_file.to_str(), Some("protos/shop.pb"));
    // The sidecars read routes.yaml without its files: the route is still valid there.
    let config = tollgate_routes::parse("routes.yaml", ROUTES).expect("valid without files");
    assert!(config.routes[0].transcode.is_some());
}

#[test]
fn a_missing_or_foreign_file_and_an_unknown_service_are_reported_at_their_fields() {
    let missing = errors_with_files(ROUTES, &Files::new(&[]));
    assert!(
        missing[0].starts_with("9:33: cannot read descriptor_set \"protos/shop.pb\""),
        "{missing:?}"
    );
    let foreign = errors_with_files(ROUTES, &Files::new(&[("protos/shop.pb", b"not protobuf")]));
    assert!(
        foreign[0].starts_with(
            "9:33: descriptor_set \"protos/shop.pb\" is not a compiled descriptor set"
        ),
        "{foreign:?}"
    );
    let unknown = ROUTES.replace("[shop.v1.Orders]", "[shop.v1.Orders, shop.v1.Refunds]");
    let found = errors_with_files(
        &unknown,
        &Files::new(&[("protos/shop.pb", &descriptor_set())]),
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("9:76: service \"shop.v1.Refunds\" is not in descriptor_set \"protos/shop.pb\" (it has: shop.v1.Orders, shop.v1.Payments)"),
        "{found:?}"
    );
}

#[test]
fn only_a_grpc_service_can_be_transcoded_to() {
    // Checked without the files too: the sidecars, which read none, refuse it alike.
    let to_web = ROUTES.replace("service: orders\n", "service: web\n");
    assert_error_at(
        &to_web,
        "7:12:",
        "forwards gRPC, but service \"web\" has no `protocol: grpc`",
    );
}
