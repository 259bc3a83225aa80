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
//! Codes ([`CodeBook`]): a desktop's code lives `code_ttl` (when set), then the hub retires it
//! and sends the desktop a fresh one in a new `registered`; `renew_code` does the same at once.
//! Retired codes are remembered for a while: a phone asking for one is told `code_expired` or
//! `code_used`, and no desktop gets it meanwhile. A desktop that goes away keeps its code
//! reserved for `code_reservation` and gets it back, with the time it had left, when it returns.
//!
//! Abuse limits are charged here too, with the same `now`: every frame takes a token from its
//! connection's budget before it is decoded, every pair or connect request counts against its
//! desktop's window, and the driver reserves a per-IP slot ([`Hub::reserve_ip`]) before it
//! upgrades.
//!
//! # Files
//!
//! - `mod.rs` (here): the [`Hub`], its connections and their roles, the inputs, the outputs,
//!   message dispatch, departures and the timer heap.
//! - `codes.rs`: the [`CodeBook`], every routing code's whole life, and nothing else (no I/O,
//!   no messages: it returns what happened and the deadlines it needs).
//! - `sessions.rs`: pairing sessions, the one [`Session::transition`] that changes their state
//!   and logs `old -> new (why)`, and the messages that drive them.
//! - `abuse.rs`: charging frames, pair attempts and connections against their limits.
//! - `stats.rs`: [`Stats`] and [`SessionInfo`] for monitoring.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use proxim_protocol::ice::IceUrl;
use proxim_protocol::{
    AuthPayload, ClientMessage, ConnectionId, DeviceId, DeviceName, ErrorCode, IceServer,
    PROTOCOL_VERSION, PairOutcome, PeerDevice, ROUTING_ALPHABET, RoutingCode, ServerMessage,
    SessionId, ShortText,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::ServerConfig;
use crate::events::Event;
use crate::ice::IceConfig;
use crate::limits::{AttemptWindow, ConnectionsPerIp, TokenBucket};
use crate::retired::RetireReason;
use crate::state::{RestoreSummary, Snapshot, StateOp};

mod abuse;
mod codes;
mod events;
mod resume;
mod sessions;
mod stats;
#[cfg(test)]
mod tests;

use codes::{
    CODE_ATTEMPTS, CodeBook, CodeTimer, Deadline, Grant, LIVE_LEASE, Lookup, TimerOutcome,
};
use events::Reportable;
use sessions::{Session, SessionEnd, SessionState, Via};
pub use stats::{PairLatency, ReportStats, SessionInfo, SessionPage, Stats};

/// The hub's handle on one connection.
pub(crate) type ConnKey = u64;

/// How long a retired code is remembered (answered `code_expired`/`code_used`, not reissued).
const RETIRED_CODE_RETENTION: Duration = Duration::from_secs(60 * 60);

/// How many retired codes are remembered at most; beyond that the oldest are forgotten.
const MAX_RETIRED_CODES: usize = 100_000;

/// Codes kept for desktops that went away, at most: past it, the oldest kept code is
/// forgotten first (a flood of register-and-vanish clients cannot grow memory without bound;
/// ~1 KiB each).
const MAX_KEPT_CODES: usize = 10_000;

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
    /// The client closed the WebSocket (a Close frame): it meant to go.
    ClientClosed,
    /// Its outbound queue was full.
    SlowReader,
}

/// Timing and sizing the hub needs.
#[derive(Debug, Clone)]
pub(crate) struct HubConfig {
    pub(crate) ice: IceConfig,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
    /// How long a connection may take to say `hello`.
    pub(crate) hello_timeout: Duration,
    pub(crate) prompt_timeout: Duration,
    pub(crate) code_length: usize,
    /// The characters codes are drawn from: [`ROUTING_ALPHABET`], or fewer of them in tests
    /// that need a small code space.
    pub(crate) code_alphabet: &'static str,
    /// How long a code lives; zero is forever.
    pub(crate) code_ttl: Duration,
    pub(crate) code_reservation: Duration,
    /// How many codes are kept for absent desktops at most.
    pub(crate) max_kept_codes: usize,
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
    /// Whether to build [`Event`]s (the server has an event sink).
    pub(crate) events: bool,
    /// Whether events name devices (`--expose-device-names`).
    pub(crate) event_device_names: bool,
    /// Whether to journal changes for a state store (`--state`).
    pub(crate) state: bool,
    /// How long an accepted session waits for a member whose connection was lost to `resume`
    /// it from a new one; zero ends it at once.
    pub(crate) resume_grace: Duration,
}

impl From<&ServerConfig> for HubConfig {
    fn from(c: &ServerConfig) -> Self {
        HubConfig {
            ice: c.ice.clone(),
            heartbeat_interval: c.heartbeat_interval,
            heartbeat_timeout: c.heartbeat_timeout,
            hello_timeout: c.hello_timeout,
            prompt_timeout: c.prompt_timeout,
            code_length: c.code_length,
            code_alphabet: ROUTING_ALPHABET,
            code_ttl: c.code_ttl,
            code_reservation: c.code_reservation,
            retired_retention: RETIRED_CODE_RETENTION,
            max_retired_codes: MAX_RETIRED_CODES,
            max_kept_codes: MAX_KEPT_CODES,
            max_frame_bytes: c.max_frame_bytes,
            rate_limit: c.rate_limit,
            rate_burst: c.rate_burst,
            rate_strikes: c.rate_strikes,
            max_connections_per_ip: c.max_connections_per_ip,
            pair_attempts: c.pair_attempts,
            pair_window: c.pair_window,
            wall_anchor: (Instant::now(), SystemTime::now()),
            events: !c.events.is_empty(),
            event_device_names: c.expose_device_names,
            state: c.state.is_some(),
            resume_grace: c.resume_grace,
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
    /// Every live, kept and retired code.
    codes: CodeBook,
    /// The connections registered as each desktop device, oldest registration first.
    desktop_conns: HashMap<DeviceId, Vec<ConnKey>>,
    /// Sessions in which a member of this device is away (lost, within its resume grace).
    away_devices: HashMap<DeviceId, Vec<SessionId>>,
    /// In id order, so `/api/sessions` pages walk only their page.
    sessions: BTreeMap<SessionId, Session>,
    timers: BinaryHeap<Reverse<(Instant, TimerKey)>>,
    outputs: VecDeque<Output>,
    /// Events for the driver's sinks (only when [`HubConfig::events`]).
    events: VecDeque<Event>,
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
    /// When the connection opened (the `hello` deadline counts from here).
    opened: Instant,
    greeted: bool,
    role: Role,
    sessions: BTreeSet<SessionId>,
    /// The message budget; `None` without a rate limit.
    budget: Option<TokenBucket>,
    /// Frames refused since the budget was last full.
    strikes: u32,
    /// Whether a `limit_hit` for its message budget went out.
    rate_limit_reported: bool,
    /// Accepted sessions it may send `connection_report`s about.
    reportable: VecDeque<Reportable>,
}

#[derive(Debug, Clone)]
enum Role {
    /// Said hello (or not yet), neither desktop nor phone.
    Unassigned,
    /// Registered desktop; its code is in the [`CodeBook`].
    Desktop {
        device: PeerDevice,
        /// Pair and connect requests for this desktop in the current window (kept when the
        /// code changes: the limit is per desktop).
        attempts: AttemptWindow,
    },
    /// Sent at least one pair request.
    Phone,
}

/// What a timer in the heap is for. At equal instants, entries run in this order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Heartbeat(ConnKey),
    Prompt(SessionId),
    /// A member's resume grace ends.
    Resume(SessionId),
    /// A code's reservation or lifetime ends: the [`CodeBook`]'s.
    Code(CodeTimer),
    /// Renew the stored records of live codes that never expire (with a state store).
    StateLease,
}

/// Why a connection leaves the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Departure {
    /// It sent `bye`.
    Bye,
    /// Its socket closed or failed (the connection may have been lost).
    Closed,
    /// It closed its WebSocket (a Close frame, without `bye`).
    ClientClosed,
    /// It went silent.
    TimedOut,
    /// It did not say `hello` within [`HubConfig::hello_timeout`] of connecting.
    NoHello,
    /// It did not read its messages.
    SlowReader,
    /// It was refused (bad protocol version, frame too large).
    Refused,
    /// It kept sending past its message budget.
    Flooding,
    /// The server is stopping.
    Shutdown,
}

impl Departure {
    /// How the connection is closed, and the reason its `bye` gives (`None`: no `bye`).
    fn close(self) -> (CloseHow, Option<&'static str>) {
        match self {
            Departure::TimedOut => (CloseHow::AfterQueued, Some("heartbeat timeout")),
            Departure::NoHello => (CloseHow::AfterQueued, Some("no hello in time")),
            Departure::SlowReader => (CloseHow::Abort, None),
            Departure::Shutdown => (CloseHow::AfterQueued, Some("server shutting down")),
            Departure::Bye
            | Departure::Closed
            | Departure::ClientClosed
            | Departure::Refused
            | Departure::Flooding => (CloseHow::AfterQueued, None),
        }
    }
}

impl Hub {
    /// A hub with ids and codes drawn from the operating system's CSPRNG.
    pub(crate) fn new(config: HubConfig) -> Self {
        Self::with_rng(config, StdRng::from_os_rng())
    }

    /// A hub with a given random generator (tests seed it).
    pub(crate) fn with_rng(config: HubConfig, rng: StdRng) -> Self {
        let mut timers = BinaryHeap::new();
        if config.state {
            timers.push(Reverse((
                config.wall_anchor.0 + LIVE_LEASE / 4,
                TimerKey::StateLease,
            )));
        }
        Hub {
            codes: CodeBook::new(&config),
            config,
            rng,
            next_key: 1,
            conns: HashMap::new(),
            desktop_conns: HashMap::new(),
            away_devices: HashMap::new(),
            sessions: BTreeMap::new(),
            timers,
            outputs: VecDeque::new(),
            events: VecDeque::new(),
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
                opened: now,
                greeted: false,
                role: Role::Unassigned,
                sessions: BTreeSet::new(),
                budget: (self.config.rate_limit > 0)
                    .then(|| TokenBucket::new(self.config.rate_limit, self.config.rate_burst, now)),
                strikes: 0,
                rate_limit_reported: false,
                reportable: VecDeque::new(),
            },
        );
        self.stats.connections_total += 1;
        self.event(|_| Event::ClientConnected {
            conn: id.clone(),
            ip: remote.ip(),
        });
        let first_check = self.config.hello_timeout.min(self.config.heartbeat_timeout);
        self.arm(now + first_check, TimerKey::Heartbeat(key));
        tracing::debug!(conn = %short(id.as_str()), %remote, "connection opened");
        Some((key, id))
    }

    /// A text frame arrived.
    pub(crate) fn handle_text(&mut self, conn: ConnKey, text: &str, now: Instant) {
        if !self.admit_frame(conn, now) {
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
    /// A frame the transport refused to read because it announced `size` bytes, more than the
    /// transport accepts at all: answered `frame_too_large` like any frame over the limit, and
    /// the connection is closed (the rest of the frame is still in the socket, unread).
    pub(crate) fn handle_oversized(&mut self, conn: ConnKey, size: usize, now: Instant) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.last_seen = now;
        }
        self.refuse_too_large(conn, size);
    }

    pub(crate) fn handle_binary(&mut self, conn: ConnKey, len: usize, now: Instant) {
        if !self.admit_frame(conn, now) {
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
        self.admit_frame(conn, now);
    }

    /// The driver saw the connection go. A no-op for a connection the hub already closed.
    pub(crate) fn handle_gone(&mut self, conn: ConnKey, gone: Gone, now: Instant) {
        let departure = match gone {
            Gone::Closed => Departure::Closed,
            Gone::ClientClosed => Departure::ClientClosed,
            Gone::SlowReader => Departure::SlowReader,
        };
        self.depart(conn, departure, now);
    }

    /// Time passed: expire heartbeats, prompts, codes, code reservations and retired codes
    /// that are due.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.codes.prune(now);
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
                    let silent_until = c.last_seen + self.config.heartbeat_timeout;
                    let hello_until = (!c.greeted).then(|| c.opened + self.config.hello_timeout);
                    if hello_until.is_some_and(|until| until <= now) {
                        self.depart(conn, Departure::NoHello, now);
                    } else if silent_until <= now {
                        self.depart(conn, Departure::TimedOut, now);
                    } else {
                        let deadline = hello_until.map_or(silent_until, |h| h.min(silent_until));
                        self.arm(deadline, TimerKey::Heartbeat(conn));
                    }
                }
                TimerKey::Prompt(session) => {
                    let expired = matches!(
                        self.sessions.get(&session).map(Session::state),
                        Some(SessionState::Pending { deadline }) if deadline <= now
                    );
                    if expired {
                        self.observe_pair_latency(&session, now);
                        self.end_session(&session, SessionEnd::PromptExpired, now);
                    }
                }
                TimerKey::Resume(session) => self.resume_grace_over(&session, now),
                TimerKey::StateLease => {
                    self.codes.renew_leases(now);
                    self.arm(now + LIVE_LEASE / 4, TimerKey::StateLease);
                }
                TimerKey::Code(timer) => match self.codes.on_timer(&mut self.rng, timer, now) {
                    TimerOutcome::Nothing => {}
                    TimerOutcome::Replaced { conn, grant } => {
                        self.announce_fresh_code(conn, grant, now);
                    }
                    TimerOutcome::NoFreeCode { conn, retry } => {
                        tracing::error!(
                            conn = %self.short_id(conn),
                            "no free pairing code after {CODE_ATTEMPTS} attempts; the expired \
                             code stays for now"
                        );
                        self.arm_code(Some(retry));
                    }
                },
            }
        }
    }

    /// When [`Hub::handle_timeout`] must next be called.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((due, _))| *due);
        match (timer, self.codes.next_lapse()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next thing the driver must do.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The changes for the state store since the last call, in order (none without one).
    pub(crate) fn take_state_ops(&mut self, into: &mut Vec<StateOp>) {
        self.codes.take_journal(into);
    }

    /// Everything the state store must hold now (to rewrite it after it failed or at start);
    /// the changes journaled but not taken yet are dropped (the export includes them).
    pub(crate) fn export_state(&mut self, now: Instant) -> Vec<StateOp> {
        self.codes.export(now)
    }

    /// Take what the state store held at start, before any connection opens: codes kept for
    /// their devices, retired codes. The store is rewritten from [`Hub::export_state`] next.
    pub(crate) fn restore(&mut self, snapshot: Snapshot, now: Instant) -> RestoreSummary {
        let (summary, deadlines) = self.codes.restore(snapshot, now);
        for (due, timer) in deadlines {
            self.arm(due, TimerKey::Code(timer));
        }
        summary
    }

    /// Stop: every connection gets `bye` and is closed; new connections are refused.
    pub(crate) fn shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        let connections = self.conns.len() as u64;
        self.event(|_| Event::ServiceStopping { connections });
        let conns: Vec<ConnKey> = self.conns.keys().copied().collect();
        for conn in conns {
            self.depart(conn, Departure::Shutdown, now);
        }
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
            } => self.ask_to_pair(conn, Via::Code(&code), device_id, device_name, auth, now),
            ClientMessage::ConnectRequest {
                desktop,
                device_id,
                device_name,
                auth,
            } => self.ask_to_pair(
                conn,
                Via::Device(&desktop),
                device_id,
                device_name,
                auth,
                now,
            ),
            ClientMessage::RenewCode => self.renew_code(conn, now),
            ClientMessage::RefreshIceServers => self.refresh_ice_servers(conn, now),
            ClientMessage::PairResponse {
                session,
                accept,
                auth,
            } => self.pair_response(conn, session, accept, auth, now),
            ClientMessage::Signal { session, signal } => self.signal(conn, session, signal),
            ClientMessage::Leave { session } => self.leave(conn, session, now),
            ClientMessage::Resume { session, token } => self.resume(conn, session, &token, now),
            ClientMessage::Ping { seq } => self.send(conn, ServerMessage::Pong { seq }),
            ClientMessage::Pong { .. } => {}
            ClientMessage::ConnectionReport {
                session,
                outcome,
                report,
            } => self.connection_report(conn, session, outcome, report, now),
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
        let ice_servers = self.ice_servers_for(conn, "welcome", now);
        let welcome = ServerMessage::Welcome {
            version: PROTOCOL_VERSION,
            ice_servers,
            connection_id,
            heartbeat_interval_ms: millis(self.config.heartbeat_interval),
            heartbeat_timeout_ms: millis(self.config.heartbeat_timeout),
        };
        self.send(conn, welcome);
    }

    /// The ICE servers for `conn` now: TURN REST credentials are minted for it (`via` says
    /// why, for the event).
    fn ice_servers_for(
        &mut self,
        conn: ConnKey,
        via: &'static str,
        now: Instant,
    ) -> Vec<IceServer> {
        let Some(c) = self.conns.get(&conn) else {
            return Vec::new();
        };
        let connection_id = c.id.clone();
        let (anchor, anchor_wall) = self.config.wall_anchor;
        let wall = anchor_wall + now.saturating_duration_since(anchor);
        let ice_servers =
            self.config
                .ice
                .ice_servers_at(&connection_id, wall, c.embedded_stun.as_ref());
        if self.config.ice.turn_credentials_kind() == Some("rest") {
            let ttl_s = self
                .config
                .ice
                .turn_rest_ttl()
                .map_or(0, |ttl| ttl.as_secs());
            self.event(|_| Event::TurnCredentialsMinted {
                conn: Some(connection_id),
                ip: None,
                via,
                ttl_s,
            });
        }
        ice_servers
    }

    /// `refresh_ice_servers`: fresh ICE servers (new TURN credentials) for this connection.
    fn refresh_ice_servers(&mut self, conn: ConnKey, now: Instant) {
        self.stats.ice_refreshes += 1;
        let ice_servers = self.ice_servers_for(conn, "refresh", now);
        self.send(conn, ServerMessage::IceServers { ice_servers });
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
        let Some(grant) = self.codes.register(&mut self.rng, conn, &device_id, now) else {
            return self.refuse_no_free_code(conn);
        };
        self.arm_code(grant.deadline.clone());
        self.device_started_afresh(&device_id);
        self.desktop_conns
            .entry(device_id.clone())
            .or_default()
            .push(conn);
        if let Some(c) = self.conns.get_mut(&conn) {
            let event = self.config.events.then(|| Event::DesktopRegistered {
                conn: c.id.clone(),
                device_id: device_id.clone(),
                device_name: self.config.event_device_names.then(|| device_name.clone()),
                code_reused: grant.reused,
            });
            c.role = Role::Desktop {
                device: PeerDevice {
                    device_id,
                    device_name,
                },
                attempts: AttemptWindow::default(),
            };
            self.events.extend(event);
        }
        tracing::debug!(
            conn = %self.short_id(conn), code = %grant.code.redacted(), reused = grant.reused,
            "desktop registered"
        );
        self.send_registered(conn, grant, now);
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
        match self
            .codes
            .replace(&mut self.rng, conn, RetireReason::Used, now)
        {
            Some(grant) => self.announce_fresh_code(conn, grant, now),
            None => self.refuse_no_free_code(conn),
        }
    }

    /// `pair_request` (`via` a code) or `connect_request` (`via` the desktop's device id): find
    /// the desktop and open a pending session with it, or tell the phone why not.
    fn ask_to_pair(
        &mut self,
        conn: ConnKey,
        via: Via<'_>,
        device_id: DeviceId,
        device_name: DeviceName,
        auth: Option<AuthPayload>,
        now: Instant,
    ) {
        if !self.may_ask_to_pair(conn, via.requests()) {
            return;
        }
        self.device_started_afresh(&device_id);
        let phone = PeerDevice {
            device_id,
            device_name,
        };
        let desktop = match via {
            Via::Code(code) => self.desktop_by_code(conn, code, now),
            Via::Device(device) => self.desktop_by_device(conn, device),
        };
        if let Some(desktop) = desktop {
            self.open_session(conn, desktop, phone, auth, via, now);
        }
    }

    /// The desktop connection holding `code`. When none does, the phone was told what became
    /// of the code.
    fn desktop_by_code(
        &mut self,
        phone: ConnKey,
        code: &RoutingCode,
        now: Instant,
    ) -> Option<ConnKey> {
        self.stats.pair_requests += 1;
        let outcome = match self.codes.lookup(code, now) {
            Lookup::Held(desktop) => return Some(desktop),
            Lookup::Retired(RetireReason::Expired) => {
                self.stats.expired_codes += 1;
                PairOutcome::CodeExpired
            }
            Lookup::Retired(RetireReason::Used) => {
                self.stats.used_codes += 1;
                PairOutcome::CodeUsed
            }
            Lookup::Unknown => {
                self.stats.unknown_codes += 1;
                PairOutcome::UnknownCode
            }
        };
        tracing::info!(
            conn = %self.short_id(phone), code = %code.redacted(), ?outcome,
            "pair request for a code no desktop holds"
        );
        self.pair_refused_event(phone, "code", outcome_name(outcome));
        self.send_no_session(phone, outcome);
        None
    }

    /// The latest live registration of the desktop `device`, a phone paired with before. When
    /// there is none, the phone was told the desktop is offline.
    fn desktop_by_device(&mut self, phone: ConnKey, device: &DeviceId) -> Option<ConnKey> {
        self.stats.connect_requests += 1;
        let latest = self
            .desktop_conns
            .get(device)
            .and_then(|conns| conns.last())
            .copied();
        if latest.is_none() {
            self.stats.desktops_offline += 1;
            tracing::info!(conn = %self.short_id(phone), "connect request for a desktop that is offline");
            self.pair_refused_event(phone, "device", "desktop_offline");
            self.send_no_session(phone, PairOutcome::DesktopOffline);
        }
        latest
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
            if !self.keep_for_resume(session, conn, departure, now) {
                self.end_session(session, SessionEnd::Left(conn, departure), now);
            }
        }
        if let Role::Desktop { device, .. } = &c.role {
            if let Some(conns) = self.desktop_conns.get_mut(&device.device_id) {
                conns.retain(|&k| k != conn);
                if conns.is_empty() {
                    self.desktop_conns.remove(&device.device_id);
                }
            }
            let deadline = self.codes.release(conn, now);
            self.arm_code(deadline);
        }
        self.departure_event(&c, departure, now);
        let short_id = short(c.id.as_str()).to_owned();
        match departure {
            Departure::TimedOut => {
                self.stats.stale_dropped += 1;
                tracing::info!(conn = %short_id, remote = %c.remote, "dropping silent connection");
            }
            Departure::NoHello => {
                self.stats.stale_dropped += 1;
                tracing::info!(conn = %short_id, remote = %c.remote, "dropping a connection that did not say hello");
            }
            Departure::SlowReader => {
                self.stats.slow_readers_dropped += 1;
                tracing::warn!(
                    conn = %short_id, remote = %c.remote,
                    "dropping slow reader: its send queue is full"
                );
            }
            Departure::Flooding => {
                self.stats.rate_limit_disconnects += 1;
                tracing::warn!(
                    conn = %short_id, remote = %c.remote,
                    "disconnecting a flooding client: over its message budget too often"
                );
            }
            Departure::Shutdown => {}
            Departure::Bye | Departure::Closed | Departure::ClientClosed | Departure::Refused => {
                tracing::debug!(conn = %short_id, ?departure, "connection closed");
            }
        }
        let (close, bye) = departure.close();
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

    // -----------------------------------------------------------------------------------------
    // Helpers
    // -----------------------------------------------------------------------------------------

    fn send(&mut self, to: ConnKey, message: ServerMessage) {
        self.outputs.push_back(Output::Send { to, message });
    }

    fn send_error(&mut self, to: ConnKey, code: ErrorCode, message: impl Into<String>) {
        self.count_error(code);
        self.send(to, ServerMessage::error(code, message));
    }

    /// Answer a pair or connect request that opened no session with its `outcome`.
    fn send_no_session(&mut self, to: ConnKey, outcome: PairOutcome) {
        self.send(
            to,
            ServerMessage::PairResult {
                session: None,
                outcome,
                peer: None,
                auth: None,
            },
        );
    }

    fn arm(&mut self, due: Instant, key: TimerKey) {
        self.timers.push(Reverse((due, key)));
    }

    /// Keep a deadline the [`CodeBook`] asked for.
    fn arm_code(&mut self, deadline: Option<Deadline>) {
        if let Some((due, timer)) = deadline {
            self.arm(due, TimerKey::Code(timer));
        }
    }

    /// The desktop `conn` has a fresh code (renewed, or its old one expired): announce it.
    fn announce_fresh_code(&mut self, conn: ConnKey, grant: Grant, now: Instant) {
        self.arm_code(grant.deadline.clone());
        tracing::debug!(
            conn = %self.short_id(conn), code = %grant.code.redacted(),
            "desktop has a fresh code"
        );
        self.send_registered(conn, grant, now);
    }

    /// Tell a desktop its code and how long it has left.
    fn send_registered(&mut self, conn: ConnKey, grant: Grant, now: Instant) {
        let expires_in_ms = grant
            .expires
            .map(|e| millis(e.saturating_duration_since(now)));
        self.send(
            conn,
            ServerMessage::Registered {
                code: grant.code,
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

    /// A `pair_refused` event for the phone `conn`.
    fn pair_refused_event(&mut self, conn: ConnKey, via: &'static str, outcome: &'static str) {
        if let Some(c) = self.conns.get(&conn) {
            let conn = c.id.clone();
            self.event(|_| Event::PairRefused { conn, via, outcome });
        }
    }

    fn short_id(&self, conn: ConnKey) -> String {
        self.conns
            .get(&conn)
            .map_or_else(|| format!("#{conn}"), |c| short(c.id.as_str()).to_owned())
    }
}

/// The wire name of a refusal's outcome, for events.
fn outcome_name(outcome: PairOutcome) -> &'static str {
    match outcome {
        PairOutcome::UnknownCode => "unknown_code",
        PairOutcome::CodeExpired => "code_expired",
        PairOutcome::CodeUsed => "code_used",
        PairOutcome::DesktopOffline => "desktop_offline",
        _ => "other",
    }
}

/// 128 random bits as 32 lowercase hex digits.
fn random_hex128(rng: &mut StdRng) -> String {
    format!("{:032x}", rng.random::<u128>())
}

/// The first 8 characters of an id, for logs.
pub(crate) fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
