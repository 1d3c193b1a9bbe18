//! `websocket: true` through Envoy: an HTTP/1.1 Upgrade reaches a real WebSocket echo server
//! and messages flow both ways; the upgrade request needs its token first; a route without
//! `websocket` refuses the upgrade.

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tollgate_conformance::{eventually, reserve_port, ControlPlane, Envoy, ExtAuthz, Upstream};
use tollgate_testkit::jwt::{claims, jwks, TestKey};

/// A WebSocket server that echoes every text message back, prefixed with `echo: `.
async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    if let Message::Text(text) = message {
                        if socket
                            .send(Message::text(format!("echo: {text}")))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_route_passes_the_upgrade_after_auth_and_others_refuse_it() {
    let chat = echo_server().await;
    let plain = Upstream::new("plain").spawn().await;
    let key = TestKey::rsa("ws-1", 0);
    let port = reserve_port();
    let authz = ExtAuthz::new();
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - {{name: public, address: "127.0.0.1:{port}"}}
services:
  chat: {{endpoints: ["{chat}"]}}
  plain: {{endpoints: ["{plain}"]}}
auth_providers:
  main: {{issuer: "{issuer}", audiences: [{audience}], jwks_file: jwks.json}}
routes:
  - name: chat
    match: {{prefix: /ws/}}
    service: chat
    websocket: true
    idle_timeout: 30s
    auth: {{provider: main}}
  - name: open-chat
    match: {{prefix: /open-ws/}}
    service: chat
    websocket: true
  - name: plain
    match: {{prefix: /}}
    service: plain
sidecars:
  ext_authz: {{address: "{authz}", timeout: 1s, failure_mode_allow: false}}
"#,
            plain = plain.endpoint(),
            issuer = tollgate_testkit::jwt::ISSUER,
            audience = tollgate_testkit::jwt::AUDIENCE,
            authz = authz.grpc_addr(),
        ))
        .start()
        .await;
    let _authz = authz
        .routes_file(cp.routes_path())
        .jwks(&jwks(&[&key]))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;
    let token = key.mint(&claims());
    let upgrade = |path: &str, token: Option<&str>| {
        let mut request = format!("ws://127.0.0.1:{port}{path}")
            .into_client_request()
            .expect("a WebSocket request");
        if let Some(token) = token {
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("a header value"),
            );
        }
        tokio_tungstenite::connect_async(request)
    };

    let mut socket = eventually("the WebSocket route upgrades", async || {
        let (socket, response) = upgrade("/ws/room-1", Some(&token)).await?;
        anyhow::ensure!(response.status() == 101, "status {}", response.status());
        Ok(socket)
    })
    .await;
    for text in ["hello", "second message"] {
        socket.send(Message::text(text)).await.expect("send");
        let answer = socket.next().await.expect("an answer").expect("a message");
        assert_eq!(answer, Message::text(format!("echo: {text}")));
    }
    socket.close(None).await.expect("close");

    // The upgrade request is checked like any other: no token, no WebSocket.
    match upgrade("/ws/room-1", None).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("an upgrade without a token must get 401, got {other:?}"),
    }
    // A route without `websocket` refuses the upgrade (Envoy answers 403 to an upgrade a
    // route does not allow), and the plain upstream never sees it.
    match upgrade("/plain-ws", Some(&token)).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("an upgrade on a route without websocket must fail, got {other:?}"),
    }
    assert_eq!(plain.requests(), 0);
    // A public WebSocket route needs no token.
    let (mut open, _) = upgrade("/open-ws/lobby", None).await.expect("upgrades");
    open.send(Message::text("hi")).await.expect("send");
    assert_eq!(
        open.next().await.expect("an answer").expect("a message"),
        Message::text("echo: hi")
    );
}
