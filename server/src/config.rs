//! Server configuration: listen address, ICE servers handed to clients, timeouts and limits.
//!
//! Everything is validated when it is built ("parse, don't validate"): a [`ServerConfig`] that
//! passed [`ServerConfig::validate`] and an [`IceConfig`] that exists are usable as they are.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};

use proxim_protocol::ice::{IceScheme, IceUrl};
use proxim_protocol::{ConnectionId, IceServer, MAX_FRAME_BYTES};

pub use crate::proxy::TrustedProxies;

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
    /// How long a desktop has to answer a pairing prompt. Default 60 s.
    pub prompt_timeout: Duration,
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
    /// Pair and connect requests one desktop accepts within [`ServerConfig::pair_window`],
    /// whoever sends them; further ones get `error too_many_attempts`, and the desktop is told
    /// once per lockout. 0 turns the limit off. Default 5.
    pub pair_attempts: u32,
    /// The sliding window of [`ServerConfig::pair_attempts`]. Default 60 s.
    pub pair_window: Duration,
    /// Reverse proxies whose `Forwarded` / `X-Forwarded-For` headers name the client address
    /// (used by the per-IP cap). Empty by default: the TCP peer address is the client address.
    pub trusted_proxies: TrustedProxies,
}

impl Default for ServerConfig {
    /// Listen on `0.0.0.0:8787` with no ICE servers and the default timeouts and limits.
    fn default() -> Self {
        ServerConfig {
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_PORT)),
            ice: IceConfig::none(),
            heartbeat_interval: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(45),
            prompt_timeout: Duration::from_secs(60),
            send_queue_capacity: 256,
            code_length: 6,
            code_ttl: Duration::from_secs(10 * 60),
            code_reservation: Duration::from_secs(5 * 60),
            max_frame_bytes: MAX_FRAME_BYTES,
            shutdown_grace: Duration::from_secs(5),
            stun: None,
            public_host: None,
            rate_limit: 50,
            rate_burst: 100,
            rate_strikes: 50,
            max_connections_per_ip: 32,
            pair_attempts: 5,
            pair_window: Duration::from_secs(60),
            trusted_proxies: TrustedProxies::none(),
        }
    }
}

/// The port the server listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 8787;

/// Where `proxim serve` runs the embedded STUN responder unless told otherwise.
pub const DEFAULT_STUN_BIND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 3478);

/// The shortest non-zero [`ServerConfig::code_ttl`].
pub const MIN_CODE_TTL: Duration = Duration::from_millis(100);

/// The longest [`ServerConfig::code_ttl`] (zero, for codes that never expire, aside).
pub const MAX_CODE_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How long minted TURN REST credentials stay valid unless told otherwise: one day.
pub const DEFAULT_TURN_TTL: Duration = Duration::from_secs(86_400);

impl ServerConfig {
    /// The defaults, but listening on `127.0.0.1` on a free port: for tests and the demo.
    pub fn loopback() -> Self {
        ServerConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
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
        if let Some(host) = &self.public_host {
            stun_url_for_host(host, 3478).ok_or_else(|| ConfigError::Invalid {
                what: "public host (--public-host / PROXIM_PUBLIC_HOST)",
                why: format!("`{host}` is not a host name or IP address"),
            })?;
        }
        Ok(())
    }
}

/// The `stun:` URL for `host` (a name, an IPv4 address, or an IPv6 address with or without
/// brackets) and `port`; `None` when `host` is not a usable host.
pub(crate) fn stun_url_for_host(host: &str, port: u16) -> Option<IceUrl> {
    let host = host.trim();
    if host.is_empty() {
        return None;
    }
    let url = if host.contains(':') && !host.starts_with('[') {
        host.parse::<std::net::Ipv6Addr>().ok()?;
        format!("stun:[{host}]:{port}")
    } else if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')?
            .parse::<std::net::Ipv6Addr>()
            .ok()?;
        format!("stun:{host}:{port}")
    } else {
        format!("stun:{host}:{port}")
    };
    IceUrl::parse(&url).ok()
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

// ---------------------------------------------------------------------------------------------
// ICE configuration
// ---------------------------------------------------------------------------------------------

/// The ICE servers the server hands to its clients.
///
/// Built once at startup from validated URLs. Clients get their list from
/// [`IceConfig::ice_servers_at`], called at every `welcome`: with static TURN credentials that
/// is the same list for everyone; with a TURN REST secret (`TURN_SECRET`, coturn's
/// `use-auth-secret`) each client gets a fresh username `<unix expiry>:<connection id>` and the
/// password `base64(HMAC-SHA1(secret, username))`.
///
/// `Debug` never shows the TURN password or secret.
#[derive(Clone, PartialEq, Eq)]
pub struct IceConfig {
    stun: Vec<IceUrl>,
    turn: Option<TurnConfig>,
}

/// A TURN relay's URLs and how clients authenticate to it.
#[derive(Clone, PartialEq, Eq)]
struct TurnConfig {
    urls: Vec<IceUrl>,
    credentials: TurnCredentials,
}

/// How clients authenticate to the TURN relay.
#[derive(Clone, PartialEq, Eq)]
enum TurnCredentials {
    /// One long-term username and password shared by every client.
    Static { username: String, password: String },
    /// TURN REST credentials: per-client `<expiry>:<connection id>` usernames with
    /// `base64(HMAC-SHA1(secret, username))` passwords, valid for `ttl`.
    Rest {
        secret: String,
        ttl: Duration,
        realm: Option<String>,
    },
}

/// The TURN credential settings, as given (environment, flags or file), before validation.
///
/// Either `username` and `password` (static long-term credentials), or `secret` (TURN REST
/// credentials; coturn `use-auth-secret` with the same `static-auth-secret`). `Debug` never
/// shows the password or the secret.
#[derive(Clone, Default)]
pub struct TurnAuth {
    /// `TURN_USERNAME`.
    pub username: Option<String>,
    /// `TURN_PASSWORD`.
    pub password: Option<String>,
    /// `TURN_SECRET`.
    pub secret: Option<String>,
    /// `TURN_TTL`: how long minted credentials stay valid (default [`DEFAULT_TURN_TTL`]).
    pub ttl: Option<Duration>,
    /// `TURN_REALM`: the relay's realm, shown in monitoring and logs.
    pub realm: Option<String>,
}

impl fmt::Debug for TurnAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hide = |v: &Option<String>| v.as_ref().map(|_| REDACTED);
        f.debug_struct("TurnAuth")
            .field("username", &self.username)
            .field("password", &hide(&self.password))
            .field("secret", &hide(&self.secret))
            .field("ttl", &self.ttl)
            .field("realm", &self.realm)
            .finish()
    }
}

/// The placeholder shown instead of a secret.
pub const REDACTED: &str = "<redacted>";

impl IceConfig {
    /// No ICE servers: clients use host candidates only.
    pub fn none() -> Self {
        IceConfig {
            stun: Vec::new(),
            turn: None,
        }
    }

    /// STUN servers only (`stun:`/`stuns:` URLs).
    pub fn stun_only<S: AsRef<str>>(stun_urls: Vec<S>) -> Result<Self, ConfigError> {
        Self::new(&stun_urls, &[] as &[&str], None, None)
    }

    /// Build from URL lists and TURN credentials.
    ///
    /// Every URL must parse ([`IceUrl::parse`]); STUN URLs must be `stun:`/`stuns:`, TURN URLs
    /// `turn:`/`turns:`; TURN URLs need both a username and a password. Blank entries are
    /// ignored, and blank credentials count as missing.
    pub fn new<S: AsRef<str>, T: AsRef<str>>(
        stun_urls: &[S],
        turn_urls: &[T],
        turn_username: Option<String>,
        turn_password: Option<String>,
    ) -> Result<Self, ConfigError> {
        let auth = TurnAuth {
            username: turn_username,
            password: turn_password,
            ..TurnAuth::default()
        };
        Self::with_turn_auth(stun_urls, turn_urls, auth)
    }

    /// Build from URL lists and TURN credential settings, static or REST.
    ///
    /// As [`IceConfig::new`], and: a secret excludes a username or password
    /// ([`ConfigError::ConflictingTurnCredentials`]); a secret that is set must not be blank; a
    /// TTL must be more than zero.
    pub fn with_turn_auth<S: AsRef<str>, T: AsRef<str>>(
        stun_urls: &[S],
        turn_urls: &[T],
        auth: TurnAuth,
    ) -> Result<Self, ConfigError> {
        let stun = parse_list(
            STUN_URLS,
            stun_urls.iter().map(AsRef::as_ref),
            false,
            "stun:/stuns:",
        )?;
        let turn_urls = parse_list(
            TURN_URLS,
            turn_urls.iter().map(AsRef::as_ref),
            true,
            "turn:/turns:",
        )?;
        let TurnAuth {
            username,
            password,
            secret,
            ttl,
            realm,
        } = auth;
        let ttl = ttl.unwrap_or(DEFAULT_TURN_TTL);
        if ttl.as_secs() == 0 {
            return Err(ConfigError::Invalid {
                what: TURN_TTL,
                why: format!(
                    "{ttl:?} is too short: minted TURN credentials must stay valid for at least \
                     one second (default {}s)",
                    DEFAULT_TURN_TTL.as_secs()
                ),
            });
        }
        let (username, password) = (non_blank(username), non_blank(password));
        if let Some(secret) = &secret {
            if secret.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    what: TURN_SECRET,
                    why: "it is set but empty: give the relay's static-auth-secret, or unset it"
                        .into(),
                });
            }
            if username.is_some() || password.is_some() {
                return Err(ConfigError::ConflictingTurnCredentials);
            }
        }
        let turn = if turn_urls.is_empty() {
            None
        } else {
            let credentials = match secret {
                Some(secret) => TurnCredentials::Rest {
                    secret,
                    ttl,
                    realm: non_blank(realm),
                },
                None => TurnCredentials::Static {
                    username: username.ok_or(ConfigError::TurnWithoutCredentials {
                        missing: TURN_USERNAME,
                    })?,
                    password: password.ok_or(ConfigError::TurnWithoutCredentials {
                        missing: TURN_PASSWORD,
                    })?,
                },
            };
            Some(TurnConfig {
                urls: turn_urls,
                credentials,
            })
        };
        Ok(IceConfig { stun, turn })
    }

    /// Read `STUN_URLS`, `TURN_URLS` (comma-separated), `TURN_USERNAME`, `TURN_PASSWORD`,
    /// `TURN_SECRET`, `TURN_TTL` (e.g. `86400` or `90m`) and `TURN_REALM` from the process
    /// environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`IceConfig::from_env`], reading variables through `lookup` (for tests and for
    /// other sources of environment-style settings).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let stun = split_list(lookup(STUN_URLS).as_deref().unwrap_or(""));
        let turn = split_list(lookup(TURN_URLS).as_deref().unwrap_or(""));
        let ttl = match lookup(TURN_TTL).filter(|t| !t.trim().is_empty()) {
            Some(text) => Some(parse_duration(&text).map_err(|why| ConfigError::Invalid {
                what: TURN_TTL,
                why,
            })?),
            None => None,
        };
        let auth = TurnAuth {
            username: lookup(TURN_USERNAME),
            password: lookup(TURN_PASSWORD),
            secret: lookup(TURN_SECRET),
            ttl,
            realm: lookup(TURN_REALM),
        };
        Self::with_turn_auth(&stun, &turn, auth)
    }

    /// The ICE servers for one client at the current wall-clock time; see
    /// [`IceConfig::ice_servers_at`].
    pub fn ice_servers_for(&self, connection_id: &ConnectionId) -> Vec<IceServer> {
        self.ice_servers_at(connection_id, SystemTime::now(), None)
    }

    /// The ICE servers for one client, sent in its `welcome`: one entry for the STUN URLs
    /// (`embedded_stun`, this server's own responder, first) and one for the TURN URLs with
    /// their credentials. Empty when nothing is configured.
    ///
    /// With a TURN secret the credentials are minted here: username
    /// `<now + ttl as unix seconds>:<connection id>`, password
    /// `base64(HMAC-SHA1(secret, username))`.
    pub fn ice_servers_at(
        &self,
        connection_id: &ConnectionId,
        now: SystemTime,
        embedded_stun: Option<&IceUrl>,
    ) -> Vec<IceServer> {
        let mut servers = Vec::with_capacity(2);
        let stun: Vec<String> = embedded_stun
            .into_iter()
            .chain(self.stun.iter().filter(|u| Some(*u) != embedded_stun))
            .map(ToString::to_string)
            .collect();
        if !stun.is_empty() {
            servers.push(IceServer {
                urls: stun,
                username: None,
                credential: None,
            });
        }
        if let Some(turn) = &self.turn {
            let (username, credential) = match &turn.credentials {
                TurnCredentials::Static { username, password } => {
                    (username.clone(), password.clone())
                }
                TurnCredentials::Rest { secret, ttl, .. } => {
                    mint_turn_credentials(secret, *ttl, connection_id.as_str(), now)
                }
            };
            servers.push(IceServer {
                urls: turn.urls.iter().map(ToString::to_string).collect(),
                username: Some(username),
                credential: Some(credential),
            });
        }
        servers
    }

    /// `"rest"`, `"static"`, or `None` without TURN.
    pub fn turn_credentials_kind(&self) -> Option<&'static str> {
        self.turn.as_ref().map(|t| match t.credentials {
            TurnCredentials::Static { .. } => "static",
            TurnCredentials::Rest { .. } => "rest",
        })
    }

    /// The STUN URLs.
    pub fn stun_urls(&self) -> &[IceUrl] {
        &self.stun
    }

    /// The TURN URLs (empty without TURN).
    pub fn turn_urls(&self) -> &[IceUrl] {
        self.turn.as_ref().map_or(&[], |t| &t.urls)
    }

    /// Whether a TURN relay is configured.
    pub fn has_turn(&self) -> bool {
        self.turn.is_some()
    }

    /// Log what clients will be able to do with this configuration: a warning without TURN
    /// (symmetric NATs will fail) and another without STUN (host candidates only).
    pub fn log_capabilities(&self) {
        if self.turn.is_none() {
            tracing::warn!("no TURN relay configured: peers behind symmetric NAT will not connect");
        }
        if let Some(TurnConfig {
            credentials: TurnCredentials::Rest { secret, .. },
            ..
        }) = &self.turn
            && secret.len() < 16
        {
            tracing::warn!(
                secret_len = secret.len(),
                "TURN_SECRET is short: anyone who guesses it can mint relay credentials; use \
                 at least 32 random characters (e.g. `openssl rand -hex 32`)"
            );
        }
        if self.stun.is_empty() && self.turn.is_none() {
            tracing::warn!(
                "no STUN server configured either: clients get an empty ICE server list and \
                 use host candidates only (same network)"
            );
        }
        tracing::info!(
            stun = ?self.stun_urls().iter().map(ToString::to_string).collect::<Vec<_>>(),
            turn = ?self.turn_urls().iter().map(ToString::to_string).collect::<Vec<_>>(),
            turn_credentials = self.turn_credentials_kind().unwrap_or("none"),
            "ICE servers"
        );
    }

    /// The configuration as JSON for monitoring, with credentials replaced by
    /// [`REDACTED`].
    pub fn redacted_json(&self) -> serde_json::Value {
        let turn = self.turn.as_ref().map(|turn| {
            let urls = turn
                .urls
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>();
            match &turn.credentials {
                TurnCredentials::Static { username, .. } => serde_json::json!({
                    "urls": urls,
                    "credentials": "static",
                    "username": username,
                    "password": REDACTED,
                }),
                TurnCredentials::Rest { ttl, realm, .. } => serde_json::json!({
                    "urls": urls,
                    "credentials": "rest",
                    "secret": REDACTED,
                    "ttl_s": ttl.as_secs(),
                    "realm": realm,
                }),
            }
        });
        serde_json::json!({
            "stun_urls": self.stun.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "turn": turn,
        })
    }
}

impl fmt::Debug for IceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceConfig")
            .field(
                "stun",
                &self
                    .stun
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
            .field("turn", &self.turn)
            .finish()
    }
}

impl fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("TurnConfig");
        d.field(
            "urls",
            &self
                .urls
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
        );
        match &self.credentials {
            TurnCredentials::Static { username, .. } => {
                d.field("username", username).field("password", &REDACTED)
            }
            TurnCredentials::Rest { ttl, realm, .. } => d
                .field("secret", &REDACTED)
                .field("ttl", ttl)
                .field("realm", realm),
        };
        d.finish()
    }
}

/// Environment variable: comma-separated STUN URLs.
pub const STUN_URLS: &str = "STUN_URLS";
/// Environment variable: comma-separated TURN URLs.
pub const TURN_URLS: &str = "TURN_URLS";
/// Environment variable: TURN username.
pub const TURN_USERNAME: &str = "TURN_USERNAME";
/// Environment variable: TURN password.
pub const TURN_PASSWORD: &str = "TURN_PASSWORD";
/// Environment variable: TURN REST shared secret (coturn `static-auth-secret`).
pub const TURN_SECRET: &str = "TURN_SECRET";
/// Environment variable: lifetime of minted TURN REST credentials (seconds, or `90m`).
pub const TURN_TTL: &str = "TURN_TTL";
/// Environment variable: TURN realm (informational).
pub const TURN_REALM: &str = "TURN_REALM";

/// Mint TURN REST credentials (draft-uberti-behave-turn-rest, coturn `use-auth-secret`):
/// username `<expiry>:<user>` with expiry = `now + ttl` in unix seconds, password
/// `base64(HMAC-SHA1(secret, username))` with standard padded base64.
pub fn mint_turn_credentials(
    secret: &str,
    ttl: Duration,
    user: &str,
    now: SystemTime,
) -> (String, String) {
    let now_s = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let expiry = now_s.saturating_add(ttl.as_secs());
    let username = format!("{expiry}:{user}");
    let password = turn_rest_password(secret, &username);
    (username, password)
}

/// `base64(HMAC-SHA1(secret, username))`.
fn turn_rest_password(secret: &str, username: &str) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = match Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Split a comma-separated list, trimming entries and dropping blank ones.
pub(crate) fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_list<'a>(
    list: &'static str,
    urls: impl Iterator<Item = &'a str>,
    turn: bool,
    expected: &'static str,
) -> Result<Vec<IceUrl>, ConfigError> {
    let mut parsed = Vec::new();
    for url in urls.map(str::trim).filter(|u| !u.is_empty()) {
        let ice_url =
            IceUrl::parse(url).map_err(|source| ConfigError::BadIceUrl { list, source })?;
        let is_turn = matches!(ice_url.scheme, IceScheme::Turn | IceScheme::Turns);
        if is_turn != turn {
            return Err(ConfigError::WrongScheme {
                list,
                url: url.to_owned(),
                expected,
            });
        }
        if !parsed.contains(&ice_url) {
            parsed.push(ice_url);
        }
    }
    Ok(parsed)
}

fn non_blank(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// Parse a duration such as `15s`, `300ms`, `2m` or `45` (seconds).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 15s, 300ms or 2m"))?;
    match unit.trim() {
        "" | "s" => Ok(Duration::from_secs(number)),
        "ms" => Ok(Duration::from_millis(number)),
        "m" | "min" => Ok(Duration::from_secs(number.saturating_mul(60))),
        _ => Err(format!("`{text}` has an unknown unit (use ms, s or m)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn id() -> ConnectionId {
        ConnectionId::new("0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn defaults_validate() {
        ServerConfig::default().validate().unwrap();
        ServerConfig::loopback().validate().unwrap();
        assert_eq!(ServerConfig::default().bind.port(), DEFAULT_PORT);
        assert_eq!(ServerConfig::loopback().bind.port(), 0);
    }

    #[test]
    fn refuses_inconsistent_timeouts_and_limits() {
        let mut c = ServerConfig::loopback();
        c.heartbeat_timeout = c.heartbeat_interval;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("heartbeat timeout")
        );
        let mut c = ServerConfig::loopback();
        c.send_queue_capacity = 0;
        assert!(c.validate().is_err());
        let mut c = ServerConfig::loopback();
        c.code_length = 3;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("code length")
        );
        let mut c = ServerConfig::loopback();
        c.code_ttl = Duration::from_millis(99);
        assert!(c.validate().unwrap_err().to_string().contains("code ttl"));
        c.code_ttl = MAX_CODE_TTL + Duration::from_secs(1);
        assert!(c.validate().unwrap_err().to_string().contains("code ttl"));
        for ok in [Duration::ZERO, MIN_CODE_TTL, MAX_CODE_TTL] {
            c.code_ttl = ok;
            c.validate().unwrap();
        }
        let mut c = ServerConfig::loopback();
        c.max_frame_bytes = MAX_FRAME_BYTES + 1;
        assert!(c.validate().is_err());
        let mut c = ServerConfig::loopback();
        c.prompt_timeout = Duration::ZERO;
        assert!(c.validate().is_err());
        let mut c = ServerConfig::loopback();
        c.rate_burst = 0;
        assert!(c.validate().unwrap_err().to_string().contains("rate burst"));
        c.rate_limit = 0;
        c.validate().unwrap();
        let mut c = ServerConfig::loopback();
        c.rate_strikes = 0;
        assert!(c.validate().is_err());
        let mut c = ServerConfig::loopback();
        c.pair_window = Duration::ZERO;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("pair window")
        );
        c.pair_attempts = 0;
        c.validate().unwrap();
    }

    #[test]
    fn env_style_lists_are_split_trimmed_and_deduplicated() {
        let ice = IceConfig::from_lookup(env(&[
            (
                "STUN_URLS",
                " stun:198.18.0.1:3478 , ,stuns:stun.example,stun:198.18.0.1:3478",
            ),
            (
                "TURN_URLS",
                "turn:198.18.0.2?transport=tcp,turns:relay.example:443",
            ),
            ("TURN_USERNAME", "alice"),
            ("TURN_PASSWORD", "s3cret"),
        ]))
        .unwrap();
        let servers = ice.ice_servers_for(&id());
        assert_eq!(servers.len(), 2);
        assert_eq!(
            servers[0].urls,
            vec!["stun:198.18.0.1:3478", "stuns:stun.example:5349"]
        );
        assert_eq!(servers[0].username, None);
        assert_eq!(
            servers[1].urls,
            vec![
                "turn:198.18.0.2:3478?transport=tcp",
                "turns:relay.example:443"
            ]
        );
        assert_eq!(servers[1].username.as_deref(), Some("alice"));
        assert_eq!(servers[1].credential.as_deref(), Some("s3cret"));
        assert!(ice.has_turn());
    }

    #[test]
    fn nothing_configured_means_an_empty_list_not_a_public_stun_server() {
        let ice = IceConfig::from_lookup(env(&[])).unwrap();
        assert!(ice.ice_servers_for(&id()).is_empty());
        let ice = IceConfig::from_lookup(env(&[("STUN_URLS", "  ")])).unwrap();
        assert!(ice.ice_servers_for(&id()).is_empty());
        let ice = IceConfig::stun_only(vec!["stun:198.18.0.1"]).unwrap();
        assert_eq!(ice.ice_servers_for(&id()).len(), 1);
        assert!(!ice.has_turn());
    }

    #[test]
    fn bad_url_names_the_url_and_the_reason() {
        let err =
            IceConfig::from_lookup(env(&[("STUN_URLS", "stun:ok.example,stun://bad.example")]))
                .unwrap_err();
        let text = err.to_string();
        assert!(matches!(
            err,
            ConfigError::BadIceUrl {
                list: "STUN_URLS",
                ..
            }
        ));
        assert!(text.contains("stun://bad.example"), "{text}");
        assert!(text.contains("no `//`"), "{text}");
        assert!(text.contains("STUN_URLS"), "{text}");

        let err = IceConfig::from_lookup(env(&[
            ("TURN_URLS", "turn:relay.example:99999"),
            ("TURN_USERNAME", "u"),
            ("TURN_PASSWORD", "p"),
        ]))
        .unwrap_err();
        assert!(
            err.to_string().contains("turn:relay.example:99999"),
            "{err}"
        );
        assert!(err.to_string().contains("bad port"), "{err}");
    }

    #[test]
    fn urls_must_be_in_the_right_list() {
        let err = IceConfig::from_lookup(env(&[("STUN_URLS", "turn:relay.example")])).unwrap_err();
        assert!(matches!(err, ConfigError::WrongScheme { .. }), "{err}");
        assert!(err.to_string().contains("turn:relay.example"));
        let err = IceConfig::from_lookup(env(&[
            ("TURN_URLS", "stun:stun.example"),
            ("TURN_USERNAME", "u"),
            ("TURN_PASSWORD", "p"),
        ]))
        .unwrap_err();
        assert!(matches!(err, ConfigError::WrongScheme { .. }), "{err}");
    }

    #[test]
    fn turn_needs_username_and_password() {
        let err = IceConfig::from_lookup(env(&[("TURN_URLS", "turn:relay.example")])).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::TurnWithoutCredentials {
                missing: "TURN_USERNAME"
            }
        ));
        let err = IceConfig::from_lookup(env(&[
            ("TURN_URLS", "turn:relay.example"),
            ("TURN_USERNAME", "u"),
            ("TURN_PASSWORD", " "),
        ]))
        .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::TurnWithoutCredentials {
                missing: "TURN_PASSWORD"
            }
        ));
        // Credentials without TURN URLs are harmless.
        IceConfig::from_lookup(env(&[("TURN_USERNAME", "u"), ("TURN_PASSWORD", "p")])).unwrap();
    }

    #[test]
    fn password_is_never_shown() {
        let ice = IceConfig::new(
            &["stun:198.18.0.1"],
            &["turn:198.18.0.2"],
            Some("alice".into()),
            Some("s3cret".into()),
        )
        .unwrap();
        let debug = format!("{ice:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains(REDACTED));
        let json = ice.redacted_json().to_string();
        assert!(!json.contains("s3cret"), "{json}");
        assert!(json.contains("alice"));
        let config = ServerConfig {
            ice,
            ..ServerConfig::loopback()
        };
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    fn rest_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("TURN_URLS", "turn:198.18.0.2"),
            ("TURN_SECRET", "proxim-test-secret"),
        ]
    }

    #[test]
    fn turn_rest_password_matches_an_independent_hmac() {
        // Computed with Python's hmac module:
        // base64.b64encode(hmac.new(b'proxim-test-secret',
        //     b'1700086400:0123456789abcdef0123456789abcdef', hashlib.sha1).digest())
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (username, password) = mint_turn_credentials(
            "proxim-test-secret",
            Duration::from_secs(86_400),
            "0123456789abcdef0123456789abcdef",
            now,
        );
        assert_eq!(username, "1700086400:0123456789abcdef0123456789abcdef");
        assert_eq!(password, "1+/ku5Y4B+PnW0Adiczb1LTBLis=");
        // RFC 2202 test case 2 for HMAC-SHA1: key "Jefe", data "what do ya want for nothing?",
        // digest effcdf6ae5eb2fa2d27416d5f184df9c259a7c79.
        assert_eq!(
            turn_rest_password("Jefe", "what do ya want for nothing?"),
            "7/zfauXrL6LSdBbV8YTfnCWafHk="
        );
    }

    #[test]
    fn rest_credentials_are_minted_per_client_with_expiry_now_plus_ttl() {
        let mut vars = rest_env();
        vars.push(("TURN_TTL", "600"));
        vars.push(("STUN_URLS", "stun:198.18.0.1"));
        let ice = IceConfig::from_lookup(env(&vars)).unwrap();
        assert_eq!(ice.turn_credentials_kind(), Some("rest"));
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let servers = ice.ice_servers_at(&id(), now, None);
        assert_eq!(servers.len(), 2);
        let turn = &servers[1];
        let username = turn.username.as_deref().unwrap();
        assert_eq!(username, format!("1600:{}", id().as_str()));
        assert_eq!(
            turn.credential.as_deref().unwrap(),
            turn_rest_password("proxim-test-secret", username)
        );
        let other = ConnectionId::new("fedcba9876543210fedcba9876543210").unwrap();
        let later = ice.ice_servers_at(&other, now + Duration::from_secs(5), None);
        assert_eq!(
            later[1].username.as_deref(),
            Some("1605:fedcba9876543210fedcba9876543210")
        );
        assert_ne!(later[1].credential, turn.credential);
    }

    #[test]
    fn embedded_stun_comes_first_and_is_not_repeated() {
        let ice = IceConfig::stun_only(vec!["stun:198.18.0.1", "stun:127.0.0.1:3478"]).unwrap();
        let own = IceUrl::parse("stun:127.0.0.1:3478").unwrap();
        let servers = ice.ice_servers_at(&id(), SystemTime::now(), Some(&own));
        assert_eq!(
            servers[0].urls,
            vec!["stun:127.0.0.1:3478", "stun:198.18.0.1:3478"]
        );
        let servers = IceConfig::none().ice_servers_at(&id(), SystemTime::now(), Some(&own));
        assert_eq!(servers.len(), 1);
        assert_eq!(servers[0].urls, vec!["stun:127.0.0.1:3478"]);
    }

    #[test]
    fn turn_secret_mistakes_are_refused_clearly() {
        let mut vars = rest_env();
        vars.push(("TURN_USERNAME", "alice"));
        let err = IceConfig::from_lookup(env(&vars)).unwrap_err();
        assert!(matches!(err, ConfigError::ConflictingTurnCredentials));
        assert!(
            err.to_string().contains("TURN_SECRET cannot be combined"),
            "{err}"
        );
        let mut vars = rest_env();
        vars.push(("TURN_PASSWORD", "p"));
        assert!(matches!(
            IceConfig::from_lookup(env(&vars)).unwrap_err(),
            ConfigError::ConflictingTurnCredentials
        ));
        let err = IceConfig::from_lookup(env(&[("TURN_URLS", "turn:x"), ("TURN_SECRET", "  ")]))
            .unwrap_err();
        assert!(
            err.to_string().contains("TURN_SECRET: it is set but empty"),
            "{err}"
        );
        let mut vars = rest_env();
        vars.push(("TURN_TTL", "0"));
        let err = IceConfig::from_lookup(env(&vars)).unwrap_err();
        assert!(err.to_string().contains("invalid TURN_TTL"), "{err}");
        let mut vars = rest_env();
        vars.push(("TURN_TTL", "500ms"));
        assert!(IceConfig::from_lookup(env(&vars)).is_err());
        let mut vars = rest_env();
        vars.push(("TURN_TTL", "soon"));
        assert!(IceConfig::from_lookup(env(&vars)).is_err());
        // Without any credential source TURN stays refused, and the message names both ways.
        let err = IceConfig::from_lookup(env(&[("TURN_URLS", "turn:x")])).unwrap_err();
        assert!(err.to_string().contains("TURN_SECRET"), "{err}");
    }

    #[test]
    fn secret_is_never_shown() {
        let mut vars = rest_env();
        vars.push(("TURN_REALM", "relay.example"));
        let ice = IceConfig::from_lookup(env(&vars)).unwrap();
        let debug = format!("{ice:?}");
        assert!(!debug.contains("proxim-test-secret"), "{debug}");
        assert!(debug.contains(REDACTED), "{debug}");
        let json = ice.redacted_json();
        let text = json.to_string();
        assert!(!text.contains("proxim-test-secret"), "{text}");
        assert_eq!(json["turn"]["credentials"], "rest");
        assert_eq!(json["turn"]["secret"], REDACTED);
        assert_eq!(json["turn"]["ttl_s"], 86_400);
        assert_eq!(json["turn"]["realm"], "relay.example");
        let auth = TurnAuth {
            secret: Some("proxim-test-secret".into()),
            password: Some("pw-123".into()),
            ..TurnAuth::default()
        };
        let debug = format!("{auth:?}");
        assert!(
            !debug.contains("proxim-test-secret") && !debug.contains("pw-123"),
            "{debug}"
        );
    }

    #[test]
    fn public_host_must_be_a_host() {
        for good in [
            "198.18.0.9",
            "proxim.example.net",
            "2001:db8::1",
            "[2001:db8::1]",
        ] {
            let c = ServerConfig {
                public_host: Some(good.into()),
                ..ServerConfig::loopback()
            };
            c.validate().unwrap();
            assert!(stun_url_for_host(good, 3478).is_some(), "{good}");
        }
        assert_eq!(
            stun_url_for_host("2001:db8::1", 3478).unwrap().to_string(),
            "stun:[2001:db8::1]:3478"
        );
        for bad in ["", "a b", "host/path", "h:1:2", "[h:1]", "[::1"] {
            let c = ServerConfig {
                public_host: Some(bad.into()),
                ..ServerConfig::loopback()
            };
            assert!(c.validate().is_err(), "{bad:?}");
        }
        assert_eq!(ServerConfig::loopback().stun, None);
        assert_eq!(ServerConfig::default().stun, None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("").is_err());
    }
}
