//! Paths that try to reach a protected prefix through a public one. Whatever the spelling,
//! the upstream behind the public route must never receive a path that it would resolve
//! into the protected area: the gateway normalises first (RFC 3986 §6), then routes.

use tollgate_conformance::{eventually, get, reserve_port, ControlPlane, Envoy, Upstream};

const ATTACKS: [&str; 12] = [
    "/public/../admin/secret",
    "/public/./../admin/secret",
    "//public/../admin/secret",
    "/public//../admin/secret",
    "/public/%2e%2e/admin/secret",
    "/public/%2E%2E/admin/secret",
    "/public/..%2Fadmin/secret",
    "/public/..%2fadmin/secret",
    "/public/..%5Cadmin/secret",
    "/public/%2e%2e%2fadmin/secret",
    "/public/..;/admin/secret",
    "/public/.%2e/admin/secret",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_a_path_reaches_admin_through_the_public_route() {
    let public = Upstream::new("public").spawn().await;
    let admin = Upstream::new("admin").spawn().await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - {{name: edge, address: "127.0.0.1:{port}"}}
services:
  public: {{endpoints: ["{public}"]}}
  admin: {{endpoints: ["{admin}"]}}
routes:
  - {{name: admin, match: {{prefix: /admin/}}, service: admin}}
  - {{name: public, match: {{prefix: /public/}}, service: public}}
"#,
            public = public.endpoint(),
            admin = admin.endpoint(),
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;
    eventually("the public route is served", async || {
        get(port, "/public/x").await?.expect_upstream("public")?;
        Ok(())
    })
    .await;

    for attack in ATTACKS {
        let response = get(port, attack).await.expect("request");
        match response.upstream().as_deref() {
            // Routed by its normalised path: the admin route (and its rules) applied.
            Some("admin") => assert_eq!(
                response.upstream_path().as_deref(),
                Some("/admin/secret"),
                "{attack}"
            ),
            Some("public") => {
                let seen = response
                    .upstream_path()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                assert!(
                    !seen.contains("admin") || !(seen.contains("..") || seen.contains("%2f") || seen.contains("%5c") || seen.contains("%2e")),
                    "{attack} reached the public upstream as {seen}, which it may resolve to /admin"
                );
            }
            other => assert!(
                response.status == 400 || response.status == 404,
                "{attack}: unexpected {} from {other:?}",
                response.status
            ),
        }
    }
    let leaked: Vec<String> = public
        .paths()
        .into_iter()
        .filter(|p| p.to_ascii_lowercase().contains("admin"))
        .collect();
    assert!(
        leaked
            .iter()
            .all(|p| !p.contains("..") && !p.to_ascii_lowercase().contains("%2")),
        "the public upstream saw {leaked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_are_rejected_by_default() {
    let public = Upstream::new("public").spawn().await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(format!(
            "version: 1\nlisteners: [{{name: edge, address: \"127.0.0.1:{port}\"}}]\nservices: {{public: {{endpoints: [\"{}\"]}}}}\nroutes: [{{name: public, match: {{prefix: /public/}}, service: public}}]\n",
            public.endpoint()
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;
    eventually("the public route is served", async || {
        get(port, "/public/x").await?.expect_upstream("public")?;
        Ok(())
    })
    .await;
    let response = get(port, "/public/a%2Fb").await.expect("request");
    assert_eq!(response.status, 400);
    assert!(response.upstream().is_none());
}
