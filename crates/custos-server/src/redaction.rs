//! The redaction backstop (issue 6): the same engine as the agent's
//! (`custos-redact`), run on every event at ingest under the workspace's
//! own policy, so that personal data and secrets an agent let through (an
//! old agent, a misconfigured one, a lying one) are removed before anything
//! is stored.
//!
//! - **Policy per workspace**, in the catalog ([`Catalog::redaction_policy`]):
//!   TOML in the engine's format, validated by [`validate`] before it is
//!   stored; none set means the engine's default policy (no card number,
//!   secret, password or e-mail address is stored).
//! - **A pseudonym key per workspace**: 32 random bytes drawn on first use
//!   and kept in the catalog ([`Catalog::redaction_key`]), so pseudonyms the
//!   server makes are stable across restarts and nodes, and differ between
//!   workspaces. It never prints ([`custos_model::Secret`],
//!   [`PseudonymKey`]). The server keeps **no pseudonym map**: the map
//!   (token → original) stays on the hosts, which saw the original values;
//!   a value that reaches the server and is pseudonymised there cannot be
//!   looked up by anyone.
//! - **One redactor per workspace**, cached ([`Backstop::redactor`]): each
//!   batch reads the policy's revision (one primary-key lookup) and the
//!   redactor is rebuilt only when it changed, so a new policy applies to
//!   every batch received after the change is answered, on every node.
//! - **Fails closed**: a stored policy this build cannot use (it passed an
//!   older build's validation) refuses the workspace's batches with 503
//!   (agents keep them and retry) rather than storing them under a weaker
//!   policy.
//! - **Tenant policies name no files**: `detect.gitleaks_rules` (a path the
//!   agent reads) is refused in a workspace policy; the server runs the
//!   built-in secret rules.
//!
//! What the redactor removed is counted per (table, entity) in the batch's
//! ingest-log record and committed with the batch (see `ingest`), and
//! counted for `/metrics` by entity.

use crate::ServerError;
use custos_catalog::Catalog;
use custos_model::{Secret, WorkspaceId};
use custos_redact::{Policy, PseudonymKey, Redactor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Why a policy cannot be a workspace's redaction policy: the engine's own
/// message, or the server's rule it breaks.
pub fn validate(toml: &str) -> Result<Policy, String> {
    let policy = Policy::from_toml(toml).map_err(|e| e.to_string())?;
    if let Some(path) = &policy.gitleaks_rules {
        return Err(format!(
            "redaction policy: detect.gitleaks_rules ({path:?}) is not allowed in a workspace policy: \
             the server reads no files named by a workspace (it runs the built-in secret rules)"
        ));
    }
    // Building finds what parsing alone does not (it must not fail with a key
    // and no rule file, but an engine update could add checks).
    Redactor::new(policy.clone(), None, Some(&PseudonymKey::new([0; 32]))).map_err(|e| format!("redaction policy: {e}"))?;
    Ok(policy)
}

/// The policy a stored record means: its text, or the default.
fn policy_of(toml: Option<&str>) -> Result<Policy, String> {
    match toml {
        None => Ok(Policy::default_policy()),
        Some(t) => validate(t),
    }
}

struct Cached {
    revision: u64,
    redactor: Arc<Redactor>,
}

/// The per-workspace redactors, built from the catalog and cached.
pub struct Backstop {
    catalog: Arc<dyn Catalog>,
    cache: Mutex<HashMap<WorkspaceId, Cached>>,
}

impl std::fmt::Debug for Backstop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backstop").finish_non_exhaustive()
    }
}

impl Backstop {
    /// Redactors over `catalog`'s policies and keys.
    pub fn new(catalog: Arc<dyn Catalog>) -> Self {
        Backstop { catalog, cache: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<WorkspaceId, Cached>> {
        // A poisoned lock only means a panic while inserting or reading one
        // entry; the map itself is still consistent.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The redactor for the policy `ws` has now: cached while the policy's
    /// revision is unchanged, otherwise built (off the async threads) and
    /// cached. A stored policy this build cannot use is
    /// [`ServerError::Unavailable`] (fail closed).
    pub async fn redactor(&self, ws: WorkspaceId) -> Result<Arc<Redactor>, ServerError> {
        let stored = self.catalog.redaction_policy(ws).await?;
        if let Some(c) = self.lock().get(&ws) {
            if c.revision == stored.revision {
                return Ok(c.redactor.clone());
            }
        }
        let key = self.key(ws).await?;
        let toml = stored.toml.clone();
        let built = tokio::task::spawn_blocking(move || {
            let policy = policy_of(toml.as_deref())?;
            Redactor::new(policy, None, Some(&key)).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| ServerError::Internal(format!("redactor build task: {e}")))?;
        let redactor = match built {
            Ok(r) => Arc::new(r),
            Err(e) => {
                tracing::error!(workspace = %ws, revision = stored.revision, error = %e, "workspace redaction policy unusable; refusing its batches");
                return Err(ServerError::Unavailable(format!(
                    "the workspace's redaction policy (revision {}) cannot be used by this server ({e}); \
                     nothing of this batch was stored; a workspace owner must set a valid policy",
                    stored.revision
                )));
            }
        };
        tracing::info!(workspace = %ws, revision = stored.revision, custom = stored.toml.is_some(), "redactor built");
        let mut cache = self.lock();
        // A concurrent build of a newer revision wins.
        match cache.get(&ws) {
            Some(c) if c.revision > stored.revision => Ok(c.redactor.clone()),
            _ => {
                cache.insert(ws, Cached { revision: stored.revision, redactor: redactor.clone() });
                Ok(redactor)
            }
        }
    }

    /// The workspace's pseudonym key (drawn and stored on first use).
    async fn key(&self, ws: WorkspaceId) -> Result<PseudonymKey, ServerError> {
        use rand::RngCore;
        let mut candidate = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut candidate);
        let key: Secret<[u8; 32]> = self.catalog.redaction_key(ws, Secret::new(candidate)).await?;
        Ok(PseudonymKey::new(*key.expose()))
    }

    /// Forget a workspace's redactor (after its policy changed here; other
    /// nodes notice the new revision at their next batch).
    pub fn invalidate(&self, ws: WorkspaceId) {
        self.lock().remove(&ws);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_passes_the_engines_message_and_refuses_rule_files() {
        assert!(validate("").is_ok());
        assert!(validate("[operators]\nCREDIT_CARD = \"drop_event\"\n").is_ok());
        let e = validate("[operators]\nCREDIT_CARD = \"shred\"\n").unwrap_err();
        assert!(e.contains("unknown operator `shred`"), "{e}");
        let e = validate("version = 2").unwrap_err();
        assert!(e.contains("version 2"), "{e}");
        let e = validate("[detect]\ngitleaks_rules = \"/etc/shadow\"\n").unwrap_err();
        assert!(e.contains("gitleaks_rules") && e.contains("reads no files"), "{e}");
        assert!(policy_of(None).is_ok());
    }
}
