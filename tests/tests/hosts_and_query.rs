//! `match.hosts` and `match.query` through Envoy: routes chosen by the request's host name
//! (exact, wildcard, any case, any port) and by its query parameters.

use tollgate_conformance::{eventually, request, reserve_port, ControlPlane, Envoy, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_name_chooses_the_route_whatever_its_case_or_port() {
    let shop = Upstream::new("shop").spawn().await;
    let shop_eu = Upstream::new("shop-eu").spawn().await;
    let blog = Upstream::new("blog").spawn().await;
    let fallback = Upstream::new("fallback").spawn().await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - name: public
    address: 127.0.0.1:{port}
services:
  shop: {{endpoints: ["{shop}"]}}
  shop-eu: {{endpoints: ["{shop_eu}"]}}
  blog: {{endpoints: ["{blog}"]}}
  fallback: {{endpoints: ["{fallback}"]}}
routes:
  - name: shop-eu
    match: {{prefix: /, hosts: ["*.eu.shop.example.com"]}}
    service: shop-eu
  - name: shop
    match: {{prefix: /, hosts: [shop.example.com, "*.shop.example.com"]}}
    service: shop
  - name: blog
    match: {{prefix: /, hosts: [blog.example.com]}}
    service: blog
  - name: anyone
    match: {{prefix: /public/}}
    service: fallback
"#,
            shop = shop.endpoint(),
            shop_eu = shop_eu.endpoint(),
            blog = blog.endpoint(),
            fallback = fallback.endpoint(),
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;
    let with_host = |host: &'static str, path: &'static str| async move {
        request(port).path(path).header("host", host).send().await
    };

    eventually("the shop's host reaches the shop", async || {
        with_host("shop.example.com", "/cart")
            .await?
            .expect_upstream("shop")?;
        Ok(())
    })
    .await;
    for (host, path, upstream) in [
        ("shop.example.com:8443", "/cart", "shop"),
        ("SHOP.Example.COM", "/cart", "shop"),
        ("www.shop.example.com", "/cart", "shop"),
        ("a.b.shop.example.com", "/cart", "shop"),
        ("de.eu.shop.example.com", "/cart", "shop-eu"),
        ("blog.example.com", "/post/1", "blog"),
        // Routes without hosts serve every host, after the host's own routes.
        ("blog.example.com", "/public/logo.png", "blog"),
        ("elsewhere.example.org", "/public/logo.png", "fallback"),
    ] {
        with_host(host, path)
            .await
            .unwrap()
            .expect_upstream(upstream)
            .unwrap_or_else(|e| panic!("{host}{path}: {e}"));
    }
    for (host, path) in [
        ("elsewhere.example.org", "/cart"),
        // A wildcard needs a name before its suffix.
        ("example.com", "/cart"),
    ] {
        let response = with_host(host, path).await.unwrap();
        response
            .expect_status(404)
            .unwrap_or_else(|e| panic!("{host}{path}: {e}"));
        let body = response.json().expect("the gateway's JSON 404");
        assert_eq!(
            body["error"], "no route matches this request",
            "{host}{path}: {body}"
        );
        assert_eq!(response.upstream(), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_parameters_choose_the_route_by_value_or_presence() {
    let v2 = Upstream::new("v2").spawn().await;
    let debug = Upstream::new("debug").spawn().await;
    let v1 = Upstream::new("v1").spawn().await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - name: public
    address: 127.0.0.1:{port}
services:
  v2: {{endpoints: ["{v2}"]}}
  debug: {{endpoints: ["{debug}"]}}
  v1: {{endpoints: ["{v1}"]}}
routes:
  - name: v2
    match: {{prefix: /api/, query: {{version: 2}}}}
    service: v2
  - name: debug
    match: {{prefix: /api/, query: {{debug: {{present: true}}}}}}
    service: debug
  - name: v1
    match: {{prefix: /api/}}
    service: v1
"#,
            v2 = v2.endpoint(),
            debug = debug.endpoint(),
            v1 = v1.endpoint(),
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;

    eventually("a plain request reaches v1", async || {
        request(port)
            .path("/api/items")
            .send()
            .await?
            .expect_upstream("v1")?;
        Ok(())
    })
    .await;
    for (path, upstream) in [
        ("/api/items?version=2", "v2"),
        ("/api/items?page=3&version=2", "v2"),
        ("/api/items?version=3", "v1"),
        ("/api/items?version=20", "v1"),
        ("/api/items?debug", "debug"),
        ("/api/items?debug=", "debug"),
        ("/api/items?debug=yes&version=1", "debug"),
        ("/api/items?Version=2", "v1"),
    ] {
        let response = request(port).path(path).send().await.unwrap();
        response
            .expect_upstream(upstream)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            response.upstream_path().as_deref(),
            Some(path),
            "the query string reaches the upstream as sent"
        );
    }
}
