//! The TLS lifecycle of agents with the real binary, real TLS and a real
//! server: a pin mismatch is refused and named, a server key rotation
//! across pins keeps the agents that learned the new pin, an expired
//! certificate is refused in the handshake, certificates are renewed with
//! the old one accepted until it expires, and a revoked agent is refused at
//! once.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad json ({e}): {} / {}", String::from_utf8_lossy(&out.stdout), stderr(out)))
}

/// `custos agent refresh-identity`.
fn refresh(state: &Path) -> Output {
    Command::new(bin()).args(["agent", "refresh-identity", "--output", "json", "--state-dir"]).arg(state).output().unwrap()
}

fn refresh_ok(state: &Path) -> Value {
    let out = refresh(state);
    assert!(out.status.success(), "refresh-identity: {}", stderr(&out));
    json(&out)
}

/// `custos server rotate-key --data-dir D <action>`.
fn rotate(dir: &Path, action: &str) -> Value {
    let out = Command::new(bin())
        .args(["server", "rotate-key", "--data-dir"])
        .arg(dir)
        .args([action, "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "rotate-key {action}: {}", stderr(&out));
    json(&out)
}

/// `custos agent run --once`, giving up after `secs` without the server.
fn ship(state: &Path, config: &Path, secs: u64) -> Output {
    Command::new(bin())
        .args(["agent", "run", "--once", "--output", "json", "--give-up-after-secs", &secs.to_string(), "--state-dir"])
        .arg(state)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

/// An enrolled agent with its own log file and configuration.
struct Agent {
    state: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn enroll(server: &ServerProc, key: &str, dir: &Path, name: &str) -> Agent {
        let state = dir.join(name);
        let out = enroll(server, key, &state);
        assert!(out.status.success(), "enroll {name}: {}", stderr(&out));
        let log = dir.join(format!("{name}.log"));
        std::fs::write(&log, "").unwrap();
        let config = dir.join(format!("{name}.toml"));
        write_agent_config(&config, log.to_str().unwrap());
        Agent { state, config, log }
    }

    fn write(&self, line: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.log).unwrap();
        writeln!(f, "{line}").unwrap();
    }

    fn identity(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.state.join("identity.json")).unwrap()).unwrap()
    }

    fn id(&self) -> String {
        self.identity()["agent_id"].as_str().unwrap().to_string()
    }

    /// Ship what was written; assert it worked.
    fn ships(&self) {
        let out = ship(&self.state, &self.config, 20);
        assert!(out.status.success(), "agent run: {}", stderr(&out));
    }
}

/// `GET /v1/agent/identity` with a client built from `state` the way the
/// agent builds it: (status, body) or the connection error chain.
fn call_identity(state: &Path) -> Result<(u16, String), String> {
    let (id, client) = custos_agent::identity::load(state).map_err(|e| e.to_string())?;
    rt().block_on(async move {
        match client.get(format!("{}/v1/agent/identity", id.server)).send().await {
            Ok(r) => {
                let s = r.status().as_u16();
                Ok((s, r.text().await.unwrap_or_default()))
            }
            Err(e) => Err(custos_agent::error_chain(&e)),
        }
    })
}

/// A server configuration with agent certificates valid `secs` seconds.
fn short_lived(dir: &Path, secs: u64) -> PathBuf {
    let path = dir.join("short-lived.toml");
    std::fs::write(&path, format!("agent_cert_validity_secs = {secs}\n")).unwrap();
    path
}

fn time_of(v: &Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(v.as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap()
}

fn sleep_until(t: time::OffsetDateTime) {
    let left = t - time::OffsetDateTime::now_utc();
    if left.is_positive() {
        std::thread::sleep(Duration::from_secs_f64(left.as_seconds_f64()));
    }
}

#[test]
fn an_agent_pinning_another_key_cannot_ship_and_the_error_names_the_pin_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("data"));
    let (ws, key) = server.create_workspace("pins");
    let a = Agent::enroll(&server, &key, tmp.path(), "a");
    let mut id = a.identity();
    let foreign = "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    id["pins"] = serde_json::json!([foreign]);
    std::fs::write(a.state.join("identity.json"), serde_json::to_vec_pretty(&id).unwrap()).unwrap();
    a.write("must not arrive");
    let out = ship(&a.state, &a.config, 3);
    assert!(!out.status.success(), "shipped to a server whose key is not pinned");
    let err = stderr(&out);
    assert!(err.contains("does not match the pinned key"), "{err}");
    assert!(err.contains(&server.pin()) && err.contains(foreign), "the error names both keys: {err}");
    let out = refresh(&a.state);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not match the pinned key"), "{}", stderr(&out));
    assert_eq!(a.identity()["pins"], serde_json::json!([foreign]), "a refused server changed the pins");
    assert_eq!(server.count(&ws, "logs"), 0);
}

#[test]
fn a_server_key_rotation_keeps_the_agents_that_learned_the_new_pin() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = ServerProc::start(&dir);
    let addr = server.addr();
    let (ws, key) = server.create_workspace("rotation");
    let learner = Agent::enroll(&server, &key, tmp.path(), "learner");
    let key2 = server.cli_json(&["workspace", "enrollment-key", &ws])["enrollment_key"].as_str().unwrap().to_string();
    let laggard = Agent::enroll(&server, &key2, tmp.path(), "laggard");
    let old_pin = server.pin();

    // Nothing staged: nothing to learn.
    let r = refresh_ok(&learner.state);
    assert_eq!((r["pins_changed"].as_bool(), r["renewed"].as_bool()), (Some(false), Some(false)), "{r}");

    let staged = rotate(&dir, "stage");
    let next_pin = staged["next_pin"].as_str().unwrap().to_string();
    assert_eq!(staged["pin"], old_pin.as_str());
    assert_ne!(next_pin, old_pin);

    // The running server publishes the staged pin; the learner adopts it.
    let r = refresh_ok(&learner.state);
    assert_eq!(r["pins_changed"], true, "{r}");
    assert_eq!(r["pins"], serde_json::json!([old_pin, next_pin]));
    assert_eq!(learner.identity()["pins"], serde_json::json!([old_pin, next_pin]));
    learner.write("before the rotation");
    learner.ships();

    let activated = rotate(&dir, "activate");
    assert_eq!(activated["pin"], next_pin.as_str());
    assert_eq!(activated["prev_pin"], old_pin.as_str());
    assert_eq!(activated["restart_needed"], true);
    // Until it restarts, the server keeps serving the old key to everyone.
    assert_eq!(server.pin(), old_pin);
    let (status, body) = call_identity(&laggard.state).unwrap();
    assert_eq!(status, 200, "{body}");

    server.stop();
    let server = ServerProc::start_on(&dir, &addr, &[]);
    assert_eq!(server.pin(), next_pin);
    assert!(server.healthy(), "the admin CLI trusts the new key through the CA");

    learner.write("after the rotation");
    learner.ships();
    assert_eq!(server.count(&ws, "logs"), 2);
    // Once the old key is gone from the server, the learner drops its pin.
    let r = refresh_ok(&learner.state);
    assert_eq!(r["pins"], serde_json::json!([next_pin]), "{r}");

    laggard.write("never arrives");
    let out = ship(&laggard.state, &laggard.config, 3);
    assert!(!out.status.success(), "an agent that did not learn the pin shipped");
    assert!(stderr(&out).contains("does not match the pinned key"), "{}", stderr(&out));
    let out = refresh(&laggard.state);
    assert!(stderr(&out).contains("does not match the pinned key"), "{}", stderr(&out));
    assert_eq!(server.count(&ws, "logs"), 2);
    let status = rotate(&dir, "status");
    assert_eq!((status["restart_needed"].as_bool(), status["next_pin"].is_null()), (Some(false), true), "{status}");
}

#[test]
fn an_expired_agent_certificate_is_refused_in_the_tls_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let config = short_lived(tmp.path(), 3);
    let server = ServerProc::start_with(&tmp.path().join("data"), &["--config", config.to_str().unwrap()]);
    let (_, key) = server.create_workspace("expiry");
    let a = Agent::enroll(&server, &key, tmp.path(), "a");
    let not_after = time_of(&a.identity()["cert_not_after"]);
    sleep_until(not_after + time::Duration::seconds(2));
    let err = call_identity(&a.state).expect_err("an expired certificate was accepted");
    assert!(err.to_lowercase().contains("expired"), "{err}");
    let out = refresh(&a.state);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("the agent certificate expired at"), "{}", stderr(&out));
    // The server names it in its log, and keeps serving.
    assert!(server.healthy());
}

#[test]
fn certificates_are_renewed_two_thirds_into_their_life_and_the_old_one_works_until_it_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let config = short_lived(tmp.path(), 15);
    let server = ServerProc::start_with(&tmp.path().join("data"), &["--config", config.to_str().unwrap()]);
    let (ws, key) = server.create_workspace("renewal");
    let a = Agent::enroll(&server, &key, tmp.path(), "a");

    // Not due yet.
    let r = refresh_ok(&a.state);
    assert_eq!(r["renewed"], false, "{r}");
    let renew_after = time_of(&r["renew_after"]);
    let (old_not_before, old_not_after) = (time_of(&r["cert_not_before"]), time_of(&r["cert_not_after"]));
    assert_eq!(renew_after, old_not_before + (old_not_after - old_not_before) * 2 / 3);
    // Keep the old credentials aside.
    let old = tmp.path().join("old-state");
    std::fs::create_dir(&old).unwrap();
    for f in ["identity.json", "agent.key", "agent.crt", "ca.crt"] {
        std::fs::copy(a.state.join(f), old.join(f)).unwrap();
    }

    sleep_until(renew_after + time::Duration::milliseconds(300));
    let r = refresh_ok(&a.state);
    assert_eq!(r["renewed"], true, "{r}");
    let new_not_after = time_of(&r["cert_not_after"]);
    assert!(new_not_after > old_not_after, "{r}");
    assert_ne!(std::fs::read(a.state.join("agent.key")).unwrap(), std::fs::read(old.join("agent.key")).unwrap(), "a new key pair");
    assert!(!a.state.join("agent.next.key").exists() && !a.state.join("agent.next.crt").exists());
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(a.state.join("agent.key")).unwrap().permissions().mode() & 0o777, 0o600);
    }

    // The old certificate still works until it expires; the new one ships.
    assert_eq!(call_identity(&old).unwrap().0, 200);
    let listed = server.cli_json(&["agent", "list", "--workspace", &ws]);
    assert_eq!(time_of(&listed[0]["cert_not_after"]), new_not_after, "{listed}");
    assert_eq!(time_of(&listed[0]["prev_cert_not_after"]), old_not_after, "{listed}");
    a.write("with the renewed certificate");
    a.ships();
    assert_eq!(server.count(&ws, "logs"), 1);

    sleep_until(old_not_after + time::Duration::seconds(1));
    let err = call_identity(&old).expect_err("the old certificate outlived its expiry");
    assert!(err.to_lowercase().contains("expired"), "{err}");
    refresh_ok(&a.state);
    a.write("after the old certificate expired");
    a.ships();
    assert_eq!(server.count(&ws, "logs"), 2);
}

#[test]
fn a_revoked_agent_is_refused_at_once_and_the_cli_shows_it_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("data"));
    let (ws, key) = server.create_workspace("revocation");
    let (other_ws, _) = server.create_workspace("elsewhere");
    let a = Agent::enroll(&server, &key, tmp.path(), "a");
    let agent = a.id();
    a.write("before the revocation");
    a.ships();

    // Not through another workspace.
    let out = server.cli(&["agent", "revoke", "--workspace", &other_ws, &agent]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    assert_eq!(call_identity(&a.state).unwrap().0, 200);

    let listed = server.cli_json(&["agent", "list", "--workspace", &ws]);
    assert_eq!((listed[0]["id"].as_str(), listed[0]["status"].as_str()), (Some(agent.as_str()), Some("active")), "{listed}");

    let r = server.cli_json(&["agent", "revoke", "--workspace", &ws, &agent]);
    assert_eq!(r["status"], "revoked");
    assert!(r["revoked_at"].is_string(), "{r}");

    // At once, on every agent route.
    let (status, body) = call_identity(&a.state).unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains(&format!("agent {agent} was revoked at")), "{body}");
    let out = refresh(&a.state);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("was revoked at"), "{}", stderr(&out));
    let (id, client) = custos_agent::identity::load(&a.state).unwrap();
    let (status, body) = rt().block_on(async move {
        let r = client.post(format!("{}/v1/ingest", id.server)).body(vec![0u8; 16]).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("was revoked at"), "{body}");
    a.write("after the revocation");
    let _ = ship(&a.state, &a.config, 3);
    assert_eq!(server.count(&ws, "logs"), 1, "a revoked agent's batch was stored");

    // The CLI shows it, in JSON and for people.
    let listed = server.cli_json(&["agent", "list", "--workspace", &ws]);
    assert_eq!(listed[0]["status"], "revoked");
    assert_eq!(listed[0]["revoked_at"], r["revoked_at"]);
    let table = server.cli_raw(&["agent", "list", "--workspace", &ws]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains(&agent) && text.contains("revoked"), "{text}");
}

#[test]
fn a_running_agent_renews_its_certificate_by_itself_and_keeps_shipping_past_the_old_expiry() {
    let tmp = tempfile::tempdir().unwrap();
    let config = short_lived(tmp.path(), 15);
    let server = ServerProc::start_with(&tmp.path().join("data"), &["--config", config.to_str().unwrap()]);
    let (ws, key) = server.create_workspace("self-renewal");
    let a = Agent::enroll(&server, &key, tmp.path(), "a");
    let first = a.identity();
    let old_not_after = time_of(&first["cert_not_after"]);
    let agent_log = std::fs::File::create(tmp.path().join("agent-run.log")).unwrap();
    let mut child = Command::new(bin())
        .args(["agent", "run", "--state-dir"])
        .arg(&a.state)
        .arg("--config")
        .arg(&a.config)
        .env("CUSTOS_LOG", "info")
        .stderr(agent_log)
        .spawn()
        .unwrap();
    // Lines keep coming across the renewal (at 10 s) and the old expiry (15 s).
    let deadline = old_not_after + time::Duration::seconds(4);
    let mut n = 0;
    while time::OffsetDateTime::now_utc() < deadline {
        a.write(&format!("2026-11-29 10:00:00 ERROR line {n} across the renewal"));
        n += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let started = std::time::Instant::now();
    while server.count(&ws, "logs") < n {
        assert!(started.elapsed() < Duration::from_secs(60), "only {} of {n} lines arrived; see agent-run.log", server.count(&ws, "logs"));
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = child.kill();
    let _ = child.wait();
    let renewed = a.identity();
    assert!(time_of(&renewed["cert_not_after"]) > old_not_after, "the running agent renewed: {renewed}");
    assert_eq!(server.count(&ws, "logs"), n, "each line once");
    // The renewal was reported as a security event.
    let v = server.cli_json(&["query", "--workspace", &ws, "SELECT count(*) AS n FROM security_events WHERE kind = 'certificate_renewed'"]);
    assert!(v[0]["n"].as_u64().unwrap() >= 1, "{v}");
}
