#![allow(clippy::unwrap_used)]
//! `proxim serve` stops the way a service manager or a container runtime stops it (SIGTERM)
//! as it does on Ctrl-C (SIGINT): every client gets `bye` and a WebSocket Close, and the
//! process exits 0 within its shutdown grace. The server is a child process, signalled and
//! killed by PID.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use proxim_protocol::ServerMessage;
use proxim_testkit::raw_client::RawClient;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_proxim");
const WAIT: Duration = Duration::from_secs(10);

/// A `proxim serve` child, killed when dropped.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `proxim serve` on a free loopback port; the child and its WebSocket URL.
fn start_serve() -> (Serve, String) {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--no-stun",
            "--admin-bind",
            "none",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let serve = Serve(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(url) = line.split("(WebSocket ").nth(1) {
                let _ = tx.send(url.trim_end_matches(')').to_owned());
            }
        }
    });
    let url = rx.recv_timeout(WAIT).expect("proxim serve prints its URL");
    (serve, url)
}

/// Send `signal` to the child by PID.
fn signal(serve: &Serve, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &serve.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal}");
}

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

async fn drains_on(name: &str) {
    let (mut serve, url) = start_serve();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(RawClient::greeted(&url, WAIT).await);
    }
    signal(&serve, name);
    for client in &mut clients {
        let (messages, closed) = until_end(client).await;
        assert!(
            messages
                .iter()
                .any(|m| matches!(m, ServerMessage::Bye { .. })),
            "{name}: every client gets bye; got {messages:?}"
        );
        assert!(closed, "{name}: and a Close frame");
    }
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = serve.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: proxim serve exits"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{name}: exit status {status}");
}

#[tokio::test]
async fn sigterm_drains_like_ctrl_c() {
    drains_on("TERM").await;
}

#[tokio::test]
async fn sigint_drains() {
    drains_on("INT").await;
}
