//! The protobuf messages Tollgate's services speak, read from one place.
//!
//! Envoy's APIs come from envoy-types, re-exported here under its own module tree
//! (`tollgate_proto::envoy::service::auth::v3::CheckRequest`, `tollgate_proto::google::…`),
//! so that every crate names a message the same way and an upgrade of envoy-types is a
//! change to this crate's manifest, not to every service's. Beside them live the messages
//! Tollgate declares itself: lean views of Envoy's messages, which decode only the fields a
//! hot path reads and skip the rest of the same bytes ([`check_request`]).
#![forbid(unsafe_code)]

pub mod check_request;

pub use envoy_types::pb::{envoy, google};
