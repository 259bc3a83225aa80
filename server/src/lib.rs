//! Proxim signaling server: pairing routing, session relay, ICE configuration, monitoring.
//!
//! Clients speak the [`proxim_protocol`] over one WebSocket at `GET /ws`. Desktops register
//! and get a routing code; a phone asks for that code; the desktop's user accepts or rejects;
//! then the server relays WebRTC signals between exactly those two connections, and nobody
//! else. Codes expire ([`ServerConfig::code_ttl`]) or are renewed by their desktop; a phone
//! that paired before reaches its desktop by device id (`connect_request`), without a code.
//!
//! Monitoring (`monitor`): `GET /healthz` and `GET /api/stats` are open; `GET /metrics`
//! (Prometheus text), `GET /api/sessions` (paged) and `GET /api/config` (credentials redacted)
//! need the admin token ([`ServerConfig::admin_token`]) or the admin listener
//! ([`ServerConfig::admin_bind`], loopback by default). Web clients get their ICE servers from
//! `GET /api/turn/config`, rate-limited per IP.
//!
//! For NAT traversal the server hands each client ICE servers in `welcome`: configured STUN
//! URLs, an optional embedded STUN responder ([`ServerConfig::stun`], RFC 5389 Binding only),
//! and a TURN relay with static credentials or, with `TURN_SECRET`, per-client time-limited
//! TURN REST credentials (coturn `use-auth-secret`; see [`mint_turn_credentials`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), proxim_server::ServerError> {
//! // What `proxim serve` does: flags, then environment variables, then a config file.
//! let args = proxim_server::cli::ServeArgs::try_parse_from(["--stun-urls", "stun:198.18.0.1"])
//!     .expect("valid flags");
//! let config = args.into_config()?;
//! let server = proxim_server::Server::start(config).await?;
//! println!("clients connect to {}", server.ws_url());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Structure
//!
//! The routing logic is a sans-IO state machine (`hub`): it takes inputs with an explicit
//! `now`, and yields outputs (messages to deliver, connections to close) and its next timeout.
//! The driver (`server`) runs one task per connection and one timer task; after every input it
//! drains every hub output before doing anything else, so a message produced while handling
//! an input is queued in the same turn. Each connection has a bounded outbound queue; a client
//! that does not read its messages is dropped, never waited for.
//!
//! # Abuse limits
//!
//! All configurable ([`ServerConfig`]) and counted in `/api/stats`: a message budget per
//! connection (a token bucket; frames over it are answered `rate_limited`, a connection that
//! keeps flooding is closed), concurrent connections per client IP (HTTP 429 before the
//! upgrade), and pair requests per desktop code within a sliding window (`too_many_attempts`
//! to the phone, and once per lockout to the desktop). The client IP is the TCP peer, or, when
//! that peer is a [`TrustedProxies`] entry, the client it names in `Forwarded` /
//! `X-Forwarded-For`.
#![warn(missing_docs)]

pub mod cli;
mod config;
mod events;
mod hub;
mod ice;
mod limits;
mod listener;
mod monitor;
mod proxy;
mod retired;
mod rlimit;
mod server;
mod state;
mod stun;
mod turn_rest;

pub use config::{
    AdminToken, ConfigError, DEFAULT_ADMIN_BIND, DEFAULT_LISTEN_BACKLOG, DEFAULT_PORT,
    DEFAULT_STUN_BIND, MAX_CODE_TTL, MIN_CODE_TTL, REDACTED, ServerConfig,
};
pub use events::{
    DEFAULT_EVENTS_BUFFER, DEFAULT_EVENTS_QUEUE, EVENTS_VERSION, EventSinkError, EventSinkSpec,
    InvalidEventSink,
};
pub use hub::{PairLatency, ReportStats, SessionInfo, SessionPage, Stats};
pub use ice::{
    ICE_SERVERS, IceConfig, STUN_URLS, TURN_PASSWORD, TURN_REALM, TURN_SECRET, TURN_TTL, TURN_URLS,
    TURN_USERNAME, TurnAuth,
};
pub use proxy::{InvalidTrustedProxy, TrustedProxies};
pub use rlimit::raise_open_file_limit;
pub use server::{RunningServer, Server, ServerError};
pub use state::{InvalidStateUrl, MemoryStore, StateError, StateSpec};
pub use turn_rest::{DEFAULT_TURN_TTL, mint_turn_credentials};
