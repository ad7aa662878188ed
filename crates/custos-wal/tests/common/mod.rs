//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use custos_wal::{Lsn, Wal, WalOptions};

/// Deterministic payload for `lsn` with `len` bytes.
pub fn payload(lsn: Lsn, len: usize) -> Vec<u8> {
    let mut x = lsn.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (len as u64).wrapping_mul(0xD1B5_4A32_D192_ED03) ^ 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Payload length derived from the lsn, between 0 and `max`.
pub fn len_for(lsn: Lsn, max: usize) -> usize {
    ((lsn.wrapping_mul(7919) ^ (lsn >> 3)) % (max as u64 + 1)) as usize
}

/// Opens a wal with small segments.
pub fn open_small(dir: &Path, segment_bytes: u64) -> (Wal, custos_wal::RecoveryReport) {
    Wal::open(WalOptions::new(dir).with_segment_bytes(segment_bytes)).expect("open wal")
}

/// Reads every unconsumed record, panicking on any error.
pub fn read_all(wal: &Wal, from: Lsn) -> Vec<(Lsn, Vec<u8>)> {
    wal.read_from(from).expect("read_from").map(|r| r.expect("record")).collect()
}

/// Segment files in `dir`, oldest first.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

/// Copies the regular files of `from` into `to` (created).
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for e in fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_file() {
            fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

/// A segment header with a valid checksum (format version `version`).
pub fn segment_header(first_lsn: Lsn, version: u16) -> Vec<u8> {
    let mut b = vec![0u8; 32];
    b[0..8].copy_from_slice(b"CUSTOSWL");
    b[8..10].copy_from_slice(&version.to_le_bytes());
    b[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

/// An ack file with a valid checksum.
pub fn ack_file(acked: Lsn, version: u16) -> Vec<u8> {
    let mut b = segment_header(acked, version);
    b[0..8].copy_from_slice(b"CUSTOSAK");
    let crc = crc32c::crc32c(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

/// A framed record.
pub fn record(lsn: Lsn, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + payload.len());
    b.extend_from_slice(&0xC057_0A11u32.to_le_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(&lsn.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&b[4..16]), payload);
    b.extend_from_slice(&crc.to_le_bytes());
    b.extend_from_slice(payload);
    b
}
