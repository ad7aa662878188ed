//! The queue's record format, **version 1**: what each payload of the
//! underlying [`custos_wal`] log holds. (The log adds its own framing: a
//! CRC-32C per record, segments, the ack file; see `custos_wal::format`.)
//!
//! All integers are little-endian. Byte 0 of every payload is its kind,
//! byte 1 the format version (`1`); a payload with another version or kind,
//! or too short for its kind, is counted as corrupt and skipped.
//!
//! # Batch record (kind 1)
//!
//! Events of **one category** from one poll of one source, compressed and
//! sealed. One poll makes a *group* of batch records (one per category),
//! appended together and made durable by one sync.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 1  | kind `1` |
//! | 1  | 1  | version `1` |
//! | 2  | 1  | category code (index in `Category::ALL`) |
//! | 3  | 1  | highest consent level of its events (0–3) |
//! | 4  | 1  | flags: bit 0 `CARRIER` (last record of its group; the body holds the source checkpoint), bit 1 `COPIED` (moved forward by compaction: complete on its own, its checkpoint is ignored) |
//! | 5  | 1  | reserved, zero |
//! | 6  | 2  | group length: how many batch records the group has |
//! | 8  | 8  | group id: the lsn of the group's first record |
//! | 16 | 8  | source key: the first 8 bytes of SHA-256("custos-queue-source\0" ‖ source name) |
//! | 24 | 4  | event count |
//! | 28 | 4  | reserved, zero |
//! | 32 | 16 | batch id (UUID bytes); the server deduplicates by it |
//! | 48 | …  | sealed box ([`crate::seal`]) of zstd(JSON body) |
//!
//! The box's associated data is bytes `0..4` followed by bytes `24..48`:
//! kind, version, category, level, event count and batch id are
//! authenticated; the group fields (`4..24`) are not, so compaction can
//! rewrite them without re-encrypting. The JSON body is
//! `{"source": NAME, "checkpoint": CHECKPOINT or null, "events": [EVENT, …]}`.
//!
//! # Done record (kind 2)
//!
//! Batch records that left the queue. Written in bulk at each sync.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 1 | kind `2` |
//! | 1 | 1 | version `1` |
//! | 2 | 2 | reserved, zero |
//! | 4 | 4 | entry count `n` |
//! | 8 | 9·n | entries: lsn (8 bytes), reason (1 byte, [`DoneReason`]) |
//!
//! # Committed record (kind 3)
//!
//! Written after the group's source position was committed; until then the
//! group is *pending* and never sent.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 1 | kind `3` |
//! | 1 | 1 | version `1` |
//! | 2 | 6 | reserved, zero |
//! | 8 | 8 | group id |

use custos_model::{BatchId, Category, Level};
use sha2::{Digest, Sha256};

/// The record format version.
pub const VERSION: u8 = 1;
/// Batch record.
pub const KIND_BATCH: u8 = 1;
/// Done record.
pub const KIND_DONE: u8 = 2;
/// Committed record.
pub const KIND_COMMITTED: u8 = 3;
/// Length of a batch record's header.
pub const BATCH_HEADER_LEN: usize = 48;
/// Flag: the last record of its group, holding the checkpoint.
pub const FLAG_CARRIER: u8 = 1;
/// Flag: moved forward by compaction.
pub const FLAG_COPIED: u8 = 2;

/// Why a batch record left the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DoneReason {
    /// The server acknowledged it.
    Acked = 0,
    /// Evicted to keep the queue within its bound.
    Evicted = 1,
    /// Refused for good by the server; moved to the dead-letter store.
    DeadLetter = 2,
    /// Deleted because the settings no longer allow its events.
    Purged = 3,
    /// Part of a group whose append was cut by a crash (its source position
    /// was never committed, so the events are read again).
    Incomplete = 4,
    /// Copied forward by compaction or replaced by a filtered copy.
    Moved = 5,
    /// Its bytes became unreadable (damaged on disk).
    Corrupt = 6,
}

impl DoneReason {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Acked,
            1 => Self::Evicted,
            2 => Self::DeadLetter,
            3 => Self::Purged,
            4 => Self::Incomplete,
            5 => Self::Moved,
            6 => Self::Corrupt,
            _ => return None,
        })
    }
}

/// The fixed part of a batch record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// The events' category.
    pub category: Category,
    /// The highest consent level among the events.
    pub max_level: Level,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Records in the group.
    pub group_len: u16,
    /// The group id.
    pub group: u64,
    /// The source key.
    pub source: u64,
    /// Events in the record.
    pub events: u32,
    /// The batch id.
    pub batch_id: BatchId,
}

/// A decoded payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    /// A batch record: header and sealed body.
    Batch(BatchHeader, &'a [u8]),
    /// Done entries.
    Done(Vec<(u64, DoneReason)>),
    /// A committed group.
    Committed(u64),
}

/// The source key of a source name.
pub fn source_key(name: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(b"custos-queue-source\0");
    h.update(name.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

fn category_code(c: Category) -> u8 {
    Category::ALL.iter().position(|x| *x == c).map(|i| i as u8).unwrap_or(u8::MAX)
}

fn level_of(b: u8) -> Option<Level> {
    Level::try_from(b).ok()
}

/// Encode a batch header.
pub fn encode_batch_header(h: &BatchHeader) -> [u8; BATCH_HEADER_LEN] {
    let mut b = [0u8; BATCH_HEADER_LEN];
    b[0] = KIND_BATCH;
    b[1] = VERSION;
    b[2] = category_code(h.category);
    b[3] = u8::from(h.max_level);
    b[4] = h.flags;
    b[6..8].copy_from_slice(&h.group_len.to_le_bytes());
    b[8..16].copy_from_slice(&h.group.to_le_bytes());
    b[16..24].copy_from_slice(&h.source.to_le_bytes());
    b[24..28].copy_from_slice(&h.events.to_le_bytes());
    b[32..48].copy_from_slice(h.batch_id.0.as_bytes());
    b
}

/// The associated data of a batch record's sealed box.
pub fn batch_aad(header: &[u8; BATCH_HEADER_LEN]) -> [u8; 28] {
    let mut a = [0u8; 28];
    a[..4].copy_from_slice(&header[..4]);
    a[4..].copy_from_slice(&header[24..48]);
    a
}

/// Encode a done record.
pub fn encode_done(entries: &[(u64, DoneReason)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + 9 * entries.len());
    b.extend_from_slice(&[KIND_DONE, VERSION, 0, 0]);
    b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (lsn, r) in entries {
        b.extend_from_slice(&lsn.to_le_bytes());
        b.push(*r as u8);
    }
    b
}

/// Encode a committed record.
pub fn encode_committed(group: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = KIND_COMMITTED;
    b[1] = VERSION;
    b[8..16].copy_from_slice(&group.to_le_bytes());
    b
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

/// Decode a payload; the error says what is wrong with it.
pub fn decode(b: &[u8]) -> Result<Payload<'_>, String> {
    if b.len() < 2 {
        return Err(format!("payload of {} bytes is too short", b.len()));
    }
    if b[1] != VERSION {
        return Err(format!("unsupported queue record version {}", b[1]));
    }
    match b[0] {
        KIND_BATCH => {
            if b.len() < BATCH_HEADER_LEN {
                return Err(format!("batch record of {} bytes is shorter than its header", b.len()));
            }
            let category = Category::ALL.get(usize::from(b[2])).copied().ok_or_else(|| format!("unknown category code {}", b[2]))?;
            let max_level = level_of(b[3]).ok_or_else(|| format!("unknown level {}", b[3]))?;
            let mut id = [0u8; 16];
            id.copy_from_slice(&b[32..48]);
            let h = BatchHeader {
                category,
                max_level,
                flags: b[4],
                group_len: u16::from_le_bytes([b[6], b[7]]),
                group: u64_at(b, 8),
                source: u64_at(b, 16),
                events: u32_at(b, 24),
                batch_id: BatchId(uuid::Uuid::from_bytes(id)),
            };
            if h.group_len == 0 {
                return Err("batch record with a group length of 0".into());
            }
            Ok(Payload::Batch(h, &b[BATCH_HEADER_LEN..]))
        }
        KIND_DONE => {
            if b.len() < 8 {
                return Err("done record shorter than its header".into());
            }
            let n = u32_at(b, 4) as usize;
            if b.len() != 8 + 9 * n {
                return Err(format!("done record of {} bytes does not hold {n} entries", b.len()));
            }
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                let at = 8 + 9 * i;
                let r = DoneReason::from_u8(b[at + 8]).ok_or_else(|| format!("unknown done reason {}", b[at + 8]))?;
                out.push((u64_at(b, at), r));
            }
            Ok(Payload::Done(out))
        }
        KIND_COMMITTED => {
            if b.len() != 16 {
                return Err(format!("committed record of {} bytes, expected 16", b.len()));
            }
            Ok(Payload::Committed(u64_at(b, 8)))
        }
        k => Err(format!("unknown queue record kind {k}")),
    }
}

/// A batch id derived from another and a tag: used when a queued batch's
/// content changes (events purged, host names pseudonymised differently),
/// so the same change made again after a crash gives the same id and the
/// server still deduplicates. UUID version 8 (custom), RFC 9562.
pub fn derived_batch_id(from: BatchId, tag: &[u8]) -> BatchId {
    let mut h = Sha256::new();
    h.update(b"custos-derived-batch\0");
    h.update(from.0.as_bytes());
    h.update(tag);
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    BatchId(uuid::Uuid::from_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> BatchHeader {
        BatchHeader {
            category: Category::Logs,
            max_level: Level::Enhanced,
            flags: FLAG_CARRIER,
            group_len: 2,
            group: 77,
            source: source_key("file:logs"),
            events: 5000,
            batch_id: BatchId::new(),
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let h = header();
        let mut b = encode_batch_header(&h).to_vec();
        b.extend_from_slice(b"sealed");
        assert_eq!(decode(&b).unwrap(), Payload::Batch(h, b"sealed"));
        let done = vec![(1, DoneReason::Acked), (9, DoneReason::Evicted), (u64::MAX, DoneReason::Corrupt)];
        assert_eq!(decode(&encode_done(&done)).unwrap(), Payload::Done(done));
        assert_eq!(decode(&encode_committed(42)).unwrap(), Payload::Committed(42));
    }

    #[test]
    fn group_fields_are_outside_the_authenticated_data() {
        let h = header();
        let a = batch_aad(&encode_batch_header(&h));
        let moved = BatchHeader { flags: FLAG_COPIED, group: 1, group_len: 1, ..h };
        assert_eq!(a, batch_aad(&encode_batch_header(&moved)));
        let other = BatchHeader { events: 1, ..h };
        assert_ne!(a, batch_aad(&encode_batch_header(&other)));
    }

    #[test]
    fn derived_ids_are_stable_version_8_and_differ_by_tag() {
        let b = BatchId::new();
        assert_eq!(derived_batch_id(b, b"x"), derived_batch_id(b, b"x"));
        assert_ne!(derived_batch_id(b, b"x"), derived_batch_id(b, b"y"));
        assert_eq!(derived_batch_id(b, b"x").0.get_version_num(), 8);
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(&b);
        }
    }
}
