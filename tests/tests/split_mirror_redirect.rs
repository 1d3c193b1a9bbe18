//! `split`, `mirror`, `redirect` and a listener's `redirect_to_https` through Envoy.

use tollgate_conformance::{
    eventually, get, request, reserve_port, ControlPlane, Envoy, TestCa, Upstream, UpstreamHandle,
};

fn canary(
    port: u16,
    v1: &UpstreamHandle,
    v2: &UpstreamHandle,
    shadow: &UpstreamHandle,
    weights: (u32, u32),
) -> String {
    format!(
        r#"version: 1
listeners:
  - name: public
    address: 127.0.0.1:{port}
services:
  v1: {{endpoints: ["{v1}"]}}
  v2: {{endpoints: ["{v2}"]}}
  shadow: {{endpoints: ["{shadow}"]}}
  gone: {{endpoints: ["127.0.0.1:{closed}"], connect_timeout: 250ms}}
routes:
  - name: canary
    match: {{prefix: /shop/}}
    split: [{{service: v1, weight: {w1}}}, {{service: v2, weight: {w2}}}]
    mirror: {{service: shadow, percent: 5}}
  - name: mirrored-to-nowhere
    match: {{prefix: /quiet/}}
    service: v1
    mirror: {{service: gone, percent: 100}}
"#,
        v1 = v1.endpoint(),
        v2 = v2.endpoint(),
        shadow = shadow.endpoint(),
        closed = reserve_port(),
        w1 = weights.0,
        w2 = weights.1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_spreads_by_weight_a_mirror_copies_unseen_and_weights_change_live() {
    let v1 = Upstream::new("v1").spawn().await;
    let v2 = Upstream::new("v2").spawn().await;
    // The shadow fails every request: the client must never see it.
    let shadow = Upstream::new("shadow").status(500).spawn().await;
    let port = reserve_port();
    let mut cp = ControlPlane::new()
        .routes(canary(port, &v1, &v2, &shadow, (90, 10)))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;
    eventually("the canary route is served", async || {
        get(port, "/shop/warmup").await?.expect_status(200)?;
        Ok(())
    })
    .await;

    let (before_v1, before_v2, before_shadow) = (v1.requests(), v2.requests(), shadow.requests());
    const REQUESTS: usize = 2_000;
    for i in 0..REQUESTS {
        let response = get(port, &format!("/shop/item/{i}")).await.unwrap();
        response.expect_status(200).unwrap();
        let upstream = response.upstream().expect("an upstream answered");
        assert!(
            upstream == "v1" || upstream == "v2",
            "request {i} answered by {upstream}"
        );
    }
    let to_v1 = v1.requests() - before_v1;
    let to_v2 = v2.requests() - before_v2;
    assert_eq!(to_v1 + to_v2, REQUESTS);
    let share_v2 = to_v2 as f64 * 100.0 / REQUESTS as f64;
    assert!(
        (7.0..=13.0).contains(&share_v2),
        "v2 got {share_v2:.1}% of {REQUESTS} requests, not 10 ± 3 ({to_v1} to v1, {to_v2} to v2)"
    );
    // 5% of 2,000 is 100, give or take 10 (one standard deviation); the copies are sent
    // without waiting for them, so some may still be on their way.
    eventually("the shadow sees about 5% of the requests", async || {
        let copies = shadow.requests() - before_shadow;
        anyhow::ensure!((60..=140).contains(&copies), "{copies} copies");
        Ok(())
    })
    .await;
    assert!(
        shadow.paths().iter().all(|p| p.starts_with("/shop/")),
        "copies keep their path"
    );

    // A mirror to a service that refuses connections costs the client nothing.
    for _ in 0..20 {
        get(port, "/quiet/1")
            .await
            .unwrap()
            .expect_upstream("v1")
            .unwrap();
    }

    cp.write_by_rename(&canary(port, &v1, &v2, &shadow, (0, 100)));
    eventually("after the edit every request goes to v2", async || {
        for i in 0..50 {
            get(port, &format!("/shop/after/{i}"))
                .await?
                .expect_upstream("v2")?;
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_redirect_answers_from_the_gateway_with_its_location_and_code() {
    let app = Upstream::new("app").spawn().await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - name: public
    address: 127.0.0.1:{port}
services:
  app: {{endpoints: ["{app}"]}}
routes:
  - name: old-docs
    match: {{prefix: /docs/}}
    redirect: {{path_prefix: /help/, code: 301}}
  - name: moved
    match: {{path: /old}}
    redirect: {{path: /new, code: 302, strip_query: true}}
  - name: other-host
    match: {{prefix: /blog/}}
    redirect: {{host: blog.example.com, code: 303}}
  - name: secure
    match: {{prefix: /account/}}
    redirect: {{https: true, port: 8443, code: 307}}
  - name: forever
    match: {{prefix: /v0/}}
    redirect: {{path_prefix: /v1/, code: 308}}
  - name: app
    match: {{prefix: /}}
    service: app
"#,
            app = app.endpoint(),
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;
    eventually("the app is served", async || {
        get(port, "/").await?.expect_upstream("app")?;
        Ok(())
    })
    .await;
    for (path, code, location) in [
        (
            "/docs/intro?lang=en",
            301,
            "http://shop.test/help/intro?lang=en",
        ),
        ("/old?x=1", 302, "http://shop.test/new"),
        ("/blog/post/7", 303, "http://blog.example.com/blog/post/7"),
        (
            "/account/me?tab=2",
            307,
            "https://shop.test:8443/account/me?tab=2",
        ),
        ("/v0/orders", 308, "http://shop.test/v1/orders"),
    ] {
        let response = request(port)
            .path(path)
            .header("host", "shop.test")
            .send()
            .await
            .unwrap();
        response
            .expect_status(code)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(response.header("location"), Some(location), "{path}");
        assert_eq!(response.upstream(), None, "{path}: answered by the gateway");
    }
    assert_eq!(app.paths().iter().filter(|p| p.as_str() != "/").count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_to_https_sends_every_plain_request_to_the_tls_listener() {
    let ca = TestCa::new();
    let certificate = ca.issue_for("gateway", "shop.test");
    let app = Upstream::new("app").spawn().await;
    let (plain, secure) = (reserve_port(), reserve_port());
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - name: public
    address: 127.0.0.1:{plain}
    redirect_to_https: secure
  - name: secure
    address: 127.0.0.1:{secure}
    tls: {{cert_file: gw.pem, key_file: gw.key}}
services:
  app: {{endpoints: ["{app}"]}}
routes:
  - name: app
    match: {{prefix: /}}
    service: app
"#,
            app = app.endpoint(),
        ))
        .file("gw.pem", certificate.cert_pem.clone())
        .file("gw.key", certificate.key_pem.clone())
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;
    let client = ca.client().server_name("shop.test");
    eventually("the TLS listener serves the app", async || {
        client
            .send(&request(secure).path("/cart"))
            .await?
            .response
            .expect_upstream("app")?;
        Ok(())
    })
    .await;
    let response = request(plain)
        .path("/cart?item=7")
        .header("host", "shop.test:80")
        .send()
        .await
        .unwrap();
    response.expect_status(301).unwrap();
    assert_eq!(
        response.header("location"),
        Some(format!("https://shop.test:{secure}/cart?item=7").as_str())
    );
    // The health path is still answered on the plain port, for load balancers.
    get(plain, "/health")
        .await
        .unwrap()
        .expect_status(200)
        .unwrap();
}
