//! Workspace keys over the API: status, rotation (with the background
//! rewrap of every segment's data key), revocation and restore.
//!
//! A rotation makes a new key version current at once (every segment
//! sealed from then on uses it) and then rewraps the data key of each older
//! segment under it, one segment at a time: the header is rewritten, the
//! sealed body copied unchanged ([`custos_store::rewrap_segment`]), the
//! object replaced atomically. Older versions stay in the keystore (retired)
//! so a segment not yet rewrapped stays readable meanwhile; once the rewrap
//! is done, versions no segment is sealed under are destroyed
//! ([`forget_unused`]; the built-in keystore does, other providers keep
//! theirs).

use std::sync::Arc;

use custos_model::api::{KeyStatus, KeyVersionView};
use custos_model::WorkspaceId;
use custos_store::{KeyError, KeyState};

use crate::{AppState, ServerError};

fn key_error(e: KeyError) -> ServerError {
    match e {
        KeyError::Revoked { .. } => ServerError::Conflict(e.to_string()),
        // Deleted from the HSM, or the HSM unreachable: like a revocation,
        // until it is back.
        KeyError::Unavailable { .. } => ServerError::Unavailable(e.to_string()),
        KeyError::Provider { .. } | KeyError::Unknown { .. } => ServerError::BadRequest(e.to_string()),
        e => ServerError::Internal(e.to_string()),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, KeyError> + Send + 'static) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServerError::Internal(format!("key provider task: {e}")))?
        .map_err(key_error)
}

/// The key a segment is sealed under, read from its header alone (two
/// range reads: the preamble, then the header JSON); None for an unsealed
/// or unreadable one.
async fn seal_of(s: &AppState, path: &str) -> Result<Option<custos_store::KeyRef>, ServerError> {
    let pre = match s.storage.get_range(path, 0..12).await {
        Ok(b) => b,
        Err(custos_store::StoreError::RangeOutOfBounds { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let h = u64::from(u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]));
    let json = match s.storage.get_range(path, 12..12 + h).await {
        Ok(b) => b,
        Err(custos_store::StoreError::RangeOutOfBounds { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(serde_json::from_slice::<custos_store::SegmentHeader>(&json).ok().and_then(|h| h.seal).map(|x| x.key))
}

/// The key of every segment of `ws` (None: unsealed or unreadable).
async fn seal_keys(s: &AppState, ws: WorkspaceId) -> Result<Vec<Option<custos_store::KeyRef>>, ServerError> {
    let mut out = Vec::new();
    for table in s.catalog.list_tables(ws).await? {
        for seg in s.catalog.list_segments(ws, &table, None).await? {
            out.push(seal_of(s, &seg.path).await?);
        }
    }
    Ok(out)
}

/// The workspace's key versions and how many segments still wait for a
/// rewrap under the active one (reads every segment's header: O(segments)).
pub async fn status(s: &Arc<AppState>, ws: WorkspaceId) -> Result<KeyStatus, ServerError> {
    let keys = s.keys.clone();
    let versions = blocking(move || keys.versions(ws)).await?;
    let active = versions.iter().rev().find(|v| v.state == KeyState::Active).map(|v| v.key.clone());
    let seals = seal_keys(s, ws).await?;
    let segments = seals.len() as u64;
    let pending = seals.iter().filter(|k| **k != active).count() as u64;
    Ok(KeyStatus {
        workspace_id: ws,
        provider: s.keys.name(),
        versions: versions
            .into_iter()
            .map(|v| KeyVersionView {
                key_id: v.key.key_id,
                version: v.key.version,
                state: match v.state {
                    KeyState::Active => "active",
                    KeyState::Retired => "retired",
                    KeyState::Revoked => "revoked",
                }
                .into(),
                created_at: (v.created_at > 0).then(|| crate::api::rfc3339(v.created_at)),
            })
            .collect(),
        segments_pending_rewrap: pending,
        segments,
    })
}

/// Rewraps every segment of `ws` not yet under the current key; returns
/// how many were rewritten. A segment that fails (damaged, key refused) is
/// logged and skipped: it stays readable under its old version.
pub async fn rewrap_all(s: &Arc<AppState>, ws: WorkspaceId) -> Result<u64, ServerError> {
    let mut done = 0;
    for table in s.catalog.list_tables(ws).await? {
        for seg in s.catalog.list_segments(ws, &table, None).await? {
            let bytes = s.storage.get(&seg.path).await?;
            let keys = s.keys.clone();
            let res = tokio::task::spawn_blocking(move || custos_store::rewrap_segment(&bytes, keys.as_ref()))
                .await
                .map_err(|e| ServerError::Internal(format!("rewrap task: {e}")))?;
            match res {
                Ok(Some(new)) => {
                    s.storage.put(&seg.path, new).await?;
                    done += 1;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(workspace = %ws, segment = %seg.id, error = %e, "segment not rewrapped"),
            }
        }
    }
    Ok(done)
}

/// The key versions the workspace's segments are sealed under (reads every
/// segment's header).
async fn versions_in_use(s: &AppState, ws: WorkspaceId) -> Result<Vec<custos_store::KeyRef>, ServerError> {
    let mut used: Vec<custos_store::KeyRef> = Vec::new();
    for key in seal_keys(s, ws).await?.into_iter().flatten() {
        if !used.contains(&key) {
            used.push(key);
        }
    }
    Ok(used)
}

/// After a rewrap: destroys the retired versions no segment needs any more
/// (the provider decides; the built-in keystore does). Returns them.
pub async fn forget_unused(s: &AppState, ws: WorkspaceId) -> Result<Vec<custos_store::KeyRef>, ServerError> {
    let used = versions_in_use(s, ws).await?;
    let keys = s.keys.clone();
    let gone = blocking(move || keys.forget_unused(ws, &used)).await?;
    if !gone.is_empty() {
        let list: Vec<String> = gone.iter().map(|k| k.to_string()).collect();
        tracing::info!(workspace = %ws, versions = %list.join(", "), "key versions no data needs any more destroyed");
    }
    Ok(gone)
}

/// Makes a new key version current and starts rewrapping older segments
/// in the background; once every segment is rewrapped, the versions
/// nothing needs any more are destroyed.
pub async fn rotate(s: &Arc<AppState>, ws: WorkspaceId) -> Result<KeyStatus, ServerError> {
    let keys = s.keys.clone();
    let key = blocking(move || keys.rotate(ws)).await?;
    tracing::info!(workspace = %ws, key = %key, "workspace key rotated; rewrapping older segments");
    // The answer shows the moment of the rotation (the old version retired,
    // its segments pending), not whatever the background rewrap reached.
    let answer = status(s, ws).await?;
    let st = s.clone();
    tokio::spawn(async move {
        match rewrap_all(&st, ws).await {
            Ok(n) => {
                tracing::info!(workspace = %ws, segments = n, "rewrap finished");
                if let Err(e) = forget_unused(&st, ws).await {
                    tracing::warn!(workspace = %ws, error = %e, "unused key versions not destroyed");
                }
            }
            Err(e) => tracing::warn!(workspace = %ws, error = %e, "rewrap stopped"),
        }
    });
    Ok(answer)
}

/// Revokes (or restores) the workspace's keys. Before a revocation the
/// ingest buffers are flushed, so everything acknowledged is sealed under
/// the key first; from then on queries fail naming the revoked key and
/// ingest refuses the workspace's batches (503: agents keep them).
pub async fn set_revoked(s: &Arc<AppState>, ws: WorkspaceId, revoked: bool) -> Result<KeyStatus, ServerError> {
    if revoked {
        s.ingest.flush().await?;
    }
    let keys = s.keys.clone();
    blocking(move || keys.set_revoked(ws, revoked)).await?;
    tracing::warn!(workspace = %ws, revoked, "workspace keys {}", if revoked { "revoked" } else { "restored" });
    status(s, ws).await
}

/// Rotates the key of every workspace whose active version is at least
/// `encryption.rotate_after_days` old on the server's clock (and starts
/// their rewraps); returns those workspaces. Run hourly by the server;
/// providers that do not rotate (customer key files) are skipped.
pub async fn rotate_due(s: &Arc<AppState>) -> Result<Vec<WorkspaceId>, ServerError> {
    let days = s.config.encryption.rotate_after_days;
    if days == 0 {
        return Ok(Vec::new());
    }
    let max_age = i64::from(days) * 86_400 * 1_000_000;
    let now = s.clock.now();
    let mut rotated = Vec::new();
    for ws in s.catalog.list_workspaces().await? {
        let keys = s.keys.clone();
        let id = ws.id;
        let versions = blocking(move || keys.versions(id)).await?;
        let due = versions
            .last()
            .is_some_and(|v| v.state == KeyState::Active && v.created_at > 0 && now - v.created_at >= max_age);
        if due {
            match rotate(s, id).await {
                Ok(_) => rotated.push(id),
                Err(e) => tracing::warn!(workspace = %id, error = %e, "automatic key rotation failed"),
            }
        }
    }
    Ok(rotated)
}

/// Refuses a batch for a workspace whose key is revoked, or unavailable
/// (deleted from the HSM, the HSM unreachable): the agent keeps it and
/// retries.
pub fn check_writable(s: &AppState, ws: WorkspaceId) -> Result<(), ServerError> {
    match s.keys.versions(ws) {
        Ok(v) if v.last().is_some_and(|v| v.state == KeyState::Revoked) => {
            // The provider's own words name the key and why (revoked, or
            // deleted from the HSM).
            let why = match s.keys.current(ws) {
                Err(e) => e.to_string(),
                Ok(_) => "they are revoked".to_string(),
            };
            Err(ServerError::Unavailable(format!(
                "the keys of workspace {ws} are revoked: nothing can be stored until they are restored ({why})"
            )))
        }
        Err(e @ KeyError::Unavailable { .. }) => {
            Err(ServerError::Unavailable(format!("nothing can be stored for workspace {ws} until its key is back: {e}")))
        }
        _ => Ok(()),
    }
}
