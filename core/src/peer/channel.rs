//! Data channel handles: [`DataChannel`] (owns the receive queue) and [`ChannelSender`].
//!
//! # Back-pressure
//! Sending: every channel counts the bytes it has accepted and that SCTP has not yet released
//! (acknowledged or abandoned) — the bytes still in the command queue to the driver plus what
//! SCTP holds for the channel. `send` waits while that count is above [`SEND_HIGH_WATER`] and
//! resumes once the driver reports it below [`SEND_LOW_WATER`]. Memory on the sending side is
//! therefore bounded by about one high-water mark per channel.
//!
//! Receiving: what arrives waits in the channel's queue until the application reads it, and
//! counts against the connection's SCTP receive window ([`RECV_QUEUE_BYTES`], each message
//! charged 64 bytes more so floods of tiny messages are bounded too). When the application
//! does not read, the window closes, the peer's SCTP stops sending and the peer's `send` waits.
//! Reading reopens it. Nothing is dropped and memory stays bounded.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, mpsc};

use super::channels::ChannelId;
use super::driver::Command;
use super::{ChannelOptions, Payload, PeerError};

/// `send` waits while more than this many bytes are buffered on a channel: 4 MiB, enough to
/// keep 160 Mbit/s in flight over a 200 ms round trip.
pub const SEND_HIGH_WATER: usize = 4 * 1024 * 1024;
/// Waiting senders resume once the buffered bytes fall to this.
pub const SEND_LOW_WATER: usize = 2 * 1024 * 1024;
/// The most received and unread data one connection holds (its SCTP receive window); past it
/// the peer's sends wait.
pub const RECV_QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// Bytes charged per message on top of its payload, so floods of tiny messages are bounded too.
pub(super) const MESSAGE_OVERHEAD: usize = 64;

/// State shared by a channel's handles and the driver.
#[derive(Debug)]
pub(super) struct ChannelShared {
    /// The session's id of the channel.
    pub(super) id: ChannelId,
    pub(super) label: String,
    pub(super) options: ChannelOptions,
    /// Bytes sent by handles that the driver has not yet handed to rtc.
    pub(super) queued: AtomicUsize,
    /// Bytes SCTP holds for this channel (sent, not acknowledged), updated by the driver.
    pub(super) outstanding: AtomicUsize,
    /// The largest message the connection accepts.
    pub(super) max_message_size: AtomicUsize,
    pub(super) closed: AtomicBool,
    /// Woken when the buffered amount falls below the low-water mark, or on close.
    pub(super) writable: Notify,
}

impl ChannelShared {
    pub(super) fn new(
        id: ChannelId,
        label: String,
        options: ChannelOptions,
        max_message_size: usize,
    ) -> Self {
        ChannelShared {
            id,
            label,
            options,
            queued: AtomicUsize::new(0),
            outstanding: AtomicUsize::new(0),
            max_message_size: AtomicUsize::new(max_message_size),
            closed: AtomicBool::new(false),
            writable: Notify::new(),
        }
    }

    /// Bytes accepted by `send` and not yet released by SCTP.
    pub(super) fn buffered(&self) -> usize {
        self.queued.load(Ordering::Acquire) + self.outstanding.load(Ordering::Acquire)
    }

    /// Mark closed and wake every waiting sender.
    pub(super) fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
        self.writable.notify_waiters();
    }
}

/// A cheap, cloneable handle that sends on one data channel.
#[derive(Debug, Clone)]
pub struct ChannelSender {
    shared: Arc<ChannelShared>,
    commands: mpsc::UnboundedSender<Command>,
}

impl ChannelSender {
    pub(super) fn new(
        shared: Arc<ChannelShared>,
        commands: mpsc::UnboundedSender<Command>,
    ) -> Self {
        ChannelSender { shared, commands }
    }

    /// Send one message. Waits while the channel's buffered amount is above the high-water mark
    /// (see the module docs); fails once the channel or connection is closed, or when the
    /// message is larger than the connection's maximum message size.
    pub async fn send(&self, payload: Payload) -> Result<(), PeerError> {
        let len = payload.len();
        let max = self.shared.max_message_size.load(Ordering::Relaxed);
        if len > max {
            return Err(PeerError::MessageTooLarge { size: len, max });
        }
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(PeerError::ChannelClosed);
            }
            if self.shared.buffered() < SEND_HIGH_WATER {
                break;
            }
            let notified = self.shared.writable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(PeerError::ChannelClosed);
            }
            if self.shared.buffered() < SEND_HIGH_WATER {
                break;
            }
            notified.await;
        }
        let cost = len + MESSAGE_OVERHEAD;
        self.shared.queued.fetch_add(cost, Ordering::AcqRel);
        self.commands
            .send(Command::Send {
                channel: self.shared.id,
                payload,
                cost,
            })
            .map_err(|_| {
                self.shared.queued.fetch_sub(cost, Ordering::AcqRel);
                PeerError::Closed
            })
    }

    /// Bytes accepted by `send` that SCTP has not released yet.
    pub fn buffered_amount(&self) -> usize {
        self.shared.buffered()
    }

    /// Close the channel; see [`DataChannel::close`]. Not async: it can run in `Drop`.
    pub fn close(&self) {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.writable.notify_waiters();
        let _ = self.commands.send(Command::CloseChannel {
            channel: self.shared.id,
        });
    }
}

/// One data channel: send with back-pressure, receive from its own bounded queue.
#[derive(Debug)]
pub struct DataChannel {
    sender: ChannelSender,
    incoming: Arc<RecvQueue>,
}

impl Drop for DataChannel {
    fn drop(&mut self) {
        // Nobody reads any more: what waits (and whatever comes) is given back to the window.
        let mut inner = self.incoming.lock();
        inner.reader_gone = true;
        let (bytes, messages) = inner
            .queue
            .drain(..)
            .fold((0, 0), |(b, m), (_, charge)| (b + charge, m + 1));
        inner.bytes = 0;
        drop(inner);
        self.incoming.consumed_many(bytes, messages);
    }
}

impl DataChannel {
    pub(super) fn new(sender: ChannelSender, incoming: Arc<RecvQueue>) -> Self {
        DataChannel { sender, incoming }
    }

    /// The channel's label.
    pub fn label(&self) -> &str {
        &self.sender.shared.label
    }

    /// The channel's delivery options.
    pub fn options(&self) -> &ChannelOptions {
        &self.sender.shared.options
    }

    /// Send one message, waiting while too much is buffered. See [`ChannelSender::send`].
    pub async fn send(&self, payload: Payload) -> Result<(), PeerError> {
        self.sender.send(payload).await
    }

    /// The next message; `None` once the channel is closed and every message was read.
    pub async fn recv(&mut self) -> Option<Payload> {
        loop {
            {
                let mut inner = self.incoming.lock();
                if let Some((payload, charge)) = inner.queue.pop_front() {
                    inner.bytes -= payload.len();
                    drop(inner);
                    self.incoming.consumed(charge);
                    return Some(payload);
                }
                if inner.closed {
                    return None;
                }
            }
            // `notify_one` keeps a permit when nobody waits: no wake-up is lost in between.
            self.incoming.readable.notified().await;
        }
    }

    /// A cloneable sender for this channel, to send from other tasks.
    pub fn sender(&self) -> ChannelSender {
        self.sender.clone()
    }

    /// Bytes accepted by `send` that SCTP has not released yet.
    pub fn buffered_amount(&self) -> usize {
        self.sender.buffered_amount()
    }

    /// Whether the channel is closed (messages may still wait in the queue).
    pub fn is_closed(&self) -> bool {
        self.sender.shared.closed.load(Ordering::Acquire)
    }

    /// Close the channel (both directions). Idempotent; received messages can still be read.
    ///
    /// The channel is closing from now on: `send` fails with [`PeerError::ChannelClosed`], but
    /// what was sent before is still delivered. It closes once SCTP has released all of it
    /// (acknowledged), or after 10 s or when the connection ends, whichever comes first; the
    /// other side reads every message, then `recv` gives `None`.
    pub async fn close(&self) {
        self.sender.close();
    }
}

/// A channel's receive queue. One reader (the [`DataChannel`]), one writer (the driver). Its
/// size is bounded by the connection's SCTP receive window: every message read is reported back
/// (through [`Consumption`]) so the window reopens.
#[derive(Debug)]
pub(super) struct RecvQueue {
    inner: Mutex<RecvInner>,
    /// Woken when a message is pushed or the queue closes.
    readable: Notify,
    /// Where reads are reported, shared by the connection's channels.
    consumption: Arc<Consumption>,
}

#[derive(Debug, Default)]
pub(super) struct RecvInner {
    /// Messages and their charges against the receive window.
    queue: VecDeque<(Payload, usize)>,
    bytes: usize,
    closed: bool,
    reader_gone: bool,
}

/// What the application read and the driver has not given back to SCTP yet.
#[derive(Debug, Default)]
pub(super) struct Consumption {
    bytes: AtomicUsize,
    messages: AtomicUsize,
    /// Woken on every read: the driver reports it.
    pub(super) notify: Notify,
}

impl Consumption {
    /// Take what was read since the last call: `(bytes, messages)`.
    pub(super) fn take(&self) -> (usize, usize) {
        (
            self.bytes.swap(0, Ordering::AcqRel),
            self.messages.swap(0, Ordering::AcqRel),
        )
    }
}

/// Why [`RecvQueue::push`] did not take a message.
#[derive(Debug)]
pub(super) enum PushError {
    /// Nobody will read it.
    Gone,
}

impl RecvQueue {
    pub(super) fn new(consumption: Arc<Consumption>) -> Self {
        RecvQueue {
            inner: Mutex::default(),
            readable: Notify::new(),
            consumption,
        }
    }

    fn lock(&self) -> MutexGuard<'_, RecvInner> {
        // A panic while holding this lock leaves the queue consistent (push/pop are atomic).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn consumed(&self, charge: usize) {
        self.consumed_many(charge, 1);
    }

    fn consumed_many(&self, bytes: usize, messages: usize) {
        if messages == 0 {
            return;
        }
        self.consumption.bytes.fetch_add(bytes, Ordering::AcqRel);
        self.consumption
            .messages
            .fetch_add(messages, Ordering::AcqRel);
        self.consumption.notify.notify_one();
    }

    /// Append a message with its charge against the receive window.
    pub(super) fn push(&self, payload: Payload, charge: usize) -> Result<(), PushError> {
        let mut inner = self.lock();
        if inner.reader_gone || inner.closed {
            return Err(PushError::Gone);
        }
        inner.bytes += payload.len();
        inner.queue.push_back((payload, charge));
        drop(inner);
        self.readable.notify_one();
        Ok(())
    }

    /// No more messages will come; the reader gets `None` once it has read the rest.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.readable.notify_one();
    }
}
