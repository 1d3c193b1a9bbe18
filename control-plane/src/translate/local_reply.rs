//! Every reply Envoy makes itself gets a small JSON body and a JSON content type, as an API's
//! clients expect: `{"error":"service unavailable","request_id":"…"}`.
//!
//! Only the statuses Envoy itself produces are mapped. ext-authz's 401 and 403 are left
//! alone: ext-authz already answers those with a JSON body and `WWW-Authenticate`, which a
//! catch-all body format would overwrite. Any other 403 (an `allow_ips` refusal) is mapped.

use tollgate_proto::envoy::config::accesslog::v3::{
    access_log_filter::FilterSpecifier, comparison_filter::Op, AccessLogFilter, AndFilter,
    ComparisonFilter, ResponseFlagFilter, StatusCodeFilter,
};
use tollgate_proto::envoy::config::core::v3::RuntimeUInt32;
use tollgate_proto::envoy::config::core::v3::SubstitutionFormatString;
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    LocalReplyConfig, ResponseMapper,
};

use super::json_format::json_format;

/// Status → the error text the client sees.
const ERRORS: [(u32, &str); 10] = [
    (400, "bad request"),
    (404, "no route matches this request"),
    (408, "request timeout"),
    (413, "payload too large"),
    (429, "too many requests"),
    (431, "request headers too large"),
    // Envoy's own 500s: a rate-limit service that cannot decide with `failure_mode_deny`.
    (500, "internal error"),
    (502, "bad gateway"),
    (503, "service unavailable"),
    (504, "upstream timeout"),
];

/// The gateway's mappers, after `first` (replies that must not get the generic body).
pub(super) fn local_reply_config(first: &[ResponseMapper]) -> LocalReplyConfig {
    // Mappers are tried in order and the first that matches rewrites. ext-authz's own 403
    // (flagged UAEX) keeps its body; any other 403 is the gateway's, such as the RBAC
    // filter's refusal of a client address (`allow_ips`, `deny_ips`), whose response flag
    // Envoy's access-log filters cannot name.
    let ext_authz_403 = ResponseMapper {
        filter: Some(AccessLogFilter {
            filter_specifier: Some(FilterSpecifier::AndFilter(AndFilter {
                filters: vec![
                    status_is(403),
                    AccessLogFilter {
                        filter_specifier: Some(FilterSpecifier::ResponseFlagFilter(
                            ResponseFlagFilter {
                                flags: vec!["UAEX".to_string()],
                            },
                        )),
                    },
                ],
            })),
        }),
        ..Default::default()
    };
    let forbidden = ResponseMapper {
        filter: Some(status_is(403)),
        body_format_override: Some(error_body("forbidden")),
        ..Default::default()
    };
    LocalReplyConfig {
        mappers: first
            .iter()
            .cloned()
            .chain([ext_authz_403, forbidden])
            .chain(ERRORS.iter().map(|(status, error)| ResponseMapper {
                filter: Some(status_is(*status)),
                body_format_override: Some(error_body(error)),
                ..Default::default()
            }))
            .collect(),
        body_format: None,
    }
}

fn error_body(error: &str) -> SubstitutionFormatString {
    json_format(&[("error", error), ("request_id", "%REQ(X-REQUEST-ID)%")])
}

fn status_is(status: u32) -> AccessLogFilter {
    AccessLogFilter {
        filter_specifier: Some(FilterSpecifier::StatusCodeFilter(StatusCodeFilter {
            comparison: Some(ComparisonFilter {
                op: Op::Eq as i32,
                value: Some(RuntimeUInt32 {
                    default_value: status,
                    // A runtime key is required; nobody sets this one.
                    runtime_key: format!("tollgate.local_reply.status_{status}"),
                }),
            }),
        })),
    }
}
