//! Server configuration: TOML, every field documented, unknown fields
//! refused. Command-line flags override the file. See `examples/server.toml`.

use crate::ServerError;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Shortest agent certificate validity accepted (`agent_cert_validity_secs`).
pub const MIN_AGENT_CERT_SECS: u64 = 2;
/// Longest agent certificate validity accepted: ten years.
pub const MAX_AGENT_CERT_SECS: u64 = 10 * 365 * 86_400;

/// The whole server configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Data directory: CA, keys, admin token, catalog, ingest log, segments.
    pub data_dir: PathBuf,
    /// Address to listen on (HTTPS only). Port 0 picks a free port.
    pub listen: String,
    /// The region this server stores data in; workspaces must name it.
    pub region: String,
    /// Catalog URI. Default: `sqlite://<data_dir>/catalog.db`.
    pub catalog: Option<String>,
    /// Segment storage URI. Default: `file://<data_dir>/segments`.
    pub storage: Option<String>,
    /// Extra DNS names or IP addresses to put in the server certificate
    /// (localhost, 127.0.0.1, ::1 and the host name are always there).
    pub server_names: Vec<String>,
    /// How long a new enrollment key stays valid, in hours.
    pub enrollment_key_ttl_hours: u32,
    /// Validity of agent client certificates, in days (at enrollment and at
    /// every renewal; agents renew two thirds into it). Default 30.
    /// Ignored when `agent_cert_validity_secs` is set.
    pub agent_cert_days: u32,
    /// Validity of agent client certificates, in seconds; when set, it
    /// replaces `agent_cert_days`. For validities below a day (tests, or
    /// very short-lived credentials): agents must then run often enough to
    /// renew within the last third of it. Unset by default.
    pub agent_cert_validity_secs: Option<u64>,
    /// Ingest settings.
    pub ingest: IngestConfig,
    /// Query settings.
    pub query: QueryConfig,
    /// Audit log settings.
    pub audit: AuditConfig,
    /// Encryption at rest: who holds the workspace keys.
    pub encryption: EncryptionConfig,
    /// Retention: plans, the grace period of reductions, the sweeper,
    /// rollups.
    pub retention: RetentionConfig,
    /// Purge jobs.
    pub purge: PurgeConfig,
}

/// Purge settings (`[purge]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PurgeConfig {
    /// Hours a purge waits after it is accepted, during which `custos purge
    /// cancel` can stop it (its rows are hidden from queries meanwhile).
    /// `--now` skips the wait. Default 24.
    pub cancel_window_hours: u32,
    /// Seconds between two looks for due purge jobs. Default 10.
    pub poll_interval_secs: u64,
}

impl Default for PurgeConfig {
    fn default() -> Self {
        Self { cancel_window_hours: 24, poll_interval_secs: 10 }
    }
}

/// Retention settings (`[retention]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// The plans, by name (`[retention.plans.NAME]`). Default: `free`
    /// (7 days, at most 7; rollups 90) and `paid` (31 days, at most 730;
    /// rollups 730). A workspace names its plan when it is created.
    pub plans: std::collections::BTreeMap<String, PlanConfig>,
    /// The plan of workspaces created without one. Default `paid`.
    pub default_plan: String,
    /// Days a retention reduction waits before it takes effect (it can be
    /// cancelled meanwhile; `--now` skips the wait unless the workspace is
    /// locked). Default 30; 0 applies reductions at once.
    pub grace_days: u32,
    /// Seconds between two passes of the sweeper (apply due changes, drop
    /// expired segments, finish object removals). Default 3600.
    pub sweep_interval_secs: u64,
    /// Rollups: groups of fewer distinct hosts than this are left out of
    /// `<table>_rollup` (k-anonymity). Default 5.
    pub rollup_min_hosts: u32,
}

/// One plan's retention limits (`[retention.plans.NAME]`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Default period of a new workspace, days.
    pub default_days: u32,
    /// Longest period a workspace default or table override may have, days.
    pub max_days: u32,
    /// Period of rollup tables (`<table>_rollup`) without an override, days
    /// (may exceed `max_days`: aggregates outlive raw rows).
    pub rollup_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        let plans = [
            ("free".to_string(), PlanConfig { default_days: 7, max_days: 7, rollup_days: 90 }),
            ("paid".to_string(), PlanConfig { default_days: 31, max_days: 730, rollup_days: 730 }),
        ]
        .into();
        Self { plans, default_plan: "paid".into(), grace_days: 30, sweep_interval_secs: 3600, rollup_min_hosts: 5 }
    }
}

impl RetentionConfig {
    /// The plan named `name`, as the retention arithmetic uses it.
    pub fn plan(&self, name: &str) -> Result<custos_store::retention::Plan, ServerError> {
        let p = self.plans.get(name).ok_or_else(|| {
            ServerError::BadRequest(format!(
                "plan {name:?} is not offered here (plans: {})",
                self.plans.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        Ok(custos_store::retention::Plan {
            name: name.to_string(),
            default_days: p.default_days,
            max_days: p.max_days,
            rollup_days: p.rollup_days,
        })
    }

    fn validate(&self) -> Result<(), ServerError> {
        if self.plans.is_empty() {
            return Err(ServerError::Config("retention.plans must name at least one plan".into()));
        }
        for name in self.plans.keys() {
            if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(ServerError::Config(format!("retention.plans: plan name {name:?} must be 1-64 of [A-Za-z0-9_-]")));
            }
            self.plan(name)?
                .validate()
                .map_err(|e| ServerError::Config(format!("retention.plans.{name}: {e}")))?;
        }
        if !self.plans.contains_key(&self.default_plan) {
            return Err(ServerError::Config(format!(
                "retention.default_plan {:?} is not one of retention.plans",
                self.default_plan
            )));
        }
        if self.grace_days > custos_store::retention::MAX_DAYS {
            return Err(ServerError::Config(format!("retention.grace_days must be at most {}", custos_store::retention::MAX_DAYS)));
        }
        if self.sweep_interval_secs == 0 {
            return Err(ServerError::Config("retention.sweep_interval_secs must be at least 1".into()));
        }
        if self.rollup_min_hosts == 0 {
            return Err(ServerError::Config("retention.rollup_min_hosts must be at least 1".into()));
        }
        Ok(())
    }
}

/// Which key provider holds the workspace keys that wrap every segment's
/// data key (docs/ENCRYPTION.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyProviderKind {
    /// Service-managed: a keystore in the data dir, every workspace key
    /// sealed under a master key (`master_key_file` or the
    /// `CUSTOS_MASTER_KEY` environment variable).
    #[default]
    Service,
    /// Customer-managed key files: `<key_dir>/<workspace id>.key`, 32 bytes
    /// as hex or base64, read on every use (remove the file to revoke).
    KeyFiles,
}

/// Encryption at rest settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// The key provider. Default `service`.
    pub provider: KeyProviderKind,
    /// Service provider: the master key file (64 hex digits or base64 of
    /// 32 bytes). Default `<data_dir>/keys/master.key`, created (0600) at
    /// first start when missing. `CUSTOS_MASTER_KEY`, when set, is used
    /// instead. Keep it off the data disk in production: a copy of the data
    /// dir together with its master key reads everything.
    pub master_key_file: Option<PathBuf>,
    /// Service provider: the keystore. Default `<data_dir>/keys/keystore.json`.
    pub keystore: Option<PathBuf>,
    /// Key-files provider: the directory of `<workspace id>.key` files
    /// (required with `provider = "key_files"`).
    pub key_dir: Option<PathBuf>,
    /// Rotate a workspace's key automatically once its active version is
    /// this many days old (service provider; older segments are rewrapped
    /// in the background). 0 turns automatic rotation off. Default 90.
    pub rotate_after_days: u32,
}

impl Default for EncryptionConfig {
    fn default() -> Self {
        Self { provider: KeyProviderKind::Service, master_key_file: None, keystore: None, key_dir: None, rotate_after_days: 90 }
    }
}

/// Audit log settings. The log lives in `<data_dir>/audit/`, separate from
/// workspace data: workspace purges never touch it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Rotate the active audit segment file after this many bytes.
    pub segment_bytes: u64,
    /// Write a signed checkpoint after this many records.
    pub checkpoint_every_records: u64,
    /// Write a signed checkpoint at least this often (seconds) while records arrive.
    pub checkpoint_interval_secs: u64,
    /// Keep audit records this many days (whole sealed segments older than
    /// this are pruned; verification and proofs keep working from an anchor).
    pub retention_days: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { segment_bytes: 64 << 20, checkpoint_every_records: 10_000, checkpoint_interval_secs: 10, retention_days: 365 }
    }
}

/// Ingest settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest batch frame accepted, in bytes (413 above it).
    pub max_batch_bytes: usize,
    /// Largest decoded batch payload, in bytes.
    pub max_payload_bytes: usize,
    /// Most events in one batch.
    pub max_events_per_batch: usize,
    /// Write a segment once this many rows are buffered for a table.
    pub segment_rows: usize,
    /// Write segments once this many raw bytes are buffered in total.
    pub buffer_bytes: usize,
    /// Write buffered rows at least this often, in milliseconds.
    pub flush_interval_ms: u64,
    /// Size of one ingest log segment file, in bytes.
    pub wal_segment_bytes: u64,
    /// Overload: most batches being accepted at once (from the request's
    /// admission until its answer: reading, decoding, enforcing and making
    /// it durable). Each holds its frame and decoded events in memory. A
    /// batch beyond it is answered 429 with `Retry-After` and nothing of it
    /// is stored. Default 128, at least 1.
    pub max_concurrent_batches: usize,
    /// Overload: most bytes acknowledged but not yet written into segments
    /// (the segment builder's buffers; they grow when storage is slow or
    /// failing). Above it every batch is answered 429 until the builder
    /// catches up. Keep it above `buffer_bytes`, which the builder reaches
    /// in ordinary operation before it flushes. 0 turns this check off.
    /// Default 1073741824 (1 GiB).
    pub max_backlog_bytes: u64,
    /// Overload: the `Retry-After` (seconds) of a 429 for too many batches
    /// at once; a 429 for the backlog asks for at least one
    /// `flush_interval_ms` (rounded up to seconds), the time the backlog
    /// takes to drain. Default 5, between 1 and 3600.
    pub overload_retry_after_secs: u64,
}

/// Query settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Most rows returned by one query; more is an error asking for a LIMIT.
    pub max_rows: usize,
    /// A query running longer than this many seconds is cancelled.
    pub timeout_secs: u64,
}

impl ServerConfig {
    /// The key provider the configuration names, opened (the service
    /// keystore checks every stored key against the master key now).
    pub fn key_provider(&self) -> Result<std::sync::Arc<dyn custos_store::KeyProvider>, ServerError> {
        let e = &self.encryption;
        let err = |x: custos_store::KeyError| ServerError::Config(format!("encryption: {x}"));
        Ok(match e.provider {
            KeyProviderKind::Service => {
                let keys = self.data_dir.join("keys");
                let (master_file, create) = match &e.master_key_file {
                    Some(f) => (f.clone(), false),
                    None => (keys.join("master.key"), true),
                };
                let master = custos_store::ServiceKeystore::master_key(&master_file, create).map_err(err)?;
                let store = e.keystore.clone().unwrap_or_else(|| keys.join("keystore.json"));
                std::sync::Arc::new(custos_store::ServiceKeystore::open(&store, master).map_err(err)?)
            }
            KeyProviderKind::KeyFiles => {
                let dir = e.key_dir.clone().ok_or_else(|| ServerError::Config("encryption.key_dir is required".into()))?;
                std::sync::Arc::new(custos_store::KeyFileProvider::new(&dir))
            }
        })
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("custos-data"),
            listen: "127.0.0.1:7443".into(),
            region: "local".into(),
            catalog: None,
            storage: None,
            server_names: Vec::new(),
            enrollment_key_ttl_hours: 24,
            agent_cert_days: 30,
            agent_cert_validity_secs: None,
            ingest: IngestConfig::default(),
            query: QueryConfig::default(),
            audit: AuditConfig::default(),
            encryption: EncryptionConfig::default(),
            retention: RetentionConfig::default(),
            purge: PurgeConfig::default(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_batch_bytes: 16 << 20,
            max_payload_bytes: 64 << 20,
            max_events_per_batch: 100_000,
            segment_rows: 1_000_000,
            buffer_bytes: 256 << 20,
            flush_interval_ms: 5_000,
            wal_segment_bytes: 64 << 20,
            max_concurrent_batches: 128,
            max_backlog_bytes: 1 << 30,
            overload_retry_after_secs: 5,
        }
    }
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self { max_rows: 100_000, timeout_secs: 300 }
    }
}

impl ServerConfig {
    /// Parse a TOML file.
    pub fn from_path(path: &Path) -> Result<Self, ServerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServerError::io(format!("cannot read config {}", path.display()), e))?;
        Self::from_toml_str(&text).map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))
    }

    /// Parse TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, ServerError> {
        let cfg: ServerConfig = toml::from_str(text).map_err(|e| ServerError::Config(e.to_string()))?;
        Ok(cfg)
    }

    /// Check values that types alone cannot.
    pub fn validate(&self) -> Result<SocketAddr, ServerError> {
        let addr: SocketAddr = self
            .listen
            .parse()
            .map_err(|_| ServerError::Config(format!("listen: {:?} is not host:port", self.listen)))?;
        if self.region.is_empty() || !self.region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(ServerError::Config(format!("region: {:?} must be non-empty [A-Za-z0-9_-]", self.region)));
        }
        self.retention.validate()?;
        if self.purge.poll_interval_secs == 0 || self.purge.cancel_window_hours > 24 * 365 {
            return Err(ServerError::Config("purge.poll_interval_secs must be at least 1 and purge.cancel_window_hours at most 8760".into()));
        }
        if self.encryption.provider == KeyProviderKind::KeyFiles && self.encryption.key_dir.is_none() {
            return Err(ServerError::Config("encryption.key_dir is required with encryption.provider = \"key_files\"".into()));
        }
        if self.agent_cert_days == 0 || self.enrollment_key_ttl_hours == 0 {
            return Err(ServerError::Config("agent_cert_days and enrollment_key_ttl_hours must be at least 1".into()));
        }
        match self.agent_cert_validity_secs {
            Some(s) if !(MIN_AGENT_CERT_SECS..=MAX_AGENT_CERT_SECS).contains(&s) => {
                return Err(ServerError::Config(format!(
                    "agent_cert_validity_secs must be between {MIN_AGENT_CERT_SECS} and {MAX_AGENT_CERT_SECS} (ten years), not {s}"
                )));
            }
            None if u64::from(self.agent_cert_days) * 86_400 > MAX_AGENT_CERT_SECS => {
                return Err(ServerError::Config(format!(
                    "agent_cert_days must be at most {} (ten years), not {}",
                    MAX_AGENT_CERT_SECS / 86_400,
                    self.agent_cert_days
                )));
            }
            _ => {}
        }
        if self.ingest.max_batch_bytes < 1024 || self.ingest.segment_rows == 0 {
            return Err(ServerError::Config("ingest.max_batch_bytes must be >= 1024 and ingest.segment_rows >= 1".into()));
        }
        if self.ingest.max_concurrent_batches == 0 {
            return Err(ServerError::Config("ingest.max_concurrent_batches must be at least 1".into()));
        }
        if !(1..=3600).contains(&self.ingest.overload_retry_after_secs) {
            return Err(ServerError::Config(format!(
                "ingest.overload_retry_after_secs must be between 1 and 3600, not {}",
                self.ingest.overload_retry_after_secs
            )));
        }
        if self.audit.segment_bytes < 4096 || self.audit.checkpoint_every_records == 0 || self.audit.checkpoint_interval_secs == 0 {
            return Err(ServerError::Config(
                "audit.segment_bytes must be >= 4096, audit.checkpoint_every_records and audit.checkpoint_interval_secs >= 1".into(),
            ));
        }
        if self.audit.retention_days == 0 {
            return Err(ServerError::Config("audit.retention_days must be at least 1".into()));
        }
        Ok(addr)
    }

    /// How long agent certificates are valid: `agent_cert_validity_secs` if
    /// set, else `agent_cert_days`.
    pub fn agent_cert_validity(&self) -> time::Duration {
        match self.agent_cert_validity_secs {
            Some(s) => time::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX)),
            None => time::Duration::days(i64::from(self.agent_cert_days)),
        }
    }

    /// The catalog URI in effect.
    pub fn catalog_uri(&self) -> String {
        self.catalog.clone().unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("catalog.db").display()))
    }

    /// The storage URI in effect.
    pub fn storage_uri(&self) -> String {
        self.storage.clone().unwrap_or_else(|| format!("file://{}", self.data_dir.join("segments").display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let err = ServerConfig::from_toml_str("listne = \"x\"").unwrap_err().to_string();
        assert!(err.contains("listne"), "{err}");
        let err = ServerConfig::from_toml_str("[ingest]\nsegment_rowz = 1").unwrap_err().to_string();
        assert!(err.contains("segment_rowz"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let cfg = ServerConfig::from_toml_str("listen = \"nowhere\"").unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("listen"));
        let cfg = ServerConfig::from_toml_str("region = \"eu west\"").unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("region"));
    }

    #[test]
    fn agent_certificates_last_30_days_unless_configured_in_days_or_seconds() {
        let cfg = ServerConfig::from_toml_str("").unwrap();
        assert_eq!(cfg.agent_cert_validity(), time::Duration::days(30));
        // Old configuration files keep working.
        let cfg = ServerConfig::from_toml_str("agent_cert_days = 7").unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.agent_cert_validity(), time::Duration::days(7));
        // Seconds win over days, so validities below a day are possible.
        let cfg = ServerConfig::from_toml_str("agent_cert_days = 7\nagent_cert_validity_secs = 90").unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.agent_cert_validity(), time::Duration::seconds(90));
    }

    #[test]
    fn agent_certificate_validities_out_of_range_are_named() {
        for toml in ["agent_cert_validity_secs = 1", "agent_cert_validity_secs = 999999999999", "agent_cert_days = 0", "agent_cert_days = 4000"] {
            let err = ServerConfig::from_toml_str(toml).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains("agent_cert_"), "{toml}: {err}");
        }
    }

    #[test]
    fn overload_limits_default_and_bad_values_are_named() {
        let cfg = ServerConfig::from_toml_str("").unwrap();
        assert_eq!((cfg.ingest.max_concurrent_batches, cfg.ingest.max_backlog_bytes, cfg.ingest.overload_retry_after_secs), (128, 1 << 30, 5));
        let cfg = ServerConfig::from_toml_str("[ingest]\nmax_concurrent_batches = 2\nmax_backlog_bytes = 0\noverload_retry_after_secs = 30").unwrap();
        cfg.validate().unwrap();
        for (toml, field) in [
            ("[ingest]\nmax_concurrent_batches = 0", "ingest.max_concurrent_batches"),
            ("[ingest]\noverload_retry_after_secs = 0", "ingest.overload_retry_after_secs"),
            ("[ingest]\noverload_retry_after_secs = 3601", "ingest.overload_retry_after_secs"),
        ] {
            let err = ServerConfig::from_toml_str(toml).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains(field), "{toml}: {err}");
        }
    }

    #[test]
    fn the_example_config_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/server.toml");
        let cfg = ServerConfig::from_path(&path).unwrap();
        cfg.validate().unwrap();
    }
}
