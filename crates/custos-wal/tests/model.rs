//! Model-based test: random append / sync / ack / reopen / crash sequences
//! checked against a plain in-memory model.

mod common;

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::path::Path;

use common::{payload, segment_files};
use custos_wal::{Lsn, Wal, WalOptions};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    Sync,
    /// Ack a fraction (per mille) of the way from the ack position to the end.
    Ack(u16),
    /// Drop the wal without syncing (buffered records reach the OS) and reopen.
    Reopen,
    /// Drop the wal, then lose a suffix of the bytes written since the last
    /// sync (the cut point is a per-mille fraction of them), and reopen.
    Crash(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..400).prop_map(Op::Append),
        2 => Just(Op::Sync),
        1 => (0u16..=1000).prop_map(Op::Ack),
        1 => Just(Op::Reopen),
        1 => (0u16..=1000).prop_map(Op::Crash),
    ]
}

struct Model {
    /// Appended, not acked records, in lsn order.
    records: Vec<(Lsn, Vec<u8>)>,
    /// Records with a lower lsn were synced.
    synced_upto: Lsn,
    acked: Lsn,
    /// Segment file name -> length right after the last sync.
    snapshot: HashMap<String, u64>,
}

fn snapshot(dir: &Path) -> HashMap<String, u64> {
    segment_files(dir)
        .into_iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p.metadata().unwrap().len()))
        .collect()
}

/// Loses a suffix of the bytes written since the last sync: the unsynced
/// bytes form one sequence (the tail of the newest file that existed at the
/// sync, then every file created since); everything after the cut goes.
fn lose_unsynced_suffix(dir: &Path, snap: &HashMap<String, u64>, per_mille: u16) {
    let files = segment_files(dir);
    let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let first_unsynced = names.iter().rposition(|n| snap.contains_key(n)).unwrap_or(0);
    // (file index, start of its unsynced part, its current length)
    let mut parts = Vec::new();
    let mut total = 0u64;
    for (i, p) in files.iter().enumerate().skip(first_unsynced) {
        let len = p.metadata().unwrap().len();
        let from = snap.get(&names[i]).copied().unwrap_or(0).min(len);
        parts.push((i, from, len));
        total += len - from;
    }
    let mut keep = total * u64::from(per_mille) / 1000;
    for (i, from, len) in parts {
        let avail = len - from;
        if keep >= avail {
            keep -= avail;
            continue;
        }
        let f = OpenOptions::new().write(true).open(&files[i]).unwrap();
        if keep == 0 && from == 0 && i != first_unsynced {
            // Files entirely past the cut vanish (or, at the cut itself, stay empty).
            drop(f);
            fs::remove_file(&files[i]).unwrap();
        } else {
            f.set_len(from + keep).unwrap();
        }
        keep = 0;
    }
}

fn opts(dir: &Path, seg: u64) -> WalOptions {
    WalOptions::new(dir).with_segment_bytes(seg)
}

fn read_all(wal: &Wal) -> Vec<(Lsn, Vec<u8>)> {
    wal.read_from(0).unwrap().map(|r| r.unwrap()).collect()
}

fn run(ops: Vec<Op>, seg: u64) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (wal, _) = Wal::open(opts(dir, seg)).unwrap();
    let mut wal = Some(wal);
    let mut m = Model { records: Vec::new(), synced_upto: 0, acked: 0, snapshot: snapshot(dir) };
    let mut salt = 0u64;

    for op in ops {
        let w = wal.as_mut().unwrap();
        match op {
            Op::Append(len) => {
                salt += 1;
                let p = payload(salt, len);
                let lsn = w.append(&p).unwrap();
                prop_assert_eq!(lsn, m.records.last().map_or(m.acked.max(lsn), |r| r.0 + 1));
                m.records.push((lsn, p));
            }
            Op::Sync => {
                w.sync().unwrap();
                m.synced_upto = w.next_lsn();
                m.snapshot = snapshot(dir);
                let on_disk: u64 = m.snapshot.values().sum();
                prop_assert_eq!(w.disk_bytes(), on_disk);
                // A reader sees exactly the unconsumed synced records.
                prop_assert_eq!(read_all(w), m.records.clone());
                let mid = m.records.get(m.records.len() / 2).map_or(0, |r| r.0);
                let tail: Vec<_> = w.read_from(mid).unwrap().map(|r| r.unwrap()).collect();
                prop_assert_eq!(tail, m.records[m.records.len() / 2..].to_vec());
            }
            Op::Ack(per_mille) => {
                let upto = m.acked + (w.next_lsn() - m.acked) * u64::from(per_mille) / 1000;
                w.ack(upto).unwrap();
                m.acked = m.acked.max(upto);
                prop_assert_eq!(w.acked_lsn(), m.acked);
                m.records.retain(|r| r.0 >= m.acked);
            }
            Op::Reopen => {
                drop(wal.take());
                let (w, report) = Wal::open(opts(dir, seg)).unwrap();
                prop_assert_eq!((report.torn_tail_bytes, report.corrupt_records), (0, 0));
                prop_assert_eq!(report.records, m.records.len() as u64);
                prop_assert_eq!(w.acked_lsn(), m.acked);
                // Nothing synced or not is lost by a clean process exit.
                prop_assert_eq!(read_all(&w), m.records.clone());
                m.synced_upto = w.next_lsn();
                m.snapshot = snapshot(dir);
                wal = Some(w);
            }
            Op::Crash(per_mille) => {
                let old_next = w.next_lsn();
                drop(wal.take());
                lose_unsynced_suffix(dir, &m.snapshot, per_mille);
                let (w, report) = Wal::open(opts(dir, seg)).unwrap();
                prop_assert_eq!(report.corrupt_records, 0, "a lost suffix is a torn tail, not corruption");
                prop_assert_eq!(w.acked_lsn(), m.acked);
                let got = read_all(&w);
                // Every synced, unacked record is there exactly once, in order,
                // followed by a prefix of the unsynced ones.
                let durable = m.records.iter().filter(|r| r.0 < m.synced_upto).count();
                prop_assert!(got.len() >= durable, "lost synced records: got {} want >= {}", got.len(), durable);
                prop_assert_eq!(&got[..], &m.records[..got.len()]);
                prop_assert_eq!(report.records, got.len() as u64);
                prop_assert!(w.next_lsn() >= m.synced_upto.max(m.acked));
                prop_assert!(w.next_lsn() <= old_next);
                m.records = got;
                m.synced_upto = w.next_lsn();
                m.snapshot = snapshot(dir);
                wal = Some(w);
            }
        }
    }
    // Final check: a clean reopen returns exactly the model after a sync.
    let mut w = wal.take().unwrap();
    w.sync().unwrap();
    drop(w);
    let (w, _) = Wal::open(opts(dir, seg)).unwrap();
    prop_assert_eq!(read_all(&w), m.records);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_append_sync_ack_reopen_crash_sequences_match_the_model(
        ops in proptest::collection::vec(op(), 1..80),
        seg in prop_oneof![Just(64u64), 300u64..2000, Just(1u64 << 20)],
    ) {
        run(ops, seg)?;
    }
}
