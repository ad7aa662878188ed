//! JSON types of the HTTP API (`/v1/...`). Requests deny unknown fields so a
//! misspelt option is an error, not a silent default.

use crate::{AgentId, BatchId, TimestampMicros, WorkspaceId};
use serde::{Deserialize, Serialize};

/// `POST /v1/workspaces`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspaceRequest {
    /// Human-readable name.
    pub name: String,
    /// Region the workspace's data is pinned to; must be the server's region.
    pub region: String,
    /// Default retention in days (server default when absent).
    #[serde(default)]
    pub retention_days: Option<u32>,
}

/// A workspace as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkspaceInfo {
    /// Id.
    pub id: WorkspaceId,
    /// Name.
    pub name: String,
    /// Region.
    pub region: String,
    /// Default retention, days.
    pub retention_days: u32,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

/// Answer to `POST /v1/workspaces`: the workspace and its first enrollment
/// key, shown only here (the server stores only its hash).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateWorkspaceResponse {
    /// Id.
    pub id: WorkspaceId,
    /// Name.
    pub name: String,
    /// Region.
    pub region: String,
    /// Default retention, days.
    pub retention_days: u32,
    /// Single-use enrollment key.
    pub enrollment_key: String,
    /// When the key expires, RFC 3339.
    pub enrollment_key_expires_at: String,
}

/// `POST /v1/workspaces/{id}/enrollment-keys`: another single-use key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollmentKeyResponse {
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// The key, shown once.
    pub enrollment_key: String,
    /// Expiry, RFC 3339.
    pub expires_at: String,
}

/// `POST /v1/enroll` (no client certificate; the enrollment key authenticates).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The single-use enrollment key.
    pub enrollment_key: String,
    /// PEM certificate signing request for the agent's key pair.
    pub csr_pem: String,
    /// The host name the agent reports (informational).
    pub hostname: String,
}

/// Answer to an enrollment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The new agent's id.
    pub agent_id: AgentId,
    /// The workspace it is bound to.
    pub workspace_id: WorkspaceId,
    /// The signed client certificate (PEM).
    pub certificate_pem: String,
    /// The service CA (PEM).
    pub ca_pem: String,
    /// Certificate expiry, RFC 3339.
    pub not_after: String,
}

/// Answer to `POST /v1/ingest`, sent only once the batch is durable.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IngestAck {
    /// The batch acknowledged.
    pub batch_id: BatchId,
    /// Events accepted.
    pub accepted: u64,
    /// True when this batch id had already been stored and was not stored again.
    pub duplicate: bool,
    /// Acknowledgement id (the ingest log position), for the agent's records.
    pub ack_id: String,
}

/// `POST /v1/workspaces/{id}/query`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// One SQL statement (a query; no DDL or DML).
    pub sql: String,
}

/// Query results, column-major names and row-major values.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QueryResponse {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Column types (Arrow type names), in order.
    pub types: Vec<String>,
    /// Rows; each value is JSON (null, bool, number, string).
    pub rows: Vec<Vec<serde_json::Value>>,
    /// Time spent, milliseconds.
    pub elapsed_ms: u64,
}

/// A table of a workspace, as `GET /v1/workspaces/{id}/tables` lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TableInfo {
    /// Table name.
    pub name: String,
    /// Rows stored.
    pub rows: u64,
    /// Bytes stored (compressed segments).
    pub bytes: u64,
    /// Segments.
    pub segments: u64,
    /// Earliest event time.
    pub min_time: TimestampMicros,
    /// Latest event time.
    pub max_time: TimestampMicros,
}

/// Every error answer has this body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable machine-readable code (`bad_request`, `unauthorized`, ...).
    pub code: String,
    /// A specific human-readable message.
    pub error: String,
}
