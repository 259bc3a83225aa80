//! Protected monitoring against a real server on port 0: `/metrics` in the Prometheus text
//! format, who may read what on the public and admin listeners, `/api/sessions` paging, and
//! the web clients' `/api/turn/config`.
// Test helpers outside `#[test]` functions unwrap freely, like the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, HashMap};

use common::{WAIT, get_json, http_get, http_get_at, start_server};
use proxim_server::{AdminToken, IceConfig, RunningServer, TurnAuth};
use proxim_testkit::raw_client::{RawClient, accepted_pair, pending_pair_with};

/// The samples of a Prometheus text exposition: `name{labels}` → value. Panics on a line
/// that is not a comment, a blank or a sample.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|e| panic!("{line:?}: {e}")),
        };
        let name_end = series.find('{').unwrap_or(series.len());
        assert!(
            series[..name_end]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line:?}"
        );
        samples.insert(series.to_owned(), value);
    }
    samples
}

/// Scrape `/metrics` on the admin listener.
async fn scrape(server: &RunningServer) -> HashMap<String, f64> {
    let (status, body) = http_get(server, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    parse_prometheus(&body)
}

fn sample(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in {samples:?}"))
}

#[tokio::test]
async fn metrics_count_a_pairing_and_its_latency() {
    let server = start_server(|_| {}).await;
    let before = scrape(&server).await;
    assert_eq!(
        sample(&before, "proxim_pairings_total{outcome=\"accepted\"}"),
        0.0
    );
    assert_eq!(sample(&before, "proxim_pair_latency_seconds_count"), 0.0);

    let (_desktop, mut phone, _session) = accepted_pair(&server.ws_url(), WAIT).await;
    phone.send_text("not json").await;
    phone
        .expect_error(proxim_protocol::ErrorCode::MalformedMessage)
        .await;

    let after = scrape(&server).await;
    for (series, want) in [
        ("proxim_pairings_total{outcome=\"accepted\"}", 1.0),
        ("proxim_pair_requests_total", 1.0),
        ("proxim_connections_total", 2.0),
        ("proxim_connections_open", 2.0),
        ("proxim_sessions_active", 1.0),
        ("proxim_errors_sent_total{code=\"malformed_message\"}", 1.0),
        ("proxim_frames_malformed_total", 1.0),
        ("proxim_pair_latency_seconds_count", 1.0),
        ("proxim_pair_latency_seconds_bucket{le=\"+Inf\"}", 1.0),
        ("proxim_pair_latency_seconds_bucket{le=\"60\"}", 1.0),
        ("proxim_queue_drops_total", 0.0),
        ("proxim_stun_requests_total", 0.0),
    ] {
        assert_eq!(sample(&after, series), want, "{series}");
    }
    assert!(sample(&after, "proxim_pair_latency_seconds_sum") > 0.0);
    if cfg!(target_os = "linux") {
        assert!(sample(&after, "proxim_process_resident_memory_bytes") > 0.0);
        assert!(sample(&after, "proxim_process_open_fds") > 0.0);
    }
    server.shutdown().await;
}

/// Status of `path` on the public listener, with `Authorization: Bearer <token>` when given;
/// and whether the answer asks for a bearer token.
async fn public_get(server: &RunningServer, path: &str, token: Option<&str>) -> (u16, bool) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("Authorization", b.as_str()))
        .collect();
    let (status, head, _) = http_get_at(server.local_addr(), path, &headers).await;
    let challenge = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("www-authenticate: bearer"));
    (status, challenge)
}

#[tokio::test]
async fn protected_routes_need_the_token_or_the_admin_listener() {
    const PROTECTED: [&str; 3] = ["/metrics", "/api/sessions", "/api/config"];
    const OPEN: [&str; 2] = ["/healthz", "/api/stats"];

    // No token: the protected routes do not exist on the public listener.
    let server = start_server(|_| {}).await;
    let admin = server.admin_addr().unwrap();
    assert!(admin.ip().is_loopback());
    for path in PROTECTED {
        assert_eq!(
            public_get(&server, path, None).await,
            (404, false),
            "{path}"
        );
        assert_eq!(public_get(&server, path, Some("x")).await.0, 404, "{path}");
    }
    for path in PROTECTED.iter().chain(&OPEN) {
        assert_eq!(http_get_at(admin, path, &[]).await.0, 200, "admin {path}");
    }
    for path in OPEN {
        assert_eq!(public_get(&server, path, None).await.0, 200, "{path}");
    }
    server.shutdown().await;

    // A token: 401 with a bearer challenge without it or with a wrong one, 200 with it.
    let server = start_server(|c| {
        c.admin_token = Some(AdminToken::new("s3cret-admin-token"));
        c.admin_bind = None;
    })
    .await;
    assert_eq!(server.admin_addr(), None);
    for path in PROTECTED {
        assert_eq!(public_get(&server, path, None).await, (401, true), "{path}");
        assert_eq!(
            public_get(&server, path, Some("s3cret-admin-tokeN")).await,
            (401, true),
            "{path}"
        );
        assert_eq!(
            public_get(&server, path, Some("s3cret-admin-token"))
                .await
                .0,
            200,
            "{path}"
        );
    }
    for path in OPEN {
        assert_eq!(public_get(&server, path, None).await.0, 200, "{path}");
    }
    let (_, _, config) = http_get_at(
        server.local_addr(),
        "/api/config",
        &[("Authorization", "Bearer s3cret-admin-token")],
    )
    .await;
    assert!(!config.contains("s3cret-admin-token"), "{config}");
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["monitoring"]["admin_token"], "<redacted>");
    server.shutdown().await;
}

#[tokio::test]
async fn sessions_page_through_every_session_once_without_names() {
    let server = start_server(|c| c.pair_attempts = 0).await;
    let mut clients = Vec::new();
    let mut want = BTreeSet::new();
    for n in 0..5 {
        let (desktop, phone, session) =
            pending_pair_with(&server.ws_url(), WAIT, &format!("desk-{n}"), None).await;
        want.insert(session.as_str()[..8].to_owned());
        clients.push((desktop, phone));
    }
    let mut seen = Vec::new();
    let mut path = "/api/sessions?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page = get_json(&server, &path).await;
        pages += 1;
        let list = page["sessions"].as_array().unwrap();
        assert!(list.len() <= 2, "{page}");
        for s in list {
            assert!(
                s.get("desktop").is_none() && s.get("phone").is_none(),
                "{s}"
            );
            assert_eq!(s["state"], "pending");
            seen.push(s["session"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => path = format!("/api/sessions?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "pages come in session id order");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), want);
    let whole = get_json(&server, "/api/sessions?limit=0").await;
    assert_eq!(
        whole["sessions"].as_array().unwrap().len(),
        1,
        "limit is at least 1"
    );
    let (status, _) = http_get(&server, "/api/sessions?after=nope").await;
    assert_eq!(status, 400);
    server.shutdown().await;
}

#[tokio::test]
async fn turn_config_mints_fresh_credentials_and_limits_each_address() {
    let server = start_server(|c| {
        let auth = TurnAuth {
            secret: Some("turn-rest-secret-for-tests".into()),
            ..TurnAuth::default()
        };
        c.ice =
            IceConfig::with_turn_auth(&["stun:198.18.0.1"], &["turn:198.18.0.2"], auth).unwrap();
    })
    .await;
    let first = get_json(&server, "/api/turn/config").await;
    let servers = first["iceServers"].as_array().unwrap();
    assert_eq!(servers.len(), 2, "{first}");
    assert_eq!(servers[0]["urls"][0], "stun:198.18.0.1:3478");
    assert!(servers[0].get("username").is_none());
    assert_eq!(servers[1]["urls"][0], "turn:198.18.0.2:3478");
    let second = get_json(&server, "/api/turn/config").await;
    for field in ["username", "credential"] {
        assert!(first["iceServers"][1][field].is_string(), "{first}");
        assert_ne!(
            first["iceServers"][1][field], second["iceServers"][1][field],
            "{field} is minted per request"
        );
    }
    // The burst is 5: three more pass, the next is refused.
    for _ in 0..3 {
        assert_eq!(http_get(&server, "/api/turn/config").await.0, 200);
    }
    assert_eq!(http_get(&server, "/api/turn/config").await.0, 429);
    let metrics = scrape(&server).await;
    assert_eq!(sample(&metrics, "proxim_turn_config_requests_total"), 5.0);
    assert_eq!(
        sample(&metrics, "proxim_turn_config_rate_limited_total"),
        1.0
    );
    // Monitoring and signaling are not affected.
    let _client = RawClient::greeted(&server.ws_url(), WAIT).await;
    server.shutdown().await;
}
