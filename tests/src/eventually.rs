//! Retrying an assertion until it holds, like linkerd2-proxy's `assert_eventually!`.
//!
//! Everything in these tests converges asynchronously (a file event, a reload, an xDS push,
//! an Envoy listener update), so tests state the end condition and poll for it. The deadline
//! is generous because the machine running the suite is small and busy; a test never fails
//! because something was slow, only because it never happened.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long [`eventually`] keeps retrying.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(30);

/// Pause between attempts: short enough to notice convergence promptly, long enough not to
/// load a 2-core machine with polling.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// Retries `attempt` until it returns `Ok`, for at most [`DEFAULT_PATIENCE`]; then panics
/// with `what` and the last error.
pub async fn eventually<T, F>(what: &str, attempt: F) -> T
where
    F: AsyncFnMut() -> anyhow::Result<T>,
{
    eventually_within(DEFAULT_PATIENCE, what, attempt).await
}

/// Like [`eventually`] with an explicit deadline.
pub async fn eventually_within<T, F>(patience: Duration, what: &str, mut attempt: F) -> T
where
    F: AsyncFnMut() -> anyhow::Result<T>,
{
    let deadline = Instant::now() + patience;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match attempt().await {
            Ok(value) => return value,
            Err(error) if Instant::now() >= deadline => {
                panic!("{what}: still failing after {patience:?} ({attempts} attempts); last error: {error:#}")
            }
            Err(_) => tokio::time::sleep(RETRY_INTERVAL).await,
        }
    }
}

/// Runs `future` with the default patience, panicking with `what` if it does not finish.
pub async fn within_patience<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEFAULT_PATIENCE, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: did not finish within {DEFAULT_PATIENCE:?}"),
    }
}
