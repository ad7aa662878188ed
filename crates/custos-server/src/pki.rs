//! The service's private PKI: a CA created on first start, the server's TLS
//! certificate, and agent client certificates signed from CSRs.
//!
//! Agent certificates carry their identity in one URI subject alternative
//! name, `urn:custos:agent:<agent-id>:workspace:<workspace-id>`. The server
//! reads the workspace from the verified client certificate only (and checks
//! it against the catalog's record of that agent), never from a payload.

use crate::ServerError;
use custos_model::{AgentId, WorkspaceId};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use std::path::Path;
use time::{Duration, OffsetDateTime};

/// The prefix of the agent identity URI.
pub const AGENT_URI_PREFIX: &str = "urn:custos:agent:";

/// The service CA: its certificate and signing key.
pub struct ServiceCa {
    /// CA certificate, PEM.
    pub cert_pem: String,
    /// CA certificate, DER.
    pub cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ServiceCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceCa").finish_non_exhaustive()
    }
}

fn pki_err(what: &str, e: impl std::fmt::Display) -> ServerError {
    ServerError::Pki(format!("{what}: {e}"))
}

/// `sha256/<base64>` of a certificate's SubjectPublicKeyInfo.
pub fn spki_pin(cert_der: &[u8]) -> Result<String, ServerError> {
    use base64::Engine;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| pki_err("cannot parse certificate", e))?;
    let digest = Sha256::digest(cert.tbs_certificate.subject_pki.raw);
    Ok(format!("sha256/{}", base64::engine::general_purpose::STANDARD.encode(digest)))
}

/// Lowercase hex SHA-256 of DER bytes.
pub fn der_sha256(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, ServerError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| pki_err("bad certificate pem", e))
}

impl ServiceCa {
    /// Create a new CA (ECDSA P-256, ten years).
    pub fn generate(common_name: &str) -> Result<(ServiceCa, String), ServerError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| pki_err("cannot generate ca key", e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "custos");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key).map_err(|e| pki_err("cannot self-sign ca", e))?;
        let key_pem = key.serialize_pem();
        let cert_pem = cert.pem();
        let cert_der = cert.der().to_vec();
        let issuer = Issuer::new(params, key);
        Ok((ServiceCa { cert_pem, cert_der, issuer }, key_pem))
    }

    /// Load a CA from its PEM certificate and key.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<ServiceCa, ServerError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| pki_err("cannot read ca key", e))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| pki_err("cannot read ca certificate", e))?;
        Ok(ServiceCa { cert_pem: cert_pem.to_string(), cert_der: pem_to_der(cert_pem)?, issuer })
    }

    /// Issue the server's TLS certificate for the given names and addresses.
    /// Returns (certificate PEM, key PEM).
    pub fn issue_server_cert(&self, names: &[String]) -> Result<(String, String), ServerError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| pki_err("cannot generate server key", e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "custos server");
        params.distinguished_name = dn;
        for n in names {
            match n.parse::<std::net::IpAddr>() {
                Ok(ip) => params.subject_alt_names.push(SanType::IpAddress(ip)),
                Err(_) => params.subject_alt_names.push(SanType::DnsName(
                    n.clone().try_into().map_err(|e| pki_err("bad server name", e))?,
                )),
            }
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(825);
        let cert = params.signed_by(&key, &self.issuer).map_err(|e| pki_err("cannot sign server certificate", e))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Sign an agent's CSR. The CSR's own requested names and extensions are
    /// ignored: the certificate is built from what the server decided. It is
    /// valid from a little before now (a tenth of `validity`, at most five
    /// minutes, for clocks that are slightly behind) until now + `validity`.
    pub fn sign_agent_csr(
        &self,
        csr_pem: &str,
        agent: AgentId,
        workspace: WorkspaceId,
        validity: Duration,
    ) -> Result<IssuedCert, ServerError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| ServerError::BadRequest(format!("invalid certificate signing request: {e}")))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, agent.to_string());
        dn.push(DnType::OrganizationalUnitName, workspace.to_string());
        params.distinguished_name = dn;
        let uri = agent_uri(agent, workspace);
        params.subject_alt_names =
            vec![SanType::URI(uri.try_into().map_err(|e| pki_err("bad agent uri", e))?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).map_err(|e| pki_err("clock", e))?;
        params.not_before = now - (validity / 10_i32).min(Duration::minutes(5));
        params.not_after = now + validity;
        let (not_before, not_after) = (params.not_before, params.not_after);
        csr.params = params;
        let cert = csr.signed_by(&self.issuer).map_err(|e| pki_err("cannot sign agent certificate", e))?;
        Ok(IssuedCert { pem: cert.pem(), der: cert.der().to_vec(), not_before, not_after })
    }
}

/// A certificate the CA signed.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// PEM.
    pub pem: String,
    /// DER.
    pub der: Vec<u8>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// When a certificate valid from `not_before` to `not_after` should be
/// renewed: two thirds into its validity.
pub fn renew_after(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    not_before + (not_after - not_before) * 2 / 3
}

/// The validity period (not_before, not_after) of a DER certificate.
pub fn cert_validity(cert_der: &[u8]) -> Result<(OffsetDateTime, OffsetDateTime), ServerError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| pki_err("cannot parse certificate", e))?;
    let v = cert.validity();
    Ok((v.not_before.to_datetime(), v.not_after.to_datetime()))
}

/// Microseconds since the epoch (the catalog's time unit).
pub fn micros(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// RFC 3339 text of a time.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Whether the private key (PEM) is the key of the certificate (DER): the
/// same SubjectPublicKeyInfo.
pub fn key_matches_cert(key_pem: &str, cert_der: &[u8]) -> Result<bool, ServerError> {
    use rcgen::PublicKeyData;
    let key = KeyPair::from_pem(key_pem).map_err(|e| pki_err("cannot read private key", e))?;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| pki_err("cannot parse certificate", e))?;
    Ok(key.subject_public_key_info() == cert.tbs_certificate.subject_pki.raw)
}

/// The DNS names and IP addresses a (server) certificate names.
pub fn cert_names(cert_der: &[u8]) -> Result<Vec<String>, ServerError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| pki_err("cannot parse certificate", e))?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => out.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(|a| std::net::IpAddr::from(a).to_string()),
                        16 => <[u8; 16]>::try_from(*b).ok().map(|a| std::net::IpAddr::from(a).to_string()),
                        _ => None,
                    };
                    out.extend(ip);
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// The first certificate of a PEM file, as DER.
pub fn read_cert_der(path: &Path) -> Result<Vec<u8>, ServerError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path)
        .map(|c| c.to_vec())
        .map_err(|e| ServerError::Pki(format!("cannot read {}: {e}", path.display())))
}

/// The server key files in the data directory. See `docs/TLS.md` for the
/// rotation procedure that moves them.
pub mod files {
    /// The certificate the server presents (read at start).
    pub const SERVER_CERT: &str = "server.crt";
    /// Its private key (0600).
    pub const SERVER_KEY: &str = "server.key";
    /// A staged next certificate (`custos server rotate-key stage`).
    pub const NEXT_CERT: &str = "server.next.crt";
    /// Its private key (0600).
    pub const NEXT_KEY: &str = "server.next.key";
    /// The certificate replaced by the last activation (kept for a rollback).
    pub const PREV_CERT: &str = "server.prev.crt";
    /// Its private key (0600).
    pub const PREV_KEY: &str = "server.prev.key";
}

/// The pins a running server publishes to its agents
/// (`GET /v1/agent/identity`): the key it serves with, then the key in
/// `server.next.crt` (staged) and the key in `server.crt` when that is not
/// the one it serves with (activated since it started). The files are
/// re-read when their size, time or inode change, so a `stage` or
/// `activate` done while the server runs is published at once; reading
/// them costs a `stat` each otherwise.
#[derive(Debug)]
pub struct ServerPins {
    serving: String,
    dir: std::path::PathBuf,
    cache: std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, (FileStamp, Option<String>)>>,
}

type FileStamp = (u64, u64, Option<std::time::SystemTime>);

impl ServerPins {
    /// For a server serving the key of pin `serving` from data dir `dir`.
    pub fn new(serving: String, dir: &Path) -> Self {
        Self { serving, dir: dir.to_path_buf(), cache: Default::default() }
    }

    /// The pin of the key the server serves with.
    pub fn serving(&self) -> &str {
        &self.serving
    }

    /// The pins to publish, the serving one first, without duplicates.
    pub fn pins(&self) -> Vec<String> {
        let mut out = vec![self.serving.clone()];
        for f in [files::NEXT_CERT, files::SERVER_CERT] {
            if let Some(p) = self.file_pin(&self.dir.join(f)) {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out
    }

    fn file_pin(&self, path: &Path) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        let stamp: FileStamp = (meta.ino(), meta.len(), meta.modified().ok());
        if let Ok(cache) = self.cache.lock() {
            if let Some((s, pin)) = cache.get(path) {
                if *s == stamp {
                    return pin.clone();
                }
            }
        }
        let pin = match read_cert_der(path).and_then(|der| spki_pin(&der)) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read a server certificate to publish its pin");
                None
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(path.to_path_buf(), (stamp, pin.clone()));
        }
        pin
    }
}

/// `sha256/<base64>` of the public key a CSR asks to certify (the same
/// form as [`spki_pin`] of a certificate).
pub fn csr_key_pin(csr_pem: &str) -> Result<String, ServerError> {
    use base64::Engine;
    use rcgen::PublicKeyData;
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| ServerError::BadRequest(format!("invalid certificate signing request: {e}")))?;
    let digest = Sha256::digest(csr.public_key.subject_public_key_info());
    Ok(format!("sha256/{}", base64::engine::general_purpose::STANDARD.encode(digest)))
}

/// Check that a CSR parses and its signature verifies.
pub fn check_csr(csr_pem: &str) -> Result<(), ServerError> {
    CertificateSigningRequestParams::from_pem(csr_pem)
        .map(|_| ())
        .map_err(|e| ServerError::BadRequest(format!("invalid certificate signing request: {e}")))
}

/// The identity URI of an agent.
pub fn agent_uri(agent: AgentId, workspace: WorkspaceId) -> String {
    format!("{AGENT_URI_PREFIX}{agent}:workspace:{workspace}")
}

/// Read (agent, workspace) from a client certificate the TLS layer verified.
pub fn agent_identity(cert_der: &[u8]) -> Result<(AgentId, WorkspaceId), ServerError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| ServerError::Unauthorized(format!("unreadable client certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| ServerError::Unauthorized(format!("client certificate has a bad san: {e}")))?
        .ok_or_else(|| ServerError::Unauthorized("client certificate has no agent identity".into()))?;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(u) = name {
            if let Some(rest) = u.strip_prefix(AGENT_URI_PREFIX) {
                if let Some((a, w)) = rest.split_once(":workspace:") {
                    let agent = a.parse().map_err(|e| ServerError::Unauthorized(format!("{e}")))?;
                    let ws = w.parse().map_err(|e| ServerError::Unauthorized(format!("{e}")))?;
                    return Ok((agent, ws));
                }
            }
        }
    }
    Err(ServerError::Unauthorized("client certificate has no agent identity".into()))
}

/// Write a file readable and writable by its owner only (mode 0600),
/// atomically (temp file, fsync, rename).
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_atomic(path, contents, 0o600)
}

/// Write a file with `mode` atomically (a temporary file beside it named
/// after it, fsync, rename, fsync of the directory).
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_certificates_carry_agent_and_workspace() {
        let (ca, key_pem) = ServiceCa::generate("test ca").unwrap();
        let ca = ServiceCa::load(&ca.cert_pem, &key_pem).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CertificateParams::new(vec!["evil.example".to_string()]).unwrap().serialize_request(&key).unwrap();
        let (agent, ws) = (AgentId::new(), WorkspaceId::new());
        let issued = ca.sign_agent_csr(&csr.pem().unwrap(), agent, ws, Duration::days(30)).unwrap();
        assert_eq!(agent_identity(&issued.der).unwrap(), (agent, ws));
        assert_eq!(cert_validity(&issued.der).unwrap(), (issued.not_before, issued.not_after));
        assert_eq!(issued.not_after - issued.not_before, Duration::days(30) + Duration::minutes(5));
    }

    #[test]
    fn short_lived_agent_certificates_are_backdated_by_a_tenth_of_their_validity() {
        let (ca, _) = ServiceCa::generate("test ca").unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CertificateParams::default().serialize_request(&key).unwrap().pem().unwrap();
        let issued = ca.sign_agent_csr(&csr, AgentId::new(), WorkspaceId::new(), Duration::seconds(30)).unwrap();
        assert_eq!(issued.not_after - issued.not_before, Duration::seconds(33));
        // Renewal is due two thirds in: 22 s after not_before, 19 s after issue.
        assert_eq!(renew_after(issued.not_before, issued.not_after) - issued.not_before, Duration::seconds(22));
        assert!(key_matches_cert(&key.serialize_pem(), &issued.der).unwrap());
        assert_eq!(csr_key_pin(&csr).unwrap(), spki_pin(&issued.der).unwrap());
        let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(!key_matches_cert(&other.serialize_pem(), &issued.der).unwrap());
    }

    #[test]
    fn server_certificates_name_what_they_were_issued_for() {
        let (ca, _) = ServiceCa::generate("test ca").unwrap();
        let names: Vec<String> = ["localhost", "127.0.0.1", "::1", "custos.example"].iter().map(|s| s.to_string()).collect();
        let (cert_pem, _) = ca.issue_server_cert(&names).unwrap();
        let mut got = cert_names(&pem_to_der(&cert_pem).unwrap()).unwrap();
        got.sort();
        let mut want = names.clone();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn published_pins_follow_staged_and_activated_files_while_serving_the_old_key() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = ServiceCa::generate("test ca").unwrap();
        let cert = |_: u8| ca.issue_server_cert(&["localhost".into()]).unwrap().0;
        let (old, new) = (cert(0), cert(1));
        let pin = |pem: &str| spki_pin(&pem_to_der(pem).unwrap()).unwrap();
        std::fs::write(dir.path().join(files::SERVER_CERT), &old).unwrap();
        let pins = ServerPins::new(pin(&old), dir.path());
        assert_eq!(pins.pins(), vec![pin(&old)]);
        // Staged while running: published next.
        std::fs::write(dir.path().join(files::NEXT_CERT), &new).unwrap();
        assert_eq!(pins.pins(), vec![pin(&old), pin(&new)]);
        // Activated while running: still the serving key first, then the new one.
        std::fs::rename(dir.path().join(files::NEXT_CERT), dir.path().join(files::SERVER_CERT)).unwrap();
        assert_eq!(pins.pins(), vec![pin(&old), pin(&new)]);
        // A damaged file publishes nothing more, never less than the serving pin.
        std::fs::write(dir.path().join(files::SERVER_CERT), "garbage").unwrap();
        assert_eq!(pins.pins(), vec![pin(&old)]);
    }

    #[test]
    fn garbage_csr_is_a_bad_request() {
        let (ca, _) = ServiceCa::generate("test ca").unwrap();
        let err = ca.sign_agent_csr("not a csr", AgentId::new(), WorkspaceId::new(), Duration::days(1)).unwrap_err();
        assert!(matches!(err, ServerError::BadRequest(_)), "{err}");
    }

    #[test]
    fn pins_are_sha256_of_the_public_key() {
        let (ca, _) = ServiceCa::generate("test ca").unwrap();
        let (cert_pem, _) = ca.issue_server_cert(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        let der = pem_to_der(&cert_pem).unwrap();
        let pin = spki_pin(&der).unwrap();
        assert!(pin.starts_with("sha256/") && pin.len() == 7 + 44, "{pin}");
    }
}
