//! How the sidecars serve gRPC: the server (`GrpcServer`), the serving threads behind
//! the listening socket, and the allocator they run with.
//!
//! Every accepted connection gets TCP_NODELAY: without it a small response can wait for
//! the peer's delayed ACK (40 ms on Linux), which was once a sidecar's whole p99.

mod server;
mod tls_flags;

use std::future::Future;
use std::io;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

pub use server::{GrpcServer, ReplyBody, MAX_REQUEST_MESSAGE};
pub use tls_flags::TlsFlags;

/// The gRPC wire handling of [`GrpcServer`] on its own, for `fuzz/` (the `grpc_framing`
/// target): not an API of this crate.
#[doc(hidden)]
pub mod wire {
    pub use super::server::{grpc_timeout, read_message, unframe, MAX_REQUEST_MESSAGE};
}

/// Serves `server` on `listener` on the caller's runtime until `shutdown`, then lets the
/// calls in flight finish: what tests and benches that measure one thread start.
pub async fn serve(listener: TcpListener, server: GrpcServer, shutdown: impl Future<Output = ()>) {
    let (stop, stopped) = watch::channel(false);
    let serving = serve_connections(server, listener, stopped);
    tokio::pin!(serving, shutdown);
    tokio::select! {
        () = &mut serving => {}
        () = &mut shutdown => {
            let _ = stop.send(true);
            serving.await;
        }
    }
}

/// The sidecars' global allocator: jemalloc instead of glibc's malloc. gRPC over HTTP/2
/// allocates and frees small buffers on every call, and jemalloc's thread caches cut the
/// sidecars' CPU per call by about a sixth in `make bench`. mimalloc saved a little more
/// CPU but added multi-millisecond stalls to the rate-limit bench's half-load p99, which
/// is itself a target.
pub use tikv_jemallocator::Jemalloc as Allocator;

/// One serving thread per CPU core this process may run on (its affinity and cgroup CPU
/// quota, as the standard library reads them): the sidecars' default.
pub fn serving_threads_per_core() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// The runtime a sidecar's `main` runs on, beside its serving threads: one worker, for it
/// only accepts connections, serves /metrics and reloads its configuration; calls are served
/// by threads of their own (`serve_on_threads`).
pub fn acceptor_runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
}

/// How long the accept loop rests after a failed accept (out of file descriptors, say)
/// before trying again, rather than spinning on the error.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// How long a stopping server waits for the calls in flight. Unary calls end within the
/// caller's timeout (Envoy's are well under a second); only a stream can outlast this, such
/// as a health Watch, and it must not hold a shutdown up for ever.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Why threaded serving stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum ServingThreadsError<E: std::error::Error + 'static> {
    #[error("cannot start a serving thread: {0}")]
    Spawn(#[source] io::Error),
    #[error("a serving thread could not set up its services: {0}")]
    Setup(#[source] E),
    #[error("a serving thread stopped unexpectedly")]
    Stopped,
}

/// Serves gRPC on `threads` threads until `shutdown`, each thread a current-thread Tokio
/// runtime of its own that runs the server `server` builds for it there.
///
/// A connection lives on one thread for its whole life: its HTTP/2 framing, its calls and
/// whatever they wait on (a Redis connection the thread opened itself, say) are woken and
/// polled on that thread. A work-stealing runtime spreads the same work over its workers
/// and pays for it in cross-thread wake-ups: the shipped rate-limit bench measured about
/// 36 µs of CPU per decision on one against about 21 µs here. Each connection goes to the
/// thread with the fewest open ones, so the few long-lived HTTP/2 connections Envoys open
/// (one per Envoy worker) spread evenly.
///
/// `server` runs once per thread, on that thread's runtime, so that what it connects is
/// bound to the thread that uses it. The accept loop runs on the caller's runtime. A thread
/// that fails or stops on its own stops them all, and its error is returned.
pub async fn serve_on_threads<E, R>(
    mut listener: TcpListener,
    threads: NonZeroUsize,
    server: R,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServingThreadsError<E>>
where
    E: std::error::Error + Send + 'static,
    R: Fn() -> Result<GrpcServer, E> + Send + Sync + 'static,
{
    let server = Arc::new(server);
    let (stop, stopped) = watch::channel(false);
    let mut serving = Vec::with_capacity(threads.get());
    let mut ends = JoinSet::new();
    for index in 0..threads.get() {
        let (thread, end) = match ServingThread::spawn(index, server.clone(), stopped.clone()) {
            Ok(spawned) => spawned,
            Err(error) => {
                let _ = stop.send(true);
                return Err(ServingThreadsError::Spawn(error));
            }
        };
        serving.push(thread);
        ends.spawn(async move { end.await.unwrap_or(Err(ServingThreadsError::Stopped)) });
    }

    tokio::pin!(shutdown);
    let early_end = loop {
        tokio::select! {
            Some((stream, ())) = listener.next() => hand_over(&serving, stream),
            Some(end) = ends.join_next() => break Some(end),
            () = &mut shutdown => break None,
        }
    };
    // Every thread finishes the calls it has in flight, then stops.
    let _ = stop.send(true);
    drop(serving);
    let mut outcome = match early_end {
        // Asked or not, a thread that ends before shutdown has stopped serving.
        Some(Ok(Ok(()))) => Err(ServingThreadsError::Stopped),
        Some(end) => end.unwrap_or(Err(ServingThreadsError::Stopped)),
        None => Ok(()),
    };
    while let Some(end) = ends.join_next().await {
        if outcome.is_ok() {
            outcome = end.unwrap_or(Err(ServingThreadsError::Stopped));
        }
    }
    outcome
}

/// How a serving thread ended; dropped unsent if it panicked.
type ThreadEnd<E> = oneshot::Receiver<Result<(), ServingThreadsError<E>>>;

/// One serving thread, as the accept loop sees it.
struct ServingThread {
    connections: mpsc::UnboundedSender<Handoff>,
    open: Arc<AtomicUsize>,
}

impl ServingThread {
    /// Starts the thread.
    fn spawn<E, R>(
        index: usize,
        server: Arc<R>,
        stopped: watch::Receiver<bool>,
    ) -> io::Result<(Self, ThreadEnd<E>)>
    where
        E: std::error::Error + Send + 'static,
        R: Fn() -> Result<GrpcServer, E> + Send + Sync + 'static,
    {
        let (connections, received) = mpsc::unbounded_channel::<Handoff>();
        let (end_tx, end) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("grpc-serving-{index}"))
            .spawn(move || {
                let result = runtime.block_on(async move {
                    let server = server().map_err(ServingThreadsError::Setup)?;
                    serve_connections(server, received, stopped).await;
                    Ok(())
                });
                let _ = end_tx.send(result);
            })?;
        let thread = ServingThread {
            connections,
            open: Arc::new(AtomicUsize::new(0)),
        };
        Ok((thread, end))
    }
}

/// Gives `stream` to the thread with the fewest open connections.
fn hand_over(serving: &[ServingThread], stream: TcpStream) {
    let Some(thread) = serving
        .iter()
        .min_by_key(|t| t.open.load(Ordering::Relaxed))
    else {
        return;
    };
    match stream.into_std() {
        Ok(stream) => {
            let open = OpenConnection::count(&thread.open);
            // A thread that has stopped has dropped its receiver, and the connection is
            // closed; the accept loop learns of the stop from the thread's end.
            let _ = thread.connections.send(Handoff { stream, open });
        }
        Err(error) => tracing::warn!(%error, "cannot hand a gRPC connection over"),
    }
}

async fn wait_for(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// One of a thread's open connections, counted until dropped.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn count(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection on its way to its serving thread, bound to no runtime yet.
struct Handoff {
    stream: std::net::TcpStream,
    open: OpenConnection,
}

/// Where a serving loop takes its connections from, each with a guard it holds for as long
/// as it serves the connection.
trait Connections {
    type Guard: Send + 'static;

    /// The next connection; `None` once there will be no more.
    async fn next(&mut self) -> Option<(TcpStream, Self::Guard)>;
}

impl Connections for TcpListener {
    type Guard = ();

    async fn next(&mut self) -> Option<(TcpStream, ())> {
        loop {
            match self.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, ()));
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a gRPC connection");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            }
        }
    }
}

impl Connections for mpsc::UnboundedReceiver<Handoff> {
    type Guard = OpenConnection;

    async fn next(&mut self) -> Option<(TcpStream, OpenConnection)> {
        loop {
            let Handoff { stream, open } = self.recv().await?;
            // Binds the connection to this runtime's reactor: the serving thread's.
            match TcpStream::from_std(stream) {
                Ok(stream) => return Some((stream, open)),
                Err(error) => tracing::warn!(%error, "cannot take a gRPC connection over"),
            }
        }
    }
}

/// Serves every connection `connections` gives, each in a task of this runtime, until
/// `stopped`; then lets each open connection finish the calls it has in flight, for at most
/// `DRAIN_GRACE`.
async fn serve_connections(
    server: GrpcServer,
    mut connections: impl Connections,
    stopped: watch::Receiver<bool>,
) {
    let mut open = JoinSet::new();
    let stop = wait_for(stopped.clone());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            next = connections.next() => {
                let Some((stream, guard)) = next else { break };
                let serving = server.clone().serve_tcp(stream, wait_for(stopped.clone()));
                open.spawn(async move {
                    serving.await;
                    drop(guard);
                });
            }
            // Reaps finished connections, so that their tasks' results do not pile up.
            Some(_) = open.join_next(), if !open.is_empty() => {}
            () = &mut stop => break,
        }
    }
    let drained = async { while open.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_GRACE, drained).await.is_err() {
        tracing::warn!(
            connections = open.len(),
            "calls still open {DRAIN_GRACE:?} after shutdown began; closing their connections"
        );
        open.shutdown().await;
    }
}
