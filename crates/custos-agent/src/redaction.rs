//! Redaction on the host: the policy is loaded when the agent starts and
//! every event is redacted after the consent gate and before it enters
//! the queue, so raw personal data and secrets never reach the queue, the
//! transparency ledger or the wire (see `docs/REDACTION.md`).
//!
//! The policy, the pseudonym key and the map are the same for the agent
//! and for `custos redact` run on the same state directory, so both give
//! one value one pseudonym and `custos redact lookup` resolves both.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use custos_model::Event;
use custos_redact::{Outcome, Policy, Redactor, Session};

use crate::error::AgentError;
use crate::internal::Stats;
use crate::pseudomap::{self, PseudonymMap};

/// A policy file and the gitleaks rules it names, read from disk.
#[derive(Debug)]
pub struct LoadedPolicy {
    /// The validated policy.
    pub policy: Policy,
    /// The text of the policy's `gitleaks_rules` file, if it names one.
    pub gitleaks: Option<String>,
}

/// Reads and validates a policy file (`None`: the default policy). A
/// relative `gitleaks_rules` path is resolved against the policy file's
/// directory.
pub fn load_policy(path: Option<&Path>) -> Result<LoadedPolicy, AgentError> {
    let Some(path) = path else {
        return Ok(LoadedPolicy { policy: Policy::default_policy(), gitleaks: None });
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| AgentError::io(format!("cannot read redaction policy {}", path.display()), e))?;
    let policy = Policy::from_toml(&text).map_err(|e| AgentError::Invalid(format!("{}: {e}", path.display())))?;
    let gitleaks = match &policy.gitleaks_rules {
        Some(rel) => {
            let p = PathBuf::from(rel);
            let p = if p.is_relative() { path.parent().unwrap_or(Path::new(".")).join(p) } else { p };
            Some(
                std::fs::read_to_string(&p)
                    .map_err(|e| AgentError::io(format!("cannot read gitleaks rules {} (named by {})", p.display(), path.display()), e))?,
            )
        }
        None => None,
    };
    Ok(LoadedPolicy { policy, gitleaks })
}

/// Builds the redactor for a state directory: the policy, and the
/// installation's pseudonym key (made on first use).
pub fn build(state_dir: &Path, loaded: LoadedPolicy) -> Result<Redactor, AgentError> {
    let key = if loaded.policy.uses_pseudonyms() {
        Some(pseudomap::load_or_create_key(state_dir).map_err(|e| AgentError::Invalid(e.to_string()))?)
    } else {
        None
    };
    Redactor::new(loaded.policy, loaded.gitleaks.as_deref(), key.as_ref()).map_err(|e| AgentError::Invalid(format!("redaction policy: {e}")))
}

/// Redacts events in place (dropping those the policy drops), records new
/// pseudonyms in the map before the events can be queued, and adds the
/// counts to `stats`. A map that cannot be written (a full disk) keeps the
/// entries for the next call; the events are redacted either way.
pub fn redact_events(session: &mut Session, events: &mut Vec<Event>, map: &Mutex<PseudonymMap>, pending: &mut Vec<(String, String)>, stats: &Stats) {
    events.retain_mut(|e| session.redact_event(e));
    let mut outcome: Outcome = session.take_outcome();
    pending.append(&mut outcome.new_pseudonyms);
    let mut map_failed = false;
    if !pending.is_empty() {
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        match m.record(pending) {
            Ok(_) => pending.clear(),
            Err(e) => {
                map_failed = true;
                tracing::warn!(error = %e, entries = pending.len(), "cannot record pseudonyms; retried with the next batch");
            }
        }
    }
    if outcome.total() > 0 || outcome.fields_dropped > 0 || outcome.events_dropped > 0 || map_failed {
        stats.update(|c| {
            for (k, v) in &outcome.redacted {
                *c.redacted_by_entity.entry(k.clone()).or_default() += v;
            }
            c.redaction_fields_dropped += outcome.fields_dropped;
            c.redaction_events_dropped += outcome.events_dropped;
            c.pseudonym_map_failures += u64::from(map_failed);
        });
    }
}

/// What the run loop keeps for redaction.
#[derive(Clone, Debug)]
pub struct HostRedaction {
    /// The redactor, shared by every collector.
    pub redactor: Arc<Redactor>,
    /// The pseudonym map.
    pub map: Arc<Mutex<PseudonymMap>>,
}

impl HostRedaction {
    /// Loads the policy named by the configuration and opens the map.
    pub fn open(state_dir: &Path, settings: &crate::config::RedactionSettings) -> Result<Self, AgentError> {
        let loaded = load_policy(settings.policy_file.as_deref())?;
        let redactor = Arc::new(build(state_dir, loaded)?);
        let map = PseudonymMap::open(state_dir).map_err(|e| AgentError::Invalid(e.to_string()))?;
        Ok(HostRedaction { redactor, map: Arc::new(Mutex::new(map)) })
    }
}
