//! The agent's TLS: the server is trusted by its public-key pin (plus backup
//! pins, so the server can rotate its key), never by a CA store, and only
//! TLS 1.2 and 1.3 are offered.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// `sha256/<base64>` of a certificate's SubjectPublicKeyInfo.
pub fn spki_pin(cert_der: &[u8]) -> Result<String, String> {
    use base64::Engine;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| format!("cannot parse server certificate: {e}"))?;
    let digest = Sha256::digest(cert.tbs_certificate.subject_pki.raw);
    Ok(format!("sha256/{}", base64::engine::general_purpose::STANDARD.encode(digest)))
}

/// Check the syntax of a pin: `sha256/` and 32 bytes of base64.
pub fn validate_pin(pin: &str) -> Result<(), String> {
    use base64::Engine;
    let b64 = pin
        .strip_prefix("sha256/")
        .ok_or_else(|| format!("pin {pin:?} must start with sha256/"))?;
    match base64::engine::general_purpose::STANDARD.decode(b64) {
        Ok(b) if b.len() == 32 => Ok(()),
        _ => Err(format!("pin {pin:?} is not sha256/ followed by the base64 of 32 bytes")),
    }
}

/// Trusts a server whose end-entity key matches one of the pins, and checks
/// the handshake signature with that key.
#[derive(Debug)]
pub struct PinVerifier {
    pins: Vec<String>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinVerifier {
    /// A verifier accepting any of `pins`.
    pub fn new(pins: Vec<String>) -> Self {
        Self { pins, provider: provider() }
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pin = spki_pin(end_entity).map_err(rustls::Error::General)?;
        if self.pins.iter().any(|p| p == &pin) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server key does not match the pinned key: server presented {pin}, expected {}",
                self.pins.join(" or ")
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The crypto provider (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client config trusting `pins`, optionally presenting a client
/// certificate.
pub fn client_config(
    pins: Vec<String>,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinVerifier::new(pins)));
    match client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| format!("client certificate: {e}")),
        None => Ok(builder.with_no_client_auth()),
    }
}
