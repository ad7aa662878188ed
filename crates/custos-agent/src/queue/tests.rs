use super::*;
use crate::sources::FilePosition;
use custos_model::TableName;
use proptest::prelude::*;

fn key() -> Arc<SealKey> {
    Arc::new(SealKey::from_bytes(&[9; 32]).unwrap())
}

fn ev(cat: Category, msg: &str) -> Event {
    Event {
        table: TableName::new("logs").unwrap(),
        time: 1,
        level: Level::Basic,
        category: cat,
        host: "h".into(),
        message: msg.into(),
        attrs: Default::default(),
    }
}

/// Incompressible text of `n` bytes (zstd must not shrink the records).
fn noise(seed: u64, n: usize) -> String {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            char::from(b'a' + ((x >> 33) % 26) as u8)
        })
        .collect()
}

fn cp(source: &str, seq: u64, offset: u64) -> Checkpoint {
    Checkpoint::new(source, seq, Some(vec![FilePosition { path: "/x".into(), dev: 1, ino: 2, offset }]))
}

fn opts(max: u64) -> QueueOptions {
    QueueOptions { max_bytes: max, segment_bytes: 64 << 10 }
}

fn open(dir: &Path, max: u64) -> (Queue, Recovered) {
    Queue::open(dir, opts(max), key()).unwrap()
}

/// Append, sync and commit: what the run loop does for one poll.
fn accept(q: &mut Queue, source: &str, events: Vec<Event>, c: &Checkpoint) -> Appended {
    let a = q.append_group(source, &events, c).unwrap();
    q.sync().unwrap();
    q.mark_committed(a.group);
    a
}

fn drain(q: &mut Queue) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(t) = q.take().unwrap() {
        out.extend(t.events.iter().map(|e| e.message.clone()));
        q.finish(t.lsn, DoneReason::Acked);
    }
    q.sync().unwrap();
    out
}

#[test]
fn accepted_events_survive_reopen_and_leave_after_their_acknowledgement() {
    let d = tempfile::tempdir().unwrap();
    {
        let (mut q, _) = open(d.path(), 1 << 30);
        accept(&mut q, "s", vec![ev(Category::Logs, "a"), ev(Category::Security, "b")], &cp("s", 1, 10));
        q.sync().unwrap();
    }
    let (mut q, rec) = open(d.path(), 1 << 30);
    assert_eq!(rec.records, 2);
    assert!(rec.checkpoints.is_empty(), "the group was committed");
    let mut got = drain(&mut q);
    got.sort();
    assert_eq!(got, ["a", "b"]);
    drop(q);
    let (mut q, rec) = open(d.path(), 1 << 30);
    assert_eq!(rec.records, 0);
    assert!(drain(&mut q).is_empty());
}

#[test]
fn a_durable_group_whose_commit_was_lost_returns_its_checkpoint_and_is_sent_after_it() {
    let d = tempfile::tempdir().unwrap();
    {
        let (mut q, _) = open(d.path(), 1 << 30);
        accept(&mut q, "s", vec![ev(Category::Logs, "old")], &cp("s", 1, 10));
        let a = q.append_group("s", &[ev(Category::Logs, "new")], &cp("s", 2, 20)).unwrap();
        q.sync().unwrap();
        let _ = a; // crash before the source commit
    }
    let (mut q, rec) = open(d.path(), 1 << 30);
    assert_eq!(rec.checkpoints.len(), 1);
    let (g, c) = &rec.checkpoints[0];
    assert_eq!(c, &cp("s", 2, 20));
    // Pending until committed again: only the old record is sent.
    let t = q.take().unwrap().unwrap();
    assert_eq!(t.events[0].message, "old");
    assert!(q.take().unwrap().is_none());
    q.mark_committed(*g);
    assert_eq!(q.take().unwrap().unwrap().events[0].message, "new");
}

#[test]
fn a_group_cut_by_a_crash_is_dropped_and_its_checkpoint_not_returned() {
    let d = tempfile::tempdir().unwrap();
    {
        let (mut q, _) = open(d.path(), 1 << 30);
        accept(&mut q, "s", vec![ev(Category::Logs, "kept")], &cp("s", 1, 10));
        q.sync().unwrap(); // the committed record, so the group is the log's tail
        q.append_group("s", &[ev(Category::Logs, "x"), ev(Category::Performance, "y")], &cp("s", 2, 20)).unwrap();
        q.sync().unwrap();
    }
    // Cut the last record (the carrier) off the log, as a torn write would.
    let seg = std::fs::read_dir(d.path().join(QUEUE_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .max()
        .unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 10).unwrap();
    let (mut q, rec) = open(d.path(), 1 << 30);
    assert_eq!(rec.incomplete_records, 1);
    assert!(rec.checkpoints.is_empty());
    assert_eq!(drain(&mut q), ["kept"]);
}

#[test]
fn records_are_encrypted_at_rest() {
    let d = tempfile::tempdir().unwrap();
    let (mut q, _) = open(d.path(), 1 << 30);
    accept(&mut q, "s", vec![ev(Category::Logs, "password=hunter2-very-secret")], &cp("s", 1, 10));
    q.sync().unwrap();
    for e in std::fs::read_dir(d.path().join(QUEUE_DIR)).unwrap() {
        let b = std::fs::read(e.unwrap().path()).unwrap();
        assert!(!b.windows(6).any(|w| w == b"hunter"), "plaintext found on disk");
    }
    // Another key cannot read it.
    drop(q);
    let (mut q, _) = Queue::open(d.path(), opts(1 << 30), Arc::new(SealKey::from_bytes(&[1; 32]).unwrap())).unwrap();
    assert!(q.take().unwrap().is_none());
    assert!(q.status().counters.corrupt_records >= 1);
}

#[test]
fn a_full_queue_evicts_performance_then_logs_then_usage_then_inventory_and_never_security() {
    let d = tempfile::tempdir().unwrap();
    let mut n = 0u64;
    let mut mk = |cat| {
        n += 1;
        (0..20).map(|i| ev(cat, &noise(n * 100 + i, 2000))).collect::<Vec<_>>()
    };
    let (mut q, _) = open(d.path(), 600 << 10);
    let order = [Category::Security, Category::Inventory, Category::Usage, Category::Logs, Category::Performance];
    for (i, cat) in order.iter().enumerate() {
        for j in 0..3 {
            accept(&mut q, "s", mk(*cat), &cp("s", (i * 10 + j) as u64, 1));
        }
    }
    let mut evicted_order: Vec<Category> = Vec::new();
    for k in 0..600 {
        let a = accept(&mut q, "s", vec![ev(Category::Security, &noise(50_000 + k, 2000))], &cp("s", 1000 + k, 1));
        assert!(a.dropped.is_empty());
        // A category is evicted only once every less important one is gone.
        let st = q.status();
        for c in a.evicted.keys() {
            let class = eviction_class(*c).unwrap();
            for (name, n) in &st.events_by_category {
                let other = Category::ALL.iter().find(|x| x.name() == name).unwrap();
                if eviction_class(*other).is_some_and(|o| o < class) {
                    assert_eq!(*n, 0, "{name} still queued while {c:?} was evicted");
                }
            }
        }
        let mut cats: Vec<Category> = a.evicted.keys().copied().collect();
        cats.sort_by_key(|c| eviction_class(*c));
        for c in cats {
            if evicted_order.last() != Some(&c) {
                evicted_order.push(c);
            }
        }
    }
    let st = q.status();
    assert_eq!(st.events_by_category.keys().collect::<Vec<_>>(), ["security"]);
    assert_eq!(st.events_by_category["security"], 3 * 20 + 600, "no security event was evicted");
    assert_eq!(st.counters.evicted_events["performance"], 60);
}

#[test]
fn an_incoming_record_less_important_than_everything_queued_is_dropped_and_counted() {
    let d = tempfile::tempdir().unwrap();
    let (mut q, _) = open(d.path(), 300 << 10);
    // Fill with inventory until the queue evicts its own oldest inventory.
    let mut k = 0;
    loop {
        k += 1;
        let evs: Vec<Event> = (0..10).map(|i| ev(Category::Inventory, &noise(k * 100 + i, 3000))).collect();
        if !accept(&mut q, "s", evs, &cp("s", k, 1)).evicted.is_empty() {
            break;
        }
        assert!(k < 500);
    }
    let perf: Vec<Event> = (0..10).map(|i| ev(Category::Performance, &noise(77_000 + i, 3000))).collect();
    let a = accept(&mut q, "p", perf, &cp("p", 1, 1));
    let dropped = a.dropped.get(&Category::Performance).copied().unwrap_or(0);
    assert_eq!(dropped, 10);
    assert!(a.evicted.is_empty(), "nothing more important is evicted for it");
    assert_eq!(q.status().counters.evicted_events["performance"], 10);
    assert!(dropped > 0);
    assert!(q.status().disk_bytes <= (300 << 10) + 2 * (64 << 10) + 40_000, "{:?}", q.status());
}

#[test]
fn the_bound_holds_while_records_come_and_go_and_compaction_frees_segments_pinned_by_security() {
    let d = tempfile::tempdir().unwrap();
    let (mut q, _) = open(d.path(), 512 << 10);
    let big = "z".repeat(1500);
    for k in 0..2000u64 {
        // One small security record that stays (the server is "down" for it) ...
        if k % 50 == 0 {
            accept(&mut q, "sec", vec![ev(Category::Security, &format!("sec{k}"))], &cp("sec", k, 1));
        }
        let evs: Vec<Event> = (0..8).map(|i| ev(Category::Logs, &format!("{big}{k}-{i}-{}", k * 7 + i))).collect();
        accept(&mut q, "s", evs, &cp("s", k, 1));
        // ... while logs are delivered.
        while let Some(t) = q.take().unwrap() {
            if t.category == Category::Security {
                q.untake(t.lsn);
                break;
            }
            q.finish(t.lsn, DoneReason::Acked);
        }
        let st = q.status();
        assert!(st.disk_bytes <= (512 << 10) + 2 * (64 << 10) + 20_000, "k={k} {st:?}");
    }
    let st = q.status();
    assert!(st.counters.compacted_bytes > 0, "{st:?}");
    assert_eq!(st.events_by_category.get("security"), Some(&40));
}

#[test]
fn purge_without_reading_and_replace_with_a_filtered_copy() {
    let d = tempfile::tempdir().unwrap();
    let (mut q, _) = open(d.path(), 1 << 30);
    let mut full = ev(Category::Logs, "debug line");
    full.level = Level::Full;
    accept(&mut q, "s", vec![ev(Category::Logs, "warn line"), full], &cp("s", 1, 1));
    accept(&mut q, "p", vec![ev(Category::Performance, "perf")], &cp("p", 1, 1));
    let purged = q.purge_where(|c, _| c == Category::Performance);
    assert_eq!(purged.get(&Category::Performance), Some(&1));
    let above = q.ready_above(Level::Enhanced);
    assert_eq!(above.len(), 1);
    let t = q.take_lsn(above[0]).unwrap().unwrap();
    let kept: Vec<Event> = t.events.into_iter().filter(|e| e.level <= Level::Enhanced).collect();
    let id = format::derived_batch_id(t.batch_id, b"level=2");
    let new = q.replace(t.lsn, kept, id, &t.source).unwrap().unwrap();
    q.untake(new);
    q.sync().unwrap();
    drop(q);
    let (mut q, _) = open(d.path(), 1 << 30);
    let t = q.take().unwrap().unwrap();
    assert_eq!(t.batch_id, id);
    assert_eq!(t.events.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(), ["warn line"]);
    q.finish(t.lsn, DoneReason::Acked);
    assert!(q.take().unwrap().is_none());
}

#[test]
fn a_damaged_record_is_skipped_counted_and_the_rest_delivered() {
    let d = tempfile::tempdir().unwrap();
    {
        let (mut q, _) = open(d.path(), 1 << 30);
        for k in 0..3 {
            accept(&mut q, "s", vec![ev(Category::Logs, &format!("m{k}"))], &cp("s", k, 1));
        }
    }
    let seg = std::fs::read_dir(d.path().join(QUEUE_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .unwrap();
    let mut b = std::fs::read(&seg).unwrap();
    // Flip a byte in the middle of the file (inside some record).
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    std::fs::write(&seg, &b).unwrap();
    let (mut q, rec) = open(d.path(), 1 << 30);
    // The last group's committed record was never synced: commit it again.
    for (g, _) in &rec.checkpoints {
        q.mark_committed(*g);
    }
    let got = drain(&mut q);
    assert!(rec.wal.corrupt_records + q.status().counters.corrupt_records >= 1);
    assert!(got.len() >= 2 && got.len() < 3, "{got:?}");
}

#[derive(Clone, Debug)]
enum Op {
    Poll(u8, u8),
    Sync,
    Commit,
    Send(u8),
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, 1u8..5).prop_map(|(s, n)| Op::Poll(s, n)),
        2 => Just(Op::Sync),
        3 => Just(Op::Commit),
        3 => (1u8..4).prop_map(Op::Send),
        1 => Just(Op::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The model: a source position is committed only after its group was
    /// synced; whatever the crashes, every event of a committed group is
    /// delivered at least once, and never after its acknowledgement was
    /// made durable; the recovered checkpoint is never older than the
    /// committed one.
    #[test]
    fn committed_events_are_never_lost_and_checkpoints_never_go_back(ops in proptest::collection::vec(op(), 1..60)) {
        let d = tempfile::tempdir().unwrap();
        let (mut q, _) = open(d.path(), 1 << 30);
        let sources = ["a", "b", "c"];
        let mut seq = [0u64; 3];
        // Committed position per source (what positions.json would hold).
        let mut committed = [0u64; 3];
        // Appended but not committed: (source, group, last lsn, seq, events).
        let mut pending: Option<(usize, u64, Lsn, u64, Vec<String>)> = None;
        let mut synced_to: Lsn = 0;
        // Events whose group was committed and that were not acknowledged durably.
        let mut owed: BTreeSet<String> = BTreeSet::new();
        let mut acked_unsynced: Vec<String> = Vec::new();
        let mut n = 0;
        for o in ops {
            match o {
                Op::Poll(s, k) => {
                    if pending.is_some() { continue; }
                    let s = s as usize;
                    seq[s] += 1;
                    let msgs: Vec<String> = (0..k).map(|_| { n += 1; format!("e{n}") }).collect();
                    let cat = if k % 2 == 0 { Category::Logs } else { Category::Inventory };
                    let evs: Vec<Event> = msgs.iter().enumerate().map(|(i, m)| ev(if i == 0 { Category::Security } else { cat }, m)).collect();
                    let a = q.append_group(sources[s], &evs, &cp(sources[s], seq[s], seq[s])).unwrap();
                    pending = Some((s, a.group, a.last_lsn, seq[s], msgs));
                }
                Op::Sync => {
                    synced_to = q.sync().unwrap();
                    for m in acked_unsynced.drain(..) { owed.remove(&m); }
                }
                Op::Commit => {
                    if let Some((s, g, last, sq, msgs)) = pending.take() {
                        if last < synced_to {
                            committed[s] = sq;
                            q.mark_committed(g);
                            owed.extend(msgs);
                        } else {
                            pending = Some((s, g, last, sq, msgs));
                        }
                    }
                }
                Op::Send(k) => {
                    for _ in 0..k {
                        let Some(t) = q.take().unwrap() else { break };
                        q.finish(t.lsn, DoneReason::Acked);
                        acked_unsynced.extend(t.events.iter().map(|e| e.message.clone()));
                    }
                }
                Op::Crash => {
                    drop(q);
                    let (q2, rec) = open(d.path(), 1 << 30);
                    q = q2;
                    acked_unsynced.clear();
                    for (g, c) in &rec.checkpoints {
                        let s = sources.iter().position(|x| *x == c.source_name()).unwrap();
                        prop_assert!(c.seq() >= committed[s], "checkpoint went back: {} < {}", c.seq(), committed[s]);
                        // The events of that group are owed now.
                        if let Some((ps, pg, _, _, msgs)) = pending.take() {
                            if pg == *g { owed.extend(msgs); } else { pending = Some((ps, pg, 0, 0, msgs)); }
                        }
                        committed[s] = c.seq();
                        q.mark_committed(*g);
                    }
                    pending = None;
                    synced_to = 0;
                    // Every owed event is in the queue (ready).
                    let mut present = BTreeSet::new();
                    let mut taken = Vec::new();
                    while let Some(t) = q.take().unwrap() {
                        present.extend(t.events.iter().map(|e| e.message.clone()));
                        taken.push(t.lsn);
                    }
                    for l in taken { q.untake(l); }
                    for m in &owed {
                        prop_assert!(present.contains(m), "lost {m}");
                    }
                }
            }
        }
    }
}
