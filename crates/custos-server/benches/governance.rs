//! The governed store's benchmark (issue 7). Runs a real server (on an
//! injected clock) over a generated workspace and prints, then `RESULT
//! {json}` on the last line:
//!
//! 1. **sweep vs segments**: one retention pass over S wholly expired
//!    segments, for S in `SWEEP_SEGMENTS` (default 1000,4000,16000);
//! 2. **encryption on the ingest path**: building, encoding, storing and
//!    committing `ROWS` rows (default 10,000,000) in segments of
//!    `ROWS_PER_SEGMENT` (100,000), sealed vs the same unsealed;
//! 3. **encryption on the query path**: two scan-and-aggregate queries over
//!    those segments, sealed vs unsealed (best of `RUNS`, default 3);
//! 4. **DuckDB**: the same rows written as Parquet (zstd) and the same
//!    queries in DuckDB (`python3 bench/governance/duckdb_query.py`, PyPI
//!    duckdb + pyarrow), in the same run; skipped with a note if python or
//!    the packages are missing;
//! 5. **purge one user**: the rows of one of `HOSTS` (10,000) hosts, who
//!    appears in a tenth of the segments, purged by the real job, against
//!    rewriting every segment.
//!
//! `cargo bench -p custos-server --bench governance`; `BENCH_DIR` puts the
//! scratch data somewhere with room (default the system temp dir); `PARTS`
//! picks parts (default `sweep,query,duckdb,purge`; the ingest measure runs
//! whenever a later part needs the rows); `PROBE_SQL="q1;q2"` times more
//! queries over the sealed rows after the standard ones; `PROBE_MEM=1`
//! times the decode alone and DataFusion alone over the rows in memory.

use std::sync::Arc;
use std::time::Instant;

use custos_catalog::Workspace;
use custos_model::{AgentId, Category, Event, Level, SegmentId, TableName, Value, WorkspaceId};
use custos_server::{ManualClock, Server, ServerConfig};
use serde_json::json;

const DAY: i64 = 86_400 * 1_000_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

fn table() -> TableName {
    TableName::new("logs").unwrap()
}

async fn workspace(s: &custos_server::AppState, name: &str) -> WorkspaceId {
    let w = Workspace {
        id: WorkspaceId::new(),
        name: name.into(),
        region: "local".into(),
        retention_days: 730,
        created_at: 0,
        lockbox: true,
        policy: Default::default(),
        plan: "paid".into(),
        lock: None,
    };
    s.catalog.create_workspace(&w).await.unwrap();
    w.id
}

/// Stores an encoded segment as ingest does (object, catalog, index).
async fn store(s: &custos_server::AppState, ws: WorkspaceId, id: SegmentId, enc: custos_store::EncodedSegment) -> u64 {
    let seg = custos_server::ingest::catalog_entry(ws, table(), id, &enc, 0);
    let index = enc.index_json();
    s.storage.put(&seg.path, enc.bytes).await.unwrap();
    let bytes = seg.bytes;
    s.catalog.commit_segments(&[seg], &[], 0).await.unwrap();
    s.catalog.put_segment_indexes(ws, &[(id, index)]).await.unwrap();
    bytes
}

const SEVERITIES: [&str; 4] = ["info", "warning", "error", "notice"];

/// Row `i` of segment `k`: the host rotates so one host is in a tenth of
/// the segments.
fn event(k: usize, i: usize, hosts: usize, base: i64) -> Event {
    let host = (k * 100 + i % 1000) % hosts;
    let mut attrs = std::collections::BTreeMap::new();
    attrs.insert("severity".to_string(), Value::from(SEVERITIES[i % 4]));
    attrs.insert("source".to_string(), Value::from(format!("svc-{}", i % 20)));
    Event {
        table: table(),
        time: base + (k as i64) * 60_000_000 + i as i64,
        level: Level::Enhanced,
        category: Category::Logs,
        host: format!("host-{host:05}"),
        message: format!("GET /api/v1/items/{} took {} ms status {}", i % 5000, (i * 7) % 900, 200 + (i % 3) * 100),
        attrs,
    }
}

async fn build(s: &Arc<custos_server::AppState>, ws: WorkspaceId, rows: usize, per_seg: usize, hosts: usize, base: i64, sealed: bool) -> (f64, u64) {
    let t = Instant::now();
    let mut bytes = 0;
    let agent = AgentId::new();
    let nseg = rows.div_ceil(per_seg);
    for k in 0..nseg {
        let n = per_seg.min(rows - k * per_seg);
        let keys = s.keys.clone();
        let enc = tokio::task::spawn_blocking(move || {
            let mut b = custos_store::SegmentBuilder::new(ws, table());
            for i in 0..n {
                b.push(agent, &event(k, i, hosts, base));
            }
            let id = SegmentId::new();
            let enc = if sealed { b.finish_sealed(id, keys.as_ref()) } else { b.finish(id) };
            (id, enc.unwrap())
        })
        .await
        .unwrap();
        bytes += store(s, ws, enc.0, enc.1).await;
    }
    (t.elapsed().as_secs_f64(), bytes)
}

async fn best_query(s: &Arc<custos_server::AppState>, ws: WorkspaceId, sql: &str, runs: usize) -> (f64, serde_json::Value) {
    let mut best = f64::MAX;
    let mut rows = serde_json::Value::Null;
    for _ in 0..runs {
        let t = Instant::now();
        let r = custos_server::query::run(s.catalog.as_ref(), s.storage.clone(), s.keys.clone(), ws, sql, 1000, std::time::Duration::from_secs(3600))
            .await
            .unwrap();
        best = best.min(t.elapsed().as_secs_f64());
        rows = json!(r.rows);
    }
    (best, rows)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run());
}

async fn run() {
    let rows = env_usize("ROWS", 10_000_000);
    let per_seg = env_usize("ROWS_PER_SEGMENT", 100_000);
    let hosts = env_usize("HOSTS", 10_000);
    let runs = env_usize("RUNS", 3);
    let sweep_sizes: Vec<usize> = std::env::var("SWEEP_SEGMENTS")
        .unwrap_or_else(|_| "1000,4000,16000".into())
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect();
    let parts = std::env::var("PARTS").unwrap_or_else(|_| "sweep,query,duckdb,purge".into());
    let part = |p: &str| parts.split(',').any(|x| x.trim() == p);
    let root = std::env::var("BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| std::env::temp_dir());
    let tmp = tempfile::Builder::new().prefix("custos-governance-").tempdir_in(root).unwrap();
    let mut cfg = ServerConfig { data_dir: tmp.path().join("data"), listen: "127.0.0.1:0".into(), ..Default::default() };
    cfg.purge.poll_interval_secs = 3600;
    cfg.retention.sweep_interval_secs = 3600 * 24;
    let now = custos_model::now_micros();
    let clock = Arc::new(ManualClock::new(now));
    let server = Server::start_with_clock(cfg, clock.clone()).await.unwrap();
    let s = server.state().clone();
    let mut result = serde_json::Map::new();

    // 1. Sweep time against the number of expired segments.
    let mut sweep = Vec::new();
    for n in sweep_sizes.into_iter().filter(|_| part("sweep")) {
        let ws = workspace(&s, &format!("sweep-{n}")).await;
        let agent = AgentId::new();
        for k in 0..n {
            let mut b = custos_store::SegmentBuilder::new(ws, table());
            b.push(agent, &event(k, 0, hosts, now - 800 * DAY));
            let id = SegmentId::new();
            store(&s, ws, id, b.finish_sealed(id, s.keys.as_ref()).unwrap()).await;
        }
        // Its days rolled up already: the pass only drops.
        let marked = custos_catalog::RollupCommit { until: Some(now), ..Default::default() };
        s.catalog.commit_rollup(ws, &table(), &marked, now).await.unwrap();
        let t = Instant::now();
        let r = custos_server::retention::sweep(&s).await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(r.segments_deleted, n as u64, "{r:?}");
        println!("sweep: {n} expired segments dropped in {:.3} s ({:.0} µs per segment, objects removed {})", secs, secs * 1e6 / n as f64, r.objects_removed);
        sweep.push(json!({"segments": n, "secs": secs, "us_per_segment": secs * 1e6 / n as f64}));
    }
    result.insert("sweep".into(), json!(sweep));

    // 2. Encryption on the ingest path.
    let base = now - 5 * DAY;
    let ws_plain = workspace(&s, "plain").await;
    let ws_sealed = workspace(&s, "sealed").await;
    let (t_plain, b_plain) = build(&s, ws_plain, rows, per_seg, hosts, base, false).await;
    let (t_sealed, b_sealed) = build(&s, ws_sealed, rows, per_seg, hosts, base, true).await;
    println!(
        "ingest path (build, encode, store, commit) of {rows} rows: unsealed {:.2} s ({:.0} rows/s), sealed {:.2} s ({:.0} rows/s): sealed/unsealed time x{:.3}; bytes {} vs {}",
        t_plain,
        rows as f64 / t_plain,
        t_sealed,
        rows as f64 / t_sealed,
        t_sealed / t_plain,
        b_plain,
        b_sealed
    );
    result.insert("ingest".into(), json!({"rows": rows, "plain_secs": t_plain, "sealed_secs": t_sealed, "ratio": t_sealed / t_plain, "plain_bytes": b_plain, "sealed_bytes": b_sealed}));

    // 3. Encryption on the query path.
    let queries = [
        ("count_avg", "SELECT count(*), avg(length(message)) FROM logs"),
        ("group_by", "SELECT severity, count(*) AS n, count(DISTINCT host) AS hosts FROM logs GROUP BY severity ORDER BY severity"),
    ];
    let mut q = serde_json::Map::new();
    let mut custos_best = serde_json::Map::new();
    for (name, sql) in queries {
        let (tp, rp) = best_query(&s, ws_plain, sql, runs).await;
        let (ts, rs) = best_query(&s, ws_sealed, sql, runs).await;
        assert_eq!(rp, rs, "sealed and unsealed answer alike");
        println!("query {name}: unsealed {:.3} s, sealed {:.3} s: x{:.3}  {rs}", tp, ts, ts / tp);
        q.insert(name.into(), json!({"plain_secs": tp, "sealed_secs": ts, "ratio": ts / tp, "rows": rs}));
        custos_best.insert(name.into(), json!(ts));
    }
    result.insert("query".into(), json!(q));
    // `PROBE_MEM=1`: where the query time goes. The same queries in the
    // same DataFusion over the sealed rows decoded once into memory (string
    // views, 8 Ki-row batches, two partitions): the engine alone; and the
    // decode alone (fetch, open, decode the columns each query needs, one
    // thread).
    if std::env::var("PROBE_MEM").is_ok() {
        let segs = s.catalog.list_segments(ws_sealed, &table(), None).await.unwrap();
        for (name, cols) in [("count_avg", vec!["message"]), ("group_by", vec!["severity", "host"])] {
            let cols: Vec<String> = cols.into_iter().map(String::from).collect();
            let t = Instant::now();
            for seg in &segs {
                let bytes = s.storage.get(&seg.path).await.unwrap();
                let opts = custos_store::DecodeOptions { columns: Some(&cols), keys: Some(s.keys.as_ref()), string_views: true, batch_rows: 8192 };
                std::hint::black_box(custos_store::decode_segment_opts(&bytes, &opts).unwrap());
            }
            println!("probe decode alone (one thread), {name} columns {cols:?}: {:.3} s", t.elapsed().as_secs_f64());
        }
        let mut parts: Vec<Vec<arrow::array::RecordBatch>> = vec![Vec::new(), Vec::new()];
        for (i, seg) in segs.iter().enumerate() {
            let bytes = s.storage.get(&seg.path).await.unwrap();
            let opts = custos_store::DecodeOptions { columns: None, keys: Some(s.keys.as_ref()), string_views: true, batch_rows: 8192 };
            parts[i % 2].extend(custos_store::decode_segment_opts(&bytes, &opts).unwrap().batches);
        }
        let schema = parts[0][0].schema();
        let config = datafusion::prelude::SessionConfig::new().with_target_partitions(2);
        let ctx = datafusion::prelude::SessionContext::new_with_config(config);
        ctx.register_table("logs", Arc::new(datafusion::datasource::MemTable::try_new(schema, parts).unwrap())).unwrap();
        for (name, sql) in queries {
            let mut best = f64::MAX;
            for _ in 0..runs {
                let t = Instant::now();
                std::hint::black_box(ctx.sql(sql).await.unwrap().collect().await.unwrap());
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!("probe engine alone (rows in memory), {name}: {best:.3} s");
        }
    }
    // `PROBE_SQL="q1;q2"`: more queries on the sealed rows, timed alike
    // (for finding where query time goes).
    if let Ok(probe) = std::env::var("PROBE_SQL") {
        for sql in probe.split(';').map(str::trim).filter(|q| !q.is_empty()) {
            let (t, r) = best_query(&s, ws_sealed, sql, runs).await;
            println!("probe {t:.3} s  {sql}  {r}");
        }
    }

    // 4. DuckDB over the same rows as Parquet.
    let arrow_path = tmp.path().join("rows.arrow");
    if part("duckdb") {
        let mut writer: Option<arrow::ipc::writer::FileWriter<std::fs::File>> = None;
        for seg in s.catalog.list_segments(ws_plain, &table(), None).await.unwrap() {
            let bytes = s.storage.get(&seg.path).await.unwrap();
            let d = custos_store::decode_segment(&bytes).unwrap();
            for b in &d.batches {
                if writer.is_none() {
                    let file = std::fs::File::create(&arrow_path).unwrap();
                    writer = Some(arrow::ipc::writer::FileWriter::try_new(file, &b.schema()).unwrap());
                }
                if let Some(w) = writer.as_mut() {
                    w.write(b).unwrap();
                }
            }
        }
        if let Some(mut w) = writer {
            w.finish().unwrap();
        }
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/governance/duckdb_query.py");
    let out = if part("duckdb") {
        std::process::Command::new("python3").arg(script).arg(&arrow_path).arg(runs.to_string()).output()
    } else {
        Err(std::io::Error::other("not asked for (PARTS)"))
    };
    match out {
        Ok(o) if o.status.success() => {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            for (name, _) in queries {
                let d = v["queries"][name]["secs"].as_f64().unwrap();
                let c = custos_best[name].as_f64().unwrap();
                println!("vs DuckDB {} over Parquet, {name}: custos (sealed) {:.3} s, DuckDB {:.3} s: custos/DuckDB x{:.2}  {}", v["duckdb"], c, d, c / d, v["queries"][name]["rows"]);
            }
            result.insert("duckdb".into(), v);
        }
        Ok(o) => println!("DuckDB comparison skipped: {}", String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")),
        Err(e) => println!("DuckDB comparison skipped: python3: {e}"),
    }

    // 5. Purge one user (host) from the sealed workspace.
    if !part("purge") {
        server.shutdown().await.unwrap();
        println!("RESULT {}", serde_json::Value::Object(result));
        return;
    }
    let victim = "host-00042";
    let job = custos_server::purge::create(&s, ws_sealed, &[], &format!("host = '{victim}'"), true, None).await.unwrap();
    let t = Instant::now();
    let done = custos_server::purge::run_due(&s).await.unwrap();
    let t_purge = t.elapsed().as_secs_f64();
    let j = done.iter().find(|d| d.id == job.id).expect("the purge ran");
    let receipt: custos_model::api::SignedReceipt = serde_json::from_str(j.receipt.as_deref().unwrap()).unwrap();
    let r = &receipt.receipt;
    let mut rewritten_bytes = 0u64;
    for e in &r.segments {
        if let Some(new) = e.new_segment {
            let seg = s.catalog.list_segments(ws_sealed, &table(), None).await.unwrap().into_iter().find(|x| x.id == new).unwrap();
            rewritten_bytes += seg.bytes;
        }
    }
    // Rewriting everything: every segment read, decoded, re-encoded, stored.
    let t = Instant::now();
    let mut all_bytes = 0u64;
    for seg in s.catalog.list_segments(ws_sealed, &table(), None).await.unwrap() {
        let bytes = s.storage.get(&seg.path).await.unwrap();
        let keys = s.keys.clone();
        let enc = tokio::task::spawn_blocking(move || {
            let d = custos_store::decode_segment_with(&bytes, None, Some(keys.as_ref())).unwrap();
            let h = d.header;
            custos_store::encode_batches(h.workspace_id, h.table, SegmentId::new(), h.columns, &d.batches, Some(keys.as_ref())).unwrap()
        })
        .await
        .unwrap();
        all_bytes += enc.bytes.len() as u64;
        s.storage.put(&format!("scratch/{}.cseg", seg.id), enc.bytes).await.unwrap();
    }
    let t_all = t.elapsed().as_secs_f64();
    println!(
        "purge of {victim} ({} rows) in {rows} rows: {:.2} s, {} segments read, {} ruled out by their index, {} rewritten ({} bytes); rewriting everything: {:.2} s, {} bytes: time x{:.3}, bytes x{:.3}",
        r.rows_removed,
        t_purge,
        r.segments_read,
        r.segments_skipped,
        r.segments_rewritten,
        rewritten_bytes,
        t_all,
        all_bytes,
        t_purge / t_all,
        rewritten_bytes as f64 / all_bytes as f64
    );
    result.insert(
        "purge".into(),
        json!({"rows_removed": r.rows_removed, "secs": t_purge, "segments_read": r.segments_read, "segments_skipped": r.segments_skipped,
               "segments_rewritten": r.segments_rewritten, "bytes_rewritten": rewritten_bytes, "rewrite_all_secs": t_all, "rewrite_all_bytes": all_bytes}),
    );
    server.shutdown().await.unwrap();
    println!("RESULT {}", serde_json::Value::Object(result));
}
