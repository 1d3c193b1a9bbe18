//! The service's Prometheus metrics, all under `tollgate_ratelimit_`:
//!
//! | name | labels | what |
//! | --- | --- | --- |
//! | `hits_total` | domain, limit | hits checked against a limit (hits_addend summed) |
//! | `over_limit_total` | domain, limit | hits refused (or that would be, in shadow mode) |
//! | `near_limit_total` | domain, limit | hits admitted with 80% or more of the limit used |
//! | `shadow_mode_total` | domain, limit | hits over a shadow-mode limit, answered OK |
//! | `local_cache_hits_total` | | denials answered from the local over-limit cache |
//! | `redis_errors_total` | kind | store failures answered UNAVAILABLE |
//! | `decision_duration_seconds` | | ShouldRateLimit latency, histogram |
//! | `config_loads_total` | result | reloads, `success` or `failure` |
//!
//! `limit` is the configuration path of the limit (`domain.key_value.key`), request values
//! appearing only for `detailed_metric` limits, so label cardinality follows the config.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub domain: String,
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// The counters of one limit, looked up once per reload rather than per request.
#[derive(Clone, Debug, Default)]
pub struct LimitStats {
    pub hits: Counter,
    pub over_limit: Counter,
    pub near_limit: Counter,
    pub shadow_mode: Counter,
}

#[derive(Clone, Debug)]
pub struct Metrics {
    hits: Family<LimitLabels, Counter>,
    over_limit: Family<LimitLabels, Counter>,
    near_limit: Family<LimitLabels, Counter>,
    shadow_mode: Family<LimitLabels, Counter>,
    pub local_cache_hits: Counter,
    redis_errors: Family<KindLabels, Counter>,
    pub decision_seconds: Histogram,
    config_loads: Family<ResultLabels, Counter>,
}

impl Metrics {
    /// Registers every metric in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            hits: Family::default(),
            over_limit: Family::default(),
            near_limit: Family::default(),
            shadow_mode: Family::default(),
            local_cache_hits: Counter::default(),
            redis_errors: Family::default(),
            // 50 µs .. ~200 ms: memory decisions sit at the bottom, Redis ones in the middle,
            // timeouts at the top.
            decision_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 13),
            ),
            config_loads: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("tollgate_ratelimit");
        r.register("hits", "Hits checked against a limit", metrics.hits.clone());
        r.register(
            "over_limit",
            "Hits over a limit",
            metrics.over_limit.clone(),
        );
        r.register(
            "near_limit",
            "Hits admitted with 80% or more of the limit used",
            metrics.near_limit.clone(),
        );
        r.register(
            "shadow_mode",
            "Hits over a shadow-mode limit, answered OK",
            metrics.shadow_mode.clone(),
        );
        r.register(
            "local_cache_hits",
            "Denials answered from the local over-limit cache",
            metrics.local_cache_hits.clone(),
        );
        r.register(
            "redis_errors",
            "Store failures answered UNAVAILABLE",
            metrics.redis_errors.clone(),
        );
        r.register(
            "decision_duration_seconds",
            "ShouldRateLimit latency",
            metrics.decision_seconds.clone(),
        );
        r.register(
            "config_loads",
            "Configuration loads by result",
            metrics.config_loads.clone(),
        );
        metrics
    }

    /// Metrics that go nowhere, for tests and benchmarks.
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    pub fn limit_stats(&self, domain: &str, limit: &str) -> LimitStats {
        let labels = LimitLabels {
            domain: domain.to_string(),
            limit: limit.to_string(),
        };
        LimitStats {
            hits: self.hits.get_or_create(&labels).clone(),
            over_limit: self.over_limit.get_or_create(&labels).clone(),
            near_limit: self.near_limit.get_or_create(&labels).clone(),
            shadow_mode: self.shadow_mode.get_or_create(&labels).clone(),
        }
    }

    pub fn redis_error(&self, kind: &str) {
        self.redis_errors
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn config_load(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config_loads
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }
}
