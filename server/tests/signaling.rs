//! The signaling protocol end to end: real WebSocket clients against a server on 127.0.0.1:0.
// Test helpers outside `#[test]` functions unwrap freely, like the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{WAIT, start_server};
use proxim_protocol::{
    AuthPayload, CandidateLine, ClientMessage, ErrorCode, MAX_FRAME_BYTES, PROTOCOL_VERSION,
    PairOutcome, RoutingCode, Sdp, ServerMessage, SessionEndReason, SessionId, Signal,
};
use proxim_testkit::raw_client::messages::{
    DESKTOP_AUTH, desktop_device, hello, pair_request, pair_response, phone_device,
    register_desktop,
};
use proxim_testkit::raw_client::{
    RawClient, accepted_pair, accepted_pair_with, pending_pair, pending_pair_with,
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

fn leave(session: &SessionId) -> ClientMessage {
    ClientMessage::Leave {
        session: session.clone(),
    }
}

async fn expect_signal(client: &mut RawClient, session: &SessionId, expected: &Signal) {
    assert_eq!(&client.expect_signal_in(session).await, expected);
}

/// One side of a pairing.
#[derive(Debug, Clone, Copy)]
enum Side {
    Desktop,
    Phone,
}

/// How a member walks out of its session.
#[derive(Debug, Clone, Copy)]
enum Exit {
    /// Its socket closes without a word.
    Closes,
    /// It sends `leave` and stays connected.
    Leaves,
    /// It sends `bye`; the server closes its socket.
    SaysBye,
}

/// `side` of (`desktop`, `phone`) walks out of `session` by `exit`. Returns the leaver while
/// it is still connected, and the member left behind.
async fn walk_out(
    (desktop, phone): (RawClient, RawClient),
    session: &SessionId,
    side: Side,
    exit: Exit,
) -> (Option<RawClient>, RawClient) {
    let (mut leaver, other) = match side {
        Side::Desktop => (desktop, phone),
        Side::Phone => (phone, desktop),
    };
    match exit {
        Exit::Closes => {
            leaver.close().await;
            return (None, other);
        }
        Exit::Leaves => leaver.send(&leave(session)).await,
        Exit::SaysBye => {
            leaver.send(&ClientMessage::Bye { reason: None }).await;
            assert!(leaver.expect_closed().await.is_empty());
            return (None, other);
        }
    }
    (Some(leaver), other)
}

#[tokio::test]
async fn accept_then_signals_flow_both_ways() {
    let server = start_server(|_| {}).await;
    let (mut desktop, mut phone, session) = pending_pair(&server.ws_url(), WAIT).await;
    desktop.respond(&session, true, Some(DESKTOP_AUTH)).await;
    // The phone learns who the desktop is and gets the desktop's auth payload.
    match phone.expect_result(&session, PairOutcome::Accepted).await {
        ServerMessage::PairResult { peer, auth, .. } => {
            assert_eq!(peer, Some(desktop_device()));
            assert_eq!(auth.as_ref().map(AuthPayload::as_str), Some(DESKTOP_AUTH));
        }
        _ => unreachable!(),
    }
    match desktop.expect_result(&session, PairOutcome::Accepted).await {
        ServerMessage::PairResult { peer, .. } => assert_eq!(peer, Some(phone_device())),
        _ => unreachable!(),
    }

    let candidate = Signal::Candidate {
        candidate: CandidateLine::new("candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host")
            .unwrap(),
        sdp_mid: None,
        sdp_mline_index: Some(0),
    };
    // Each row: who sends, and what; the other member receives it unchanged.
    let relayed = [
        (Side::Phone, offer()),
        (Side::Desktop, answer()),
        (Side::Desktop, candidate),
        (Side::Phone, Signal::EndOfCandidates),
    ];
    for (from, sent) in &relayed {
        let (sender, receiver) = match from {
            Side::Desktop => (&mut desktop, &mut phone),
            Side::Phone => (&mut phone, &mut desktop),
        };
        sender.send(&signal(&session, sent.clone())).await;
        expect_signal(receiver, &session, sent).await;
    }
    // The sender gets nothing back.
    phone.expect_silence().await;

    let stats = server.stats();
    assert_eq!(stats.pairs_accepted, 1);
    assert_eq!(stats.signals_relayed, 4);
    assert_eq!(stats.sessions_active, 1);
    assert_eq!(stats.sessions_pending, 0);

    // A second pair_response for an accepted session is refused.
    desktop
        .expect_refused(
            &pair_response(&session, true, None),
            ErrorCode::InvalidState,
        )
        .await;
    server.shutdown().await;
}

#[tokio::test]
async fn reject_tells_both_and_ends_the_session() {
    let server = start_server(|_| {}).await;
    let (mut desktop, mut phone, session) = pending_pair(&server.ws_url(), WAIT).await;
    desktop.respond(&session, false, None).await;
    phone.expect_result(&session, PairOutcome::Rejected).await;
    desktop.expect_result(&session, PairOutcome::Rejected).await;
    phone
        .expect_refused(&signal(&session, offer()), ErrorCode::UnknownSession)
        .await;
    desktop.expect_silence().await;
    assert_eq!(server.stats().pairs_rejected, 1);
    assert_eq!(server.stats().sessions_pending, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn only_the_desktop_answers_and_signals_wait_for_acceptance() {
    let server = start_server(|_| {}).await;
    let (mut desktop, mut phone, session) = pending_pair(&server.ws_url(), WAIT).await;
    let unknown = SessionId::new("00000000000000000000000000000000").unwrap();
    let refused = [
        // The phone cannot accept its own request.
        (
            Side::Phone,
            pair_response(&session, true, None),
            ErrorCode::NotSessionMember,
        ),
        // No signals before acceptance.
        (
            Side::Phone,
            signal(&session, offer()),
            ErrorCode::InvalidState,
        ),
        // Unknown session.
        (
            Side::Desktop,
            pair_response(&unknown, true, None),
            ErrorCode::UnknownSession,
        ),
    ];
    for (side, message, code) in refused {
        let client = match side {
            Side::Desktop => &mut desktop,
            Side::Phone => &mut phone,
        };
        client.expect_refused(&message, code).await;
    }
    desktop.expect_silence().await;
    server.shutdown().await;
}

#[tokio::test]
async fn prompt_timeout_tells_both_sides() {
    let server = start_server(|c| c.prompt_timeout = Duration::from_millis(300)).await;
    let started = tokio::time::Instant::now();
    let (mut desktop, mut phone, session) = pending_pair(&server.ws_url(), WAIT).await;
    phone.expect_result(&session, PairOutcome::TimedOut).await;
    desktop.expect_result(&session, PairOutcome::TimedOut).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Too late to accept now.
    desktop
        .expect_refused(
            &pair_response(&session, true, None),
            ErrorCode::UnknownSession,
        )
        .await;
    assert_eq!(server.stats().pairs_timed_out, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_code_gets_a_result_without_a_session() {
    let server = start_server(|_| {}).await;
    let mut phone = RawClient::greeted(&server.ws_url(), WAIT).await;
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
    let (mut desktop, mut phone, session) = accepted_pair(&server.ws_url(), WAIT).await;
    let mut stranger = RawClient::greeted(&server.ws_url(), WAIT).await;
    for message in [
        signal(&session, offer()),
        leave(&session),
        pair_response(&session, false, None),
    ] {
        stranger
            .expect_refused(&message, ErrorCode::NotSessionMember)
            .await;
    }
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
    let mut client = RawClient::greeted(&server.ws_url(), WAIT).await;
    let frames = [
        ("{this is not json", ErrorCode::MalformedMessage),
        (
            r#"{"type":"teleport","to":"mars"}"#,
            ErrorCode::UnknownMessageType,
        ),
        (
            r#"{"type":"ping","seq":"one"}"#,
            ErrorCode::MalformedMessage,
        ),
        (r#"{"no_type":true}"#, ErrorCode::MalformedMessage),
    ];
    for (seq, (frame, code)) in (1..).zip(frames) {
        client.send_text(frame).await;
        client.expect_error(code).await;
        client.ping_pong(seq).await;
    }
    let stats = server.stats();
    assert_eq!(stats.frames_malformed, 4);
    assert_eq!(stats.errors_sent, 4);
    server.shutdown().await;
}

#[tokio::test]
async fn binary_frames_are_refused_and_the_connection_survives() {
    let server = start_server(|_| {}).await;
    let mut client = RawClient::greeted(&server.ws_url(), WAIT).await;
    client.send_binary(vec![1, 2, 3, 4]).await;
    client.expect_error(ErrorCode::BinaryFrame).await;
    client.ping_pong(7).await;
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_frame_is_refused_then_closed() {
    let server = start_server(|_| {}).await;
    let (mut desktop, mut phone, session) = accepted_pair(&server.ws_url(), WAIT).await;
    let huge = format!(
        r#"{{"type":"ping","seq":1,"pad":"{}"}}"#,
        "x".repeat(MAX_FRAME_BYTES)
    );
    phone.send_text(&huge).await;
    phone.expect_error(ErrorCode::FrameTooLarge).await;
    let rest = phone.expect_closed().await;
    assert!(rest.is_empty(), "{rest:?}");
    // The desktop's session ends with its peer.
    desktop
        .expect_ended(&session, SessionEndReason::PeerDisconnected)
        .await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_silent_member_is_dropped_and_its_peer_told() {
    let server = start_server(|c| {
        c.heartbeat_interval = Duration::from_millis(100);
        c.heartbeat_timeout = Duration::from_millis(300);
        // The session waits this long for the silent member to resume.
        c.resume_grace = Duration::from_millis(200);
    })
    .await;
    // The desktop's last frame is sent after `start`, so the drop cannot come sooner than the
    // heartbeat timeout after it, however long the pairing took on a busy machine.
    let start = tokio::time::Instant::now();
    let (mut desktop, mut phone, session) = accepted_pair(&server.ws_url(), WAIT).await;
    // The phone keeps pinging; the desktop goes silent.
    let paired = tokio::time::Instant::now();
    let deadline = paired + Duration::from_secs(3);
    let mut next_ping = paired;
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
    assert!(silent_for >= Duration::from_millis(500), "{silent_for:?}");
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
async fn a_member_walking_out_of_a_pending_pairing_cancels_it_for_the_other() {
    let server = start_server(|_| {}).await;
    // Each row: who walks out, how, and the `pair_result` the other member gets.
    let cases = [
        (Side::Desktop, Exit::Closes, PairOutcome::DesktopGone),
        (Side::Phone, Exit::Closes, PairOutcome::Cancelled),
        (Side::Phone, Exit::Leaves, PairOutcome::Cancelled),
    ];
    for (n, (side, exit, outcome)) in cases.into_iter().enumerate() {
        let row = format!("{side:?} {exit:?}");
        // Shown with the output of a failing row.
        eprintln!("row: {row}");
        let (desktop, phone, session) =
            pending_pair_with(&server.ws_url(), WAIT, &format!("desk-{n}"), None).await;
        let (leaver, mut other) = walk_out((desktop, phone), &session, side, exit).await;
        other.expect_result(&session, outcome).await;
        if let Some(mut leaver) = leaver {
            leaver.expect_silence().await;
        }
        assert_eq!(server.stats().sessions_pending, 0, "{row}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_member_walking_out_of_an_active_session_ends_it_for_the_other() {
    let server = start_server(|_| {}).await;
    // Each row: who walks out, how, and the reason the other member is given.
    let cases = [
        (
            Side::Phone,
            Exit::Closes,
            SessionEndReason::PeerDisconnected,
        ),
        (Side::Desktop, Exit::Leaves, SessionEndReason::PeerLeft),
        (Side::Phone, Exit::SaysBye, SessionEndReason::PeerLeft),
    ];
    for (n, (side, exit, reason)) in cases.into_iter().enumerate() {
        // Shown with the output of a failing row.
        eprintln!("row: {side:?} {exit:?}");
        let (desktop, phone, session) =
            accepted_pair_with(&server.ws_url(), WAIT, &format!("desk-{n}"), None).await;
        let (_leaver, mut other) = walk_out((desktop, phone), &session, side, exit).await;
        other.expect_ended(&session, reason).await;
        // The session is gone for the member left behind.
        other
            .expect_refused(&signal(&session, offer()), ErrorCode::UnknownSession)
            .await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn hello_must_come_first_and_only_once() {
    let server = start_server(|_| {}).await;
    let mut client = RawClient::open_raw(&server.ws_url(), WAIT).await;
    for early in [ClientMessage::Ping { seq: 1 }, register_desktop("d", "D")] {
        client
            .expect_refused(&early, ErrorCode::HelloRequired)
            .await;
    }
    // Still open: hello now works.
    let welcome = client.say_hello().await;
    assert_eq!(welcome.heartbeat_interval_ms, 500);
    assert_eq!(welcome.heartbeat_timeout_ms, 2000);
    assert!(welcome.ice_servers.is_empty());
    client
        .expect_refused(&hello(PROTOCOL_VERSION), ErrorCode::InvalidState)
        .await;
    client.ping_pong(3).await;
    server.shutdown().await;
}

#[tokio::test]
async fn unsupported_version_is_refused_and_closed() {
    let server = start_server(|_| {}).await;
    let mut client = RawClient::open_raw(&server.ws_url(), WAIT).await;
    client
        .expect_refused(&hello(99), ErrorCode::UnsupportedVersion)
        .await;
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
        let mut client = RawClient::open_raw(&server.ws_url(), WAIT).await;
        let welcome = client.say_hello().await;
        let ice_servers = &welcome.ice_servers;
        assert_eq!(ice_servers.len(), 2);
        assert_eq!(ice_servers[0].urls, vec!["stun:127.0.0.1:3478"]);
        assert_eq!(ice_servers[1].username.as_deref(), Some("user"));
        assert_eq!(ice_servers[1].credential.as_deref(), Some("pass"));
        ids.push(welcome.connection_id);
    }
    assert_ne!(ids[0], ids[1]);
    server.shutdown().await;
}

#[tokio::test]
async fn registration_rules() {
    let server = start_server(|_| {}).await;
    let mut desktop = RawClient::greeted(&server.ws_url(), WAIT).await;
    let code = desktop.register("desk-1", "Test desktop").await;
    assert_eq!(code.as_str().len(), 6);
    // Registers at most once, and a desktop cannot pair as a phone.
    for again in [
        register_desktop("desk-1", "Test desktop"),
        pair_request(&code, None),
    ] {
        desktop
            .expect_refused(&again, ErrorCode::AlreadyRegistered)
            .await;
    }
    // Another device gets another code.
    let mut other = RawClient::greeted(&server.ws_url(), WAIT).await;
    assert_ne!(other.register("desk-2", "Other").await, code);
    // The same device reconnecting gets its code back.
    // (`bye` is handled before the server closes the socket, so once the socket is closed
    // the code is free.)
    desktop.send(&ClientMessage::Bye { reason: None }).await;
    assert!(desktop.expect_closed().await.is_empty());
    assert_eq!(server.stats().desktops, 1);
    let mut back = RawClient::greeted(&server.ws_url(), WAIT).await;
    assert_eq!(back.register("desk-1", "Test desktop").await, code);
    // A phone that paired cannot register.
    let mut phone = RawClient::greeted(&server.ws_url(), WAIT).await;
    phone.send(&pair_request(&code, None)).await;
    phone.expect_pending().await;
    phone
        .expect_refused(
            &register_desktop("phone-1", "Phone"),
            ErrorCode::AlreadyRegistered,
        )
        .await;
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
    let (_desktop, mut phone, session) = accepted_pair(&server.ws_url(), WAIT).await;
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
    // The phone still talks to the server. Offers it sent before it heard of the end are
    // answered `unknown_session`.
    phone.send(&ClientMessage::Ping { seq: 1 }).await;
    loop {
        match phone.recv().await {
            ServerMessage::Pong { seq: 1 } => break,
            ServerMessage::Error {
                code: ErrorCode::UnknownSession,
                ..
            } => {}
            other => panic!("expected pong, got {other:?}"),
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_says_bye_and_closes() {
    let server = start_server(|_| {}).await;
    let mut client = RawClient::greeted(&server.ws_url(), WAIT).await;
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
