//! Server overload end to end: a real server with tiny overload limits
//! answers 429 with `Retry-After` (nothing of those batches stored or
//! acknowledged), the agent's shipper classifies that as retryable with the
//! server's wait, every acknowledged batch is stored exactly once, the
//! refusals are counted in /metrics, and once the load is gone the refused
//! batches are accepted (as new: they had not been stored).

mod common;
use common::*;
use custos_agent::ship::{Attempt, Shipper};
use custos_agent::AgentError;
use custos_model::wire::{self, BatchPayload, Codec};
use custos_model::{BatchId, Category, Event, Level, TableName};
use std::path::Path;
use std::time::Duration;

struct Setup {
    _tmp: tempfile::TempDir,
    server: ServerProc,
    ws: String,
    shipper: Shipper,
}

fn setup(ingest: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = server_config(&data, &format!("[ingest]\n{ingest}"));
    let server = ServerProc::start_with(&data, &["--config", cfg.to_str().unwrap()]);
    let (ws, key) = server.create_workspace("overload");
    let state = tmp.path().join("agent");
    let out = enroll(&server, &key, &state);
    assert!(out.status.success(), "{}", stderr(&out));
    let shipper = shipper(&state);
    Setup { _tmp: tmp, server, ws, shipper }
}

fn shipper(state: &Path) -> Shipper {
    let (id, client) = custos_agent::identity::load(state).unwrap();
    Shipper::new(client, &id.server)
}

/// One batch of `n` events, each message unique: `OVL <batch> <event>`.
fn batch(k: usize, n: usize) -> (BatchId, Vec<u8>) {
    let events = (0..n)
        .map(|i| Event {
            table: TableName::new("logs").unwrap(),
            time: custos_model::now_micros() + i as i64,
            level: Level::Enhanced,
            category: Category::Logs,
            host: "overload-host".into(),
            message: format!("OVL {k} {i} some text to make the batch a little heavier to decode"),
            attrs: Default::default(),
        })
        .collect();
    let payload = BatchPayload { batch_id: BatchId::new(), created: 1, events };
    (payload.batch_id, wire::encode(&payload, Codec::Zstd))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}

/// What one attempt came to.
#[derive(Debug)]
enum Sent {
    Acked { duplicate: bool, accepted: u64 },
    Overloaded { retry_after: Duration, message: String },
}

fn classify(a: Attempt) -> Sent {
    match a {
        Attempt::Acked(ack) => Sent::Acked { duplicate: ack.duplicate, accepted: ack.accepted },
        Attempt::Retry(AgentError::Refused { status: 429, message }, Some(retry_after)) => Sent::Overloaded { retry_after, message },
        other => panic!("expected an acknowledgement or a retryable 429 with Retry-After, got {other:?}"),
    }
}

/// `(count(*), count(DISTINCT message))` of the test's events.
fn stored(s: &Setup) -> (i64, i64) {
    let v = s.server.cli_json(&[
        "query",
        "--workspace",
        &s.ws,
        "SELECT count(*) AS n, count(DISTINCT message) AS d FROM logs WHERE message LIKE 'OVL %'",
    ]);
    (v[0]["n"].as_i64().unwrap(), v[0]["d"].as_i64().unwrap())
}

#[test]
fn too_many_batches_at_once_get_429_with_retry_after_and_each_acknowledged_batch_is_stored_once() {
    let s = setup("max_concurrent_batches = 2\noverload_retry_after_secs = 7\nflush_interval_ms = 50\n");
    let rt = rt();
    const PER_BATCH: usize = 400;
    let mut acked = 0u64;
    let mut refused: Vec<(BatchId, Vec<u8>)> = Vec::new();
    let mut next = 0usize;
    // Rounds of 48 batches sent at once, until some were refused (the first
    // round practically always has some: only 2 may be accepted at a time).
    for _round in 0..5 {
        let batches: Vec<(BatchId, Vec<u8>)> = (next..next + 48).map(|k| batch(k, PER_BATCH)).collect();
        next += 48;
        let results: Vec<Sent> = rt.block_on(async {
            let tasks: Vec<_> = batches
                .iter()
                .map(|(_, frame)| {
                    let (sh, f) = (s.shipper.clone(), frame.clone());
                    tokio::spawn(async move { sh.send_once(&f).await })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(classify(t.await.unwrap()));
            }
            out
        });
        for (b, r) in batches.into_iter().zip(results) {
            match r {
                Sent::Acked { duplicate, accepted } => {
                    assert!(!duplicate);
                    assert_eq!(accepted, PER_BATCH as u64);
                    acked += 1;
                }
                Sent::Overloaded { retry_after, message } => {
                    assert_eq!(retry_after, Duration::from_secs(7));
                    assert!(message.contains("server overloaded") && message.contains("limit 2"), "{message}");
                    assert!(message.contains("nothing of this batch was stored"), "{message}");
                    refused.push(b);
                }
            }
        }
        if !refused.is_empty() {
            break;
        }
    }
    assert!(!refused.is_empty(), "no batch was refused in 5 rounds of 48 with max_concurrent_batches = 2");
    assert!(acked > 0, "no batch was accepted");
    // Every acknowledged batch is stored once; nothing of a refused one is.
    assert_eq!(stored(&s), (acked as i64 * PER_BATCH as i64, acked as i64 * PER_BATCH as i64));
    let counted = s.server.metric("custos_ingest_overloaded_total{reason=\"concurrency\"}");
    assert_eq!(counted, Some(refused.len() as f64));
    assert_eq!(s.server.metric("custos_ingest_overloaded_total{reason=\"backlog\"}"), Some(0.0));
    assert_eq!(s.server.metric("custos_ingest_active_batches"), Some(0.0));

    // The load is gone: the refused batches, sent again one at a time, are
    // accepted as new (the server had not stored them).
    rt.block_on(async {
        for (_, frame) in &refused {
            match classify(s.shipper.send_once(frame).await) {
                Sent::Acked { duplicate, accepted } => assert_eq!((duplicate, accepted), (false, PER_BATCH as u64)),
                Sent::Overloaded { .. } => panic!("refused for overload with nothing else in flight"),
            }
        }
    });
    let total = (acked as i64 + refused.len() as i64) * PER_BATCH as i64;
    assert_eq!(stored(&s), (total, total));
}

#[test]
fn a_backlog_over_its_limit_gets_429_until_the_builder_has_written_segments() {
    // Any buffered byte is over the limit; the builder writes every 2 s, so
    // Retry-After is at least 2 s.
    let s = setup("max_backlog_bytes = 1\noverload_retry_after_secs = 1\nflush_interval_ms = 2000\n");
    let rt = rt();
    let mut acked = 0i64;
    let mut refused: Option<((BatchId, Vec<u8>), Duration, String)> = None;
    for k in 0..400 {
        let b = batch(k, 10);
        match classify(rt.block_on(s.shipper.send_once(&b.1))) {
            Sent::Acked { .. } => acked += 1,
            Sent::Overloaded { retry_after, message } => {
                refused = Some((b, retry_after, message));
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let ((_, frame), retry_after, message) = refused.expect("no batch refused while the backlog was over 1 byte");
    assert!(acked >= 1);
    assert_eq!(retry_after, Duration::from_secs(2));
    assert!(message.contains("wait to be written into segments, limit 1"), "{message}");
    assert!(s.server.metric("custos_ingest_overloaded_total{reason=\"backlog\"}").unwrap_or(0.0) >= 1.0);
    // Honouring Retry-After: by then the builder has written its segments.
    std::thread::sleep(retry_after + Duration::from_millis(500));
    match classify(rt.block_on(s.shipper.send_once(&frame))) {
        Sent::Acked { duplicate, accepted } => assert_eq!((duplicate, accepted), (false, 10)),
        Sent::Overloaded { message, .. } => panic!("still refused after Retry-After: {message}"),
    }
    assert_eq!(stored(&s), ((acked + 1) * 10, (acked + 1) * 10));
}
