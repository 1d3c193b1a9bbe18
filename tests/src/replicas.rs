//! Which of two control-plane replicas holds a node's ADS stream: shared by the replica and
//! the network-cut tests.

use crate::{eventually, RunningControlPlane};

/// Whether `first` holds `node`'s stream (else `second` does), once exactly one of them does.
pub async fn first_holds_stream(
    first: &RunningControlPlane,
    second: &RunningControlPlane,
    node: &str,
) -> bool {
    eventually("one replica holds the node's stream", async || {
        match (
            first.holds_stream_of(node).await,
            second.holds_stream_of(node).await,
        ) {
            (true, false) => Ok(true),
            (false, true) => Ok(false),
            both => anyhow::bail!("connected to first, second: {both:?}"),
        }
    })
    .await
}

/// Waits until `node`'s stream is on `live`.
pub async fn stream_moves_to(live: &RunningControlPlane, node: &str) {
    eventually("the node's stream moves to the live replica", async || {
        anyhow::ensure!(live.holds_stream_of(node).await, "not yet");
        Ok(())
    })
    .await;
}
