//! The gRPC listening socket every sidecar serves on, the serving threads behind it, and
//! the allocator they run with.

use std::future::Future;
use std::io;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::service::Routes;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// Connections accepted on `listener`, with TCP_NODELAY: without it a small response can
/// wait for the peer's delayed ACK (40 ms on Linux), which was once a sidecar's whole p99.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
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

/// How long the accept loop rests after a failed accept (out of file descriptors, say)
/// before trying again, rather than spinning on the error.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Why threaded serving stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum ServingThreadsError<E: std::error::Error + 'static> {
    #[error("cannot start a serving thread: {0}")]
    Spawn(#[source] io::Error),
    #[error("a serving thread could not set up its services: {0}")]
    Setup(#[source] E),
    #[error("a serving thread failed: {0}")]
    Serve(#[source] tonic::transport::Error),
    #[error("a serving thread stopped unexpectedly")]
    Stopped,
}

/// Serves gRPC on `threads` threads until `shutdown`, each thread a current-thread Tokio
/// runtime of its own that runs the services `routes` builds for it there.
///
/// A connection lives on one thread for its whole life: its HTTP/2 framing, its calls and
/// whatever they wait on (a Redis connection the thread opened itself, say) are woken and
/// polled on that thread. A work-stealing runtime spreads the same work over its workers
/// and pays for it in cross-thread wake-ups: the shipped rate-limit bench measured about
/// 36 µs of CPU per decision on one against about 21 µs here. Each connection goes to the
/// thread with the fewest open ones, so the few long-lived HTTP/2 connections Envoys open
/// (one per Envoy worker) spread evenly.
///
/// `routes` runs once per thread, on that thread's runtime, so that what it connects is
/// bound to the thread that uses it. The accept loop runs on the caller's runtime. A thread
/// that fails or stops on its own stops them all, and its error is returned.
pub async fn serve_on_threads<E, R>(
    listener: TcpListener,
    threads: NonZeroUsize,
    routes: R,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServingThreadsError<E>>
where
    E: std::error::Error + Send + 'static,
    R: Fn() -> Result<Routes, E> + Send + Sync + 'static,
{
    let routes = Arc::new(routes);
    let (stop, stopped) = watch::channel(false);
    let mut serving = Vec::with_capacity(threads.get());
    let mut ends = JoinSet::new();
    for index in 0..threads.get() {
        let (thread, end) = match ServingThread::spawn(index, routes.clone(), stopped.clone()) {
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
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => hand_over(&serving, stream),
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a gRPC connection");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
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
        routes: Arc<R>,
        stopped: watch::Receiver<bool>,
    ) -> io::Result<(Self, ThreadEnd<E>)>
    where
        E: std::error::Error + Send + 'static,
        R: Fn() -> Result<Routes, E> + Send + Sync + 'static,
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
                    let routes = routes().map_err(ServingThreadsError::Setup)?;
                    let incoming = UnboundedReceiverStream::new(received).map(Handoff::register);
                    tonic::transport::Server::builder()
                        .add_routes(routes)
                        .serve_with_incoming_shutdown(incoming, wait_for(stopped))
                        .await
                        .map_err(ServingThreadsError::Serve)
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
    let _ = stream.set_nodelay(true);
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

impl Handoff {
    /// Binds the connection to the reactor of the runtime this runs on: the serving
    /// thread's, where the server polls its incoming connections.
    fn register(self) -> io::Result<Assigned> {
        Ok(Assigned {
            stream: TcpStream::from_std(self.stream)?,
            _open: self.open,
        })
    }
}

/// A connection being served by its thread.
struct Assigned {
    stream: TcpStream,
    _open: OpenConnection,
}

impl Connected for Assigned {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Assigned {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Assigned {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
