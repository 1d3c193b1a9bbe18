//! Routing through Envoy as configured by routes.yaml: every kind of match, first match wins
//! in file order, no match is a 404, prefix rewriting, per-route timeouts, routes bound to
//! one listener, load spread over a service's endpoints, and a service named by host name.

use std::time::Duration;

use tollgate_conformance::{eventually, get, request, reserve_port, ControlPlane, Envoy, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_route_matches_paths_under_the_prefix() {
    let invoices = Upstream::new("invoices").spawn().await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - name: public
    address: 127.0.0.1:{port}
services:
  invoice-service:
    endpoints: ["{invoices}"]
    connect_timeout: 1s
routes:
  - name: invoices
    match:
      prefix: /api/v1/invoices
    service: invoice-service
"#,
            invoices = invoices.endpoint(),
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;

    eventually("the prefix itself is routed", async || {
        get(port, "/api/v1/invoices")
            .await?
            .expect_upstream("invoices")?;
        Ok(())
    })
    .await;
    let below = get(port, "/api/v1/invoices/42?expand=lines").await.unwrap();
    below.expect_upstream("invoices").unwrap();
    assert_eq!(
        below.upstream_path().as_deref(),
        Some("/api/v1/invoices/42?expand=lines"),
        "without rewrite_prefix the upstream sees the original path"
    );
    get(port, "/api/v1/orders")
        .await
        .unwrap()
        .expect_status(404)
        .unwrap();
    get(port, "/").await.unwrap().expect_status(404).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_path_route_matches_only_that_path() {
    let health = Upstream::new("health").spawn().await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - name: public
    address: 127.0.0.1:{port}
services:
  health:
    endpoints: ["{health}"]
routes:
  - name: health
    match:
      path: /ping
    service: health
"#,
            health = health.endpoint(),
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;

    eventually("the exact path is routed", async || {
        get(port, "/ping").await?.expect_upstream("health")?;
        Ok(())
    })
    .await;
    get(port, "/ping?verbose=1")
        .await
        .unwrap()
        .expect_upstream("health")
        .expect("the query string is not part of the path");
    for path in ["/ping/live", "/pingz", "/", "/Ping"] {
        get(port, path)
            .await
            .unwrap()
            .expect_status(404)
            .unwrap_or_else(|e| panic!("{path}: {e:#}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_route_matches_the_whole_path() {
    let orders = Upstream::new("orders").spawn().await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - name: public
    address: 127.0.0.1:{port}
services:
  orders:
    endpoints: ["{orders}"]
routes:
  - name: user-orders
    match:
      regex: "/users/[0-9]+/orders"
    service: orders
"#,
            orders = orders.endpoint(),
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;

    eventually("a path matching the regex is routed", async || {
        get(port, "/users/42/orders")
            .await?
            .expect_upstream("orders")?;
        Ok(())
    })
    .await;
    get(port, "/users/7/orders")
        .await
        .unwrap()
        .expect_upstream("orders")
        .unwrap();
    for path in [
        "/users/abc/orders",
        "/users/42/orders/1",
        "/v2/users/42/orders",
        "/users//orders",
    ] {
        get(port, path)
            .await
            .unwrap()
            .expect_status(404)
            .unwrap_or_else(|e| panic!("{path} must not match the regex: {e:#}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_match_picks_the_route_for_the_method() {
    let reader = Upstream::new("reader").spawn().await;
    let writer = Upstream::new("writer").spawn().await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - name: public
    address: 127.0.0.1:{port}
services:
  reader:
    endpoints: ["{reader}"]
  writer:
    endpoints: ["{writer}"]
routes:
  - name: item-writes
    match:
      prefix: /items
      methods: [POST, PUT]
    service: writer
  - name: item-reads
    match:
      prefix: /items
      methods: [GET]
    service: reader
"#,
            reader = reader.endpoint(),
            writer = writer.endpoint(),
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;

    eventually("GET is routed to the readers", async || {
        get(port, "/items/1").await?.expect_upstream("reader")?;
        Ok(())
    })
    .await;
    for (method, expected) in [("POST", "writer"), ("PUT", "writer"), ("GET", "reader")] {
        let response = request(port)
            .method(method)
            .path("/items/1")
            .send()
            .await
            .unwrap();
        response
            .expect_upstream(expected)
            .unwrap_or_else(|e| panic!("{method} /items/1: {e:#}"));
        assert_eq!(response.json().unwrap()["method"], method);
    }
    for method in ["DELETE", "PATCH"] {
        request(port)
            .method(method)
            .path("/items/1")
            .send()
            .await
            .unwrap()
            .expect_status(404)
            .unwrap_or_else(|e| panic!("{method} matches no route: {e:#}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_match_requires_every_listed_header_exactly() {
    let gold = Upstream::new("acme-gold").spawn().await;
    let acme = Upstream::new("acme").spawn().await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - name: public
    address: 127.0.0.1:{port}
services:
  acme-gold:
    endpoints: ["{gold}"]
  acme:
    endpoints: ["{acme}"]
routes:
  - name: acme-gold
    match:
      prefix: /
      headers:
        x-tenant: acme
        x-plan: gold
    service: acme-gold
  - name: acme
    match:
      prefix: /
      headers:
        x-tenant: acme
    service: acme
"#,
            gold = gold.endpoint(),
            acme = acme.endpoint(),
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;

    eventually("a request with the tenant header is routed", async || {
        request(port)
            .header("x-tenant", "acme")
            .send()
            .await?
            .expect_upstream("acme")?;
        Ok(())
    })
    .await;
    request(port)
        .header("x-tenant", "acme")
        .header("x-plan", "gold")
        .send()
        .await
        .unwrap()
        .expect_upstream("acme-gold")
        .expect("both headers match the first route");
    request(port)
        .header("x-tenant", "acme")
        .header("x-plan", "silver")
        .send()
        .await
        .unwrap()
        .expect_upstream("acme")
        .expect("a different x-plan falls through to the second route");
    for tenant in [Some("globex"), Some("acme-corp"), Some("ACME"), None] {
        let mut builder = request(port);
        if let Some(tenant) = tenant {
            builder = builder.header("x-tenant", tenant);
        }
        builder
            .send()
            .await
            .unwrap()
            .expect_status(404)
            .unwrap_or_else(|e| panic!("x-tenant {tenant:?} matches no route: {e:#}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_matched_in_file_order() {
    let admin = Upstream::new("admin").spawn().await;
    let api = Upstream::new("api").spawn().await;
    let special = Upstream::new("special").spawn().await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - name: public
    address: 127.0.0.1:{port}
services:
  admin:
    endpoints: ["{admin}"]
  api:
    endpoints: ["{api}"]
  special:
    endpoints: ["{special}"]
routes:
  - name: admin
    match:
      prefix: /api/admin
    service: admin
  - name: api
    match:
      prefix: /api
    service: api
  # Validation cannot tell that a regex is covered (a prefix it can, and refuses it: see
  # tests/tests/validate.rs), so this route is accepted, and file order decides.
  - name: shadowed
    match:
      regex: /api/special/[0-9]+
    service: special
"#,
            admin = admin.endpoint(),
            api = api.endpoint(),
            special = special.endpoint(),
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;

    eventually("the first route is served", async || {
        get(port, "/api/admin/users")
            .await?
            .expect_upstream("admin")?;
        Ok(())
    })
    .await;
    get(port, "/api/things")
        .await
        .unwrap()
        .expect_upstream("api")
        .unwrap();
    get(port, "/api/special/1")
        .await
        .unwrap()
        .expect_upstream("api")
        .expect("a route listed after a broader one never matches");
    assert_eq!(special.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_prefix_changes_the_path_the_upstream_sees() {
    let invoices = Upstream::new("invoices").spawn().await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - name: public
    address: 127.0.0.1:{port}
services:
  invoice-service:
    endpoints: ["{invoices}"]
routes:
  - name: invoices
    match:
      prefix: /api/v1/invoices
    service: invoice-service
    rewrite_prefix: /invoices
  - name: untouched
    match:
      prefix: /raw
    service: invoice-service
"#,
            invoices = invoices.endpoint(),
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;

    let response = eventually("the rewritten route is served", async || {
        let response = get(port, "/api/v1/invoices/42?expand=lines").await?;
        response.expect_upstream("invoices")?;
        Ok(response)
    })
    .await;
    assert_eq!(
        response.upstream_path().as_deref(),
        Some("/invoices/42?expand=lines")
    );
    let response = get(port, "/api/v1/invoices").await.unwrap();
    assert_eq!(response.upstream_path().as_deref(), Some("/invoices"));
    let response = get(port, "/raw/42").await.unwrap();
    assert_eq!(
        response.upstream_path().as_deref(),
        Some("/raw/42"),
        "a route without rewrite_prefix keeps the path"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_answers_504_when_the_upstream_is_slower() {
    // The delay is far above the route's 1s timeout but below Envoy's default route timeout
    // (15s): without the per-route timeout the slow request would succeed.
    let slow = Upstream::new("slow")
        .delay("/reports/slow", Duration::from_secs(8))
        .spawn()
        .await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - name: public
    address: 127.0.0.1:{port}
services:
  reports:
    endpoints: ["{slow}"]
routes:
  - name: reports
    match:
      prefix: /reports
    service: reports
    timeout: 1s
"#,
            slow = slow.endpoint(),
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;

    eventually("a fast request on the route is served", async || {
        get(port, "/reports/fast").await?.expect_upstream("slow")?;
        Ok(())
    })
    .await;
    let before = slow.requests();
    let response = get(port, "/reports/slow").await.unwrap();
    response
        .expect_status(504)
        .expect("Envoy gives up on the slow upstream after the route timeout");
    assert_eq!(
        slow.requests(),
        before + 1,
        "the 504 comes from a request that reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_bound_to_a_listener_are_served_only_there() {
    let public = Upstream::new("public").spawn().await;
    let internal = Upstream::new("internal").spawn().await;
    let shared = Upstream::new("shared").spawn().await;
    let public_port = reserve_port();
    let internal_port = reserve_port();
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - name: public
    address: 127.0.0.1:{public_port}
  - name: internal
    address: 127.0.0.1:{internal_port}
services:
  public:
    endpoints: ["{public}"]
  internal:
    endpoints: ["{internal}"]
  shared:
    endpoints: ["{shared}"]
routes:
  - name: public-api
    listener: public
    match:
      prefix: /api
    service: public
  - name: internal-api
    listener: internal
    match:
      prefix: /api
    service: internal
  - name: admin
    listener: internal
    match:
      prefix: /admin
    service: internal
  - name: health
    match:
      path: /ping
    service: shared
"#,
            public = public.endpoint(),
            internal = internal.endpoint(),
            shared = shared.endpoint(),
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;

    eventually("both listeners serve", async || {
        get(public_port, "/api/x")
            .await?
            .expect_upstream("public")?;
        get(internal_port, "/api/x")
            .await?
            .expect_upstream("internal")?;
        Ok(())
    })
    .await;
    get(internal_port, "/admin/users")
        .await
        .unwrap()
        .expect_upstream("internal")
        .unwrap();
    get(public_port, "/admin/users")
        .await
        .unwrap()
        .expect_status(404)
        .expect("a route bound to the internal listener is not served on the public one");
    for port in [public_port, internal_port] {
        get(port, "/ping")
            .await
            .unwrap()
            .expect_upstream("shared")
            .expect("a route without listener: is served on every listener");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_of_a_service_receives_traffic() {
    let backends = [
        Upstream::new("backend-1").spawn().await,
        Upstream::new("backend-2").spawn().await,
        Upstream::new("backend-3").spawn().await,
    ];
    let port = reserve_port();
    let endpoints = backends
        .iter()
        .map(|b| format!("\"{}\"", b.endpoint()))
        .collect::<Vec<_>>()
        .join(", ");
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - name: public
    address: 127.0.0.1:{port}
services:
  backend:
    endpoints: [{endpoints}]
routes:
  - name: all
    match:
      prefix: /
    service: backend
"#
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;

    eventually("the service is served", async || {
        let response = get(port, "/").await?;
        anyhow::ensure!(response.status == 200, "status {}", response.status);
        Ok(())
    })
    .await;
    let before: Vec<usize> = backends.iter().map(|b| b.requests()).collect();
    for i in 0..60 {
        let response = get(port, &format!("/spread/{i}")).await.unwrap();
        assert_eq!(response.status, 200, "request {i}: {}", response.text());
    }
    let received: Vec<usize> = backends
        .iter()
        .zip(&before)
        .map(|(b, before)| b.requests() - before)
        .collect();
    assert_eq!(
        received.iter().sum::<usize>(),
        60,
        "per endpoint: {received:?}"
    );
    assert!(
        received.iter().all(|&n| n > 0),
        "every endpoint should receive some of 60 requests, got {received:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_with_counted_repetition_is_served() {
    // RE2's default program-size limit (100) would refuse this ordinary pattern; the
    // bootstrap raises it so that what validation accepts, Envoy serves.
    let items = Upstream::new("items").spawn().await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(format!(
            "version: 1\nlisteners: [{{name: l, address: \"127.0.0.1:{port}\"}}]\nservices: {{items: {{endpoints: [\"{}\"]}}}}\nroutes:\n  - {{name: item, match: {{regex: '/v[0-9]+/items/[a-z0-9-]{{1,64}}/(details|history|owners)'}}, service: items}}\n",
            items.endpoint()
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;
    eventually("the regex route is served", async || {
        get(port, "/v2/items/abc-123/history")
            .await?
            .expect_upstream("items")?;
        Ok(())
    })
    .await;
    get(port, "/v2/items/abc_123/history")
        .await
        .expect("request")
        .expect_status(404)
        .expect("characters outside the class do not match");
}

/// A service named by host name is a DNS cluster, resolved by Envoy. `localhost` resolves
/// to `::1` as well as `127.0.0.1`, and an upstream listening on IPv4 alone (as most do)
/// must still answer: IPv4 is preferred, as Kong and most clients do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_named_by_host_name_answers_over_ipv4() {
    let app = Upstream::new("app").spawn().await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - name: public
    address: 127.0.0.1:{port}
services:
  app:
    endpoints: ["localhost:{app_port}"]
routes:
  - name: all
    match:
      prefix: /
    service: app
"#,
            app_port = app.addr().port(),
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;

    eventually("the service named by host name answers", async || {
        get(port, "/").await?.expect_upstream("app")?;
        Ok(())
    })
    .await;
}
