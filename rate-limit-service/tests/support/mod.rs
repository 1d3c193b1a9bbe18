//! Test harness: a real `redis-server` on an ephemeral port owned by a guard, and
//! in-process service instances on 127.0.0.1:0 reached through tonic clients.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tokio::net::TcpListener;
use tollgate_ratelimit::algorithm::ManualClock;
use tollgate_ratelimit::limits::DescriptorTree;
use tollgate_ratelimit::metrics::Metrics;
use tollgate_ratelimit::server;
use tollgate_ratelimit::service::{CurrentLimits, LimitSet, RateLimiter};
use tollgate_ratelimit::store::redis::{RedisStore, RedisTarget};
use tonic::transport::Channel;

/// Generous: CI machines are slow, and nothing here waits unless something is wrong.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A redis-server child process, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("an ephemeral port");
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut server = RedisServer {
            child: None,
            port,
            dir,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and waits for PING to answer.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/provision.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        while !self.pings() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, as with
    /// a Redis stuck in a long command or behind a dead network.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    fn pings(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// A plain client for looking inside.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connects")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One in-process service instance; stops when dropped.
pub struct Instance {
    pub addr: SocketAddr,
    pub store: Arc<RedisStore>,
    pub client: RateLimitServiceClient<Channel>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub async fn instance(
    redis: &RedisServer,
    tree: DescriptorTree,
    clock: ManualClock,
    timeout: Duration,
) -> Instance {
    let store = Arc::new(
        RedisStore::connect(&RedisTarget::Single(redis.url()), timeout).expect("valid url"),
    );
    store.load_scripts().await.expect("scripts load");
    let metrics = Metrics::unregistered();
    let limiter = RateLimiter::new(
        CurrentLimits::new(LimitSet::new(tree, &metrics)),
        store.clone(),
        clock,
        metrics,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(listener, limiter, async {
        let _ = stopped.await;
    }));
    let client = RateLimitServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connects");
    Instance {
        addr,
        store,
        client,
        _stop: stop,
    }
}

pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..RateLimitDescriptor::default()
    }
}

pub fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors,
        hits_addend: 0,
    }
}

pub async fn call(
    client: &RateLimitServiceClient<Channel>,
    request: &RateLimitRequest,
) -> Result<RateLimitResponse, tonic::Status> {
    client
        .clone()
        .should_rate_limit(request.clone())
        .await
        .map(tonic::Response::into_inner)
}

/// Now, as the service's clock would say, so that keys look like production ones.
pub fn clock_now() -> ManualClock {
    ManualClock::at(tollgate_ratelimit::algorithm::unix_micros(
        std::time::SystemTime::now(),
    ))
}
