//! The signaling protocol end to end: real WebSocket clients against a server on 127.0.0.1:0.
// Test helpers outside `#[test]` functions unwrap freely, like the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{
    TestClient, accepted_pair, desktop_device, expect_result, hello, pair_request, pending_pair,
    phone_device, start_server,
};
use proxim_protocol::{
    AuthPayload, CandidateLine, ClientMessage, ErrorCode, MAX_FRAME_BYTES, PairOutcome,
    RoutingCode, Sdp, ServerMessage, SessionEndReason, SessionId, Signal,
};

fn offer() -> Signal {
    Signal::Offer {
        sdp: Sdp::new("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=offer\r\n").unwrap(),
    }
}

fn answer() -> Signal {
    Signal::Answer {
        sdp: Sdp::new("v=0\r\no=- 2 1 IN IP4 127.0.0.1\r\ns=answer\r\n").unwrap(),
    }
}

fn signal(session: &SessionId, signal: Signal) -> ClientMessage {
    ClientMessage::Signal {
        session: session.clone(),
        signal,
    }
}

async fn expect_signal(client: &mut TestClient, session: &SessionId, expected: &Signal) {
    match client.recv().await {
        ServerMessage::Signal {
            session: got,
            signal,
        } => {
            assert_eq!(&got, session);
            assert_eq!(&signal, expected);
        }
        other => panic!("expected signal, got {other:?}"),
    }
}

async fn expect_ended(client: &mut TestClient, session: &SessionId, reason: SessionEndReason) {
    match client.recv().await {
        ServerMessage::SessionEnded {
            session: got,
            reason: got_reason,
        } => {
            assert_eq!(&got, session);
            assert_eq!(got_reason, reason);
        }
        other => panic!("expected session_ended {reason:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn accept_then_signals_flow_both_ways() {
    let server = start_server(|_| {}).await;
    let (mut desktop, mut phone, session) = common::pending_pair(&server).await;
    desktop
        .send(&ClientMessage::PairResponse {
            session: session.clone(),
            accept: true,
            auth: Some(AuthPayload::new("ZGVza3RvcC1hdXRo").unwrap()),
        })
        .await;
    // The phone learns who the desktop is and gets the desktop's auth payload.
    match expect_result(&mut phone, &session, PairOutcome::Accepted).await {
        ServerMessage::PairResult { peer, auth, .. } => {
            assert_eq!(peer, Some(desktop_device()));
            assert_eq!(
                auth.as_ref().map(AuthPayload::as_str),
                Some("ZGVza3RvcC1hdXRo")
            );
        }
        _ => unreachable!(),
    }
    match expect_result(&mut desktop, &session, PairOutcome::Accepted).await {
        ServerMessage::PairResult { peer, .. } => assert_eq!(peer, Some(phone_device())),
        _ => unreachable!(),
    }

    phone.send(&signal(&session, offer())).await;
    expect_signal(&mut desktop, &session, &offer()).await;
    desktop.send(&signal(&session, answer())).await;
    expect_signal(&mut phone, &session, &answer()).await;
    let candidate = Signal::Candidate {
        candidate: CandidateLine::new("candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host")
            .unwrap(),
        sdp_mid: None,
        sdp_mline_index: Some(0),
    };
    desktop.send(&signal(&session, candidate.clone())).await;
    expect_signal(&mut phone, &session, &candidate).await;
    phone.send(&signal(&session, Signal::EndOfCandidates)).await;
    expect_signal(&mut desktop, &session, &Signal::EndOfCandidates).await;
    // The sender gets nothing back.
    phone.expect_silence().await;

    let stats = server.stats();
    assert_eq!(stats.pairs_accepted, 1);
    assert_eq!(stats.signals_relayed, 4);
    assert_eq!(stats.sessions_active, 1);
    assert_eq!(stats.sessions_pending, 0);

    // A second pair_response for an accepted session is refused.
    desktop
        .send(&ClientMessage::PairResponse {
            session: session.clone(),
            accept: true,
            auth: None,
        })
        .await;
    desktop.expect_error(ErrorCode::InvalidState).await;
    server.shutdown().await;
}

#[tokio::test]
async fn reject_tells_both_and_ends_the_session() {
    let server = start_server(|_| {}).await;
    let (mut desktop, mut phone, session) = pending_pair(&server).await;
    desktop
        .send(&ClientMessage::PairResponse {
            session: session.clone(),
            accept: false,
            auth: None,
        })
        .await;
    expect_result(&mut phone, &session, PairOutcome::Rejected).await;
    expect_result(&mut desktop, &session, PairOutcome::Rejected).await;
    phone.send(&signal(&session, offer())).await;
    phone.expect_error(ErrorCode::UnknownSession).await;
    desktop.expect_silence().await;
    assert_eq!(server.stats().pairs_rejected, 1);
    assert_eq!(server.stats().sessions_pending, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn only_the_desktop_answers_and_signals_wait_for_acceptance() {
    let server = start_server(|_| {}).await;
    let (mut desktop, mut phone, session) = pending_pair(&server).await;
    // The phone cannot accept its own request.
    phone
        .send(&ClientMessage::PairResponse {
            session: session.clone(),
            accept: true,
            auth: None,
        })
        .await;
    phone.expect_error(ErrorCode::NotSessionMember).await;
    // No signals before acceptance.
    phone.send(&signal(&session, offer())).await;
    phone.expect_error(ErrorCode::InvalidState).await;
    desktop.expect_silence().await;
    // Unknown session.
    let unknown = SessionId::new("00000000000000000000000000000000").unwrap();
    desktop
        .send(&ClientMessage::PairResponse {
            session: unknown,
            accept: true,
            auth: None,
        })
        .await;
    desktop.expect_error(ErrorCode::UnknownSession).await;
    server.shutdown().await;
}

#[tokio::test]
async fn prompt_timeout_tells_both_sides() {
    let server = start_server(|c| c.prompt_timeout = Duration::from_millis(300)).await;
    let started = tokio::time::Instant::now();
    let (mut desktop, mut phone, session) = pending_pair(&server).await;
    expect_result(&mut phone, &session, PairOutcome::TimedOut).await;
    expect_result(&mut desktop, &session, PairOutcome::TimedOut).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Too late to accept now.
    desktop
        .send(&ClientMessage::PairResponse {
            session: session.clone(),
            accept: true,
            auth: None,
        })
        .await;
    desktop.expect_error(ErrorCode::UnknownSession).await;
    assert_eq!(server.stats().pairs_timed_out, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_code_gets_a_result_without_a_session() {
    let server = start_server(|_| {}).await;
    let mut phone = TestClient::greeted(&server).await;
    phone
        .send(&pair_request(&RoutingCode::new("ABCDEF").unwrap(), None))
        .await;
    match phone.recv().await {
        ServerMessage::PairResult {
            session,
            outcome,
            peer,
            ..
        } => {
            assert_eq!(session, None);
            assert_eq!(outcome, PairOutcome::UnknownCode);
            assert_eq!(peer, None);
        }
        other => panic!("expected pair_result, got {other:?}"),
    }
    let stats = server.stats();
    assert_eq!((stats.unknown_codes, stats.pair_requests), (1, 1));
    assert_eq!(stats.sessions_pending, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_stranger_cannot_signal_into_a_session() {
    let server = start_server(|_| {}).await;
    let (mut desktop, mut phone, session) = accepted_pair(&server).await;
    let mut stranger = TestClient::greeted(&server).await;
    stranger.send(&signal(&session, offer())).await;
    stranger.expect_error(ErrorCode::NotSessionMember).await;
    stranger
        .send(&ClientMessage::Leave {
            session: session.clone(),
        })
        .await;
    stranger.expect_error(ErrorCode::NotSessionMember).await;
    stranger
        .send(&ClientMessage::PairResponse {
            session: session.clone(),
            accept: false,
            auth: None,
        })
        .await;
    stranger.expect_error(ErrorCode::NotSessionMember).await;
    // Neither member received anything, and the session still works.
    desktop.expect_silence().await;
    phone.expect_silence().await;
    phone.send(&signal(&session, offer())).await;
    expect_signal(&mut desktop, &session, &offer()).await;
    assert_eq!(server.stats().signals_relayed, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_json_is_answered_and_the_connection_survives() {
    let server = start_server(|_| {}).await;
    let mut client = TestClient::greeted(&server).await;
    client.send_text("{this is not json").await;
    client.expect_error(ErrorCode::MalformedMessage).await;
    client.ping_pong(1).await;
    client.send_text(r#"{"type":"teleport","to":"mars"}"#).await;
    client.expect_error(ErrorCode::UnknownMessageType).await;
    client.send_text(r#"{"type":"ping","seq":"one"}"#).await;
    client.expect_error(ErrorCode::MalformedMessage).await;
    client.send_text(r#"{"no_type":true}"#).await;
    client.expect_error(ErrorCode::MalformedMessage).await;
    client.ping_pong(2).await;
    let stats = server.stats();
    assert_eq!(stats.frames_malformed, 4);
    assert_eq!(stats.errors_sent, 4);
    server.shutdown().await;
}

#[tokio::test]
async fn binary_frames_are_refused_and_the_connection_survives() {
    let server = start_server(|_| {}).await;
    let mut client = TestClient::greeted(&server).await;
    client.send_binary(vec![1, 2, 3, 4]).await;
    client.expect_error(ErrorCode::BinaryFrame).await;
    client.ping_pong(7).await;
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_frame_is_refused_then_closed() {
    let server = start_server(|_| {}).await;
    let (mut desktop, mut phone, session) = accepted_pair(&server).await;
    let huge = format!(
        r#"{{"type":"ping","seq":1,"pad":"{}"}}"#,
        "x".repeat(MAX_FRAME_BYTES)
    );
    phone.send_text(&huge).await;
    phone.expect_error(ErrorCode::FrameTooLarge).await;
    let rest = phone.expect_closed().await;
    assert!(rest.is_empty(), "{rest:?}");
    // The desktop's session ends with its peer.
    expect_ended(&mut desktop, &session, SessionEndReason::PeerDisconnected).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_silent_member_is_dropped_and_its_peer_told() {
    let server = start_server(|c| {
        c.heartbeat_interval = Duration::from_millis(100);
        c.heartbeat_timeout = Duration::from_millis(300);
    })
    .await;
    let (mut desktop, mut phone, session) = accepted_pair(&server).await;
    // The phone keeps pinging; the desktop goes silent.
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_secs(3);
    let mut next_ping = start;
    let mut seq = 0;
    let ended = loop {
        let now = tokio::time::Instant::now();
        assert!(now < deadline, "no session_ended");
        if now >= next_ping {
            seq += 1;
            phone.send(&ClientMessage::Ping { seq }).await;
            next_ping += Duration::from_millis(100);
        }
        match phone
            .recv_within(next_ping.saturating_duration_since(now))
            .await
        {
            Some(ServerMessage::Pong { .. }) | None => continue,
            Some(other) => break other,
        }
    };
    let silent_for = start.elapsed();
    assert!(silent_for >= Duration::from_millis(300), "{silent_for:?}");
    assert_eq!(
        ended,
        ServerMessage::SessionEnded {
            session: session.clone(),
            reason: SessionEndReason::PeerTimedOut,
        }
    );
    // The silent desktop got a bye, then the socket closed.
    let last = desktop.expect_closed().await;
    assert!(
        matches!(last.as_slice(), [ServerMessage::Bye { reason: Some(r) }] if r.as_str() == "heartbeat timeout"),
        "{last:?}"
    );
    let stats = server.stats();
    assert_eq!(stats.stale_dropped, 1);
    assert_eq!(stats.connections_open, 1);
    // The phone, which kept talking, is still served.
    phone.ping_pong(1000).await;
    server.shutdown().await;
}

#[tokio::test]
async fn disconnect_notifies_the_peer() {
    let server = start_server(|_| {}).await;
    // Active session: the phone's socket closes.
    let (mut desktop, phone, session) = accepted_pair(&server).await;
    phone.close().await;
    expect_ended(&mut desktop, &session, SessionEndReason::PeerDisconnected).await;

    // Pending session: the desktop's socket closes.
    let server2 = start_server(|_| {}).await;
    let (desktop2, mut phone2, session2) = pending_pair(&server2).await;
    desktop2.close().await;
    expect_result(&mut phone2, &session2, PairOutcome::DesktopGone).await;

    // Pending session: the phone's socket closes.
    let (mut desktop3, phone3, session3) = {
        let mut desktop = TestClient::greeted(&server2).await;
        let code = desktop.register("desk-3", "Third desktop").await;
        let mut phone = TestClient::greeted(&server2).await;
        phone.send(&pair_request(&code, None)).await;
        let session = match desktop.recv().await {
            ServerMessage::PairPrompt { session, .. } => session,
            other => panic!("{other:?}"),
        };
        (desktop, phone, session)
    };
    phone3.close().await;
    expect_result(&mut desktop3, &session3, PairOutcome::Cancelled).await;
    server.shutdown().await;
    server2.shutdown().await;
}

#[tokio::test]
async fn leave_and_bye_end_sessions() {
    let server = start_server(|_| {}).await;
    // Leave while pending: the desktop hears `cancelled`.
    let (mut desktop, mut phone, session) = pending_pair(&server).await;
    phone
        .send(&ClientMessage::Leave {
            session: session.clone(),
        })
        .await;
    expect_result(&mut desktop, &session, PairOutcome::Cancelled).await;
    phone.expect_silence().await;
    assert_eq!(server.stats().sessions_pending, 0);

    // Leave while active: the other side hears `peer_left`.
    let (mut desktop2, mut phone2, session2) = accepted_pair_on(&server, "desk-2").await;
    desktop2
        .send(&ClientMessage::Leave {
            session: session2.clone(),
        })
        .await;
    expect_ended(&mut phone2, &session2, SessionEndReason::PeerLeft).await;
    phone2.send(&signal(&session2, offer())).await;
    phone2.expect_error(ErrorCode::UnknownSession).await;

    // Bye while active: `peer_left`, and the server closes the socket.
    let (mut desktop3, mut phone3, session3) = accepted_pair_on(&server, "desk-3").await;
    phone3.send(&ClientMessage::Bye { reason: None }).await;
    expect_ended(&mut desktop3, &session3, SessionEndReason::PeerLeft).await;
    assert!(phone3.expect_closed().await.is_empty());
    server.shutdown().await;
}

/// Like `accepted_pair`, with a fresh desktop device id.
async fn accepted_pair_on(
    server: &proxim_server::RunningServer,
    device: &str,
) -> (TestClient, TestClient, SessionId) {
    let mut desktop = TestClient::greeted(server).await;
    let code = desktop.register(device, "Another desktop").await;
    let mut phone = TestClient::greeted(server).await;
    phone.send(&pair_request(&code, None)).await;
    let session = match desktop.recv().await {
        ServerMessage::PairPrompt { session, .. } => session,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        phone.recv().await,
        ServerMessage::PairPending { .. }
    ));
    desktop
        .send(&ClientMessage::PairResponse {
            session: session.clone(),
            accept: true,
            auth: None,
        })
        .await;
    expect_result(&mut phone, &session, PairOutcome::Accepted).await;
    expect_result(&mut desktop, &session, PairOutcome::Accepted).await;
    (desktop, phone, session)
}

#[tokio::test]
async fn hello_must_come_first_and_only_once() {
    let server = start_server(|_| {}).await;
    let mut client = TestClient::connect(&server).await;
    client.send(&ClientMessage::Ping { seq: 1 }).await;
    client.expect_error(ErrorCode::HelloRequired).await;
    client
        .send(&ClientMessage::RegisterDesktop {
            device_id: "d".parse().unwrap(),
            device_name: "D".parse().unwrap(),
        })
        .await;
    client.expect_error(ErrorCode::HelloRequired).await;
    // Still open: hello now works.
    client.send(&hello(proxim_protocol::PROTOCOL_VERSION)).await;
    match client.recv().await {
        ServerMessage::Welcome {
            heartbeat_interval_ms,
            heartbeat_timeout_ms,
            ice_servers,
            ..
        } => {
            assert_eq!(heartbeat_interval_ms, 500);
            assert_eq!(heartbeat_timeout_ms, 2000);
            assert!(ice_servers.is_empty());
        }
        other => panic!("expected welcome, got {other:?}"),
    }
    client.send(&hello(proxim_protocol::PROTOCOL_VERSION)).await;
    client.expect_error(ErrorCode::InvalidState).await;
    client.ping_pong(3).await;
    server.shutdown().await;
}

#[tokio::test]
async fn unsupported_version_is_refused_and_closed() {
    let server = start_server(|_| {}).await;
    let mut client = TestClient::connect(&server).await;
    client.send(&hello(99)).await;
    client.expect_error(ErrorCode::UnsupportedVersion).await;
    assert!(client.expect_closed().await.is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn welcome_carries_the_configured_ice_servers_and_distinct_ids() {
    let server = start_server(|c| {
        c.ice = proxim_server::IceConfig::new(
            &["stun:127.0.0.1:3478"],
            &["turn:127.0.0.1:3478"],
            Some("user".into()),
            Some("pass".into()),
        )
        .unwrap();
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut client = TestClient::connect(&server).await;
        client.send(&hello(proxim_protocol::PROTOCOL_VERSION)).await;
        match client.recv().await {
            ServerMessage::Welcome {
                connection_id,
                ice_servers,
                ..
            } => {
                assert_eq!(ice_servers.len(), 2);
                assert_eq!(ice_servers[0].urls, vec!["stun:127.0.0.1:3478"]);
                assert_eq!(ice_servers[1].username.as_deref(), Some("user"));
                assert_eq!(ice_servers[1].credential.as_deref(), Some("pass"));
                ids.push(connection_id);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_ne!(ids[0], ids[1]);
    server.shutdown().await;
}

#[tokio::test]
async fn registration_rules() {
    let server = start_server(|_| {}).await;
    let mut desktop = TestClient::greeted(&server).await;
    let code = desktop.register("desk-1", "Test desktop").await;
    assert_eq!(code.as_str().len(), 6);
    // Registers at most once.
    desktop
        .send(&ClientMessage::RegisterDesktop {
            device_id: "desk-1".parse().unwrap(),
            device_name: "Test desktop".parse().unwrap(),
        })
        .await;
    desktop.expect_error(ErrorCode::AlreadyRegistered).await;
    // A desktop cannot pair as a phone.
    desktop.send(&pair_request(&code, None)).await;
    desktop.expect_error(ErrorCode::AlreadyRegistered).await;
    // Another device gets another code.
    let mut other = TestClient::greeted(&server).await;
    assert_ne!(other.register("desk-2", "Other").await, code);
    // The same device reconnecting gets its code back.
    // (`bye` is handled before the server closes the socket, so once the socket is closed
    // the code is free.)
    desktop.send(&ClientMessage::Bye { reason: None }).await;
    assert!(desktop.expect_closed().await.is_empty());
    assert_eq!(server.stats().desktops, 1);
    let mut back = TestClient::greeted(&server).await;
    assert_eq!(back.register("desk-1", "Test desktop").await, code);
    // A phone that paired cannot register.
    let mut phone = TestClient::greeted(&server).await;
    phone.send(&pair_request(&code, None)).await;
    assert!(matches!(
        phone.recv().await,
        ServerMessage::PairPending { .. }
    ));
    phone
        .send(&ClientMessage::RegisterDesktop {
            device_id: "phone-1".parse().unwrap(),
            device_name: "Phone".parse().unwrap(),
        })
        .await;
    phone.expect_error(ErrorCode::AlreadyRegistered).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_does_not_read_is_dropped_without_blocking_the_sender() {
    let server = start_server(|c| {
        c.send_queue_capacity = 8;
        // This test floods on purpose: the message budget must not stop it first.
        c.rate_limit = 0;
    })
    .await;
    let (_desktop, mut phone, session) = accepted_pair(&server).await;
    // The desktop never reads again. Flood it with large offers until the server gives up on
    // it; the phone (who reads) is never blocked and hears that its peer is gone.
    let big = Signal::Offer {
        sdp: Sdp::new(format!("v=0\r\n{}", "a".repeat(40 * 1024))).unwrap(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    let ended = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dropped after {sent} offers"
        );
        assert!(sent < 5000, "never dropped after {sent} offers");
        phone.send(&signal(&session, big.clone())).await;
        sent += 1;
        if let Some(message) = phone.recv_within(Duration::from_millis(1)).await {
            break message;
        }
    };
    assert_eq!(
        ended,
        ServerMessage::SessionEnded {
            session: session.clone(),
            reason: SessionEndReason::PeerDisconnected,
        }
    );
    assert_eq!(server.stats().slow_readers_dropped, 1);
    phone.ping_pong(1).await;
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_says_bye_and_closes() {
    let server = start_server(|_| {}).await;
    let mut client = TestClient::greeted(&server).await;
    let url = server.ws_url();
    server.shutdown().await;
    let last = client.expect_closed().await;
    assert!(
        matches!(last.as_slice(), [ServerMessage::Bye { reason: Some(r) }] if r.as_str() == "server shutting down"),
        "{last:?}"
    );
    // Nobody listens any more.
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
}
