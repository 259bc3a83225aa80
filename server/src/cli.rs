//! Command-line arguments of `proxim serve`, with environment variables and a TOML file.
//!
//! Precedence: a flag (or its environment variable) beats the file, the file beats the
//! defaults. The file uses the flags' names with `_`:
//!
//! ```toml
//! bind = "0.0.0.0:8787"
//! stun_urls = ["stun:stun.example.net:3478"]   # or one comma-separated string
//! turn_urls = "turn:relay.example.net:3478"
//! turn_username = "proxim"
//! turn_password = "…"
//! heartbeat_interval = "15s"
//! heartbeat_timeout = "45s"
//! prompt_timeout = "60s"
//! send_queue = 256
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, IceConfig, ServerConfig, parse_duration, split_list};

/// Arguments of the `serve` command.
#[derive(Debug, Clone, Default, clap::Args)]
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
    /// TOML file with the same settings (flags and environment variables win).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How often clients must ping, e.g. `15s` [default: 15s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Silence after which a connection is dropped, e.g. `45s` [default: 45s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub heartbeat_timeout: Option<Duration>,
    /// How long a desktop has to answer a pairing prompt, e.g. `60s` [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub prompt_timeout: Option<Duration>,
    /// Messages that may wait for one client before it is dropped as a slow reader
    /// [default: 256].
    #[arg(long, value_name = "MESSAGES")]
    pub send_queue: Option<usize>,
}

impl ServeArgs {
    /// Merge flags, environment, the config file and the defaults into a validated
    /// [`ServerConfig`].
    pub fn into_config(self) -> Result<ServerConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        let defaults = ServerConfig::default();
        let stun = self
            .stun_urls
            .map(|s| split_list(&s))
            .or(file.stun_urls.map(UrlList::into_vec))
            .unwrap_or_default();
        let turn = self
            .turn_urls
            .map(|s| split_list(&s))
            .or(file.turn_urls.map(UrlList::into_vec))
            .unwrap_or_default();
        let ice = IceConfig::new(
            &stun,
            &turn,
            self.turn_username.or(file.turn_username),
            self.turn_password.or(file.turn_password),
        )?;
        let file_duration = |what: &'static str, value: Option<DurationValue>| {
            value.map(|v| v.into_duration(what)).transpose()
        };
        let config = ServerConfig {
            bind: self.bind.or(file.bind).unwrap_or(defaults.bind),
            ice,
            heartbeat_interval: match self.heartbeat_interval {
                Some(d) => d,
                None => file_duration("heartbeat_interval", file.heartbeat_interval)?
                    .unwrap_or(defaults.heartbeat_interval),
            },
            heartbeat_timeout: match self.heartbeat_timeout {
                Some(d) => d,
                None => file_duration("heartbeat_timeout", file.heartbeat_timeout)?
                    .unwrap_or(defaults.heartbeat_timeout),
            },
            prompt_timeout: match self.prompt_timeout {
                Some(d) => d,
                None => file_duration("prompt_timeout", file.prompt_timeout)?
                    .unwrap_or(defaults.prompt_timeout),
            },
            send_queue_capacity: self
                .send_queue
                .or(file.send_queue)
                .unwrap_or(defaults.send_queue_capacity),
            ..defaults
        };
        config.validate()?;
        Ok(config)
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
    heartbeat_interval: Option<DurationValue>,
    heartbeat_timeout: Option<DurationValue>,
    prompt_timeout: Option<DurationValue>,
    send_queue: Option<usize>,
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

/// A URL list: an array of strings or one comma-separated string.
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
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> ServeArgs {
        let mut argv = vec!["proxim-serve"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().serve
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
        assert_eq!(config.bind, "127.0.0.1:9000".parse().unwrap());
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
    fn file_parse_accepts_both_list_forms() {
        let f = FileConfig::parse("stun_urls = \"stun:a, stun:b\"").unwrap();
        assert_eq!(f.stun_urls.unwrap().into_vec(), vec!["stun:a", "stun:b"]);
        let f = FileConfig::parse("stun_urls = [\"stun:a\"]").unwrap();
        assert_eq!(f.stun_urls.unwrap().into_vec(), vec!["stun:a"]);
    }
}
