//! Per-service traffic policies through a real Envoy: active health checks take a failing
//! endpoint out and put it back, every load-balancing policy is accepted and spreads
//! traffic (ring hash keeps one key on one endpoint), the circuit breaker sheds load with
//! 503s, and outlier detection ejects an endpoint answering 5xx.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tollgate_conformance::tls::TestCa;

use tollgate_conformance::{
    eventually, get, request, reserve_port, ControlPlane, Envoy, RunningEnvoy, Upstream,
};
use tollgate_testkit::process::{scratch_dir, Process};

/// A routes.yaml with one listener on `port`, one catch-all route to `svc`, and `service`
/// (the lines under `svc:`, indented four spaces).
fn routes(port: u16, service: &str) -> String {
    format!(
        "version: 1
listeners:
  - name: public
    address: 127.0.0.1:{port}
services:
  svc:
{service}routes:
  - name: all
    match: {{prefix: /}}
    service: svc
"
    )
}

/// Sends `count` requests to `path` and tallies the upstreams that answered them with 200.
async fn spread(port: u16, path: &str, count: usize) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut seen = BTreeMap::new();
    for _ in 0..count {
        let response = get(port, path).await?;
        response.expect_status(200)?;
        let name = response
            .upstream()
            .ok_or_else(|| anyhow::anyhow!("no upstream echo in {}", response.text()))?;
        *seen.entry(name).or_insert(0) += 1;
    }
    Ok(seen)
}

/// The sum of the counters named exactly `name`.
async fn counter(envoy: &RunningEnvoy, name: &str) -> anyhow::Result<u64> {
    Ok(envoy
        .stats(name)
        .await?
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v)
        .sum())
}

/// The `lb_policy` Envoy reports for the cluster `name` in its config dump.
fn lb_policy(dump: &serde_json::Value, name: &str) -> Option<String> {
    match dump {
        serde_json::Value::Object(map) => {
            if map.get("name").and_then(|n| n.as_str()) == Some(name) {
                if let Some(policy) = map.get("lb_policy").and_then(|p| p.as_str()) {
                    return Some(policy.to_owned());
                }
            }
            map.values().find_map(|v| lb_policy(v, name))
        }
        serde_json::Value::Array(items) => items.iter().find_map(|v| lb_policy(v, name)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_its_health_check_gets_no_traffic_until_it_passes_again() {
    let steady = Upstream::new("steady").health("/health").spawn().await;
    let flaky = Upstream::new("flaky").health("/health").spawn().await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(routes(
            port,
            &format!(
                "    endpoints: [\"{}\", \"{}\"]
    health_check: {{path: /health, interval: 300ms, timeout: 250ms, unhealthy_threshold: 2, healthy_threshold: 1}}
",
                steady.endpoint(),
                flaky.endpoint()
            ),
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;

    eventually("both healthy endpoints get traffic", async || {
        let seen = spread(port, "/", 10).await?;
        anyhow::ensure!(seen.len() == 2, "only {seen:?}");
        Ok(())
    })
    .await;

    flaky.set_health(503);
    eventually("the failing endpoint is taken out", async || {
        let seen = spread(port, "/", 10).await?;
        anyhow::ensure!(
            seen.keys().collect::<Vec<_>>() == ["steady"],
            "still {seen:?}"
        );
        Ok(())
    })
    .await;
    let before = flaky.requests();
    spread(port, "/", 20).await.unwrap();
    assert_eq!(
        flaky.requests(),
        before,
        "an unhealthy endpoint must not be sent requests"
    );

    flaky.set_health(200);
    eventually("the endpoint is back once healthy", async || {
        let seen = spread(port, "/", 10).await?;
        anyhow::ensure!(seen.contains_key("flaky"), "only {seen:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_and_random_are_accepted_and_spread_traffic() {
    for (policy, envoy_name) in [("least_request", "LEAST_REQUEST"), ("random", "RANDOM")] {
        let a = Upstream::new("a").spawn().await;
        let b = Upstream::new("b").spawn().await;
        let port = reserve_port();
        let cp = ControlPlane::new()
            .routes(routes(
                port,
                &format!(
                    "    endpoints: [\"{}\", \"{}\"]\n    load_balancing: {policy}\n",
                    a.endpoint(),
                    b.endpoint()
                ),
            ))
            .start()
            .await;
        let envoy = Envoy::new().control_plane(&cp).start().await;

        eventually(&format!("{policy}: the route is served"), async || {
            spread(port, "/", 1).await
        })
        .await;
        // 40 requests all to one of two endpoints: a 2^-39 chance for `random`.
        let seen = spread(port, "/", 40).await.unwrap();
        assert_eq!(
            seen.keys().collect::<Vec<_>>(),
            ["a", "b"],
            "{policy}: both endpoints should get traffic, got {seen:?}"
        );
        let dump = envoy.config_dump().await.unwrap();
        assert_eq!(lb_policy(&dump, "svc").as_deref(), Some(envoy_name));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_sends_one_header_value_to_one_endpoint() {
    let upstreams = [
        Upstream::new("a").spawn().await,
        Upstream::new("b").spawn().await,
        Upstream::new("c").spawn().await,
    ];
    let endpoints: Vec<String> = upstreams
        .iter()
        .map(|u| format!("\"{}\"", u.endpoint()))
        .collect();
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(routes(
            port,
            &format!(
                "    endpoints: [{}]\n    load_balancing: ring_hash\n    hash_on: {{header: x-user-id}}\n",
                endpoints.join(", ")
            ),
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;
    eventually("the route is served", async || spread(port, "/", 1).await).await;

    let mut used = BTreeSet::new();
    for user in 0..12 {
        let user = format!("user-{user}");
        let mut answered = BTreeSet::new();
        for _ in 0..4 {
            let response = request(port)
                .path("/")
                .header("x-user-id", &user)
                .send()
                .await
                .unwrap();
            response.expect_status(200).unwrap();
            answered.insert(response.upstream().unwrap_or_default());
        }
        assert_eq!(answered.len(), 1, "{user} went to {answered:?}");
        used.extend(answered);
    }
    // Twelve keys on one of three endpoints would mean the header is not hashed at all.
    assert!(used.len() > 1, "every key went to {used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_breaker_answers_503_over_its_limits() {
    let slow = Upstream::new("slow")
        .delay("/slow", Duration::from_secs(2))
        .spawn()
        .await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(routes(
            port,
            &format!(
                "    endpoints: [\"{}\"]\n    circuit_breaker: {{max_requests: 1, max_pending_requests: 1}}\n",
                slow.endpoint()
            ),
        ))
        .start()
        .await;
    let envoy = Envoy::new().control_plane(&cp).start().await;
    eventually("the route is served", async || spread(port, "/", 1).await).await;

    let requests: Vec<_> = (0..6)
        .map(|_| tokio::spawn(async move { get(port, "/slow").await }))
        .collect();
    let mut statuses = Vec::new();
    let mut refusals = Vec::new();
    for r in requests {
        let response = r.await.unwrap().unwrap();
        statuses.push(response.status.as_u16());
        if response.status == 503 {
            refusals.push(response.text());
        }
    }
    // One in flight and one queued can be served; six at once cannot all be.
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.contains(&503), "{statuses:?}");
    // A refusal by `max_requests` counts as an active overflow, one by the pending queue as
    // a pending overflow; which happens depends on how far the first request got (on a
    // loaded machine it may already be active when the others arrive).
    let mut overflows = 0;
    for stat in [
        "upstream_rq_active_overflow",
        "upstream_rq_pending_overflow",
    ] {
        overflows += counter(&envoy, &format!("cluster.svc.{stat}"))
            .await
            .unwrap();
    }
    assert!(
        overflows > 0,
        "no overflow counted; statuses {statuses:?}, refusals {refusals:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_an_endpoint_answering_5xx() {
    let good = Upstream::new("good").spawn().await;
    let bad = Upstream::new("bad").status(503).spawn().await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(routes(
            port,
            &format!(
                "    endpoints: [\"{}\", \"{}\"]
    outlier_detection: {{consecutive_5xx: 3, interval: 1s, base_ejection_time: 5m, max_ejection_percent: 50}}
",
                good.endpoint(),
                bad.endpoint()
            ),
        ))
        .start()
        .await;
    let envoy = Envoy::new().control_plane(&cp).start().await;

    eventually("the failing endpoint is ejected", async || {
        for _ in 0..10 {
            get(port, "/").await?;
        }
        let ejections = counter(
            &envoy,
            "cluster.svc.outlier_detection.ejections_enforced_total",
        )
        .await?;
        anyhow::ensure!(ejections >= 1, "no ejection yet");
        Ok(())
    })
    .await;
    let before = bad.requests();
    let seen = spread(port, "/", 20).await.unwrap();
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["good"]);
    assert_eq!(
        bad.requests(),
        before,
        "an ejected endpoint gets no requests"
    );
}

/// A self-signed certificate for `name` and its key, as (cert, key) paths in `dir`.
fn self_signed(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .arg("-subj")
        .arg(format!("/CN={name}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl req");
    assert!(status.success(), "openssl req failed");
    (cert, key)
}

/// A real TLS upstream with nothing to build: `openssl s_server -www` answers any GET with a
/// 200 status page. Returns the process (dies when dropped) and its port.
fn tls_upstream(
    dir: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> (Process, u16) {
    tls_upstream_with(dir, cert, key, None)
}

/// [`tls_upstream`]; with `client_ca`, one that refuses a handshake without a client
/// certificate that CA signed (`-Verify`), and whose page shows the certificate it was shown.
fn tls_upstream_with(
    dir: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> (Process, u16) {
    let port = reserve_port();
    let mut command = std::process::Command::new("openssl");
    command
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key);
    if let Some(ca) = client_ca {
        command.args(["-Verify", "1"]).arg("-CAfile").arg(ca);
    }
    let server = Process::spawn("s_server", command, dir).expect("start openssl s_server");
    (server, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verifies_the_certificate_name() {
    let dir = scratch_dir("tollgate-tls-");
    let (cert, key) = self_signed(dir.path(), "invoices.internal");
    let (_server, upstream_port) = tls_upstream(dir.path(), &cert, &key);
    let port = reserve_port();
    let ca = cert.display();
    // `secure` names its CA relative to routes.yaml (the control plane reads it and hands
    // Envoy the bytes), `misnamed` by an absolute path.
    let cp = ControlPlane::new()
        .file(
            "ca.pem",
            std::fs::read(&cert).expect("read the certificate"),
        )
        .routes(format!(
            "version: 1
listeners:
  - name: public
    address: 127.0.0.1:{port}
services:
  secure:
    endpoints: [\"127.0.0.1:{upstream_port}\"]
    tls: {{sni: invoices.internal, ca_file: ca.pem}}
  misnamed:
    endpoints: [\"127.0.0.1:{upstream_port}\"]
    tls: {{sni: orders.internal, ca_file: {ca}}}
routes:
  - name: secure
    match: {{prefix: /secure}}
    service: secure
  - name: misnamed
    match: {{prefix: /misnamed}}
    service: misnamed
"
        ))
        .start()
        .await;
    let envoy = Envoy::new().control_plane(&cp).start().await;

    eventually("the TLS upstream answers through the gateway", async || {
        let response = get(port, "/secure").await?;
        response.expect_status(200)?;
        Ok(())
    })
    .await;
    // The same server and CA, but the certificate is not for the name Envoy expects.
    let response = get(port, "/misnamed").await.unwrap();
    response.expect_status(503).unwrap();
    let failed = counter(&envoy, "cluster.misnamed.ssl.fail_verify_san")
        .await
        .unwrap();
    assert!(failed > 0, "the refusal should be the SAN check");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_ca_file_is_trusted_without_a_restart() {
    let dir = scratch_dir("tollgate-tls-");
    let (cert, key) = self_signed(dir.path(), "invoices.internal");
    let elsewhere = scratch_dir("tollgate-tls-other-");
    let (other_ca, _) = self_signed(elsewhere.path(), "invoices.internal");
    let (_server, upstream_port) = tls_upstream(dir.path(), &cert, &key);
    let port = reserve_port();
    let service = format!(
        "    endpoints: [\"127.0.0.1:{upstream_port}\"]\n    tls: {{sni: invoices.internal, ca_file: ca.pem}}\n"
    );
    let mut cp = ControlPlane::new()
        .file(
            "ca.pem",
            std::fs::read(&other_ca).expect("read the other CA"),
        )
        .routes(routes(port, &service))
        .start()
        .await;
    let envoy = Envoy::new().control_plane(&cp).start().await;

    // Trusting another CA, the gateway refuses the upstream's certificate chain.
    eventually("the upstream's chain is refused", async || {
        get(port, "/").await?.expect_status(503)?;
        let failed = counter(&envoy, "cluster.svc.ssl.fail_verify_error").await?;
        anyhow::ensure!(failed > 0, "no chain verification failure counted yet");
        Ok(())
    })
    .await;

    cp.write_file(
        "ca.pem",
        &std::fs::read(&cert).expect("read the certificate"),
    );
    eventually("the replaced bundle is trusted", async || {
        get(port, "/").await?.expect_status(200)?;
        Ok(())
    })
    .await;
    // The changed cluster warmed on endpoints the control plane sent again at once, rather
    // than on Envoy giving up waiting for them.
    assert_eq!(envoy.initial_fetch_timeouts().await.unwrap(), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_client_certificate_and_rotates_it_without_a_restart() {
    let dir = scratch_dir("tollgate-mtls-");
    let (cert, key) = self_signed(dir.path(), "invoices.internal");
    let client_ca = TestCa::new();
    let client = client_ca.issue_client("tollgate-gateway");
    let clients = dir.path().join("clients.pem");
    std::fs::write(&clients, client_ca.cert_pem()).expect("write the CA");
    let (_server, upstream_port) = tls_upstream_with(dir.path(), &cert, &key, Some(&clients));
    let port = reserve_port();
    let mut cp = ControlPlane::new()
        .file(
            "ca.pem",
            std::fs::read(&cert).expect("read the certificate"),
        )
        .file("client.pem", client.cert_pem.clone())
        .file("client.key", client.key_pem.clone())
        .routes(format!(
            "version: 1
listeners:
  - name: public
    address: 127.0.0.1:{port}
services:
  mutual:
    endpoints: [\"127.0.0.1:{upstream_port}\"]
    tls: {{sni: invoices.internal, ca_file: ca.pem, cert_file: client.pem, key_file: client.key}}
  anonymous:
    endpoints: [\"127.0.0.1:{upstream_port}\"]
    tls: {{sni: invoices.internal, ca_file: ca.pem}}
routes:
  - name: mutual
    match: {{prefix: /mutual}}
    service: mutual
  - name: anonymous
    match: {{prefix: /anonymous}}
    service: anonymous
"
        ))
        .start()
        .await;
    let envoy = Envoy::new().control_plane(&cp).start().await;

    eventually(
        "the upstream sees the gateway's client certificate",
        async || {
            let response = get(port, "/mutual").await?;
            response.expect_status(200)?;
            anyhow::ensure!(
                response.text().contains("CN=tollgate-gateway"),
                "the upstream was shown no gateway certificate:\n{}",
                response.text()
            );
            Ok(())
        },
    )
    .await;
    // The same upstream, reached without a client certificate, refuses the handshake.
    get(port, "/anonymous")
        .await
        .unwrap()
        .expect_status(503)
        .unwrap();
    assert!(
        !envoy
            .config_dump()
            .await
            .unwrap()
            .to_string()
            .contains("PRIVATE KEY"),
        "the key must not show in Envoy's config dump"
    );

    // Rotation: a new certificate and key, written over the old files, are presented on new
    // connections (s_server -www closes each one after its response).
    let rotated = client_ca.issue_client("tollgate-gateway-rotated");
    cp.write_file("client.key", &rotated.key_pem);
    cp.write_file("client.pem", &rotated.cert_pem);
    eventually("the rotated client certificate is presented", async || {
        let response = get(port, "/mutual").await?;
        response.expect_status(200)?;
        anyhow::ensure!(
            response.text().contains("CN=tollgate-gateway-rotated"),
            "still the old certificate"
        );
        Ok(())
    })
    .await;
    let metrics = cp.metrics().await.unwrap();
    assert!(
        metrics.contains(
            "tollgate_upstream_client_certificate_expiry_timestamp_seconds{service=\"mutual\"}"
        ),
        "no expiry metric for the client certificate:\n{metrics}"
    );
}
