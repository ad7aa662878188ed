//! Server configuration: TOML, every field documented, unknown fields
//! refused. Command-line flags override the file. See `examples/server.toml`.

use crate::ServerError;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    /// Retention in days for workspaces created without one.
    pub default_retention_days: u32,
    /// How long a new enrollment key stays valid, in hours.
    pub enrollment_key_ttl_hours: u32,
    /// Validity of agent client certificates, in days.
    pub agent_cert_days: u32,
    /// Ingest settings.
    pub ingest: IngestConfig,
    /// Query settings.
    pub query: QueryConfig,
    /// Audit log settings.
    pub audit: AuditConfig,
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

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("custos-data"),
            listen: "127.0.0.1:7443".into(),
            region: "local".into(),
            catalog: None,
            storage: None,
            server_names: Vec::new(),
            default_retention_days: 31,
            enrollment_key_ttl_hours: 24,
            agent_cert_days: 30,
            ingest: IngestConfig::default(),
            query: QueryConfig::default(),
            audit: AuditConfig::default(),
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
        if self.default_retention_days == 0 {
            return Err(ServerError::Config("default_retention_days must be at least 1".into()));
        }
        if self.agent_cert_days == 0 || self.enrollment_key_ttl_hours == 0 {
            return Err(ServerError::Config("agent_cert_days and enrollment_key_ttl_hours must be at least 1".into()));
        }
        if self.ingest.max_batch_bytes < 1024 || self.ingest.segment_rows == 0 {
            return Err(ServerError::Config("ingest.max_batch_bytes must be >= 1024 and ingest.segment_rows >= 1".into()));
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
    fn the_example_config_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/server.toml");
        let cfg = ServerConfig::from_path(&path).unwrap();
        cfg.validate().unwrap();
    }
}
