//! TLS material in the data directory, server key rotation, and the HTTPS
//! accept loop.
//!
//! Files (created on first start, owner-only where secret):
//! `ca.crt`, `ca.key` (0600), `server.crt`, `server.key` (0600),
//! `admin.token` (0600); during a key rotation also `server.next.crt`,
//! `server.next.key` (0600) and, after one, `server.prev.crt`,
//! `server.prev.key` (0600) ([`rotate_key_stage`], [`rotate_key_activate`],
//! `docs/TLS.md`). The server reads its key only at start, so a rotation
//! takes effect at the next start. Only TLS 1.2 and 1.3 are offered; rustls has no
//! older versions, so TLS 1.0/1.1 and plain-HTTP clients fail the handshake.
//! Client certificates are optional at the TLS layer (admins and enrolling
//! agents have none) but, when presented, must chain to the service CA;
//! routes that need an agent identity refuse requests without one.

use crate::api::ConnInfo;
use crate::pki::{self, files, ServiceCa};
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
    let srv_crt = dir.join(files::SERVER_CERT);
    let srv_key = dir.join(files::SERVER_KEY);
    let token = dir.join("admin.token");
    // A rotation command running at the same moment finishes first; one
    // interrupted by a crash is completed.
    let _rotation = rotation_lock(dir, true)?;
    recover_rotation(dir)?;
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
    if !pki::key_matches_cert(&read(&srv_key)?, leaf)? {
        return Err(ServerError::Pki(format!(
            "{} is not the key of {}: restore the matching pair (server.prev.* holds the pair before the last `rotate-key activate`)",
            srv_key.display(),
            srv_crt.display()
        )));
    }
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

/// The state of a data directory's server keys, as `custos server
/// rotate-key` reports it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct KeyRotation {
    /// What was done: `stage`, `activate` or `status`.
    pub action: String,
    /// The data directory.
    pub data_dir: String,
    /// Pin of `server.crt`: the key the server presents from its next start.
    pub pin: String,
    /// Expiry of `server.crt`, RFC 3339.
    pub not_after: String,
    /// Pin of the staged next key (`server.next.crt`), if any.
    pub next_pin: Option<String>,
    /// Pin of the key replaced by the last activation (`server.prev.crt`), if any.
    pub prev_pin: Option<String>,
    /// Pin in `server.json`: the key the running server (or its last run)
    /// serves with.
    pub serving_pin: Option<String>,
    /// Whether the server must restart for `server.crt` to take effect
    /// (`serving_pin` differs from `pin`).
    pub restart_needed: bool,
    /// What to do next.
    pub next_step: String,
}

fn rename(from: &Path, to: &Path) -> Result<(), ServerError> {
    std::fs::rename(from, to).map_err(|e| ServerError::io(format!("cannot rename {} to {}", from.display(), to.display()), e))
}

fn sync_dir(dir: &Path) -> Result<(), ServerError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ServerError::io(format!("cannot sync {}", dir.display()), e))
}

/// Serialise rotation commands (and a server start) on `rotate.lock`.
fn rotation_lock(dir: &Path, wait: bool) -> Result<std::fs::File, ServerError> {
    let path = dir.join("rotate.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ServerError::io(format!("cannot open {}", path.display()), e))?;
    if wait {
        f.lock().map_err(|e| ServerError::io(format!("cannot lock {}", path.display()), e))?;
        return Ok(f);
    }
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(ServerError::Conflict(format!("another key rotation is running on {}", dir.display())))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(ServerError::io(format!("cannot lock {}", path.display()), e)),
    }
}

/// Complete an activation interrupted between its two renames (the next
/// key already in `server.key`, its certificate still in `server.next.crt`).
fn recover_rotation(dir: &Path) -> Result<(), ServerError> {
    let (next_crt, next_key, key) = (dir.join(files::NEXT_CERT), dir.join(files::NEXT_KEY), dir.join(files::SERVER_KEY));
    if !next_crt.exists() || next_key.exists() || !key.exists() {
        return Ok(());
    }
    if pki::key_matches_cert(&read(&key)?, &pki::read_cert_der(&next_crt)?)? {
        tracing::warn!(dir = %dir.display(), "completing a key activation that was interrupted");
        rename(&next_crt, &dir.join(files::SERVER_CERT))?;
        sync_dir(dir)?;
    }
    Ok(())
}

fn initialised(dir: &Path) -> Result<(), ServerError> {
    for f in ["ca.crt", "ca.key", files::SERVER_CERT, files::SERVER_KEY] {
        if !dir.join(f).exists() {
            return Err(ServerError::Config(format!(
                "{} has no {f}: start the server once with this data dir (it creates the CA and the server key) before rotating",
                dir.display()
            )));
        }
    }
    Ok(())
}

fn file_pin(path: &Path) -> Result<Option<String>, ServerError> {
    if !path.exists() {
        return Ok(None);
    }
    pki::read_cert_der(path).and_then(|d| pki::spki_pin(&d)).map(Some)
}

/// Report the server key files of `dir` without changing anything.
pub fn rotate_key_status(dir: &Path) -> Result<KeyRotation, ServerError> {
    initialised(dir)?;
    let _lock = rotation_lock(dir, false)?;
    recover_rotation(dir)?;
    status(dir, "status")
}

fn status(dir: &Path, action: &str) -> Result<KeyRotation, ServerError> {
    let der = pki::read_cert_der(&dir.join(files::SERVER_CERT))?;
    let pin = pki::spki_pin(&der)?;
    let (_, not_after) = pki::cert_validity(&der)?;
    let next_pin = if dir.join(files::NEXT_KEY).exists() { file_pin(&dir.join(files::NEXT_CERT))? } else { None };
    let serving_pin = std::fs::read(dir.join("server.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<crate::ServerInfo>(&b).ok())
        .map(|i| i.pin);
    let restart_needed = serving_pin.as_ref().is_some_and(|p| *p != pin);
    let next_step = match (&next_pin, restart_needed) {
        (Some(_), _) => "let every agent learn the next pin (they do at their next identity refresh, \
                         `custos agent refresh-identity`), then run `custos server rotate-key activate` and restart the server"
            .to_string(),
        (None, true) => "restart the server: it serves the previous key until then; agents that did not learn the new pin \
                         will be refused with a pin mismatch"
            .to_string(),
        (None, false) => "nothing to do; `custos server rotate-key stage` begins a rotation".to_string(),
    };
    Ok(KeyRotation {
        action: action.to_string(),
        data_dir: dir.display().to_string(),
        pin,
        not_after: pki::rfc3339(not_after),
        next_pin,
        prev_pin: file_pin(&dir.join(files::PREV_CERT))?,
        serving_pin,
        restart_needed,
        next_step,
    })
}

/// Create the next server key and certificate (`server.next.key`, 0600, and
/// `server.next.crt`), signed by the service CA for the same names as
/// `server.crt`. A running server publishes its pin to agents at once; the
/// key is used only after [`rotate_key_activate`] and a restart. A key
/// already staged is kept (an error) unless `replace`, because agents may
/// already trust it.
pub fn rotate_key_stage(dir: &Path, replace: bool) -> Result<KeyRotation, ServerError> {
    initialised(dir)?;
    let _lock = rotation_lock(dir, false)?;
    recover_rotation(dir)?;
    let (next_crt, next_key) = (dir.join(files::NEXT_CERT), dir.join(files::NEXT_KEY));
    if next_crt.exists() && next_key.exists() && !replace {
        let pin = file_pin(&next_crt)?.unwrap_or_default();
        return Err(ServerError::Conflict(format!(
            "a next key is already staged (pin {pin}): activate it with `custos server rotate-key activate`, or pass \
             --replace to discard it (agents that already learned its pin must then learn the new one before activation)"
        )));
    }
    let ca = ServiceCa::load(&read(&dir.join("ca.crt"))?, &read(&dir.join("ca.key"))?)?;
    let names = pki::cert_names(&pki::read_cert_der(&dir.join(files::SERVER_CERT))?)?;
    let (cert_pem, key_pem) = ca.issue_server_cert(&names)?;
    // The certificate goes first, so a crash never pairs an old certificate
    // with a new key; a key without a certificate is not staged.
    if next_crt.exists() {
        std::fs::remove_file(&next_crt).map_err(|e| ServerError::io(format!("cannot remove {}", next_crt.display()), e))?;
        sync_dir(dir)?;
    }
    pki::write_atomic(&next_key, key_pem.as_bytes(), 0o600).map_err(|e| ServerError::io(format!("cannot write {}", next_key.display()), e))?;
    pki::write_atomic(&next_crt, cert_pem.as_bytes(), 0o644).map_err(|e| ServerError::io(format!("cannot write {}", next_crt.display()), e))?;
    tracing::info!(dir = %dir.display(), "staged the next server key");
    status(dir, "stage")
}

/// Make the staged key current: `server.crt`/`server.key` move to
/// `server.prev.*`, `server.next.*` become `server.crt`/`server.key`. A
/// running server keeps serving the key it started with; the new key takes
/// effect when it next starts. Crash-safe: a pair interrupted between the
/// renames is completed by the next rotation command or server start.
pub fn rotate_key_activate(dir: &Path) -> Result<KeyRotation, ServerError> {
    initialised(dir)?;
    let _lock = rotation_lock(dir, false)?;
    recover_rotation(dir)?;
    let (next_crt, next_key) = (dir.join(files::NEXT_CERT), dir.join(files::NEXT_KEY));
    if !next_crt.exists() || !next_key.exists() {
        return Err(ServerError::Conflict(
            "no next key is staged: run `custos server rotate-key stage` first, and let the agents learn its pin".into(),
        ));
    }
    let der = pki::read_cert_der(&next_crt)?;
    if !pki::key_matches_cert(&read(&next_key)?, &der)? {
        return Err(ServerError::Pki(format!(
            "{} is not the key of {}: stage again with --replace",
            next_key.display(),
            next_crt.display()
        )));
    }
    let (_, not_after) = pki::cert_validity(&der)?;
    if not_after <= time::OffsetDateTime::now_utc() {
        return Err(ServerError::Pki(format!("{} has expired: stage again with --replace", next_crt.display())));
    }
    for (from, to, mode) in [(files::SERVER_KEY, files::PREV_KEY, 0o600), (files::SERVER_CERT, files::PREV_CERT, 0o644)] {
        let bytes = std::fs::read(dir.join(from)).map_err(|e| ServerError::io(format!("cannot read {from}"), e))?;
        pki::write_atomic(&dir.join(to), &bytes, mode).map_err(|e| ServerError::io(format!("cannot write {to}"), e))?;
    }
    rename(&next_key, &dir.join(files::SERVER_KEY))?;
    rename(&next_crt, &dir.join(files::SERVER_CERT))?;
    sync_dir(dir)?;
    tracing::info!(dir = %dir.display(), "activated the next server key; it takes effect at the next start");
    status(dir, "activate")
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
