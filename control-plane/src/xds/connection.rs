//! One xDS client connection served over HTTP/2, with its writes gathered per poll.
//!
//! h2 writes each DATA frame (16 KiB at most, the size Envoy allows) to the socket on its
//! own, so a push of a thousand routes or clusters costs one `writev` per frame, and on the
//! way each pays the kernel's whole transmit path (and, on loopback, the receiver's). Here
//! h2 writes into a buffer instead, and the connection's task hands the buffer to the
//! socket once h2 has done all it can in that poll: a push leaves in one write, and the
//! frames of every stream woken together leave with it. Reads go to the socket directly.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::codegen::{http, Service};
use tracing::debug;

use super::service::AdsService;
use super::transport::ClientConnection;

type Http2 = hyper::server::conn::http2::Builder<TokioExecutor>;

/// Serves every connection `connections` yields, each in a task of its own, until
/// `shutdown`; then closes each gracefully and returns once all have closed.
pub(crate) async fn serve_all<C: ClientConnection>(
    connections: impl Stream<Item = C>,
    service: AdsService,
    shutdown: impl Future<Output = ()>,
) {
    let mut http2 = Http2::new(TokioExecutor::new());
    http2.timer(TokioTimer::new());
    let (draining, drain) = watch::channel(false);
    let mut connections = Box::pin(connections);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            next = connections.next() => match next {
                Some(connection) => {
                    tokio::spawn(serve_one(connection, service.clone(), http2.clone(), drain.clone()));
                }
                None => break,
            },
        }
    }
    // The listener closes first, so that a client is refused rather than accepted and left
    // waiting while the others drain.
    drop(connections);
    let _ = draining.send(true);
    drop(drain);
    // Each connection holds a receiver until it has closed.
    draining.closed().await;
}

/// Serves one connection until the client closes it, or closes it gracefully once `drain`
/// turns true.
async fn serve_one<C: ClientConnection>(
    connection: C,
    service: AdsService,
    http2: Http2,
    mut drain: watch::Receiver<bool>,
) {
    let identity = connection.identity();
    let sending = SendingChunks::default();
    let (io, outbox) = gathered(connection, sending.clone());
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        if let Some(identity) = &identity {
            request.extensions_mut().insert(identity.clone());
        }
        request.extensions_mut().insert(sending.clone());
        service.clone().call(request)
    });
    let mut serving = WritesAfterPoll {
        connection: Box::pin(http2.serve_connection(TokioIo::new(io), service)),
        outbox,
    };
    let ended = tokio::select! {
        served = &mut serving => Some(served),
        _ = drain.wait_for(|draining| *draining) => None,
    };
    let served = match ended {
        Some(served) => served,
        None => {
            serving.connection.as_mut().graceful_shutdown();
            serving.await
        }
    };
    if let Err(error) = served {
        debug!(%error, "xds connection ended with an error");
    }
}

/// Bytes gathered before h2's writes wait for the socket to take them: enough for the
/// largest pushes (a thousand clusters' SotW set is about 110 KiB), little enough that ten
/// thousand slow readers cannot hold much memory between them.
const HIGH_WATER: usize = 256 * 1024;

/// Slices at least this long are looked up among the chunks being sent; shorter ones (frame
/// heads, the tail of a chunk split by flow control) are cheaper copied.
const BY_REFERENCE_FROM: usize = 1024;

/// The most slices handed to one `writev`.
const SLICES_PER_WRITE: usize = 64;

/// The socket and what h2 wrote to it that has not gone out yet, shared by the I/O h2
/// holds and the task that writes it out (one task: the lock is never contended).
struct Outbox<T> {
    io: T,
    /// What h2 wrote, in order: runs of copied bytes, and slices of the chunks being sent
    /// held by reference.
    pending: VecDeque<Bytes>,
    /// Copied bytes not yet moved to `pending`.
    copied: BytesMut,
    /// The length of `pending` and `copied` together.
    pending_bytes: usize,
    sending: SendingChunks,
    /// A failed write to the socket, given to h2 at its next write or flush.
    failed: Option<io::Error>,
}

impl<T: AsyncWrite + Unpin> Outbox<T> {
    /// Takes in a slice h2 wrote: by reference when it lies in a chunk being sent (a
    /// response's shared resources, which h2 frames without copying), else copied. A
    /// cluster set sent to ten thousand nodes is then copied once per node, by the kernel,
    /// and not once more into this buffer.
    fn gather(&mut self, slice: &[u8]) {
        self.pending_bytes += slice.len();
        if slice.len() >= BY_REFERENCE_FROM {
            if let Some(referenced) = self.sending.find(slice) {
                self.move_copied();
                self.pending.push_back(referenced);
                return;
            }
        }
        if self.copied.capacity() - self.copied.len() < slice.len() {
            self.copied.reserve(slice.len().max(COPIED_BLOCK));
        }
        self.copied.extend_from_slice(slice);
    }

    fn move_copied(&mut self) {
        if !self.copied.is_empty() {
            self.pending.push_back(self.copied.split().freeze());
        }
    }

    /// Hands the pending bytes to the socket until none are left or it would block.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.move_copied();
        while !self.pending.is_empty() {
            let mut slices = [io::IoSlice::new(&[]); SLICES_PER_WRITE];
            let count = self.pending.len().min(SLICES_PER_WRITE);
            for (slice, chunk) in slices.iter_mut().zip(&self.pending) {
                *slice = io::IoSlice::new(chunk);
            }
            let written = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(written);
        }
        // Freed rather than kept for the next write: most connections are idle between
        // edits, and ten thousand kept buffers would add up.
        self.pending = VecDeque::new();
        self.copied = BytesMut::new();
        self.sending.forget_sent();
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut written: usize) {
        self.pending_bytes -= written;
        while let Some(front) = self.pending.front_mut() {
            if written < front.len() {
                front.advance(written);
                return;
            }
            written -= front.len();
            self.pending.pop_front();
        }
    }

    fn discard_pending(&mut self) {
        self.pending.clear();
        self.copied.clear();
        self.pending_bytes = 0;
    }

    fn take_failure(&mut self) -> io::Result<()> {
        self.failed.take().map_or(Ok(()), Err)
    }
}

/// Copied bytes are gathered in blocks of at least this size, so that the frame heads of a
/// push do not grow (and move) the buffer a few bytes at a time.
const COPIED_BLOCK: usize = 4096;

/// How many of the latest chunks a connection's responses handed to h2 are remembered.
const SENDING_REMEMBERED: usize = 8;

/// The latest large chunks this connection's responses handed to h2, which the outbox
/// takes slices of by reference. A chunk forgotten before h2 writes it all is copied, as
/// any other bytes: this only saves copies.
#[derive(Clone, Default)]
pub(crate) struct SendingChunks(Arc<Mutex<VecDeque<Bytes>>>);

impl SendingChunks {
    /// Remembers `chunk`, which a response body is about to hand to h2.
    pub(crate) fn add(&self, chunk: &Bytes) {
        let mut chunks = lock(&self.0);
        if chunks.len() == SENDING_REMEMBERED {
            chunks.pop_front();
        }
        chunks.push_back(chunk.clone());
    }

    /// Forgets the chunks nothing else holds any more: h2 framed all of them and the socket
    /// took them. Most are shared by every stream (a snapshot's cluster set), but a Delta
    /// push's small resources are copied into a chunk of the stream's own. Remembered until
    /// newer pushes evicted them, ten thousand initial pushes of a thousand clusters held
    /// 1.8 GB from the initial sync to the first edit.
    fn forget_sent(&self) {
        lock(&self.0).retain(|chunk| !chunk.is_unique());
    }

    /// `slice` as a slice of a remembered chunk, if it lies within one.
    fn find(&self, slice: &[u8]) -> Option<Bytes> {
        let start = slice.as_ptr() as usize;
        let end = start + slice.len();
        let chunks = lock(&self.0);
        chunks
            .iter()
            .rev()
            .find(|chunk| {
                let chunk_start = chunk.as_ptr() as usize;
                chunk_start <= start && end <= chunk_start + chunk.len()
            })
            .map(|chunk| chunk.slice_ref(slice))
    }
}

/// The lock of an outbox or of the chunks being sent; a panic while holding either leaves
/// nothing half-written that the next holder could trip on.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The I/O given to h2: reads from the socket, writes into the shared buffer.
struct GatheredIo<T>(Arc<Mutex<Outbox<T>>>);

/// A connection's future, with what it wrote during each poll sent after the poll.
struct WritesAfterPoll<F, T> {
    connection: Pin<Box<F>>,
    outbox: Arc<Mutex<Outbox<T>>>,
}

/// `io` as h2 reads and writes it, and the shared outbox [`WritesAfterPoll`] empties.
fn gathered<T>(io: T, sending: SendingChunks) -> (GatheredIo<T>, Arc<Mutex<Outbox<T>>>) {
    let outbox = Arc::new(Mutex::new(Outbox {
        io,
        pending: VecDeque::new(),
        copied: BytesMut::new(),
        pending_bytes: 0,
        sending,
        failed: None,
    }));
    (GatheredIo(Arc::clone(&outbox)), outbox)
}

impl<F: Future, T: AsyncWrite + Unpin> Future for WritesAfterPoll<F, T> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let polled = this.connection.as_mut().poll(cx);
        let mut outbox = lock(&this.outbox);
        if let Poll::Ready(Err(error)) = outbox.poll_write_out(cx) {
            outbox.discard_pending();
            outbox.failed = Some(error);
            // h2 learns of it at its next write; make sure there is a next poll.
            cx.waker().wake_by_ref();
        }
        polled
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GatheredIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.0).io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> GatheredIo<T> {
    /// Room for more: below [`HIGH_WATER`], or once the socket has taken enough.
    fn poll_room(outbox: &mut Outbox<T>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        outbox.take_failure()?;
        if outbox.pending_bytes >= HIGH_WATER {
            ready!(outbox.poll_write_out(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GatheredIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut outbox = lock(&self.0);
        ready!(Self::poll_room(&mut outbox, cx))?;
        outbox.gather(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut outbox = lock(&self.0);
        ready!(Self::poll_room(&mut outbox, cx))?;
        let mut written = 0;
        for buf in bufs {
            outbox.gather(buf);
            written += buf.len();
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Gathered bytes go out when the poll that wrote them ends ([`WritesAfterPoll`]);
    /// h2 flushes after every frame, and honouring that is what this module avoids.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(lock(&self.0).take_failure())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut outbox = lock(&self.0);
        outbox.take_failure()?;
        ready!(outbox.poll_write_out(cx))?;
        Pin::new(&mut outbox.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    fn frames() -> Vec<Vec<u8>> {
        vec![vec![1; 9], vec![2; 16_384], vec![3; 9], vec![4; 5_000]]
    }

    #[tokio::test]
    async fn what_a_poll_writes_reaches_the_socket_when_the_poll_ends() {
        let (mut client, server) = tcp_pair().await;
        let (mut io, outbox) = gathered(server, SendingChunks::default());
        let frames = frames();
        let writing = std::future::poll_fn(|cx| {
            for frame in &frames {
                let written = Pin::new(&mut io).poll_write(cx, frame);
                assert!(matches!(written, Poll::Ready(Ok(n)) if n == frame.len()));
                assert!(matches!(
                    Pin::new(&mut io).poll_flush(cx),
                    Poll::Ready(Ok(()))
                ));
            }
            // Flushed as far as h2 can tell, and still not one byte on the socket.
            let mut probe = [0; 1];
            let early = client.try_read(&mut probe);
            assert!(
                matches!(&early, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
                "{early:?}"
            );
            Poll::Ready(())
        });
        WritesAfterPoll {
            connection: Box::pin(writing),
            outbox,
        }
        .await;
        let mut received = vec![0; frames.concat().len()];
        client.read_exact(&mut received).await.expect("read");
        assert_eq!(received, frames.concat());
    }

    #[tokio::test]
    async fn a_slice_of_a_chunk_being_sent_is_gathered_by_reference_and_the_rest_copied() {
        let (mut client, server) = tcp_pair().await;
        let sending = SendingChunks::default();
        let chunk = Bytes::from((0..40_000).map(|i| i as u8).collect::<Vec<u8>>());
        sending.add(&chunk);
        let (mut io, outbox) = gathered(server, sending);
        let head = [1; 9];
        let unknown = vec![6; 20_000];
        // As h2 writes DATA frames: each its head (copied) and a slice of its payload.
        let writes: [[&[u8]; 2]; 3] = [
            [&head, &chunk[..16_384]],
            [&head, &chunk[16_384..]],
            [&head, &unknown],
        ];
        let expected: Vec<u8> = writes.concat().concat();
        let writing = std::future::poll_fn(|cx| {
            for slices in &writes {
                let slices = slices.map(io::IoSlice::new);
                let written = Pin::new(&mut io).poll_write_vectored(cx, &slices);
                assert!(matches!(written, Poll::Ready(Ok(n)) if n == 9 + slices[1].len()));
            }
            let mut gathered = lock(&outbox);
            gathered.move_copied();
            let in_chunk = |part: &Bytes| {
                let start = chunk.as_ptr() as usize;
                (start..start + chunk.len()).contains(&(part.as_ptr() as usize))
            };
            let referenced: Vec<usize> = gathered
                .pending
                .iter()
                .filter(|part| in_chunk(part))
                .map(Bytes::len)
                .collect();
            assert_eq!(referenced, [16_384, 40_000 - 16_384]);
            assert_eq!(gathered.pending_bytes, expected.len());
            Poll::Ready(())
        });
        WritesAfterPoll {
            connection: Box::pin(writing),
            outbox: Arc::clone(&outbox),
        }
        .await;
        let mut received = vec![0; expected.len()];
        client.read_exact(&mut received).await.expect("read");
        assert_eq!(received, expected);
    }

    #[tokio::test]
    async fn a_chunk_of_its_own_is_forgotten_once_sent_and_a_shared_one_is_kept() {
        let (mut client, server) = tcp_pair().await;
        let sending = SendingChunks::default();
        let own = Bytes::from(vec![7; 10_000]);
        let shared = Bytes::from(vec![8; 10_000]);
        let held_elsewhere = shared.clone();
        sending.add(&own);
        sending.add(&shared);
        let (mut io, outbox) = gathered(server, sending.clone());
        let writing = std::future::poll_fn(|cx| {
            for chunk in [&own, &shared] {
                let written = Pin::new(&mut io).poll_write(cx, chunk);
                assert!(matches!(written, Poll::Ready(Ok(10_000))));
            }
            Poll::Ready(())
        });
        WritesAfterPoll {
            connection: Box::pin(writing),
            outbox: Arc::clone(&outbox),
        }
        .await;
        let mut received = vec![0; 20_000];
        client.read_exact(&mut received).await.expect("read");
        drop(own);
        // Only the remembered reference was left of `own`; another write-out forgets it.
        std::future::poll_fn(|cx| lock(&outbox).poll_write_out(cx))
            .await
            .expect("nothing to write");
        let remembered: Vec<u8> = lock(&sending.0).iter().map(|chunk| chunk[0]).collect();
        assert_eq!(
            remembered,
            [8],
            "the shared chunk stays, the stream's own is gone"
        );
        drop(held_elsewhere);
    }

    #[tokio::test]
    async fn what_the_socket_takes_in_parts_arrives_whole_and_in_order() {
        let (mut client, server) = tcp_pair().await;
        let sending = SendingChunks::default();
        let chunk = Bytes::from((0..1 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        sending.add(&chunk);
        let (mut io, _outbox) = gathered(server, sending);
        let reading = tokio::spawn(async move {
            let mut received = Vec::new();
            client.read_to_end(&mut received).await.expect("read");
            received
        });
        // Eight times the high-water mark, so the socket takes it in parts, some of which
        // end inside a chunk held by reference.
        let mut expected = Vec::new();
        for round in 0..8u8 {
            for frame in chunk.chunks(16_384) {
                let head = [round; 9];
                io.write_all(&head).await.expect("head");
                io.write_all(frame).await.expect("payload");
                expected.extend_from_slice(&head);
                expected.extend_from_slice(frame);
            }
        }
        io.shutdown().await.expect("shut down");
        let received = reading.await.expect("reader");
        assert_eq!(received.len(), expected.len());
        assert!(received == expected, "bytes arrived out of order");
    }

    #[tokio::test]
    async fn shutting_down_sends_what_is_gathered_first() {
        let (mut client, server) = tcp_pair().await;
        let (mut io, _outbox) = gathered(server, SendingChunks::default());
        let frames = frames();
        for frame in &frames {
            io.write_all(frame).await.expect("gathered");
        }
        io.shutdown().await.expect("shut down");
        let mut received = Vec::new();
        client
            .read_to_end(&mut received)
            .await
            .expect("read to the end");
        assert_eq!(received, frames.concat());
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_to_the_next_write() {
        let (client, server) = tcp_pair().await;
        drop(client);
        let (mut io, outbox) = gathered(server, SendingChunks::default());
        let mut writing = WritesAfterPoll {
            connection: Box::pin(std::future::pending::<()>()),
            outbox,
        };
        // Writing to a socket whose peer has gone fails within a write or two (a reset
        // answers the first); each is gathered and written out after its poll.
        let mut failed = None;
        for _ in 0..100 {
            match io.write_all(&[7; 1024]).await {
                Ok(()) => {
                    // One poll of the connection, which writes the gathered bytes out.
                    std::future::poll_fn(|cx| {
                        let _ = Pin::new(&mut writing).poll(cx);
                        Poll::Ready(())
                    })
                    .await;
                    tokio::task::yield_now().await;
                }
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
        }
        assert!(failed.is_some(), "the peer's reset never surfaced");
    }
}
