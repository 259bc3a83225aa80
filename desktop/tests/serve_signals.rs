#![allow(clippy::unwrap_used)]
//! `proxim serve` stops the way a service manager or a container runtime stops it (SIGTERM)
//! as it does on Ctrl-C (SIGINT): every client gets `bye` and a WebSocket Close, and the
//! process exits 0 within its shutdown grace, its event stream complete. The server is a child
//! process, signalled and killed by PID.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use proxim_protocol::ServerMessage;
use proxim_testkit::raw_client::RawClient;
use proxim_tests::child::ServerProcess;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_proxim");
const WAIT: Duration = Duration::from_secs(10);

/// What a client sees until the socket ends: the server's messages, and whether a Close
/// frame came (rather than the socket just ending: what browsers report as 1006).
async fn until_end(client: &mut RawClient) -> (Vec<ServerMessage>, bool) {
    let mut messages = Vec::new();
    loop {
        let frame = tokio::time::timeout(WAIT, client.ws.next())
            .await
            .expect("the server ends the connection in time");
        match frame {
            Some(Ok(Message::Text(text))) => {
                messages.push(ServerMessage::decode(text.as_str()).unwrap());
            }
            Some(Ok(Message::Close(_))) => return (messages, true),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (messages, false),
        }
    }
}

async fn drains_on(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let sink = format!("file:{}", events.display());
    let serve = ServerProcess::start(Path::new(BIN), &["--events", &sink])
        .await
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(RawClient::greeted(&serve.ws_url(), WAIT).await);
    }
    let status = serve.stop_with(signal, WAIT).await.unwrap();
    assert!(status.success(), "{signal}: exit status {status}");
    for client in &mut clients {
        let (messages, closed) = until_end(client).await;
        assert!(
            messages
                .iter()
                .any(|m| matches!(m, ServerMessage::Bye { .. })),
            "{signal}: every client gets bye; got {messages:?}"
        );
        assert!(closed, "{signal}: and a Close frame");
    }
    // The event stream is complete when the process exits: it says it stopped, and every
    // client left with reason `shutdown`.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "service_started", "{lines:?}");
    let stopping = lines
        .iter()
        .position(|e| e["type"] == "service_stopping")
        .unwrap_or_else(|| panic!("{signal}: no service_stopping in {lines:?}"));
    assert_eq!(lines[stopping]["connections"], 3);
    let shut = lines[stopping..]
        .iter()
        .filter(|e| e["type"] == "client_disconnected" && e["reason"] == "shutdown")
        .count();
    assert_eq!(shut, 3, "{signal}: {lines:?}");
}

#[tokio::test]
async fn sigterm_drains_like_ctrl_c() {
    drains_on("TERM").await;
}

#[tokio::test]
async fn sigint_drains() {
    drains_on("INT").await;
}
