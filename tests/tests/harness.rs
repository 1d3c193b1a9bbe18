//! Self-tests of the conformance harness: the pieces that do not need the control plane
//! (upstreams, the HTTP client, the process guard, Envoy start-up and readiness) work on
//! their own, so a failure elsewhere points at Tollgate rather than at the harness.

use std::time::Duration;

use tollgate_conformance::{
    eventually, eventually_within, get, request, reserve_port, Envoy, Upstream,
};
use tollgate_testkit::process::Process;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_echoes_what_it_received_and_counts_requests() {
    let upstream = Upstream::new("echo").spawn().await;

    let response = request(upstream.addr().port())
        .method("POST")
        .path("/things/1?x=y")
        .header("x-tenant", "acme")
        .send()
        .await
        .expect("request to the upstream");

    response
        .expect_upstream("echo")
        .expect("an echo from the upstream");
    let echo = response.json().expect("a JSON echo");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/things/1?x=y");
    assert_eq!(echo["headers"]["x-tenant"], "acme");
    assert_eq!(upstream.requests(), 1);
    assert_eq!(upstream.paths(), ["/things/1?x=y"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_answers_with_configured_status_and_delay() {
    let upstream = Upstream::new("slow")
        .status(503)
        .delay("/slow", Duration::from_millis(200))
        .spawn()
        .await;

    let response = get(upstream.addr().port(), "/slow").await.expect("request");

    assert_eq!(response.status, 503);
    assert_eq!(response.upstream().as_deref(), Some("slow"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_stops_serving_when_dropped() {
    let upstream = Upstream::new("gone").spawn().await;
    let port = upstream.addr().port();
    get(port, "/").await.expect("served while alive");

    drop(upstream);

    eventually(
        "the dropped upstream refuses connections",
        async || match get(port, "/").await {
            Ok(response) => anyhow::bail!("still answering: {}", response.status),
            Err(_) => Ok(()),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "never true: still failing after")]
async fn eventually_fails_with_the_last_error() {
    eventually_within(
        Duration::from_millis(300),
        "never true",
        async || -> anyhow::Result<()> { anyhow::bail!("nope") },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_starts_from_a_static_bootstrap_and_dies_with_its_guard() {
    let upstream = Upstream::new("static").spawn().await;
    let listener_port = reserve_port();
    let bootstrap = format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: test
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listener_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: test
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: upstream}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream_port}}}}}
"#,
        upstream_port = upstream.addr().port(),
    );

    let envoy = Envoy::new().static_bootstrap(&bootstrap).start().await;
    let admin_port = envoy.admin_addr().port();
    let pid = envoy.process().pid();

    let response = eventually("envoy proxies to the static upstream", async || {
        let response = get(listener_port, "/hello").await?;
        response.expect_upstream("static")?;
        Ok(response)
    })
    .await;
    assert_eq!(response.upstream_path().as_deref(), Some("/hello"));

    drop(envoy);

    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "envoy (pid {pid}) survived its guard"
    );
    assert!(
        get(admin_port, "/ready").await.is_err(),
        "envoy admin still answers after the guard dropped"
    );
}

#[test]
fn a_process_dies_with_its_guard_when_the_test_panics() {
    let dir = tempfile::tempdir().unwrap();
    let mut pid = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut command = std::process::Command::new("sleep");
        command.arg("600");
        let process = Process::spawn("sleeper", command, dir.path()).unwrap();
        pid = Some(process.pid());
        panic!("the test fails while the process runs");
    }));

    assert!(outcome.is_err());
    let pid = pid.expect("the process was spawned");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "sleep (pid {pid}) survived a panicking test"
    );
}
