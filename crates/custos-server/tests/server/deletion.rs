//! Deleting a workspace over HTTPS: confirmation and lock refusals; keys
//! destroyed first, so even a copy of a segment taken before is unreadable;
//! then every byte and catalog entry gone, its agents refused, and other
//! workspaces untouched.


use crate::common::Env;
use custos_model::{Category, Event, Level, TableName};
use custos_server::Clock;
use reqwest::{Method, StatusCode};
use serde_json::json;

fn ev(time: i64, msg: &str) -> Event {
    Event {
        table: TableName::new("logs").unwrap(),
        time,
        level: Level::Enhanced,
        category: Category::Logs,
        host: "h1".into(),
        message: msg.into(),
        attrs: Default::default(),
    }
}

#[tokio::test]
async fn deleting_a_workspace_destroys_its_keys_then_its_bytes_and_leaves_nothing_readable() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace_with("doomed", "owner").await;
    let (other, other_owner) = env.workspace_with("survivor", "owner").await;
    let agent = env.agent(&ws, "h1").await;
    let bystander = env.agent(&other, "h2").await;
    let now = env.clock.now();
    for i in 0..3 {
        agent.ship(vec![ev(now + i, &format!("secret {i}"))]).await;
        env.rows(&owner, &ws, "SELECT count(*) FROM logs").await;
    }
    bystander.ship(vec![ev(now, "kept")]).await;
    let st = env.server.state().clone();
    let id: custos_model::WorkspaceId = ws.parse().unwrap();
    let segs = st.catalog.list_segments(id, &TableName::new("logs").unwrap(), None).await.unwrap();
    assert_eq!(segs.len(), 3);
    // A copy taken before the deletion (a backup, a stolen disk).
    let copy = st.storage.get(&segs[0].path).await.unwrap();
    assert!(custos_store::decode_segment_with(&copy, None, Some(st.keys.as_ref())).is_ok());

    // Confirmation and locks.
    let path = format!("/v1/workspaces/{ws}");
    let (s, e) = env.call(Some(&owner), Method::DELETE, &path, Some(json!({"confirm": "wrong"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(e.to_string().contains("confirm must be the workspace's name"), "{e}");
    env.ok(&owner, Method::POST, &format!("/v1/workspaces/{ws}/lock"), Some(json!({"reason": "audit"}))).await;
    let (s, e) = env.call(Some(&owner), Method::DELETE, &path, Some(json!({"confirm": "doomed"}))).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(e.to_string().contains("is locked (audit)"), "{e}");
    assert_eq!(env.rows(&owner, &ws, "SELECT count(*) FROM logs").await[0][0], json!(3), "nothing deleted while locked");
    env.ok(&owner, Method::POST, &format!("/v1/workspaces/{ws}/unlock"), None).await;

    let r = env.ok(&owner, Method::DELETE, &path, Some(json!({"confirm": "doomed"}))).await;
    assert_eq!((r["segments_deleted"].as_u64(), r["rows_deleted"].as_u64()), (Some(3), Some(3)), "{r}");
    assert!(r["keys_destroyed_at"].as_str().unwrap() <= r["completed_at"].as_str().unwrap());

    // Nothing readable: the copy no longer decrypts, nothing is stored.
    match custos_store::decode_segment_with(&copy, None, Some(st.keys.as_ref())) {
        Err(custos_store::StoreError::Key { .. }) => {}
        other => panic!("a copy of a deleted workspace's segment must not decrypt: {other:?}"),
    }
    assert!(st.storage.list(&custos_store::workspace_prefix(id)).await.unwrap().is_empty());
    assert!(st.catalog.list_tables(id).await.unwrap().is_empty());
    assert!(st.keys.versions(id).map(|v| v.is_empty()).unwrap_or(true), "no key version left");
    // The workspace is gone for everyone; its agent is refused.
    let (s, _) = env.call(Some(&owner), Method::GET, &path, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = env.call(Some(&env.admin), Method::POST, &format!("{path}/query"), Some(json!({"sql": "SELECT 1"}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = agent.post(crate::common::frame(vec![ev(now, "after")])).await;
    assert!(s.is_client_error(), "{s}");
    let dels = st.catalog.list_deletions(id, 10).await.unwrap();
    assert_eq!(dels.len(), 3);
    assert!(dels.iter().all(|d| d.reason == custos_catalog::DeletionReason::Workspace && d.object_deleted_at.is_some()));
    // Another workspace is untouched.
    assert_eq!(env.rows(&other_owner, &other, "SELECT message FROM logs").await, vec![vec![json!("kept")]]);
    // Deleting twice: not found.
    let (s, _) = env.call(Some(&env.admin), Method::DELETE, &path, Some(json!({"confirm": "doomed"}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
