//! The custos service: HTTPS API (rustls, TLS 1.2+), mutual-TLS ingest,
//! the redaction backstop, the durable ingest log, the segment builder and
//! SQL queries.
//!
//! [`Server::start`] initialises the data directory on first start (service
//! CA, server certificate, admin token, catalog, storage), binds, writes
//! `server.json`, and serves until [`Server::shutdown`].
#![forbid(unsafe_code)]

pub mod api;
pub mod authz;
pub mod clock;
pub mod config;
pub mod enforce;
mod error;
pub mod export;
pub mod guard;
pub mod ingest;
pub mod keys;
pub mod lockbox;
pub mod pki;
pub mod purge;
pub mod query;
pub mod redaction;
pub mod retention;
pub mod rollup;
pub mod shred;
mod tls;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::ServerConfig;
pub use error::ServerError;
pub use tls::{rotate_key_activate, rotate_key_stage, rotate_key_status, KeyRotation};

use custos_catalog::Catalog;
use custos_store::Storage;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

/// Shared state of request handlers.
pub struct AppState {
    /// Configuration in force.
    pub config: ServerConfig,
    /// The catalog.
    pub catalog: Arc<dyn Catalog>,
    /// Segment storage.
    pub storage: Arc<dyn Storage>,
    /// The workspace keys that seal every segment (encryption at rest).
    pub keys: Arc<dyn custos_store::KeyProvider>,
    /// The ingest pipeline.
    pub ingest: Arc<ingest::Ingest>,
    /// The service CA (signs agent certificates).
    pub ca: Arc<pki::ServiceCa>,
    /// The server key pins published to agents (`GET /v1/agent/identity`).
    pub pins: Arc<pki::ServerPins>,
    /// The clock every time-based decision reads.
    pub clock: Arc<dyn Clock>,
    /// The audit log.
    pub audit: Arc<custos_audit::AuditLog>,
    /// Keyed hash for secrets and payload values in audit records.
    pub hmac: Arc<custos_audit::Hmacer>,
    /// Directory of the audit log (for readers).
    pub audit_dir: PathBuf,
    /// The server's Ed25519 key (the audit log's): signs purge receipts and
    /// export manifests; `audit.pub` verifies them.
    pub signer: Arc<custos_audit::SigningKey>,
    /// Wakes the purge runner (a purge accepted with `--now`).
    pub purge_kick: Arc<tokio::sync::Notify>,
    /// One purge pass at a time (the runner, `purge::run_due` callers).
    pub purge_lock: Arc<tokio::sync::Mutex<()>>,
    /// One retention pass at a time (the background sweeper and `custos
    /// retention sweep`): two passes would roll the same days up twice,
    /// one of them failing its commit.
    pub sweep_lock: Arc<tokio::sync::Mutex<()>>,
    /// Counters of retention, purge and deletion, for `/metrics`.
    pub governance: Arc<GovernanceStats>,
}

/// Counters of the governed store (exposed on `/metrics`).
#[derive(Debug, Default)]
pub struct GovernanceStats {
    /// Sweeper passes.
    pub sweeps: std::sync::atomic::AtomicU64,
    /// Segments dropped by retention.
    pub retention_segments: std::sync::atomic::AtomicU64,
    /// Rows in them.
    pub retention_rows: std::sync::atomic::AtomicU64,
    /// Rows written to rollup tables.
    pub rollup_rows: std::sync::atomic::AtomicU64,
    /// Object removals that failed (retried).
    pub object_removal_failures: std::sync::atomic::AtomicU64,
    /// Purge jobs completed.
    pub purges_completed: std::sync::atomic::AtomicU64,
    /// Purge jobs failed.
    pub purges_failed: std::sync::atomic::AtomicU64,
    /// Rows removed by purges.
    pub purge_rows: std::sync::atomic::AtomicU64,
    /// Workspaces deleted (keys destroyed, bytes removed).
    pub workspaces_deleted: std::sync::atomic::AtomicU64,
}

/// What `server.json` holds: how to reach and trust this server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServerInfo {
    /// host:port actually bound.
    pub listen: String,
    /// `https://host:port`.
    pub url: String,
    /// `sha256/<base64>` of the server certificate's SubjectPublicKeyInfo.
    pub pin: String,
    /// Path of the CA certificate (PEM).
    pub ca: String,
    /// Path of the admin token file.
    pub admin_token_file: String,
    /// Region served.
    pub region: String,
    /// Server version.
    pub version: String,
}

/// A running server.
pub struct Server {
    info: ServerInfo,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    janitor: tokio::task::JoinHandle<()>,
    state: Arc<AppState>,
    _lock: std::fs::File,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Server {
    /// Initialise (first start) or open the data directory, bind and serve.
    pub async fn start(config: ServerConfig) -> Result<Server, ServerError> {
        Self::start_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`Server::start`] with an injected clock (tests move time with a
    /// [`ManualClock`] instead of sleeping).
    pub async fn start_with_clock(mut config: ServerConfig, clock: Arc<dyn Clock>) -> Result<Server, ServerError> {
        // A relative data dir is taken from the working directory at start
        // (the storage and catalog URIs derived from it must be absolute).
        config.data_dir = std::path::absolute(&config.data_dir)
            .map_err(|e| ServerError::io(format!("cannot resolve data dir {}", config.data_dir.display()), e))?;
        let addr = config.validate()?;
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| ServerError::io(format!("cannot create data dir {}", dir.display()), e))?;
        set_mode(&dir, 0o700)?;
        let lock = lock_data_dir(&dir)?;
        let material = tls::init_or_load(&dir, addr, &config.server_names)?;
        let catalog = custos_catalog::open(&config.catalog_uri()).await?;
        bootstrap_admin(catalog.as_ref(), &material.admin_token_hash, clock.now()).await?;
        let audit_dir = dir.join("audit");
        let (signing_key, hmac) = custos_audit::load_or_create_keys(&dir)?;
        let signer = Arc::new(signing_key.clone());
        let (audit, recovery) = custos_audit::AuditLog::open(
            custos_audit::AuditOptions {
                dir: audit_dir.clone(),
                segment_bytes: config.audit.segment_bytes,
                checkpoint_every_records: config.audit.checkpoint_every_records,
                checkpoint_interval: std::time::Duration::from_secs(config.audit.checkpoint_interval_secs),
                retention: std::time::Duration::from_secs(u64::from(config.audit.retention_days) * 86_400),
            },
            signing_key,
        )?;
        tracing::info!(dir = %audit_dir.display(), recovery = ?recovery, "audit log open");
        let audit = Arc::new(audit);
        let storage = custos_store::storage_from_uri(&config.storage_uri())?;
        let keys = config.key_provider()?;
        let limits = custos_model::wire::Limits {
            max_frame_bytes: config.ingest.max_batch_bytes,
            max_payload_bytes: config.ingest.max_payload_bytes,
            max_events: config.ingest.max_events_per_batch,
            ..Default::default()
        };
        let ingest = ingest::Ingest::start(
            &dir.join("wal"),
            config.ingest.wal_segment_bytes,
            limits,
            ingest::BuilderLimits {
                segment_rows: config.ingest.segment_rows,
                buffer_bytes: config.ingest.buffer_bytes,
                flush_interval: std::time::Duration::from_millis(config.ingest.flush_interval_ms.max(10)),
            },
            catalog.clone(),
            storage.clone(),
            keys.clone(),
        )
        .await?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ServerError::io(format!("cannot listen on {addr}"), e))?;
        let bound = listener.local_addr().map_err(|e| ServerError::io("cannot read bound address", e))?;
        let state = Arc::new(AppState {
            config: config.clone(),
            catalog,
            storage,
            keys,
            ingest,
            ca: Arc::new(material.ca),
            pins: Arc::new(pki::ServerPins::new(material.pin.clone(), &dir)),
            clock: clock.clone(),
            audit: audit.clone(),
            hmac: Arc::new(hmac),
            audit_dir,
            signer,
            purge_kick: Arc::new(tokio::sync::Notify::new()),
            purge_lock: Arc::new(tokio::sync::Mutex::new(())),
            sweep_lock: Arc::new(tokio::sync::Mutex::new(())),
            governance: Arc::new(GovernanceStats::default()),
        });
        let janitor = {
            let (audit, clock, st) = (audit.clone(), clock.clone(), state.clone());
            // One task: aborting it at shutdown stops both loops.
            tokio::spawn(async move {
                tokio::join!(audit_janitor(audit, clock), key_janitor(st.clone()), retention_janitor(st.clone()), purge::runner(st));
            })
        };
        let host = match bound.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let info = ServerInfo {
            listen: bound.to_string(),
            url: format!("https://{host}:{}", bound.port()),
            pin: material.pin,
            ca: abs(&dir.join("ca.crt")),
            admin_token_file: abs(&dir.join("admin.token")),
            region: config.region.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let json = serde_json::to_vec_pretty(&info).unwrap_or_default();
        pki::write_private(&dir.join("server.json"), &json)
            .map_err(|e| ServerError::io("cannot write server.json", e))?;
        let (shutdown, rx) = watch::channel(false);
        let app = api::router(state.clone());
        let task = tokio::spawn(tls::serve(listener, material.server_config, app, rx));
        tracing::info!(listen = %bound, region = %config.region, "custos server listening");
        Ok(Server { info, addr: bound, shutdown, task, janitor, state, _lock: lock })
    }

    /// How to reach and trust this server (what `server.json` holds).
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shared state (for in-process tools such as the quickstart).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Stop accepting connections, write buffered rows to segments, and stop.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        self.janitor.abort();
        let flushed = self.state.ingest.flush().await;
        self.state.audit.checkpoint().await?;
        flushed
    }
}

/// The principal named `admin` holds the token in `admin.token`. Created on
/// first start (and for data directories made before principals existed).
async fn bootstrap_admin(catalog: &dyn Catalog, token_hash: &[u8; 32], now: i64) -> Result<(), ServerError> {
    let hash = hex::encode(token_hash);
    if catalog.get_token_by_hash(&hash).await?.is_some() {
        return Ok(());
    }
    let admin = match catalog.get_principal_by_name("admin").await? {
        Some(p) => p,
        None => {
            let p = custos_catalog::Principal {
                id: custos_model::PrincipalId::new(),
                name: "admin".into(),
                service_role: Some(custos_model::ServiceRole::Admin),
                created_at: now,
            };
            catalog.create_principal(&p).await?;
            p
        }
    };
    catalog
        .add_token(&custos_catalog::ApiToken {
            id: custos_model::TokenId::new(),
            principal_id: admin.id,
            token_hash: hash,
            created_at: now,
            expires_at: None,
            revoked_at: None,
        })
        .await?;
    tracing::info!(principal = %admin.id, "bootstrap admin principal holds admin.token");
    Ok(())
}

/// Checkpoints on a timer and prunes audit records past their retention.
async fn audit_janitor(audit: Arc<custos_audit::AuditLog>, clock: Arc<dyn Clock>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let a = audit.clone();
        let now = clock.now();
        match tokio::task::spawn_blocking(move || a.prune(now)).await {
            Ok(Ok(report)) => tracing::debug!(?report, "audit retention pass"),
            Ok(Err(e)) => tracing::warn!(error = %e, "audit retention pass failed"),
            Err(e) => tracing::warn!(error = %e, "audit retention task failed"),
        }
    }
}

/// Hourly: rotates workspace keys that reached `encryption.rotate_after_days`.
async fn key_janitor(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tick.tick().await;
        match keys::rotate_due(&state).await {
            Ok(ws) if !ws.is_empty() => tracing::info!(workspaces = ws.len(), "workspace keys rotated on schedule"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "key rotation pass failed"),
        }
    }
}

/// Every `retention.sweep_interval_secs`: the retention sweeper.
async fn retention_janitor(state: Arc<AppState>) {
    let every = std::time::Duration::from_secs(state.config.retention.sweep_interval_secs.max(1));
    // The first pass a minute after start (or one interval, if shorter),
    // not while the server is still coming up.
    let first = tokio::time::Instant::now() + every.min(std::time::Duration::from_secs(60));
    let mut tick = tokio::time::interval_at(first, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match retention::sweep(&state).await {
            Ok(r) if r.segments_deleted > 0 || r.changes_applied > 0 || r.objects_removed > 0 => {
                tracing::info!(segments = r.segments_deleted, rows = r.rows_deleted, changes = r.changes_applied, elapsed_ms = r.elapsed_ms, "retention pass")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention pass failed"),
        }
    }
}

fn abs(p: &Path) -> String {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string()
}

fn set_mode(p: &Path, mode: u32) -> Result<(), ServerError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ServerError::io(format!("cannot set permissions of {}", p.display()), e))
}

fn lock_data_dir(dir: &Path) -> Result<std::fs::File, ServerError> {
    let path: PathBuf = dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ServerError::io(format!("cannot open {}", path.display()), e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServerError::Config(format!(
            "data dir {} is in use by another custos server",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(ServerError::io(format!("cannot lock {}", path.display()), e)),
    }
}
