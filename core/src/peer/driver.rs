//! The driver: one tokio task per peer that owns the `RTCPeerConnection` and the UDP sockets.
//!
//! It `select!`s over handle commands, signals from the [`SignalLink`], socket readiness, a
//! stalled receive queue and one timer. After any input it runs [`Driver::flush`]: send every
//! packet rtc produced, handle every event, deliver every message, until rtc produces nothing;
//! only then is the next timeout computed. A packet produced while handling an event is sent in
//! the same turn.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proxim_protocol::{CandidateLine, Sdp, ShortText, Signal};
use rtc::data_channel::RTCDataChannelInit;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{RTCDtlsTransportState, RTCIceCandidateInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot, watch};

use super::channel::{
    ChannelSender, ChannelShared, DataChannel, PushError, RecvQueue, SEND_LOW_WATER,
};
use super::gather::{CandidateSource, LocalSocket, SourceOutput};
use super::relay::{RelayEvent, Relays};
use super::stats::{Counters, collect_stats};
use super::{
    ChannelOptions, ConnectionEvent, ConnectionState, ConnectionStats, DEFAULT_CHANNEL, Payload,
    PeerConfig, PeerError, PeerRole,
};
use crate::auth::AuthMessage;
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
/// While a receive queue is full, data packets are held back up to this many bytes; past it the
/// driver stops reading sockets.
const DEFERRED_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Packets kept while the remote description is not known yet.
const EARLY_PACKETS: usize = 32;
/// Largest message rtc's default SCTP configuration accepts until the remote says otherwise.
const DEFAULT_MAX_MESSAGE_SIZE: usize = 65536;
/// How long a closing channel (or connection) waits for what it already sent to be acknowledged
/// before it closes anyway.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after the last candidate change, with both sides done gathering and not a packet
/// from the peer, the connection is given up: every pair's checks have stopped by then.
const NO_ANSWER_GIVE_UP: Duration = Duration::from_secs(3);
/// How many times a locally opened channel is created again when it closed before it opened
/// (see [`Driver::reopen`]).
const OPEN_ATTEMPTS: u32 = 8;

/// What handles ask of the driver.
#[derive(Debug)]
pub(super) enum Command {
    Send {
        channel: usize,
        payload: Payload,
        cost: usize,
    },
    CloseChannel {
        channel: usize,
    },
    OpenChannel {
        label: String,
        options: ChannelOptions,
        reply: oneshot::Sender<Result<DataChannel, PeerError>>,
    },
    Stats {
        reply: oneshot::Sender<Result<ConnectionStats, PeerError>>,
    },
    Close,
}

/// The driver's side of one data channel.
#[derive(Debug)]
struct ChannelSlot {
    shared: Arc<ChannelShared>,
    /// The handle's receive queue.
    queue: Arc<RecvQueue>,
    /// Whether the handle was given out (it is, once).
    handed_out: bool,
    /// Messages decoded while the queue was full, in order. Bounded by what the peer may have
    /// in flight (its SCTP window) plus one read batch.
    overflow: VecDeque<Payload>,
    /// `open_channel` waiting for the channel to open.
    reply: Option<oneshot::Sender<Result<DataChannel, PeerError>>>,
    /// How many times this channel was created (see [`Driver::reopen`]).
    open_attempts: u32,
    open: bool,
    /// The app asked to close: the channel closes once SCTP has released everything it was
    /// given, or at this deadline.
    close_by: Option<Instant>,
    closing: bool,
}

/// Everything the driver needs from `establish`.
#[derive(Debug)]
pub(super) struct DriverParts {
    pub(super) config: PeerConfig,
    pub(super) link: SignalLink,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    pub(super) command_sender: mpsc::WeakUnboundedSender<Command>,
    pub(super) state: watch::Sender<ConnectionState>,
    pub(super) events: mpsc::UnboundedSender<ConnectionEvent>,
    pub(super) ready: oneshot::Sender<Result<DataChannel, PeerError>>,
}

pub(super) struct Driver {
    role: PeerRole,
    pc: RTCPeerConnection,
    sockets: Vec<LocalSocket>,
    next_socket: usize,
    sources: Vec<CandidateSource>,
    /// TURN relays: they outlive gathering (the relayed path runs through them).
    relays: Relays,
    /// Relay candidates only (iceTransportPolicy `relay`).
    force_relay: bool,
    /// The authenticated DTLS fingerprint of the other side, checked against its SDP.
    expected_remote_fingerprint: Option<crate::auth::Fingerprint>,
    /// STUN server names being resolved.
    pending_dns: Option<oneshot::Receiver<Vec<(String, SocketAddr)>>>,
    stun_timeout: Duration,
    end_of_candidates_sent: bool,
    /// The peer sent end-of-candidates.
    remote_gathering_done: bool,
    /// The last time a local or remote candidate (or end-of-candidates) arrived.
    last_candidate_change: Instant,
    /// Whether any packet from the peer reached rtc (a check, an answer to one, data).
    heard_from_peer: bool,
    link: SignalLink,
    link_open: bool,
    remote_description_set: bool,
    early_candidates: Vec<RTCIceCandidateInit>,
    commands: mpsc::UnboundedReceiver<Command>,
    command_sender: mpsc::WeakUnboundedSender<Command>,
    state: ConnectionState,
    state_tx: watch::Sender<ConnectionState>,
    ice_connected: bool,
    events: mpsc::UnboundedSender<ConnectionEvent>,
    ready: Option<oneshot::Sender<Result<DataChannel, PeerError>>>,
    default_channel: Option<usize>,
    channels: HashMap<usize, ChannelSlot>,
    started: Instant,
    connect_timeout: Duration,
    connect_deadline: Instant,
    /// `(local address, from, packet)`; the local address is a socket's or a relayed one.
    deferred: VecDeque<(SocketAddr, SocketAddr, BytesMut)>,
    deferred_bytes: usize,
    /// Connectivity checks that arrived before the remote description (the peer's checks can
    /// overtake its answer); replayed once it is set instead of being refused.
    early_packets: Vec<(SocketAddr, SocketAddr, BytesMut)>,
    /// Receive buffers for batched reads, allocated once.
    rx_area: Vec<u8>,
    rx_meta: Vec<quinn_udp::RecvMeta>,
    /// Packets rtc produced in this turn, sent by [`Self::send_outgoing`].
    outgoing: Vec<TaggedBytesMut>,
    /// Where a GSO batch is assembled.
    gso_buf: Vec<u8>,
    counters: Counters,
    max_message_size: usize,
    /// Set once the driver is to stop, with the reason given to the app.
    stop: Option<String>,
    closed_event_sent: bool,
    /// Run rtc's `handle_timeout` in this turn (see [`Driver::flush`]).
    kick: bool,
    /// The selected pair last reported as [`ConnectionEvent::PathChanged`].
    last_path: Option<(SocketAddr, SocketAddr)>,
    /// `Connection::close` was asked for: the driver stops once every channel's sent data is
    /// acknowledged, or at this deadline.
    close_by: Option<Instant>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("sockets", &self.sockets.len())
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// Build the peer connection and bind the sockets. Fails fast on local problems.
    pub(super) fn new(
        parts: DriverParts,
        pc: RTCPeerConnection,
        sockets: Vec<LocalSocket>,
    ) -> Self {
        let now = Instant::now();
        let addrs: Vec<SocketAddr> = sockets.iter().map(|s| s.addr).collect();
        let force_relay = parts.config.force_relay;
        let mut servers = super::gather::stun_servers(&parts.config.ice_servers);
        if force_relay {
            // No server-reflexive candidates: only relayed ones are offered.
            servers = Default::default();
        }
        let sources =
            CandidateSource::stun(&servers.resolved, &addrs, now, parts.config.stun_timeout);
        let relays = Relays::start(
            crate::turn::TurnServer::from_ice_servers(&parts.config.ice_servers),
            addrs.clone(),
            &crate::turn::TurnOptions {
                extra_roots_pem: parts.config.turn_roots_pem.clone(),
                local_ip: None,
            },
        );
        // Names are resolved off the driver; their sources join when the answer comes.
        let pending_dns = (!servers.by_name.is_empty()).then(|| {
            let (tx, rx) = oneshot::channel();
            let timeout = parts.config.stun_timeout;
            tokio::spawn(async move {
                let _ = tx.send(super::gather::resolve_names(servers.by_name, timeout).await);
            });
            rx
        });
        Driver {
            role: parts.config.role,
            pc,
            sockets,
            next_socket: 0,
            sources,
            relays,
            force_relay,
            expected_remote_fingerprint: parts.config.expected_remote_fingerprint,
            pending_dns,
            stun_timeout: parts.config.stun_timeout,
            end_of_candidates_sent: false,
            remote_gathering_done: false,
            last_candidate_change: now,
            heard_from_peer: false,
            link: parts.link,
            link_open: true,
            remote_description_set: false,
            early_candidates: Vec::new(),
            commands: parts.commands,
            command_sender: parts.command_sender,
            state: ConnectionState::New,
            state_tx: parts.state,
            ice_connected: false,
            events: parts.events,
            ready: Some(parts.ready),
            default_channel: None,
            channels: HashMap::new(),
            started: now,
            connect_timeout: parts.config.connect_timeout,
            connect_deadline: now + parts.config.connect_timeout,
            deferred: VecDeque::new(),
            deferred_bytes: 0,
            early_packets: Vec::new(),
            rx_area: Vec::new(),
            rx_meta: vec![quinn_udp::RecvMeta::default(); RX_BUFFERS],
            outgoing: Vec::new(),
            gso_buf: Vec::new(),
            counters: Counters::default(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            stop: None,
            closed_event_sent: false,
            kick: false,
            last_path: None,
            close_by: None,
        }
    }

    /// Run until closed, failed, or every handle is dropped.
    pub(super) async fn run(mut self) {
        if let Err(e) = self.start() {
            self.fail(e);
        }
        while self.stop.is_none() {
            self.flush().await;
            if self.stop.is_some() {
                break;
            }
            let deadline = self.next_deadline();
            let stalled = self.stalled_queue();
            let read_sockets = self.deferred_bytes < DEFERRED_MAX_BYTES;
            let start = self.next_socket;
            let sockets = &self.sockets;
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
                    None => self.stop_with("every handle was dropped"),
                },
                event = self.link.incoming.recv(), if self.link_open => self.handle_link(event),
                resolved = resolved_names(&mut self.pending_dns), if self.pending_dns.is_some() => {
                    self.pending_dns = None;
                    let sockets: Vec<SocketAddr> = self.sockets.iter().map(|s| s.addr).collect();
                    self.sources.extend(CandidateSource::stun(
                        &resolved,
                        &sockets,
                        Instant::now(),
                        self.stun_timeout,
                    ));
                }
                input = self.relays.recv(), if read_sockets => {
                    if let Some(input) = input {
                        self.relays.handle_input(input, Instant::now());
                    }
                }
                () = wait_for_room(stalled.as_deref()), if stalled.is_some() => {
                    self.move_overflow();
                    self.replay_deferred().await;
                },
                index = poll_fn(|cx| poll_readable(sockets, start, cx)), if read_sockets => {
                    self.next_socket = (index + 1) % self.sockets.len().max(1);
                    self.read_batch(index);
                },
                () = tokio::time::sleep_until(deadline.into()) => self.handle_timeout(),
            }
        }
        self.shutdown().await;
    }

    // -----------------------------------------------------------------------------------------
    // Setup and signaling
    // -----------------------------------------------------------------------------------------

    fn start(&mut self) -> Result<(), PeerError> {
        self.set_state(ConnectionState::Connecting, "establishing");
        // Host candidates go into the description itself and are trickled too.
        let hosts: Vec<SocketAddr> = if self.force_relay {
            if self.relays.is_empty() {
                return Err(PeerError::IceFailed {
                    reason: "relay-only was asked for, but the signaling server handed out no \
                             TURN server"
                        .into(),
                });
            }
            Vec::new()
        } else {
            self.sockets.iter().map(|s| s.addr).collect()
        };
        let mut host_inits = Vec::new();
        for addr in hosts {
            let init = super::gather::host_candidate(addr).map_err(PeerError::Rtc)?;
            self.pc
                .add_local_candidate(init.clone())
                .map_err(rtc_error)?;
            host_inits.push(init);
        }
        if self.role == PeerRole::Offerer {
            let init = RTCDataChannelInit::default();
            let id = self
                .pc
                .create_data_channel(DEFAULT_CHANNEL, Some(init))
                .map_err(rtc_error)?
                .id();
            self.default_channel = Some(id);
            self.add_slot(
                id,
                DEFAULT_CHANNEL.to_owned(),
                ChannelOptions::default(),
                None,
            );
            let offer = self.pc.create_offer(None).map_err(rtc_error)?;
            self.pc
                .set_local_description(Instant::now(), offer.clone())
                .map_err(rtc_error)?;
            let sdp = Sdp::new(offer.sdp).map_err(|e| PeerError::Rtc(e.to_string()))?;
            self.signal(Signal::Offer { sdp });
        }
        for init in host_inits {
            self.signal_candidate(&init);
        }
        self.pump_sources();
        Ok(())
    }

    fn handle_link(&mut self, event: Option<LinkEvent>) {
        match event {
            Some(LinkEvent::Signal(signal)) => {
                if let Err(e) = self.handle_signal(signal) {
                    if self.ready.is_some() {
                        self.fail(e);
                    } else {
                        tracing::warn!(error = %e, "signal ignored");
                    }
                }
            }
            Some(LinkEvent::Ended(reason)) => {
                self.link_open = false;
                if self.ready.is_some() {
                    tracing::info!(?reason, "peer left before the connection was established");
                    self.fail_after_link_end(PeerError::PeerLeft);
                } else {
                    tracing::info!(?reason, "signaling session ended; the direct path stays up");
                }
            }
            Some(LinkEvent::Lost) | None => {
                self.link_open = false;
                if self.ready.is_some() {
                    self.fail_after_link_end(PeerError::SignalingLost);
                } else {
                    tracing::info!("signaling lost; the direct path stays up");
                }
            }
        }
    }

    /// The signaling link ended before the connection was up. When everything ICE needed was
    /// exchanged (both descriptions, both sides' end-of-candidates) and not one packet came
    /// from the peer, the real reason is that no candidate pair works: the other side most
    /// likely left because it found the same (its own ICE failure). Report that, as the other
    /// side does, instead of the link's end, whichever side gives up first.
    fn fail_after_link_end(&mut self, link_error: PeerError) {
        if self.no_answer_deadline().is_some() {
            let reason = self.no_path_reason();
            tracing::info!(%link_error, "signaling ended after ICE found no route");
            self.fail(PeerError::IceFailed { reason });
        } else {
            self.fail(link_error);
        }
    }

    fn handle_signal(&mut self, signal: Signal) -> Result<(), PeerError> {
        match signal {
            Signal::Offer { sdp } => {
                if self.role != PeerRole::Answerer || self.remote_description_set {
                    return Err(PeerError::BadSignal("unexpected offer".into()));
                }
                self.check_remote_fingerprint(sdp.as_str())?;
                let offer = RTCSessionDescription::offer(sdp.into_string()).map_err(rtc_error)?;
                self.pc
                    .set_remote_description(Instant::now(), offer)
                    .map_err(rtc_error)?;
                self.remote_description_set = true;
                let answer = self.pc.create_answer(None).map_err(rtc_error)?;
                self.pc
                    .set_local_description(Instant::now(), answer.clone())
                    .map_err(rtc_error)?;
                let sdp = Sdp::new(answer.sdp).map_err(|e| PeerError::Rtc(e.to_string()))?;
                self.signal(Signal::Answer { sdp });
                self.add_early_candidates();
                self.replay_early_packets();
            }
            Signal::Answer { sdp } => {
                if self.role != PeerRole::Offerer || self.remote_description_set {
                    return Err(PeerError::BadSignal("unexpected answer".into()));
                }
                self.check_remote_fingerprint(sdp.as_str())?;
                let answer = RTCSessionDescription::answer(sdp.into_string()).map_err(rtc_error)?;
                self.pc
                    .set_remote_description(Instant::now(), answer)
                    .map_err(rtc_error)?;
                self.remote_description_set = true;
                self.add_early_candidates();
                self.replay_early_packets();
            }
            Signal::Candidate {
                candidate,
                sdp_mid,
                sdp_mline_index,
            } => {
                let init = RTCIceCandidateInit {
                    candidate: candidate.into_string(),
                    sdp_mid: sdp_mid.map(ShortText::into_string),
                    sdp_mline_index,
                    ..Default::default()
                };
                self.last_candidate_change = Instant::now();
                if self.remote_description_set {
                    if let Err(e) = self.pc.add_remote_candidate(init) {
                        tracing::debug!(error = %e, "remote candidate refused");
                    }
                } else if self.early_candidates.len() < 64 {
                    self.early_candidates.push(init);
                }
            }
            Signal::EndOfCandidates => {
                tracing::debug!("remote gathering complete");
                self.remote_gathering_done = true;
                self.last_candidate_change = Instant::now();
            }
            Signal::Auth { payload } => {
                // The only authentication message for the peer layer: the other side refusing
                // the connection because of what it received (e.g. another fingerprint).
                if let Ok(AuthMessage::Abort { reason }) = AuthMessage::decode(&payload) {
                    return Err(PeerError::RefusedByPeer(format!(
                        "the other device refused the connection ({reason:?}): what it received \
                         over signaling was not what this device sent"
                    )));
                }
                tracing::debug!("authentication signal ignored by the peer layer");
            }
            other => tracing::debug!(kind = ?other, "signal not for the peer layer"),
        }
        Ok(())
    }

    /// With an authenticated remote fingerprint, refuse an SDP that names another. (The
    /// layer above tells the other side why, on the signaling connection it owns.)
    fn check_remote_fingerprint(&self, sdp: &str) -> Result<(), PeerError> {
        let Some(expected) = &self.expected_remote_fingerprint else {
            return Ok(());
        };
        super::check_fingerprints(sdp, expected).inspect_err(|error| {
            tracing::warn!(%error, "remote SDP refused");
        })
    }

    fn replay_early_packets(&mut self) {
        for (local, from, packet) in std::mem::take(&mut self.early_packets) {
            self.feed(local, from, packet);
        }
    }

    fn add_early_candidates(&mut self) {
        for init in std::mem::take(&mut self.early_candidates) {
            if let Err(e) = self.pc.add_remote_candidate(init) {
                tracing::debug!(error = %e, "remote candidate refused");
            }
        }
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

    fn signal_candidate(&mut self, init: &RTCIceCandidateInit) {
        let line = if init.candidate.starts_with("candidate:") {
            init.candidate.clone()
        } else {
            format!("candidate:{}", init.candidate)
        };
        match CandidateLine::new(line) {
            Ok(candidate) => {
                tracing::debug!(%candidate, "local candidate");
                self.signal(Signal::Candidate {
                    candidate,
                    sdp_mid: init.sdp_mid.clone().map(ShortText::truncated),
                    sdp_mline_index: init.sdp_mline_index,
                });
            }
            Err(e) => tracing::warn!(error = %e, "local candidate cannot be signaled"),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Gathering
    // -----------------------------------------------------------------------------------------

    /// Collect what the candidate sources produced; send end-of-candidates once all are done.
    fn pump_sources(&mut self) {
        let mut transmits = Vec::new();
        let mut found = Vec::new();
        for source in &mut self.sources {
            while let Some(output) = source.poll_output() {
                match output {
                    SourceOutput::Transmit(t) => transmits.push(t),
                    SourceOutput::Candidate(c) => found.push(c),
                }
            }
        }
        for t in transmits {
            if let Some(socket) = self.sockets.iter().find(|s| s.addr == t.from)
                && let Err(e) = socket.socket.try_send_to(&t.data, t.to)
            {
                tracing::debug!(error = %e, to = %t.to, "STUN request not sent");
            }
        }
        for event in self.relays.take_events() {
            match event {
                RelayEvent::Candidate { url, relayed, base } => {
                    match super::gather::relay_candidate(relayed, base, &url) {
                        Ok(init) => found.push(init),
                        Err(e) => tracing::debug!(error = %e, "bad relay candidate"),
                    }
                }
                RelayEvent::Failed => {
                    if self.force_relay
                        && self.ready.is_some()
                        && self.relays.gathering_done()
                        && !self.relays.any_ready()
                    {
                        let reason = format!(
                            "relay-only was asked for, but no relay could be allocated: {}",
                            self.relays.failures().join("; ")
                        );
                        self.fail(PeerError::IceFailed { reason });
                    }
                }
            }
        }
        if !found.is_empty() {
            self.last_candidate_change = Instant::now();
        }
        for init in found {
            match self.pc.add_local_candidate(init.clone()) {
                Ok(()) => self.signal_candidate(&init),
                Err(e) => tracing::debug!(error = %e, "local candidate refused"),
            }
        }
        if !self.end_of_candidates_sent
            && self.pending_dns.is_none()
            && self.sources.iter().all(CandidateSource::is_done)
            && self.relays.gathering_done()
        {
            self.end_of_candidates_sent = true;
            self.sources.clear();
            if let Err(e) = self.pc.add_local_candidate(RTCIceCandidateInit::default()) {
                tracing::debug!(error = %e, "end of candidates refused");
            }
            tracing::debug!(
                elapsed_ms = self.started.elapsed().as_millis() as u64,
                "gathering complete"
            );
            self.signal(Signal::EndOfCandidates);
        }
    }

    // -----------------------------------------------------------------------------------------
    // The run-loop rule: drain everything after every input
    // -----------------------------------------------------------------------------------------

    async fn flush(&mut self) {
        self.pump_sources();
        loop {
            let mut progressed = false;
            while let Some(packet) = self.pc.poll_write() {
                progressed = true;
                self.outgoing.push(packet);
            }
            if !self.outgoing.is_empty() {
                self.send_outgoing().await;
            }
            if self.pump_relays().await {
                progressed = true;
            }
            while let Some(event) = self.pc.poll_event() {
                progressed = true;
                self.handle_rtc_event(event);
            }
            if self.kick {
                // rtc queues some packets (the DTLS ClientHello after ICE selects a pair) where
                // only `handle_timeout` moves them out; run it now instead of on the next tick.
                self.kick = false;
                progressed = true;
                if let Err(e) = self.pc.handle_timeout(Instant::now()) {
                    tracing::debug!(error = %e, "rtc timeout handling failed");
                }
            }
            while let Some(message) = self.pc.poll_read() {
                progressed = true;
                if let RTCMessage::DataChannelMessage(id, message) = message.message {
                    let payload = if message.is_string {
                        match String::from_utf8(Vec::from(message.data)) {
                            Ok(text) => Payload::Text(text),
                            Err(e) => Payload::Binary(Bytes::from(e.into_bytes())),
                        }
                    } else {
                        Payload::Binary(message.data.freeze())
                    };
                    self.counters.bytes_received += payload.len() as u64;
                    self.counters.messages_received += 1;
                    self.deliver(id, payload);
                }
            }
            if !progressed {
                self.update_send_accounting();
                if self.finish_closes() {
                    continue;
                }
                break;
            }
        }
        self.check_transport_closed();
    }

    /// rtc reports a peer's DTLS close_notify (or a DTLS failure) only as the transport's
    /// state, not as a connection state change: look at it after every turn.
    fn check_transport_closed(&mut self) {
        if !matches!(
            self.state,
            ConnectionState::Connected | ConnectionState::Disconnected
        ) {
            return;
        }
        let dtls = self.pc.sctp().map(|s| s.transport().state());
        match dtls {
            Some(RTCDtlsTransportState::Closed) => {
                self.set_state(ConnectionState::Closed, "closed by the peer");
                self.stop_with("closed by the peer");
            }
            Some(RTCDtlsTransportState::Failed) => self.fail(PeerError::Rtc("DTLS failed".into())),
            _ => {}
        }
    }

    /// Send the packets rtc produced (in [`Self::outgoing`]), in order. Runs of packets on
    /// the same path with the same size (the last may be shorter) go out as one GSO send where
    /// the OS has it (one system call for up to 64 KiB), otherwise one by one.
    async fn send_outgoing(&mut self) {
        let packets = std::mem::take(&mut self.outgoing);
        let mut gso = std::mem::take(&mut self.gso_buf);
        let mut i = 0;
        while let Some(first) = packets.get(i) {
            let from = first.transport.local_addr;
            let to = first.transport.peer_addr;
            if self.relays.owns(from) {
                self.relays.send(from, to, &first.message, Instant::now());
                i += 1;
                continue;
            }
            let Some(socket) = self.sockets.iter().find(|s| s.addr == from) else {
                tracing::debug!(%from, %to, "packet for an unknown local address dropped");
                i += 1;
                continue;
            };
            let segment = first.message.len();
            let max_segments = socket.state.max_gso_segments();
            let mut end = i + 1;
            let mut total = segment;
            while let Some(next) = packets.get(end) {
                let len = next.message.len();
                if segment == 0
                    || end - i >= max_segments
                    || next.transport.local_addr != from
                    || next.transport.peer_addr != to
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
                (&first.message, None)
            } else {
                gso.clear();
                for p in &packets[i..end] {
                    gso.extend_from_slice(&p.message);
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

    fn handle_rtc_event(&mut self, event: RTCPeerConnectionEvent) {
        match event {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                let new = match state {
                    RTCPeerConnectionState::New => ConnectionState::New,
                    RTCPeerConnectionState::Connecting => ConnectionState::Connecting,
                    RTCPeerConnectionState::Connected => ConnectionState::Connected,
                    RTCPeerConnectionState::Disconnected => ConnectionState::Disconnected,
                    RTCPeerConnectionState::Failed => ConnectionState::Failed,
                    RTCPeerConnectionState::Closed => ConnectionState::Closed,
                    _ => return,
                };
                self.set_state(new, "peer connection");
                match new {
                    ConnectionState::Connected => {
                        self.report_path();
                        if let Some(max) = self.pc.sctp().and_then(|s| s.max_message_size()) {
                            self.max_message_size = max as usize;
                            for slot in self.channels.values() {
                                slot.shared
                                    .max_message_size
                                    .store(max as usize, Ordering::Relaxed);
                            }
                        }
                    }
                    ConnectionState::Failed => {
                        let reason = if self.ready.is_some() {
                            self.no_path_reason()
                        } else {
                            "connectivity lost (ICE consent failed)".to_owned()
                        };
                        self.fail(PeerError::IceFailed { reason });
                    }
                    ConnectionState::Closed => self.stop_with("closed by the peer"),
                    _ => {}
                }
            }
            RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(state) => {
                tracing::debug!(%state, "ICE connection state");
                self.kick = true;
                if state.to_string() == "connected" && !self.ice_connected {
                    self.ice_connected = true;
                    tracing::debug!(
                        elapsed_ms = self.started.elapsed().as_millis() as u64,
                        "ICE connected"
                    );
                }
                if self.state == ConnectionState::Connected {
                    self.report_path();
                }
            }
            RTCPeerConnectionEvent::OnDataChannel(event) => self.handle_channel_event(event),
            RTCPeerConnectionEvent::OnIceCandidateEvent(_) => {}
            other => tracing::trace!(?other, "rtc event"),
        }
    }

    fn handle_channel_event(&mut self, event: RTCDataChannelEvent) {
        match event {
            RTCDataChannelEvent::OnOpen(id) => self.channel_opened(id),
            // A channel this side opened may be closed before it opened: see `reopen`.
            RTCDataChannelEvent::OnClose(id) if self.reopen(id) => {}
            RTCDataChannelEvent::OnClose(id) => self.channel_closed(id, "closed"),
            RTCDataChannelEvent::OnError(id) => tracing::debug!(channel = id, "data channel error"),
            _ => {}
        }
    }

    fn channel_opened(&mut self, id: usize) {
        if !self.channels.contains_key(&id) {
            // Opened by the remote side.
            let Some(dc) = self.pc.data_channel(id) else {
                return;
            };
            let label = dc.label().to_owned();
            let options = ChannelOptions {
                ordered: dc.ordered(),
                max_retransmits: dc.max_retransmits(),
                max_packet_life_time: dc.max_packet_life_time(),
            };
            self.add_slot(id, label, options, None);
        }
        let is_default_answerer = self.role == PeerRole::Answerer
            && self.default_channel.is_none()
            && self
                .channels
                .get(&id)
                .is_some_and(|s| s.shared.label == DEFAULT_CHANNEL);
        if is_default_answerer {
            self.default_channel = Some(id);
        }
        let Some(slot) = self.channels.get_mut(&id) else {
            return;
        };
        if slot.open {
            return;
        }
        slot.open = true;
        tracing::debug!(channel = id, label = %slot.shared.label, "data channel open");
        let Some(handle) = self.handle_for(id) else {
            return;
        };
        if self.default_channel == Some(id) && self.ready.is_some() {
            tracing::info!(
                elapsed_ms = self.started.elapsed().as_millis() as u64,
                "connection established"
            );
            if let Some(ready) = self.ready.take() {
                let _ = ready.send(Ok(handle));
            }
        } else if let Some(reply) = self.channels.get_mut(&id).and_then(|s| s.reply.take()) {
            let _ = reply.send(Ok(handle));
        } else {
            let _ = self.events.send(ConnectionEvent::ChannelOpened(handle));
        }
    }

    /// A channel this side opened closed before it opened: create it again, up to
    /// [`OPEN_ATTEMPTS`] times. Returns whether it did.
    ///
    /// rtc frees a channel's SCTP stream id as soon as the channel is closed locally, while the
    /// stream itself stays in the association until the peer answers the reset with its own
    /// (RFC 8831 §6.7). A channel created in between gets that stream id; its DCEP open is
    /// refused locally ("stream already exists") and never reaches the peer, and when the
    /// peer's reset arrives rtc closes whichever channel holds the id by then — the new one.
    /// That close is exactly the moment the id becomes usable, so creating the channel again
    /// then succeeds. The peer never saw the failed attempt.
    fn reopen(&mut self, id: usize) -> bool {
        let retry = self.channels.get(&id).is_some_and(|s| {
            s.reply.is_some()
                && !s.open
                && !s.closing
                && s.close_by.is_none()
                && s.open_attempts < OPEN_ATTEMPTS
        });
        if !retry {
            return false;
        }
        let Some(old) = self.channels.remove(&id) else {
            return false;
        };
        let label = old.shared.label.clone();
        let options = old.shared.options.clone();
        tracing::debug!(
            channel = id,
            %label,
            attempt = old.open_attempts,
            "channel closed before it opened (its stream id was still being reset); opening again"
        );
        let init = channel_init(&options);
        let new_id = match self.pc.create_data_channel(&label, Some(init)) {
            Ok(dc) => dc.id(),
            Err(e) => {
                if let Some(reply) = old.reply {
                    let _ = reply.send(Err(rtc_error(e)));
                }
                return true;
            }
        };
        self.add_slot(new_id, label, options, old.reply);
        if let Some(slot) = self.channels.get_mut(&new_id) {
            slot.open_attempts = old.open_attempts + 1;
        }
        true
    }

    fn channel_closed(&mut self, id: usize, why: &str) {
        let Some(slot) = self.channels.get_mut(&id) else {
            return;
        };
        if !slot.closing {
            tracing::debug!(channel = id, label = %slot.shared.label, why, "data channel closed");
        }
        slot.closing = true;
        slot.shared.mark_closed();
        if let Some(reply) = slot.reply.take() {
            let _ = reply.send(Err(PeerError::ChannelClosed));
        }
        if slot.overflow.is_empty() {
            slot.queue.close();
        }
        if self.default_channel == Some(id)
            && let Some(ready) = self.ready.take()
        {
            let _ = ready.send(Err(PeerError::ChannelClosed));
        }
    }

    fn add_slot(
        &mut self,
        id: usize,
        label: String,
        options: ChannelOptions,
        reply: Option<oneshot::Sender<Result<DataChannel, PeerError>>>,
    ) {
        let shared = Arc::new(ChannelShared::new(
            id,
            label,
            options,
            self.max_message_size,
        ));
        self.channels.insert(
            id,
            ChannelSlot {
                shared,
                queue: Arc::new(RecvQueue::default()),
                handed_out: false,
                overflow: VecDeque::new(),
                reply,
                open_attempts: 1,
                open: false,
                close_by: None,
                closing: false,
            },
        );
    }

    /// The handle for a channel, once: it takes the receive queue.
    fn handle_for(&mut self, id: usize) -> Option<DataChannel> {
        let commands = self.command_sender.upgrade()?;
        let slot = self.channels.get_mut(&id)?;
        if slot.handed_out {
            return None;
        }
        slot.handed_out = true;
        Some(DataChannel::new(
            ChannelSender::new(slot.shared.clone(), commands),
            slot.queue.clone(),
        ))
    }

    // -----------------------------------------------------------------------------------------
    // Receive path and its back-pressure
    // -----------------------------------------------------------------------------------------

    fn deliver(&mut self, id: usize, payload: Payload) {
        if !self.channels.contains_key(&id) {
            // A remote channel's first message can be read before its open event is polled
            // (both come out of the same pump): open it now, the event is then a no-op.
            self.channel_opened(id);
        }
        let Some(slot) = self.channels.get_mut(&id) else {
            tracing::debug!(channel = id, "message for an unknown channel dropped");
            return;
        };
        if !slot.overflow.is_empty() {
            slot.overflow.push_back(payload);
            return;
        }
        match slot.queue.push(payload) {
            Ok(()) => {}
            Err(PushError::Full(payload)) => slot.overflow.push_back(payload),
            // The app dropped the channel handle: nobody reads, nothing to keep.
            Err(PushError::Gone) => {}
        }
    }

    /// A queue that is full, if any: the driver waits for room in it.
    fn stalled_queue(&self) -> Option<Arc<RecvQueue>> {
        self.channels
            .values()
            .find(|s| !s.overflow.is_empty())
            .map(|s| s.queue.clone())
    }

    fn is_stalled(&self) -> bool {
        self.channels.values().any(|s| !s.overflow.is_empty())
    }

    fn move_overflow(&mut self) {
        for slot in self.channels.values_mut() {
            while let Some(payload) = slot.overflow.pop_front() {
                match slot.queue.push(payload) {
                    Ok(()) => {}
                    Err(PushError::Full(payload)) => {
                        slot.overflow.push_front(payload);
                        break;
                    }
                    Err(PushError::Gone) => {
                        slot.overflow.clear();
                        break;
                    }
                }
            }
            if slot.closing && slot.overflow.is_empty() {
                slot.queue.close();
            }
        }
    }

    /// Feed the packets held back while a queue was full, until a queue fills again.
    async fn replay_deferred(&mut self) {
        while !self.is_stalled() {
            let Some((local, from, packet)) = self.deferred.pop_front() else {
                break;
            };
            self.deferred_bytes -= packet.len();
            self.feed(local, from, packet);
            self.flush().await;
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
        'calls: for _ in 0..READ_CALLS {
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
                    if !self.take_datagram(local, meta.addr, BytesMut::from(datagram)) {
                        break 'calls;
                    }
                }
            }
            if received < RX_BUFFERS {
                break;
            }
        }
        self.rx_area = area;
    }

    /// One received datagram: STUN answers for the candidate sources, TURN messages for the
    /// relays (what peers sent through them comes back here with the relayed address as
    /// `local`), early checks kept, data held back while a receive queue is full, the rest fed
    /// to rtc. Returns `false` once the held-back data reached its bound (stop reading).
    fn take_datagram(&mut self, local: SocketAddr, from: SocketAddr, packet: BytesMut) -> bool {
        let is_stun = rtc::stun::message::is_stun_message(&packet);
        if is_stun
            && self
                .sources
                .iter_mut()
                .any(|s| s.handle_packet(local, from, &packet))
        {
            return true;
        }
        let packet = match self.relays.handle_udp(local, from, packet, Instant::now()) {
            Ok(()) => return self.take_relayed(),
            Err(packet) => packet,
        };
        if !self.remote_description_set {
            if self.early_packets.len() < EARLY_PACKETS {
                self.early_packets.push((local, from, packet));
            }
            return true;
        }
        if self.is_stalled() && !is_stun {
            self.deferred_bytes += packet.len();
            self.deferred.push_back((local, from, packet));
            return self.deferred_bytes < DEFERRED_MAX_BYTES;
        }
        self.feed(local, from, packet);
        true
    }

    /// Take what peers sent through the relays like datagrams read from the relayed addresses.
    fn take_relayed(&mut self) -> bool {
        let mut keep_reading = true;
        for (relayed, peer, packet) in self.relays.take_received() {
            keep_reading &= self.take_datagram(relayed, peer, packet);
        }
        keep_reading
    }

    /// Send what the relays queued for their servers over UDP, take what they received, and
    /// turn their candidates into local candidates. Returns whether anything was received.
    async fn pump_relays(&mut self) -> bool {
        if self.relays.is_empty() {
            return false;
        }
        let transmits = self.relays.take_udp_transmits();
        if !transmits.is_empty() {
            // Through the same path as rtc's packets: runs of same-size ChannelData to the
            // server go out as one GSO send.
            let now = Instant::now();
            self.outgoing
                .extend(transmits.into_iter().map(|t| TaggedBytesMut {
                    now,
                    transport: TransportContext {
                        local_addr: t.from,
                        peer_addr: t.to,
                        ecn: None,
                        transport_protocol: TransportProtocol::UDP,
                    },
                    message: t.data,
                }));
            self.send_outgoing().await;
        }
        let received = self.relays.take_received();
        let any = !received.is_empty();
        for (relayed, peer, packet) in received {
            self.take_datagram(relayed, peer, packet);
        }
        self.pump_sources();
        any
    }

    fn feed(&mut self, local: SocketAddr, from: SocketAddr, packet: BytesMut) {
        self.heard_from_peer = true;
        let result = self.pc.handle_read(TaggedBytesMut {
            now: Instant::now(),
            transport: TransportContext {
                local_addr: local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: packet,
        });
        if let Err(e) = result {
            tracing::debug!(error = %e, %from, "packet refused");
        }
    }

    // -----------------------------------------------------------------------------------------
    // Send path
    // -----------------------------------------------------------------------------------------

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Send {
                channel,
                payload,
                cost,
            } => {
                if let Some(slot) = self.channels.get(&channel) {
                    slot.shared.queued.fetch_sub(cost, Ordering::AcqRel);
                }
                let len = payload.len();
                let Some(mut dc) = self.pc.data_channel(channel) else {
                    return;
                };
                let now = Instant::now();
                let result = match payload {
                    Payload::Text(text) => dc.send_text(now, text),
                    Payload::Binary(bytes) => dc.send(now, BytesMut::from(bytes)),
                };
                match result {
                    Ok(()) => {
                        self.counters.bytes_sent += len as u64;
                        self.counters.messages_sent += 1;
                    }
                    Err(e) => {
                        tracing::debug!(channel, error = %e, "send refused");
                        if matches!(e, rtc::shared::error::Error::ErrDataChannelClosed) {
                            self.channel_closed(channel, "send on a closed channel");
                        }
                    }
                }
            }
            // Closing: nothing more is accepted, what was accepted is still delivered; the
            // channel closes in `finish_closes` once SCTP has released it all.
            Command::CloseChannel { channel } => {
                if let Some(slot) = self.channels.get_mut(&channel)
                    && !slot.closing
                    && slot.close_by.is_none()
                {
                    slot.shared.mark_closed();
                    slot.close_by = Some(Instant::now() + CLOSE_FLUSH_TIMEOUT);
                }
            }
            Command::OpenChannel {
                label,
                options,
                reply,
            } => {
                let init = channel_init(&options);
                match self.pc.create_data_channel(&label, Some(init)) {
                    Ok(dc) => {
                        let id = dc.id();
                        self.add_slot(id, label, options, Some(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(rtc_error(e)));
                    }
                }
            }
            Command::Stats { reply } => {
                let stats = collect_stats(&mut self.pc, &self.counters, &self.relays);
                let _ = reply.send(stats);
            }
            // `Connection::close` waits for the driver to end (its state sender is dropped);
            // the driver ends once what was sent is acknowledged (see `finish_closes`).
            Command::Close => {
                if self.close_by.is_none() {
                    tracing::debug!("closing: flushing what the channels hold");
                    self.close_by = Some(Instant::now() + CLOSE_FLUSH_TIMEOUT);
                    for slot in self.channels.values() {
                        slot.shared.mark_closed();
                    }
                }
            }
        }
    }

    /// Close the channels (and the connection) whose close was asked for, once SCTP has
    /// released everything they were given or their deadline passed. Returns whether a channel
    /// was closed (which produces packets: the caller drains again).
    fn finish_closes(&mut self) -> bool {
        let now = Instant::now();
        // Disconnected may come back: keep waiting (bounded by the deadline) unless it ended.
        let alive = matches!(
            self.state,
            ConnectionState::Connected | ConnectionState::Disconnected
        );
        let ready: Vec<(usize, bool)> = self
            .channels
            .iter()
            .filter(|(_, s)| !s.closing)
            .filter_map(|(id, s)| {
                let deadline = s.close_by?;
                let timed_out = now >= deadline;
                (timed_out || !alive || s.shared.buffered() == 0).then_some((*id, timed_out))
            })
            .collect();
        let closed_any = !ready.is_empty();
        for (id, timed_out) in ready {
            if timed_out {
                tracing::debug!(channel = id, "channel close: unacknowledged data given up");
            }
            if let Some(mut dc) = self.pc.data_channel(id)
                && let Err(e) = dc.close()
            {
                tracing::debug!(channel = id, error = %e, "channel close failed");
            }
            self.channel_closed(id, "closed locally");
        }
        if let Some(deadline) = self.close_by {
            let flushed = self
                .channels
                .values()
                .all(|s| s.closing || s.shared.buffered() == 0);
            if flushed || now >= deadline || self.ready.is_some() || !alive {
                if !flushed {
                    tracing::debug!("connection close: unacknowledged data given up");
                }
                self.stop_with("closed locally");
            }
        }
        closed_any
    }

    /// Publish how much each channel holds and wake senders below the low-water mark.
    fn update_send_accounting(&mut self) {
        for (id, slot) in &self.channels {
            let outstanding = self
                .pc
                .data_channel(*id)
                .map(|dc| dc.outstanding_bytes())
                .unwrap_or(0);
            slot.shared
                .outstanding
                .store(outstanding, Ordering::Release);
            if slot.shared.buffered() <= SEND_LOW_WATER {
                slot.shared.writable.notify_waiters();
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Time, state, end
    // -----------------------------------------------------------------------------------------

    fn next_deadline(&mut self) -> Instant {
        let mut deadline = self
            .pc
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        for source in &self.sources {
            if let Some(t) = source.poll_timeout() {
                deadline = deadline.min(t);
            }
        }
        if let Some(t) = self.relays.poll_timeout() {
            deadline = deadline.min(t);
        }
        if let Some(t) = self.no_answer_deadline() {
            deadline = deadline.min(t);
        }
        if self.ready.is_some() {
            deadline = deadline.min(self.connect_deadline);
        }
        let closes = self.channels.values().filter_map(|s| s.close_by);
        for close_by in closes.chain(self.close_by) {
            deadline = deadline.min(close_by);
        }
        deadline
    }

    fn handle_timeout(&mut self) {
        let now = Instant::now();
        if self.pc.poll_timeout().is_some_and(|t| t <= now)
            && let Err(e) = self.pc.handle_timeout(now)
        {
            tracing::debug!(error = %e, "rtc timeout handling failed");
        }
        for source in &mut self.sources {
            if source.poll_timeout().is_some_and(|t| t <= now) {
                source.handle_timeout(now);
            }
        }
        self.relays.handle_timeout(now);
        if self.no_answer_deadline().is_some_and(|t| now >= t) {
            let reason = self.no_path_reason();
            self.fail(PeerError::IceFailed { reason });
            return;
        }
        if self.ready.is_some() && now >= self.connect_deadline {
            let reason = if !self.remote_description_set {
                "no offer/answer from the peer".to_owned()
            } else if !self.ice_connected {
                self.no_path_reason()
            } else {
                "DTLS/SCTP setup or the default channel did not complete".to_owned()
            };
            self.fail(PeerError::Timeout {
                after: self.connect_timeout,
                reason,
            });
        }
    }

    /// Emit [`ConnectionEvent::PathChanged`] when the selected pair differs from the last one
    /// reported, and log it.
    fn report_path(&mut self) {
        let Ok(stats) = collect_stats(&mut self.pc, &self.counters, &self.relays) else {
            return;
        };
        let path = (stats.local.address, stats.remote.address);
        if self.last_path == Some(path) {
            return;
        }
        self.last_path = Some(path);
        tracing::info!(
            path = ?stats.path(),
            local = %stats.local.address,
            local_kind = ?stats.local.kind,
            relay = ?stats.local.relay_protocol,
            remote = %stats.remote.address,
            remote_kind = ?stats.remote.kind,
            "selected path"
        );
        let _ = self.events.send(ConnectionEvent::PathChanged(stats));
    }

    /// When to give up because no pair can work: both sides have finished gathering, every
    /// pair has had its checks (they stop after 40 × 50 ms), and not one packet from the peer
    /// arrived on any candidate. `None` while that cannot be said (yet).
    fn no_answer_deadline(&self) -> Option<Instant> {
        (self.ready.is_some()
            && self.remote_description_set
            && !self.ice_connected
            && !self.heard_from_peer
            && self.end_of_candidates_sent
            && self.remote_gathering_done)
            .then_some(self.last_candidate_change + NO_ANSWER_GIVE_UP)
    }

    /// Why no candidate pair worked, with what gathering learned (relays that failed).
    fn no_path_reason(&self) -> String {
        let mut reason = "no candidate pair succeeded (no route between the devices".to_owned();
        if self.relays.is_empty() {
            reason.push_str("; the signaling server offers no TURN relay");
        }
        reason.push(')');
        let failures = self.relays.failures();
        if !failures.is_empty() {
            reason.push_str(": ");
            reason.push_str(&failures.join("; "));
        }
        reason
    }

    fn set_state(&mut self, new: ConnectionState, reason: &str) {
        let old = self.state;
        if old == new {
            return;
        }
        tracing::info!("{old} -> {new} ({reason})");
        self.state = new;
        self.state_tx.send_replace(new);
        let _ = self.events.send(ConnectionEvent::StateChanged { old, new });
    }

    fn fail(&mut self, error: PeerError) {
        tracing::warn!(%error, "peer connection failed");
        let reason = error.to_string();
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(error));
        }
        self.set_state(ConnectionState::Failed, &reason);
        self.stop_with(&reason);
    }

    fn stop_with(&mut self, reason: &str) {
        if self.stop.is_none() {
            self.stop = Some(reason.to_owned());
        }
    }

    /// Close channels and the connection, flush the goodbye packets, release everything.
    async fn shutdown(&mut self) {
        let reason = self.stop.clone().unwrap_or_else(|| "closed".to_owned());
        let ids: Vec<usize> = self.channels.keys().copied().collect();
        for id in ids {
            self.channel_closed(id, &reason);
        }
        // Sends the SCTP ABORT (which ends every channel) and the DTLS close_notify.
        if let Err(e) = self.pc.close() {
            tracing::debug!(error = %e, "close failed");
        }
        while let Some(packet) = self.pc.poll_write() {
            self.outgoing.push(packet);
        }
        self.send_outgoing().await;
        // Give the allocations back (over a stream, the writer task sends it and ends).
        self.relays.release_all(Instant::now());
        for t in self.relays.take_udp_transmits() {
            if let Some(socket) = self.sockets.iter().find(|s| s.addr == t.from) {
                send_datagrams(socket, t.to, &t.data, None).await;
            }
        }
        while self.pc.poll_event().is_some() {}
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(PeerError::Closed));
        }
        if self.state != ConnectionState::Failed {
            self.set_state(ConnectionState::Closed, &reason);
        }
        if !self.closed_event_sent {
            self.closed_event_sent = true;
            let _ = self.events.send(ConnectionEvent::Closed { reason });
        }
        // Undelivered messages stay readable: the queues outlive the driver. What is still in
        // `overflow` cannot be delivered any more (nobody would wait for room).
        for slot in self.channels.values_mut() {
            slot.overflow.clear();
            slot.queue.close();
        }
        self.sockets.clear();
    }
}

fn channel_init(options: &ChannelOptions) -> RTCDataChannelInit {
    RTCDataChannelInit {
        ordered: options.ordered,
        max_retransmits: options.max_retransmits,
        max_packet_life_time: options.max_packet_life_time,
        ..Default::default()
    }
}

fn rtc_error(e: rtc::shared::error::Error) -> PeerError {
    PeerError::Rtc(e.to_string())
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

async fn wait_for_room(queue: Option<&RecvQueue>) {
    match queue {
        Some(queue) => queue.room.notified().await,
        None => std::future::pending().await,
    }
}
