//! The IDLE row: what one open, greeted, silent connection costs the server in resident
//! memory. VmRSS before, N connections opened (each `hello` → `welcome`) and held, a pause for
//! the server to settle, VmRSS again; the difference over N.

use std::net::SocketAddr;
use std::time::Duration;

use proxim_tests::child::connections_open;
use proxim_tests::loopback_ws::source_ip;
use proxim_tests::procfs::memory_kib;
use tokio::time::Instant;

use crate::SOURCE_IPS;
use crate::client::{Client, run_many};
use crate::failures::Failures;

/// Connections being opened at a time.
const OPENING_AT_ONCE: usize = 256;
/// How long the connections stay open, idle, before the second reading.
const SETTLE: Duration = Duration::from_secs(2);

/// What the IDLE row measured.
#[derive(Debug)]
pub(crate) struct IdleResult {
    /// Connections asked for, and opened.
    pub(crate) target: usize,
    pub(crate) opened: usize,
    /// The server's VmRSS before and with the connections open, in KiB.
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_after_kib: u64,
    /// The server's own count of open connections while they were held.
    pub(crate) server_counted: Option<u64>,
    pub(crate) open_time: Duration,
    pub(crate) failures: Failures,
}

impl IdleResult {
    /// Resident memory per connection, in KiB.
    pub(crate) fn kib_per_connection(&self) -> Option<f64> {
        if self.opened == 0 {
            return None;
        }
        let delta = self.rss_after_kib.saturating_sub(self.rss_before_kib);
        Some(delta as f64 / self.opened as f64)
    }
}

/// Open `target` idle connections to the server `pid` at `server`, measure, close them all.
pub(crate) async fn run(server: SocketAddr, pid: u32, target: usize) -> anyhow::Result<IdleResult> {
    let (rss_before_kib, _) =
        memory_kib(pid).ok_or_else(|| anyhow::anyhow!("the server (pid {pid}) is gone"))?;
    let failures = Failures::default();
    let started = Instant::now();
    let mut clients = Vec::with_capacity(target);
    let opened = run_many(target, OPENING_AT_ONCE, |k| {
        Client::open(server, source_ip(k, SOURCE_IPS))
    });
    for result in opened.await {
        match result {
            Ok(client) => clients.push(client),
            Err(e) => failures.record(format!("opening an idle connection: {e:#}")),
        }
    }
    let open_time = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let (rss_after_kib, _) =
        memory_kib(pid).ok_or_else(|| anyhow::anyhow!("the server (pid {pid}) died"))?;
    let server_counted = connections_open(server).await;
    let opened = clients.len();
    drop(clients);
    Ok(IdleResult {
        target,
        opened,
        rss_before_kib,
        rss_after_kib,
        server_counted,
        open_time,
        failures,
    })
}
