//! `serve`: load the config, bind the sockets, run the xDS server, the admin endpoints and
//! the file watcher until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tollgate_runtime::server_tls::{self, ServerTls, ServerTlsError, ServerTlsFiles, ALPN_H2};
use tracing::info;

use crate::admin::{self, AdminState};
use crate::fleet::peers::{self, PeerReports};
use crate::fleet::{self, Fleet};
use crate::key_sets::FetchedKeySets;
use crate::reload::{ReloadError, Reloader, Translation};
use crate::snapshot::SnapshotCache;
use crate::xds::{self, AdsServer, NodeRegistry};
use tollgate_runtime::fetch::HttpClient;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The routes file is unusable at start; nothing has been bound.
    #[error("{0}")]
    Config(#[from] ReloadError),
    /// The TLS files are unusable at start; nothing has been bound.
    #[error("xds TLS: {0}")]
    Tls(#[from] ServerTlsError),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Watch(#[from] tollgate_runtime::file_watch::WatchError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("admin server failed: {0}")]
    Admin(std::io::Error),
    /// rustls refused its own defaults for the key-set client: a build problem.
    #[error("https client for jwks_uri: {0}")]
    HttpClient(#[from] rustls::Error),
}

pub struct ServeOptions {
    pub routes: PathBuf,
    pub xds_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The other replicas' admin addresses, asked which Envoys they hold.
    pub peers: Vec<String>,
    /// How often `jwks_uri` key sets of providers Envoy enforces are fetched again.
    pub jwks_refresh_interval: std::time::Duration,
    /// Serve xDS over TLS with these files (client certificates required when they name a
    /// client CA); plaintext when `None`.
    pub xds_tls: Option<ServerTlsFiles>,
    /// Refuse a stream whose node id its client certificate does not name.
    pub bind_node_id_to_certificate: bool,
}

/// Runs the control plane until `shutdown` resolves.
pub async fn run(
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let cache = Arc::new(SnapshotCache::new());
    let fleet = Arc::new(Fleet::new(cache.clone()));
    let key_sets = Arc::new(FetchedKeySets::default());
    let reloader = Arc::new(Reloader::new(
        &options.routes,
        Translation::new(fleet.clone()).with_key_sets(key_sets.clone()),
    ));
    // Validate before binding anything: a bad file fails fast and listens nowhere.
    reloader.reload().await?;
    // Key sets by URL before the first Envoy connects, so that a replica that just started
    // does not serve providers without keys.
    let http = HttpClient::new()?;
    if key_sets.fetch_all(&http).await {
        reloader.reload_regardless().await?;
    }
    if let Some(snapshot) = cache.current() {
        info!(version = %snapshot.version(), file = %options.routes.display(), "routes.yaml loaded");
    }
    let xds_tls = options
        .xds_tls
        .map(|files| ServerTls::load(files, &[ALPN_H2]))
        .transpose()?;

    let bind = |what, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { what, addr, source })
    };
    let xds_listener = bind("xds", options.xds_addr).await?;
    let admin_listener = bind("admin", options.admin_addr).await?;
    info!(xds = %options.xds_addr, admin = %options.admin_addr, "listening");

    // One signal fans out to every task.
    let (stop, stopped) = watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });

    let nodes = Arc::new(NodeRegistry::new());
    let mut ads = AdsServer::new(cache.clone(), nodes.clone());
    if options.bind_node_id_to_certificate {
        ads = ads.bind_node_ids_to_certificates();
    }
    let (xds_tls, tls_reloads) = match xds_tls {
        Some(tls) => {
            let (tls, reloads) = server_tls::watch(tls, until_stopped()).await?;
            (Some(tls), futures::future::Either::Left(reloads))
        }
        None => (None, futures::future::Either::Right(std::future::ready(()))),
    };
    let admin_state = AdminState {
        reloader: reloader.clone(),
        cache,
        nodes: nodes.clone(),
        fleet: fleet.clone(),
    };
    let reloads = tollgate_runtime::reload::watch(reloader.clone(), until_stopped())?;
    peers::check_addresses(&options.peers);
    let peer_reports = Arc::new(PeerReports::default());
    let refetched_keys = {
        let reloader = reloader.clone();
        let key_sets = key_sets.clone();
        let interval = options.jwks_refresh_interval;
        let stop = until_stopped();
        async move {
            let reload = || async {
                // A reload that fails (a bad edit meanwhile) is logged by the reloader, and
                // the last good configuration keeps serving.
                let _ = reloader.reload_regardless().await;
            };
            key_sets.keep_fetching(&http, interval, reload, stop).await;
        }
    };
    let ((), admin, (), (), (), (), ()) = tokio::join!(
        xds::serve(xds_listener, ads, xds_tls, until_stopped()),
        admin::serve(admin_listener, admin_state, until_stopped()),
        reloads,
        tls_reloads,
        peers::poll(options.peers, peer_reports.clone(), until_stopped()),
        fleet::count_members(nodes, peer_reports, fleet, until_stopped()),
        refetched_keys,
    );
    admin.map_err(ServeError::Admin)?;
    Ok(())
}
