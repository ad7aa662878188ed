//! Telemetry settings: where the effective level, telemetry switch and usage
//! switch come from, the operator's local changes, and the managed policy.
//!
//! # Precedence
//!
//! Each of the three settings (`level`, `enabled`, `usage`) is taken from the
//! first layer that sets it:
//!
//! 1. **policy**: the managed policy file (default
//!    [`DEFAULT_POLICY_FILE`], `telemetry.policy_file` in the agent config).
//!    It overrides everything, as group policy overrides a registry value;
//!    a local change to a key the policy sets is refused
//!    ([`SettingsError::RefusedByPolicy`]).
//! 2. **local**: what the operator set with `custos telemetry level|enable|
//!    disable` or `custos usage enable|disable`, persisted in
//!    `<state_dir>/settings.json`.
//! 3. **config**: the `[telemetry]` section of the agent configuration file.
//! 4. **default**: level enhanced, telemetry enabled, usage enabled.
//!
//! [`resolve`] is the pure function that applies these rules; every
//! effective value carries its [`Origin`].
//!
//! # The managed policy file (TOML)
//!
//! ```toml
//! [telemetry]          # optional; every key in it is optional
//! level = "basic"      # a name (security, basic, enhanced, full) or 0-3
//! enabled = true       # telemetry on or off
//! usage = false        # usage (billing) reporting on or off
//! ```
//!
//! Unknown sections or keys are refused. The file is re-read every
//! `telemetry.policy_reload_secs` seconds ([`watch_policy`]) and before every
//! local change, so an edited policy takes effect without a restart.
//!
//! - A **missing** file means no policy: nothing is enforced.
//! - A file that **exists but cannot be used** (unreadable, not a regular
//!   file, larger than [`MAX_POLICY_BYTES`], not valid TOML, an unknown key,
//!   a bad value) **fails closed**: telemetry is disabled (origin `policy`)
//!   and [`Effective::policy_error`] says why, until the file is fixed or
//!   removed. The level and the usage switch keep their non-policy values
//!   (usage reporting is independent of telemetry).
//!
//! # `settings.json` (local settings), format version 1
//!
//! ```json
//! {"version": 1, "level": 1, "enabled": false, "usage": true}
//! ```
//!
//! `version` is required and must be 1; `level` (0-3), `enabled` and `usage`
//! are present only when the operator set them locally. Unknown fields are
//! refused. The file is written atomically (temporary file, fsync, rename,
//! fsync of the directory) with mode 0600; a change is persisted before it
//! is published to the running agent.

use crate::config::TelemetrySettings;
use custos_model::Level;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Default path of the managed policy file.
pub const DEFAULT_POLICY_FILE: &str = "/etc/custos/policy.toml";
/// Default interval between two reads of the policy file, in seconds.
pub const DEFAULT_POLICY_RELOAD_SECS: u64 = 5;
/// Name of the local settings file inside the state directory.
pub const SETTINGS_FILE: &str = "settings.json";
/// Current format version of `settings.json`.
pub const SETTINGS_VERSION: u32 = 1;
/// A policy file larger than this is refused (and fails closed).
pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;
/// A `settings.json` larger than this is refused.
const MAX_SETTINGS_BYTES: u64 = 1024 * 1024;

/// Where an effective value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The built-in default.
    Default,
    /// The `[telemetry]` section of the agent configuration file.
    Config,
    /// Set locally by the operator (`settings.json`).
    Local,
    /// The managed policy file.
    Policy,
}

impl Origin {
    /// The lowercase name (`default`, `config`, `local`, `policy`).
    pub fn name(self) -> &'static str {
        match self {
            Origin::Default => "default",
            Origin::Config => "config",
            Origin::Local => "local",
            Origin::Policy => "policy",
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A value and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// The layer that set it.
    pub origin: Origin,
}

/// The settings in force, each with its origin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effective {
    /// The consent level (serialised as its number 0-3).
    pub level: Sourced<Level>,
    /// Whether telemetry is collected and uploaded at all.
    pub enabled: Sourced<bool>,
    /// Whether usage (billing) records are reported; independent of
    /// `enabled` and `level`.
    pub usage: Sourced<bool>,
    /// The managed policy file consulted.
    pub policy_file: PathBuf,
    /// Why the policy file exists but cannot be used (telemetry is then
    /// disabled by policy); `None` when it is absent or valid.
    pub policy_error: Option<String>,
}

/// The values one layer sets; `None` leaves the key to the next layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layer {
    /// The consent level.
    pub level: Option<Level>,
    /// The telemetry switch.
    pub enabled: Option<bool>,
    /// The usage switch.
    pub usage: Option<bool>,
}

impl Layer {
    /// The layer the `[telemetry]` section of the agent config sets.
    pub fn from_config(t: &TelemetrySettings) -> Layer {
        Layer { level: t.level, enabled: t.enabled, usage: t.usage }
    }
}

/// What the managed policy file currently says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyState {
    /// No file: no policy.
    Absent,
    /// A valid file and the keys it sets.
    Loaded(Layer),
    /// The file exists but cannot be used (why); telemetry fails closed.
    Invalid(String),
}

impl PolicyState {
    /// The values the policy enforces: its keys, or `enabled = false` alone
    /// when the file is invalid (fail closed).
    pub fn enforced(&self) -> Layer {
        match self {
            PolicyState::Absent => Layer::default(),
            PolicyState::Loaded(l) => *l,
            PolicyState::Invalid(_) => Layer { enabled: Some(false), ..Layer::default() },
        }
    }
}

/// The managed policy: its path and what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The policy file.
    pub file: PathBuf,
    /// Its state when last read.
    pub state: PolicyState,
}

fn pick<T: Copy>(policy: Option<T>, local: Option<T>, config: Option<T>, default: T) -> Sourced<T> {
    if let Some(value) = policy {
        Sourced { value, origin: Origin::Policy }
    } else if let Some(value) = local {
        Sourced { value, origin: Origin::Local }
    } else if let Some(value) = config {
        Sourced { value, origin: Origin::Config }
    } else {
        Sourced { value: default, origin: Origin::Default }
    }
}

/// The effective settings: policy > local > config > default, per key
/// (pure; see the module documentation).
pub fn resolve(config: &Layer, local: &Layer, policy: &Policy) -> Effective {
    let pol = policy.state.enforced();
    Effective {
        level: pick(pol.level, local.level, config.level, Level::default()),
        enabled: pick(pol.enabled, local.enabled, config.enabled, true),
        usage: pick(pol.usage, local.usage, config.usage, true),
        policy_file: policy.file.clone(),
        policy_error: match &policy.state {
            PolicyState::Invalid(e) => Some(e.clone()),
            _ => None,
        },
    }
}

/// Settings could not be changed, read or saved.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The managed policy sets this key to another value.
    #[error(
        "refused by policy: telemetry `{key}` is set to {policy_value} by the managed policy file {}, \
         which overrides local settings; change it there (or ask whoever manages it)",
        .policy_file.display()
    )]
    RefusedByPolicy {
        /// The key: `level`, `enabled` or `usage`.
        key: &'static str,
        /// The policy file.
        policy_file: PathBuf,
        /// The value the policy sets, e.g. `1 (basic)` or `false`.
        policy_value: String,
    },
    /// Telemetry is disabled because the policy file cannot be used; it
    /// cannot be enabled locally until the file is fixed or removed.
    #[error(
        "refused by policy: telemetry stays disabled because the managed policy file {} cannot be used ({reason}); \
         fix or remove that file",
        .policy_file.display()
    )]
    PolicyInvalid {
        /// The policy file.
        policy_file: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// `settings.json` exists but cannot be read or is invalid.
    #[error("local settings file {}: {reason}", .path.display())]
    LocalFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `settings.json` could not be written (the change was not applied).
    #[error("cannot save local settings to {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A background file task failed.
    #[error("settings task failed: {0}")]
    Task(String),
}

// ---------------------------------------------------------------------------
// The policy file.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    telemetry: Option<RawPolicyTelemetry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicyTelemetry {
    level: Option<toml::Value>,
    enabled: Option<bool>,
    usage: Option<bool>,
}

/// Parse the text of a policy file into the keys it sets (pure). The error
/// names what is wrong.
pub fn parse_policy(text: &str) -> Result<Layer, String> {
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        // One line, with the position (toml's own rendering spans lines).
        let msg = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        match e.span() {
            Some(span) => {
                let before = &text.as_bytes()[..span.start.min(text.len())];
                let line = before.iter().filter(|b| **b == b'\n').count() + 1;
                let col = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
                format!("invalid policy at line {line}, column {col}: {msg}")
            }
            None => format!("invalid policy: {msg}"),
        }
    })?;
    let Some(t) = raw.telemetry else {
        return Ok(Layer::default());
    };
    let level = match t.level {
        None => None,
        Some(toml::Value::String(s)) => Some(s.parse::<Level>().map_err(|e| format!("telemetry.level: {e}"))?),
        Some(toml::Value::Integer(n)) => {
            Some(u8::try_from(n).ok().and_then(|n| Level::try_from(n).ok()).ok_or_else(|| {
                format!("telemetry.level: invalid level {n}: expected 0-3 or security, basic, enhanced, full")
            })?)
        }
        Some(other) => {
            return Err(format!("telemetry.level: expected a level name or a number 0-3, found a {}", other.type_str()))
        }
    };
    Ok(Layer { level, enabled: t.enabled, usage: t.usage })
}

/// Read the policy file. A missing file is [`PolicyState::Absent`]; any other
/// failure is [`PolicyState::Invalid`] (fail closed).
pub fn load_policy(path: &Path) -> PolicyState {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return PolicyState::Absent,
        Err(e) => return PolicyState::Invalid(format!("cannot read it: {e}")),
    };
    if !meta.is_file() {
        return PolicyState::Invalid("it is not a regular file".into());
    }
    let mut text = String::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(MAX_POLICY_BYTES + 1).read_to_string(&mut text));
    match read {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => PolicyState::Absent,
        Err(e) => PolicyState::Invalid(format!("cannot read it: {e}")),
        Ok(n) if n as u64 > MAX_POLICY_BYTES => {
            PolicyState::Invalid(format!("it is larger than {MAX_POLICY_BYTES} bytes"))
        }
        Ok(_) => match parse_policy(&text) {
            Ok(l) => PolicyState::Loaded(l),
            Err(e) => PolicyState::Invalid(e),
        },
    }
}

// ---------------------------------------------------------------------------
// settings.json.

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    level: Option<Level>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage: Option<bool>,
}

/// The path of `settings.json` in a state directory.
pub fn settings_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SETTINGS_FILE)
}

/// Read the local settings; a missing file sets nothing.
pub fn load_local(path: &Path) -> Result<Layer, SettingsError> {
    let bad = |reason: String| SettingsError::LocalFile { path: path.to_path_buf(), reason };
    let mut bytes = Vec::new();
    match std::fs::File::open(path).and_then(|f| f.take(MAX_SETTINGS_BYTES + 1).read_to_end(&mut bytes)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Layer::default()),
        Err(e) => return Err(bad(format!("cannot read it: {e}"))),
        Ok(n) if n as u64 > MAX_SETTINGS_BYTES => {
            return Err(bad(format!("it is larger than {MAX_SETTINGS_BYTES} bytes")))
        }
        Ok(_) => {}
    }
    let f: SettingsFile =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid: {e} (fix or remove the file)")))?;
    if f.version != SETTINGS_VERSION {
        return Err(bad(format!("unsupported version {} (this agent reads version {SETTINGS_VERSION})", f.version)));
    }
    Ok(Layer { level: f.level, enabled: f.enabled, usage: f.usage })
}

/// Write the local settings atomically (mode 0600), creating the state
/// directory (mode 0700) if needed.
pub fn save_local(path: &Path, local: &Layer) -> Result<(), SettingsError> {
    let err = |source| SettingsError::Write { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err)?;
    }
    let f = SettingsFile { version: SETTINGS_VERSION, level: local.level, enabled: local.enabled, usage: local.usage };
    let mut json = serde_json::to_vec_pretty(&f).map_err(|e| err(std::io::Error::other(e)))?;
    json.push(b'\n');
    crate::fsutil::write_atomic(path, &json, 0o600).map_err(err)
}

// ---------------------------------------------------------------------------
// The live handle.

/// One local change.
#[derive(Clone, Copy, Debug)]
enum Change {
    Level(Level),
    Enabled(bool),
    Usage(bool),
}

fn level_text(l: Level) -> String {
    format!("{} ({l})", u8::from(l))
}

impl Change {
    /// Refuse the change when the policy enforces another value for its key.
    fn check(self, policy: &Policy) -> Result<(), SettingsError> {
        let enforced = policy.state.enforced();
        let refused =
            |key, policy_value| SettingsError::RefusedByPolicy { key, policy_file: policy.file.clone(), policy_value };
        match self {
            Change::Level(l) => match enforced.level {
                Some(p) if p != l => Err(refused("level", level_text(p))),
                _ => Ok(()),
            },
            Change::Enabled(b) => match (enforced.enabled, &policy.state) {
                (Some(p), PolicyState::Invalid(reason)) if p != b => {
                    Err(SettingsError::PolicyInvalid { policy_file: policy.file.clone(), reason: reason.clone() })
                }
                (Some(p), _) if p != b => Err(refused("enabled", p.to_string())),
                _ => Ok(()),
            },
            Change::Usage(b) => match enforced.usage {
                Some(p) if p != b => Err(refused("usage", p.to_string())),
                _ => Ok(()),
            },
        }
    }

    fn apply(self, local: &mut Layer) {
        match self {
            Change::Level(l) => local.level = Some(l),
            Change::Enabled(b) => local.enabled = Some(b),
            Change::Usage(b) => local.usage = Some(b),
        }
    }
}

struct State {
    local: Layer,
    policy: Policy,
}

struct Inner {
    settings_path: PathBuf,
    config: Layer,
    state: tokio::sync::Mutex<State>,
    tx: watch::Sender<Effective>,
}

/// The live telemetry settings of an agent: config values, local values,
/// the policy, and a watch channel publishing the [`Effective`] settings
/// whenever they change. Cheap to clone; all clones share one state.
///
/// Changes are serialised (one at a time); a local change re-reads the
/// policy, is checked against it, persisted to `settings.json`, and only
/// then published.
#[derive(Clone)]
pub struct SettingsHandle {
    inner: Arc<Inner>,
}

impl fmt::Debug for SettingsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SettingsHandle")
            .field("settings_path", &self.inner.settings_path)
            .field("effective", &*self.inner.tx.borrow())
            .finish()
    }
}

impl SettingsHandle {
    /// Load the local settings from `<state_dir>/settings.json` and the
    /// policy from `telemetry.policy_file`, and resolve them with the
    /// config's `[telemetry]` values. Reads files (call at start-up, or from
    /// a blocking context).
    pub fn open(state_dir: &Path, telemetry: &TelemetrySettings) -> Result<SettingsHandle, SettingsError> {
        let settings_path = settings_path(state_dir);
        let local = load_local(&settings_path)?;
        let policy = Policy { file: telemetry.policy_file.clone(), state: load_policy(&telemetry.policy_file) };
        let config = Layer::from_config(telemetry);
        if let PolicyState::Invalid(e) = &policy.state {
            tracing::warn!(policy_file = %policy.file.display(), error = %e, "managed policy file cannot be used: telemetry is disabled until it is fixed");
        }
        let (tx, _) = watch::channel(resolve(&config, &local, &policy));
        Ok(SettingsHandle {
            inner: Arc::new(Inner {
                settings_path,
                config,
                state: tokio::sync::Mutex::new(State { local, policy }),
                tx,
            }),
        })
    }

    /// The settings in force now.
    pub fn effective(&self) -> Effective {
        self.inner.tx.borrow().clone()
    }

    /// A receiver that sees every published change of the effective settings.
    pub fn subscribe(&self) -> watch::Receiver<Effective> {
        self.inner.tx.subscribe()
    }

    /// The path of `settings.json`.
    pub fn settings_path(&self) -> &Path {
        &self.inner.settings_path
    }

    /// Set the consent level locally.
    pub async fn set_level(&self, level: Level) -> Result<Effective, SettingsError> {
        self.change(Change::Level(level)).await
    }

    /// Turn telemetry on or off locally.
    pub async fn set_enabled(&self, enabled: bool) -> Result<Effective, SettingsError> {
        self.change(Change::Enabled(enabled)).await
    }

    /// Turn usage reporting on or off locally.
    pub async fn set_usage(&self, enabled: bool) -> Result<Effective, SettingsError> {
        self.change(Change::Usage(enabled)).await
    }

    /// Re-read the policy file and publish the effective settings if they
    /// changed. Returns the settings now in force.
    pub async fn reload_policy(&self) -> Effective {
        let mut state = self.inner.state.lock().await;
        let file = state.policy.file.clone();
        let policy = read_policy(file).await;
        self.install_policy(&mut state, policy);
        self.publish(&state)
    }

    async fn change(&self, change: Change) -> Result<Effective, SettingsError> {
        let mut state = self.inner.state.lock().await;
        // Check against the policy as it is now, not as last polled.
        let policy = read_policy(state.policy.file.clone()).await;
        self.install_policy(&mut state, policy);
        if let Err(e) = change.check(&state.policy) {
            self.publish(&state);
            return Err(e);
        }
        let mut local = state.local;
        change.apply(&mut local);
        if local != state.local {
            let path = self.inner.settings_path.clone();
            tokio::task::spawn_blocking(move || save_local(&path, &local))
                .await
                .map_err(|e| SettingsError::Task(e.to_string()))??;
            state.local = local;
            tracing::info!(?change, "telemetry setting changed locally");
        }
        Ok(self.publish(&state))
    }

    fn install_policy(&self, state: &mut State, new: PolicyState) {
        if state.policy.state == new {
            return;
        }
        match &new {
            PolicyState::Invalid(e) => {
                tracing::warn!(policy_file = %state.policy.file.display(), error = %e, "managed policy file cannot be used: telemetry is disabled until it is fixed")
            }
            PolicyState::Loaded(_) => {
                tracing::info!(policy_file = %state.policy.file.display(), "managed policy loaded")
            }
            PolicyState::Absent => {
                tracing::info!(policy_file = %state.policy.file.display(), "managed policy file removed")
            }
        }
        state.policy.state = new;
    }

    /// Resolve and publish if different; returns the settings in force.
    fn publish(&self, state: &State) -> Effective {
        let eff = resolve(&self.inner.config, &state.local, &state.policy);
        self.inner.tx.send_if_modified(|cur| {
            if *cur == eff {
                false
            } else {
                *cur = eff.clone();
                true
            }
        });
        eff
    }
}

async fn read_policy(file: PathBuf) -> PolicyState {
    let shown = file.display().to_string();
    tokio::task::spawn_blocking(move || load_policy(&file))
        .await
        .unwrap_or_else(|e| PolicyState::Invalid(format!("reading {shown} failed: {e}")))
}

/// Re-read the policy every `interval` (see [`DEFAULT_POLICY_RELOAD_SECS`])
/// so an edited policy takes effect without a restart. Runs until the task
/// is aborted: spawn it and abort its `JoinHandle` when the agent stops.
pub async fn watch_policy(handle: SettingsHandle, interval: Duration) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; the policy was read at open
    loop {
        tick.tick().await;
        handle.reload_policy().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(state: PolicyState) -> Policy {
        Policy { file: PathBuf::from("/etc/custos/policy.toml"), state }
    }

    fn layer(level: Option<u8>, enabled: Option<bool>, usage: Option<bool>) -> Layer {
        Layer { level: level.map(|l| Level::try_from(l).unwrap()), enabled, usage }
    }

    fn telemetry(dir: &Path) -> TelemetrySettings {
        TelemetrySettings { policy_file: dir.join("policy.toml"), ..TelemetrySettings::default() }
    }

    #[test]
    fn precedence_is_policy_then_local_then_config_then_default() {
        use Origin::*;
        // (config, local, policy) -> (value, origin) of level, enabled, usage.
        type Case = (Layer, Layer, PolicyState, (u8, Origin), (bool, Origin), (bool, Origin));
        let cases: Vec<Case> = vec![
            (Layer::default(), Layer::default(), PolicyState::Absent, (2, Default), (true, Default), (true, Default)),
            (
                layer(Some(1), Some(false), Some(false)),
                Layer::default(),
                PolicyState::Absent,
                (1, Config),
                (false, Config),
                (false, Config),
            ),
            (
                layer(Some(1), Some(false), None),
                layer(Some(3), None, Some(false)),
                PolicyState::Absent,
                (3, Local),
                (false, Config),
                (false, Local),
            ),
            (
                layer(Some(1), Some(false), Some(true)),
                layer(Some(3), Some(true), Some(false)),
                PolicyState::Loaded(layer(Some(0), None, Some(true))),
                (0, Policy),
                (true, Local),
                (true, Policy),
            ),
            (
                Layer::default(),
                Layer::default(),
                PolicyState::Loaded(layer(None, Some(false), None)),
                (2, Default),
                (false, Policy),
                (true, Default),
            ),
        ];
        for (i, (config, local, pol, level, enabled, usage)) in cases.into_iter().enumerate() {
            let e = resolve(&config, &local, &policy(pol));
            assert_eq!((u8::from(e.level.value), e.level.origin), level, "case {i} level");
            assert_eq!((e.enabled.value, e.enabled.origin), enabled, "case {i} enabled");
            assert_eq!((e.usage.value, e.usage.origin), usage, "case {i} usage");
            assert_eq!(e.policy_error, None);
        }
    }

    #[test]
    fn invalid_policy_disables_telemetry_but_keeps_level_and_usage() {
        let e = resolve(
            &layer(Some(1), Some(true), Some(false)),
            &layer(None, Some(true), None),
            &policy(PolicyState::Invalid("bad".into())),
        );
        assert_eq!(e.enabled, Sourced { value: false, origin: Origin::Policy });
        assert_eq!(e.level, Sourced { value: Level::Basic, origin: Origin::Config });
        assert_eq!(e.usage, Sourced { value: false, origin: Origin::Config });
        assert_eq!(e.policy_error.as_deref(), Some("bad"));
    }

    #[test]
    fn origin_displays_lowercase() {
        let names: Vec<String> =
            [Origin::Default, Origin::Config, Origin::Local, Origin::Policy].iter().map(|o| o.to_string()).collect();
        assert_eq!(names, ["default", "config", "local", "policy"]);
        assert_eq!(serde_json::to_string(&Origin::Policy).unwrap(), "\"policy\"");
    }

    #[test]
    fn policy_text_parses_names_numbers_and_refuses_unknown_keys() {
        assert_eq!(parse_policy("").unwrap(), Layer::default());
        assert_eq!(parse_policy("[telemetry]\nlevel = \"basic\"\n").unwrap(), layer(Some(1), None, None));
        assert_eq!(
            parse_policy("[telemetry]\nlevel = 3\nenabled = false\nusage = true\n").unwrap(),
            layer(Some(3), Some(false), Some(true))
        );
        let e = parse_policy("[telemetry]\nlevl = 1\n").unwrap_err();
        assert!(e.contains("levl"), "{e}");
        let e = parse_policy("[other]\n").unwrap_err();
        assert!(e.contains("other"), "{e}");
        let e = parse_policy("[telemetry]\nlevel = 7\n").unwrap_err();
        assert!(e.contains("telemetry.level") && e.contains('7'), "{e}");
        let e = parse_policy("[telemetry]\nenabled = \"no\"\n").unwrap_err();
        assert!(e.contains("invalid policy at line 2"), "{e}");
        let e = parse_policy("[x\n").unwrap_err();
        assert!(e.starts_with("invalid policy at line 1") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn missing_policy_is_absent_and_broken_policy_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.toml");
        assert_eq!(load_policy(&p), PolicyState::Absent);
        std::fs::write(&p, "[telemetry\n").unwrap();
        assert!(matches!(load_policy(&p), PolicyState::Invalid(_)));
        assert!(matches!(load_policy(dir.path()), PolicyState::Invalid(e) if e.contains("not a regular file")));
        std::fs::write(&p, vec![b'#'; MAX_POLICY_BYTES as usize + 1]).unwrap();
        assert!(matches!(load_policy(&p), PolicyState::Invalid(e) if e.contains("larger")));
    }

    #[tokio::test]
    async fn change_refused_by_policy_says_so_and_is_not_saved() {
        let dir = tempfile::tempdir().unwrap();
        let t = telemetry(dir.path());
        std::fs::write(&t.policy_file, "[telemetry]\nlevel = \"basic\"\nusage = false\n").unwrap();
        let h = SettingsHandle::open(dir.path(), &t).unwrap();
        let e = h.set_level(Level::Full).await.unwrap_err();
        assert!(matches!(e, SettingsError::RefusedByPolicy { key: "level", .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.starts_with("refused by policy"), "{msg}");
        assert!(msg.contains("`level`") && msg.contains("1 (basic)") && msg.contains("policy.toml"), "{msg}");
        let e = h.set_usage(true).await.unwrap_err().to_string();
        assert!(e.contains("`usage`") && e.contains("false"), "{e}");
        assert!(!h.settings_path().exists(), "a refused change must not be saved");
        // Not set by the policy: allowed.
        let eff = h.set_enabled(false).await.unwrap();
        assert_eq!(eff.enabled, Sourced { value: false, origin: Origin::Local });
        assert_eq!(eff.level, Sourced { value: Level::Basic, origin: Origin::Policy });
    }

    #[tokio::test]
    async fn broken_policy_fails_closed_until_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let t = telemetry(dir.path());
        std::fs::write(&t.policy_file, "[telemetry]\nlevel = \"loud\"\n").unwrap();
        let h = SettingsHandle::open(dir.path(), &t).unwrap();
        let eff = h.effective();
        assert_eq!(eff.enabled, Sourced { value: false, origin: Origin::Policy });
        assert!(eff.policy_error.as_deref().unwrap().contains("loud"), "{eff:?}");
        assert_eq!(eff.usage, Sourced { value: true, origin: Origin::Default });
        let e = h.set_enabled(true).await.unwrap_err();
        assert!(matches!(e, SettingsError::PolicyInvalid { .. }), "{e:?}");
        assert!(e.to_string().contains("stays disabled") && e.to_string().contains("loud"), "{e}");
        // Usage and level are not enforced by a broken policy.
        assert_eq!(h.set_usage(false).await.unwrap().usage.origin, Origin::Local);
        assert_eq!(h.set_level(Level::Basic).await.unwrap().level.origin, Origin::Local);
        // Fixing the file lifts the block.
        std::fs::write(&t.policy_file, "[telemetry]\nlevel = \"full\"\n").unwrap();
        let eff = h.reload_policy().await;
        assert_eq!(eff.enabled, Sourced { value: true, origin: Origin::Default });
        assert_eq!(eff.level, Sourced { value: Level::Full, origin: Origin::Policy });
        assert_eq!(eff.policy_error, None);
    }

    #[tokio::test]
    async fn local_settings_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let t = telemetry(dir.path());
        let h = SettingsHandle::open(&state, &t).unwrap();
        h.set_level(Level::Security).await.unwrap();
        h.set_usage(false).await.unwrap();
        let text = std::fs::read_to_string(state.join(SETTINGS_FILE)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"version": 1, "level": 0, "usage": false}),
            "only values set locally are saved"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(state.join(SETTINGS_FILE)).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);
        let h2 = SettingsHandle::open(&state, &t).unwrap();
        let eff = h2.effective();
        assert_eq!(eff.level, Sourced { value: Level::Security, origin: Origin::Local });
        assert_eq!(eff.usage, Sourced { value: false, origin: Origin::Local });
        assert_eq!(eff.enabled, Sourced { value: true, origin: Origin::Default });
    }

    #[test]
    fn invalid_or_future_settings_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let t = telemetry(dir.path());
        std::fs::write(dir.path().join(SETTINGS_FILE), "{\"version\":2}").unwrap();
        let e = SettingsHandle::open(dir.path(), &t).unwrap_err().to_string();
        assert!(e.contains("settings.json") && e.contains("version 2"), "{e}");
        std::fs::write(dir.path().join(SETTINGS_FILE), "{\"version\":1,\"colour\":1}").unwrap();
        let e = SettingsHandle::open(dir.path(), &t).unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
    }

    #[tokio::test]
    async fn changes_publish_on_the_watch_channel_only_when_something_changed() {
        let dir = tempfile::tempdir().unwrap();
        let t = telemetry(dir.path());
        let h = SettingsHandle::open(dir.path(), &t).unwrap();
        let mut rx = h.subscribe();
        assert!(!rx.has_changed().unwrap());
        h.reload_policy().await;
        assert!(!rx.has_changed().unwrap(), "an unchanged policy publishes nothing");
        h.set_level(Level::Basic).await.unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().level.value, Level::Basic);
        std::fs::write(&t.policy_file, "[telemetry]\nenabled = false\n").unwrap();
        h.reload_policy().await;
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().enabled, Sourced { value: false, origin: Origin::Policy });
    }

    #[tokio::test]
    async fn policy_watcher_applies_an_edited_policy_without_restart() {
        let dir = tempfile::tempdir().unwrap();
        let t = telemetry(dir.path());
        let h = SettingsHandle::open(dir.path(), &t).unwrap();
        let mut rx = h.subscribe();
        let task = tokio::spawn(watch_policy(h.clone(), Duration::from_millis(20)));
        std::fs::write(&t.policy_file, "[telemetry]\nlevel = 0\n").unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.changed()).await.unwrap().unwrap();
        assert_eq!(rx.borrow().level, Sourced { value: Level::Security, origin: Origin::Policy });
        task.abort();
    }

    #[tokio::test]
    async fn setting_the_value_the_policy_enforces_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let t = telemetry(dir.path());
        std::fs::write(&t.policy_file, "[telemetry]\nlevel = 1\n").unwrap();
        let h = SettingsHandle::open(dir.path(), &t).unwrap();
        let eff = h.set_level(Level::Basic).await.unwrap();
        assert_eq!(eff.level.origin, Origin::Policy);
        assert_eq!(load_local(h.settings_path()).unwrap().level, Some(Level::Basic));
    }
}
