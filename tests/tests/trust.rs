#![allow(clippy::unwrap_used)]
//! Pairing codes, burned and expired codes, trusted devices and revocation, end to end: a real
//! server on loopback, real desktops and phones on proxim-core, real WebRTC.

use std::path::Path;
use std::time::Duration;

use proxim_core::auth::DeviceRole;
use proxim_core::{
    AuthMethod, Connection, Desktop, DesktopEvent, ProximConfig, ProximError, connect, pair,
    revoke_device, trusted_devices,
};
use proxim_server::RunningServer;
use proxim_testkit::devices::{
    drive, echo_once, loopback_config, next_desktop_event, pair_with, register,
};
use proxim_testkit::within;
use proxim_tests::start_server;

fn desktop_config(server: &RunningServer, dir: &Path) -> ProximConfig {
    loopback_config(&server.ws_url(), "Trust desktop", Some(dir))
}

fn phone_config(server: &RunningServer, dir: Option<&Path>) -> ProximConfig {
    loopback_config(&server.ws_url(), "Trust phone", dir)
}

/// Pair a phone on `config` with the desktop's current code, then close both ends.
async fn pair_and_close(desktop: &mut Desktop, config: ProximConfig) {
    let code = desktop.code().to_owned();
    let (phone, desk) = pair_with(desktop, config, &code).await;
    phone.close().await;
    desk.close().await;
}

/// Reconnect a phone on `config` to the trusted desktop `target`, in the background.
fn spawn_connect(
    config: ProximConfig,
    target: &str,
) -> tokio::task::JoinHandle<Result<Connection, ProximError>> {
    let target = target.to_owned();
    tokio::spawn(async move { connect(&config, &target).await })
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
    let (mut phone, mut desk) = pair_with(
        &mut desktop,
        phone_config(&server, Some(phone_dir.path())),
        &code,
    )
    .await;
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
    let phone = spawn_connect(phone_config(&server, Some(phone_dir.path())), &desktop_id);
    // No prompt for a trusted phone: the next desktop event is the connection.
    let mut desk = match next_desktop_event(&mut desktop).await {
        DesktopEvent::Connected(connection) => connection,
        other => panic!("expected a connection without a prompt, got {other:?}"),
    };
    let mut phone = within("phone", phone).await.unwrap().unwrap();
    assert_eq!(phone.auth_method(), AuthMethod::Trusted);
    assert_eq!(desk.auth_method(), AuthMethod::Trusted);
    assert_eq!(phone.comparison_code(), None);
    echo_once(&mut phone, &mut desk, "again, without a code").await;
    phone.close().await;
    desk.close().await;

    // The desktop revokes the phone: the next reconnect is refused, on both sides.
    let removed = revoke_device(&desktop_config(&server, desk_dir.path()), &phone_id).unwrap();
    assert_eq!(removed.len(), 1);
    let phone = spawn_connect(phone_config(&server, Some(phone_dir.path())), &desktop_id);
    let refused = drive(&mut desktop, |e| matches!(e, DesktopEvent::Refused { .. })).await;
    let DesktopEvent::Refused { reason, .. } = refused else {
        unreachable!()
    };
    assert!(reason.contains("not a trusted device"), "{reason}");
    let result = within("phone", phone).await.unwrap();
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
    let (phone, desk) = pair_with(
        &mut desktop,
        phone_config(&server, Some(phone_dir.path())),
        &code,
    )
    .await;
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
    let result = within("phone", phone).await.unwrap();
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
    pair_and_close(&mut desktop, phone_config(&server, None)).await;
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

    pair_and_close(&mut desktop, phone_config(&server, None)).await;
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
    let (phone, desk) = pair_with(&mut desktop, config, &link).await;
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
    pair_and_close(&mut desktop, phone_config(&server, Some(phone_dir.path()))).await;
    desktop.close().await;
    let result = connect(&phone_config(&server, Some(phone_dir.path())), &desktop_id).await;
    assert!(
        matches!(result, Err(ProximError::DesktopOffline)),
        "{result:?}"
    );
    server.shutdown().await;
}
