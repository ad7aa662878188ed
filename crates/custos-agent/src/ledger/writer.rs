//! The ledger's one writer: appends, rotation, recovery and pruning.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use custos_model::BatchId;

use super::error::{Damage, DamageKind, LedgerError};
use super::format::{
    check_payload, decode_record, encode_ack_line, encode_batch_line, segment_file_name,
    split_line, Decode, Hash, SegmentHeader, LOCK_FILE_NAME, MAX_ACK_ID_BYTES, MAX_PAYLOAD_BYTES,
    ZERO_HASH,
};
use super::ledger_dir;
use super::scan::{
    check_record, fsync_dir, last_complete_line, list_segments, read_header, Chain, HeaderRead,
    Line, SegmentFile, TornTail,
};

/// Bounds of the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerOptions {
    /// Most bytes the ledger's segments may take; the oldest segments are
    /// deleted beyond it (the active segment is kept, so the ledger may
    /// exceed this by less than one segment). At least `segment_bytes`.
    pub max_bytes: u64,
    /// Records older than this are deleted (whole segments, once their last
    /// record is older). Not zero.
    pub max_age: Duration,
    /// Size at which the active segment is closed and a new one started
    /// (a segment exceeds it by at most one record). At least 4096.
    pub segment_bytes: u64,
}

impl Default for LedgerOptions {
    /// 256 MiB, 90 days, 16 MiB segments.
    fn default() -> Self {
        LedgerOptions {
            max_bytes: 256 << 20,
            max_age: Duration::from_secs(90 * 24 * 3600),
            segment_bytes: 16 << 20,
        }
    }
}

impl LedgerOptions {
    fn validate(&self) -> Result<(), LedgerError> {
        if self.segment_bytes < 4096 {
            return Err(LedgerError::InvalidOptions(format!(
                "segment_bytes must be at least 4096, got {}",
                self.segment_bytes
            )));
        }
        if self.max_bytes < self.segment_bytes {
            return Err(LedgerError::InvalidOptions(format!(
                "max_bytes ({}) must be at least segment_bytes ({})",
                self.max_bytes, self.segment_bytes
            )));
        }
        if self.max_age.is_zero() {
            return Err(LedgerError::InvalidOptions(
                "max_age must not be zero".into(),
            ));
        }
        Ok(())
    }
}

/// What [`Ledger::open`] found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryInfo {
    /// The ledger was created (no segment existed).
    pub created: bool,
    /// A torn last record (a crash mid-append) that was cut off.
    pub torn_tail: Option<TornTail>,
    /// A newest segment with an incomplete header (a crash while rotating)
    /// that was removed.
    pub removed_segment: Option<PathBuf>,
    /// Seq of the oldest record present.
    pub first_seq: u64,
    /// Seq the next record gets.
    pub next_seq: u64,
    /// Segment files.
    pub segments: usize,
}

/// What [`Ledger::prune`] deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Segment files deleted.
    pub segments_removed: usize,
    /// Records in them.
    pub records_removed: u64,
    /// Their bytes.
    pub bytes_removed: u64,
    /// Seq of the oldest record left (or of the next record, if none is left).
    pub first_kept_seq: u64,
}

/// What the writer knows of a segment.
#[derive(Clone, Debug)]
struct SegmentInfo {
    first_seq: u64,
    path: PathBuf,
    bytes: u64,
    /// Time of its last record; `None` when it has none or it is unreadable
    /// (such a sealed segment counts as expired).
    last_time: Option<i64>,
}

/// The writer of a host's ledger. One per state dir (a lock file keeps a
/// second one out, in this process or another).
///
/// Every method is blocking (it writes and fsyncs); call it from
/// `spawn_blocking` in async code.
#[derive(Debug)]
pub struct Ledger {
    dir: PathBuf,
    opts: LedgerOptions,
    file: File,
    active: SegmentInfo,
    sealed: VecDeque<SegmentInfo>,
    chain: Chain,
    buf: Vec<u8>,
    poisoned: Option<String>,
    recovery: RecoveryInfo,
    _lock: File,
}

/// Creates `dir` with mode 0700 if missing, and makes an existing one 0700.
fn create_private_dir(dir: &Path) -> Result<(), LedgerError> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fsync_dir(parent)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = fs::metadata(dir).map_err(|e| LedgerError::io("stat", dir, e))?;
            if !meta.is_dir() {
                return Err(LedgerError::io(
                    "open ledger directory",
                    dir,
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "exists and is not a directory",
                    ),
                ));
            }
            if meta.permissions().mode() & 0o777 != 0o700 {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| LedgerError::io("chmod 0700", dir, e))?;
            }
            Ok(())
        }
        Err(e) => Err(LedgerError::io("create ledger directory", dir, e)),
    }
}

/// Creates a segment file (mode 0600) with its header; fsyncs it and the directory.
fn create_segment(dir: &Path, header: &SegmentHeader) -> Result<(File, SegmentInfo), LedgerError> {
    let path = dir.join(segment_file_name(header.first_seq));
    let mut f = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| LedgerError::io("create segment", &path, e))?;
    let bytes = header.encode();
    f.write_all(&bytes)
        .map_err(|e| LedgerError::io("write segment header", &path, e))?;
    f.sync_all()
        .map_err(|e| LedgerError::io("fsync segment", &path, e))?;
    fsync_dir(dir)?;
    let info = SegmentInfo {
        first_seq: header.first_seq,
        path,
        bytes: bytes.len() as u64,
        last_time: None,
    };
    Ok((f, info))
}

/// Time of the last record of a sealed segment, read from its end (`None`
/// when it has no record or the line is unreadable).
fn last_record_time(seg: &SegmentFile) -> Result<Option<i64>, LedgerError> {
    let Some(line) = last_complete_line(&seg.path)? else {
        return Ok(None);
    };
    let Ok(split) = split_line(&line) else {
        return Ok(None);
    };
    Ok(match decode_record(split.json) {
        Decode::Ok(r) => Some(r.time),
        _ => None,
    })
}

fn file_len(path: &Path) -> Result<u64, LedgerError> {
    Ok(fs::metadata(path)
        .map_err(|e| LedgerError::io("stat", path, e))?
        .len())
}

impl Ledger {
    /// Opens (creating if needed) the ledger of `state_dir` in
    /// `<state_dir>/ledger` (mode 0700, files 0600), takes its lock, and
    /// recovers from a crash: a torn last record of the newest segment is
    /// cut off, a newest segment with an incomplete header is removed (both
    /// reported in [`recovery`](Self::recovery)).
    ///
    /// Every record of the newest segment is checked (the chain continues
    /// from it); damage there is an error, since appending after it would
    /// hide it. Older segments are only read for their size and last time;
    /// [`verify`](super::verify) checks them. `state_dir` must exist.
    pub fn open(state_dir: &Path, opts: LedgerOptions) -> Result<Ledger, LedgerError> {
        opts.validate()?;
        let dir = ledger_dir(state_dir);
        create_private_dir(&dir)?;
        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| LedgerError::io("open lock file", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(LedgerError::Locked { path: lock_path })
            }
            Err(fs::TryLockError::Error(e)) => return Err(LedgerError::io("lock", &lock_path, e)),
        }

        let mut recovery = RecoveryInfo::default();
        let mut segs = list_segments(&dir)?;
        let (file, active, chain) = loop {
            let Some(last) = segs.last().cloned() else {
                let (file, info) = create_segment(
                    &dir,
                    &SegmentHeader {
                        first_seq: 0,
                        prev: ZERO_HASH,
                    },
                )?;
                recovery.created = true;
                segs.push(SegmentFile {
                    first_seq: 0,
                    path: info.path.clone(),
                });
                break (
                    file,
                    info,
                    Chain {
                        next: 0,
                        prev: ZERO_HASH,
                    },
                );
            };
            match read_header(&last)? {
                HeaderRead::Ok(header, reader) => {
                    let (info, chain) = Self::recover_tail(&last, header, reader, &mut recovery)?;
                    let file = OpenOptions::new()
                        .append(true)
                        .open(&last.path)
                        .map_err(|e| LedgerError::io("open", &last.path, e))?;
                    break (file, info, chain);
                }
                // A crash while rotating (or while creating the ledger): the
                // file holds no record.
                HeaderRead::Torn if segs.len() > 1 || last.first_seq == 0 => {
                    fs::remove_file(&last.path)
                        .map_err(|e| LedgerError::io("remove torn segment", &last.path, e))?;
                    fsync_dir(&dir)?;
                    recovery.removed_segment = Some(last.path.clone());
                    segs.pop();
                }
                HeaderRead::Torn => {
                    return Err(Damage {
                        path: last.path.clone(),
                        line: 1,
                        seq: None,
                        kind: DamageKind::BadHeader(
                            "the only segment has an incomplete header and does not start at seq 0"
                                .into(),
                        ),
                    }
                    .into())
                }
            }
        };
        let mut sealed = VecDeque::new();
        for seg in &segs[..segs.len() - 1] {
            sealed.push_back(SegmentInfo {
                first_seq: seg.first_seq,
                path: seg.path.clone(),
                bytes: file_len(&seg.path)?,
                last_time: last_record_time(seg)?,
            });
        }
        recovery.first_seq = sealed.front().map_or(active.first_seq, |s| s.first_seq);
        recovery.next_seq = chain.next;
        recovery.segments = segs.len();
        Ok(Ledger {
            dir,
            opts,
            file,
            active,
            sealed,
            chain,
            buf: Vec::new(),
            poisoned: None,
            recovery,
            _lock: lock,
        })
    }

    /// Checks every record of the newest segment and cuts a torn tail.
    fn recover_tail(
        seg: &SegmentFile,
        header: SegmentHeader,
        mut reader: super::scan::LineReader,
        recovery: &mut RecoveryInfo,
    ) -> Result<(SegmentInfo, Chain), LedgerError> {
        let mut chain = Chain {
            next: header.first_seq,
            prev: header.prev,
        };
        let mut last_time = None;
        let mut buf = Vec::new();
        let len = loop {
            match reader.next_line(&mut buf)? {
                Line::Complete => {
                    let (hash, rec) = check_record(&buf, &chain, &seg.path, reader.line_no())?;
                    last_time = Some(rec.time);
                    chain = Chain {
                        next: chain.next + 1,
                        prev: hash,
                    };
                }
                Line::Eof => break reader.line_start(),
                Line::TooLong => {
                    return Err(Damage {
                        path: seg.path.clone(),
                        line: reader.line_no(),
                        seq: Some(chain.next),
                        kind: DamageKind::LineTooLong,
                    }
                    .into())
                }
                Line::Partial => {
                    let at = reader.line_start();
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&seg.path)
                        .map_err(|e| LedgerError::io("open", &seg.path, e))?;
                    f.set_len(at)
                        .map_err(|e| LedgerError::io("truncate torn record", &seg.path, e))?;
                    f.sync_all()
                        .map_err(|e| LedgerError::io("fsync", &seg.path, e))?;
                    recovery.torn_tail = Some(TornTail {
                        path: seg.path.clone(),
                        offset: at,
                        bytes: reader.limit() - at,
                        seq: chain.next,
                    });
                    break at;
                }
            }
        };
        Ok((
            SegmentInfo {
                first_seq: header.first_seq,
                path: seg.path.clone(),
                bytes: len,
                last_time,
            },
            chain,
        ))
    }

    /// What [`open`](Self::open) found and repaired.
    pub fn recovery(&self) -> &RecoveryInfo {
        &self.recovery
    }

    /// The ledger directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The seq the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.chain.next
    }

    /// The hash of the newest record (all zeros while the ledger is empty):
    /// the head of the chain.
    pub fn head(&self) -> Hash {
        self.chain.prev
    }

    /// Seq of the oldest record present (or of the next one, if none is).
    pub fn first_seq(&self) -> u64 {
        self.sealed
            .front()
            .map_or(self.active.first_seq, |s| s.first_seq)
    }

    /// Bytes of all segment files.
    pub fn total_bytes(&self) -> u64 {
        self.sealed.iter().map(|s| s.bytes).sum::<u64>() + self.active.bytes
    }

    /// Segment files.
    pub fn segments(&self) -> usize {
        self.sealed.len() + 1
    }

    /// Records the batch about to be sent: its payload bytes exactly as they
    /// leave the host (the JSON `BatchPayload`, before compression; see
    /// [`custos_model::wire::payload_json`]), the send time and the batch id.
    /// Returns the record's seq once it is durable (written and fsynced).
    ///
    /// The batch must not be sent unless this returns `Ok`. The payload must
    /// be a compact JSON object whose `batch_id` is `batch_id`
    /// ([`LedgerError::InvalidPayload`] otherwise, with nothing written), at
    /// most [`MAX_PAYLOAD_BYTES`](super::MAX_PAYLOAD_BYTES).
    pub fn append_batch(
        &mut self,
        batch_id: BatchId,
        payload_json: &[u8],
        time_micros: i64,
    ) -> Result<u64, LedgerError> {
        self.check_poisoned()?;
        if payload_json.len() > MAX_PAYLOAD_BYTES {
            return Err(LedgerError::TooLarge {
                what: "payload",
                len: payload_json.len(),
                max: MAX_PAYLOAD_BYTES,
            });
        }
        check_payload(payload_json, &batch_id).map_err(LedgerError::InvalidPayload)?;
        self.append(time_micros, |out, seq, prev| {
            encode_batch_line(out, seq, prev, time_micros, &batch_id, payload_json)
        })
    }

    /// Records the server's acknowledgement of a batch: its ack id, how many
    /// events it accepted and refused, and when. Returns the record's seq
    /// once it is durable. `ack_id` is at most 1024 bytes.
    pub fn append_ack(
        &mut self,
        batch_id: BatchId,
        ack_id: &str,
        accepted: u64,
        refused: u64,
        time_micros: i64,
    ) -> Result<u64, LedgerError> {
        self.check_poisoned()?;
        if ack_id.len() > MAX_ACK_ID_BYTES {
            return Err(LedgerError::TooLarge {
                what: "ack_id",
                len: ack_id.len(),
                max: MAX_ACK_ID_BYTES,
            });
        }
        self.append(time_micros, |out, seq, prev| {
            encode_ack_line(
                out,
                seq,
                prev,
                time_micros,
                &batch_id,
                ack_id,
                accepted,
                refused,
            )
        })
    }

    fn check_poisoned(&self) -> Result<(), LedgerError> {
        match &self.poisoned {
            Some(cause) => Err(LedgerError::Poisoned {
                path: self.dir.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Marks the writer unusable after a failed write or fsync. What reached
    /// the disk is unknown; cutting the file back is attempted, and the next
    /// open repairs the rest (a partial line is a torn tail).
    fn poison(&mut self, err: LedgerError) -> LedgerError {
        let _ = self.file.set_len(self.active.bytes);
        self.poisoned = Some(err.to_string());
        err
    }

    fn append(
        &mut self,
        time: i64,
        encode: impl FnOnce(&mut Vec<u8>, u64, &Hash) -> Hash,
    ) -> Result<u64, LedgerError> {
        if self.active.bytes >= self.opts.segment_bytes && self.active_has_records() {
            self.rotate()?;
        }
        let seq = self.chain.next;
        if seq == u64::MAX {
            // Only a forged header can start a segment this high.
            return Err(Damage {
                path: self.active.path.clone(),
                line: 1,
                seq: None,
                kind: DamageKind::BadHeader("seq space exhausted".into()),
            }
            .into());
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let hash = encode(&mut buf, seq, &self.chain.prev);
        let written = self
            .file
            .write_all(&buf)
            .map_err(|e| LedgerError::io("write record", &self.active.path, e))
            .and_then(|()| {
                self.file
                    .sync_data()
                    .map_err(|e| LedgerError::io("fsync", &self.active.path, e))
            });
        let len = buf.len() as u64;
        // Keep a moderate buffer for the next append, not a 64 MiB one.
        if buf.capacity() <= 4 << 20 {
            self.buf = buf;
        }
        if let Err(e) = written {
            return Err(self.poison(e));
        }
        self.active.bytes += len;
        self.active.last_time = Some(time);
        self.chain = Chain {
            next: seq + 1,
            prev: hash,
        };
        Ok(seq)
    }

    fn active_has_records(&self) -> bool {
        self.chain.next > self.active.first_seq
    }

    /// Seals the active segment and starts a new one after it.
    fn rotate(&mut self) -> Result<(), LedgerError> {
        let header = SegmentHeader {
            first_seq: self.chain.next,
            prev: self.chain.prev,
        };
        match create_segment(&self.dir, &header) {
            Ok((file, info)) => {
                self.file = file;
                let old = std::mem::replace(&mut self.active, info);
                self.sealed.push_back(old);
                Ok(())
            }
            Err(e) => {
                // A partly created file is removed by the next open.
                self.poisoned = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Deletes whole segments, oldest first, while the ledger is larger than
    /// `max_bytes` or the oldest segment's last record is older than
    /// `now_micros - max_age`. An expired active segment is sealed first so
    /// it can go too; the active segment is never deleted for size. The first
    /// remaining segment's header anchors the chain, so what is left still
    /// verifies. Cheap (no reads): call it after every append or on a timer.
    pub fn prune(&mut self, now_micros: i64) -> Result<PruneReport, LedgerError> {
        self.check_poisoned()?;
        let max_age = i64::try_from(self.opts.max_age.as_micros()).unwrap_or(i64::MAX);
        let cutoff = now_micros.saturating_sub(max_age);
        let expired = |t: Option<i64>| t.is_none_or(|t| t < cutoff);
        if self.active_has_records() && expired(self.active.last_time) {
            self.rotate()?;
        }
        let mut report = PruneReport::default();
        let mut total = self.total_bytes();
        while let Some(oldest) = self.sealed.front() {
            if !(total > self.opts.max_bytes || expired(oldest.last_time)) {
                break;
            }
            match fs::remove_file(&oldest.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(LedgerError::io("remove segment", &oldest.path, e)),
            }
            let next_first = self
                .sealed
                .get(1)
                .map_or(self.active.first_seq, |s| s.first_seq);
            report.segments_removed += 1;
            report.records_removed += next_first.saturating_sub(oldest.first_seq);
            report.bytes_removed += oldest.bytes;
            total -= oldest.bytes;
            self.sealed.pop_front();
        }
        if report.segments_removed > 0 {
            fsync_dir(&self.dir)?;
        }
        report.first_kept_seq = self.first_seq();
        Ok(report)
    }
}
