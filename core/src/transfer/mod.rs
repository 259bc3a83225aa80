//! File transfer over a data channel, end-to-end verified with SHA-256, resumable.
//!
//! Built only on the public API of [`crate::peer`].
//!
//! # Protocol (version 2)
//! The sender opens a reliable, ordered channel labelled `proxim-file/<id>` and sends a text
//! header `{"type":"header","version":2,"name":"…","size":N,"content_id":"<32 hex>"}`. The
//! content id names the file's content (see [`send_file`]); the receiver keeps its part file
//! under it, so a transfer that failed (connection lost, app killed, `send_file` dropped)
//! resumes when the same file is sent again, over the same connection or the next one.
//! 1. The receiver answers `{"type":"accept","offset":K,"prefix_sha256":"<64 hex>"}`: it holds
//!    the first K bytes (the hash is absent when K is 0).
//! 2. The sender hashes its own first K bytes. When they match it sends
//!    `{"type":"start","offset":K}` and the rest of the file; otherwise (another file under the
//!    same id, a garbled part file) `{"type":"start","offset":0}` and the whole file.
//! 3. Data goes as binary messages of [`CHUNK_BYTES`], then a text trailer
//!    `{"type":"trailer","sha256":"<64 hex>"}` with the hash of the whole file.
//!
//! The receiver hashes what it holds and what arrives, checks the size and the hash, moves the
//! file into place (never overwriting: it adds a ` (n)` suffix) and answers
//! `{"type":"ack","ok":true,"sha256":"…"}`. The sender returns only after that
//! acknowledgement, then closes the channel. A hash mismatch is answered with `"ok":false` and
//! deletes the part file, as does any protocol violation; a transfer cut short (the channel or
//! connection closed, a timeout, a full disk) keeps it for the next attempt. A file received
//! whole is remembered for a day (in the [`STATE_DIR`] inside the target directory): sending
//! it again is acknowledged without storing it twice.
//!
//! Version 1 (a header without content id, data at once, no resume) is still received.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::peer::{ChannelOptions, ChannelSender, DataChannel, Payload, PeerConnection, PeerError};

mod names;
mod part;
mod wire;

pub use names::sanitize_file_name;
pub use part::{DONE_MAX_AGE, PART_MAX_AGE, STATE_DIR};
use part::{DoneRecord, PartFile};
use wire::Control;

/// Label prefix of file-transfer channels: `proxim-file/<id>`.
pub const CHANNEL_PREFIX: &str = "proxim-file/";
/// Version of the transfer protocol this code speaks (it receives version 1 too).
pub const TRANSFER_VERSION: u32 = 2;
/// Size of one binary chunk on the channel.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Largest file accepted (either side refuses anything bigger).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024 * 1024;
/// Longest file name accepted in a header, in bytes.
pub const MAX_NAME_BYTES: usize = wire::MAX_NAME_BYTES;
/// How long the sender waits for the receiver's verdict after the trailer, and the receiver
/// waits for the sender to close after the verdict; also the base of the wait for the
/// receiver's `accept` (which grows with the file: the receiver hashes what it holds first).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the receiver waits for the sender to read a refusal and close the channel.
const REFUSAL_LINGER: Duration = Duration::from_secs(5);
/// File read size: large reads, sliced into [`CHUNK_BYTES`] messages without copying.
const READ_BYTES: usize = 1024 * 1024;
/// The slowest hashing assumed when waiting for the other side to hash a prefix (bytes/s).
const SLOWEST_HASH_RATE: u64 = 50_000_000;

/// Progress of one transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferProgress {
    /// The transfer id (the part of the channel label after [`CHANNEL_PREFIX`]).
    pub id: String,
    /// The file name (as sent; the receiver may store it under a safer name).
    pub name: String,
    /// Bytes the receiver has so far (including what it held before a resume).
    pub bytes_done: u64,
    /// Size of the file.
    pub total: u64,
}

/// What [`send_file`] reports once the receiver confirmed the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// The transfer id.
    pub id: String,
    /// The file name sent.
    pub name: String,
    /// Size of the file.
    pub bytes: u64,
    /// Bytes the receiver already held from an earlier attempt and were not sent again (0 for
    /// a transfer that started from the beginning).
    pub resumed_from: u64,
    /// SHA-256 of the content, lowercase hex, as confirmed by the receiver.
    pub sha256: String,
    /// Time from opening the file to the receiver's confirmation.
    pub elapsed: Duration,
    /// The longest time the channel accepted no chunk, between the first chunk and the last
    /// (zero for a file of at most one chunk): how long the transfer stood still at worst.
    /// Chunks wait only once the channel's send buffer is full
    /// ([`SEND_HIGH_WATER`](crate::peer::SEND_HIGH_WATER), 4 MiB), so a file that fits in it
    /// shows no stall.
    pub max_stall: Duration,
}

/// A file [`receive_file`] stored and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedFile {
    /// The transfer id.
    pub id: String,
    /// Where the file is now (inside the target directory).
    pub path: PathBuf,
    /// Size of the file.
    pub bytes: u64,
    /// Bytes already held from an earlier attempt (its part file), not received again; equal
    /// to `bytes` when the file had been stored whole before and was only confirmed.
    pub resumed_from: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
    /// Whether the content matched the sender's hash: always `true` on `Ok`.
    pub verified: bool,
    /// Time from the header to the stored file.
    pub elapsed: Duration,
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// A local file operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The connection or channel failed.
    #[error("peer: {0}")]
    Peer(#[from] PeerError),
    /// The connection ended under the transfer, for this reason ("connectivity lost: no
    /// answer from the other device for 30 s …", "closed by the peer", …).
    #[error("the connection was lost: {0}")]
    ConnectionLost(String),
    /// The other side broke the transfer protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The content does not match the sender's hash.
    #[error("hash mismatch: expected {expected}, got {actual}")]
    HashMismatch {
        /// The hash the sender announced.
        expected: String,
        /// The hash of what arrived.
        actual: String,
    },
    /// The other side stopped the transfer (closed the channel) before it finished.
    #[error("transfer cancelled after {bytes_done} of {total} bytes")]
    Cancelled {
        /// Bytes the receiver had when it stopped.
        bytes_done: u64,
        /// Size of the file.
        total: u64,
    },
    /// The file is bigger than [`MAX_FILE_BYTES`].
    #[error("file of {size} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The file name is unusable (empty path, not a regular file…).
    #[error("bad file name: {0}")]
    BadName(String),
    /// The receiver refused the file.
    #[error("receiver refused the file: {0}")]
    Refused(String),
    /// The other side did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The same file is being received already (another transfer of it did not let go within
    /// 10 s).
    #[error("the same file is being received already")]
    Busy,
}

impl TransferError {
    /// Whether sending the same file again may pick up where this attempt stopped: the
    /// transfer was cut short (connection, channel, timeout, cancelled), not refused or wrong.
    pub fn can_resume(&self) -> bool {
        match self {
            TransferError::Peer(_)
            | TransferError::ConnectionLost(_)
            | TransferError::Cancelled { .. }
            | TransferError::Timeout(_)
            | TransferError::Busy => true,
            TransferError::Refused(reason) => reason == BUSY_REFUSAL,
            _ => false,
        }
    }
}

/// The receiver's refusal when the same file is being received already.
const BUSY_REFUSAL: &str = "the same file is being received already";

/// Whether a channel the remote opened is a file transfer (label `proxim-file/<id>`).
pub fn is_transfer_channel(label: &str) -> bool {
    label
        .strip_prefix(CHANNEL_PREFIX)
        .is_some_and(|id| !id.is_empty())
}

/// Send the file at `path` and return once the receiver verified it.
///
/// Resumable: when a transfer fails part way ([`TransferError::can_resume`]) or this future is
/// dropped (which closes the channel: the receiver keeps what it has), sending the same file
/// again (same content, same modification time) sends only what the receiver is missing, over
/// this connection or a later one. The receiver's bytes are checked against the file by hash
/// first; a file that changed since is sent whole.
///
/// `progress` is called at most every 1 % or 100 ms, and once more at the end.
pub async fn send_file(
    conn: &PeerConnection,
    path: &Path,
    progress: impl FnMut(TransferProgress) + Send,
) -> Result<FileReport, TransferError> {
    explain_closed(conn, send_file_over(conn, path, progress).await).await
}

/// A transfer that failed because its channel closed under it says why when the whole
/// connection ended ([`TransferError::ConnectionLost`]) instead of "data channel closed";
/// any other outcome passes through.
pub async fn explain_closed<T>(
    conn: &PeerConnection,
    outcome: Result<T, TransferError>,
) -> Result<T, TransferError> {
    match outcome {
        Err(
            error @ (TransferError::Peer(PeerError::ChannelClosed | PeerError::Closed)
            | TransferError::Cancelled { .. }),
        ) => {
            // A peer that closes its connection resets the channels first, so the connection
            // may still look up here: wait for it to end (a cancel that leaves it up costs
            // this wait).
            match conn.end_reason_within(END_REASON_WAIT).await {
                Some(reason) => Err(TransferError::ConnectionLost(reason)),
                None => Err(error),
            }
        }
        other => other,
    }
}

/// How long a failed transfer waits for the connection to say why it ended.
const END_REASON_WAIT: Duration = Duration::from_millis(500);

async fn send_file_over(
    conn: &PeerConnection,
    path: &Path,
    mut progress: impl FnMut(TransferProgress) + Send,
) -> Result<FileReport, TransferError> {
    let started = Instant::now();
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .ok_or_else(|| TransferError::BadName(path.display().to_string()))?;
    let mut file = tokio::fs::File::open(path).await?;
    let meta = file.metadata().await?;
    if !meta.is_file() {
        return Err(TransferError::BadName(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let size = meta.len();
    if size > MAX_FILE_BYTES {
        return Err(TransferError::TooLarge {
            size,
            max: MAX_FILE_BYTES,
        });
    }
    let content_id = part::content_id(path).await?;

    let id = hex::encode(rand::random::<[u8; 8]>());
    let mut channel = conn
        .open_channel(&format!("{CHANNEL_PREFIX}{id}"), ChannelOptions::default())
        .await?;
    // Dropped (cancelled) half way: close, so the receiver keeps its part and lets go of it.
    let _close = CloseOnDrop(channel.sender());
    let mut stalls = StallMeter::default();
    let source = Source {
        path,
        file: &mut file,
        name: &name,
        size,
        content_id: &content_id,
    };
    let result = send_over(&mut channel, source, &id, &mut progress, &mut stalls).await;
    channel.close().await;
    let (sha256, resumed_from) = result?;
    let max_stall = stalls.max_stall();
    tracing::info!(transfer = %id, bytes = size, resumed_from, ?max_stall, "file sent and verified by the receiver");
    Ok(FileReport {
        id,
        name,
        bytes: size,
        resumed_from,
        sha256,
        elapsed: started.elapsed(),
        max_stall,
    })
}

/// The file being sent.
struct Source<'a> {
    path: &'a Path,
    file: &'a mut tokio::fs::File,
    name: &'a str,
    size: u64,
    content_id: &'a str,
}

/// The sending half after the channel is open: header, the receiver's offer, chunks, trailer,
/// verdict. Returns the SHA-256 the receiver confirmed and the offset it resumed from.
async fn send_over(
    channel: &mut DataChannel,
    source: Source<'_>,
    id: &str,
    progress: &mut (impl FnMut(TransferProgress) + Send),
    stalls: &mut StallMeter,
) -> Result<(String, u64), TransferError> {
    let Source {
        path,
        file,
        name,
        size,
        content_id,
    } = source;
    tracing::debug!(transfer = %id, size, "channel open, sending header");
    let header = Control::Header {
        version: TRANSFER_VERSION,
        name: name.to_owned(),
        size,
        content_id: Some(content_id.to_owned()),
    };
    channel.send(Payload::Text(header.encode())).await?;

    // The receiver hashes what it holds before it answers.
    let accept_wait = hashing_allowance(size);
    let (offset, prefix) = match recv_control(channel, accept_wait).await? {
        Some(Control::Accept {
            offset,
            prefix_sha256,
        }) => (offset, prefix_sha256),
        Some(Control::Ack {
            ok: false, error, ..
        }) => {
            return Err(TransferError::Refused(
                error.unwrap_or_else(|| "no reason given".to_owned()),
            ));
        }
        Some(other) => {
            return Err(TransferError::Protocol(format!(
                "expected accept, got a {}",
                other.kind()
            )));
        }
        None => {
            return Err(TransferError::Cancelled {
                bytes_done: 0,
                total: size,
            });
        }
    };
    let (start, mut hasher) = match prefix {
        Some(theirs) if offset > 0 && offset <= size => {
            let ours = part::hash_prefix(path, offset).await?;
            if hex::encode(ours.clone().finalize()) == theirs {
                tracing::info!(transfer = %id, offset, size, "resuming: the receiver holds the first bytes already");
                (offset, ours)
            } else {
                tracing::info!(transfer = %id, offset, "the receiver's part differs from this file: sending it whole");
                (0, Sha256::new())
            }
        }
        _ => (0, Sha256::new()),
    };
    channel
        .send(Payload::Text(Control::Start { offset: start }.encode()))
        .await?;
    file.seek(std::io::SeekFrom::Start(start)).await?;

    let mut sent: u64 = start;
    let mut throttle = Throttle::new(size, Instant::now());
    while sent < size {
        let want = usize::try_from(size - sent).map_or(READ_BYTES, |left| left.min(READ_BYTES));
        let block = read_block(file, want).await?;
        if block.is_empty() {
            return Err(TransferError::Protocol(format!(
                "{name} shrank while sending ({sent} of {size} bytes)"
            )));
        }
        hasher.update(&block);
        let mut rest = block;
        while !rest.is_empty() {
            let chunk = rest.split_to(rest.len().min(CHUNK_BYTES));
            let len = chunk.len() as u64;
            channel.send(Payload::Binary(chunk)).await?;
            stalls.progress(Instant::now());
            sent += len;
            if throttle.should_emit(sent, Instant::now()) {
                progress(TransferProgress {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    bytes_done: sent,
                    total: size,
                });
            }
        }
    }
    if start == size && throttle.should_emit(size, Instant::now()) {
        progress(TransferProgress {
            id: id.to_owned(),
            name: name.to_owned(),
            bytes_done: size,
            total: size,
        });
    }
    let sha256 = hex::encode(hasher.finalize());
    channel
        .send(Payload::Text(
            Control::Trailer {
                sha256: sha256.clone(),
            }
            .encode(),
        ))
        .await?;

    match recv_control(channel, ACK_TIMEOUT).await? {
        Some(Control::Ack {
            ok: true,
            sha256: Some(theirs),
            ..
        }) if theirs == sha256 => Ok(()),
        Some(Control::Ack {
            ok: true,
            sha256: theirs,
            ..
        }) => Err(TransferError::HashMismatch {
            expected: sha256.clone(),
            actual: theirs.unwrap_or_default(),
        }),
        Some(Control::Ack {
            ok: false,
            sha256: Some(theirs),
            ..
        }) if theirs != sha256 => Err(TransferError::HashMismatch {
            expected: sha256.clone(),
            actual: theirs,
        }),
        Some(Control::Ack {
            ok: false, error, ..
        }) => Err(TransferError::Refused(
            error.unwrap_or_else(|| "no reason given".to_owned()),
        )),
        Some(other) => Err(TransferError::Protocol(format!(
            "expected an ack, got a {}",
            other.kind()
        ))),
        None => Err(TransferError::Cancelled {
            bytes_done: sent,
            total: size,
        }),
    }
    .map(|()| (sha256, start))
}

/// Receive one file from a transfer channel the remote opened into `dir`.
///
/// Returns once the file is stored under a safe, unused name inside `dir` and its SHA-256
/// matched the sender's. A transfer cut short keeps its part file (hidden, in `dir`) for the
/// sender's next attempt, for [`PART_MAX_AGE`]; a wrong or refused one deletes it. Dropping
/// this future closes the channel and keeps the part file.
pub async fn receive_file(
    mut channel: DataChannel,
    dir: &Path,
    mut progress: impl FnMut(TransferProgress) + Send,
) -> Result<ReceivedFile, TransferError> {
    let _close = CloseOnDrop(channel.sender());
    let mut refused = false;
    let result = receive_over(&mut channel, dir, &mut progress, &mut refused).await;
    if refused {
        // Give the refusal time to reach the sender: it closes the channel once it read it
        // (closing right after sending can drop the last message in flight).
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            while channel.recv().await.is_some() {}
        })
        .await;
    }
    // After a failure, closing tells the sender; after success this is a no-op.
    channel.close().await;
    result
}

/// What the sender's header says.
struct Header {
    name: String,
    size: u64,
    /// Version 2's content id; `None` for version 1.
    content_id: Option<String>,
}

/// Where the receiver writes: the part file, from `offset`, with the hash of what is before.
struct Sink {
    part: PartFile,
    file: tokio::fs::File,
    offset: u64,
    hasher: Sha256,
}

/// The receiving half; the caller closes the channel.
async fn receive_over(
    channel: &mut DataChannel,
    dir: &Path,
    progress: &mut (impl FnMut(TransferProgress) + Send),
    refused: &mut bool,
) -> Result<ReceivedFile, TransferError> {
    let started = Instant::now();
    let label = channel.label().to_owned();
    let id = label
        .strip_prefix(CHANNEL_PREFIX)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| TransferError::Protocol(format!("not a transfer channel: {label:?}")))?
        .to_owned();
    let Header {
        name,
        size,
        content_id,
    } = read_header(channel, refused).await?;
    if size > MAX_FILE_BYTES {
        *refused = refuse(channel, "file too large").await;
        return Err(TransferError::TooLarge {
            size,
            max: MAX_FILE_BYTES,
        });
    }
    let safe_name = sanitize_file_name(&name);
    let safe_id: String = id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect();
    tracing::info!(transfer = %safe_id, size, resumable = content_id.is_some(), "receiving a file");
    let pruned = part::prune(dir).await;
    if pruned > 0 {
        tracing::info!(pruned, "deleted part files nobody resumed");
    }

    let sink = match &content_id {
        None => {
            let path = dir.join(format!(".{safe_name}.{safe_id}.part"));
            let (part, file) = PartFile::create(path).await?;
            Sink {
                part,
                file,
                offset: 0,
                hasher: Sha256::new(),
            }
        }
        Some(content_id) => {
            if let Some(done) = DoneRecord::load(dir, &safe_name, content_id, size).await {
                match confirm_stored(channel, dir, &done, refused).await? {
                    Some(path) => {
                        tracing::info!(transfer = %safe_id, bytes = size, "file was stored whole before: confirmed");
                        return Ok(ReceivedFile {
                            id: safe_id,
                            path,
                            bytes: size,
                            resumed_from: size,
                            sha256: done.sha256,
                            verified: true,
                            elapsed: started.elapsed(),
                        });
                    }
                    None => {
                        // The sender's file is another one: receive it afresh.
                        DoneRecord::remove(dir, &safe_name, content_id).await;
                        let held =
                            hold_part(channel, dir, &safe_name, content_id, size, refused).await?;
                        start_over(held).await?
                    }
                }
            } else {
                let held = hold_part(channel, dir, &safe_name, content_id, size, refused).await?;
                negotiate(channel, held, size).await?
            }
        }
    };
    let resumed_from = sink.offset;
    if resumed_from > 0 {
        tracing::info!(transfer = %safe_id, resumed_from, size, "resuming from the part file");
    }
    let Sink {
        mut part,
        file,
        offset,
        mut hasher,
    } = sink;
    let mut writer = tokio::io::BufWriter::with_capacity(READ_BYTES, file);
    let mut received = offset;
    let mut throttle = Throttle::new(size, Instant::now());
    let report = |bytes_done: u64| TransferProgress {
        id: safe_id.clone(),
        name: name.clone(),
        bytes_done,
        total: size,
    };
    let data = receive_data(
        channel,
        &mut writer,
        &mut hasher,
        &mut received,
        size,
        refused,
        &mut |bytes| {
            if throttle.should_emit(bytes, Instant::now()) {
                progress(report(bytes));
            }
        },
    )
    .await;
    // Whatever arrived is kept for a resume: flush it before anything else.
    let flushed = writer.flush().await;
    let checked = match (data, flushed) {
        (Err(error), _) => Err(error),
        (Ok(_), Err(error)) => Err(error.into()),
        (Ok(expected), Ok(())) => verify(channel, hasher, expected, received, size, refused).await,
    };
    let actual = match checked {
        Ok(actual) => actual,
        Err(error) => {
            if keeps_part(&error, received) {
                tracing::info!(transfer = %safe_id, held = received, size, "transfer cut short; the part file is kept for a resume");
            } else {
                part.discard();
            }
            return Err(error);
        }
    };
    let file = writer.into_inner();
    file.sync_all().await?;
    drop(file);
    let path = part.persist(dir, &safe_name).await?;
    if let Some(content_id) = &content_id {
        let record = DoneRecord {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            size,
            sha256: actual.clone(),
        };
        record.save(dir, &safe_name, content_id).await;
    }
    if size == 0 && throttle.should_emit(0, Instant::now()) {
        progress(report(0));
    }

    let ack = Control::Ack {
        ok: true,
        sha256: Some(actual.clone()),
        error: None,
    };
    channel.send(Payload::Text(ack.encode())).await?;
    wait_for_close(channel).await;
    tracing::info!(transfer = %safe_id, bytes = size, resumed_from, "file received and verified");
    Ok(ReceivedFile {
        id: safe_id,
        path,
        bytes: size,
        resumed_from,
        sha256: actual,
        verified: true,
        elapsed: started.elapsed(),
    })
}

/// The first message: a header this side can receive, or a refusal.
async fn read_header(
    channel: &mut DataChannel,
    refused: &mut bool,
) -> Result<Header, TransferError> {
    match channel.recv().await {
        Some(Payload::Text(text)) => match Control::decode(&text)? {
            Control::Header {
                version: 1,
                name,
                size,
                ..
            } => Ok(Header {
                name,
                size,
                content_id: None,
            }),
            Control::Header {
                version: 2,
                name,
                size,
                content_id: Some(content_id),
            } => Ok(Header {
                name,
                size,
                content_id: Some(content_id),
            }),
            Control::Header { version, .. } => {
                let error = if version == 2 {
                    "transfer version 2 without a content id".to_owned()
                } else {
                    format!("unsupported transfer version {version}")
                };
                *refused = refuse(channel, &error).await;
                Err(TransferError::Protocol(error))
            }
            other => Err(TransferError::Protocol(format!(
                "expected a header, got a {}",
                other.kind()
            ))),
        },
        Some(_) => Err(TransferError::Protocol(
            "expected a header, got binary data".to_owned(),
        )),
        None => Err(TransferError::Cancelled {
            bytes_done: 0,
            total: 0,
        }),
    }
}

/// Open and lock the part file of `content_id`; a busy one is refused.
async fn hold_part(
    channel: &DataChannel,
    dir: &Path,
    safe_name: &str,
    content_id: &str,
    size: u64,
    refused: &mut bool,
) -> Result<part::HeldPart, TransferError> {
    match PartFile::open_resumable(part::part_path(dir, safe_name, content_id), size).await {
        Err(TransferError::Busy) => {
            *refused = refuse(channel, BUSY_REFUSAL).await;
            Err(TransferError::Busy)
        }
        other => other,
    }
}

/// Offer what the part file holds and take the sender's answer: from there, or from 0.
async fn negotiate(
    channel: &mut DataChannel,
    mut held: part::HeldPart,
    size: u64,
) -> Result<Sink, TransferError> {
    let prefix_sha256 = (held.len > 0).then(|| hex::encode(held.hasher.clone().finalize()));
    let accept = Control::Accept {
        offset: held.len,
        prefix_sha256,
    };
    let answer = match channel.send(Payload::Text(accept.encode())).await {
        Ok(()) => recv_start(channel, size).await,
        Err(error) => Err(error.into()),
    };
    let start = match answer {
        Ok(start) if start == held.len || start == 0 => start,
        Ok(start) => {
            let error = TransferError::Protocol(format!(
                "start at {start}, neither 0 nor the {} bytes offered",
                held.len
            ));
            return Err(give_up(&mut held, error));
        }
        Err(error) => return Err(give_up(&mut held, error)),
    };
    if start == held.len {
        Ok(Sink {
            part: held.part,
            file: held.file,
            offset: held.len,
            hasher: held.hasher,
        })
    } else {
        tracing::info!(
            held = held.len,
            "the sender's file differs from the part file: starting over"
        );
        start_over(held).await
    }
}

/// The transfer ends before any data: the part file stays only when it holds something worth
/// resuming.
fn give_up(held: &mut part::HeldPart, error: TransferError) -> TransferError {
    if !keeps_part(&error, held.len) {
        held.part.discard();
    }
    error
}

/// Whether a transfer that ended with `error`, its part file holding `held` bytes, keeps the
/// part file for a resume: it holds something and the transfer was cut short (or a local
/// write failed, a full disk), not wrong.
fn keeps_part(error: &TransferError, held: u64) -> bool {
    held > 0 && (error.can_resume() || matches!(error, TransferError::Io(_)))
}

/// All data and the trailer arrived: check the size and the hash against the sender's,
/// telling the sender when either is wrong. The hash on success.
async fn verify(
    channel: &DataChannel,
    hasher: Sha256,
    expected: String,
    received: u64,
    size: u64,
    refused: &mut bool,
) -> Result<String, TransferError> {
    if received != size {
        *refused = refuse(channel, "size does not match the header").await;
        return Err(TransferError::Protocol(format!(
            "received {received} bytes, header announced {size}"
        )));
    }
    let actual = hex::encode(hasher.finalize());
    if actual != expected {
        let nack = Control::Ack {
            ok: false,
            sha256: Some(actual.clone()),
            error: Some("hash mismatch".to_owned()),
        };
        *refused = channel.send(Payload::Text(nack.encode())).await.is_ok();
        return Err(TransferError::HashMismatch { expected, actual });
    }
    Ok(actual)
}

/// Empty the part file and write from its start.
async fn start_over(mut held: part::HeldPart) -> Result<Sink, TransferError> {
    held.file.set_len(0).await?;
    held.file.seek(std::io::SeekFrom::Start(0)).await?;
    Ok(Sink {
        part: held.part,
        file: held.file,
        offset: 0,
        hasher: Sha256::new(),
    })
}

/// The file was stored whole before: offer it all. `Some(path)` when the sender confirmed
/// it is the same file (and its trailer carries the same hash), `None` when the sender
/// starts over (its file is another one).
async fn confirm_stored(
    channel: &mut DataChannel,
    dir: &Path,
    done: &DoneRecord,
    refused: &mut bool,
) -> Result<Option<PathBuf>, TransferError> {
    let accept = Control::Accept {
        offset: done.size,
        prefix_sha256: Some(done.sha256.clone()),
    };
    channel.send(Payload::Text(accept.encode())).await?;
    match recv_start(channel, done.size).await? {
        0 if done.size > 0 => return Ok(None),
        start if start == done.size => {}
        start => {
            return Err(TransferError::Protocol(format!(
                "start at {start}, neither 0 nor the {} bytes offered",
                done.size
            )));
        }
    }
    match recv_control(channel, ACK_TIMEOUT).await? {
        Some(Control::Trailer { sha256 }) if sha256 == done.sha256 => {}
        Some(Control::Trailer { sha256 }) => {
            *refused = refuse(channel, "hash mismatch").await;
            return Err(TransferError::HashMismatch {
                expected: sha256,
                actual: done.sha256.clone(),
            });
        }
        Some(other) => {
            return Err(TransferError::Protocol(format!(
                "expected a trailer, got a {}",
                other.kind()
            )));
        }
        None => {
            return Err(TransferError::Cancelled {
                bytes_done: done.size,
                total: done.size,
            });
        }
    }
    let ack = Control::Ack {
        ok: true,
        sha256: Some(done.sha256.clone()),
        error: None,
    };
    channel.send(Payload::Text(ack.encode())).await?;
    wait_for_close(channel).await;
    Ok(Some(dir.join(&done.name)))
}

/// The sender's `start`, within the time it may take to hash `size` bytes.
async fn recv_start(channel: &mut DataChannel, size: u64) -> Result<u64, TransferError> {
    match recv_control(channel, hashing_allowance(size)).await? {
        Some(Control::Start { offset }) => Ok(offset),
        Some(other) => Err(TransferError::Protocol(format!(
            "expected start, got a {}",
            other.kind()
        ))),
        None => Err(TransferError::Cancelled {
            bytes_done: 0,
            total: size,
        }),
    }
}

/// Data until the trailer: writes and hashes each chunk, counts into `received`. Returns the
/// hash the trailer announced.
async fn receive_data(
    channel: &mut DataChannel,
    writer: &mut tokio::io::BufWriter<tokio::fs::File>,
    hasher: &mut Sha256,
    received: &mut u64,
    size: u64,
    refused: &mut bool,
    progress: &mut (impl FnMut(u64) + Send),
) -> Result<String, TransferError> {
    loop {
        match channel.recv().await {
            Some(Payload::Binary(chunk)) => {
                let len = chunk.len() as u64;
                if *received + len > size {
                    *refused = refuse(channel, "more data than announced").await;
                    return Err(TransferError::Protocol(format!(
                        "more than the announced {size} bytes"
                    )));
                }
                writer.write_all(&chunk).await?;
                hasher.update(&chunk);
                *received += len;
                progress(*received);
            }
            Some(Payload::Text(text)) => match Control::decode(&text)? {
                Control::Trailer { sha256 } => return Ok(sha256),
                other => {
                    return Err(TransferError::Protocol(format!(
                        "expected data or a trailer, got a {}",
                        other.kind()
                    )));
                }
            },
            None => {
                return Err(TransferError::Cancelled {
                    bytes_done: *received,
                    total: size,
                });
            }
        }
    }
}

/// The next control message within `wait`; `None` when the channel closed.
async fn recv_control(
    channel: &mut DataChannel,
    wait: Duration,
) -> Result<Option<Control>, TransferError> {
    match tokio::time::timeout(wait, channel.recv())
        .await
        .map_err(|_| TransferError::Timeout(wait))?
    {
        Some(Payload::Text(text)) => Control::decode(&text).map(Some),
        Some(Payload::Binary(_)) => Err(TransferError::Protocol(
            "expected a control message, got binary data".to_owned(),
        )),
        None => Ok(None),
    }
}

/// The sender closes the channel once it has the ack; waiting for that makes sure the ack
/// left before this side drops the channel. A sender that never closes costs ACK_TIMEOUT at
/// most.
async fn wait_for_close(channel: &mut DataChannel) {
    let _ = tokio::time::timeout(ACK_TIMEOUT, async {
        while channel.recv().await.is_some() {}
    })
    .await;
}

/// How long the other side may take to hash up to `size` bytes and answer.
fn hashing_allowance(size: u64) -> Duration {
    ACK_TIMEOUT + Duration::from_secs(size / SLOWEST_HASH_RATE)
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Closes a transfer's channel when dropped: a transfer future dropped half way tells the
/// other side at once instead of leaving it waiting.
struct CloseOnDrop(ChannelSender);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Decides when to report progress: every ≥1 % or ≥100 ms, and always at the end (once).
#[derive(Debug)]
struct Throttle {
    total: u64,
    last_bytes: u64,
    last_time: Instant,
    finished: bool,
}

impl Throttle {
    const INTERVAL: Duration = Duration::from_millis(100);

    fn new(total: u64, now: Instant) -> Self {
        Throttle {
            total,
            last_bytes: 0,
            last_time: now,
            finished: false,
        }
    }

    fn should_emit(&mut self, bytes_done: u64, now: Instant) -> bool {
        if self.finished {
            return false;
        }
        let emit = bytes_done >= self.total
            || bytes_done.saturating_sub(self.last_bytes) >= self.total / 100
            || now.saturating_duration_since(self.last_time) >= Self::INTERVAL;
        if emit {
            self.last_bytes = bytes_done;
            self.last_time = now;
            self.finished = bytes_done >= self.total;
        }
        emit
    }
}

/// The longest gap between two chunks the channel accepted.
#[derive(Debug, Default)]
struct StallMeter {
    last: Option<Instant>,
    longest: Duration,
}

impl StallMeter {
    /// A chunk was accepted at `now`.
    fn progress(&mut self, now: Instant) {
        if let Some(last) = self.last {
            self.longest = self.longest.max(now.saturating_duration_since(last));
        }
        self.last = Some(now);
    }

    fn max_stall(&self) -> Duration {
        self.longest
    }
}

/// Read up to `want` bytes (less only at end of file).
async fn read_block(file: &mut tokio::fs::File, want: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(want);
    let mut filled = 0;
    while filled < want {
        let n = file.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf.freeze())
}

/// Tell the sender why the file is refused (best effort); whether the refusal was sent.
async fn refuse(channel: &DataChannel, error: &str) -> bool {
    let nack = Control::Ack {
        ok: false,
        sha256: None,
        error: Some(error.to_owned()),
    };
    channel.send(Payload::Text(nack.encode())).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_labels() {
        assert!(is_transfer_channel("proxim-file/abc123"));
        assert!(!is_transfer_channel("proxim-file/"));
        assert!(!is_transfer_channel("proxim"));
        assert!(!is_transfer_channel("chat"));
    }

    #[test]
    fn progress_throttle() {
        let t0 = Instant::now();
        let mut throttle = Throttle::new(1000, t0);
        assert!(!throttle.should_emit(5, t0));
        assert!(throttle.should_emit(10, t0)); // 1 %
        assert!(!throttle.should_emit(15, t0 + Duration::from_millis(50)));
        assert!(throttle.should_emit(16, t0 + Duration::from_millis(100))); // 100 ms
        assert!(throttle.should_emit(1000, t0 + Duration::from_millis(101))); // the end
        assert!(!throttle.should_emit(1000, t0 + Duration::from_secs(1))); // only once

        let mut empty = Throttle::new(0, t0);
        assert!(empty.should_emit(0, t0));
        assert!(!empty.should_emit(0, t0));
    }

    #[test]
    fn stall_meter_keeps_the_longest_gap_after_the_first_chunk() {
        let t0 = Instant::now();
        let mut meter = StallMeter::default();
        assert_eq!(meter.max_stall(), Duration::ZERO);
        // The wait before the first chunk (channel setup) is not a stall.
        meter.progress(t0 + Duration::from_secs(5));
        assert_eq!(meter.max_stall(), Duration::ZERO);
        for (at_ms, longest_ms) in [(5010, 10), (5015, 10), (6215, 1200), (6300, 1200)] {
            meter.progress(t0 + Duration::from_millis(at_ms));
            assert_eq!(
                meter.max_stall(),
                Duration::from_millis(longest_ms),
                "{at_ms}"
            );
        }
    }
}
