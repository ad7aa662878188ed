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
    /// ignored: the certificate is built from what the server decided.
    /// Returns (certificate PEM, certificate DER, not_after).
    pub fn sign_agent_csr(
        &self,
        csr_pem: &str,
        agent: AgentId,
        workspace: WorkspaceId,
        validity: Duration,
    ) -> Result<(String, Vec<u8>, OffsetDateTime), ServerError> {
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
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + validity;
        let not_after = params.not_after;
        csr.params = params;
        let cert = csr.signed_by(&self.issuer).map_err(|e| pki_err("cannot sign agent certificate", e))?;
        Ok((cert.pem(), cert.der().to_vec(), not_after))
    }
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
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
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
        let (_, der, _) = ca.sign_agent_csr(&csr.pem().unwrap(), agent, ws, Duration::days(30)).unwrap();
        assert_eq!(agent_identity(&der).unwrap(), (agent, ws));
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
