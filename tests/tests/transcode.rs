//! `transcode` through Envoy: REST and JSON outside, gRPC inside. The descriptor set is
//! compiled by protoc (Debian's protobuf-compiler) from tests/fixtures/transcode, and the
//! gRPC server is a real HTTP/2 server speaking gRPC's framing.

use std::convert::Infallible;
use std::path::Path;
use std::process::Command;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use serde_json::json;
use tokio::net::TcpListener;
use tollgate_conformance::{eventually, request, reserve_port, ControlPlane, Envoy};

#[derive(Clone, PartialEq, Message)]
struct GetOrderRequest {
    #[prost(int32, tag = "1")]
    id: i32,
}

#[derive(Clone, PartialEq, Message)]
struct CreateOrderRequest {
    #[prost(message, optional, tag = "1")]
    order: Option<Order>,
}

#[derive(Clone, PartialEq, Message)]
struct Order {
    #[prost(int32, tag = "1")]
    id: i32,
    #[prost(string, tag = "2")]
    item: String,
    #[prost(int32, tag = "3")]
    quantity: i32,
}

/// `protoc --include_imports --descriptor_set_out` over the test's orders.proto, with
/// GetOrder's path as `get_path`.
fn descriptor_set(get_path: &str) -> Vec<u8> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/transcode");
    let out = tempfile::tempdir().expect("tempdir");
    let proto = std::fs::read_to_string(fixtures.join("orders.proto"))
        .expect("orders.proto")
        .replace("/v1/orders/{id}", get_path);
    std::fs::write(out.path().join("orders.proto"), proto).expect("write orders.proto");
    let set = out.path().join("orders.pb");
    let status = Command::new("protoc")
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", set.display()))
        .arg("-I")
        .arg(out.path())
        .arg("-I")
        .arg(&fixtures)
        .arg("orders.proto")
        .status()
        .expect("run protoc (scripts/provision.sh installs protobuf-compiler)");
    assert!(status.success(), "protoc failed");
    std::fs::read(&set).expect("the descriptor set")
}

/// A gRPC server for shop.v1.Orders: GetOrder answers order `id` (a book, twice); GetOrder
/// of 404 is NOT_FOUND; CreateOrder answers the order it was given with id 100.
async fn orders_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |request: hyper::Request<hyper::body::Incoming>| async move {
                        let path = request.uri().path().to_string();
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let message = unframe(body);
                        let (status, reply) = match path.as_str() {
                            "/shop.v1.Orders/GetOrder" => {
                                let asked = GetOrderRequest::decode(message).unwrap_or_default();
                                if asked.id == 404 {
                                    ("5", None)
                                } else {
                                    (
                                        "0",
                                        Some(Order {
                                            id: asked.id,
                                            item: "book".into(),
                                            quantity: 2,
                                        }),
                                    )
                                }
                            }
                            "/shop.v1.Orders/CreateOrder" => {
                                let created =
                                    CreateOrderRequest::decode(message).unwrap_or_default();
                                (
                                    "0",
                                    Some(Order {
                                        id: 100,
                                        ..created.order.unwrap_or_default()
                                    }),
                                )
                            }
                            _ => ("12", None),
                        };
                        let mut trailers = hyper::HeaderMap::new();
                        trailers.insert("grpc-status", status.parse().expect("a header value"));
                        let frames: Vec<Result<Frame<Bytes>, Infallible>> = reply
                            .map(|order| Ok(Frame::data(frame(&order))))
                            .into_iter()
                            .chain([Ok(Frame::trailers(trailers))])
                            .collect();
                        hyper::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(StreamBody::new(futures_util::stream::iter(frames)))
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// gRPC's length-prefixed message: no compression flag, a 4-byte length, the message.
fn frame(message: &impl Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut framed = BytesMut::with_capacity(5 + body.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(body.len()).expect("small"));
    framed.put_slice(&body);
    framed.freeze()
}

fn unframe(mut body: Bytes) -> Bytes {
    if body.len() < 5 {
        return Bytes::new();
    }
    body.advance(1);
    let length = body.get_u32() as usize;
    body.slice(..length.min(body.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_requests_reach_grpc_methods_and_answer_json() {
    let server = orders_server().await;
    let port = reserve_port();
    let mut cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - {{name: public, address: "127.0.0.1:{port}"}}
services:
  orders: {{endpoints: ["{server}"], protocol: grpc}}
routes:
  - name: orders-rest
    match: {{prefix: /v1/orders}}
    service: orders
    transcode: {{descriptor_set: orders.pb, services: [shop.v1.Orders]}}
"#
        ))
        .file("orders.pb", descriptor_set("/v1/orders/{id}"))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;

    let order = eventually("GET /v1/orders/7 reaches Orders/GetOrder", async || {
        let response = request(port).path("/v1/orders/7").send().await?;
        response.expect_status(200)?;
        response.json()
    })
    .await;
    assert_eq!(order, json!({"id": 7, "item": "book", "quantity": 2}));

    let created = request(port)
        .method("POST")
        .path("/v1/orders")
        .header("content-type", "application/json")
        .body(r#"{"item": "pen", "quantity": 3}"#)
        .send()
        .await
        .expect("POST /v1/orders");
    created.expect_status(200).expect("created");
    assert_eq!(
        created.json().expect("JSON"),
        json!({"id": 100, "item": "pen", "quantity": 3})
    );

    // The service's NOT_FOUND is the REST client's 404.
    request(port)
        .path("/v1/orders/404")
        .send()
        .await
        .expect("GET a missing order")
        .expect_status(404)
        .expect("NOT_FOUND as 404");

    // A recompiled descriptor set is read again, as a rotated certificate is: the method's
    // new path is served without a restart.
    cp.write_file("orders.pb", &descriptor_set("/v1/orders/by-id/{id}"));
    let moved = eventually("the new descriptor set is served", async || {
        let response = request(port).path("/v1/orders/by-id/8").send().await?;
        response.expect_status(200)?;
        response.json()
    })
    .await;
    assert_eq!(moved, json!({"id": 8, "item": "book", "quantity": 2}));
}
