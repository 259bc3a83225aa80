//! The STORM rows: pairings as fast as the server completes them. C desktops register; C
//! phone workers each pair with their own desktop over and over:
//!
//! - persistent: one phone connection per worker; `pair_request` → `pair_pending` →
//!   (the desktop: `pair_prompt` → `pair_response accept`) → `pair_result accepted`, then
//!   `leave {session}` so sessions do not pile up; the latency runs from `pair_request` sent
//!   to `pair_result` received;
//! - fresh: a new phone connection per pairing (connect, `hello` → `welcome`, the same
//!   pairing, close); the latency runs from the connect to `pair_result`.
//!
//! Every answer is checked: the prompt names the worker's phone, and the phone's pending
//! session, its result's session and the session its desktop accepted are one and the same.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use proxim_protocol::{ClientMessage, PairOutcome, RoutingCode, ServerMessage, SessionId};
use proxim_tests::child::ServerLog;
use proxim_tests::loopback_ws::source_ip;
use proxim_tests::procfs::cpu_ticks;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::SOURCE_IPS;
use crate::client::{Client, Device, run_many};
use crate::failures::Failures;

/// One pairing (fresh: including the connection) may take this long.
const PAIRING_TIMEOUT: Duration = Duration::from_secs(10);
/// Desktops being registered at a time.
const REGISTERING_AT_ONCE: usize = 200;

/// How the phones reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// One connection per phone worker for the whole row.
    Persistent,
    /// A new connection per pairing.
    Fresh,
}

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Persistent => "persistent",
            Mode::Fresh => "fresh",
        }
    }
}

/// The shape of one STORM row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StormPlan {
    pub(crate) mode: Mode,
    pub(crate) concurrency: usize,
    /// Pairings run this long before the measured window, which lasts `window`.
    pub(crate) warmup: Duration,
    pub(crate) window: Duration,
}

/// What one STORM row measured.
#[derive(Debug)]
pub(crate) struct StormResult {
    pub(crate) plan: StormPlan,
    /// Latencies of the pairings that finished in the window, sorted.
    pub(crate) latencies: Vec<Duration>,
    /// Pairings completed at any time (warm-up and the end included).
    pub(crate) completed: u64,
    /// The server's and this generator's CPU time over the window, in clock ticks.
    pub(crate) server_cpu_ticks: Option<u64>,
    pub(crate) generator_cpu_ticks: Option<u64>,
    /// Bytes the server logged over the window (at its default level).
    pub(crate) server_log_bytes: u64,
    /// Shared with the desktops, which may still be closing.
    pub(crate) failures: Arc<Failures>,
}

impl StormResult {
    pub(crate) fn pairings_per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.plan.window.as_secs_f64().max(1e-9)
    }

    /// Failures as a share of pairings tried.
    pub(crate) fn failure_ratio(&self) -> f64 {
        let failed = self.failures.count();
        failed as f64 / (failed + self.completed).max(1) as f64
    }
}

/// Run one STORM row against the server `pid` at `server`, whose stderr is counted in `log`.
pub(crate) async fn run(
    server: SocketAddr,
    pid: u32,
    log: &ServerLog,
    plan: StormPlan,
) -> Result<StormResult> {
    let desktops = register_desktops(server, plan.concurrency).await?;
    let failures = Arc::new(Failures::default());
    let start = Instant::now() + plan.warmup;
    let end = start + plan.window;
    let next_source = Arc::new(AtomicUsize::new(plan.concurrency));
    let mut workers = JoinSet::new();
    for (k, (desktop, desk_device, code)) in desktops.into_iter().enumerate() {
        let phone = Device::new("phone", k)?;
        let (accepted_tx, accepted_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = oneshot::channel();
        tokio::spawn(answer_prompts(
            desktop,
            phone.id.clone(),
            accepted_tx,
            done_rx,
            failures.clone(),
        ));
        let worker = PhoneWorker {
            server,
            mode: plan.mode,
            phone,
            desktop: desk_device,
            code,
            accepted: accepted_rx,
            next_source: next_source.clone(),
            failures: failures.clone(),
            window: (start, end),
            _done: done_tx,
        };
        workers.spawn(worker.run(k));
    }
    tokio::time::sleep_until(start).await;
    let me = std::process::id();
    let before = (cpu_ticks(pid), cpu_ticks(me));
    let log_before = log.bytes.load(Ordering::Relaxed);
    tokio::time::sleep_until(end).await;
    let after = (cpu_ticks(pid), cpu_ticks(me));
    let server_log_bytes = log.bytes.load(Ordering::Relaxed).saturating_sub(log_before);
    let mut latencies = Vec::new();
    let mut completed = 0;
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(tally) => {
                latencies.extend(tally.in_window);
                completed += tally.completed;
            }
            Err(e) => failures.record(format!("a phone worker failed: {e}")),
        }
    }
    latencies.sort();
    Ok(StormResult {
        plan,
        latencies,
        completed,
        server_cpu_ticks: ticks_between(before.0, after.0),
        generator_cpu_ticks: ticks_between(before.1, after.1),
        server_log_bytes,
        failures,
    })
}

fn ticks_between(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    Some(after?.saturating_sub(before?))
}

/// Register `count` desktops: their connections, devices and codes.
async fn register_desktops(
    server: SocketAddr,
    count: usize,
) -> Result<Vec<(Client, Device, RoutingCode)>> {
    let registered = run_many(count, REGISTERING_AT_ONCE, |k| async move {
        let device = Device::new("desk", k)?;
        let (client, code) = Client::register_desktop(server, source_ip(k, SOURCE_IPS), &device)
            .await
            .with_context(|| format!("registering desktop {k}"))?;
        Ok((client, device, code))
    });
    registered.await.into_iter().collect()
}

/// A desktop: accept every prompt from `phone` (telling the phone worker which session it
/// accepted, before accepting it), until the phone worker is `done`.
async fn answer_prompts(
    mut desktop: Client,
    phone: proxim_protocol::DeviceId,
    accepted: mpsc::UnboundedSender<SessionId>,
    mut done: oneshot::Receiver<()>,
    failures: Arc<Failures>,
) {
    let mut prompted: Option<SessionId> = None;
    loop {
        let message = tokio::select! {
            _ = &mut done => break,
            message = desktop.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                failures.record(format!("desktop of {}: {e:#}", phone.as_str()));
                break;
            }
        };
        match message {
            ServerMessage::PairPrompt { session, peer, .. } if peer.device_id == phone => {
                let _ = accepted.send(session.clone());
                prompted = Some(session.clone());
                let response = ClientMessage::PairResponse {
                    session,
                    accept: true,
                    auth: None,
                };
                if let Err(e) = desktop.send(response).await {
                    failures.record(format!("desktop of {}: {e:#}", phone.as_str()));
                    break;
                }
            }
            ServerMessage::PairResult {
                session: Some(session),
                outcome: PairOutcome::Accepted,
                ..
            } if prompted.as_ref() == Some(&session) => {}
            // Its resume token for the session it accepted.
            ServerMessage::SessionToken { session, .. } if prompted.as_ref() == Some(&session) => {}
            ServerMessage::SessionEnded { .. } => {}
            other => failures.record(format!(
                "desktop of {} got an unexpected {other:?}",
                phone.as_str()
            )),
        }
    }
    desktop.close().await;
}

/// What one phone worker counted.
#[derive(Debug, Default)]
struct PhoneTally {
    in_window: Vec<Duration>,
    completed: u64,
}

/// One phone pairing with one desktop, over and over until the window ends.
#[derive(Debug)]
struct PhoneWorker {
    server: SocketAddr,
    mode: Mode,
    phone: Device,
    desktop: Device,
    code: RoutingCode,
    /// The sessions the desktop accepted, in order.
    accepted: mpsc::UnboundedReceiver<SessionId>,
    /// Fresh connections take their source address from this counter.
    next_source: Arc<AtomicUsize>,
    failures: Arc<Failures>,
    window: (Instant, Instant),
    /// Dropped when the worker ends, which ends its desktop.
    _done: oneshot::Sender<()>,
}

impl PhoneWorker {
    async fn run(mut self, k: usize) -> PhoneTally {
        let mut tally = PhoneTally::default();
        let (start, end) = self.window;
        let mut connection: Option<Client> = None;
        while Instant::now() < end {
            let attempt = tokio::time::timeout(PAIRING_TIMEOUT, self.pair(&mut connection));
            let outcome = attempt
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {PAIRING_TIMEOUT:?}")));
            let finished = Instant::now();
            match outcome {
                Ok(latency) => {
                    tally.completed += 1;
                    // Every pairing that finished in the window counts, wherever it began:
                    // counting only those that also began in it would leave out the slowest
                    // ones at its start (and their log lines would still be counted), more so
                    // the longer the latency is next to the window.
                    if finished >= start && finished < end {
                        tally.in_window.push(latency);
                    }
                }
                Err(e) => {
                    self.failures
                        .record(format!("{} phone {k}: {e:#}", self.mode.name()));
                    // Start over on a new connection.
                    connection = None;
                }
            }
        }
        if let Some(client) = connection {
            client.close().await;
        }
        tally
    }

    /// One pairing; its latency. Persistent: on `connection` (opened when there is none),
    /// left afterwards; fresh: on a connection of its own, closed afterwards.
    async fn pair(&mut self, connection: &mut Option<Client>) -> Result<Duration> {
        let began = Instant::now();
        match self.mode {
            Mode::Persistent => {
                let client = match connection {
                    Some(client) => client,
                    None => connection.insert(self.open().await?),
                };
                let began = Instant::now();
                let session = self.request(client).await?;
                let latency = began.elapsed();
                client.send(ClientMessage::Leave { session }).await?;
                Ok(latency)
            }
            Mode::Fresh => {
                let mut client = self.open().await?;
                self.request(&mut client).await?;
                let latency = began.elapsed();
                client.close().await;
                Ok(latency)
            }
        }
    }

    /// A greeted phone connection; the caller's [`PAIRING_TIMEOUT`] bounds it.
    async fn open(&self) -> Result<Client> {
        let n = self.next_source.fetch_add(1, Ordering::Relaxed);
        Client::open_unbounded(self.server, source_ip(n, SOURCE_IPS)).await
    }

    /// `pair_request` → `pair_pending` → `pair_result accepted` → `session_token`, every
    /// session id checked;
    /// the session.
    async fn request(&mut self, client: &mut Client) -> Result<SessionId> {
        client
            .send(ClientMessage::PairRequest {
                code: self.code.clone(),
                device_id: self.phone.id.clone(),
                device_name: self.phone.name.clone(),
                auth: None,
            })
            .await?;
        let pending = match client.recv().await? {
            ServerMessage::PairPending { session, .. } => session,
            other => bail!("expected pair_pending, got {other:?}"),
        };
        match client.recv().await? {
            ServerMessage::PairResult {
                session: Some(session),
                outcome: PairOutcome::Accepted,
                peer: Some(peer),
                ..
            } => {
                if session != pending {
                    bail!("pair_result for another session than pair_pending's");
                }
                if peer.device_id != self.desktop.id {
                    bail!(
                        "paired with {} instead of its desktop",
                        peer.device_id.as_str()
                    );
                }
            }
            other => bail!("expected pair_result accepted, got {other:?}"),
        }
        // Then the phone's resume token for it.
        match client.recv().await? {
            ServerMessage::SessionToken { session, .. } if session == pending => {}
            other => bail!("expected the session_token, got {other:?}"),
        }
        // The desktop reported the session before accepting it; older entries are left over
        // from failed attempts.
        let mut accepted = None;
        while let Ok(session) = self.accepted.try_recv() {
            accepted = Some(session);
        }
        if accepted.as_ref() != Some(&pending) {
            bail!("the desktop accepted another session than the phone's");
        }
        Ok(pending)
    }
}
