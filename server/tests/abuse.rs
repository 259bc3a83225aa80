//! Abuse limits against a real server on 127.0.0.1:0 over real WebSockets: the per-connection
//! message budget, the per-IP connection cap (and which forwarded headers may move a client to
//! another IP), pair attempts per code, and the randomness of ids.
// Test helpers outside `#[test]` functions unwrap freely, like the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{WAIT, get_json, start_server};
use proxim_protocol::{
    ClientMessage, ErrorCode, Sdp, ServerMessage, SessionEndReason, SessionId, Signal,
};
use proxim_testkit::raw_client::messages::pair_request;
use proxim_testkit::raw_client::{RawClient, accepted_pair};

fn signal_in(session: &SessionId, n: usize) -> ClientMessage {
    ClientMessage::Signal {
        session: session.clone(),
        signal: Signal::Offer {
            sdp: Sdp::new(format!("v=0\r\ns={n}\r\n")).unwrap(),
        },
    }
}

fn is_error(message: &ServerMessage, want: ErrorCode) -> bool {
    matches!(message, ServerMessage::Error { code, .. } if *code == want)
}

// ---------------------------------------------------------------------------------------------
// 1. Message budget
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_flooding_client_is_cut_off_while_a_pairing_on_the_same_server_completes() {
    // The defaults: 50 messages/s, burst 100, cut off after 50 refused frames.
    let server = start_server(|_| {}).await;

    // A lone flooder: pings as fast as it can, never reads.
    let mut flooder = RawClient::greeted(&server.ws_url(), WAIT).await;
    let lone = tokio::spawn(async move {
        let mut sent = 0;
        while sent < 3000 && flooder.try_send_text(r#"{"type":"ping","seq":1}"#).await {
            sent += 1;
        }
        flooder.expect_closed().await;
    });

    // A flooding session member: the phone of an accepted pair floods its desktop with offers.
    let (mut victim_desktop, mut flooding_phone, flooded) =
        accepted_pair(&server.ws_url(), WAIT).await;
    let member = tokio::spawn(async move {
        let mut sent = 0;
        while sent < 3000
            && flooding_phone
                .try_send_text(&signal_in(&flooded, sent).encode())
                .await
        {
            sent += 1;
        }
        flooding_phone.expect_closed().await;
        flooded
    });

    // Meanwhile a well-behaved pairing completes and signals flow both ways.
    let (mut desktop, mut phone, session) = accepted_pair(&server.ws_url(), WAIT).await;
    phone.send(&signal_in(&session, 1)).await;
    desktop.expect_signal_in(&session).await;
    desktop.send(&signal_in(&session, 2)).await;
    phone.expect_signal_in(&session).await;

    tokio::time::timeout(WAIT, lone).await.unwrap().unwrap();
    let flooded = tokio::time::timeout(WAIT, member).await.unwrap().unwrap();
    // The flooder's desktop got at most a budget's worth of signals, then the session ended.
    let mut relayed = 0;
    loop {
        match victim_desktop.recv().await {
            ServerMessage::Signal { .. } => relayed += 1,
            ServerMessage::SessionEnded { session, reason } => {
                assert_eq!(session, flooded);
                assert_eq!(reason, SessionEndReason::PeerDisconnected);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((1..=150).contains(&relayed), "{relayed} signals relayed");
    victim_desktop.ping_pong(1).await;

    // The good pair saw nothing of it and still works.
    desktop.ping_pong(1).await;
    phone.ping_pong(1).await;
    phone.expect_silence().await;
    let stats = get_json(&server, "/api/stats").await;
    assert_eq!(stats["rate_limit_disconnects"], 2, "{stats}");
    assert!(
        stats["frames_rate_limited"].as_u64().unwrap() >= 100,
        "{stats}"
    );
    assert_eq!(stats["sessions_active"], 1, "{stats}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_short_burst_over_the_budget_is_answered_rate_limited_but_not_cut_off() {
    let server = start_server(|c| {
        c.rate_limit = 1;
        c.rate_burst = 5;
        c.rate_strikes = 10;
    })
    .await;
    // `hello` took one of the five tokens.
    let mut client = RawClient::greeted(&server.ws_url(), WAIT).await;
    for seq in 0..7 {
        client.send(&ClientMessage::Ping { seq }).await;
    }
    let mut replies = Vec::new();
    for _ in 0..7 {
        replies.push(client.recv().await);
    }
    for (seq, reply) in replies.iter().take(4).enumerate() {
        assert_eq!(*reply, ServerMessage::Pong { seq: seq as u64 });
    }
    let limited = replies
        .iter()
        .filter(|m| is_error(m, ErrorCode::RateLimited))
        .count();
    assert!(limited >= 2, "{replies:?}");
    let explained = replies.iter().any(|m| {
        matches!(m, ServerMessage::Error { message, .. } if message.as_str().contains("1 messages/s"))
    });
    assert!(explained, "the error names the limit: {replies:?}");
    // After a pause the connection is served again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client.ping_pong(100).await;
    let stats = server.stats();
    assert!(stats.frames_rate_limited >= 2);
    assert_eq!(stats.rate_limit_disconnects, 0);
    assert_eq!(stats.connections_open, 1);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Connections per IP
// ---------------------------------------------------------------------------------------------

/// Connect with `headers`, retrying while the server answers 429 (a slot is being released).
async fn connect_when_free(
    server: &proxim_server::RunningServer,
    headers: &[(&'static str, &str)],
) -> RawClient {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match RawClient::greeted_with(&server.ws_url(), WAIT, headers).await {
            Ok(client) => return client,
            Err(429) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("refused with {status}"),
        }
    }
}

#[tokio::test]
async fn connections_over_the_per_ip_cap_are_refused_with_429() {
    let server = start_server(|c| c.max_connections_per_ip = 3).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(RawClient::greeted(&server.ws_url(), WAIT).await);
    }
    for _ in 0..2 {
        assert_eq!(
            RawClient::try_open_with(&server.ws_url(), WAIT, &[])
                .await
                .err(),
            Some(429)
        );
    }
    let stats = get_json(&server, "/api/stats").await;
    assert_eq!(stats["connections_refused_per_ip"], 2, "{stats}");
    assert_eq!(stats["connections_open"], 3, "{stats}");
    assert_eq!(stats["client_ips"], 1, "{stats}");
    // The open connections are not affected.
    for (seq, client) in clients.iter_mut().enumerate() {
        client.ping_pong(seq as u64).await;
    }
    // Closing one frees its slot.
    clients.pop().unwrap().close().await;
    let mut again = connect_when_free(&server, &[]).await;
    again.ping_pong(7).await;
    assert_eq!(server.stats().connections_open, 3);
    let config = get_json(&server, "/api/config").await;
    assert_eq!(config["limits"]["max_connections_per_ip"], 3, "{config}");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Forwarded client addresses
// ---------------------------------------------------------------------------------------------

/// Assert that a connection carrying each one of `headers` is refused with HTTP 429.
async fn expect_429_for_each(
    server: &proxim_server::RunningServer,
    headers: &[(&'static str, &str)],
) {
    for header in headers {
        assert_eq!(
            RawClient::try_open_with(&server.ws_url(), WAIT, &[*header])
                .await
                .err(),
            Some(429),
            "{header:?}"
        );
    }
}

#[tokio::test]
async fn forged_forwarded_headers_from_an_untrusted_peer_do_not_dodge_the_cap() {
    // No trusted proxies (the default): 127.0.0.1 is the client, whatever the headers say.
    let server = start_server(|c| c.max_connections_per_ip = 1).await;
    let url = server.ws_url();
    let mut first = RawClient::greeted_with(&url, WAIT, &[("x-forwarded-for", "198.51.100.1")])
        .await
        .unwrap();
    let forged = [
        ("x-forwarded-for", "198.51.100.2"),
        ("forwarded", "for=198.51.100.3"),
        ("x-forwarded-for", "198.51.100.4, 198.51.100.5"),
    ];
    expect_429_for_each(&server, &forged).await;
    let stats = server.stats();
    assert_eq!(stats.client_ips, 1);
    assert_eq!(stats.connections_refused_per_ip, 3);
    first.ping_pong(1).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client_and_the_cap_follows_it() {
    let server = start_server(|c| {
        c.max_connections_per_ip = 1;
        c.trusted_proxies = proxim_server::TrustedProxies::parse("127.0.0.1").unwrap();
    })
    .await;
    let url = server.ws_url();
    // Three different clients behind the proxy (the last is the proxy itself: no header).
    let mut a = RawClient::greeted_with(&url, WAIT, &[("x-forwarded-for", "198.51.100.1")])
        .await
        .unwrap();
    let mut b = RawClient::greeted_with(&url, WAIT, &[("forwarded", "for=\"198.51.100.2:4711\"")])
        .await
        .unwrap();
    let mut c = RawClient::greeted_with(&url, WAIT, &[]).await.unwrap();
    assert_eq!(server.stats().client_ips, 3);
    // A second connection from a client already at its cap is refused, also through a chain of
    // trusted hops.
    let again = [
        ("x-forwarded-for", "198.51.100.1"),
        ("x-forwarded-for", "203.0.113.9, 198.51.100.1, 127.0.0.1"),
        ("forwarded", "for=198.51.100.2"),
    ];
    expect_429_for_each(&server, &again).await;
    assert_eq!(server.stats().connections_refused_per_ip, 3);
    for (seq, client) in [&mut a, &mut b, &mut c].into_iter().enumerate() {
        client.ping_pong(seq as u64).await;
    }
    let config = get_json(&server, "/api/config").await;
    assert_eq!(
        config["limits"]["trusted_proxies"], "127.0.0.1/32",
        "{config}"
    );
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Pair attempts per code
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn pair_attempts_per_code_are_limited_and_the_desktop_is_told() {
    let window = Duration::from_secs(3);
    let server = start_server(|c| {
        c.pair_attempts = 3;
        c.pair_window = window;
        // Nobody times out while the test waits for the window to pass.
        c.prompt_timeout = Duration::from_secs(30);
        c.heartbeat_interval = Duration::from_secs(10);
        c.heartbeat_timeout = Duration::from_secs(30);
    })
    .await;
    let started = tokio::time::Instant::now();
    let mut desktop = RawClient::greeted(&server.ws_url(), WAIT).await;
    let code = desktop.register("desk-1", "Test desktop").await;
    let mut other_desktop = RawClient::greeted(&server.ws_url(), WAIT).await;
    let other_code = other_desktop.register("desk-2", "Other desktop").await;

    // Three attempts from two phones: all reach the desktop.
    let mut p1 = RawClient::greeted(&server.ws_url(), WAIT).await;
    let mut p2 = RawClient::greeted(&server.ws_url(), WAIT).await;
    p1.send(&pair_request(&code, None)).await;
    p1.expect_pending().await;
    for _ in 0..2 {
        p2.send(&pair_request(&code, None)).await;
        p2.expect_pending().await;
    }
    for _ in 0..3 {
        desktop.expect_prompt().await;
    }
    // The fourth, from a new phone, is refused, and the desktop is told.
    let mut p3 = RawClient::greeted(&server.ws_url(), WAIT).await;
    p3.send(&pair_request(&code, None)).await;
    p3.expect_error(ErrorCode::TooManyAttempts).await;
    desktop.expect_error(ErrorCode::TooManyAttempts).await;
    // The fifth is refused too; the desktop is told only once per lockout.
    p1.send(&pair_request(&code, None)).await;
    p1.expect_error(ErrorCode::TooManyAttempts).await;
    desktop.expect_silence().await;
    // Other codes are not affected.
    p3.send(&pair_request(&other_code, None)).await;
    p3.expect_pending().await;
    other_desktop.expect_prompt().await;
    assert!(started.elapsed() < window, "too slow to test the window");
    let stats = get_json(&server, "/api/stats").await;
    assert_eq!(stats["pair_attempts_refused"], 2, "{stats}");

    // Once the window has passed, the code accepts attempts again.
    tokio::time::sleep_until(started + window + Duration::from_millis(100)).await;
    p3.send(&pair_request(&code, None)).await;
    let session = p3.expect_pending().await;
    assert_eq!(desktop.expect_prompt().await.session, session);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Ids
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn session_and_connection_ids_are_128_bit_random() {
    let server = start_server(|c| c.pair_attempts = 0).await;
    let mut ids: Vec<String> = Vec::new();
    let mut desktop = RawClient::greeted(&server.ws_url(), WAIT).await;
    let code = desktop.register("desk-1", "Test desktop").await;
    let mut phones = Vec::new();
    for _ in 0..8 {
        let mut phone = RawClient::open_raw(&server.ws_url(), WAIT).await;
        let welcome = phone.say_hello().await;
        ids.push(welcome.connection_id.as_str().to_owned());
        phone.send(&pair_request(&code, None)).await;
        ids.push(phone.expect_pending().await.as_str().to_owned());
        phones.push(phone);
    }
    let values: Vec<u128> = ids
        .iter()
        .map(|id| {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            u128::from_str_radix(id, 16).unwrap()
        })
        .collect();
    // All distinct, and not a counter or a timestamp: both 64-bit halves differ everywhere.
    let high: HashSet<u64> = values.iter().map(|v| (v >> 64) as u64).collect();
    let low: HashSet<u64> = values.iter().map(|v| *v as u64).collect();
    assert_eq!(high.len(), values.len(), "{ids:?}");
    assert_eq!(low.len(), values.len(), "{ids:?}");
    // About half the bits are set (16 ids × 128 bits; a counter would be far below).
    let ones: u32 = values.iter().map(|v| v.count_ones()).sum();
    assert!((768..=1280).contains(&ones), "{ones} of 2048 bits set");
    server.shutdown().await;
}
