//! The hub's unit tests: inputs in, outputs checked, with a hand-stepped clock.

use std::collections::HashSet;
use std::net::IpAddr;

use proxim_protocol::{ResumeToken, SessionEndReason, Signal};

use super::*;
use crate::events::ClientReport;
use crate::state::MemoryStore;

// ---------------------------------------------------------------------------------------------
// Connections, timers, shutdown
// ---------------------------------------------------------------------------------------------

#[test]
fn ids_are_128_bit_lowercase_hex() {
    let mut rng = StdRng::seed_from_u64(2);
    let a = random_hex128(&mut rng);
    let b = random_hex128(&mut rng);
    assert_ne!(a, b);
    ConnectionId::new(a.clone()).unwrap();
    SessionId::new(b).unwrap();
    assert_eq!(short(&a).len(), 8);
}

#[test]
fn ids_come_from_the_operating_systems_generator() {
    // Two hubs made with `new` must not share a seed: their first ids differ.
    let now = Instant::now();
    let (_, a) = Hub::new(config()).connect(remote(), None, now).unwrap();
    let (_, b) = Hub::new(config()).connect(remote(), None, now).unwrap();
    assert_ne!(a, b);
    for id in [&a, &b] {
        assert_eq!(id.as_str().len(), 32);
        u128::from_str_radix(id.as_str(), 16).unwrap();
    }
}

#[test]
fn timers_rearm_while_the_connection_talks() {
    let mut hub = hub();
    let t0 = Instant::now();
    let c = greeted(&mut hub, t0);
    let timeout = hub.config.heartbeat_timeout;
    let t1 = t0 + timeout / 2;
    hub.handle_text(c, PING, t1);
    drain(&mut hub);
    hub.handle_timeout(t0 + timeout);
    assert!(drain(&mut hub).is_empty(), "dropped although it pinged");
    assert_eq!(hub.poll_timeout(), Some(t1 + timeout));
    hub.handle_timeout(t1 + timeout);
    let out = drain(&mut hub);
    assert!(matches!(
        only(&out, c),
        ServerMessage::Bye { reason: Some(_) }
    ));
    assert_eq!(out.last(), Some(&closed(c, CloseHow::AfterQueued)));
    assert_eq!(hub.stats().stale_dropped, 1);
}

#[test]
fn a_connection_that_never_says_hello_is_dropped_at_the_hello_deadline() {
    let mut hub = hub();
    let t0 = Instant::now();
    let hello_timeout = hub.config.hello_timeout;
    assert!(hello_timeout < hub.config.heartbeat_timeout);
    let (silent, _) = hub.connect(remote(), None, t0).unwrap();
    // Talking (a ping before hello is refused) does not buy time: only hello does.
    let (talker, _) = hub.connect(remote(), None, t0).unwrap();
    hub.handle_text(talker, PING, t0 + hello_timeout / 2);
    let polite = greeted(&mut hub, t0);
    drain(&mut hub);
    assert_eq!(hub.poll_timeout(), Some(t0 + hello_timeout));
    hub.handle_timeout(t0 + hello_timeout);
    let out = drain(&mut hub);
    for conn in [silent, talker] {
        assert!(matches!(
            only(&out, conn),
            ServerMessage::Bye { reason: Some(reason) } if reason.as_str() == "no hello in time"
        ));
        assert!(out.contains(&closed(conn, CloseHow::AfterQueued)));
    }
    assert!(
        sent_to(&out, polite).is_empty(),
        "a greeted connection stays"
    );
    assert_eq!(hub.stats().stale_dropped, 2);
    assert_eq!(hub.stats().connections_open, 1);
}

#[test]
fn slow_reader_is_aborted_and_its_peer_told() {
    let mut hub = hub();
    let now = Instant::now();
    let (desk, phone, _, _) = answered(&mut hub, r#""accept":true"#, now);
    hub.handle_gone(phone, Gone::SlowReader, now);
    let out = drain(&mut hub);
    assert!(out.contains(&closed(phone, CloseHow::Abort)));
    assert!(matches!(
        only(&out, desk),
        ServerMessage::SessionEnded {
            reason: SessionEndReason::PeerDisconnected,
            ..
        }
    ));
    assert_eq!(hub.stats().slow_readers_dropped, 1);
    assert_eq!(hub.stats().sessions_active, 0);
}

#[test]
fn shutdown_says_bye_to_everyone_and_refuses_newcomers() {
    let mut hub = hub();
    let now = Instant::now();
    let a = greeted(&mut hub, now);
    let b = greeted(&mut hub, now);
    hub.shutdown(now);
    let out = drain(&mut hub);
    for c in [a, b] {
        assert!(matches!(only(&out, c), ServerMessage::Bye { .. }));
    }
    assert!(hub.connect(remote(), None, now).is_none());
    assert_eq!(hub.stats().connections_open, 0);
}

// ---------------------------------------------------------------------------------------------
// Abuse limits
// ---------------------------------------------------------------------------------------------

#[test]
fn the_message_budget_refuses_excess_frames_and_cuts_off_a_flooder() {
    let mut hub = hub_with(11, |c| {
        (c.rate_limit, c.rate_burst, c.rate_strikes) = (50, 100, 10)
    });
    let t0 = Instant::now();
    let c = greeted(&mut hub, t0); // the hello took one token
    let pings = |hub: &mut Hub, n: usize, now: Instant| {
        for _ in 0..n {
            hub.handle_text(c, PING, now);
        }
        drain(hub)
    };
    let out = sent_to(&pings(&mut hub, 99, t0), c);
    assert_eq!(out.len(), 99);
    assert!(out.iter().all(|m| matches!(m, ServerMessage::Pong { .. })));
    // Over budget: answered `rate_limited`, not handled.
    let out = sent_to(&pings(&mut hub, 1, t0), c);
    assert_eq!(errors(&out, ErrorCode::RateLimited), 1, "{out:?}");
    assert_eq!(out.len(), 1);
    // 50 messages/s: one token every 20 ms, so 1.5 tokens 30 ms later.
    let t1 = t0 + Duration::from_millis(30);
    let out = sent_to(&pings(&mut hub, 2, t1), c);
    assert!(
        matches!(
            out.as_slice(),
            [ServerMessage::Pong { .. }, ServerMessage::Error { .. }]
        ),
        "{out:?}"
    );
    assert_eq!(hub.stats().frames_rate_limited, 2);
    // Binary frames and WebSocket pings are charged too.
    hub.handle_binary(c, 3, t1);
    hub.handle_liveness(c, t1);
    assert_eq!(hub.stats().frames_rate_limited, 4);
    assert_eq!(error_count(&drain(&mut hub), c, ErrorCode::RateLimited), 2);
    // A pause that refills the whole budget forgives the strikes.
    let t2 = t1 + Duration::from_secs(2);
    let out = pings(&mut hub, 100 + 9, t2);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Close { .. })),
        "cut off too early"
    );
    assert_eq!(error_count(&out, c, ErrorCode::RateLimited), 9);
    // The tenth strike without a refill closes the connection, after its error.
    let out = pings(&mut hub, 1, t2);
    match only(&out, c) {
        ServerMessage::Error { code, message } => {
            assert_eq!(code, ErrorCode::RateLimited);
            assert_eq!(
                message.as_str(),
                "10 frames over the limit of 50 messages/s (burst 100); closing the connection"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(out.last(), Some(&closed(c, CloseHow::AfterQueued)));
    assert_eq!(hub.stats().rate_limit_disconnects, 1);
    assert_eq!(hub.stats().connections_open, 0);
    // Frames that were already in flight are ignored.
    assert!(pings(&mut hub, 1, t2).is_empty());
}

#[test]
fn a_flooder_does_not_spend_another_connections_budget() {
    let mut hub = hub_with(12, |c| {
        (c.rate_limit, c.rate_burst, c.rate_strikes) = (1, 2, 3)
    });
    let t0 = Instant::now();
    let flooder = greeted(&mut hub, t0);
    let calm = greeted(&mut hub, t0);
    for _ in 0..5 {
        hub.handle_text(flooder, PING, t0);
    }
    hub.handle_text(calm, r#"{"type":"ping","seq":2}"#, t0);
    let out = drain(&mut hub);
    assert!(out.contains(&closed(flooder, CloseHow::AfterQueued)));
    assert_eq!(sent_to(&out, calm), vec![ServerMessage::Pong { seq: 2 }]);
    // No limit at all with a rate of 0.
    let mut hub = hub_with(13, |c| c.rate_limit = 0);
    let c = greeted(&mut hub, t0);
    for _ in 0..10_000 {
        hub.handle_text(c, PING, t0);
    }
    assert_eq!(sent_to(&drain(&mut hub), c).len(), 10_000);
}

#[test]
fn pair_attempts_per_code_are_limited_in_a_sliding_window() {
    let mut hub = hub_with(14, |c| {
        (c.pair_attempts, c.pair_window) = (3, Duration::from_secs(60))
    });
    let t0 = Instant::now();
    let secs = |s: u64| t0 + Duration::from_secs(s);
    let (desk, code, _) = desktop(&mut hub, "desk", t0);
    let (other_desk, other_code, _) = desktop(&mut hub, "other", t0);
    // Three phones, one attempt each: all prompt the desktop.
    let phones: Vec<ConnKey> = (0..3).map(|_| greeted(&mut hub, t0)).collect();
    for (i, phone) in (0..).zip(&phones) {
        pair(&mut hub, *phone, &code, secs(i));
    }
    assert_eq!(sent_to(&drain(&mut hub), desk).len(), 3);
    // The fourth, from a phone that already tried, is refused; the desktop is told once.
    pair(&mut hub, phones[0], &code, secs(10));
    let out = drain(&mut hub);
    assert_eq!(error_count(&out, phones[0], ErrorCode::TooManyAttempts), 1);
    match only(&out, desk) {
        ServerMessage::Error { code, message } => {
            assert_eq!(code, ErrorCode::TooManyAttempts);
            assert_eq!(
                message.as_str(),
                "this desktop received 3 pairing requests within 60s; further requests are \
                 refused for 50s"
            );
        }
        other => panic!("{other:?}"),
    }
    let fresh = greeted(&mut hub, t0);
    pair(&mut hub, fresh, &code, secs(20));
    let out = drain(&mut hub);
    assert_eq!(error_count(&out, fresh, ErrorCode::TooManyAttempts), 1);
    assert!(sent_to(&out, desk).is_empty(), "told twice: {out:?}");
    assert_eq!(hub.stats().pair_attempts_refused, 2);
    // Another desktop's code is not affected.
    pair(&mut hub, fresh, &other_code, secs(20));
    assert!(matches!(
        only(&drain(&mut hub), other_desk),
        ServerMessage::PairPrompt { .. }
    ));
    // Once the first attempt is 60 s old, one more gets through.
    let late = greeted(&mut hub, t0);
    pair(&mut hub, late, &code, secs(60));
    assert!(matches!(
        only(&drain(&mut hub), late),
        ServerMessage::PairPending { .. }
    ));
}

#[test]
fn connect_requests_count_against_the_desktops_pair_attempts() {
    let mut hub = hub_with(26, |c| {
        (c.pair_attempts, c.pair_window) = (2, Duration::from_secs(60))
    });
    let t0 = Instant::now();
    let (desk, code, _) = desktop(&mut hub, "desk", t0);
    let phone = greeted(&mut hub, t0);
    pair(&mut hub, phone, &code, t0);
    connect(&mut hub, phone, "desk", t0);
    assert_eq!(sent_to(&drain(&mut hub), desk).len(), 2);
    connect(&mut hub, phone, "desk", t0);
    let out = drain(&mut hub);
    assert_eq!(error_count(&out, phone, ErrorCode::TooManyAttempts), 1);
    assert_eq!(error_count(&out, desk, ErrorCode::TooManyAttempts), 1);
    pair(&mut hub, phone, &code, t0);
    let out = drain(&mut hub);
    assert_eq!(error_count(&out, phone, ErrorCode::TooManyAttempts), 1);
    // Renewing the code does not reset the desktop's window.
    let (fresh, _) = only_registered(&renew(&mut hub, desk, t0), desk);
    pair(&mut hub, phone, &fresh, t0 + Duration::from_secs(1));
    let out = drain(&mut hub);
    assert_eq!(error_count(&out, phone, ErrorCode::TooManyAttempts), 1);
    assert_eq!(hub.stats().pair_attempts_refused, 3);
}

#[test]
fn connections_per_ip_are_capped() {
    let mut hub = hub_with(15, |c| c.max_connections_per_ip = 2);
    let a: IpAddr = "198.51.100.1".parse().unwrap();
    let b: IpAddr = "198.51.100.2".parse().unwrap();
    assert!(hub.reserve_ip(a) && hub.reserve_ip(a));
    assert!(!hub.reserve_ip(a));
    assert!(hub.reserve_ip(b));
    assert_eq!(hub.stats().connections_refused_per_ip, 1);
    assert_eq!(hub.stats().client_ips, 2);
    hub.release_ip(a);
    assert!(hub.reserve_ip(a));
}

// ---------------------------------------------------------------------------------------------
// Pairing sessions, connect requests
// ---------------------------------------------------------------------------------------------

#[test]
fn a_rejection_relays_the_desktops_auth_to_the_phone() {
    let mut hub = hub();
    let now = Instant::now();
    let (desk, phone, session, out) = answered(&mut hub, r#""accept":false,"auth":"bm8""#, now);
    let result = |conn| match only(&out, conn) {
        ServerMessage::PairResult {
            session: Some(s),
            outcome: PairOutcome::Rejected,
            auth,
            ..
        } if s == session => auth.map(|a| a.as_str().to_owned()),
        other => panic!("{other:?}"),
    };
    assert_eq!(result(phone).as_deref(), Some("bm8"));
    assert_eq!(result(desk), None);
    assert_eq!(hub.stats().pairs_rejected, 1);
}

#[test]
fn connect_request_reaches_the_latest_registration_of_the_device() {
    let mut hub = hub();
    let t0 = Instant::now();
    let a = desktop(&mut hub, "desk", t0).0;
    let phone = greeted(&mut hub, t0);
    connect(&mut hub, phone, "desk", t0);
    let out = drain(&mut hub);
    let session = match only(&out, a) {
        ServerMessage::PairPrompt {
            session,
            peer,
            auth,
            ..
        } => {
            assert_eq!(peer.device_id.as_str(), "p");
            assert_eq!(auth.as_ref().map(AuthPayload::as_str), Some("cGhvbmU"));
            session
        }
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        only(&out, phone),
        ServerMessage::PairPending { session: s, .. } if s == session
    ));
    // A second live registration of the same device takes the routing.
    let b = desktop(&mut hub, "desk", t0).0;
    connect(&mut hub, phone, "desk", t0);
    let out = drain(&mut hub);
    assert!(sent_to(&out, a).is_empty());
    prompted(&out, b);
    // When it leaves, the earlier one is reached again; when both left, the desktop is
    // offline.
    gone(&mut hub, b, t0);
    connect(&mut hub, phone, "desk", t0);
    prompted(&drain(&mut hub), a);
    gone(&mut hub, a, t0);
    for device in ["desk", "nobody"] {
        let phone = greeted(&mut hub, t0);
        connect(&mut hub, phone, device, t0);
        assert!(matches!(
            only(&drain(&mut hub), phone),
            ServerMessage::PairResult {
                session: None,
                outcome: PairOutcome::DesktopOffline,
                ..
            }
        ));
    }
    let stats = hub.stats();
    assert_eq!((stats.connect_requests, stats.desktops_offline), (5, 2));
    assert_eq!(stats.pair_requests, 0);
    // A desktop cannot send one.
    let c = desktop(&mut hub, "desk2", t0).0;
    connect(&mut hub, c, "desk2", t0);
    assert_eq!(
        error_count(&drain(&mut hub), c, ErrorCode::AlreadyRegistered),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// Codes: uniqueness, reservation, lifetime, renewal, retirement
// ---------------------------------------------------------------------------------------------

#[test]
fn registered_codes_are_unique_even_with_a_tiny_code_space() {
    // With code length 4 there are 810_000 codes; register many desktops and check no
    // two connections ever hold the same code.
    let mut hub = hub_with(3, |c| c.code_length = 4);
    let now = Instant::now();
    let mut codes = HashSet::new();
    for i in 0..500 {
        assert!(codes.insert(desktop(&mut hub, &format!("dev{i}"), now).1));
    }
    assert_eq!(hub.stats().desktops, 500);
}

#[test]
fn a_returning_desktop_gets_its_code_back_and_others_do_not_take_it() {
    let mut hub = hub();
    let t0 = Instant::now();
    let (d1, code, _) = desktop(&mut hub, "desk", t0);
    gone(&mut hub, d1, t0);
    assert_eq!(hub.stats().desktops, 0);
    // A pair request for the reserved code finds no desktop.
    assert_eq!(
        try_code(&mut hub, &code, t0),
        Some(PairOutcome::UnknownCode)
    );
    let t1 = t0 + Duration::from_secs(60);
    let (d2, back, _) = desktop(&mut hub, "desk", t1);
    assert_eq!(back, code);
    // After the reservation lapses, a new registration gets a fresh code.
    gone(&mut hub, d2, t1);
    hub.handle_timeout(t1 + Duration::from_secs(5 * 60 + 1));
    assert!(hub.codes.is_empty());
}

#[test]
fn an_expired_code_is_replaced_and_then_answers_code_expired() {
    let mut hub = timed_hub(21, |_| {});
    let t0 = Instant::now();
    let (desk, old, left_ms) = desktop(&mut hub, "desk", t0);
    assert_eq!(left_ms, Some(600_000));
    // A pending prompt from before the expiry survives it.
    let early = greeted(&mut hub, t0);
    pair(
        &mut hub,
        early,
        &old,
        t0 + TEN_MIN - Duration::from_secs(30),
    );
    drain(&mut hub);
    assert!(hub.poll_timeout().is_some_and(|t| t <= t0 + TEN_MIN));
    hub.handle_timeout(t0 + TEN_MIN - Duration::from_millis(1));
    assert!(
        registered(&drain(&mut hub), desk).is_empty(),
        "expired early"
    );
    let fresh = expires_into_fresh(&mut hub, desk, &old, t0 + TEN_MIN);
    let t1 = t0 + TEN_MIN + Duration::from_secs(1);
    assert_eq!(try_code(&mut hub, &fresh, t1), None);
    let stats = hub.stats();
    assert_eq!(
        (
            stats.expired_codes,
            stats.codes_retired,
            stats.unknown_codes
        ),
        (1, 1, 0)
    );
    assert_eq!(stats.sessions_pending, 2);
    // The fresh code expires in turn, ten minutes after it was issued.
    hub.handle_timeout(t0 + 2 * TEN_MIN);
    assert_eq!(registered(&drain(&mut hub), desk).len(), 1);
}

#[test]
fn without_a_code_ttl_codes_never_expire() {
    let mut hub = timed_hub(22, |c| c.code_ttl = Duration::ZERO);
    let t0 = Instant::now();
    let (desk, code, left_ms) = desktop(&mut hub, "desk", t0);
    assert_eq!(left_ms, None);
    let late = t0 + Duration::from_secs(3600);
    hub.handle_timeout(late);
    assert!(registered(&drain(&mut hub), desk).is_empty());
    assert_eq!(try_code(&mut hub, &code, late), None);
}

#[test]
fn a_returning_desktop_keeps_the_time_its_code_had_left() {
    let mut hub = timed_hub(23, |c| c.code_reservation = Duration::from_secs(5 * 60));
    let t0 = Instant::now();
    let min = |m: u64| t0 + Duration::from_secs(60 * m);
    let (d1, code, _) = desktop(&mut hub, "desk", t0);
    gone(&mut hub, d1, min(2));
    let (d2, back, left_ms) = desktop(&mut hub, "desk", min(4));
    assert_eq!((&back, left_ms), (&code, Some(6 * 60 * 1000)));
    // It expires at the original time, on the new connection.
    let fresh = expires_into_fresh(&mut hub, d2, &code, min(10));

    // The fresh code expires at min(20); its desktop leaves at min(18) and returns at
    // min(21), within its reservation but after the code's end: it gets a new code, and
    // the reserved one, retired, answers code_expired (no timer ran in between).
    gone(&mut hub, d2, min(18));
    let (d3, third, left_ms) = desktop(&mut hub, "desk", min(21));
    assert!(third != fresh && third != code);
    assert_eq!(left_ms, Some(600_000));
    assert_eq!(
        try_code(&mut hub, &fresh, min(21)),
        Some(PairOutcome::CodeExpired)
    );

    // A reserved code whose timer fires while its desktop is away is retired then.
    gone(&mut hub, d3, min(29));
    hub.handle_timeout(min(31));
    assert_eq!(
        try_code(&mut hub, &third, min(31)),
        Some(PairOutcome::CodeExpired)
    );
    assert!(hub.codes.is_empty());
    assert_eq!(hub.stats().codes_retired, 3);
}

#[test]
fn renew_code_retires_the_code_as_used_and_keeps_pending_prompts() {
    let mut hub = timed_hub(24, |_| {});
    let t0 = Instant::now();
    let (desk, old, _) = desktop(&mut hub, "desk", t0);
    let (phone, session) = prompt(&mut hub, desk, &old, t0);
    let t1 = t0 + Duration::from_secs(60);
    let out = renew(&mut hub, desk, t1);
    let (fresh, left) = only_registered(&out, desk);
    assert_ne!(fresh, old);
    assert_eq!(left, Some(600_000), "a renewed code gets a full lifetime");
    assert!(sent_to(&out, phone).is_empty());
    assert_eq!(try_code(&mut hub, &old, t1), Some(PairOutcome::CodeUsed));
    assert_eq!(hub.stats().used_codes, 1);
    // The prompt from before the renewal can still be accepted.
    respond(&mut hub, desk, &session, r#""accept":true"#, t1);
    assert!(matches!(
        sent_to(&drain(&mut hub), phone)[0],
        ServerMessage::PairResult {
            outcome: PairOutcome::Accepted,
            ..
        }
    ));
    // The old code's expiry timer no longer applies; the fresh code's does.
    hub.handle_timeout(t0 + TEN_MIN);
    assert!(registered(&drain(&mut hub), desk).is_empty());
    hub.handle_timeout(t1 + TEN_MIN);
    assert_eq!(registered(&drain(&mut hub), desk).len(), 1);
    // Only a registered desktop can renew.
    let stranger = greeted(&mut hub, t1);
    for conn in [stranger, phone] {
        let out = renew(&mut hub, conn, t1);
        assert_eq!(error_count(&out, conn, ErrorCode::InvalidState), 1);
    }
}

#[test]
fn retired_codes_are_never_reissued_until_their_retention_lapses() {
    // Codes of 4 characters from 2: a code space of 16.
    let mut hub = timed_hub(25, |c| {
        (c.code_alphabet, c.code_length) = ("23", 4);
        (c.code_ttl, c.retired_retention) = (Duration::ZERO, Duration::from_secs(60));
    });
    let t0 = Instant::now();
    let secs = |s: u64| t0 + Duration::from_secs(s);
    let (desk, first, _) = desktop(&mut hub, "desk", t0);
    let mut seen = HashSet::from([first.clone()]);
    for i in 1..16 {
        let out = renew(&mut hub, desk, secs(i));
        let [(code, None)] = &registered(&out, desk)[..] else {
            panic!("renewal {i}: {out:?}");
        };
        assert!(seen.insert(code.clone()), "renewal {i} reissued {code:?}");
    }
    assert_eq!(seen.len(), 16);
    // All 16 are live or retired: nothing is free for a renewal or another desktop.
    let out = renew(&mut hub, desk, secs(20));
    assert_eq!(error_count(&out, desk, ErrorCode::Overloaded), 1);
    assert!(registered(&out, desk).is_empty());
    let other = greeted(&mut hub, t0);
    hub.handle_text(other, &register_desktop("other"), secs(20));
    assert_eq!(
        error_count(&drain(&mut hub), other, ErrorCode::Overloaded),
        1
    );
    assert_eq!(
        try_code(&mut hub, &first, secs(30)),
        Some(PairOutcome::CodeUsed)
    );
    // One minute after the first renewal, the first code is forgotten: unknown, and free.
    let t1 = secs(61);
    assert!(hub.poll_timeout().is_some_and(|t| t <= t1));
    hub.handle_timeout(t1);
    assert_eq!(
        try_code(&mut hub, &first, t1),
        Some(PairOutcome::UnknownCode)
    );
    let out = renew(&mut hub, desk, t1);
    assert_eq!(registered(&out, desk), vec![(first, None)]);
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Events and connection reports
// ---------------------------------------------------------------------------------------------

#[test]
fn refresh_ice_servers_mints_fresh_turn_credentials_for_the_connection() {
    let ice = crate::ice::IceConfig::with_turn_auth(
        &["stun:198.18.0.2:3478"],
        &["turn:198.18.0.3:3478"],
        crate::ice::TurnAuth {
            secret: Some("s3cret".into()),
            ttl: Some(Duration::from_secs(600)),
            ..crate::ice::TurnAuth::default()
        },
    )
    .unwrap();
    let mut hub = hub_with(7, |c| {
        c.ice = ice;
        c.heartbeat_timeout = Duration::from_secs(3600);
    });
    let t0 = Instant::now();
    let (conn, _) = hub.connect(remote(), None, t0).unwrap();
    hub.handle_text(conn, r#"{"type":"hello","version":1,"client":"t"}"#, t0);
    let turn_user = |message: ServerMessage| {
        let servers = match message {
            ServerMessage::Welcome { ice_servers, .. }
            | ServerMessage::IceServers { ice_servers } => ice_servers,
            other => panic!("{other:?}"),
        };
        let turn = servers
            .into_iter()
            .find(|s| s.urls.iter().any(|u| u.starts_with("turn:")))
            .expect("a TURN server");
        let user = turn.username.expect("a user name");
        let (expiry, id) = user.split_once(':').expect("expiry:id");
        (expiry.parse::<u64>().unwrap(), id.to_owned())
    };
    let (first_expiry, first_id) = turn_user(only(&drain(&mut hub), conn));

    // Twenty minutes on, the connection asks again: credentials good for another TTL from now.
    let later = t0 + Duration::from_secs(1200);
    hub.handle_text(conn, r#"{"type":"refresh_ice_servers"}"#, later);
    let (expiry, id) = turn_user(only(&drain(&mut hub), conn));
    assert_eq!(
        expiry,
        first_expiry + 1200,
        "minted at the time of the refresh"
    );
    assert_eq!(id, first_id, "for the same connection");
    assert_eq!(hub.stats().ice_refreshes, 1);
}

fn events_of(hub: &mut Hub) -> Vec<Event> {
    std::iter::from_fn(|| hub.poll_event()).collect()
}

fn kinds(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::kind).collect()
}

fn report(session: &SessionId, outcome: &str, extra: &str) -> String {
    format!(
        r#"{{"type":"connection_report","session":"{}","outcome":"{outcome}","report":{{{extra}}}}}"#,
        session.as_str()
    )
}

#[test]
fn events_follow_a_pairing_from_connect_to_disconnect_without_codes_or_names() {
    let mut hub = hub_with(11, |c| c.events = true);
    let t0 = Instant::now();
    let (desk, code, _) = desktop(&mut hub, "desk", t0);
    let (phone, session) = prompt(&mut hub, desk, &code, t0);
    let t1 = t0 + Duration::from_millis(40);
    respond(&mut hub, desk, &session, r#""accept":true"#, t1);
    let offer = format!(
        r#"{{"type":"signal","session":"{}","signal":{{"kind":"end_of_candidates"}}}}"#,
        session.as_str()
    );
    hub.handle_text(phone, &offer, t1);
    hub.handle_text(
        phone,
        &format!(r#"{{"type":"leave","session":"{}"}}"#, session.as_str()),
        t1,
    );
    let t2 = t1 + Duration::from_millis(500);
    hub.handle_gone(phone, Gone::Closed, t2);
    drain(&mut hub);
    let events = events_of(&mut hub);
    assert_eq!(
        kinds(&events),
        [
            "client_connected",
            "desktop_registered",
            "client_connected",
            "pair_requested",
            "pair_accepted",
            "session_ended",
            "client_disconnected",
        ]
    );
    assert!(events.contains(&Event::PairAccepted {
        session: session.clone(),
        latency_ms: 40,
    }));
    assert!(events.contains(&Event::SessionEnded {
        session: session.clone(),
        reason: "member_left",
        accepted: true,
        duration_ms: 40,
        signals: 1,
    }));
    let Some(Event::ClientDisconnected {
        role,
        reason,
        duration_ms,
        ..
    }) = events.last()
    else {
        panic!("{events:?}");
    };
    assert_eq!((*role, *reason, *duration_ms), ("phone", "closed", 540));
    let json = serde_json::to_string(&events).unwrap();
    // The code (its routing part), the device names ("D" and the phone's) never appear.
    assert!(!json.contains(code.as_str()), "{json}");
    assert!(
        !json.contains("device_name") && !json.contains("phone_name"),
        "{json}"
    );
}

#[test]
fn device_names_are_in_events_only_when_the_operator_opts_in() {
    let mut hub = hub_with(12, |c| {
        c.events = true;
        c.event_device_names = true;
    });
    let now = Instant::now();
    let (desk, code, _) = desktop(&mut hub, "desk", now);
    prompt(&mut hub, desk, &code, now);
    let json = serde_json::to_string(&events_of(&mut hub)).unwrap();
    assert!(json.contains(r#""device_name":"D""#), "{json}");
    assert!(json.contains(r#""phone_name":"#), "{json}");
}

#[test]
fn without_a_sink_the_hub_builds_no_events_but_counts_reports() {
    let mut hub = hub();
    let now = Instant::now();
    let (_, phone, session, _) = answered(&mut hub, r#""accept":true"#, now);
    hub.handle_text(
        phone,
        &report(&session, "connected", r#""path":"relay""#),
        now,
    );
    assert!(drain(&mut hub).is_empty(), "reports are not answered");
    assert!(hub.poll_event().is_none());
    let reports = hub.stats().reports;
    assert_eq!(
        (reports.connected, reports.connected_by_path),
        (1, [0, 0, 0, 1])
    );
}

#[test]
fn connection_reports_come_from_members_of_accepted_sessions_within_a_budget() {
    let mut hub = hub_with(13, |c| c.events = true);
    let now = Instant::now();
    let (desk, phone, session, _) = answered(&mut hub, r#""accept":true"#, now);
    let stranger = greeted(&mut hub, now);
    events_of(&mut hub);

    hub.handle_text(stranger, &report(&session, "connected", ""), now);
    assert_eq!(
        error_count(&drain(&mut hub), stranger, ErrorCode::NotSessionMember),
        1
    );
    assert!(hub.poll_event().is_none());

    let connected = report(
        &session,
        "connected",
        r#""path":"srflx","time_to_connect_ms":120,"rtt_ms":8"#,
    );
    hub.handle_text(phone, &connected, now);
    let Some(Event::ConnectionEstablished(record)) = hub.poll_event() else {
        panic!("no connection_established");
    };
    assert_eq!(
        (record.reporter, record.session.clone()),
        ("phone", session.clone())
    );
    assert_eq!(record.report.time_to_connect_ms, Some(120));

    // The session ends on the server; the desktop still reports how its connection closed.
    hub.handle_text(
        phone,
        &format!(r#"{{"type":"leave","session":"{}"}}"#, session.as_str()),
        now,
    );
    drain(&mut hub);
    events_of(&mut hub);
    let closed = report(
        &session,
        "closed",
        r#""duration_ms":60000,"bytes_sent":1048576,"bytes_received":2048"#,
    );
    hub.handle_text(desk, &closed, now);
    assert!(matches!(
        hub.poll_event(),
        Some(Event::ConnectionClosed(ClientReport {
            reporter: "desktop",
            ..
        }))
    ));

    // Past the budget, reports are dropped and counted (one limit_hit goes out).
    for _ in 0..10 {
        hub.handle_text(desk, &closed, now);
    }
    assert!(drain(&mut hub).is_empty());
    let events = events_of(&mut hub);
    let reported = events
        .iter()
        .filter(|e| matches!(e, Event::ConnectionClosed(_)))
        .count();
    assert_eq!(reported, usize::from(events::REPORTS_PER_SESSION) - 1);
    assert!(events.iter().any(|e| matches!(
        e,
        Event::LimitHit {
            limit: "connection_reports",
            ..
        }
    )));
    let stats = hub.stats().reports;
    assert_eq!(stats.closed, u64::from(events::REPORTS_PER_SESSION));
    assert_eq!(stats.dropped, 11 - u64::from(events::REPORTS_PER_SESSION));
}

#[test]
fn a_refused_pair_request_and_a_hit_limit_are_events() {
    let mut hub = hub_with(14, |c| c.events = true);
    let now = Instant::now();
    let phone = greeted(&mut hub, now);
    hub.handle_text(
        phone,
        &format!(
            r#"{{"type":"pair_request","code":"{}","device_id":"p","device_name":"P"}}"#,
            "A".repeat(hub.config.code_length)
        ),
        now,
    );
    hub.handle_text(phone, &"x".repeat(hub.config.max_frame_bytes + 1), now);
    drain(&mut hub);
    let events = events_of(&mut hub);
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::PairRefused {
                via: "code",
                outcome: "unknown_code",
                ..
            }
        )),
        "{events:?}"
    );
    assert!(events.iter().any(|e| matches!(
        e,
        Event::LimitHit {
            limit: "frame_too_large",
            ..
        }
    )));
    assert!(matches!(
        events.last(),
        Some(Event::ClientDisconnected {
            reason: "refused",
            ..
        })
    ));
}

// ---------------------------------------------------------------------------------------------
// Durable state
// ---------------------------------------------------------------------------------------------

/// A hub journaling to `store` with the clock `anchor`, restored from what `store` holds at
/// `now`; the store then holds what the hub exported, as the driver does at start.
fn durable_hub(
    seed: u64,
    store: &MemoryStore,
    anchor: (Instant, SystemTime),
    now: Instant,
) -> (Hub, RestoreSummary) {
    let mut hub = timed_hub(seed, |c| {
        c.state = true;
        c.wall_anchor = anchor;
    });
    let summary = hub.restore(store.snapshot(), now);
    store.replace(&hub.export_state(now));
    (hub, summary)
}

/// Hand the hub's journal to the store, as the driver does after every input.
fn persist(hub: &mut Hub, store: &MemoryStore) {
    let mut ops = Vec::new();
    hub.take_state_ops(&mut ops);
    store.apply(&ops);
}

#[test]
fn a_restarted_hub_gives_codes_back_and_remembers_retired_ones() {
    let store = MemoryStore::default();
    let t0 = Instant::now();
    let anchor = (t0, SystemTime::now());
    let (mut first, summary) = durable_hub(31, &store, anchor, t0);
    assert_eq!(summary, RestoreSummary::default());
    let mut codes = Vec::new();
    for i in 0..5 {
        let (conn, code, _) = desktop(&mut first, &format!("desk{i}"), t0);
        codes.push((conn, code));
    }
    // desk0 burns its code; desk1 leaves (its code is kept for it).
    let (renewed, _) = only_registered(&renew(&mut first, codes[0].0, t0), codes[0].0);
    gone(&mut first, codes[1].0, t0);
    persist(&mut first, &store);
    assert_eq!(store.len(), (5, 1));

    // The process dies a minute later (no shutdown, nothing more written) and comes back.
    let t1 = t0 + Duration::from_secs(60);
    drop(first);
    let (mut second, summary) = durable_hub(32, &store, anchor, t1);
    assert_eq!(
        (summary.kept, summary.retired, summary.expired),
        (5, 1, 0),
        "{summary:?}"
    );
    // Retired codes are answered as such; held and kept codes wait for their desktops.
    assert_eq!(
        try_code(&mut second, &codes[0].1, t1),
        Some(PairOutcome::CodeUsed)
    );
    assert_eq!(
        try_code(&mut second, &codes[3].1, t1),
        Some(PairOutcome::UnknownCode)
    );
    // Each desktop gets its code back, with the time it had left.
    let (_, back, left) = desktop(&mut second, "desk3", t1);
    assert_eq!((&back, left), (&codes[3].1, Some(540_000)));
    let (_, back, _) = desktop(&mut second, "desk0", t1);
    assert_eq!(back, renewed);
    let (_, back, _) = desktop(&mut second, "desk1", t1);
    assert_eq!(back, codes[1].1);
    assert_eq!(try_code(&mut second, &codes[3].1, t1), None);
    persist(&mut second, &store);

    // A desktop that stays away past its reservation (five minutes from the restart) loses
    // its code: forgotten, not retired.
    let t2 = t1 + Duration::from_secs(5 * 60 + 1);
    second.handle_timeout(t2);
    persist(&mut second, &store);
    let (_, fresh, _) = desktop(&mut second, "desk4", t2);
    assert_ne!(fresh, codes[4].1);
    assert_eq!(
        try_code(&mut second, &codes[4].1, t2),
        Some(PairOutcome::UnknownCode)
    );
    persist(&mut second, &store);
    // What the store holds is what the hub would export.
    let expected = MemoryStore::default();
    expected.replace(&second.export_state(t2));
    assert_eq!(sorted(store.snapshot()), sorted(expected.snapshot()));
}

#[test]
fn codes_that_expire_while_the_server_is_down_answer_code_expired() {
    let store = MemoryStore::default();
    let t0 = Instant::now();
    let anchor = (t0, SystemTime::now());
    let (mut first, _) = durable_hub(33, &store, anchor, t0);
    let (_, code, _) = desktop(&mut first, "desk", t0);
    persist(&mut first, &store);
    drop(first);
    // Back after the code's ten minutes.
    let t1 = t0 + TEN_MIN + Duration::from_secs(1);
    let (mut second, summary) = durable_hub(34, &store, anchor, t1);
    assert_eq!((summary.kept, summary.expired), (0, 1), "{summary:?}");
    assert_eq!(
        try_code(&mut second, &code, t1),
        Some(PairOutcome::CodeExpired)
    );
    let (_, fresh, left) = desktop(&mut second, "desk", t1);
    assert_ne!(fresh, code);
    assert_eq!(left, Some(600_000));
}

#[test]
fn without_a_store_the_hub_journals_nothing() {
    let mut hub = timed_hub(35, |_| {});
    let now = Instant::now();
    let (desk, _, _) = desktop(&mut hub, "desk", now);
    renew(&mut hub, desk, now);
    let mut ops = Vec::new();
    hub.take_state_ops(&mut ops);
    assert!(ops.is_empty());
}

#[test]
fn codes_that_never_expire_have_their_records_renewed() {
    let t0 = Instant::now();
    let wall0 = SystemTime::now();
    let mut hub = timed_hub(36, |c| {
        c.state = true;
        c.wall_anchor = (t0, wall0);
        c.code_ttl = Duration::ZERO;
    });
    desktop(&mut hub, "desk", t0);
    let lapses = |hub: &mut Hub| {
        let mut ops = Vec::new();
        hub.take_state_ops(&mut ops);
        ops.iter()
            .filter_map(|op| match op {
                StateOp::PutCode {
                    lapses, expires, ..
                } => {
                    assert_eq!(*expires, None);
                    Some(*lapses)
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let ms = |t: SystemTime| crate::state::unix_ms(t);
    assert_eq!(lapses(&mut hub), vec![ms(wall0 + LIVE_LEASE)]);
    // A quarter of the lease later the record is written again, with a lease from then.
    let renewal = t0 + LIVE_LEASE / 4;
    assert!(hub.poll_timeout().is_some_and(|t| t <= renewal));
    hub.handle_timeout(renewal);
    assert_eq!(
        lapses(&mut hub),
        vec![ms(wall0 + LIVE_LEASE / 4 + LIVE_LEASE)]
    );
}

// ---------------------------------------------------------------------------------------------
// Resuming a session from a new connection
// ---------------------------------------------------------------------------------------------

/// The `session_token` `conn` got in `outputs`.
fn token_of(outputs: &[Output], conn: ConnKey) -> ResumeToken {
    sent_to(outputs, conn)
        .into_iter()
        .find_map(|m| match m {
            ServerMessage::SessionToken { token, .. } => Some(token),
            _ => None,
        })
        .expect("a session_token")
}

fn resume(hub: &mut Hub, conn: ConnKey, session: &SessionId, token: &ResumeToken, now: Instant) {
    hub.handle_text(
        conn,
        &format!(
            r#"{{"type":"resume","session":"{session}","token":"{}"}}"#,
            token.as_str()
        ),
        now,
    );
}

fn signal_text(session: &SessionId, n: u32) -> String {
    format!(
        r#"{{"type":"signal","session":"{session}","signal":{{"kind":"candidate","candidate":"candidate:{n} 1 udp 1 198.18.0.1 {n} typ host"}}}}"#
    )
}

#[test]
fn each_member_gets_its_own_token_once_the_session_is_accepted() {
    let mut hub = hub();
    let now = Instant::now();
    let (desk, phone, session, out) = answered(&mut hub, r#""accept":true"#, now);
    let (a, b) = (token_of(&out, phone), token_of(&out, desk));
    assert_ne!(a, b);
    // After the pair_result, and only to its member.
    let to_phone = sent_to(&out, phone);
    assert!(matches!(to_phone[0], ServerMessage::PairResult { .. }));
    assert!(
        matches!(&to_phone[1], ServerMessage::SessionToken { session: s, .. } if *s == session)
    );
    // A rejected session gives none.
    let mut hub = hub_with(8, |_| {});
    let (desk, phone, _, out) = answered(&mut hub, r#""accept":false"#, now);
    for conn in [desk, phone] {
        assert!(
            !sent_to(&out, conn)
                .iter()
                .any(|m| matches!(m, ServerMessage::SessionToken { .. }))
        );
    }
}

#[test]
fn a_lost_member_whose_device_starts_afresh_is_reported_to_the_other_as_restarted() {
    let mut hub = hub();
    let t0 = Instant::now();
    let (desk, phone, session, _) = answered(&mut hub, r#""accept":true"#, t0);
    // The desktop process dies: its socket closes without a goodbye.
    hub.handle_gone(desk, Gone::Closed, t0);
    assert!(sent_to(&drain(&mut hub), phone).is_empty());
    // A new process of the same device registers (it has no token: it cannot resume).
    let t1 = t0 + Duration::from_secs(1);
    let desk2 = greeted(&mut hub, t1);
    hub.handle_text(desk2, &register_desktop("desk"), t1);
    let out = drain(&mut hub);
    assert!(
        matches!(only(&out, phone), ServerMessage::PeerRestarted { session: s } if s == session),
        "{out:?}"
    );
    assert_eq!(hub.stats().peers_restarted, 1);
    // Said once; the session itself still waits out its grace.
    desktop(&mut hub, "desk", t1);
    assert!(sent_to(&drain(&mut hub), phone).is_empty());
    assert_eq!(hub.stats().sessions_active, 1);

    // A phone whose app restarted and connects again by device id: its desktop hears it.
    let mut hub = hub_with(8, |_| {});
    let (desk, phone, session, _) = answered(&mut hub, r#""accept":true"#, t0);
    hub.handle_gone(phone, Gone::Closed, t0);
    drain(&mut hub);
    let phone2 = greeted(&mut hub, t1);
    hub.handle_text(
        phone2,
        r#"{"type":"connect_request","desktop":"desk","device_id":"p","device_name":"P"}"#,
        t1,
    );
    let out = drain(&mut hub);
    assert!(
        sent_to(&out, desk)
            .iter()
            .any(|m| matches!(m, ServerMessage::PeerRestarted { session: s } if *s == session)),
        "{out:?}"
    );
}

#[test]
fn a_member_that_resumed_and_registers_again_is_no_restart() {
    let mut hub = hub();
    let t0 = Instant::now();
    let (desk, phone, session, out) = answered(&mut hub, r#""accept":true"#, t0);
    let token = token_of(&out, desk);
    hub.handle_gone(desk, Gone::Closed, t0);
    drain(&mut hub);
    // A network blip: the same process reconnects, resumes, then registers again.
    let t1 = t0 + Duration::from_secs(1);
    let desk2 = greeted(&mut hub, t1);
    resume(&mut hub, desk2, &session, &token, t1);
    hub.handle_text(desk2, &register_desktop("desk"), t1);
    let out = drain(&mut hub);
    assert!(
        !sent_to(&out, phone)
            .iter()
            .any(|m| matches!(m, ServerMessage::PeerRestarted { .. })),
        "{out:?}"
    );
    assert_eq!(hub.stats().peers_restarted, 0);
    // The grace timer forgets the device (nothing left to report later).
    hub.handle_timeout(t0 + hub.config.resume_grace);
    drain(&mut hub);
    assert!(hub.away_devices.is_empty());
}

#[test]
fn a_lost_phone_resumes_on_a_new_connection_and_gets_what_came_meanwhile() {
    let mut hub = hub();
    let t0 = Instant::now();
    let (desk, phone, session, out) = answered(&mut hub, r#""accept":true"#, t0);
    let token = token_of(&out, phone);
    // The phone's socket closes (its network went): the desktop is not told.
    hub.handle_gone(phone, Gone::Closed, t0);
    let out = drain(&mut hub);
    assert!(sent_to(&out, desk).is_empty(), "{out:?}");
    assert_eq!(hub.stats().members_away, 1);
    // The desktop signals meanwhile: kept for the phone.
    for n in 1..=3 {
        hub.handle_text(desk, &signal_text(&session, n), t0);
    }
    assert!(drain(&mut hub).is_empty());
    // Back on a new connection, 5 s later.
    let t1 = t0 + Duration::from_secs(5);
    let phone2 = greeted(&mut hub, t1);
    resume(&mut hub, phone2, &session, &token, t1);
    let got = sent_to(&drain(&mut hub), phone2);
    assert!(matches!(&got[0], ServerMessage::Resumed { session: s } if *s == session));
    let candidates: Vec<String> = got[1..]
        .iter()
        .map(|m| match m {
            ServerMessage::Signal {
                signal: Signal::Candidate { candidate, .. },
                ..
            } => candidate.as_str().to_owned(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(candidates.len(), 3);
    assert!(candidates[0].starts_with("candidate:1 ") && candidates[2].starts_with("candidate:3 "));
    // Signals flow both ways on the new connection; the grace timer ends nothing.
    hub.handle_text(phone2, &signal_text(&session, 9), t1);
    assert!(matches!(
        only(&drain(&mut hub), desk),
        ServerMessage::Signal { .. }
    ));
    hub.handle_timeout(t0 + hub.config.resume_grace);
    assert!(drain(&mut hub).is_empty());
    assert_eq!(hub.stats().sessions_resumed, 1);
    assert_eq!(hub.stats().sessions_active, 1);
    // Leaving from the new connection ends it for the desktop as usual.
    hub.handle_text(
        phone2,
        &format!(r#"{{"type":"leave","session":"{session}"}}"#),
        t1,
    );
    assert!(matches!(
        only(&drain(&mut hub), desk),
        ServerMessage::SessionEnded {
            reason: SessionEndReason::PeerLeft,
            ..
        }
    ));
}

#[test]
fn a_member_that_does_not_come_back_in_the_grace_ends_the_session_then() {
    let mut hub = hub();
    let t0 = Instant::now();
    let (desk, phone, session, out) = answered(&mut hub, r#""accept":true"#, t0);
    let token = token_of(&out, phone);
    hub.handle_gone(phone, Gone::Closed, t0);
    drain(&mut hub);
    let grace = hub.config.resume_grace;
    assert_eq!(hub.poll_timeout().map(|t| t <= t0 + grace), Some(true));
    hub.handle_timeout(t0 + grace - Duration::from_millis(1));
    assert!(drain(&mut hub).is_empty());
    hub.handle_timeout(t0 + grace);
    assert!(matches!(
        only(&drain(&mut hub), desk),
        ServerMessage::SessionEnded {
            reason: SessionEndReason::PeerDisconnected,
            ..
        }
    ));
    // Too late now: the session is over for the phone.
    let late = greeted(&mut hub, t0 + grace);
    resume(&mut hub, late, &session, &token, t0 + grace);
    assert!(matches!(
        only(&drain(&mut hub), late),
        ServerMessage::SessionEnded {
            reason: SessionEndReason::Over,
            ..
        }
    ));
    assert_eq!(hub.stats().resumes_refused, 1);
    assert_eq!(hub.stats().sessions_active, 0);
}

#[test]
fn a_token_is_useless_to_anyone_but_its_member() {
    let mut hub = hub();
    let now = Instant::now();
    let (desk, phone, session, out) = answered(&mut hub, r#""accept":true"#, now);
    let phone_token = token_of(&out, phone);
    hub.handle_gone(phone, Gone::Closed, now);
    drain(&mut hub);
    // A stranger with a made-up token, or with the session of another: refused, nothing moves.
    let stranger = greeted(&mut hub, now);
    let forged = ResumeToken::new("0123456789abcdef0123456789abcdef").unwrap();
    resume(&mut hub, stranger, &session, &forged, now);
    assert!(matches!(
        only(&drain(&mut hub), stranger),
        ServerMessage::SessionEnded {
            reason: SessionEndReason::Over,
            ..
        }
    ));
    hub.handle_text(stranger, &signal_text(&session, 1), now);
    assert_eq!(
        error_count(&drain(&mut hub), stranger, ErrorCode::NotSessionMember),
        1
    );
    // The real phone still can.
    let phone2 = greeted(&mut hub, now);
    resume(&mut hub, phone2, &session, &phone_token, now);
    assert!(matches!(
        sent_to(&drain(&mut hub), phone2)[0],
        ServerMessage::Resumed { .. }
    ));
    assert!(sent_to(&drain(&mut hub), desk).is_empty());
    assert_eq!(hub.stats().resumes_refused, 1);
}

#[test]
fn a_resume_takes_the_session_from_a_connection_the_server_still_thinks_alive() {
    // A phone on a new network reconnects before its old connection's silence is noticed.
    let mut hub = hub();
    let now = Instant::now();
    let (desk, phone, session, out) = answered(&mut hub, r#""accept":true"#, now);
    let token = token_of(&out, phone);
    let phone2 = greeted(&mut hub, now);
    resume(&mut hub, phone2, &session, &token, now);
    assert!(matches!(
        sent_to(&drain(&mut hub), phone2)[0],
        ServerMessage::Resumed { .. }
    ));
    hub.handle_text(desk, &signal_text(&session, 1), now);
    let out = drain(&mut hub);
    assert!(sent_to(&out, phone).is_empty(), "the old connection is out");
    assert!(matches!(only(&out, phone2), ServerMessage::Signal { .. }));
    // The old connection going later ends nothing.
    hub.handle_gone(phone, Gone::Closed, now);
    assert!(sent_to(&drain(&mut hub), desk).is_empty());
    assert_eq!(hub.stats().sessions_active, 1);
}

#[test]
fn a_member_that_leaves_or_says_bye_is_not_waited_for() {
    let mut hub = hub();
    let now = Instant::now();
    let (desk, phone, _, _) = answered(&mut hub, r#""accept":true"#, now);
    hub.handle_text(phone, r#"{"type":"bye"}"#, now);
    assert!(matches!(
        only(&drain(&mut hub), desk),
        ServerMessage::SessionEnded {
            reason: SessionEndReason::PeerLeft,
            ..
        }
    ));
    // Without a grace configured, a lost connection ends it at once too.
    let mut hub = hub_with(9, |c| c.resume_grace = Duration::ZERO);
    let (desk, phone, _, _) = answered(&mut hub, r#""accept":true"#, now);
    hub.handle_gone(phone, Gone::Closed, now);
    assert!(matches!(
        only(&drain(&mut hub), desk),
        ServerMessage::SessionEnded {
            reason: SessionEndReason::PeerDisconnected,
            ..
        }
    ));
}

#[test]
fn a_desktop_serving_many_connected_phones_still_takes_requests_but_not_too_many_prompts() {
    // Phones stay in their sessions while connected: 20 accepted sessions do not count
    // against the desktop's limit of 16 prompts waiting for an answer.
    let mut hub = hub_with(11, |c| c.pair_attempts = 0);
    let now = Instant::now();
    let (desk, code, _) = desktop(&mut hub, "desk", now);
    for _ in 0..20 {
        let (_, session) = prompt(&mut hub, desk, &code, now);
        respond(&mut hub, desk, &session, r#""accept":true"#, now);
        drain(&mut hub);
    }
    assert_eq!(hub.stats().sessions_active, 20);
    let limit = abuse::MAX_SESSIONS_PER_CONNECTION;
    for _ in 0..limit {
        assert_eq!(try_code(&mut hub, &code, now), None, "a prompt");
    }
    drain(&mut hub);
    let phone = greeted(&mut hub, now);
    pair(&mut hub, phone, &code, now);
    assert_eq!(
        error_count(&drain(&mut hub), phone, ErrorCode::Overloaded),
        1,
        "prompts past the limit are refused"
    );
    assert_eq!(hub.stats().sessions_pending, limit as u64);
}

#[test]
fn signals_for_an_away_member_are_bounded() {
    let mut hub = hub();
    let now = Instant::now();
    let (desk, phone, session, out) = answered(&mut hub, r#""accept":true"#, now);
    let token = token_of(&out, phone);
    hub.handle_gone(phone, Gone::Closed, now);
    drain(&mut hub);
    let sent = sessions::MAX_QUEUED_SIGNALS as u32 + 10;
    for n in 1..=sent {
        hub.handle_text(desk, &signal_text(&session, n), now);
    }
    drain(&mut hub);
    let phone2 = greeted(&mut hub, now);
    resume(&mut hub, phone2, &session, &token, now);
    let got = sent_to(&drain(&mut hub), phone2);
    // Resumed, then the newest MAX_QUEUED_SIGNALS.
    assert_eq!(got.len(), 1 + sessions::MAX_QUEUED_SIGNALS);
    assert!(matches!(
        &got[1],
        ServerMessage::Signal { signal: Signal::Candidate { candidate, .. }, .. }
            if candidate.as_str().starts_with("candidate:11 ")
    ));
    assert_eq!(hub.stats().signals_dropped_away, 10);
}

/// A snapshot in a fixed order, to compare two.
fn sorted(mut s: Snapshot) -> Snapshot {
    s.codes.sort_by(|a, b| a.code.as_str().cmp(b.code.as_str()));
    s.latest.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    s.retired
        .sort_by(|a, b| a.code.as_str().cmp(b.code.as_str()));
    s
}

const TEN_MIN: Duration = Duration::from_secs(10 * 60);

const PING: &str = r#"{"type":"ping","seq":1}"#;

fn config() -> HubConfig {
    HubConfig::from(&ServerConfig::loopback())
}

/// Codes living ten minutes, and connections that stay while the clock jumps ahead.
fn timed() -> HubConfig {
    HubConfig {
        code_ttl: TEN_MIN,
        heartbeat_timeout: Duration::from_secs(24 * 3600),
        ..config()
    }
}

fn hub() -> Hub {
    hub_with(7, |_| {})
}

/// A hub with the default configuration changed by `tweak`, its generator seeded with `seed`.
fn hub_with(seed: u64, tweak: impl FnOnce(&mut HubConfig)) -> Hub {
    let mut config = config();
    tweak(&mut config);
    Hub::with_rng(config, StdRng::seed_from_u64(seed))
}

/// A hub with the [`timed`] configuration changed by `tweak`.
fn timed_hub(seed: u64, tweak: impl FnOnce(&mut HubConfig)) -> Hub {
    hub_with(seed, |c| {
        *c = timed();
        tweak(c);
    })
}

fn remote() -> SocketAddr {
    "127.0.0.1:5555".parse().unwrap()
}

fn drain(hub: &mut Hub) -> Vec<Output> {
    std::iter::from_fn(|| hub.poll_output()).collect()
}

fn sent_to(outputs: &[Output], conn: ConnKey) -> Vec<ServerMessage> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { to, message } if *to == conn => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// The one message `conn` got.
fn only(outputs: &[Output], conn: ConnKey) -> ServerMessage {
    match sent_to(outputs, conn).as_slice() {
        [one] => one.clone(),
        other => panic!("{other:?}"),
    }
}

fn closed(conn: ConnKey, how: CloseHow) -> Output {
    Output::Close { conn, how }
}

fn errors(messages: &[ServerMessage], want: ErrorCode) -> usize {
    messages
        .iter()
        .filter(|m| matches!(m, ServerMessage::Error { code, .. } if *code == want))
        .count()
}

/// How many errors with `code` `conn` got.
fn error_count(outputs: &[Output], conn: ConnKey, code: ErrorCode) -> usize {
    errors(&sent_to(outputs, conn), code)
}

/// The session of the one `pair_prompt` the desktop got.
fn prompted(outputs: &[Output], desk: ConnKey) -> SessionId {
    match only(outputs, desk) {
        ServerMessage::PairPrompt { session, .. } => session,
        other => panic!("{other:?}"),
    }
}

/// The `registered` messages `conn` got: code and remaining lifetime.
fn registered(outputs: &[Output], conn: ConnKey) -> Vec<(RoutingCode, Option<u64>)> {
    sent_to(outputs, conn)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::Registered {
                code,
                expires_in_ms,
            } => Some((code, expires_in_ms)),
            _ => None,
        })
        .collect()
}

/// The one `registered` message `conn` got.
fn only_registered(outputs: &[Output], conn: ConnKey) -> (RoutingCode, Option<u64>) {
    match registered(outputs, conn).as_slice() {
        [one] => one.clone(),
        other => panic!("{other:?}"),
    }
}

/// A connection that said hello.
fn greeted(hub: &mut Hub, now: Instant) -> ConnKey {
    let (key, _) = hub.connect(remote(), None, now).unwrap();
    hub.handle_text(key, r#"{"type":"hello","version":1,"client":"t"}"#, now);
    drain(hub);
    key
}

/// The connection's socket closed.
fn gone(hub: &mut Hub, conn: ConnKey, now: Instant) {
    hub.handle_gone(conn, Gone::Closed, now);
    drain(hub);
}

fn register_desktop(device: &str) -> String {
    format!(r#"{{"type":"register_desktop","device_id":"{device}","device_name":"D"}}"#)
}

/// A greeted connection registered as the desktop `device`: the connection, its code and the
/// code's remaining lifetime.
fn desktop(hub: &mut Hub, device: &str, now: Instant) -> (ConnKey, RoutingCode, Option<u64>) {
    let conn = greeted(hub, now);
    hub.handle_text(conn, &register_desktop(device), now);
    match only(&drain(hub), conn) {
        ServerMessage::Registered {
            code,
            expires_in_ms,
        } => (conn, code, expires_in_ms),
        other => panic!("{other:?}"),
    }
}

/// A desktop "desk", prompted by a fresh phone, answers `answer` (the JSON fields of its
/// `pair_response` after the session): the desktop, the phone, the session and the outputs.
fn answered(
    hub: &mut Hub,
    answer: &str,
    now: Instant,
) -> (ConnKey, ConnKey, SessionId, Vec<Output>) {
    let (desk, code, _) = desktop(hub, "desk", now);
    let (phone, session) = prompt(hub, desk, &code, now);
    respond(hub, desk, &session, answer, now);
    (desk, phone, session, drain(hub))
}

/// A fresh phone's pair request for `code`, which prompts `desk`: the phone and the session.
fn prompt(hub: &mut Hub, desk: ConnKey, code: &RoutingCode, now: Instant) -> (ConnKey, SessionId) {
    let phone = greeted(hub, now);
    pair(hub, phone, code, now);
    (phone, prompted(&drain(hub), desk))
}

fn renew(hub: &mut Hub, conn: ConnKey, now: Instant) -> Vec<Output> {
    hub.handle_text(conn, r#"{"type":"renew_code"}"#, now);
    drain(hub)
}

/// At `at`, the desktop's code `old` expires: it gets a fresh code with a full lifetime, and
/// `old` answers `code_expired`.
fn expires_into_fresh(hub: &mut Hub, desk: ConnKey, old: &RoutingCode, at: Instant) -> RoutingCode {
    hub.handle_timeout(at);
    let (fresh, left) = only_registered(&drain(hub), desk);
    assert_ne!(&fresh, old);
    assert_eq!(left, Some(600_000));
    assert_eq!(try_code(hub, old, at), Some(PairOutcome::CodeExpired));
    fresh
}

fn pair(hub: &mut Hub, phone: ConnKey, code: &RoutingCode, now: Instant) {
    hub.handle_text(
        phone,
        &format!(
            r#"{{"type":"pair_request","code":"{}","device_id":"p","device_name":"P"}}"#,
            code.as_str()
        ),
        now,
    );
}

fn connect(hub: &mut Hub, phone: ConnKey, desktop: &str, now: Instant) {
    hub.handle_text(
        phone,
        &format!(
            r#"{{"type":"connect_request","desktop":"{desktop}","device_id":"p","device_name":"P","auth":"cGhvbmU"}}"#
        ),
        now,
    );
}

/// The desktop answers a prompt; `answer` is the JSON fields after the session.
fn respond(hub: &mut Hub, desk: ConnKey, session: &SessionId, answer: &str, now: Instant) {
    hub.handle_text(
        desk,
        &format!(r#"{{"type":"pair_response","session":"{session}",{answer}}}"#),
        now,
    );
}

/// A fresh phone's pair request for `code`: the outcome of a `pair_result` without a
/// session, or `None` when the request went through (`pair_pending`).
fn try_code(hub: &mut Hub, code: &RoutingCode, now: Instant) -> Option<PairOutcome> {
    let phone = greeted(hub, now);
    pair(hub, phone, code, now);
    match only(&drain(hub), phone) {
        ServerMessage::PairResult {
            session: None,
            outcome,
            ..
        } => Some(outcome),
        ServerMessage::PairPending { .. } => None,
        other => panic!("{other:?}"),
    }
}
