//! The [`EventBus`]: stamps each [`Event`], encodes it once and offers it to every sink's
//! bounded queue without waiting; per-sink counters and status for `/metrics` and
//! `/api/events`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{EVENTS_VERSION, Event, EventSinkSpec, amqp, jsonl, time};

/// `limit_hit` events per limit that go out in a burst, and per second sustained; past it they
/// are counted and the next one that goes out says how many were left out.
const LIMIT_EVENTS_BURST: f64 = 20.0;
const LIMIT_EVENTS_PER_SECOND: f64 = 10.0;

/// Why the bus could not start a sink.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the event sink {sink}: {source}")]
pub struct EventSinkError {
    sink: String,
    source: std::io::Error,
}

/// What every record carries besides its event: shared by the bus and the sinks (a sink
/// stamps its own `events_dropped`).
#[derive(Debug)]
pub(super) struct Stamper {
    seq: AtomicU64,
    instance: String,
    run: String,
}

#[derive(Serialize)]
struct Envelope<'a> {
    v: u32,
    seq: u64,
    ts: String,
    instance: &'a str,
    run: &'a str,
    #[serde(flatten)]
    event: &'a Event,
}

impl Stamper {
    /// The event as one JSON line (without the newline).
    pub(super) fn line(&self, event: &Event) -> Arc<str> {
        let envelope = Envelope {
            v: EVENTS_VERSION,
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            ts: time::rfc3339_millis(SystemTime::now()),
            instance: &self.instance,
            run: &self.run,
            event,
        };
        match serde_json::to_string(&envelope) {
            Ok(line) => line.into(),
            // Every field is a string, a number or an id: this cannot fail; say so if it does.
            Err(e) => {
                tracing::error!(error = %e, kind = event.kind(), "cannot encode an event");
                Arc::from("{}")
            }
        }
    }
}

/// A sink's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum SinkState {
    /// Connecting (or reconnecting) to its broker.
    Connecting = 0,
    /// Delivering.
    Up = 1,
    /// Its broker is unreachable or its file cannot be written; retrying.
    Down = 2,
    /// Stopped (the server is shutting down).
    Stopped = 3,
}

impl SinkState {
    fn name(self) -> &'static str {
        match self {
            SinkState::Connecting => "connecting",
            SinkState::Up => "up",
            SinkState::Down => "down",
            SinkState::Stopped => "stopped",
        }
    }

    fn from_u8(n: u8) -> Self {
        match n {
            1 => SinkState::Up,
            2 => SinkState::Down,
            3 => SinkState::Stopped,
            _ => SinkState::Connecting,
        }
    }
}

/// One sink's counters, shared by the bus (drops at the queue) and the sink's task.
#[derive(Debug)]
pub(super) struct SinkCounters {
    /// Events written (JSON lines) or confirmed by the broker (AMQP).
    pub(super) delivered: AtomicU64,
    /// Events lost: the queue was full, the write failed, the broker refused them, or the
    /// server stopped before they could go out.
    pub(super) dropped: AtomicU64,
    /// Drops not yet announced in the stream by an `events_dropped`.
    pub(super) unannounced: AtomicU64,
    /// Times the sink (re)connected to its broker.
    pub(super) connects: AtomicU64,
    state: AtomicU8,
    last_error: Mutex<Option<String>>,
}

impl SinkCounters {
    fn new(state: SinkState) -> Self {
        SinkCounters {
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            unannounced: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            state: AtomicU8::new(state as u8),
            last_error: Mutex::new(None),
        }
    }

    /// Count `n` events lost.
    pub(super) fn lose(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        self.unannounced.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn set_state(&self, state: SinkState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub(super) fn state(&self) -> SinkState {
        SinkState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Remember the latest failure (shown in `/api/events`; never a secret: errors are
    /// built from I/O and broker messages, the URL is not in them).
    pub(super) fn set_error(&self, error: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error);
    }

    /// An `events_dropped` line for `sink` when drops are unannounced.
    pub(super) fn take_announcement(&self, sink: &str, stamper: &Stamper) -> Option<Arc<str>> {
        let count = self.unannounced.swap(0, Ordering::Relaxed);
        (count > 0).then(|| {
            stamper.line(&Event::EventsDropped {
                sink: sink.to_owned(),
                count,
            })
        })
    }
}

/// A sink as `/api/events` and `/metrics` show it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SinkStatus {
    /// The sink (an AMQP URL without its password).
    pub(crate) sink: String,
    /// `stdout`, `file` or `amqp`.
    pub(crate) kind: &'static str,
    /// `connecting`, `up`, `down` or `stopped`.
    pub(crate) state: &'static str,
    /// Events written or confirmed.
    pub(crate) delivered: u64,
    /// Events lost.
    pub(crate) dropped: u64,
    /// Events waiting in its queue.
    pub(crate) queued: u64,
    /// Its queue's capacity.
    pub(crate) capacity: u64,
    /// Times it connected to its broker (AMQP).
    pub(crate) connects: u64,
    /// The latest failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_error: Option<String>,
}

#[derive(Debug)]
struct Sink {
    name: String,
    kind: &'static str,
    tx: mpsc::Sender<Arc<str>>,
    capacity: usize,
    counters: Arc<SinkCounters>,
}

/// What `/api/events` shows of a sink, kept after the bus closed.
#[derive(Debug)]
struct SinkInfo {
    name: String,
    kind: &'static str,
    capacity: usize,
    counters: Arc<SinkCounters>,
}

/// A token bucket per limit for `limit_hit` events.
#[derive(Debug)]
struct Throttle {
    tokens: f64,
    at: Instant,
    suppressed: u64,
}

/// Every sink, and the stamp they share.
#[derive(Debug)]
pub(crate) struct EventBus {
    stamper: Arc<Stamper>,
    /// Emptied by [`EventBus::close`]: the sinks' tasks then drain their queues and end.
    sinks: RwLock<Vec<Sink>>,
    /// Their status after close, for a last scrape.
    statuses: Mutex<Vec<SinkInfo>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
    throttles: Mutex<HashMap<&'static str, Throttle>>,
}

impl EventBus {
    /// A bus with no sinks: [`EventBus::emit`] does nothing.
    pub(crate) fn off() -> Self {
        EventBus {
            stamper: Arc::new(Stamper {
                seq: AtomicU64::new(0),
                instance: String::new(),
                run: String::new(),
            }),
            sinks: RwLock::new(Vec::new()),
            statuses: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            stop: watch::channel(false).0,
            throttles: Mutex::new(HashMap::new()),
        }
    }

    /// Open every sink in `specs` (files are opened here, so a bad path fails the start) and
    /// start its task; AMQP sinks connect in the background. Must run inside a tokio runtime.
    pub(crate) async fn start(
        specs: &[EventSinkSpec],
        queue: &str,
        buffer: usize,
        instance: String,
    ) -> Result<Self, EventSinkError> {
        let bus = EventBus::off();
        let run = format!("{:08x}", rand::random::<u32>());
        let stamper = Arc::new(Stamper {
            seq: AtomicU64::new(0),
            instance,
            run,
        });
        let buffer = buffer.max(1);
        let mut sinks = Vec::with_capacity(specs.len());
        let mut tasks = Vec::with_capacity(specs.len());
        for spec in specs {
            let (tx, rx) = mpsc::channel::<Arc<str>>(buffer);
            let name = spec.to_string();
            let (kind, counters, task) = match spec {
                EventSinkSpec::Stdout => {
                    let counters = Arc::new(SinkCounters::new(SinkState::Up));
                    let out = jsonl::Output::stdout();
                    let task =
                        jsonl::spawn(name.clone(), out, rx, counters.clone(), stamper.clone());
                    ("stdout", counters, task)
                }
                EventSinkSpec::File(path) => {
                    let counters = Arc::new(SinkCounters::new(SinkState::Up));
                    let out = jsonl::Output::file(path)
                        .await
                        .map_err(|source| EventSinkError {
                            sink: name.clone(),
                            source,
                        })?;
                    let task =
                        jsonl::spawn(name.clone(), out, rx, counters.clone(), stamper.clone());
                    ("file", counters, task)
                }
                EventSinkSpec::Amqp(url) => {
                    let counters = Arc::new(SinkCounters::new(SinkState::Connecting));
                    let task = amqp::spawn(amqp::Publisher {
                        name: name.clone(),
                        url: url.clone(),
                        queue: queue.to_owned(),
                        rx,
                        counters: counters.clone(),
                        stamper: stamper.clone(),
                        stop: bus.stop.subscribe(),
                    });
                    ("amqp", counters, task)
                }
            };
            tracing::info!(sink = %name, buffer, "event sink started");
            sinks.push(Sink {
                name,
                kind,
                tx,
                capacity: buffer,
                counters,
            });
            tasks.push(task);
        }
        Ok(EventBus {
            stamper,
            statuses: Mutex::new(
                sinks
                    .iter()
                    .map(|s| SinkInfo {
                        name: s.name.clone(),
                        kind: s.kind,
                        capacity: s.capacity,
                        counters: s.counters.clone(),
                    })
                    .collect(),
            ),
            sinks: RwLock::new(sinks),
            tasks: Mutex::new(tasks),
            ..bus
        })
    }

    /// Offer `event` to every sink; never waits. A full queue loses it (counted).
    pub(crate) fn emit(&self, event: Event) {
        let sinks = self.sinks.read().unwrap_or_else(PoisonError::into_inner);
        if sinks.is_empty() {
            return;
        }
        let event = match event {
            Event::LimitHit {
                limit, conn, ip, ..
            } => match self.throttle(limit) {
                Some(suppressed) => Event::LimitHit {
                    limit,
                    conn,
                    ip,
                    suppressed,
                },
                None => return,
            },
            other => other,
        };
        let line = self.stamper.line(&event);
        for sink in sinks.iter() {
            if sink.tx.try_send(line.clone()).is_err() {
                sink.counters.lose(1);
            }
        }
    }

    /// `Some(left out before)` when a `limit_hit` for `limit` may go out now.
    fn throttle(&self, limit: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut throttles = self
            .throttles
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let t = throttles.entry(limit).or_insert(Throttle {
            tokens: LIMIT_EVENTS_BURST,
            at: now,
            suppressed: 0,
        });
        let elapsed = now.saturating_duration_since(t.at).as_secs_f64();
        t.tokens = (t.tokens + elapsed * LIMIT_EVENTS_PER_SECOND).min(LIMIT_EVENTS_BURST);
        t.at = now;
        if t.tokens >= 1.0 {
            t.tokens -= 1.0;
            Some(std::mem::take(&mut t.suppressed))
        } else {
            t.suppressed += 1;
            None
        }
    }

    /// Every sink's status.
    pub(crate) fn status(&self) -> Vec<SinkStatus> {
        let sinks = self.sinks.read().unwrap_or_else(PoisonError::into_inner);
        let queued: HashMap<&str, usize> = sinks
            .iter()
            .map(|s| (s.name.as_str(), s.capacity - s.tx.capacity()))
            .collect();
        self.statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|info| (info, &info.counters))
            .map(|(info, c)| SinkStatus {
                sink: info.name.clone(),
                kind: info.kind,
                state: c.state().name(),
                delivered: c.delivered.load(Ordering::Relaxed),
                dropped: c.dropped.load(Ordering::Relaxed),
                queued: queued.get(info.name.as_str()).copied().unwrap_or(0) as u64,
                capacity: info.capacity as u64,
                connects: c.connects.load(Ordering::Relaxed),
                last_error: c
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone(),
            })
            .collect()
    }

    /// Stop taking events; give the sinks up to `grace` to deliver what they hold, then stop
    /// them (what is left is counted as dropped).
    pub(crate) async fn close(&self, grace: Duration) {
        self.sinks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        if tasks.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::now() + grace;
        // AMQP sinks that are down stop retrying at once; the others drain.
        let _ = self.stop.send(true);
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
            }
        }
        for SinkInfo { name, counters, .. } in self
            .statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            counters.set_state(SinkState::Stopped);
            let dropped = counters.dropped.load(Ordering::Relaxed);
            let delivered = counters.delivered.load(Ordering::Relaxed);
            tracing::info!(sink = %name, delivered, dropped, "event sink stopped");
        }
    }
}
