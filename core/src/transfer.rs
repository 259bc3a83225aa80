//! File transfer over a data channel, end-to-end verified with SHA-256.
//!
//! Built only on the public API of [`crate::peer`].
//!
//! # Protocol (version 1)
//! The sender opens a reliable, ordered channel labelled `proxim-file/<id>` and sends:
//! 1. a text header `{"type":"header","version":1,"name":"…","size":N}`;
//! 2. the file as binary messages of [`CHUNK_BYTES`];
//! 3. a text trailer `{"type":"trailer","sha256":"<64 hex>"}`.
//!
//! The receiver writes to a hidden part file in the target directory, hashing as it writes,
//! checks the size and the hash, moves the file into place (never overwriting: it adds a
//! ` (n)` suffix) and answers `{"type":"ack","ok":true,"sha256":"…"}`. The sender returns only
//! after that acknowledgement, then closes the channel. Any failure on the receiver deletes
//! the part file; a hash mismatch is answered with `"ok":false`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::peer::{ChannelOptions, DataChannel, Payload, PeerConnection, PeerError};

/// Label prefix of file-transfer channels: `proxim-file/<id>`.
pub const CHANNEL_PREFIX: &str = "proxim-file/";
/// Version of the transfer protocol this code speaks.
pub const TRANSFER_VERSION: u32 = 1;
/// Size of one binary chunk on the channel.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Largest file accepted (either side refuses anything bigger).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024 * 1024;
/// Longest file name accepted in a header, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;
/// How long the sender waits for the receiver's verdict after the trailer, and the receiver
/// waits for the sender to close after the verdict.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the receiver waits for the sender to read a refusal and close the channel.
const REFUSAL_LINGER: Duration = Duration::from_secs(5);
/// Longest control message (header, trailer, ack) accepted, in bytes.
const MAX_CONTROL_BYTES: usize = 4096;
/// File read size: large reads, sliced into [`CHUNK_BYTES`] messages without copying.
const READ_BYTES: usize = 1024 * 1024;
/// Longest name the receiver writes, in bytes (file systems allow 255; the part-file prefix
/// and suffix need room).
const MAX_SAFE_NAME_BYTES: usize = 200;
/// How many ` (n)` suffixes to try before giving up.
const MAX_SUFFIX: u32 = 10_000;

/// Progress of one transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferProgress {
    /// The transfer id (the part of the channel label after [`CHANNEL_PREFIX`]).
    pub id: String,
    /// The file name (as sent; the receiver may store it under a safer name).
    pub name: String,
    /// Bytes sent or received so far.
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
    /// Bytes sent.
    pub bytes: u64,
    /// SHA-256 of the content, lowercase hex, as confirmed by the receiver.
    pub sha256: String,
    /// Time from opening the file to the receiver's confirmation.
    pub elapsed: Duration,
    /// The longest time the channel accepted no chunk, between the first chunk and the last
    /// (zero for a file of at most one chunk): how long the transfer stood still at worst.
    /// Chunks wait only once the channel's send buffer is full
    /// ([`SEND_HIGH_WATER`](crate::peer::SEND_HIGH_WATER), 1 MiB), so a file that fits in it
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
    /// Bytes received.
    pub bytes: u64,
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
        /// Bytes moved before it stopped.
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
}

/// Whether a channel the remote opened is a file transfer (label `proxim-file/<id>`).
pub fn is_transfer_channel(label: &str) -> bool {
    label
        .strip_prefix(CHANNEL_PREFIX)
        .is_some_and(|id| !id.is_empty())
}

/// Send the file at `path` and return once the receiver verified it.
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

    let id = hex::encode(rand::random::<[u8; 8]>());
    let mut channel = conn
        .open_channel(&format!("{CHANNEL_PREFIX}{id}"), ChannelOptions::default())
        .await?;
    let mut stalls = StallMeter::default();
    let result = send_over(
        &mut channel,
        &mut file,
        &id,
        &name,
        size,
        &mut progress,
        &mut stalls,
    )
    .await;
    channel.close().await;
    let sha256 = result?;
    let max_stall = stalls.max_stall();
    tracing::info!(transfer = %id, bytes = size, ?max_stall, "file sent and verified by the receiver");
    Ok(FileReport {
        id,
        name,
        bytes: size,
        sha256,
        elapsed: started.elapsed(),
        max_stall,
    })
}

/// The sending half after the channel is open: header, chunks, trailer, verdict. Returns the
/// SHA-256 the receiver confirmed.
async fn send_over(
    channel: &mut DataChannel,
    file: &mut tokio::fs::File,
    id: &str,
    name: &str,
    size: u64,
    progress: &mut (impl FnMut(TransferProgress) + Send),
    stalls: &mut StallMeter,
) -> Result<String, TransferError> {
    tracing::debug!(transfer = %id, size, "channel open, sending header");
    let header = Control::Header {
        version: TRANSFER_VERSION,
        name: name.to_owned(),
        size,
    };
    channel.send(Payload::Text(header.encode())).await?;

    let mut hasher = Sha256::new();
    let mut sent: u64 = 0;
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
    if size == 0 && throttle.should_emit(0, Instant::now()) {
        progress(TransferProgress {
            id: id.to_owned(),
            name: name.to_owned(),
            bytes_done: 0,
            total: 0,
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

    let verdict = tokio::time::timeout(ACK_TIMEOUT, channel.recv())
        .await
        .map_err(|_| TransferError::Timeout(ACK_TIMEOUT))?;
    match verdict {
        Some(Payload::Text(text)) => match Control::decode(&text)? {
            Control::Ack {
                ok: true,
                sha256: Some(theirs),
                ..
            } if theirs == sha256 => Ok(()),
            Control::Ack {
                ok: true,
                sha256: theirs,
                ..
            } => Err(TransferError::HashMismatch {
                expected: sha256.clone(),
                actual: theirs.unwrap_or_default(),
            }),
            Control::Ack {
                ok: false,
                sha256: Some(theirs),
                ..
            } if theirs != sha256 => Err(TransferError::HashMismatch {
                expected: sha256.clone(),
                actual: theirs,
            }),
            Control::Ack {
                ok: false, error, ..
            } => Err(TransferError::Refused(
                error.unwrap_or_else(|| "no reason given".to_owned()),
            )),
            other => Err(TransferError::Protocol(format!(
                "expected an ack, got a {}",
                other.kind()
            ))),
        },
        Some(Payload::Binary(_)) => Err(TransferError::Protocol(
            "expected an ack, got binary data".to_owned(),
        )),
        None => Err(TransferError::Cancelled {
            bytes_done: sent,
            total: size,
        }),
    }
    .map(|()| sha256)
}

/// Receive one file from a transfer channel the remote opened into `dir`.
///
/// Returns once the file is stored under a safe, unused name inside `dir` and its SHA-256
/// matched the sender's. On any failure the partial file is deleted.
pub async fn receive_file(
    mut channel: DataChannel,
    dir: &Path,
    mut progress: impl FnMut(TransferProgress) + Send,
) -> Result<ReceivedFile, TransferError> {
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
    let (name, size) = match channel.recv().await {
        Some(Payload::Text(text)) => match Control::decode(&text)? {
            Control::Header {
                version: TRANSFER_VERSION,
                name,
                size,
            } => (name, size),
            Control::Header { version, .. } => {
                let error = format!("unsupported transfer version {version}");
                *refused = refuse(channel, &error).await;
                return Err(TransferError::Protocol(error));
            }
            other => {
                return Err(TransferError::Protocol(format!(
                    "expected a header, got a {}",
                    other.kind()
                )));
            }
        },
        Some(_) => {
            return Err(TransferError::Protocol(
                "expected a header, got binary data".to_owned(),
            ));
        }
        None => {
            return Err(TransferError::Cancelled {
                bytes_done: 0,
                total: 0,
            });
        }
    };
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
    tracing::info!(transfer = %safe_id, size, "receiving a file");

    let (part, file) = PartFile::create(dir.join(format!(".{safe_name}.{safe_id}.part"))).await?;
    let mut writer = tokio::io::BufWriter::with_capacity(READ_BYTES, file);
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut throttle = Throttle::new(size, Instant::now());
    let report = |bytes_done: u64| TransferProgress {
        id: safe_id.clone(),
        name: name.clone(),
        bytes_done,
        total: size,
    };
    let expected = loop {
        match channel.recv().await {
            Some(Payload::Binary(chunk)) => {
                received += chunk.len() as u64;
                if received > size {
                    *refused = refuse(channel, "more data than announced").await;
                    return Err(TransferError::Protocol(format!(
                        "more than the announced {size} bytes"
                    )));
                }
                hasher.update(&chunk);
                writer.write_all(&chunk).await?;
                if throttle.should_emit(received, Instant::now()) {
                    progress(report(received));
                }
            }
            Some(Payload::Text(text)) => match Control::decode(&text)? {
                Control::Trailer { sha256 } => break sha256,
                other => {
                    return Err(TransferError::Protocol(format!(
                        "expected data or a trailer, got a {}",
                        other.kind()
                    )));
                }
            },
            None => {
                return Err(TransferError::Cancelled {
                    bytes_done: received,
                    total: size,
                });
            }
        }
    };
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
    writer.flush().await?;
    let file = writer.into_inner();
    file.sync_all().await?;
    drop(file);
    let path = part.persist(dir, &safe_name).await?;
    if size == 0 && throttle.should_emit(0, Instant::now()) {
        progress(report(0));
    }

    let ack = Control::Ack {
        ok: true,
        sha256: Some(actual.clone()),
        error: None,
    };
    channel.send(Payload::Text(ack.encode())).await?;
    // The sender closes the channel once it has the ack; waiting for that makes sure the ack
    // left before this side drops the channel. A sender that never closes costs ACK_TIMEOUT
    // at most, and the file is stored either way.
    let _ = tokio::time::timeout(ACK_TIMEOUT, async {
        while channel.recv().await.is_some() {}
    })
    .await;
    tracing::info!(transfer = %safe_id, bytes = size, "file received and verified");
    Ok(ReceivedFile {
        id: safe_id,
        path,
        bytes: size,
        sha256: actual,
        verified: true,
        elapsed: started.elapsed(),
    })
}

/// A name for `name` that is safe to create inside any directory: no path separators, no
/// `..`, no leading dots, no control or reserved characters, at most 200 bytes; `"file"` if
/// nothing usable is left.
pub fn sanitize_file_name(name: &str) -> String {
    // Keep only the last path component, whichever separator the sender's OS uses.
    let last = name
        .split(['/', '\\'])
        .rev()
        .find(|part| !part.trim().is_empty() && *part != "." && *part != "..")
        .unwrap_or("");
    let mut safe: String = last
        .chars()
        .map(|c| match c {
            c if c.is_control() => '_',
            ':' | '*' | '?' | '"' | '<' | '>' | '|' => '_',
            c => c,
        })
        .collect();
    // No hidden files, no names ending in dots or spaces (Windows strips them).
    safe = safe
        .trim_start_matches(|c: char| c == '.' || c.is_whitespace())
        .trim_end_matches(|c: char| c == '.' || c.is_whitespace())
        .to_owned();
    if is_windows_device_name(&safe) {
        safe.insert(0, '_');
    }
    if safe.len() > MAX_SAFE_NAME_BYTES {
        safe = truncate_keeping_extension(&safe, MAX_SAFE_NAME_BYTES);
    }
    if safe.is_empty() {
        "file".to_owned()
    } else {
        safe
    }
}

// ---------------------------------------------------------------------------------------------
// Wire messages

/// The text messages of the transfer protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Control {
    /// First message from the sender.
    Header {
        version: u32,
        name: String,
        size: u64,
    },
    /// Last message from the sender.
    Trailer { sha256: String },
    /// The receiver's verdict.
    Ack {
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl Control {
    fn encode(&self) -> String {
        // Serializing these plain structs to a string cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parse and check a control message from the other side.
    fn decode(text: &str) -> Result<Self, TransferError> {
        if text.len() > MAX_CONTROL_BYTES {
            return Err(TransferError::Protocol(format!(
                "control message of {} bytes exceeds {MAX_CONTROL_BYTES}",
                text.len()
            )));
        }
        let message: Control = serde_json::from_str(text)
            .map_err(|e| TransferError::Protocol(format!("bad control message: {e}")))?;
        match &message {
            Control::Header { name, .. } if name.is_empty() || name.len() > MAX_NAME_BYTES => {
                Err(TransferError::BadName(format!(
                    "name of {} bytes (1..={MAX_NAME_BYTES} allowed)",
                    name.len()
                )))
            }
            Control::Trailer { sha256 } if !is_sha256_hex(sha256) => Err(TransferError::Protocol(
                "trailer hash is not 64 lowercase hex digits".to_owned(),
            )),
            Control::Ack {
                sha256: Some(sha256),
                ..
            } if !is_sha256_hex(sha256) => Err(TransferError::Protocol(
                "ack hash is not 64 lowercase hex digits".to_owned(),
            )),
            _ => Ok(message),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Control::Header { .. } => "header",
            Control::Trailer { .. } => "trailer",
            Control::Ack { .. } => "ack",
        }
    }
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

// ---------------------------------------------------------------------------------------------
// Helpers

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

/// The receiver's part file: deleted on drop (error, cancellation) unless persisted.
#[derive(Debug)]
struct PartFile {
    path: PathBuf,
    keep: bool,
}

impl PartFile {
    /// Create the part file; fails if it exists.
    async fn create(path: PathBuf) -> Result<(Self, tokio::fs::File), TransferError> {
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok((PartFile { path, keep: false }, file))
    }

    /// Move into `dir` under `name`, or `name (n)` if taken; never overwrites.
    async fn persist(mut self, dir: &Path, name: &str) -> Result<PathBuf, TransferError> {
        for n in 0..MAX_SUFFIX {
            let candidate = dir.join(numbered_name(name, n));
            // A hard link fails if the target exists: an atomic "rename without overwrite".
            match tokio::fs::hard_link(&self.path, &candidate).await {
                Ok(()) => {
                    let _ = tokio::fs::remove_file(&self.path).await;
                    self.keep = true;
                    return Ok(candidate);
                }
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(_) => {
                    // No hard links on this file system: check, then rename.
                    if tokio::fs::try_exists(&candidate).await? {
                        continue;
                    }
                    tokio::fs::rename(&self.path, &candidate).await?;
                    self.keep = true;
                    return Ok(candidate);
                }
            }
        }
        Err(TransferError::BadName(format!(
            "no free name for {name} after {MAX_SUFFIX} tries"
        )))
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
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

/// `name` for `n == 0`, else `stem (n).ext`.
fn numbered_name(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_owned();
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem} ({n}).{ext}"),
        _ => format!("{name} ({n})"),
    }
}

fn is_windows_device_name(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or("").to_ascii_uppercase();
    matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit())
}

/// Cut `name` to at most `max` bytes on a char boundary, keeping a short extension.
fn truncate_keeping_extension(name: &str, max: usize) -> String {
    let ext = name
        .rsplit_once('.')
        .map(|(_, ext)| ext)
        .filter(|ext| ext.len() <= 16);
    let budget = max - ext.map_or(0, |ext| ext.len() + 1);
    let mut cut = budget.min(name.len());
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let stem = &name[..cut];
    match ext {
        Some(ext) => format!("{stem}.{ext}"),
        None => stem.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn control_messages_round_trip() {
        let messages = [
            Control::Header {
                version: 1,
                name: "photo.jpg".to_owned(),
                size: 12345,
            },
            Control::Trailer {
                sha256: HASH.to_owned(),
            },
            Control::Ack {
                ok: true,
                sha256: Some(HASH.to_owned()),
                error: None,
            },
            Control::Ack {
                ok: false,
                sha256: None,
                error: Some("nope".to_owned()),
            },
        ];
        for message in messages {
            assert_eq!(Control::decode(&message.encode()).unwrap(), message);
        }
        assert_eq!(
            Control::decode(r#"{"type":"header","version":1,"name":"a","size":0}"#).unwrap(),
            Control::Header {
                version: 1,
                name: "a".to_owned(),
                size: 0
            }
        );
    }

    #[test]
    fn malformed_control_messages_are_typed_errors() {
        let long_name = format!(
            r#"{{"type":"header","version":1,"name":"{}","size":1}}"#,
            "a".repeat(MAX_NAME_BYTES + 1)
        );
        let huge = format!(r#"{{"type":"trailer","sha256":"{}"}}"#, "0".repeat(5000));
        let protocol_errors = [
            "",
            "not json",
            "{}",
            "[]",
            "null",
            r#"{"type":"header"}"#,
            r#"{"type":"header","version":1,"name":"a"}"#,
            r#"{"type":"header","version":1,"name":"a","size":-1}"#,
            r#"{"type":"header","version":1,"name":"a","size":"12"}"#,
            r#"{"type":"header","version":1,"name":"a","size":18446744073709551616}"#,
            r#"{"type":"header","version":-1,"name":"a","size":1}"#,
            r#"{"type":"header","version":1,"name":7,"size":1}"#,
            r#"{"type":"trailer"}"#,
            r#"{"type":"trailer","sha256":"abc"}"#,
            r#"{"type":"trailer","sha256":"E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"}"#,
            r#"{"type":"trailer","sha256":"zzb0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}"#,
            r#"{"type":"ack","sha256":"abc"}"#,
            r#"{"type":"ack","ok":true,"sha256":"abc"}"#,
            r#"{"type":"bogus","ok":true}"#,
            r#"{"type":"header","version":1,"name":"a","size":1"#,
            &huge,
        ];
        for text in protocol_errors {
            match Control::decode(text) {
                Err(TransferError::Protocol(_)) => {}
                other => panic!("{text:?} gave {other:?}"),
            }
        }
        for text in [
            r#"{"type":"header","version":1,"name":"","size":1}"#,
            long_name.as_str(),
        ] {
            assert!(
                matches!(Control::decode(text), Err(TransferError::BadName(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn sanitizer_keeps_names_inside_the_directory() {
        let cases = [
            ("photo.jpg", "photo.jpg"),
            ("../../etc/passwd", "passwd"),
            ("..\\..\\Windows\\system.ini", "system.ini"),
            ("/absolute/path/x.txt", "x.txt"),
            ("dir/", "dir"),
            ("..", "file"),
            ("../..", "file"),
            (".", "file"),
            ("", "file"),
            ("   ", "file"),
            (".bashrc", "bashrc"),
            ("...hidden...", "hidden"),
            ("a\0b\nc", "a_b_c"),
            ("what?:*|<>\".txt", "what_______.txt"),
            ("CON", "_CON"),
            ("com1.txt", "_com1.txt"),
            ("console.txt", "console.txt"),
            ("résumé 2026.pdf", "résumé 2026.pdf"),
        ];
        for (input, expected) in cases {
            assert_eq!(sanitize_file_name(input), expected, "{input:?}");
        }
        let long = format!("{}.tar.gz", "é".repeat(300));
        let safe = sanitize_file_name(&long);
        assert!(safe.len() <= MAX_SAFE_NAME_BYTES, "{}", safe.len());
        assert!(safe.ends_with("é.gz"), "{safe}");
        for input in [
            "../../etc/passwd",
            "a/../../b",
            "\\\\server\\share\\..",
            "x/..",
        ] {
            let safe = sanitize_file_name(input);
            assert!(!safe.contains('/') && !safe.contains('\\') && !safe.starts_with('.'));
            assert_eq!(Path::new(&safe).components().count(), 1, "{input:?}");
        }
    }

    #[test]
    fn numbered_names() {
        assert_eq!(numbered_name("a.txt", 0), "a.txt");
        assert_eq!(numbered_name("a.txt", 2), "a (2).txt");
        assert_eq!(numbered_name("archive", 1), "archive (1)");
        assert_eq!(numbered_name("x.tar.gz", 1), "x.tar (1).gz");
    }

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

    #[tokio::test]
    async fn part_file_is_removed_unless_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".x.1.part");
        let (part, _file) = PartFile::create(path.clone()).await.unwrap();
        assert!(path.exists());
        assert!(PartFile::create(path.clone()).await.is_err(), "create_new");
        drop(part);
        assert!(!path.exists());

        std::fs::write(dir.path().join("x.txt"), b"old").unwrap();
        let (part, mut file) = PartFile::create(path.clone()).await.unwrap();
        file.write_all(b"new").await.unwrap();
        drop(file);
        let stored = part.persist(dir.path(), "x.txt").await.unwrap();
        assert_eq!(stored, dir.path().join("x (1).txt"));
        assert_eq!(std::fs::read(&stored).unwrap(), b"new");
        assert_eq!(std::fs::read(dir.path().join("x.txt")).unwrap(), b"old");
        assert!(!path.exists());
    }
}
