//! The on-disk format of the write-ahead log, **version 1**.
//!
//! Everything lives in one directory. All integers are little-endian; every
//! checksum is CRC-32C (Castagnoli), as computed by the `crc32c` crate.
//!
//! # Files
//!
//! | name | what |
//! |------|------|
//! | `NNNNNNNNNNNNNNNNNNNN.wal` | a segment; `N…` is the first lsn the segment may hold, as 20 zero-padded decimal digits |
//! | `ack` | the ack position: every record with a lower lsn has been consumed |
//! | `ack.tmp` | an ack file being written; removed by recovery |
//! | `LOCK` | empty; an advisory lock (`flock`) on it keeps a second writer out |
//!
//! Any other file in the directory is ignored (and logged).
//!
//! # Segment file
//!
//! A segment is a [segment header](#segment-header) followed by zero or more
//! [records](#record) packed back to back, without padding. A segment is
//! *rolled* (closed and a new one started) before an append would take it past
//! `segment_bytes`; a single record larger than that gets a segment of its own.
//!
//! ## Segment header
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8 | magic: ASCII `CUSTOSWL` |
//! | 8  | 2 | format version, `1` |
//! | 10 | 6 | reserved, written as zero, ignored by version-1 readers |
//! | 16 | 8 | first lsn, equal to the number in the file name |
//! | 24 | 4 | reserved, written as zero, ignored by version-1 readers |
//! | 28 | 4 | CRC-32C of bytes `0..28` |
//!
//! ## Record
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 4   | record magic `0xC0570A11` (bytes `11 0A 57 C0`) |
//! | 4  | 4   | payload length `len` |
//! | 8  | 8   | lsn |
//! | 16 | 4   | CRC-32C of bytes `4..16` (length and lsn) followed by the payload |
//! | 20 | len | payload |
//!
//! # Ack file
//!
//! Replaced atomically: written to `ack.tmp`, fsynced, renamed over `ack`,
//! then the directory is fsynced. So it always holds either the old or the
//! new position, never a mix.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8 | magic: ASCII `CUSTOSAK` |
//! | 8  | 2 | format version, `1` |
//! | 10 | 6 | reserved, zero |
//! | 16 | 8 | acked lsn: records with a lower lsn are consumed |
//! | 24 | 4 | reserved, zero |
//! | 28 | 4 | CRC-32C of bytes `0..28` |
//!
//! # Invariants (maintained by the writer)
//!
//! 1. Lsns are assigned 0, 1, 2, … by a single writer; inside a segment they
//!    strictly increase, and every record of segment *i* has
//!    `first_lsn(i) <= lsn < first_lsn(i + 1)`. Gaps are allowed (they appear
//!    after recovery dropped damaged records or when the ack position is ahead
//!    of the last record).
//! 2. Before a new segment is created the previous one is flushed and
//!    fdatasync'ed, and the new file's header is fsynced together with the
//!    directory. Hence only the **last** segment can have a torn tail after a
//!    crash, and the segment files on disk always form a contiguous series.
//! 3. [`Wal::sync`](crate::Wal::sync) flushes and fdatasyncs the last segment
//!    (and the directory, if segment files were created or deleted since the
//!    last directory sync). A record is *durable* once a sync returned after
//!    its append.
//! 4. The ack file is made durable **before** any segment it allows to be
//!    deleted is unlinked. The last segment is never deleted by an ack.
//! 5. Lsns of durable records are never reused. Lsns handed out for records
//!    that were lost in a crash before being synced may be handed out again.
//!
//! # Recovery rules (run by [`Wal::open`](crate::Wal::open))
//!
//! A record is *valid* at an offset when its magic matches, the whole record
//! fits in the file, its CRC matches, and its lsn lies in the segment's range
//! (`>= first_lsn`, `<` the next segment's `first_lsn`, `>` the previous valid
//! lsn of the segment). Recovery streams each segment once with a bounded
//! buffer and never holds more than one record in memory.
//!
//! * **Invalid record, valid one later in the segment** (mid-log damage): the
//!   bytes up to the next valid record are skipped, counted in
//!   [`RecoveryReport::corrupt_records`](crate::RecoveryReport) (one per
//!   damaged region) and `corrupt_bytes`, and logged with `tracing::warn!`.
//!   The next valid record is found by trusting the damaged record's length
//!   field if a valid record starts right after it, otherwise by scanning
//!   forward byte by byte for the record magic and validating each candidate.
//! * **Invalid bytes up to the end of the last segment** (torn write): the
//!   file is truncated to the end of the last valid record and the removed
//!   bytes are reported as `torn_tail_bytes`. The same bytes at the end of a
//!   segment that is not the last are counted as corrupt instead (invariant 2
//!   says they were once durable) and left in place.
//! * **Segment header shorter than 32 bytes or failing its CRC** — if it is
//!   the last segment and holds no valid record, it is a segment whose
//!   creation was torn: the file is deleted and its size reported as
//!   `torn_tail_bytes`. Otherwise (safe fallback) the file name is trusted for
//!   the first lsn, the header is counted as one corrupt region, records are
//!   scanned as usual, and the header of the last segment is rewritten.
//! * **Valid header, unknown version** → [`WalError::UnsupportedSegmentVersion`](crate::WalError).
//!   **Valid header whose first lsn disagrees with the file name** →
//!   [`WalError::SegmentNameMismatch`](crate::WalError).
//! * **Ack file missing** → ack position 0. **Ack file damaged** (wrong size,
//!   magic or CRC) → safe fallback: the ack position becomes the first lsn of
//!   the oldest segment, i.e. every record still on disk is delivered again
//!   (at-least-once), a warning is logged, the report's `ack_file_corrupt` is
//!   set, and the file is rewritten. **Valid ack file, unknown version** →
//!   [`WalError::UnsupportedAckVersion`](crate::WalError).
//! * Segments that are not the last and hold only lsns below the ack position
//!   are deleted; `ack.tmp` is deleted.
//! * The next lsn is the largest of: the highest valid lsn + 1, the ack
//!   position, and the first lsn of the last segment.
//! * The last segment is fdatasynced and the directory fsynced before `open`
//!   returns, so records that survived a process crash in the page cache are
//!   durable before any of them can be handed to a reader (otherwise their
//!   lsns could be reused after a later power loss).
//!
//! # Compatibility
//!
//! A change to any layout above bumps the version in the segment header
//! and/or ack file. Readers refuse versions they do not know rather than
//! guessing.

use std::path::Path;

use crate::Lsn;

/// Version of the segment and ack file formats written by this build.
pub const FORMAT_VERSION: u16 = 1;
/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"CUSTOSWL";
/// Size of the segment header in bytes.
pub const SEGMENT_HEADER_LEN: u64 = 32;
/// Magic at the start of every record.
pub const RECORD_MAGIC: u32 = 0xC057_0A11;
/// Size of a record header (magic, length, lsn, crc) in bytes.
pub const RECORD_HEADER_LEN: u64 = 20;
/// Magic at the start of the ack file.
pub const ACK_MAGIC: [u8; 8] = *b"CUSTOSAK";
/// Size of the ack file in bytes.
pub const ACK_FILE_LEN: usize = 32;
/// Name of the ack file inside the wal directory.
pub const ACK_FILE_NAME: &str = "ack";
/// Name of the temporary file an ack is written to before the rename.
pub const ACK_TMP_FILE_NAME: &str = "ack.tmp";
/// Name of the lock file inside the wal directory.
pub const LOCK_FILE_NAME: &str = "LOCK";
/// Extension of segment files.
pub const SEGMENT_EXTENSION: &str = "wal";

const HEADER_LEN: usize = SEGMENT_HEADER_LEN as usize;

/// File name of the segment whose first lsn is `first_lsn`.
pub fn segment_file_name(first_lsn: Lsn) -> String {
    format!("{first_lsn:020}.{SEGMENT_EXTENSION}")
}

/// Parses a segment file name back into its first lsn; `None` for any other name.
pub fn parse_segment_file_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

// The little-endian readers below are only given the fixed-size layouts above
// (length-checked 32-byte blocks, 20-byte record headers), so ranges are in bounds.
fn le_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(a)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Encodes a 32-byte "magic, version, value, crc" block (segment header and ack file share it).
fn encode_block(magic: &[u8; 8], value: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0..8].copy_from_slice(magic);
    b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&value.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Result of decoding a 32-byte header block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Block {
    /// Magic and CRC match; `version` may still be unknown.
    Valid { version: u16, value: u64 },
    /// Wrong length, magic or CRC.
    Damaged,
}

fn decode_block(magic: &[u8; 8], b: &[u8]) -> Block {
    if b.len() != 32 || &b[0..8] != magic || crc32c::crc32c(&b[0..28]) != le_u32(b, 28) {
        return Block::Damaged;
    }
    Block::Valid { version: le_u16(b, 8), value: le_u64(b, 16) }
}

/// Encodes a segment header.
pub(crate) fn encode_segment_header(first_lsn: Lsn) -> [u8; HEADER_LEN] {
    encode_block(&SEGMENT_MAGIC, first_lsn)
}

/// Decodes a segment header.
pub(crate) fn decode_segment_header(b: &[u8]) -> Block {
    decode_block(&SEGMENT_MAGIC, b)
}

/// Encodes the ack file contents.
pub(crate) fn encode_ack(acked: Lsn) -> [u8; ACK_FILE_LEN] {
    encode_block(&ACK_MAGIC, acked)
}

/// Decodes the ack file contents.
pub(crate) fn decode_ack(b: &[u8]) -> Block {
    decode_block(&ACK_MAGIC, b)
}

/// Encodes a record header for `payload` with `lsn`.
pub(crate) fn encode_record_header(lsn: Lsn, payload: &[u8]) -> [u8; RECORD_HEADER_LEN as usize] {
    let len = payload.len() as u32; // callers check payload.len() <= u32::MAX
    let mut h = [0u8; RECORD_HEADER_LEN as usize];
    h[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..16].copy_from_slice(&lsn.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&h[4..16]), payload);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A decoded record header (not yet checked against the payload).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordHeader {
    pub len: u32,
    pub lsn: Lsn,
    pub crc: u32,
    /// CRC-32C of the length and lsn fields, to be extended with the payload.
    pub partial_crc: u32,
}

/// Decodes a record header; `None` when the magic does not match.
pub(crate) fn decode_record_header(h: &[u8; RECORD_HEADER_LEN as usize]) -> Option<RecordHeader> {
    if le_u32(h, 0) != RECORD_MAGIC {
        return None;
    }
    Some(RecordHeader {
        len: le_u32(h, 4),
        lsn: le_u64(h, 8),
        crc: le_u32(h, 16),
        partial_crc: crc32c::crc32c(&h[4..16]),
    })
}

/// Path of the segment starting at `first_lsn` inside `dir`.
pub(crate) fn segment_path(dir: &Path, first_lsn: Lsn) -> std::path::PathBuf {
    dir.join(segment_file_name(first_lsn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_reject_other_names() {
        for lsn in [0, 1, 42, u64::MAX] {
            let name = segment_file_name(lsn);
            assert_eq!(name.len(), 24);
            assert_eq!(parse_segment_file_name(&name), Some(lsn));
        }
        for bad in ["1.wal", "0000000000000000000a.wal", "00000000000000000000.log", "99999999999999999999.wal", "ack"] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn headers_and_ack_blocks_detect_any_single_byte_change() {
        let h = encode_segment_header(77);
        assert_eq!(decode_segment_header(&h), Block::Valid { version: FORMAT_VERSION, value: 77 });
        assert_eq!(decode_ack(&h), Block::Damaged, "magics differ");
        for i in 0..h.len() {
            let mut d = h;
            d[i] ^= 0x01;
            assert_eq!(decode_segment_header(&d), Block::Damaged, "byte {i}");
        }
        assert_eq!(decode_segment_header(&h[..31]), Block::Damaged);
        assert_eq!(decode_ack(&encode_ack(5)), Block::Valid { version: FORMAT_VERSION, value: 5 });
    }

    #[test]
    fn record_headers_round_trip() {
        let h = encode_record_header(9, b"hello");
        let d = decode_record_header(&h).unwrap();
        assert_eq!((d.len, d.lsn), (5, 9));
        assert_eq!(crc32c::crc32c_append(d.partial_crc, b"hello"), d.crc);
        let mut bad = h;
        bad[0] ^= 1;
        assert!(decode_record_header(&bad).is_none());
    }
}
