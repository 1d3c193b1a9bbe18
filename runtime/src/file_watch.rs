//! Change notifications for one configuration file, however it is replaced.
//!
//! Editors and deployers replace files in different ways: an in-place write, a write to a
//! temporary file renamed over the original (vim and most tools), and a Kubernetes ConfigMap,
//! which swaps a `..data` symlink inside the mounted directory. A watch on the file itself
//! loses track after the first rename, so the parent directory is watched instead (as
//! Limitador does) and the caller re-reads the file by path on every notification.
//!
//! A file may name others (routes.yaml names certificate files); [`FileChanges::set_paths`]
//! makes one stream cover all of them, however many directories they live in.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

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

/// A stream of "the file may have changed" notifications; dropping it stops watching.
#[derive(Debug)]
pub struct FileChanges {
    watcher: RecommendedWatcher,
    /// The directories watched now.
    watched: BTreeSet<PathBuf>,
    events: mpsc::UnboundedReceiver<()>,
    poll: tokio::time::Interval,
}

/// The directory to watch for `path`: its parent, or itself when it is a directory of
/// configuration files.
fn directory_of(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.to_path_buf()
    } else {
        match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}

impl FileChanges {
    /// Starts watching the directory that holds `path`, or `path` itself when it is a
    /// directory of configuration files.
    pub fn watch(path: &Path) -> Result<Self, WatchError> {
        let dir = directory_of(path);
        let (sender, events) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // notify reports opens and reads too (inotify IN_OPEN, IN_ACCESS): counting
            // them would make every reload of the file trigger the next one.
            if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                // The receiver only goes away when watching stops.
                let _ = sender.send(());
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
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.reset();
        Ok(FileChanges {
            watcher,
            watched: BTreeSet::from([dir]),
            events,
            poll,
        })
    }

    /// Watches exactly the directories holding `paths` from now on: new ones are added and
    /// ones no longer needed dropped. A directory that cannot be watched (it does not exist
    /// yet) is reported and tried again at the next call; the safety poll covers it meanwhile.
    pub fn set_paths<'p>(
        &mut self,
        paths: impl IntoIterator<Item = &'p Path>,
    ) -> Result<(), WatchError> {
        let wanted: BTreeSet<PathBuf> = paths.into_iter().map(directory_of).collect();
        for gone in self
            .watched
            .difference(&wanted)
            .cloned()
            .collect::<Vec<_>>()
        {
            // It may have been deleted, which ended its watch already.
            let _ = self.watcher.unwatch(&gone);
            self.watched.remove(&gone);
        }
        let mut first_error = None;
        for dir in wanted {
            if self.watched.contains(&dir) {
                continue;
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir);
                }
                Err(source) => {
                    first_error.get_or_insert(WatchError {
                        path: dir.display().to_string(),
                        source,
                    });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Resolves after the next burst of events has settled, or at the next safety poll.
    pub async fn changed(&mut self) {
        if self.started().await {
            self.settled().await;
        }
    }

    /// Resolves at the first event of the next burst (true) or at the next safety poll
    /// (false). A caller that acts now should act again after [`FileChanges::settled`]:
    /// the burst may not be over.
    pub async fn started(&mut self) -> bool {
        tokio::select! {
            _ = self.poll.tick() => false,
            event = self.events.recv() => {
                if event.is_none() {
                    // The watcher thread died; fall back to polling alone.
                    self.poll.tick().await;
                    return false;
                }
                true
            }
        }
    }

    /// Waits a short quiet period for the burst's next event: true if one came, false once
    /// the burst has settled.
    pub async fn more(&mut self) -> bool {
        matches!(
            tokio::time::timeout(DEBOUNCE, self.events.recv()).await,
            Ok(Some(()))
        )
    }

    /// Resolves once no event has arrived for a short quiet period.
    pub async fn settled(&mut self) {
        while self.more().await {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reading_the_file_is_not_a_change_but_writing_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("routes.yaml");
        std::fs::write(&file, "a").expect("write");
        let mut changes = FileChanges::watch(&file).expect("watch");
        std::fs::read_to_string(&file).expect("read");
        // The write below is the only event that may wake `started`; had the read counted,
        // the event queued first would be the read's, and `settled` would still drain the
        // write. So assert on the queue directly: after a read, nothing is queued.
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            changes.events.try_recv().is_err(),
            "a read was reported as a change"
        );
        std::fs::write(&file, "b").expect("write");
        tokio::time::timeout(Duration::from_secs(5), changes.started())
            .await
            .expect("a write is noticed");
    }

    #[tokio::test]
    async fn a_file_in_another_directory_is_watched_once_its_path_is_set() {
        let config = tempfile::tempdir().expect("tempdir");
        let certs = tempfile::tempdir().expect("tempdir");
        let routes = config.path().join("routes.yaml");
        let cert = certs.path().join("cert.pem");
        std::fs::write(&routes, "a").expect("write");
        std::fs::write(&cert, "a").expect("write");
        let mut changes = FileChanges::watch(&routes).expect("watch");
        changes
            .set_paths([routes.as_path(), cert.as_path()])
            .expect("both directories exist");
        std::fs::write(&cert, "b").expect("write");
        tokio::time::timeout(Duration::from_secs(5), changes.started())
            .await
            .expect("a write to the other directory is noticed");
    }

    #[tokio::test]
    async fn a_missing_directory_is_reported_and_the_others_still_watched() {
        let config = tempfile::tempdir().expect("tempdir");
        let routes = config.path().join("routes.yaml");
        std::fs::write(&routes, "a").expect("write");
        let mut changes = FileChanges::watch(&routes).expect("watch");
        let missing = config.path().join("nope/cert.pem");
        assert!(changes
            .set_paths([routes.as_path(), missing.as_path()])
            .is_err());
        std::fs::write(&routes, "b").expect("write");
        tokio::time::timeout(Duration::from_secs(5), changes.started())
            .await
            .expect("routes.yaml is still watched");
    }

    #[tokio::test]
    async fn a_rename_over_the_file_is_noticed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("routes.yaml");
        std::fs::write(&file, "a").expect("write");
        let mut changes = FileChanges::watch(&file).expect("watch");
        let temp = dir.path().join(".routes.yaml.tmp");
        std::fs::write(&temp, "b").expect("write");
        std::fs::rename(&temp, &file).expect("rename");
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .expect("a change within the poll interval");
    }
}
