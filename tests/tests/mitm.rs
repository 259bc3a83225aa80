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

#[tokio::test]
async fn rules_drop_rewrite_inject_and_redirect_frames() {
    use futures_util::{SinkExt, StreamExt};
    use proxim_protocol::{ErrorCode, PROTOCOL_VERSION, ShortText};
    use proxim_tests::mitm::Action;
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

    let connect = || async {
        let (mut ws, _) = tokio_tungstenite::connect_async(proxy.ws_url())
            .await
            .unwrap();
        let hello = ClientMessage::Hello {
            version: PROTOCOL_VERSION,
            client: ShortText::truncated("mitm-test"),
        };
        ws.send(Message::text(hello.encode())).await.unwrap();
        ws
    };
    let mut a = connect().await;
    assert!(matches!(
        recv(&mut a).await,
        Some(ServerMessage::Welcome { .. })
    ));
    let mut b = connect().await;
    assert!(matches!(
        recv(&mut b).await,
        Some(ServerMessage::Welcome { .. })
    ));

    for seq in [1, 2, 3] {
        a.send(Message::text(ClientMessage::Ping { seq }.encode()))
            .await
            .unwrap();
    }
    // The forged error may overtake the server's pongs; the pongs keep their order.
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(recv(&mut a).await.expect("a message"));
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
        recv(&mut b).await,
        Some(ServerMessage::Pong { seq: 30 }),
        "redirected"
    );

    // The test itself can inject too.
    assert!(proxy.inject(
        ConnIndex(1),
        Direction::ToClient,
        Frame::Text("not even json".into())
    ));
    match tokio::time::timeout(STEP, b.next()).await.unwrap() {
        Some(Ok(Message::Text(text))) => assert_eq!(text.as_str(), "not even json"),
        other => panic!("expected the injected text, got {other:?}"),
    }

    a.send(Message::text(ClientMessage::Ping { seq: 4 }.encode()))
        .await
        .unwrap();
    assert_eq!(recv(&mut a).await, None, "the proxy closed connection 0");
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

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next server message, `None` when the socket closed.
async fn recv(ws: &mut Ws) -> Option<ServerMessage> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    match tokio::time::timeout(STEP, ws.next())
        .await
        .expect("a frame in time")
    {
        Some(Ok(Message::Text(text))) => Some(ServerMessage::decode(text.as_str()).unwrap()),
        _ => None,
    }
}
