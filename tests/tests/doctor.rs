#![allow(clippy::unwrap_used)]
//! `proxim_core::doctor` against real in-process signaling servers and their embedded STUN
//! responders, all on 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use proxim_core::doctor::{
    self, DoctorOptions, NatMapping, RelayTransport, SignalingOutcome, StunOutcome, TurnFailure,
    TurnOutcome, VerdictKind,
};
use proxim_server::{IceConfig, RunningServer, Server, ServerConfig};
use proxim_testkit::coturn::{Coturn, CoturnAuth};
use tokio::net::UdpSocket;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Hard bound of every test here.
const TEST_BOUND: Duration = Duration::from_secs(20);

async fn start_server(configure: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    let mut config = ServerConfig::loopback();
    configure(&mut config);
    Server::start(config).await.expect("server starts")
}

fn loopback_stun() -> Option<SocketAddr> {
    Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
}

fn options(server: &RunningServer, timeout: Duration) -> DoctorOptions {
    let mut options = DoctorOptions::new(server.ws_url());
    options.timeout = timeout;
    options.local_ip = Some(LOOPBACK);
    options
}

#[tokio::test]
async fn two_stun_responders_on_loopback_see_no_nat() {
    // A second server only for its STUN responder; the first advertises it beside its own.
    let other = start_server(|c| c.stun = loopback_stun()).await;
    let other_stun = other.stun_addr().unwrap();
    let server = start_server(|c| {
        c.stun = loopback_stun();
        c.ice = IceConfig::stun_only(vec![format!("stun:{other_stun}")]).unwrap();
    })
    .await;
    let own_stun = server.stun_addr().unwrap();

    let report = tokio::time::timeout(
        TEST_BOUND,
        doctor::run(&options(&server, Duration::from_secs(3))),
    )
    .await
    .expect("doctor in time");

    match &report.signaling.outcome {
        SignalingOutcome::Ok {
            protocol_version, ..
        } => assert_eq!(*protocol_version, proxim_protocol::PROTOCOL_VERSION),
        other => panic!("signaling: {other:?}"),
    }
    let stun = report.stun.as_ref().expect("STUN checked");
    let local = stun.local.unwrap();
    assert_eq!(local.ip(), LOOPBACK);
    let asked: Vec<SocketAddr> = stun.servers.iter().filter_map(|s| s.server).collect();
    assert_eq!(asked, vec![own_stun, other_stun]);
    for server in &stun.servers {
        match &server.outcome {
            StunOutcome::Mapped { mapped, .. } => assert_eq!(*mapped, local, "{}", server.url),
            other => panic!("{}: {other:?}", server.url),
        }
    }
    assert_eq!(stun.mapping, NatMapping::NoNat);
    assert!(report.turn.is_empty());
    assert_eq!(report.verdict.kind, VerdictKind::DirectLikely);
    assert_eq!(report.verdict.summary, "direct connections likely (no NAT)");
    assert!(report.path_works());
    // Both responders really counted a Binding request.
    assert!(server.stats().stun_requests >= 1);
    assert!(other.stats().stun_requests >= 1);
    server.shutdown().await;
    other.shutdown().await;
}

#[tokio::test]
async fn a_silent_stun_server_times_out_within_the_bound() {
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let silent_at = silent.local_addr().unwrap();
    let server = start_server(|c| {
        c.stun = None;
        c.ice = IceConfig::stun_only(vec![format!("stun:{silent_at}")]).unwrap();
    })
    .await;
    let bound = Duration::from_millis(800);
    let started = Instant::now();
    let report = tokio::time::timeout(TEST_BOUND, doctor::run(&options(&server, bound)))
        .await
        .expect("doctor in time");
    let took = started.elapsed();
    assert!(took >= bound, "{took:?}");
    assert!(took < bound * 2, "{took:?}");

    assert!(report.signaling.outcome.is_ok());
    let stun = report.stun.as_ref().unwrap();
    assert_eq!(stun.servers.len(), 1);
    assert_eq!(
        stun.servers[0].outcome,
        StunOutcome::TimedOut { after: bound }
    );
    assert_eq!(stun.mapping, NatMapping::Blocked);
    assert_eq!(report.verdict.kind, VerdictKind::NoPath);
    assert!(
        report
            .verdict
            .summary
            .contains("UDP to STUN blocked or servers down"),
        "{}",
        report.verdict.summary
    );
    assert!(!report.path_works());
    server.shutdown().await;
}

#[tokio::test]
async fn turn_urls_are_listed_without_their_password() {
    let password = "do-not-print-me-7c1";
    let server = start_server(|c| {
        c.stun = loopback_stun();
        c.ice = IceConfig::new(
            &[] as &[&str],
            &["turn:127.0.0.1:9?transport=tcp"],
            Some("doctor".to_owned()),
            Some(password.to_owned()),
        )
        .unwrap();
    })
    .await;
    let report = tokio::time::timeout(
        TEST_BOUND,
        doctor::run(&options(&server, Duration::from_secs(2))),
    )
    .await
    .expect("doctor in time");
    let json = serde_json::to_string(&report).unwrap();
    assert!(!json.contains(password), "{json}");
    let turn_server = report
        .ice_servers
        .iter()
        .find(|s| s.username.is_some())
        .expect("the TURN server is listed");
    assert!(turn_server.has_credential);
    assert_eq!(report.turn.len(), 1);
    assert_eq!(report.turn[0].url, "turn:127.0.0.1:9?transport=tcp");
    // Nothing listens on TCP port 9: the relay is unreachable.
    assert!(
        matches!(
            report.turn[0].outcome,
            TurnOutcome::Failed {
                failure: TurnFailure::Unreachable,
                ..
            }
        ),
        "{:?}",
        report.turn[0]
    );
    // One STUN address (the embedded responder) answered without translation.
    assert_eq!(report.stun.as_ref().unwrap().mapping, NatMapping::NoNat);
    assert!(report.path_works());
    server.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_signaling_server_is_a_quick_clear_failure() {
    let server = start_server(|_| {}).await;
    let url = server.ws_url();
    server.shutdown().await;
    let mut options = DoctorOptions::new(url);
    options.timeout = Duration::from_secs(5);
    options.local_ip = Some(LOOPBACK);
    let started = Instant::now();
    let report = tokio::time::timeout(TEST_BOUND, doctor::run(&options))
        .await
        .expect("doctor in time");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(
            report.signaling.outcome,
            SignalingOutcome::Failed {
                failure: doctor::SignalingFailure::Unreachable,
                ..
            }
        ),
        "{:?}",
        report.signaling
    );
    assert_eq!(report.verdict.summary, "signaling server unreachable");
    assert!(!report.path_works());
}

/// A server handing out coturn's three URLs with `password` for coturn's static user.
async fn server_with_coturn(coturn: &Coturn, password: &str) -> RunningServer {
    let urls = [coturn.udp_url(), coturn.tcp_url(), coturn.tls_url()];
    let password = password.to_owned();
    start_server(move |c| {
        c.stun = loopback_stun();
        c.ice = IceConfig::new(
            &[] as &[&str],
            &urls,
            Some("doctor".to_owned()),
            Some(password),
        )
        .unwrap();
    })
    .await
}

fn static_coturn() -> Coturn {
    Coturn::start(CoturnAuth::Static {
        username: "doctor".into(),
        password: "relay-pass-31".into(),
    })
}

#[tokio::test]
async fn turn_allocations_over_udp_tcp_and_tls_work_with_the_welcome_credentials() {
    let coturn = static_coturn();
    let server = server_with_coturn(&coturn, "relay-pass-31").await;
    let mut options = options(&server, Duration::from_secs(5));
    options.turn_extra_roots_pem = Some(coturn.ca_pem.clone());
    let report = tokio::time::timeout(TEST_BOUND, doctor::run(&options))
        .await
        .expect("doctor in time");
    let transports: Vec<RelayTransport> = report.turn.iter().map(|t| t.transport).collect();
    assert_eq!(
        transports,
        vec![
            RelayTransport::Udp,
            RelayTransport::Tcp,
            RelayTransport::Tls
        ]
    );
    for turn in &report.turn {
        match &turn.outcome {
            TurnOutcome::Ok { relayed, .. } => {
                assert_eq!(relayed.ip(), LOOPBACK, "{}", turn.url);
            }
            other => panic!("{}: {other:?}\ncoturn log:\n{}", turn.url, coturn.log()),
        }
    }
    assert_eq!(report.verdict.kind, VerdictKind::DirectLikely);
    assert!(
        report
            .verdict
            .summary
            .ends_with("TURN/UDP, TURN/TCP, TURN/TLS work as a fallback"),
        "{}",
        report.verdict.summary
    );
    server.shutdown().await;
}

#[tokio::test]
async fn wrong_turn_credentials_are_named_as_refused() {
    let coturn = static_coturn();
    let server = server_with_coturn(&coturn, "not-the-password").await;
    let mut options = options(&server, Duration::from_secs(5));
    options.turn_extra_roots_pem = Some(coturn.ca_pem.clone());
    let report = tokio::time::timeout(TEST_BOUND, doctor::run(&options))
        .await
        .expect("doctor in time");
    assert_eq!(report.turn.len(), 3);
    for turn in &report.turn {
        match &turn.outcome {
            TurnOutcome::Failed { failure, detail } => {
                assert_eq!(*failure, TurnFailure::Refused, "{}: {detail}", turn.url);
                assert!(detail.contains("credentials refused"), "{detail}");
            }
            other => panic!("{}: {other:?}", turn.url),
        }
    }
    let json = serde_json::to_string(&report).unwrap();
    assert!(!json.contains("not-the-password"), "{json}");
    server.shutdown().await;
}

#[tokio::test]
async fn udp_blocked_but_turn_over_tcp_and_tls_works() {
    // STUN goes to a silent socket (as if UDP were filtered); only TCP and TLS relays are
    // advertised.
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let silent_at = silent.local_addr().unwrap();
    let coturn = static_coturn();
    let urls = [coturn.tcp_url(), coturn.tls_url()];
    let server = start_server(move |c| {
        c.stun = None;
        c.ice = IceConfig::new(
            &[format!("stun:{silent_at}")],
            &urls,
            Some("doctor".to_owned()),
            Some("relay-pass-31".to_owned()),
        )
        .unwrap();
    })
    .await;
    let mut options = options(&server, Duration::from_secs(1));
    options.turn_extra_roots_pem = Some(coturn.ca_pem.clone());
    let report = tokio::time::timeout(TEST_BOUND, doctor::run(&options))
        .await
        .expect("doctor in time");
    assert_eq!(report.stun.as_ref().unwrap().mapping, NatMapping::Blocked);
    assert_eq!(report.verdict.kind, VerdictKind::RelayOnly, "{report:?}");
    assert_eq!(
        report.verdict.summary,
        "UDP blocked, TURN/TCP, TURN/TLS work"
    );
    assert!(report.path_works());
    server.shutdown().await;
}
