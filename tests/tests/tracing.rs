//! Tracing end to end (issue 5): a real Envoy, control plane, tollgate-ext-authz and
//! tollgate-ratelimit exporting to a real OTLP/gRPC receiver. One request through a route
//! with JWT auth and a rate limit becomes one trace: Envoy's spans, a child span from each
//! sidecar under Envoy's span for its call, and the upstream sees the same trace in its
//! `traceparent`. The request's `x-request-id` and trace id are in the log lines about it.
//! With `sample_rate: 0` nothing of a request is exported.
//!
//! Exporters flush in batches (Envoy and the sidecars every 5 s by default), so every check
//! polls the receiver; absence is checked behind a barrier (see the second test).

use std::collections::HashSet;

use serde_json::Value;
use tollgate_conformance::ratelimit::{RateLimitService, RunningRateLimitService};
use tollgate_conformance::{
    eventually_within, request, reserve_port, ControlPlane, Envoy, ExtAuthz, OtlpReceiver,
    ReceivedSpan, Response, RunningControlPlane, RunningEnvoy, RunningExtAuthz, Upstream,
    UpstreamHandle,
};
use tollgate_testkit::jwt::{self, TestKey};

/// Two 5-second flush intervals on a busy machine, and then some.
const EXPORT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

const GATEWAY: &str = "tollgate-gateway";
const EXT_AUTHZ: &str = "tollgate-ext-authz";
const RATELIMIT: &str = "tollgate-ratelimit";

/// A gateway with one route that needs a token and is rate limited, tracing to `collector`.
struct Gateway {
    port: u16,
    token: String,
    collector: OtlpReceiver,
    // Field order matters for Drop: Envoy goes before the services it calls.
    envoy: RunningEnvoy,
    rls: RunningRateLimitService,
    authz: RunningExtAuthz,
    _cp: RunningControlPlane,
    _api: UpstreamHandle,
}

impl Gateway {
    async fn start(sample_rate: &str) -> Gateway {
        Gateway::start_exporting_to(sample_rate, None).await
    }

    /// Like [`Gateway::start`], with spans sent to `endpoint` instead of the receiver.
    async fn start_exporting_to(sample_rate: &str, endpoint: Option<String>) -> Gateway {
        let collector = OtlpReceiver::start().await;
        let endpoint = endpoint.unwrap_or_else(|| collector.endpoint());
        let api = Upstream::new("api").spawn().await;
        let port = reserve_port();
        // Debug for the services' own modules: a line per check and per decision.
        let authz = ExtAuthz::new().log_filter("info,tollgate_ext_authz=debug");
        let rls = RateLimitService::new().log_filter("info,tollgate_ratelimit=debug");
        let cp = ControlPlane::new()
            .routes(format!(
                r#"version: 1
listeners:
  - {{name: public, address: "127.0.0.1:{port}"}}
services:
  api: {{endpoints: ["{api}"]}}
auth_providers:
  idp: {{issuer: {issuer}, audiences: [{audience}], jwks_file: jwks.json}}
routes:
  - name: orders
    match: {{prefix: /orders/}}
    service: api
    auth: {{provider: idp}}
    rate_limit:
      - {{by: consumer, requests: 100000, per: minute}}
sidecars:
  ext_authz: {{address: "{authz}", timeout: 2s}}
  rate_limit: {{address: "{rls}", timeout: 2s}}
observability:
  tracing: {{otlp_endpoint: "{collector}", sample_rate: {sample_rate}}}
"#,
                api = api.endpoint(),
                issuer = jwt::ISSUER,
                audience = jwt::AUDIENCE,
                authz = authz.grpc_addr(),
                rls = rls.grpc_addr(),
                collector = endpoint,
            ))
            .start()
            .await;
        let key = TestKey::p256("tracing-test");
        let authz = authz
            .routes_file(cp.routes_path())
            .jwks(&jwt::jwks(&[&key]))
            .start()
            .await;
        let rls = rls.routes_file(cp.routes_path()).start().await;
        let envoy = Envoy::new().control_plane(&cp).start().await;
        let token = key.mint(&jwt::claims());
        let gateway = Gateway {
            port,
            token,
            collector,
            envoy,
            rls,
            authz,
            _cp: cp,
            _api: api,
        };
        tollgate_conformance::eventually("the traced route is served", async || {
            gateway.get("probe", None).await?.expect_upstream("api")?;
            Ok(())
        })
        .await;
        gateway
    }

    /// `GET /orders/1` with the token, `x-request-id: request_id` and, if given, a
    /// client's `traceparent`.
    async fn get(&self, request_id: &str, traceparent: Option<&str>) -> anyhow::Result<Response> {
        let mut builder = request(self.port)
            .path("/orders/1")
            .header("authorization", &format!("Bearer {}", self.token))
            .header("x-request-id", request_id);
        if let Some(traceparent) = traceparent {
            builder = builder.header("traceparent", traceparent);
        }
        builder.send().await
    }

    /// Sends a request that must reach the upstream; returns the `traceparent` the
    /// upstream received, split into (trace id, parent span id, flags).
    async fn traced_request(
        &self,
        request_id: &str,
        traceparent: Option<&str>,
    ) -> (String, String, String) {
        let response = self.get(request_id, traceparent).await.expect("a response");
        response
            .expect_upstream("api")
            .expect("reaches the upstream");
        let echo: Value = response.json().expect("the upstream's JSON echo");
        let seen = echo["headers"]["traceparent"]
            .as_str()
            .unwrap_or_else(|| panic!("the upstream got no traceparent: {echo}"));
        let parts: Vec<&str> = seen.split('-').collect();
        assert_eq!(parts.len(), 4, "traceparent {seen:?}");
        (parts[1].into(), parts[2].into(), parts[3].into())
    }

    /// Waits until `trace_id` has spans from Envoy and from both sidecars, and among them
    /// the span `request_span` (the request's own span, which Envoy ends last).
    async fn complete_trace(&self, trace_id: &str, request_span: &str) -> Vec<ReceivedSpan> {
        eventually_within(
            EXPORT_PATIENCE,
            &format!("trace {trace_id} has spans from Envoy and both sidecars"),
            async || {
                let spans = self.collector.trace(trace_id);
                let services: HashSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
                for service in [GATEWAY, EXT_AUTHZ, RATELIMIT] {
                    anyhow::ensure!(
                        services.contains(service),
                        "no span from {service} yet: {spans:#?}"
                    );
                }
                anyhow::ensure!(
                    spans.iter().any(|s| s.span_id == request_span),
                    "no span {request_span} yet: {spans:#?}"
                );
                Ok(spans)
            },
        )
        .await
    }
}

fn only<'a>(spans: &'a [ReceivedSpan], service: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.service == service).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_one_trace_across_envoy_both_sidecars_and_the_upstream() {
    let gw = Gateway::start("1.0").await;
    let (trace_id, upstream_parent, flags) = gw.traced_request("trace-me-1", None).await;
    assert_eq!(flags, "01", "sampled at sample_rate 1.0");
    let spans = gw.complete_trace(&trace_id, &upstream_parent).await;

    let envoy_span_ids: HashSet<&str> = only(&spans, GATEWAY)
        .iter()
        .map(|s| s.span_id.as_str())
        .collect();
    assert!(
        envoy_span_ids.contains(upstream_parent.as_str()),
        "the upstream's parent span {upstream_parent} is one of Envoy's: {spans:#?}"
    );
    for service in [EXT_AUTHZ, RATELIMIT] {
        let sidecar = only(&spans, service);
        assert_eq!(sidecar.len(), 1, "one {service} span: {spans:#?}");
        let parent = sidecar[0].parent_span_id.as_deref().unwrap_or("none");
        assert!(
            envoy_span_ids.contains(parent),
            "the {service} span's parent {parent} is Envoy's span for its call: {spans:#?}"
        );
    }
    let check = only(&spans, EXT_AUTHZ)[0];
    assert_eq!(check.name, "envoy.service.auth.v3.Authorization/Check");
    assert_eq!(check.attribute("request_id"), Some("trace-me-1"));
    assert_eq!(check.attribute("route"), Some("orders"));
    assert_eq!(check.attribute("result"), Some("ok"));
    // No sidecar span of this request went into another trace.
    assert!(
        gw.collector
            .spans()
            .iter()
            .filter(|s| s.attribute("request_id") == Some("trace-me-1"))
            .all(|s| s.trace_id == trace_id),
        "every span naming the request is in trace {trace_id}"
    );

    // The log lines about the request name it: ext-authz by request id and trace id, the
    // rate-limit service (which gets no request headers from Envoy) by trace id, and Envoy's
    // access log by both, which joins them.
    let authz_logs = gw.authz.process().stderr();
    assert!(
        authz_logs.lines().any(|l| l.contains("checked")
            && l.contains("request_id=\"trace-me-1\"")
            && l.contains(&format!("trace_id={trace_id}"))),
        "an ext-authz line with the request id and the trace id:\n{authz_logs}"
    );
    let rls_logs = gw.rls.process().stderr();
    assert!(
        rls_logs
            .lines()
            .any(|l| l.contains("decided") && l.contains(&format!("trace_id={trace_id}"))),
        "a rate-limit line with the trace id:\n{rls_logs}"
    );
    eventually_within(
        EXPORT_PATIENCE,
        "Envoy's access log line has the request id and the trace id",
        async || {
            let access_log = gw.envoy.process().stdout();
            anyhow::ensure!(
                access_log
                    .lines()
                    .any(|l| l.contains("\"request_id\":\"trace-me-1\"")
                        && l.contains(&format!("\"trace_id\":\"{trace_id}\""))),
                "no such line in:\n{access_log}"
            );
            Ok(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_sample_rate_zero_nothing_of_a_request_is_exported() {
    let gw = Gateway::start("0").await;
    let (unsampled, _, flags) = gw.traced_request("not-sampled-1", None).await;
    assert_eq!(flags, "00", "Envoy propagates its decision not to sample");

    // A barrier instead of a sleep: a request that a client's sampled traceparent makes
    // traced (Envoy follows a sampled parent whatever its own rate). Each exporter sends
    // its spans in the order they ended, so once this later request's spans have arrived
    // from Envoy and both sidecars, any span of the earlier one would have arrived too.
    let marker = "0af7651916cd43dd8448eb211c80319c";
    let (marker_trace, marker_span, marker_flags) = gw
        .traced_request(
            "marker-1",
            Some(&format!("00-{marker}-b7ad6b7169203331-01")),
        )
        .await;
    assert_eq!(
        (marker_trace.as_str(), marker_flags.as_str()),
        (marker, "01")
    );
    gw.complete_trace(marker, &marker_span).await;

    let leaked: Vec<ReceivedSpan> = gw
        .collector
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == unsampled || s.attribute("request_id") == Some("not-sampled-1"))
        .collect();
    assert!(leaked.is_empty(), "exported at sample_rate 0: {leaked:#?}");
    // The probes that readied the gateway were not sampled either: only the marker's spans
    // were exported.
    let others: Vec<ReceivedSpan> = gw
        .collector
        .spans()
        .into_iter()
        .filter(|s| s.trace_id != marker)
        .collect();
    assert!(others.is_empty(), "exported at sample_rate 0: {others:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_fails_no_request() {
    // A port nobody listens on: every export is refused.
    let nowhere = tollgate_testkit::ports::reserve_addr().to_string();
    let gw = Gateway::start_exporting_to("1.0", Some(nowhere)).await;
    // Each request passes ext-authz and the rate limit, both of which made and ended a span.
    for i in 0..20 {
        let (_, _, flags) = gw.traced_request(&format!("no-collector-{i}"), None).await;
        assert_eq!(flags, "01", "traced, with nowhere to send the spans");
    }
}
