//! Durable queue benchmarks (plain `main`, no harness). Run with
//! `cargo bench -p custos-agent --bench queue`.
//!
//! Events are real log lines: the nine loghub `*_2k.log` files of
//! `../shared/corpus/loghub`, turned into events the way the file source
//! does (table `logs`, category logs, `file`/`source`/`severity`
//! attributes, level from the detected severity). One group is
//! `QUEUE_BENCH_GROUP` consecutive lines of one file, appended under that
//! file's source name with its checkpoint.
//!
//! 1. **Throughput with durability on.** A producer appends groups and calls
//!    `sync()` every 100 ms of wall time (row 1) or after every group (row
//!    2), then marks the synced groups committed; a consumer drains with
//!    `take` / `finish(Acked)` (syncing every 100 ms, which writes the done
//!    records); then both at once on a fresh queue, in two threads sharing
//!    the queue in a `Mutex` as the agent's run loop does (every call,
//!    including the fdatasync, holds the lock). "JSON" is the sum of
//!    `serde_json::to_vec(&event).len()` over the events appended (computed
//!    before the timed loop): the events' serialized size, before the
//!    queue's own JSON body, zstd and sealing. "disk" is the growth of
//!    `status().disk_bytes` (the log's files) over the row.
//! 2. **Recovery after kill -9.** The bench runs itself as a child
//!    (`QUEUE_BENCH_ROLE=fill`) that fills a queue to `QUEUE_BENCH_FILL_MIB`
//!    of log files as the agent would (sync every 100 ms, commit), keeps
//!    appending, and is killed with SIGKILL. The parent then times
//!    `Queue::open` and the first `take()` (time to start shipping again),
//!    with the page cache dropped first (when it can write
//!    `/proc/sys/vm/drop_caches`) and warm, and splits the warm time into
//!    the log's recovery scan alone (`custos_wal::Wal::open`: read and
//!    CRC-32C of every record), the same scan handing every payload to a
//!    visitor (`Wal::open_with`, which `Queue::open` builds its index from),
//!    and the rest (decoding headers, the index); it also times a full
//!    `Wal::read_from` pass (the second read `Queue::open` made before it
//!    used `open_with`) and one `mark_committed` call with the whole backlog
//!    in the index.
//! 3. **Resident memory with the backlog.** A child (`QUEUE_BENCH_ROLE=rss`)
//!    prints VmRSS / VmHWM before opening, after opening and after taking
//!    and finishing `QUEUE_BENCH_RSS_TAKES` records one at a time, for the
//!    full queue, a small one and an empty one.
//!
//! Environment:
//! * `QUEUE_BENCH_EVENTS` — events per throughput row (default 5,000,000)
//! * `QUEUE_BENCH_GROUP` — events per group (default 1000)
//! * `QUEUE_BENCH_SYNC_MS` — group-commit interval (default 100)
//! * `QUEUE_BENCH_FILL_MIB` — size of the recovery queue (default 1024; 0
//!   skips parts 2 and 3)
//! * `QUEUE_BENCH_KILL_AFTER_MS` — how long the child keeps appending after
//!   reaching the size, before SIGKILL (default 300)
//! * `QUEUE_BENCH_DROP_CACHES` — `0` to never drop the page cache (default:
//!   try, needs root)
//! * `QUEUE_BENCH_RSS_TAKES` — records taken in part 3 (default 200)
//! * `QUEUE_BENCH_DIR` — where to put the state directories (default: the
//!   system temp dir; must be a real disk, not tmpfs). Everything is deleted
//!   at the end.
//! * `QUEUE_BENCH_KEEP` — `1` keeps the state directories, to profile the
//!   bench binary run with `QUEUE_BENCH_STATE=<dir>/recovery` and
//!   `QUEUE_BENCH_ROLE=open` (open the queue, take one record) or
//!   `QUEUE_BENCH_ROLE=split` (the parts of the open, one at a time)
//! * `QUEUE_BENCH_CORPUS` — the loghub directory (default
//!   `<workspace>/../shared/corpus/loghub`)

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use custos_agent::queue::format::DoneReason;
use custos_agent::queue::{Queue, QueueOptions, Recovered};
use custos_agent::seal::SealKey;
use custos_agent::sources::{severity, Checkpoint};
use custos_model::{Category, Event, TableName, Value};

const ROLE: &str = "QUEUE_BENCH_ROLE";
const STATE: &str = "QUEUE_BENCH_STATE";
const MAX_BYTES: &str = "QUEUE_BENCH_MAX_BYTES";
/// Vector's published disk-buffer throughput on 2 vCPU (not measured here).
const VECTOR_MIB_S: f64 = 68.0;
/// The aim.
const AIM_MB_S: f64 = 150.0;
const FILES: [&str; 9] = [
    "OpenSSH",
    "Hadoop",
    "HDFS",
    "Android",
    "Apache",
    "OpenStack",
    "Thunderbird",
    "Windows",
    "Zookeeper",
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// This process's CPU time (user + system), in seconds.
fn cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 (1-based): 11 and 12 here.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// VmRSS and VmHWM of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

/// The file system type holding `p` (longest mount point prefix).
fn fs_type(p: &Path) -> String {
    let p = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best = (0usize, String::from("?"), String::new());
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        if p.starts_with(f[1]) && f[1].len() >= best.0 {
            best = (f[1].len(), f[2].to_string(), f[0].to_string());
        }
    }
    format!("{} on {}", best.1, best.2)
}

/// One poll's worth of events of one file.
struct Group {
    source: String,
    events: Vec<Event>,
    /// Sum of the events' serialized JSON sizes.
    json_bytes: u64,
}

fn corpus_dir() -> PathBuf {
    match std::env::var_os("QUEUE_BENCH_CORPUS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/loghub"),
    }
}

/// The corpus as groups of `group` lines, one file per group, files
/// interleaved (OpenSSH, Hadoop, …, OpenSSH, …).
fn load_groups(group: usize) -> Vec<Group> {
    let dir = corpus_dir();
    let table = TableName::new("logs").expect("valid table name");
    let host = "h-0123456789abcdef";
    let mut per_file: Vec<Vec<Group>> = Vec::new();
    let mut t = 1_750_000_000_000_000i64;
    for name in FILES {
        let path = dir.join(name).join(format!("{name}_2k.log"));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("skipping {}: {e}", path.display());
                continue;
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        let file_attr = format!("/var/log/loghub/{name}.log");
        let events: Vec<Event> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|line| {
                t += 1;
                let sev = severity::detect(line);
                let mut attrs = std::collections::BTreeMap::new();
                attrs.insert("file".to_string(), Value::Str(file_attr.clone()));
                attrs.insert("source".to_string(), Value::Str("file".to_string()));
                attrs.insert("severity".to_string(), Value::Str(sev.name().to_string()));
                Event {
                    table: table.clone(),
                    time: t,
                    level: sev.level(),
                    category: Category::Logs,
                    host: host.to_string(),
                    message: line.to_string(),
                    attrs,
                }
            })
            .collect();
        let groups = events
            .chunks(group)
            .map(|c| Group {
                source: format!("file:{name}"),
                json_bytes: c
                    .iter()
                    .map(|e| serde_json::to_vec(e).expect("json").len() as u64)
                    .sum(),
                events: c.to_vec(),
            })
            .collect();
        per_file.push(groups);
    }
    assert!(
        !per_file.is_empty(),
        "no loghub file found under {} (set QUEUE_BENCH_CORPUS)",
        dir.display()
    );
    let mut out = Vec::new();
    let most = per_file.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..most {
        for f in per_file.iter_mut() {
            if i < f.len() {
                out.push(std::mem::replace(
                    &mut f[i],
                    Group {
                        source: String::new(),
                        events: Vec::new(),
                        json_bytes: 0,
                    },
                ));
            }
        }
    }
    out
}

fn open(state: &Path, max_bytes: u64, key: &Arc<SealKey>) -> (Queue, Recovered) {
    Queue::open(
        state,
        QueueOptions {
            max_bytes,
            segment_bytes: 0,
        },
        key.clone(),
    )
    .expect("open queue")
}

#[derive(Clone, Copy)]
enum SyncMode {
    Every(Duration),
    EveryGroup,
}

#[derive(Default)]
struct Produced {
    events: u64,
    json: u64,
    groups: u64,
    syncs: u64,
    secs: f64,
    disk: u64,
}

/// Append groups until `n_events`, syncing per `mode` and marking the synced
/// groups committed right after each sync (as the collector does once its
/// group is durable). `progress` is called after every sync.
fn produce(
    q: &Mutex<Queue>,
    pool: &[Group],
    n_events: u64,
    mode: SyncMode,
    seq: &mut u64,
    mut progress: impl FnMut(&Queue, &Produced) -> bool,
) -> Produced {
    let disk0 = q.lock().unwrap().status().disk_bytes;
    let mut p = Produced::default();
    let start = Instant::now();
    let mut last_sync = start;
    let mut unsynced: Vec<u64> = Vec::new();
    let mut i = 0usize;
    loop {
        let done = p.events >= n_events;
        if !done {
            let g = &pool[i % pool.len()];
            i += 1;
            *seq += 1;
            let cp = Checkpoint::for_bench(&g.source, *seq);
            // As the run loop does: encode (JSON, zstd) outside the lock.
            let enc = Queue::encode_group(&g.source, &g.events, &cp).expect("encode");
            let a = q.lock().unwrap().append_encoded(enc).expect("append");
            unsynced.push(a.group);
            p.events += g.events.len() as u64;
            p.json += g.json_bytes;
            p.groups += 1;
        }
        let due = match mode {
            SyncMode::EveryGroup => true,
            SyncMode::Every(d) => last_sync.elapsed() >= d,
        };
        if due || done {
            let mut guard = q.lock().unwrap();
            guard.sync().expect("sync");
            for g in unsynced.drain(..) {
                guard.mark_committed(g);
            }
            if done {
                // Write the last committed records.
                guard.sync().expect("sync");
            }
            p.syncs += 1;
            last_sync = Instant::now();
            let keep_going = progress(&guard, &p);
            if done || !keep_going {
                p.secs = start.elapsed().as_secs_f64();
                p.disk = guard.status().disk_bytes.saturating_sub(disk0);
                return p;
            }
        }
    }
}

#[derive(Default)]
struct Consumed {
    events: u64,
    records: u64,
    syncs: u64,
    secs: f64,
    read_bytes: u64,
}

/// Take and finish records, syncing every `interval`, until `until_events`
/// were taken (or, with `until_events == 0`, until nothing is ready).
fn consume(
    q: &Mutex<Queue>,
    until_events: u64,
    interval: Duration,
    producing: Option<&AtomicBool>,
) -> Consumed {
    let bytes0 = q.lock().unwrap().status().bytes;
    let key = q.lock().unwrap().key();
    let mut c = Consumed::default();
    let start = Instant::now();
    let mut last_sync = start;
    loop {
        // As the run loop does: decode (open, zstd, JSON) outside the lock.
        let raw = q.lock().unwrap().take_raw().expect("take");
        let taken = raw.map(|r| Queue::decode_raw(&key, r).expect("decode"));
        match taken {
            Some(t) => {
                c.events += t.events.len() as u64;
                c.records += 1;
                let lsn = t.lsn;
                drop(t);
                q.lock().unwrap().finish(lsn, DoneReason::Acked);
            }
            None => {
                let still = producing.is_some_and(|p| p.load(Ordering::Acquire));
                if !still && (until_events == 0 || c.events >= until_events) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if until_events > 0 && c.events >= until_events {
            break;
        }
        if producing.is_none() && last_sync.elapsed() >= interval {
            q.lock().unwrap().sync().expect("sync");
            c.syncs += 1;
            last_sync = Instant::now();
        }
    }
    let mut g = q.lock().unwrap();
    g.sync().expect("sync");
    c.syncs += 1;
    c.secs = start.elapsed().as_secs_f64();
    c.read_bytes = bytes0.saturating_sub(g.status().bytes);
    c
}

fn row(label: &str, events: u64, json: u64, disk: Option<u64>, secs: f64, syncs: u64, cpu: f64) {
    let disk = match disk {
        Some(d) => format!("{:>7.1} MB/s disk", mb(d) / secs),
        None => "               ".to_string(),
    };
    println!(
        "{label:<46} {events:>9} ev {secs:>7.2} s {:>9.0} ev/s {:>7.1} MB/s JSON ({:>6.1} MiB/s) {disk} {syncs:>5} syncs, cpu {cpu:.1} s",
        events as f64 / secs,
        mb(json) / secs,
        mib(json) / secs,
    );
}

fn compare(label: &str, json: u64, secs: f64) {
    let mib_s = mib(json) / secs;
    let mb_s = mb(json) / secs;
    println!(
        "    {label}: {mb_s:.1} MB/s = {:.2}x Vector's disk buffer {VECTOR_MIB_S} MiB/s on 2 vCPU (published, not measured in this run), {:.2}x the aim of {AIM_MB_S} MB/s",
        mib_s / VECTOR_MIB_S,
        mb_s / AIM_MB_S
    );
}

fn throughput(base: &Path, pool: &[Group]) {
    let n = env_u64("QUEUE_BENCH_EVENTS", 5_000_000);
    let interval = Duration::from_millis(env_u64("QUEUE_BENCH_SYNC_MS", 100));
    let key = Arc::new(SealKey::from_bytes(&[7u8; 32]).expect("key"));
    let max_bytes = 64u64 << 30;
    let mut seq = 0u64;
    println!(
        "\n== 1. throughput, durability on ({n} events per row, sync every {} ms, load {}) ==",
        interval.as_millis(),
        loadavg()
    );

    let state = base.join("throughput");
    let q = Mutex::new(open(&state, max_bytes, &key).0);
    let mut rows: Vec<(String, u64, f64)> = Vec::new();
    for (label, mode) in [
        (
            format!("producer, sync every {} ms", interval.as_millis()),
            SyncMode::Every(interval),
        ),
        (
            "producer, sync after every group".to_string(),
            SyncMode::EveryGroup,
        ),
    ] {
        let cpu0 = cpu_secs();
        let p = produce(&q, pool, n, mode, &mut seq, |_, _| true);
        row(
            &label,
            p.events,
            p.json,
            Some(p.disk),
            p.secs,
            p.syncs,
            cpu_secs() - cpu0,
        );
        println!(
            "    {} groups; on disk {:.1} MB for {:.1} MB of event JSON ({:.1}x smaller); load {}",
            p.groups,
            mb(p.disk),
            mb(p.json),
            p.json as f64 / p.disk.max(1) as f64,
            loadavg()
        );
        rows.push((label, p.json, p.secs));
    }
    let backlog = q.lock().unwrap().status();
    let json_total: u64 = rows.iter().map(|r| r.1).sum();
    let cpu0 = cpu_secs();
    let c = consume(&q, 0, interval, None);
    row(
        "consumer, take + finish(Acked), both rows",
        c.events,
        json_total,
        None,
        c.secs,
        c.syncs,
        cpu_secs() - cpu0,
    );
    println!(
        "    {} records ({:.1} MB in the log) read and decrypted: {:.1} MB/s of log; page cache warm; load {}",
        c.records,
        mb(c.read_bytes),
        mb(c.read_bytes) / c.secs,
        loadavg()
    );
    assert_eq!(
        c.events, backlog.events,
        "the consumer must get every event"
    );
    rows.push(("consumer".into(), json_total, c.secs));
    drop(q);
    let _ = std::fs::remove_dir_all(&state);

    // Both at once, sharing the queue in a mutex.
    let state = base.join("concurrent");
    let q = Arc::new(Mutex::new(open(&state, max_bytes, &key).0));
    let producing = Arc::new(AtomicBool::new(true));
    let produced_events = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_secs();
    let start = Instant::now();
    let consumer = {
        let (q, producing) = (q.clone(), producing.clone());
        std::thread::spawn(move || consume(&q, 0, interval, Some(&producing)))
    };
    let max_backlog = AtomicU64::new(0);
    let p = produce(&q, pool, n, SyncMode::Every(interval), &mut seq, |q, _| {
        max_backlog.fetch_max(q.status().events, Ordering::Relaxed);
        true
    });
    produced_events.store(p.events, Ordering::Release);
    producing.store(false, Ordering::Release);
    let c = consumer.join().expect("consumer thread");
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    row(
        &format!(
            "concurrent: producer (sync every {} ms)",
            interval.as_millis()
        ),
        p.events,
        p.json,
        Some(p.disk),
        p.secs,
        p.syncs,
        cpu,
    );
    row(
        "concurrent: consumer",
        c.events,
        p.json,
        None,
        c.secs,
        c.syncs,
        cpu,
    );
    row(
        "concurrent: end to end (append to finish)",
        c.events,
        p.json,
        None,
        wall,
        p.syncs,
        cpu,
    );
    println!(
        "    largest backlog seen at a sync: {} events; cpu {:.1} s over {:.1} s wall ({:.0}% of the 2 cores); load {}",
        max_backlog.load(Ordering::Relaxed),
        cpu,
        wall,
        100.0 * cpu / wall / 2.0,
        loadavg()
    );
    assert_eq!(c.events, p.events, "the consumer must get every event");
    rows.push(("concurrent end to end".into(), p.json, wall));
    drop(q);
    let _ = std::fs::remove_dir_all(&state);

    println!("  against Vector and the aim (event JSON in):");
    for (label, json, secs) in &rows {
        compare(label, *json, *secs);
    }
}

/// Child: fill a queue to the size asked for, say so, keep appending until killed.
fn child_fill() {
    let state = PathBuf::from(std::env::var_os(STATE).expect("state dir"));
    let target = env_u64("QUEUE_BENCH_FILL_MIB", 1024) << 20;
    let max_bytes = env_u64(MAX_BYTES, target * 2);
    let group = env_u64("QUEUE_BENCH_GROUP", 1000) as usize;
    let interval = Duration::from_millis(env_u64("QUEUE_BENCH_SYNC_MS", 100));
    let pool = load_groups(group);
    let key = Arc::new(SealKey::load_or_create(&state).expect("key"));
    let q = Mutex::new(open(&state, max_bytes, &key).0);
    let mut seq = 0u64;
    let mut out = std::io::stdout();
    let start = Instant::now();
    let mut next_report = 128u64 << 20;
    let mut filled_at: Option<Instant> = None;
    let _ = produce(
        &q,
        &pool,
        u64::MAX,
        SyncMode::Every(interval),
        &mut seq,
        |q, p| {
            let s = q.status();
            let line = if s.disk_bytes >= target && filled_at.is_none() {
                filled_at = Some(Instant::now());
                Some(format!(
                    "FILLED {} {} {} {} {:.3}\n",
                    s.disk_bytes,
                    s.records,
                    s.events,
                    p.json,
                    start.elapsed().as_secs_f64()
                ))
            } else if s.disk_bytes >= next_report && filled_at.is_none() {
                next_report += 128 << 20;
                Some(format!(
                    "progress {} {} {} {:.3}\n",
                    s.disk_bytes,
                    s.records,
                    p.json,
                    start.elapsed().as_secs_f64()
                ))
            } else {
                None
            };
            if let Some(l) = line {
                if out
                    .write_all(l.as_bytes())
                    .and_then(|_| out.flush())
                    .is_err()
                {
                    std::process::exit(2); // the parent is gone
                }
            }
            // Never run away if the parent does not kill us.
            !(filled_at.is_some_and(|t| t.elapsed() > Duration::from_secs(60))
                || s.disk_bytes > target + (max_bytes - target) / 2)
        },
    );
    eprintln!("fill child: not killed in time; exiting");
    std::process::exit(3);
}

/// Child: RSS before and after opening the queue and after taking records.
fn child_rss() {
    let state = PathBuf::from(std::env::var_os(STATE).expect("state dir"));
    let max_bytes = env_u64(MAX_BYTES, 2 << 30);
    let takes = env_u64("QUEUE_BENCH_RSS_TAKES", 200);
    let key = Arc::new(SealKey::load_or_create(&state).expect("key"));
    let (rss0, hwm0) = rss_kib();
    let t = Instant::now();
    let (mut q, rec) = open(&state, max_bytes, &key);
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let (rss1, hwm1) = rss_kib();
    let mut taken = 0u64;
    for _ in 0..takes {
        match q.take().expect("take") {
            Some(t) => {
                q.finish(t.lsn, DoneReason::Acked);
                taken += 1;
            }
            None => break,
        }
    }
    q.sync().expect("sync");
    let (rss2, hwm2) = rss_kib();
    let st = q.status();
    println!(
        "RSS {} {} {} {} {} {} {} {} {} {:.1}",
        rec.records, st.disk_bytes, taken, rss0, hwm0, rss1, hwm1, rss2, hwm2, open_ms
    );
}

fn drop_caches() -> bool {
    if env_u64("QUEUE_BENCH_DROP_CACHES", 1) == 0 {
        return false;
    }
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn print_recovered(
    label: &str,
    rec: &Recovered,
    open_s: f64,
    take_s: f64,
    first: Option<(u64, usize)>,
) {
    println!(
        "{label:<34} open {:>8.1} ms + first take {:>6.1} ms = {:>8.1} ms to start shipping; {} records, {} wal records, {} segments, torn tail {} B, incomplete {}, checkpoints to re-apply {}, corrupt {}{}",
        open_s * 1e3,
        take_s * 1e3,
        (open_s + take_s) * 1e3,
        rec.records,
        rec.wal.records,
        rec.wal.segments,
        rec.wal.torn_tail_bytes,
        rec.incomplete_records,
        rec.checkpoints.len(),
        rec.wal.corrupt_records,
        match first {
            Some((lsn, n)) => format!("; first record lsn {lsn}, {n} events"),
            None => "; nothing ready".into(),
        }
    );
}

fn time_open_take(state: &Path, max_bytes: u64, label: &str) -> f64 {
    let key = Arc::new(SealKey::load_or_create(state).expect("key"));
    let t = Instant::now();
    let (mut q, rec) = open(state, max_bytes, &key);
    let open_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let first = q.take().expect("take").map(|t| (t.lsn, t.events.len()));
    let take_s = t.elapsed().as_secs_f64();
    print_recovered(label, &rec, open_s, take_s, first);
    open_s + take_s
}

/// The parts of `Queue::open`, one at a time (page cache warm): the log's
/// recovery scan alone (`Wal::open`: read + CRC-32C of every record), the
/// same scan handing each payload to a visitor that does nothing
/// (`Wal::open_with`: adds a copy of every payload), and a full
/// `Wal::read_from` pass (the second read the queue did before it built its
/// index from the recovery pass). Returns the three times in seconds.
fn split(state: &Path) -> (f64, f64, f64) {
    let dir = state.join(custos_agent::queue::QUEUE_DIR);
    let opts = || custos_wal::WalOptions::new(&dir).with_segment_bytes(32 << 20);
    let t = Instant::now();
    let (wal, _) = custos_wal::Wal::open(opts()).expect("wal open");
    let scan_s = t.elapsed().as_secs_f64();
    drop(wal);
    let t = Instant::now();
    let mut visited = 0u64;
    let (wal, _) = custos_wal::Wal::open_with(opts(), &mut |_, p| visited += p.len() as u64)
        .expect("wal open_with");
    let visit_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut bytes = 0u64;
    for item in wal.read_from(wal.acked_lsn()).expect("reader") {
        bytes += item.expect("record").1.len() as u64;
    }
    let read_s = t.elapsed().as_secs_f64();
    assert_eq!(bytes, visited);
    (scan_s, visit_s, read_s)
}

fn cold_wal_open(state: &Path) -> Option<f64> {
    if !drop_caches() {
        return None;
    }
    let dir = state.join(custos_agent::queue::QUEUE_DIR);
    let t = Instant::now();
    let _ = custos_wal::Wal::open(custos_wal::WalOptions::new(&dir).with_segment_bytes(32 << 20))
        .expect("wal open");
    Some(t.elapsed().as_secs_f64())
}

/// Cost of one `mark_committed` call with the whole backlog in the index.
fn mark_committed_cost(state: &Path, max_bytes: u64) -> (u64, f64) {
    let key = Arc::new(SealKey::load_or_create(state).expect("key"));
    let (mut q, rec) = open(state, max_bytes, &key);
    let n = 200;
    let t = Instant::now();
    for g in 0..n {
        // A group that does not exist: the scan is the same; nothing is
        // written (no sync follows).
        q.mark_committed(u64::MAX - g);
    }
    (rec.records, t.elapsed().as_secs_f64() / n as f64)
}

fn ms(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{:.0}", x * 1e3))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rss_child(state: &Path, max_bytes: u64, label: &str) {
    let out = Command::new(std::env::current_exe().expect("exe"))
        .env(ROLE, "rss")
        .env(STATE, state)
        .env(MAX_BYTES, max_bytes.to_string())
        .stderr(Stdio::inherit())
        .output()
        .expect("rss child");
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(l) = text.lines().find(|l| l.starts_with("RSS ")) else {
        println!("{label}: rss child failed: {text}");
        return;
    };
    let f: Vec<&str> = l.split_whitespace().skip(1).collect();
    let v = |i: usize| f[i].parse::<u64>().unwrap_or(0);
    let m = |k: u64| k as f64 / 1024.0;
    println!(
        "{label:<22} {:>7} records {:>8.1} MiB | before open RSS {:>5.1} MiB (HWM {:>5.1}) | after open RSS {:>5.1} MiB (HWM {:>5.1}), open {} ms | after {} take+finish RSS {:>5.1} MiB (HWM {:>5.1})",
        v(0),
        mib(v(1)),
        m(v(3)),
        m(v(4)),
        m(v(5)),
        m(v(6)),
        f[9],
        v(2),
        m(v(7)),
        m(v(8)),
    );
}

fn recovery(base: &Path, pool: &[Group]) {
    let fill_mib = env_u64("QUEUE_BENCH_FILL_MIB", 1024);
    if fill_mib == 0 {
        return;
    }
    let target = fill_mib << 20;
    let max_bytes = target * 2;
    let kill_after = Duration::from_millis(env_u64("QUEUE_BENCH_KILL_AFTER_MS", 300));
    let state = base.join("recovery");
    std::fs::create_dir_all(&state).expect("state dir");
    println!(
        "\n== 2. recovery of a {fill_mib} MiB queue after kill -9 (max_bytes {} MiB, load {}) ==",
        max_bytes >> 20,
        loadavg()
    );
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .env(ROLE, "fill")
        .env(STATE, &state)
        .env(MAX_BYTES, max_bytes.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn fill child");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut filled = None;
    let mut last = (0u64, 0u64, 0f64);
    for l in lines.by_ref() {
        let Ok(l) = l else { break };
        if let Some(rest) = l.strip_prefix("FILLED ") {
            filled = Some(rest.to_string());
            break;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first() == Some(&"progress") && f.len() == 5 {
            let (disk, records, json) = (
                f[1].parse().unwrap_or(0u64),
                f[2].parse().unwrap_or(0u64),
                f[3].parse().unwrap_or(0u64),
            );
            let secs: f64 = f[4].parse().unwrap_or(0.0);
            println!(
                "  fill: {:>5.0} MiB, {:>6} records after {:>5.1} s; this stretch {:>6.1} MB/s of event JSON (load {})",
                mib(disk),
                records,
                secs,
                mb(json - last.1) / (secs - last.2),
                loadavg()
            );
            last = (disk, json, secs);
        } else {
            println!("  fill: {l}");
        }
    }
    let Some(filled) = filled else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the fill child exited before filling the queue");
    };
    std::thread::sleep(kill_after);
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    let f: Vec<&str> = filled.split_whitespace().collect();
    let v = |i: usize| f[i].parse::<u64>().unwrap_or(0);
    let secs: f64 = f[4].parse().unwrap_or(0.0);
    println!(
        "filled: {:.1} MiB on disk, {} records, {} events, {:.1} MB of event JSON in {:.1} s ({:.1} MB/s JSON, {:.1} MB/s disk; last stretch {:.1} MB/s JSON); killed {} ms later ({status})",
        mib(v(0)),
        v(1),
        v(2),
        mb(v(3)),
        secs,
        mb(v(3)) / secs,
        mb(v(0)) / secs,
        mb(v(3) - last.1) / (secs - last.2),
        kill_after.as_millis()
    );
    let files: u64 = std::fs::read_dir(state.join(custos_agent::queue::QUEUE_DIR))
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    println!(
        "queue files after the kill: {:.1} MiB; load {}",
        mib(files),
        loadavg()
    );

    let cold = drop_caches();
    if !cold {
        println!("(could not drop the page cache: every figure below is warm)");
    }
    let label = if cold {
        "first open after kill, cold cache"
    } else {
        "first open after kill, warm"
    };
    let first = time_open_take(&state, max_bytes, label);
    let mut colds = vec![first];
    if cold {
        for i in 1..=2 {
            drop_caches();
            colds.push(time_open_take(
                &state,
                max_bytes,
                &format!("reopen, cold cache #{i}"),
            ));
        }
    }
    let mut warms = Vec::new();
    for i in 1..=3 {
        warms.push(time_open_take(
            &state,
            max_bytes,
            &format!("reopen, warm cache #{i}"),
        ));
    }
    println!(
        "time to start shipping (open + first take): cold {} ms (the first one right after the kill), warm {} ms; aim < 1000 ms",
        ms(&colds),
        ms(&warms)
    );
    println!("where the time goes (each part alone, warm cache, 3 runs):");
    let parts: Vec<(f64, f64, f64)> = (0..3).map(|_| split(&state)).collect();
    let scan: Vec<f64> = parts.iter().map(|p| p.0).collect();
    let visit: Vec<f64> = parts.iter().map(|p| p.1).collect();
    let read: Vec<f64> = parts.iter().map(|p| p.2).collect();
    let (m_scan, m_visit, m_open) = (median(&scan), median(&visit), median(&warms));
    println!(
        "  Wal::open, recovery scan only (read + CRC-32C of every record): {} ms",
        ms(&scan)
    );
    println!(
        "  Wal::open_with, no-op visitor (+ a copy of every payload):      {} ms",
        ms(&visit)
    );
    println!(
        "  Queue::open + first take (+ decode headers, build the index):    {} ms",
        ms(&warms)
    );
    println!(
        "  medians: scan {:.0} ms ({:.0}%), payload copies {:.0} ms ({:.0}%), index and the rest {:.0} ms ({:.0}%)",
        m_scan * 1e3,
        100.0 * m_scan / m_open,
        (m_visit - m_scan) * 1e3,
        100.0 * (m_visit - m_scan) / m_open,
        (m_open - m_visit) * 1e3,
        100.0 * (m_open - m_visit) / m_open
    );
    println!(
        "  a second full read_from pass (what Queue::open did before building its index from the recovery scan) would add {} ms",
        ms(&read)
    );
    let cold_scan: Vec<f64> = (0..2).filter_map(|_| cold_wal_open(&state)).collect();
    if !cold_scan.is_empty() {
        println!(
            "  cold cache: Wal::open alone {} ms, i.e. the disk read is most of a cold open",
            ms(&cold_scan)
        );
    }
    let (records, per_call) = mark_committed_cost(&state, max_bytes);
    println!(
        "mark_committed with {records} records in the index: {:.0} µs per call (it scans the whole index); at 1000 groups/s that alone is {:.0}% of a core",
        per_call * 1e6,
        per_call * 1000.0 * 100.0
    );
    println!("load {}", loadavg());

    println!(
        "\n== 3. resident memory (fresh process per line; load {}) ==",
        loadavg()
    );
    rss_child(&state, max_bytes, &format!("{fill_mib} MiB backlog"));
    // A small queue and an empty one, for comparison.
    let small = base.join("small");
    {
        let key = Arc::new(SealKey::load_or_create(&small).expect("key"));
        let q = Mutex::new(open(&small, max_bytes, &key).0);
        let mut seq = 0;
        let n = 300 * pool[0].events.len() as u64;
        produce(
            &q,
            pool,
            n,
            SyncMode::Every(Duration::from_millis(100)),
            &mut seq,
            |_, _| true,
        );
    }
    rss_child(&small, max_bytes, "small queue");
    let empty = base.join("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    rss_child(&empty, max_bytes, "empty queue");
    println!("load {}", loadavg());
}

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("fill") => return child_fill(),
        Ok("rss") => return child_rss(),
        Ok("open") => {
            let state = PathBuf::from(std::env::var_os(STATE).expect("state dir"));
            time_open_take(&state, env_u64(MAX_BYTES, 2 << 30), "open");
            return;
        }
        Ok("split") => {
            let state = PathBuf::from(std::env::var_os(STATE).expect("state dir"));
            let (scan, visit, read) = split(&state);
            println!(
                "Wal::open {:.1} ms, Wal::open_with {:.1} ms, read_from pass {:.1} ms",
                scan * 1e3,
                visit * 1e3,
                read * 1e3
            );
            return;
        }
        _ => {}
    }
    let group = env_u64("QUEUE_BENCH_GROUP", 1000) as usize;
    let tmp = match std::env::var_os("QUEUE_BENCH_DIR") {
        Some(d) => {
            std::fs::create_dir_all(&d).expect("bench dir");
            tempfile::tempdir_in(d)
        }
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let base = tmp.path();
    let fs = fs_type(base);
    println!(
        "queue bench in {} ({fs}); load {}",
        base.display(),
        loadavg()
    );
    if fs.starts_with("tmpfs") {
        println!("WARNING: tmpfs: fsync costs nothing here; set QUEUE_BENCH_DIR to a real disk");
    }
    let pool = load_groups(group);
    let events: usize = pool.iter().map(|g| g.events.len()).sum();
    let json: u64 = pool.iter().map(|g| g.json_bytes).sum();
    let raw: usize = pool
        .iter()
        .flat_map(|g| &g.events)
        .map(|e| e.message.len() + 1)
        .sum();
    println!(
        "corpus: {} groups of up to {group} events from {}: {events} lines, {:.2} MB of raw lines, {:.2} MB of event JSON ({:.0} bytes/event)",
        pool.len(),
        corpus_dir().display(),
        mb(raw as u64),
        mb(json),
        json as f64 / events as f64
    );
    throughput(base, &pool);
    recovery(base, &pool);
    if env_u64("QUEUE_BENCH_KEEP", 0) == 1 {
        let kept = tmp.keep();
        println!(
            "\ndone; state directories kept in {} (delete them yourself); load {}",
            kept.display(),
            loadavg()
        );
    } else {
        drop(tmp);
        println!("\ndone; state directories deleted; load {}", loadavg());
    }
}
