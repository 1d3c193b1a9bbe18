//! Envoy's rate-limit requests (`envoy.service.ratelimit.v3`), built and sent as Envoy's
//! `ratelimit` filter would.

use tollgate_proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use tollgate_proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use tollgate_proto::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use tollgate_proto::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tonic::transport::Channel;

/// A descriptor of `(key, value)` entries, in order.
pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..RateLimitDescriptor::default()
    }
}

/// A request for `domain`'s limits, one hit per descriptor.
pub fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors,
        hits_addend: 0,
    }
}

/// One `ShouldRateLimit` call: the decision, or the gRPC status the call failed with.
pub async fn call(
    client: &RateLimitServiceClient<Channel>,
    request: &RateLimitRequest,
) -> Result<RateLimitResponse, tonic::Status> {
    client
        .clone()
        .should_rate_limit(request.clone())
        .await
        .map(tonic::Response::into_inner)
}
