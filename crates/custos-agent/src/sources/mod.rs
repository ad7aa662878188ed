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

use crate::config::{AgentConfig, SourceConfig};
use custos_model::{Category, Event, Level, TableName, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub mod file;
pub mod inventory;
mod lines;
pub mod positions;
pub mod stdin;

pub use file::FileSource;
pub use inventory::{InventoryPaths, InventorySource};
pub use positions::{FilePosition, PositionStore, POSITIONS_FILE};
pub use stdin::StdinSource;

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
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The source that produced it.
    source: String,
    /// Poll sequence number (increasing per source instance).
    seq: u64,
    /// File positions (file sources); `None` for sources with nothing to persist.
    files: Option<Vec<FilePosition>>,
}

impl Checkpoint {
    /// The name of the source this checkpoint belongs to.
    pub fn source_name(&self) -> &str {
        &self.source
    }

    pub(crate) fn new(source: &str, seq: u64, files: Option<Vec<FilePosition>>) -> Self {
        Self {
            source: source.to_string(),
            seq,
            files,
        }
    }

    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    pub(crate) fn files(&self) -> Option<&[FilePosition]> {
        self.files.as_deref()
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
}

/// Build the sources a configuration declares, in order. File positions are
/// kept in `state_dir` (created if missing, see [`PositionStore`]); `hostname`
/// goes into every event. Positions of file sources no longer configured are
/// dropped from the store at the next commit.
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
                out.push(Box::new(FileSource::new(
                    f.clone(),
                    hostname,
                    Arc::clone(store),
                )));
            }
            SourceConfig::Stdin(s) => {
                out.push(Box::new(StdinSource::from_stdin(s.clone(), hostname)?));
            }
            SourceConfig::Inventory(i) => {
                out.push(Box::new(InventorySource::new(i.clone(), hostname)));
            }
        }
    }
    Ok(out)
}

/// Build a log-line event (category logs, time = now).
pub(crate) fn line_event(
    table: &TableName,
    level: Level,
    host: &str,
    message: String,
    attrs: BTreeMap<String, Value>,
) -> Event {
    Event {
        table: table.clone(),
        time: custos_model::now_micros(),
        level,
        category: Category::Logs,
        host: host.to_string(),
        message,
        attrs,
    }
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
}
