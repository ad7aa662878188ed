//! JSON types of the HTTP API (`/v1/...`). Requests deny unknown fields so a
//! misspelt option is an error, not a silent default.

use crate::{
    AccessRequestId, AgentId, BatchId, CaseId, Category, Level, PrincipalId, ServiceRole, TimestampMicros, TokenId,
    WorkspaceId, WorkspaceRole,
};
use serde::{Deserialize, Serialize};

/// `POST /v1/workspaces`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspaceRequest {
    /// Human-readable name.
    pub name: String,
    /// Region the workspace's data is pinned to; must be the server's region.
    pub region: String,
    /// Default retention in days (the plan's default when absent).
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// The plan (the server's default plan when absent).
    #[serde(default)]
    pub plan: Option<String>,
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
    /// Whether the customer lockbox is on.
    pub lockbox: bool,
    /// The highest consent level the workspace stores (events above it are
    /// refused at ingest).
    pub max_level: Level,
    /// The categories the workspace stores (events of others are refused).
    pub categories: Vec<Category>,
    /// The plan (retention limits).
    #[serde(default)]
    pub plan: String,
    /// The lock (legal hold), if set: nothing of the workspace is deleted.
    #[serde(default)]
    pub lock: Option<LockInfo>,
}

/// A workspace lock as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockInfo {
    /// Why.
    pub reason: String,
    /// When it was set, RFC 3339.
    pub locked_at: String,
    /// Who set it.
    pub locked_by: Option<PrincipalId>,
}

/// `POST /v1/workspaces/{id}/lock` (owners): lock the workspace.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockRequest {
    /// Why (1 to 500 characters); shown in every refusal.
    pub reason: String,
}

/// `PUT /v1/workspaces/{id}/retention` (owners): change the workspace
/// default or one table's period.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRequest {
    /// The table; absent for the workspace default.
    #[serde(default)]
    pub table: Option<String>,
    /// The new period, days.
    pub days: u32,
    /// Apply a reduction at once instead of after the grace period
    /// (refused while the workspace is locked).
    #[serde(default)]
    pub now: bool,
}

/// `POST /v1/workspaces/{id}/retention/cancel` (owners): cancel the pending
/// reduction of the default (`table` absent) or of one table.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionCancelRequest {
    /// The table; absent for the workspace default.
    #[serde(default)]
    pub table: Option<String>,
}

/// A retention change as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetentionChangeInfo {
    /// Id.
    pub id: crate::ChangeId,
    /// The table; None for the workspace default.
    pub table: Option<String>,
    /// The period before, days.
    pub from_days: u32,
    /// The new period, days.
    pub to_days: u32,
    /// `pending` (in its grace period), `applied` or `cancelled`.
    pub state: String,
    /// When it was asked for, RFC 3339.
    pub requested_at: String,
    /// When it takes (or took) effect, RFC 3339.
    pub effective_at: String,
    /// Who asked.
    pub requested_by: Option<PrincipalId>,
}

/// One table's period in [`RetentionInfo`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableRetention {
    /// The table.
    pub table: String,
    /// Its period, days.
    pub days: u32,
    /// Where the period comes from: `override`, `rollup` (the plan's rollup
    /// period) or `default` (the workspace default).
    pub source: String,
    /// Rows before this time have expired, RFC 3339 (they are hidden from
    /// queries and their segments dropped), unless the workspace is locked.
    pub keeps_since: String,
}

/// `GET /v1/workspaces/{id}/retention`: the periods in force.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetentionInfo {
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// Its plan.
    pub plan: String,
    /// The longest period the plan allows, days.
    pub max_days: u32,
    /// The plan's period for rollup tables without an override, days.
    pub rollup_days: u32,
    /// The workspace default, days.
    pub default_days: u32,
    /// Days a reduction waits before it takes effect.
    pub grace_days: u32,
    /// The lock, if set (nothing is deleted while it is).
    pub lock: Option<LockInfo>,
    /// Every table with data, every standard table and every override.
    pub tables: Vec<TableRetention>,
    /// Reductions in their grace period.
    pub pending: Vec<RetentionChangeInfo>,
}

/// One deleted segment (`GET /v1/workspaces/{id}/deletions`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeletionInfo {
    /// Sequence number (increasing).
    pub seq: i64,
    /// The table.
    pub table: String,
    /// The segment.
    pub segment_id: crate::SegmentId,
    /// Rows it held.
    pub rows: u64,
    /// Bytes of its object.
    pub bytes: u64,
    /// Its earliest event time, RFC 3339.
    pub min_time: String,
    /// Its latest event time, RFC 3339.
    pub max_time: String,
    /// `retention`, `purge` or `workspace`.
    pub reason: String,
    /// When it left the catalog (and every query), RFC 3339.
    pub deleted_at: String,
    /// When its bytes were removed from storage, RFC 3339 (None: pending).
    pub object_deleted_at: Option<String>,
}

/// What one pass of the retention sweeper did (`POST /v1/retention/sweep`,
/// or the server's periodic pass).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SweepReport {
    /// Pending retention changes that took effect.
    pub changes_applied: u64,
    /// Workspaces swept.
    pub workspaces: u64,
    /// Workspaces left alone because they are locked.
    pub workspaces_locked: u64,
    /// Segments dropped.
    pub segments_deleted: u64,
    /// Rows in them.
    pub rows_deleted: u64,
    /// Bytes in them.
    pub bytes_deleted: u64,
    /// Objects removed from storage (including retries of earlier passes).
    pub objects_removed: u64,
    /// Object removals that failed (retried next pass).
    pub object_errors: u64,
    /// Rows written to rollup tables.
    pub rollup_rows: u64,
    /// Workspaces whose pass failed (logged; retried next pass).
    pub errors: u64,
    /// Time the pass took, milliseconds.
    pub elapsed_ms: u64,
}

/// `PUT /v1/workspaces/{id}/policy` (owners): what the workspace stores.
/// An absent field keeps its current value.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspacePolicyRequest {
    /// The highest level stored (0-3).
    #[serde(default)]
    pub max_level: Option<Level>,
    /// The categories stored; at least one. Naming every category also
    /// allows categories a later version adds.
    #[serde(default)]
    pub categories: Option<Vec<Category>>,
}

/// A workspace's ingest policy, as `PUT /v1/workspaces/{id}/policy` answers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkspacePolicyInfo {
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// The highest level stored.
    pub max_level: Level,
    /// The categories stored.
    pub categories: Vec<Category>,
}

/// Why the server refused an event at ingest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefusalReason {
    /// Its effective level is above the workspace's maximum.
    Level,
    /// Its category is not one the workspace stores.
    Category,
    /// It does not match the telemetry registry (table, field, type or category).
    Schema,
}

impl RefusalReason {
    /// All reasons.
    pub const ALL: [RefusalReason; 3] = [RefusalReason::Level, RefusalReason::Category, RefusalReason::Schema];

    /// The lowercase name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Level => "level",
            RefusalReason::Category => "category",
            RefusalReason::Schema => "schema",
        }
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RefusalReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RefusalReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown refusal reason {s:?} (expected level, category or schema)"))
    }
}

/// Events of one agent refused for one reason and category, as
/// `GET /v1/workspaces/{id}/refusals` lists them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RefusalInfo {
    /// The agent that sent them.
    pub agent_id: AgentId,
    /// The host name the agent reported at enrollment, if it is known.
    pub hostname: Option<String>,
    /// Why they were refused.
    pub reason: RefusalReason,
    /// Their category.
    pub category: Category,
    /// How many.
    pub events: u64,
    /// When the first was refused, RFC 3339.
    pub first_refused_at: String,
    /// When the last was refused, RFC 3339.
    pub last_refused_at: String,
}

/// `PUT /v1/workspaces/{id}/redaction-policy` (owners): the workspace's
/// server-side redaction policy.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactionPolicyRequest {
    /// The policy (TOML in the format of `custos-redact`, see
    /// docs/REDACTION.md); `null` (or absent): back to the default policy.
    #[serde(default)]
    pub policy: Option<String>,
}

/// One version of a workspace key, as `custos key status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyVersionView {
    /// The provider's key id.
    pub key_id: String,
    /// The version.
    pub version: u32,
    /// `active` (new data), `retired` (older data) or `revoked`.
    pub state: String,
    /// When it was made, RFC 3339 (absent when the provider does not say).
    pub created_at: Option<String>,
}

/// A workspace's keys (`GET /v1/workspaces/{id}/keys` and the answers of
/// rotate, revoke and restore).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyStatus {
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// The key provider (`service keystore …`, `key files in …`).
    pub provider: String,
    /// Its key versions, oldest first.
    pub versions: Vec<KeyVersionView>,
    /// Segments whose data key is not yet wrapped by the active version
    /// (rewrapped in the background after a rotation).
    pub segments_pending_rewrap: u64,
    /// Segments in all.
    pub segments: u64,
}

/// A workspace's redaction policy, as `GET`/`PUT
/// /v1/workspaces/{id}/redaction-policy` answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RedactionPolicyInfo {
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// `default` (the engine's default policy) or `custom`.
    pub source: String,
    /// The policy text; `None` for the default policy.
    pub policy: Option<String>,
    /// Incremented at every change; 0 while never set.
    pub revision: u64,
    /// When it was last set, RFC 3339.
    pub updated_at: Option<String>,
    /// Who last set it.
    pub updated_by: Option<PrincipalId>,
}

/// What a redaction count counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedactionKind {
    /// Findings of one entity removed, tagged, masked or pseudonymised
    /// (every finding the policy did not keep, including those in dropped
    /// fields and events).
    Redacted,
    /// Fields removed by a `drop_field` operator.
    FieldDropped,
    /// Events dropped by a `drop_event` operator (never stored).
    EventDropped,
}

impl RedactionKind {
    /// Every kind, in order.
    pub const ALL: [RedactionKind; 3] = [RedactionKind::Redacted, RedactionKind::FieldDropped, RedactionKind::EventDropped];

    /// The name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RedactionKind::Redacted => "redacted",
            RedactionKind::FieldDropped => "field_dropped",
            RedactionKind::EventDropped => "event_dropped",
        }
    }
}

impl std::fmt::Display for RedactionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RedactionKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RedactionKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown redaction kind {s:?} (expected redacted, field_dropped or event_dropped)"))
    }
}

/// What the server's redaction backstop removed from one table, as
/// `GET /v1/workspaces/{id}/redactions` lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RedactionCountInfo {
    /// The table the events were bound for.
    pub table: String,
    /// What is counted.
    pub kind: RedactionKind,
    /// The entity (`EMAIL_ADDRESS`, a custom entity's name) for `redacted`;
    /// `None` for the drops.
    pub entity: Option<String>,
    /// How many.
    pub count: u64,
    /// When the first was counted, RFC 3339.
    pub first_at: String,
    /// When the last was counted, RFC 3339.
    pub last_at: String,
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
    /// The plan.
    #[serde(default)]
    pub plan: String,
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
    /// Events accepted and stored.
    pub accepted: u64,
    /// True when this batch id had already been stored and was not stored again.
    pub duplicate: bool,
    /// Events refused by the workspace's policy or the telemetry registry:
    /// not stored, counted per agent (`GET /v1/workspaces/{id}/refusals`);
    /// and events the workspace's redaction policy drops (`drop_event`),
    /// counted per table (`GET /v1/workspaces/{id}/redactions`).
    /// `accepted + refused` is the batch's event count. For a duplicate, what
    /// the current policy would refuse (nothing is stored or counted again).
    /// Absent from older servers' answers (then 0).
    #[serde(default)]
    pub refused: u64,
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

/// `POST /v1/principals` (service admins).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePrincipalRequest {
    /// Unique name (1-128 printable characters).
    pub name: String,
    /// Service role, for the service's own staff.
    #[serde(default)]
    pub service_role: Option<ServiceRole>,
    /// Lifetime of the first token, seconds (none: no expiry).
    #[serde(default)]
    pub token_expires_in_secs: Option<u64>,
}

/// A principal as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PrincipalInfo {
    /// Id.
    pub id: PrincipalId,
    /// Name.
    pub name: String,
    /// Service role, if any.
    pub service_role: Option<ServiceRole>,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

/// Answer to `POST /v1/principals`: the principal and its first token, shown
/// only here (the server stores its hash).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreatePrincipalResponse {
    /// Id.
    pub id: PrincipalId,
    /// Name.
    pub name: String,
    /// Service role, if any.
    pub service_role: Option<ServiceRole>,
    /// Id of the token.
    pub token_id: TokenId,
    /// The bearer token, shown once.
    pub token: String,
    /// Token expiry, RFC 3339, if any.
    pub token_expires_at: Option<String>,
}

/// `POST /v1/tokens` (own) and `POST /v1/principals/{id}/tokens` (admins).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Lifetime, seconds (none: no expiry).
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

/// A new token, shown once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateTokenResponse {
    /// Token id (for revocation).
    pub id: TokenId,
    /// Owner.
    pub principal_id: PrincipalId,
    /// The bearer token, shown once.
    pub token: String,
    /// Expiry, RFC 3339, if any.
    pub expires_at: Option<String>,
}

/// A token as listings show it (never the secret).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenInfo {
    /// Id.
    pub id: TokenId,
    /// Owner.
    pub principal_id: PrincipalId,
    /// Creation, RFC 3339.
    pub created_at: String,
    /// Expiry, RFC 3339, if any.
    pub expires_at: Option<String>,
    /// Revocation, RFC 3339, if revoked.
    pub revoked_at: Option<String>,
}

/// Who the caller is (`GET /v1/whoami`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WhoAmI {
    /// The principal.
    pub id: PrincipalId,
    /// Name.
    pub name: String,
    /// Service role, if any.
    pub service_role: Option<ServiceRole>,
    /// Workspace roles.
    pub roles: Vec<RoleBindingInfo>,
}

/// `POST /v1/workspaces/{id}/roles`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRoleRequest {
    /// The principal, by id or name.
    pub principal: String,
    /// The role.
    pub role: WorkspaceRole,
}

/// A role binding as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RoleBindingInfo {
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// Principal.
    pub principal_id: PrincipalId,
    /// Role.
    pub role: WorkspaceRole,
    /// When granted, RFC 3339.
    pub granted_at: String,
    /// Who granted it.
    pub granted_by: PrincipalId,
}

/// `PUT /v1/workspaces/{id}/lockbox`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockboxRequest {
    /// On (support needs an approved grant) or off (access requests are
    /// approved automatically; still case-scoped, time-bound and audited).
    pub enabled: bool,
}

/// `POST /v1/workspaces/{id}/cases`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenCaseRequest {
    /// Title (1-256 printable characters).
    pub title: String,
}

/// A support case.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CaseInfo {
    /// Id.
    pub id: CaseId,
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// Title.
    pub title: String,
    /// `open` or `closed`.
    pub state: String,
    /// Who opened it.
    pub opened_by: PrincipalId,
    /// When, RFC 3339.
    pub opened_at: String,
    /// When closed, RFC 3339.
    pub closed_at: Option<String>,
}

/// `POST /v1/cases/{id}/access-requests`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRequestRequest {
    /// Requested grant duration, seconds (default 8 hours, at most 7 days).
    #[serde(default)]
    pub duration_secs: Option<u64>,
    /// Why access is needed (1-1024 characters).
    pub reason: String,
}

/// An access request (and, once approved, the grant).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AccessRequestInfo {
    /// Id (the grant id once approved).
    pub id: AccessRequestId,
    /// Case.
    pub case_id: CaseId,
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// The support engineer.
    pub requester: PrincipalId,
    /// Reason given.
    pub reason: String,
    /// Requested duration, seconds.
    pub duration_secs: u64,
    /// When requested, RFC 3339.
    pub requested_at: String,
    /// `pending`, `expired` (undecided for 12 hours), `denied`, `active`
    /// (approved and live), or `ended` (approved, but expired or its case closed).
    pub status: String,
    /// Who decided.
    pub decided_by: Option<PrincipalId>,
    /// When decided, RFC 3339.
    pub decided_at: Option<String>,
    /// End of the grant, RFC 3339 (approved requests).
    pub grant_expires_at: Option<String>,
}

/// One audit record as `GET /v1/workspaces/{id}/audit` returns it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    /// Position in the log.
    pub seq: u64,
    /// Time, RFC 3339.
    pub time: String,
    /// Principal (id, `agent:<id>`), if authenticated.
    pub principal: Option<String>,
    /// Role the request acted under.
    pub role: String,
    /// Action.
    pub action: String,
    /// Target.
    pub target: String,
    /// Workspace.
    pub workspace: Option<String>,
    /// `ok`, `denied`, `error` or `started`.
    pub outcome: String,
    /// HTTP status (0 for `started`).
    pub status: u16,
    /// Request id.
    pub request_id: String,
    /// Client address.
    pub client: String,
    /// Lockbox grant used, if any.
    pub grant: Option<String>,
    /// Further details; secrets and payload values are HMAC'd.
    pub details: std::collections::BTreeMap<String, String>,
    /// Record hash, hex.
    pub hash: String,
}

/// Answer to `GET /v1/agent/identity` (agent certificate): which server
/// keys the agent should trust from now on, and the validity of the
/// certificate it presented. Times are RFC 3339.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AgentIdentityResponse {
    /// The agent (from its certificate).
    pub agent_id: AgentId,
    /// Its workspace.
    pub workspace_id: WorkspaceId,
    /// Pins (`sha256/<base64>` of the SubjectPublicKeyInfo) of every key the
    /// server presents or will present: the key it is serving with first,
    /// then a staged next key, or an activated one that takes effect at the
    /// server's next start. Agents replace their pin list with it (only if
    /// it holds the pin of the connection it arrived on; see docs/TLS.md).
    pub pins: Vec<String>,
    /// Start of the presented certificate's validity.
    pub cert_not_before: String,
    /// End of the presented certificate's validity.
    pub cert_not_after: String,
    /// When the agent should renew it: two thirds into its validity.
    pub renew_after: String,
}

/// `POST /v1/agent/renew` (agent certificate): a CSR for a new key pair.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// PEM certificate signing request for the agent's new key pair.
    pub csr_pem: String,
}

/// Answer to `POST /v1/agent/renew`: the new certificate. The certificate
/// the request was made with stays accepted until it expires.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RenewResponse {
    /// The signed client certificate (PEM), for the same agent and workspace.
    pub certificate_pem: String,
    /// Start of its validity, RFC 3339.
    pub not_before: String,
    /// End of its validity, RFC 3339.
    pub not_after: String,
    /// When to renew it (two thirds into its validity), RFC 3339.
    pub renew_after: String,
}

/// An enrolled agent, as `GET /v1/workspaces/{id}/agents` lists it and
/// `POST /v1/workspaces/{id}/agents/{agent}/revoke` answers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AgentInfo {
    /// Id.
    pub id: AgentId,
    /// Host name reported at enrollment (a keyed pseudonym unless the agent
    /// was told otherwise).
    pub hostname: String,
    /// `active`, `revoked`, or `expired` (its certificate expired: it must
    /// enroll again).
    pub status: String,
    /// Enrollment time, RFC 3339.
    pub enrolled_at: String,
    /// Expiry of its current certificate, RFC 3339.
    pub cert_not_after: String,
    /// Expiry of the certificate it renewed from, still accepted until
    /// then, RFC 3339.
    pub prev_cert_not_after: Option<String>,
    /// Revocation time, RFC 3339, if revoked.
    pub revoked_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_from_an_older_server_parses_with_nothing_refused() {
        let old = r#"{"batch_id":"0190d3c4-7d5e-7000-8000-000000000001","accepted":3,"duplicate":false,"ack_id":"wal:7"}"#;
        let ack: IngestAck = serde_json::from_str(old).unwrap();
        assert_eq!((ack.accepted, ack.refused), (3, 0));
        let back = serde_json::to_value(&ack).unwrap();
        assert_eq!(back["refused"], 0);
    }

    #[test]
    fn policy_requests_take_level_numbers_and_category_names() {
        let r: WorkspacePolicyRequest = serde_json::from_str(r#"{"max_level":2,"categories":["logs","security"]}"#).unwrap();
        assert_eq!(r.max_level, Some(Level::Enhanced));
        assert_eq!(r.categories, Some(vec![Category::Logs, Category::Security]));
        assert!(serde_json::from_str::<WorkspacePolicyRequest>(r#"{"max_level":4}"#).is_err());
        assert!(serde_json::from_str::<WorkspacePolicyRequest>(r#"{"categories":["metrics"]}"#).is_err());
        assert!(serde_json::from_str::<WorkspacePolicyRequest>(r#"{"level":2}"#).is_err(), "unknown fields are refused");
        assert_eq!("schema".parse::<RefusalReason>().unwrap(), RefusalReason::Schema);
        assert!("other".parse::<RefusalReason>().is_err());
    }
}

/// `POST /v1/workspaces/{id}/purges` (owners): remove the rows matching a
/// predicate (see `custos_store::purge` for the language).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// The tables; empty for every table of the workspace.
    #[serde(default)]
    pub tables: Vec<String>,
    /// `COLUMN = 'v'` or `COLUMN IN ('a', 'b')`.
    #[serde(rename = "where")]
    pub predicate: String,
    /// Count what would be removed, per table; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Run at once instead of after the cancel window.
    #[serde(default)]
    pub now: bool,
}

/// One table of a dry run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PurgeCount {
    /// The table.
    pub table: String,
    /// Rows that match.
    pub rows: u64,
    /// Segments holding them.
    pub segments: u64,
    /// Segments read to count.
    pub segments_read: u64,
    /// Segments ruled out by their index (never read).
    pub segments_skipped: u64,
}

/// The answer to a dry run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PurgeDryRun {
    /// The predicate, canonical.
    pub predicate: String,
    /// Per table, every table looked at.
    pub tables: Vec<PurgeCount>,
    /// Rows that would be removed.
    pub rows: u64,
}

/// A purge job as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PurgeInfo {
    /// Job id.
    pub id: crate::JobId,
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// The tables; empty for every table.
    pub tables: Vec<String>,
    /// The predicate, canonical.
    pub predicate: String,
    /// pending, running, completed, cancelled or failed.
    pub state: String,
    /// When it was accepted (its rows hidden from queries since), RFC 3339.
    pub created_at: String,
    /// When it runs; until then `custos purge cancel` can stop it, RFC 3339.
    pub not_before: String,
    /// When it started, RFC 3339.
    pub started_at: Option<String>,
    /// When it ended, RFC 3339.
    pub finished_at: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// The signed receipt, once completed.
    pub receipt: Option<SignedReceipt>,
}

/// One rewritten (or emptied) segment in a purge receipt.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PurgeReceiptEntry {
    /// The table.
    pub table: String,
    /// The segment that held matching rows (now deleted).
    pub segment: crate::SegmentId,
    /// Its rows.
    pub rows_before: u64,
    /// Of which removed.
    pub rows_removed: u64,
    /// SHA-256 of its object, hex.
    pub old_sha256: String,
    /// The segment holding the rows left (None if none was left).
    pub new_segment: Option<crate::SegmentId>,
    /// SHA-256 of the new object, hex.
    pub new_sha256: Option<String>,
    /// When this segment was replaced, RFC 3339.
    pub at: String,
}

/// What a completed purge did (format `custos-purge-receipt`, version 1).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PurgeReceipt {
    /// `custos-purge-receipt`.
    pub format: String,
    /// 1.
    pub version: u32,
    /// The job.
    pub job: crate::JobId,
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// The tables asked for; empty for every table.
    pub tables: Vec<String>,
    /// The predicate, canonical.
    pub predicate: String,
    /// When the job was accepted, RFC 3339.
    pub accepted_at: String,
    /// When it completed, RFC 3339.
    pub completed_at: String,
    /// Rows removed, in all.
    pub rows_removed: u64,
    /// Segments rewritten with their other rows.
    pub segments_rewritten: u64,
    /// Segments deleted because no row was left.
    pub segments_deleted: u64,
    /// Segments ruled out by their index, never read (last pass).
    pub segments_skipped: u64,
    /// Segments read (last pass).
    pub segments_read: u64,
    /// Every segment changed.
    pub segments: Vec<PurgeReceiptEntry>,
}

/// A receipt with the server's Ed25519 signature over the receipt's JSON
/// (`serde_json` of [`PurgeReceipt`], field order as declared), made with
/// `custos_audit::sign_document(key, "purge-receipt", ..)`; the key is the
/// one in the server's `audit.pub`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignedReceipt {
    /// The receipt.
    pub receipt: PurgeReceipt,
    /// Signature, hex.
    pub signature: String,
    /// The signing public key, hex (compare with the server's `audit.pub`).
    pub public_key: String,
}

/// `DELETE /v1/workspaces/{id}`: the workspace's name, to confirm.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteWorkspaceRequest {
    /// Must equal the workspace's name.
    pub confirm: String,
}

/// What deleting a workspace did.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkspaceDeletionReport {
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// When its keys were destroyed (nothing readable from then on), RFC 3339.
    pub keys_destroyed_at: String,
    /// Segments removed.
    pub segments_deleted: u64,
    /// Rows in them.
    pub rows_deleted: u64,
    /// Bytes in them.
    pub bytes_deleted: u64,
    /// Objects removed from storage.
    pub objects_removed: u64,
    /// When the last byte was gone, RFC 3339.
    pub completed_at: String,
}

/// `POST /v1/workspaces/{id}/exports` (owners): export one table.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// The table.
    pub table: String,
}

/// One file of an export.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExportFile {
    /// File name in the export directory (`<segment id>.cseg`).
    pub name: String,
    /// The segment it holds (same id as the stored segment).
    pub segment: crate::SegmentId,
    /// Rows.
    pub rows: u64,
    /// Size, bytes.
    pub bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Earliest event time, RFC 3339.
    pub min_time: String,
    /// Latest event time, RFC 3339.
    pub max_time: String,
}

/// What an export holds (format `custos-export`, version 1).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExportManifest {
    /// `custos-export`.
    pub format: String,
    /// 1.
    pub version: u32,
    /// The export's id.
    pub export: String,
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// The table.
    pub table: String,
    /// When it was made, RFC 3339.
    pub created_at: String,
    /// Rows in all files.
    pub rows: u64,
    /// The files, by name.
    pub files: Vec<ExportFile>,
}

/// A manifest with the server's Ed25519 signature over its JSON, made with
/// `custos_audit::sign_document(key, "export-manifest", ..)`; `manifest.json`
/// of an export directory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    /// The manifest.
    pub manifest: ExportManifest,
    /// Signature, hex.
    pub signature: String,
    /// The signing public key, hex (compare with the server's `audit.pub`).
    pub public_key: String,
}

/// `DELETE /v1/workspaces/{id}/tables/{table}`: the table's name, to
/// confirm.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteTableRequest {
    /// Must equal the table's name.
    pub confirm: String,
}

/// What deleting a table removed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableDeletionReport {
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// The table.
    pub table: String,
    /// Segments removed.
    pub segments_deleted: u64,
    /// Rows in them.
    pub rows_deleted: u64,
    /// Bytes in them.
    pub bytes_deleted: u64,
}
