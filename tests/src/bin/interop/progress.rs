//! How far the scenario got, for the result of a run that did not finish: which phase it was
//! in and what each channel had sent and received. A run that times out says where it stuck
//! (connecting, opening a channel, waiting for the peer's end message) instead of only "not
//! finished".

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{Value, json};

#[derive(Debug, Default)]
struct State {
    phase: String,
    channels: BTreeMap<String, Counts>,
}

/// What one channel moved so far.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub sent_bytes: u64,
    pub sent_messages: u64,
    pub received_bytes: u64,
    pub received_messages: u64,
    /// The sender's last `send` has not returned (waiting for room).
    pub send_waiting: bool,
    pub send_done: bool,
    pub receive_done: bool,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(State::default))
}

/// Enter a phase ("connecting", "opening channel partial", "workloads").
pub(crate) fn phase(name: impl Into<String>) {
    let name = name.into();
    tracing::debug!(phase = %name, "phase");
    with(|s| s.phase = name);
}

/// Update one channel's counts.
pub(crate) fn channel(label: &str, f: impl FnOnce(&mut Counts)) {
    with(|s| f(s.channels.entry(label.to_owned()).or_default()));
}

/// The phase and the counts, as JSON.
pub(crate) fn snapshot() -> Value {
    with(|s| {
        let channels: serde_json::Map<String, Value> = s
            .channels
            .iter()
            .map(|(label, c)| {
                (
                    label.clone(),
                    json!({"sent_bytes": c.sent_bytes, "sent_messages": c.sent_messages,
                           "received_bytes": c.received_bytes,
                           "received_messages": c.received_messages,
                           "send_waiting": c.send_waiting, "send_done": c.send_done,
                           "receive_done": c.receive_done}),
                )
            })
            .collect();
        json!({"phase": s.phase, "channels": channels})
    })
}
