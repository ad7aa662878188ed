//! The agent's Prometheus endpoint: `GET /metrics` over plain HTTP/1.1 on
//! `[agent] metrics_listen` (off by default), in the text exposition
//! format 0.0.4. Counts only, never event content.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `custos_agent_events_read_total` | counter | |
//! | `custos_agent_events_uploaded_total` | counter | |
//! | `custos_agent_events_not_collected_total` | counter | |
//! | `custos_agent_events_refused_by_server_total` | counter | |
//! | `custos_agent_events_purged_total` | counter | `category` |
//! | `custos_agent_events_evicted_total` | counter | `category` |
//! | `custos_agent_queue_events` | gauge | `category` |
//! | `custos_agent_queue_records` | gauge | |
//! | `custos_agent_queue_bytes` | gauge | |
//! | `custos_agent_queue_disk_bytes` | gauge | |
//! | `custos_agent_queue_max_bytes` | gauge | |
//! | `custos_agent_dead_letters_total` | counter | |
//! | `custos_agent_dead_letters_evicted_total` | counter | |
//! | `custos_agent_delivery_failures_total` | counter | |
//! | `custos_agent_queue_write_failures_total` | counter | |
//! | `custos_agent_last_upload_timestamp_seconds` | gauge | |
//!
//! Counters count since the agent started. Every category a queue can evict
//! is always present (with 0), so an alert can watch a series that exists.

use crate::control::{RuntimeStatus, StatusSource};
use custos_model::Category;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn by_category(out: &mut String, name: &str, kind: &str, help: &str, m: &BTreeMap<String, u64>, all: &[Category]) {
    family(out, name, kind, help);
    let mut keys: Vec<String> = all.iter().map(|c| c.name().to_string()).collect();
    keys.extend(m.keys().cloned());
    keys.sort();
    keys.dedup();
    for k in keys {
        let _ = writeln!(out, "{name}{{category=\"{k}\"}} {}", m.get(&k).copied().unwrap_or(0));
    }
}

/// The exposition text for a status.
pub fn render(rt: &RuntimeStatus) -> String {
    let mut o = String::new();
    let evictable: Vec<Category> = Category::ALL.into_iter().filter(|c| crate::queue::eviction_class(*c).is_some()).collect();
    let simple = |o: &mut String, name: &str, kind: &str, help: &str, v: u64| {
        family(o, name, kind, help);
        let _ = writeln!(o, "{name} {v}");
    };
    simple(&mut o, "custos_agent_events_read_total", "counter", "Events the sources produced.", rt.events_read);
    simple(&mut o, "custos_agent_events_uploaded_total", "counter", "Events the server acknowledged.", rt.events_uploaded);
    simple(&mut o, "custos_agent_events_not_collected_total", "counter", "Events above the consent level or read while telemetry was disabled.", rt.events_not_collected);
    simple(&mut o, "custos_agent_events_refused_by_server_total", "counter", "Events the server refused (workspace level or categories).", rt.refused_by_server);
    by_category(&mut o, "custos_agent_events_purged_total", "counter", "Queued events deleted because the settings no longer allow them.", &rt.dropped_by_category, &Category::ALL);
    by_category(&mut o, "custos_agent_events_evicted_total", "counter", "Events evicted from the full queue, least important first.", &rt.evicted_by_category, &evictable);
    by_category(&mut o, "custos_agent_queue_events", "gauge", "Events waiting in the durable queue.", &rt.queued_by_category, &[]);
    simple(&mut o, "custos_agent_queue_records", "gauge", "Batch records waiting in the durable queue.", rt.queued_batches);
    simple(&mut o, "custos_agent_queue_bytes", "gauge", "Bytes of the records waiting in the queue.", rt.queue_bytes);
    simple(&mut o, "custos_agent_queue_disk_bytes", "gauge", "Bytes of the queue's files.", rt.queue_disk_bytes);
    simple(&mut o, "custos_agent_queue_max_bytes", "gauge", "The queue's bound.", rt.queue_max_bytes);
    simple(&mut o, "custos_agent_dead_letters_total", "counter", "Batches refused for good and moved to the dead-letter store.", rt.dead_letters);
    simple(&mut o, "custos_agent_dead_letters_evicted_total", "counter", "Dead letters removed or not kept because the store was full.", rt.dead_letters_evicted);
    simple(&mut o, "custos_agent_delivery_failures_total", "counter", "Delivery attempts that failed and are retried.", rt.delivery_failures);
    simple(&mut o, "custos_agent_queue_write_failures_total", "counter", "Queue appends that failed (a full disk) and were retried.", rt.queue_write_failures);
    family(&mut o, "custos_agent_redacted_total", "counter", "Findings redacted on the host (personal data, secrets), by entity.");
    for (k, v) in &rt.redacted_by_entity {
        let _ = writeln!(o, "custos_agent_redacted_total{{entity=\"{k}\"}} {v}");
    }
    simple(&mut o, "custos_agent_redaction_fields_dropped_total", "counter", "Fields removed by the redaction policy.", rt.redaction_fields_dropped);
    simple(&mut o, "custos_agent_redaction_events_dropped_total", "counter", "Events dropped by the redaction policy.", rt.redaction_events_dropped);
    family(&mut o, "custos_agent_last_upload_timestamp_seconds", "gauge", "Time of the last acknowledged upload.");
    let _ = writeln!(o, "custos_agent_last_upload_timestamp_seconds {}", rt.last_upload_time.map(|t| t as f64 / 1e6).unwrap_or(0.0));
    o
}

/// Serve `GET /metrics` on `listener` until `shutdown` flips. One request
/// per connection; anything else gets 404 or 405; a request head larger
/// than 8 KiB or slower than 5 s is dropped.
pub async fn serve(listener: tokio::net::TcpListener, status: Arc<dyn StatusSource>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (mut sock, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let status = status.clone();
        tokio::spawn(async move {
            let mut head = Vec::with_capacity(1024);
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                true
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line);
            let mut parts = line.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (code, ctype, body) = match (method, path.split('?').next().unwrap_or("")) {
                ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render(&status.runtime_status())),
                ("GET", _) => ("404 Not Found", "text/plain", "not found; try /metrics\n".to_string()),
                _ => ("405 Method Not Allowed", "text/plain", "only GET /metrics\n".to_string()),
            };
            let resp = format!("HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_evictable_category_is_present_and_counts_are_written() {
        let mut rt = RuntimeStatus { events_read: 7, queue_disk_bytes: 4096, ..Default::default() };
        rt.evicted_by_category.insert("logs".into(), 12);
        let text = render(&rt);
        assert!(text.contains("custos_agent_events_evicted_total{category=\"logs\"} 12\n"), "{text}");
        assert!(text.contains("custos_agent_events_evicted_total{category=\"performance\"} 0\n"), "{text}");
        assert!(!text.contains("custos_agent_events_evicted_total{category=\"security\"}"), "never evicted: {text}");
        assert!(text.contains("custos_agent_events_read_total 7\n"));
        assert!(text.contains("custos_agent_queue_disk_bytes 4096\n"));
        // Every sample line belongs to a declared family.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{l}");
        }
    }

    #[tokio::test]
    async fn the_endpoint_answers_get_metrics_and_refuses_the_rest() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        let status: Arc<dyn StatusSource> = Arc::new(|| RuntimeStatus { dead_letters: 3, ..Default::default() });
        let server = tokio::spawn(serve(listener, status, rx));
        let get = |req: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("custos_agent_dead_letters_total 3"), "{ok}");
        assert!(get("GET / HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404"));
        assert!(get("POST /metrics HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 405"));
        tx.send(true).unwrap();
        server.await.unwrap();
    }
}
