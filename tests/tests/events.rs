#![allow(clippy::unwrap_used)]
//! The operator's event stream end to end: a real signaling server writing JSON lines, a real
//! desktop and phone on proxim-core over real WebRTC. Both devices report their connection
//! (`connection_established`, with the path and the time to connect), and the desktop, which
//! stays on signaling, reports how it closed (`connection_closed`, with bytes and duration).

use std::path::Path;
use std::time::Duration;

use proxim_core::ProximConfig;
use proxim_core::peer::Payload;
use proxim_server::EventSinkSpec;
use proxim_testkit::devices::{next_message, pair_with, until_closed};
use proxim_testkit::{devices, within};
use proxim_tests::start_server;

fn events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Wait until `want` holds for the file's events.
async fn until_events(
    path: &Path,
    want: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    within("the expected events", async {
        loop {
            let all = events(path);
            if want(&all) {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
}

fn count(all: &[serde_json::Value], kind: &str) -> usize {
    all.iter().filter(|e| e["type"] == kind).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_devices_report_their_connection_and_the_desktop_its_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let server = start_server(|c| c.events = vec![EventSinkSpec::File(path.clone())]).await;
    let desktop_config = ProximConfig::new(server.ws_url(), "Desk").loopback_only();
    let mut desktop = devices::register(desktop_config).await;
    let code = desktop.code().to_owned();
    let phone_config = ProximConfig::new(server.ws_url(), "Phone").loopback_only();
    let (phone, mut desk) = pair_with(&mut desktop, phone_config, &code).await;
    phone.send_bytes(vec![7u8; 100_000]).await.unwrap();
    assert!(matches!(next_message(&mut desk).await, Payload::Binary(b) if b.len() == 100_000));

    let all = until_events(&path, |all| count(all, "connection_established") == 2).await;
    let established: Vec<&serde_json::Value> = all
        .iter()
        .filter(|e| e["type"] == "connection_established")
        .collect();
    let mut reporters: Vec<&str> = established
        .iter()
        .map(|e| e["reporter"].as_str().unwrap())
        .collect();
    reporters.sort_unstable();
    assert_eq!(reporters, ["desktop", "phone"]);
    let accepted = all.iter().find(|e| e["type"] == "pair_accepted").unwrap();
    for e in &established {
        assert_eq!(e["session"], accepted["session"], "{e}");
        assert!(matches!(e["path"].as_str(), Some("host" | "prflx")), "{e}");
        let ms = e["time_to_connect_ms"].as_u64().unwrap();
        assert!(ms < 10_000, "{e}");
    }

    phone.close().await;
    until_closed(&mut desk).await;
    let all = until_events(&path, |all| count(all, "connection_closed") == 1).await;
    let closed = all
        .iter()
        .find(|e| e["type"] == "connection_closed")
        .unwrap();
    assert_eq!(closed["reporter"], "desktop", "{closed}");
    assert_eq!(closed["session"], accepted["session"], "{closed}");
    assert!(
        closed["bytes_received"].as_u64().unwrap() >= 100_000,
        "{closed}"
    );
    assert!(closed["duration_ms"].is_u64(), "{closed}");
    assert!(count(&all, "connection_failed") == 0);
    server.shutdown().await;
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&code), "the pairing code is in the events");
    assert!(
        !text.contains("Desk\"") && !text.contains("Phone\""),
        "device names in the events"
    );
}
