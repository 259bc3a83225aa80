#![allow(clippy::unwrap_used)]
//! End to end through a TURN relay: a real signaling server minting TURN REST credentials
//! (`TURN_SECRET`) for every client, a real coturn sharing the secret, a desktop and a phone that
//! may only use relayed paths. Everything on 127.0.0.1.

use std::time::Duration;

use proxim_core::peer::CandidateKind;
use proxim_core::turn::TurnTransport;
use proxim_core::{Desktop, DesktopEvent, Event, ProximConfig, ProximError, pair};
use proxim_server::{IceConfig, TurnAuth};
use proxim_server::{RunningServer, Server, ServerConfig};
use proxim_testkit::coturn::{Coturn, CoturnAuth};
use proxim_testkit::devices::{drive, is_connection_result};
use sha2::{Digest, Sha256};

const STEP: Duration = Duration::from_secs(30);
const SECRET: &str = "proxim-test-rest-secret";

async fn server_with_turn(urls: Vec<String>, secret: &str) -> RunningServer {
    server_with_turn_ttl(urls, secret, Duration::from_secs(600)).await
}

async fn server_with_turn_ttl(urls: Vec<String>, secret: &str, ttl: Duration) -> RunningServer {
    proxim_testkit::init_tracing();
    let mut config = ServerConfig::loopback();
    config.ice = IceConfig::with_turn_auth(
        &[] as &[&str],
        &urls,
        TurnAuth {
            secret: Some(secret.into()),
            ttl: Some(ttl),
            ..TurnAuth::default()
        },
    )
    .unwrap();
    Server::start(config).await.unwrap()
}

fn relay_config(server: &RunningServer, name: &str, coturn: &Coturn) -> ProximConfig {
    ProximConfig::new(server.ws_url(), name)
        .loopback_only()
        .with_force_relay(true)
        .with_turn_roots_pem(coturn.ca_pem.clone())
        .with_connect_timeout(Duration::from_secs(10))
}

/// A relay-only desktop registered, and a relay-only phone pairing with its code.
async fn start_pairing(
    server: &RunningServer,
    coturn: &Coturn,
) -> (
    Desktop,
    tokio::task::JoinHandle<Result<proxim_core::Connection, ProximError>>,
) {
    let desktop = Desktop::register(relay_config(server, "Desktop", coturn))
        .await
        .unwrap();
    let code = desktop.code().to_owned();
    let phone_config = relay_config(server, "Phone", coturn);
    let phone = tokio::spawn(async move { pair(&phone_config, &code).await });
    (desktop, phone)
}

/// Pair through the relay with REST credentials from the welcome and send a 4 MiB file.
async fn file_through_relay(url_of: fn(&Coturn) -> String, transport: TurnTransport) {
    let coturn = Coturn::start(CoturnAuth::Secret(SECRET.into()));
    let server = server_with_turn(vec![url_of(&coturn)], SECRET).await;
    let downloads = tempfile::tempdir().unwrap();
    let mut desktop = tokio::time::timeout(
        STEP,
        Desktop::register(
            relay_config(&server, "Relay desktop", &coturn).with_download_dir(downloads.path()),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let code = desktop.code().to_owned();
    let phone_config = relay_config(&server, "Relay phone", &coturn);
    let phone = tokio::spawn(async move { pair(&phone_config, &code).await });
    let desk = match drive(&mut desktop, is_connection_result).await {
        DesktopEvent::Connected(connection) => connection,
        DesktopEvent::ConnectionFailed { error, .. } => {
            // The phone's own error says why (the desktop often only sees it leave).
            let phone = tokio::time::timeout(STEP, phone).await;
            panic!(
                "desktop: {error}\nphone: {phone:?}\ncoturn log:\n{}",
                coturn.log()
            )
        }
        other => unreachable!("{other:?}"),
    };
    let phone = tokio::time::timeout(STEP, phone)
        .await
        .unwrap()
        .unwrap()
        .unwrap_or_else(|e| panic!("phone: {e}\ncoturn log:\n{}", coturn.log()));

    let stats = phone.stats().await.unwrap();
    assert_eq!(stats.local.kind, CandidateKind::Relay, "{stats:?}");
    assert_eq!(stats.remote.kind, CandidateKind::Relay, "{stats:?}");
    assert_eq!(stats.local.relay_protocol, Some(transport));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relayed.bin");
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &data).unwrap();
    let report = phone.send_file(&path, |_| {}).await.unwrap();
    assert_eq!(report.bytes, data.len() as u64);
    let received = loop {
        match tokio::time::timeout(STEP, desk.next_event())
            .await
            .unwrap()
            .unwrap()
        {
            Event::FileReceived(file) => break file,
            Event::FileFailed { error } => panic!("{error}"),
            _ => {}
        }
    };
    let got = std::fs::read(&received.path).unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&got)),
        hex::encode(Sha256::digest(&data))
    );
    println!(
        "{transport}: relayed pairing open after {:?}, 4 MiB in {:?}",
        phone.timings().channel_open,
        report.elapsed
    );
    phone.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rest_credentials_relay_a_file_over_udp() {
    file_through_relay(Coturn::udp_url, TurnTransport::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rest_credentials_relay_a_file_over_tcp() {
    file_through_relay(Coturn::tcp_url, TurnTransport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rest_credentials_relay_a_file_over_tls() {
    file_through_relay(Coturn::tls_url, TurnTransport::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_with_the_wrong_secret_fails_with_refused_credentials() {
    let coturn = Coturn::start(CoturnAuth::Secret(SECRET.into()));
    let server = server_with_turn(vec![coturn.udp_url()], "not-the-secret").await;
    let (mut desktop, phone) = start_pairing(&server, &coturn).await;
    let desktop_error = match drive(&mut desktop, is_connection_result).await {
        DesktopEvent::ConnectionFailed { error, .. } => error,
        DesktopEvent::Connected(_) => panic!("connected with refused credentials"),
        other => unreachable!("{other:?}"),
    };
    let phone_error = tokio::time::timeout(STEP, phone)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    match &phone_error {
        ProximError::ConnectionFailed(reason) => {
            assert!(reason.contains("credentials refused (401"), "{reason}")
        }
        other => panic!("expected ConnectionFailed, got {other:?}"),
    }
    // The desktop fails the same way, unless the phone gave up (and left) first.
    match &desktop_error {
        ProximError::ConnectionFailed(reason) => assert!(
            reason.contains("credentials refused (401") || reason.contains("peer left"),
            "{reason}"
        ),
        other => panic!("expected ConnectionFailed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relayed_connection_outlives_turn_ttl_and_its_clients_fetch_fresh_credentials() {
    // Credentials good for 8 s; coturn makes allocations last 4 s, so they are refreshed
    // (with the credentials they were made with) after those expired.
    const TTL: Duration = Duration::from_secs(8);
    let coturn = Coturn::start_with(
        CoturnAuth::Secret(SECRET.into()),
        &["--max-allocate-lifetime=4"],
    );
    let server = server_with_turn_ttl(vec![coturn.udp_url()], SECRET, TTL).await;
    let (mut desktop, phone) = start_pairing(&server, &coturn).await;
    let desk = match drive(&mut desktop, is_connection_result).await {
        DesktopEvent::Connected(connection) => connection,
        other => panic!("{other:?}\ncoturn log:\n{}", coturn.log()),
    };
    let phone = tokio::time::timeout(STEP, phone)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let started = std::time::Instant::now();

    // Past the TTL and several allocation lifetimes.
    tokio::time::sleep(TTL + Duration::from_secs(5)).await;
    phone.send_text("after TURN_TTL").await.unwrap();
    loop {
        match tokio::time::timeout(STEP, desk.next_event())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Message(proxim_core::peer::Payload::Text(text)) if text == "after TURN_TTL" => {
                break;
            }
            Event::Closed { reason } => panic!("closed: {reason}\ncoturn log:\n{}", coturn.log()),
            _ => {}
        }
    }
    let stats = phone.stats().await.unwrap();
    assert_eq!(stats.local.kind, CandidateKind::Relay, "{stats:?}");
    // Both clients asked for fresh ICE servers before their credentials ran out (at 4/5 of
    // the TTL), without reconnecting.
    let refreshes = server.stats().ice_refreshes;
    assert!(
        refreshes >= 2,
        "{refreshes} refreshes in {:?}",
        started.elapsed()
    );
    phone.close().await;
    desk.close().await;
}
