//! The server's redaction backstop through the real binary: an agent whose
//! own redaction policy keeps e-mail addresses, card numbers and secrets
//! ships them; the workspace's (default) policy removes them before
//! storage; the owner sees the counts per entity, another workspace's
//! principal sees nothing; an owner's `drop_event` policy drops such events;
//! a bad policy is refused with the engine's message; the counts survive a
//! server restart.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;

const EMAIL: &str = "jane.doe@example.com";
const CARD: &str = "4111 1111 1111 1111";
const AWS_KEY: &str = "AKIAQWERTYUIOPASDFGH";

/// The agent's own policy: lets e-mails, cards and secrets leave the host.
const CARELESS_AGENT_POLICY: &str = "version = 1\n\n[operators]\nEMAIL_ADDRESS = \"keep\"\nCREDIT_CARD = \"keep\"\nSECRET = \"keep\"\n";

fn append(path: &Path, lines: &[String]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

fn json_of(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "custos failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad json ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// (kind, entity, count) of table `logs`, sorted.
fn log_counts(v: &Value) -> Vec<(String, String, u64)> {
    let mut out: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["table"] == "logs")
        .map(|r| {
            (r["kind"].as_str().unwrap().to_string(), r["entity"].as_str().unwrap_or("").to_string(), r["count"].as_u64().unwrap())
        })
        .collect();
    out.sort();
    out
}

fn assert_no_raw_values(stored: &str) {
    for raw in [EMAIL, CARD, "4111111111111111", AWS_KEY] {
        assert!(!stored.contains(raw), "{raw:?} was stored: {stored}");
    }
}

#[test]
fn what_the_workspace_policy_forbids_is_removed_before_storage_counted_for_the_owner_and_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = ServerProc::start(&data);
    let (ws, key) = server.create_workspace("alpha");
    let (ws_b, _) = server.create_workspace("beta");
    let tester = server.tester_token_file().display().to_string();
    let admin = server.info["admin_token_file"].as_str().unwrap().to_string();

    // Someone else's owner, and a reader of alpha.
    let token_of = |name: &str, role: &str, on: &str| {
        let v = server.cli_json(&["principal", "create", name]);
        let file = tmp.path().join(format!("{name}.token"));
        std::fs::write(&file, v["token"].as_str().unwrap()).unwrap();
        server.cli_json(&["role", "grant", name, role, "--workspace", on]);
        file.display().to_string()
    };
    let owner_b = token_of("owner-b", "owner", &ws_b);
    let reader_a = token_of("reader-a", "reader", &ws);

    // The agent's own policy keeps what the server must remove.
    let agent_policy = tmp.path().join("agent-policy.toml");
    std::fs::write(&agent_policy, CARELESS_AGENT_POLICY).unwrap();
    let extra = format!("[redaction]\npolicy_file = \"{}\"\n", agent_policy.display());
    let (state, logs, cfg) = file_agent(&server, &key, tmp.path(), &extra, "");
    let log = logs.join("app.log");
    append(
        &log,
        &[
            format!("Nov 30 09:12:01 web-1 billing[42]: sent invoice to {EMAIL}"),
            format!("Nov 30 09:12:02 web-1 billing[42]: payment declined for card {CARD}"),
            format!("Nov 30 09:12:03 web-1 deploy[7]: using key {AWS_KEY} for the upload"),
            "Nov 30 09:12:04 web-1 kernel: disk sda1 is 91% full".to_string(),
        ],
    );
    let out = agent_once(&state, &cfg);
    assert!(out.status.success(), "agent run: {}", stderr(&out));

    // Every line is stored, none of the raw values.
    assert_eq!(server.count(&ws, "logs"), 4);
    let rows = server.cli_json(&["query", "--workspace", &ws, "SELECT * FROM logs"]);
    let stored = rows.to_string();
    assert_no_raw_values(&stored);
    assert!(stored.contains("payment declined for card <CREDIT_CARD>"), "{stored}");
    assert!(stored.contains("using key <SECRET> for the upload"), "{stored}");
    assert!(stored.contains("disk sda1 is 91% full"), "{stored}");
    assert!(stored.contains(".invalid"), "the e-mail address is a pseudonym: {stored}");

    // The owner sees what was removed, per entity (so the agent did send them).
    let want = vec![
        ("redacted".to_string(), "CREDIT_CARD".to_string(), 1),
        ("redacted".into(), "EMAIL_ADDRESS".into(), 1),
        ("redacted".into(), "SECRET".into(), 1),
    ];
    let counts = json_of(&server.cli_as(&tester, &["workspace", "redactions", &ws, "--output", "json"]));
    assert_eq!(log_counts(&counts), want);
    // A service admin too; table and csv output.
    assert_eq!(log_counts(&json_of(&server.cli_as(&admin, &["workspace", "redactions", &ws, "--output", "json"]))), want);
    let table = server.cli_as(&tester, &["workspace", "redactions", &ws]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.lines().next().unwrap().contains("entity") && text.contains("EMAIL_ADDRESS"), "{text}");
    let csv = server.cli_as(&tester, &["workspace", "redactions", &ws, "--output", "csv"]);
    let csv = String::from_utf8_lossy(&csv.stdout).into_owned();
    assert!(csv.starts_with("table,kind,entity,count,first_at,last_at\n") && csv.contains("logs,redacted,CREDIT_CARD,1,"), "{csv}");
    // Another workspace's owner: as if alpha did not exist; alpha's reader: forbidden.
    for (token, status) in [(&owner_b, "HTTP 404"), (&reader_a, "HTTP 403")] {
        for args in [["workspace", "redactions", ws.as_str()], ["workspace", "redaction-policy", "show"]] {
            let mut a = args.to_vec();
            if a[1] == "redaction-policy" {
                a.push(&ws);
            }
            let out = server.cli_as(token, &a);
            assert!(!out.status.success(), "{a:?} succeeded for a stranger");
            assert!(stderr(&out).contains(status), "{a:?}: {}", stderr(&out));
            assert!(!String::from_utf8_lossy(&out.stdout).contains("EMAIL_ADDRESS"));
        }
    }
    // /metrics counts by entity.
    assert_eq!(server.metric("custos_redactions_total{entity=\"CREDIT_CARD\"}"), Some(1.0));

    // The default policy is in force; the owner drops card events instead.
    let shown = server.cli_as(&tester, &["workspace", "redaction-policy", "show", &ws]);
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.contains("default redaction policy, revision 0"), "{shown}");
    let policy = tmp.path().join("ws-policy.toml");
    std::fs::write(&policy, "version = 1\n\n[operators]\nCREDIT_CARD = \"drop_event\"\n").unwrap();
    let set = json_of(&server.cli_as(&tester, &["workspace", "redaction-policy", "set", &ws, "--file", policy.to_str().unwrap(), "--output", "json"]));
    assert_eq!((set["source"].as_str(), set["revision"].as_u64()), (Some("custom"), Some(1)));
    // Only the owner: not another workspace's owner, not a service admin.
    let out = server.cli_as(&owner_b, &["workspace", "redaction-policy", "set", &ws, "--default"]);
    assert!(stderr(&out).contains("HTTP 404"), "{}", stderr(&out));
    let out = server.cli_as(&admin, &["workspace", "redaction-policy", "set", &ws, "--default"]);
    assert!(stderr(&out).contains("HTTP 403"), "{}", stderr(&out));
    append(
        &log,
        &[
            format!("Nov 30 09:15:02 web-1 billing[42]: retry card {CARD} declined again"),
            "Nov 30 09:15:03 web-1 billing[42]: retry queue empty".to_string(),
        ],
    );
    let out = agent_once(&state, &cfg);
    assert!(out.status.success(), "agent run: {}", stderr(&out));
    assert_eq!(server.count(&ws, "logs"), 5, "the card event is dropped, the other stored");
    let rows = server.cli_json(&["query", "--workspace", &ws, "SELECT message FROM logs WHERE message LIKE '%retry%'"]);
    assert_eq!(rows, serde_json::json!([{"message": "Nov 30 09:15:03 web-1 billing[42]: retry queue empty"}]));
    let after = log_counts(&json_of(&server.cli_as(&tester, &["workspace", "redactions", &ws, "--output", "json"])));
    let want_after = vec![
        ("event_dropped".to_string(), String::new(), 1),
        ("redacted".into(), "CREDIT_CARD".into(), 2),
        ("redacted".into(), "EMAIL_ADDRESS".into(), 1),
        ("redacted".into(), "SECRET".into(), 1),
    ];
    assert_eq!(after, want_after);

    // A bad policy is refused with the engine's message, and changes nothing.
    std::fs::write(&policy, "[operators]\nCREDIT_CARD = \"shred\"\n").unwrap();
    let out = server.cli_as(&tester, &["workspace", "redaction-policy", "set", &ws, "--file", policy.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("unknown operator `shred` for CREDIT_CARD") && err.contains("HTTP 400"), "{err}");
    let shown = json_of(&server.cli_as(&tester, &["workspace", "redaction-policy", "show", &ws, "--output", "json"]));
    assert_eq!(shown["revision"], 1);
    assert!(shown["policy"].as_str().unwrap().contains("drop_event"), "{shown}");

    // Counts and policy survive a restart.
    server.stop();
    let server = ServerProc::start(&data);
    let again = log_counts(&json_of(&server.cli_as(&tester, &["workspace", "redactions", &ws, "--output", "json"])));
    assert_eq!(again, want_after);
    let shown = json_of(&server.cli_as(&tester, &["workspace", "redaction-policy", "show", &ws, "--output", "json"]));
    assert_eq!(shown["revision"], 1);
    // Nothing of beta was counted.
    assert_eq!(json_of(&server.cli_as(&tester, &["workspace", "redactions", &ws_b, "--output", "json"])), serde_json::json!([]));
}
