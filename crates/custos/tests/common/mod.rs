//! Test harness: the real `custos` binary, a real server on 127.0.0.1.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_custos")
}

/// `../shared/corpus` beside the repository.
pub fn corpus() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus");
    assert!(p.is_dir(), "test corpus not found at {} (shared/ must sit beside the repository)", p.display());
    p
}

pub struct ServerProc {
    pub child: Child,
    pub dir: PathBuf,
    pub info: Value,
}

impl ServerProc {
    pub fn start(dir: &Path) -> ServerProc {
        Self::start_with(dir, &[])
    }

    pub fn start_with(dir: &Path, extra: &[&str]) -> ServerProc {
        Self::start_on(dir, "127.0.0.1:0", extra)
    }

    /// Start on a given address (to restart a server where its agents expect it).
    pub fn start_on(dir: &Path, listen: &str, extra: &[&str]) -> ServerProc {
        let _ = std::fs::remove_file(dir.join("server.json"));
        let log = std::fs::File::create(dir.with_extension("server.log")).unwrap();
        let child = Command::new(bin())
            .args(["server", "--data-dir"])
            .arg(dir)
            .args(["--listen", listen, "--output", "json"])
            .args(extra)
            .env("CUSTOS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        // Owned from here on: a panic below still kills the server (Drop).
        let mut sp = ServerProc { child, dir: dir.to_path_buf(), info: Value::Null };
        let started = Instant::now();
        let info_path = dir.join("server.json");
        loop {
            if let Ok(b) = std::fs::read(&info_path) {
                if let Ok(info) = serde_json::from_slice::<Value>(&b) {
                    sp.info = info;
                    sp.ensure_tester();
                    return sp;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "server did not start; see {}",
                dir.with_extension("server.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        self.info["url"].as_str().unwrap().to_string()
    }
    pub fn pin(&self) -> String {
        self.info["pin"].as_str().unwrap().to_string()
    }
    pub fn addr(&self) -> String {
        self.info["listen"].as_str().unwrap().to_string()
    }

    /// The token file of `tester`, a principal that owns every workspace the
    /// harness creates (service admins do not read workspace data).
    pub fn tester_token_file(&self) -> PathBuf {
        self.dir.with_extension("tester.token")
    }

    fn ensure_tester(&self) {
        let file = self.tester_token_file();
        if file.exists() {
            return;
        }
        let out = self.cli_as(
            self.info["admin_token_file"].as_str().unwrap(),
            &["principal", "create", "tester", "--output", "json"],
        );
        assert!(out.status.success(), "cannot create the tester principal: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        std::fs::write(&file, v["token"].as_str().unwrap()).unwrap();
    }

    /// Run a CLI command with the given token file.
    pub fn cli_as(&self, token_file: &str, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("CUSTOS_SERVER", self.url())
            .env("CUSTOS_CA", self.info["ca"].as_str().unwrap())
            .env("CUSTOS_TOKEN_FILE", token_file)
            .output()
            .unwrap()
    }

    /// Run an admin CLI command against this server with `--output json`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        self.cli_raw(&a)
    }

    /// Run a CLI command against this server as given: reading workspace
    /// data (`query`, `workspace tables`, `audit log`) and managing its keys
    /// (`key`, an owner's action) as `tester`, everything else as the
    /// service admin.
    pub fn cli_raw(&self, args: &[&str]) -> Output {
        let reads_data = matches!(args, ["query", ..] | ["workspace", "tables", ..] | ["audit", "log", ..] | ["key", ..]);
        let token = if reads_data {
            self.tester_token_file().display().to_string()
        } else {
            self.info["admin_token_file"].as_str().unwrap().to_string()
        };
        self.cli_as(&token, args)
    }

    /// Run and parse JSON, asserting success.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(out.status.success(), "custos {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("custos {args:?}: bad json ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    pub fn create_workspace(&self, name: &str) -> (String, String) {
        let v = self.cli_json(&["workspace", "create", name, "--region", "local"]);
        let id = v["id"].as_str().unwrap().to_string();
        self.cli_json(&["role", "grant", "tester", "owner", "--workspace", &id]);
        (id, v["enrollment_key"].as_str().unwrap().to_string())
    }

    pub fn count(&self, ws: &str, table: &str) -> i64 {
        let v = self.cli_json(&["query", "--workspace", ws, &format!("SELECT count(*) AS n FROM {table}")]);
        v[0]["n"].as_i64().unwrap()
    }

    pub fn healthy(&self) -> bool {
        self.cli(&["workspace", "list"]).status.success()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn custos(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

pub fn enroll(server: &ServerProc, key: &str, state: &Path) -> Output {
    Command::new(bin())
        .args([
            "agent",
            "enroll",
            "--server",
            &server.url(),
            "--enrollment-key",
            key,
            "--pin",
            &server.pin(),
            "--state-dir",
        ])
        .arg(state)
        .args(["--output", "json"])
        .output()
        .unwrap()
}

/// The `[telemetry]` section every test agent uses unless it tests consent:
/// level full (every line of the test logs is collected), and a policy file
/// that does not exist (so a policy on the test machine cannot interfere).
pub fn telemetry_section(path: &Path, level: &str) -> String {
    format!("[telemetry]\nlevel = \"{level}\"\npolicy_file = \"{}\"\n", path.with_extension("no-policy.toml").display())
}

pub fn write_agent_config(path: &Path, glob: &str) {
    let t = telemetry_section(path, "full");
    std::fs::write(path, format!("{t}\n[[sources]]\ntype = \"file\"\npaths = [\"{glob}\"]\ntable = \"logs\"\n")).unwrap();
}

pub fn agent_once(state: &Path, config: &Path) -> Output {
    Command::new(bin())
        .args(["agent", "run", "--once", "--give-up-after-secs", "20", "--output", "json", "--state-dir"])
        .arg(state)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

impl ServerProc {
    /// The server's `/metrics` text, read as the service admin.
    pub fn metrics_text(&self) -> String {
        let ca = std::fs::read(self.info["ca"].as_str().unwrap()).unwrap();
        let token = std::fs::read_to_string(self.info["admin_token_file"].as_str().unwrap()).unwrap();
        let url = format!("{}/metrics", self.url());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let http = reqwest::Client::builder()
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
                .build()
                .unwrap();
            let resp = http.get(url).bearer_auth(token.trim()).send().await.unwrap();
            assert!(resp.status().is_success(), "GET /metrics: {}", resp.status());
            resp.text().await.unwrap()
        })
    }

    /// One sample of `/metrics` (`name` with its labels as written, e.g.
    /// `custos_ingest_overloaded_total{reason="backlog"}`).
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics_text()
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
    }
}

/// Write a server configuration file beside `dir` and return its path (for
/// `ServerProc::start_with(dir, &["--config", path])`).
pub fn server_config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.with_extension("server.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Poll `cond` every 100 ms; fail the test naming `what` after `secs` seconds.
pub fn wait_secs(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An agent enrolled in `key`'s workspace, state in `dir/agent`, with one
/// file source over `dir/logs/*.log` at level full, `extra` TOML (sections
/// such as `[agent]` or `[queue]`, each ending in a newline) before the
/// sources, and `more` TOML after them (more `[[sources]]`).
/// Returns (state dir, logs dir, config file).
pub fn file_agent(server: &ServerProc, key: &str, dir: &Path, extra: &str, more: &str) -> (PathBuf, PathBuf, PathBuf) {
    let state = dir.join("agent");
    let out = enroll(server, key, &state);
    assert!(out.status.success(), "enroll: {}", stderr(&out));
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!("{}{extra}\n[[sources]]\ntype = \"file\"\npaths = [\"{}/*.log\"]\n{more}", telemetry_section(&cfg, "full"), logs.display()),
    )
    .unwrap();
    (state, logs, cfg)
}
