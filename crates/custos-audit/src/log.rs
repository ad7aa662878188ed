//! The writer: [`AuditLog`] with group-committed durable appends, segment
//! rotation, periodic signed checkpoints, recovery and retention pruning.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use tokio::sync::oneshot;

use crate::error::Damage;
use crate::format::{
    encode_body, encode_record_line, segment_path, SegmentHeader, LOCK_FILE_NAME, ZERO_HASH,
};
use crate::merkle::Frontier;
use crate::segments::{
    check_record, checkpoint_path, fsync_dir, list_segments, read_header, read_header_strict,
    read_last_checkpoint, Chain, HeaderRead, Line, LineReader, SegmentFile,
};
use crate::{AuditError, AuditRecord, Checkpoint};

/// Default size after which the active segment is rotated: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Default number of records after which a checkpoint is written.
pub const DEFAULT_CHECKPOINT_EVERY_RECORDS: u64 = 10_000;
/// Default interval at which a checkpoint is written if there are new records.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);
/// Default retention: 365 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Most appends committed with one write and one fsync.
const MAX_GROUP: usize = 4096;
/// Most record bytes committed with one write and one fsync.
const MAX_GROUP_BYTES: usize = 16 << 20;

/// How to open an [`AuditLog`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditOptions {
    /// The log directory (created if missing).
    pub dir: PathBuf,
    /// Rotate the active segment file once it holds this many bytes (default 64 MiB).
    pub segment_bytes: u64,
    /// Write a checkpoint after this many new records (default 10 000).
    pub checkpoint_every_records: u64,
    /// Write a checkpoint this often if there are new records (default 10 s).
    pub checkpoint_interval: Duration,
    /// How long records are kept; see [`AuditLog::prune`] (default 365 days).
    pub retention: Duration,
}

impl Default for AuditOptions {
    /// Defaults with `dir` = `audit` (relative to the working directory).
    fn default() -> Self {
        AuditOptions::new("audit")
    }
}

impl AuditOptions {
    /// Defaults for a log in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        AuditOptions {
            dir: dir.into(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            checkpoint_every_records: DEFAULT_CHECKPOINT_EVERY_RECORDS,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            retention: DEFAULT_RETENTION,
        }
    }
}

/// What [`AuditLog::open`] found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryInfo {
    /// The log did not exist and was created.
    pub created: bool,
    /// Seq the next append gets (= number of records ever appended).
    pub next_seq: u64,
    /// Seq of the oldest record still present (greater than 0 after pruning).
    pub first_seq: u64,
    /// Number of segment files.
    pub segments: usize,
    /// Bytes of a torn (unterminated, never acknowledged) last record that were truncated.
    pub truncated_bytes: u64,
    /// The seq that torn record would have had.
    pub torn_seq: Option<u64>,
    /// A newest segment whose header was torn by a crash during rotation, removed.
    pub removed_segment: Option<PathBuf>,
    /// Bytes of a torn last line of `checkpoints.log` that were truncated.
    pub truncated_checkpoint_bytes: u64,
    /// The latest checkpoint.
    pub last_checkpoint: Option<Checkpoint>,
}

/// What [`AuditLog::prune`] deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Segment files deleted.
    pub segments_removed: usize,
    /// Records deleted.
    pub records_removed: u64,
    /// Bytes freed.
    pub bytes_removed: u64,
    /// Seq of the oldest record still present.
    pub first_kept_seq: u64,
}

/// Counters since the log was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Records appended (durable).
    pub records: u64,
    /// Group commits (one write + one fsync each).
    pub commits: u64,
    /// fsync calls on segment, checkpoint and directory files.
    pub fsyncs: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
}

type ReplyResult<T> = Result<T, AuditError>;

enum Reply<T> {
    Async(oneshot::Sender<ReplyResult<T>>),
    Blocking(mpsc::SyncSender<ReplyResult<T>>),
}

impl<T> Reply<T> {
    fn send(self, v: ReplyResult<T>) {
        // A caller that went away no longer needs the answer.
        match self {
            Reply::Async(tx) => drop(tx.send(v)),
            Reply::Blocking(tx) => drop(tx.send(v)),
        }
    }
}

enum Cmd {
    Append { body: Vec<u8>, reply: Reply<u64> },
    Checkpoint { reply: Reply<Option<Checkpoint>> },
    Close { reply: Reply<()> },
}

impl Cmd {
    /// Record bytes carried (for bounding a group).
    fn len(&self) -> usize {
        match self {
            Cmd::Append { body, .. } => body.len(),
            Cmd::Checkpoint { .. } | Cmd::Close { .. } => 0,
        }
    }
}

#[derive(Default)]
struct Shared {
    next_seq: AtomicU64,
    records: AtomicU64,
    commits: AtomicU64,
    fsyncs: AtomicU64,
    checkpoints: AtomicU64,
    poisoned: OnceLock<String>,
}

/// The tamper-evident audit log (writer side).
///
/// Appends go to one writer thread that commits concurrent appends as a
/// group — one `write` and one `fdatasync` — and resolves each append only
/// once its record is durable. Records form a hash chain and the leaves of
/// an RFC 6962 Merkle tree whose root is periodically signed into a
/// [`Checkpoint`]. After any write or fsync failure the log is *poisoned*:
/// every later append fails until it is reopened.
///
/// `Send + Sync`; share it in an `Arc`. The on-disk format is described in
/// [`format`](mod@crate::format).
pub struct AuditLog {
    tx: Option<mpsc::Sender<Cmd>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<Shared>,
    dir: PathBuf,
    retention: Duration,
    prune_lock: Mutex<()>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.dir)
            .field("next_seq", &self.next_seq())
            .finish_non_exhaustive()
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Creates a segment file with its header, fsyncs it and the directory.
fn create_segment(dir: &Path, header: &SegmentHeader) -> Result<(File, PathBuf, u64), AuditError> {
    let path = segment_path(dir, header.first_seq);
    let mut f = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| AuditError::io("create segment", &path, e))?;
    let bytes = header.encode();
    f.write_all(&bytes)
        .map_err(|e| AuditError::io("write segment header", &path, e))?;
    f.sync_all()
        .map_err(|e| AuditError::io("fsync segment", &path, e))?;
    fsync_dir(dir)?;
    Ok((f, path, bytes.len() as u64))
}

/// State of the newest segment after scanning it.
struct Tail {
    seg: SegmentFile,
    len: u64,
    chain: Chain,
    frontier: Frontier,
}

impl AuditLog {
    /// Opens (creating if needed) the log in `opts.dir`, runs recovery and
    /// starts the writer thread. Checkpoints are signed with `key`.
    ///
    /// Blocking (it reads the newest segment); call it at startup or from
    /// `spawn_blocking`. Recovery truncates a torn last record (and a torn
    /// last checkpoint line) and reports it in [`RecoveryInfo`]; any other
    /// inconsistency it sees is an error: a damaged record in the newest
    /// segment, a latest checkpoint claiming more records than exist or not
    /// matching them, or one signed by another key. Older segments are not
    /// re-read here; run [`verify`](crate::verify) for that.
    pub fn open(
        opts: AuditOptions,
        key: SigningKey,
    ) -> Result<(AuditLog, RecoveryInfo), AuditError> {
        if opts.segment_bytes < 4096 {
            return Err(AuditError::InvalidOptions(format!(
                "segment_bytes must be at least 4096, got {}",
                opts.segment_bytes
            )));
        }
        if opts.checkpoint_every_records == 0 {
            return Err(AuditError::InvalidOptions(
                "checkpoint_every_records must be at least 1".into(),
            ));
        }
        if opts.checkpoint_interval.is_zero() {
            return Err(AuditError::InvalidOptions(
                "checkpoint_interval must not be zero".into(),
            ));
        }
        let dir = opts.dir.clone();
        fs::create_dir_all(&dir).map_err(|e| AuditError::io("create directory", &dir, e))?;
        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| AuditError::io("open lock file", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(AuditError::Locked { path: lock_path })
            }
            Err(fs::TryLockError::Error(e)) => return Err(AuditError::io("lock", &lock_path, e)),
        }

        let mut info = RecoveryInfo::default();
        let shared = Arc::new(Shared::default());

        // The latest checkpoint, with a torn last line cut off.
        let cp_path = checkpoint_path(&dir);
        let (last_cp, torn_at) = read_last_checkpoint(&dir)?;
        if let Some(at) = torn_at {
            let f = OpenOptions::new()
                .write(true)
                .open(&cp_path)
                .map_err(|e| AuditError::io("open", &cp_path, e))?;
            let len = f
                .metadata()
                .map_err(|e| AuditError::io("stat", &cp_path, e))?
                .len();
            f.set_len(at)
                .map_err(|e| AuditError::io("truncate torn checkpoint", &cp_path, e))?;
            f.sync_all()
                .map_err(|e| AuditError::io("fsync", &cp_path, e))?;
            info.truncated_checkpoint_bytes = len - at;
        }
        if let Some(cp) = &last_cp {
            if !cp.verify(&key.verifying_key()) {
                return Err(AuditError::ForeignCheckpoint {
                    path: cp_path,
                    size: cp.size,
                });
            }
        }

        let mut segs = list_segments(&dir)?;
        let tail = loop {
            let Some(last) = segs.last().cloned() else {
                // A brand-new log.
                if let Some(cp) = &last_cp {
                    return Err(Damage::Truncated {
                        path: cp_path,
                        claimed: cp.size,
                        present: 0,
                    }
                    .into());
                }
                let header = SegmentHeader {
                    first_seq: 0,
                    prev: ZERO_HASH,
                    frontier: Frontier::new(),
                };
                let (_, path, len) = create_segment(&dir, &header)?;
                info.created = true;
                segs.push(SegmentFile {
                    first_seq: 0,
                    path: path.clone(),
                });
                break Tail {
                    seg: SegmentFile { first_seq: 0, path },
                    len,
                    chain: Chain {
                        next: 0,
                        prev: ZERO_HASH,
                    },
                    frontier: Frontier::new(),
                };
            };
            match read_header(&last)? {
                HeaderRead::Ok(header, reader) => {
                    break Self::scan_tail(
                        last,
                        header,
                        reader,
                        last_cp.as_ref(),
                        &cp_path,
                        &mut info,
                    )?
                }
                HeaderRead::Torn if segs.len() > 1 => {
                    // Crash while rotating: the file holds no records.
                    fs::remove_file(&last.path)
                        .map_err(|e| AuditError::io("remove torn segment", &last.path, e))?;
                    fsync_dir(&dir)?;
                    info.removed_segment = Some(last.path.clone());
                    segs.pop();
                }
                HeaderRead::Torn => {
                    return Err(Damage::SegmentHeader {
                        path: last.path.clone(),
                        reason: "the only segment has an incomplete header".into(),
                    }
                    .into())
                }
            }
        };

        if let Some(cp) = &last_cp {
            if cp.size > tail.chain.next {
                return Err(Damage::Truncated {
                    path: cp_path,
                    claimed: cp.size,
                    present: tail.chain.next,
                }
                .into());
            }
        }

        let file = OpenOptions::new()
            .append(true)
            .open(&tail.seg.path)
            .map_err(|e| AuditError::io("open", &tail.seg.path, e))?;
        let existed = cp_path.exists();
        let cp_file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&cp_path)
            .map_err(|e| AuditError::io("open", &cp_path, e))?;
        if !existed {
            fsync_dir(&dir)?;
        }

        info.next_seq = tail.chain.next;
        info.first_seq = segs.first().map_or(0, |s| s.first_seq);
        info.segments = segs.len();
        info.last_checkpoint = last_cp.clone();
        shared.next_seq.store(tail.chain.next, Ordering::SeqCst);

        let writer = Writer {
            dir: dir.clone(),
            segment_bytes: opts.segment_bytes,
            checkpoint_every: opts.checkpoint_every_records,
            checkpoint_interval: opts.checkpoint_interval,
            key,
            file,
            active_first: tail.seg.first_seq,
            active_len: tail.len,
            active_path: tail.seg.path,
            chain: tail.chain,
            frontier: tail.frontier,
            cp_file,
            cp_path,
            last_cp_size: last_cp.as_ref().map_or(0, |c| c.size),
            last_cp_at: Instant::now(),
            shared: shared.clone(),
            buf: Vec::with_capacity(1 << 20),
            _lock: lock,
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("custos-audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| AuditError::io("spawn writer thread", &dir, e))?;
        let log = AuditLog {
            tx: Some(tx),
            thread: Mutex::new(Some(thread)),
            shared,
            dir,
            retention: opts.retention,
            prune_lock: Mutex::new(()),
        };
        Ok((log, info))
    }

    /// Reads the newest segment, checking every record, truncating a torn
    /// last line, and checking the latest checkpoint when it falls inside.
    fn scan_tail(
        seg: SegmentFile,
        header: SegmentHeader,
        mut reader: LineReader,
        last_cp: Option<&Checkpoint>,
        cp_path: &Path,
        info: &mut RecoveryInfo,
    ) -> Result<Tail, AuditError> {
        let mut chain = Chain {
            next: header.first_seq,
            prev: header.prev,
        };
        let mut frontier = header.frontier;
        let check_cp = |chain: &Chain, frontier: &Frontier| -> Result<(), AuditError> {
            if let Some(cp) = last_cp {
                if cp.size == chain.next && cp.size >= header.first_seq {
                    if cp.root != frontier.root() {
                        return Err(Damage::CheckpointRoot {
                            path: cp_path.to_path_buf(),
                            size: cp.size,
                            from: header.first_seq,
                        }
                        .into());
                    }
                    if cp.size > 0 && cp.chain_head != chain.prev {
                        return Err(Damage::CheckpointChainHead {
                            path: cp_path.to_path_buf(),
                            size: cp.size,
                            seq: cp.size - 1,
                        }
                        .into());
                    }
                }
            }
            Ok(())
        };
        check_cp(&chain, &frontier)?;
        let mut buf = Vec::new();
        let len = loop {
            match reader.next_line(&mut buf)? {
                Line::Complete => {
                    let (hash, _) = check_record(&buf, &chain, &seg.path)?;
                    chain = Chain {
                        next: chain.next + 1,
                        prev: hash,
                    };
                    frontier.push(hash);
                    check_cp(&chain, &frontier)?;
                }
                Line::Eof => break reader.line_start(),
                Line::TooLong => {
                    return Err(Damage::Unparsable {
                        seq: chain.next,
                        path: seg.path.clone(),
                        reason: "line too long".into(),
                    }
                    .into())
                }
                Line::Partial => {
                    let at = reader.line_start();
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&seg.path)
                        .map_err(|e| AuditError::io("open", &seg.path, e))?;
                    f.set_len(at)
                        .map_err(|e| AuditError::io("truncate torn record", &seg.path, e))?;
                    f.sync_all()
                        .map_err(|e| AuditError::io("fsync", &seg.path, e))?;
                    info.truncated_bytes = buf.len() as u64;
                    info.torn_seq = Some(chain.next);
                    break at;
                }
            }
        };
        Ok(Tail {
            seg,
            len,
            chain,
            frontier,
        })
    }

    fn sender(&self) -> Result<&mpsc::Sender<Cmd>, AuditError> {
        self.tx.as_ref().ok_or(AuditError::Closed)
    }

    fn check_poisoned(&self) -> Result<(), AuditError> {
        match self.shared.poisoned.get() {
            Some(cause) => Err(AuditError::Poisoned {
                path: self.dir.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, AuditError> {
        let (tx, rx) = oneshot::channel();
        self.sender()?
            .send(make(Reply::Async(tx)))
            .map_err(|_| AuditError::Closed)?;
        rx.await.map_err(|_| AuditError::Closed)?
    }

    fn call_blocking<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, AuditError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.sender()?
            .send(make(Reply::Blocking(tx)))
            .map_err(|_| AuditError::Closed)?;
        rx.recv().map_err(|_| AuditError::Closed)?
    }

    /// Appends a record. When the future resolves with `Ok(seq)` the record
    /// is durable (written and fsynced, together with concurrent appends).
    /// On `Err` the caller must refuse the action being audited.
    pub async fn append(&self, rec: AuditRecord) -> Result<u64, AuditError> {
        let body = encode_body(&rec)?;
        self.check_poisoned()?;
        self.call(|reply| Cmd::Append { body, reply }).await
    }

    /// [`append`](Self::append) for synchronous callers; blocks the thread
    /// until the record is durable. Do not call it on an async runtime thread.
    pub fn append_blocking(&self, rec: AuditRecord) -> Result<u64, AuditError> {
        let body = encode_body(&rec)?;
        self.check_poisoned()?;
        self.call_blocking(|reply| Cmd::Append { body, reply })
    }

    /// Writes a checkpoint now if records were added since the last one;
    /// `Ok(None)` if there is nothing new to sign.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        self.call(|reply| Cmd::Checkpoint { reply }).await
    }

    /// [`checkpoint`](Self::checkpoint) for synchronous callers.
    pub fn checkpoint_blocking(&self) -> Result<Option<Checkpoint>, AuditError> {
        self.call_blocking(|reply| Cmd::Checkpoint { reply })
    }

    /// The seq the next append will get: one past the last durable record.
    pub fn next_seq(&self) -> u64 {
        self.shared.next_seq.load(Ordering::SeqCst)
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Counters since the log was opened.
    pub fn stats(&self) -> AuditStats {
        AuditStats {
            records: self.shared.records.load(Ordering::Relaxed),
            commits: self.shared.commits.load(Ordering::Relaxed),
            fsyncs: self.shared.fsyncs.load(Ordering::Relaxed),
            checkpoints: self.shared.checkpoints.load(Ordering::Relaxed),
        }
    }

    /// Deletes whole sealed segments, oldest first, whose newest record is
    /// older than `now_micros - retention`; stops at the first segment that
    /// must be kept and never touches the active (newest) segment. The first
    /// remaining segment's header anchors the chain and the Merkle tree, so
    /// [`verify`](crate::verify) and proofs keep working for the rest.
    ///
    /// Blocking (reads the candidate segments). Refuses to delete a segment
    /// it cannot read completely.
    pub fn prune(&self, now_micros: i64) -> Result<PruneReport, AuditError> {
        let _guard = self.prune_lock.lock().map_err(|_| AuditError::Closed)?;
        let retention = i64::try_from(self.retention.as_micros()).unwrap_or(i64::MAX);
        let cutoff = now_micros.saturating_sub(retention);
        let segs = list_segments(&self.dir)?;
        let mut report = PruneReport {
            first_kept_seq: segs.first().map_or(0, |s| s.first_seq),
            ..Default::default()
        };
        // The newest segment is (or is about to become) the active one.
        let Some((_, sealed)) = segs.split_last() else {
            return Ok(report);
        };
        for (i, seg) in sealed.iter().enumerate() {
            let (header, mut reader) = read_header_strict(seg)?;
            let mut chain = Chain {
                next: header.first_seq,
                prev: header.prev,
            };
            let mut newest: Option<i64> = None;
            let mut buf = Vec::new();
            loop {
                match reader.next_line(&mut buf)? {
                    Line::Complete => {
                        let (hash, rec) = check_record(&buf, &chain, &seg.path)?;
                        chain = Chain {
                            next: chain.next + 1,
                            prev: hash,
                        };
                        newest =
                            Some(newest.map_or(rec.record.time, |t: i64| t.max(rec.record.time)));
                    }
                    Line::Eof => break,
                    Line::Partial => {
                        return Err(Damage::Incomplete {
                            seq: chain.next,
                            path: seg.path.clone(),
                        }
                        .into())
                    }
                    Line::TooLong => {
                        return Err(Damage::Unparsable {
                            seq: chain.next,
                            path: seg.path.clone(),
                            reason: "line too long".into(),
                        }
                        .into())
                    }
                }
            }
            let next_first = segs[i + 1].first_seq;
            if chain.next != next_first {
                return Err(Damage::MissingRecords {
                    seq: chain.next,
                    path: segs[i + 1].path.clone(),
                    starts_at: next_first,
                }
                .into());
            }
            if newest.is_some_and(|t| t >= cutoff) {
                break;
            }
            let bytes = fs::metadata(&seg.path)
                .map_err(|e| AuditError::io("stat", &seg.path, e))?
                .len();
            fs::remove_file(&seg.path)
                .map_err(|e| AuditError::io("remove segment", &seg.path, e))?;
            report.segments_removed += 1;
            report.records_removed += chain.next - header.first_seq;
            report.bytes_removed += bytes;
            report.first_kept_seq = next_first;
        }
        if report.segments_removed > 0 {
            fsync_dir(&self.dir)?;
        }
        Ok(report)
    }

    /// Stops accepting appends: commits what is queued, writes a final
    /// checkpoint (if there are new records) and stops the writer thread.
    /// Later appends fail with [`AuditError::Closed`]. For logs shared in an
    /// `Arc`; [`close`](Self::close) does the same and also waits for the thread.
    pub async fn shutdown(&self) -> Result<(), AuditError> {
        self.call(|reply| Cmd::Close { reply }).await
    }

    /// Flushes, writes a final checkpoint and stops the writer thread.
    pub async fn close(mut self) -> Result<(), AuditError> {
        let r = match self.call(|reply| Cmd::Close { reply }).await {
            Err(AuditError::Closed) => Ok(()),
            other => other,
        };
        self.stop();
        r
    }

    /// [`close`](Self::close) for synchronous callers.
    pub fn close_blocking(mut self) -> Result<(), AuditError> {
        let r = match self.call_blocking(|reply| Cmd::Close { reply }) {
            Err(AuditError::Closed) => Ok(()),
            other => other,
        };
        self.stop();
        r
    }

    fn stop(&mut self) {
        self.tx = None;
        let handle = self.thread.lock().ok().and_then(|mut g| g.take());
        if let Some(h) = handle {
            // The writer only panics on a bug; its pending callers already got errors.
            let _ = h.join();
        }
    }
}

impl Drop for AuditLog {
    /// Stops the writer thread without a final checkpoint; everything already
    /// acknowledged is durable.
    fn drop(&mut self) {
        self.stop();
    }
}

struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    checkpoint_every: u64,
    checkpoint_interval: Duration,
    key: SigningKey,
    file: File,
    active_path: PathBuf,
    active_first: u64,
    active_len: u64,
    chain: Chain,
    frontier: Frontier,
    cp_file: File,
    cp_path: PathBuf,
    last_cp_size: u64,
    last_cp_at: Instant,
    shared: Arc<Shared>,
    buf: Vec<u8>,
    _lock: File,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut pending: Vec<(u64, Reply<u64>)> = Vec::new();
        loop {
            let wait = if self.chain.next > self.last_cp_size {
                self.checkpoint_interval
                    .saturating_sub(self.last_cp_at.elapsed())
            } else {
                self.checkpoint_interval
            };
            let first = match rx.recv_timeout(wait) {
                Ok(cmd) => cmd,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.timed_checkpoint();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut bytes = first.len();
            let mut cmds = vec![first];
            while cmds.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
                match rx.try_recv() {
                    Ok(c) => {
                        bytes += c.len();
                        cmds.push(c);
                    }
                    Err(_) => break,
                }
            }
            self.buf.clear();
            let mut closed = false;
            for cmd in cmds {
                if closed {
                    match cmd {
                        Cmd::Append { reply, .. } => reply.send(Err(AuditError::Closed)),
                        Cmd::Checkpoint { reply } => reply.send(Err(AuditError::Closed)),
                        Cmd::Close { reply } => reply.send(Ok(())),
                    }
                    continue;
                }
                match cmd {
                    Cmd::Append { body, reply } => self.stage(&body, reply, &mut pending),
                    Cmd::Checkpoint { reply } => {
                        self.commit(&mut pending);
                        reply.send(self.checkpoint_now());
                    }
                    Cmd::Close { reply } => {
                        self.commit(&mut pending);
                        reply.send(self.checkpoint_now().map(|_| ()));
                        closed = true;
                    }
                }
            }
            self.commit(&mut pending);
            if closed {
                return;
            }
            if self.chain.next - self.last_cp_size >= self.checkpoint_every
                || (self.chain.next > self.last_cp_size
                    && self.last_cp_at.elapsed() >= self.checkpoint_interval)
            {
                self.timed_checkpoint();
            }
        }
    }

    fn poisoned_error(&self) -> Option<AuditError> {
        self.shared
            .poisoned
            .get()
            .map(|cause| AuditError::Poisoned {
                path: self.dir.clone(),
                cause: cause.clone(),
            })
    }

    fn poison(&self, err: &AuditError) -> AuditError {
        let _ = self.shared.poisoned.set(err.to_string());
        self.poisoned_error().unwrap_or(AuditError::Closed)
    }

    /// Encodes one record into the group buffer, rotating first if the
    /// active segment is full and nothing is staged yet.
    fn stage(&mut self, body: &[u8], reply: Reply<u64>, pending: &mut Vec<(u64, Reply<u64>)>) {
        if let Some(e) = self.poisoned_error() {
            reply.send(Err(e));
            return;
        }
        if pending.is_empty()
            && self.active_len >= self.segment_bytes
            && self.chain.next > self.active_first
        {
            if let Err(e) = self.rotate() {
                reply.send(Err(self.poison(&e)));
                return;
            }
        }
        let seq = self.chain.next;
        let hash = encode_record_line(seq, &self.chain.prev, body, &mut self.buf);
        self.chain = Chain {
            next: seq + 1,
            prev: hash,
        };
        self.frontier.push(hash);
        pending.push((seq, reply));
    }

    /// Writes and fsyncs the staged group, then answers its callers.
    fn commit(&mut self, pending: &mut Vec<(u64, Reply<u64>)>) {
        if pending.is_empty() {
            return;
        }
        let result = self
            .file
            .write_all(&self.buf)
            .map_err(|e| AuditError::io("write", &self.active_path, e))
            .and_then(|()| {
                self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.file
                    .sync_data()
                    .map_err(|e| AuditError::io("fsync", &self.active_path, e))
            });
        match result {
            Ok(()) => {
                self.active_len += self.buf.len() as u64;
                self.shared
                    .next_seq
                    .store(self.chain.next, Ordering::SeqCst);
                self.shared
                    .records
                    .fetch_add(pending.len() as u64, Ordering::Relaxed);
                self.shared.commits.fetch_add(1, Ordering::Relaxed);
                for (seq, reply) in pending.drain(..) {
                    reply.send(Ok(seq));
                }
            }
            Err(e) => {
                // What reached the disk is unknown: refuse everything from now on.
                let _ = self.poison(&e);
                for (_, reply) in pending.drain(..) {
                    reply.send(Err(self.poisoned_error().unwrap_or(AuditError::Closed)));
                }
            }
        }
        self.buf.clear();
    }

    fn rotate(&mut self) -> Result<(), AuditError> {
        let header = SegmentHeader {
            first_seq: self.chain.next,
            prev: self.chain.prev,
            frontier: self.frontier.clone(),
        };
        let (file, path, len) = create_segment(&self.dir, &header)?;
        self.shared.fsyncs.fetch_add(2, Ordering::Relaxed);
        self.file = file;
        self.active_path = path;
        self.active_first = header.first_seq;
        self.active_len = len;
        Ok(())
    }

    fn checkpoint_now(&mut self) -> Result<Option<Checkpoint>, AuditError> {
        if let Some(e) = self.poisoned_error() {
            return Err(e);
        }
        if self.chain.next == self.last_cp_size {
            return Ok(None);
        }
        let cp = Checkpoint::sign(
            self.chain.next,
            self.frontier.root(),
            self.chain.prev,
            now_micros(),
            &self.key,
        );
        let line = cp.to_line();
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        let r = self
            .cp_file
            .write_all(line.as_bytes())
            .and_then(|()| self.cp_file.sync_data())
            .map_err(|e| AuditError::io("write checkpoint", &self.cp_path, e));
        match r {
            Ok(()) => {
                self.last_cp_size = cp.size;
                self.last_cp_at = Instant::now();
                self.shared.checkpoints.fetch_add(1, Ordering::Relaxed);
                Ok(Some(cp))
            }
            Err(e) => Err(self.poison(&e)),
        }
    }

    fn timed_checkpoint(&mut self) {
        // Failures poison the log, so the next append reports them.
        let _ = self.checkpoint_now();
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<AuditLog>();
}
