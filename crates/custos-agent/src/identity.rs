//! Enrollment and the agent's identity in its state directory.
//!
//! State-dir files written by enrollment:
//!
//! | file | content | mode |
//! |---|---|---|
//! | `identity.json` | server URL, pins, agent id, workspace id, certificate expiry | 0600 |
//! | `agent.key` | the agent's private key (PKCS#8 PEM); never leaves the host | 0600 |
//! | `agent.crt` | the client certificate the server signed | 0644 |
//! | `ca.crt` | the service CA | 0644 |

use crate::error::{error_chain, AgentError};
use crate::tls;
use custos_model::api::{EnrollRequest, EnrollResponse, ErrorBody};
use custos_model::{AgentId, WorkspaceId};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The identity file's current format version.
pub const IDENTITY_VERSION: u32 = 1;

/// `identity.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Format version of this file.
    pub version: u32,
    /// Server base URL (`https://host:port`).
    pub server: String,
    /// Accepted server key pins (`sha256/<base64>`); the first is current.
    pub pins: Vec<String>,
    /// This agent.
    pub agent_id: AgentId,
    /// The workspace the certificate binds it to.
    pub workspace_id: WorkspaceId,
    /// Certificate expiry, RFC 3339.
    pub cert_not_after: String,
}

/// Paths of the state dir.
#[derive(Clone, Debug)]
pub struct StateDir(pub PathBuf);

impl StateDir {
    /// `identity.json`.
    pub fn identity(&self) -> PathBuf {
        self.0.join("identity.json")
    }
    /// `agent.key`.
    pub fn key(&self) -> PathBuf {
        self.0.join("agent.key")
    }
    /// `agent.crt`.
    pub fn cert(&self) -> PathBuf {
        self.0.join("agent.crt")
    }
    /// `ca.crt`.
    pub fn ca(&self) -> PathBuf {
        self.0.join("ca.crt")
    }
}

/// Write a state file atomically with the given mode.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), AgentError> {
    crate::fsutil::write_atomic(path, contents, mode).map_err(|e| AgentError::io(format!("cannot write {}", path.display()), e))
}

/// Normalise a server URL: `https://` required, no trailing slash.
pub fn normalise_url(url: &str) -> Result<String, AgentError> {
    let u = url.trim().trim_end_matches('/');
    if !u.starts_with("https://") {
        return Err(AgentError::Invalid(format!("server url {url:?} must start with https:// (plain http is refused)")));
    }
    Ok(u.to_string())
}

/// Enroll: make a key pair and CSR, present the enrollment key to a server
/// whose key matches `pin`, and store the signed certificate.
pub async fn enroll(server: &str, enrollment_key: &str, pin: &str, state_dir: &Path, hostname: &str) -> Result<Identity, AgentError> {
    let server = normalise_url(server)?;
    tls::validate_pin(pin).map_err(AgentError::Invalid)?;
    std::fs::create_dir_all(state_dir).map_err(|e| AgentError::io(format!("cannot create state dir {}", state_dir.display()), e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| AgentError::io("cannot set state dir permissions", e))?;
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| AgentError::Tls(format!("cannot generate key: {e}")))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "custos-agent");
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| AgentError::Tls(format!("cannot build csr: {e}")))?;
    let cfg = tls::client_config(vec![pin.to_string()], None).map_err(AgentError::Tls)?;
    let client = http_client(cfg)?;
    let req = EnrollRequest { enrollment_key: enrollment_key.trim().to_string(), csr_pem: csr, hostname: hostname.to_string() };
    let url = format!("{server}/v1/enroll");
    let resp = client
        .post(&url)
        .json(&req)
        .send()
        .await
        .map_err(|e| AgentError::Unreachable { url: server.clone(), reason: error_chain(&e) })?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| AgentError::Unreachable { url: server.clone(), reason: error_chain(&e) })?;
    if !status.is_success() {
        return Err(refused(status.as_u16(), &body));
    }
    let er: EnrollResponse = serde_json::from_slice(&body)
        .map_err(|e| AgentError::Invalid(format!("server sent an invalid enrollment response: {e}")))?;
    let sd = StateDir(state_dir.to_path_buf());
    write_file(&sd.key(), key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&sd.cert(), er.certificate_pem.as_bytes(), 0o644)?;
    write_file(&sd.ca(), er.ca_pem.as_bytes(), 0o644)?;
    let id = Identity {
        version: IDENTITY_VERSION,
        server,
        pins: vec![pin.to_string()],
        agent_id: er.agent_id,
        workspace_id: er.workspace_id,
        cert_not_after: er.not_after,
    };
    let json = serde_json::to_vec_pretty(&id).map_err(|e| AgentError::Invalid(e.to_string()))?;
    write_file(&sd.identity(), &json, 0o600)?;
    tracing::info!(agent = %id.agent_id, workspace = %id.workspace_id, "enrolled");
    Ok(id)
}

/// Turn an error answer into [`AgentError::Refused`] with the server's message.
pub fn refused(status: u16, body: &[u8]) -> AgentError {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned());
    AgentError::Refused { status, message }
}

/// An HTTP client over the given TLS config.
pub fn http_client(cfg: rustls::ClientConfig) -> Result<reqwest::Client, AgentError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| AgentError::Tls(error_chain(&e)))
}

/// Point an enrolled agent at a new server URL (same server key and pins),
/// for example after the server moved to another port.
pub fn set_server(state_dir: &Path, server: &str) -> Result<Identity, AgentError> {
    let sd = StateDir(state_dir.to_path_buf());
    let text = std::fs::read(sd.identity()).map_err(|e| AgentError::NotEnrolled(format!("{}: {e}", sd.identity().display())))?;
    let mut id: Identity = serde_json::from_slice(&text)
        .map_err(|e| AgentError::Invalid(format!("{} is invalid: {e}", sd.identity().display())))?;
    id.server = normalise_url(server)?;
    let json = serde_json::to_vec_pretty(&id).map_err(|e| AgentError::Invalid(e.to_string()))?;
    write_file(&sd.identity(), &json, 0o600)?;
    Ok(id)
}

/// The enrolled identity and a client that presents the agent certificate.
pub fn load(state_dir: &Path) -> Result<(Identity, reqwest::Client), AgentError> {
    let sd = StateDir(state_dir.to_path_buf());
    let text = std::fs::read(sd.identity()).map_err(|e| AgentError::NotEnrolled(format!("{}: {e}", sd.identity().display())))?;
    let id: Identity = serde_json::from_slice(&text)
        .map_err(|e| AgentError::Invalid(format!("{} is invalid: {e}", sd.identity().display())))?;
    if id.version != IDENTITY_VERSION {
        return Err(AgentError::Invalid(format!("{} has unsupported version {}", sd.identity().display(), id.version)));
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(sd.cert())
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| AgentError::Tls(format!("cannot read {}: {e}", sd.cert().display())))?;
    let key = PrivateKeyDer::from_pem_file(sd.key()).map_err(|e| AgentError::Tls(format!("cannot read {}: {e}", sd.key().display())))?;
    let cfg = tls::client_config(id.pins.clone(), Some((chain, key))).map_err(AgentError::Tls)?;
    Ok((id, http_client(cfg)?))
}
