//! RateLimitRequests as the rate-limit service receives them: decoded by prost (the
//! service has no lean decoder of its own: it decodes envoy-types' message, so there is
//! nothing to differ from; see fuzz/README.md) and decided against the envoyproxy/ratelimit
//! README's example configuration on the memory store, at a fixed time. Decoding and
//! deciding never panic, a decoded request encodes back to bytes that decode to it again,
//! and a decision answers one status per descriptor.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tollgate_proto::envoy::service::ratelimit::v3::RateLimitRequest;
use tollgate_ratelimit::algorithm::ManualClock;
use tollgate_ratelimit::limits::dropin::{parse, SourceFile};
use tollgate_ratelimit::metrics::Metrics;
use tollgate_ratelimit::service::{CurrentLimits, LimitSet, RateLimiter};
use tollgate_ratelimit::store::memory::MemoryStore;

/// The example configurations of envoyproxy/ratelimit's README, one domain each: plain,
/// nested, key-only, unlimited, shadow mode, `replaces`, `detailed_metric` and wildcards.
const CONFIGS: [&str; 9] = [
    include_str!("../corpus/ratelimit_dropin/readme-example-1"),
    include_str!("../corpus/ratelimit_dropin/readme-example-2"),
    include_str!("../corpus/ratelimit_dropin/readme-example-3"),
    include_str!("../corpus/ratelimit_dropin/readme-example-4"),
    include_str!("../corpus/ratelimit_dropin/readme-example-5"),
    include_str!("../corpus/ratelimit_dropin/readme-example-6"),
    include_str!("../corpus/ratelimit_dropin/readme-example-7"),
    include_str!("../corpus/ratelimit_dropin/readme-example-8"),
    include_str!("../corpus/ratelimit_dropin/readme-example-9"),
];

struct Fixture {
    runtime: tokio::runtime::Runtime,
    limits: CurrentLimits,
    metrics: Metrics,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let files: Vec<SourceFile> = CONFIGS
            .iter()
            .enumerate()
            .map(|(i, text)| SourceFile {
                name: format!("config{i}.yaml"),
                text: text.to_string(),
            })
            .collect();
        let tree = parse(&files).expect("the README's examples parse");
        let metrics = Metrics::unregistered();
        let limits = CurrentLimits::new(LimitSet::new(tree, &metrics));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        Fixture {
            runtime,
            limits,
            metrics,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(request) = RateLimitRequest::decode(data) else {
        return;
    };
    let again = RateLimitRequest::decode(request.encode_to_vec().as_slice())
        .expect("a decoded request encodes to bytes that decode");
    assert_eq!(again, request);
    let fixture = fixture();
    // A store of its own per input: counts never carry over from one input to the next.
    let limiter = RateLimiter::new(
        fixture.limits.clone(),
        Arc::new(MemoryStore::new()),
        ManualClock::at(1_790_000_000_000_000),
        fixture.metrics.clone(),
    );
    if let Ok(response) = fixture.runtime.block_on(limiter.decide(&request)) {
        assert_eq!(response.statuses.len(), request.descriptors.len());
    }
});
