//! The read side: [`WalReader`].

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::PathBuf;

use crate::error::WalError;
use crate::format::SEGMENT_HEADER_LEN;
use crate::scan::{LsnBounds, SegReader, Step};
use crate::Lsn;

/// What a reader needs to know about one segment, captured when it is created.
#[derive(Debug, Clone)]
pub(crate) struct SegmentSnapshot {
    pub first_lsn: Lsn,
    pub next_first_lsn: Option<Lsn>,
    pub path: PathBuf,
    /// Readable (durable) bytes.
    pub end: u64,
    pub known_corrupt: Vec<u64>,
}

#[derive(Debug)]
struct Cursor {
    reader: SegReader,
    pos: u64,
    bounds: LsnBounds,
    known_corrupt: Vec<u64>,
}

/// Iterator over unconsumed records, created by [`Wal::read_from`](crate::Wal::read_from).
///
/// Yields `(lsn, payload)` in increasing lsn order. Memory use is one read
/// buffer plus the record being returned. Damaged regions that recovery
/// already reported are skipped silently; damage that appeared after the wal
/// was opened is yielded once as [`WalError::CorruptRecord`] and then skipped.
/// After an I/O error the iterator ends.
#[derive(Debug)]
pub struct WalReader {
    pending: VecDeque<SegmentSnapshot>,
    cursor: Option<Cursor>,
    from: Lsn,
    done: bool,
}

impl WalReader {
    pub(crate) fn new(segments: Vec<SegmentSnapshot>, from: Lsn) -> Self {
        WalReader { pending: segments.into(), cursor: None, from, done: false }
    }

    /// The smallest lsn this reader can still return.
    pub fn position(&self) -> Lsn {
        self.from
    }

    fn next_inner(&mut self) -> Result<Option<(Lsn, Vec<u8>)>, WalError> {
        loop {
            let Some(cur) = self.cursor.as_mut() else {
                let Some(seg) = self.pending.pop_front() else {
                    return Ok(None);
                };
                let file = match File::open(&seg.path) {
                    Ok(f) => f,
                    // Deleted by an ack after this reader was created: all consumed.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(WalError::io("open segment", &seg.path, e)),
                };
                self.cursor = Some(Cursor {
                    reader: SegReader::new(file, seg.path, seg.end),
                    pos: SEGMENT_HEADER_LEN.min(seg.end),
                    bounds: LsnBounds { lo: seg.first_lsn, hi: seg.next_first_lsn },
                    known_corrupt: seg.known_corrupt,
                });
                continue;
            };
            match cur.reader.step(cur.pos, cur.bounds, Some(self.from))? {
                Step::End => self.cursor = None,
                Step::Record { lsn, next, payload } => {
                    cur.pos = next;
                    cur.bounds.lo = lsn + 1; // lsn < u64::MAX: never accepted as valid
                    if let Some(p) = payload {
                        self.from = lsn + 1;
                        return Ok(Some((lsn, p)));
                    }
                }
                Step::Corrupt { start, resume, .. } => {
                    cur.pos = resume;
                    if !cur.known_corrupt.contains(&start) {
                        return Err(WalError::CorruptRecord {
                            path: cur.reader.path().to_path_buf(),
                            offset: start,
                            len: resume - start,
                        });
                    }
                }
            }
        }
    }
}

impl Iterator for WalReader {
    type Item = Result<(Lsn, Vec<u8>), WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_inner() {
            Ok(Some(rec)) => Some(Ok(rec)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e @ WalError::CorruptRecord { .. }) => Some(Err(e)),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
