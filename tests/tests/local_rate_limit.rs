//! Local rate limits through a real Envoy (issue 23, first increment): a rule with `mode:
//! local` is enforced by Envoy's own token buckets, per client address, per consumer (after
//! ext-authz) and per tier (a missing or unknown tier getting the strictest), answers
//! exactly like a global limit (429, the gateway's JSON body,
//! `retry-after`, `x-ratelimit-*`), and on a route that also has a global rule refuses
//! without a call to the rate-limit service.
//!
//! Every limit here is per hour: a local bucket refills continuously, one request every
//! `per / requests` (12 minutes for 5 per hour), so no burst in these tests outlasts the
//! refill of even one token, however busy the machine.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use tollgate_conformance::http::{RequestBuilder, Response};
use tollgate_conformance::ratelimit::{RateLimitService, RunningRateLimitService};
use tollgate_conformance::{
    eventually, get, request, reserve_port, ControlPlane, Envoy, ExtAuthz, RunningControlPlane,
    RunningEnvoy, RunningExtAuthz, Upstream, UpstreamHandle,
};
use tollgate_testkit::jwt::{self, TestKey};

/// Requests sent past the budget in each burst.
const EXTRA: usize = 3;

/// One gateway: Envoy, the control plane, ext-authz and the rate-limit service, with a
/// route per scenario, each with its own upstream so that a test counts what got through.
struct Gateway {
    port: u16,
    local: UpstreamHandle,
    global: UpstreamHandle,
    consumer: UpstreamHandle,
    mixed: UpstreamHandle,
    key: TestKey,
    envoy: RunningEnvoy,
    rls: RunningRateLimitService,
    _authz: RunningExtAuthz,
    _cp: RunningControlPlane,
}

impl Gateway {
    async fn start() -> Gateway {
        let local = Upstream::new("local").spawn().await;
        let global = Upstream::new("global").spawn().await;
        let consumer = Upstream::new("consumer").spawn().await;
        let mixed = Upstream::new("mixed").spawn().await;
        let open = Upstream::new("open").spawn().await;
        let port = reserve_port();
        let authz = ExtAuthz::new();
        let rls = RateLimitService::new();
        let cp = ControlPlane::new()
            .routes(format!(
                r#"version: 1
listeners:
  - {{name: public, address: "127.0.0.1:{port}"}}
services:
  local: {{endpoints: ["{local}"]}}
  global: {{endpoints: ["{global}"]}}
  consumer: {{endpoints: ["{consumer}"]}}
  mixed: {{endpoints: ["{mixed}"]}}
  open: {{endpoints: ["{open}"]}}
auth_providers:
  idp:
    issuer: {issuer}
    audiences: [{audience}]
    jwks_file: jwks.json
    forward_claims: {{tier: x-consumer-tier}}
routes:
  - name: local
    match: {{prefix: /local/}}
    service: local
    rate_limit:
      - {{by: client_ip, requests: 5, per: hour, mode: local}}
  - name: global
    match: {{prefix: /global/}}
    service: global
    rate_limit:
      - {{by: client_ip, requests: 5, per: hour, algorithm: token_bucket}}
  - name: per-consumer
    match: {{prefix: /consumer/}}
    service: consumer
    auth: {{provider: idp}}
    rate_limit:
      - {{by: consumer, requests: 3, per: hour, mode: local}}
  - name: tiered
    match: {{prefix: /tiered/}}
    service: consumer
    auth: {{provider: idp}}
    rate_limit:
      - {{by: consumer, tier_header: x-consumer-tier, tiers: {{free: 2/hour, premium: 4/hour}}, mode: local}}
  - name: mixed
    match: {{prefix: /mixed/}}
    service: mixed
    rate_limit:
      - {{by: client_ip, requests: 3, per: hour, mode: local}}
      - {{by: client_ip, name: generous, requests: 100, per: hour}}
  - {{name: open, match: {{prefix: /open/}}, service: open}}
sidecars:
  ext_authz: {{address: "{authz}", timeout: 2s}}
  rate_limit: {{address: "{rls}", timeout: 2s, failure_mode_deny: false, domain: tollgate}}
"#,
                local = local.endpoint(),
                global = global.endpoint(),
                consumer = consumer.endpoint(),
                mixed = mixed.endpoint(),
                open = open.endpoint(),
                issuer = jwt::ISSUER,
                audience = jwt::AUDIENCE,
                authz = authz.grpc_addr(),
                rls = rls.grpc_addr(),
            ))
            .start()
            .await;
        let key = TestKey::p256("local-rate-limit-test");
        let authz = authz
            .routes_file(cp.routes_path())
            .jwks(&jwt::jwks(&[&key]))
            .start()
            .await;
        let rls = rls.routes_file(cp.routes_path()).start().await;
        let envoy = Envoy::new().control_plane(&cp).start().await;
        // The open route is in the same route configuration as the limited ones (one that
        // Envoy refused would serve none of them); probing it spends no budget.
        eventually("the routes are served", async || {
            get(port, "/open/probe").await?.expect_upstream("open")?;
            Ok(())
        })
        .await;
        Gateway {
            port,
            local,
            global,
            consumer,
            mixed,
            key,
            envoy,
            rls,
            _authz: authz,
            _cp: cp,
        }
    }

    fn token(&self, sub: &str) -> String {
        self.tiered_token(sub, None)
    }

    fn tiered_token(&self, sub: &str, tier: Option<&str>) -> String {
        let mut claims = jwt::claims();
        claims["sub"] = json!(sub);
        if let Some(tier) = tier {
            claims["tier"] = json!(tier);
        }
        format!("Bearer {}", self.key.mint(&claims))
    }

    /// Calls Envoy's ratelimit filter made to the rate-limit service, summed over their
    /// outcomes (counted under each route's upstream cluster, `cluster.<service>.ratelimit.*`).
    async fn rate_limit_calls(&self) -> u64 {
        envoy_counters(&self.envoy, "ratelimit")
            .await
            .iter()
            .filter(|(name, _)| {
                name.starts_with("cluster.")
                    && name.contains(".ratelimit.")
                    && [".ok", ".over_limit", ".error", ".failure_mode_allowed"]
                        .iter()
                        .any(|outcome| name.ends_with(outcome))
            })
            .map(|(_, value)| value)
            .sum()
    }

    /// Requests the local_ratelimit filter refused on `route`.
    async fn refused_locally(&self, route: &str) -> u64 {
        let name = format!("tollgate_local.{route}.http_local_rate_limit.rate_limited");
        envoy_counters(&self.envoy, "http_local_rate_limit")
            .await
            .iter()
            .find(|(stat, _)| *stat == name)
            .map_or(0, |(_, value)| *value)
    }
}

/// Sends `count` requests one after another and returns the responses.
async fn burst(count: usize, build: impl Fn(usize) -> RequestBuilder) -> Vec<Response> {
    let mut responses = Vec::with_capacity(count);
    for i in 0..count {
        responses.push(
            build(i)
                .send()
                .await
                .unwrap_or_else(|e| panic!("request {i} of a burst: {e:#}")),
        );
    }
    responses
}

/// What a client can tell from a refusal, with what varies per request (the request id,
/// the date, the seconds to wait) left out: status, the header names, the JSON body's
/// fields and error, the announced limit and the remaining count.
#[derive(Debug, PartialEq)]
struct RefusalShape {
    status: u16,
    headers: BTreeSet<String>,
    body: Value,
    limit: Option<u64>,
    remaining: Option<String>,
}

fn refusal_shape(response: &Response) -> RefusalShape {
    let mut body = response
        .json()
        .unwrap_or_else(|e| panic!("a refusal's body is JSON: {e:#}\nbody: {}", response.text()));
    if let Some(id) = body.get_mut("request_id") {
        assert!(id.as_str().is_some_and(|id| !id.is_empty()), "{body}");
        *id = json!("<request id>");
    }
    RefusalShape {
        status: response.status.as_u16(),
        headers: response
            .headers
            .keys()
            .map(|name| name.as_str().to_string())
            .filter(|name| !["date", "content-length"].contains(&name.as_str()))
            .collect(),
        body,
        limit: response
            .header("x-ratelimit-limit")
            .and_then(|h| h.split(',').next())
            .and_then(|n| n.trim().parse().ok()),
        remaining: response.header("x-ratelimit-remaining").map(str::to_string),
    }
}

/// Asserts that the first `budget` responses reached `upstream` and the others were refused,
/// each refusal with one `retry-after` of at least a second; returns the refusals.
fn assert_budget<'a>(
    what: &str,
    responses: &'a [Response],
    budget: usize,
    upstream: &str,
) -> Vec<&'a Response> {
    for (i, response) in responses.iter().enumerate() {
        let context = || {
            format!(
                "{what}: request {} got {}\nheaders: {:?}\nbody: {}",
                i + 1,
                response.status,
                response.headers,
                response.text()
            )
        };
        if i < budget {
            response
                .expect_upstream(upstream)
                .unwrap_or_else(|e| panic!("{e:#}\n{}", context()));
            assert!(
                response.header("x-ratelimit-remaining").is_some(),
                "a counted request says what remains\n{}",
                context()
            );
        } else {
            assert_eq!(response.status, 429, "{}", context());
            let retry_after: Vec<_> = response.headers.get_all("retry-after").iter().collect();
            assert_eq!(retry_after.len(), 1, "one retry-after\n{}", context());
            let seconds = retry_after[0]
                .to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            assert!(
                seconds.is_some_and(|s| (1..=3600).contains(&s)),
                "retry-after {seconds:?}\n{}",
                context()
            );
        }
    }
    responses[budget.min(responses.len())..].iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_local_limit_a_client_gets_the_same_reply_as_over_a_global_one() {
    let gw = Gateway::start().await;
    let calls_before = gw.rate_limit_calls().await;
    let hits_before = gw.rls.hits().await.expect("rate-limit service metrics");
    // The extra requests claim other client addresses: the gateway is the edge
    // (use_remote_address), so a forged x-forwarded-for buys no fresh local bucket.
    let local = burst(5 + EXTRA, |i| {
        let request = request(gw.port).path("/local/items");
        if i < 5 {
            request
        } else {
            request.header("x-forwarded-for", &format!("203.0.113.{i}"))
        }
    })
    .await;
    let local_refusals = assert_budget("local client_ip 5/hour", &local, 5, "local");
    assert_eq!(
        gw.local.requests(),
        5,
        "the upstream sees exactly the budget"
    );
    assert_eq!(
        gw.refused_locally("local").await,
        EXTRA as u64,
        "Envoy's local_ratelimit filter refused them"
    );
    assert_eq!(
        (
            gw.rate_limit_calls().await,
            gw.rls.hits().await.expect("metrics")
        ),
        (calls_before, hits_before),
        "a local rule costs no call to the rate-limit service"
    );

    let global = burst(5 + EXTRA, |_| request(gw.port).path("/global/items")).await;
    let global_refusals = assert_budget("global client_ip 5/hour", &global, 5, "global");
    assert_eq!(gw.global.requests(), 5);

    // Clients cannot tell the modes apart by the refusal.
    let global_shape = refusal_shape(global_refusals[0]);
    assert_eq!(global_shape.status, 429);
    assert_eq!(global_shape.body["error"], "too many requests");
    assert_eq!(global_shape.limit, Some(5));
    assert_eq!(global_shape.remaining.as_deref(), Some("0"));
    for refusal in local_refusals {
        assert_eq!(
            refusal_shape(refusal),
            global_shape,
            "local refusal vs global refusal"
        );
    }
    for name in ["x-ratelimit-reset", "retry-after", "x-ratelimit-limit"] {
        assert!(
            global_shape.headers.contains(name),
            "{name} among {:?}",
            global_shape.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_consumer_has_its_own_local_bucket_after_ext_authz() {
    let gw = Gateway::start().await;
    let as_consumer = |token: &str| {
        request(gw.port)
            .path("/consumer/items")
            .header("authorization", token)
    };
    eventually("ext-authz admits tokens", async || {
        // A different route's path would cost nothing, but this one is the one to prove:
        // its first answer may come before ext-authz is reachable, so spend a consumer
        // nobody else uses.
        as_consumer(&gw.token("probe"))
            .send()
            .await?
            .expect_upstream("consumer")?;
        Ok(())
    })
    .await;
    let before = gw.consumer.requests();

    // Alice's extra requests forge x-consumer-id: the gateway strips it and ext-authz sets
    // it from the token, so they still spend alice's bucket.
    let alice_token = gw.token("alice");
    let alice = burst(3 + EXTRA, |i| {
        let request = as_consumer(&alice_token);
        if i < 3 {
            request
        } else {
            request.header("x-consumer-id", &format!("not-alice-{i}"))
        }
    })
    .await;
    let alice_refusals = assert_budget("consumer alice, local 3/hour", &alice, 3, "consumer");
    let bob = burst(3 + EXTRA, |_| as_consumer(&gw.token("bob"))).await;
    assert_budget(
        "consumer bob after alice's bucket is empty",
        &bob,
        3,
        "consumer",
    );
    assert_eq!(gw.consumer.requests() - before, 6);
    let shape = refusal_shape(alice_refusals[0]);
    assert_eq!(
        (shape.status, shape.limit, shape.remaining.as_deref()),
        (429, Some(3), Some("0"))
    );
    assert_eq!(shape.body["error"], "too many requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tier_has_its_bucket_and_a_missing_or_unknown_tier_the_strictest() {
    let gw = Gateway::start().await;
    let as_consumer = |token: &str| {
        request(gw.port)
            .path("/tiered/items")
            .header("authorization", token)
    };
    eventually("ext-authz admits tokens", async || {
        as_consumer(&gw.token("probe"))
            .send()
            .await?
            .expect_upstream("consumer")?;
        Ok(())
    })
    .await;
    let before = gw.consumer.requests();
    let cases = [
        ("carol", Some("free"), 2, "tier free, local 2/hour"),
        ("dave", Some("premium"), 4, "tier premium, local 4/hour"),
        ("erin", None, 2, "no tier claim: the strictest tier"),
        (
            "frank",
            Some("platinum"),
            2,
            "unknown tier platinum: the strictest tier",
        ),
    ];
    let mut admitted = 0;
    for (sub, tier, budget, what) in cases {
        let token = gw.tiered_token(sub, tier);
        // A client naming its own tier gains nothing: the gateway strips the header and
        // ext-authz sets it from the token.
        let responses = burst(budget + EXTRA, |_| {
            as_consumer(&token).header("x-consumer-tier", "premium")
        })
        .await;
        let refusals = assert_budget(what, &responses, budget, "consumer");
        assert_eq!(
            refusal_shape(refusals[0]).limit,
            Some(budget as u64),
            "{what}: x-ratelimit-limit"
        );
        admitted += budget;
    }
    assert_eq!(gw.consumer.requests() - before, admitted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_route_with_both_modes_a_local_refusal_costs_no_call_to_the_service() {
    let gw = Gateway::start().await;
    let calls_before = gw.rate_limit_calls().await;
    let hits_before = gw.rls.hits().await.expect("rate-limit service metrics");

    let responses = burst(3 + EXTRA, |_| request(gw.port).path("/mixed/items")).await;
    assert_budget(
        "local client_ip 3/hour beside a global 100/hour",
        &responses,
        3,
        "mixed",
    );
    assert_eq!(gw.mixed.requests(), 3);
    assert_eq!(gw.refused_locally("mixed").await, EXTRA as u64);
    // The admitted requests were also checked by the global rule, once each; the refused
    // ones never reached the ratelimit filter.
    assert_eq!(
        gw.rate_limit_calls().await - calls_before,
        3,
        "Envoy called the rate-limit service for a request the local rule refused"
    );
    let hits = gw.rls.hits().await.expect("metrics") - hits_before;
    assert!(
        (hits - 3.0).abs() < f64::EPSILON,
        "the service counted {hits} hits, not the 3 admitted requests"
    );
}

/// Envoy's counters whose names match `filter` (a regex), by name.
async fn envoy_counters(envoy: &RunningEnvoy, filter: &str) -> Vec<(String, u64)> {
    envoy.stats(filter).await.expect("envoy /stats")
}
