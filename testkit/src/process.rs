//! A guard that owns one spawned process, and the scratch directories processes run in.
//!
//! The process's stdout and stderr go to files in a log directory chosen by the caller, and a
//! restart appends to the same files. Dropping the guard kills and reaps the process; if the
//! test is panicking at that moment, the tail of both logs is printed, which libtest shows
//! with the failure, so a failed test explains what Envoy, a service or Redis said. A
//! killed process keeps its guard, so its logs are printed too if the test fails before it
//! is restarted.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Begins the line written to the stderr log before each (re)start, marking where each
/// process's lines begin when a restarted process appends to the same log.
pub const SPAWN_MARK: &str = "--- spawn ";

/// How many lines of each log a failing test prints per process.
const TAIL_LINES: usize = 60;

/// Pause between readiness probes: short enough to notice a start promptly, long enough not
/// to load a 2-core machine with polling.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("opening log file {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spawning {name}: {command}: {source}")]
    Spawn {
        name: String,
        command: String,
        source: std::io::Error,
    },
}

/// A process that exited while it should have been running.
#[derive(Debug, thiserror::Error)]
#[error("{name} exited with {status}")]
pub struct Exited {
    pub name: String,
    pub status: ExitStatus,
}

/// A running (or deliberately killed) child process, killed when dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    /// Kept to start the process again the same way ([`Process::restart`]).
    command: Command,
    child: Child,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Process {
    /// Spawns `command` with its output appended to `<log_dir>/<name>.stdout.log` and
    /// `<log_dir>/<name>.stderr.log`.
    pub fn spawn(name: &str, mut command: Command, log_dir: &Path) -> Result<Self, SpawnError> {
        let stdout_path = log_dir.join(format!("{name}.stdout.log"));
        let stderr_path = log_dir.join(format!("{name}.stderr.log"));
        let child = spawn_logging(name, &mut command, &stdout_path, &stderr_path)?;
        Ok(Self {
            name: name.to_owned(),
            command,
            child,
            stdout_path,
            stderr_path,
        })
    }

    /// Kills the process if it runs and starts the same command again, appending to the
    /// same logs, as a supervisor restarts a crashed service.
    pub fn restart(&mut self) -> Result<(), SpawnError> {
        self.kill();
        self.child = spawn_logging(
            &self.name,
            &mut self.command,
            &self.stdout_path,
            &self.stderr_path,
        )?;
        Ok(())
    }

    /// The name the process was spawned under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The operating-system process id (of the last start, once killed).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited, without waiting.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Fails if the process has exited (its logs are printed when the failing test drops
    /// the guard).
    pub fn ensure_running(&mut self) -> Result<(), Exited> {
        match self.exit_status() {
            None => Ok(()),
            Some(status) => Err(Exited {
                name: self.name.clone(),
                status,
            }),
        }
    }

    /// Freezes the process (SIGSTOP): its sockets stay open and nothing answers, as with a
    /// process stuck in a long pause, swapped out, or behind a dead network.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a [paused](Self::pause) process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Sends `signal` with kill(1): this crate forbids the `unsafe` a direct `kill(2)` takes.
    fn signal(&self, signal: &str) {
        let pid = self.pid();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid} ({})", self.name);
    }

    /// Kills (SIGKILL) and reaps the process; does nothing if it already exited.
    pub fn kill(&mut self) {
        if self.exit_status().is_none() {
            // The only error is "already exited", which is what we want anyway.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// Polls `probe` until it answers `Ok`. Panics with the last answer once `patience`
    /// runs out (saying the process is not yet `what`), and at once if the process exits: a
    /// service that failed to start must not look ready because something else answers its
    /// port.
    pub async fn wait_until_ready<F, E>(&mut self, patience: Duration, what: &str, mut probe: F)
    where
        F: AsyncFnMut() -> Result<(), E>,
        E: std::fmt::Display,
    {
        let deadline = Instant::now() + patience;
        while !self.is_ready(probe().await, deadline, patience, what) {
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// [`Self::wait_until_ready`] for a probe that blocks, where no runtime runs.
    pub fn wait_until_ready_blocking<F, E>(&mut self, patience: Duration, what: &str, mut probe: F)
    where
        F: FnMut() -> Result<(), E>,
        E: std::fmt::Display,
    {
        let deadline = Instant::now() + patience;
        while !self.is_ready(probe(), deadline, patience, what) {
            std::thread::sleep(PROBE_INTERVAL);
        }
    }

    /// One readiness probe's verdict. The exit is checked after the probe, so that an answer
    /// from a process that had already exited is never taken for this one's.
    fn is_ready<E: std::fmt::Display>(
        &mut self,
        answer: Result<(), E>,
        deadline: Instant,
        patience: Duration,
        what: &str,
    ) -> bool {
        if let Err(exited) = self.ensure_running() {
            panic!("{} did not start: {exited}", self.name);
        }
        match answer {
            Ok(()) => true,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "{} not {what} after {patience:?}: {last:#}",
                    self.name
                );
                false
            }
        }
    }

    /// The whole stderr log so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// The whole stdout log so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// The last `lines` lines of stdout and stderr, labelled, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        format!(
            "----- {name} stdout ({stdout}), last {lines} lines -----\n{out}\n\
             ----- {name} stderr ({stderr}), last {lines} lines -----\n{err}",
            name = self.name,
            stdout = self.stdout_path.display(),
            stderr = self.stderr_path.display(),
            out = tail(&self.stdout(), lines),
            err = tail(&self.stderr(), lines),
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() || std::env::var_os("TOLLGATE_TEST_SHOW_LOGS").is_some() {
            eprintln!("{}", self.log_tails(TAIL_LINES));
        }
    }
}

/// A fresh temporary directory for one process's files and logs. It is removed on drop
/// unless `TOLLGATE_TEST_KEEP_DIRS` is set, for reading full logs after a run.
pub fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("create a temporary directory {prefix}*: {e}"));
    if std::env::var_os("TOLLGATE_TEST_KEEP_DIRS").is_some() {
        dir.disable_cleanup(true);
        eprintln!("keeping {}", dir.path().display());
    }
    dir
}

fn spawn_logging(
    name: &str,
    command: &mut Command,
    stdout_path: &Path,
    stderr_path: &Path,
) -> Result<Child, SpawnError> {
    let stdout = open_log(stdout_path)?;
    let mut stderr = open_log(stderr_path)?;
    writeln!(stderr, "{SPAWN_MARK}{command:?}").map_err(|source| SpawnError::Log {
        path: stderr_path.to_path_buf(),
        source,
    })?;
    command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|source| SpawnError::Spawn {
            name: name.to_owned(),
            command: format!("{command:?}"),
            source,
        })
}

fn open_log(path: &Path) -> Result<File, SpawnError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| SpawnError::Log {
            path: path.to_path_buf(),
            source,
        })
}

fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = File::open(path) {
        // Logs can be large (Envoy at debug level); the tail is what matters.
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(256 * 1024);
        if file.seek(SeekFrom::Start(start)).is_ok() {
            let _ = file.read_to_end(&mut bytes);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
