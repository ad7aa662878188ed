//! Transparency ledger benchmarks (plain `main`, no harness). Run with
//! `cargo bench -p custos-agent --bench ledger`.
//!
//! Measures durable appends (each one write + fdatasync, as before every
//! send) of 1 MiB and 64 KiB batch payloads and of ack records, then
//! `verify` and `LedgerReader::list` over what was written (page cache warm).
//!
//! Environment:
//! * `LEDGER_BENCH_MIB` — MiB of payload written per payload size (default 64)
//! * `LEDGER_BENCH_ACKS` — ack records appended (default 2000)
//! * `LEDGER_BENCH_DIR` — where to put the state dir (default: a temporary
//!   directory under the system temp dir; use a real disk, not tmpfs, for
//!   meaningful fsync figures)

use std::time::{Duration, Instant};

use custos_agent::ledger::{verify, Filter, Ledger, LedgerOptions, LedgerReader};
use custos_model::wire::{self, BatchPayload};
use custos_model::{BatchId, Category, Event, Level, TableName, Value};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A realistic payload: log events of about 200 bytes each, up to `bytes` of JSON.
fn payload(bytes: usize, salt: u64) -> (BatchId, Vec<u8>) {
    let mut p = BatchPayload {
        batch_id: BatchId::new(),
        created: 1_750_000_000_000_000,
        events: Vec::new(),
    };
    let event = |i: usize| Event {
        table: TableName::new("logs").expect("valid table name"),
        time: 1_750_000_000_000_000 + i as i64,
        level: Level::Enhanced,
        category: Category::Logs,
        host: "h-0123456789abcdef".into(),
        message: format!(
            "{salt}-{i} sshd[4242]: Accepted publickey for deploy from 10.0.0.{} port 5{i:04} ssh2",
            i % 250
        ),
        attrs: [
            ("severity".to_string(), Value::Str("warning".into())),
            ("file".to_string(), Value::Str("/var/log/auth.log".into())),
        ]
        .into_iter()
        .collect(),
    };
    // Estimate per-event size, then fill.
    let one = wire::payload_json(&BatchPayload {
        events: vec![event(0)],
        ..p.clone()
    })
    .len();
    let n = (bytes / one).max(1);
    p.events = (0..n).map(event).collect();
    (p.batch_id, wire::payload_json(&p))
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn report(label: &str, n: u64, bytes: u64, elapsed: Duration) {
    let s = elapsed.as_secs_f64();
    println!(
        "{label:<34} {n:>6} in {s:>7.3} s  {:>9.1} /s  {:>8.1} MiB/s  {:>8.3} ms each",
        n as f64 / s,
        mb(bytes) / s,
        1000.0 * s / n as f64
    );
}

fn main() {
    let total_mib = env_u64("LEDGER_BENCH_MIB", 64);
    let acks = env_u64("LEDGER_BENCH_ACKS", 2000);
    let tmp = match std::env::var_os("LEDGER_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let state = tmp.path();
    println!("ledger bench in {}", state.display());
    let opts = LedgerOptions {
        max_bytes: 1 << 40,
        ..LedgerOptions::default()
    };
    let mut ledger = Ledger::open(state, opts).expect("open");
    let mut time = 1_750_000_000_000_000i64;
    let mut payload_bytes = 0u64;

    for (label, size) in [
        ("append_batch 1 MiB (fdatasync)", 1usize << 20),
        ("append_batch 64 KiB (fdatasync)", 64 << 10),
    ] {
        let n = (total_mib << 20) / size as u64;
        let payloads: Vec<(BatchId, Vec<u8>)> = (0..n).map(|i| payload(size, i)).collect();
        let bytes: u64 = payloads.iter().map(|(_, p)| p.len() as u64).sum();
        let start = Instant::now();
        for (id, p) in &payloads {
            time += 1;
            ledger.append_batch(*id, p, time).expect("append");
        }
        report(label, n, bytes, start.elapsed());
        payload_bytes += bytes;
    }

    let ids: Vec<BatchId> = (0..acks).map(|_| BatchId::new()).collect();
    let start = Instant::now();
    for id in &ids {
        time += 1;
        ledger
            .append_ack(*id, "wal:0123456789", 512, 0, time)
            .expect("ack");
    }
    report("append_ack (fdatasync)", acks, 0, start.elapsed());

    let start = Instant::now();
    let pruned = ledger.prune(time).expect("prune");
    println!(
        "prune (nothing to delete)          {:>10.1} µs  ({pruned:?})",
        start.elapsed().as_secs_f64() * 1e6
    );
    let on_disk = ledger.total_bytes();
    drop(ledger);

    let start = Instant::now();
    let v = verify(state).expect("verify");
    report("verify", v.records, on_disk, start.elapsed());

    let start = Instant::now();
    let sent = LedgerReader::open(state)
        .expect("reader")
        .list(&Filter::default())
        .expect("list");
    report(
        "list (all payloads)",
        sent.len() as u64,
        on_disk,
        start.elapsed(),
    );

    let start = Instant::now();
    let ledger = Ledger::open(
        state,
        LedgerOptions {
            max_bytes: 1 << 40,
            ..LedgerOptions::default()
        },
    )
    .expect("reopen");
    println!(
        "reopen ({} segments, {:.0} MiB)       {:>10.1} ms",
        ledger.segments(),
        mb(on_disk),
        start.elapsed().as_secs_f64() * 1e3
    );
    println!(
        "payload {:.0} MiB, on disk {:.0} MiB ({} records)",
        mb(payload_bytes),
        mb(on_disk),
        v.records
    );
}
