//! Access control and audit, end to end over HTTPS against an in-process
//! server with a manual clock: the route-permission walk, lockbox timing,
//! and requests refused when the audit log cannot be written.

use custos_server::api::route_specs;
use custos_server::authz::Perm;
use custos_server::guard::{Access, Scope};
use custos_server::{ManualClock, Server, ServerConfig};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;

const HOUR: i64 = 3_600_000_000;

struct Env {
    _tmp: tempfile::TempDir,
    server: Option<Server>,
    clock: Arc<ManualClock>,
    http: reqwest::Client,
    url: String,
    admin: String,
}

impl Env {
    async fn start() -> Env {
        Self::start_with(|_| {}).await
    }

    async fn start_with(f: impl FnOnce(&mut ServerConfig)) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig {
            data_dir: tmp.path().join("data"),
            listen: "127.0.0.1:0".into(),
            ..Default::default()
        };
        cfg.ingest.flush_interval_ms = 50;
        f(&mut cfg);
        let clock = Arc::new(ManualClock::new(custos_model::now_micros()));
        let server = Server::start_with_clock(cfg, clock.clone()).await.unwrap();
        let info = server.info().clone();
        let ca = std::fs::read(&info.ca).unwrap();
        let http = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap();
        let admin = std::fs::read_to_string(&info.admin_token_file).unwrap().trim().to_string();
        Env { _tmp: tmp, server: Some(server), clock, http, url: info.url, admin }
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

    async fn principal(&self, name: &str, service_role: Option<&str>) -> (String, String) {
        let v = self.ok(&self.admin, Method::POST, "/v1/principals", Some(json!({"name": name, "service_role": service_role}))).await;
        (v["id"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string())
    }

    async fn workspace(&self, name: &str) -> String {
        let v = self.ok(&self.admin, Method::POST, "/v1/workspaces", Some(json!({"name": name, "region": "local"}))).await;
        v["id"].as_str().unwrap().to_string()
    }

    async fn grant(&self, ws: &str, principal: &str, role: &str) {
        self.ok(&self.admin, Method::POST, &format!("/v1/workspaces/{ws}/roles"), Some(json!({"principal": principal, "role": role})))
            .await;
    }

    async fn query(&self, token: &str, ws: &str) -> (StatusCode, Value) {
        self.call(Some(token), Method::POST, &format!("/v1/workspaces/{ws}/query"), Some(json!({"sql": "SELECT 1 AS one"}))).await
    }

    fn audit_seq(&self) -> u64 {
        self.server.as_ref().unwrap().state().audit.next_seq()
    }
}

/// The fixture of the walk: two workspaces, their people, a case and a
/// pending access request on workspace A.
struct World {
    ws_a: String,
    owner_a: String,
    owner_a_token_id: String,
    reader_a: (String, String),
    owner_b: String,
    support: String,
    case_a: String,
    req_a: String,
    job_a: String,
}

async fn world(env: &Env) -> World {
    let ws_a = env.workspace("a").await;
    let ws_b = env.workspace("b").await;
    let (oa, owner_a) = env.principal("owner-a", None).await;
    let reader_a = env.principal("reader-a", None).await;
    let (ob, owner_b) = env.principal("owner-b", None).await;
    let (_, support) = env.principal("support-1", Some("support")).await;
    env.grant(&ws_a, &oa, "owner").await;
    env.grant(&ws_a, &reader_a.0, "reader").await;
    env.grant(&ws_b, &ob, "owner").await;
    let tokens = env.ok(&owner_a, Method::GET, "/v1/tokens", None).await;
    let owner_a_token_id = tokens[0]["id"].as_str().unwrap().to_string();
    let case = env.ok(&owner_a, Method::POST, &format!("/v1/workspaces/{ws_a}/cases"), Some(json!({"title": "disk errors"}))).await;
    let case_a = case["id"].as_str().unwrap().to_string();
    let req = env
        .ok(&support, Method::POST, &format!("/v1/cases/{case_a}/access-requests"), Some(json!({"reason": "read logs"})))
        .await;
    assert_eq!(req["status"], "pending");
    let job = env.ok(&owner_a, Method::POST, &format!("/v1/workspaces/{ws_a}/purges"), Some(json!({"where": "host = 'nobody'"}))).await;
    let job_a = job["id"].as_str().unwrap().to_string();
    World { ws_a, owner_a, owner_a_token_id, reader_a, owner_b, support, case_a, req_a: req["id"].as_str().unwrap().to_string(), job_a }
}

fn fill(path: &str, ws: &str, case: &str, req: &str, token: &str, principal: &str, job: &str) -> String {
    path.replace("{ws}", ws)
        .replace("{job}", job)
        .replace("{export}", "0190f0e4-7a3b-7c1d-8e2f-123456789abc")
        .replace("{name}", "manifest.json")
        .replace("{table}", "logs")
        .replace("{case}", case)
        .replace("{req}", req)
        .replace("{token}", token)
        .replace("{principal}", principal)
        .replace("{role}", "reader")
        // An agent id of the right form that no agent has.
        .replace("{agent}", "0190f0e4-7a3b-7c1d-8e2f-123456789abc")
}

/// A plausible body for each mutating route, so a refusal is the guard's
/// doing and not a parse error.
fn body_for(action: &str) -> Option<Value> {
    Some(match action {
        "workspace.create" => json!({"name": "zz", "region": "local"}),
        "principal.create" => json!({"name": "zz"}),
        "workspace.lockbox" => json!({"enabled": false}),
        "workspace.policy" => json!({"max_level": 1}),
        "role.grant" => json!({"principal": "owner-b", "role": "owner"}),
        "case.open" => json!({"title": "t"}),
        "access.request" => json!({"reason": "r"}),
        "workspace.retention" => json!({"days": 7}),
        "workspace.lock" => json!({"reason": "r"}),
        "workspace.delete" => json!({"confirm": "a"}),
        "data.table.delete" => json!({"confirm": "logs"}),
        "purge.create" => json!({"where": "host = 'x'"}),
        "export.create" => json!({"table": "logs"}),
        "query" | "data.query" => json!({"sql": "SELECT 1"}),
        _ => json!({}),
    })
}

fn method(spec: &custos_server::guard::RouteSpec) -> Method {
    Method::from_bytes(spec.method.as_str().as_bytes()).unwrap()
}

#[tokio::test]
async fn every_route_declares_its_access_and_the_table_is_sound() {
    let specs = route_specs();
    assert!(specs.len() >= 30, "{} routes", specs.len());
    let mut seen = std::collections::HashSet::new();
    for s in &specs {
        assert!(seen.insert((s.method.clone(), s.path)), "{} {} declared twice", s.method, s.path);
        assert!(!s.action.is_empty());
        if let Access::Principal(p) = s.access {
            // A workspace permission needs a target in the path to check it against.
            assert_eq!(
                p.workspace_scoped(),
                matches!(s.scope(), Scope::Workspace | Scope::Case | Scope::AccessRequest | Scope::Job),
                "{} {}: permission {p:?} vs scope {:?}",
                s.method,
                s.path,
                s.scope()
            );
        }
        if s.access == Access::Public {
            assert_eq!(s.path, "/v1/health", "only health is public");
        }
        if s.method != axum::http::Method::GET && s.access != Access::Public {
            assert!(s.mutates || s.action == "data.query", "{} {} changes state but is not marked", s.method, s.path);
        }
    }
}

#[tokio::test]
async fn unauthenticated_requests_are_refused_and_audited_on_every_route() {
    let env = Env::start().await;
    let w = world(&env).await;
    for spec in route_specs() {
        if spec.access == Access::Public {
            continue;
        }
        let path = fill(spec.path, &w.ws_a, &w.case_a, &w.req_a, &w.owner_a_token_id, &w.reader_a.0, &w.job_a);
        let before = env.audit_seq();
        let (status, body) = env.call(None, method(&spec), &path, body_for(spec.action)).await;
        assert!(
            status == StatusCode::UNAUTHORIZED || (spec.access == Access::EnrollmentKey && status.is_client_error()),
            "{} {path}: {status} {body}",
            spec.method
        );
        assert!(env.audit_seq() > before, "{} {path} left no audit record", spec.method);
    }
}

#[tokio::test]
async fn a_reader_cannot_change_anything() {
    let env = Env::start().await;
    let w = world(&env).await;
    let state = env.server.as_ref().unwrap().state().clone();
    let snapshot = || async {
        let ws: Vec<_> = state.catalog.list_workspaces().await.unwrap();
        let mut bindings = Vec::new();
        for x in &ws {
            bindings.push(state.catalog.list_role_bindings(x.id).await.unwrap());
        }
        let cases = state.catalog.list_cases(None).await.unwrap();
        let reqs = state.catalog.list_access_requests(&Default::default()).await.unwrap();
        let principals = state.catalog.list_principals().await.unwrap();
        format!("{ws:?}{bindings:?}{cases:?}{reqs:?}{principals:?}")
    };
    let before = snapshot().await;
    let mut checked = 0;
    for spec in route_specs() {
        // Managing one's own tokens is not changing the workspace.
        if !spec.mutates || !matches!(spec.access, Access::Principal(p) if p != Perm::Authenticated) {
            continue;
        }
        let path = fill(spec.path, &w.ws_a, &w.case_a, &w.req_a, &w.owner_a_token_id, &w.reader_a.0, &w.job_a);
        let audited = env.audit_seq();
        let (status, body) = env.call(Some(&w.reader_a.1), method(&spec), &path, body_for(spec.action)).await;
        assert!(
            status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND,
            "reader got {status} on {} {path}: {body}",
            spec.method
        );
        assert!(env.audit_seq() > audited, "refusal on {} {path} was not audited", spec.method);
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} mutating routes walked");
    assert_eq!(before, snapshot().await, "a reader's requests changed the catalog");
    // The owner's token still works: the reader could not revoke it.
    env.ok(&w.owner_a, Method::GET, &format!("/v1/workspaces/{}", w.ws_a), None).await;
}

#[tokio::test]
async fn another_workspace_looks_exactly_like_no_workspace() {
    let env = Env::start().await;
    let w = world(&env).await;
    let ghost = || uuid::Uuid::now_v7().to_string();
    let mut checked = 0;
    for spec in route_specs() {
        if !matches!(spec.scope(), Scope::Workspace | Scope::Case | Scope::AccessRequest | Scope::Token | Scope::Job) {
            continue;
        }
        let real = fill(spec.path, &w.ws_a, &w.case_a, &w.req_a, &w.owner_a_token_id, &w.reader_a.0, &w.job_a);
        let (gw, gc, gr, gt, gj) = (ghost(), ghost(), ghost(), ghost(), ghost());
        let fake = fill(spec.path, &gw, &gc, &gr, &gt, &w.reader_a.0, &gj);
        let (s1, b1) = env.call(Some(&w.owner_b), method(&spec), &real, body_for(spec.action)).await;
        let (s2, b2) = env.call(Some(&w.owner_b), method(&spec), &fake, body_for(spec.action)).await;
        assert_eq!(s1, StatusCode::NOT_FOUND, "{} {real}: {b1}", spec.method);
        assert_eq!(s2, StatusCode::NOT_FOUND, "{} {fake}: {b2}", spec.method);
        let normalise = |v: &Value, ids: [&str; 5]| {
            let mut t = v.to_string();
            for (i, id) in ids.iter().enumerate() {
                t = t.replace(id, &format!("<id{i}>"));
            }
            t
        };
        assert_eq!(
            normalise(&b1, [&w.ws_a, &w.case_a, &w.req_a, &w.owner_a_token_id, &w.job_a]),
            normalise(&b2, [&gw, &gc, &gr, &gt, &gj]),
            "{} {}: existence leaks",
            spec.method,
            spec.path
        );
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} routes walked");
    // And listings show nothing of workspace A.
    let list = env.ok(&w.owner_b, Method::GET, "/v1/workspaces", None).await;
    assert!(!list.to_string().contains(&w.ws_a));
    let cases = env.ok(&w.owner_b, Method::GET, "/v1/cases", None).await;
    assert!(!cases.to_string().contains(&w.case_a));
}

#[tokio::test]
async fn support_has_no_standing_access_to_workspace_data() {
    let env = Env::start().await;
    let w = world(&env).await;
    let mut checked = 0;
    for spec in route_specs() {
        let Access::Principal(perm) = spec.access else { continue };
        if !matches!(perm, Perm::DataRead | Perm::WorkspaceView | Perm::AuditRead | Perm::RoleManage | Perm::AgentEnroll | Perm::PolicyManage | Perm::WorkspaceDelete | Perm::AccessDecide) {
            continue;
        }
        let path = fill(spec.path, &w.ws_a, &w.case_a, &w.req_a, &w.owner_a_token_id, &w.reader_a.0, &w.job_a);
        let (status, body) = env.call(Some(&w.support), method(&spec), &path, body_for(spec.action)).await;
        assert!(status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND, "support got {status} on {} {path}: {body}", spec.method);
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} routes walked");
    // Nor is support's own pending request enough.
    let (s, _) = env.query(&w.support, &w.ws_a).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Admins manage the service but do not read workspace data either.
    let (s, _) = env.query(&env.admin, &w.ws_a).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn lockbox_grants_follow_approval_expiry_and_case_close() {
    let env = Env::start().await;
    let w = world(&env).await;
    let ws = &w.ws_a;
    // Before approval: nothing.
    assert_eq!(env.query(&w.support, ws).await.0, StatusCode::FORBIDDEN);
    // The owner sees the request and its reason.
    let list = env.ok(&w.owner_a, Method::GET, &format!("/v1/workspaces/{ws}/access-requests"), None).await;
    assert_eq!(list[0]["id"], w.req_a.as_str());
    assert_eq!(list[0]["status"], "pending");
    // Undecided for 12 hours: expired, cannot be approved any more.
    env.clock.advance(12 * HOUR);
    let (s, b) = env.call(Some(&w.owner_a), Method::POST, &format!("/v1/access-requests/{}/approve", w.req_a), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(b.to_string().contains("expired"), "{b}");
    assert_eq!(env.query(&w.support, ws).await.0, StatusCode::FORBIDDEN);

    // A fresh request, approved: read-only access for the default 8 hours.
    let req = env
        .ok(&w.support, Method::POST, &format!("/v1/cases/{}/access-requests", w.case_a), Some(json!({"reason": "again"})))
        .await;
    let req_id = req["id"].as_str().unwrap().to_string();
    assert_eq!(req["duration_secs"], 8 * 3600);
    // Support cannot approve its own request.
    let (s, _) = env.call(Some(&w.support), Method::POST, &format!("/v1/access-requests/{req_id}/approve"), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let approved = env.ok(&w.owner_a, Method::POST, &format!("/v1/access-requests/{req_id}/approve"), None).await;
    assert_eq!(approved["status"], "active");
    let (s, b) = env.query(&w.support, ws).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Read-only: the grant allows no change, even in the granted workspace.
    let (s, _) = env.call(Some(&w.support), Method::POST, &format!("/v1/workspaces/{ws}/enrollment-keys"), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Only that workspace.
    let ws_c = env.workspace("c").await;
    let (s, _) = env.query(&w.support, &ws_c).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A second decision is refused.
    let (s, _) = env.call(Some(&w.owner_a), Method::POST, &format!("/v1/access-requests/{req_id}/deny"), None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    // The grant ends after 8 hours.
    env.clock.advance(8 * HOUR - 1);
    assert_eq!(env.query(&w.support, ws).await.0, StatusCode::OK);
    env.clock.advance(1);
    assert_eq!(env.query(&w.support, ws).await.0, StatusCode::FORBIDDEN);

    // Longer than 7 days is refused; 7 days is the most.
    let (s, b) = env
        .call(Some(&w.support), Method::POST, &format!("/v1/cases/{}/access-requests", w.case_a), Some(json!({"reason": "x", "duration_secs": 7 * 86400 + 1})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let req = env
        .ok(&w.support, Method::POST, &format!("/v1/cases/{}/access-requests", w.case_a), Some(json!({"reason": "week", "duration_secs": 7 * 86400})))
        .await;
    let req_id = req["id"].as_str().unwrap().to_string();
    env.ok(&w.owner_a, Method::POST, &format!("/v1/access-requests/{req_id}/approve"), None).await;
    env.clock.advance(24 * HOUR);
    assert_eq!(env.query(&w.support, ws).await.0, StatusCode::OK);
    // Closing the case ends the grant at once.
    env.ok(&w.owner_a, Method::POST, &format!("/v1/cases/{}/close", w.case_a), None).await;
    let (s, b) = env.query(&w.support, ws).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    let shown = env.ok(&w.owner_a, Method::GET, &format!("/v1/access-requests/{req_id}"), None).await;
    assert_eq!(shown["status"], "ended");
    // No new requests on a closed case.
    let (s, _) = env
        .call(Some(&w.support), Method::POST, &format!("/v1/cases/{}/access-requests", w.case_a), Some(json!({"reason": "more"})))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);

    // The customer sees every support access in its audit log, with the grant.
    let log = env.ok(&w.owner_a, Method::GET, &format!("/v1/workspaces/{ws}/audit"), None).await;
    let support_queries: Vec<&Value> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "data.query" && r["role"] == "support")
        .collect();
    let ok: Vec<_> = support_queries.iter().filter(|r| r["outcome"] == "ok").collect();
    let denied: Vec<_> = support_queries.iter().filter(|r| r["outcome"] == "denied").collect();
    assert_eq!(ok.len(), 3, "{support_queries:#?}");
    assert!(denied.len() >= 4, "{support_queries:#?}");
    assert!(ok.iter().all(|r| r["grant"].is_string()), "{ok:#?}");
    // SQL text is never in the log in plain.
    assert!(ok.iter().all(|r| r["details"]["sql"].as_str().unwrap().starts_with("hmac-sha256:")), "{ok:#?}");
    assert!(!log.to_string().contains("SELECT 1 AS one"));
}

#[tokio::test]
async fn with_the_lockbox_off_requests_are_granted_at_once_but_still_scoped() {
    let env = Env::start().await;
    let w = world(&env).await;
    let ws = &w.ws_a;
    let (s, _) = env.call(Some(&w.reader_a.1), Method::PUT, &format!("/v1/workspaces/{ws}/lockbox"), Some(json!({"enabled": false}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "only owners set the lockbox");
    let v = env.ok(&w.owner_a, Method::PUT, &format!("/v1/workspaces/{ws}/lockbox"), Some(json!({"enabled": false}))).await;
    assert_eq!(v["lockbox"], false);
    assert_eq!(env.query(&w.support, ws).await.0, StatusCode::FORBIDDEN, "still no standing access");
    let req = env
        .ok(&w.support, Method::POST, &format!("/v1/cases/{}/access-requests", w.case_a), Some(json!({"reason": "quick look", "duration_secs": 3600})))
        .await;
    assert_eq!(req["status"], "active");
    assert_eq!(env.query(&w.support, ws).await.0, StatusCode::OK);
    env.clock.advance(HOUR);
    assert_eq!(env.query(&w.support, ws).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn tokens_expire_and_revoke() {
    let env = Env::start().await;
    let w = world(&env).await;
    let t = env.ok(&w.owner_a, Method::POST, "/v1/tokens", Some(json!({"expires_in_secs": 3600}))).await;
    let token = t["token"].as_str().unwrap().to_string();
    env.ok(&token, Method::GET, "/v1/whoami", None).await;
    env.clock.advance(HOUR);
    let (s, b) = env.call(Some(&token), Method::GET, "/v1/whoami", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(b.to_string().contains("expired"), "{b}");
    // Revocation is immediate; another principal cannot even see the token.
    let t2 = env.ok(&w.owner_a, Method::POST, "/v1/tokens", None).await;
    let id2 = t2["id"].as_str().unwrap();
    let (s, _) = env.call(Some(&w.owner_b), Method::DELETE, &format!("/v1/tokens/{id2}"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    env.ok(&w.owner_a, Method::DELETE, &format!("/v1/tokens/{id2}"), None).await;
    let (s, b) = env.call(Some(t2["token"].as_str().unwrap()), Method::GET, "/v1/whoami", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(b.to_string().contains("revoked"), "{b}");
    // Secrets are stored hashed only.
    let db = std::fs::read(env.server.as_ref().unwrap().state().config.data_dir.join("catalog.db")).unwrap();
    let needle = t2["token"].as_str().unwrap().as_bytes();
    assert!(!db.windows(needle.len()).any(|x| x == needle), "token found in plain in the catalog");
}

#[tokio::test]
async fn when_the_audit_log_cannot_be_written_requests_are_refused() {
    let env = Env::start_with(|c| c.audit.segment_bytes = 4096).await;
    let w = world(&env).await;
    assert_eq!(env.query(&w.owner_a, &w.ws_a).await.0, StatusCode::OK);
    // Take the audit directory away and put a file where it was: the next
    // segment file cannot be created.
    let dir = env.server.as_ref().unwrap().state().audit_dir.clone();
    std::fs::rename(&dir, dir.with_extension("moved")).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    let mut refused_at = None;
    for i in 0..500 {
        let (s, b) = env.query(&w.owner_a, &w.ws_a).await;
        if s == StatusCode::SERVICE_UNAVAILABLE {
            assert!(b.to_string().contains("audit"), "{b}");
            assert!(!b.to_string().contains("\"one\""), "data left with the refusal: {b}");
            refused_at = Some(i);
            break;
        }
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    assert!(refused_at.is_some(), "the audit failure never refused a request");
    // From then on every audited request is refused, and a change is not made.
    for _ in 0..3 {
        assert_eq!(env.query(&w.owner_a, &w.ws_a).await.0, StatusCode::SERVICE_UNAVAILABLE);
    }
    let (s, _) = env.call(Some(&env.admin), Method::POST, "/v1/workspaces", Some(json!({"name": "after-failure", "region": "local"}))).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let names: Vec<String> = env.server.as_ref().unwrap().state().catalog.list_workspaces().await.unwrap().into_iter().map(|w| w.name).collect();
    assert!(!names.contains(&"after-failure".to_string()), "{names:?}");
    // Health stays up (it reveals nothing and is not audited).
    let (s, _) = env.call(None, Method::GET, "/v1/health", None).await;
    assert_eq!(s, StatusCode::OK);
}

#[test]
fn the_route_table_in_the_docs_matches_the_code() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/ACCESS.md")).unwrap();
    let start = doc.find("<!-- routes:begin -->").expect("docs/ACCESS.md lacks the routes:begin marker") + "<!-- routes:begin -->".len();
    let end = doc.find("<!-- routes:end -->").expect("docs/ACCESS.md lacks the routes:end marker");
    let expected = custos_server::api::route_table_markdown();
    assert_eq!(
        doc[start..end].trim(),
        expected.trim(),
        "docs/ACCESS.md's route table is stale; replace it with:\n{expected}"
    );
}

#[tokio::test]
async fn metrics_are_for_admins_and_count_audit_records() {
    let env = Env::start().await;
    let w = world(&env).await;
    let (s, _) = env.call(Some(&w.owner_a), Method::GET, "/metrics", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, body) = env.call(Some(&env.admin), Method::GET, "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    let text = body.as_str().unwrap();
    let records: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("custos_audit_records_total "))
        .expect("custos_audit_records_total missing")
        .parse()
        .unwrap();
    assert!(records > 10, "{text}");
}
