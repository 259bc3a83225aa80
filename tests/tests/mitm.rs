#![allow(clippy::unwrap_used)]
//! The man-in-the-middle proxy ([`proxim_testkit::mitm`]) between real devices and a real server:
//! transparent, it changes nothing, and it records the whole exchange.

use proxim_core::Connection;
use proxim_core::peer::Payload;
use proxim_protocol::{ClientMessage, ServerMessage, Signal};
use proxim_server::RunningServer;
use proxim_testkit::STEP;
use proxim_testkit::devices::next_message;
use proxim_testkit::mitm::{self, ConnIndex, Direction, Frame, MitmProxy, Origin, sdp_fingerprint};
use proxim_testkit::raw_client::RawClient;
use proxim_tests::start_server;

/// Register a desktop and pair a phone with it, both through `url`; returns (phone, desktop).
async fn pair_through(url: &str) -> (Connection, Connection) {
    proxim_testkit::devices::pair_through(url, "Mitm desktop", "Mitm phone").await
}

async fn server() -> RunningServer {
    start_server(|_| {}).await
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

#[tokio::test]
async fn rules_drop_rewrite_inject_and_redirect_frames() {
    use proxim_protocol::ErrorCode;
    use proxim_testkit::mitm::Action;
    use tokio_tungstenite::tungstenite::Message;

    let server = server().await;
    // ping 1: dropped; ping 2: rewritten to 20; ping 3: passed, plus a forged error to the
    // client and a ping 30 from connection 1 to the server; ping 4: connection 0 closed.
    let proxy = MitmProxy::start(&server.ws_url(), |_ctx, direction, conn, frame| {
        match (direction, frame.as_client()) {
            (Direction::ToServer, Some(ClientMessage::Ping { seq: 1 })) => vec![],
            (Direction::ToServer, Some(ClientMessage::Ping { seq: 2 })) => {
                vec![Action::Forward(Frame::Client(ClientMessage::Ping {
                    seq: 20,
                }))]
            }
            (Direction::ToServer, Some(ClientMessage::Ping { seq: 3 })) => vec![
                Action::Pass,
                Action::to_client(
                    conn,
                    Frame::Server(ServerMessage::error(
                        ErrorCode::Internal,
                        "forged by the proxy",
                    )),
                ),
                Action::to_server(ConnIndex(1), Frame::Client(ClientMessage::Ping { seq: 30 })),
            ],
            (Direction::ToServer, Some(ClientMessage::Ping { seq: 4 })) => {
                vec![Action::Close(conn)]
            }
            _ => vec![Action::Pass],
        }
    })
    .await
    .unwrap();

    // Each client checks its welcome as it connects.
    let mut a = RawClient::greeted(&proxy.ws_url(), STEP).await;
    let mut b = RawClient::greeted(&proxy.ws_url(), STEP).await;

    for seq in [1, 2, 3] {
        a.send(&ClientMessage::Ping { seq }).await;
    }
    // The forged error may overtake the server's pongs; the pongs keep their order.
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(a.recv().await);
    }
    let pongs: Vec<&ServerMessage> = got
        .iter()
        .filter(|m| matches!(m, ServerMessage::Pong { .. }))
        .collect();
    assert_eq!(
        pongs,
        [
            &ServerMessage::Pong { seq: 20 },
            &ServerMessage::Pong { seq: 3 }
        ],
        "1 dropped, 2 rewritten, 3 passed: {got:?}"
    );
    assert!(
        got.iter().any(|m| matches!(
            m,
            ServerMessage::Error { code: ErrorCode::Internal, message } if message.as_str() == "forged by the proxy"
        )),
        "{got:?}"
    );
    assert_eq!(
        b.recv().await,
        ServerMessage::Pong { seq: 30 },
        "redirected"
    );

    // The test itself can inject too.
    assert!(proxy.inject(
        ConnIndex(1),
        Direction::ToClient,
        Frame::Text("not even json".into())
    ));
    match b.next_frame().await {
        Some(Message::Text(text)) => assert_eq!(text.as_str(), "not even json"),
        other => panic!("expected the injected text, got {other:?}"),
    }

    a.send(&ClientMessage::Ping { seq: 4 }).await;
    assert_eq!(a.expect_closed().await, [], "the proxy closed connection 0");
    assert!(!proxy.inject(ConnIndex(0), Direction::ToServer, Frame::Text("x".into())));

    // The log has what the peers sent and what the proxy emitted, in order.
    let log = proxy.log();
    let from_proxy: Vec<&'static str> = log
        .filter(|e| e.origin == Origin::Proxy)
        .iter()
        .map(|e| e.frame.kind())
        .collect();
    assert_eq!(from_proxy, ["ping", "error", "ping", "text"]);
    assert!(log.filter(|e| e.origin == Origin::Peer).len() >= 8);
    proxy.shutdown();
    server.shutdown().await;
}
