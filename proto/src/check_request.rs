//! The parts of Envoy's `CheckRequest` a check reads, decoded straight off the wire.
//!
//! envoy-types' generated `CheckRequest` decodes everything Envoy sends: the peers'
//! addresses, the request time, and every map (headers, context extensions) into a
//! `HashMap` of owned strings hashed with SipHash. A check reads the route's context
//! extensions, one or two headers, the path and, for client certificates, the peer's
//! certificate. These messages declare only those fields, under the field numbers of
//! `envoy.service.auth.v3.AttributeContext`, so they read the same bytes and skip the rest. A protobuf map is on the wire a repeated message of
//! key (1) and value (2), so each map here is a list of [`Entry`]; as when a map is
//! decoded, the last entry for a key wins. Their keys and values are `bytes` on the wire
//! as `string`s are, and kept as slices of the received message rather than copied; a value
//! that is not UTF-8 reads as absent, where decoding it as a `string` would have failed the
//! whole call.

use bytes::Bytes;

use crate::envoy::config::core::v3::HeaderMap;

/// `envoy.service.auth.v3.CheckRequest`, the parts a check reads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckCall {
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<Attributes>,
}

/// `AttributeContext`: `source` (1), `request` (4) and `context_extensions` (10).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Attributes {
    #[prost(message, optional, tag = "1")]
    pub source: Option<PeerAttributes>,
    #[prost(message, optional, tag = "4")]
    pub request: Option<RequestAttributes>,
    #[prost(message, repeated, tag = "10")]
    pub context_extensions: Vec<Entry>,
}

/// `AttributeContext.Peer`: `certificate` (5), the client's verified certificate, PEM and
/// URL-encoded, which Envoy sends when its `include_peer_certificate` is on.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PeerAttributes {
    #[prost(bytes = "bytes", tag = "5")]
    pub certificate: Bytes,
}

/// `AttributeContext.Request`: `http` (2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RequestAttributes {
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpAttributes>,
}

/// `AttributeContext.HttpRequest`: `headers` (3), `path` (4) and `header_map` (13), which
/// Envoy fills instead of `headers` when its `encode_raw_headers` is on.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpAttributes {
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<Entry>,
    #[prost(string, tag = "4")]
    pub path: String,
    #[prost(message, optional, tag = "13")]
    pub header_map: Option<HeaderMap>,
}

/// One entry of a `map<string, string>`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// The value of `key` in a map's entries: the last one, as a decoded map keeps.
pub fn lookup<'a>(entries: &'a [Entry], key: &str) -> Option<&'a str> {
    entries
        .iter()
        .rev()
        .find(|entry| entry.key == key.as_bytes())
        .and_then(|entry| std::str::from_utf8(&entry.value).ok())
}

impl CheckCall {
    /// A context extension the control plane set on the route.
    pub fn context(&self, key: &str) -> Option<&str> {
        lookup(&self.attributes.as_ref()?.context_extensions, key)
    }

    /// The client certificate Envoy verified, as it sends it (URL-encoded PEM); `None`
    /// without one or when Envoy was not asked to send it.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        let certificate = &self.attributes.as_ref()?.source.as_ref()?.certificate;
        (!certificate.is_empty()).then_some(certificate.as_ref())
    }

    pub fn http(&self) -> Option<&HttpAttributes> {
        self.attributes.as_ref()?.request.as_ref()?.http.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::envoy::config::core::v3::{
        address, socket_address, Address, HeaderValue, Metadata, SocketAddress,
    };
    use crate::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
    use crate::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    use crate::google::protobuf::Timestamp;
    use prost::Message as _;

    use super::*;

    fn peer(ip: &str, port: u32) -> Option<Peer> {
        Some(Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: ip.into(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                    ..Default::default()
                })),
            }),
            principal: "spiffe://peer".into(),
            certificate: format!("-----BEGIN%20CERTIFICATE-----%0A{ip}%0A"),
            ..Default::default()
        })
    }

    /// What Envoy sends for a request, everything filled in.
    fn full_request() -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: peer("10.0.0.7", 51234),
                destination: peer("10.0.0.1", 8080),
                request: Some(Request {
                    time: Some(Timestamp {
                        seconds: 1_790_000_000,
                        nanos: 5,
                    }),
                    http: Some(HttpRequest {
                        id: "1234".into(),
                        method: "GET".into(),
                        headers: HashMap::from([
                            ("authorization".into(), "Bearer a.b.c".into()),
                            ("x-request-id".into(), "req-1".into()),
                            (":authority".into(), "api.example.com".into()),
                        ]),
                        path: "/v1/invoices?access_token=q".into(),
                        host: "api.example.com".into(),
                        scheme: "https".into(),
                        protocol: "HTTP/1.1".into(),
                        size: 0,
                        header_map: Some(HeaderMap {
                            headers: vec![HeaderValue {
                                key: "cookie".into(),
                                raw_value: b"session=s".to_vec(),
                                ..Default::default()
                            }],
                        }),
                        ..Default::default()
                    }),
                }),
                context_extensions: HashMap::from([
                    ("route".into(), "invoices".into()),
                    ("provider".into(), "main".into()),
                    ("scopes".into(), "invoices:read".into()),
                ]),
                metadata_context: Some(Metadata::default()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn what_a_check_reads_decodes_as_envoy_types_decodes_it() {
        let full = full_request();
        let call = CheckCall::decode(full.encode_to_vec().as_slice()).expect("decodes");
        let attributes = full.attributes.as_ref().expect("attributes");
        for (key, value) in &attributes.context_extensions {
            assert_eq!(call.context(key), Some(value.as_str()), "{key}");
        }
        let expected = attributes
            .request
            .as_ref()
            .and_then(|r| r.http.as_ref())
            .expect("http");
        let http = call.http().expect("http");
        for (key, value) in &expected.headers {
            assert_eq!(lookup(&http.headers, key), Some(value.as_str()), "{key}");
        }
        assert_eq!(http.headers.len(), expected.headers.len());
        assert_eq!(http.path, expected.path);
        assert_eq!(http.header_map, expected.header_map);
        let source = attributes.source.as_ref().expect("source");
        assert_eq!(call.peer_certificate(), Some(source.certificate.as_bytes()));
    }

    #[test]
    fn a_key_sent_twice_reads_as_its_last_value_as_in_a_decoded_map() {
        let entry = |key: &'static str, value: &'static str| Entry {
            key: key.into(),
            value: value.into(),
        };
        let call = CheckCall {
            attributes: Some(Attributes {
                source: None,
                context_extensions: vec![entry("route", "first"), entry("route", "second")],
                request: None,
            }),
        };
        let bytes = call.encode_to_vec();
        let full = CheckRequest::decode(bytes.as_slice()).expect("decodes");
        let by_map = &full.attributes.expect("attributes").context_extensions["route"];
        let decoded = CheckCall::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(decoded.context("route"), Some(by_map.as_str()));
        assert_eq!(decoded.context("route"), Some("second"));
    }

    #[test]
    fn a_header_that_is_not_utf8_reads_as_absent_and_the_rest_still_reads() {
        let call = CheckCall {
            attributes: Some(Attributes {
                source: None,
                context_extensions: Vec::new(),
                request: Some(RequestAttributes {
                    http: Some(HttpAttributes {
                        headers: vec![
                            Entry {
                                key: "authorization".into(),
                                value: Bytes::from_static(b"Bearer \xff"),
                            },
                            Entry {
                                key: "x-request-id".into(),
                                value: "req-1".into(),
                            },
                        ],
                        ..Default::default()
                    }),
                }),
            }),
        };
        let bytes = call.encode_to_vec();
        assert!(
            CheckRequest::decode(bytes.as_slice()).is_err(),
            "envoy-types refuses the whole request"
        );
        let decoded = CheckCall::decode(bytes.as_slice()).expect("decodes");
        let http = decoded.http().expect("http");
        assert_eq!(lookup(&http.headers, "authorization"), None);
        assert_eq!(lookup(&http.headers, "x-request-id"), Some("req-1"));
    }

    #[test]
    fn a_request_without_attributes_reads_as_empty() {
        let call = CheckCall::decode(&[][..]).expect("decodes");
        assert_eq!(call.context("route"), None);
        assert!(call.http().is_none());
        assert!(call.peer_certificate().is_none());
    }
}
