//! The primary that Redis Sentinel names, found again after a failover.
//!
//! This follows the Sentinel client guidelines (redis.io, "Sentinel client spec"): ask the
//! sentinels for the master's address, connect, and check with `ROLE` that the node is a
//! master; when the connection fails, or a write is refused with `READONLY` (the node was
//! demoted while the connection stayed open), ask again; and ask every
//! [`RECHECK_INTERVAL`] anyway. A background task does the asking and publishes the
//! connection; requests only read the latest one, so none of them ever waits on a
//! sentinel: while no master is known they fail at once, and the store maps that to
//! `UNAVAILABLE` like any other Redis failure. A master that requires a password is given
//! it (`AUTH`) on every connection, the library's `ROLE` check included; the sentinels'
//! own password, if any, is in their URLs.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{AsyncConnectionConfig, RedisConnectionInfo};
use tokio::sync::{watch, Notify};

/// The longest one round of asking the sentinels and connecting to the master may take: a
/// stuck sentinel or master must not keep the task from the next round. Generous, since no
/// request waits on it.
const ROUND_PATIENCE: Duration = Duration::from_secs(2);

/// Pause after a round that found no master, doubling up to [`MAX_RETRY_DELAY`]: while the
/// sentinels elect a new master (a few seconds) there is nothing to find, and asking every
/// 25 ms only loads them. The cap bounds how long after the promotion the service notices.
const MIN_RETRY_DELAY: Duration = Duration::from_millis(25);
const MAX_RETRY_DELAY: Duration = Duration::from_millis(250);

/// How often the sentinels are asked while every request succeeds. A switchover
/// (`SENTINEL FAILOVER`, for maintenance) promotes a replica while the old primary runs on
/// and accepts writes until Sentinel demotes it, 8-10 s later (once it has reported itself
/// a primary for 8 s, through an `INFO` sent every 10 s): increments written there
/// meanwhile are lost when it resyncs, and no request fails to say so. Asking every second bounds that to about a second after the sentinels name
/// the new primary, for one sentinel lookup and one `ROLE` per second per connection.
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
    /// Starts the task that finds the master (given `auth` when it requires a password),
    /// on the current runtime; returns at once. Fails only for a malformed sentinel URL.
    /// The task ends when the last clone is dropped.
    pub(super) fn open(
        master: &str,
        sentinels: &[String],
        auth: Option<&super::RedisAuth>,
        timeout: Duration,
    ) -> Result<Self, redis::RedisError> {
        let sentinel = Sentinel::build(sentinels.to_vec())?;
        let mut node = SentinelNodeConnectionInfo::default();
        if let Some(auth) = auth {
            let mut info = RedisConnectionInfo::default().set_password(&auth.password);
            if let Some(username) = &auth.username {
                info = info.set_username(username);
            }
            node = node.set_redis_connection_info(info);
        }
        let (publish, current) = watch::channel(None);
        let suspect = Arc::new(Notify::new());
        tokio::spawn(follow_master(
            sentinel,
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

/// Finds the master, publishes a connection to it, and waits for a suspicion or the next
/// recheck; then checks whether the master moved or the connection broke, and replaces it
/// if so. Ends when no store reads `publish` any more.
async fn follow_master(
    mut sentinel: Sentinel,
    master: String,
    node: SentinelNodeConnectionInfo,
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
            find_master(&mut sentinel, &master, &node, timeout, current.as_ref()),
        );
        let found = tokio::select! {
            found = round => found,
            () = publish.closed() => return,
        };
        let error = match found {
            Ok(Ok(Found::Same)) => None,
            Ok(Ok(Found::New(address, connection))) => {
                tracing::info!(%master, %address, "connected to the redis master named by sentinel");
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
    New(String, MultiplexedConnection),
}

/// One round: the master's address from the sentinels (the library checks `ROLE` on it),
/// then a connection to it, unless `current` already goes there and still answers `PING`.
async fn find_master(
    sentinel: &mut Sentinel,
    master: &str,
    node: &SentinelNodeConnectionInfo,
    timeout: Duration,
    current: Option<&(String, MultiplexedConnection)>,
) -> Result<Found, redis::RedisError> {
    let client = sentinel.async_master_for(master, Some(node)).await?;
    let address = client.get_connection_info().addr().to_string();
    if let Some((current_address, connection)) = current {
        if *current_address == address {
            let mut connection = connection.clone();
            let answered = redis::cmd("PING").query_async::<()>(&mut connection).await;
            if answered.is_ok() {
                return Ok(Found::Same);
            }
        }
    }
    // The request path bounds each call by the store's timeout anyway; the connection's own
    // response timeout makes a reply that never comes free its slot in the multiplexer.
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(ROUND_PATIENCE))
        .set_response_timeout(Some(timeout));
    let connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    Ok(Found::New(address, connection))
}
