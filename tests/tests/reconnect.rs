//! Clients that lose the signaling server at the same instant (a restart for an upgrade, an
//! instance that dies behind a load balancer) come back spread over the backoff's jitter
//! window, not in lockstep: real clients, the real server, restarted on the same port. A phone
//! whose signaling connection drops resumes its session on a new one and can still signal an
//! ICE restart over it.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use proxim_core::Event;
use proxim_core::peer::Payload;
use proxim_core::signaling::{Backoff, SignalingClient, SignalingConfig, SignalingEvent};
use proxim_protocol::ClientMessage;
use proxim_testkit::devices::{loopback_config, next_message, pair_with, register};
use proxim_testkit::mitm::{self, ConnIndex, MitmProxy};
use proxim_tests::start_server;

/// Clients in the test.
const CLIENTS: usize = 30;
/// The first reconnect waits within [FIRST / 2, FIRST] (the default jitter, 0.5).
const FIRST: Duration = Duration::from_millis(800);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_lost_in_a_restart_come_back_spread_over_the_jitter_window() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let url = server.ws_url();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut config = SignalingConfig::new(&url);
        config.connect_timeout = Duration::from_secs(2);
        config.backoff = Backoff {
            initial: FIRST,
            max_attempts: Some(20),
            ..Backoff::default()
        };
        assert_eq!(config.backoff.jitter, 0.5, "the default jitter");
        clients.push(SignalingClient::connect(config).await.expect("connects"));
    }

    server.shutdown().await;
    let lost = Instant::now();
    // Back on the same port (a first attempt that comes before it just retries: the
    // checks below are about attempt 1's draw and about when each client is back).
    let server = start_server(move |c| c.bind = addr).await;

    // Each client: the delay it drew for attempt 1, and when it was back.
    let mut waits = tokio::task::JoinSet::new();
    for (client, mut events) in clients {
        waits.spawn(async move {
            let mut first = None;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let event = tokio::time::timeout_at(deadline, events.next())
                    .await
                    .expect("reconnected within 10 s")
                    .expect("events go on");
                match event {
                    SignalingEvent::Reconnecting { attempt, delay } => {
                        first.get_or_insert((attempt, delay));
                    }
                    SignalingEvent::Reconnected(_) => break,
                    SignalingEvent::Closed => panic!("the client gave up"),
                    _ => {}
                }
            }
            let back = lost.elapsed();
            client.close().await;
            (
                first.expect("a Reconnecting event before Reconnected"),
                back,
            )
        });
    }
    let mut delays = Vec::new();
    let mut backs = Vec::new();
    while let Some(done) = waits.join_next().await {
        let ((attempt, delay), back) = done.unwrap();
        assert_eq!(attempt, 1);
        assert!(
            delay >= FIRST / 2 && delay <= FIRST,
            "attempt 1 drew {delay:?}, outside [{:?}, {FIRST:?}]",
            FIRST / 2
        );
        delays.push(delay);
        backs.push(back);
    }
    assert_eq!(delays.len(), CLIENTS);
    let spread = |v: &[Duration]| {
        v.iter().max().copied().unwrap_or_default() - v.iter().min().copied().unwrap_or_default()
    };
    // 30 uniform draws over a 400 ms window span less than 150 ms with probability ~1e-9;
    // lockstep clients (jitter 0) would all draw the same delay.
    assert!(
        spread(&delays) >= Duration::from_millis(150),
        "delays drawn within {:?}: {delays:?}",
        spread(&delays)
    );
    // And they really came back spread out, not all at once (less strict: a loaded machine
    // adds its own noise to when each one is back).
    assert!(
        spread(&backs) >= Duration::from_millis(100),
        "clients came back within {:?}: {backs:?}",
        spread(&backs)
    );
    server.shutdown().await;
}

/// Events of `connection` until a `PathChanged`: the `Reconnecting` attempts on the way.
async fn until_new_path(connection: &proxim_core::Connection) -> Vec<u32> {
    let mut attempts = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), connection.next_event())
            .await
            .expect("an event within 20 s")
            .expect("events go on");
        match event {
            Event::Reconnecting { attempt, .. } => attempts.push(attempt),
            Event::PathChanged(_) if !attempts.is_empty() => return attempts,
            Event::Closed { reason } => panic!("closed: {reason}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_phone_whose_signaling_drops_resumes_its_session_and_can_still_restart_ice() {
    let server = start_server(|_| {}).await;
    // Both devices reach the server through a proxy that can cut one connection the way a
    // network that goes away does: no goodbye either way.
    let proxy = MitmProxy::start(&server.ws_url(), mitm::transparent())
        .await
        .unwrap();
    let url = proxy.ws_url();
    let mut desktop = register(loopback_config(&url, "Resume desktop", None)).await;
    let code = desktop.code().to_owned();
    let (phone, mut desk) = pair_with(
        &mut desktop,
        loopback_config(&url, "Resume phone", None),
        &code,
    )
    .await;
    // The phone's connection: the one that asked to pair.
    let phone_conn: ConnIndex = proxy
        .log()
        .find_map(|e| {
            matches!(e.frame.as_client(), Some(ClientMessage::PairRequest { .. })).then_some(e.conn)
        })
        .expect("the phone's pair_request went through the proxy");
    proxy.cut(phone_conn);
    // The phone reconnects (through the proxy again) and resumes the session.
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.stats().sessions_resumed == 0 {
        assert!(
            Instant::now() < deadline,
            "not resumed: {:?}",
            server.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = server.stats();
    assert_eq!(stats.members_away, 1, "{stats:?}");
    assert_eq!(stats.sessions_active, 1, "{stats:?}");
    // The resumed session carries an ICE restart: both sides restart and find the path.
    phone.network_changed().await.expect("a restart starts");
    assert_eq!(until_new_path(&phone).await, [1]);
    assert_eq!(until_new_path(&desk).await, [1]);
    phone.send_text("after the resume").await.unwrap();
    assert_eq!(
        next_message(&mut desk).await,
        Payload::Text("after the resume".into())
    );
    phone.close().await;
    desk.close().await;
    desktop.close().await;
    proxy.shutdown();
    server.shutdown().await;
}
