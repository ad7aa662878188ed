//! Streaming validation of segment contents, shared by recovery and readers.
//!
//! Memory use is bounded: one read buffer of [`CHUNK`] bytes, one scan window
//! of [`SCAN_CHUNK`] bytes, and at most one record payload when the caller
//! asks for it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::WalError;
use crate::format::{decode_record_header, RECORD_HEADER_LEN, RECORD_MAGIC};
use crate::Lsn;

/// Read buffer size.
const CHUNK: usize = 256 * 1024;
/// Window used when scanning forward for a record magic.
const SCAN_CHUNK: usize = 64 * 1024;
/// Buffer used to checksum payloads that are not returned.
const CRC_CHUNK: usize = 64 * 1024;

/// Bounds a record's lsn must respect to be accepted at a position.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LsnBounds {
    /// Smallest acceptable lsn (inclusive).
    pub lo: Lsn,
    /// First lsn of the next segment (exclusive), if any.
    pub hi: Option<Lsn>,
}

impl LsnBounds {
    fn accepts(&self, lsn: Lsn) -> bool {
        // u64::MAX is never assigned (see `Wal::append`), so it is always invalid.
        lsn != u64::MAX && lsn >= self.lo && self.hi.is_none_or(|hi| lsn < hi)
    }
}

/// What one step of scanning found at a position.
#[derive(Debug)]
pub(crate) enum Step {
    /// The position is the end of the readable range.
    End,
    /// A valid record; `next` is the offset right after it.
    Record { lsn: Lsn, next: u64, payload: Option<Vec<u8>> },
    /// The bytes `[start, resume)` hold no valid record. `found` tells whether
    /// a valid record starts at `resume` (otherwise `resume` is the end).
    Corrupt { start: u64, resume: u64, found: bool },
}

enum Probe {
    Valid { lsn: Lsn, total: u64, payload: Option<Vec<u8>> },
    /// Invalid; `hint` is where the record would end if its length field is right.
    Invalid { hint: Option<u64> },
}

/// A buffered, positioned reader over `[0, end)` of one segment file.
#[derive(Debug)]
pub(crate) struct SegReader {
    file: File,
    path: PathBuf,
    end: u64,
    buf: Vec<u8>,
    buf_off: u64,
    buf_len: usize,
    crc_buf: Vec<u8>,
    scan_buf: Vec<u8>,
}

impl SegReader {
    /// Wraps `file`, reading at most up to `end`.
    pub fn new(file: File, path: PathBuf, end: u64) -> Self {
        SegReader {
            file,
            path,
            end,
            buf: Vec::new(),
            buf_off: 0,
            buf_len: 0,
            crc_buf: Vec::new(),
            scan_buf: Vec::new(),
        }
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills `out` with the bytes at `pos`. The caller guarantees `pos + out.len() <= end`.
    pub fn read_at(&mut self, pos: u64, out: &mut [u8]) -> Result<(), WalError> {
        let mut done = 0usize;
        while done < out.len() {
            let p = pos + done as u64;
            let buf_end = self.buf_off + self.buf_len as u64;
            if p >= self.buf_off && p < buf_end {
                let from = (p - self.buf_off) as usize; // < buf_len, fits usize
                let n = (self.buf_len - from).min(out.len() - done);
                out[done..done + n].copy_from_slice(&self.buf[from..from + n]);
                done += n;
                continue;
            }
            self.file
                .seek(SeekFrom::Start(p))
                .map_err(|e| WalError::io_at("seek", &self.path, p, e))?;
            let rest = out.len() - done;
            if rest >= CHUNK {
                // Large reads bypass the buffer.
                self.file
                    .read_exact(&mut out[done..])
                    .map_err(|e| WalError::io_at("read", &self.path, p, e))?;
                return Ok(());
            }
            let want = (CHUNK as u64).min(self.end.saturating_sub(p)).max(rest as u64) as usize;
            if self.buf.len() < CHUNK {
                self.buf.resize(CHUNK, 0);
            }
            self.buf_len = 0;
            self.file
                .read_exact(&mut self.buf[..want])
                .map_err(|e| WalError::io_at("read", &self.path, p, e))?;
            self.buf_off = p;
            self.buf_len = want;
        }
        Ok(())
    }

    /// Checks whether a valid record starts at `pos`. The payload is returned
    /// only when `want_from` is set and the record's lsn is at least that.
    fn probe(&mut self, pos: u64, bounds: LsnBounds, want_from: Option<Lsn>) -> Result<Probe, WalError> {
        if self.end.saturating_sub(pos) < RECORD_HEADER_LEN {
            return Ok(Probe::Invalid { hint: None });
        }
        let mut h = [0u8; RECORD_HEADER_LEN as usize];
        self.read_at(pos, &mut h)?;
        let Some(rh) = decode_record_header(&h) else {
            return Ok(Probe::Invalid { hint: None });
        };
        let total = RECORD_HEADER_LEN + u64::from(rh.len);
        if total > self.end - pos {
            return Ok(Probe::Invalid { hint: None });
        }
        let hint = Some(pos + total);
        if !bounds.accepts(rh.lsn) {
            return Ok(Probe::Invalid { hint });
        }
        let body = pos + RECORD_HEADER_LEN;
        let want = want_from.is_some_and(|f| rh.lsn >= f);
        let (crc, payload) = if want {
            // Bounded by the file: `total <= end - pos` was checked above.
            let mut p = vec![0u8; rh.len as usize];
            self.read_at(body, &mut p)?;
            (crc32c::crc32c_append(rh.partial_crc, &p), Some(p))
        } else {
            let mut scratch = std::mem::take(&mut self.crc_buf);
            scratch.resize(CRC_CHUNK, 0);
            let mut crc = rh.partial_crc;
            let mut off = 0u64;
            let len = u64::from(rh.len);
            let mut res = Ok(());
            while off < len {
                let n = (len - off).min(CRC_CHUNK as u64) as usize;
                if let Err(e) = self.read_at(body + off, &mut scratch[..n]) {
                    res = Err(e);
                    break;
                }
                crc = crc32c::crc32c_append(crc, &scratch[..n]);
                off += n as u64;
            }
            self.crc_buf = scratch;
            res?;
            (crc, None)
        };
        if crc != rh.crc {
            return Ok(Probe::Invalid { hint });
        }
        Ok(Probe::Valid { lsn: rh.lsn, total, payload })
    }

    /// Validates the record at `pos`; on damage, finds where valid records resume.
    pub fn step(&mut self, pos: u64, bounds: LsnBounds, want_from: Option<Lsn>) -> Result<Step, WalError> {
        if pos >= self.end {
            return Ok(Step::End);
        }
        match self.probe(pos, bounds, want_from)? {
            Probe::Valid { lsn, total, payload } => Ok(Step::Record { lsn, next: pos + total, payload }),
            Probe::Invalid { hint } => {
                // Trust the length field first: cheap, and immune to magic
                // look-alikes inside the damaged payload.
                if let Some(h) = hint {
                    if h < self.end && matches!(self.probe(h, bounds, None)?, Probe::Valid { .. }) {
                        return Ok(Step::Corrupt { start: pos, resume: h, found: true });
                    }
                }
                match self.scan_for_record(pos + 1, bounds)? {
                    Some(c) => Ok(Step::Corrupt { start: pos, resume: c, found: true }),
                    None => Ok(Step::Corrupt { start: pos, resume: self.end, found: false }),
                }
            }
        }
    }

    /// Finds the first offset `>= from` where a valid record starts.
    fn scan_for_record(&mut self, from: u64, bounds: LsnBounds) -> Result<Option<u64>, WalError> {
        let mut window = std::mem::take(&mut self.scan_buf);
        window.resize(SCAN_CHUNK, 0);
        let res = self.scan_with(&mut window, from, bounds);
        self.scan_buf = window;
        res
    }

    fn scan_with(&mut self, window: &mut [u8], from: u64, bounds: LsnBounds) -> Result<Option<u64>, WalError> {
        let magic = RECORD_MAGIC.to_le_bytes();
        let mut q = from;
        while q.saturating_add(RECORD_HEADER_LEN) <= self.end {
            let n = (self.end - q).min(SCAN_CHUNK as u64) as usize; // >= RECORD_HEADER_LEN
            self.read_at(q, &mut window[..n])?;
            for i in 0..=n - magic.len() {
                if window[i..i + magic.len()] == magic {
                    let c = q + i as u64;
                    if matches!(self.probe(c, bounds, None)?, Probe::Valid { .. }) {
                        return Ok(Some(c));
                    }
                }
            }
            if q + n as u64 >= self.end {
                break;
            }
            // Overlap so a magic straddling the window edge is still seen.
            q += (n - (magic.len() - 1)) as u64;
        }
        Ok(None)
    }
}
