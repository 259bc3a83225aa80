//! Connection reports (`connection_report`): a real desktop and phone pair through a small
//! in-process hub (core's tests cannot start `proxim-server`), which relays pairing and
//! signals like the server and records every report each side sends.
#![allow(clippy::unwrap_used)]

mod signaling_fake;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use proxim_core::{Desktop, ProximConfig};
use proxim_protocol::{
    ClientMessage, ConnectionOutcome, ConnectionReport, PairOutcome, PathKind, PeerDevice,
    RoutingCode, Sdp, ServerMessage, SessionEndReason, SessionId, Signal,
};
use proxim_testkit::devices::{echo_once, loopback_config, pair_with, until_closed};
use proxim_testkit::mitm::{random_fingerprint, rewrite_sdp_fingerprints};
use proxim_testkit::{init_tracing, within};
use signaling_fake::{FakeConn, FakeServer, S1, session};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_report_connected_and_the_desktop_reports_its_close() {
    let (mut desktop, mut hub) = Hub::start(Tamper::None, true).await;
    let code = desktop.code().to_owned();
    let (mut phone, mut desk) = pair_with(&mut desktop, phone_config(&hub.url, true), &code).await;

    let mut connected = hub.reports(2).await;
    connected.sort_by_key(|r| r.from);
    for report in &connected {
        assert_eq!(report.session, session(S1), "{report:?}");
        assert_eq!(report.outcome, ConnectionOutcome::Connected, "{report:?}");
        // Loopback: host, or peer-reflexive when a check arrives before the candidate.
        let path = report.report.path;
        assert!(
            matches!(path, Some(PathKind::Host | PathKind::Prflx)),
            "{report:?}"
        );
        assert!(report.report.rtt_ms.is_some(), "{report:?}");
        assert!(report.report.time_to_connect_ms.is_some(), "{report:?}");
        assert_eq!(report.report.relay_protocol, None);
        assert_eq!(report.report.failure, None);
        assert_eq!(report.report.bytes_sent, None);
    }
    assert_eq!(
        connected.iter().map(|r| r.from).collect::<Vec<_>>(),
        [Side::Desktop, Side::Phone]
    );

    echo_once(&mut phone, &mut desk, "ping").await;
    echo_once(&mut desk, &mut phone, "pong").await;
    desk.close().await;

    let closed = hub.reports(1).await.remove(0);
    assert_eq!(closed.from, Side::Desktop);
    assert_eq!(closed.outcome, ConnectionOutcome::Closed, "{closed:?}");
    assert_eq!(closed.report.failure, None, "a local close: {closed:?}");
    assert!(closed.report.duration_ms.is_some(), "{closed:?}");
    assert!(closed.report.bytes_sent.unwrap_or(0) > 0, "{closed:?}");
    assert!(closed.report.bytes_received.unwrap_or(0) > 0, "{closed:?}");
    until_closed(&mut phone).await;
    hub.assert_no_more_reports().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desktop_reports_a_close_by_the_phone() {
    let (mut desktop, mut hub) = Hub::start(Tamper::None, true).await;
    let code = desktop.code().to_owned();
    let (mut phone, mut desk) = pair_with(&mut desktop, phone_config(&hub.url, true), &code).await;
    hub.reports(2).await;

    echo_once(&mut phone, &mut desk, "ping").await;
    // Past the desktop's stats refresh: the peer is gone by the time the close is seen.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    phone.close().await;
    until_closed(&mut desk).await;

    let closed = hub.reports(1).await.remove(0);
    assert_eq!(
        (closed.from, closed.outcome),
        (Side::Desktop, ConnectionOutcome::Closed)
    );
    let failure = closed.report.failure.as_ref().map(|t| t.as_str());
    assert_eq!(failure, Some("closed_by_peer"), "{closed:?}");
    assert!(closed.report.bytes_received.unwrap_or(0) > 0, "{closed:?}");
    hub.assert_no_more_reports().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_desktop_connection_reports_a_local_close() {
    let (mut desktop, mut hub) = Hub::start(Tamper::None, true).await;
    let code = desktop.code().to_owned();
    let (mut phone, desk) = pair_with(&mut desktop, phone_config(&hub.url, true), &code).await;
    hub.reports(2).await;
    drop(desk);

    let closed = hub.reports(1).await.remove(0);
    assert_eq!(
        (closed.from, closed.outcome),
        (Side::Desktop, ConnectionOutcome::Closed)
    );
    assert_eq!(closed.report.failure, None, "{closed:?}");
    assert!(closed.report.duration_ms.is_some(), "{closed:?}");
    until_closed(&mut phone).await;
    hub.assert_no_more_reports().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_offer_is_reported_as_failed_by_both_sides() {
    let (mut desktop, mut hub) = Hub::start(Tamper::OfferFingerprint, true).await;
    let code = desktop.code().to_owned();
    let config = phone_config(&hub.url, true);
    let phone = tokio::spawn(async move { proxim_core::pair(&config, &code).await });
    loop {
        match within("desktop event", desktop.next_event()).await.unwrap() {
            proxim_core::DesktopEvent::Prompt { session, .. } => {
                desktop.accept(&session).await.unwrap()
            }
            proxim_core::DesktopEvent::ConnectionFailed { .. } => break,
            proxim_core::DesktopEvent::Connected(_) => panic!("connected through a tampered offer"),
            _ => {}
        }
    }
    let phone = within("phone", phone).await.unwrap();
    assert!(
        phone.is_err(),
        "the phone connected through a tampered offer"
    );

    let mut failed = hub.reports(2).await;
    failed.sort_by_key(|r| r.from);
    let tokens: Vec<_> = failed
        .iter()
        .map(|r| {
            assert_eq!(r.outcome, ConnectionOutcome::Failed, "{r:?}");
            assert!(r.report.time_to_connect_ms.is_some(), "{r:?}");
            assert_eq!(r.report.path, None, "{r:?}");
            (
                r.from,
                r.report.failure.as_ref().map(|t| t.as_str().to_owned()),
            )
        })
        .collect();
    assert_eq!(
        tokens,
        [
            (Side::Desktop, Some("intercepted".to_owned())),
            (Side::Phone, Some("refused_by_peer".to_owned())),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reports_when_turned_off() {
    let (mut desktop, mut hub) = Hub::start(Tamper::None, false).await;
    let code = desktop.code().to_owned();
    let (mut phone, mut desk) = pair_with(&mut desktop, phone_config(&hub.url, false), &code).await;
    echo_once(&mut phone, &mut desk, "ping").await;
    desk.close().await;
    until_closed(&mut phone).await;
    hub.assert_no_more_reports().await;
}

// ---------------------------------------------------------------------------------------------
// The hub
// ---------------------------------------------------------------------------------------------

/// Which device sent a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Desktop,
    Phone,
}

/// One `connection_report` the hub received.
#[derive(Debug)]
struct Received {
    from: Side,
    session: SessionId,
    outcome: ConnectionOutcome,
    report: ConnectionReport,
}

/// What the hub does to the signals it relays.
#[derive(Debug, Clone, Copy)]
enum Tamper {
    None,
    /// Replace the fingerprint of the phone's offer (a server in the middle).
    OfferFingerprint,
}

/// A one-session signaling hub: a registered desktop and the phone that pairs with it.
struct Hub {
    url: String,
    reports: mpsc::UnboundedReceiver<Received>,
    task: JoinHandle<()>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn phone_config(url: &str, report: bool) -> ProximConfig {
    loopback_config(url, "Phone", None).with_report_connections(report)
}

impl Hub {
    /// Start the hub, register a desktop on it, then serve the phone that comes next.
    async fn start(tamper: Tamper, report: bool) -> (Desktop, Hub) {
        init_tracing();
        let mut server = FakeServer::start().await;
        let url = server.url.clone();
        let config = loopback_config(&url, "Desk", None).with_report_connections(report);
        let register = tokio::spawn(Desktop::register(config));
        let mut desk = server.accept().await;
        desk.handshake(1_000, 30_000).await;
        let desktop_device = match desk.recv_skip_pings().await {
            ClientMessage::RegisterDesktop {
                device_id,
                device_name,
            } => PeerDevice {
                device_id,
                device_name,
            },
            other => panic!("expected register_desktop, got {other:?}"),
        };
        desk.send(&registered("K7P2QX")).await;
        let desktop = within("register", register).await.unwrap().unwrap();
        let (tx, reports) = mpsc::unbounded_channel();
        let task = tokio::spawn(serve(server, desk, desktop_device, tamper, tx));
        (desktop, Hub { url, reports, task })
    }

    /// The next `n` reports (in arrival order).
    async fn reports(&mut self, n: usize) -> Vec<Received> {
        let mut out = Vec::new();
        while out.len() < n {
            out.push(
                within("connection report", self.reports.recv())
                    .await
                    .unwrap(),
            );
        }
        out
    }

    /// No report arrives within a grace period.
    async fn assert_no_more_reports(&mut self) {
        let late = tokio::time::timeout(Duration::from_millis(500), self.reports.recv()).await;
        if let Ok(Some(report)) = late {
            panic!("unexpected report: {report:?}");
        }
    }
}

fn registered(code: &str) -> ServerMessage {
    ServerMessage::Registered {
        code: RoutingCode::new(code).unwrap(),
        expires_in_ms: None,
    }
}

/// Serve the desktop and the next connection (the phone) until both are gone.
async fn serve(
    mut server: FakeServer,
    mut desk: FakeConn,
    desktop_device: PeerDevice,
    tamper: Tamper,
    reports: mpsc::UnboundedSender<Received>,
) {
    let mut phone = server.accept().await;
    phone.handshake(1_000, 30_000).await;
    let mut phone_device = None;
    let (mut desk_open, mut phone_open) = (true, true);
    let mut phone_left = false;
    while desk_open || phone_open {
        let (from, frame) = tokio::select! {
            frame = desk.ws.next(), if desk_open => (Side::Desktop, frame),
            frame = phone.ws.next(), if phone_open => (Side::Phone, frame),
        };
        let message = match frame {
            Some(Ok(Message::Text(text))) => ClientMessage::decode(text.as_str()).unwrap(),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => {
                match from {
                    Side::Desktop => desk_open = false,
                    Side::Phone => {
                        phone_open = false;
                        if !std::mem::replace(&mut phone_left, true) {
                            send(&mut desk, &ended()).await;
                        }
                    }
                }
                continue;
            }
        };
        let (me, other) = match from {
            Side::Desktop => (&mut desk, &mut phone),
            Side::Phone => (&mut phone, &mut desk),
        };
        match message {
            ClientMessage::Ping { seq } => send(me, &ServerMessage::Pong { seq }).await,
            ClientMessage::PairRequest {
                device_id,
                device_name,
                auth,
                ..
            } => {
                let device = PeerDevice {
                    device_id,
                    device_name,
                };
                phone_device = Some(device.clone());
                send(
                    me,
                    &ServerMessage::PairPending {
                        session: session(S1),
                        expires_in_ms: 60_000,
                    },
                )
                .await;
                send(
                    other,
                    &ServerMessage::PairPrompt {
                        session: session(S1),
                        peer: device,
                        expires_in_ms: 60_000,
                        auth,
                    },
                )
                .await;
            }
            ClientMessage::PairResponse { accept, auth, .. } => {
                let outcome = if accept {
                    PairOutcome::Accepted
                } else {
                    PairOutcome::Rejected
                };
                let result = |peer: Option<PeerDevice>, auth| ServerMessage::PairResult {
                    session: Some(session(S1)),
                    outcome,
                    peer: peer.filter(|_| accept),
                    auth,
                };
                send(me, &result(phone_device.clone(), None)).await;
                send(other, &result(Some(desktop_device.clone()), auth)).await;
            }
            ClientMessage::Signal { session, signal } => {
                let signal = match (tamper, from, signal) {
                    (Tamper::OfferFingerprint, Side::Phone, Signal::Offer { sdp }) => {
                        let sdp = rewrite_sdp_fingerprints(sdp.as_str(), &random_fingerprint());
                        Signal::Offer {
                            sdp: Sdp::new(sdp).unwrap(),
                        }
                    }
                    (_, _, signal) => signal,
                };
                send(other, &ServerMessage::Signal { session, signal }).await;
            }
            ClientMessage::RenewCode => send(me, &registered("M3N4PQ")).await,
            ClientMessage::ConnectionReport {
                session,
                outcome,
                report,
            } => {
                let _ = reports.send(Received {
                    from,
                    session,
                    outcome,
                    report,
                });
            }
            ClientMessage::Leave { .. } | ClientMessage::Bye { .. }
                if from == Side::Phone && !std::mem::replace(&mut phone_left, true) =>
            {
                send(&mut desk, &ended()).await;
            }
            _ => {}
        }
    }
}

fn ended() -> ServerMessage {
    ServerMessage::SessionEnded {
        session: session(S1),
        reason: SessionEndReason::PeerLeft,
    }
}

/// Send to a client that may be gone (then the message is dropped, as the server would).
async fn send(conn: &mut FakeConn, message: &ServerMessage) {
    let _ = conn.ws.send(Message::text(message.encode())).await;
}
