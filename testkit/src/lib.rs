//! Fixtures Tollgate's tests and benches share, so that each is written once: JWT signing
//! keys, JWKS documents and tokens minted by hand ([`jwt`]), loopback ports ([`ports`]),
//! guards that own the processes a test starts ([`process`]), on loopback or in a network
//! namespace ([`host`]), a `redis-server`, a Redis Cluster of them and Redis Sentinel
//! ([`redis`]), Envoy rate-limit requests ([`rate_limit`]), and what the benches measure
//! with ([`bench`]). A dev-dependency of the service crates and a
//! dependency of the conformance crate, never of a service: nothing here ships.
#![forbid(unsafe_code)]

pub mod bench;
pub mod host;
pub mod jwt;
pub mod ports;
pub mod process;
pub mod rate_limit;
pub mod redis;
