//! Sidecar replicas (issue 21, in part): `sidecars.ext_authz.address` and
//! `sidecars.rate_limit.address` name several replicas; Envoy balances over them with
//! `grpc.health.v1` checks, so a stopped replica stops receiving calls within a couple of
//! seconds, and a call that finds its replica gone is retried on another: no request fails.

use sha2::Digest as _;
use tollgate_conformance::ratelimit::RateLimitService;
use tollgate_conformance::{
    eventually, request, reserve_port, traffic::traffic_of, ControlPlane, Envoy, ExtAuthz, Upstream,
};
use tollgate_testkit::redis::RedisServer;

const KEY: &str = "tgk_sidecar_replicas_0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_sidecar_replica_is_taken_out_of_rotation_and_the_others_answer() {
    let api = Upstream::new("api").spawn().await;
    let port = reserve_port();
    let (authz_a, authz_b) = (ExtAuthz::new(), ExtAuthz::new());
    let (rls_a, rls_b) = (RateLimitService::new(), RateLimitService::new());
    let hash = hex::encode(sha2::Sha256::digest(KEY.as_bytes()));
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - {{name: public, address: "127.0.0.1:{port}"}}
services:
  api: {{endpoints: ["{api}"]}}
auth_providers:
  keys: {{type: api_key, header: x-api-key, keys_file: keys.yaml}}
routes:
  - name: guarded
    match: {{prefix: /}}
    service: api
    auth: {{provider: keys}}
    rate_limit:
      - {{by: consumer, requests: 1000000, per: minute}}
sidecars:
  ext_authz: {{address: ["{a}", "{b}"], timeout: 1s}}
  rate_limit: {{address: ["{ra}", "{rb}"], timeout: 1s, failure_mode_deny: true, domain: tollgate}}
"#,
            api = api.endpoint(),
            a = authz_a.grpc_addr(),
            b = authz_b.grpc_addr(),
            ra = rls_a.grpc_addr(),
            rb = rls_b.grpc_addr(),
        ))
        .file(
            "keys.yaml",
            format!("keys:\n  - {{consumer: acme, sha256: \"{hash}\"}}\n"),
        )
        .start()
        .await;
    let redis = RedisServer::start();
    let (a_addr, ra_addr) = (authz_a.grpc_addr(), rls_a.grpc_addr());
    let mut authz_a = authz_a.routes_file(cp.routes_path()).start().await;
    let _authz_b = authz_b.routes_file(cp.routes_path()).start().await;
    let mut rls_a = rls_a
        .routes_file(cp.routes_path())
        .redis(&redis)
        .start()
        .await;
    let _rls_b = rls_b
        .routes_file(cp.routes_path())
        .redis(&redis)
        .start()
        .await;
    let envoy = Envoy::new().control_plane(&cp).start().await;
    let keyed = || request(port).path("/x").header("x-api-key", KEY);
    eventually("checked and limited requests are served", async || {
        keyed().send().await?.expect_upstream("api")?;
        Ok(())
    })
    .await;
    eventually("every replica is healthy", async || {
        for (cluster, address) in [
            ("tollgate_ext_authz", a_addr),
            ("tollgate_ratelimit", ra_addr),
        ] {
            let flags = envoy.health_flags(cluster, address).await;
            anyhow::ensure!(flags == "healthy", "{cluster} {address}: {flags}");
        }
        Ok(())
    })
    .await;

    let stream = traffic_of(keyed(), "api");
    authz_a.kill();
    rls_a.kill();
    eventually(
        "the stopped replicas fail their health checks",
        async || {
            for (cluster, address) in [
                ("tollgate_ext_authz", a_addr),
                ("tollgate_ratelimit", ra_addr),
            ] {
                let flags = envoy.health_flags(cluster, address).await;
                anyhow::ensure!(
                    flags.contains("failed_active_hc"),
                    "{cluster} {address}: {flags}"
                );
            }
            Ok(())
        },
    )
    .await;
    let during = stream.stop().await;
    eprintln!(
        "while the replicas stopped: {} of {} requests failed",
        during.failures.len(),
        during.sent
    );
    // A call that finds its replica gone (refused, or reset in flight) is retried at once on
    // another, so not even the requests between the kill and the health checks noticing fail.
    assert!(
        during.failures.is_empty(),
        "{} of {} requests failed while replicas stopped: {:?}",
        during.failures.len(),
        during.sent,
        during.failures
    );
    // Out of rotation: every request is answered by the live replicas.
    let after = traffic_of(keyed(), "api");
    while after.sent() < 50 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let after = after.stop().await;
    assert!(
        after.failures.is_empty(),
        "{} of {} requests failed with the stopped replicas out of rotation: {:?}",
        after.failures.len(),
        after.sent,
        after.failures
    );
}
