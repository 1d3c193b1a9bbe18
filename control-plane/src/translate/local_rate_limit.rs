//! Local rate limits (`mode: local`): Envoy's `local_ratelimit` HTTP filter, counting each
//! rule in token buckets inside Envoy with no call to the rate-limit service.
//!
//! The listener runs the filter with no bucket and not enabled; each route with local rules
//! turns it on in its own `typed_per_filter_config`. That per-route setting carries the
//! actions (its own `rate_limits`, so that the global ratelimit filter, which reads the
//! route's, never sends a local rule to the service) and one descriptor per rule (per tier
//! of a tiered rule) whose key entry has an empty value: Envoy's wildcard, for which it
//! keeps a bucket per distinct value, the least recently seen dropped past
//! `max_dynamic_descriptors`.
//!
//! Descriptors have the global ones' shape, `("route", name), ("rule", id), <key>[, ("tier",
//! t)]`, so that a rule reads the same in Envoy's debug log whichever mode counts it.
//!
//! A group of Envoys shares each rule's budget: translated for N Envoys, every bucket holds
//! and refills 1/N of the rule's, rounded up ([`share`]), so that N Envoys with the load
//! spread evenly admit the rule's quota between them, and never more than N shares.
//!
//! A request missing the key (no `x-consumer-id`, no such header) makes no descriptor and
//! is not limited by that rule, as with global rules. The route's default bucket, which
//! Envoy 1.40 requires (with a fill interval of at least 50 ms) and consumes when no
//! descriptor matched, is made too large to refuse; its size is what such a request's
//! `x-ratelimit-*` headers then announce, where a global rule adds none.

use std::num::NonZeroU32;

use tollgate_proto::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption,
    RuntimeFractionalPercent,
};
use tollgate_proto::envoy::config::route::v3::{
    rate_limit::{action::ActionSpecifier, action::HeaderValueMatch, Action},
    RateLimit as RouteRateLimit,
};
use tollgate_proto::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::Entry, LocalRateLimitDescriptor, XRateLimitHeadersRfcVersion,
};
use tollgate_proto::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use tollgate_proto::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use tollgate_proto::envoy::r#type::v3::{
    fractional_percent::DenominatorType, FractionalPercent, TokenBucket,
};
use tollgate_proto::google::protobuf::{Any, BoolValue, UInt32Value};
use tollgate_routes::policy::{LimitMode, LimitQuota, Quota, RateLimitRule};

use super::matcher::{header as header_matcher, regex_matcher};
use super::rate_limit::{generic_key, key_action, request_header};
use super::{any, proto_duration};

pub(super) const FILTER_NAME: &str = "envoy.filters.http.local_ratelimit";
/// Envoy's counters for a route are `tollgate_local.<route>.http_local_rate_limit.*`.
const STAT_PREFIX: &str = "tollgate_local";

/// The listener's filter: no bucket and not enabled, so it does nothing on a route that
/// does not configure it.
pub(super) fn filter() -> Any {
    any(&LocalRateLimit {
        stat_prefix: STAT_PREFIX.to_string(),
        ..Default::default()
    })
}

/// One Envoy's share of a budget shared by `envoys`: rounded up, so never 0.
pub fn share(budget: u64, envoys: NonZeroU32) -> u64 {
    budget.div_ceil(u64::from(envoys.get())).max(1)
}

/// The route's setting: its local `rules` (never empty), enforced, each with its share of
/// the budget for `envoys` Envoys.
pub(super) fn per_route(route: &str, rules: &[&RateLimitRule], envoys: NonZeroU32) -> Any {
    let max_keys = rules
        .iter()
        .filter_map(|rule| match rule.mode {
            LimitMode::Local { max_keys } => Some(max_keys),
            LimitMode::Global => None,
        })
        .max()
        .unwrap_or(tollgate_routes::policy::DEFAULT_MAX_KEYS);
    any(&LocalRateLimit {
        stat_prefix: format!("{STAT_PREFIX}.{route}"),
        // Envoy requires a bucket on a route's setting and consumes it when no descriptor
        // matched (the key is missing): one that never runs dry, so that only the rules
        // refuse.
        token_bucket: Some(TokenBucket {
            max_tokens: u32::MAX,
            tokens_per_fill: Some(UInt32Value { value: u32::MAX }),
            fill_interval: Some(proto_duration(std::time::Duration::from_secs(1))),
        }),
        always_consume_default_token_bucket: Some(BoolValue { value: false }),
        // Both default to 0%: a shadow limiter. Runtime keys let an operator dial them down.
        filter_enabled: Some(all_requests("tollgate.local_rate_limit.enabled")),
        filter_enforced: Some(all_requests("tollgate.local_rate_limit.enforced")),
        descriptors: rules
            .iter()
            .flat_map(|rule| descriptors(route, rule, envoys))
            .collect(),
        rate_limits: rules
            .iter()
            .flat_map(|rule| rate_limits(route, rule))
            .collect(),
        // The same reply as a global refusal: 429 (the default status), the gateway's JSON
        // body (the local reply mapper, which sees every reply Envoy makes itself),
        // `x-ratelimit-*` and `retry-after`.
        enable_x_ratelimit_headers: XRateLimitHeadersRfcVersion::DraftVersion03 as i32,
        enable_retry_after_header: true,
        // The ratelimit filter marks its refusals so; Envoy 1.40's local filter does not.
        response_headers_to_add: vec![HeaderValueOption {
            header: Some(HeaderValue {
                key: "x-envoy-ratelimited".to_string(),
                value: "true".to_string(),
                ..Default::default()
            }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        }],
        rate_limited_as_resource_exhausted: true,
        max_dynamic_descriptors: Some(UInt32Value { value: max_keys }),
        ..Default::default()
    })
}

fn all_requests(runtime_key: &str) -> RuntimeFractionalPercent {
    RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: DenominatorType::Hundred as i32,
        }),
        runtime_key: runtime_key.to_string(),
    }
}

/// The buckets of one rule: one per value of its key, or per value and tier.
fn descriptors(
    route: &str,
    rule: &RateLimitRule,
    envoys: NonZeroU32,
) -> Vec<LocalRateLimitDescriptor> {
    let key = entry(super::rate_limit::key_entry(&rule.key), "");
    let head = [entry("route", route), entry("rule", &rule.id), key];
    match &rule.quota {
        LimitQuota::Flat(quota) => vec![LocalRateLimitDescriptor {
            entries: head.to_vec(),
            token_bucket: Some(token_bucket(*quota, rule.burst, envoys)),
            shadow_mode: false,
        }],
        LimitQuota::Tiered { tiers, .. } => tiers
            .iter()
            .map(|(tier, quota)| LocalRateLimitDescriptor {
                entries: head.iter().cloned().chain([entry("tier", tier)]).collect(),
                token_bucket: Some(token_bucket(*quota, rule.burst, envoys)),
                shadow_mode: false,
            })
            .collect(),
    }
}

/// `requests` per `per`, holding `burst` (by default `requests`): the service's token
/// bucket exactly. Envoy 1.40's buckets refill continuously at `tokens_per_fill` per
/// `fill_interval` (an atomic bucket, not a timer), so a client that spent a full bucket
/// gets a request back every `per / requests`, not a whole window's worth at once.
/// Validation has checked that the counts fit in 32 bits. Shared by `envoys`, both the
/// bucket and its refill are that many times smaller.
fn token_bucket(quota: Quota, burst: Option<u64>, envoys: NonZeroU32) -> TokenBucket {
    let tokens = |n: u64| u32::try_from(share(n, envoys)).unwrap_or(u32::MAX);
    TokenBucket {
        max_tokens: tokens(burst.unwrap_or(quota.requests)),
        tokens_per_fill: Some(UInt32Value {
            value: tokens(quota.requests),
        }),
        fill_interval: Some(proto_duration(quota.per.duration())),
    }
}

/// The actions that describe a request for one rule. A tiered rule needs two: the tier
/// header's value as it is, which matches a known tier's descriptor, and, when the header
/// is absent or names no tier of the rule, the strictest tier's name, so that neither a
/// missing nor an invented tier escapes the limit (the service does the same).
fn rate_limits(route: &str, rule: &RateLimitRule) -> Vec<RouteRateLimit> {
    let head = || {
        vec![
            generic_key("route", route),
            generic_key("rule", &rule.id),
            key_action(&rule.key),
        ]
    };
    let limit = |actions: Vec<Action>| RouteRateLimit {
        actions,
        ..Default::default()
    };
    match &rule.quota {
        LimitQuota::Flat(_) => vec![limit(head())],
        LimitQuota::Tiered { header, tiers } => {
            let Some((strictest, _)) = rule.quota.strictest_tier() else {
                return Vec::new();
            };
            let known = tiers
                .keys()
                .map(|tier| regex::escape(tier))
                .collect::<Vec<_>>()
                .join("|");
            let unknown_tier = Action {
                action_specifier: Some(ActionSpecifier::HeaderValueMatch(HeaderValueMatch {
                    descriptor_key: "tier".to_string(),
                    descriptor_value: strictest.to_string(),
                    expect_match: Some(BoolValue { value: false }),
                    headers: vec![header_matcher(
                        header,
                        MatchPattern::SafeRegex(regex_matcher(format!("(?:{known})"))),
                    )],
                    ..Default::default()
                })),
            };
            vec![
                limit(
                    head()
                        .into_iter()
                        .chain([request_header(header, "tier", false)])
                        .collect(),
                ),
                limit(head().into_iter().chain([unknown_tier]).collect()),
            ]
        }
    }
}

fn entry(key: &str, value: &str) -> Entry {
    Entry {
        key: key.to_string(),
        value: value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use tollgate_proto::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
    use tollgate_routes::policy::{LimitAlgorithm, LimitKey, Per};

    use super::*;

    fn local(id: &str, key: LimitKey, quota: LimitQuota, burst: Option<u64>) -> RateLimitRule {
        RateLimitRule {
            id: id.to_string(),
            key,
            quota,
            burst,
            algorithm: LimitAlgorithm::TokenBucket,
            mode: LimitMode::Local { max_keys: 500 },
        }
    }

    const ONE: NonZeroU32 = NonZeroU32::MIN;

    fn flat(requests: u64, per: Per) -> LimitQuota {
        LimitQuota::Flat(Quota { requests, per })
    }

    fn decoded(any: &Any) -> LocalRateLimit {
        LocalRateLimit::decode(any.value.as_slice()).expect("decodes")
    }

    fn entries(descriptor: &LocalRateLimitDescriptor) -> Vec<String> {
        descriptor
            .entries
            .iter()
            .map(|e| format!("{}={}", e.key, e.value))
            .collect()
    }

    #[test]
    fn a_rule_becomes_a_wildcard_descriptor_over_its_key() {
        let rule = local("per-ip", LimitKey::ClientIp, flat(100, Per::Second), None);
        let config = decoded(&per_route("catalogue", &[&rule], ONE));
        assert_eq!(config.descriptors.len(), 1);
        assert_eq!(
            entries(&config.descriptors[0]),
            ["route=catalogue", "rule=per-ip", "remote_address="],
            "an empty value is Envoy's wildcard: a bucket per address"
        );
        let actions = &config.rate_limits[0].actions;
        assert!(matches!(
            actions[2].action_specifier,
            Some(ActionSpecifier::RemoteAddress(_))
        ));
    }

    #[test]
    fn requests_per_window_refill_continuously_and_burst_is_the_bucket_size() {
        let rule = local(
            "per-ip",
            LimitKey::ClientIp,
            flat(100, Per::Minute),
            Some(250),
        );
        let bucket = decoded(&per_route("r", &[&rule], ONE)).descriptors[0].token_bucket;
        assert_eq!(
            bucket,
            Some(TokenBucket {
                max_tokens: 250,
                tokens_per_fill: Some(UInt32Value { value: 100 }),
                fill_interval: Some(proto_duration(std::time::Duration::from_secs(60))),
            })
        );
        let no_burst = local("per-ip", LimitKey::ClientIp, flat(100, Per::Minute), None);
        let bucket = decoded(&per_route("r", &[&no_burst], ONE)).descriptors[0].token_bucket;
        assert_eq!(bucket.map(|b| b.max_tokens), Some(100), "a window's quota");
    }

    #[test]
    fn a_share_is_the_budget_over_the_envoys_rounded_up_and_never_zero() {
        let envoys = |n: u32| NonZeroU32::new(n).expect("non-zero");
        assert_eq!(
            share(60, envoys(1)),
            60,
            "one Envoy alone gets the whole budget"
        );
        assert_eq!(share(60, envoys(3)), 20);
        assert_eq!(share(60, envoys(4)), 15);
        assert_eq!(share(100, envoys(3)), 34, "rounded up: 3 x 34 = 102");
        assert_eq!(share(2, envoys(5)), 1, "every Envoy admits at least one");
        assert_eq!(share(u64::MAX, envoys(2)), u64::MAX / 2 + 1);
    }

    #[test]
    fn a_shared_rule_divides_both_its_bucket_and_its_refill() {
        let rule = local(
            "per-ip",
            LimitKey::ClientIp,
            flat(90, Per::Minute),
            Some(300),
        );
        let three = NonZeroU32::new(3).expect("non-zero");
        let bucket = decoded(&per_route("r", &[&rule], three)).descriptors[0].token_bucket;
        assert_eq!(
            bucket,
            Some(TokenBucket {
                max_tokens: 100,
                tokens_per_fill: Some(UInt32Value { value: 30 }),
                fill_interval: Some(proto_duration(std::time::Duration::from_secs(60))),
            }),
            "the window stays; its count and the burst are a third each"
        );
        let default_bucket = decoded(&per_route("r", &[&rule], three)).token_bucket;
        assert_eq!(
            default_bucket.map(|b| b.max_tokens),
            Some(u32::MAX),
            "the bucket for requests without the key is not a budget to share"
        );
    }

    #[test]
    fn the_filter_is_enforced_with_the_global_filters_reply_headers() {
        let rule = local("c", LimitKey::Consumer, flat(5, Per::Second), None);
        let config = decoded(&per_route("r", &[&rule], ONE));
        let percent = |p: &Option<RuntimeFractionalPercent>| {
            p.as_ref()
                .and_then(|p| p.default_value)
                .map(|v| (v.numerator, v.denominator))
        };
        let all = Some((100, DenominatorType::Hundred as i32));
        assert_eq!(percent(&config.filter_enabled), all);
        assert_eq!(percent(&config.filter_enforced), all);
        assert_eq!(
            config.enable_x_ratelimit_headers,
            XRateLimitHeadersRfcVersion::DraftVersion03 as i32
        );
        assert!(config.enable_retry_after_header);
        let marks: Vec<_> = config
            .response_headers_to_add
            .iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| (h.key.as_str(), h.value.as_str()))
            .collect();
        assert_eq!(
            marks,
            [("x-envoy-ratelimited", "true")],
            "as the ratelimit filter marks its refusals"
        );
        assert_eq!(
            config.always_consume_default_token_bucket,
            Some(BoolValue { value: false }),
            "a matched rule must not also spend the default bucket"
        );
        assert_eq!(
            config.token_bucket.map(|b| b.max_tokens),
            Some(u32::MAX),
            "the default bucket never refuses a request without the key"
        );
    }

    #[test]
    fn the_route_keeps_as_many_keys_as_its_most_generous_rule_asks() {
        let mut small = local("a", LimitKey::ClientIp, flat(5, Per::Second), None);
        small.mode = LimitMode::Local { max_keys: 50 };
        let mut large = local("b", LimitKey::Consumer, flat(5, Per::Second), None);
        large.mode = LimitMode::Local { max_keys: 70_000 };
        let config = decoded(&per_route("r", &[&small, &large], ONE));
        assert_eq!(
            config.max_dynamic_descriptors,
            Some(UInt32Value { value: 70_000 })
        );
        assert_eq!(config.descriptors.len(), 2);
    }

    #[test]
    fn a_tiered_rule_has_a_bucket_per_tier_and_the_strictest_for_missing_or_unknown_tiers() {
        let tiers = [
            (
                "free".to_string(),
                Quota {
                    requests: 2,
                    per: Per::Minute,
                },
            ),
            (
                "premium.plus".to_string(),
                Quota {
                    requests: 10,
                    per: Per::Minute,
                },
            ),
        ];
        let rule = local(
            "t",
            LimitKey::Consumer,
            LimitQuota::Tiered {
                header: "x-consumer-tier".to_string(),
                tiers: tiers.into_iter().collect(),
            },
            None,
        );
        let config = decoded(&per_route("r", &[&rule], ONE));
        let described: Vec<_> = config.descriptors.iter().map(entries).collect();
        assert_eq!(
            described,
            [
                ["route=r", "rule=t", "consumer=", "tier=free"],
                ["route=r", "rule=t", "consumer=", "tier=premium.plus"],
            ]
        );
        assert_eq!(config.rate_limits.len(), 2);
        let Some(ActionSpecifier::HeaderValueMatch(unknown)) =
            &config.rate_limits[1].actions[3].action_specifier
        else {
            panic!("a header value match for tiers the rule does not know")
        };
        assert_eq!(
            (
                unknown.descriptor_key.as_str(),
                unknown.descriptor_value.as_str()
            ),
            ("tier", "free")
        );
        assert_eq!(unknown.expect_match, Some(BoolValue { value: false }));
        let Some(HeaderMatchSpecifier::StringMatch(matcher)) =
            &unknown.headers[0].header_match_specifier
        else {
            panic!("a string matcher")
        };
        assert_eq!(
            matcher.match_pattern,
            Some(MatchPattern::SafeRegex(regex_matcher(
                r"(?:free|premium\.plus)".to_string()
            ))),
            "tier names are matched literally"
        );
    }
}
