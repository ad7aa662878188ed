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

    // On disk: format 2, sealed flag, no row text; the master key is 0600
    // and the keystore holds no key in clear.
    let segs = segments(&data.join("segments"));
    assert!(!segs.is_empty());
    for s in &segs {
        let b = std::fs::read(s).unwrap();
        assert_eq!(&b[..4], b"CSEG");
        assert_eq!(u16::from_le_bytes([b[4], b[5]]), 2, "{}", s.display());
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
}
