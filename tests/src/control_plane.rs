//! The Tollgate control plane under test, as a guarded process.
//!
//! `ControlPlane::new().routes(yaml).start()` writes routes.yaml into a fresh temporary
//! directory and runs `tollgate-control-plane serve` on reserved loopback ports, returning
//! once `/healthz` answers. The running control plane can then be fed edits in each of the
//! ways files change in production: rewritten in place, replaced by rename (editors, config
//! management), or swapped as a Kubernetes ConfigMap volume (a `..data` symlink to a
//! timestamped directory, replaced atomically by renaming a new symlink over it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tollgate_testkit::ports::reserve_addr;
use tollgate_testkit::process::{scratch_dir, Process};

use crate::netns::{Host, NetworkNamespace};
use crate::{binaries, http};

/// The control plane should answer `/healthz` well within this on a busy 2-core machine.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// How routes.yaml is laid out on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `config/routes.yaml` is a regular file.
    File,
    /// `config/routes.yaml -> ..data/routes.yaml`, `..data -> ..<timestamp>`, as the kubelet
    /// projects a ConfigMap volume.
    ConfigMap,
}

/// How an edit reaches routes.yaml.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStyle {
    /// Truncate and rewrite the same inode.
    InPlace,
    /// Write a sibling temporary file, then rename it over routes.yaml.
    Rename,
    /// Swap the ConfigMap `..data` symlink to a new timestamped directory.
    ConfigMapSwap,
}

/// Builder for a control plane.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    routes: String,
    layout: Layout,
    /// Written next to routes.yaml before start, by name.
    files: Vec<(String, Vec<u8>)>,
    /// Flags for `serve` beyond the routes file and the addresses.
    serve_flags: Vec<String>,
    /// Where it runs: a network namespace of its own, or (`None`) loopback here.
    host: Option<Host>,
}

/// The control plane's side of mutual TLS on xDS: its certificate and key, and the CA its
/// clients' certificates must come from, all PEM. They are written next to routes.yaml as
/// [`XdsServerTls::CERT_FILE`], [`XdsServerTls::KEY_FILE`] and
/// [`XdsServerTls::CLIENT_CA_FILE`], where [`RunningControlPlane::write_file`] rotates them.
#[derive(Debug, Clone)]
pub struct XdsServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Vec<u8>,
}

impl XdsServerTls {
    pub const CERT_FILE: &str = "xds-server.pem";
    pub const KEY_FILE: &str = "xds-server.key";
    pub const CLIENT_CA_FILE: &str = "xds-client-ca.pem";
}

impl Default for ControlPlane {
    fn default() -> Self {
        Self::new()
    }
}

impl ControlPlane {
    pub fn new() -> Self {
        Self {
            routes: "version: 1\nlisteners: []\nservices: {}\nroutes: []\n".to_owned(),
            layout: Layout::File,
            files: Vec::new(),
            serve_flags: Vec::new(),
            host: None,
        }
    }

    /// Run inside `ns`, as on a host of its own, serving xDS on its address port 18000 and
    /// the admin server on port 19000, so that [`NetworkNamespace::cut`] cuts it off.
    pub fn in_namespace(mut self, ns: &NetworkNamespace) -> Self {
        self.host = Some(ns.host());
        self
    }

    /// Serve xDS over mutual TLS (`--tls-cert`, `--tls-key`, `--client-ca`).
    pub fn xds_tls(mut self, tls: XdsServerTls) -> Self {
        for (name, contents, flag) in [
            (XdsServerTls::CERT_FILE, tls.cert_pem, "--tls-cert"),
            (XdsServerTls::KEY_FILE, tls.key_pem, "--tls-key"),
            (
                XdsServerTls::CLIENT_CA_FILE,
                tls.client_ca_pem,
                "--client-ca",
            ),
        ] {
            self.files.push((name.to_owned(), contents));
            self.serve_flags.push(flag.to_owned());
            // Resolved against the config directory at start.
            self.serve_flags.push(format!("{CONFIG_DIR_MARK}{name}"));
        }
        self
    }

    /// Refuse a node whose id its client certificate does not name
    /// (`--bind-node-id-to-certificate`).
    pub fn bind_node_id_to_certificate(mut self) -> Self {
        self.serve_flags
            .push("--bind-node-id-to-certificate".to_owned());
        self
    }

    /// How often key sets of providers Envoy enforces are fetched from their jwks_uri
    /// (`--jwks-refresh-interval`, e.g. "1s").
    pub fn jwks_refresh_interval(mut self, interval: &str) -> Self {
        self.serve_flags
            .extend(["--jwks-refresh-interval".to_owned(), interval.to_owned()]);
        self
    }

    /// Ask the replica whose admin server is at `admin` which Envoys it holds (`--peer`).
    pub fn peer(mut self, admin: SocketAddr) -> Self {
        self.serve_flags
            .extend(["--peer".to_owned(), admin.to_string()]);
        self
    }

    /// A file routes.yaml refers to by the relative path `name` (a certificate, a key),
    /// written next to it before the control plane starts.
    pub fn file(mut self, name: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.to_owned(), contents.into()));
        self
    }

    /// The initial routes.yaml text.
    pub fn routes(mut self, yaml: impl Into<String>) -> Self {
        self.routes = yaml.into();
        self
    }

    /// Lay routes.yaml out as a mounted Kubernetes ConfigMap (see [`WriteStyle::ConfigMapSwap`]).
    pub fn configmap(mut self) -> Self {
        self.layout = Layout::ConfigMap;
        self
    }

    /// Writes the routes file, starts `tollgate-control-plane serve` and waits for `/healthz`.
    pub async fn start(self) -> RunningControlPlane {
        let dir = scratch_dir("tollgate-cp-");
        let config_dir = dir.path().join("config");
        std::fs::create_dir(&config_dir).expect("create the config directory");
        let mut config = ConfigDir {
            routes_path: config_dir.join("routes.yaml"),
            config_dir,
            layout: self.layout,
            generation: 0,
        };
        for (name, contents) in &self.files {
            config.write_file(name, contents);
        }
        match self.layout {
            Layout::File => config.write_in_place(&self.routes),
            Layout::ConfigMap => {
                config.write_configmap(&self.routes);
                std::os::unix::fs::symlink("..data/routes.yaml", &config.routes_path)
                    .expect("create the routes.yaml -> ..data/routes.yaml symlink");
            }
        }
        serve(dir, config, self.serve_flags, self.host.as_ref(), None).await
    }
}

/// Marks a flag value as a file name in the config directory.
const CONFIG_DIR_MARK: &str = "config-dir:";

/// Starts `tollgate-control-plane serve` on `config`'s routes.yaml, on fresh loopback ports
/// or on `host`, logging into `dir`, and waits for `/healthz`.
async fn serve(
    dir: tempfile::TempDir,
    config: ConfigDir,
    serve_flags: Vec<String>,
    host: Option<&Host>,
    admin_addr: Option<SocketAddr>,
) -> RunningControlPlane {
    let (xds_addr, admin_addr) = match host {
        // The production defaults: nothing else binds in a namespace of its own.
        Some(host) => (
            SocketAddr::new(host.ip(), 18000),
            SocketAddr::new(host.ip(), 19000),
        ),
        None => (reserve_addr(), admin_addr.unwrap_or_else(reserve_addr)),
    };
    let mut command = binaries::tollgate_command("tollgate-control-plane");
    command
        .arg("serve")
        .arg("--routes")
        .arg(&config.routes_path)
        .args(["--xds-addr", &xds_addr.to_string()])
        .args(["--admin-addr", &admin_addr.to_string()]);
    for flag in &serve_flags {
        match flag.strip_prefix(CONFIG_DIR_MARK) {
            Some(name) => command.arg(config.config_dir.join(name)),
            None => command.arg(flag),
        };
    }
    if let Some(host) = host {
        command = host.wrap(&command);
    }
    let process = Process::spawn("control-plane", command, dir.path())
        .expect("spawn tollgate-control-plane serve");
    let mut cp = RunningControlPlane {
        process,
        _dir: dir,
        config,
        serve_flags,
        xds_addr,
        admin_addr,
    };
    cp.wait_until_healthy().await;
    cp
}

/// The directory holding routes.yaml and the files it names, laid out as in production.
#[derive(Debug, Clone)]
struct ConfigDir {
    config_dir: PathBuf,
    routes_path: PathBuf,
    layout: Layout,
    generation: u32,
}

impl ConfigDir {
    fn write(&mut self, style: WriteStyle, yaml: &str) {
        match style {
            WriteStyle::InPlace => self.write_in_place(yaml),
            WriteStyle::Rename => self.write_by_rename(yaml),
            WriteStyle::ConfigMapSwap => self.write_configmap(yaml),
        }
    }

    fn write_in_place(&mut self, yaml: &str) {
        std::fs::write(&self.routes_path, yaml)
            .unwrap_or_else(|e| panic!("write {}: {e}", self.routes_path.display()));
    }

    fn write_file(&mut self, name: &str, contents: &[u8]) {
        let path = self.config_dir.join(name);
        let temporary = self.config_dir.join(format!(".{name}.tmp"));
        std::fs::write(&temporary, contents)
            .unwrap_or_else(|e| panic!("write {}: {e}", temporary.display()));
        std::fs::rename(&temporary, &path)
            .unwrap_or_else(|e| panic!("rename over {}: {e}", path.display()));
    }

    fn write_by_rename(&mut self, yaml: &str) {
        assert_eq!(
            self.layout,
            Layout::File,
            "renaming over routes.yaml would replace the ConfigMap symlink"
        );
        let temporary = self.config_dir.join(".routes.yaml.tmp");
        std::fs::write(&temporary, yaml)
            .unwrap_or_else(|e| panic!("write {}: {e}", temporary.display()));
        std::fs::rename(&temporary, &self.routes_path)
            .unwrap_or_else(|e| panic!("rename over {}: {e}", self.routes_path.display()));
    }

    fn write_configmap(&mut self, yaml: &str) {
        assert_eq!(
            self.layout,
            Layout::ConfigMap,
            "start the control plane with .configmap() to use ConfigMap swaps"
        );
        self.generation += 1;
        let data = self.config_dir.join("..data");
        let previous = std::fs::read_link(&data).ok();
        let unix_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // The generation stands in for the kubelet's nanoseconds: unique and increasing.
        let name = format!("..{}.{:09}", kubelet_timestamp(unix_secs), self.generation);
        let target = self.config_dir.join(&name);
        std::fs::create_dir(&target).expect("create the timestamped ConfigMap directory");
        std::fs::write(target.join("routes.yaml"), yaml).expect("write the ConfigMap routes.yaml");
        let data_tmp = self.config_dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &data_tmp).expect("create the ..data_tmp symlink");
        std::fs::rename(&data_tmp, &data).expect("rename ..data_tmp over ..data");
        if let Some(previous) = previous {
            std::fs::remove_dir_all(self.config_dir.join(previous))
                .expect("remove the previous ConfigMap directory");
        }
    }
}

/// A running control plane; dropping it kills the process and removes its files.
#[derive(Debug)]
pub struct RunningControlPlane {
    // Field order matters for Drop: the process dies before its directory is removed.
    process: Process,
    _dir: tempfile::TempDir,
    config: ConfigDir,
    serve_flags: Vec<String>,
    xds_addr: SocketAddr,
    admin_addr: SocketAddr,
}

impl RunningControlPlane {
    /// The path given to `serve --routes` (a symlink in ConfigMap layout).
    pub fn routes_path(&self) -> &Path {
        &self.config.routes_path
    }

    pub fn xds_addr(&self) -> SocketAddr {
        self.xds_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Writes new routes.yaml text in `style`.
    pub fn write(&mut self, style: WriteStyle, yaml: &str) {
        self.config.write(style, yaml);
    }

    /// Truncates routes.yaml and writes `yaml` into the same inode.
    pub fn write_in_place(&mut self, yaml: &str) {
        self.config.write_in_place(yaml);
    }

    /// Replaces the file `name` next to routes.yaml atomically (written aside, then renamed
    /// over it), as a certificate manager rotates a certificate.
    pub fn write_file(&mut self, name: &str, contents: &[u8]) {
        self.config.write_file(name, contents);
    }

    /// Writes `yaml` to a temporary file in the same directory and renames it over routes.yaml.
    pub fn write_by_rename(&mut self, yaml: &str) {
        self.config.write_by_rename(yaml);
    }

    /// Publishes `yaml` the way the kubelet updates a ConfigMap volume: a new timestamped
    /// directory, a `..data_tmp` symlink to it renamed atomically over `..data`, then the old
    /// directory removed.
    pub fn write_configmap(&mut self, yaml: &str) {
        self.config.write_configmap(yaml);
    }

    /// `GET /status` as JSON.
    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        let response = self.admin_get("/status").await?;
        response.expect_status(200)?;
        response.json()
    }

    /// The `/status` entry for node `id`, if the control plane knows it.
    pub async fn node_status(&self, id: &str) -> anyhow::Result<serde_json::Value> {
        let status = self.status().await?;
        status["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|node| node["id"] == id))
            .cloned()
            .with_context(|| format!("node {id:?} not in /status: {status}"))
    }

    /// Whether `/status` shows node `id` with an open stream on this control plane.
    pub async fn holds_stream_of(&self, id: &str) -> bool {
        self.node_status(id)
            .await
            .is_ok_and(|node| node["connected"] == true)
    }

    /// `GET /metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let response = self.admin_get("/metrics").await?;
        response.expect_status(200)?;
        Ok(response.text())
    }

    /// The value of the Prometheus sample whose name-and-labels is exactly `series`, e.g.
    /// `tollgate_config_reloads_total{result="error"}`; `None` if absent.
    pub async fn metric(&self, series: &str) -> anyhow::Result<Option<f64>> {
        let text = self.metrics().await?;
        Ok(text.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.trim();
            value.split_whitespace().next()?.parse().ok()
        }))
    }

    /// Sends `GET path` to the admin server.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<http::Response> {
        http::get_at(self.admin_addr, path).await
    }

    /// Another control plane serving the same routes.yaml (and the files beside it), on its
    /// own loopback ports, as a second replica would. Drop it before this one: this one owns
    /// the files.
    pub async fn replica(&self) -> RunningControlPlane {
        serve(
            scratch_dir("tollgate-cp-replica-"),
            self.config.clone(),
            self.serve_flags.clone(),
            None,
            None,
        )
        .await
    }

    /// A replica serving the same routes.yaml with its admin server on `admin` (which this
    /// one was started to peer with, [`ControlPlane::peer`]), peering with this one: the two
    /// count each other's Envoys when sharing local budgets.
    pub async fn peered_replica(&self, admin: SocketAddr) -> RunningControlPlane {
        let mut flags = Vec::new();
        let mut given = self.serve_flags.iter();
        while let Some(flag) = given.next() {
            if flag == "--peer" {
                given.next();
            } else {
                flags.push(flag.clone());
            }
        }
        flags.extend(["--peer".to_owned(), self.admin_addr.to_string()]);
        serve(
            scratch_dir("tollgate-cp-replica-"),
            self.config.clone(),
            flags,
            None,
            Some(admin),
        )
        .await
    }

    /// [`Self::replica`] inside `ns` (see [`ControlPlane::in_namespace`]).
    pub async fn replica_in(&self, ns: &NetworkNamespace) -> RunningControlPlane {
        serve(
            scratch_dir("tollgate-cp-replica-"),
            self.config.clone(),
            self.serve_flags.clone(),
            Some(&ns.host()),
            None,
        )
        .await
    }

    /// Kills the control plane (SIGKILL); Envoys keep serving what they last received.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Kills the control plane and starts it again on the same ports and routes file.
    pub async fn restart(&mut self) {
        self.process
            .restart()
            .expect("spawn tollgate-control-plane serve");
        self.wait_until_healthy().await;
    }

    /// The guard of the process, e.g. to read its logs.
    pub fn process(&self) -> &Process {
        &self.process
    }

    async fn wait_until_healthy(&mut self) {
        let admin_addr = self.admin_addr;
        http::wait_until_ok(&mut self.process, admin_addr, "/healthz", START_PATIENCE).await;
    }
}

/// Runs `tollgate-control-plane validate` on `yaml` (written to a file named routes.yaml).
pub fn validate(yaml: &str) -> Validation {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, yaml).expect("write routes.yaml");
    let output = Command::new(binaries::tollgate("tollgate-control-plane"))
        .arg("validate")
        .arg(&path)
        .output()
        .expect("run tollgate-control-plane validate");
    Validation {
        code: output.status.code(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The outcome of `tollgate-control-plane validate`.
#[derive(Debug, Clone)]
pub struct Validation {
    /// The exit code, `None` if killed by a signal.
    pub code: Option<i32>,
    pub stderr: String,
}

/// `YYYY_MM_DD_HH_MM_SS` for a Unix time, as in the kubelet's `..2026_01_02_03_04_05.…`
/// directory names.
fn kubelet_timestamp(unix_secs: u64) -> String {
    let secs_of_day = unix_secs % 86_400;
    let (year, month, day) = crate::civil_date::civil_date(unix_secs);
    format!(
        "{year:04}_{month:02}_{day:02}_{:02}_{:02}_{:02}",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::kubelet_timestamp;

    #[test]
    fn kubelet_timestamp_formats_a_unix_time_like_the_kubelet() {
        // 2026-11-24T01:07:04Z
        assert_eq!(kubelet_timestamp(1_795_482_424), "2026_11_24_01_07_04");
        assert_eq!(kubelet_timestamp(0), "1970_01_01_00_00_00");
        // A leap day.
        assert_eq!(kubelet_timestamp(951_782_400), "2000_02_29_00_00_00");
    }
}
