//! The traffic-policy fields of a routes.yaml service, as written.

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthCheckDoc {
    pub path: Option<Spanned<String>>,
    pub grpc_service: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub unhealthy_threshold: Option<Spanned<u64>>,
    pub healthy_threshold: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HashOnDoc {
    pub header: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CircuitBreakerDoc {
    pub max_connections: Option<Spanned<u64>>,
    pub max_pending_requests: Option<Spanned<u64>>,
    pub max_requests: Option<Spanned<u64>>,
    pub max_retries: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutlierDetectionDoc {
    pub consecutive_5xx: Option<Spanned<u64>>,
    pub interval: Option<Spanned<String>>,
    pub base_ejection_time: Option<Spanned<String>>,
    pub max_ejection_percent: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsDoc {
    pub sni: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
}
