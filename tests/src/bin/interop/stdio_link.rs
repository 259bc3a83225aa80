//! A [`SignalLink`] bridged to this process's stdin and stdout, one JSON object a line.
//!
//! Lines on stdin are Proxim [`Signal`]s as the signaling server relays them
//! (`{"kind":"offer","sdp":"v=0…"}`, `{"kind":"candidate","candidate":"candidate:…",
//! "sdp_mid":"0","sdp_mline_index":0}`, `{"kind":"end_of_candidates"}`); a line that does not
//! decode is logged, counted and skipped, as the server would never relay it. The peer's
//! outgoing signals are written to stdout in the same form, and so is the result line at the
//! end ([`StdoutLines`] keeps them from interleaving). End of stdin means the other side left.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use proxim_core::link::{LinkEvent, SIGNAL_QUEUE, SignalLink};
use proxim_protocol::{SessionEndReason, Signal};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

/// The process side of the bridge: write lines to stdout, learn when stdin ended.
#[derive(Debug)]
pub(crate) struct StdioBridge {
    /// Lines for stdout (each a JSON object, without the newline).
    pub(crate) stdout: StdoutLines,
    /// Becomes `true` once stdin reached its end.
    pub(crate) stdin_closed: watch::Receiver<bool>,
    /// How many stdin lines were not a signal.
    pub(crate) bad_lines: Arc<AtomicUsize>,
}

/// A handle that writes whole lines to stdout, in order, from any task.
#[derive(Debug, Clone)]
pub(crate) struct StdoutLines {
    tx: mpsc::UnboundedSender<String>,
    done: Arc<tokio::sync::Notify>,
    pending: Arc<AtomicUsize>,
}

impl StdoutLines {
    /// Queue one line.
    pub(crate) fn write(&self, line: String) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(line).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Wait until every queued line is written and flushed.
    pub(crate) async fn flushed(&self) {
        loop {
            let notified = self.done.notified();
            if self.pending.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Make the link and spawn the two tasks that move its signals through stdin and stdout.
pub(crate) fn stdio_link() -> (SignalLink, StdioBridge) {
    let (outgoing, outgoing_rx) = mpsc::channel::<Signal>(SIGNAL_QUEUE);
    let (incoming_tx, incoming) = mpsc::channel::<LinkEvent>(SIGNAL_QUEUE);
    let (line_tx, line_rx) = mpsc::unbounded_channel::<String>();
    let (closed_tx, stdin_closed) = watch::channel(false);
    let stdout = StdoutLines {
        tx: line_tx,
        done: Arc::new(tokio::sync::Notify::new()),
        pending: Arc::new(AtomicUsize::new(0)),
    };
    let bad_lines = Arc::new(AtomicUsize::new(0));
    tokio::spawn(write_stdout(line_rx, stdout.clone()));
    tokio::spawn(signals_to_stdout(outgoing_rx, stdout.clone()));
    tokio::spawn(read_stdin(incoming_tx, closed_tx, bad_lines.clone()));
    (
        SignalLink { outgoing, incoming },
        StdioBridge {
            stdout,
            stdin_closed,
            bad_lines,
        },
    )
}

async fn signals_to_stdout(mut signals: mpsc::Receiver<Signal>, stdout: StdoutLines) {
    while let Some(signal) = signals.recv().await {
        match serde_json::to_string(&signal) {
            Ok(line) => stdout.write(line),
            Err(e) => tracing::error!(error = %e, "signal does not encode"),
        }
    }
}

async fn write_stdout(mut lines: mpsc::UnboundedReceiver<String>, handle: StdoutLines) {
    let mut out = tokio::io::stdout();
    while let Some(mut line) = lines.recv().await {
        line.push('\n');
        let written = out.write_all(line.as_bytes()).await;
        let flushed = out.flush().await;
        handle.pending.fetch_sub(1, Ordering::AcqRel);
        handle.done.notify_waiters();
        if written.is_err() || flushed.is_err() {
            tracing::warn!("stdout closed");
        }
    }
}

async fn read_stdin(
    incoming: mpsc::Sender<LinkEvent>,
    closed: watch::Sender<bool>,
    bad_lines: Arc<AtomicUsize>,
) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) if line.trim().is_empty() => {}
            Ok(Some(line)) => match serde_json::from_str::<Signal>(&line) {
                Ok(signal) => {
                    tracing::debug!(line = %line.get(..120).unwrap_or(&line), "signal in");
                    if incoming.send(LinkEvent::Signal(signal)).await.is_err() {
                        // The peer is gone; keep reading so the other side is not blocked.
                    }
                }
                Err(e) => {
                    bad_lines.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, line = %line.get(..200).unwrap_or(&line),
                        "stdin line is not a Proxim signal; skipped");
                }
            },
            Ok(None) | Err(_) => break,
        }
    }
    let _ = incoming
        .send(LinkEvent::Ended(SessionEndReason::PeerLeft))
        .await;
    let _ = closed.send(true);
}
