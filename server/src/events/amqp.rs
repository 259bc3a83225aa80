//! The RabbitMQ sink: events published to a durable queue (default `webrtc_events`) through the
//! default exchange, persistent (delivery mode 2), with publisher confirms.
//!
//! Delivery is at least once: events go out in batches of up to [`WINDOW`], and a batch counts
//! as delivered when the broker confirmed each of its events. When the connection breaks, the
//! events of the batch that were not confirmed are published again on the next connection, so
//! a consumer may see an event twice around a broker restart (deduplicate by `run` and `seq`).
//! While the broker is unreachable the sink reconnects with jittered exponential backoff
//! (250 ms doubling to 30 s) and does not read its queue: the bus keeps offering events, the
//! queue fills up to its buffer, and the newest events past it are dropped and counted. The
//! first batch after a reconnect starts with an `events_dropped` event when any were lost.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::bus::{SinkCounters, SinkState, Stamper};

/// Events published before waiting for their confirms.
const WINDOW: usize = 256;
/// Connecting, opening the channel and declaring the queue may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A batch's confirms may take this long before the connection is given up.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the task needs.
#[derive(Debug)]
pub(super) struct Publisher {
    /// The sink's name (its URL without the password), for logs.
    pub(super) name: String,
    pub(super) url: String,
    pub(super) queue: String,
    pub(super) rx: mpsc::Receiver<Arc<str>>,
    pub(super) counters: Arc<SinkCounters>,
    pub(super) stamper: Arc<Stamper>,
    /// Turns true when the server stops.
    pub(super) stop: watch::Receiver<bool>,
}

/// Start the publisher's task.
pub(super) fn spawn(publisher: Publisher) -> JoinHandle<()> {
    let span = tracing::info_span!("event_sink", sink = %publisher.name);
    tokio::spawn(publisher.run().instrument(span))
}

/// How a connection's publishing ended.
enum Ended {
    /// The bus closed the queue and everything in it was delivered.
    Drained,
    /// The connection failed; reconnect.
    Broken(String),
}

impl Publisher {
    async fn run(mut self) {
        // Events taken from the queue but not confirmed by the broker: published first on the
        // next connection. At most one window.
        let mut unconfirmed: VecDeque<Arc<str>> = VecDeque::new();
        let mut delay = BACKOFF_MIN;
        let mut failures = 0u32;
        loop {
            self.counters.set_state(SinkState::Connecting);
            let connected = tokio::time::timeout(CONNECT_TIMEOUT, self.open()).await;
            let error = match connected {
                Ok(Ok((connection, channel))) => {
                    self.counters.connects.fetch_add(1, Ordering::Relaxed);
                    self.counters.set_state(SinkState::Up);
                    if failures > 0 {
                        tracing::info!(failures, "connected to the broker again");
                    } else {
                        tracing::info!(queue = %self.queue, "connected to the broker");
                    }
                    failures = 0;
                    delay = BACKOFF_MIN;
                    let ended = self.publish(&channel, &mut unconfirmed).await;
                    let _ = connection.close(200, "proxim server stopping".into()).await;
                    match ended {
                        Ended::Drained => {
                            self.counters.set_state(SinkState::Stopped);
                            return;
                        }
                        Ended::Broken(error) => error,
                    }
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no connection within {CONNECT_TIMEOUT:?}"),
            };
            failures += 1;
            self.counters.set_state(SinkState::Down);
            self.counters.set_error(error.clone());
            if failures == 1 {
                tracing::warn!(%error, "event broker unreachable; retrying with backoff, events are buffered");
            } else {
                tracing::debug!(%error, failures, "event broker still unreachable");
            }
            let jittered = delay.mul_f64(rand::rng().random_range(0.5..1.0));
            delay = (delay * 2).min(BACKOFF_MAX);
            let stopped = tokio::select! {
                () = tokio::time::sleep(jittered) => false,
                _ = self.stop.wait_for(|stop| *stop) => true,
            };
            if stopped || *self.stop.borrow() {
                // Down while stopping: what is held cannot go out.
                self.rx.close();
                let mut left = unconfirmed.len() as u64;
                while self.rx.try_recv().is_ok() {
                    left += 1;
                }
                self.counters.lose(left);
                self.counters.set_state(SinkState::Stopped);
                if left > 0 {
                    tracing::warn!(lost = left, "stopping with the event broker unreachable");
                }
                return;
            }
        }
    }

    /// Connect, open a channel with publisher confirms, declare the durable queue.
    async fn open(&self) -> lapin::Result<(Connection, Channel)> {
        let properties =
            ConnectionProperties::default().with_connection_name("proxim-server".into());
        let connection = Connection::connect(&self.url, properties).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok((connection, channel))
    }

    /// Publish until the queue is closed and drained, or the connection fails.
    async fn publish(&mut self, channel: &Channel, unconfirmed: &mut VecDeque<Arc<str>>) -> Ended {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        loop {
            // The batch: what the last connection left unconfirmed, an announcement of
            // drops, then what is queued, up to a window.
            if unconfirmed.is_empty() {
                match self.rx.recv().await {
                    Some(line) => unconfirmed.push_back(line),
                    // Drained; drops since the last announcement still get theirs.
                    None => match self.counters.take_announcement(&self.name, &self.stamper) {
                        Some(line) => unconfirmed.push_back(line),
                        None => return Ended::Drained,
                    },
                }
            }
            if let Some(line) = self.counters.take_announcement(&self.name, &self.stamper) {
                unconfirmed.push_front(line);
            }
            while unconfirmed.len() < WINDOW {
                match self.rx.try_recv() {
                    Ok(line) => unconfirmed.push_back(line),
                    Err(_) => break,
                }
            }
            let mut confirms = Vec::with_capacity(unconfirmed.len());
            for line in unconfirmed.iter() {
                let published = channel
                    .basic_publish(
                        "".into(),
                        self.queue.as_str().into(),
                        BasicPublishOptions::default(),
                        line.as_bytes(),
                        properties.clone(),
                    )
                    .await;
                match published {
                    Ok(confirm) => confirms.push(confirm),
                    Err(e) => return Ended::Broken(e.to_string()),
                }
            }
            let mut acked = 0u64;
            let mut nacked = 0u64;
            for confirm in confirms {
                match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
                    Ok(Ok(Confirmation::Ack(_) | Confirmation::NotRequested)) => acked += 1,
                    Ok(Ok(Confirmation::Nack(_))) => nacked += 1,
                    Ok(Err(e)) => {
                        // Everything from the first unconfirmed event on goes out again.
                        unconfirmed.drain(..(acked + nacked) as usize);
                        self.counters.delivered.fetch_add(acked, Ordering::Relaxed);
                        self.counters.lose(nacked);
                        return Ended::Broken(e.to_string());
                    }
                    Err(_) => {
                        unconfirmed.drain(..(acked + nacked) as usize);
                        self.counters.delivered.fetch_add(acked, Ordering::Relaxed);
                        self.counters.lose(nacked);
                        return Ended::Broken(format!(
                            "no publisher confirm within {CONFIRM_TIMEOUT:?}"
                        ));
                    }
                }
            }
            unconfirmed.clear();
            self.counters.delivered.fetch_add(acked, Ordering::Relaxed);
            if nacked > 0 {
                // The broker refused to take them (e.g. a full queue with a reject policy).
                self.counters.lose(nacked);
                tracing::warn!(nacked, "the broker refused events");
            }
        }
    }
}
