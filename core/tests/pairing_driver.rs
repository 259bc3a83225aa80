//! The pairing drivers (`pair_as_phone`, `DesktopRegistration`) against scripted fake servers.
#![allow(clippy::unwrap_used)]

mod signaling_fake;

use std::time::{Duration, Instant};

use proxim_core::LinkEvent;
use proxim_core::pairing::{
    DesktopEvent, DesktopRegistration, PairTarget, PairingError, pair_as_phone,
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

fn offer() -> Signal {
    Signal::Offer {
        sdp: proxim_protocol::Sdp::new("v=0\r\n").unwrap(),
    }
}

#[tokio::test]
async fn phone_is_accepted_and_gets_a_working_link() {
    init_tracing();
    let mut server = FakeServer::start().await;
    let (client, mut events, mut conn) = connected(&mut server).await;
    let script = tokio::spawn(async move {
        expect_pair_request(&mut conn).await;
        conn.send(&pending(S1)).await;
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
    let paired = timeout(
        WAIT,
        pair_as_phone(
            &client,
            &mut events,
            PairTarget::Code(code("ABCD")),
            device("phone"),
            None,
            WAIT,
        ),
    )
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

#[tokio::test]
async fn phone_is_rejected() {
    init_tracing();
    let mut server = FakeServer::start().await;
    let (client, mut events, mut conn) = connected(&mut server).await;
    let script = tokio::spawn(async move {
        expect_pair_request(&mut conn).await;
        conn.send(&pending(S1)).await;
        // Noise the phone must ignore: another session's result.
        conn.send(&result(Some(S2), PairOutcome::Accepted, "other"))
            .await;
        conn.send(&result(Some(S1), PairOutcome::Rejected, "desk"))
            .await;
        conn
    });
    let outcome = timeout(
        WAIT,
        pair_as_phone(
            &client,
            &mut events,
            PairTarget::Code(code("ABCD")),
            device("phone"),
            None,
            WAIT,
        ),
    )
    .await
    .unwrap();
    assert_eq!(outcome.err(), Some(PairingError::Rejected));
    script.await.unwrap();
}

#[tokio::test]
async fn phone_with_an_unknown_code() {
    init_tracing();
    let mut server = FakeServer::start().await;
    let (client, mut events, mut conn) = connected(&mut server).await;
    let script = tokio::spawn(async move {
        expect_pair_request(&mut conn).await;
        conn.send(&result(None, PairOutcome::UnknownCode, "")).await;
        conn
    });
    let outcome = timeout(
        WAIT,
        pair_as_phone(
            &client,
            &mut events,
            PairTarget::Code(code("ABCD")),
            device("phone"),
            None,
            WAIT,
        ),
    )
    .await
    .unwrap();
    assert_eq!(outcome.err(), Some(PairingError::UnknownCode));
    script.await.unwrap();
}

#[tokio::test]
async fn phone_times_out_and_leaves_when_nobody_answers() {
    init_tracing();
    let mut server = FakeServer::start().await;
    let (client, mut events, mut conn) = connected(&mut server).await;
    let script = tokio::spawn(async move {
        expect_pair_request(&mut conn).await;
        conn.send(&pending(S1)).await;
        conn.recv_skip_pings().await
    });
    let started = Instant::now();
    let outcome = timeout(
        WAIT,
        pair_as_phone(
            &client,
            &mut events,
            PairTarget::Code(code("ABCD")),
            device("phone"),
            None,
            Duration::from_millis(300),
        ),
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
    init_tracing();
    let mut server = FakeServer::start().await;
    let (client, mut events, mut conn) = connected(&mut server).await;
    let (pending_sent_tx, pending_sent_rx) = tokio::sync::oneshot::channel();
    let script = tokio::spawn(async move {
        expect_pair_request(&mut conn).await;
        conn.send(&pending(S1)).await;
        let _ = pending_sent_tx.send(());
        conn.recv_skip_pings().await
    });
    {
        let pairing = pair_as_phone(
            &client,
            &mut events,
            PairTarget::Code(code("ABCD")),
            device("phone"),
            None,
            WAIT,
        );
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

#[tokio::test]
async fn phone_fails_when_the_server_goes_away() {
    init_tracing();
    let mut server = FakeServer::start().await;
    let (client, mut events, mut conn) = connected(&mut server).await;
    let script = tokio::spawn(async move {
        expect_pair_request(&mut conn).await;
        conn.send(&pending(S1)).await;
        drop(conn);
    });
    let outcome = timeout(
        WAIT,
        pair_as_phone(
            &client,
            &mut events,
            PairTarget::Code(code("ABCD")),
            device("phone"),
            None,
            WAIT,
        ),
    )
    .await
    .unwrap();
    assert_eq!(outcome.err(), Some(PairingError::ServerLost));
    script.await.unwrap();
}

async fn next(desktop: &mut DesktopRegistration) -> DesktopEvent {
    timeout(WAIT, desktop.next())
        .await
        .expect("no desktop event in time")
        .expect("desktop events ended")
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
        DesktopEvent::Prompt {
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
        DesktopEvent::Paired(paired) => {
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
        DesktopEvent::Prompt { .. }
    ));
    assert!(matches!(
        next(&mut desktop).await,
        DesktopEvent::Prompt { .. }
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
    match next(&mut desktop).await {
        DesktopEvent::PromptClosed {
            session: s,
            outcome,
        } => {
            assert_eq!((s, outcome), (session(S2), PairOutcome::TimedOut));
        }
        other => panic!("expected S2 to time out, got {other:?}"),
    }
    conn.send(&result(Some(S1), PairOutcome::Rejected, ""))
        .await;
    match next(&mut desktop).await {
        DesktopEvent::PromptClosed {
            session: s,
            outcome,
        } => {
            assert_eq!((s, outcome), (session(S1), PairOutcome::Rejected));
        }
        other => panic!("expected S1 rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn desktop_reregisters_after_losing_the_server() {
    init_tracing();
    let mut server = FakeServer::start().await;
    let (mut desktop, mut conn) = registered_desktop(&mut server).await;
    conn.send(&prompt(S1, 60_000)).await;
    assert!(matches!(
        next(&mut desktop).await,
        DesktopEvent::Prompt { .. }
    ));
    drop(conn);
    match next(&mut desktop).await {
        DesktopEvent::PromptClosed {
            session: s,
            outcome,
        } => {
            assert_eq!((s, outcome), (session(S1), PairOutcome::DesktopGone));
        }
        other => panic!("expected the prompt to close, got {other:?}"),
    }
    assert!(matches!(
        next(&mut desktop).await,
        DesktopEvent::Disconnected
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
        DesktopEvent::Reconnected
    ));
    match next(&mut desktop).await {
        DesktopEvent::CodeChanged(new) => assert_eq!(new, code("WXYZ")),
        other => panic!("expected CodeChanged, got {other:?}"),
    }
    assert_eq!(desktop.code(), &code("WXYZ"));
    let (register, mut conn, _server) = script.await.unwrap();
    assert!(matches!(register, ClientMessage::RegisterDesktop { .. }));
    // Prompts work on the new connection.
    conn.send(&prompt(S2, 60_000)).await;
    assert!(matches!(
        next(&mut desktop).await,
        DesktopEvent::Prompt { session: s, .. } if s == session(S2)
    ));
}
