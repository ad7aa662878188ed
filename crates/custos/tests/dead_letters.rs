//! Dead letters end to end: a batch a real server refuses for good (a frame
//! over its `max_batch_bytes`) is kept on the host, listed, shown, resent
//! once the server accepts it (stored exactly once, however often it is
//! resent), deleted; a damaged entry is named, never a crash.

mod common;
use common::*;
use custos_agent::deadletter::{categories_of, DeadLetters, NewDeadLetter};
use custos_agent::seal::SealKey;
use custos_agent::ship::{Attempt, Shipper};
use custos_agent::AgentError;
use custos_model::wire::{self, BatchPayload, Codec};
use custos_model::{BatchId, Category, Event, Level, TableName};
use serde_json::Value;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

/// Log events whose messages are long and incompressible enough that their
/// frame is well over 2 KiB; each names the marker.
fn big_events(marker: &str, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            // A cheap deterministic pseudo-random text (zstd cannot shrink it much).
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1);
            let noise: String = (0..1500)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b'a' + (x % 26) as u8)
                })
                .collect();
            Event {
                table: TableName::new("logs").unwrap(),
                time: custos_model::now_micros() + i as i64,
                level: Level::Enhanced,
                category: Category::Logs,
                host: "dl-host".into(),
                message: format!("{marker} {i} {noise}"),
                attrs: Default::default(),
            }
        })
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn dead_letters(state: &Path, args: &[&str]) -> Output {
    let mut a = vec!["agent", "dead-letters", "--state-dir"];
    let s = state.to_str().unwrap();
    a.push(s);
    a.extend_from_slice(args);
    custos(&a)
}

fn json_ok(o: &Output) -> Value {
    assert!(o.status.success(), "failed: {}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("bad json ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

/// Keep a refused frame the way the run loop does.
fn keep(state: &Path, payload: &BatchPayload, frame: &[u8], status: u16, message: &str) -> String {
    let key = Arc::new(SealKey::load_or_create(state).unwrap());
    let store = DeadLetters::open(state, key, 1 << 30).unwrap();
    let put = store
        .put(NewDeadLetter {
            batch_id: payload.batch_id,
            frame: frame.to_vec(),
            status,
            message: message.to_string(),
            time: custos_model::now_micros(),
            events: payload.events.len() as u64,
            categories: categories_of(&payload.events),
            source: "file:logs:/var/log/dl-test/*.log".into(),
        })
        .unwrap();
    assert!(put.evicted.is_empty());
    put.id.to_string()
}

fn stored(server: &ServerProc, ws: &str, marker: &str) -> i64 {
    let v = server.cli_json(&["query", "--workspace", ws, &format!("SELECT count(*) AS n FROM logs WHERE message LIKE '{marker} %'")]);
    v[0]["n"].as_i64().unwrap()
}

#[test]
fn a_batch_refused_for_good_is_kept_listed_shown_resent_once_accepted_and_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A server that refuses frames over 2 KiB (413): a permanent refusal.
    let small = server_config(&data, "[ingest]\nmax_batch_bytes = 2048\n");
    let mut server = ServerProc::start_with(&data, &["--config", small.to_str().unwrap()]);
    let (ws, key) = server.create_workspace("dead-letters");
    let state = tmp.path().join("agent");
    let out = enroll(&server, &key, &state);
    assert!(out.status.success(), "{}", stderr(&out));

    // Nothing kept yet: an empty list, and no key created by listing.
    let v = json_ok(&dead_letters(&state, &["list", "--output", "json"]));
    assert_eq!(v["entries"].as_array().unwrap().len(), 0, "{v}");

    let payload = BatchPayload { batch_id: BatchId::new(), created: 1, events: big_events("DLTEST", 3) };
    let frame = wire::encode(&payload, Codec::Zstd);
    assert!(frame.len() > 2048, "frame of {} bytes", frame.len());
    let (id, client) = custos_agent::identity::load(&state).unwrap();
    let shipper = Shipper::new(client, &id.server);
    let refusal = match rt().block_on(shipper.send_once(&frame)) {
        Attempt::Permanent(AgentError::Refused { status: 413, message }) => message,
        other => panic!("expected a permanent 413, got {other:?}"),
    };
    assert!(refusal.contains("exceeds the limit"), "{refusal}");
    let entry = keep(&state, &payload, &frame, 413, &refusal);

    // list: what was refused, and why.
    let v = json_ok(&dead_letters(&state, &["list", "--output", "json"]));
    let e = &v["entries"][0];
    assert_eq!(e["id"], entry.as_str());
    assert_eq!(e["batch_id"], payload.batch_id.to_string().as_str());
    assert_eq!(e["status"], 413);
    assert_eq!(e["events"], 3);
    assert_eq!(e["categories"]["logs"], 3);
    assert_eq!(e["source"], "file:logs:/var/log/dl-test/*.log");
    assert_eq!(e["frame_bytes"], frame.len());
    assert!(e["message"].as_str().unwrap().contains("exceeds the limit"), "{e}");
    assert!(v["damaged"].as_array().unwrap().is_empty());
    let table = dead_letters(&state, &["list"]);
    assert!(table.status.success() && String::from_utf8_lossy(&table.stdout).contains(&entry), "{}", stderr(&table));

    // show --events: the events of the batch, exactly.
    let v = json_ok(&dead_letters(&state, &["show", &entry, "--events", "--output", "json"]));
    let events: Vec<Event> = serde_json::from_value(v["batch"].clone()).unwrap();
    assert_eq!(events, payload.events);
    let v = json_ok(&dead_letters(&state, &["show", &entry, "--output", "json"]));
    assert!(v.get("batch").is_none(), "{v}");

    // resend while the cause persists: refused again, kept.
    let o = dead_letters(&state, &["resend", &entry]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("refused dead letter") && stderr(&o).contains("413") && stderr(&o).contains("it is kept"), "{}", stderr(&o));
    assert_eq!(json_ok(&dead_letters(&state, &["list", "--output", "json"]))["entries"].as_array().unwrap().len(), 1);
    assert_eq!(stored(&server, &ws, "DLTEST"), 0);

    // The operator raises the limit: the resend is stored and the entry removed.
    let addr = server.addr();
    server.stop();
    let server = ServerProc::start_on(&data, &addr, &[]);
    let v = json_ok(&dead_letters(&state, &["resend", &entry, "--output", "json"]));
    assert_eq!((v["resent"].as_bool(), v["duplicate"].as_bool(), v["accepted"].as_u64()), (Some(true), Some(false), Some(3)), "{v}");
    assert_eq!(v["batch_id"], payload.batch_id.to_string().as_str());
    assert_eq!(json_ok(&dead_letters(&state, &["list", "--output", "json"]))["entries"].as_array().unwrap().len(), 0);
    assert_eq!(stored(&server, &ws, "DLTEST"), 3);
    let o = dead_letters(&state, &["resend", &entry]);
    assert!(!o.status.success() && stderr(&o).contains("no dead letter"), "{}", stderr(&o));

    // The same batch kept twice and resent: the server has it, nothing doubles.
    let again = keep(&state, &payload, &frame, 413, &refusal);
    let v = json_ok(&dead_letters(&state, &["resend", &again, "--output", "json"]));
    assert_eq!(v["duplicate"].as_bool(), Some(true), "{v}");
    assert_eq!(stored(&server, &ws, "DLTEST"), 3);

    // delete.
    let other = BatchPayload { batch_id: BatchId::new(), created: 2, events: big_events("DLOTHER", 1) };
    let other_frame = wire::encode(&other, Codec::Zstd);
    let gone = keep(&state, &other, &other_frame, 400, "invalid batch");
    let v = json_ok(&dead_letters(&state, &["delete", &gone, "--output", "json"]));
    assert_eq!(v["deleted"].as_bool(), Some(true));
    assert_eq!(json_ok(&dead_letters(&state, &["list", "--output", "json"]))["entries"].as_array().unwrap().len(), 0);
    let o = dead_letters(&state, &["delete", &gone]);
    assert!(!o.status.success() && stderr(&o).contains("no dead letter"), "{}", stderr(&o));
    assert_eq!(stored(&server, &ws, "DLOTHER"), 0);
    let o = dead_letters(&state, &["show", "../identity.json"]);
    assert!(!o.status.success() && stderr(&o).contains("invalid dead-letter id"), "{}", stderr(&o));
}

#[test]
fn a_damaged_entry_is_named_by_list_and_show_and_the_others_still_list() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("agent");
    std::fs::create_dir_all(&state).unwrap();
    let payload = BatchPayload { batch_id: BatchId::new(), created: 1, events: big_events("DLBAD", 1) };
    let frame = wire::encode(&payload, Codec::Zstd);
    let good = keep(&state, &payload, &frame, 400, "invalid batch");
    let tampered = keep(&state, &payload, &frame, 400, "invalid batch");
    let dir = custos_agent::deadletter::dead_letter_dir(&state);
    // Flip a byte of the sealed header of one entry.
    let path = dir.join(format!("{tampered}.dl"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    // And a file of junk under an entry's name.
    let junk = "0190f5c2-0000-7000-8000-000000000001";
    std::fs::write(dir.join(format!("{junk}.dl")), b"not an entry at all").unwrap();

    let v = json_ok(&dead_letters(&state, &["list", "--output", "json"]));
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{v}");
    assert_eq!(entries[0]["id"], good.as_str());
    let damaged = v["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 2, "{v}");
    for name in [&tampered, &junk.to_string()] {
        let d = damaged.iter().find(|d| d["file"].as_str().unwrap().contains(name.as_str())).unwrap_or_else(|| panic!("{name} not named: {v}"));
        assert!(d["error"].as_str().unwrap().contains("is damaged"), "{d}");
    }
    let table = dead_letters(&state, &["list"]);
    assert!(table.status.success());
    assert!(String::from_utf8_lossy(&table.stdout).contains(&format!("damaged: dead letter {}", path.display())), "{}", String::from_utf8_lossy(&table.stdout));

    let o = dead_letters(&state, &["show", &tampered]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains(&format!("{tampered}.dl")) && stderr(&o).contains("fails authentication"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    let o = dead_letters(&state, &["resend", junk]);
    assert!(!o.status.success() && stderr(&o).contains(&format!("{junk}.dl")), "{}", stderr(&o));
    // A damaged entry can be deleted.
    json_ok(&dead_letters(&state, &["delete", junk, "--output", "json"]));
}
