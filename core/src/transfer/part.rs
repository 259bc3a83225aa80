//! Files on disk around a transfer: the receiver's part file (kept across failures, so that a
//! transfer of the same content resumes where it stopped), the marker of a finished one, the
//! sender's content id, and hashing a file's first bytes.
//!
//! A resumable part file is `.<name>.<content id>.part` in the target directory. Its content is
//! a prefix of the file, written in order; the receiver offers its length and SHA-256 to the
//! sender, which checks them against its own file before sending the rest. A part file that was
//! cut short or garbled (power loss) fails that check and the transfer starts over: nothing
//! depends on a side file being in step with it. One receiver at a time writes it: it holds an
//! exclusive lock on the open file.
//!
//! Once stored, `.proxim/<name>.<content id>.done` records where the file went and its hash, so
//! a sender that lost the final acknowledgement and sends again is answered at once instead of
//! storing the file twice. Both kinds are deleted after [`PART_MAX_AGE`] / [`DONE_MAX_AGE`].

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::TransferError;
use super::names::numbered_name;
use super::wire::{CONTENT_ID_HEX, is_lower_hex, is_sha256_hex};

/// How long a part file nobody resumed is kept.
pub const PART_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long the record of a stored file is kept (a sender that lost the acknowledgement sends
/// again within this time, or stores it twice).
pub const DONE_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How long a receiver waits for another one (an earlier attempt still winding down) to let go
/// of the same part file.
const LOCK_WAIT: Duration = Duration::from_secs(10);
const LOCK_POLL: Duration = Duration::from_millis(50);
/// How many ` (n)` suffixes to try before giving up.
const MAX_SUFFIX: u32 = 10_000;
/// The directory inside the target directory where records of stored files are kept.
pub const STATE_DIR: &str = ".proxim";
/// Bytes hashed at each end of a file for its content id.
const CONTENT_ID_SAMPLE: u64 = 64 * 1024;
/// Read size when hashing a file.
const HASH_READ: usize = 1024 * 1024;

/// The receiver's part file. A fresh one (protocol version 1) is deleted on drop unless
/// stored; a resumable one is kept for the next attempt unless [`PartFile::discard`]ed.
#[derive(Debug)]
pub(super) struct PartFile {
    path: PathBuf,
    keep: bool,
}

/// A resumable part file, open, locked, and what it holds.
#[derive(Debug)]
pub(super) struct HeldPart {
    pub(super) part: PartFile,
    /// Open for writing, positioned at its end; holds the lock while open.
    pub(super) file: tokio::fs::File,
    /// Bytes it holds.
    pub(super) len: u64,
    /// SHA-256 state over those bytes.
    pub(super) hasher: Sha256,
}

impl PartFile {
    /// Create a part file that is deleted unless stored; fails if it exists.
    pub(super) async fn create(path: PathBuf) -> Result<(Self, tokio::fs::File), TransferError> {
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok((PartFile { path, keep: false }, file))
    }

    /// Open (or create) the resumable part file at `path` for a file of `size` bytes: wait for
    /// an earlier receiver of it to let go (at most [`LOCK_WAIT`]), then hash what it holds.
    /// More than `size` bytes cannot be a prefix: such a part file is emptied.
    pub(super) async fn open_resumable(
        path: PathBuf,
        size: u64,
    ) -> Result<HeldPart, TransferError> {
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let file = loop {
            let open_path = path.clone();
            let locked = blocking(move || {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&open_path)?;
                match file.try_lock() {
                    Ok(()) => Ok(Some(file)),
                    Err(std::fs::TryLockError::WouldBlock) => Ok(None),
                    Err(std::fs::TryLockError::Error(error)) => Err(error),
                }
            })
            .await?;
            if let Some(file) = locked {
                break file;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TransferError::Busy);
            }
            tokio::time::sleep(LOCK_POLL).await;
        };
        let (file, len, hasher) = blocking(move || {
            let mut file = file;
            let mut len = file.metadata()?.len();
            if len > size {
                file.set_len(0)?;
                len = 0;
            }
            file.seek(SeekFrom::Start(0))?;
            let hasher = hash_from(&mut file, len)?;
            file.seek(SeekFrom::Start(len))?;
            Ok((file, len, hasher))
        })
        .await?;
        Ok(HeldPart {
            part: PartFile { path, keep: true },
            file: tokio::fs::File::from_std(file),
            len,
            hasher,
        })
    }

    /// Delete the part file now (its content is wrong: a resume would only fail again).
    pub(super) fn discard(&mut self) {
        self.keep = false;
        let _ = std::fs::remove_file(&self.path);
    }

    /// Move into `dir` under `name`, or `name (n)` if taken; never overwrites.
    pub(super) async fn persist(
        mut self,
        dir: &Path,
        name: &str,
    ) -> Result<PathBuf, TransferError> {
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

/// The resumable part file of `content_id` stored as `safe_name` in `dir`.
pub(super) fn part_path(dir: &Path, safe_name: &str, content_id: &str) -> PathBuf {
    dir.join(format!(".{safe_name}.{content_id}.part"))
}

/// Where a stored file went: written next to it once verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DoneRecord {
    /// Its name in the directory.
    pub(super) name: String,
    pub(super) size: u64,
    pub(super) sha256: String,
}

impl DoneRecord {
    fn path(dir: &Path, safe_name: &str, content_id: &str) -> PathBuf {
        dir.join(STATE_DIR)
            .join(format!("{safe_name}.{content_id}.done"))
    }

    /// The record of `content_id`, if there is one and the file it names is still there with
    /// its size (a file deleted or changed since is received again).
    pub(super) async fn load(
        dir: &Path,
        safe_name: &str,
        content_id: &str,
        size: u64,
    ) -> Option<DoneRecord> {
        let text = tokio::fs::read(Self::path(dir, safe_name, content_id))
            .await
            .ok()?;
        let record: DoneRecord = serde_json::from_slice(&text).ok()?;
        let usable = record.size == size
            && is_sha256_hex(&record.sha256)
            && Path::new(&record.name).components().count() == 1;
        if !usable {
            return None;
        }
        let meta = tokio::fs::metadata(dir.join(&record.name)).await.ok()?;
        (meta.is_file() && meta.len() == size).then_some(record)
    }

    /// Write the record (best effort: without it a repeated send stores the file twice).
    pub(super) async fn save(&self, dir: &Path, safe_name: &str, content_id: &str) {
        let path = Self::path(dir, safe_name, content_id);
        let text = serde_json::to_vec(self).unwrap_or_default();
        let written = match tokio::fs::create_dir_all(dir.join(STATE_DIR)).await {
            Ok(()) => tokio::fs::write(&path, text).await,
            Err(error) => Err(error),
        };
        if let Err(error) = written {
            tracing::warn!(%error, "could not record the stored file; sending it again stores it twice");
        }
    }

    /// Forget the record (the sender's file is another one).
    pub(super) async fn remove(dir: &Path, safe_name: &str, content_id: &str) {
        let _ = tokio::fs::remove_file(Self::path(dir, safe_name, content_id)).await;
    }
}

/// Delete part files older than [`PART_MAX_AGE`] in `dir` and records older than
/// [`DONE_MAX_AGE`] in its state directory (only names this module writes); how many went.
/// Best effort.
pub(super) async fn prune(dir: &Path) -> usize {
    let dir = dir.to_owned();
    blocking(move || Ok(prune_blocking(&dir, SystemTime::now())))
        .await
        .unwrap_or(0)
}

fn prune_blocking(dir: &Path, now: SystemTime) -> usize {
    prune_in(dir, now, |name| {
        let stem = name.strip_suffix(".part")?.strip_prefix('.')?;
        named_by_content_id(stem).then_some(PART_MAX_AGE)
    }) + prune_in(&dir.join(STATE_DIR), now, |name| {
        named_by_content_id(name.strip_suffix(".done")?).then_some(DONE_MAX_AGE)
    })
}

/// Delete the files in `dir` older than `max_age` says (`None`: not ours).
fn prune_in(dir: &Path, now: SystemTime, max_age: impl Fn(&str) -> Option<Duration>) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut pruned = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(max_age) = name.to_str().and_then(&max_age) else {
            continue;
        };
        let old = entry
            .metadata()
            .and_then(|meta| meta.modified())
            .is_ok_and(|modified| now.duration_since(modified).unwrap_or_default() > max_age);
        if old && std::fs::remove_file(entry.path()).is_ok() {
            pruned += 1;
        }
    }
    pruned
}

/// Whether `name` is `<file name>.<content id>`.
fn named_by_content_id(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(stem, id)| !stem.is_empty() && is_lower_hex(id, CONTENT_ID_HEX))
}

/// The content id of the file at `path`: 128 bits over its size, modification time and first
/// and last 64 KiB, so the same file sent again (after a failure, from a restarted app) finds
/// its part file. It only picks the part file: the receiver's prefix is checked by hash before
/// anything is resumed.
pub(super) async fn content_id(path: &Path) -> Result<String, TransferError> {
    let path = path.to_owned();
    blocking(move || {
        let mut file = std::fs::File::open(&path)?;
        let meta = file.metadata()?;
        let size = meta.len();
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let mut hasher = Sha256::new();
        hasher.update(b"proxim content id 1\0");
        hasher.update(size.to_le_bytes());
        hasher.update(modified.to_le_bytes());
        let head = size.min(CONTENT_ID_SAMPLE);
        update_from(&mut hasher, &mut file, head)?;
        let tail_start = size.saturating_sub(CONTENT_ID_SAMPLE).max(head);
        file.seek(SeekFrom::Start(tail_start))?;
        update_from(&mut hasher, &mut file, size - tail_start)?;
        let digest = hasher.finalize();
        Ok(hex::encode(&digest[..CONTENT_ID_HEX / 2]))
    })
    .await
}

/// SHA-256 state over the first `len` bytes of the file at `path`.
pub(super) async fn hash_prefix(path: &Path, len: u64) -> Result<Sha256, TransferError> {
    let path = path.to_owned();
    blocking(move || hash_from(&mut std::fs::File::open(&path)?, len)).await
}

/// SHA-256 state over the next `len` bytes of `reader`; fails when it ends first.
fn hash_from(reader: &mut impl Read, len: u64) -> std::io::Result<Sha256> {
    let mut hasher = Sha256::new();
    update_from(&mut hasher, reader, len)?;
    Ok(hasher)
}

fn update_from(hasher: &mut Sha256, reader: &mut impl Read, len: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; HASH_READ];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left).map_or(HASH_READ, |l| l.min(HASH_READ));
        let n = reader.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the file ended {left} bytes short"),
            ));
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

/// Run blocking file work off the runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, TransferError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => Ok(result?),
        Err(error) => Err(TransferError::Io(std::io::Error::other(error.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

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

    #[tokio::test]
    async fn a_resumable_part_file_is_kept_hashed_and_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = part_path(dir.path(), "x.bin", &"a".repeat(32));
        std::fs::write(&path, b"hello").unwrap();
        let mut held = PartFile::open_resumable(path.clone(), 100).await.unwrap();
        assert_eq!(held.len, 5);
        assert_eq!(held.hasher.clone().finalize(), Sha256::digest(b"hello"));
        held.file.write_all(b" world").await.unwrap();
        held.file.flush().await.unwrap();

        // A second receiver of the same content waits for the lock, then gives up.
        tokio::time::pause();
        let second = PartFile::open_resumable(path.clone(), 100).await;
        tokio::time::resume();
        assert!(matches!(second, Err(TransferError::Busy)), "{second:?}");

        drop(held);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"hello world",
            "kept on drop"
        );
        let mut held = PartFile::open_resumable(path.clone(), 100).await.unwrap();
        assert_eq!(held.len, 11);
        held.part.discard();
        assert!(!path.exists());
        drop(held);
        assert!(!path.exists());

        // More than the file's size is not a prefix of it.
        std::fs::write(&path, b"0123456789").unwrap();
        let held = PartFile::open_resumable(path.clone(), 4).await.unwrap();
        assert_eq!(held.len, 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[tokio::test]
    async fn done_records_answer_only_while_the_file_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let id = "b".repeat(32);
        std::fs::write(dir.path().join("x (1).bin"), b"12345").unwrap();
        let record = DoneRecord {
            name: "x (1).bin".to_owned(),
            size: 5,
            sha256: hex::encode(Sha256::digest(b"12345")),
        };
        record.save(dir.path(), "x.bin", &id).await;
        assert_eq!(
            DoneRecord::load(dir.path(), "x.bin", &id, 5).await,
            Some(record.clone())
        );
        assert_eq!(DoneRecord::load(dir.path(), "x.bin", &id, 6).await, None);
        assert_eq!(DoneRecord::load(dir.path(), "y.bin", &id, 5).await, None);
        std::fs::write(dir.path().join("x (1).bin"), b"123").unwrap();
        assert_eq!(DoneRecord::load(dir.path(), "x.bin", &id, 5).await, None);
        // A record naming something outside the directory is ignored.
        let escape = DoneRecord {
            name: "../x (1).bin".to_owned(),
            ..record
        };
        escape.save(dir.path(), "x.bin", &id).await;
        assert_eq!(DoneRecord::load(dir.path(), "x.bin", &id, 5).await, None);
    }

    #[test]
    fn only_old_transfer_files_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join(STATE_DIR);
        std::fs::create_dir(&state).unwrap();
        let id = "c".repeat(32);
        let ours = [
            dir.path().join(format!(".a.txt.{id}.part")),
            state.join(format!("a.txt.{id}.done")),
            dir.path().join(format!(".b.{id}.part")),
        ];
        let theirs = [
            dir.path().join(".a.txt.part"),
            dir.path().join(format!("a.txt.{id}.part")),
            dir.path().join(format!(".a.txt.{}.part", "C".repeat(32))),
            dir.path().join(format!(".{id}.part")),
            dir.path().join(format!(".a.txt.{id}.done")),
            state.join(format!("a.txt.{id}.part")),
            state.join("notes.txt"),
            dir.path().join("notes.txt"),
        ];
        for path in ours.iter().chain(&theirs) {
            std::fs::write(path, b"x").unwrap();
        }
        let now = SystemTime::now();
        assert_eq!(prune_blocking(dir.path(), now), 0, "nothing is old yet");
        // A day and a bit later: records go; part files stay for a week.
        assert_eq!(
            prune_blocking(dir.path(), now + DONE_MAX_AGE + Duration::from_secs(60)),
            1
        );
        assert!(!ours[1].exists());
        assert_eq!(
            prune_blocking(dir.path(), now + PART_MAX_AGE + Duration::from_secs(60)),
            2
        );
        for path in &theirs {
            assert!(path.exists(), "{} is not ours", path.display());
        }
    }

    #[tokio::test]
    async fn content_ids_follow_the_content_and_prefixes_hash_like_the_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let id_of = |path: PathBuf| async move { content_id(&path).await.unwrap() };
        let first = id_of(path.clone()).await;
        assert!(is_lower_hex(&first, CONTENT_ID_HEX), "{first}");
        assert_eq!(id_of(path.clone()).await, first, "stable");
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        let mut changed = data.clone();
        changed[299_999] ^= 1;
        std::fs::write(&path, &changed).unwrap();
        let touch = |path: &Path, at| {
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(at)
                .unwrap()
        };
        touch(&path, modified);
        assert_ne!(id_of(path.clone()).await, first, "the last bytes count");
        std::fs::write(&path, &data).unwrap();
        touch(&path, modified);
        assert_eq!(id_of(path.clone()).await, first, "same content, same time");
        touch(&path, modified + Duration::from_secs(1));
        assert_ne!(id_of(path.clone()).await, first, "the time counts");

        let prefix = hash_prefix(&path, 123_456).await.unwrap();
        assert_eq!(prefix.finalize(), Sha256::digest(&changed[..123_456]));
        assert!(hash_prefix(&path, 300_001).await.is_err(), "past the end");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(is_lower_hex(&id_of(empty).await, CONTENT_ID_HEX));
    }
}
