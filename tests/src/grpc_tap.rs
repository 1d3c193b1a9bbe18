//! A recording TCP proxy in front of a plaintext gRPC server: Envoy calls the tap, the tap
//! forwards every byte both ways unchanged, and keeps each request message it saw go to the
//! server, exactly as Envoy encoded it. Used to capture real CheckRequests and
//! RateLimitRequests as fuzz seeds (`tests/tests/fuzz_seeds_from_envoy.rs`).
//!
//! Only the client's side is read, and only as far as HTTP/2 framing (RFC 9113 §4.1): the
//! DATA frames of each stream are joined, and at the stream's end split into gRPC messages
//! (a compressed flag and a 4-byte length before each). Headers are HPACK-coded and not
//! needed: the messages are in the DATA frames.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The client connection preface every HTTP/2 connection opens with.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const DATA: u8 = 0x0;
const END_STREAM: u8 = 0x1;
const PADDED: u8 = 0x8;

/// A running tap; dropping it stops accepting and closes the connections it holds.
pub struct GrpcTap {
    addr: SocketAddr,
    messages: Arc<Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl GrpcTap {
    /// Listens on a loopback port and forwards each connection to `server`.
    pub async fn start(server: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the tap");
        let addr = listener.local_addr().expect("the tap's address");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let recorded = messages.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.spawn(forward(client, server, recorded.clone()));
            }
        });
        GrpcTap {
            addr,
            messages,
            task,
        }
    }

    /// Where Envoy should call.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request message seen so far, oldest first.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.messages.lock().expect("tap lock").clone()
    }
}

impl Drop for GrpcTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(client: TcpStream, server: SocketAddr, messages: Arc<Mutex<Vec<Vec<u8>>>>) {
    let Ok(server) = TcpStream::connect(server).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let answers = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    });
    let mut frames = FrameReader::default();
    let mut chunk = vec![0; 16 * 1024];
    while let Ok(n @ 1..) = client_read.read(&mut chunk).await {
        // Recorded before it is forwarded, so a message is in the tap before its answer
        // can reach the caller.
        let finished = frames.push(&chunk[..n]);
        messages.lock().expect("tap lock").extend(finished);
        if server_write.write_all(&chunk[..n]).await.is_err() {
            break;
        }
    }
    answers.abort();
}

/// The client side of one HTTP/2 connection, read as it arrives.
#[derive(Default)]
struct FrameReader {
    pending: Vec<u8>,
    preface_seen: bool,
    bodies: HashMap<u32, Vec<u8>>,
}

impl FrameReader {
    /// Takes the next bytes; returns the gRPC messages of the streams they finished.
    fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.pending.extend_from_slice(bytes);
        if !self.preface_seen {
            if self.pending.len() < PREFACE.len() {
                return Vec::new();
            }
            self.pending.drain(..PREFACE.len());
            self.preface_seen = true;
        }
        let mut finished = Vec::new();
        while self.pending.len() >= FRAME_HEADER_LEN {
            let header = &self.pending[..FRAME_HEADER_LEN];
            let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            if self.pending.len() < FRAME_HEADER_LEN + length {
                break;
            }
            let (kind, flags) = (header[3], header[4]);
            let stream =
                u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            let frame: Vec<u8> = self.pending.drain(..FRAME_HEADER_LEN + length).collect();
            if kind != DATA {
                continue;
            }
            let mut payload = &frame[FRAME_HEADER_LEN..];
            if flags & PADDED != 0 && !payload.is_empty() {
                let padding = payload[0] as usize;
                payload = &payload[1..payload.len().saturating_sub(padding).max(1)];
            }
            self.bodies
                .entry(stream)
                .or_default()
                .extend_from_slice(payload);
            if flags & END_STREAM != 0 {
                let body = self.bodies.remove(&stream).unwrap_or_default();
                finished.extend(grpc_messages(&body));
            }
        }
        finished
    }
}

/// The messages of a gRPC body: each is a compressed flag, a big-endian length, the bytes.
fn grpc_messages(mut body: &[u8]) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    while body.len() >= 5 {
        let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let Some(message) = body.get(5..5 + length) else {
            break;
        };
        messages.push(message.to_vec());
        body = &body[5 + length..];
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut bytes = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        bytes.extend([kind, flags]);
        bytes.extend(stream.to_be_bytes());
        bytes.extend(payload);
        bytes
    }

    #[test]
    fn messages_are_joined_across_data_frames_and_split_at_their_lengths() {
        let mut connection = PREFACE.to_vec();
        connection.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        connection.extend(frame(0x1, 0x4, 1, b"hpack")); // HEADERS
        connection.extend(frame(DATA, 0, 1, &[0, 0, 0, 0, 3, b'a']));
        connection.extend(frame(DATA, PADDED, 3, &[2, 0, 0, 0, 0, 1, b'z', 0, 0]));
        connection.extend(frame(DATA, END_STREAM, 1, b"bc"));
        connection.extend(frame(DATA, END_STREAM, 3, &[]));
        let mut reader = FrameReader::default();
        // Fed a byte at a time, as the network may deliver it.
        let messages: Vec<Vec<u8>> = connection
            .iter()
            .flat_map(|byte| reader.push(std::slice::from_ref(byte)))
            .collect();
        assert_eq!(messages, vec![b"abc".to_vec(), b"z".to_vec()]);
    }
}
