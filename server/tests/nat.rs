//! NAT traversal support through the public API: the embedded STUN responder over real UDP,
//! TURN REST credentials in `welcome`, the advertised `stun:` URL, and what monitoring shows.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::{WAIT, get_json, start_server};
use hmac::{Hmac, Mac};
use proxim_protocol::IceServer;
use proxim_server::{IceConfig, RunningServer, Server, ServerConfig, ServerError, TurnAuth};
use proxim_testkit::raw_client::{QUIET, RawClient};
use tokio::net::UdpSocket;

const SECRET: &str = "integration-test-secret-9f2c";

fn binding_request(txid: [u8; 12]) -> Vec<u8> {
    let mut r = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    r.extend_from_slice(&txid);
    r
}

/// Parse a Binding success response independently of the server's encoder: the transaction
/// id and the XOR-MAPPED-ADDRESS.
fn parse_success(resp: &[u8]) -> ([u8; 12], SocketAddr) {
    assert!(resp.len() >= 20, "short response");
    assert_eq!(&resp[0..2], &[0x01, 0x01], "not a Binding success");
    assert_eq!(&resp[4..8], &[0x21, 0x12, 0xA4, 0x42]);
    let len = usize::from(u16::from_be_bytes([resp[2], resp[3]]));
    assert_eq!(resp.len(), 20 + len);
    let mut txid = [0u8; 12];
    txid.copy_from_slice(&resp[8..20]);
    let mut at = 20;
    while at + 4 <= resp.len() {
        let kind = u16::from_be_bytes([resp[at], resp[at + 1]]);
        let alen = usize::from(u16::from_be_bytes([resp[at + 2], resp[at + 3]]));
        let v = &resp[at + 4..at + 4 + alen];
        if kind == 0x0020 {
            assert_eq!(v[1], 0x01, "IPv4 family");
            let port = u16::from_be_bytes([v[2], v[3]]) ^ 0x2112;
            let ip = Ipv4Addr::new(v[4] ^ 0x21, v[5] ^ 0x12, v[6] ^ 0xA4, v[7] ^ 0x42);
            return (txid, SocketAddr::new(ip.into(), port));
        }
        at += 4 + alen.div_ceil(4) * 4;
    }
    panic!("no XOR-MAPPED-ADDRESS");
}

async fn stun_server() -> RunningServer {
    start_server(|c| c.stun = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))).await
}

async fn exchange(socket: &UdpSocket, to: SocketAddr, request: &[u8]) -> Vec<u8> {
    socket.send_to(request, to).await.unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("STUN answer in time")
        .unwrap();
    assert_eq!(from, to);
    buf[..n].to_vec()
}

async fn expect_no_answer(socket: &UdpSocket) {
    let mut buf = [0u8; 1500];
    let got = tokio::time::timeout(QUIET, socket.recv_from(&mut buf)).await;
    assert!(got.is_err(), "unexpected answer: {got:?}");
}

#[tokio::test]
async fn stun_binding_request_gets_the_senders_address_and_transaction_id() {
    let server = stun_server().await;
    let stun = server.stun_addr().expect("responder on");
    assert_eq!(stun.ip(), Ipv4Addr::LOCALHOST);
    assert_ne!(stun.port(), 0);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let txid = [0xA5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0x5A];
    let resp = exchange(&socket, stun, &binding_request(txid)).await;
    let (got_txid, mapped) = parse_success(&resp);
    assert_eq!(got_txid, txid);
    assert_eq!(mapped, socket.local_addr().unwrap());
    let stats = get_json(&server, "/api/stats").await;
    assert_eq!(stats["stun_requests"], 1);
    assert_eq!(stats["stun_malformed"], 0);
    server.shutdown().await;
}

#[tokio::test]
async fn garbage_gets_no_answer_and_does_not_stop_the_responder() {
    let server = stun_server().await;
    let stun = server.stun_addr().unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut wrong_cookie = binding_request([7; 12]);
    wrong_cookie[4] = 0;
    let mut lying_length = binding_request([7; 12]);
    lying_length[3] = 200;
    let garbage: [&[u8]; 5] = [
        b"",
        b"GET / HTTP/1.1\r\n\r\n",
        &[0xFF; 19],
        &wrong_cookie,
        &lying_length,
    ];
    for datagram in garbage {
        socket.send_to(datagram, stun).await.unwrap();
    }
    expect_no_answer(&socket).await;
    let txid = [3; 12];
    let (got, mapped) = parse_success(&exchange(&socket, stun, &binding_request(txid)).await);
    assert_eq!(got, txid);
    assert_eq!(mapped, socket.local_addr().unwrap());
    let stats = server.stats();
    assert_eq!(stats.stun_requests, 1);
    // The empty datagram may or may not be delivered as one; the others always are.
    assert!(stats.stun_malformed >= 4, "{stats:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn responder_stops_on_shutdown_and_is_off_by_default() {
    let server = start_server(|_| {}).await;
    assert_eq!(server.stun_addr(), None);
    let config = get_json(&server, "/api/config").await;
    assert!(config["stun_responder"].is_null(), "{config}");
    server.shutdown().await;

    let server = stun_server().await;
    let stun = server.stun_addr().unwrap();
    server.shutdown().await;
    // The port is free again: the responder's socket was closed.
    let rebound = UdpSocket::bind(stun).await;
    assert!(rebound.is_ok(), "{rebound:?}");
}

#[tokio::test]
async fn a_taken_stun_port_is_a_clear_startup_error() {
    let taken = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let mut config = ServerConfig::loopback();
    config.stun = Some(addr);
    let err = Server::start(config).await.expect_err("port taken");
    assert!(matches!(err, ServerError::StunBind { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("cannot bind the STUN responder to {addr}")),
        "{text}"
    );
    assert!(text.contains("--no-stun"), "{text}");
}

/// A fresh client's connection id and the ICE servers its `welcome` lists.
async fn welcome_ice(server: &RunningServer) -> (String, Vec<IceServer>) {
    let welcome = RawClient::open_raw(&server.ws_url(), WAIT)
        .await
        .say_hello()
        .await;
    (
        welcome.connection_id.as_str().to_owned(),
        welcome.ice_servers,
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hmac_b64(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn welcome_carries_fresh_turn_rest_credentials_per_connection() {
    let ttl = 3_600;
    let ice = IceConfig::with_turn_auth(
        &["stun:198.18.0.1"],
        &["turn:198.18.0.2:3478", "turns:relay.example"],
        TurnAuth {
            secret: Some(SECRET.into()),
            ttl: Some(Duration::from_secs(ttl)),
            realm: Some("relay.example".into()),
            ..TurnAuth::default()
        },
    )
    .unwrap();
    let server = start_server(|c| c.ice = ice).await;

    let mut usernames = Vec::new();
    for _ in 0..2 {
        let before = unix_now();
        let (id, servers) = welcome_ice(&server).await;
        let after = unix_now();
        assert_eq!(servers.len(), 2, "{servers:?}");
        let turn = &servers[1];
        assert_eq!(
            turn.urls,
            vec!["turn:198.18.0.2:3478", "turns:relay.example:5349"]
        );
        let username = turn.username.clone().unwrap();
        let (expiry, user) = username.split_once(':').unwrap();
        assert_eq!(user, id);
        let expiry: u64 = expiry.parse().unwrap();
        assert!(
            (before + ttl..=after + ttl).contains(&expiry),
            "expiry {expiry} not within now+ttl [{}, {}]",
            before + ttl,
            after + ttl
        );
        assert_eq!(
            turn.credential.as_deref(),
            Some(hmac_b64(SECRET, &username).as_str())
        );
        usernames.push(username);
    }
    assert_ne!(usernames[0], usernames[1]);

    let config = get_json(&server, "/api/config").await;
    let text = config.to_string();
    assert!(!text.contains(SECRET), "{text}");
    assert_eq!(config["ice"]["turn"]["credentials"], "rest");
    assert_eq!(config["ice"]["turn"]["secret"], "<redacted>");
    assert_eq!(config["ice"]["turn"]["ttl_s"], ttl);
    server.shutdown().await;
}

#[tokio::test]
async fn welcome_advertises_the_embedded_stun_responder() {
    // Public host given.
    let server = start_server(|c| {
        c.stun = Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        c.public_host = Some("127.0.0.1".into());
        c.ice = IceConfig::stun_only(vec!["stun:198.18.0.1"]).unwrap();
    })
    .await;
    let port = server.stun_addr().unwrap().port();
    let (_, servers) = welcome_ice(&server).await;
    assert_eq!(
        servers[0].urls,
        vec![
            format!("stun:127.0.0.1:{port}"),
            "stun:198.18.0.1:3478".to_owned()
        ]
    );
    let config = get_json(&server, "/api/config").await;
    assert_eq!(config["stun_responder"]["public_host"], "127.0.0.1");
    server.shutdown().await;

    // No public host, unspecified bind: the host from the WebSocket's Host header
    // (ws://127.0.0.1:<port>/ws), and the advertised URL really answers.
    let server =
        start_server(|c| c.stun = Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))).await;
    let port = server.stun_addr().unwrap().port();
    let (_, servers) = welcome_ice(&server).await;
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].urls, vec![format!("stun:127.0.0.1:{port}")]);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_, mapped) = parse_success(&exchange(&socket, target, &binding_request([9; 12])).await);
    assert_eq!(mapped, socket.local_addr().unwrap());
    server.shutdown().await;

    // Responder off: nothing advertised.
    let server = start_server(|_| {}).await;
    let (_, servers) = welcome_ice(&server).await;
    assert!(servers.is_empty(), "{servers:?}");
    server.shutdown().await;
}
