//! A guard that owns one spawned process.
//!
//! The process's stdout and stderr go to files in a log directory chosen by the caller (so a
//! restarted control plane appends to the same files). Dropping the guard kills and reaps
//! the process; if the test is panicking at that moment, the tail of both logs is printed,
//! which libtest shows with the failure, so a failed test explains what Envoy or the
//! control plane said.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::Context as _;

/// How many lines of each log a failing test prints per process.
const TAIL_LINES: usize = 60;

/// A running child process, killed when dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Process {
    /// Spawns `command` with its output appended to `<log_dir>/<name>.stdout.log` and
    /// `<log_dir>/<name>.stderr.log`.
    pub fn spawn(name: &str, mut command: Command, log_dir: &Path) -> anyhow::Result<Self> {
        let stdout_path = log_dir.join(format!("{name}.stdout.log"));
        let stderr_path = log_dir.join(format!("{name}.stderr.log"));
        let stdout = open_log(&stdout_path)?;
        let mut stderr = open_log(&stderr_path)?;
        // Marks where each (re)start begins when a restarted process appends to the same log.
        writeln!(stderr, "--- spawn {command:?}")
            .with_context(|| format!("writing {}", stderr_path.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {name}: {command:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            stdout_path,
            stderr_path,
        })
    }

    /// The name the process was spawned under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The operating-system process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited, without waiting.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Fails if the process has exited (its logs are printed when the failing test drops
    /// the guard).
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.exit_status() {
            None => Ok(()),
            Some(status) => anyhow::bail!("{} exited with {status}", self.name),
        }
    }

    /// Kills (SIGKILL) and reaps the process; does nothing if it already exited.
    pub fn kill(&mut self) {
        if self.exit_status().is_none() {
            // The only error is "already exited", which is what we want anyway.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// The whole stderr log so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// The whole stdout log so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Polls `GET http://127.0.0.1:{port}{path}` until it answers 200. Panics with the last
    /// answer once `patience` runs out, and at once if the process exits (a service that
    /// failed to start must not look ready because something else answers its port).
    pub async fn wait_until_ok(&mut self, port: u16, path: &str, patience: std::time::Duration) {
        let deadline = std::time::Instant::now() + patience;
        loop {
            if let Err(exited) = self.ensure_running() {
                panic!("{} did not start: {exited:#}", self.name);
            }
            let last = match crate::http::get(port, path).await {
                Ok(response) if response.status == 200 => return,
                Ok(response) => format!("{path} answered {}", response.status),
                Err(error) => format!("{error:#}"),
            };
            assert!(
                std::time::Instant::now() < deadline,
                "{}: {path} not answering 200 after {patience:?}: {last}",
                self.name
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
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

fn open_log(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening log file {}", path.display()))
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
