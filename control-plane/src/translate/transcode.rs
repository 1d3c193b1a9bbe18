//! REST in, gRPC out: Envoy's gRPC-JSON transcoder on the routes with `transcode`.
//!
//! The listener runs the filter switched off; each transcoding route switches it on with its
//! own descriptor set and services, sent inline (`proto_descriptor_bin`), so Envoy needs no
//! file of its own and an edited descriptor set arrives as a route update.

use tollgate_proto::envoy::config::route::v3::FilterConfig;
use tollgate_proto::envoy::extensions::filters::http::grpc_json_transcoder::v3::{
    grpc_json_transcoder::{DescriptorSet, PrintOptions},
    GrpcJsonTranscoder,
};
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use tollgate_proto::google::protobuf::Any;
use tollgate_routes::Transcode;

use super::any;
use super::listener::http_filter;

pub(super) const FILTER_NAME: &str = "envoy.filters.http.grpc_json_transcoder";

fn transcoder(transcode: &Transcode) -> GrpcJsonTranscoder {
    GrpcJsonTranscoder {
        descriptor_set: Some(DescriptorSet::ProtoDescriptorBin(
            transcode.descriptor_set.clone(),
        )),
        services: transcode.services.clone(),
        // The route the REST request matched stays its route: the gRPC path the filter
        // writes would otherwise be matched again, against routes written for REST.
        match_incoming_request_route: true,
        // A gRPC error reaches a REST client as its HTTP status and a JSON body.
        convert_grpc_status: true,
        print_options: Some(PrintOptions {
            // A zero, an empty string or false is still a field of the answer.
            always_print_primitive_fields: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The listener's filter, off unless a route turns it on. Envoy wants a valid configuration
/// even for a filter that is off: the first transcoding route's.
pub(super) fn filter(first: &Transcode) -> HttpFilter {
    let mut filter = http_filter(FILTER_NAME, any(&transcoder(first)));
    filter.disabled = true;
    filter
}

/// Turns the filter on for one route, with the route's own descriptor set and services.
pub(super) fn per_route(transcode: &Transcode) -> Any {
    any(&FilterConfig {
        config: Some(any(&transcoder(transcode))),
        is_optional: false,
        disabled: false,
    })
}
