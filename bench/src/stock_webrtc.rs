//! The baseline: two peers on the stock `webrtc` 0.21.1 crate (its own async driver over the
//! same sans-IO `rtc` core Proxim uses), in one process over loopback.
//!
//! Offer/answer without trickle (each side waits for gathering to complete), one reliable
//! ordered channel, flow control with the buffered-amount thresholds (pause at 1 MiB, resume
//! at 512 KiB), like the crate's own flow-control example.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::BytesMut;
use tokio::sync::{mpsc, watch};
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState,
};
use webrtc::runtime::Runtime;

use crate::Params;
use crate::measure::{BulkMeter, Moved, Outcome, runtime, setup_outcome};

const BUFFERED_LOW: u32 = 512 * 1024;
const BUFFERED_HIGH: u32 = 1024 * 1024;

/// Row: bulk throughput.
pub(crate) fn run_bulk(params: &Params) -> anyhow::Result<Outcome> {
    runtime()?.block_on(bulk(*params))
}

/// Row: offer to open, repeated.
pub(crate) fn run_setup(params: &Params) -> anyhow::Result<Outcome> {
    runtime()?.block_on(setup(*params))
}

async fn bulk(params: Params) -> anyhow::Result<Outcome> {
    let deadline = tokio::time::Instant::now() + params.row_limit;
    let pair = tokio::time::timeout_at(deadline, Pair::connect())
        .await
        .context("connect timed out")??;
    let total = params.bulk_bytes;
    let moved = Moved::default();
    let meter = BulkMeter::start(total);

    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let receiver = Arc::clone(&pair.receiver);
    let counter = moved.clone();
    tokio::spawn(async move {
        while let Some(event) = receiver.poll().await {
            if let DataChannelEvent::OnMessage(message) = event
                && counter.add(message.data.len() as u64) >= total
            {
                let _ = done_tx.try_send(());
            }
        }
    });

    // Flow control: the sender's event stream flips `paused` at the thresholds.
    let sender = Arc::clone(&pair.sender);
    sender
        .set_buffered_amount_low_threshold(BUFFERED_LOW)
        .await?;
    sender
        .set_buffered_amount_high_threshold(BUFFERED_HIGH)
        .await?;
    let (paused_tx, mut paused_rx) = watch::channel(false);
    let events = Arc::clone(&sender);
    tokio::spawn(async move {
        while let Some(event) = events.poll().await {
            match event {
                DataChannelEvent::OnBufferedAmountHigh => {
                    let _ = paused_tx.send(true);
                }
                DataChannelEvent::OnBufferedAmountLow => {
                    let _ = paused_tx.send(false);
                }
                _ => {}
            }
        }
    });
    let message = vec![0xa5_u8; params.message_bytes];
    let sending = async {
        let mut sent = 0_u64;
        while sent < total {
            paused_rx
                .wait_for(|paused| !*paused)
                .await
                .context("sender events ended")?;
            let len = usize::try_from(total - sent).map_or(message.len(), |l| l.min(message.len()));
            sender
                .send(BytesMut::from(&message[..len]))
                .await
                .context("send")?;
            sent += len as u64;
        }
        done_rx.recv().await.context("receiver ended")?;
        anyhow::Ok(())
    };
    let outcome = match tokio::time::timeout_at(deadline, sending).await {
        Ok(Ok(())) => meter.finish(moved.get(), false, None),
        Ok(Err(error)) => meter.finish(moved.get(), true, Some(format!("{error:#}"))),
        Err(_) => meter.finish(moved.get(), true, None),
    };
    Ok(outcome)
}

async fn setup(params: Params) -> anyhow::Result<Outcome> {
    // Stock setup is slow (FIELD-NOTES: 0.6–1.5 s); cap the trials so the row stays bounded.
    let trials = params.setup_trials.min(20);
    let deadline = tokio::time::Instant::now() + params.row_limit;
    let mut samples = Vec::new();
    let mut first_error = None;
    let mut timed_out = false;
    for _ in 0..trials {
        let started = Instant::now();
        match tokio::time::timeout_at(deadline, Pair::connect()).await {
            Ok(Ok(pair)) => {
                samples.push(started.elapsed());
                pair.close().await;
            }
            Ok(Err(error)) => {
                first_error.get_or_insert_with(|| format!("{error:#}"));
            }
            Err(_) => {
                timed_out = true;
                break;
            }
        }
    }
    Ok(setup_outcome(trials, samples, timed_out, first_error))
}

/// Two connected stock peers with an open channel between them.
struct Pair {
    offerer: Arc<dyn PeerConnection>,
    answerer: Arc<dyn PeerConnection>,
    sender: Arc<dyn DataChannel>,
    receiver: Arc<dyn DataChannel>,
}

impl Pair {
    async fn connect() -> anyhow::Result<Pair> {
        let runtime = webrtc::runtime::default_runtime().context("no webrtc runtime")?;
        let (offerer, mut offer_gathered, _) = peer(&runtime).await?;
        let (answerer, mut answer_gathered, mut remote_channels) = peer(&runtime).await?;

        let sender = offerer
            .create_data_channel(
                "bulk",
                Some(RTCDataChannelInit {
                    ordered: true,
                    ..Default::default()
                }),
            )
            .await?;
        let offer = offerer.create_offer(None).await?;
        offerer.set_local_description(offer).await?;
        offer_gathered.recv().await.context("offerer gathering")?;
        let offer = offerer
            .local_description()
            .await
            .context("offerer has no local description")?;

        answerer.set_remote_description(offer).await?;
        let answer = answerer.create_answer(None).await?;
        answerer.set_local_description(answer).await?;
        answer_gathered.recv().await.context("answerer gathering")?;
        let answer = answerer
            .local_description()
            .await
            .context("answerer has no local description")?;
        offerer.set_remote_description(answer).await?;

        loop {
            match sender.poll().await {
                Some(DataChannelEvent::OnOpen) => break,
                Some(DataChannelEvent::OnClose) | None => anyhow::bail!("channel closed"),
                Some(_) => {}
            }
        }
        let receiver = remote_channels
            .recv()
            .await
            .context("answerer got no channel")?;
        Ok(Pair {
            offerer,
            answerer,
            sender,
            receiver,
        })
    }

    async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.offerer.close().await;
            let _ = self.answerer.close().await;
        })
        .await;
    }
}

type Peer = (
    Arc<dyn PeerConnection>,
    mpsc::Receiver<()>,
    mpsc::Receiver<Arc<dyn DataChannel>>,
);

async fn peer(runtime: &Arc<dyn Runtime>) -> anyhow::Result<Peer> {
    let (gathered_tx, gathered_rx) = mpsc::channel(1);
    let (channel_tx, channel_rx) = mpsc::channel(4);
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_handler(Arc::new(Handler {
            gathered: gathered_tx,
            channels: channel_tx,
        }))
        .with_runtime(Arc::clone(runtime))
        .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
        .build()
        .await?;
    Ok((Arc::new(pc), gathered_rx, channel_rx))
}

struct Handler {
    gathered: mpsc::Sender<()>,
    channels: mpsc::Sender<Arc<dyn DataChannel>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.try_send(());
        }
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        let _ = self.channels.try_send(channel);
    }
}
