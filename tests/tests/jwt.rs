//! JWT auth end to end (issue 3): a real Envoy, configured by the control plane, asks a real
//! tollgate-ext-authz about every request on a protected route. Valid RS256, ES256 and EdDSA
//! tokens reach the upstream with the identity headers set from their claims; every kind of
//! bad token is refused with an RFC 6750 challenge before the upstream sees anything; scopes
//! are enforced per route; a rotated JWKS file takes effect without a restart; identity
//! headers sent by clients never reach an upstream; and a dead ext-authz fails closed.

use std::net::SocketAddr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};
use tollgate_conformance::{
    eventually, get, request, reserve_port, ControlPlane, Envoy, ExtAuthz, Response,
    RunningControlPlane, RunningEnvoy, RunningExtAuthz, Upstream, UpstreamHandle,
};
use tollgate_testkit::jwt::{self, b64, jwks, TestKey};

const ISSUER: &str = "https://id.example.com";
const AUDIENCE: &str = "invoices-api";

/// Who checks the tokens: every test runs against both, which must answer alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// tollgate-ext-authz, through Envoy's ext_authz filter (`enforce: ext_authz`).
    ExtAuthz,
    /// Envoy's own jwt_authn (`enforce: envoy`).
    Envoy,
}

/// `/api/` needs `invoices:read`, `/admin/` needs `invoices:admin`, `/open/` is public.
fn routes(port: u16, upstream: &UpstreamHandle, authz: SocketAddr, mode: Mode) -> String {
    let enforce = match mode {
        Mode::ExtAuthz => "ext_authz",
        Mode::Envoy => "envoy",
    };
    format!(
        r#"version: 1
listeners:
  - {{name: public, address: "127.0.0.1:{port}"}}
services:
  api: {{endpoints: ["{upstream}"]}}
auth_providers:
  main:
    issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    jwks_file: jwks.json
    algorithms: [RS256, ES256, EdDSA]
    clock_skew: 30s
    consumer_claim: sub
    forward_claims: {{tier: x-consumer-tier}}
    enforce: {enforce}
  by_header:
    {{issuer: {ISSUER}, audiences: [{AUDIENCE}], jwks_file: jwks.json, token: {{header: X-Api-Token}}, enforce: {enforce}}}
  by_cookie:
    {{issuer: {ISSUER}, audiences: [{AUDIENCE}], jwks_file: jwks.json, token: {{cookie: session}}, enforce: {enforce}}}
  by_query:
    {{issuer: {ISSUER}, audiences: [{AUDIENCE}], jwks_file: jwks.json, token: {{query: access_token}}, enforce: {enforce}}}
routes:
  - name: invoices
    match: {{prefix: /api/}}
    service: api
    auth: {{provider: main, scopes: ["invoices:read"]}}
  - name: admin
    match: {{prefix: /admin/}}
    service: api
    auth: {{provider: main, scopes: ["invoices:admin"]}}
  - {{name: open, match: {{prefix: /open/}}, service: api}}
  - {{name: by-header, match: {{prefix: /by-header/}}, service: api, auth: {{provider: by_header}}}}
  - {{name: by-cookie, match: {{prefix: /by-cookie/}}, service: api, auth: {{provider: by_cookie}}}}
  - {{name: by-query, match: {{prefix: /by-query/}}, service: api, auth: {{provider: by_query}}}}
sidecars:
  # A generous timeout: a slow answer on a loaded machine must not read as an outage.
  ext_authz: {{address: "{authz}", timeout: 1s, failure_mode_allow: false}}
"#,
        upstream = upstream.endpoint(),
    )
}

/// The keys the provider trusts at start, one per algorithm family it allows.
struct Keys {
    rsa: TestKey,
    ec: TestKey,
    ed: TestKey,
}

impl Keys {
    fn new() -> Self {
        Keys {
            rsa: TestKey::rsa("rsa-1", 0),
            ec: TestKey::p256("ec-1"),
            ed: TestKey::ed25519("ed-1"),
        }
    }

    fn jwks(&self) -> String {
        jwks(&[&self.rsa, &self.ec, &self.ed])
    }
}

/// Envoy, the control plane and ext-authz in front of one upstream.
struct Gateway {
    port: u16,
    mode: Mode,
    upstream: UpstreamHandle,
    authz: RunningExtAuthz,
    envoy: RunningEnvoy,
    _cp: RunningControlPlane,
}

impl Gateway {
    /// Starts everything with `jwks` as the provider's key set and waits until `ready`, a
    /// token that key set accepts, is let through to the upstream.
    ///
    /// ext-authz runs in both modes: with `Mode::Envoy` it must receive no call.
    async fn start(jwks: &str, ready: &str, mode: Mode) -> Self {
        let upstream = Upstream::new("api").spawn().await;
        let port = reserve_port();
        let authz = ExtAuthz::new();
        // The control plane reads the key set it hands Envoy before it serves anything.
        let cp = ControlPlane::new()
            .routes(routes(port, &upstream, authz.grpc_addr(), mode))
            .file(tollgate_conformance::ext_authz::JWKS_FILE, jwks)
            .start()
            .await;
        let authz = authz.routes_file(cp.routes_path()).jwks(jwks).start().await;
        let envoy = Envoy::new().control_plane(&cp).start().await;
        let gateway = Gateway {
            port,
            mode,
            upstream,
            authz,
            envoy,
            _cp: cp,
        };
        eventually("a valid token is let through on /api/", async || {
            gateway
                .bearer("/api/ready", ready)
                .await?
                .expect_upstream("api")?;
            Ok(())
        })
        .await;
        gateway
    }

    /// `GET path` with `Authorization: Bearer token`.
    async fn bearer(&self, path: &str, token: &str) -> anyhow::Result<Response> {
        request(self.port)
            .path(path)
            .header("authorization", &format!("Bearer {token}"))
            .send()
            .await
    }
}

/// Claims the provider accepts for `/api/`, valid for an hour.
fn claims(sub: &str) -> Value {
    let now = jwt::now();
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "iat": now,
        "exp": now + 3600,
        "scope": "invoices:read profile",
        "tier": "gold",
    })
}

/// `claims(sub)` changed by `edit`.
fn claims_with(sub: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut claims = claims(sub);
    edit(claims.as_object_mut().expect("claims are a JSON object"));
    claims
}

/// The three dot-separated parts of a compact JWS.
fn parts(token: &str) -> [&str; 3] {
    let parts: Vec<&str> = token.split('.').collect();
    parts.try_into().expect("a compact JWS has three parts")
}

/// PEM text of a DER SubjectPublicKeyInfo, what libraries confused into HMAC use as secret.
fn pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

/// Why `response` is not the refusal RFC 6750 §3 prescribes: `status`, a `Bearer`
/// challenge carrying `error` (or no error code at all when `error` is `None`, §3.1), and
/// a JSON body.
fn refusal_problem(response: &Response, status: u16, error: Option<&str>) -> Option<String> {
    let summary = || {
        let body: String = response.text().chars().take(300).collect();
        format!(
            "{} www-authenticate={:?} body={body:?}",
            response.status,
            response.header("www-authenticate"),
        )
    };
    if response.status != status {
        return Some(format!("expected status {status}, got {}", summary()));
    }
    let Some(challenge) = response.header("www-authenticate") else {
        return Some(format!("no www-authenticate: {}", summary()));
    };
    if !challenge.starts_with("Bearer") {
        return Some(format!("not a Bearer challenge: {}", summary()));
    }
    match error {
        Some(error) if !challenge.contains(&format!("error=\"{error}\"")) => {
            return Some(format!("challenge lacks error=\"{error}\": {}", summary()));
        }
        None if challenge.contains("error=") => {
            return Some(format!(
                "a request without credentials must get no error code: {}",
                summary()
            ));
        }
        _ => {}
    }
    if !response
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json"))
    {
        return Some(format!("content-type is not JSON: {}", summary()));
    }
    let body = match response.json() {
        Ok(body) => body,
        Err(e) => return Some(format!("{e:#}")),
    };
    if !body["error"].is_string() || error.is_some_and(|error| body["error"] != error) {
        return Some(format!(
            "body error is not {:?}: {}",
            error.unwrap_or("a string"),
            summary()
        ));
    }
    None
}

/// Panics with `what` unless `response` is the refusal described in [`refusal_problem`].
fn assert_refused(what: &str, response: &Response, status: u16, error: Option<&str>) {
    if let Some(problem) = refusal_problem(response, status, error) {
        panic!("{what}: {problem}");
    }
}

async fn valid_rs256_es256_and_eddsa_tokens_reach_the_upstream_as_their_subject(mode: Mode) {
    let keys = Keys::new();
    let ready = keys.rsa.mint(&claims("warm-up"));
    let gateway = Gateway::start(&keys.jwks(), &ready, mode).await;

    for (key, tier) in [
        (&keys.rsa, "gold"),
        (&keys.ec, "silver"),
        (&keys.ed, "bronze"),
    ] {
        let sub = format!("user-{}", key.alg.to_lowercase());
        let token = key.mint(&claims_with(&sub, |c| {
            c.insert("tier".into(), json!(tier));
        }));
        let response = gateway
            .bearer("/api/invoices", &token)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", key.alg));
        response
            .expect_upstream("api")
            .unwrap_or_else(|e| panic!("{}: {e:#}", key.alg));
        assert_eq!(
            response.upstream_header("x-consumer-id").as_deref(),
            Some(sub.as_str()),
            "{}: the upstream is told who the consumer is",
            key.alg
        );
        assert_eq!(
            response.upstream_header("x-consumer-tier").as_deref(),
            Some(tier),
            "{}: forward_claims puts the tier claim in x-consumer-tier",
            key.alg
        );
    }
    let checks = gateway
        .authz
        .metric("tollgate_ext_authz_check_duration_seconds_count")
        .await
        .expect("ext-authz metrics");
    match mode {
        Mode::ExtAuthz => assert!(checks.is_some_and(|n| n >= 4.0), "{checks:?}"),
        Mode::Envoy => assert_eq!(checks, Some(0.0), "Envoy checked every token itself"),
    }
}

/// The tests both modes must pass alike, each as `ext_authz::NAME` and `envoy::NAME`.
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {
        mod ext_authz {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Mode::ExtAuthz).await
                }
            )*
        }
        mod envoy {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Mode::Envoy).await
                }
            )*
        }
    };
}

in_both_modes!(
    valid_rs256_es256_and_eddsa_tokens_reach_the_upstream_as_their_subject,
    bad_or_missing_tokens_get_401_with_a_bearer_challenge_and_never_reach_the_upstream,
    tokens_are_found_in_a_custom_header_a_cookie_or_the_query,
    a_valid_token_without_the_routes_scope_gets_403_insufficient_scope,
    a_rotated_jwks_file_is_picked_up_without_a_restart,
    identity_headers_sent_by_the_client_never_reach_the_upstream,
    the_clock_skew_is_allowed_on_exp_and_nbf_and_no_more,
);

/// `clock_skew: 30s`: a token that expired, or becomes valid, 10 s away is accepted; 90 s
/// away it is refused. (The margins keep a slow machine's seconds out of the verdict.)
async fn the_clock_skew_is_allowed_on_exp_and_nbf_and_no_more(mode: Mode) {
    let keys = Keys::new();
    let valid = keys.rsa.mint(&claims("user-1"));
    let gateway = Gateway::start(&keys.jwks(), &valid, mode).await;
    let now = jwt::now();
    let token = |edit: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        keys.ec.mint(&claims_with("user-1", |c| edit(c)))
    };
    let expired_within = token(&|c| {
        c.insert("iat".into(), json!(now - 600));
        c.insert("exp".into(), json!(now - 10));
    });
    let valid_soon_within = token(&|c| {
        c.insert("nbf".into(), json!(now + 10));
    });
    for (what, token) in [
        ("expired 10 s ago", &expired_within),
        ("valid in 10 s", &valid_soon_within),
    ] {
        gateway
            .bearer("/api/x", token)
            .await
            .expect("request")
            .expect_upstream("api")
            .unwrap_or_else(|e| panic!("{what}, within the skew: {e:#}"));
    }
    let expired_beyond = token(&|c| {
        c.insert("iat".into(), json!(now - 600));
        c.insert("exp".into(), json!(now - 90));
    });
    let valid_later = token(&|c| {
        c.insert("nbf".into(), json!(now + 90));
    });
    for (what, token) in [
        ("expired 90 s ago", &expired_beyond),
        ("valid in 90 s", &valid_later),
    ] {
        assert_refused(
            what,
            &gateway.bearer("/api/x", token).await.expect("request"),
            401,
            Some("invalid_token"),
        );
    }
}

async fn bad_or_missing_tokens_get_401_with_a_bearer_challenge_and_never_reach_the_upstream(
    mode: Mode,
) {
    let keys = Keys::new();
    let valid = keys.rsa.mint(&claims("user-1"));
    let gateway = Gateway::start(&keys.jwks(), &valid, mode).await;
    let cases = bad_token_cases(&keys, &valid);
    let mut failures = Vec::new();
    for case in &cases {
        let problems = case.problems(&gateway).await;
        if !problems.is_empty() {
            failures.push(format!("{}: {}", case.name, problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases were not refused as they should be:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // The same gateway still lets a good token through: the refusals were about the tokens.
    gateway
        .bearer("/api/invoices", &valid)
        .await
        .expect("request")
        .expect_upstream("api")
        .expect("the valid token still passes");
}

/// Every way a request's token can be wrong, each refused with 401: `keys` are the
/// provider's, `valid` a token it accepts (from `keys.rsa`).
fn bad_token_cases(keys: &Keys, valid: &str) -> Vec<Case> {
    let now = jwt::now();
    let [header, payload, signature] = parts(valid);

    let tampered_payload = {
        let forged = claims_with("admin", |_| {});
        format!(
            "{header}.{}.{signature}",
            b64(forged.to_string().as_bytes())
        )
    };
    let tampered_signature = {
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .expect("the signature is base64url");
        let last = bytes.last_mut().expect("a non-empty signature");
        *last ^= 0x01;
        format!("{header}.{payload}.{}", b64(&bytes))
    };
    let alg_none = format!(
        "{}.{payload}.",
        b64(json!({"alg": "none", "kid": "rsa-1", "typ": "JWT"})
            .to_string()
            .as_bytes())
    );
    // RFC 8725 §2.1: an HMAC "verified" with the RSA public key the attacker also knows.
    let confused_header = json!({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"});
    let public_der = TestKey::rsa_public_der(0);
    let hs256_der = TestKey::hmac(&public_der).mint_with(&confused_header, &claims("user-1"));
    let hs256_pem =
        TestKey::hmac(pem(&public_der).as_bytes()).mint_with(&confused_header, &claims("user-1"));
    let oversized = keys.rsa.mint(&claims_with("user-1", |c| {
        c.insert("padding".into(), json!("x".repeat(9 * 1024)));
    }));
    assert!(oversized.len() > 8 * 1024, "the oversized token is > 8 KiB");

    let invalid = [
        (
            "expired",
            keys.rsa.mint(&claims_with("user-1", |c| {
                c.insert("iat".into(), json!(now - 7200));
                c.insert("exp".into(), json!(now - 3600));
            })),
            "expired",
        ),
        (
            "not yet valid",
            keys.ec.mint(&claims_with("user-1", |c| {
                c.insert("nbf".into(), json!(now + 3600));
            })),
            "not_yet_valid",
        ),
        (
            "wrong issuer",
            keys.ed.mint(&claims_with("user-1", |c| {
                c.insert("iss".into(), json!("https://evil.example.com"));
            })),
            "issuer",
        ),
        (
            "wrong audience",
            keys.rsa.mint(&claims_with("user-1", |c| {
                c.insert("aud".into(), json!("another-api"));
            })),
            "audience",
        ),
        (
            "unknown kid",
            TestKey::p256("not-in-the-jwks").mint(&claims("user-1")),
            "unknown_kid",
        ),
        (
            "another key under a trusted kid",
            TestKey::rsa("rsa-1", 1).mint(&claims("user-1")),
            "signature",
        ),
        ("tampered payload", tampered_payload, "signature"),
        ("tampered signature", tampered_signature, "signature"),
        ("alg none", alg_none, "algorithm"),
        (
            "HS256 keyed with the RSA public key (DER)",
            hs256_der,
            "algorithm",
        ),
        (
            "HS256 keyed with the RSA public key (PEM)",
            hs256_pem,
            "algorithm",
        ),
        (
            "missing exp",
            keys.ec.mint(&claims_with("user-1", |c| {
                c.remove("exp");
            })),
            // Reported with the expired ones: either way the token has no valid lifetime.
            "expired",
        ),
        (
            "malformed base64 in the header",
            format!("{}*{}.{payload}.{signature}", &header[..4], &header[4..]),
            "malformed",
        ),
        (
            "malformed base64 in the signature",
            format!("{header}.{payload}.{signature}*"),
            "malformed",
        ),
        ("three-part garbage", "abc.def.ghi".to_owned(), "malformed"),
        ("oversized (> 8 KiB)", oversized, "too_large"),
    ];
    let mut cases: Vec<Case> = invalid
        .into_iter()
        .map(|(name, token, reason)| Case {
            name,
            authorization: Some(format!("Bearer {token}")),
            error: Some("invalid_token"),
            reason,
        })
        .collect();
    // RFC 6750 §3.1: no credentials at all, or credentials of another scheme, get a bare
    // challenge without an error code.
    cases.push(Case {
        name: "no authorization header",
        authorization: None,
        error: None,
        reason: "missing_token",
    });
    cases.push(Case {
        name: "basic credentials",
        authorization: Some("Basic dXNlcjpwYXNz".to_owned()),
        error: None,
        reason: "missing_token",
    });

    cases
}

/// One request that must be refused with 401.
struct Case {
    name: &'static str,
    authorization: Option<String>,
    /// The RFC 6750 error code in the challenge and body; `None` for no credentials.
    error: Option<&'static str>,
    /// ext-authz's metric label for the refusal, which proves the token was refused for the
    /// reason this case is about and not for an accident of how it was built.
    reason: &'static str,
}

impl Case {
    /// Sends the request; returns everything wrong with the outcome.
    async fn problems(&self, gateway: &Gateway) -> Vec<String> {
        let series = format!(
            "tollgate_ext_authz_checks_total{{result=\"denied\",reason=\"{}\"}}",
            self.reason
        );
        // Who refused, and (ext-authz) why. Envoy counts denials, not reasons: those of
        // jwt_authn and of the RBAC filters for what it cannot check (a missing exp, a token
        // over 8 KiB).
        let counted = async || -> anyhow::Result<f64> {
            match gateway.mode {
                Mode::ExtAuthz => Ok(gateway.authz.metric(&series).await?.unwrap_or(0.0)),
                Mode::Envoy => {
                    let stats = gateway.envoy.stats("denied").await?;
                    Ok(stats
                        .iter()
                        .filter(|(name, _)| {
                            name.ends_with(".jwt_authn.denied") || name.ends_with(".rbac.denied")
                        })
                        .map(|(_, n)| *n as f64)
                        .sum())
                }
            }
        };
        let mut problems = Vec::new();
        let upstream_before = gateway.upstream.requests();
        let denials_before = counted().await;
        let mut builder = request(gateway.port).path("/api/invoices");
        if let Some(value) = &self.authorization {
            builder = builder.header("authorization", value);
        }
        match builder.send().await {
            Err(e) => problems.push(format!("{e:#}")),
            Ok(response) => problems.extend(refusal_problem(&response, 401, self.error)),
        }
        if gateway.upstream.requests() != upstream_before {
            problems.push("the request reached the upstream".to_owned());
        }
        match (denials_before, counted().await) {
            (Ok(before), Ok(after)) if after == before + 1.0 => {}
            (Ok(before), Ok(after)) => problems.push(format!(
                "{:?} did not count one denial (reason {:?}): {before} -> {after}",
                gateway.mode, self.reason
            )),
            (Err(e), _) | (_, Err(e)) => problems.push(format!("reading metrics: {e:#}")),
        }
        problems
    }
}

/// Envoy sends ext-authz only the headers a check reads (`allowed_headers`): a token in a
/// custom header, a cookie among others, or a query parameter must still reach it, and a
/// token in the wrong place must not count.
async fn tokens_are_found_in_a_custom_header_a_cookie_or_the_query(mode: Mode) {
    let keys = Keys::new();
    let ready = keys.rsa.mint(&claims("warm-up"));
    let gateway = Gateway::start(&keys.jwks(), &ready, mode).await;
    let token = keys.ec.mint(&claims("carol"));
    let get = async |path: &str, header: Option<(&str, String)>| {
        let mut call = request(gateway.port).path(path);
        if let Some((name, value)) = &header {
            call = call.header(name, value);
        }
        call.send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
    };
    let allowed = [
        (
            "/by-header/x",
            Some(("x-api-token", format!("Bearer {token}"))),
        ),
        (
            "/by-cookie/x",
            Some(("cookie", format!("theme=dark; session={token}; lang=en"))),
        ),
        (&format!("/by-query/x?page=2&access_token={token}"), None),
    ];
    for (path, header) in allowed {
        let response = get(path, header).await;
        response
            .expect_upstream("api")
            .unwrap_or_else(|e| panic!("{path}: {e:#}"));
        assert_eq!(
            response.upstream_header("x-consumer-id").as_deref(),
            Some("carol"),
            "{path}"
        );
    }
    let bearer = Some(("authorization", format!("Bearer {token}")));
    for path in ["/by-header/x", "/by-cookie/x", "/by-query/x"] {
        let response = get(path, bearer.clone()).await;
        assert_refused(
            &format!("{path} with the token in Authorization"),
            &response,
            401,
            None,
        );
    }
    let reached = gateway
        .upstream
        .paths()
        .into_iter()
        .filter(|p| p.starts_with("/by-"))
        .count();
    assert_eq!(
        reached, 3,
        "only the three requests with the token in its place reach the upstream"
    );
}

async fn a_valid_token_without_the_routes_scope_gets_403_insufficient_scope(mode: Mode) {
    let keys = Keys::new();
    let reader = keys.rsa.mint(&claims("reader"));
    let gateway = Gateway::start(&keys.jwks(), &reader, mode).await;

    let before = gateway.upstream.requests();
    let response = gateway
        .bearer("/admin/invoices", &reader)
        .await
        .expect("request");
    assert_refused(
        "invoices:read on an invoices:admin route",
        &response,
        403,
        Some("insufficient_scope"),
    );
    assert_eq!(
        gateway.upstream.requests(),
        before,
        "the refused request reached the upstream"
    );

    let admin = keys.ed.mint(&claims_with("admin", |c| {
        c.insert("scope".into(), json!("invoices:read invoices:admin"));
    }));
    let response = gateway
        .bearer("/admin/invoices", &admin)
        .await
        .expect("request");
    response
        .expect_upstream("api")
        .expect("a token with the scope is let through");
    assert_eq!(
        response.upstream_header("x-consumer-id").as_deref(),
        Some("admin")
    );
}

async fn a_rotated_jwks_file_is_picked_up_without_a_restart(mode: Mode) {
    let old = TestKey::rsa("rsa-old", 0);
    let kept = TestKey::p256("ec-kept");
    let new = TestKey::ed25519("ed-new");
    let old_token = old.mint(&claims("old-user"));
    let kept_token = kept.mint(&claims("kept-user"));
    let new_token = new.mint(&claims("new-user"));
    let mut gateway = Gateway::start(&jwks(&[&old, &kept]), &old_token, mode).await;
    let pid = gateway.authz.process().pid();

    // Before the rotation the new key is unknown; the old token passed (and is cached).
    assert_refused(
        "a token from the not-yet-published key",
        &gateway.bearer("/api/x", &new_token).await.expect("request"),
        401,
        Some("invalid_token"),
    );

    gateway.authz.write_jwks(&jwks(&[&kept, &new]));

    eventually(
        "the new key is trusted and the removed one is not",
        async || {
            gateway
                .bearer("/api/x", &new_token)
                .await?
                .expect_upstream("api")?;
            let response = gateway.bearer("/api/x", &old_token).await?;
            if let Some(problem) = refusal_problem(&response, 401, Some("invalid_token")) {
                anyhow::bail!("the token of the removed key: {problem}");
            }
            Ok(())
        },
    )
    .await;
    gateway
        .bearer("/api/x", &kept_token)
        .await
        .expect("request")
        .expect_upstream("api")
        .expect("a key present in both sets keeps working");
    assert_eq!(
        gateway.authz.process().pid(),
        pid,
        "the rotation was picked up by the running process"
    );
}

async fn identity_headers_sent_by_the_client_never_reach_the_upstream(mode: Mode) {
    let keys = Keys::new();
    let token = keys.rsa.mint(&claims("user-1"));
    let gateway = Gateway::start(&keys.jwks(), &token, mode).await;
    let spoof = async |path: &str, token: Option<&str>| {
        let mut builder = request(gateway.port)
            .path(path)
            .header("x-consumer-id", "spoofed-admin")
            .header("x-consumer-tier", "spoofed-platinum");
        if let Some(token) = token {
            builder = builder.header("authorization", &format!("Bearer {token}"));
        }
        let response = builder.send().await.expect("request");
        response
            .expect_upstream("api")
            .unwrap_or_else(|e| panic!("{path}: {e:#}"));
        (
            response.upstream_header("x-consumer-id"),
            response.upstream_header("x-consumer-tier"),
        )
    };

    assert_eq!(
        spoof("/open/x", None).await,
        (None, None),
        "a public route passes no identity upstream"
    );
    assert_eq!(
        spoof("/api/x", Some(&token)).await,
        (Some("user-1".to_owned()), Some("gold".to_owned())),
        "a protected route passes the token's identity, not the client's"
    );
    let no_tier = keys.ec.mint(&claims_with("user-2", |c| {
        c.remove("tier");
    }));
    assert_eq!(
        spoof("/api/x", Some(&no_tier)).await,
        (Some("user-2".to_owned()), None),
        "a claim the token lacks is not filled in from the client's header"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_routes_fail_closed_while_ext_authz_is_down() {
    let keys = Keys::new();
    let token = keys.rsa.mint(&claims("user-1"));
    let mut gateway = Gateway::start(&keys.jwks(), &token, Mode::ExtAuthz).await;

    gateway.authz.kill();
    let before = gateway.upstream.requests();
    let response = gateway.bearer("/api/x", &token).await.expect("request");
    assert_eq!(
        response.status,
        503,
        "a valid token cannot be checked, so it is refused: {}",
        response.text()
    );
    assert!(
        response
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        response.headers
    );
    let body = response.json().expect("a JSON body");
    assert_eq!(body["error"], "service unavailable", "{body}");
    assert_eq!(
        gateway.upstream.requests(),
        before,
        "nothing reaches the upstream unchecked"
    );
    get(gateway.port, "/open/x")
        .await
        .expect("request")
        .expect_upstream("api")
        .expect("public routes do not depend on ext-authz");

    gateway.authz.restart().await;
    eventually("the protected route recovers with ext-authz", async || {
        gateway
            .bearer("/api/x", &token)
            .await?
            .expect_upstream("api")?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_envoy_enforces_keep_working_with_ext_authz_stopped() {
    let keys = Keys::new();
    let token = keys.rsa.mint(&claims("user-1"));
    let mut gateway = Gateway::start(&keys.jwks(), &token, Mode::Envoy).await;

    gateway.authz.kill();
    gateway
        .bearer("/api/x", &token)
        .await
        .expect("request")
        .expect_upstream("api")
        .expect("Envoy checks the token itself: ext-authz is not on the path");
    assert_refused(
        "no token, ext-authz stopped",
        &get(gateway.port, "/api/x").await.expect("request"),
        401,
        None,
    );
}

/// What a client can tell of a refusal: its status, the headers ext-authz sets and the body
/// (not the date or the request id).
fn refusal_as_seen(response: &Response) -> String {
    let header = |name| response.header(name).unwrap_or("(none)");
    format!(
        "{} | www-authenticate: {} | content-type: {} | cache-control: {} | {}",
        response.status,
        header("www-authenticate"),
        header("content-type"),
        header("cache-control"),
        response.text()
    )
}

/// The same without the free-text descriptions.
fn without_descriptions(seen: &str) -> String {
    let description = regex::Regex::new(r#"error_description(=|":)"[^"]*""#).expect("regex");
    description
        .replace_all(seen, "error_description")
        .into_owned()
}

/// Refusals whose description differs between the modes, and why. Both still answer 401
/// `invalid_token` with the same headers.
const DESCRIBED_DIFFERENTLY: [(&str, &str); 3] = [
    // Envoy's JWT library refuses the empty signature before it reads `alg`: "the token is
    // not a well-formed JWT" rather than "...algorithm is not supported".
    ("alg none", "jwt_authn reads the signature first"),
    // jwt_authn finds no HMAC key for the RSA key id and fails the signature, before the
    // algorithm allow-list (an RBAC filter after it) could say "...not allowed".
    (
        "HS256 keyed with the RSA public key (DER)",
        "jwt_authn checks the signature first",
    ),
    (
        "HS256 keyed with the RSA public key (PEM)",
        "jwt_authn checks the signature first",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_modes_refuse_every_bad_token_with_the_same_bytes() {
    let keys = Keys::new();
    let valid = keys.rsa.mint(&claims("user-1"));
    let by_authz = Gateway::start(&keys.jwks(), &valid, Mode::ExtAuthz).await;
    let by_envoy = Gateway::start(&keys.jwks(), &valid, Mode::Envoy).await;

    let mut requests: Vec<(String, &str, Option<String>)> = bad_token_cases(&keys, &valid)
        .into_iter()
        .map(|case| (case.name.to_owned(), "/api/invoices", case.authorization))
        .collect();
    requests.push((
        "a valid token without the route's scope".to_owned(),
        "/admin/invoices",
        Some(format!("Bearer {valid}")),
    ));
    let mut differences = Vec::new();
    let mut compared = 0;
    for (name, path, authorization) in &requests {
        let send = async |gateway: &Gateway| {
            let mut builder = request(gateway.port).path(path);
            if let Some(value) = authorization {
                builder = builder.header("authorization", value);
            }
            refusal_as_seen(&builder.send().await.expect("request"))
        };
        let (authz, envoy) = (send(&by_authz).await, send(&by_envoy).await);
        let accepted = DESCRIBED_DIFFERENTLY.iter().any(|(case, _)| case == name);
        let same = if accepted {
            without_descriptions(&authz) == without_descriptions(&envoy)
        } else {
            authz == envoy
        };
        if !same {
            differences.push(format!(
                "{name}:\n  ext_authz: {authz}\n  envoy:     {envoy}"
            ));
        }
        compared += 1;
    }
    assert!(compared >= 18, "only {compared} refusals compared");
    assert!(
        differences.is_empty(),
        "{} of {compared} refusals differ between the modes:\n{}",
        differences.len(),
        differences.join("\n")
    );
}

/// `enforce: envoy` with keys from a `jwks_uri`: the control plane fetches the set and hands
/// it to Envoy, fetches it again every interval (1 s here) and pushes a rotation, keeps the
/// last set while the URL fails, and no ext-authz runs at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_jwks_uri_reach_envoy_through_the_control_plane_and_rotate() {
    let old = TestKey::rsa("rsa-old", 0);
    let new = TestKey::p256("ec-new");
    let server = tollgate_testkit::jwt::JwksServer::start(jwks(&[&old])).await;
    let upstream = Upstream::new("api").spawn().await;
    let port = reserve_port();
    let cp = ControlPlane::new()
        .routes(format!(
            r#"version: 1
listeners:
  - {{name: public, address: "127.0.0.1:{port}"}}
services:
  api: {{endpoints: ["{upstream}"]}}
auth_providers:
  remote: {{issuer: {ISSUER}, audiences: [{AUDIENCE}], jwks_uri: "{uri}", enforce: envoy}}
  silent: {{issuer: {ISSUER}, audiences: [{AUDIENCE}], jwks_uri: "http://{silent}/jwks", enforce: envoy}}
routes:
  - {{name: api, match: {{prefix: /api/}}, service: api, auth: {{provider: remote}}}}
  - {{name: silent, match: {{prefix: /silent/}}, service: api, auth: {{provider: silent}}}}
"#,
            silent = tollgate_testkit::ports::reserve_addr(),
            upstream = upstream.endpoint(),
            uri = server.uri(),
        ))
        .jwks_refresh_interval("1s")
        .start()
        .await;
    let _envoy = Envoy::new().control_plane(&cp).start().await;
    let bearer = async |token: &str| {
        request(port)
            .path("/api/x")
            .header("authorization", &format!("Bearer {token}"))
            .send()
            .await
    };
    let old_token = old.mint(&claims("old-user"));
    let new_token = new.mint(&claims("new-user"));
    eventually("a token of the fetched key is let through", async || {
        bearer(&old_token).await?.expect_upstream("api")?;
        Ok(())
    })
    .await;
    assert_refused(
        "a token of a key not published yet",
        &bearer(&new_token).await.expect("request"),
        401,
        Some("invalid_token"),
    );
    // A provider whose URL never answered has no usable key (and, served with the same
    // listener, did not make Envoy refuse the configuration the route above answers from).
    assert_refused(
        "a token for a provider whose keys were never fetched",
        &request(port)
            .path("/silent/x")
            .header("authorization", &format!("Bearer {old_token}"))
            .send()
            .await
            .expect("request"),
        401,
        Some("invalid_token"),
    );

    server.set(200, jwks(&[&new]));
    eventually("the rotation reaches Envoy", async || {
        bearer(&new_token).await?.expect_upstream("api")?;
        let response = bearer(&old_token).await?;
        if let Some(problem) = refusal_problem(&response, 401, Some("invalid_token")) {
            anyhow::bail!("the token of the removed key: {problem}");
        }
        Ok(())
    })
    .await;

    // The URL fails: Envoy keeps the last set fetched.
    server.set(503, String::new());
    let hits = server.hits();
    eventually("two more fetches, both failed", async || {
        anyhow::ensure!(server.hits() >= hits + 2, "{} fetches", server.hits());
        Ok(())
    })
    .await;
    bearer(&new_token)
        .await
        .expect("request")
        .expect_upstream("api")
        .expect("the last key set fetched still holds");
}
