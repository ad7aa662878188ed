//! Redaction on the host, end to end: `custos redact` as a filter (text and
//! JSON lines, --spans, policies, lookup), and a real agent shipping to a
//! real server with the default policy: no card number, secret or e-mail
//! address reaches the server, pseudonyms correlate and resolve on the host
//! only, the counts show in `custos telemetry status`.

mod common;
use common::*;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn redact(args: &[&str], input: &str) -> Output {
    redact_bytes(args, input.as_bytes().to_vec())
}

fn redact_bytes(args: &[&str], input: Vec<u8>) -> Output {
    let mut child = Command::new(bin())
        .arg("redact")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Written from another thread: the output pipe fills while we write.
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", stderr(o));
    String::from_utf8(o.stdout.clone()).unwrap()
}

const LINES: &str = "Accepted password for root from 183.62.140.253 port 22 ssh2\n\
card 4111 1111 1111 1111 paid by bob@example.com\n\
{\"msg\": \"login user=alice from 10.0.0.7\", \"card\": 5500000000000004, \"ok\": true}\n\
aws_secret_access_key = Zx9rT2vQ8mLp4Kd7/w1Hs6Jb3Nc5Fg0Ua8Ei2Ro+\n\
nothing to see here\n";

#[test]
fn spans_are_one_json_object_per_line_with_byte_offsets_and_presidio_names() {
    let out = ok(&redact(&["--spans"], LINES));
    let rows: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 5);
    let input: Vec<&str> = LINES.lines().collect();
    let mut entities = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["line"], i + 1);
        for s in row["spans"].as_array().unwrap() {
            let (a, b) = (s["start"].as_u64().unwrap() as usize, s["end"].as_u64().unwrap() as usize);
            entities.push((i + 1, s["entity"].as_str().unwrap().to_string(), input[i][a..b].to_string()));
        }
    }
    for want in [
        (1, "USER_NAME", "root"),
        (1, "IP_ADDRESS", "183.62.140.253"),
        (2, "CREDIT_CARD", "4111 1111 1111 1111"),
        (2, "EMAIL_ADDRESS", "bob@example.com"),
        (3, "IP_ADDRESS", "10.0.0.7"),
    ] {
        assert!(entities.iter().any(|(l, e, v)| (*l, e.as_str(), v.as_str()) == want), "{want:?} in {entities:?}");
    }
    assert!(entities.iter().any(|(l, e, _)| *l == 4 && e == "SECRET"), "{entities:?}");
    assert!(rows[4]["spans"].as_array().unwrap().is_empty());
}

#[test]
fn the_default_policy_removes_cards_secrets_and_emails_and_is_idempotent() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let s = state.to_str().unwrap();
    let once = ok(&redact(&["--state-dir", s], LINES));
    for raw in ["4111 1111 1111 1111", "5500000000000004", "bob@example.com", "Zx9rT2vQ8mLp4Kd7", "183.62.140.253", "10.0.0.7", "alice", " root "] {
        assert!(!once.contains(raw), "{raw} left in:\n{once}");
    }
    assert!(once.contains("card <CREDIT_CARD> paid by u"), "{once}");
    assert!(once.contains("nothing to see here"));
    let json: Value = serde_json::from_str(once.lines().nth(2).unwrap()).unwrap();
    assert_eq!(json["card"], "<CREDIT_CARD>", "numbers are checked too: {json}");
    assert_eq!(json["ok"], true);
    let twice = ok(&redact(&["--state-dir", s], &once));
    assert_eq!(once, twice, "redacting redacted text changes nothing");
    let again = ok(&redact(&["--state-dir", s], LINES));
    assert_eq!(once, again, "pseudonyms are stable across runs");

    // The pseudonym support sees resolves on this host only.
    let user = once.lines().next().unwrap().split_whitespace().nth(3).unwrap().to_string();
    assert!(user.starts_with('u') && user.len() == 11, "{user}");
    assert_eq!(ok(&custos(&["redact", "lookup", &user, "--state-dir", s])).trim(), "root");
    let ip = once.lines().next().unwrap().split_whitespace().nth(5).unwrap().to_string();
    let j: Value = serde_json::from_str(&ok(&custos(&["-o", "json", "redact", "--state-dir", s, "lookup", &ip]))).unwrap();
    assert_eq!(j["values"][0], "183.62.140.253");
    let missing = custos(&["redact", "lookup", "u0000000000", "--state-dir", s]);
    assert!(!missing.status.success() && stderr(&missing).contains("no pseudonym"), "{}", stderr(&missing));
    let raw = std::fs::read(state.join("redact/pseudonyms.map")).unwrap();
    assert!(!raw.windows(4).any(|w| w == b"root"), "the map is encrypted");
}

/// `custos redact` reads 256 KiB blocks and writes unchanged lines straight
/// from them: every line must come out whole and in order, whatever the
/// block boundaries, line lengths and encodings.
#[test]
fn block_reading_keeps_every_line_whole_and_in_order() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().join("state");
    let mut input = Vec::new();
    let mut want: Vec<Option<String>> = Vec::new(); // None: must be redacted
    for i in 0..20_000 {
        match i % 997 {
            5 => {
                input.extend_from_slice(format!("line {i} from bob{i}@example.com\n").as_bytes());
                want.push(None);
            }
            17 => {
                input.extend_from_slice(format!("crlf line {i}\r\n").as_bytes());
                want.push(Some(format!("crlf line {i}\r")));
            }
            23 => {
                input.extend_from_slice(b"\n");
                want.push(Some(String::new()));
            }
            _ => {
                input.extend_from_slice(format!("plain line {i} nothing here\n").as_bytes());
                want.push(Some(format!("plain line {i} nothing here")));
            }
        }
        if i == 12_345 {
            // Longer than a block, with a finding at its far end.
            let mut long = "x".repeat(300_000);
            long.push_str(" 10.20.30.40");
            input.extend_from_slice(long.as_bytes());
            input.push(b'\n');
            want.push(None);
            // Not UTF-8: read lossily, still redacted.
            input.extend_from_slice(b"bad \xff byte from 10.0.0.9\n");
            want.push(None);
        }
    }
    input.extend_from_slice(b"last line without newline");
    want.push(Some("last line without newline".to_string()));
    let out = ok(&redact_bytes(&["--state-dir", s.to_str().unwrap()], input));
    let got: Vec<&str> = out.split('\n').collect();
    assert_eq!(got.last(), Some(&""), "every line ends with a newline");
    let got = &got[..got.len() - 1];
    assert_eq!(got.len(), want.len());
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        match w {
            Some(w) => assert_eq!(g, w, "line {}", k + 1),
            None => assert!(
                !g.contains("@example.com") && !g.contains("10.20.30.40") && !g.contains("10.0.0.9"),
                "line {} not redacted: {}",
                k + 1,
                &g[g.len().saturating_sub(80)..]
            ),
        }
    }
    assert!(got.iter().any(|g| g.starts_with("bad \u{fffd} byte from ")), "lossy line kept");
    assert!(got.iter().any(|g| g.len() > 300_000 && g.starts_with("xxxx")), "long line kept");
}

#[test]
fn a_policy_chooses_operators_and_bad_policies_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let policy = d.path().join("p.toml");
    std::fs::write(
        &policy,
        r#"
        [detect]
        domains = ["corp.example.com"]
        [[detect.custom]]
        name = "TICKET"
        regex = 'TCK-[0-9]+'
        [operators]
        IP_ADDRESS = "keep"
        USER_NAME = { op = "mask", keep = 2 }
        EMAIL_ADDRESS = "drop_event"
        DOMAIN_NAME = "tag"
        TICKET = "tag"
        "#,
    )
    .unwrap();
    let p = policy.to_str().unwrap();
    let s = d.path().join("state");
    let out = ok(&redact(
        &["--policy", p, "--state-dir", s.to_str().unwrap(), "--stats", "-o", "json"],
        "user=alice from 10.1.2.3 on db1.corp.example.com TCK-42\nmail carol@example.org\nlast\n",
    ));
    assert_eq!(out, "user=***ce from 10.1.2.3 on <DOMAIN_NAME> <TICKET>\nlast\n");
    let o = redact(&["--policy", p, "--state-dir", s.to_str().unwrap(), "--stats", "-o", "json"], "mail carol@example.org\n");
    let stats: Value = serde_json::from_str(stderr(&o).lines().last().unwrap()).unwrap();
    assert_eq!(stats["lines_dropped"], 1);
    assert_eq!(stats["redacted"]["EMAIL_ADDRESS"], 1);

    std::fs::write(&policy, "[operators]\nCARD = \"tag\"\n").unwrap();
    let bad = redact(&["--policy", p], "x\n");
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("unknown entity `CARD`") && stderr(&bad).contains("p.toml"), "{}", stderr(&bad));
}

fn query(server: &ServerProc, ws: &str, sql: &str) -> Vec<Value> {
    let v = server.cli_json(&["query", "--workspace", ws, sql]);
    v.as_array().cloned().unwrap_or_default()
}

#[test]
fn the_agent_redacts_every_event_before_it_leaves_the_host() {
    let d = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&d.path().join("server"));
    let (ws, key) = server.create_workspace("redact");
    let (state, logs, cfg) = file_agent(&server, &key, d.path(), "", "");
    std::fs::write(
        logs.join("app.log"),
        "Failed password for invalid user admin from 203.0.113.9 port 4242 ssh2\n\
         payment card=4111-1111-1111-1111 for dave@example.com\n\
         token: Authorization: Bearer abcdefghijklmnopqrstuvwxyz0123456789ABCD\n\
         Accepted password for admin from 203.0.113.9 port 4243 ssh2\n",
    )
    .unwrap();
    let out = agent_once(&state, &cfg);
    assert!(out.status.success(), "agent: {}", stderr(&out));
    let rows = query(&server, &ws, "SELECT message FROM logs ORDER BY time");
    let messages: Vec<String> = rows.iter().map(|r| r["message"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(messages.len(), 4, "{messages:?}");
    let all = messages.join("\n");
    for raw in ["4111-1111-1111-1111", "dave@example.com", "abcdefghijklmnopqrstuvwxyz0123456789ABCD", "203.0.113.9", "admin"] {
        assert!(!all.contains(raw), "{raw} reached the server:\n{all}");
    }
    assert!(all.contains("card=<CREDIT_CARD>") && all.contains("Bearer <SECRET>") || all.contains("<SECRET>"), "{all}");
    // One value, one pseudonym: both sshd lines name the same user and address.
    let w0: Vec<&str> = messages[0].split_whitespace().collect();
    let w3: Vec<&str> = messages[3].split_whitespace().collect();
    assert_eq!(w0[5], w3[3], "{messages:?}");
    assert_eq!(w0[7], w3[5], "{messages:?}");
    // The operator resolves what support quotes, on the host.
    let back = ok(&custos(&["redact", "lookup", w0[7], "--state-dir", state.to_str().unwrap()]));
    assert_eq!(back.trim(), "203.0.113.9");
    // The ledger (what was sent) holds no raw value either.
    let ledger_dir = state.join("ledger");
    if ledger_dir.is_dir() {
        for f in std::fs::read_dir(&ledger_dir).unwrap().flatten() {
            let bytes = std::fs::read(f.path()).unwrap_or_default();
            assert!(!bytes.windows(16).any(|w| w == b"dave@example.com"), "{}", f.path().display());
        }
    }
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let by = &summary["redacted_by_entity"];
    assert_eq!(by["CREDIT_CARD"], 1, "{summary}");
    assert_eq!(by["EMAIL_ADDRESS"], 1, "{summary}");
    assert_eq!(by["IP_ADDRESS"], 2, "{summary}");
}

#[test]
fn an_agent_policy_file_is_applied_and_a_bad_one_stops_the_start() {
    let d = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&d.path().join("server"));
    let (ws, key) = server.create_workspace("redact-policy");
    let policy = d.path().join("redact.toml");
    std::fs::write(
        &policy,
        "[[detect.custom]]\nname = \"TICKET\"\nregex = 'TCK-[0-9]+'\n[operators]\nTICKET = \"tag\"\nEMAIL_ADDRESS = \"drop_event\"\n",
    )
    .unwrap();
    let extra = format!("[redaction]\npolicy_file = \"{}\"\n", policy.display());
    let (state, logs, cfg) = file_agent(&server, &key, d.path(), &extra, "");
    std::fs::write(logs.join("a.log"), "escalated TCK-4711 today\nmail to erin@example.com\n").unwrap();
    let out = agent_once(&state, &cfg);
    assert!(out.status.success(), "agent: {}", stderr(&out));
    let rows = query(&server, &ws, "SELECT message FROM logs");
    let messages: Vec<&str> = rows.iter().filter_map(|r| r["message"].as_str()).collect();
    assert_eq!(messages, ["escalated <TICKET> today"], "custom entity tagged, the e-mail event dropped");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["events_dropped_by_redaction"], 1, "{summary}");
    assert_eq!(summary["redacted_by_entity"]["TICKET"], 1, "{summary}");

    std::fs::write(&policy, "[operators]\nIP_ADDRESS = \"shred\"\n").unwrap();
    let out = agent_once(&state, &cfg);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unknown operator `shred`") && stderr(&out).contains("redact.toml"), "{}", stderr(&out));
}
