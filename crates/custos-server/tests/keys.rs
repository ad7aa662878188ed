//! Workspace keys on a running server: automatic rotation on schedule
//! (injected clock), with the older segments rewrapped and still readable.

use std::sync::Arc;

use custos_catalog::Workspace;
use custos_model::{AgentId, Category, Event, Level, TableName, WorkspaceId};
use custos_server::clock::ManualClock;
use custos_server::config::ServerConfig;
use custos_server::Server;
use custos_store::{KeyState, SegmentBuilder};

const DAY: i64 = 86_400 * 1_000_000;

async fn server(rotate_after_days: u32) -> (tempfile::TempDir, Server, Arc<ManualClock>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig { data_dir: tmp.path().join("data"), listen: "127.0.0.1:0".into(), ..Default::default() };
    cfg.encryption.rotate_after_days = rotate_after_days;
    let clock = Arc::new(ManualClock::new(custos_model::now_micros()));
    let server = Server::start_with_clock(cfg, clock.clone()).await.unwrap();
    (tmp, server, clock)
}

/// A sealed segment of `ws` stored and committed as ingest would.
async fn store_segment(server: &Server, ws: WorkspaceId) {
    let s = server.state();
    let table = TableName::new("logs").unwrap();
    let mut b = SegmentBuilder::new(ws, table.clone());
    let ev = Event {
        table: table.clone(),
        time: 1_000,
        level: Level::Enhanced,
        category: Category::Logs,
        host: "h".into(),
        message: "kept across rotations".into(),
        attrs: Default::default(),
    };
    b.push(AgentId::new(), &ev);
    let id = custos_model::SegmentId::new();
    let enc = b.finish_sealed(id, s.keys.as_ref()).unwrap();
    let path = custos_store::segment_path(ws, &table, id);
    s.storage.put(&path, enc.bytes.clone()).await.unwrap();
    let seg = custos_catalog::Segment {
        id,
        workspace_id: ws,
        table,
        path,
        min_time: enc.min_time,
        max_time: enc.max_time,
        rows: enc.rows,
        bytes: enc.bytes.len() as u64,
        columns: enc.columns.into_iter().map(|(name, ty)| custos_catalog::ColumnDef { name, ty }).collect(),
        created_at: 0,
    };
    s.catalog.commit_segments(&[seg], &[], 0).await.unwrap();
}

async fn workspace(server: &Server) -> WorkspaceId {
    let ws = WorkspaceId::new();
    let w = Workspace { id: ws, name: "keys".into(), region: "local".into(), retention_days: 7, created_at: 0, lockbox: true, policy: Default::default(), plan: "paid".into(), lock: None };
    server.state().catalog.create_workspace(&w).await.unwrap();
    ws
}

#[tokio::test]
async fn keys_rotate_on_schedule_and_older_segments_are_rewrapped_and_readable() {
    let (_tmp, server, clock) = server(90).await;
    let s = server.state().clone();
    let ws = workspace(&server).await;
    store_segment(&server, ws).await;
    assert_eq!(s.keys.versions(ws).unwrap().len(), 1);

    // Not yet due: nothing happens.
    clock.advance(89 * DAY);
    assert!(custos_server::keys::rotate_due(&s).await.unwrap().is_empty());
    // Due: a new active version, the old one retired.
    clock.advance(2 * DAY);
    assert_eq!(custos_server::keys::rotate_due(&s).await.unwrap(), vec![ws]);
    let states: Vec<KeyState> = s.keys.versions(ws).unwrap().iter().map(|v| v.state).collect();
    assert_eq!(states, [KeyState::Retired, KeyState::Active]);
    // The rewrap runs in the background; wait for it.
    let mut pending = u64::MAX;
    for _ in 0..200 {
        pending = custos_server::keys::status(&s, ws).await.unwrap().segments_pending_rewrap;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(pending, 0, "every segment rewrapped under the new version");
    let resp = custos_server::query::run(s.catalog.as_ref(), s.storage.clone(), s.keys.clone(), ws, "SELECT message FROM logs", 10, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(resp.rows, vec![vec![serde_json::json!("kept across rotations")]]);
}

#[tokio::test]
async fn automatic_rotation_can_be_turned_off() {
    let (_tmp, server, clock) = server(0).await;
    let s = server.state().clone();
    let ws = workspace(&server).await;
    store_segment(&server, ws).await;
    clock.advance(1000 * DAY);
    assert!(custos_server::keys::rotate_due(&s).await.unwrap().is_empty());
    assert_eq!(s.keys.versions(ws).unwrap().len(), 1);
}
