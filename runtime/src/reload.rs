//! Reloading a service's configuration when its files change: the one loop the control
//! plane, ext-authz and the rate-limit service run, each with its own reading and serving
//! behind [`Config`].
//!
//! Every version is all or nothing: it is read and checked completely, and only a valid one
//! is served; a refused one is logged, line by line, and the last good version keeps
//! serving. An event that changed no byte of the files costs a hash, not a parse: file
//! watchers report opens, touches and the safety poll as well as edits.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::file_watch::{FileChanges, WatchError};

/// A service's configuration: how it is read from its files and how a valid version is
/// served.
pub trait Config: Send + Sync + 'static {
    /// A valid version, ready to serve.
    type Loaded: Send;
    /// Why a version was refused, one problem per line (as `tollgate_routes::ConfigErrors`
    /// writes them): each is logged, and shown by `/status`, on its own.
    type Error: std::fmt::Display + Send;

    /// What the log calls the configuration ("routes.yaml", "limits").
    const NAME: &'static str;

    /// Reads and checks the configuration at `path`.
    fn read(&self, path: &Path) -> impl Future<Output = Read<Self>> + Send;

    /// Serves a valid version: what the log should say of it when it differs from what was
    /// served, `None` when it is the same.
    fn serve(&self, loaded: Self::Loaded) -> Option<String>;

    /// Told how every reload ended: every reported attempt but the first (the start-up
    /// load), not those skipped as unchanged nor a half-written file seen mid-burst. For the
    /// service's own metrics.
    fn reloaded(&self, _outcome: Outcome) {}
}

/// How a reported reload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new version is served.
    Served,
    /// A valid version, the same as the one served.
    Same,
    /// Refused: the last good version is still served.
    Refused,
}

/// What one reading gave.
pub struct Read<C: Config + ?Sized> {
    pub outcome: Result<C::Loaded, C::Error>,
    /// Files other than the configuration's own path that this reading read (certificates
    /// routes.yaml names, the files of a directory), present or not: a change to any of them
    /// is a change of the configuration.
    pub files: Vec<PathBuf>,
}

/// The outcome of the latest reported attempt.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReloadStatus {
    pub ok: bool,
    pub errors: Vec<String>,
    pub at_unix_ms: u64,
}

/// One configuration, its last attempt, and counts of how attempts went.
#[derive(Debug)]
pub struct Reloader<C: Config> {
    path: PathBuf,
    config: C,
    last: RwLock<LastAttempt>,
    succeeded: AtomicU64,
    failed: AtomicU64,
}

#[derive(Debug, Default)]
struct LastAttempt {
    status: ReloadStatus,
    /// What the files held when the attempt began, so an event that changed nothing is
    /// skipped, whatever that attempt's outcome was.
    seen: Option<Fingerprint>,
    /// [`Read::files`] of the attempt.
    files: Vec<PathBuf>,
}

impl<C: Config> Reloader<C> {
    pub fn new(path: impl Into<PathBuf>, config: C) -> Self {
        Reloader {
            path: path.into(),
            config,
            last: RwLock::default(),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// The configuration's own file or directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config(&self) -> &C {
        &self.config
    }

    /// The path and every file the last attempt read: what to watch for changes.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        files.extend(self.last_attempt().files.iter().cloned());
        files
    }

    /// Reads the configuration and serves it if valid; returns what the log says of the new
    /// version, or `None` when nothing changed (files identical to the last attempt's are
    /// not read again).
    pub async fn reload(&self) -> Result<Option<String>, C::Error> {
        self.attempt(true, false).await
    }

    /// Reads the configuration again even if its files are unchanged: for inputs that are
    /// not files (the control plane's key sets fetched by URL).
    pub async fn reload_regardless(&self) -> Result<Option<String>, C::Error> {
        self.attempt(true, true).await
    }

    /// Like [`Reloader::reload`], but a version that is refused is neither reported nor
    /// counted: it may be half-written. Used at the first event of a burst, so an atomic
    /// rename is served at once while an in-place write gets its verdict once it settles.
    pub async fn reload_if_complete(&self) -> Option<String> {
        self.attempt(false, false).await.ok().flatten()
    }

    async fn attempt(
        &self,
        report_errors: bool,
        regardless: bool,
    ) -> Result<Option<String>, C::Error> {
        // Taken before reading: a change that lands during the read changes the files after
        // this print, so the next event reads again rather than being skipped.
        let (seen, first) = {
            let last = self.last_attempt();
            let print = Fingerprint::of(std::iter::once(&self.path).chain(&last.files));
            if last.seen == Some(print) && !regardless {
                return Ok(None);
            }
            (print, last.seen.is_none())
        };
        let read = self.config.read(&self.path).await;
        if read.outcome.is_err() && !report_errors {
            return read.outcome.map(|_| None);
        }
        // Serve and record under the status lock: whoever sees the new version served and
        // then asks for the status (a test, an operator's script) sees this attempt, not the
        // one before it.
        let mut last = self.last.write().unwrap_or_else(PoisonError::into_inner);
        let result = read.outcome.map(|loaded| self.config.serve(loaded));
        let counter = match &result {
            Ok(_) => &self.succeeded,
            Err(_) => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        *last = LastAttempt {
            status: ReloadStatus {
                ok: result.is_ok(),
                errors: result.as_ref().err().map(problems).unwrap_or_default(),
                at_unix_ms: unix_ms(SystemTime::now()),
            },
            seen: Some(seen),
            files: read.files,
        };
        drop(last);
        if !first {
            self.config.reloaded(match &result {
                Ok(Some(_)) => Outcome::Served,
                Ok(None) => Outcome::Same,
                Err(_) => Outcome::Refused,
            });
        }
        result
    }

    pub fn status(&self) -> ReloadStatus {
        self.last_attempt().status.clone()
    }

    /// (successful, failed) reported attempts since start.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.succeeded.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    fn last_attempt(&self) -> RwLockReadGuard<'_, LastAttempt> {
        // A poisoned lock only means a panic elsewhere mid-write of plain data; read on.
        self.last.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Starts watching the configuration's files; the future it returns reloads the
/// configuration on every change until `shutdown`.
///
/// Within a burst of events every event is an attempt, quiet about failures: a rename-style
/// save starts with events for its temporary file, and the rename that completes it is
/// served the moment it lands rather than after the quiet period. Once the burst settles,
/// the attempt that reports says what became of whatever the burst left.
pub fn watch<C: Config>(
    reloader: Arc<Reloader<C>>,
    shutdown: impl Future<Output = ()>,
) -> Result<impl Future<Output = ()>, WatchError> {
    let mut changes = FileChanges::watch(reloader.path())?;
    watch_read_files(&mut changes, &reloader);
    info!(file = %reloader.path().display(), "watching {} for changes", C::NAME);
    Ok(reload_on_change(reloader, changes, shutdown))
}

async fn reload_on_change<C: Config>(
    reloader: Arc<Reloader<C>>,
    mut changes: FileChanges,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let burst = tokio::select! {
            () = &mut shutdown => return,
            burst = changes.started() => burst,
        };
        if burst {
            loop {
                if let Some(served) = reloader.reload_if_complete().await {
                    log_served::<C>(&reloader, &served);
                }
                watch_read_files(&mut changes, &reloader);
                if !changes.more().await {
                    break;
                }
            }
        }
        match reloader.reload().await {
            Ok(Some(served)) => log_served::<C>(&reloader, &served),
            Ok(None) => {}
            Err(error) => {
                for line in problems(&error) {
                    warn!(file = %reloader.path().display(), error = %line, "{} rejected; still serving the last good version", C::NAME);
                }
            }
        }
        watch_read_files(&mut changes, &reloader);
    }
}

/// One line per problem.
fn problems(error: &impl std::fmt::Display) -> Vec<String> {
    error.to_string().lines().map(str::to_owned).collect()
}

fn log_served<C: Config>(reloader: &Reloader<C>, served: &str) {
    info!(file = %reloader.path().display(), %served, "{} reloaded", C::NAME);
}

/// Follows the files the latest attempt read, which an edit may have changed.
fn watch_read_files<C: Config>(changes: &mut FileChanges, reloader: &Reloader<C>) {
    let files = reloader.watched_files();
    if let Err(error) = changes.set_paths(files.iter().map(PathBuf::as_path)) {
        // Until it exists, the safety poll notices the file instead.
        warn!(%error, "cannot watch a file {} names", C::NAME);
    }
}

/// A hash over some paths and what each held: a file's bytes, a directory's entry names,
/// or nothing at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint([u8; 32]);

impl Fingerprint {
    fn of<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) -> Fingerprint {
        let mut hasher = Sha256::new();
        for path in paths {
            hasher.update(path.as_os_str().as_encoded_bytes());
            hasher.update([0]);
            if path.is_dir() {
                // A file added to or removed from a directory of configuration files.
                let mut names: Vec<_> = std::fs::read_dir(path)
                    .into_iter()
                    .flatten()
                    .filter_map(|entry| entry.ok().map(|e| e.file_name()))
                    .collect();
                names.sort();
                hasher.update([2]);
                for name in names {
                    hasher.update(name.as_encoded_bytes());
                    hasher.update([0]);
                }
            } else if let Ok(bytes) = std::fs::read(path) {
                hasher.update([1]);
                hasher.update(Sha256::digest(bytes));
            } else {
                hasher.update([0]);
            }
        }
        Fingerprint(hasher.finalize().into())
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A configuration that is the file's text, valid unless it says "bad", and remembers
    /// how often it was read and what it serves.
    #[derive(Debug, Default)]
    struct Text {
        reads: AtomicU64,
        served: Mutex<Option<String>>,
        reloads: Mutex<Vec<Outcome>>,
    }

    impl Config for Text {
        type Loaded = String;
        type Error = String;
        const NAME: &'static str = "text";

        async fn read(&self, path: &Path) -> Read<Self> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            let outcome = match std::fs::read_to_string(path) {
                Ok(text) if text.contains("bad") => Err(format!("{}: bad", path.display())),
                Ok(text) => Ok(text),
                Err(error) => Err(error.to_string()),
            };
            Read {
                outcome,
                files: Vec::new(),
            }
        }

        fn serve(&self, loaded: String) -> Option<String> {
            let mut served = self.served.lock().expect("lock");
            (served.as_ref() != Some(&loaded)).then(|| {
                *served = Some(loaded.clone());
                loaded
            })
        }

        fn reloaded(&self, outcome: Outcome) {
            self.reloads.lock().expect("lock").push(outcome);
        }
    }

    fn served(reloader: &Reloader<Text>) -> Option<String> {
        reloader.config().served.lock().expect("lock").clone()
    }

    #[tokio::test]
    async fn a_refused_version_keeps_the_last_good_one_and_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.txt");
        std::fs::write(&path, "one").expect("write");
        let reloader = Reloader::new(&path, Text::default());
        assert_eq!(reloader.reload().await, Ok(Some("one".to_string())));
        std::fs::write(&path, "bad two").expect("write");
        assert!(reloader.reload().await.is_err());
        assert_eq!(served(&reloader).as_deref(), Some("one"));
        let status = reloader.status();
        assert!(!status.ok);
        assert!(status.errors[0].ends_with("c.txt: bad"), "{status:?}");
        assert_eq!(reloader.counts(), (1, 1));
        std::fs::write(&path, "one").expect("write");
        assert_eq!(
            reloader.reload().await,
            Ok(None),
            "valid, and what is served"
        );
        assert_eq!(
            *reloader.config().reloads.lock().expect("lock"),
            [Outcome::Refused, Outcome::Same],
            "the start-up load is not a reload"
        );
    }

    #[tokio::test]
    async fn unchanged_files_are_not_read_again_whatever_the_last_outcome() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.txt");
        std::fs::write(&path, "one").expect("write");
        let reloader = Reloader::new(&path, Text::default());
        assert!(reloader.reload().await.expect("valid").is_some());
        assert_eq!(reloader.reload().await, Ok(None));
        std::fs::write(&path, "bad").expect("write");
        assert!(reloader.reload().await.is_err());
        assert_eq!(reloader.reload().await, Ok(None), "the same bad bytes");
        assert_eq!(reloader.config().reads.load(Ordering::Relaxed), 2);
        assert_eq!(reloader.counts(), (1, 1));
    }

    #[tokio::test]
    async fn reloading_regardless_reads_unchanged_files_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.txt");
        std::fs::write(&path, "one").expect("write");
        let reloader = Reloader::new(&path, Text::default());
        assert!(reloader.reload().await.expect("valid").is_some());
        assert_eq!(reloader.reload().await, Ok(None));
        assert_eq!(reloader.config().reads.load(Ordering::Relaxed), 1);
        assert!(reloader.reload_regardless().await.is_ok());
        assert_eq!(
            reloader.config().reads.load(Ordering::Relaxed),
            2,
            "read again for inputs that are not files"
        );
    }

    #[tokio::test]
    async fn a_half_written_file_is_not_reported_until_its_verdict_is_asked_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.txt");
        std::fs::write(&path, "one").expect("write");
        let reloader = Reloader::new(&path, Text::default());
        assert!(reloader.reload().await.expect("valid").is_some());
        std::fs::write(&path, "ba").expect("write");
        std::fs::write(&path, "bad").expect("write");
        assert_eq!(reloader.reload_if_complete().await, None);
        assert!(
            reloader.status().ok,
            "a quiet attempt leaves the status alone"
        );
        assert_eq!(reloader.counts(), (1, 0));
        assert!(
            reloader.reload().await.is_err(),
            "the settled attempt reports"
        );
        assert_eq!(reloader.counts(), (1, 1));
    }

    #[test]
    fn a_file_added_to_a_directory_changes_its_fingerprint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = [dir.path().to_path_buf()];
        let before = Fingerprint::of(&paths);
        assert_eq!(before, Fingerprint::of(&paths));
        std::fs::write(dir.path().join("d.yaml"), "x").expect("write");
        assert_ne!(before, Fingerprint::of(&paths));
    }

    #[tokio::test]
    async fn an_edit_is_served_by_the_watch_loop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.txt");
        std::fs::write(&path, "one").expect("write");
        let reloader = Arc::new(Reloader::new(&path, Text::default()));
        reloader.reload().await.expect("valid");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let watching = tokio::spawn(
            watch(Arc::clone(&reloader), async {
                let _ = stopped.await;
            })
            .expect("watches"),
        );
        // The watch starts asynchronously: keep writing new versions until one is served.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut version = 0;
        while served(&reloader).as_deref() == Some("one") {
            assert!(tokio::time::Instant::now() < deadline, "no reload in 60 s");
            version += 1;
            std::fs::write(&path, format!("two {version}")).expect("write");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(served(&reloader).expect("served").starts_with("two "));
        let _ = stop.send(());
        watching.await.expect("joins");
    }
}
