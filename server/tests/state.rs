//! Durable state (`--state`): a restarted server keeps its codes' promises, with the in-process
//! store and with a real Redis (`redis-server`, started here on a free port and killed by PID),
//! including Redis going away and coming back empty while the server runs.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{WAIT, get_json, start_server};
use proxim_protocol::{ClientMessage, PairOutcome, RoutingCode};
use proxim_server::{MemoryStore, RunningServer, StateSpec};
use proxim_testkit::raw_client::RawClient;
use proxim_testkit::raw_client::messages::pair_request;
use proxim_testkit::redis::{Persistence, Redis};

/// Desktops registered in [`five_desktops`].
const DESKTOPS: usize = 5;

async fn server_on(spec: &StateSpec) -> RunningServer {
    let spec = spec.clone();
    start_server(move |c| c.state = Some(spec)).await
}

/// `/api/state`'s body.
async fn state(server: &RunningServer) -> serde_json::Value {
    get_json(server, "/api/state").await["state"].clone()
}

/// Wait until the store took everything written so far (up, nothing queued) and has been
/// rewritten from memory at least `resyncs` times.
async fn settled(server: &RunningServer, resyncs: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = state(server).await;
        if s["state"] == "up" && s["queued"] == 0 && s["resyncs"].as_u64() >= Some(resyncs) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the state store did not settle: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until the writer saw the store fail.
async fn down(server: &RunningServer) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = state(server).await;
        if s["state"] == "down" && s["failures"].as_u64() >= Some(1) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the writer did not see the store fail: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Desktops `desk-0`… register; `desk-0` then burns its first code. Returns the desktops
/// (still connected), their current codes, and the burned code.
async fn five_desktops(server: &RunningServer) -> (Vec<RawClient>, Vec<RoutingCode>, RoutingCode) {
    let mut desktops = Vec::new();
    let mut codes = Vec::new();
    for i in 0..DESKTOPS {
        let mut desktop = RawClient::greeted(&server.ws_url(), WAIT).await;
        codes.push(desktop.register(&format!("desk-{i}"), "Desktop").await);
        desktops.push(desktop);
    }
    desktops[0].send(&ClientMessage::RenewCode).await;
    let (fresh, _) = desktops[0].expect_registered().await;
    let burned = std::mem::replace(&mut codes[0], fresh);
    (desktops, codes, burned)
}

async fn expect_outcome(server: &RunningServer, code: &RoutingCode, want: PairOutcome) {
    let mut phone = RawClient::greeted(&server.ws_url(), WAIT).await;
    assert_eq!(phone.refused_outcome(code).await, want, "{code:?}");
}

/// After a restart: every desktop gets its code back, the burned code answers `code_used`, a
/// code nobody had answers `unknown_code`, and phones can pair with the codes given back.
async fn promises_kept(server: &RunningServer, codes: &[RoutingCode], burned: &RoutingCode) {
    expect_outcome(server, burned, PairOutcome::CodeUsed).await;
    expect_outcome(
        server,
        &RoutingCode::new("ZZZZZZ").unwrap(),
        PairOutcome::UnknownCode,
    )
    .await;
    let mut desktops = Vec::new();
    for (i, code) in codes.iter().enumerate() {
        let mut desktop = RawClient::greeted(&server.ws_url(), WAIT).await;
        let back = desktop.register(&format!("desk-{i}"), "Desktop").await;
        assert_eq!(&back, code, "desk-{i} did not get its code back");
        desktops.push(desktop);
    }
    let mut phone = RawClient::greeted(&server.ws_url(), WAIT).await;
    phone.send(&pair_request(&codes[3], None)).await;
    desktops[3].expect_prompt().await;
    phone.expect_pending().await;
}

/// Register, burn a code, restart (clean shutdown, as for an upgrade), check the promises.
async fn survives_a_restart(spec: StateSpec) {
    let server = server_on(&spec).await;
    let (desktops, codes, burned) = five_desktops(&server).await;
    settled(&server, 1).await;
    server.shutdown().await;
    drop(desktops);

    let server = server_on(&spec).await;
    let restored = state(&server).await["restored"].clone();
    assert_eq!(restored["kept"], DESKTOPS, "{restored}");
    assert_eq!(restored["retired"], 1, "{restored}");
    promises_kept(&server, &codes, &burned).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_restarted_server_keeps_codes_with_the_in_process_store() {
    let store = MemoryStore::default();
    survives_a_restart(StateSpec::Memory(store.clone())).await;
    assert!(!store.is_empty());
}

#[tokio::test]
async fn a_restarted_server_keeps_codes_with_redis() {
    let redis = Redis::start(Persistence::None);
    survives_a_restart(StateSpec::parse(&redis.url()).unwrap()).await;
    // Every key the server wrote expires by itself.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("proxim:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Five codes, five devices, one retired code.
    assert_eq!(keys.len(), 2 * DESKTOPS + 1, "{keys:?}");
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} has no expiry ({ttl})");
    }
}

#[tokio::test]
async fn redis_lost_and_back_empty_is_rewritten_from_memory() {
    let mut redis = Redis::start(Persistence::None);
    let spec = StateSpec::parse(&redis.url()).unwrap();
    let server = server_on(&spec).await;
    let mut first = RawClient::greeted(&server.ws_url(), WAIT).await;
    let first_code = first.register("desk-first", "Desktop").await;
    settled(&server, 1).await;

    // Redis dies; the server goes on serving from memory and says so.
    redis.kill();
    let (desktops, codes, burned) = five_desktops(&server).await;
    let s = down(&server).await;
    assert!(
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("unreachable")),
        "{s}"
    );
    let metrics = common::http_get(&server, "/metrics").await.1;
    assert!(metrics.contains("proxim_state_up 0"), "{metrics}");
    let mut phone = RawClient::greeted(&server.ws_url(), WAIT).await;
    phone.send(&pair_request(&first_code, None)).await;
    first.expect_prompt().await;
    phone.expect_pending().await;

    // It comes back empty (no persistence): the server writes its whole state again.
    redis.restart();
    let s = settled(&server, 2).await;
    assert!(s["ops_dropped"].as_u64() > Some(0), "{s}");
    let metrics = common::http_get(&server, "/metrics").await.1;
    assert!(metrics.contains("proxim_state_up 1"), "{metrics}");
    server.shutdown().await;
    drop((desktops, first, phone));

    // A restart finds everything, including what changed while Redis was away.
    let server = server_on(&spec).await;
    let restored = state(&server).await["restored"].clone();
    assert_eq!(restored["kept"], DESKTOPS + 1, "{restored}");
    promises_kept(&server, &codes, &burned).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_server_told_to_keep_state_does_not_start_without_it() {
    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://proxim:s3cret-pw@127.0.0.1:{port}/0");
    let mut config = proxim_server::ServerConfig::loopback();
    config.state = Some(StateSpec::parse(&url).unwrap());
    let error = proxim_server::Server::start(config)
        .await
        .expect_err("started without its state store")
        .to_string();
    assert!(error.contains("unreachable"), "{error}");
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
    assert!(!error.contains("s3cret-pw"), "{error}");
}

#[tokio::test]
async fn a_second_server_on_the_same_redis_database_does_not_start() {
    let redis = Redis::start(Persistence::None);
    let spec = StateSpec::parse(&redis.url()).unwrap();
    let first = server_on(&spec).await;
    let mut config = proxim_server::ServerConfig::loopback();
    config.state = Some(spec.clone());
    let error = proxim_server::Server::start(config)
        .await
        .expect_err("two servers on one database")
        .to_string();
    assert!(
        error.contains("another server uses this Redis database"),
        "{error}"
    );
    // The first one is unharmed, and once it stops the database is free at once.
    let mut desktop = RawClient::greeted(&first.ws_url(), WAIT).await;
    desktop.register("desk-0", "Desktop").await;
    settled(&first, 1).await;
    first.shutdown().await;
    let second = server_on(&spec).await;
    assert_eq!(state(&second).await["restored"]["kept"], 1);
    second.shutdown().await;
}
