//! Tollgate's control plane: routes.yaml in, Envoy configuration out over ADS.
//!
//! `translate` turns a validated config into a [`snapshot::Snapshot`] (pure); `snapshot`
//! holds the current one, its resources encoded by `canonical` so that equal configs give
//! equal bytes in every replica; `xds` speaks the ADS protocol against it; `reload` brings file
//! edits in; `fleet` shares local rate-limit budgets among the connected Envoys; `admin` reports; `bootstrap` tells Envoy where to connect.
#![forbid(unsafe_code)]

pub mod admin;
pub mod bootstrap;
pub mod canonical;
pub mod cli;
pub mod fleet;
pub mod key_sets;
pub mod reload;
pub mod serve;
pub mod snapshot;
pub mod translate;
pub mod xds;
