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
    /// Customer-managed keys in an HSM through PKCS#11 (`pkcs11_*` fields):
    /// one non-extractable AES-256 key per workspace key version, made in
    /// the token; data keys are wrapped and unwrapped by the HSM.
    Pkcs11,
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
    /// this many days old (service and pkcs11 providers; older segments are
    /// rewrapped in the background). 0 turns automatic rotation off.
    /// Default 90.
    pub rotate_after_days: u32,
    /// PKCS#11 provider: the module (shared library) of the HSM, e.g.
    /// `/usr/lib/softhsm/libsofthsm2.so` for SoftHSM2 (required with
    /// `provider = "pkcs11"`).
    pub pkcs11_module: Option<PathBuf>,
    /// PKCS#11 provider: the label of the token that holds the workspace
    /// keys (required with `provider = "pkcs11"`). Make the token before
    /// the server starts.
    pub pkcs11_token_label: Option<String>,
    /// PKCS#11 provider: a file holding the token's user PIN (a trailing
    /// newline is ignored; keep it 0600). Exactly one of `pkcs11_pin_file`
    /// and `pkcs11_pin_env` is required with `provider = "pkcs11"`.
    pub pkcs11_pin_file: Option<PathBuf>,
    /// PKCS#11 provider: the name of an environment variable holding the
    /// user PIN (instead of `pkcs11_pin_file`).
    pub pkcs11_pin_env: Option<String>,
    /// PKCS#11 provider: the prefix of the key objects' labels in the token
    /// (`<prefix>:<workspace id>:v<N>`). Default `custos`.
    pub pkcs11_key_label_prefix: String,
}

impl Default for EncryptionConfig {
    fn default() -> Self {
        Self {
            provider: KeyProviderKind::Service,
            master_key_file: None,
            keystore: None,
            key_dir: None,
            rotate_after_days: 90,
            pkcs11_module: None,
            pkcs11_token_label: None,
            pkcs11_pin_file: None,
            pkcs11_pin_env: None,
            pkcs11_key_label_prefix: custos_store::keys::DEFAULT_KEY_LABEL_PREFIX.to_string(),
        }
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
            KeyProviderKind::Pkcs11 => {
                e.validate_pkcs11()?;
                let (Some(module), Some(token_label)) = (e.pkcs11_module.clone(), e.pkcs11_token_label.clone()) else {
                    return Err(ServerError::Config("encryption.pkcs11_module and encryption.pkcs11_token_label are required".into()));
                };
                let pin = e.pkcs11_pin()?;
                std::sync::Arc::new(
                    custos_store::Pkcs11Provider::open(custos_store::Pkcs11Config {
                        module,
                        token_label,
                        pin,
                        key_label_prefix: e.pkcs11_key_label_prefix.clone(),
                    })
                    .map_err(err)?,
                )
            }
        })
    }
}

impl EncryptionConfig {
    /// With `provider = "pkcs11"`: every required `pkcs11_*` field is set,
    /// and one PIN source.
    fn validate_pkcs11(&self) -> Result<(), ServerError> {
        if self.provider != KeyProviderKind::Pkcs11 {
            return Ok(());
        }
        let missing = |f: &str| ServerError::Config(format!("encryption.{f} is required with encryption.provider = \"pkcs11\""));
        if self.pkcs11_module.as_ref().is_none_or(|m| m.as_os_str().is_empty()) {
            return Err(missing("pkcs11_module"));
        }
        if self.pkcs11_token_label.as_ref().is_none_or(String::is_empty) {
            return Err(missing("pkcs11_token_label"));
        }
        match (&self.pkcs11_pin_file, &self.pkcs11_pin_env) {
            (None, None) => Err(missing("pkcs11_pin_file (or encryption.pkcs11_pin_env)")),
            (Some(_), Some(_)) => Err(ServerError::Config(
                "encryption.pkcs11_pin_file and encryption.pkcs11_pin_env are both set: give the PIN one way".into(),
            )),
            _ if self.pkcs11_key_label_prefix.is_empty() => {
                Err(ServerError::Config("encryption.pkcs11_key_label_prefix must not be empty".into()))
            }
            _ => Ok(()),
        }
    }

    /// The token's user PIN from `pkcs11_pin_file` or `pkcs11_pin_env`.
    fn pkcs11_pin(&self) -> Result<custos_model::Secret<String>, ServerError> {
        let pin = match (&self.pkcs11_pin_file, &self.pkcs11_pin_env) {
            (Some(file), _) => std::fs::read_to_string(file)
                .map_err(|e| ServerError::Config(format!("encryption.pkcs11_pin_file {}: {e}", file.display())))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                ServerError::Config(format!("encryption.pkcs11_pin_env: the environment variable {var} is not set (or not UTF-8)"))
            })?,
            (None, None) => String::new(),
        };
        if pin.is_empty() {
            return Err(ServerError::Config("encryption: the PKCS#11 user PIN is empty (pkcs11_pin_file or pkcs11_pin_env)".into()));
        }
        Ok(custos_model::Secret::new(pin))
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
        self.encryption.validate_pkcs11()?;
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
    fn the_pkcs11_provider_is_configured_by_its_fields_and_a_missing_one_is_named() {
        let cfg = ServerConfig::from_toml_str(
            "[encryption]\nprovider = \"pkcs11\"\npkcs11_module = \"/usr/lib/softhsm/libsofthsm2.so\"\n\
             pkcs11_token_label = \"custos\"\npkcs11_pin_file = \"/etc/custos/hsm.pin\"\npkcs11_key_label_prefix = \"eu1\"",
        )
        .unwrap();
        cfg.validate().unwrap();
        let e = &cfg.encryption;
        assert_eq!(e.provider, KeyProviderKind::Pkcs11);
        assert_eq!(e.pkcs11_module.as_deref(), Some(Path::new("/usr/lib/softhsm/libsofthsm2.so")));
        assert_eq!((e.pkcs11_token_label.as_deref(), e.pkcs11_key_label_prefix.as_str()), (Some("custos"), "eu1"));
        assert_eq!(e.pkcs11_pin_file.as_deref(), Some(Path::new("/etc/custos/hsm.pin")));
        // The prefix defaults to "custos"; the PIN may come from the environment.
        let cfg = ServerConfig::from_toml_str(
            "[encryption]\nprovider = \"pkcs11\"\npkcs11_module = \"/m.so\"\npkcs11_token_label = \"t\"\npkcs11_pin_env = \"HSM_PIN\"",
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.encryption.pkcs11_key_label_prefix, "custos");
        assert_eq!(cfg.encryption.pkcs11_pin_env.as_deref(), Some("HSM_PIN"));

        let full = [
            "provider = \"pkcs11\"",
            "pkcs11_module = \"/m.so\"",
            "pkcs11_token_label = \"t\"",
            "pkcs11_pin_file = \"/p\"",
        ];
        for (drop, field) in [(1, "pkcs11_module"), (2, "pkcs11_token_label"), (3, "pkcs11_pin_file")] {
            let toml = format!("[encryption]\n{}", full.iter().enumerate().filter(|(i, _)| *i != drop).map(|(_, l)| *l).collect::<Vec<_>>().join("\n"));
            let cfg = ServerConfig::from_toml_str(&toml).unwrap();
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("encryption.{field}")), "{toml}: {err}");
            let err = cfg.key_provider().unwrap_err().to_string();
            assert!(err.contains(&format!("encryption.{field}")), "{toml}: {err}");
        }
        let both = format!("[encryption]\n{}\npkcs11_pin_env = \"X\"", full.join("\n"));
        let err = ServerConfig::from_toml_str(&both).unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("pkcs11_pin_file") && err.contains("pkcs11_pin_env"), "{err}");
        let err = ServerConfig::from_toml_str("[encryption]\npkcs11_tokn_label = \"t\"").unwrap_err().to_string();
        assert!(err.contains("pkcs11_tokn_label"), "unknown fields are still refused: {err}");
        // The PIN is read before the module is loaded: a missing PIN file or
        // variable is named.
        let err = ServerConfig::from_toml_str(&format!("[encryption]\n{}", full.join("\n").replace("/p", "/nonexistent/hsm.pin")))
            .unwrap()
            .key_provider()
            .unwrap_err()
            .to_string();
        assert!(err.contains("pkcs11_pin_file /nonexistent/hsm.pin"), "{err}");
        let env = full.join("\n").replace("pkcs11_pin_file = \"/p\"", "pkcs11_pin_env = \"CUSTOS_TEST_UNSET_HSM_PIN\"");
        let err = ServerConfig::from_toml_str(&format!("[encryption]\n{env}")).unwrap().key_provider().unwrap_err().to_string();
        assert!(err.contains("CUSTOS_TEST_UNSET_HSM_PIN is not set"), "{err}");
    }

    #[test]
    fn the_example_config_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/server.toml");
        let cfg = ServerConfig::from_path(&path).unwrap();
        cfg.validate().unwrap();
    }
}
