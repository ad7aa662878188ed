//! Behaviour of the ledger: round trips, tampering, pruning, crashes, and a
//! model-based proptest.

use super::format::{record_hash, to_hex};
use super::scan::list_segments;
use super::*;
use custos_model::wire::{self, BatchPayload};
use custos_model::{BatchId, Category, Event, Level, TableName, Value};
use proptest::prelude::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const T0: i64 = 1_750_000_000_000_000;
const SEC: i64 = 1_000_000;

/// A real batch payload of about `message_bytes` bytes of message text.
fn batch(message_bytes: usize, salt: u64) -> BatchPayload {
    let mut message = format!("line {salt} ünïcødé \"quoted\" \\ tab\there\nnewline ");
    while message.len() < message_bytes {
        message.push_str("lorem ipsum ");
    }
    let mut cut = message_bytes.max(16).min(message.len());
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    message.truncate(cut);
    BatchPayload {
        batch_id: BatchId::new(),
        created: T0 + salt as i64,
        events: vec![Event {
            table: TableName::new("logs").unwrap(),
            time: T0,
            level: Level::Enhanced,
            category: Category::Logs,
            host: "h-0123456789abcdef".into(),
            message,
            attrs: [
                ("severity".to_string(), Value::Str("warning".into())),
                ("n".to_string(), Value::Int(salt as i64)),
                ("f".to_string(), Value::Float(0.1 + salt as f64)),
            ]
            .into_iter()
            .collect(),
        }],
    }
}

fn small_opts() -> LedgerOptions {
    LedgerOptions {
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(365 * 24 * 3600),
        segment_bytes: 4096,
    }
}

fn segment_paths(state: &Path) -> Vec<std::path::PathBuf> {
    list_segments(&ledger_dir(state))
        .unwrap()
        .into_iter()
        .map(|s| s.path)
        .collect()
}

/// Appends `n` batches (every other one acknowledged); returns the payloads.
fn fill(ledger: &mut Ledger, n: u64, size: usize) -> Vec<BatchPayload> {
    (0..n)
        .map(|i| {
            let p = batch(size, i);
            ledger
                .append_batch(p.batch_id, &wire::payload_json(&p), T0 + i as i64 * SEC)
                .unwrap();
            if i % 2 == 0 {
                ledger
                    .append_ack(
                        p.batch_id,
                        &format!("ack-{i}"),
                        1,
                        0,
                        T0 + i as i64 * SEC + 1,
                    )
                    .unwrap();
            }
            p
        })
        .collect()
}

fn damage(state: &Path) -> Damage {
    match verify(state) {
        Err(LedgerError::Damaged(d)) => d,
        other => panic!("expected damage, got {other:?}"),
    }
}

#[test]
fn batches_and_acks_round_trip_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(tmp.path(), LedgerOptions::default()).unwrap();
    assert!(ledger.recovery().created);
    let payloads: Vec<BatchPayload> = (0..5).map(|i| batch(100 + 50 * i, i as u64)).collect();
    let jsons: Vec<Vec<u8>> = payloads.iter().map(wire::payload_json).collect();
    for (i, (p, j)) in payloads.iter().zip(&jsons).enumerate() {
        let seq = ledger.append_batch(p.batch_id, j, T0 + i as i64).unwrap();
        assert_eq!(seq, 2 * i as u64);
        ledger
            .append_ack(
                p.batch_id,
                &format!("wal:{i}"),
                i as u64,
                7,
                T0 + i as i64 + 5,
            )
            .unwrap();
    }
    // A batch that was sent but not (yet) acknowledged.
    let last = batch(10, 99);
    let last_json = wire::payload_json(&last);
    ledger
        .append_batch(last.batch_id, &last_json, T0 + 100)
        .unwrap();

    let sent = LedgerReader::open(tmp.path())
        .unwrap()
        .list(&Filter::default())
        .unwrap();
    assert_eq!(sent.len(), 6);
    for (i, s) in sent.iter().take(5).enumerate() {
        assert_eq!(
            s.payload, jsons[i],
            "payload {i} is byte for byte what was given"
        );
        assert_eq!(s.decode().unwrap(), payloads[i]);
        assert_eq!(
            (s.seq, s.time, s.batch_id),
            (2 * i as u64, T0 + i as i64, payloads[i].batch_id)
        );
        let ack = s.ack.as_ref().unwrap();
        assert_eq!(
            (
                ack.seq,
                ack.time,
                ack.ack_id.as_str(),
                ack.accepted,
                ack.refused
            ),
            (
                2 * i as u64 + 1,
                T0 + i as i64 + 5,
                format!("wal:{i}").as_str(),
                i as u64,
                7
            )
        );
    }
    assert_eq!(sent[5].payload, last_json);
    assert_eq!(sent[5].ack, None);
    // The frame that would be sent carries exactly the ledgered bytes.
    let frame = wire::encode_raw(&sent[0].payload, wire::Codec::Zstd);
    assert_eq!(frame, wire::encode(&payloads[0], wire::Codec::Zstd));

    let report = verify(tmp.path()).unwrap();
    assert_eq!(
        (
            report.records,
            report.batches,
            report.acks,
            report.unacknowledged_batches
        ),
        (11, 6, 5, 1)
    );
    assert_eq!((report.first_seq, report.last_seq), (Some(0), Some(10)));
    assert_eq!(report.head, Some(to_hex(&ledger.head())));
    assert_eq!(report.torn_tail, None);
}

#[test]
fn the_ledger_is_readable_as_text_with_the_payload_verbatim() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(tmp.path(), LedgerOptions::default()).unwrap();
    let p = batch(40, 1);
    let json = wire::payload_json(&p);
    ledger.append_batch(p.batch_id, &json, 42).unwrap();
    let text = std::fs::read(&segment_paths(tmp.path())[0]).unwrap();
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    assert_eq!(
        lines.len(),
        3,
        "header, one record, empty after the last LF"
    );
    let mut expected = format!(
        "{{\"v\":1,\"seq\":0,\"prev\":\"{}\",\"kind\":\"batch\",\"time\":42,\"batch_id\":\"{}\",\"payload\":",
        "0".repeat(64),
        p.batch_id
    )
    .into_bytes();
    expected.extend_from_slice(&json);
    expected.push(b'}');
    let (record, hash) = lines[1].split_at(lines[1].len() - 65);
    assert_eq!(record, &expected[..]);
    assert_eq!(
        hash,
        format!("\t{}", to_hex(&record_hash(&expected))).as_bytes()
    );
}

#[test]
fn the_ledger_directory_and_files_are_owner_only() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(tmp.path(), small_opts()).unwrap();
    fill(&mut ledger, 30, 200);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ledger_dir(tmp.path())), 0o700);
    let segs = segment_paths(tmp.path());
    assert!(segs.len() > 1, "rotated");
    for f in segs
        .iter()
        .chain([&ledger_dir(tmp.path()).join(LOCK_FILE_NAME)])
    {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    // An existing directory with looser permissions is tightened.
    drop(ledger);
    std::fs::set_permissions(
        ledger_dir(tmp.path()),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let _ledger = Ledger::open(tmp.path(), small_opts()).unwrap();
    assert_eq!(mode(&ledger_dir(tmp.path())), 0o700);
}

#[test]
fn a_second_writer_is_refused_by_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let first = Ledger::open(tmp.path(), LedgerOptions::default()).unwrap();
    let err = Ledger::open(tmp.path(), LedgerOptions::default()).unwrap_err();
    assert!(matches!(err, LedgerError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("locked"), "{err}");
    drop(first);
    Ledger::open(tmp.path(), LedgerOptions::default()).unwrap();
}

#[test]
fn unusable_options_are_refused_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    for (opts, field) in [
        (
            LedgerOptions {
                segment_bytes: 100,
                ..LedgerOptions::default()
            },
            "segment_bytes",
        ),
        (
            LedgerOptions {
                max_bytes: 1 << 20,
                ..LedgerOptions::default()
            },
            "max_bytes",
        ),
        (
            LedgerOptions {
                max_age: Duration::ZERO,
                ..LedgerOptions::default()
            },
            "max_age",
        ),
    ] {
        let err = Ledger::open(tmp.path(), opts).unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[test]
fn payloads_that_are_not_the_batch_are_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(tmp.path(), LedgerOptions::default()).unwrap();
    let p = batch(10, 0);
    let json = wire::payload_json(&p);
    let pretty = serde_json::to_vec_pretty(&p).unwrap();
    for (id, bytes) in [
        (BatchId::new(), &json[..]),
        (p.batch_id, &pretty[..]),
        (p.batch_id, &b"not json"[..]),
        (p.batch_id, &json[..json.len() - 1]),
    ] {
        let err = ledger.append_batch(id, bytes, T0).unwrap_err();
        assert!(matches!(err, LedgerError::InvalidPayload(_)), "{err}");
    }
    let err = ledger
        .append_ack(p.batch_id, &"x".repeat(2000), 0, 0, T0)
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::TooLarge { what: "ack_id", .. }),
        "{err}"
    );
    assert_eq!(ledger.next_seq(), 0);
    assert_eq!(verify(tmp.path()).unwrap().records, 0);
    // The ledger still works.
    assert_eq!(ledger.append_batch(p.batch_id, &json, T0).unwrap(), 0);
}

#[test]
fn reopening_continues_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    for round in 0..4u64 {
        let mut ledger = Ledger::open(tmp.path(), small_opts()).unwrap();
        assert_eq!(ledger.next_seq(), round * 15);
        assert_eq!(ledger.recovery().next_seq, round * 15);
        all.extend(fill(&mut ledger, 10, 300));
    }
    let report = verify(tmp.path()).unwrap();
    assert_eq!(report.records, 60);
    assert!(report.segments > 4);
    let sent = LedgerReader::open(tmp.path())
        .unwrap()
        .list(&Filter::default())
        .unwrap();
    let ids: Vec<BatchId> = sent.iter().map(|s| s.batch_id).collect();
    assert_eq!(ids, all.iter().map(|p| p.batch_id).collect::<Vec<_>>());
    for (i, s) in sent.iter().enumerate() {
        assert_eq!(s.ack.is_some(), i % 10 % 2 == 0);
    }
}

#[test]
fn list_filters_by_time_seq_and_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(tmp.path(), small_opts()).unwrap();
    let all = fill(&mut ledger, 20, 100);
    let reader = LedgerReader::open(tmp.path()).unwrap();
    let ids = |f: Filter| -> Vec<BatchId> {
        reader
            .list(&f)
            .unwrap()
            .into_iter()
            .map(|s| s.batch_id)
            .collect()
    };
    let want = |r: std::ops::Range<usize>| all[r].iter().map(|p| p.batch_id).collect::<Vec<_>>();
    assert_eq!(
        ids(Filter {
            since: Some(T0 + 15 * SEC),
            ..Filter::default()
        }),
        want(15..20)
    );
    assert_eq!(
        ids(Filter {
            limit: Some(3),
            ..Filter::default()
        }),
        want(0..3)
    );
    assert_eq!(
        ids(Filter {
            limit: Some(0),
            ..Filter::default()
        }),
        want(0..0)
    );
    // Batch i has seq i + (i + 1) / 2 (even batches have an ack after them).
    let page = reader
        .list(&Filter {
            from_seq: 10,
            limit: Some(2),
            ..Filter::default()
        })
        .unwrap();
    assert_eq!(page.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![11, 12]);
    assert!(
        page[0].ack.is_none() && page[1].ack.is_some(),
        "acks are joined after the limit is reached"
    );
    let err = LedgerReader::open(&tmp.path().join("nope")).unwrap_err();
    assert!(matches!(err, LedgerError::NotFound { .. }), "{err}");
}

/// The 1-based line containing byte `pos` of `bytes`.
fn line_of(bytes: &[u8], pos: usize) -> u64 {
    bytes[..pos].iter().filter(|&&b| b == b'\n').count() as u64 + 1
}

#[test]
fn a_flipped_byte_anywhere_is_named_by_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(
        tmp.path(),
        LedgerOptions {
            segment_bytes: 4096,
            ..small_opts()
        },
    )
    .unwrap();
    fill(&mut ledger, 12, 700);
    drop(ledger);
    let segs = segment_paths(tmp.path());
    assert!(segs.len() >= 3, "several segments: {}", segs.len());
    // First seq of each segment, to turn a line into a seq.
    let firsts: Vec<u64> = segs
        .iter()
        .map(|p| parse_segment_file_name(p.file_name().unwrap().to_str().unwrap()).unwrap())
        .collect();
    let mut checked = 0;
    for (si, seg) in segs.iter().enumerate() {
        let original = std::fs::read(seg).unwrap();
        let newest = si + 1 == segs.len();
        let positions: Vec<usize> = (0..original.len())
            .filter(|p| p % 7 == 0 || original[*p] == b'\n')
            .collect();
        for pos in positions {
            for bit in [0x01u8, 0x40] {
                let mut bytes = original.clone();
                bytes[pos] ^= bit;
                std::fs::write(seg, &bytes).unwrap();
                let line = line_of(&original, pos);
                let seq = (line > 1).then(|| firsts[si] + line - 2);
                if newest && pos + 1 == original.len() {
                    // The last LF of the newest segment: a torn tail, not damage.
                    let report = verify(tmp.path()).unwrap();
                    assert_eq!(report.torn_tail.map(|t| t.seq), seq);
                } else {
                    let d = damage(tmp.path());
                    assert_eq!(
                        (&d.path, d.line, d.seq),
                        (seg, line, seq),
                        "flip {bit:#x} at {pos}: {d}"
                    );
                    if line == 1 {
                        assert!(matches!(d.kind, DamageKind::BadHeader(_)), "{d}");
                    }
                }
                checked += 1;
            }
        }
        std::fs::write(seg, &original).unwrap();
    }
    assert!(checked > 500, "{checked}");
    verify(tmp.path()).unwrap();
}

#[test]
fn a_rewritten_record_with_a_fresh_hash_breaks_the_next_link() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(tmp.path(), LedgerOptions::default()).unwrap();
    fill(&mut ledger, 4, 100);
    drop(ledger);
    let seg = &segment_paths(tmp.path())[0];
    let text = String::from_utf8(std::fs::read(seg).unwrap()).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // Record seq 2 (line 4): change what it says was sent, rehash it.
    let (json, _) = lines[3].rsplit_once('\t').unwrap();
    let json = json.replace("lorem", "LOREM");
    lines[3] = format!("{json}\t{}", to_hex(&record_hash(json.as_bytes())));
    std::fs::write(seg, lines.join("\n") + "\n").unwrap();
    let d = damage(tmp.path());
    assert_eq!(
        (d.line, d.seq, &d.kind),
        (5, Some(3), &DamageKind::BrokenLink { found_seq: None }),
        "{d}"
    );
    assert!(d.to_string().contains("broken link"), "{d}");
}

#[test]
fn a_deleted_middle_record_is_named_as_a_broken_link() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(tmp.path(), LedgerOptions::default()).unwrap();
    fill(&mut ledger, 4, 100);
    drop(ledger);
    let seg = &segment_paths(tmp.path())[0];
    let text = String::from_utf8(std::fs::read(seg).unwrap()).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(3); // seq 2
    std::fs::write(seg, lines.join("\n") + "\n").unwrap();
    let d = damage(tmp.path());
    assert_eq!(
        (d.line, d.seq, &d.kind),
        (4, Some(2), &DamageKind::BrokenLink { found_seq: Some(3) }),
        "{d}"
    );
    assert!(d.to_string().contains("records are missing"), "{d}");
}

#[test]
fn a_deleted_middle_segment_is_named_as_a_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(tmp.path(), small_opts()).unwrap();
    fill(&mut ledger, 30, 300);
    drop(ledger);
    let segs = segment_paths(tmp.path());
    assert!(segs.len() >= 3);
    std::fs::remove_file(&segs[1]).unwrap();
    let d = damage(tmp.path());
    assert_eq!((&d.path, d.line), (&segs[2], 1));
    assert!(matches!(d.kind, DamageKind::SegmentGap { .. }), "{d}");
    // Deleting the oldest segments instead looks like pruning: still valid.
    std::fs::remove_file(&segs[0]).unwrap();
    verify(tmp.path()).unwrap();
}

#[test]
fn a_segment_header_with_a_consistent_checksum_but_a_wrong_prev_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(tmp.path(), small_opts()).unwrap();
    fill(&mut ledger, 20, 300);
    drop(ledger);
    let seg = segment_paths(tmp.path())[1].clone();
    let text = std::fs::read(&seg).unwrap();
    let header_end = text.iter().position(|&b| b == b'\n').unwrap() + 1;
    let first_seq = parse_segment_file_name(seg.file_name().unwrap().to_str().unwrap()).unwrap();
    let mut forged = super::format::SegmentHeader {
        first_seq,
        prev: [7; 32],
    }
    .encode();
    forged.extend_from_slice(&text[header_end..]);
    std::fs::write(&seg, &forged).unwrap();
    let d = damage(tmp.path());
    assert_eq!(
        (&d.path, d.line, &d.kind),
        (&seg, 1, &DamageKind::HeaderLink),
        "{d}"
    );
    // Once the segments before it are pruned, the header is the anchor:
    // its records must link to it, and they do not.
    std::fs::remove_file(&segment_paths(tmp.path())[0]).unwrap();
    let d = damage(tmp.path());
    assert_eq!(
        (d.line, d.seq, &d.kind),
        (
            2,
            Some(first_seq),
            &DamageKind::BrokenLink { found_seq: None }
        ),
        "{d}"
    );
}

#[test]
fn pruning_by_size_keeps_the_chain_verifiable() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = LedgerOptions {
        max_bytes: 3 * 4096,
        segment_bytes: 4096,
        ..small_opts()
    };
    let mut ledger = Ledger::open(tmp.path(), opts.clone()).unwrap();
    let all = fill(&mut ledger, 60, 400);
    let before = ledger.segments();
    let report = ledger.prune(T0 + 60 * SEC).unwrap();
    assert!(
        report.segments_removed > 0 && report.segments_removed < before,
        "{report:?}"
    );
    assert!(
        ledger.total_bytes() <= opts.max_bytes,
        "{}",
        ledger.total_bytes()
    );
    let on_disk: u64 = segment_paths(tmp.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(on_disk, ledger.total_bytes());
    let first = report.first_kept_seq;
    assert!(first > 0);
    let v = verify(tmp.path()).unwrap();
    assert_eq!(
        (v.first_seq, v.last_seq),
        (Some(first), Some(ledger.next_seq() - 1))
    );
    let sent = LedgerReader::open(tmp.path())
        .unwrap()
        .list(&Filter::default())
        .unwrap();
    assert!(sent.iter().all(|s| s.seq >= first));
    let kept: Vec<&BatchPayload> = all
        .iter()
        .filter(|p| sent.iter().any(|s| s.batch_id == p.batch_id))
        .collect();
    assert_eq!(kept.len(), sent.len());
    assert_eq!(sent.last().unwrap().batch_id, all.last().unwrap().batch_id);
    // The chain goes on after pruning, and across a reopen.
    drop(ledger);
    let mut ledger = Ledger::open(tmp.path(), opts).unwrap();
    assert_eq!(ledger.first_seq(), first);
    fill(&mut ledger, 3, 100);
    verify(tmp.path()).unwrap();
}

#[test]
fn pruning_by_age_keeps_the_chain_verifiable_and_expires_the_active_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = LedgerOptions {
        max_age: Duration::from_secs(10),
        ..small_opts()
    };
    let mut ledger = Ledger::open(tmp.path(), opts.clone()).unwrap();
    fill(&mut ledger, 40, 300); // times T0 .. T0 + 39 s
                                // Nothing is older than 10 s at T0 + 20 s except segments whose last
                                // record is before T0 + 10 s.
    let r = ledger.prune(T0 + 20 * SEC).unwrap();
    assert!(r.segments_removed > 0, "{r:?}");
    let sent = LedgerReader::open(tmp.path())
        .unwrap()
        .list(&Filter::default())
        .unwrap();
    for i in 10..40 {
        assert!(
            sent.iter().any(|s| s.time == T0 + i * SEC),
            "batch {i} is not expired"
        );
    }
    assert!(sent.first().unwrap().time > T0, "old segments went");
    verify(tmp.path()).unwrap();
    // Reopened, the writer knows the age of sealed segments from their last record.
    drop(ledger);
    let mut ledger = Ledger::open(tmp.path(), opts).unwrap();
    let next = ledger.next_seq();
    let r = ledger.prune(T0 + 100 * SEC).unwrap();
    assert!(r.segments_removed > 0);
    assert_eq!(
        r.first_kept_seq, next,
        "everything expired, the active segment too"
    );
    assert_eq!(ledger.segments(), 1);
    let v = verify(tmp.path()).unwrap();
    assert_eq!((v.records, v.first_seq), (0, None));
    assert!(LedgerReader::open(tmp.path())
        .unwrap()
        .list(&Filter::default())
        .unwrap()
        .is_empty());
    // The chain continues from the anchor in the new segment's header.
    let head = ledger.head();
    let p = batch(10, 1);
    assert_eq!(
        ledger
            .append_batch(p.batch_id, &wire::payload_json(&p), T0 + 101 * SEC)
            .unwrap(),
        next
    );
    assert_ne!(head, [0; 32]);
    let v = verify(tmp.path()).unwrap();
    assert_eq!((v.records, v.first_seq), (1, Some(next)));
}

/// Copies the ledger of `from` into a fresh state dir.
fn copy_state(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    std::fs::create_dir(ledger_dir(to.path())).unwrap();
    for p in segment_paths(from) {
        std::fs::copy(&p, ledger_dir(to.path()).join(p.file_name().unwrap())).unwrap();
    }
    to
}

#[test]
fn a_torn_last_record_at_every_byte_offset_is_cut_on_reopen_and_the_chain_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(tmp.path(), LedgerOptions::default()).unwrap();
    fill(&mut ledger, 3, 50);
    let last_start = std::fs::metadata(&segment_paths(tmp.path())[0])
        .unwrap()
        .len();
    let p = batch(60, 9);
    ledger
        .append_batch(p.batch_id, &wire::payload_json(&p), T0 + 9 * SEC)
        .unwrap();
    let n = ledger.next_seq();
    drop(ledger);
    let seg_name = segment_paths(tmp.path())[0].file_name().unwrap().to_owned();
    let full = std::fs::metadata(&segment_paths(tmp.path())[0])
        .unwrap()
        .len();
    for cut in last_start..full {
        let state = copy_state(tmp.path());
        let seg = ledger_dir(state.path()).join(&seg_name);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let v = verify(state.path()).unwrap();
        assert_eq!(v.records, n - 1, "cut at {cut}");
        let torn = (cut > last_start).then(|| TornTail {
            path: seg.clone(),
            offset: last_start,
            bytes: cut - last_start,
            seq: n - 1,
        });
        assert_eq!(v.torn_tail, torn);
        let mut ledger = Ledger::open(state.path(), LedgerOptions::default()).unwrap();
        assert_eq!(ledger.recovery().torn_tail, torn);
        assert_eq!(ledger.next_seq(), n - 1);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), last_start);
        let again = batch(30, 10);
        assert_eq!(
            ledger
                .append_batch(again.batch_id, &wire::payload_json(&again), T0)
                .unwrap(),
            n - 1
        );
        let v = verify(state.path()).unwrap();
        assert_eq!((v.records, v.torn_tail), (n, None));
        let sent = LedgerReader::open(state.path())
            .unwrap()
            .list(&Filter::default())
            .unwrap();
        assert_eq!(sent.last().unwrap().batch_id, again.batch_id);
    }
}

#[test]
fn a_torn_segment_header_is_removed_on_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(tmp.path(), small_opts()).unwrap();
    fill(&mut ledger, 20, 300);
    // Append until the ledger rotates: the newest segment then holds one record.
    let before = ledger.segments();
    while ledger.segments() == before {
        let p = batch(300, 50);
        ledger
            .append_batch(p.batch_id, &wire::payload_json(&p), T0)
            .unwrap();
    }
    drop(ledger);
    let newest = segment_paths(tmp.path()).last().unwrap().clone();
    let text = std::fs::read(&newest).unwrap();
    assert_eq!(
        text.iter().filter(|&&b| b == b'\n').count(),
        2,
        "header and one record"
    );
    let header_len = text.iter().position(|&b| b == b'\n').unwrap() as u64 + 1;
    let expected = verify(tmp.path()).unwrap().records - 1;
    for cut in 0..header_len {
        let state = copy_state(tmp.path());
        let seg = ledger_dir(state.path()).join(newest.file_name().unwrap());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let v = verify(state.path()).unwrap();
        assert_eq!(
            (v.records, v.torn_segment.is_some()),
            (expected, true),
            "cut at {cut}"
        );
        let mut ledger = Ledger::open(state.path(), small_opts()).unwrap();
        assert_eq!(
            ledger.recovery().removed_segment.as_deref(),
            Some(seg.as_path())
        );
        assert_eq!(ledger.next_seq(), expected);
        let p = batch(10, 1);
        ledger
            .append_batch(p.batch_id, &wire::payload_json(&p), T0)
            .unwrap();
        assert_eq!(verify(state.path()).unwrap().records, expected + 1);
    }
}

#[test]
fn an_unterminated_line_in_an_older_segment_is_damage_not_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(tmp.path(), small_opts()).unwrap();
    fill(&mut ledger, 20, 300);
    drop(ledger);
    let first = &segment_paths(tmp.path())[0];
    let len = std::fs::metadata(first).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(first)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let d = damage(tmp.path());
    assert_eq!((&d.path, &d.kind), (first, &DamageKind::Truncated));
}

#[test]
fn damage_in_the_newest_segment_stops_the_writer_from_opening() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(tmp.path(), LedgerOptions::default()).unwrap();
    fill(&mut ledger, 3, 100);
    drop(ledger);
    let seg = &segment_paths(tmp.path())[0];
    let mut bytes = std::fs::read(seg).unwrap();
    let pos = bytes.len() / 2;
    bytes[pos] ^= 1;
    std::fs::write(seg, &bytes).unwrap();
    let err = Ledger::open(tmp.path(), LedgerOptions::default()).unwrap_err();
    assert_eq!(err.damage().map(|d| d.seq.is_some()), Some(true), "{err}");
}

#[test]
fn another_format_version_is_reported_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(tmp.path(), LedgerOptions::default()).unwrap();
    fill(&mut ledger, 1, 10);
    drop(ledger);
    let seg = &segment_paths(tmp.path())[0];
    let text = String::from_utf8(std::fs::read(seg).unwrap()).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let json = lines[1]
        .rsplit_once('\t')
        .unwrap()
        .0
        .replacen("{\"v\":1,", "{\"v\":2,", 1);
    lines[1] = format!("{json}\t{}", to_hex(&record_hash(json.as_bytes())));
    std::fs::write(seg, lines.join("\n") + "\n").unwrap();
    let err = verify(tmp.path()).unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::UnsupportedVersion {
                version: 2,
                line: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn readers_see_a_consistent_snapshot_while_the_writer_appends_and_prunes() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().to_path_buf();
    let opts = LedgerOptions {
        max_bytes: 4 * 4096,
        segment_bytes: 4096,
        ..small_opts()
    };
    let mut ledger = Ledger::open(&state, opts).unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..300u64 {
            let p = batch(200, i);
            ledger
                .append_batch(p.batch_id, &wire::payload_json(&p), T0 + i as i64)
                .unwrap();
            ledger
                .append_ack(p.batch_id, "a", 1, 0, T0 + i as i64)
                .unwrap();
            ledger.prune(T0 + i as i64).unwrap();
        }
    });
    let mut reads = 0;
    while !writer.is_finished() {
        verify(&state).unwrap();
        let sent = LedgerReader::open(&state)
            .unwrap()
            .list(&Filter::default())
            .unwrap();
        assert!(sent.windows(2).all(|w| w[0].seq < w[1].seq));
        reads += 1;
    }
    writer.join().unwrap();
    assert!(reads > 0);
    verify(&state).unwrap();
}

#[test]
fn ledger_paths_are_recognised_through_symlinks_dotdot_and_hard_links() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let mut ledger = Ledger::open(&state, LedgerOptions::default()).unwrap();
    fill(&mut ledger, 1, 10);
    let seg = segment_paths(&state)[0].clone();
    assert!(is_ledger_path(&state, &seg));
    assert!(is_ledger_path(&state, &ledger_dir(&state)));
    assert!(is_ledger_path(
        &state,
        &ledger_dir(&state).join("not-yet-there.ledger")
    ));
    assert!(is_ledger_path(&state, &state.join("other/../ledger/x")));
    assert!(!is_ledger_path(&state, &state.join("identity.json")));
    assert!(!is_ledger_path(&state, &state.join("ledger2/x")));
    assert!(!is_ledger_path(&state, Path::new("/var/log/syslog")));
    let link = tmp.path().join("innocent.log");
    std::os::unix::fs::symlink(&seg, &link).unwrap();
    assert!(is_ledger_path(&state, &link));
    let dir_link = tmp.path().join("logs");
    std::os::unix::fs::symlink(ledger_dir(&state), &dir_link).unwrap();
    assert!(is_ledger_path(
        &state,
        &dir_link.join(seg.file_name().unwrap())
    ));
    let hard = tmp.path().join("hard.log");
    std::fs::hard_link(&seg, &hard).unwrap();
    assert!(is_ledger_path(&state, &hard));
    // A state dir given through a symlink.
    let state_link = tmp.path().join("state-link");
    std::os::unix::fs::symlink(&state, &state_link).unwrap();
    assert!(is_ledger_path(&state_link, &seg));
    assert!(is_ledger_path(
        &state,
        &state_link.join("ledger").join(seg.file_name().unwrap())
    ));
}

// ---- model-based property test ----

#[derive(Clone, Debug)]
enum Op {
    Batch(usize),
    Ack(usize, u8, u8),
    Prune(u32),
    Reopen,
    /// Append a batch, crash mid-write (cut some of its line's bytes, not all), reopen.
    Torn(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..900).prop_map(Op::Batch),
        4 => (any::<usize>(), any::<u8>(), any::<u8>()).prop_map(|(i, a, r)| Op::Ack(i, a, r)),
        2 => (0u32..400).prop_map(Op::Prune),
        1 => Just(Op::Reopen),
        1 => (0usize..300, any::<usize>()).prop_map(|(s, c)| Op::Torn(s, c)),
    ]
}

#[derive(Clone, Debug)]
enum ModelRecord {
    Batch {
        id: BatchId,
        payload: Vec<u8>,
    },
    Ack {
        id: BatchId,
        ack: String,
        accepted: u64,
        refused: u64,
    },
}

struct Model {
    records: Vec<(u64, i64, ModelRecord)>,
    batches: Vec<BatchId>,
    now: i64,
}

impl Model {
    fn expected(&self, first_seq: u64) -> Vec<SentBatch> {
        let mut out: Vec<SentBatch> = Vec::new();
        for (seq, time, r) in &self.records {
            match r {
                ModelRecord::Batch { id, payload } if *seq >= first_seq => out.push(SentBatch {
                    seq: *seq,
                    time: *time,
                    batch_id: *id,
                    payload: payload.clone(),
                    ack: None,
                }),
                ModelRecord::Ack {
                    id,
                    ack,
                    accepted,
                    refused,
                } => {
                    for b in out.iter_mut().filter(|b| b.batch_id == *id) {
                        b.ack = Some(AckInfo {
                            seq: *seq,
                            time: *time,
                            ack_id: ack.clone(),
                            accepted: *accepted,
                            refused: *refused,
                        });
                    }
                }
                _ => {}
            }
        }
        out
    }
}

fn check(
    state: &Path,
    ledger: &Ledger,
    model: &Model,
    last_first: &mut u64,
) -> Result<(), TestCaseError> {
    let first = ledger.first_seq();
    prop_assert!(first >= *last_first, "first seq went back");
    *last_first = first;
    let sent = LedgerReader::open(state)
        .unwrap()
        .list(&Filter::default())
        .unwrap();
    prop_assert_eq!(sent, model.expected(first));
    let v = verify(state).unwrap();
    let present = model.records.iter().filter(|(s, ..)| *s >= first).count() as u64;
    prop_assert_eq!(v.records, present);
    prop_assert_eq!(v.torn_tail, None);
    prop_assert_eq!(ledger.next_seq(), model.records.len() as u64);
    if present > 0 {
        prop_assert_eq!(v.head, Some(to_hex(&ledger.head())));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn list_equals_the_model_through_appends_acks_prunes_reopens_and_crashes(ops in proptest::collection::vec(op(), 1..60)) {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path();
        let opts = LedgerOptions { max_bytes: 4 * 4096, max_age: Duration::from_secs(120), segment_bytes: 4096 };
        let mut ledger = Some(Ledger::open(state, opts.clone()).unwrap());
        let mut model = Model { records: Vec::new(), batches: Vec::new(), now: T0 };
        let mut last_first = 0;
        let mut salt = 0u64;
        for op in ops {
            model.now += SEC;
            let l = ledger.as_mut().unwrap();
            match op {
                Op::Batch(size) => {
                    salt += 1;
                    let p = batch(size, salt);
                    let json = wire::payload_json(&p);
                    let seq = l.append_batch(p.batch_id, &json, model.now).unwrap();
                    prop_assert_eq!(seq, model.records.len() as u64);
                    model.records.push((seq, model.now, ModelRecord::Batch { id: p.batch_id, payload: json }));
                    model.batches.push(p.batch_id);
                }
                Op::Ack(i, a, r) => {
                    let Some(&id) = (!model.batches.is_empty()).then(|| &model.batches[i % model.batches.len()]) else { continue };
                    let ack = format!("ack-{i}");
                    let seq = l.append_ack(id, &ack, a.into(), r.into(), model.now).unwrap();
                    model.records.push((seq, model.now, ModelRecord::Ack { id, ack, accepted: a.into(), refused: r.into() }));
                }
                Op::Prune(secs) => {
                    model.now += i64::from(secs) * SEC;
                    let report = l.prune(model.now).unwrap();
                    prop_assert_eq!(report.first_kept_seq, l.first_seq());
                    prop_assert!(l.total_bytes() <= opts.max_bytes || l.segments() == 1);
                    // The oldest remaining sealed segment is not expired (times only grow).
                    let segs = list_segments(&ledger_dir(state)).unwrap();
                    if segs.len() > 1 {
                        let last_of_oldest = segs[1].first_seq - 1;
                        let t = model.records[last_of_oldest as usize].1;
                        prop_assert!(t >= model.now - 120 * SEC, "expired segment kept");
                    }
                }
                Op::Reopen => {
                    drop(ledger.take());
                    ledger = Some(Ledger::open(state, opts.clone()).unwrap());
                    prop_assert_eq!(ledger.as_ref().unwrap().recovery().torn_tail.clone(), None);
                }
                Op::Torn(size, cut) => {
                    salt += 1;
                    let p = batch(size, salt);
                    let json = wire::payload_json(&p);
                    l.append_batch(p.batch_id, &json, model.now).unwrap();
                    let seg = list_segments(&ledger_dir(state)).unwrap().pop().unwrap().path;
                    drop(ledger.take());
                    let len = std::fs::metadata(&seg).unwrap().len();
                    let text = std::fs::read(&seg).unwrap();
                    let line_start = text[..text.len() - 1].iter().rposition(|&b| b == b'\n').unwrap() as u64 + 1;
                    // Leave at least one byte of the line: a torn tail.
                    let cut = 1 + (cut as u64 % (len - line_start - 1));
                    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - cut).unwrap();
                    ledger = Some(Ledger::open(state, opts.clone()).unwrap());
                    prop_assert_eq!(ledger.as_ref().unwrap().recovery().torn_tail.as_ref().map(|t| t.seq), Some(model.records.len() as u64));
                }
            }
            check(state, ledger.as_ref().unwrap(), &model, &mut last_first)?;
        }
    }

    #[test]
    fn any_payload_round_trips_byte_for_byte(
        messages in proptest::collection::vec(any::<String>(), 0..8),
        value in any::<String>(),
        ack_id in any::<String>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(tmp.path(), LedgerOptions::default()).unwrap();
        let mut p = batch(10, 0);
        let template = p.events[0].clone();
        p.events = messages
            .into_iter()
            .map(|m| {
                let mut e = template.clone();
                e.message = m;
                e.attrs.insert("v".into(), Value::Str(value.clone()));
                e
            })
            .collect();
        let json = wire::payload_json(&p);
        ledger.append_batch(p.batch_id, &json, T0).unwrap();
        ledger.append_ack(p.batch_id, &ack_id, 1, 2, T0 + 1).unwrap();
        let sent = LedgerReader::open(tmp.path()).unwrap().list(&Filter::default()).unwrap();
        prop_assert_eq!(sent.len(), 1);
        prop_assert_eq!(&sent[0].payload, &json);
        prop_assert_eq!(sent[0].decode().unwrap(), p);
        prop_assert_eq!(sent[0].ack.as_ref().map(|a| a.ack_id.as_str()), Some(ack_id.as_str()));
        prop_assert_eq!(verify(tmp.path()).unwrap().records, 2);
    }

    #[test]
    fn verify_list_and_open_never_panic_on_arbitrary_segment_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048), seq in prop_oneof![Just(0u64), any::<u64>()]) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(ledger_dir(tmp.path())).unwrap();
        std::fs::write(ledger_dir(tmp.path()).join(segment_file_name(seq)), &bytes).unwrap();
        let _ = verify(tmp.path());
        let _ = LedgerReader::open(tmp.path()).unwrap().list(&Filter::default());
        if let Ok(mut l) = Ledger::open(tmp.path(), LedgerOptions::default()) {
            let p = batch(10, 0);
            let _ = l.append_batch(p.batch_id, &wire::payload_json(&p), T0);
        }
    }

    #[test]
    fn verify_never_panics_on_mutated_ledgers(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        let tmp = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(tmp.path(), LedgerOptions::default()).unwrap();
        fill(&mut ledger, 3, 60);
        drop(ledger);
        let seg = segment_paths(tmp.path())[0].clone();
        let mut bytes = std::fs::read(&seg).unwrap();
        for (pos, b) in edits {
            let at = pos % bytes.len();
            bytes[at] = b;
        }
        bytes.truncate(cut % (bytes.len() + 1));
        std::fs::write(&seg, &bytes).unwrap();
        let _ = verify(tmp.path());
        let _ = LedgerReader::open(tmp.path()).unwrap().list(&Filter::default());
        let _ = Ledger::open(tmp.path(), LedgerOptions::default());
    }
}
