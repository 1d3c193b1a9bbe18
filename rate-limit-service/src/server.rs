//! Running the service: read and validate the limits, connect the store, bind the sockets,
//! serve gRPC (ShouldRateLimit and gRPC health) and HTTP (metrics, health), reload the
//! limits when their files change, and stop on the shutdown signal.
//!
//! Configuration is read and validated before any socket is bound, so a bad file fails the
//! start. Reloads are all-or-nothing: the new files are parsed completely and swapped in
//! only when valid; otherwise the old limits stay and the errors are logged.

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tollgate_routes::{read_text, ReadError};
use tollgate_runtime::file_watch::WatchError;
use tollgate_runtime::http::{self, Readiness};
use tollgate_runtime::reload::{Config, Outcome, Read};
use tollgate_runtime::server_tls::{self, ServerTls, ServerTlsError, ALPN_H2};
use tollgate_sidecar::grpc::{self, serve_on_threads, GrpcServer, ServingThreadsError};
use tonic::service::Routes;

use crate::algorithm::{Clock, SystemClock};
use crate::limits::dropin::{self, DropInErrors, SourceFile};
use crate::limits::{routes, DescriptorTree};
use crate::metrics::Metrics;
use crate::service::{CurrentLimits, LimitSet, RateLimiter, SHOULD_RATE_LIMIT_PATH};
use crate::settings::{LimitsSource, Settings};
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::{Store, StoreError};
use tollgate_sidecar::telemetry::{Telemetry, TelemetryError};

/// How often the store is probed; readiness is the last probe's answer.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Why the limits could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Routes(#[from] tollgate_routes::LoadError),
    #[error(transparent)]
    DropIn(#[from] DropInErrors),
    #[error("no *.yaml or *.yml file in {0}")]
    NoFiles(String),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

/// Why the service could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] LoadError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error("no limits: give --routes or --config")]
    NoLimits,
    #[error("invalid redis settings: {0}")]
    Redis(StoreError),
    #[error("gRPC TLS: {0}")]
    Tls(#[from] ServerTlsError),
    #[error("cannot watch the gRPC TLS files: {0}")]
    TlsWatch(#[from] WatchError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] ServingThreadsError<StoreError>),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
}

impl ServeError {
    /// True when the user must fix a flag or a file (exit status 64).
    pub fn is_bad_config(&self) -> bool {
        matches!(
            self,
            ServeError::Config(_)
                | ServeError::Telemetry(_)
                | ServeError::NoLimits
                | ServeError::Redis(_)
                | ServeError::Tls(_)
        )
    }
}

/// What the limits' files give the service.
#[derive(Debug)]
pub struct Loaded {
    pub tree: DescriptorTree,
    /// routes.yaml's `observability.tracing.otlp_endpoint` (`HOST:PORT`); envoyproxy/ratelimit
    /// files say nothing about tracing, so in drop-in mode the `--otlp-endpoint` flag does.
    pub otlp_endpoint: Option<String>,
}

/// Reads and validates the limits from their files.
pub fn load(source: &LimitsSource) -> Result<Loaded, LoadError> {
    load_from(source, &drop_in_files(source)?)
}

/// The files of a drop-in source: the file itself, or every *.yaml and *.yml file of the
/// directory. None for routes.yaml, which is read by path.
fn drop_in_files(source: &LimitsSource) -> Result<Vec<PathBuf>, LoadError> {
    match source {
        LimitsSource::Routes(_) => Ok(Vec::new()),
        LimitsSource::DropIn(path) if path.is_dir() => {
            let paths = dropin::config_files(path).map_err(|source| ReadError {
                path: path.display().to_string(),
                source,
            })?;
            if paths.is_empty() {
                return Err(LoadError::NoFiles(path.display().to_string()));
            }
            Ok(paths)
        }
        LimitsSource::DropIn(path) => Ok(vec![path.clone()]),
    }
}

/// [`load`], with the drop-in files already listed.
fn load_from(source: &LimitsSource, drop_in_files: &[PathBuf]) -> Result<Loaded, LoadError> {
    match source {
        LimitsSource::Routes(path) => {
            let config = tollgate_routes::load(path)?;
            Ok(Loaded {
                tree: routes::build(&config),
                otlp_endpoint: config
                    .observability
                    .tracing
                    .map(|t| t.otlp_endpoint.to_string()),
            })
        }
        LimitsSource::DropIn(_) => {
            let files = drop_in_files
                .iter()
                .map(|p| {
                    Ok(SourceFile {
                        name: p.display().to_string(),
                        text: read_text(p)?,
                    })
                })
                .collect::<Result<Vec<_>, LoadError>>()?;
            Ok(Loaded {
                tree: dropin::parse(&files)?,
                otlp_endpoint: None,
            })
        }
    }
}

/// Runs the service as configured until `shutdown` resolves, exporting spans through
/// `telemetry` where routes.yaml (or, in drop-in mode, `--otlp-endpoint`) says.
pub async fn run(
    settings: Settings,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let source = settings.limits_source().ok_or(ServeError::NoLimits)?;
    if let LimitsSource::DropIn(_) = source {
        // Drop-in files say nothing about tracing: the flag's collector stays.
        telemetry.configure(settings.otlp_endpoint.as_deref())?;
    }
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let limits = CurrentLimits::default();
    let traced_by_routes = matches!(source, LimitsSource::Routes(_)).then(|| telemetry.clone());
    let reloader = Arc::new(Reloader::new(
        source.path(),
        Limits::new(
            source.clone(),
            limits.clone(),
            metrics.clone(),
            traced_by_routes,
        ),
    ));
    reloader.reload().await?;
    metrics.config_load(true);
    log_loaded(&source, limits.get().tree());
    let redis = settings
        .redis_target()
        .map(|target| RedisStore::connect(&target, settings.redis_timeout))
        .transpose()
        .map_err(ServeError::Redis)?;
    let grpc_tls = settings
        .tls
        .files()
        .map(|files| ServerTls::load(files, &[ALPN_H2]))
        .transpose()?;

    let grpc = bind(settings.grpc_addr).await?;
    let http = bind(settings.metrics_addr).await?;
    let threads = settings.serving_threads();
    tracing::info!(
        grpc = %settings.grpc_addr,
        metrics = %settings.metrics_addr,
        store = if redis.is_some() { "redis" } else { "memory" },
        threads,
        tls = grpc_tls.is_some(),
        "serving"
    );
    let readiness = Readiness::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let http_server = tokio::spawn(http::serve(
        http,
        http::router(Arc::new(registry), readiness.clone()),
        wait(),
    ));
    let reloads = match tollgate_runtime::reload::watch(reloader, wait()) {
        Ok(reloads) => Some(tokio::spawn(reloads)),
        Err(error) => {
            tracing::error!(%error, "limits will not be reloaded");
            None
        }
    };
    let tls = match grpc_tls {
        Some(tls) => {
            let (tls, reloads) = server_tls::watch(tls, wait()).await?;
            tokio::spawn(reloads);
            Some(tls)
        }
        None => None,
    };
    let serving = Serving {
        clock: SystemClock,
        limits,
        metrics: metrics.clone(),
        readiness,
        threads,
        tls,
    };
    let served = async {
        match redis {
            Some(store) => {
                let store = store.count_local_hits(metrics.local_cache_hits.clone());
                serve_with_health(grpc, Arc::new(store), serving, wait()).await
            }
            None => serve_with_health(grpc, Arc::new(MemoryStore::new()), serving, wait()).await,
        }
    };
    tokio::pin!(served);
    let result = tokio::select! {
        result = &mut served => result,
        () = shutdown => {
            let _ = stop.send(true);
            served.await
        }
    };
    let _ = stop.send(true);
    if let Some(reloads) = reloads {
        reloads.abort();
    }
    telemetry.shutdown();
    if let Ok(Err(e)) = http_server.await {
        return Err(ServeError::Http(e));
    }
    result
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// What serving needs besides the listener and the store.
pub struct Serving<C> {
    pub clock: C,
    pub limits: CurrentLimits,
    pub metrics: Metrics,
    pub readiness: Readiness,
    pub threads: NonZeroUsize,
    /// Serve over TLS with these certificate files; plaintext when `None`.
    pub tls: Option<Arc<tollgate_runtime::reload::Reloader<ServerTls>>>,
}

/// Serves ShouldRateLimit and gRPC health on `listener` from `serving.threads` threads,
/// each checking through its own handle on `store`, keeping health and `/readyz` in step
/// with the store, until `shutdown`.
pub async fn serve_with_health<S: Store, C: Clock + Clone>(
    listener: TcpListener,
    store: Arc<S>,
    serving: Serving<C>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let Serving {
        clock,
        limits,
        metrics,
        readiness,
        threads,
        tls,
    } = serving;
    let (health, health_service) = tonic_health::server::health_reporter();
    let probed = store.clone();
    let watch = tokio::spawn(async move {
        let mut ready = None;
        loop {
            let probe = probed.probe().await;
            let now_ready = probe.is_ok();
            if ready != Some(now_ready) {
                readiness.set(now_ready);
                let status = match probe {
                    Ok(()) => tonic_health::ServingStatus::Serving,
                    Err(error) => {
                        tracing::warn!(%error, "the store does not answer: not ready");
                        tonic_health::ServingStatus::NotServing
                    }
                };
                health.set_service_status("", status).await;
                health
                    .set_service_status("envoy.service.ratelimit.v3.RateLimitService", status)
                    .await;
                if now_ready && ready.is_some() {
                    tracing::info!("the store answers again: ready");
                }
                ready = Some(now_ready);
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    });
    let server = move || -> Result<GrpcServer, StoreError> {
        let store = store.for_this_runtime()?;
        let limiter = RateLimiter::new(limits.clone(), store, clock.clone(), metrics.clone());
        let server = grpc_server(limiter, Routes::new(health_service.clone()));
        Ok(match &tls {
            Some(tls) => server.tls(Arc::clone(tls)),
            None => server,
        })
    };
    let result = serve_on_threads(listener, threads, server, shutdown).await;
    watch.abort();
    Ok(result?)
}

/// Serves ShouldRateLimit alone on `listener` until `shutdown`: what tests and benchmarks
/// start in-process.
pub async fn serve<S: Store, C: Clock>(
    listener: TcpListener,
    limiter: RateLimiter<S, C>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    grpc::serve(listener, grpc_server(limiter, Routes::default()), shutdown).await
}

/// ShouldRateLimit answered by `limiter`, and `routes`' methods.
fn grpc_server<S: Store, C: Clock>(limiter: RateLimiter<S, C>, routes: Routes) -> GrpcServer {
    let limiter = Arc::new(limiter);
    GrpcServer::new(routes).unary(SHOULD_RATE_LIMIT_PATH, move |request| {
        let limiter = Arc::clone(&limiter);
        async move { limiter.should_rate_limit(request).await }
    })
}

/// Loads the limits, and reloads them when their files change.
pub type Reloader = tollgate_runtime::reload::Reloader<Limits>;

/// The limits their files declare, served to ShouldRateLimit: the service's [`Config`].
pub struct Limits {
    source: LimitsSource,
    limits: CurrentLimits,
    metrics: Metrics,
    /// With it, the file also says where spans go (routes.yaml's `observability.tracing`).
    telemetry: Option<Telemetry>,
}

impl Limits {
    pub fn new(
        source: LimitsSource,
        limits: CurrentLimits,
        metrics: Metrics,
        telemetry: Option<Telemetry>,
    ) -> Self {
        Limits {
            source,
            limits,
            metrics,
            telemetry,
        }
    }
}

impl Config for Limits {
    type Loaded = DescriptorTree;
    type Error = LoadError;
    const NAME: &'static str = "limits";

    async fn read(&self, _path: &Path) -> Read<Self> {
        // The directory is listed once: its files are what is parsed and what the reload
        // loop compares between events, whether or not this version of them is valid.
        let (outcome, files) = match drop_in_files(&self.source) {
            Ok(files) => (load_from(&self.source, &files), files),
            Err(error) => (Err(error), Vec::new()),
        };
        let outcome = outcome.and_then(|loaded| {
            if let Some(telemetry) = &self.telemetry {
                telemetry.configure(loaded.otlp_endpoint.as_deref())?;
            }
            Ok(loaded.tree)
        });
        Read { outcome, files }
    }

    fn serve(&self, tree: DescriptorTree) -> Option<String> {
        if self.limits.get().tree() == &tree {
            return None;
        }
        let domains: Vec<&str> = tree.domains().collect();
        let served = format!("domains {domains:?}, {} limits", tree.limits().len());
        self.limits.replace(LimitSet::new(tree, &self.metrics));
        Some(served)
    }

    fn reloaded(&self, outcome: Outcome) {
        match outcome {
            Outcome::Served => self.metrics.config_load(true),
            Outcome::Refused => self.metrics.config_load(false),
            Outcome::Same => {}
        }
    }
}

fn log_loaded(source: &LimitsSource, tree: &DescriptorTree) {
    let (mode, path) = match source {
        LimitsSource::Routes(p) => ("routes", p),
        LimitsSource::DropIn(p) => ("drop-in", p),
    };
    let domains: Vec<&str> = tree.domains().collect();
    tracing::info!(mode, path = %path.display(), ?domains, limits = tree.limits().len(), "limits loaded");
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n";

    fn requests_for_k(limits: &CurrentLimits) -> Option<u64> {
        limits
            .get()
            .tree()
            .find("d", &[("k", "v")])
            .and_then(|m| m.limit.rate.map(|(r, _)| r.requests))
    }

    #[tokio::test]
    async fn a_bad_file_keeps_the_previous_limits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("d.yaml");
        std::fs::write(&file, GOOD).expect("write");
        let source = LimitsSource::DropIn(file.clone());
        let limits = CurrentLimits::default();
        let reloader = Reloader::new(
            &file,
            Limits::new(source, limits.clone(), Metrics::unregistered(), None),
        );
        reloader.reload().await.expect("valid");
        std::fs::write(&file, GOOD.replace("second", "fortnight")).expect("write");
        assert!(reloader.reload().await.is_err());
        assert_eq!(requests_for_k(&limits), Some(1));
        std::fs::write(
            &file,
            GOOD.replace("requests_per_unit: 1", "requests_per_unit: 7"),
        )
        .expect("write");
        reloader.reload().await.expect("valid");
        assert_eq!(requests_for_k(&limits), Some(7));
    }

    #[tokio::test]
    async fn an_edited_file_of_a_directory_is_a_new_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("d.yaml"), GOOD).expect("write");
        let limits = CurrentLimits::default();
        let reloader = Reloader::new(
            dir.path(),
            Limits::new(
                LimitsSource::DropIn(dir.path().to_path_buf()),
                limits.clone(),
                Metrics::unregistered(),
                None,
            ),
        );
        reloader.reload().await.expect("valid");
        std::fs::write(
            dir.path().join("d.yaml"),
            GOOD.replace("requests_per_unit: 1", "requests_per_unit: 7"),
        )
        .expect("write");
        assert!(reloader.reload().await.expect("valid").is_some());
        assert_eq!(requests_for_k(&limits), Some(7));
    }

    #[test]
    fn a_directory_loads_every_yaml_file_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("d.yaml"), GOOD).expect("write");
        std::fs::write(
            dir.path().join("e.yml"),
            GOOD.replace("domain: d", "domain: e"),
        )
        .expect("write");
        std::fs::write(dir.path().join("notes.txt"), "not yaml: [").expect("write");
        let tree = load(&LimitsSource::DropIn(dir.path().to_path_buf()))
            .expect("valid")
            .tree;
        let mut domains: Vec<&str> = tree.domains().collect();
        domains.sort_unstable();
        assert_eq!(domains, vec!["d", "e"]);
    }

    #[test]
    fn an_empty_directory_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = load(&LimitsSource::DropIn(dir.path().to_path_buf())).expect_err("no files");
        assert!(matches!(error, LoadError::NoFiles(_)));
    }
}
