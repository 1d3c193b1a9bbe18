//! Loading routes.yaml into the snapshot cache, all or nothing, and remembering how the
//! last attempt went for `/status` and `/metrics`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tollgate_routes::{Certificates, ConfigErrors, FileSource, RoutesConfig};
use tracing::warn;

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

/// How long before a served certificate expires the control plane starts warning: time for
/// a renewal that failed to be noticed and fixed.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// When the certificates Envoy presents expire (notAfter, Unix seconds).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertificateExpiry {
    /// By listener and certificate file: the certificates it serves.
    pub listeners: BTreeMap<(String, String), i64>,
    /// By service: the client certificate presented to it.
    pub upstream_clients: BTreeMap<String, i64>,
}

/// Reads, validates, translates and installs routes.yaml.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    cache: Arc<SnapshotCache>,
    last: RwLock<LastAttempt>,
    /// When each certificate expires, as of the last configuration installed.
    certificate_expiry: RwLock<CertificateExpiry>,
    succeeded: AtomicU64,
    failed: AtomicU64,
}

#[derive(Debug, Default)]
struct LastAttempt {
    status: ReloadStatus,
    /// Hash of routes.yaml and of every file it named, as last read, so an event that changed
    /// nothing costs no parse.
    content: Option<[u8; 32]>,
    /// The files routes.yaml named (certificates, keys, CA bundles), resolved, in the order
    /// they were read.
    files: Vec<PathBuf>,
}

/// Reads and validates routes.yaml and the files it names, relative to its directory.
pub fn load(path: &Path) -> Result<(RoutesConfig, Certificates), ReloadError> {
    let text = read_routes(path)?;
    let files = RoutesDirectory::of(path);
    tollgate_routes::parse_with_files(&path.display().to_string(), &text, &files)
        .map_err(ReloadError::Invalid)
}

fn read_routes(path: &Path) -> Result<String, ReloadError> {
    std::fs::read_to_string(path).map_err(|source| ReloadError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The files a routes.yaml names, read relative to its directory (as ext-authz reads
/// `jwks_file`), each noted with a hash of what was read.
#[derive(Debug)]
struct RoutesDirectory {
    base: PathBuf,
    read: Mutex<Vec<(PathBuf, Option<[u8; 32]>)>>,
}

impl RoutesDirectory {
    fn of(routes: &Path) -> Self {
        // The directory of the path as given, not of a symlink's target: a ConfigMap projects
        // `routes.yaml` and `cert.pem` side by side as links into the same `..data`.
        let base = match routes.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        RoutesDirectory {
            base,
            read: Mutex::new(Vec::new()),
        }
    }

    fn read_so_far(&self) -> Vec<(PathBuf, Option<[u8; 32]>)> {
        self.read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl FileSource for RoutesDirectory {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let resolved = self.base.join(path);
        let result = std::fs::read(&resolved);
        self.read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((resolved.clone(), file_hash(&result)));
        // Name the resolved path, so a relative one says where it was looked for.
        result.map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", resolved.display())))
    }
}

fn file_hash(read: &std::io::Result<Vec<u8>>) -> Option<[u8; 32]> {
    read.as_ref().ok().map(|bytes| Sha256::digest(bytes).into())
}

/// One hash over routes.yaml's text and the files it named, absent ones included.
fn fingerprint<'a>(
    text: &str,
    files: impl IntoIterator<Item = (&'a PathBuf, Option<[u8; 32]>)>,
) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(Sha256::digest(text));
    for (path, hash) in files {
        hasher.update(path.as_os_str().as_encoded_bytes());
        hasher.update([0]);
        match hash {
            Some(hash) => hasher.update(hash),
            None => hasher.update([0]),
        }
    }
    hasher.finalize().into()
}

impl Reloader {
    pub fn new(path: impl Into<PathBuf>, cache: Arc<SnapshotCache>) -> Self {
        Reloader {
            path: path.into(),
            cache,
            last: RwLock::default(),
            certificate_expiry: RwLock::default(),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// routes.yaml and every file the last attempt read for it: what to watch for changes.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        files.extend(self.last_attempt().files.iter().cloned());
        files
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
        let files = RoutesDirectory::of(&self.path);
        let (outcome, digest) = match read_routes(&self.path) {
            Err(error) => (Err(error), None),
            Ok(text) => {
                if self.unchanged(&text) {
                    return Ok(None);
                }
                let outcome = tollgate_routes::parse_with_files(
                    &self.path.display().to_string(),
                    &text,
                    &files,
                )
                .map_err(ReloadError::Invalid);
                let read = files.read_so_far();
                let digest = fingerprint(&text, read.iter().map(|(path, hash)| (path, *hash)));
                (outcome, Some(digest))
            }
        };
        let translated = outcome.map(|(config, certificates)| {
            self.note_certificate_expiry(&certificates);
            translate(&config, &certificates)
        });
        if translated.is_err() && !report_errors {
            return translated.map(|_| None);
        }
        // Publish and record under the status lock: whoever sees the new configuration served
        // and then asks for the status (a test, an operator's script) sees this attempt, not
        // the one before it.
        let mut last = self.last.write().unwrap_or_else(PoisonError::into_inner);
        let result = translated.map(|snapshot| {
            let version = snapshot.version().to_string();
            self.cache.set(snapshot).then_some(version)
        });
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
        *last = LastAttempt {
            status,
            content: digest,
            files: files
                .read_so_far()
                .into_iter()
                .map(|(path, _)| path)
                .collect(),
        };
        drop(last);
        result
    }

    /// Whether routes.yaml's `text` and the files the last attempt read are what it saw.
    fn unchanged(&self, text: &str) -> bool {
        let last = self.last_attempt();
        last.content.is_some_and(|content| {
            let now = last.files.iter().map(|f| (f, file_hash(&std::fs::read(f))));
            content == fingerprint(text, now)
        })
    }

    /// Remembers when each certificate Envoy presents expires, and warns of one that has
    /// expired or will within [`EXPIRY_WARNING`]: peers refuse an expired certificate, and
    /// Envoy presents whatever it is given.
    fn note_certificate_expiry(&self, certificates: &Certificates) {
        let now = i64::try_from(unix_ms(SystemTime::now()) / 1000).unwrap_or(i64::MAX);
        let expiry = CertificateExpiry {
            listeners: certificates
                .listeners()
                .flat_map(|(listener, served)| {
                    served.iter().filter_map(move |s| {
                        let file = s.cert_file.display().to_string();
                        Some((
                            (listener.to_string(), file),
                            s.certificate.not_after_unix()?,
                        ))
                    })
                })
                .collect(),
            upstream_clients: certificates
                .upstream_clients()
                .filter_map(|(service, c)| Some((service.to_string(), c.not_after_unix()?)))
                .collect(),
        };
        let presented = expiry
            .listeners
            .iter()
            .map(|((name, file), t)| (format!("{file}, served by listener {name}"), t))
            .chain(
                expiry
                    .upstream_clients
                    .iter()
                    .map(|(name, t)| (format!("presented to service {name}"), t)),
            );
        for (certificate, &not_after) in presented {
            match expiry_state(not_after, now) {
                ExpiryState::Expired { seconds_ago } => {
                    warn!(%certificate, expired_seconds_ago = seconds_ago, "a certificate has expired")
                }
                ExpiryState::Soon { days_left } => {
                    warn!(%certificate, days_left, "a certificate expires soon")
                }
                ExpiryState::Fine => {}
            }
        }
        *self
            .certificate_expiry
            .write()
            .unwrap_or_else(PoisonError::into_inner) = expiry;
    }

    /// When each certificate Envoy presents expires.
    pub fn certificate_expiry(&self) -> CertificateExpiry {
        self.certificate_expiry
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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

#[derive(Debug, PartialEq, Eq)]
enum ExpiryState {
    Expired {
        seconds_ago: i64,
    },
    /// Within [`EXPIRY_WARNING`]; whole days, so 0 on the last day.
    Soon {
        days_left: i64,
    },
    Fine,
}

fn expiry_state(not_after: i64, now: i64) -> ExpiryState {
    let left = not_after.saturating_sub(now);
    let warning = i64::try_from(EXPIRY_WARNING.as_secs()).unwrap_or(i64::MAX);
    if left <= 0 {
        ExpiryState::Expired {
            seconds_ago: left.saturating_neg(),
        }
    } else if left < warning {
        ExpiryState::Soon {
            days_left: left / 86_400,
        }
    } else {
        ExpiryState::Fine
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
    fn a_certificate_is_flagged_once_expired_and_within_thirty_days_of_it() {
        const DAY: i64 = 86_400;
        let now = 1_800_000_000;
        assert_eq!(
            expiry_state(now - 5, now),
            ExpiryState::Expired { seconds_ago: 5 }
        );
        assert_eq!(
            expiry_state(now, now),
            ExpiryState::Expired { seconds_ago: 0 }
        );
        assert_eq!(
            expiry_state(now + DAY / 2, now),
            ExpiryState::Soon { days_left: 0 }
        );
        assert_eq!(
            expiry_state(now + 30 * DAY - 1, now),
            ExpiryState::Soon { days_left: 29 }
        );
        assert_eq!(expiry_state(now + 30 * DAY, now), ExpiryState::Fine);
    }

    const CERT: &[u8] = include_bytes!("../../routes/tests/fixtures/gateway.pem");
    const KEY: &[u8] = include_bytes!("../../routes/tests/fixtures/gateway.key");
    const OTHER_KEY: &[u8] = include_bytes!("../../routes/tests/fixtures/other.key");
    const TLS: &str = "version: 1\nlisteners:\n  - name: l\n    address: 127.0.0.1:8443\n    tls: {cert_file: certs/gw.pem, key_file: certs/gw.key}\n";

    #[test]
    fn a_changed_certificate_file_is_a_reload_and_a_bad_one_is_refused_at_its_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("routes.yaml");
        std::fs::create_dir(dir.path().join("certs")).expect("mkdir");
        std::fs::write(&path, TLS).expect("write");
        std::fs::write(dir.path().join("certs/gw.pem"), CERT).expect("write");
        std::fs::write(dir.path().join("certs/gw.key"), KEY).expect("write");
        let cache = Arc::new(SnapshotCache::new());
        let reloader = Reloader::new(&path, cache.clone());
        assert!(reloader.reload().expect("relative paths resolve").is_some());
        assert!(reloader
            .watched_files()
            .contains(&dir.path().join("certs/gw.key")));
        let good_version = cache.current().expect("snapshot").version().to_string();

        // routes.yaml is untouched; only the key changes, to one of another certificate.
        std::fs::write(dir.path().join("certs/gw.key"), OTHER_KEY).expect("write");
        reloader.reload().expect_err("a mismatched key is refused");
        assert_eq!(cache.current().expect("snapshot").version(), good_version);
        let errors = reloader.status().errors;
        assert!(
            errors[0].ends_with(
                ":5:46: key_file \"certs/gw.key\" does not match the certificate in cert_file"
            ),
            "{errors:?}"
        );

        std::fs::write(dir.path().join("certs/gw.key"), KEY).expect("write");
        assert!(
            reloader.reload().expect("the good pair again").is_none(),
            "the same content is the same snapshot"
        );
        assert!(reloader.status().ok);
    }

    #[test]
    fn a_missing_file_is_an_error_not_a_panic() {
        let reloader = Reloader::new("/nonexistent/routes.yaml", Arc::new(SnapshotCache::new()));
        assert!(matches!(reloader.reload(), Err(ReloadError::Read { .. })));
    }
}
