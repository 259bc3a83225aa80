//! [`Connection`]: an open direct connection, as a Kotlin object.
//!
//! Every method of core's `Connection` takes `&self`, so calls and the pump task that moves
//! its events to the listener share it without a lock and run concurrently.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info_span, warn};

use crate::ProximException;
use crate::error::millis;
use crate::listener::Dispatcher;
use crate::runtime::{run, spawn_detached};
use crate::types::{
    AuthMethod, ConnectionEvent, ConnectionState, ConnectionStats, FileReport, TransferDirection,
    TransferProgress,
};

/// How long closing may take before the connection is dropped anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the pump may take to deliver the last events after a close.
const PUMP_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Ids for connections, unique in the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A direct connection to the paired desktop.
///
/// In Kotlin it is `AutoCloseable`: `close()` (or leaving a `.use {}` block) releases it — the
/// peer connection is closed on Proxim's runtime within a few seconds, without blocking the
/// caller. `disconnect()` does the same but waits until it is done. Both are idempotent; using
/// the object after `close()` throws `IllegalStateException`.
#[derive(Debug, uniffi::Object)]
pub struct Connection {
    id: u64,
    peer_name: String,
    peer_device_id: String,
    peer_identity: String,
    auth_method: AuthMethod,
    comparison_code: Option<String>,
    pairing_ms: u64,
    setup_ms: u64,
    shared: Arc<Shared>,
    pump: Mutex<Option<JoinHandle<()>>>,
    events: Dispatcher,
}

#[uniffi::export(async_runtime = "tokio")]
impl Connection {
    /// This connection's id in the process; listener events carry it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The desktop's name.
    pub fn peer_name(&self) -> String {
        self.peer_name.clone()
    }

    /// The desktop's device id.
    pub fn peer_device_id(&self) -> String {
        self.peer_device_id.clone()
    }

    /// How the desktop was authenticated: `CODE` after `pair()`, `TRUSTED` after `connect()`.
    pub fn auth_method(&self) -> AuthMethod {
        self.auth_method
    }

    /// After a code pairing, six digits (`"123 456"`) both devices derive from the pairing
    /// key: the desktop shows the same ones unless someone is in the middle. Show it to the
    /// user. `null` after `connect()`.
    pub fn comparison_code(&self) -> Option<String> {
        self.comparison_code.clone()
    }

    /// The desktop's identity key, in a short form a user can compare with what the desktop
    /// shows (`proxim devices`).
    pub fn peer_identity(&self) -> String {
        self.peer_identity.clone()
    }

    /// Milliseconds from `pair()` (or `connect()`) until the desktop accepted.
    pub fn pairing_time_ms(&self) -> u64 {
        self.pairing_ms
    }

    /// Milliseconds from `pair()` (or `connect()`) until the data channel was open.
    pub fn setup_time_ms(&self) -> u64 {
        self.setup_ms
    }

    /// The connection state now.
    pub fn state(&self) -> ConnectionState {
        self.shared.state()
    }

    /// Send a text message (reliable, ordered). Suspends while the send buffer is full.
    pub async fn send_text(&self, text: String) -> Result<(), ProximException> {
        let shared = self.shared.clone();
        run(async move { Ok(shared.connection.send_text(text).await?) }).await
    }

    /// Send a binary message (reliable, ordered). Suspends while the send buffer is full.
    pub async fn send_bytes(&self, bytes: Vec<u8>) -> Result<(), ProximException> {
        let shared = self.shared.clone();
        run(async move { Ok(shared.connection.send_bytes(bytes).await?) }).await
    }

    /// Send the file at `path`; returns once the desktop verified its SHA-256. Progress goes to
    /// the listener as `ConnectionEvent.FileProgress(SENDING, …)`.
    pub async fn send_file(&self, path: String) -> Result<FileReport, ProximException> {
        let shared = self.shared.clone();
        let events = self.events.clone();
        let id = self.id;
        run(async move {
            let failures = events.clone();
            let mut throttle = ProgressThrottle::default();
            let result = shared
                .connection
                .send_file(std::path::Path::new(&path), move |progress| {
                    if throttle.should_report(progress.bytes_done, progress.total) {
                        events.connection_advisory(
                            id,
                            ConnectionEvent::FileProgress {
                                direction: TransferDirection::Sending,
                                progress: TransferProgress::from(progress),
                            },
                        );
                    }
                })
                .await;
            match result {
                Ok(report) => Ok(report.into()),
                Err(error) => {
                    let error = ProximException::from(error);
                    let reason = error.to_string();
                    let direction = TransferDirection::Sending;
                    let failed = ConnectionEvent::FileFailed { direction, reason };
                    failures.connection(id, failed).await;
                    Err(error)
                }
            }
        })
        .await
    }

    /// Current statistics: the path type (host, srflx, relay), RTT, bytes.
    pub async fn stats(&self) -> Result<ConnectionStats, ProximException> {
        let shared = self.shared.clone();
        run(async move { Ok(shared.connection.stats().await?.into()) }).await
    }

    /// The device's network changed (call it from `ConnectivityManager.NetworkCallback`'s
    /// `onAvailable`/`onLost`/`onLinkPropertiesChanged`): restart ICE on the addresses there
    /// are now, keeping channels and transfers; `Reconnecting` and `PathChanged` events follow.
    /// Throws when signaling is gone (the path in use then stays as long as it works) or the
    /// connection is not up.
    pub async fn network_changed(&self) -> Result<(), ProximException> {
        let shared = self.shared.clone();
        run(async move { Ok(shared.connection.network_changed().await?) }).await
    }

    /// Close the connection and wait until it is closed (at most a few seconds). Idempotent.
    pub async fn disconnect(&self) -> Result<(), ProximException> {
        let shared = self.shared.clone();
        run(async move {
            shared.close().await;
            Ok(())
        })
        .await
    }
}

impl Connection {
    /// Wrap an open core connection. Its events reach the listener once [`Self::start_events`]
    /// is called (after the caller reported the connection, so the order stays valid).
    pub(crate) fn new(connection: proxim_core::Connection, events: Dispatcher) -> Connection {
        let peer = connection.peer_device();
        let timings = connection.timings();
        let state = connection.state().into();
        Connection {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            peer_name: peer.device_name.to_string(),
            peer_device_id: peer.device_id.to_string(),
            peer_identity: connection.peer_identity(),
            auth_method: connection.auth_method().into(),
            comparison_code: connection.comparison_code().map(str::to_owned),
            pairing_ms: millis(timings.paired),
            setup_ms: millis(timings.channel_open),
            shared: Arc::new(Shared {
                connection,
                state: Mutex::new(state),
                closed: AtomicBool::new(false),
            }),
            pump: Mutex::new(None),
            events,
        }
    }

    /// Start delivering this connection's events to the listener. Call once.
    pub(crate) fn start_events(&self) -> Result<(), ProximException> {
        let pump = pump(self.shared.clone(), self.id, self.events.clone())
            .instrument(info_span!("connection", id = self.id, peer = %self.peer_name));
        let pump = crate::runtime::handle()?.spawn(pump);
        if let Ok(mut slot) = self.pump.lock() {
            *slot = Some(pump);
        }
        Ok(())
    }
}

impl Drop for Connection {
    /// Kotlin's `close()`/`destroy()`: close in the background; never blocks the caller.
    fn drop(&mut self) {
        let shared = self.shared.clone();
        let pump = self.pump.lock().ok().and_then(|mut slot| slot.take());
        let id = self.id;
        spawn_detached(async move {
            shared.close().await;
            if let Some(mut pump) = pump
                && tokio::time::timeout(PUMP_DRAIN_TIMEOUT, &mut pump)
                    .await
                    .is_err()
            {
                debug!(
                    connection = id,
                    "event pump still busy after close; stopping it"
                );
                pump.abort();
            }
        });
    }
}

/// What the Kotlin object, its calls and its pump share.
#[derive(Debug)]
struct Shared {
    connection: proxim_core::Connection,
    /// The latest state the pump saw (updated with the events, so `state()` follows them).
    state: Mutex<ConnectionState>,
    closed: AtomicBool,
}

impl Shared {
    fn state(&self) -> ConnectionState {
        self.state
            .lock()
            .map(|state| *state)
            .unwrap_or(ConnectionState::Closed)
    }

    /// Record a state the pump saw. Once closed from this side, only `Closed` or `Failed`.
    fn set_state(&self, state: ConnectionState) {
        let settled = matches!(state, ConnectionState::Closed | ConnectionState::Failed);
        if self.closed.load(Ordering::SeqCst) && !settled {
            return;
        }
        if let Ok(mut slot) = self.state.lock() {
            *slot = state;
        }
    }

    /// Close core's connection (bounded). Idempotent.
    async fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let closing = self.connection.close();
        if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
            warn!("closing the connection took longer than {CLOSE_TIMEOUT:?}; dropping it");
        }
        self.set_state(ConnectionState::Closed);
    }
}

/// Move core's events to the listener until the connection closes.
async fn pump(shared: Arc<Shared>, id: u64, events: Dispatcher) {
    loop {
        let event = shared.connection.next_event().await;
        let Some(event) = event else {
            shared.set_state(ConnectionState::Closed);
            return;
        };
        let Some(event) = ConnectionEvent::from_core(event) else {
            continue;
        };
        let last = match &event {
            ConnectionEvent::StateChanged { new, .. } => {
                shared.set_state(*new);
                false
            }
            ConnectionEvent::Closed { .. } => {
                shared.set_state(ConnectionState::Closed);
                true
            }
            _ => false,
        };
        events.connection(id, event).await;
        if last {
            return;
        }
    }
}

/// Report transfer progress at most about every percent, and always at the start and the end.
#[derive(Debug, Default)]
struct ProgressThrottle {
    last: Option<u64>,
}

impl ProgressThrottle {
    fn should_report(&mut self, done: u64, total: u64) -> bool {
        let step = (total / 100).max(1);
        let report = match self.last {
            None => true,
            Some(last) => done >= total || done >= last.saturating_add(step),
        };
        if report {
            self.last = Some(done);
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_throttled_but_keeps_the_first_and_the_last() {
        let mut throttle = ProgressThrottle::default();
        let total = 10_000u64;
        let reported: Vec<u64> = (0..=total)
            .step_by(10)
            .filter(|&done| throttle.should_report(done, total))
            .collect();
        assert_eq!(reported.first(), Some(&0));
        assert_eq!(reported.last(), Some(&total));
        assert!(reported.len() <= 102, "{} reports", reported.len());
        assert!(reported.len() >= 90, "{} reports", reported.len());
    }
}
