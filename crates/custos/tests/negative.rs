//! Every refusal is clear, stores nothing, and leaves the server serving.

mod common;
use common::*;
use custos_model::wire::{self, BatchPayload, Codec};
use custos_model::{BatchId, Category, Event, Level, TableName};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

struct Setup {
    _tmp: tempfile::TempDir,
    server: ServerProc,
    ws: String,
    state: std::path::PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("data"));
    let (ws, key) = server.create_workspace("neg");
    let state = tmp.path().join("agent");
    let out = enroll(&server, &key, &state);
    assert!(out.status.success(), "{}", stderr(&out));
    Setup { _tmp: tmp, server, ws, state }
}

fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| Event {
            table: TableName::new("logs").unwrap(),
            time: custos_model::now_micros() + i as i64,
            level: Level::Enhanced,
            category: Category::Logs,
            host: "test-host".into(),
            message: format!("event {i}"),
            attrs: Default::default(),
        })
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// POST a body to /v1/ingest with the given client; (status, body text).
async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<(u16, String), String> {
    match client.post(format!("{url}/v1/ingest")).body(body).send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            Ok((s, r.text().await.unwrap_or_default()))
        }
        Err(e) => Err(custos_agent::error_chain(&e)),
    }
}

#[test]
fn enrollment_refuses_a_wrong_pin_and_wrong_or_reused_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("data"));
    let (ws, key) = server.create_workspace("enroll");

    // Wrong pin: the agent refuses the server before sending the key.
    let wrong_pin = "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let out = std::process::Command::new(bin())
        .args(["agent", "enroll", "--server", &server.url(), "--enrollment-key", &key, "--pin", wrong_pin, "--state-dir"])
        .arg(tmp.path().join("a0"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not match the pinned key"), "{}", stderr(&out));
    assert!(!tmp.path().join("a0/identity.json").exists());

    // Wrong key.
    let out = enroll(&server, "cek_not-a-real-key", &tmp.path().join("a1"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("enrollment key is not valid"), "{}", stderr(&out));

    // The right key works once (the wrong pin above did not spend it)...
    let out = enroll(&server, &key, &tmp.path().join("a2"));
    assert!(out.status.success(), "{}", stderr(&out));
    // ...and only once.
    let out = enroll(&server, &key, &tmp.path().join("a3"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already used"), "{}", stderr(&out));
    assert!(!tmp.path().join("a3/identity.json").exists());

    // A new key from the admin enrolls another agent.
    let k = server.cli_json(&["workspace", "enrollment-key", &ws]);
    let out = enroll(&server, k["enrollment_key"].as_str().unwrap(), &tmp.path().join("a4"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(server.healthy());
}

#[test]
fn ingest_needs_a_certificate_from_this_service() {
    let s = setup();
    let url = s.server.url();
    let pin = s.server.pin();
    let frame = wire::encode(&BatchPayload { batch_id: BatchId::new(), created: 0, events: events(10) }, Codec::Zstd);
    rt().block_on(async {
        // No client certificate: a clear 401.
        let cfg = custos_agent::tls::client_config(vec![pin.clone()], None).unwrap();
        let client = custos_agent::identity::http_client(cfg).unwrap();
        let (status, body) = post(&client, &url, frame.clone()).await.unwrap();
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("client certificate is required"), "{body}");

        // A certificate from another CA: refused in the TLS handshake.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(vec![]).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).unwrap();
        let _ = ca_cert;
        let chain = vec![cert.der().clone()];
        let pk = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let cfg = custos_agent::tls::client_config(vec![pin.clone()], Some((chain, pk))).unwrap();
        let client = custos_agent::identity::http_client(cfg).unwrap();
        let err = post(&client, &url, frame.clone()).await.expect_err("foreign certificate must be refused");
        assert!(err.to_lowercase().contains("certificate") || err.contains("UnknownCA") || err.contains("alert"), "{err}");
    });
    assert_eq!(s.server.count(&s.ws, "logs"), 0, "nothing may be stored");
    assert!(s.server.healthy());
}

#[test]
fn malformed_truncated_and_oversized_batches_are_refused_and_nothing_is_stored() {
    let s = setup();
    let url = s.server.url();
    let (_, client) = custos_agent::identity::load(&s.state).unwrap();
    let good = wire::encode(&BatchPayload { batch_id: BatchId::new(), created: 0, events: events(100) }, Codec::Zstd);
    rt().block_on(async {
        let (st, body) = post(&client, &url, b"this is not a batch at all".to_vec()).await.unwrap();
        assert_eq!(st, 400, "{body}");
        assert!(body.contains("not a custos batch"), "{body}");

        let (st, body) = post(&client, &url, good[..good.len() - 7].to_vec()).await.unwrap();
        assert_eq!(st, 400, "{body}");
        assert!(body.contains("checksum") || body.contains("truncated"), "{body}");

        let (st, body) = post(&client, &url, good[..10].to_vec()).await.unwrap();
        assert_eq!(st, 400);
        assert!(body.contains("truncated"), "{body}");

        // Valid JSON that names a workspace: the payload may not choose one.
        let json = br#"{"batch_id":"0190c7a4-7c3e-7cc0-8000-000000000001","created":0,"workspace_id":"0190c7a4-7c3e-7cc0-8000-000000000002","events":[]}"#;
        let (st, body) = post(&client, &url, wire::encode_raw(json, Codec::Zstd)).await.unwrap();
        assert_eq!(st, 400);
        assert!(body.contains("workspace_id"), "{body}");

        // A bad table name inside an otherwise fine batch.
        let json = br#"{"batch_id":"0190c7a4-7c3e-7cc0-8000-000000000003","created":0,"events":[{"table":"x; DROP TABLE logs","time":0,"level":2,"category":"logs","host":"h"}]}"#;
        let (st, body) = post(&client, &url, wire::encode_raw(json, Codec::Zstd)).await.unwrap();
        assert_eq!(st, 400);
        assert!(body.contains("table name"), "{body}");

        // Oversized: more than the 16 MiB frame limit.
        let big = vec![0u8; 17 << 20];
        match post(&client, &url, big).await {
            Ok((st, body)) => {
                assert_eq!(st, 413, "{body}");
                assert!(body.contains("exceeds the limit"), "{body}");
            }
            // The server may close the connection after answering 413 early.
            Err(e) => assert!(e.contains("connection") || e.contains("reset") || e.contains("broken pipe"), "{e}"),
        }
    });
    assert_eq!(s.server.count(&s.ws, "logs"), 0, "refused batches must store nothing");
    // The server still serves, and a good batch after all that is stored.
    rt().block_on(async {
        let (st, body) = post(&client, &url, good.clone()).await.unwrap();
        assert_eq!(st, 200, "{body}");
    });
    assert_eq!(s.server.count(&s.ws, "logs"), 100);
}

#[test]
fn a_retried_batch_is_stored_once() {
    let s = setup();
    let url = s.server.url();
    let (_, client) = custos_agent::identity::load(&s.state).unwrap();
    let frame = wire::encode(&BatchPayload { batch_id: BatchId::new(), created: 0, events: events(50) }, Codec::Zstd);
    rt().block_on(async {
        let (st, body) = post(&client, &url, frame.clone()).await.unwrap();
        assert_eq!(st, 200);
        assert!(body.contains("\"duplicate\":false"), "{body}");
        let (st, body) = post(&client, &url, frame.clone()).await.unwrap();
        assert_eq!(st, 200);
        assert!(body.contains("\"duplicate\":true"), "{body}");
    });
    assert_eq!(s.server.count(&s.ws, "logs"), 50);
    // Also once the first copy is in a segment (after the query's flush).
    rt().block_on(async {
        let (_, body) = post(&client, &url, frame.clone()).await.unwrap();
        assert!(body.contains("\"duplicate\":true"), "{body}");
    });
    assert_eq!(s.server.count(&s.ws, "logs"), 50);
}

fn read_some(addr: &str, send: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(send).unwrap();
    let mut buf = vec![0u8; 512];
    match s.read(&mut buf) {
        Ok(n) => buf[..n].to_vec(),
        Err(_) => Vec::new(),
    }
}

/// A minimal TLS 1.1 ClientHello (no extensions, two CBC suites).
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend_from_slice(&[0x42; 32]); // random
    hello.push(0); // session id
    // Cipher suites: two the server supports under TLS 1.2 (ECDHE-ECDSA/RSA
    // AES-128-GCM), so only the version can be the reason for refusal.
    hello.extend_from_slice(&[0x00, 0x08, 0xc0, 0x2b, 0xc0, 0x2f, 0x00, 0x2f, 0x00, 0x35]);
    hello.extend_from_slice(&[0x01, 0x00]); // compression: null
    let mut hs = vec![0x01, 0x00, (hello.len() >> 8) as u8, hello.len() as u8];
    hs.extend_from_slice(&hello);
    let mut rec = vec![0x16, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

#[test]
fn tls_1_1_and_plain_http_clients_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("data"));
    let reply = read_some(&server.addr(), &tls11_client_hello());
    // Either an alert record (0x15: protocol_version) or a closed connection;
    // never a ServerHello (0x16).
    assert!(reply.is_empty() || reply[0] == 0x15, "TLS 1.1 must be refused, got {reply:02x?}");
    if !reply.is_empty() {
        // protocol_version (70) or handshake_failure (40), as a fatal alert.
        assert!(matches!(reply.last(), Some(&70) | Some(&40)), "unexpected alert: {reply:02x?}");
    }
    let reply = read_some(&server.addr(), b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!reply.starts_with(b"HTTP/"), "plain HTTP must not be served: {}", String::from_utf8_lossy(&reply));
    assert!(server.healthy());
}

#[test]
fn admin_routes_need_the_admin_token() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("data"));
    let out = std::process::Command::new(bin())
        .args(["workspace", "list", "--server", &server.url(), "--ca", server.info["ca"].as_str().unwrap(), "--token", "cst_wrong"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("invalid token"), "{}", stderr(&out));
    let out = server.cli(&["workspace", "create", "x", "--region", "elsewhere"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not served here"), "{}", stderr(&out));
    let out = server.cli(&["workspace", "show", "01a2012b-f157-70a9-84ff-b02d56f9845a"]);
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    let out = server.cli(&["workspace", "show", "nope"]);
    assert!(stderr(&out).contains("invalid workspace id"), "{}", stderr(&out));
}

#[test]
fn queries_cannot_change_anything_or_read_files() {
    let s = setup();
    for sql in [
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
        "INSERT INTO logs VALUES (1)",
        "DROP TABLE logs",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let out = s.server.cli(&["query", "--workspace", &s.ws, sql]);
        assert!(!out.status.success(), "{sql} must be refused");
        assert!(stderr(&out).contains("query failed"), "{sql}: {}", stderr(&out));
    }
    let out = s.server.cli(&["query", "--workspace", &s.ws, "SELECT * FROM no_such_table"]);
    assert!(stderr(&out).contains("no_such_table"), "{}", stderr(&out));
}
