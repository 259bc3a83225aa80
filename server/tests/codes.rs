//! Code lifetime, renewal and trusted reconnects over real WebSockets: a server on 127.0.0.1:0.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{WAIT, get_json, start_server};
use proxim_protocol::{
    AuthPayload, ClientMessage, DeviceId, DeviceName, ErrorCode, PairOutcome, RoutingCode,
    ServerMessage,
};
use proxim_testkit::raw_client::RawClient;
use proxim_testkit::raw_client::messages::{
    PHONE_AUTH, pair_request, phone_device, register_desktop,
};

/// Send a pair request for `code` and expect a `pair_result` without a session.
async fn expect_refused(phone: &mut RawClient, code: &RoutingCode, outcome: PairOutcome) {
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
    let mut desktop = RawClient::greeted(&server.ws_url(), WAIT).await;
    desktop
        .send(&register_desktop("desk-1", "Test desktop"))
        .await;
    let (old, left) = desktop.expect_registered().await;
    assert_eq!(left, Some(300));
    let (fresh, left) = desktop.expect_registered().await;
    assert_ne!(fresh, old);
    assert_eq!(left, Some(300));
    let mut phone = RawClient::greeted(&server.ws_url(), WAIT).await;
    expect_refused(&mut phone, &old, PairOutcome::CodeExpired).await;
    let stats = get_json(&server, "/api/stats").await;
    assert_eq!(stats["expired_codes"], 1, "{stats}");
    assert!(stats["codes_retired"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["unknown_codes"], 0, "{stats}");
}

#[tokio::test]
async fn renew_code_hands_out_a_fresh_code_and_the_old_one_answers_code_used() {
    let server = start_server(|_| {}).await;
    let mut desktop = RawClient::greeted(&server.ws_url(), WAIT).await;
    let old = desktop.register("desk-1", "Test desktop").await;
    desktop.send(&ClientMessage::RenewCode).await;
    let (fresh, left) = desktop.expect_registered().await;
    assert_ne!(fresh, old);
    assert_eq!(left, Some(600_000));
    let mut phone = RawClient::greeted(&server.ws_url(), WAIT).await;
    expect_refused(&mut phone, &old, PairOutcome::CodeUsed).await;
    phone.send(&pair_request(&fresh, None)).await;
    desktop.expect_prompt().await;
    phone.expect_pending().await;
    // A connection that is not a registered desktop has no code to renew.
    let mut stranger = RawClient::greeted(&server.ws_url(), WAIT).await;
    stranger
        .expect_refused(&ClientMessage::RenewCode, ErrorCode::InvalidState)
        .await;
    let stats = get_json(&server, "/api/stats").await;
    assert_eq!(stats["used_codes"], 1, "{stats}");
    assert_eq!(stats["codes_retired"], 1, "{stats}");
}

#[tokio::test]
async fn connect_request_reaches_the_desktop_by_device_id() {
    let server = start_server(|_| {}).await;
    let mut desktop = RawClient::greeted(&server.ws_url(), WAIT).await;
    desktop.register("desk-1", "Test desktop").await;
    let mut phone = RawClient::greeted(&server.ws_url(), WAIT).await;
    phone.send(&connect_request("desk-1", PHONE_AUTH)).await;
    let prompt = desktop.expect_prompt().await;
    assert_eq!(prompt.peer, phone_device());
    assert_eq!(
        prompt.auth.as_ref().map(AuthPayload::as_str),
        Some(PHONE_AUTH)
    );
    let session = prompt.session;
    assert_eq!(phone.expect_pending().await, session);
    // The desktop refuses, with its own auth payload: the phone gets it.
    desktop.respond(&session, false, Some("bm90LXlvdQ")).await;
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
    phone.send(&connect_request("desk-2", PHONE_AUTH)).await;
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
