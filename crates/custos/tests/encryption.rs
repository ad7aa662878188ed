//! Encryption at rest, end to end (issue 7): a real server seals every
//! segment it stores under a per-segment data key wrapped by the
//! workspace's key; the data stays queryable across restarts; a changed
//! byte fails the query with an error naming the segment; the wrong master
//! key refuses to start.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "cseg") {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn every_stored_segment_is_sealed_and_stays_readable_only_with_its_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = ServerProc::start(&data);
    let (ws, key) = server.create_workspace("sealed");
    let (state, logs, cfg) = file_agent(&server, &key, tmp.path(), "", "table = \"logs\"\n");
    let lines: String = (0..300).map(|i| format!("confidential payroll line {i} for alice\n")).collect();
    std::fs::write(logs.join("app.log"), lines).unwrap();
    let out = agent_once(&state, &cfg);
    assert!(out.status.success(), "agent: {}", stderr(&out));
    assert_eq!(server.count(&ws, "logs"), 300);

    // On disk: format 3, sealed flag, no row text; the master key is 0600
    // and the keystore holds no key in clear.
    let segs = segments(&data.join("segments"));
    assert!(!segs.is_empty());
    for s in &segs {
        let b = std::fs::read(s).unwrap();
        assert_eq!(&b[..4], b"CSEG");
        assert_eq!(u16::from_le_bytes([b[4], b[5]]), 3, "{}", s.display());
        assert_eq!(u16::from_le_bytes([b[6], b[7]]), 1, "sealed flag: {}", s.display());
        assert!(!b.windows(12).any(|w| w == b"confidential"), "plaintext in {}", s.display());
    }
    let master = data.join("keys/master.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&master).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let master_hex = std::fs::read_to_string(&master).unwrap();
    let keystore = std::fs::read_to_string(data.join("keys/keystore.json")).unwrap();
    assert!(keystore.contains(&ws), "a key for the workspace: {keystore}");
    assert!(!keystore.contains(master_hex.trim()));

    // A restart reopens the keystore: still readable.
    server.stop();
    let mut server = ServerProc::start(&data);
    assert_eq!(server.count(&ws, "logs"), 300);
    server.stop();

    // The wrong master key refuses to start, naming the problem.
    let out = Command::new(bin())
        .args(["server", "--data-dir"])
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .env("CUSTOS_MASTER_KEY", "11".repeat(32))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("wrong master key"), "{}", stderr(&out));

    // One changed byte in a stored segment: the query fails and names it.
    let victim = segs
        .iter()
        .find(|p| p.parent().and_then(|d| d.file_name()).is_some_and(|n| n == "logs"))
        .expect("a segment of table logs");
    let mut b = std::fs::read(victim).unwrap();
    let at = b.len() - 100;
    b[at] ^= 0x40;
    std::fs::write(victim, &b).unwrap();
    let server = ServerProc::start(&data);
    let out = server.cli(&["query", "--workspace", &ws, "SELECT message FROM logs"]);
    assert!(!out.status.success(), "a damaged segment must not give rows");
    let id = victim.file_stem().unwrap().to_str().unwrap();
    assert!(stderr(&out).contains(id), "the error names segment {id}: {}", stderr(&out));
    // …and it is a data-loss incident in the workspace's audit log.
    let log = server.cli(&["audit", "log", "--workspace", &ws]);
    assert!(log.status.success(), "{}", stderr(&log));
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(log.contains("data_loss.incident") && log.contains(id), "incident recorded: {log}");
}

#[test]
fn rotation_keeps_old_data_readable_and_revocation_cuts_access_until_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = ServerProc::start(&data);
    let (ws, key) = server.create_workspace("rotating");
    let (state, logs, cfg) = file_agent(&server, &key, tmp.path(), "", "table = \"logs\"\n");
    let write = |from: usize, to: usize| {
        let text: String = (from..to).map(|i| format!("payroll line {i}\n")).collect();
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(logs.join("app.log")).unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    };
    write(0, 100);
    assert!(agent_once(&state, &cfg).status.success());
    assert_eq!(server.count(&ws, "logs"), 100);
    let st = server.cli_json(&["key", "status", "--workspace", &ws]);
    assert_eq!(st["versions"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(st["versions"][0]["state"], "active");
    assert_eq!(st["segments_pending_rewrap"], 0, "{st}");

    // Rotate: a new active version; older segments rewrapped in the background.
    let st = server.cli_json(&["key", "rotate", "--workspace", &ws]);
    let states: Vec<&str> = st["versions"].as_array().unwrap().iter().map(|v| v["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["retired", "active"], "{st}");
    wait_secs("rewrap", 30, || server.cli_json(&["key", "status", "--workspace", &ws])["segments_pending_rewrap"] == 0);
    let versions: Vec<u64> = segments(&data.join("segments"))
        .iter()
        .filter(|p| p.to_string_lossy().contains(&ws))
        .map(|p| {
            let b = std::fs::read(p).unwrap();
            let h = u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize;
            let header: serde_json::Value = serde_json::from_slice(&b[12..12 + h]).unwrap();
            header["seal"]["key"]["version"].as_u64().unwrap()
        })
        .collect();
    assert!(!versions.is_empty());
    assert!(versions.iter().all(|&v| v == 2), "every segment rewrapped under v2: {versions:?}");
    assert_eq!(server.count(&ws, "logs"), 100, "old data readable after the rotation");
    write(100, 150);
    assert!(agent_once(&state, &cfg).status.success());
    assert_eq!(server.count(&ws, "logs"), 150);

    // Revoke: unreadable at once, with an error that says why.
    server.cli_json(&["key", "revoke", "--workspace", &ws]);
    let out = server.cli(&["query", "--workspace", &ws, "SELECT message FROM logs"]);
    assert!(!out.status.success(), "a revoked workspace must not give rows");
    assert!(stderr(&out).contains("revoked"), "{}", stderr(&out));
    let rotate = server.cli(&["key", "rotate", "--workspace", &ws]);
    assert!(!rotate.status.success() && stderr(&rotate).contains("revoked"), "{}", stderr(&rotate));
    // Restore: readable again, nothing lost.
    server.cli_json(&["key", "restore", "--workspace", &ws]);
    assert_eq!(server.count(&ws, "logs"), 150);
}
