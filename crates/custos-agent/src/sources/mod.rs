//! Event sources: files, standard input and the host inventory.
//!
//! Every source is driven the same way by the run loop (from a blocking
//! task, since sources use synchronous std I/O):
//!
//! 1. [`Source::poll`] returns up to a batch of new events and a
//!    [`Checkpoint`] describing where reading has got to;
//! 2. once the server has acknowledged those events, the caller passes the
//!    checkpoint to [`Source::commit`], which persists it.
//!
//! Events are never considered delivered before `commit`: after a restart a
//! source resumes from its last committed checkpoint, so nothing is lost and
//! at most the uncommitted tail is read again.
//!
//! Checkpoints are cumulative: the checkpoint of a poll covers the events of
//! every earlier poll of the same source, so committing the latest
//! acknowledged one is enough. Committing an older checkpoint after a newer
//! one is ignored.
//!
//! [`Source::skip_to_end`] discards everything available now (used when
//! telemetry is enabled again after a disable: data produced while it was
//! disabled is never collected).
//!
//! Sources never read the agent's own state directory (positions, ledger,
//! queue): [`build_sources`] makes file and crash sources skip every path
//! under it.
//!
//! | source | table | category | level | state file |
//! |---|---|---|---|---|
//! | [`FileSource`], [`StdinSource`] | `logs` or the configured log table | logs | max(severity, configured floor) | [`POSITIONS_FILE`] (files only) |
//! | [`InventorySource`] | `inventory` | inventory | 1 | none |
//! | [`PerformanceSource`] | `performance` | performance | 2 | none |
//! | [`ServicesSource`] | `service_usage` | performance | 2 | none |
//! | [`CrashSource`] | `crash_reports` | crash | 3 | [`CRASH_STATE_FILE`] |
//! | [`UsageSource`] (not configured; always built by the run loop) | `usage` | usage | 0 | [`USAGE_STATE_FILE`] |

use crate::config::{AgentConfig, SourceConfig};
use custos_model::{Category, Event, Level, TableName, Value};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub mod crash;
pub mod file;
pub mod inventory;
mod lines;
pub mod performance;
pub mod positions;
pub mod services;
pub mod severity;
pub mod stdin;
pub mod usage;

pub use crash::{CrashSource, CRASH_STATE_FILE};
pub use file::FileSource;
pub use inventory::{InventoryPaths, InventorySource};
pub use performance::PerformanceSource;
pub use positions::{FilePosition, PositionStore, POSITIONS_FILE};
pub use services::ServicesSource;
pub use stdin::StdinSource;
pub use usage::{UsageSource, USAGE_STATE_FILE};

/// A source failed. Messages name the file or source concerned.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// An I/O operation on a file or directory failed.
    #[error("{action} {}: {source}", .path.display())]
    Io {
        /// What was being done ("reading", "opening", "writing", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The positions file exists but cannot be understood.
    #[error("positions file {} is corrupt ({reason}); move it away to start over (files may then be read again)", .path.display())]
    CorruptPositions {
        /// The positions file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A source's state file (crash reports seen, usage period) exists but
    /// cannot be understood.
    #[error("state file {} is corrupt ({reason}); move it away to start over", .path.display())]
    CorruptState {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint was committed to a source that did not produce it.
    #[error("checkpoint of source {checkpoint_source:?} committed to source {source_name:?}")]
    ForeignCheckpoint {
        /// The source the checkpoint was committed to.
        source_name: String,
        /// The source that produced the checkpoint.
        checkpoint_source: String,
    },
    /// Reading standard input failed.
    #[error("reading standard input: {0}")]
    Stdin(std::io::Error),
    /// A background thread could not be started.
    #[error("starting the reader thread of source {name:?}: {source}")]
    Thread {
        /// The source.
        name: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Where reading has got to. Persisted by [`Source::commit`] only after the
/// server acknowledged the events polled before it. Opaque to the caller.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// The source that produced it.
    source: String,
    /// Poll sequence number (increasing per source instance).
    seq: u64,
    /// What to persist on commit; `None` for sources with nothing to persist.
    saved: Option<Saved>,
}

/// The state a checkpoint carries, per kind of source.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Saved {
    /// File positions (file sources).
    Files(Vec<FilePosition>),
    /// Crash reports already reported (crash sources).
    Crashes(Vec<crash::ReportedCrash>),
    /// The usage accounting state.
    Usage(usage::UsageCheckpoint),
}

impl Checkpoint {
    /// The name of the source this checkpoint belongs to.
    pub fn source_name(&self) -> &str {
        &self.source
    }

    /// A checkpoint with nothing to persist, for benchmarks outside the crate.
    #[doc(hidden)]
    pub fn for_bench(source: &str, seq: u64) -> Checkpoint {
        Self::with_saved(source, seq, None)
    }

    pub(crate) fn new(source: &str, seq: u64, files: Option<Vec<FilePosition>>) -> Self {
        Self::with_saved(source, seq, files.map(Saved::Files))
    }

    pub(crate) fn with_saved(source: &str, seq: u64, saved: Option<Saved>) -> Self {
        Self {
            source: source.to_string(),
            seq,
            saved,
        }
    }

    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    pub(crate) fn files(&self) -> Option<&[FilePosition]> {
        match &self.saved {
            Some(Saved::Files(f)) => Some(f),
            _ => None,
        }
    }

    pub(crate) fn saved(&self) -> Option<&Saved> {
        self.saved.as_ref()
    }

    /// Check that this checkpoint was produced by the source `name`.
    pub(crate) fn check_owner(&self, name: &str) -> Result<(), SourceError> {
        if self.source == name {
            Ok(())
        } else {
            Err(SourceError::ForeignCheckpoint {
                source_name: name.to_string(),
                checkpoint_source: self.source.clone(),
            })
        }
    }
}

/// The result of one [`Source::poll`].
#[derive(Clone, Debug)]
pub struct Poll {
    /// The new events, oldest first.
    pub events: Vec<Event>,
    /// Where reading has got to after these events; commit it once they are
    /// acknowledged.
    pub checkpoint: Checkpoint,
    /// True when the source has nothing more to give right now (the limits
    /// were not what stopped it); poll again later. False means more data is
    /// ready and the caller may poll again at once.
    pub exhausted: bool,
}

/// A source of events.
pub trait Source: Send {
    /// The source's unique name (from the configuration).
    fn name(&self) -> String;

    /// Read up to `max_events` events / about `max_bytes` bytes of new data
    /// (at least one event is returned when any is available, whatever the
    /// limits). `drain` also emits a final line that has no trailing newline
    /// (used by `--once` and at shutdown); otherwise a partial last line
    /// waits for its newline. See each source for details.
    fn poll(
        &mut self,
        max_events: usize,
        max_bytes: usize,
        drain: bool,
    ) -> Result<Poll, SourceError>;

    /// The caller acknowledges that everything up to `checkpoint` was durably
    /// delivered: persist it.
    fn commit(&mut self, checkpoint: &Checkpoint) -> Result<(), SourceError>;

    /// Discard everything available now, so that the next poll returns only
    /// what appears after this call: file sources move (and commit) their
    /// positions to the current ends of their files, stdin drops what it has
    /// buffered, the crash source marks the current reports as reported,
    /// periodic sources drop pending events and restart their timers (a
    /// rate's next sample covers only the time after this call). Used when
    /// telemetry is enabled again after a disable: data produced while it
    /// was disabled is never collected. Checkpoints of earlier polls are
    /// ignored once this has run.
    fn skip_to_end(&mut self) -> Result<(), SourceError>;
}

/// Build the sources a configuration declares, in order. File positions
/// and the crash sources' state are kept in `state_dir` (created if
/// missing, see [`PositionStore`] and [`CrashSource`]); file and crash
/// sources skip every path under `state_dir`, so the agent never collects
/// its own state (ledger, queue, positions). `hostname` goes into every
/// event. Positions of file sources no longer configured are dropped from
/// the store at the next commit. The usage source is not configured here:
/// the run loop builds a [`UsageSource`] itself.
pub fn build_sources(
    cfg: &AgentConfig,
    state_dir: &Path,
    hostname: &str,
) -> Result<Vec<Box<dyn Source>>, SourceError> {
    let has_files = cfg
        .sources
        .iter()
        .any(|s| matches!(s, SourceConfig::File(_)));
    let store = if has_files {
        let mut store = PositionStore::open(state_dir)?;
        let keep: Vec<&str> = cfg
            .sources
            .iter()
            .filter(|s| matches!(s, SourceConfig::File(_)))
            .map(|s| s.name())
            .collect();
        store.retain_sources(|name| keep.contains(&name));
        Some(Arc::new(Mutex::new(store)))
    } else {
        None
    };
    let mut out: Vec<Box<dyn Source>> = Vec::with_capacity(cfg.sources.len());
    for sc in &cfg.sources {
        match sc {
            SourceConfig::File(f) => {
                // `store` is Some whenever a file source is configured (has_files).
                let Some(store) = &store else { continue };
                out.push(Box::new(
                    FileSource::new(f.clone(), hostname, Arc::clone(store))
                        .excluding_dir(state_dir),
                ));
            }
            SourceConfig::Stdin(s) => {
                out.push(Box::new(StdinSource::from_stdin(s.clone(), hostname)?));
            }
            SourceConfig::Inventory(i) => {
                out.push(Box::new(InventorySource::new(i.clone(), hostname)));
            }
            SourceConfig::Performance(p) => {
                out.push(Box::new(PerformanceSource::new(p.clone(), hostname)));
            }
            SourceConfig::Services(s) => {
                out.push(Box::new(ServicesSource::new(s.clone(), hostname)));
            }
            SourceConfig::Crash(c) => {
                out.push(Box::new(CrashSource::open(c.clone(), hostname, state_dir)?));
            }
        }
    }
    Ok(out)
}

/// True when `path` is `dir` or lies under it, comparing the paths as given
/// and, when they exist, their canonical forms (so a symbolic link into
/// `dir` is caught too).
pub(crate) fn is_under(path: &Path, dir: &Path) -> bool {
    if path.starts_with(dir) {
        return true;
    }
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    if path.starts_with(&dir) {
        return true;
    }
    path.canonicalize().is_ok_and(|p| p.starts_with(&dir))
}

/// Build a log-line event (category logs, time = now). The line's
/// severity is detected ([`severity::detect`]) and stored in the attribute
/// `severity`; the event's level is the higher of the severity's level and
/// `floor`, the source's configured level.
pub(crate) fn line_event(
    table: &TableName,
    floor: Level,
    host: &str,
    message: String,
    mut attrs: BTreeMap<String, Value>,
) -> Event {
    let severity = severity::detect(&message);
    attrs.insert(
        "severity".to_string(),
        Value::Str(severity.name().to_string()),
    );
    Event {
        table: table.clone(),
        time: custos_model::now_micros(),
        level: severity.level().max(floor),
        category: Category::Logs,
        host: host.to_string(),
        message,
        attrs,
    }
}

/// Pop events from the front of `pending` within the limits (at least one
/// when any is there).
pub(crate) fn take_limited(
    pending: &mut VecDeque<Event>,
    max_events: usize,
    max_bytes: usize,
) -> Vec<Event> {
    let (max_events, max_bytes) = (max_events.max(1), max_bytes.max(1));
    let mut events = Vec::new();
    let mut bytes = 0usize;
    while let Some(e) = pending.front() {
        let size = e.approx_size();
        if !events.is_empty() && (events.len() >= max_events || bytes + size > max_bytes) {
            break;
        }
        bytes += size;
        if let Some(e) = pending.pop_front() {
            events.push(e);
        }
    }
    events
}

/// Lock a mutex, recovering the data if another thread panicked while
/// holding it (the guarded data stays consistent: every update is a single
/// assignment).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_sources_creates_one_source_per_entry_and_drops_stale_positions() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut store = PositionStore::open(&state).unwrap();
        store
            .set(
                "gone",
                vec![FilePosition {
                    path: "/x".into(),
                    dev: 1,
                    ino: 2,
                    offset: 3,
                }],
            )
            .unwrap();
        drop(store);
        let log = dir.path().join("a.log");
        std::fs::write(&log, "hello\n").unwrap();
        let text = format!(
            "[[sources]]\ntype = \"file\"\nname = \"app\"\npaths = [{:?}]\n[[sources]]\ntype = \"inventory\"\n",
            log.to_string_lossy()
        );
        let cfg = AgentConfig::from_toml_str(&text).unwrap();
        let mut sources = build_sources(&cfg, &state, "h1").unwrap();
        let names: Vec<String> = sources.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["app", "inventory"]);
        let p = sources[0].poll(10, 1 << 20, false).unwrap();
        assert_eq!(p.events[0].message, "hello");
        assert_eq!(p.events[0].host, "h1");
        sources[0].commit(&p.checkpoint).unwrap();
        let store = PositionStore::open(&state).unwrap();
        assert!(!store.has_source("gone"));
        assert_eq!(store.get("app")[0].offset, 6);
    }

    #[test]
    fn build_sources_builds_every_source_type() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[[sources]]\ntype = \"performance\"\n[[sources]]\ntype = \"services\"\n[[sources]]\ntype = \"crash\"\npaths = [{:?}]\n[[sources]]\ntype = \"inventory\"\n",
            dir.path().join("crash/*.crash").to_string_lossy()
        );
        let cfg = AgentConfig::from_toml_str(&text).unwrap();
        let mut sources = build_sources(&cfg, &dir.path().join("state"), "h").unwrap();
        let names: Vec<String> = sources.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["performance", "services", "crash", "inventory"]);
        let reg = custos_model::registry::Registry::builtin();
        for s in &mut sources {
            let p = s.poll(100_000, usize::MAX, false).unwrap();
            for e in &p.events {
                reg.check_event(e)
                    .unwrap_or_else(|err| panic!("{}: {err}", s.name()));
            }
            s.commit(&p.checkpoint).unwrap();
            s.skip_to_end().unwrap();
        }
    }

    #[test]
    fn build_sources_never_reads_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(state.join("ledger")).unwrap();
        std::fs::write(state.join("ledger/segment.log"), "what was sent\n").unwrap();
        std::fs::write(dir.path().join("app.log"), "app\n").unwrap();
        let text = format!(
            "[[sources]]\ntype = \"file\"\nname = \"all\"\npaths = [{:?}]\n",
            dir.path().join("**/*.log").to_string_lossy()
        );
        let cfg = AgentConfig::from_toml_str(&text).unwrap();
        let mut sources = build_sources(&cfg, &state, "h").unwrap();
        let p = sources[0].poll(100, 1 << 20, true).unwrap();
        let got: Vec<&str> = p.events.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(got, ["app"]);
    }

    #[test]
    fn is_under_compares_plain_and_canonical_paths() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("f"), "").unwrap();
        assert!(is_under(&state.join("f"), &state));
        assert!(is_under(&state, &state));
        assert!(!is_under(&dir.path().join("statefile"), &state));
        std::os::unix::fs::symlink(&state, dir.path().join("alias")).unwrap();
        assert!(is_under(&dir.path().join("alias/f"), &state));
        assert!(is_under(&state.join("f"), &dir.path().join("alias")));
        assert!(!is_under(
            Path::new("/nonexistent/x"),
            &dir.path().join("missing")
        ));
    }
}
