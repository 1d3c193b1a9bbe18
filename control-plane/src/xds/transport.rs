//! The xDS server's connections, plain or over TLS. Every accepted TCP connection gets
//! TCP_NODELAY: a push is written as a few HTTP/2 frames, and with Nagle's algorithm the last
//! short one waits for the client's delayed ACK (40 ms on Linux) before it leaves. Over TLS,
//! each connection is handshaken in a task of its own (so a slow or silent client holds up no
//! other), with the newest certificate files, and served with the client's verified
//! identity attached.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tollgate_runtime::reload::Reloader;
use tollgate_runtime::server_tls::ServerTls;
use tracing::{debug, warn};

use super::identity::ClientIdentity;

/// A client that has not finished its handshake by then is dropped: it holds a socket and
/// a task, and a legitimate Envoy completes one in milliseconds.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the accept loop rests after a failed accept (out of file descriptors, say).
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Handshaken connections waiting to be served.
const READY_BACKLOG: usize = 64;

/// One client connection after its TLS handshake.
#[derive(Debug)]
pub(crate) struct TlsConnection {
    stream: TlsStream<TcpStream>,
    identity: ClientIdentity,
}

/// An accepted client connection, ready for HTTP/2.
pub(crate) trait ClientConnection: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Who the client proved to be, put in every request's extensions; `None` in plaintext.
    fn identity(&self) -> Option<ClientIdentity>;
}

impl ClientConnection for TlsConnection {
    fn identity(&self) -> Option<ClientIdentity> {
        Some(self.identity.clone())
    }
}

impl ClientConnection for TcpStream {
    fn identity(&self) -> Option<ClientIdentity> {
        None
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
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
}

/// Accepts plaintext connections on `listener`, each with TCP_NODELAY set.
pub(crate) fn plain_connections(listener: TcpListener) -> impl Stream<Item = TcpStream> {
    futures::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    return Some((tcp, listener));
                }
                Err(error) => {
                    warn!(%error, "cannot accept an xds connection");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            }
        }
    })
}

/// Accepts connections on `listener` and yields those whose handshake succeeds, until the
/// returned stream is dropped. A refused handshake (no client certificate, one from another
/// CA, an expired one) is logged with the peer's address.
pub(crate) fn tls_connections(
    listener: TcpListener,
    tls: Arc<Reloader<ServerTls>>,
) -> ReceiverStream<TlsConnection> {
    let (ready, connections) = mpsc::channel(READY_BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                // The stream was dropped: the server has stopped.
                () = ready.closed() => return,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let acceptor = tls.config().acceptor();
                    let ready = ready.clone();
                    tokio::spawn(async move {
                        if let Some(connection) = handshake(acceptor, tcp, peer).await {
                            let _ = ready.send(connection).await;
                        }
                    });
                }
                Err(error) => {
                    warn!(%error, "cannot accept an xds connection");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            }
        }
    });
    ReceiverStream::new(connections)
}

async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<TlsConnection> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => {
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| ClientIdentity::of_certificate(leaf))
                .unwrap_or_default();
            Some(TlsConnection { stream, identity })
        }
        Ok(Err(error)) => {
            warn!(%peer, %error, "xds client refused: TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(%peer, "xds client dropped: no TLS handshake within {HANDSHAKE_TIMEOUT:?}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn a_plain_connection_is_accepted_with_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let mut connections = Box::pin(plain_connections(listener));
        let _client = TcpStream::connect(address).await.expect("connect");
        let accepted = connections.next().await.expect("a connection");
        assert!(accepted.nodelay().expect("TCP_NODELAY readable"));
    }
}
