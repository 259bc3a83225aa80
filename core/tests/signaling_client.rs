//! The signaling client against an in-process fake server on 127.0.0.1:0.
#![allow(clippy::unwrap_used)]

mod signaling_fake;

use std::time::{Duration, Instant};

use proxim_core::LinkEvent;
use proxim_core::signaling::{
    Backoff, SignalingClient, SignalingConfig, SignalingError, SignalingEvent, SignalingEvents,
};
use proxim_protocol::{ClientMessage, PairOutcome, ServerMessage, SessionEndReason, Signal};
use signaling_fake::*;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

fn config(url: &str) -> SignalingConfig {
    let mut config = SignalingConfig::new(url);
    config.connect_timeout = Duration::from_millis(500);
    config.backoff = Backoff {
        initial: Duration::from_millis(100),
        factor: 1.5,
        max: Duration::from_secs(1),
        max_attempts: Some(10),
        jitter: 0.0,
    };
    config
}

async fn next(events: &mut SignalingEvents) -> SignalingEvent {
    timeout(WAIT, events.next())
        .await
        .expect("no event in time")
        .expect("events ended")
}

/// Connect a client to `server`, completing the handshake on the server side.
async fn connected(
    server: &mut FakeServer,
    interval_ms: u64,
    timeout_ms: u64,
) -> (SignalingClient, SignalingEvents, FakeConn) {
    let connect = tokio::spawn(SignalingClient::connect(config(&server.url)));
    let mut conn = server.accept().await;
    conn.handshake(interval_ms, timeout_ms).await;
    let (client, events) = timeout(WAIT, connect).await.unwrap().unwrap().unwrap();
    (client, events, conn)
}

async fn recv(rx: &mut tokio::sync::mpsc::Receiver<LinkEvent>) -> LinkEvent {
    timeout(WAIT, rx.recv()).await.unwrap().unwrap()
}

fn offer() -> Signal {
    Signal::Offer {
        sdp: proxim_protocol::Sdp::new("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n").unwrap(),
    }
}

#[tokio::test]
async fn hello_then_welcome() {
    init_tracing();
    let mut server = FakeServer::start().await;
    let connect = tokio::spawn(SignalingClient::connect(config(&server.url)));
    let mut conn = server.accept().await;
    match conn.recv().await {
        ClientMessage::Hello { version, client } => {
            assert_eq!(version, proxim_protocol::PROTOCOL_VERSION);
            assert!(client.as_str().starts_with("proxim-core/"), "{client}");
        }
        other => panic!("expected hello, got {other:?}"),
    }
    conn.send(&conn.welcome(15_000, 45_000)).await;
    let (client, _events) = timeout(WAIT, connect).await.unwrap().unwrap().unwrap();
    let welcome = client.welcome();
    assert_eq!(welcome.connection_id.as_str(), format!("{:032x}", 1));
    assert_eq!(welcome.heartbeat_interval, Duration::from_secs(15));
    assert_eq!(welcome.heartbeat_timeout, Duration::from_secs(45));
    assert!(client.is_connected());
}

#[tokio::test]
async fn heartbeats_both_ways() {
    init_tracing();
    let mut server = FakeServer::start().await;
    let (_client, _events, mut conn) = connected(&mut server, 50, 2_000).await;
    let started = Instant::now();
    // The client pings on the welcome's interval.
    assert_eq!(conn.recv().await, ClientMessage::Ping { seq: 1 });
    assert_eq!(conn.recv().await, ClientMessage::Ping { seq: 2 });
    assert!(
        started.elapsed() >= Duration::from_millis(60),
        "{:?}",
        started.elapsed()
    );
    // And answers the server's.
    conn.send(&ServerMessage::Ping { seq: 77 }).await;
    loop {
        match conn.recv().await {
            ClientMessage::Pong { seq } => {
                assert_eq!(seq, 77);
                break;
            }
            ClientMessage::Ping { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn silent_server_is_detected_and_the_client_reconnects() {
    init_tracing();
    let mut server = FakeServer::start().await;
    let (client, mut events, conn) = connected(&mut server, 50, 300).await;
    let welcomed = Instant::now();
    // Keep the socket open but never answer: the client's pings go unanswered.
    let silent = tokio::spawn(async move {
        let mut conn = conn;
        while conn.try_recv().await.is_some() {}
    });
    match next(&mut events).await {
        SignalingEvent::Disconnected { error } => {
            assert_eq!(error, SignalingError::HeartbeatTimeout);
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    let detected = welcomed.elapsed();
    assert!(
        detected >= Duration::from_millis(290) && detected < Duration::from_secs(2),
        "silence detected after {detected:?}"
    );
    assert!(!client.is_connected());
    assert_eq!(
        client.send(ClientMessage::Ping { seq: 9 }).await,
        Err(SignalingError::NotConnected)
    );
    assert_eq!(
        next(&mut events).await,
        SignalingEvent::Reconnecting {
            attempt: 1,
            delay: Duration::from_millis(100)
        }
    );
    let mut conn = server.accept().await;
    conn.handshake(50, 300).await;
    match next(&mut events).await {
        SignalingEvent::Reconnected(welcome) => {
            assert_eq!(welcome.connection_id.as_str(), format!("{:032x}", 2));
            assert_eq!(client.welcome(), welcome);
        }
        other => panic!("expected Reconnected, got {other:?}"),
    }
    assert!(client.is_connected());
    silent.abort();
}

#[tokio::test]
async fn dropped_connection_reconnects_with_growing_backoff() {
    init_tracing();
    let mut server = FakeServer::start().await;
    let (client, mut events, conn) = connected(&mut server, 1_000, 5_000).await;
    let session = session(S1);
    let mut link = client.open_session(session.clone());
    // Two attempts fail before the WebSocket handshake, the third succeeds.
    server.refuse_next(2);
    drop(conn);
    match next(&mut events).await {
        SignalingEvent::Disconnected {
            error: SignalingError::ConnectionLost(_),
        } => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    // The session's link hears that the connection is gone.
    assert_eq!(
        timeout(WAIT, link.incoming.recv()).await.unwrap(),
        Some(LinkEvent::Lost)
    );
    let started = Instant::now();
    let mut delays = Vec::new();
    for attempt in 1..=3 {
        match next(&mut events).await {
            SignalingEvent::Reconnecting { attempt: a, delay } => {
                assert_eq!(a, attempt);
                delays.push(delay);
            }
            other => panic!("expected Reconnecting {attempt}, got {other:?}"),
        }
    }
    assert_eq!(
        delays,
        vec![
            Duration::from_millis(100),
            Duration::from_millis(150),
            Duration::from_millis(225)
        ]
    );
    let mut conn = server.accept().await;
    conn.handshake(1_000, 5_000).await;
    assert!(matches!(
        next(&mut events).await,
        SignalingEvent::Reconnected(_)
    ));
    // Attempt 3 ran only after both earlier delays.
    assert!(
        started.elapsed() >= Duration::from_millis(240),
        "{:?}",
        started.elapsed()
    );
    // The new connection works.
    client
        .send(ClientMessage::Leave {
            session: session.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        conn.recv_skip_pings().await,
        ClientMessage::Leave { session }
    );
}

#[tokio::test]
async fn unreachable_server_fails_fast() {
    init_tracing();
    // A port nobody listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let result = SignalingClient::connect(config(&format!("ws://127.0.0.1:{port}/ws"))).await;
    assert!(
        matches!(result, Err(SignalingError::Unreachable(_))),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn server_that_never_answers_the_handshake_fails_within_the_connect_timeout() {
    init_tracing();
    // TCP is accepted (the kernel's backlog) but no WebSocket handshake ever happens.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let started = Instant::now();
    let result = SignalingClient::connect(config(&url)).await;
    let took = started.elapsed();
    assert!(
        matches!(result, Err(SignalingError::Unreachable(_))),
        "{result:?}"
    );
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    drop(listener);
}

#[tokio::test]
async fn no_welcome_is_a_handshake_error() {
    init_tracing();
    let mut server = FakeServer::start().await;
    let connect = tokio::spawn(SignalingClient::connect(config(&server.url)));
    let mut conn = server.accept().await;
    assert!(matches!(conn.recv().await, ClientMessage::Hello { .. }));
    let result = timeout(WAIT, connect).await.unwrap().unwrap();
    assert!(
        matches!(result, Err(SignalingError::Handshake(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn unsupported_version_is_refused() {
    init_tracing();
    let mut server = FakeServer::start().await;
    let connect = tokio::spawn(SignalingClient::connect(config(&server.url)));
    let mut conn = server.accept().await;
    assert!(matches!(conn.recv().await, ClientMessage::Hello { .. }));
    let welcome = match conn.welcome(1000, 3000) {
        ServerMessage::Welcome {
            connection_id,
            ice_servers,
            heartbeat_interval_ms,
            heartbeat_timeout_ms,
            ..
        } => ServerMessage::Welcome {
            version: 99,
            connection_id,
            ice_servers,
            heartbeat_interval_ms,
            heartbeat_timeout_ms,
        },
        _ => unreachable!(),
    };
    conn.send(&welcome).await;
    let result = timeout(WAIT, connect).await.unwrap().unwrap();
    assert_eq!(result.err(), Some(SignalingError::UnsupportedVersion(99)));
}

#[tokio::test]
async fn sessions_are_demultiplexed() {
    init_tracing();
    let mut server = FakeServer::start().await;
    let (client, mut events, mut conn) = connected(&mut server, 1_000, 5_000).await;
    let mut link1 = client.open_session(session(S1));
    let mut link2 = client.open_session(session(S2));

    let candidate = |n: u32| Signal::Candidate {
        candidate: proxim_protocol::CandidateLine::new(format!(
            "candidate:{n} 1 udp 2130706431 127.0.0.1 {} typ host",
            40000 + n
        ))
        .unwrap(),
        sdp_mid: None,
        sdp_mline_index: Some(0),
    };
    for (s, n) in [(S1, 1), (S2, 2), (S3, 3), (S1, 4)] {
        conn.send(&ServerMessage::Signal {
            session: session(s),
            signal: candidate(n),
        })
        .await;
    }
    conn.send(&ServerMessage::Registered {
        code: code("ABCD"),
        expires_in_ms: None,
    })
    .await;
    conn.send(&ServerMessage::SessionEnded {
        session: session(S2),
        reason: SessionEndReason::PeerLeft,
    })
    .await;

    assert_eq!(
        recv(&mut link1.incoming).await,
        LinkEvent::Signal(candidate(1))
    );
    assert_eq!(
        recv(&mut link1.incoming).await,
        LinkEvent::Signal(candidate(4))
    );
    assert_eq!(
        recv(&mut link2.incoming).await,
        LinkEvent::Signal(candidate(2))
    );
    assert_eq!(
        recv(&mut link2.incoming).await,
        LinkEvent::Ended(SessionEndReason::PeerLeft)
    );
    // Unrouted messages go to the application.
    assert_eq!(
        next(&mut events).await,
        SignalingEvent::Message(ServerMessage::Signal {
            session: session(S3),
            signal: candidate(3)
        })
    );
    assert_eq!(
        next(&mut events).await,
        SignalingEvent::Message(ServerMessage::Registered {
            code: code("ABCD"),
            expires_in_ms: None
        })
    );

    // Outgoing signals are wrapped with their session.
    link1.outgoing.send(offer()).await.unwrap();
    assert_eq!(
        conn.recv_skip_pings().await,
        ClientMessage::Signal {
            session: session(S1),
            signal: offer()
        }
    );
    // Closing a session stops routing it and leaves it.
    client.close_session(&session(S1));
    assert_eq!(
        conn.recv_skip_pings().await,
        ClientMessage::Leave {
            session: session(S1)
        }
    );
    conn.send(&ServerMessage::Signal {
        session: session(S1),
        signal: candidate(5),
    })
    .await;
    assert!(matches!(
        next(&mut events).await,
        SignalingEvent::Message(ServerMessage::Signal { .. })
    ));
}

/// Signals right behind an accepted result, before the link is opened, are kept for the link.
/// So are the peer's last signal (e.g. why it gave up) and the end of the session when both
/// come before the link opens: the link still gets them, in order (they used to be dropped,
/// and the desktop waited out its timeout).
#[tokio::test]
async fn signals_before_the_link_opens_are_kept_for_it() {
    init_tracing();
    for ended in [None, Some(SessionEndReason::PeerLeft)] {
        let mut server = FakeServer::start().await;
        let (client, mut events, mut conn) = connected(&mut server, 1_000, 5_000).await;
        conn.send(&ServerMessage::PairResult {
            session: Some(session(S1)),
            outcome: PairOutcome::Accepted,
            peer: Some(device("phone")),
            auth: None,
        })
        .await;
        conn.send(&ServerMessage::Signal {
            session: session(S1),
            signal: offer(),
        })
        .await;
        if let Some(reason) = ended {
            conn.send(&ServerMessage::SessionEnded {
                session: session(S1),
                reason,
            })
            .await;
        }
        conn.send(&ServerMessage::Registered {
            code: code("WXYZ"),
            expires_in_ms: None,
        })
        .await;
        assert!(matches!(
            next(&mut events).await,
            SignalingEvent::Message(ServerMessage::PairResult { .. })
        ));
        // By the time this arrives, the offer (and the end) were already read from the socket.
        assert!(matches!(
            next(&mut events).await,
            SignalingEvent::Message(ServerMessage::Registered { .. })
        ));
        let mut link = client.open_session(session(S1));
        let expected = [Some(LinkEvent::Signal(offer()))]
            .into_iter()
            .chain(ended.map(|reason| Some(LinkEvent::Ended(reason))));
        for expected in expected {
            assert_eq!(
                timeout(WAIT, link.incoming.recv()).await.unwrap(),
                expected,
                "ended: {ended:?}"
            );
        }
    }
}

#[tokio::test]
async fn malformed_frames_are_skipped() {
    init_tracing();
    let mut server = FakeServer::start().await;
    let (client, mut events, mut conn) = connected(&mut server, 1_000, 5_000).await;
    conn.send_raw(Message::text("this is not json")).await;
    conn.send_raw(Message::text(r#"{"type":"launch","x":1}"#))
        .await;
    conn.send_raw(Message::text(r#"{"type":"registered","code":"lowercase"}"#))
        .await;
    conn.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    conn.send(&ServerMessage::Registered {
        code: code("ABCD"),
        expires_in_ms: None,
    })
    .await;
    assert_eq!(
        next(&mut events).await,
        SignalingEvent::Message(ServerMessage::Registered {
            code: code("ABCD"),
            expires_in_ms: None
        })
    );
    assert_eq!(client.malformed_frames(), 4);
    assert!(client.is_connected());
}

#[tokio::test]
async fn close_says_bye_and_is_idempotent() {
    init_tracing();
    let mut server = FakeServer::start().await;
    let (client, mut events, conn) = connected(&mut server, 1_000, 5_000).await;
    let server_side = tokio::spawn(conn.serve_until_closed());
    timeout(WAIT, client.close()).await.unwrap();
    let seen = timeout(WAIT, server_side).await.unwrap().unwrap();
    assert!(
        matches!(seen.last(), Some(ClientMessage::Bye { .. })),
        "{seen:?}"
    );
    assert_eq!(next(&mut events).await, SignalingEvent::Closed);
    assert_eq!(timeout(WAIT, events.next()).await.unwrap(), None);
    timeout(WAIT, client.close()).await.unwrap();
    assert_eq!(
        client.send(ClientMessage::Ping { seq: 1 }).await,
        Err(SignalingError::Closed)
    );
}

#[tokio::test]
async fn reconnecting_gives_up_after_max_attempts() {
    init_tracing();
    let mut server = FakeServer::start().await;
    let mut config = config(&server.url);
    config.backoff.max_attempts = Some(2);
    let connect = tokio::spawn(SignalingClient::connect(config));
    let mut conn = server.accept().await;
    conn.handshake(1_000, 5_000).await;
    let (client, mut events) = timeout(WAIT, connect).await.unwrap().unwrap().unwrap();
    server.refuse_next(100);
    drop(conn);
    assert!(matches!(
        next(&mut events).await,
        SignalingEvent::Disconnected { .. }
    ));
    assert!(matches!(
        next(&mut events).await,
        SignalingEvent::Reconnecting { attempt: 1, .. }
    ));
    assert!(matches!(
        next(&mut events).await,
        SignalingEvent::Reconnecting { attempt: 2, .. }
    ));
    assert_eq!(next(&mut events).await, SignalingEvent::Closed);
    assert_eq!(timeout(WAIT, events.next()).await.unwrap(), None);
    assert_eq!(
        client.send(ClientMessage::Ping { seq: 1 }).await,
        Err(SignalingError::Closed)
    );
    // close() on a client that already gave up returns at once.
    timeout(WAIT, client.close()).await.unwrap();
}
