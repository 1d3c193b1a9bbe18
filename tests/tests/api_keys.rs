//! API keys end to end (issue 20): a real Envoy asks a real tollgate-ext-authz, which
//! hashes the key a request presents and looks it up in a keys file made with
//! `tollgate-ext-authz hash-key`. A valid key reaches the upstream as its consumer's
//! identity (and never as itself, in a header or in the URL); wrong, expired and missing
//! keys get a 401 naming the `ApiKey` scheme; the keys file is edited live; `any_of` accepts
//! a key or a token; a route's `consumers` refuses everyone else with a 403; and no key is
//! ever written to any process's logs.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use serde_json::json;
use tollgate_conformance::binaries;
use tollgate_conformance::{
    eventually, request, reserve_port, ControlPlane, Envoy, ExtAuthz, Response,
    RunningControlPlane, RunningEnvoy, RunningExtAuthz, Upstream, UpstreamHandle,
};
use tollgate_testkit::jwt::{self, jwks, TestKey};

const ISSUER: &str = "https://id.example.com";
const AUDIENCE: &str = "partners-api";

/// Keys made for this run: nothing in the repository knows them, so finding one in a log
/// can only mean the gateway wrote it there.
struct Keys {
    acme: String,
    globex: String,
    expired: String,
    wrong: String,
    added: String,
}

impl Keys {
    fn new() -> Self {
        let run = std::process::id();
        let key = |name: &str| format!("tgk_{name}_{run}_{}", jwt::now());
        Keys {
            acme: key("acme"),
            globex: key("globex"),
            expired: key("expired"),
            wrong: key("wrong"),
            added: key("added"),
        }
    }

    fn all(&self) -> [&str; 5] {
        [
            &self.acme,
            &self.globex,
            &self.expired,
            &self.wrong,
            &self.added,
        ]
    }
}

/// The keys-file entry `tollgate-ext-authz hash-key` prints for `key`.
fn hash_key(key: &str, consumer: &str, tier: &str) -> String {
    let mut child = Command::new(binaries::tollgate("tollgate-ext-authz"))
        .args(["hash-key", "--consumer", consumer, "--tier", tier])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tollgate-ext-authz hash-key");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{key}\n").as_bytes())
        .expect("write the key");
    let out = child.wait_with_output().expect("hash-key exits");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(!line.contains(key), "hash-key printed the key: {line}");
    line.trim_end().to_string()
}

/// A keys file of `entries` (each a YAML list item), with the attributes of acme's plan.
fn keys_file(entries: &[String]) -> String {
    let mut file = String::from("keys:\n");
    for entry in entries {
        file.push_str("  ");
        file.push_str(entry);
        file.push('\n');
    }
    file
}

fn routes(port: u16, upstream: &UpstreamHandle, authz: SocketAddr) -> String {
    format!(
        r#"version: 1
listeners:
  - {{name: public, address: "127.0.0.1:{port}"}}
services:
  api: {{endpoints: ["{upstream}"]}}
auth_providers:
  partner-keys:
    type: api_key
    header: x-api-key
    keys_file: keys.yaml
    forward_claims: {{tier: x-consumer-tier, plan: x-plan}}
  query-keys:
    type: api_key
    query: api_key
    keys_file: keys.yaml
  tokens:
    issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    jwks_file: jwks.json
    forward_claims: {{tier: x-consumer-tier}}
routes:
  - {{name: keys, match: {{prefix: /keys/}}, service: api, auth: {{provider: partner-keys}}}}
  - {{name: query, match: {{prefix: /query/}}, service: api, auth: {{provider: query-keys}}}}
  - {{name: either, match: {{prefix: /either/}}, service: api, auth: {{any_of: [partner-keys, tokens]}}}}
  - {{name: acme-only, match: {{prefix: /acme/}}, service: api, auth: {{provider: partner-keys, consumers: [acme]}}}}
sidecars:
  ext_authz: {{address: "{authz}", timeout: 1s}}
"#,
        upstream = upstream.endpoint(),
    )
}

struct Gateway {
    port: u16,
    upstream: UpstreamHandle,
    authz: RunningExtAuthz,
    envoy: RunningEnvoy,
    cp: RunningControlPlane,
}

impl Gateway {
    async fn start(keys: &Keys, token_key: &TestKey) -> Self {
        let upstream = Upstream::new("api").spawn().await;
        let port = reserve_port();
        // Debug logs: the most a service ever writes about a request must hold no key.
        let authz = ExtAuthz::new().log_filter("debug");
        let acme =
            hash_key(&keys.acme, "acme", "premium").replace('}', ", attributes: {plan: gold}}");
        let expired = format!(
            "{}, expires: \"2020-01-01T00:00:00Z\"}}",
            hash_key(&keys.expired, "initech", "free").trim_end_matches('}')
        );
        let file = keys_file(&[acme, hash_key(&keys.globex, "globex", "free"), expired]);
        let cp = ControlPlane::new()
            .routes(routes(port, &upstream, authz.grpc_addr()))
            .file("keys.yaml", file)
            .start()
            .await;
        let authz = authz
            .routes_file(cp.routes_path())
            .jwks(&jwks(&[token_key]))
            .start()
            .await;
        let envoy = Envoy::new().control_plane(&cp).start().await;
        let gateway = Gateway {
            port,
            upstream,
            authz,
            envoy,
            cp,
        };
        eventually("a valid key is let through", async || {
            gateway
                .with_key("/keys/ready", &keys.acme)
                .await?
                .expect_upstream("api")?;
            Ok(())
        })
        .await;
        gateway
    }

    async fn with_key(&self, path: &str, key: &str) -> anyhow::Result<Response> {
        request(self.port)
            .path(path)
            .header("x-api-key", key)
            .send()
            .await
    }

    async fn get(&self, path: &str) -> anyhow::Result<Response> {
        request(self.port).path(path).send().await
    }

    /// Every line every process of the gateway has logged so far.
    fn all_logs(&self) -> String {
        [
            self.envoy.process(),
            self.cp.process(),
            self.authz.process(),
        ]
        .iter()
        .map(|p| format!("{}\n{}", p.stdout(), p.stderr()))
        .collect()
    }
}

fn token(key: &TestKey, sub: &str) -> String {
    let now = jwt::now();
    key.mint(&json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 3600, "tier": "gold"}))
}

/// Asserts a 401 from the gateway that names the `ApiKey` scheme and `error`, and that the
/// upstream saw nothing.
fn assert_refused(
    response: &Response,
    error: Option<&str>,
    upstream_before: usize,
    gateway: &Gateway,
) {
    assert_eq!(response.status, 401, "{}", response.text());
    let challenge = response.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("ApiKey realm=\"tollgate\", header=\"x-api-key\""),
        "{challenge}"
    );
    let body = response.json().expect("a JSON body");
    match error {
        Some(error) => {
            assert!(
                challenge.contains(&format!("error=\"{error}\"")),
                "{challenge}"
            );
            assert_eq!(body["error"], error);
        }
        None => {
            assert!(!challenge.contains("error="), "{challenge}");
            assert_eq!(body["error"], "unauthorized");
        }
    }
    assert_eq!(
        gateway.upstream.requests(),
        upstream_before,
        "the upstream was reached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_admit_their_consumer_refuse_the_rest_and_never_leave_the_gateway() {
    let keys = Keys::new();
    let token_key = TestKey::rsa("rsa-1", 0);
    let mut gateway = Gateway::start(&keys, &token_key).await;

    // A valid key in its header: the consumer's identity upstream, the key removed, and a
    // client's own identity headers replaced.
    let response = request(gateway.port)
        .path("/keys/invoices")
        .header("x-api-key", &keys.acme)
        .header("x-consumer-id", "spoofed-admin")
        .header("x-consumer-tier", "spoofed-platinum")
        .send()
        .await
        .expect("request");
    response.expect_status(200).expect("admitted");
    assert_eq!(
        response.upstream_header("x-consumer-id").as_deref(),
        Some("acme")
    );
    assert_eq!(
        response.upstream_header("x-consumer-tier").as_deref(),
        Some("premium")
    );
    assert_eq!(response.upstream_header("x-plan").as_deref(), Some("gold"));
    assert_eq!(
        response.upstream_header("x-api-key"),
        None,
        "the key reached the upstream"
    );
    // A consumer without the attribute: its header is removed, not left to the client.
    let response = request(gateway.port)
        .path("/keys/x")
        .header("x-api-key", &keys.globex)
        .header("x-plan", "spoofed-gold")
        .send()
        .await
        .expect("request");
    assert_eq!(
        response.upstream_header("x-consumer-id").as_deref(),
        Some("globex")
    );
    assert_eq!(response.upstream_header("x-plan"), None);

    // In the query: admitted, and the parameter gone from the URL the upstream gets.
    let response = gateway
        .get(&format!(
            "/query/list?page=2&api_key={}&sort=asc",
            keys.globex
        ))
        .await
        .expect("request");
    response.expect_status(200).expect("admitted");
    assert_eq!(
        response.upstream_path().as_deref(),
        Some("/query/list?page=2&sort=asc")
    );
    assert_eq!(
        response.upstream_header("x-consumer-id").as_deref(),
        Some("globex")
    );
    let response = gateway
        .get(&format!("/query/list?api_key={}", keys.wrong))
        .await
        .expect("request");
    assert_eq!(response.status, 401);
    assert_eq!(
        response.header("www-authenticate"),
        Some("ApiKey realm=\"tollgate\", query=\"api_key\", error=\"invalid_key\", error_description=\"the API key is not valid\"")
    );

    // Wrong, expired, missing: 401s before the upstream.
    let before = gateway.upstream.requests();
    let wrong = gateway
        .with_key("/keys/x", &keys.wrong)
        .await
        .expect("request");
    assert_refused(&wrong, Some("invalid_key"), before, &gateway);
    assert_eq!(
        wrong.json().expect("JSON")["error_description"],
        "the API key is not valid"
    );
    let expired = gateway
        .with_key("/keys/x", &keys.expired)
        .await
        .expect("request");
    assert_refused(&expired, Some("invalid_key"), before, &gateway);
    assert_eq!(
        expired.json().expect("JSON")["error_description"],
        "the API key has expired"
    );
    let missing = gateway.get("/keys/x").await.expect("request");
    assert_refused(&missing, None, before, &gateway);
    assert_eq!(
        missing.json().expect("JSON")["error_description"],
        "an API key in the x-api-key header is required"
    );

    // any_of: a key alone, a token alone, and neither (both schemes named).
    let by_key = gateway
        .with_key("/either/x", &keys.acme)
        .await
        .expect("request");
    assert_eq!(
        by_key.upstream_header("x-consumer-id").as_deref(),
        Some("acme")
    );
    let by_token = request(gateway.port)
        .path("/either/x")
        .header(
            "authorization",
            &format!("Bearer {}", token(&token_key, "user-7")),
        )
        .send()
        .await
        .expect("request");
    by_token.expect_status(200).expect("a token is enough");
    assert_eq!(
        by_token.upstream_header("x-consumer-id").as_deref(),
        Some("user-7")
    );
    assert_eq!(
        by_token.upstream_header("x-consumer-tier").as_deref(),
        Some("gold")
    );
    // A token admits even beside a wrong key, and that key goes no further either.
    let token_and_wrong_key = request(gateway.port)
        .path("/either/x")
        .header(
            "authorization",
            &format!("Bearer {}", token(&token_key, "user-8")),
        )
        .header("x-api-key", &keys.wrong)
        .send()
        .await
        .expect("request");
    token_and_wrong_key
        .expect_status(200)
        .expect("the token admits");
    assert_eq!(
        token_and_wrong_key
            .upstream_header("x-consumer-id")
            .as_deref(),
        Some("user-8")
    );
    assert_eq!(token_and_wrong_key.upstream_header("x-api-key"), None);
    let neither = gateway.get("/either/x").await.expect("request");
    assert_eq!(neither.status, 401);
    assert_eq!(
        neither.header("www-authenticate"),
        Some("ApiKey realm=\"tollgate\", header=\"x-api-key\", Bearer realm=\"tollgate\"")
    );

    // A route that names its consumers: anyone else with a valid key is forbidden.
    gateway
        .with_key("/acme/x", &keys.acme)
        .await
        .expect("request")
        .expect_status(200)
        .expect("acme is admitted");
    let other = gateway
        .with_key("/acme/x", &keys.globex)
        .await
        .expect("request");
    assert_eq!(other.status, 403, "{}", other.text());
    assert_eq!(
        other.json().expect("JSON"),
        json!({"error": "forbidden", "error_description": "the consumer is not allowed on this route"})
    );

    // The keys file edited live: a new key works, a removed one stops working.
    let edited = keys_file(&[
        hash_key(&keys.added, "hooli", "free"),
        hash_key(&keys.globex, "globex", "free"),
    ]);
    gateway.cp.write_file("keys.yaml", edited.as_bytes());
    eventually("the added key is accepted", async || {
        let response = gateway.with_key("/keys/x", &keys.added).await?;
        response.expect_status(200)?;
        anyhow::ensure!(response.upstream_header("x-consumer-id").as_deref() == Some("hooli"));
        Ok(())
    })
    .await;
    eventually("the removed key is refused", async || {
        let response = gateway.with_key("/keys/x", &keys.acme).await?;
        response.expect_status(401)?;
        Ok(())
    })
    .await;
    // A broken edit keeps the keys that serve.
    gateway
        .cp
        .write_file("keys.yaml", b"keys:\n  - {consumer: x, key: plaintext}\n");
    eventually("the broken keys file is reported", async || {
        let logs = gateway.authz.process().stdout() + &gateway.authz.process().stderr();
        anyhow::ensure!(logs.contains("API keys not reloaded"), "not yet");
        Ok(())
    })
    .await;
    gateway
        .with_key("/keys/x", &keys.added)
        .await
        .expect("request")
        .expect_status(200)
        .expect("the last good keys still serve");

    // Every outcome counted under its provider.
    for (provider, outcome) in [
        ("partner-keys", "allowed"),
        ("partner-keys", "invalid"),
        ("partner-keys", "expired"),
        ("partner-keys", "missing"),
        ("partner-keys", "forbidden"),
        ("tokens", "allowed"),
        ("tokens", "missing"),
    ] {
        let series = format!(
            "tollgate_ext_authz_provider_checks_total{{provider=\"{provider}\",outcome=\"{outcome}\"}}"
        );
        let count = gateway.authz.metric(&series).await.expect("metrics");
        assert!(count.is_some_and(|c| c >= 1.0), "{series}: {count:?}");
    }

    // No key, valid or not, in any log line of any process.
    let logs = gateway.all_logs();
    assert!(logs.contains("/keys/"), "the access log is not in the logs");
    for key in keys.all() {
        assert!(!logs.contains(key), "a key was logged");
    }
}
