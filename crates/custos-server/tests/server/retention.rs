//! Retention end to end over HTTPS, on an injected clock: expired rows
//! hidden then their segments dropped whole (never read) and recorded;
//! reductions that wait for their grace period and can be cancelled;
//! `--now`; plan limits; locks that refuse reductions and stop all
//! deletion; rollups with k-anonymity written before raw rows expire.


use crate::common::Env;
use custos_server::Clock;
use custos_model::{Category, Event, Level, TableName, Value};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value as Json};

const DAY: i64 = 86_400 * 1_000_000;

fn ev(table: &str, time: i64, host: &str, message: &str) -> Event {
    let (category, level) = match table {
        "performance" => (Category::Performance, Level::Enhanced),
        _ => (Category::Logs, Level::Enhanced),
    };
    Event {
        table: TableName::new(table).unwrap(),
        time,
        level,
        category,
        host: host.into(),
        message: message.into(),
        attrs: Default::default(),
    }
}

fn perf(time: i64, host: &str, cpu: f64) -> Event {
    let mut e = ev("performance", time, host, "");
    e.attrs.insert("cpu_percent".into(), Value::Float(cpu));
    e.attrs.insert("interval_secs".into(), Value::Int(60));
    e
}

async fn sweep(env: &Env) -> Json {
    env.ok(&env.admin, Method::POST, "/v1/retention/sweep", None).await
}

async fn count(env: &Env, token: &str, ws: &str, table: &str) -> i64 {
    env.rows(token, ws, &format!("SELECT count(*) FROM {table}")).await[0][0].as_i64().unwrap()
}

async fn segments(env: &Env, ws: &str, table: &str) -> Vec<custos_catalog::Segment> {
    let s = env.server.state();
    s.catalog.list_segments(ws.parse().unwrap(), &TableName::new(table).unwrap(), None).await.unwrap()
}

async fn set(env: &Env, token: &str, ws: &str, body: Json) -> (StatusCode, Json) {
    env.call(Some(token), Method::PUT, &format!("/v1/workspaces/{ws}/retention"), Some(body)).await
}

#[tokio::test]
async fn expired_rows_are_hidden_then_their_segments_dropped_whole_without_being_read_and_recorded() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace_with("expiry", "owner").await;
    let agent = env.agent(&ws, "h1").await;
    let now = env.clock.now();
    // Three segments: wholly old, straddling the cutoff, fresh. A query
    // between ships flushes each batch into its own segment.
    agent.ship((0..3).map(|i| ev("logs", now - 40 * DAY + i, "h1", "old")).collect()).await;
    assert_eq!(count(&env, &owner, &ws, "logs").await, 0, "rows older than 31 days are hidden at once");
    agent.ship(vec![ev("logs", now - 35 * DAY, "h1", "straddle-old"), ev("logs", now - 3 * DAY, "h1", "straddle-new")]).await;
    count(&env, &owner, &ws, "logs").await;
    agent.ship(vec![ev("logs", now, "h1", "fresh"), ev("logs", now + 1, "h1", "fresh")]).await;
    let rows = env.rows(&owner, &ws, "SELECT message FROM logs ORDER BY time").await;
    assert_eq!(rows, vec![vec![json!("straddle-new")], vec![json!("fresh")], vec![json!("fresh")]]);
    assert_eq!(segments(&env, &ws, "logs").await.len(), 3);

    // A first pass rolls the old days up (it reads them for that), and
    // drops the wholly expired segment.
    let r = sweep(&env).await;
    assert_eq!((r["segments_deleted"].as_u64(), r["rows_deleted"].as_u64()), (Some(1), Some(3)), "{r}");
    assert_eq!(r["objects_removed"].as_u64(), Some(1));
    let left = segments(&env, &ws, "logs").await;
    assert_eq!(left.len(), 2, "the straddling and fresh segments stay");
    assert_eq!(count(&env, &owner, &ws, "logs").await, 3, "nothing visible was lost");

    // The straddling segment expires 29 days later; its days are rolled up
    // already. Damage its object first: the sweeper must drop it on the
    // catalog's time range alone.
    let straddle = left.iter().find(|s| s.min_time == now - 35 * DAY).unwrap().clone();
    let st = env.server.state();
    st.storage.put(&straddle.path, bytes::Bytes::from_static(b"not a segment")).await.unwrap();
    env.clock.advance(29 * DAY);
    let r = sweep(&env).await;
    assert_eq!((r["segments_deleted"].as_u64(), r["rows_deleted"].as_u64()), (Some(1), Some(2)), "{r}");
    assert!(matches!(st.storage.get(&straddle.path).await, Err(custos_store::StoreError::NotFound { .. })));
    assert_eq!(count(&env, &owner, &ws, "logs").await, 2);

    // Each deletion is recorded, with its object removal.
    let dels = env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}/deletions"), None).await;
    let dels = dels.as_array().unwrap();
    assert_eq!(dels.len(), 2);
    assert_eq!(dels[0]["segment_id"], json!(straddle.id.to_string()));
    for d in dels {
        assert_eq!(d["reason"], json!("retention"));
        assert_eq!(d["table"], json!("logs"));
        assert!(d["object_deleted_at"].is_string(), "{d}");
    }
    // Counted for Prometheus.
    let (_, m) = env.call(Some(&env.admin), Method::GET, "/metrics", None).await;
    let m = m.as_str().unwrap_or_default().to_string();
    assert!(m.contains("custos_retention_segments_deleted_total 2") && m.contains("custos_retention_rows_deleted_total 5"), "{m}");
    // ... and audited, with no data-loss incident (nothing was read).
    let audit = env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}/audit"), None).await;
    let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert_eq!(actions.iter().filter(|a| **a == "retention.sweep").count(), 2, "{actions:?}");
    assert!(!actions.contains(&"data_loss.incident"), "{actions:?}");
}

#[tokio::test]
async fn a_reduction_waits_for_the_grace_period_can_be_cancelled_and_now_applies_at_once() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace_with("grace", "owner").await;
    let agent = env.agent(&ws, "h1").await;
    let now = env.clock.now();
    agent.ship(vec![ev("logs", now - 10 * DAY, "h1", "ten days old")]).await;
    assert_eq!(count(&env, &owner, &ws, "logs").await, 1);

    // 31 -> 7 days: pending for 30 days, nothing changes meanwhile.
    let (s, c) = set(&env, &owner, &ws, json!({"days": 7})).await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!((c["state"].as_str(), c["from_days"].as_u64(), c["to_days"].as_u64()), (Some("pending"), Some(31), Some(7)));
    let info = env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}/retention"), None).await;
    assert_eq!(info["default_days"], json!(31));
    assert_eq!(info["pending"].as_array().unwrap().len(), 1);
    env.clock.advance(29 * DAY);
    let r = sweep(&env).await;
    assert_eq!(r["changes_applied"], json!(0));
    // It is cancellable until then.
    let c2 = env.ok(&owner, Method::POST, &format!("/v1/workspaces/{ws}/retention/cancel"), None).await;
    assert_eq!((c2["id"].clone(), c2["state"].as_str()), (c["id"].clone(), Some("cancelled")));
    let (s, e) = env.call(Some(&owner), Method::POST, &format!("/v1/workspaces/{ws}/retention/cancel"), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(e.to_string().contains("no pending retention change"), "{e}");
    env.clock.advance(2 * DAY);
    assert_eq!(sweep(&env).await["changes_applied"], json!(0));

    // Asked again, it takes effect when its grace period ends.
    let now = env.clock.now();
    agent.ship(vec![ev("logs", now - 10 * DAY, "h1", "ten days old")]).await;
    set(&env, &owner, &ws, json!({"days": 7})).await;
    env.clock.advance(30 * DAY);
    let r = sweep(&env).await;
    assert_eq!(r["changes_applied"], json!(1), "{r}");
    assert_eq!(env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}/retention"), None).await["default_days"], json!(7));
    assert_eq!(count(&env, &owner, &ws, "logs").await, 0);

    // A table override with --now applies at once; a lengthening too.
    let (_, c) = set(&env, &owner, &ws, json!({"table": "performance", "days": 2, "now": true})).await;
    assert_eq!(c["state"], json!("applied"));
    let (_, c) = set(&env, &owner, &ws, json!({"days": 400})).await;
    assert_eq!((c["state"].as_str(), c["from_days"].as_u64()), (Some("applied"), Some(7)));
    let info = env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}/retention"), None).await;
    let table = |n: &str| info["tables"].as_array().unwrap().iter().find(|t| t["table"] == json!(n)).cloned().unwrap();
    assert_eq!((table("performance")["days"].clone(), table("performance")["source"].clone()), (json!(2), json!("override")));
    assert_eq!((table("logs")["days"].clone(), table("logs")["source"].clone()), (json!(400), json!("default")));
    assert_eq!(table("logs_rollup")["source"], json!("rollup"), "{info}");
}

#[tokio::test]
async fn plan_limits_are_enforced_with_a_clear_error() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace_with("limits", "owner").await;
    let (s, e) = set(&env, &owner, &ws, json!({"days": 731})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(e.to_string().contains("retention of 731 days is outside plan \\\"paid\\\": it allows 1 to 730 days"), "{e}");
    let (s, _) = set(&env, &owner, &ws, json!({"days": 0})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, e) = set(&env, &owner, &ws, json!({"table": "no such table!", "days": 3})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    // A free workspace: 7 days, at most 7; its rollups may live 90.
    let (s, w) = env
        .call(Some(&env.admin), Method::POST, "/v1/workspaces", Some(json!({"name": "free-one", "region": "local", "plan": "free"})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{w}");
    assert_eq!((w["plan"].as_str(), w["retention_days"].as_u64()), (Some("free"), Some(7)));
    let free = w["id"].as_str().unwrap();
    let token = env.principal("free-owner").await;
    env.grant(free, "free-owner", "owner").await;
    let (s, _) = set(&env, &token, free, json!({"days": 8})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, c) = set(&env, &token, free, json!({"table": "logs_rollup", "days": 90})).await;
    assert_eq!(s, StatusCode::OK, "{c}");
    let (s, e) = env
        .call(Some(&env.admin), Method::POST, "/v1/workspaces", Some(json!({"name": "gold", "region": "local", "plan": "gold"})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(e.to_string().contains("plan \\\"gold\\\" is not offered here (plans: free, paid)"), "{e}");
}

#[tokio::test]
async fn a_locked_workspace_refuses_reductions_naming_the_lock_and_nothing_of_it_is_deleted() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace_with("hold", "owner").await;
    let agent = env.agent(&ws, "h1").await;
    let now = env.clock.now();
    agent.ship(vec![ev("logs", now - 20 * DAY, "h1", "evidence")]).await;
    assert_eq!(count(&env, &owner, &ws, "logs").await, 1);
    // A reduction asked before the lock...
    set(&env, &owner, &ws, json!({"days": 10})).await;
    let w = env.ok(&owner, Method::POST, &format!("/v1/workspaces/{ws}/lock"), Some(json!({"reason": "litigation hold #42"}))).await;
    assert_eq!(w["lock"]["reason"], json!("litigation hold #42"));
    // ... is held back, and new ones are refused, naming the lock.
    for body in [json!({"days": 5}), json!({"days": 5, "now": true}), json!({"table": "logs", "days": 1, "now": true})] {
        let (s, e) = set(&env, &owner, &ws, body).await;
        assert_eq!(s, StatusCode::CONFLICT, "{e}");
        assert!(e.to_string().contains("is locked (litigation hold #42)"), "{e}");
    }
    let (s, _) = set(&env, &owner, &ws, json!({"days": 60})).await;
    assert_eq!(s, StatusCode::OK, "lengthening is allowed while locked");
    // Deleting a table is refused too.
    let (s, e) = env.call(Some(&owner), Method::DELETE, &format!("/v1/workspaces/{ws}/tables/logs"), Some(json!({"confirm": "logs"}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(e.to_string().contains("is locked (litigation hold #42)"), "{e}");
    // Far past every period: the sweeper leaves the workspace alone and
    // its rows stay visible.
    env.clock.advance(100 * DAY);
    let r = sweep(&env).await;
    assert!(r["workspaces_locked"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(count(&env, &owner, &ws, "logs").await, 1, "a legal hold keeps everything, visible");
    let info = env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}/retention"), None).await;
    assert_eq!(info["lock"]["reason"], json!("litigation hold #42"));
    // Unlocked: the next pass drops what expired.
    env.ok(&owner, Method::POST, &format!("/v1/workspaces/{ws}/unlock"), None).await;
    let r = sweep(&env).await;
    assert_eq!(r["segments_deleted"], json!(1), "{r}");
    assert_eq!(count(&env, &owner, &ws, "logs").await, 0);
    // Unlocked, a table can be deleted (with its name to confirm).
    agent.ship(vec![ev("logs", env.clock.now(), "h1", "new")]).await;
    let (s, e) = env.call(Some(&owner), Method::DELETE, &format!("/v1/workspaces/{ws}/tables/logs"), Some(json!({"confirm": "nope"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    let r = env.ok(&owner, Method::DELETE, &format!("/v1/workspaces/{ws}/tables/logs"), Some(json!({"confirm": "logs"}))).await;
    assert_eq!((r["rows_deleted"].as_u64(), r["segments_deleted"].as_u64()), (Some(1), Some(1)), "{r}");
    assert_eq!(count(&env, &owner, &ws, "logs").await, 0);
    let dels = env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}/deletions"), None).await;
    assert_eq!(dels[0]["reason"], json!("table"));
    // Lock reasons are checked.
    let (s, _) = env.call(Some(&owner), Method::POST, &format!("/v1/workspaces/{ws}/lock"), Some(json!({"reason": "  "}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Only owners (policy managers) lock and unlock.
    let reader = env.principal("hold-reader").await;
    env.grant(&ws, "hold-reader", "reader").await;
    for path in ["lock", "unlock"] {
        let (s, _) = env.call(Some(&reader), Method::POST, &format!("/v1/workspaces/{ws}/{path}"), Some(json!({"reason": "x"}))).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}");
    }
}

#[tokio::test]
async fn rollups_keep_de_identified_daily_aggregates_of_groups_of_at_least_k_hosts_after_raw_rows_expire() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace_with("rollups", "owner").await;
    let now = env.clock.now();
    let day = (now - 40 * DAY).div_euclid(DAY) * DAY;
    // Day D: six hosts at level 2 (cpu 10..60), two hosts at level 3.
    for (i, host) in ["web-1", "web-2", "web-3", "web-4", "web-5", "web-6"].iter().enumerate() {
        let a = env.agent(&ws, host).await;
        a.ship(vec![perf(day + 3600 * 1_000_000 * i as i64, host, 10.0 * (i + 1) as f64), perf(day + 7_200_000_000, host, 35.0)]).await;
    }
    for host in ["db-1", "db-2"] {
        let a = env.agent(&ws, host).await;
        let mut e = perf(day + 1, host, 99.0);
        e.level = Level::Full;
        a.ship(vec![e]).await;
    }
    count(&env, &owner, &ws, "performance").await;

    let r = sweep(&env).await;
    assert_eq!(r["rollup_rows"], json!(1), "one group has at least 5 hosts: {r}");
    assert!(r["segments_deleted"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(count(&env, &owner, &ws, "performance").await, 0);
    let rows = env
        .rows(&owner, &ws, "SELECT time, level, events, hosts, cpu_percent_avg, cpu_percent_p50, host, message FROM performance_rollup")
        .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r0 = &rows[0];
    assert_eq!((r0[1].clone(), r0[2].clone(), r0[3].clone()), (json!(2), json!(12), json!(6)));
    let avg = r0[4].as_f64().unwrap();
    assert!((avg - 35.0).abs() < 1e-9, "avg {avg}");
    let p50 = r0[5].as_f64().unwrap();
    assert!((10.0..=60.0).contains(&p50), "p50 {p50}");
    assert_eq!((r0[6].clone(), r0[7].clone()), (json!(""), json!("")), "no host in a rollup");
    let all = env.rows(&owner, &ws, "SELECT * FROM performance_rollup").await;
    let text = serde_json::to_string(&all).unwrap();
    for host in ["web-", "db-"] {
        assert!(!text.contains(host), "a host name leaked into the rollup: {text}");
    }
    // Another pass does not roll the same day up twice.
    let r = sweep(&env).await;
    assert_eq!(r["rollup_rows"], json!(0), "{r}");
    assert_eq!(count(&env, &owner, &ws, "performance_rollup").await, 1);
    // The rollup outlives raw retention (730 days on the paid plan).
    env.clock.advance(400 * DAY);
    sweep(&env).await;
    assert_eq!(count(&env, &owner, &ws, "performance_rollup").await, 1);
    env.clock.advance(400 * DAY);
    sweep(&env).await;
    assert_eq!(count(&env, &owner, &ws, "performance_rollup").await, 0);
}
