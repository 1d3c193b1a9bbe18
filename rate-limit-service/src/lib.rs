//! Tollgate's rate limit service: Envoy's global rate limit API
//! (`envoy.service.ratelimit.v3.RateLimitService`) over counters in Redis or in memory.
//!
//! Limits come from routes.yaml (integrated mode, [`limits::routes`]) or from
//! envoyproxy/ratelimit's own files (drop-in mode, [`limits::dropin`]); both become one
//! [`limits::DescriptorTree`]. [`algorithm`] holds the window arithmetic with an injected
//! clock, [`store`] the counters, [`service`] the gRPC implementation, [`server`] the
//! sockets, reloads and shutdown, [`settings`] the flags, [`cli`] the program.
#![forbid(unsafe_code)]

pub mod algorithm;
pub mod cli;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod service;
pub mod settings;
pub mod store;
