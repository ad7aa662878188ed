//! The writer side: options, open/recovery, append, sync and ack.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::WalError;
use crate::format::{
    decode_ack, decode_segment_header, encode_ack, encode_record_header, encode_segment_header,
    parse_segment_file_name, segment_path, Block, ACK_FILE_LEN, ACK_FILE_NAME, ACK_TMP_FILE_NAME,
    FORMAT_VERSION, LOCK_FILE_NAME, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::reader::{SegmentSnapshot, WalReader};
use crate::scan::{LsnBounds, SegReader, Step};
use crate::Lsn;

/// Default for [`WalOptions::segment_bytes`]: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Default for [`WalOptions::max_record_bytes`]: 64 MiB.
pub const DEFAULT_MAX_RECORD_BYTES: u32 = 64 * 1024 * 1024;
/// Capacity of the write buffer in front of the active segment.
const WRITE_BUFFER: usize = 256 * 1024;

/// How to open a [`Wal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// Directory holding the segments and the ack file; created if missing.
    pub dir: PathBuf,
    /// A new segment file is started before an append would take the current
    /// one past this many bytes (a single larger record gets a segment of its
    /// own). Default [`DEFAULT_SEGMENT_BYTES`].
    pub segment_bytes: u64,
    /// Appends of larger payloads are refused with [`WalError::RecordTooLarge`].
    /// Default [`DEFAULT_MAX_RECORD_BYTES`].
    pub max_record_bytes: u32,
}

impl WalOptions {
    /// Options with the defaults for the log in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        WalOptions {
            dir: dir.into(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }

    /// Sets [`WalOptions::segment_bytes`].
    pub fn with_segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// Sets [`WalOptions::max_record_bytes`].
    pub fn with_max_record_bytes(mut self, bytes: u32) -> Self {
        self.max_record_bytes = bytes;
        self
    }
}

/// What [`Wal::open`] found and repaired. See the recovery rules in [`crate::format`](mod@crate::format).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files in use after recovery.
    pub segments: usize,
    /// Valid, unconsumed records found (lsn at or above the ack position).
    pub records: u64,
    /// Bytes cut from the end of the last segment (a torn write), including
    /// a last segment deleted because its header was never completely written.
    pub torn_tail_bytes: u64,
    /// Damaged regions skipped in the middle of the log (a region is usually
    /// one record; a damaged segment header counts as one region).
    pub corrupt_records: u64,
    /// Bytes in those damaged regions.
    pub corrupt_bytes: u64,
    /// The ack file was damaged; every record still on disk will be delivered again.
    pub ack_file_corrupt: bool,
}

/// A segment file as [`Wal::segments`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The first lsn the segment may hold.
    pub first_lsn: Lsn,
    /// Its size in bytes.
    pub bytes: u64,
}

/// One segment file known to the writer.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub first_lsn: Lsn,
    pub path: PathBuf,
    /// Bytes that are durable and may be read (the whole file for sealed segments).
    pub durable_len: u64,
    /// Start offsets of damaged regions recovery already reported.
    pub known_corrupt: Vec<u64>,
}

/// A segmented, checksummed, crash-safe append-only log. See [`crate`] for an
/// overview and [`crate::format`](mod@crate::format) for the on-disk format.
///
/// Dropping a `Wal` without [`Wal::sync`] hands buffered records to the
/// operating system (best effort) but does not make them durable.
#[derive(Debug)]
pub struct Wal {
    opts: WalOptions,
    /// Older segments, oldest first; all fully durable.
    sealed: VecDeque<Segment>,
    /// The segment being appended to.
    active: Segment,
    writer: BufWriter<File>,
    /// Logical end of the active segment, including buffered bytes.
    write_pos: u64,
    next_lsn: Lsn,
    acked: Lsn,
    /// Segment files were created or deleted since the directory was last fsynced.
    dir_dirty: bool,
    poisoned: Option<String>,
    /// Holds the advisory lock on `LOCK` for the lifetime of the wal.
    _lock: File,
}

fn fsync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io("fsync directory", dir, e))
}

/// Creates a segment file with its header, fsyncs it (not the directory).
fn create_segment(dir: &Path, first_lsn: Lsn) -> Result<(Segment, File), WalError> {
    let path = segment_path(dir, first_lsn);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| WalError::io("create segment", &path, e))?;
    f.write_all(&encode_segment_header(first_lsn))
        .map_err(|e| WalError::io_at("write segment header", &path, 0, e))?;
    f.sync_data().map_err(|e| WalError::io("fsync segment", &path, e))?;
    let seg = Segment { first_lsn, path, durable_len: SEGMENT_HEADER_LEN, known_corrupt: Vec::new() };
    Ok((seg, f))
}

/// Reads the ack file. `Ok(None)` when it does not exist, `Ok(Some(None))` when damaged.
fn read_ack(path: &Path) -> Result<Option<Option<Lsn>>, WalError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(WalError::io("open ack file", path, e)),
    };
    let mut bytes = Vec::with_capacity(ACK_FILE_LEN + 1);
    f.take(ACK_FILE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| WalError::io("read ack file", path, e))?;
    match decode_ack(&bytes) {
        Block::Valid { version, value } if version == FORMAT_VERSION => Ok(Some(Some(value))),
        Block::Valid { version, .. } => Err(WalError::UnsupportedAckVersion {
            path: path.to_path_buf(),
            version,
            supported: FORMAT_VERSION,
        }),
        Block::Damaged => Ok(Some(None)),
    }
}

/// Atomically replaces the ack file: write temp, fsync, rename, fsync directory.
fn write_ack(dir: &Path, acked: Lsn) -> Result<(), WalError> {
    let tmp = dir.join(ACK_TMP_FILE_NAME);
    let dst = dir.join(ACK_FILE_NAME);
    let mut f = File::create(&tmp).map_err(|e| WalError::io("create ack file", &tmp, e))?;
    f.write_all(&encode_ack(acked)).map_err(|e| WalError::io_at("write ack file", &tmp, 0, e))?;
    f.sync_all().map_err(|e| WalError::io("fsync ack file", &tmp, e))?;
    drop(f);
    fs::rename(&tmp, &dst).map_err(|e| WalError::io("rename ack file into place", &dst, e))?;
    fsync_dir(dir)
}

fn remove_file_if_exists(path: &Path, what: &'static str) -> Result<(), WalError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(WalError::io(what, path, e)),
    }
}

/// Scan result of one segment during recovery.
struct ScannedSegment {
    seg: Segment,
    file_len: u64,
    header_ok: bool,
    valid: u64,
    max_lsn: Option<Lsn>,
    /// Offset to truncate the file to (torn tail of the last segment).
    truncate_at: Option<u64>,
}

impl Wal {
    /// Opens (creating if needed) the log in `opts.dir` and runs recovery.
    ///
    /// Never panics on any file content and never loads the whole log into
    /// memory: each segment is streamed once with a bounded buffer. Damage is
    /// repaired or skipped as described in [`crate::format`](mod@crate::format); only unknown
    /// format versions, a header contradicting its file name, I/O failures and
    /// a directory locked by another writer are errors.
    pub fn open(opts: WalOptions) -> Result<(Wal, RecoveryReport), WalError> {
        Self::open_inner(opts, &mut |_, _| {}, false)
    }

    /// [`Wal::open`], calling `visit` with every valid unconsumed record
    /// (lsn at or above the ack position, in lsn order) that recovery reads.
    ///
    /// Recovery reads every record anyway to check it; a caller that builds
    /// an index of the log (the agent's queue) gets it from this one pass
    /// instead of reading the log a second time with [`Wal::read_from`].
    /// The records visited are exactly those `read_from(acked_lsn())` would
    /// return after the open, except that records of the last segment are
    /// visited before its torn tail, if any, is cut (they are valid either
    /// way).
    pub fn open_with(opts: WalOptions, visit: &mut dyn FnMut(Lsn, &[u8])) -> Result<(Wal, RecoveryReport), WalError> {
        Self::open_inner(opts, visit, true)
    }

    fn open_inner(opts: WalOptions, visit: &mut dyn FnMut(Lsn, &[u8]), payloads: bool) -> Result<(Wal, RecoveryReport), WalError> {
        if opts.segment_bytes < SEGMENT_HEADER_LEN + RECORD_HEADER_LEN {
            return Err(WalError::InvalidOptions(format!(
                "segment_bytes must be at least {} (got {})",
                SEGMENT_HEADER_LEN + RECORD_HEADER_LEN,
                opts.segment_bytes
            )));
        }
        let dir = opts.dir.clone();
        fs::create_dir_all(&dir).map_err(|e| WalError::io("create directory", &dir, e))?;

        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| WalError::io("open lock file", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(WalError::Locked { path: lock_path }),
            Err(fs::TryLockError::Error(e)) => return Err(WalError::io("lock", &lock_path, e)),
        }

        let tmp = dir.join(ACK_TMP_FILE_NAME);
        if tmp.exists() {
            remove_file_if_exists(&tmp, "remove stale ack temp file")?;
        }

        // Segment files, oldest first.
        let mut names: Vec<(Lsn, PathBuf)> = Vec::new();
        let entries = fs::read_dir(&dir).map_err(|e| WalError::io("list directory", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| WalError::io("list directory", &dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            match parse_segment_file_name(&name) {
                Some(lsn) => names.push((lsn, entry.path())),
                None if name == ACK_FILE_NAME || name == LOCK_FILE_NAME => {}
                None => tracing::debug!(file = %entry.path().display(), "ignoring unknown file in wal directory"),
            }
        }
        names.sort_by_key(|(lsn, _)| *lsn);

        let mut report = RecoveryReport::default();
        let ack_path = dir.join(ACK_FILE_NAME);
        let acked = match read_ack(&ack_path)? {
            None => 0,
            Some(Some(a)) => a,
            Some(None) => {
                let fallback = names.first().map_or(0, |(lsn, _)| *lsn);
                tracing::warn!(
                    file = %ack_path.display(),
                    fallback,
                    "ack file is damaged; redelivering every record still on disk"
                );
                report.ack_file_corrupt = true;
                fallback
            }
        };

        // Drop segments that only hold consumed records (never the last one).
        while names.len() > 1 && names[1].0 <= acked {
            let (_, path) = names.remove(0);
            remove_file_if_exists(&path, "remove consumed segment")?;
        }

        // A last segment whose header is torn and that holds no valid record
        // was being created when the process died: delete it (repeatedly, in
        // case several are). Done first so every other segment is scanned
        // with its final neighbours, exactly as readers will see it.
        let mut next_lsn = acked;
        while let Some((first_lsn, path)) = names.last().cloned() {
            if segment_header_is_valid(&path)? {
                break; // the full scan below checks its version and lsn
            }
            let mut scratch = RecoveryReport::default();
            let mut scratch_count = 0;
            let mut sink = ScanSink { acked, report: &mut scratch, unconsumed: &mut scratch_count, visit: &mut |_, _| {}, payloads: false };
            let s = scan_segment(first_lsn, path, None, true, &mut sink)?;
            if s.header_ok || s.valid > 0 {
                break;
            }
            tracing::warn!(
                file = %s.seg.path.display(),
                bytes = s.file_len,
                "last segment has a torn header and no records; deleting it"
            );
            report.torn_tail_bytes += s.file_len;
            remove_file_if_exists(&s.seg.path, "remove torn segment")?;
            next_lsn = next_lsn.max(first_lsn);
            names.pop();
        }

        let mut kept: Vec<ScannedSegment> = Vec::with_capacity(names.len());
        let mut unconsumed = 0u64;
        for i in 0..names.len() {
            let (first_lsn, path) = (names[i].0, names[i].1.clone());
            let hi = names.get(i + 1).map(|(l, _)| *l);
            let is_last = i + 1 == names.len();
            next_lsn = next_lsn.max(first_lsn);
            let mut sink = ScanSink { acked, report: &mut report, unconsumed: &mut unconsumed, visit: &mut *visit, payloads };
            let s = scan_segment(first_lsn, path, hi, is_last, &mut sink)?;
            if let Some(m) = s.max_lsn {
                next_lsn = next_lsn.max(m + 1); // m < u64::MAX: never accepted as valid
            }
            kept.push(s);
        }
        report.records = unconsumed;

        // Prepare the active (last) segment.
        let (active, file, write_pos) = match kept.pop() {
            Some(last) => {
                let path = last.seg.path.clone();
                let mut f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| WalError::io("open segment for writing", &path, e))?;
                let mut len = last.file_len;
                if let Some(t) = last.truncate_at {
                    f.set_len(t).map_err(|e| WalError::io_at("truncate torn tail", &path, t, e))?;
                    len = t;
                }
                if !last.header_ok {
                    f.seek(SeekFrom::Start(0))
                        .and_then(|_| f.write_all(&encode_segment_header(last.seg.first_lsn)))
                        .map_err(|e| WalError::io_at("rewrite segment header", &path, 0, e))?;
                }
                f.seek(SeekFrom::Start(len)).map_err(|e| WalError::io_at("seek", &path, len, e))?;
                // Make whatever survived a process crash durable before anyone reads it.
                f.sync_data().map_err(|e| WalError::io("fsync segment", &path, e))?;
                let mut seg = last.seg;
                seg.durable_len = len;
                (seg, f, len)
            }
            None => {
                let (seg, f) = create_segment(&dir, next_lsn)?;
                (seg, f, SEGMENT_HEADER_LEN)
            }
        };
        let sealed: VecDeque<Segment> = kept.into_iter().map(|s| s.seg).collect();
        report.segments = sealed.len() + 1;

        // One directory fsync covers every file recovery created, renamed or deleted.
        fsync_dir(&dir)?;
        if report.ack_file_corrupt {
            write_ack(&dir, acked)?;
        }

        if report.torn_tail_bytes > 0 || report.corrupt_records > 0 || report.ack_file_corrupt {
            tracing::warn!(dir = %dir.display(), ?report, "wal recovered with repairs");
        } else {
            tracing::debug!(dir = %dir.display(), ?report, "wal opened");
        }

        let wal = Wal {
            opts,
            sealed,
            active,
            writer: BufWriter::with_capacity(WRITE_BUFFER, file),
            write_pos,
            next_lsn,
            acked,
            dir_dirty: false,
            poisoned: None,
            _lock: lock,
        };
        Ok((wal, report))
    }

    /// Appends one record. It is buffered, not durable (nor visible to
    /// readers) until [`Wal::sync`]. Returns its lsn.
    ///
    /// Refuses payloads above `max_record_bytes`. After a failed write the wal
    /// is poisoned: every later append and sync fails until it is reopened.
    pub fn append(&mut self, payload: &[u8]) -> Result<Lsn, WalError> {
        self.check_poisoned()?;
        let len = payload.len() as u64;
        if len > u64::from(self.opts.max_record_bytes) {
            return Err(WalError::RecordTooLarge { len, max: self.opts.max_record_bytes });
        }
        if self.next_lsn == u64::MAX {
            return Err(WalError::LsnExhausted { path: self.opts.dir.clone() });
        }
        let rec_len = RECORD_HEADER_LEN + len;
        if self.write_pos > SEGMENT_HEADER_LEN && self.write_pos + rec_len > self.opts.segment_bytes {
            self.roll()?;
        }
        let lsn = self.next_lsn;
        let header = encode_record_header(lsn, payload);
        let res = self.writer.write_all(&header).and_then(|_| self.writer.write_all(payload));
        if let Err(e) = res {
            let err = WalError::io_at("append", &self.active.path, self.write_pos, e);
            return Err(self.poison(err));
        }
        self.write_pos += rec_len;
        self.next_lsn += 1;
        Ok(lsn)
    }

    /// Makes every appended record durable: flushes the buffer, fdatasyncs the
    /// active segment, and fsyncs the directory if segment files were created
    /// or deleted since it was last synced. Afterwards the records are visible
    /// to [`Wal::read_from`].
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.check_poisoned()?;
        if let Err(e) = self.writer.flush() {
            let err = WalError::io("flush segment", &self.active.path, e);
            return Err(self.poison(err));
        }
        if self.active.durable_len < self.write_pos {
            if let Err(e) = self.writer.get_ref().sync_data() {
                let err = WalError::io("fsync segment", &self.active.path, e);
                return Err(self.poison(err));
            }
            self.active.durable_len = self.write_pos;
        }
        if self.dir_dirty {
            fsync_dir(&self.opts.dir)?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Durably records that every record with lsn < `upto` is consumed, then
    /// deletes the segment files holding only consumed records (the active
    /// segment is kept). Acking at or below the current position is a no-op;
    /// acking past [`Wal::next_lsn`] is an error.
    pub fn ack(&mut self, upto: Lsn) -> Result<(), WalError> {
        if upto <= self.acked {
            return Ok(());
        }
        if upto > self.next_lsn {
            return Err(WalError::AckBeyondEnd { upto, next_lsn: self.next_lsn });
        }
        write_ack(&self.opts.dir, upto)?;
        self.acked = upto;
        let mut deleted = false;
        while let Some(oldest) = self.sealed.front() {
            let successor = self.sealed.get(1).unwrap_or(&self.active).first_lsn;
            if successor > upto {
                break;
            }
            remove_file_if_exists(&oldest.path, "remove consumed segment")?;
            self.sealed.pop_front();
            deleted = true;
        }
        if deleted {
            self.dir_dirty = true;
            fsync_dir(&self.opts.dir)?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Iterates the unconsumed records from `from` (raised to [`Wal::acked_lsn`]),
    /// in lsn order, streaming from disk with a bounded buffer.
    ///
    /// The reader sees the records that were durable (synced) when it was
    /// created; it does not hold the wal borrowed, and segments deleted by a
    /// later [`Wal::ack`] are skipped.
    pub fn read_from(&self, from: Lsn) -> Result<WalReader, WalError> {
        let from = from.max(self.acked);
        let all: Vec<&Segment> = self.sealed.iter().chain(std::iter::once(&self.active)).collect();
        let start = all.iter().rposition(|s| s.first_lsn <= from).unwrap_or(0);
        let snaps = (start..all.len())
            .map(|i| SegmentSnapshot {
                first_lsn: all[i].first_lsn,
                next_first_lsn: all.get(i + 1).map(|s| s.first_lsn),
                path: all[i].path.clone(),
                end: all[i].durable_len,
                known_corrupt: all[i].known_corrupt.clone(),
            })
            .collect();
        Ok(WalReader::new(snaps, from))
    }

    /// The lsn the next [`Wal::append`] will return.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// The ack position: every record with a lower lsn is consumed.
    pub fn acked_lsn(&self) -> Lsn {
        self.acked
    }

    /// Bytes of segment files, counting appended-but-unflushed bytes of the active segment.
    pub fn disk_bytes(&self) -> u64 {
        self.sealed.iter().map(|s| s.durable_len).sum::<u64>() + self.write_pos
    }

    /// The segment files in use, oldest first: each one's first lsn and
    /// its size in bytes (for the active segment, including buffered bytes).
    /// A record with lsn `l` lives in the last segment whose first lsn is `<= l`.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.sealed
            .iter()
            .map(|s| SegmentInfo { first_lsn: s.first_lsn, bytes: s.durable_len })
            .chain(std::iter::once(SegmentInfo { first_lsn: self.active.first_lsn, bytes: self.write_pos }))
            .collect()
    }

    /// Number of segment files in use.
    pub fn segment_count(&self) -> usize {
        self.sealed.len() + 1
    }

    /// The options the wal was opened with.
    pub fn options(&self) -> &WalOptions {
        &self.opts
    }

    fn check_poisoned(&self) -> Result<(), WalError> {
        match &self.poisoned {
            Some(cause) => Err(WalError::Poisoned { path: self.opts.dir.clone(), cause: cause.clone() }),
            None => Ok(()),
        }
    }

    fn poison(&mut self, err: WalError) -> WalError {
        tracing::error!(dir = %self.opts.dir.display(), error = %err, "wal write failed; refusing further writes");
        self.poisoned = Some(err.to_string());
        err
    }

    /// Seals the active segment (flush + fdatasync) and starts a new one at `next_lsn`.
    fn roll(&mut self) -> Result<(), WalError> {
        let res = self.roll_inner();
        res.map_err(|e| self.poison(e))
    }

    fn roll_inner(&mut self) -> Result<(), WalError> {
        self.writer.flush().map_err(|e| WalError::io("flush segment", &self.active.path, e))?;
        self.writer
            .get_ref()
            .sync_data()
            .map_err(|e| WalError::io("fsync segment", &self.active.path, e))?;
        self.active.durable_len = self.write_pos;
        let (seg, file) = create_segment(&self.opts.dir, self.next_lsn)?;
        fsync_dir(&self.opts.dir)?;
        let old = std::mem::replace(&mut self.active, seg);
        self.sealed.push_back(old);
        // The old writer is empty (flushed above), so dropping it writes nothing.
        self.writer = BufWriter::with_capacity(WRITE_BUFFER, file);
        self.write_pos = SEGMENT_HEADER_LEN;
        Ok(())
    }
}

/// Whether the file starts with a complete segment header whose checksum matches.
fn segment_header_is_valid(path: &Path) -> Result<bool, WalError> {
    let f = File::open(path).map_err(|e| WalError::io("open segment", path, e))?;
    let mut h = Vec::with_capacity(SEGMENT_HEADER_LEN as usize);
    f.take(SEGMENT_HEADER_LEN)
        .read_to_end(&mut h)
        .map_err(|e| WalError::io_at("read segment header", path, 0, e))?;
    Ok(matches!(decode_segment_header(&h), Block::Valid { .. }))
}

/// Streams one segment during recovery, updating the report.
/// What a recovery scan adds to and who it tells about records.
struct ScanSink<'a> {
    /// Records below this are consumed.
    acked: Lsn,
    report: &'a mut RecoveryReport,
    /// Unconsumed valid records seen.
    unconsumed: &'a mut u64,
    /// Called with each unconsumed valid record when `payloads` is set.
    visit: &'a mut dyn FnMut(Lsn, &[u8]),
    payloads: bool,
}

fn scan_segment(first_lsn: Lsn, path: PathBuf, hi: Option<Lsn>, is_last: bool, sink: &mut ScanSink<'_>) -> Result<ScannedSegment, WalError> {
    let acked = sink.acked;
    let file = File::open(&path).map_err(|e| WalError::io("open segment", &path, e))?;
    let file_len = file.metadata().map_err(|e| WalError::io("stat segment", &path, e))?.len();
    let mut reader = SegReader::new(file, path.clone(), file_len);

    let mut header_ok = false;
    if file_len >= SEGMENT_HEADER_LEN {
        let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
        reader.read_at(0, &mut h)?;
        match decode_segment_header(&h) {
            Block::Valid { version, .. } if version != FORMAT_VERSION => {
                return Err(WalError::UnsupportedSegmentVersion { path, version, supported: FORMAT_VERSION })
            }
            Block::Valid { value, .. } if value != first_lsn => {
                return Err(WalError::SegmentNameMismatch { path, header_lsn: value, name_lsn: first_lsn })
            }
            Block::Valid { .. } => header_ok = true,
            Block::Damaged => {}
        }
    }

    let mut known_corrupt = Vec::new();
    let mut bounds = LsnBounds { lo: first_lsn, hi };
    let mut pos = SEGMENT_HEADER_LEN.min(file_len);
    let mut valid = 0u64;
    let mut max_lsn = None;
    let mut truncate_at = None;
    let mut corrupt_records = 0u64;
    let mut corrupt_bytes = 0u64;
    loop {
        let want = sink.payloads.then_some(acked);
        match reader.step(pos, bounds, want)? {
            Step::End => break,
            Step::Record { lsn, next, payload } => {
                valid += 1;
                if lsn >= acked {
                    *sink.unconsumed += 1;
                    if let Some(p) = payload.as_deref() {
                        (sink.visit)(lsn, p);
                    }
                }
                max_lsn = Some(lsn);
                bounds.lo = lsn + 1; // lsn < u64::MAX: LsnBounds never accepts u64::MAX
                pos = next;
            }
            Step::Corrupt { start, resume, found } => {
                if !found && is_last {
                    truncate_at = Some(start);
                    break;
                }
                tracing::warn!(
                    file = %path.display(),
                    offset = start,
                    bytes = resume - start,
                    "skipping damaged record(s) in wal segment"
                );
                corrupt_records += 1;
                corrupt_bytes += resume - start;
                known_corrupt.push(start);
                pos = resume;
            }
        }
    }

    if !header_ok {
        tracing::warn!(
            file = %path.display(),
            offset = 0,
            "segment header is damaged; trusting the file name for its first lsn"
        );
        corrupt_records += 1;
        corrupt_bytes += SEGMENT_HEADER_LEN.min(file_len);
    }
    sink.report.corrupt_records += corrupt_records;
    sink.report.corrupt_bytes += corrupt_bytes;
    if let Some(t) = truncate_at {
        tracing::warn!(
            file = %path.display(),
            offset = t,
            bytes = file_len - t,
            "truncating torn tail of the last wal segment"
        );
        sink.report.torn_tail_bytes += file_len - t;
    }
    Ok(ScannedSegment {
        seg: Segment { first_lsn, path, durable_len: file_len, known_corrupt },
        file_len,
        header_ok,
        valid,
        max_lsn,
        truncate_at,
    })
}
