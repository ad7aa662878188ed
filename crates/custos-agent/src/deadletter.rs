//! The dead-letter store: batches the server refused for good (a 4xx other
//! than 408 and 429), kept on the host instead of being dropped, so the
//! operator can see what was refused and why, and resend it once the cause
//! is fixed (`custos agent dead-letters list | show | resend | delete`).
//!
//! Entries live in `<state_dir>/dead-letters/` (mode 0700), one file per
//! entry named `<id>.dl` (mode 0600), where the id is a time-ordered UUID
//! (v7), so names sort oldest first. Each file is written atomically
//! (temporary file, fsync, rename, fsync of the directory) and sealed with
//! the state directory's key ([`crate::seal`], AES-256-GCM, the key file
//! `queue.key` shared with the queue): a copied disk image without the key
//! reveals neither the events nor the server's message.
//!
//! # Entry file, version 1
//!
//! All integers are little-endian.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 8 | magic `CUSTOSDL` |
//! | 8 | 1 | format version, `1` |
//! | 9 | 4 | `H`: length of the sealed header (at most 65 536 + 29) |
//! | 13 | `H` | sealed header: a sealed box ([`crate::seal`]) of the header JSON |
//! | 13+`H` | 8 | `P`: length of the sealed payload |
//! | 21+`H` | `P` | sealed payload: a sealed box of the batch frame |
//!
//! The file is exactly `21 + H + P` bytes. The header box authenticates
//! bytes `0..9` followed by the entry id (its 36-character text, the file
//! name without `.dl`) as associated data, so an entry renamed or copied
//! under another id is detected. The payload box authenticates bytes
//! `0..21+H` (magic, version, both lengths and the sealed header, tag
//! included), binding the frame to its header. Listing opens only the small
//! header box; the payload is decrypted by [`DeadLetters::get`].
//!
//! The header JSON (unknown fields refused):
//!
//! | field | meaning |
//! |---|---|
//! | `id` | the entry id (must equal the file name's) |
//! | `batch_id` | the batch id the frame carries; the server deduplicates by it |
//! | `status` | the HTTP status of the refusal |
//! | `message` | the server's error message (at most 4096 bytes kept) |
//! | `time` | when it was refused, µs since the Unix epoch |
//! | `events` | events in the batch |
//! | `categories` | events per category (`{"logs": 12, …}`) |
//! | `source` | the source the batch came from |
//! | `frame_bytes` | length of the frame |
//!
//! The payload is the exact wire frame that was refused
//! ([`custos_model::wire`], batch frame v1), so a resend sends the same
//! bytes with the same batch id: the server stores it at most once.
//!
//! # Bound
//!
//! The files of the store never exceed `max_bytes` in all. To make room for
//! a new entry the oldest entries are removed; each removal is returned by
//! [`DeadLetters::put`] (with what it held, when readable) and counted in
//! [`DeadLetters::evicted_total`], so the caller reports it: nothing leaves
//! silently. An entry larger than the whole bound is refused
//! ([`DeadLetterError::TooLarge`]) without removing anything.
//!
//! # Damage
//!
//! A file that is truncated, has trailing bytes, another magic or version,
//! or fails authentication (tampered, or sealed under another key) is
//! reported by [`DeadLetters::list`] (in [`Listing::damaged`]) and by
//! [`DeadLetters::get`] as [`DeadLetterError::Damaged`] naming the file.
//! It is never removed except by eviction or an explicit
//! [`DeadLetters::remove`].
//!
//! All methods do blocking file I/O: call them from a blocking thread
//! (`tokio::task::spawn_blocking`) in async code.

use crate::seal::{SealError, SealKey, OVERHEAD};
use custos_model::wire::{self, BatchPayload, Limits};
use custos_model::{BatchId, Event};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The store's directory inside the state directory.
pub const DIR: &str = "dead-letters";
/// The extension of entry files.
pub const EXTENSION: &str = "dl";
/// Magic bytes at the start of every entry file.
pub const MAGIC: &[u8; 8] = b"CUSTOSDL";
/// The entry file format version.
pub const FORMAT_VERSION: u8 = 1;
/// Most bytes of the server's message kept in an entry.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Largest sealed header accepted when reading.
pub const MAX_HEADER_BOX: usize = 65_536 + OVERHEAD;
/// Bytes before the sealed header: magic, version, header length.
const PREFIX_LEN: usize = 8 + 1 + 4;
/// Temporary files older than this are leftovers of a crash and removed.
const STALE_TMP: Duration = Duration::from_secs(3600);

/// `<state_dir>/dead-letters`.
pub fn dead_letter_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR)
}

/// What went wrong with the store or an entry.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// A file or the directory could not be read or written.
    #[error("dead-letter store {}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An entry file is not a valid entry (truncated, tampered, foreign,
    /// or sealed under another key).
    #[error("dead letter {} is damaged: {reason}", .path.display())]
    Damaged {
        /// The entry file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No entry has this id.
    #[error("no dead letter {id} in {}", .dir.display())]
    NotFound {
        /// The id asked for.
        id: EntryId,
        /// The store's directory.
        dir: PathBuf,
    },
    /// The text is not an entry id.
    #[error("invalid dead-letter id {0:?}: expected an id as shown by `custos agent dead-letters list`")]
    BadId(String),
    /// The entry alone is larger than the store's bound; it is not kept.
    #[error("dead letter of {bytes} bytes exceeds the store's bound of {max_bytes} bytes (dead_letters.max_bytes); it is not kept")]
    TooLarge {
        /// Size of the entry file it would make.
        bytes: u64,
        /// The bound.
        max_bytes: u64,
    },
    /// Sealing failed (no randomness).
    #[error("cannot seal a dead letter: {0}")]
    Seal(#[source] SealError),
}

/// The id of one entry: a time-ordered UUID (v7); its text is the file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EntryId(pub uuid::Uuid);

impl EntryId {
    fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    fn file_name(&self) -> String {
        format!("{self}.{EXTENSION}")
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl std::str::FromStr for EntryId {
    type Err = DeadLetterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        // Only the canonical hyphenated form: it is also a file name.
        if t.len() != 36 {
            return Err(DeadLetterError::BadId(s.chars().take(64).collect()));
        }
        uuid::Uuid::parse_str(t).map(EntryId).map_err(|_| DeadLetterError::BadId(s.chars().take(64).collect()))
    }
}

/// A batch to keep: what [`DeadLetters::put`] stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDeadLetter {
    /// The batch id the frame carries.
    pub batch_id: BatchId,
    /// The exact wire frame the server refused.
    pub frame: Vec<u8>,
    /// The HTTP status of the refusal.
    pub status: u16,
    /// The server's error message (cut to [`MAX_MESSAGE_BYTES`]).
    pub message: String,
    /// When it was refused, µs since the Unix epoch.
    pub time: i64,
    /// Events in the batch.
    pub events: u64,
    /// Events per category name (see [`categories_of`]).
    pub categories: BTreeMap<String, u64>,
    /// The source the batch came from.
    pub source: String,
}

/// Events per category name, for [`NewDeadLetter::categories`].
pub fn categories_of(events: &[Event]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for e in events {
        *out.entry(e.category.name().to_string()).or_insert(0u64) += 1;
    }
    out
}

/// The header JSON of an entry, as stored (see the module documentation).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    id: EntryId,
    batch_id: BatchId,
    status: u16,
    message: String,
    time: i64,
    events: u64,
    categories: BTreeMap<String, u64>,
    source: String,
    frame_bytes: u64,
}

/// What an entry's header says, with the size of its file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// The entry id.
    pub id: EntryId,
    /// The batch id the frame carries.
    pub batch_id: BatchId,
    /// The HTTP status of the refusal.
    pub status: u16,
    /// The server's error message.
    pub message: String,
    /// When it was refused, µs since the Unix epoch.
    pub time: i64,
    /// Events in the batch.
    pub events: u64,
    /// Events per category.
    pub categories: BTreeMap<String, u64>,
    /// The source the batch came from.
    pub source: String,
    /// Length of the frame.
    pub frame_bytes: u64,
    /// Size of the entry file (not stored in the header).
    pub file_bytes: u64,
}

impl Summary {
    fn header(&self) -> Header {
        Header {
            id: self.id,
            batch_id: self.batch_id,
            status: self.status,
            message: self.message.clone(),
            time: self.time,
            events: self.events,
            categories: self.categories.clone(),
            source: self.source.clone(),
            frame_bytes: self.frame_bytes,
        }
    }

    fn from_header(h: Header, file_bytes: u64) -> Self {
        Summary {
            id: h.id,
            batch_id: h.batch_id,
            status: h.status,
            message: h.message,
            time: h.time,
            events: h.events,
            categories: h.categories,
            source: h.source,
            frame_bytes: h.frame_bytes,
            file_bytes,
        }
    }
}

/// A whole entry: its header and the refused frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The header.
    pub summary: Summary,
    /// The exact wire frame the server refused.
    pub frame: Vec<u8>,
}

impl Entry {
    /// The frame's events. The frame was refused, so it may not decode
    /// (that may be why it was refused); the limits are generous, since a
    /// frame refused for its size should still be readable here.
    pub fn decode(&self) -> Result<BatchPayload, wire::WireError> {
        let limits = Limits {
            max_frame_bytes: usize::MAX / 2,
            max_payload_bytes: 1 << 30,
            max_events: 10_000_000,
            max_message_bytes: 1 << 30,
            max_host_bytes: 1 << 20,
            max_attrs: 1 << 20,
            max_attr_bytes: 1 << 30,
        };
        wire::decode(&self.frame, &limits)
    }
}

/// What [`DeadLetters::list`] found.
#[derive(Debug, Default)]
pub struct Listing {
    /// The readable entries, oldest first.
    pub entries: Vec<Summary>,
    /// Entry files that could not be read, each with the error naming it.
    pub damaged: Vec<DeadLetterError>,
    /// Bytes of all entry files, damaged ones included.
    pub total_bytes: u64,
}

/// An entry removed to make room for a newer one.
#[derive(Debug)]
pub struct Evicted {
    /// The entry file removed.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// What it held, if its header was readable.
    pub summary: Option<Summary>,
}

/// What [`DeadLetters::put`] did.
#[derive(Debug)]
#[must_use = "evicted entries must be reported"]
pub struct Put {
    /// The new entry.
    pub id: EntryId,
    /// Older entries removed to stay within the bound, oldest first.
    pub evicted: Vec<Evicted>,
}

/// The store. Safe to share between threads (`put` is serialised inside).
#[derive(Debug)]
pub struct DeadLetters {
    dir: PathBuf,
    key: Arc<SealKey>,
    max_bytes: u64,
    put_lock: Mutex<()>,
    evicted_total: AtomicU64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DeadLetterError + '_ {
    move |source| DeadLetterError::Io { path: path.to_path_buf(), source }
}

fn damaged(path: &Path, reason: impl Into<String>) -> DeadLetterError {
    DeadLetterError::Damaged { path: path.to_path_buf(), reason: reason.into() }
}

/// Cut `s` to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl DeadLetters {
    /// The store of `state_dir` (`<state_dir>/dead-letters`), sealing with
    /// `key` and bounded by `max_bytes`. The directory is created by the
    /// first [`DeadLetters::put`]; until then the store is empty.
    pub fn open(state_dir: &Path, key: Arc<SealKey>, max_bytes: u64) -> Result<Self, DeadLetterError> {
        let dir = dead_letter_dir(state_dir);
        match std::fs::metadata(&dir) {
            Ok(m) if !m.is_dir() => {
                return Err(DeadLetterError::Io {
                    path: dir,
                    source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "exists and is not a directory"),
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&dir)(e)),
        }
        Ok(Self { dir, key, max_bytes, put_lock: Mutex::new(()), evicted_total: AtomicU64::new(0) })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bound in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Entries removed by eviction since this store was opened.
    pub fn evicted_total(&self) -> u64 {
        self.evicted_total.load(Ordering::Relaxed)
    }

    fn path_of(&self, id: &EntryId) -> PathBuf {
        self.dir.join(id.file_name())
    }

    /// Keep a refused batch. Removes the oldest entries if needed to stay
    /// within the bound, and returns them: report them, they are gone.
    pub fn put(&self, letter: NewDeadLetter) -> Result<Put, DeadLetterError> {
        let id = EntryId::new();
        let summary = Summary {
            id,
            batch_id: letter.batch_id,
            status: letter.status,
            message: cut(&letter.message, MAX_MESSAGE_BYTES),
            time: letter.time,
            events: letter.events,
            categories: letter.categories,
            source: cut(&letter.source, 1024),
            frame_bytes: letter.frame.len() as u64,
            file_bytes: 0,
        };
        let bytes = self.encode(&summary, &letter.frame)?;
        let size = bytes.len() as u64;
        if size > self.max_bytes {
            return Err(DeadLetterError::TooLarge { bytes: size, max_bytes: self.max_bytes });
        }
        // One put at a time: the scan, the evictions and the write agree.
        let _guard = self.put_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.create_dir()?;
        let mut files = self.scan(true)?;
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        let mut evicted = Vec::new();
        // Oldest first: names are time-ordered ids.
        files.reverse();
        while total.saturating_add(size) > self.max_bytes {
            let Some((path, len)) = files.pop() else { break };
            let summary = self.read_summary(&path).ok();
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                // Removed meanwhile (`custos agent dead-letters delete`).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    total = total.saturating_sub(len);
                    continue;
                }
                Err(e) => return Err(io(&path)(e)),
            }
            total = total.saturating_sub(len);
            self.evicted_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                file = %path.display(),
                batch = summary.as_ref().map(|s| s.batch_id.to_string()).unwrap_or_default(),
                events = summary.as_ref().map(|s| s.events).unwrap_or(0),
                "dead-letter store full: oldest entry removed"
            );
            evicted.push(Evicted { path, bytes: len, summary });
        }
        let path = self.path_of(&id);
        crate::fsutil::write_atomic(&path, &bytes, 0o600).map_err(io(&path))?;
        Ok(Put { id, evicted })
    }

    /// Every entry's header, oldest first, without decrypting any payload;
    /// damaged entry files are listed apart, each with its error.
    pub fn list(&self) -> Result<Listing, DeadLetterError> {
        let mut listing = Listing::default();
        for (path, len) in self.scan(false)? {
            listing.total_bytes += len;
            match self.read_summary(&path) {
                Ok(s) => listing.entries.push(s),
                // Removed between the scan and the read.
                Err(DeadLetterError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    listing.total_bytes -= len;
                }
                Err(e) => listing.damaged.push(e),
            }
        }
        Ok(listing)
    }

    /// One whole entry, its frame decrypted and checked.
    pub fn get(&self, id: &EntryId) -> Result<Entry, DeadLetterError> {
        let path = self.path_of(id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DeadLetterError::NotFound { id: *id, dir: self.dir.clone() })
            }
            Err(e) => return Err(io(&path)(e)),
        };
        self.decode(&path, *id, &bytes)
    }

    /// Delete one entry.
    pub fn remove(&self, id: &EntryId) -> Result<(), DeadLetterError> {
        let path = self.path_of(id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DeadLetterError::NotFound { id: *id, dir: self.dir.clone() })
            }
            Err(e) => return Err(io(&path)(e)),
        }
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))
    }

    fn create_dir(&self) -> Result<(), DeadLetterError> {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) => Err(io(&self.dir)(e)),
        }
    }

    /// The entry files (`*.dl`) with their sizes, sorted by name (oldest
    /// first). With `clean`, removes temporary files a crash left behind.
    fn scan(&self, clean: bool) -> Result<Vec<(PathBuf, u64)>, DeadLetterError> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for item in rd {
            let item = item.map_err(io(&self.dir))?;
            let path = item.path();
            let Ok(meta) = item.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            if path.extension().is_some_and(|e| e == EXTENSION) {
                out.push((path, meta.len()));
            } else if clean && path.extension().is_some_and(|e| e == "tmp") {
                let stale = meta.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|age| age > STALE_TMP);
                if stale {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The id a file name stands for.
    fn id_of(path: &Path) -> Result<EntryId, DeadLetterError> {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        stem.parse().map_err(|_| damaged(path, "the file name is not an entry id"))
    }

    fn header_aad(id: EntryId) -> Vec<u8> {
        let mut aad = Vec::with_capacity(9 + 36);
        aad.extend_from_slice(MAGIC);
        aad.push(FORMAT_VERSION);
        aad.extend_from_slice(id.to_string().as_bytes());
        aad
    }

    fn encode(&self, summary: &Summary, frame: &[u8]) -> Result<Vec<u8>, DeadLetterError> {
        // Serialising a struct of strings and numbers cannot fail.
        let json = serde_json::to_vec(&summary.header()).unwrap_or_default();
        let header_box = self.key.seal(&Self::header_aad(summary.id), &json).map_err(DeadLetterError::Seal)?;
        let mut out = Vec::with_capacity(PREFIX_LEN + header_box.len() + 8 + frame.len() + OVERHEAD);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_VERSION);
        // The message and source are cut, so the header is far below 4 GiB.
        out.extend_from_slice(&(header_box.len() as u32).to_le_bytes());
        out.extend_from_slice(&header_box);
        out.extend_from_slice(&((frame.len() + OVERHEAD) as u64).to_le_bytes());
        let aad = out.clone();
        self.key.seal_into(&aad, frame, &mut out).map_err(DeadLetterError::Seal)?;
        Ok(out)
    }

    /// Check the fixed prefix; returns the sealed header's length.
    fn check_prefix(path: &Path, prefix: &[u8]) -> Result<usize, DeadLetterError> {
        if prefix.len() < PREFIX_LEN {
            return Err(damaged(path, format!("{} bytes is shorter than an entry header", prefix.len())));
        }
        if &prefix[..8] != MAGIC {
            return Err(damaged(path, "not a dead-letter entry (bad magic)"));
        }
        if prefix[8] != FORMAT_VERSION {
            return Err(damaged(path, format!("unknown format version {}", prefix[8])));
        }
        let mut h = [0u8; 4];
        h.copy_from_slice(&prefix[9..13]);
        let h = u32::from_le_bytes(h) as usize;
        if !(OVERHEAD..=MAX_HEADER_BOX).contains(&h) {
            return Err(damaged(path, format!("sealed header length {h} is out of range")));
        }
        Ok(h)
    }

    fn open_header(&self, path: &Path, id: EntryId, header_box: &[u8], file_bytes: u64) -> Result<Summary, DeadLetterError> {
        let json = self
            .key
            .open(&Self::header_aad(id), header_box)
            .map_err(|e| damaged(path, format!("header {e}")))?;
        let header: Header =
            serde_json::from_slice(&json).map_err(|e| damaged(path, format!("header is not valid: {e}")))?;
        if header.id != id {
            return Err(damaged(path, format!("header names entry {} (moved or copied under another name)", header.id)));
        }
        Ok(Summary::from_header(header, file_bytes))
    }

    /// The header of one entry file, reading only its first bytes.
    fn read_summary(&self, path: &Path) -> Result<Summary, DeadLetterError> {
        let id = Self::id_of(path)?;
        let mut f = std::fs::File::open(path).map_err(io(path))?;
        let file_bytes = f.metadata().map_err(io(path))?.len();
        let mut prefix = Vec::with_capacity(PREFIX_LEN);
        (&mut f).take(PREFIX_LEN as u64).read_to_end(&mut prefix).map_err(io(path))?;
        let h = Self::check_prefix(path, &prefix)?;
        let mut rest = Vec::with_capacity(h + 8);
        (&mut f).take(h as u64 + 8).read_to_end(&mut rest).map_err(io(path))?;
        if rest.len() < h + 8 {
            return Err(damaged(path, format!("truncated: {} bytes", PREFIX_LEN + rest.len())));
        }
        let mut p = [0u8; 8];
        p.copy_from_slice(&rest[h..h + 8]);
        let expected = (PREFIX_LEN + h + 8) as u64 + u64::from_le_bytes(p);
        if file_bytes != expected {
            return Err(damaged(path, format!("{file_bytes} bytes where the lengths inside say {expected}")));
        }
        self.open_header(path, id, &rest[..h], file_bytes)
    }

    fn decode(&self, path: &Path, id: EntryId, bytes: &[u8]) -> Result<Entry, DeadLetterError> {
        let h = Self::check_prefix(path, bytes)?;
        let payload_at = PREFIX_LEN + h + 8;
        if bytes.len() < payload_at {
            return Err(damaged(path, format!("truncated: {} bytes", bytes.len())));
        }
        let mut p = [0u8; 8];
        p.copy_from_slice(&bytes[PREFIX_LEN + h..payload_at]);
        let p = u64::from_le_bytes(p);
        if (bytes.len() - payload_at) as u64 != p {
            return Err(damaged(path, format!("{} bytes where the lengths inside say {}", bytes.len(), payload_at as u64 + p)));
        }
        let summary = self.open_header(path, id, &bytes[PREFIX_LEN..PREFIX_LEN + h], bytes.len() as u64)?;
        let frame = self
            .key
            .open(&bytes[..payload_at], &bytes[payload_at..])
            .map_err(|e| damaged(path, format!("payload {e}")))?;
        if frame.len() as u64 != summary.frame_bytes {
            return Err(damaged(path, format!("frame of {} bytes where the header says {}", frame.len(), summary.frame_bytes)));
        }
        Ok(Entry { summary, frame })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_model::wire::Codec;
    use custos_model::{Category, Level, TableName};
    use proptest::prelude::*;

    fn key() -> Arc<SealKey> {
        Arc::new(SealKey::from_bytes(&[9; 32]).unwrap())
    }

    fn event(i: usize, category: Category, table: &str) -> Event {
        Event {
            table: TableName::new(table).unwrap(),
            time: 1_700_000_000_000_000 + i as i64,
            level: Level::Enhanced,
            category,
            host: "h".into(),
            message: format!("line {i}: disk quota exceeded for user {i}"),
            attrs: BTreeMap::new(),
        }
    }

    fn letter(n: usize) -> (NewDeadLetter, BatchPayload) {
        let mut events: Vec<Event> = (0..n).map(|i| event(i, Category::Logs, "logs")).collect();
        events.push(event(n, Category::Inventory, "inventory"));
        let payload = BatchPayload { batch_id: BatchId::new(), created: 5, events };
        let frame = wire::encode(&payload, Codec::Zstd);
        let l = NewDeadLetter {
            batch_id: payload.batch_id,
            frame,
            status: 413,
            message: "batch of 2000000 bytes exceeds the limit of 1048576 bytes".into(),
            time: 1_700_000_000_000_000,
            events: payload.events.len() as u64,
            categories: categories_of(&payload.events),
            source: "file:logs:/var/log/app/*.log".into(),
        };
        (l, payload)
    }

    #[test]
    fn a_refused_batch_is_kept_listed_without_its_payload_read_back_exactly_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let store = DeadLetters::open(d.path(), key(), 1 << 20).unwrap();
        assert!(store.list().unwrap().entries.is_empty());
        let (l, payload) = letter(3);
        let put = store.put(l.clone()).unwrap();
        assert!(put.evicted.is_empty());
        let listing = store.list().unwrap();
        assert!(listing.damaged.is_empty());
        let [s] = listing.entries.as_slice() else { panic!("{listing:?}") };
        assert_eq!((s.id, s.batch_id, s.status, s.events), (put.id, l.batch_id, 413, 4));
        assert_eq!(s.categories, BTreeMap::from([("inventory".to_string(), 1), ("logs".to_string(), 3)]));
        assert_eq!((s.message.as_str(), s.source.as_str(), s.time), (l.message.as_str(), l.source.as_str(), l.time));
        assert_eq!(s.frame_bytes, l.frame.len() as u64);
        assert_eq!(listing.total_bytes, s.file_bytes);
        let e = store.get(&put.id).unwrap();
        assert_eq!(e.frame, l.frame);
        assert_eq!(e.summary, *s);
        assert_eq!(e.decode().unwrap(), payload);
        store.remove(&put.id).unwrap();
        assert!(store.list().unwrap().entries.is_empty());
        assert!(matches!(store.get(&put.id), Err(DeadLetterError::NotFound { .. })));
        assert!(matches!(store.remove(&put.id), Err(DeadLetterError::NotFound { .. })));
    }

    #[test]
    fn entries_are_private_files_and_nothing_is_stored_in_clear() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let store = DeadLetters::open(d.path(), key(), 1 << 20).unwrap();
        let (mut l, _) = letter(2);
        // An uncompressed-looking frame and message, to look for in the file.
        l.frame = b"SECRET-FRAME-BYTES".repeat(10);
        l.message = "SECRET-MESSAGE".into();
        let put = store.put(l).unwrap();
        let dir_mode = std::fs::metadata(store.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        let path = store.dir().join(format!("{}.dl", put.id));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(MAGIC));
        for needle in [&b"SECRET"[..], b"file:logs", b"inventory"] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{:?} in clear", String::from_utf8_lossy(needle));
        }
    }

    #[test]
    fn a_long_message_is_cut_on_a_character_boundary() {
        let d = tempfile::tempdir().unwrap();
        let store = DeadLetters::open(d.path(), key(), 1 << 20).unwrap();
        let (mut l, _) = letter(1);
        l.message = "é".repeat(MAX_MESSAGE_BYTES);
        let put = store.put(l).unwrap();
        let s = store.get(&put.id).unwrap().summary;
        assert!(s.message.len() <= MAX_MESSAGE_BYTES && s.message.len() >= MAX_MESSAGE_BYTES - 1);
        assert!(s.message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn when_full_the_oldest_entries_are_removed_counted_and_returned() {
        let d = tempfile::tempdir().unwrap();
        let (l, _) = letter(2);
        let probe = DeadLetters::open(d.path(), key(), 1 << 20).unwrap();
        let one = probe.encode(&Summary { id: EntryId::new(), batch_id: l.batch_id, status: l.status, message: l.message.clone(), time: l.time, events: l.events, categories: l.categories.clone(), source: l.source.clone(), frame_bytes: l.frame.len() as u64, file_bytes: 0 }, &l.frame).unwrap().len() as u64;
        // Room for three entries, not four.
        let store = DeadLetters::open(d.path(), key(), one * 3 + one / 2).unwrap();
        let ids: Vec<EntryId> = (0..3).map(|_| store.put(l.clone()).unwrap()).map(|p| { assert!(p.evicted.is_empty()); p.id }).collect();
        let put = store.put(l.clone()).unwrap();
        let [gone] = put.evicted.as_slice() else { panic!("{:?}", put.evicted) };
        assert_eq!(gone.summary.as_ref().map(|s| s.id), Some(ids[0]));
        assert_eq!(gone.summary.as_ref().map(|s| s.events), Some(3));
        assert_eq!(gone.bytes, one);
        assert_eq!(store.evicted_total(), 1);
        let listed: Vec<EntryId> = store.list().unwrap().entries.iter().map(|s| s.id).collect();
        assert_eq!(listed, vec![ids[1], ids[2], put.id]);
        assert!(store.list().unwrap().total_bytes <= store.max_bytes());
        // A damaged entry is evicted like any other, reported without a summary.
        std::fs::write(store.dir().join(format!("{}.dl", ids[1])), b"junk").unwrap();
        let big = NewDeadLetter { frame: vec![7; (one * 2) as usize], ..l.clone() };
        let put = store.put(big).unwrap();
        assert!(put.evicted.len() >= 2, "{:?}", put.evicted);
        assert!(put.evicted[0].summary.is_none());
        assert_eq!(put.evicted[1].summary.as_ref().map(|s| s.id), Some(ids[2]));
        assert!(store.list().unwrap().total_bytes <= store.max_bytes());
    }

    #[test]
    fn an_entry_larger_than_the_whole_bound_is_refused_and_nothing_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let store = DeadLetters::open(d.path(), key(), 4096).unwrap();
        let (l, _) = letter(1);
        let kept = store.put(l.clone()).unwrap().id;
        let e = store.put(NewDeadLetter { frame: vec![1; 8192], ..l }).unwrap_err();
        assert!(matches!(e, DeadLetterError::TooLarge { max_bytes: 4096, .. }), "{e}");
        assert!(e.to_string().contains("dead_letters.max_bytes"), "{e}");
        assert_eq!(store.list().unwrap().entries.iter().map(|s| s.id).collect::<Vec<_>>(), vec![kept]);
        assert_eq!(store.evicted_total(), 0);
    }

    #[test]
    fn an_entry_renamed_under_another_id_or_read_with_another_key_is_damaged() {
        let d = tempfile::tempdir().unwrap();
        let store = DeadLetters::open(d.path(), key(), 1 << 20).unwrap();
        let (l, _) = letter(1);
        let id = store.put(l).unwrap().id;
        let other = EntryId::new();
        std::fs::copy(store.dir().join(format!("{id}.dl")), store.dir().join(format!("{other}.dl"))).unwrap();
        let listing = store.list().unwrap();
        assert_eq!(listing.entries.len(), 1);
        let [e] = listing.damaged.as_slice() else { panic!("{listing:?}") };
        assert!(e.to_string().contains(&format!("{other}.dl")), "{e}");
        assert!(store.get(&other).unwrap_err().to_string().contains("damaged"));
        let stranger = DeadLetters::open(d.path(), Arc::new(SealKey::from_bytes(&[1; 32]).unwrap()), 1 << 20).unwrap();
        let e = stranger.get(&id).unwrap_err().to_string();
        assert!(e.contains(&format!("{id}.dl")) && e.contains("fails authentication"), "{e}");
        assert_eq!(stranger.list().unwrap().damaged.len(), 2);
    }

    #[test]
    fn stray_files_are_ignored_and_bad_ids_refused() {
        let d = tempfile::tempdir().unwrap();
        let store = DeadLetters::open(d.path(), key(), 1 << 20).unwrap();
        let (l, _) = letter(1);
        let _ = store.put(l).unwrap();
        std::fs::write(store.dir().join("notes.txt"), b"x").unwrap();
        std::fs::write(store.dir().join("x.dl.tmp"), b"x").unwrap();
        std::fs::write(store.dir().join("not-an-id.dl"), b"x").unwrap();
        let listing = store.list().unwrap();
        assert_eq!(listing.entries.len(), 1);
        let [e] = listing.damaged.as_slice() else { panic!("{listing:?}") };
        assert!(e.to_string().contains("not-an-id.dl") && e.to_string().contains("not an entry id"), "{e}");
        for bad in ["../../etc/passwd", "", "0190f5c2", "0190f5c2-0000-7000-8000-00000000000g"] {
            assert!(bad.parse::<EntryId>().is_err(), "{bad}");
        }
        let id = EntryId::new();
        assert_eq!(id.to_string().parse::<EntryId>().unwrap(), id);
    }

    proptest! {
        #[test]
        fn random_bytes_as_an_entry_file_are_reported_damaged_naming_the_file(bytes in proptest::collection::vec(any::<u8>(), 0..2048), keep_magic in any::<bool>()) {
            let d = tempfile::tempdir().unwrap();
            let store = DeadLetters::open(d.path(), key(), 1 << 20).unwrap();
            store.create_dir().unwrap();
            let mut bytes = bytes;
            if keep_magic && bytes.len() >= PREFIX_LEN {
                bytes[..8].copy_from_slice(MAGIC);
                bytes[8] = FORMAT_VERSION;
                let h = (bytes.len() / 3) as u32;
                bytes[9..13].copy_from_slice(&h.to_le_bytes());
            }
            let id = EntryId::new();
            let name = format!("{id}.dl");
            std::fs::write(store.dir().join(&name), &bytes).unwrap();
            let listing = store.list().unwrap();
            prop_assert!(listing.entries.is_empty());
            prop_assert_eq!(listing.damaged.len(), 1);
            prop_assert!(listing.damaged[0].to_string().contains(&name));
            let e = store.get(&id).unwrap_err();
            prop_assert!(matches!(e, DeadLetterError::Damaged { .. }), "{}", e);
            prop_assert!(e.to_string().contains(&name));
        }

        #[test]
        fn every_flipped_byte_or_cut_of_an_entry_is_detected(at in any::<prop::sample::Index>(), bit in 0u8..8, cut_instead in any::<bool>()) {
            let d = tempfile::tempdir().unwrap();
            let store = DeadLetters::open(d.path(), key(), 1 << 20).unwrap();
            let (l, _) = letter(2);
            let id = store.put(l).unwrap().id;
            let path = store.dir().join(format!("{id}.dl"));
            let mut bytes = std::fs::read(&path).unwrap();
            let i = at.index(bytes.len());
            if cut_instead {
                bytes.truncate(i);
            } else {
                bytes[i] ^= 1 << bit;
            }
            std::fs::write(&path, &bytes).unwrap();
            let e = store.get(&id).unwrap_err();
            prop_assert!(matches!(e, DeadLetterError::Damaged { .. }), "{}", e);
            // Listing reads only the header: a flip in the payload is
            // found by `get` (above), anything else by both.
            let listing = store.list().unwrap();
            prop_assert_eq!(listing.entries.len() + listing.damaged.len(), 1);
            if !listing.damaged.is_empty() {
                let name = format!("{id}.dl");
                prop_assert!(listing.damaged[0].to_string().contains(&name));
            }
        }
    }
}
