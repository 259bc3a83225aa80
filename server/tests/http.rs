//! Monitoring routes: `/healthz`, `/api/stats`, `/api/sessions`, `/api/config` (the last two
//! on the admin listener; access and paging are in `monitoring.rs`).
// Test helpers outside `#[test]` functions unwrap freely, like the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use common::{WAIT, get_json, http_get, start_server};
use proxim_server::IceConfig;
use proxim_testkit::raw_client::{RawClient, accepted_pair, pending_pair};

#[tokio::test]
async fn healthz_reports_ok_and_connections() {
    let server = start_server(|_| {}).await;
    let body = get_json(&server, "/healthz").await;
    assert_eq!(body["status"], "ok");
    assert!(body["uptime_s"].is_u64());
    assert_eq!(body["connections"], 0);
    let _client = RawClient::greeted(&server.ws_url(), WAIT).await;
    let body = get_json(&server, "/healthz").await;
    assert_eq!(body["connections"], 1);
    server.shutdown().await;
}

#[tokio::test]
async fn stats_and_sessions_follow_the_pairings() {
    let server = start_server(|c| c.expose_device_names = true).await;
    let (_d1, _p1, active) = accepted_pair(&server.ws_url(), WAIT).await;
    let (_d2, _p2, pending) = pending_pair(&server.ws_url(), WAIT).await;
    let stats = get_json(&server, "/api/stats").await;
    for (key, want) in [
        ("connections_open", 4),
        ("connections_total", 4),
        ("desktops", 2),
        ("sessions_pending", 1),
        ("sessions_active", 1),
        ("pair_requests", 2),
        ("pairs_accepted", 1),
        ("pairs_rejected", 0),
        ("pairs_timed_out", 0),
        ("unknown_codes", 0),
        ("signals_relayed", 0),
        ("errors_sent", 0),
        ("frames_malformed", 0),
        ("stale_dropped", 0),
        ("slow_readers_dropped", 0),
    ] {
        assert_eq!(stats[key], want, "{key} in {stats}");
    }

    let (status, body) = http_get(&server, "/api/sessions").await;
    assert_eq!(status, 200);
    // Only the first 8 hex digits of a session id are ever shown.
    assert!(!body.contains(active.as_str()), "{body}");
    assert!(!body.contains(pending.as_str()), "{body}");
    let sessions: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(sessions["next"], serde_json::Value::Null);
    let list = sessions["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    // In session id order.
    let (first, second) = if active.as_str() < pending.as_str() {
        (&list[0], &list[1])
    } else {
        (&list[1], &list[0])
    };
    assert_eq!(first["session"], &active.as_str()[..8]);
    assert_eq!(first["state"], "active");
    assert_eq!(first["desktop"], "Test desktop");
    assert_eq!(first["phone"], "Test phone");
    assert!(first["age_ms"].is_u64());
    assert_eq!(second["session"], &pending.as_str()[..8]);
    assert_eq!(second["state"], "pending");
    server.shutdown().await;
}

#[tokio::test]
async fn config_is_shown_without_the_turn_password() {
    let server = start_server(|c| {
        c.ice = IceConfig::new(
            &["stun:127.0.0.1:3478"],
            &["turn:127.0.0.1:3478?transport=tcp"],
            Some("proxim".into()),
            Some("s3cret".into()),
        )
        .unwrap();
    })
    .await;
    let (status, body) = http_get(&server, "/api/config").await;
    assert_eq!(status, 200);
    assert!(!body.contains("s3cret"), "{body}");
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["ice"]["turn"]["password"], "<redacted>");
    assert_eq!(config["ice"]["turn"]["username"], "proxim");
    assert_eq!(config["ice"]["stun_urls"][0], "stun:127.0.0.1:3478");
    assert_eq!(config["heartbeat_interval_ms"], 500);
    assert_eq!(config["heartbeat_timeout_ms"], 2000);
    assert_eq!(config["prompt_timeout_ms"], 2000);
    assert_eq!(config["limits"]["send_queue_capacity"], 256);
    assert_eq!(
        config["limits"]["max_frame_bytes"],
        proxim_protocol::MAX_FRAME_BYTES
    );
    // The password reaches clients, and only them.
    let (status, body) = http_get(&server, "/api/stats").await;
    assert_eq!(status, 200);
    assert!(!body.contains("s3cret"));
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_routes_are_404() {
    let server = start_server(|_| {}).await;
    let (status, _) = http_get(&server, "/nope").await;
    assert_eq!(status, 404);
    // A plain GET on /ws without the upgrade headers is refused, not served.
    let (status, _) = http_get(&server, "/ws").await;
    assert!(status >= 400, "{status}");
    server.shutdown().await;
}
