//! The governed store through the `custos` binary, against a real server
//! and agent: retention settings and locks, a purge with its signed receipt
//! verified offline, an export verified offline (and a tampered one
//! refused), and deleting a workspace.

mod common;
use common::*;
use std::path::Path;

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", stderr(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// As the workspace owner (`tester`).
fn owner(server: &ServerProc, args: &[&str]) -> std::process::Output {
    server.cli_as(&server.tester_token_file().display().to_string(), args)
}

fn owner_json(server: &ServerProc, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["--output", "json"]);
    let out = owner(server, &a);
    serde_json::from_str(&ok(&out, &format!("custos {args:?}"))).unwrap()
}

#[test]
fn retention_locks_purge_receipts_export_and_deletion_work_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = ServerProc::start(&data);
    let (ws, key) = server.create_workspace("governed");
    let (state, logs, cfg) = file_agent(&server, &key, tmp.path(), "", "table = \"logs\"\n");
    let lines: String = (0..40).map(|i| format!("order {i} placed by user-{}\n", i % 4)).collect();
    std::fs::write(logs.join("app.log"), lines).unwrap();
    assert!(agent_once(&state, &cfg).status.success());
    assert_eq!(server.count(&ws, "logs"), 40);

    // Retention: show, a reduction waiting for its grace period, cancel.
    let show = owner_json(&server, &["retention", "show", "--workspace", &ws]);
    assert_eq!((show["plan"].as_str(), show["default_days"].as_u64()), (Some("paid"), Some(31)));
    let set = owner_json(&server, &["retention", "set", "--workspace", &ws, "--table", "logs", "--days", "7"]);
    assert_eq!(set["state"], "pending");
    let text = ok(&owner(&server, &["retention", "show", "--workspace", &ws]), "retention show");
    assert!(text.contains("pending: logs 31 -> 7 days"), "{text}");
    owner_json(&server, &["retention", "cancel", "--workspace", &ws, "--table", "logs"]);

    // A lock refuses reductions and purges, naming itself.
    let locked = owner_json(&server, &["workspace", "lock", &ws, "--reason", "case 2026-17"]);
    assert_eq!(locked["lock"]["reason"], "case 2026-17");
    let out = owner(&server, &["retention", "set", "--workspace", &ws, "--days", "1", "--now"]);
    assert!(!out.status.success() && stderr(&out).contains("is locked (case 2026-17)"), "{}", stderr(&out));
    let out = owner(&server, &["purge", "create", "--workspace", &ws, "--table", "logs", "--where", "message = 'x'", "--now"]);
    assert!(!out.status.success() && stderr(&out).contains("is locked (case 2026-17)"), "{}", stderr(&out));
    owner_json(&server, &["workspace", "unlock", &ws]);

    // Purge the lines of one message: dry run, then at once; the signed
    // receipt verifies offline against audit.pub, a forged one does not.
    let dry = owner_json(&server, &["purge", "create", "--workspace", &ws, "--table", "logs", "--where", "message IN ('order 1 placed by user-1', 'order 5 placed by user-1')", "--dry-run"]);
    assert_eq!(dry["rows"], 2, "{dry}");
    assert_eq!(server.count(&ws, "logs"), 40, "a dry run changes nothing");
    let job = owner_json(&server, &["purge", "create", "--workspace", &ws, "--table", "logs", "--where", "message IN ('order 1 placed by user-1', 'order 5 placed by user-1')", "--now"]);
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(server.count(&ws, "logs"), 38, "hidden from the moment it is accepted");
    let receipt = tmp.path().join("receipt.json");
    wait_secs("purge completed", 30, || owner_json(&server, &["purge", "status", &id])["state"] == "completed");
    ok(&owner(&server, &["purge", "status", &id, "--receipt", receipt.to_str().unwrap()]), "purge status --receipt");
    let public_key = data.join("audit.pub");
    let text = ok(&custos(&["purge", "verify", receipt.to_str().unwrap(), "--public-key", public_key.to_str().unwrap()]), "purge verify");
    assert!(text.contains("receipt valid") && text.contains("removed 2 rows"), "{text}");
    let forged = std::fs::read_to_string(&receipt).unwrap().replace("\"rows_removed\": 2", "\"rows_removed\": 0");
    std::fs::write(&receipt, forged).unwrap();
    let out = custos(&["purge", "verify", receipt.to_str().unwrap(), "--public-key", public_key.to_str().unwrap()]);
    assert!(!out.status.success() && stderr(&out).contains("signature does not match"), "{}", stderr(&out));

    // Export: files and a signed manifest; verify; a changed byte is named.
    let dir = tmp.path().join("export");
    let text = ok(&owner(&server, &["export", "--workspace", &ws, "--table", "logs", "--to", dir.to_str().unwrap()]), "export");
    assert!(text.contains("38 rows") && text.contains("every hash matches"), "{text}");
    let text = ok(&custos(&["export", "verify", dir.to_str().unwrap(), "--public-key", public_key.to_str().unwrap()]), "export verify");
    assert!(text.contains("signature valid"), "{text}");
    let seg = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "cseg")).unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&seg, &bytes).unwrap();
    let out = custos(&["export", "verify", dir.to_str().unwrap()]);
    assert!(!out.status.success(), "a changed byte must fail verification");
    assert!(stderr(&out).contains(seg.file_name().unwrap().to_str().unwrap()) && stderr(&out).contains("SHA-256"), "{}", stderr(&out));
    // Exported segments are plain: readable without custos's keys.
    assert_plain_segments(&dir);

    // Delete the workspace: keys first, then bytes.
    let r = server.cli_json(&["workspace", "delete", &ws, "--confirm", "governed"]);
    assert!(r["segments_deleted"].as_u64().unwrap() >= 1, "{r}");
    let out = owner(&server, &["query", "--workspace", &ws, "SELECT 1"]);
    assert!(!out.status.success() && stderr(&out).contains("not found"), "{}", stderr(&out));
    server.stop();
}

fn assert_plain_segments(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "cseg") {
            let b = std::fs::read(&p).unwrap();
            assert_eq!(u16::from_le_bytes([b[4], b[5]]), 3, "format 3: {}", p.display());
            assert_eq!(u16::from_le_bytes([b[6], b[7]]), 0, "unsealed: {}", p.display());
        }
    }
}
