//! Where counters live: a small trait with an in-memory implementation (one process) and a
//! Redis one (shared by every instance).
//!
//! A store gets every check of one request at once so that Redis can answer them in one
//! round trip. Its errors are values: the service maps them once, at the gRPC boundary, to
//! `UNAVAILABLE`, and Envoy's `failure_mode_deny` decides what the request gets.

pub mod memory;
pub mod over_limit;
pub mod redis;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::algorithm::{Decision, Policy};

/// One descriptor's check: add `hits` to the counter under `key` and judge it by `policy`.
#[derive(Clone, Copy, Debug)]
pub struct Check<'a> {
    /// `domain_key_value_…_` (see [`crate::limits::Match::counter_key`]).
    pub key: &'a str,
    pub policy: &'a Policy,
    /// 0 asks without counting.
    pub hits: u64,
}

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis is not connected: {0}")]
    NotConnected(String),
    #[error("redis command failed: {0}")]
    Command(#[from] ::redis::RedisError),
    #[error("redis script returned {0}")]
    BadReply(String),
}

impl StoreError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::NotConnected(_) => "not_connected",
            StoreError::Command(_) => "command",
            StoreError::BadReply(_) => "bad_reply",
        }
    }
}

/// Counts hits and judges them, for a batch of checks taken at the same `now_us`.
pub trait Store: Send + Sync + 'static {
    /// One decision per check, in order.
    fn check<'a>(
        &'a self,
        checks: &'a [Check<'a>],
        now_us: u64,
    ) -> impl Future<Output = Result<Vec<Decision>, StoreError>> + Send + 'a;

    /// Asks the store whether it can answer, preparing what it needs (Redis: the scripts).
    /// Readiness (`/readyz`, gRPC health) is the last probe's answer alone: decisions that
    /// fail do not flip it, so a Redis Cluster with one node down, where some keys answer
    /// and others do not, reads as one steady state rather than a flicker.
    fn probe(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }

    /// The store a serving thread checks through, made on that thread's runtime. A store
    /// whose connections are bound to the runtime that opened them (Redis's) opens its own
    /// here and shares everything else; a call through another runtime's connection would
    /// wake that runtime's thread on every reply. Stores without connections are shared
    /// as they are.
    fn for_this_runtime(self: &Arc<Self>) -> Result<Arc<Self>, StoreError> {
        Ok(Arc::clone(self))
    }
}

/// The key a check's state is stored under. Fixed windows use envoyproxy/ratelimit's key,
/// `domain_key_value_…_windowstart` (seconds), so a drop-in deployment keeps its counters;
/// sliding windows and token buckets keep one key across windows.
pub fn storage_key(check: &Check<'_>, now_us: u64) -> String {
    match check.policy {
        Policy::Fixed(window) => {
            let start = window.window_start_us(now_us) / 1_000_000;
            format!("{}{start}", check.key)
        }
        Policy::Sliding(_) => format!("{}sliding", check.key),
        Policy::TokenBucket(_) => format!("{}bucket", check.key),
    }
}
