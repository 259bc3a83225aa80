//! The WebRTC peer layer: Proxim's own data stack — ICE, DTLS, SCTP and data channels —
//! as one sans-IO [`session::PeerSession`] under one tokio driver.
//!
//! [`PeerConnection::establish`] binds one UDP socket per usable local IP, starts the TURN relays,
//! spawns one driver task that owns them and the session, runs offer/answer and trickle ICE
//! over a [`SignalLink`], and resolves once the default channel [`DEFAULT_CHANNEL`] (reliable,
//! ordered) is open. More channels come from [`PeerConnection::open_channel`] or arrive as
//! [`ConnectionEvent::ChannelOpened`].
//!
//! # The stack
//! - **ICE** (`ice`): Proxim's own full agent. Host candidates for every socket (IPv4 and
//!   IPv6), server-reflexive ones from STUN Binding requests sent from those sockets, relay
//!   ones from one TURN allocation per `turn:`/`turns:` URL (over UDP, TCP or TLS to the
//!   server). Checks are paced every 10 ms, retransmitted after 50 ms doubling to 400 ms, and a
//!   pair fails after 2.5 s without an answer; the offerer nominates on its first success.
//!   Consent checks every 2 s keep the path: 5 s of silence is `Disconnected`, 30 s without
//!   consent `Failed`. With [`PeerConfig::force_relay`] only relay candidates are offered.
//!   When no pair works the error says so within about 3 s of the last candidate, naming what
//!   failed (a relay that refused the credentials, one that could not be reached).
//! - **DTLS** (`dtls`): webrtc-rs's sans-IO `rtc-dtls`, the certificate checked against the
//!   SDP's fingerprint (and the SDP against the authenticated one, see
//!   [`PeerConfig::expected_remote_fingerprint`]). Handshake flights are retransmitted after
//!   three ICE round trips, backing off to 1 s.
//! - **SCTP** ([`proxim_sctp`]): Proxim's own association, with RACK loss detection, tail loss
//!   probes, BBR congestion control and pacing (see that crate's docs).
//! - **Data channels** (`dcep`, `channels`): RFC 8832 open/ack, RFC 8831 stream resets to
//!   close, stream ids reused once both directions are reset.
//!
//! # The run-loop rule
//! After any input — a batch of datagrams, a batch of commands, a signal, a timer — the driver
//! drains the session's outputs (datagrams, signals, events) until none produces anything,
//! and only then asks for the next timeout. Packets go out in the turn that produced them.
//!
//! # Flow control
//! - Send: a channel's buffered amount is what `send` accepted and SCTP has not released yet.
//!   `send` waits while it is at or above [`SEND_HIGH_WATER`] (4 MiB) and resumes once it is
//!   below [`SEND_LOW_WATER`]. Nothing buffers without bound on the sending side.
//! - Receive: what arrived and was not read counts against SCTP's receive window
//!   ([`RECV_QUEUE_BYTES`], 8 MiB for the whole connection; each message costs 64 bytes more).
//!   A reader that stops closes the window; the peer's SCTP then stops sending and its `send`
//!   waits. Reading reopens it. Nothing is dropped; memory stays bounded.
//!
//! # Socket I/O
//! Through `quinn-udp`: reads are batched (`recvmmsg`, and with GRO one buffer holds many
//! datagrams); the packets one turn produced are sent in order, runs of same-size packets on
//! one path as a single GSO send where the OS supports it.
//!
//! # Closing
//! [`DataChannel::close`] resets the channel's stream after what was sent (the peer resets
//! its direction once it received all of it); [`PeerConnection::close`] waits until every
//! channel's data is acknowledged, bounded by 10 s, then sends SCTP ABORT and DTLS
//! close_notify.
//!
//! # Known limits
//! - TURN allocations relay UDP only (RFC 6062 TCP allocations are not implemented); the
//!   client reaches the relay over UDP, TCP or TLS.
//! - mDNS (`.local`) candidates are not resolved: they are dropped with a log line, and the
//!   peer's checks reach this side as peer-reflexive candidates instead.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proxim_protocol::IceServer;
use rtc::crypto::SignatureScheme;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use sha2::Digest;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::auth::Fingerprint;
use crate::link::SignalLink;

mod channel;
mod channels;
mod dcep;
mod driver;
mod dtls;
pub(crate) mod gather;
pub(crate) mod ice;
mod relay;
mod sdp;
mod session;
pub mod sim;
pub(crate) mod stun_binding;

pub use channel::{ChannelSender, DataChannel, RECV_QUEUE_BYTES, SEND_HIGH_WATER, SEND_LOW_WATER};
use driver::{Command, Driver, DriverParts};
use session::{PeerSession, SessionConfig};

/// Label of the channel every connection opens first.
pub const DEFAULT_CHANNEL: &str = "proxim";

/// Which side of the offer/answer exchange this peer plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PeerRole {
    /// Creates the default channel and the offer (the phone).
    Offerer,
    /// Waits for the offer and answers it (the desktop).
    Answerer,
}

/// How to set up one peer connection.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Offerer or answerer.
    pub role: PeerRole,
    /// STUN/TURN servers, as received from the signaling server.
    pub ice_servers: Vec<IceServer>,
    /// How long [`PeerConnection::establish`] may take before it fails.
    pub connect_timeout: Duration,
    /// How long to wait for a STUN server before giving up on it (never delays connecting).
    pub stun_timeout: Duration,
    /// Requested `SO_RCVBUF`/`SO_SNDBUF` for each UDP socket.
    pub udp_buffer_bytes: usize,
    /// Whether to offer loopback host candidates.
    pub include_loopback: bool,
    /// Use relay candidates only; fails when there are none.
    pub force_relay: bool,
    /// Bind only these local addresses (tests, pinning an interface); `None`: every usable
    /// interface address (plus loopback when [`Self::include_loopback`]).
    pub local_ips: Option<Vec<IpAddr>>,
    /// Extra trusted root certificates (PEM) for `turns:` relays, beyond the webpki roots.
    pub turn_roots_pem: Option<Vec<u8>>,
    /// This side's DTLS certificate, made beforehand with [`generate_certificate`] so its
    /// fingerprint could be authenticated. `None`: rtc makes one.
    pub certificate: Option<Certificate>,
    /// The DTLS fingerprint the other side authenticated. When set, a remote SDP whose
    /// fingerprints are not exactly this one is refused with [`PeerError::Intercepted`]
    /// (rtc then checks the DTLS certificate against the SDP).
    pub expected_remote_fingerprint: Option<Fingerprint>,
}

/// A DTLS certificate for [`PeerConfig::certificate`].
#[derive(Clone)]
pub struct Certificate(pub(crate) RTCCertificate);

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Certificate")
    }
}

/// Make a DTLS certificate (ECDSA P-256, as browsers do) and its SHA-256 fingerprint.
pub fn generate_certificate() -> Result<(Certificate, Fingerprint), PeerError> {
    let provider = rtc::crypto::default_provider().map_err(|e| PeerError::Rtc(e.to_string()))?;
    let params = CertificateParams::new(vec!["proxim".to_owned()])
        .map_err(|e| PeerError::Rtc(e.to_string()))?;
    let certificate =
        RTCCertificate::generate(provider.crypto(), SignatureScheme::EcdsaP256Sha256, params)
            .map_err(|e| PeerError::Rtc(e.to_string()))?;
    let fingerprints = certificate
        .get_fingerprints(provider.crypto())
        .map_err(|e| PeerError::Rtc(e.to_string()))?;
    let fingerprint = fingerprints
        .first()
        .and_then(|fp| Fingerprint::from_sdp_value(&fp.value))
        .ok_or_else(|| PeerError::Rtc("the certificate has no SHA-256 fingerprint".into()))?;
    Ok((Certificate(certificate), fingerprint))
}

/// Check that the SHA-256 DTLS fingerprints in `sdp` are `expected` (and there is at least
/// one). Lines of other hash algorithms (aiortc adds sha-384 and sha-512) are not what was
/// authenticated and are ignored: DTLS checks the certificate against the SHA-256 one.
pub(crate) fn check_fingerprints(sdp: &str, expected: &Fingerprint) -> Result<(), PeerError> {
    let mut seen = 0usize;
    for line in sdp.lines() {
        let Some(value) = line.trim_end().strip_prefix("a=fingerprint:") else {
            continue;
        };
        let (algorithm, value) = value.split_once(' ').unwrap_or((value, ""));
        if !algorithm.eq_ignore_ascii_case("sha-256") {
            continue;
        }
        seen += 1;
        let found = Fingerprint::from_sdp_value(value);
        if found.as_ref() != Some(expected) {
            return Err(PeerError::Intercepted(format!(
                "the other device's DTLS fingerprint in the SDP ({algorithm} {}) is not the one \
                 it authenticated ({})",
                value.get(..23).unwrap_or(value),
                &expected.to_sdp_value()[..23]
            )));
        }
    }
    if seen == 0 {
        return Err(PeerError::Intercepted(
            "the SDP carries no SHA-256 DTLS fingerprint".into(),
        ));
    }
    Ok(())
}

impl PeerConfig {
    /// The defaults: 15 s connect timeout, 2 s STUN timeout, 8 MiB socket buffers, loopback on.
    pub fn new(role: PeerRole, ice_servers: Vec<IceServer>) -> Self {
        PeerConfig {
            role,
            ice_servers,
            connect_timeout: Duration::from_secs(15),
            stun_timeout: Duration::from_secs(2),
            udp_buffer_bytes: 8 * 1024 * 1024,
            include_loopback: true,
            force_relay: false,
            local_ips: None,
            turn_roots_pem: None,
            certificate: None,
            expected_remote_fingerprint: None,
        }
    }
}

/// Why a peer operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The signaling link went away before the connection was up.
    #[error("signaling lost before the connection was established")]
    SignalingLost,
    /// The other device left the session before the connection was up.
    #[error("the peer left before the connection was established")]
    PeerLeft,
    /// An ICE restart was asked for, but the signaling session with the other device is
    /// gone (it ended, or could not be resumed): the path in use stays while it works.
    #[error("no ICE restart: the signaling session with the other device is gone")]
    NoSignaling,
    /// ICE could not find a working path.
    #[error("ICE failed: {reason}")]
    IceFailed {
        /// Why.
        reason: String,
    },
    /// The connection was not established within the connect timeout.
    #[error("connection not established within {after:?}: {reason}")]
    Timeout {
        /// The connect timeout.
        after: Duration,
        /// What did not happen in time ("no candidate pair succeeded"...).
        reason: String,
    },
    /// The operation needs an established connection.
    #[error("not connected")]
    NotConnected,
    /// The message is larger than the connection accepts.
    #[error("message of {size} bytes exceeds the maximum of {max}")]
    MessageTooLarge {
        /// The message size.
        size: usize,
        /// The maximum message size.
        max: usize,
    },
    /// The channel is closed.
    #[error("data channel closed")]
    ChannelClosed,
    /// The connection is closed (or its driver stopped).
    #[error("connection closed")]
    Closed,
    /// The other side's DTLS fingerprint is not the one it authenticated: someone between the
    /// devices (the signaling server, or whoever controls it) may be intercepting.
    #[error("the connection may have been intercepted: {0}")]
    Intercepted(String),
    /// The other device refused the connection: what it received over signaling was not what
    /// this device sent (its side of an interception).
    #[error("the connection may have been intercepted: {0}")]
    RefusedByPeer(String),
    /// The remote side sent something unusable over signaling.
    #[error("bad signal from the peer: {0}")]
    BadSignal(String),
    /// The WebRTC core reported an error.
    #[error("webrtc: {0}")]
    Rtc(String),
    /// A local socket operation failed.
    #[error("I/O error: {0}")]
    Io(String),
}

impl From<std::io::Error> for PeerError {
    fn from(e: std::io::Error) -> Self {
        PeerError::Io(e.to_string())
    }
}

/// The state of a peer connection, as the app sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Created, nothing happened yet.
    New,
    /// Offer/answer and ICE in progress.
    Connecting,
    /// ICE, DTLS and SCTP are up.
    Connected,
    /// Consent lost; it may come back.
    Disconnected,
    /// It failed and will not come back.
    Failed,
    /// Closed by either side.
    Closed,
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectionState::New => "new",
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Disconnected => "disconnected",
            ConnectionState::Failed => "failed",
            ConnectionState::Closed => "closed",
        })
    }
}

/// Delivery guarantees of a data channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelOptions {
    /// In-order delivery.
    pub ordered: bool,
    /// Give up on a message after this many retransmits (`None`: reliable).
    pub max_retransmits: Option<u16>,
    /// Give up on a message after this many milliseconds (`None`: reliable).
    pub max_packet_life_time: Option<u16>,
}

impl Default for ChannelOptions {
    /// Reliable and ordered.
    fn default() -> Self {
        ChannelOptions {
            ordered: true,
            max_retransmits: None,
            max_packet_life_time: None,
        }
    }
}

impl ChannelOptions {
    /// Unordered, no retransmits: datagram-like.
    pub fn unreliable() -> Self {
        ChannelOptions {
            ordered: false,
            max_retransmits: Some(0),
            max_packet_life_time: None,
        }
    }

    /// Whether every message is delivered.
    pub fn is_reliable(&self) -> bool {
        self.max_retransmits.is_none() && self.max_packet_life_time.is_none()
    }
}

/// One data channel message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Payload {
    /// A text message (UTF-8).
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

impl Payload {
    /// The size of the message in bytes.
    pub fn len(&self) -> usize {
        match self {
            Payload::Text(t) => t.len(),
            Payload::Binary(b) => b.len(),
        }
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What kind of ICE candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CandidateKind {
    /// A local interface address.
    Host,
    /// The address a STUN server saw (server reflexive).
    Srflx,
    /// An address learned from a connectivity check (peer reflexive).
    Prflx,
    /// An address on a TURN relay.
    Relay,
}

/// One end of the selected candidate pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateInfo {
    /// Host, srflx, prflx or relay.
    pub kind: CandidateKind,
    /// Its address.
    pub address: SocketAddr,
    /// `udp` or `tcp`.
    pub protocol: String,
    /// For a local relay candidate: how this side reaches the TURN server.
    pub relay_protocol: Option<crate::turn::TurnTransport>,
}

/// A snapshot of a connection's statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionStats {
    /// The local end of the selected pair.
    pub local: CandidateInfo,
    /// The remote end of the selected pair.
    pub remote: CandidateInfo,
    /// The latest round-trip time measured by ICE, if any.
    pub rtt: Option<Duration>,
    /// Data channel payload bytes sent.
    pub bytes_sent: u64,
    /// Data channel payload bytes received.
    pub bytes_received: u64,
    /// Data channel messages sent.
    pub messages_sent: u64,
    /// Data channel messages received.
    pub messages_received: u64,
    /// How long after the answer (sent or received) the default channel opened.
    pub open_after_answer: Option<Duration>,
    /// The SCTP association's counters and estimates (retransmissions, RTT, congestion
    /// window, pacing rate, bandwidth estimate).
    pub sctp: proxim_sctp::Stats,
}

impl ConnectionStats {
    /// The kind of path: relay if either side is relayed, else srflx/prflx, else host.
    pub fn path(&self) -> CandidateKind {
        use CandidateKind::*;
        match (self.local.kind, self.remote.kind) {
            (Relay, _) | (_, Relay) => Relay,
            (Srflx, _) | (_, Srflx) => Srflx,
            (Prflx, _) | (_, Prflx) => Prflx,
            _ => Host,
        }
    }
}

/// What [`PeerConnection::establish`] gives: the connection, its default channel, its events.
#[derive(Debug)]
pub struct Established {
    /// The connection handle.
    pub connection: PeerConnection,
    /// The default channel [`DEFAULT_CHANNEL`], reliable and ordered, open on both sides.
    pub channel: DataChannel,
    /// State changes, channels opened by the remote side, the end.
    pub events: ConnectionEvents,
}

/// Something that happened to a connection.
#[derive(Debug)]
#[non_exhaustive]
// Path changes are rare and carry the whole stats snapshot; boxing it would only add an
// allocation per event.
#[allow(clippy::large_enum_variant)]
pub enum ConnectionEvent {
    /// The connection state changed.
    StateChanged {
        /// Before.
        old: ConnectionState,
        /// After.
        new: ConnectionState,
    },
    /// The remote side opened a channel.
    ChannelOpened(DataChannel),
    /// ICE selected a (new) candidate pair: which path the connection uses now (host, srflx,
    /// prflx or relay, and for a relay how this side reaches it).
    PathChanged(ConnectionStats),
    /// An ICE restart began (the network changed, the path went silent, or the other device
    /// restarted): the channels stay open and what they hold is delivered once a path is
    /// found, announced by a [`ConnectionEvent::PathChanged`].
    Reconnecting {
        /// 1, 2, …: restart attempts since the path was last good.
        attempt: u32,
        /// When the first attempt started.
        since: Instant,
        /// Why ("the local network changed", "nothing heard from the other device for 7 s",
        /// "the other device restarted ICE", …).
        reason: String,
    },
    /// The connection is closed; the driver has stopped. The last event.
    Closed {
        /// Why.
        reason: String,
        /// The connection's final counters and path, when a path had been selected.
        stats: Option<Box<ConnectionStats>>,
    },
}

/// The stream of [`ConnectionEvent`]s of one connection.
#[derive(Debug)]
pub struct ConnectionEvents {
    rx: mpsc::UnboundedReceiver<ConnectionEvent>,
}

impl ConnectionEvents {
    /// The next event; `None` after [`ConnectionEvent::Closed`].
    pub async fn next(&mut self) -> Option<ConnectionEvent> {
        self.rx.recv().await
    }
}

/// A cheap, cloneable handle to one peer connection's driver task.
#[derive(Debug, Clone)]
pub struct PeerConnection {
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<ConnectionState>,
    ended: Arc<OnceLock<String>>,
}

impl PeerConnection {
    /// Connect to the device at the other end of `link`.
    ///
    /// Resolves once ICE, DTLS and SCTP are up and the default channel [`DEFAULT_CHANNEL`] is
    /// open, or fails within [`PeerConfig::connect_timeout`] with a reason. Dropping the future
    /// cancels the attempt and releases the sockets.
    pub async fn establish(config: PeerConfig, link: SignalLink) -> Result<Established, PeerError> {
        let span = tracing::info_span!("peer", role = ?config.role);
        let started = Instant::now();
        let (driver, commands, state, events, ready, ended) = {
            let _entered = span.enter();
            prepare(config, link)?
        };
        tokio::spawn(driver.run().instrument(span.clone()));
        let channel = match ready.await {
            Ok(result) => result?,
            Err(_) => return Err(PeerError::Closed),
        };
        span.in_scope(|| {
            tracing::debug!(
                elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                "establish resolved"
            );
        });
        Ok(Established {
            connection: PeerConnection {
                commands,
                state,
                ended,
            },
            channel,
            events: ConnectionEvents { rx: events },
        })
    }

    /// Open another channel; resolves once it is open.
    pub async fn open_channel(
        &self,
        label: &str,
        options: ChannelOptions,
    ) -> Result<DataChannel, PeerError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::OpenChannel {
                label: label.to_owned(),
                options,
                reply,
            })
            .map_err(|_| PeerError::Closed)?;
        rx.await.map_err(|_| PeerError::Closed)?
    }

    /// The selected path, round-trip time and traffic so far.
    pub async fn stats(&self) -> Result<ConnectionStats, PeerError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Stats { reply })
            .map_err(|_| PeerError::Closed)?;
        rx.await.map_err(|_| PeerError::Closed)?
    }

    /// The device's network changed (an interface or address came or went, Wi-Fi to
    /// cellular): bind to the addresses there are now and restart ICE over signaling, keeping
    /// DTLS, SCTP, the channels and what they hold. The path in use carries on until a new
    /// one is found; [`ConnectionEvent::Reconnecting`] and then
    /// [`ConnectionEvent::PathChanged`] follow.
    ///
    /// Fails with [`PeerError::NoSignaling`] when signaling is gone (no restart can be
    /// signaled: the path in use stays as long as it works) and [`PeerError::NotConnected`]
    /// before the connection is up.
    pub async fn network_changed(&self) -> Result<(), PeerError> {
        self.change_network(None).await
    }

    /// Like [`Self::network_changed`], binding to exactly `ips` from now on (what
    /// [`PeerConfig::local_ips`] says at the start).
    pub async fn set_local_ips(&self, ips: Vec<IpAddr>) -> Result<(), PeerError> {
        self.change_network(Some(ips)).await
    }

    async fn change_network(&self, local_ips: Option<Vec<IpAddr>>) -> Result<(), PeerError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::NetworkChanged { local_ips, reply })
            .map_err(|_| PeerError::Closed)?;
        rx.await.map_err(|_| PeerError::Closed)?
    }

    /// The current state.
    pub fn state(&self) -> ConnectionState {
        *self.state.borrow()
    }

    /// Why the connection ended ("connectivity lost: no answer from the other device for
    /// 30 s …", "closed by the peer", …), once it has; `None` while it is up. A send or
    /// receive that fails with [`PeerError::ChannelClosed`] or [`PeerError::Closed`] can say
    /// why with it.
    pub fn end_reason(&self) -> Option<&str> {
        self.ended.get().map(String::as_str)
    }

    /// Why the connection ended, waiting up to `within` for it to finish ending: a channel
    /// reports itself closed a moment before the connection records the reason.
    pub async fn end_reason_within(&self, within: Duration) -> Option<String> {
        let mut state = self.state.clone();
        let _ = tokio::time::timeout(within, async {
            // The driver records the reason, then drops the state's sender as it stops.
            while self.ended.get().is_none() && state.changed().await.is_ok() {}
        })
        .await;
        self.end_reason().map(str::to_owned)
    }

    /// Resolves once the connection has ended (closed or failed) and its driver stopped.
    pub async fn wait_ended(&self) {
        let mut state = self.state.clone();
        // The driver drops its state sender when it ends.
        while state.changed().await.is_ok() {}
    }

    /// Close channels and the connection, stop the driver, release the sockets. Idempotent;
    /// returns once the driver has stopped.
    ///
    /// Sends fail from now on, but what the channels accepted before is still delivered: the
    /// connection closes once SCTP has acknowledged all of it, after at most 10 s (or at once
    /// when the connection is not up).
    pub async fn close(&self) {
        let _ = self.commands.send(Command::Close);
        let mut state = self.state.clone();
        // The driver drops its state sender when it ends.
        while state.changed().await.is_ok() {}
    }
}

type Prepared = (
    Driver,
    mpsc::UnboundedSender<Command>,
    watch::Receiver<ConnectionState>,
    mpsc::UnboundedReceiver<ConnectionEvent>,
    oneshot::Receiver<Result<DataChannel, PeerError>>,
    Arc<OnceLock<String>>,
);

/// Bind the sockets, start the relays, build the session; the failures here are local and
/// immediate.
fn prepare(config: PeerConfig, link: SignalLink) -> Result<Prepared, PeerError> {
    let now = Instant::now();
    let mut sockets = Vec::new();
    let ips = match &config.local_ips {
        Some(ips) => ips.clone(),
        None => gather::local_ips(config.include_loopback),
    };
    for ip in ips {
        match gather::bind_udp(ip, config.udp_buffer_bytes) {
            Ok(s) => sockets.push(s),
            Err(e) => tracing::debug!(%ip, error = %e, "cannot bind"),
        }
    }
    if sockets.is_empty() {
        return Err(PeerError::Io("no usable local address to bind".into()));
    }
    let addrs: Vec<SocketAddr> = sockets.iter().map(|s| s.addr).collect();
    let (certificate, fingerprint) = match &config.certificate {
        Some(c) => (c.0.clone(), fingerprint_of(&c.0)?),
        None => {
            let (c, _) = generate_certificate()?;
            let fp = fingerprint_of(&c.0)?;
            (c.0, fp)
        }
    };
    let turn_servers = crate::turn::TurnServer::from_ice_servers(&config.ice_servers);
    let relays_offered = !turn_servers.is_empty();
    let relays = relay::Relays::start(
        turn_servers,
        addrs.clone(),
        &crate::turn::TurnOptions {
            extra_roots_pem: config.turn_roots_pem.clone(),
            local_ip: None,
        },
    );
    let mut servers = gather::stun_servers(&config.ice_servers);
    if config.force_relay {
        // No server-reflexive candidates: only relayed ones are offered.
        servers = Default::default();
    }
    // Names are resolved off the driver; their STUN bindings start when the answer comes.
    let pending_dns = (!servers.by_name.is_empty()).then(|| {
        let (tx, rx) = oneshot::channel();
        let timeout = config.stun_timeout;
        let names = std::mem::take(&mut servers.by_name);
        tokio::spawn(async move {
            let _ = tx.send(gather::resolve_names(names, timeout).await);
        });
        rx
    });
    let mut sctp = proxim_sctp::Config::default();
    sctp.max_message_size = sdp::LOCAL_MAX_MESSAGE_SIZE;
    sctp.receive_window = RECV_QUEUE_BYTES as u32;
    let session_config = SessionConfig {
        role: config.role,
        force_relay: config.force_relay,
        connect_timeout: config.connect_timeout,
        stun_timeout: config.stun_timeout,
        certificate: certificate.dtls_certificate.clone(),
        fingerprint,
        expected_remote_fingerprint: config.expected_remote_fingerprint,
        relays_offered,
        ice: ice::IceConfig::new(config.role == PeerRole::Offerer),
        sctp,
        dtls_interval: None,
        sctp_rtt_hint: true,
    };
    let session = PeerSession::new(
        now,
        session_config,
        &addrs,
        &servers.resolved,
        pending_dns.is_some(),
    );
    let (commands, command_rx) = mpsc::unbounded_channel();
    let (state_tx, state_rx) = watch::channel(ConnectionState::New);
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    let ended = Arc::new(OnceLock::new());
    let parts = DriverParts {
        link,
        commands: command_rx,
        command_sender: commands.downgrade(),
        state: state_tx,
        events: event_tx,
        ready: ready_tx,
        sockets,
        binding: driver::Binding {
            local_ips: config.local_ips.clone(),
            include_loopback: config.include_loopback,
            udp_buffer_bytes: config.udp_buffer_bytes,
        },
        relays,
        pending_dns,
        ended: ended.clone(),
    };
    Ok((
        Driver::new(session, parts),
        commands,
        state_rx,
        event_rx,
        ready_rx,
        ended,
    ))
}

/// Every local address (loopback too when asked), as gathering sees them.
pub(crate) fn gather_local_ips(include_loopback: bool) -> Vec<IpAddr> {
    gather::local_ips(include_loopback)
}

/// The usable local addresses right now, sorted (what a network change changes): loopback and
/// link-local ones left out.
pub fn current_local_ips() -> Vec<IpAddr> {
    let mut ips = gather::local_ips(false);
    ips.sort();
    ips
}

/// The SHA-256 of a certificate's DER.
fn fingerprint_of(certificate: &RTCCertificate) -> Result<[u8; 32], PeerError> {
    let der = certificate
        .dtls_certificate
        .certificate
        .first()
        .ok_or_else(|| PeerError::Rtc("the certificate is empty".into()))?;
    Ok(sha2::Sha256::digest(der.as_ref()).into())
}
