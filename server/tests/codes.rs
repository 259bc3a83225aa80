//! Code lifetime, renewal and trusted reconnects over real WebSockets: a server on 127.0.0.1:0.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{TestClient, get_json, pair_request, phone_device, start_server};
use proxim_protocol::{
    AuthPayload, ClientMessage, DeviceId, DeviceName, ErrorCode, PairOutcome, RoutingCode,
    ServerMessage,
};

/// The next `registered` the desktop gets: the code and its remaining lifetime.
async fn expect_registered(desktop: &mut TestClient) -> (RoutingCode, Option<u64>) {
    match desktop.recv().await {
        ServerMessage::Registered {
            code,
            expires_in_ms,
        } => (code, expires_in_ms),
        other => panic!("expected registered, got {other:?}"),
    }
}

/// Send a pair request for `code` and expect a `pair_result` without a session.
async fn expect_refused(phone: &mut TestClient, code: &RoutingCode, outcome: PairOutcome) {
    phone.send(&pair_request(code, None)).await;
    match phone.recv().await {
        ServerMessage::PairResult {
            session: None,
            outcome: got,
            peer: None,
            ..
        } => assert_eq!(got, outcome),
        other => panic!("expected pair_result {outcome:?}, got {other:?}"),
    }
}

fn connect_request(desktop: &str, auth: &str) -> ClientMessage {
    ClientMessage::ConnectRequest {
        desktop: DeviceId::new(desktop).unwrap(),
        device_id: DeviceId::new("phone-1").unwrap(),
        device_name: DeviceName::new("Test phone").unwrap(),
        auth: Some(AuthPayload::new(auth).unwrap()),
    }
}

#[tokio::test]
async fn an_expired_code_is_replaced_and_the_old_one_answers_code_expired() {
    let server = start_server(|c| c.code_ttl = Duration::from_millis(300)).await;
    let config = get_json(&server, "/api/config").await;
    assert_eq!(config["limits"]["code_ttl_ms"], 300, "{config}");
    let mut desktop = TestClient::greeted(&server).await;
    desktop
        .send(&ClientMessage::RegisterDesktop {
            device_id: DeviceId::new("desk-1").unwrap(),
            device_name: DeviceName::new("Test desktop").unwrap(),
        })
        .await;
    let (old, left) = expect_registered(&mut desktop).await;
    assert_eq!(left, Some(300));
    let (fresh, left) = expect_registered(&mut desktop).await;
    assert_ne!(fresh, old);
    assert_eq!(left, Some(300));
    let mut phone = TestClient::greeted(&server).await;
    expect_refused(&mut phone, &old, PairOutcome::CodeExpired).await;
    let stats = get_json(&server, "/api/stats").await;
    assert_eq!(stats["expired_codes"], 1, "{stats}");
    assert!(stats["codes_retired"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["unknown_codes"], 0, "{stats}");
}

#[tokio::test]
async fn renew_code_hands_out_a_fresh_code_and_the_old_one_answers_code_used() {
    let server = start_server(|_| {}).await;
    let mut desktop = TestClient::greeted(&server).await;
    let old = desktop.register("desk-1", "Test desktop").await;
    desktop.send(&ClientMessage::RenewCode).await;
    let (fresh, left) = expect_registered(&mut desktop).await;
    assert_ne!(fresh, old);
    assert_eq!(left, Some(600_000));
    let mut phone = TestClient::greeted(&server).await;
    expect_refused(&mut phone, &old, PairOutcome::CodeUsed).await;
    phone.send(&pair_request(&fresh, None)).await;
    assert!(matches!(
        desktop.recv().await,
        ServerMessage::PairPrompt { .. }
    ));
    assert!(matches!(
        phone.recv().await,
        ServerMessage::PairPending { .. }
    ));
    // A connection that is not a registered desktop has no code to renew.
    let mut stranger = TestClient::greeted(&server).await;
    stranger.send(&ClientMessage::RenewCode).await;
    stranger.expect_error(ErrorCode::InvalidState).await;
    let stats = get_json(&server, "/api/stats").await;
    assert_eq!(stats["used_codes"], 1, "{stats}");
    assert_eq!(stats["codes_retired"], 1, "{stats}");
}

#[tokio::test]
async fn connect_request_reaches_the_desktop_by_device_id() {
    let server = start_server(|_| {}).await;
    let mut desktop = TestClient::greeted(&server).await;
    desktop.register("desk-1", "Test desktop").await;
    let mut phone = TestClient::greeted(&server).await;
    phone
        .send(&connect_request("desk-1", "cGhvbmUtYXV0aA"))
        .await;
    let session = match desktop.recv().await {
        ServerMessage::PairPrompt {
            session,
            peer,
            auth,
            ..
        } => {
            assert_eq!(peer, phone_device());
            assert_eq!(
                auth.as_ref().map(AuthPayload::as_str),
                Some("cGhvbmUtYXV0aA")
            );
            session
        }
        other => panic!("expected pair_prompt, got {other:?}"),
    };
    match phone.recv().await {
        ServerMessage::PairPending { session: s, .. } => assert_eq!(s, session),
        other => panic!("expected pair_pending, got {other:?}"),
    }
    // The desktop refuses, with its own auth payload: the phone gets it.
    desktop
        .send(&ClientMessage::PairResponse {
            session: session.clone(),
            accept: false,
            auth: Some(AuthPayload::new("bm90LXlvdQ").unwrap()),
        })
        .await;
    match phone.recv().await {
        ServerMessage::PairResult {
            session: Some(s),
            outcome: PairOutcome::Rejected,
            auth,
            ..
        } => {
            assert_eq!(s, session);
            assert_eq!(auth.as_ref().map(AuthPayload::as_str), Some("bm90LXlvdQ"));
        }
        other => panic!("expected pair_result rejected, got {other:?}"),
    }
    match desktop.recv().await {
        ServerMessage::PairResult {
            outcome: PairOutcome::Rejected,
            auth: None,
            ..
        } => {}
        other => panic!("expected pair_result rejected without auth, got {other:?}"),
    }
    // A device id nobody registered: offline.
    phone
        .send(&connect_request("desk-2", "cGhvbmUtYXV0aA"))
        .await;
    match phone.recv().await {
        ServerMessage::PairResult {
            session: None,
            outcome: PairOutcome::DesktopOffline,
            ..
        } => {}
        other => panic!("expected pair_result desktop_offline, got {other:?}"),
    }
    let stats = get_json(&server, "/api/stats").await;
    assert_eq!(stats["connect_requests"], 2, "{stats}");
    assert_eq!(stats["desktops_offline"], 1, "{stats}");
}
