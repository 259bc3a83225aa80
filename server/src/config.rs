//! Server configuration: listen address, timeouts and limits, the ICE servers handed to clients
//! ([`IceConfig`], in `ice`), why a configuration is refused ([`ConfigError`]), and how secrets
//! are shown ([`REDACTED`]).
//!
//! Everything is validated when it is built ("parse, don't validate"): a [`ServerConfig`] that
//! passed [`ServerConfig::validate`] and an [`IceConfig`] that exists are usable as they are.
//! `proxim serve` builds one from its flags, environment and file in `cli`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use proxim_protocol::MAX_FRAME_BYTES;

use crate::events::{DEFAULT_EVENTS_BUFFER, DEFAULT_EVENTS_QUEUE, EventSinkSpec};
use crate::ice::{IceConfig, stun_url_for_host};
use crate::proxy::{InvalidTrustedProxy, TrustedProxies};
use crate::state::StateSpec;

/// The default listen backlog: a burst of a thousand clients connecting at once waits in the
/// kernel's queue instead of retrying its SYN a second later.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 1024;

/// Everything the signaling server needs to run.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (port 0 picks a free port).
    pub bind: SocketAddr,
    /// ICE servers handed to every client in `welcome`.
    pub ice: IceConfig,
    /// How often clients must send `ping` (announced in `welcome`). Default 15 s.
    pub heartbeat_interval: Duration,
    /// Silence after which a connection is dropped. Default 45 s.
    pub heartbeat_timeout: Duration,
    /// How long a client may take to send a complete HTTP request head (the WebSocket
    /// upgrade or a monitoring request; an idle keep-alive connection too) before it is
    /// closed. Default 10 s.
    pub header_timeout: Duration,
    /// How long a new WebSocket may take to say `hello` before it is closed. Default 10 s.
    pub hello_timeout: Duration,
    /// How long a desktop has to answer a pairing prompt. Default 60 s.
    pub prompt_timeout: Duration,
    /// How long an accepted session waits for a member whose connection was lost (a phone
    /// changing networks) to `resume` it from a new connection, queueing the other member's
    /// signals meanwhile. Zero: the session ends at once. Default 30 s.
    pub resume_grace: Duration,
    /// Messages that may wait for one connection before it counts as a slow reader and is
    /// dropped. Default 256.
    pub send_queue_capacity: usize,
    /// Length of the routing codes handed to desktops (4 to 16). Default 6.
    pub code_length: usize,
    /// How long a desktop's code is valid; then the server retires it (phones typing it are
    /// told `code_expired`) and sends the desktop a fresh one. Zero: codes never expire.
    /// Otherwise between [`MIN_CODE_TTL`] and [`MAX_CODE_TTL`]. Default 10 min.
    pub code_ttl: Duration,
    /// How long a disconnected desktop's code stays reserved for its device id. Default 5 min.
    pub code_reservation: Duration,
    /// Largest accepted text frame, in bytes. Default and maximum:
    /// [`proxim_protocol::MAX_FRAME_BYTES`].
    pub max_frame_bytes: usize,
    /// How long [`crate::RunningServer::shutdown`] waits for connections to close. Default 5 s.
    pub shutdown_grace: Duration,
    /// Connections the kernel queues for the server before it accepts them (the listen
    /// backlog; the kernel caps it at `net.core.somaxconn`). Default [`DEFAULT_LISTEN_BACKLOG`].
    pub listen_backlog: u32,
    /// Where the embedded STUN responder listens (UDP); `None` turns it off. Off in
    /// [`ServerConfig::default`] and [`ServerConfig::loopback`]; `proxim serve` turns it on at
    /// [`DEFAULT_STUN_BIND`] unless given `--no-stun`.
    pub stun: Option<SocketAddr>,
    /// The host name or address clients can reach this server's STUN responder at, used in
    /// the `stun:` URL advertised in `welcome`. When `None`, the responder's bind address is
    /// used, or, when that is unspecified (`0.0.0.0`, `::`), the host the client used to reach
    /// the WebSocket (its HTTP `Host` header).
    pub public_host: Option<String>,
    /// Messages (WebSocket frames of any kind) one connection may send per second, sustained;
    /// frames over the budget are answered `error rate_limited` and dropped. 0 turns the limit
    /// off. Default 50.
    pub rate_limit: u32,
    /// Messages one connection may send in a burst above [`ServerConfig::rate_limit`].
    /// Default 100.
    pub rate_burst: u32,
    /// Frames over the budget after which a connection is disconnected, counted until its
    /// budget has fully refilled (the client paused long enough). Default 50.
    pub rate_strikes: u32,
    /// Concurrent WebSocket connections per client IP (IPv6: per /64); more are refused with
    /// HTTP 429 before the upgrade. 0 turns the cap off. Default 32.
    pub max_connections_per_ip: u32,
    /// Open client sockets (WebSockets and HTTP requests in progress) at most; one more is
    /// answered 503 at once. 0: the process's open-file limit minus a reserve of 64, so the
    /// server refuses cleanly instead of running out of descriptors. Default 0.
    pub max_connections: u32,
    /// Pair and connect requests one desktop accepts within [`ServerConfig::pair_window`],
    /// whoever sends them; further ones get `error too_many_attempts`, and the desktop is told
    /// once per lockout. 0 turns the limit off. Default 5.
    pub pair_attempts: u32,
    /// The sliding window of [`ServerConfig::pair_attempts`]. Default 60 s.
    pub pair_window: Duration,
    /// Reverse proxies whose `Forwarded` / `X-Forwarded-For` headers name the client address
    /// (used by the per-IP cap). Empty by default: the TCP peer address is the client address.
    pub trusted_proxies: TrustedProxies,
    /// The bearer token that opens `/metrics`, `/api/sessions` and `/api/config` on the public
    /// listener (`PROXIM_ADMIN_TOKEN`). `None`: those routes answer 404 there and are served
    /// only on [`ServerConfig::admin_bind`]. Never shown or logged.
    pub admin_token: Option<AdminToken>,
    /// Where the admin listener serves every monitoring route without a token; `None` turns
    /// it off. [`DEFAULT_ADMIN_BIND`] for `proxim serve`, `127.0.0.1:0` in
    /// [`ServerConfig::loopback`], `None` in [`ServerConfig::default`].
    pub admin_bind: Option<SocketAddr>,
    /// Whether `/api/sessions` and the events list device names; off by default (ids and
    /// states only).
    pub expose_device_names: bool,
    /// Where server events go ([`EventSinkSpec`]: stdout, a file, RabbitMQ); empty: no events.
    pub events: Vec<EventSinkSpec>,
    /// The RabbitMQ queue events are published to ([`DEFAULT_EVENTS_QUEUE`]).
    pub events_queue: String,
    /// Events each sink holds while it cannot keep up or its broker is down; past it the newest
    /// are dropped and counted ([`DEFAULT_EVENTS_BUFFER`]).
    pub events_buffer: usize,
    /// Where state that must outlive the process is kept ([`StateSpec`]: `memory`, Redis);
    /// `None`: only in this server's memory.
    pub state: Option<StateSpec>,
}

impl Default for ServerConfig {
    /// Listen on `0.0.0.0:8787` with no ICE servers and the default timeouts and limits.
    fn default() -> Self {
        ServerConfig {
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_PORT)),
            ice: IceConfig::none(),
            heartbeat_interval: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(45),
            hello_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            prompt_timeout: Duration::from_secs(60),
            resume_grace: Duration::from_secs(30),
            send_queue_capacity: 256,
            code_length: 6,
            code_ttl: Duration::from_secs(10 * 60),
            code_reservation: Duration::from_secs(5 * 60),
            max_frame_bytes: MAX_FRAME_BYTES,
            shutdown_grace: Duration::from_secs(5),
            listen_backlog: DEFAULT_LISTEN_BACKLOG,
            stun: None,
            public_host: None,
            rate_limit: 50,
            rate_burst: 100,
            rate_strikes: 50,
            max_connections_per_ip: 32,
            max_connections: 0,
            pair_attempts: 5,
            pair_window: Duration::from_secs(60),
            trusted_proxies: TrustedProxies::none(),
            admin_token: None,
            admin_bind: None,
            expose_device_names: false,
            events: Vec::new(),
            events_queue: DEFAULT_EVENTS_QUEUE.to_owned(),
            events_buffer: DEFAULT_EVENTS_BUFFER,
            state: None,
        }
    }
}

/// The port the server listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 8787;

/// Where `proxim serve` runs the embedded STUN responder unless told otherwise.
pub const DEFAULT_STUN_BIND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 3478);

/// Where `proxim serve` runs the admin listener unless told otherwise: loopback only.
pub const DEFAULT_ADMIN_BIND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8788);

/// The shortest non-zero [`ServerConfig::code_ttl`].
pub const MIN_CODE_TTL: Duration = Duration::from_millis(100);

/// The longest [`ServerConfig::code_ttl`] (zero, for codes that never expire, aside).
pub const MAX_CODE_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

impl ServerConfig {
    /// The defaults, but listening on `127.0.0.1` on a free port: for tests and the demo.
    pub fn loopback() -> Self {
        ServerConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            admin_bind: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
            ..ServerConfig::default()
        }
    }

    /// Check that the timeouts and limits make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |what: &'static str, why: String| Err(ConfigError::Invalid { what, why });
        if self.heartbeat_interval.is_zero() {
            return invalid("heartbeat interval", "must be more than zero".into());
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return invalid(
                "heartbeat timeout",
                format!(
                    "{:?} must be longer than the heartbeat interval ({:?})",
                    self.heartbeat_timeout, self.heartbeat_interval
                ),
            );
        }
        if self.prompt_timeout.is_zero() {
            return invalid("prompt timeout", "must be more than zero".into());
        }
        if !self.events.is_empty() && !(1..=1_000_000).contains(&self.events_buffer) {
            return invalid(
                "events buffer (--events-buffer)",
                format!("{} is not between 1 and 1000000", self.events_buffer),
            );
        }
        let queue_ok = !self.events_queue.is_empty()
            && self.events_queue.len() <= 255
            && !self.events_queue.starts_with("amq.");
        if !self.events.is_empty() && !queue_ok {
            return invalid(
                "events queue (--events-queue)",
                "must be 1 to 255 bytes and not start with `amq.` (reserved by RabbitMQ)".into(),
            );
        }
        if self.header_timeout.is_zero() {
            return invalid("header timeout", "must be more than zero".into());
        }
        if self.hello_timeout.is_zero() {
            return invalid("hello timeout", "must be more than zero".into());
        }
        if self.listen_backlog == 0 {
            return invalid("listen backlog", "must be at least 1".into());
        }
        if self.send_queue_capacity == 0 {
            return invalid("send queue capacity", "must be at least 1".into());
        }
        if !(4..=16).contains(&self.code_length) {
            return invalid(
                "code length",
                format!("{} is not between 4 and 16", self.code_length),
            );
        }
        if !self.code_ttl.is_zero() && !(MIN_CODE_TTL..=MAX_CODE_TTL).contains(&self.code_ttl) {
            return invalid(
                "code ttl (--code-ttl / PROXIM_CODE_TTL)",
                format!(
                    "{:?} is not between {MIN_CODE_TTL:?} and {MAX_CODE_TTL:?} (0: codes never \
                     expire)",
                    self.code_ttl
                ),
            );
        }
        if self.max_frame_bytes == 0 || self.max_frame_bytes > MAX_FRAME_BYTES {
            return invalid(
                "max frame bytes",
                format!(
                    "{} is not between 1 and {MAX_FRAME_BYTES}",
                    self.max_frame_bytes
                ),
            );
        }
        if self.rate_limit > 0 && self.rate_burst == 0 {
            return invalid(
                "rate burst",
                "must be at least 1 while the rate limit is on".into(),
            );
        }
        if self.rate_limit > 0 && self.rate_strikes == 0 {
            return invalid(
                "rate strikes",
                "must be at least 1 while the rate limit is on".into(),
            );
        }
        if self.pair_attempts > 0 && self.pair_window.is_zero() {
            return invalid(
                "pair window",
                "must be more than zero while pair attempts are limited".into(),
            );
        }
        if let Some(token) = &self.admin_token
            && token.0.trim().is_empty()
        {
            return invalid(
                "admin token (--admin-token / PROXIM_ADMIN_TOKEN)",
                "it is set but empty: give a long random token, or unset it".into(),
            );
        }
        if let Some(host) = &self.public_host {
            stun_url_for_host(host, 3478).ok_or_else(|| ConfigError::Invalid {
                what: "public host (--public-host / PROXIM_PUBLIC_HOST)",
                why: format!("`{host}` is not a host name or IP address"),
            })?;
        }
        Ok(())
    }
}

/// Why a configuration is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An ICE server URL does not parse.
    #[error("{list}: {source}")]
    BadIceUrl {
        /// Which setting held it (`STUN_URLS`, `TURN_URLS`).
        list: &'static str,
        /// The parse error, naming the URL and what is wrong with it.
        source: proxim_protocol::ice::InvalidIceUrl,
    },
    /// An ICE URL is in the wrong list (a `turn:` URL among the STUN URLs or the reverse).
    #[error("{list}: `{url}` is not a {expected} URL")]
    WrongScheme {
        /// Which setting held it.
        list: &'static str,
        /// The URL.
        url: String,
        /// What the list accepts (`stun:/stuns:` or `turn:/turns:`).
        expected: &'static str,
    },
    /// TURN URLs were given without credentials (a username and a password, or a secret).
    #[error(
        "TURN_URLS are set but {missing} is missing: a TURN relay needs credentials \
         (TURN_USERNAME and TURN_PASSWORD, or TURN_SECRET for coturn's use-auth-secret)"
    )]
    TurnWithoutCredentials {
        /// Which of `TURN_USERNAME`/`TURN_PASSWORD` is missing.
        missing: &'static str,
    },
    /// Both a TURN REST secret and a static TURN username or password were given.
    #[error(
        "TURN_SECRET cannot be combined with TURN_USERNAME/TURN_PASSWORD: the relay either \
         checks time-limited credentials minted from the shared secret (coturn use-auth-secret) \
         or static long-term users, not both; unset one of them"
    )]
    ConflictingTurnCredentials,
    /// A setting has a bad value.
    #[error("invalid {what}: {why}")]
    Invalid {
        /// The setting.
        what: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML or has unknown keys.
    #[error("bad config file {path}: {message}")]
    ParseFile {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The placeholder shown instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// The admin bearer token ([`ServerConfig::admin_token`]). `Debug` shows [`REDACTED`]; the
/// only way to use it is [`AdminToken::matches`], which compares in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// The token.
    pub fn new(token: impl Into<String>) -> Self {
        AdminToken(token.into())
    }

    /// Whether `given` is the token, in time independent of where they differ.
    pub fn matches(&self, given: &str) -> bool {
        let (want, given) = (self.0.as_bytes(), given.as_bytes());
        want.len() == given.len()
            && want
                .iter()
                .zip(given)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<InvalidTrustedProxy> for ConfigError {
    fn from(error: InvalidTrustedProxy) -> Self {
        ConfigError::Invalid {
            what: InvalidTrustedProxy::SETTING,
            why: error.why(),
        }
    }
}

/// Assert that `value`'s `Debug` shows none of `secrets`, and shows [`REDACTED`] instead.
#[cfg(test)]
pub(crate) fn assert_redacted(value: &impl std::fmt::Debug, secrets: &[&str]) {
    let debug = format!("{value:?}");
    for secret in secrets {
        assert!(!debug.contains(secret), "{secret} shown in {debug}");
    }
    assert!(debug.contains(REDACTED), "{debug}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        ServerConfig::default().validate().unwrap();
        ServerConfig::loopback().validate().unwrap();
        assert_eq!(ServerConfig::default().bind.port(), DEFAULT_PORT);
        assert_eq!(ServerConfig::loopback().bind.port(), 0);
    }

    #[test]
    fn refuses_inconsistent_timeouts_and_limits() {
        type Change = fn(&mut ServerConfig);
        // Each row: a change to the loopback config, and what the error names ("" for any
        // error, `None` when the change is fine).
        let cases: [(Change, Option<&str>); 16] = [
            (
                |c| c.heartbeat_timeout = c.heartbeat_interval,
                Some("heartbeat timeout"),
            ),
            (|c| c.send_queue_capacity = 0, Some("")),
            (|c| c.code_length = 3, Some("code length")),
            (|c| c.code_ttl = Duration::from_millis(99), Some("code ttl")),
            (
                |c| c.code_ttl = MAX_CODE_TTL + Duration::from_secs(1),
                Some("code ttl"),
            ),
            (|c| c.code_ttl = Duration::ZERO, None),
            (|c| c.code_ttl = MIN_CODE_TTL, None),
            (|c| c.code_ttl = MAX_CODE_TTL, None),
            (|c| c.max_frame_bytes = MAX_FRAME_BYTES + 1, Some("")),
            (|c| c.prompt_timeout = Duration::ZERO, Some("")),
            (|c| c.rate_burst = 0, Some("rate burst")),
            (|c| (c.rate_burst, c.rate_limit) = (0, 0), None),
            (|c| c.rate_strikes = 0, Some("")),
            (|c| c.pair_window = Duration::ZERO, Some("pair window")),
            (
                |c| (c.pair_window, c.pair_attempts) = (Duration::ZERO, 0),
                None,
            ),
            (
                |c| c.heartbeat_interval = Duration::ZERO,
                Some("heartbeat interval"),
            ),
        ];
        for (row, (change, refused)) in cases.into_iter().enumerate() {
            let mut config = ServerConfig::loopback();
            change(&mut config);
            match (config.validate(), refused) {
                (Ok(()), None) => {}
                (Err(e), Some(names)) => assert!(e.to_string().contains(names), "row {row}: {e}"),
                (result, _) => panic!("row {row}: {result:?}, expected {refused:?}"),
            }
        }
    }

    #[test]
    fn public_host_must_be_a_host() {
        let with_host = |host: &str| {
            ServerConfig {
                public_host: Some(host.into()),
                ..ServerConfig::loopback()
            }
            .validate()
        };
        for good in [
            "198.18.0.9",
            "proxim.example.net",
            "2001:db8::1",
            "[2001:db8::1]",
        ] {
            with_host(good).unwrap();
        }
        for bad in ["", "a b", "host/path", "h:1:2", "[h:1]", "[::1"] {
            assert!(with_host(bad).is_err(), "{bad:?}");
        }
        assert_eq!(ServerConfig::loopback().stun, None);
        assert_eq!(ServerConfig::default().stun, None);
    }

    #[test]
    fn admin_token_is_hidden_and_compared_whole() {
        let token = AdminToken::new("tok-123456");
        assert!(token.matches("tok-123456"));
        for wrong in ["", "tok-12345", "tok-1234567", "TOK-123456"] {
            assert!(!token.matches(wrong), "{wrong:?}");
        }
        let config = ServerConfig {
            admin_token: Some(token),
            ..ServerConfig::loopback()
        };
        assert_redacted(&config, &["tok-123456"]);
        let blank = ServerConfig {
            admin_token: Some(AdminToken::new(" ")),
            ..ServerConfig::loopback()
        };
        assert!(
            blank
                .validate()
                .unwrap_err()
                .to_string()
                .contains("admin token")
        );
        assert_eq!(ServerConfig::default().admin_bind, None);
        assert_eq!(
            ServerConfig::loopback().admin_bind.map(|a| a.port()),
            Some(0)
        );
    }
}
