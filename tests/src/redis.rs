//! A real Redis for the rate-limit service's counters, as a guarded process.
//!
//! `Redis::start()` runs `redis-server` on a reserved loopback port, without persistence
//! (`--save "" --appendonly no`: a restart starts empty, as a fresh cache node would), and
//! returns once it answers (as itself: `INFO server` names its process id, so a port taken
//! by another test's server is noticed). A test can kill it to simulate an outage and restart it
//! on the same port, so that the clients already configured with its URL find it again.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::{ports, process::Process};

/// `redis-server` starts in milliseconds; this allows for a busy 2-core machine.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// One `PING` never takes this long unless the server is gone or stuck.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// A running (or deliberately killed) `redis-server`; dropping it kills the process.
#[derive(Debug)]
pub struct Redis {
    // Field order matters for Drop: the process dies before its directory is removed.
    process: Option<Process>,
    killed: Option<Process>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Redis {
    /// Starts `redis-server` on a fresh port and waits until it answers `PING`.
    pub async fn start() -> Redis {
        let mut redis = Redis {
            process: None,
            killed: None,
            dir: crate::process::scratch_dir("tollgate-redis-"),
            port: ports::reserve_port(),
        };
        redis.spawn().await;
        redis
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`, as given to `tollgate-ratelimit --redis-url`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL): clients see their connections reset and new ones refused.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
            // Kept so that its logs are still printed if the test fails before a restart.
            self.killed = Some(process);
        }
    }

    /// Starts the server again on the same port (empty: nothing was persisted).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Sends `PING` on a fresh connection; fails unless the answer is `+PONG`.
    pub async fn ping(&self) -> anyhow::Result<()> {
        let exchange = async {
            let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
            stream.write_all(b"PING\r\n").await?;
            let mut reply = [0u8; 7];
            stream.read_exact(&mut reply).await?;
            anyhow::ensure!(
                &reply == b"+PONG\r\n",
                "PING answered {:?}",
                String::from_utf8_lossy(&reply)
            );
            anyhow::Ok(())
        };
        tokio::time::timeout(PING_TIMEOUT, exchange)
            .await
            .with_context(|| {
                format!(
                    "redis on port {}: no PONG within {PING_TIMEOUT:?}",
                    self.port
                )
            })?
            .with_context(|| format!("redis on port {}", self.port))
    }

    /// The process id of the server answering on the port (`INFO server`), which tells our
    /// own server apart from another test's that took the port first.
    async fn answering_pid(&self) -> anyhow::Result<u32> {
        let exchange = async {
            let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
            stream.write_all(b"INFO server\r\n").await?;
            // A bulk string: `$<length>\r\n<text>\r\n`.
            let mut reply = Vec::new();
            loop {
                let mut chunk = [0u8; 4096];
                let read = stream.read(&mut chunk).await?;
                anyhow::ensure!(read > 0, "connection closed mid-reply");
                reply.extend_from_slice(&chunk[..read]);
                let text = String::from_utf8_lossy(&reply);
                let Some((length, body)) =
                    text.strip_prefix('$').and_then(|r| r.split_once("\r\n"))
                else {
                    continue;
                };
                let length: usize = length.parse().context("INFO reply length")?;
                if body.len() < length {
                    continue;
                }
                let pid = body
                    .lines()
                    .find_map(|line| line.strip_prefix("process_id:"))
                    .context("no process_id in INFO server")?;
                return Ok(pid.trim().parse::<u32>()?);
            }
        };
        tokio::time::timeout(PING_TIMEOUT, exchange)
            .await
            .with_context(|| {
                format!(
                    "redis on port {}: no INFO within {PING_TIMEOUT:?}",
                    self.port
                )
            })?
            .with_context(|| format!("redis on port {}", self.port))
    }

    async fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        let process = Process::spawn("redis", command, self.dir.path())
            .expect("spawn redis-server (scripts/provision.sh installs it)");
        let pid = process.pid();
        self.process = Some(process);
        self.killed = None;
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            let process = self.process.as_mut().expect("a spawned redis-server");
            if let Err(exited) = process.ensure_running() {
                panic!("redis-server did not start: {exited:#}");
            }
            let last = match self.answering_pid().await {
                Ok(answering) if answering == pid => return,
                // Our server is still starting or about to fail to bind (its log says so).
                Ok(answering) => format!(
                    "port {} answered by another redis-server (pid {answering})",
                    self.port
                ),
                Err(error) => format!("{error:#}"),
            };
            assert!(
                Instant::now() < deadline,
                "redis-server not answering after {START_PATIENCE:?}: {last}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
