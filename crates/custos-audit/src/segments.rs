//! File-level helpers shared by the writer, the reader, verification and
//! proofs: listing segments, reading lines, checking records against the
//! chain, reading checkpoints.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::Damage;
use crate::format::{
    decode_record_json, parse_segment_file_name, split_line, Decode, DecodedRecord, SegmentHeader,
    CHECKPOINT_FILE_NAME, FORMAT_VERSION, MAX_LINE_BYTES,
};
use crate::merkle::{leaf_hash, Hash};
use crate::{AuditError, Checkpoint};

/// A segment file found in the directory.
#[derive(Clone, Debug)]
pub(crate) struct SegmentFile {
    pub first_seq: u64,
    pub path: PathBuf,
}

/// The segment files of `dir`, oldest first.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<SegmentFile>, AuditError> {
    let entries = fs::read_dir(dir).map_err(|e| AuditError::io("list directory", dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| AuditError::io("list directory", dir, e))?;
        let name = entry.file_name();
        if let Some(first_seq) = name.to_str().and_then(parse_segment_file_name) {
            out.push(SegmentFile {
                first_seq,
                path: entry.path(),
            });
        }
    }
    out.sort_by_key(|s| s.first_seq);
    Ok(out)
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditError::io("fsync directory", dir, e))
}

/// What [`LineReader::next_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// A newline-terminated line (the buffer holds it without the LF).
    Complete,
    /// Bytes up to the end of the file without a LF (the buffer holds them).
    Partial,
    /// A line longer than [`MAX_LINE_BYTES`].
    TooLong,
    /// End of file.
    Eof,
}

/// Reads a file line by line with a bounded line length.
pub(crate) struct LineReader {
    inner: BufReader<File>,
    path: PathBuf,
    /// Offset of the start of the next line.
    pos: u64,
    /// Offset of the start of the line last returned.
    line_start: u64,
    /// Bytes beyond this offset are not read (a snapshot of a growing file).
    limit: u64,
}

impl LineReader {
    pub(crate) fn open(path: &Path) -> Result<LineReader, AuditError> {
        let f = File::open(path).map_err(|e| AuditError::io("open", path, e))?;
        Ok(LineReader {
            inner: BufReader::with_capacity(256 * 1024, f),
            path: path.to_path_buf(),
            pos: 0,
            line_start: 0,
            limit: u64::MAX,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Offset of the start of the line last returned.
    pub(crate) fn line_start(&self) -> u64 {
        self.line_start
    }

    /// Reads no further than `limit` bytes into the file.
    pub(crate) fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    pub(crate) fn next_line(&mut self, buf: &mut Vec<u8>) -> Result<Line, AuditError> {
        buf.clear();
        self.line_start = self.pos;
        let n = (&mut self.inner)
            .take((MAX_LINE_BYTES as u64 + 1).min(self.limit.saturating_sub(self.pos)))
            .read_until(b'\n', buf)
            .map_err(|e| AuditError::io("read", &self.path, e))?;
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

/// Result of reading a segment's header.
pub(crate) enum HeaderRead {
    /// The header, and a reader positioned at the first record.
    Ok(SegmentHeader, LineReader),
    /// The file ends before the header's LF (a crash while creating it).
    Torn,
}

/// Reads and checks the header of `seg` (including that it matches the file name).
pub(crate) fn read_header(seg: &SegmentFile) -> Result<HeaderRead, AuditError> {
    let mut r = LineReader::open(&seg.path)?;
    let mut buf = Vec::new();
    let bad = |reason: String| {
        AuditError::Damaged(Damage::SegmentHeader {
            path: seg.path.clone(),
            reason,
        })
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
            Err(Ok(version)) => Err(AuditError::UnsupportedVersion {
                path: seg.path.clone(),
                version,
                supported: FORMAT_VERSION,
            }),
            Err(Err(reason)) => Err(bad(reason)),
        },
    }
}

/// Reads the header of `seg`, treating a torn header as damage.
pub(crate) fn read_header_strict(
    seg: &SegmentFile,
) -> Result<(SegmentHeader, LineReader), AuditError> {
    match read_header(seg)? {
        HeaderRead::Ok(h, r) => Ok((h, r)),
        HeaderRead::Torn => Err(AuditError::Damaged(Damage::SegmentHeader {
            path: seg.path.clone(),
            reason: "header line is incomplete".into(),
        })),
    }
}

/// Position in the hash chain: the seq the next record must have and the
/// hash it must link to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Chain {
    pub next: u64,
    pub prev: Hash,
}

/// Checks one complete record line against the chain: hash, then JSON, then
/// seq, then link. Damage names `chain.next`, the seq this position must hold.
pub(crate) fn check_record(
    line: &[u8],
    chain: &Chain,
    path: &Path,
) -> Result<(Hash, Box<DecodedRecord>), AuditError> {
    let seq = chain.next;
    if seq == u64::MAX {
        // Callers advance the chain with `next + 1`.
        return Err(Damage::Unparsable {
            seq,
            path: path.to_path_buf(),
            reason: "seq space exhausted".into(),
        }
        .into());
    }
    let split = split_line(line).map_err(|reason| Damage::Unparsable {
        seq,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    })?;
    if leaf_hash(split.json) != split.hash {
        return Err(Damage::BadHash {
            seq,
            path: path.to_path_buf(),
        }
        .into());
    }
    let rec = match decode_record_json(split.json) {
        Decode::Ok(r) => r,
        Decode::Version(version) => {
            return Err(AuditError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
                supported: FORMAT_VERSION,
            })
        }
        Decode::Bad(reason) => {
            return Err(Damage::Unparsable {
                seq,
                path: path.to_path_buf(),
                reason,
            }
            .into())
        }
    };
    if rec.seq != seq {
        return Err(Damage::SeqGap {
            seq,
            found: rec.seq,
            path: path.to_path_buf(),
        }
        .into());
    }
    if rec.prev != chain.prev {
        return Err(Damage::BrokenLink {
            seq,
            path: path.to_path_buf(),
        }
        .into());
    }
    Ok((split.hash, rec))
}

pub(crate) fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT_FILE_NAME)
}

/// Streams the complete lines of `checkpoints.log`. A final line without LF
/// (a checkpoint being written) is not returned.
pub(crate) struct CheckpointLines {
    reader: Option<LineReader>,
    line_no: u64,
    buf: Vec<u8>,
    /// Set when the file ended with an unterminated line.
    pub torn: bool,
}

impl CheckpointLines {
    /// Reads the file as it is now: checkpoints appended later are not
    /// returned, so they cannot refer to records written after the caller
    /// listed the segments.
    pub(crate) fn open(dir: &Path) -> Result<CheckpointLines, AuditError> {
        let path = checkpoint_path(dir);
        let reader = match File::open(&path) {
            Ok(f) => {
                let len = f
                    .metadata()
                    .map_err(|e| AuditError::io("stat", &path, e))?
                    .len();
                let mut r = LineReader::open(&path)?;
                r.set_limit(len);
                Some(r)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(AuditError::io("open", &path, e)),
        };
        Ok(CheckpointLines {
            reader,
            line_no: 0,
            buf: Vec::new(),
            torn: false,
        })
    }

    /// The next checkpoint and its 1-based line number.
    pub(crate) fn next_checkpoint(&mut self) -> Result<Option<(u64, Checkpoint)>, AuditError> {
        let Some(r) = self.reader.as_mut() else {
            return Ok(None);
        };
        let kind = r.next_line(&mut self.buf)?;
        self.line_no += 1;
        let line = self.line_no;
        let path = r.path().to_path_buf();
        match kind {
            Line::Eof => Ok(None),
            Line::Partial => {
                self.torn = true;
                Ok(None)
            }
            Line::TooLong => Err(Damage::CheckpointUnparsable {
                line,
                path,
                reason: "line too long".into(),
            }
            .into()),
            Line::Complete => Checkpoint::parse_line(&self.buf)
                .map(|cp| Some((line, cp)))
                .map_err(|reason| Damage::CheckpointUnparsable { line, path, reason }.into()),
        }
    }
}

/// The last complete checkpoint of `checkpoints.log`, read from the end of
/// the file, and the offset where an unterminated final line starts, if any.
pub(crate) fn read_last_checkpoint(
    dir: &Path,
) -> Result<(Option<Checkpoint>, Option<u64>), AuditError> {
    let path = checkpoint_path(dir);
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((None, None)),
        Err(e) => return Err(AuditError::io("open", &path, e)),
    };
    let len = f
        .metadata()
        .map_err(|e| AuditError::io("stat", &path, e))?
        .len();
    let window = len.min(2 * MAX_LINE_BYTES as u64);
    let start = len - window;
    f.seek(SeekFrom::Start(start))
        .map_err(|e| AuditError::io("seek", &path, e))?;
    let mut tail = Vec::with_capacity(window as usize);
    f.take(window)
        .read_to_end(&mut tail)
        .map_err(|e| AuditError::io("read", &path, e))?;
    // `end`: one past the last LF in the window.
    let end = tail.iter().rposition(|&b| b == b'\n').map(|i| i + 1);
    let torn_at = match end {
        Some(e) if e == tail.len() => None,
        Some(e) => Some(start + e as u64),
        None if start == 0 => Some(0),
        None => {
            return Err(Damage::CheckpointUnparsable {
                line: 0,
                path,
                reason: "last line too long".into(),
            }
            .into())
        }
    };
    let Some(end) = end else {
        return Ok((None, torn_at));
    };
    let body = &tail[..end - 1];
    let line_start = body.iter().rposition(|&b| b == b'\n').map(|i| i + 1);
    let line_start = match line_start {
        Some(s) => s,
        None if start == 0 => 0,
        None => {
            return Err(Damage::CheckpointUnparsable {
                line: 0,
                path,
                reason: "last line too long".into(),
            }
            .into())
        }
    };
    let cp = Checkpoint::parse_line(&body[line_start..]).map_err(|reason| {
        Damage::CheckpointUnparsable {
            line: 0,
            path: path.clone(),
            reason,
        }
    })?;
    Ok((Some(cp), torn_at))
}
