//! Captures fuzz/'s `check_request` and `ratelimit_request` seeds from a real Envoy: the
//! gateway runs with ext-authz and the rate-limit service behind recording taps
//! ([`GrpcTap`]), requests of every kind the routes know go through it, and each
//! CheckRequest and RateLimitRequest Envoy sent is written, byte for byte, to
//! `fuzz/corpus/TARGET/envoy-NAME`. `proto/tests/fuzz_seeds.rs` writes the prost-encoded
//! seeds beside them; these are what Envoy 1.40 itself encodes (field order, the raw header
//! map, the peers' addresses and the request time).
//!
//! Not a test of the gateway: `cargo test` skips it (`#[ignore]`); rewrite the seeds with
//! `cargo test -p tollgate-conformance --test fuzz_seeds_from_envoy -- --ignored`.

use std::path::PathBuf;

use sha2::Digest as _;
use tollgate_conformance::grpc_tap::GrpcTap;
use tollgate_conformance::ratelimit::RateLimitService;
use tollgate_conformance::{
    eventually, request, reserve_port, ControlPlane, Envoy, ExtAuthz, Upstream,
};
use tollgate_testkit::jwt::{self, TestKey};

const KEY: &str = "tgk_fuzz_seeds_0123456789abcdef";

fn corpus(target: &str) -> PathBuf {
    let dir = tollgate_conformance::binaries::repo_root()
        .join("fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes fuzz/corpus: run it to refresh the seeds captured from Envoy"]
async fn capture_check_and_rate_limit_requests_from_envoy() {
    let api = Upstream::new("api").spawn().await;
    let port = reserve_port();
    let (authz, rls) = (ExtAuthz::new(), RateLimitService::new());
    let (authz_tap, rls_tap) = (
        GrpcTap::start(authz.grpc_addr()).await,
        GrpcTap::start(rls.grpc_addr()).await,
    );
    let hash = hex::encode(sha2::Sha256::digest(KEY.as_bytes()));
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - {{name: public, address: "127.0.0.1:{port}"}}
services:
  api: {{endpoints: ["{api}"]}}
auth_providers:
  tokens:
    issuer: {issuer}
    audiences: [{audience}]
    jwks_file: jwks.json
    consumer_claim: sub
    forward_claims: {{tier: x-consumer-tier}}
  keys: {{type: api_key, header: x-api-key, keys_file: keys.yaml, forward_claims: {{tier: x-consumer-tier}}}}
  query-keys: {{type: api_key, query: api_key, keys_file: keys.yaml}}
routes:
  - name: invoices
    match: {{prefix: /invoices/, methods: [GET, POST]}}
    service: api
    auth: {{provider: tokens, scopes: ["invoices:read"]}}
    rate_limit:
      - {{by: consumer, tier_header: x-consumer-tier, tiers: {{free: 100/minute, premium: 1000/minute}}}}
  - name: partners
    match: {{prefix: /partners/}}
    service: api
    auth: {{any_of: [keys, tokens]}}
    rate_limit:
      - {{by: consumer, requests: 100, per: minute, algorithm: fixed}}
  - name: query
    match: {{prefix: /query/}}
    service: api
    auth: {{provider: query-keys}}
  - name: public
    match: {{prefix: /public/}}
    service: api
    rate_limit:
      - {{by: client_ip, requests: 100, per: second}}
      - {{by: header, header: x-tenant, requests: 1000, per: hour, algorithm: token_bucket}}
sidecars:
  ext_authz: {{address: "{authz_tap}", timeout: 2s}}
  rate_limit: {{address: "{rls_tap}", timeout: 2s, domain: tollgate}}
"#,
            api = api.endpoint(),
            issuer = jwt::ISSUER,
            audience = jwt::AUDIENCE,
            authz_tap = authz_tap.addr(),
            rls_tap = rls_tap.addr(),
        ))
        .file(
            "keys.yaml",
            format!("keys:\n  - {{consumer: acme, sha256: \"{hash}\", tier: premium}}\n"),
        )
        .start()
        .await;
    let key = TestKey::p256("fuzz-seeds");
    let _authz = authz
        .routes_file(cp.routes_path())
        .jwks(&jwt::jwks(&[&key]))
        .start()
        .await;
    let _rls = rls.routes_file(cp.routes_path()).start().await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;
    eventually("the public route is served", async || {
        request(port)
            .path("/public/ready")
            .send()
            .await?
            .expect_upstream("api")?;
        Ok(())
    })
    .await;

    let mut claims = jwt::claims();
    claims["sub"] = "alice".into();
    claims["tier"] = "premium".into();
    claims["scope"] = "invoices:read invoices:write".into();
    let token = format!("Bearer {}", key.mint(&claims));
    let kinds: [(&str, tollgate_conformance::http::RequestBuilder); 7] = [
        (
            "public",
            request(port)
                .path("/public/catalogue?page=2")
                .header("x-tenant", "acme"),
        ),
        (
            "jwt-bearer",
            request(port)
                .path("/invoices/42")
                .header("authorization", &token)
                .header("x-request-id", "fuzz-seed-1"),
        ),
        ("no-credentials", request(port).path("/invoices/42")),
        (
            "bad-token",
            request(port)
                .path("/invoices/42")
                .header("authorization", "Bearer not.a.token"),
        ),
        (
            "api-key",
            request(port)
                .path("/partners/orders")
                .header("x-api-key", KEY)
                .header("x-consumer-id", "spoofed"),
        ),
        (
            "any-of-token",
            request(port)
                .path("/partners/orders")
                .header("authorization", &token),
        ),
        (
            "api-key-in-query",
            request(port).path(&format!("/query/x?api_key={KEY}&q=1")),
        ),
    ];
    let mut written = 0;
    for (name, builder) in kinds {
        let (checks, limits) = (authz_tap.messages().len(), rls_tap.messages().len());
        let response = builder.send().await.expect("an answer");
        eprintln!("{name}: {}", response.status);
        for (tap, seen, target) in [
            (&authz_tap, checks, "check_request"),
            (&rls_tap, limits, "ratelimit_request"),
        ] {
            for (i, message) in tap.messages()[seen..].iter().enumerate() {
                let path = corpus(target).join(format!("envoy-{name}-{i}"));
                std::fs::write(&path, message).expect("write a seed");
                written += 1;
            }
        }
    }
    eprintln!("{written} seeds written");
    assert!(
        written >= 10,
        "Envoy's calls should have been captured: {written} seeds"
    );
}
