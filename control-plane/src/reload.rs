//! routes.yaml as the control plane serves it: read, validated and translated into the
//! snapshot cache, all or nothing, by the reload loop every service shares
//! (`tollgate_runtime::reload`), which also remembers how the last attempt went for
//! `/status` and `/metrics`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_routes::{Certificates, FilesBeside, LoadError};
use tollgate_runtime::reload::{Config, Read};
use tracing::warn;

use crate::fleet::{Fleet, LoadedRoutes};
use crate::key_sets::FetchedKeySets;
use crate::snapshot::Snapshot;
use crate::translate::{has_shared_budgets, translate, translate_shared};

pub use tollgate_runtime::reload::ReloadStatus;

/// Reads, validates, translates and installs routes.yaml.
pub type Reloader = tollgate_runtime::reload::Reloader<Translation>;

/// Why a reload was refused; the cache keeps serving the previous snapshot.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("translating routes.yaml panicked (a bug); the last good config keeps serving")]
    Panicked,
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

/// routes.yaml translated and served by `fleet`: the control plane's [`Config`].
#[derive(Debug)]
pub struct Translation {
    fleet: Arc<Fleet>,
    /// The key sets fetched for providers Envoy enforces with a `jwks_uri`.
    key_sets: Arc<FetchedKeySets>,
    /// When each certificate expires, as of the last configuration installed.
    certificate_expiry: RwLock<CertificateExpiry>,
}

impl Translation {
    pub fn new(fleet: Arc<Fleet>) -> Self {
        Translation {
            fleet,
            key_sets: Arc::default(),
            certificate_expiry: RwLock::default(),
        }
    }

    /// Fills providers' `jwks_uri` key sets from `key_sets` (shared with whoever fetches).
    pub fn with_key_sets(mut self, key_sets: Arc<FetchedKeySets>) -> Self {
        self.key_sets = key_sets;
        self
    }

    /// When each certificate Envoy presents expires.
    pub fn certificate_expiry(&self) -> CertificateExpiry {
        self.certificate_expiry
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Remembers when each certificate Envoy presents expires, and warns of one that has
    /// expired or will within [`EXPIRY_WARNING`]: peers refuse an expired certificate, and
    /// Envoy presents whatever it is given.
    fn note_certificate_expiry(&self, expiry: CertificateExpiry) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
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
}

/// routes.yaml translated: for an Envoy alone, and for the group sizes counted when it was
/// read.
#[derive(Debug)]
pub struct Translated {
    whole: Snapshot,
    shared: BTreeMap<u32, Snapshot>,
    /// Kept to translate for other group sizes, when the file has local limits.
    routes: Option<Arc<LoadedRoutes>>,
    expiry: CertificateExpiry,
}

impl Config for Translation {
    type Loaded = Translated;
    type Error = ReloadError;
    const NAME: &'static str = "routes.yaml";

    async fn read(&self, path: &Path) -> Read<Self> {
        let path = path.to_path_buf();
        let group_sizes = self.fleet.group_sizes();
        let key_sets = self.key_sets.clone();
        // Parsing and translating a large file is CPU work; keep it off the async workers.
        // Reading by path each time re-resolves symlinks, which is what makes a ConfigMap's
        // swap of its `..data` link visible.
        tokio::task::spawn_blocking(move || {
            let files = FilesBeside::of(&path);
            let outcome = tollgate_routes::load_with_files(&path, &files)
                .map(|(config, mut certificates)| {
                    key_sets.fill(&config, &mut certificates);
                    translated(config, certificates, &group_sizes)
                })
                .map_err(ReloadError::Load);
            Read {
                outcome,
                files: files.read_so_far(),
            }
        })
        .await
        .unwrap_or_else(|_| Read {
            outcome: Err(ReloadError::Panicked),
            files: Vec::new(),
        })
    }

    fn serve(&self, translated: Self::Loaded) -> Option<String> {
        self.note_certificate_expiry(translated.expiry);
        let version = translated.whole.version().to_string();
        self.fleet
            .serve_config(translated.whole, translated.shared, translated.routes)
            .then_some(version)
    }
}

/// Translates `config` for an Envoy alone and, when it has local limits, for each of
/// `group_sizes` (the fleet translates for sizes that change before it is served).
fn translated(
    config: tollgate_routes::RoutesConfig,
    certificates: Certificates,
    group_sizes: &BTreeMap<String, u32>,
) -> Translated {
    let whole = translate(&config, &certificates);
    let expiry = expiry_of(&certificates);
    if !has_shared_budgets(&config) {
        return Translated {
            whole,
            shared: BTreeMap::new(),
            routes: None,
            expiry,
        };
    }
    let shared = group_sizes
        .values()
        .filter_map(|&envoys| std::num::NonZeroU32::new(envoys).filter(|n| n.get() > 1))
        .map(|n| (n.get(), translate_shared(&config, &certificates, n)))
        .collect();
    Translated {
        whole,
        shared,
        routes: Some(Arc::new(LoadedRoutes {
            config,
            certificates,
        })),
        expiry,
    }
}

/// When each certificate `certificates` holds for Envoy to present expires.
fn expiry_of(certificates: &Certificates) -> CertificateExpiry {
    CertificateExpiry {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::SnapshotCache;

    const GOOD: &str = "version: 1\nlisteners: [{name: l, address: 127.0.0.1:8080}]\nservices: {s: {endpoints: [\"127.0.0.1:1\"]}}\nroutes: [{name: r, match: {prefix: /}, service: s}]\n";

    #[tokio::test]
    async fn a_bad_edit_keeps_the_last_good_snapshot_and_reports_where() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, GOOD).expect("write");
        let cache = Arc::new(SnapshotCache::new());
        let reloader = Reloader::new(&path, Translation::new(Arc::new(Fleet::new(cache.clone()))));
        assert!(reloader
            .reload()
            .await
            .expect("good config loads")
            .is_some());
        let good_version = cache.current().expect("snapshot").version().to_string();

        std::fs::write(&path, GOOD.replace("service: s", "service: nope")).expect("write");
        let error = reloader.reload().await.expect_err("bad config is refused");
        assert_eq!(cache.current().expect("snapshot").version(), good_version);
        let status = reloader.status();
        assert!(!status.ok);
        assert!(
            status.errors[0].ends_with(":4:49: unknown service \"nope\" in route \"r\""),
            "{error}"
        );
        assert_eq!(reloader.counts(), (1, 1));
    }

    #[tokio::test]
    async fn unchanged_bytes_are_not_parsed_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, GOOD).expect("write");
        let reloader = Reloader::new(
            &path,
            Translation::new(Arc::new(Fleet::new(Arc::new(SnapshotCache::new())))),
        );
        assert!(reloader.reload().await.expect("loads").is_some());
        assert!(reloader.reload().await.expect("same bytes").is_none());
        assert_eq!(reloader.counts(), (1, 0));
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

    #[tokio::test]
    async fn a_changed_certificate_file_is_a_reload_and_a_bad_one_is_refused_at_its_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("routes.yaml");
        std::fs::create_dir(dir.path().join("certs")).expect("mkdir");
        std::fs::write(&path, TLS).expect("write");
        std::fs::write(dir.path().join("certs/gw.pem"), CERT).expect("write");
        std::fs::write(dir.path().join("certs/gw.key"), KEY).expect("write");
        let cache = Arc::new(SnapshotCache::new());
        let reloader = Reloader::new(&path, Translation::new(Arc::new(Fleet::new(cache.clone()))));
        assert!(reloader
            .reload()
            .await
            .expect("relative paths resolve")
            .is_some());
        assert!(reloader
            .watched_files()
            .contains(&dir.path().join("certs/gw.key")));
        let good_version = cache.current().expect("snapshot").version().to_string();

        // routes.yaml is untouched; only the key changes, to one of another certificate.
        std::fs::write(dir.path().join("certs/gw.key"), OTHER_KEY).expect("write");
        reloader
            .reload()
            .await
            .expect_err("a mismatched key is refused");
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
            reloader
                .reload()
                .await
                .expect("the good pair again")
                .is_none(),
            "the same content is the same snapshot"
        );
        assert!(reloader.status().ok);
    }

    #[tokio::test]
    async fn a_missing_file_is_an_error_not_a_panic() {
        let reloader = Reloader::new(
            "/nonexistent/routes.yaml",
            Translation::new(Arc::new(Fleet::new(Arc::new(SnapshotCache::new())))),
        );
        assert!(matches!(
            reloader.reload().await,
            Err(ReloadError::Load(LoadError::Read(_)))
        ));
    }
}
