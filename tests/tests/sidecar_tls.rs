//! The sidecars' gRPC ports over TLS (issue 21): with `--tls-cert/--tls-key` (and
//! `--client-ca`) a sidecar answers only over TLS, and the `tls` block of
//! `sidecars.ext_authz` / `sidecars.rate_limit` in routes.yaml gives Envoy the CA to verify it
//! with and the client certificate to present, so a check or a decision cannot be spoofed
//! from the network. A rotated client CA file is used for new connections.

use rustls::AlertDescription;
use sha2::Digest as _;
use tollgate_conformance::ratelimit::RateLimitService;
use tollgate_conformance::tls::SERVER_NAME;
use tollgate_conformance::{
    eventually, request, reserve_port, ClientCa, ControlPlane, Envoy, ExtAuthz, TestCa, Upstream,
};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const KEY: &str = "tgk_sidecar_tls_0123456789abcdef";
const AUTHORIZATION: &str = "envoy.service.auth.v3.Authorization";

/// The health of `service` asked over `channel`.
async fn health(
    channel: tonic::transport::Channel,
    service: &str,
) -> Result<ServingStatus, tonic::Status> {
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(reply.into_inner().status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_calls_both_sidecars_over_mutual_tls_and_plaintext_callers_are_refused() {
    // The sidecars' certificates come from one CA, Envoy's client certificate from another.
    let sidecar_ca = TestCa::new();
    let sidecar_cert = sidecar_ca.issue("sidecars");
    let envoy_ca = ClientCa::new("Envoys calling the sidecars");
    let envoy_cert = envoy_ca.certificate("gateway").issue();

    let api = Upstream::new("api").spawn().await;
    let port = reserve_port();
    let (authz, rls) = (ExtAuthz::new(), RateLimitService::new());
    let hash = hex::encode(sha2::Sha256::digest(KEY.as_bytes()));
    let tls_block = format!(
        "{{sni: {SERVER_NAME}, ca_file: sidecar-ca.pem, cert_file: envoy.pem, key_file: envoy.key}}"
    );
    let mut cp = ControlPlane::new()
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
      - {{by: consumer, requests: 3, per: minute}}
sidecars:
  ext_authz: {{address: "{authz}", timeout: 2s, tls: {tls_block}}}
  rate_limit: {{address: "{rls}", timeout: 2s, failure_mode_deny: true, tls: {tls_block}}}
"#,
            api = api.endpoint(),
            authz = authz.grpc_addr(),
            rls = rls.grpc_addr(),
        ))
        .file(
            "keys.yaml",
            format!("keys:\n  - {{consumer: acme, sha256: \"{hash}\"}}\n"),
        )
        .file("sidecar-ca.pem", sidecar_ca.cert_pem())
        .file("envoy.pem", envoy_cert.cert_pem.clone())
        .file("envoy.key", envoy_cert.key_pem.clone())
        .file("sidecar.pem", sidecar_cert.cert_pem.clone())
        .file("sidecar.key", sidecar_cert.key_pem.clone())
        .file("envoy-ca.pem", envoy_ca.cert_pem())
        .start()
        .await;
    let dir = cp
        .routes_path()
        .parent()
        .expect("routes.yaml is in a directory");
    let (cert, key, client_ca) = (
        dir.join("sidecar.pem"),
        dir.join("sidecar.key"),
        dir.join("envoy-ca.pem"),
    );
    let authz = authz
        .routes_file(cp.routes_path())
        .grpc_tls(&cert, &key, Some(&client_ca))
        .start()
        .await;
    let rls = rls
        .routes_file(cp.routes_path())
        .grpc_tls(&cert, &key, Some(&client_ca))
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;

    let keyed = || request(port).path("/x").header("x-api-key", KEY);
    eventually("a checked and limited request is served", async || {
        keyed().send().await?.expect_upstream("api")?;
        Ok(())
    })
    .await;
    // The check is ext-authz's verdict, not a pass-through: a wrong key is its 401.
    request(port)
        .path("/x")
        .header("x-api-key", "tgk_wrong")
        .send()
        .await
        .expect("a response")
        .expect_status(401)
        .expect("ext-authz refuses a wrong key");
    // The decision is the rate-limit service's: the consumer's 3 a minute run out.
    let mut limited = false;
    for _ in 0..4 {
        let response = keyed().send().await.expect("a response");
        if response.status == 429 {
            limited = true;
            break;
        }
        response
            .expect_upstream("api")
            .expect("served until limited");
    }
    assert!(limited, "the rate-limit service's decision is applied");

    // Callers other than Envoy: plaintext gRPC is refused outright, TLS without a client
    // certificate is refused in the handshake, and Envoy's certificate is answered.
    for (name, addr, service) in [
        ("ext-authz", authz.grpc_addr(), AUTHORIZATION),
        ("rate limit", rls.grpc_addr(), ""),
    ] {
        let plaintext = async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| tonic::Status::internal(e.to_string()))?
                .connect()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            health(channel, service).await
        };
        let refused = tokio::time::timeout(std::time::Duration::from_secs(30), plaintext)
            .await
            .expect("the plaintext call ends");
        assert!(
            refused.is_err(),
            "{name}: a plaintext caller got {refused:?}"
        );
        let anonymous = sidecar_ca.client().alpn(&["h2"]);
        assert_eq!(
            anonymous.refusal_alert(addr.port()).await.expect("refused"),
            AlertDescription::CertificateRequired,
            "{name}"
        );
        let as_envoy = anonymous.client_certificate(&envoy_cert);
        let channel = as_envoy
            .grpc_channel(addr.port())
            .await
            .expect("a TLS connection with Envoy's certificate");
        assert_eq!(
            health(channel, service).await.expect("answered"),
            ServingStatus::Serving,
            "{name}"
        );
    }

    // The client CA file rotates: both sidecars trust only the new CA for new connections.
    let next_ca = ClientCa::new("Next Envoy CA");
    cp.write_file("envoy-ca.pem", &next_ca.cert_pem());
    let next_client = sidecar_ca
        .client()
        .alpn(&["h2"])
        .client_certificate(&next_ca.certificate("gateway").issue());
    let old_client = sidecar_ca
        .client()
        .alpn(&["h2"])
        .client_certificate(&envoy_cert);
    for (name, addr, service) in [
        ("ext-authz", authz.grpc_addr(), AUTHORIZATION),
        ("rate limit", rls.grpc_addr(), ""),
    ] {
        eventually(&format!("{name} trusts only the new CA"), async || {
            let alert = old_client.refusal_alert(addr.port()).await?;
            anyhow::ensure!(alert == AlertDescription::UnknownCA, "{alert:?}");
            Ok(())
        })
        .await;
        let channel = next_client
            .grpc_channel(addr.port())
            .await
            .expect("a TLS connection with the new CA's certificate");
        assert_eq!(
            health(channel, service).await.expect("answered"),
            ServingStatus::Serving,
            "{name}"
        );
    }
}
