//! Per-route traffic policies through a real Envoy (issue 5): retries that recover a flaky
//! upstream within their attempts and give up beyond them, per-try and idle timeouts, CORS
//! answered by the gateway (before auth), header edits both ways, regex path and host
//! rewrites, and a request body limit answered with the gateway's JSON 413.

use tollgate_conformance::{
    eventually, get, request, reserve_port, Gateway, Upstream, UpstreamHandle,
};

/// How many requests to exactly `path` the upstream has seen.
fn hits(upstream: &UpstreamHandle, path: &str) -> usize {
    upstream.paths().iter().filter(|p| *p == path).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_recover_within_their_attempts_and_give_up_beyond() {
    let upstream = Upstream::new("api")
        .fail_first("/retried/twice-failing", 2, 503)
        .fail_first("/retried/thrice-failing", 3, 503)
        .fail_first("/retried/conflict", 1, 409)
        .fail_first("/plain/once-failing", 1, 503)
        .spawn()
        .await;
    let gw = Gateway::start(
        &upstream,
        "  - name: retried
    match: {prefix: /retried/}
    service: api
    retries: {attempts: 3, on: [5xx, retriable-4xx], backoff: {base: 10ms, max: 50ms}}
  - {name: plain, match: {prefix: /plain/}, service: api}
",
        "",
        "/plain/ready",
    )
    .await;

    get(gw.port, "/retried/twice-failing")
        .await
        .unwrap()
        .expect_upstream("api")
        .expect("two failures and a success fit in three attempts");
    assert_eq!(hits(&upstream, "/retried/twice-failing"), 3);

    let gave_up = get(gw.port, "/retried/thrice-failing").await.unwrap();
    gave_up
        .expect_status(503)
        .expect("three failures use up three attempts");
    assert_eq!(
        hits(&upstream, "/retried/thrice-failing"),
        3,
        "no fourth try"
    );

    get(gw.port, "/retried/conflict")
        .await
        .unwrap()
        .expect_upstream("api")
        .expect("retriable-4xx retries a 409");
    assert_eq!(hits(&upstream, "/retried/conflict"), 2);

    get(gw.port, "/plain/once-failing")
        .await
        .unwrap()
        .expect_status(503)
        .expect("a route without retries passes the first failure on");
    assert_eq!(hits(&upstream, "/plain/once-failing"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_cuts_each_slow_try_and_idle_timeout_ends_a_silent_stream() {
    let upstream = Upstream::new("api")
        // Shorter than the routes' 10 s timeout: without the policy under test these
        // requests would succeed, slowly.
        .delay("/per-try/slow", std::time::Duration::from_secs(5))
        .delay("/idle/slow", std::time::Duration::from_secs(5))
        .spawn()
        .await;
    let gw = Gateway::start(
        &upstream,
        "  - name: per-try
    match: {prefix: /per-try/}
    service: api
    timeout: 10s
    retries: {attempts: 2, per_try_timeout: 300ms, on: [5xx]}
  - name: idle
    match: {prefix: /idle/}
    service: api
    timeout: 10s
    idle_timeout: 300ms
",
        "",
        "/per-try/ready",
    )
    .await;

    let timed_out = get(gw.port, "/per-try/slow").await.unwrap();
    timed_out.expect_status(504).expect(
        "every try timed out, though the upstream would have answered in time for the route",
    );
    assert_eq!(
        timed_out.json().unwrap()["error"],
        "upstream timeout",
        "the gateway's own JSON reply"
    );
    eventually("both tries reached the upstream", async || {
        anyhow::ensure!(hits(&upstream, "/per-try/slow") == 2);
        Ok(())
    })
    .await;

    let idle = get(gw.port, "/idle/slow").await.unwrap();
    idle.expect_status(504)
        .expect("a stream silent for longer than idle_timeout is ended");
    assert_eq!(idle.json().unwrap()["error"], "upstream timeout");
    assert_eq!(hits(&upstream, "/idle/slow"), 1);
}

const APP: &str = "https://app.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_by_the_gateway_before_auth() {
    let upstream = Upstream::new("api").spawn().await;
    // Nothing listens here: any request that reaches ext_authz fails closed with 503, so a
    // preflight answered 200 proves CORS ran first.
    let dead_authz = reserve_port();
    let gw = Gateway::start(
        &upstream,
        &format!(
            "  - name: protected
    match: {{prefix: /api/, methods: [GET, POST]}}
    service: api
    auth: {{provider: main}}
    cors: {{origins: [\"{APP}\"], methods: [GET, POST], headers: [authorization, content-type], expose_headers: [x-request-id], credentials: true, max_age: 10m}}
  - {{name: open, match: {{prefix: /open/}}, service: api}}
  - {{name: own-cors, match: {{prefix: /own/}}, service: api, cors: {{enabled: false}}}}
"
        ),
        &format!(
            "auth_providers:
  main: {{issuer: https://id.example.com, audiences: [api], jwks_file: jwks.json}}
sidecars:
  ext_authz: {{address: \"127.0.0.1:{dead_authz}\"}}
cors: {{origins: [\"*\"], methods: [GET]}}
"
        ),
        "/open/ready",
    )
    .await;
    let before = upstream.requests();

    let preflight = request(gw.port)
        .method("OPTIONS")
        .path("/api/invoices")
        .header("origin", APP)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    preflight.expect_status(200).unwrap();
    assert_eq!(preflight.header("access-control-allow-origin"), Some(APP));
    assert_eq!(
        preflight.header("access-control-allow-methods"),
        Some("GET,POST")
    );
    assert_eq!(
        preflight.header("access-control-allow-headers"),
        Some("authorization,content-type")
    );
    assert_eq!(
        preflight.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(preflight.header("access-control-max-age"), Some("600"));

    let stranger = request(gw.port)
        .method("OPTIONS")
        .path("/api/invoices")
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    // Envoy answers it too (200, empty), but without an allow-origin the browser refuses
    // to send the actual request.
    stranger.expect_status(200).unwrap();
    assert_eq!(
        stranger.header("access-control-allow-origin"),
        None,
        "a disallowed origin gets no allow header ({} {:?})",
        stranger.status,
        stranger.text()
    );
    assert_eq!(
        upstream.requests(),
        before,
        "no preflight reached the upstream"
    );

    // An actual request still meets auth (here failing closed), and the browser may read
    // the answer because the allow headers are on it.
    let actual = request(gw.port)
        .path("/api/invoices")
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    actual.expect_status(503).unwrap();
    assert_eq!(actual.header("access-control-allow-origin"), Some(APP));
    assert_eq!(
        actual.header("access-control-expose-headers"),
        Some("x-request-id")
    );

    // A route without its own policy uses the top-level one.
    let open = request(gw.port)
        .path("/open/x")
        .header("origin", "https://anyone.example")
        .send()
        .await
        .unwrap();
    open.expect_upstream("api").unwrap();
    assert_eq!(
        open.header("access-control-allow-origin"),
        Some("https://anyone.example")
    );
    let no_origin = get(gw.port, "/open/x").await.unwrap();
    assert_eq!(
        no_origin.header("access-control-allow-origin"),
        None,
        "not a CORS request"
    );

    // A route that switches CORS off is left to its upstream: its preflight goes through
    // and nothing the gateway adds says any origin may read the answers.
    let before = upstream.requests();
    let passed = request(gw.port)
        .method("OPTIONS")
        .path("/own/x")
        .header("origin", "https://anyone.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    passed.expect_upstream("api").unwrap();
    assert_eq!(passed.header("access-control-allow-origin"), None);
    assert_eq!(
        upstream.requests(),
        before + 1,
        "the preflight reached the upstream"
    );
    let actual = request(gw.port)
        .path("/own/x")
        .header("origin", "https://anyone.example")
        .send()
        .await
        .unwrap();
    actual.expect_upstream("api").unwrap();
    assert_eq!(actual.header("access-control-allow-origin"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_edits_and_rewrites_are_seen_upstream_and_downstream() {
    let upstream = Upstream::new("api").spawn().await;
    let gw = Gateway::start(
        &upstream,
        "  - name: edited
    match: {prefix: /v1/}
    service: api
    request_headers: {add: {x-from: gw}, set: {x-env: prod, x-share: 100%}, remove: [x-debug]}
    response_headers: {add: {x-served-by: tollgate}, set: {cache-control: no-store}, remove: [x-envoy-upstream-service-time]}
    rewrite_regex: {pattern: \"^/v1/([a-z]+)/([0-9]+)$\", substitution: \"/\\\\1/by-id/\\\\2\"}
    host_rewrite: invoices.internal
  - {name: plain, match: {prefix: /}, service: api}
",
        "",
        "/ready",
    )
    .await;

    let response = request(gw.port)
        .path("/v1/invoices/42")
        .header("x-env", "dev")
        .header("x-debug", "1")
        .send()
        .await
        .unwrap();
    response.expect_upstream("api").unwrap();
    let echo = response.json().unwrap();
    assert_eq!(echo["path"], "/invoices/by-id/42", "rewrite_regex");
    assert_eq!(echo["headers"]["host"], "invoices.internal", "host_rewrite");
    assert_eq!(echo["headers"]["x-from"], "gw");
    assert_eq!(
        echo["headers"]["x-env"], "prod",
        "set replaces the client's"
    );
    assert_eq!(echo["headers"]["x-share"], "100%", "values are literal");
    assert!(echo["headers"].get("x-debug").is_none(), "{echo}");

    assert_eq!(response.header("x-served-by"), Some("tollgate"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert_eq!(response.header("x-envoy-upstream-service-time"), None);

    let plain = get(gw.port, "/v2/x").await.unwrap();
    assert!(
        plain.header("x-envoy-upstream-service-time").is_some(),
        "other routes are untouched"
    );
    assert_eq!(plain.json().unwrap()["path"], "/v2/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_request_bytes_get_the_gateways_413() {
    let upstream = Upstream::new("api").spawn().await;
    let gw = Gateway::start(
        &upstream,
        "  - name: upload
    match: {prefix: /upload}
    service: api
    max_request_bytes: 1024
  - {name: plain, match: {prefix: /}, service: api}
",
        "",
        "/ready",
    )
    .await;

    request(gw.port)
        .method("POST")
        .path("/upload")
        .body(vec![b'a'; 1000])
        .send()
        .await
        .unwrap()
        .expect_upstream("api")
        .expect("a body within the limit passes");
    let before = hits(&upstream, "/upload");
    let refused = request(gw.port)
        .method("POST")
        .path("/upload")
        .body(vec![b'a'; 4096])
        .send()
        .await
        .unwrap();
    refused.expect_status(413).unwrap();
    assert_eq!(refused.json().unwrap()["error"], "payload too large");
    assert_eq!(
        hits(&upstream, "/upload"),
        before,
        "the upstream never saw it"
    );

    request(gw.port)
        .method("POST")
        .path("/elsewhere")
        .body(vec![b'a'; 4096])
        .send()
        .await
        .unwrap()
        .expect_upstream("api")
        .expect("other routes are not limited");
}
