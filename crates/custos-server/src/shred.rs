//! Deleting a workspace: its keys first (crypto-shredding), then its bytes.
//!
//! [`delete_workspace`], in order:
//!
//! 1. **Tombstone** (one catalog transaction, refused while the workspace
//!    is locked): no lookup finds the workspace any more, so every route
//!    answers 404 and every agent of it is refused; its agents and
//!    enrollment keys are revoked, its pseudonym key forgotten, its pending
//!    retention changes and purges cancelled.
//! 2. **Flush** the ingest buffers, so rows acknowledged before the
//!    tombstone are sealed and registered (and then removed below) rather
//!    than written after the keys are gone.
//! 3. **Destroy the keys** (`KeyProvider::destroy`): from this moment no
//!    byte of the workspace can be decrypted, wherever a copy lies. A
//!    provider that cannot destroy keys stops the deletion here, with the
//!    error, before it claims anything it did not do.
//! 4. **Remove the bytes**: every segment leaves the catalog with a deletion
//!    record (reason `workspace`) and its object is removed; then anything
//!    left under the workspace's prefix in storage.
//! 5. **Report**: counts and times, returned and written to the audit log
//!    (`workspace.deleted`).
//!
//! A crash after step 1 is finished by the sweeper (it resumes every
//! tombstoned workspace whose bytes remain); steps 3 and 4 are idempotent.

use std::collections::BTreeMap;
use std::sync::Arc;

use custos_catalog::DeletionReason;
use custos_model::api::WorkspaceDeletionReport;
use custos_model::WorkspaceId;

use crate::api::rfc3339;
use crate::{AppState, ServerError};

/// Deletes workspace `ws` (see the module docs).
pub async fn delete_workspace(s: &Arc<AppState>, ws: WorkspaceId) -> Result<WorkspaceDeletionReport, ServerError> {
    s.catalog.delete_workspace(ws, s.clock.now()).await?;
    tracing::warn!(workspace = %ws, "workspace deleted: shredding its keys, then removing its bytes");
    finish(s, ws).await
}

/// Steps 2 to 5 for a tombstoned workspace.
pub async fn finish(s: &Arc<AppState>, ws: WorkspaceId) -> Result<WorkspaceDeletionReport, ServerError> {
    s.ingest.flush().await?;
    let keys = s.keys.clone();
    tokio::task::spawn_blocking(move || keys.destroy(ws))
        .await
        .map_err(|e| ServerError::Internal(format!("key provider task: {e}")))?
        .map_err(|e| ServerError::Internal(format!("the keys of workspace {ws} could not be destroyed, so nothing else was deleted: {e}")))?;
    let keys_destroyed_at = s.clock.now();
    let mut report = WorkspaceDeletionReport {
        workspace_id: ws,
        keys_destroyed_at: rfc3339(keys_destroyed_at),
        segments_deleted: 0,
        rows_deleted: 0,
        bytes_deleted: 0,
        objects_removed: 0,
        completed_at: String::new(),
    };
    for table in s.catalog.list_tables(ws).await? {
        let ids: Vec<_> = s.catalog.list_segments(ws, &table, None).await?.into_iter().map(|x| x.id).collect();
        for d in s.catalog.delete_segments(ws, &ids, DeletionReason::Workspace, s.clock.now()).await? {
            report.segments_deleted += 1;
            report.rows_deleted += d.rows;
            report.bytes_deleted += d.bytes;
        }
    }
    let (removed, errors) = crate::retention::remove_objects(s).await?;
    report.objects_removed = removed;
    // Anything else under the workspace's prefix (an object a crash left
    // unregistered): unreadable already, removed all the same.
    for o in s.storage.list(&custos_store::workspace_prefix(ws)).await? {
        s.storage.delete(&o.path).await?;
        report.objects_removed += 1;
    }
    if errors > 0 {
        return Err(ServerError::Unavailable(format!(
            "workspace {ws}: keys destroyed, {errors} objects not yet removed from storage (retried by the sweeper)"
        )));
    }
    report.completed_at = rfc3339(s.clock.now());
    s.governance.workspaces_deleted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut d = BTreeMap::new();
    d.insert("keys_destroyed_at".into(), report.keys_destroyed_at.clone());
    d.insert("segments".into(), report.segments_deleted.to_string());
    d.insert("rows".into(), report.rows_deleted.to_string());
    d.insert("bytes".into(), report.bytes_deleted.to_string());
    crate::retention::system_audit(s, "workspace.deleted", ws, ws.to_string(), d).await;
    tracing::warn!(workspace = %ws, segments = report.segments_deleted, rows = report.rows_deleted, "workspace deletion complete");
    Ok(report)
}

/// Finishes deletions a crash interrupted (tombstoned workspaces with
/// segments left); returns how many were finished.
pub async fn resume(s: &Arc<AppState>) -> Result<u64, ServerError> {
    let mut n = 0;
    for (ws, _) in s.catalog.deleted_workspaces().await? {
        if s.catalog.list_tables(ws).await?.is_empty() && s.storage.list(&custos_store::workspace_prefix(ws)).await?.is_empty() {
            continue;
        }
        finish(s, ws).await?;
        n += 1;
    }
    Ok(n)
}
