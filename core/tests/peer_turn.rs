#![allow(clippy::unwrap_used)]
//! TURN relays against a real coturn on loopback: relay candidates over UDP, TCP and TLS, the
//! path they produce, data through them, and failures with readable reasons.

mod peer_common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use peer_common::{config, connect_with, within};
use proxim_core::peer::{
    CandidateKind, ChannelSender, DataChannel, Payload, PeerConfig, PeerError, PeerRole,
};
use proxim_core::turn::{TurnError, TurnOptions, TurnTransport, probe_turn};
use proxim_protocol::IceServer;
use proxim_testkit::coturn::{Coturn, CoturnAuth};
use proxim_testkit::init_tracing;

const USER: &str = "alice";
const PASS: &str = "wonderland";

fn coturn() -> Coturn {
    coturn_with(&[])
}

/// The static-user coturn with extra `turnserver` options.
fn coturn_with(extra: &[&str]) -> Coturn {
    Coturn::start_with(
        CoturnAuth::Static {
            username: USER.into(),
            password: PASS.into(),
        },
        extra,
    )
}

/// A relay-only offerer through `coturn`'s UDP relay, connected to a plain answerer.
async fn relayed_over_udp(
    coturn: &Coturn,
) -> (
    proxim_core::peer::Established,
    proxim_core::peer::Established,
) {
    let offerer = relay_only(
        PeerRole::Offerer,
        turn(coturn.udp_url(), PASS),
        &coturn.ca_pem,
    );
    let (a, b, _) = connect_with(offerer, config(PeerRole::Answerer, vec![]))
        .await
        .unwrap_or_else(|e| panic!("{e}\ncoturn log:\n{}", coturn.log()));
    (a, b)
}

fn turn(url: String, password: &str) -> Vec<IceServer> {
    vec![IceServer {
        urls: vec![url],
        username: Some(USER.into()),
        credential: Some(password.into()),
    }]
}

fn relay_only(role: PeerRole, servers: Vec<IceServer>, ca: &[u8]) -> PeerConfig {
    let mut c = config(role, servers);
    c.force_relay = true;
    c.turn_roots_pem = Some(ca.to_vec());
    c
}

/// Connect with the offerer relay-only through `url`, move 1 MiB both ways, check the path.
async fn relayed_round_trip(coturn: &Coturn, url: String, expected: TurnTransport) {
    let offerer = relay_only(PeerRole::Offerer, turn(url.clone(), PASS), &coturn.ca_pem);
    let answerer = config(PeerRole::Answerer, vec![]);
    let (a, b, elapsed) = connect_with(offerer, answerer)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}\ncoturn log:\n{}", coturn.log()));
    let stats = within("stats", a.connection.stats()).await.unwrap();
    assert_eq!(stats.local.kind, CandidateKind::Relay, "{url}: {stats:?}");
    assert_eq!(stats.path(), CandidateKind::Relay);
    assert_eq!(stats.local.relay_protocol, Some(expected), "{url}");
    assert_eq!(stats.local.address.ip().to_string(), "127.0.0.1");
    let remote = within("stats", b.connection.stats()).await.unwrap();
    assert_eq!(
        remote.remote.kind,
        CandidateKind::Relay,
        "answerer sees the relay: {remote:?}"
    );
    assert_eq!(remote.local.relay_protocol, None);

    // 1 MiB in 16 KiB messages each way, byte-exact and in order.
    let (mut a, mut b) = (a, b);
    move_mib(a.channel.sender(), &mut b.channel).await;
    move_mib(b.channel.sender(), &mut a.channel).await;
    let stats = within("stats", a.connection.stats()).await.unwrap();
    assert_eq!(stats.bytes_sent, 1 << 20);
    assert_eq!(stats.bytes_received, 1 << 20);
    eprintln!(
        "{url}: relayed connection in {elapsed:?}, rtt {:?}",
        stats.rtt
    );
    a.connection.close().await;
    b.connection.close().await;
}

async fn move_mib(sender: ChannelSender, to: &mut DataChannel) {
    let block = Bytes::from((0..16 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let expected = block.clone();
    let send = tokio::spawn(async move {
        for _ in 0..64 {
            sender.send(Payload::Binary(block.clone())).await.unwrap();
        }
    });
    let mut got = 0usize;
    while got < 64 * expected.len() {
        match within("relayed data", to.recv()).await {
            Some(Payload::Binary(bytes)) => {
                assert_eq!(&bytes[..], &expected[..], "relayed bytes intact");
                got += bytes.len();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    send.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_over_udp_carries_data() {
    init_tracing();
    let coturn = coturn();
    relayed_round_trip(&coturn, coturn.udp_url(), TurnTransport::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_over_tcp_carries_data() {
    init_tracing();
    let coturn = coturn();
    relayed_round_trip(&coturn, coturn.tcp_url(), TurnTransport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_over_tls_carries_data() {
    init_tracing();
    let coturn = coturn();
    relayed_round_trip(&coturn, coturn.tls_url(), TurnTransport::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_relayed() {
    init_tracing();
    let coturn = coturn();
    let servers = turn(coturn.udp_url(), PASS);
    let offerer = relay_only(PeerRole::Offerer, servers.clone(), &coturn.ca_pem);
    let answerer = relay_only(PeerRole::Answerer, servers, &coturn.ca_pem);
    let (a, mut b, _) = connect_with(offerer, answerer).await.unwrap();
    let stats = within("stats", a.connection.stats()).await.unwrap();
    assert_eq!(
        (stats.local.kind, stats.remote.kind),
        (CandidateKind::Relay, CandidateKind::Relay)
    );
    a.channel
        .send(Payload::Text("through two relays".into()))
        .await
        .unwrap();
    assert_eq!(
        within("message", b.channel.recv()).await,
        Some(Payload::Text("through two relays".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_candidates_do_not_displace_a_direct_path() {
    init_tracing();
    let coturn = coturn();
    let offerer = config(PeerRole::Offerer, turn(coturn.udp_url(), PASS));
    let answerer = config(PeerRole::Answerer, turn(coturn.tcp_url(), PASS));
    let (a, _b, _) = connect_with(offerer, answerer).await.unwrap();
    let stats = within("stats", a.connection.stats()).await.unwrap();
    // Direct: host, or peer-reflexive when the peer's check beat its trickled candidate.
    assert!(
        matches!(stats.path(), CandidateKind::Host | CandidateKind::Prflx),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_fail_fast_with_the_reason() {
    init_tracing();
    let coturn = coturn();
    for url in [coturn.udp_url(), coturn.tcp_url(), coturn.tls_url()] {
        let offerer = relay_only(
            PeerRole::Offerer,
            turn(url.clone(), "wrong"),
            &coturn.ca_pem,
        );
        let answerer = config(PeerRole::Answerer, vec![]);
        let started = Instant::now();
        let result = connect_with(offerer, answerer).await;
        match result {
            Err(PeerError::IceFailed { reason }) => {
                assert!(
                    reason.contains("credentials refused (401"),
                    "{url}: {reason}"
                );
                assert!(reason.contains(&url), "{reason}");
            }
            other => panic!("{url}: expected an ICE failure, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{url}: failed after {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_relay_is_named_in_the_failure() {
    init_tracing();
    // A port nobody listens on: TCP is refused at once. The socket stays bound (without
    // listening) for the whole test, so no other process on a busy machine can take the port.
    let reserved =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    reserved
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = reserved.local_addr().unwrap().as_socket().unwrap().port();
    let url = format!("turn:127.0.0.1:{port}?transport=tcp");
    let offerer = relay_only(PeerRole::Offerer, turn(url.clone(), PASS), b"");
    let mut offerer = offerer;
    offerer.turn_roots_pem = None;
    let result = connect_with(offerer, config(PeerRole::Answerer, vec![])).await;
    match result {
        Err(PeerError::IceFailed { reason }) => {
            assert!(reason.contains("unreachable"), "{reason}");
            assert!(reason.contains(&url), "{reason}");
        }
        other => panic!("expected an ICE failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_relay_with_an_untrusted_certificate_fails() {
    init_tracing();
    let coturn = coturn();
    let mut offerer = relay_only(PeerRole::Offerer, turn(coturn.tls_url(), PASS), b"");
    offerer.turn_roots_pem = None; // webpki roots only: the test CA is not among them
    let result = connect_with(offerer, config(PeerRole::Answerer, vec![])).await;
    match result {
        Err(PeerError::IceFailed { reason }) => {
            assert!(reason.contains("TLS failed"), "{reason}")
        }
        other => panic!("expected an ICE failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_each_transport() {
    init_tracing();
    let coturn = coturn();
    let options = TurnOptions {
        extra_roots_pem: Some(coturn.ca_pem.clone()),
        local_ip: None,
    };
    for (url, transport) in [
        (coturn.udp_url(), TurnTransport::Udp),
        (coturn.tcp_url(), TurnTransport::Tcp),
        (coturn.tls_url(), TurnTransport::Tls),
    ] {
        let probe = probe_turn(&url, USER, PASS, &options, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(probe.transport, transport);
        assert_eq!(probe.relayed.ip().to_string(), "127.0.0.1");
        assert!(
            probe.mapped.is_some_and(|m| m.ip().is_loopback()),
            "{probe:?}"
        );
        let refused = probe_turn(&url, USER, "nope", &options, Duration::from_secs(5)).await;
        assert!(
            matches!(refused, Err(TurnError::Refused { code: 401, .. })),
            "{url}: {refused:?}"
        );
    }
    // Silence on UDP: a bound socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let url = format!("turn:{}", silent.local_addr().unwrap());
    let started = Instant::now();
    let result = probe_turn(&url, USER, PASS, &options, Duration::from_secs(2)).await;
    assert!(matches!(result, Err(TurnError::TimedOut(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_releases_the_allocation() {
    init_tracing();
    // One allocation per user at a time: a second one is refused until the first is released.
    let coturn = coturn_with(&["--user-quota", "1"]);
    let url = coturn.udp_url();
    let options = TurnOptions::default();
    let offerer = relay_only(PeerRole::Offerer, turn(url.clone(), PASS), &coturn.ca_pem);
    let (a, b, _) = connect_with(offerer, config(PeerRole::Answerer, vec![]))
        .await
        .unwrap();
    let busy = probe_turn(&url, USER, PASS, &options, Duration::from_secs(3)).await;
    assert!(
        matches!(busy, Err(TurnError::Refused { code: 486, .. })),
        "the open connection holds the user's one allocation: {busy:?}"
    );
    a.connection.close().await;
    b.connection.close().await;
    // The release (a Refresh with lifetime 0) went out on close: the quota is free again.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match probe_turn(&url, USER, PASS, &options, Duration::from_secs(3)).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "allocation not released yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("allocation still held after close: {e}\n{}", coturn.log()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allocation_is_refreshed_while_the_connection_lives() {
    init_tracing();
    // coturn tells the client a 4 s lifetime (it keeps the allocation longer itself, so the
    // proof is its log): the client must refresh at half of it, and data keeps flowing.
    let coturn = coturn_with(&["--max-allocate-lifetime=4", "-v"]);
    let (a, mut b) = relayed_over_udp(&coturn).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    a.channel
        .send(Payload::Text("after the lifetime".into()))
        .await
        .unwrap();
    assert_eq!(
        within("message after the lifetime", b.channel.recv()).await,
        Some(Payload::Text("after the lifetime".into()))
    );
    let log = coturn.log();
    assert!(
        log.contains("incoming packet REFRESH processed, success"),
        "no refresh reached coturn:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_side_whose_network_changes_allocates_again_from_the_new_one() {
    init_tracing();
    // A phone on a network where only the relay works moves to another: its allocation was
    // made from an address that is gone, so it allocates again from the new one, and the
    // connection carries on through the new relayed address.
    let coturn = coturn_with(&["-v"]);
    let (a, mut b) = relayed_over_udp(&coturn).await;
    let (mut a_events, a_connection) = (a.events, a.connection);
    let before = within("stats", a_connection.stats()).await.unwrap();
    assert_eq!(before.local.kind, CandidateKind::Relay);
    let allocations = |log: &str| log.matches("ALLOCATE processed, success").count();
    let allocated_before = allocations(&coturn.log());

    a_connection
        .set_local_ips(vec!["127.0.0.2".parse().unwrap()])
        .await
        .expect("a restart starts");
    let after = path_after_restart(&mut a_events, &coturn).await;
    assert_eq!(after.local.kind, CandidateKind::Relay, "{after:?}");
    assert_ne!(
        after.local.address, before.local.address,
        "a new allocation, not the old relayed address"
    );
    let log = coturn.log();
    assert!(
        allocations(&log) > allocated_before,
        "allocated again from the new address:\n{log}"
    );
    a.channel
        .send(Payload::Text("through the new relay".into()))
        .await
        .unwrap();
    assert_eq!(
        within("message through the new relay", b.channel.recv()).await,
        Some(Payload::Text("through the new relay".into()))
    );
    a_connection.close().await;
    b.connection.close().await;
}

/// TURN REST credentials for coturn's `--static-auth-secret`: `<unix expiry>:<user>` and
/// base64(HMAC-SHA1(secret, username)), as `proxim serve` mints them.
fn rest_credentials(secret: &str, ttl: Duration) -> IceServer {
    use base64::Engine as _;
    use hmac::Mac as _;
    let expiry = std::time::SystemTime::now() + ttl;
    let secs = expiry
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let username = format!("{secs}:phone");
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    IceServer {
        urls: vec![],
        username: Some(username),
        credential: Some(password),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_connection_outlives_its_credentials_and_allocates_again_with_fresh_ones() {
    use proxim_core::link::LinkEvent;
    init_tracing();
    const SECRET: &str = "turn-rest-secret";
    // Longer than the 5 s margin within which credentials count as expired already.
    const TTL: Duration = Duration::from_secs(7);
    // coturn hands out a 4 s lifetime: the allocation is refreshed every 2 s, also after the
    // credentials expired.
    let coturn = Coturn::start_with(
        CoturnAuth::Secret(SECRET.into()),
        &["--max-allocate-lifetime=4", "-v"],
    );
    let turn_with = |credentials: IceServer| {
        vec![IceServer {
            urls: vec![coturn.udp_url()],
            ..credentials
        }]
    };
    let offerer = relay_only(
        PeerRole::Offerer,
        turn_with(rest_credentials(SECRET, TTL)),
        &coturn.ca_pem,
    );
    let expires = Instant::now() + TTL;
    // Two links whose signals the test forwards, so that it can speak on the offerer's link
    // as the signaling client does after a reconnect.
    let (mut a_link, mut b_link) = (peer_common::tapped_link(), peer_common::tapped_link());
    let (a_deliver, b_deliver) = (a_link.deliver.clone(), b_link.deliver.clone());
    tokio::spawn(async move {
        while let Some(signal) = a_link.sent.recv().await {
            let _ = b_deliver.send(LinkEvent::Signal(signal)).await;
        }
    });
    let a_deliver_signals = a_deliver.clone();
    tokio::spawn(async move {
        while let Some(signal) = b_link.sent.recv().await {
            let _ = a_deliver_signals.send(LinkEvent::Signal(signal)).await;
        }
    });
    let (a, b) = tokio::join!(
        proxim_core::peer::PeerConnection::establish(offerer, a_link.link),
        proxim_core::peer::PeerConnection::establish(
            config(PeerRole::Answerer, vec![]),
            b_link.link
        ),
    );
    let (a, mut b) = (
        a.unwrap_or_else(|e| panic!("{e}\n{}", coturn.log())),
        b.unwrap(),
    );
    let before = within("stats", a.connection.stats()).await.unwrap();
    assert_eq!(before.local.kind, CandidateKind::Relay);

    // The credentials expire; the allocation is refreshed past that and carries data. (Had
    // the refreshes after the expiry been refused, the allocation would be gone 4 s after the
    // last one before it.)
    tokio::time::sleep_until((expires + Duration::from_secs(5)).into()).await;
    a.channel
        .send(Payload::Text("after the credentials expired".into()))
        .await
        .unwrap();
    assert_eq!(
        within("message past the credentials", b.channel.recv()).await,
        Some(Payload::Text("after the credentials expired".into()))
    );
    let allocations = |log: &str| log.matches("ALLOCATE processed, success").count();
    let allocated_before = allocations(&coturn.log());

    // The network changes: a new allocation with the expired credentials is refused, so the
    // restart has no relay until fresh ones come (here as after a signaling reconnect).
    let mut a_events = a.events;
    a.connection
        .set_local_ips(vec!["127.0.0.2".parse().unwrap()])
        .await
        .expect("a restart starts");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        allocations(&coturn.log()),
        allocated_before,
        "expired credentials allocate nothing"
    );
    a_deliver
        .send(LinkEvent::IceServers(turn_with(rest_credentials(
            SECRET,
            Duration::from_secs(600),
        ))))
        .await
        .unwrap();
    let after = path_after_restart(&mut a_events, &coturn).await;
    assert_eq!(after.local.kind, CandidateKind::Relay, "{after:?}");
    assert_ne!(after.local.address, before.local.address);
    assert!(allocations(&coturn.log()) > allocated_before);
    a.channel
        .send(Payload::Text(
            "through a relay with fresh credentials".into(),
        ))
        .await
        .unwrap();
    assert_eq!(
        within("message through the new relay", b.channel.recv()).await,
        Some(Payload::Text(
            "through a relay with fresh credentials".into()
        ))
    );
    a.connection.close().await;
    b.connection.close().await;
}

/// The path an ICE restart ends on: the `PathChanged` after a `Reconnecting` (the first path's
/// own event may still wait before them).
async fn path_after_restart(
    events: &mut proxim_core::peer::ConnectionEvents,
    coturn: &Coturn,
) -> proxim_core::peer::ConnectionStats {
    let mut restarted = false;
    loop {
        match within("a new path", events.next()).await.expect("events") {
            proxim_core::peer::ConnectionEvent::Reconnecting { .. } => restarted = true,
            proxim_core::peer::ConnectionEvent::PathChanged(stats) if restarted => return stats,
            proxim_core::peer::ConnectionEvent::Closed { reason, .. } => {
                panic!("closed: {reason}\ncoturn log:\n{}", coturn.log())
            }
            _ => {}
        }
    }
}
