//! The hub: every connection, registered desktop and pairing session, as a sans-IO machine.
//!
//! The hub owns no sockets, no clock and no tasks. Its driver ([`crate::server`]) feeds it
//! inputs — a connection opened, a frame arrived, a connection went away, time passed — each
//! with an explicit `now`, then drains [`Hub::poll_output`] (messages to deliver, connections to
//! close) and sleeps until [`Hub::poll_timeout`]. Timers (heartbeat deadlines, prompt expiry,
//! code expiry, code reservations) live in one min-heap with lazy deletion: an entry that no
//! longer applies when it pops is dropped or re-armed.
//!
//! Routing rules, in short: `hello` first; a desktop registers once and gets a code; a phone's
//! `pair_request` for a live code, or its `connect_request` naming a connected desktop's device
//! id, opens a pending session and prompts the desktop; the desktop accepts or rejects (or the
//! prompt expires); signals flow only between the two members of an accepted session. Whoever
//! leaves, disconnects or goes silent ends its sessions, and the other member is told why.
//!
//! Codes: a desktop's code lives `code_ttl` (when set), then the hub retires it and sends the
//! desktop a fresh one in a new `registered`; `renew_code` does the same at once. Retired codes
//! are remembered for a while ([`RetiredCodes`]): a phone asking for one is told `code_expired`
//! or `code_used`, and no desktop gets it meanwhile. A desktop that goes away keeps its code
//! reserved for `code_reservation` and gets it back, with the time it had left, when it returns.
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
use crate::retired::{RetireReason, RetiredCodes};

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

/// How long a retired code is remembered (answered `code_expired`/`code_used`, not reissued).
const RETIRED_CODE_RETENTION: Duration = Duration::from_secs(60 * 60);

/// How many retired codes are remembered at most; beyond that the oldest are forgotten.
const MAX_RETIRED_CODES: usize = 100_000;

/// When a code expires and no fresh code is free, how long it stays before the next try.
const CODE_RETRY: Duration = Duration::from_secs(1);

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
    /// Pair requests for a code that expired (answered `code_expired`).
    pub expired_codes: u64,
    /// Pair requests for a code its desktop renewed (answered `code_used`).
    pub used_codes: u64,
    /// Codes retired since start, because they expired or their desktop renewed them.
    pub codes_retired: u64,
    /// Connect requests (a phone reaching a desktop by device id) received.
    pub connect_requests: u64,
    /// Connect requests for a desktop that is not connected (answered `desktop_offline`).
    pub desktops_offline: u64,
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
    /// The characters codes are drawn from: [`ROUTING_ALPHABET`], or fewer of them in tests
    /// that need a small code space.
    pub(crate) code_alphabet: &'static str,
    /// How long a code lives; zero is forever.
    pub(crate) code_ttl: Duration,
    pub(crate) code_reservation: Duration,
    /// How long retired codes are remembered, and how many at most.
    pub(crate) retired_retention: Duration,
    pub(crate) max_retired_codes: usize,
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
            code_alphabet: ROUTING_ALPHABET,
            code_ttl: c.code_ttl,
            code_reservation: c.code_reservation,
            retired_retention: RETIRED_CODE_RETENTION,
            max_retired_codes: MAX_RETIRED_CODES,
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
    /// Codes that expired or were renewed, remembered for a while.
    retired: RetiredCodes,
    /// The connections registered as each desktop device, oldest registration first.
    desktop_conns: HashMap<DeviceId, Vec<ConnKey>>,
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
        /// When `code` expires; `None`: never.
        code_expires: Option<Instant>,
        /// Pair and connect requests for this desktop in the current window (kept when the
        /// code changes: the limit is per desktop).
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
    /// When the code itself expires (kept across a reconnect); `None`: never.
    code_expires: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Heartbeat(ConnKey),
    Prompt(SessionId),
    Reservation(DeviceId),
    /// A live or reserved code's lifetime ends.
    CodeExpiry(RoutingCode),
}

/// How a phone names the desktop it wants: for logs.
#[derive(Debug, Clone, Copy)]
enum Via<'a> {
    /// A `pair_request` with this code.
    Code(&'a RoutingCode),
    /// A `connect_request` naming the desktop's device id (not logged: it addresses the
    /// desktop like a code does).
    Device,
}

impl std::fmt::Display for Via<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Via::Code(code) => write!(f, "pair request, code {}", code.redacted()),
            Via::Device => f.write_str("connect request"),
        }
    }
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
#[derive(Debug, Clone, PartialEq, Eq)]
enum SessionEnd {
    /// The desktop said no; its `auth` goes to the phone.
    Rejected(Option<AuthPayload>),
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
        let retired = RetiredCodes::new(config.retired_retention, config.max_retired_codes);
        Hub {
            config,
            rng,
            next_key: 1,
            conns: HashMap::new(),
            codes: HashMap::new(),
            reservations: HashMap::new(),
            code_owners: HashMap::new(),
            retired,
            desktop_conns: HashMap::new(),
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

    /// Time passed: expire heartbeats, prompts, codes, code reservations and retired codes
    /// that are due.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.retired.prune(now);
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
                TimerKey::CodeExpiry(code) => self.expire_code(&code, now),
            }
        }
    }

    /// When [`Hub::handle_timeout`] must next be called.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((due, _))| *due);
        match (timer, self.retired.next_lapse()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
            ClientMessage::ConnectRequest {
                desktop,
                device_id,
                device_name,
                auth,
            } => self.connect_request(conn, desktop, device_id, device_name, auth, now),
            ClientMessage::RenewCode => self.renew_code(conn, now),
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
        // A reserved code that expired while its desktop was away is retired, not handed back
        // (its timer may not have fired yet).
        self.retire_reserved_if_expired(&device_id, now);
        let reused = self
            .reservations
            .get(&device_id)
            .filter(|r| r.expires.is_none_or(|e| e > now))
            .filter(|r| !self.codes.contains_key(&r.code))
            .map(|r| (r.code.clone(), r.code_expires));
        let (code, code_expires) = match reused {
            Some(reused) => reused,
            None => match self.fresh_code() {
                Some(code) => (code, self.code_expiry(now)),
                None => return self.refuse_no_free_code(conn),
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
                code_expires,
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
        if !reused && let Some(expires) = code_expires {
            // A reused code's expiry timer is still in the heap from when it was issued.
            self.arm(expires, TimerKey::CodeExpiry(code.clone()));
        }
        self.desktop_conns
            .entry(device_id.clone())
            .or_default()
            .push(conn);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.role = Role::Desktop {
                device: PeerDevice {
                    device_id,
                    device_name,
                },
                code: code.clone(),
                code_expires,
                attempts: AttemptWindow::default(),
            };
        }
        tracing::info!(
            conn = %self.short_id(conn), code = %code.redacted(), reused,
            "desktop registered"
        );
        self.send_registered(conn, code, code_expires, now);
    }

    /// `renew_code`: the desktop's code was used or burned; retire it and hand out a fresh one.
    /// The desktop's pending prompts and sessions are not affected.
    fn renew_code(&mut self, conn: ConnKey, now: Instant) {
        match self.conns.get(&conn).map(|c| &c.role) {
            Some(Role::Desktop { .. }) => {}
            Some(_) => {
                return self.send_error(
                    conn,
                    ErrorCode::InvalidState,
                    "only a registered desktop has a code to renew",
                );
            }
            None => return,
        }
        if !self.replace_code(conn, RetireReason::Used, now) {
            self.refuse_no_free_code(conn);
        }
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
        if !self.may_ask_to_pair(conn, "pair requests") {
            return;
        }
        self.stats.pair_requests += 1;
        let Some(&desktop) = self.codes.get(&code) else {
            let outcome = match self.retired.get(&code, now) {
                Some(RetireReason::Expired) => {
                    self.stats.expired_codes += 1;
                    PairOutcome::CodeExpired
                }
                Some(RetireReason::Used) => {
                    self.stats.used_codes += 1;
                    PairOutcome::CodeUsed
                }
                None => {
                    self.stats.unknown_codes += 1;
                    PairOutcome::UnknownCode
                }
            };
            tracing::info!(
                conn = %self.short_id(conn), code = %code.redacted(), ?outcome,
                "pair request for a code no desktop holds"
            );
            return self.send(
                conn,
                ServerMessage::PairResult {
                    session: None,
                    outcome,
                    peer: None,
                    auth: None,
                },
            );
        };
        let phone_device = PeerDevice {
            device_id,
            device_name,
        };
        self.open_session(conn, desktop, phone_device, auth, Via::Code(&code), now);
    }

    /// `connect_request`: a phone reaching a desktop it paired with before, by the desktop's
    /// device id. Routed to the latest live registration of that device, then handled like a
    /// pair request.
    fn connect_request(
        &mut self,
        conn: ConnKey,
        desktop: DeviceId,
        device_id: DeviceId,
        device_name: DeviceName,
        auth: Option<AuthPayload>,
        now: Instant,
    ) {
        if !self.may_ask_to_pair(conn, "connect requests") {
            return;
        }
        self.stats.connect_requests += 1;
        let Some(target) = self
            .desktop_conns
            .get(&desktop)
            .and_then(|conns| conns.last())
            .copied()
        else {
            self.stats.desktops_offline += 1;
            tracing::info!(conn = %self.short_id(conn), "connect request for a desktop that is offline");
            return self.send(
                conn,
                ServerMessage::PairResult {
                    session: None,
                    outcome: PairOutcome::DesktopOffline,
                    peer: None,
                    auth: None,
                },
            );
        };
        let phone_device = PeerDevice {
            device_id,
            device_name,
        };
        self.open_session(conn, target, phone_device, auth, Via::Device, now);
    }

    /// Whether `conn` may ask a desktop to pair (`what`: pair or connect requests); when not,
    /// it was told why.
    fn may_ask_to_pair(&mut self, conn: ConnKey, what: &str) -> bool {
        let Some(c) = self.conns.get(&conn) else {
            return false;
        };
        if matches!(c.role, Role::Desktop { .. }) {
            self.send_error(
                conn,
                ErrorCode::AlreadyRegistered,
                format!("a registered desktop cannot send {what}"),
            );
            return false;
        }
        if c.sessions.len() >= MAX_SESSIONS_PER_CONNECTION {
            self.send_error(
                conn,
                ErrorCode::RateLimited,
                format!("at most {MAX_SESSIONS_PER_CONNECTION} sessions per connection"),
            );
            return false;
        }
        true
    }

    /// Open a pending session between the phone `conn` and the registered desktop `desktop`:
    /// charge the desktop's attempt window, prompt it, tell the phone to wait.
    fn open_session(
        &mut self,
        conn: ConnKey,
        desktop: ConnKey,
        phone_device: PeerDevice,
        auth: Option<AuthPayload>,
        via: Via<'_>,
        now: Instant,
    ) {
        let Some(desktop_device) = self.conns.get(&desktop).and_then(|d| match &d.role {
            Role::Desktop { device, .. } => Some(device.clone()),
            _ => None,
        }) else {
            return self.send_error(conn, ErrorCode::Internal, "the desktop is gone");
        };
        if let Err(exhausted) = self.charge_pair_attempt(desktop, now) {
            return self.refuse_pair_attempt(conn, desktop, via, exhausted);
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
            "session: none -> pending ({via})"
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
            return self.end_session(&session, SessionEnd::Rejected(auth));
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
        if let Role::Desktop {
            device,
            code,
            code_expires,
            ..
        } = &c.role
        {
            self.codes.remove(code);
            if let Some(conns) = self.desktop_conns.get_mut(&device.device_id) {
                conns.retain(|&k| k != conn);
                if conns.is_empty() {
                    self.desktop_conns.remove(&device.device_id);
                }
            }
            let ours = self
                .reservations
                .get(&device.device_id)
                .is_some_and(|r| r.code == *code);
            if ours {
                let expires = now + self.config.code_reservation;
                if let Some(r) = self.reservations.get_mut(&device.device_id) {
                    r.expires = Some(expires);
                    r.code_expires = *code_expires;
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
            SessionEnd::Rejected(auth) => {
                self.send(
                    s.phone,
                    ServerMessage::PairResult {
                        session: Some(session.clone()),
                        outcome: PairOutcome::Rejected,
                        peer: None,
                        auth,
                    },
                );
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

    /// Refuse a pair or connect request from `phone` for `desktop`, which had too many; tell
    /// the desktop at the first refusal of a lockout.
    fn refuse_pair_attempt(
        &mut self,
        phone: ConnKey,
        desktop: ConnKey,
        via: Via<'_>,
        exhausted: AttemptsExhausted,
    ) {
        self.stats.pair_attempts_refused += 1;
        let (max, window) = (self.config.pair_attempts, self.config.pair_window);
        let retry_s = exhausted.retry_after.as_secs_f64().ceil();
        if exhausted.first_refusal {
            tracing::warn!(
                phone = %self.short_id(phone), desktop = %self.short_id(desktop),
                max, window_s = window.as_secs(),
                "too many pair requests for one desktop ({via}); refusing more"
            );
            self.send_error(
                desktop,
                ErrorCode::TooManyAttempts,
                format!(
                    "this desktop received {max} pairing requests within {}s; further requests \
                     are refused for {retry_s}s",
                    window.as_secs()
                ),
            );
        } else {
            tracing::debug!(
                phone = %self.short_id(phone),
                "{via} refused: too many attempts"
            );
        }
        self.send_error(
            phone,
            ErrorCode::TooManyAttempts,
            format!("too many pairing requests for this desktop; try again in {retry_s}s"),
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

    /// A random code that no desktop holds, no absent desktop has reserved and that was not
    /// retired recently.
    fn fresh_code(&mut self) -> Option<RoutingCode> {
        let (alphabet, len) = (self.config.code_alphabet, self.config.code_length);
        (0..CODE_ATTEMPTS).find_map(|_| {
            let code = random_code(&mut self.rng, alphabet, len)?;
            (!self.codes.contains_key(&code)
                && !self.code_owners.contains_key(&code)
                && !self.retired.contains(&code))
            .then_some(code)
        })
    }

    /// When a code issued at `now` expires; `None` without a code lifetime.
    fn code_expiry(&self, now: Instant) -> Option<Instant> {
        let ttl = self.config.code_ttl;
        (!ttl.is_zero()).then(|| now.checked_add(ttl)).flatten()
    }

    /// Tell a desktop its code and how long it has left.
    fn send_registered(
        &mut self,
        conn: ConnKey,
        code: RoutingCode,
        expires: Option<Instant>,
        now: Instant,
    ) {
        let expires_in_ms = expires.map(|e| millis(e.saturating_duration_since(now)));
        self.send(
            conn,
            ServerMessage::Registered {
                code,
                expires_in_ms,
            },
        );
    }

    fn refuse_no_free_code(&mut self, conn: ConnKey) {
        tracing::error!("no free pairing code after {CODE_ATTEMPTS} attempts");
        self.send_error(
            conn,
            ErrorCode::Overloaded,
            "no pairing code is free right now; try again",
        );
    }

    /// Retire `conn`'s code for `reason` and give the desktop a fresh one, announced with
    /// `registered`. `false` when no fresh code is free: the desktop keeps the one it has.
    fn replace_code(&mut self, conn: ConnKey, reason: RetireReason, now: Instant) -> bool {
        let Some(fresh) = self.fresh_code() else {
            return false;
        };
        let fresh_expires = self.code_expiry(now);
        let Some(Role::Desktop {
            device,
            code,
            code_expires,
            ..
        }) = self.conns.get_mut(&conn).map(|c| &mut c.role)
        else {
            return false;
        };
        let old = std::mem::replace(code, fresh.clone());
        *code_expires = fresh_expires;
        let device_id = device.device_id.clone();
        self.codes.remove(&old);
        self.codes.insert(fresh.clone(), conn);
        self.release_code_owner(&old, &device_id);
        self.code_owners.insert(fresh.clone(), device_id.clone());
        if let Some(r) = self.reservations.get_mut(&device_id)
            && r.code == old
        {
            r.code = fresh.clone();
            r.code_expires = fresh_expires;
        }
        if let Some(expires) = fresh_expires {
            self.arm(expires, TimerKey::CodeExpiry(fresh.clone()));
        }
        self.retire(old, reason, now);
        tracing::info!(
            conn = %self.short_id(conn), code = %fresh.redacted(),
            "desktop has a fresh code"
        );
        self.send_registered(conn, fresh, fresh_expires, now);
        true
    }

    /// A code's expiry timer fired: retire it if it is still live or reserved and due.
    fn expire_code(&mut self, code: &RoutingCode, now: Instant) {
        let Some(&conn) = self.codes.get(code) else {
            if let Some(device) = self.code_owners.get(code).cloned() {
                self.retire_reserved_if_expired(&device, now);
            }
            return;
        };
        let due = matches!(
            self.conns.get(&conn).map(|c| &c.role),
            Some(Role::Desktop { code: held, code_expires: Some(e), .. })
                if held == code && *e <= now
        );
        if !due || self.replace_code(conn, RetireReason::Expired, now) {
            return;
        }
        // No fresh code is free: keep this one a little longer and try again.
        tracing::error!(
            conn = %self.short_id(conn),
            "no free pairing code after {CODE_ATTEMPTS} attempts; the expired code stays for now"
        );
        let retry = now + CODE_RETRY;
        if let Some(Role::Desktop { code_expires, .. }) =
            self.conns.get_mut(&conn).map(|c| &mut c.role)
        {
            *code_expires = Some(retry);
        }
        self.arm(retry, TimerKey::CodeExpiry(code.clone()));
    }

    /// Retire the code reserved for the absent desktop `device` if it expired by `now`.
    fn retire_reserved_if_expired(&mut self, device: &DeviceId, now: Instant) {
        let due = self.reservations.get(device).is_some_and(|r| {
            r.expires.is_some()
                && r.code_expires.is_some_and(|e| e <= now)
                && !self.codes.contains_key(&r.code)
        });
        if due && let Some(r) = self.reservations.remove(device) {
            self.release_code_owner(&r.code, device);
            self.retire(r.code, RetireReason::Expired, now);
        }
    }

    /// Remember a code as retired, so phones asking for it are told and nobody gets it soon.
    fn retire(&mut self, code: RoutingCode, reason: RetireReason, now: Instant) {
        tracing::info!(code = %code.redacted(), reason = reason.name(), "code retired");
        self.stats.codes_retired += 1;
        self.retired.insert(code, reason, now);
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

/// A random routing code of `len` characters from `alphabet` (a subset of
/// [`ROUTING_ALPHABET`]).
fn random_code(rng: &mut StdRng, alphabet: &str, len: usize) -> Option<RoutingCode> {
    let alphabet = alphabet.as_bytes();
    if alphabet.is_empty() {
        return None;
    }
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
            let code = random_code(&mut rng, ROUTING_ALPHABET, 6).unwrap();
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
        let long = random_code(&mut rng, ROUTING_ALPHABET, 16).unwrap();
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
                "this desktop received 3 pairing requests within 60s; further requests are refused \
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

    // -----------------------------------------------------------------------------------------
    // Code lifetime, renewal, retired codes, connect requests
    // -----------------------------------------------------------------------------------------

    const TEN_MIN: Duration = Duration::from_secs(10 * 60);

    fn with_config(config: HubConfig, seed: u64) -> Hub {
        Hub::with_rng(config, StdRng::seed_from_u64(seed))
    }

    /// Codes living ten minutes, and connections that stay while the clock jumps ahead.
    fn timed() -> HubConfig {
        HubConfig {
            code_ttl: TEN_MIN,
            heartbeat_timeout: Duration::from_secs(24 * 3600),
            ..config()
        }
    }

    /// The `registered` messages `conn` got: code and remaining lifetime.
    fn registered(outputs: &[Output], conn: ConnKey) -> Vec<(RoutingCode, Option<u64>)> {
        sent_to(outputs, conn)
            .into_iter()
            .filter_map(|m| match m {
                ServerMessage::Registered {
                    code,
                    expires_in_ms,
                } => Some((code, expires_in_ms)),
                _ => None,
            })
            .collect()
    }

    /// Register and return the code with its remaining lifetime.
    fn register_timed(
        hub: &mut Hub,
        conn: ConnKey,
        device: &str,
        now: Instant,
    ) -> (RoutingCode, Option<u64>) {
        hub.handle_text(
            conn,
            &format!(r#"{{"type":"register_desktop","device_id":"{device}","device_name":"D"}}"#),
            now,
        );
        match registered(&drain(hub), conn).as_slice() {
            [one] => one.clone(),
            other => panic!("{other:?}"),
        }
    }

    /// A fresh phone's pair request for `code`: the outcome of a `pair_result` without a
    /// session, or `None` when the request went through (`pair_pending`).
    fn try_code(hub: &mut Hub, code: &RoutingCode, now: Instant) -> Option<PairOutcome> {
        let phone = greeted(hub, now);
        pair(hub, phone, code, now);
        match sent_to(&drain(hub), phone).as_slice() {
            [
                ServerMessage::PairResult {
                    session: None,
                    outcome,
                    ..
                },
            ] => Some(*outcome),
            [ServerMessage::PairPending { .. }] => None,
            other => panic!("{other:?}"),
        }
    }

    fn renew(hub: &mut Hub, conn: ConnKey, now: Instant) -> Vec<Output> {
        hub.handle_text(conn, r#"{"type":"renew_code"}"#, now);
        drain(hub)
    }

    fn connect(hub: &mut Hub, phone: ConnKey, desktop: &str, now: Instant) {
        hub.handle_text(
            phone,
            &format!(
                r#"{{"type":"connect_request","desktop":"{desktop}","device_id":"p","device_name":"P","auth":"cGhvbmU"}}"#
            ),
            now,
        );
    }

    #[test]
    fn an_expired_code_is_replaced_and_then_answers_code_expired() {
        let mut hub = with_config(timed(), 21);
        let t0 = Instant::now();
        let desk = greeted(&mut hub, t0);
        let (old, expires_in_ms) = register_timed(&mut hub, desk, "desk", t0);
        assert_eq!(expires_in_ms, Some(600_000));
        // A pending prompt from before the expiry survives it.
        let early = greeted(&mut hub, t0);
        pair(
            &mut hub,
            early,
            &old,
            t0 + TEN_MIN - Duration::from_secs(30),
        );
        drain(&mut hub);
        assert!(hub.poll_timeout().is_some_and(|t| t <= t0 + TEN_MIN));
        hub.handle_timeout(t0 + TEN_MIN - Duration::from_millis(1));
        assert!(
            registered(&drain(&mut hub), desk).is_empty(),
            "expired early"
        );
        hub.handle_timeout(t0 + TEN_MIN);
        let (fresh, expires_in_ms) = match registered(&drain(&mut hub), desk).as_slice() {
            [one] => one.clone(),
            other => panic!("{other:?}"),
        };
        assert_ne!(fresh, old);
        assert_eq!(expires_in_ms, Some(600_000));
        let t1 = t0 + TEN_MIN + Duration::from_secs(1);
        assert_eq!(try_code(&mut hub, &old, t1), Some(PairOutcome::CodeExpired));
        assert_eq!(try_code(&mut hub, &fresh, t1), None);
        let stats = hub.stats();
        assert_eq!(
            (
                stats.expired_codes,
                stats.codes_retired,
                stats.unknown_codes
            ),
            (1, 1, 0)
        );
        assert_eq!(stats.sessions_pending, 2);
        // The fresh code expires in turn, ten minutes after it was issued.
        hub.handle_timeout(t0 + 2 * TEN_MIN);
        assert_eq!(registered(&drain(&mut hub), desk).len(), 1);
    }

    #[test]
    fn without_a_code_ttl_codes_never_expire() {
        let mut hub = with_config(
            HubConfig {
                code_ttl: Duration::ZERO,
                ..timed()
            },
            22,
        );
        let t0 = Instant::now();
        let desk = greeted(&mut hub, t0);
        let (code, expires_in_ms) = register_timed(&mut hub, desk, "desk", t0);
        assert_eq!(expires_in_ms, None);
        let late = t0 + Duration::from_secs(3600);
        hub.handle_timeout(late);
        assert!(registered(&drain(&mut hub), desk).is_empty());
        assert_eq!(try_code(&mut hub, &code, late), None);
    }

    #[test]
    fn a_returning_desktop_keeps_the_time_its_code_had_left() {
        let mut hub = with_config(
            HubConfig {
                code_reservation: Duration::from_secs(5 * 60),
                ..timed()
            },
            23,
        );
        let t0 = Instant::now();
        let min = |m: u64| t0 + Duration::from_secs(60 * m);
        let d1 = greeted(&mut hub, t0);
        let (code, _) = register_timed(&mut hub, d1, "desk", t0);
        hub.handle_gone(d1, Gone::Closed, min(2));
        drain(&mut hub);
        let d2 = greeted(&mut hub, min(4));
        assert_eq!(
            register_timed(&mut hub, d2, "desk", min(4)),
            (code.clone(), Some(6 * 60 * 1000))
        );
        // It expires at the original time, on the new connection.
        hub.handle_timeout(min(10));
        let (fresh, left) = match registered(&drain(&mut hub), d2).as_slice() {
            [one] => one.clone(),
            other => panic!("{other:?}"),
        };
        assert_ne!(fresh, code);
        assert_eq!(left, Some(600_000));
        assert_eq!(
            try_code(&mut hub, &code, min(10)),
            Some(PairOutcome::CodeExpired)
        );

        // The fresh code expires at min(20); its desktop leaves at min(18) and returns at
        // min(21), within its reservation but after the code's end: it gets a new code, and
        // the reserved one, retired, answers code_expired (no timer ran in between).
        hub.handle_gone(d2, Gone::Closed, min(18));
        drain(&mut hub);
        let d3 = greeted(&mut hub, min(21));
        let (third, left) = register_timed(&mut hub, d3, "desk", min(21));
        assert!(third != fresh && third != code);
        assert_eq!(left, Some(600_000));
        assert_eq!(
            try_code(&mut hub, &fresh, min(21)),
            Some(PairOutcome::CodeExpired)
        );

        // A reserved code whose timer fires while its desktop is away is retired then.
        hub.handle_gone(d3, Gone::Closed, min(29));
        drain(&mut hub);
        hub.handle_timeout(min(31));
        assert_eq!(
            try_code(&mut hub, &third, min(31)),
            Some(PairOutcome::CodeExpired)
        );
        assert!(hub.reservations.is_empty() && hub.code_owners.is_empty());
        assert_eq!(hub.stats().codes_retired, 3);
    }

    #[test]
    fn renew_code_retires_the_code_as_used_and_keeps_pending_prompts() {
        let mut hub = with_config(timed(), 24);
        let t0 = Instant::now();
        let desk = greeted(&mut hub, t0);
        let (old, _) = register_timed(&mut hub, desk, "desk", t0);
        let phone = greeted(&mut hub, t0);
        pair(&mut hub, phone, &old, t0);
        let session = match sent_to(&drain(&mut hub), desk).as_slice() {
            [ServerMessage::PairPrompt { session, .. }] => session.clone(),
            other => panic!("{other:?}"),
        };
        let t1 = t0 + Duration::from_secs(60);
        let out = renew(&mut hub, desk, t1);
        let (fresh, left) = match registered(&out, desk).as_slice() {
            [one] => one.clone(),
            other => panic!("{other:?}"),
        };
        assert_ne!(fresh, old);
        assert_eq!(left, Some(600_000), "a renewed code gets a full lifetime");
        assert!(sent_to(&out, phone).is_empty());
        assert_eq!(try_code(&mut hub, &old, t1), Some(PairOutcome::CodeUsed));
        assert_eq!(hub.stats().used_codes, 1);
        // The prompt from before the renewal can still be accepted.
        hub.handle_text(
            desk,
            &format!(r#"{{"type":"pair_response","session":"{session}","accept":true}}"#),
            t1,
        );
        assert!(matches!(
            sent_to(&drain(&mut hub), phone).as_slice(),
            [ServerMessage::PairResult {
                outcome: PairOutcome::Accepted,
                ..
            }]
        ));
        // The old code's expiry timer no longer applies; the fresh code's does.
        hub.handle_timeout(t0 + TEN_MIN);
        assert!(registered(&drain(&mut hub), desk).is_empty());
        hub.handle_timeout(t1 + TEN_MIN);
        assert_eq!(registered(&drain(&mut hub), desk).len(), 1);
        // Only a registered desktop can renew.
        let stranger = greeted(&mut hub, t1);
        for conn in [stranger, phone] {
            let out = renew(&mut hub, conn, t1);
            assert_eq!(errors(&sent_to(&out, conn), ErrorCode::InvalidState), 1);
        }
    }

    #[test]
    fn retired_codes_are_never_reissued_until_their_retention_lapses() {
        // Codes of 4 characters from 2: a code space of 16.
        let mut hub = with_config(
            HubConfig {
                code_alphabet: "23",
                code_length: 4,
                code_ttl: Duration::ZERO,
                retired_retention: Duration::from_secs(60),
                ..timed()
            },
            25,
        );
        let t0 = Instant::now();
        let desk = greeted(&mut hub, t0);
        let (first, _) = register_timed(&mut hub, desk, "desk", t0);
        let mut seen = HashSet::from([first.clone()]);
        for i in 1..16 {
            let out = renew(&mut hub, desk, t0 + Duration::from_secs(i));
            let [(code, None)] = &registered(&out, desk)[..] else {
                panic!("renewal {i}: {out:?}");
            };
            assert!(seen.insert(code.clone()), "renewal {i} reissued {code:?}");
        }
        assert_eq!(seen.len(), 16);
        // All 16 are live or retired: nothing is free for a renewal or another desktop.
        let out = renew(&mut hub, desk, t0 + Duration::from_secs(20));
        assert_eq!(errors(&sent_to(&out, desk), ErrorCode::Overloaded), 1);
        assert!(registered(&out, desk).is_empty());
        let other = greeted(&mut hub, t0);
        hub.handle_text(
            other,
            r#"{"type":"register_desktop","device_id":"other","device_name":"O"}"#,
            t0 + Duration::from_secs(20),
        );
        assert_eq!(
            errors(&sent_to(&drain(&mut hub), other), ErrorCode::Overloaded),
            1
        );
        assert_eq!(
            try_code(&mut hub, &first, t0 + Duration::from_secs(30)),
            Some(PairOutcome::CodeUsed)
        );
        // One minute after the first renewal, the first code is forgotten: unknown, and free.
        let t1 = t0 + Duration::from_secs(61);
        assert!(hub.poll_timeout().is_some_and(|t| t <= t1));
        hub.handle_timeout(t1);
        assert_eq!(
            try_code(&mut hub, &first, t1),
            Some(PairOutcome::UnknownCode)
        );
        let out = renew(&mut hub, desk, t1);
        assert_eq!(registered(&out, desk), vec![(first, None)]);
    }

    #[test]
    fn connect_request_reaches_the_latest_registration_of_the_device() {
        let mut hub = hub();
        let t0 = Instant::now();
        let a = greeted(&mut hub, t0);
        register(&mut hub, a, "desk", t0);
        let phone = greeted(&mut hub, t0);
        connect(&mut hub, phone, "desk", t0);
        let out = drain(&mut hub);
        let session = match sent_to(&out, a).as_slice() {
            [
                ServerMessage::PairPrompt {
                    session,
                    peer,
                    auth,
                    ..
                },
            ] => {
                assert_eq!(peer.device_id.as_str(), "p");
                assert_eq!(auth.as_ref().map(AuthPayload::as_str), Some("cGhvbmU"));
                session.clone()
            }
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            sent_to(&out, phone).as_slice(),
            [ServerMessage::PairPending { session: s, .. }] if *s == session
        ));
        // A second live registration of the same device takes the routing.
        let b = greeted(&mut hub, t0);
        register(&mut hub, b, "desk", t0);
        connect(&mut hub, phone, "desk", t0);
        let out = drain(&mut hub);
        assert!(sent_to(&out, a).is_empty());
        assert!(matches!(
            sent_to(&out, b).as_slice(),
            [ServerMessage::PairPrompt { .. }]
        ));
        // When it leaves, the earlier one is reached again; when both left, the desktop is
        // offline.
        hub.handle_gone(b, Gone::Closed, t0);
        drain(&mut hub);
        connect(&mut hub, phone, "desk", t0);
        assert!(matches!(
            sent_to(&drain(&mut hub), a).as_slice(),
            [ServerMessage::PairPrompt { .. }]
        ));
        hub.handle_gone(a, Gone::Closed, t0);
        drain(&mut hub);
        for device in ["desk", "nobody"] {
            let phone = greeted(&mut hub, t0);
            connect(&mut hub, phone, device, t0);
            assert!(matches!(
                sent_to(&drain(&mut hub), phone).as_slice(),
                [ServerMessage::PairResult {
                    session: None,
                    outcome: PairOutcome::DesktopOffline,
                    ..
                }]
            ));
        }
        let stats = hub.stats();
        assert_eq!((stats.connect_requests, stats.desktops_offline), (5, 2));
        assert_eq!(stats.pair_requests, 0);
        // A desktop cannot send one.
        let c = greeted(&mut hub, t0);
        register(&mut hub, c, "desk2", t0);
        connect(&mut hub, c, "desk2", t0);
        assert_eq!(
            errors(&sent_to(&drain(&mut hub), c), ErrorCode::AlreadyRegistered),
            1
        );
    }

    #[test]
    fn connect_requests_count_against_the_desktops_pair_attempts() {
        let mut hub = with_config(
            HubConfig {
                pair_attempts: 2,
                pair_window: Duration::from_secs(60),
                ..config()
            },
            26,
        );
        let t0 = Instant::now();
        let desk = greeted(&mut hub, t0);
        let code = register(&mut hub, desk, "desk", t0);
        let phone = greeted(&mut hub, t0);
        pair(&mut hub, phone, &code, t0);
        connect(&mut hub, phone, "desk", t0);
        assert_eq!(sent_to(&drain(&mut hub), desk).len(), 2);
        connect(&mut hub, phone, "desk", t0);
        let out = drain(&mut hub);
        assert_eq!(errors(&sent_to(&out, phone), ErrorCode::TooManyAttempts), 1);
        assert_eq!(errors(&sent_to(&out, desk), ErrorCode::TooManyAttempts), 1);
        pair(&mut hub, phone, &code, t0);
        assert_eq!(
            errors(
                &sent_to(&drain(&mut hub), phone),
                ErrorCode::TooManyAttempts
            ),
            1
        );
        // Renewing the code does not reset the desktop's window.
        let out = renew(&mut hub, desk, t0);
        let [(fresh, _)] = &registered(&out, desk)[..] else {
            panic!("{out:?}");
        };
        pair(&mut hub, phone, fresh, t0 + Duration::from_secs(1));
        assert_eq!(
            errors(
                &sent_to(&drain(&mut hub), phone),
                ErrorCode::TooManyAttempts
            ),
            1
        );
        assert_eq!(hub.stats().pair_attempts_refused, 3);
    }

    #[test]
    fn a_rejection_relays_the_desktops_auth_to_the_phone() {
        let mut hub = hub();
        let now = Instant::now();
        let desk = greeted(&mut hub, now);
        let code = register(&mut hub, desk, "desk", now);
        let phone = greeted(&mut hub, now);
        pair(&mut hub, phone, &code, now);
        let session = match sent_to(&drain(&mut hub), desk).as_slice() {
            [ServerMessage::PairPrompt { session, .. }] => session.clone(),
            other => panic!("{other:?}"),
        };
        hub.handle_text(
            desk,
            &format!(
                r#"{{"type":"pair_response","session":"{session}","accept":false,"auth":"bm8"}}"#
            ),
            now,
        );
        let out = drain(&mut hub);
        let result = |conn| match sent_to(&out, conn).as_slice() {
            [
                ServerMessage::PairResult {
                    session: Some(s),
                    outcome: PairOutcome::Rejected,
                    auth,
                    ..
                },
            ] if *s == session => auth.as_ref().map(|a| a.as_str().to_owned()),
            other => panic!("{other:?}"),
        };
        assert_eq!(result(phone).as_deref(), Some("bm8"));
        assert_eq!(result(desk), None);
        assert_eq!(hub.stats().pairs_rejected, 1);
    }
}
