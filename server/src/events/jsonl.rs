//! The JSON-lines sink: one event per line on stdout or appended to a file. Lines are
//! batched while more are queued and flushed when the queue runs dry, so a burst costs a few
//! writes and a quiet server's events reach the file at once.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::bus::{SinkCounters, SinkState, Stamper};

/// A batch is written once it holds this many bytes, even when more are queued.
const BATCH_BYTES: usize = 64 * 1024;

/// Where the lines go.
pub(super) struct Output(Box<dyn AsyncWrite + Send + Unpin>);

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Output")
    }
}

impl Output {
    pub(super) fn stdout() -> Self {
        Output(Box::new(tokio::io::stdout()))
    }

    /// `path`, opened for appending (created when missing).
    pub(super) async fn file(path: &Path) -> std::io::Result<Self> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        Ok(Output(Box::new(file)))
    }
}

/// Start the sink's task: it ends when the bus closes its queue and the queue is drained.
pub(super) fn spawn(
    name: String,
    out: Output,
    rx: mpsc::Receiver<Arc<str>>,
    counters: Arc<SinkCounters>,
    stamper: Arc<Stamper>,
) -> JoinHandle<()> {
    let span = tracing::info_span!("event_sink", sink = %name);
    tokio::spawn(run(name, out, rx, counters, stamper).instrument(span))
}

async fn run(
    name: String,
    mut out: Output,
    mut rx: mpsc::Receiver<Arc<str>>,
    counters: Arc<SinkCounters>,
    stamper: Arc<Stamper>,
) {
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    while let Some(first) = rx.recv().await {
        let mut lines = 0u64;
        if let Some(announcement) = counters.take_announcement(&name, &stamper) {
            push(&mut batch, &announcement);
            lines += 1;
        }
        push(&mut batch, &first);
        lines += 1;
        while batch.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(line) => {
                    push(&mut batch, &line);
                    lines += 1;
                }
                Err(_) => break,
            }
        }
        let written = async {
            out.0.write_all(&batch).await?;
            out.0.flush().await
        }
        .await;
        match written {
            Ok(()) => {
                counters.delivered.fetch_add(lines, Ordering::Relaxed);
                if counters.state() != SinkState::Up {
                    tracing::info!("event sink writes again");
                    counters.set_state(SinkState::Up);
                }
            }
            Err(e) => {
                counters.lose(lines);
                if counters.state() != SinkState::Down {
                    tracing::warn!(error = %e, "cannot write events; they are dropped until a write succeeds");
                    counters.set_state(SinkState::Down);
                }
                counters.set_error(e.to_string());
            }
        }
        batch.clear();
    }
    // Drained; drops since the last announcement still get theirs.
    if let Some(announcement) = counters.take_announcement(&name, &stamper) {
        push(&mut batch, &announcement);
        if out.0.write_all(&batch).await.is_ok() {
            counters.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = out.0.flush().await;
}

fn push(batch: &mut Vec<u8>, line: &str) {
    batch.extend_from_slice(line.as_bytes());
    batch.push(b'\n');
}
