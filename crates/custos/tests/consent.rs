//! Consent at run time, end to end: the real binary as server, agent and
//! CLI. A level change or a disable through the control socket purges the
//! agent's queue; the managed policy wins over local changes; the
//! transparency ledger says exactly what the server stored; the server
//! refuses events above a workspace's maximum level.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A background agent (`custos agent run`), killed on drop.
struct AgentProc {
    child: Child,
    state: PathBuf,
    config: PathBuf,
}

impl AgentProc {
    fn start(state: &Path, config: &Path) -> AgentProc {
        let log = std::fs::File::create(state.with_extension("agent.log")).unwrap();
        let child = Command::new(bin())
            .args(["agent", "run", "--output", "json", "--state-dir"])
            .arg(state)
            .arg("--config")
            .arg(config)
            .env("CUSTOS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let a = AgentProc { child, state: state.to_path_buf(), config: config.to_path_buf() };
        // Wait for the control socket to answer.
        let started = Instant::now();
        while !a.status()["agent_running"].as_bool().unwrap_or(false) {
            assert!(started.elapsed() < Duration::from_secs(30), "agent did not start; see {}", state.with_extension("agent.log").display());
            std::thread::sleep(Duration::from_millis(100));
        }
        a
    }

    /// `custos telemetry ARGS --state-dir S --config C --output json`.
    fn telemetry(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin())
            .arg("telemetry")
            .args(args)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--config")
            .arg(&self.config)
            .args(["--output", "json"])
            .output()
            .unwrap()
    }

    fn status(&self) -> Value {
        let out = self.telemetry(&["status"]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn wait_for(&self, what: &str, mut cond: impl FnMut(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let s = self.status();
            if cond(&s) {
                return s;
            }
            if started.elapsed() >= Duration::from_secs(60) {
                // The agent's own account of what it did, for a failure in CI.
                let log = std::fs::read_to_string(self.state.with_extension("agent.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
                panic!("timed out waiting for {what}; last status {s}\nagent log (last 40 lines):\n{}", tail.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_secs(what, 90, cond)
}

fn runtime(s: &Value, key: &str) -> u64 {
    s["runtime"][key].as_u64().unwrap_or(0)
}

fn write_lines(path: &Path, severity: &str, n: usize, tag: &str) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    for i in 0..n {
        writeln!(f, "2026-11-29 10:00:00 {severity} [{tag}] line {i} of the {severity} lines").unwrap();
    }
}

fn query(server: &ServerProc, ws: &str, sql: &str) -> Value {
    server.cli_json(&["query", "--workspace", ws, sql])
}

#[test]
fn lowering_the_level_and_disabling_at_run_time_purge_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = ServerProc::start_on(&data, &listen, &[]);
    let (ws, key) = server.create_workspace("purge");
    // policy_reload_secs belongs to the [telemetry] section file_agent starts with.
    let (state, logs, cfg) = file_agent(&server, &key, tmp.path(), "policy_reload_secs = 1\n[agent]\nflush_interval_ms = 100\n", "");

    // The server goes away; the agent queues what it reads.
    server.kill9();
    write_lines(&logs.join("app.log"), "ERROR", 40, "first");
    write_lines(&logs.join("app.log"), "INFO", 60, "first");
    let agent = AgentProc::start(&state, &cfg);
    agent.wait_for("100 queued log lines", |s| runtime(s, "queued_events") >= 100);

    // Lowering the level deletes the queued info lines (level 3) at once.
    let out = agent.telemetry(&["level", "enhanced"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["change"]["applied"], "now", "{v}");
    assert_eq!(v["level"]["origin"], "local", "{v}");
    let s = agent.wait_for("the info lines purged", |s| s["runtime"]["dropped_by_category"]["logs"].as_u64() == Some(60));
    assert_eq!(runtime(&s, "events_purged"), 60, "{s}");

    // The server comes back: only the error lines arrive.
    let server = ServerProc::start_on(&data, &listen, &[]);
    wait_until("the error lines stored", || server.count(&ws, "logs") >= 40);
    let v = query(&server, &ws, "SELECT severity, count(*) AS n FROM logs GROUP BY severity");
    assert_eq!(v, serde_json::json!([{"severity": "error", "n": 40}]), "only the lines the lowered level allows");
    // Below level 3 the host name is a pseudonym.
    let hosts = query(&server, &ws, "SELECT DISTINCT host FROM logs");
    let h = hosts[0]["host"].as_str().unwrap();
    assert!(h.starts_with("h-") && h.len() == 18, "{hosts}");

    // Disable while the server is away again: the queue is deleted.
    let mut server = server;
    server.kill9();
    write_lines(&logs.join("app.log"), "ERROR", 25, "second");
    agent.wait_for("25 more queued", |s| runtime(s, "queued_events") >= 25);
    let out = agent.telemetry(&["disable"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = agent.wait_for("the queue emptied", |s| runtime(s, "queued_events") == 0);
    assert!(s["runtime"]["dropped_by_category"]["logs"].as_u64().unwrap() >= 85, "{s}");
    // Lines written while disabled are never collected, even after enable.
    write_lines(&logs.join("app.log"), "ERROR", 10, "while-disabled");
    let server = ServerProc::start_on(&data, &listen, &[]);
    std::thread::sleep(Duration::from_secs(2));
    let out = agent.telemetry(&["enable"]);
    assert!(out.status.success(), "{}", stderr(&out));
    write_lines(&logs.join("app.log"), "ERROR", 5, "after-enable");
    wait_until("the lines written after enable", || server.count(&ws, "logs") >= 45);
    std::thread::sleep(Duration::from_millis(1500));
    let v = query(&server, &ws, "SELECT count(*) AS n, count(CASE WHEN message LIKE '%[second]%' OR message LIKE '%[while-disabled]%' THEN 1 END) AS purged FROM logs");
    assert_eq!(v[0]["n"], 45, "40 first + 5 after enable: {v}");
    assert_eq!(v[0]["purged"], 0, "{v}");
}

#[test]
fn the_managed_policy_wins_over_local_settings_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("data"));
    let (_ws, key) = server.create_workspace("policy");
    let state = tmp.path().join("agent");
    assert!(enroll(&server, &key, &state).status.success());
    let policy = tmp.path().join("policy.toml");
    std::fs::write(&policy, "[telemetry]\nlevel = 1\n").unwrap();
    let cfg = tmp.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[telemetry]\nlevel = \"full\"\npolicy_file = \"{}\"\npolicy_reload_secs = 1\n\n[[sources]]\ntype = \"stdin\"\n",
            policy.display()
        ),
    )
    .unwrap();
    let agent = AgentProc::start(&state, &cfg);
    let s = agent.status();
    assert_eq!(s["level"]["value"], 1, "{s}");
    assert_eq!(s["level"]["origin"], "policy", "{s}");
    assert_eq!(s["enabled"]["origin"], "default", "{s}");

    let out = agent.telemetry(&["level", "3"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("policy") && e.contains(&policy.display().to_string()), "{e}");
    assert_eq!(agent.status()["level"]["value"], 1);

    // Settings the policy leaves alone can still be changed.
    let out = agent.telemetry(&["disable"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(agent.status()["enabled"]["origin"], "local");

    // An edited policy takes effect without a restart.
    std::fs::write(&policy, "[telemetry]\nlevel = \"enhanced\"\nenabled = true\n").unwrap();
    let s = agent.wait_for("the new policy", |s| s["level"]["value"] == 2 && s["enabled"]["value"] == true);
    assert_eq!(s["enabled"]["origin"], "policy", "{s}");

    // A broken policy fails closed.
    std::fs::write(&policy, "[telemetry\nlevel = ").unwrap();
    let s = agent.wait_for("the broken policy", |s| s["enabled"]["value"] == false);
    assert!(s["policy_error"].as_str().is_some_and(|e| !e.is_empty()), "{s}");
}

/// (table, time, host, message) of every event.
type Row = (String, i64, String, String);

#[test]
fn the_ledger_says_record_for_record_what_the_server_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("data"));
    let (ws, key) = server.create_workspace("ledger");
    let state = tmp.path().join("agent");
    assert!(enroll(&server, &key, &state).status.success());
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::copy(corpus().join("loghub/HDFS/HDFS_2k.log"), logs.join("hdfs.log")).unwrap();
    let cfg = tmp.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[agent]\nbatch_max_events = 300\n\n[[sources]]\ntype = \"file\"\npaths = [\"{}/*.log\"]\n\n[[sources]]\ntype = \"inventory\"\n",
            telemetry_section(&cfg, "enhanced"),
            logs.display()
        ),
    )
    .unwrap();
    let out = agent_once(&state, &cfg);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = Command::new(bin()).args(["telemetry", "verify-ledger", "--output", "json", "--state-dir"]).arg(&state).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = Command::new(bin()).args(["telemetry", "sent", "--output", "json", "--state-dir"]).arg(&state).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let sent: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(sent.len() >= 2, "several batches");
    let mut ledger: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for b in &sent {
        assert!(b["ack_id"].is_string(), "every batch acknowledged: {b}");
        assert_eq!(b["refused"], 0);
        for e in b["payload"].as_array().unwrap() {
            let row = (
                e["table"].as_str().unwrap().to_string(),
                e["time"].as_i64().unwrap(),
                e["host"].as_str().unwrap().to_string(),
                e["message"].as_str().unwrap().to_string(),
            );
            ledger.entry(row.0.clone()).or_default().push(row);
        }
    }
    assert!(ledger.contains_key("logs") && ledger.contains_key("inventory") && ledger.contains_key("agent_settings"), "{:?}", ledger.keys());
    for (table, mut rows) in ledger {
        let v = query(&server, &ws, &format!("SELECT CAST(time AS BIGINT) AS t, host, message FROM {table}"));
        let mut stored: Vec<Row> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (table.clone(), r["t"].as_i64().unwrap(), r["host"].as_str().unwrap().to_string(), r["message"].as_str().unwrap().to_string()))
            .collect();
        rows.sort();
        stored.sort();
        assert_eq!(rows.len(), stored.len(), "table {table}: ledger and server differ in count");
        assert!(rows == stored, "table {table}: the ledger and the server disagree");
    }
    // At level 2 only warning-and-above lines left the host.
    let v = query(&server, &ws, "SELECT count(*) AS n FROM logs WHERE severity NOT IN ('emergency','alert','critical','error','warning')");
    assert_eq!(v[0]["n"], 0, "{v}");
}

#[test]
fn the_server_refuses_events_above_the_workspace_level_and_the_owner_sees_the_count() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("data"));
    let (ws, key) = server.create_workspace("capped");
    let v = server.cli_as(&server.tester_token_file().display().to_string(), &["workspace", "set", &ws, "--max-level", "basic", "--output", "json"]);
    assert!(v.status.success(), "{}", stderr(&v));
    let state = tmp.path().join("agent");
    assert!(enroll(&server, &key, &state).status.success());
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    write_lines(&logs.join("app.log"), "ERROR", 30, "capped");
    let cfg = tmp.path().join("agent.toml");
    write_agent_config(&cfg, &format!("{}/*.log", logs.display()));
    let out = agent_once(&state, &cfg);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(summary["events_refused"].as_u64().unwrap() >= 30, "{summary}");
    assert_eq!(server.count(&ws, "logs"), 0, "nothing above the workspace's level is stored");
    // Level 0-1 records (the agent's settings and health) are stored.
    assert!(server.count(&ws, "agent_settings") >= 1);
    let out = server.cli_as(&server.tester_token_file().display().to_string(), &["workspace", "refusals", &ws, "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let level_refusals: u64 = r.as_array().unwrap().iter().filter(|x| x["reason"] == "level").map(|x| x["events"].as_u64().unwrap()).sum();
    assert!(level_refusals >= 30, "{r}");
    // The ledger recorded the server's refusals with its acks.
    let out = Command::new(bin()).args(["telemetry", "sent", "--output", "json", "--state-dir"]).arg(&state).output().unwrap();
    let sent: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let refused: u64 = sent.iter().map(|b| b["refused"].as_u64().unwrap_or(0)).sum();
    assert_eq!(refused, summary["events_refused"].as_u64().unwrap());
}

#[test]
fn usage_records_follow_their_own_switch_whatever_the_telemetry_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("data"));
    let (ws, key) = server.create_workspace("usage");
    let state = tmp.path().join("agent");
    assert!(enroll(&server, &key, &state).status.success());
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    write_lines(&logs.join("app.log"), "ERROR", 10, "usage");
    let cfg = tmp.path().join("agent.toml");
    // Telemetry off from the start; usage records every second.
    std::fs::write(
        &cfg,
        format!(
            "[telemetry]\nenabled = false\nusage_period_secs = 1\npolicy_file = \"{}\"\n[agent]\nflush_interval_ms = 100\n\n[[sources]]\ntype = \"file\"\npaths = [\"{}/*.log\"]\n",
            tmp.path().join("no-policy.toml").display(),
            logs.display()
        ),
    )
    .unwrap();
    let agent = AgentProc::start(&state, &cfg);
    wait_until("two usage records", || server.count(&ws, "usage") >= 2);
    assert_eq!(server.count(&ws, "logs"), 0, "telemetry is disabled");
    assert_eq!(server.count(&ws, "agent_settings"), 0, "telemetry is disabled");
    let v = query(&server, &ws, "SELECT min(cores) AS c, min(agents) AS a, max(core_hours) AS h FROM usage");
    assert!(v[0]["c"].as_i64().unwrap() >= 1 && v[0]["a"] == 1, "{v}");
    assert!(v[0]["h"].as_f64().unwrap() > 0.0, "{v}");

    // Switched off: no new records.
    let out = Command::new(bin())
        .args(["usage", "disable", "--output", "json", "--state-dir"])
        .arg(&state)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let s = agent.status();
    assert_eq!(s["usage"]["value"], false, "{s}");
    assert_eq!(s["usage"]["origin"], "local", "{s}");
    std::thread::sleep(Duration::from_millis(1500));
    let before = server.count(&ws, "usage");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(server.count(&ws, "usage"), before, "no usage records after usage disable");
}

#[test]
fn the_catalog_prints_exactly_the_registry_rows_of_a_level() {
    let out = custos(&["telemetry", "catalog", "--level", "basic", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut tables: Vec<&str> = rows.iter().map(|r| r["table"].as_str().unwrap()).collect();
    tables.dedup();
    for t in ["agent_settings", "security_events", "inventory", "agent_health", "quality", "compatibility"] {
        assert!(tables.contains(&t), "{t} missing at level 1: {tables:?}");
    }
    for t in ["performance", "service_usage", "logs", "crash_reports"] {
        assert!(!tables.contains(&t), "{t} is not collected at level 1");
    }
    assert!(rows.iter().all(|r| r["level"].as_u64().unwrap() <= 1 && r["pii"].is_string() && r["description"].is_string()));
    let full = custos(&["telemetry", "catalog", "--output", "json"]);
    let all: Vec<Value> = serde_json::from_slice(&full.stdout).unwrap();
    assert!(all.iter().any(|r| r["table"] == "crash_reports"));
    assert!(all.len() > rows.len());
}
