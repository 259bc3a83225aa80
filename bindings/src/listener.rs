//! [`ProximListener`], the Kotlin-implemented event sink, and the thread that calls it.
//!
//! # Threading
//! Every callback of one `ProximCore` (and of the connections it made) is made from one
//! dedicated Rust thread, `proxim-listener`, in the order the events happened. Never from the
//! caller's thread, never from a tokio worker, never while Proxim holds a lock: a listener may
//! call back into Proxim. A slow listener delays later events of the same core (up to
//! [`QUEUE`] are buffered, then connections stop reading from the network); it never blocks
//! the runtime. On Android, post to the main thread (e.g. `MutableStateFlow.value = …` or
//! `Handler(Looper.getMainLooper())`) before touching views. An exception thrown by the
//! listener is logged and the next event is still delivered.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::ProximException;
use crate::types::{ConnectionEvent, PairingState};

/// How many events may wait for a slow listener.
const QUEUE: usize = 256;

/// Receives what happens in a `ProximCore`, from a Proxim thread (see the crate docs).
#[uniffi::export(foreign)]
pub trait ProximListener: Send + Sync {
    /// Pairing progressed: `Pairing`, then `Connected`, `Failed` or `Cancelled`.
    fn on_pairing_state(&self, state: PairingState);
    /// Something happened on connection `connection_id` (`Connection.id()`).
    fn on_connection_event(&self, connection_id: u64, event: ConnectionEvent);
}

/// One callback waiting to be made.
enum Callback {
    Pairing(PairingState),
    Connection(u64, ConnectionEvent),
}

/// Hands events to the listener thread; a no-op without a listener. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Dispatcher {
    tx: Option<mpsc::Sender<Callback>>,
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("listener", &self.tx.is_some())
            .finish()
    }
}

impl Dispatcher {
    /// Start the listener thread. It ends once every `Dispatcher` clone is dropped.
    pub(crate) fn start(
        listener: Option<Arc<dyn ProximListener>>,
    ) -> Result<Dispatcher, ProximException> {
        let Some(listener) = listener else {
            return Ok(Dispatcher { tx: None });
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("proxim-listener".into())
            .spawn(move || deliver(listener, rx))
            .map_err(|e| ProximException::Internal {
                reason: format!("starting the listener thread: {e}"),
            })?;
        Ok(Dispatcher { tx: Some(tx) })
    }

    /// Report a pairing state (from any thread; dropped only if the listener is 256 behind).
    pub(crate) fn pairing(&self, state: PairingState) {
        if let Some(tx) = &self.tx
            && tx.try_send(Callback::Pairing(state)).is_err()
        {
            tracing::warn!("listener queue full; a pairing state was dropped");
        }
    }

    /// Report a connection event, waiting while the listener is behind.
    pub(crate) async fn connection(&self, id: u64, event: ConnectionEvent) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Callback::Connection(id, event)).await;
        }
    }

    /// Report a connection event without waiting; skipped when the listener is behind (for
    /// advisory events such as progress).
    pub(crate) fn connection_advisory(&self, id: u64, event: ConnectionEvent) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Callback::Connection(id, event));
        }
    }
}

/// The listener thread: call the listener for each event, in order, until every sender is gone.
fn deliver(listener: Arc<dyn ProximListener>, mut rx: mpsc::Receiver<Callback>) {
    crate::platform::on_listener_thread_start();
    while let Some(callback) = rx.blocking_recv() {
        let outcome = catch_unwind(AssertUnwindSafe(|| match callback {
            Callback::Pairing(state) => listener.on_pairing_state(state),
            Callback::Connection(id, event) => listener.on_connection_event(id, event),
        }));
        if outcome.is_err() {
            tracing::warn!("the listener failed on an event; continuing with the next one");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::mpsc as std_mpsc;
    use std::time::Duration;

    struct Recorder {
        seen: Mutex<Vec<String>>,
        done: Mutex<Option<std_mpsc::Sender<()>>>,
    }

    impl ProximListener for Recorder {
        fn on_pairing_state(&self, state: PairingState) {
            if state == PairingState::Cancelled {
                panic!("a listener that throws");
            }
            self.seen.lock().unwrap().push(format!("{state:?}"));
        }

        fn on_connection_event(&self, id: u64, event: ConnectionEvent) {
            self.seen.lock().unwrap().push(format!("{id} {event:?}"));
            if matches!(event, ConnectionEvent::Closed { .. })
                && let Some(done) = self.done.lock().unwrap().take()
            {
                done.send(()).unwrap();
            }
        }
    }

    #[test]
    fn events_arrive_in_order_on_another_thread_even_after_a_failure() {
        let (done_tx, done_rx) = std_mpsc::channel();
        let recorder = Arc::new(Recorder {
            seen: Mutex::new(Vec::new()),
            done: Mutex::new(Some(done_tx)),
        });
        let dispatcher = Dispatcher::start(Some(recorder.clone())).unwrap();
        dispatcher.pairing(PairingState::Pairing);
        dispatcher.pairing(PairingState::Cancelled);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            dispatcher
                .connection(3, ConnectionEvent::TextReceived { text: "hi".into() })
                .await;
            dispatcher
                .connection(
                    3,
                    ConnectionEvent::Closed {
                        reason: "done".into(),
                    },
                )
                .await;
        });
        done_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let seen = recorder.seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                "Pairing".to_owned(),
                "3 TextReceived { text: \"hi\" }".to_owned(),
                "3 Closed { reason: \"done\" }".to_owned(),
            ]
        );
    }
}
