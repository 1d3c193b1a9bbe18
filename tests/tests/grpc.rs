//! gRPC through Envoy to a real gRPC server (tonic's grpc.health.v1): `protocol: grpc`
//! services over HTTP/2 with gRPC health checks, `grpc_service` routes, unary and
//! server-streaming calls, the upstream's own status passed through, and the errors the
//! gateway makes itself (no token, a dead service, a deadline) read as gRPC statuses.

use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tollgate_conformance::ratelimit::RateLimitService;
use tollgate_conformance::{eventually, reserve_port, ControlPlane, Envoy, ExtAuthz};
use tollgate_testkit::jwt::{claims, jwks, TestKey};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::HealthReporter;

/// A gRPC server answering grpc.health.v1 on loopback; the reporter changes what it says.
async fn health_server() -> (std::net::SocketAddr, HealthReporter) {
    let (reporter, service) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, reporter)
}

/// An HTTP/2 server that answers every call only after `delay`: a gRPC method too slow for
/// its caller's deadline.
async fn slow_server(delay: Duration) -> std::net::SocketAddr {
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| async move {
                    tokio::time::sleep(delay).await;
                    hyper::Response::builder()
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "0")
                        .body(Full::new(bytes::Bytes::new()))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A client of the gateway's port that names `host` as its `:authority`.
async fn client(port: u16, host: &str) -> anyhow::Result<HealthClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .origin(format!("http://{host}").parse()?)
        .connect()
        .await?;
    Ok(HealthClient::new(channel))
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_pass_and_gateway_errors_read_as_grpc_statuses() {
    let (server, reporter) = health_server().await;
    reporter
        .set_service_status("shop.v1.Orders", tonic_health::ServingStatus::Serving)
        .await;
    let key = TestKey::rsa("grpc-1", 0);
    let port = reserve_port();
    let authz = ExtAuthz::new();
    let limits = RateLimitService::new();
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - {{name: public, address: "127.0.0.1:{port}"}}
services:
  orders:
    endpoints: ["{server}"]
    protocol: grpc
    health_check: {{interval: 1s, timeout: 500ms}}
  slow:
    endpoints: ["{slow}"]
    protocol: grpc
  gone:
    endpoints: ["127.0.0.1:{closed}"]
    protocol: grpc
    connect_timeout: 250ms
auth_providers:
  main: {{issuer: "{issuer}", audiences: [{audience}], jwks_file: jwks.json}}
routes:
  - name: slow
    match: {{grpc_service: grpc.health.v1.Health, hosts: [slow.test]}}
    service: slow
    timeout: 1s
  - name: gone
    match: {{grpc_service: grpc.health.v1.Health, hosts: [gone.test]}}
    service: gone
  - name: guarded
    match: {{grpc_service: grpc.health.v1.Health, hosts: [guarded.test]}}
    service: orders
    auth: {{provider: main}}
  - name: scoped
    match: {{grpc_service: grpc.health.v1.Health, hosts: [scoped.test]}}
    service: orders
    auth: {{provider: main, scopes: ["orders:admin"]}}
  - name: limited
    match: {{grpc_service: grpc.health.v1.Health, hosts: [limited.test]}}
    service: orders
    rate_limit:
      - {{by: client_ip, requests: 1, per: minute}}
  - name: health
    match: {{grpc_service: grpc.health.v1.Health}}
    service: orders
    timeout: 30s
sidecars:
  ext_authz: {{address: "{authz}", timeout: 1s, failure_mode_allow: false}}
  rate_limit: {{address: "{limits}", timeout: 1s, failure_mode_deny: false, domain: tollgate}}
"#,
            closed = reserve_port(),
            slow = slow_server(Duration::from_secs(20)).await,
            issuer = tollgate_testkit::jwt::ISSUER,
            audience = tollgate_testkit::jwt::AUDIENCE,
            authz = authz.grpc_addr(),
            limits = limits.grpc_addr(),
        ))
        .start()
        .await;
    let _authz = authz
        .routes_file(cp.routes_path())
        .jwks(&jwks(&[&key]))
        .start()
        .await;
    let _limits = limits.routes_file(cp.routes_path()).start().await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;

    // Unary, once the gRPC health check has found the endpoint healthy.
    let mut health = eventually("a unary call reaches the gRPC server", async || {
        let mut health = client(port, "shop.test").await?;
        let answer = health.check(check("shop.v1.Orders")).await?.into_inner();
        anyhow::ensure!(answer.status == ServingStatus::Serving as i32, "{answer:?}");
        Ok(health)
    })
    .await;
    // The upstream's own status, passed through.
    let unknown = health
        .check(check("no.such.Service"))
        .await
        .expect_err("the server does not know the service");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    // Server streaming: the first answer at once, the next when the status changes.
    let mut watch = health
        .watch(check("shop.v1.Orders"))
        .await
        .expect("a stream")
        .into_inner();
    let first = watch
        .message()
        .await
        .expect("a message")
        .expect("not ended");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    reporter
        .set_service_status("shop.v1.Orders", tonic_health::ServingStatus::NotServing)
        .await;
    let second = watch
        .message()
        .await
        .expect("a message")
        .expect("not ended");
    assert_eq!(second.status, ServingStatus::NotServing as i32);
    drop(watch);

    // The client's deadline ends the stream long before the route's 30 s.
    let started = Instant::now();
    let mut request = tonic::Request::new(check("shop.v1.Orders"));
    request.set_timeout(Duration::from_millis(500));
    let ended = match health.watch(request).await {
        Ok(stream) => {
            let mut stream = stream.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => break Code::Ok,
                    Err(status) => break status.code(),
                }
            }
        }
        Err(status) => status.code(),
    };
    assert_ne!(
        ended,
        Code::Ok,
        "a stream cut by its deadline is not a success"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "grpc-timeout: 500ms was not honoured: the stream lasted {:?} ({ended:?})",
        started.elapsed()
    );

    // Errors the gateway makes: gRPC statuses, with HTTP 200, not JSON bodies.
    let mut guarded = client(port, "guarded.test").await.expect("a channel");
    let refused = guarded
        .check(check("shop.v1.Orders"))
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let mut with_token = tonic::Request::new(check("shop.v1.Orders"));
    with_token.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", key.mint(&claims()))
            .parse()
            .expect("metadata"),
    );
    guarded
        .check(with_token)
        .await
        .expect("a valid token passes");

    // A token without the route's scope.
    let mut scoped = client(port, "scoped.test").await.expect("a channel");
    let mut unscoped = tonic::Request::new(check("shop.v1.Orders"));
    unscoped.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", key.mint(&claims()))
            .parse()
            .expect("metadata"),
    );
    let forbidden = scoped
        .check(unscoped)
        .await
        .expect_err("the scope is missing");
    assert_eq!(forbidden.code(), Code::PermissionDenied, "{forbidden:?}");

    // One call a minute: the next is refused (the limit fails open until the rate-limit
    // service answers, so calls are repeated until one is counted over it).
    let mut limited = client(port, "limited.test").await.expect("a channel");
    let exhausted = eventually("a call over the limit is refused", async || {
        match limited.check(check("shop.v1.Orders")).await {
            Ok(_) => anyhow::bail!("still within the limit"),
            Err(status) => Ok(status),
        }
    })
    .await;
    assert_eq!(exhausted.code(), Code::ResourceExhausted, "{exhausted:?}");

    let mut gone = client(port, "gone.test").await.expect("a channel");
    let unavailable = gone
        .check(check(""))
        .await
        .expect_err("nothing listens there");
    assert_eq!(unavailable.code(), Code::Unavailable, "{unavailable:?}");

    // A unary call that the route's timeout (1 s) ends before the service answers (20 s).
    // A client's own grpc-timeout would race tonic's own deadline, which ends the call on
    // the client's side with CANCELLED.
    let mut slow = client(port, "slow.test").await.expect("a channel");
    let late = slow
        .check(check(""))
        .await
        .expect_err("the route's timeout passes first");
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");
}
