//! Server events against a real server on port 0: the JSON-lines file sink (what one pairing
//! produces, the envelope, no secrets), clients' `connection_report`s, and the sinks' state in
//! `/api/events` and `/metrics`. RabbitMQ has its own file (`events_amqp.rs`).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{WAIT, get_json, http_get, start_server};
use proxim_protocol::{ClientMessage, ConnectionOutcome, ConnectionReport, PathKind, ReportToken};
use proxim_server::{EventSinkSpec, IceConfig, TurnAuth};
use proxim_testkit::raw_client::{RawClient, accepted_pair, pending_pair_with};

const TURN_SECRET: &str = "turn-rest-secret-never-in-events";

/// Every line of the JSON-lines file, parsed.
fn read_events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn of_type<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// Wait until the file holds an event of type `kind`.
async fn wait_for(path: &Path, kind: &str) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let events = read_events(path);
        if !of_type(&events, kind).is_empty() {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{kind}` event in {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn report(session: &proxim_protocol::SessionId, outcome: ConnectionOutcome) -> ClientMessage {
    ClientMessage::ConnectionReport {
        session: session.clone(),
        outcome,
        report: ConnectionReport {
            path: Some(PathKind::Relay),
            relay_protocol: Some(proxim_protocol::RelayProtocol::Udp),
            time_to_connect_ms: Some(321),
            bytes_sent: (outcome == ConnectionOutcome::Closed).then_some(4096),
            failure: (outcome == ConnectionOutcome::Failed)
                .then(|| ReportToken::new("ice_failed").unwrap()),
            ..ConnectionReport::default()
        },
    }
}

#[tokio::test]
async fn a_pairing_and_its_reports_become_json_lines_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let server = start_server(|c| {
        c.events = vec![EventSinkSpec::File(path.clone())];
        c.ice = IceConfig::with_turn_auth(
            &["stun:198.18.0.1"],
            &["turn:198.18.0.2"],
            TurnAuth {
                secret: Some(TURN_SECRET.into()),
                ..TurnAuth::default()
            },
        )
        .unwrap();
    })
    .await;
    let url = server.ws_url();
    let (mut desktop, mut phone, session) = accepted_pair(&url, WAIT).await;
    phone
        .send(&report(&session, ConnectionOutcome::Connected))
        .await;
    desktop
        .send(&report(&session, ConnectionOutcome::Connected))
        .await;
    phone.close().await;
    desktop
        .send(&report(&session, ConnectionOutcome::Closed))
        .await;
    // Someone else's session cannot be reported on.
    let mut stranger = RawClient::greeted(&url, WAIT).await;
    stranger
        .expect_refused(
            &report(&session, ConnectionOutcome::Failed),
            proxim_protocol::ErrorCode::NotSessionMember,
        )
        .await;
    let code = {
        let (_, phone2, _) = pending_pair_with(&url, WAIT, "desk-2", None).await;
        phone2.close().await;
        // The code of desk-2 was used above; a fresh registration shows a code we can look
        // for in the file.
        let mut desk3 = RawClient::greeted(&url, WAIT).await;
        desk3.register("desk-3", "Desk Three").await
    };
    wait_for(&path, "connection_closed").await;
    server.shutdown().await;

    let events = read_events(&path);
    let text = std::fs::read_to_string(&path).unwrap();
    for secret in [TURN_SECRET, code.as_str(), "Desk Three", "Phone"] {
        assert!(!text.contains(secret), "`{secret}` in the events:\n{text}");
    }
    // The envelope: version, increasing sequence numbers, a timestamp, the instance.
    let mut last_seq = 0;
    for event in &events {
        assert_eq!(event["v"], 1, "{event}");
        let seq = event["seq"].as_u64().unwrap();
        assert!(seq > last_seq, "{event}");
        last_seq = seq;
        let ts = event["ts"].as_str().unwrap();
        assert!(ts.len() == 24 && ts.ends_with('Z'), "{ts}");
        assert!(!event["instance"].as_str().unwrap().is_empty());
        assert_eq!(event["run"], events[0]["run"]);
    }
    assert_eq!(events.first().unwrap()["type"], "service_started");
    assert_eq!(events.first().unwrap()["turn"], "rest");
    // Stopping: said first, then every connection still open leaves with reason `shutdown`.
    let stopping = events
        .iter()
        .position(|e| e["type"] == "service_stopping")
        .expect("service_stopping");
    assert!(
        events[stopping + 1..]
            .iter()
            .all(|e| e["type"] == "session_ended" || e["reason"] == "shutdown")
    );
    for kind in [
        "client_connected",
        "desktop_registered",
        "pair_requested",
        "pair_accepted",
        "turn_credentials_minted",
        "session_ended",
        "client_disconnected",
    ] {
        assert!(!of_type(&events, kind).is_empty(), "no {kind}");
    }
    let established = of_type(&events, "connection_established");
    let reporters: Vec<&str> = established
        .iter()
        .map(|e| e["reporter"].as_str().unwrap())
        .collect();
    assert_eq!(reporters, ["phone", "desktop"]);
    assert_eq!(established[0]["session"], session.as_str());
    assert_eq!(established[0]["path"], "relay");
    assert_eq!(established[0]["relay_protocol"], "udp");
    assert_eq!(established[0]["time_to_connect_ms"], 321);
    let closed = of_type(&events, "connection_closed");
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0]["reporter"], "desktop");
    assert_eq!(closed[0]["bytes_sent"], 4096);
    assert!(of_type(&events, "connection_failed").is_empty());
    // Every connection that came and went says so, with its role.
    let roles: Vec<&str> = of_type(&events, "client_disconnected")
        .iter()
        .map(|e| e["role"].as_str().unwrap())
        .collect();
    assert!(
        roles.contains(&"phone") && roles.contains(&"desktop"),
        "{roles:?}"
    );
}

#[tokio::test]
async fn sinks_show_their_state_in_api_events_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let server = start_server(|c| c.events = vec![EventSinkSpec::File(path.clone())]).await;
    let (_desktop, _phone, _) = accepted_pair(&server.ws_url(), WAIT).await;
    wait_for(&path, "pair_accepted").await;
    let status = get_json(&server, "/api/events").await;
    let sink = &status["sinks"][0];
    assert_eq!(sink["kind"], "file", "{status}");
    assert_eq!(sink["state"], "up", "{status}");
    assert!(sink["delivered"].as_u64().unwrap() >= 5, "{status}");
    assert_eq!(sink["dropped"], 0, "{status}");
    let (_, metrics) = http_get(&server, "/metrics").await;
    let name = format!("file:{}", path.display());
    assert!(
        metrics.contains(&format!("proxim_event_sink_up{{sink=\"{name}\"}} 1")),
        "{metrics}"
    );
    assert!(
        metrics.contains("proxim_events_dropped_total{sink="),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_unwritable_event_file_fails_the_start_with_its_path() {
    proxim_testkit::init_tracing();
    let mut config = proxim_server::ServerConfig::loopback();
    config.events = vec![EventSinkSpec::File(
        "/proc/proxim-no-such-dir/events.jsonl".into(),
    )];
    let error = proxim_server::Server::start(config).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("/proc/proxim-no-such-dir/events.jsonl"),
        "{text}"
    );
}

#[test]
fn event_sinks_come_from_flags_and_hide_the_broker_password() {
    let args = proxim_server::cli::ServeArgs::try_parse_from([
        "--events",
        "stdout, amqp://proxim:broker-pw@198.18.0.9:5672/%2f",
        "--events-buffer",
        "500",
    ])
    .unwrap();
    assert!(!format!("{args:?}").contains("broker-pw"));
    let config = args.into_config().unwrap();
    assert_eq!(config.events.len(), 2);
    assert_eq!(config.events_buffer, 500);
    assert_eq!(config.events_queue, "webrtc_events");
    assert!(!format!("{config:?}").contains("broker-pw"));
    let bad = proxim_server::cli::ServeArgs::try_parse_from(["--events", "kafka://x"])
        .unwrap()
        .into_config()
        .unwrap_err()
        .to_string();
    assert!(bad.contains("event sink"), "{bad}");
}
