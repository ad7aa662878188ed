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

/// The performance rollup of the workspace, per day: (time, events, hosts,
/// cpu_percent_avg).
async fn rollup_days(env: &Env, owner: &str, ws: &str) -> Vec<(i64, i64, i64, f64)> {
    env.rows(owner, ws, "SELECT CAST(time AS BIGINT), events, hosts, cpu_percent_avg FROM performance_rollup ORDER BY 1, 2")
        .await
        .iter()
        .map(|r| (r[0].as_i64().unwrap(), r[1].as_i64().unwrap(), r[2].as_i64().unwrap(), r[3].as_f64().unwrap()))
        .collect()
}

#[tokio::test]
async fn late_rows_for_a_rolled_up_day_roll_it_up_again_replacing_only_its_rollup_before_they_expire() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace_with("late-rollup", "owner").await;
    let info = env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}/retention"), None).await;
    assert_eq!(info["default_days"], json!(31));
    let now = env.clock.now();
    let d = (now - 3 * DAY).div_euclid(DAY) * DAY;
    let e = d - DAY;
    const HOUR: i64 = 3600 * 1_000_000;
    for i in 1..=5 {
        let host = format!("web-{i}");
        let a = env.agent(&ws, &host).await;
        a.ship(vec![perf(e + HOUR, &host, 50.0), perf(d + i * HOUR, &host, 10.0)]).await;
    }
    count(&env, &owner, &ws, "performance").await;
    let r = sweep(&env).await;
    assert_eq!(r["rollup_rows"], json!(2), "{r}");
    assert_eq!(rollup_days(&env, &owner, &ws).await, vec![(e, 5, 5, 50.0), (d, 5, 5, 10.0)]);
    let e_rollup: Vec<_> = segments(&env, &ws, "performance_rollup").await.into_iter().filter(|s| s.min_time == e).collect();
    assert_eq!(e_rollup.len(), 1, "one rollup segment per day");

    // A sixth host's row for day D arrives two days late.
    let late = env.agent(&ws, "web-6").await;
    late.ship(vec![perf(d + 5 * HOUR, "web-6", 70.0)]).await;
    count(&env, &owner, &ws, "performance").await;
    let r = sweep(&env).await;
    assert_eq!(r["rollup_rows"], json!(1), "day D rolled up again: {r}");
    assert_eq!(rollup_days(&env, &owner, &ws).await, vec![(e, 5, 5, 50.0), (d, 6, 6, 20.0)], "replaced, not added");
    let e_after: Vec<_> = segments(&env, &ws, "performance_rollup").await.into_iter().filter(|s| s.min_time == e).collect();
    assert_eq!(e_after, e_rollup, "the other day's rollup is untouched");
    let dels = env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}/deletions"), None).await;
    let dels = dels.as_array().unwrap();
    assert_eq!(dels.len(), 1, "{dels:?}");
    assert_eq!((dels[0]["reason"].as_str(), dels[0]["table"].as_str()), (Some("rollup"), Some("performance_rollup")));
    assert!(dels[0]["object_deleted_at"].is_string(), "the replaced object is removed: {}", dels[0]);

    // Nothing more to do on the next pass; after the raw rows expire the
    // day's aggregate counts the late row.
    assert_eq!(sweep(&env).await["rollup_rows"], json!(0));
    env.clock.advance(40 * DAY);
    let r = sweep(&env).await;
    assert_eq!(r["rows_deleted"], json!(11), "{r}");
    assert_eq!(count(&env, &owner, &ws, "performance").await, 0);
    assert_eq!(rollup_days(&env, &owner, &ws).await, vec![(e, 5, 5, 50.0), (d, 6, 6, 20.0)]);
}

#[tokio::test]
async fn late_rows_for_a_day_whose_rows_began_to_expire_are_rolled_up_on_their_own_beside_it() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace_with("late-partial", "owner").await;
    let now = env.clock.now();
    let d = (now - 3 * DAY).div_euclid(DAY) * DAY;
    const HOUR: i64 = 3600 * 1_000_000;
    for i in 1..=5 {
        let host = format!("early-{i}");
        env.agent(&ws, &host).await.ship(vec![perf(d + HOUR, &host, 10.0)]).await;
        count(&env, &owner, &ws, "performance").await;
    }
    assert_eq!(sweep(&env).await["rollup_rows"], json!(1));
    // 31 days on, day D's first hours have expired and their segments
    // are gone: D can no longer be rolled up again from its raw rows.
    env.clock.advance(d + 2 * HOUR + 31 * DAY - now);
    let r = sweep(&env).await;
    assert_eq!(r["segments_deleted"], json!(5), "{r}");
    // Late rows for D's last hours, from five other hosts, and from four
    // more (too few to be aggregated on their own).
    for i in 1..=5 {
        let host = format!("late-{i}");
        env.agent(&ws, &host).await.ship(vec![perf(d + 20 * HOUR, &host, 40.0)]).await;
    }
    count(&env, &owner, &ws, "performance").await;
    let r = sweep(&env).await;
    assert_eq!(r["rollup_rows"], json!(1), "{r}");
    assert_eq!(rollup_days(&env, &owner, &ws).await, vec![(d, 5, 5, 10.0), (d, 5, 5, 40.0)], "added beside the day's rollup");
    for i in 1..=4 {
        let host = format!("few-{i}");
        env.agent(&ws, &host).await.ship(vec![perf(d + 21 * HOUR, &host, 90.0)]).await;
    }
    count(&env, &owner, &ws, "performance").await;
    assert_eq!(sweep(&env).await["rollup_rows"], json!(0), "four hosts are fewer than k");
    // Once the late rows expire too, the day keeps both rollup rows.
    env.clock.advance(DAY);
    sweep(&env).await;
    assert_eq!(count(&env, &owner, &ws, "performance").await, 0);
    let total: i64 = rollup_days(&env, &owner, &ws).await.iter().map(|r| r.1).sum();
    assert_eq!(total, 10);
}

#[tokio::test]
async fn a_day_rolled_up_again_inside_an_older_multi_day_rollup_segment_rewrites_it_keeping_the_other_days() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace_with("late-legacy", "owner").await;
    let now = env.clock.now();
    let d = (now - 3 * DAY).div_euclid(DAY) * DAY;
    let e = d - DAY;
    const HOUR: i64 = 3600 * 1_000_000;
    for i in 1..=5 {
        let host = format!("web-{i}");
        env.agent(&ws, &host).await.ship(vec![perf(d + i * HOUR, &host, 10.0)]).await;
    }
    count(&env, &owner, &ws, "performance").await;
    // Days E and D rolled up into one segment, as before rollups were
    // written per day (E's row is made up: its raw rows are long gone).
    let st = env.server.state();
    let wsid: custos_model::WorkspaceId = ws.parse().unwrap();
    let target = TableName::new("performance_rollup").unwrap();
    let row = |day: i64, events: i64, avg: f64| {
        let mut r = ev("performance_rollup", day, "", "");
        r.level = Level::Enhanced;
        r.attrs.insert("events".into(), Value::Int(events));
        r.attrs.insert("hosts".into(), Value::Int(events));
        r.attrs.insert("cpu_percent_avg".into(), Value::Float(avg));
        r
    };
    let mut b = custos_store::SegmentBuilder::new(wsid, target.clone());
    let nil: custos_model::AgentId = "00000000-0000-0000-0000-000000000000".parse().unwrap();
    b.push(nil, &row(e, 7, 33.0));
    b.push(nil, &row(d, 5, 10.0));
    let id = custos_model::SegmentId::new();
    let enc = b.finish_sealed(id, st.keys.as_ref()).unwrap();
    let entry = custos_server::ingest::catalog_entry(wsid, target.clone(), id, &enc, now);
    st.storage.put(&entry.path, enc.bytes).await.unwrap();
    let commit = custos_catalog::RollupCommit { segments: vec![entry.clone()], until: Some(d + DAY), ..Default::default() };
    st.catalog.commit_rollup(wsid, &TableName::new("performance").unwrap(), &commit, now).await.unwrap();
    assert_eq!(rollup_days(&env, &owner, &ws).await, vec![(e, 7, 7, 33.0), (d, 5, 5, 10.0)]);

    env.agent(&ws, "web-6").await.ship(vec![perf(d + 5 * HOUR, "web-6", 70.0)]).await;
    count(&env, &owner, &ws, "performance").await;
    let r = sweep(&env).await;
    assert_eq!(r["rollup_rows"], json!(1), "{r}");
    assert_eq!(rollup_days(&env, &owner, &ws).await, vec![(e, 7, 7, 33.0), (d, 6, 6, 20.0)], "E kept as it was, D replaced");
    let segs = segments(&env, &ws, "performance_rollup").await;
    assert_eq!(segs.len(), 2, "E's rows rewritten on their own, D's new rollup: {segs:?}");
    assert!(!segs.iter().any(|s| s.id == entry.id));
    assert!(matches!(st.storage.get(&entry.path).await, Err(custos_store::StoreError::NotFound { .. })), "the old object is removed");
}

#[tokio::test]
async fn concurrent_sweeps_roll_each_day_up_once_and_leave_no_stray_rollup_objects() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace_with("two-sweeps", "owner").await;
    let now = env.clock.now();
    let d = (now - 3 * DAY).div_euclid(DAY) * DAY;
    for i in 1..=5 {
        let host = format!("web-{i}");
        env.agent(&ws, &host).await.ship(vec![perf(d + i * 1_000_000, &host, 10.0)]).await;
    }
    count(&env, &owner, &ws, "performance").await;
    // The background sweeper and `custos retention sweep` at once.
    let st = env.server.state().clone();
    let (a, b) = tokio::join!(custos_server::retention::sweep(&st), custos_server::retention::sweep(&st));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.rollup_rows + b.rollup_rows, 1, "{a:?} {b:?}");
    assert_eq!(rollup_days(&env, &owner, &ws).await, vec![(d, 5, 5, 10.0)]);
    let audit = env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}/audit"), None).await;
    let actions: Vec<&str> = audit.as_array().unwrap().iter().filter_map(|r| r["action"].as_str()).collect();
    assert!(!actions.contains(&"rollup.failed"), "{actions:?}");
    let wsid: custos_model::WorkspaceId = ws.parse().unwrap();
    let target = TableName::new("performance_rollup").unwrap();
    let mut stored: Vec<String> = st.storage.list(&custos_store::table_prefix(wsid, &target)).await.unwrap().into_iter().map(|o| o.path).collect();
    let mut registered: Vec<String> = segments(&env, &ws, "performance_rollup").await.into_iter().map(|s| s.path).collect();
    stored.sort();
    registered.sort();
    assert_eq!(stored, registered, "every rollup object is registered");
}
