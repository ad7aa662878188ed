//! Workspace keys on a running server: automatic rotation on schedule
//! (injected clock), with the older segments rewrapped and still readable;
//! the same, and revocation and a deleted key, with the keys in an HSM
//! (PKCS#11, a real SoftHSM2: `scripts/test.sh` installs it).

use std::sync::Arc;

use custos_catalog::Workspace;
use custos_model::{AgentId, Category, Event, Level, TableName, WorkspaceId};
use custos_server::clock::ManualClock;
use custos_server::config::ServerConfig;
use custos_server::Server;
use custos_store::{KeyState, SegmentBuilder};

const DAY: i64 = 86_400 * 1_000_000;

async fn server(rotate_after_days: u32) -> (tempfile::TempDir, Server, Arc<ManualClock>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig { data_dir: tmp.path().join("data"), listen: "127.0.0.1:0".into(), ..Default::default() };
    cfg.encryption.rotate_after_days = rotate_after_days;
    let clock = Arc::new(ManualClock::new(custos_model::now_micros()));
    let server = Server::start_with_clock(cfg, clock.clone()).await.unwrap();
    (tmp, server, clock)
}

/// A sealed segment of `ws` stored and committed as ingest would.
async fn store_segment(server: &Server, ws: WorkspaceId) {
    let s = server.state();
    let table = TableName::new("logs").unwrap();
    let mut b = SegmentBuilder::new(ws, table.clone());
    let ev = Event {
        table: table.clone(),
        time: 1_000,
        level: Level::Enhanced,
        category: Category::Logs,
        host: "h".into(),
        message: "kept across rotations".into(),
        attrs: Default::default(),
    };
    b.push(AgentId::new(), &ev);
    let id = custos_model::SegmentId::new();
    let enc = b.finish_sealed(id, s.keys.as_ref()).unwrap();
    let seg = custos_server::ingest::catalog_entry(ws, table, id, &enc, 0);
    s.storage.put(&seg.path, enc.bytes).await.unwrap();
    s.catalog.commit_segments(&[seg], &[], 0).await.unwrap();
}

async fn workspace(server: &Server) -> WorkspaceId {
    let ws = WorkspaceId::new();
    let w = Workspace { id: ws, name: "keys".into(), region: "local".into(), retention_days: 7, created_at: 0, lockbox: true, policy: Default::default(), plan: "paid".into(), lock: None };
    server.state().catalog.create_workspace(&w).await.unwrap();
    ws
}

/// Waits (up to 5 s) for the background rewrap to leave no segment under an
/// old version and for the versions nothing needs to be destroyed.
async fn rewrapped_and_forgotten(s: &Arc<custos_server::AppState>, ws: WorkspaceId) {
    for _ in 0..200 {
        let pending = custos_server::keys::status(s, ws).await.unwrap().segments_pending_rewrap;
        if pending == 0 && s.keys.versions(ws).unwrap().len() == 1 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the rewrap and the removal of unused key versions did not finish");
}

#[tokio::test]
async fn keys_rotate_on_schedule_and_older_segments_are_rewrapped_and_readable() {
    let (_tmp, server, clock) = server(90).await;
    let s = server.state().clone();
    let ws = workspace(&server).await;
    store_segment(&server, ws).await;
    assert_eq!(s.keys.versions(ws).unwrap().len(), 1);

    // Not yet due: nothing happens.
    clock.advance(89 * DAY);
    assert!(custos_server::keys::rotate_due(&s).await.unwrap().is_empty());
    // Due: a new active version.
    clock.advance(2 * DAY);
    assert_eq!(custos_server::keys::rotate_due(&s).await.unwrap(), vec![ws]);
    // The rewrap runs in the background; then the retired version, which
    // nothing needs any more, is destroyed.
    rewrapped_and_forgotten(&s, ws).await;
    let versions: Vec<_> = s.keys.versions(ws).unwrap().iter().map(|v| (v.key.version, v.state)).collect();
    assert_eq!(versions, vec![(2, KeyState::Active)]);
    // At the moment of a rotation the old version is retired, its segment
    // waiting for the rewrap (what `custos key rotate` answers).
    let st = custos_server::keys::rotate(&s, ws).await.unwrap();
    let states: Vec<&str> = st.versions.iter().map(|v| v.state.as_str()).collect();
    assert_eq!(states, ["retired", "active"]);
    assert_eq!(st.segments_pending_rewrap, 1);
    rewrapped_and_forgotten(&s, ws).await;
    let resp = custos_server::query::run(s.catalog.as_ref(), s.storage.clone(), s.keys.clone(), ws, "SELECT message FROM logs", 10, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(resp.rows, vec![vec![serde_json::json!("kept across rotations")]]);
}

#[tokio::test]
async fn automatic_rotation_can_be_turned_off() {
    let (_tmp, server, clock) = server(0).await;
    let s = server.state().clone();
    let ws = workspace(&server).await;
    store_segment(&server, ws).await;
    clock.advance(1000 * DAY);
    assert!(custos_server::keys::rotate_due(&s).await.unwrap().is_empty());
    assert_eq!(s.keys.versions(ws).unwrap().len(), 1);
}

const MODULES: [&str; 2] = ["/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"];

/// A SoftHSM2 token directory with one token, `custos`, for this test
/// binary (SoftHSM2 reads SOFTHSM2_CONF and its tokens once per process,
/// and only the PKCS#11 test below loads it).
fn softhsm(dir: &std::path::Path) -> std::path::PathBuf {
    let module = MODULES.iter().map(std::path::PathBuf::from).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("SoftHSM2 is not installed (no {}): install it with `apt-get install softhsm2` (scripts/test.sh does)", MODULES.join(" or "))
    });
    std::fs::create_dir_all(dir.join("tokens")).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(&conf, format!("directories.tokendir = {}\nobjectstore.backend = file\n", dir.join("tokens").display())).unwrap();
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let out = std::process::Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "custos", "--pin", "1234", "--so-pin", "5678"])
        .output()
        .unwrap_or_else(|e| panic!("softhsm2-util: {e}: install it with `apt-get install softhsm2` (scripts/test.sh does)"));
    assert!(out.status.success(), "softhsm2-util --init-token: {}", String::from_utf8_lossy(&out.stderr));
    module
}

#[tokio::test]
async fn keys_in_an_hsm_rotate_on_schedule_revoke_and_a_deleted_key_stops_ingest() {
    let tmp = tempfile::tempdir().unwrap();
    let module = softhsm(&tmp.path().join("hsm"));
    std::fs::write(tmp.path().join("hsm.pin"), "1234\n").unwrap();
    let toml = format!(
        "[encryption]\nprovider = \"pkcs11\"\npkcs11_module = \"{}\"\npkcs11_token_label = \"custos\"\npkcs11_pin_file = \"{}\"",
        module.display(),
        tmp.path().join("hsm.pin").display()
    );
    let mut cfg = ServerConfig::from_toml_str(&toml).unwrap();
    cfg.data_dir = tmp.path().join("data");
    cfg.listen = "127.0.0.1:0".into();
    let clock = Arc::new(ManualClock::new(custos_model::now_micros()));
    let server = Server::start_with_clock(cfg, clock.clone()).await.unwrap();
    let s = server.state().clone();
    assert!(s.keys.name().starts_with("pkcs11 token \"custos\""), "{}", s.keys.name());
    let ws = workspace(&server).await;
    store_segment(&server, ws).await;
    let query = |s: Arc<custos_server::AppState>| async move {
        custos_server::query::run(s.catalog.as_ref(), s.storage.clone(), s.keys.clone(), ws, "SELECT message FROM logs", 10, std::time::Duration::from_secs(30)).await
    };

    // Scheduled rotation: dated by the marker in the token.
    clock.advance(91 * DAY);
    assert_eq!(custos_server::keys::rotate_due(&s).await.unwrap(), vec![ws]);
    // Rewrapped under pkcs11 v2; then v1, which nothing needs any more, is
    // destroyed in the token.
    rewrapped_and_forgotten(&s, ws).await;
    assert_eq!(query(s.clone()).await.unwrap().rows, vec![vec![serde_json::json!("kept across rotations")]]);

    // Revoked: queries fail naming the key, ingest is refused (503).
    custos_server::keys::set_revoked(&s, ws, true).await.unwrap();
    let e = query(s.clone()).await.unwrap_err().to_string();
    assert!(e.contains("revoked") && e.contains("pkcs11 v2"), "{e}");
    let e = custos_server::keys::check_writable(&s, ws).unwrap_err();
    assert!(matches!(e, custos_server::ServerError::Unavailable(_)), "{e}");
    custos_server::keys::set_revoked(&s, ws, false).await.unwrap();
    custos_server::keys::check_writable(&s, ws).unwrap();
    assert_eq!(query(s.clone()).await.unwrap().rows.len(), 1);

    // The customer deletes the current key in the HSM: ingest is refused
    // (the agents keep their data) and queries fail naming it.
    let ctx = cryptoki::context::Pkcs11::new(&module).unwrap();
    let _ = ctx.initialize(cryptoki::context::CInitializeArgs::new(cryptoki::context::CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx.get_slots_with_token().unwrap().into_iter().find(|sl| ctx.get_token_info(*sl).unwrap().label() == "custos").unwrap();
    let admin = ctx.open_rw_session(slot).unwrap();
    let _ = admin.login(cryptoki::session::UserType::User, Some(&cryptoki::types::AuthPin::from("1234".to_string())));
    let label = format!("custos:{ws}:v2").into_bytes();
    let found = admin.find_objects(&[cryptoki::object::Attribute::Label(label)]).unwrap();
    assert_eq!(found.len(), 1);
    admin.destroy_object(found[0]).unwrap();
    let e = custos_server::keys::check_writable(&s, ws).unwrap_err();
    assert!(matches!(e, custos_server::ServerError::Unavailable(_)) && e.to_string().contains("pkcs11 v2"), "{e}");
    let e = query(s.clone()).await.unwrap_err().to_string();
    assert!(e.contains("pkcs11 v2") && e.contains("not in the token"), "{e}");
    let st = custos_server::keys::status(&s, ws).await.unwrap();
    let states: Vec<&str> = st.versions.iter().map(|v| v.state.as_str()).collect();
    assert_eq!(states, ["revoked"], "the deleted current version shows as revoked");
}
