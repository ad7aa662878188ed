//! The redaction backstop, end to end over HTTPS with a real enrolled agent
//! certificate (no agent-side redaction involved): what the workspace's
//! policy says must not be stored is removed before the ingest log, counted
//! per table and entity for the workspace's owners (and auditors and
//! service admins) only, `drop_event` drops, a bad policy is refused with
//! the engine's message, text an agent already redacted passes unchanged,
//! and a replay after a crash stores and counts what was decided on arrival.

use custos_model::{AgentId, Category, Event, Level, TableName, Value, WorkspaceId};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value as Json};
use crate::common::{frame, Env};

const EMAIL: &str = "jane.doe@example.com";
const CARD: &str = "4111 1111 1111 1111";
const AWS_KEY: &str = "AKIAQWERTYUIOPASDFGH";
const PASSWORD: &str = "Hunter2SuperSecret";

impl Env {
    /// A workspace and its owner; (workspace id, owner token).
    async fn workspace(&self, name: &str) -> (String, String) {
        self.workspace_with(name, "owner").await
    }

    /// (table, kind, entity or "", count), sorted.
    async fn redactions(&self, token: &str, ws: &str) -> Vec<(String, String, String, u64)> {
        let v = self.ok(token, Method::GET, &format!("/v1/workspaces/{ws}/redactions"), None).await;
        let mut out: Vec<_> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["table"].as_str().unwrap().to_string(),
                    r["kind"].as_str().unwrap().to_string(),
                    r["entity"].as_str().unwrap_or("").to_string(),
                    r["count"].as_u64().unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }

    async fn put_policy(&self, token: &str, ws: &str, policy: Option<&str>) -> (StatusCode, Json) {
        self.call(Some(token), Method::PUT, &format!("/v1/workspaces/{ws}/redaction-policy"), Some(json!({"policy": policy}))).await
    }

    async fn metrics(&self) -> String {
        let resp = self.http.get(format!("{}/metrics", self.url)).bearer_auth(&self.admin).send().await.unwrap();
        assert!(resp.status().is_success());
        resp.text().await.unwrap()
    }
}

fn line(table: &str, message: &str) -> Event {
    Event {
        table: TableName::new(table).unwrap(),
        time: custos_model::now_micros(),
        level: Level::Enhanced,
        category: Category::Logs,
        host: "h-0123456789abcdef".into(),
        message: message.into(),
        attrs: [("severity".to_string(), Value::from("error")), ("source".to_string(), Value::from("file"))].into(),
    }
}

/// The lines every test ships: an e-mail, a card number, two secrets, and
/// one line without findings.
fn leaky_lines() -> Vec<Event> {
    vec![
        line("logs", &format!("sent invoice to {EMAIL}")),
        line("logs", &format!("payment declined for card {CARD}")),
        line("app_logs", &format!("boto: using key {AWS_KEY} password={PASSWORD}")),
        line("logs", "disk /dev/sda1 is 91% full"),
    ]
}

fn assert_no_raw_values(stored: &str) {
    for raw in [EMAIL, CARD, "4111111111111111", AWS_KEY, PASSWORD] {
        assert!(!stored.contains(raw), "{raw:?} was stored: {stored}");
    }
}

#[tokio::test]
async fn the_default_policy_removes_findings_before_storage_and_counts_them_for_the_owner_only() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace("backstop").await;
    let (_ws_b, owner_b) = env.workspace("other").await;
    let auditor = env.principal("auditor").await;
    env.grant(&ws, "auditor", "auditor").await;
    let reader = env.principal("reader").await;
    env.grant(&ws, "reader", "reader").await;
    let agent = env.agent(&ws, "web-1").await;

    let ack = agent.ship(leaky_lines()).await;
    assert_eq!((ack.accepted, ack.refused), (4, 0));
    // Stored: every line, none of the raw values; tags where they were.
    let rows = env.rows(&owner, &ws, "SELECT message FROM logs UNION ALL SELECT message FROM app_logs").await;
    assert_eq!(rows.len(), 4);
    let stored = serde_json::to_string(&rows).unwrap();
    assert_no_raw_values(&stored);
    assert!(stored.contains("<CREDIT_CARD>") && stored.contains("<SECRET>"), "{stored}");
    assert!(stored.contains("disk /dev/sda1 is 91% full"), "{stored}");
    // The e-mail address is a pseudonym of the workspace's key: stable.
    let email_row = env.rows(&owner, &ws, "SELECT message FROM logs WHERE message LIKE 'sent invoice%'").await;
    let pseudonym = email_row[0][0].as_str().unwrap().trim_start_matches("sent invoice to ").to_string();
    assert!(pseudonym.ends_with(".invalid") && pseudonym.contains('@'), "{pseudonym}");
    agent.ship(vec![line("logs", &format!("second invoice to {EMAIL}"))]).await;
    let again = env.rows(&owner, &ws, "SELECT message FROM logs WHERE message LIKE 'second invoice%'").await;
    assert_eq!(again[0][0], json!(format!("second invoice to {pseudonym}")));

    // Counted per table and entity, for owners, auditors and service admins.
    let want = vec![
        ("app_logs".to_string(), "redacted".to_string(), "SECRET".to_string(), 2),
        ("logs".into(), "redacted".into(), "CREDIT_CARD".into(), 1),
        ("logs".into(), "redacted".into(), "EMAIL_ADDRESS".into(), 2),
    ];
    assert_eq!(env.redactions(&owner, &ws).await, want);
    assert_eq!(env.redactions(&auditor, &ws).await, want);
    assert_eq!(env.redactions(&env.admin, &ws).await, want);
    // Not for a reader (403), not for another workspace's owner (404, as if absent).
    for (token, status) in [(&reader, StatusCode::FORBIDDEN), (&owner_b, StatusCode::NOT_FOUND)] {
        for path in [format!("/v1/workspaces/{ws}/redactions"), format!("/v1/workspaces/{ws}/redaction-policy")] {
            let (s, body) = env.call(Some(token), Method::GET, &path, None).await;
            assert_eq!(s, status, "{path}: {body}");
            assert!(!body.to_string().contains("EMAIL_ADDRESS"), "{body}");
        }
    }
    // On /metrics, by entity.
    let m = env.metrics().await;
    assert!(m.contains("custos_redactions_total{entity=\"EMAIL_ADDRESS\"} 2\n"), "{m}");
    assert!(m.contains("custos_redactions_total{entity=\"CREDIT_CARD\"} 1\n"), "{m}");
    assert!(m.contains("custos_redactions_total{entity=\"SECRET\"} 2\n"), "{m}");
    assert!(m.contains("custos_redaction_events_dropped_total 0\n"), "{m}");
    // The policy in force is the default one.
    let p = env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}/redaction-policy"), None).await;
    assert_eq!((p["source"].as_str(), p["revision"].as_u64(), &p["policy"]), (Some("default"), Some(0), &Json::Null));
}

#[tokio::test]
async fn text_an_agent_already_redacted_passes_unchanged_and_uncounted() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace("pre-redacted").await;
    let agent = env.agent(&ws, "web-1").await;
    let lines = [
        "payment declined for card <CREDIT_CARD>",
        "login by u5f1c0a9e2b from 243.18.200.7",
        "mail to u0c1d2e3f4a@h1a2b3c4d.d5e6f7a8b.invalid bounced",
        "token <SECRET> rejected",
    ];
    agent.ship(lines.iter().map(|m| line("logs", m)).collect()).await;
    let rows = env.rows(&owner, &ws, "SELECT message FROM logs ORDER BY message").await;
    let mut want: Vec<Vec<Json>> = lines.iter().map(|m| vec![json!(m)]).collect();
    want.sort_by_key(|r| r[0].as_str().unwrap().to_string());
    assert_eq!(rows, want);
    assert_eq!(env.redactions(&owner, &ws).await, vec![]);
}

#[tokio::test]
async fn owners_set_a_policy_that_drops_card_events_and_a_bad_policy_is_refused_with_the_engines_message() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace("drop-cards").await;
    let (_ws_b, owner_b) = env.workspace("not-mine").await;
    let reader = env.principal("reader").await;
    env.grant(&ws, "reader", "reader").await;
    let agent = env.agent(&ws, "web-1").await;
    let policy = "version = 1\n\n[operators]\nCREDIT_CARD = \"drop_event\"\n";

    // Only the owner sets it: not a reader, not a service admin, not a stranger.
    for (token, status) in [(&reader, StatusCode::FORBIDDEN), (&env.admin, StatusCode::FORBIDDEN), (&owner_b, StatusCode::NOT_FOUND)] {
        let (s, body) = env.put_policy(token, &ws, Some(policy)).await;
        assert_eq!(s, status, "{body}");
    }
    let (s, p) = env.put_policy(&owner, &ws, Some(policy)).await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!((p["source"].as_str(), p["revision"].as_u64(), p["policy"].as_str()), (Some("custom"), Some(1), Some(policy)));

    let ack = agent.ship(leaky_lines()).await;
    assert_eq!((ack.accepted, ack.refused), (3, 1), "the card line is dropped, and says so");
    let rows = env.rows(&owner, &ws, "SELECT message FROM logs UNION ALL SELECT message FROM app_logs").await;
    assert_eq!(rows.len(), 3);
    let stored = serde_json::to_string(&rows).unwrap();
    assert_no_raw_values(&stored);
    assert!(!stored.contains("payment declined"), "the card event was stored: {stored}");
    let counts = env.redactions(&owner, &ws).await;
    assert!(counts.contains(&("logs".into(), "event_dropped".into(), String::new(), 1)), "{counts:?}");
    assert!(counts.contains(&("logs".into(), "redacted".into(), "CREDIT_CARD".into(), 1)), "{counts:?}");
    assert!(env.metrics().await.contains("custos_redaction_events_dropped_total 1\n"));

    // A bad policy: 400 with the engine's message; nothing changes.
    for (bad, says) in [
        ("[operators]\nCREDIT_CARD = \"shred\"\n", "unknown operator `shred` for CREDIT_CARD"),
        ("[operators]\nSHOE_SIZE = \"tag\"\n", "unknown entity `SHOE_SIZE`"),
        ("version = 7\n", "version 7 is not supported"),
        ("[detect]\ngitleaks_rules = \"/etc/shadow\"\n", "reads no files"),
        ("not toml at all [", "redaction policy:"),
    ] {
        let (s, body) = env.put_policy(&owner, &ws, Some(bad)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["error"].as_str().unwrap().contains(says), "{bad}: {body}");
    }
    let p = env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}/redaction-policy"), None).await;
    assert_eq!((p["revision"].as_u64(), p["policy"].as_str()), (Some(1), Some(policy)));

    // The change is audited with the policy's HMAC, never its text.
    let audit = env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}/audit"), None).await;
    let rec = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "workspace.redaction_policy" && r["outcome"] == "ok")
        .unwrap_or_else(|| panic!("no audit record of the change: {audit}"));
    assert_eq!(rec["details"]["revision"], "1");
    assert!(!rec.to_string().contains("drop_event"), "{rec}");

    // Back to the default: the card line is stored again, as a tag.
    let (s, p) = env.put_policy(&owner, &ws, None).await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!((p["source"].as_str(), p["revision"].as_u64()), (Some("default"), Some(2)));
    let ack = agent.ship(vec![line("logs", &format!("card {CARD} again"))]).await;
    assert_eq!((ack.accepted, ack.refused), (1, 0));
    let rows = env.rows(&owner, &ws, "SELECT message FROM logs WHERE message LIKE 'card%'").await;
    assert_eq!(rows, vec![vec![json!("card <CREDIT_CARD> again")]]);
}

#[tokio::test]
async fn a_stored_policy_this_server_cannot_use_refuses_batches_instead_of_storing_them() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace("fail-closed").await;
    let agent = env.agent(&ws, "web-1").await;
    let id: WorkspaceId = ws.parse().unwrap();
    // What an older build might have accepted, written behind the API's back.
    let catalog = env.server.state().catalog.clone();
    catalog.set_redaction_policy(id, Some("[operators]\nCREDIT_CARD = \"vaporize\"\n"), custos_model::PrincipalId::new(), 1).await.unwrap();
    let (status, body) = agent.post(frame(leaky_lines())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("redaction policy") && body.contains("nothing of this batch was stored"), "{body}");
    assert_eq!(env.rows(&owner, &ws, "SELECT count(*) FROM logs").await, vec![vec![json!(0)]]);
    // A valid policy from the owner lifts it.
    let (s, _) = env.put_policy(&owner, &ws, Some("")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(agent.ship(leaky_lines()).await.accepted, 4);
}

/// Starts an ingest pipeline, sends one batch, and "crashes" (drops the
/// runtime, so the builder never commits); then starts again on the same
/// directories. The replay stores and counts what was decided on arrival,
/// although the policy changed in between, and a retry counts nothing twice.
#[test]
fn a_replayed_batch_is_stored_and_counted_as_redacted_on_arrival() {
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
    let batch = frame(leaky_lines());

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
            policy: Default::default(),
            plan: "paid".into(),
            lock: None,
        })
        .await
        .unwrap();
        let storage = custos_store::storage_from_uri(seg_dir.to_str().unwrap()).unwrap();
        let ingest = Ingest::start(&wal_dir, 1 << 20, Default::default(), never.clone(), cat.clone(), storage, keys()).await.unwrap();
        let ack = ingest.accept(ws, agent, batch.clone().into()).await.unwrap();
        assert_eq!((ack.accepted, ack.refused), (4, 0));
        assert!(cat.list_redactions(ws).await.unwrap().is_empty(), "counted before the commit");
        // The owner then drops card events; the acknowledged batch is not re-decided.
        cat.set_redaction_policy(ws, Some("[operators]\nCREDIT_CARD = \"drop_event\"\n"), custos_model::PrincipalId::new(), 2).await.unwrap();
    });
    drop(first); // the crash: the builder dies with its buffers

    let second = rt();
    second.block_on(async {
        let cat = custos_catalog::open(&cat_uri).await.unwrap();
        let storage = custos_store::storage_from_uri(seg_dir.to_str().unwrap()).unwrap();
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
        let resp = custos_server::query::run(
            cat.as_ref(),
            storage.clone(),
            keys(),
            ws,
            "SELECT message FROM logs UNION ALL SELECT message FROM app_logs",
            100,
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap();
        assert_eq!(resp.rows.len(), 4, "the card line was decided (kept, tagged) on arrival");
        assert_no_raw_values(&serde_json::to_string(&resp.rows).unwrap());
        let counts = || async {
            let mut c: Vec<(String, String, u64)> = cat
                .list_redactions(ws)
                .await
                .unwrap()
                .into_iter()
                .map(|r| (r.table.to_string(), r.entity, r.count))
                .collect();
            c.sort();
            c
        };
        let want = vec![
            ("app_logs".to_string(), "SECRET".to_string(), 2),
            ("logs".into(), "CREDIT_CARD".into(), 1),
            ("logs".into(), "EMAIL_ADDRESS".into(), 1),
        ];
        assert_eq!(counts().await, want);
        // A retry is a duplicate: nothing stored or counted again.
        let ack = ingest.accept(ws, agent, batch.clone().into()).await.unwrap();
        assert!(ack.duplicate);
        ingest.flush().await.unwrap();
        assert_eq!(counts().await, want);
    });
}
