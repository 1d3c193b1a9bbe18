//! Loading routes.yaml into the snapshot cache, all or nothing, and remembering how the
//! last attempt went for `/status` and `/metrics`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tollgate_routes::ConfigErrors;

use crate::snapshot::SnapshotCache;
use crate::translate::translate;

/// Why a reload was refused; the cache keeps serving the previous snapshot.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(ConfigErrors),
}

impl ReloadError {
    /// One line per problem, as shown in `/status`.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ReloadError::Invalid(errors) => errors.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// The outcome of the latest reload attempt.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReloadStatus {
    pub ok: bool,
    pub errors: Vec<String>,
    pub at_unix_ms: u64,
}

/// Reads, validates, translates and installs routes.yaml.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    cache: Arc<SnapshotCache>,
    last: RwLock<LastAttempt>,
    succeeded: AtomicU64,
    failed: AtomicU64,
}

#[derive(Debug, Default)]
struct LastAttempt {
    status: ReloadStatus,
    /// Hash of the bytes last read, so an event that changed nothing costs no parse.
    content: Option<[u8; 32]>,
}

impl Reloader {
    pub fn new(path: impl Into<PathBuf>, cache: Arc<SnapshotCache>) -> Self {
        Reloader {
            path: path.into(),
            cache,
            last: RwLock::default(),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file; returns the version of the snapshot it installed, or `None` when
    /// nothing changed. Bytes identical to the last attempt are skipped, whatever that
    /// attempt's outcome was.
    pub fn reload(&self) -> Result<Option<String>, ReloadError> {
        self.attempt(true)
    }

    /// Like [`Reloader::reload`], but a file that does not parse is neither reported nor
    /// counted: it may be half-written. Used at the first event of a burst, so an atomic
    /// rename is served at once while an in-place write gets its verdict once it settles.
    pub fn reload_if_complete(&self) -> Option<String> {
        self.attempt(false).ok().flatten()
    }

    fn attempt(&self, report_errors: bool) -> Result<Option<String>, ReloadError> {
        // Reading by path each time re-resolves symlinks, which is what makes a ConfigMap's
        // swap of its `..data` link visible.
        let text = std::fs::read_to_string(&self.path).map_err(|source| ReloadError::Read {
            path: self.path.display().to_string(),
            source,
        });
        let digest: Option<[u8; 32]> = text.as_ref().ok().map(|t| Sha256::digest(t).into());
        if digest.is_some() && self.last_attempt().content == digest {
            return Ok(None);
        }
        let outcome = text.and_then(|text| {
            tollgate_routes::parse(&self.path.display().to_string(), &text)
                .map_err(ReloadError::Invalid)
        });
        let result = outcome.map(|config| {
            let snapshot = translate(&config);
            let version = snapshot.version().to_string();
            self.cache.set(snapshot).then_some(version)
        });
        if result.is_err() && !report_errors {
            return result;
        }
        let status = ReloadStatus {
            ok: result.is_ok(),
            errors: result
                .as_ref()
                .err()
                .map(ReloadError::lines)
                .unwrap_or_default(),
            at_unix_ms: unix_ms(SystemTime::now()),
        };
        match &result {
            Ok(_) => self.succeeded.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
        if let Ok(mut last) = self.last.write() {
            *last = LastAttempt {
                status,
                content: digest,
            };
        }
        result
    }

    pub fn status(&self) -> ReloadStatus {
        self.last_attempt().status.clone()
    }

    /// (successful, failed) reload attempts since start.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.succeeded.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    fn last_attempt(&self) -> std::sync::RwLockReadGuard<'_, LastAttempt> {
        // A poisoned lock only means a panic elsewhere mid-write of plain data; read on.
        self.last.read().unwrap_or_else(|e| e.into_inner())
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "version: 1\nlisteners: [{name: l, address: 127.0.0.1:8080}]\nservices: {s: {endpoints: [\"127.0.0.1:1\"]}}\nroutes: [{name: r, match: {prefix: /}, service: s}]\n";

    #[test]
    fn a_bad_edit_keeps_the_last_good_snapshot_and_reports_where() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, GOOD).expect("write");
        let cache = Arc::new(SnapshotCache::new());
        let reloader = Reloader::new(&path, cache.clone());
        assert!(reloader.reload().expect("good config loads").is_some());
        let good_version = cache.current().expect("snapshot").version().to_string();

        std::fs::write(&path, GOOD.replace("service: s", "service: nope")).expect("write");
        let error = reloader.reload().expect_err("bad config is refused");
        assert_eq!(cache.current().expect("snapshot").version(), good_version);
        let status = reloader.status();
        assert!(!status.ok);
        assert!(
            status.errors[0].ends_with(":4:49: unknown service \"nope\" in route \"r\""),
            "{error}"
        );
        assert_eq!(reloader.counts(), (1, 1));
    }

    #[test]
    fn unchanged_bytes_are_not_parsed_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, GOOD).expect("write");
        let reloader = Reloader::new(&path, Arc::new(SnapshotCache::new()));
        assert!(reloader.reload().expect("loads").is_some());
        assert!(reloader.reload().expect("same bytes").is_none());
        assert_eq!(reloader.counts(), (1, 0));
    }

    #[test]
    fn a_half_written_file_is_not_reported_until_its_verdict_is_asked_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, GOOD).expect("write");
        let reloader = Reloader::new(&path, Arc::new(SnapshotCache::new()));
        assert!(reloader.reload().expect("loads").is_some());
        std::fs::write(&path, &GOOD[..40]).expect("write");
        assert_eq!(reloader.reload_if_complete(), None);
        assert!(
            reloader.status().ok,
            "a quiet attempt leaves the status alone"
        );
        assert_eq!(reloader.counts(), (1, 0));
        assert!(reloader.reload().is_err(), "the settled attempt reports");
        assert_eq!(reloader.counts(), (1, 1));
    }

    #[test]
    fn a_missing_file_is_an_error_not_a_panic() {
        let reloader = Reloader::new("/nonexistent/routes.yaml", Arc::new(SnapshotCache::new()));
        assert!(matches!(reloader.reload(), Err(ReloadError::Read { .. })));
    }
}
