//! The admin CLI's HTTP client: `--server`, `--token`/`--token-file`, `--ca`
//! (or CUSTOS_SERVER, CUSTOS_TOKEN, CUSTOS_TOKEN_FILE, CUSTOS_CA). When none
//! is given it falls back to `./custos-data/server.json` (what the
//! quickstart and `custos server` write), so the CLI works out of the box on
//! the machine that runs the server.

use anyhow::{anyhow, bail, Context, Result};
use custos_model::api::ErrorBody;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// Connection settings from flags and environment.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ConnArgs {
    /// Server URL, e.g. https://127.0.0.1:7443.
    #[arg(long, env = "CUSTOS_SERVER", global = true)]
    pub server: Option<String>,
    /// API token.
    #[arg(long, env = "CUSTOS_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the API token.
    #[arg(long, env = "CUSTOS_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for the server.
    #[arg(long, env = "CUSTOS_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Data dir whose server.json to use when --server is not given.
    #[arg(long = "server-data-dir", env = "CUSTOS_DATA_DIR", global = true, hide = true)]
    pub server_data_dir: Option<PathBuf>,
}

/// An authenticated admin client.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: custos_model::Secret,
}

impl Client {
    /// Build from arguments, falling back to a local server.json.
    pub fn from_args(a: &ConnArgs) -> Result<Client> {
        let mut server = a.server.clone();
        let mut ca = a.ca.clone();
        let mut token_file = a.token_file.clone();
        if server.is_none() {
            let dir = a.server_data_dir.clone().unwrap_or_else(|| PathBuf::from("custos-data"));
            let info = dir.join("server.json");
            if info.exists() {
                let v: custos_server::ServerInfo = serde_json::from_slice(&std::fs::read(&info)?)
                    .with_context(|| format!("cannot parse {}", info.display()))?;
                server = Some(v.url);
                ca = ca.or(Some(PathBuf::from(v.ca)));
                token_file = token_file.or(Some(PathBuf::from(v.admin_token_file)));
            }
        }
        let server = server.ok_or_else(|| anyhow!("no server given: pass --server URL (or set CUSTOS_SERVER), or run where ./custos-data/server.json exists"))?;
        let token = match (&a.token, &token_file) {
            (Some(t), _) => t.trim().to_string(),
            (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("cannot read token file {}", f.display()))?.trim().to_string(),
            (None, None) => bail!("no token given: pass --token or --token-file (or set CUSTOS_TOKEN / CUSTOS_TOKEN_FILE)"),
        };
        Client::new(&server, ca.as_deref(), token)
    }

    /// A client for `server`, trusting `ca` (PEM file).
    pub fn new(server: &str, ca: Option<&Path>, token: String) -> Result<Client> {
        let base = server.trim_end_matches('/').to_string();
        if !base.starts_with("https://") {
            bail!("server url {server:?} must start with https:// (custos serves HTTPS only)");
        }
        let mut b = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            .timeout(std::time::Duration::from_secs(600));
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read CA file {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem).with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
            b = b.add_root_certificate(cert);
        } else {
            bail!("no CA certificate given: pass --ca FILE (or set CUSTOS_CA); the server's CA is DATA_DIR/ca.crt");
        }
        Ok(Client { http: b.build()?, base, token: custos_model::Secret::new(token) })
    }

    /// GET raw bytes (an export file).
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        self.send_raw(self.http.get(format!("{}{path}", self.base))).await
    }

    async fn send<T: DeserializeOwned>(&self, rb: reqwest::RequestBuilder) -> Result<T> {
        let body = self.send_raw(rb).await?;
        serde_json::from_slice(&body).with_context(|| "server sent an unexpected answer")
    }

    async fn send_raw(&self, rb: reqwest::RequestBuilder) -> Result<Vec<u8>> {
        let resp = rb
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach {}: {}", self.base, custos_agent::error_chain(&e)))?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            bail!("{msg} (HTTP {})", status.as_u16());
        }
        Ok(body.to_vec())
    }

    /// GET a JSON resource.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    /// POST JSON, read JSON.
    pub async fn post<B: serde::Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body)).await
    }

    /// PUT JSON, read JSON.
    pub async fn put<B: serde::Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body)).await
    }

    /// DELETE, read JSON.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.http.delete(format!("{}{path}", self.base))).await
    }

    /// DELETE with a JSON body, read JSON.
    pub async fn delete_json<B: serde::Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(self.http.delete(format!("{}{path}", self.base)).json(body)).await
    }
}
