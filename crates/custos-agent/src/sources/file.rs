//! The file source: tails the files matching glob patterns.
//!
//! Behaviour:
//!
//! - The patterns are evaluated again on every poll, so files created later
//!   are picked up (from their beginning).
//! - A file is identified by (device, inode) as well as its path. Positions
//!   are saved per source in the [`PositionStore`] on commit, and after a
//!   restart each file found again (by identity) resumes at its committed
//!   position.
//! - Rotation: when a path points to a different inode than the one being
//!   read, the old file stays open and is read to its end, then the new file
//!   is read from 0. The old (or deleted) file is forgotten once it has been
//!   read to its end and has not grown for [`DETACHED_GRACE`] (or at once when
//!   draining); its partial last line, if any, is emitted then.
//! - Truncation (size below the position, e.g. copytruncate): reading starts
//!   again at 0, with a warning.
//! - Lines are split on '\n', a trailing '\r' is stripped, invalid UTF-8 is
//!   replaced, empty lines are skipped, and lines longer than
//!   `max_line_bytes` are cut into pieces marked `truncated = true`.
//!
//! - Files under the excluded directory (the agent's state directory, see
//!   [`FileSource::excluding_dir`]) are never read, even when a pattern
//!   matches them or a symbolic link leads there.
//!
//! Each event: the configured table, category logs, time = when read, host =
//! the agent's host name, message = the line, attributes `file` = the path,
//! `source` = `"file"`, `severity` = the severity detected in the line (see
//! [`super::severity`]) and `truncated` = true for pieces of a long line.
//! Its level is the higher of the severity's level and the configured
//! `level` (a floor).
//!
//! [`Source::skip_to_end`] moves every file's position to its current end
//! and commits that, so what was written before it is never read. When a
//! file ends in the middle of a line, the rest of that line is dropped when
//! it arrives (that it is to be dropped is not persisted: after a restart
//! before the next commit it is read as a line).

use super::lines::LineSplitter;
use super::{line_event, lock, Checkpoint, FilePosition, Poll, PositionStore, Source, SourceError};
use crate::config::{FileSourceConfig, StartAt};
use custos_model::{Event, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a rotated or deleted file is kept open after it last grew, in
/// case its writer has not yet switched to the new file.
pub const DETACHED_GRACE: Duration = Duration::from_secs(5);

/// Bytes read from a file at a time.
const READ_CHUNK: usize = 64 * 1024;

/// (device, inode).
type FileId = (u64, u64);

/// One file being read.
#[derive(Debug)]
struct Tracked {
    /// Where the file was last found.
    path: PathBuf,
    id: FileId,
    file: File,
    /// Byte offset just after the last line emitted.
    offset: u64,
    splitter: LineSplitter,
    /// Since when the path no longer leads to this file (rotated or deleted).
    detached_since: Option<Instant>,
    /// When data was last consumed from it.
    last_data: Instant,
    /// The next line is the rest of a line skipped by `skip_to_end`: drop it.
    drop_next_line: bool,
}

/// How reading one file ended.
enum ReadEnd {
    /// The poll's limits were reached.
    Full,
    /// Everything available was read (a partial last line may remain).
    Eof,
}

/// Tails the files matching a [`FileSourceConfig`]'s glob patterns.
pub struct FileSource {
    cfg: FileSourceConfig,
    hostname: String,
    store: Arc<Mutex<PositionStore>>,
    tracked: Vec<Tracked>,
    /// Positions saved by an earlier run; `Some` until the first scan.
    restored: Option<Vec<FilePosition>>,
    /// Whether `start_at = "end"` applies to the first scan (no saved state).
    skip_existing: bool,
    seq: u64,
    committed_seq: Option<u64>,
    /// Paths that could not be opened (warned about once).
    unreadable: HashSet<PathBuf>,
    /// Round-robin start among attached files, so a busy file cannot starve others.
    next_start: usize,
    /// Files under this directory are never read.
    excluded_dir: Option<PathBuf>,
    /// Files found to be under `excluded_dir` (not checked again).
    excluded: HashSet<FileId>,
}

impl FileSource {
    /// A file source saving its positions in `store` under its name.
    pub fn new(cfg: FileSourceConfig, hostname: &str, store: Arc<Mutex<PositionStore>>) -> Self {
        let (restored, has_state) = {
            let s = lock(&store);
            (s.get(&cfg.name).to_vec(), s.has_source(&cfg.name))
        };
        let skip_existing = cfg.start_at == StartAt::End && !has_state;
        Self {
            cfg,
            hostname: hostname.to_string(),
            store,
            tracked: Vec::new(),
            restored: Some(restored),
            skip_existing,
            seq: 0,
            committed_seq: None,
            unreadable: HashSet::new(),
            next_start: 0,
            excluded_dir: None,
            excluded: HashSet::new(),
        }
    }

    /// Never read files under `dir` (the agent's state directory), whatever
    /// the patterns match.
    pub fn excluding_dir(mut self, dir: &Path) -> Self {
        self.excluded_dir = Some(dir.to_path_buf());
        self
    }

    /// Evaluate the patterns and reconcile the tracked files with what they match.
    fn scan(&mut self) {
        let now = Instant::now();
        let mut seen: HashSet<PathBuf> = HashSet::new();
        let mut found: Vec<(PathBuf, FileId)> = Vec::new();
        for pattern in &self.cfg.paths {
            let paths = match glob::glob(pattern) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(source = %self.cfg.name, pattern = %pattern, error = %e, "invalid glob pattern");
                    continue;
                }
            };
            for entry in paths {
                let path = match entry {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!(source = %self.cfg.name, error = %e, "glob could not read a directory");
                        continue;
                    }
                };
                if !seen.insert(path.clone()) {
                    continue;
                }
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() => found.push((path, (m.dev(), m.ino()))),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(path = %path.display(), error = %e, "cannot stat matched path")
                    }
                }
            }
        }
        let mut by_id: HashMap<FileId, Vec<&PathBuf>> = HashMap::new();
        for (path, id) in &found {
            by_id.entry(*id).or_default().push(path);
        }
        for t in &mut self.tracked {
            match by_id.get(&t.id) {
                Some(paths) => {
                    if !paths.contains(&&t.path) {
                        tracing::info!(from = %t.path.display(), to = %paths[0].display(), "file renamed; following it");
                        t.path = paths[0].clone();
                    }
                    t.detached_since = None;
                }
                None => {
                    if t.detached_since.is_none() {
                        tracing::info!(path = %t.path.display(), "file rotated or removed; reading the rest of the old file");
                        t.detached_since = Some(now);
                    }
                }
            }
        }
        let restored = self.restored.take();
        for (path, id) in found {
            if self.tracked.iter().any(|t| t.id == id) || self.excluded.contains(&id) {
                continue;
            }
            if let Some(dir) = &self.excluded_dir {
                if super::is_under(&path, dir) {
                    tracing::warn!(source = %self.cfg.name, path = %path.display(), "not reading a file in the agent's state directory");
                    self.excluded.insert(id);
                    continue;
                }
            }
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    if self.unreadable.insert(path.clone()) {
                        tracing::warn!(source = %self.cfg.name, path = %path.display(), error = %e, "cannot open file; will retry");
                    }
                    continue;
                }
            };
            self.unreadable.remove(&path);
            let meta = match file.metadata() {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot stat opened file");
                    continue;
                }
            };
            // The path may have been replaced between the glob and the open:
            // the handle's identity is the truth.
            let id = (meta.dev(), meta.ino());
            if self.tracked.iter().any(|t| t.id == id) {
                continue;
            }
            let saved = restored
                .as_ref()
                .and_then(|r| r.iter().find(|p| (p.dev, p.ino) == id));
            let offset = match saved {
                Some(p) => {
                    tracing::info!(path = %path.display(), offset = p.offset, "resuming file at saved position");
                    p.offset
                }
                None if restored.is_some() && self.skip_existing => meta.len(),
                None => 0,
            };
            tracing::info!(source = %self.cfg.name, path = %path.display(), offset, "reading file");
            self.tracked.push(Tracked {
                path,
                id,
                file,
                offset,
                splitter: LineSplitter::new(self.cfg.max_line_bytes),
                detached_since: None,
                last_data: now,
                drop_next_line: false,
            });
        }
    }

    /// Read lines from tracked file `i` into `out` until the limits or the
    /// end of the available data.
    fn read_file(
        &mut self,
        i: usize,
        out: &mut Vec<Event>,
        bytes: &mut usize,
        limits: (usize, usize),
        drain: bool,
    ) -> Result<ReadEnd, SourceError> {
        let (max_events, max_bytes) = limits;
        let now = Instant::now();
        let t = &mut self.tracked[i];
        let io = |action: &'static str, path: &PathBuf| {
            let path = path.clone();
            move |source| SourceError::Io {
                action,
                path,
                source,
            }
        };
        let len = t
            .file
            .metadata()
            .map_err(io("checking size of", &t.path))?
            .len();
        if len < t.offset {
            tracing::warn!(path = %t.path.display(), size = len, position = t.offset, "file truncated; reading it again from the start");
            t.offset = 0;
            t.splitter.reset();
            t.drop_next_line = false;
        }
        let idle_after_detach = t.detached_since.is_some_and(|since| {
            now.saturating_duration_since(since.max(t.last_data)) >= DETACHED_GRACE
        });
        let flush = drain || idle_after_detach;
        let path_attr = t.path.to_string_lossy().into_owned();
        let mut buf: Vec<u8> = Vec::new();
        let mut start = 0usize;
        let mut eof = false;
        loop {
            let before = t.splitter.clone();
            match t.splitter.next(&buf[start..], eof && flush) {
                Some(piece) => {
                    let line = if t.drop_next_line && piece.line.is_some() {
                        // The line ends here; with a cut long line, only its first piece is dropped.
                        t.drop_next_line = false;
                        None
                    } else {
                        piece.line
                    };
                    if let Some(line) = line {
                        let full = !out.is_empty()
                            && (out.len() >= max_events || *bytes + line.text.len() > max_bytes);
                        if full {
                            t.splitter = before;
                            return Ok(ReadEnd::Full);
                        }
                        *bytes += line.text.len();
                        let mut attrs = BTreeMap::new();
                        attrs.insert("file".to_string(), Value::Str(path_attr.clone()));
                        attrs.insert("source".to_string(), Value::Str("file".to_string()));
                        if line.truncated {
                            attrs.insert("truncated".to_string(), Value::Bool(true));
                        }
                        out.push(line_event(
                            &self.cfg.table,
                            self.cfg.level,
                            &self.hostname,
                            line.text,
                            attrs,
                        ));
                    }
                    start += piece.consumed;
                    t.offset += piece.consumed as u64;
                    t.last_data = now;
                }
                None if eof => return Ok(ReadEnd::Eof),
                None => {
                    buf.drain(..start);
                    start = 0;
                    let old = buf.len();
                    buf.resize(old + READ_CHUNK, 0);
                    let at = t.offset + old as u64;
                    let n = loop {
                        match t.file.read_at(&mut buf[old..], at) {
                            Ok(n) => break n,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                            Err(e) => return Err(io("reading", &t.path)(e)),
                        }
                    };
                    buf.truncate(old + n);
                    eof = n == 0;
                }
            }
        }
    }

    fn checkpoint(&mut self) -> Checkpoint {
        self.seq += 1;
        let files = self
            .tracked
            .iter()
            .map(|t| FilePosition {
                path: t.path.to_string_lossy().into_owned(),
                dev: t.id.0,
                ino: t.id.1,
                offset: t.offset,
            })
            .collect();
        Checkpoint::new(&self.cfg.name, self.seq, Some(files))
    }
}

impl Source for FileSource {
    fn name(&self) -> String {
        self.cfg.name.clone()
    }

    /// Reads the tracked files: rotated-away files first, then the others in
    /// round-robin order. A file that fails to read is skipped for this poll
    /// (with a warning) so the others keep flowing.
    fn poll(
        &mut self,
        max_events: usize,
        max_bytes: usize,
        drain: bool,
    ) -> Result<Poll, SourceError> {
        self.scan();
        let limits = (max_events.max(1), max_bytes.max(1));
        let mut events = Vec::new();
        let mut bytes = 0usize;
        let n = self.tracked.len();
        let detached = (0..n).filter(|&i| self.tracked[i].detached_since.is_some());
        let attached: Vec<usize> = (0..n)
            .filter(|&i| self.tracked[i].detached_since.is_none())
            .collect();
        let start = if attached.is_empty() {
            0
        } else {
            self.next_start % attached.len()
        };
        let order: Vec<usize> = detached
            .chain(
                attached
                    .iter()
                    .cycle()
                    .skip(start)
                    .take(attached.len())
                    .copied(),
            )
            .collect();
        let mut finished: Vec<usize> = Vec::new();
        let mut full = false;
        for i in order {
            match self.read_file(i, &mut events, &mut bytes, limits, drain) {
                Ok(ReadEnd::Full) => {
                    full = true;
                    if let Some(pos) = attached.iter().position(|&a| a == i) {
                        self.next_start = pos + 1;
                    }
                    break;
                }
                Ok(ReadEnd::Eof) => {
                    let t = &self.tracked[i];
                    if let Some(since) = t.detached_since {
                        let idle = Instant::now().saturating_duration_since(since.max(t.last_data));
                        if drain || idle >= DETACHED_GRACE {
                            tracing::info!(path = %t.path.display(), "finished reading rotated or removed file");
                            finished.push(i);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(source = %self.cfg.name, error = %e, "skipping file for this poll");
                }
            }
        }
        finished.sort_unstable();
        for i in finished.into_iter().rev() {
            self.tracked.remove(i);
        }
        Ok(Poll {
            events,
            checkpoint: self.checkpoint(),
            exhausted: !full,
        })
    }

    fn commit(&mut self, checkpoint: &Checkpoint) -> Result<(), SourceError> {
        checkpoint.check_owner(&self.cfg.name)?;
        if self.committed_seq.is_some_and(|c| checkpoint.seq() <= c) {
            tracing::debug!(source = %self.cfg.name, "ignoring a checkpoint older than the committed one");
            return Ok(());
        }
        let files = checkpoint
            .files()
            .map(<[FilePosition]>::to_vec)
            .unwrap_or_default();
        lock(&self.store).set(&self.cfg.name, files)?;
        self.committed_seq = Some(checkpoint.seq());
        Ok(())
    }

    /// Set every file's position to its current end (including files that
    /// appeared since the last poll) and commit that at once.
    fn skip_to_end(&mut self) -> Result<(), SourceError> {
        self.scan();
        for t in &mut self.tracked {
            match t.file.metadata() {
                Ok(m) => {
                    t.offset = m.len();
                    t.splitter.reset();
                    // Skipping to the middle of a line: its rest is not a line.
                    let mut last = [0u8; 1];
                    t.drop_next_line = m.len() > 0
                        && t.file.read_at(&mut last, m.len() - 1).is_ok_and(|n| n == 1)
                        && last[0] != b'\n';
                }
                Err(e) => {
                    tracing::warn!(path = %t.path.display(), error = %e, "cannot check size of file to skip it");
                }
            }
        }
        let cp = self.checkpoint();
        let files = cp.files().map(<[FilePosition]>::to_vec).unwrap_or_default();
        lock(&self.store).set(&self.cfg.name, files)?;
        self.committed_seq = Some(cp.seq());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::POSITIONS_FILE;
    use custos_model::registry::Registry;
    use custos_model::{Category, Level, TableName};
    use proptest::prelude::*;
    use std::io::Write;
    use std::path::Path;

    fn cfg(patterns: &[&Path], max_line_bytes: usize) -> FileSourceConfig {
        FileSourceConfig {
            name: "test-files".into(),
            paths: patterns
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
            table: TableName::new("logs").unwrap(),
            level: Level::Full,
            start_at: StartAt::Beginning,
            max_line_bytes,
        }
    }

    fn source(state: &Path, cfg: FileSourceConfig) -> FileSource {
        let store = Arc::new(Mutex::new(PositionStore::open(state).unwrap()));
        FileSource::new(cfg, "h1", store)
    }

    fn append(path: &Path, data: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(data).unwrap();
    }

    fn messages(p: &Poll) -> Vec<String> {
        p.events.iter().map(|e| e.message.clone()).collect()
    }

    /// Poll until exhausted, returning all messages and the last checkpoint.
    fn read_all(src: &mut FileSource, drain: bool) -> (Vec<String>, Checkpoint) {
        let mut out = Vec::new();
        loop {
            let p = src.poll(3, 1 << 20, drain).unwrap();
            out.extend(messages(&p));
            if p.exhausted {
                return (out, p.checkpoint);
            }
        }
    }

    #[test]
    fn reads_lines_as_log_events_with_file_attr() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        append(&log, b"one\r\n\ntwo\n");
        let mut src = source(
            &dir.path().join("state"),
            cfg(&[&dir.path().join("*.log")], 1000),
        );
        let p = src.poll(100, 1 << 20, false).unwrap();
        assert!(p.exhausted);
        assert_eq!(messages(&p), ["one", "two"]);
        let e = &p.events[0];
        assert_eq!(e.table.as_str(), "logs");
        assert_eq!(e.level, Level::Full);
        assert_eq!(e.category, Category::Logs);
        assert_eq!(e.host, "h1");
        assert!(e.time > 0);
        assert_eq!(
            e.attrs.get("file"),
            Some(&Value::Str(log.to_string_lossy().into_owned()))
        );
        assert!(!e.attrs.contains_key("truncated"));
        assert_eq!(e.attrs.get("source"), Some(&Value::Str("file".into())));
        assert_eq!(e.attrs.get("severity"), Some(&Value::Str("unknown".into())));
        for e in &p.events {
            Registry::builtin().check_event(e).unwrap();
        }
        assert!(src.poll(100, 1 << 20, false).unwrap().events.is_empty());
    }

    #[test]
    fn severity_is_detected_and_the_configured_level_is_a_floor() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        append(
            &log,
            b"2024-01-01 12:00:00 ERROR disk full\n2024-01-01 12:00:01 INFO ok\nno level here\n",
        );
        let mut c = cfg(&[&log], 1000);
        c.level = Level::Basic;
        let mut src = source(&dir.path().join("state"), c.clone());
        let p = src.poll(100, 1 << 20, false).unwrap();
        let got: Vec<(Level, Value)> = p
            .events
            .iter()
            .map(|e| (e.level, e.attrs["severity"].clone()))
            .collect();
        assert_eq!(
            got,
            [
                (Level::Enhanced, Value::Str("error".into())),
                (Level::Full, Value::Str("info".into())),
                (Level::Full, Value::Str("unknown".into())),
            ]
        );
        for e in &p.events {
            Registry::builtin().check_event(e).unwrap();
        }
        // A floor of full raises every line to full.
        c.level = Level::Full;
        c.name = "other".into();
        let mut src = source(&dir.path().join("state"), c);
        let p = src.poll(100, 1 << 20, false).unwrap();
        assert!(p.events.iter().all(|e| e.level == Level::Full));
    }

    #[test]
    fn files_under_the_excluded_dir_are_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(state.join("ledger")).unwrap();
        append(&state.join("ledger/000001.log"), b"sent data\n");
        append(&dir.path().join("app.log"), b"app line\n");
        // A symbolic link from outside into the state dir is caught too.
        std::os::unix::fs::symlink(state.join("ledger/000001.log"), dir.path().join("link.log"))
            .unwrap();
        let c = cfg(&[&dir.path().join("**/*.log")], 1000);
        let store = Arc::new(Mutex::new(PositionStore::open(&state).unwrap()));
        let mut src = FileSource::new(c, "h", store).excluding_dir(&state);
        assert_eq!(read_all(&mut src, false).0, ["app line"]);
        append(&state.join("ledger/000001.log"), b"more\n");
        assert!(read_all(&mut src, false).0.is_empty());
    }

    #[test]
    fn skip_to_end_commits_the_current_ends_so_old_data_is_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let log = dir.path().join("a.log");
        append(&log, b"before\n");
        let c = cfg(&[&dir.path().join("*.log")], 1000);
        let mut src = source(&state, c.clone());
        let p = src.poll(100, 1 << 20, false).unwrap();
        assert_eq!(messages(&p), ["before"]);
        src.commit(&p.checkpoint).unwrap();
        // Telemetry disabled: lines are written, a partial one too, and a new file appears.
        append(&log, b"while disabled\npart");
        append(&dir.path().join("b.log"), b"new file while disabled\n");
        let stale = src.poll(100, 1 << 20, false).unwrap(); // polled but never sent
        src.skip_to_end().unwrap();
        src.commit(&stale.checkpoint).unwrap(); // an older checkpoint is ignored
        append(&log, b"ial\nafter\n");
        append(&dir.path().join("b.log"), b"b after\n");
        let (got, _) = read_all(&mut src, false);
        assert_eq!(
            got,
            ["after", "b after"],
            "the rest of a skipped line is dropped"
        );
        // The skip was committed: a restart does not read the skipped data
        // (only the rest of the skipped partial line, which is not persisted).
        drop(src);
        let mut src = source(&state, c);
        assert_eq!(read_all(&mut src, false).0, ["ial", "after", "b after"]);
    }

    #[test]
    fn limits_bound_each_poll_and_report_more_data() {
        let dir = tempfile::tempdir().unwrap();
        append(&dir.path().join("a.log"), b"l1\nl2\nl3\nl4\nl5\n");
        let mut src = source(
            &dir.path().join("state"),
            cfg(&[&dir.path().join("a.log")], 1000),
        );
        let p = src.poll(2, 1 << 20, false).unwrap();
        assert_eq!(messages(&p), ["l1", "l2"]);
        assert!(!p.exhausted);
        let p = src.poll(100, 3, false).unwrap();
        assert_eq!(
            messages(&p),
            ["l3"],
            "byte limit stops after the first line over it"
        );
        let (rest, _) = read_all(&mut src, false);
        assert_eq!(rest, ["l4", "l5"]);
    }

    #[test]
    fn restart_resumes_after_committed_position_and_rereads_uncommitted() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let log = dir.path().join("a.log");
        append(&log, b"a\nb\n");
        let c = cfg(&[&log], 1000);
        let mut src = source(&state, c.clone());
        let p = src.poll(100, 1 << 20, false).unwrap();
        assert_eq!(messages(&p), ["a", "b"]);
        src.commit(&p.checkpoint).unwrap();
        assert!(state.join(POSITIONS_FILE).exists());
        append(&log, b"c\n");
        let p = src.poll(100, 1 << 20, false).unwrap();
        assert_eq!(messages(&p), ["c"]);
        drop(src); // crash: "c" was never acknowledged

        let mut src = source(&state, c.clone());
        let p = src.poll(100, 1 << 20, false).unwrap();
        assert_eq!(
            messages(&p),
            ["c"],
            "uncommitted data is read again, committed data is not"
        );
        src.commit(&p.checkpoint).unwrap();
        drop(src);

        let mut src = source(&state, c);
        append(&log, b"d\n");
        assert_eq!(messages(&src.poll(100, 1 << 20, false).unwrap()), ["d"]);
    }

    #[test]
    fn older_checkpoint_committed_late_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let log = dir.path().join("a.log");
        append(&log, b"a\nb\n");
        let c = cfg(&[&log], 1000);
        let mut src = source(&state, c.clone());
        let p1 = src.poll(1, 1 << 20, false).unwrap();
        let p2 = src.poll(1, 1 << 20, false).unwrap();
        src.commit(&p2.checkpoint).unwrap();
        src.commit(&p1.checkpoint).unwrap();
        drop(src);
        let mut src = source(&state, c);
        assert!(src.poll(100, 1 << 20, false).unwrap().events.is_empty());
    }

    #[test]
    fn partial_last_line_waits_for_newline_unless_draining() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        append(&log, b"full\npart");
        let mut src = source(&dir.path().join("state"), cfg(&[&log], 1000));
        assert_eq!(messages(&src.poll(100, 1 << 20, false).unwrap()), ["full"]);
        assert!(src.poll(100, 1 << 20, false).unwrap().events.is_empty());
        append(&log, b"ial\nnext");
        assert_eq!(
            messages(&src.poll(100, 1 << 20, false).unwrap()),
            ["partial"]
        );
        let p = src.poll(100, 1 << 20, true).unwrap();
        assert_eq!(messages(&p), ["next"]);
        assert!(p.exhausted);
        assert!(src.poll(100, 1 << 20, true).unwrap().events.is_empty());
    }

    #[test]
    fn rotation_reads_old_file_to_end_then_new_file_without_loss_or_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        append(&log, b"1\n2\n");
        let mut src = source(
            &dir.path().join("state"),
            cfg(&[&dir.path().join("*.log")], 1000),
        );
        assert_eq!(
            messages(&src.poll(100, 1 << 20, false).unwrap()),
            ["1", "2"]
        );
        // The writer appends, the file is rotated, the writer writes a last line
        // to its old handle, then the new file fills.
        append(&log, b"3\n");
        let mut old = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
        append(&log, b"4\n5\n");
        old.write_all(b"3b\n").unwrap();
        let (got, _) = read_all(&mut src, false);
        assert_eq!(got, ["3", "3b", "4", "5"]);
        // The old file is kept open for a grace period, then dropped on drain.
        assert_eq!(src.tracked.len(), 2);
        old.write_all(b"tail").unwrap();
        let (got, cp) = read_all(&mut src, true);
        assert_eq!(got, ["tail"]);
        assert_eq!(src.tracked.len(), 1);
        assert_eq!(cp.files().unwrap().len(), 1);
        append(&log, b"6\n");
        assert_eq!(read_all(&mut src, false).0, ["6"]);
    }

    #[test]
    fn renamed_file_still_matching_the_pattern_is_followed_not_reread() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        append(&log, b"1\n");
        let mut src = source(
            &dir.path().join("state"),
            cfg(&[&dir.path().join("app.log*")], 1000),
        );
        assert_eq!(read_all(&mut src, false).0, ["1"]);
        std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
        append(&dir.path().join("app.log.1"), b"2\n");
        append(&log, b"new\n");
        assert_eq!(read_all(&mut src, false).0, ["2", "new"]);
    }

    #[test]
    fn truncation_restarts_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        append(&log, b"first line\nsecond line\n");
        let mut src = source(&dir.path().join("state"), cfg(&[&log], 1000));
        assert_eq!(read_all(&mut src, false).0.len(), 2);
        // copytruncate: same inode, emptied, then written again.
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&log)
            .unwrap();
        append(&log, b"x\n");
        assert_eq!(read_all(&mut src, false).0, ["x"]);
    }

    #[test]
    fn glob_picks_up_a_file_created_later() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = source(
            &dir.path().join("state"),
            cfg(&[&dir.path().join("*.log")], 1000),
        );
        let p = src.poll(100, 1 << 20, false).unwrap();
        assert!(p.events.is_empty() && p.exhausted);
        append(&dir.path().join("late.log"), b"hello\n");
        append(&dir.path().join("ignored.txt"), b"no\n");
        assert_eq!(read_all(&mut src, false).0, ["hello"]);
    }

    #[test]
    fn start_at_end_skips_existing_content_only_on_first_start() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let log = dir.path().join("a.log");
        append(&log, b"old\n");
        let mut c = cfg(&[&dir.path().join("*.log")], 1000);
        c.start_at = StartAt::End;
        let mut src = source(&state, c.clone());
        let p = src.poll(100, 1 << 20, false).unwrap();
        assert!(p.events.is_empty());
        src.commit(&p.checkpoint).unwrap();
        append(&log, b"new\n");
        append(&dir.path().join("b.log"), b"b1\n");
        assert_eq!(read_all(&mut src, false).0, ["new", "b1"]);
        drop(src);
        // Created while the agent was down: read from the start.
        append(&dir.path().join("c.log"), b"c1\n");
        let mut src = source(&state, c);
        assert_eq!(read_all(&mut src, false).0, ["new", "b1", "c1"]);
    }

    #[test]
    fn long_line_is_split_and_marked_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        append(&log, b"abcdefghij\nok\n");
        let mut src = source(&dir.path().join("state"), cfg(&[&log], 4));
        let p = src.poll(100, 1 << 20, false).unwrap();
        assert_eq!(messages(&p), ["abcd", "efgh", "ij", "ok"]);
        let truncated: Vec<bool> = p
            .events
            .iter()
            .map(|e| e.attrs.contains_key("truncated"))
            .collect();
        assert_eq!(truncated, [true, true, true, false]);
        assert_eq!(p.events[0].attrs.get("truncated"), Some(&Value::Bool(true)));
    }

    #[test]
    fn long_line_larger_than_read_chunk_is_split() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        let line = "x".repeat(READ_CHUNK * 2 + 20);
        append(&log, format!("{line}\n").as_bytes());
        let mut src = source(&dir.path().join("state"), cfg(&[&log], READ_CHUNK + 5));
        let got = read_all(&mut src, false).0;
        assert_eq!(got.concat(), line);
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn deleted_file_is_forgotten_after_being_read_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let log = dir.path().join("a.log");
        append(&log, b"a\n");
        let mut src = source(&state, cfg(&[&log], 1000));
        let keep_open = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        assert_eq!(read_all(&mut src, false).0, ["a"]);
        std::fs::remove_file(&log).unwrap();
        let mut w = keep_open;
        w.write_all(b"after delete\n").unwrap();
        let (got, cp) = read_all(&mut src, true);
        assert_eq!(got, ["after delete"]);
        assert!(src.tracked.is_empty());
        src.commit(&cp).unwrap();
        let saved = PositionStore::open(&state).unwrap();
        assert!(saved.get("test-files").is_empty());
    }

    #[test]
    fn two_sources_on_the_same_file_keep_separate_positions() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let log = dir.path().join("a.log");
        append(&log, b"a\nb\n");
        let store = Arc::new(Mutex::new(PositionStore::open(&state).unwrap()));
        let mut c2 = cfg(&[&log], 1000);
        c2.name = "second".into();
        let mut s1 = FileSource::new(cfg(&[&log], 1000), "h", Arc::clone(&store));
        let mut s2 = FileSource::new(c2.clone(), "h", Arc::clone(&store));
        let p1 = s1.poll(100, 1 << 20, false).unwrap();
        s1.commit(&p1.checkpoint).unwrap();
        let p2 = s2.poll(1, 1 << 20, false).unwrap();
        s2.commit(&p2.checkpoint).unwrap();
        assert!(
            s2.commit(&p1.checkpoint).is_err(),
            "a foreign checkpoint is refused"
        );
        drop((s1, s2, store));
        let mut s2 = source(&state, c2);
        assert_eq!(read_all(&mut s2, false).0, ["b"]);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Append(Vec<u8>),
        Poll(usize),
        CommitAndRestart,
    }

    fn op() -> impl Strategy<Value = Op> {
        let byte = prop::sample::select(vec![b'a', b'b', b'\n', b'\n', b'z', 0xC3, 0xA9]);
        prop_oneof![
            3 => prop::collection::vec(byte, 0..40).prop_map(Op::Append),
            3 => (1usize..6).prop_map(Op::Poll),
            1 => Just(Op::CommitAndRestart),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn emitted_messages_equal_the_lines_written(ops in prop::collection::vec(op(), 1..30)) {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join("state");
            let log = dir.path().join("a.log");
            append(&log, b"");
            let c = cfg(&[&log], 1 << 20);
            let mut src = source(&state, c.clone());
            let mut written: Vec<u8> = Vec::new();
            let mut got: Vec<String> = Vec::new();
            let mut last: Option<Checkpoint> = None;
            for op in ops {
                match op {
                    Op::Append(bytes) => { append(&log, &bytes); written.extend(&bytes); }
                    Op::Poll(n) => {
                        let p = src.poll(n, 1 << 20, false).unwrap();
                        got.extend(messages(&p));
                        last = Some(p.checkpoint);
                    }
                    Op::CommitAndRestart => {
                        if let Some(cp) = last.take() { src.commit(&cp).unwrap(); }
                        src = source(&state, c.clone());
                    }
                }
            }
            loop {
                let p = src.poll(7, 1 << 20, true).unwrap();
                got.extend(messages(&p));
                if p.exhausted { break; }
            }
            let expected: Vec<String> = written
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect();
            prop_assert_eq!(got, expected);
        }
    }
}
