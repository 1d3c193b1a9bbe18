//! File events → reloads.
//!
//! Editors and deployers replace files in different ways: an in-place write, a write to a
//! temporary file renamed over the original (vim and most tools), and a Kubernetes ConfigMap,
//! which swaps a `..data` symlink inside the mounted directory. Watching the file itself
//! loses track after the first rename, so the parent directory is watched and any event in
//! it triggers a (debounced) re-read by path; identical bytes cost nothing.

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::reload::Reloader;

/// Events closer together than this are one edit: a rename-style save emits several.
const DEBOUNCE: Duration = Duration::from_millis(15);
/// A safety net for events the kernel dropped (inotify queue overflow, network mounts).
const POLL_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path}: {source}")]
pub struct WatchError {
    path: String,
    source: notify::Error,
}

/// Watches the routes file's directory and reloads on every change until `shutdown`.
pub async fn run(
    reloader: Arc<Reloader>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), WatchError> {
    let path = reloader.path();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let (events, mut changed) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            // The receiver only goes away at shutdown.
            let _ = events.send(());
        }
    })
    .and_then(|mut watcher| {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(watcher)
    })
    .map_err(|source| WatchError {
        path: dir.display().to_string(),
        source,
    })?;
    info!(dir = %dir.display(), "watching for routes.yaml changes");

    tokio::pin!(shutdown);
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.tick().await;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = poll.tick() => {}
            event = changed.recv() => {
                if event.is_none() {
                    break;
                }
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, changed.recv()).await {}
            }
        }
        let reloader = reloader.clone();
        // Parsing and translating a large file is CPU work; keep it off the async workers.
        match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(Ok(true)) => info!("routes.yaml reloaded"),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => {
                for line in error.lines() {
                    warn!(error = %line, "routes.yaml rejected; still serving the last good config");
                }
            }
            Err(join) => warn!(error = %join, "reload task failed"),
        }
    }
    // Dropping the watcher stops its thread.
    let _ = watcher.unwatch(&dir);
    Ok(())
}
