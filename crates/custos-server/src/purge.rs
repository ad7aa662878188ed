//! Purge: remove the rows matching a predicate from a workspace's tables,
//! with a signed receipt.
//!
//! # Life of a job
//!
//! 1. **Accepted** (`POST /v1/workspaces/{id}/purges`, `custos purge
//!    create`): the predicate is parsed ([`custos_store::purge`]), the job
//!    stored as `pending` — refused while the workspace is locked (the
//!    catalog checks in the same transaction). From that answer on, every
//!    query of the workspace hides the matching rows (they are filtered out
//!    at scan, see `query::Visibility`).
//! 2. **Cancel window**: the job runs at `not_before`, `purge.cancel_window_hours`
//!    (default 24) after acceptance, or at once with `--now`. Until then
//!    `custos purge cancel` makes the rows visible again.
//! 3. **Running** ([`runner`]): for each table, each segment is first
//!    checked against its Bloom filters and attribute columns; one that
//!    cannot match is not read. One that may is read and decoded; if rows
//!    match, the rows left are written as a new sealed segment (values
//!    unchanged, [`custos_store::encode_batches`]) and one catalog
//!    transaction swaps the segments, records the deletion and appends the
//!    receipt line (old and new SHA-256, rows before and removed). Then the
//!    old object is removed. A crash resumes the job: finished segments no
//!    longer match.
//! 4. **Completed**: the receipt (every line, totals, times) is signed
//!    with the server's Ed25519 key (`audit.pub` verifies it;
//!    `custos purge verify`). A job that hits an error is `failed` and its
//!    rows stay hidden; a workspace locked while a job runs pauses it.

use std::collections::BTreeMap;
use std::sync::Arc;

use custos_catalog::{CatalogError, PurgeJob, PurgeState, Segment};
use custos_model::api::{PurgeCount, PurgeDryRun, PurgeInfo, PurgeReceipt, PurgeReceiptEntry, SignedReceipt};
use custos_model::{JobId, PrincipalId, SegmentId, TableName, WorkspaceId};
use custos_store::purge::{Bloom, Predicate};
use sha2::Digest;

use crate::api::rfc3339;
use crate::{AppState, ServerError};

/// The document kind purge receipts are signed as.
pub const RECEIPT_KIND: &str = "purge-receipt";

/// The predicates of a workspace's accepted purges, for queries.
pub async fn hidden(s: &AppState, ws: WorkspaceId) -> Result<Vec<(Vec<TableName>, Predicate)>, ServerError> {
    let mut out = Vec::new();
    for j in s.catalog.hiding_purges(ws).await? {
        match Predicate::parse(&j.predicate) {
            Ok(p) => out.push((j.tables.clone(), p)),
            // Stored canonical, so this is a damaged catalog row: fail the
            // query rather than show rows that should be hidden.
            Err(e) => return Err(ServerError::Internal(format!("purge job {}: stored predicate: {e}", j.id))),
        }
    }
    Ok(out)
}

/// The job as the API shows it.
pub fn info(j: &PurgeJob) -> PurgeInfo {
    PurgeInfo {
        id: j.id,
        workspace_id: j.workspace_id,
        tables: j.tables.iter().map(|t| t.as_str().to_string()).collect(),
        predicate: j.predicate.clone(),
        state: j.state.as_str().into(),
        created_at: rfc3339(j.created_at),
        not_before: rfc3339(j.not_before),
        started_at: j.started_at.map(rfc3339),
        finished_at: j.finished_at.map(rfc3339),
        error: j.error.clone(),
        receipt: j.receipt.as_deref().and_then(|r| serde_json::from_str(r).ok()),
    }
}

fn parse(predicate: &str) -> Result<Predicate, ServerError> {
    Predicate::parse(predicate).map_err(|e| ServerError::BadRequest(e.to_string()))
}

fn tables_arg(tables: &[String]) -> Result<Vec<TableName>, ServerError> {
    let mut out: Vec<TableName> = tables
        .iter()
        .map(|t| TableName::new(t).map_err(|e| ServerError::BadRequest(format!("table {t:?}: {e}"))))
        .collect::<Result<_, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

/// The tables a job covers: the ones named, or every table with data.
async fn tables_of(s: &AppState, ws: WorkspaceId, tables: &[TableName]) -> Result<Vec<TableName>, ServerError> {
    if tables.is_empty() {
        Ok(s.catalog.list_tables(ws).await?)
    } else {
        Ok(tables.to_vec())
    }
}

/// Whether a segment may hold matching rows, from the catalog alone.
fn may_match(p: &Predicate, seg: &Segment, index: Option<&String>) -> bool {
    let blooms: BTreeMap<String, Bloom> = index.and_then(|i| serde_json::from_str(i).ok()).unwrap_or_default();
    let cols: Vec<String> = seg.columns.iter().map(|c| c.name.clone()).collect();
    p.may_match(&blooms, &cols)
}

/// The error of a segment that could not be read, naming it; an integrity
/// failure is also a data-loss incident for the workspace.
async fn segment_error(s: &AppState, seg: &Segment, e: custos_store::StoreError) -> ServerError {
    crate::query::note_integrity(s, seg, &e).await;
    ServerError::Internal(format!("segment {} ({}) of table {}: {e}", seg.id, seg.path, seg.table))
}

/// Reads and decodes a whole segment.
async fn read(s: &AppState, seg: &Segment) -> Result<(bytes::Bytes, custos_store::DecodedSegment), ServerError> {
    let bytes = s.storage.get(&seg.path).await?;
    let keys = s.keys.clone();
    let b = bytes.clone();
    let decoded = match tokio::task::spawn_blocking(move || custos_store::decode_segment_with(&b, None, Some(keys.as_ref())))
        .await
        .map_err(|e| ServerError::Internal(format!("segment decode task: {e}")))?
    {
        Ok(d) => d,
        Err(e) => return Err(segment_error(s, seg, e).await),
    };
    Ok((bytes, decoded))
}

fn matching(p: &Predicate, d: &custos_store::DecodedSegment) -> Result<Vec<arrow::array::BooleanArray>, ServerError> {
    d.batches.iter().map(|b| p.matches(b).map_err(|e| ServerError::Internal(format!("purge match: {e}")))).collect()
}

/// `--dry-run`: how many rows would go, per table; nothing changes.
pub async fn dry_run(s: &AppState, ws: WorkspaceId, tables: &[String], predicate: &str) -> Result<PurgeDryRun, ServerError> {
    let p = parse(predicate)?;
    let tables = tables_of(s, ws, &tables_arg(tables)?).await?;
    let mut out = PurgeDryRun { predicate: p.to_sql(), tables: Vec::new(), rows: 0 };
    for table in tables {
        let index = s.catalog.segment_indexes(ws, &table).await?;
        let mut c = PurgeCount { table: table.as_str().into(), rows: 0, segments: 0, segments_read: 0, segments_skipped: 0 };
        for seg in s.catalog.list_segments(ws, &table, None).await? {
            if !may_match(&p, &seg, index.get(&seg.id)) {
                c.segments_skipped += 1;
                continue;
            }
            c.segments_read += 1;
            let (_, d) = read(s, &seg).await?;
            let n: usize = matching(&p, &d)?.iter().map(|m| m.true_count()).sum();
            if n > 0 {
                c.rows += n as u64;
                c.segments += 1;
            }
        }
        out.rows += c.rows;
        out.tables.push(c);
    }
    Ok(out)
}

/// Accept a purge job (see the module docs).
pub async fn create(
    s: &AppState,
    ws: WorkspaceId,
    tables: &[String],
    predicate: &str,
    now_asked: bool,
    by: Option<PrincipalId>,
) -> Result<PurgeJob, ServerError> {
    let p = parse(predicate)?;
    let tables = tables_arg(tables)?;
    let now = s.clock.now();
    let window = i64::from(s.config.purge.cancel_window_hours) * 3600 * 1_000_000;
    let job = PurgeJob {
        id: JobId::new(),
        workspace_id: ws,
        tables,
        predicate: p.to_sql(),
        state: PurgeState::Pending,
        created_at: now,
        created_by: by,
        not_before: if now_asked { now } else { now.saturating_add(window) },
        started_at: None,
        finished_at: None,
        error: None,
        receipt: None,
    };
    s.catalog.create_purge(&job).await?;
    tracing::info!(workspace = %ws, job = %job.id, predicate = %job.predicate, "purge accepted");
    if now_asked {
        s.purge_kick.notify_one();
    }
    Ok(job)
}

/// Runs due purge jobs: at start, every `purge.poll_interval_secs`, and
/// when a job is accepted with `--now`.
pub async fn runner(s: Arc<AppState>) {
    let every = std::time::Duration::from_secs(s.config.purge.poll_interval_secs.max(1));
    loop {
        if let Err(e) = run_due(&s).await {
            tracing::warn!(error = %e, "purge pass failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = s.purge_kick.notified() => {}
        }
    }
}

/// One pass: claims due jobs and runs every running one; returns the jobs
/// that ended (completed or failed).
pub async fn run_due(s: &Arc<AppState>) -> Result<Vec<PurgeJob>, ServerError> {
    // Running jobs are resumed by whoever claims: never two passes at once.
    let _one = s.purge_lock.lock().await;
    let mut ended = Vec::new();
    for job in s.catalog.claim_purges(s.clock.now()).await? {
        match run_job(s, &job).await {
            Ok(done) => ended.push(done),
            // Locked while running: paused until the unlock.
            Err(ServerError::Catalog(CatalogError::WorkspaceLocked { reason, .. })) => {
                tracing::info!(job = %job.id, workspace = %job.workspace_id, reason, "purge paused: the workspace is locked");
            }
            Err(e) => {
                tracing::error!(job = %job.id, workspace = %job.workspace_id, error = %e, "purge failed");
                let failed = s.catalog.finish_purge(job.id, Err(e.to_string()), s.clock.now()).await?;
                s.governance.purges_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                audit(s, &failed, "purge.failed").await;
                ended.push(failed);
            }
        }
    }
    Ok(ended)
}

/// The job's audit record. The predicate names the person a purge is
/// about, so the log keeps only its keyed hash (as for the request that
/// created the job), never the values.
async fn audit(s: &AppState, j: &PurgeJob, action: &str) {
    let mut d = BTreeMap::new();
    d.insert("where".into(), s.hmac.hmac(&j.predicate));
    d.insert("state".into(), j.state.as_str().into());
    if let Some(e) = &j.error {
        d.insert("error".into(), e.chars().take(300).collect());
    }
    crate::retention::system_audit(s, action, j.workspace_id, j.id.to_string(), d).await;
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

/// Runs one job to its end (module docs, step 3 and 4).
async fn run_job(s: &Arc<AppState>, job: &PurgeJob) -> Result<PurgeJob, ServerError> {
    let p = parse(&job.predicate)?;
    let ws = job.workspace_id;
    let (mut read_n, mut skipped) = (0u64, 0u64);
    for table in tables_of(s, ws, &job.tables).await? {
        let index = s.catalog.segment_indexes(ws, &table).await?;
        for seg in s.catalog.list_segments(ws, &table, None).await? {
            if !may_match(&p, &seg, index.get(&seg.id)) {
                skipped += 1;
                continue;
            }
            read_n += 1;
            purge_segment(s, job, &p, &seg).await?;
        }
    }
    let entries: Vec<PurgeReceiptEntry> = s
        .catalog
        .purge_entries(job.id)
        .await?
        .iter()
        .map(|e| serde_json::from_str(e).map_err(|e| ServerError::Internal(format!("purge receipt line: {e}"))))
        .collect::<Result<_, _>>()?;
    let now = s.clock.now();
    let receipt = PurgeReceipt {
        format: "custos-purge-receipt".into(),
        version: 1,
        job: job.id,
        workspace_id: ws,
        tables: job.tables.iter().map(|t| t.as_str().to_string()).collect(),
        predicate: job.predicate.clone(),
        accepted_at: rfc3339(job.created_at),
        completed_at: rfc3339(now),
        rows_removed: entries.iter().map(|e| e.rows_removed).sum(),
        segments_rewritten: entries.iter().filter(|e| e.new_segment.is_some()).count() as u64,
        segments_deleted: entries.iter().filter(|e| e.new_segment.is_none()).count() as u64,
        segments_skipped: skipped,
        segments_read: read_n,
        segments: entries,
    };
    let signed = sign(s, receipt)?;
    let text = serde_json::to_string(&signed).map_err(|e| ServerError::Internal(format!("receipt json: {e}")))?;
    let done = s.catalog.finish_purge(job.id, Ok(text), now).await?;
    s.governance.purges_completed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    s.governance.purge_rows.fetch_add(signed.receipt.rows_removed, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(job = %job.id, workspace = %ws, rows = signed.receipt.rows_removed, segments = signed.receipt.segments.len(), "purge completed");
    audit(s, &done, "purge.completed").await;
    Ok(done)
}

/// Signs a receipt with the server's key.
pub fn sign(s: &AppState, receipt: PurgeReceipt) -> Result<SignedReceipt, ServerError> {
    let doc = serde_json::to_vec(&receipt).map_err(|e| ServerError::Internal(format!("receipt json: {e}")))?;
    Ok(SignedReceipt {
        signature: custos_audit::sign_document(&s.signer, RECEIPT_KIND, &doc),
        public_key: hex::encode(s.signer.verifying_key().as_bytes()),
        receipt,
    })
}

/// Checks a signed receipt against a public key (`audit.pub`).
pub fn verify(r: &SignedReceipt, key: &custos_audit::VerifyingKey) -> Result<(), String> {
    let doc = serde_json::to_vec(&r.receipt).map_err(|e| format!("receipt json: {e}"))?;
    custos_audit::verify_document(key, RECEIPT_KIND, &doc, &r.signature)
}

/// Removes the matching rows of one segment (a no-op if none match).
async fn purge_segment(s: &Arc<AppState>, job: &PurgeJob, p: &Predicate, seg: &Segment) -> Result<(), ServerError> {
    let bytes = s.storage.get(&seg.path).await?;
    let keys = s.keys.clone();
    let (b, pred, id) = (bytes.clone(), p.clone(), SegmentId::new());
    let outcome = match tokio::task::spawn_blocking(move || custos_store::purge::purge_segment(&b, &pred, id, Some(keys.as_ref())))
        .await
        .map_err(|e| ServerError::Internal(format!("purge task: {e}")))?
    {
        Ok(o) => o,
        Err(e) => return Err(segment_error(s, seg, e).await),
    };
    if outcome.rows_removed == 0 {
        return Ok(());
    }
    let mut new: Option<(Segment, String, String)> = None;
    if let Some(enc) = outcome.replacement {
        let entry = crate::ingest::catalog_entry(seg.workspace_id, seg.table.clone(), id, &enc, s.clock.now());
        let hash = sha256_hex(&enc.bytes);
        let index = enc.index_json();
        s.storage.put(&entry.path, enc.bytes).await?;
        new = Some((entry, hash, index));
    }
    let now = s.clock.now();
    let entry = PurgeReceiptEntry {
        table: seg.table.as_str().into(),
        segment: seg.id,
        rows_before: outcome.rows_before,
        rows_removed: outcome.rows_removed,
        old_sha256: sha256_hex(&bytes),
        new_segment: new.as_ref().map(|n| n.0.id),
        new_sha256: new.as_ref().map(|n| n.1.clone()),
        at: rfc3339(now),
    };
    let line = serde_json::to_string(&entry).map_err(|e| ServerError::Internal(format!("receipt line: {e}")))?;
    match s.catalog.purge_segment(job.id, seg.id, new.as_ref().map(|n| &n.0), &line, now).await {
        Ok(deletion) => {
            if let Some((n, _, index)) = &new {
                if let Err(e) = s.catalog.put_segment_indexes(n.workspace_id, &[(n.id, index.clone())]).await {
                    tracing::warn!(segment = %n.id, error = %e, "segment index not stored");
                }
            }
            match s.storage.delete(&deletion.path).await {
                Ok(()) => s.catalog.mark_objects_deleted(&[deletion.seq], s.clock.now()).await?,
                Err(e) => tracing::warn!(segment = %seg.id, error = %e, "purged segment object not removed; the sweeper retries"),
            }
            Ok(())
        }
        Err(e) => {
            // The new object was never registered: remove it.
            if let Some((n, _, _)) = &new {
                let _ = s.storage.delete(&n.path).await;
            }
            Err(e.into())
        }
    }
}
