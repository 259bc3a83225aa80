//! Command-line arguments of `proxim serve`, with environment variables and a TOML file: the
//! one way the server's settings are read ([`ServeArgs::into_config`]).
//!
//! Precedence (kept in one place, `pick`): a flag (or its environment variable) beats the
//! file, the file beats the defaults. The file uses the flags' names with `_`:
//!
//! ```toml
//! bind = "0.0.0.0:8787"
//! stun_urls = ["stun:stun.example.net:3478"]   # or one comma-separated string
//! turn_urls = "turn:relay.example.net:3478"
//! turn_username = "proxim"
//! turn_password = "…"
//! # or, instead of turn_username/turn_password (coturn use-auth-secret):
//! # turn_secret = "…"
//! # turn_ttl = "86400s"
//! # turn_realm = "proxim.example.net"
//! stun_bind = "0.0.0.0:3478"   # the embedded STUN responder
//! no_stun = false
//! public_host = "proxim.example.net"
//! heartbeat_interval = "15s"
//! heartbeat_timeout = "45s"
//! header_timeout = "10s"       # the HTTP request head (the upgrade) must arrive by then
//! hello_timeout = "10s"        # a new connection must say hello by then
//! prompt_timeout = "60s"
//! resume_grace = "30s"         # an accepted session waits this long for a lost member (0: not)
//! code_ttl = "10m"             # how long a pairing code is valid (0: forever)
//! send_queue = 256
//! listen_backlog = 1024       # connections queued by the kernel before accept
//! rate_limit = 50              # messages/s per connection (0: off)
//! rate_burst = 100
//! rate_strikes = 50            # refused frames before disconnecting
//! max_connections_per_ip = 32  # 0: no cap
//! max_connections = 0          # open sockets at most (0: the open-file limit minus 64)
//! pair_attempts = 5            # pair/connect requests per desktop per window (0: off)
//! pair_window = "60s"
//! trusted_proxies = ["10.0.0.0/8"]   # or one comma-separated string
//! ice_servers = '[{"urls": "stun:stun.example.net"}]'   # RTCIceServer JSON, merged
//! admin_token = "…"            # opens /metrics, /api/sessions, /api/config on the public port
//! admin_bind = "127.0.0.1:8788"   # every monitoring route without a token; "none": off
//! expose_device_names = false  # device names in /api/sessions and in events
//! events = ["file:/var/log/proxim/events.jsonl", "amqp://proxim:…@mq.example.net:5672/%2f"]
//! events_queue = "webrtc_events"
//! events_buffer = 10000        # per sink, while it cannot keep up or its broker is down
//! state = "redis://:…@redis.example.net:6379/0"   # codes survive restarts; "memory": in-process
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{AdminToken, ConfigError, DEFAULT_ADMIN_BIND, DEFAULT_STUN_BIND, ServerConfig};
use crate::events::EventSinkSpec;
use crate::ice::{IceConfig, TurnAuth};
use crate::proxy::TrustedProxies;
use crate::state::StateSpec;
use crate::turn_rest::DEFAULT_TURN_TTL;

/// Arguments of the `serve` command. `Debug` hides the TURN password and secret.
#[derive(Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 0.0.0.0:8787].
    #[arg(long, env = "PROXIM_BIND", value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    /// Comma-separated STUN URLs handed to clients (e.g. `stun:stun.example.net:3478`).
    #[arg(long, env = "STUN_URLS", value_name = "URLS")]
    pub stun_urls: Option<String>,
    /// Comma-separated TURN URLs handed to clients (needs a username and password).
    #[arg(long, env = "TURN_URLS", value_name = "URLS")]
    pub turn_urls: Option<String>,
    /// TURN username.
    #[arg(long, env = "TURN_USERNAME", value_name = "NAME")]
    pub turn_username: Option<String>,
    /// TURN password (never logged).
    #[arg(
        long,
        env = "TURN_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub turn_password: Option<String>,
    /// TURN REST shared secret (coturn `use-auth-secret` / `static-auth-secret`): each client
    /// gets its own time-limited credentials. Excludes a TURN username and password. Never
    /// logged.
    #[arg(
        long,
        env = "TURN_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub turn_secret: Option<String>,
    /// How long minted TURN credentials stay valid, e.g. `86400` or `90m` [default: 86400s].
    #[arg(long, env = "TURN_TTL", value_name = "DURATION", value_parser = parse_duration)]
    pub turn_ttl: Option<Duration>,
    /// The TURN relay's realm (informational: shown in /api/config).
    #[arg(long, env = "TURN_REALM", value_name = "REALM")]
    pub turn_realm: Option<String>,
    /// UDP address of the embedded STUN responder [default: 0.0.0.0:3478].
    #[arg(long, env = "PROXIM_STUN_BIND", value_name = "ADDR")]
    pub stun_bind: Option<SocketAddr>,
    /// Do not run the embedded STUN responder (wins over --stun-bind).
    #[arg(long, env = "PROXIM_NO_STUN")]
    pub no_stun: bool,
    /// Host name or address clients reach this server at, advertised in the embedded STUN
    /// responder's `stun:` URL [default: the STUN bind address, or the WebSocket's Host
    /// header when that is 0.0.0.0/::].
    #[arg(long, env = "PROXIM_PUBLIC_HOST", value_name = "HOST")]
    pub public_host: Option<String>,
    /// TOML file with the same settings (flags and environment variables win).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How often clients must ping, e.g. `15s` [default: 15s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Silence after which a connection is dropped, e.g. `45s` [default: 45s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub heartbeat_timeout: Option<Duration>,
    /// How long a client may take to send its HTTP request head (the WebSocket upgrade),
    /// e.g. `10s` [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub header_timeout: Option<Duration>,
    /// How long a new connection may take to say `hello`, e.g. `10s` [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub hello_timeout: Option<Duration>,
    /// How long a desktop has to answer a pairing prompt, e.g. `60s` [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub prompt_timeout: Option<Duration>,
    /// How long an accepted session waits for a member whose connection was lost to resume it
    /// from a new one, e.g. `30s`; 0: it ends at once [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub resume_grace: Option<Duration>,
    /// How long a desktop's pairing code is valid before the server replaces it, e.g. `10m`;
    /// 0: codes never expire [default: 10m].
    #[arg(long, env = "PROXIM_CODE_TTL", value_name = "DURATION", value_parser = parse_duration)]
    pub code_ttl: Option<Duration>,
    /// Messages that may wait for one client before it is dropped as a slow reader
    /// [default: 256].
    #[arg(long, value_name = "MESSAGES")]
    pub send_queue: Option<usize>,
    /// Connections the kernel queues before the server accepts them (capped by
    /// `net.core.somaxconn`) [default: 1024].
    #[arg(long, env = "PROXIM_LISTEN_BACKLOG", value_name = "CONNECTIONS")]
    pub listen_backlog: Option<u32>,
    /// Messages per second one connection may send, sustained; 0 turns the limit off
    /// [default: 50].
    #[arg(long, env = "PROXIM_RATE_LIMIT", value_name = "PER_SECOND")]
    pub rate_limit: Option<u32>,
    /// Messages one connection may send in a burst [default: 100].
    #[arg(long, env = "PROXIM_RATE_BURST", value_name = "MESSAGES")]
    pub rate_burst: Option<u32>,
    /// Frames over the rate limit after which a connection is disconnected [default: 50].
    #[arg(long, env = "PROXIM_RATE_STRIKES", value_name = "FRAMES")]
    pub rate_strikes: Option<u32>,
    /// Concurrent WebSocket connections per client IP; 0 turns the cap off [default: 32].
    #[arg(
        long,
        env = "PROXIM_MAX_CONNECTIONS_PER_IP",
        value_name = "CONNECTIONS"
    )]
    pub max_connections_per_ip: Option<u32>,
    /// Open client sockets at most; more are answered 503. 0: the open-file limit minus 64
    /// [default: 0].
    #[arg(long, env = "PROXIM_MAX_CONNECTIONS", value_name = "CONNECTIONS")]
    pub max_connections: Option<u32>,
    /// Pair and connect requests one desktop accepts per window; 0 turns the limit off
    /// [default: 5].
    #[arg(long, env = "PROXIM_PAIR_ATTEMPTS", value_name = "REQUESTS")]
    pub pair_attempts: Option<u32>,
    /// The window of --pair-attempts, e.g. `60s` [default: 60s].
    #[arg(long, env = "PROXIM_PAIR_WINDOW", value_name = "DURATION", value_parser = parse_duration)]
    pub pair_window: Option<Duration>,
    /// Comma-separated IPs/CIDRs of reverse proxies whose `Forwarded`/`X-Forwarded-For`
    /// headers name the client address [default: none, the TCP peer is the client].
    #[arg(long, env = "PROXIM_TRUSTED_PROXIES", value_name = "CIDRS")]
    pub trusted_proxies: Option<String>,
    /// More ICE servers, a JSON array of `RTCIceServer` objects (`{"urls": …, "username": …,
    /// "credential": …}`), merged with the STUN and TURN URLs. Credentials are never logged.
    #[arg(long, env = "ICE_SERVERS", value_name = "JSON", hide_env_values = true)]
    pub ice_servers: Option<String>,
    /// Bearer token that opens `/metrics`, `/api/sessions` and `/api/config` on the public
    /// listener (without one they answer 404 there). Never logged.
    #[arg(
        long,
        env = "PROXIM_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Address of the admin listener, which serves every monitoring route without a token;
    /// `none` turns it off [default: 127.0.0.1:8788].
    #[arg(long, env = "PROXIM_ADMIN_BIND", value_name = "ADDR|none", value_parser = parse_admin_bind)]
    pub admin_bind: Option<AdminBind>,
    /// List device names in `/api/sessions` and in events (off: ids and states only).
    #[arg(long, env = "PROXIM_EXPOSE_DEVICE_NAMES")]
    pub expose_device_names: bool,
    /// Where server events go, comma-separated: `stdout`, `file:PATH` (JSON lines), an
    /// `amqp://user:password@host:5672/%2f` URL (RabbitMQ, durable queue, publisher
    /// confirms). The password is never logged [default: no events].
    #[arg(
        long,
        env = "PROXIM_EVENTS",
        value_name = "SINKS",
        hide_env_values = true
    )]
    pub events: Option<String>,
    /// The RabbitMQ queue events are published to [default: webrtc_events].
    #[arg(long, env = "PROXIM_EVENTS_QUEUE", value_name = "NAME")]
    pub events_queue: Option<String>,
    /// Events each sink buffers while it cannot keep up or its broker is down; past it the
    /// newest are dropped and counted [default: 10000].
    #[arg(long, env = "PROXIM_EVENTS_BUFFER", value_name = "N")]
    pub events_buffer: Option<usize>,
    /// Where state that must outlive the process is kept: a `redis://[user:password@]host:port/db`
    /// URL (codes and their reservations, retired codes survive a restart), or `memory`. The
    /// password is never logged [default: this process's memory only].
    #[arg(
        long,
        env = "PROXIM_STATE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub state: Option<String>,
}

/// Where the admin listener binds, as given: an address, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum AdminBind {
    /// Listen on this address.
    At(SocketAddr),
    /// No admin listener (`none` / `off`).
    Off,
}

impl TryFrom<String> for AdminBind {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        parse_admin_bind(&text)
    }
}

impl AdminBind {
    /// The address, or `None` when off.
    fn addr(self) -> Option<SocketAddr> {
        match self {
            AdminBind::At(addr) => Some(addr),
            AdminBind::Off => None,
        }
    }
}

impl std::fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hide = |v: &Option<String>| v.as_ref().map(|_| crate::config::REDACTED);
        f.debug_struct("ServeArgs")
            .field("bind", &self.bind)
            .field("stun_urls", &self.stun_urls)
            .field("turn_urls", &self.turn_urls)
            .field("turn_username", &self.turn_username)
            .field("turn_password", &hide(&self.turn_password))
            .field("turn_secret", &hide(&self.turn_secret))
            .field("turn_ttl", &self.turn_ttl)
            .field("turn_realm", &self.turn_realm)
            .field("stun_bind", &self.stun_bind)
            .field("no_stun", &self.no_stun)
            .field("public_host", &self.public_host)
            .field("config", &self.config)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("header_timeout", &self.header_timeout)
            .field("hello_timeout", &self.hello_timeout)
            .field("prompt_timeout", &self.prompt_timeout)
            .field("resume_grace", &self.resume_grace)
            .field("code_ttl", &self.code_ttl)
            .field("send_queue", &self.send_queue)
            .field("listen_backlog", &self.listen_backlog)
            .field("rate_limit", &self.rate_limit)
            .field("rate_burst", &self.rate_burst)
            .field("rate_strikes", &self.rate_strikes)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("max_connections", &self.max_connections)
            .field("pair_attempts", &self.pair_attempts)
            .field("pair_window", &self.pair_window)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("ice_servers", &hide(&self.ice_servers))
            .field("admin_token", &hide(&self.admin_token))
            .field("admin_bind", &self.admin_bind)
            .field("expose_device_names", &self.expose_device_names)
            .field("events", &hide(&self.events))
            .field("events_queue", &self.events_queue)
            .field("events_buffer", &self.events_buffer)
            .field("state", &hide(&self.state))
            .finish()
    }
}

impl ServeArgs {
    /// Parse `serve`'s flags (`args`, without the program name) the way `proxim serve` does:
    /// a setting not given as a flag is read from its environment variable.
    pub fn try_parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            args: ServeArgs,
        }
        let argv = std::iter::once(std::ffi::OsString::from("serve"))
            .chain(args.into_iter().map(Into::into));
        <Serve as clap::Parser>::try_parse_from(argv).map(|serve| serve.args)
    }

    /// Merge flags, environment, the config file and the defaults into a validated
    /// [`ServerConfig`]: the one way settings are read. Each setting is the flag (or its
    /// environment variable) if given, else the file's value, else the default ([`pick`]).
    pub fn into_config(self) -> Result<ServerConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        let defaults = ServerConfig::default();
        let list = |flag: Option<String>, file: Option<UrlList>| {
            pick(
                flag.map(|s| split_list(&s)),
                file.map(UrlList::into_vec),
                Vec::new(),
            )
        };
        let ice = IceConfig::with_turn_auth(
            &list(self.stun_urls, file.stun_urls),
            &list(self.turn_urls, file.turn_urls),
            TurnAuth {
                username: self.turn_username.or(file.turn_username),
                password: self.turn_password.or(file.turn_password),
                secret: self.turn_secret.or(file.turn_secret),
                ttl: Some(pick_duration(
                    "turn_ttl",
                    self.turn_ttl,
                    file.turn_ttl,
                    DEFAULT_TURN_TTL,
                )?),
                realm: self.turn_realm.or(file.turn_realm),
            },
        )?
        .merge_ice_servers_json(&pick(
            self.ice_servers,
            file.ice_servers,
            String::new(),
        ))?;
        let stun = if self.no_stun || file.no_stun == Some(true) {
            None
        } else {
            Some(pick(self.stun_bind, file.stun_bind, DEFAULT_STUN_BIND))
        };
        let trusted_proxies = TrustedProxies::parse(&pick(
            self.trusted_proxies,
            file.trusted_proxies.map(|list| list.into_vec().join(",")),
            String::new(),
        ))?;
        let pair_window = pick_duration(
            "pair_window",
            self.pair_window,
            file.pair_window,
            defaults.pair_window,
        )?;
        let events = pick(
            self.events.map(|s| split_list(&s)),
            file.events.map(UrlList::into_vec),
            Vec::new(),
        )
        .iter()
        .map(|spec| {
            spec.parse::<EventSinkSpec>()
                .map_err(|e| ConfigError::Invalid {
                    what: "event sink (--events / PROXIM_EVENTS)",
                    why: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
        let state = self
            .state
            .or(file.state)
            .map(|url| {
                StateSpec::parse(&url).map_err(|e| ConfigError::Invalid {
                    what: "state store (--state / PROXIM_STATE_URL)",
                    why: e.to_string(),
                })
            })
            .transpose()?;
        let config = ServerConfig {
            bind: pick(self.bind, file.bind, defaults.bind),
            ice,
            heartbeat_interval: pick_duration(
                "heartbeat_interval",
                self.heartbeat_interval,
                file.heartbeat_interval,
                defaults.heartbeat_interval,
            )?,
            heartbeat_timeout: pick_duration(
                "heartbeat_timeout",
                self.heartbeat_timeout,
                file.heartbeat_timeout,
                defaults.heartbeat_timeout,
            )?,
            header_timeout: pick_duration(
                "header_timeout",
                self.header_timeout,
                file.header_timeout,
                defaults.header_timeout,
            )?,
            hello_timeout: pick_duration(
                "hello_timeout",
                self.hello_timeout,
                file.hello_timeout,
                defaults.hello_timeout,
            )?,
            prompt_timeout: pick_duration(
                "prompt_timeout",
                self.prompt_timeout,
                file.prompt_timeout,
                defaults.prompt_timeout,
            )?,
            resume_grace: pick_duration(
                "resume_grace",
                self.resume_grace,
                file.resume_grace,
                defaults.resume_grace,
            )?,
            code_ttl: pick_duration("code_ttl", self.code_ttl, file.code_ttl, defaults.code_ttl)?,
            send_queue_capacity: pick(
                self.send_queue,
                file.send_queue,
                defaults.send_queue_capacity,
            ),
            listen_backlog: pick(
                self.listen_backlog,
                file.listen_backlog,
                defaults.listen_backlog,
            ),
            stun,
            public_host: self.public_host.or(file.public_host),
            rate_limit: pick(self.rate_limit, file.rate_limit, defaults.rate_limit),
            rate_burst: pick(self.rate_burst, file.rate_burst, defaults.rate_burst),
            rate_strikes: pick(self.rate_strikes, file.rate_strikes, defaults.rate_strikes),
            max_connections_per_ip: pick(
                self.max_connections_per_ip,
                file.max_connections_per_ip,
                defaults.max_connections_per_ip,
            ),
            max_connections: pick(
                self.max_connections,
                file.max_connections,
                defaults.max_connections,
            ),
            pair_attempts: pick(
                self.pair_attempts,
                file.pair_attempts,
                defaults.pair_attempts,
            ),
            pair_window,
            trusted_proxies,
            admin_token: self.admin_token.or(file.admin_token).map(AdminToken::new),
            admin_bind: pick(
                self.admin_bind,
                file.admin_bind,
                AdminBind::At(DEFAULT_ADMIN_BIND),
            )
            .addr(),
            expose_device_names: self.expose_device_names || file.expose_device_names == Some(true),
            events,
            events_queue: pick(
                self.events_queue,
                file.events_queue,
                defaults.events_queue.clone(),
            ),
            events_buffer: pick(
                self.events_buffer,
                file.events_buffer,
                defaults.events_buffer,
            ),
            state,
            ..defaults
        };
        config.validate()?;
        Ok(config)
    }
}

/// The precedence of every `proxim serve` setting, in one place: the flag (or its environment
/// variable, which clap has already folded into it) wins over the file, the file over
/// `default`.
fn pick<T>(flag: Option<T>, file: Option<T>, default: T) -> T {
    flag.or(file).unwrap_or(default)
}

/// [`pick`] for a duration. The file's value is parsed only when no flag overrides it, so a
/// bad value in the file is reported (as `what`) only when it would be used.
fn pick_duration(
    what: &'static str,
    flag: Option<Duration>,
    file: Option<DurationValue>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let file = match flag {
        Some(_) => None,
        None => file.map(|value| value.into_duration(what)).transpose()?,
    };
    Ok(pick(flag, file, default))
}

/// Split a comma-separated list, trimming entries and dropping blank ones.
fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Parse a duration such as `15s`, `300ms`, `2m` or `45` (seconds).
fn parse_duration(text: &str) -> Result<Duration, String> {
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

/// `--admin-bind`: an address, or `none`/`off`.
fn parse_admin_bind(text: &str) -> Result<AdminBind, String> {
    match text.trim() {
        "none" | "off" => Ok(AdminBind::Off),
        addr => addr
            .parse()
            .map(AdminBind::At)
            .map_err(|_| format!("`{text}` is not an address such as 127.0.0.1:8788, nor `none`")),
    }
}

/// The TOML configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<SocketAddr>,
    stun_urls: Option<UrlList>,
    turn_urls: Option<UrlList>,
    turn_username: Option<String>,
    turn_password: Option<String>,
    turn_secret: Option<String>,
    turn_ttl: Option<DurationValue>,
    turn_realm: Option<String>,
    stun_bind: Option<SocketAddr>,
    no_stun: Option<bool>,
    public_host: Option<String>,
    heartbeat_interval: Option<DurationValue>,
    heartbeat_timeout: Option<DurationValue>,
    header_timeout: Option<DurationValue>,
    hello_timeout: Option<DurationValue>,
    prompt_timeout: Option<DurationValue>,
    resume_grace: Option<DurationValue>,
    code_ttl: Option<DurationValue>,
    send_queue: Option<usize>,
    listen_backlog: Option<u32>,
    rate_limit: Option<u32>,
    rate_burst: Option<u32>,
    rate_strikes: Option<u32>,
    max_connections_per_ip: Option<u32>,
    max_connections: Option<u32>,
    pair_attempts: Option<u32>,
    pair_window: Option<DurationValue>,
    trusted_proxies: Option<UrlList>,
    ice_servers: Option<String>,
    admin_token: Option<String>,
    admin_bind: Option<AdminBind>,
    expose_device_names: Option<bool>,
    events: Option<UrlList>,
    events_queue: Option<String>,
    events_buffer: Option<usize>,
    state: Option<String>,
}

impl FileConfig {
    fn read(path: &std::path::Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::ParseFile {
            path: shown,
            message,
        })
    }

    fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// A list (URLs, proxies): an array of strings or one comma-separated string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum UrlList {
    One(String),
    Many(Vec<String>),
}

impl UrlList {
    fn into_vec(self) -> Vec<String> {
        match self {
            UrlList::One(s) => split_list(&s),
            UrlList::Many(v) => v,
        }
    }
}

/// A duration: a string such as `"15s"` or a number of seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Seconds(u64),
    Text(String),
}

impl DurationValue {
    fn into_duration(self, what: &'static str) -> Result<Duration, ConfigError> {
        match self {
            DurationValue::Seconds(s) => Ok(Duration::from_secs(s)),
            DurationValue::Text(t) => {
                parse_duration(&t).map_err(|why| ConfigError::Invalid { what, why })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Args as _;
    use proxim_protocol::ConnectionId;

    use super::*;

    fn parse(args: &[&str]) -> ServeArgs {
        ServeArgs::try_parse_from(args).unwrap()
    }

    /// The flag each environment variable stands for, from the clap definition.
    fn flag_for(env: &str) -> String {
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        let long = command
            .get_arguments()
            .find(|arg| arg.get_env().is_some_and(|e| e == env))
            .and_then(clap::Arg::get_long)
            .unwrap_or_else(|| panic!("no flag reads {env}"));
        format!("--{long}")
    }

    /// Environment-style settings, passed through the `serve` parser as the flags their
    /// variables stand for.
    fn env_style(vars: &[(&str, &str)]) -> Result<ServeArgs, clap::Error> {
        let flags: Vec<String> = vars
            .iter()
            .map(|(name, value)| format!("{}={value}", flag_for(name)))
            .collect();
        ServeArgs::try_parse_from(flags)
    }

    /// The ICE configuration built from environment-style settings.
    fn ice(vars: &[(&str, &str)]) -> Result<IceConfig, ConfigError> {
        env_style(vars)
            .unwrap()
            .into_config()
            .map(|config| config.ice)
    }

    fn id() -> ConnectionId {
        ConnectionId::new("0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn every_setting_keeps_its_flag_and_environment_variable() {
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        let settings: Vec<(String, Option<String>)> = command
            .get_arguments()
            .map(|arg| {
                let long = arg.get_long().unwrap_or_default().to_owned();
                (
                    long,
                    arg.get_env().map(|e| e.to_string_lossy().into_owned()),
                )
            })
            .collect();
        let expected = [
            ("bind", Some("PROXIM_BIND")),
            ("stun-urls", Some(crate::ice::STUN_URLS)),
            ("turn-urls", Some(crate::ice::TURN_URLS)),
            ("turn-username", Some(crate::ice::TURN_USERNAME)),
            ("turn-password", Some(crate::ice::TURN_PASSWORD)),
            ("turn-secret", Some(crate::ice::TURN_SECRET)),
            ("turn-ttl", Some(crate::ice::TURN_TTL)),
            ("turn-realm", Some(crate::ice::TURN_REALM)),
            ("stun-bind", Some("PROXIM_STUN_BIND")),
            ("no-stun", Some("PROXIM_NO_STUN")),
            ("public-host", Some("PROXIM_PUBLIC_HOST")),
            ("config", None),
            ("heartbeat-interval", None),
            ("heartbeat-timeout", None),
            ("header-timeout", None),
            ("hello-timeout", None),
            ("prompt-timeout", None),
            ("resume-grace", None),
            ("code-ttl", Some("PROXIM_CODE_TTL")),
            ("send-queue", None),
            ("listen-backlog", Some("PROXIM_LISTEN_BACKLOG")),
            ("rate-limit", Some("PROXIM_RATE_LIMIT")),
            ("rate-burst", Some("PROXIM_RATE_BURST")),
            ("rate-strikes", Some("PROXIM_RATE_STRIKES")),
            (
                "max-connections-per-ip",
                Some("PROXIM_MAX_CONNECTIONS_PER_IP"),
            ),
            ("max-connections", Some("PROXIM_MAX_CONNECTIONS")),
            ("pair-attempts", Some("PROXIM_PAIR_ATTEMPTS")),
            ("pair-window", Some("PROXIM_PAIR_WINDOW")),
            ("trusted-proxies", Some("PROXIM_TRUSTED_PROXIES")),
            ("ice-servers", Some(crate::ice::ICE_SERVERS)),
            ("admin-token", Some("PROXIM_ADMIN_TOKEN")),
            ("admin-bind", Some("PROXIM_ADMIN_BIND")),
            ("expose-device-names", Some("PROXIM_EXPOSE_DEVICE_NAMES")),
            ("events", Some("PROXIM_EVENTS")),
            ("events-queue", Some("PROXIM_EVENTS_QUEUE")),
            ("events-buffer", Some("PROXIM_EVENTS_BUFFER")),
            ("state", Some("PROXIM_STATE_URL")),
        ]
        .map(|(long, env)| (long.to_owned(), env.map(str::to_owned)));
        assert_eq!(settings, expected);
    }

    #[test]
    fn flags_build_a_config() {
        let args = parse(&[
            "--bind",
            "127.0.0.1:9000",
            "--stun-urls",
            "stun:198.18.0.1,stun:198.18.0.3",
            "--turn-urls",
            "turn:198.18.0.2",
            "--turn-username",
            "u",
            "--turn-password",
            "p",
            "--heartbeat-interval",
            "5s",
            "--heartbeat-timeout",
            "20s",
            "--prompt-timeout",
            "90s",
        ]);
        let config = args.into_config().unwrap();
        assert_eq!(config.bind, "127.0.0.1:9000".parse::<SocketAddr>().unwrap());
        assert_eq!(config.ice.stun_urls().len(), 2);
        assert!(config.ice.has_turn());
        assert_eq!(config.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(config.heartbeat_timeout, Duration::from_secs(20));
        assert_eq!(config.prompt_timeout, Duration::from_secs(90));
    }

    #[test]
    fn turn_without_password_fails_startup() {
        let args = ServeArgs {
            turn_urls: Some("turn:198.18.0.2".into()),
            turn_username: Some("u".into()),
            ..ServeArgs::default()
        };
        let err = args.into_config().unwrap_err();
        assert!(err.to_string().contains("TURN_PASSWORD"), "{err}");
    }

    #[test]
    fn bad_timeouts_fail_startup() {
        let args = ServeArgs {
            heartbeat_interval: Some(Duration::from_secs(60)),
            ..ServeArgs::default()
        };
        assert!(args.into_config().is_err());
    }

    #[test]
    fn file_settings_apply_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("proxim-server-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("serve.toml");
        std::fs::write(
            &path,
            r#"
bind = "127.0.0.1:7000"
stun_urls = ["stun:198.18.0.1", "stun:198.18.0.3"]
turn_urls = "turn:198.18.0.2"
turn_username = "file-user"
turn_password = "file-pass"
heartbeat_interval = 10
prompt_timeout = "2m"
"#,
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            bind: Some("127.0.0.1:7001".parse().unwrap()),
            ..ServeArgs::default()
        };
        let config = args.into_config().unwrap();
        assert_eq!(config.bind.port(), 7001);
        assert_eq!(config.ice.stun_urls().len(), 2);
        assert!(config.ice.has_turn());
        assert_eq!(config.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(config.prompt_timeout, Duration::from_secs(120));

        std::fs::write(&path, "stun_urls = \"stun:x\"\nunknown_key = 1\n").unwrap();
        let err = ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        }
        .into_config()
        .unwrap_err();
        assert!(matches!(err, ConfigError::ParseFile { .. }), "{err}");
        assert!(err.to_string().contains("unknown_key"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn stun_responder_is_on_by_default_and_can_be_moved_or_turned_off() {
        let config = parse(&[]).into_config().unwrap();
        assert_eq!(config.stun, Some(DEFAULT_STUN_BIND));
        assert_eq!(config.public_host, None);
        let config = parse(&[
            "--stun-bind",
            "127.0.0.1:3479",
            "--public-host",
            "198.18.0.9",
        ])
        .into_config()
        .unwrap();
        assert_eq!(config.stun, Some("127.0.0.1:3479".parse().unwrap()));
        assert_eq!(config.public_host.as_deref(), Some("198.18.0.9"));
        let config = parse(&["--no-stun", "--stun-bind", "127.0.0.1:3479"])
            .into_config()
            .unwrap();
        assert_eq!(config.stun, None);
        let err = parse(&["--public-host", "not a host"])
            .into_config()
            .unwrap_err();
        assert!(err.to_string().contains("not a host"), "{err}");
    }

    #[test]
    fn turn_secret_flags_build_rest_credentials() {
        let config = parse(&[
            "--turn-urls",
            "turn:198.18.0.2",
            "--turn-secret",
            "shh",
            "--turn-ttl",
            "90m",
            "--turn-realm",
            "relay.example",
        ])
        .into_config()
        .unwrap();
        assert_eq!(config.ice.turn_credentials_kind(), Some("rest"));
        let json = config.ice.redacted_json().to_string();
        assert!(json.contains("\"ttl_s\":5400"), "{json}");
        assert!(json.contains("relay.example"), "{json}");
        assert!(!json.contains("shh"), "{json}");

        let args = parse(&[
            "--turn-secret",
            "shh-secret",
            "--turn-password",
            "pw-secret",
        ]);
        crate::config::assert_redacted(&args, &["shh-secret", "pw-secret"]);
    }

    #[test]
    fn file_turn_secret_and_stun_keys() {
        let f = FileConfig::parse(
            "turn_secret = \"s\"\nturn_ttl = 600\nturn_realm = \"r\"\nstun_bind = \"127.0.0.1:1\"\nno_stun = true\npublic_host = \"h\"",
        )
        .unwrap();
        assert_eq!(f.turn_secret.as_deref(), Some("s"));
        assert_eq!(f.no_stun, Some(true));
        assert_eq!(f.stun_bind, Some("127.0.0.1:1".parse().unwrap()));
        assert_eq!(f.public_host.as_deref(), Some("h"));
        assert!(f.turn_ttl.is_some() && f.turn_realm.is_some());
    }

    #[test]
    fn abuse_limits_come_from_flags_the_file_and_defaults() {
        let config = parse(&[]).into_config().unwrap();
        assert_eq!(
            (config.rate_limit, config.rate_burst, config.rate_strikes),
            (50, 100, 50)
        );
        assert_eq!(config.max_connections_per_ip, 32);
        assert_eq!(config.pair_attempts, 5);
        assert_eq!(config.pair_window, Duration::from_secs(60));
        assert!(config.trusted_proxies.is_empty());

        let config = parse(&[
            "--rate-limit",
            "10",
            "--rate-burst",
            "20",
            "--rate-strikes",
            "3",
            "--max-connections-per-ip",
            "4",
            "--pair-attempts",
            "2",
            "--pair-window",
            "5m",
            "--trusted-proxies",
            "10.0.0.0/8, 192.0.2.1",
        ])
        .into_config()
        .unwrap();
        assert_eq!(
            (config.rate_limit, config.rate_burst, config.rate_strikes),
            (10, 20, 3)
        );
        assert_eq!(config.max_connections_per_ip, 4);
        assert_eq!(config.pair_attempts, 2);
        assert_eq!(config.pair_window, Duration::from_secs(300));
        assert!(config.trusted_proxies.contains("10.9.8.7".parse().unwrap()));
        assert!(
            config
                .trusted_proxies
                .contains("192.0.2.1".parse().unwrap())
        );

        let err = parse(&["--trusted-proxies", "10.0.0.0/40"])
            .into_config()
            .unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/40"), "{err}");
        assert!(parse(&["--rate-burst", "0"]).into_config().is_err());

        let f = FileConfig::parse(
            "rate_limit = 7\nrate_burst = 8\nrate_strikes = 9\nmax_connections_per_ip = 0\n\
             pair_attempts = 0\npair_window = \"30s\"\ntrusted_proxies = [\"127.0.0.1\", \"::1\"]",
        )
        .unwrap();
        assert_eq!(f.rate_limit, Some(7));
        assert_eq!(f.rate_strikes, Some(9));
        assert_eq!(f.max_connections_per_ip, Some(0));
        assert_eq!(
            f.trusted_proxies.unwrap().into_vec(),
            vec!["127.0.0.1", "::1"]
        );
    }

    #[test]
    fn code_ttl_comes_from_the_flag_the_file_or_the_default() {
        assert_eq!(
            parse(&[]).into_config().unwrap().code_ttl,
            Duration::from_secs(600)
        );
        let config = parse(&["--code-ttl", "90s"]).into_config().unwrap();
        assert_eq!(config.code_ttl, Duration::from_secs(90));
        let config = parse(&["--code-ttl", "0"]).into_config().unwrap();
        assert_eq!(config.code_ttl, Duration::ZERO);
        let err = parse(&["--code-ttl", "5ms"]).into_config().unwrap_err();
        assert!(err.to_string().contains("PROXIM_CODE_TTL"), "{err}");
        let f = FileConfig::parse("code_ttl = \"2m\"").unwrap();
        assert_eq!(
            f.code_ttl.unwrap().into_duration("code_ttl").unwrap(),
            Duration::from_secs(120)
        );
        let f = FileConfig::parse("code_ttl = 0").unwrap();
        assert_eq!(
            f.code_ttl.unwrap().into_duration("code_ttl").unwrap(),
            Duration::ZERO
        );
    }

    #[test]
    fn file_parse_accepts_both_list_forms() {
        let f = FileConfig::parse("stun_urls = \"stun:a, stun:b\"").unwrap();
        assert_eq!(f.stun_urls.unwrap().into_vec(), vec!["stun:a", "stun:b"]);
        let f = FileConfig::parse("stun_urls = [\"stun:a\"]").unwrap();
        assert_eq!(f.stun_urls.unwrap().into_vec(), vec!["stun:a"]);
    }

    #[test]
    fn env_style_lists_are_split_trimmed_and_deduplicated() {
        let ice = ice(&[
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
        ])
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
        for blank in [&[][..], &[("STUN_URLS", "  ")]] {
            assert!(ice(blank).unwrap().ice_servers_for(&id()).is_empty());
        }
        let stun = IceConfig::stun_only(vec!["stun:198.18.0.1"]).unwrap();
        assert_eq!(stun.ice_servers_for(&id()).len(), 1);
        assert!(!stun.has_turn());
    }

    #[test]
    fn bad_url_names_the_url_and_the_reason() {
        let err = ice(&[("STUN_URLS", "stun:ok.example,stun://bad.example")]).unwrap_err();
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

        let err = ice(&[
            ("TURN_URLS", "turn:relay.example:99999"),
            ("TURN_USERNAME", "u"),
            ("TURN_PASSWORD", "p"),
        ])
        .unwrap_err();
        assert!(
            err.to_string().contains("turn:relay.example:99999"),
            "{err}"
        );
        assert!(err.to_string().contains("bad port"), "{err}");
    }

    #[test]
    fn urls_must_be_in_the_right_list() {
        let err = ice(&[("STUN_URLS", "turn:relay.example")]).unwrap_err();
        assert!(matches!(err, ConfigError::WrongScheme { .. }), "{err}");
        assert!(err.to_string().contains("turn:relay.example"));
        let err = ice(&[
            ("TURN_URLS", "stun:stun.example"),
            ("TURN_USERNAME", "u"),
            ("TURN_PASSWORD", "p"),
        ])
        .unwrap_err();
        assert!(matches!(err, ConfigError::WrongScheme { .. }), "{err}");
    }

    #[test]
    fn turn_needs_username_and_password() {
        let err = ice(&[("TURN_URLS", "turn:relay.example")]).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::TurnWithoutCredentials {
                missing: "TURN_USERNAME"
            }
        ));
        let err = ice(&[
            ("TURN_URLS", "turn:relay.example"),
            ("TURN_USERNAME", "u"),
            ("TURN_PASSWORD", " "),
        ])
        .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::TurnWithoutCredentials {
                missing: "TURN_PASSWORD"
            }
        ));
        // Credentials without TURN URLs are harmless.
        ice(&[("TURN_USERNAME", "u"), ("TURN_PASSWORD", "p")]).unwrap();
    }

    #[test]
    fn turn_secret_mistakes_are_refused_clearly() {
        let rest = [
            ("TURN_URLS", "turn:198.18.0.2"),
            ("TURN_SECRET", "proxim-test-secret"),
        ];
        let with_rest = |extra: &[(&'static str, &'static str)]| {
            rest.iter().chain(extra).copied().collect::<Vec<_>>()
        };
        let cases = [
            (
                with_rest(&[("TURN_USERNAME", "alice")]),
                "TURN_SECRET cannot be combined",
            ),
            (
                with_rest(&[("TURN_PASSWORD", "p")]),
                "TURN_SECRET cannot be combined",
            ),
            (with_rest(&[("TURN_TTL", "0")]), "invalid TURN_TTL"),
            (with_rest(&[("TURN_TTL", "500ms")]), "invalid TURN_TTL"),
            (
                vec![("TURN_URLS", "turn:x"), ("TURN_SECRET", "  ")],
                "TURN_SECRET: it is set but empty",
            ),
            // Without any credential source TURN stays refused; the message names both ways.
            (vec![("TURN_URLS", "turn:x")], "TURN_SECRET"),
        ];
        for (vars, expected) in cases {
            let err = ice(&vars).unwrap_err();
            assert!(err.to_string().contains(expected), "{vars:?}: {err}");
            if expected.contains("cannot be combined") {
                assert!(matches!(err, ConfigError::ConflictingTurnCredentials));
            }
        }
        assert!(env_style(&with_rest(&[("TURN_TTL", "soon")])).is_err());
    }

    #[test]
    fn monitoring_settings_come_from_flags_and_the_file() {
        let config = parse(&[]).into_config().unwrap();
        assert_eq!(config.admin_bind, Some(DEFAULT_ADMIN_BIND));
        assert_eq!(config.admin_token, None);
        assert!(!config.expose_device_names);
        let mut args = env_style(&[
            ("PROXIM_ADMIN_TOKEN", "t0ken-value"),
            ("PROXIM_ADMIN_BIND", "none"),
        ])
        .unwrap();
        args.expose_device_names = parse(&["--expose-device-names"]).expose_device_names;
        assert!(!format!("{args:?}").contains("t0ken-value"));
        let config = args.into_config().unwrap();
        assert!(config.admin_token.unwrap().matches("t0ken-value"));
        assert_eq!(config.admin_bind, None);
        assert!(config.expose_device_names);
        let config = parse(&["--admin-bind", "127.0.0.1:0"])
            .into_config()
            .unwrap();
        assert_eq!(config.admin_bind, Some("127.0.0.1:0".parse().unwrap()));
        assert!(ServeArgs::try_parse_from(["--admin-bind", "loopback"]).is_err());
        let f = FileConfig::parse("admin_bind = \"off\"\nexpose_device_names = true").unwrap();
        assert_eq!(f.admin_bind, Some(AdminBind::Off));
        assert!(FileConfig::parse("admin_bind = \"nowhere\"").is_err());
    }

    #[test]
    fn ice_servers_merge_with_stun_urls_and_bad_json_stops_startup() {
        let ice = ice(&[
            ("STUN_URLS", "stun:198.18.0.1"),
            (
                "ICE_SERVERS",
                r#"[{"urls": ["stun:198.18.0.2", "stun:198.18.0.1"]}]"#,
            ),
        ])
        .unwrap();
        assert_eq!(ice.stun_urls().len(), 2);
        let err = ice_err(&[("ICE_SERVERS", "[{\"urls\": 5}]")]);
        assert!(err.contains("ICE_SERVERS"), "{err}");
    }

    fn ice_err(vars: &[(&str, &str)]) -> String {
        ice(vars).unwrap_err().to_string()
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
