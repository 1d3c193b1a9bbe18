//! File events → reloads. The watching itself (directory watch, debounce, safety poll) is
//! shared with the other services in `tollgate_runtime::file_watch`.

use std::sync::Arc;

use tollgate_runtime::file_watch::{FileChanges, WatchError};
use tracing::{info, warn};

use crate::reload::Reloader;

/// Reloads routes.yaml on every change until `shutdown`.
pub async fn run(
    reloader: Arc<Reloader>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), WatchError> {
    let mut changes = FileChanges::watch(reloader.path())?;
    info!(file = %reloader.path().display(), "watching routes.yaml for changes");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = changes.changed() => {}
        }
        let reloader = reloader.clone();
        // Parsing and translating a large file is CPU work; keep it off the async workers.
        match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(Ok(Some(version))) => info!(%version, "routes.yaml reloaded"),
            Ok(Ok(None)) => {}
            Ok(Err(error)) => {
                for line in error.lines() {
                    warn!(error = %line, "routes.yaml rejected; still serving the last good config");
                }
            }
            Err(join) => warn!(error = %join, "reload task failed"),
        }
    }
}
