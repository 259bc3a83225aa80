//! Durable signaling state: what must outlive the process — routing codes and where they are,
//! each desktop device's latest code, retired codes — kept in a [`StateStore`] so a restarted
//! server keeps its promises: a desktop that comes back within its reservation gets its code
//! back, and a phone asking for a retired code is told `code_used`/`code_expired`.
//!
//! The hub stays sans-IO. It journals every change to its codes as [`StateOp`]s (only when a
//! store is configured: no cost otherwise), the driver hands them to the [`StateWriter`], and
//! the writer's task applies them to the store in order, in batches, behind the hub: signaling
//! never waits for the store. At start the driver loads a [`Snapshot`] and the hub restores it
//! (`Hub::restore`).
//!
//! When the store fails (Redis down, restarted empty, too slow), the writer stops writing,
//! drops what is queued and retries with jittered backoff (250 ms doubling to 10 s). Once the
//! store answers again it asks the driver for the hub's whole state (`Hub::export_state`,
//! taken under the hub's lock, so nothing is missed or applied out of order) and replaces the
//! store's content with it: a Redis that came back empty is filled again, one that kept its
//! data loses the keys that went stale meanwhile. The server keeps serving from memory the
//! whole time; `GET /api/state` and the `proxim_state_*` metrics show it.
//!
//! Two stores, one trait: [`memory::MemoryStore`] (in this process: survives a restart of the
//! server inside one process, and is the model the Redis store is tested against) and
//! [`redis::RedisStore`] (`--state redis://…`). Without `--state` there is no store: the hub's
//! memory is the state, as before.
//!
//! This step keeps the state of one instance; every key carries a TTL, so a crashed instance
//! leaks nothing for long. A second server on the same Redis database does not start (the
//! first holds a lease on it, renewed by the writer).
//!
//! # Files
//!
//! - `mod.rs` (here): [`StateSpec`], [`StateOp`], [`Snapshot`], [`StateStore`], the
//!   [`StateWriter`] and its status.
//! - `memory.rs`: the in-process store.
//! - `redis.rs`: the Redis store, its key layout, its snapshot scan and the instance lease.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxim_protocol::{DeviceId, RoutingCode};
use rand::Rng;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::retired::RetireReason;

pub(crate) mod memory;
pub(crate) mod redis;

pub use memory::MemoryStore;

/// Ops written to the store in one round trip at most.
const BATCH: usize = 512;
/// Ops waiting for the store at most; past it the rest are dropped and the store is rewritten
/// from the hub once it keeps up again.
const QUEUE_CAP: usize = 100_000;
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often the writer renews this server's claim on the store (a third of the Redis lease).
const RENEW_EVERY: Duration = Duration::from_secs(2);

/// Milliseconds since the Unix epoch: how instants are stored (a restarted process has a new
/// monotonic clock).
pub(crate) type UnixMs = u64;

/// Now, in [`UnixMs`].
pub(crate) fn unix_ms(t: SystemTime) -> UnixMs {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where the server keeps its durable state (`--state`, `PROXIM_STATE_URL`).
#[derive(Clone)]
pub enum StateSpec {
    /// In this process: state survives a restart of the server inside the process (tests,
    /// embedding), not of the process. `memory` on the command line makes a fresh one.
    Memory(MemoryStore),
    /// A Redis server: `redis://[user:password@]host[:port][/db]`. Shown and logged without its
    /// password.
    Redis(String),
}

impl StateSpec {
    /// Parse `--state`: `memory` or a `redis://` URL.
    pub fn parse(s: &str) -> Result<StateSpec, InvalidStateUrl> {
        let s = s.trim();
        if s == "memory" || s == "memory://" {
            return Ok(StateSpec::Memory(MemoryStore::default()));
        }
        if s.starts_with("redis://") {
            return match ::redis::Client::open(s) {
                Ok(_) => Ok(StateSpec::Redis(s.to_owned())),
                Err(e) => Err(InvalidStateUrl(format!(
                    "{}: {e}",
                    crate::events::redact_url(s)
                ))),
            };
        }
        if s.starts_with("rediss://") {
            return Err(InvalidStateUrl(format!(
                "{}: TLS to Redis is not supported yet; use redis:// on a private network or \
                 through a TLS tunnel",
                crate::events::redact_url(s)
            )));
        }
        Err(InvalidStateUrl(format!(
            "{}: expected `memory` or a redis:// URL",
            crate::events::redact_url(s)
        )))
    }
}

impl fmt::Display for StateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateSpec::Memory(_) => f.write_str("memory"),
            StateSpec::Redis(url) => f.write_str(&crate::events::redact_url(url)),
        }
    }
}

impl fmt::Debug for StateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl PartialEq for StateSpec {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (StateSpec::Memory(a), StateSpec::Memory(b)) => a.same(b),
            (StateSpec::Redis(a), StateSpec::Redis(b)) => a == b,
            _ => false,
        }
    }
}

/// A `--state` value that is neither `memory` nor a usable `redis://` URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid state store {0}")]
pub struct InvalidStateUrl(String);

/// One change to the durable state, in the order the hub made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StateOp {
    /// A code belongs to `device`: held by one of its connections (`kept_until: None`) or kept
    /// for it while it is away. `latest`: the device's latest code (the one kept for it when
    /// it goes). The record lapses at `lapses` (a crashed server's codes go away by
    /// themselves).
    PutCode {
        code: RoutingCode,
        device: DeviceId,
        expires: Option<UnixMs>,
        kept_until: Option<UnixMs>,
        latest: bool,
        lapses: UnixMs,
    },
    /// Forget a live or kept code; `device`: it was that device's latest code, forget that too.
    DropCode {
        code: RoutingCode,
        device: Option<DeviceId>,
    },
    /// A code was retired: remember why until `until`.
    Retire {
        code: RoutingCode,
        reason: RetireReason,
        until: UnixMs,
    },
}

/// A code as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredCode {
    pub(crate) code: RoutingCode,
    pub(crate) device: DeviceId,
    pub(crate) expires: Option<UnixMs>,
    /// `None`: a connection held it when it was written.
    pub(crate) kept_until: Option<UnixMs>,
}

/// A retired code as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredRetired {
    pub(crate) code: RoutingCode,
    pub(crate) reason: RetireReason,
    pub(crate) until: UnixMs,
}

/// Everything a store holds, read at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) codes: Vec<StoredCode>,
    /// Each device's latest code.
    pub(crate) latest: Vec<(DeviceId, RoutingCode)>,
    pub(crate) retired: Vec<StoredRetired>,
    /// Records that could not be read (a foreign or damaged key): skipped, counted, logged.
    pub(crate) skipped: u64,
}

/// Why the store could not be read or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    /// The store could not be reached or did not answer in time.
    #[error("state store {store} unreachable: {reason}")]
    Unreachable {
        /// The store, without its password.
        store: String,
        /// What failed.
        reason: String,
    },
    /// The store answered with an error.
    #[error("state store {store} refused a command: {reason}")]
    Refused {
        /// The store, without its password.
        store: String,
        /// Its answer.
        reason: String,
    },
}

/// Where durable state is kept: read once at start (which claims it for this server), then
/// written in order.
pub(crate) trait StateStore: Send + Sync + 'static {
    /// For logs and `/api/state`, without any password.
    fn name(&self) -> String;
    /// Everything the store holds.
    fn load(&self) -> impl Future<Output = Result<Snapshot, StateError>> + Send;
    /// Apply `ops` in order.
    fn write(&self, ops: &[StateOp]) -> impl Future<Output = Result<(), StateError>> + Send;
    /// Make the store hold exactly what `ops` describe (the hub's whole state): write them,
    /// then remove every record they do not name.
    fn replace_all(&self, ops: &[StateOp]) -> impl Future<Output = Result<(), StateError>> + Send;
    /// Keep this server's claim on the store: `false` when another server holds it now (stop
    /// writing).
    fn renew(&self) -> impl Future<Output = Result<bool, StateError>> + Send;
    /// Give the claim up (the server stops).
    fn release(&self) -> impl Future<Output = ()> + Send;
}

/// The writer's state, for `/api/state` and metrics.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StateStatus {
    pub(crate) store: String,
    /// `up`, `down` (retrying) or `resyncing`.
    pub(crate) state: &'static str,
    pub(crate) ops_written: u64,
    /// Round trips that wrote them (one pipeline each; a resync takes several).
    pub(crate) writes: u64,
    /// Ops dropped because the store was down or behind (rewritten by the next resync).
    pub(crate) ops_dropped: u64,
    pub(crate) queued: usize,
    /// Times the store's content was replaced with the hub's whole state.
    pub(crate) resyncs: u64,
    pub(crate) failures: u64,
    pub(crate) last_error: Option<String>,
    /// What was restored at start.
    pub(crate) restored: RestoreSummary,
}

/// What the hub took from a snapshot at start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct RestoreSummary {
    /// Codes kept again for their absent devices.
    pub(crate) kept: u64,
    /// Retired codes remembered again.
    pub(crate) retired: u64,
    /// Codes that expired while the server was down (now retired as expired).
    pub(crate) expired: u64,
    /// Records not restored: lapsed, superseded or unreadable.
    pub(crate) dropped: u64,
}

/// The driver's handle on the writer task.
#[derive(Debug)]
pub(crate) struct StateWriter {
    shared: Arc<WriterShared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct WriterShared {
    store: String,
    queue: Mutex<Queue>,
    /// Something was queued (or the writer is closing).
    wake: Notify,
    /// The writer wants the hub's whole state ([`StateWriter::resync`]).
    want_resync: Notify,
    up: AtomicBool,
    ops_written: AtomicU64,
    writes: AtomicU64,
    ops_dropped: AtomicU64,
    resyncs: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    restored: Mutex<RestoreSummary>,
}

#[derive(Debug, Default)]
struct Queue {
    ops: VecDeque<StateOp>,
    /// The hub's whole state, to replace the store's content with (before any op queued after
    /// it).
    resync: Option<Vec<StateOp>>,
    /// The store must be rewritten before ops are applied again: ops pushed meanwhile are
    /// dropped (the rewrite, taken later, includes them).
    awaiting_resync: bool,
    closed: bool,
}

impl StateWriter {
    /// Start the writer task on `store`.
    pub(crate) fn spawn<S: StateStore>(store: S) -> StateWriter {
        let shared = Arc::new(WriterShared {
            store: store.name(),
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            want_resync: Notify::new(),
            up: AtomicBool::new(true),
            ops_written: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            ops_dropped: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            restored: Mutex::new(RestoreSummary::default()),
        });
        let span = tracing::info_span!("state", store = %shared.store);
        let task = tokio::spawn(run(store, shared.clone()).instrument(span));
        StateWriter {
            shared,
            task: Mutex::new(Some(task)),
        }
    }

    /// Queue ops the hub made (in order). Never waits.
    pub(crate) fn push(&self, ops: impl IntoIterator<Item = StateOp>) {
        let mut queue = self.shared.lock_queue();
        if queue.closed {
            return;
        }
        if queue.awaiting_resync {
            let dropped = ops.into_iter().count() as u64;
            self.shared
                .ops_dropped
                .fetch_add(dropped, Ordering::Relaxed);
            return;
        }
        let before = queue.ops.len();
        queue.ops.extend(ops);
        if queue.ops.len() > QUEUE_CAP {
            // Behind by too much: start over from the hub's whole state.
            let dropped = queue.ops.len() as u64;
            queue.ops.clear();
            queue.awaiting_resync = true;
            self.shared
                .ops_dropped
                .fetch_add(dropped, Ordering::Relaxed);
            drop(queue);
            tracing::warn!(
                dropped,
                "the state store is too far behind; it will be rewritten from memory"
            );
            self.shared.want_resync.notify_one();
            return;
        }
        let added = queue.ops.len() > before;
        drop(queue);
        if added {
            self.shared.wake.notify_one();
        }
    }

    /// Replace the store's content with `ops`, the hub's whole state, taken under the hub's
    /// lock after everything pushed so far (which it includes: the queue is cleared).
    pub(crate) fn resync(&self, ops: Vec<StateOp>) {
        let mut queue = self.shared.lock_queue();
        if queue.closed {
            return;
        }
        queue.ops.clear();
        queue.resync = Some(ops);
        queue.awaiting_resync = false;
        drop(queue);
        self.shared.wake.notify_one();
    }

    /// The writer's requests for [`StateWriter::resync`], for the task that answers them.
    pub(crate) fn resync_requests(&self) -> ResyncRequests {
        ResyncRequests(self.shared.clone())
    }

    /// Note what was restored at start.
    pub(crate) fn set_restored(&self, summary: RestoreSummary) {
        *self
            .shared
            .restored
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = summary;
    }

    /// The writer's state.
    pub(crate) fn status(&self) -> StateStatus {
        let s = &self.shared;
        let queue = s.lock_queue();
        let queued = queue.ops.len() + queue.resync.as_ref().map_or(0, Vec::len);
        let rewriting = queue.awaiting_resync || queue.resync.is_some();
        let state = match (s.up.load(Ordering::Relaxed), rewriting) {
            (false, _) => "down",
            (true, true) => "resyncing",
            (true, false) => "up",
        };
        drop(queue);
        StateStatus {
            store: s.store.clone(),
            state,
            ops_written: s.ops_written.load(Ordering::Relaxed),
            writes: s.writes.load(Ordering::Relaxed),
            ops_dropped: s.ops_dropped.load(Ordering::Relaxed),
            queued,
            resyncs: s.resyncs.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
            last_error: s
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            restored: *s.restored.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Write what is queued (for at most `limit`), then stop the task.
    pub(crate) async fn close(&self, limit: Duration) {
        self.shared.lock_queue().closed = true;
        self.shared.wake.notify_one();
        self.shared.want_resync.notify_one();
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let abort = task.abort_handle();
            if tokio::time::timeout(limit, task).await.is_err() {
                abort.abort();
                tracing::warn!("state writes still pending at shutdown were dropped");
            }
        }
    }
}

/// Where the writer asks for the hub's whole state.
#[derive(Debug)]
pub(crate) struct ResyncRequests(Arc<WriterShared>);

impl ResyncRequests {
    /// Wait for a request: `true` when the writer wants [`StateWriter::resync`] called,
    /// `false` when it closed.
    pub(crate) async fn wanted(&self) -> bool {
        self.0.want_resync.notified().await;
        !self.0.lock_queue().closed
    }
}

impl Drop for StateWriter {
    fn drop(&mut self) {
        self.shared.lock_queue().closed = true;
        self.shared.want_resync.notify_one();
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

impl WriterShared {
    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fail(&self, error: &StateError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
        let mut queue = self.lock_queue();
        let dropped = queue.ops.len() + queue.resync.as_ref().map_or(0, Vec::len);
        queue.ops.clear();
        queue.resync = None;
        queue.awaiting_resync = true;
        drop(queue);
        self.ops_dropped
            .fetch_add(dropped as u64, Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::error!(
                error = %error,
                "state store failed; serving from memory, retrying (the store will be \
                 rewritten when it answers)"
            );
        }
    }
}

/// What the writer takes off the queue next.
enum Work {
    Ops(Vec<StateOp>),
    Resync(Vec<StateOp>),
    /// Closed and empty.
    Done,
    /// Nothing yet.
    Wait,
}

async fn run<S: StateStore>(store: S, shared: Arc<WriterShared>) {
    let mut delay = BACKOFF_MIN;
    let mut next_renewal = tokio::time::Instant::now() + RENEW_EVERY;
    loop {
        if shared.up.load(Ordering::Relaxed) && tokio::time::Instant::now() >= next_renewal {
            next_renewal = tokio::time::Instant::now() + RENEW_EVERY;
            match store.renew().await {
                Ok(true) => {}
                Ok(false) => shared.fail(&StateError::Refused {
                    store: shared.store.clone(),
                    reason: "another server took this store over".to_owned(),
                }),
                Err(e) => shared.fail(&e),
            }
        }
        let work = {
            let mut queue = shared.lock_queue();
            if let Some(ops) = queue.resync.take() {
                Work::Resync(ops)
            } else if !queue.ops.is_empty() && !queue.awaiting_resync {
                let n = queue.ops.len().min(BATCH);
                Work::Ops(queue.ops.drain(..n).collect())
            } else if queue.closed {
                Work::Done
            } else {
                Work::Wait
            }
        };
        let result = match work {
            Work::Done => {
                store.release().await;
                return;
            }
            Work::Wait => {
                let awaiting = shared.lock_queue().awaiting_resync;
                if awaiting && !shared.up.load(Ordering::Relaxed) {
                    // Down: wait, then see whether the store answers again (and is still
                    // this server's to write).
                    let jittered = delay.mul_f64(rand::rng().random_range(0.5..1.0));
                    tokio::select! {
                        () = tokio::time::sleep(jittered) => {}
                        () = shared.wake.notified() => {}
                    }
                    if shared.lock_queue().closed {
                        return;
                    }
                    let back = match store.renew().await {
                        Ok(true) => Ok(()),
                        Ok(false) => Err(StateError::Refused {
                            store: shared.store.clone(),
                            reason: "another server holds this store".to_owned(),
                        }),
                        Err(e) => Err(e),
                    };
                    match back {
                        Ok(()) => {
                            tracing::info!("state store answers again; rewriting it from memory");
                            shared.up.store(true, Ordering::Relaxed);
                            delay = BACKOFF_MIN;
                            next_renewal = tokio::time::Instant::now() + RENEW_EVERY;
                            shared.want_resync.notify_one();
                        }
                        Err(e) => {
                            *shared
                                .last_error
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
                            delay = (delay * 2).min(BACKOFF_MAX);
                        }
                    }
                } else {
                    tokio::select! {
                        () = shared.wake.notified() => {}
                        () = tokio::time::sleep_until(next_renewal) => {}
                    }
                }
                continue;
            }
            Work::Ops(ops) => {
                let n = ops.len() as u64;
                store.write(&ops).await.map(|()| n)
            }
            Work::Resync(ops) => {
                let n = ops.len() as u64;
                let result = store.replace_all(&ops).await.map(|()| n);
                if result.is_ok() {
                    shared.resyncs.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(records = n, "state store rewritten from memory");
                }
                result
            }
        };
        match result {
            Ok(n) => {
                shared.ops_written.fetch_add(n, Ordering::Relaxed);
                shared
                    .writes
                    .fetch_add(n.div_ceil(BATCH as u64).max(1), Ordering::Relaxed);
            }
            Err(e) => shared.fail(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_urls_parse_and_hide_passwords() {
        assert!(matches!(
            StateSpec::parse("memory"),
            Ok(StateSpec::Memory(_))
        ));
        let redis = StateSpec::parse("redis://proxim:s3cret-pw@198.18.0.7:6379/2").unwrap();
        let shown = format!("{redis} {redis:?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(shown.contains("198.18.0.7:6379/2"), "{shown}");
        for bad in [
            "redis://:pw@",
            "rediss://u:s3cret-pw@198.18.0.7",
            "postgres://u:s3cret-pw@198.18.0.7",
            "",
        ] {
            let error = StateSpec::parse(bad).unwrap_err().to_string();
            assert!(!error.contains("s3cret-pw"), "{error}");
        }
    }
}
