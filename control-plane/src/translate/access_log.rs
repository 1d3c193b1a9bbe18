//! One JSON line per request: who, what, where it went, how it ended, how long it took.
//! Never the Authorization header or a query string (a token may travel in either).

use tollgate_proto::envoy::config::accesslog::v3::{access_log, AccessLog};
use tollgate_proto::envoy::extensions::access_loggers::file::v3::{file_access_log, FileAccessLog};
use tollgate_proto::envoy::extensions::access_loggers::stream::v3::{
    stdout_access_log, StdoutAccessLog,
};
use tollgate_routes::AccessLogSink;

use super::any;
use super::json_format::json_format;

const FIELDS: [(&str, &str); 18] = [
    ("time", "%START_TIME%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    // The W3C trace id when tracing is on (null otherwise): what joins this line to the
    // rate-limit service's log lines, which never see the request's headers.
    ("trace_id", "%TRACE_ID%"),
    ("consumer_id", "%REQ(X-CONSUMER-ID)%"),
    ("client", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%PATH(NQ)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("protocol", "%PROTOCOL%"),
    ("route", "%ROUTE_NAME%"),
    ("upstream", "%UPSTREAM_CLUSTER%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("status", "%RESPONSE_CODE%"),
    ("flags", "%RESPONSE_FLAGS%"),
    ("details", "%RESPONSE_CODE_DETAILS%"),
    ("duration_ms", "%DURATION%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
];

pub(super) fn access_log(sink: &AccessLogSink) -> AccessLog {
    let format = json_format(&FIELDS);
    let (name, config) = match sink {
        AccessLogSink::Stdout => (
            "envoy.access_loggers.stdout",
            any(&StdoutAccessLog {
                access_log_format: Some(stdout_access_log::AccessLogFormat::LogFormat(format)),
            }),
        ),
        AccessLogSink::File(path) => (
            "envoy.access_loggers.file",
            any(&FileAccessLog {
                path: path.display().to_string(),
                access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(format)),
            }),
        ),
    };
    AccessLog {
        name: name.to_string(),
        filter: None,
        config_type: Some(access_log::ConfigType::TypedConfig(config)),
    }
}
