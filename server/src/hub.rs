//! The hub: every connection, registered desktop and pairing session, as a sans-IO machine.
//!
//! The hub owns no sockets, no clock and no tasks. Its driver ([`crate::server`]) feeds it
//! inputs — a connection opened, a frame arrived, a connection went away, time passed — each
//! with an explicit `now`, then drains [`Hub::poll_output`] (messages to deliver, connections to
//! close) and sleeps until [`Hub::poll_timeout`]. Timers (heartbeat deadlines, prompt expiry,
//! code reservations) live in one min-heap with lazy deletion: an entry that no longer applies
//! when it pops is dropped or re-armed.
//!
//! Routing rules, in short: `hello` first; a desktop registers once and gets a code; a phone's
//! `pair_request` for a live code opens a pending session and prompts the desktop; the desktop
//! accepts or rejects (or the prompt expires); signals flow only between the two members of an
//! accepted session. Whoever leaves, disconnects or goes silent ends its sessions, and the other
//! member is told why.
//!
//! Abuse limits are charged here too, with the same `now`: every frame takes a token from its
//! connection's budget before it is decoded, every pair request counts against its code's
//! window, and the driver reserves a per-IP slot ([`Hub::reserve_ip`]) before it upgrades.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use proxim_protocol::ice::IceUrl;
use proxim_protocol::{
    AuthPayload, ClientMessage, ConnectionId, DeviceId, DeviceName, ErrorCode, PROTOCOL_VERSION,
    PairOutcome, PeerDevice, ROUTING_ALPHABET, RoutingCode, ServerMessage, SessionEndReason,
    SessionId, ShortText, Signal,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::config::{IceConfig, ServerConfig};
use crate::limits::{AttemptWindow, AttemptsExhausted, ConnectionsPerIp, TokenBucket};

/// The hub's handle on one connection.
pub(crate) type ConnKey = u64;

/// How many sessions one connection may take part in at once.
///
/// The other abuse limits are configured ([`HubConfig`]): a message budget per connection
/// (charged in [`Hub::handle_text`] and its siblings), pair attempts per code (charged in
/// `pair_request`) and connections per client IP ([`Hub::reserve_ip`]).
const MAX_SESSIONS_PER_CONNECTION: usize = 16;

/// How many random codes to try before giving up on registering a desktop.
const CODE_ATTEMPTS: usize = 64;

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Output {
    /// Queue a message for a connection.
    Send { to: ConnKey, message: ServerMessage },
    /// Close a connection.
    Close { conn: ConnKey, how: CloseHow },
}

/// How a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseHow {
    /// After the messages already queued for it are written.
    AfterQueued,
    /// At once, dropping whatever is queued (slow readers).
    Abort,
}

/// Why the driver reports a connection gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gone {
    /// The socket closed or failed.
    Closed,
    /// Its outbound queue was full.
    SlowReader,
}

/// Counters and gauges for monitoring (`GET /api/stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Connections open now.
    pub connections_open: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Desktops registered now.
    pub desktops: u64,
    /// Sessions waiting for the desktop's answer now.
    pub sessions_pending: u64,
    /// Accepted sessions now.
    pub sessions_active: u64,
    /// Pair requests received.
    pub pair_requests: u64,
    /// Pairings accepted.
    pub pairs_accepted: u64,
    /// Pairings rejected.
    pub pairs_rejected: u64,
    /// Prompts that expired.
    pub pairs_timed_out: u64,
    /// Pair requests for a code no desktop holds.
    pub unknown_codes: u64,
    /// Signals relayed between session members.
    pub signals_relayed: u64,
    /// `error` messages sent.
    pub errors_sent: u64,
    /// Frames that did not decode (bad JSON, unknown type, too large, binary).
    pub frames_malformed: u64,
    /// Connections dropped for silence.
    pub stale_dropped: u64,
    /// Connections dropped because their outbound queue was full.
    pub slow_readers_dropped: u64,
    /// STUN Binding requests answered by the embedded STUN responder.
    pub stun_requests: u64,
    /// Datagrams the embedded STUN responder dropped as not well-formed STUN.
    pub stun_malformed: u64,
    /// Frames dropped (and answered `rate_limited`) because their connection was over its
    /// message budget.
    pub frames_rate_limited: u64,
    /// Connections disconnected for flooding past the message budget.
    pub rate_limit_disconnects: u64,
    /// Distinct client IPs with connections open now.
    pub client_ips: u64,
    /// WebSocket upgrades refused (HTTP 429) because their client IP had too many connections.
    pub connections_refused_per_ip: u64,
    /// Pair requests refused (`too_many_attempts`) because their code had too many attempts.
    pub pair_attempts_refused: u64,
}

/// One session, as shown by `GET /api/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The first 8 hex digits of the session id.
    pub session: String,
    /// `pending` or `active`.
    pub state: &'static str,
    /// Time since the pair request, in milliseconds.
    pub age_ms: u64,
    /// The desktop's name.
    pub desktop: String,
    /// The phone's name.
    pub phone: String,
}

/// Timing and sizing the hub needs.
#[derive(Debug, Clone)]
pub(crate) struct HubConfig {
    pub(crate) ice: IceConfig,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) prompt_timeout: Duration,
    pub(crate) code_length: usize,
    pub(crate) code_reservation: Duration,
    pub(crate) max_frame_bytes: usize,
    /// Sustained messages per second per connection; 0 is no limit.
    pub(crate) rate_limit: u32,
    pub(crate) rate_burst: u32,
    /// Refused frames (without a full refill in between) before a connection is cut off.
    pub(crate) rate_strikes: u32,
    /// Concurrent connections per client IP; 0 is no cap.
    pub(crate) max_connections_per_ip: u32,
    /// Pair requests per code within `pair_window`; 0 is no limit.
    pub(crate) pair_attempts: u32,
    pub(crate) pair_window: Duration,
    /// One instant of the hub's clock and the wall-clock time it corresponds to: the hub
    /// derives wall-clock time (TURN credential expiry) from its `now` inputs with it.
    pub(crate) wall_anchor: (Instant, SystemTime),
}

impl From<&ServerConfig> for HubConfig {
    fn from(c: &ServerConfig) -> Self {
        HubConfig {
            ice: c.ice.clone(),
            heartbeat_interval: c.heartbeat_interval,
            heartbeat_timeout: c.heartbeat_timeout,
            prompt_timeout: c.prompt_timeout,
            code_length: c.code_length,
            code_reservation: c.code_reservation,
            max_frame_bytes: c.max_frame_bytes,
            rate_limit: c.rate_limit,
            rate_burst: c.rate_burst,
            rate_strikes: c.rate_strikes,
            max_connections_per_ip: c.max_connections_per_ip,
            pair_attempts: c.pair_attempts,
            pair_window: c.pair_window,
            wall_anchor: (Instant::now(), SystemTime::now()),
        }
    }
}

/// All connections, desktops and sessions.
#[derive(Debug)]
pub(crate) struct Hub {
    config: HubConfig,
    rng: StdRng,
    next_key: ConnKey,
    conns: HashMap<ConnKey, Conn>,
    /// Live codes: the desktop connection holding each.
    codes: HashMap<RoutingCode, ConnKey>,
    /// The code each desktop device last had, kept for it while it is away.
    reservations: HashMap<DeviceId, Reservation>,
    /// Which device each live or reserved code belongs to.
    code_owners: HashMap<RoutingCode, DeviceId>,
    sessions: HashMap<SessionId, Session>,
    timers: BinaryHeap<Reverse<(Instant, TimerKey)>>,
    outputs: VecDeque<Output>,
    stats: Stats,
    /// Open (or opening) WebSocket connections per client IP.
    per_ip: ConnectionsPerIp,
    shutting_down: bool,
}

#[derive(Debug)]
struct Conn {
    id: ConnectionId,
    remote: SocketAddr,
    /// This server's STUN responder as this client can reach it, advertised in `welcome`.
    embedded_stun: Option<IceUrl>,
    last_seen: Instant,
    greeted: bool,
    role: Role,
    sessions: BTreeSet<SessionId>,
    /// The message budget; `None` without a rate limit.
    budget: Option<TokenBucket>,
    /// Frames refused since the budget was last full.
    strikes: u32,
}

#[derive(Debug, Clone)]
enum Role {
    /// Said hello (or not yet), neither desktop nor phone.
    Unassigned,
    /// Registered desktop holding `code`.
    Desktop {
        device: PeerDevice,
        code: RoutingCode,
        /// Pair requests for `code` in the current window.
        attempts: AttemptWindow,
    },
    /// Sent at least one pair request.
    Phone,
}

#[derive(Debug)]
struct Session {
    desktop: ConnKey,
    phone: ConnKey,
    desktop_device: PeerDevice,
    phone_device: PeerDevice,
    state: SessionState,
    created: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionState {
    Pending { deadline: Instant },
    Active,
}

impl SessionState {
    fn name(&self) -> &'static str {
        match self {
            SessionState::Pending { .. } => "pending",
            SessionState::Active => "active",
        }
    }
}

impl Session {
    fn other(&self, conn: ConnKey) -> Option<ConnKey> {
        if conn == self.desktop {
            Some(self.phone)
        } else if conn == self.phone {
            Some(self.desktop)
        } else {
            None
        }
    }
}

#[derive(Debug)]
struct Reservation {
    code: RoutingCode,
    /// `None` while a connection holds the code.
    expires: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Heartbeat(ConnKey),
    Prompt(SessionId),
    Reservation(DeviceId),
}

/// Why a connection leaves the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Departure {
    /// It sent `bye`.
    Bye,
    /// Its socket closed.
    Closed,
    /// It went silent.
    TimedOut,
    /// It did not read its messages.
    SlowReader,
    /// It was refused (bad protocol version, frame too large).
    Refused,
    /// It kept sending past its message budget.
    Flooding,
    /// The server is stopping.
    Shutdown,
}

/// Why a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
    Rejected,
    PromptExpired,
    Left(ConnKey, Departure),
}

impl Hub {
    /// A hub with ids and codes drawn from the operating system's CSPRNG.
    pub(crate) fn new(config: HubConfig) -> Self {
        Self::with_rng(config, StdRng::from_os_rng())
    }

    /// A hub with a given random generator (tests seed it).
    pub(crate) fn with_rng(config: HubConfig, rng: StdRng) -> Self {
        Hub {
            config,
            rng,
            next_key: 1,
            conns: HashMap::new(),
            codes: HashMap::new(),
            reservations: HashMap::new(),
            code_owners: HashMap::new(),
            sessions: HashMap::new(),
            timers: BinaryHeap::new(),
            outputs: VecDeque::new(),
            stats: Stats::default(),
            per_ip: ConnectionsPerIp::default(),
            shutting_down: false,
        }
    }

    /// A connection opened; `embedded_stun` is this server's STUN responder as that client can
    /// reach it. `None` when the server is shutting down.
    pub(crate) fn connect(
        &mut self,
        remote: SocketAddr,
        embedded_stun: Option<IceUrl>,
        now: Instant,
    ) -> Option<(ConnKey, ConnectionId)> {
        if self.shutting_down {
            return None;
        }
        let id = ConnectionId::new(random_hex128(&mut self.rng)).ok()?;
        let key = self.next_key;
        self.next_key += 1;
        self.conns.insert(
            key,
            Conn {
                id: id.clone(),
                remote,
                embedded_stun,
                last_seen: now,
                greeted: false,
                role: Role::Unassigned,
                sessions: BTreeSet::new(),
                budget: (self.config.rate_limit > 0)
                    .then(|| TokenBucket::new(self.config.rate_limit, self.config.rate_burst, now)),
                strikes: 0,
            },
        );
        self.stats.connections_total += 1;
        self.arm(
            now + self.config.heartbeat_timeout,
            TimerKey::Heartbeat(key),
        );
        tracing::debug!(conn = %short(id.as_str()), %remote, "connection opened");
        Some((key, id))
    }

    /// A text frame arrived.
    pub(crate) fn handle_text(&mut self, conn: ConnKey, text: &str, now: Instant) {
        if !self.touch(conn, now) || !self.charge_frame(conn, now) {
            return;
        }
        if text.len() > self.config.max_frame_bytes {
            self.refuse_too_large(conn, text.len());
            return;
        }
        match ClientMessage::decode(text) {
            Ok(message) => self.handle_message(conn, message, now),
            Err(e) => {
                self.stats.frames_malformed += 1;
                let code = e.code();
                tracing::debug!(conn = %self.short_id(conn), error = %e, "undecodable frame");
                self.send_error(conn, code, e.to_string());
                if code == ErrorCode::FrameTooLarge {
                    self.depart(conn, Departure::Refused, now);
                }
            }
        }
    }

    /// A binary frame arrived: not part of the protocol.
    pub(crate) fn handle_binary(&mut self, conn: ConnKey, len: usize, now: Instant) {
        if !self.touch(conn, now) || !self.charge_frame(conn, now) {
            return;
        }
        if len > self.config.max_frame_bytes {
            self.refuse_too_large(conn, len);
            return;
        }
        self.stats.frames_malformed += 1;
        self.send_error(
            conn,
            ErrorCode::BinaryFrame,
            "binary frames are not part of the protocol; send JSON text frames",
        );
    }

    /// A WebSocket control frame (ping/pong) arrived: the connection is alive.
    pub(crate) fn handle_liveness(&mut self, conn: ConnKey, now: Instant) {
        if self.touch(conn, now) {
            self.charge_frame(conn, now);
        }
    }

    /// A WebSocket upgrade from client `ip` is about to open a connection: count it, or refuse
    /// it when that IP has [`HubConfig::max_connections_per_ip`] open already. Every `true`
    /// must be matched by one [`Hub::release_ip`] when the connection (or the failed upgrade)
    /// is gone.
    pub(crate) fn reserve_ip(&mut self, ip: IpAddr) -> bool {
        let max = self.config.max_connections_per_ip;
        if self.per_ip.try_acquire(ip, max) {
            return true;
        }
        self.stats.connections_refused_per_ip += 1;
        tracing::warn!(
            client = %ip, open = self.per_ip.open(ip), max,
            "refusing a connection: too many from this client address"
        );
        false
    }

    /// A connection counted by [`Hub::reserve_ip`] is gone.
    pub(crate) fn release_ip(&mut self, ip: IpAddr) {
        self.per_ip.release(ip);
    }

    /// The driver saw the connection go. A no-op for a connection the hub already closed.
    pub(crate) fn handle_gone(&mut self, conn: ConnKey, gone: Gone, now: Instant) {
        let departure = match gone {
            Gone::Closed => Departure::Closed,
            Gone::SlowReader => Departure::SlowReader,
        };
        self.depart(conn, departure, now);
    }

    /// Time passed: expire heartbeats, prompts and code reservations that are due.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((due, _))) = self.timers.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((_, key))) = self.timers.pop() else {
                break;
            };
            match key {
                TimerKey::Heartbeat(conn) => {
                    let Some(c) = self.conns.get(&conn) else {
                        continue;
                    };
                    let deadline = c.last_seen + self.config.heartbeat_timeout;
                    if deadline <= now {
                        self.depart(conn, Departure::TimedOut, now);
                    } else {
                        self.arm(deadline, TimerKey::Heartbeat(conn));
                    }
                }
                TimerKey::Prompt(session) => {
                    let expired = matches!(
                        self.sessions.get(&session).map(|s| s.state),
                        Some(SessionState::Pending { deadline }) if deadline <= now
                    );
                    if expired {
                        self.end_session(&session, SessionEnd::PromptExpired);
                    }
                }
                TimerKey::Reservation(device) => {
                    let expired = self
                        .reservations
                        .get(&device)
                        .and_then(|r| r.expires)
                        .is_some_and(|e| e <= now);
                    if expired && let Some(r) = self.reservations.remove(&device) {
                        self.release_code_owner(&r.code, &device);
                    }
                }
            }
        }
    }

    /// When [`Hub::handle_timeout`] must next be called.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((due, _))| *due)
    }

    /// The next thing the driver must do.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Stop: every connection gets `bye` and is closed; new connections are refused.
    pub(crate) fn shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        let conns: Vec<ConnKey> = self.conns.keys().copied().collect();
        for conn in conns {
            self.depart(conn, Departure::Shutdown, now);
        }
    }

    /// Current counters and gauges.
    pub(crate) fn stats(&self) -> Stats {
        let pending = self
            .sessions
            .values()
            .filter(|s| matches!(s.state, SessionState::Pending { .. }))
            .count() as u64;
        Stats {
            connections_open: self.conns.len() as u64,
            desktops: self.codes.len() as u64,
            sessions_pending: pending,
            sessions_active: self.sessions.len() as u64 - pending,
            client_ips: self.per_ip.distinct() as u64,
            ..self.stats.clone()
        }
    }

    /// The sessions, oldest first, with shortened ids.
    pub(crate) fn sessions(&self, now: Instant) -> Vec<SessionInfo> {
        let mut list: Vec<(Instant, SessionInfo)> = self
            .sessions
            .iter()
            .map(|(id, s)| {
                (
                    s.created,
                    SessionInfo {
                        session: short(id.as_str()).to_owned(),
                        state: s.state.name(),
                        age_ms: millis(now.saturating_duration_since(s.created)),
                        desktop: s.desktop_device.device_name.to_string(),
                        phone: s.phone_device.device_name.to_string(),
                    },
                )
            })
            .collect();
        list.sort_by_key(|(created, _)| *created);
        list.into_iter().map(|(_, info)| info).collect()
    }

    // -----------------------------------------------------------------------------------------
    // Messages
    // -----------------------------------------------------------------------------------------

    fn handle_message(&mut self, conn: ConnKey, message: ClientMessage, now: Instant) {
        let greeted = self.conns.get(&conn).is_some_and(|c| c.greeted);
        if !greeted {
            match message {
                ClientMessage::Hello { version, client } => self.hello(conn, version, &client, now),
                other => self.send_error(
                    conn,
                    ErrorCode::HelloRequired,
                    format!("`hello` must come first, got `{}`", other.kind()),
                ),
            }
            return;
        }
        match message {
            ClientMessage::Hello { .. } => self.send_error(
                conn,
                ErrorCode::InvalidState,
                "`hello` was already received",
            ),
            ClientMessage::RegisterDesktop {
                device_id,
                device_name,
            } => self.register_desktop(conn, device_id, device_name, now),
            ClientMessage::PairRequest {
                code,
                device_id,
                device_name,
                auth,
            } => self.pair_request(conn, code, device_id, device_name, auth, now),
            ClientMessage::PairResponse {
                session,
                accept,
                auth,
            } => self.pair_response(conn, session, accept, auth),
            ClientMessage::Signal { session, signal } => self.signal(conn, session, signal),
            ClientMessage::Leave { session } => self.leave(conn, session),
            ClientMessage::Ping { seq } => self.send(conn, ServerMessage::Pong { seq }),
            ClientMessage::Pong { .. } => {}
            ClientMessage::Bye { reason } => {
                tracing::debug!(
                    conn = %self.short_id(conn),
                    reason = reason.as_ref().map_or("", |r| r.as_str()),
                    "client said bye"
                );
                self.depart(conn, Departure::Bye, now);
            }
            other => self.send_error(
                conn,
                ErrorCode::UnknownMessageType,
                format!("`{}` is not handled by this server", other.kind()),
            ),
        }
    }

    fn hello(&mut self, conn: ConnKey, version: u16, client: &ShortText, now: Instant) {
        if version != PROTOCOL_VERSION {
            tracing::info!(
                conn = %self.short_id(conn), version, client = %client,
                "refusing unsupported protocol version"
            );
            self.send_error(
                conn,
                ErrorCode::UnsupportedVersion,
                format!("this server speaks protocol version {PROTOCOL_VERSION}, not {version}"),
            );
            self.depart(conn, Departure::Refused, now);
            return;
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.greeted = true;
        let connection_id = c.id.clone();
        tracing::debug!(conn = %short(connection_id.as_str()), client = %client, "hello");
        let (anchor, anchor_wall) = self.config.wall_anchor;
        let wall = anchor_wall + now.saturating_duration_since(anchor);
        let ice_servers =
            self.config
                .ice
                .ice_servers_at(&connection_id, wall, c.embedded_stun.as_ref());
        let welcome = ServerMessage::Welcome {
            version: PROTOCOL_VERSION,
            ice_servers,
            connection_id,
            heartbeat_interval_ms: millis(self.config.heartbeat_interval),
            heartbeat_timeout_ms: millis(self.config.heartbeat_timeout),
        };
        self.send(conn, welcome);
    }

    fn register_desktop(
        &mut self,
        conn: ConnKey,
        device_id: DeviceId,
        device_name: DeviceName,
        now: Instant,
    ) {
        match self.conns.get(&conn).map(|c| &c.role) {
            Some(Role::Unassigned) => {}
            Some(Role::Desktop { .. }) => {
                return self.send_error(
                    conn,
                    ErrorCode::AlreadyRegistered,
                    "this connection is already registered as a desktop",
                );
            }
            Some(Role::Phone) => {
                return self.send_error(
                    conn,
                    ErrorCode::AlreadyRegistered,
                    "this connection already sent pair requests as a phone",
                );
            }
            None => return,
        }
        let reused = self
            .reservations
            .get(&device_id)
            .filter(|r| r.expires.is_none_or(|e| e > now))
            .map(|r| r.code.clone())
            .filter(|code| !self.codes.contains_key(code));
        let code = match reused {
            Some(code) => code,
            None => match self.fresh_code() {
                Some(code) => code,
                None => {
                    tracing::error!("no free pairing code after {CODE_ATTEMPTS} attempts");
                    return self.send_error(
                        conn,
                        ErrorCode::Overloaded,
                        "no pairing code is free right now; try again",
                    );
                }
            },
        };
        let reused = self
            .reservations
            .get(&device_id)
            .is_some_and(|r| r.code == code);
        let previous = self.reservations.insert(
            device_id.clone(),
            Reservation {
                code: code.clone(),
                expires: None,
            },
        );
        if let Some(old) = previous
            && old.code != code
            && !self.codes.contains_key(&old.code)
        {
            self.release_code_owner(&old.code, &device_id);
        }
        self.code_owners.insert(code.clone(), device_id.clone());
        self.codes.insert(code.clone(), conn);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.role = Role::Desktop {
                device: PeerDevice {
                    device_id,
                    device_name,
                },
                code: code.clone(),
                attempts: AttemptWindow::default(),
            };
        }
        tracing::info!(
            conn = %self.short_id(conn), code = %code.redacted(), reused,
            "desktop registered"
        );
        self.send(
            conn,
            ServerMessage::Registered {
                code,
                expires_in_ms: None,
            },
        );
    }

    fn pair_request(
        &mut self,
        conn: ConnKey,
        code: RoutingCode,
        device_id: DeviceId,
        device_name: DeviceName,
        auth: Option<AuthPayload>,
        now: Instant,
    ) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if matches!(c.role, Role::Desktop { .. }) {
            return self.send_error(
                conn,
                ErrorCode::AlreadyRegistered,
                "a registered desktop cannot send pair requests",
            );
        }
        if c.sessions.len() >= MAX_SESSIONS_PER_CONNECTION {
            return self.send_error(
                conn,
                ErrorCode::RateLimited,
                format!("at most {MAX_SESSIONS_PER_CONNECTION} sessions per connection"),
            );
        }
        self.stats.pair_requests += 1;
        let Some(&desktop) = self.codes.get(&code) else {
            self.stats.unknown_codes += 1;
            tracing::info!(conn = %self.short_id(conn), code = %code.redacted(), "unknown code");
            return self.send(
                conn,
                ServerMessage::PairResult {
                    session: None,
                    outcome: PairOutcome::UnknownCode,
                    peer: None,
                    auth: None,
                },
            );
        };
        let Some(desktop_device) = self.conns.get(&desktop).and_then(|d| match &d.role {
            Role::Desktop { device, .. } => Some(device.clone()),
            _ => None,
        }) else {
            return self.send_error(conn, ErrorCode::Internal, "the code's desktop is gone");
        };
        if let Err(exhausted) = self.charge_pair_attempt(desktop, now) {
            return self.refuse_pair_attempt(conn, desktop, &code, exhausted);
        }
        if self
            .conns
            .get(&desktop)
            .is_some_and(|d| d.sessions.len() >= MAX_SESSIONS_PER_CONNECTION)
        {
            return self.send_error(
                conn,
                ErrorCode::Overloaded,
                "this desktop has too many pairing requests; try again later",
            );
        }
        let Ok(session) = SessionId::new(random_hex128(&mut self.rng)) else {
            return self.send_error(conn, ErrorCode::Internal, "could not create a session id");
        };
        let phone_device = PeerDevice {
            device_id,
            device_name,
        };
        let deadline = now + self.config.prompt_timeout;
        self.sessions.insert(
            session.clone(),
            Session {
                desktop,
                phone: conn,
                desktop_device,
                phone_device: phone_device.clone(),
                state: SessionState::Pending { deadline },
                created: now,
            },
        );
        for member in [conn, desktop] {
            if let Some(m) = self.conns.get_mut(&member) {
                m.sessions.insert(session.clone());
            }
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.role = Role::Phone;
        }
        self.arm(deadline, TimerKey::Prompt(session.clone()));
        tracing::info!(
            session = %short(session.as_str()),
            phone = %self.short_id(conn),
            desktop = %self.short_id(desktop),
            code = %code.redacted(),
            "session: none -> pending (pair request)"
        );
        let expires_in_ms = millis(self.config.prompt_timeout);
        self.send(
            desktop,
            ServerMessage::PairPrompt {
                session: session.clone(),
                peer: phone_device,
                expires_in_ms,
                auth,
            },
        );
        self.send(
            conn,
            ServerMessage::PairPending {
                session,
                expires_in_ms,
            },
        );
    }

    fn pair_response(
        &mut self,
        conn: ConnKey,
        session: SessionId,
        accept: bool,
        auth: Option<AuthPayload>,
    ) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return self.send_error(conn, ErrorCode::UnknownSession, "no such session");
        };
        if s.desktop != conn {
            return self.send_error(
                conn,
                ErrorCode::NotSessionMember,
                "only the session's desktop answers its prompt",
            );
        }
        if s.state == SessionState::Active {
            return self.send_error(
                conn,
                ErrorCode::InvalidState,
                "the session was already accepted",
            );
        }
        if !accept {
            self.stats.pairs_rejected += 1;
            return self.end_session(&session, SessionEnd::Rejected);
        }
        s.state = SessionState::Active;
        let (phone, desktop) = (s.phone, s.desktop);
        let (phone_device, desktop_device) = (s.phone_device.clone(), s.desktop_device.clone());
        self.stats.pairs_accepted += 1;
        tracing::info!(
            session = %short(session.as_str()),
            "session: pending -> active (accepted)"
        );
        self.send(
            phone,
            ServerMessage::PairResult {
                session: Some(session.clone()),
                outcome: PairOutcome::Accepted,
                peer: Some(desktop_device),
                auth,
            },
        );
        self.send(
            desktop,
            ServerMessage::PairResult {
                session: Some(session),
                outcome: PairOutcome::Accepted,
                peer: Some(phone_device),
                auth: None,
            },
        );
    }

    fn signal(&mut self, conn: ConnKey, session: SessionId, signal: Signal) {
        let Some(s) = self.sessions.get(&session) else {
            return self.send_error(conn, ErrorCode::UnknownSession, "no such session");
        };
        let Some(other) = s.other(conn) else {
            tracing::warn!(
                conn = %self.short_id(conn), session = %short(session.as_str()),
                "signal from a connection outside the session refused"
            );
            return self.send_error(
                conn,
                ErrorCode::NotSessionMember,
                "this connection is not a member of that session",
            );
        };
        if s.state != SessionState::Active {
            return self.send_error(
                conn,
                ErrorCode::InvalidState,
                "signals flow only after the desktop accepted",
            );
        }
        self.stats.signals_relayed += 1;
        self.send(other, ServerMessage::Signal { session, signal });
    }

    fn leave(&mut self, conn: ConnKey, session: SessionId) {
        let Some(s) = self.sessions.get(&session) else {
            return self.send_error(conn, ErrorCode::UnknownSession, "no such session");
        };
        if s.other(conn).is_none() {
            return self.send_error(
                conn,
                ErrorCode::NotSessionMember,
                "this connection is not a member of that session",
            );
        }
        self.end_session(&session, SessionEnd::Left(conn, Departure::Bye));
    }

    // -----------------------------------------------------------------------------------------
    // Endings
    // -----------------------------------------------------------------------------------------

    /// Remove a connection and end everything it took part in.
    fn depart(&mut self, conn: ConnKey, departure: Departure, now: Instant) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        for session in &c.sessions {
            self.end_session(session, SessionEnd::Left(conn, departure));
        }
        if let Role::Desktop { device, code, .. } = &c.role {
            self.codes.remove(code);
            let ours = self
                .reservations
                .get(&device.device_id)
                .is_some_and(|r| r.code == *code);
            if ours {
                let expires = now + self.config.code_reservation;
                if let Some(r) = self.reservations.get_mut(&device.device_id) {
                    r.expires = Some(expires);
                }
                self.arm(expires, TimerKey::Reservation(device.device_id.clone()));
            } else {
                self.release_code_owner(code, &device.device_id);
            }
        }
        let short_id = short(c.id.as_str()).to_owned();
        let (close, bye) = match departure {
            Departure::TimedOut => {
                self.stats.stale_dropped += 1;
                tracing::info!(conn = %short_id, remote = %c.remote, "dropping silent connection");
                (CloseHow::AfterQueued, Some("heartbeat timeout"))
            }
            Departure::SlowReader => {
                self.stats.slow_readers_dropped += 1;
                tracing::warn!(
                    conn = %short_id, remote = %c.remote,
                    "dropping slow reader: its send queue is full"
                );
                (CloseHow::Abort, None)
            }
            Departure::Shutdown => (CloseHow::AfterQueued, Some("server shutting down")),
            Departure::Flooding => {
                self.stats.rate_limit_disconnects += 1;
                tracing::warn!(
                    conn = %short_id, remote = %c.remote,
                    "disconnecting a flooding client: over its message budget too often"
                );
                (CloseHow::AfterQueued, None)
            }
            Departure::Bye | Departure::Closed | Departure::Refused => {
                tracing::debug!(conn = %short_id, ?departure, "connection closed");
                (CloseHow::AfterQueued, None)
            }
        };
        if let Some(reason) = bye {
            self.send(
                conn,
                ServerMessage::Bye {
                    reason: Some(ShortText::truncated(reason)),
                },
            );
        }
        self.outputs.push_back(Output::Close { conn, how: close });
    }

    /// End a session, tell the members that need telling, log `old -> ended (reason)`.
    fn end_session(&mut self, session: &SessionId, end: SessionEnd) {
        let Some(s) = self.sessions.remove(session) else {
            return;
        };
        for member in [s.desktop, s.phone] {
            if let Some(m) = self.conns.get_mut(&member) {
                m.sessions.remove(session);
            }
        }
        let pending = matches!(s.state, SessionState::Pending { .. });
        let pair_result = |outcome| ServerMessage::PairResult {
            session: Some(session.clone()),
            outcome,
            peer: None,
            auth: None,
        };
        let reason: &str = match end {
            SessionEnd::Rejected => {
                self.send(s.phone, pair_result(PairOutcome::Rejected));
                self.send(s.desktop, pair_result(PairOutcome::Rejected));
                "rejected"
            }
            SessionEnd::PromptExpired => {
                self.stats.pairs_timed_out += 1;
                self.send(s.phone, pair_result(PairOutcome::TimedOut));
                self.send(s.desktop, pair_result(PairOutcome::TimedOut));
                "prompt expired"
            }
            SessionEnd::Left(_, Departure::Shutdown) => "server shutting down",
            SessionEnd::Left(leaver, departure) => {
                let other = if leaver == s.desktop {
                    s.phone
                } else {
                    s.desktop
                };
                if pending {
                    if leaver == s.phone {
                        self.send(other, pair_result(PairOutcome::Cancelled));
                    } else {
                        self.send(other, pair_result(PairOutcome::DesktopGone));
                    }
                } else {
                    let reason = match departure {
                        Departure::Bye => SessionEndReason::PeerLeft,
                        Departure::TimedOut => SessionEndReason::PeerTimedOut,
                        _ => SessionEndReason::PeerDisconnected,
                    };
                    self.send(
                        other,
                        ServerMessage::SessionEnded {
                            session: session.clone(),
                            reason,
                        },
                    );
                }
                match departure {
                    Departure::Bye => "member left",
                    Departure::TimedOut => "member timed out",
                    Departure::SlowReader => "member dropped as slow reader",
                    Departure::Flooding => "member dropped for flooding",
                    _ => "member disconnected",
                }
            }
        };
        tracing::info!(
            session = %short(session.as_str()),
            "session: {} -> ended ({reason})",
            s.state.name()
        );
    }

    // -----------------------------------------------------------------------------------------
    // Helpers
    // -----------------------------------------------------------------------------------------

    /// Record liveness; `false` for a connection the hub no longer knows.
    fn touch(&mut self, conn: ConnKey, now: Instant) -> bool {
        match self.conns.get_mut(&conn) {
            Some(c) => {
                c.last_seen = now;
                true
            }
            None => false,
        }
    }

    /// Charge one frame to the connection's message budget. `false` when the frame is over
    /// budget: it was answered `rate_limited` (and the connection closed when it keeps
    /// flooding) and must be dropped unread.
    fn charge_frame(&mut self, conn: ConnKey, now: Instant) -> bool {
        let max_strikes = self.config.rate_strikes;
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let Some(budget) = c.budget.as_mut() else {
            return true;
        };
        budget.refill(now);
        if budget.is_full() {
            c.strikes = 0;
        }
        if budget.try_take() {
            return true;
        }
        c.strikes = c.strikes.saturating_add(1);
        let strikes = c.strikes;
        self.stats.frames_rate_limited += 1;
        let (rate, burst) = (self.config.rate_limit, self.config.rate_burst);
        if strikes >= max_strikes {
            self.send_error(
                conn,
                ErrorCode::RateLimited,
                format!(
                    "{strikes} frames over the limit of {rate} messages/s (burst {burst}); \
                     closing the connection"
                ),
            );
            self.depart(conn, Departure::Flooding, now);
            return false;
        }
        if strikes == 1 {
            tracing::info!(
                conn = %self.short_id(conn), rate, burst,
                "connection over its message budget; refusing frames"
            );
        }
        self.send_error(
            conn,
            ErrorCode::RateLimited,
            format!("over the limit of {rate} messages/s (burst {burst}); frame dropped"),
        );
        false
    }

    /// Record a pair request for `desktop`'s code.
    fn charge_pair_attempt(
        &mut self,
        desktop: ConnKey,
        now: Instant,
    ) -> Result<(), AttemptsExhausted> {
        let (max, window) = (self.config.pair_attempts, self.config.pair_window);
        match self.conns.get_mut(&desktop).map(|d| &mut d.role) {
            Some(Role::Desktop { attempts, .. }) => attempts.try_record(now, max, window),
            _ => Ok(()),
        }
    }

    /// Refuse a pair request from `phone` for `desktop`'s code, which had too many; tell the
    /// desktop at the first refusal of a lockout.
    fn refuse_pair_attempt(
        &mut self,
        phone: ConnKey,
        desktop: ConnKey,
        code: &RoutingCode,
        exhausted: AttemptsExhausted,
    ) {
        self.stats.pair_attempts_refused += 1;
        let (max, window) = (self.config.pair_attempts, self.config.pair_window);
        let retry_s = exhausted.retry_after.as_secs_f64().ceil();
        if exhausted.first_refusal {
            tracing::warn!(
                phone = %self.short_id(phone), desktop = %self.short_id(desktop),
                code = %code.redacted(), max, window_s = window.as_secs(),
                "too many pair requests for one code; refusing more"
            );
            self.send_error(
                desktop,
                ErrorCode::TooManyAttempts,
                format!(
                    "your code received {max} pairing requests within {}s; further requests \
                     are refused for {retry_s}s",
                    window.as_secs()
                ),
            );
        } else {
            tracing::debug!(
                phone = %self.short_id(phone), code = %code.redacted(),
                "pair request refused: too many attempts"
            );
        }
        self.send_error(
            phone,
            ErrorCode::TooManyAttempts,
            format!("too many pairing requests for this code; try again in {retry_s}s"),
        );
    }

    fn refuse_too_large(&mut self, conn: ConnKey, size: usize) {
        self.stats.frames_malformed += 1;
        let max = self.config.max_frame_bytes;
        self.send_error(
            conn,
            ErrorCode::FrameTooLarge,
            format!("frame of {size} bytes exceeds the limit of {max} bytes"),
        );
        // The time of refusal does not matter: no timer is armed by a refusal.
        if let Some(c) = self.conns.get(&conn) {
            let now = c.last_seen;
            self.depart(conn, Departure::Refused, now);
        }
    }

    fn send(&mut self, to: ConnKey, message: ServerMessage) {
        self.outputs.push_back(Output::Send { to, message });
    }

    fn send_error(&mut self, to: ConnKey, code: ErrorCode, message: impl Into<String>) {
        self.stats.errors_sent += 1;
        self.send(to, ServerMessage::error(code, message));
    }

    fn arm(&mut self, due: Instant, key: TimerKey) {
        self.timers.push(Reverse((due, key)));
    }

    fn release_code_owner(&mut self, code: &RoutingCode, device: &DeviceId) {
        if self.code_owners.get(code) == Some(device) {
            self.code_owners.remove(code);
        }
    }

    /// A random code that no desktop holds and no absent desktop has reserved.
    fn fresh_code(&mut self) -> Option<RoutingCode> {
        (0..CODE_ATTEMPTS).find_map(|_| {
            let code = random_code(&mut self.rng, self.config.code_length)?;
            (!self.codes.contains_key(&code) && !self.code_owners.contains_key(&code))
                .then_some(code)
        })
    }

    fn short_id(&self, conn: ConnKey) -> String {
        self.conns
            .get(&conn)
            .map_or_else(|| format!("#{conn}"), |c| short(c.id.as_str()).to_owned())
    }
}

/// 128 random bits as 32 lowercase hex digits.
fn random_hex128(rng: &mut StdRng) -> String {
    format!("{:032x}", rng.random::<u128>())
}

/// A random routing code of `len` characters from [`ROUTING_ALPHABET`].
fn random_code(rng: &mut StdRng, len: usize) -> Option<RoutingCode> {
    let alphabet = ROUTING_ALPHABET.as_bytes();
    let code: String = (0..len)
        .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
        .collect();
    RoutingCode::new(code).ok()
}

/// The first 8 characters of an id, for logs.
pub(crate) fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn config() -> HubConfig {
        HubConfig::from(&ServerConfig::loopback())
    }

    fn hub() -> Hub {
        Hub::with_rng(config(), StdRng::seed_from_u64(7))
    }

    fn remote() -> SocketAddr {
        "127.0.0.1:5555".parse().unwrap()
    }

    fn drain(hub: &mut Hub) -> Vec<Output> {
        std::iter::from_fn(|| hub.poll_output()).collect()
    }

    fn sent_to(outputs: &[Output], conn: ConnKey) -> Vec<ServerMessage> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Send { to, message } if *to == conn => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    fn greeted(hub: &mut Hub, now: Instant) -> ConnKey {
        let (key, _) = hub.connect(remote(), None, now).unwrap();
        hub.handle_text(key, r#"{"type":"hello","version":1,"client":"t"}"#, now);
        drain(hub);
        key
    }

    fn register(hub: &mut Hub, conn: ConnKey, device: &str, now: Instant) -> RoutingCode {
        hub.handle_text(
            conn,
            &format!(r#"{{"type":"register_desktop","device_id":"{device}","device_name":"D"}}"#),
            now,
        );
        match sent_to(&drain(hub), conn).as_slice() {
            [ServerMessage::Registered { code, .. }] => code.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn codes_use_the_alphabet_and_the_length() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen = HashSet::new();
        for _ in 0..2000 {
            let code = random_code(&mut rng, 6).unwrap();
            assert_eq!(code.as_str().len(), 6);
            assert!(
                code.as_str()
                    .bytes()
                    .all(|b| ROUTING_ALPHABET.as_bytes().contains(&b))
            );
            seen.insert(code);
        }
        // 30^6 codes: 2000 draws collide with probability ~0.3%; allow a couple.
        assert!(seen.len() >= 1995, "{}", seen.len());
        let long = random_code(&mut rng, 16).unwrap();
        assert_eq!(long.as_str().len(), 16);
    }

    #[test]
    fn ids_are_128_bit_lowercase_hex() {
        let mut rng = StdRng::seed_from_u64(2);
        let a = random_hex128(&mut rng);
        let b = random_hex128(&mut rng);
        assert_ne!(a, b);
        ConnectionId::new(a.clone()).unwrap();
        SessionId::new(b).unwrap();
        assert_eq!(short(&a).len(), 8);
    }

    #[test]
    fn registered_codes_are_unique_even_with_a_tiny_code_space() {
        // With code length 4 there are 810_000 codes; register many desktops and check no
        // two connections ever hold the same code.
        let mut hub = Hub::with_rng(
            HubConfig {
                code_length: 4,
                ..config()
            },
            StdRng::seed_from_u64(3),
        );
        let now = Instant::now();
        let mut codes = HashSet::new();
        for i in 0..500 {
            let conn = greeted(&mut hub, now);
            let code = register(&mut hub, conn, &format!("dev{i}"), now);
            assert!(codes.insert(code));
        }
        assert_eq!(hub.stats().desktops, 500);
    }

    #[test]
    fn a_returning_desktop_gets_its_code_back_and_others_do_not_take_it() {
        let mut hub = hub();
        let t0 = Instant::now();
        let d1 = greeted(&mut hub, t0);
        let code = register(&mut hub, d1, "desk", t0);
        hub.handle_gone(d1, Gone::Closed, t0);
        drain(&mut hub);
        assert_eq!(hub.stats().desktops, 0);
        // A pair request for the reserved code finds no desktop.
        let phone = greeted(&mut hub, t0);
        hub.handle_text(
            phone,
            &format!(
                r#"{{"type":"pair_request","code":"{}","device_id":"p","device_name":"P"}}"#,
                code.as_str()
            ),
            t0,
        );
        let out = sent_to(&drain(&mut hub), phone);
        assert!(matches!(
            out.as_slice(),
            [ServerMessage::PairResult {
                outcome: PairOutcome::UnknownCode,
                session: None,
                ..
            }]
        ));
        let t1 = t0 + Duration::from_secs(60);
        let d2 = greeted(&mut hub, t1);
        assert_eq!(register(&mut hub, d2, "desk", t1), code);
        // After the reservation lapses, a new registration gets a fresh code.
        hub.handle_gone(d2, Gone::Closed, t1);
        let t2 = t1 + Duration::from_secs(5 * 60 + 1);
        hub.handle_timeout(t2);
        assert!(hub.reservations.is_empty() && hub.code_owners.is_empty());
    }

    #[test]
    fn timers_rearm_while_the_connection_talks() {
        let mut hub = hub();
        let t0 = Instant::now();
        let c = greeted(&mut hub, t0);
        let timeout = hub.config.heartbeat_timeout;
        let t1 = t0 + timeout / 2;
        hub.handle_text(c, r#"{"type":"ping","seq":1}"#, t1);
        drain(&mut hub);
        hub.handle_timeout(t0 + timeout);
        assert!(drain(&mut hub).is_empty(), "dropped although it pinged");
        assert_eq!(hub.poll_timeout(), Some(t1 + timeout));
        hub.handle_timeout(t1 + timeout);
        let out = drain(&mut hub);
        assert!(matches!(
            sent_to(&out, c).as_slice(),
            [ServerMessage::Bye { reason: Some(_) }]
        ));
        assert_eq!(
            out.last(),
            Some(&Output::Close {
                conn: c,
                how: CloseHow::AfterQueued
            })
        );
        assert_eq!(hub.stats().stale_dropped, 1);
    }

    #[test]
    fn slow_reader_is_aborted_and_its_peer_told() {
        let mut hub = hub();
        let now = Instant::now();
        let desk = greeted(&mut hub, now);
        let code = register(&mut hub, desk, "desk", now);
        let phone = greeted(&mut hub, now);
        hub.handle_text(
            phone,
            &format!(
                r#"{{"type":"pair_request","code":"{}","device_id":"p","device_name":"P"}}"#,
                code.as_str()
            ),
            now,
        );
        let session = match sent_to(&drain(&mut hub), desk).as_slice() {
            [ServerMessage::PairPrompt { session, .. }] => session.clone(),
            other => panic!("{other:?}"),
        };
        hub.handle_text(
            desk,
            &format!(r#"{{"type":"pair_response","session":"{session}","accept":true}}"#),
            now,
        );
        drain(&mut hub);
        hub.handle_gone(phone, Gone::SlowReader, now);
        let out = drain(&mut hub);
        assert!(out.contains(&Output::Close {
            conn: phone,
            how: CloseHow::Abort
        }));
        assert!(matches!(
            sent_to(&out, desk).as_slice(),
            [ServerMessage::SessionEnded {
                reason: SessionEndReason::PeerDisconnected,
                ..
            }]
        ));
        assert_eq!(hub.stats().slow_readers_dropped, 1);
        assert_eq!(hub.stats().sessions_active, 0);
    }

    #[test]
    fn shutdown_says_bye_to_everyone_and_refuses_newcomers() {
        let mut hub = hub();
        let now = Instant::now();
        let a = greeted(&mut hub, now);
        let b = greeted(&mut hub, now);
        hub.shutdown(now);
        let out = drain(&mut hub);
        for c in [a, b] {
            assert!(matches!(
                sent_to(&out, c).as_slice(),
                [ServerMessage::Bye { .. }]
            ));
        }
        assert!(hub.connect(remote(), None, now).is_none());
        assert_eq!(hub.stats().connections_open, 0);
    }

    fn errors(messages: &[ServerMessage], want: ErrorCode) -> usize {
        messages
            .iter()
            .filter(|m| matches!(m, ServerMessage::Error { code, .. } if *code == want))
            .count()
    }

    #[test]
    fn the_message_budget_refuses_excess_frames_and_cuts_off_a_flooder() {
        let mut hub = Hub::with_rng(
            HubConfig {
                rate_limit: 50,
                rate_burst: 100,
                rate_strikes: 10,
                ..config()
            },
            StdRng::seed_from_u64(11),
        );
        let t0 = Instant::now();
        let c = greeted(&mut hub, t0); // the hello took one token
        let ping = r#"{"type":"ping","seq":1}"#;
        for _ in 0..99 {
            hub.handle_text(c, ping, t0);
        }
        let out = sent_to(&drain(&mut hub), c);
        assert_eq!(out.len(), 99);
        assert!(out.iter().all(|m| matches!(m, ServerMessage::Pong { .. })));
        // Over budget: answered `rate_limited`, not handled.
        hub.handle_text(c, ping, t0);
        let out = sent_to(&drain(&mut hub), c);
        assert_eq!(errors(&out, ErrorCode::RateLimited), 1, "{out:?}");
        assert_eq!(out.len(), 1);
        // 50 messages/s: one token every 20 ms, so 1.5 tokens 30 ms later.
        let t1 = t0 + Duration::from_millis(30);
        hub.handle_text(c, ping, t1);
        hub.handle_text(c, ping, t1);
        let out = sent_to(&drain(&mut hub), c);
        assert!(
            matches!(
                out.as_slice(),
                [ServerMessage::Pong { .. }, ServerMessage::Error { .. }]
            ),
            "{out:?}"
        );
        assert_eq!(hub.stats().frames_rate_limited, 2);
        // Binary frames and WebSocket pings are charged too.
        hub.handle_binary(c, 3, t1);
        hub.handle_liveness(c, t1);
        assert_eq!(hub.stats().frames_rate_limited, 4);
        assert_eq!(
            errors(&sent_to(&drain(&mut hub), c), ErrorCode::RateLimited),
            2
        );
        // A pause that refills the whole budget forgives the strikes.
        let t2 = t1 + Duration::from_secs(2);
        for _ in 0..100 {
            hub.handle_text(c, ping, t2);
        }
        for _ in 0..9 {
            hub.handle_text(c, ping, t2);
        }
        let out = drain(&mut hub);
        assert!(
            !out.iter().any(|o| matches!(o, Output::Close { .. })),
            "cut off too early"
        );
        assert_eq!(errors(&sent_to(&out, c), ErrorCode::RateLimited), 9);
        // The tenth strike without a refill closes the connection, after its error.
        hub.handle_text(c, ping, t2);
        let out = drain(&mut hub);
        assert_eq!(errors(&sent_to(&out, c), ErrorCode::RateLimited), 1);
        match sent_to(&out, c).as_slice() {
            [ServerMessage::Error { message, .. }] => assert_eq!(
                message.as_str(),
                "10 frames over the limit of 50 messages/s (burst 100); closing the connection"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            out.last(),
            Some(&Output::Close {
                conn: c,
                how: CloseHow::AfterQueued
            })
        );
        assert_eq!(hub.stats().rate_limit_disconnects, 1);
        assert_eq!(hub.stats().connections_open, 0);
        // Frames that were already in flight are ignored.
        hub.handle_text(c, ping, t2);
        assert!(drain(&mut hub).is_empty());
    }

    #[test]
    fn a_flooder_does_not_spend_another_connections_budget() {
        let mut hub = Hub::with_rng(
            HubConfig {
                rate_limit: 1,
                rate_burst: 2,
                rate_strikes: 3,
                ..config()
            },
            StdRng::seed_from_u64(12),
        );
        let t0 = Instant::now();
        let flooder = greeted(&mut hub, t0);
        let calm = greeted(&mut hub, t0);
        for _ in 0..5 {
            hub.handle_text(flooder, r#"{"type":"ping","seq":1}"#, t0);
        }
        hub.handle_text(calm, r#"{"type":"ping","seq":2}"#, t0);
        let out = drain(&mut hub);
        assert!(out.contains(&Output::Close {
            conn: flooder,
            how: CloseHow::AfterQueued
        }));
        assert_eq!(sent_to(&out, calm), vec![ServerMessage::Pong { seq: 2 }]);
        // No limit at all with a rate of 0.
        let mut hub = Hub::with_rng(
            HubConfig {
                rate_limit: 0,
                ..config()
            },
            StdRng::seed_from_u64(13),
        );
        let c = greeted(&mut hub, t0);
        for _ in 0..10_000 {
            hub.handle_text(c, r#"{"type":"ping","seq":1}"#, t0);
        }
        assert_eq!(sent_to(&drain(&mut hub), c).len(), 10_000);
    }

    fn pair(hub: &mut Hub, phone: ConnKey, code: &RoutingCode, now: Instant) {
        hub.handle_text(
            phone,
            &format!(
                r#"{{"type":"pair_request","code":"{}","device_id":"p","device_name":"P"}}"#,
                code.as_str()
            ),
            now,
        );
    }

    #[test]
    fn pair_attempts_per_code_are_limited_in_a_sliding_window() {
        let mut hub = Hub::with_rng(
            HubConfig {
                pair_attempts: 3,
                pair_window: Duration::from_secs(60),
                ..config()
            },
            StdRng::seed_from_u64(14),
        );
        let t0 = Instant::now();
        let desk = greeted(&mut hub, t0);
        let code = register(&mut hub, desk, "desk", t0);
        let other_desk = greeted(&mut hub, t0);
        let other_code = register(&mut hub, other_desk, "other", t0);
        // Three phones, one attempt each: all prompt the desktop.
        let phones: Vec<ConnKey> = (0..3).map(|_| greeted(&mut hub, t0)).collect();
        for (i, phone) in phones.iter().enumerate() {
            pair(&mut hub, *phone, &code, t0 + Duration::from_secs(i as u64));
        }
        let out = drain(&mut hub);
        assert_eq!(sent_to(&out, desk).len(), 3);
        // The fourth, from a phone that already tried, is refused; the desktop is told once.
        pair(&mut hub, phones[0], &code, t0 + Duration::from_secs(10));
        let out = drain(&mut hub);
        assert_eq!(
            errors(&sent_to(&out, phones[0]), ErrorCode::TooManyAttempts),
            1
        );
        assert_eq!(errors(&sent_to(&out, desk), ErrorCode::TooManyAttempts), 1);
        match sent_to(&out, desk).as_slice() {
            [ServerMessage::Error { message, .. }] => assert_eq!(
                message.as_str(),
                "your code received 3 pairing requests within 60s; further requests are refused \
                 for 50s"
            ),
            other => panic!("{other:?}"),
        }
        let fresh = greeted(&mut hub, t0);
        pair(&mut hub, fresh, &code, t0 + Duration::from_secs(20));
        let out = drain(&mut hub);
        assert_eq!(errors(&sent_to(&out, fresh), ErrorCode::TooManyAttempts), 1);
        assert!(sent_to(&out, desk).is_empty(), "told twice: {out:?}");
        assert_eq!(hub.stats().pair_attempts_refused, 2);
        // Another desktop's code is not affected.
        pair(&mut hub, fresh, &other_code, t0 + Duration::from_secs(20));
        assert!(matches!(
            sent_to(&drain(&mut hub), other_desk).as_slice(),
            [ServerMessage::PairPrompt { .. }]
        ));
        // Once the first attempt is 60 s old, one more gets through.
        let late = greeted(&mut hub, t0);
        pair(&mut hub, late, &code, t0 + Duration::from_secs(60));
        assert!(matches!(
            sent_to(&drain(&mut hub), late).as_slice(),
            [ServerMessage::PairPending { .. }]
        ));
    }

    #[test]
    fn connections_per_ip_are_capped() {
        let mut hub = Hub::with_rng(
            HubConfig {
                max_connections_per_ip: 2,
                ..config()
            },
            StdRng::seed_from_u64(15),
        );
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        assert!(hub.reserve_ip(a) && hub.reserve_ip(a));
        assert!(!hub.reserve_ip(a));
        assert!(hub.reserve_ip(b));
        assert_eq!(hub.stats().connections_refused_per_ip, 1);
        assert_eq!(hub.stats().client_ips, 2);
        hub.release_ip(a);
        assert!(hub.reserve_ip(a));
    }

    #[test]
    fn ids_come_from_the_operating_systems_generator() {
        // Two hubs made with `new` must not share a seed: their first ids differ.
        let now = Instant::now();
        let (_, a) = Hub::new(config()).connect(remote(), None, now).unwrap();
        let (_, b) = Hub::new(config()).connect(remote(), None, now).unwrap();
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.as_str().len(), 32);
            u128::from_str_radix(id.as_str(), 16).unwrap();
        }
    }
}
