//! The access-control and audit commands through the real binary: principals,
//! tokens, roles, cases, the lockbox, and the audit log read over the API,
//! verified offline, tampered with, and proven.

mod common;
use common::*;
use serde_json::Value;

fn ok(out: std::process::Output, what: &str) -> Value {
    assert!(out.status.success(), "{what} failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: bad json ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn principals_roles_cases_and_the_lockbox_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("srv"));
    let admin = server.info["admin_token_file"].as_str().unwrap().to_string();
    let (ws, _) = server.create_workspace("acme");

    // Principals print an id and a token, once.
    let owner = server.cli_json(&["principal", "create", "alice"]);
    assert!(owner["id"].is_string() && owner["token"].as_str().unwrap().starts_with("cst_"), "{owner}");
    let support = server.cli_json(&["principal", "create", "sam", "--service-role", "support"]);
    let dup = server.cli(&["principal", "create", "alice"]);
    assert!(!dup.status.success() && stderr(&dup).contains("alice"), "{}", stderr(&dup));
    let bad = server.cli(&["principal", "create", "x", "--service-role", "root"]);
    assert!(!bad.status.success() && stderr(&bad).contains("root"), "{}", stderr(&bad));

    let alice_file = tmp.path().join("alice.token");
    std::fs::write(&alice_file, owner["token"].as_str().unwrap()).unwrap();
    let sam_file = tmp.path().join("sam.token");
    std::fs::write(&sam_file, support["token"].as_str().unwrap()).unwrap();
    let alice = alice_file.to_str().unwrap();
    let sam = sam_file.to_str().unwrap();

    // Before a role: alice sees no workspace, and it looks absent.
    let o = server.cli_as(alice, &["workspace", "show", &ws, "--output", "json"]);
    assert!(!o.status.success() && stderr(&o).contains("not found"), "{}", stderr(&o));
    ok(server.cli_as(&admin, &["role", "grant", "alice", "owner", "--workspace", &ws, "--output", "json"]), "role grant");
    let roles = ok(server.cli_as(alice, &["role", "list", "--workspace", &ws, "--output", "json"]), "role list");
    assert!(roles.to_string().contains(owner["id"].as_str().unwrap()));
    let me = ok(server.cli_as(alice, &["whoami", "--output", "json"]), "whoami");
    assert_eq!(me["roles"][0]["role"], "owner");

    // Tokens: create, revoke.
    let t = ok(server.cli_as(alice, &["token", "create", "--expires-in", "1h", "--output", "json"]), "token create");
    let t_file = tmp.path().join("t.token");
    std::fs::write(&t_file, t["token"].as_str().unwrap()).unwrap();
    ok(server.cli_as(t_file.to_str().unwrap(), &["whoami", "--output", "json"]), "whoami with new token");
    ok(server.cli_as(alice, &["token", "revoke", t["id"].as_str().unwrap(), "--output", "json"]), "token revoke");
    let o = server.cli_as(t_file.to_str().unwrap(), &["whoami"]);
    assert!(!o.status.success() && stderr(&o).contains("revoked"), "{}", stderr(&o));

    // A case, a request, a decision.
    let case = ok(server.cli_as(sam, &["case", "open", "--workspace", &ws, "--title", "slow disks", "--output", "json"]), "case open");
    let case_id = case["id"].as_str().unwrap().to_string();
    let o = server.cli_as(sam, &["query", "--workspace", &ws, "SELECT 1 AS x", "--output", "json"]);
    assert!(!o.status.success() && stderr(&o).contains("no standing access"), "{}", stderr(&o));
    let req = ok(
        server.cli_as(sam, &["access", "request", "--case", &case_id, "--duration", "2h", "--reason", "check smartctl logs", "--output", "json"]),
        "access request",
    );
    let req_id = req["id"].as_str().unwrap().to_string();
    assert_eq!(req["duration_secs"], 7200);
    let list = ok(server.cli_as(alice, &["access", "list", "--workspace", &ws, "--output", "json"]), "access list");
    assert_eq!(list[0]["status"], "pending");
    assert_eq!(list[0]["reason"], "check smartctl logs");
    ok(server.cli_as(alice, &["access", "approve", &req_id, "--output", "json"]), "access approve");
    ok(server.cli_as(sam, &["query", "--workspace", &ws, "SELECT 1 AS x", "--output", "json"]), "support query with a grant");
    let cases = ok(server.cli_as(alice, &["case", "list", "--output", "json"]), "case list");
    assert_eq!(cases[0]["id"], case_id.as_str());
    ok(server.cli_as(alice, &["case", "close", &case_id, "--output", "json"]), "case close");
    let o = server.cli_as(sam, &["query", "--workspace", &ws, "SELECT 1 AS x"]);
    assert!(!o.status.success(), "support still reads after the case closed");

    // The owner reads every support access in the audit log.
    let log = ok(server.cli_as(alice, &["audit", "log", "--workspace", &ws, "--output", "json"]), "audit log");
    let support_reads: Vec<&Value> =
        log.as_array().unwrap().iter().filter(|r| r["principal"] == support["id"] && r["action"] == "data.query").collect();
    assert_eq!(support_reads.len(), 3, "{support_reads:#?}");
    assert_eq!(support_reads.iter().filter(|r| r["outcome"] == "ok").count(), 1);

    // Revoke the role: alice is a stranger again.
    ok(server.cli_as(&admin, &["role", "revoke", "alice", "owner", "--workspace", &ws, "--output", "json"]), "role revoke");
    let o = server.cli_as(alice, &["workspace", "show", &ws]);
    assert!(!o.status.success() && stderr(&o).contains("not found"));
}

#[test]
fn audit_verify_passes_then_names_the_record_a_flipped_byte_hits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("srv");
    let cfg = tmp.path().join("server.toml");
    std::fs::write(&cfg, "[audit]\ncheckpoint_every_records = 5\n").unwrap();
    let mut server = ServerProc::start_with(&dir, &["--config", cfg.to_str().unwrap()]);
    let (ws, _) = server.create_workspace("audited");
    for i in 0..20 {
        server.cli_json(&["query", "--workspace", &ws, &format!("SELECT {i} AS n")]);
    }
    server.stop();
    let audit_dir = dir.join("audit");
    let key = dir.join("audit.pub");
    let v = ok(
        custos(&["audit", "verify", "--dir", audit_dir.to_str().unwrap(), "--public-key", key.to_str().unwrap(), "--output", "json"]),
        "audit verify",
    );
    let text = v.to_string();
    assert!(text.contains("records") && text.contains("checkpoints"), "{v}");

    // An inclusion proof for one record, and consistency between sizes.
    let dirs = ["--dir", audit_dir.to_str().unwrap(), "--public-key", key.to_str().unwrap(), "--output", "json"];
    let proof = ok(custos(&[&["audit", "proof", "5"][..], &dirs[..]].concat()), "audit proof");
    assert_eq!(proof["verified"], true, "{proof}");
    assert_eq!(proof["seq"], 5);
    let size = v["last_checkpoint_size"].as_u64().unwrap();
    assert!(size > 20, "{v}");
    // log2(size) hashes at most.
    assert!(proof["hashes"].as_u64().unwrap() <= 64 - size.leading_zeros() as u64, "{proof}");
    // Checkpoints every 5 records or so: take an early one from the file.
    let cps = std::fs::read_to_string(audit_dir.join("checkpoints.log")).unwrap();
    let sizes: Vec<u64> = cps.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["size"].as_u64().unwrap()).collect();
    assert!(sizes.len() >= 3, "{sizes:?}");
    let early = sizes[1].to_string();
    let cons = ok(custos(&[&["audit", "consistency", &early, &size.to_string()][..], &dirs[..]].concat()), "audit consistency");
    assert_eq!(cons["verified"], true, "{cons}");
    let odd = (sizes[1] + 1).to_string();
    let none = custos(&[&["audit", "consistency", &odd, &size.to_string()][..], &dirs[..]].concat());
    assert!(!none.status.success() && stderr(&none).contains(&format!("no checkpoint of size {odd}")), "{}", stderr(&none));

    // Flip one byte inside a record line in the middle of the log.
    let mut segs: Vec<_> = std::fs::read_dir(&audit_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("seg-"))
        .collect();
    segs.sort();
    let seg = &segs[0];
    let mut bytes = std::fs::read(seg).unwrap();
    // The record of seq 7: find its line by content, flip a byte inside it.
    let target_line = 7;
    let needle = format!("\"seq\":{target_line},");
    let at = bytes.windows(needle.len()).position(|w| w == needle.as_bytes()).expect("record 7 not found");
    let pos = at + needle.len() + 10;
    assert_ne!(bytes[pos], b'\n');
    bytes[pos] ^= 0x01;
    std::fs::write(seg, &bytes).unwrap();
    let out = custos(&["audit", "verify", "--dir", audit_dir.to_str().unwrap(), "--public-key", key.to_str().unwrap()]);
    assert!(!out.status.success(), "verify passed a tampered log");
    let err = stderr(&out);
    assert!(err.contains(&format!("record {target_line}")) || err.contains(&format!("seq {target_line}")), "verify did not name record {target_line}: {err}");
}
