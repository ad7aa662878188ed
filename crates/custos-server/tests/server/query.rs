//! SQL over segments: schema union and widening across segments, projection,
//! workspace isolation, and read-only SQL — against the real SQLite catalog
//! and local storage.

use custos_catalog::{Catalog, Workspace};
use custos_model::{AgentId, Category, Event, Level, SegmentId, TableName, Value, WorkspaceId};
use custos_server::query;
use custos_store::{SegmentBuilder, Storage};
use std::sync::Arc;
use std::time::Duration;

fn ev(t: i64, msg: &str, attrs: Vec<(&str, Value)>) -> Event {
    Event {
        table: TableName::new("logs").unwrap(),
        time: t,
        level: Level::Enhanced,
        category: Category::Logs,
        host: "h".into(),
        message: msg.into(),
        attrs: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    }
}

async fn put_segment(cat: &dyn Catalog, st: &dyn Storage, ws: WorkspaceId, events: Vec<Event>) {
    let table = TableName::new("logs").unwrap();
    let mut b = SegmentBuilder::new(ws, table.clone());
    for e in &events {
        b.push(AgentId::new(), e);
    }
    let id = SegmentId::new();
    let enc = b.finish(id).unwrap();
    let seg = custos_server::ingest::catalog_entry(ws, table, id, &enc, 0);
    st.put(&seg.path, enc.bytes).await.unwrap();
    cat.commit_segments(&[seg], &[], 0).await.unwrap();
}

async fn setup() -> (tempfile::TempDir, Arc<dyn Catalog>, Arc<dyn Storage>, WorkspaceId, WorkspaceId) {
    let tmp = tempfile::tempdir().unwrap();
    let cat = custos_catalog::open(&format!("sqlite://{}", tmp.path().join("c.db").display())).await.unwrap();
    let st = custos_store::storage_from_uri(tmp.path().join("seg").to_str().unwrap()).unwrap();
    let (a, b) = (WorkspaceId::new(), WorkspaceId::new());
    for (id, name) in [(a, "a"), (b, "b")] {
        cat.create_workspace(&Workspace { id, name: name.into(), region: "local".into(), retention_days: 7, created_at: 0, lockbox: true, policy: Default::default(), plan: "paid".into(), lock: None })
            .await
            .unwrap();
    }
    (tmp, cat, st, a, b)
}

async fn q(cat: &Arc<dyn Catalog>, st: &Arc<dyn Storage>, ws: WorkspaceId, sql: &str) -> Result<custos_model::api::QueryResponse, String> {
    // Segments here are written unsealed (format 3, flags 0), which the query path
    // still reads; the keystore is never asked for a key.
    let d = tempfile::tempdir().unwrap();
    let keys = Arc::new(custos_store::ServiceKeystore::open(&d.path().join("ks.json"), custos_store::DataKey::generate().unwrap()).unwrap());
    query::run(cat.as_ref(), st.clone(), keys, ws, sql, 1000, Duration::from_secs(30)).await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn columns_are_unioned_and_widened_across_segments() {
    let (_t, cat, st, a, _) = setup().await;
    put_segment(cat.as_ref(), st.as_ref(), a, vec![ev(1, "one", vec![("pid", Value::Int(7)), ("ok", Value::Bool(true))])]).await;
    put_segment(cat.as_ref(), st.as_ref(), a, vec![ev(2, "two", vec![("pid", Value::Str("n/a".into())), ("lat", Value::Float(1.5))])]).await;
    let r = q(&cat, &st, a, "SELECT message, pid, ok, lat FROM logs ORDER BY time").await.unwrap();
    assert_eq!(r.columns, vec!["message", "pid", "ok", "lat"]);
    assert_eq!(r.rows[0], vec![serde_json::json!("one"), serde_json::json!("7"), serde_json::json!(true), serde_json::Value::Null]);
    assert_eq!(r.rows[1], vec![serde_json::json!("two"), serde_json::json!("n/a"), serde_json::Value::Null, serde_json::json!(1.5)]);
    let r = q(&cat, &st, a, "SELECT count(*) AS n FROM logs").await.unwrap();
    assert_eq!(r.rows[0][0], 2);
    let r = q(&cat, &st, a, "SELECT pid, count(*) AS n FROM logs GROUP BY pid ORDER BY pid").await.unwrap();
    assert_eq!(r.rows.len(), 2);
}

#[tokio::test]
async fn a_workspace_never_sees_another_workspaces_rows() {
    let (_t, cat, st, a, b) = setup().await;
    put_segment(cat.as_ref(), st.as_ref(), a, (0..10).map(|i| ev(i, "a", vec![])).collect()).await;
    put_segment(cat.as_ref(), st.as_ref(), b, (0..3).map(|i| ev(i, "b", vec![])).collect()).await;
    assert_eq!(q(&cat, &st, a, "SELECT count(*) FROM logs").await.unwrap().rows[0][0], 10);
    assert_eq!(q(&cat, &st, b, "SELECT count(*) FROM logs").await.unwrap().rows[0][0], 3);
    let r = q(&cat, &st, b, "SELECT DISTINCT message FROM logs").await.unwrap();
    assert_eq!(r.rows, vec![vec![serde_json::json!("b")]]);
}

#[tokio::test]
async fn too_many_rows_and_writes_are_refused_clearly() {
    let (_t, cat, st, a, _) = setup().await;
    put_segment(cat.as_ref(), st.as_ref(), a, (0..1500).map(|i| ev(i, "x", vec![])).collect()).await;
    let e = q(&cat, &st, a, "SELECT * FROM logs").await.unwrap_err();
    assert!(e.contains("more than 1000 rows"), "{e}");
    let e = q(&cat, &st, a, "DELETE FROM logs").await.unwrap_err();
    assert!(e.contains("query failed"), "{e}");
}

#[tokio::test]
async fn a_corrupt_segment_fails_the_query_naming_it() {
    let (_t, cat, st, a, _) = setup().await;
    put_segment(cat.as_ref(), st.as_ref(), a, (0..10).map(|i| ev(i, "x", vec![])).collect()).await;
    let seg = &cat.list_segments(a, &TableName::new("logs").unwrap(), None).await.unwrap()[0];
    let mut bytes = st.get(&seg.path).await.unwrap().to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    st.put(&seg.path, bytes.into()).await.unwrap();
    let e = q(&cat, &st, a, "SELECT count(*) FROM logs").await.unwrap_err();
    assert!(e.contains(&seg.id.to_string()) && e.contains("checksum"), "{e}");
}
