#![allow(clippy::unwrap_used)]
//! The man-in-the-middle proxy ([`proxim_tests::mitm`]) between real devices and a real server:
//! transparent, it changes nothing, and it records the whole exchange.

use std::time::Duration;

use proxim_core::peer::Payload;
use proxim_core::{Connection, Desktop, DesktopEvent, Event, ProximConfig, pair};
use proxim_protocol::{ClientMessage, ServerMessage, Signal};
use proxim_server::{RunningServer, Server, ServerConfig};
use proxim_tests::mitm::{self, ConnIndex, Direction, Frame, MitmProxy, Origin, sdp_fingerprint};

const STEP: Duration = Duration::from_secs(30);

/// Register a desktop and pair a phone with it, both through `url`; returns (phone, desktop).
async fn pair_through(url: &str) -> (Connection, Connection) {
    let desk_config = ProximConfig::new(url, "Mitm desktop").loopback_only();
    let mut desktop = tokio::time::timeout(STEP, Desktop::register(desk_config))
        .await
        .expect("register in time")
        .expect("register");
    let phone_config = ProximConfig::new(url, "Mitm phone").loopback_only();
    let code = desktop.code().to_owned();
    let phone = tokio::spawn(async move { pair(&phone_config, &code).await });
    let desk = loop {
        match tokio::time::timeout(STEP, desktop.next_event())
            .await
            .expect("desktop event in time")
            .expect("desktop registered")
        {
            DesktopEvent::Prompt { session, .. } => desktop.accept(&session).await.unwrap(),
            DesktopEvent::Connected(connection) => break connection,
            DesktopEvent::ConnectionFailed { error, .. } => panic!("desktop failed: {error}"),
            DesktopEvent::PromptClosed { outcome, .. } => panic!("prompt closed: {outcome:?}"),
            _ => {}
        }
    };
    let phone = tokio::time::timeout(STEP, phone)
        .await
        .expect("phone in time")
        .unwrap()
        .expect("phone paired");
    desktop.close().await;
    (phone, desk)
}

async fn next_message(connection: &mut Connection) -> Payload {
    loop {
        match tokio::time::timeout(STEP, connection.next_event())
            .await
            .expect("event in time")
            .expect("connection open")
        {
            Event::Message(payload) => return payload,
            Event::Closed { reason } => panic!("closed: {reason}"),
            _ => {}
        }
    }
}

async fn server() -> RunningServer {
    Server::start(ServerConfig::loopback())
        .await
        .expect("server starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transparent_proxy_lets_pairing_and_messages_through() {
    let server = server().await;
    let proxy = MitmProxy::start(&server.ws_url(), mitm::transparent())
        .await
        .unwrap();
    let (mut phone, mut desk) = pair_through(&proxy.ws_url()).await;

    phone.send_text("hello through the proxy").await.unwrap();
    assert_eq!(
        next_message(&mut desk).await,
        Payload::Text("hello through the proxy".into())
    );
    desk.send_bytes(vec![7u8; 4096]).await.unwrap();
    assert_eq!(
        next_message(&mut phone).await,
        Payload::Binary(vec![7u8; 4096].into())
    );

    // Both devices went through the proxy, and it never spoke for itself.
    let log = proxy.log().entries();
    let conns: std::collections::BTreeSet<ConnIndex> = log.iter().map(|e| e.conn).collect();
    assert!(conns.len() >= 2, "{conns:?}");
    assert!(log.iter().all(|e| e.origin == Origin::Peer));
    assert!(
        log.iter().all(|e| !matches!(e.frame, Frame::Text(_))),
        "every frame decoded for its direction"
    );
    assert_eq!(server.stats().pairs_accepted, 1);
    phone.close().await;
    desk.close().await;
    proxy.shutdown();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_log_records_the_offer_and_the_answer_both_ways() {
    let server = server().await;
    let proxy = MitmProxy::start(&server.ws_url(), mitm::transparent())
        .await
        .unwrap();
    let (phone, desk) = pair_through(&proxy.ws_url()).await;
    let log = proxy.log();

    // The phone's offer goes up on its connection and comes down on the desktop's.
    let sdp_of = |want_offer: bool, direction: Direction| {
        log.find_map(|e| {
            let is_offer = matches!(e.frame.signal(), Some(Signal::Offer { .. }));
            let is_answer = matches!(e.frame.signal(), Some(Signal::Answer { .. }));
            let wanted = if want_offer { is_offer } else { is_answer };
            (wanted && e.direction == direction)
                .then(|| (e.conn, e.frame.sdp().unwrap().to_owned()))
        })
    };
    let (offer_up_conn, offer_up) = sdp_of(true, Direction::ToServer).expect("offer sent");
    let (offer_down_conn, offer_down) = sdp_of(true, Direction::ToClient).expect("offer relayed");
    let (answer_up_conn, answer_up) = sdp_of(false, Direction::ToServer).expect("answer sent");
    let (answer_down_conn, answer_down) =
        sdp_of(false, Direction::ToClient).expect("answer relayed");
    assert_eq!(
        offer_up, offer_down,
        "the server relays the offer untouched"
    );
    assert_eq!(answer_up, answer_down);
    assert_ne!(offer_up_conn, offer_down_conn);
    assert_eq!(
        offer_up_conn, answer_down_conn,
        "the phone offers, gets the answer"
    );
    assert_eq!(offer_down_conn, answer_up_conn, "the desktop answers");
    let offer_fp = sdp_fingerprint(&offer_up).expect("the offer carries a fingerprint");
    let answer_fp = sdp_fingerprint(&answer_up).expect("the answer carries a fingerprint");
    assert_eq!(offer_fp.split(':').count(), 32);
    assert_ne!(offer_fp, answer_fp, "each side has its own certificate");

    // The typed messages are there too: the desktop's connection registered, the phone's
    // asked to pair, and the offer came after the acceptance.
    let desk_conn = offer_down_conn;
    let registered = log.filter(|e| {
        e.conn == desk_conn && matches!(e.frame.as_server(), Some(ServerMessage::Registered { .. }))
    });
    assert_eq!(registered.len(), 1);
    let asked = log.find_map(|e| match e.frame.as_client() {
        Some(ClientMessage::PairRequest { .. }) => Some(e.index),
        _ => None,
    });
    let offered = log.signals().first().map(|e| e.index);
    assert!(asked.is_some() && asked < offered, "{asked:?} {offered:?}");
    phone.close().await;
    desk.close().await;
    proxy.shutdown();
    server.shutdown().await;
}
