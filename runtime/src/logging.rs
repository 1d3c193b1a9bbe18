//! `tracing` set up from the environment: the level from `TOLLGATE_LOG` (falling back to
//! `RUST_LOG`, then `info`), the format from `TOLLGATE_LOG_FORMAT=plain|json`.

use std::io::IsTerminal as _;

use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::layer::{Filter, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

/// The target of spans made to be exported (see `tollgate_sidecar::telemetry`), which log lines leave out.
/// Defined here, where log lines are made, so that telemetry builds on logging and not
/// the other way round.
pub const SPAN_TARGET: &str = "tollgate::trace";

/// Installs the global subscriber; logs go to stderr so stdout stays free for output
/// that commands print (such as a bootstrap file).
pub fn init() {
    // A second init (in tests) keeps the first subscriber; that is fine.
    drop(Registry::default().with(log_lines()).try_init());
}

/// The layer that writes log lines, with its filter: what `TOLLGATE_LOG` selects, less the
/// spans that exist only to be exported ([`SPAN_TARGET`]); log lines about a request name
/// its ids themselves, so those spans would only repeat them.
pub fn log_lines<S>() -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    // Colours only for a person at a terminal: in a file or a log collector, escape codes
    // would split `request_id="…"` so that no search finds it.
    let format = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let layer: Box<dyn Layer<S> + Send + Sync> =
        match std::env::var("TOLLGATE_LOG_FORMAT").as_deref() {
            Ok("json") => Box::new(format.json().with_filter(level_filter())),
            _ => Box::new(format.with_filter(level_filter())),
        };
    layer
}

fn level_filter<S>() -> impl Filter<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let levels = std::env::var("TOLLGATE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    levels.and(filter_fn(|metadata| metadata.target() != SPAN_TARGET))
}

/// Log lines written while the returned guard lives, on this thread, in the plain format,
/// at every level: for tests asserting what a log line says.
#[cfg(any(test, feature = "test-util"))]
pub fn capture() -> (CapturedLogs, tracing::subscriber::DefaultGuard) {
    let logs = CapturedLogs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

/// What [`capture`] has caught so far.
#[cfg(any(test, feature = "test-util"))]
#[derive(Clone, Debug, Default)]
pub struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(any(test, feature = "test-util"))]
impl CapturedLogs {
    /// The lines so far that contain `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

#[cfg(any(test, feature = "test-util"))]
impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(any(test, feature = "test-util"))]
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
