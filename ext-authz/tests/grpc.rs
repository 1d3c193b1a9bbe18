//! The service over real gRPC: a tonic client against the server on 127.0.0.1:0.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tollgate_ext_authz::metrics::Metrics;
use tollgate_ext_authz::server::{App, Options};
use tollgate_proto::envoy::config::core::v3::HeaderValueOption;
use tollgate_proto::envoy::service::auth::v3::attribute_context::{self, HttpRequest, Request};
use tollgate_proto::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tollgate_proto::envoy::service::auth::v3::check_response::HttpResponse;
use tollgate_proto::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use tollgate_testkit::jwt::{self, claims, jwks, JwksServer, TestKey};
use tonic::transport::Channel;

const PATIENCE: Duration = Duration::from_secs(30);

struct Running {
    client: AuthorizationClient<Channel>,
    grpc_addr: std::net::SocketAddr,
    metrics_addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

fn routes_yaml(issuer: &str, remote_uri: &str) -> String {
    format!(
        "version: 1
auth_providers:
  main:
    issuer: {issuer}
    audiences: [tollgate]
    jwks_file: keys/jwks.json
    forward_claims:
      tier: x-tier
      email: x-email
  remote:
    issuer: https://id.example.com
    audiences: [tollgate]
    jwks_uri: {remote_uri}
  cookie:
    issuer: https://id.example.com
    audiences: [tollgate]
    jwks_file: keys/jwks.json
    token: {{cookie: session}}
  partners:
    type: client_certificate
    consumer_from: san_dns
    consumers:
      partner-a.example.com: {{tier: premium}}
    forward_claims: {{tier: x-tier}}
  by-cn:
    type: client_certificate
    consumer_from: subject_cn
    forward_claims: {{tier: x-tier}}
"
    )
}

async fn start(key: &TestKey, remote_uri: &str) -> Running {
    start_with_cooldown(key, remote_uri, Duration::from_secs(30)).await
}

async fn start_with_cooldown(key: &TestKey, remote_uri: &str, cooldown: Duration) -> Running {
    tollgate_ext_authz::install_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("keys")).expect("mkdir");
    std::fs::write(dir.path().join("keys/jwks.json"), jwks(&[key])).expect("write");
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, routes_yaml(jwt::ISSUER, remote_uri)).expect("write");
    let app = App::load(Options {
        routes,
        realm: "tollgate".into(),
        token_cache_size: 1000,
        jwks_refresh_interval: Duration::from_secs(300),
        jwks_cooldown: cooldown,
        telemetry: None,
        serving_threads: None,
        grpc_tls: None,
    })
    .await
    .expect("config loads");
    let metrics = Arc::clone(&app.metrics);
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (grpc_addr, metrics_addr) = (
        grpc.local_addr().expect("addr"),
        http.local_addr().expect("addr"),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.serve(grpc, http, async move {
        let _ = stopped.await;
    }));
    let client = AuthorizationClient::connect(format!("http://{grpc_addr}"))
        .await
        .expect("connect");
    Running {
        client,
        grpc_addr,
        metrics_addr,
        metrics,
        dir,
        _stop: stop,
    }
}

fn request(provider: &str, scopes: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let context: HashMap<String, String> = [
        ("route".to_string(), "invoices".to_string()),
        ("provider".to_string(), provider.to_string()),
        ("scopes".to_string(), scopes.to_string()),
    ]
    .into_iter()
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/api/v1/invoices".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: context,
            ..Default::default()
        }),
    }
}

async fn check(running: &mut Running, request: CheckRequest) -> CheckResponse {
    tokio::time::timeout(PATIENCE, running.client.check(request))
        .await
        .expect("answer in time")
        .expect("a CheckResponse, never a gRPC error")
        .into_inner()
}

fn ok(response: &CheckResponse) -> &OkHttpResponse {
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok,
        other => panic!("expected OK, got {other:?}"),
    }
}

fn denied(response: &CheckResponse) -> &DeniedHttpResponse {
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => denied,
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn header<'a>(headers: &'a [HeaderValueOption], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == name)
        .map(|h| h.value.as_str())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn a_valid_token_is_allowed_with_claim_headers_set_and_absent_ones_removed() {
    let key = TestKey::p256("k1");
    let mut running = start(&key, "http://127.0.0.1:9/jwks").await;
    let mut c = claims();
    c["tier"] = json!("gold");
    let auth = bearer(&key.mint(&c));
    let response = check(
        &mut running,
        request("main", "invoices:read", &[("authorization", &auth)]),
    )
    .await;
    assert_eq!(response.status.as_ref().map(|s| s.code), Some(0));
    let ok = ok(&response);
    assert_eq!(header(&ok.headers, "x-consumer-id"), Some("user-42"));
    assert_eq!(header(&ok.headers, "x-tier"), Some("gold"));
    assert!(
        ok.headers.iter().all(|h| h.append_action == 2),
        "OVERWRITE_IF_EXISTS_OR_ADD"
    );
    assert_eq!(ok.headers_to_remove, vec!["x-email".to_string()]);
}

#[tokio::test]
async fn a_missing_token_gets_401_with_a_bare_bearer_challenge() {
    let key = TestKey::p256("k1");
    let mut running = start(&key, "http://127.0.0.1:9/jwks").await;
    let response = check(&mut running, request("main", "", &[])).await;
    let denied = denied(&response);
    assert_eq!(denied.status.as_ref().map(|s| s.code), Some(401));
    assert_eq!(
        header(&denied.headers, "www-authenticate"),
        Some("Bearer realm=\"tollgate\"")
    );
}

#[tokio::test]
async fn an_invalid_token_gets_401_with_www_authenticate_and_a_json_body() {
    let key = TestKey::p256("k1");
    let mut running = start(&key, "http://127.0.0.1:9/jwks").await;
    let mut c = claims();
    c["exp"] = json!(jwt::now() - 3600);
    let token = key.mint(&c);
    let auth = bearer(&token);
    let response = check(
        &mut running,
        request("main", "", &[("authorization", &auth)]),
    )
    .await;
    let denied = denied(&response);
    assert_eq!(denied.status.as_ref().map(|s| s.code), Some(401));
    let challenge = header(&denied.headers, "www-authenticate").expect("challenge");
    assert!(
        challenge.starts_with(
            "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\""
        ),
        "{challenge}"
    );
    assert_eq!(
        header(&denied.headers, "content-type"),
        Some("application/json")
    );
    let body: serde_json::Value = serde_json::from_str(&denied.body).expect("json body");
    assert_eq!(body["error"], "invalid_token");
    assert_eq!(body["error_description"], "the token has expired");
    assert!(!denied.body.contains(&token) && !challenge.contains(&token));
}

#[tokio::test]
async fn garbage_tokens_get_401_not_an_error() {
    let key = TestKey::p256("k1");
    let mut running = start(&key, "http://127.0.0.1:9/jwks").await;
    let huge = "a".repeat(20_000);
    for token in [
        "x",
        "a.b.c",
        "....",
        "eyJhbGciOiJub25lIn0.e30.",
        huge.as_str(),
    ] {
        let auth = bearer(token);
        let response = check(
            &mut running,
            request("main", "", &[("authorization", &auth)]),
        )
        .await;
        assert_eq!(denied(&response).status.as_ref().map(|s| s.code), Some(401));
    }
}

#[tokio::test]
async fn a_token_without_the_route_scope_gets_403_insufficient_scope() {
    let key = TestKey::p256("k1");
    let mut running = start(&key, "http://127.0.0.1:9/jwks").await;
    let auth = bearer(&key.mint(&claims()));
    let response = check(
        &mut running,
        request(
            "main",
            "invoices:read invoices:write",
            &[("authorization", &auth)],
        ),
    )
    .await;
    let denied = denied(&response);
    assert_eq!(denied.status.as_ref().map(|s| s.code), Some(403));
    let challenge = header(&denied.headers, "www-authenticate").expect("challenge");
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("scope=\"invoices:read invoices:write\""),
        "{challenge}"
    );
    let body: serde_json::Value = serde_json::from_str(&denied.body).expect("json body");
    assert_eq!(body["error"], "insufficient_scope");
}

#[tokio::test]
async fn a_reused_token_is_answered_from_the_cache_and_scopes_still_apply() {
    let key = TestKey::p256("k1");
    let mut running = start(&key, "http://127.0.0.1:9/jwks").await;
    let auth = bearer(&key.mint(&claims()));
    let first = check(
        &mut running,
        request("main", "profile", &[("authorization", &auth)]),
    )
    .await;
    ok(&first);
    assert_eq!(running.metrics.cache_hits(), 0);
    let second = check(
        &mut running,
        request("main", "profile", &[("authorization", &auth)]),
    )
    .await;
    ok(&second);
    assert_eq!(running.metrics.cache_hits(), 1);
    let other_route = check(
        &mut running,
        request("main", "admin", &[("authorization", &auth)]),
    )
    .await;
    assert_eq!(
        denied(&other_route).status.as_ref().map(|s| s.code),
        Some(403)
    );
    assert_eq!(running.metrics.cache_hits(), 2);
}

#[tokio::test]
async fn an_unknown_provider_is_denied_401() {
    let key = TestKey::p256("k1");
    let mut running = start(&key, "http://127.0.0.1:9/jwks").await;
    let auth = bearer(&key.mint(&claims()));
    let response = check(
        &mut running,
        request("nobody", "", &[("authorization", &auth)]),
    )
    .await;
    assert_eq!(denied(&response).status.as_ref().map(|s| s.code), Some(401));
    assert_eq!(running.metrics.checks_count(false, "unknown_provider"), 1);
}

#[tokio::test]
async fn a_cookie_provider_reads_its_cookie() {
    let key = TestKey::p256("k1");
    let mut running = start(&key, "http://127.0.0.1:9/jwks").await;
    let cookie = format!("a=b; session={}", key.mint(&claims()));
    let response = check(&mut running, request("cookie", "", &[("cookie", &cookie)])).await;
    ok(&response);
}

#[tokio::test]
async fn a_remote_key_rotation_is_found_through_the_unknown_kid_refetch() {
    let old = TestKey::p256("old");
    let server = JwksServer::start(jwks(&[&old])).await;
    let mut running = start_with_cooldown(&old, &server.uri(), Duration::ZERO).await;
    let auth = bearer(&old.mint(&claims()));
    ok(&check(
        &mut running,
        request("remote", "", &[("authorization", &auth)]),
    )
    .await);

    let new = TestKey::ed25519("new");
    server.set(200, jwks(&[&old, &new]));
    let auth = bearer(&new.mint(&claims()));
    ok(&check(
        &mut running,
        request("remote", "", &[("authorization", &auth)]),
    )
    .await);
}

#[tokio::test]
async fn made_up_kids_within_the_cooldown_do_not_reach_the_issuer() {
    let key = TestKey::p256("k");
    let server = JwksServer::start(jwks(&[&key])).await;
    let mut running = start_with_cooldown(&key, &server.uri(), Duration::from_secs(3600)).await;
    let auth = bearer(&key.mint(&claims()));
    ok(&check(
        &mut running,
        request("remote", "", &[("authorization", &auth)]),
    )
    .await);
    let hits = server.hits();
    assert_eq!(hits, 1);
    for i in 0..50 {
        let stranger = TestKey::p256(&format!("made-up-{i}"));
        let auth = bearer(&stranger.mint(&claims()));
        let response = check(
            &mut running,
            request("remote", "", &[("authorization", &auth)]),
        )
        .await;
        assert_eq!(denied(&response).status.as_ref().map(|s| s.code), Some(401));
    }
    assert_eq!(server.hits(), hits);
}

#[tokio::test]
async fn a_routes_yaml_edit_is_applied_live_and_a_bad_edit_is_ignored() {
    let key = TestKey::p256("k1");
    let mut running = start(&key, "http://127.0.0.1:9/jwks").await;
    let routes = running.dir.path().join("routes.yaml");
    let auth = bearer(&key.mint(&claims()));
    ok(&check(
        &mut running,
        request("main", "", &[("authorization", &auth)]),
    )
    .await);

    std::fs::write(
        &routes,
        routes_yaml("https://other.example.com", "http://127.0.0.1:9/jwks"),
    )
    .expect("write");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let response = check(
            &mut running,
            request("main", "", &[("authorization", &auth)]),
        )
        .await;
        if matches!(
            response.http_response,
            Some(HttpResponse::DeniedResponse(_))
        ) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reload not seen in {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    write_and_expect_kept(&routes, &mut running, &auth).await;
}

/// A broken file must leave the last good providers serving.
async fn write_and_expect_kept(routes: &Path, running: &mut Running, auth: &str) {
    std::fs::write(routes, "version: 1\nauth_providers: {main: {issuer: [}}\n").expect("write");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !running
        .metrics_text()
        .await
        .contains("config_reloads_total{outcome=\"error\"} 1")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bad reload not seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wrong_issuer = running.metrics.checks_count(false, "issuer");
    let response = check(running, request("main", "", &[("authorization", auth)])).await;
    // Still the previous (other-issuer) provider answering.
    assert_eq!(denied(&response).status.as_ref().map(|s| s.code), Some(401));
    assert_eq!(
        running.metrics.checks_count(false, "issuer"),
        wrong_issuer + 1
    );
}

impl Running {
    async fn metrics_text(&self) -> String {
        http_get(self.metrics_addr, "/metrics").await.1
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut text = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut text))
        .await
        .expect("answer in time")
        .expect("read");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served() {
    let key = TestKey::p256("k1");
    let server = JwksServer::start(jwks(&[&key])).await;
    let mut running = start(&key, &server.uri()).await;
    let auth = bearer(&key.mint(&claims()));
    ok(&check(
        &mut running,
        request("main", "", &[("authorization", &auth)]),
    )
    .await);

    let channel = Channel::from_shared(format!("http://{}", running.grpc_addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "envoy.service.auth.v3.Authorization".into(),
            })
            .await;
        if answer.map(|a| a.into_inner().status).ok() == Some(1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never SERVING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(http_get(running.metrics_addr, "/readyz").await.0, 200);
    assert_eq!(http_get(running.metrics_addr, "/healthz").await.0, 200);
    let metrics = running.metrics_text().await;
    for name in [
        "tollgate_ext_authz_checks_total{result=\"allowed\",reason=\"ok\"} 1",
        "tollgate_ext_authz_token_cache_lookups_total",
        "tollgate_ext_authz_jwks_fetches_total{provider=\"remote\",outcome=\"changed\"} 1",
        "tollgate_ext_authz_jwks_keys",
        "tollgate_ext_authz_check_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
}

#[test]
fn a_bad_routes_yaml_at_start_exits_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = dir.path().join("routes.yaml");
    std::fs::write(
        &routes,
        "version: 1\nauth_providers:\n  main:\n    issuer: x\n",
    )
    .expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate-ext-authz"))
        .args(["--routes"])
        .arg(&routes)
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("routes.yaml:"), "{stderr}");
}

/// As Envoy sends a client certificate (`include_peer_certificate`): PEM, URL-encoded.
fn sent_certificate(pem: &str) -> String {
    pem.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A request for `provider` (a space-separated list for `any_of`) from a client that
/// presented `certificate` (PEM), or none.
fn with_certificate(provider: &str, certificate: Option<&str>) -> CheckRequest {
    let mut request = request(provider, "", &[]);
    let attributes = request.attributes.as_mut().expect("attributes");
    attributes.source = certificate.map(|pem| attribute_context::Peer {
        certificate: sent_certificate(pem),
        ..Default::default()
    });
    request
}

const WITH_SANS: &str = include_str!("fixtures/client-with-sans.pem");
const CN_ONLY: &str = include_str!("fixtures/client-cn-only.pem");

#[tokio::test]
async fn a_client_certificate_names_its_consumer_with_the_listed_tier() {
    let key = TestKey::p256("k1");
    let mut running = start(&key, "http://127.0.0.1:9/jwks").await;
    let response = check(&mut running, with_certificate("partners", Some(WITH_SANS))).await;
    let admitted = ok(&response);
    assert_eq!(
        header(&admitted.headers, "x-consumer-id"),
        Some("partner-a.example.com")
    );
    assert_eq!(header(&admitted.headers, "x-tier"), Some("premium"));
    // Without a consumer list every certificate is a consumer, with no tier.
    let response = check(&mut running, with_certificate("by-cn", Some(CN_ONLY))).await;
    let admitted = ok(&response);
    assert_eq!(
        header(&admitted.headers, "x-consumer-id"),
        Some("only-a-cn")
    );
    assert_eq!(admitted.headers_to_remove, vec!["x-tier".to_string()]);
}

#[tokio::test]
async fn a_certificate_without_the_field_or_off_the_list_is_forbidden_and_none_is_401() {
    let key = TestKey::p256("k1");
    let mut running = start(&key, "http://127.0.0.1:9/jwks").await;
    let response = check(&mut running, with_certificate("partners", Some(CN_ONLY))).await;
    let refused = denied(&response);
    assert_eq!(refused.status.as_ref().map(|s| s.code), Some(403));
    assert_eq!(header(&refused.headers, "www-authenticate"), None);
    let body: serde_json::Value = serde_json::from_str(&refused.body).expect("JSON");
    assert_eq!(
        body,
        json!({"error": "forbidden", "error_description": "the client certificate has no san_dns to name its consumer"})
    );

    let response = check(&mut running, with_certificate("partners", None)).await;
    let refused = denied(&response);
    assert_eq!(refused.status.as_ref().map(|s| s.code), Some(401));
    assert_eq!(
        header(&refused.headers, "www-authenticate"),
        Some("ClientCertificate realm=\"tollgate\"")
    );

    // any_of: neither a certificate nor a token, so both kinds are asked for.
    let response = check(&mut running, with_certificate("partners main", None)).await;
    let refused = denied(&response);
    assert_eq!(
        header(&refused.headers, "www-authenticate"),
        Some("ClientCertificate realm=\"tollgate\", Bearer realm=\"tollgate\"")
    );
    let metrics = &running.metrics;
    use tollgate_ext_authz::response::Outcome;
    assert_eq!(
        metrics.provider_check_count("partners", Outcome::Forbidden),
        1
    );
    assert_eq!(
        metrics.provider_check_count("partners", Outcome::Missing),
        2
    );
    assert_eq!(metrics.provider_check_count("main", Outcome::Missing), 1);
}
