//! The primary that Redis Sentinel names, found again after a failover.
//!
//! This follows the Sentinel client guidelines (redis.io, "Sentinel client spec"): ask the
//! sentinels for the master's address, connect, and check with `ROLE` that the node is a
//! master; when the connection fails, or a write is refused with `READONLY` (the node was
//! demoted while the connection stayed open) or `NOREPLICAS` (the master lost its replicas,
//! as on the minority side of a partition), ask again; and ask every [`RECHECK_INTERVAL`]
//! anyway. A background task does the asking and publishes the connection; requests only
//! read the latest one, so none of them ever waits on a sentinel: while no master is known
//! they fail at once, and the store maps that to `UNAVAILABLE` like any other Redis
//! failure. A master that requires a password is given it (`AUTH`) on every connection, and
//! the configured database is selected on it; the sentinels' own password, if any, is in
//! their URLs.
//!
//! Every reachable sentinel is asked, not the first that answers, and the answer with the
//! highest config epoch wins. A partition can leave the old master with a minority of the
//! sentinels: they cannot agree on a failover, so they go on naming it, and it goes on
//! saying `ROLE` master, while the majority has promoted a replica under a new epoch. A
//! client that took the first answer could keep writing to the old master, and every
//! increment written there is lost when the partition heals and it is demoted (a split
//! brain). A config epoch is only ever won by a majority-elected leader and only grows
//! (redis.io, "High availability with Redis Sentinel": "configuration propagation"), so
//! the highest one any sentinel reports is the newest configuration.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Role};
use tokio::sync::{watch, Notify};

/// The longest one round of asking the sentinels and connecting to the master may take: a
/// stuck sentinel or master must not keep the task from the next round. Generous, since no
/// request waits on it.
const ROUND_PATIENCE: Duration = Duration::from_secs(2);

/// How long one sentinel may take to connect and answer before this round goes on
/// without it: a sentinel cut off the network answers nothing, and waiting for TCP to give
/// up would hold the round. Half the round, leaving the other half to the master.
const SENTINEL_PATIENCE: Duration = Duration::from_secs(1);

/// Pause after a round that found no master, doubling up to [`MAX_RETRY_DELAY`]: while the
/// sentinels elect a new master (a few seconds) there is nothing to find, and asking every
/// 25 ms only loads them. The cap bounds how long after the promotion the service notices.
const MIN_RETRY_DELAY: Duration = Duration::from_millis(25);
const MAX_RETRY_DELAY: Duration = Duration::from_millis(250);

/// How often the sentinels are asked while every request succeeds. A switchover
/// (`SENTINEL FAILOVER`, for maintenance) promotes a replica while the old primary runs on
/// and accepts writes until Sentinel demotes it, 8-10 s later (once it has reported itself
/// a primary for 8 s, through an `INFO` sent every 10 s): increments written there
/// meanwhile are lost when it resyncs, and no request fails to say so. Asking every second
/// bounds that to about a second after the sentinels name the new primary, for one
/// sentinel lookup per sentinel and one `PING` per second per connection.
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The least time between two rounds: a burst of failing requests asks once.
const MIN_ROUND_SPACING: Duration = Duration::from_millis(20);

/// The connection to the master the sentinels name; cloning shares it.
#[derive(Clone)]
pub(super) struct SentinelPrimary {
    current: watch::Receiver<Option<MultiplexedConnection>>,
    suspect: Arc<Notify>,
}

impl SentinelPrimary {
    /// Starts the task that finds the master (reached with `node`: its password and
    /// database), on the current runtime; returns at once. Fails only for a malformed
    /// sentinel URL. The task ends when the last clone is dropped.
    pub(super) fn open(
        master: &str,
        sentinels: &[String],
        node: RedisConnectionInfo,
        timeout: Duration,
    ) -> Result<Self, redis::RedisError> {
        let sentinels = sentinels
            .iter()
            .map(|url| {
                Ok(SentinelLink {
                    client: redis::Client::open(url.as_str())?,
                    connection: None,
                })
            })
            .collect::<Result<Vec<_>, redis::RedisError>>()?;
        let (publish, current) = watch::channel(None);
        let suspect = Arc::new(Notify::new());
        tokio::spawn(follow_master(
            sentinels,
            master.to_owned(),
            node,
            timeout,
            publish,
            suspect.clone(),
        ));
        Ok(SentinelPrimary { current, suspect })
    }

    /// The connection to the master as last found, if one was.
    pub(super) fn connection(&self) -> Option<MultiplexedConnection> {
        self.current.borrow().clone()
    }

    /// Says that a request through [`Self::connection`] failed in a way a failover would
    /// explain: the task asks the sentinels again (a burst of these makes one round).
    pub(super) fn suspect(&self) {
        self.suspect.notify_one();
    }
}

/// One sentinel, and the connection to it kept between rounds.
struct SentinelLink {
    client: redis::Client,
    connection: Option<MultiplexedConnection>,
}

/// Why a round found no master to connect to.
#[derive(Debug, thiserror::Error)]
enum LookupError {
    #[error("no sentinel named master \"{master}\": {errors}")]
    NoAnswer { master: String, errors: String },
    #[error("{address} is named master (config epoch {epoch}) but is a {role}")]
    NotMaster {
        address: String,
        epoch: u64,
        role: &'static str,
    },
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
}

/// Finds the master, publishes a connection to it, and waits for a suspicion or the next
/// recheck; then checks whether the master moved or the connection broke, and replaces it
/// if so. Ends when no store reads `publish` any more.
async fn follow_master(
    mut sentinels: Vec<SentinelLink>,
    master: String,
    node: RedisConnectionInfo,
    timeout: Duration,
    publish: watch::Sender<Option<MultiplexedConnection>>,
    suspect: Arc<Notify>,
) {
    // The master's address (`host:port`) and the connection to it.
    let mut current: Option<(String, MultiplexedConnection)> = None;
    let mut delay = MIN_RETRY_DELAY;
    loop {
        let round = tokio::time::timeout(
            ROUND_PATIENCE,
            find_master(&mut sentinels, &master, &node, timeout, current.as_ref()),
        );
        let found = tokio::select! {
            found = round => found,
            () = publish.closed() => return,
        };
        let error = match found {
            Ok(Ok(Found::Same)) => None,
            Ok(Ok(Found::New(named, connection))) => {
                let address = named.address();
                tracing::info!(%master, %address, config_epoch = named.config_epoch, "connected to the redis master named by sentinel");
                publish.send_replace(Some(connection.clone()));
                current = Some((address, connection));
                None
            }
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some(format!("no answer within {ROUND_PATIENCE:?}")),
        };
        if let Some(error) = error {
            // The connection already published stays: if the master still answers there,
            // requests go on meanwhile.
            tracing::warn!(%master, %error, retry_in = ?delay, "no redis master found through sentinel");
            if !pause(delay, &publish).await {
                return;
            }
            delay = (delay * 2).min(MAX_RETRY_DELAY);
            continue;
        }
        delay = MIN_RETRY_DELAY;
        if !pause(MIN_ROUND_SPACING, &publish).await {
            return;
        }
        tokio::select! {
            () = suspect.notified() => {}
            () = tokio::time::sleep(RECHECK_INTERVAL) => {}
            () = publish.closed() => return,
        }
    }
}

/// Sleeps for `delay`; false if meanwhile every store went away.
async fn pause(delay: Duration, publish: &watch::Sender<Option<MultiplexedConnection>>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = publish.closed() => false,
    }
}

enum Found {
    /// The master is where the current connection goes, and that connection answers.
    Same,
    New(Named, MultiplexedConnection),
}

/// A master as one sentinel names it (`SENTINEL MASTER <name>`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Named {
    ip: String,
    port: u16,
    /// The epoch of the configuration that made it master: 0 until the first failover.
    config_epoch: u64,
}

impl Named {
    /// Reads the fields Sentinel answers `SENTINEL MASTER` with; `None` if `ip`, `port`
    /// or `config-epoch` is missing or malformed.
    fn from_reply(reply: &HashMap<String, String>) -> Option<Self> {
        Some(Named {
            ip: reply.get("ip")?.clone(),
            port: reply.get("port")?.parse().ok()?,
            config_epoch: reply.get("config-epoch")?.parse().ok()?,
        })
    }

    fn address(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

/// The newest of the answers: the highest config epoch. Within one epoch every sentinel
/// that knows it names the same master (one leader won it); should answers disagree
/// anyway, the master most of them name is taken, then the first.
fn newest(answers: &[Named]) -> Option<&Named> {
    let votes = |candidate: &Named| answers.iter().filter(|a| *a == candidate).count();
    answers
        .iter()
        .enumerate()
        .max_by(|(i, a), (j, b)| {
            (a.config_epoch, votes(a))
                .cmp(&(b.config_epoch, votes(b)))
                // The first of equals wins: `max_by` keeps the last maximum.
                .then(j.cmp(i))
        })
        .map(|(_, named)| named)
}

/// Asks one sentinel where `master` is, on its kept connection or a new one; a
/// connection that failed is dropped, so the next round connects again.
async fn ask(link: &mut SentinelLink, master: &str) -> Result<Named, redis::RedisError> {
    let mut connection = match &link.connection {
        Some(connection) => connection.clone(),
        None => {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(SENTINEL_PATIENCE))
                .set_response_timeout(Some(SENTINEL_PATIENCE));
            let connection = link
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            link.connection = Some(connection.clone());
            connection
        }
    };
    let reply = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(master)
        .query_async::<HashMap<String, String>>(&mut connection)
        .await;
    let reply = match reply {
        Ok(reply) => reply,
        Err(error) => {
            if error.is_io_error() || error.is_unrecoverable_error() || error.is_timeout() {
                link.connection = None;
            }
            return Err(error);
        }
    };
    Named::from_reply(&reply).ok_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "SENTINEL MASTER reply without ip, port or config-epoch",
            format!("{reply:?}"),
        ))
    })
}

/// One round: every sentinel is asked at once, and the master named with the highest
/// config epoch is taken; then a connection to it, checked with `ROLE`, unless `current`
/// already goes there and still answers `PING`.
async fn find_master(
    sentinels: &mut [SentinelLink],
    master: &str,
    node: &RedisConnectionInfo,
    timeout: Duration,
    current: Option<&(String, MultiplexedConnection)>,
) -> Result<Found, LookupError> {
    let replies = futures::future::join_all(sentinels.iter_mut().map(|link| async move {
        match tokio::time::timeout(SENTINEL_PATIENCE, ask(link, master)).await {
            Ok(reply) => reply.map_err(|e| e.to_string()),
            Err(_) => {
                // Its connection may be stuck behind a reply that never comes.
                link.connection = None;
                Err(format!("no answer within {SENTINEL_PATIENCE:?}"))
            }
        }
    }))
    .await;
    let mut answers = Vec::new();
    let mut errors = Vec::new();
    for reply in replies {
        match reply {
            Ok(named) => answers.push(named),
            Err(error) => errors.push(error),
        }
    }
    let Some(named) = newest(&answers).cloned() else {
        return Err(LookupError::NoAnswer {
            master: master.to_owned(),
            errors: errors.join("; "),
        });
    };
    let address = named.address();
    if let Some((current_address, connection)) = current {
        if *current_address == address {
            let mut connection = connection.clone();
            let answered = redis::cmd("PING").query_async::<()>(&mut connection).await;
            if answered.is_ok() {
                return Ok(Found::Same);
            }
        }
    }
    let info = ConnectionAddr::Tcp(named.ip.clone(), named.port)
        .into_connection_info()?
        .set_redis_settings(node.clone());
    // The request path bounds each call by the store's timeout anyway; the connection's own
    // response timeout makes a reply that never comes free its slot in the multiplexer.
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(ROUND_PATIENCE))
        .set_response_timeout(Some(timeout));
    let mut connection = redis::Client::open(info)?
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    // A replica named before the sentinels' reconfiguration reached it, or a master
    // demoted since, must not be written to.
    let role: Role = redis::cmd("ROLE").query_async(&mut connection).await?;
    let role = match role {
        Role::Primary { .. } => return Ok(Found::New(named, connection)),
        Role::Replica { .. } => "replica",
        Role::Sentinel { .. } => "sentinel",
        _ => "node of another role",
    };
    Err(LookupError::NotMaster {
        address,
        epoch: named.config_epoch,
        role,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(ip: &str, config_epoch: u64) -> Named {
        Named {
            ip: ip.into(),
            port: 6379,
            config_epoch,
        }
    }

    #[test]
    fn the_majority_s_new_master_wins_over_the_old_one_a_minority_still_names() {
        // The sentinel cut off with the old master is asked first and answers first.
        let answers = [named("old", 0), named("new", 1), named("new", 1)];
        assert_eq!(newest(&answers), Some(&named("new", 1)));
        let answers = [named("old", 0), named("new", 1)];
        assert_eq!(
            newest(&answers),
            Some(&named("new", 1)),
            "one of two is enough"
        );
    }

    #[test]
    fn a_higher_epoch_wins_even_when_fewer_sentinels_name_it() {
        let answers = [named("a", 3), named("a", 3), named("b", 4)];
        assert_eq!(newest(&answers), Some(&named("b", 4)));
    }

    #[test]
    fn within_one_epoch_the_master_most_sentinels_name_wins_then_the_first() {
        let answers = [named("a", 2), named("b", 2), named("b", 2)];
        assert_eq!(newest(&answers), Some(&named("b", 2)));
        let answers = [named("a", 2), named("b", 2)];
        assert_eq!(newest(&answers), Some(&named("a", 2)));
        assert_eq!(newest(&[]), None);
    }

    #[test]
    fn sentinel_master_replies_are_read_for_address_and_epoch() {
        let reply: HashMap<String, String> = [
            ("name", "tollgate"),
            ("ip", "10.0.0.7"),
            ("port", "6380"),
            ("flags", "master"),
            ("config-epoch", "5"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let named = Named::from_reply(&reply).expect("parses");
        assert_eq!(named.address(), "10.0.0.7:6380");
        assert_eq!(named.config_epoch, 5);
        let mut without_epoch = reply.clone();
        without_epoch.remove("config-epoch");
        assert_eq!(Named::from_reply(&without_epoch), None);
    }
}
