//! The per-route response cache through a real Envoy (issue 5): a cached answer is served
//! without the upstream and with an `age` until its TTL passes; the request that fills the
//! cache gets the route's rewrite and header edits (the side channel of envoyproxy/envoy
//! #39135, routed through an internal listener); POST, routes without `cache`, and answers
//! marked `no-store` or `private` or setting a cookie never come from the cache.

use std::time::Duration;

use tollgate_conformance::{eventually_within, get, request, Gateway, Upstream, UpstreamHandle};

/// Long enough that nothing expires during a test; [`expired_answers_are_fetched_again`]
/// uses its own short one.
const CACHED_ROUTES: &str = "  - name: cached
    match: {prefix: /cached/}
    service: api
    rewrite_prefix: /origin/
    request_headers: {set: {x-from: gateway}}
    cache: {ttl: 300s}
  - {name: plain, match: {prefix: /plain/}, service: api}
";

/// How many requests to exactly `path` the upstream has seen.
fn hits(upstream: &UpstreamHandle, path: &str) -> usize {
    upstream.paths().iter().filter(|p| *p == path).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_get_within_the_ttl_is_served_from_the_cache_with_an_age() {
    let upstream = Upstream::new("api").spawn().await;
    let gw = Gateway::start(&upstream, CACHED_ROUTES, "", "/plain/ready").await;

    let first = get(gw.port, "/cached/item").await.expect("first GET");
    first
        .expect_upstream("api")
        .expect("answered by the upstream");
    assert_eq!(hits(&upstream, "/origin/item"), 1);
    assert_eq!(first.header("age"), None, "a fresh answer has no age");
    assert_eq!(
        first.header("cache-control"),
        Some("max-age=300"),
        "the gateway supplies the TTL when the upstream says nothing"
    );

    let second = get(gw.port, "/cached/item").await.expect("second GET");
    second.expect_upstream("api").expect("the cached answer");
    assert_eq!(
        hits(&upstream, "/origin/item"),
        1,
        "the second GET must not reach the upstream"
    );
    assert!(
        second.header("age").is_some(),
        "a cached answer carries age"
    );
    assert_eq!(second.body, first.body, "the same answer, from the cache");

    let other = get(gw.port, "/cached/other").await.expect("another path");
    other.expect_upstream("api").expect("a different key");
    assert_eq!(
        hits(&upstream, "/origin/other"),
        1,
        "paths are cached apart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_filling_the_cache_gets_the_routes_rewrite_and_header_edits() {
    // Envoy's cache filter fetches a miss on a side channel that skips the route's actions
    // (envoyproxy/envoy#39135): without the internal listener the upstream would see
    // /cached/item and no x-from.
    let upstream = Upstream::new("api").spawn().await;
    let gw = Gateway::start(&upstream, CACHED_ROUTES, "", "/plain/ready").await;

    let response = get(gw.port, "/cached/item").await.expect("GET");
    response.expect_upstream("api").expect("answered");
    assert_eq!(upstream.paths(), ["/plain/ready", "/origin/item"]);
    assert_eq!(response.upstream_path().as_deref(), Some("/origin/item"));
    assert_eq!(
        response.upstream_header("x-from").as_deref(),
        Some("gateway")
    );
    // Envoy's own fetch of the miss appends Envoy's address to x-forwarded-for; the client's
    // chain must reach the upstream as a plain route passes it on, no more and no less.
    let from_a_proxied_client = |path: &str| {
        request(gw.port)
            .path(path)
            .header("x-forwarded-for", "203.0.113.7")
    };
    let plain = from_a_proxied_client("/plain/item")
        .send()
        .await
        .expect("GET a plain route");
    let client = plain
        .upstream_header("x-forwarded-for")
        .expect("the client named upstream");
    assert!(client.starts_with("203.0.113.7,"), "{client}");
    let fill = from_a_proxied_client("/cached/another")
        .send()
        .await
        .expect("GET a cached route");
    assert_eq!(
        upstream.paths().last().map(String::as_str),
        Some("/origin/another")
    );
    assert_eq!(
        fill.upstream_header("x-forwarded-for"),
        Some(client),
        "the fill names the client as a plain route does, not the internal hop"
    );
    // The request id the client sent (or the gateway made) is the one the upstream sees
    // through the fill, and the one the client gets back: one id for the whole exchange.
    let traced = request(gw.port)
        .path("/cached/traced")
        .header("x-request-id", "fill-7f3c2a")
        .send()
        .await
        .expect("GET a cached route");
    assert_eq!(
        upstream.paths().last().map(String::as_str),
        Some("/origin/traced")
    );
    assert_eq!(
        traced.upstream_header("x-request-id").as_deref(),
        Some("fill-7f3c2a")
    );
    assert_eq!(traced.header("x-request-id"), Some("fill-7f3c2a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_and_routes_without_cache_always_reach_the_upstream() {
    // The plain route's answers say they may be cached for a minute: only `cache` on the
    // route may make the gateway keep them.
    let upstream = Upstream::new("api")
        .header_on("/plain/page", "cache-control", "max-age=60")
        .header_on("/origin/form", "cache-control", "max-age=60")
        .spawn()
        .await;
    let gw = Gateway::start(&upstream, CACHED_ROUTES, "", "/plain/ready").await;

    for _ in 0..2 {
        get(gw.port, "/plain/page")
            .await
            .expect("GET")
            .expect_upstream("api")
            .expect("answered");
        request(gw.port)
            .method("POST")
            .path("/cached/form")
            .body("x=1")
            .send()
            .await
            .expect("POST")
            .expect_upstream("api")
            .expect("answered");
    }
    assert_eq!(
        hits(&upstream, "/plain/page"),
        2,
        "no cache without `cache`"
    );
    assert_eq!(hits(&upstream, "/origin/form"), 2, "POST is never cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_marked_no_store_or_private_or_setting_a_cookie_are_not_cached() {
    let upstream = Upstream::new("api")
        .header_on("/origin/no-store", "cache-control", "no-store")
        .header_on("/origin/private", "cache-control", "private, max-age=60")
        .header_on("/origin/cookie", "set-cookie", "session=abc")
        .header_on("/origin/cookie-fresh", "set-cookie", "session=abc")
        .header_on("/origin/cookie-fresh", "cache-control", "max-age=60")
        .header_on("/origin/fresh", "cache-control", "max-age=60")
        .spawn()
        .await;
    let gw = Gateway::start(&upstream, CACHED_ROUTES, "", "/plain/ready").await;

    for path in ["no-store", "private", "cookie", "cookie-fresh", "fresh"] {
        for _ in 0..2 {
            get(gw.port, &format!("/cached/{path}"))
                .await
                .expect("GET")
                .expect_upstream("api")
                .expect("answered");
        }
    }
    assert_eq!(hits(&upstream, "/origin/no-store"), 2);
    assert_eq!(hits(&upstream, "/origin/private"), 2);
    assert_eq!(
        hits(&upstream, "/origin/cookie"),
        2,
        "one client's cookie must never reach another"
    );
    assert_eq!(hits(&upstream, "/origin/cookie-fresh"), 2);
    assert_eq!(
        hits(&upstream, "/origin/fresh"),
        1,
        "the upstream's own max-age is honoured"
    );
    let cookie = get(gw.port, "/cached/cookie").await.expect("GET");
    assert_eq!(cookie.header("set-cookie"), Some("session=abc"));
    assert_eq!(cookie.header("cache-control"), Some("max-age=300, private"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_answers_are_fetched_again() {
    let upstream = Upstream::new("api").spawn().await;
    let gw = Gateway::start(
        &upstream,
        "  - {name: brief, match: {prefix: /brief/}, service: api, cache: {ttl: 1s}}
  - {name: plain, match: {prefix: /plain/}, service: api}
",
        "",
        "/plain/ready",
    )
    .await;

    get(gw.port, "/brief/item").await.expect("GET");
    // Waiting out the TTL takes time; poll for the moment the cache lets a GET through.
    eventually_within(
        Duration::from_secs(30),
        "a GET after the TTL reaches the upstream again",
        async || {
            get(gw.port, "/brief/item").await?.expect_upstream("api")?;
            anyhow::ensure!(
                hits(&upstream, "/brief/item") >= 2,
                "still served from the cache"
            );
            Ok(())
        },
    )
    .await;
}
