//! One SCTP association: handshake, data transfer, loss recovery, stream resets, teardown.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::bbr::{AckEvent, Bbr};
use crate::config::Config;
use crate::cookie::{self, CookieContents};
use crate::inbound::DataTracker;
use crate::inflight::{Inflight, SackRejected};
use crate::outbound::{Expired, SendQueue};
use crate::pacer::Pacer;
use crate::reassembly::{Message, Reassembly, ReassemblyError};
use crate::reconfig::{DeferredReset, OutgoingRequest, Reconfig, RequestAge};
use crate::rtt::RttEstimator;
use crate::timer::{Timer, TimerTable};
use crate::wire::{
    AbortChunk, COMMON_HEADER_LEN, Chunk, CommonHeader, DATA_HEADER_LEN, DataChunk,
    ForwardTsnChunk, InitChunk, InitParams, Packet, PacketWriter, ReconfigParam, ReconfigResult,
    SackChunk, ShutdownChunk, WireError, ZERO_CHECKSUM_EDMID_DTLS, chunk_type,
};

/// How long a State Cookie is valid.
const COOKIE_LIFETIME_MS: u64 = 60_000;
/// The smallest fragment cut to fill the end of a packet (smaller is not worth a chunk header).
const MIN_FRAGMENT: usize = 256;
/// What each delivered message costs against the receive window beyond its bytes, so a flood
/// of tiny messages is bounded like a flood of bytes.
pub const MESSAGE_OVERHEAD: usize = 64;

/// How a message is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendOptions {
    /// Deliver as soon as complete, not in stream order.
    pub unordered: bool,
    /// Give up after this many retransmissions (partial reliability, RFC 3758).
    pub max_retransmits: Option<u16>,
    /// Give up once this long has passed since `send` (partial reliability).
    pub lifetime: Option<Duration>,
}

/// Why `send` refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The association is closed or closing.
    #[error("the association is closed")]
    Closed,
    /// SCTP cannot carry an empty message (data channels send one byte with another PPID).
    #[error("empty message")]
    Empty,
    /// The stream is being reset (its channel is closing).
    #[error("stream {0} is being reset")]
    StreamResetting(u16),
    /// The stream id is beyond the negotiated number of streams.
    #[error("stream {stream} is beyond the {streams} streams of this association")]
    InvalidStream {
        /// The stream asked for.
        stream: u16,
        /// Streams available.
        streams: u16,
    },
}

/// Why a packet from the peer was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// It could not be decoded.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Its verification tag is not this association's.
    #[error("verification tag {found:#x} is not ours ({expected:#x})")]
    WrongTag {
        /// The tag in the packet.
        found: u32,
        /// Ours.
        expected: u32,
    },
    /// The association is terminated.
    #[error("the association is terminated")]
    Terminated,
}

/// Why an association ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer sent ABORT.
    PeerAborted(String),
    /// This side aborted.
    Aborted(String),
    /// INIT or COOKIE ECHO went unanswered.
    HandshakeTimeout,
    /// Graceful shutdown completed.
    ShutdownComplete,
    /// Too many retransmission timeouts in a row.
    TooManyRetransmissions,
    /// The peer broke the protocol (this side aborted).
    ProtocolViolation(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::PeerAborted(r) => write!(f, "the peer aborted the association ({r})"),
            CloseReason::Aborted(r) => write!(f, "aborted ({r})"),
            CloseReason::HandshakeTimeout => f.write_str("the SCTP handshake timed out"),
            CloseReason::ShutdownComplete => f.write_str("shut down"),
            CloseReason::TooManyRetransmissions => {
                f.write_str("too many retransmission timeouts in a row")
            }
            CloseReason::ProtocolViolation(r) => write!(f, "protocol violation by the peer: {r}"),
        }
    }
}

/// What the association reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The handshake completed.
    Connected,
    /// A complete message. Its bytes count against the receive window until
    /// [`Association::consumed`] says the application took them.
    Message(Message),
    /// The peer reset these outgoing streams of its own (our incoming ones).
    IncomingStreamsReset(Vec<u16>),
    /// Our reset of these outgoing streams completed; they start again at SSN 0.
    OutgoingStreamsReset(Vec<u16>),
    /// The peer refused to reset these streams.
    StreamResetFailed(Vec<u16>),
    /// The association ended. The last event.
    Closed(CloseReason),
}

/// The association's state, as a caller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AssociationState {
    /// Not connected yet.
    Connecting,
    /// Data flows.
    Established,
    /// Shutting down gracefully.
    ShuttingDown,
    /// Ended.
    Closed,
}

/// Counters and estimates, for stats and tuning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Packets sent and received.
    pub packets_sent: u64,
    /// Packets received.
    pub packets_received: u64,
    /// Packets dropped as undecodable or not ours.
    pub packets_refused: u64,
    /// DATA chunks sent for the first time.
    pub data_chunks_sent: u64,
    /// DATA chunks sent again.
    pub data_chunks_retransmitted: u64,
    /// User bytes acknowledged by the peer.
    pub bytes_acked: u64,
    /// Retransmission timeouts.
    pub timeouts: u64,
    /// Tail loss probes.
    pub probes: u64,
    /// Messages given up under partial reliability.
    pub messages_abandoned: u64,
    /// Duplicate DATA received.
    pub duplicates_received: u64,
    /// DATA dropped for lack of receive buffer.
    pub dropped_for_window: u64,
    /// Backed-off retransmission timers cut short because the path was confirmed working
    /// again ([`Association::path_confirmed`]).
    pub path_recoveries: u64,
    /// Smoothed RTT.
    pub srtt: Duration,
    /// Congestion window, bytes.
    pub cwnd: usize,
    /// Bytes in flight.
    pub in_flight: usize,
    /// Pacing rate, bytes per second.
    pub pacing_rate: u64,
    /// Bottleneck bandwidth estimate, bytes per second.
    pub bandwidth: u64,
    /// The peer's last advertised receive window.
    pub peer_window: u32,
    /// The congestion controller's phase (BBR: startup, drain, probe_bw, probe_rtt).
    pub congestion_phase: &'static str,
}

#[derive(Debug, Clone)]
enum State {
    /// Not connected; answers an INIT.
    Closed,
    CookieWait,
    CookieEchoed {
        cookie: Bytes,
    },
    Established,
    /// `shutdown` was asked; waiting for outstanding data.
    ShutdownPending,
    ShutdownSent,
    /// The peer sent SHUTDOWN; waiting for our outstanding data.
    ShutdownReceived,
    ShutdownAckSent,
    Terminated,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::CookieWait => "cookie-wait",
            State::CookieEchoed { .. } => "cookie-echoed",
            State::Established => "established",
            State::ShutdownPending => "shutdown-pending",
            State::ShutdownSent => "shutdown-sent",
            State::ShutdownReceived => "shutdown-received",
            State::ShutdownAckSent => "shutdown-ack-sent",
            State::Terminated => "terminated",
        }
    }

    /// Whether DATA may be sent and received.
    fn carries_data(&self) -> bool {
        matches!(
            self,
            State::Established | State::ShutdownPending | State::ShutdownReceived
        )
    }
}

/// What we know of the peer once INIT ACK or COOKIE ECHO told us.
#[derive(Debug, Clone, Copy)]
struct Peer {
    tag: u32,
    a_rwnd: u32,
    forward_tsn: bool,
    reconfig: bool,
    zero_checksum: bool,
    streams: u16,
}

/// A control chunk waiting to be sent, and the verification tag its packet needs when it is
/// not the peer's (INIT: 0; INIT ACK: the tag of the INIT it answers).
#[derive(Debug)]
struct Control {
    chunk: Chunk,
    tag: Option<u32>,
}

#[derive(Debug, Default)]
struct SackState {
    /// DATA arrived since the last SACK.
    pending: bool,
    /// Send one with the next packet.
    immediate: bool,
    /// Packets with DATA since the last SACK.
    packets: u32,
    /// The window in the last SACK.
    last_window: u32,
}

/// A sans-IO SCTP association over DTLS (no IP addresses, one path).
///
/// Feed it decrypted DTLS payloads with [`Self::handle_input`], commands with
/// [`Self::send`]/[`Self::reset_streams`], and time with [`Self::handle_timeout`]; after each,
/// drain [`Self::poll_transmit`] (packets to encrypt and send) and [`Self::poll_event`] until
/// both are empty, then wait until [`Self::poll_timeout`].
#[derive(Debug)]
pub struct Association {
    config: Config,
    created: Instant,
    state: State,
    my_tag: u32,
    my_initial_tsn: u32,
    peer: Option<Peer>,
    cookie_secret: [u8; 32],
    timers: TimerTable,
    /// Consecutive expiries of the current handshake or retransmission timer.
    backoff: u32,
    init_sent_at: Option<Instant>,
    queue: SendQueue,
    inflight: Inflight,
    rtt: RttEstimator,
    bbr: Bbr,
    pacer: Pacer,
    tracker: Option<DataTracker>,
    reassembly: Reassembly,
    /// Bytes delivered and not yet consumed by the application.
    undelivered: usize,
    control: VecDeque<Control>,
    events: VecDeque<Event>,
    sack: SackState,
    forward_tsn_pending: bool,
    reconfig: Reconfig,
    probe_outstanding: bool,
    /// One packet may leave beyond the congestion window (a tail loss probe).
    cwnd_bypass: bool,
    stats: Stats,
    spare: Vec<Vec<u8>>,
    expired: Vec<Expired>,
}

impl Association {
    /// A new association; nothing is sent until [`Self::connect`] or a peer's INIT.
    pub fn new(config: Config, now: Instant) -> Association {
        let my_tag = loop {
            let t: u32 = rand::random();
            if t != 0 {
                break t;
            }
        };
        let my_initial_tsn: u32 = rand::random();
        let mss = config.max_packet_size;
        Association {
            rtt: RttEstimator::new(config.rto_initial, config.rto_min, config.rto_max),
            bbr: Bbr::new(now, mss, config.initial_cwnd_packets, my_tag),
            pacer: Pacer::new(now, mss),
            reassembly: Reassembly::new(config.max_message_size),
            created: now,
            state: State::Closed,
            my_tag,
            my_initial_tsn,
            peer: None,
            cookie_secret: rand::random(),
            timers: TimerTable::default(),
            backoff: 0,
            init_sent_at: None,
            queue: SendQueue::default(),
            inflight: Inflight::new(now, my_initial_tsn),
            tracker: None,
            undelivered: 0,
            control: VecDeque::new(),
            events: VecDeque::new(),
            sack: SackState::default(),
            forward_tsn_pending: false,
            reconfig: Reconfig::new(my_initial_tsn),
            probe_outstanding: false,
            cwnd_bypass: false,
            stats: Stats::default(),
            spare: Vec::new(),
            expired: Vec::new(),
            config,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Public API
    // -----------------------------------------------------------------------------------------

    /// Start the handshake: send INIT. Both sides of a WebRTC association may call this; a
    /// collision of INITs is resolved as RFC 9260 §5.2.1 describes.
    pub fn connect(&mut self, now: Instant) {
        if !matches!(self.state, State::Closed) {
            return;
        }
        self.transition(State::CookieWait, "connect");
        self.send_init(now);
    }

    /// The state, as a caller sees it.
    pub fn state(&self) -> AssociationState {
        match self.state {
            State::Closed | State::CookieWait | State::CookieEchoed { .. } => {
                AssociationState::Connecting
            }
            State::Established => AssociationState::Established,
            State::ShutdownPending
            | State::ShutdownSent
            | State::ShutdownReceived
            | State::ShutdownAckSent => AssociationState::ShuttingDown,
            State::Terminated => AssociationState::Closed,
        }
    }

    /// Queue a message on `stream`. Messages queued before the association is up are sent
    /// once it is.
    pub fn send(
        &mut self,
        now: Instant,
        stream: u16,
        ppid: u32,
        data: Bytes,
        options: SendOptions,
    ) -> Result<(), SendError> {
        if !matches!(
            self.state,
            State::Closed | State::CookieWait | State::CookieEchoed { .. } | State::Established
        ) {
            return Err(SendError::Closed);
        }
        if data.is_empty() {
            return Err(SendError::Empty);
        }
        let streams = self.peer.map_or(self.config.streams, |p| p.streams);
        if stream >= streams {
            return Err(SendError::InvalidStream { stream, streams });
        }
        if self.reconfig.resetting.contains(&stream) {
            return Err(SendError::StreamResetting(stream));
        }
        let expires = options.lifetime.map(|l| now + l);
        self.queue.push(
            stream,
            ppid,
            data,
            options.unordered,
            options.max_retransmits,
            expires,
        );
        Ok(())
    }

    /// Bytes given to [`Self::send`] on `stream` and not yet acknowledged (or given up).
    pub fn buffered_amount(&self, stream: u16) -> usize {
        self.queue.queued_bytes(stream) + self.inflight.stream_bytes(stream)
    }

    /// The application took `messages` delivered messages of `bytes` in all: the receive window
    /// opens by that.
    pub fn consumed(&mut self, bytes: usize, messages: usize) {
        let before = self.receive_window();
        self.undelivered = self
            .undelivered
            .saturating_sub(bytes + messages * MESSAGE_OVERHEAD);
        let after = self.receive_window();
        // Tell a peer that was (nearly) blocked as soon as there is room again: a SACK of its
        // own (a window update), not only with the next one its DATA draws — a sender that
        // does not probe a closed window would wait forever.
        let mtu = self.config.max_packet_size as u32;
        if self.sack.last_window < 2 * mtu
            && after > before
            && after >= self.config.receive_window / 4
            && self.tracker.is_some()
        {
            self.sack.pending = true;
            self.sack.immediate = true;
        }
    }

    /// Whether a retransmission timeout fired and nothing was acknowledged since: the path
    /// may be down, and the next retransmission waits out a backed-off timer (up to
    /// `max_backoff`). A lower layer that can tell when the path works again (ICE consent)
    /// checks it more often meanwhile and then calls [`Self::path_confirmed`].
    pub fn in_backoff(&self) -> bool {
        self.backoff > 0 && self.inflight.has_outstanding()
    }

    /// The lower layer just got an answer across the path (an ICE consent response): it works
    /// again. When a retransmission timer is backed off ([`Self::in_backoff`]), what is
    /// outstanding is retransmitted at once and the backoff is reset, instead of waiting up to
    /// `max_backoff` after an outage ends; otherwise nothing happens.
    pub fn path_confirmed(&mut self, now: Instant) {
        if !self.in_backoff() || !self.state.carries_data() {
            return;
        }
        let backoff = self.backoff;
        self.backoff = 0;
        self.stats.path_recoveries += 1;
        // As at a timeout (the congestion state already went to its minimum at the first one):
        // everything outstanding is presumed lost, and the timer restarts from the plain RTO.
        let lost = self.inflight.on_timeout();
        tracing::debug!(
            lost,
            backoff,
            "SCTP: the path works again; retransmitting now"
        );
        self.timers.stop(Timer::Probe);
        self.timers.stop(Timer::Reorder);
        self.timers.set(Timer::Rto, now + self.backed_off_rto());
    }

    /// Reset these outgoing streams (close their data channels): once what was queued on them
    /// is sent, the peer is asked to reset them; [`Event::OutgoingStreamsReset`] says when it
    /// did. Sends on them fail meanwhile.
    pub fn reset_streams(&mut self, streams: &[u16]) {
        for s in streams {
            if self.reconfig.resetting.insert(*s) {
                self.reconfig.pending.insert(*s);
            }
        }
    }

    /// Close gracefully once everything sent is acknowledged.
    pub fn shutdown(&mut self, now: Instant) {
        match self.state {
            State::Established => {
                self.transition(State::ShutdownPending, "shutdown asked");
                self.check_shutdown_progress(now);
            }
            State::Closed | State::CookieWait | State::CookieEchoed { .. } => {
                self.terminate(CloseReason::Aborted("shutdown before connected".into()));
            }
            _ => {}
        }
    }

    /// End at once: send ABORT with `reason` (when the peer is known) and close.
    pub fn abort(&mut self, reason: &str) {
        if matches!(self.state, State::Terminated) {
            return;
        }
        self.queue_abort(12, reason);
        self.terminate(CloseReason::Aborted(reason.to_owned()));
    }

    /// Counters and estimates.
    pub fn stats(&self) -> Stats {
        Stats {
            srtt: self.rtt.srtt(),
            cwnd: self.bbr.cwnd(),
            in_flight: self.inflight.flight_bytes(),
            pacing_rate: self.bbr.pacing_rate() as u64,
            bandwidth: self.bbr.bandwidth() as u64,
            peer_window: self.peer.map_or(0, |p| p.a_rwnd),
            congestion_phase: self.bbr.mode_name(),
            ..self.stats.clone()
        }
    }

    /// A one-line dump of the internals, for debugging.
    #[doc(hidden)]
    pub fn debug_state(&self) -> String {
        format!(
            "state={} tracker_cum={:?} reassembly_held={} undelivered={} inflight={} queue_empty={} timers={:?} sack_pending={} head={}",
            self.state.name(),
            self.tracker.as_ref().map(|t| t.cumulative()),
            self.reassembly.held(),
            self.undelivered,
            self.inflight.flight_bytes(),
            self.queue.is_empty(),
            self.timers.next(),
            self.sack.pending,
            self.inflight.debug_head(),
        )
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next().map(|(at, _)| at)
    }

    /// When, and why, the next timer fires.
    pub fn poll_timeout_reason(&self) -> Option<(Instant, &'static str)> {
        self.timers.next().map(|(at, t)| (at, t.reason()))
    }

    /// Run the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        for timer in self.timers.take_expired(now) {
            tracing::trace!(reason = timer.reason(), "SCTP timer");
            match timer {
                Timer::Init => self.on_init_timeout(now),
                Timer::Cookie => self.on_cookie_timeout(now),
                Timer::Rto => self.on_rto(now),
                Timer::Reorder => {
                    self.detect_losses(now);
                }
                Timer::Probe => self.on_probe(now),
                Timer::Sack => {
                    if self.sack.pending {
                        self.sack.immediate = true;
                    }
                }
                Timer::Reconfig => self.on_reconfig_timeout(now),
                // The next `poll_transmit` sends what the pacer held back.
                Timer::Pacing => {}
                Timer::Shutdown => self.on_shutdown_timeout(now),
            }
        }
    }

    /// A round-trip time measured on the path already (ICE's checks), before
    /// [`Self::connect`]: the handshake's retransmission timer and the first pacing rate start
    /// from it instead of [`Config::rto_initial`].
    pub fn set_rtt_hint(&mut self, rtt: Duration) {
        if !self.rtt.has_sample() {
            self.rtt.update(rtt);
            self.bbr.on_handshake_rtt(rtt);
        }
    }

    /// The peer's SCTP port (from its SDP), before [`Self::connect`].
    pub fn set_remote_port(&mut self, port: u16) {
        self.config.remote_port = port;
    }

    /// Give a buffer from [`Self::poll_transmit`] back for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.spare.len() < 64 {
            self.spare.push(buf);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Input
    // -----------------------------------------------------------------------------------------

    /// Handle one packet from the peer (a decrypted DTLS record).
    pub fn handle_input(&mut self, now: Instant, packet: Bytes) -> Result<(), InputError> {
        if matches!(self.state, State::Terminated) {
            return Err(InputError::Terminated);
        }
        let packet = match Packet::parse(&packet, self.config.zero_checksum) {
            Ok(p) => p,
            Err(e) => {
                self.stats.packets_refused += 1;
                return Err(e.into());
            }
        };
        self.stats.packets_received += 1;
        let tag = packet.header.verification_tag;
        let first_is_init = matches!(packet.chunks.first(), Some(Chunk::Init(_)));
        if first_is_init {
            if tag != 0 || packet.chunks.len() != 1 {
                self.stats.packets_refused += 1;
                return Err(InputError::WrongTag {
                    found: tag,
                    expected: 0,
                });
            }
        } else {
            let t_bit_ok = packet.chunks.iter().any(|c| {
                matches!(c, Chunk::Abort(a) if a.t_bit)
                    || matches!(c, Chunk::ShutdownComplete { t_bit: true })
            }) && self.peer.is_some_and(|p| p.tag == tag);
            if tag != self.my_tag && !t_bit_ok {
                self.stats.packets_refused += 1;
                return Err(InputError::WrongTag {
                    found: tag,
                    expected: self.my_tag,
                });
            }
        }
        let mut had_data = false;
        for chunk in packet.chunks {
            if matches!(self.state, State::Terminated) {
                break;
            }
            match chunk {
                Chunk::Data(d) => {
                    had_data = true;
                    self.on_data(now, d);
                }
                Chunk::Init(init) => self.on_init(init),
                Chunk::InitAck(init) => self.on_init_ack(now, init),
                Chunk::CookieEcho(cookie) => self.on_cookie_echo(now, &cookie),
                Chunk::CookieAck => self.on_cookie_ack(now),
                Chunk::Sack(sack) => self.on_sack(now, &sack),
                Chunk::Heartbeat(info) => self.push_control(Chunk::HeartbeatAck(info)),
                Chunk::HeartbeatAck(_) => {}
                Chunk::ForwardTsn(f) => self.on_forward_tsn(now, &f),
                Chunk::Reconfig(params) => self.on_reconfig(now, params),
                Chunk::Abort(a) => {
                    tracing::info!(reason = %a.reason(), "SCTP ABORT from the peer");
                    self.terminate(CloseReason::PeerAborted(a.reason()));
                }
                Chunk::Shutdown(s) => self.on_shutdown(now, &s),
                Chunk::ShutdownAck => self.on_shutdown_ack(),
                Chunk::ShutdownComplete { .. } => {
                    if matches!(self.state, State::ShutdownAckSent) {
                        self.terminate(CloseReason::ShutdownComplete);
                    }
                }
                Chunk::Error(causes) => {
                    tracing::debug!(
                        causes = %crate::wire::describe_causes(&causes),
                        "SCTP ERROR from the peer"
                    );
                }
                Chunk::Unknown(u) => {
                    tracing::debug!(
                        kind = u.kind,
                        report = u.report(),
                        "unknown SCTP chunk type"
                    );
                }
            }
        }
        if had_data {
            self.sack.packets += 1;
            if self.sack.packets >= 2 {
                self.sack.immediate = true;
            } else if !self.sack.immediate && !self.timers.is_armed(Timer::Sack) {
                self.timers.set(Timer::Sack, now + self.config.delayed_ack);
            }
        }
        Ok(())
    }

    fn on_init(&mut self, init: InitChunk) {
        match self.state {
            State::Closed | State::CookieWait | State::CookieEchoed { .. } => {}
            State::Established => {
                // A restart; the cookie echo that would follow is refused as a restart.
                tracing::debug!("INIT on an established association");
            }
            _ => return,
        }
        let cookie = cookie::encode(
            &self.cookie_secret,
            &CookieContents {
                my_tag: self.my_tag,
                peer_tag: init.initiate_tag,
                peer_initial_tsn: init.initial_tsn,
                peer_a_rwnd: init.a_rwnd,
                peer_outbound_streams: init.outbound_streams,
                peer_inbound_streams: init.inbound_streams,
                peer_forward_tsn: init.params.forward_tsn,
                peer_reconfig: init.params.supports(chunk_type::RECONFIG),
                peer_zero_checksum: init.params.zero_checksum == Some(ZERO_CHECKSUM_EDMID_DTLS),
                made_at_ms: self.created.elapsed().as_millis() as u64,
            },
        );
        let mut ack = self.my_init();
        ack.params.cookie = Some(cookie);
        self.control.push_back(Control {
            chunk: Chunk::InitAck(ack),
            tag: Some(init.initiate_tag),
        });
    }

    fn on_init_ack(&mut self, now: Instant, init: InitChunk) {
        if !matches!(self.state, State::CookieWait) {
            return;
        }
        let Some(cookie) = init.params.cookie.clone() else {
            return;
        };
        self.timers.stop(Timer::Init);
        self.backoff = 0;
        if let Some(sent) = self.init_sent_at.take() {
            let rtt = now.saturating_duration_since(sent);
            self.rtt.update(rtt);
            self.bbr.on_handshake_rtt(rtt);
        }
        self.learn_peer(
            init.initiate_tag,
            init.initial_tsn,
            init.a_rwnd,
            init.outbound_streams.min(init.inbound_streams),
            &init.params,
        );
        self.transition(
            State::CookieEchoed {
                cookie: cookie.clone(),
            },
            "INIT ACK",
        );
        self.push_control(Chunk::CookieEcho(cookie));
        self.timers.set(Timer::Cookie, now + self.backed_off_rto());
    }

    fn on_cookie_echo(&mut self, now: Instant, raw: &[u8]) {
        let now_ms = now.saturating_duration_since(self.created).as_millis() as u64;
        let c = match cookie::decode(
            &self.cookie_secret,
            raw,
            self.my_tag,
            now_ms,
            COOKIE_LIFETIME_MS,
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = ?e, "COOKIE ECHO refused");
                return;
            }
        };
        match self.state {
            State::Established | State::ShutdownPending | State::ShutdownReceived => {
                if self.peer.is_some_and(|p| p.tag == c.peer_tag) {
                    // Our COOKIE ACK was lost.
                    self.push_control(Chunk::CookieAck);
                } else {
                    self.queue_abort(13, "association restart is not supported");
                    self.terminate(CloseReason::ProtocolViolation(
                        "the peer restarted the association".into(),
                    ));
                }
                return;
            }
            State::Closed | State::CookieWait | State::CookieEchoed { .. } => {}
            _ => return,
        }
        if let Some(peer) = self.peer
            && peer.tag != c.peer_tag
        {
            tracing::debug!("COOKIE ECHO from another INIT than the INIT ACK we got; using it");
            self.tracker = None;
        }
        let params = InitParams {
            forward_tsn: c.peer_forward_tsn,
            extensions: if c.peer_reconfig {
                vec![chunk_type::RECONFIG]
            } else {
                Vec::new()
            },
            zero_checksum: c.peer_zero_checksum.then_some(ZERO_CHECKSUM_EDMID_DTLS),
            cookie: None,
        };
        self.learn_peer(
            c.peer_tag,
            c.peer_initial_tsn,
            c.peer_a_rwnd,
            c.peer_outbound_streams.min(c.peer_inbound_streams),
            &params,
        );
        self.push_control(Chunk::CookieAck);
        self.establish(now, "COOKIE ECHO");
    }

    fn on_cookie_ack(&mut self, now: Instant) {
        if matches!(self.state, State::CookieEchoed { .. }) {
            self.establish(now, "COOKIE ACK");
        }
    }

    fn learn_peer(
        &mut self,
        tag: u32,
        initial_tsn: u32,
        a_rwnd: u32,
        streams: u16,
        params: &InitParams,
    ) {
        self.peer = Some(Peer {
            tag,
            a_rwnd,
            forward_tsn: params.forward_tsn,
            reconfig: params.supports(chunk_type::RECONFIG),
            zero_checksum: self.config.zero_checksum
                && params.zero_checksum == Some(ZERO_CHECKSUM_EDMID_DTLS),
            streams: streams.min(self.config.streams),
        });
        if self.tracker.is_none() {
            self.tracker = Some(DataTracker::new(initial_tsn));
            self.reconfig.peer_next_seq = initial_tsn;
        }
    }

    fn establish(&mut self, now: Instant, why: &str) {
        self.timers.stop(Timer::Init);
        self.timers.stop(Timer::Cookie);
        self.backoff = 0;
        self.transition(State::Established, why);
        self.events.push_back(Event::Connected);
        if self.inflight.has_outstanding() {
            self.timers.set(Timer::Rto, now + self.backed_off_rto());
        }
    }

    fn on_data(&mut self, now: Instant, chunk: DataChunk) {
        if matches!(self.state, State::CookieEchoed { .. }) {
            // The peer's COOKIE ACK was lost, but its DATA proves it is established.
            self.establish(now, "DATA while cookie-echoed");
        }
        if !self.state.carries_data() && !matches!(self.state, State::ShutdownSent) {
            return;
        }
        let Some(tracker) = self.tracker.as_mut() else {
            return;
        };
        self.sack.pending = true;
        let tsn = tracker.unwrap(chunk.tsn);
        if tracker.has(tsn) {
            tracker.note_duplicate(chunk.tsn);
            self.stats.duplicates_received += 1;
            self.sack.immediate = true;
            return;
        }
        // Past the window only the next TSN gets in, and only to complete a message whose other
        // fragments are held (else reassembly could wait forever for it).
        let held =
            self.reassembly.held() + self.undelivered + chunk.payload.len() + MESSAGE_OVERHEAD;
        let window = self.config.receive_window as usize;
        let completes = tsn == tracker.cumulative() + 1
            && self.reassembly.held() > 0
            && held <= window + self.config.max_message_size;
        if held > window && !completes {
            self.stats.dropped_for_window += 1;
            self.sack.immediate = true;
            return;
        }
        tracker.record(tsn);
        if tracker.has_gaps() || chunk.immediate {
            self.sack.immediate = true;
        }
        let mut out = VecDeque::new();
        if let Err(ReassemblyError::TooLarge { size, max }) =
            self.reassembly.insert(tsn, chunk, &mut out)
        {
            let reason = format!("a message of at least {size} bytes exceeds the maximum {max}");
            self.queue_abort(13, &reason);
            self.terminate(CloseReason::ProtocolViolation(reason));
            return;
        }
        self.deliver(out);
        self.perform_deferred_reset();
    }

    fn deliver(&mut self, messages: VecDeque<Message>) {
        for m in messages {
            self.undelivered += m.data.len() + MESSAGE_OVERHEAD;
            self.events.push_back(Event::Message(m));
        }
    }

    fn on_forward_tsn(&mut self, _now: Instant, f: &ForwardTsnChunk) {
        if !self.state.carries_data() {
            return;
        }
        let Some(tracker) = self.tracker.as_mut() else {
            return;
        };
        self.sack.pending = true;
        self.sack.immediate = true;
        let new = tracker.unwrap(f.new_cumulative_tsn);
        if !tracker.forward_to(new) {
            return;
        }
        let mut out = VecDeque::new();
        self.reassembly.forward(new, &f.streams, &mut out);
        self.deliver(out);
        self.perform_deferred_reset();
    }

    fn on_sack(&mut self, now: Instant, sack: &SackChunk) {
        if matches!(self.state, State::CookieEchoed { .. }) {
            self.establish(now, "SACK while cookie-echoed");
        }
        if matches!(
            self.state,
            State::Closed | State::CookieWait | State::Terminated
        ) {
            return;
        }
        let out = match self.inflight.on_sack(now, sack, self.rtt.min()) {
            Ok(out) => out,
            Err(SackRejected::Stale) => return,
            Err(SackRejected::Bogus) => {
                tracing::debug!(
                    cum = sack.cumulative_tsn,
                    "SACK for TSNs never sent ignored"
                );
                return;
            }
        };
        if let Some(peer) = self.peer.as_mut() {
            peer.a_rwnd = sack.a_rwnd;
        }
        if let Some(rtt) = out.rtt_sample {
            self.rtt.update(rtt);
        }
        if out.acked_bytes > 0 {
            self.probe_outstanding = false;
            self.backoff = 0;
            self.stats.bytes_acked += out.acked_bytes as u64;
        }
        let lost = self.detect_losses(now);
        self.bbr.on_ack(&AckEvent {
            now,
            acked: out.acked_bytes,
            lost,
            delivered: self.inflight.delivered(),
            prior_inflight: out.prior_inflight,
            inflight: self.inflight.flight_bytes(),
            sample: out.rate_sample,
        });
        if self.inflight.has_outstanding() {
            if out.cumulative_advanced || !self.timers.is_armed(Timer::Rto) {
                self.timers.set(Timer::Rto, now + self.backed_off_rto());
            }
            if out.acked_bytes > 0 {
                self.arm_probe(now);
            }
        } else {
            self.timers.stop(Timer::Rto);
            self.timers.stop(Timer::Probe);
            self.timers.stop(Timer::Reorder);
        }
        self.check_forward_tsn();
        self.start_reset(now);
        self.check_shutdown_progress(now);
    }

    /// RACK over what is in flight; abandons messages out of tries. Returns the bytes lost.
    fn detect_losses(&mut self, now: Instant) -> usize {
        let mut abandon = Vec::new();
        let (lost, timer) =
            self.inflight
                .detect_losses(now, self.rtt.srtt(), self.rtt.min(), &mut abandon);
        match timer {
            Some(at) => self.timers.set(Timer::Reorder, at),
            None => self.timers.stop(Timer::Reorder),
        }
        for (stream, message) in abandon {
            self.abandon(stream, message);
        }
        lost
    }

    fn abandon(&mut self, stream: u16, message: u64) {
        if !self.peer.is_some_and(|p| p.forward_tsn) {
            return;
        }
        self.inflight.abandon(stream, message);
        self.queue.discard_rest(stream, message);
        self.stats.messages_abandoned += 1;
        self.check_forward_tsn();
    }

    fn check_forward_tsn(&mut self) {
        if self.peer.is_some_and(|p| p.forward_tsn) && self.inflight.forward_tsn().is_some() {
            self.forward_tsn_pending = true;
        }
    }

    fn on_reconfig(&mut self, now: Instant, params: Vec<ReconfigParam>) {
        let mut answers = Vec::new();
        for param in params {
            match param {
                ReconfigParam::OutgoingReset {
                    request_seq,
                    last_tsn,
                    streams,
                    ..
                } => {
                    let result = self.on_peer_reset(request_seq, last_tsn, streams);
                    answers.push(ReconfigParam::Response {
                        response_seq: request_seq,
                        result,
                    });
                }
                ReconfigParam::IncomingReset { request_seq, .. }
                | ReconfigParam::Unsupported {
                    request_seq: Some(request_seq),
                    ..
                } => {
                    let result = match self.reconfig.classify(request_seq) {
                        RequestAge::New => {
                            self.reconfig.peer_next_seq = request_seq.wrapping_add(1);
                            self.reconfig.last_answer = Some((request_seq, ReconfigResult::Denied));
                            ReconfigResult::Denied
                        }
                        RequestAge::Repeat => ReconfigResult::Denied,
                        RequestAge::Bad => ReconfigResult::ErrorBadSequenceNumber,
                    };
                    answers.push(ReconfigParam::Response {
                        response_seq: request_seq,
                        result,
                    });
                }
                ReconfigParam::Unsupported { .. } => {}
                ReconfigParam::Response {
                    response_seq,
                    result,
                } => self.on_reset_response(now, response_seq, result),
            }
        }
        if !answers.is_empty() {
            self.push_control(Chunk::Reconfig(answers));
        }
    }

    fn on_peer_reset(&mut self, seq: u32, last_tsn: u32, streams: Vec<u16>) -> ReconfigResult {
        let Some(tracker) = self.tracker.as_ref() else {
            return ReconfigResult::Denied;
        };
        match self.reconfig.classify(seq) {
            RequestAge::Bad => return ReconfigResult::ErrorBadSequenceNumber,
            RequestAge::Repeat => {
                self.perform_deferred_reset();
                return self
                    .reconfig
                    .last_answer
                    .filter(|(s, _)| *s == seq)
                    .map_or(ReconfigResult::SuccessNothingToDo, |(_, r)| r);
            }
            RequestAge::New => {}
        }
        self.reconfig.peer_next_seq = seq.wrapping_add(1);
        let last = tracker.unwrap(last_tsn);
        self.reconfig.deferred = Some(DeferredReset {
            seq,
            last_tsn: last,
            streams,
        });
        self.reconfig.last_answer = Some((seq, ReconfigResult::InProgress));
        self.perform_deferred_reset();
        self.reconfig
            .last_answer
            .map_or(ReconfigResult::InProgress, |(_, r)| r)
    }

    /// Perform the peer's reset once everything it sent before it has arrived.
    fn perform_deferred_reset(&mut self) {
        let Some(tracker) = self.tracker.as_ref() else {
            return;
        };
        let Some(d) = self.reconfig.deferred.as_ref() else {
            return;
        };
        if tracker.cumulative() < d.last_tsn {
            return;
        }
        let Some(d) = self.reconfig.deferred.take() else {
            return;
        };
        for s in &d.streams {
            self.reassembly.reset_stream(*s);
        }
        self.reconfig.last_answer = Some((d.seq, ReconfigResult::SuccessPerformed));
        self.events
            .push_back(Event::IncomingStreamsReset(d.streams));
    }

    fn on_reset_response(&mut self, now: Instant, seq: u32, result: ReconfigResult) {
        let Some(req) = self.reconfig.outstanding.as_ref() else {
            return;
        };
        if req.seq != seq {
            return;
        }
        match result {
            ReconfigResult::InProgress => {
                // Asked again when the timer fires.
            }
            ReconfigResult::SuccessPerformed | ReconfigResult::SuccessNothingToDo => {
                let Some(req) = self.reconfig.outstanding.take() else {
                    return;
                };
                self.timers.stop(Timer::Reconfig);
                for s in &req.streams {
                    self.reconfig.resetting.remove(s);
                    self.queue.reset_ssn(*s);
                }
                self.events
                    .push_back(Event::OutgoingStreamsReset(req.streams));
                self.start_reset(now);
            }
            other => {
                let Some(req) = self.reconfig.outstanding.take() else {
                    return;
                };
                tracing::debug!(result = ?other, streams = ?req.streams, "stream reset refused");
                self.timers.stop(Timer::Reconfig);
                for s in &req.streams {
                    self.reconfig.resetting.remove(s);
                }
                self.events.push_back(Event::StreamResetFailed(req.streams));
                self.start_reset(now);
            }
        }
    }

    /// Send a reset request for the pending streams whose queued data all went out.
    fn start_reset(&mut self, now: Instant) {
        if self.reconfig.outstanding.is_some()
            || self.reconfig.pending.is_empty()
            || !matches!(self.state, State::Established)
        {
            return;
        }
        if !self.peer.is_some_and(|p| p.reconfig) {
            // The peer cannot reset streams: report the streams closed locally.
            let streams: Vec<u16> = std::mem::take(&mut self.reconfig.pending)
                .into_iter()
                .collect();
            self.events.push_back(Event::StreamResetFailed(streams));
            return;
        }
        let ready: Vec<u16> = self
            .reconfig
            .pending
            .iter()
            .copied()
            .filter(|s| self.queue.is_drained(*s))
            .collect();
        if ready.is_empty() {
            return;
        }
        for s in &ready {
            self.reconfig.pending.remove(s);
        }
        let seq = self.reconfig.next_seq;
        self.reconfig.next_seq = seq.wrapping_add(1);
        let req = OutgoingRequest {
            seq,
            streams: ready,
            last_tsn: self.inflight.last_assigned() as u32,
            sent_at: now,
        };
        self.send_reset_request(&req);
        self.reconfig.outstanding = Some(req);
        self.timers
            .set(Timer::Reconfig, now + self.backed_off_rto());
    }

    fn send_reset_request(&mut self, req: &OutgoingRequest) {
        let response_seq = self.reconfig.peer_next_seq.wrapping_sub(1);
        self.push_control(Chunk::Reconfig(vec![ReconfigParam::OutgoingReset {
            request_seq: req.seq,
            response_seq,
            last_tsn: req.last_tsn,
            streams: req.streams.clone(),
        }]));
    }

    fn on_reconfig_timeout(&mut self, now: Instant) {
        if let Some(req) = self.reconfig.outstanding.clone() {
            tracing::trace!(
                waited_ms = now.saturating_duration_since(req.sent_at).as_millis() as u64,
                "stream reset request sent again"
            );
            self.send_reset_request(&req);
            self.timers
                .set(Timer::Reconfig, now + self.backed_off_rto());
        }
    }

    fn on_shutdown(&mut self, now: Instant, s: &ShutdownChunk) {
        if !matches!(
            self.state,
            State::Established | State::ShutdownPending | State::ShutdownSent
        ) {
            return;
        }
        // SHUTDOWN carries a cumulative ack.
        self.on_sack(
            now,
            &SackChunk {
                cumulative_tsn: s.cumulative_tsn,
                a_rwnd: self.peer.map_or(0, |p| p.a_rwnd),
                gaps: Vec::new(),
                duplicates: Vec::new(),
            },
        );
        if !matches!(self.state, State::ShutdownSent) {
            self.transition(State::ShutdownReceived, "SHUTDOWN");
        }
        self.check_shutdown_progress(now);
    }

    fn on_shutdown_ack(&mut self) {
        if matches!(self.state, State::ShutdownSent | State::ShutdownAckSent) {
            self.push_control(Chunk::ShutdownComplete { t_bit: false });
            self.terminate(CloseReason::ShutdownComplete);
        }
    }

    fn check_shutdown_progress(&mut self, now: Instant) {
        let drained = self.queue.is_empty() && !self.inflight.has_outstanding();
        if !drained {
            return;
        }
        match self.state {
            State::ShutdownPending => {
                self.send_shutdown();
                self.transition(State::ShutdownSent, "everything acknowledged");
                self.timers
                    .set(Timer::Shutdown, now + self.backed_off_rto());
            }
            State::ShutdownReceived => {
                self.push_control(Chunk::ShutdownAck);
                self.transition(State::ShutdownAckSent, "everything acknowledged");
                self.timers
                    .set(Timer::Shutdown, now + self.backed_off_rto());
            }
            _ => {}
        }
    }

    fn send_shutdown(&mut self) {
        let cumulative_tsn = self.tracker.as_ref().map_or(0, |t| t.cumulative_wire());
        self.push_control(Chunk::Shutdown(ShutdownChunk { cumulative_tsn }));
    }

    fn on_shutdown_timeout(&mut self, now: Instant) {
        self.backoff += 1;
        if self.backoff > self.config.max_init_retransmits {
            self.terminate(CloseReason::TooManyRetransmissions);
            return;
        }
        match self.state {
            State::ShutdownSent => self.send_shutdown(),
            State::ShutdownAckSent => self.push_control(Chunk::ShutdownAck),
            _ => return,
        }
        self.timers
            .set(Timer::Shutdown, now + self.backed_off_rto());
    }

    // -----------------------------------------------------------------------------------------
    // Timers
    // -----------------------------------------------------------------------------------------

    fn on_init_timeout(&mut self, now: Instant) {
        if !matches!(self.state, State::CookieWait) {
            return;
        }
        self.backoff += 1;
        if self.backoff > self.config.max_init_retransmits {
            self.terminate(CloseReason::HandshakeTimeout);
            return;
        }
        tracing::debug!(attempt = self.backoff, "INIT unanswered, sent again");
        self.send_init(now);
        self.init_sent_at = None;
    }

    fn on_cookie_timeout(&mut self, now: Instant) {
        let State::CookieEchoed { cookie } = &self.state else {
            return;
        };
        let cookie = cookie.clone();
        self.backoff += 1;
        if self.backoff > self.config.max_init_retransmits {
            self.terminate(CloseReason::HandshakeTimeout);
            return;
        }
        tracing::debug!(attempt = self.backoff, "COOKIE ECHO unanswered, sent again");
        self.push_control(Chunk::CookieEcho(cookie));
        self.timers.set(Timer::Cookie, now + self.backed_off_rto());
    }

    fn on_rto(&mut self, now: Instant) {
        if !self.inflight.has_outstanding() {
            return;
        }
        self.stats.timeouts += 1;
        self.backoff += 1;
        if self
            .config
            .max_retransmits
            .is_some_and(|max| self.backoff > max)
        {
            self.queue_abort(12, "too many retransmissions");
            self.terminate(CloseReason::TooManyRetransmissions);
            return;
        }
        let lost = self.inflight.on_timeout();
        tracing::debug!(
            lost,
            backoff = self.backoff,
            rto_ms = self.backed_off_rto().as_millis() as u64,
            "SCTP retransmission timeout"
        );
        self.bbr.on_rto();
        // No tail loss probe until an acknowledgement shows the path works again: during an
        // outage only the (backed-off) timer retransmits.
        self.probe_outstanding = true;
        self.timers.stop(Timer::Probe);
        self.timers.stop(Timer::Reorder);
        self.timers.set(Timer::Rto, now + self.backed_off_rto());
    }

    fn on_probe(&mut self, now: Instant) {
        if !self.inflight.has_outstanding() || self.probe_outstanding {
            return;
        }
        self.stats.probes += 1;
        self.probe_outstanding = true;
        self.cwnd_bypass = true;
        let has_new = !self.queue.is_empty()
            && self
                .peer
                .is_some_and(|p| p.a_rwnd as usize > self.inflight.flight_bytes());
        if !has_new && let Some(tsn) = self.inflight.last_in_flight() {
            self.inflight.probe(tsn);
        }
        self.timers.set(Timer::Rto, now + self.backed_off_rto());
    }

    fn arm_probe(&mut self, now: Instant) {
        if self.probe_outstanding || !self.rtt.has_sample() {
            return;
        }
        let mut pto = self.rtt.srtt() * 2;
        if self.inflight.flight_bytes() <= self.config.max_packet_size {
            pto += self.config.delayed_ack;
        }
        let pto = pto.max(Duration::from_millis(10));
        let at = now + pto;
        if self.timers.get(Timer::Rto).is_some_and(|rto| rto <= at) {
            self.timers.stop(Timer::Probe);
            return;
        }
        self.timers.set(Timer::Probe, at);
    }

    /// The RTO with the current backoff, capped by `max_backoff` (never below the plain RTO).
    fn backed_off_rto(&self) -> Duration {
        let base = self.rtt.rto();
        let factor = 1u32 << self.backoff.min(16);
        let backed = base.saturating_mul(factor);
        backed.min(self.config.max_backoff.max(base))
    }

    // -----------------------------------------------------------------------------------------
    // Output
    // -----------------------------------------------------------------------------------------

    /// The next packet to send, if any (DTLS-encrypt it and send it on the selected path).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if !self.reconfig.pending.is_empty() {
            self.start_reset(now);
        }
        // INIT and INIT ACK go alone, with their own verification tag.
        if let Some(front) = self.control.front()
            && let Some(tag) = front.tag
        {
            let control = self.control.pop_front()?;
            let header = self.header(tag);
            let mut w = PacketWriter::new(self.buffer(), header, usize::MAX);
            w.push(&control.chunk);
            self.stats.packets_sent += 1;
            return Some(w.finish(false));
        }
        let peer = self.peer?;
        let header = self.header(peer.tag);
        let mut w = PacketWriter::new(self.buffer(), header, self.config.max_packet_size);
        let mut bundled_cookie = false;
        while let Some(front) = self.control.front() {
            if front.tag.is_some() {
                break;
            }
            let len = front.chunk.encoded_len();
            if len > w.remaining() && !w.is_empty() {
                break;
            }
            let Some(control) = self.control.pop_front() else {
                break;
            };
            bundled_cookie |= matches!(control.chunk, Chunk::CookieEcho(_));
            w.push(&control.chunk);
        }
        let data_allowed = self.state.carries_data() || bundled_cookie;
        let wants_data = data_allowed && (self.inflight.has_lost() || !self.queue.is_empty());
        let paced = wants_data && self.config.pacing && !self.cwnd_bypass;
        let pacing_ok = if paced {
            match self
                .pacer
                .check(now, self.bbr.pacing_rate(), self.config.max_packet_size)
            {
                Ok(()) => true,
                Err(at) => {
                    self.timers.set(Timer::Pacing, at);
                    false
                }
            }
        } else {
            true
        };
        let send_sack = self.sack.pending
            && (self.sack.immediate || !w.is_empty() || (wants_data && pacing_ok));
        let window = self.receive_window();
        if send_sack && let Some(tracker) = self.tracker.as_mut() {
            let sack = tracker.sack(window);
            let len = Chunk::Sack(sack.clone()).encoded_len();
            if len <= w.remaining() {
                w.push(&Chunk::Sack(sack));
                self.sack = SackState {
                    last_window: window,
                    ..SackState::default()
                };
                self.timers.stop(Timer::Sack);
            }
        }
        if self.forward_tsn_pending && self.state.carries_data() {
            if let Some((new_cumulative_tsn, streams)) = self.inflight.forward_tsn() {
                let chunk = Chunk::ForwardTsn(ForwardTsnChunk {
                    new_cumulative_tsn,
                    streams,
                });
                if chunk.encoded_len() <= w.remaining() {
                    w.push(&chunk);
                    self.forward_tsn_pending = false;
                }
            } else {
                self.forward_tsn_pending = false;
            }
        }
        let mut sent_data = false;
        if wants_data && pacing_ok {
            sent_data = self.fill_data(now, &mut w);
        }
        if w.is_empty() {
            let buf = w.finish(true);
            self.recycle(buf);
            return None;
        }
        let zero_checksum = peer.zero_checksum;
        let packet = w.finish(zero_checksum);
        if paced && sent_data {
            self.pacer.on_send(packet.len());
        }
        self.stats.packets_sent += 1;
        if sent_data {
            if !self.timers.is_armed(Timer::Rto) {
                self.timers.set(Timer::Rto, now + self.backed_off_rto());
            }
            if !self.timers.is_armed(Timer::Probe) {
                self.arm_probe(now);
            }
        }
        Some(packet)
    }

    /// Put DATA (retransmissions first) into the packet, within the windows. Returns whether
    /// any went in.
    fn fill_data(&mut self, now: Instant, w: &mut PacketWriter) -> bool {
        let mut any = false;
        loop {
            let cwnd_ok = self.inflight.flight_bytes() < self.bbr.cwnd() || self.cwnd_bypass;
            if let Some((tsn, size)) = self.inflight.peek_lost() {
                if let Some((stream, message)) = self.inflight.should_abandon(now, tsn)
                    && self.peer.is_some_and(|p| p.forward_tsn)
                {
                    self.abandon(stream, message);
                    continue;
                }
                if size > w.remaining() || !cwnd_ok {
                    break;
                }
                let Some(chunk) = self.inflight.retransmit(now, tsn) else {
                    continue;
                };
                w.push_data(&chunk);
                self.stats.data_chunks_retransmitted += 1;
                self.cwnd_bypass = false;
                any = true;
                continue;
            }
            if self.queue.is_empty() || !cwnd_ok {
                break;
            }
            let flight = self.inflight.flight_bytes();
            let peer_window = self.peer.map_or(0, |p| p.a_rwnd as usize);
            let room = w.remaining().saturating_sub(DATA_HEADER_LEN) & !3;
            if room < MIN_FRAGMENT.min(w.remaining()) || room == 0 {
                break;
            }
            if flight + room > peer_window && flight > 0 {
                break;
            }
            let Some(fragment) = self.queue.next_fragment(now, room, &mut self.expired) else {
                break;
            };
            let size = DataChunk::encoded_len_for(fragment.payload.len());
            let chunk = self.inflight.send_new(now, fragment, size);
            w.push_data(&chunk);
            self.stats.data_chunks_sent += 1;
            self.cwnd_bypass = false;
            any = true;
        }
        if !self.expired.is_empty() {
            self.stats.messages_abandoned += self.expired.len() as u64;
            self.expired.clear();
        }
        if self.queue.is_empty()
            && !self.inflight.has_lost()
            && self.inflight.flight_bytes() < self.bbr.cwnd()
        {
            self.inflight.mark_app_limited();
        }
        if any {
            self.start_reset(now);
        }
        any
    }

    // -----------------------------------------------------------------------------------------
    // Helpers
    // -----------------------------------------------------------------------------------------

    fn send_init(&mut self, now: Instant) {
        let init = self.my_init();
        self.control.push_back(Control {
            chunk: Chunk::Init(init),
            tag: Some(0),
        });
        self.init_sent_at = Some(now);
        self.timers.set(Timer::Init, now + self.backed_off_rto());
    }

    fn my_init(&self) -> InitChunk {
        InitChunk {
            initiate_tag: self.my_tag,
            a_rwnd: self.config.receive_window,
            outbound_streams: self.config.streams,
            inbound_streams: self.config.streams,
            initial_tsn: self.my_initial_tsn,
            params: InitParams {
                forward_tsn: true,
                extensions: vec![chunk_type::FORWARD_TSN, chunk_type::RECONFIG],
                zero_checksum: self
                    .config
                    .zero_checksum
                    .then_some(ZERO_CHECKSUM_EDMID_DTLS),
                cookie: None,
            },
        }
    }

    fn header(&self, tag: u32) -> CommonHeader {
        CommonHeader {
            source_port: self.config.local_port,
            destination_port: self.config.remote_port,
            verification_tag: tag,
        }
    }

    fn buffer(&mut self) -> Vec<u8> {
        self.spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.config.max_packet_size + COMMON_HEADER_LEN))
    }

    fn push_control(&mut self, chunk: Chunk) {
        self.control.push_back(Control { chunk, tag: None });
    }

    fn queue_abort(&mut self, cause: u16, reason: &str) {
        if self.peer.is_none() {
            return;
        }
        let info: String = reason.chars().take(200).collect();
        self.control.clear();
        self.push_control(Chunk::Abort(AbortChunk {
            t_bit: false,
            causes: Bytes::from(crate::wire::error_cause(cause, info.as_bytes())),
        }));
    }

    fn receive_window(&self) -> u32 {
        let held = self.reassembly.held() + self.undelivered;
        (self.config.receive_window as usize).saturating_sub(held) as u32
    }

    fn transition(&mut self, new: State, reason: &str) {
        tracing::debug!("SCTP {} -> {} ({reason})", self.state.name(), new.name());
        self.state = new;
    }

    fn terminate(&mut self, reason: CloseReason) {
        if matches!(self.state, State::Terminated) {
            return;
        }
        self.transition(State::Terminated, &reason.to_string());
        self.timers.clear();
        self.events.push_back(Event::Closed(reason));
    }
}
