//! Immutable export: a table's rows as segment files and a signed manifest
//! of their hashes.
//!
//! `POST /v1/workspaces/{id}/exports` stages the export on the server under
//! `<data_dir>/exports/<workspace>/<export id>/`: one file per stored
//! segment holding rows a query would see (expired rows and rows of
//! accepted purges left out), re-encoded **unsealed** (segment format
//! version 1, readable without custos's keys, CRC-checked), named
//! `<segment id>.cseg`, and `manifest.json`: every file's name, segment,
//! rows, size, SHA-256 and time range, signed with the server's Ed25519
//! key (`audit.pub`). The CLI downloads the files
//! (`GET .../exports/{export}/files/{name}`) into the target directory and
//! checks them; `custos export verify DIR` checks a directory at any time
//! later: the signature, every hash and size, no file missing or added,
//! and every segment decoding to the row count the manifest states.
//! Staged exports are removed after a day by the sweeper.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use custos_catalog::Workspace;
use custos_model::api::{ExportFile, ExportManifest, SignedManifest};
use custos_model::TableName;
use sha2::Digest;

use crate::api::rfc3339;
use crate::{AppState, ServerError};

/// The document kind export manifests are signed as.
pub const MANIFEST_KIND: &str = "export-manifest";
/// The manifest's file name.
pub const MANIFEST_FILE: &str = "manifest.json";
/// How long a staged export stays on the server.
pub const STAGED_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

fn exports_root(s: &AppState) -> PathBuf {
    s.config.data_dir.join("exports")
}

/// The staging directory of export `id` of workspace `ws` (ids are checked
/// to be UUIDs, so no path can be smuggled in).
pub fn staged_dir(s: &AppState, ws: custos_model::WorkspaceId, id: &str) -> Result<PathBuf, ServerError> {
    let id: uuid::Uuid = id.parse().map_err(|_| ServerError::NotFound(format!("export {id} not found")))?;
    Ok(exports_root(s).join(ws.to_string()).join(id.to_string()))
}

/// Whether `name` is a file an export may hold.
pub fn valid_file_name(name: &str) -> bool {
    name == MANIFEST_FILE
        || name.strip_suffix(".cseg").is_some_and(|stem| stem.parse::<custos_model::SegmentId>().is_ok())
}

fn io(what: &str, p: &Path, e: std::io::Error) -> ServerError {
    ServerError::io(format!("{what} {}", p.display()), e)
}

/// Stages an export of `table` (see the module docs).
pub async fn create(s: &Arc<AppState>, ws: &Workspace, table: &TableName) -> Result<SignedManifest, ServerError> {
    let now = s.clock.now();
    let id = uuid::Uuid::now_v7().to_string();
    let dir = staged_dir(s, ws.id, &id)?;
    std::fs::create_dir_all(&dir).map_err(|e| io("cannot create", &dir, e))?;
    let vis = crate::retention::visibility(s, ws, now).await?;
    let (cutoff, hidden) = (vis.cutoff(table), vis.hidden_in(table));
    let mut files = Vec::new();
    for seg in s.catalog.list_segments(ws.id, table, None).await? {
        if cutoff.is_some_and(|c| seg.max_time < c) {
            continue;
        }
        let bytes = s.storage.get(&seg.path).await?;
        let keys = s.keys.clone();
        let hidden = hidden.clone();
        let decoded = tokio::task::spawn_blocking(move || custos_store::decode_segment_with(&bytes, None, Some(keys.as_ref())))
            .await
            .map_err(|e| ServerError::Internal(format!("export task: {e}")))?;
        let d = match decoded {
            Ok(d) => d,
            Err(e) => {
                crate::query::note_integrity(s, &seg, &e).await;
                return Err(ServerError::Internal(format!("segment {} ({}): {e}", seg.id, seg.path)));
            }
        };
        let enc = tokio::task::spawn_blocking(move || -> Result<Option<custos_store::EncodedSegment>, ServerError> {
            let mut kept = Vec::with_capacity(d.batches.len());
            for b in &d.batches {
                let b = match cutoff {
                    Some(c) => crate::query::drop_before(b, c).map_err(|e| ServerError::Internal(e.to_string()))?,
                    None => b.clone(),
                };
                let b = crate::query::drop_hidden(&b, &hidden).map_err(|e| ServerError::Internal(e.to_string()))?;
                if b.num_rows() > 0 {
                    kept.push(b);
                }
            }
            if kept.is_empty() {
                return Ok(None);
            }
            let h = d.header;
            Ok(Some(custos_store::encode_batches(h.workspace_id, h.table, h.segment_id, h.columns, &kept, None)?))
        })
        .await
        .map_err(|e| ServerError::Internal(format!("export task: {e}")))??;
        let Some(enc) = enc else { continue };
        let name = format!("{}.cseg", seg.id);
        let path = dir.join(&name);
        std::fs::write(&path, &enc.bytes).map_err(|e| io("cannot write", &path, e))?;
        files.push(ExportFile {
            name,
            segment: seg.id,
            rows: enc.rows,
            bytes: enc.bytes.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(&enc.bytes)),
            min_time: rfc3339(enc.min_time),
            max_time: rfc3339(enc.max_time),
        });
    }
    let manifest = ExportManifest {
        format: "custos-export".into(),
        version: 1,
        export: id,
        workspace_id: ws.id,
        table: table.as_str().into(),
        created_at: rfc3339(now),
        rows: files.iter().map(|f| f.rows).sum(),
        files,
    };
    let doc = serde_json::to_vec(&manifest).map_err(|e| ServerError::Internal(format!("manifest json: {e}")))?;
    let signed = SignedManifest {
        signature: custos_audit::sign_document(&s.signer, MANIFEST_KIND, &doc),
        public_key: hex::encode(s.signer.verifying_key().as_bytes()),
        manifest,
    };
    let path = dir.join(MANIFEST_FILE);
    let text = serde_json::to_vec_pretty(&signed).map_err(|e| ServerError::Internal(format!("manifest json: {e}")))?;
    std::fs::write(&path, text).map_err(|e| io("cannot write", &path, e))?;
    tracing::info!(workspace = %ws.id, table = %table, export = %signed.manifest.export, files = signed.manifest.files.len(), rows = signed.manifest.rows, "export staged");
    Ok(signed)
}

/// Removes staged exports older than [`STAGED_TTL`]; returns how many.
pub fn remove_stale(s: &AppState) -> u64 {
    let mut n = 0;
    let Ok(workspaces) = std::fs::read_dir(exports_root(s)) else { return 0 };
    for ws in workspaces.flatten() {
        let Ok(exports) = std::fs::read_dir(ws.path()) else { continue };
        for e in exports.flatten() {
            let old = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age > STAGED_TTL);
            if old && std::fs::remove_dir_all(e.path()).is_ok() {
                n += 1;
            }
        }
    }
    n
}

/// What [`verify_dir`] found.
#[derive(Debug)]
pub struct Verified {
    /// The manifest.
    pub manifest: ExportManifest,
    /// Whether the signing key was checked against a key the caller gave
    /// (otherwise only against the key the manifest names).
    pub key_checked: bool,
}

/// Checks an export directory: the manifest's signature (with `key`, or
/// the key the manifest names when None), every file's size and SHA-256,
/// no file missing or added, and every segment decoding to the rows the
/// manifest states. The error names the first problem.
pub fn verify_dir(dir: &Path, key: Option<&custos_audit::VerifyingKey>) -> Result<Verified, String> {
    let mpath = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&mpath).map_err(|e| format!("cannot read {}: {e}", mpath.display()))?;
    let signed: SignedManifest = serde_json::from_str(&text).map_err(|e| format!("{} is not a signed export manifest: {e}", mpath.display()))?;
    let named = hex::decode(&signed.public_key)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| custos_audit::VerifyingKey::from_bytes(&b).ok())
        .ok_or("the manifest's public_key is not an ed25519 key")?;
    let k = key.unwrap_or(&named);
    let doc = serde_json::to_vec(&signed.manifest).map_err(|e| format!("manifest json: {e}"))?;
    custos_audit::verify_document(k, MANIFEST_KIND, &doc, &signed.signature).map_err(|e| format!("{}: {e}", mpath.display()))?;
    let m = signed.manifest;
    let mut listed: Vec<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
    listed.push(MANIFEST_FILE);
    let mut present: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    if let Some(extra) = present.iter().find(|p| !listed.contains(&p.as_str())) {
        return Err(format!("{} is not in the manifest", dir.join(extra).display()));
    }
    for f in &m.files {
        if !valid_file_name(&f.name) || f.name == MANIFEST_FILE {
            return Err(format!("the manifest names an invalid file {:?}", f.name));
        }
        let p = dir.join(&f.name);
        let bytes = std::fs::read(&p).map_err(|e| format!("{}: missing or unreadable: {e}", p.display()))?;
        if bytes.len() as u64 != f.bytes {
            return Err(format!("{}: {} bytes, the manifest says {}", p.display(), bytes.len(), f.bytes));
        }
        let hash = hex::encode(sha2::Sha256::digest(&bytes));
        if hash != f.sha256 {
            return Err(format!("{}: SHA-256 {hash} differs from the manifest's {}", p.display(), f.sha256));
        }
        let d = custos_store::decode_segment(&bytes).map_err(|e| format!("{}: {e}", p.display()))?;
        if d.header.rows != f.rows || d.header.segment_id != f.segment || d.header.workspace_id != m.workspace_id {
            return Err(format!("{}: its header does not match the manifest", p.display()));
        }
    }
    Ok(Verified { manifest: m, key_checked: key.is_some() })
}
