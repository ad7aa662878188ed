//! Offline reading of an audit log, safe while a writer appends.

use std::path::{Path, PathBuf};

use crate::error::Damage;
use crate::segments::{
    check_record, list_segments, read_header, read_last_checkpoint, Chain, HeaderRead, Line,
    LineReader, SegmentFile,
};
use crate::{AuditError, Checkpoint, StoredRecord};

/// Which records [`AuditReader::list`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordFilter {
    /// Only records of this workspace.
    pub workspace: Option<String>,
    /// Only records with `time >= since` (microseconds since the epoch).
    pub since: Option<i64>,
    /// Only records with `time < until`.
    pub until: Option<i64>,
    /// Start at this seq (for paging: the last seen seq + 1).
    pub from_seq: u64,
    /// At most this many records.
    pub limit: Option<usize>,
}

impl RecordFilter {
    /// Whether `rec` passes the workspace and time conditions.
    pub fn matches(&self, rec: &StoredRecord) -> bool {
        self.workspace
            .as_ref()
            .is_none_or(|w| rec.record.workspace.as_ref() == Some(w))
            && self.since.is_none_or(|s| rec.record.time >= s)
            && self.until.is_none_or(|u| rec.record.time < u)
    }
}

/// Reads records from a log directory, oldest first.
///
/// Works while a server appends: only whole, newline-terminated lines are
/// returned, the segment list is taken when iteration starts, and a torn or
/// in-progress last line is not an error. Every returned record's hash, seq
/// and chain link have been checked; damage ends iteration with an error.
#[derive(Clone, Debug)]
pub struct AuditReader {
    dir: PathBuf,
}

impl AuditReader {
    /// A reader for the log in `dir`, which must exist.
    pub fn open(dir: impl AsRef<Path>) -> Result<AuditReader, AuditError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::metadata(&dir).map_err(|e| AuditError::io("open log directory", &dir, e))?;
        Ok(AuditReader { dir })
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Iterates records with `seq >= from_seq`.
    pub fn records(&self, from_seq: u64) -> Result<Records, AuditError> {
        let segs = list_segments(&self.dir)?;
        let start = segs
            .iter()
            .rposition(|s| s.first_seq <= from_seq)
            .unwrap_or(0);
        Ok(Records {
            segs,
            idx: start,
            start,
            cur: None,
            chain: Chain {
                next: 0,
                prev: [0; 32],
            },
            from: from_seq,
            buf: Vec::new(),
            done: false,
        })
    }

    /// The records passing `filter`, oldest first, at most `filter.limit`.
    pub fn list(&self, filter: &RecordFilter) -> Result<Vec<StoredRecord>, AuditError> {
        let mut out = Vec::new();
        if filter.limit == Some(0) {
            return Ok(out);
        }
        for rec in self.records(filter.from_seq)? {
            let rec = rec?;
            if filter.matches(&rec) {
                out.push(rec);
                if filter.limit.is_some_and(|l| out.len() >= l) {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The latest complete checkpoint, if any.
    pub fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        Ok(read_last_checkpoint(&self.dir)?.0)
    }
}

/// Iterator over stored records; see [`AuditReader::records`].
#[derive(Debug)]
pub struct Records {
    segs: Vec<SegmentFile>,
    idx: usize,
    start: usize,
    cur: Option<LineReader>,
    chain: Chain,
    from: u64,
    buf: Vec<u8>,
    done: bool,
}

impl std::fmt::Debug for LineReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineReader")
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

impl Records {
    fn next_inner(&mut self) -> Result<Option<StoredRecord>, AuditError> {
        loop {
            let is_last = self.idx + 1 == self.segs.len();
            if self.cur.is_none() {
                let Some(seg) = self.segs.get(self.idx) else {
                    return Ok(None);
                };
                let (h, r) = match read_header(seg)? {
                    HeaderRead::Ok(h, r) => (h, r),
                    // A segment being created by the writer right now.
                    HeaderRead::Torn if is_last => return Ok(None),
                    HeaderRead::Torn => {
                        return Err(Damage::SegmentHeader {
                            path: seg.path.clone(),
                            reason: "header line is incomplete".into(),
                        }
                        .into())
                    }
                };
                if self.idx > self.start {
                    if h.first_seq != self.chain.next {
                        return Err(Damage::MissingRecords {
                            seq: self.chain.next,
                            path: seg.path.clone(),
                            starts_at: h.first_seq,
                        }
                        .into());
                    }
                    if h.prev != self.chain.prev {
                        return Err(Damage::SegmentHeader {
                            path: seg.path.clone(),
                            reason: format!(
                                "prev does not match the hash of record {}",
                                h.first_seq.saturating_sub(1)
                            ),
                        }
                        .into());
                    }
                }
                self.chain = Chain {
                    next: h.first_seq,
                    prev: h.prev,
                };
                self.cur = Some(r);
            }
            let Some(r) = self.cur.as_mut() else { continue };
            match r.next_line(&mut self.buf)? {
                Line::Complete => {
                    let (hash, rec) = check_record(&self.buf, &self.chain, r.path())?;
                    self.chain = Chain {
                        next: self.chain.next + 1,
                        prev: hash,
                    };
                    if rec.seq >= self.from {
                        return Ok(Some(StoredRecord {
                            seq: rec.seq,
                            prev: rec.prev,
                            hash,
                            record: rec.record,
                        }));
                    }
                }
                Line::Eof => {
                    self.cur = None;
                    self.idx += 1;
                }
                Line::Partial if is_last => return Ok(None),
                Line::Partial => {
                    return Err(Damage::Incomplete {
                        seq: self.chain.next,
                        path: r.path().to_path_buf(),
                    }
                    .into())
                }
                Line::TooLong => {
                    return Err(Damage::Unparsable {
                        seq: self.chain.next,
                        path: r.path().to_path_buf(),
                        reason: "line too long".into(),
                    }
                    .into())
                }
            }
        }
    }
}

impl Iterator for Records {
    type Item = Result<StoredRecord, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_inner() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
