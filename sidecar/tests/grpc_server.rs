//! `grpc::GrpcServer` over real HTTP/2 on loopback, against tonic's client and a bare
//! HTTP/2 client: its own unary methods, tonic's routes behind them, statuses, deadlines
//! and the requests it refuses.
//!
//! The unary method under test is grpc.health.v1's `Check` (any prost messages would do):
//! it answers SERVING for the service "up", NOT_SERVING for anything else, fails with
//! PERMISSION_DENIED for "refuse" and never answers "hang".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::StreamExt as _;
use tollgate_sidecar::grpc::{self, GrpcServer, MAX_REQUEST_MESSAGE};
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
/// For a loaded machine: every answer here comes well within this.
const PATIENCE: Duration = Duration::from_secs(30);

/// Drops to `true` when the future holding it is dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

struct Running {
    addr: std::net::SocketAddr,
    /// Set when a "hang" call's handler is dropped.
    hang_dropped: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn client(&self) -> HealthClient<Channel> {
        let channel = Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("an address")
            .connect()
            .await
            .expect("connects");
        HealthClient::new(channel)
    }

    /// A Watch of "watched", which tonic's health service serves, after its first update:
    /// SERVING.
    async fn watch(&self) -> tonic::Streaming<HealthCheckResponse> {
        let mut watch = self
            .client()
            .await
            .watch(ask("watched"))
            .await
            .expect("a stream")
            .into_inner();
        let first = tokio::time::timeout(PATIENCE, watch.next())
            .await
            .expect("an update")
            .expect("the stream is open")
            .expect("an update, not an error");
        assert_eq!(first.status, ServingStatus::Serving as i32);
        watch
    }

    async fn stop(mut self) {
        let _ = self.stop.take().expect("running").send(());
        tokio::time::timeout(PATIENCE, &mut self.served)
            .await
            .expect("serving stops when asked")
            .expect("serving did not panic");
    }
}

/// Serves the unary `Check` above, with tonic's health service (whose `Check` the unary
/// method shadows) for every other path; `Watch` then reports "watched" as SERVING.
async fn start() -> Running {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("watched", tonic_health::ServingStatus::Serving)
        .await;
    let hang_dropped = Arc::new(AtomicBool::new(false));
    let flag = hang_dropped.clone();
    let server = GrpcServer::new(Routes::new(health)).unary(
        CHECK_PATH,
        move |request: tonic::Request<HealthCheckRequest>| {
            let flag = flag.clone();
            async move {
                let status = match request.get_ref().service.as_str() {
                    "up" => ServingStatus::Serving,
                    "refuse" => return Err(tonic::Status::permission_denied("not you")),
                    "hang" => {
                        let _dropped = DropFlag(flag);
                        std::future::pending::<()>().await;
                        unreachable!()
                    }
                    _ => ServingStatus::NotServing,
                };
                Ok(tonic::Response::new(HealthCheckResponse {
                    status: status as i32,
                }))
            }
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("an address");
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(grpc::serve(listener, server, async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        hang_dropped,
        stop: Some(stop),
        served,
    }
}

fn ask(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.into(),
    }
}

#[tokio::test]
async fn the_unary_method_answers_each_call_from_its_message() {
    let running = start().await;
    let mut client = running.client().await;
    for (service, expected) in [
        ("up", ServingStatus::Serving),
        ("down", ServingStatus::NotServing),
    ] {
        let reply = client.check(ask(service)).await.expect("an answer");
        // tonic's health service would answer NOT_FOUND for an unknown service: these
        // answers are the unary method's.
        assert_eq!(reply.get_ref().status, expected as i32, "{service}");
    }
    running.stop().await;
}

#[tokio::test]
async fn a_handlers_status_reaches_the_client() {
    let running = start().await;
    let status = running
        .client()
        .await
        .check(ask("refuse"))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "not you");
    running.stop().await;
}

#[tokio::test]
async fn other_methods_are_served_by_tonics_routes() {
    let running = start().await;
    let watch = running.watch().await;
    drop(watch);
    running.stop().await;
}

#[tokio::test]
async fn a_request_message_over_the_limit_is_refused() {
    let running = start().await;
    let huge = "x".repeat(MAX_REQUEST_MESSAGE + 1);
    let status = running
        .client()
        .await
        .check(ask(&huge))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // The server's refusal, not a limit of tonic's client.
    assert!(status.message().contains("larger than"), "{status:?}");
    running.stop().await;
}

/// One request on a bare HTTP/2 connection: what a client other than tonic can send.
async fn raw_call(
    addr: std::net::SocketAddr,
    headers: &[(&str, &str)],
    body: Bytes,
) -> http::Response<hyper::body::Incoming> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("an HTTP/2 handshake");
    tokio::spawn(connection);
    let mut request = http::Request::post(format!("http://{addr}{CHECK_PATH}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body)).expect("a request");
    sender.send_request(request).await.expect("a response")
}

/// `message` in its gRPC frame.
fn framed(message: &impl prost::Message) -> Bytes {
    let mut body = vec![0];
    body.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
    message.encode(&mut body).expect("encodes");
    Bytes::from(body)
}

/// The `grpc-status` of a trailers-only reply.
fn status_in_headers(reply: &http::Response<hyper::body::Incoming>) -> Option<&[u8]> {
    reply.headers().get("grpc-status").map(|v| v.as_bytes())
}

#[tokio::test]
async fn a_stream_left_open_does_not_hold_shutdown_up() {
    let running = start().await;
    let mut watch = running.watch().await;
    // The client keeps watching; serving still ends (after its grace for calls in flight),
    // and the stream with it.
    running.stop().await;
    let after = tokio::time::timeout(PATIENCE, watch.next())
        .await
        .expect("the stream ends with the server");
    assert!(!matches!(after, Some(Ok(_))), "{after:?}");
}

#[tokio::test]
async fn a_call_past_its_grpc_timeout_ends_deadline_exceeded_and_its_handler_is_dropped() {
    let running = start().await;
    // On a bare client: tonic's client would enforce the timeout itself, and this test is
    // about the server's side.
    let reply = tokio::time::timeout(
        PATIENCE,
        raw_call(
            running.addr,
            &[
                ("content-type", "application/grpc"),
                ("grpc-timeout", "100m"),
            ],
            framed(&ask("hang")),
        ),
    )
    .await
    .expect("the server ends the call");
    assert_eq!(
        status_in_headers(&reply),
        Some(b"4".as_slice()),
        "{reply:?}"
    );
    let message = reply.headers().get("grpc-message").expect("a message");
    assert!(message.to_str().expect("ascii").contains("grpc-timeout"));
    assert!(running.hang_dropped.load(Ordering::SeqCst));
    running.stop().await;
}

#[tokio::test]
async fn a_request_that_is_not_grpc_gets_415() {
    let running = start().await;
    let reply = raw_call(
        running.addr,
        &[("content-type", "application/json")],
        Bytes::from_static(b"{}"),
    )
    .await;
    assert_eq!(reply.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    running.stop().await;
}

#[tokio::test]
async fn two_messages_in_a_unary_request_are_refused_in_a_trailers_only_reply() {
    let running = start().await;
    let mut body = Vec::new();
    for _ in 0..2 {
        body.extend_from_slice(&[0, 0, 0, 0, 0]);
    }
    let grpc = [("content-type", "application/grpc")];
    let reply = raw_call(running.addr, &grpc, Bytes::from(body)).await;
    assert_eq!(reply.status(), http::StatusCode::OK);
    assert_eq!(
        status_in_headers(&reply),
        Some(b"13".as_slice()),
        "INTERNAL, in the headers: {:?}",
        reply.headers()
    );
    let rest = reply.into_body().collect().await.expect("the body ends");
    assert!(rest.to_bytes().is_empty());
    running.stop().await;
}
