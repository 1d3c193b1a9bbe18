//! OpenTelemetry for the sidecars: one span per gRPC call, a child of the span Envoy made
//! for that call, exported over OTLP/gRPC in batches.
//!
//! Cost is paid only by requests that are traced. With tracing off, or for a call whose
//! W3C `traceparent` says the caller did not sample it (or that has none), [`server_span`]
//! returns [`Span::none`] and no span exists at all; a sampled call gets one span, ended into a
//! bounded queue that a background thread exports. A slow or dead collector never slows a
//! request: the queue drops spans when full (the SDK's `BatchSpanProcessor`, 2048 spans by
//! default, `OTEL_BSP_*` variables tune it), and exports time out.
//!
//! The collector can change while the process runs (routes.yaml is reloaded): the provider,
//! its queue and the `tracing` layer stay, and only the exporter behind them is swapped by
//! [`Telemetry::configure`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceState, TracerProvider as _,
};
use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Registry;

use tollgate_runtime::logging;

pub use opentelemetry::trace::TraceId;

/// Only spans of this target reach the exporter (not those of hyper, h2 or tonic).
pub use tollgate_runtime::logging::SPAN_TARGET;

/// How long one export may take before it is abandoned (and its spans dropped).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long shutdown waits for the last spans to leave.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether spans are exported at all; checked once per call before anything else.
static EXPORTING: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid OTLP endpoint \"{endpoint}\": {reason}")]
    Endpoint { endpoint: String, reason: String },
}

/// W3C Trace Context `traceparent` (version 00, §3.2): the caller's trace, its span, and
/// whether it records this request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

impl TraceParent {
    /// Parses `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`. A later version may
    /// append fields, which are ignored as §3.2.4 asks; all-zero ids are invalid.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version.eq_ignore_ascii_case("ff") || !is_hex(version) {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        if !is_hex(trace) || !is_hex(span) || !is_hex(flags) {
            return None;
        }
        let trace_id = TraceId::from_hex(trace).ok()?;
        let span_id = SpanId::from_hex(span).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != TraceId::INVALID && span_id != SpanId::INVALID).then_some(TraceParent {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` of a gRPC call's metadata, if it has a valid one.
    pub fn from_metadata(metadata: &tonic::metadata::MetadataMap) -> Option<TraceParent> {
        TraceParent::parse(metadata.get("traceparent")?.to_str().ok()?)
    }

    fn context(&self) -> Context {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        Context::new().with_remote_span_context(SpanContext::new(
            self.trace_id,
            self.span_id,
            flags,
            true,
            TraceState::default(),
        ))
    }
}

fn is_hex(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The span for one incoming call, made by `make` (with `target: SPAN_TARGET`) only if it
/// will be exported: tracing is on and the caller sampled the call. Otherwise
/// [`Span::none`], which costs nothing to enter.
///
/// Sampling is the caller's (Envoy's, by routes.yaml's `sample_rate`): a sidecar never
/// starts a trace of its own, so a call without a `traceparent` (from an Envoy that does
/// not trace, or from a tool) is not traced either.
pub fn server_span(parent: Option<&TraceParent>, make: impl FnOnce() -> Span) -> Span {
    match parent {
        Some(parent) if parent.sampled && EXPORTING.load(Ordering::Relaxed) => {
            let span = make();
            // Fails only for a disabled span, which then is not exported anyway.
            let _ = span.set_parent(parent.context());
            span
        }
        _ => Span::none(),
    }
}

/// The process's tracing pipeline: installed once by [`Telemetry::init`], pointed at a
/// collector (or at none) by [`Telemetry::configure`] as often as the configuration changes.
#[derive(Clone, Debug)]
pub struct Telemetry {
    resource: Resource,
    collector: Arc<RwLock<Option<Collector>>>,
    provider: SdkTracerProvider,
}

#[derive(Debug)]
struct Collector {
    endpoint: String,
    exporter: Arc<opentelemetry_otlp::SpanExporter>,
}

impl Telemetry {
    /// Installs the global `tracing` subscriber: log lines as [`tollgate_runtime::logging`] writes
    /// them, and spans for export, which go nowhere until [`Telemetry::configure`] names a
    /// collector. Spans carry `service.name = service_name`.
    pub fn init(service_name: &'static str) -> Telemetry {
        let resource = Resource::builder().with_service_name(service_name).build();
        let collector = Arc::new(RwLock::new(None));
        // Spans are only ever made for calls the caller sampled (see `server_span`), so the
        // SDK's default sampler, parent-based, keeps them all.
        let provider = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_batch_exporter(SwappableExporter {
                collector: Arc::clone(&collector),
            })
            .build();
        let exported = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service_name))
            // Source locations and thread names say nothing about a request, and cost
            // attributes on every span.
            .with_location(false)
            .with_threads(false)
            .with_filter(filter_fn(|metadata| metadata.target() == SPAN_TARGET));
        // A second init (in tests) keeps the first subscriber; that is fine.
        drop(
            Registry::default()
                .with(logging::log_lines())
                .with(exported)
                .try_init(),
        );
        Telemetry {
            resource,
            collector,
            provider,
        }
    }

    /// Exports to the OTLP/gRPC collector at `endpoint` (`HOST:PORT`, plaintext) from now
    /// on, or stops exporting (`None`). Must run inside a Tokio runtime, which carries the
    /// exporter's connection.
    pub fn configure(&self, endpoint: Option<&str>) -> Result<(), TelemetryError> {
        let Some(endpoint) = endpoint else {
            EXPORTING.store(false, Ordering::Relaxed);
            *self.collector_slot() = None;
            return Ok(());
        };
        let unchanged = self
            .collector_slot()
            .as_ref()
            .is_some_and(|c| c.endpoint == endpoint);
        if !unchanged {
            let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(format!("http://{endpoint}"))
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(|e| TelemetryError::Endpoint {
                    endpoint: endpoint.to_string(),
                    reason: e.to_string(),
                })?;
            exporter.set_resource(&self.resource);
            *self.collector_slot() = Some(Collector {
                endpoint: endpoint.to_string(),
                exporter: Arc::new(exporter),
            });
        }
        EXPORTING.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Exports what is queued (waiting at most a couple of seconds) and stops.
    pub fn shutdown(&self) {
        EXPORTING.store(false, Ordering::Relaxed);
        // Nothing to do about a collector that does not answer while exiting.
        let _ = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
    }

    fn collector_slot(&self) -> std::sync::RwLockWriteGuard<'_, Option<Collector>> {
        // The lock guards a pointer swap; a poisoned one still holds a whole value.
        self.collector
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The batch processor's exporter: whatever collector is configured now, or none.
#[derive(Debug)]
struct SwappableExporter {
    collector: Arc<RwLock<Option<Collector>>>,
}

impl SpanExporter for SwappableExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let exporter = self
            .collector
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|c| Arc::clone(&c.exporter));
        async move {
            match exporter {
                Some(exporter) => exporter.export(batch).await,
                // Tracing was turned off with spans still queued: they are dropped.
                None => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_sampled_traceparent_is_parsed() {
        let parent = TraceParent::parse(SAMPLED).expect("valid");
        assert_eq!(
            parent.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parent.span_id.to_string(), "00f067aa0ba902b7");
        assert!(parent.sampled);
    }

    #[test]
    fn flags_without_the_sampled_bit_mean_not_sampled() {
        let parent = TraceParent::parse(&SAMPLED.replace("-01", "-00")).expect("valid");
        assert!(!parent.sampled);
        let parent = TraceParent::parse(&SAMPLED.replace("-01", "-02")).expect("valid");
        assert!(!parent.sampled);
    }

    #[test]
    fn malformed_or_all_zero_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_may_append_fields() {
        let later = format!("{}-what-comes-next", SAMPLED.replacen("00", "01", 1));
        assert!(TraceParent::parse(&later).is_some());
    }

    #[test]
    fn without_a_collector_no_span_is_made() {
        EXPORTING.store(false, Ordering::Relaxed);
        let parent = TraceParent::parse(SAMPLED);
        let mut made = false;
        let span = server_span(parent.as_ref(), || {
            made = true;
            Span::none()
        });
        assert!(!made && span.is_none());
    }
}
