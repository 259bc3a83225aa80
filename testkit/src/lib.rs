//! Test support shared by the end-to-end tests (`tests/`), the core's tests, the benchmarks and
//! the load test: a real coturn on loopback ([`coturn`]), a real RabbitMQ ([`rabbitmq`]), a real
//! Redis ([`redis`]), a malicious signaling server as a rewriting WebSocket proxy ([`mitm`]),
//! desktops and phones driven through a server ([`devices`]), a hand-driven signaling client
//! with the wire-message builders and pairing scenarios the server's own tests use
//! ([`raw_client`]), and tracing init.
//!
//! No dependency on `proxim-server`: the server's own tests may use this crate without a
//! dev-dependency cycle; starting an in-process server stays with the tests that need one.
#![allow(clippy::unwrap_used)]
#![warn(missing_docs)]

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

pub mod coturn;
pub mod devices;
pub mod mitm;
pub mod rabbitmq;
pub mod raw_client;
pub mod redis;

/// Bound for any single step a test waits on (an event, a pairing, a frame).
pub const STEP: Duration = Duration::from_secs(30);

/// Log to the test's captured output, filtered by `RUST_LOG` (default `warn`); once per test
/// binary (later calls do nothing).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Await `future` for at most [`STEP`]; a timeout fails the test, naming `what`.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    within_for(STEP, what, future).await
}

/// Await `future` for at most `limit`; a timeout fails the test, naming `what`.
pub async fn within_for<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A port free for both TCP and UDP on 127.0.0.1 right now.
pub(crate) fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

/// `name` on the `PATH` (or in `/usr/bin`, `/usr/sbin`), for the services the tests start.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
