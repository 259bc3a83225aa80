//! Proxim's own peer layer: two [`PeerConnection`]s in one process, wired back to back with
//! [`SignalLink::pair`] (no server), talking over loopback.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use proxim_core::SignalLink;
use proxim_core::peer::{Established, Payload, PeerConfig, PeerConnection, PeerRole};

use crate::Params;
use crate::measure::{BulkMeter, Moved, Outcome, repeat_setup, runtime};

/// One setup trial may take this long before it counts as failed.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Row: bulk throughput over the default channel (reliable, ordered).
pub(crate) fn run_bulk(params: &Params) -> anyhow::Result<Outcome> {
    runtime()?.block_on(bulk(*params))
}

/// Row: `PeerConnection::establish` on both sides, repeated.
pub(crate) fn run_setup(params: &Params) -> anyhow::Result<Outcome> {
    runtime()?.block_on(setup(*params))
}

/// Establish two connected peers over an in-memory signaling link.
async fn establish_pair() -> anyhow::Result<(Established, Established)> {
    establish_with(
        PeerConfig::new(PeerRole::Offerer, vec![]),
        PeerConfig::new(PeerRole::Answerer, vec![]),
    )
    .await
}

/// Establish two peers with the given configurations over an in-memory signaling link.
pub(crate) async fn establish_with(
    offerer: PeerConfig,
    answerer: PeerConfig,
) -> anyhow::Result<(Established, Established)> {
    let (offerer_link, answerer_link) = SignalLink::pair();
    let offerer = PeerConnection::establish(offerer, offerer_link);
    let answerer = PeerConnection::establish(answerer, answerer_link);
    let (offerer, answerer) = tokio::join!(offerer, answerer);
    Ok((
        offerer.context("offerer establish")?,
        answerer.context("answerer establish")?,
    ))
}

async fn bulk(params: Params) -> anyhow::Result<Outcome> {
    let deadline = tokio::time::Instant::now() + params.row_limit;
    let pair = tokio::time::timeout_at(deadline, establish_pair())
        .await
        .context("establish timed out")??;
    bulk_over(params, deadline, pair).await
}

/// Move `params.bulk_bytes` from the offerer to the answerer over the default channel.
pub(crate) async fn bulk_over(
    params: Params,
    deadline: tokio::time::Instant,
    (offerer, answerer): (Established, Established),
) -> anyhow::Result<Outcome> {
    let total = params.bulk_bytes;
    let moved = Moved::default();
    let meter = BulkMeter::start(total);

    let mut receiver = answerer.channel;
    let counter = moved.clone();
    let receiving = tokio::spawn(async move {
        while let Some(payload) = receiver.recv().await {
            if counter.add(payload.len() as u64) >= total {
                return true;
            }
        }
        false
    });
    let sender = offerer.channel;
    let message = Bytes::from(vec![0xa5_u8; params.message_bytes]);
    let transfer = async {
        let mut sent = 0_u64;
        while sent < total {
            let len = usize::try_from(total - sent).map_or(message.len(), |l| l.min(message.len()));
            sender
                .send(Payload::Binary(message.slice(..len)))
                .await
                .context("send")?;
            sent += len as u64;
        }
        anyhow::ensure!(
            receiving.await.context("receiver task")?,
            "channel closed early"
        );
        anyhow::Ok(())
    };
    let outcome = match tokio::time::timeout_at(deadline, transfer).await {
        Ok(Ok(())) => meter.finish(moved.get(), false, None),
        Ok(Err(error)) => meter.finish(moved.get(), true, Some(format!("{error:#}"))),
        Err(_) => meter.finish(moved.get(), true, None),
    };
    offerer.connection.close().await;
    answerer.connection.close().await;
    Ok(outcome)
}

async fn setup(params: Params) -> anyhow::Result<Outcome> {
    Ok(repeat_setup(
        &params,
        TRIAL_TIMEOUT,
        async || establish_pair().await,
        async |(offerer, answerer): (Established, Established)| {
            tokio::join!(offerer.connection.close(), answerer.connection.close());
        },
    )
    .await)
}
