//! Writes the seed corpora of fuzz/'s `check_request` and `ratelimit_request` targets:
//! CheckRequests and RateLimitRequests shaped as Envoy 1.40 sends them for the routes of
//! examples/routes.yaml (the fields its ext_authz and ratelimit filters fill, the context
//! extensions and descriptors the control plane configures), encoded by prost.
//! `cargo test -p tollgate-proto --test fuzz_seeds -- --ignored` rewrites them.

use std::collections::HashMap;
use std::path::PathBuf;

use prost::Message;
use tollgate_proto::envoy::config::core::v3::{
    address, socket_address, Address, HeaderMap, HeaderValue, Metadata, SocketAddress,
};
use tollgate_proto::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::Entry, RateLimitDescriptor,
};
use tollgate_proto::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use tollgate_proto::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use tollgate_proto::envoy::service::ratelimit::v3::RateLimitRequest;
use tollgate_proto::google::protobuf::Timestamp;

fn corpus(target: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    dir
}

fn peer(ip: &str, port: u32, certificate: &str) -> Option<Peer> {
    Some(Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        certificate: certificate.into(),
        ..Default::default()
    })
}

fn strings(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A request through the gateway's `public` listener as ext_authz describes it.
fn check(
    path: &str,
    headers: &[(&str, &str)],
    context: &[(&str, &str)],
    raw_headers: bool,
    certificate: &str,
) -> CheckRequest {
    let mut all = strings(&[
        (":authority", "localhost:8080"),
        (":method", "GET"),
        (":path", path),
        (":scheme", "http"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "6f1c2a4e-3b7d-4a8e-9c55-0d2f3e4a5b6c"),
    ]);
    all.extend(strings(headers));
    let (headers, header_map) = if raw_headers {
        let map = HeaderMap {
            headers: all
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: k.clone(),
                    raw_value: v.clone().into_bytes(),
                    ..Default::default()
                })
                .collect(),
        };
        (HashMap::new(), Some(map))
    } else {
        (all, None)
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: peer("127.0.0.1", 51234, certificate),
            destination: peer("127.0.0.1", 8080, ""),
            request: Some(Request {
                time: Some(Timestamp {
                    seconds: 1_790_000_000,
                    nanos: 123_000_000,
                }),
                http: Some(HttpRequest {
                    id: "12345678901234567890".into(),
                    method: "GET".into(),
                    headers,
                    header_map,
                    path: path.into(),
                    host: "localhost:8080".into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
            }),
            context_extensions: strings(context),
            metadata_context: Some(Metadata::default()),
            ..Default::default()
        }),
    }
}

const TOKEN: &str = "Bearer eyJhbGciOiJIUzI1NiIsImtpZCI6InNlY3JldCIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2lkLmV4YW1wbGUuY29tIiwiYXVkIjoidG9sbGdhdGUiLCJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.c2lnbmF0dXJl";

#[test]
#[ignore = "writes fuzz/corpus; run by hand when the shapes change"]
fn write_fuzz_seeds() {
    let invoices = [
        ("route", "invoices"),
        ("provider", "main"),
        ("scopes", "invoices:read"),
    ];
    let checks = [
        ("jwt-bearer", check("/api/v1/invoices/42", &[("authorization", TOKEN)], &invoices, false, "")),
        ("jwt-raw-header-map", check("/api/v1/invoices/42", &[("authorization", TOKEN)], &invoices, true, "")),
        ("no-credentials", check("/api/v1/invoices/42", &[], &invoices, false, "")),
        (
            "api-key",
            check(
                "/partner/v1/invoices/42",
                &[("x-api-key", "tg_demo_0123456789abcdef")],
                &[("route", "partner-invoices"), ("provider", "partners"), ("scopes", ""), ("consumers", "acme globex")],
                false,
                "",
            ),
        ),
        (
            "token-in-query",
            check("/api/v1/invoices/42?access_token=a.b.c&x=1", &[], &invoices, false, ""),
        ),
        (
            "client-certificate",
            check(
                "/internal/v1/report",
                &[],
                &[("route", "internal"), ("provider", "mtls"), ("scopes", "")],
                false,
                "-----BEGIN%20CERTIFICATE-----%0AMIIBszCCAVmgAwIBAgIUQ2xpZW50%0A-----END%20CERTIFICATE-----%0A",
            ),
        ),
    ];
    for (name, request) in checks {
        std::fs::write(corpus("check_request").join(name), request.encode_to_vec()).expect("write");
    }

    let descriptor = |entries: &[(&str, &str)]| RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..Default::default()
    };
    let limits = [
        (
            "per-consumer",
            RateLimitRequest {
                domain: "tollgate".into(),
                descriptors: vec![descriptor(&[
                    ("route", "invoices"),
                    ("rule", "0"),
                    ("consumer", "alice"),
                ])],
                hits_addend: 1,
            },
        ),
        (
            "tiered",
            RateLimitRequest {
                domain: "tollgate".into(),
                descriptors: vec![descriptor(&[
                    ("route", "invoices"),
                    ("rule", "1"),
                    ("consumer", "bob"),
                    ("tier", "premium"),
                ])],
                hits_addend: 0,
            },
        ),
        (
            "readme-example-4",
            RateLimitRequest {
                domain: "example4".into(),
                descriptors: vec![descriptor(&[("key", "value"), ("subkey", "subvalue")])],
                hits_addend: 1,
            },
        ),
        (
            "readme-example-6",
            RateLimitRequest {
                domain: "example6".into(),
                descriptors: vec![
                    descriptor(&[("service", "auth-service"), ("user", "user-a")]),
                    descriptor(&[("service", "auth-service"), ("user", "user-b")]),
                ],
                hits_addend: 1,
            },
        ),
        (
            "hits-addend-per-descriptor",
            RateLimitRequest {
                domain: "example6".into(),
                descriptors: vec![RateLimitDescriptor {
                    hits_addend: Some(tollgate_proto::google::protobuf::UInt64Value { value: 5 }),
                    ..descriptor(&[("service", "auth-service"), ("user", "user-b")])
                }],
                hits_addend: 1,
            },
        ),
    ];
    for (name, request) in limits {
        std::fs::write(
            corpus("ratelimit_request").join(name),
            request.encode_to_vec(),
        )
        .expect("write");
    }
}
