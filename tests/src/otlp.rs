//! An OpenTelemetry collector for tests: a real OTLP/gRPC server
//! (`opentelemetry.proto.collector.trace.v1.TraceService/Export`) on a loopback port, as
//! Envoy and the sidecars export to in production, that records every span it receives.
//!
//! ```ignore
//! let collector = OtlpReceiver::start().await;
//! // routes.yaml: observability: {tracing: {otlp_endpoint: "<collector.endpoint()>"}}
//! let spans = eventually("the spans arrive", async || collector.trace(&id).complete()).await;
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

/// One span as it arrived, ids in lower-case hex as W3C `traceparent` writes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// The exporting process's `service.name` resource attribute.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    /// The span's attributes whose values are strings, as `key=value`.
    pub attributes: Vec<String>,
}

impl ReceivedSpan {
    /// The value of the string attribute `key`.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find_map(|a| a.strip_prefix(key)?.strip_prefix('='))
    }
}

/// A running receiver; dropping it stops the server.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    task: JoinHandle<()>,
}

impl OtlpReceiver {
    /// Binds `127.0.0.1:0` and serves until dropped.
    pub async fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver on 127.0.0.1:0");
        let addr = listener.local_addr().expect("receiver address");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let service = Recorder {
            spans: Arc::clone(&spans),
        };
        let task = tokio::spawn(async move {
            // Only ends when the task is aborted; a failure would show as missing spans.
            let _ = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(service))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        OtlpReceiver { addr, spans, task }
    }

    /// `127.0.0.1:PORT`, as routes.yaml's `otlp_endpoint` is written.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The spans received so far of the trace `trace_id` (hex).
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Recorder {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Recorder {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| string_value(a.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex::encode(&span.trace_id),
                        span_id: hex::encode(&span.span_id),
                        parent_span_id: (!span.parent_span_id.is_empty())
                            .then(|| hex::encode(&span.parent_span_id)),
                        attributes: span
                            .attributes
                            .iter()
                            .filter_map(|a| {
                                let value = string_value(a.value.as_ref()?.value.as_ref()?)?;
                                Some(format!("{}={value}", a.key))
                            })
                            .collect(),
                    });
                }
            }
        }
        self.spans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend(received);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn string_value(value: &Value) -> Option<String> {
    match value {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}
