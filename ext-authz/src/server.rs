//! Running the service: configuration is loaded and validated first, then the gRPC port
//! (Authorization and grpc.health.v1) and the metrics port serve until shutdown, while
//! routes.yaml is watched for changes.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tollgate_runtime::file_watch::WatchError;
use tollgate_runtime::http::{self, Readiness};
use tollgate_runtime::server_tls::{self, ServerTls, ServerTlsError, ServerTlsFiles, ALPN_H2};
use tollgate_sidecar::grpc::{self, serve_on_threads, GrpcServer, ServingThreadsError};
use tollgate_sidecar::telemetry::Telemetry;
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::cache::TokenCache;
use crate::jwks::HttpClient;
use crate::metrics::Metrics;
use crate::providers::{ProviderSettings, Providers};
use crate::reload::{AuthProviders, LoadError, Reloader};
use crate::service::{self, AuthService};

/// Everything `serve` needs besides sockets, as the command line gives it.
#[derive(Clone, Debug)]
pub struct Options {
    pub routes: PathBuf,
    pub realm: String,
    pub token_cache_size: usize,
    pub jwks_refresh_interval: Duration,
    pub jwks_cooldown: Duration,
    /// Where to export spans, as routes.yaml's `observability.tracing` says; `None`: the
    /// process exports none (tests and benchmarks that run the service in-process).
    pub telemetry: Option<Telemetry>,
    /// Threads of their own serving gRPC calls, one connection each (see
    /// `tollgate_sidecar::grpc::serve_on_threads`); `None`: calls are served on the runtime
    /// `serve` runs on (tests, and the bench's server thread).
    pub serving_threads: Option<NonZeroUsize>,
    /// Serve gRPC over TLS with these files; plaintext when `None`.
    pub grpc_tls: Option<ServerTlsFiles>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configuration the user must fix (exit 64).
    #[error(transparent)]
    Config(#[from] LoadError),
    #[error("cannot watch routes.yaml: {0}")]
    Watch(#[from] WatchError),
    #[error("cannot set up TLS for JWKS fetches: {0}")]
    Tls(#[from] rustls::Error),
    /// The gRPC port's TLS files are unusable (exit 64).
    #[error("gRPC TLS: {0}")]
    GrpcTls(#[from] ServerTlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Serving(#[from] ServingThreadsError<Infallible>),
    #[error("metrics server failed: {0}")]
    Metrics(std::io::Error),
}

/// A loaded, validated service, not yet listening.
pub struct App {
    options: Options,
    pub service: AuthService,
    pub metrics: Arc<Metrics>,
    pub providers: Arc<Providers>,
    registry: Arc<Registry>,
    reloader: Arc<Reloader>,
    grpc_tls: Option<ServerTls>,
}

impl App {
    /// Reads routes.yaml and loads every provider's keys (remote ones start fetching).
    pub async fn load(options: Options) -> Result<App, StartError> {
        let grpc_tls = options
            .grpc_tls
            .clone()
            .map(|files| ServerTls::load(files, &[ALPN_H2]))
            .transpose()?;
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        let base_dir = match options.routes.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let settings = ProviderSettings {
            base_dir,
            client: HttpClient::new()?,
            refresh_interval: options.jwks_refresh_interval,
            cooldown: options.jwks_cooldown,
            metrics: Arc::clone(&metrics),
        };
        let providers = Arc::new(Providers::default());
        let reloader = Arc::new(Reloader::new(
            &options.routes,
            AuthProviders {
                providers: Arc::clone(&providers),
                settings,
                telemetry: options.telemetry.clone(),
            },
        ));
        reloader.reload().await?;
        tracing::info!(file = %options.routes.display(), providers = providers.load().len(), "routes.yaml loaded");
        let service = AuthService::new(
            Arc::clone(&providers),
            Arc::new(TokenCache::new(options.token_cache_size)),
            Arc::clone(&metrics),
            &options.realm,
            service::system_clock,
        );
        Ok(App {
            options,
            service,
            metrics,
            providers,
            registry: Arc::new(registry),
            reloader,
            grpc_tls,
        })
    }

    /// Serves on already-bound listeners until `shutdown` resolves.
    pub async fn serve(
        self,
        grpc: TcpListener,
        metrics: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let signal = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });

        let watcher = tokio::spawn(tollgate_runtime::reload::watch(
            Arc::clone(&self.reloader),
            signal(stopped.clone()),
        )?);
        let grpc_tls = match self.grpc_tls {
            Some(tls) => {
                let (tls, reloads) = server_tls::watch(tls, signal(stopped.clone())).await?;
                tokio::spawn(reloads);
                Some(tls)
            }
            None => None,
        };

        let readiness = Readiness::default();
        let router = http::router(Arc::clone(&self.registry), readiness.clone());
        let metrics_server = tokio::spawn(http::serve(metrics, router, signal(stopped.clone())));

        let (health, health_service) = tonic_health::server::health_reporter();
        let grpc_addr = grpc.local_addr().ok();
        let providers = Arc::clone(&self.providers);
        tokio::spawn(async move {
            providers.load().wait_loaded().await;
            health
                .set_service_status(service::AUTHORIZATION_SERVICE, ServingStatus::Serving)
                .await;
            readiness.set(true);
            tracing::info!(addr = ?grpc_addr, "ready");
        });
        let service = Arc::new(self.service);
        let server = move || {
            let service = Arc::clone(&service);
            let server = GrpcServer::new(Routes::new(health_service.clone())).unary(
                service::CHECK_PATH,
                move |request| {
                    let service = Arc::clone(&service);
                    async move { service.check(request).await }
                },
            );
            Ok::<_, Infallible>(match &grpc_tls {
                Some(tls) => server.tls(Arc::clone(tls)),
                None => server,
            })
        };
        let result = match self.options.serving_threads {
            None => {
                let Ok(server) = server();
                grpc::serve(grpc, server, signal(stopped)).await;
                Ok(())
            }
            Some(threads) => serve_on_threads(grpc, threads, server, signal(stopped))
                .await
                .map_err(StartError::from),
        };
        watcher.abort();
        if let Some(telemetry) = &self.options.telemetry {
            telemetry.shutdown();
        }
        result?;
        match metrics_server.await {
            Ok(Ok(())) | Err(_) => Ok(()),
            Ok(Err(error)) => Err(StartError::Metrics(error)),
        }
    }
}

/// Loads, binds and serves: the whole life of the process.
pub async fn run(
    options: Options,
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let app = App::load(options).await?;
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let grpc = bind(grpc_addr).await?;
    let metrics = bind(metrics_addr).await?;
    tracing::info!(grpc = %grpc_addr, metrics = %metrics_addr, "listening");
    app.serve(grpc, metrics, shutdown).await
}
