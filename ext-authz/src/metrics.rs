//! The service's Prometheus metrics, registered under the `tollgate_ext_authz` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::response::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    /// `allowed` or `denied`.
    result: &'static str,
    /// `ok`, `missing_token`, `insufficient_scope`, `unknown_provider`, or a
    /// [`crate::verify::Rejection::class`].
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    provider: String,
    /// `changed`, `unchanged`, `error`, or `cooldown` (an unknown `kid` that did not fetch).
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderOutcomeLabels {
    provider: String,
    /// A [`crate::response::Outcome`]: allowed, missing, invalid, expired or forbidden.
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    outcome: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    checks: Family<CheckLabels, Counter>,
    /// The label sets every cached check touches, resolved once: a family lookup hashes
    /// the labels and takes a lock, on every call.
    allowed_ok: Counter,
    cache_hit: Counter,
    cache_miss: Counter,
    cache: Family<CacheLabels, Counter>,
    jwks_fetches: Family<FetchLabels, Counter>,
    keys: Family<ProviderLabels, Gauge>,
    provider_checks: Family<ProviderOutcomeLabels, Counter>,
    api_keys: Family<ProviderLabels, Gauge>,
    reloads: Family<ReloadLabels, Counter>,
    check_duration: Histogram,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics::default();
        let registry = registry.sub_registry_with_prefix("tollgate_ext_authz");
        registry.register(
            "checks",
            "Check calls answered, by result and reason",
            metrics.checks.clone(),
        );
        registry.register(
            "token_cache_lookups",
            "Verified-token cache lookups, by outcome (hit or miss)",
            metrics.cache.clone(),
        );
        registry.register(
            "jwks_fetches",
            "Remote JWKS fetches, by provider and outcome",
            metrics.jwks_fetches.clone(),
        );
        registry.register(
            "jwks_keys",
            "Usable keys in each provider's current key set",
            metrics.keys.clone(),
        );
        registry.register(
            "provider_checks",
            "Credentials checked, by provider and outcome (allowed, missing, invalid, expired, forbidden); a route with any_of counts each provider it tried",
            metrics.provider_checks.clone(),
        );
        registry.register(
            "api_keys",
            "Keys in each API key provider's current keys file",
            metrics.api_keys.clone(),
        );
        registry.register(
            "config_reloads",
            "routes.yaml reloads, by outcome",
            metrics.reloads.clone(),
        );
        registry.register(
            "check_duration_seconds",
            "Time to answer a Check call",
            metrics.check_duration.clone(),
        );
        metrics
    }

    pub fn check(&self, allowed: bool, reason: &'static str, seconds: f64) {
        if allowed && reason == "ok" {
            self.allowed_ok.inc();
        } else {
            let result = if allowed { "allowed" } else { "denied" };
            self.checks
                .get_or_create(&CheckLabels { result, reason })
                .inc();
        }
        self.check_duration.observe(seconds);
    }

    pub fn cache_lookup(&self, hit: bool) {
        if hit {
            self.cache_hit.inc();
        } else {
            self.cache_miss.inc();
        }
    }

    pub fn jwks_fetch(&self, provider: &str, outcome: &'static str) {
        self.jwks_fetches
            .get_or_create(&FetchLabels {
                provider: provider.to_string(),
                outcome,
            })
            .inc();
    }

    pub fn set_keys(&self, provider: &str, count: usize) {
        self.keys
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// The counters of `provider`'s outcomes, resolved once so a check only increments one.
    pub fn provider_outcomes(&self, provider: &str) -> ProviderOutcomes {
        let counter = |outcome: Outcome| {
            self.provider_checks
                .get_or_create(&ProviderOutcomeLabels {
                    provider: provider.to_string(),
                    outcome: outcome.as_str(),
                })
                .clone()
        };
        ProviderOutcomes {
            counters: Outcome::ALL.map(counter),
        }
    }

    pub fn set_api_keys(&self, provider: &str, count: usize) {
        self.api_keys
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// How many checks of `provider` had `outcome` (for tests).
    pub fn provider_check_count(&self, provider: &str, outcome: Outcome) -> u64 {
        self.provider_checks
            .get_or_create(&ProviderOutcomeLabels {
                provider: provider.to_string(),
                outcome: outcome.as_str(),
            })
            .get()
    }

    pub fn reload(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ReloadLabels { outcome }).inc();
    }

    /// How many checks had this result and reason (for tests).
    pub fn checks_count(&self, allowed: bool, reason: &'static str) -> u64 {
        let result = if allowed { "allowed" } else { "denied" };
        self.checks
            .get_or_create(&CheckLabels { result, reason })
            .get()
    }

    /// How many cache lookups hit (for tests).
    pub fn cache_hits(&self) -> u64 {
        self.cache
            .get_or_create(&CacheLabels { outcome: "hit" })
            .get()
    }

    /// How many fetches of a provider had this outcome (for tests).
    pub fn jwks_fetch_count(&self, provider: &str, outcome: &'static str) -> u64 {
        self.jwks_fetches
            .get_or_create(&FetchLabels {
                provider: provider.to_string(),
                outcome,
            })
            .get()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let checks: Family<CheckLabels, Counter> = Family::default();
        let cache: Family<CacheLabels, Counter> = Family::default();
        // Clones share the family's value, so these count under their labels.
        let allowed_ok = checks
            .get_or_create(&CheckLabels {
                result: "allowed",
                reason: "ok",
            })
            .clone();
        let cache_hit = cache.get_or_create(&CacheLabels { outcome: "hit" }).clone();
        let cache_miss = cache
            .get_or_create(&CacheLabels { outcome: "miss" })
            .clone();
        Metrics {
            checks,
            allowed_ok,
            cache_hit,
            cache_miss,
            cache,
            jwks_fetches: Family::default(),
            keys: Family::default(),
            provider_checks: Family::default(),
            api_keys: Family::default(),
            reloads: Family::default(),
            // 50 µs (a cache hit) to ~1.6 s (an unknown-kid fetch near its timeout).
            check_duration: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 16),
            ),
        }
    }
}

/// One provider's outcome counters, in [`Outcome::ALL`]'s order.
#[derive(Debug, Clone)]
pub struct ProviderOutcomes {
    counters: [Counter; 5],
}

impl ProviderOutcomes {
    pub fn record(&self, outcome: Outcome) {
        // `Outcome::ALL` lists the variants in declaration order.
        self.counters[outcome as usize].inc();
    }
}
