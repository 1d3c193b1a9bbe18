//! Decisions as Envoy `CheckResponse`s. A refused token is an ordinary response carrying
//! the HTTP status, headers and body the client should get; a gRPC error would mean "the
//! service failed" and Envoy would answer 403 by itself, losing the 401 and its
//! `WWW-Authenticate`.

use tollgate_proto::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use tollgate_proto::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use tollgate_proto::envoy::r#type::v3::{HttpStatus, StatusCode};
use tollgate_proto::envoy::service::auth::v3::check_response::HttpResponse;
use tollgate_proto::envoy::service::auth::v3::{CheckResponse, DeniedHttpResponse, OkHttpResponse};
use tollgate_proto::google::rpc;

use crate::verify::{Rejection, VerifiedToken};

/// The header carrying the consumer identity, read by the rate-limit service.
pub const CONSUMER_HEADER: &str = "x-consumer-id";

/// google.rpc.Code values Envoy reads from `CheckResponse.status`.
const RPC_OK: i32 = 0;
const RPC_PERMISSION_DENIED: i32 = 7;
const RPC_UNAUTHENTICATED: i32 = 16;

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// No token where the provider looks (RFC 6750 §3.1: no error code then).
    MissingToken,
    /// Two tokens where one was expected.
    AmbiguousToken,
    /// The route names a provider this service does not know: fail closed.
    UnknownProvider,
    InvalidToken(Rejection),
    /// A valid token without every scope the route requires (RFC 6750 §3.1: 403).
    InsufficientScope {
        required: String,
    },
}

impl Denial {
    /// A short label for metrics and logs.
    pub fn class(&self) -> &'static str {
        match self {
            Denial::MissingToken => "missing_token",
            Denial::AmbiguousToken => "ambiguous_token",
            Denial::UnknownProvider => "unknown_provider",
            Denial::InvalidToken(rejection) => rejection.class(),
            Denial::InsufficientScope { .. } => "insufficient_scope",
        }
    }

    fn description(&self) -> String {
        match self {
            Denial::MissingToken => "a bearer token is required".into(),
            Denial::AmbiguousToken => "the request carries more than one token".into(),
            Denial::UnknownProvider => "no token can be accepted on this route".into(),
            Denial::InvalidToken(rejection) => rejection.to_string(),
            Denial::InsufficientScope { .. } => {
                "the token lacks a scope this route requires".into()
            }
        }
    }
}

fn header(key: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value,
            raw_value: Vec::new(),
        }),
        // Overwrite: a client-sent header of the same name must not survive beside ours.
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// Keeps only characters allowed inside an RFC 6750 §3 quoted auth-param (no `"` or `\`,
/// RFC 6749 §3.3 scope-token characters and spaces).
fn quoted_safe(text: &str) -> String {
    text.chars()
        .filter(|c| *c == ' ' || (c.is_ascii_graphic() && *c != '"' && *c != '\\'))
        .collect()
}

/// The 401/403 response for `denial`.
pub fn denied(realm: &str, denial: &Denial) -> CheckResponse {
    let description = denial.description();
    let (status, rpc_code, error) = match denial {
        Denial::MissingToken => (StatusCode::Unauthorized, RPC_UNAUTHENTICATED, None),
        Denial::InsufficientScope { .. } => (
            StatusCode::Forbidden,
            RPC_PERMISSION_DENIED,
            Some("insufficient_scope"),
        ),
        Denial::AmbiguousToken | Denial::UnknownProvider | Denial::InvalidToken(_) => (
            StatusCode::Unauthorized,
            RPC_UNAUTHENTICATED,
            Some("invalid_token"),
        ),
    };
    let mut challenge = format!("Bearer realm=\"{}\"", quoted_safe(realm));
    if let Some(error) = error {
        challenge.push_str(&format!(
            ", error=\"{error}\", error_description=\"{}\"",
            quoted_safe(&description)
        ));
    }
    if let Denial::InsufficientScope { required } = denial {
        challenge.push_str(&format!(", scope=\"{}\"", quoted_safe(required)));
    }
    let body = serde_json::json!({
        "error": error.unwrap_or("unauthorized"),
        "error_description": description,
    })
    .to_string();
    CheckResponse {
        status: Some(rpc::Status {
            code: rpc_code,
            message: denial.class().to_string(),
            details: Vec::new(),
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: status as i32,
            }),
            headers: vec![
                header("www-authenticate", challenge),
                header("content-type", "application/json".into()),
                // RFC 6750 §5.3 / RFC 9111: an error about credentials is not cacheable.
                header("cache-control", "no-store".into()),
            ],
            body,
        })),
    }
}

/// The OK response: identity and forwarded claims set, absent claim headers removed.
pub fn allowed(token: &VerifiedToken) -> CheckResponse {
    let mut headers = Vec::with_capacity(token.claim_headers.len() + 1);
    let mut headers_to_remove = token.absent_headers.clone();
    match &token.consumer {
        Some(consumer) => headers.push(header(CONSUMER_HEADER, consumer.clone())),
        None => headers_to_remove.push(CONSUMER_HEADER.to_string()),
    }
    headers.extend(
        token
            .claim_headers
            .iter()
            .map(|(name, value)| header(name, value.clone())),
    );
    CheckResponse {
        status: Some(rpc::Status {
            code: RPC_OK,
            message: String::new(),
            details: Vec::new(),
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove,
            ..Default::default()
        })),
    }
}
