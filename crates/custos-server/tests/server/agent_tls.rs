//! The TLS lifecycle of agents against an in-process server with a manual
//! clock: certificate renewal (the new certificate accepted, the old one
//! until it expires, a renewal lost in a crash repeated with the old one),
//! revocation (at once, on every agent route, only through the agent's own
//! workspace), and the pins published while a server key rotation is
//! staged and activated.

use custos_server::{ManualClock, Server, ServerConfig};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;

struct Env {
    _tmp: Option<tempfile::TempDir>,
    dir: std::path::PathBuf,
    server: Option<Server>,
    clock: Arc<ManualClock>,
    http: reqwest::Client,
    url: String,
    ca_pem: String,
    admin: String,
}

/// An agent's key pair and certificate.
struct Creds {
    agent: String,
    key_pem: String,
    cert_pem: String,
}

fn csr(key: &rcgen::KeyPair) -> String {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, "custos-agent");
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn not_after_micros(cert_pem: &str) -> i64 {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let (_, na) = custos_server::pki::cert_validity(&der).unwrap();
    custos_server::pki::micros(na)
}

impl Env {
    async fn start() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let mut env = Env::start_at(&tmp.path().join("data")).await;
        env._tmp = Some(tmp);
        env
    }

    /// A server on data dir `dir` (another test phase may have used it).
    async fn start_at(dir: &std::path::Path) -> Env {
        let clock = Arc::new(ManualClock::new(custos_model::now_micros()));
        let mut env = Env {
            _tmp: None,
            dir: dir.to_path_buf(),
            server: None,
            clock,
            http: reqwest::Client::new(),
            url: String::new(),
            ca_pem: String::new(),
            admin: String::new(),
        };
        env.boot().await;
        env
    }

    /// Start the server on the data dir.
    async fn boot(&mut self) {
        let cfg = ServerConfig { data_dir: self.dir.clone(), listen: "127.0.0.1:0".into(), ..Default::default() };
        // After a restart (the previous phase's runtime dropped) the old
        // ingest log thread releases its lock once it notices.
        let mut tries = 0;
        let server = loop {
            match Server::start_with_clock(cfg.clone(), self.clock.clone()).await {
                Ok(s) => break s,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("server did not start: {e}"),
            }
        };
        let info = server.info().clone();
        self.ca_pem = std::fs::read_to_string(&info.ca).unwrap();
        self.http = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap();
        self.admin = std::fs::read_to_string(&info.admin_token_file).unwrap().trim().to_string();
        self.url = info.url;
        self.server = Some(server);
    }

    fn pin(&self) -> String {
        self.server.as_ref().unwrap().info().pin.clone()
    }

    async fn call(&self, token: Option<&str>, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut rb = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn ok(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(Some(token), method.clone(), path, body).await;
        assert!(s.is_success(), "{method} {path}: {s} {v}");
        v
    }

    /// A workspace and a principal holding `role` in it; (workspace id, token).
    async fn workspace_with(&self, name: &str, role: &str) -> (String, String) {
        let v = self.ok(&self.admin, Method::POST, "/v1/workspaces", Some(json!({"name": name, "region": "local"}))).await;
        let ws = v["id"].as_str().unwrap().to_string();
        let who = format!("{name}-{role}");
        let p = self.ok(&self.admin, Method::POST, "/v1/principals", Some(json!({"name": who}))).await;
        self.ok(&self.admin, Method::POST, &format!("/v1/workspaces/{ws}/roles"), Some(json!({"principal": who, "role": role}))).await;
        (ws, p["token"].as_str().unwrap().to_string())
    }

    async fn enroll(&self, ws: &str) -> Creds {
        let k = self.ok(&self.admin, Method::POST, &format!("/v1/workspaces/{ws}/enrollment-keys"), None).await;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let (s, v) = self
            .call(None, Method::POST, "/v1/enroll", Some(json!({"enrollment_key": k["enrollment_key"], "csr_pem": csr(&key), "hostname": "h"})))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        Creds {
            agent: v["agent_id"].as_str().unwrap().to_string(),
            key_pem: key.serialize_pem(),
            cert_pem: v["certificate_pem"].as_str().unwrap().to_string(),
        }
    }

    fn agent_client(&self, c: &Creds) -> reqwest::Client {
        let pem = format!("{}\n{}", c.cert_pem, c.key_pem);
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap())
            .build()
            .unwrap()
    }

    async fn as_agent(&self, c: &Creds, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut rb = self.agent_client(c).request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn identity(&self, c: &Creds) -> (StatusCode, Value) {
        self.as_agent(c, Method::GET, "/v1/agent/identity", None).await
    }

    /// Renew with a new key; the new credentials.
    async fn renew(&self, c: &Creds) -> Creds {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let (s, v) = self.as_agent(c, Method::POST, "/v1/agent/renew", Some(json!({"csr_pem": csr(&key)}))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        Creds { agent: c.agent.clone(), key_pem: key.serialize_pem(), cert_pem: v["certificate_pem"].as_str().unwrap().to_string() }
    }
}

#[tokio::test]
async fn identity_tells_the_agent_its_pins_and_when_to_renew() {
    let env = Env::start().await;
    let (ws, _) = env.workspace_with("ident", "owner").await;
    let a = env.enroll(&ws).await;
    let (s, v) = env.identity(&a).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["agent_id"], a.agent.as_str());
    assert_eq!(v["workspace_id"], ws.as_str());
    assert_eq!(v["pins"], json!([env.pin()]));
    let t = |k: &str| time::OffsetDateTime::parse(v[k].as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap();
    let (nb, na, ra) = (t("cert_not_before"), t("cert_not_after"), t("renew_after"));
    assert_eq!(na - nb, time::Duration::days(30) + time::Duration::minutes(5));
    assert_eq!(ra, nb + (na - nb) * 2 / 3);
}

#[tokio::test]
async fn renewal_issues_a_new_certificate_and_the_old_one_works_until_it_expires() {
    let env = Env::start().await;
    let (ws, owner) = env.workspace_with("renew", "owner").await;
    let old = env.enroll(&ws).await;
    let new = env.renew(&old).await;
    assert_ne!(new.cert_pem, old.cert_pem);
    assert_eq!(env.identity(&new).await.0, StatusCode::OK);
    assert_eq!(env.identity(&old).await.0, StatusCode::OK, "the previous certificate must keep working until it expires");
    let listed = env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}/agents"), None).await;
    assert_eq!(listed[0]["status"], "active");
    assert!(listed[0]["prev_cert_not_after"].is_string(), "{listed}");
    // Once the old certificate's time is over, only the new one works.
    env.clock.set(not_after_micros(&old.cert_pem));
    let (s, v) = env.identity(&old).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v.to_string().contains("replaced by a renewal"), "{v}");
    assert_eq!(env.identity(&new).await.0, StatusCode::OK);
    // The renewal is audited under the agent.
    let log = env.ok(&owner, Method::GET, &format!("/v1/workspaces/{ws}/audit"), None).await;
    let renewals: Vec<&Value> = log.as_array().unwrap().iter().filter(|r| r["action"] == "agent.renew" && r["outcome"] == "ok").collect();
    assert_eq!(renewals.len(), 1, "{log}");
    assert_eq!(renewals[0]["principal"], format!("agent:{}", old.agent));
}

#[tokio::test]
async fn a_renewal_lost_in_a_crash_is_repeated_with_the_previous_certificate() {
    let env = Env::start().await;
    let (ws, _) = env.workspace_with("lost", "owner").await;
    let old = env.enroll(&ws).await;
    let lost = env.renew(&old).await; // signed, never stored by the agent
    let kept = env.renew(&old).await;
    assert_eq!(env.identity(&kept).await.0, StatusCode::OK);
    assert_eq!(env.identity(&old).await.0, StatusCode::OK);
    let (s, v) = env.identity(&lost).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
}

#[tokio::test]
async fn a_renewal_must_bring_a_new_key() {
    let env = Env::start().await;
    let (ws, _) = env.workspace_with("same-key", "owner").await;
    let a = env.enroll(&ws).await;
    let same = rcgen::KeyPair::from_pem(&a.key_pem).unwrap();
    let (s, v) = env.as_agent(&a, Method::POST, "/v1/agent/renew", Some(json!({"csr_pem": csr(&same)}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("new key pair"), "{v}");
    let (s, v) = env.as_agent(&a, Method::POST, "/v1/agent/renew", Some(json!({"csr_pem": "garbage"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn revoked_agents_are_refused_at_once_on_every_agent_route_and_only_their_workspace_revokes_them() {
    let env = Env::start().await;
    let (ws_a, owner_a) = env.workspace_with("rev-a", "owner").await;
    let (ws_b, owner_b) = env.workspace_with("rev-b", "owner").await;
    let (_, _) = env.workspace_with("rev-c", "owner").await;
    let contributor = env.ok(&env.admin, Method::POST, "/v1/principals", Some(json!({"name": "rev-a-contrib"}))).await;
    env.ok(&env.admin, Method::POST, &format!("/v1/workspaces/{ws_a}/roles"), Some(json!({"principal": "rev-a-contrib", "role": "contributor"})))
        .await;
    let contributor = contributor["token"].as_str().unwrap();
    let a = env.enroll(&ws_a).await;
    let b = env.enroll(&ws_b).await;
    let revoke = |ws: &str, agent: &str| format!("/v1/workspaces/{ws}/agents/{agent}/revoke");

    // Through another workspace (whose owner may revoke its own agents): as if absent.
    let (s, v) = env.call(Some(&owner_b), Method::POST, &revoke(&ws_b, &a.agent), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s2, v2) = env.call(Some(&owner_b), Method::POST, &revoke(&ws_b, &uuid::Uuid::now_v7().to_string()), None).await;
    assert_eq!(s2, StatusCode::NOT_FOUND, "{v2}");
    // The service admin cannot do it through the wrong workspace either.
    assert_eq!(env.call(Some(&env.admin), Method::POST, &revoke(&ws_b, &a.agent), None).await.0, StatusCode::NOT_FOUND);
    // Contributors enroll agents but do not revoke or list them.
    assert_eq!(env.call(Some(contributor), Method::POST, &revoke(&ws_a, &a.agent), None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(env.call(Some(contributor), Method::GET, &format!("/v1/workspaces/{ws_a}/agents"), None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(env.identity(&a).await.0, StatusCode::OK, "a refused revocation revoked the agent");

    let renewed = env.renew(&a).await;
    let r = env.ok(&owner_a, Method::POST, &revoke(&ws_a, &a.agent), None).await;
    assert_eq!(r["status"], "revoked");
    let revoked_at = r["revoked_at"].as_str().unwrap().to_string();
    // Idempotent: the first time stays.
    env.clock.advance(1_000_000);
    let again = env.ok(&env.admin, Method::POST, &revoke(&ws_a, &a.agent), None).await;
    assert_eq!(again["revoked_at"], revoked_at.as_str());

    // Every agent route, with the current and the previous certificate.
    for creds in [&a, &renewed] {
        for (method, path, body) in [
            (Method::GET, "/v1/agent/identity", None),
            (Method::POST, "/v1/agent/renew", Some(json!({"csr_pem": csr(&rcgen::KeyPair::generate().unwrap())}))),
            (Method::POST, "/v1/ingest", Some(json!({}))),
        ] {
            let (s, v) = env.as_agent(creds, method.clone(), path, body).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {path}: {v}");
            assert!(v["error"].as_str().unwrap().contains(&format!("agent {} was revoked at {revoked_at}", a.agent)), "{v}");
        }
    }
    // Other agents are untouched.
    assert_eq!(env.identity(&b).await.0, StatusCode::OK);
    let listed = env.ok(&owner_a, Method::GET, &format!("/v1/workspaces/{ws_a}/agents"), None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!((listed[0]["id"].as_str(), listed[0]["status"].as_str()), (Some(a.agent.as_str()), Some("revoked")));
    assert_eq!(listed[0]["revoked_at"], revoked_at.as_str());
    let listed_b = env.ok(&owner_b, Method::GET, &format!("/v1/workspaces/{ws_b}/agents"), None).await;
    assert_eq!(listed_b[0]["status"], "active");
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Run `phase` against a server on `dir` in a runtime of its own; dropping
/// the runtime stops the server the way a process exit would.
fn phase<T>(dir: &std::path::Path, phase: impl AsyncFnOnce(&Env) -> T) -> T {
    rt().block_on(async {
        let env = Env::start_at(dir).await;
        phase(&env).await
    })
}

#[test]
fn published_pins_follow_a_key_rotation_staged_and_activated_while_the_server_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (a, old_pin, next_pin) = phase(&dir, async |env: &Env| {
        let (ws, _) = env.workspace_with("rotate", "owner").await;
        let a = env.enroll(&ws).await;
        let old_pin = env.pin();
        let staged = custos_server::rotate_key_stage(&dir, false).unwrap();
        let next_pin = staged.next_pin.clone().unwrap();
        assert_eq!(staged.pin, old_pin);
        assert_ne!(next_pin, old_pin);
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("server.next.key")).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        // Noticed at once by the running server.
        assert_eq!(env.identity(&a).await.1["pins"], json!([old_pin, next_pin]));
        // Staging again would discard a key agents may already trust.
        let err = custos_server::rotate_key_stage(&dir, false).unwrap_err().to_string();
        assert!(err.contains("already staged"), "{err}");

        let activated = custos_server::rotate_key_activate(&dir).unwrap();
        assert_eq!(
            (activated.pin.as_str(), activated.prev_pin.as_deref(), activated.next_pin.as_deref()),
            (next_pin.as_str(), Some(old_pin.as_str()), None)
        );
        assert!(activated.restart_needed);
        // The running server keeps serving the old key, and says which comes next.
        assert_eq!(env.pin(), old_pin);
        let (s, v) = env.identity(&a).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["pins"], json!([old_pin, next_pin]));
        let err = custos_server::rotate_key_activate(&dir).unwrap_err().to_string();
        assert!(err.contains("no next key is staged"), "{err}");
        (a, old_pin, next_pin)
    });
    // The restart.
    phase(&dir, async |env: &Env| {
        assert_eq!(env.pin(), next_pin);
        assert_ne!(env.pin(), old_pin);
        assert_eq!(env.identity(&a).await.1["pins"], json!([next_pin]));
        assert!(!custos_server::rotate_key_status(&dir).unwrap().restart_needed);
    });
}

#[test]
fn an_activation_interrupted_between_its_renames_is_completed_at_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let next_pin = phase(&dir, async |_: &Env| custos_server::rotate_key_stage(&dir, false).unwrap().next_pin.unwrap());
    // What a crash between the two renames of `activate` leaves.
    std::fs::rename(dir.join("server.next.key"), dir.join("server.key")).unwrap();
    phase(&dir, async |env: &Env| {
        assert_eq!(env.pin(), next_pin);
        assert!(!dir.join("server.next.crt").exists());
    });
}
