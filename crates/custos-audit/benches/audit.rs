//! Audit log benchmarks (plain `main`, no harness). Run with
//! `cargo bench -p custos-audit`.
//!
//! Environment:
//! * `AUDIT_BENCH_SECS` — seconds of concurrent appends (default 3)
//! * `AUDIT_BENCH_TASKS` — concurrent appending tasks (default 64)
//! * `AUDIT_BENCH_RECORDS` — records in the log that is verified and proven (default 1 000 000)
//! * `AUDIT_BENCH_DIR` — where to put the log (default: a temporary directory)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_audit::merkle::{consistency_ranges, inclusion_ranges};
use custos_audit::*;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A realistic record: about 300 bytes of JSON (about 450 bytes on disk).
fn record(i: u64) -> AuditRecord {
    let ws = format!("0190f5c2-7b3a-7c41-9d2e-{:012x}", i % 97);
    AuditRecord {
        time: 1_750_000_000_000_000 + i as i64,
        principal: Some(format!("agent:{:04x}", i % 1013)),
        role: "agent".into(),
        action: "workspace.ingest".into(),
        target: format!("/v1/workspaces/{ws}/ingest"),
        workspace: Some(ws),
        outcome: "ok".into(),
        status: 200,
        request_id: format!("req-{i:016x}"),
        client: "10.12.0.7:51234".into(),
        grant: None,
        details: BTreeMap::from([("events".to_string(), "512".to_string())]),
    }
}

/// Appends from `tasks` concurrent tasks for `secs` seconds (or until
/// `until_records` records exist) and returns (records, elapsed).
async fn hammer(log: &Arc<AuditLog>, tasks: u64, secs: f64, until_records: u64) -> (u64, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (log, stop, done) = (log.clone(), stop.clone(), done.clone());
        handles.push(tokio::spawn(async move {
            let mut i = t << 40;
            while !stop.load(Ordering::Relaxed) {
                let seq = log.append(record(i)).await.expect("append");
                i += 1;
                done.fetch_add(1, Ordering::Relaxed);
                if seq + 1 >= until_records {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }));
    }
    let deadline = Duration::from_secs_f64(secs);
    while !stop.load(Ordering::Relaxed) && start.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.expect("task");
    }
    (done.load(Ordering::Relaxed), start.elapsed())
}

fn main() {
    let secs = env_u64("AUDIT_BENCH_SECS", 3) as f64;
    let tasks = env_u64("AUDIT_BENCH_TASKS", 64);
    let n_records = env_u64("AUDIT_BENCH_RECORDS", 1_000_000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = std::env::var("AUDIT_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_path_buf());
    let dir = base.join("audit-bench");
    let _ = std::fs::remove_dir_all(&dir);
    let key = SigningKey::from_bytes(&[1; 32]);
    let vk = key.verifying_key();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let line_bytes = {
        let body = serde_json::to_vec(&record(12345)).expect("json");
        body.len() + 82 + 6 + 66 // + "v", "seq", "prev" fields, tab, hash, newline
    };
    println!(
        "record json ≈ {} bytes, line ≈ {line_bytes} bytes",
        serde_json::to_vec(&record(12345)).expect("json").len()
    );

    // 1. Durable appends with group commit.
    let (log, _) = AuditLog::open(AuditOptions::new(&dir), key.clone()).expect("open");
    let log = Arc::new(log);
    let (n, el) = rt.block_on(hammer(&log, tasks, secs, u64::MAX));
    let st = log.stats();
    println!(
        "append: {tasks} tasks, {n} durable records in {:.2}s = {:.0} records/s; {} commits = {:.0} fsyncs/s ({} fsyncs total), {:.1} records/commit, {} checkpoints",
        el.as_secs_f64(),
        n as f64 / el.as_secs_f64(),
        st.commits,
        st.fsyncs as f64 / el.as_secs_f64(),
        st.fsyncs,
        st.records as f64 / st.commits.max(1) as f64,
        st.checkpoints
    );

    // Fill up to n_records for verification and proofs.
    if log.next_seq() < n_records {
        let t = Instant::now();
        let have = log.next_seq();
        let (m, _) = rt.block_on(hammer(&log, 256, 3600.0, n_records));
        println!(
            "filled {m} more records (256 tasks) in {:.1}s = {:.0} records/s",
            t.elapsed().as_secs_f64(),
            (log.next_seq() - have) as f64 / t.elapsed().as_secs_f64()
        );
    }
    let log = Arc::into_inner(log).expect("sole owner");
    rt.block_on(log.close()).expect("close");
    let bytes: u64 = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").metadata().expect("stat").len())
        .sum();

    // 2. Verification speed.
    let t = Instant::now();
    let r = verify(&dir, &vk).expect("verify");
    let el = t.elapsed().as_secs_f64();
    println!(
        "verify: {} records, {} checkpoints, {:.1} MiB in {el:.2}s = {:.0} records/s ({:.0} MiB/s)",
        r.records_checked,
        r.checkpoints_checked,
        bytes as f64 / 1048576.0,
        r.records_checked as f64 / el,
        bytes as f64 / 1048576.0 / el
    );
    let total = r.records_checked;

    // 3. Proof sizes (log2 growth) and generation time from the log on disk.
    println!("proof sizes (hashes / bytes):");
    for n in [1_000u64, 10_000, 100_000, 1_000_000, 1_000_000_000] {
        let incl_max = (0..n)
            .step_by((n / 997).max(1) as usize)
            .chain([n - 1])
            .map(|i| inclusion_ranges(i, n).len())
            .max()
            .unwrap_or(0);
        let cons_max = (1..n)
            .step_by((n / 991).max(1) as usize)
            .chain([n / 2 + 1, n - 1])
            .map(|m| consistency_ranges(m, n).len())
            .max()
            .unwrap_or(0);
        println!(
            "  n = {n:>13}: log2 n = {:5.1}; inclusion ≤ {incl_max:2} hashes ({:4} B); consistency ≤ {cons_max:2} hashes ({:4} B)",
            (n as f64).log2(),
            incl_max * 32,
            cons_max * 32
        );
    }
    for n in [1_000u64, 10_000, 100_000, 1_000_000] {
        if n > total {
            break;
        }
        let t = Instant::now();
        let p = inclusion_proof(&dir, n / 3, Some(n)).expect("inclusion proof");
        let ti = t.elapsed();
        let t = Instant::now();
        let c = consistency_proof(&dir, n / 2 + 1, n).expect("consistency proof");
        let tc = t.elapsed();
        let root = tree_root(&dir, n).expect("root");
        assert!(verify_inclusion(&p, &p.leaf_hash, &root));
        assert!(verify_consistency(
            &c,
            &tree_root(&dir, n / 2 + 1).expect("root"),
            &root
        ));
        println!(
            "  from disk, n = {n:>9}: inclusion of {} = {} hashes in {:.1} ms; consistency {}→{n} = {} hashes in {:.1} ms",
            n / 3,
            p.path.len(),
            ti.as_secs_f64() * 1e3,
            n / 2 + 1,
            c.path.len(),
            tc.as_secs_f64() * 1e3
        );
    }
    let last = latest_checkpoint(&dir).expect("checkpoint").expect("some");
    let t = Instant::now();
    let p = inclusion_proof(&dir, last.size - 10, None).expect("proof");
    println!(
        "  recent record {} in the latest checkpoint ({}): {} hashes in {:.2} ms",
        p.seq,
        last.size,
        p.path.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    assert!(verify_inclusion(&p, &p.leaf_hash, &last.root));
}
