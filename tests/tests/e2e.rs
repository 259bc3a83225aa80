#![allow(clippy::unwrap_used)]
//! End to end in one process over loopback: a real signaling server on port 0, a real desktop and
//! a real phone on proxim-core, real WebRTC over UDP.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proxim_core::peer::{CandidateKind, Payload};
use proxim_core::{Connection, Desktop, DesktopEvent, Event, ProximConfig, ProximError, pair};
use proxim_protocol::PairOutcome;
use proxim_server::RunningServer;
use proxim_testkit::devices::{
    desktop_until_connected, next_desktop_event, next_message, pair_with, until_closed,
};
use proxim_testkit::{devices, within, within_for};
use proxim_tests::start_server;
use sha2::{Digest, Sha256};

async fn register(server: &RunningServer, dir: Option<&Path>) -> Desktop {
    let mut config = ProximConfig::new(server.ws_url(), "Test desktop").loopback_only();
    if let Some(dir) = dir {
        config = config.with_download_dir(dir);
    }
    devices::register(config).await
}

fn phone_config(server: &RunningServer) -> ProximConfig {
    ProximConfig::new(server.ws_url(), "Test phone").loopback_only()
}

/// Pair a phone with the desktop and return both ends.
async fn pair_both(server: &RunningServer, desktop: &mut Desktop) -> (Connection, Connection) {
    let code = desktop.code().to_owned();
    pair_with(desktop, phone_config(server), &code).await
}

/// Start pairing a phone with the desktop's code in the background.
fn spawn_phone(
    server: &RunningServer,
    desktop: &Desktop,
) -> tokio::task::JoinHandle<Result<Connection, ProximError>> {
    let config = phone_config(server);
    let code = desktop.code().to_owned();
    tokio::spawn(async move { pair(&config, &code).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pair_and_exchange_messages_both_ways() {
    let server = start_server(|_| {}).await;
    let mut desktop = register(&server, None).await;
    let (mut phone, mut desk) = pair_both(&server, &mut desktop).await;

    assert_eq!(phone.peer_device().device_name.as_str(), "Test desktop");
    assert_eq!(desk.peer_device().device_name.as_str(), "Test phone");

    phone.send_text("hello desktop").await.unwrap();
    assert_eq!(
        next_message(&mut desk).await,
        Payload::Text("hello desktop".into())
    );
    desk.send_bytes(vec![1u8, 2, 3]).await.unwrap();
    assert_eq!(
        next_message(&mut phone).await,
        Payload::Binary(vec![1u8, 2, 3].into())
    );

    let stats = phone.stats().await.unwrap();
    // A direct path. The desktop's checks may arrive before its trickled host candidate (which
    // the phone, gone from signaling once up, may never read): then the pair's remote side is
    // peer-reflexive. Either way, never relayed or reflexive through a server.
    assert!(
        matches!(stats.path(), CandidateKind::Host | CandidateKind::Prflx),
        "{stats:?}"
    );
    assert!(
        stats.bytes_sent > 0 && stats.bytes_received > 0,
        "{stats:?}"
    );
    println!(
        "pair: paired after {:?}, channel open after {:?}",
        phone.timings().paired,
        phone.timings().channel_open
    );

    phone.close().await;
    phone.close().await; // closing twice is harmless
    // The desktop side learns that the connection closed.
    until_closed(&mut desk).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_messages_arrive_intact_and_in_order() {
    let server = start_server(|_| {}).await;
    let mut desktop = register(&server, None).await;
    let (phone, mut desk) = pair_both(&server, &mut desktop).await;

    const N: usize = 10_000;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            // Sizes vary from a few bytes to ~3 KiB so several messages share packets and some span them.
            let body = format!("{i:06}:{}", "x".repeat((i * 37) % 3000));
            phone.send_text(body).await.unwrap();
        }
        phone
    });
    for i in 0..N {
        let Payload::Text(text) = next_message(&mut desk).await else {
            panic!("message {i} is not text");
        };
        let expected = format!("{i:06}:{}", "x".repeat((i * 37) % 3000));
        assert_eq!(text, expected, "message {i}");
    }
    let phone = sender.await.unwrap();
    phone.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_64_mib_file_arrives_byte_identical() {
    let server = start_server(|_| {}).await;
    let received = tempfile::tempdir().unwrap();
    let mut desktop = register(&server, Some(received.path())).await;
    let (phone, desk) = pair_both(&server, &mut desktop).await;

    let source_dir = tempfile::tempdir().unwrap();
    let source = source_dir.path().join("big.bin");
    let source_hash = write_random_file(&source, 64 * 1024 * 1024);

    let receiver = tokio::spawn(async move {
        let mut progress = Vec::new();
        loop {
            match within_for(Duration::from_secs(120), "file", desk.next_event())
                .await
                .expect("connection open")
            {
                Event::FileProgress(p) => progress.push(p.bytes_done),
                Event::FileReceived(file) => return (file, progress),
                Event::FileFailed { error } => panic!("receive failed: {error}"),
                Event::Closed { reason } => panic!("closed: {reason}"),
                _ => {}
            }
        }
    });
    let mut sent_progress = Vec::new();
    let report = phone
        .send_file(&source, |p| sent_progress.push((p.bytes_done, p.total)))
        .await
        .unwrap();
    let (file, received_progress) = receiver.await.unwrap();

    assert_eq!(report.sha256, source_hash);
    assert_eq!(file.sha256, source_hash);
    assert_eq!(sha256_file(&file.path), source_hash, "bytes on disk differ");
    assert!(file.path.starts_with(received.path()));
    assert_eq!(file.bytes, 64 * 1024 * 1024);
    assert!(
        sent_progress.windows(2).all(|w| w[0].0 <= w[1].0),
        "sender progress is monotonic"
    );
    assert_eq!(sent_progress.last().map(|p| p.0), Some(64 * 1024 * 1024));
    assert!(received_progress.windows(2).all(|w| w[0] <= w[1]));
    println!(
        "64 MiB in {:?}: {:.1} MB/s",
        report.elapsed,
        64.0 * 1.048576 / report.elapsed.as_secs_f64()
    );
    phone.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_stun_server_does_not_delay_the_connection() {
    // A bound UDP socket that never answers: STUN requests to it vanish.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("stun:{}", silent.local_addr().unwrap());
    let server = start_server(|config| {
        config.ice = proxim_server::IceConfig::stun_only(vec![silent_url.clone()]).unwrap();
    })
    .await;
    let mut desktop = register(&server, None).await;
    let started = Instant::now();
    let (phone, _desk) = pair_both(&server, &mut desktop).await;
    let elapsed = started.elapsed();
    println!("connected in {elapsed:?} with a silent STUN server");
    // The STUN timeout is seconds; host candidates connect in milliseconds. Allow generous slack
    // for a loaded CI machine while still failing if connecting waited for STUN to give up.
    assert!(
        phone.timings().channel_open < Duration::from_millis(1500),
        "connecting waited for the silent STUN server: {:?}",
        phone.timings()
    );
    // Direct (host, or peer-reflexive when the desktop's check beat its trickled candidate).
    let path = phone.stats().await.unwrap().path();
    assert!(
        matches!(path, CandidateKind::Host | CandidateKind::Prflx),
        "{path:?}"
    );
    phone.close().await;
    server.shutdown().await;
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_pairing_fails_with_rejected() {
    let server = start_server(|_| {}).await;
    let mut desktop = register(&server, None).await;
    let phone = spawn_phone(&server, &desktop);
    assert!(desktop_until_connected(&mut desktop, false).await.is_none());
    let result = within("phone", phone).await.unwrap();
    assert!(matches!(result, Err(ProximError::Rejected)), "{result:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_code_fails_with_unknown_code() {
    let server = start_server(|_| {}).await;
    let _desktop = register(&server, None).await;
    let config = phone_config(&server);
    let result = within("phone", pair(&config, "ZZZZZZ-ZZZZZ")).await;
    assert!(
        matches!(result, Err(ProximError::UnknownCode)),
        "{result:?}"
    );
    let result = pair(&config, "not a code!").await;
    assert!(
        matches!(result, Err(ProximError::InvalidCode(_))),
        "{result:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_prompt_times_out_on_both_sides() {
    let server = start_server(|config| config.prompt_timeout = Duration::from_millis(500)).await;
    let mut desktop = register(&server, None).await;
    let phone = spawn_phone(&server, &desktop);
    // The desktop sees the prompt, ignores it, and then sees it close as timed out.
    let mut saw_prompt = false;
    loop {
        match next_desktop_event(&mut desktop).await {
            DesktopEvent::Prompt { .. } => saw_prompt = true,
            DesktopEvent::PromptClosed { outcome, .. } => {
                assert_eq!(outcome, PairOutcome::TimedOut);
                break;
            }
            _ => {}
        }
    }
    assert!(saw_prompt);
    let result = within("phone", phone).await.unwrap();
    assert!(
        matches!(result, Err(ProximError::TimedOut(_))),
        "{result:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_pair_ends_the_prompt_on_the_desktop() {
    let server = start_server(|_| {}).await;
    let mut desktop = register(&server, None).await;
    let phone = spawn_phone(&server, &desktop);
    while !matches!(
        next_desktop_event(&mut desktop).await,
        DesktopEvent::Prompt { .. }
    ) {}
    phone.abort();
    loop {
        if let DesktopEvent::PromptClosed { outcome, .. } = next_desktop_event(&mut desktop).await {
            assert_eq!(outcome, PairOutcome::Cancelled);
            break;
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_server_is_reported_as_such() {
    // A port nobody listens on: bind, take the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // TLS is compiled in: a wss:// URL is dialled, not refused as an unsupported scheme.
    for scheme in ["ws", "wss"] {
        let config = ProximConfig::new(format!("{scheme}://127.0.0.1:{port}/ws"), "Test phone");
        let result = within("phone", pair(&config, "K7P2QX-4HT9M")).await;
        assert!(
            matches!(result, Err(ProximError::ServerUnreachable(_))),
            "{scheme}: {result:?}"
        );
    }
}

fn write_random_file(path: &Path, size: usize) -> String {
    use rand::RngCore as _;
    let mut data = vec![0u8; size];
    rand::rng().fill_bytes(&mut data);
    std::fs::write(path, &data).unwrap();
    hex::encode(Sha256::digest(&data))
}

fn sha256_file(path: &PathBuf) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}
