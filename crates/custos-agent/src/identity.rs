//! Enrollment and the agent's identity in its state directory: the server
//! pins it trusts, its key pair and certificate, and keeping both current
//! ([`maintain`]: pins published by the server, certificate renewal).
//!
//! State-dir files:
//!
//! | file | content | mode |
//! |---|---|---|
//! | `identity.json` | server URL, pins, agent id, workspace id, certificate validity | 0600 |
//! | `agent.key` | the agent's private key (PKCS#8 PEM); never leaves the host | 0600 |
//! | `agent.crt` | the client certificate the server signed | 0644 |
//! | `ca.crt` | the service CA | 0644 |
//! | `agent.next.key`, `agent.next.crt` | a renewal in progress (see below) | 0600, 0644 |
//!
//! ## Renewal, crash-safe
//!
//! A renewal writes the new key to `agent.next.key` before asking the
//! server, the new certificate to `agent.next.crt` once it arrives, then
//! renames `agent.next.key` over `agent.key` and `agent.next.crt` over
//! `agent.crt`. [`load`] finishes whatever a crash interrupted: a complete,
//! matching `agent.next.*` pair for this agent that lasts longer than the
//! current one is promoted, and a new `agent.key` left beside the old
//! `agent.crt` gets its `agent.next.crt`. A crash before the certificate
//! was stored loses nothing either: the server keeps accepting the
//! certificate the renewal was made with until it expires, and the next
//! renewal is made with it. So a crash at any point leaves a matching,
//! usable pair. `identity.json`'s certificate times are a cache of
//! `agent.crt`'s: [`load`] corrects them from the certificate.
//!
//! ## Contract for the run loop
//!
//! - [`load`] reads a few small files (and repairs an interrupted renewal
//!   with two renames): cheap enough to call whenever something changed.
//! - [`maintain`] makes one small authenticated request
//!   (`GET /v1/agent/identity`), plus one more (`POST /v1/agent/renew`)
//!   when the certificate is two thirds through its life. Call it at start
//!   and periodically (every few minutes to an hour; at least a few times
//!   per third of the certificate's validity, which is 30 days by default)
//!   with the client [`load`] built (it needs the connection's TLS info to
//!   learn which key the server presented). When it returns
//!   [`Maintained::changed`], build a new client with [`load`]; the old one
//!   keeps working until then (its pins still match the server it talks
//!   to, and its certificate stays accepted until it expires). An error
//!   changes nothing the caller holds: keep the old client and try later.

use crate::error::{error_chain, AgentError};
use crate::tls;
use custos_model::api::{AgentIdentityResponse, EnrollRequest, EnrollResponse, ErrorBody, RenewRequest, RenewResponse};
use custos_model::{AgentId, WorkspaceId};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The identity file's current format version.
pub const IDENTITY_VERSION: u32 = 1;

/// The most pins an identity keeps (a server publishes at most three: the
/// key it serves with, a staged next key, an activated one).
pub const MAX_PINS: usize = 8;

/// The prefix of the agent identity URI in the certificate's SAN.
const AGENT_URI_PREFIX: &str = "urn:custos:agent:";

/// `identity.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Format version of this file.
    pub version: u32,
    /// Server base URL (`https://host:port`).
    pub server: String,
    /// Accepted server key pins (`sha256/<base64>`); the first is the key
    /// the server served with when they were learned, the others keys it
    /// announced (a rotation in progress). Replaced by [`maintain`].
    pub pins: Vec<String>,
    /// This agent.
    pub agent_id: AgentId,
    /// The workspace the certificate binds it to.
    pub workspace_id: WorkspaceId,
    /// Start of the certificate's validity, RFC 3339. Absent from files
    /// written before renewal existed; [`load`] fills it in from `agent.crt`.
    #[serde(default)]
    pub cert_not_before: String,
    /// Certificate expiry, RFC 3339.
    pub cert_not_after: String,
}

/// What [`maintain`] did.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Maintained {
    /// The pin list changed (the server announced or dropped a key).
    pub pins_changed: bool,
    /// The certificate was renewed (new key pair and certificate in place).
    pub renewed: bool,
    /// Why the published pins were not adopted, if they were not (the
    /// identity keeps its pins; see [`adopt_pins`]).
    pub pins_ignored: Option<String>,
    /// Why a renewal that was due failed, if it did (the current
    /// certificate stays in use; the next call tries again).
    pub renewal_error: Option<String>,
    /// The identity as stored now.
    pub identity: Identity,
}

impl Maintained {
    /// Whether the caller must build a new client with [`load`].
    pub fn changed(&self) -> bool {
        self.pins_changed || self.renewed
    }
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
    /// `agent.next.key`: the key of a renewal in progress.
    pub fn next_key(&self) -> PathBuf {
        self.0.join("agent.next.key")
    }
    /// `agent.next.crt`: the certificate of a renewal in progress.
    pub fn next_cert(&self) -> PathBuf {
        self.0.join("agent.next.crt")
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

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// A new ECDSA P-256 key pair and a CSR for it (PEM).
fn new_key_and_csr() -> Result<(rcgen::KeyPair, String), AgentError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| AgentError::Tls(format!("cannot generate key: {e}")))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "custos-agent");
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| AgentError::Tls(format!("cannot build csr: {e}")))?;
    Ok((key, csr))
}

/// What the agent needs to know about one of its certificates.
#[derive(Clone, Debug, PartialEq)]
struct CertInfo {
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    /// The agent id of the URI SAN, if any.
    agent: Option<String>,
    /// The SubjectPublicKeyInfo, DER.
    spki: Vec<u8>,
}

fn cert_info(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("cannot parse certificate: {e}"))?;
    let v = cert.validity();
    let mut agent = None;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(u) = name {
                if let Some((a, _)) = u.strip_prefix(AGENT_URI_PREFIX).and_then(|r| r.split_once(":workspace:")) {
                    agent = Some(a.to_string());
                }
            }
        }
    }
    Ok(CertInfo {
        not_before: v.not_before.to_datetime(),
        not_after: v.not_after.to_datetime(),
        agent,
        spki: cert.tbs_certificate.subject_pki.raw.to_vec(),
    })
}

/// Whether a PEM private key is the key of a certificate.
fn key_matches(key_pem: &str, info: &CertInfo) -> bool {
    use rcgen::PublicKeyData;
    rcgen::KeyPair::from_pem(key_pem).is_ok_and(|k| k.subject_public_key_info() == info.spki)
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
    let (key, csr) = new_key_and_csr()?;
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
    let der = CertificateDer::from_pem_slice(er.certificate_pem.as_bytes())
        .map_err(|e| AgentError::Invalid(format!("server sent an invalid certificate: {e}")))?;
    let info = cert_info(&der).map_err(AgentError::Invalid)?;
    let sd = StateDir(state_dir.to_path_buf());
    // A renewal left over from an earlier enrollment must never be promoted.
    remove_if_exists(&sd.next_key())?;
    remove_if_exists(&sd.next_cert())?;
    write_file(&sd.key(), key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&sd.cert(), er.certificate_pem.as_bytes(), 0o644)?;
    write_file(&sd.ca(), er.ca_pem.as_bytes(), 0o644)?;
    let id = Identity {
        version: IDENTITY_VERSION,
        server,
        pins: vec![pin.to_string()],
        agent_id: er.agent_id,
        workspace_id: er.workspace_id,
        cert_not_before: rfc3339(info.not_before),
        cert_not_after: rfc3339(info.not_after),
    };
    write_identity(&sd, &id)?;
    tracing::info!(agent = %id.agent_id, workspace = %id.workspace_id, "enrolled");
    Ok(id)
}

fn remove_if_exists(path: &Path) -> Result<(), AgentError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AgentError::io(format!("cannot remove {}", path.display()), e)),
    }
}

fn write_identity(sd: &StateDir, id: &Identity) -> Result<(), AgentError> {
    let json = serde_json::to_vec_pretty(id).map_err(|e| AgentError::Invalid(e.to_string()))?;
    write_file(&sd.identity(), &json, 0o600)
}

/// Turn an error answer into [`AgentError::Refused`] with the server's message.
pub fn refused(status: u16, body: &[u8]) -> AgentError {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned());
    AgentError::Refused { status, message }
}

/// An HTTP client over the given TLS config. It records each connection's
/// TLS information (the server certificate), which [`maintain`] reads.
pub fn http_client(cfg: rustls::ClientConfig) -> Result<reqwest::Client, AgentError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .tls_info(true)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| AgentError::Tls(error_chain(&e)))
}

fn read_identity(sd: &StateDir) -> Result<Identity, AgentError> {
    let text = std::fs::read(sd.identity()).map_err(|e| AgentError::NotEnrolled(format!("{}: {e}", sd.identity().display())))?;
    let id: Identity = serde_json::from_slice(&text)
        .map_err(|e| AgentError::Invalid(format!("{} is invalid: {e}", sd.identity().display())))?;
    if id.version != IDENTITY_VERSION {
        return Err(AgentError::Invalid(format!("{} has unsupported version {}", sd.identity().display(), id.version)));
    }
    Ok(id)
}

/// Point an enrolled agent at a new server URL (same server key and pins),
/// for example after the server moved to another port.
pub fn set_server(state_dir: &Path, server: &str) -> Result<Identity, AgentError> {
    let sd = StateDir(state_dir.to_path_buf());
    let mut id = read_identity(&sd)?;
    id.server = normalise_url(server)?;
    write_identity(&sd, &id)?;
    Ok(id)
}

/// A key file and a certificate chain file, read.
struct Pair {
    key_pem: String,
    chain: Vec<CertificateDer<'static>>,
    info: CertInfo,
}

fn read_pair(key: &Path, cert: &Path) -> Option<Pair> {
    let key_pem = std::fs::read_to_string(key).ok()?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert).ok()?.collect::<Result<_, _>>().ok()?;
    let info = cert_info(chain.first()?).ok()?;
    Some(Pair { key_pem, chain, info })
}

fn rename(from: &Path, to: &Path) -> Result<(), AgentError> {
    std::fs::rename(from, to).map_err(|e| AgentError::io(format!("cannot rename {} to {}", from.display(), to.display()), e))
}

fn sync_dir(sd: &StateDir) -> Result<(), AgentError> {
    std::fs::File::open(&sd.0)
        .and_then(|d| d.sync_all())
        .map_err(|e| AgentError::io(format!("cannot sync {}", sd.0.display()), e))
}

/// Make `agent.next.*` the current pair: the key first, then the
/// certificate (see the module documentation for why either crash point
/// is recoverable).
fn promote(sd: &StateDir) -> Result<(), AgentError> {
    rename(&sd.next_key(), &sd.key())?;
    rename(&sd.next_cert(), &sd.cert())?;
    sync_dir(sd)
}

/// The key pair to use, after finishing a renewal a crash interrupted.
fn current_pair(sd: &StateDir, agent: AgentId) -> Result<Pair, AgentError> {
    let current = read_pair(&sd.key(), &sd.cert()).filter(|p| key_matches(&p.key_pem, &p.info));
    let next = read_pair(&sd.next_key(), &sd.next_cert())
        .filter(|p| key_matches(&p.key_pem, &p.info) && p.info.agent.as_deref() == Some(agent.to_string().as_str()));
    match (current, next) {
        (current, Some(next)) if current.as_ref().is_none_or(|c| next.info.not_after > c.info.not_after) => {
            tracing::info!(dir = %sd.0.display(), "completing an interrupted certificate renewal");
            promote(sd)?;
            Ok(next)
        }
        (Some(current), _) => Ok(current),
        (None, _) => {
            // Interrupted between the two renames of `promote`: the new key
            // is in agent.key, its certificate still in agent.next.crt.
            if let (Ok(key_pem), Some(p)) = (std::fs::read_to_string(sd.key()), read_pair(&sd.key(), &sd.next_cert())) {
                if key_matches(&key_pem, &p.info) && p.info.agent.as_deref() == Some(agent.to_string().as_str()) {
                    tracing::info!(dir = %sd.0.display(), "completing an interrupted certificate renewal");
                    rename(&sd.next_cert(), &sd.cert())?;
                    sync_dir(sd)?;
                    return Ok(p);
                }
            }
            Err(AgentError::Tls(format!(
                "{} and {} are not a matching key and certificate, and no interrupted renewal can repair them: enroll the agent again",
                sd.key().display(),
                sd.cert().display()
            )))
        }
    }
}

/// The enrolled identity and a client that presents the agent certificate
/// and trusts only the pinned server keys. Cheap: it reads `identity.json`,
/// `agent.key` and `agent.crt` (and finishes a renewal a crash interrupted,
/// see the module documentation). The identity's certificate times are
/// those of `agent.crt` (corrected in `identity.json` if they differ).
pub fn load(state_dir: &Path) -> Result<(Identity, reqwest::Client), AgentError> {
    let sd = StateDir(state_dir.to_path_buf());
    let mut id = read_identity(&sd)?;
    let pair = current_pair(&sd, id.agent_id)?;
    let (nb, na) = (rfc3339(pair.info.not_before), rfc3339(pair.info.not_after));
    if id.cert_not_before != nb || id.cert_not_after != na {
        id.cert_not_before = nb;
        id.cert_not_after = na;
        if let Err(e) = write_identity(&sd, &id) {
            // The certificate is the truth; the file is only a cache of it.
            tracing::warn!(error = %e, "cannot update the certificate times in identity.json");
        }
    }
    let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes())
        .map_err(|e| AgentError::Tls(format!("cannot read {}: {e}", sd.key().display())))?;
    let cfg = tls::client_config(id.pins.clone(), Some((pair.chain, key))).map_err(AgentError::Tls)?;
    Ok((id, http_client(cfg)?))
}

/// When the certificate should be renewed: two thirds into its validity
/// (`cert_not_before` to `cert_not_after`); `None` if a time cannot be read.
pub fn renew_after(id: &Identity) -> Option<OffsetDateTime> {
    let nb = OffsetDateTime::parse(&id.cert_not_before, &Rfc3339).ok()?;
    let na = OffsetDateTime::parse(&id.cert_not_after, &Rfc3339).ok()?;
    Some(nb + (na - nb) * 2 / 3)
}

/// Whether the certificate should be renewed at `now`: at or after
/// [`renew_after`]. Times that cannot be read count as due (a renewal
/// yields readable ones).
pub fn renewal_due(id: &Identity, now: OffsetDateTime) -> bool {
    renew_after(id).is_none_or(|t| now >= t)
}

/// Decide whether to replace the pin list `current` with the `published`
/// one, received over a connection to a server that presented the key of
/// pin `observed`. Returns the new list (deduplicated, in the published
/// order) when it should change, `None` when it is the same, or why it is
/// refused. The rules make sure an agent never pins itself out of the
/// server it is talking to: the list must be non-empty, hold at most
/// [`MAX_PINS`] well-formed pins, and include `observed` (which the current
/// list accepted, or the connection would not exist).
pub fn adopt_pins(current: &[String], published: &[String], observed: Option<&str>) -> Result<Option<Vec<String>>, String> {
    let observed = observed.ok_or("cannot tell which key the server presented (the client records no TLS information), so the published pins are not adopted")?;
    if !current.iter().any(|p| p == observed) {
        return Err(format!("the server presented {observed}, which is not pinned; the published pins are not adopted"));
    }
    if published.is_empty() {
        return Err("the server published no pins; keeping the current ones".into());
    }
    let mut list: Vec<String> = Vec::new();
    for p in published {
        tls::validate_pin(p).map_err(|e| format!("the server published an invalid pin: {e}; keeping the current ones"))?;
        if !list.contains(p) {
            list.push(p.clone());
        }
    }
    if list.len() > MAX_PINS {
        return Err(format!("the server published {} pins, more than {MAX_PINS}; keeping the current ones", list.len()));
    }
    if !list.iter().any(|p| p == observed) {
        return Err(format!(
            "the published pins do not include {observed}, the key this connection used; keeping the current ones"
        ));
    }
    Ok((list != current).then_some(list))
}

/// A request failed at the connection: say so, and say plainly when the
/// reason is that the agent's certificate expired.
fn connection_error(id: &Identity, now: OffsetDateTime, e: &reqwest::Error) -> AgentError {
    let reason = error_chain(e);
    let expired = OffsetDateTime::parse(&id.cert_not_after, &Rfc3339).is_ok_and(|na| na <= now);
    if expired {
        AgentError::Tls(format!(
            "the agent certificate expired at {}, so the server refuses it in the TLS handshake; enroll the agent again ({reason})",
            id.cert_not_after
        ))
    } else {
        AgentError::Unreachable { url: id.server.clone(), reason }
    }
}

/// The pin of the server certificate a response arrived over.
fn observed_pin(resp: &reqwest::Response) -> Option<String> {
    let der = resp.extensions().get::<reqwest::tls::TlsInfo>()?.peer_certificate()?;
    tls::spki_pin(der).ok()
}

/// Keep the identity current; see the module documentation for the
/// contract. Asks the server (`GET /v1/agent/identity`, over `client`,
/// which must come from [`load`]) for the pins it publishes and adopts them
/// by the rules of [`adopt_pins`]; then, if [`renewal_due`] at `now`, renews
/// the certificate with a new key pair (`POST /v1/agent/renew`), crash-safe.
/// Writes `identity.json` when something changed.
///
/// Errors (the server unreachable or refusing, for example a revoked agent
/// with a 401 naming the revocation) change nothing. A renewal that fails
/// after the pins were updated is reported in
/// [`Maintained::renewal_error`], so the pin change is not lost.
pub async fn maintain(state_dir: &Path, id: &Identity, client: &reqwest::Client, now: OffsetDateTime) -> Result<Maintained, AgentError> {
    let sd = StateDir(state_dir.to_path_buf());
    let resp = client.get(format!("{}/v1/agent/identity", id.server)).send().await.map_err(|e| connection_error(id, now, &e))?;
    let observed = observed_pin(&resp);
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| connection_error(id, now, &e))?;
    if !status.is_success() {
        return Err(refused(status.as_u16(), &body));
    }
    let published: AgentIdentityResponse = serde_json::from_slice(&body)
        .map_err(|e| AgentError::Invalid(format!("server sent an invalid identity response: {e}")))?;
    if published.agent_id != id.agent_id {
        return Err(AgentError::Invalid(format!(
            "server answered for agent {} but this is agent {}: identity.json and agent.crt disagree",
            published.agent_id, id.agent_id
        )));
    }
    let mut next = id.clone();
    let mut out = Maintained { pins_changed: false, renewed: false, pins_ignored: None, renewal_error: None, identity: id.clone() };
    match adopt_pins(&id.pins, &published.pins, observed.as_deref()) {
        Ok(Some(pins)) => {
            tracing::info!(old = ?id.pins, new = ?pins, "server pins changed");
            next.pins = pins;
            write_identity(&sd, &next)?;
            out.pins_changed = true;
        }
        Ok(None) => {}
        Err(why) => {
            tracing::warn!(reason = %why, "published server pins not adopted");
            out.pins_ignored = Some(why);
        }
    }
    if renewal_due(id, now) {
        match renew(&sd, &next, client, now).await {
            Ok(info) => {
                next.cert_not_before = rfc3339(info.not_before);
                next.cert_not_after = rfc3339(info.not_after);
                write_identity(&sd, &next)?;
                out.renewed = true;
                tracing::info!(not_after = %next.cert_not_after, "agent certificate renewed");
            }
            Err(e) if out.pins_changed => out.renewal_error = Some(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    out.identity = next;
    Ok(out)
}

/// Renew: new key pair, CSR, `POST /v1/agent/renew`, files in place.
async fn renew(sd: &StateDir, id: &Identity, client: &reqwest::Client, now: OffsetDateTime) -> Result<CertInfo, AgentError> {
    let (key, csr) = new_key_and_csr()?;
    let key_pem = key.serialize_pem();
    remove_if_exists(&sd.next_cert())?;
    write_file(&sd.next_key(), key_pem.as_bytes(), 0o600)?;
    let resp = client
        .post(format!("{}/v1/agent/renew", id.server))
        .json(&RenewRequest { csr_pem: csr })
        .send()
        .await
        .map_err(|e| connection_error(id, now, &e))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| connection_error(id, now, &e))?;
    if !status.is_success() {
        return Err(refused(status.as_u16(), &body));
    }
    let rr: RenewResponse =
        serde_json::from_slice(&body).map_err(|e| AgentError::Invalid(format!("server sent an invalid renewal response: {e}")))?;
    let der = CertificateDer::from_pem_slice(rr.certificate_pem.as_bytes())
        .map_err(|e| AgentError::Invalid(format!("server sent an invalid certificate: {e}")))?;
    let info = cert_info(&der).map_err(AgentError::Invalid)?;
    if !key_matches(&key_pem, &info) || info.agent.as_deref() != Some(id.agent_id.to_string().as_str()) {
        return Err(AgentError::Invalid("the renewed certificate is not for this agent's new key; keeping the current one".into()));
    }
    write_file(&sd.next_cert(), rr.certificate_pem.as_bytes(), 0o644)?;
    promote(sd)?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn identity(not_before: &str, not_after: &str) -> Identity {
        Identity {
            version: IDENTITY_VERSION,
            server: "https://127.0.0.1:1".into(),
            pins: vec![pin(1)],
            agent_id: AgentId::new(),
            workspace_id: WorkspaceId::new(),
            cert_not_before: not_before.into(),
            cert_not_after: not_after.into(),
        }
    }

    fn pin(n: u8) -> String {
        use base64::Engine;
        format!("sha256/{}", base64::engine::general_purpose::STANDARD.encode([n; 32]))
    }

    #[test]
    fn renewal_is_due_two_thirds_into_the_validity() {
        let id = identity("2024-01-01T00:00:00Z", "2024-01-31T00:00:00Z");
        // 30 days: due after 20.
        assert!(!renewal_due(&id, datetime!(2024-01-01 00:00 UTC)));
        assert!(!renewal_due(&id, datetime!(2024-01-20 23:59:59 UTC)));
        assert!(renewal_due(&id, datetime!(2024-01-21 00:00 UTC)));
        assert!(renewal_due(&id, datetime!(2024-02-15 00:00 UTC)), "expired is due too");
        // Short lives work the same: 30 s, due after 20 s.
        let id = identity("2024-01-01T00:00:00Z", "2024-01-01T00:00:30Z");
        assert!(!renewal_due(&id, datetime!(2024-01-01 00:00:19 UTC)));
        assert!(renewal_due(&id, datetime!(2024-01-01 00:00:20 UTC)));
    }

    #[test]
    fn unreadable_certificate_times_make_renewal_due() {
        let now = datetime!(2024-01-01 00:00 UTC);
        assert!(renewal_due(&identity("", "2030-01-01T00:00:00Z"), now), "a file from before renewal existed");
        assert!(renewal_due(&identity("2024-01-01T00:00:00Z", "soon"), now));
    }

    #[test]
    fn published_pins_replace_the_list_when_they_hold_the_connections_pin() {
        let current = vec![pin(1)];
        // A staged key is announced: both kept, the serving one first.
        assert_eq!(adopt_pins(&current, &[pin(1), pin(2)], Some(&pin(1))), Ok(Some(vec![pin(1), pin(2)])));
        // After the restart the old key is dropped.
        let both = vec![pin(1), pin(2)];
        assert_eq!(adopt_pins(&both, &[pin(2)], Some(&pin(2))), Ok(Some(vec![pin(2)])));
        // The same list (duplicates aside) is no change.
        assert_eq!(adopt_pins(&both, &[pin(1), pin(2), pin(1)], Some(&pin(1))), Ok(None));
    }

    #[test]
    fn published_pins_that_could_lock_the_agent_out_are_refused() {
        let current = vec![pin(1), pin(2)];
        let refused = |published: &[String], observed: Option<&str>| adopt_pins(&current, published, observed).unwrap_err();
        assert!(refused(&[], Some(&pin(1))).contains("no pins"));
        assert!(refused(&[pin(3)], Some(&pin(1))).contains("do not include"), "the connection's own key must stay");
        assert!(refused(&[pin(1), "sha256/short".into()], Some(&pin(1))).contains("invalid pin"));
        assert!(refused(&[pin(1), "md5/xyz".into()], Some(&pin(1))).contains("invalid pin"));
        let many: Vec<String> = (1..=9).map(pin).collect();
        assert!(refused(&many, Some(&pin(1))).contains("more than"));
        assert!(refused(&[pin(1)], None).contains("cannot tell"), "no TLS information, no change");
        assert!(refused(&[pin(3)], Some(&pin(3))).contains("not pinned"));
    }

    #[test]
    fn identity_files_from_before_renewal_parse_without_cert_not_before() {
        let old = format!(
            r#"{{"version":1,"server":"https://h:1","pins":["{}"],"agent_id":"{}","workspace_id":"{}","cert_not_after":"2030-01-01T00:00:00Z"}}"#,
            pin(1),
            AgentId::new(),
            WorkspaceId::new()
        );
        let id: Identity = serde_json::from_str(&old).unwrap();
        assert_eq!(id.cert_not_before, "");
        assert!(serde_json::from_str::<Identity>(&old.replace("\"version\"", "\"extra\":1,\"version\"")).is_err());
    }

    /// A service CA for the file-recovery tests.
    struct Ca {
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
        pem: String,
    }

    fn ca() -> Ca {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        let cert = params.self_signed(&key).unwrap();
        Ca { pem: cert.pem(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// (key PEM, certificate PEM) of agent `agent`, valid for `days` from 2024-01-01.
    fn agent_pair(ca: &Ca, agent: AgentId, days: i64) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            format!("{AGENT_URI_PREFIX}{agent}:workspace:{}", WorkspaceId::new()).try_into().unwrap(),
        )];
        params.not_before = datetime!(2024-01-01 00:00 UTC);
        params.not_after = datetime!(2024-01-01 00:00 UTC) + time::Duration::days(days);
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        (key.serialize_pem(), cert.pem())
    }

    fn state(agent: AgentId, pair: &(String, String), ca: &Ca) -> (tempfile::TempDir, StateDir) {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir(dir.path().to_path_buf());
        let mut id = identity("", "2024-01-31T00:00:00Z");
        id.agent_id = agent;
        write_identity(&sd, &id).unwrap();
        std::fs::write(sd.key(), &pair.0).unwrap();
        std::fs::write(sd.cert(), &pair.1).unwrap();
        std::fs::write(sd.ca(), &ca.pem).unwrap();
        (dir, sd)
    }

    fn loaded_not_after(sd: &StateDir) -> String {
        load(&sd.0).unwrap().0.cert_not_after
    }

    #[test]
    fn load_fills_in_the_certificate_times_from_the_certificate() {
        let (ca, agent) = (ca(), AgentId::new());
        let pair = agent_pair(&ca, agent, 30);
        let (_dir, sd) = state(agent, &pair, &ca);
        let (id, _) = load(&sd.0).unwrap();
        assert_eq!((id.cert_not_before.as_str(), id.cert_not_after.as_str()), ("2024-01-01T00:00:00Z", "2024-01-31T00:00:00Z"));
        // And stores them.
        assert_eq!(read_identity(&sd).unwrap(), id);
    }

    #[test]
    fn a_renewal_interrupted_before_the_renames_is_completed_by_load() {
        let (ca, agent) = (ca(), AgentId::new());
        let (old, new) = (agent_pair(&ca, agent, 30), agent_pair(&ca, agent, 60));
        let (_dir, sd) = state(agent, &old, &ca);
        std::fs::write(sd.next_key(), &new.0).unwrap();
        std::fs::write(sd.next_cert(), &new.1).unwrap();
        assert_eq!(loaded_not_after(&sd), "2024-03-01T00:00:00Z");
        assert_eq!(std::fs::read_to_string(sd.key()).unwrap(), new.0);
        assert_eq!(std::fs::read_to_string(sd.cert()).unwrap(), new.1);
        assert!(!sd.next_key().exists() && !sd.next_cert().exists());
    }

    #[test]
    fn a_renewal_interrupted_between_the_renames_is_completed_by_load() {
        let (ca, agent) = (ca(), AgentId::new());
        let (old, new) = (agent_pair(&ca, agent, 30), agent_pair(&ca, agent, 60));
        let (_dir, sd) = state(agent, &old, &ca);
        // The new key already renamed over agent.key, its certificate not yet.
        std::fs::write(sd.key(), &new.0).unwrap();
        std::fs::write(sd.next_cert(), &new.1).unwrap();
        assert_eq!(loaded_not_after(&sd), "2024-03-01T00:00:00Z");
        assert_eq!(std::fs::read_to_string(sd.cert()).unwrap(), new.1);
        assert!(!sd.next_cert().exists());
    }

    #[test]
    fn a_renewal_interrupted_before_the_certificate_arrived_keeps_the_current_pair() {
        let (ca, agent) = (ca(), AgentId::new());
        let (old, new) = (agent_pair(&ca, agent, 30), agent_pair(&ca, agent, 60));
        let (_dir, sd) = state(agent, &old, &ca);
        std::fs::write(sd.next_key(), &new.0).unwrap();
        assert_eq!(loaded_not_after(&sd), "2024-01-31T00:00:00Z");
        assert_eq!(std::fs::read_to_string(sd.key()).unwrap(), old.0);
        // A certificate that is not for the next key is not promoted either.
        std::fs::write(sd.next_cert(), agent_pair(&ca, agent, 90).1).unwrap();
        assert_eq!(loaded_not_after(&sd), "2024-01-31T00:00:00Z");
    }

    #[test]
    fn a_leftover_pair_of_another_agent_or_an_older_certificate_is_never_promoted() {
        let (ca, agent) = (ca(), AgentId::new());
        let current = agent_pair(&ca, agent, 30);
        let (_dir, sd) = state(agent, &current, &ca);
        let foreign = agent_pair(&ca, AgentId::new(), 90);
        std::fs::write(sd.next_key(), &foreign.0).unwrap();
        std::fs::write(sd.next_cert(), &foreign.1).unwrap();
        assert_eq!(loaded_not_after(&sd), "2024-01-31T00:00:00Z");
        let older = agent_pair(&ca, agent, 10);
        std::fs::write(sd.next_key(), &older.0).unwrap();
        std::fs::write(sd.next_cert(), &older.1).unwrap();
        assert_eq!(loaded_not_after(&sd), "2024-01-31T00:00:00Z");
        assert_eq!(std::fs::read_to_string(sd.key()).unwrap(), current.0);
    }

    #[test]
    fn a_key_that_matches_no_certificate_is_a_clear_error() {
        let (ca, agent) = (ca(), AgentId::new());
        let (_dir, sd) = state(agent, &agent_pair(&ca, agent, 30), &ca);
        std::fs::write(sd.key(), agent_pair(&ca, agent, 30).0).unwrap();
        let err = load(&sd.0).unwrap_err().to_string();
        assert!(err.contains("agent.key") && err.contains("not a matching key and certificate"), "{err}");
    }
}
