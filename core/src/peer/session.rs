//! [`PeerSession`]: one peer connection as a sans-IO state machine — signaling (offer/answer,
//! trickle), ICE, DTLS, SCTP and data channels — with time as an input.
//!
//! Inputs: [`PeerSession::handle_signal`], [`PeerSession::handle_datagram`],
//! [`PeerSession::handle_timeout`], the gathering results the driver learns
//! ([`PeerSession::add_relay_candidate`], [`PeerSession::update_relays`],
//! [`PeerSession::add_stun_servers`]) and the application's commands. Outputs:
//! [`PeerSession::poll_transmit`], [`PeerSession::poll_signal`], [`PeerSession::poll_event`] and
//! [`PeerSession::poll_timeout`] (with the reason of the next deadline). After any input, drain
//! all outputs until each is empty, then wait for the next timeout.
//!
//! ## ICE restarts
//!
//! Once the connection is up, an ICE restart ([`PeerSession::restart_ice`]) moves it to
//! another path without touching DTLS, SCTP or the channels: new ICE credentials and
//! candidates go out in an offer, the peer restarts too and answers, and checks find the new
//! path while the data keeps going on the old one (see [`super::ice`]). It starts when the
//! application says the network changed ([`PeerSession::network_changed`]), or on its own when
//! nothing was heard from the peer for [`RESTART_AFTER_SILENCE`]. Either side may start one;
//! when both do at once (glare), the offerer's goes on and the answerer answers it with the
//! credentials of its own. An attempt that did not find a path within [`RESTART_RETRY`] is
//! followed by another; with no path at all for [`RESTART_BUDGET`] the connection fails.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proxim_protocol::{CandidateLine, Sdp, ShortText, Signal};
use proxim_sctp::{Association, Event as SctpEvent, SendOptions};

use super::channels::{ChannelId, ChannelPhase, Channels};
use super::dcep::{self, DcepMessage};
use super::dtls::{DtlsState, DtlsTransport};
use super::ice::candidate::priority;
use super::ice::{Credentials, IceAgent, IceConfig, IceEvent, IceState, LocalCandidate};
use super::sdp::{LocalDescription, RemoteDescription, Setup};
use super::stun_binding::{BindingOutput, BindingResult, StunBinding};
use super::{
    CandidateInfo, CandidateKind, ChannelOptions, ConnectionState, ConnectionStats,
    DEFAULT_CHANNEL, Payload, PeerError, PeerRole,
};
use crate::auth::{AuthMessage, Fingerprint};
use crate::turn::TurnTransport;

/// How long a closing channel or connection waits for what it sent to be acknowledged.
pub(crate) const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// With both sides done gathering and no pair to try, give up this long after the last
/// candidate arrived.
const NO_PAIR_GIVE_UP: Duration = Duration::from_secs(3);
/// Signaling ended during setup while the peer's packets arrive on the direct path: how long
/// setup may still take before the session fails with the link's end.
pub(crate) const LINK_END_GRACE: Duration = Duration::from_secs(5);

/// ICE silent (disconnected) this long after [`super::ice::IceConfig::disconnected_after`]:
/// restart it.
pub(crate) const RESTART_AFTER_SILENCE: Duration = Duration::from_secs(2);
/// An ICE restart that selected no pair in this long is tried again.
pub(crate) const RESTART_RETRY: Duration = Duration::from_secs(8);
/// No path at all (the old one gone, no new one found) this long after the first restart
/// attempt: the connection fails.
pub(crate) const RESTART_BUDGET: Duration = Duration::from_secs(30);
/// No application data either way for this long: the connection is idle, and ICE checks
/// consent at its idle pace (a desktop left open costs a few datagrams a minute).
pub(crate) const IDLE_AFTER: Duration = Duration::from_secs(30);

/// How one session is set up.
#[derive(Debug, Clone)]
pub(crate) struct SessionConfig {
    pub(crate) role: PeerRole,
    pub(crate) force_relay: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) stun_timeout: Duration,
    pub(crate) certificate: rtc::dtls::crypto::Certificate,
    /// SHA-256 of this side's certificate.
    pub(crate) fingerprint: [u8; 32],
    pub(crate) expected_remote_fingerprint: Option<Fingerprint>,
    /// Whether the signaling server offered TURN relays.
    pub(crate) relays_offered: bool,
    pub(crate) ice: IceConfig,
    pub(crate) sctp: proxim_sctp::Config,
    /// A fixed first DTLS retransmission interval (`None`: from ICE's RTT).
    pub(crate) dtls_interval: Option<Duration>,
    /// Seed SCTP's handshake RTO with ICE's RTT.
    pub(crate) sctp_rtt_hint: bool,
}

/// A datagram to send from `local` (a socket's or a relayed address).
#[derive(Debug)]
pub(crate) struct Transmit {
    pub(crate) local: SocketAddr,
    pub(crate) to: SocketAddr,
    pub(crate) data: BytesMut,
}

/// What the session reports to its driver.
#[derive(Debug)]
// Path changes are rare and carry the whole stats snapshot; boxing it would only add an
// allocation per event.
#[allow(clippy::large_enum_variant)]
pub(crate) enum SessionEvent {
    StateChanged {
        old: ConnectionState,
        new: ConnectionState,
    },
    /// The default channel is open: the connection is established.
    Ready {
        channel: ChannelId,
    },
    /// A channel opened: one this side asked for, or one the peer opened.
    ChannelOpened {
        channel: ChannelId,
        label: String,
        options: ChannelOptions,
        by_peer: bool,
    },
    ChannelOpenFailed {
        channel: ChannelId,
        error: PeerError,
    },
    /// A message; `charge` is what to report to [`PeerSession::consumed`] once read.
    Message {
        channel: ChannelId,
        payload: Payload,
        charge: usize,
    },
    ChannelClosed {
        channel: ChannelId,
    },
    PathChanged(ConnectionStats),
    /// An ICE restart began: `attempt` (1, 2, …) since the path was last good, which it
    /// stopped being at `since`. A `PathChanged` follows once a path is found.
    Reconnecting {
        attempt: u32,
        since: Instant,
        reason: String,
    },
    /// The connection failed (before or after it was established). Terminal.
    Failed(PeerError),
    /// The connection closed. Terminal.
    Closed {
        reason: String,
    },
}

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the peer's description (the offerer: for the answer).
    Negotiating,
    /// Descriptions exchanged: ICE, DTLS, SCTP and the default channel coming up.
    Connecting,
    /// The default channel is open.
    Open,
    /// The application closes: channels flush until the deadline.
    Closing { deadline: Instant },
    /// Failed or closed; no more input is taken.
    Ended { failed: bool },
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Negotiating => "negotiating",
            Phase::Connecting => "connecting",
            Phase::Open => "open",
            Phase::Closing { .. } => "closing",
            Phase::Ended { failed: true } => "failed",
            Phase::Ended { failed: false } => "closed",
        }
    }

    /// Open (or closing after it was).
    fn is_up(self) -> bool {
        matches!(self, Phase::Open | Phase::Closing { .. })
    }

    fn is_ended(self) -> bool {
        matches!(self, Phase::Ended { .. })
    }

    fn close_deadline(self) -> Option<Instant> {
        match self {
            Phase::Closing { deadline } => Some(deadline),
            _ => None,
        }
    }
}

/// What the driver knows of the TURN relays.
#[derive(Debug, Clone, Default)]
pub(crate) struct RelayStatus {
    pub(crate) gathering_done: bool,
    pub(crate) any_ready: bool,
    pub(crate) failures: Vec<String>,
}

/// How the signaling link ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkEnd {
    /// The server says the other device left.
    PeerLeft,
    /// The signaling connection is gone.
    Lost,
}

impl LinkEnd {
    /// The error of a setup that this ended.
    fn error(self) -> PeerError {
        match self {
            LinkEnd::PeerLeft => PeerError::PeerLeft,
            LinkEnd::Lost => PeerError::SignalingLost,
        }
    }
}

/// Whether signals reach the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignalingState {
    Up,
    /// The signaling connection dropped and the session is being resumed on a new one.
    Interrupted,
    /// The session's signaling ended for good.
    Gone,
}

/// What an ICE restart timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RestartDue {
    /// The path has been silent long enough: restart.
    Start,
    /// The attempt found nothing in time: another one.
    Retry,
    /// No path for the whole budget: fail.
    GiveUp,
    /// The other device restarted (the server says) and is silent: its old path is dead.
    PeerGone,
}

impl RestartDue {
    fn why(self) -> &'static str {
        match self {
            RestartDue::Start => "ICE restart after silence",
            RestartDue::Retry => "ICE restart: next attempt",
            RestartDue::GiveUp => "ICE restart: no path within the budget",
            RestartDue::PeerGone => "the other device restarted",
        }
    }
}

/// An ICE restart under way.
#[derive(Debug, Clone, Copy)]
struct Restart {
    /// 1, 2, …: attempts since the path was last good.
    attempt: u32,
    /// When the first attempt started.
    since: Instant,
    /// When this attempt started.
    started: Instant,
    /// This side's offer waits for its answer.
    offered: bool,
    /// Another restart was asked for meanwhile: it starts once the answer is in.
    again: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    bytes_sent: u64,
    bytes_received: u64,
    messages_sent: u64,
    messages_received: u64,
}

/// One peer connection, sans-IO.
#[derive(Debug)]
pub(crate) struct PeerSession {
    config: SessionConfig,
    started: Instant,
    now: Instant,
    ice: IceAgent,
    sources: Vec<StunBinding>,
    stun_names_pending: bool,
    relays: RelayStatus,
    remote: Option<RemoteDescription>,
    /// Local candidate lines waiting for the answer (an answerer trickles only after it).
    held_candidates: Vec<String>,
    local_description_sent: bool,
    end_of_candidates_sent: bool,
    remote_gathering_done: bool,
    last_candidate_change: Instant,
    answer_at: Option<Instant>,
    ready_at: Option<Instant>,
    dtls: Option<DtlsTransport>,
    /// Where DTLS answers go before ICE selected a pair (the ClientHello's path).
    dtls_route: Option<(SocketAddr, SocketAddr)>,
    sctp: Association,
    sctp_started: bool,
    sctp_connected: bool,
    channels: Channels,
    default_channel: Option<ChannelId>,
    /// Where the session stands (changed only by [`Self::transition`]).
    phase: Phase,
    /// The state the application sees, derived from `phase` and ICE's (see
    /// [`Self::evaluate_state`]).
    state: ConnectionState,
    channel_deadlines: HashMap<ChannelId, Instant>,
    /// Signaling ended during setup while the peer was reachable: how, and until when setup
    /// may still complete.
    link_end: Option<(LinkEnd, Instant)>,
    remote_max_message: Option<usize>,
    last_path: Option<(SocketAddr, SocketAddr)>,
    counters: Counters,
    transmits: VecDeque<Transmit>,
    signals: VecDeque<Signal>,
    events: VecDeque<SessionEvent>,
    mdns_logged: bool,
    /// The local sockets (host candidates' bases), for a restart's gathering.
    sockets: Vec<SocketAddr>,
    /// The STUN servers, for a restart's gathering.
    stun_servers: Vec<(String, SocketAddr)>,
    /// The relayed candidates the driver added (the allocations outlive a restart).
    relay_candidates: Vec<LocalCandidate>,
    /// Whether signals reach the peer (no restart without them).
    signaling: SignalingState,
    /// A restart asked for while signaling was interrupted: it runs once signaling is back.
    restart_wanted: Option<String>,
    restart: Option<Restart>,
    /// Since when ICE has been disconnected.
    silent_since: Option<Instant>,
    /// The server said the other device restarted (see [`Self::peer_restarted`]).
    peer_restarted: bool,
    /// When application data last went either way (idle after [`IDLE_AFTER`] without).
    last_data: Instant,
}

impl PeerSession {
    /// A session over these local sockets, with these STUN servers (already resolved;
    /// `stun_names_pending` when more come from [`Self::add_stun_servers`]).
    pub(crate) fn new(
        now: Instant,
        config: SessionConfig,
        sockets: &[SocketAddr],
        stun_servers: &[(String, SocketAddr)],
        stun_names_pending: bool,
    ) -> PeerSession {
        let ice = IceAgent::new(config.ice.clone(), Credentials::random());
        let sctp = Association::new(config.sctp.clone(), now);
        let mut session = PeerSession {
            started: now,
            now,
            ice,
            sources: Vec::new(),
            stun_names_pending: stun_names_pending && !config.force_relay,
            relays: RelayStatus {
                gathering_done: !config.relays_offered,
                ..RelayStatus::default()
            },
            remote: None,
            held_candidates: Vec::new(),
            local_description_sent: false,
            end_of_candidates_sent: false,
            remote_gathering_done: false,
            last_candidate_change: now,
            answer_at: None,
            ready_at: None,
            dtls: None,
            dtls_route: None,
            sctp,
            sctp_started: false,
            sctp_connected: false,
            channels: Channels::new(config.sctp.streams),
            default_channel: None,
            phase: Phase::Negotiating,
            state: ConnectionState::New,
            channel_deadlines: HashMap::new(),
            link_end: None,
            remote_max_message: None,
            last_path: None,
            counters: Counters::default(),
            transmits: VecDeque::new(),
            signals: VecDeque::new(),
            events: VecDeque::new(),
            mdns_logged: false,
            sockets: sockets.to_vec(),
            stun_servers: stun_servers.to_vec(),
            relay_candidates: Vec::new(),
            signaling: SignalingState::Up,
            restart_wanted: None,
            restart: None,
            silent_since: None,
            peer_restarted: false,
            last_data: now,
            config,
        };
        session.start(now, sockets, stun_servers);
        session
    }

    fn start(
        &mut self,
        now: Instant,
        sockets: &[SocketAddr],
        stun_servers: &[(String, SocketAddr)],
    ) {
        self.evaluate_state("establishing");
        if self.config.force_relay && !self.config.relays_offered {
            self.fail(PeerError::IceFailed {
                reason: "relay-only was asked for, but the signaling server handed out no TURN \
                         server"
                    .into(),
            });
            return;
        }
        if !self.config.force_relay {
            self.add_host_candidates(now);
            self.add_stun_sources(now, sockets, stun_servers);
        }
        if self.config.role == PeerRole::Offerer {
            let id = self
                .channels
                .open_local(DEFAULT_CHANNEL.to_owned(), ChannelOptions::default());
            self.default_channel = Some(id);
            let sdp = LocalDescription {
                session_id: rand::random::<u64>() >> 1,
                credentials: self.ice.local_credentials(),
                fingerprint: &self.config.fingerprint,
                setup: Setup::ActPass,
                mid: "0",
                other_media: &[],
                data_index: 0,
            }
            .to_sdp();
            match Sdp::new(sdp) {
                Ok(sdp) => self.signals.push_front(Signal::Offer { sdp }),
                Err(e) => self.fail(PeerError::Rtc(format!("cannot build the offer: {e}"))),
            }
            self.local_description_sent = true;
        }
        self.flush_held_candidates();
        self.check_gathering_done();
    }

    /// A host candidate for every socket.
    fn add_host_candidates(&mut self, now: Instant) {
        for (i, addr) in self.sockets.clone().into_iter().enumerate() {
            // Earlier sockets (IPv4, LAN before loopback) are preferred.
            let local_pref = 65535u16.saturating_sub(i as u16 * 256);
            self.add_local(
                now,
                LocalCandidate {
                    kind: CandidateKind::Host,
                    address: addr,
                    base: addr,
                    priority: priority(CandidateKind::Host, local_pref),
                    foundation: format!("{}", 1 + i),
                    related: None,
                    relay_protocol: None,
                },
            );
        }
    }

    fn add_stun_sources(
        &mut self,
        now: Instant,
        sockets: &[SocketAddr],
        servers: &[(String, SocketAddr)],
    ) {
        for (url, server) in servers {
            for local in sockets {
                if local.is_ipv4() != server.is_ipv4()
                    || local.ip().is_loopback() != server.ip().is_loopback()
                {
                    continue;
                }
                self.sources.push(StunBinding::new(
                    url.clone(),
                    *local,
                    *server,
                    now,
                    self.config.stun_timeout,
                ));
            }
        }
        self.pump_sources(now);
    }

    // -----------------------------------------------------------------------------------------
    // Inputs from the driver
    // -----------------------------------------------------------------------------------------

    /// STUN server names resolved (or given up): gather from them too.
    pub(crate) fn add_stun_servers(
        &mut self,
        now: Instant,
        sockets: &[SocketAddr],
        servers: &[(String, SocketAddr)],
    ) {
        self.now = now;
        self.stun_names_pending = false;
        self.stun_servers.extend_from_slice(servers);
        if !self.config.force_relay {
            self.add_stun_sources(now, sockets, servers);
        }
        self.check_gathering_done();
    }

    /// A TURN relay allocated `relayed` (the server saw this side as `related`).
    pub(crate) fn add_relay_candidate(
        &mut self,
        now: Instant,
        relayed: SocketAddr,
        related: SocketAddr,
        transport: TurnTransport,
    ) {
        self.now = now;
        // Prefer relays reached over UDP, then TCP, then TLS.
        let local_pref = match transport {
            TurnTransport::Udp => 65535,
            TurnTransport::Tcp => 32767,
            TurnTransport::Tls => 16383,
        };
        let foundation = format!("r{}", self.ice.local_candidates().len());
        let candidate = LocalCandidate {
            kind: CandidateKind::Relay,
            address: relayed,
            base: relayed,
            priority: priority(CandidateKind::Relay, local_pref),
            foundation,
            related: Some(related),
            relay_protocol: Some(transport),
        };
        self.relay_candidates.push(candidate.clone());
        self.add_local(now, candidate);
        self.process(now);
    }

    /// The relays at these relayed addresses are gone (their network went away): no longer
    /// candidates, and a path through them is not kept by the next restart.
    pub(crate) fn relays_gone(&mut self, relayed: &[SocketAddr]) {
        if relayed.is_empty() {
            return;
        }
        tracing::info!(?relayed, "relay candidates gone with their network");
        self.relay_candidates
            .retain(|c| !relayed.contains(&c.address));
    }

    /// What the relays are doing now.
    pub(crate) fn update_relays(&mut self, now: Instant, status: RelayStatus) {
        self.now = now;
        self.relays = status;
        if self.config.force_relay
            && !self.phase.is_up()
            && self.relays.gathering_done
            && !self.relays.any_ready
        {
            let reason = format!(
                "relay-only was asked for, but no relay could be allocated: {}",
                self.relays.failures.join("; ")
            );
            self.fail(PeerError::IceFailed { reason });
            return;
        }
        self.check_gathering_done();
        self.process(now);
    }

    /// A signal from the other device.
    pub(crate) fn handle_signal(&mut self, now: Instant, signal: Signal) {
        self.now = now;
        if self.phase.is_ended() {
            return;
        }
        if let Err(e) = self.apply_signal(now, signal) {
            if self.phase.is_up() {
                tracing::warn!(error = %e, "signal ignored");
            } else {
                self.fail(e);
            }
        }
        self.process(now);
    }

    /// Whether an ICE restart is under way.
    #[cfg(test)]
    pub(crate) fn restarting(&self) -> bool {
        self.restart.is_some()
    }

    #[cfg(test)]
    pub(crate) fn ice_local_credentials(&self) -> &Credentials {
        self.ice.local_credentials()
    }

    #[cfg(test)]
    pub(crate) fn ice_remote_credentials(&self) -> Option<&Credentials> {
        self.ice.remote_credentials()
    }

    /// Whether the peer's packets have arrived on the direct path.
    #[cfg(test)]
    pub(crate) fn peer_reachable(&self) -> bool {
        self.ice.heard_from_peer()
    }

    /// The signaling link ended. Before the connection is up that ends it, with the ICE
    /// failure when everything was exchanged and nothing ever came from the peer (it most
    /// likely left because it found no route either). When the peer's packets already arrive
    /// on the direct path, setup goes on without signaling: the peer usually left because its
    /// side is up (a phone's `pair()` returns before the desktop's last packets arrive over a
    /// slow relay); the connect timeout still bounds it.
    pub(crate) fn link_ended(&mut self, now: Instant, how: LinkEnd) {
        self.now = now;
        self.signaling = SignalingState::Gone;
        self.restart_wanted = None;
        if self.phase.is_ended() || self.phase.is_up() {
            tracing::info!(
                ?how,
                "signaling ended; the direct path stays up (no ICE restart from now on)"
            );
            return;
        }
        if self.remote.is_some() && self.ice.heard_from_peer() {
            tracing::info!(
                ?how,
                phase = ?self.phase,
                grace = ?LINK_END_GRACE,
                "signaling ended during setup; the peer is reachable, setup goes on"
            );
            self.link_end = Some((how, now + LINK_END_GRACE));
            return;
        }
        let exchanged = self.remote.is_some()
            && self.end_of_candidates_sent
            && self.remote_gathering_done
            && !self.ice.heard_from_peer();
        if exchanged {
            tracing::info!(?how, "signaling ended after ICE found no route");
            self.fail(PeerError::IceFailed {
                reason: self.no_path_reason(),
            });
        } else {
            self.fail(how.error());
        }
    }

    /// The server says the other device started afresh while its old connection is away: a
    /// new process, most likely, which cannot take over this connection. Only a hint (device
    /// ids are not authenticated): the connection fails on it only while the peer is silent
    /// (ICE disconnected), instead of after the whole restart budget; a peer heard again
    /// clears it.
    pub(crate) fn peer_restarted(&mut self, now: Instant) {
        self.now = now;
        if !self.phase.is_up() {
            return;
        }
        tracing::info!(
            silent = self.silent_since.is_some(),
            "the server says the other device restarted"
        );
        self.peer_restarted = true;
        self.process(now);
    }

    /// The signaling connection dropped; the session is being resumed on a new one. Nothing
    /// can be signaled meanwhile (a restart waits).
    pub(crate) fn signaling_interrupted(&mut self, now: Instant) {
        self.now = now;
        if self.phase.is_ended() {
            return;
        }
        tracing::info!("signaling interrupted; the direct path carries on");
        self.signaling = SignalingState::Interrupted;
    }

    /// Signaling is back (the session resumed on a new connection). A restart under way
    /// starts another attempt at once (its offer may have been lost); a path that is silent
    /// restarts now.
    pub(crate) fn signaling_resumed(&mut self, now: Instant) {
        self.now = now;
        if self.phase.is_ended() {
            return;
        }
        tracing::info!("signaling resumed");
        self.signaling = SignalingState::Up;
        if self.restart.is_some() {
            self.restart_wanted = None;
            self.next_attempt(now, "signaling is back");
        } else if let Some(reason) = self.restart_wanted.take() {
            self.restart_ice(now, &reason);
        } else if self.phase == Phase::Open && self.ice.state() != IceState::Connected {
            self.restart_ice(now, "signaling is back and the path is silent");
        }
        self.process(now);
    }

    /// A datagram arrived on `local` (a socket's or a relayed address) from `from`.
    pub(crate) fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        data: BytesMut,
    ) {
        self.now = now;
        if self.phase.is_ended() {
            return;
        }
        match data.first() {
            Some(0..=3) => {
                if self
                    .sources
                    .iter_mut()
                    .any(|s| s.handle_packet(now, local, from, &data))
                {
                    self.pump_sources(now);
                } else {
                    self.ice.handle_stun(now, local, from, &data);
                }
            }
            Some(20..=63) => self.handle_dtls(now, local, from, data),
            _ => tracing::trace!(%from, "datagram of no known protocol dropped"),
        }
        self.process(now);
    }

    fn handle_dtls(&mut self, now: Instant, local: SocketAddr, from: SocketAddr, data: BytesMut) {
        if !self.ice.is_known_remote(from) {
            tracing::debug!(%from, "DTLS from an address ICE does not know; dropped");
            return;
        }
        self.ice.note_data(now, local, from);
        if self.dtls.is_none() {
            tracing::trace!(%from, "DTLS before DTLS started; dropped");
            return;
        }
        if self.ice.route().is_none() {
            self.dtls_route = Some((local, from));
        }
        if let Some(dtls) = self.dtls.as_mut() {
            dtls.handle_datagram(now, data);
        }
        self.after_dtls(now);
    }

    /// Run the timers due at `now`.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.phase.is_ended() {
            return;
        }
        for source in &mut self.sources {
            if source.poll_timeout().is_some_and(|t| t <= now) {
                source.handle_timeout(now);
            }
        }
        self.pump_sources(now);
        if self.ice.poll_timeout().is_some_and(|(t, _)| t <= now) {
            self.ice.handle_timeout(now);
        }
        if let Some(dtls) = self.dtls.as_mut()
            && dtls.poll_timeout().is_some_and(|t| t <= now)
        {
            dtls.handle_timeout(now);
            self.after_dtls(now);
        }
        if self.sctp.poll_timeout().is_some_and(|t| t <= now) {
            self.sctp.handle_timeout(now);
        }
        // Channels whose reset did not complete in time close anyway.
        let late: Vec<ChannelId> = self
            .channel_deadlines
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.channel_deadlines.remove(&id);
            tracing::debug!(
                channel = id,
                "channel close: the reset did not complete in time"
            );
            // The application hears it closed; the stream stays reserved until the resets
            // complete, so it is not reused while the peer may still deliver on it.
            self.report_channel_closed(id);
        }
        if let Some((at, due)) = self.restart_timer()
            && now >= at
        {
            match due {
                RestartDue::Start => {
                    let reason = format!(
                        "nothing heard from the other device for {} s",
                        (self.ice.disconnected_after() + RESTART_AFTER_SILENCE).as_secs()
                    );
                    // The trouble began when the peer was last heard, not now: the budget
                    // (and `Reconnecting::since`) counts from there.
                    let heard = self
                        .silent_since
                        .map(|t| t.checked_sub(self.ice.disconnected_after()).unwrap_or(t));
                    self.start_restart(now, heard, &reason);
                }
                RestartDue::Retry => {
                    self.restart_ice(now, "the last attempt found no path");
                }
                RestartDue::PeerGone => {
                    self.fail(PeerError::IceFailed {
                        reason: "connection lost: the other device restarted (it connected to \
                                 the server afresh) and its old path is silent"
                            .to_owned(),
                    });
                    return;
                }
                RestartDue::GiveUp => {
                    let attempts = self.restart.map_or(0, |r| r.attempt);
                    self.fail(PeerError::IceFailed {
                        reason: format!(
                            "connection lost: no path to the other device for {} s, over {} ICE restart \
                             attempt(s)",
                            RESTART_BUDGET.as_secs(),
                            attempts
                        ),
                    });
                    return;
                }
            }
        }
        if !self.phase.is_up() {
            if let Some(at) = self.no_pair_deadline()
                && now >= at
            {
                self.fail(PeerError::IceFailed {
                    reason: self.no_path_reason(),
                });
                return;
            }
            if let Some((how, at)) = self.link_end
                && now >= at
            {
                tracing::info!(
                    ?how,
                    "signaling ended and setup did not complete in the grace"
                );
                self.fail(how.error());
                return;
            }
            if now >= self.started + self.config.connect_timeout {
                let reason = if self.remote.is_none() {
                    "no offer/answer from the peer".to_owned()
                } else if self.ice.route().is_none() {
                    self.no_path_reason()
                } else {
                    "DTLS/SCTP setup or the default channel did not complete".to_owned()
                };
                self.fail(PeerError::Timeout {
                    after: self.config.connect_timeout,
                    reason,
                });
                return;
            }
        }
        self.process(now);
    }

    /// When [`Self::handle_timeout`] is next due, and why.
    pub(crate) fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        if self.phase.is_ended() {
            return None;
        }
        let mut next: Option<(Instant, &'static str)> = None;
        let mut consider = |at: Option<Instant>, why: &'static str| {
            if let Some(at) = at
                && next.is_none_or(|(n, _)| at < n)
            {
                next = Some((at, why));
            }
        };
        for s in &self.sources {
            consider(
                s.poll_timeout(),
                "STUN binding for a server-reflexive candidate",
            );
        }
        if let Some((at, why)) = self.ice.poll_timeout() {
            consider(Some(at), why);
        }
        consider(
            self.dtls.as_ref().and_then(DtlsTransport::poll_timeout),
            "DTLS handshake retransmission",
        );
        if let Some((at, why)) = self.sctp.poll_timeout_reason() {
            consider(Some(at), why);
        }
        consider(
            self.channel_deadlines.values().min().copied(),
            "channel close deadline",
        );
        consider(self.phase.close_deadline(), "connection close deadline");
        if let Some((at, due)) = self.restart_timer() {
            consider(Some(at), due.why());
        }
        if !self.phase.is_up() {
            consider(
                Some(self.started + self.config.connect_timeout),
                "connect timeout",
            );
            consider(self.no_pair_deadline(), "no candidate pair to try");
            consider(
                self.link_end.map(|(_, at)| at),
                "setup grace after signaling ended",
            );
        }
        next
    }

    // -----------------------------------------------------------------------------------------
    // Commands
    // -----------------------------------------------------------------------------------------

    /// Open a channel; [`SessionEvent::ChannelOpened`] (or `ChannelOpenFailed`) follows.
    pub(crate) fn open_channel(
        &mut self,
        now: Instant,
        label: String,
        options: ChannelOptions,
    ) -> ChannelId {
        self.now = now;
        let id = self.channels.open_local(label, options);
        if self.phase.is_ended() || self.phase.close_deadline().is_some() {
            self.events.push_back(SessionEvent::ChannelOpenFailed {
                channel: id,
                error: PeerError::Closed,
            });
            self.channels.remove(id);
            return id;
        }
        self.assign_channels(now);
        self.process(now);
        id
    }

    /// Send one message on a channel.
    pub(crate) fn send(
        &mut self,
        now: Instant,
        channel: ChannelId,
        payload: Payload,
    ) -> Result<(), PeerError> {
        self.now = now;
        let entry = self.channels.get(channel).ok_or(PeerError::ChannelClosed)?;
        if entry.phase != ChannelPhase::Open {
            return Err(PeerError::ChannelClosed);
        }
        let Some(stream) = entry.stream else {
            return Err(PeerError::ChannelClosed);
        };
        let len = payload.len();
        let max = self.max_message_size();
        if len > max {
            return Err(PeerError::MessageTooLarge { size: len, max });
        }
        let options = &entry.options;
        let send_options = SendOptions {
            // Until the peer acknowledged the open, messages stay ordered (RFC 8832 §6.6).
            unordered: !options.ordered && entry.acked,
            max_retransmits: options.max_retransmits,
            lifetime: options
                .max_packet_life_time
                .map(|ms| Duration::from_millis(u64::from(ms))),
        };
        let (ppid, data) = match payload {
            Payload::Text(t) if t.is_empty() => (dcep::PPID_STRING_EMPTY, Bytes::from_static(&[0])),
            Payload::Text(t) => (dcep::PPID_STRING, Bytes::from(t.into_bytes())),
            Payload::Binary(b) if b.is_empty() => {
                (dcep::PPID_BINARY_EMPTY, Bytes::from_static(&[0]))
            }
            Payload::Binary(b) => (dcep::PPID_BINARY, b),
        };
        self.sctp
            .send(now, stream, ppid, data, send_options)
            .map_err(|e| match e {
                proxim_sctp::SendError::StreamResetting(_) => PeerError::ChannelClosed,
                proxim_sctp::SendError::Closed => PeerError::Closed,
                other => PeerError::Rtc(other.to_string()),
            })?;
        self.counters.bytes_sent += len as u64;
        self.counters.messages_sent += 1;
        self.last_data = now;
        self.ice.set_idle(now, false);
        Ok(())
    }

    /// The local network changed: `sockets` are the ones the driver has now (some new, some
    /// gone). Restarts ICE over them; `false` when no restart can run (not up, or signaling is
    /// gone: the path in use then stays as long as it works).
    pub(crate) fn network_changed(&mut self, now: Instant, sockets: &[SocketAddr]) -> bool {
        self.now = now;
        if self.sockets != sockets {
            tracing::info!(before = ?self.sockets, now = ?sockets, "local addresses changed");
            self.sockets = sockets.to_vec();
        }
        let started = self.restart_ice(now, "the local network changed");
        self.process(now);
        started
    }

    /// Start an ICE restart (see the module docs); `false` when none can run. While this
    /// side's offer waits for its answer, another restart waits for it.
    pub(crate) fn restart_ice(&mut self, now: Instant, reason: &str) -> bool {
        self.start_restart(now, None, reason)
    }

    /// [`Self::restart_ice`]; a first attempt counts the trouble from `trouble_since` (when the
    /// peer was last heard) instead of from now.
    fn start_restart(
        &mut self,
        now: Instant,
        trouble_since: Option<Instant>,
        reason: &str,
    ) -> bool {
        if self.phase != Phase::Open {
            tracing::debug!(
                phase = self.phase.name(),
                reason,
                "no ICE restart: not open"
            );
            return false;
        }
        match self.signaling {
            SignalingState::Up => {}
            SignalingState::Interrupted => {
                // It runs once the session is resumed on a new signaling connection.
                tracing::info!(reason, "ICE restart waits for signaling to be back");
                self.restart_wanted = Some(reason.to_owned());
                return true;
            }
            SignalingState::Gone => {
                tracing::info!(reason, "no ICE restart: signaling is gone");
                return false;
            }
        }
        if let Some(r) = self.restart.as_mut()
            && r.offered
            && now < r.started + RESTART_RETRY
        {
            r.again = true;
            return true;
        }
        self.restart_locally(now, trouble_since, reason);
        let Some(sdp) = self.restart_description() else {
            return false;
        };
        self.signals.push_back(Signal::Offer { sdp });
        if let Some(r) = self.restart.as_mut() {
            r.offered = true;
        }
        self.local_description_sent = true;
        self.flush_held_candidates();
        self.check_gathering_done();
        true
    }

    /// Another attempt now, even while this side's last offer waits for its answer (it was
    /// lost, or the path it was for is dead).
    fn next_attempt(&mut self, now: Instant, reason: &str) {
        if let Some(r) = self.restart.as_mut() {
            r.offered = false;
            r.again = false;
        }
        self.restart_ice(now, reason);
    }

    /// This side's half of a restart: new credentials, candidates gathered again. The next
    /// attempt of a restart under way, or the first, counting the trouble from
    /// `trouble_since` (else from now).
    fn restart_locally(&mut self, now: Instant, trouble_since: Option<Instant>, reason: &str) {
        let (attempt, since) = self.restart.map_or((1, trouble_since.unwrap_or(now)), |r| {
            (r.attempt.saturating_add(1), r.since)
        });
        // The pair in use stays while the restart runs, unless its socket is gone.
        let keep = self.ice.state() != IceState::Failed
            && self.ice.route().is_some_and(|(base, _)| {
                self.sockets.contains(&base) || self.relay_candidates.iter().any(|c| c.base == base)
            });
        tracing::info!(attempt, reason, keeps_current_path = keep, "ICE restart");
        self.ice.restart(now, Credentials::random(), keep);
        self.restart = Some(Restart {
            attempt,
            since,
            started: now,
            offered: false,
            again: false,
        });
        self.sources.clear();
        self.held_candidates.clear();
        self.local_description_sent = false;
        self.end_of_candidates_sent = false;
        self.remote_gathering_done = false;
        self.last_candidate_change = now;
        if !self.config.force_relay {
            self.add_host_candidates(now);
            let (sockets, servers) = (self.sockets.clone(), self.stun_servers.clone());
            self.add_stun_sources(now, &sockets, &servers);
        }
        for candidate in self.relay_candidates.clone() {
            self.add_local(now, candidate);
        }
        self.events.push_back(SessionEvent::Reconnecting {
            attempt,
            since,
            reason: reason.to_owned(),
        });
    }

    /// The description of a restart (offer or answer): the new credentials; the DTLS role
    /// and fingerprint as they are.
    fn restart_description(&mut self) -> Option<Sdp> {
        let remote = self.remote.as_ref()?;
        let setup = if self.dtls_client() == Some(true) {
            Setup::Active
        } else {
            Setup::Passive
        };
        let sdp = LocalDescription {
            session_id: rand::random::<u64>() >> 1,
            credentials: self.ice.local_credentials(),
            fingerprint: &self.config.fingerprint,
            setup,
            mid: &remote.mid,
            other_media: &remote.other_media,
            data_index: usize::from(remote.mline_index),
        }
        .to_sdp();
        match Sdp::new(sdp) {
            Ok(sdp) => Some(sdp),
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the restart description");
                None
            }
        }
    }

    /// Bytes sent on `channel` and not yet acknowledged.
    pub(crate) fn buffered_amount(&self, channel: ChannelId) -> usize {
        self.channels
            .get(channel)
            .and_then(|c| c.stream)
            .map_or(0, |s| self.sctp.buffered_amount(s))
    }

    /// The application read messages worth `bytes` (their charges) and `messages` of them.
    pub(crate) fn consumed(&mut self, bytes: usize, messages: usize) {
        self.sctp.consumed(bytes, messages);
    }

    /// Close a channel (both directions); what was sent before is still delivered.
    pub(crate) fn close_channel(&mut self, now: Instant, channel: ChannelId) {
        self.now = now;
        let Some(entry) = self.channels.get(channel) else {
            return;
        };
        if entry.phase == ChannelPhase::Closing {
            return;
        }
        match self.channels.start_closing(channel) {
            Some(stream) if self.sctp_connected => {
                self.sctp.reset_streams(&[stream]);
                self.channel_deadlines
                    .insert(channel, now + CLOSE_FLUSH_TIMEOUT);
            }
            _ => {
                self.report_channel_closed(channel);
                self.channels.remove(channel);
            }
        }
        self.process(now);
    }

    /// Close the connection: once every channel's data is acknowledged (at most
    /// [`CLOSE_FLUSH_TIMEOUT`]), or at once when it is not up.
    pub(crate) fn close(&mut self, now: Instant) {
        self.now = now;
        if self.phase.is_ended() || self.phase.close_deadline().is_some() {
            return;
        }
        if !self.phase.is_up() {
            self.finish_close(now, "closed locally");
            return;
        }
        tracing::debug!("closing: flushing what the channels hold");
        self.transition(
            Phase::Closing {
                deadline: now + CLOSE_FLUSH_TIMEOUT,
            },
            "close asked for",
        );
        self.process(now);
    }

    /// The selected path, RTT and traffic.
    pub(crate) fn stats(&self) -> Result<ConnectionStats, PeerError> {
        let (local, remote, pair) = self.ice.selected().ok_or(PeerError::NotConnected)?;
        Ok(ConnectionStats {
            local: CandidateInfo {
                kind: local.kind,
                address: local.address,
                protocol: "udp".to_owned(),
                relay_protocol: local.relay_protocol,
            },
            remote: CandidateInfo {
                kind: remote.kind,
                address: remote.address,
                protocol: "udp".to_owned(),
                relay_protocol: None,
            },
            rtt: pair.rtt,
            bytes_sent: self.counters.bytes_sent,
            bytes_received: self.counters.bytes_received,
            messages_sent: self.counters.messages_sent,
            messages_received: self.counters.messages_received,
            open_after_answer: self
                .ready_at
                .zip(self.answer_at)
                .map(|(r, a)| r.saturating_duration_since(a)),
            sctp: self.sctp.stats(),
        })
    }

    /// The largest message the peer accepts (capped at what SCTP here handles).
    pub(crate) fn max_message_size(&self) -> usize {
        self.remote_max_message
            .unwrap_or(super::sdp::DEFAULT_REMOTE_MAX_MESSAGE_SIZE)
            .min(16 * 1024 * 1024)
    }

    pub(crate) fn state(&self) -> ConnectionState {
        self.state
    }

    // -----------------------------------------------------------------------------------------
    // Outputs
    // -----------------------------------------------------------------------------------------

    /// The next datagram to send.
    pub(crate) fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if let Some(t) = self.transmits.pop_front() {
            return Some(t);
        }
        if let Some(t) = self.ice.poll_transmit() {
            return Some(Transmit {
                local: t.local,
                to: t.to,
                data: BytesMut::from(&t.data[..]),
            });
        }
        let route = self.ice.route().or(self.dtls_route)?;
        let dtls = self.dtls.as_mut()?;
        if let Some(record) = dtls.poll_transmit() {
            return Some(Transmit {
                local: route.0,
                to: route.1,
                data: record,
            });
        }
        if *dtls.state() != DtlsState::Connected {
            return None;
        }
        let packet = self.sctp.poll_transmit(now)?;
        if let Err(e) = dtls.send(now, &packet) {
            tracing::debug!(error = %e, "SCTP packet not sent");
        }
        self.sctp.recycle(packet);
        let record = dtls.poll_transmit()?;
        Some(Transmit {
            local: route.0,
            to: route.1,
            data: record,
        })
    }

    /// The next signal for the other device.
    pub(crate) fn poll_signal(&mut self) -> Option<Signal> {
        self.signals.pop_front()
    }

    /// The next event for the driver.
    pub(crate) fn poll_event(&mut self) -> Option<SessionEvent> {
        self.process(self.now);
        self.events.pop_front()
    }

    // -----------------------------------------------------------------------------------------
    // Signaling
    // -----------------------------------------------------------------------------------------

    fn apply_signal(&mut self, now: Instant, signal: Signal) -> Result<(), PeerError> {
        match signal {
            Signal::Offer { sdp } if self.remote.is_some() && self.phase.is_up() => {
                self.on_restart_offer(now, sdp.as_str())?;
            }
            Signal::Answer { sdp } if self.remote.is_some() && self.phase.is_up() => {
                self.on_restart_answer(now, sdp.as_str())?;
            }
            Signal::Offer { sdp } => {
                if self.config.role != PeerRole::Answerer || self.remote.is_some() {
                    return Err(PeerError::BadSignal("unexpected offer".into()));
                }
                let remote = self.read_remote(sdp.as_str())?;
                // The answerer takes the DTLS server role (a=setup:passive) unless the offer
                // insists on it: the offerer then starts DTLS as soon as its own ICE check
                // succeeds, a round trip before the answerer's check would, and its channel
                // opens a round trip sooner.
                let client = remote.setup == Setup::Passive;
                let answer = LocalDescription {
                    session_id: rand::random::<u64>() >> 1,
                    credentials: self.ice.local_credentials(),
                    fingerprint: &self.config.fingerprint,
                    setup: if client {
                        Setup::Active
                    } else {
                        Setup::Passive
                    },
                    mid: &remote.mid,
                    other_media: &remote.other_media,
                    data_index: usize::from(remote.mline_index),
                }
                .to_sdp();
                let answer = Sdp::new(answer).map_err(|e| PeerError::Rtc(e.to_string()))?;
                self.signals.push_back(Signal::Answer { sdp: answer });
                self.local_description_sent = true;
                self.answer_at = Some(now);
                self.set_remote(now, remote, client);
                self.flush_held_candidates();
                self.check_gathering_done();
            }
            Signal::Answer { sdp } => {
                if self.config.role != PeerRole::Offerer || self.remote.is_some() {
                    return Err(PeerError::BadSignal("unexpected answer".into()));
                }
                let remote = self.read_remote(sdp.as_str())?;
                // An answer that says `active` takes the client role; `passive` leaves it to us.
                let client = remote.setup != Setup::Active;
                self.answer_at = Some(now);
                self.set_remote(now, remote, client);
            }
            Signal::Candidate { candidate, .. } => {
                self.last_candidate_change = now;
                self.add_remote_candidate(now, candidate.as_str());
            }
            Signal::EndOfCandidates => {
                tracing::debug!("remote gathering complete");
                self.remote_gathering_done = true;
                self.last_candidate_change = now;
                self.ice.set_remote_gathering_done();
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

    /// The peer restarts ICE: restart here too (unless this side's own restart is under way)
    /// and answer. Glare (both offered): the offerer's restart goes on, the answerer answers
    /// it with the credentials of its own.
    fn on_restart_offer(&mut self, now: Instant, sdp: &str) -> Result<(), PeerError> {
        let remote = self.read_restart(sdp)?;
        if self.ice.remote_credentials() == Some(&remote.credentials) {
            tracing::debug!("an offer with the credentials in use: no restart");
            return Ok(());
        }
        match self.restart.as_mut() {
            Some(r) if r.offered && self.config.role == PeerRole::Offerer => {
                // Its candidates are of the generation the peer's answer will name.
                tracing::debug!("ICE restart glare: this side's offer goes on");
                for line in &remote.candidates {
                    self.add_remote_candidate(now, line);
                }
                return Ok(());
            }
            Some(r) if r.offered => {
                tracing::debug!("ICE restart glare: answering the offerer's restart");
                r.offered = false;
            }
            _ => self.restart_locally(now, None, "the other device restarted ICE"),
        }
        let sdp = self
            .restart_description()
            .ok_or_else(|| PeerError::Rtc("cannot build the restart answer".into()))?;
        self.signals.push_back(Signal::Answer { sdp });
        self.local_description_sent = true;
        self.apply_restart(now, remote);
        self.flush_held_candidates();
        self.check_gathering_done();
        Ok(())
    }

    /// The answer to this side's restart offer.
    fn on_restart_answer(&mut self, now: Instant, sdp: &str) -> Result<(), PeerError> {
        let Some(restart) = self.restart else {
            return Err(PeerError::BadSignal("an answer to no offer".into()));
        };
        let remote = self.read_restart(sdp)?;
        if !restart.offered {
            // Two offers went out back to back (one just before signaling was interrupted,
            // one once it resumed) and both were answered: the later answer names the peer's
            // credentials now (signaling keeps the order).
            if self.ice.remote_credentials() != Some(&remote.credentials) {
                tracing::debug!("a later answer during the restart: the peer's newest credentials");
                self.apply_restart(now, remote);
            }
            return Ok(());
        }
        self.apply_restart(now, remote);
        self.restart = Some(Restart {
            offered: false,
            again: false,
            ..restart
        });
        if restart.again {
            self.restart_ice(now, "asked for again during the last restart");
        }
        Ok(())
    }

    /// A restart's description: DTLS stays as it is, so its fingerprints must too.
    fn read_restart(&self, sdp: &str) -> Result<RemoteDescription, PeerError> {
        let remote = self.read_remote(sdp)?;
        if self
            .remote
            .as_ref()
            .is_some_and(|r| r.fingerprints != remote.fingerprints)
        {
            return Err(PeerError::BadSignal(
                "an ICE restart that changes the DTLS fingerprint".into(),
            ));
        }
        Ok(remote)
    }

    /// The peer's new credentials and candidates.
    fn apply_restart(&mut self, now: Instant, remote: RemoteDescription) {
        self.ice
            .set_remote_credentials(now, remote.credentials.clone());
        for line in &remote.candidates {
            self.add_remote_candidate(now, line);
        }
        if remote.end_of_candidates {
            self.remote_gathering_done = true;
            self.ice.set_remote_gathering_done();
        }
        self.last_candidate_change = now;
        if let Some(current) = self.remote.as_mut() {
            current.credentials = remote.credentials;
        }
    }

    fn read_remote(&self, sdp: &str) -> Result<RemoteDescription, PeerError> {
        if let Some(expected) = &self.config.expected_remote_fingerprint {
            super::check_fingerprints(sdp, expected).inspect_err(|error| {
                tracing::warn!(%error, "remote SDP refused");
            })?;
        }
        RemoteDescription::parse(sdp).map_err(|e| PeerError::BadSignal(e.to_string()))
    }

    fn set_remote(&mut self, now: Instant, remote: RemoteDescription, dtls_client: bool) {
        self.ice
            .set_remote_credentials(now, remote.credentials.clone());
        for line in &remote.candidates {
            self.add_remote_candidate(now, line);
        }
        if remote.end_of_candidates {
            self.remote_gathering_done = true;
            self.ice.set_remote_gathering_done();
        }
        self.remote_max_message = remote.max_message_size;
        self.channels.set_parity(dtls_client);
        self.sctp.set_remote_port(remote.sctp_port);
        self.remote = Some(remote);
        tracing::debug!(dtls_client, "remote description set");
        self.transition(Phase::Connecting, "descriptions exchanged");
        if !dtls_client {
            self.start_dtls(now, false);
        } else if self.ice.route().is_some() {
            self.start_dtls(now, true);
        }
        self.assign_channels(now);
    }

    fn add_remote_candidate(&mut self, now: Instant, line: &str) {
        use super::ice::candidate::CandidateError;
        match self.ice.add_remote_line(now, line) {
            Ok(()) => {}
            Err(e @ CandidateError::Mdns(_)) => {
                if !self.mdns_logged {
                    self.mdns_logged = true;
                    tracing::info!(error = %e, "remote mDNS candidate dropped");
                } else {
                    tracing::debug!(error = %e, "remote mDNS candidate dropped");
                }
            }
            Err(e) => tracing::debug!(error = %e, "remote candidate ignored"),
        }
    }

    fn add_local(&mut self, now: Instant, candidate: LocalCandidate) {
        let line = candidate.to_line();
        self.ice.add_local(now, candidate);
        self.last_candidate_change = now;
        self.held_candidates.push(line);
        self.flush_held_candidates();
    }

    /// Trickle the local candidates once this side's description is out (an answerer sends
    /// none before its answer).
    fn flush_held_candidates(&mut self) {
        if !self.local_description_sent {
            return;
        }
        for line in std::mem::take(&mut self.held_candidates) {
            match CandidateLine::new(line) {
                Ok(candidate) => {
                    tracing::debug!(%candidate, "local candidate");
                    self.signals.push_back(Signal::Candidate {
                        candidate,
                        sdp_mid: Some(ShortText::truncated(
                            self.remote
                                .as_ref()
                                .map_or("0", |r| r.mid.as_str())
                                .to_owned(),
                        )),
                        sdp_mline_index: Some(self.remote.as_ref().map_or(0, |r| r.mline_index)),
                    });
                }
                Err(e) => tracing::warn!(error = %e, "local candidate cannot be signaled"),
            }
        }
    }

    fn pump_sources(&mut self, now: Instant) {
        let mut found = Vec::new();
        for source in &mut self.sources {
            while let Some(output) = source.poll_output() {
                match output {
                    BindingOutput::Transmit(t) => self.transmits.push_back(Transmit {
                        local: t.from,
                        to: t.to,
                        data: BytesMut::from(&t.data[..]),
                    }),
                    BindingOutput::Done(BindingResult::Mapped(mapping)) => found.push(mapping),
                    BindingOutput::Done(_) => {}
                }
            }
        }
        for mapping in found {
            let (base, mapped) = (mapping.local, mapping.mapped);
            if mapped == base {
                continue;
            }
            let local_pref = self
                .ice
                .local_candidates()
                .iter()
                .find(|c| c.base == base && c.kind == CandidateKind::Host)
                .map_or(65535, |c| ((c.priority >> 8) & 0xffff) as u16);
            let foundation = format!("s{}", self.ice.local_candidates().len());
            self.add_local(
                now,
                LocalCandidate {
                    kind: CandidateKind::Srflx,
                    address: mapped,
                    base,
                    priority: priority(CandidateKind::Srflx, local_pref),
                    foundation,
                    related: Some(base),
                    relay_protocol: None,
                },
            );
        }
        self.sources.retain(|s| !s.is_done());
        self.check_gathering_done();
    }

    fn check_gathering_done(&mut self) {
        if self.end_of_candidates_sent
            || !self.local_description_sent
            || self.stun_names_pending
            || !self.sources.is_empty()
            || !self.relays.gathering_done
        {
            return;
        }
        self.flush_held_candidates();
        self.end_of_candidates_sent = true;
        self.ice.set_local_gathering_done();
        tracing::debug!(
            elapsed_ms = self.now.saturating_duration_since(self.started).as_millis() as u64,
            "gathering complete"
        );
        self.signals.push_back(Signal::EndOfCandidates);
    }

    // -----------------------------------------------------------------------------------------
    // DTLS and SCTP
    // -----------------------------------------------------------------------------------------

    fn start_dtls(&mut self, now: Instant, client: bool) {
        if self.dtls.is_some() {
            return;
        }
        let rtt = self.ice.selected().and_then(|(_, _, p)| p.rtt);
        let interval = self.config.dtls_interval;
        let fingerprints = self
            .remote
            .as_ref()
            .map(|r| r.fingerprints.clone())
            .unwrap_or_default();
        match DtlsTransport::new(
            now,
            client,
            self.config.certificate.clone(),
            fingerprints,
            rtt,
            interval,
        ) {
            Ok(dtls) => {
                tracing::debug!(client, "DTLS started");
                self.dtls = Some(dtls);
            }
            Err(e) => self.fail(PeerError::Rtc(format!("DTLS could not start: {e}"))),
        }
    }

    /// After DTLS took input: start SCTP once connected, feed it, notice failure and close.
    fn after_dtls(&mut self, now: Instant) {
        let Some(dtls) = self.dtls.as_mut() else {
            return;
        };
        match dtls.state().clone() {
            DtlsState::Connected => {
                if !self.sctp_started {
                    self.sctp_started = true;
                    if let Some(rtt) = self.ice.selected().and_then(|(_, _, p)| p.rtt)
                        && self.config.sctp_rtt_hint
                    {
                        self.sctp.set_rtt_hint(rtt);
                    }
                    self.sctp.connect(now);
                }
                while let Some(packet) = dtls.poll_incoming() {
                    if let Err(e) = self.sctp.handle_input(now, packet.freeze()) {
                        tracing::debug!(error = %e, "SCTP packet refused");
                    }
                }
            }
            DtlsState::Handshaking => {}
            DtlsState::Closed => {
                if self.phase.is_up() {
                    self.finish_close(now, "closed by the peer");
                } else {
                    self.fail(PeerError::Closed);
                }
            }
            DtlsState::Failed(reason) => {
                let error = if reason.contains("does not match the fingerprint") {
                    PeerError::Intercepted(format!(
                        "{reason}: someone between the devices may have rewritten the SDP"
                    ))
                } else {
                    PeerError::Rtc(format!("DTLS failed: {reason}"))
                };
                self.fail(error);
            }
        }
    }

    /// Drain ICE and SCTP events into session state and events.
    fn process(&mut self, now: Instant) {
        if self.phase.is_ended() {
            return;
        }
        while let Some(event) = self.ice.poll_event() {
            self.on_ice_event(now, event);
            if self.phase.is_ended() {
                return;
            }
        }
        while let Some(event) = self.sctp.poll_event() {
            self.on_sctp_event(now, event);
            if self.phase.is_ended() {
                return;
            }
        }
        // Data outstanding past a retransmission timeout: the path may be down; ICE checks
        // consent more often until it is acknowledged, to see the path come back sooner.
        self.ice.set_urgent(now, self.sctp.in_backoff());
        // No application data either way for a while: consent at the idle pace.
        self.ice.set_idle(
            now,
            now.saturating_duration_since(self.last_data) >= IDLE_AFTER,
        );
        if let Some(deadline) = self.phase.close_deadline() {
            let flushed = self
                .channels
                .ids()
                .iter()
                .all(|id| self.buffered_amount(*id) == 0);
            if flushed || now >= deadline {
                if !flushed {
                    tracing::debug!("connection close: unacknowledged data given up");
                }
                self.finish_close(now, "closed locally");
            }
        }
    }

    fn on_ice_event(&mut self, now: Instant, event: IceEvent) {
        match event {
            IceEvent::Selected { local, remote } => {
                let client = self.dtls_client();
                if self.remote.is_some() && client == Some(true) {
                    self.start_dtls(now, true);
                }
                tracing::debug!(
                    %local,
                    %remote,
                    elapsed_ms = now.saturating_duration_since(self.started).as_millis() as u64,
                    "ICE selected a pair"
                );
                if let Some(restart) = self.restart.take()
                    && self.phase.is_up()
                {
                    tracing::info!(
                        attempts = restart.attempt,
                        after_ms = now.saturating_duration_since(restart.since).as_millis() as u64,
                        "ICE restart found a path"
                    );
                    // Report the path even when it has the addresses of the old one, and let
                    // SCTP retransmit at once instead of at its backed-off timer.
                    self.last_path = None;
                    self.sctp.path_confirmed(now);
                }
                if self.phase.is_up() {
                    self.report_path();
                }
            }
            IceEvent::StateChanged { new, .. } => match new {
                IceState::Failed
                    if self.restart.is_some_and(|r| now < r.since + RESTART_BUDGET)
                        && self.signaling == SignalingState::Up
                        && self.phase == Phase::Open =>
                {
                    // The path kept meanwhile (if any) is dead too: the next attempt, now,
                    // without it.
                    tracing::info!("ICE restart attempt found no path; another follows");
                    self.next_attempt(now, "the last attempt found no path");
                }
                IceState::Failed if !self.phase.is_up() => {
                    self.fail(PeerError::IceFailed {
                        reason: self.no_path_reason(),
                    });
                }
                IceState::Failed => self.fail(PeerError::IceFailed {
                    reason: format!(
                        "connectivity lost: no answer from the other device for {} s \
                         (ICE consent failed)",
                        self.config.ice.consent_timeout.as_secs()
                    ),
                }),
                IceState::Disconnected => {
                    self.silent_since = Some(now);
                    self.evaluate_state("nothing heard from the peer");
                }
                IceState::Connected => {
                    self.silent_since = None;
                    self.peer_restarted = false;
                    self.evaluate_state("the peer is heard again");
                }
                _ => {}
            },
            // An answered consent check: when SCTP is waiting out a backed-off retransmission
            // timer (an outage), it retransmits now instead of up to max_backoff later.
            IceEvent::PathConfirmed => self.sctp.path_confirmed(now),
        }
    }

    fn dtls_client(&self) -> Option<bool> {
        let remote = self.remote.as_ref()?;
        Some(match self.config.role {
            PeerRole::Answerer => remote.setup == Setup::Passive,
            // An answer says `active` (it is the client) or `passive` (we are).
            PeerRole::Offerer => remote.setup != Setup::Active,
        })
    }

    fn on_sctp_event(&mut self, now: Instant, event: SctpEvent) {
        match event {
            SctpEvent::Connected => {
                tracing::debug!(
                    elapsed_ms = now.saturating_duration_since(self.started).as_millis() as u64,
                    "SCTP association up"
                );
                self.sctp_connected = true;
                for id in self.channels.ids() {
                    let Some(c) = self.channels.get_mut(id) else {
                        continue;
                    };
                    if c.phase == ChannelPhase::Opening {
                        c.phase = ChannelPhase::Open;
                        self.channel_open(now, id);
                    }
                }
            }
            SctpEvent::Message(m) => {
                self.last_data = now;
                let charge = m.data.len();
                let Some(id) = self.channels.by_stream(m.stream) else {
                    if m.ppid == dcep::PPID_DCEP {
                        self.sctp.consumed(charge, 1);
                        self.on_dcep(now, m.stream, &m.data);
                    } else {
                        tracing::debug!(
                            stream = m.stream,
                            "message on a stream without a channel dropped"
                        );
                        self.sctp.consumed(charge, 1);
                    }
                    return;
                };
                let payload = match m.ppid {
                    dcep::PPID_DCEP => {
                        self.sctp.consumed(charge, 1);
                        self.on_dcep(now, m.stream, &m.data);
                        return;
                    }
                    dcep::PPID_STRING | dcep::PPID_STRING_PARTIAL => {
                        match String::from_utf8(m.data.to_vec()) {
                            Ok(text) => Payload::Text(text),
                            Err(e) => Payload::Binary(Bytes::from(e.into_bytes())),
                        }
                    }
                    dcep::PPID_STRING_EMPTY => Payload::Text(String::new()),
                    dcep::PPID_BINARY_EMPTY => Payload::Binary(Bytes::new()),
                    _ => Payload::Binary(m.data),
                };
                self.counters.bytes_received += payload.len() as u64;
                self.counters.messages_received += 1;
                self.events.push_back(SessionEvent::Message {
                    channel: id,
                    payload,
                    charge,
                });
            }
            SctpEvent::IncomingStreamsReset(streams) => {
                for stream in streams {
                    let Some(id) = self.channels.by_stream(stream) else {
                        continue;
                    };
                    let closing = self
                        .channels
                        .get(id)
                        .is_some_and(|c| c.phase == ChannelPhase::Closing);
                    if !closing {
                        // The peer closed the channel: close our direction too.
                        self.channels.start_closing(id);
                        self.sctp.reset_streams(&[stream]);
                        self.channel_deadlines.insert(id, now + CLOSE_FLUSH_TIMEOUT);
                    }
                    self.report_channel_closed(id);
                    if let Some((_, gone)) = self.channels.stream_reset(stream, false)
                        && gone
                    {
                        self.channel_deadlines.remove(&id);
                    }
                }
            }
            SctpEvent::OutgoingStreamsReset(streams) | SctpEvent::StreamResetFailed(streams) => {
                for stream in streams {
                    let Some(id) = self.channels.by_stream(stream) else {
                        continue;
                    };
                    self.report_channel_closed(id);
                    if let Some((_, gone)) = self.channels.stream_reset(stream, true)
                        && gone
                    {
                        self.channel_deadlines.remove(&id);
                    }
                }
            }
            SctpEvent::Closed(reason) => {
                tracing::info!(%reason, "SCTP association closed");
                if self.phase.is_up() {
                    self.finish_close(now, "closed by the peer");
                } else {
                    self.fail(PeerError::Rtc(format!("SCTP: {reason}")));
                }
            }
            other => tracing::trace!(?other, "SCTP event"),
        }
    }

    fn on_dcep(&mut self, now: Instant, stream: u16, data: &[u8]) {
        match DcepMessage::parse(data) {
            Ok(DcepMessage::Open {
                options,
                label,
                protocol,
                ..
            }) => match self
                .channels
                .open_remote(stream, label.clone(), protocol, options.clone())
            {
                Ok(id) => {
                    let ack = DcepMessage::Ack.to_bytes();
                    if let Err(e) =
                        self.sctp
                            .send(now, stream, dcep::PPID_DCEP, ack, SendOptions::default())
                    {
                        tracing::debug!(error = %e, "DATA_CHANNEL_ACK not sent");
                    }
                    tracing::debug!(channel = id, stream, %label, "the peer opened a channel");
                    let is_default = self.config.role == PeerRole::Answerer
                        && self.default_channel.is_none()
                        && label == DEFAULT_CHANNEL;
                    if is_default {
                        self.default_channel = Some(id);
                    }
                    self.channel_open(now, id);
                }
                Err(why) => {
                    tracing::warn!(stream, why, "DATA_CHANNEL_OPEN refused");
                }
            },
            Ok(DcepMessage::Ack) => {
                if let Some(c) = self
                    .channels
                    .by_stream(stream)
                    .and_then(|id| self.channels.get_mut(id))
                {
                    c.acked = true;
                }
            }
            Err(e) => tracing::debug!(stream, error = %e, "bad DCEP message"),
        }
    }

    /// Assign streams to channels opened before the DTLS role was known; queue their OPENs.
    fn assign_channels(&mut self, now: Instant) {
        for id in self.channels.unassigned() {
            let Some(stream) = self.channels.assign(id) else {
                if self.channels.get(id).is_some() && self.remote.is_some() {
                    self.events.push_back(SessionEvent::ChannelOpenFailed {
                        channel: id,
                        error: PeerError::Rtc("no free stream id for another channel".into()),
                    });
                    self.channels.remove(id);
                }
                continue;
            };
            let Some(c) = self.channels.get(id) else {
                continue;
            };
            let open = DcepMessage::Open {
                options: c.options.clone(),
                priority: 256,
                label: c.label.clone(),
                protocol: c.protocol.clone(),
            };
            if let Err(e) = self.sctp.send(
                now,
                stream,
                dcep::PPID_DCEP,
                open.to_bytes(),
                SendOptions::default(),
            ) {
                self.events.push_back(SessionEvent::ChannelOpenFailed {
                    channel: id,
                    error: PeerError::Rtc(e.to_string()),
                });
                self.channels.remove(id);
                continue;
            }
            if self.sctp_connected
                && let Some(c) = self.channels.get_mut(id)
            {
                c.phase = ChannelPhase::Open;
                self.channel_open(now, id);
            }
        }
    }

    fn channel_open(&mut self, now: Instant, id: ChannelId) {
        let Some(c) = self.channels.get(id) else {
            return;
        };
        if self.default_channel == Some(id) && !self.phase.is_up() {
            self.transition(Phase::Open, "the default channel is open");
            self.ready_at = Some(now);
            tracing::info!(
                elapsed_ms = now.saturating_duration_since(self.started).as_millis() as u64,
                after_answer_ms = self
                    .answer_at
                    .map(|a| now.saturating_duration_since(a).as_millis() as u64),
                "connection established"
            );
            self.events.push_back(SessionEvent::Ready { channel: id });
            self.report_path();
            return;
        }
        self.events.push_back(SessionEvent::ChannelOpened {
            channel: id,
            label: c.label.clone(),
            options: c.options.clone(),
            by_peer: !c.local,
        });
    }

    fn report_channel_closed(&mut self, id: ChannelId) {
        if let Some(c) = self.channels.get_mut(id)
            && !c.close_reported
        {
            c.close_reported = true;
            self.events
                .push_back(SessionEvent::ChannelClosed { channel: id });
        }
    }

    fn report_path(&mut self) {
        let Ok(stats) = self.stats() else { return };
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
        self.events.push_back(SessionEvent::PathChanged(stats));
    }

    // -----------------------------------------------------------------------------------------
    // State and the end
    // -----------------------------------------------------------------------------------------

    /// The next thing ICE restarts wait for, and when.
    fn restart_timer(&self) -> Option<(Instant, RestartDue)> {
        if self.phase != Phase::Open {
            return None;
        }
        if self.peer_restarted
            && let Some(silent) = self.silent_since
        {
            return Some((silent, RestartDue::PeerGone));
        }
        let Some(restart) = self.restart else {
            let up = self.signaling == SignalingState::Up;
            let silent = self.silent_since.filter(|_| up)?;
            return Some((silent + RESTART_AFTER_SILENCE, RestartDue::Start));
        };
        let mut next = None;
        let no_path = self.ice.route().is_none();
        if no_path {
            next = Some((restart.since + RESTART_BUDGET, RestartDue::GiveUp));
        }
        // Another attempt while there is no working path (none, or the one kept is silent),
        // or the path kept works but this attempt has nothing left to try.
        let stuck = no_path
            || self.ice.state() != IceState::Connected
            || self.ice.new_generation_exhausted();
        if self.signaling == SignalingState::Up && stuck {
            let retry = restart.started + RESTART_RETRY;
            if next.is_none_or(|(at, _)| retry < at) {
                next = Some((retry, RestartDue::Retry));
            }
        }
        next
    }

    /// With both sides done gathering and no pair to try at all, when to give up.
    fn no_pair_deadline(&self) -> Option<Instant> {
        (self.remote.is_some()
            && self.end_of_candidates_sent
            && self.remote_gathering_done
            && self.ice.pairs().next().is_none()
            && !self.ice.heard_from_peer())
        .then_some(self.last_candidate_change + NO_PAIR_GIVE_UP)
    }

    /// Why no candidate pair worked, with what gathering learned (relays that failed).
    fn no_path_reason(&self) -> String {
        let mut reason = "no candidate pair succeeded (no route between the devices".to_owned();
        if !self.config.relays_offered {
            reason.push_str("; the signaling server offers no TURN relay");
        }
        reason.push(')');
        if !self.relays.failures.is_empty() {
            reason.push_str(": ");
            reason.push_str(&self.relays.failures.join("; "));
        }
        reason
    }

    /// Move to another phase and log it; the application's state follows.
    fn transition(&mut self, new: Phase, reason: &str) {
        if self.phase == new {
            return;
        }
        tracing::debug!("session {} -> {} ({reason})", self.phase.name(), new.name());
        self.phase = new;
        self.evaluate_state(reason);
    }

    /// The application's state, from the phase and ICE's state, in one place.
    fn evaluate_state(&mut self, reason: &str) {
        let new = match self.phase {
            Phase::Negotiating | Phase::Connecting => ConnectionState::Connecting,
            Phase::Open | Phase::Closing { .. } => {
                if self.ice.state() == IceState::Disconnected {
                    ConnectionState::Disconnected
                } else {
                    ConnectionState::Connected
                }
            }
            Phase::Ended { failed: true } => ConnectionState::Failed,
            Phase::Ended { failed: false } => ConnectionState::Closed,
        };
        self.set_state(new, reason);
    }

    fn set_state(&mut self, new: ConnectionState, reason: &str) {
        let old = self.state;
        if old == new {
            return;
        }
        tracing::info!("{old} -> {new} ({reason})");
        self.state = new;
        self.events
            .push_back(SessionEvent::StateChanged { old, new });
    }

    fn fail(&mut self, error: PeerError) {
        if self.phase.is_ended() {
            return;
        }
        tracing::warn!(%error, "peer connection failed");
        let reason = error.to_string();
        self.shutdown_transports(self.now);
        self.transition(Phase::Ended { failed: true }, &reason);
        self.events.push_back(SessionEvent::Failed(error));
    }

    fn finish_close(&mut self, now: Instant, reason: &str) {
        if self.phase.is_ended() {
            return;
        }
        self.shutdown_transports(now);
        self.transition(Phase::Ended { failed: false }, reason);
        for id in self.channels.ids() {
            self.report_channel_closed(id);
        }
        self.events.push_back(SessionEvent::Closed {
            reason: reason.to_owned(),
        });
    }

    /// SCTP ABORT (ends every channel) and DTLS close_notify, queued for sending.
    fn shutdown_transports(&mut self, now: Instant) {
        let Some(route) = self.ice.route().or(self.dtls_route) else {
            return;
        };
        let Some(dtls) = self.dtls.as_mut() else {
            return;
        };
        if *dtls.state() == DtlsState::Connected {
            self.sctp.abort("closed");
            while let Some(packet) = self.sctp.poll_transmit(now) {
                let _ = dtls.send(now, &packet);
            }
        }
        dtls.close(now);
        while let Some(record) = dtls.poll_transmit() {
            self.transmits.push_back(Transmit {
                local: route.0,
                to: route.1,
                data: record,
            });
        }
    }
}
