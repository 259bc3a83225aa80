//! Server configuration: listen address, ICE servers handed to clients, timeouts and limits.
//!
//! Everything is validated when it is built ("parse, don't validate"): a [`ServerConfig`] that
//! passed [`ServerConfig::validate`] and an [`IceConfig`] that exists are usable as they are.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use proxim_protocol::ice::{IceScheme, IceUrl};
use proxim_protocol::{ConnectionId, IceServer, MAX_FRAME_BYTES};

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
    /// How long a disconnected desktop's code stays reserved for its device id. Default 5 min.
    pub code_reservation: Duration,
    /// Largest accepted text frame, in bytes. Default and maximum:
    /// [`proxim_protocol::MAX_FRAME_BYTES`].
    pub max_frame_bytes: usize,
    /// How long [`crate::RunningServer::shutdown`] waits for connections to close. Default 5 s.
    pub shutdown_grace: Duration,
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
            code_reservation: Duration::from_secs(5 * 60),
            max_frame_bytes: MAX_FRAME_BYTES,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// The port the server listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 8787;

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
        if self.max_frame_bytes == 0 || self.max_frame_bytes > MAX_FRAME_BYTES {
            return invalid(
                "max frame bytes",
                format!(
                    "{} is not between 1 and {MAX_FRAME_BYTES}",
                    self.max_frame_bytes
                ),
            );
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
    /// TURN URLs were given without both a username and a password.
    #[error("TURN_URLS are set but {missing} is missing: a TURN relay needs credentials")]
    TurnWithoutCredentials {
        /// Which of `TURN_USERNAME`/`TURN_PASSWORD` is missing.
        missing: &'static str,
    },
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
/// [`IceConfig::ice_servers_for`], called at every `welcome`: today that is the same list for
/// everyone, but the per-connection call is where TURN REST credentials (`TURN_SECRET`, an
/// HMAC over an expiring username) will be minted for each client.
///
/// `Debug` never shows the TURN password.
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
    // A later issue adds `Rest { secret, ttl }`: per-client `<expiry>:<connection id>` usernames
    // with `base64(HMAC-SHA1(secret, username))` passwords, minted in `ice_servers_for`.
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
        let turn = if turn_urls.is_empty() {
            None
        } else {
            let username = non_blank(turn_username).ok_or(ConfigError::TurnWithoutCredentials {
                missing: TURN_USERNAME,
            })?;
            let password = non_blank(turn_password).ok_or(ConfigError::TurnWithoutCredentials {
                missing: TURN_PASSWORD,
            })?;
            Some(TurnConfig {
                urls: turn_urls,
                credentials: TurnCredentials::Static { username, password },
            })
        };
        Ok(IceConfig { stun, turn })
    }

    /// Read `STUN_URLS`, `TURN_URLS` (comma-separated), `TURN_USERNAME` and `TURN_PASSWORD`
    /// from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`IceConfig::from_env`], reading variables through `lookup` (for tests and for
    /// other sources of environment-style settings).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let stun = split_list(lookup(STUN_URLS).as_deref().unwrap_or(""));
        let turn = split_list(lookup(TURN_URLS).as_deref().unwrap_or(""));
        Self::new(&stun, &turn, lookup(TURN_USERNAME), lookup(TURN_PASSWORD))
    }

    /// The ICE servers for one client, sent in its `welcome`: one entry for all STUN URLs and
    /// one for the TURN URLs with their credentials. Empty when nothing is configured.
    pub fn ice_servers_for(&self, connection_id: &ConnectionId) -> Vec<IceServer> {
        // Static credentials are the same for everyone; per-client REST credentials will use
        // the connection id here.
        let _ = connection_id;
        let mut servers = Vec::with_capacity(2);
        if !self.stun.is_empty() {
            servers.push(IceServer {
                urls: self.stun.iter().map(ToString::to_string).collect(),
                username: None,
                credential: None,
            });
        }
        if let Some(turn) = &self.turn {
            let TurnCredentials::Static { username, password } = &turn.credentials;
            servers.push(IceServer {
                urls: turn.urls.iter().map(ToString::to_string).collect(),
                username: Some(username.clone()),
                credential: Some(password.clone()),
            });
        }
        servers
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
        if self.stun.is_empty() && self.turn.is_none() {
            tracing::warn!(
                "no STUN server configured either: clients get an empty ICE server list and \
                 use host candidates only (same network)"
            );
        }
        tracing::info!(
            stun = ?self.stun_urls().iter().map(ToString::to_string).collect::<Vec<_>>(),
            turn = ?self.turn_urls().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "ICE servers"
        );
    }

    /// The configuration as JSON for monitoring, with credentials replaced by
    /// [`REDACTED`].
    pub fn redacted_json(&self) -> serde_json::Value {
        let turn = self.turn.as_ref().map(|turn| {
            let TurnCredentials::Static { username, .. } = &turn.credentials;
            serde_json::json!({
                "urls": turn.urls.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "credentials": "static",
                "username": username,
                "password": REDACTED,
            })
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
        let TurnCredentials::Static { username, .. } = &self.credentials;
        f.debug_struct("TurnConfig")
            .field(
                "urls",
                &self
                    .urls
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
            .field("username", username)
            .field("password", &REDACTED)
            .finish()
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
        c.max_frame_bytes = MAX_FRAME_BYTES + 1;
        assert!(c.validate().is_err());
        let mut c = ServerConfig::loopback();
        c.prompt_timeout = Duration::ZERO;
        assert!(c.validate().is_err());
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
