//! Append / sync / read / ack behaviour on a healthy log.

mod common;

use common::{len_for, open_small, payload, read_all, segment_files};
use custos_wal::{Wal, WalError, WalOptions};

#[test]
fn round_trip_across_segment_rolls_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, report) = open_small(tmp.path(), 4096);
    assert_eq!(report.segments, 1);
    assert_eq!(report.records, 0);
    for i in 0..500u64 {
        let lsn = wal.append(&payload(i, len_for(i, 300))).unwrap();
        assert_eq!(lsn, i);
        if i % 37 == 0 {
            wal.sync().unwrap();
        }
    }
    wal.sync().unwrap();
    assert!(wal.segment_count() > 5, "expected several rolls, got {}", wal.segment_count());
    let on_disk: u64 = segment_files(tmp.path()).iter().map(|p| p.metadata().unwrap().len()).sum();
    assert_eq!(wal.disk_bytes(), on_disk);
    for (seg, _) in segment_files(tmp.path()).iter().zip(0..) {
        assert!(seg.metadata().unwrap().len() <= 4096);
    }
    let got = read_all(&wal, 0);
    assert_eq!(got.len(), 500);
    for (i, (lsn, p)) in got.iter().enumerate() {
        assert_eq!(*lsn, i as u64);
        assert_eq!(*p, payload(*lsn, len_for(*lsn, 300)));
    }
    // Reading from the middle starts exactly there.
    let mid: Vec<_> = read_all(&wal, 321).into_iter().map(|(l, _)| l).collect();
    assert_eq!(mid, (321..500).collect::<Vec<_>>());
    let segments = wal.segment_count();
    drop(wal);

    let (mut wal, report) = open_small(tmp.path(), 4096);
    assert_eq!(report.segments, segments);
    assert_eq!(report.records, 500);
    assert_eq!((report.torn_tail_bytes, report.corrupt_records, report.corrupt_bytes), (0, 0, 0));
    assert_eq!(wal.next_lsn(), 500);
    assert_eq!(wal.append(b"after reopen").unwrap(), 500);
    wal.sync().unwrap();
    let got = read_all(&wal, 0);
    assert_eq!(got.len(), 501);
    assert_eq!(got[500], (500, b"after reopen".to_vec()));
}

#[test]
fn empty_and_large_payloads_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open_small(tmp.path(), 64 * 1024);
    let big = payload(1, 1_000_000); // larger than a segment and than the read buffer
    wal.append(b"").unwrap();
    wal.append(&big).unwrap();
    wal.append(b"x").unwrap();
    wal.sync().unwrap();
    let got = read_all(&wal, 0);
    assert_eq!(got, vec![(0, vec![]), (1, big.clone()), (2, b"x".to_vec())]);
    drop(wal);
    let (wal, report) = open_small(tmp.path(), 64 * 1024);
    assert_eq!(report.records, 3);
    assert_eq!(read_all(&wal, 1)[0].1, big);
}

#[test]
fn opening_an_empty_or_missing_directory_creates_a_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b/wal");
    let (wal, report) = Wal::open(WalOptions::new(&dir)).unwrap();
    assert_eq!(report, custos_wal::RecoveryReport { segments: 1, ..Default::default() });
    assert_eq!((wal.next_lsn(), wal.acked_lsn()), (0, 0));
    assert_eq!(wal.read_from(0).unwrap().count(), 0);
    assert_eq!(segment_files(&dir).len(), 1);
    drop(wal);
    let (wal, report) = Wal::open(WalOptions::new(&dir)).unwrap();
    assert_eq!(report.segments, 1);
    assert_eq!(wal.next_lsn(), 0);
}

#[test]
fn ack_deletes_fully_consumed_segments_and_consumed_records_are_not_replayed_after_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open_small(tmp.path(), 1024);
    for i in 0..200u64 {
        wal.append(&payload(i, 100)).unwrap();
    }
    wal.sync().unwrap();
    let before = segment_files(tmp.path()).len();
    assert!(before > 10);
    let bytes_before = wal.disk_bytes();

    wal.ack(150).unwrap();
    assert_eq!(wal.acked_lsn(), 150);
    let after = segment_files(tmp.path()).len();
    assert!(after < before, "no segment deleted ({before} -> {after})");
    assert!(wal.disk_bytes() < bytes_before);
    // Every remaining segment but the last still holds an unconsumed record.
    let firsts: Vec<u64> = segment_files(tmp.path())
        .iter()
        .map(|p| p.file_stem().unwrap().to_str().unwrap().parse().unwrap())
        .collect();
    assert!(firsts[1] > 150, "segment {} only held consumed records", firsts[0]);

    let got: Vec<_> = read_all(&wal, 0).into_iter().map(|(l, _)| l).collect();
    assert_eq!(got, (150..200).collect::<Vec<_>>());
    // Acking backwards is a no-op; acking past the end is refused.
    wal.ack(10).unwrap();
    assert_eq!(wal.acked_lsn(), 150);
    assert!(matches!(wal.ack(201), Err(WalError::AckBeyondEnd { upto: 201, next_lsn: 200 })));
    drop(wal);

    let (mut wal, report) = open_small(tmp.path(), 1024);
    assert_eq!(report.records, 50);
    assert_eq!(wal.acked_lsn(), 150);
    let got = read_all(&wal, 0);
    assert_eq!(got.first().map(|r| r.0), Some(150));
    assert!(got.iter().all(|(l, p)| *p == payload(*l, 100)));

    // Ack everything: only the active segment stays, and lsns keep counting.
    wal.ack(200).unwrap();
    assert_eq!(segment_files(tmp.path()).len(), 1);
    assert_eq!(wal.read_from(0).unwrap().count(), 0);
    drop(wal);
    let (mut wal, report) = open_small(tmp.path(), 1024);
    assert_eq!(report.records, 0);
    assert_eq!(wal.next_lsn(), 200);
    assert_eq!(wal.append(b"z").unwrap(), 200);
}

#[test]
fn lsns_continue_from_the_ack_position_when_it_is_ahead_of_the_records() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open_small(tmp.path(), 1024);
    for i in 0..5u64 {
        wal.append(&payload(i, 10)).unwrap();
    }
    // Ack records that were never synced, then crash losing them.
    wal.ack(5).unwrap();
    let seg = segment_files(tmp.path()).pop().unwrap();
    drop(wal);
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(32).unwrap();
    let (mut wal, report) = open_small(tmp.path(), 1024);
    assert_eq!(report.records, 0);
    assert_eq!(wal.next_lsn(), 5);
    assert_eq!(wal.append(b"next").unwrap(), 5);
}

#[test]
fn readers_see_synced_records_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open_small(tmp.path(), 1 << 20);
    wal.append(b"a").unwrap();
    wal.sync().unwrap();
    wal.append(b"b").unwrap();
    let got = read_all(&wal, 0);
    assert_eq!(got, vec![(0, b"a".to_vec())]);
    wal.sync().unwrap();
    assert_eq!(read_all(&wal, 0).len(), 2);
}

#[test]
fn a_reader_survives_acks_that_delete_its_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open_small(tmp.path(), 512);
    for i in 0..100u64 {
        wal.append(&payload(i, 50)).unwrap();
    }
    wal.sync().unwrap();
    let mut reader = wal.read_from(0).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().0, 0);
    wal.ack(90).unwrap();
    // Records of deleted segments that the reader had not reached are skipped,
    // everything returned is still correct and in order.
    let rest: Vec<_> = reader.map(|r| r.unwrap()).collect();
    assert!(rest.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(rest.iter().all(|(l, p)| *p == payload(*l, 50)));
    assert_eq!(rest.last().unwrap().0, 99);
}

#[test]
fn appends_larger_than_max_record_bytes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(WalOptions::new(tmp.path()).with_max_record_bytes(100)).unwrap();
    assert!(matches!(wal.append(&[0u8; 101]), Err(WalError::RecordTooLarge { len: 101, max: 100 })));
    assert_eq!(wal.append(&[0u8; 100]).unwrap(), 0);
    assert_eq!(wal.next_lsn(), 1);
}

#[test]
fn a_second_writer_on_the_same_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalOptions::new(tmp.path())).unwrap();
    let err = Wal::open(WalOptions::new(tmp.path())).unwrap_err();
    assert!(matches!(err, WalError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("LOCK"));
    drop(wal);
    Wal::open(WalOptions::new(tmp.path())).unwrap();
}

#[test]
fn tiny_segment_sizes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Wal::open(WalOptions::new(tmp.path()).with_segment_bytes(10)).unwrap_err();
    assert!(matches!(err, WalError::InvalidOptions(_)));
}
