//! Purge end to end over HTTPS, on an injected clock: a dry run per
//! table; rows hidden from queries the moment the job is accepted; the
//! cancel window; segments the Bloom filters rule out never read; a signed
//! receipt whose hashes are the stored objects'; nothing of the purged host
//! left in storage; `--now`; cancel; locks.


use crate::common::Env;
use custos_model::api::SignedReceipt;
use custos_model::{Category, Event, Level, TableName, Value};
use custos_server::Clock;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value as Json};
use sha2::Digest;

const HOUR: i64 = 3600 * 1_000_000;

fn log(time: i64, host: &str, user: &str, msg: &str) -> Event {
    let mut attrs = std::collections::BTreeMap::new();
    attrs.insert("severity".to_string(), Value::from("error"));
    attrs.insert("source".to_string(), Value::from(format!("src-{user}")));
    Event { table: TableName::new("logs").unwrap(), time, level: Level::Enhanced, category: Category::Logs, host: host.into(), message: msg.into(), attrs }
}

fn perf(time: i64, host: &str) -> Event {
    let mut attrs = std::collections::BTreeMap::new();
    attrs.insert("cpu_percent".to_string(), Value::Float(12.5));
    Event { table: TableName::new("performance").unwrap(), time, level: Level::Enhanced, category: Category::Performance, host: host.into(), message: String::new(), attrs }
}

async fn hosts(env: &Env, token: &str, ws: &str, table: &str) -> Vec<(String, i64)> {
    env.rows(token, ws, &format!("SELECT host, count(*) FROM {table} GROUP BY host ORDER BY host"))
        .await
        .into_iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_i64().unwrap()))
        .collect()
}

async fn purge(env: &Env, token: &str, ws: &str, body: Json) -> (StatusCode, Json) {
    env.call(Some(token), Method::POST, &format!("/v1/workspaces/{ws}/purges"), Some(body)).await
}

/// Every stored row of the workspace's segments, decoded from storage.
async fn stored_hosts(env: &Env, ws: &str) -> Vec<String> {
    let s = env.server.state();
    let id = ws.parse().unwrap();
    let mut out = Vec::new();
    for t in s.catalog.list_tables(id).await.unwrap() {
        for seg in s.catalog.list_segments(id, &t, None).await.unwrap() {
            let bytes = s.storage.get(&seg.path).await.unwrap();
            let d = custos_store::decode_segment_with(&bytes, None, Some(s.keys.as_ref())).unwrap();
            for b in &d.batches {
                let col = b.column_by_name("host").unwrap();
                let col = col.as_any().downcast_ref::<arrow::array::StringArray>().unwrap();
                out.extend(col.iter().flatten().map(str::to_string));
            }
        }
    }
    out
}

#[tokio::test]
async fn a_purge_hides_rows_at_once_waits_for_its_window_then_removes_them_with_a_signed_receipt() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace_with("purge", "owner").await;
    let now = env.clock.now();
    // Four logs segments: h1+h2, h2 only, h3 only, h1+h3; and performance.
    for (i, batch) in [vec![("h1", "alice"), ("h2", "bob")], vec![("h2", "bob")], vec![("h3", "carol")], vec![("h1", "alice"), ("h3", "carol")]]
        .into_iter()
        .enumerate()
    {
        let a = env.agent(&ws, &format!("agent-{i}")).await;
        let evs: Vec<Event> = batch.iter().flat_map(|(h, u)| (0..5).map(move |k| log(now - HOUR + k, h, u, &format!("{h} line {k}")))).collect();
        a.ship(evs).await;
        a.ship(vec![perf(now, batch[0].0)]).await;
        // A query flushes: one segment per batch.
        hosts(&env, &owner, &ws, "logs").await;
    }
    let before_logs = hosts(&env, &owner, &ws, "logs").await;
    assert_eq!(before_logs, vec![("h1".into(), 10), ("h2".into(), 10), ("h3".into(), 10)]);

    // Dry run: counts per table, nothing changes; segments without h1 are
    // ruled out by their Bloom filter.
    let (s, dry) = purge(&env, &owner, &ws, json!({"where": "host = 'h1'", "dry_run": true})).await;
    assert_eq!(s, StatusCode::OK, "{dry}");
    assert_eq!(dry["rows"], json!(12), "{dry}");
    let logs = dry["tables"].as_array().unwrap().iter().find(|t| t["table"] == json!("logs")).unwrap();
    assert_eq!((logs["rows"].as_u64(), logs["segments"].as_u64()), (Some(10), Some(2)), "{dry}");
    assert!(logs["segments_skipped"].as_u64().unwrap() >= 1, "the h2-only and h3-only segments need no read: {dry}");
    assert_eq!(hosts(&env, &owner, &ws, "logs").await, before_logs);

    // Accepted: h1 is gone from every query at once.
    let (s, job) = purge(&env, &owner, &ws, json!({"where": "host IN ('h1')"})).await;
    assert_eq!(s, StatusCode::CREATED, "{job}");
    assert_eq!((job["state"].as_str(), job["predicate"].as_str()), (Some("pending"), Some("host = 'h1'")));
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(hosts(&env, &owner, &ws, "logs").await, vec![("h2".into(), 10), ("h3".into(), 10)]);
    assert_eq!(hosts(&env, &owner, &ws, "performance").await, vec![("h2".into(), 1), ("h3".into(), 1)]);
    assert!(stored_hosts(&env, &ws).await.iter().any(|h| h == "h1"), "still stored during the cancel window");

    // The window is 24 h: nothing runs before.
    let st = env.server.state().clone();
    env.clock.advance(23 * HOUR);
    assert!(custos_server::purge::run_due(&st).await.unwrap().is_empty());
    env.clock.advance(2 * HOUR);
    let ended = custos_server::purge::run_due(&st).await.unwrap();
    assert_eq!(ended.len(), 1);
    let (s, shown) = env.call(Some(&owner), Method::GET, &format!("/v1/purges/{id}"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(shown["state"], json!("completed"), "{shown}");

    // Nothing of h1 left in storage; everything else intact.
    let stored = stored_hosts(&env, &ws).await;
    assert!(!stored.iter().any(|h| h == "h1"), "{stored:?}");
    assert_eq!(stored.iter().filter(|h| *h == "h2").count(), 11);
    assert_eq!(stored.iter().filter(|h| *h == "h3").count(), 11);
    assert_eq!(hosts(&env, &owner, &ws, "logs").await, vec![("h2".into(), 10), ("h3".into(), 10)]);
    let msgs = env.rows(&owner, &ws, "SELECT message FROM logs WHERE host = 'h3' ORDER BY message").await;
    assert_eq!(msgs.len(), 10);
    assert_eq!(msgs[0][0], json!("h3 line 0"));

    // The receipt: signed by the server's key (audit.pub), hashes of the
    // objects removed and written, rows per segment.
    let signed: SignedReceipt = serde_json::from_value(shown["receipt"].clone()).unwrap();
    let data_dir = std::path::PathBuf::from(env.server.info().ca.trim_end_matches("ca.crt"));
    let key = custos_audit::read_public_key(&custos_audit::public_key_path(&data_dir)).unwrap();
    custos_server::purge::verify(&signed, &key).unwrap();
    let r = &signed.receipt;
    assert_eq!((r.rows_removed, r.predicate.as_str()), (12, "host = 'h1'"));
    assert_eq!(r.segments.len(), 4, "two logs segments rewritten, two performance segments emptied");
    assert_eq!((r.segments_rewritten, r.segments_deleted), (2, 2));
    assert!(r.segments_skipped >= 2, "{r:?}");
    for e in &r.segments {
        if let (Some(new), Some(hash)) = (e.new_segment, &e.new_sha256) {
            let seg = st.catalog.list_segments(ws.parse().unwrap(), &TableName::new(&e.table).unwrap(), None).await.unwrap();
            let seg = seg.iter().find(|s| s.id == new).expect("the new segment is registered");
            let bytes = st.storage.get(&seg.path).await.unwrap();
            assert_eq!(&hex::encode(sha2::Sha256::digest(&bytes)), hash);
            assert_eq!(e.rows_before - e.rows_removed, seg.rows);
        }
    }
    let (_, m) = env.call(Some(&env.admin), Method::GET, "/metrics", None).await;
    let m = m.as_str().unwrap_or_default().to_string();
    assert!(m.contains("custos_purge_jobs_total{outcome=\"completed\"} 1") && m.contains("custos_purge_rows_removed_total 12"), "{m}");
    // Tampering with the receipt breaks the signature.
    let mut forged = signed.clone();
    forged.receipt.rows_removed = 1;
    assert!(custos_server::purge::verify(&forged, &key).is_err());
    // Deletions are recorded with reason purge; the job is audited.
    let dels = env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}/deletions"), None).await;
    assert_eq!(dels.as_array().unwrap().iter().filter(|d| d["reason"] == json!("purge")).count(), 4);
    let audit = env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}/audit"), None).await;
    let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"purge.create") && actions.contains(&"purge.completed"), "{actions:?}");
    // The audit log never holds the purged value itself.
    assert!(!audit.to_string().contains("'h1'"), "the predicate's values leaked into the audit log: {audit}");
}

#[tokio::test]
async fn a_cancelled_purge_shows_its_rows_again_and_now_runs_at_once() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace_with("purge-cancel", "owner").await;
    let a = env.agent(&ws, "a").await;
    let now = env.clock.now();
    a.ship(vec![log(now, "h1", "alice", "one"), log(now, "h2", "bob", "two"), log(now, "h2", "bob", "three")]).await;
    let (_, job) = purge(&env, &owner, &ws, json!({"tables": ["logs"], "where": "source = 'src-bob'"})).await;
    let id = job["id"].as_str().unwrap();
    assert_eq!(hosts(&env, &owner, &ws, "logs").await, vec![("h1".into(), 1)]);
    let c = env.ok(&owner, Method::POST, &format!("/v1/purges/{id}/cancel"), None).await;
    assert_eq!(c["state"], json!("cancelled"));
    assert_eq!(hosts(&env, &owner, &ws, "logs").await, vec![("h1".into(), 1), ("h2".into(), 2)]);
    let (s, e) = env.call(Some(&owner), Method::POST, &format!("/v1/purges/{id}/cancel"), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");

    // --now: the runner is woken and finishes on its own.
    let (s, job) = purge(&env, &owner, &ws, json!({"where": "host = 'h2'", "now": true})).await;
    assert_eq!(s, StatusCode::CREATED);
    let id = job["id"].as_str().unwrap();
    let mut state = Json::Null;
    for _ in 0..200 {
        state = env.ok(&owner, Method::GET, &format!("/v1/purges/{id}"), None).await["state"].clone();
        if state == json!("completed") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(state, json!("completed"));
    let (s, e) = env.call(Some(&owner), Method::POST, &format!("/v1/purges/{id}/cancel"), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "a completed purge cannot be cancelled: {e}");
    assert!(!stored_hosts(&env, &ws).await.iter().any(|h| h == "h2"));
    // Listing, newest first.
    let list = env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}/purges"), None).await;
    let states: Vec<&str> = list.as_array().unwrap().iter().map(|j| j["state"].as_str().unwrap()).collect();
    assert_eq!(states, vec!["completed", "cancelled"]);
}

#[tokio::test]
async fn bad_predicates_are_refused_with_what_and_where_and_locks_refuse_purges() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace_with("purge-bad", "owner").await;
    for (body, want) in [
        (json!({"where": "host = 'a' OR 1=1"}), "unexpected text after the predicate"),
        (json!({"where": "host"}), "expected = or IN"),
        (json!({"where": "host = 'x'", "tables": ["Bad Table"]}), "table \\\"Bad Table\\\""),
    ] {
        let (s, e) = purge(&env, &owner, &ws, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
        assert!(e.to_string().contains(want), "{e}");
    }
    env.ok(&owner, Method::POST, &format!("/v1/workspaces/{ws}/lock"), Some(json!({"reason": "regulator inquiry"}))).await;
    let (s, e) = purge(&env, &owner, &ws, json!({"where": "host = 'h1'", "now": true})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(e.to_string().contains("is locked (regulator inquiry)"), "{e}");
    // A dry run changes nothing: allowed while locked.
    let (s, _) = purge(&env, &owner, &ws, json!({"where": "host = 'h1'", "dry_run": true})).await;
    assert_eq!(s, StatusCode::OK);
    // Readers may not purge; another workspace's job is not found.
    let reader = env.principal("purge-reader").await;
    env.grant(&ws, "purge-reader", "reader").await;
    let (s, _) = purge(&env, &reader, &ws, json!({"where": "host = 'h1'"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = env.call(Some(&owner), Method::GET, &format!("/v1/purges/{}", custos_model::JobId::new()), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_purge_accepted_before_a_lock_pauses_until_the_unlock() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace_with("purge-pause", "owner").await;
    let a = env.agent(&ws, "a").await;
    a.ship(vec![log(env.clock.now(), "h1", "alice", "x"), log(env.clock.now(), "h2", "bob", "y")]).await;
    let (_, job) = purge(&env, &owner, &ws, json!({"where": "host = 'h1'"})).await;
    let id = job["id"].as_str().unwrap().to_string();
    env.ok(&owner, Method::POST, &format!("/v1/workspaces/{ws}/lock"), Some(json!({"reason": "hold"}))).await;
    env.clock.advance(48 * HOUR);
    let st = env.server.state().clone();
    assert!(custos_server::purge::run_due(&st).await.unwrap().is_empty());
    assert_eq!(env.ok(&owner, Method::GET, &format!("/v1/purges/{id}"), None).await["state"], json!("pending"));
    assert!(stored_hosts(&env, &ws).await.iter().any(|h| h == "h1"), "nothing deleted while locked");
    assert_eq!(hosts(&env, &owner, &ws, "logs").await, vec![("h2".into(), 1)], "still hidden");
    env.ok(&owner, Method::POST, &format!("/v1/workspaces/{ws}/unlock"), None).await;
    assert_eq!(custos_server::purge::run_due(&st).await.unwrap().len(), 1);
    assert!(!stored_hosts(&env, &ws).await.iter().any(|h| h == "h1"));
}

#[tokio::test]
async fn a_purge_that_fails_on_a_damaged_segment_keeps_hiding_its_rows_and_can_be_retried() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace_with("purge-retry", "owner").await;
    let a = env.agent(&ws, "a").await;
    a.ship(vec![log(env.clock.now(), "h1", "alice", "x"), log(env.clock.now(), "h2", "bob", "y")]).await;
    hosts(&env, &owner, &ws, "logs").await;
    let st = env.server.state().clone();
    let seg = st.catalog.list_segments(ws.parse().unwrap(), &TableName::new("logs").unwrap(), None).await.unwrap().remove(0);
    let good = st.storage.get(&seg.path).await.unwrap();
    st.storage.put(&seg.path, bytes::Bytes::from_static(b"damaged")).await.unwrap();
    let (_, job) = purge(&env, &owner, &ws, json!({"where": "host = 'h1'"})).await;
    let id = job["id"].as_str().unwrap().to_string();
    env.clock.advance(25 * HOUR);
    custos_server::purge::run_due(&st).await.unwrap();
    let j = env.ok(&owner, Method::GET, &format!("/v1/purges/{id}"), None).await;
    assert_eq!(j["state"], json!("failed"), "{j}");
    assert!(j["error"].as_str().unwrap().contains(&seg.id.to_string()), "the error names the segment: {j}");
    let audit = env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}/audit"), None).await;
    assert!(audit.as_array().unwrap().iter().any(|a| a["action"] == json!("data_loss.incident")), "a damaged segment is a data-loss incident: {audit}");
    // Repaired (from a backup, say), retried: it completes.
    st.storage.put(&seg.path, good).await.unwrap();
    assert_eq!(hosts(&env, &owner, &ws, "logs").await, vec![("h2".into(), 1)], "still hidden while failed");
    let r = env.ok(&owner, Method::POST, &format!("/v1/purges/{id}/retry"), None).await;
    assert_eq!(r["state"], json!("pending"));
    custos_server::purge::run_due(&st).await.unwrap();
    assert_eq!(env.ok(&owner, Method::GET, &format!("/v1/purges/{id}"), None).await["state"], json!("completed"));
    assert!(!stored_hosts(&env, &ws).await.iter().any(|h| h == "h1"));
    let (s, _) = env.call(Some(&owner), Method::POST, &format!("/v1/purges/{id}/retry"), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "only a failed job is retried");
}
