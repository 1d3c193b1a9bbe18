//! The gateway as users start it from containers: `compose/compose.yaml` on a real Docker
//! engine, driven through the Compose command a user has (`docker compose`, or Debian's
//! `docker-compose` 1.29 where that is the only one).
//!
//! `ComposeStack::new()` names a project of its own (so it never touches a user's stack),
//! publishes the gateway on ephemeral host ports and reads routes.yaml from a directory the
//! test owns, a copy of `compose/routes.yaml`, so edits never reach the checked-in demo.
//! `start()` runs `up -d` and waits for every healthcheck; the running stack is removed with
//! `down -v` when dropped, also when the test fails, and prints its services' logs then.
//! The images are built before the test (`make test-compose`); `up` builds nothing.
//!
//! Environment: `TOLLGATE_COMPOSE`, the Compose command (default: `docker compose` when the
//! Docker CLI has it, otherwise `docker-compose`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};
use tollgate_testkit::ports::reserve_port;

use crate::eventually::eventually_within;

/// Building nothing, a cold `up` still starts eight containers one dependency level at a
/// time on a busy 2-core machine; a healthcheck may need its whole start period.
const START_PATIENCE: Duration = Duration::from_secs(240);

/// The repository's compose/ folder.
pub fn compose_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose")
}

/// The Compose command: `TOLLGATE_COMPOSE`, else `docker compose` when the Docker CLI has
/// the plugin, else `docker-compose`. Found once per test process.
pub fn compose_command() -> &'static [String] {
    static COMMAND: OnceLock<Vec<String>> = OnceLock::new();
    COMMAND.get_or_init(|| {
        if let Ok(command) = std::env::var("TOLLGATE_COMPOSE") {
            return command.split_whitespace().map(str::to_owned).collect();
        }
        let has_plugin = Command::new("docker")
            .args(["compose", "version"])
            .output()
            .is_ok_and(|out| out.status.success());
        if has_plugin {
            vec!["docker".into(), "compose".into()]
        } else {
            vec!["docker-compose".into()]
        }
    })
}

/// A compose project to start; see the module docs.
pub struct ComposeStack {
    project: String,
    routes_dir: tempfile::TempDir,
    public_port: u16,
    mobile_port: u16,
    admin_port: u16,
}

impl ComposeStack {
    /// A project named for this test process, on fresh host ports, with its own copy of
    /// compose/routes.yaml.
    pub fn new() -> anyhow::Result<Self> {
        let routes_dir = tempfile::Builder::new()
            .prefix("tollgate-compose-routes")
            .tempdir()?;
        // The services run as an unprivileged user: the directory must be readable by all,
        // as a checkout is (a temporary directory starts as the owner's only).
        set_mode(routes_dir.path(), 0o755)?;
        std::fs::copy(
            compose_dir().join("routes.yaml"),
            routes_dir.path().join("routes.yaml"),
        )?;
        set_mode(&routes_dir.path().join("routes.yaml"), 0o644)?;
        Ok(Self {
            project: format!("tollgate-test-{}", std::process::id()),
            routes_dir,
            public_port: reserve_port(),
            mobile_port: reserve_port(),
            admin_port: reserve_port(),
        })
    }

    /// `up -d`, then waits until every service's healthcheck passes.
    pub async fn start(self) -> anyhow::Result<RunningStack> {
        let stack = RunningStack { stack: self };
        stack.compose(&["up", "-d", "--no-build"])?;
        let services = stack.compose(&["config", "--services"])?;
        let services: Vec<String> = services.lines().map(str::to_owned).collect();
        eventually_within(START_PATIENCE, "every service healthy", async || {
            stack.unhealthy_services(&services)
        })
        .await;
        Ok(stack)
    }
}

/// A started project; `down -v` on drop. See the module docs.
pub struct RunningStack {
    stack: ComposeStack,
}

impl RunningStack {
    /// The gateway's `public` listener (8080 in the demo) on the host.
    pub fn public_port(&self) -> u16 {
        self.stack.public_port
    }

    /// The gateway's `mobile` listener (8090 in the demo) on the host.
    pub fn mobile_port(&self) -> u16 {
        self.stack.mobile_port
    }

    /// The control plane's admin (/status, /metrics; 18001 in the demo) on the host.
    pub fn admin_port(&self) -> u16 {
        self.stack.admin_port
    }

    pub fn project(&self) -> &str {
        &self.stack.project
    }

    /// The routes.yaml the stack serves, on the host.
    pub fn routes_file(&self) -> PathBuf {
        self.stack.routes_dir.path().join("routes.yaml")
    }

    /// Replaces routes.yaml as an editor saves it: a new file renamed over the old one,
    /// which only a directory bind mount sees.
    pub fn write_routes(&self, yaml: &str) -> anyhow::Result<()> {
        let staged = self.stack.routes_dir.path().join(".routes.yaml.new");
        std::fs::write(&staged, yaml)?;
        set_mode(&staged, 0o644)?;
        std::fs::rename(&staged, self.routes_file())?;
        Ok(())
    }

    /// Runs the Compose command on this project; its stdout, or an error with its stderr.
    pub fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.compose_output(args)?;
        if !output.status.success() {
            bail!(
                "compose {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn compose_output(&self, args: &[&str]) -> anyhow::Result<Output> {
        let program = compose_command();
        let stack = &self.stack;
        Command::new(&program[0])
            .args(&program[1..])
            .arg("--project-name")
            .arg(&stack.project)
            .arg("--file")
            .arg(compose_dir().join("compose.yaml"))
            .args(args)
            .env("TOLLGATE_ROUTES_DIR", stack.routes_dir.path())
            .env("TOLLGATE_PUBLIC_PORT", stack.public_port.to_string())
            .env("TOLLGATE_MOBILE_PORT", stack.mobile_port.to_string())
            .env("TOLLGATE_ADMIN_PORT", stack.admin_port.to_string())
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running {program:?}"))
    }

    /// A demo token minted by the stack's own `tokens` service, as a user gets one.
    pub fn token(&self, subject: &str, tier: &str) -> anyhow::Result<String> {
        let token = self.compose(&["run", "--rm", "-T", "tokens", subject, tier])?;
        let token = token.trim();
        if token.split('.').count() != 3 {
            bail!("the tokens service printed no token: {token:?}");
        }
        Ok(token.to_owned())
    }

    /// The demo API key, as the stack's own `api-key` service prints it for a user.
    pub fn api_key(&self) -> anyhow::Result<String> {
        let key = self.compose(&["run", "--rm", "-T", "api-key"])?;
        let key = key.trim();
        if !key.starts_with("tgk_") {
            bail!("the api-key service printed no key: {key:?}");
        }
        Ok(key.to_owned())
    }

    /// The log lines one service wrote, as `docker compose logs` shows them.
    pub fn logs(&self, service: &str) -> anyhow::Result<String> {
        self.compose(&["logs", "--no-color", service])
    }

    /// Ok when every service that runs has a passing healthcheck; one-shot services (no
    /// healthcheck) must have exited 0.
    fn unhealthy_services(&self, services: &[String]) -> anyhow::Result<()> {
        let mut waiting = Vec::new();
        for service in services {
            let ids = self.compose(&["ps", "-q", service])?;
            for id in ids.split_whitespace() {
                let state = docker(&[
                    "inspect",
                    "--format",
                    "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.State.ExitCode}}",
                    id,
                ])?;
                match state.split_whitespace().collect::<Vec<_>>().as_slice() {
                    ["running", "healthy", _] | ["exited", "none", "0"] => {}
                    other => waiting.push(format!("{service}: {}", other.join(" "))),
                }
            }
        }
        if waiting.is_empty() {
            Ok(())
        } else {
            bail!("waiting for {}", waiting.join(", "))
        }
    }

    /// Every container of the project, running or not, with its exit code: `(name, code)`.
    pub fn exit_codes(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let label = project_label(&self.stack.project);
        let ids = docker(&["ps", "-a", "-q", "--filter", &label])?;
        let mut codes = Vec::new();
        for id in ids.split_whitespace() {
            let state = docker(&["inspect", "--format", "{{.Name}} {{.State.ExitCode}}", id])?;
            let (name, code) = state
                .trim()
                .rsplit_once(' ')
                .with_context(|| format!("docker inspect said {state:?}"))?;
            codes.push((name.trim_start_matches('/').to_owned(), code.parse()?));
        }
        Ok(codes)
    }

    /// What of this project is left on the engine: containers, networks and volumes
    /// labelled with its name.
    pub fn leftovers(project: &str) -> anyhow::Result<Vec<String>> {
        let label = project_label(project);
        let mut left = Vec::new();
        for (kind, args) in [
            ("container", vec!["ps", "-a", "-q", "--filter", &label]),
            ("network", vec!["network", "ls", "-q", "--filter", &label]),
            ("volume", vec!["volume", "ls", "-q", "--filter", &label]),
        ] {
            left.extend(
                docker(&args)?
                    .split_whitespace()
                    .map(|id| format!("{kind} {id}")),
            );
        }
        Ok(left)
    }

    /// `down -v`: stops and removes every container, network and volume of the project.
    pub fn down(&self) -> anyhow::Result<()> {
        self.compose(&["down", "-v", "--remove-orphans", "--timeout", "10"])
            .map(|_| ())
    }
}

impl Drop for RunningStack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(output) = self.compose_output(&["logs", "--no-color", "--tail", "40"]) {
                eprintln!(
                    "--- logs of compose project {} ---\n{}",
                    self.stack.project,
                    String::from_utf8_lossy(&output.stdout)
                );
            }
        }
        if let Err(error) = self.down() {
            eprintln!("compose down of {} failed: {error:#}", self.stack.project);
        }
    }
}

/// The `docker … --filter` that selects what Compose made for `project`.
fn project_label(project: &str) -> String {
    format!("label=com.docker.compose.project={project}")
}

/// Runs the Docker CLI; its stdout, or an error with its stderr.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("docker")
        .args(args)
        .output()
        .context("running docker")?;
    if !output.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}
