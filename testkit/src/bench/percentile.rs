//! The latency quantile every bench reports.

use std::time::Duration;

/// The `p` quantile of `sorted` by nearest rank (the smallest value with at least `p` of
/// the samples at or below it), so every bench's p50 and p99 mean the same thing.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
