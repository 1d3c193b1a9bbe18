//! A benchmark fixture the services' benches share: the server under test runs on its own OS
//! thread with a single-threaded Tokio runtime. Everything it does for a call (HTTP/2,
//! gRPC, the handler, its Redis client) is then that one thread's CPU time, read in
//! nanoseconds from `/proc/self/task/<tid>/schedstat`. Calls per server-CPU-second is
//! what the issues mean by "on one core" and "per core used", whatever the client, Redis
//! and the other engineers on this shared machine take.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

/// Resolves when the bench stops the server.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A server on its own thread; stopped and joined on drop.
pub struct ServerThread {
    pub addr: SocketAddr,
    cpu: ThreadCpu,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    /// Binds 127.0.0.1:0 and runs `serve(listener, shutdown)` on a new thread, inside a
    /// current-thread runtime created there (so tasks the server spawns stay on it).
    pub fn spawn<F, Fut>(serve: F) -> ServerThread
    where
        F: FnOnce(tokio::net::TcpListener, Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (cpu_tx, cpu_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("server-under-test".into())
            .spawn(move || {
                cpu_tx
                    .send(ThreadCpu::of_this_thread())
                    .expect("bench waits for the thread's CPU clock");
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    let shutdown: Shutdown = Box::pin(async move {
                        let _ = stopped.await;
                    });
                    serve(listener, shutdown).await;
                });
            })
            .expect("spawn server thread");
        let cpu = cpu_rx.recv().expect("server thread started");
        ServerThread {
            addr,
            cpu,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `count` HTTP/2 connections to the server, one tonic channel each (Envoy opens one
    /// per worker). The socket listens before the thread starts, so a connection is refused
    /// only when the server has stopped, say by panicking while it set itself up: the bench
    /// then fails instead of waiting for it forever.
    pub async fn connect(&self, count: usize) -> Vec<tonic::transport::Channel> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("an http uri");
        let mut channels = Vec::with_capacity(count);
        for _ in 0..count {
            let channel = endpoint.connect().await.unwrap_or_else(|e| {
                panic!("the server under test refused a connection (did it panic?): {e}")
            });
            channels.push(channel);
        }
        channels
    }

    /// CPU time the server thread has used so far.
    pub fn cpu_time(&self) -> Duration {
        self.cpu.so_far()
    }
}

/// The CPU time of one thread, which any thread may read.
#[derive(Clone, Debug)]
pub struct ThreadCpu {
    schedstat: PathBuf,
}

impl ThreadCpu {
    /// The calling thread's.
    pub fn of_this_thread() -> ThreadCpu {
        // "<pid>/task/<tid>": this thread, as other threads can name it.
        let me = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
        ThreadCpu {
            schedstat: PathBuf::from("/proc").join(me).join("schedstat"),
        }
    }

    /// Time on CPU so far, in nanoseconds from `/proc/<pid>/task/<tid>/schedstat` (not
    /// ticks): user and kernel time, and the softirqs the kernel ran on the thread's behalf.
    pub fn so_far(&self) -> Duration {
        let text = std::fs::read_to_string(&self.schedstat).expect("schedstat");
        let nanos = text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("schedstat starts with the nanoseconds on CPU");
        Duration::from_nanos(nanos)
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
