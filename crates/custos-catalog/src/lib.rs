//! The catalog: the service's metadata. Workspaces, enrollment keys, agents,
//! segments and the batch ids already stored.
//!
//! One trait, [`Catalog`], with an embedded SQLite implementation
//! ([`SqliteCatalog`]); PostgreSQL arrives behind the same trait. Every
//! implementation must pass the same conformance suite
//! (`conformance::run_all`, compiled for tests and with the `conformance`
//! feature).
#![forbid(unsafe_code)]

use async_trait::async_trait;
use custos_model::{AgentId, BatchId, SegmentId, TableName, TimestampMicros, ValueType, WorkspaceId};
use serde::{Deserialize, Serialize};

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod sqlite;

pub use sqlite::SqliteCatalog;

/// Errors from any catalog implementation.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The named workspace does not exist.
    #[error("workspace {0} not found")]
    WorkspaceNotFound(WorkspaceId),
    /// A workspace with this name already exists.
    #[error("a workspace named {0:?} already exists")]
    WorkspaceNameTaken(String),
    /// The enrollment key is unknown (wrong key).
    #[error("enrollment key is not valid")]
    EnrollmentKeyInvalid,
    /// The enrollment key was already used.
    #[error("enrollment key was already used")]
    EnrollmentKeyUsed,
    /// The enrollment key has expired.
    #[error("enrollment key has expired")]
    EnrollmentKeyExpired,
    /// An agent id is already registered.
    #[error("agent {0} is already registered")]
    AgentExists(AgentId),
    /// A segment id is already registered.
    #[error("segment {0} is already registered")]
    SegmentExists(SegmentId),
    /// The catalog URI is not understood.
    #[error("unsupported catalog uri {0:?} (supported: sqlite://PATH)")]
    UnsupportedUri(String),
    /// The database failed.
    #[error("catalog database error: {0}")]
    Database(String),
    /// Stored data could not be decoded.
    #[error("catalog holds invalid data: {0}")]
    Corrupt(String),
}

/// Result alias.
pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// A workspace (tenant).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    /// Id.
    pub id: WorkspaceId,
    /// Unique name.
    pub name: String,
    /// Region the data is pinned to.
    pub region: String,
    /// Default retention, days.
    pub retention_days: u32,
    /// Creation time, microseconds since the epoch.
    pub created_at: TimestampMicros,
}

/// An enrollment key, stored by hash only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrollmentKey {
    /// SHA-256 of the key, hex. The key itself is never stored.
    pub key_hash: String,
    /// Workspace the key enrolls into.
    pub workspace_id: WorkspaceId,
    /// Creation time.
    pub created_at: TimestampMicros,
    /// Expiry time.
    pub expires_at: TimestampMicros,
}

/// An enrolled agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    /// Id (also in its certificate).
    pub id: AgentId,
    /// Workspace the agent is bound to.
    pub workspace_id: WorkspaceId,
    /// Host name reported at enrollment.
    pub hostname: String,
    /// SHA-256 of the agent certificate (DER), hex.
    pub cert_sha256: String,
    /// Certificate expiry.
    pub cert_not_after: TimestampMicros,
    /// Enrollment time.
    pub enrolled_at: TimestampMicros,
    /// Revocation time, if revoked.
    pub revoked_at: Option<TimestampMicros>,
}

/// One column of a segment's schema (beyond the fixed envelope columns).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    /// Column name.
    pub name: String,
    /// Column type.
    pub ty: ValueType,
}

/// A stored columnar segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Id.
    pub id: SegmentId,
    /// Owner workspace.
    pub workspace_id: WorkspaceId,
    /// Table.
    pub table: TableName,
    /// Object path in segment storage, relative to the storage root.
    pub path: String,
    /// Earliest event time in the segment.
    pub min_time: TimestampMicros,
    /// Latest event time in the segment.
    pub max_time: TimestampMicros,
    /// Rows.
    pub rows: u64,
    /// Bytes of the stored object.
    pub bytes: u64,
    /// Attribute columns present in the segment.
    pub columns: Vec<ColumnDef>,
    /// When the segment was committed.
    pub created_at: TimestampMicros,
}

/// The catalog. Every method is atomic on its own.
#[async_trait]
pub trait Catalog: Send + Sync + std::fmt::Debug {
    /// Create a workspace; names are unique.
    async fn create_workspace(&self, ws: &Workspace) -> Result<()>;
    /// Look a workspace up by id.
    async fn get_workspace(&self, id: WorkspaceId) -> Result<Option<Workspace>>;
    /// All workspaces, oldest first.
    async fn list_workspaces(&self) -> Result<Vec<Workspace>>;

    /// Store an enrollment key (by hash). The workspace must exist.
    async fn add_enrollment_key(&self, key: &EnrollmentKey) -> Result<()>;
    /// Atomically consume a key: succeeds at most once per key, only before
    /// its expiry at `now`. Returns the workspace it enrolls into.
    async fn consume_enrollment_key(&self, key_hash: &str, now: TimestampMicros) -> Result<WorkspaceId>;

    /// Register an enrolled agent.
    async fn add_agent(&self, agent: &Agent) -> Result<()>;
    /// Look an agent up.
    async fn get_agent(&self, id: AgentId) -> Result<Option<Agent>>;
    /// Agents of a workspace.
    async fn list_agents(&self, ws: WorkspaceId) -> Result<Vec<Agent>>;

    /// Which of `ids` are already stored for this workspace.
    async fn stored_batches(&self, ws: WorkspaceId, ids: &[BatchId]) -> Result<Vec<BatchId>>;
    /// Atomically register segments and record the batch ids they hold, so
    /// after a crash a replayed batch is recognised as stored. Batch ids
    /// already recorded are ignored (not an error).
    async fn commit_segments(
        &self,
        segments: &[Segment],
        batches: &[(WorkspaceId, BatchId)],
        now: TimestampMicros,
    ) -> Result<()>;
    /// Segments of one table of one workspace, optionally only those that
    /// overlap `[min_time, max_time]`.
    async fn list_segments(
        &self,
        ws: WorkspaceId,
        table: &TableName,
        time_range: Option<(TimestampMicros, TimestampMicros)>,
    ) -> Result<Vec<Segment>>;
    /// Names of the tables that have at least one segment in the workspace.
    async fn list_tables(&self, ws: WorkspaceId) -> Result<Vec<TableName>>;
}

/// Open a catalog by URI. `sqlite://PATH` (created if missing) is the
/// embedded default.
pub async fn open(uri: &str) -> Result<std::sync::Arc<dyn Catalog>> {
    if let Some(path) = uri.strip_prefix("sqlite://") {
        Ok(std::sync::Arc::new(SqliteCatalog::open(std::path::Path::new(path)).await?))
    } else {
        Err(CatalogError::UnsupportedUri(uri.to_string()))
    }
}
