//! End-to-end tests of the audit log: appends, recovery, tampering,
//! truncation, proofs, pruning, poisoning.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use custos_audit::merkle::leaf_hash;
use custos_audit::*;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn rec(i: u64, time: i64) -> AuditRecord {
    let ws = format!("00000000-0000-4000-8000-{:012}", i % 3);
    AuditRecord {
        time,
        principal: Some(format!("agent:{i}")),
        role: "agent".into(),
        action: "workspace.ingest".into(),
        target: format!("/v1/workspaces/{ws}/ingest"),
        workspace: Some(ws),
        outcome: "ok".into(),
        status: 200,
        request_id: format!("req-{i}"),
        client: "10.0.0.1:4433".into(),
        grant: None,
        details: BTreeMap::from([("rows".to_string(), i.to_string())]),
    }
}

fn opts(dir: &Path) -> AuditOptions {
    AuditOptions {
        segment_bytes: 4096,
        checkpoint_interval: Duration::from_secs(3600),
        ..AuditOptions::new(dir)
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("seg-"))
        .collect();
    v.sort();
    v
}

/// (path, offset, len, seq) of every record line (LF included).
fn record_lines(dir: &Path) -> Vec<(PathBuf, usize, usize, u64)> {
    let mut out = Vec::new();
    for p in segments(dir) {
        let name = p.file_name().unwrap().to_str().unwrap();
        let first: u64 = name[4..24].parse().unwrap();
        let bytes = fs::read(&p).unwrap();
        let mut off = 0;
        for (idx, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
            if idx > 0 {
                out.push((p.clone(), off, line.len(), first + idx as u64 - 1));
            }
            off += line.len();
        }
    }
    out
}

fn write_log(dir: &Path, n: u64, checkpoint_every: u64) {
    let (log, _) = AuditLog::open(opts(dir), key()).unwrap();
    for i in 0..n {
        assert_eq!(log.append_blocking(rec(i, 1_000 + i as i64)).unwrap(), i);
        if (i + 1) % checkpoint_every == 0 {
            log.checkpoint_blocking().unwrap().unwrap();
        }
    }
    log.close_blocking().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_durable_chained_and_group_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let (log, info) = AuditLog::open(AuditOptions::new(&dir), key()).unwrap();
    assert!(info.created);
    let log = Arc::new(log);
    let mut tasks = Vec::new();
    for t in 0..32u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..50u64 {
                seqs.push(log.append(rec(t * 1000 + i, i as i64)).await.unwrap());
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (0..1600).collect::<Vec<_>>());
    assert_eq!(log.next_seq(), 1600);
    let stats = log.stats();
    assert_eq!(stats.records, 1600);
    assert!(stats.commits < 1600, "no group commit happened: {stats:?}");
    let log = Arc::into_inner(log).unwrap();
    log.close().await.unwrap();

    let report = verify(&dir, &key().verifying_key()).unwrap();
    assert_eq!(report.records_checked, 1600);
    assert_eq!((report.first_seq, report.last_seq), (Some(0), Some(1599)));
    assert_eq!(report.last_checkpoint.as_ref().unwrap().size, 1600);
    assert_eq!(report.unsigned_records, 0);
    assert!(!report.incomplete_tail);

    let reader = AuditReader::open(&dir).unwrap();
    let recs: Vec<StoredRecord> = reader.records(0).unwrap().map(Result::unwrap).collect();
    assert_eq!(recs.len(), 1600);
    for w in recs.windows(2) {
        assert_eq!(w[1].prev, w[0].hash);
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
    let ws = "00000000-0000-4000-8000-000000000001".to_string();
    let listed = reader
        .list(&RecordFilter {
            workspace: Some(ws.clone()),
            since: Some(10),
            until: Some(20),
            from_seq: 0,
            limit: Some(7),
        })
        .unwrap();
    assert_eq!(listed.len(), 7);
    assert!(listed
        .iter()
        .all(|r| r.record.workspace.as_ref() == Some(&ws) && (10..20).contains(&r.record.time)));
    let page = reader
        .list(&RecordFilter {
            from_seq: 1590,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        page.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1590..1600).collect::<Vec<_>>()
    );
}

#[test]
fn reopen_continues_the_chain_and_the_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_log(dir, 40, 1000);
    assert!(segments(dir).len() > 2, "small segments rotate");
    let (log, info) = AuditLog::open(opts(dir), key()).unwrap();
    assert_eq!(info.next_seq, 40);
    assert_eq!(info.last_checkpoint.as_ref().unwrap().size, 40);
    assert_eq!((info.truncated_bytes, info.torn_seq), (0, None));
    assert_eq!(log.append_blocking(rec(40, 2000)).unwrap(), 40);
    assert_eq!(log.checkpoint_blocking().unwrap().unwrap().size, 41);
    assert_eq!(
        log.checkpoint_blocking().unwrap(),
        None,
        "nothing new to sign"
    );
    log.close_blocking().unwrap();
    let r = verify(dir, &key().verifying_key()).unwrap();
    assert_eq!((r.records_checked, r.checkpoints_checked), (41, 2));
}

#[test]
fn a_second_writer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (_log, _) = AuditLog::open(opts(tmp.path()), key()).unwrap();
    assert!(matches!(
        AuditLog::open(opts(tmp.path()), key()),
        Err(AuditError::Locked { .. })
    ));
}

#[test]
fn a_different_signing_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(tmp.path(), 3, 1000);
    let other = SigningKey::from_bytes(&[7; 32]);
    let err = AuditLog::open(opts(tmp.path()), other).unwrap_err();
    assert!(
        matches!(err, AuditError::ForeignCheckpoint { size: 3, .. }),
        "{err}"
    );
    let err = verify(
        tmp.path(),
        &SigningKey::from_bytes(&[7; 32]).verifying_key(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err.damage(),
            Some(Damage::CheckpointSignature { line: 1, .. })
        ),
        "{err}"
    );
}

#[test]
fn every_one_byte_change_names_the_damaged_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Only the final checkpoint (Ed25519 is slow in debug builds); it covers
    // the last line, so that line's newline must be there.
    write_log(dir, 30, 1000);
    let lines = record_lines(dir);
    assert_eq!(lines.len(), 30);
    assert!(segments(dir).len() >= 3);
    let vk = key().verifying_key();
    verify(dir, &vk).unwrap();

    let mut checked = 0;
    for (path, off, len, seq) in &lines {
        // Every byte of the first record, a middle one, the last record of
        // each segment and the very last; a stride of positions elsewhere.
        let last_in_segment =
            lines.iter().filter(|l| &l.0 == path).map(|l| l.3).max() == Some(*seq);
        let every = *seq == 0 || *seq == 13 || *seq == 29 || last_in_segment;
        // (position, mask): every byte with one mask on the chosen lines,
        // other masks at a stride, plus the tab and the newline everywhere.
        let mut flips: Vec<(usize, u8)> = Vec::new();
        for pos in 0..*len {
            if every {
                flips.push((pos, 0x01));
            }
            let stride = if every { 5 } else { 23 };
            if pos % stride == 0 || pos == len - 1 || pos == len - 66 {
                flips.extend([(pos, 0x20), (pos, 0x80)]);
            }
        }
        let original = fs::read(path).unwrap();
        for (pos, mask) in flips {
            let mut bytes = original.clone();
            bytes[off + pos] ^= mask;
            fs::write(path, &bytes).unwrap();
            let err = verify(dir, &vk).expect_err(&format!(
                "flip {mask:#x} at byte {pos} of seq {seq} went unnoticed"
            ));
            assert_eq!(
                err.damage().and_then(Damage::seq),
                Some(*seq),
                "flip {mask:#x} at byte {pos} of seq {seq}: {err}"
            );
            checked += 1;
        }
        fs::write(path, &original).unwrap();
    }
    assert!(checked > 2000, "{checked}");
    verify(dir, &vk).unwrap();
}

#[test]
fn a_rewritten_record_with_a_recomputed_chain_breaks_the_checkpoint_root() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let o = AuditOptions {
        segment_bytes: 1 << 20,
        ..opts(dir)
    };
    let (log, _) = AuditLog::open(o, key()).unwrap();
    for i in 0..20 {
        log.append_blocking(rec(i, 0)).unwrap();
        if i == 9 {
            log.checkpoint_blocking().unwrap();
        }
    }
    log.close_blocking().unwrap();
    let seg = &segments(dir)[0];
    let text = fs::read_to_string(seg).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    // Rewrite record 15 and re-link 15..19 as an attacker without the key would.
    let mut prev: Option<String> = None;
    for line in lines.iter_mut().skip(16) {
        let (json, _) = line.split_once('\t').unwrap();
        let mut json = json.replace("req-15", "req-XX");
        if let Some(p) = &prev {
            let start = json.find("\"prev\":\"").unwrap() + 8;
            json.replace_range(start..start + 64, p);
        }
        let h = hex::encode(leaf_hash(json.as_bytes()));
        *line = format!("{json}\t{h}");
        prev = Some(h);
    }
    fs::write(seg, lines.join("\n") + "\n").unwrap();
    let err = verify(dir, &key().verifying_key()).unwrap_err();
    assert!(
        matches!(
            err.damage(),
            Some(Damage::CheckpointRoot {
                from: 10,
                size: 20,
                ..
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("range [10, 20)"), "{err}");
}

#[test]
fn truncation_below_a_checkpoint_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_log(dir, 30, 1000);
    let lines = record_lines(dir);
    // Cut the last segment after its first record line.
    let last_seg = segments(dir).pop().unwrap();
    let (_, off, len, seq) = lines.iter().find(|l| l.0 == last_seg).cloned().unwrap();
    let original = fs::read(&last_seg).unwrap();
    fs::write(&last_seg, &original[..off + len]).unwrap();
    let err = verify(dir, &key().verifying_key()).unwrap_err();
    assert!(
        matches!(err.damage(), Some(Damage::Truncated { claimed: 30, .. })),
        "{err}"
    );
    assert_eq!(err.damage().and_then(Damage::seq), Some(seq + 1));
    let err = AuditLog::open(opts(dir), key()).unwrap_err();
    assert!(
        matches!(err.damage(), Some(Damage::Truncated { claimed: 30, .. })),
        "{err}"
    );

    // Deleting the newest segment file entirely.
    fs::remove_file(&last_seg).unwrap();
    let err = verify(dir, &key().verifying_key()).unwrap_err();
    assert_eq!(err.damage().and_then(Damage::seq), Some(seq));
    assert!(AuditLog::open(opts(dir), key()).is_err());

    // Deleting a segment in the middle.
    fs::write(&last_seg, &original).unwrap();
    let mid = segments(dir)[1].clone();
    let first_of_mid = lines.iter().find(|l| l.0 == mid).unwrap().3;
    fs::remove_file(&mid).unwrap();
    let err = verify(dir, &key().verifying_key()).unwrap_err();
    assert!(
        matches!(err.damage(), Some(Damage::MissingRecords { .. })),
        "{err}"
    );
    assert_eq!(err.damage().and_then(Damage::seq), Some(first_of_mid));
}

#[test]
fn a_torn_last_record_is_truncated_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_log(dir, 10, 1000);
    let last = segments(dir).pop().unwrap();
    let before = fs::metadata(&last).unwrap().len();
    let torn = b"{\"v\":1,\"seq\":10,\"prev\":\"00";
    fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap()
        .write_all(torn)
        .unwrap();
    // A reader and verify skip the in-progress line.
    assert_eq!(
        AuditReader::open(dir).unwrap().records(0).unwrap().count(),
        10
    );
    assert!(verify(dir, &key().verifying_key()).unwrap().incomplete_tail);
    // A torn checkpoint line, too.
    fs::OpenOptions::new()
        .append(true)
        .open(dir.join("checkpoints.log"))
        .unwrap()
        .write_all(b"{\"v\":1,\"si")
        .unwrap();

    let (log, info) = AuditLog::open(opts(dir), key()).unwrap();
    assert_eq!(info.truncated_bytes, torn.len() as u64);
    assert_eq!(info.torn_seq, Some(10));
    assert_eq!(info.truncated_checkpoint_bytes, 10);
    assert_eq!(info.next_seq, 10);
    assert_eq!(fs::metadata(&last).unwrap().len(), before);
    assert_eq!(log.append_blocking(rec(10, 0)).unwrap(), 10);
    log.close_blocking().unwrap();
    let r = verify(dir, &key().verifying_key()).unwrap();
    assert_eq!((r.records_checked, r.incomplete_tail), (11, false));
}

#[test]
fn damage_in_the_newest_segment_is_an_error_not_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_log(dir, 10, 1000);
    let lines = record_lines(dir);
    let last_seg = segments(dir).pop().unwrap();
    let (path, off, _, seq) = lines.iter().find(|l| l.0 == last_seg).cloned().unwrap();
    let mut bytes = fs::read(&path).unwrap();
    bytes[off + 30] ^= 0x01;
    fs::write(&path, bytes).unwrap();
    let err = AuditLog::open(opts(dir), key()).unwrap_err();
    assert_eq!(err.damage().and_then(Damage::seq), Some(seq), "{err}");
}

#[test]
fn a_segment_torn_while_rotating_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_log(dir, 30, 1000);
    let torn = dir.join("seg-00000000000000000030.audit");
    fs::write(&torn, b"{\"v\":1,\"kind\":\"seg").unwrap();
    let (log, info) = AuditLog::open(opts(dir), key()).unwrap();
    assert_eq!(info.removed_segment.as_deref(), Some(torn.as_path()));
    assert_eq!(log.append_blocking(rec(30, 0)).unwrap(), 30);
    log.close_blocking().unwrap();
    assert_eq!(
        verify(dir, &key().verifying_key()).unwrap().records_checked,
        31
    );
}

#[test]
fn dropping_without_close_keeps_everything_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    {
        let (log, _) = AuditLog::open(opts(dir), key()).unwrap();
        for i in 0..25 {
            log.append_blocking(rec(i, 0)).unwrap();
        }
        log.checkpoint_blocking().unwrap();
        for i in 25..30 {
            log.append_blocking(rec(i, 0)).unwrap();
        }
    }
    let r = verify(dir, &key().verifying_key()).unwrap();
    assert_eq!((r.records_checked, r.unsigned_records), (30, 5));
    let (log, info) = AuditLog::open(opts(dir), key()).unwrap();
    assert_eq!(info.next_seq, 30);
    assert_eq!(log.append_blocking(rec(30, 0)).unwrap(), 30);
}

#[test]
fn proofs_from_the_directory_verify_against_signed_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (log, _) = AuditLog::open(opts(dir), key()).unwrap();
    let mut cps = Vec::new();
    for i in 0..150u64 {
        log.append_blocking(rec(i, 0)).unwrap();
        if [0, 1, 6, 31, 63, 64, 100, 149].contains(&i) {
            cps.push(log.checkpoint_blocking().unwrap().unwrap());
        }
    }
    log.close_blocking().unwrap();
    let vk = key().verifying_key();
    let hashes: Vec<Hash> = AuditReader::open(dir)
        .unwrap()
        .records(0)
        .unwrap()
        .map(|r| r.unwrap().hash)
        .collect();
    for cp in &cps {
        assert!(cp.verify(&vk));
        assert_eq!(tree_root(dir, cp.size).unwrap(), cp.root);
        for seq in (0..cp.size).step_by(7).chain([cp.size - 1]) {
            let p = inclusion_proof(dir, seq, Some(cp.size)).unwrap();
            assert_eq!(p.leaf_hash, hashes[seq as usize]);
            assert!(
                verify_inclusion(&p, &hashes[seq as usize], &cp.root),
                "seq {seq} size {}",
                cp.size
            );
            assert!(!verify_inclusion(&p, &leaf_hash(b"forged"), &cp.root));
            assert!(p.path.len() <= 8);
        }
        for old in &cps {
            if old.size <= cp.size {
                let p = consistency_proof(dir, old.size, cp.size).unwrap();
                assert!(
                    verify_consistency(&p, &old.root, &cp.root),
                    "{} -> {}",
                    old.size,
                    cp.size
                );
                if !p.path.is_empty() {
                    assert!(!verify_consistency(&p, &old.root, &leaf_hash(b"x")));
                }
            }
        }
    }
    for cp in &cps {
        assert_eq!(find_checkpoint(dir, cp.size).unwrap().as_ref(), Some(cp));
    }
    assert_eq!(find_checkpoint(dir, 3).unwrap(), None);
    // Default tree size: the latest checkpoint.
    let p = inclusion_proof(dir, 5, None).unwrap();
    assert_eq!(p.tree_size, 150);
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(serde_json::from_str::<InclusionProof>(&json).unwrap(), p);
    assert!(matches!(
        inclusion_proof(dir, 150, None),
        Err(AuditError::OutOfRange(_))
    ));
    assert!(matches!(
        inclusion_proof(dir, 1, Some(500)),
        Err(AuditError::OutOfRange(_))
    ));
    assert!(matches!(
        consistency_proof(dir, 10, 500),
        Err(AuditError::OutOfRange(_))
    ));
}

#[test]
fn pruning_deletes_old_segments_and_keeps_verification_and_proofs_working() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let day = 86_400_000_000i64;
    let o = AuditOptions {
        retention: Duration::from_secs(30 * 86_400),
        ..opts(dir)
    };
    let (log, _) = AuditLog::open(o.clone(), key()).unwrap();
    for i in 0..120u64 {
        // Days 0..59, two records a day.
        log.append_blocking(rec(i, (i as i64 / 2) * day)).unwrap();
        if i % 10 == 9 {
            log.checkpoint_blocking().unwrap();
        }
    }
    let nsegs = segments(dir).len();
    assert!(nsegs > 5);
    // Now = day 70: records before day 40 are older than 30 days.
    let report = log.prune(70 * day).unwrap();
    assert!(
        report.segments_removed > 0 && report.segments_removed < nsegs,
        "{report:?}"
    );
    assert_eq!(segments(dir).len(), nsegs - report.segments_removed);
    assert!(
        report.first_kept_seq > 0 && report.first_kept_seq <= 80,
        "{report:?}"
    );
    assert_eq!(report.records_removed, report.first_kept_seq);
    let first = report.first_kept_seq;
    // Nothing left that is old enough: a second prune is a no-op.
    assert_eq!(log.prune(70 * day).unwrap().segments_removed, 0);

    for i in 120..130u64 {
        log.append_blocking(rec(i, 61 * day)).unwrap();
    }
    log.close_blocking().unwrap();

    let vk = key().verifying_key();
    let r = verify(dir, &vk).unwrap();
    assert_eq!(r.first_seq, Some(first));
    assert_eq!(r.records_checked, 130 - first);
    assert!(r.checkpoints_signature_only > 0);
    assert_eq!(r.last_checkpoint.as_ref().unwrap().size, 130);

    let cp = latest_checkpoint(dir).unwrap().unwrap();
    let hashes: Vec<(u64, Hash)> = AuditReader::open(dir)
        .unwrap()
        .records(0)
        .unwrap()
        .map(|r| r.map(|r| (r.seq, r.hash)).unwrap())
        .collect();
    assert_eq!(hashes[0].0, first);
    for (seq, h) in &hashes {
        let p = inclusion_proof(dir, *seq, None).unwrap();
        assert!(verify_inclusion(&p, h, &cp.root), "seq {seq}");
    }
    // Proofs for pruned records are refused unless the anchor frontier
    // happens to hold all the nodes they need (then they still verify).
    let mut refused = 0;
    for seq in 0..first {
        match inclusion_proof(dir, seq, None) {
            Err(AuditError::Pruned { first_kept }) => {
                assert_eq!(first_kept, first);
                refused += 1;
            }
            Ok(p) => assert!(verify_inclusion(&p, &p.leaf_hash, &cp.root)),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused > 0);
    let p = consistency_proof(dir, first, 130).unwrap();
    assert!(verify_consistency(
        &p,
        &tree_root(dir, first).unwrap(),
        &cp.root
    ));

    // The log reopens and continues after pruning.
    let (log, info) = AuditLog::open(o, key()).unwrap();
    assert_eq!((info.first_seq, info.next_seq), (first, 130));
    assert_eq!(log.append_blocking(rec(130, 62 * day)).unwrap(), 130);
    log.close_blocking().unwrap();
    assert_eq!(verify(dir, &vk).unwrap().records_checked, 131 - first);
}

#[test]
fn a_failed_write_poisons_the_log_until_reopened() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (log, _) = AuditLog::open(opts(dir), key()).unwrap();
    log.append_blocking(rec(0, 0)).unwrap();
    // Block every possible next segment file name so that rotation fails.
    let blockers: Vec<PathBuf> = (1..200)
        .map(|s| dir.join(format!("seg-{s:020}.audit")))
        .collect();
    for b in &blockers {
        fs::create_dir(b).unwrap();
    }
    let mut failed_at = None;
    for i in 1..200u64 {
        if let Err(e) = log.append_blocking(rec(i, 0)) {
            failed_at = Some(e);
            break;
        }
    }
    let err = failed_at.expect("rotation must fail");
    assert!(matches!(err, AuditError::Poisoned { .. }), "{err}");
    let acked = log.next_seq();
    // Every later append and checkpoint fails, even though the cause is gone.
    for b in &blockers {
        fs::remove_dir(b).unwrap();
    }
    assert!(matches!(
        log.append_blocking(rec(999, 0)),
        Err(AuditError::Poisoned { .. })
    ));
    assert!(matches!(
        log.checkpoint_blocking(),
        Err(AuditError::Poisoned { .. })
    ));
    drop(log);
    let (log, info) = AuditLog::open(opts(dir), key()).unwrap();
    assert_eq!(info.next_seq, acked);
    assert_eq!(log.append_blocking(rec(acked, 0)).unwrap(), acked);
    log.close_blocking().unwrap();
    verify(dir, &key().verifying_key()).unwrap();
}

#[tokio::test]
async fn appends_after_shutdown_fail_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = AuditLog::open(opts(tmp.path()), key()).unwrap();
    log.append(rec(0, 0)).await.unwrap();
    log.shutdown().await.unwrap();
    assert!(matches!(
        log.append(rec(1, 0)).await,
        Err(AuditError::Closed)
    ));
    assert!(matches!(log.checkpoint().await, Err(AuditError::Closed)));
    drop(log);
    assert_eq!(
        verify(tmp.path(), &key().verifying_key())
            .unwrap()
            .last_checkpoint
            .unwrap()
            .size,
        1
    );
}

#[test]
fn timed_and_counted_checkpoints_are_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let o = AuditOptions {
        checkpoint_every_records: 10,
        checkpoint_interval: Duration::from_millis(50),
        ..opts(dir)
    };
    let (log, _) = AuditLog::open(o, key()).unwrap();
    for i in 0..25 {
        log.append_blocking(rec(i, 0)).unwrap();
    }
    assert!(log.stats().checkpoints >= 2);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        latest_checkpoint(dir).unwrap().unwrap().size,
        25,
        "interval checkpoint"
    );
    drop(log);
}

const CHILD_ENV: &str = "CUSTOS_AUDIT_CRASH_CHILD_DIR";

/// Runs in a child process: appends from many tasks and prints every
/// acknowledged seq until it is killed.
#[test]
#[ignore = "child process of crash_mid_append_loses_nothing_acknowledged"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (log, _) = AuditLog::open(opts(Path::new(&dir)), key()).unwrap();
        let log = Arc::new(log);
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let (log, out) = (log.clone(), out.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let seq = log.append(rec(t * 1_000_000 + i, i as i64)).await.unwrap();
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ACK {seq}").unwrap();
                    o.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn crash_mid_append_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(s) = line.strip_prefix("ACK ") {
            acked.push(s.parse::<u64>().unwrap());
            if acked.len() >= 3000 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL: no destructors, no final checkpoint
    child.wait().unwrap();
    assert!(acked.len() >= 3000);
    let max_acked = *acked.iter().max().unwrap();

    let (log, info) = AuditLog::open(opts(dir), key()).unwrap();
    assert!(
        info.next_seq > max_acked,
        "{info:?} but {max_acked} was acknowledged"
    );
    let present: std::collections::HashSet<u64> = AuditReader::open(dir)
        .unwrap()
        .records(0)
        .unwrap()
        .map(|r| r.unwrap().seq)
        .collect();
    assert!(acked.iter().all(|s| present.contains(s)));
    let next = info.next_seq;
    assert_eq!(log.append_blocking(rec(0, 0)).unwrap(), next);
    log.close_blocking().unwrap();
    let r = verify(dir, &key().verifying_key()).unwrap();
    assert_eq!(r.records_checked, next + 1);
}

#[test]
fn duplicated_and_deleted_records_are_gaps_in_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let o = AuditOptions {
        segment_bytes: 1 << 20,
        ..opts(dir)
    };
    let (log, _) = AuditLog::open(o, key()).unwrap();
    for i in 0..10 {
        log.append_blocking(rec(i, 0)).unwrap();
    }
    log.close_blocking().unwrap();
    let seg = segments(dir).pop().unwrap();
    let original = fs::read_to_string(&seg).unwrap();
    let lines: Vec<&str> = original.split_inclusive('\n').collect();
    // lines[0] is the header; record k is lines[k + 1].
    let dup: String = lines[..7].concat() + lines[6] + &lines[7..].concat();
    fs::write(&seg, dup).unwrap();
    let err = verify(dir, &key().verifying_key()).unwrap_err();
    assert!(
        matches!(
            err.damage(),
            Some(Damage::SeqGap {
                seq: 6,
                found: 5,
                ..
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("gap in seq at 6"), "{err}");

    let del: String = lines[..6].concat() + &lines[7..].concat();
    fs::write(&seg, del).unwrap();
    let err = verify(dir, &key().verifying_key()).unwrap_err();
    assert!(
        matches!(
            err.damage(),
            Some(Damage::SeqGap {
                seq: 5,
                found: 6,
                ..
            })
        ),
        "{err}"
    );
}

#[test]
fn readers_and_verify_run_while_the_writer_appends_and_rotates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let o = AuditOptions {
        checkpoint_every_records: 50,
        ..opts(&dir)
    };
    let (log, _) = AuditLog::open(o, key()).unwrap();
    let log = Arc::new(log);
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for i in 0..1500 {
                log.append_blocking(rec(i, i as i64)).unwrap();
            }
        })
    };
    let vk = key().verifying_key();
    let mut rounds = 0;
    while !writer.is_finished() {
        let r = verify(&dir, &vk).unwrap();
        let n = AuditReader::open(&dir)
            .unwrap()
            .records(0)
            .unwrap()
            .inspect(|r| assert!(r.is_ok(), "{r:?}"))
            .count() as u64;
        assert!(n >= r.records_checked);
        if let Some(cp) = latest_checkpoint(&dir).unwrap() {
            // The proof is pinned to `cp`'s size: the writer may sign a
            // newer checkpoint between reading `cp` and building the proof.
            let p = inclusion_proof(&dir, cp.size - 1, Some(cp.size)).unwrap();
            assert_eq!(p.tree_size, cp.size);
            assert!(verify_inclusion(&p, &p.leaf_hash, &cp.root));
        }
        rounds += 1;
    }
    writer.join().unwrap();
    assert!(rounds > 1);
    assert!(segments(&dir).len() > 20);
    Arc::into_inner(log).unwrap().close_blocking().unwrap();
    assert_eq!(verify(&dir, &vk).unwrap().records_checked, 1500);
}

mod garbage {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Random edits of a real log never make verify, the reader, proofs
        /// or recovery panic; verify and recovery report them or (for edits
        /// they cannot see, like appending to an unsigned tail) accept them.
        #[test]
        fn random_damage_never_panics(
            edits in proptest::collection::vec((any::<bool>(), any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            write_log(dir, 25, 10);
            let segs = segments(dir);
            for (in_cp, at, byte) in &edits {
                let path = if *in_cp { dir.join("checkpoints.log") } else { segs[at.index(segs.len())].clone() };
                let mut b = fs::read(&path).unwrap();
                if !b.is_empty() {
                    let i = at.index(b.len());
                    b[i] = *byte;
                }
                fs::write(&path, b).unwrap();
            }
            if let Some(c) = cut {
                let path = segs.last().unwrap();
                let b = fs::read(path).unwrap();
                fs::write(path, &b[..c.index(b.len() + 1)]).unwrap();
            }
            let _ = verify(dir, &key().verifying_key());
            if let Ok(r) = AuditReader::open(dir) {
                let _ = r.list(&RecordFilter::default());
            }
            let _ = inclusion_proof(dir, 3, None);
            let _ = consistency_proof(dir, 5, 20);
            if let Ok((log, _)) = AuditLog::open(opts(dir), key()) {
                let _ = log.append_blocking(rec(99, 0));
                let _ = log.close_blocking();
                let _ = verify(dir, &key().verifying_key());
            }
        }
    }
}
