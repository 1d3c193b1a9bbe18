//! TLS termination and HTTP/2 through a real Envoy: HTTPS reaches the upstream, ALPN picks
//! HTTP/2 (or HTTP/1.1 for clients that only speak it), a minimum version shuts out older
//! clients, plaintext on a TLS port routes nothing, a rotated certificate is presented
//! without a restart (and a bad one is refused), and a cleartext listener speaks h2c.
//!
//! Certificates come from a throwaway CA made with `openssl`; the client trusts only it.

use hyper::Version;
use tollgate_conformance::{
    eventually, request, reserve_port, ControlPlane, Envoy, IssuedCertificate, RunningControlPlane,
    RunningEnvoy, TestCa, TlsClient, TlsResponse, Upstream, UpstreamHandle, XdsVariant,
};

/// routes.yaml: a listener `secure` on `port` terminating TLS with `gw.pem`/`gw.key` (next to
/// routes.yaml) plus `extra` in its `tls:` mapping, and everything routed to `upstream`.
fn routes(port: u16, extra: &str, upstream: &UpstreamHandle) -> String {
    format!(
        "version: 1
listeners:
  - name: secure
    address: 127.0.0.1:{port}
    tls: {{cert_file: gw.pem, key_file: gw.key{extra}}}
services:
  app:
    endpoints: [\"{}\"]
routes:
  - name: all
    match: {{prefix: /}}
    service: app
",
        upstream.endpoint()
    )
}

/// A gateway with one TLS listener serving `certificate`, and its upstream.
struct TlsGateway {
    port: u16,
    upstream: UpstreamHandle,
    cp: RunningControlPlane,
    envoy: RunningEnvoy,
}

impl TlsGateway {
    async fn start(certificate: &IssuedCertificate, extra: &str) -> TlsGateway {
        Self::start_over(certificate, extra, XdsVariant::Sotw).await
    }

    async fn start_over(
        certificate: &IssuedCertificate,
        extra: &str,
        variant: XdsVariant,
    ) -> TlsGateway {
        Self::start_with(certificate, extra, &[], variant).await
    }

    /// [`Self::start_over`], with `more_files` next to routes.yaml too.
    async fn start_with(
        certificate: &IssuedCertificate,
        extra: &str,
        more_files: &[(&str, &[u8])],
        variant: XdsVariant,
    ) -> TlsGateway {
        let upstream = Upstream::new("app").spawn().await;
        let port = reserve_port();
        let mut cp = ControlPlane::new()
            .routes(routes(port, extra, &upstream))
            .file("gw.pem", certificate.cert_pem.clone())
            .file("gw.key", certificate.key_pem.clone());
        for (name, contents) in more_files {
            cp = cp.file(name, contents.to_vec());
        }
        let cp = cp.start().await;
        let envoy = Envoy::new()
            .xds_variant(variant)
            .control_plane(&cp)
            .start()
            .await;
        TlsGateway {
            port,
            upstream,
            cp,
            envoy,
        }
    }

    /// Starts a gateway serving `certificate` and waits until a client of `ca` gets it.
    async fn serving(ca: &TestCa, certificate: &IssuedCertificate) -> TlsGateway {
        Self::serving_over(ca, certificate, XdsVariant::Sotw).await
    }

    async fn serving_over(
        ca: &TestCa,
        certificate: &IssuedCertificate,
        variant: XdsVariant,
    ) -> TlsGateway {
        let gateway = TlsGateway::start_over(certificate, "", variant).await;
        let answer = gateway.get_through(&ca.client(), "/warm-up").await;
        assert_eq!(answer.peer_certificate, certificate.der());
        gateway
    }

    /// `GET path` with `client`, retried until the listener is up and answers from upstream.
    async fn get_through(&self, client: &TlsClient, path: &str) -> TlsResponse {
        let what = format!(
            "GET https://{}:{}{path} reaches the upstream",
            client.sni(),
            self.port
        );
        eventually(&what, async || {
            let answer = client.send(&request(self.port).path(path)).await?;
            answer.response.expect_upstream("app")?;
            Ok(answer)
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_request_from_a_client_trusting_the_ca_reaches_the_upstream() {
    let ca = TestCa::new();
    let certificate = ca.issue("gateway");
    let gateway = TlsGateway::start(&certificate, "").await;

    let answer = gateway.get_through(&ca.client(), "/hello").await;

    assert_eq!(answer.response.upstream_path().as_deref(), Some("/hello"));
    assert_eq!(answer.peer_certificate, certificate.der());
    assert_eq!(gateway.upstream.paths(), ["/hello"]);

    // The certificate was issued for one day (a UTCTime notAfter), just before the gateway
    // started: its expiry is exported for alerting.
    let expiry = gateway
        .cp
        .metric(
            "tollgate_listener_certificate_expiry_timestamp_seconds{listener=\"secure\",cert_file=\"gw.pem\"}",
        )
        .await
        .expect("metrics")
        .expect("the listener's certificate expiry");
    let in_a_day = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
        + 86_400.0;
    assert!(
        (in_a_day - 600.0..=in_a_day).contains(&expiry),
        "expiry {expiry}, expected just under {in_a_day}"
    );
    // A day is well inside the warning period.
    let cp = gateway.cp.process();
    let warned = [cp.stdout(), cp.stderr()].iter().any(|log| {
        log.lines().any(|line| {
            line.contains("a certificate expires soon")
                && line.contains("served by listener secure")
        })
    });
    assert!(warned, "no expiry warning in the control plane's log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_chooses_http2_and_the_response_arrives_over_http2() {
    let ca = TestCa::new();
    let gateway = TlsGateway::start(&ca.issue("gateway"), "").await;

    let answer = gateway.get_through(&ca.client(), "/h2").await;

    assert_eq!(answer.alpn.as_deref(), Some("h2"));
    assert_eq!(answer.response.version, Version::HTTP_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_offering_only_http1_gets_http1_over_tls() {
    let ca = TestCa::new();
    let gateway = TlsGateway::start(&ca.issue("gateway"), "").await;

    let answer = gateway
        .get_through(&ca.client().alpn(&["http/1.1"]), "/h1")
        .await;

    assert_eq!(answer.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(answer.response.version, Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_min_version_1_3_a_tls_1_2_client_is_refused_and_a_1_3_client_served() {
    let ca = TestCa::new();
    let gateway = TlsGateway::start(&ca.issue("gateway"), ", min_version: \"1.3\"").await;

    let answer = gateway.get_through(&ca.client().tls13_only(), "/").await;
    assert_eq!(answer.tls_version, Some(rustls::ProtocolVersion::TLSv1_3));

    // The listener is up (a 1.3 client was just served), so this refusal is the version's.
    let refused = ca.client().tls12_only().handshake(gateway.port).await;
    let error = refused.expect_err("a TLS 1.2-only client must not complete a handshake");
    assert!(
        format!("{error:#}").contains("TLS handshake"),
        "refused at the handshake: {error:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_is_accepted_by_default() {
    let ca = TestCa::new();
    let gateway = TlsGateway::start(&ca.issue("gateway"), "").await;

    let answer = gateway.get_through(&ca.client().tls12_only(), "/").await;

    assert_eq!(answer.tls_version, Some(rustls::ProtocolVersion::TLSv1_2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_gets_no_routed_response() {
    let ca = TestCa::new();
    let gateway = TlsGateway::serving(&ca, &ca.issue("gateway")).await;
    let served = gateway.upstream.requests();

    let plain = request(gateway.port).path("/plain").send().await;

    if let Ok(response) = &plain {
        assert!(
            response.upstream().is_none(),
            "plaintext was routed: {} {:?}",
            response.status,
            response.text()
        );
    }
    assert_eq!(
        gateway.upstream.requests(),
        served,
        "no plaintext request may reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_presented_to_new_handshakes_without_a_restart() {
    rotate_over(XdsVariant::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_reaches_an_envoy_on_delta_xds_too() {
    rotate_over(XdsVariant::Delta).await;
}

async fn rotate_over(variant: XdsVariant) {
    let ca = TestCa::new();
    let first = ca.issue("gateway-first");
    let mut gateway = TlsGateway::serving_over(&ca, &first, variant).await;
    let client = ca.client();
    let envoy_pid = gateway.envoy.process().pid();

    // As a certificate manager does: the key first, then the certificate, each by rename.
    // In between, the pair does not match and is refused; the first keeps serving.
    let second = ca.issue("gateway-second");
    gateway.cp.write_file("gw.key", &second.key_pem);
    gateway.cp.write_file("gw.pem", &second.cert_pem);

    eventually(
        "new handshakes present the rotated certificate",
        async || {
            let answer = client.send(&request(gateway.port).path("/")).await?;
            answer.response.expect_upstream("app")?;
            anyhow::ensure!(
                answer.peer_certificate == second.der(),
                "still the first certificate"
            );
            Ok(())
        },
    )
    .await;
    assert_eq!(
        gateway.envoy.process().pid(),
        envoy_pid,
        "the same Envoy process"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_does_not_match_is_refused_and_the_last_good_certificate_keeps_serving() {
    let ca = TestCa::new();
    let first = ca.issue("gateway-first");
    let mut gateway = TlsGateway::serving(&ca, &first).await;

    let stray = ca.issue("stray");
    gateway.cp.write_file("gw.key", &stray.key_pem);

    let status = eventually("/status reports the refused key", async || {
        let status = gateway.cp.status().await?;
        anyhow::ensure!(
            status["last_reload"]["ok"] == false,
            "not refused yet: {status}"
        );
        Ok(status)
    })
    .await;
    let errors = status["last_reload"]["errors"].to_string();
    assert!(
        errors
            .contains(":5:40: key_file \\\"gw.key\\\" does not match the certificate in cert_file"),
        "{errors}"
    );
    let answer = gateway.get_through(&ca.client(), "/").await;
    assert_eq!(answer.peer_certificate, first.der());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleartext_listener_answers_http2_with_prior_knowledge() {
    let upstream = Upstream::new("app").spawn().await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(format!(
            "version: 1
listeners:
  - name: plain
    address: 127.0.0.1:{port}
services:
  app:
    endpoints: [\"{}\"]
routes:
  - name: all
    match: {{prefix: /}}
    service: app
",
            upstream.endpoint()
        ))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;

    let response = eventually("h2c reaches the upstream", async || {
        let response = request(port)
            .path("/h2c")
            .http2_prior_knowledge()
            .send()
            .await?;
        response.expect_upstream("app")?;
        Ok(response)
    })
    .await;

    assert_eq!(response.version, Version::HTTP_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_private_key_shows_in_no_log_and_is_redacted_in_envoys_config_dump() {
    let ca = TestCa::new();
    let certificate = ca.issue("gateway");
    let gateway = TlsGateway::serving(&ca, &certificate).await;

    let dump = gateway.envoy.config_dump().await.unwrap().to_string();
    assert!(
        dump.contains("dynamic_active_secrets"),
        "the secret is in the dump"
    );
    // `inline_bytes` shows as base64 in JSON: this is "[redacted]".
    assert!(dump.contains("W3JlZGFjdGVkXQ=="), "the key is redacted");
    let key_body = String::from_utf8_lossy(&certificate.key_pem)
        .lines()
        .nth(1)
        .expect("a PEM body line")
        .to_owned();
    assert!(
        !dump.contains(&key_body),
        "the key leaked into /config_dump"
    );
    let cp = gateway.cp.process();
    for log in [cp.stdout(), cp.stderr()] {
        assert!(
            !log.contains(&key_body),
            "the key leaked into the control plane's log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sni_certificate_is_presented_to_clients_asking_for_its_name() {
    let ca = TestCa::new();
    let default = ca.issue("default");
    let api = ca.issue_for("api", "api.test");
    let gateway = TlsGateway::start_with(
        &default,
        ", sni_certificates: [{cert_file: api.pem, key_file: api.key}]",
        &[("api.pem", &api.cert_pem), ("api.key", &api.key_pem)],
        XdsVariant::Sotw,
    )
    .await;

    // Each client verifies the certificate against the name it sent, so a wrong choice would
    // fail the handshake rather than pass unnoticed.
    let answer = gateway
        .get_through(&ca.client().server_name("api.test"), "/api")
        .await;
    assert_eq!(answer.peer_certificate, api.der());
    let answer = gateway.get_through(&ca.client(), "/default").await;
    assert_eq!(answer.peer_certificate, default.der());
    assert_eq!(gateway.upstream.paths(), ["/api", "/default"]);

    for file in ["gw.pem", "api.pem"] {
        let series = format!(
            "tollgate_listener_certificate_expiry_timestamp_seconds{{listener=\"secure\",cert_file=\"{file}\"}}"
        );
        let expiry = gateway.cp.metric(&series).await.expect("metrics");
        assert!(expiry.is_some(), "no {series}");
    }
}
