//! `custos telemetry ...` and `custos usage ...` through the real binary:
//! without an agent (changes saved to settings.json, checked against the
//! policy) and with one (a control socket served by the agent library in
//! this test process).

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

struct Host {
    _dir: tempfile::TempDir,
    state: PathBuf,
    config: PathBuf,
    policy: PathBuf,
}

fn host() -> Host {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let policy = dir.path().join("policy.toml");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[[sources]]\ntype = \"stdin\"\n\n[telemetry]\nlevel = \"basic\"\npolicy_file = \"{}\"\n",
            policy.display()
        ),
    )
    .unwrap();
    Host { _dir: dir, state, config, policy }
}

impl Host {
    fn run(&self, args: &[&str]) -> Output {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--state-dir", self.state.to_str().unwrap(), "--config", self.config.to_str().unwrap()]);
        common::custos(&a)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        let out = self.run(&a);
        assert!(out.status.success(), "custos {args:?} failed: {}", common::stderr(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("bad json ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    fn saved(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.state.join("settings.json")).unwrap()).unwrap()
    }
}

fn origin(v: &Value, key: &str) -> (Value, String) {
    (v[key]["value"].clone(), v[key]["origin"].as_str().unwrap().to_string())
}

#[test]
fn without_an_agent_status_shows_values_and_their_origins() {
    let h = host();
    let v = h.json(&["telemetry", "status"]);
    assert_eq!(v["agent_running"], false);
    assert_eq!(origin(&v, "level"), (Value::from(1), "config".into()));
    assert_eq!(v["level"]["name"], "basic");
    assert_eq!(origin(&v, "enabled"), (Value::from(true), "default".into()));
    assert_eq!(origin(&v, "usage"), (Value::from(true), "default".into()));
    assert_eq!(v["policy_file"], h.policy.to_str().unwrap());
    assert_eq!(v["policy_error"], Value::Null);
    assert_eq!(v["runtime"], Value::Null);
    let out = h.run(&["telemetry", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("origin") && text.contains("1 (basic)") && text.contains("not running"), "{text}");
}

#[test]
fn without_an_agent_changes_are_saved_and_take_effect_at_start() {
    let h = host();
    let v = h.json(&["telemetry", "level", "full"]);
    assert_eq!(v["change"]["applied"], "when the agent starts");
    assert_eq!(origin(&v, "level"), (Value::from(3), "local".into()));
    h.json(&["telemetry", "disable"]);
    h.json(&["usage", "disable"]);
    assert_eq!(h.saved(), serde_json::json!({"version": 1, "level": 3, "enabled": false, "usage": false}));
    let v = h.json(&["telemetry", "status"]);
    assert_eq!(origin(&v, "enabled"), (Value::from(false), "local".into()));
    assert_eq!(origin(&v, "usage"), (Value::from(false), "local".into()));
    let out = h.run(&["telemetry", "enable"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("telemetry enabled in") && text.contains("takes effect when the agent starts"), "{text}");
    let out = h.run(&["telemetry", "level", "7"]);
    assert!(!out.status.success());
    assert!(common::stderr(&out).contains("invalid level"), "{}", common::stderr(&out));
}

#[test]
fn a_change_the_policy_forbids_is_refused_and_not_saved() {
    let h = host();
    std::fs::write(&h.policy, "[telemetry]\nlevel = 0\nusage = true\n").unwrap();
    let out = h.run(&["telemetry", "level", "2"]);
    assert!(!out.status.success());
    let e = common::stderr(&out);
    assert!(
        e.contains("refused by policy")
            && e.contains("`level`")
            && e.contains("0 (security)")
            && e.contains("policy.toml"),
        "{e}"
    );
    let out = h.run(&["usage", "disable"]);
    assert!(!out.status.success());
    assert!(common::stderr(&out).contains("`usage`"), "{}", common::stderr(&out));
    assert!(!h.state.join("settings.json").exists());
    let v = h.json(&["telemetry", "status"]);
    assert_eq!(origin(&v, "level"), (Value::from(0), "policy".into()));
}

#[test]
fn a_broken_policy_disables_telemetry_and_says_why() {
    let h = host();
    std::fs::write(&h.policy, "[telemetry]\nlevel = \"loud\"\n").unwrap();
    let v = h.json(&["telemetry", "status"]);
    assert_eq!(origin(&v, "enabled"), (Value::from(false), "policy".into()));
    assert!(v["policy_error"].as_str().unwrap().contains("loud"), "{v}");
    let out = h.run(&["telemetry", "enable"]);
    assert!(!out.status.success());
    assert!(common::stderr(&out).contains("stays disabled"), "{}", common::stderr(&out));
    let out = h.run(&["telemetry", "status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("policy error"));
}

fn socket_args(state: &Path, socket: &Path, args: &[&str]) -> Output {
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["--state-dir", state.to_str().unwrap(), "--socket", socket.to_str().unwrap(), "--output", "json"]);
    common::custos(&a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_agent_a_change_goes_through_the_socket_at_once() {
    use custos_agent::control::{ControlServer, RuntimeStatus};
    use custos_agent::settings::SettingsHandle;
    use std::sync::Arc;
    let h = host();
    let cfg = custos_agent::config::AgentConfig::from_path(&h.config).unwrap();
    let settings = SettingsHandle::open(&h.state, &cfg.telemetry).unwrap();
    let mut rx = settings.subscribe();
    let socket = cfg.telemetry.control_socket_path(&h.state);
    let status: Arc<dyn custos_agent::control::StatusSource> =
        Arc::new(|| RuntimeStatus { queued_events: 5, ..Default::default() });
    let server =
        ControlServer::start(&socket, settings.clone(), status, custos_agent::security::discard()).await.unwrap();

    let (st, so) = (h.state.clone(), socket.clone());
    let out =
        tokio::task::spawn_blocking(move || socket_args(&st, &so, &["telemetry", "level", "security"])).await.unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["agent_running"], true);
    assert_eq!(v["change"]["applied"], "now");
    assert_eq!(v["runtime"]["queued_events"], 5);
    assert!(rx.has_changed().unwrap(), "the agent saw the change without a restart");
    assert_eq!(u8::from(rx.borrow_and_update().level.value), 0);

    // The default socket is found from --config / --state-dir alone.
    let (h2, out) = tokio::task::spawn_blocking(move || {
        let out = h.run(&["usage", "disable", "--output", "json"]);
        (h, out)
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(!settings.effective().usage.value);

    std::fs::write(&h2.policy, "[telemetry]\nenabled = true\n").unwrap();
    let (st, so) = (h2.state.clone(), socket.clone());
    let out = tokio::task::spawn_blocking(move || socket_args(&st, &so, &["telemetry", "disable"])).await.unwrap();
    assert!(!out.status.success());
    assert!(common::stderr(&out).contains("refused by policy"), "{}", common::stderr(&out));
    server.shutdown().await;
}
