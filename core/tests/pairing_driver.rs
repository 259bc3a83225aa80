//! The pairing drivers (`pair_as_phone`, `DesktopRegistration`) against scripted fake servers.
#![allow(clippy::unwrap_used)]

mod signaling_fake;

use std::time::{Duration, Instant};

use proxim_core::LinkEvent;
use proxim_core::pairing::{
    DesktopRegistration, PairTarget, PairedSession, PairingError, RegistrationEvent, pair_as_phone,
};
use proxim_core::signaling::{Backoff, SignalingClient, SignalingConfig, SignalingEvents};
use proxim_protocol::{ClientMessage, PairOutcome, ServerMessage, Signal};
use signaling_fake::*;
use tokio::time::timeout;

fn config(url: &str) -> SignalingConfig {
    let mut config = SignalingConfig::new(url);
    config.connect_timeout = Duration::from_millis(500);
    config.backoff = Backoff {
        initial: Duration::from_millis(50),
        factor: 1.5,
        max: Duration::from_millis(500),
        max_attempts: Some(20),
        jitter: Backoff::default().jitter,
    };
    config
}

async fn connected(server: &mut FakeServer) -> (SignalingClient, SignalingEvents, FakeConn) {
    let connect = tokio::spawn(SignalingClient::connect(config(&server.url)));
    let mut conn = server.accept().await;
    conn.handshake(1_000, 5_000).await;
    let (client, events) = timeout(WAIT, connect).await.unwrap().unwrap().unwrap();
    (client, events, conn)
}

/// Expect the phone's pair_request for `expected`.
async fn expect_pair_request(conn: &mut FakeConn) {
    match conn.recv_skip_pings().await {
        ClientMessage::PairRequest {
            code: got,
            device_id,
            ..
        } => {
            assert_eq!(got, code("ABCD"));
            assert_eq!(device_id.as_str(), "phone");
        }
        other => panic!("expected pair_request, got {other:?}"),
    }
}

/// A fake server (keep it alive) and a phone's signaling client connected to it.
async fn phone_connected() -> (FakeServer, SignalingClient, SignalingEvents, FakeConn) {
    init_tracing();
    let mut server = FakeServer::start().await;
    let (client, events, conn) = connected(&mut server).await;
    (server, client, events, conn)
}

/// The server side of a request nobody answered yet: read the pair_request, say pair_pending.
async fn request_pending(conn: &mut FakeConn) {
    expect_pair_request(conn).await;
    conn.send(&pending(S1)).await;
}

fn pending(s: &str) -> ServerMessage {
    ServerMessage::PairPending {
        session: session(s),
        expires_in_ms: 60_000,
    }
}

fn result(s: Option<&str>, outcome: PairOutcome, peer: &str) -> ServerMessage {
    ServerMessage::PairResult {
        session: s.map(session),
        outcome,
        peer: (outcome == PairOutcome::Accepted).then(|| device(peer)),
        auth: None,
    }
}

/// Pair as the phone `phone` with the code `ABCD`, waiting at most `wait` for the desktop.
async fn pair_phone(
    client: &SignalingClient,
    events: &mut SignalingEvents,
    wait: Duration,
) -> Result<PairedSession, PairingError> {
    let target = PairTarget::Code(code("ABCD"));
    pair_as_phone(client, events, target, device("phone"), None, wait).await
}

fn offer() -> Signal {
    Signal::Offer {
        sdp: proxim_protocol::Sdp::new("v=0\r\n").unwrap(),
    }
}

#[tokio::test]
async fn phone_is_accepted_and_gets_a_working_link() {
    let (_server, client, mut events, mut conn) = phone_connected().await;
    let script = tokio::spawn(async move {
        request_pending(&mut conn).await;
        conn.send(&result(Some(S1), PairOutcome::Accepted, "desk"))
            .await;
        // The desktop's answer comes right behind the result.
        conn.send(&ServerMessage::Signal {
            session: session(S1),
            signal: offer(),
        })
        .await;
        let sent = conn.recv_skip_pings().await;
        (conn, sent)
    });
    let paired = timeout(WAIT, pair_phone(&client, &mut events, WAIT))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(paired.session, session(S1));
    assert_eq!(paired.peer, device("desk"));
    let mut link = paired.link;
    assert_eq!(
        timeout(WAIT, link.incoming.recv()).await.unwrap(),
        Some(LinkEvent::Signal(offer()))
    );
    link.outgoing.send(Signal::EndOfCandidates).await.unwrap();
    let (_conn, sent) = timeout(WAIT, script).await.unwrap().unwrap();
    assert_eq!(
        sent,
        ClientMessage::Signal {
            session: session(S1),
            signal: Signal::EndOfCandidates
        }
    );
}

/// After the phone's pair_request, what the fake server does.
enum Script {
    /// Sends these and keeps the connection open.
    Reply(Vec<ServerMessage>),
    /// Sends these, then hangs up.
    ReplyAndHangUp(Vec<ServerMessage>),
}

#[tokio::test]
async fn phone_pairing_fails_with_what_the_server_says() {
    let cases = [
        (
            "rejected (another session's result is noise to ignore)",
            Script::Reply(vec![
                pending(S1),
                result(Some(S2), PairOutcome::Accepted, "other"),
                result(Some(S1), PairOutcome::Rejected, "desk"),
            ]),
            PairingError::Rejected,
        ),
        (
            "unknown code",
            Script::Reply(vec![result(None, PairOutcome::UnknownCode, "")]),
            PairingError::UnknownCode,
        ),
        (
            "the server goes away",
            Script::ReplyAndHangUp(vec![pending(S1)]),
            PairingError::ServerLost,
        ),
    ];
    for (name, script, expected) in cases {
        let (_server, client, mut events, mut conn) = phone_connected().await;
        let script = tokio::spawn(async move {
            expect_pair_request(&mut conn).await;
            let (replies, hang_up) = match script {
                Script::Reply(replies) => (replies, false),
                Script::ReplyAndHangUp(replies) => (replies, true),
            };
            for reply in &replies {
                conn.send(reply).await;
            }
            (!hang_up).then_some(conn)
        });
        let outcome = timeout(WAIT, pair_phone(&client, &mut events, WAIT))
            .await
            .unwrap();
        assert_eq!(outcome.err(), Some(expected), "{name}");
        script.await.unwrap();
    }
}

#[tokio::test]
async fn phone_times_out_and_leaves_when_nobody_answers() {
    let (_server, client, mut events, mut conn) = phone_connected().await;
    let script = tokio::spawn(async move {
        request_pending(&mut conn).await;
        conn.recv_skip_pings().await
    });
    let started = Instant::now();
    let outcome = timeout(
        WAIT,
        pair_phone(&client, &mut events, Duration::from_millis(300)),
    )
    .await
    .unwrap();
    assert_eq!(outcome.err(), Some(PairingError::TimedOut));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(
        timeout(WAIT, script).await.unwrap().unwrap(),
        ClientMessage::Leave {
            session: session(S1)
        }
    );
}

#[tokio::test]
async fn dropping_the_phone_future_leaves_the_session() {
    let (_server, client, mut events, mut conn) = phone_connected().await;
    let (pending_sent_tx, pending_sent_rx) = tokio::sync::oneshot::channel();
    let script = tokio::spawn(async move {
        request_pending(&mut conn).await;
        let _ = pending_sent_tx.send(());
        conn.recv_skip_pings().await
    });
    {
        let pairing = pair_phone(&client, &mut events, WAIT);
        tokio::pin!(pairing);
        // Drive the pairing until the server said pair_pending, then a little more so the
        // phone reads it, then drop it.
        tokio::select! {
            _ = &mut pairing => panic!("pairing must not finish"),
            _ = async {
                pending_sent_rx.await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            } => {}
        }
    }
    assert_eq!(
        timeout(WAIT, script).await.unwrap().unwrap(),
        ClientMessage::Leave {
            session: session(S1)
        }
    );
}

async fn next(desktop: &mut DesktopRegistration) -> RegistrationEvent {
    timeout(WAIT, desktop.next())
        .await
        .expect("no desktop event in time")
        .expect("desktop events ended")
}

/// Expect the prompt of session `s` to close with `outcome`.
async fn expect_prompt_closed(desktop: &mut DesktopRegistration, s: &str, outcome: PairOutcome) {
    match next(desktop).await {
        RegistrationEvent::PromptClosed {
            session: closed,
            outcome: got,
        } => assert_eq!((closed, got), (session(s), outcome)),
        other => panic!("expected {s} to close with {outcome:?}, got {other:?}"),
    }
}

/// Register a desktop against `conn`, which answers with `code`.
async fn registered_desktop(server: &mut FakeServer) -> (DesktopRegistration, FakeConn) {
    let (client, events, mut conn) = connected(server).await;
    let script = tokio::spawn(async move {
        match conn.recv_skip_pings().await {
            ClientMessage::RegisterDesktop { device_id, .. } => {
                assert_eq!(device_id.as_str(), "desk");
            }
            other => panic!("expected register_desktop, got {other:?}"),
        }
        conn.send(&ServerMessage::Registered {
            code: code("ABCD"),
            expires_in_ms: None,
        })
        .await;
        conn
    });
    let desktop = timeout(
        WAIT,
        DesktopRegistration::register(client, events, device("desk")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(desktop.code(), &code("ABCD"));
    (desktop, script.await.unwrap())
}

fn prompt(s: &str, expires_in_ms: u64) -> ServerMessage {
    ServerMessage::PairPrompt {
        session: session(s),
        peer: device("phone"),
        expires_in_ms,
        auth: None,
    }
}

#[tokio::test]
async fn desktop_prompt_accept_paired() {
    init_tracing();
    let mut server = FakeServer::start().await;
    let (mut desktop, mut conn) = registered_desktop(&mut server).await;
    conn.send(&prompt(S1, 60_000)).await;
    match next(&mut desktop).await {
        RegistrationEvent::Prompt {
            session: s,
            peer,
            expires_in,
            ..
        } => {
            assert_eq!(s, session(S1));
            assert_eq!(peer, device("phone"));
            assert!(expires_in > Duration::from_secs(55) && expires_in <= Duration::from_secs(60));
        }
        other => panic!("expected Prompt, got {other:?}"),
    }
    desktop.accept(&session(S1)).await.unwrap();
    assert_eq!(
        conn.recv_skip_pings().await,
        ClientMessage::PairResponse {
            session: session(S1),
            accept: true,
            auth: None
        }
    );
    conn.send(&result(Some(S1), PairOutcome::Accepted, "phone"))
        .await;
    conn.send(&ServerMessage::Signal {
        session: session(S1),
        signal: offer(),
    })
    .await;
    match next(&mut desktop).await {
        RegistrationEvent::Paired(paired) => {
            assert_eq!(paired.session, session(S1));
            assert_eq!(paired.peer, device("phone"));
            let mut link = paired.link;
            assert_eq!(
                timeout(WAIT, link.incoming.recv()).await.unwrap(),
                Some(LinkEvent::Signal(offer()))
            );
        }
        other => panic!("expected Paired, got {other:?}"),
    }
    // Accepting a session that is not a pending prompt is refused locally.
    assert_eq!(
        desktop.accept(&session(S1)).await,
        Err(PairingError::UnknownSession(session(S1)))
    );
}

#[tokio::test]
async fn desktop_reject_and_prompt_timeout() {
    init_tracing();
    let mut server = FakeServer::start().await;
    let (mut desktop, mut conn) = registered_desktop(&mut server).await;
    conn.send(&prompt(S1, 60_000)).await;
    conn.send(&prompt(S2, 200)).await;
    assert!(matches!(
        next(&mut desktop).await,
        RegistrationEvent::Prompt { .. }
    ));
    assert!(matches!(
        next(&mut desktop).await,
        RegistrationEvent::Prompt { .. }
    ));
    desktop.reject(&session(S1)).await.unwrap();
    assert_eq!(
        conn.recv_skip_pings().await,
        ClientMessage::PairResponse {
            session: session(S1),
            accept: false,
            auth: None
        }
    );
    // S2 expires by the local clock while nobody answers it.
    expect_prompt_closed(&mut desktop, S2, PairOutcome::TimedOut).await;
    conn.send(&result(Some(S1), PairOutcome::Rejected, ""))
        .await;
    expect_prompt_closed(&mut desktop, S1, PairOutcome::Rejected).await;
}

#[tokio::test]
async fn desktop_reregisters_after_losing_the_server() {
    init_tracing();
    let mut server = FakeServer::start().await;
    let (mut desktop, mut conn) = registered_desktop(&mut server).await;
    conn.send(&prompt(S1, 60_000)).await;
    assert!(matches!(
        next(&mut desktop).await,
        RegistrationEvent::Prompt { .. }
    ));
    drop(conn);
    expect_prompt_closed(&mut desktop, S1, PairOutcome::DesktopGone).await;
    assert!(matches!(
        next(&mut desktop).await,
        RegistrationEvent::Disconnected
    ));

    // The server comes back; drive the desktop while scripting the new connection.
    let script = tokio::spawn(async move {
        let mut conn = server.accept().await;
        conn.handshake(1_000, 5_000).await;
        let register = conn.recv_skip_pings().await;
        conn.send(&ServerMessage::Registered {
            code: code("WXYZ"),
            expires_in_ms: None,
        })
        .await;
        (register, conn, server)
    });
    assert!(matches!(
        next(&mut desktop).await,
        RegistrationEvent::Reconnected
    ));
    match next(&mut desktop).await {
        RegistrationEvent::CodeChanged(new) => assert_eq!(new, code("WXYZ")),
        other => panic!("expected CodeChanged, got {other:?}"),
    }
    assert_eq!(desktop.code(), &code("WXYZ"));
    let (register, mut conn, _server) = script.await.unwrap();
    assert!(matches!(register, ClientMessage::RegisterDesktop { .. }));
    // Prompts work on the new connection.
    conn.send(&prompt(S2, 60_000)).await;
    assert!(matches!(
        next(&mut desktop).await,
        RegistrationEvent::Prompt { session: s, .. } if s == session(S2)
    ));
}
