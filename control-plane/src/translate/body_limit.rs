//! `max_request_bytes`: Envoy's `buffer` HTTP filter, which reads the whole request body
//! before the upstream sees any of it and answers 413 once the body passes the limit.
//!
//! Buffering costs memory and latency and breaks streaming uploads, so the filter is off on
//! the virtual host ([`super::listener::filter_off`]) and switched on only on routes that
//! set a limit.

use tollgate_proto::envoy::extensions::filters::http::buffer::v3::{
    buffer_per_route::Override, Buffer, BufferPerRoute,
};
use tollgate_proto::google::protobuf::{Any, UInt32Value};

use super::any;

pub(super) const FILTER_NAME: &str = "envoy.filters.http.buffer";

/// The filter-level limit is required by Envoy but never used: every route overrides it.
/// `largest` is the largest route limit on the listener, so even a route that somehow
/// missed its override stays bounded.
pub(super) fn filter(largest: u32) -> Any {
    any(&buffer(largest))
}

/// The setting of a route that limits its request bodies to `bytes`.
pub(super) fn per_route(bytes: u32) -> Any {
    any(&BufferPerRoute {
        r#override: Some(Override::Buffer(buffer(bytes))),
    })
}

fn buffer(bytes: u32) -> Buffer {
    Buffer {
        max_request_bytes: Some(UInt32Value { value: bytes }),
    }
}
