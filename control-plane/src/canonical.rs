//! One encoding per configuration: protobuf bytes with every map's entries in sorted order.
//!
//! Protobuf maps are `HashMap`s in the generated types, and prost writes their entries in
//! iteration order, which depends on a hasher keyed at random by each process. Two
//! control-plane replicas translating the same routes.yaml would then encode the same
//! resources differently, give them different versions, and an Envoy moving between them
//! would be sent everything again. The protobuf wire format allows a map's entries in any
//! order, so the fix is at the byte level: [`encode`] walks an encoded resource along a
//! [`Shape`] (where maps can hide, by field number) and sorts each map's entries by their
//! own canonical bytes, which leaves the message equal and its bytes one function of it.
//!
//! The shapes cover every map the translation fills: `typed_per_filter_config` on virtual
//! hosts, routes and weighted clusters; ext_authz's `context_extensions` and RBAC's
//! `policies` inside those (reached through `Any`, by type URL); jwt_authn's providers and
//! requirements; the JSON `Struct`s of the access log, local replies, direct responses and
//! route metadata; a cluster's protocol options. A map added
//! elsewhere must be added here: `translate`'s tests build each map with its own hasher, so
//! one missed here shows up as a version that changes between two translations.

use std::sync::LazyLock;

use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, WireType};
use prost::{Message, Name};
use tollgate_proto::envoy::config::accesslog::v3::AccessLog;
use tollgate_proto::envoy::config::cluster::v3::Cluster;
use tollgate_proto::envoy::config::listener::v3::Listener;
use tollgate_proto::envoy::config::route::v3::RouteConfiguration;
use tollgate_proto::envoy::extensions::access_loggers::file::v3::FileAccessLog;
use tollgate_proto::envoy::extensions::access_loggers::stream::v3::StdoutAccessLog;
use tollgate_proto::envoy::extensions::filters::http::ext_authz::v3::ExtAuthzPerRoute;
use tollgate_proto::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication;
use tollgate_proto::envoy::extensions::filters::http::rbac::v3::{Rbac, RbacPerRoute};
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;

/// Where maps can be found in one message type, by field number (from Envoy's protos).
#[derive(Debug)]
struct Shape {
    /// Map fields, each with the shape of its entries (a message of key 1 and value 2).
    maps: &'static [(u32, &'static Shape)],
    /// Fields holding messages (singular or repeated) with maps somewhere below.
    messages: &'static [(u32, &'static Shape)],
    /// Fields holding a `google.protobuf.Any`, followed by its type URL.
    anys: &'static [u32],
}

const fn shape(
    maps: &'static [(u32, &'static Shape)],
    messages: &'static [(u32, &'static Shape)],
    anys: &'static [u32],
) -> Shape {
    Shape {
        maps,
        messages,
        anys,
    }
}

/// Entries whose values hold no map: taken as they are.
static PLAIN_ENTRY: Shape = shape(&[], &[], &[]);
/// Entries whose values are `Any`s.
static ANY_ENTRY: Shape = shape(&[], &[], &[2]);

// google.protobuf.Struct / Value / ListValue: JSON formats.
static STRUCT: Shape = shape(&[(1, &STRUCT_ENTRY)], &[], &[]);
static STRUCT_ENTRY: Shape = shape(&[], &[(2, &JSON_VALUE)], &[]);
static JSON_VALUE: Shape = shape(&[], &[(5, &STRUCT), (6, &JSON_LIST)], &[]);
static JSON_LIST: Shape = shape(&[], &[(1, &JSON_VALUE)], &[]);
// envoy.config.core.v3.SubstitutionFormatString: json_format.
static FORMAT_STRING: Shape = shape(&[], &[(2, &STRUCT)], &[]);

// envoy.config.route.v3: RouteConfiguration.virtual_hosts; VirtualHost's
// typed_per_filter_config and routes; Route's typed_per_filter_config, route and
// direct_response; RouteAction.weighted_clusters; WeightedCluster.clusters;
// ClusterWeight.typed_per_filter_config; DirectResponseAction.body_format.
static ROUTE_CONFIGURATION: Shape = shape(&[], &[(2, &VIRTUAL_HOST)], &[]);
static VIRTUAL_HOST: Shape = shape(&[(15, &ANY_ENTRY)], &[(3, &ROUTE)], &[]);
static ROUTE: Shape = shape(
    &[(13, &ANY_ENTRY)],
    &[(2, &ROUTE_ACTION), (4, &METADATA), (7, &DIRECT_RESPONSE)],
    &[],
);
// envoy.config.core.v3.Metadata.filter_metadata: Structs by namespace.
static METADATA: Shape = shape(&[(1, &METADATA_ENTRY)], &[], &[]);
static METADATA_ENTRY: Shape = shape(&[], &[(2, &STRUCT)], &[]);
static ROUTE_ACTION: Shape = shape(&[], &[(3, &WEIGHTED_CLUSTER)], &[]);
static WEIGHTED_CLUSTER: Shape = shape(&[], &[(1, &CLUSTER_WEIGHT)], &[]);
static CLUSTER_WEIGHT: Shape = shape(&[(10, &ANY_ENTRY)], &[], &[]);
static DIRECT_RESPONSE: Shape = shape(&[], &[(3, &FORMAT_STRING)], &[]);

// envoy.config.listener.v3: Listener.filter_chains and default_filter_chain;
// FilterChain.filters; Filter.typed_config.
static LISTENER: Shape = shape(&[], &[(3, &FILTER_CHAIN), (25, &FILTER_CHAIN)], &[]);
static FILTER_CHAIN: Shape = shape(&[], &[(3, &NETWORK_FILTER)], &[]);
static NETWORK_FILTER: Shape = shape(&[], &[], &[4]);

// HttpConnectionManager: route_config (inline), http_filters, access_log,
// local_reply_config; HttpFilter.typed_config; LocalReplyConfig.mappers and body_format;
// ResponseMapper.body_format_override; AccessLog.typed_config.
static CONNECTION_MANAGER: Shape = shape(
    &[],
    &[
        (4, &ROUTE_CONFIGURATION),
        (5, &HTTP_FILTER),
        (13, &ACCESS_LOG),
        (38, &LOCAL_REPLY),
    ],
    &[],
);
static HTTP_FILTER: Shape = shape(&[], &[], &[4]);
static ACCESS_LOG: Shape = shape(&[], &[], &[4]);
static LOCAL_REPLY: Shape = shape(&[], &[(1, &RESPONSE_MAPPER), (2, &FORMAT_STRING)], &[]);
static RESPONSE_MAPPER: Shape = shape(&[], &[(4, &FORMAT_STRING)], &[]);
// FileAccessLog.log_format; StdoutAccessLog.log_format.
static FILE_ACCESS_LOG: Shape = shape(&[], &[(5, &FORMAT_STRING)], &[]);
static STDOUT_ACCESS_LOG: Shape = shape(&[], &[(1, &FORMAT_STRING)], &[]);

// ExtAuthzPerRoute.check_settings; CheckSettings.context_extensions.
static EXT_AUTHZ_PER_ROUTE: Shape = shape(&[], &[(2, &CHECK_SETTINGS)], &[]);
static CHECK_SETTINGS: Shape = shape(&[(1, &PLAIN_ENTRY)], &[], &[]);
// RBACPerRoute.rbac; RBAC (the filter).rules; config.rbac.v3.RBAC.policies.
static RBAC_PER_ROUTE: Shape = shape(&[], &[(2, &RBAC_FILTER)], &[]);
static RBAC_FILTER: Shape = shape(&[], &[(1, &RBAC_RULES)], &[]);
static RBAC_RULES: Shape = shape(&[(2, &PLAIN_ENTRY)], &[], &[]);

// JwtAuthentication.providers and requirement_map.
static JWT_AUTHN: Shape = shape(&[(1, &PLAIN_ENTRY), (5, &PLAIN_ENTRY)], &[], &[]);

// Cluster.typed_extension_protocol_options.
static CLUSTER: Shape = shape(&[(36, &ANY_ENTRY)], &[], &[]);

/// The shape of a message by its type URL; `None` for a type that holds no map.
fn shape_of(type_url: &str) -> Option<&'static Shape> {
    static BY_TYPE_URL: LazyLock<Vec<(String, &'static Shape)>> = LazyLock::new(|| {
        vec![
            (RouteConfiguration::type_url(), &ROUTE_CONFIGURATION),
            (Listener::type_url(), &LISTENER),
            (Cluster::type_url(), &CLUSTER),
            (HttpConnectionManager::type_url(), &CONNECTION_MANAGER),
            (AccessLog::type_url(), &ACCESS_LOG),
            (FileAccessLog::type_url(), &FILE_ACCESS_LOG),
            (StdoutAccessLog::type_url(), &STDOUT_ACCESS_LOG),
            (ExtAuthzPerRoute::type_url(), &EXT_AUTHZ_PER_ROUTE),
            (RbacPerRoute::type_url(), &RBAC_PER_ROUTE),
            (Rbac::type_url(), &RBAC_FILTER),
            (JwtAuthentication::type_url(), &JWT_AUTHN),
        ]
    });
    BY_TYPE_URL
        .iter()
        .find(|(url, _)| url == type_url)
        .map(|(_, shape)| *shape)
}

/// `message`, of type `type_url`, encoded with every map's entries sorted.
pub fn encode(type_url: &str, message: &impl Message) -> Vec<u8> {
    canonical(type_url, message.encode_to_vec())
}

/// `encoded` (a message of type `type_url`) with every map's entries sorted.
///
/// Bytes that do not parse as protobuf are returned as they are: they came from prost, so
/// that does not happen, and sorting only ever saves a push, it never changes meaning.
fn canonical(type_url: &str, encoded: Vec<u8>) -> Vec<u8> {
    match shape_of(type_url) {
        Some(shape) => reorder(&encoded, shape).unwrap_or(encoded),
        None => encoded,
    }
}

/// One field as it appears on the wire.
struct Field<'a> {
    number: u32,
    wire_type: WireType,
    /// The key and the value, as encoded.
    whole: &'a [u8],
    /// For length-delimited fields, the bytes inside.
    inner: &'a [u8],
}

/// The wire does not parse; the caller keeps the bytes it had.
struct Malformed;

fn fields(mut buf: &[u8]) -> Result<Vec<Field<'_>>, Malformed> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let start = buf;
        let (number, wire_type) = decode_key(&mut buf).map_err(|_| Malformed)?;
        let inner: &[u8] = match wire_type {
            WireType::Varint => {
                decode_varint(&mut buf).map_err(|_| Malformed)?;
                &[]
            }
            WireType::SixtyFourBit => skip(&mut buf, 8)?,
            WireType::ThirtyTwoBit => skip(&mut buf, 4)?,
            WireType::LengthDelimited => {
                let len = decode_varint(&mut buf).map_err(|_| Malformed)?;
                skip(&mut buf, usize::try_from(len).map_err(|_| Malformed)?)?
            }
            WireType::StartGroup | WireType::EndGroup => return Err(Malformed),
        };
        let whole = &start[..start.len() - buf.len()];
        out.push(Field {
            number,
            wire_type,
            whole,
            inner,
        });
    }
    Ok(out)
}

fn skip<'a>(buf: &mut &'a [u8], len: usize) -> Result<&'a [u8], Malformed> {
    if buf.len() < len {
        return Err(Malformed);
    }
    let (taken, rest) = buf.split_at(len);
    *buf = rest;
    Ok(taken)
}

fn reorder(encoded: &[u8], shape: &Shape) -> Result<Vec<u8>, Malformed> {
    let fields = fields(encoded)?;
    let mut out = Vec::with_capacity(encoded.len());
    let mut maps_written: Vec<u32> = Vec::new();
    for field in &fields {
        let delimited = field.wire_type == WireType::LengthDelimited;
        if let (true, Some((_, entry_shape))) = (
            delimited,
            shape.maps.iter().find(|(n, _)| *n == field.number),
        ) {
            // Prost writes a map's entries together; all of them go out where the first was.
            if maps_written.contains(&field.number) {
                continue;
            }
            maps_written.push(field.number);
            let mut entries = fields
                .iter()
                .filter(|f| f.number == field.number && f.wire_type == WireType::LengthDelimited)
                .map(|f| reorder(f.inner, entry_shape))
                .collect::<Result<Vec<_>, _>>()?;
            entries.sort();
            for entry in entries {
                put_delimited(&mut out, field.number, &entry);
            }
        } else if let (true, Some((_, inner_shape))) = (
            delimited,
            shape.messages.iter().find(|(n, _)| *n == field.number),
        ) {
            put_delimited(&mut out, field.number, &reorder(field.inner, inner_shape)?);
        } else if delimited && shape.anys.contains(&field.number) {
            put_delimited(&mut out, field.number, &any(field.inner)?);
        } else {
            out.extend_from_slice(field.whole);
        }
    }
    Ok(out)
}

/// An `Any`'s value (2) reordered by the shape its type URL (1) names.
fn any(encoded: &[u8]) -> Result<Vec<u8>, Malformed> {
    let fields = fields(encoded)?;
    let type_url = fields
        .iter()
        .find(|f| f.number == 1 && f.wire_type == WireType::LengthDelimited)
        .and_then(|f| std::str::from_utf8(f.inner).ok());
    let Some(shape) = type_url.and_then(shape_of) else {
        return Ok(encoded.to_vec());
    };
    let mut out = Vec::with_capacity(encoded.len());
    for field in &fields {
        if field.number == 2 && field.wire_type == WireType::LengthDelimited {
            put_delimited(&mut out, 2, &reorder(field.inner, shape)?);
        } else {
            out.extend_from_slice(field.whole);
        }
    }
    Ok(out)
}

fn put_delimited(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    encode_key(number, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::RandomState;
    use std::collections::HashMap;

    use prost::Message;
    use tollgate_proto::envoy::config::core::v3::{
        substitution_format_string, SubstitutionFormatString,
    };
    use tollgate_proto::envoy::config::route::v3::route::Action;
    use tollgate_proto::envoy::config::route::v3::{
        weighted_cluster::ClusterWeight, DirectResponseAction, Route, RouteAction,
        RouteConfiguration, VirtualHost, WeightedCluster,
    };
    use tollgate_proto::envoy::extensions::filters::http::ext_authz::v3::{
        ext_authz_per_route::Override, CheckSettings, ExtAuthzPerRoute,
    };
    use tollgate_proto::google::protobuf::{value::Kind, Any, ListValue, Struct};

    use super::*;

    /// A map of `entries` whose iteration order follows `hasher`.
    fn map<V: Clone>(entries: &[(&str, V)], hasher: &RandomState) -> HashMap<String, V> {
        let mut map = HashMap::with_hasher(hasher.clone());
        map.extend(entries.iter().map(|(k, v)| (k.to_string(), v.clone())));
        map
    }

    fn any<M: Name>(message: &M) -> Any {
        Any {
            type_url: M::type_url(),
            value: message.encode_to_vec(),
        }
    }

    fn json(hasher: &RandomState) -> Struct {
        let text = |t: &str| tollgate_proto::google::protobuf::Value {
            kind: Some(Kind::StringValue(t.into())),
        };
        let inner = Struct {
            fields: map(
                &[("x", text("1")), ("y", text("2")), ("z", text("3"))],
                hasher,
            ),
        };
        let list = ListValue {
            values: vec![tollgate_proto::google::protobuf::Value {
                kind: Some(Kind::StructValue(inner.clone())),
            }],
        };
        let nested = [
            ("a", text("%A%")),
            ("b", text("%B%")),
            ("c", text("%C%")),
            (
                "d",
                tollgate_proto::google::protobuf::Value {
                    kind: Some(Kind::StructValue(inner)),
                },
            ),
            (
                "e",
                tollgate_proto::google::protobuf::Value {
                    kind: Some(Kind::ListValue(list)),
                },
            ),
        ];
        Struct {
            fields: map(&nested, hasher),
        }
    }

    /// A route table with a map at every place the shapes name, built on `hasher`.
    fn routes(hasher: &RandomState) -> RouteConfiguration {
        let context = |route: &str| {
            any(&ExtAuthzPerRoute {
                r#override: Some(Override::CheckSettings(CheckSettings {
                    context_extensions: map(
                        &[
                            ("route", route.to_string()),
                            ("provider", "a b".into()),
                            ("scopes", "read".into()),
                            ("consumers", "x".into()),
                        ],
                        hasher,
                    ),
                    ..Default::default()
                })),
            })
        };
        let per_filter = |route: &str| {
            map(
                &[
                    ("envoy.filters.http.ext_authz", context(route)),
                    ("envoy.filters.http.ratelimit", Any::default()),
                    ("envoy.filters.http.cors", Any::default()),
                ],
                hasher,
            )
        };
        let format = SubstitutionFormatString {
            format: Some(substitution_format_string::Format::JsonFormat(json(hasher))),
            ..Default::default()
        };
        RouteConfiguration {
            name: "public".into(),
            virtual_hosts: vec![VirtualHost {
                name: "all".into(),
                domains: vec!["*".into()],
                typed_per_filter_config: per_filter("host"),
                routes: vec![
                    Route {
                        name: "split".into(),
                        typed_per_filter_config: per_filter("split"),
                        action: Some(Action::Route(RouteAction {
                            cluster_specifier: Some(
                                tollgate_proto::envoy::config::route::v3::route_action::ClusterSpecifier::WeightedClusters(
                                    WeightedCluster {
                                        clusters: vec![ClusterWeight {
                                            name: "one".into(),
                                            typed_per_filter_config: per_filter("weight"),
                                            ..Default::default()
                                        }],
                                        ..Default::default()
                                    },
                                ),
                            ),
                            ..Default::default()
                        })),
                        ..Default::default()
                    },
                    Route {
                        name: "health".into(),
                        action: Some(Action::DirectResponse(DirectResponseAction {
                            status: 200,
                            body: None,
                            body_format: Some(format),
                        })),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// Two hashers under which `build` encodes differently with prost alone.
    fn hashers_that_disagree<M: Message>(build: impl Fn(&RandomState) -> M) -> [RandomState; 2] {
        let first = RandomState::new();
        for _ in 0..1000 {
            let second = RandomState::new();
            if build(&first).encode_to_vec() != build(&second).encode_to_vec() {
                return [first, second];
            }
        }
        panic!("every hasher gave the same encoding: the message holds no map with 2 entries");
    }

    #[test]
    fn equal_route_tables_encode_alike_whatever_their_maps_hashers() {
        // A map place the shapes missed could still iterate alike under one pair of hashers
        // (1 in 6 for 3 entries); under ten pairs, it cannot hide.
        let url = RouteConfiguration::type_url();
        for _ in 0..10 {
            let [a, b] = hashers_that_disagree(routes);
            assert_eq!(encode(&url, &routes(&a)), encode(&url, &routes(&b)));
        }
    }

    /// Every `Any` in a table's per-filter configs, decoded, and taken out of the table: the
    /// bytes inside an `Any` are reordered too, so only what they decode to can compare.
    fn take_contexts(table: &mut RouteConfiguration) -> Vec<Option<ExtAuthzPerRoute>> {
        let host = &mut table.virtual_hosts[0];
        let route = &mut host.routes[0];
        let Some(Action::Route(RouteAction {
            cluster_specifier: Some(
                tollgate_proto::envoy::config::route::v3::route_action::ClusterSpecifier::WeightedClusters(split),
            ),
            ..
        })) = &mut route.action
        else {
            panic!("the first route splits");
        };
        let mut found = Vec::new();
        for map in [
            &mut host.typed_per_filter_config,
            &mut route.typed_per_filter_config,
            &mut split.clusters[0].typed_per_filter_config,
        ] {
            let mut names: Vec<&String> = map.keys().collect();
            names.sort();
            let names: Vec<String> = names.into_iter().cloned().collect();
            for name in names {
                let config = map.get_mut(&name).unwrap();
                found.push(ExtAuthzPerRoute::decode(config.value.as_slice()).ok());
                config.value.clear();
            }
        }
        found
    }

    #[test]
    fn the_canonical_bytes_decode_to_the_same_message() {
        let hasher = RandomState::new();
        let mut original = routes(&hasher);
        let bytes = encode(&RouteConfiguration::type_url(), &original);
        assert_eq!(bytes.len(), original.encoded_len());
        let mut decoded = RouteConfiguration::decode(bytes.as_slice()).unwrap();
        assert_eq!(take_contexts(&mut decoded), take_contexts(&mut original));
        assert_eq!(decoded, original);
    }

    #[test]
    fn types_without_maps_and_garbage_are_left_as_they_are() {
        assert_eq!(
            canonical("type.googleapis.com/other", vec![1, 2, 3]),
            vec![1, 2, 3]
        );
        let url = RouteConfiguration::type_url();
        // A truncated length prefix: not protobuf, so not reordered.
        assert_eq!(
            canonical(&url, vec![0x12, 0x05, 0x01]),
            vec![0x12, 0x05, 0x01]
        );
    }
}
