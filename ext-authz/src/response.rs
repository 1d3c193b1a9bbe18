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

use tollgate_routes::policy::{CertificateField, KeyLocation};

use crate::identity::Identity;
use crate::verify::Rejection;

/// The header carrying the consumer identity, read by the rate-limit service.
pub const CONSUMER_HEADER: &str = "x-consumer-id";

/// google.rpc.Code values Envoy reads from `CheckResponse.status`.
const RPC_OK: i32 = 0;
const RPC_PERMISSION_DENIED: i32 = 7;
const RPC_UNAUTHENTICATED: i32 = 16;

/// An authentication scheme a route accepts, as a 401 names it (RFC 9110 §11.6.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// RFC 6750: a bearer token (JWT providers).
    Bearer,
    /// An API key, and where it goes.
    ApiKey(KeyLocation),
    /// A TLS client certificate; no registered scheme exists, so it is named plainly.
    ClientCertificate,
}

impl Challenge {
    fn scheme(&self, realm: &str) -> String {
        let realm = quoted_safe(realm);
        match self {
            Challenge::Bearer => format!("Bearer realm=\"{realm}\""),
            Challenge::ApiKey(KeyLocation::Header(name)) => {
                format!("ApiKey realm=\"{realm}\", header=\"{}\"", quoted_safe(name))
            }
            Challenge::ApiKey(KeyLocation::Query(name)) => {
                format!("ApiKey realm=\"{realm}\", query=\"{}\"", quoted_safe(name))
            }
            Challenge::ClientCertificate => format!("ClientCertificate realm=\"{realm}\""),
        }
    }

    fn wanted(&self) -> String {
        match self {
            Challenge::Bearer => "a bearer token".into(),
            Challenge::ApiKey(KeyLocation::Header(name)) => {
                format!("an API key in the {name} header")
            }
            Challenge::ApiKey(KeyLocation::Query(name)) => {
                format!("an API key in the {name} query parameter")
            }
            Challenge::ClientCertificate => "a client certificate".into(),
        }
    }
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// No credential of any kind the route accepts, each kind named by its challenge
    /// (RFC 6750 §3.1: no error code then).
    Missing(Vec<Challenge>),
    /// Two tokens where one was expected.
    AmbiguousToken,
    /// The route names a provider this service does not know: fail closed.
    UnknownProvider,
    InvalidToken(Rejection),
    /// A valid token without every scope the route requires (RFC 6750 §3.1: 403).
    InsufficientScope {
        required: String,
    },
    /// A key that is no entry of the keys file, or more than one key.
    InvalidKey(KeyLocation),
    /// A key past its entry's `expires`.
    ExpiredKey(KeyLocation),
    /// A certificate that cannot be read (never one Envoy verified).
    UnreadableCertificate,
    /// A verified certificate without the field its provider names the consumer by.
    CertificateWithoutConsumer(CertificateField),
    /// A consumer the route, or its certificate provider, does not admit.
    ConsumerNotAllowed,
}

impl Denial {
    /// A short label for metrics and logs.
    pub fn class(&self) -> &'static str {
        match self {
            Denial::Missing(challenges) if challenges.as_slice() == [Challenge::Bearer] => {
                "missing_token"
            }
            Denial::Missing(_) => "missing_credentials",
            Denial::AmbiguousToken => "ambiguous_token",
            Denial::UnknownProvider => "unknown_provider",
            Denial::InvalidToken(rejection) => rejection.class(),
            Denial::InsufficientScope { .. } => "insufficient_scope",
            Denial::InvalidKey(_) => "invalid_key",
            Denial::ExpiredKey(_) => "expired_key",
            Denial::UnreadableCertificate => "invalid_certificate",
            Denial::CertificateWithoutConsumer(_) => "certificate_without_consumer",
            Denial::ConsumerNotAllowed => "consumer_not_allowed",
        }
    }

    /// The outcome a provider's metrics count it under.
    pub fn outcome(&self) -> Outcome {
        match self {
            Denial::Missing(_) => Outcome::Missing,
            Denial::InvalidToken(Rejection::Expired | Rejection::MissingExpiry)
            | Denial::ExpiredKey(_) => Outcome::Expired,
            Denial::AmbiguousToken
            | Denial::UnknownProvider
            | Denial::InvalidToken(_)
            | Denial::InvalidKey(_)
            | Denial::UnreadableCertificate => Outcome::Invalid,
            Denial::InsufficientScope { .. }
            | Denial::CertificateWithoutConsumer(_)
            | Denial::ConsumerNotAllowed => Outcome::Forbidden,
        }
    }

    fn description(&self) -> String {
        match self {
            Denial::Missing(challenges) => match challenges.as_slice() {
                [] => "credentials are required".into(),
                [only] => format!("{} is required", only.wanted()),
                many => format!(
                    "one of these is required: {}",
                    many.iter()
                        .map(Challenge::wanted)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
            Denial::AmbiguousToken => "the request carries more than one token".into(),
            Denial::UnknownProvider => "no token can be accepted on this route".into(),
            Denial::InvalidToken(rejection) => rejection.to_string(),
            Denial::InsufficientScope { .. } => {
                "the token lacks a scope this route requires".into()
            }
            Denial::InvalidKey(_) => "the API key is not valid".into(),
            Denial::ExpiredKey(_) => "the API key has expired".into(),
            Denial::UnreadableCertificate => "the client certificate cannot be read".into(),
            Denial::CertificateWithoutConsumer(field) => format!(
                "the client certificate has no {} to name its consumer",
                field.as_str()
            ),
            Denial::ConsumerNotAllowed => "the consumer is not allowed on this route".into(),
        }
    }
}

/// A check's outcome for one provider, as its metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Missing,
    Invalid,
    Expired,
    Forbidden,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Allowed,
        Outcome::Missing,
        Outcome::Invalid,
        Outcome::Expired,
        Outcome::Forbidden,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Missing => "missing",
            Outcome::Invalid => "invalid",
            Outcome::Expired => "expired",
            Outcome::Forbidden => "forbidden",
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
    // (status, gRPC code, the `error` code, and the challenge naming the scheme refused)
    let bearer = || Some(vec![Challenge::Bearer]);
    let (status, rpc_code, error, challenges) = match denial {
        Denial::Missing(challenges) => (
            StatusCode::Unauthorized,
            RPC_UNAUTHENTICATED,
            None,
            Some(challenges.clone()),
        ),
        Denial::InsufficientScope { .. } => (
            StatusCode::Forbidden,
            RPC_PERMISSION_DENIED,
            Some("insufficient_scope"),
            bearer(),
        ),
        Denial::AmbiguousToken | Denial::UnknownProvider | Denial::InvalidToken(_) => (
            StatusCode::Unauthorized,
            RPC_UNAUTHENTICATED,
            Some("invalid_token"),
            bearer(),
        ),
        Denial::InvalidKey(location) | Denial::ExpiredKey(location) => (
            StatusCode::Unauthorized,
            RPC_UNAUTHENTICATED,
            Some("invalid_key"),
            Some(vec![Challenge::ApiKey(location.clone())]),
        ),
        Denial::UnreadableCertificate => (
            StatusCode::Unauthorized,
            RPC_UNAUTHENTICATED,
            Some("invalid_certificate"),
            Some(vec![Challenge::ClientCertificate]),
        ),
        // The credential held; no other credential would change the answer.
        Denial::CertificateWithoutConsumer(_) | Denial::ConsumerNotAllowed => (
            StatusCode::Forbidden,
            RPC_PERMISSION_DENIED,
            Some("forbidden"),
            None,
        ),
    };
    let mut headers = Vec::with_capacity(3);
    if let Some(challenges) = challenges.filter(|c| !c.is_empty()) {
        let mut value = challenges
            .iter()
            .map(|c| c.scheme(realm))
            .collect::<Vec<_>>()
            .join(", ");
        // Error parameters belong to the one scheme that was refused.
        if let (Some(error), [_]) = (error, challenges.as_slice()) {
            value.push_str(&format!(
                ", error=\"{error}\", error_description=\"{}\"",
                quoted_safe(&description)
            ));
        }
        if let Denial::InsufficientScope { required } = denial {
            value.push_str(&format!(", scope=\"{}\"", quoted_safe(required)));
        }
        headers.push(header("www-authenticate", value));
    }
    headers.push(header("content-type", "application/json".into()));
    // RFC 6750 §5.3 / RFC 9111: an error about credentials is not cacheable.
    headers.push(header("cache-control", "no-store".into()));
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
            headers,
            body,
        })),
    }
}

/// The OK response: identity and forwarded claims set, absent claim headers removed, and
/// API keys (where `keys` says they travel) removed so they never reach the upstream.
pub fn allowed(identity: &Identity, keys: &[KeyLocation]) -> CheckResponse {
    let mut headers = Vec::with_capacity(identity.claim_headers.len() + 1);
    let mut headers_to_remove = identity.absent_headers.clone();
    let mut query_parameters_to_remove = Vec::new();
    match &identity.consumer {
        Some(consumer) => headers.push(header(CONSUMER_HEADER, consumer.clone())),
        None => headers_to_remove.push(CONSUMER_HEADER.to_string()),
    }
    headers.extend(
        identity
            .claim_headers
            .iter()
            .map(|(name, value)| header(name, value.clone())),
    );
    for key in keys {
        match key {
            KeyLocation::Header(name) => headers_to_remove.push(name.clone()),
            KeyLocation::Query(name) => query_parameters_to_remove.push(name.clone()),
        }
    }
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
            query_parameters_to_remove,
            ..Default::default()
        })),
    }
}
