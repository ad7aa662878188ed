//! Retention on the server: the periods in force, changes with their grace
//! period, workspace locks, and the sweeper.
//!
//! The sweeper (every `retention.sweep_interval_secs`, or on demand with
//! `POST /v1/retention/sweep`) does, in order:
//!
//! 1. applies pending reductions whose grace period is over (not in locked
//!    workspaces: theirs wait for the unlock);
//! 2. for every unlocked workspace and table: rolls up the table's complete
//!    days not rolled up yet (see [`crate::rollup`]); lists the segments
//!    whose latest row is before the table's cutoff (rolling up any of
//!    their days still missing first), and removes them from the catalog in
//!    one transaction that records each deletion. The decision uses only
//!    the catalog's time range: no segment is read to be dropped, so the
//!    dropping costs O(segments), not O(rows);
//! 3. removes the objects of those deletions (and retries removals an
//!    earlier pass could not finish) and marks them done;
//! 4. writes one `retention.sweep` audit record per workspace that lost
//!    segments, and one `retention.applied` per change that took effect.
//!
//! Queries never see expired rows, even before a sweep: the query layer
//! hides rows older than each table's cutoff ([`visibility`]), and the
//! rows of accepted purges. A locked workspace is left alone entirely (a
//! legal hold keeps everything as it is, visible, but for accepted purges).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use custos_catalog::{ChangeState, Deletion, DeletionReason, RetentionChange, Workspace, WorkspaceLock};
use custos_model::api::{DeletionInfo, LockInfo, RetentionChangeInfo, RetentionInfo, SweepReport, TableRetention};
use custos_model::{ChangeId, PrincipalId, TableName, TimestampMicros, WorkspaceId};
use custos_store::retention::{self as rules, ChangeTiming, Retention};

use crate::api::rfc3339;
use crate::query::Visibility;
use crate::{AppState, ServerError};

/// The periods in force for `ws`.
pub async fn retention_of(s: &AppState, ws: &Workspace) -> Result<(Retention, custos_catalog::RetentionSettings), ServerError> {
    let plan = s.config.retention.plan(&ws.plan)?;
    let settings = s.catalog.retention(ws.id).await?;
    let r = Retention { default_days: settings.default_days, tables: settings.tables.clone(), rollup_days: plan.rollup_days };
    Ok((r, settings))
}

/// What a query of `ws` at `now` may see: rows older than each table's
/// cutoff are hidden; nothing is hidden while the workspace is locked.
pub async fn visibility(s: &AppState, ws: &Workspace, now: TimestampMicros) -> Result<Visibility, ServerError> {
    let mut v = if ws.lock.is_some() {
        Visibility::default()
    } else {
        let (r, _) = retention_of(s, ws).await?;
        Visibility::with_retention(r, now)
    };
    v.hidden = crate::purge::hidden(s, ws.id).await?;
    Ok(v)
}

/// The lock as the API shows it.
pub fn lock_info(l: &WorkspaceLock) -> LockInfo {
    LockInfo { reason: l.reason.clone(), locked_at: rfc3339(l.locked_at), locked_by: l.locked_by }
}

/// A change as the API shows it.
pub fn change_info(c: &RetentionChange) -> RetentionChangeInfo {
    RetentionChangeInfo {
        id: c.id,
        table: c.table.as_ref().map(|t| t.as_str().to_string()),
        from_days: c.from_days,
        to_days: c.to_days,
        state: c.state.as_str().into(),
        requested_at: rfc3339(c.requested_at),
        effective_at: rfc3339(c.effective_at),
        requested_by: c.requested_by,
    }
}

/// A deletion record as the API shows it.
pub fn deletion_info(d: &Deletion) -> DeletionInfo {
    DeletionInfo {
        seq: d.seq,
        table: d.table.as_str().into(),
        segment_id: d.segment_id,
        rows: d.rows,
        bytes: d.bytes,
        min_time: rfc3339(d.min_time),
        max_time: rfc3339(d.max_time),
        reason: d.reason.as_str().into(),
        deleted_at: rfc3339(d.deleted_at),
        object_deleted_at: d.object_deleted_at.map(rfc3339),
    }
}

/// `GET /v1/workspaces/{id}/retention`.
pub async fn status(s: &AppState, ws: &Workspace) -> Result<RetentionInfo, ServerError> {
    let plan = s.config.retention.plan(&ws.plan)?;
    let (r, settings) = retention_of(s, ws).await?;
    let now = s.clock.now();
    let mut names: BTreeSet<TableName> = crate::query::queryable_tables(s.catalog.list_tables(ws.id).await?).into_iter().collect();
    names.extend(settings.tables.keys().cloned());
    let tables = names
        .into_iter()
        .map(|t| {
            let source = if r.tables.contains_key(&t) {
                "override"
            } else if rules::is_rollup(&t) {
                "rollup"
            } else {
                "default"
            };
            TableRetention { days: r.days_for(&t), source: source.into(), keeps_since: rfc3339(r.cutoff(&t, now)), table: t.as_str().into() }
        })
        .collect();
    Ok(RetentionInfo {
        workspace_id: ws.id,
        plan: plan.name,
        max_days: plan.max_days,
        rollup_days: plan.rollup_days,
        default_days: settings.default_days,
        grace_days: s.config.retention.grace_days,
        lock: ws.lock.as_ref().map(lock_info),
        tables,
        pending: settings.pending.iter().map(change_info).collect(),
    })
}

/// Change the default (`table` None) or one table's period. A lengthening
/// applies at once; a reduction waits for the grace period unless `now`
/// is asked. Locked workspaces refuse reductions (the catalog checks, in
/// the same transaction as the change).
pub async fn change(
    s: &AppState,
    ws: &Workspace,
    table: Option<TableName>,
    days: u32,
    immediately: bool,
    by: Option<PrincipalId>,
) -> Result<RetentionChange, ServerError> {
    let plan = s.config.retention.plan(&ws.plan)?;
    plan.check(table.as_ref(), days).map_err(|e| ServerError::BadRequest(e.to_string()))?;
    let (r, _) = retention_of(s, ws).await?;
    let from = match &table {
        Some(t) => r.days_for(t),
        None => r.default_days,
    };
    let now = s.clock.now();
    let timing = rules::decide_change(from, days, now, s.config.retention.grace_days, immediately);
    let (state, effective_at) = match timing {
        ChangeTiming::Now => (ChangeState::Applied, now),
        ChangeTiming::At(t) => (ChangeState::Pending, t),
    };
    let c = RetentionChange {
        id: ChangeId::new(),
        workspace_id: ws.id,
        table,
        from_days: from,
        to_days: days,
        requested_at: now,
        effective_at,
        requested_by: by,
        state,
        decided_at: (state == ChangeState::Applied).then_some(now),
    };
    s.catalog.change_retention(&c).await?;
    tracing::info!(workspace = %ws.id, table = ?c.table.as_ref().map(|t| t.as_str()), from, to = days, state = c.state.as_str(), "retention changed");
    Ok(c)
}

/// Append a record the server writes on its own (no request behind it).
pub async fn system_audit(s: &AppState, action: &str, ws: WorkspaceId, target: String, details: BTreeMap<String, String>) {
    system_record(s, action, "ok", ws, target, details).await
}

/// [`system_audit`] with an outcome (`ok`, `error`).
pub async fn system_record(s: &AppState, action: &str, outcome: &str, ws: WorkspaceId, target: String, details: BTreeMap<String, String>) {
    let rec = custos_audit::AuditRecord {
        time: s.clock.now(),
        principal: None,
        role: "system".into(),
        action: action.into(),
        target,
        workspace: Some(ws.to_string()),
        outcome: outcome.into(),
        status: 0,
        request_id: String::new(),
        client: String::new(),
        grant: None,
        details,
    };
    if let Err(e) = s.audit.append(rec).await {
        tracing::error!(error = %e, workspace = %ws, action, "audit record could not be written");
    }
}

/// One pass of the sweeper (see the module docs). Passes run one at a
/// time ([`AppState::sweep_lock`]).
pub async fn sweep(s: &Arc<AppState>) -> Result<SweepReport, ServerError> {
    let _one = s.sweep_lock.lock().await;
    let started = Instant::now();
    let now = s.clock.now();
    let mut report = SweepReport::default();
    for c in s.catalog.apply_due_retention_changes(now).await? {
        report.changes_applied += 1;
        let mut d = BTreeMap::new();
        d.insert("change".into(), c.id.to_string());
        d.insert("from_days".into(), c.from_days.to_string());
        d.insert("to_days".into(), c.to_days.to_string());
        let target = c.table.as_ref().map_or("default".to_string(), |t| t.as_str().to_string());
        system_audit(s, "retention.applied", c.workspace_id, target, d).await;
    }
    for ws in s.catalog.list_workspaces().await? {
        if ws.lock.is_some() {
            report.workspaces_locked += 1;
            continue;
        }
        report.workspaces += 1;
        if let Err(e) = sweep_workspace(s, &ws, now, &mut report).await {
            report.errors += 1;
            tracing::warn!(workspace = %ws.id, error = %e, "retention pass of the workspace failed; retried next pass");
        }
    }
    let stale = crate::export::remove_stale(s);
    if stale > 0 {
        tracing::info!(exports = stale, "staged exports older than a day removed");
    }
    // Deletions of workspaces a crash interrupted.
    if let Err(e) = crate::shred::resume(s).await {
        report.errors += 1;
        tracing::warn!(error = %e, "finishing an interrupted workspace deletion failed; retried next pass");
    }
    let (removed, errors) = remove_objects(s).await?;
    report.objects_removed += removed;
    report.object_errors = errors;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    {
        use std::sync::atomic::Ordering::Relaxed;
        let g = &s.governance;
        g.sweeps.fetch_add(1, Relaxed);
        g.retention_segments.fetch_add(report.segments_deleted, Relaxed);
        g.retention_rows.fetch_add(report.rows_deleted, Relaxed);
        g.rollup_rows.fetch_add(report.rollup_rows, Relaxed);
        g.object_removal_failures.fetch_add(report.object_errors, Relaxed);
    }
    Ok(report)
}

/// Rollups, then expiry, for one unlocked workspace.
async fn sweep_workspace(s: &Arc<AppState>, ws: &Workspace, now: TimestampMicros, report: &mut SweepReport) -> Result<(), ServerError> {
    let (r, _) = retention_of(s, ws).await?;
    let (mut segs, mut rows, mut bytes) = (0u64, 0u64, 0u64);
    for table in s.catalog.list_tables(ws.id).await? {
        match crate::rollup::roll_up_complete_days(s, ws, &table, now).await {
            Ok(n) => report.rollup_rows += n,
            Err(e) => rollup_failed(s, ws, &table, &e).await,
        }
        let cutoff = r.cutoff(&table, now);
        let expired: Vec<_> = s
            .catalog
            .list_segments(ws.id, &table, Some((TimestampMicros::MIN, cutoff.saturating_sub(1))))
            .await?
            .into_iter()
            .filter(|seg| rules::segment_expired(seg.max_time, cutoff))
            .collect();
        if expired.is_empty() {
            continue;
        }
        // Normally a no-op (the days were rolled up a day after they ended).
        // If it fails the rows expire all the same: the retention promise
        // outranks the aggregates.
        match crate::rollup::before_expiry(s, ws, &table, &expired).await {
            Ok(n) => report.rollup_rows += n,
            Err(e) => rollup_failed(s, ws, &table, &e).await,
        }
        let ids: Vec<_> = expired.iter().map(|x| x.id).collect();
        let dels = match s.catalog.delete_segments(ws.id, &ids, DeletionReason::Retention, now).await {
            Ok(d) => d,
            // Locked since the listing: leave it alone.
            Err(custos_catalog::CatalogError::WorkspaceLocked { .. }) => break,
            Err(e) => return Err(e.into()),
        };
        for d in &dels {
            segs += 1;
            rows += d.rows;
            bytes += d.bytes;
        }
    }
    if segs > 0 {
        report.segments_deleted += segs;
        report.rows_deleted += rows;
        report.bytes_deleted += bytes;
        tracing::info!(workspace = %ws.id, segments = segs, rows, bytes, "expired segments dropped");
        let mut d = BTreeMap::new();
        d.insert("segments".into(), segs.to_string());
        d.insert("rows".into(), rows.to_string());
        d.insert("bytes".into(), bytes.to_string());
        system_audit(s, "retention.sweep", ws.id, "segments".into(), d).await;
    }
    Ok(())
}

/// A rollup that could not be made (a damaged segment, a revoked key):
/// logged and audited; the days stay un-rolled-up and are tried again.
async fn rollup_failed(s: &AppState, ws: &Workspace, table: &TableName, e: &ServerError) {
    tracing::warn!(workspace = %ws.id, table = %table, error = %e, "rollup failed");
    let mut d = BTreeMap::new();
    d.insert("error".into(), e.to_string().chars().take(300).collect());
    system_audit(s, "rollup.failed", ws.id, table.as_str().into(), d).await;
}

/// Removes the objects of deletion records not yet done; returns (removed,
/// failed). A failure is logged and retried by the next pass.
pub async fn remove_objects(s: &AppState) -> Result<(u64, u64), ServerError> {
    let (mut removed, mut errors) = (0u64, 0u64);
    loop {
        let pending = s.catalog.pending_object_deletions(1000).await?;
        if pending.is_empty() {
            break;
        }
        let mut done = Vec::with_capacity(pending.len());
        for d in &pending {
            match s.storage.delete(&d.path).await {
                Ok(()) => done.push(d.seq),
                Err(e) => {
                    errors += 1;
                    tracing::warn!(workspace = %d.workspace_id, segment = %d.segment_id, error = %e, "segment object not removed; retried next pass");
                }
            }
        }
        removed += done.len() as u64;
        s.catalog.mark_objects_deleted(&done, s.clock.now()).await?;
        if done.len() < pending.len() {
            break;
        }
    }
    Ok((removed, errors))
}

/// Lock (or re-lock with a new reason).
pub async fn lock(s: &AppState, ws: WorkspaceId, reason: &str, by: Option<PrincipalId>) -> Result<WorkspaceLock, ServerError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 || reason.chars().any(char::is_control) {
        return Err(ServerError::BadRequest("lock reason must be 1 to 500 printable characters".into()));
    }
    let l = WorkspaceLock { reason: reason.into(), locked_at: s.clock.now(), locked_by: by };
    s.catalog.lock_workspace(ws, &l).await?;
    tracing::warn!(workspace = %ws, reason, "workspace locked");
    Ok(l)
}
