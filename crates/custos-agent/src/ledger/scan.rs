//! Reading segment files: listing, bounded line reading, and checking
//! headers and records against the chain. Shared by the writer's recovery,
//! the reader and verification.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::error::{Damage, DamageKind, LedgerError};
use super::format::{
    decode_record, parse_segment_file_name, record_hash, split_line, Decode, Hash, HeaderError,
    Record, SegmentHeader, FORMAT_VERSION, MAX_LINE_BYTES,
};

/// The unterminated end of the newest segment: what a crash in the middle
/// of an append leaves (or an append in progress, seen by a reader). Not
/// damage: the append never returned, so its batch was not sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub path: PathBuf,
    /// Offset of the first byte of the unterminated line.
    pub offset: u64,
    /// Bytes in the unterminated line.
    pub bytes: u64,
    /// The seq the record would have had.
    pub seq: u64,
}

/// A segment file found in the directory.
#[derive(Clone, Debug)]
pub(crate) struct SegmentFile {
    pub first_seq: u64,
    pub path: PathBuf,
}

/// The segment files of `dir`, oldest first.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<SegmentFile>, LedgerError> {
    let entries = fs::read_dir(dir).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => LedgerError::NotFound {
            path: dir.to_path_buf(),
        },
        _ => LedgerError::io("list directory", dir, e),
    })?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LedgerError::io("list directory", dir, e))?;
        if let Some(first_seq) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            out.push(SegmentFile {
                first_seq,
                path: entry.path(),
            });
        }
    }
    out.sort_by_key(|s| s.first_seq);
    Ok(out)
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), LedgerError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LedgerError::io("fsync directory", dir, e))
}

/// What [`LineReader::next_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// A LF-terminated line (the buffer holds it without the LF).
    Complete,
    /// Bytes up to the end of the file without a LF.
    Partial,
    /// A line longer than [`MAX_LINE_BYTES`].
    TooLong,
    /// End of file.
    Eof,
}

/// Reads a file line by line with a bounded line length, up to a limit
/// (a snapshot of a file that may still grow).
pub(crate) struct LineReader {
    inner: BufReader<File>,
    path: PathBuf,
    pos: u64,
    line_start: u64,
    line_no: u64,
    limit: u64,
}

impl LineReader {
    /// Opens `path`, reading no further than its length now.
    pub(crate) fn open(path: &Path) -> Result<LineReader, LedgerError> {
        let f = File::open(path).map_err(|e| LedgerError::io("open", path, e))?;
        let limit = f
            .metadata()
            .map_err(|e| LedgerError::io("stat", path, e))?
            .len();
        Ok(LineReader {
            inner: BufReader::with_capacity(256 * 1024, f),
            path: path.to_path_buf(),
            pos: 0,
            line_start: 0,
            line_no: 0,
            limit,
        })
    }

    /// Offset of the start of the line last returned.
    pub(crate) fn line_start(&self) -> u64 {
        self.line_start
    }

    /// 1-based number of the line last returned.
    pub(crate) fn line_no(&self) -> u64 {
        self.line_no
    }

    /// Length of the file when it was opened.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    pub(crate) fn next_line(&mut self, buf: &mut Vec<u8>) -> Result<Line, LedgerError> {
        buf.clear();
        self.line_start = self.pos;
        self.line_no += 1;
        let n = (&mut self.inner)
            .take((MAX_LINE_BYTES as u64 + 1).min(self.limit.saturating_sub(self.pos)))
            .read_until(b'\n', buf)
            .map_err(|e| LedgerError::io("read", &self.path, e))?;
        self.pos += n as u64;
        Ok(match buf.last() {
            None => Line::Eof,
            Some(b'\n') => {
                buf.pop();
                Line::Complete
            }
            Some(_) if n > MAX_LINE_BYTES => Line::TooLong,
            Some(_) => Line::Partial,
        })
    }
}

/// Position in the hash chain: the seq the next record must have and the
/// hash it must link to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Chain {
    pub next: u64,
    pub prev: Hash,
}

/// Result of reading a segment's header.
pub(crate) enum HeaderRead {
    /// The header and a reader positioned at the first record.
    Ok(SegmentHeader, LineReader),
    /// The file ends before the header's LF (a crash while creating it).
    Torn,
}

/// Reads and checks the header of `seg`, including that it matches the file name.
pub(crate) fn read_header(seg: &SegmentFile) -> Result<HeaderRead, LedgerError> {
    let mut r = LineReader::open(&seg.path)?;
    let mut buf = Vec::new();
    let bad = |reason: String| -> LedgerError {
        Damage {
            path: seg.path.clone(),
            line: 1,
            seq: None,
            kind: DamageKind::BadHeader(reason),
        }
        .into()
    };
    match r.next_line(&mut buf)? {
        Line::Eof | Line::Partial => Ok(HeaderRead::Torn),
        Line::TooLong => Err(bad("header line too long".into())),
        Line::Complete => match SegmentHeader::decode(&buf) {
            Ok(h) if h.first_seq != seg.first_seq => Err(bad(format!(
                "header says first seq {} but the file name says {}",
                h.first_seq, seg.first_seq
            ))),
            Ok(h) => Ok(HeaderRead::Ok(h, r)),
            Err(HeaderError::Version(version)) => Err(LedgerError::UnsupportedVersion {
                path: seg.path.clone(),
                line: 1,
                version,
                supported: FORMAT_VERSION,
            }),
            Err(HeaderError::Bad(reason)) => Err(bad(reason)),
        },
    }
}

/// Checks one complete record line at `chain`: line shape, hash, JSON, link,
/// seq (in that order). Damage names `chain.next`, the seq this position must hold.
pub(crate) fn check_record<'a>(
    line: &'a [u8],
    chain: &Chain,
    path: &Path,
    line_no: u64,
) -> Result<(Hash, Record<'a>), LedgerError> {
    let damage = |kind: DamageKind| -> LedgerError {
        Damage {
            path: path.to_path_buf(),
            line: line_no,
            seq: Some(chain.next),
            kind,
        }
        .into()
    };
    if chain.next == u64::MAX {
        return Err(damage(DamageKind::BadJson("seq space exhausted".into())));
    }
    let split = split_line(line).map_err(|r| damage(DamageKind::BadLine(r.into())))?;
    if record_hash(split.json) != split.hash {
        return Err(damage(DamageKind::HashMismatch));
    }
    let rec = match decode_record(split.json) {
        Decode::Ok(r) => r,
        Decode::Version(version) => {
            return Err(LedgerError::UnsupportedVersion {
                path: path.to_path_buf(),
                line: line_no,
                version,
                supported: FORMAT_VERSION,
            })
        }
        Decode::Bad(reason) => return Err(damage(DamageKind::BadJson(reason))),
    };
    if rec.prev != chain.prev {
        let found_seq = (rec.seq != chain.next).then_some(rec.seq);
        return Err(damage(DamageKind::BrokenLink { found_seq }));
    }
    if rec.seq != chain.next {
        return Err(damage(DamageKind::SeqMismatch { found: rec.seq }));
    }
    Ok((split.hash, rec))
}

/// What [`walk`] saw.
#[derive(Clone, Debug, Default)]
pub(crate) struct Walked {
    /// Segment files read.
    pub segments: usize,
    /// Bytes read (up to the end of the last complete line).
    pub bytes: u64,
    /// Complete records checked.
    pub records: u64,
    /// Seq of the first record present (or where the first record would go).
    pub first_seq: u64,
    /// The chain position after the last complete record.
    pub chain: Option<Chain>,
    /// An unterminated last line of the newest segment.
    pub torn_tail: Option<TornTail>,
    /// A newest segment whose header line is incomplete.
    pub torn_segment: Option<PathBuf>,
}

/// Internal: a segment listed at the start of a walk disappeared (pruned by
/// the writer meanwhile); the walk is restarted.
pub(crate) enum WalkError {
    Vanished,
    Err(LedgerError),
}

impl From<LedgerError> for WalkError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Io { ref source, .. } if source.kind() == io::ErrorKind::NotFound => {
                WalkError::Vanished
            }
            other => WalkError::Err(other),
        }
    }
}

/// Reads every segment of `dir` in order, checking each header and record
/// against the chain, and calls `visit` with each complete record. A torn
/// tail (or torn header) of the newest segment is reported, not an error.
/// Segments that appear after the listing are not read (a snapshot).
pub(crate) fn walk(
    dir: &Path,
    mut visit: impl FnMut(&Record<'_>, &Path, u64) -> Result<(), LedgerError>,
) -> Result<Walked, WalkError> {
    let segs = list_segments(dir).map_err(WalkError::Err)?;
    let mut w = Walked {
        first_seq: segs.first().map_or(0, |s| s.first_seq),
        ..Walked::default()
    };
    let mut buf = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        let newest = i + 1 == segs.len();
        let (header, mut reader) = match read_header(seg)? {
            HeaderRead::Ok(h, r) => (h, r),
            HeaderRead::Torn if newest && (i > 0 || seg.first_seq == 0) => {
                w.torn_segment = Some(seg.path.clone());
                break;
            }
            HeaderRead::Torn => {
                return Err(WalkError::Err(
                    Damage {
                        path: seg.path.clone(),
                        line: 1,
                        seq: None,
                        kind: DamageKind::BadHeader("header line is incomplete".into()),
                    }
                    .into(),
                ))
            }
        };
        w.segments += 1;
        let mut chain = Chain {
            next: header.first_seq,
            prev: header.prev,
        };
        if let Some(before) = w.chain {
            let kind = if before.next != header.first_seq {
                Some(DamageKind::SegmentGap {
                    expected: before.next,
                    starts_at: header.first_seq,
                })
            } else if before.prev != header.prev {
                Some(DamageKind::HeaderLink)
            } else {
                None
            };
            if let Some(kind) = kind {
                return Err(WalkError::Err(
                    Damage {
                        path: seg.path.clone(),
                        line: 1,
                        seq: None,
                        kind,
                    }
                    .into(),
                ));
            }
        }
        w.chain = Some(chain);
        loop {
            let kind = reader.next_line(&mut buf)?;
            let damage = |kind: DamageKind| {
                WalkError::Err(
                    Damage {
                        path: seg.path.clone(),
                        line: reader.line_no(),
                        seq: Some(chain.next),
                        kind,
                    }
                    .into(),
                )
            };
            match kind {
                Line::Complete => {
                    let (hash, rec) = check_record(&buf, &chain, &seg.path, reader.line_no())?;
                    visit(&rec, &seg.path, reader.line_no())?;
                    chain = Chain {
                        next: chain.next + 1,
                        prev: hash,
                    };
                    w.records += 1;
                }
                Line::Eof => break,
                Line::TooLong => return Err(damage(DamageKind::LineTooLong)),
                Line::Partial if newest => {
                    w.torn_tail = Some(TornTail {
                        path: seg.path.clone(),
                        offset: reader.line_start(),
                        bytes: reader.limit() - reader.line_start(),
                        seq: chain.next,
                    });
                    break;
                }
                Line::Partial => return Err(damage(DamageKind::Truncated)),
            }
        }
        w.bytes += w.torn_tail.as_ref().map_or(reader.limit(), |t| t.offset);
        w.chain = Some(chain);
    }
    Ok(w)
}

/// Runs `attempt` (a walk with fresh state) again when a segment vanished
/// under it because the writer pruned meanwhile.
pub(crate) fn with_retries<T>(
    mut attempt: impl FnMut() -> Result<T, WalkError>,
) -> Result<T, LedgerError> {
    let mut tries = 0;
    loop {
        match attempt() {
            Ok(t) => return Ok(t),
            Err(WalkError::Err(e)) => return Err(e),
            Err(WalkError::Vanished) if tries < 8 => tries += 1,
            Err(WalkError::Vanished) => {
                return Err(LedgerError::io(
                    "read",
                    PathBuf::new(),
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        "ledger segments kept disappearing while being read",
                    ),
                ))
            }
        }
    }
}

/// The last complete (LF-terminated) line of a file, without its LF; `None`
/// when the file has no LF or that line is longer than [`MAX_LINE_BYTES`].
/// Reads backwards from the end, so it costs about one line's bytes.
pub(crate) fn last_complete_line(path: &Path) -> Result<Option<Vec<u8>>, LedgerError> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path).map_err(|e| LedgerError::io("open", path, e))?;
    let len = f
        .metadata()
        .map_err(|e| LedgerError::io("stat", path, e))?
        .len();
    let Some(end) = rfind_lf(&mut f, path, len)? else {
        return Ok(None);
    };
    let start = rfind_lf(&mut f, path, end)?.map_or(Some(0), |p| Some(p + 1));
    let Some(start) = start.filter(|s| end - s <= MAX_LINE_BYTES as u64) else {
        return Ok(None);
    };
    let mut line = vec![0u8; (end - start) as usize];
    f.seek(SeekFrom::Start(start))
        .map_err(|e| LedgerError::io("seek", path, e))?;
    f.read_exact(&mut line)
        .map_err(|e| LedgerError::io("read", path, e))?;
    Ok(Some(line))
}

/// The offset of the last LF before `before`, looking back at most
/// `MAX_LINE_BYTES + 1` bytes (`None` if there is none in that window; a
/// window reaching the file's start means "no LF": the caller treats the
/// line as starting at 0).
fn rfind_lf(f: &mut File, path: &Path, before: u64) -> Result<Option<u64>, LedgerError> {
    use std::io::{Seek, SeekFrom};
    const CHUNK: u64 = 64 * 1024;
    let floor = before.saturating_sub(MAX_LINE_BYTES as u64 + 1);
    let mut pos = before;
    let mut chunk = vec![0u8; CHUNK as usize];
    while pos > floor {
        let step = CHUNK.min(pos - floor);
        pos -= step;
        let buf = &mut chunk[..step as usize];
        f.seek(SeekFrom::Start(pos))
            .map_err(|e| LedgerError::io("seek", path, e))?;
        f.read_exact(buf)
            .map_err(|e| LedgerError::io("read", path, e))?;
        if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(pos + i as u64));
        }
    }
    Ok(None)
}
