//! Flags, each also read from a `TOLLGATE_…` environment variable.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::store::redis::{RedisAuth, RedisTarget};

/// Envoy waits 50 ms for the service by default (routes.yaml's `sidecars.rate_limit.timeout`);
/// a Redis call must give up before that so the answer is our UNAVAILABLE, under Envoy's
/// `failure_mode_deny`, and not Envoy's own timeout.
pub const DEFAULT_REDIS_TIMEOUT: &str = "40ms";

#[derive(Clone, Debug, Parser)]
#[command(
    name = "tollgate-ratelimit",
    version,
    about = "Envoy's global rate limit service, backed by Redis"
)]
pub struct Settings {
    /// Where Envoy calls ShouldRateLimit (and gRPC health).
    #[arg(
        long,
        env = "TOLLGATE_RATELIMIT_GRPC_ADDR",
        default_value = "127.0.0.1:8081"
    )]
    pub grpc_addr: SocketAddr,
    /// Integrated mode: the limits of this routes.yaml, reloaded when it changes.
    #[arg(
        long,
        env = "TOLLGATE_ROUTES",
        conflicts_with = "config",
        required_unless_present = "config"
    )]
    pub routes: Option<PathBuf>,
    /// Drop-in mode: an envoyproxy/ratelimit config file, or a directory of them (every
    /// *.yaml and *.yml, one domain each), reloaded when they change.
    #[arg(long, env = "TOLLGATE_RATELIMIT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Redis holding the counters, redis://HOST:PORT[/DB]; without it (or a cluster, or
    /// sentinels), counters live in this process's memory.
    #[arg(
        long,
        env = "TOLLGATE_REDIS_URL",
        conflicts_with_all = ["redis_cluster_url", "redis_sentinel_url"]
    )]
    pub redis_url: Option<String>,
    /// Redis Cluster seed nodes, comma-separated redis:// URLs.
    #[arg(
        long,
        env = "TOLLGATE_REDIS_CLUSTER_URL",
        value_delimiter = ',',
        conflicts_with = "redis_sentinel_url"
    )]
    pub redis_cluster_url: Vec<String>,
    /// Redis behind Sentinel: the master's name, then the sentinels, comma-separated, as
    /// envoyproxy/ratelimit's REDIS_URL with REDIS_TYPE=sentinel
    /// (mymaster,10.0.0.1:26379,10.0.0.2:26379); each sentinel HOST:PORT or a redis:// URL.
    #[arg(long, env = "TOLLGATE_REDIS_SENTINEL_URL", value_parser = parse_sentinel_list)]
    pub redis_sentinel_url: Option<RedisTarget>,
    /// Behind Sentinel: the password the master (and any replica promoted in its place)
    /// requires, PASSWORD or USERNAME:PASSWORD, as envoyproxy/ratelimit's REDIS_AUTH (a
    /// password with a colon in it goes as default:PASSWORD). The sentinels' own password
    /// goes in their URLs; a standalone or cluster node's, in its URL.
    #[arg(
        long,
        env = "TOLLGATE_REDIS_AUTH",
        // Both: clap lets a requirement go when the required flag conflicts with one given.
        requires = "redis_sentinel_url",
        conflicts_with_all = ["redis_url", "redis_cluster_url"],
        hide_env_values = true,
        value_parser = parse_auth
    )]
    pub redis_auth: Option<RedisAuth>,
    /// Behind Sentinel: the database number to use on the master (SELECT N), default 0.
    /// A standalone Redis takes it in its URL (redis://HOST:PORT/N); Redis Cluster has
    /// only database 0.
    #[arg(
        long,
        env = "TOLLGATE_REDIS_DB",
        requires = "redis_sentinel_url",
        conflicts_with_all = ["redis_url", "redis_cluster_url"],
        value_parser = clap::value_parser!(i64).range(0..)
    )]
    pub redis_db: Option<i64>,
    /// Longest wait for Redis per request (e.g. 40ms, 1s); past it the answer is UNAVAILABLE.
    #[arg(
        long,
        env = "TOLLGATE_REDIS_TIMEOUT",
        default_value = DEFAULT_REDIS_TIMEOUT,
        value_parser = parse_timeout
    )]
    pub redis_timeout: Duration,
    /// HTTP /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "TOLLGATE_RATELIMIT_METRICS_ADDR",
        default_value = "127.0.0.1:9102"
    )]
    pub metrics_addr: SocketAddr,
    /// Drop-in mode: the OTLP/gRPC collector (HOST:PORT) for spans of calls Envoy traced.
    /// With --routes, routes.yaml's observability.tracing says where spans go.
    #[arg(
        long,
        env = "TOLLGATE_OTLP_ENDPOINT",
        conflicts_with = "routes",
        value_parser = parse_host_port
    )]
    pub otlp_endpoint: Option<String>,
    /// Threads serving gRPC, each with its own connection to Redis; default: one per CPU
    /// core. Each connection from Envoy is served by one thread.
    #[arg(long, env = "TOLLGATE_RATELIMIT_SERVING_THREADS")]
    pub serving_threads: Option<NonZeroUsize>,
    #[command(flatten)]
    pub tls: tollgate_sidecar::grpc::TlsFlags,
}

/// Where the limits come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitsSource {
    Routes(PathBuf),
    DropIn(PathBuf),
}

impl LimitsSource {
    /// The file or directory the limits are read from.
    pub fn path(&self) -> &Path {
        match self {
            LimitsSource::Routes(path) | LimitsSource::DropIn(path) => path,
        }
    }
}

impl Settings {
    pub fn limits_source(&self) -> Option<LimitsSource> {
        match (&self.routes, &self.config) {
            (Some(routes), _) => Some(LimitsSource::Routes(routes.clone())),
            (None, Some(config)) => Some(LimitsSource::DropIn(config.clone())),
            (None, None) => None,
        }
    }

    /// `--serving-threads`, or one per core the process may run on.
    pub fn serving_threads(&self) -> NonZeroUsize {
        self.serving_threads
            .unwrap_or_else(tollgate_sidecar::grpc::serving_threads_per_core)
    }

    /// `None`: in-memory counters.
    pub fn redis_target(&self) -> Option<RedisTarget> {
        if let Some(url) = &self.redis_url {
            return Some(RedisTarget::Single(url.clone()));
        }
        if let Some(RedisTarget::Sentinel {
            master, sentinels, ..
        }) = &self.redis_sentinel_url
        {
            return Some(RedisTarget::Sentinel {
                master: master.clone(),
                sentinels: sentinels.clone(),
                master_auth: self.redis_auth.clone(),
                db: self.redis_db.unwrap_or(0),
            });
        }
        let nodes: Vec<String> = self
            .redis_cluster_url
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        (!nodes.is_empty()).then_some(RedisTarget::Cluster(nodes))
    }
}

/// `HOST:PORT`, as routes.yaml's `otlp_endpoint` is written.
fn parse_host_port(text: &str) -> Result<String, String> {
    let valid = !text.contains("://")
        && text.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "expected HOST:PORT of an OTLP/gRPC collector (e.g. otel-collector:4317), without a scheme; got \"{text}\""
        ))
    }
}

/// `MASTER_NAME,SENTINEL[,SENTINEL…]`, each sentinel `HOST:PORT` (envoyproxy/ratelimit's
/// form, which this takes unchanged) or a `redis://` URL; every sentinel becomes a URL.
fn parse_sentinel_list(text: &str) -> Result<RedisTarget, String> {
    const FORM: &str =
        "expected MASTER_NAME,HOST:PORT[,HOST:PORT…] (the sentinels may be redis:// URLs)";
    let mut items = text.split(',').map(str::trim);
    let master = items.next().unwrap_or_default();
    if master.is_empty() || master.contains("://") || is_host_port(master) {
        return Err(format!(
            "{FORM}: the master's name comes first; got \"{master}\""
        ));
    }
    let sentinels = items
        .filter(|item| !item.is_empty())
        .map(|item| {
            let url = if item.contains("://") {
                item.to_string()
            } else if is_host_port(item) {
                format!("redis://{item}")
            } else {
                return Err(format!("{FORM}: sentinel \"{item}\" is not HOST:PORT"));
            };
            redis::IntoConnectionInfo::into_connection_info(url.as_str())
                .map_err(|e| format!("sentinel \"{item}\": {e}"))?;
            Ok(url)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if sentinels.is_empty() {
        return Err(format!("{FORM}: no sentinel after \"{master}\""));
    }
    Ok(RedisTarget::Sentinel {
        master: master.to_string(),
        sentinels,
        master_auth: None,
        db: 0,
    })
}

/// `PASSWORD` or `USERNAME:PASSWORD` (split at the first colon, as envoyproxy/ratelimit
/// does), neither part empty.
fn parse_auth(text: &str) -> Result<RedisAuth, String> {
    let (username, password) = match text.split_once(':') {
        Some((username, password)) => (Some(username), password),
        None => (None, text),
    };
    if password.is_empty() || username.is_some_and(str::is_empty) {
        return Err(
            "expected PASSWORD or USERNAME:PASSWORD, neither empty (a password with a colon \
             in it goes as default:PASSWORD)"
                .to_string(),
        );
    }
    Ok(RedisAuth {
        username: username.map(str::to_string),
        password: password.to_string(),
    })
}

fn is_host_port(text: &str) -> bool {
    text.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = tollgate_routes::duration::parse(text)?;
    if timeout.is_zero() {
        return Err("the timeout must be positive".to_string());
    }
    Ok(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_defaults() {
        let s = Settings::try_parse_from(["tollgate-ratelimit", "--routes", "routes.yaml"])
            .expect("parses");
        assert_eq!(s.redis_timeout, Duration::from_millis(40));
        assert_eq!(s.redis_target(), None);
        assert_eq!(
            s.serving_threads(),
            std::thread::available_parallelism().expect("known here")
        );
        assert_eq!(
            s.limits_source(),
            Some(LimitsSource::Routes("routes.yaml".into()))
        );
    }

    #[test]
    fn serving_threads_are_at_least_one() {
        let s = Settings::try_parse_from(["t", "--config", "c", "--serving-threads", "3"])
            .expect("parses");
        assert_eq!(s.serving_threads().get(), 3);
        assert!(
            Settings::try_parse_from(["t", "--config", "c", "--serving-threads", "0"]).is_err()
        );
    }

    #[test]
    fn a_cluster_is_a_comma_list() {
        let s = Settings::try_parse_from([
            "tollgate-ratelimit",
            "--config",
            "conf.d",
            "--redis-cluster-url",
            "redis://a:7000,redis://b:7001",
            "--redis-timeout",
            "100ms",
        ])
        .expect("parses");
        assert_eq!(
            s.redis_target(),
            Some(RedisTarget::Cluster(vec![
                "redis://a:7000".into(),
                "redis://b:7001".into()
            ]))
        );
    }

    fn sentinel_target(list: &str) -> Result<Option<RedisTarget>, clap::Error> {
        Settings::try_parse_from(["t", "--config", "c", "--redis-sentinel-url", list])
            .map(|s| s.redis_target())
    }

    #[test]
    fn sentinels_take_envoyproxy_ratelimits_form() {
        assert_eq!(
            sentinel_target("mymaster,10.0.0.1:26379, sentinel-2:26379").expect("parses"),
            Some(RedisTarget::Sentinel {
                master: "mymaster".into(),
                sentinels: vec![
                    "redis://10.0.0.1:26379".into(),
                    "redis://sentinel-2:26379".into()
                ],
                master_auth: None,
                db: 0,
            })
        );
    }

    #[test]
    fn sentinels_may_be_urls() {
        assert_eq!(
            sentinel_target("mymaster,redis://:secret@10.0.0.1:26379,[::1]:26380").expect("parses"),
            Some(RedisTarget::Sentinel {
                master: "mymaster".into(),
                sentinels: vec![
                    "redis://:secret@10.0.0.1:26379".into(),
                    "redis://[::1]:26380".into()
                ],
                master_auth: None,
                db: 0,
            })
        );
    }

    #[test]
    fn the_masters_password_behind_sentinel_is_redis_auth_with_an_optional_user() {
        let target = |auth: &str| {
            Settings::try_parse_from([
                "t",
                "--config",
                "c",
                "--redis-sentinel-url",
                "mymaster,10.0.0.1:26379",
                "--redis-auth",
                auth,
            ])
            .map(|s| s.redis_target())
        };
        let auth = |username: Option<&str>, password: &str| {
            Some(RedisTarget::Sentinel {
                master: "mymaster".into(),
                sentinels: vec!["redis://10.0.0.1:26379".into()],
                master_auth: Some(RedisAuth {
                    username: username.map(str::to_string),
                    password: password.into(),
                }),
                db: 0,
            })
        };
        assert_eq!(target("s3cret").expect("parses"), auth(None, "s3cret"));
        assert_eq!(
            target("limiter:pa:ss").expect("parses"),
            auth(Some("limiter"), "pa:ss")
        );
        for bad in ["", ":s3cret", "limiter:"] {
            assert!(target(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_database_behind_sentinel_is_redis_db() {
        let target = |db: &str| {
            Settings::try_parse_from([
                "t",
                "--config",
                "c",
                "--redis-sentinel-url",
                "mymaster,10.0.0.1:26379",
                "--redis-db",
                db,
            ])
            .map(|s| s.redis_target())
        };
        assert_eq!(
            target("3").expect("parses"),
            Some(RedisTarget::Sentinel {
                master: "mymaster".into(),
                sentinels: vec!["redis://10.0.0.1:26379".into()],
                master_auth: None,
                db: 3,
            })
        );
        for bad in ["-1", "two", ""] {
            assert!(target(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn redis_db_is_refused_without_sentinels() {
        assert_refused_without_sentinels(&["--redis-db", "2"]);
    }

    #[test]
    fn redis_auth_is_refused_without_sentinels() {
        assert_refused_without_sentinels(&["--redis-auth", "s3cret"]);
    }

    /// `flag` (a Sentinel-only setting) with a standalone Redis, a cluster, or no store.
    fn assert_refused_without_sentinels(flag: &[&str]) {
        for store in [
            &["--redis-url", "redis://10.0.0.1:6379/2"][..],
            &["--redis-cluster-url", "redis://10.0.0.1:7000"],
            &[],
        ] {
            let parsed =
                Settings::try_parse_from(["t", "--config", "c"].iter().chain(flag).chain(store));
            assert!(parsed.is_err(), "{flag:?} with {store:?}: {parsed:?}");
        }
    }

    #[test]
    fn a_sentinel_list_without_a_master_name_or_a_sentinel_is_refused() {
        for bad in [
            "10.0.0.1:26379,10.0.0.2:26379",
            "redis://10.0.0.1:26379",
            "mymaster",
            "mymaster,",
            ",10.0.0.1:26379",
            "mymaster,10.0.0.1",
            "mymaster,10.0.0.1:0",
            "mymaster,http://10.0.0.1:26379",
        ] {
            let error = sentinel_target(bad).expect_err(bad);
            assert!(
                error.to_string().contains("MASTER_NAME") || error.to_string().contains("sentinel"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn sentinels_exclude_the_other_redis_flags() {
        for other in ["--redis-url", "--redis-cluster-url"] {
            assert!(Settings::try_parse_from([
                "t",
                "--config",
                "c",
                "--redis-sentinel-url",
                "mymaster,a:26379",
                other,
                "redis://b:6379",
            ])
            .is_err());
        }
    }

    #[test]
    fn drop_in_mode_takes_a_collector_from_the_flag() {
        let s = Settings::try_parse_from([
            "t",
            "--config",
            "conf.d",
            "--otlp-endpoint",
            "otel-collector:4317",
        ])
        .expect("parses");
        assert_eq!(s.otlp_endpoint.as_deref(), Some("otel-collector:4317"));
        for bad in ["otel-collector", "http://otel-collector:4317", "otel:0"] {
            assert!(
                Settings::try_parse_from(["t", "--config", "c", "--otlp-endpoint", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn with_routes_the_collector_comes_from_routes_yaml_only() {
        assert!(
            Settings::try_parse_from(["t", "--routes", "r", "--otlp-endpoint", "c:4317"]).is_err()
        );
    }

    #[test]
    fn routes_and_config_exclude_each_other_and_one_is_required() {
        assert!(Settings::try_parse_from(["t", "--routes", "a", "--config", "b"]).is_err());
        assert!(Settings::try_parse_from(["t"]).is_err());
    }
}
