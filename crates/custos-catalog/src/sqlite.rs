//! The embedded catalog: one SQLite file in WAL mode.
//!
//! Layout (schema version 1):
//!
//! | table             | key                          | notes                                   |
//! |-------------------|------------------------------|-----------------------------------------|
//! | `schema_version`  | `version`                    | one row per applied migration           |
//! | `workspaces`      | `id`; `name` unique          |                                         |
//! | `enrollment_keys` | `key_hash`                   | `used_at` NULL until consumed           |
//! | `agents`          | `id`                         |                                         |
//! | `segments`        | `id`                         | `columns` is JSON; index on (ws, table, min_time) |
//! | `batches`         | (`workspace_id`, `batch_id`) | batch ids already stored                |
//!
//! Ids are UUID text (hyphenated), times are `INTEGER` microseconds, and every
//! row that belongs to a workspace references `workspaces(id)` (foreign keys
//! are on). Every query filters by workspace id.

use crate::{Agent, Catalog, CatalogError, ColumnDef, EnrollmentKey, Result, Segment, Workspace};
use async_trait::async_trait;
use custos_model::{AgentId, BatchId, SegmentId, TableName, TimestampMicros, WorkspaceId};
use sqlx::error::ErrorKind;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
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
            .map_err(|e| CatalogError::Database(format!("cannot open catalog {}: {e}", path.display())))?;
        let cat = SqliteCatalog { pool, path: path.to_path_buf() };
        if let Err(e) = cat.migrate().await {
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

    /// Bring the schema to [`SCHEMA_VERSION`], in one immediate transaction so
    /// two processes opening the same file do not both migrate.
    async fn migrate(&self) -> Result<()> {
        let ctx = |e: sqlx::Error| {
            CatalogError::Database(format!("cannot migrate catalog {}: {e}", self.path.display()))
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
            if version <= current {
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
    i64::try_from(v).map_err(|_| CatalogError::Database(format!("{what} {v} is too large to store")))
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
    })
}

fn table_from_str(s: String) -> Result<TableName> {
    TableName::new(s).map_err(|e| corrupt("table_name", e))
}

fn segment_from_row(row: &SqliteRow) -> Result<Segment> {
    let columns: String = get(row, "columns")?;
    let columns: Vec<ColumnDef> = serde_json::from_str(&columns).map_err(|e| corrupt("columns", e))?;
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

/// What went wrong inside [`SqliteCatalog::commit_segments`]'s transaction.
enum CommitFailure {
    DuplicateSegment(SegmentId),
    MissingWorkspace,
    Other(CatalogError),
}

async fn commit_in_tx(
    tx: &mut sqlx::SqliteConnection,
    segments: &[Segment],
    batches: &[(WorkspaceId, BatchId)],
    now: TimestampMicros,
) -> std::result::Result<(), CommitFailure> {
    for seg in segments {
        let columns =
            serde_json::to_string(&seg.columns).map_err(|e| CommitFailure::Other(CatalogError::Database(e.to_string())))?;
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
    Ok(())
}

#[async_trait]
impl Catalog for SqliteCatalog {
    async fn create_workspace(&self, ws: &Workspace) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO workspaces (id, name, region, retention_days, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(ws.id.to_string())
        .bind(ws.name.as_str())
        .bind(ws.region.as_str())
        .bind(i64::from(ws.retention_days))
        .bind(ws.created_at)
        .execute(&self.pool)
        .await;
        match res.map_err(classify) {
            Ok(_) => Ok(()),
            Err(Failure::Unique(msg)) if msg.contains("workspaces.name") => {
                Err(CatalogError::WorkspaceNameTaken(ws.name.clone()))
            }
            Err(Failure::Unique(_)) => Err(CatalogError::Database(format!("workspace id {} already exists", ws.id))),
            Err(Failure::ForeignKey) => Err(CatalogError::Database("unexpected foreign key failure".into())),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    async fn get_workspace(&self, id: WorkspaceId) -> Result<Option<Workspace>> {
        let row = sqlx::query("SELECT id, name, region, retention_days, created_at FROM workspaces WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(workspace_from_row).transpose()
    }

    async fn list_workspaces(&self) -> Result<Vec<Workspace>> {
        let rows = sqlx::query(
            "SELECT id, name, region, retention_days, created_at FROM workspaces ORDER BY created_at, rowid",
        )
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
            Err(Failure::Unique(_)) => Err(CatalogError::Database("enrollment key hash already stored".into())),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    async fn consume_enrollment_key(&self, key_hash: &str, now: TimestampMicros) -> Result<WorkspaceId> {
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
            "INSERT INTO agents (id, workspace_id, hostname, cert_sha256, cert_not_after, enrolled_at, revoked_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(agent.id.to_string())
        .bind(agent.workspace_id.to_string())
        .bind(agent.hostname.as_str())
        .bind(agent.cert_sha256.as_str())
        .bind(agent.cert_not_after)
        .bind(agent.enrolled_at)
        .bind(agent.revoked_at)
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
        let row = sqlx::query(
            "SELECT id, workspace_id, hostname, cert_sha256, cert_not_after, enrolled_at, revoked_at \
             FROM agents WHERE id = ?",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(agent_from_row).transpose()
    }

    async fn list_agents(&self, ws: WorkspaceId) -> Result<Vec<Agent>> {
        let rows = sqlx::query(
            "SELECT id, workspace_id, hostname, cert_sha256, cert_not_after, enrolled_at, revoked_at \
             FROM agents WHERE workspace_id = ? ORDER BY enrolled_at, rowid",
        )
        .bind(ws.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(agent_from_row).collect()
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
        Ok(ids.iter().copied().filter(|id| found.contains(id) && seen.insert(*id)).collect())
    }

    async fn commit_segments(
        &self,
        segments: &[Segment],
        batches: &[(WorkspaceId, BatchId)],
        now: TimestampMicros,
    ) -> Result<()> {
        if segments.is_empty() && batches.is_empty() {
            return Ok(());
        }
        // IMMEDIATE: take the write lock up front, so the busy timeout applies
        // instead of a mid-transaction SQLITE_BUSY.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        match commit_in_tx(&mut tx, segments, batches, now).await {
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
                        match self.missing_workspace(ids).await? {
                            Some(id) => Err(CatalogError::WorkspaceNotFound(id)),
                            None => Err(CatalogError::Database("foreign key failure committing segments".into())),
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
        let rows = sqlx::query("SELECT DISTINCT table_name FROM segments WHERE workspace_id = ? ORDER BY table_name")
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    async fn fresh() -> (tempfile::TempDir, SqliteCatalog) {
        let dir = tempfile::tempdir().unwrap();
        let cat = SqliteCatalog::open(&dir.path().join("catalog.db")).await.unwrap();
        (dir, cat)
    }

    fn ws(name: &str) -> Workspace {
        Workspace {
            id: WorkspaceId::new(),
            name: name.to_string(),
            region: "eu".into(),
            retention_days: 30,
            created_at: 1_700_000_000_000_000,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_passes_the_conformance_suite() {
        let (_dir, cat) = fresh().await;
        crate::conformance::run_all(Arc::new(cat)).await;
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
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut **conn).await.unwrap();
            assert_eq!(mode, "wal");
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut **conn).await.unwrap();
            assert_eq!(sync, 2, "synchronous=FULL");
            let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(&mut **conn).await.unwrap();
            assert_eq!(fk, 1);
            let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(&mut **conn).await.unwrap();
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
            columns: vec![ColumnDef { name: "pid".into(), ty: custos_model::ValueType::Int }],
            created_at: 5,
        };
        let batch = BatchId::new();
        {
            let cat = SqliteCatalog::open(&path).await.unwrap();
            cat.create_workspace(&w).await.unwrap();
            cat.commit_segments(std::slice::from_ref(&seg), &[(w.id, batch)], 7).await.unwrap();
            cat.close().await;
        }
        let cat = SqliteCatalog::open(&path).await.unwrap();
        assert_eq!(cat.get_workspace(w.id).await.unwrap(), Some(w.clone()));
        assert_eq!(cat.list_segments(w.id, &seg.table, None).await.unwrap(), vec![seg]);
        assert_eq!(cat.stored_batches(w.id, &[batch]).await.unwrap(), vec![batch]);
        // Reopening did not re-run migrations or add versions.
        let versions: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM schema_version").fetch_one(&cat.pool).await.unwrap();
        assert_eq!(versions, SCHEMA_VERSION);
        cat.close().await;
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
        assert!(msg.contains(&format!("schema version {}", SCHEMA_VERSION + 1)), "{msg}");
        // Also through the URI entry point.
        let err = crate::open(&format!("sqlite://{}", path.display())).await.unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
    }

    #[tokio::test]
    async fn non_sqlite_file_gives_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-db.txt");
        std::fs::write(&path, "this is a text file, not a SQLite database\n".repeat(100)).unwrap();
        let err = SqliteCatalog::open(&path).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CatalogError::Database(_)), "{err:?}");
        assert!(msg.contains("not-a-db.txt"), "names the file: {msg}");
        assert!(msg.contains("not a database"), "says why: {msg}");
        // The file is left alone.
        assert!(std::fs::read_to_string(&path).unwrap().starts_with("this is a text file"));
    }

    #[tokio::test]
    async fn missing_parent_directory_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let err = SqliteCatalog::open(&dir.path().join("no/such/dir/catalog.db")).await.unwrap_err();
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
        let err = cat.list_segments(w2.id, &TableName::new("logs").unwrap(), None).await.unwrap_err();
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
        assert!(matches!(crate::open("postgres://x").await, Err(CatalogError::UnsupportedUri(_))));
    }
}
