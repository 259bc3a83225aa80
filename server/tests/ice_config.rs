//! ICE configuration through the public API: the `serve` settings (flags, or the environment
//! variables they stand for), and the messages an operator sees when something is wrong.

use proxim_protocol::ConnectionId;
use proxim_server::cli::ServeArgs;
use proxim_server::{ConfigError, IceConfig, Server, ServerConfig, ServerError};

/// The ICE configuration `proxim serve` builds from `flags`.
fn ice(flags: &[&str]) -> Result<IceConfig, ConfigError> {
    let args = ServeArgs::try_parse_from(flags).expect("flags parse");
    args.into_config().map(|config| config.ice)
}

fn connection() -> ConnectionId {
    ConnectionId::new("abcdefabcdefabcdefabcdefabcdef01").expect("valid id")
}

#[test]
fn comma_separated_settings_become_one_stun_and_one_turn_entry() {
    let ice = ice(&[
        "--stun-urls=stun:198.18.0.1:3478,stun:198.18.0.5",
        "--turn-urls=turn:198.18.0.2:3478?transport=udp, turns:relay.example",
        "--turn-username=proxim",
        "--turn-password=s3cret",
    ])
    .expect("valid config");
    assert_stun_then_turn(
        &ice,
        &["stun:198.18.0.1:3478", "stun:198.18.0.5:3478"],
        &["turn:198.18.0.2:3478", "turns:relay.example:5349"],
        ("proxim", "s3cret"),
    );
}

/// `ice` hands every client two entries: the `stun` URLs without credentials, then the `turn`
/// URLs with `(username, credential)`; neither `Debug` shows the credential.
fn assert_stun_then_turn(ice: &IceConfig, stun: &[&str], turn: &[&str], creds: (&str, &str)) {
    let servers = ice.ice_servers_for(&connection());
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0].urls, stun);
    assert!(servers[0].username.is_none() && servers[0].credential.is_none());
    assert_eq!(servers[1].urls, turn);
    assert_eq!(servers[1].username.as_deref(), Some(creds.0));
    assert_eq!(servers[1].credential.as_deref(), Some(creds.1));
    assert!(!format!("{ice:?}").contains(creds.1));
    assert!(!format!("{servers:?}").contains(creds.1));
}

#[test]
fn stun_only_and_nothing_at_all() {
    let stun = IceConfig::stun_only(vec!["stun:198.18.0.1"]).expect("valid");
    assert_eq!(stun.ice_servers_for(&connection()).len(), 1);
    assert!(!stun.has_turn());
    let ice = ice(&[]).expect("valid");
    assert!(ice.ice_servers_for(&connection()).is_empty());
}

#[test]
fn a_bad_url_is_named_with_the_reason() {
    let err = ice(&["--stun-urls=stun:198.18.0.1,stun:[::1"]).expect_err("bad url");
    let text = err.to_string();
    assert!(text.contains("stun:[::1"), "{text}");
    assert!(text.contains("unclosed `[`"), "{text}");

    let err = IceConfig::stun_only(vec!["http://stun.example"]).expect_err("bad scheme");
    assert!(err.to_string().contains("http://stun.example"), "{err}");
}

#[test]
fn turn_without_credentials_is_refused() {
    let err = ice(&["--turn-urls=turn:198.18.0.2"]).expect_err("no creds");
    assert!(
        matches!(err, ConfigError::TurnWithoutCredentials { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("TURN_USERNAME"), "{err}");
    let args = ServeArgs {
        turn_urls: Some("turn:198.18.0.2".into()),
        turn_password: Some("p".into()),
        ..ServeArgs::default()
    };
    let err = args.into_config().expect_err("no username");
    assert!(err.to_string().contains("TURN_USERNAME"), "{err}");
}

#[test]
fn serve_args_reject_a_turn_url_in_the_stun_list() {
    let args = ServeArgs {
        stun_urls: Some("turn:198.18.0.2".into()),
        ..ServeArgs::default()
    };
    let err = args.into_config().expect_err("wrong list");
    assert!(err.to_string().contains("turn:198.18.0.2"), "{err}");
    assert!(err.to_string().contains("stun:/stuns:"), "{err}");
}

#[tokio::test]
async fn start_refuses_an_invalid_config() {
    let mut config = ServerConfig::loopback();
    config.heartbeat_timeout = config.heartbeat_interval / 2;
    let err = Server::start(config).await.expect_err("invalid");
    assert!(matches!(err, ServerError::Config(_)), "{err}");
}

#[test]
fn ice_servers_json_is_merged_with_the_url_lists() {
    let ice = ice(&[
        "--stun-urls=stun:198.18.0.1",
        r#"--ice-servers=[{"urls": "stun:198.18.0.1"}, {"urls": ["stun:198.18.0.7"]},
            {"urls": ["turns:relay.example"], "username": "web", "credential": "c-9"}]"#,
    ])
    .expect("valid config");
    assert_stun_then_turn(
        &ice,
        &["stun:198.18.0.1:3478", "stun:198.18.0.7:3478"],
        &["turns:relay.example:5349"],
        ("web", "c-9"),
    );
    assert!(ice.has_turn());
}

#[test]
fn a_bad_ice_servers_value_stops_startup_naming_it() {
    for bad in [
        "stun:198.18.0.1",
        r#"[{"urls": "stun:[::1"}]"#,
        r#"[{"urls": "turn:198.18.0.2"}]"#,
        r#"[{"urls": "stun:198.18.0.1", "password": "x"}]"#,
    ] {
        let err = ice(&[&format!("--ice-servers={bad}")]).expect_err(bad);
        assert!(err.to_string().contains("ICE_SERVERS"), "{bad}: {err}");
    }
}
