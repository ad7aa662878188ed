//! The harness the HTTPS end-to-end tests share: a server on an injected
//! clock, an HTTP client trusting its CA, principals, workspaces, and
//! agents enrolled the way the agent enrolls (key pair, CSR, enrollment key).

use custos_model::api::IngestAck;
use custos_model::wire::{self, BatchPayload, Codec};
use custos_model::{BatchId, Event};
use custos_server::{ManualClock, Server, ServerConfig};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value as Json};
use std::sync::Arc;

pub struct Env {
    _tmp: tempfile::TempDir,
    pub server: Server,
    pub http: reqwest::Client,
    pub url: String,
    pub ca_pem: String,
    pub admin: String,
    /// The server's clock (tests move it).
    pub clock: Arc<ManualClock>,
}

impl Env {
    pub async fn start() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig { data_dir: tmp.path().join("data"), listen: "127.0.0.1:0".into(), ..Default::default() };
        cfg.ingest.flush_interval_ms = 50;
        let clock = Arc::new(ManualClock::new(custos_model::now_micros()));
        let server = Server::start_with_clock(cfg, clock.clone()).await.unwrap();
        let info = server.info().clone();
        let ca_pem = std::fs::read_to_string(&info.ca).unwrap();
        let http = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap();
        let admin = std::fs::read_to_string(&info.admin_token_file).unwrap().trim().to_string();
        Env { _tmp: tmp, server, http, url: info.url, ca_pem, admin, clock }
    }

    pub async fn call(&self, token: Option<&str>, method: Method, path: &str, body: Option<Json>) -> (StatusCode, Json) {
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
        (status, serde_json::from_str(&text).unwrap_or(Json::String(text)))
    }

    pub async fn ok(&self, token: &str, method: Method, path: &str, body: Option<Json>) -> Json {
        let (s, v) = self.call(Some(token), method.clone(), path, body).await;
        assert!(s.is_success(), "{method} {path}: {s} {v}");
        v
    }

    pub async fn principal(&self, name: &str) -> String {
        let v = self.ok(&self.admin, Method::POST, "/v1/principals", Some(json!({"name": name}))).await;
        v["token"].as_str().unwrap().to_string()
    }

    /// A workspace and a principal holding `role` in it; (workspace id, token).
    pub async fn workspace_with(&self, name: &str, role: &str) -> (String, String) {
        let v = self.ok(&self.admin, Method::POST, "/v1/workspaces", Some(json!({"name": name, "region": "local"}))).await;
        let ws = v["id"].as_str().unwrap().to_string();
        let who = format!("{name}-{role}");
        let token = self.principal(&who).await;
        self.grant(&ws, &who, role).await;
        (ws, token)
    }

    pub async fn grant(&self, ws: &str, principal: &str, role: &str) {
        self.ok(&self.admin, Method::POST, &format!("/v1/workspaces/{ws}/roles"), Some(json!({"principal": principal, "role": role}))).await;
    }

    /// Enroll an agent into `ws` the way the agent does (key pair, CSR,
    /// enrollment key) and return a client presenting its certificate.
    /// The rows of a query, as the owner (or `token`) sees them.
    pub async fn rows(&self, token: &str, ws: &str, sql: &str) -> Vec<Vec<Json>> {
        let v = self.ok(token, Method::POST, &format!("/v1/workspaces/{ws}/query"), Some(json!({"sql": sql}))).await;
        serde_json::from_value(v["rows"].clone()).unwrap()
    }

    pub async fn agent(&self, ws: &str, hostname: &str) -> Agent {
        let k = self.ok(&self.admin, Method::POST, &format!("/v1/workspaces/{ws}/enrollment-keys"), None).await;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, "custos-agent");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let (s, v) = self
            .call(
                None,
                Method::POST,
                "/v1/enroll",
                Some(json!({"enrollment_key": k["enrollment_key"], "csr_pem": csr, "hostname": hostname})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let pem = format!("{}\n{}", v["certificate_pem"].as_str().unwrap(), key.serialize_pem());
        let http = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap())
            .build()
            .unwrap();
        Agent { http, url: self.url.clone(), id: v["agent_id"].as_str().unwrap().to_string() }
    }

}

/// An enrolled agent: a client presenting its certificate.
pub struct Agent {
    pub http: reqwest::Client,
    pub url: String,
    pub id: String,
}

impl Agent {
    /// Posts a frame to `/v1/ingest`; (status, body).
    pub async fn post(&self, frame: Vec<u8>) -> (StatusCode, String) {
        let resp = self.http.post(format!("{}/v1/ingest", self.url)).body(frame).send().await.unwrap();
        let status = resp.status();
        (status, resp.text().await.unwrap())
    }

    /// Posts a frame and expects it acknowledged.
    pub async fn send(&self, frame: Vec<u8>) -> IngestAck {
        let (status, text) = self.post(frame).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    pub async fn ship(&self, events: Vec<Event>) -> IngestAck {
        self.send(frame(events)).await
    }
}

/// A wire frame of `events` (a fresh batch id, zstd).
pub fn frame(events: Vec<Event>) -> Vec<u8> {
    wire::encode(&BatchPayload { batch_id: BatchId::new(), created: 0, events }, Codec::Zstd)
}
