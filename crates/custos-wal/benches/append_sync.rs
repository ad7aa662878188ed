//! Append + sync throughput. Run with `cargo bench -p custos-wal --bench append_sync`.
//!
//! For each record size and "sync every N records" setting, appends into a
//! fresh wal (default 64 MiB segments) in the system temp directory for about
//! a second and prints MB/s (payload bytes, 10^6), records/s and syncs/s.

use std::time::{Duration, Instant};

use custos_wal::{Wal, WalOptions};

fn run(record: usize, sync_every: u64, budget: Duration, max_bytes: u64) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(WalOptions::new(tmp.path())).expect("open");
    let payload: Vec<u8> = (0..record).map(|i| (i * 31 % 251) as u8).collect();
    let start = Instant::now();
    let mut records = 0u64;
    let mut syncs = 0u64;
    while start.elapsed() < budget && records * record as u64 <= max_bytes {
        for _ in 0..sync_every {
            wal.append(&payload).expect("append");
        }
        wal.sync().expect("sync");
        records += sync_every;
        syncs += 1;
        if wal.disk_bytes() > 256 << 20 {
            // Keep the disk footprint bounded, like the builder would (rare: not timed apart).
            wal.ack(wal.next_lsn()).expect("ack");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let mb = (records * record as u64) as f64 / 1e6;
    println!(
        "record {:>6} B  sync every {:>4}  {:>9.1} MB/s  {:>10.0} records/s  {:>8.0} syncs/s  ({} records in {:.2} s)",
        record,
        sync_every,
        mb / secs,
        records as f64 / secs,
        syncs as f64 / secs,
        records,
        secs
    );
}

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test --all-targets` keep it short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let budget = if quick { Duration::from_millis(50) } else { Duration::from_secs(1) };
    println!("custos-wal append+sync throughput (temp dir: {})", std::env::temp_dir().display());
    for record in [1024usize, 64 * 1024] {
        for sync_every in [1u64, 16, 256] {
            run(record, sync_every, budget, 4 << 30);
        }
    }
}
