//! Retrying an assertion until it holds, like linkerd2-proxy's `assert_eventually!`.
//!
//! Everything in these tests converges asynchronously (a file event, a reload, an xDS push,
//! an Envoy listener update), so tests state the end condition and poll for it. The deadline
//! is generous because the machine running the suite is small and busy; a test never fails
//! because something was slow, only because it never happened.

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
    let started = Instant::now();
    let deadline = started + patience;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match attempt().await {
            Ok(value) => {
                // Not an assertion: a hint, shown with a failing test's output, of where
                // a slow test spends its time.
                eprintln!(
                    "{what}: ok after {:?} ({attempts} attempts)",
                    started.elapsed()
                );
                return value;
            }
            Err(error) if Instant::now() >= deadline => {
                panic!("{what}: still failing after {patience:?} ({attempts} attempts); last error: {error:#}")
            }
            Err(_) => tokio::time::sleep(RETRY_INTERVAL).await,
        }
    }
}
