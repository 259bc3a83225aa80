//! ICE servers handed to clients in `welcome` and `/api/turn/config`: the STUN and TURN URLs,
//! how clients authenticate to the TURN relay (static credentials or TURN REST), further
//! servers from `ICE_SERVERS` (JSON in the `RTCConfiguration` shape), and the warnings an
//! operator sees when clients will only get STUN or host candidates.

use std::fmt;
use std::time::{Duration, SystemTime};

use proxim_protocol::ice::{IceScheme, IceUrl};
use proxim_protocol::{ConnectionId, IceServer};

use crate::config::{ConfigError, REDACTED};
use crate::turn_rest::{DEFAULT_TURN_TTL, mint_turn_credentials};

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
    /// `ICE_SERVERS` entries with credentials, handed out as given after the others.
    listed: Vec<ListedServer>,
}

/// One `ICE_SERVERS` entry that carries credentials (those without join the STUN URLs).
#[derive(Clone, PartialEq, Eq)]
struct ListedServer {
    urls: Vec<IceUrl>,
    username: String,
    credential: String,
}

/// One `RTCIceServer` of `ICE_SERVERS`, as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RtcIceServer {
    urls: OneOrMany,
    username: Option<String>,
    credential: Option<String>,
}

/// `urls`: one URL or a list, as `RTCIceServer` allows.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
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

impl IceConfig {
    /// No ICE servers: clients use host candidates only.
    pub fn none() -> Self {
        IceConfig {
            stun: Vec::new(),
            turn: None,
            listed: Vec::new(),
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
        let stun = parse_list(UrlList::Stun, stun_urls.iter().map(AsRef::as_ref))?;
        let turn_urls = parse_list(UrlList::Turn, turn_urls.iter().map(AsRef::as_ref))?;
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
        Ok(IceConfig {
            stun,
            turn,
            listed: Vec::new(),
        })
    }

    /// Merge `ICE_SERVERS`: a JSON array of `RTCIceServer` objects (`urls` a string or an
    /// array, optional `username` and `credential`), as in a browser's `RTCConfiguration`.
    /// Entries without credentials must be STUN and join the STUN URLs (repeats dropped);
    /// entries with both a username and a credential are handed out as they are, after the
    /// configured TURN relay. A blank value adds nothing; anything malformed is an error
    /// naming `ICE_SERVERS`.
    pub fn merge_ice_servers_json(mut self, json: &str) -> Result<Self, ConfigError> {
        if json.trim().is_empty() {
            return Ok(self);
        }
        let invalid = |why: String| ConfigError::Invalid {
            what: ICE_SERVERS,
            why,
        };
        let servers: Vec<RtcIceServer> = serde_json::from_str(json).map_err(|e| {
            invalid(format!(
                "not a JSON array of RTCIceServer objects ({{\"urls\": …, \"username\": …, \
                 \"credential\": …}}): {e}"
            ))
        })?;
        for (index, server) in servers.into_iter().enumerate() {
            let urls = match server.urls {
                OneOrMany::One(url) => vec![url],
                OneOrMany::Many(urls) => urls,
            };
            let mut parsed = Vec::with_capacity(urls.len());
            for url in urls.iter().map(|u| u.trim()).filter(|u| !u.is_empty()) {
                let url = IceUrl::parse(url).map_err(|e| invalid(format!("entry {index}: {e}")))?;
                if !parsed.contains(&url) {
                    parsed.push(url);
                }
            }
            if parsed.is_empty() {
                return Err(invalid(format!("entry {index} has no URL")));
            }
            match (non_blank(server.username), non_blank(server.credential)) {
                (Some(username), Some(credential)) => self.listed.push(ListedServer {
                    urls: parsed,
                    username,
                    credential,
                }),
                (None, None) => {
                    if let Some(turn) = parsed.iter().find(|u| is_turn(u)) {
                        return Err(invalid(format!(
                            "entry {index}: `{turn}` is a TURN URL without a username and \
                             credential"
                        )));
                    }
                    for url in parsed {
                        if !self.stun.contains(&url) {
                            self.stun.push(url);
                        }
                    }
                }
                _ => {
                    return Err(invalid(format!(
                        "entry {index} has a username or a credential, not both"
                    )));
                }
            }
        }
        Ok(self)
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
                urls: url_strings(&turn.urls),
                username: Some(username),
                credential: Some(credential),
            });
        }
        servers.extend(self.listed.iter().map(|listed| IceServer {
            urls: url_strings(&listed.urls),
            username: Some(listed.username.clone()),
            credential: Some(listed.credential.clone()),
        }));
        servers
    }

    /// `"rest"`, `"static"`, or `None` without TURN.
    pub fn turn_credentials_kind(&self) -> Option<&'static str> {
        self.turn.as_ref().map(|t| match t.credentials {
            TurnCredentials::Static { .. } => "static",
            TurnCredentials::Rest { .. } => "rest",
        })
    }

    /// How long minted TURN REST credentials are valid; `None` without a TURN secret.
    pub fn turn_rest_ttl(&self) -> Option<Duration> {
        match self.turn.as_ref().map(|t| &t.credentials) {
            Some(TurnCredentials::Rest { ttl, .. }) => Some(*ttl),
            _ => None,
        }
    }

    /// The STUN URLs.
    pub fn stun_urls(&self) -> &[IceUrl] {
        &self.stun
    }

    /// The TURN URLs (empty without TURN).
    pub fn turn_urls(&self) -> &[IceUrl] {
        self.turn.as_ref().map_or(&[], |t| &t.urls)
    }

    /// Whether a TURN relay is configured (`TURN_URLS`, or a TURN URL in `ICE_SERVERS`).
    pub fn has_turn(&self) -> bool {
        self.turn.is_some() || self.listed.iter().any(|l| l.urls.iter().any(is_turn))
    }

    /// Log what clients will be able to do with this configuration: a warning without TURN
    /// (symmetric NATs will fail) and another without STUN (host candidates only).
    pub fn log_capabilities(&self) {
        if !self.has_turn() {
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
        if self.stun.is_empty() && self.turn.is_none() && self.listed.is_empty() {
            tracing::warn!(
                "no STUN server configured either: clients get an empty ICE server list and \
                 use host candidates only (same network)"
            );
        }
        tracing::info!(
            stun = ?url_strings(self.stun_urls()),
            turn = ?url_strings(self.turn_urls()),
            turn_credentials = self.turn_credentials_kind().unwrap_or("none"),
            listed = self.listed.len(),
            "ICE servers"
        );
    }

    /// The configuration as JSON for monitoring, with credentials replaced by
    /// [`REDACTED`].
    pub fn redacted_json(&self) -> serde_json::Value {
        let turn = self.turn.as_ref().map(|turn| {
            let urls = url_strings(&turn.urls);
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
        let listed: Vec<serde_json::Value> = self
            .listed
            .iter()
            .map(|listed| {
                serde_json::json!({
                    "urls": url_strings(&listed.urls),
                    "username": listed.username,
                    "credential": REDACTED,
                })
            })
            .collect();
        serde_json::json!({
            "stun_urls": url_strings(&self.stun),
            "turn": turn,
            "ice_servers": listed,
        })
    }
}

impl fmt::Debug for IceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceConfig")
            .field("stun", &url_strings(&self.stun))
            .field("turn", &self.turn)
            .field("listed", &self.listed)
            .finish()
    }
}

impl fmt::Debug for ListedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListedServer")
            .field("urls", &url_strings(&self.urls))
            .field("username", &self.username)
            .field("credential", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("TurnConfig");
        d.field("urls", &url_strings(&self.urls));
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
/// Environment variable: more ICE servers, a JSON array of `RTCIceServer` objects.
pub const ICE_SERVERS: &str = "ICE_SERVERS";

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

/// Which ICE URL list a setting holds.
#[derive(Clone, Copy)]
enum UrlList {
    /// `STUN_URLS`: `stun:`/`stuns:` URLs.
    Stun,
    /// `TURN_URLS`: `turn:`/`turns:` URLs.
    Turn,
}

impl UrlList {
    /// The setting, as named in errors.
    fn setting(self) -> &'static str {
        match self {
            UrlList::Stun => STUN_URLS,
            UrlList::Turn => TURN_URLS,
        }
    }

    /// The schemes the list accepts, as named in errors.
    fn expected(self) -> &'static str {
        match self {
            UrlList::Stun => "stun:/stuns:",
            UrlList::Turn => "turn:/turns:",
        }
    }
}

/// Parse the non-blank `urls` of `list`, dropping repeats.
fn parse_list<'a>(
    list: UrlList,
    urls: impl Iterator<Item = &'a str>,
) -> Result<Vec<IceUrl>, ConfigError> {
    let mut parsed = Vec::new();
    for url in urls.map(str::trim).filter(|u| !u.is_empty()) {
        let ice_url = IceUrl::parse(url).map_err(|source| ConfigError::BadIceUrl {
            list: list.setting(),
            source,
        })?;
        if is_turn(&ice_url) != matches!(list, UrlList::Turn) {
            return Err(ConfigError::WrongScheme {
                list: list.setting(),
                url: url.to_owned(),
                expected: list.expected(),
            });
        }
        if !parsed.contains(&ice_url) {
            parsed.push(ice_url);
        }
    }
    Ok(parsed)
}

/// Whether `url` is a `turn:`/`turns:` URL.
fn is_turn(url: &IceUrl) -> bool {
    matches!(url.scheme, IceScheme::Turn | IceScheme::Turns)
}

/// The URLs as text, for `welcome`, logs, monitoring and `Debug`.
fn url_strings(urls: &[IceUrl]) -> Vec<String> {
    urls.iter().map(ToString::to_string).collect()
}

fn non_blank(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::ServerConfig;
    use crate::config::assert_redacted;
    use crate::turn_rest::turn_rest_password;

    fn id() -> ConnectionId {
        ConnectionId::new("0123456789abcdef0123456789abcdef").unwrap()
    }

    /// TURN REST settings: one relay URL, the test secret, and `ttl`.
    fn rest(stun: &[&str], ttl: Option<Duration>, realm: Option<&str>) -> IceConfig {
        let auth = TurnAuth {
            secret: Some("proxim-test-secret".into()),
            ttl,
            realm: realm.map(str::to_owned),
            ..TurnAuth::default()
        };
        IceConfig::with_turn_auth(stun, &["turn:198.18.0.2"], auth).unwrap()
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
        assert_redacted(&ice, &["s3cret"]);
        let json = ice.redacted_json().to_string();
        assert!(!json.contains("s3cret"), "{json}");
        assert!(json.contains("alice"));
        let config = ServerConfig {
            ice,
            ..ServerConfig::loopback()
        };
        assert_redacted(&config, &["s3cret"]);
    }

    #[test]
    fn rest_credentials_are_minted_per_client_with_expiry_now_plus_ttl() {
        let ice = rest(&["stun:198.18.0.1"], Some(Duration::from_secs(600)), None);
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
    fn secret_is_never_shown() {
        let ice = rest(&[], None, Some("relay.example"));
        assert_redacted(&ice, &["proxim-test-secret"]);
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
        assert_redacted(&auth, &["proxim-test-secret", "pw-123"]);
    }

    #[test]
    fn ice_servers_json_merges_with_the_url_lists() {
        let ice = IceConfig::stun_only(vec!["stun:198.18.0.1"])
            .unwrap()
            .merge_ice_servers_json(
                r#"[{"urls": "stun:198.18.0.1"}, {"urls": ["stun:198.18.0.5"]},
                    {"urls": ["turn:198.18.0.6?transport=tcp"], "username": "u", "credential": "c0"}]"#,
            )
            .unwrap();
        assert_eq!(ice.stun_urls().len(), 2, "repeats are dropped");
        assert!(ice.has_turn());
        let servers = ice.ice_servers_at(&id(), SystemTime::now(), None);
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[1].username.as_deref(), Some("u"));
        assert_eq!(servers[1].credential.as_deref(), Some("c0"));
        assert_redacted(&ice, &["c0"]);
        assert!(!ice.redacted_json().to_string().contains("c0"));
        assert_eq!(
            IceConfig::none().merge_ice_servers_json(" ").unwrap(),
            IceConfig::none()
        );
    }

    #[test]
    fn bad_ice_servers_json_names_the_setting() {
        for bad in [
            "{",
            r#"{"urls": "stun:a"}"#,
            r#"[{"url": "stun:a"}]"#,
            r#"[{"urls": []}]"#,
            r#"[{"urls": "stun://bad"}]"#,
            r#"[{"urls": "turn:relay"}]"#,
            r#"[{"urls": "turn:relay", "username": "u"}]"#,
        ] {
            let err = IceConfig::none().merge_ice_servers_json(bad).unwrap_err();
            assert!(err.to_string().contains(ICE_SERVERS), "{bad}: {err}");
        }
    }

    #[test]
    fn stun_urls_for_hosts() {
        let cases = [
            ("198.18.0.9", Some("stun:198.18.0.9:3478")),
            ("proxim.example.net", Some("stun:proxim.example.net:3478")),
            ("2001:db8::1", Some("stun:[2001:db8::1]:3478")),
            ("[2001:db8::1]", Some("stun:[2001:db8::1]:3478")),
            ("", None),
            ("a b", None),
            ("host/path", None),
            ("h:1:2", None),
            ("[h:1]", None),
            ("[::1", None),
        ];
        for (host, url) in cases {
            let got = stun_url_for_host(host, 3478).map(|u| u.to_string());
            assert_eq!(got.as_deref(), url, "{host:?}");
        }
    }
}
