//! The crash source: one event per new crash report or core dump.
//!
//! The files matching the `paths` globs (default: apport's
//! `/var/crash/*.crash` and systemd-coredump's `/var/lib/systemd/coredump/*`)
//! are looked at on every poll. Each file not reported before gives one
//! event in the table `crash_reports`, category crash, level full:
//!
//! - `report_file`: the path; `size_bytes`: its size;
//! - `program`: for an apport report, its `ExecutablePath:`; for a
//!   systemd-coredump file, the command name parsed from the file name
//!   `core.<comm>.<uid>.<boot id>.<pid>.<time>[.zst|.lz4|.xz]`;
//! - `signal`: the apport report's `Signal:` number;
//! - message: for an apport report, the first [`MESSAGE_BYTES`] of its text
//!   fields. Binary fields (apport writes them as `Key: base64` followed by
//!   encoded lines, the core dump among them) are left out: the core dump's
//!   content never leaves the host. For anything else, a one-line summary;
//!   binary files are never read.
//! - time: the core dump's time from its file name, else the file's
//!   modification time.
//!
//! A file is "the same report" while its path, device, inode and
//! modification time are unchanged; a report rewritten in place is reported
//! again. Files younger than the settle time ([`DEFAULT_SETTLE`], by
//! modification time) wait for the next polls, so a report is not read
//! while its writer is still writing it. Files under the agent's state
//! directory are never read. Reports already present when the source first
//! starts are reported too (they have not been collected yet);
//! [`Source::skip_to_end`] marks every current file as reported instead.
//!
//! # State file
//!
//! What was reported is kept in `<state_dir>/`[`CRASH_STATE_FILE`], keyed by
//! source name, written atomically (temporary file, fsync, rename, fsync of
//! the directory) only in [`Source::commit`], i.e. after the server
//! acknowledged the events; after a crash of the agent, unacknowledged
//! reports are sent again. Format version 1:
//!
//! ```json
//! {
//!   "version": 1,
//!   "sources": {
//!     "crash": [
//!       { "path": "/var/crash/_usr_bin_foo.1000.crash", "dev": 2049, "ino": 1311, "mtime_ns": 1700000000123456789 }
//!     ]
//!   }
//! }
//! ```
//!
//! Entries of files that no longer exist are dropped at the next commit, so
//! the file stays small.

use super::{is_under, lock, Checkpoint, Poll, Saved, Source, SourceError};
use crate::config::CrashSourceConfig;
use custos_model::{Category, Event, Level, TableName, Value};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// The table crash events go to.
pub const CRASH_TABLE: &str = "crash_reports";
/// The name of the crash sources' state file inside the state directory.
pub const CRASH_STATE_FILE: &str = "crash_reports.json";
/// The most bytes of an apport report's text put in the message.
pub const MESSAGE_BYTES: usize = 4096;
/// How long after its last modification a file is first read.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(5);
/// The most bytes of an apport report scanned for its fields (text fields
/// come before binary ones; a report larger than this is cut).
const SCAN_LIMIT: u64 = 8 * 1024 * 1024;
const FORMAT_VERSION: u32 = 1;

/// Serialises read-modify-write cycles of the state file, which several
/// crash sources may share.
static STATE_LOCK: Mutex<()> = Mutex::new(());

/// A crash file already reported.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReportedCrash {
    /// The path (non-UTF-8 bytes replaced).
    path: String,
    /// Device of the file system holding it.
    dev: u64,
    /// Inode number.
    ino: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    mtime_ns: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    sources: BTreeMap<String, Vec<ReportedCrash>>,
}

/// A crash file found by a scan.
struct Found {
    path: PathBuf,
    key: ReportedCrash,
    size: u64,
    mtime: SystemTime,
}

/// Reports new crash files.
pub struct CrashSource {
    cfg: CrashSourceConfig,
    hostname: String,
    table: TableName,
    state_path: PathBuf,
    excluded: PathBuf,
    settle: Duration,
    /// Reported and committed.
    committed: BTreeSet<ReportedCrash>,
    /// Reported by this process (committed or not).
    emitted: HashSet<ReportedCrash>,
    seq: u64,
    committed_seq: Option<u64>,
}

impl CrashSource {
    /// A crash source keeping its state in `state_dir` (created if missing)
    /// and never reading files under it.
    pub fn open(
        cfg: CrashSourceConfig,
        hostname: &str,
        state_dir: &Path,
    ) -> Result<Self, SourceError> {
        // Invariant: CRASH_TABLE is a constant lowercase identifier.
        #[allow(clippy::expect_used)]
        let table = TableName::new(CRASH_TABLE).expect("\"crash_reports\" is a valid table name");
        std::fs::create_dir_all(state_dir).map_err(|source| SourceError::Io {
            action: "creating state directory",
            path: state_dir.to_path_buf(),
            source,
        })?;
        let state_path = state_dir.join(CRASH_STATE_FILE);
        let committed: BTreeSet<ReportedCrash> = {
            let _g = lock(&STATE_LOCK);
            load_state(&state_path)?
                .sources
                .remove(&cfg.name)
                .unwrap_or_default()
                .into_iter()
                .collect()
        };
        Ok(Self {
            cfg,
            hostname: hostname.to_string(),
            table,
            state_path,
            excluded: state_dir.to_path_buf(),
            settle: DEFAULT_SETTLE,
            emitted: committed.iter().cloned().collect(),
            committed,
            seq: 0,
            committed_seq: None,
        })
    }

    /// Wait `settle` after a file's last modification before reading it
    /// (default [`DEFAULT_SETTLE`]).
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// The crash files matching the patterns now, oldest first.
    fn scan(&self) -> Vec<Found> {
        let mut seen: HashSet<PathBuf> = HashSet::new();
        let mut out = Vec::new();
        for pattern in &self.cfg.paths {
            let Ok(paths) = glob::glob(pattern) else {
                continue;
            };
            for path in paths.filter_map(Result::ok) {
                if !seen.insert(path.clone()) || is_under(&path, &self.excluded) {
                    continue;
                }
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                if !meta.is_file() {
                    continue;
                }
                let mtime_ns = meta
                    .mtime()
                    .saturating_mul(1_000_000_000)
                    .saturating_add(meta.mtime_nsec());
                out.push(Found {
                    key: ReportedCrash {
                        path: path.to_string_lossy().into_owned(),
                        dev: meta.dev(),
                        ino: meta.ino(),
                        mtime_ns,
                    },
                    path,
                    size: meta.len(),
                    mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        out.sort_by(|a, b| (a.key.mtime_ns, &a.path).cmp(&(b.key.mtime_ns, &b.path)));
        out
    }

    fn event(&self, f: &Found) -> Event {
        let mut a: BTreeMap<String, Value> = BTreeMap::new();
        let path_text = f.path.to_string_lossy().into_owned();
        a.insert("report_file".into(), Value::Str(path_text.clone()));
        a.insert("size_bytes".into(), Value::from(f.size));
        let mut time = micros(f.mtime);
        let file_name = f
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let message = if let Some(core) = parse_coredump_name(&file_name) {
            a.insert("program".into(), Value::Str(core.comm.clone()));
            if let Some(t) = core.time_us {
                time = t;
            }
            format!("core dump of {} (pid {})", core.comm, core.pid)
        } else {
            match read_apport(&f.path) {
                Ok(Some(r)) => {
                    if let Some(p) = r.executable {
                        a.insert("program".into(), Value::Str(p));
                    }
                    if let Some(s) = r.signal {
                        a.insert("signal".into(), Value::Int(s));
                    }
                    r.text
                }
                Ok(None) => format!("crash file {path_text}"),
                Err(e) => {
                    tracing::debug!(path = %f.path.display(), error = %e, "cannot read crash report");
                    format!("crash report {path_text} (unreadable: {e})")
                }
            }
        };
        Event {
            table: self.table.clone(),
            time,
            level: Level::Full,
            category: Category::Crash,
            host: self.hostname.clone(),
            message,
            attrs: a,
        }
    }

    fn persist(&self, reported: &BTreeSet<ReportedCrash>) -> Result<(), SourceError> {
        let _g = lock(&STATE_LOCK);
        let mut file = load_state(&self.state_path)?;
        file.version = FORMAT_VERSION;
        file.sources
            .insert(self.cfg.name.clone(), reported.iter().cloned().collect());
        let mut bytes = serde_json::to_vec_pretty(&file).map_err(|e| SourceError::Io {
            action: "encoding",
            path: self.state_path.clone(),
            source: std::io::Error::other(e),
        })?;
        bytes.push(b'\n');
        crate::fsutil::write_atomic(&self.state_path, &bytes, 0o600).map_err(|source| {
            SourceError::Io {
                action: "writing",
                path: self.state_path.clone(),
                source,
            }
        })
    }
}

impl Source for CrashSource {
    fn name(&self) -> String {
        self.cfg.name.clone()
    }

    /// Returns up to the limits of the new, settled crash files, oldest
    /// first. `drain` makes no difference.
    fn poll(
        &mut self,
        max_events: usize,
        max_bytes: usize,
        _drain: bool,
    ) -> Result<Poll, SourceError> {
        let (max_events, max_bytes) = (max_events.max(1), max_bytes.max(1));
        let now = SystemTime::now();
        let found = self.scan();
        let mut events = Vec::new();
        let mut bytes = 0usize;
        let mut full = false;
        for f in &found {
            if self.emitted.contains(&f.key) {
                continue;
            }
            let age = now.duration_since(f.mtime).unwrap_or(Duration::ZERO);
            if age < self.settle {
                continue;
            }
            if !events.is_empty() && (events.len() >= max_events || bytes >= max_bytes) {
                full = true;
                break;
            }
            let e = self.event(f);
            bytes += e.approx_size();
            tracing::info!(source = %self.cfg.name, path = %f.path.display(), "crash report found");
            events.push(e);
            self.emitted.insert(f.key.clone());
        }
        // The files still present that were reported (now or before).
        let reported: Vec<ReportedCrash> = found
            .into_iter()
            .map(|f| f.key)
            .filter(|k| self.emitted.contains(k))
            .collect();
        self.seq += 1;
        Ok(Poll {
            events,
            checkpoint: Checkpoint::with_saved(
                &self.cfg.name,
                self.seq,
                Some(Saved::Crashes(reported)),
            ),
            exhausted: !full,
        })
    }

    fn commit(&mut self, checkpoint: &Checkpoint) -> Result<(), SourceError> {
        checkpoint.check_owner(&self.cfg.name)?;
        if self.committed_seq.is_some_and(|c| checkpoint.seq() <= c) {
            return Ok(());
        }
        let Some(Saved::Crashes(list)) = checkpoint.saved() else {
            return Ok(());
        };
        let set: BTreeSet<ReportedCrash> = list.iter().cloned().collect();
        if set != self.committed {
            self.persist(&set)?;
            self.committed = set;
        }
        self.committed_seq = Some(checkpoint.seq());
        Ok(())
    }

    /// Mark every crash file present now as reported, and commit that.
    fn skip_to_end(&mut self) -> Result<(), SourceError> {
        let set: BTreeSet<ReportedCrash> = self.scan().into_iter().map(|f| f.key).collect();
        self.persist(&set)?;
        self.emitted = set.iter().cloned().collect();
        self.committed = set;
        self.seq += 1;
        self.committed_seq = Some(self.seq);
        Ok(())
    }
}

fn micros(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

fn load_state(path: &Path) -> Result<StateFile, SourceError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let file: StateFile =
                serde_json::from_slice(&bytes).map_err(|e| SourceError::CorruptState {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            if file.version != FORMAT_VERSION {
                return Err(SourceError::CorruptState {
                    path: path.to_path_buf(),
                    reason: format!(
                        "unsupported version {} (expected {FORMAT_VERSION})",
                        file.version
                    ),
                });
            }
            Ok(file)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile {
            version: FORMAT_VERSION,
            sources: BTreeMap::new(),
        }),
        Err(source) => Err(SourceError::Io {
            action: "reading",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// What a systemd-coredump file name tells.
#[derive(Debug, PartialEq)]
struct CoreName {
    comm: String,
    pid: u64,
    /// Microseconds since the epoch.
    time_us: Option<i64>,
}

/// Parse `core.<comm>.<uid>.<boot id>.<pid>.<time>[.zst|.lz4|.xz]`. The
/// command name may itself contain dots, so the name is read from the right.
fn parse_coredump_name(name: &str) -> Option<CoreName> {
    let mut rest = name.strip_prefix("core.")?;
    for suffix in [".zst", ".lz4", ".xz", ".gz"] {
        if let Some(r) = rest.strip_suffix(suffix) {
            rest = r;
            break;
        }
    }
    let mut parts = rest.rsplitn(5, '.');
    let time = parts.next()?;
    let pid = parts.next()?;
    let boot = parts.next()?;
    let uid = parts.next()?;
    let comm = parts.next()?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(time) || !digits(pid) || !digits(uid) || comm.is_empty() {
        return None;
    }
    if boot.len() != 32 || !boot.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(CoreName {
        comm: comm.to_string(),
        pid: pid.parse().ok()?,
        time_us: time.parse().ok(),
    })
}

/// The fields of an apport report the event uses.
#[derive(Debug, Default, PartialEq)]
struct Apport {
    executable: Option<String>,
    signal: Option<i64>,
    /// The first [`MESSAGE_BYTES`] of the text fields.
    text: String,
}

/// Read an apport report; `Ok(None)` when the file is not one (it does not
/// start with `ProblemType:`, or holds binary data in its text part).
fn read_apport(path: &Path) -> std::io::Result<Option<Apport>> {
    let file = std::fs::File::open(path)?;
    parse_apport(BufReader::new(file.take(SCAN_LIMIT)))
}

fn parse_apport(mut r: impl BufRead) -> std::io::Result<Option<Apport>> {
    const MAGIC: &[u8] = b"ProblemType:";
    // Look at the first bytes before reading lines, so that a binary file
    // (which may have no newline for megabytes) is not read further.
    let head = r.fill_buf()?;
    if head.len() < MAGIC.len() || !head.starts_with(MAGIC) {
        return Ok(None);
    }
    let mut out = Apport::default();
    let mut line: Vec<u8> = Vec::new();
    let mut in_binary = false;
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.contains(&0) {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if text.starts_with(' ') || text.starts_with('\t') {
            // A continuation line of the previous field.
            if !in_binary {
                push_limited(&mut out.text, text);
            }
            continue;
        }
        let (key, value) = match text.split_once(':') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (text.trim(), ""),
        };
        in_binary = value == "base64";
        if in_binary {
            // Binary fields (the core dump among them) are never read, and
            // apport writes them after every text field.
            continue;
        }
        match key {
            "ExecutablePath" if !value.is_empty() => out.executable = Some(value.to_string()),
            "Signal" => out.signal = value.parse().ok(),
            _ => {}
        }
        push_limited(&mut out.text, text);
    }
    Ok(Some(out))
}

/// Append `line` (and a newline) to `text` without going past
/// [`MESSAGE_BYTES`], cutting at a character boundary.
fn push_limited(text: &mut String, line: &str) {
    let room = MESSAGE_BYTES.saturating_sub(text.len());
    if room == 0 {
        return;
    }
    if !text.is_empty() {
        text.push('\n');
    }
    let room = MESSAGE_BYTES.saturating_sub(text.len());
    let mut cut = line.len().min(room);
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    text.push_str(&line[..cut]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_model::registry::Registry;

    fn cfg(patterns: &[&Path]) -> CrashSourceConfig {
        CrashSourceConfig {
            name: "crash".into(),
            paths: patterns
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
        }
    }

    const BOOT: &str = "0123456789abcdef0123456789abcdef";

    fn apport_report(exe: &str, signal: &str) -> String {
        format!(
            "ProblemType: Crash\nArchitecture: amd64\nDate: Mon Jan  1 12:00:00 2024\nExecutablePath: {exe}\nProcCmdline: {exe} --flag\nProcMaps:\n 55d0-55d1 r--p 00000000 08:01 1 {exe}\n 55d1-55d2 r-xp 00001000 08:01 1 {exe}\nSignal: {signal}\nCoreDump: base64\n H4sICAAAAAAC/0NvcmVEdW1wAA==\n SECRETCOREBYTES\nUserGroups: N/A\n"
        )
    }

    struct Setup {
        _dir: tempfile::TempDir,
        crash: PathBuf,
        cores: PathBuf,
        state: PathBuf,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let crash = dir.path().join("crash");
        let cores = dir.path().join("coredump");
        std::fs::create_dir_all(&crash).unwrap();
        std::fs::create_dir_all(&cores).unwrap();
        let state = dir.path().join("state");
        Setup {
            crash,
            cores,
            state,
            _dir: dir,
        }
    }

    fn source(s: &Setup) -> CrashSource {
        CrashSource::open(
            cfg(&[&s.crash.join("*.crash"), &s.cores.join("*")]),
            "h1",
            &s.state,
        )
        .unwrap()
        .with_settle(Duration::ZERO)
    }

    fn files(p: &Poll) -> Vec<String> {
        p.events
            .iter()
            .map(|e| match &e.attrs["report_file"] {
                Value::Str(s) => Path::new(s)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                v => panic!("{v:?}"),
            })
            .collect()
    }

    #[test]
    fn reports_apport_and_coredump_files_once_without_core_content() {
        let s = setup();
        std::fs::write(
            s.crash.join("_usr_bin_foo.1000.crash"),
            apport_report("/usr/bin/foo", "11"),
        )
        .unwrap();
        let core = format!("core.my.prog.1000.{BOOT}.4242.1700000000123456.zst");
        std::fs::write(
            s.cores.join(&core),
            b"\x28\xb5\x2f\xfd binary core SECRETCOREBYTES",
        )
        .unwrap();
        let mut src = source(&s);
        let p = src.poll(100, 1 << 20, false).unwrap();
        assert!(p.exhausted);
        assert_eq!(p.events.len(), 2);
        let reg = Registry::builtin();
        for e in &p.events {
            reg.check_event(e).unwrap();
            assert_eq!(e.table.as_str(), "crash_reports");
            assert_eq!((e.level, e.category), (Level::Full, Category::Crash));
            assert_eq!(e.host, "h1");
            assert!(!e.message.contains("SECRETCOREBYTES"), "{}", e.message);
            assert!(!e.message.contains("H4sI"), "{}", e.message);
        }
        let by_file: BTreeMap<String, &Event> = files(&p).into_iter().zip(&p.events).collect();
        let a = by_file["_usr_bin_foo.1000.crash"];
        assert_eq!(a.attrs["program"], Value::Str("/usr/bin/foo".into()));
        assert_eq!(a.attrs["signal"], Value::Int(11));
        assert!(
            a.message.starts_with("ProblemType: Crash\n"),
            "{}",
            a.message
        );
        assert!(a.message.contains(" 55d1-55d2"), "continuation lines kept");
        assert!(
            a.message.contains("UserGroups: N/A"),
            "text after a binary field kept"
        );
        let size = std::fs::metadata(s.crash.join("_usr_bin_foo.1000.crash"))
            .unwrap()
            .len();
        assert_eq!(a.attrs["size_bytes"], Value::from(size));
        let c = by_file[&core];
        assert_eq!(c.attrs["program"], Value::Str("my.prog".into()));
        assert!(!c.attrs.contains_key("signal"));
        assert_eq!(c.time, 1_700_000_000_123_456);
        assert_eq!(c.message, "core dump of my.prog (pid 4242)");

        // Polled again before the commit: not reported twice.
        assert!(src.poll(100, 1 << 20, false).unwrap().events.is_empty());
        src.commit(&p.checkpoint).unwrap();
        assert!(s.state.join(CRASH_STATE_FILE).exists());
        drop(src);
        let mut src = source(&s);
        assert!(
            src.poll(100, 1 << 20, false).unwrap().events.is_empty(),
            "committed survives a restart"
        );
        std::fs::write(
            s.crash.join("_usr_bin_bar.0.crash"),
            apport_report("/usr/bin/bar", "6"),
        )
        .unwrap();
        let p = src.poll(100, 1 << 20, false).unwrap();
        assert_eq!(files(&p), ["_usr_bin_bar.0.crash"]);
    }

    #[test]
    fn uncommitted_reports_are_sent_again_after_a_restart() {
        let s = setup();
        std::fs::write(s.crash.join("a.crash"), apport_report("/a", "11")).unwrap();
        let mut src = source(&s);
        assert_eq!(src.poll(10, 1 << 20, false).unwrap().events.len(), 1);
        drop(src);
        let mut src = source(&s);
        assert_eq!(src.poll(10, 1 << 20, false).unwrap().events.len(), 1);
    }

    #[test]
    fn limits_apply_and_old_checkpoints_are_ignored() {
        let s = setup();
        for i in 0..3 {
            std::fs::write(
                s.crash.join(format!("{i}.crash")),
                apport_report("/x", "11"),
            )
            .unwrap();
        }
        let mut src = source(&s);
        let p1 = src.poll(2, 1 << 20, false).unwrap();
        assert_eq!(p1.events.len(), 2);
        assert!(!p1.exhausted);
        let p2 = src.poll(2, 1 << 20, false).unwrap();
        assert_eq!(p2.events.len(), 1);
        assert!(p2.exhausted);
        src.commit(&p2.checkpoint).unwrap();
        src.commit(&p1.checkpoint).unwrap();
        drop(src);
        assert!(source(&s)
            .poll(10, 1 << 20, false)
            .unwrap()
            .events
            .is_empty());
    }

    #[test]
    fn rewritten_report_is_reported_again_and_removed_ones_leave_the_state() {
        let s = setup();
        let f = s.crash.join("a.crash");
        std::fs::write(&f, apport_report("/a", "11")).unwrap();
        let mut src = source(&s);
        let p = src.poll(10, 1 << 20, false).unwrap();
        src.commit(&p.checkpoint).unwrap();
        let t = std::fs::metadata(&f).unwrap().modified().unwrap() + Duration::from_secs(10);
        std::fs::write(&f, apport_report("/a", "6")).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(t)
            .unwrap();
        let p = src.poll(10, 1 << 20, false).unwrap();
        assert_eq!(p.events[0].attrs["signal"], Value::Int(6));
        std::fs::remove_file(&f).unwrap();
        let p = src.poll(10, 1 << 20, false).unwrap();
        src.commit(&p.checkpoint).unwrap();
        let state = std::fs::read_to_string(s.state.join(CRASH_STATE_FILE)).unwrap();
        assert!(!state.contains("a.crash"), "{state}");
        assert!(state.contains("\"version\": 1"), "{state}");
    }

    #[test]
    fn young_files_wait_for_the_settle_time() {
        let s = setup();
        std::fs::write(s.crash.join("a.crash"), apport_report("/a", "11")).unwrap();
        let mut src = source(&s).with_settle(Duration::from_secs(3600));
        let p = src.poll(10, 1 << 20, false).unwrap();
        assert!(p.events.is_empty() && p.exhausted);
        src.settle = Duration::ZERO;
        assert_eq!(src.poll(10, 1 << 20, false).unwrap().events.len(), 1);
    }

    #[test]
    fn unreadable_garbled_and_unknown_files_still_give_an_event() {
        let s = setup();
        std::fs::write(s.crash.join("garbled.crash"), b"\x00\x01binary\nstuff").unwrap();
        std::fs::write(s.crash.join("empty.crash"), b"").unwrap();
        std::fs::write(s.cores.join("core.bad-name"), b"\x7fELF").unwrap();
        let dir_not_file = s.crash.join("dir.crash");
        std::fs::create_dir(&dir_not_file).unwrap();
        let mut src = source(&s);
        let p = src.poll(10, 1 << 20, false).unwrap();
        assert_eq!(p.events.len(), 3);
        for e in &p.events {
            Registry::builtin().check_event(e).unwrap();
            assert!(!e.attrs.contains_key("program"));
            assert!(e.message.starts_with("crash file "), "{}", e.message);
            assert!(!e.message.contains("ELF") && !e.message.contains("binary"));
        }
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file() {
        let s = setup();
        std::fs::create_dir_all(&s.state).unwrap();
        std::fs::write(s.state.join(CRASH_STATE_FILE), "{nope").unwrap();
        let e = CrashSource::open(cfg(&[&s.crash.join("*")]), "h", &s.state)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(CRASH_STATE_FILE) && e.contains("corrupt"), "{e}");
        std::fs::write(
            s.state.join(CRASH_STATE_FILE),
            "{\"version\":9,\"sources\":{}}",
        )
        .unwrap();
        let e = CrashSource::open(cfg(&[&s.crash.join("*")]), "h", &s.state)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("version 9"), "{e}");
    }

    #[test]
    fn skip_to_end_marks_current_reports_as_reported() {
        let s = setup();
        std::fs::write(s.crash.join("old.crash"), apport_report("/a", "11")).unwrap();
        let mut src = source(&s);
        src.skip_to_end().unwrap();
        assert!(src.poll(10, 1 << 20, false).unwrap().events.is_empty());
        drop(src);
        let mut src = source(&s);
        assert!(
            src.poll(10, 1 << 20, false).unwrap().events.is_empty(),
            "and it was committed"
        );
        std::fs::write(s.crash.join("new.crash"), apport_report("/b", "11")).unwrap();
        assert_eq!(files(&src.poll(10, 1 << 20, false).unwrap()), ["new.crash"]);
    }

    #[test]
    fn files_under_the_state_dir_are_never_read() {
        let s = setup();
        std::fs::create_dir_all(&s.state).unwrap();
        std::fs::write(s.state.join("x.crash"), apport_report("/a", "11")).unwrap();
        let mut src = CrashSource::open(cfg(&[&s.state.join("*.crash")]), "h", &s.state)
            .unwrap()
            .with_settle(Duration::ZERO);
        assert!(src.poll(10, 1 << 20, false).unwrap().events.is_empty());
    }

    #[test]
    fn apport_message_is_capped_at_a_char_boundary() {
        let mut report = String::from("ProblemType: Crash\nStacktrace:\n");
        for _ in 0..2000 {
            report.push_str(" #0 é\n");
        }
        let r = parse_apport(report.as_bytes()).unwrap().unwrap();
        assert!(r.text.len() <= MESSAGE_BYTES && r.text.len() > MESSAGE_BYTES - 8);
        assert!(parse_apport(&b"not apport\n"[..]).unwrap().is_none());
    }

    #[test]
    fn coredump_names_parse_from_the_right() {
        let n = parse_coredump_name(&format!("core.a.b.c.0.{BOOT}.1.2.lz4")).unwrap();
        assert_eq!((n.comm.as_str(), n.pid, n.time_us), ("a.b.c", 1, Some(2)));
        assert!(parse_coredump_name(&format!("core.x.0.{BOOT}.1")).is_none());
        assert!(parse_coredump_name("core.x.0.nothex.1.2").is_none());
        assert!(parse_coredump_name("something.crash").is_none());
    }
}
