//! A listener's `limits` section: each value within what Envoy accepts, defaults for the rest.

use serde_saphyr::Spanned;

use super::{positive_duration, Errors};
use crate::document::ListenerLimitsDoc;
use crate::listener_limits::ListenerLimits;

/// Envoy refuses a larger `max_request_headers_kb` (its HTTP connection manager's bound).
const MAX_REQUEST_HEADERS_KB: u64 = 8192;
/// HTTP/2's largest stream count (RFC 9113 §5.1.2 counts streams in 31 bits).
const MAX_CONCURRENT_STREAMS: u64 = (1 << 31) - 1;
/// 1 GiB per connection: more is a typo, not a buffer (Envoy's field is 32-bit bytes).
const MAX_CONNECTION_BUFFER_KB: u64 = 1 << 20;

pub(super) fn listener_limits(
    doc: Option<&Spanned<ListenerLimitsDoc>>,
    errors: &mut Errors,
) -> ListenerLimits {
    let defaults = ListenerLimits::default();
    let Some(doc) = doc.map(|d| &d.value) else {
        return defaults;
    };
    let in_range = |node: &Option<Spanned<u64>>, field: &str, max: u64, errors: &mut Errors| {
        let node = node.as_ref()?;
        if (1..=max).contains(&node.value) {
            Some(node.value)
        } else {
            errors.at(
                node,
                format!(
                    "{field} {} is out of range: expected 1 to {max}",
                    node.value
                ),
            );
            None
        }
    };
    let to_u32 = |n: u64| u32::try_from(n).ok();
    ListenerLimits {
        max_request_headers_kb: in_range(
            &doc.max_request_headers_kb,
            "max_request_headers_kb",
            MAX_REQUEST_HEADERS_KB,
            errors,
        )
        .and_then(to_u32)
        .unwrap_or(defaults.max_request_headers_kb),
        request_headers_timeout: positive_duration(doc.request_headers_timeout.as_ref(), errors)
            .unwrap_or(defaults.request_headers_timeout),
        stream_idle_timeout: positive_duration(doc.stream_idle_timeout.as_ref(), errors)
            .unwrap_or(defaults.stream_idle_timeout),
        connection_idle_timeout: positive_duration(doc.connection_idle_timeout.as_ref(), errors)
            .unwrap_or(defaults.connection_idle_timeout),
        max_concurrent_streams: in_range(
            &doc.max_concurrent_streams,
            "max_concurrent_streams",
            MAX_CONCURRENT_STREAMS,
            errors,
        )
        .and_then(to_u32)
        .unwrap_or(defaults.max_concurrent_streams),
        max_connections: in_range(&doc.max_connections, "max_connections", u64::MAX, errors)
            .unwrap_or(defaults.max_connections),
        connection_buffer_kb: in_range(
            &doc.connection_buffer_kb,
            "connection_buffer_kb",
            MAX_CONNECTION_BUFFER_KB,
            errors,
        )
        .and_then(to_u32)
        .unwrap_or(defaults.connection_buffer_kb),
    }
}
