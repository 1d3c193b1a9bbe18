//! In-process service instances on 127.0.0.1:0 reached through tonic clients, for the tests
//! against a Redis and against a Redis Cluster (both from tollgate-testkit).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tollgate_proto::envoy::service::ratelimit::v3::rate_limit_response::Code;
use tollgate_proto::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use tollgate_proto::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tollgate_ratelimit::algorithm::ManualClock;
use tollgate_ratelimit::limits::DescriptorTree;
use tollgate_ratelimit::metrics::Metrics;
use tollgate_ratelimit::server;
use tollgate_ratelimit::service::{CurrentLimits, LimitSet, RateLimiter};
use tollgate_ratelimit::store::redis::{RedisStore, RedisTarget};
use tollgate_testkit::rate_limit::call;
use tonic::transport::Channel;

/// Generous: CI machines are slow, and nothing here waits unless something is wrong.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// One in-process service instance; stops when dropped.
pub struct Instance {
    pub store: Arc<RedisStore>,
    pub client: RateLimitServiceClient<Channel>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// An instance on any Redis target, returned once its store has loaded the scripts: a
/// cluster connection is made in the background, so until then loading fails and is retried.
pub async fn instance_on(
    target: &RedisTarget,
    tree: DescriptorTree,
    clock: ManualClock,
    timeout: Duration,
) -> Instance {
    let store = Arc::new(RedisStore::connect(target, timeout).expect("valid url"));
    let deadline = Instant::now() + PATIENCE;
    while let Err(error) = store.load_scripts().await {
        assert!(Instant::now() < deadline, "scripts did not load: {error}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = Metrics::unregistered();
    let limiter = RateLimiter::new(
        CurrentLimits::new(LimitSet::new(tree, &metrics)),
        store.clone(),
        clock,
        metrics,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(listener, limiter, async {
        let _ = stopped.await;
    }));
    let client = RateLimitServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connects");
    Instance {
        store,
        client,
        _stop: stop,
    }
}

/// The limits an integrated routes.yaml text declares.
pub fn routes_tree(yaml: &str) -> DescriptorTree {
    match tollgate_routes::parse("routes.yaml", yaml) {
        Ok(config) => tollgate_ratelimit::limits::routes::build(&config),
        Err(e) => panic!("{e}"),
    }
}

/// Decisions as (admitted, over limit); any call that failed fails the test.
pub fn tally(responses: Vec<Result<RateLimitResponse, tonic::Status>>) -> (usize, usize) {
    let codes: Vec<i32> = responses
        .into_iter()
        .map(|r| r.expect("a decision").overall_code)
        .collect();
    let ok = codes.iter().filter(|&&c| c == Code::Ok as i32).count();
    let over = codes
        .iter()
        .filter(|&&c| c == Code::OverLimit as i32)
        .count();
    (ok, over)
}

/// `calls` concurrent requests, alternating between `a` and `b`: (admitted, over limit).
pub async fn race(
    a: &Instance,
    b: &Instance,
    r: &RateLimitRequest,
    calls: usize,
) -> (usize, usize) {
    race_among(&[a, b], r, calls).await
}

/// `calls` concurrent requests, spread in turn over `instances`: (admitted, over limit).
pub async fn race_among(
    instances: &[&Instance],
    r: &RateLimitRequest,
    calls: usize,
) -> (usize, usize) {
    let calls = (0..calls).map(|i| call(&instances[i % instances.len()].client, r));
    tally(futures::future::join_all(calls).await)
}

/// Now, as the service's clock would say, so that keys look like production ones.
pub fn clock_now() -> ManualClock {
    ManualClock::at(tollgate_ratelimit::algorithm::unix_micros(
        std::time::SystemTime::now(),
    ))
}
