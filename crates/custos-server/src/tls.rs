//! TLS material in the data directory, and the HTTPS accept loop.
//!
//! Files (created on first start, owner-only where secret):
//! `ca.crt`, `ca.key` (0600), `server.crt`, `server.key` (0600),
//! `admin.token` (0600). Only TLS 1.2 and 1.3 are offered; rustls has no
//! older versions, so TLS 1.0/1.1 and plain-HTTP clients fail the handshake.
//! Client certificates are optional at the TLS layer (admins and enrolling
//! agents have none) but, when presented, must chain to the service CA;
//! routes that need an agent identity refuse requests without one.

use crate::api::ConnInfo;
use crate::pki::{self, ServiceCa};
use crate::ServerError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub(crate) struct Material {
    pub ca: ServiceCa,
    pub server_config: Arc<rustls::ServerConfig>,
    pub pin: String,
    pub admin_token_hash: [u8; 32],
}

fn read(path: &Path) -> Result<String, ServerError> {
    std::fs::read_to_string(path).map_err(|e| ServerError::io(format!("cannot read {}", path.display()), e))
}

fn write_public(path: &Path, contents: &str) -> Result<(), ServerError> {
    std::fs::write(path, contents).map_err(|e| ServerError::io(format!("cannot write {}", path.display()), e))
}

/// The crypto provider used everywhere (ring).
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn init_or_load(dir: &Path, listen: SocketAddr, extra_names: &[String]) -> Result<Material, ServerError> {
    let ca_crt = dir.join("ca.crt");
    let ca_key = dir.join("ca.key");
    let srv_crt = dir.join("server.crt");
    let srv_key = dir.join("server.key");
    let token = dir.join("admin.token");
    let ca = if ca_crt.exists() {
        ServiceCa::load(&read(&ca_crt)?, &read(&ca_key)?)?
    } else {
        let (ca, key_pem) = ServiceCa::generate("custos service CA")?;
        pki::write_private(&ca_key, key_pem.as_bytes()).map_err(|e| ServerError::io("cannot write ca.key", e))?;
        write_public(&ca_crt, &ca.cert_pem)?;
        tracing::info!(path = %ca_crt.display(), "created service CA");
        ca
    };
    if !srv_crt.exists() || !srv_key.exists() {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            let h = h.trim().to_string();
            if !h.is_empty() && !names.contains(&h) {
                names.push(h);
            }
        }
        if !listen.ip().is_unspecified() && !names.contains(&listen.ip().to_string()) {
            names.push(listen.ip().to_string());
        }
        names.extend(extra_names.iter().cloned());
        let (cert_pem, key_pem) = ca.issue_server_cert(&names)?;
        pki::write_private(&srv_key, key_pem.as_bytes()).map_err(|e| ServerError::io("cannot write server.key", e))?;
        write_public(&srv_crt, &cert_pem)?;
    }
    if !token.exists() {
        use base64::Engine;
        use rand::RngCore;
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        let t = format!("cst_{}\n", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b));
        pki::write_private(&token, t.as_bytes()).map_err(|e| ServerError::io("cannot write admin.token", e))?;
    }
    let admin_token = read(&token)?;
    let admin_token_hash: [u8; 32] = Sha256::digest(admin_token.trim().as_bytes()).into();

    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&srv_crt)
        .map_err(|e| ServerError::Pki(format!("cannot read {}: {e}", srv_crt.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ServerError::Pki(format!("cannot read {}: {e}", srv_crt.display())))?;
    let leaf = chain.first().ok_or_else(|| ServerError::Pki(format!("{} holds no certificate", srv_crt.display())))?;
    let pin = pki::spki_pin(leaf)?;
    let key = PrivateKeyDer::from_pem_file(&srv_key)
        .map_err(|e| ServerError::Pki(format!("cannot read {}: {e}", srv_key.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.cert_der.clone()))
        .map_err(|e| ServerError::Pki(format!("bad ca certificate: {e}")))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| ServerError::Pki(format!("client verifier: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ServerError::Pki(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| ServerError::Pki(format!("server certificate: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Material { ca, server_config: Arc::new(cfg), pin, admin_token_hash })
}

/// Accept TLS connections and serve HTTP on them until `shutdown` flips.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use tower::ServiceExt;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    // At most this many connections at once; more wait in the kernel backlog.
    let permits = Arc::new(tokio::sync::Semaphore::new(4096));
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(%remote, error = %e, "tls handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%remote, "tls handshake timed out");
                    return;
                }
            };
            let client_cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Arc::new(c.to_vec()));
            let info = ConnInfo { remote, client_cert };
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(info.clone());
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%remote, error = %e, "connection ended with an error");
                    }
                }
                _ = conn_shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
                }
            }
        });
    }
}
