//! What one client may ask of a listener: header size and time, streams, connections and the
//! bytes buffered for each. The defaults follow Envoy's "Configuring Envoy as an edge proxy"
//! (Envoy's own defaults are chosen for a service mesh, where every peer is trusted); a
//! listener's `limits` section changes them.

use std::time::Duration;

/// A listener's `limits` section, with every value filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Request headers larger than this, in KiB, are answered 431.
    pub max_request_headers_kb: u32,
    /// A client must have sent all of its request headers within this time of the request's
    /// first byte, or the connection is closed: a slow-headers client (Slowloris) holds a
    /// connection for no longer.
    pub request_headers_timeout: Duration,
    /// A stream (request) on which no bytes move for this long is ended; a route's own
    /// `idle_timeout` overrides it.
    pub stream_idle_timeout: Duration,
    /// A connection with no request open for this long is closed.
    pub connection_idle_timeout: Duration,
    /// HTTP/2 streams one client connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Client connections the listener holds open at once; more are closed on accept.
    pub max_connections: u64,
    /// Bytes, in KiB, buffered for each client connection before Envoy stops reading from it
    /// (a route's `max_request_bytes` raises it for the bodies the buffer filter collects).
    pub connection_buffer_kb: u32,
}

impl ListenerLimits {
    /// Envoy's default, well above what browsers send; RFC 9110 sets no limit.
    pub const DEFAULT_MAX_REQUEST_HEADERS_KB: u32 = 60;
    /// Ample for any client on a slow link (60 KiB of headers at 64 kbit/s take 8 s), short
    /// enough that an idle socket is not held for minutes.
    pub const DEFAULT_REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(10);
    /// The edge recommendation (5 min), which is also Envoy's default.
    pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    /// The edge recommendation (1 h), which is also Envoy's default.
    pub const DEFAULT_CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
    /// The edge recommendation; Envoy's own default is 2^31 - 1.
    pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;
    /// A fifth of the whole Envoy's cap (`--max-connections`, 50,000): a flood on one
    /// listener leaves room for the others.
    pub const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;
    /// The edge recommendation, 32 KiB; Envoy's own default is 1 MiB.
    pub const DEFAULT_CONNECTION_BUFFER_KB: u32 = 32;
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_request_headers_kb: Self::DEFAULT_MAX_REQUEST_HEADERS_KB,
            request_headers_timeout: Self::DEFAULT_REQUEST_HEADERS_TIMEOUT,
            stream_idle_timeout: Self::DEFAULT_STREAM_IDLE_TIMEOUT,
            connection_idle_timeout: Self::DEFAULT_CONNECTION_IDLE_TIMEOUT,
            max_concurrent_streams: Self::DEFAULT_MAX_CONCURRENT_STREAMS,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            connection_buffer_kb: Self::DEFAULT_CONNECTION_BUFFER_KB,
        }
    }
}
