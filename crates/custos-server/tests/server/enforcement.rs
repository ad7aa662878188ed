//! Server-side enforcement of consent levels and workspace policy, end to
//! end over HTTPS with a real enrolled agent certificate: refused events are
//! acknowledged as refused, stored nowhere, counted per agent for the
//! workspace's owners and auditors only, and a replay after a crash stores
//! and counts what was decided when the batch arrived.

use custos_model::api::RefusalReason;
use custos_model::wire;
use custos_model::{AgentId, BatchId, Category, Event, Level, TableName, Value, WorkspaceId};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value as Json};
use crate::common::{frame, Env};

impl Env {
    async fn set_policy(&self, token: &str, ws: &str, body: Json) -> Json {
        self.ok(token, Method::PUT, &format!("/v1/workspaces/{ws}/policy"), Some(body)).await
    }

    async fn refusals(&self, token: &str, ws: &str) -> Vec<Json> {
        let v = self.ok(token, Method::GET, &format!("/v1/workspaces/{ws}/refusals"), None).await;
        v.as_array().unwrap().clone()
    }
}

fn event(table: &str, category: Category, level: Level, message: &str, attrs: &[(&str, Value)]) -> Event {
    Event {
        table: TableName::new(table).unwrap(),
        time: custos_model::now_micros(),
        level,
        category,
        host: "h-0123456789abcdef".into(),
        message: message.into(),
        attrs: attrs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
    }
}

fn line(severity: &str, declared: Level, message: &str) -> Event {
    event("logs", Category::Logs, declared, message, &[("severity", Value::from(severity)), ("source", Value::from("file"))])
}

/// (reason, category) -> events, from the refusals listing.
fn counts(refusals: &[Json]) -> Vec<(String, String, u64)> {
    let mut out: Vec<(String, String, u64)> = refusals
        .iter()
        .map(|r| (r["reason"].as_str().unwrap().to_string(), r["category"].as_str().unwrap().to_string(), r["events"].as_u64().unwrap()))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn an_over_level_batch_is_refused_stored_nowhere_and_counted_for_the_owner_only() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace_with("over-level", "owner").await;
    let (ws_b, owner_b) = env.workspace_with("other", "owner").await;
    let auditor = env.principal("auditor").await;
    env.grant(&ws, "auditor", "auditor").await;
    let reader = env.principal("reader").await;
    env.grant(&ws, "reader", "reader").await;
    let p = env.set_policy(&owner, &ws, json!({"max_level": 1})).await;
    assert_eq!(p["max_level"], 1);
    let agent = env.agent(&ws, "web-1").await;

    let batch = frame((0..5).map(|i| line("error", Level::Enhanced, &format!("disk failure {i}"))).collect());
    let ack = agent.send(batch.clone()).await;
    assert_eq!((ack.accepted, ack.refused, ack.duplicate), (0, 5, false));
    // Nothing of it is stored.
    assert_eq!(env.rows(&owner, &ws, "SELECT count(*) FROM logs").await, vec![vec![json!(0)]]);
    let tables = env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}/tables"), None).await;
    assert_eq!(tables, json!([]), "a refused batch left a segment");
    // Counted per agent, visible to the owner and the auditor.
    let seen = env.refusals(&owner, &ws).await;
    assert_eq!(counts(&seen), vec![("level".into(), "logs".into(), 5)]);
    assert_eq!(seen[0]["agent_id"], agent.id.as_str());
    assert_eq!(seen[0]["hostname"], "web-1");
    assert_eq!(counts(&env.refusals(&auditor, &ws).await), counts(&seen));
    // A retried batch is answered as a duplicate and counted once.
    let again = agent.send(batch).await;
    assert!(again.duplicate);
    assert_eq!((again.accepted, again.refused), (0, 5));
    assert_eq!(counts(&env.refusals(&owner, &ws).await), vec![("level".into(), "logs".into(), 5)]);
    // Invisible to another workspace and to readers.
    let (s, _) = env.call(Some(&owner_b), Method::GET, &format!("/v1/workspaces/{ws}/refusals"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(env.refusals(&owner_b, &ws_b).await, Vec::<Json>::new());
    let (s, _) = env.call(Some(&reader), Method::GET, &format!("/v1/workspaces/{ws}/refusals"), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Another agent of the same workspace is counted apart.
    let second = env.agent(&ws, "web-2").await;
    let ack = second.ship(vec![line("warning", Level::Enhanced, "x")]).await;
    assert_eq!(ack.refused, 1);
    let seen = env.refusals(&owner, &ws).await;
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().any(|r| r["agent_id"] == second.id.as_str() && r["events"] == 1));
}

#[tokio::test]
async fn a_mixed_batch_stores_exactly_the_allowed_events() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace_with("mixed", "owner").await;
    env.set_policy(&owner, &ws, json!({"max_level": 2})).await;
    let agent = env.agent(&ws, "db-1").await;
    let events = vec![
        line("error", Level::Enhanced, "kept error 1"),
        line("info", Level::Full, "refused info 1"),
        line("critical", Level::Enhanced, "kept critical"),
        line("debug", Level::Full, "refused debug"),
        event("crash_reports", Category::Crash, Level::Full, "refused crash", &[("program", Value::from("postgres"))]),
        event("inventory", Category::Inventory, Level::Basic, "kept host", &[("kind", Value::from("host")), ("cpu_cores", Value::Int(8))]),
        // Not in the registry: refused whatever the level.
        event("inventory", Category::Inventory, Level::Basic, "refused serial", &[("serial_number", Value::from("SN1"))]),
        line("warning", Level::Enhanced, "kept warning"),
    ];
    let ack = agent.ship(events).await;
    assert_eq!((ack.accepted, ack.refused), (4, 4));
    let logs = env.rows(&owner, &ws, "SELECT message, level FROM logs ORDER BY message").await;
    assert_eq!(
        logs,
        vec![vec![json!("kept critical"), json!(2)], vec![json!("kept error 1"), json!(2)], vec![json!("kept warning"), json!(2)]]
    );
    let inv = env.rows(&owner, &ws, "SELECT message, cpu_cores FROM inventory").await;
    assert_eq!(inv, vec![vec![json!("kept host"), json!(8)]]);
    // Every registry table exists in every workspace; nothing was stored in this one.
    let crashes = env.rows(&owner, &ws, "SELECT count(*) AS n FROM crash_reports").await;
    assert_eq!(crashes, vec![vec![json!(0)]]);
    assert_eq!(
        counts(&env.refusals(&owner, &ws).await),
        vec![
            ("level".into(), "crash".into(), 1),
            ("level".into(), "logs".into(), 2),
            ("schema".into(), "inventory".into(), 1),
        ]
    );
}

#[tokio::test]
async fn a_lying_agent_cannot_lower_the_level_of_a_log_line() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace_with("liar", "owner").await;
    let agent = env.agent(&ws, "liar-1").await;
    // At the default maximum (3) the info line is stored, at its true level 3.
    let ack = agent.ship(vec![line("info", Level::Enhanced, "info declared as 2")]).await;
    assert_eq!((ack.accepted, ack.refused), (1, 0));
    assert_eq!(env.rows(&owner, &ws, "SELECT level FROM logs").await, vec![vec![json!(3)]]);
    // With the maximum at 2 it is refused, though the agent declared 2; a
    // line without a severity counts as level 3 too.
    env.set_policy(&owner, &ws, json!({"max_level": 2})).await;
    let bare = event("logs", Category::Logs, Level::Enhanced, "no severity", &[]);
    let ack = agent.ship(vec![line("info", Level::Enhanced, "info declared as 2 again"), bare, line("error", Level::Enhanced, "real error")]).await;
    assert_eq!((ack.accepted, ack.refused), (1, 2));
    assert_eq!(env.rows(&owner, &ws, "SELECT count(*) FROM logs").await, vec![vec![json!(2)]]);
    assert_eq!(counts(&env.refusals(&owner, &ws).await), vec![("level".into(), "logs".into(), 2)]);
}

#[tokio::test]
async fn events_outside_the_workspaces_categories_are_refused() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace_with("cats", "owner").await;
    let p = env.set_policy(&owner, &ws, json!({"categories": ["security", "settings", "logs"]})).await;
    assert_eq!(p["categories"], json!(["security", "settings", "logs"]));
    assert_eq!(p["max_level"], 3, "the level is kept when only categories change");
    let agent = env.agent(&ws, "cat-1").await;
    let ack = agent
        .ship(vec![
            event("inventory", Category::Inventory, Level::Basic, "host", &[("kind", Value::from("host"))]),
            event("performance", Category::Performance, Level::Enhanced, "sample", &[("cpu_percent", Value::Float(12.5))]),
            line("error", Level::Enhanced, "kept"),
            event("security_events", Category::Security, Level::Security, "auth", &[("kind", Value::from("auth_failure"))]),
        ])
        .await;
    assert_eq!((ack.accepted, ack.refused), (2, 2));
    assert_eq!(
        counts(&env.refusals(&owner, &ws).await),
        vec![("category".into(), "inventory".into(), 1), ("category".into(), "performance".into(), 1)]
    );
    assert_eq!(env.rows(&owner, &ws, "SELECT count(*) FROM inventory").await, vec![vec![json!(0)]]);
    assert_eq!(env.rows(&owner, &ws, "SELECT message FROM security_events").await, vec![vec![json!("auth")]]);
    // Every category again: all stored.
    env.set_policy(&owner, &ws, json!({"categories": ["security", "settings", "inventory", "health", "usage", "logs", "performance", "crash"]})).await;
    let ack = agent.ship(vec![event("inventory", Category::Inventory, Level::Basic, "host", &[])]).await;
    assert_eq!((ack.accepted, ack.refused), (1, 0));
}

#[tokio::test]
async fn only_owners_change_the_policy_and_workspace_show_tells_it() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace_with("policy", "owner").await;
    let reader = env.principal("policy-reader").await;
    env.grant(&ws, "policy-reader", "reader").await;
    let shown = env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}"), None).await;
    assert_eq!(shown["max_level"], 3);
    assert_eq!(shown["categories"].as_array().unwrap().len(), 8);
    let (s, _) = env.call(Some(&reader), Method::PUT, &format!("/v1/workspaces/{ws}/policy"), Some(json!({"max_level": 0}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = env.call(Some(&env.admin), Method::PUT, &format!("/v1/workspaces/{ws}/policy"), Some(json!({"max_level": 0}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "service admins do not decide what a customer stores");
    for bad in [json!({"max_level": 4}), json!({"categories": []}), json!({"categories": ["metrics"]}), json!({"level": 1})] {
        let (s, b) = env.call(Some(&owner), Method::PUT, &format!("/v1/workspaces/{ws}/policy"), Some(bad.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
    }
    env.set_policy(&owner, &ws, json!({"max_level": 1, "categories": ["health", "inventory"]})).await;
    let shown = env.ok(&reader, Method::GET, &format!("/v1/workspaces/{ws}"), None).await;
    assert_eq!(shown["max_level"], 1);
    assert_eq!(shown["categories"], json!(["inventory", "health"]));
    // The change is audited with the new values.
    let log = env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}/audit"), None).await;
    let rec = log.as_array().unwrap().iter().rev().find(|r| r["action"] == "workspace.policy" && r["outcome"] == "ok").unwrap();
    assert_eq!(rec["details"]["max_level"], "1");
    assert_eq!(rec["details"]["categories"], "inventory,health");
}

/// Starts an ingest pipeline, sends one batch, and "crashes" (drops the
/// runtime, so the builder never writes segments); then starts again on the
/// same directories. The replay must store and count exactly what the first
/// run acknowledged, although the policy was tightened in between.
#[test]
fn a_replayed_batch_is_stored_and_counted_as_decided_when_it_arrived() {
    use custos_server::ingest::{BuilderLimits, Ingest};
    let tmp = tempfile::tempdir().unwrap();
    let cat_uri = format!("sqlite://{}", tmp.path().join("catalog.db").display());
    let seg_dir = tmp.path().join("segments");
    let wal_dir = tmp.path().join("wal");
    // One keystore (and master key) across the crash, as a server has.
    let ks_path = tmp.path().join("keystore.json");
    let keys = || -> std::sync::Arc<dyn custos_store::KeyProvider> {
        std::sync::Arc::new(custos_store::ServiceKeystore::open(&ks_path, custos_store::DataKey::from_bytes([9; 32])).unwrap())
    };
    let (ws, agent) = (WorkspaceId::new(), AgentId::new());
    let never = BuilderLimits { segment_rows: 1 << 30, buffer_bytes: 1 << 40, flush_interval: std::time::Duration::from_secs(3600) };
    let rt = || tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let events: Vec<Event> = vec![
        line("error", Level::Enhanced, "kept 1"),
        line("info", Level::Enhanced, "refused by level"),
        line("warning", Level::Enhanced, "kept 2"),
        event("performance", Category::Performance, Level::Enhanced, "refused by schema", &[("gpu", Value::Int(1))]),
    ];
    let batch = frame(events);

    let first = rt();
    first.block_on(async {
        let cat = custos_catalog::open(&cat_uri).await.unwrap();
        cat.create_workspace(&custos_catalog::Workspace {
            id: ws,
            name: "replay".into(),
            region: "local".into(),
            retention_days: 7,
            created_at: 0,
            lockbox: true,
            policy: custos_catalog::WorkspacePolicy { max_level: Level::Enhanced, categories: None },
            plan: "paid".into(),
            lock: None,
        })
        .await
        .unwrap();
        let storage = custos_store::storage_from_uri(seg_dir.to_str().unwrap()).unwrap();
        let ingest = Ingest::start(&wal_dir, 1 << 20, Default::default(), never.clone(), cat.clone(), storage, keys()).await.unwrap();
        let ack = ingest.accept(ws, agent, batch.clone().into()).await.unwrap();
        assert_eq!((ack.accepted, ack.refused), (2, 2));
        // Acknowledged, but nothing committed yet.
        assert!(cat.list_refusals(ws).await.unwrap().is_empty());
        assert!(cat.stored_batches(ws, &[batch_id(&batch)]).await.unwrap().is_empty());
        // The owner tightens the policy after the acknowledgement.
        cat.set_workspace_policy(ws, &custos_catalog::WorkspacePolicy { max_level: Level::Security, categories: None }).await.unwrap();
    });
    drop(first); // the crash: the builder task dies with its buffers

    let second = rt();
    second.block_on(async {
        let cat = custos_catalog::open(&cat_uri).await.unwrap();
        let storage = custos_store::storage_from_uri(seg_dir.to_str().unwrap()).unwrap();
        // The old WAL thread releases its lock once it notices the crash.
        let mut tries = 0;
        let ingest = loop {
            match Ingest::start(&wal_dir, 1 << 20, Default::default(), never.clone(), cat.clone(), storage.clone(), keys()).await {
                Ok(i) => break i,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("ingest did not restart: {e}"),
            }
        };
        // The replay stored the two allowed lines, as decided on arrival.
        let resp = custos_server::query::run(cat.as_ref(), storage.clone(), keys(), ws, "SELECT message FROM logs ORDER BY message", 100, std::time::Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(resp.rows, vec![vec![json!("kept 1")], vec![json!("kept 2")]]);
        let mut got: Vec<(RefusalReason, Category, u64)> =
            cat.list_refusals(ws).await.unwrap().into_iter().map(|r| (r.reason, r.category, r.events)).collect();
        got.sort();
        assert_eq!(got, vec![(RefusalReason::Level, Category::Logs, 1), (RefusalReason::Schema, Category::Performance, 1)]);
        // A retry now is a duplicate: not stored or counted again (the
        // acknowledgement reports what the current policy would refuse).
        let ack = ingest.accept(ws, agent, batch.clone().into()).await.unwrap();
        assert!(ack.duplicate);
        assert_eq!((ack.accepted, ack.refused), (0, 4));
        ingest.flush().await.unwrap();
        let total: u64 = cat.list_refusals(ws).await.unwrap().iter().map(|r| r.events).sum();
        assert_eq!(total, 2);
    });
}

fn batch_id(frame: &[u8]) -> BatchId {
    wire::decode(frame, &Default::default()).unwrap().batch_id
}
