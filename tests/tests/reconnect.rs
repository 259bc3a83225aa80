//! Clients that lose the signaling server at the same instant (a restart for an upgrade, an
//! instance that dies behind a load balancer) come back spread over the backoff's jitter
//! window, not in lockstep: real clients, the real server, restarted on the same port.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use proxim_core::signaling::{Backoff, SignalingClient, SignalingConfig, SignalingEvent};
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
