//! Fixtures Tollgate's tests and benches share, so that each is written once: JWT signing
//! keys, JWKS documents and tokens minted by hand ([`jwt`]), loopback ports ([`ports`]),
//! guards that own the processes a test starts ([`process`]), a `redis-server` and a Redis
//! Cluster of them ([`redis`]), Envoy rate-limit requests ([`rate_limit`]), and what the
//! benches measure with ([`bench`]). A dev-dependency of the service crates and a
//! dependency of the conformance crate, never of a service: nothing here ships.
#![forbid(unsafe_code)]

pub mod bench;
pub mod jwt;
pub mod ports;
pub mod process;
pub mod rate_limit;
pub mod redis;
