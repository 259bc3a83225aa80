#![allow(clippy::unwrap_used)]
//! A malicious signaling server: the real server behind a man-in-the-middle proxy
//! (`proxim_testkit::mitm`) that rewrites DTLS fingerprints, answers with its own desktop, and
//! replays PAKE messages recorded from earlier sessions. Every attempt must fail with the
//! interception error, on first pairings and on trusted reconnects, every time.

use std::sync::{Arc, Mutex};

use proxim_core::auth::{DeviceRole, Identity, TrustStore, TrustedDevice};
use proxim_core::{DesktopEvent, ProximConfig, ProximError, connect, pair};
use proxim_protocol::{
    AuthPayload, ClientMessage, DeviceId, DeviceName, PairOutcome, RoutingCode, ServerMessage,
    Signal,
};
use proxim_server::RunningServer;
use proxim_testkit::devices::{loopback_config as config, register};
use proxim_testkit::mitm::{
    Action, ConnIndex, Direction, Frame, MitmProxy, Origin, ProxyCtx, random_fingerprint,
    rewrite_sdp_fingerprints,
};
use proxim_testkit::raw_client::RawClient;
use proxim_testkit::{STEP, within};
use proxim_tests::start_server;
use tokio::sync::mpsc;

const ROUNDS: usize = 3;

/// What the malicious server does right now.
#[derive(Debug, Clone, Default)]
enum Mode {
    /// Relay honestly (and record).
    #[default]
    Honest,
    /// Swap the DTLS fingerprint in every offer and answer for one of its own.
    RewriteFingerprints(String),
    /// Route pair requests for `from` to the desktop showing `to`.
    RedirectCode { from: RoutingCode, to: RoutingCode },
    /// Route reconnects for one desktop to another.
    RedirectDevice { from: DeviceId, to: DeviceId },
    /// Replace the desktop's authentication in the phone's `pair_result` with a recorded one.
    ReplayReply(AuthPayload),
}

async fn start() -> (RunningServer, MitmProxy, Arc<Mutex<Mode>>) {
    let server = start_server(|config| config.pair_attempts = 0).await;
    let mode = Arc::new(Mutex::new(Mode::Honest));
    let rule_mode = mode.clone();
    let proxy = MitmProxy::start(
        &server.ws_url(),
        move |_: &mut ProxyCtx, direction: Direction, _: ConnIndex, frame: Frame| {
            let mode = rule_mode.lock().unwrap().clone();
            if direction == Direction::ToServer
                && let Some(redirected) = redirect(&mode, &frame)
            {
                return vec![Action::Forward(Frame::Client(redirected))];
            }
            vec![match (mode, direction, frame) {
                (Mode::RewriteFingerprints(fake), _, frame) if frame.sdp().is_some() => {
                    Action::Forward(frame.map_sdp(|sdp| rewrite_sdp_fingerprints(sdp, &fake)))
                }
                (
                    Mode::ReplayReply(recorded),
                    Direction::ToClient,
                    Frame::Server(ServerMessage::PairResult {
                        session,
                        outcome: PairOutcome::Accepted,
                        peer,
                        auth: Some(_),
                    }),
                ) => Action::Forward(Frame::Server(ServerMessage::PairResult {
                    session,
                    outcome: PairOutcome::Accepted,
                    peer,
                    auth: Some(recorded),
                })),
                _ => Action::Pass,
            }]
        },
    )
    .await
    .unwrap();
    (server, proxy, mode)
}

/// The phone's request with its target swapped when `mode` redirects it; `None` to pass it.
fn redirect(mode: &Mode, frame: &Frame) -> Option<ClientMessage> {
    let mut message = frame.as_client()?.clone();
    let target_hit = match (mode, &mut message) {
        (Mode::RedirectCode { from, to }, ClientMessage::PairRequest { code, .. })
            if *code == *from =>
        {
            *code = to.clone();
            true
        }
        (Mode::RedirectDevice { from, to }, ClientMessage::ConnectRequest { desktop, .. })
            if *desktop == *from =>
        {
            *desktop = to.clone();
            true
        }
        _ => false,
    };
    target_hit.then_some(message)
}

/// A desktop run in the background that accepts every prompt.
struct Desk {
    events: mpsc::UnboundedReceiver<DesktopEvent>,
    code: Arc<Mutex<String>>,
    device_id: String,
}

impl Desk {
    async fn start(config: ProximConfig) -> Desk {
        let mut desktop = register(config).await;
        let code = Arc::new(Mutex::new(desktop.code().to_owned()));
        let device_id = desktop.device_id().to_owned();
        let (tx, events) = mpsc::unbounded_channel();
        let shown = code.clone();
        tokio::spawn(async move {
            while let Some(event) = desktop.next_event().await {
                match event {
                    DesktopEvent::Prompt { session, .. } => {
                        let _ = desktop.accept(&session).await;
                    }
                    DesktopEvent::CodeChanged(new) => {
                        *shown.lock().unwrap() = new.clone();
                        let _ = tx.send(DesktopEvent::CodeChanged(new));
                    }
                    other => {
                        if tx.send(other).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Desk {
            events,
            code,
            device_id,
        }
    }

    fn code(&self) -> String {
        self.code.lock().unwrap().clone()
    }

    fn routing(&self) -> RoutingCode {
        RoutingCode::new(self.code().split_once('-').unwrap().0).unwrap()
    }

    /// The next connection result (connected or failed), skipping other events.
    async fn outcome(&mut self) -> Result<proxim_core::Connection, ProximError> {
        loop {
            match within("desktop event", self.events.recv()).await {
                Some(DesktopEvent::Connected(connection)) => return Ok(connection),
                Some(DesktopEvent::ConnectionFailed { error, .. }) => return Err(error),
                Some(_) => {}
                None => panic!("the desktop stopped"),
            }
        }
    }

    /// Wait for the code to change (burned).
    async fn code_changed(&mut self) -> String {
        loop {
            match within("desktop event", self.events.recv()).await {
                Some(DesktopEvent::CodeChanged(code)) => return code,
                Some(_) => {}
                None => panic!("the desktop stopped"),
            }
        }
    }
}

async fn phone_pair(
    config: ProximConfig,
    code: String,
) -> Result<proxim_core::Connection, ProximError> {
    pair(&config, &code).await
}

async fn phone_connect(
    config: ProximConfig,
    desktop: String,
) -> Result<proxim_core::Connection, ProximError> {
    connect(&config, &desktop).await
}

fn assert_intercepted<T: std::fmt::Debug>(what: &str, result: &Result<T, ProximError>) {
    assert!(
        matches!(result, Err(ProximError::Intercepted(_))),
        "{what}: expected the interception error, got {result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewritten_fingerprints_fail_pairing_with_the_interception_error_every_time() {
    let (server, proxy, mode) = start().await;
    for round in 0..ROUNDS {
        *mode.lock().unwrap() = Mode::RewriteFingerprints(random_fingerprint());
        let mut desk = Desk::start(config(&proxy.ws_url(), "Desk", None)).await;
        let phone = phone_pair(config(&proxy.ws_url(), "Phone", None), desk.code());
        let (phone, desk_result) = tokio::join!(tokio::time::timeout(STEP, phone), desk.outcome());
        let phone = phone.unwrap();
        assert_intercepted(&format!("phone, round {round}"), &phone);
        assert_intercepted(&format!("desktop, round {round}"), &desk_result);
        // The desktop spends the code: someone is in the middle.
        let new = desk.code_changed().await;
        assert_ne!(new, "");
    }
    // The proxy really did rewrite: the SDP the desktop received is not the one sent.
    let rewritten = proxy
        .log()
        .filter(|e| e.origin == Origin::Proxy && e.frame.sdp().is_some());
    assert!(rewritten.len() >= ROUNDS, "{} rewrites", rewritten.len());
    drop(proxy);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_answering_with_its_own_desktop_fails_with_the_interception_error() {
    let (server, proxy, mode) = start().await;
    // The attacker's own desktop, registered on the same server: it knows its own secret, not
    // the victim's.
    let mut impostor = Desk::start(config(&server.ws_url(), "Desk", None)).await;
    let victim = Desk::start(config(&proxy.ws_url(), "Desk", None)).await;
    for round in 0..ROUNDS {
        *mode.lock().unwrap() = Mode::RedirectCode {
            from: victim.routing(),
            to: impostor.routing(),
        };
        let phone = phone_pair(config(&proxy.ws_url(), "Phone", None), victim.code());
        let (phone, impostor_result) =
            tokio::join!(tokio::time::timeout(STEP, phone), impostor.outcome());
        let phone = phone.unwrap();
        match &phone {
            Err(ProximError::Intercepted(reason)) => {
                assert!(
                    reason.contains("did not prove it knows the pairing code"),
                    "{reason}"
                );
            }
            other => panic!("round {round}: expected the interception error, got {other:?}"),
        }
        // The impostor learns nothing useful and connects to nobody.
        assert!(
            impostor_result.is_err(),
            "round {round}: {impostor_result:?}"
        );
        impostor.code_changed().await;
    }
    drop(proxy);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replayed_pake_messages_from_an_earlier_session_fail() {
    let (server, proxy, mode) = start().await;
    let mut desk = Desk::start(config(&proxy.ws_url(), "Desk", None)).await;

    // Session 1, honest, recorded by the server.
    let code = desk.code();
    let phone = phone_pair(config(&proxy.ws_url(), "Phone", None), code);
    let (phone, desk_result) = tokio::join!(tokio::time::timeout(STEP, phone), desk.outcome());
    let (phone, desk_conn) = (phone.unwrap().unwrap(), desk_result.unwrap());
    phone.close().await;
    desk_conn.close().await;
    let log = proxy.log();
    let hello = log
        .find_map(|e| match e.frame.as_client() {
            Some(ClientMessage::PairRequest { auth: Some(a), .. }) => Some(a.clone()),
            _ => None,
        })
        .expect("recorded the phone's hello");
    let reply = log
        .find_map(|e| match e.frame.as_client() {
            Some(ClientMessage::PairResponse { auth: Some(a), .. }) => Some(a.clone()),
            _ => None,
        })
        .expect("recorded the desktop's reply");
    let confirm = log
        .find_map(|e| match e.frame.as_client() {
            Some(ClientMessage::Signal {
                signal: Signal::Auth { payload },
                ..
            }) => Some(payload.clone()),
            _ => None,
        })
        .expect("recorded the phone's confirmation");

    // The attacker replays the phone's hello and confirmation to the desktop in a new session.
    for round in 0..ROUNDS {
        let mut attacker = RawClient::greeted(&server.ws_url(), STEP).await;
        attacker
            .send(&ClientMessage::PairRequest {
                code: desk.routing(),
                device_id: DeviceId::new(format!("replayer-{round}")).unwrap(),
                device_name: DeviceName::new("Phone").unwrap(),
                auth: Some(hello.clone()),
            })
            .await;
        let result = attacker
            .until(|m| matches!(m, ServerMessage::PairResult { .. }))
            .await;
        let ServerMessage::PairResult {
            session: Some(session),
            outcome: PairOutcome::Accepted,
            ..
        } = result
        else {
            panic!("round {round}: the desktop did not answer the replayed hello: {result:?}");
        };
        attacker
            .send(&ClientMessage::Signal {
                session,
                signal: Signal::Auth {
                    payload: confirm.clone(),
                },
            })
            .await;
        let desk_result = desk.outcome().await;
        assert_intercepted(
            &format!("desktop, replayed confirmation, round {round}"),
            &desk_result,
        );
        // The failed attempt burned the code.
        desk.code_changed().await;
    }

    // The attacker replays the desktop's reply from session 1 to a new phone.
    *mode.lock().unwrap() = Mode::ReplayReply(reply);
    for round in 0..ROUNDS {
        let phone = tokio::time::timeout(
            STEP,
            phone_pair(config(&proxy.ws_url(), "Phone", None), desk.code()),
        )
        .await
        .unwrap();
        assert_intercepted(&format!("phone, replayed reply, round {round}"), &phone);
        let _ = desk.outcome().await;
        desk.code_changed().await;
    }
    drop(proxy);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnecting_through_a_malicious_server_fails_with_the_interception_error() {
    let (server, proxy, mode) = start().await;
    let desk_dir = tempfile::tempdir().unwrap();
    let phone_dir = tempfile::tempdir().unwrap();
    let mut desk = Desk::start(config(&proxy.ws_url(), "Desk", Some(desk_dir.path()))).await;
    let phone_config = config(&proxy.ws_url(), "Phone", Some(phone_dir.path()));

    // First pairing, honest: both remember each other.
    let phone = phone_pair(phone_config.clone(), desk.code());
    let (phone, desk_result) = tokio::join!(tokio::time::timeout(STEP, phone), desk.outcome());
    phone.unwrap().unwrap().close().await;
    desk_result.unwrap().close().await;
    // An honest reconnect works and is recorded.
    let phone = phone_connect(phone_config.clone(), desk.device_id.clone());
    let (phone, desk_result) = tokio::join!(tokio::time::timeout(STEP, phone), desk.outcome());
    phone.unwrap().unwrap().close().await;
    desk_result.unwrap().close().await;
    let trusted_reply = proxy
        .log()
        .find_map(|e| match e.frame.as_client() {
            Some(ClientMessage::PairResponse { auth: Some(a), .. })
                if matches!(
                    proxim_core::auth::AuthMessage::decode_str(a.as_str()),
                    Ok(proxim_core::auth::AuthMessage::TrustedReply { .. })
                ) =>
            {
                Some(a.clone())
            }
            _ => None,
        })
        .expect("recorded the desktop's trusted reply");

    // (a) Rewritten fingerprints.
    for round in 0..ROUNDS {
        *mode.lock().unwrap() = Mode::RewriteFingerprints(random_fingerprint());
        let phone = phone_connect(phone_config.clone(), desk.device_id.clone());
        let (phone, desk_result) = tokio::join!(tokio::time::timeout(STEP, phone), desk.outcome());
        assert_intercepted(&format!("phone, rewritten, round {round}"), &phone.unwrap());
        assert_intercepted(&format!("desktop, rewritten, round {round}"), &desk_result);
    }

    // (b) The server routes the reconnect to its own desktop, which even "trusts" the phone
    // (the phone's public key is no secret): it cannot sign as the remembered desktop.
    let impostor_dir = tempfile::tempdir().unwrap();
    let phone_key = Identity::load_or_create(phone_dir.path()).unwrap().public();
    TrustStore::open(impostor_dir.path())
        .add(TrustedDevice {
            device_id: "whatever".into(),
            name: "Phone".into(),
            public_key: phone_key.to_hex(),
            role: DeviceRole::Phone,
            server_url: None,
            paired_at: 0,
            last_seen: 0,
        })
        .unwrap();
    let mut impostor =
        Desk::start(config(&server.ws_url(), "Desk", Some(impostor_dir.path()))).await;
    *mode.lock().unwrap() = Mode::RedirectDevice {
        from: DeviceId::new(desk.device_id.clone()).unwrap(),
        to: DeviceId::new(impostor.device_id.clone()).unwrap(),
    };
    for round in 0..ROUNDS {
        let phone = phone_connect(phone_config.clone(), desk.device_id.clone());
        let (phone, impostor_result) =
            tokio::join!(tokio::time::timeout(STEP, phone), impostor.outcome());
        match phone.unwrap() {
            Err(ProximError::Intercepted(reason)) => {
                assert!(
                    reason.contains("identity key is not the one remembered"),
                    "{reason}"
                );
            }
            other => panic!("round {round}: expected the interception error, got {other:?}"),
        }
        assert!(impostor_result.is_err(), "round {round}");
    }

    // (c) A trusted reply recorded earlier, replayed into a new reconnect.
    *mode.lock().unwrap() = Mode::ReplayReply(trusted_reply);
    for round in 0..ROUNDS {
        let phone = phone_connect(phone_config.clone(), desk.device_id.clone());
        let (phone, desk_result) = tokio::join!(tokio::time::timeout(STEP, phone), desk.outcome());
        assert_intercepted(&format!("phone, replayed, round {round}"), &phone.unwrap());
        assert!(desk_result.is_err(), "round {round}: {desk_result:?}");
    }

    // Honest again: the trusted reconnect still works (nothing was corrupted).
    *mode.lock().unwrap() = Mode::Honest;
    let phone = phone_connect(phone_config.clone(), desk.device_id.clone());
    let (phone, desk_result) = tokio::join!(tokio::time::timeout(STEP, phone), desk.outcome());
    phone.unwrap().unwrap().close().await;
    desk_result.unwrap().close().await;
    drop(proxy);
    server.shutdown().await;
}
