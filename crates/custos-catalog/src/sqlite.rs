//! The embedded catalog: one SQLite file in WAL mode.
//!
//! Layout (schema version 6):
//!
//! | table             | key                                       | notes                                   |
//! |-------------------|-------------------------------------------|-----------------------------------------|
//! | `schema_version`  | `version`                                 | one row per applied migration           |
//! | `workspaces`      | `id`; `name` unique                       | `lockbox` 0/1, default 1 (v2); `max_level` 0-3, default 3, and `categories` (comma-separated names, NULL = all) (v3); `plan` (default `paid`), `locked_reason`/`locked_at` (both NULL or both set), `locked_by`, `deleted_at` (a tombstone: set when deleted, the row then invisible to lookups and its name freed) (v6) |
//! | `enrollment_keys` | `key_hash`                                | `used_at` NULL until consumed           |
//! | `agents`          | `id`                                      | `revoked_at` NULL unless revoked; `prev_cert_sha256` and `prev_cert_not_after` (both NULL or both set): the certificate renewed from, accepted until it expires (v4) |
//! | `segments`        | `id`                                      | `columns` is JSON; index on (ws, table, min_time) |
//! | `batches`         | (`workspace_id`, `batch_id`)              | batch ids already stored                |
//! | `principals`      | `id`; `name` unique                       | `service_role` NULL, `admin` or `support` (v2) |
//! | `api_tokens`      | `id`; `token_hash` unique                 | → `principals`; index on (principal, created_at) (v2) |
//! | `role_bindings`   | (`workspace_id`, `principal_id`, `role`)  | → `workspaces`, `principals`; index on (principal, ws) (v2) |
//! | `cases`           | `id`                                      | → `workspaces`; index on (ws, opened_at); `closed_at` NULL while open (v2) |
//! | `access_requests` | `id`                                      | → `cases` by (case, ws); `state` pending/approved/denied; indexes on ws, case, requester (v2) |
//! | `refusals`        | (`workspace_id`, `agent_id`, `reason`, `category`) | events refused at ingest: `events` > 0, `first_at`, `last_at`; `reason` level/category/schema (v3) |
//! | `redaction_policies` | `workspace_id`                         | → `workspaces`; `policy` TOML (NULL: the default policy), `revision` (+1 per change), `updated_at`, `updated_by`; `pseudonym_key` 32 bytes, set once (v5) |
//! | `table_retention` | (`workspace_id`, `table_name`)            | per-table retention override, `days` >= 1 (v6) |
//! | `retention_changes` | `id`                                    | `table_name` '' = the workspace default; `state` pending/applied/cancelled, at most one pending per scope; `decided_at` set unless pending (v6) |
//! | `deletions`       | `seq` (autoincrement)                     | one row per deleted segment: table, segment, path, rows, bytes, time range, `reason` retention/purge/table/workspace/rollup (rollup: v7), `deleted_at`, `object_deleted_at` NULL until the object is gone; indexes on (ws, seq), (ws, table, min_time) (v6) |
//! | `segment_indexes` | `segment_id` → `segments` (on delete cascade) | Bloom filters of a segment's identity columns, JSON (v6) |
//! | `purge_jobs`      | `id`                                      | → `workspaces`; `tables` JSON array ([] = all), canonical `predicate`, `state` pending/running/completed/cancelled/failed, `not_before`, `receipt` (signed JSON) (v6); partial index on (ws, created_at) of the jobs still hiding rows (v7) |
//! | `purge_entries`   | (`job_id`, `seq`)                         | a running purge's receipt lines, one per segment, committed with the segment's rewrite (v6) |
//! | `rollup_marks`    | (`workspace_id`, `table_name`)            | rows of the (raw) table before `rolled_up_until` are in its rollup table (v6) |
//! | `rollup_late`     | (`workspace_id`, `table_name`, `segment_id`) | a raw segment committed with rows before its table's rollup mark: its time range, `recorded_at`; removed when its days are rolled up again (v7) |
//! | `redactions`      | (`workspace_id`, `table_name`, `kind`, `entity`) | what the redaction backstop removed: `kind` redacted/field_dropped/event_dropped, `entity` (empty for drops), `count` > 0, `first_at`, `last_at` (v5) |
//!
//! Ids are UUID text (hyphenated), times are `INTEGER` microseconds, and every
//! row that belongs to a workspace references `workspaces(id)` (foreign keys
//! are on). Every query of workspace data filters by workspace id; principals
//! and their tokens are service-wide. The columns naming who acted
//! (`granted_by`, `opened_by`, `closed_by`, `requester`, `decided_by`) are
//! principal ids kept as a record, without foreign keys. Roles and states are
//! stored by name and checked by the schema.

use crate::{
    AccessFilter, AccessRequest, AccessState, Agent, ApiToken, Case, Catalog, CatalogError, ChangeState,
    ColumnDef, Deletion, DeletionReason, EnrollmentKey, LateSegment, Principal, PurgeJob, PurgeState, RedactionCount, RedactionKind, RedactionPolicy,
    Refusal, Result, RetentionChange, RollupCommit, RetentionSettings, RoleBinding, Segment, Workspace, WorkspaceLock,
    WorkspacePolicy,
};
use async_trait::async_trait;
use custos_model::{
    AccessRequestId, AgentId, BatchId, CaseId, Category, JobId, Level, PrincipalId, Secret, SegmentId,
    TableName, TimestampMicros, TokenId, WorkspaceId, WorkspaceRole,
};
use sqlx::error::ErrorKind;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// How long a connection waits for a lock held by another writer.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections in the pool. SQLite serialises writers; readers run in
/// parallel under WAL.
const MAX_CONNECTIONS: u32 = 8;

/// Most ids bound in one `IN (...)` list (SQLite's variable limit is far
/// higher in recent versions, but keep statements small).
const IN_CHUNK: usize = 500;

/// The migrations, in order. Version `i + 1` is `MIGRATIONS[i]`. Never edit
/// an entry once released: append a new one.
const MIGRATIONS: &[&str] = &[
    // Version 1: the initial layout.
    r#"
CREATE TABLE workspaces (
    id             TEXT    NOT NULL PRIMARY KEY,
    name           TEXT    NOT NULL UNIQUE,
    region         TEXT    NOT NULL,
    retention_days INTEGER NOT NULL CHECK (retention_days >= 0),
    created_at     INTEGER NOT NULL
) STRICT;

CREATE TABLE enrollment_keys (
    key_hash     TEXT    NOT NULL PRIMARY KEY,
    workspace_id TEXT    NOT NULL REFERENCES workspaces(id),
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    used_at      INTEGER
) STRICT;
CREATE INDEX enrollment_keys_by_workspace ON enrollment_keys(workspace_id);

CREATE TABLE agents (
    id             TEXT    NOT NULL PRIMARY KEY,
    workspace_id   TEXT    NOT NULL REFERENCES workspaces(id),
    hostname       TEXT    NOT NULL,
    cert_sha256    TEXT    NOT NULL,
    cert_not_after INTEGER NOT NULL,
    enrolled_at    INTEGER NOT NULL,
    revoked_at     INTEGER
) STRICT;
CREATE INDEX agents_by_workspace ON agents(workspace_id, enrolled_at);

CREATE TABLE segments (
    id           TEXT    NOT NULL PRIMARY KEY,
    workspace_id TEXT    NOT NULL REFERENCES workspaces(id),
    table_name   TEXT    NOT NULL,
    path         TEXT    NOT NULL,
    min_time     INTEGER NOT NULL,
    max_time     INTEGER NOT NULL,
    row_count    INTEGER NOT NULL CHECK (row_count >= 0),
    byte_count   INTEGER NOT NULL CHECK (byte_count >= 0),
    columns      TEXT    NOT NULL,
    created_at   INTEGER NOT NULL
) STRICT;
CREATE INDEX segments_by_table_time ON segments(workspace_id, table_name, min_time);

CREATE TABLE batches (
    workspace_id TEXT    NOT NULL REFERENCES workspaces(id),
    batch_id     TEXT    NOT NULL,
    stored_at    INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, batch_id)
) STRICT, WITHOUT ROWID;
"#,
    // Version 2: principals, tokens, role bindings, cases, lockbox.
    r#"
ALTER TABLE workspaces ADD COLUMN lockbox INTEGER NOT NULL DEFAULT 1 CHECK (lockbox IN (0, 1));

CREATE TABLE principals (
    id           TEXT    NOT NULL PRIMARY KEY,
    name         TEXT    NOT NULL UNIQUE,
    service_role TEXT    CHECK (service_role IN ('admin', 'support')),
    created_at   INTEGER NOT NULL
) STRICT;

CREATE TABLE api_tokens (
    id           TEXT    NOT NULL PRIMARY KEY,
    principal_id TEXT    NOT NULL REFERENCES principals(id),
    token_hash   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER
) STRICT;
CREATE UNIQUE INDEX api_tokens_by_hash ON api_tokens(token_hash);
CREATE INDEX api_tokens_by_principal ON api_tokens(principal_id, created_at);

CREATE TABLE role_bindings (
    workspace_id TEXT    NOT NULL REFERENCES workspaces(id),
    principal_id TEXT    NOT NULL REFERENCES principals(id),
    role         TEXT    NOT NULL CHECK (role IN ('owner', 'contributor', 'reader', 'auditor')),
    granted_at   INTEGER NOT NULL,
    granted_by   TEXT    NOT NULL,
    PRIMARY KEY (workspace_id, principal_id, role)
) STRICT, WITHOUT ROWID;
CREATE INDEX role_bindings_by_principal ON role_bindings(principal_id, workspace_id);

CREATE TABLE cases (
    id           TEXT    NOT NULL PRIMARY KEY,
    workspace_id TEXT    NOT NULL REFERENCES workspaces(id),
    title        TEXT    NOT NULL,
    opened_by    TEXT    NOT NULL,
    opened_at    INTEGER NOT NULL,
    closed_at    INTEGER,
    closed_by    TEXT,
    CHECK ((closed_at IS NULL) = (closed_by IS NULL))
) STRICT;
CREATE INDEX cases_by_workspace ON cases(workspace_id, opened_at);
-- The target of access_requests' (case_id, workspace_id) foreign key.
CREATE UNIQUE INDEX cases_by_id_and_workspace ON cases(id, workspace_id);

CREATE TABLE access_requests (
    id               TEXT    NOT NULL PRIMARY KEY,
    case_id          TEXT    NOT NULL,
    workspace_id     TEXT    NOT NULL REFERENCES workspaces(id),
    requester        TEXT    NOT NULL,
    reason           TEXT    NOT NULL,
    duration         INTEGER NOT NULL,
    requested_at     INTEGER NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('pending', 'approved', 'denied')),
    decided_at       INTEGER,
    decided_by       TEXT,
    grant_expires_at INTEGER,
    FOREIGN KEY (case_id, workspace_id) REFERENCES cases(id, workspace_id),
    CHECK (
        (state = 'pending' AND decided_at IS NULL AND decided_by IS NULL AND grant_expires_at IS NULL)
        OR (state = 'approved' AND decided_at IS NOT NULL AND decided_by IS NOT NULL AND grant_expires_at IS NOT NULL)
        OR (state = 'denied' AND decided_at IS NOT NULL AND decided_by IS NOT NULL AND grant_expires_at IS NULL)
    )
) STRICT;
CREATE INDEX access_requests_by_workspace ON access_requests(workspace_id, requested_at);
CREATE INDEX access_requests_by_case ON access_requests(case_id, requested_at);
CREATE INDEX access_requests_by_requester ON access_requests(requester, requested_at);
"#,
    // Version 3: the workspace's ingest policy and the counts of refused events.
    r#"
ALTER TABLE workspaces ADD COLUMN max_level INTEGER NOT NULL DEFAULT 3 CHECK (max_level BETWEEN 0 AND 3);
-- NULL: every category, including ones a later version adds; otherwise the
-- allowed category names, comma-separated (possibly none).
ALTER TABLE workspaces ADD COLUMN categories TEXT;

CREATE TABLE refusals (
    workspace_id TEXT    NOT NULL REFERENCES workspaces(id),
    agent_id     TEXT    NOT NULL,
    reason       TEXT    NOT NULL CHECK (reason IN ('level', 'category', 'schema')),
    category     TEXT    NOT NULL CHECK (category IN
                     ('security', 'settings', 'inventory', 'health', 'usage', 'logs', 'performance', 'crash')),
    events       INTEGER NOT NULL CHECK (events > 0),
    first_at     INTEGER NOT NULL,
    last_at      INTEGER NOT NULL CHECK (last_at >= first_at),
    PRIMARY KEY (workspace_id, agent_id, reason, category)
) STRICT, WITHOUT ROWID;
"#,
    // Version 4: certificate renewal keeps the previous certificate until it expires.
    r#"
ALTER TABLE agents ADD COLUMN prev_cert_sha256 TEXT;
ALTER TABLE agents ADD COLUMN prev_cert_not_after INTEGER
    CHECK ((prev_cert_not_after IS NULL) = (prev_cert_sha256 IS NULL));
"#,
    // Version 5: the server's redaction backstop: each workspace's redaction
    // policy and pseudonym key, and the counts of what redaction removed.
    r#"
CREATE TABLE redaction_policies (
    workspace_id  TEXT    NOT NULL PRIMARY KEY REFERENCES workspaces(id),
    -- NULL: the default policy.
    policy        TEXT,
    revision      INTEGER NOT NULL DEFAULT 0 CHECK (revision >= 0),
    updated_at    INTEGER,
    updated_by    TEXT,
    -- Set once, on first use; never changed afterwards.
    pseudonym_key BLOB    CHECK (pseudonym_key IS NULL OR length(pseudonym_key) = 32)
) STRICT;

CREATE TABLE redactions (
    workspace_id TEXT    NOT NULL REFERENCES workspaces(id),
    table_name   TEXT    NOT NULL,
    kind         TEXT    NOT NULL CHECK (kind IN ('redacted', 'field_dropped', 'event_dropped')),
    entity       TEXT    NOT NULL CHECK (length(entity) <= 64 AND ((kind = 'redacted') = (entity <> ''))),
    count        INTEGER NOT NULL CHECK (count > 0),
    first_at     INTEGER NOT NULL,
    last_at      INTEGER NOT NULL CHECK (last_at >= first_at),
    PRIMARY KEY (workspace_id, table_name, kind, entity)
) STRICT, WITHOUT ROWID;
"#,
    // Version 6: the governed store: plans, locks, retention per table with
    // grace periods, and the record of every deleted segment.
    r#"
ALTER TABLE workspaces ADD COLUMN plan TEXT NOT NULL DEFAULT 'paid' CHECK (length(plan) BETWEEN 1 AND 64);
ALTER TABLE workspaces ADD COLUMN locked_reason TEXT;
ALTER TABLE workspaces ADD COLUMN locked_at INTEGER CHECK ((locked_at IS NULL) = (locked_reason IS NULL));
ALTER TABLE workspaces ADD COLUMN locked_by TEXT;
-- Set when the workspace is deleted: a tombstone no lookup returns.
ALTER TABLE workspaces ADD COLUMN deleted_at INTEGER;

CREATE TABLE table_retention (
    workspace_id TEXT    NOT NULL REFERENCES workspaces(id),
    table_name   TEXT    NOT NULL,
    days         INTEGER NOT NULL CHECK (days >= 1),
    PRIMARY KEY (workspace_id, table_name)
) STRICT, WITHOUT ROWID;

CREATE TABLE retention_changes (
    id           TEXT    NOT NULL PRIMARY KEY,
    workspace_id TEXT    NOT NULL REFERENCES workspaces(id),
    -- '' for the workspace default.
    table_name   TEXT    NOT NULL,
    from_days    INTEGER NOT NULL CHECK (from_days >= 0),
    to_days      INTEGER NOT NULL CHECK (to_days >= 1),
    requested_at INTEGER NOT NULL,
    effective_at INTEGER NOT NULL,
    requested_by TEXT,
    state        TEXT    NOT NULL CHECK (state IN ('pending', 'applied', 'cancelled')),
    decided_at   INTEGER CHECK ((decided_at IS NULL) = (state = 'pending'))
) STRICT;
CREATE UNIQUE INDEX retention_changes_one_pending ON retention_changes (workspace_id, table_name) WHERE state = 'pending';
CREATE INDEX retention_changes_by_ws ON retention_changes (workspace_id, requested_at);

CREATE TABLE deletions (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id      TEXT    NOT NULL REFERENCES workspaces(id),
    table_name        TEXT    NOT NULL,
    segment_id        TEXT    NOT NULL,
    path              TEXT    NOT NULL,
    row_count         INTEGER NOT NULL CHECK (row_count >= 0),
    byte_count        INTEGER NOT NULL CHECK (byte_count >= 0),
    min_time          INTEGER NOT NULL,
    max_time          INTEGER NOT NULL,
    reason            TEXT    NOT NULL CHECK (reason IN ('retention', 'purge', 'table', 'workspace')),
    deleted_at        INTEGER NOT NULL,
    object_deleted_at INTEGER
);
CREATE INDEX deletions_by_ws ON deletions (workspace_id, seq);
CREATE INDEX deletions_pending_objects ON deletions (seq) WHERE object_deleted_at IS NULL;

CREATE TABLE segment_indexes (
    segment_id   TEXT NOT NULL PRIMARY KEY REFERENCES segments(id) ON DELETE CASCADE,
    workspace_id TEXT NOT NULL,
    idx          TEXT NOT NULL
) STRICT;

CREATE TABLE purge_jobs (
    id           TEXT    NOT NULL PRIMARY KEY,
    workspace_id TEXT    NOT NULL REFERENCES workspaces(id),
    -- JSON array of table names; [] = every table.
    tables       TEXT    NOT NULL,
    predicate    TEXT    NOT NULL,
    state        TEXT    NOT NULL CHECK (state IN ('pending', 'running', 'completed', 'cancelled', 'failed')),
    created_at   INTEGER NOT NULL,
    created_by   TEXT,
    not_before   INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER,
    error        TEXT,
    receipt      TEXT
) STRICT;
CREATE INDEX purge_jobs_by_ws ON purge_jobs (workspace_id, created_at);
CREATE INDEX purge_jobs_active ON purge_jobs (state) WHERE state IN ('pending', 'running');

CREATE TABLE purge_entries (
    job_id TEXT    NOT NULL REFERENCES purge_jobs(id),
    seq    INTEGER NOT NULL,
    entry  TEXT    NOT NULL,
    PRIMARY KEY (job_id, seq)
) STRICT, WITHOUT ROWID;

CREATE TABLE rollup_marks (
    workspace_id    TEXT    NOT NULL REFERENCES workspaces(id),
    table_name      TEXT    NOT NULL,
    rolled_up_until INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, table_name)
) STRICT, WITHOUT ROWID;
"#,
    // Version 7: late rows for days already rolled up. Ingest records the
    // segments that carry them; the sweeper rolls those days up again,
    // replacing their rollup segments (a new deletion reason, so the
    // deletions table is rebuilt with the wider CHECK).
    r#"
CREATE TABLE rollup_late (
    workspace_id TEXT    NOT NULL REFERENCES workspaces(id),
    table_name   TEXT    NOT NULL,
    segment_id   TEXT    NOT NULL,
    min_time     INTEGER NOT NULL,
    max_time     INTEGER NOT NULL CHECK (max_time >= min_time),
    recorded_at  INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, table_name, segment_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE deletions_v7 (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id      TEXT    NOT NULL REFERENCES workspaces(id),
    table_name        TEXT    NOT NULL,
    segment_id        TEXT    NOT NULL,
    path              TEXT    NOT NULL,
    row_count         INTEGER NOT NULL CHECK (row_count >= 0),
    byte_count        INTEGER NOT NULL CHECK (byte_count >= 0),
    min_time          INTEGER NOT NULL,
    max_time          INTEGER NOT NULL,
    reason            TEXT    NOT NULL CHECK (reason IN ('retention', 'purge', 'table', 'workspace', 'rollup')),
    deleted_at        INTEGER NOT NULL,
    object_deleted_at INTEGER
);
INSERT INTO deletions_v7 SELECT seq, workspace_id, table_name, segment_id, path, row_count, byte_count, min_time,
    max_time, reason, deleted_at, object_deleted_at FROM deletions;
DROP TABLE deletions;
ALTER TABLE deletions_v7 RENAME TO deletions;
CREATE INDEX deletions_by_ws ON deletions (workspace_id, seq);
CREATE INDEX deletions_pending_objects ON deletions (seq) WHERE object_deleted_at IS NULL;
CREATE INDEX deletions_by_table_time ON deletions (workspace_id, table_name, min_time);

-- The jobs every query reads (those still hiding rows), without the
-- completed ones.
CREATE INDEX purge_jobs_hiding ON purge_jobs (workspace_id, created_at) WHERE state IN ('pending', 'running', 'failed');
"#,
];

/// The newest schema version this build knows.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The embedded SQLite catalog.
#[derive(Debug, Clone)]
pub struct SqliteCatalog {
    pool: SqlitePool,
    path: PathBuf,
}

impl SqliteCatalog {
    /// Open (creating if missing) the catalog database at `path`: WAL
    /// journal, `synchronous=FULL`, foreign keys on, a busy timeout, and the
    /// schema migrated to the current version.
    ///
    /// Fails with [`CatalogError::Database`] when the file is not a SQLite
    /// database, or when its schema is newer than this build knows (an older
    /// binary must not write to a newer catalog).
    pub async fn open(path: &Path) -> Result<Self> {
        Self::open_at_version(path, SCHEMA_VERSION).await
    }

    /// [`SqliteCatalog::open`], migrating only up to `target` (tests build
    /// old catalogs with it).
    async fn open_at_version(path: &Path, target: i64) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(|e| {
                CatalogError::Database(format!("cannot open catalog {}: {e}", path.display()))
            })?;
        let cat = SqliteCatalog {
            pool,
            path: path.to_path_buf(),
        };
        if let Err(e) = cat.migrate(target).await {
            cat.pool.close().await;
            return Err(e);
        }
        Ok(cat)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Close every connection (checkpointing the WAL). Further calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Bring the schema to `target` (normally [`SCHEMA_VERSION`]), in one
    /// immediate transaction so two processes opening the same file do not
    /// both migrate.
    async fn migrate(&self, target: i64) -> Result<()> {
        let ctx = |e: sqlx::Error| {
            CatalogError::Database(format!(
                "cannot migrate catalog {}: {e}",
                self.path.display()
            ))
        };
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(ctx)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_version (
                version    INTEGER NOT NULL PRIMARY KEY,
                applied_at INTEGER NOT NULL
            ) STRICT",
        )
        .execute(&mut *tx)
        .await
        .map_err(ctx)?;
        let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            .fetch_one(&mut *tx)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(ctx)?;
        if current > SCHEMA_VERSION {
            tx.rollback().await.map_err(ctx)?;
            return Err(CatalogError::Database(format!(
                "catalog {} has schema version {current}, newer than this build supports \
                 (up to {SCHEMA_VERSION}); upgrade custos or use a matching catalog",
                self.path.display()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let version = i as i64 + 1;
            if version <= current || version > target {
                continue;
            }
            tracing::info!(path = %self.path.display(), version, "applying catalog migration");
            sqlx::raw_sql(*sql).execute(&mut *tx).await.map_err(ctx)?;
            sqlx::query("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)")
                .bind(version)
                .bind(custos_model::now_micros())
                .execute(&mut *tx)
                .await
                .map_err(ctx)?;
        }
        tx.commit().await.map_err(ctx)?;
        Ok(())
    }

    async fn workspace_exists(&self, id: WorkspaceId) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM workspaces WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(row.is_some())
    }

    async fn exists(&self, sql: &'static str, id: String) -> Result<bool> {
        let row = sqlx::query(sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(row.is_some())
    }

    async fn principal_exists(&self, id: PrincipalId) -> Result<bool> {
        self.exists("SELECT 1 FROM principals WHERE id = ?", id.to_string())
            .await
    }

    async fn case_exists(&self, id: CaseId) -> Result<bool> {
        self.exists("SELECT 1 FROM cases WHERE id = ?", id.to_string())
            .await
    }

    /// After a foreign-key failure: the first of `ids` that does not exist.
    async fn missing_workspace(&self, mut ids: Vec<WorkspaceId>) -> Result<Option<WorkspaceId>> {
        ids.dedup();
        for id in ids {
            if !self.workspace_exists(id).await? {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }
}

/// Why a statement failed, as far as the mapping to [`CatalogError`] cares.
enum Failure {
    Unique(String),
    ForeignKey,
    Other(CatalogError),
}

fn classify(e: sqlx::Error) -> Failure {
    if let sqlx::Error::Database(d) = &e {
        match d.kind() {
            ErrorKind::UniqueViolation => return Failure::Unique(d.message().to_string()),
            ErrorKind::ForeignKeyViolation => return Failure::ForeignKey,
            _ => {}
        }
    }
    Failure::Other(db(e))
}

fn db(e: sqlx::Error) -> CatalogError {
    CatalogError::Database(e.to_string())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> CatalogError {
    CatalogError::Corrupt(format!("{what}: {e}"))
}

fn get<'r, T>(row: &'r SqliteRow, col: &str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(col).map_err(|e| corrupt(col, e))
}

fn get_id<T: FromStr>(row: &SqliteRow, col: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let s: String = get(row, col)?;
    s.parse().map_err(|e| corrupt(col, e))
}

fn get_u64(row: &SqliteRow, col: &str) -> Result<u64> {
    let v: i64 = get(row, col)?;
    u64::try_from(v).map_err(|_| CatalogError::Corrupt(format!("{col}: negative value {v}")))
}

fn to_i64(what: &str, v: u64) -> Result<i64> {
    i64::try_from(v)
        .map_err(|_| CatalogError::Database(format!("{what} {v} is too large to store")))
}

fn get_bool(row: &SqliteRow, col: &str) -> Result<bool> {
    match get::<i64>(row, col)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(CatalogError::Corrupt(format!(
            "{col}: expected 0 or 1, found {v}"
        ))),
    }
}

fn get_opt_id<T: FromStr>(row: &SqliteRow, col: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    let s: Option<String> = get(row, col)?;
    s.map(|s| s.parse().map_err(|e| corrupt(col, e)))
        .transpose()
}

fn workspace_from_row(row: &SqliteRow) -> Result<Workspace> {
    let days: i64 = get(row, "retention_days")?;
    Ok(Workspace {
        id: get_id(row, "id")?,
        name: get(row, "name")?,
        region: get(row, "region")?,
        retention_days: u32::try_from(days)
            .map_err(|_| CatalogError::Corrupt(format!("retention_days: out of range {days}")))?,
        created_at: get(row, "created_at")?,
        lockbox: get_bool(row, "lockbox")?,
        policy: policy_from_row(row)?,
        plan: get(row, "plan")?,
        lock: lock_from_row(row)?,
    })
}

fn lock_from_row(row: &SqliteRow) -> Result<Option<WorkspaceLock>> {
    let reason: Option<String> = get(row, "locked_reason")?;
    let Some(reason) = reason else { return Ok(None) };
    Ok(Some(WorkspaceLock {
        reason,
        locked_at: get(row, "locked_at")?,
        locked_by: get_opt_id(row, "locked_by")?,
    }))
}

const WORKSPACE_COLUMNS: &str =
    "id, name, region, retention_days, created_at, lockbox, max_level, categories, plan, locked_reason, locked_at, locked_by";

fn change_from_row(row: &SqliteRow) -> Result<RetentionChange> {
    let table: String = get(row, "table_name")?;
    let state: String = get(row, "state")?;
    let days = |col: &str| -> Result<u32> {
        let v: i64 = get(row, col)?;
        u32::try_from(v).map_err(|_| CatalogError::Corrupt(format!("{col}: out of range {v}")))
    };
    Ok(RetentionChange {
        id: get_id(row, "id")?,
        workspace_id: get_id(row, "workspace_id")?,
        table: if table.is_empty() { None } else { Some(table_from_str(table)?) },
        from_days: days("from_days")?,
        to_days: days("to_days")?,
        requested_at: get(row, "requested_at")?,
        effective_at: get(row, "effective_at")?,
        requested_by: get_opt_id(row, "requested_by")?,
        state: match state.as_str() {
            "pending" => ChangeState::Pending,
            "applied" => ChangeState::Applied,
            "cancelled" => ChangeState::Cancelled,
            other => return Err(CatalogError::Corrupt(format!("state: not a change state: {other:?}"))),
        },
        decided_at: get(row, "decided_at")?,
    })
}

const CHANGE_COLUMNS: &str =
    "id, workspace_id, table_name, from_days, to_days, requested_at, effective_at, requested_by, state, decided_at";

fn deletion_from_row(row: &SqliteRow) -> Result<Deletion> {
    let reason: String = get(row, "reason")?;
    Ok(Deletion {
        seq: get(row, "seq")?,
        workspace_id: get_id(row, "workspace_id")?,
        table: table_from_str(get(row, "table_name")?)?,
        segment_id: get_id(row, "segment_id")?,
        path: get(row, "path")?,
        rows: get_u64(row, "row_count")?,
        bytes: get_u64(row, "byte_count")?,
        min_time: get(row, "min_time")?,
        max_time: get(row, "max_time")?,
        reason: match reason.as_str() {
            "retention" => DeletionReason::Retention,
            "purge" => DeletionReason::Purge,
            "table" => DeletionReason::Table,
            "workspace" => DeletionReason::Workspace,
            "rollup" => DeletionReason::Rollup,
            other => return Err(CatalogError::Corrupt(format!("reason: not a deletion reason: {other:?}"))),
        },
        deleted_at: get(row, "deleted_at")?,
        object_deleted_at: get(row, "object_deleted_at")?,
    })
}

fn purge_from_row(row: &SqliteRow) -> Result<PurgeJob> {
    let tables: String = get(row, "tables")?;
    let tables: Vec<String> = serde_json::from_str(&tables).map_err(|e| corrupt("tables", e))?;
    let state: String = get(row, "state")?;
    Ok(PurgeJob {
        id: get_id(row, "id")?,
        workspace_id: get_id(row, "workspace_id")?,
        tables: tables.into_iter().map(table_from_str).collect::<Result<_>>()?,
        predicate: get(row, "predicate")?,
        state: match state.as_str() {
            "pending" => PurgeState::Pending,
            "running" => PurgeState::Running,
            "completed" => PurgeState::Completed,
            "cancelled" => PurgeState::Cancelled,
            "failed" => PurgeState::Failed,
            other => return Err(CatalogError::Corrupt(format!("state: not a purge state: {other:?}"))),
        },
        created_at: get(row, "created_at")?,
        created_by: get_opt_id(row, "created_by")?,
        not_before: get(row, "not_before")?,
        started_at: get(row, "started_at")?,
        finished_at: get(row, "finished_at")?,
        error: get(row, "error")?,
        receipt: get(row, "receipt")?,
    })
}

const PURGE_COLUMNS: &str =
    "id, workspace_id, tables, predicate, state, created_at, created_by, not_before, started_at, finished_at, error, receipt";

const DELETION_COLUMNS: &str = "seq, workspace_id, table_name, segment_id, path, row_count, byte_count, min_time, \
     max_time, reason, deleted_at, object_deleted_at";

/// The lock of a workspace, read inside a transaction (NotFound if it does
/// not exist).
async fn lock_in_tx(tx: &mut sqlx::SqliteConnection, ws: WorkspaceId) -> Result<Option<WorkspaceLock>> {
    let row = sqlx::query("SELECT locked_reason, locked_at, locked_by FROM workspaces WHERE id = ?")
        .bind(ws.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    match row {
        Some(row) => lock_from_row(&row),
        None => Err(CatalogError::WorkspaceNotFound(ws)),
    }
}

/// A purge job read inside a transaction; a missing one is
/// [`CatalogError::PurgeNotFound`].
async fn purge_in_tx(tx: &mut sqlx::SqliteConnection, id: JobId) -> Result<PurgeJob> {
    let sql = format!("SELECT {PURGE_COLUMNS} FROM purge_jobs WHERE id = ?");
    match sqlx::query(AssertSqlSafe(sql)).bind(id.to_string()).fetch_optional(&mut *tx).await.map_err(db)? {
        Some(row) => purge_from_row(&row),
        None => Err(CatalogError::PurgeNotFound(id)),
    }
}

/// Set the default (`table` None) or a table override inside a transaction.
async fn set_days_in_tx(tx: &mut sqlx::SqliteConnection, ws: WorkspaceId, table: Option<&TableName>, days: u32) -> Result<()> {
    match table {
        None => sqlx::query("UPDATE workspaces SET retention_days = ? WHERE id = ?")
            .bind(i64::from(days))
            .bind(ws.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db)?,
        Some(t) => sqlx::query(
            "INSERT INTO table_retention (workspace_id, table_name, days) VALUES (?, ?, ?) \
             ON CONFLICT (workspace_id, table_name) DO UPDATE SET days = excluded.days",
        )
        .bind(ws.to_string())
        .bind(t.as_str())
        .bind(i64::from(days))
        .execute(&mut *tx)
        .await
        .map_err(db)?,
    };
    Ok(())
}

fn policy_from_row(row: &SqliteRow) -> Result<WorkspacePolicy> {
    let level: i64 = get(row, "max_level")?;
    let max_level = u8::try_from(level)
        .ok()
        .and_then(|l| Level::try_from(l).ok())
        .ok_or_else(|| CatalogError::Corrupt(format!("max_level: not a level: {level}")))?;
    let categories: Option<String> = get(row, "categories")?;
    let categories = match categories {
        None => None,
        Some(text) => Some(
            text.split(',')
                .filter(|c| !c.is_empty())
                .map(|c| {
                    c.parse::<Category>()
                        .map_err(|_| CatalogError::Corrupt(format!("categories: unknown category {c:?}")))
                })
                .collect::<Result<_>>()?,
        ),
    };
    Ok(WorkspacePolicy { max_level, categories })
}

/// The stored form of a policy's categories (see the v3 migration).
fn categories_text(p: &WorkspacePolicy) -> Option<String> {
    p.categories
        .as_ref()
        .map(|set| set.iter().map(|c| c.name()).collect::<Vec<_>>().join(","))
}

fn refusal_from_row(row: &SqliteRow) -> Result<Refusal> {
    let category: String = get(row, "category")?;
    Ok(Refusal {
        workspace_id: get_id(row, "workspace_id")?,
        agent_id: get_id(row, "agent_id")?,
        reason: get_id(row, "reason")?,
        category: category
            .parse()
            .map_err(|_| CatalogError::Corrupt(format!("category: unknown category {category:?}")))?,
        events: get_u64(row, "events")?,
        first_at: get(row, "first_at")?,
        last_at: get(row, "last_at")?,
    })
}

const REFUSAL_COLUMNS: &str = "workspace_id, agent_id, reason, category, events, first_at, last_at";

fn redaction_from_row(row: &SqliteRow) -> Result<RedactionCount> {
    let kind: String = get(row, "kind")?;
    Ok(RedactionCount {
        workspace_id: get_id(row, "workspace_id")?,
        table: table_from_str(get(row, "table_name")?)?,
        kind: kind.parse().map_err(|e| corrupt("kind", e))?,
        entity: get(row, "entity")?,
        count: get_u64(row, "count")?,
        first_at: get(row, "first_at")?,
        last_at: get(row, "last_at")?,
    })
}

const REDACTION_COLUMNS: &str = "workspace_id, table_name, kind, entity, count, first_at, last_at";

/// Rows of one multi-row redaction upsert (7 bound values each).
const REDACTION_CHUNK: usize = 100;

/// Why a redaction count cannot be stored, if it cannot.
fn redaction_entity_error(r: &RedactionCount) -> Option<String> {
    let e = &r.entity;
    match r.kind {
        RedactionKind::Redacted if e.is_empty() || e.chars().count() > 64 || e.chars().any(char::is_control) => Some(format!(
            "redaction count: entity name {e:?} must be 1-64 printable characters"
        )),
        RedactionKind::FieldDropped | RedactionKind::EventDropped if !e.is_empty() => {
            Some(format!("redaction count: a {} count names no entity (got {e:?})", r.kind))
        }
        _ => None,
    }
}

fn redaction_policy_from_row(row: &SqliteRow) -> Result<RedactionPolicy> {
    let revision: Option<i64> = get(row, "revision")?;
    let revision = revision.unwrap_or(0);
    Ok(RedactionPolicy {
        toml: get(row, "policy")?,
        revision: u64::try_from(revision).map_err(|_| CatalogError::Corrupt(format!("revision: negative value {revision}")))?,
        updated_at: get(row, "updated_at")?,
        updated_by: get_opt_id(row, "updated_by")?,
    })
}

fn agent_from_row(row: &SqliteRow) -> Result<Agent> {
    Ok(Agent {
        id: get_id(row, "id")?,
        workspace_id: get_id(row, "workspace_id")?,
        hostname: get(row, "hostname")?,
        cert_sha256: get(row, "cert_sha256")?,
        cert_not_after: get(row, "cert_not_after")?,
        enrolled_at: get(row, "enrolled_at")?,
        revoked_at: get(row, "revoked_at")?,
        prev_cert_sha256: get(row, "prev_cert_sha256")?,
        prev_cert_not_after: get(row, "prev_cert_not_after")?,
    })
}

const AGENT_COLUMNS: &str =
    "id, workspace_id, hostname, cert_sha256, cert_not_after, enrolled_at, revoked_at, \
     prev_cert_sha256, prev_cert_not_after";


fn table_from_str(s: String) -> Result<TableName> {
    TableName::new(s).map_err(|e| corrupt("table_name", e))
}

fn segment_from_row(row: &SqliteRow) -> Result<Segment> {
    let columns: String = get(row, "columns")?;
    let columns: Vec<ColumnDef> =
        serde_json::from_str(&columns).map_err(|e| corrupt("columns", e))?;
    Ok(Segment {
        id: get_id(row, "id")?,
        workspace_id: get_id(row, "workspace_id")?,
        table: table_from_str(get(row, "table_name")?)?,
        path: get(row, "path")?,
        min_time: get(row, "min_time")?,
        max_time: get(row, "max_time")?,
        rows: get_u64(row, "row_count")?,
        bytes: get_u64(row, "byte_count")?,
        columns,
        created_at: get(row, "created_at")?,
    })
}

const SEGMENT_COLUMNS: &str =
    "id, workspace_id, table_name, path, min_time, max_time, row_count, byte_count, columns, created_at";

fn principal_from_row(row: &SqliteRow) -> Result<Principal> {
    Ok(Principal {
        id: get_id(row, "id")?,
        name: get(row, "name")?,
        service_role: get_opt_id(row, "service_role")?,
        created_at: get(row, "created_at")?,
    })
}

const PRINCIPAL_COLUMNS: &str = "id, name, service_role, created_at";

fn token_from_row(row: &SqliteRow) -> Result<ApiToken> {
    Ok(ApiToken {
        id: get_id(row, "id")?,
        principal_id: get_id(row, "principal_id")?,
        token_hash: get(row, "token_hash")?,
        created_at: get(row, "created_at")?,
        expires_at: get(row, "expires_at")?,
        revoked_at: get(row, "revoked_at")?,
    })
}

const TOKEN_COLUMNS: &str = "id, principal_id, token_hash, created_at, expires_at, revoked_at";

fn binding_from_row(row: &SqliteRow) -> Result<RoleBinding> {
    Ok(RoleBinding {
        workspace_id: get_id(row, "workspace_id")?,
        principal_id: get_id(row, "principal_id")?,
        role: get_id(row, "role")?,
        granted_at: get(row, "granted_at")?,
        granted_by: get_id(row, "granted_by")?,
    })
}

const BINDING_COLUMNS: &str = "workspace_id, principal_id, role, granted_at, granted_by";

fn case_from_row(row: &SqliteRow) -> Result<Case> {
    Ok(Case {
        id: get_id(row, "id")?,
        workspace_id: get_id(row, "workspace_id")?,
        title: get(row, "title")?,
        opened_by: get_id(row, "opened_by")?,
        opened_at: get(row, "opened_at")?,
        closed_at: get(row, "closed_at")?,
        closed_by: get_opt_id(row, "closed_by")?,
    })
}

const CASE_COLUMNS: &str = "id, workspace_id, title, opened_by, opened_at, closed_at, closed_by";

fn access_state_from_str(s: &str) -> Result<AccessState> {
    match s {
        "pending" => Ok(AccessState::Pending),
        "approved" => Ok(AccessState::Approved),
        "denied" => Ok(AccessState::Denied),
        other => Err(CatalogError::Corrupt(format!(
            "state: unknown access state {other:?}"
        ))),
    }
}

fn access_request_from_row(row: &SqliteRow) -> Result<AccessRequest> {
    let state: String = get(row, "state")?;
    Ok(AccessRequest {
        id: get_id(row, "id")?,
        case_id: get_id(row, "case_id")?,
        workspace_id: get_id(row, "workspace_id")?,
        requester: get_id(row, "requester")?,
        reason: get(row, "reason")?,
        duration: get(row, "duration")?,
        requested_at: get(row, "requested_at")?,
        state: access_state_from_str(&state)?,
        decided_at: get(row, "decided_at")?,
        decided_by: get_opt_id(row, "decided_by")?,
        grant_expires_at: get(row, "grant_expires_at")?,
    })
}

const ACCESS_REQUEST_COLUMNS: &str =
    "id, case_id, workspace_id, requester, reason, duration, requested_at, state, \
     decided_at, decided_by, grant_expires_at";

/// What went wrong inside [`SqliteCatalog::commit_segments`]'s transaction.
enum CommitFailure {
    DuplicateSegment(SegmentId),
    MissingWorkspace,
    Other(CatalogError),
}

/// Merge refusal counts inside a transaction (see [`Refusal`]).
async fn add_refusals_in_tx(
    tx: &mut sqlx::SqliteConnection,
    refusals: &[Refusal],
) -> std::result::Result<(), CommitFailure> {
    for r in refusals.iter().filter(|r| r.events > 0) {
        let events = to_i64("refused event count", r.events).map_err(CommitFailure::Other)?;
        let res = sqlx::query(
            "INSERT INTO refusals (workspace_id, agent_id, reason, category, events, first_at, last_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (workspace_id, agent_id, reason, category) DO UPDATE SET \
             events = events + excluded.events, \
             first_at = MIN(first_at, excluded.first_at), \
             last_at = MAX(last_at, excluded.last_at)",
        )
        .bind(r.workspace_id.to_string())
        .bind(r.agent_id.to_string())
        .bind(r.reason.as_str())
        .bind(r.category.name())
        .bind(events)
        .bind(r.first_at.min(r.last_at))
        .bind(r.last_at.max(r.first_at))
        .execute(&mut *tx)
        .await;
        match res.map_err(classify) {
            Ok(_) => {}
            Err(Failure::ForeignKey) => return Err(CommitFailure::MissingWorkspace),
            Err(Failure::Unique(m)) => return Err(CommitFailure::Other(CatalogError::Database(m))),
            Err(Failure::Other(e)) => return Err(CommitFailure::Other(e)),
        }
    }
    Ok(())
}

/// Merge redaction counts inside a transaction (see [`RedactionCount`]):
/// duplicates are summed first, then one multi-row upsert per
/// [`REDACTION_CHUNK`] distinct keys.
async fn add_redactions_in_tx(
    tx: &mut sqlx::SqliteConnection,
    redactions: &[RedactionCount],
) -> std::result::Result<(), CommitFailure> {
    use std::collections::BTreeMap;
    type Key<'a> = (WorkspaceId, &'a str, RedactionKind, &'a str);
    let mut merged: BTreeMap<Key<'_>, (u64, TimestampMicros, TimestampMicros)> = BTreeMap::new();
    for r in redactions.iter().filter(|r| r.count > 0) {
        if let Some(e) = redaction_entity_error(r) {
            return Err(CommitFailure::Other(CatalogError::Database(e)));
        }
        let (first, last) = (r.first_at.min(r.last_at), r.last_at.max(r.first_at));
        let e = merged.entry((r.workspace_id, r.table.as_str(), r.kind, r.entity.as_str())).or_insert((0, first, last));
        e.0 = e.0.saturating_add(r.count);
        e.1 = e.1.min(first);
        e.2 = e.2.max(last);
    }
    let rows: Vec<_> = merged.into_iter().collect();
    for chunk in rows.chunks(REDACTION_CHUNK) {
        let values = vec!["(?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        // Only placeholders are spliced in; every value is bound.
        let sql = format!(
            "INSERT INTO redactions ({REDACTION_COLUMNS}) VALUES {values} \
             ON CONFLICT (workspace_id, table_name, kind, entity) DO UPDATE SET \
             count = count + excluded.count, \
             first_at = MIN(first_at, excluded.first_at), \
             last_at = MAX(last_at, excluded.last_at)"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for ((ws, table, kind, entity), (count, first, last)) in chunk {
            let count = to_i64("redaction count", *count).map_err(CommitFailure::Other)?;
            q = q
                .bind(ws.to_string())
                .bind(table.to_string())
                .bind(kind.as_str())
                .bind(entity.to_string())
                .bind(count)
                .bind(*first)
                .bind(*last);
        }
        match q.execute(&mut *tx).await.map_err(classify) {
            Ok(_) => {}
            Err(Failure::ForeignKey) => return Err(CommitFailure::MissingWorkspace),
            Err(Failure::Unique(m)) => return Err(CommitFailure::Other(CatalogError::Database(m))),
            Err(Failure::Other(e)) => return Err(CommitFailure::Other(e)),
        }
    }
    Ok(())
}

/// Removes segment `id` of `ws` from the catalog and writes its deletion
/// record, in `tx`; `None` when it is not registered.
async fn delete_segment_in_tx(
    tx: &mut sqlx::SqliteConnection,
    ws: WorkspaceId,
    id: SegmentId,
    reason: DeletionReason,
    now: TimestampMicros,
) -> Result<Option<(Segment, Deletion)>> {
    let sql = format!("DELETE FROM segments WHERE id = ? AND workspace_id = ? RETURNING {SEGMENT_COLUMNS}");
    let Some(row) = sqlx::query(AssertSqlSafe(sql))
        .bind(id.to_string())
        .bind(ws.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
    else {
        return Ok(None);
    };
    let seg = segment_from_row(&row)?;
    let sql = format!(
        "INSERT INTO deletions (workspace_id, table_name, segment_id, path, row_count, byte_count, min_time, \
         max_time, reason, deleted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {DELETION_COLUMNS}"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(ws.to_string())
        .bind(seg.table.as_str())
        .bind(seg.id.to_string())
        .bind(seg.path.as_str())
        .bind(to_i64("segment row count", seg.rows)?)
        .bind(to_i64("segment byte count", seg.bytes)?)
        .bind(seg.min_time)
        .bind(seg.max_time)
        .bind(reason.as_str())
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
    let deletion = deletion_from_row(&row)?;
    Ok(Some((seg, deletion)))
}

/// Records as late the segments with rows before their table's rollup
/// mark (a no-op for tables without one, rollup tables among them).
async fn record_late_in_tx(tx: &mut sqlx::SqliteConnection, segments: &[Segment], now: TimestampMicros) -> Result<()> {
    for seg in segments {
        sqlx::query(
            "INSERT INTO rollup_late (workspace_id, table_name, segment_id, min_time, max_time, recorded_at) \
             SELECT workspace_id, table_name, ?, ?, ?, ? FROM rollup_marks \
             WHERE workspace_id = ? AND table_name = ? AND rolled_up_until > ? \
             ON CONFLICT (workspace_id, table_name, segment_id) DO NOTHING",
        )
        .bind(seg.id.to_string())
        .bind(seg.min_time)
        .bind(seg.max_time)
        .bind(now)
        .bind(seg.workspace_id.to_string())
        .bind(seg.table.as_str())
        .bind(seg.min_time)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    }
    Ok(())
}

async fn commit_in_tx(
    tx: &mut sqlx::SqliteConnection,
    segments: &[Segment],
    batches: &[(WorkspaceId, BatchId)],
    refusals: &[Refusal],
    redactions: &[RedactionCount],
    now: TimestampMicros,
) -> std::result::Result<(), CommitFailure> {
    for seg in segments {
        let columns = serde_json::to_string(&seg.columns)
            .map_err(|e| CommitFailure::Other(CatalogError::Database(e.to_string())))?;
        let rows = to_i64("segment row count", seg.rows).map_err(CommitFailure::Other)?;
        let bytes = to_i64("segment byte count", seg.bytes).map_err(CommitFailure::Other)?;
        let res = sqlx::query(
            "INSERT INTO segments (id, workspace_id, table_name, path, min_time, max_time, row_count, \
             byte_count, columns, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(seg.id.to_string())
        .bind(seg.workspace_id.to_string())
        .bind(seg.table.as_str())
        .bind(seg.path.as_str())
        .bind(seg.min_time)
        .bind(seg.max_time)
        .bind(rows)
        .bind(bytes)
        .bind(columns)
        .bind(seg.created_at)
        .execute(&mut *tx)
        .await;
        match res.map_err(classify) {
            Ok(_) => {}
            Err(Failure::Unique(_)) => return Err(CommitFailure::DuplicateSegment(seg.id)),
            Err(Failure::ForeignKey) => return Err(CommitFailure::MissingWorkspace),
            Err(Failure::Other(e)) => return Err(CommitFailure::Other(e)),
        }
    }
    for (ws, batch) in batches {
        let res = sqlx::query(
            "INSERT INTO batches (workspace_id, batch_id, stored_at) VALUES (?, ?, ?) \
             ON CONFLICT (workspace_id, batch_id) DO NOTHING",
        )
        .bind(ws.to_string())
        .bind(batch.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await;
        match res.map_err(classify) {
            Ok(_) => {}
            Err(Failure::ForeignKey) => return Err(CommitFailure::MissingWorkspace),
            Err(Failure::Unique(m)) => return Err(CommitFailure::Other(CatalogError::Database(m))),
            Err(Failure::Other(e)) => return Err(CommitFailure::Other(e)),
        }
    }
    add_refusals_in_tx(tx, refusals).await?;
    add_redactions_in_tx(tx, redactions).await
}

#[async_trait]
impl Catalog for SqliteCatalog {
    async fn create_workspace(&self, ws: &Workspace) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO workspaces (id, name, region, retention_days, created_at, lockbox, max_level, categories, \
             plan, locked_reason, locked_at, locked_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(ws.id.to_string())
        .bind(ws.name.as_str())
        .bind(ws.region.as_str())
        .bind(i64::from(ws.retention_days))
        .bind(ws.created_at)
        .bind(i64::from(ws.lockbox))
        .bind(i64::from(u8::from(ws.policy.max_level)))
        .bind(categories_text(&ws.policy))
        .bind(ws.plan.as_str())
        .bind(ws.lock.as_ref().map(|l| l.reason.clone()))
        .bind(ws.lock.as_ref().map(|l| l.locked_at))
        .bind(ws.lock.as_ref().and_then(|l| l.locked_by).map(|p| p.to_string()))
        .execute(&self.pool)
        .await;
        match res.map_err(classify) {
            Ok(_) => Ok(()),
            Err(Failure::Unique(msg)) if msg.contains("workspaces.name") => {
                Err(CatalogError::WorkspaceNameTaken(ws.name.clone()))
            }
            Err(Failure::Unique(_)) => Err(CatalogError::Database(format!(
                "workspace id {} already exists",
                ws.id
            ))),
            Err(Failure::ForeignKey) => Err(CatalogError::Database(
                "unexpected foreign key failure".into(),
            )),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    async fn get_workspace(&self, id: WorkspaceId) -> Result<Option<Workspace>> {
        let sql = format!("SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE id = ? AND deleted_at IS NULL");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(workspace_from_row).transpose()
    }

    async fn list_workspaces(&self) -> Result<Vec<Workspace>> {
        let sql = format!("SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE deleted_at IS NULL ORDER BY created_at, rowid");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(workspace_from_row).collect()
    }

    async fn add_enrollment_key(&self, key: &EnrollmentKey) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO enrollment_keys (key_hash, workspace_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
        )
        .bind(key.key_hash.as_str())
        .bind(key.workspace_id.to_string())
        .bind(key.created_at)
        .bind(key.expires_at)
        .execute(&self.pool)
        .await;
        match res.map_err(classify) {
            Ok(_) => Ok(()),
            Err(Failure::ForeignKey) => Err(CatalogError::WorkspaceNotFound(key.workspace_id)),
            Err(Failure::Unique(_)) => Err(CatalogError::Database(
                "enrollment key hash already stored".into(),
            )),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    async fn consume_enrollment_key(
        &self,
        key_hash: &str,
        now: TimestampMicros,
    ) -> Result<WorkspaceId> {
        // One statement: the check and the mark are atomic, so of concurrent
        // consumers exactly one sees a row come back.
        let row = sqlx::query(
            "UPDATE enrollment_keys SET used_at = ? \
             WHERE key_hash = ? AND used_at IS NULL AND expires_at > ? \
             RETURNING workspace_id",
        )
        .bind(now)
        .bind(key_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        if let Some(row) = row {
            return get_id(&row, "workspace_id");
        }
        // Only to say why it failed; the outcome is already decided.
        let row = sqlx::query("SELECT used_at, expires_at FROM enrollment_keys WHERE key_hash = ?")
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        let Some(row) = row else {
            return Err(CatalogError::EnrollmentKeyInvalid);
        };
        let used_at: Option<i64> = get(&row, "used_at")?;
        if used_at.is_some() {
            Err(CatalogError::EnrollmentKeyUsed)
        } else {
            Err(CatalogError::EnrollmentKeyExpired)
        }
    }

    async fn add_agent(&self, agent: &Agent) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO agents (id, workspace_id, hostname, cert_sha256, cert_not_after, enrolled_at, revoked_at, \
             prev_cert_sha256, prev_cert_not_after) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(agent.id.to_string())
        .bind(agent.workspace_id.to_string())
        .bind(agent.hostname.as_str())
        .bind(agent.cert_sha256.as_str())
        .bind(agent.cert_not_after)
        .bind(agent.enrolled_at)
        .bind(agent.revoked_at)
        .bind(agent.prev_cert_sha256.as_deref())
        .bind(agent.prev_cert_not_after)
        .execute(&self.pool)
        .await;
        match res.map_err(classify) {
            Ok(_) => Ok(()),
            Err(Failure::Unique(_)) => Err(CatalogError::AgentExists(agent.id)),
            Err(Failure::ForeignKey) => Err(CatalogError::WorkspaceNotFound(agent.workspace_id)),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    async fn get_agent(&self, id: AgentId) -> Result<Option<Agent>> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = ?");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(agent_from_row).transpose()
    }

    async fn list_agents(&self, ws: WorkspaceId) -> Result<Vec<Agent>> {
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE workspace_id = ? ORDER BY enrolled_at, rowid"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(ws.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(agent_from_row).collect()
    }

    async fn renew_agent_cert(
        &self,
        id: AgentId,
        presented_sha256: &str,
        new_sha256: &str,
        new_not_after: TimestampMicros,
        now: TimestampMicros,
    ) -> Result<Agent> {
        // One statement, so two renewals cannot interleave. SET expressions
        // read the row as it was before the update: the presented
        // certificate's stored expiry moves with it to prev_*.
        let sql = format!(
            "UPDATE agents SET \
                 prev_cert_not_after = CASE WHEN cert_sha256 = ?1 THEN cert_not_after ELSE prev_cert_not_after END, \
                 prev_cert_sha256 = ?1, \
                 cert_sha256 = ?2, \
                 cert_not_after = ?3 \
             WHERE id = ?4 AND revoked_at IS NULL \
               AND (cert_sha256 = ?1 OR (prev_cert_sha256 = ?1 AND prev_cert_not_after > ?5)) \
             RETURNING {AGENT_COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(presented_sha256)
            .bind(new_sha256)
            .bind(new_not_after)
            .bind(id.to_string())
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        if let Some(row) = row {
            return agent_from_row(&row);
        }
        match self.get_agent(id).await? {
            None => Err(CatalogError::AgentNotFound(id)),
            Some(a) if a.revoked_at.is_some() => Err(CatalogError::AgentRevoked(id)),
            Some(_) => Err(CatalogError::AgentCertificateMismatch(id)),
        }
    }

    async fn revoke_agent(
        &self,
        ws: WorkspaceId,
        id: AgentId,
        now: TimestampMicros,
    ) -> Result<Agent> {
        // COALESCE keeps the first revocation time under concurrent revokers.
        let sql = format!(
            "UPDATE agents SET revoked_at = COALESCE(revoked_at, ?) \
             WHERE id = ? AND workspace_id = ? RETURNING {AGENT_COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(id.to_string())
            .bind(ws.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        match row {
            Some(row) => agent_from_row(&row),
            None => Err(CatalogError::AgentNotFound(id)),
        }
    }

    /// Returns the stored ones in the order of `ids`, each once.
    async fn stored_batches(&self, ws: WorkspaceId, ids: &[BatchId]) -> Result<Vec<BatchId>> {
        let mut found: HashSet<BatchId> = HashSet::new();
        let ws = ws.to_string();
        for chunk in ids.chunks(IN_CHUNK) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            // Only `?` placeholders are spliced in; every value is bound.
            let sql = format!(
                "SELECT batch_id FROM batches WHERE workspace_id = ? AND batch_id IN ({placeholders})"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ws.clone());
            for id in chunk {
                q = q.bind(id.to_string());
            }
            let rows = q.fetch_all(&self.pool).await.map_err(db)?;
            for row in &rows {
                found.insert(get_id(row, "batch_id")?);
            }
        }
        let mut seen = HashSet::new();
        Ok(ids
            .iter()
            .copied()
            .filter(|id| found.contains(id) && seen.insert(*id))
            .collect())
    }

    async fn commit_ingest_with(
        &self,
        segments: &[Segment],
        batches: &[(WorkspaceId, BatchId)],
        refusals: &[Refusal],
        redactions: &[RedactionCount],
        now: TimestampMicros,
    ) -> Result<()> {
        if segments.is_empty()
            && batches.is_empty()
            && refusals.iter().all(|r| r.events == 0)
            && redactions.iter().all(|r| r.count == 0)
        {
            return Ok(());
        }
        // IMMEDIATE: take the write lock up front, so the busy timeout applies
        // instead of a mid-transaction SQLITE_BUSY.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        let committed = match commit_in_tx(&mut tx, segments, batches, refusals, redactions, now).await {
            Ok(()) => record_late_in_tx(&mut tx, segments, now).await.map_err(CommitFailure::Other),
            Err(f) => Err(f),
        };
        match committed {
            Ok(()) => tx.commit().await.map_err(db),
            Err(failure) => {
                tx.rollback().await.map_err(db)?;
                match failure {
                    CommitFailure::DuplicateSegment(id) => Err(CatalogError::SegmentExists(id)),
                    CommitFailure::Other(e) => Err(e),
                    CommitFailure::MissingWorkspace => {
                        let mut ids: Vec<WorkspaceId> = Vec::new();
                        for s in segments {
                            ids.push(s.workspace_id);
                        }
                        for (ws, _) in batches {
                            ids.push(*ws);
                        }
                        for r in refusals {
                            ids.push(r.workspace_id);
                        }
                        for r in redactions {
                            ids.push(r.workspace_id);
                        }
                        match self.missing_workspace(ids).await? {
                            Some(id) => Err(CatalogError::WorkspaceNotFound(id)),
                            None => Err(CatalogError::Database(
                                "foreign key failure committing segments".into(),
                            )),
                        }
                    }
                }
            }
        }
    }

    async fn list_segments(
        &self,
        ws: WorkspaceId,
        table: &TableName,
        time_range: Option<(TimestampMicros, TimestampMicros)>,
    ) -> Result<Vec<Segment>> {
        let rows = match time_range {
            None => {
                let sql = format!(
                    "SELECT {SEGMENT_COLUMNS} FROM segments WHERE workspace_id = ? AND table_name = ? \
                     ORDER BY min_time, max_time, id"
                );
                sqlx::query(AssertSqlSafe(sql))
                    .bind(ws.to_string())
                    .bind(table.as_str())
                    .fetch_all(&self.pool)
                    .await
            }
            Some((min, max)) => {
                let sql = format!(
                    "SELECT {SEGMENT_COLUMNS} FROM segments WHERE workspace_id = ? AND table_name = ? \
                     AND min_time <= ? AND max_time >= ? ORDER BY min_time, max_time, id"
                );
                sqlx::query(AssertSqlSafe(sql))
                    .bind(ws.to_string())
                    .bind(table.as_str())
                    .bind(max)
                    .bind(min)
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(db)?;
        rows.iter().map(segment_from_row).collect()
    }

    async fn list_tables(&self, ws: WorkspaceId) -> Result<Vec<TableName>> {
        let rows = sqlx::query(
            "SELECT DISTINCT table_name FROM segments WHERE workspace_id = ? ORDER BY table_name",
        )
        .bind(ws.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut tables = rows
            .iter()
            .map(|r| get(r, "table_name").and_then(table_from_str))
            .collect::<Result<Vec<_>>>()?;
        // SQLite's BINARY collation already sorts bytewise; sort again so the
        // order is Rust's, whatever the backend.
        tables.sort();
        Ok(tables)
    }

    async fn set_lockbox(&self, ws: WorkspaceId, on: bool) -> Result<()> {
        let res = sqlx::query("UPDATE workspaces SET lockbox = ? WHERE id = ?")
            .bind(i64::from(on))
            .bind(ws.to_string())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        if res.rows_affected() == 0 {
            return Err(CatalogError::WorkspaceNotFound(ws));
        }
        Ok(())
    }

    async fn workspace_policy(&self, ws: WorkspaceId) -> Result<WorkspacePolicy> {
        let row = sqlx::query("SELECT max_level, categories FROM workspaces WHERE id = ?")
            .bind(ws.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        match row {
            Some(row) => policy_from_row(&row),
            None => Err(CatalogError::WorkspaceNotFound(ws)),
        }
    }

    async fn set_workspace_policy(&self, ws: WorkspaceId, policy: &WorkspacePolicy) -> Result<()> {
        let res = sqlx::query("UPDATE workspaces SET max_level = ?, categories = ? WHERE id = ?")
            .bind(i64::from(u8::from(policy.max_level)))
            .bind(categories_text(policy))
            .bind(ws.to_string())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        if res.rows_affected() == 0 {
            return Err(CatalogError::WorkspaceNotFound(ws));
        }
        Ok(())
    }

    async fn add_refusals(&self, refusals: &[Refusal]) -> Result<()> {
        self.commit_ingest(&[], &[], refusals, custos_model::now_micros()).await
    }

    async fn list_refusals(&self, ws: WorkspaceId) -> Result<Vec<Refusal>> {
        let sql = format!(
            "SELECT {REFUSAL_COLUMNS} FROM refusals WHERE workspace_id = ? ORDER BY agent_id, reason, category"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(ws.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let mut out = rows.iter().map(refusal_from_row).collect::<Result<Vec<_>>>()?;
        // The trait's order (agent, then the enums' order), whatever the collation.
        out.sort_by_key(|r| (r.agent_id, r.reason, r.category));
        Ok(out)
    }

    async fn redaction_policy(&self, ws: WorkspaceId) -> Result<RedactionPolicy> {
        let row = sqlx::query(
            "SELECT r.policy, r.revision, r.updated_at, r.updated_by FROM workspaces w \
             LEFT JOIN redaction_policies r ON r.workspace_id = w.id WHERE w.id = ?",
        )
        .bind(ws.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        match row {
            Some(row) => redaction_policy_from_row(&row),
            None => Err(CatalogError::WorkspaceNotFound(ws)),
        }
    }

    async fn set_redaction_policy(
        &self,
        ws: WorkspaceId,
        toml: Option<&str>,
        by: PrincipalId,
        now: TimestampMicros,
    ) -> Result<RedactionPolicy> {
        // One statement: concurrent setters each get their own revision.
        let row = sqlx::query(
            "INSERT INTO redaction_policies (workspace_id, policy, revision, updated_at, updated_by) \
             VALUES (?, ?, 1, ?, ?) \
             ON CONFLICT (workspace_id) DO UPDATE SET policy = excluded.policy, revision = revision + 1, \
             updated_at = excluded.updated_at, updated_by = excluded.updated_by \
             RETURNING policy, revision, updated_at, updated_by",
        )
        .bind(ws.to_string())
        .bind(toml)
        .bind(now)
        .bind(by.to_string())
        .fetch_one(&self.pool)
        .await;
        match row.map_err(classify) {
            Ok(row) => redaction_policy_from_row(&row),
            Err(Failure::ForeignKey) => Err(CatalogError::WorkspaceNotFound(ws)),
            Err(Failure::Unique(m)) => Err(CatalogError::Database(m)),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    async fn redaction_key(&self, ws: WorkspaceId, candidate: Secret<[u8; 32]>) -> Result<Secret<[u8; 32]>> {
        // One statement: of concurrent first callers, one key wins and all
        // of them read it back.
        let row = sqlx::query(
            "INSERT INTO redaction_policies (workspace_id, pseudonym_key) VALUES (?, ?) \
             ON CONFLICT (workspace_id) DO UPDATE SET pseudonym_key = COALESCE(pseudonym_key, excluded.pseudonym_key) \
             RETURNING pseudonym_key",
        )
        .bind(ws.to_string())
        .bind(&candidate.expose()[..])
        .fetch_one(&self.pool)
        .await;
        match row.map_err(classify) {
            Ok(row) => {
                let bytes: Vec<u8> = get(&row, "pseudonym_key")?;
                let key: [u8; 32] = bytes
                    .try_into()
                    .map_err(|b: Vec<u8>| CatalogError::Corrupt(format!("pseudonym_key: {} bytes, not 32", b.len())))?;
                Ok(Secret::new(key))
            }
            Err(Failure::ForeignKey) => Err(CatalogError::WorkspaceNotFound(ws)),
            Err(Failure::Unique(m)) => Err(CatalogError::Database(m)),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    async fn list_redactions(&self, ws: WorkspaceId) -> Result<Vec<RedactionCount>> {
        let sql = format!("SELECT {REDACTION_COLUMNS} FROM redactions WHERE workspace_id = ?");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(ws.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let mut out = rows.iter().map(redaction_from_row).collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| (&a.table, a.kind, &a.entity).cmp(&(&b.table, b.kind, &b.entity)));
        Ok(out)
    }

    async fn create_principal(&self, p: &Principal) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO principals (id, name, service_role, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(p.id.to_string())
        .bind(p.name.as_str())
        .bind(p.service_role.map(|r| r.as_str()))
        .bind(p.created_at)
        .execute(&self.pool)
        .await;
        match res.map_err(classify) {
            Ok(_) => Ok(()),
            Err(Failure::Unique(msg)) if msg.contains("principals.name") => {
                Err(CatalogError::PrincipalNameTaken(p.name.clone()))
            }
            Err(Failure::Unique(_)) => Err(CatalogError::Database(format!(
                "principal id {} already exists",
                p.id
            ))),
            Err(Failure::ForeignKey) => Err(CatalogError::Database(
                "unexpected foreign key failure".into(),
            )),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    async fn get_principal(&self, id: PrincipalId) -> Result<Option<Principal>> {
        let sql = format!("SELECT {PRINCIPAL_COLUMNS} FROM principals WHERE id = ?");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(principal_from_row).transpose()
    }

    async fn get_principal_by_name(&self, name: &str) -> Result<Option<Principal>> {
        let sql = format!("SELECT {PRINCIPAL_COLUMNS} FROM principals WHERE name = ?");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(principal_from_row).transpose()
    }

    async fn list_principals(&self) -> Result<Vec<Principal>> {
        let sql = format!("SELECT {PRINCIPAL_COLUMNS} FROM principals ORDER BY created_at, rowid");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(principal_from_row).collect()
    }

    async fn add_token(&self, t: &ApiToken) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO api_tokens (id, principal_id, token_hash, created_at, expires_at, revoked_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(t.id.to_string())
        .bind(t.principal_id.to_string())
        .bind(t.token_hash.as_str())
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(t.revoked_at)
        .execute(&self.pool)
        .await;
        match res.map_err(classify) {
            Ok(_) => Ok(()),
            Err(Failure::ForeignKey) => Err(CatalogError::PrincipalNotFound(t.principal_id)),
            Err(Failure::Unique(msg)) if msg.contains("api_tokens.token_hash") => {
                Err(CatalogError::Database("token hash already stored".into()))
            }
            Err(Failure::Unique(_)) => Err(CatalogError::Database(format!(
                "token id {} already exists",
                t.id
            ))),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    async fn get_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = ?");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn get_token(&self, id: TokenId) -> Result<Option<ApiToken>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = ?");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn list_tokens(&self, principal: PrincipalId) -> Result<Vec<ApiToken>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE principal_id = ? ORDER BY created_at, rowid");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(principal.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_token(&self, id: TokenId, now: TimestampMicros) -> Result<ApiToken> {
        // One statement: a concurrent revoker either set the time first (and
        // COALESCE keeps it) or finds ours.
        let sql = format!(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ? RETURNING {TOKEN_COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        match row {
            Some(row) => token_from_row(&row),
            None => Err(CatalogError::TokenNotFound(id)),
        }
    }

    async fn grant_role(&self, b: &RoleBinding) -> Result<bool> {
        let res = sqlx::query(
            "INSERT INTO role_bindings (workspace_id, principal_id, role, granted_at, granted_by) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (workspace_id, principal_id, role) DO NOTHING",
        )
        .bind(b.workspace_id.to_string())
        .bind(b.principal_id.to_string())
        .bind(b.role.as_str())
        .bind(b.granted_at)
        .bind(b.granted_by.to_string())
        .execute(&self.pool)
        .await;
        match res.map_err(classify) {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(Failure::ForeignKey) => {
                if !self.workspace_exists(b.workspace_id).await? {
                    Err(CatalogError::WorkspaceNotFound(b.workspace_id))
                } else if !self.principal_exists(b.principal_id).await? {
                    Err(CatalogError::PrincipalNotFound(b.principal_id))
                } else {
                    Err(CatalogError::Database(
                        "foreign key failure granting a role".into(),
                    ))
                }
            }
            Err(Failure::Unique(m)) => Err(CatalogError::Database(m)),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    async fn revoke_role(
        &self,
        ws: WorkspaceId,
        principal: PrincipalId,
        role: WorkspaceRole,
    ) -> Result<bool> {
        let res = sqlx::query(
            "DELETE FROM role_bindings WHERE workspace_id = ? AND principal_id = ? AND role = ?",
        )
        .bind(ws.to_string())
        .bind(principal.to_string())
        .bind(role.as_str())
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(res.rows_affected() > 0)
    }

    /// In the order of [`WorkspaceRole`] (owner first).
    async fn roles_of(
        &self,
        principal: PrincipalId,
        ws: WorkspaceId,
    ) -> Result<Vec<WorkspaceRole>> {
        let rows = sqlx::query(
            "SELECT role FROM role_bindings WHERE workspace_id = ? AND principal_id = ?",
        )
        .bind(ws.to_string())
        .bind(principal.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut roles = rows
            .iter()
            .map(|r| get_id(r, "role"))
            .collect::<Result<Vec<WorkspaceRole>>>()?;
        roles.sort();
        Ok(roles)
    }

    /// Oldest grant first.
    async fn list_role_bindings(&self, ws: WorkspaceId) -> Result<Vec<RoleBinding>> {
        let sql = format!(
            "SELECT {BINDING_COLUMNS} FROM role_bindings WHERE workspace_id = ? \
             ORDER BY granted_at, principal_id, role"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(ws.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(binding_from_row).collect()
    }

    /// Oldest grant first.
    async fn bindings_of(&self, principal: PrincipalId) -> Result<Vec<RoleBinding>> {
        let sql = format!(
            "SELECT {BINDING_COLUMNS} FROM role_bindings WHERE principal_id = ? \
             ORDER BY granted_at, workspace_id, role"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(principal.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(binding_from_row).collect()
    }

    async fn create_case(&self, c: &Case) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO cases (id, workspace_id, title, opened_by, opened_at, closed_at, closed_by) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(c.id.to_string())
        .bind(c.workspace_id.to_string())
        .bind(c.title.as_str())
        .bind(c.opened_by.to_string())
        .bind(c.opened_at)
        .bind(c.closed_at)
        .bind(c.closed_by.map(|p| p.to_string()))
        .execute(&self.pool)
        .await;
        match res.map_err(classify) {
            Ok(_) => Ok(()),
            Err(Failure::ForeignKey) => Err(CatalogError::WorkspaceNotFound(c.workspace_id)),
            Err(Failure::Unique(_)) => Err(CatalogError::Database(format!(
                "case id {} already exists",
                c.id
            ))),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    async fn get_case(&self, id: CaseId) -> Result<Option<Case>> {
        let sql = format!("SELECT {CASE_COLUMNS} FROM cases WHERE id = ?");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(case_from_row).transpose()
    }

    async fn list_cases(&self, ws: Option<WorkspaceId>) -> Result<Vec<Case>> {
        let rows = match ws {
            Some(ws) => {
                let sql = format!(
                    "SELECT {CASE_COLUMNS} FROM cases WHERE workspace_id = ? ORDER BY opened_at DESC, rowid DESC"
                );
                sqlx::query(AssertSqlSafe(sql)).bind(ws.to_string()).fetch_all(&self.pool).await
            }
            None => {
                let sql = format!("SELECT {CASE_COLUMNS} FROM cases ORDER BY opened_at DESC, rowid DESC");
                sqlx::query(AssertSqlSafe(sql)).fetch_all(&self.pool).await
            }
        }
        .map_err(db)?;
        rows.iter().map(case_from_row).collect()
    }

    async fn close_case(&self, id: CaseId, by: PrincipalId, now: TimestampMicros) -> Result<Case> {
        // One statement: of concurrent closers exactly one sees a row come back.
        let sql = format!(
            "UPDATE cases SET closed_at = ?, closed_by = ? WHERE id = ? AND closed_at IS NULL \
             RETURNING {CASE_COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(by.to_string())
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        if let Some(row) = row {
            return case_from_row(&row);
        }
        // Only to say why it failed; the outcome is already decided.
        if self.case_exists(id).await? {
            Err(CatalogError::CaseClosed(id))
        } else {
            Err(CatalogError::CaseNotFound(id))
        }
    }

    /// The request must be pending (else `AccessRequestNotPending`), and its
    /// case must exist in the request's workspace (else `CaseNotFound`).
    async fn create_access_request(&self, r: &AccessRequest) -> Result<()> {
        if r.state != AccessState::Pending {
            return Err(CatalogError::AccessRequestNotPending {
                id: r.id,
                state: r.state,
            });
        }
        let res = sqlx::query(
            "INSERT INTO access_requests (id, case_id, workspace_id, requester, reason, duration, requested_at, \
             state, decided_at, decided_by, grant_expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
        )
        .bind(r.id.to_string())
        .bind(r.case_id.to_string())
        .bind(r.workspace_id.to_string())
        .bind(r.requester.to_string())
        .bind(r.reason.as_str())
        .bind(r.duration)
        .bind(r.requested_at)
        .bind(r.decided_at)
        .bind(r.decided_by.map(|p| p.to_string()))
        .bind(r.grant_expires_at)
        .execute(&self.pool)
        .await;
        match res.map_err(classify) {
            Ok(_) => Ok(()),
            // The case is missing, or belongs to another workspace: either
            // way there is no such case in this workspace.
            Err(Failure::ForeignKey) => Err(CatalogError::CaseNotFound(r.case_id)),
            Err(Failure::Unique(_)) => Err(CatalogError::Database(format!(
                "access request id {} already exists",
                r.id
            ))),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    async fn get_access_request(&self, id: AccessRequestId) -> Result<Option<AccessRequest>> {
        let sql = format!("SELECT {ACCESS_REQUEST_COLUMNS} FROM access_requests WHERE id = ?");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(access_request_from_row).transpose()
    }

    async fn list_access_requests(&self, filter: &AccessFilter) -> Result<Vec<AccessRequest>> {
        // Only fixed conditions with `?` placeholders are spliced in; every
        // value is bound. Built per filter so SQLite can use the indexes.
        let mut conditions: Vec<&str> = Vec::new();
        let mut values: Vec<String> = Vec::new();
        if let Some(ws) = filter.workspace {
            conditions.push("workspace_id = ?");
            values.push(ws.to_string());
        }
        if let Some(case) = filter.case {
            conditions.push("case_id = ?");
            values.push(case.to_string());
        }
        if let Some(requester) = filter.requester {
            conditions.push("requester = ?");
            values.push(requester.to_string());
        }
        let where_clause = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT {ACCESS_REQUEST_COLUMNS} FROM access_requests {where_clause} \
             ORDER BY requested_at DESC, rowid DESC"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for v in values {
            q = q.bind(v);
        }
        let rows = q.fetch_all(&self.pool).await.map_err(db)?;
        rows.iter().map(access_request_from_row).collect()
    }

    async fn decide_access_request(
        &self,
        id: AccessRequestId,
        decision: AccessState,
        by: PrincipalId,
        now: TimestampMicros,
        grant_expires_at: Option<TimestampMicros>,
    ) -> Result<AccessRequest> {
        match (decision, grant_expires_at) {
            (AccessState::Approved, Some(_)) | (AccessState::Denied, None) => {}
            (AccessState::Approved, None) => {
                return Err(CatalogError::Database(format!(
                    "approving access request {id} needs a grant expiry time"
                )))
            }
            (AccessState::Denied, Some(_)) => {
                return Err(CatalogError::Database(format!(
                    "denying access request {id} must not set a grant expiry time"
                )))
            }
            (AccessState::Pending, _) => {
                return Err(CatalogError::Database(format!(
                    "access request {id} cannot be decided as pending (approve or deny)"
                )))
            }
        }
        // One statement: of concurrent deciders exactly one sees a row come back.
        let sql = format!(
            "UPDATE access_requests SET state = ?, decided_at = ?, decided_by = ?, grant_expires_at = ? \
             WHERE id = ? AND state = 'pending' RETURNING {ACCESS_REQUEST_COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(decision.as_str())
            .bind(now)
            .bind(by.to_string())
            .bind(grant_expires_at)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        if let Some(row) = row {
            return access_request_from_row(&row);
        }
        // Only to say why it failed; the outcome is already decided.
        match self.get_access_request(id).await? {
            None => Err(CatalogError::AccessRequestNotFound(id)),
            Some(r) => Err(CatalogError::AccessRequestNotPending { id, state: r.state }),
        }
    }

    async fn lock_workspace(&self, ws: WorkspaceId, lock: &WorkspaceLock) -> Result<()> {
        let res = sqlx::query("UPDATE workspaces SET locked_reason = ?, locked_at = ?, locked_by = ? WHERE id = ?")
            .bind(lock.reason.as_str())
            .bind(lock.locked_at)
            .bind(lock.locked_by.map(|p| p.to_string()))
            .bind(ws.to_string())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        if res.rows_affected() == 0 {
            return Err(CatalogError::WorkspaceNotFound(ws));
        }
        Ok(())
    }

    async fn unlock_workspace(&self, ws: WorkspaceId) -> Result<Option<WorkspaceLock>> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        let lock = lock_in_tx(&mut tx, ws).await?;
        sqlx::query("UPDATE workspaces SET locked_reason = NULL, locked_at = NULL, locked_by = NULL WHERE id = ?")
            .bind(ws.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(lock)
    }

    async fn retention(&self, ws: WorkspaceId) -> Result<RetentionSettings> {
        let Some(w) = self.get_workspace(ws).await? else {
            return Err(CatalogError::WorkspaceNotFound(ws));
        };
        let rows = sqlx::query("SELECT table_name, days FROM table_retention WHERE workspace_id = ?")
            .bind(ws.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let mut tables = std::collections::BTreeMap::new();
        for row in &rows {
            let days: i64 = get(row, "days")?;
            let days = u32::try_from(days).map_err(|_| CatalogError::Corrupt(format!("days: out of range {days}")))?;
            tables.insert(table_from_str(get(row, "table_name")?)?, days);
        }
        let sql = format!(
            "SELECT {CHANGE_COLUMNS} FROM retention_changes WHERE workspace_id = ? AND state = 'pending' \
             ORDER BY requested_at, rowid"
        );
        let pending = sqlx::query(AssertSqlSafe(sql))
            .bind(ws.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(change_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(RetentionSettings { default_days: w.retention_days, tables, pending })
    }

    async fn change_retention(&self, c: &RetentionChange) -> Result<()> {
        if c.state == ChangeState::Cancelled {
            return Err(CatalogError::Database("a retention change cannot be recorded as cancelled".into()));
        }
        if c.to_days == 0 {
            return Err(CatalogError::Database("a retention period must be at least 1 day".into()));
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        if c.is_reduction() {
            if let Some(lock) = lock_in_tx(&mut tx, c.workspace_id).await? {
                return Err(CatalogError::WorkspaceLocked { id: c.workspace_id, reason: lock.reason });
            }
        }
        let table = c.table.as_ref().map(|t| t.as_str().to_string()).unwrap_or_default();
        sqlx::query(
            "UPDATE retention_changes SET state = 'cancelled', decided_at = ? \
             WHERE workspace_id = ? AND table_name = ? AND state = 'pending'",
        )
        .bind(c.requested_at)
        .bind(c.workspace_id.to_string())
        .bind(table.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let res = sqlx::query(
            "INSERT INTO retention_changes (id, workspace_id, table_name, from_days, to_days, requested_at, \
             effective_at, requested_by, state, decided_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(c.id.to_string())
        .bind(c.workspace_id.to_string())
        .bind(table.as_str())
        .bind(i64::from(c.from_days))
        .bind(i64::from(c.to_days))
        .bind(c.requested_at)
        .bind(c.effective_at)
        .bind(c.requested_by.map(|p| p.to_string()))
        .bind(c.state.as_str())
        .bind(if c.state == ChangeState::Pending { None } else { Some(c.decided_at.unwrap_or(c.requested_at)) })
        .execute(&mut *tx)
        .await;
        match res.map_err(classify) {
            Ok(_) => {}
            Err(Failure::ForeignKey) => return Err(CatalogError::WorkspaceNotFound(c.workspace_id)),
            Err(Failure::Unique(m)) => return Err(CatalogError::Database(m)),
            Err(Failure::Other(e)) => return Err(e),
        }
        if c.state == ChangeState::Applied {
            set_days_in_tx(&mut tx, c.workspace_id, c.table.as_ref(), c.to_days).await?;
        }
        tx.commit().await.map_err(db)
    }

    async fn cancel_retention_change(
        &self,
        ws: WorkspaceId,
        table: Option<&TableName>,
        now: TimestampMicros,
    ) -> Result<RetentionChange> {
        let sql = format!(
            "UPDATE retention_changes SET state = 'cancelled', decided_at = ? \
             WHERE workspace_id = ? AND table_name = ? AND state = 'pending' RETURNING {CHANGE_COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(ws.to_string())
            .bind(table.map(|t| t.as_str()).unwrap_or(""))
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        match row {
            Some(row) => change_from_row(&row),
            None => {
                if !self.workspace_exists(ws).await? {
                    return Err(CatalogError::WorkspaceNotFound(ws));
                }
                Err(CatalogError::NoPendingChange {
                    id: ws,
                    scope: table.map_or("the default".to_string(), |t| format!("table {t}")),
                })
            }
        }
    }

    async fn apply_due_retention_changes(&self, now: TimestampMicros) -> Result<Vec<RetentionChange>> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        let sql = format!(
            "SELECT {CHANGE_COLUMNS} FROM retention_changes c WHERE state = 'pending' AND effective_at <= ? \
             AND NOT EXISTS (SELECT 1 FROM workspaces w WHERE w.id = c.workspace_id AND w.locked_reason IS NOT NULL) \
             ORDER BY effective_at, rowid"
        );
        let due = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?
            .iter()
            .map(change_from_row)
            .collect::<Result<Vec<_>>>()?;
        let mut applied = Vec::with_capacity(due.len());
        for mut c in due {
            sqlx::query("UPDATE retention_changes SET state = 'applied', decided_at = ? WHERE id = ?")
                .bind(now)
                .bind(c.id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            set_days_in_tx(&mut tx, c.workspace_id, c.table.as_ref(), c.to_days).await?;
            c.state = ChangeState::Applied;
            c.decided_at = Some(now);
            applied.push(c);
        }
        tx.commit().await.map_err(db)?;
        Ok(applied)
    }

    async fn delete_segments(
        &self,
        ws: WorkspaceId,
        ids: &[SegmentId],
        reason: DeletionReason,
        now: TimestampMicros,
    ) -> Result<Vec<Deletion>> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        if let Some(lock) = lock_in_tx(&mut tx, ws).await? {
            return Err(CatalogError::WorkspaceLocked { id: ws, reason: lock.reason });
        }
        let mut out = Vec::new();
        for id in ids {
            if let Some((_, d)) = delete_segment_in_tx(&mut tx, ws, *id, reason, now).await? {
                out.push(d);
            }
        }
        tx.commit().await.map_err(db)?;
        Ok(out)
    }

    async fn delete_workspace(&self, ws: WorkspaceId, now: TimestampMicros) -> Result<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        let deleted: Option<Option<i64>> = sqlx::query_scalar("SELECT deleted_at FROM workspaces WHERE id = ?")
            .bind(ws.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        match deleted {
            None | Some(Some(_)) => return Err(CatalogError::WorkspaceNotFound(ws)),
            Some(None) => {}
        }
        if let Some(lock) = lock_in_tx(&mut tx, ws).await? {
            return Err(CatalogError::WorkspaceLocked { id: ws, reason: lock.reason });
        }
        let id = ws.to_string();
        // Each statement: (?1 = now, ?2 = the workspace).
        for sql in [
            // The tombstone; the name is freed for reuse.
            "UPDATE workspaces SET deleted_at = ?1, name = name || ' (deleted ' || id || ')' WHERE id = ?2",
            "UPDATE agents SET revoked_at = COALESCE(revoked_at, ?1) WHERE workspace_id = ?2",
            "UPDATE enrollment_keys SET used_at = COALESCE(used_at, ?1) WHERE workspace_id = ?2",
            "UPDATE retention_changes SET state = 'cancelled', decided_at = ?1 WHERE workspace_id = ?2 AND state = 'pending'",
            "UPDATE purge_jobs SET state = 'cancelled', finished_at = ?1 WHERE workspace_id = ?2 AND state IN ('pending', 'running')",
        ] {
            sqlx::query(sql).bind(now).bind(id.as_str()).execute(&mut *tx).await.map_err(db)?;
        }
        // The pseudonym key is a key too: shredded with the others.
        sqlx::query("UPDATE redaction_policies SET pseudonym_key = NULL WHERE workspace_id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn deleted_workspaces(&self) -> Result<Vec<(WorkspaceId, TimestampMicros)>> {
        let rows = sqlx::query("SELECT id, deleted_at FROM workspaces WHERE deleted_at IS NOT NULL ORDER BY deleted_at")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(|r| Ok((get_id(r, "id")?, get(r, "deleted_at")?))).collect()
    }

    async fn rollup_mark(&self, ws: WorkspaceId, table: &TableName) -> Result<Option<TimestampMicros>> {
        sqlx::query_scalar("SELECT rolled_up_until FROM rollup_marks WHERE workspace_id = ? AND table_name = ?")
            .bind(ws.to_string())
            .bind(table.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)
    }

    async fn commit_rollup(&self, ws: WorkspaceId, table: &TableName, c: &RollupCommit, now: TimestampMicros) -> Result<Vec<Deletion>> {
        if let Some(s) = c.segments.iter().find(|s| s.workspace_id != ws) {
            return Err(CatalogError::Database(format!("rollup segment {} belongs to another workspace", s.id)));
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        if let Some(until) = c.until {
            let current: Option<i64> =
                sqlx::query_scalar("SELECT rolled_up_until FROM rollup_marks WHERE workspace_id = ? AND table_name = ?")
                    .bind(ws.to_string())
                    .bind(table.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db)?;
            if current.is_some_and(|c| c >= until) {
                tx.rollback().await.map_err(db)?;
                return Err(CatalogError::Database(format!(
                    "table {table} of workspace {ws} is already rolled up past {until}"
                )));
            }
        }
        let mut deletions = Vec::new();
        if !c.replaces.is_empty() {
            if let Some(lock) = lock_in_tx(&mut tx, ws).await? {
                return Err(CatalogError::WorkspaceLocked { id: ws, reason: lock.reason });
            }
            for id in &c.replaces {
                let Some((_, d)) = delete_segment_in_tx(&mut tx, ws, *id, DeletionReason::Rollup, now).await? else {
                    // Gone since the rollup listed it: the replacement
                    // would stand beside rows it does not know about.
                    return Err(CatalogError::Database(format!("rollup segment {id} of workspace {ws} is no longer registered")));
                };
                deletions.push(d);
            }
        }
        if let Err(failure) = commit_in_tx(&mut tx, &c.segments, &[], &[], &[], now).await {
            tx.rollback().await.map_err(db)?;
            return Err(match failure {
                CommitFailure::DuplicateSegment(id) => CatalogError::SegmentExists(id),
                CommitFailure::MissingWorkspace => CatalogError::WorkspaceNotFound(ws),
                CommitFailure::Other(e) => e,
            });
        }
        if let Some(until) = c.until {
            let res = sqlx::query(
                "INSERT INTO rollup_marks (workspace_id, table_name, rolled_up_until) VALUES (?, ?, ?) \
                 ON CONFLICT (workspace_id, table_name) DO UPDATE SET rolled_up_until = excluded.rolled_up_until",
            )
            .bind(ws.to_string())
            .bind(table.as_str())
            .bind(until)
            .execute(&mut *tx)
            .await;
            match res.map_err(classify) {
                Ok(_) => {}
                Err(Failure::ForeignKey) => return Err(CatalogError::WorkspaceNotFound(ws)),
                Err(Failure::Unique(m)) => return Err(CatalogError::Database(m)),
                Err(Failure::Other(e)) => return Err(e),
            }
        }
        let ids = |ids: &[SegmentId]| serde_json::to_string(&ids.iter().map(|id| id.to_string()).collect::<Vec<_>>());
        let done = ids(&c.late_done).map_err(|e| CatalogError::Database(e.to_string()))?;
        sqlx::query(
            "DELETE FROM rollup_late WHERE workspace_id = ? AND table_name = ? \
             AND segment_id IN (SELECT value FROM json_each(?))",
        )
        .bind(ws.to_string())
        .bind(table.as_str())
        .bind(done)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        // Raw segments committed while the rollup read: late.
        let read = ids(&c.read).map_err(|e| CatalogError::Database(e.to_string()))?;
        for (from, to) in &c.ranges {
            sqlx::query(
                "INSERT INTO rollup_late (workspace_id, table_name, segment_id, min_time, max_time, recorded_at) \
                 SELECT workspace_id, table_name, id, min_time, max_time, ? FROM segments \
                 WHERE workspace_id = ? AND table_name = ? AND min_time < ? AND max_time >= ? \
                 AND id NOT IN (SELECT value FROM json_each(?)) \
                 ON CONFLICT (workspace_id, table_name, segment_id) DO NOTHING",
            )
            .bind(now)
            .bind(ws.to_string())
            .bind(table.as_str())
            .bind(to)
            .bind(from)
            .bind(read.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(deletions)
    }

    async fn late_segments(&self, ws: WorkspaceId, table: &TableName) -> Result<Vec<LateSegment>> {
        let rows = sqlx::query(
            "SELECT segment_id, min_time, max_time FROM rollup_late WHERE workspace_id = ? AND table_name = ? \
             ORDER BY recorded_at, segment_id",
        )
        .bind(ws.to_string())
        .bind(table.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| Ok(LateSegment { segment_id: get_id(r, "segment_id")?, min_time: get(r, "min_time")?, max_time: get(r, "max_time")? }))
            .collect()
    }

    async fn rows_expired_within(&self, ws: WorkspaceId, table: &TableName, from: TimestampMicros, to: TimestampMicros) -> Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM deletions WHERE workspace_id = ? AND table_name = ? \
             AND reason IN ('retention', 'table', 'workspace') AND min_time < ? AND max_time >= ?)",
        )
        .bind(ws.to_string())
        .bind(table.as_str())
        .bind(to)
        .bind(from)
        .fetch_one(&self.pool)
        .await
        .map_err(db)
    }

    async fn put_segment_indexes(&self, ws: WorkspaceId, indexes: &[(SegmentId, String)]) -> Result<()> {
        if indexes.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        for (id, idx) in indexes {
            // Only for a registered segment of this workspace.
            sqlx::query(
                "INSERT INTO segment_indexes (segment_id, workspace_id, idx) \
                 SELECT id, workspace_id, ? FROM segments WHERE id = ? AND workspace_id = ? \
                 ON CONFLICT (segment_id) DO UPDATE SET idx = excluded.idx",
            )
            .bind(idx.as_str())
            .bind(id.to_string())
            .bind(ws.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn segment_indexes(&self, ws: WorkspaceId, table: &TableName) -> Result<std::collections::HashMap<SegmentId, String>> {
        let rows = sqlx::query(
            "SELECT i.segment_id, i.idx FROM segment_indexes i JOIN segments s ON s.id = i.segment_id \
             WHERE s.workspace_id = ? AND s.table_name = ?",
        )
        .bind(ws.to_string())
        .bind(table.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(|r| Ok((get_id(r, "segment_id")?, get(r, "idx")?))).collect()
    }

    async fn create_purge(&self, job: &PurgeJob) -> Result<()> {
        if job.state != PurgeState::Pending {
            return Err(CatalogError::PurgeState { id: job.id, state: job.state, what: "only pending jobs are created".into() });
        }
        let tables = serde_json::to_string(&job.tables.iter().map(|t| t.as_str()).collect::<Vec<_>>())
            .map_err(|e| CatalogError::Database(e.to_string()))?;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        if let Some(lock) = lock_in_tx(&mut tx, job.workspace_id).await? {
            return Err(CatalogError::WorkspaceLocked { id: job.workspace_id, reason: lock.reason });
        }
        sqlx::query(
            "INSERT INTO purge_jobs (id, workspace_id, tables, predicate, state, created_at, created_by, not_before) \
             VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)",
        )
        .bind(job.id.to_string())
        .bind(job.workspace_id.to_string())
        .bind(tables)
        .bind(job.predicate.as_str())
        .bind(job.created_at)
        .bind(job.created_by.map(|p| p.to_string()))
        .bind(job.not_before)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn get_purge(&self, id: JobId) -> Result<Option<PurgeJob>> {
        let sql = format!("SELECT {PURGE_COLUMNS} FROM purge_jobs WHERE id = ?");
        let row = sqlx::query(AssertSqlSafe(sql)).bind(id.to_string()).fetch_optional(&self.pool).await.map_err(db)?;
        row.as_ref().map(purge_from_row).transpose()
    }

    async fn list_purges(&self, ws: WorkspaceId) -> Result<Vec<PurgeJob>> {
        let sql = format!("SELECT {PURGE_COLUMNS} FROM purge_jobs WHERE workspace_id = ? ORDER BY created_at DESC, rowid DESC");
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(ws.to_string()).fetch_all(&self.pool).await.map_err(db)?;
        rows.iter().map(purge_from_row).collect()
    }

    async fn hiding_purges(&self, ws: WorkspaceId) -> Result<Vec<PurgeJob>> {
        let sql = format!(
            "SELECT {PURGE_COLUMNS} FROM purge_jobs WHERE workspace_id = ? AND state IN ('pending', 'running', 'failed') \
             ORDER BY created_at, rowid"
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(ws.to_string()).fetch_all(&self.pool).await.map_err(db)?;
        rows.iter().map(purge_from_row).collect()
    }

    async fn cancel_purge(&self, id: JobId, now: TimestampMicros) -> Result<PurgeJob> {
        let sql = format!(
            "UPDATE purge_jobs SET state = 'cancelled', finished_at = ? WHERE id = ? AND state = 'pending' RETURNING {PURGE_COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql)).bind(now).bind(id.to_string()).fetch_optional(&self.pool).await.map_err(db)?;
        match row {
            Some(r) => purge_from_row(&r),
            None => match self.get_purge(id).await? {
                None => Err(CatalogError::PurgeNotFound(id)),
                Some(j) => Err(CatalogError::PurgeState { id, state: j.state, what: "only a pending job can be cancelled".into() }),
            },
        }
    }

    async fn retry_purge(&self, id: JobId, now: TimestampMicros) -> Result<PurgeJob> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        let j = purge_in_tx(&mut tx, id).await?;
        if j.state != PurgeState::Failed {
            return Err(CatalogError::PurgeState { id, state: j.state, what: "only a failed job can be retried".into() });
        }
        if let Some(lock) = lock_in_tx(&mut tx, j.workspace_id).await? {
            return Err(CatalogError::WorkspaceLocked { id: j.workspace_id, reason: lock.reason });
        }
        let sql = format!(
            "UPDATE purge_jobs SET state = 'pending', not_before = ?, started_at = NULL, finished_at = NULL, error = NULL \
             WHERE id = ? RETURNING {PURGE_COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql)).bind(now).bind(id.to_string()).fetch_one(&mut *tx).await.map_err(db)?;
        let j = purge_from_row(&row)?;
        tx.commit().await.map_err(db)?;
        Ok(j)
    }

    async fn claim_purges(&self, now: TimestampMicros) -> Result<Vec<PurgeJob>> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        sqlx::query(
            "UPDATE purge_jobs SET state = 'running', started_at = ? WHERE state = 'pending' AND not_before <= ? \
             AND NOT EXISTS (SELECT 1 FROM workspaces w WHERE w.id = purge_jobs.workspace_id AND w.locked_reason IS NOT NULL)",
        )
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let sql = format!("SELECT {PURGE_COLUMNS} FROM purge_jobs WHERE state = 'running' ORDER BY created_at, rowid");
        let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(&mut *tx).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter().map(purge_from_row).collect()
    }

    async fn purge_segment(
        &self,
        job: JobId,
        old: SegmentId,
        new: Option<&Segment>,
        entry: &str,
        now: TimestampMicros,
    ) -> Result<Deletion> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        let j = purge_in_tx(&mut tx, job).await?;
        if j.state != PurgeState::Running {
            return Err(CatalogError::PurgeState { id: job, state: j.state, what: "only a running job removes rows".into() });
        }
        let ws = j.workspace_id;
        if let Some(lock) = lock_in_tx(&mut tx, ws).await? {
            return Err(CatalogError::WorkspaceLocked { id: ws, reason: lock.reason });
        }
        let Some((seg, deletion)) = delete_segment_in_tx(&mut tx, ws, old, DeletionReason::Purge, now).await? else {
            return Err(CatalogError::Database(format!("segment {old} of workspace {ws} is not registered")));
        };
        if let Some(n) = new {
            if n.workspace_id != ws || n.table != seg.table {
                return Err(CatalogError::Database(format!("segment {} does not replace {old}: another workspace or table", n.id)));
            }
            match commit_in_tx(&mut tx, std::slice::from_ref(n), &[], &[], &[], now).await {
                Ok(()) => {}
                Err(CommitFailure::DuplicateSegment(id)) => return Err(CatalogError::SegmentExists(id)),
                Err(CommitFailure::MissingWorkspace) => return Err(CatalogError::WorkspaceNotFound(ws)),
                Err(CommitFailure::Other(e)) => return Err(e),
            }
        }
        // A late segment's record follows its rewrite (its days are still
        // to be rolled up again, from the rows left); with no rows left it
        // stays, its time range still naming the days.
        if let Some(n) = new {
            sqlx::query("UPDATE rollup_late SET segment_id = ? WHERE workspace_id = ? AND segment_id = ?")
                .bind(n.id.to_string())
                .bind(ws.to_string())
                .bind(old.to_string())
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        sqlx::query(
            "INSERT INTO purge_entries (job_id, seq, entry) \
             VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM purge_entries WHERE job_id = ?), ?)",
        )
        .bind(job.to_string())
        .bind(job.to_string())
        .bind(entry)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(deletion)
    }

    async fn purge_entries(&self, job: JobId) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT entry FROM purge_entries WHERE job_id = ? ORDER BY seq")
            .bind(job.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db)
    }

    async fn finish_purge(&self, id: JobId, outcome: std::result::Result<String, String>, now: TimestampMicros) -> Result<PurgeJob> {
        let (state, receipt, error) = match outcome {
            Ok(r) => ("completed", Some(r), None),
            Err(e) => ("failed", None, Some(e)),
        };
        let sql = format!(
            "UPDATE purge_jobs SET state = ?, receipt = ?, error = ?, finished_at = ? WHERE id = ? AND state = 'running' \
             RETURNING {PURGE_COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(state)
            .bind(receipt)
            .bind(error)
            .bind(now)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        match row {
            Some(r) => purge_from_row(&r),
            None => match self.get_purge(id).await? {
                None => Err(CatalogError::PurgeNotFound(id)),
                Some(j) => Err(CatalogError::PurgeState { id, state: j.state, what: "only a running job finishes".into() }),
            },
        }
    }

    async fn list_deletions(&self, ws: WorkspaceId, limit: u32) -> Result<Vec<Deletion>> {
        let sql = format!("SELECT {DELETION_COLUMNS} FROM deletions WHERE workspace_id = ? ORDER BY seq DESC LIMIT ?");
        sqlx::query(AssertSqlSafe(sql))
            .bind(ws.to_string())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(deletion_from_row)
            .collect()
    }

    async fn pending_object_deletions(&self, limit: u32) -> Result<Vec<Deletion>> {
        let sql = format!("SELECT {DELETION_COLUMNS} FROM deletions WHERE object_deleted_at IS NULL ORDER BY seq LIMIT ?");
        sqlx::query(AssertSqlSafe(sql))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(deletion_from_row)
            .collect()
    }

    async fn mark_objects_deleted(&self, seqs: &[i64], now: TimestampMicros) -> Result<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        for seq in seqs {
            sqlx::query("UPDATE deletions SET object_deleted_at = ? WHERE seq = ? AND object_deleted_at IS NULL")
                .bind(now)
                .bind(seq)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    async fn fresh() -> (tempfile::TempDir, SqliteCatalog) {
        let dir = tempfile::tempdir().unwrap();
        let cat = SqliteCatalog::open(&dir.path().join("catalog.db"))
            .await
            .unwrap();
        (dir, cat)
    }

    fn ws(name: &str) -> Workspace {
        Workspace {
            id: WorkspaceId::new(),
            name: name.to_string(),
            region: "eu".into(),
            retention_days: 30,
            created_at: 1_700_000_000_000_000,
            lockbox: true,
            policy: WorkspacePolicy::default(),
            plan: "paid".into(),
            lock: None,
        }
    }

    /// What a version 3 to 5 build wrote for a workspace (no plan, no lock).
    async fn create_workspace_v5(cat: &SqliteCatalog, w: &Workspace) {
        sqlx::query(
            "INSERT INTO workspaces (id, name, region, retention_days, created_at, lockbox, max_level, categories) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(w.id.to_string())
        .bind(w.name.as_str())
        .bind(w.region.as_str())
        .bind(i64::from(w.retention_days))
        .bind(w.created_at)
        .bind(i64::from(w.lockbox))
        .bind(i64::from(u8::from(w.policy.max_level)))
        .bind(categories_text(&w.policy))
        .execute(&cat.pool)
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn version_5_catalog_migrates_to_6_with_workspaces_on_the_paid_plan_unlocked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v5.db");
        let old = ws("from-v5");
        let seg_id = SegmentId::new();
        {
            let cat = SqliteCatalog::open_at_version(&path, 5).await.unwrap();
            create_workspace_v5(&cat, &old).await;
            sqlx::query(
                "INSERT INTO segments (id, workspace_id, table_name, path, min_time, max_time, row_count, byte_count, \
                 columns, created_at) VALUES (?, ?, 'logs', 'p', 1, 2, 3, 4, '[]', 5)",
            )
            .bind(seg_id.to_string())
            .bind(old.id.to_string())
            .execute(&cat.pool)
            .await
            .unwrap();
            cat.close().await;
        }
        let cat = SqliteCatalog::open(&path).await.unwrap();
        const { assert!(SCHEMA_VERSION >= 6) };
        assert_eq!(cat.get_workspace(old.id).await.unwrap(), Some(old.clone()), "paid plan, unlocked, the rest kept");
        let r = cat.retention(old.id).await.unwrap();
        assert_eq!((r.default_days, r.tables.len(), r.pending.len()), (30, 0, 0));
        // The new tables work with the old rows.
        let d = cat.delete_segments(old.id, &[seg_id], crate::DeletionReason::Retention, 9).await.unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].rows, d[0].bytes), (3, 4));
    }

    #[tokio::test]
    async fn version_6_catalog_migrates_to_7_keeping_deletion_records_and_their_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v6.db");
        let old = ws("from-v6");
        let (a, b) = (SegmentId::new(), SegmentId::new());
        let first = {
            let cat = SqliteCatalog::open_at_version(&path, 6).await.unwrap();
            create_workspace_v5(&cat, &old).await;
            for id in [a, b] {
                sqlx::query(
                    "INSERT INTO segments (id, workspace_id, table_name, path, min_time, max_time, row_count, byte_count, \
                     columns, created_at) VALUES (?, ?, 'logs', 'p', 1, 2, 3, 4, '[]', 5)",
                )
                .bind(id.to_string())
                .bind(old.id.to_string())
                .execute(&cat.pool)
                .await
                .unwrap();
            }
            let d = cat.delete_segments(old.id, &[a], crate::DeletionReason::Retention, 9).await.unwrap();
            cat.close().await;
            d
        };
        let cat = SqliteCatalog::open(&path).await.unwrap();
        const { assert!(SCHEMA_VERSION >= 7) };
        assert_eq!(cat.list_deletions(old.id, 10).await.unwrap(), first, "kept as it was");
        let second = cat.delete_segments(old.id, &[b], crate::DeletionReason::Retention, 10).await.unwrap();
        assert!(second[0].seq > first[0].seq, "the sequence goes on: {} after {}", second[0].seq, first[0].seq);
        assert!(cat.rows_expired_within(old.id, &TableName::new("logs").unwrap(), 0, 5).await.unwrap());
        assert!(cat.late_segments(old.id, &TableName::new("logs").unwrap()).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_passes_the_conformance_suite() {
        let (_dir, cat) = fresh().await;
        let ran = crate::conformance::run_all(Arc::new(cat)).await;
        assert_eq!(ran, crate::conformance::CHECKS);
    }

    #[tokio::test]
    async fn pragmas_are_set_on_every_connection() {
        let (_dir, cat) = fresh().await;
        // Hold several connections at once so more than one is opened.
        let mut conns = Vec::new();
        for _ in 0..3 {
            conns.push(cat.pool.acquire().await.unwrap());
        }
        for conn in &mut conns {
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut **conn)
                .await
                .unwrap();
            assert_eq!(mode, "wal");
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut **conn)
                .await
                .unwrap();
            assert_eq!(sync, 2, "synchronous=FULL");
            let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
                .fetch_one(&mut **conn)
                .await
                .unwrap();
            assert_eq!(fk, 1);
            let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
                .fetch_one(&mut **conn)
                .await
                .unwrap();
            assert!(busy >= 1000, "busy_timeout {busy}");
        }
    }

    #[tokio::test]
    async fn data_survives_close_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested-name.db");
        let w = ws("survivor");
        let seg = Segment {
            id: SegmentId::new(),
            workspace_id: w.id,
            table: TableName::new("logs").unwrap(),
            path: "w/logs/1.seg".into(),
            min_time: 10,
            max_time: 20,
            rows: 3,
            bytes: 300,
            columns: vec![ColumnDef {
                name: "pid".into(),
                ty: custos_model::ValueType::Int,
            }],
            created_at: 5,
        };
        let batch = BatchId::new();
        {
            let cat = SqliteCatalog::open(&path).await.unwrap();
            cat.create_workspace(&w).await.unwrap();
            cat.commit_segments(std::slice::from_ref(&seg), &[(w.id, batch)], 7)
                .await
                .unwrap();
            cat.close().await;
        }
        let cat = SqliteCatalog::open(&path).await.unwrap();
        assert_eq!(cat.get_workspace(w.id).await.unwrap(), Some(w.clone()));
        assert_eq!(
            cat.list_segments(w.id, &seg.table, None).await.unwrap(),
            vec![seg]
        );
        assert_eq!(
            cat.stored_batches(w.id, &[batch]).await.unwrap(),
            vec![batch]
        );
        // Reopening did not re-run migrations or add versions.
        let versions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_version")
            .fetch_one(&cat.pool)
            .await
            .unwrap();
        assert_eq!(versions, SCHEMA_VERSION);
        cat.close().await;
    }

    #[tokio::test]
    async fn version_1_catalog_migrates_to_2_with_lockbox_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        let (old, agent_id) = (ws("from-v1"), AgentId::new());
        {
            let cat = SqliteCatalog::open_at_version(&path, 1).await.unwrap();
            let versions: Vec<i64> =
                sqlx::query_scalar("SELECT version FROM schema_version ORDER BY version")
                    .fetch_all(&cat.pool)
                    .await
                    .unwrap();
            assert_eq!(versions, vec![1]);
            // What a version-1 build wrote: no lockbox column, no new tables.
            sqlx::query(
                "INSERT INTO workspaces (id, name, region, retention_days, created_at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(old.id.to_string())
            .bind(old.name.as_str())
            .bind(old.region.as_str())
            .bind(i64::from(old.retention_days))
            .bind(old.created_at)
            .execute(&cat.pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO agents (id, workspace_id, hostname, cert_sha256, cert_not_after, enrolled_at) \
                 VALUES (?, ?, 'h', 'x', 1, 1)",
            )
            .bind(agent_id.to_string())
            .bind(old.id.to_string())
            .execute(&cat.pool)
            .await
            .unwrap();
            for table in [
                "principals",
                "api_tokens",
                "role_bindings",
                "cases",
                "access_requests",
            ] {
                let n: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_schema WHERE name = ?")
                        .bind(table)
                        .fetch_one(&cat.pool)
                        .await
                        .unwrap();
                assert_eq!(n, 0, "{table} exists at version 1");
            }
            cat.close().await;
        }
        let cat = SqliteCatalog::open(&path).await.unwrap();
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM schema_version ORDER BY version")
                .fetch_all(&cat.pool)
                .await
                .unwrap();
        assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
        const { assert!(SCHEMA_VERSION >= 2) };
        // The existing workspace got the lockbox, and kept everything else.
        assert_eq!(
            cat.get_workspace(old.id).await.unwrap(),
            Some(Workspace {
                lockbox: true,
                ..old.clone()
            })
        );
        assert_eq!(cat.list_agents(old.id).await.unwrap().len(), 1);
        // The new tables work, with the old workspace.
        cat.set_lockbox(old.id, false).await.unwrap();
        assert!(!cat.get_workspace(old.id).await.unwrap().unwrap().lockbox);
        let p = Principal {
            id: PrincipalId::new(),
            name: "owner".into(),
            service_role: None,
            created_at: 1,
        };
        cat.create_principal(&p).await.unwrap();
        let b = RoleBinding {
            workspace_id: old.id,
            principal_id: p.id,
            role: WorkspaceRole::Owner,
            granted_at: 2,
            granted_by: p.id,
        };
        assert!(cat.grant_role(&b).await.unwrap());
        assert_eq!(
            cat.roles_of(p.id, old.id).await.unwrap(),
            vec![WorkspaceRole::Owner]
        );
        cat.close().await;
        // Opening again applies nothing more.
        let cat = SqliteCatalog::open(&path).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_version")
            .fetch_one(&cat.pool)
            .await
            .unwrap();
        assert_eq!(n, SCHEMA_VERSION);
        cat.close().await;
    }

    #[tokio::test]
    async fn version_2_catalog_migrates_to_3_storing_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.db");
        let (old, agent_id) = (ws("from-v2"), AgentId::new());
        {
            let cat = SqliteCatalog::open_at_version(&path, 2).await.unwrap();
            // What a version-2 build wrote: no policy columns, no refusals table.
            sqlx::query(
                "INSERT INTO workspaces (id, name, region, retention_days, created_at, lockbox) VALUES (?, ?, ?, ?, ?, 0)",
            )
            .bind(old.id.to_string())
            .bind(old.name.as_str())
            .bind(old.region.as_str())
            .bind(i64::from(old.retention_days))
            .bind(old.created_at)
            .execute(&cat.pool)
            .await
            .unwrap();
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_schema WHERE name = 'refusals'")
                .fetch_one(&cat.pool)
                .await
                .unwrap();
            assert_eq!(n, 0, "refusals exists at version 2");
            cat.close().await;
        }
        let cat = SqliteCatalog::open(&path).await.unwrap();
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM schema_version ORDER BY version")
                .fetch_all(&cat.pool)
                .await
                .unwrap();
        assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
        const { assert!(SCHEMA_VERSION >= 3) };
        // The existing workspace stores everything, as before, and kept the rest.
        assert_eq!(
            cat.get_workspace(old.id).await.unwrap(),
            Some(Workspace { lockbox: false, policy: WorkspacePolicy::default(), ..old.clone() })
        );
        assert_eq!(cat.workspace_policy(old.id).await.unwrap(), WorkspacePolicy::default());
        // The new column and table work with the old workspace.
        let policy = WorkspacePolicy::with_categories(Level::Basic, [Category::Security, Category::Logs]);
        cat.set_workspace_policy(old.id, &policy).await.unwrap();
        assert_eq!(cat.workspace_policy(old.id).await.unwrap(), policy);
        let r = Refusal {
            workspace_id: old.id,
            agent_id,
            reason: custos_model::api::RefusalReason::Level,
            category: Category::Logs,
            events: 4,
            first_at: 10,
            last_at: 10,
        };
        cat.add_refusals(std::slice::from_ref(&r)).await.unwrap();
        assert_eq!(cat.list_refusals(old.id).await.unwrap(), vec![r]);
        cat.close().await;
    }

    #[tokio::test]
    async fn version_3_catalog_migrates_to_4_keeping_agents_without_a_previous_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.db");
        let (old, agent_id) = (ws("from-v3"), AgentId::new());
        {
            let cat = SqliteCatalog::open_at_version(&path, 3).await.unwrap();
            create_workspace_v5(&cat, &old).await;
            // What a version-3 build wrote: no prev_cert_* columns.
            sqlx::query(
                "INSERT INTO agents (id, workspace_id, hostname, cert_sha256, cert_not_after, enrolled_at, revoked_at) \
                 VALUES (?, ?, 'h', ?, 500, 100, NULL)",
            )
            .bind(agent_id.to_string())
            .bind(old.id.to_string())
            .bind("ab".repeat(32))
            .execute(&cat.pool)
            .await
            .unwrap();
            cat.close().await;
        }
        let cat = SqliteCatalog::open(&path).await.unwrap();
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM schema_version ORDER BY version")
                .fetch_all(&cat.pool)
                .await
                .unwrap();
        assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
        const { assert!(SCHEMA_VERSION >= 4) };
        let a = cat.get_agent(agent_id).await.unwrap().unwrap();
        assert_eq!(
            (a.prev_cert_sha256.clone(), a.prev_cert_not_after),
            (None, None)
        );
        assert!(a.accepts(&"ab".repeat(32), 0));
        // The old agent renews and is revoked like a new one.
        let renewed = cat
            .renew_agent_cert(agent_id, &"ab".repeat(32), &"cd".repeat(32), 900, 200)
            .await
            .unwrap();
        assert_eq!(renewed.prev_cert_not_after, Some(500));
        cat.revoke_agent(old.id, agent_id, 300).await.unwrap();
        // Half a previous certificate is refused by the schema.
        let err = sqlx::query("UPDATE agents SET prev_cert_not_after = NULL WHERE id = ?")
            .bind(agent_id.to_string())
            .execute(&cat.pool)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("CHECK"), "{err}");
        cat.close().await;
    }

    #[tokio::test]
    async fn version_4_catalog_migrates_to_5_with_the_default_redaction_policy_and_no_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v4.db");
        let old = ws("from-v4");
        let (seg_batch, agent_id) = (BatchId::new(), AgentId::new());
        {
            let cat = SqliteCatalog::open_at_version(&path, 4).await.unwrap();
            create_workspace_v5(&cat, &old).await;
            cat.add_refusals(&[Refusal {
                workspace_id: old.id,
                agent_id,
                reason: custos_model::api::RefusalReason::Level,
                category: Category::Logs,
                events: 2,
                first_at: 5,
                last_at: 5,
            }])
            .await
            .unwrap();
            for table in ["redaction_policies", "redactions"] {
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_schema WHERE name = ?")
                    .bind(table)
                    .fetch_one(&cat.pool)
                    .await
                    .unwrap();
                assert_eq!(n, 0, "{table} exists at version 4");
            }
            cat.close().await;
        }
        let cat = SqliteCatalog::open(&path).await.unwrap();
        let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_version ORDER BY version")
            .fetch_all(&cat.pool)
            .await
            .unwrap();
        assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
        const { assert!(SCHEMA_VERSION >= 5) };
        // The old workspace: unchanged, the default redaction policy, no counts.
        assert_eq!(cat.get_workspace(old.id).await.unwrap(), Some(old.clone()));
        assert_eq!(cat.list_refusals(old.id).await.unwrap().len(), 1);
        assert_eq!(cat.redaction_policy(old.id).await.unwrap(), RedactionPolicy::default());
        assert_eq!(cat.list_redactions(old.id).await.unwrap(), vec![]);
        // The new tables work with it.
        let by = PrincipalId::new();
        let set = cat.set_redaction_policy(old.id, Some("version = 1\n"), by, 9).await.unwrap();
        assert_eq!((set.revision, set.updated_by, set.updated_at), (1, Some(by), Some(9)));
        let key = cat.redaction_key(old.id, Secret::new([7; 32])).await.unwrap();
        assert_eq!(key.expose(), &[7; 32]);
        let r = RedactionCount {
            workspace_id: old.id,
            table: TableName::new("logs").unwrap(),
            kind: RedactionKind::Redacted,
            entity: "EMAIL_ADDRESS".into(),
            count: 3,
            first_at: 10,
            last_at: 10,
        };
        cat.commit_ingest_with(&[], &[(old.id, seg_batch)], &[], std::slice::from_ref(&r), 10).await.unwrap();
        assert_eq!(cat.list_redactions(old.id).await.unwrap(), vec![r]);
        cat.close().await;
    }

    #[tokio::test]
    async fn redaction_schema_checks_refuse_bad_rows() {
        let (_dir, cat) = fresh().await;
        let w = ws("redaction-checks");
        cat.create_workspace(&w).await.unwrap();
        let id = w.id.to_string();
        let refused = [
            ("INSERT INTO redactions VALUES (?, 'logs', 'other', 'X', 1, 1, 1)", "kind"),
            ("INSERT INTO redactions VALUES (?, 'logs', 'redacted', '', 1, 1, 1)", "empty entity"),
            ("INSERT INTO redactions VALUES (?, 'logs', 'event_dropped', 'X', 1, 1, 1)", "entity on a drop"),
            ("INSERT INTO redactions VALUES (?, 'logs', 'redacted', 'X', 0, 1, 1)", "zero count"),
            ("INSERT INTO redactions VALUES (?, 'logs', 'redacted', 'X', 1, 2, 1)", "last before first"),
            ("INSERT INTO redaction_policies (workspace_id, pseudonym_key) VALUES (?, x'0102')", "short key"),
        ];
        for (sql, what) in refused {
            let err = sqlx::query(sql).bind(&id).execute(&cat.pool).await.expect_err(what);
            assert!(err.to_string().contains("CHECK"), "{what}: {err}");
        }
        // The same checks in the API, with a clear message and nothing committed.
        let bad = RedactionCount {
            workspace_id: w.id,
            table: TableName::new("logs").unwrap(),
            kind: RedactionKind::FieldDropped,
            entity: "EMAIL_ADDRESS".into(),
            count: 1,
            first_at: 1,
            last_at: 1,
        };
        let batch = BatchId::new();
        let err = cat.commit_ingest_with(&[], &[(w.id, batch)], &[], &[bad], 1).await.unwrap_err();
        assert!(err.to_string().contains("names no entity"), "{err}");
        assert_eq!(cat.stored_batches(w.id, &[batch]).await.unwrap(), vec![]);
        // A stored key of the wrong length (written around the checks) is an
        // error, never a key.
        sqlx::query("INSERT INTO redaction_policies (workspace_id) VALUES (?)").bind(&id).execute(&cat.pool).await.unwrap();
        let mut conn = cat.pool.acquire().await.unwrap();
        sqlx::query("PRAGMA ignore_check_constraints = ON").execute(&mut *conn).await.unwrap();
        sqlx::query("UPDATE redaction_policies SET pseudonym_key = x'01' WHERE workspace_id = ?")
            .bind(&id)
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::query("PRAGMA ignore_check_constraints = OFF").execute(&mut *conn).await.unwrap();
        drop(conn);
        let err = cat.redaction_key(w.id, Secret::new([1; 32])).await.unwrap_err();
        assert!(matches!(err, CatalogError::Corrupt(_) | CatalogError::Database(_)), "{err}");
    }

    #[tokio::test]
    async fn schema_checks_refuse_values_outside_the_enums() {
        let (_dir, cat) = fresh().await;
        let w = ws("checks");
        cat.create_workspace(&w).await.unwrap();
        let p = Principal {
            id: PrincipalId::new(),
            name: "p".into(),
            service_role: None,
            created_at: 1,
        };
        cat.create_principal(&p).await.unwrap();
        let c = Case {
            id: CaseId::new(),
            workspace_id: w.id,
            title: "t".into(),
            opened_by: p.id,
            opened_at: 1,
            closed_at: None,
            closed_by: None,
        };
        cat.create_case(&c).await.unwrap();
        let refused = [
            format!("UPDATE workspaces SET lockbox = 2 WHERE id = '{}'", w.id),
            format!("UPDATE principals SET service_role = 'root' WHERE id = '{}'", p.id),
            format!(
                "INSERT INTO role_bindings VALUES ('{}', '{}', 'superuser', 1, '{}')",
                w.id,
                p.id,
                p.id
            ),
            format!("UPDATE cases SET closed_at = 5 WHERE id = '{}'", c.id),
            format!("UPDATE workspaces SET max_level = 4 WHERE id = '{}'", w.id),
            format!(
                "INSERT INTO refusals VALUES ('{}', '{}', 'because', 'logs', 1, 1, 1)",
                w.id,
                AgentId::new()
            ),
            format!(
                "INSERT INTO refusals VALUES ('{}', '{}', 'level', 'metrics', 1, 1, 1)",
                w.id,
                AgentId::new()
            ),
            format!(
                "INSERT INTO refusals VALUES ('{}', '{}', 'level', 'logs', 0, 1, 1)",
                w.id,
                AgentId::new()
            ),
            format!(
                "INSERT INTO access_requests (id, case_id, workspace_id, requester, reason, duration, requested_at, \
                 state) VALUES ('{}', '{}', '{}', '{}', 'r', 1, 1, 'expired')",
                AccessRequestId::new(),
                c.id,
                w.id,
                p.id
            ),
            // Approved without a grant end.
            format!(
                "INSERT INTO access_requests (id, case_id, workspace_id, requester, reason, duration, requested_at, \
                 state, decided_at, decided_by) VALUES ('{}', '{}', '{}', '{}', 'r', 1, 1, 'approved', 2, '{}')",
                AccessRequestId::new(),
                c.id,
                w.id,
                p.id,
                p.id
            ),
        ];
        for sql in refused {
            // Test-only SQL built from ids this test generated.
            let res = sqlx::query(AssertSqlSafe(sql.clone()))
                .execute(&cat.pool)
                .await;
            assert!(res.is_err(), "schema accepted: {sql}");
        }
    }

    #[tokio::test]
    async fn bad_stored_principal_ids_read_as_corrupt() {
        let (_dir, cat) = fresh().await;
        // STRICT tables keep types, so break an id the way a hand edit would.
        let p = Principal {
            id: PrincipalId::new(),
            name: "p".into(),
            service_role: None,
            created_at: 1,
        };
        cat.create_principal(&p).await.unwrap();
        sqlx::query("UPDATE principals SET id = 'not-a-uuid' WHERE id = ?")
            .bind(p.id.to_string())
            .execute(&cat.pool)
            .await
            .unwrap();
        assert!(matches!(
            cat.list_principals().await,
            Err(CatalogError::Corrupt(_))
        ));
        assert!(matches!(
            cat.get_principal_by_name("p").await,
            Err(CatalogError::Corrupt(_))
        ));
    }

    #[tokio::test]
    async fn newer_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        {
            let cat = SqliteCatalog::open(&path).await.unwrap();
            sqlx::query("INSERT INTO schema_version (version, applied_at) VALUES (?, 0)")
                .bind(SCHEMA_VERSION + 1)
                .execute(&cat.pool)
                .await
                .unwrap();
            cat.close().await;
        }
        let err = SqliteCatalog::open(&path).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CatalogError::Database(_)), "{err:?}");
        assert!(msg.contains("newer than this build supports"), "{msg}");
        assert!(
            msg.contains(&format!("schema version {}", SCHEMA_VERSION + 1)),
            "{msg}"
        );
        // Also through the URI entry point.
        let err = crate::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
    }

    #[tokio::test]
    async fn non_sqlite_file_gives_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-db.txt");
        std::fs::write(
            &path,
            "this is a text file, not a SQLite database\n".repeat(100),
        )
        .unwrap();
        let err = SqliteCatalog::open(&path).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CatalogError::Database(_)), "{err:?}");
        assert!(msg.contains("not-a-db.txt"), "names the file: {msg}");
        assert!(msg.contains("not a database"), "says why: {msg}");
        // The file is left alone.
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("this is a text file"));
    }

    #[tokio::test]
    async fn missing_parent_directory_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let err = SqliteCatalog::open(&dir.path().join("no/such/dir/catalog.db"))
            .await
            .unwrap_err();
        assert!(matches!(err, CatalogError::Database(_)), "{err:?}");
    }

    #[tokio::test]
    async fn bad_stored_values_read_as_corrupt() {
        let (_dir, cat) = fresh().await;
        let w = ws("corrupt");
        cat.create_workspace(&w).await.unwrap();
        sqlx::query(
            "INSERT INTO segments (id, workspace_id, table_name, path, min_time, max_time, row_count, \
             byte_count, columns, created_at) VALUES (?, ?, 'Bad Name', 'p', 0, 1, 1, 1, '[]', 0)",
        )
        .bind(SegmentId::new().to_string())
        .bind(w.id.to_string())
        .execute(&cat.pool)
        .await
        .unwrap();
        let err = cat.list_tables(w.id).await.unwrap_err();
        assert!(matches!(err, CatalogError::Corrupt(_)), "{err:?}");

        let w2 = ws("corrupt2");
        cat.create_workspace(&w2).await.unwrap();
        sqlx::query(
            "INSERT INTO segments (id, workspace_id, table_name, path, min_time, max_time, row_count, \
             byte_count, columns, created_at) VALUES (?, ?, 'logs', 'p', 0, 1, 1, 1, 'not json', 0)",
        )
        .bind(SegmentId::new().to_string())
        .bind(w2.id.to_string())
        .execute(&cat.pool)
        .await
        .unwrap();
        let err = cat
            .list_segments(w2.id, &TableName::new("logs").unwrap(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, CatalogError::Corrupt(_)), "{err:?}");

        // A workspace with no rows referencing it, so the foreign keys allow the edit.
        let w3 = ws("corrupt3");
        cat.create_workspace(&w3).await.unwrap();
        sqlx::query("UPDATE workspaces SET id = 'not-a-uuid' WHERE id = ?")
            .bind(w3.id.to_string())
            .execute(&cat.pool)
            .await
            .unwrap();
        let err = cat.list_workspaces().await.unwrap_err();
        assert!(matches!(err, CatalogError::Corrupt(_)), "{err:?}");
    }

    #[tokio::test]
    async fn open_by_uri() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("sqlite://{}", dir.path().join("c.db").display());
        let cat = crate::open(&uri).await.unwrap();
        cat.create_workspace(&ws("by-uri")).await.unwrap();
        assert_eq!(cat.list_workspaces().await.unwrap().len(), 1);
        assert!(matches!(
            crate::open("postgres://x").await,
            Err(CatalogError::UnsupportedUri(_))
        ));
    }
}
