//! What the server's tests need beyond `proxim_testkit::raw_client` (the hand-driven client,
//! the message builders and the pairing scenarios): a server on 127.0.0.1:0 with short
//! timeouts, the bound for each step, and plain HTTP GETs (on the admin listener for the
//! protected monitoring routes).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use proxim_server::{RunningServer, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for something that should happen: the `step` of every
/// [`RawClient`](proxim_testkit::raw_client::RawClient) the tests open.
pub(crate) const WAIT: Duration = Duration::from_secs(3);

/// Start a server on loopback with short timeouts (heartbeat 0.5 s / 2 s, prompt 2 s), then
/// let `configure` adjust the config.
pub(crate) async fn start_server(configure: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    proxim_testkit::init_tracing();
    let mut config = ServerConfig::loopback();
    config.heartbeat_interval = Duration::from_millis(500);
    config.heartbeat_timeout = Duration::from_secs(2);
    config.prompt_timeout = Duration::from_secs(2);
    config.shutdown_grace = Duration::from_secs(2);
    configure(&mut config);
    Server::start(config).await.expect("server starts")
}

/// The routes the public listener serves only with the admin token: tests read them on the
/// admin listener.
const ADMIN_ROUTES: [&str; 5] = [
    "/api/sessions",
    "/api/config",
    "/api/events",
    "/api/state",
    "/metrics",
];

/// GET `path` from the server over plain HTTP/1.1; returns (status, body). The protected
/// monitoring routes ([`ADMIN_ROUTES`]) are read on the admin listener, the rest on the
/// public one.
pub(crate) async fn http_get(server: &RunningServer, path: &str) -> (u16, String) {
    let admin = ADMIN_ROUTES.iter().any(|route| path.starts_with(route));
    let addr = match server.admin_addr() {
        Some(admin_addr) if admin => admin_addr,
        _ => server.local_addr(),
    };
    let (status, _, body) = http_get_at(addr, path, &[]).await;
    (status, body)
}

/// GET `path` from `addr` with extra `headers`; returns (status, head, body).
pub(crate) async fn http_get_at(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let extra: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        String::from_utf8(response).unwrap()
    };
    let response = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("HTTP answer in time");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, head.to_owned(), body.to_owned())
}

/// GET a JSON route (as [`http_get`] does).
pub(crate) async fn get_json(server: &RunningServer, path: &str) -> serde_json::Value {
    let (status, body) = http_get(server, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}
