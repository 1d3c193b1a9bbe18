//! `tracing` set up from the environment: the level from `TOLLGATE_LOG` (falling back to
//! `RUST_LOG`, then `info`), the format from `TOLLGATE_LOG_FORMAT=plain|json`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; logs go to stderr so stdout stays free for output
/// that commands print (such as a bootstrap file).
pub fn init() {
    let filter = std::env::var("TOLLGATE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match std::env::var("TOLLGATE_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().try_init(),
        _ => builder.try_init(),
    };
    // A second init (in tests) keeps the first subscriber; that is fine.
    drop(result);
}
