//! Recovery from torn writes, damaged records and damaged metadata.

mod common;

use std::fs::{self, OpenOptions};
use std::path::Path;

use common::{ack_file, copy_dir, len_for, open_small, payload, read_all, record, segment_files, segment_header};
use custos_wal::{Wal, WalError, WalOptions};
use proptest::prelude::*;

const SEG: u64 = 2048;

/// Writes `n` records (lsn i, payload(i, len_for(i, 120))) and syncs.
fn build(dir: &Path, n: u64) {
    let (mut wal, _) = open_small(dir, SEG);
    for i in 0..n {
        wal.append(&payload(i, len_for(i, 120))).unwrap();
    }
    wal.sync().unwrap();
}

fn truncate(path: &Path, len: u64) {
    OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x5A;
    fs::write(path, bytes).unwrap();
}

fn assert_records_are(got: &[(u64, Vec<u8>)], lsns: impl IntoIterator<Item = u64>) {
    let want: Vec<u64> = lsns.into_iter().collect();
    let lsns: Vec<u64> = got.iter().map(|r| r.0).collect();
    assert_eq!(lsns, want);
    for (l, p) in got {
        assert_eq!(*p, payload(*l, len_for(*l, 120)), "payload of lsn {l}");
    }
}

#[test]
fn torn_tail_at_every_offset_of_the_last_record_is_truncated_and_reported() {
    let pristine = tempfile::tempdir().unwrap();
    build(pristine.path(), 60);
    let last_seg = segment_files(pristine.path()).pop().unwrap();
    assert!(segment_files(pristine.path()).len() > 2);
    let seg_len = last_seg.metadata().unwrap().len();
    let last_len = 20 + len_for(59, 120) as u64;
    let last_start = seg_len - last_len;
    let name = last_seg.file_name().unwrap().to_owned();

    for cut in last_start..seg_len {
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), tmp.path());
        truncate(&tmp.path().join(&name), cut);

        let (mut wal, report) = open_small(tmp.path(), SEG);
        assert_eq!(report.torn_tail_bytes, cut - last_start, "cut at {cut}");
        assert_eq!((report.corrupt_records, report.corrupt_bytes), (0, 0), "cut at {cut}");
        assert_eq!(report.records, 59);
        assert_eq!(wal.next_lsn(), 59);
        assert_eq!(tmp.path().join(&name).metadata().unwrap().len(), last_start);
        assert_records_are(&read_all(&wal, 0), 0..59);

        // New appends after recovery read back, also after another reopen.
        for i in 59..70 {
            assert_eq!(wal.append(&payload(i, len_for(i, 120))).unwrap(), i);
        }
        wal.sync().unwrap();
        assert_records_are(&read_all(&wal, 0), 0..70);
        drop(wal);
        let (wal, report) = open_small(tmp.path(), SEG);
        assert_eq!((report.torn_tail_bytes, report.corrupt_records, report.records), (0, 0, 70));
        assert_records_are(&read_all(&wal, 0), 0..70);
    }
}

#[test]
fn a_damaged_byte_anywhere_in_a_middle_record_skips_only_that_record() {
    let pristine = tempfile::tempdir().unwrap();
    let (mut wal, _) = open_small(pristine.path(), 1 << 20);
    for i in 0..10u64 {
        wal.append(&payload(i, len_for(i, 120))).unwrap();
    }
    wal.sync().unwrap();
    drop(wal);
    let seg = segment_files(pristine.path()).pop().unwrap();
    let name = seg.file_name().unwrap().to_owned();
    let mut start = 32u64;
    for i in 0..4 {
        start += 20 + len_for(i, 120) as u64;
    }
    let rec_len = 20 + len_for(4, 120) as u64;

    for offset in start..start + rec_len {
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), tmp.path());
        flip(&tmp.path().join(&name), offset);
        let (mut wal, report) = open_small(tmp.path(), 1 << 20);
        assert_eq!(report.corrupt_records, 1, "flip at {offset}");
        assert_eq!(report.corrupt_bytes, rec_len, "flip at {offset}");
        assert_eq!(report.torn_tail_bytes, 0);
        assert_eq!(report.records, 9);
        assert_eq!(wal.next_lsn(), 10);
        // Known damage is skipped silently by readers.
        assert_records_are(&read_all(&wal, 0), (0..4).chain(5..10));
        wal.append(b"new").unwrap();
        wal.sync().unwrap();
        assert_eq!(read_all(&wal, 5).last().unwrap(), &(10, b"new".to_vec()));
    }
}

#[test]
fn a_garbled_length_field_resyncs_on_the_next_record_magic() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path(), 10);
    let seg = segment_files(tmp.path()).remove(0);
    // Record 1 starts after record 0; give it a length that points mid-payload of record 2.
    let start = 32 + 20 + len_for(0, 120) as u64;
    let mut bytes = fs::read(&seg).unwrap();
    bytes[start as usize + 4..start as usize + 8].copy_from_slice(&7u32.to_le_bytes());
    fs::write(&seg, bytes).unwrap();
    let (wal, report) = open_small(tmp.path(), SEG);
    assert_eq!(report.corrupt_records, 1);
    assert_eq!(report.corrupt_bytes, 20 + len_for(1, 120) as u64);
    assert_records_are(&read_all(&wal, 0), std::iter::once(0).chain(2..10));
}

#[test]
fn damage_at_the_end_of_a_sealed_segment_is_corruption_not_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path(), 60);
    let first = segment_files(tmp.path()).remove(0);
    let len = first.metadata().unwrap().len();
    flip(&first, len - 1);
    let (wal, report) = open_small(tmp.path(), SEG);
    assert_eq!(report.corrupt_records, 1);
    assert_eq!(report.torn_tail_bytes, 0);
    assert_eq!(first.metadata().unwrap().len(), len, "sealed segments are never truncated");
    let got = read_all(&wal, 0);
    assert_eq!(got.len(), 59);
}

#[test]
fn damage_that_appears_after_open_is_reported_by_the_reader_and_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open_small(tmp.path(), 1 << 20);
    for i in 0..5u64 {
        wal.append(&payload(i, len_for(i, 120))).unwrap();
    }
    wal.sync().unwrap();
    let seg = segment_files(tmp.path()).pop().unwrap();
    flip(&seg, 32 + 20 + len_for(0, 120) as u64 + 20); // payload of record 1
    let items: Vec<_> = wal.read_from(0).unwrap().collect();
    assert_eq!(items.len(), 5);
    assert!(matches!(&items[1], Err(WalError::CorruptRecord { offset, .. }) if *offset == 32 + 20 + len_for(0, 120) as u64));
    assert!(items[1].as_ref().unwrap_err().to_string().contains(".wal at offset"));
    let ok: Vec<u64> = items.iter().filter_map(|r| r.as_ref().ok().map(|r| r.0)).collect();
    assert_eq!(ok, vec![0, 2, 3, 4]);
}

#[test]
fn a_torn_header_of_the_last_segment_removes_that_segment() {
    for header_bytes in [0u64, 1, 17, 31, 32] {
        let tmp = tempfile::tempdir().unwrap();
        build(tmp.path(), 60);
        let next = 60u64;
        let path = tmp.path().join(format!("{next:020}.wal"));
        let mut h = segment_header(next, 1);
        h.truncate(header_bytes as usize);
        if header_bytes == 32 {
            h[30] ^= 1; // complete but failing its crc
        }
        fs::write(&path, &h).unwrap();
        let (mut wal, report) = open_small(tmp.path(), SEG);
        assert_eq!(report.torn_tail_bytes, header_bytes);
        assert_eq!(report.corrupt_records, 0);
        assert!(!path.exists());
        assert_eq!(wal.next_lsn(), 60);
        assert_records_are(&read_all(&wal, 0), 0..60);
        wal.append(&payload(60, len_for(60, 120))).unwrap();
        wal.sync().unwrap();
        assert_records_are(&read_all(&wal, 0), 0..61);
    }
}

#[test]
fn a_damaged_segment_header_with_records_falls_back_to_the_file_name() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path(), 60);
    let segs = segment_files(tmp.path());
    flip(&segs[1], 3); // a middle segment
    flip(segs.last().unwrap(), 20); // the active segment
    let (mut wal, report) = open_small(tmp.path(), SEG);
    assert_eq!(report.corrupt_records, 2);
    assert_eq!(report.corrupt_bytes, 64);
    assert_records_are(&read_all(&wal, 0), 0..60);
    wal.append(&payload(60, len_for(60, 120))).unwrap();
    wal.sync().unwrap();
    drop(wal);
    // The active segment's header was rewritten; the middle one stays damaged.
    let (wal, report) = open_small(tmp.path(), SEG);
    assert_eq!(report.corrupt_records, 1);
    assert_records_are(&read_all(&wal, 0), 0..61);
}

#[test]
fn unknown_segment_versions_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path(), 3);
    let seg = segment_files(tmp.path()).remove(0);
    let mut bytes = fs::read(&seg).unwrap();
    bytes[..32].copy_from_slice(&segment_header(0, 2));
    fs::write(&seg, bytes).unwrap();
    let err = Wal::open(WalOptions::new(tmp.path())).unwrap_err();
    assert!(matches!(err, WalError::UnsupportedSegmentVersion { version: 2, supported: 1, .. }), "{err}");
    assert!(err.to_string().contains("00000000000000000000.wal"), "{err}");
}

#[test]
fn a_header_contradicting_the_file_name_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path(), 3);
    let seg = segment_files(tmp.path()).remove(0);
    let mut bytes = fs::read(&seg).unwrap();
    bytes[..32].copy_from_slice(&segment_header(7, 1));
    fs::write(&seg, bytes).unwrap();
    let err = Wal::open(WalOptions::new(tmp.path())).unwrap_err();
    assert!(matches!(err, WalError::SegmentNameMismatch { header_lsn: 7, name_lsn: 0, .. }), "{err}");
}

#[test]
fn unknown_ack_file_versions_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path(), 3);
    fs::write(tmp.path().join("ack"), ack_file(1, 9)).unwrap();
    let err = Wal::open(WalOptions::new(tmp.path())).unwrap_err();
    assert!(matches!(err, WalError::UnsupportedAckVersion { version: 9, .. }), "{err}");
}

#[test]
fn a_damaged_ack_file_redelivers_everything_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path(), 60);
    {
        let (mut wal, _) = open_small(tmp.path(), SEG);
        wal.ack(40).unwrap();
    }
    let first_kept: u64 = segment_files(tmp.path())[0].file_stem().unwrap().to_str().unwrap().parse().unwrap();
    assert!(first_kept > 0 && first_kept <= 40);
    let mut ack = fs::read(tmp.path().join("ack")).unwrap();
    ack[17] ^= 0xFF;
    fs::write(tmp.path().join("ack"), ack).unwrap();
    fs::write(tmp.path().join("ack.tmp"), b"half-written").unwrap();

    let (wal, report) = open_small(tmp.path(), SEG);
    assert!(report.ack_file_corrupt);
    assert_eq!(wal.acked_lsn(), first_kept);
    assert_records_are(&read_all(&wal, 0), first_kept..60);
    assert!(!tmp.path().join("ack.tmp").exists());
    drop(wal);
    // The ack file was rewritten.
    let (_, report) = open_small(tmp.path(), SEG);
    assert!(!report.ack_file_corrupt);
}

#[test]
fn unknown_files_in_the_directory_are_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path(), 5);
    fs::write(tmp.path().join("notes.txt"), b"hello").unwrap();
    fs::write(tmp.path().join("123.wal"), b"not a segment name").unwrap();
    let (wal, report) = open_small(tmp.path(), SEG);
    assert_eq!(report.records, 5);
    assert_records_are(&read_all(&wal, 0), 0..5);
}

/// Builds segment file contents from a recipe.
fn segment_bytes(first_lsn: u64, kind: u8, raw: &[u8], lsn_jitter: u64) -> Vec<u8> {
    match kind % 3 {
        0 => raw.to_vec(),
        1 => {
            let mut v = segment_header(first_lsn, 1);
            v.extend_from_slice(raw);
            v
        }
        _ => {
            // Valid header, a few valid records, then the raw bytes, then another record.
            let mut v = segment_header(first_lsn, 1);
            for k in 0..3 {
                v.extend_from_slice(&record(first_lsn + k * lsn_jitter, &raw[..raw.len().min(k as usize * 7)]));
            }
            v.extend_from_slice(raw);
            v.extend_from_slice(&record(first_lsn + 5, raw));
            v
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn garbage_segment_files_never_panic(
        files in proptest::collection::vec((0u64..40, any::<u8>(), proptest::collection::vec(any::<u8>(), 0..600), 0u64..3), 1..5),
        ack in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        ack_lsn in proptest::option::of(0u64..60),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        for (lsn, kind, raw, jitter) in &files {
            fs::write(tmp.path().join(format!("{lsn:020}.wal")), segment_bytes(*lsn, *kind, raw, *jitter)).unwrap();
        }
        if let Some(a) = &ack {
            fs::write(tmp.path().join("ack"), a).unwrap();
        } else if let Some(a) = ack_lsn {
            fs::write(tmp.path().join("ack"), ack_file(a, 1)).unwrap();
        }
        if let Ok((mut wal, _report)) = Wal::open(WalOptions::new(tmp.path()).with_segment_bytes(512)) {
            let mut last = None;
            for r in wal.read_from(0).unwrap() {
                let (lsn, _) = r.unwrap();
                prop_assert!(last.is_none_or(|l| lsn > l));
                prop_assert!(lsn >= wal.acked_lsn());
                last = Some(lsn);
            }
            let lsn = wal.append(b"after garbage").unwrap();
            wal.sync().unwrap();
            let got: Vec<_> = wal.read_from(lsn).unwrap().map(|r| r.unwrap()).collect();
            prop_assert_eq!(got, vec![(lsn, b"after garbage".to_vec())]);
            drop(wal);
            let (wal, _) = Wal::open(WalOptions::new(tmp.path()).with_segment_bytes(512)).unwrap();
            prop_assert!(wal.read_from(lsn).unwrap().map(|r| r.unwrap()).any(|(l, p)| l == lsn && p == b"after garbage"));
        }
    }

    #[test]
    fn random_damage_to_a_valid_log_never_yields_wrong_records(
        n in 1u64..80,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..6),
        truncate_to in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        build(tmp.path(), n);
        let segs = segment_files(tmp.path());
        let total: u64 = segs.iter().map(|p| p.metadata().unwrap().len()).sum();
        for (idx, mask) in &flips {
            let mut at = idx.index(total as usize) as u64;
            for p in &segs {
                let len = p.metadata().unwrap().len();
                if at < len {
                    let mut b = fs::read(p).unwrap();
                    b[at as usize] ^= mask;
                    fs::write(p, b).unwrap();
                    break;
                }
                at -= len;
            }
        }
        if let Some(t) = truncate_to {
            let last = segs.last().unwrap();
            let len = last.metadata().unwrap().len();
            truncate(last, t.index(len as usize + 1) as u64);
        }
        let (mut wal, report) = open_small(tmp.path(), SEG);
        prop_assert!(report.corrupt_records <= flips.len() as u64);
        let mut last = None;
        for r in wal.read_from(0).unwrap() {
            let (l, p) = r.unwrap();
            prop_assert!(last.is_none_or(|x| l > x));
            prop_assert_eq!(p, payload(l, len_for(l, 120)));
            last = Some(l);
        }
        let lsn = wal.append(b"ok").unwrap();
        prop_assert!(last.is_none_or(|x| lsn > x));
        wal.sync().unwrap();
        prop_assert_eq!(read_all(&wal, lsn), vec![(lsn, b"ok".to_vec())]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// `open_with` visits exactly the records a reader returns after the
    /// open, whatever damage recovery met: a flipped byte anywhere, a torn
    /// tail, an ack position in the middle.
    #[test]
    fn open_with_visits_exactly_what_read_from_returns(n in 1u64..60, flip_at in any::<u64>(), cut in any::<u64>(), ack in any::<u64>()) {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (mut wal, _) = open_small(tmp.path(), SEG);
            for i in 0..n {
                wal.append(&payload(i, len_for(i, 120))).unwrap();
            }
            wal.sync().unwrap();
            wal.ack(ack % (n + 1)).unwrap();
        }
        let segs = segment_files(tmp.path());
        let victim = &segs[(flip_at as usize) % segs.len()];
        let len = fs::metadata(victim).unwrap().len();
        flip(victim, flip_at % len);
        let last = segs.last().unwrap();
        let last_len = fs::metadata(last).unwrap().len();
        truncate(last, last_len - (cut % 40).min(last_len));
        let mut visited = Vec::new();
        let (wal, _) = Wal::open_with(WalOptions::new(tmp.path()).with_segment_bytes(SEG), &mut |l, p| visited.push((l, p.to_vec()))).unwrap();
        prop_assert_eq!(visited, read_all(&wal, 0));
    }
}
