//! The agent configuration file (TOML).
//!
//! The file is parsed into private "raw" structs that reject unknown fields,
//! then validated into the typed structs below, whose rustdoc is the
//! reference for every option. Errors name the offending field, e.g.
//! `sources[1].table: ...`.
//!
//! A complete example, with every default spelled out:
//!
//! ```toml
//! [agent]                      # optional section
//! # hostname = "web-1"         # default: /proc/sys/kernel/hostname
//! batch_max_events = 5000
//! batch_max_bytes = 1048576
//! flush_interval_ms = 1000
//! # metrics_listen = "127.0.0.1:9464"   # Prometheus GET /metrics; off by default
//!
//! [[sources]]
//! type = "file"
//! paths = ["/var/log/app/*.log"]
//! table = "logs"
//! level = "enhanced"           # or 0-3
//! start_at = "beginning"       # or "end"
//! max_line_bytes = 262144
//!
//! [[sources]]
//! type = "stdin"
//! table = "logs"
//!
//! [[sources]]
//! type = "inventory"
//! interval_secs = 3600
//!
//! [[sources]]
//! type = "performance"         # CPU, load, memory, disk and network rates
//! interval_secs = 60
//!
//! [[sources]]
//! type = "services"            # processes, CPU time and memory per systemd service
//! interval_secs = 300
//!
//! [[sources]]
//! type = "crash"               # one event per new crash report (level full)
//! paths = ["/var/crash/*.crash", "/var/lib/systemd/coredump/*"]
//!
//! [telemetry]                  # optional section; see TelemetrySettings
//! level = "enhanced"           # or 0-3; default enhanced
//! enabled = true               # telemetry on or off; default true
//! usage = true                 # usage (billing) reporting; default true
//! policy_file = "/etc/custos/policy.toml"   # managed policy, overrides local settings
//! policy_reload_secs = 5
//! # control_socket = "/var/lib/custos-agent/control/control.sock"   # default: <state_dir>/control/control.sock
//! ledger_max_bytes = 268435456 # transparency ledger bound (256 MiB)
//! ledger_max_age_days = 90
//! health_interval_secs = 3600   # agent_health and quality records
//! usage_period_secs = 3600      # one usage record per period
//!
//! [retry]                      # optional section; see AgentConfig::retry
//! initial_delay_ms = 1000      # backoff: 1 s, doubling (jitter: [d/2, d])
//! max_backoff_secs = 480       # ... while below 8 minutes
//! steady_interval_secs = 480   # then every 8 minutes (± 10 %)
//! steady_until_secs = 7200     # until 2 hours after the first failure
//! slow_interval_secs = 3600    # then hourly (± 10 %) for as long as data is queued
//! max_retry_after_secs = 3600  # longest wait a server's Retry-After can impose
//! # give_up_after_secs = 600   # default: never give up
//!
//! [dead_letters]               # optional section; see DeadLetterSettings
//! max_bytes = 268435456        # batches the server refused for good (256 MiB)
//!
//! [queue]                      # optional section; see QueueSettings
//! max_bytes = 1073741824       # the durable queue's bound on disk (1 GiB)
//! fsync_interval_ms = 100      # group commit: at most this long between syncs
//! # segment_bytes = 33554432   # default: max_bytes / 32, between 1 and 32 MiB
//!
//! [redaction]                  # optional section; see RedactionSettings
//! # policy_file = "/etc/custos/redact.toml"   # default: the built-in default policy
//! ```
//!
//! A configuration with no `[[sources]]` at all is rejected.

use crate::ship::RetrySchedule;
use custos_model::{Level, TableName};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default for [`AgentSettings::batch_max_events`].
pub const DEFAULT_BATCH_MAX_EVENTS: usize = 5000;
/// Default for [`AgentSettings::batch_max_bytes`].
pub const DEFAULT_BATCH_MAX_BYTES: usize = 1024 * 1024;
/// Default for [`AgentSettings::flush_interval`], in milliseconds.
pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 1000;
/// Default for the `table` of file and stdin sources.
pub const DEFAULT_LOG_TABLE: &str = "logs";
/// Default for `max_line_bytes` of file and stdin sources.
pub const DEFAULT_MAX_LINE_BYTES: usize = 256 * 1024;
/// Upper bound accepted for `max_line_bytes` (a line is buffered whole in memory).
pub const MAX_MAX_LINE_BYTES: usize = 16 * 1024 * 1024;
/// Default for [`InventorySourceConfig::interval`], in seconds.
pub const DEFAULT_INVENTORY_INTERVAL_SECS: u64 = 3600;
/// Default for [`PerformanceSourceConfig::interval`], in seconds.
pub const DEFAULT_PERFORMANCE_INTERVAL_SECS: u64 = 60;
/// Default for [`ServicesSourceConfig::interval`], in seconds.
pub const DEFAULT_SERVICES_INTERVAL_SECS: u64 = 300;
/// Default for [`CrashSourceConfig::paths`]: apport reports and
/// systemd-coredump dumps.
pub const DEFAULT_CRASH_PATHS: &[&str] = &["/var/crash/*.crash", "/var/lib/systemd/coredump/*"];
/// Where the system host name is read from when `agent.hostname` is not set.
pub const SYSTEM_HOSTNAME_PATH: &str = "/proc/sys/kernel/hostname";

/// A configuration that could not be read, parsed or validated.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("reading config file {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An error in a particular configuration file (wraps the specific error).
    #[error("config file {}: {source}", .path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: Box<ConfigError>,
    },
    /// Not valid TOML, an unknown field or source type, a missing required
    /// field, or a value of the wrong type.
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    /// A field has a value that is not allowed.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, as a TOML path (`sources[0].table`).
        field: String,
        /// Why the value is rejected (names the value).
        reason: String,
    },
    /// The configuration declares no source.
    #[error("config has no [[sources]]: add at least one source (file, stdin, inventory, performance, services or crash)")]
    NoSources,
    /// `agent.hostname` is not set and the system host name could not be read.
    #[error("agent.hostname is not set and the system host name could not be read from {SYSTEM_HOSTNAME_PATH}: {0}")]
    Hostname(String),
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Default for [`TelemetrySettings::health_interval`], in seconds.
pub const DEFAULT_HEALTH_INTERVAL_SECS: u64 = 3600;
/// Default for [`TelemetrySettings::usage_period`], in seconds.
pub const DEFAULT_USAGE_PERIOD_SECS: u64 = 3600;

/// The validated agent configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    /// The `[agent]` section (all defaults when absent).
    pub agent: AgentSettings,
    /// The `[[sources]]`, in file order; never empty.
    pub sources: Vec<SourceConfig>,
    /// The `[telemetry]` section (all defaults when absent).
    pub telemetry: TelemetrySettings,
    /// The `[retry]` section (all defaults when absent): when a batch the
    /// server did not acknowledge is sent again. Keys, each documented on
    /// the [`RetrySchedule`] field it sets: `initial_delay_ms` (1 to
    /// 3600000; [`RetrySchedule::initial`]), `max_backoff_secs` (1 to 86400,
    /// at least `initial_delay_ms`), `steady_interval_secs` (1 to 86400),
    /// `steady_until_secs` (0 = no steady phase, to 2592000),
    /// `slow_interval_secs` (1 to 604800), `max_retry_after_secs` (1 to
    /// 604800) and the optional `give_up_after_secs` (1 to 31536000; never
    /// by default; `--once --give-up-after-secs` overrides it).
    pub retry: RetrySchedule,
    /// The `[dead_letters]` section (all defaults when absent).
    pub dead_letters: DeadLetterSettings,
    /// The `[queue]` section (all defaults when absent).
    pub queue: QueueSettings,
    /// The `[redaction]` section (all defaults when absent).
    pub redaction: RedactionSettings,
}

/// The `[redaction]` section: every event is redacted on the host, after
/// the consent gate and before it is queued (see `docs/REDACTION.md`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RedactionSettings {
    /// `policy_file`: a redaction policy (TOML, `custos_redact::policy`).
    /// Optional; the built-in default policy applies when absent, which lets
    /// no card number, password, secret or e-mail address leave the host.
    /// Read when the agent starts: a missing or invalid file stops the start.
    pub policy_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedaction {
    policy_file: Option<String>,
}

fn validate_redaction(raw: RawRedaction) -> Result<RedactionSettings, ConfigError> {
    let policy_file = match raw.policy_file {
        Some(p) if p.trim().is_empty() => return Err(invalid("redaction.policy_file", "must not be empty")),
        p => p.map(std::path::PathBuf::from),
    };
    Ok(RedactionSettings { policy_file })
}

/// The `[agent]` section: batching and identity.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentSettings {
    /// `hostname`: the host name reported in every event. Optional; when
    /// absent, the system host name ([`SYSTEM_HOSTNAME_PATH`]) is used, see
    /// [`AgentSettings::resolve_hostname`]. Must be non-empty, at most 253
    /// bytes, without whitespace or control characters.
    pub hostname: Option<String>,
    /// `batch_max_events`: the most events in one shipped batch. Default 5000, at least 1.
    pub batch_max_events: usize,
    /// `batch_max_bytes`: the approximate most raw bytes (message text and
    /// attributes) in one batch. Default 1048576, at least 1024. A single
    /// event larger than this still travels, alone.
    pub batch_max_bytes: usize,
    /// `flush_interval_ms`: a batch that is not full is shipped after this
    /// long. Default 1000 ms, at least 1 ms.
    pub flush_interval: Duration,
    /// `metrics_listen`: serve Prometheus metrics (queue, evictions by
    /// category, dead letters, failed attempts; see [`crate::metrics`]) as
    /// plain HTTP `GET /metrics` on this address, e.g. `127.0.0.1:9464`.
    /// Optional; off by default. The metrics hold counts only, no event
    /// content; bind it to loopback unless a scraper elsewhere needs it.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            hostname: None,
            batch_max_events: DEFAULT_BATCH_MAX_EVENTS,
            batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
            flush_interval: Duration::from_millis(DEFAULT_FLUSH_INTERVAL_MS),
            metrics_listen: None,
        }
    }
}

impl AgentSettings {
    /// The host name to report: the configured override, else the system host
    /// name read from [`SYSTEM_HOSTNAME_PATH`].
    pub fn resolve_hostname(&self) -> Result<String, ConfigError> {
        match &self.hostname {
            Some(h) => Ok(h.clone()),
            None => system_hostname(),
        }
    }
}

/// The system host name, from [`SYSTEM_HOSTNAME_PATH`], trimmed.
pub fn system_hostname() -> Result<String, ConfigError> {
    let raw = std::fs::read_to_string(SYSTEM_HOSTNAME_PATH)
        .map_err(|e| ConfigError::Hostname(e.to_string()))?;
    let name = raw.trim();
    if name.is_empty() {
        return Err(ConfigError::Hostname("the file is empty".into()));
    }
    Ok(name.to_string())
}

/// One `[[sources]]` entry; `type` selects the variant.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceConfig {
    /// `type = "file"`: tail files matching glob patterns.
    File(FileSourceConfig),
    /// `type = "stdin"`: read lines from standard input until it ends.
    Stdin(StdinSourceConfig),
    /// `type = "inventory"`: periodic hardware and OS inventory.
    Inventory(InventorySourceConfig),
    /// `type = "performance"`: periodic CPU, load, memory, disk and network samples.
    Performance(PerformanceSourceConfig),
    /// `type = "services"`: periodic processes, CPU time and memory per systemd service.
    Services(ServicesSourceConfig),
    /// `type = "crash"`: one event per new crash report or core dump.
    Crash(CrashSourceConfig),
}

impl SourceConfig {
    /// The source's unique name (its `name`, or the default derived from its type).
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::File(f) => &f.name,
            SourceConfig::Stdin(s) => &s.name,
            SourceConfig::Inventory(i) => &i.name,
            SourceConfig::Performance(p) => &p.name,
            SourceConfig::Services(s) => &s.name,
            SourceConfig::Crash(c) => &c.name,
        }
    }

    /// The source's `type` as written in the configuration (`"file"`,
    /// `"stdin"`, `"inventory"`, `"performance"`, `"services"`, `"crash"`).
    pub fn type_name(&self) -> &'static str {
        match self {
            SourceConfig::File(_) => "file",
            SourceConfig::Stdin(_) => "stdin",
            SourceConfig::Inventory(_) => "inventory",
            SourceConfig::Performance(_) => "performance",
            SourceConfig::Services(_) => "services",
            SourceConfig::Crash(_) => "crash",
        }
    }
}

/// Where to start reading a file the agent has never seen before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StartAt {
    /// `"beginning"`: read the whole file (the default).
    #[default]
    Beginning,
    /// `"end"`: skip what the file already holds and read only what is
    /// appended. Applies only to files present when the source first starts
    /// without saved positions; files appearing later (for example after a
    /// rotation) are always read from the beginning so nothing is lost.
    End,
}

/// A `type = "file"` source.
#[derive(Clone, Debug, PartialEq)]
pub struct FileSourceConfig {
    /// `name`: unique name of the source, the key of its saved positions.
    /// Optional; default `file:<table>:<paths joined by ",">`. Set it
    /// explicitly if you want positions kept when you edit `paths`.
    pub name: String,
    /// `paths`: absolute glob patterns (`*`, `?`, `[..]`, `**`), required and
    /// non-empty. Re-evaluated on every poll, so new files are picked up.
    pub paths: Vec<String>,
    /// `table`: destination table, a lowercase SQL identifier. Default `"logs"`.
    pub table: TableName,
    /// `level`: the lowest consent level of the events, a name (`security`,
    /// `basic`, `enhanced`, `full`) or a number 0-3. Default `enhanced`.
    /// A floor: each line's level is the higher of this and the level of
    /// the severity detected in the line (warning and above: enhanced;
    /// notice, info, debug and unknown: full), see
    /// [`crate::sources::severity`].
    pub level: Level,
    /// `start_at`: `"beginning"` (default) or `"end"`; see [`StartAt`].
    pub start_at: StartAt,
    /// `max_line_bytes`: longer lines are split into pieces of at most this
    /// many bytes, each event getting the attribute `truncated = true`.
    /// Default 262144; between 1 and 16777216.
    pub max_line_bytes: usize,
}

/// A `type = "stdin"` source (at most one per configuration).
#[derive(Clone, Debug, PartialEq)]
pub struct StdinSourceConfig {
    /// `name`: unique name of the source. Optional; default `"stdin"`.
    pub name: String,
    /// `table`: destination table. Default `"logs"`.
    pub table: TableName,
    /// `level`: the lowest consent level of the events (name or 0-3).
    /// Default `enhanced`. A floor, as for file sources: each line's level
    /// is the higher of this and its detected severity's level.
    pub level: Level,
    /// `max_line_bytes`: as for file sources. Default 262144.
    pub max_line_bytes: usize,
}

/// A `type = "inventory"` source. Its events go to the table `inventory`,
/// category inventory, level basic.
#[derive(Clone, Debug, PartialEq)]
pub struct InventorySourceConfig {
    /// `name`: unique name of the source. Optional; default `"inventory"`.
    pub name: String,
    /// `interval_secs`: how often the inventory is collected again while the
    /// agent runs (it is always collected at start). Default 3600, at least 1.
    pub interval: Duration,
}

/// A `type = "performance"` source. Its events go to the table
/// `performance`, category performance, level enhanced; see
/// [`crate::sources::performance`].
#[derive(Clone, Debug, PartialEq)]
pub struct PerformanceSourceConfig {
    /// `name`: unique name of the source. Optional; default `"performance"`.
    pub name: String,
    /// `interval_secs`: the time between two samples; each sample holds the
    /// rates over the interval before it, so the first one comes one
    /// interval after start. Default 60, between 1 and 86400.
    pub interval: Duration,
}

/// A `type = "services"` source. Its events go to the table
/// `service_usage`, category performance, level enhanced; see
/// [`crate::sources::services`].
#[derive(Clone, Debug, PartialEq)]
pub struct ServicesSourceConfig {
    /// `name`: unique name of the source. Optional; default `"services"`.
    pub name: String,
    /// `interval_secs`: how often the processes are grouped and reported
    /// (also once at start). Default 300, between 1 and 86400.
    pub interval: Duration,
}

/// A `type = "crash"` source. Its events go to the table `crash_reports`,
/// category crash, level full; see [`crate::sources::crash`].
#[derive(Clone, Debug, PartialEq)]
pub struct CrashSourceConfig {
    /// `name`: unique name of the source, the key of its saved state.
    /// Optional; default `"crash"`.
    pub name: String,
    /// `paths`: absolute glob patterns of crash files. Optional; default
    /// `["/var/crash/*.crash", "/var/lib/systemd/coredump/*"]` (apport
    /// reports, systemd-coredump dumps). Must not be empty when given.
    pub paths: Vec<String>,
}

// ---------------------------------------------------------------------------
// Raw (serde) shapes.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    agent: Option<RawAgent>,
    #[serde(default)]
    sources: Vec<RawSource>,
    #[serde(default)]
    telemetry: Option<RawTelemetry>,
    #[serde(default)]
    retry: Option<RawRetry>,
    #[serde(default)]
    dead_letters: Option<RawDeadLetters>,
    #[serde(default)]
    queue: Option<RawQueue>,
    #[serde(default)]
    redaction: Option<RawRedaction>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    hostname: Option<String>,
    batch_max_events: Option<i64>,
    batch_max_bytes: Option<i64>,
    flush_interval_ms: Option<i64>,
    metrics_listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum RawSource {
    File(RawFileSource),
    Stdin(RawStdinSource),
    Inventory(RawInventorySource),
    Performance(RawPeriodicSource),
    Services(RawPeriodicSource),
    Crash(RawCrashSource),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileSource {
    name: Option<String>,
    paths: Vec<String>,
    table: Option<String>,
    level: Option<toml::Value>,
    start_at: Option<String>,
    max_line_bytes: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStdinSource {
    name: Option<String>,
    table: Option<String>,
    level: Option<toml::Value>,
    max_line_bytes: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventorySource {
    name: Option<String>,
    interval_secs: Option<i64>,
}

/// The raw shape of the performance and services sources.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeriodicSource {
    name: Option<String>,
    interval_secs: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCrashSource {
    name: Option<String>,
    paths: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------
// Validation.

impl AgentConfig {
    /// Parse and validate a configuration from TOML text.
    pub fn from_toml_str(text: &str) -> Result<AgentConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text)?;
        validate(raw)
    }

    /// Read, parse and validate a configuration file; errors name the file.
    pub fn from_path(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|e| ConfigError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }
}

fn validate(raw: RawConfig) -> Result<AgentConfig, ConfigError> {
    let agent = validate_agent(raw.agent.unwrap_or_default())?;
    if raw.sources.is_empty() {
        return Err(ConfigError::NoSources);
    }
    let mut sources = Vec::with_capacity(raw.sources.len());
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut stdin_at: Option<usize> = None;
    for (i, rs) in raw.sources.into_iter().enumerate() {
        let at = format!("sources[{i}]");
        let source = match rs {
            RawSource::File(f) => SourceConfig::File(validate_file(&at, f)?),
            RawSource::Stdin(s) => {
                if let Some(first) = stdin_at {
                    return Err(invalid(
                        format!("{at}.type"),
                        format!(
                            "only one stdin source is allowed (sources[{first}] is already one)"
                        ),
                    ));
                }
                stdin_at = Some(i);
                SourceConfig::Stdin(validate_stdin(&at, s)?)
            }
            RawSource::Inventory(v) => SourceConfig::Inventory(validate_inventory(&at, v)?),
            RawSource::Performance(v) => SourceConfig::Performance(validate_performance(&at, v)?),
            RawSource::Services(v) => SourceConfig::Services(validate_services(&at, v)?),
            RawSource::Crash(v) => SourceConfig::Crash(validate_crash(&at, v)?),
        };
        if let Some(first) = names.insert(source.name().to_string(), i) {
            return Err(invalid(
                format!("{at}.name"),
                format!(
                    "duplicate source name {:?} (also sources[{first}]); give one of them a distinct `name`",
                    source.name()
                ),
            ));
        }
        sources.push(source);
    }
    let telemetry = validate_telemetry(raw.telemetry.unwrap_or_default())?;
    let retry = validate_retry(raw.retry.unwrap_or_default())?;
    let dead_letters = validate_dead_letters(raw.dead_letters.unwrap_or_default())?;
    let queue = validate_queue(raw.queue.unwrap_or_default())?;
    let redaction = validate_redaction(raw.redaction.unwrap_or_default())?;
    Ok(AgentConfig { agent, sources, telemetry, retry, dead_letters, queue, redaction })
}

fn positive(
    field: &str,
    v: Option<i64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    match u64::try_from(v) {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(invalid(
            field,
            format!("{v} is out of range (expected {min} to {max})"),
        )),
    }
}

fn to_usize(field: &str, v: u64) -> Result<usize, ConfigError> {
    usize::try_from(v).map_err(|_| invalid(field, format!("{v} is too large for this platform")))
}

fn validate_agent(raw: RawAgent) -> Result<AgentSettings, ConfigError> {
    let hostname = match raw.hostname {
        None => None,
        Some(h) => {
            if h.is_empty() || h.len() > 253 {
                return Err(invalid(
                    "agent.hostname",
                    format!("{h:?} must be 1 to 253 bytes long"),
                ));
            }
            if h.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(
                    "agent.hostname",
                    format!("{h:?} must not contain whitespace or control characters"),
                ));
            }
            Some(h)
        }
    };
    let batch_max_events = positive(
        "agent.batch_max_events",
        raw.batch_max_events,
        DEFAULT_BATCH_MAX_EVENTS as u64,
        1,
        10_000_000,
    )?;
    let batch_max_bytes = positive(
        "agent.batch_max_bytes",
        raw.batch_max_bytes,
        DEFAULT_BATCH_MAX_BYTES as u64,
        1024,
        1 << 30,
    )?;
    let flush_ms = positive(
        "agent.flush_interval_ms",
        raw.flush_interval_ms,
        DEFAULT_FLUSH_INTERVAL_MS,
        1,
        24 * 3600 * 1000,
    )?;
    let metrics_listen = match raw.metrics_listen {
        None => None,
        Some(a) => Some(a.parse::<std::net::SocketAddr>().map_err(|e| {
            invalid("agent.metrics_listen", format!("{a:?} is not an address and port such as 127.0.0.1:9464: {e}"))
        })?),
    };
    Ok(AgentSettings {
        hostname,
        batch_max_events: to_usize("agent.batch_max_events", batch_max_events)?,
        batch_max_bytes: to_usize("agent.batch_max_bytes", batch_max_bytes)?,
        flush_interval: Duration::from_millis(flush_ms),
        metrics_listen,
    })
}

fn validate_name(
    at: &str,
    name: Option<String>,
    default: impl FnOnce() -> String,
) -> Result<String, ConfigError> {
    let Some(name) = name else {
        return Ok(default());
    };
    if name.trim().is_empty() || name.len() > 256 {
        return Err(invalid(
            format!("{at}.name"),
            format!("{name:?} must be 1 to 256 bytes and not blank"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid(
            format!("{at}.name"),
            format!("{name:?} must not contain control characters"),
        ));
    }
    Ok(name)
}

/// A log source's table: a valid name that is `logs`, or a table the
/// registry does not declare (which then gets the `logs` schema). A declared
/// table of another kind (`inventory`, `usage`, ...) is refused.
fn validate_table(at: &str, table: Option<String>) -> Result<TableName, ConfigError> {
    let table = table.unwrap_or_else(|| DEFAULT_LOG_TABLE.to_string());
    let name = TableName::new(table).map_err(|e| invalid(format!("{at}.table"), e.to_string()))?;
    let registry = custos_model::registry::Registry::builtin();
    if registry.log_table(name.as_str()).is_none() {
        let what = registry
            .table(name.as_str())
            .map(|t| format!("a registry table of category {}", t.category))
            .unwrap_or_else(|| "not a log table".to_string());
        return Err(invalid(
            format!("{at}.table"),
            format!(
                "{:?} is {what}; a file or stdin source writes to \"logs\" or to a table of its own that the registry does not declare",
                name.as_str()
            ),
        ));
    }
    Ok(name)
}

fn validate_level(at: &str, level: Option<toml::Value>) -> Result<Level, ConfigError> {
    let field = format!("{at}.level");
    match level {
        None => Ok(Level::default()),
        Some(toml::Value::String(s)) => s
            .parse()
            .map_err(|e: custos_model::LevelParseError| invalid(field, e.to_string())),
        Some(toml::Value::Integer(n)) => u8::try_from(n)
            .ok()
            .and_then(|n| Level::try_from(n).ok())
            .ok_or_else(|| {
                invalid(
                    field,
                    format!("invalid level {n}: expected 0-3 or security, basic, enhanced, full"),
                )
            }),
        Some(other) => Err(invalid(
            field,
            format!(
                "expected a level name or a number 0-3, found a {}",
                other.type_str()
            ),
        )),
    }
}

fn validate_max_line(at: &str, v: Option<i64>) -> Result<usize, ConfigError> {
    let field = format!("{at}.max_line_bytes");
    let v = positive(
        &field,
        v,
        DEFAULT_MAX_LINE_BYTES as u64,
        1,
        MAX_MAX_LINE_BYTES as u64,
    )?;
    to_usize(&field, v)
}

/// Check a non-empty list of absolute glob patterns (`<at>.paths`).
fn validate_patterns(at: &str, paths: &[String]) -> Result<(), ConfigError> {
    if paths.is_empty() {
        return Err(invalid(
            format!("{at}.paths"),
            "must list at least one glob pattern",
        ));
    }
    for (j, p) in paths.iter().enumerate() {
        let field = format!("{at}.paths[{j}]");
        if !Path::new(p).is_absolute() {
            return Err(invalid(
                field,
                format!("pattern {p:?} is not an absolute path"),
            ));
        }
        if let Err(e) = glob::Pattern::new(p) {
            return Err(invalid(
                field,
                format!("pattern {p:?} is not a valid glob: {e}"),
            ));
        }
    }
    Ok(())
}

fn validate_file(at: &str, raw: RawFileSource) -> Result<FileSourceConfig, ConfigError> {
    validate_patterns(at, &raw.paths)?;
    let table = validate_table(at, raw.table)?;
    let level = validate_level(at, raw.level)?;
    let start_at = match raw.start_at.as_deref() {
        None | Some("beginning") => StartAt::Beginning,
        Some("end") => StartAt::End,
        Some(other) => {
            return Err(invalid(
                format!("{at}.start_at"),
                format!("{other:?} is not one of \"beginning\", \"end\""),
            ))
        }
    };
    let max_line_bytes = validate_max_line(at, raw.max_line_bytes)?;
    let name = validate_name(at, raw.name, || {
        format!("file:{}:{}", table.as_str(), raw.paths.join(","))
    })?;
    Ok(FileSourceConfig {
        name,
        paths: raw.paths,
        table,
        level,
        start_at,
        max_line_bytes,
    })
}

fn validate_stdin(at: &str, raw: RawStdinSource) -> Result<StdinSourceConfig, ConfigError> {
    Ok(StdinSourceConfig {
        name: validate_name(at, raw.name, || "stdin".to_string())?,
        table: validate_table(at, raw.table)?,
        level: validate_level(at, raw.level)?,
        max_line_bytes: validate_max_line(at, raw.max_line_bytes)?,
    })
}

fn validate_inventory(
    at: &str,
    raw: RawInventorySource,
) -> Result<InventorySourceConfig, ConfigError> {
    let secs = positive(
        &format!("{at}.interval_secs"),
        raw.interval_secs,
        DEFAULT_INVENTORY_INTERVAL_SECS,
        1,
        365 * 24 * 3600,
    )?;
    Ok(InventorySourceConfig {
        name: validate_name(at, raw.name, || "inventory".to_string())?,
        interval: Duration::from_secs(secs),
    })
}

fn validate_performance(
    at: &str,
    raw: RawPeriodicSource,
) -> Result<PerformanceSourceConfig, ConfigError> {
    let secs = positive(
        &format!("{at}.interval_secs"),
        raw.interval_secs,
        DEFAULT_PERFORMANCE_INTERVAL_SECS,
        1,
        24 * 3600,
    )?;
    Ok(PerformanceSourceConfig {
        name: validate_name(at, raw.name, || "performance".to_string())?,
        interval: Duration::from_secs(secs),
    })
}

fn validate_services(
    at: &str,
    raw: RawPeriodicSource,
) -> Result<ServicesSourceConfig, ConfigError> {
    let secs = positive(
        &format!("{at}.interval_secs"),
        raw.interval_secs,
        DEFAULT_SERVICES_INTERVAL_SECS,
        1,
        24 * 3600,
    )?;
    Ok(ServicesSourceConfig {
        name: validate_name(at, raw.name, || "services".to_string())?,
        interval: Duration::from_secs(secs),
    })
}

fn validate_crash(at: &str, raw: RawCrashSource) -> Result<CrashSourceConfig, ConfigError> {
    let paths = match raw.paths {
        Some(p) => p,
        None => DEFAULT_CRASH_PATHS.iter().map(|p| p.to_string()).collect(),
    };
    validate_patterns(at, &paths)?;
    Ok(CrashSourceConfig {
        name: validate_name(at, raw.name, || "crash".to_string())?,
        paths,
    })
}

// ---------------------------------------------------------------------------
// The [telemetry] section.

/// Default for [`TelemetrySettings::ledger_max_bytes`] (256 MiB).
pub const DEFAULT_LEDGER_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Smallest accepted [`TelemetrySettings::ledger_max_bytes`] (1 MiB).
pub const MIN_LEDGER_MAX_BYTES: u64 = 1024 * 1024;
/// Default for `ledger_max_age_days`.
pub const DEFAULT_LEDGER_MAX_AGE_DAYS: u64 = 90;
/// Longest path accepted for `telemetry.control_socket` (the limit of a
/// Unix socket address, less the terminating NUL).
pub const MAX_SOCKET_PATH_BYTES: usize = 107;

/// The `[telemetry]` section: consent settings as configured, the managed
/// policy, the local control socket and the transparency ledger's bounds.
///
/// `level`, `enabled` and `usage` are the *config* layer of the settings:
/// the managed policy and the operator's local changes override them (see
/// [`crate::settings`]). They are `None` when the file does not set them, so
/// that `custos telemetry status` can tell a configured value from a default.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetrySettings {
    /// `level`: the consent level, a name (`security`, `basic`, `enhanced`,
    /// `full`) or a number 0-3. Optional; the default is `enhanced`.
    pub level: Option<Level>,
    /// `enabled`: collect and upload telemetry at all. Optional; default `true`.
    pub enabled: Option<bool>,
    /// `usage`: report hourly usage (billing) records, independent of
    /// `enabled` and `level`. Optional; default `true`.
    pub usage: Option<bool>,
    /// `policy_file`: the managed policy file, which overrides local
    /// settings; a missing file means no policy, an unusable one disables
    /// telemetry until fixed. Absolute path; default `/etc/custos/policy.toml`.
    pub policy_file: PathBuf,
    /// `policy_reload_secs`: how often the policy file is re-read while the
    /// agent runs. Default 5, between 1 and 3600.
    pub policy_reload: Duration,
    /// `control_socket`: path of the local control socket. Optional; default
    /// `<state_dir>/control/control.sock` (see
    /// [`TelemetrySettings::control_socket_path`]). Absolute, at most 107
    /// bytes; its directory must be private to the agent's user (it is
    /// created with mode 0700 when missing).
    pub control_socket: Option<PathBuf>,
    /// `ledger_max_bytes`: the transparency ledger is rotated and its oldest
    /// records dropped beyond this size. Default 268435456 (256 MiB), at
    /// least 1048576 (1 MiB).
    pub ledger_max_bytes: u64,
    /// `ledger_max_age_days`: ledger records older than this are dropped.
    /// Default 90 days, between 1 and 36500.
    pub ledger_max_age: Duration,
    /// `health_interval_secs`: how often the agent reports its own health
    /// (`agent_health`) and the critical alerts it saw (`quality`); both are
    /// also reported when the agent starts. Default 3600, between 1 and 604800.
    pub health_interval: Duration,
    /// `usage_period_secs`: the length of one usage (billing) record's
    /// period. Default 3600 (hourly records), between 1 and 86400.
    pub usage_period: Duration,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            level: None,
            enabled: None,
            usage: None,
            policy_file: PathBuf::from(crate::settings::DEFAULT_POLICY_FILE),
            policy_reload: Duration::from_secs(crate::settings::DEFAULT_POLICY_RELOAD_SECS),
            control_socket: None,
            ledger_max_bytes: DEFAULT_LEDGER_MAX_BYTES,
            ledger_max_age: Duration::from_secs(DEFAULT_LEDGER_MAX_AGE_DAYS * 86400),
            health_interval: Duration::from_secs(DEFAULT_HEALTH_INTERVAL_SECS),
            usage_period: Duration::from_secs(DEFAULT_USAGE_PERIOD_SECS),
        }
    }
}

impl TelemetrySettings {
    /// The control socket: `control_socket` if set, else
    /// `<state_dir>/control/control.sock`.
    pub fn control_socket_path(&self, state_dir: &Path) -> PathBuf {
        match &self.control_socket {
            Some(p) => p.clone(),
            None => crate::control::default_socket_path(state_dir),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    level: Option<toml::Value>,
    enabled: Option<bool>,
    usage: Option<bool>,
    policy_file: Option<String>,
    policy_reload_secs: Option<i64>,
    control_socket: Option<String>,
    ledger_max_bytes: Option<i64>,
    ledger_max_age_days: Option<i64>,
    health_interval_secs: Option<i64>,
    usage_period_secs: Option<i64>,
}

fn absolute_path(field: &str, p: String) -> Result<PathBuf, ConfigError> {
    if p.is_empty() || !Path::new(&p).is_absolute() {
        return Err(invalid(field, format!("{p:?} is not an absolute path")));
    }
    if p.contains('\0') {
        return Err(invalid(field, format!("{p:?} must not contain NUL")));
    }
    Ok(PathBuf::from(p))
}

fn validate_telemetry(raw: RawTelemetry) -> Result<TelemetrySettings, ConfigError> {
    let d = TelemetrySettings::default();
    let level = match raw.level {
        None => None,
        some => Some(validate_level("telemetry", some)?),
    };
    let policy_file = match raw.policy_file {
        None => d.policy_file,
        Some(p) => absolute_path("telemetry.policy_file", p)?,
    };
    let reload = positive(
        "telemetry.policy_reload_secs",
        raw.policy_reload_secs,
        crate::settings::DEFAULT_POLICY_RELOAD_SECS,
        1,
        3600,
    )?;
    let control_socket = match raw.control_socket {
        None => None,
        Some(p) => {
            if p.len() > MAX_SOCKET_PATH_BYTES {
                return Err(invalid(
                    "telemetry.control_socket",
                    format!("{p:?} is {} bytes long; a socket path may have at most {MAX_SOCKET_PATH_BYTES}", p.len()),
                ));
            }
            Some(absolute_path("telemetry.control_socket", p)?)
        }
    };
    let ledger_max_bytes = positive(
        "telemetry.ledger_max_bytes",
        raw.ledger_max_bytes,
        DEFAULT_LEDGER_MAX_BYTES,
        MIN_LEDGER_MAX_BYTES,
        1 << 40,
    )?;
    let days = positive(
        "telemetry.ledger_max_age_days",
        raw.ledger_max_age_days,
        DEFAULT_LEDGER_MAX_AGE_DAYS,
        1,
        36500,
    )?;
    let health = positive("telemetry.health_interval_secs", raw.health_interval_secs, DEFAULT_HEALTH_INTERVAL_SECS, 1, 7 * 86400)?;
    let usage_period = positive("telemetry.usage_period_secs", raw.usage_period_secs, DEFAULT_USAGE_PERIOD_SECS, 1, 86400)?;
    Ok(TelemetrySettings {
        health_interval: Duration::from_secs(health),
        usage_period: Duration::from_secs(usage_period),
        level,
        enabled: raw.enabled,
        usage: raw.usage,
        policy_file,
        policy_reload: Duration::from_secs(reload),
        control_socket,
        ledger_max_bytes,
        ledger_max_age: Duration::from_secs(days * 86400),
    })
}

// ---------------------------------------------------------------------------
// The [retry] and [dead_letters] sections.

/// Default of `[retry] initial_delay_ms` ([`RetrySchedule::initial`]).
pub const DEFAULT_RETRY_INITIAL_DELAY_MS: u64 = crate::ship::DEFAULT_INITIAL_DELAY.as_millis() as u64;
/// Default of `[retry] max_backoff_secs` (8 minutes).
pub const DEFAULT_RETRY_MAX_BACKOFF_SECS: u64 = crate::ship::DEFAULT_MAX_BACKOFF.as_secs();
/// Default of `[retry] steady_interval_secs` (8 minutes).
pub const DEFAULT_RETRY_STEADY_INTERVAL_SECS: u64 = crate::ship::DEFAULT_STEADY_INTERVAL.as_secs();
/// Default of `[retry] steady_until_secs` (2 hours).
pub const DEFAULT_RETRY_STEADY_UNTIL_SECS: u64 = crate::ship::DEFAULT_STEADY_UNTIL.as_secs();
/// Default of `[retry] slow_interval_secs` (1 hour).
pub const DEFAULT_RETRY_SLOW_INTERVAL_SECS: u64 = crate::ship::DEFAULT_SLOW_INTERVAL.as_secs();
/// Default of `[retry] max_retry_after_secs` (1 hour).
pub const DEFAULT_RETRY_MAX_RETRY_AFTER_SECS: u64 = crate::ship::DEFAULT_MAX_RETRY_AFTER.as_secs();
/// Default for [`DeadLetterSettings::max_bytes`] (256 MiB).
pub const DEFAULT_DEAD_LETTERS_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Smallest accepted [`DeadLetterSettings::max_bytes`] (1 MiB).
pub const MIN_DEAD_LETTERS_MAX_BYTES: u64 = 1024 * 1024;

/// The `[dead_letters]` section: the local store of batches the server
/// refused for good (a 4xx other than 408 and 429), kept encrypted in
/// `<state_dir>/dead-letters/` for `custos agent dead-letters` (see
/// [`crate::deadletter`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterSettings {
    /// `max_bytes`: the store's size bound; beyond it the oldest entries are
    /// removed, and counted and reported. Default 268435456 (256 MiB),
    /// between 1048576 (1 MiB) and 1099511627776 (1 TiB).
    pub max_bytes: u64,
}

impl Default for DeadLetterSettings {
    fn default() -> Self {
        Self { max_bytes: DEFAULT_DEAD_LETTERS_MAX_BYTES }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    initial_delay_ms: Option<i64>,
    max_backoff_secs: Option<i64>,
    steady_interval_secs: Option<i64>,
    steady_until_secs: Option<i64>,
    slow_interval_secs: Option<i64>,
    max_retry_after_secs: Option<i64>,
    give_up_after_secs: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeadLetters {
    max_bytes: Option<i64>,
}

fn validate_retry(raw: RawRetry) -> Result<RetrySchedule, ConfigError> {
    let initial_ms = positive("retry.initial_delay_ms", raw.initial_delay_ms, DEFAULT_RETRY_INITIAL_DELAY_MS, 1, 3_600_000)?;
    let max_backoff = positive("retry.max_backoff_secs", raw.max_backoff_secs, DEFAULT_RETRY_MAX_BACKOFF_SECS, 1, 86400)?;
    if max_backoff.saturating_mul(1000) < initial_ms {
        return Err(invalid(
            "retry.max_backoff_secs",
            format!("{max_backoff} s is shorter than retry.initial_delay_ms ({initial_ms} ms)"),
        ));
    }
    let steady_interval = positive("retry.steady_interval_secs", raw.steady_interval_secs, DEFAULT_RETRY_STEADY_INTERVAL_SECS, 1, 86400)?;
    let steady_until = positive("retry.steady_until_secs", raw.steady_until_secs, DEFAULT_RETRY_STEADY_UNTIL_SECS, 0, 30 * 86400)?;
    let slow_interval = positive("retry.slow_interval_secs", raw.slow_interval_secs, DEFAULT_RETRY_SLOW_INTERVAL_SECS, 1, 7 * 86400)?;
    let max_retry_after = positive("retry.max_retry_after_secs", raw.max_retry_after_secs, DEFAULT_RETRY_MAX_RETRY_AFTER_SECS, 1, 7 * 86400)?;
    let give_up_after = match raw.give_up_after_secs {
        None => None,
        some => Some(Duration::from_secs(positive("retry.give_up_after_secs", some, 0, 1, 365 * 86400)?)),
    };
    Ok(RetrySchedule {
        initial: Duration::from_millis(initial_ms),
        max_backoff: Duration::from_secs(max_backoff),
        steady_interval: Duration::from_secs(steady_interval),
        steady_until: Duration::from_secs(steady_until),
        slow_interval: Duration::from_secs(slow_interval),
        max_retry_after: Duration::from_secs(max_retry_after),
        give_up_after,
    })
}

fn validate_dead_letters(raw: RawDeadLetters) -> Result<DeadLetterSettings, ConfigError> {
    let max_bytes = positive("dead_letters.max_bytes", raw.max_bytes, DEFAULT_DEAD_LETTERS_MAX_BYTES, MIN_DEAD_LETTERS_MAX_BYTES, 1 << 40)?;
    Ok(DeadLetterSettings { max_bytes })
}

// The [queue] section.

/// Default for [`QueueSettings::max_bytes`] (1 GiB).
pub const DEFAULT_QUEUE_MAX_BYTES: u64 = 1 << 30;
/// Smallest accepted [`QueueSettings::max_bytes`] (1 MiB).
pub const MIN_QUEUE_MAX_BYTES: u64 = 1 << 20;
/// Default for [`QueueSettings::fsync_interval`], in milliseconds.
pub const DEFAULT_QUEUE_FSYNC_INTERVAL_MS: u64 = 100;

/// The `[queue]` section: the durable, encrypted queue in
/// `<state_dir>/queue/` where events wait for the server's acknowledgement
/// (see [`crate::queue`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSettings {
    /// `max_bytes`: the bound on the queue's files. When an append would
    /// pass it, the queue evicts the least important events first
    /// (performance, then logs, then usage, then inventory and health;
    /// security and settings records never) and counts every eviction.
    /// Default 1073741824 (1 GiB), between 1048576 (1 MiB) and 1 TiB.
    pub max_bytes: u64,
    /// `fsync_interval_ms`: group commit; events read are made durable at
    /// most this long after they were appended, and a source's position is
    /// committed only after that. Default 100 ms, between 1 and 10000 ms.
    pub fsync_interval: Duration,
    /// `segment_bytes`: size of the queue's segment files; `0` (the default)
    /// picks `max_bytes / 32` between 1 MiB and 32 MiB. Otherwise between
    /// 65536 and `max_bytes / 4`.
    pub segment_bytes: u64,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self { max_bytes: DEFAULT_QUEUE_MAX_BYTES, fsync_interval: Duration::from_millis(DEFAULT_QUEUE_FSYNC_INTERVAL_MS), segment_bytes: 0 }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    max_bytes: Option<i64>,
    fsync_interval_ms: Option<i64>,
    segment_bytes: Option<i64>,
}

fn validate_queue(raw: RawQueue) -> Result<QueueSettings, ConfigError> {
    let max_bytes = positive("queue.max_bytes", raw.max_bytes, DEFAULT_QUEUE_MAX_BYTES, MIN_QUEUE_MAX_BYTES, 1 << 40)?;
    let fsync_ms = positive("queue.fsync_interval_ms", raw.fsync_interval_ms, DEFAULT_QUEUE_FSYNC_INTERVAL_MS, 1, 10_000)?;
    let segment_bytes = match raw.segment_bytes {
        None | Some(0) => 0,
        some => positive("queue.segment_bytes", some, 0, 65536, max_bytes / 4)?,
    };
    Ok(QueueSettings { max_bytes, fsync_interval: Duration::from_millis(fsync_ms), segment_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        AgentConfig::from_toml_str(text).unwrap_err().to_string()
    }

    #[test]
    fn full_example_parses_with_values() {
        let cfg = AgentConfig::from_toml_str(
            r#"
            [agent]
            hostname = "web-1"
            batch_max_events = 100
            batch_max_bytes = 65536
            flush_interval_ms = 250

            [[sources]]
            type = "file"
            paths = ["/var/log/app/*.log", "/var/log/other.log"]
            table = "app_logs"
            level = "full"
            start_at = "end"
            max_line_bytes = 1000

            [[sources]]
            type = "stdin"
            level = 1

            [[sources]]
            type = "inventory"
            interval_secs = 60
            "#,
        )
        .unwrap();
        assert_eq!(cfg.agent.hostname.as_deref(), Some("web-1"));
        assert_eq!(cfg.agent.batch_max_events, 100);
        assert_eq!(cfg.agent.batch_max_bytes, 65536);
        assert_eq!(cfg.agent.flush_interval, Duration::from_millis(250));
        assert_eq!(cfg.agent.resolve_hostname().unwrap(), "web-1");
        let SourceConfig::File(f) = &cfg.sources[0] else {
            panic!("not a file source")
        };
        assert_eq!(f.paths.len(), 2);
        assert_eq!(f.table.as_str(), "app_logs");
        assert_eq!(f.level, Level::Full);
        assert_eq!(f.start_at, StartAt::End);
        assert_eq!(f.max_line_bytes, 1000);
        assert_eq!(
            f.name,
            "file:app_logs:/var/log/app/*.log,/var/log/other.log"
        );
        let SourceConfig::Stdin(s) = &cfg.sources[1] else {
            panic!("not stdin")
        };
        assert_eq!(s.level, Level::Basic);
        assert_eq!(s.table.as_str(), "logs");
        assert_eq!(s.name, "stdin");
        let SourceConfig::Inventory(i) = &cfg.sources[2] else {
            panic!("not inventory")
        };
        assert_eq!(i.interval, Duration::from_secs(60));
    }

    #[test]
    fn defaults_apply_when_fields_are_absent() {
        let cfg =
            AgentConfig::from_toml_str("[[sources]]\ntype = \"file\"\npaths = [\"/x/*.log\"]\n")
                .unwrap();
        assert_eq!(cfg.agent, AgentSettings::default());
        let SourceConfig::File(f) = &cfg.sources[0] else {
            panic!("not a file source")
        };
        assert_eq!(f.table.as_str(), "logs");
        assert_eq!(f.level, Level::Enhanced);
        assert_eq!(f.start_at, StartAt::Beginning);
        assert_eq!(f.max_line_bytes, DEFAULT_MAX_LINE_BYTES);
        let cfg = AgentConfig::from_toml_str("[[sources]]\ntype = \"inventory\"\n").unwrap();
        let SourceConfig::Inventory(i) = &cfg.sources[0] else {
            panic!("not inventory")
        };
        assert_eq!(i.interval, Duration::from_secs(3600));
    }

    #[test]
    fn empty_config_is_rejected_for_having_no_sources() {
        assert!(err("").contains("config has no [[sources]]"));
        assert!(err("[agent]\nbatch_max_events = 10\n").contains("no [[sources]]"));
    }

    #[test]
    fn unknown_field_is_named() {
        let e = err("[[sources]]\ntype = \"file\"\npaths = [\"/a\"]\npathz = 1\n");
        assert!(e.contains("pathz"), "{e}");
        let e = err("[agent]\nbatch_size = 1\n[[sources]]\ntype = \"stdin\"\n");
        assert!(e.contains("batch_size"), "{e}");
        let e = err("colour = 1\n[[sources]]\ntype = \"stdin\"\n");
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn performance_services_and_crash_sources_parse_with_defaults_and_values() {
        let cfg = AgentConfig::from_toml_str(
            "[[sources]]\ntype = \"performance\"\n[[sources]]\ntype = \"services\"\n[[sources]]\ntype = \"crash\"\n",
        )
        .unwrap();
        let SourceConfig::Performance(p) = &cfg.sources[0] else {
            panic!("not performance")
        };
        assert_eq!(
            (p.name.as_str(), p.interval),
            ("performance", Duration::from_secs(60))
        );
        let SourceConfig::Services(s) = &cfg.sources[1] else {
            panic!("not services")
        };
        assert_eq!(
            (s.name.as_str(), s.interval),
            ("services", Duration::from_secs(300))
        );
        let SourceConfig::Crash(c) = &cfg.sources[2] else {
            panic!("not crash")
        };
        assert_eq!(c.name, "crash");
        assert_eq!(
            c.paths,
            ["/var/crash/*.crash", "/var/lib/systemd/coredump/*"]
        );
        let types: Vec<&str> = cfg.sources.iter().map(SourceConfig::type_name).collect();
        assert_eq!(types, ["performance", "services", "crash"]);

        let cfg = AgentConfig::from_toml_str(
            "[[sources]]\ntype = \"performance\"\nname = \"perf\"\ninterval_secs = 1\n[[sources]]\ntype = \"services\"\ninterval_secs = 30\n[[sources]]\ntype = \"crash\"\npaths = [\"/srv/crash/*\"]\n",
        )
        .unwrap();
        assert_eq!(cfg.sources[0].name(), "perf");
        let SourceConfig::Performance(p) = &cfg.sources[0] else {
            panic!("not performance")
        };
        assert_eq!(p.interval, Duration::from_secs(1));
        let SourceConfig::Services(s) = &cfg.sources[1] else {
            panic!("not services")
        };
        assert_eq!(s.interval, Duration::from_secs(30));
        let SourceConfig::Crash(c) = &cfg.sources[2] else {
            panic!("not crash")
        };
        assert_eq!(c.paths, ["/srv/crash/*"]);
    }

    #[test]
    fn bad_performance_services_and_crash_values_are_rejected_naming_the_field() {
        for (text, field) in [
            (
                "type = \"performance\"\ninterval_secs = 0",
                "sources[0].interval_secs",
            ),
            (
                "type = \"performance\"\ninterval_secs = 86401",
                "sources[0].interval_secs",
            ),
            (
                "type = \"services\"\ninterval_secs = -1",
                "sources[0].interval_secs",
            ),
            ("type = \"crash\"\npaths = []", "sources[0].paths"),
            (
                "type = \"crash\"\npaths = [\"crash/*\"]",
                "sources[0].paths[0]",
            ),
            (
                "type = \"crash\"\npaths = [\"/a/[z\"]",
                "sources[0].paths[0]",
            ),
            ("type = \"performance\"\npaths = [\"/a\"]", "paths"),
            ("type = \"crash\"\ninterval_secs = 5", "interval_secs"),
        ] {
            let e = err(&format!("[[sources]]\n{text}\n"));
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn log_sources_may_not_write_to_a_registry_table_that_is_not_a_log_table() {
        for table in ["inventory", "usage", "crash_reports", "agent_settings"] {
            let e = err(&format!(
                "[[sources]]\ntype = \"stdin\"\ntable = \"{table}\"\n"
            ));
            assert!(e.contains("sources[0].table") && e.contains(table), "{e}");
        }
        for table in ["logs", "app_logs", "nginx"] {
            let text =
                format!("[[sources]]\ntype = \"file\"\npaths = [\"/a\"]\ntable = \"{table}\"\n");
            AgentConfig::from_toml_str(&text).unwrap();
        }
    }

    #[test]
    fn unknown_source_type_is_named() {
        let e = err("[[sources]]\ntype = \"journald\"\n");
        assert!(e.contains("journald"), "{e}");
        let e = err("[[sources]]\npaths = [\"/a\"]\n");
        assert!(e.contains("type"), "{e}");
    }

    #[test]
    fn bad_table_name_is_rejected_naming_the_field() {
        let e = err("[[sources]]\ntype = \"file\"\npaths = [\"/a\"]\ntable = \"Bad-Name\"\n");
        assert!(
            e.contains("sources[0].table") && e.contains("Bad-Name"),
            "{e}"
        );
    }

    #[test]
    fn bad_level_is_rejected_naming_the_field() {
        let e = err("[[sources]]\ntype = \"stdin\"\nlevel = \"verbose\"\n");
        assert!(
            e.contains("sources[0].level") && e.contains("verbose"),
            "{e}"
        );
        let e = err("[[sources]]\ntype = \"stdin\"\nlevel = 4\n");
        assert!(e.contains("sources[0].level") && e.contains('4'), "{e}");
        let e = err("[[sources]]\ntype = \"stdin\"\nlevel = true\n");
        assert!(e.contains("sources[0].level"), "{e}");
    }

    #[test]
    fn missing_or_empty_paths_are_rejected() {
        let e = err("[[sources]]\ntype = \"file\"\n");
        assert!(e.contains("paths"), "{e}");
        let e = err("[[sources]]\ntype = \"file\"\npaths = []\n");
        assert!(
            e.contains("sources[0].paths") && e.contains("at least one"),
            "{e}"
        );
    }

    #[test]
    fn relative_or_malformed_patterns_are_rejected() {
        let e = err("[[sources]]\ntype = \"file\"\npaths = [\"/ok\", \"logs/*.log\"]\n");
        assert!(
            e.contains("sources[0].paths[1]") && e.contains("logs/*.log"),
            "{e}"
        );
        let e = err("[[sources]]\ntype = \"file\"\npaths = [\"/a/[z\"]\n");
        assert!(e.contains("sources[0].paths[0]"), "{e}");
    }

    #[test]
    fn bad_start_at_and_out_of_range_numbers_are_rejected() {
        let e = err("[[sources]]\ntype = \"file\"\npaths = [\"/a\"]\nstart_at = \"middle\"\n");
        assert!(
            e.contains("sources[0].start_at") && e.contains("middle"),
            "{e}"
        );
        let e = err("[[sources]]\ntype = \"file\"\npaths = [\"/a\"]\nmax_line_bytes = 0\n");
        assert!(e.contains("sources[0].max_line_bytes"), "{e}");
        let e = err("[agent]\nbatch_max_events = -5\n[[sources]]\ntype = \"stdin\"\n");
        assert!(
            e.contains("agent.batch_max_events") && e.contains("-5"),
            "{e}"
        );
        let e = err("[[sources]]\ntype = \"inventory\"\ninterval_secs = 0\n");
        assert!(e.contains("sources[0].interval_secs"), "{e}");
        let e = err("[agent]\nhostname = \"a b\"\n[[sources]]\ntype = \"stdin\"\n");
        assert!(e.contains("agent.hostname"), "{e}");
    }

    #[test]
    fn duplicate_names_and_second_stdin_are_rejected() {
        let e = err("[[sources]]\ntype = \"inventory\"\n[[sources]]\ntype = \"inventory\"\n");
        assert!(
            e.contains("sources[1].name") && e.contains("duplicate"),
            "{e}"
        );
        let e =
            err("[[sources]]\ntype = \"stdin\"\n[[sources]]\ntype = \"stdin\"\nname = \"other\"\n");
        assert!(
            e.contains("sources[1]") && e.contains("only one stdin"),
            "{e}"
        );
    }

    #[test]
    fn from_path_names_the_file_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let e = AgentConfig::from_path(&path).unwrap_err().to_string();
        assert!(e.contains("agent.toml"), "{e}");
        std::fs::write(&path, "[[sources]]\ntype = \"stdin\"\ntable = \"9x\"\n").unwrap();
        let e = AgentConfig::from_path(&path).unwrap_err().to_string();
        assert!(
            e.contains("agent.toml") && e.contains("sources[0].table"),
            "{e}"
        );
        std::fs::write(&path, "[[sources]]\ntype = \"stdin\"\n").unwrap();
        assert_eq!(AgentConfig::from_path(&path).unwrap().sources.len(), 1);
    }

    #[test]
    fn telemetry_section_defaults_when_absent() {
        let cfg = AgentConfig::from_toml_str("[[sources]]\ntype = \"stdin\"\n").unwrap();
        let t = &cfg.telemetry;
        assert_eq!(*t, TelemetrySettings::default());
        assert_eq!((t.level, t.enabled, t.usage), (None, None, None));
        assert_eq!(t.policy_file, PathBuf::from("/etc/custos/policy.toml"));
        assert_eq!(t.policy_reload, Duration::from_secs(5));
        assert_eq!(t.ledger_max_bytes, 256 * 1024 * 1024);
        assert_eq!(t.ledger_max_age, Duration::from_secs(90 * 86400));
        assert_eq!(
            t.control_socket_path(Path::new("/var/lib/custos-agent")),
            PathBuf::from("/var/lib/custos-agent/control/control.sock")
        );
    }

    #[test]
    fn telemetry_section_parses_every_field() {
        let cfg = AgentConfig::from_toml_str(
            r#"
            [[sources]]
            type = "stdin"

            [telemetry]
            level = 1
            enabled = false
            usage = false
            policy_file = "/opt/custos/policy.toml"
            policy_reload_secs = 30
            control_socket = "/run/custos/control.sock"
            ledger_max_bytes = 1048576
            ledger_max_age_days = 7
            "#,
        )
        .unwrap();
        let t = &cfg.telemetry;
        assert_eq!(t.level, Some(Level::Basic));
        assert_eq!((t.enabled, t.usage), (Some(false), Some(false)));
        assert_eq!(t.policy_file, PathBuf::from("/opt/custos/policy.toml"));
        assert_eq!(t.policy_reload, Duration::from_secs(30));
        assert_eq!(t.control_socket_path(Path::new("/x")), PathBuf::from("/run/custos/control.sock"));
        assert_eq!(t.ledger_max_bytes, 1048576);
        assert_eq!(t.ledger_max_age, Duration::from_secs(7 * 86400));
        let cfg = AgentConfig::from_toml_str("[[sources]]\ntype = \"stdin\"\n[telemetry]\nlevel = \"full\"\n").unwrap();
        assert_eq!(cfg.telemetry.level, Some(Level::Full));
    }

    #[test]
    fn bad_telemetry_values_are_rejected_naming_the_field() {
        let base = "[[sources]]\ntype = \"stdin\"\n[telemetry]\n";
        for (line, field) in [
            ("level = 9", "telemetry.level"),
            ("level = \"loud\"", "telemetry.level"),
            ("policy_file = \"policy.toml\"", "telemetry.policy_file"),
            ("policy_reload_secs = 0", "telemetry.policy_reload_secs"),
            ("control_socket = \"control.sock\"", "telemetry.control_socket"),
            ("ledger_max_bytes = 1000", "telemetry.ledger_max_bytes"),
            ("ledger_max_age_days = 0", "telemetry.ledger_max_age_days"),
        ] {
            let e = err(&format!("{base}{line}\n"));
            assert!(e.contains(field), "{line}: {e}");
        }
        let long = format!("{base}control_socket = \"/{}\"\n", "s".repeat(200));
        assert!(err(&long).contains("telemetry.control_socket"));
        let e = err(&format!("{base}levels = 1\n"));
        assert!(e.contains("levels"), "{e}");
    }

    #[test]
    fn retry_and_dead_letter_sections_default_to_the_published_schedule_when_absent() {
        let cfg = AgentConfig::from_toml_str("[[sources]]\ntype = \"stdin\"\n").unwrap();
        assert_eq!(cfg.retry, RetrySchedule::default());
        assert_eq!(cfg.dead_letters.max_bytes, 256 * 1024 * 1024);
        assert_eq!(cfg.queue, QueueSettings::default());
    }

    #[test]
    fn retry_and_dead_letter_sections_parse_every_field() {
        let cfg = AgentConfig::from_toml_str(
            r#"
            [[sources]]
            type = "stdin"

            [retry]
            initial_delay_ms = 250
            max_backoff_secs = 60
            steady_interval_secs = 120
            steady_until_secs = 0
            slow_interval_secs = 1800
            max_retry_after_secs = 600
            give_up_after_secs = 900

            [dead_letters]
            max_bytes = 1048576
            "#,
        )
        .unwrap();
        let s = &cfg.retry;
        assert_eq!(s.initial, Duration::from_millis(250));
        assert_eq!(s.max_backoff, Duration::from_secs(60));
        assert_eq!(s.steady_interval, Duration::from_secs(120));
        assert_eq!(s.steady_until, Duration::ZERO);
        assert_eq!(s.slow_interval, Duration::from_secs(1800));
        assert_eq!(s.max_retry_after, Duration::from_secs(600));
        assert_eq!(s.give_up_after, Some(Duration::from_secs(900)));
        assert_eq!(cfg.dead_letters.max_bytes, 1048576);
    }

    #[test]
    fn bad_retry_and_dead_letter_values_are_rejected_naming_the_field() {
        let base = "[[sources]]\ntype = \"stdin\"\n";
        for (text, field) in [
            ("[retry]\ninitial_delay_ms = 0", "retry.initial_delay_ms"),
            ("[queue]\nmax_bytes = 1000", "queue.max_bytes"),
            ("[queue]\nfsync_interval_ms = 0", "queue.fsync_interval_ms"),
            ("[queue]\nmax_bytes = 4194304\nsegment_bytes = 4194304", "queue.segment_bytes"),
            ("[retry]\nmax_backoff_secs = 0", "retry.max_backoff_secs"),
            ("[retry]\ninitial_delay_ms = 5000\nmax_backoff_secs = 2", "retry.max_backoff_secs"),
            ("[retry]\nsteady_interval_secs = -1", "retry.steady_interval_secs"),
            ("[retry]\nsteady_until_secs = 2592001", "retry.steady_until_secs"),
            ("[retry]\nslow_interval_secs = 0", "retry.slow_interval_secs"),
            ("[retry]\nmax_retry_after_secs = 0", "retry.max_retry_after_secs"),
            ("[retry]\ngive_up_after_secs = 0", "retry.give_up_after_secs"),
            ("[retry]\nbackoff = 1", "backoff"),
            ("[dead_letters]\nmax_bytes = 1000", "dead_letters.max_bytes"),
            ("[dead_letters]\nmax_entries = 1", "max_entries"),
        ] {
            let e = err(&format!("{base}{text}\n"));
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn the_example_at_the_top_of_this_file_parses_with_the_documented_retry_defaults() {
        let src = include_str!("config.rs");
        let example: String = src
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| format!("{}\n", l.strip_prefix("//!").unwrap_or(l).strip_prefix(' ').unwrap_or("")))
            .collect();
        let cfg = AgentConfig::from_toml_str(&example).unwrap_or_else(|e| panic!("{e}\n{example}"));
        assert_eq!(cfg.retry, RetrySchedule::default());
        assert_eq!(cfg.dead_letters, DeadLetterSettings::default());
    }
}
