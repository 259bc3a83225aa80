//! The driver: one tokio task per peer that owns the sockets, the TURN relays, the signaling
//! link and the [`PeerSession`], and moves bytes and time between them.
//!
//! It `select!`s over handle commands, signals from the [`SignalLink`], socket readiness, the
//! relays, reads of the channels' queues and one timer. After any input it runs
//! [`Driver::flush`]: send every datagram the session produced, pass on every signal, handle
//! every event, until the session produces nothing; only then is the next timeout asked for.
//! A packet produced while handling an event is sent in the same turn.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use proxim_protocol::Signal;
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot, watch};

use super::channel::{
    ChannelSender, ChannelShared, Consumption, DataChannel, PushError, RecvQueue, SEND_LOW_WATER,
};
use super::channels::ChannelId;
use super::gather::LocalSocket;
use super::relay::{RelayEvent, Relays};
use super::session::{LinkEnd, PeerSession, RelayStatus, SessionEvent, Transmit};
use super::{
    ChannelOptions, ConnectionEvent, ConnectionState, ConnectionStats, DEFAULT_CHANNEL, Payload,
    PeerError,
};
use crate::link::{LinkEvent, SignalLink};

/// Batched reads (each up to [`RX_BUFFERS`] buffers) from one socket before the outputs are
/// drained.
const READ_CALLS: usize = 4;
/// Buffers per batched read.
const RX_BUFFERS: usize = if quinn_udp::BATCH_SIZE < 8 {
    quinn_udp::BATCH_SIZE
} else {
    8
};
/// One receive buffer: a datagram, or with GRO several coalesced ones.
const RX_BUFFER: usize = 64 * 1024;
/// Largest GSO send (a UDP payload over IPv4 is at most 65,507 bytes).
const MAX_GSO_BYTES: usize = 65_000;
/// Commands taken from the queue before the outputs are drained.
const COMMAND_BATCH: usize = 256;

/// What handles ask of the driver.
#[derive(Debug)]
pub(super) enum Command {
    Send {
        channel: ChannelId,
        payload: Payload,
        cost: usize,
    },
    CloseChannel {
        channel: ChannelId,
    },
    OpenChannel {
        label: String,
        options: ChannelOptions,
        reply: oneshot::Sender<Result<DataChannel, PeerError>>,
    },
    Stats {
        reply: oneshot::Sender<Result<ConnectionStats, PeerError>>,
    },
    /// The network changed: bind to the addresses there are now (`local_ips`, or the
    /// configured way of finding them) and restart ICE.
    NetworkChanged {
        local_ips: Option<Vec<IpAddr>>,
        reply: oneshot::Sender<Result<(), PeerError>>,
    },
    Close,
}

/// How the driver finds its local addresses again after a network change.
#[derive(Debug, Clone)]
pub(super) struct Binding {
    pub(super) local_ips: Option<Vec<IpAddr>>,
    pub(super) include_loopback: bool,
    pub(super) udp_buffer_bytes: usize,
}

/// The driver's side of one data channel.
#[derive(Debug)]
struct ChannelSlot {
    shared: Arc<ChannelShared>,
    queue: Arc<RecvQueue>,
}

/// Everything the driver needs from `establish`.
#[derive(Debug)]
pub(super) struct DriverParts {
    pub(super) link: SignalLink,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    pub(super) command_sender: mpsc::WeakUnboundedSender<Command>,
    pub(super) state: watch::Sender<ConnectionState>,
    pub(super) events: mpsc::UnboundedSender<ConnectionEvent>,
    pub(super) ready: oneshot::Sender<Result<DataChannel, PeerError>>,
    pub(super) sockets: Vec<LocalSocket>,
    pub(super) binding: Binding,
    pub(super) relays: Relays,
    pub(super) pending_dns: Option<oneshot::Receiver<Vec<(String, SocketAddr)>>>,
    pub(super) ended: Arc<OnceLock<String>>,
}

pub(super) struct Driver {
    session: PeerSession,
    sockets: Vec<LocalSocket>,
    binding: Binding,
    next_socket: usize,
    relays: Relays,
    pending_dns: Option<oneshot::Receiver<Vec<(String, SocketAddr)>>>,
    link: SignalLink,
    link_open: bool,
    commands: mpsc::UnboundedReceiver<Command>,
    command_sender: mpsc::WeakUnboundedSender<Command>,
    state_tx: watch::Sender<ConnectionState>,
    events: mpsc::UnboundedSender<ConnectionEvent>,
    ready: Option<oneshot::Sender<Result<DataChannel, PeerError>>>,
    channels: HashMap<ChannelId, ChannelSlot>,
    opening: HashMap<ChannelId, oneshot::Sender<Result<DataChannel, PeerError>>>,
    consumption: Arc<Consumption>,
    /// Receive buffers for batched reads, allocated once.
    rx_area: Vec<u8>,
    rx_meta: Vec<quinn_udp::RecvMeta>,
    /// Datagrams produced in this turn, sent by [`Self::send_outgoing`].
    outgoing: Vec<Transmit>,
    /// Where a GSO batch is assembled.
    gso_buf: Vec<u8>,
    /// Set once the session ended, with the reason given to the app.
    stop: Option<String>,
    /// The same reason, for [`super::PeerConnection::end_reason`], set before the channels
    /// close (so a send or receive that fails because of it can say why).
    ended: Arc<OnceLock<String>>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("state", &self.session.state())
            .field("sockets", &self.sockets.len())
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

impl Driver {
    pub(super) fn new(session: PeerSession, parts: DriverParts) -> Self {
        Driver {
            session,
            sockets: parts.sockets,
            binding: parts.binding,
            next_socket: 0,
            relays: parts.relays,
            pending_dns: parts.pending_dns,
            link: parts.link,
            link_open: true,
            commands: parts.commands,
            command_sender: parts.command_sender,
            state_tx: parts.state,
            ended: parts.ended,
            events: parts.events,
            ready: Some(parts.ready),
            channels: HashMap::new(),
            opening: HashMap::new(),
            consumption: Arc::new(Consumption::default()),
            rx_area: Vec::new(),
            rx_meta: vec![quinn_udp::RecvMeta::default(); RX_BUFFERS],
            outgoing: Vec::new(),
            gso_buf: Vec::new(),
            stop: None,
        }
    }

    /// Run until closed, failed, or every handle is dropped.
    pub(super) async fn run(mut self) {
        loop {
            self.flush().await;
            if self.stop.is_some() {
                break;
            }
            let now = Instant::now();
            let (deadline, why) = self
                .session
                .poll_timeout()
                .unwrap_or((now + Duration::from_secs(3600), "idle"));
            // A deadline already due (a check to send now, a packet the pacer just allowed) is
            // handled at once: the runtime's timer has a 1 ms granularity.
            if deadline <= now {
                self.session.handle_timeout(now);
                continue;
            }
            let relay_deadline = self.relays.poll_timeout();
            let deadline = relay_deadline.map_or(deadline, |r| deadline.min(r));
            tracing::trace!(
                in_ms = deadline.saturating_duration_since(now).as_millis() as u64,
                why,
                "waiting"
            );
            let start = self.next_socket;
            let sockets = &self.sockets;
            let consumption = self.consumption.clone();
            // Not `biased`: a steady stream of commands must not starve socket reads (acks) or
            // the timer, nor the reverse; each branch handles a bounded batch.
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => {
                        self.handle_command(command);
                        for _ in 1..COMMAND_BATCH {
                            match self.commands.try_recv() {
                                Ok(command) => self.handle_command(command),
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        tracing::debug!("every handle was dropped");
                        self.session.close(Instant::now());
                    }
                },
                event = self.link.incoming.recv(), if self.link_open => self.handle_link(event),
                resolved = resolved_names(&mut self.pending_dns), if self.pending_dns.is_some() => {
                    self.pending_dns = None;
                    let sockets: Vec<SocketAddr> = self.sockets.iter().map(|s| s.addr).collect();
                    self.session.add_stun_servers(Instant::now(), &sockets, &resolved);
                }
                input = self.relays.recv() => {
                    if let Some(input) = input {
                        self.relays.handle_input(input, Instant::now());
                    }
                }
                () = consumption.notify.notified() => self.report_consumption(),
                index = poll_fn(|cx| poll_readable(sockets, start, cx)) => {
                    self.next_socket = (index + 1) % self.sockets.len().max(1);
                    self.read_batch(index);
                },
                () = tokio::time::sleep_until(deadline.into()) => {
                    let now = Instant::now();
                    self.relays.handle_timeout(now);
                    self.session.handle_timeout(now);
                }
            }
        }
        self.shutdown().await;
    }

    // -----------------------------------------------------------------------------------------
    // Inputs
    // -----------------------------------------------------------------------------------------

    fn handle_link(&mut self, event: Option<LinkEvent>) {
        let now = Instant::now();
        match event {
            Some(LinkEvent::Signal(signal)) => self.session.handle_signal(now, signal),
            Some(LinkEvent::Ended(reason)) => {
                tracing::debug!(?reason, "signaling session ended");
                self.link_open = false;
                self.session.link_ended(now, LinkEnd::PeerLeft);
            }
            Some(LinkEvent::Lost) | None => {
                self.link_open = false;
                self.session.link_ended(now, LinkEnd::Lost);
            }
            Some(LinkEvent::Interrupted) => self.session.signaling_interrupted(now),
            Some(LinkEvent::Resumed) => self.session.signaling_resumed(now),
            Some(LinkEvent::PeerRestarted) => self.session.peer_restarted(now),
            Some(LinkEvent::IceServers(servers)) => {
                // Relays allocated from now on use the fresh credentials; one that failed
                // (say, allocating again after a network change with expired credentials)
                // tries again with them.
                let servers = crate::turn::TurnServer::from_ice_servers(&servers);
                if self.relays.update_servers(servers, now) {
                    self.session.update_relays(now, self.relay_status());
                }
            }
        }
    }

    fn handle_command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Send {
                channel,
                payload,
                cost,
            } => {
                if let Some(slot) = self.channels.get(&channel) {
                    slot.shared.queued.fetch_sub(cost, Ordering::AcqRel);
                }
                if let Err(e) = self.session.send(now, channel, payload) {
                    tracing::debug!(channel, error = %e, "send refused");
                    if matches!(e, PeerError::ChannelClosed | PeerError::Closed)
                        && let Some(slot) = self.channels.get(&channel)
                    {
                        slot.shared.mark_closed();
                    }
                }
            }
            // Closing: nothing more is accepted, what was accepted is still delivered: the
            // stream reset follows the data.
            Command::CloseChannel { channel } => self.session.close_channel(now, channel),
            Command::OpenChannel {
                label,
                options,
                reply,
            } => {
                let id = self.session.open_channel(now, label, options);
                self.opening.insert(id, reply);
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.session.stats());
            }
            Command::NetworkChanged { local_ips, reply } => {
                if local_ips.is_some() {
                    self.binding.local_ips = local_ips;
                }
                let _ = reply.send(self.network_changed(now));
            }
            // `PeerConnection::close` waits for the driver to end (its state sender is dropped).
            Command::Close => {
                for slot in self.channels.values() {
                    slot.shared.mark_closed();
                }
                self.session.close(now);
            }
        }
    }

    /// Bind to the local addresses there are now (keeping the sockets of those that stay) and
    /// restart ICE over them.
    fn network_changed(&mut self, now: Instant) -> Result<(), PeerError> {
        let ips = match &self.binding.local_ips {
            Some(ips) => ips.clone(),
            None => super::gather::local_ips(self.binding.include_loopback),
        };
        let before = self.sockets.len();
        self.sockets.retain(|s| ips.contains(&s.addr.ip()));
        let kept = self.sockets.len();
        for ip in ips {
            if self.sockets.iter().any(|s| s.addr.ip() == ip) {
                continue;
            }
            match super::gather::bind_udp(ip, self.binding.udp_buffer_bytes) {
                Ok(socket) => self.sockets.push(socket),
                Err(e) => tracing::debug!(%ip, error = %e, "cannot bind"),
            }
        }
        self.next_socket = 0;
        let addrs: Vec<SocketAddr> = self.sockets.iter().map(|s| s.addr).collect();
        tracing::info!(
            gone = before - kept,
            new = addrs.len() - kept,
            sockets = ?addrs,
            "network changed"
        );
        if !self.relays.is_empty() {
            // Relays reached from an address that went away are allocated again from the new
            // network; their relayed addresses are no candidates any more.
            let gone = self.relays.rebase(addrs.clone(), now);
            self.session.relays_gone(&gone);
            self.session.update_relays(now, self.relay_status());
        }
        if self.session.network_changed(now, &addrs) {
            Ok(())
        } else if self.session.state() == ConnectionState::Connected
            || self.session.state() == ConnectionState::Disconnected
        {
            Err(PeerError::NoSignaling)
        } else {
            Err(PeerError::NotConnected)
        }
    }

    /// Give what the application read back to SCTP's receive window.
    fn report_consumption(&mut self) {
        let (bytes, messages) = self.consumption.take();
        if messages > 0 {
            self.session.consumed(bytes, messages);
        }
    }

    /// Read what the socket holds: up to [`READ_CALLS`] batched reads (`recvmmsg`, with GRO
    /// several datagrams per buffer), each datagram handed on as it is split off.
    fn read_batch(&mut self, index: usize) {
        let Some(local) = self.sockets.get(index).map(|s| s.addr) else {
            return;
        };
        let mut area = std::mem::take(&mut self.rx_area);
        if area.len() < RX_BUFFERS * RX_BUFFER {
            area = vec![0; RX_BUFFERS * RX_BUFFER];
        }
        let now = Instant::now();
        for _ in 0..READ_CALLS {
            let result = {
                let socket = &self.sockets[index];
                let mut iovs: Vec<IoSliceMut<'_>> =
                    area.chunks_mut(RX_BUFFER).map(IoSliceMut::new).collect();
                socket.socket.try_io(Interest::READABLE, || {
                    socket
                        .state
                        .recv((&socket.socket).into(), &mut iovs, &mut self.rx_meta)
                })
            };
            let received = match result {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP errors (port unreachable) surface here on some systems; not fatal.
                    tracing::trace!(error = %e, %local, "recv error");
                    continue;
                }
            };
            for k in 0..received {
                let meta = self.rx_meta[k];
                let Some(data) = area.get(k * RX_BUFFER..k * RX_BUFFER + meta.len) else {
                    continue;
                };
                // With GRO one buffer holds several datagrams of `stride` bytes (the last may
                // be shorter).
                for datagram in data.chunks(meta.stride.max(1)) {
                    self.take_datagram(now, local, meta.addr, BytesMut::from(datagram));
                }
            }
            if received < RX_BUFFERS {
                break;
            }
        }
        self.rx_area = area;
    }

    /// One datagram from a socket: TURN messages for the relays (what peers sent through them
    /// comes back with the relayed address as `local`), the rest to the session.
    fn take_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        packet: BytesMut,
    ) {
        match self.relays.handle_udp(local, from, packet, now) {
            Ok(()) => self.take_relayed(now),
            Err(packet) => self.session.handle_datagram(now, local, from, packet),
        }
    }

    fn take_relayed(&mut self, now: Instant) {
        for (relayed, peer, packet) in self.relays.take_received() {
            self.session.handle_datagram(now, relayed, peer, packet);
        }
    }

    fn relay_status(&self) -> RelayStatus {
        RelayStatus {
            gathering_done: self.relays.gathering_done(),
            any_ready: self.relays.any_ready(),
            failures: self.relays.failures(),
        }
    }

    /// Move what the relays did into the session, and send what they queued over UDP.
    async fn pump_relays(&mut self) -> bool {
        if self.relays.is_empty() {
            return false;
        }
        let now = Instant::now();
        let mut progressed = false;
        for event in self.relays.take_events() {
            progressed = true;
            match event {
                RelayEvent::Candidate { url, relayed, base } => {
                    let transport = self
                        .relays
                        .transport_of(relayed)
                        .unwrap_or(crate::turn::TurnTransport::Udp);
                    tracing::debug!(%url, %relayed, "relay candidate");
                    self.session
                        .add_relay_candidate(now, relayed, base, transport);
                }
                RelayEvent::Failed => {}
            }
        }
        if progressed {
            self.session.update_relays(now, self.relay_status());
        }
        let transmits = self.relays.take_udp_transmits();
        if !transmits.is_empty() {
            progressed = true;
            self.outgoing
                .extend(transmits.into_iter().map(|t| Transmit {
                    local: t.from,
                    to: t.to,
                    data: t.data,
                }));
            self.send_outgoing().await;
        }
        let received = self.relays.take_received();
        for (relayed, peer, packet) in received {
            progressed = true;
            self.session.handle_datagram(now, relayed, peer, packet);
        }
        progressed
    }

    // -----------------------------------------------------------------------------------------
    // The run-loop rule: drain everything after every input
    // -----------------------------------------------------------------------------------------

    async fn flush(&mut self) {
        loop {
            let mut progressed = false;
            let now = Instant::now();
            while let Some(t) = self.session.poll_transmit(now) {
                self.outgoing.push(t);
            }
            if !self.outgoing.is_empty() {
                progressed = true;
                self.send_outgoing().await;
            }
            while let Some(signal) = self.session.poll_signal() {
                progressed = true;
                self.signal(signal);
            }
            while let Some(event) = self.session.poll_event() {
                progressed = true;
                self.handle_event(event);
            }
            if self.pump_relays().await {
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        self.update_send_accounting();
    }

    fn handle_event(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::StateChanged { old, new } => {
                self.state_tx.send_replace(new);
                let _ = self.events.send(ConnectionEvent::StateChanged { old, new });
            }
            SessionEvent::Ready { channel } => {
                let handle = self.add_slot(
                    channel,
                    DEFAULT_CHANNEL.to_owned(),
                    ChannelOptions::default(),
                );
                if let (Some(ready), Some(handle)) = (self.ready.take(), handle) {
                    let _ = ready.send(Ok(handle));
                }
            }
            SessionEvent::ChannelOpened {
                channel,
                label,
                options,
                by_peer,
            } => {
                let Some(handle) = self.add_slot(channel, label, options) else {
                    return;
                };
                if by_peer {
                    let _ = self.events.send(ConnectionEvent::ChannelOpened(handle));
                } else if let Some(reply) = self.opening.remove(&channel) {
                    let _ = reply.send(Ok(handle));
                }
            }
            SessionEvent::ChannelOpenFailed { channel, error } => {
                if let Some(reply) = self.opening.remove(&channel) {
                    let _ = reply.send(Err(error));
                }
            }
            SessionEvent::Message {
                channel,
                payload,
                charge,
            } => {
                let pushed = self
                    .channels
                    .get(&channel)
                    .map(|slot| slot.queue.push(payload, charge));
                if !matches!(pushed, Some(Ok(()))) {
                    // Nobody reads this channel: give the bytes back to the window.
                    let _: Option<Result<(), PushError>> = pushed;
                    self.session.consumed(charge, 1);
                }
            }
            SessionEvent::ChannelClosed { channel } => {
                if let Some(slot) = self.channels.remove(&channel) {
                    tracing::debug!(channel, label = %slot.shared.label, "data channel closed");
                    slot.shared.mark_closed();
                    slot.queue.close();
                }
                if let Some(reply) = self.opening.remove(&channel) {
                    let _ = reply.send(Err(PeerError::ChannelClosed));
                }
            }
            SessionEvent::PathChanged(stats) => {
                let _ = self.events.send(ConnectionEvent::PathChanged(stats));
            }
            SessionEvent::Reconnecting {
                attempt,
                since,
                reason,
            } => {
                let _ = self.events.send(ConnectionEvent::Reconnecting {
                    attempt,
                    since,
                    reason,
                });
            }
            SessionEvent::Failed(error) => {
                let reason = error.to_string();
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Err(error));
                }
                self.stop = Some(reason);
            }
            SessionEvent::Closed { reason } => self.stop = Some(reason),
        }
    }

    /// A new channel slot and its handle.
    fn add_slot(
        &mut self,
        id: ChannelId,
        label: String,
        options: ChannelOptions,
    ) -> Option<DataChannel> {
        let commands = self.command_sender.upgrade()?;
        let shared = Arc::new(ChannelShared::new(
            id,
            label,
            options,
            self.session.max_message_size(),
        ));
        let queue = Arc::new(RecvQueue::new(self.consumption.clone()));
        self.channels.insert(
            id,
            ChannelSlot {
                shared: shared.clone(),
                queue: queue.clone(),
            },
        );
        Some(DataChannel::new(
            ChannelSender::new(shared, commands),
            queue,
        ))
    }

    fn signal(&mut self, signal: Signal) {
        if !self.link_open {
            return;
        }
        match self.link.outgoing.try_send(signal) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(signal)) => {
                tracing::warn!(kind = ?signal_kind(&signal), "signal queue full; signal dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!("signal link closed");
            }
        }
    }

    /// Publish how much each channel holds and wake senders below the low-water mark.
    fn update_send_accounting(&mut self) {
        for (id, slot) in &self.channels {
            let outstanding = self.session.buffered_amount(*id);
            slot.shared
                .outstanding
                .store(outstanding, Ordering::Release);
            if slot.shared.buffered() <= SEND_LOW_WATER {
                slot.shared.writable.notify_waiters();
            }
        }
    }

    /// Send the datagrams in [`Self::outgoing`], in order. Runs of datagrams on the same path
    /// with the same size (the last may be shorter) go out as one GSO send where the OS has it
    /// (one system call for up to 64 KiB), otherwise one by one.
    async fn send_outgoing(&mut self) {
        let packets = std::mem::take(&mut self.outgoing);
        let mut gso = std::mem::take(&mut self.gso_buf);
        let mut i = 0;
        let now = Instant::now();
        while let Some(first) = packets.get(i) {
            let from = first.local;
            let to = first.to;
            if self.relays.owns(from) {
                self.relays.send(from, to, &first.data, now);
                i += 1;
                continue;
            }
            let Some(socket) = self.sockets.iter().find(|s| s.addr == from) else {
                tracing::debug!(%from, %to, "packet for an unknown local address dropped");
                i += 1;
                continue;
            };
            let segment = first.data.len();
            let max_segments = socket.state.max_gso_segments();
            let mut end = i + 1;
            let mut total = segment;
            while let Some(next) = packets.get(end) {
                let len = next.data.len();
                if segment == 0
                    || end - i >= max_segments
                    || next.local != from
                    || next.to != to
                    || len > segment
                    || total + len > MAX_GSO_BYTES
                {
                    break;
                }
                total += len;
                end += 1;
                if len < segment {
                    break;
                }
            }
            let (contents, segment_size): (&[u8], _) = if end - i == 1 {
                (&first.data, None)
            } else {
                gso.clear();
                for p in &packets[i..end] {
                    gso.extend_from_slice(&p.data);
                }
                (&gso, Some(segment))
            };
            send_datagrams(socket, to, contents, segment_size).await;
            i = end;
        }
        self.gso_buf = gso;
        self.outgoing = packets;
        self.outgoing.clear();
    }

    /// The session ended: flush its last packets, release the relays, tell the app.
    async fn shutdown(&mut self) {
        let reason = self.stop.clone().unwrap_or_else(|| "closed".to_owned());
        let _ = self.ended.set(reason.clone());
        let stats = self.session.stats().ok().map(Box::new);
        let now = Instant::now();
        while let Some(t) = self.session.poll_transmit(now) {
            self.outgoing.push(t);
        }
        self.send_outgoing().await;
        while let Some(event) = self.session.poll_event() {
            self.handle_event(event);
        }
        // Give the allocations back (over a stream, the writer task sends it and ends).
        self.relays.release_all(now);
        for t in self.relays.take_udp_transmits() {
            if let Some(socket) = self.sockets.iter().find(|s| s.addr == t.from) {
                send_datagrams(socket, t.to, &t.data, None).await;
            }
        }
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(PeerError::Closed));
        }
        for (_, reply) in self.opening.drain() {
            let _ = reply.send(Err(PeerError::Closed));
        }
        let _ = self.events.send(ConnectionEvent::Closed { reason, stats });
        // Undelivered messages stay readable: the queues outlive the driver.
        for slot in self.channels.values() {
            slot.shared.mark_closed();
            slot.queue.close();
        }
        self.sockets.clear();
    }
}

fn signal_kind(signal: &Signal) -> &'static str {
    match signal {
        Signal::Offer { .. } => "offer",
        Signal::Answer { .. } => "answer",
        Signal::Candidate { .. } => "candidate",
        Signal::EndOfCandidates => "end_of_candidates",
        _ => "other",
    }
}

/// Ready when any socket has something to read; starts at `start` for fairness.
fn poll_readable(
    sockets: &[LocalSocket],
    start: usize,
    cx: &mut std::task::Context<'_>,
) -> Poll<usize> {
    let n = sockets.len();
    for i in 0..n {
        let index = (start + i) % n;
        if sockets[index].socket.poll_recv_ready(cx).is_ready() {
            return Poll::Ready(index);
        }
    }
    Poll::Pending
}

/// One send: a datagram, or with `segment_size` several of that size in one GSO buffer. Waits
/// (bounded: the buffer drains at line rate) while the kernel buffer is full.
async fn send_datagrams(
    socket: &LocalSocket,
    to: SocketAddr,
    contents: &[u8],
    segment_size: Option<usize>,
) {
    let transmit = quinn_udp::Transmit {
        destination: to,
        ecn: None,
        contents,
        segment_size,
        src_ip: None,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let sent = socket.socket.try_io(Interest::WRITABLE, || {
            socket.state.try_send((&socket.socket).into(), &transmit)
        });
        match sent {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if tokio::time::timeout_at(deadline, socket.socket.writable())
                    .await
                    .is_err()
                {
                    tracing::debug!(%to, "packets dropped: socket stayed full");
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, %to, "send failed");
                return;
            }
        }
    }
}

async fn resolved_names(
    pending: &mut Option<oneshot::Receiver<Vec<(String, SocketAddr)>>>,
) -> Vec<(String, SocketAddr)> {
    match pending {
        Some(rx) => rx.await.unwrap_or_default(),
        None => std::future::pending().await,
    }
}
