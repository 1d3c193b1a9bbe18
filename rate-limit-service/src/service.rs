//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: descriptors in, one
//! status per descriptor and an overall code out.
//!
//! Each descriptor is matched against the current [`LimitSet`] and judged on its own;
//! the answer is OVER_LIMIT when any non-shadow limit is over (or, for `quota_mode`
//! limits, when all of them are), as envoyproxy/ratelimit answers. Every limited
//! descriptor's status carries `current_limit`, `limit_remaining` and
//! `duration_until_reset`, from which Envoy writes the `x-ratelimit-*` headers; an
//! OVER_LIMIT answer also carries `retry-after` in `response_headers_to_add`.
//!
//! Failures are values until the tonic boundary, where they are mapped once: a store that
//! cannot answer is `UNAVAILABLE`, so that Envoy's `failure_mode_deny` decides.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tollgate_proto::envoy::config::core::v3::HeaderValue;
use tollgate_proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use tollgate_proto::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit as PbUnit;
use tollgate_proto::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use tollgate_proto::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tollgate_proto::google::protobuf::Duration as PbDuration;
use tollgate_sidecar::telemetry::{self, TraceId, TraceParent, SPAN_TARGET};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::algorithm::{seconds_rounded_up, Clock, Decision};
use crate::limits::{detailed_stats_key, DescriptorTree, Limit, Rate, Unit};
use crate::metrics::{LimitStats, Metrics};
use crate::store::{Check, Store, StoreError};

/// The gRPC method Envoy's ratelimit filter calls.
pub const SHOULD_RATE_LIMIT_PATH: &str =
    "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// A configuration ready to serve: the tree and each limit's counters.
#[derive(Debug, Default)]
pub struct LimitSet {
    tree: DescriptorTree,
    stats: Vec<LimitStats>,
}

impl LimitSet {
    pub fn new(tree: DescriptorTree, metrics: &Metrics) -> Self {
        let stats = tree
            .limits()
            .iter()
            .map(|l| metrics.limit_stats(&l.domain, &l.stats_key))
            .collect();
        LimitSet { tree, stats }
    }

    pub fn tree(&self) -> &DescriptorTree {
        &self.tree
    }
}

/// The configuration in force, swapped whole on reload; requests keep the one they began
/// with.
#[derive(Clone, Debug, Default)]
pub struct CurrentLimits(Arc<RwLock<Arc<LimitSet>>>);

impl CurrentLimits {
    pub fn new(limits: LimitSet) -> Self {
        CurrentLimits(Arc::new(RwLock::new(Arc::new(limits))))
    }

    pub fn get(&self) -> Arc<LimitSet> {
        // The lock only guards a pointer swap; a poisoned one still holds a whole set.
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn replace(&self, limits: LimitSet) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(limits);
    }
}

/// Why a request got no decision.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Status {
        match error {
            ServiceError::InvalidRequest(_) => Status::invalid_argument(error.to_string()),
            // UNAVAILABLE, not UNKNOWN: Envoy then applies failure_mode_deny (Limitador's
            // envoy_rls/server.rs makes the same choice).
            ServiceError::Store(_) => Status::unavailable(error.to_string()),
        }
    }
}

/// The rate limit service: limits, a store and a clock, all given to it.
pub struct RateLimiter<S, C> {
    limits: CurrentLimits,
    store: Arc<S>,
    clock: C,
    metrics: Metrics,
}

/// One descriptor's plan before the store is asked.
struct Planned<'a> {
    limit: &'a Limit,
    counter_key: String,
    hits: u64,
    /// The descriptor's own counters under `detailed_metric`; otherwise its limit's.
    stats: Option<LimitStats>,
}

impl<S: Store, C: Clock> RateLimiter<S, C> {
    pub fn new(limits: CurrentLimits, store: Arc<S>, clock: C, metrics: Metrics) -> Self {
        RateLimiter {
            limits,
            store,
            clock,
            metrics,
        }
    }

    /// Decides one request.
    pub async fn decide(
        &self,
        request: &RateLimitRequest,
    ) -> Result<RateLimitResponse, ServiceError> {
        self.decide_logged(request, None).await
    }

    /// Decides one request; log lines name the call by `trace_id`, the trace of Envoy's
    /// call. Envoy sends a rate-limit call no request headers, so no `x-request-id`: the
    /// trace id is what joins these lines to the gateway's access log.
    async fn decide_logged(
        &self,
        request: &RateLimitRequest,
        trace_id: Option<TraceId>,
    ) -> Result<RateLimitResponse, ServiceError> {
        require_domain_and_descriptors(request)?;
        // One configuration for the whole request, even if a reload swaps it meanwhile.
        let limits = self.limits.get();
        let now_us = self.clock.now_us();
        let mut planned = self.plan(&limits, request, trace_id);
        leave_out_replaced(&mut planned);
        // One call for every check, so that Redis answers them in one round trip; a
        // request with nothing to count does not reach the store.
        let checks = checks(&planned);
        let decisions = if checks.is_empty() {
            Vec::new()
        } else {
            self.store.check(&checks, now_us).await?
        };
        let (statuses, verdict) = judge(&limits, &planned, decisions)?;
        Ok(respond(statuses, &verdict))
    }

    /// Each descriptor's limit, counter key and hits, in request order; `None` where no
    /// limit matches, so that statuses can still be answered one per descriptor.
    fn plan<'l>(
        &self,
        limits: &'l LimitSet,
        request: &RateLimitRequest,
        trace_id: Option<TraceId>,
    ) -> Vec<Option<Planned<'l>>> {
        let domain = request.domain.as_str();
        let mut planned = Vec::with_capacity(request.descriptors.len());
        // The tree matches `(&str, &str)` pairs: one buffer, reused for every descriptor,
        // is one allocation per request rather than one per descriptor.
        let mut entries: Vec<(&str, &str)> = Vec::new();
        for descriptor in &request.descriptors {
            entries.clear();
            entries.extend(
                descriptor
                    .entries
                    .iter()
                    .map(|e| (e.key.as_str(), e.value.as_str())),
            );
            let Some(found) = limits.tree.find(domain, &entries) else {
                tracing::debug!(
                    trace_id = trace_id.map(display),
                    domain,
                    descriptor = ?entries,
                    "no limit for descriptor"
                );
                planned.push(None);
                continue;
            };
            // `detailed_metric`: counters labelled with every entry's value, not only the limit's.
            let stats = found.limit.detailed_metric.then(|| {
                self.metrics
                    .limit_stats(domain, &detailed_stats_key(domain, &entries))
            });
            planned.push(Some(Planned {
                limit: found.limit,
                counter_key: found.counter_key,
                hits: hits(descriptor, request.hits_addend),
                stats,
            }));
        }
        planned
    }
}

/// The refusals envoyproxy/ratelimit makes, in its words: Envoy's filter sends neither
/// an empty domain nor an empty list, so such a call is a client's mistake to report, not
/// to answer OK.
fn require_domain_and_descriptors(request: &RateLimitRequest) -> Result<(), ServiceError> {
    if request.domain.is_empty() {
        return Err(ServiceError::InvalidRequest(
            "rate limit domain must not be empty",
        ));
    }
    if request.descriptors.is_empty() {
        return Err(ServiceError::InvalidRequest(
            "rate limit descriptor list must not be empty",
        ));
    }
    Ok(())
}

/// How many hits a descriptor adds: its own `hits_addend` when set (0 asks without
/// counting), else the request's, where 0 (unset) means 1.
fn hits(descriptor: &RateLimitDescriptor, request_hits_addend: u32) -> u64 {
    match (&descriptor.hits_addend, descriptor.is_negative_hits) {
        // Refunds are not supported: count nothing rather than the opposite.
        (_, true) => 0,
        (Some(h), false) => h.value,
        (None, false) => u64::from(request_hits_addend.max(1)),
    }
}

/// What the store is asked: the planned limits that have a rate, in their order (an
/// unlimited descriptor counts nothing).
fn checks<'p>(planned: &'p [Option<Planned<'_>>]) -> Vec<Check<'p>> {
    planned
        .iter()
        .flatten()
        .filter_map(|p| {
            p.limit.rate.as_ref().map(|(_, policy)| Check {
                key: &p.counter_key,
                policy,
                hits: p.hits,
            })
        })
        .collect()
}

/// A limit named in another matched limit's `replaces` does not apply: it is neither
/// counted nor judged, and its descriptor answers as one without a limit.
fn leave_out_replaced(planned: &mut [Option<Planned<'_>>]) {
    // Most requests replace nothing: no set is built for them.
    if !planned
        .iter()
        .flatten()
        .any(|p| !p.limit.replaces.is_empty())
    {
        return;
    }
    let replaced: HashSet<&str> = planned
        .iter()
        .flatten()
        .flat_map(|p| p.limit.replaces.iter().map(String::as_str))
        .collect();
    for slot in planned.iter_mut() {
        if slot
            .as_ref()
            .and_then(|p| p.limit.name.as_deref())
            .is_some_and(|name| replaced.contains(name))
        {
            *slot = None;
        }
    }
}

/// What the request's limits add up to, gathered as each descriptor is judged.
#[derive(Default)]
struct Verdict {
    /// A limit outside `quota_mode` is over.
    over: bool,
    /// `quota_mode` limits judged, and how many of them are over.
    quota_total: u32,
    quota_over: u32,
    /// The longest wait among the limits that are over.
    retry_after: Option<Duration>,
}

impl Verdict {
    /// Adds one limit's decision and returns its descriptor's code. A `shadow_mode` limit
    /// is counted but never enforced, so it leaves the verdict as it was.
    fn add(&mut self, limit: &Limit, rate: &Rate, decision: &Decision) -> Code {
        if limit.shadow_mode {
            return Code::Ok;
        }
        if limit.quota_mode {
            self.quota_total += 1;
        }
        if decision.allowed {
            return Code::Ok;
        }
        if limit.quota_mode {
            self.quota_over += 1;
        } else {
            self.over = true;
        }
        let wait = decision.retry_after.unwrap_or(rate.unit.duration());
        self.retry_after = self.retry_after.max(Some(wait));
        Code::OverLimit
    }

    /// Over when any limit is, or when every `quota_mode` limit is: as in
    /// envoyproxy/ratelimit, a request is refused on quotas only once all of them are spent.
    fn is_over(&self) -> bool {
        self.over || (self.quota_total > 0 && self.quota_total == self.quota_over)
    }
}

/// One status per descriptor, in request order, and the verdict they add up to;
/// `decisions` are the store's, in the order of [`checks`].
fn judge(
    limits: &LimitSet,
    planned: &[Option<Planned<'_>>],
    decisions: Vec<Decision>,
) -> Result<(Vec<DescriptorStatus>, Verdict), StoreError> {
    let mut decisions = decisions.into_iter();
    let mut statuses = Vec::with_capacity(planned.len());
    let mut verdict = Verdict::default();
    for slot in planned {
        let Some(plan) = slot else {
            statuses.push(DescriptorStatus {
                code: Code::Ok as i32,
                ..DescriptorStatus::default()
            });
            continue;
        };
        let stats = plan.stats.as_ref().unwrap_or(&limits.stats[plan.limit.id]);
        let Some((rate, _)) = &plan.limit.rate else {
            statuses.push(DescriptorStatus {
                code: Code::Ok as i32,
                limit_remaining: u32::MAX,
                ..DescriptorStatus::default()
            });
            continue;
        };
        let Some(decision) = decisions.next() else {
            return Err(StoreError::BadReply("fewer decisions than checks".into()));
        };
        record(stats, plan, &decision);
        let code = verdict.add(plan.limit, rate, &decision);
        statuses.push(status(
            code,
            plan.limit,
            rate.requests,
            rate.unit,
            &decision,
        ));
    }
    Ok((statuses, verdict))
}

/// A decision in its limit's counters: every hit, and those over the limit (in shadow
/// mode too, which is what shadow mode is for) or near it.
fn record(stats: &LimitStats, plan: &Planned<'_>, decision: &Decision) {
    stats.hits.inc_by(plan.hits);
    if !decision.allowed {
        stats.over_limit.inc_by(plan.hits);
        if plan.limit.shadow_mode {
            stats.shadow_mode.inc_by(plan.hits);
        }
    } else if decision.is_near_limit() {
        stats.near_limit.inc_by(plan.hits);
    }
}

/// The answer: the overall code, the statuses, and `retry-after` when over.
fn respond(statuses: Vec<DescriptorStatus>, verdict: &Verdict) -> RateLimitResponse {
    let over = verdict.is_over();
    let mut response = RateLimitResponse {
        overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
        statuses,
        ..RateLimitResponse::default()
    };
    if over {
        let seconds = verdict
            .retry_after
            .map_or(1, |d| seconds_rounded_up(d).max(1));
        response.response_headers_to_add.push(HeaderValue {
            key: "retry-after".to_string(),
            value: seconds.to_string(),
            ..HeaderValue::default()
        });
    }
    response
}

fn status(
    code: Code,
    limit: &Limit,
    requests: u64,
    unit: Unit,
    decision: &Decision,
) -> DescriptorStatus {
    DescriptorStatus {
        code: code as i32,
        current_limit: Some(RateLimit {
            name: limit.name.clone().unwrap_or_default(),
            requests_per_unit: u32::try_from(requests).unwrap_or(u32::MAX),
            unit: pb_unit(unit) as i32,
        }),
        limit_remaining: u32::try_from(decision.remaining).unwrap_or(u32::MAX),
        duration_until_reset: Some(pb_duration(decision.reset)),
        ..DescriptorStatus::default()
    }
}

fn pb_unit(unit: Unit) -> PbUnit {
    match unit {
        Unit::Second => PbUnit::Second,
        Unit::Minute => PbUnit::Minute,
        Unit::Hour => PbUnit::Hour,
        Unit::Day => PbUnit::Day,
        Unit::Week => PbUnit::Week,
        Unit::Month => PbUnit::Month,
        Unit::Year => PbUnit::Year,
    }
}

/// Whole seconds, rounded up: Envoy's `x-ratelimit-reset` is whole seconds, and a reset
/// announced early invites a retry that is refused.
fn pb_duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(seconds_rounded_up(d)).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

impl<S: Store, C: Clock> RateLimiter<S, C> {
    /// `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, as
    /// `tollgate_sidecar::grpc::GrpcServer` serves it.
    pub async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let started = Instant::now();
        let parent = TraceParent::from_metadata(request.metadata());
        let trace_id = parent.map(|p| p.trace_id);
        let request = request.get_ref();
        let span = telemetry::server_span(parent.as_ref(), || {
            tracing::info_span!(
                target: SPAN_TARGET,
                "should_rate_limit",
                otel.name = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
                otel.kind = "server",
                rpc.system = "grpc",
                domain = request.domain.as_str(),
                descriptors = request.descriptors.len(),
                result = tracing::field::Empty,
            )
        });
        let result = self
            .decide_logged(request, trace_id)
            .instrument(span.clone())
            .await;
        self.metrics
            .decision_seconds
            .observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(response) if response.overall_code == Code::OverLimit as i32 => "over_limit",
            Ok(_) => "ok",
            Err(ServiceError::InvalidRequest(_)) => "invalid_request",
            Err(ServiceError::Store(_)) => "store_failed",
        };
        span.record("result", outcome);
        tracing::debug!(
            trace_id = trace_id.map(display),
            domain = request.domain.as_str(),
            result = outcome,
            "decided"
        );
        match result {
            Ok(response) => Ok(Response::new(response)),
            Err(error) => {
                if let ServiceError::Store(e) = &error {
                    self.metrics.redis_error(e.kind());
                    tracing::warn!(
                        trace_id = trace_id.map(display),
                        domain = request.domain.as_str(),
                        error = %e,
                        "no decision: the store failed"
                    );
                }
                Err(error.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tollgate_proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use tollgate_proto::google::protobuf::UInt64Value;
    use tollgate_testkit::rate_limit::descriptor;

    use super::*;
    use crate::algorithm::ManualClock;
    use crate::limits::dropin::{parse, SourceFile};
    use crate::store::memory::MemoryStore;

    /// 2023-11-14 22:13:20 UTC, 20 s into a minute.
    const T0: u64 = 1_700_000_000_000_000;

    const CONFIG: &str = r#"
domain: d
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: general
    rate_limit: {unit: minute, requests_per_unit: 1, name: general}
  - key: specific
    rate_limit:
      unit: minute
      requests_per_unit: 5
      name: specific
      replaces: [{name: general}]
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: free
    rate_limit: {unlimited: true}
  - key: quota_a
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: quota_b
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 2}
"#;

    fn limiter() -> RateLimiter<MemoryStore, ManualClock> {
        let tree = parse(&[SourceFile {
            name: "c.yaml".into(),
            text: CONFIG.into(),
        }])
        .expect("valid");
        let metrics = Metrics::unregistered();
        RateLimiter::new(
            CurrentLimits::new(LimitSet::new(tree, &metrics)),
            Arc::new(MemoryStore::new()),
            ManualClock::at(T0),
            metrics,
        )
    }

    fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest {
            domain: "d".into(),
            descriptors,
            hits_addend: 0,
        }
    }

    async fn code(limiter: &RateLimiter<MemoryStore, ManualClock>, r: &RateLimitRequest) -> Code {
        let response = limiter.decide(r).await.expect("a decision");
        Code::try_from(response.overall_code).expect("a known code")
    }

    #[tokio::test]
    async fn statuses_carry_limit_remaining_and_reset() {
        let limiter = limiter();
        let response = limiter
            .decide(&request(vec![descriptor(&[("user", "u1")])]))
            .await
            .expect("a decision");
        let status = &response.statuses[0];
        assert_eq!(status.limit_remaining, 1);
        let limit = status.current_limit.as_ref().expect("current_limit");
        assert_eq!(
            (limit.requests_per_unit, limit.unit),
            (2, PbUnit::Minute as i32)
        );
        assert_eq!(
            status.duration_until_reset.as_ref().map(|d| d.seconds),
            Some(40)
        );
        assert!(response.response_headers_to_add.is_empty());
    }

    #[tokio::test]
    async fn over_limit_adds_retry_after() {
        let limiter = limiter();
        let r = request(vec![descriptor(&[("user", "u1")])]);
        assert_eq!(code(&limiter, &r).await, Code::Ok);
        assert_eq!(code(&limiter, &r).await, Code::Ok);
        let response = limiter.decide(&r).await.expect("a decision");
        assert_eq!(response.overall_code, Code::OverLimit as i32);
        let header = &response.response_headers_to_add[0];
        assert_eq!(
            (header.key.as_str(), header.value.as_str()),
            ("retry-after", "40")
        );
    }

    #[tokio::test]
    async fn request_hits_addend_counts_several_and_descriptor_hits_addend_overrides_it() {
        let limiter = limiter();
        let mut r = request(vec![descriptor(&[("user", "u1")])]);
        r.hits_addend = 2;
        assert_eq!(code(&limiter, &r).await, Code::Ok);
        // A query: hits_addend 0 on the descriptor counts nothing.
        let mut query = descriptor(&[("user", "u1")]);
        query.hits_addend = Some(UInt64Value { value: 0 });
        let q = request(vec![query]);
        let response = limiter.decide(&q).await.expect("a decision");
        assert_eq!(response.overall_code, Code::Ok as i32);
        assert_eq!(response.statuses[0].limit_remaining, 0);
        assert_eq!(
            code(&limiter, &request(vec![descriptor(&[("user", "u1")])])).await,
            Code::OverLimit
        );
    }

    #[tokio::test]
    async fn one_descriptor_over_makes_the_request_over_and_others_are_judged_alone() {
        let limiter = limiter();
        let r = request(vec![
            descriptor(&[("user", "a")]),
            descriptor(&[("general", "x")]),
        ]);
        assert_eq!(code(&limiter, &r).await, Code::Ok);
        let response = limiter.decide(&r).await.expect("a decision");
        assert_eq!(response.overall_code, Code::OverLimit as i32);
        assert_eq!(response.statuses[0].code, Code::Ok as i32);
        assert_eq!(response.statuses[1].code, Code::OverLimit as i32);
    }

    #[tokio::test]
    async fn a_replaced_limit_does_not_apply() {
        let limiter = limiter();
        let r = request(vec![
            descriptor(&[("general", "x")]),
            descriptor(&[("specific", "y")]),
        ]);
        for _ in 0..5 {
            assert_eq!(
                code(&limiter, &r).await,
                Code::Ok,
                "general (1/min) is replaced"
            );
        }
        assert_eq!(
            code(&limiter, &r).await,
            Code::OverLimit,
            "specific (5/min) applies"
        );
    }

    #[tokio::test]
    async fn shadow_mode_counts_but_answers_ok() {
        let limiter = limiter();
        let r = request(vec![descriptor(&[("shadow", "s")])]);
        assert_eq!(code(&limiter, &r).await, Code::Ok);
        let response = limiter.decide(&r).await.expect("a decision");
        assert_eq!(response.overall_code, Code::Ok as i32);
        assert_eq!(response.statuses[0].limit_remaining, 0);
    }

    #[tokio::test]
    async fn unlimited_and_unknown_descriptors_are_ok() {
        let limiter = limiter();
        let r = request(vec![
            descriptor(&[("free", "f")]),
            descriptor(&[("nothing", "n")]),
        ]);
        let response = limiter.decide(&r).await.expect("a decision");
        assert_eq!(response.overall_code, Code::Ok as i32);
        assert_eq!(response.statuses[0].limit_remaining, u32::MAX);
        assert_eq!(response.statuses[1].current_limit, None);
    }

    #[tokio::test]
    async fn quota_mode_is_over_only_when_every_quota_is() {
        let limiter = limiter();
        let r = request(vec![
            descriptor(&[("quota_a", "x")]),
            descriptor(&[("quota_b", "x")]),
        ]);
        assert_eq!(code(&limiter, &r).await, Code::Ok);
        assert_eq!(code(&limiter, &r).await, Code::Ok, "quota_b still has room");
        assert_eq!(code(&limiter, &r).await, Code::OverLimit);
    }

    #[tokio::test]
    async fn an_empty_domain_or_descriptor_list_is_invalid() {
        let limiter = limiter();
        let mut r = request(vec![descriptor(&[("user", "u")])]);
        r.domain.clear();
        assert!(matches!(
            limiter.decide(&r).await,
            Err(ServiceError::InvalidRequest(_))
        ));
        let r = request(vec![]);
        let status = Status::from(limiter.decide(&r).await.expect_err("invalid"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn a_reload_swaps_limits_for_later_requests() {
        let limiter = limiter();
        let r = request(vec![descriptor(&[("other", "o")])]);
        assert_eq!(
            limiter.decide(&r).await.expect("ok").statuses[0].current_limit,
            None
        );
        let tree = parse(&[SourceFile {
            name: "c.yaml".into(),
            text: "domain: d\ndescriptors:\n  - key: other\n    rate_limit: {unit: hour, requests_per_unit: 9}\n".into(),
        }])
        .expect("valid");
        limiter
            .limits
            .replace(LimitSet::new(tree, &limiter.metrics));
        let response = limiter.decide(&r).await.expect("ok");
        assert_eq!(response.statuses[0].limit_remaining, 8);
    }

    #[test]
    fn a_store_failure_is_unavailable() {
        let status = Status::from(ServiceError::Store(StoreError::Timeout(
            Duration::from_millis(40),
        )));
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn log_lines_about_a_call_carry_the_trace_id_envoy_sent() {
        let (logs, _guard) = tollgate_runtime::logging::capture();
        let mut call = Request::new(request(vec![
            descriptor(&[("user", "u1")]),
            descriptor(&[("unknown", "x")]),
        ]));
        call.metadata_mut().insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
                .parse()
                .expect("ascii"),
        );
        limiter().should_rate_limit(call).await.expect("a decision");
        for message in ["no limit for descriptor", "decided"] {
            let lines = logs.lines_with(message);
            assert_eq!(lines.len(), 1, "{message}: {lines:?}");
            assert!(
                lines[0].contains("trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
                "{}",
                lines[0]
            );
        }
    }
}
