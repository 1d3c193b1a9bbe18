//! One consumer identity whichever way a caller proves itself (issue 20), through a real
//! Envoy, tollgate-ext-authz, tollgate-ratelimit and Redis:
//!
//! - a `client_certificate` provider takes the consumer from the certificate Envoy verified,
//!   on an `optional` and on a `required` listener: a certificate without the field is a 403
//!   with a JSON reason, no certificate (where the listener allows that) a 401;
//! - a consumer who calls with an API key, a client certificate or a JWT is one consumer to
//!   the rate limit `by: consumer`: the same tier, the same budget, spent together.

use std::net::SocketAddr;

use serde_json::json;
use sha2::Digest as _;
use tollgate_conformance::ratelimit::{RateLimitService, RunningRateLimitService};
use tollgate_conformance::{
    eventually, request, reserve_port, ClientCa, ClientCertificate, ControlPlane, Envoy, ExtAuthz,
    Response, RunningControlPlane, RunningEnvoy, RunningExtAuthz, TestCa, TlsClient, Upstream,
    UpstreamHandle,
};
use tollgate_testkit::jwt::{self, TestKey};
use tollgate_testkit::redis::RedisServer;

/// The key acme calls with; the keys file holds its hash.
const ACME_KEY: &str = "tgk_acme_consumer_identity_0123456789";

fn keys_file() -> String {
    let hash = |key: &str| hex::encode(sha2::Sha256::digest(key.as_bytes()));
    format!(
        "keys:\n  - {{consumer: acme, tier: premium, sha256: \"{}\"}}\n",
        hash(ACME_KEY)
    )
}

struct Ports {
    plain: u16,
    optional: u16,
    required: u16,
}

fn routes(ports: &Ports, api: &UpstreamHandle, authz: SocketAddr, rls: SocketAddr) -> String {
    let Ports {
        plain,
        optional,
        required,
    } = ports;
    let tls = "cert_file: gw.pem, key_file: gw.key, client_ca_file: partners-ca.pem";
    format!(
        r#"version: 1
listeners:
  - {{name: public, address: "127.0.0.1:{plain}"}}
  - name: partners
    address: "127.0.0.1:{optional}"
    tls: {{{tls}, client_certificate: optional}}
  - name: partners-strict
    address: "127.0.0.1:{required}"
    tls: {{{tls}, client_certificate: required}}
services:
  api: {{endpoints: ["{api}"]}}
auth_providers:
  keys: {{type: api_key, header: x-api-key, keys_file: keys.yaml, forward_claims: {{tier: x-consumer-tier}}}}
  certs:
    type: client_certificate
    consumer_from: subject_cn
    consumers: {{acme: {{tier: premium}}}}
    forward_claims: {{tier: x-consumer-tier}}
  by-san: {{type: client_certificate, consumer_from: san_dns}}
  tokens:
    issuer: {issuer}
    audiences: [{audience}]
    jwks_file: jwks.json
    forward_claims: {{tier: x-consumer-tier}}
routes:
  - {{name: by-san, listener: partners, match: {{prefix: /by-san/}}, service: api, auth: {{provider: by-san}}}}
  - {{name: by-san-strict, listener: partners-strict, match: {{prefix: /by-san/}}, service: api, auth: {{provider: by-san}}}}
  - name: tiered
    match: {{prefix: /tiered/}}
    service: api
    auth: {{any_of: [keys, certs, tokens]}}
    rate_limit:
      - {{by: consumer, tier_header: x-consumer-tier, tiers: {{free: 2/minute, premium: 4/minute}}}}
sidecars:
  ext_authz: {{address: "{authz}", timeout: 2s}}
  rate_limit: {{address: "{rls}", timeout: 2s, failure_mode_deny: true, domain: tollgate}}
"#,
        api = api.endpoint(),
        issuer = jwt::ISSUER,
        audience = jwt::AUDIENCE,
    )
}

struct Gateway {
    ports: Ports,
    server_ca: TestCa,
    partners: ClientCa,
    token_key: TestKey,
    api: UpstreamHandle,
    _envoy: RunningEnvoy,
    _rls: RunningRateLimitService,
    _authz: RunningExtAuthz,
    _cp: RunningControlPlane,
    _redis: RedisServer,
}

impl Gateway {
    async fn start() -> Gateway {
        let api = Upstream::new("api").spawn().await;
        let ports = Ports {
            plain: reserve_port(),
            optional: reserve_port(),
            required: reserve_port(),
        };
        let server_ca = TestCa::new();
        let served = server_ca.issue("gateway");
        let partners = ClientCa::new("partners-ca");
        let token_key = TestKey::p256("identity");
        let redis = RedisServer::start();
        let authz = ExtAuthz::new();
        let rls = RateLimitService::new();
        let cp = ControlPlane::new()
            .routes(routes(&ports, &api, authz.grpc_addr(), rls.grpc_addr()))
            .file("gw.pem", served.cert_pem)
            .file("gw.key", served.key_pem)
            .file("partners-ca.pem", partners.cert_pem())
            .file("keys.yaml", keys_file())
            .start()
            .await;
        let authz = authz
            .routes_file(cp.routes_path())
            .jwks(&jwt::jwks(&[&token_key]))
            .start()
            .await;
        let rls = rls
            .routes_file(cp.routes_path())
            .redis(&redis)
            .start()
            .await;
        let envoy = Envoy::new().control_plane(&cp).start().await;
        Gateway {
            ports,
            server_ca,
            partners,
            token_key,
            api,
            _envoy: envoy,
            _rls: rls,
            _authz: authz,
            _cp: cp,
            _redis: redis,
        }
    }

    fn client(&self, certificate: Option<&ClientCertificate>) -> TlsClient {
        let client = self.server_ca.client();
        match certificate {
            Some(certificate) => client.client_certificate(certificate),
            None => client,
        }
    }

    /// `GET path` on the TLS listener on `port`, presenting `certificate`.
    async fn over_tls(
        &self,
        port: u16,
        path: &str,
        certificate: Option<&ClientCertificate>,
    ) -> anyhow::Result<Response> {
        let answer = self
            .client(certificate)
            .send(&request(port).path(path))
            .await?;
        Ok(answer.response)
    }

    fn token(&self, sub: &str, tier: &str) -> String {
        let mut claims = jwt::claims();
        claims["sub"] = json!(sub);
        claims["tier"] = json!(tier);
        format!("Bearer {}", self.token_key.mint(&claims))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_names_its_consumer_and_one_without_the_field_is_forbidden() {
    let gateway = Gateway::start().await;
    let partner = gateway
        .partners
        .certificate("partner-a")
        .dns_san("partner-a.example.com")
        .issue();
    let no_san = gateway.partners.certificate("no-san").issue();
    for port in [gateway.ports.optional, gateway.ports.required] {
        let response = eventually(
            "a certificate's consumer reaches the upstream",
            async || {
                let response = gateway.over_tls(port, "/by-san/x", Some(&partner)).await?;
                response.expect_upstream("api")?;
                Ok(response)
            },
        )
        .await;
        assert_eq!(
            response.upstream_header("x-consumer-id").as_deref(),
            Some("partner-a.example.com")
        );
        let before = gateway.api.requests();
        let refused = gateway
            .over_tls(port, "/by-san/x", Some(&no_san))
            .await
            .expect("served, then refused by ext-authz");
        assert_eq!(refused.status, 403, "{}", refused.text());
        assert_eq!(
            refused.json().expect("JSON"),
            json!({"error": "forbidden", "error_description": "the client certificate has no san_dns to name its consumer"})
        );
        assert_eq!(gateway.api.requests(), before, "the upstream was reached");
    }
    // Only the optional listener serves a client without a certificate, and the route then
    // asks for one.
    let without = gateway
        .over_tls(gateway.ports.optional, "/by-san/x", None)
        .await
        .expect("an optional listener serves a client without a certificate");
    assert_eq!(without.status, 401, "{}", without.text());
    assert_eq!(
        without.header("www-authenticate"),
        Some("ClientCertificate realm=\"tollgate\"")
    );
    assert!(
        gateway
            .over_tls(gateway.ports.required, "/by-san/x", None)
            .await
            .is_err(),
        "a required listener refuses a client without a certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_spends_one_tier_budget_by_key_by_certificate_and_by_token() {
    let gateway = Gateway::start().await;
    let acme_certificate = gateway.partners.certificate("acme").issue();
    let plain = gateway.ports.plain;
    let by_key = async || {
        request(plain)
            .path("/tiered/x")
            .header("x-api-key", ACME_KEY)
            .send()
            .await
    };
    let acme_token = gateway.token("acme", "premium");
    let by_token = async || {
        request(plain)
            .path("/tiered/x")
            .header("authorization", &acme_token)
            .send()
            .await
    };
    let by_certificate = async || {
        gateway
            .over_tls(gateway.ports.optional, "/tiered/x", Some(&acme_certificate))
            .await
    };
    // Readiness without spending acme's budget: another consumer, on the same route.
    let probe = gateway.token("probe", "premium");
    eventually("the tiered route is served", async || {
        request(plain)
            .path("/tiered/probe")
            .header("authorization", &probe)
            .send()
            .await?
            .expect_upstream("api")?;
        Ok(())
    })
    .await;
    eventually("the partners listener is up", async || {
        gateway
            .over_tls(gateway.ports.optional, "/by-san/probe", None)
            .await?
            .expect_status(401)?;
        Ok(())
    })
    .await;

    // acme's premium budget (4/minute), spent by key, certificate, token and key again.
    let mut remaining = Vec::new();
    for (how, response) in [
        ("key", by_key().await),
        ("certificate", by_certificate().await),
        ("token", by_token().await),
        ("key", by_key().await),
    ] {
        let response = response.unwrap_or_else(|e| panic!("by {how}: {e:#}"));
        response
            .expect_upstream("api")
            .unwrap_or_else(|e| panic!("by {how}: {e:#}"));
        assert_eq!(
            response.upstream_header("x-consumer-id").as_deref(),
            Some("acme"),
            "by {how}"
        );
        assert_eq!(
            response.upstream_header("x-consumer-tier").as_deref(),
            Some("premium"),
            "by {how}"
        );
        let limit = response.header("x-ratelimit-limit").unwrap_or_default();
        assert!(
            limit.starts_with("4,"),
            "by {how}: x-ratelimit-limit {limit:?}"
        );
        remaining.push(response.header("x-ratelimit-remaining").map(str::to_owned));
    }
    assert_eq!(
        remaining,
        ["3", "2", "1", "0"].map(|n| Some(n.to_owned())),
        "one budget, spent by every credential"
    );
    // Spent, whichever credential acme tries next.
    for (how, response) in [
        ("key", by_key().await),
        ("certificate", by_certificate().await),
        ("token", by_token().await),
    ] {
        let response = response.unwrap_or_else(|e| panic!("by {how}: {e:#}"));
        assert_eq!(response.status, 429, "by {how}: {}", response.text());
    }
    // Another consumer's tier is its own: a free token gets 2.
    let free = gateway.token("initech", "free");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = request(plain)
            .path("/tiered/x")
            .header("authorization", &free)
            .send()
            .await
            .expect("request");
        statuses.push(response.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
}
