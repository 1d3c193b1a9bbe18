//! What the gateway says by itself: correlation ids, its own `/health`, JSON bodies on every
//! reply it makes, and one JSON access log line per request without credentials.

use tollgate_conformance::{
    eventually, get, request, reserve_port, ControlPlane, Envoy, RunningEnvoy, Upstream,
};

fn routes(port: u16, upstream: &str, dead: u16) -> String {
    format!(
        r#"version: 1
listeners:
  - {{name: public, address: "127.0.0.1:{port}"}}
services:
  api: {{endpoints: ["{upstream}"]}}
  gone: {{endpoints: ["127.0.0.1:{dead}"], connect_timeout: 250ms}}
routes:
  - {{name: api, match: {{prefix: /api/}}, service: api}}
  - {{name: gone, match: {{prefix: /gone/}}, service: gone}}
"#
    )
}

async fn gateway() -> (
    u16,
    tollgate_conformance::UpstreamHandle,
    tollgate_conformance::RunningControlPlane,
    RunningEnvoy,
) {
    let upstream = Upstream::new("api").spawn().await;
    let port = reserve_port();
    // Nothing listens on this port: the route to it meets a refused connection.
    let dead = reserve_port();
    let cp = ControlPlane::new()
        .routes(routes(port, &upstream.endpoint(), dead))
        .start()
        .await;
    let envoy = Envoy::new().control_plane(&cp).start().await;
    eventually("the api route is served", async || {
        get(port, "/api/x").await?.expect_upstream("api")?;
        Ok(())
    })
    .await;
    (port, upstream, cp, envoy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_request_id_is_kept_passed_upstream_and_echoed() {
    let (port, _up, _cp, _envoy) = gateway().await;
    let response = request(port)
        .path("/api/x")
        .header("x-request-id", "trace-me-1234")
        .send()
        .await
        .expect("request");
    assert_eq!(response.header("x-request-id"), Some("trace-me-1234"));
    let echoed = response.json().expect("json");
    assert_eq!(echoed["headers"]["x-request-id"], "trace-me-1234");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_an_id_gets_a_fresh_one_per_request() {
    let (port, _up, _cp, _envoy) = gateway().await;
    let first = get(port, "/api/x").await.expect("request");
    let second = get(port, "/api/x").await.expect("request");
    let id = first
        .header("x-request-id")
        .expect("an id is generated")
        .to_string();
    assert_eq!(
        first.json().expect("json")["headers"]["x-request-id"],
        id.as_str()
    );
    assert_ne!(second.header("x-request-id"), Some(id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_answered_by_the_gateway_without_any_upstream() {
    let (port, upstream, _cp, _envoy) = gateway().await;
    let before = upstream.requests();
    let response = get(port, "/health").await.expect("request");
    assert_eq!(response.status, 200);
    assert_eq!(response.json().expect("json")["status"], "ok");
    assert_eq!(upstream.requests(), before, "no upstream hop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_the_gateway_makes_itself_are_json_with_the_request_id() {
    let (port, _up, _cp, _envoy) = gateway().await;
    for (path, status, error) in [
        ("/nowhere", 404, "no route matches this request"),
        ("/gone/x", 503, "service unavailable"),
    ] {
        let response = request(port)
            .path(path)
            .header("x-request-id", "req-42")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status, status, "{path}");
        assert!(
            response
                .header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{path}: {:?}",
            response.headers
        );
        let body = response.json().expect("a JSON body");
        assert_eq!(body["error"], error, "{path}");
        assert_eq!(body["request_id"], "req-42", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_logged_as_json_without_credentials() {
    let (port, _up, _cp, envoy) = gateway().await;
    request(port)
        .path("/api/logged?access_token=secret-in-query")
        .header("x-request-id", "logged-1")
        .header("authorization", "Bearer secret-in-header")
        .send()
        .await
        .expect("request");
    let line = eventually("the request is in the access log", async || {
        envoy
            .process()
            .stdout()
            .lines()
            .find(|l| l.contains("logged-1"))
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("no access log line for logged-1 yet"))
    })
    .await;
    let entry: serde_json::Value = serde_json::from_str(&line).expect("the line is JSON");
    assert_eq!(entry["route"], "api");
    assert_eq!(entry["upstream"], "api");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["path"], "/api/logged");
    assert!(entry["duration_ms"].is_number(), "{entry}");
    let stdout = envoy.process().stdout();
    assert!(
        !stdout.contains("secret-in-header"),
        "the Authorization header was logged"
    );
    assert!(
        !stdout.contains("secret-in-query"),
        "the query string was logged"
    );
}
