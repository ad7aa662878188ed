//! The catalog: the service's metadata. Workspaces (with their ingest policy:
//! maximum level and allowed categories), enrollment keys, agents, segments
//! and the batch ids already stored, counts of events refused at ingest;
//! principals, their API tokens and workspace role bindings; support cases
//! and lockbox access requests; each workspace's server-side redaction
//! policy, its pseudonym key and the counts of what redaction removed.
//!
//! One trait, [`Catalog`], with an embedded SQLite implementation
//! ([`SqliteCatalog`]); PostgreSQL arrives behind the same trait. Every
//! implementation must pass the same conformance suite
//! (`conformance::run_all`, compiled for tests and with the `conformance`
//! feature).
#![forbid(unsafe_code)]

use async_trait::async_trait;
use custos_model::api::RefusalReason;
use custos_model::{
    AccessRequestId, AgentId, BatchId, CaseId, Category, ChangeId, JobId, Level, PrincipalId, Secret, SegmentId,
    ServiceRole, TableName, TimestampMicros, TokenId, ValueType, WorkspaceId, WorkspaceRole,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

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
    /// The named agent does not exist (in the workspace asked about).
    #[error("agent {0} not found")]
    AgentNotFound(AgentId),
    /// The agent is revoked: nothing more may be done with it.
    #[error("agent {0} is revoked")]
    AgentRevoked(AgentId),
    /// The certificate presented is neither the agent's current one nor its
    /// previous one before that one's expiry.
    #[error("the certificate presented is not one agent {0} may use")]
    AgentCertificateMismatch(AgentId),
    /// A segment id is already registered.
    #[error("segment {0} is already registered")]
    SegmentExists(SegmentId),
    /// A principal with this name already exists.
    #[error("a principal named {0:?} already exists")]
    PrincipalNameTaken(String),
    /// The named principal does not exist.
    #[error("principal {0} not found")]
    PrincipalNotFound(PrincipalId),
    /// The named token does not exist.
    #[error("token {0} not found")]
    TokenNotFound(TokenId),
    /// The named case does not exist.
    #[error("case {0} not found")]
    CaseNotFound(CaseId),
    /// The case is already closed.
    #[error("case {0} is already closed")]
    CaseClosed(CaseId),
    /// The named access request does not exist.
    #[error("access request {0} not found")]
    AccessRequestNotFound(AccessRequestId),
    /// The access request was already decided (or is not in the expected state).
    #[error("access request {id} is {state}, not pending")]
    AccessRequestNotPending {
        /// The request.
        id: AccessRequestId,
        /// Its current state.
        state: AccessState,
    },
    /// The workspace is locked: purge, deletion and retention reductions
    /// are refused until it is unlocked.
    #[error("workspace {id} is locked ({reason}): deletion and retention reductions are refused until it is unlocked")]
    WorkspaceLocked {
        /// The workspace.
        id: WorkspaceId,
        /// The lock's reason, as given when it was set.
        reason: String,
    },
    /// The named purge job does not exist.
    #[error("purge job {0} not found")]
    PurgeNotFound(JobId),
    /// The purge job is not in a state that allows this.
    #[error("purge job {id} is {state}: {what}")]
    PurgeState {
        /// The job.
        id: JobId,
        /// Its state.
        state: PurgeState,
        /// What was refused.
        what: String,
    },
    /// There is no pending retention change for this scope.
    #[error("no pending retention change for {scope} of workspace {id}")]
    NoPendingChange {
        /// The workspace.
        id: WorkspaceId,
        /// `the default` or `table NAME`.
        scope: String,
    },
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
    /// Customer lockbox: when on (the default), support engineers read
    /// nothing in this workspace without a live, owner-approved grant.
    pub lockbox: bool,
    /// What the workspace stores (maximum level, categories).
    pub policy: WorkspacePolicy,
    /// The plan (names a `[retention.plans.*]` entry of the server's
    /// configuration: the retention limits).
    pub plan: String,
    /// The lock (legal hold), if set.
    pub lock: Option<WorkspaceLock>,
}

/// A lock on a workspace (a legal hold). While it is set nothing of the
/// workspace is deleted: purges, table deletion and retention reductions
/// are refused, and the retention sweeper leaves the workspace alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceLock {
    /// Why (shown in every refusal).
    pub reason: String,
    /// When it was set.
    pub locked_at: TimestampMicros,
    /// Who set it.
    pub locked_by: Option<PrincipalId>,
}

/// Where a retention change stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeState {
    /// Waiting for its effective time (a reduction in its grace period).
    Pending,
    /// In force.
    Applied,
    /// Cancelled (by a person, or replaced by a later change of the same
    /// scope) before it took effect.
    Cancelled,
}

impl ChangeState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeState::Pending => "pending",
            ChangeState::Applied => "applied",
            ChangeState::Cancelled => "cancelled",
        }
    }
}

/// A change of a retention period: of the workspace default (`table` None)
/// or of one table's override.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionChange {
    /// Id.
    pub id: ChangeId,
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// The table whose override changes; None for the workspace default.
    pub table: Option<TableName>,
    /// The period in force when the change was requested, days.
    pub from_days: u32,
    /// The new period, days (at least 1).
    pub to_days: u32,
    /// When it was requested.
    pub requested_at: TimestampMicros,
    /// When it takes (or took) effect.
    pub effective_at: TimestampMicros,
    /// Who asked.
    pub requested_by: Option<PrincipalId>,
    /// Where it stands.
    pub state: ChangeState,
    /// When it was applied or cancelled.
    pub decided_at: Option<TimestampMicros>,
}

impl RetentionChange {
    /// Whether the change shortens the period.
    pub fn is_reduction(&self) -> bool {
        self.to_days < self.from_days
    }
}

/// A workspace's retention settings as stored.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RetentionSettings {
    /// The workspace default, days.
    pub default_days: u32,
    /// Per-table overrides, days.
    pub tables: std::collections::BTreeMap<TableName, u32>,
    /// Changes waiting for their effective time, oldest first.
    pub pending: Vec<RetentionChange>,
}

/// Where a purge job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurgeState {
    /// Accepted; its rows are hidden from queries; runs at `not_before`.
    Pending,
    /// Rewriting segments.
    Running,
    /// Done; the receipt is signed.
    Completed,
    /// Cancelled before it ran; its rows are visible again.
    Cancelled,
    /// Stopped by an error (see `error`); its rows stay hidden.
    Failed,
}

impl PurgeState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PurgeState::Pending => "pending",
            PurgeState::Running => "running",
            PurgeState::Completed => "completed",
            PurgeState::Cancelled => "cancelled",
            PurgeState::Failed => "failed",
        }
    }

    /// Whether its predicate still hides rows from queries.
    pub fn hides_rows(self) -> bool {
        matches!(self, PurgeState::Pending | PurgeState::Running | PurgeState::Failed)
    }
}

impl std::fmt::Display for PurgeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A purge: remove the rows matching `predicate` from `tables` (every table
/// of the workspace when empty).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeJob {
    /// Id.
    pub id: JobId,
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// The tables; empty for every table.
    pub tables: Vec<TableName>,
    /// The predicate, canonical (`custos_store::purge::Predicate::to_sql`).
    pub predicate: String,
    /// Where it stands.
    pub state: PurgeState,
    /// When it was accepted.
    pub created_at: TimestampMicros,
    /// Who asked.
    pub created_by: Option<PrincipalId>,
    /// When it may run (the end of its cancel window, or `created_at`).
    pub not_before: TimestampMicros,
    /// When it started running.
    pub started_at: Option<TimestampMicros>,
    /// When it completed, failed or was cancelled.
    pub finished_at: Option<TimestampMicros>,
    /// Why it failed.
    pub error: Option<String>,
    /// The signed receipt (JSON), once completed.
    pub receipt: Option<String>,
}

/// Why stored segments were deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeletionReason {
    /// Every row was older than the table's retention.
    Retention,
    /// A purge rewrote (or emptied) the segment.
    Purge,
    /// Its table was deleted.
    Table,
    /// The workspace was deleted.
    Workspace,
    /// A rollup segment replaced when its day was rolled up again (rows
    /// arrived late for it); the replacement holds the day's new rows.
    Rollup,
}

impl DeletionReason {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeletionReason::Retention => "retention",
            DeletionReason::Purge => "purge",
            DeletionReason::Table => "table",
            DeletionReason::Workspace => "workspace",
            DeletionReason::Rollup => "rollup",
        }
    }
}

/// The record of one deleted segment. The catalog entry goes first (the
/// rows leave every query at once); the object is removed afterwards and
/// `object_deleted_at` set, so a crash between the two leaves a record
/// whose object removal is retried ([`Catalog::pending_object_deletions`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    /// Sequence number (increasing).
    pub seq: i64,
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// The table.
    pub table: TableName,
    /// The segment.
    pub segment_id: SegmentId,
    /// Its object path.
    pub path: String,
    /// Rows it held.
    pub rows: u64,
    /// Bytes of its object.
    pub bytes: u64,
    /// Earliest event time in it.
    pub min_time: TimestampMicros,
    /// Latest event time in it.
    pub max_time: TimestampMicros,
    /// Why.
    pub reason: DeletionReason,
    /// When its catalog entry was removed.
    pub deleted_at: TimestampMicros,
    /// When its object was removed from storage (None: still to do).
    pub object_deleted_at: Option<TimestampMicros>,
}

/// What a workspace stores: events above `max_level` or outside
/// `categories` are refused at ingest (never stored, counted per agent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspacePolicy {
    /// The highest consent level stored. Default [`Level::Full`] (everything).
    pub max_level: Level,
    /// The categories stored; `None` (the default) is every category,
    /// including ones a later version adds. Build it with
    /// [`WorkspacePolicy::with_categories`], which turns a list naming every
    /// category into `None`.
    pub categories: Option<BTreeSet<Category>>,
}

impl Default for WorkspacePolicy {
    fn default() -> Self {
        WorkspacePolicy { max_level: Level::Full, categories: None }
    }
}

impl WorkspacePolicy {
    /// A policy allowing `categories` up to `max_level`; naming every
    /// category means "all" (`categories: None`).
    pub fn with_categories(max_level: Level, categories: impl IntoIterator<Item = Category>) -> Self {
        let set: BTreeSet<Category> = categories.into_iter().collect();
        let all = Category::ALL.iter().all(|c| set.contains(c));
        WorkspacePolicy { max_level, categories: if all { None } else { Some(set) } }
    }

    /// Whether events of this category are stored.
    pub fn allows_category(&self, c: Category) -> bool {
        self.categories.as_ref().is_none_or(|set| set.contains(&c))
    }

    /// The categories stored, in [`Category::ALL`] order.
    pub fn categories(&self) -> Vec<Category> {
        Category::ALL.into_iter().filter(|c| self.allows_category(*c)).collect()
    }
}

/// Events of one agent refused at ingest for one reason and category.
///
/// As an addition ([`Catalog::add_refusals`], [`Catalog::commit_ingest`])
/// it is merged into the stored count of the same (workspace, agent,
/// reason, category): `events` are summed, `first_at` is the earliest and
/// `last_at` the latest. A batch adds one with `first_at == last_at`, its
/// receive time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// The agent that sent the events.
    pub agent_id: AgentId,
    /// Why they were refused.
    pub reason: RefusalReason,
    /// Their category.
    pub category: Category,
    /// How many (at least 1).
    pub events: u64,
    /// When the first was refused.
    pub first_at: TimestampMicros,
    /// When the last was refused.
    pub last_at: TimestampMicros,
}

/// A workspace's server-side redaction policy (the redaction backstop at
/// ingest). The catalog stores the policy text as given; the server
/// validates it (`custos_redact::Policy::from_toml`) before storing it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedactionPolicy {
    /// The policy (TOML) as set; `None`: the default policy.
    pub toml: Option<String>,
    /// Incremented by every [`Catalog::set_redaction_policy`]; 0 while the
    /// policy was never set. A server caching the redactor built from the
    /// policy rebuilds it when the revision it sees changes.
    pub revision: u64,
    /// When it was last set.
    pub updated_at: Option<TimestampMicros>,
    /// Who last set it.
    pub updated_by: Option<PrincipalId>,
}

pub use custos_model::api::RedactionKind;

/// What the server's redaction backstop removed from one table of one
/// workspace, for one entity (or one kind of drop).
///
/// As an addition ([`Catalog::commit_ingest_with`]) it is merged into the
/// stored count of the same (workspace, table, kind, entity): `count`s are
/// summed, `first_at` is the earliest and `last_at` the latest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedactionCount {
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// The table the events were bound for.
    pub table: TableName,
    /// What is counted.
    pub kind: RedactionKind,
    /// For [`RedactionKind::Redacted`]: the entity name (`EMAIL_ADDRESS`, a
    /// custom entity's name; 1-64 characters). Empty for the drops.
    pub entity: String,
    /// How many (entries of 0 are ignored).
    pub count: u64,
    /// When the first was counted.
    pub first_at: TimestampMicros,
    /// When the last was counted.
    pub last_at: TimestampMicros,
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
    /// SHA-256 (DER, hex) of the certificate the agent renewed from, still
    /// accepted until [`Agent::prev_cert_not_after`], so an agent that
    /// crashed between the server signing its new certificate and storing
    /// it keeps working with the old one (and can renew again with it).
    /// Set and cleared together with `prev_cert_not_after`.
    pub prev_cert_sha256: Option<String>,
    /// Expiry of the previous certificate.
    pub prev_cert_not_after: Option<TimestampMicros>,
}

impl Agent {
    /// Whether a certificate with this SHA-256 (DER, hex) authenticates the
    /// agent at `now`: it is not revoked, and the certificate is its current
    /// one, or its previous one before that one's expiry. (The TLS layer
    /// checks the validity period of every certificate as well.)
    pub fn accepts(&self, cert_sha256: &str, now: TimestampMicros) -> bool {
        if self.revoked_at.is_some() {
            return false;
        }
        if self.cert_sha256 == cert_sha256 {
            return true;
        }
        match (&self.prev_cert_sha256, self.prev_cert_not_after) {
            (Some(prev), Some(until)) => prev == cert_sha256 && now < until,
            _ => false,
        }
    }
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

/// A raw segment committed with rows for days its table's rollup had
/// already passed ([`Catalog::late_segments`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateSegment {
    /// The segment (it may since have been dropped; a purge's rewrite
    /// takes over the record).
    pub segment_id: SegmentId,
    /// Its earliest row.
    pub min_time: TimestampMicros,
    /// Its latest row.
    pub max_time: TimestampMicros,
}

/// One rollup transaction ([`Catalog::commit_rollup`]).
#[derive(Clone, Debug, Default)]
pub struct RollupCommit {
    /// New segments of the rollup table.
    pub segments: Vec<Segment>,
    /// Rollup segments they replace (a day rolled up again).
    pub replaces: Vec<SegmentId>,
    /// The raw table's new rollup mark; `None` leaves it.
    pub until: Option<TimestampMicros>,
    /// The raw segments the rollup read.
    pub read: Vec<SegmentId>,
    /// Time ranges `[from, to)` read in full from every segment listed for
    /// them: raw segments overlapping one that are not in `read` are
    /// recorded late.
    pub ranges: Vec<(TimestampMicros, TimestampMicros)>,
    /// Late records the rollup has aggregated: removed.
    pub late_done: Vec<SegmentId>,
}

/// A principal: a person or service account calling the API with tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Id.
    pub id: PrincipalId,
    /// Unique name.
    pub name: String,
    /// The service role, if this is service staff. Workspace roles are bound
    /// separately ([`RoleBinding`]).
    pub service_role: Option<ServiceRole>,
    /// Creation time.
    pub created_at: TimestampMicros,
}

/// An API token, stored by hash only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Id (shown in listings, used to revoke).
    pub id: TokenId,
    /// Owner.
    pub principal_id: PrincipalId,
    /// SHA-256 of the token, hex. Unique.
    pub token_hash: String,
    /// Creation time.
    pub created_at: TimestampMicros,
    /// Expiry, if any.
    pub expires_at: Option<TimestampMicros>,
    /// Revocation time, if revoked.
    pub revoked_at: Option<TimestampMicros>,
}

/// A workspace role granted to a principal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleBinding {
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// Principal.
    pub principal_id: PrincipalId,
    /// Role.
    pub role: WorkspaceRole,
    /// When granted.
    pub granted_at: TimestampMicros,
    /// Who granted it.
    pub granted_by: PrincipalId,
}

/// A support case on one workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    /// Id.
    pub id: CaseId,
    /// The workspace the case concerns.
    pub workspace_id: WorkspaceId,
    /// Title.
    pub title: String,
    /// Who opened it.
    pub opened_by: PrincipalId,
    /// When it was opened.
    pub opened_at: TimestampMicros,
    /// When it was closed (None while open).
    pub closed_at: Option<TimestampMicros>,
    /// Who closed it.
    pub closed_by: Option<PrincipalId>,
}

/// State of an access request as stored. Expiry of undecided requests and
/// the end of grants are computed from times by the server's lockbox logic,
/// not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessState {
    /// Waiting for an owner's decision.
    Pending,
    /// Approved: a grant until `grant_expires_at` (or the case closes).
    Approved,
    /// Denied by an owner.
    Denied,
}

impl AccessState {
    /// Name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessState::Pending => "pending",
            AccessState::Approved => "approved",
            AccessState::Denied => "denied",
        }
    }
}

impl std::fmt::Display for AccessState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A support engineer's request for read access to a case's workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRequest {
    /// Id (also the grant id once approved).
    pub id: AccessRequestId,
    /// The case.
    pub case_id: CaseId,
    /// The case's workspace (denormalised for listing).
    pub workspace_id: WorkspaceId,
    /// The support engineer.
    pub requester: PrincipalId,
    /// Why access is needed.
    pub reason: String,
    /// Requested duration of the grant, microseconds.
    pub duration: i64,
    /// When requested.
    pub requested_at: TimestampMicros,
    /// State.
    pub state: AccessState,
    /// When decided.
    pub decided_at: Option<TimestampMicros>,
    /// Who decided.
    pub decided_by: Option<PrincipalId>,
    /// End of the grant (set on approval).
    pub grant_expires_at: Option<TimestampMicros>,
}

/// Which access requests to list. Every field that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessFilter {
    /// Only this workspace.
    pub workspace: Option<WorkspaceId>,
    /// Only this case.
    pub case: Option<CaseId>,
    /// Only this requester.
    pub requester: Option<PrincipalId>,
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
    async fn consume_enrollment_key(
        &self,
        key_hash: &str,
        now: TimestampMicros,
    ) -> Result<WorkspaceId>;

    /// Register an enrolled agent.
    async fn add_agent(&self, agent: &Agent) -> Result<()>;
    /// Look an agent up.
    async fn get_agent(&self, id: AgentId) -> Result<Option<Agent>>;
    /// Agents of a workspace, in enrollment order.
    async fn list_agents(&self, ws: WorkspaceId) -> Result<Vec<Agent>>;
    /// Atomically replace an agent's certificate after a renewal. Only if
    /// the agent is not revoked and `presented_sha256` (the certificate it
    /// authenticated with) is what [`Agent::accepts`] accepts at `now`: the
    /// current certificate, or the previous one before its expiry. The
    /// presented certificate becomes the previous one (with its stored
    /// expiry), so it keeps working until it expires; `new_sha256` becomes
    /// current with expiry `new_not_after`. Errors: [`CatalogError::AgentNotFound`],
    /// [`CatalogError::AgentRevoked`], [`CatalogError::AgentCertificateMismatch`]
    /// (nothing changes). Returns the agent as stored afterwards.
    async fn renew_agent_cert(
        &self,
        id: AgentId,
        presented_sha256: &str,
        new_sha256: &str,
        new_not_after: TimestampMicros,
        now: TimestampMicros,
    ) -> Result<Agent>;
    /// Revoke an agent of workspace `ws` at `now`. Idempotent: an agent
    /// already revoked keeps its first revocation time. An agent that does
    /// not exist, or belongs to another workspace, is
    /// [`CatalogError::AgentNotFound`] (and is not touched). Returns the
    /// agent as stored afterwards.
    async fn revoke_agent(
        &self,
        ws: WorkspaceId,
        id: AgentId,
        now: TimestampMicros,
    ) -> Result<Agent>;


    /// Which of `ids` are already stored for this workspace.
    async fn stored_batches(&self, ws: WorkspaceId, ids: &[BatchId]) -> Result<Vec<BatchId>>;
    /// Atomically register segments and record the batch ids they hold, so
    /// after a crash a replayed batch is recognised as stored. Batch ids
    /// already recorded are ignored (not an error). The same as
    /// [`Catalog::commit_ingest`] without refusals.
    async fn commit_segments(
        &self,
        segments: &[Segment],
        batches: &[(WorkspaceId, BatchId)],
        now: TimestampMicros,
    ) -> Result<()> {
        self.commit_ingest(segments, batches, &[], now).await
    }
    /// Atomically register segments, record the batch ids they hold and add
    /// the refusal counts of those batches, all or nothing: a batch's
    /// refusals are counted exactly when its id is recorded, so a replayed
    /// or retried batch is never counted twice. Batch ids already recorded
    /// are ignored (not an error); their refusals must not be passed again.
    /// The same as [`Catalog::commit_ingest_with`] without redaction counts.
    async fn commit_ingest(
        &self,
        segments: &[Segment],
        batches: &[(WorkspaceId, BatchId)],
        refusals: &[Refusal],
        now: TimestampMicros,
    ) -> Result<()> {
        self.commit_ingest_with(segments, batches, refusals, &[], now).await
    }
    /// [`Catalog::commit_ingest`], adding the redaction counts of the same
    /// batches in the same transaction (merged per workspace, table, kind
    /// and entity; see [`RedactionCount`]), so they too are counted exactly
    /// once. Every workspace must exist; entries with a count of 0 are
    /// ignored; an entity name that is not valid for its kind is refused
    /// with [`CatalogError::Database`] (nothing is committed).
    /// A segment with rows before its table's rollup mark is recorded late
    /// ([`Catalog::late_segments`]) in the same transaction.
    async fn commit_ingest_with(
        &self,
        segments: &[Segment],
        batches: &[(WorkspaceId, BatchId)],
        refusals: &[Refusal],
        redactions: &[RedactionCount],
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

    /// Turn a workspace's lockbox on or off.
    async fn set_lockbox(&self, ws: WorkspaceId, on: bool) -> Result<()>;

    /// A workspace's ingest policy ([`CatalogError::WorkspaceNotFound`] if
    /// there is no such workspace).
    async fn workspace_policy(&self, ws: WorkspaceId) -> Result<WorkspacePolicy>;
    /// Replace a workspace's ingest policy.
    async fn set_workspace_policy(&self, ws: WorkspaceId, policy: &WorkspacePolicy) -> Result<()>;
    /// Add refusal counts (merged per workspace, agent, reason and category;
    /// see [`Refusal`]), atomically. Every workspace must exist; entries of
    /// 0 events are ignored.
    async fn add_refusals(&self, refusals: &[Refusal]) -> Result<()>;
    /// A workspace's refusal counts, ordered by agent, reason and category.
    async fn list_refusals(&self, ws: WorkspaceId) -> Result<Vec<Refusal>>;

    /// A workspace's redaction policy ([`CatalogError::WorkspaceNotFound`]
    /// if there is no such workspace); the default policy (`toml: None`,
    /// revision 0) until one is set.
    async fn redaction_policy(&self, ws: WorkspaceId) -> Result<RedactionPolicy>;
    /// Replace a workspace's redaction policy (`None`: back to the default)
    /// and increment its revision, atomically. Returns what is stored now.
    async fn set_redaction_policy(
        &self,
        ws: WorkspaceId,
        toml: Option<&str>,
        by: PrincipalId,
        now: TimestampMicros,
    ) -> Result<RedactionPolicy>;
    /// The workspace's pseudonym key for server-side redaction. The first
    /// call stores `candidate` (the caller draws 32 random bytes); every
    /// call, concurrent ones included, returns the one key stored. The key
    /// never changes afterwards (pseudonyms stay stable).
    async fn redaction_key(&self, ws: WorkspaceId, candidate: Secret<[u8; 32]>) -> Result<Secret<[u8; 32]>>;
    /// A workspace's redaction counts, ordered by table, kind and entity.
    async fn list_redactions(&self, ws: WorkspaceId) -> Result<Vec<RedactionCount>>;

    /// Create a principal; names are unique.
    async fn create_principal(&self, p: &Principal) -> Result<()>;
    /// Look a principal up by id.
    async fn get_principal(&self, id: PrincipalId) -> Result<Option<Principal>>;
    /// Look a principal up by name.
    async fn get_principal_by_name(&self, name: &str) -> Result<Option<Principal>>;
    /// All principals, oldest first.
    async fn list_principals(&self) -> Result<Vec<Principal>>;

    /// Store a token (by hash). The principal must exist.
    async fn add_token(&self, t: &ApiToken) -> Result<()>;
    /// Find a token by the hash of its secret (revoked and expired tokens
    /// are returned too; the caller decides).
    async fn get_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>>;
    /// Look a token up by id.
    async fn get_token(&self, id: TokenId) -> Result<Option<ApiToken>>;
    /// Tokens of a principal, oldest first.
    async fn list_tokens(&self, principal: PrincipalId) -> Result<Vec<ApiToken>>;
    /// Revoke a token at `now` (idempotent: an already revoked token keeps
    /// its first revocation time). Returns the token as stored afterwards.
    async fn revoke_token(&self, id: TokenId, now: TimestampMicros) -> Result<ApiToken>;

    /// Bind a workspace role; returns false if the same binding existed.
    /// Workspace and principal must exist.
    async fn grant_role(&self, b: &RoleBinding) -> Result<bool>;
    /// Remove a binding; returns false if there was none.
    async fn revoke_role(
        &self,
        ws: WorkspaceId,
        principal: PrincipalId,
        role: WorkspaceRole,
    ) -> Result<bool>;
    /// Roles of a principal in a workspace.
    async fn roles_of(&self, principal: PrincipalId, ws: WorkspaceId)
        -> Result<Vec<WorkspaceRole>>;
    /// All bindings of a workspace.
    async fn list_role_bindings(&self, ws: WorkspaceId) -> Result<Vec<RoleBinding>>;
    /// All bindings of a principal, across workspaces.
    async fn bindings_of(&self, principal: PrincipalId) -> Result<Vec<RoleBinding>>;

    /// Open a case. The workspace must exist.
    async fn create_case(&self, c: &Case) -> Result<()>;
    /// Look a case up.
    async fn get_case(&self, id: CaseId) -> Result<Option<Case>>;
    /// Cases, newest first; only those of `ws` when given.
    async fn list_cases(&self, ws: Option<WorkspaceId>) -> Result<Vec<Case>>;
    /// Close an open case at `now`. Fails with [`CatalogError::CaseClosed`]
    /// if it is already closed.
    async fn close_case(&self, id: CaseId, by: PrincipalId, now: TimestampMicros) -> Result<Case>;

    /// Store a new (pending) access request. The case must exist in the
    /// request's workspace (else [`CatalogError::CaseNotFound`]); a request
    /// whose state is not pending is refused with
    /// [`CatalogError::AccessRequestNotPending`].
    async fn create_access_request(&self, r: &AccessRequest) -> Result<()>;
    /// Look an access request up.
    async fn get_access_request(&self, id: AccessRequestId) -> Result<Option<AccessRequest>>;
    /// Access requests matching the filter, newest first.
    async fn list_access_requests(&self, filter: &AccessFilter) -> Result<Vec<AccessRequest>>;
    /// Atomically decide a pending request: only if it is still pending
    /// (else [`CatalogError::AccessRequestNotPending`]). `grant_expires_at`
    /// is set for an approval and must be None for a denial.
    async fn decide_access_request(
        &self,
        id: AccessRequestId,
        decision: AccessState,
        by: PrincipalId,
        now: TimestampMicros,
        grant_expires_at: Option<TimestampMicros>,
    ) -> Result<AccessRequest>;

    /// Lock a workspace (or replace the reason of its lock).
    async fn lock_workspace(&self, ws: WorkspaceId, lock: &WorkspaceLock) -> Result<()>;
    /// Unlock a workspace; returns the lock removed (None if it was not
    /// locked).
    async fn unlock_workspace(&self, ws: WorkspaceId) -> Result<Option<WorkspaceLock>>;

    /// The workspace's retention default, table overrides and pending
    /// changes.
    async fn retention(&self, ws: WorkspaceId) -> Result<RetentionSettings>;
    /// Record a retention change, atomically:
    /// - a reduction ([`RetentionChange::is_reduction`]) of a locked
    ///   workspace is refused with [`CatalogError::WorkspaceLocked`];
    /// - a pending change of the same scope is cancelled (replaced);
    /// - a change in state [`ChangeState::Applied`] takes effect at once
    ///   (the default or the table override is set to `to_days`); one in
    ///   state [`ChangeState::Pending`] waits for
    ///   [`Catalog::apply_due_retention_changes`]. Other states are refused.
    async fn change_retention(&self, change: &RetentionChange) -> Result<()>;
    /// Cancel the pending change of a scope (`table` None: the default).
    /// Fails with [`CatalogError::NoPendingChange`] if there is none.
    async fn cancel_retention_change(
        &self,
        ws: WorkspaceId,
        table: Option<&TableName>,
        now: TimestampMicros,
    ) -> Result<RetentionChange>;
    /// Apply every pending change whose effective time has come, except in
    /// locked workspaces (their changes wait for the unlock). Returns the
    /// changes applied.
    async fn apply_due_retention_changes(&self, now: TimestampMicros) -> Result<Vec<RetentionChange>>;

    /// Atomically remove segments from the catalog and record each removal
    /// ([`Deletion`], object removal still to do). Refused with
    /// [`CatalogError::WorkspaceLocked`] while the workspace is locked.
    /// Ids not registered (or of another workspace) are skipped; the
    /// records of those removed are returned.
    async fn delete_segments(
        &self,
        ws: WorkspaceId,
        ids: &[SegmentId],
        reason: DeletionReason,
        now: TimestampMicros,
    ) -> Result<Vec<Deletion>>;
    /// Delete a workspace: atomically tombstone it (no lookup returns it
    /// again; its name is freed), revoke its agents and enrollment keys,
    /// forget its pseudonym key, and cancel its pending retention changes
    /// and purges. Refused with [`CatalogError::WorkspaceLocked`] while
    /// locked; an unknown or already deleted workspace is
    /// [`CatalogError::WorkspaceNotFound`]. Its segments stay registered
    /// (the caller destroys its keys, then removes them with
    /// [`Catalog::delete_segments`]); its records (deletions, audit) stay.
    async fn delete_workspace(&self, ws: WorkspaceId, now: TimestampMicros) -> Result<()>;
    /// Deleted workspaces (id, when), oldest first: the sweeper finishes
    /// removing their bytes after a crash.
    async fn deleted_workspaces(&self) -> Result<Vec<(WorkspaceId, TimestampMicros)>>;
    /// Rows of the raw table `table` before this time are already in its
    /// rollup table (None: nothing rolled up yet).
    async fn rollup_mark(&self, ws: WorkspaceId, table: &TableName) -> Result<Option<TimestampMicros>>;
    /// Atomically apply a rollup of the raw table `table` ([`RollupCommit`]):
    /// register its segments (of `<table>_rollup`), remove the ones they
    /// replace (recorded as deletions, reason [`DeletionReason::Rollup`]),
    /// move the mark, clear the late records it aggregated, and record as
    /// late every raw segment overlapping a range it read in full that it
    /// did not read (committed meanwhile). So a crash never rolls the same
    /// rows up twice and no committed row is left out. Refused if the new
    /// mark is not past the current one, and with
    /// [`CatalogError::WorkspaceLocked`] if it replaces segments while the
    /// workspace is locked. Returns the deletion records.
    async fn commit_rollup(&self, ws: WorkspaceId, table: &TableName, commit: &RollupCommit, now: TimestampMicros) -> Result<Vec<Deletion>>;
    /// Raw segments of `table` committed with rows before its rollup mark
    /// (late rows, for days already rolled up), oldest first: the days
    /// they touch are rolled up again. [`Catalog::commit_ingest_with`]
    /// records them in the committing transaction.
    async fn late_segments(&self, ws: WorkspaceId, table: &TableName) -> Result<Vec<LateSegment>>;
    /// Whether rows of `table` in `[from, to)` were already removed for
    /// retention (or with their table or workspace): a segment overlapping
    /// the range has such a deletion record. A day where this holds can no
    /// longer be rolled up again from its raw rows.
    async fn rows_expired_within(&self, ws: WorkspaceId, table: &TableName, from: TimestampMicros, to: TimestampMicros) -> Result<bool>;
    /// Store the Bloom filters (JSON, `custos_store::purge`) of segments'
    /// identity columns. Filters of segments not (or no longer) registered
    /// are ignored; a segment's filters go with it when it is deleted.
    async fn put_segment_indexes(&self, ws: WorkspaceId, indexes: &[(SegmentId, String)]) -> Result<()>;
    /// The stored filters of a table's segments, by segment.
    async fn segment_indexes(&self, ws: WorkspaceId, table: &TableName) -> Result<std::collections::HashMap<SegmentId, String>>;

    /// Accept a purge job (state pending). Refused with
    /// [`CatalogError::WorkspaceLocked`] while the workspace is locked.
    async fn create_purge(&self, job: &PurgeJob) -> Result<()>;
    /// Look a purge job up.
    async fn get_purge(&self, id: JobId) -> Result<Option<PurgeJob>>;
    /// A workspace's purge jobs, newest first.
    async fn list_purges(&self, ws: WorkspaceId) -> Result<Vec<PurgeJob>>;
    /// A workspace's purge jobs whose predicate still hides rows from
    /// queries ([`PurgeState::hides_rows`]: pending, running or failed),
    /// oldest first. Every query reads these, so completed and cancelled
    /// jobs, however many, cost it nothing.
    async fn hiding_purges(&self, ws: WorkspaceId) -> Result<Vec<PurgeJob>>;
    /// Cancel a pending job; any other state is refused with
    /// [`CatalogError::PurgeState`].
    async fn cancel_purge(&self, id: JobId, now: TimestampMicros) -> Result<PurgeJob>;
    /// Run a failed job again: back to pending, due at `now`, its error
    /// cleared (the receipt lines of what it did keep). Refused with
    /// [`CatalogError::PurgeState`] unless failed, and with
    /// [`CatalogError::WorkspaceLocked`] while the workspace is locked.
    async fn retry_purge(&self, id: JobId, now: TimestampMicros) -> Result<PurgeJob>;
    /// Atomically move every pending job whose `not_before` has come, in
    /// unlocked workspaces, to running, and return every running job
    /// (including ones a crash interrupted), oldest first.
    async fn claim_purges(&self, now: TimestampMicros) -> Result<Vec<PurgeJob>>;
    /// One step of a running job, atomically: remove segment `old` (with a
    /// deletion record, reason purge), register `new` (its rows left, if
    /// any) and append `entry` (a receipt line, JSON) to the job. Refused
    /// with [`CatalogError::WorkspaceLocked`] while the workspace is locked
    /// and with [`CatalogError::PurgeState`] unless the job is running;
    /// a segment already gone is [`CatalogError::Database`] and nothing
    /// changes.
    async fn purge_segment(
        &self,
        job: JobId,
        old: SegmentId,
        new: Option<&Segment>,
        entry: &str,
        now: TimestampMicros,
    ) -> Result<Deletion>;
    /// The receipt lines of a job, in order.
    async fn purge_entries(&self, job: JobId) -> Result<Vec<String>>;
    /// End a running job: completed with its signed receipt, or failed with
    /// an error.
    async fn finish_purge(&self, id: JobId, outcome: std::result::Result<String, String>, now: TimestampMicros) -> Result<PurgeJob>;

    /// The workspace's deletion records, newest first, at most `limit`.
    async fn list_deletions(&self, ws: WorkspaceId, limit: u32) -> Result<Vec<Deletion>>;
    /// Deletion records (of any workspace) whose object is still to be
    /// removed, oldest first, at most `limit`.
    async fn pending_object_deletions(&self, limit: u32) -> Result<Vec<Deletion>>;
    /// Record that the objects of these deletion records are gone.
    async fn mark_objects_deleted(&self, seqs: &[i64], now: TimestampMicros) -> Result<()>;
}

/// Open a catalog by URI. `sqlite://PATH` (created if missing) is the
/// embedded default.
pub async fn open(uri: &str) -> Result<std::sync::Arc<dyn Catalog>> {
    if let Some(path) = uri.strip_prefix("sqlite://") {
        Ok(std::sync::Arc::new(
            SqliteCatalog::open(std::path::Path::new(path)).await?,
        ))
    } else {
        Err(CatalogError::UnsupportedUri(uri.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> Agent {
        Agent {
            id: AgentId::new(),
            workspace_id: WorkspaceId::new(),
            hostname: "h".into(),
            cert_sha256: "current".into(),
            cert_not_after: 1_000,
            enrolled_at: 0,
            revoked_at: None,
            prev_cert_sha256: Some("previous".into()),
            prev_cert_not_after: Some(500),
        }
    }

    #[test]
    fn an_agent_accepts_its_current_certificate_and_its_previous_one_until_it_expires() {
        let a = agent();
        assert!(a.accepts("current", 0));
        assert!(
            a.accepts("current", 2_000),
            "the TLS layer, not the catalog, checks the current certificate's expiry"
        );
        assert!(a.accepts("previous", 499));
        assert!(!a.accepts("previous", 500));
        assert!(!a.accepts("other", 0));
        let no_prev = Agent {
            prev_cert_sha256: None,
            prev_cert_not_after: None,
            ..a.clone()
        };
        assert!(!no_prev.accepts("previous", 0));
    }

    #[test]
    fn a_revoked_agent_accepts_no_certificate() {
        let a = Agent {
            revoked_at: Some(10),
            ..agent()
        };
        assert!(!a.accepts("current", 0));
        assert!(!a.accepts("previous", 0));
    }
}
