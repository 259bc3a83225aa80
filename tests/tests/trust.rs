#![allow(clippy::unwrap_used)]
//! Pairing codes, burned and expired codes, trusted devices and revocation, end to end: a real
//! server on loopback, real desktops and phones on proxim-core, real WebRTC.

use std::path::Path;
use std::time::Duration;

use proxim_core::auth::DeviceRole;
use proxim_core::peer::Payload;
use proxim_core::{
    AuthMethod, Connection, Desktop, DesktopEvent, Event, ProximConfig, ProximError, connect, pair,
    revoke_device, trusted_devices,
};
use proxim_server::{RunningServer, Server, ServerConfig};

const STEP: Duration = Duration::from_secs(30);

async fn start_server(configure: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    proxim_tests::init_tracing();
    let mut config = ServerConfig::loopback();
    configure(&mut config);
    Server::start(config).await.expect("server starts")
}

fn desktop_config(server: &RunningServer, dir: &Path) -> ProximConfig {
    ProximConfig::new(server.ws_url(), "Trust desktop")
        .loopback_only()
        .with_data_dir(dir)
}

fn phone_config(server: &RunningServer, dir: Option<&Path>) -> ProximConfig {
    let config = ProximConfig::new(server.ws_url(), "Trust phone").loopback_only();
    match dir {
        Some(dir) => config.with_data_dir(dir),
        None => config,
    }
}

async fn register(config: ProximConfig) -> Desktop {
    tokio::time::timeout(STEP, Desktop::register(config))
        .await
        .expect("register in time")
        .expect("register")
}

/// Drive the desktop (accepting every prompt) until `until` says stop; returns what it saw.
async fn drive(
    desktop: &mut Desktop,
    mut until: impl FnMut(&DesktopEvent) -> bool,
) -> DesktopEvent {
    loop {
        let event = tokio::time::timeout(STEP, desktop.next_event())
            .await
            .expect("desktop event in time")
            .expect("desktop registered");
        if let DesktopEvent::Prompt { session, .. } = &event {
            desktop.accept(session).await.unwrap();
            continue;
        }
        if until(&event) {
            return event;
        }
    }
}

async fn connected(desktop: &mut Desktop) -> Connection {
    match drive(desktop, |e| {
        matches!(
            e,
            DesktopEvent::Connected(_) | DesktopEvent::ConnectionFailed { .. }
        )
    })
    .await
    {
        DesktopEvent::Connected(connection) => connection,
        DesktopEvent::ConnectionFailed { error, .. } => panic!("desktop failed: {error}"),
        _ => unreachable!(),
    }
}

async fn echo_once(phone: &mut Connection, desk: &mut Connection, text: &str) {
    phone.send_text(text).await.unwrap();
    loop {
        match tokio::time::timeout(STEP, desk.next_event())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Message(Payload::Text(got)) => {
                assert_eq!(got, text);
                return;
            }
            Event::Closed { reason } => panic!("closed: {reason}"),
            _ => {}
        }
    }
}

/// The first pairing with a code: both sides verify, show the same comparison code and
/// remember each other. After both restart, the phone reconnects without a code, as a trusted
/// device; once the desktop revokes it, it cannot, and once the phone forgets the desktop it
/// cannot either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trusted_device_reconnects_without_a_code_after_both_restart_and_a_revoked_one_cannot() {
    let server = start_server(|_| {}).await;
    let desk_dir = tempfile::tempdir().unwrap();
    let phone_dir = tempfile::tempdir().unwrap();

    // First pairing, with the code.
    let mut desktop = register(desktop_config(&server, desk_dir.path())).await;
    let desktop_id = desktop.device_id().to_owned();
    let code = desktop.code().to_owned();
    let config = phone_config(&server, Some(phone_dir.path()));
    let phone = tokio::spawn(async move { pair(&config, &code).await });
    let mut desk = connected(&mut desktop).await;
    let mut phone = tokio::time::timeout(STEP, phone)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(phone.auth_method(), AuthMethod::Code);
    assert_eq!(desk.auth_method(), AuthMethod::Code);
    let comparison = phone
        .comparison_code()
        .expect("a comparison code")
        .to_owned();
    assert_eq!(desk.comparison_code(), Some(comparison.as_str()));
    assert_eq!(comparison.len(), 7, "{comparison}");
    echo_once(&mut phone, &mut desk, "first, with the code").await;
    phone.close().await;
    desk.close().await;
    drop(desktop);

    // Both remember each other.
    let phone_trusts = trusted_devices(&phone_config(&server, Some(phone_dir.path()))).unwrap();
    assert_eq!(phone_trusts.len(), 1);
    assert_eq!(phone_trusts[0].role, DeviceRole::Desktop);
    assert_eq!(phone_trusts[0].device_id, desktop_id);
    assert_eq!(phone_trusts[0].name, "Trust desktop");
    let desk_trusts = trusted_devices(&desktop_config(&server, desk_dir.path())).unwrap();
    assert_eq!(desk_trusts.len(), 1);
    assert_eq!(desk_trusts[0].role, DeviceRole::Phone);
    let phone_id = desk_trusts[0].device_id.clone();

    // Both restart: a new desktop process (same data dir, same id) and a new phone config.
    let mut desktop = register(desktop_config(&server, desk_dir.path())).await;
    assert_eq!(desktop.device_id(), desktop_id);
    let config = phone_config(&server, Some(phone_dir.path()));
    let target = desktop_id.clone();
    let phone = tokio::spawn(async move { connect(&config, &target).await });
    // No prompt for a trusted phone: the next desktop event is the connection.
    let event = tokio::time::timeout(STEP, desktop.next_event())
        .await
        .unwrap()
        .unwrap();
    let mut desk = match event {
        DesktopEvent::Connected(connection) => connection,
        other => panic!("expected a connection without a prompt, got {other:?}"),
    };
    let mut phone = tokio::time::timeout(STEP, phone)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(phone.auth_method(), AuthMethod::Trusted);
    assert_eq!(desk.auth_method(), AuthMethod::Trusted);
    assert_eq!(phone.comparison_code(), None);
    echo_once(&mut phone, &mut desk, "again, without a code").await;
    phone.close().await;
    desk.close().await;

    // The desktop revokes the phone: the next reconnect is refused, on both sides.
    let removed = revoke_device(&desktop_config(&server, desk_dir.path()), &phone_id).unwrap();
    assert_eq!(removed.len(), 1);
    let config = phone_config(&server, Some(phone_dir.path()));
    let target = desktop_id.clone();
    let phone = tokio::spawn(async move { connect(&config, &target).await });
    let refused = drive(&mut desktop, |e| matches!(e, DesktopEvent::Refused { .. })).await;
    let DesktopEvent::Refused { reason, .. } = refused else {
        unreachable!()
    };
    assert!(reason.contains("not a trusted device"), "{reason}");
    let result = tokio::time::timeout(STEP, phone).await.unwrap().unwrap();
    assert!(
        matches!(result, Err(ProximError::NotTrusted(_))),
        "{result:?}"
    );

    // The phone forgets the desktop: it cannot even ask.
    let removed =
        revoke_device(&phone_config(&server, Some(phone_dir.path())), &desktop_id).unwrap();
    assert_eq!(removed.len(), 1);
    let result = connect(&phone_config(&server, Some(phone_dir.path())), &desktop_id).await;
    assert!(
        matches!(result, Err(ProximError::NotTrusted(_))),
        "{result:?}"
    );

    // A new pairing with the code makes it trusted again.
    let code = desktop.code().to_owned();
    let config = phone_config(&server, Some(phone_dir.path()));
    let phone = tokio::spawn(async move { pair(&config, &code).await });
    let desk = connected(&mut desktop).await;
    let phone = tokio::time::timeout(STEP, phone)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(phone.auth_method(), AuthMethod::Code);
    assert_eq!(
        trusted_devices(&desktop_config(&server, desk_dir.path()))
            .unwrap()
            .len(),
        1
    );
    phone.close().await;
    desk.close().await;
    server.shutdown().await;
}

/// A phone with the right routing part and a wrong secret fails with the interception error;
/// the desktop burns the code and shows a new one; the old code, even with its right secret,
/// is then refused as used; the new code works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_code_fails_and_burns_the_code() {
    let server = start_server(|c| c.pair_attempts = 0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut desktop = register(desktop_config(&server, dir.path())).await;
    let good = desktop.code().to_owned();
    let (routing, secret) = good.split_once('-').unwrap();
    // Another secret of the same alphabet.
    let wrong_secret: String = secret
        .chars()
        .map(|c| if c == 'A' { 'B' } else { 'A' })
        .collect();
    let wrong = format!("{routing}-{wrong_secret}");

    let config = phone_config(&server, None);
    let phone = tokio::spawn(async move { pair(&config, &wrong).await });
    let failed = drive(&mut desktop, |e| {
        matches!(e, DesktopEvent::ConnectionFailed { .. })
    })
    .await;
    let DesktopEvent::ConnectionFailed { error, .. } = failed else {
        unreachable!()
    };
    assert!(matches!(error, ProximError::Intercepted(_)), "{error:?}");
    let result = tokio::time::timeout(STEP, phone).await.unwrap().unwrap();
    match &result {
        Err(ProximError::Intercepted(reason)) => {
            assert!(reason.contains("mistyped"), "{reason}");
        }
        other => panic!("expected the interception error, got {other:?}"),
    }

    // The code is burned: a new one comes.
    let changed = drive(&mut desktop, |e| matches!(e, DesktopEvent::CodeChanged(_))).await;
    let DesktopEvent::CodeChanged(new_code) = changed else {
        unreachable!()
    };
    assert_ne!(new_code, good);
    assert_ne!(
        new_code.split_once('-').unwrap().0,
        routing,
        "the routing part changes too"
    );
    assert_eq!(desktop.code(), new_code);

    // The old code, with its right secret, is refused as used.
    let result = pair(&phone_config(&server, None), &good).await;
    assert!(matches!(result, Err(ProximError::CodeUsed)), "{result:?}");

    // The new code works.
    let config = phone_config(&server, None);
    let code = new_code.clone();
    let phone = tokio::spawn(async move { pair(&config, &code).await });
    let desk = connected(&mut desktop).await;
    let phone = tokio::time::timeout(STEP, phone)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    phone.close().await;
    desk.close().await;
    server.shutdown().await;
}

/// A code past its lifetime fails with its own error; the desktop shows the new one, which
/// works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_code_fails_with_its_own_error() {
    let server = start_server(|c| c.code_ttl = Duration::from_millis(400)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut desktop = register(desktop_config(&server, dir.path())).await;
    let old = desktop.code().to_owned();
    let changed = drive(&mut desktop, |e| matches!(e, DesktopEvent::CodeChanged(_))).await;
    let DesktopEvent::CodeChanged(new_code) = changed else {
        unreachable!()
    };
    assert_ne!(new_code, old);
    let result = pair(&phone_config(&server, None), &old).await;
    assert!(
        matches!(result, Err(ProximError::CodeExpired)),
        "{result:?}"
    );

    let config = phone_config(&server, None);
    let code = desktop.code().to_owned();
    let phone = tokio::spawn(async move { pair(&config, &code).await });
    let desk = connected(&mut desktop).await;
    let phone = tokio::time::timeout(STEP, phone)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    phone.close().await;
    desk.close().await;
    server.shutdown().await;
}

/// The QR link carries the server and a 256-bit secret: pairing with it works even when the
/// phone's configured server is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pairing_with_the_qr_link_uses_its_server_and_secret() {
    let server = start_server(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let mut desktop = register(desktop_config(&server, dir.path())).await;
    let link = desktop.qr_uri();
    assert!(link.starts_with("proxim://pair?"), "{link}");
    assert!(
        !link.contains(desktop.code().split_once('-').unwrap().1),
        "{link}"
    );
    let config = ProximConfig::new("ws://127.0.0.1:1/ws", "QR phone").loopback_only();
    let phone = tokio::spawn(async move { pair(&config, &link).await });
    let desk = connected(&mut desktop).await;
    let phone = tokio::time::timeout(STEP, phone)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(phone.comparison_code(), desk.comparison_code());
    phone.close().await;
    desk.close().await;
    server.shutdown().await;
}

/// A phone asking for a desktop that is not connected is told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_an_offline_trusted_desktop_says_so() {
    let server = start_server(|_| {}).await;
    let desk_dir = tempfile::tempdir().unwrap();
    let phone_dir = tempfile::tempdir().unwrap();
    let mut desktop = register(desktop_config(&server, desk_dir.path())).await;
    let desktop_id = desktop.device_id().to_owned();
    let code = desktop.code().to_owned();
    let config = phone_config(&server, Some(phone_dir.path()));
    let phone = tokio::spawn(async move { pair(&config, &code).await });
    let desk = connected(&mut desktop).await;
    let phone = tokio::time::timeout(STEP, phone)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    phone.close().await;
    desk.close().await;
    desktop.close().await;
    let result = connect(&phone_config(&server, Some(phone_dir.path())), &desktop_id).await;
    assert!(
        matches!(result, Err(ProximError::DesktopOffline)),
        "{result:?}"
    );
    server.shutdown().await;
}
