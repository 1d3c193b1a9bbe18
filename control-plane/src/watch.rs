//! File events → reloads. The watching itself (directory watch, debounce, safety poll) is
//! shared with the other services in `tollgate_runtime::file_watch`.
//!
//! Besides routes.yaml, the files it names (listener certificates and keys) are watched: a
//! rotated certificate is a reload like an edit, checked the same way before it is served.

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
    watch_named_files(&mut changes, &reloader);
    info!(file = %reloader.path().display(), "watching routes.yaml for changes");
    tokio::pin!(shutdown);
    loop {
        let burst = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            burst = changes.started() => burst,
        };
        if burst {
            // Within a burst, try at every event: a rename-style save starts with events for
            // its temporary file, and the rename that completes it is served the moment it
            // lands rather than after the quiet period. Unchanged bytes cost a read and a hash.
            loop {
                if let Some(Some(version)) =
                    off_runtime(&reloader, Reloader::reload_if_complete).await
                {
                    info!(%version, "routes.yaml reloaded");
                }
                watch_named_files(&mut changes, &reloader);
                if !changes.more().await {
                    break;
                }
            }
        }
        // Trailing edge: the verdict on whatever the burst left (identical bytes cost nothing).
        match off_runtime(&reloader, Reloader::reload).await {
            Some(Ok(Some(version))) => info!(%version, "routes.yaml reloaded"),
            Some(Ok(None)) => {}
            Some(Err(error)) => {
                for line in error.lines() {
                    warn!(error = %line, "routes.yaml rejected; still serving the last good config");
                }
            }
            None => warn!("reload task panicked; still serving the last good config"),
        }
        watch_named_files(&mut changes, &reloader);
    }
}

/// Follows the files the latest attempt read, which an edit of routes.yaml may have changed.
fn watch_named_files(changes: &mut FileChanges, reloader: &Reloader) {
    let files = reloader.watched_files();
    if let Err(error) = changes.set_paths(files.iter().map(|f| f.as_path())) {
        // Until it exists, the safety poll notices the file instead.
        warn!(%error, "cannot watch a file routes.yaml names");
    }
}

/// Parsing and translating a large file is CPU work; keep it off the async workers.
async fn off_runtime<T: Send + 'static>(
    reloader: &Arc<Reloader>,
    work: impl FnOnce(&Reloader) -> T + Send + 'static,
) -> Option<T> {
    let reloader = reloader.clone();
    tokio::task::spawn_blocking(move || work(&reloader))
        .await
        .ok()
}
