#![allow(clippy::unwrap_used)]
//! `proxim serve --state redis://…` keeps its promises across a crash: after `kill -9` and a
//! restart, desktops get their codes back and burned codes still answer `code_used` (without
//! `--state` the same run answers `unknown_code` and hands out new codes). A real Redis and the
//! server are child processes, killed by PID.

use std::path::Path;
use std::time::{Duration, Instant};

use proxim_protocol::{ClientMessage, PairOutcome, RoutingCode};
use proxim_testkit::raw_client::RawClient;
use proxim_testkit::redis::{Persistence, Redis};
use proxim_tests::child::{ServerProcess, get_json_with_token};

const BIN: &str = env!("CARGO_BIN_EXE_proxim");
const WAIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "state-test-token";
const DESKTOPS: usize = 20;
const BURNED: usize = 5;

async fn outcome(serve: &ServerProcess, code: &RoutingCode) -> PairOutcome {
    let mut phone = RawClient::greeted(&serve.ws_url(), WAIT).await;
    phone.refused_outcome(code).await
}

/// Wait until everything the server changed is in the store.
async fn settled(serve: &ServerProcess) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = get_json_with_token(serve.addr, "/api/state", Some(TOKEN))
            .await
            .unwrap()["state"]
            .clone();
        if s["state"] == "up" && s["queued"] == 0 && s["ops_written"].as_u64() > Some(0) {
            return;
        }
        assert!(Instant::now() < deadline, "state not written: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Register the desktops, burn the first codes, `kill -9`, restart; what the old codes
/// answer and how many desktops got their codes back.
async fn crash_and_restart(args: &[&str]) -> (Vec<PairOutcome>, usize) {
    let mut all = vec!["--admin-token", TOKEN];
    all.extend_from_slice(args);
    let serve = ServerProcess::start(Path::new(BIN), &all).await.unwrap();
    let mut desktops = Vec::new();
    let mut codes = Vec::new();
    for i in 0..DESKTOPS {
        let mut desktop = RawClient::greeted(&serve.ws_url(), WAIT).await;
        codes.push(desktop.register(&format!("desk-{i}"), "Desktop").await);
        desktops.push(desktop);
    }
    let mut burned = Vec::new();
    for (desktop, code) in desktops.iter_mut().zip(codes.iter_mut()).take(BURNED) {
        desktop.send(&ClientMessage::RenewCode).await;
        let (fresh, _) = desktop.expect_registered().await;
        burned.push(std::mem::replace(code, fresh));
    }
    if !args.is_empty() {
        settled(&serve).await;
    }
    let status = serve.stop_with("KILL", WAIT).await.unwrap();
    assert!(!status.success());
    drop(desktops);

    let serve = ServerProcess::start(Path::new(BIN), &all).await.unwrap();
    let mut outcomes = Vec::new();
    for code in &burned {
        outcomes.push(outcome(&serve, code).await);
    }
    let mut back = 0;
    let mut desktops = Vec::new();
    for (i, code) in codes.iter().enumerate() {
        let mut desktop = RawClient::greeted(&serve.ws_url(), WAIT).await;
        if desktop.register(&format!("desk-{i}"), "Desktop").await == *code {
            back += 1;
        }
        desktops.push(desktop);
    }
    serve.stop(WAIT).await.unwrap();
    (outcomes, back)
}

#[tokio::test]
async fn after_kill_9_desktops_get_their_codes_back_and_burned_codes_stay_burned() {
    let redis = Redis::start(Persistence::AppendOnly);
    let url = redis.url();
    let (outcomes, back) = crash_and_restart(&["--state", &url]).await;
    assert_eq!(outcomes, vec![PairOutcome::CodeUsed; BURNED]);
    assert_eq!(back, DESKTOPS);

    // The same run without a state store forgets everything: what the test above guards.
    let (outcomes, back) = crash_and_restart(&[]).await;
    assert_eq!(outcomes, vec![PairOutcome::UnknownCode; BURNED]);
    assert_eq!(back, 0);
}
