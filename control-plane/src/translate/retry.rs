//! A route's `retries` as Envoy's route-level retry policy.

use tollgate_proto::envoy::config::route::v3::retry_policy::{
    retry_host_predicate::ConfigType, RetryBackOff, RetryHostPredicate,
};
use tollgate_proto::envoy::config::route::v3::RetryPolicy;
use tollgate_proto::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use tollgate_proto::google::protobuf::UInt32Value;
use tollgate_routes::route_policy::{RetryOn, RetryPolicy as Retries};

use super::{any, proto_duration};

/// How many times Envoy picks again when it picks an endpoint a retry must avoid; past
/// that it takes what it picked (a service with one endpoint is retried on it).
const HOST_SELECTION_ATTEMPTS: i64 = 3;

pub(super) fn retry_policy(retries: &Retries) -> RetryPolicy {
    let mut retry_on: Vec<&str> = Vec::new();
    let mut statuses = Vec::new();
    for condition in &retries.on {
        match condition {
            RetryOn::ServerError => retry_on.push("5xx"),
            RetryOn::GatewayError => retry_on.push("gateway-error"),
            RetryOn::Reset => retry_on.push("reset"),
            RetryOn::ConnectFailure => retry_on.push("connect-failure"),
            RetryOn::Retriable4xx => retry_on.push("retriable-4xx"),
            RetryOn::RefusedStream => retry_on.push("refused-stream"),
            RetryOn::Status(status) => statuses.push(u32::from(*status)),
        }
    }
    if !statuses.is_empty() {
        retry_on.push("retriable-status-codes");
    }
    RetryPolicy {
        retry_on: retry_on.join(","),
        // routes.yaml counts tries, Envoy counts retries after the first try.
        num_retries: Some(UInt32Value {
            value: retries.attempts.saturating_sub(1),
        }),
        per_try_timeout: retries.per_try_timeout.map(proto_duration),
        retriable_status_codes: statuses,
        retry_back_off: Some(RetryBackOff {
            base_interval: Some(proto_duration(retries.backoff.base)),
            max_interval: Some(proto_duration(retries.backoff.max)),
        }),
        // A retry goes to another endpoint than the tries before it: the one that just
        // refused or reset is the likeliest to do it again, and outlier detection may not
        // have ejected it yet.
        retry_host_predicate: vec![RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".to_string(),
            config_type: Some(ConfigType::TypedConfig(any(&PreviousHostsPredicate {}))),
        }],
        host_selection_retry_max_attempts: HOST_SELECTION_ATTEMPTS,
        ..Default::default()
    }
}
