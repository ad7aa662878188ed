//! Errors of the ledger.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong writing, reading or verifying the ledger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// An I/O operation on a ledger file or directory failed.
    #[error("ledger i/o error: {op} {path}: {source}")]
    Io {
        /// What was being done ("open", "fsync", ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// [`LedgerOptions`](super::LedgerOptions) are unusable.
    #[error("invalid ledger options: {0}")]
    InvalidOptions(String),
    /// Another writer (another agent, or another `Ledger` in this process)
    /// holds the ledger's lock.
    #[error(
        "ledger {path} is locked by another writer (is another agent running on this state dir?)"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// There is no ledger directory to read.
    #[error("no ledger at {path} (nothing has been sent from this state dir)")]
    NotFound {
        /// The ledger directory looked for.
        path: PathBuf,
    },
    /// The payload given to [`append_batch`](super::Ledger::append_batch)
    /// cannot be recorded verbatim (nothing was written).
    #[error("invalid batch payload for the ledger: {0}")]
    InvalidPayload(String),
    /// A payload or ack id is larger than the ledger accepts (nothing was written).
    #[error("ledger record field {what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The ledger's files contradict themselves: a record or header was
    /// changed, removed or damaged. Names the first bad spot.
    #[error("ledger is damaged: {0}")]
    Damaged(Damage),
    /// A file of an unknown (newer) format version.
    #[error("{path} line {line} has unsupported ledger format version {version} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The segment file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// Version found.
        version: u64,
        /// Version this build reads.
        supported: u64,
    },
    /// An earlier write or fsync failed, so what reached the disk is
    /// unknown; every later append is refused until the ledger is reopened
    /// (which cuts what a failed append left).
    #[error(
        "ledger {path} is unusable after an earlier i/o failure ({cause}); reopen it to recover"
    )]
    Poisoned {
        /// The ledger directory.
        path: PathBuf,
        /// The original failure.
        cause: String,
    },
}

impl LedgerError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        LedgerError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// The damage found, if this is [`LedgerError::Damaged`].
    pub fn damage(&self) -> Option<&Damage> {
        match self {
            LedgerError::Damaged(d) => Some(d),
            _ => None,
        }
    }
}

impl From<Damage> for LedgerError {
    fn from(d: Damage) -> Self {
        LedgerError::Damaged(d)
    }
}

/// Where the ledger is damaged and how: the first bad spot found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} line {line}{}: {kind}", path.display(), seq.map(|s| format!(" (seq {s})")).unwrap_or_default())]
pub struct Damage {
    /// The segment file.
    pub path: PathBuf,
    /// 1-based line number in that file (the header is line 1).
    pub line: u64,
    /// The seq of the record this position must hold (its place in the
    /// chain, whatever the line itself says); `None` for a header.
    pub seq: Option<u64>,
    /// What is wrong.
    pub kind: DamageKind,
}

/// What is wrong at a damaged spot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DamageKind {
    /// The hash stored on the line is not the hash of the record's bytes:
    /// the record was changed.
    #[error("hash mismatch: the record's bytes do not match its stored hash")]
    HashMismatch,
    /// The record's `prev` is not the hash of the record before it: a
    /// record before it was removed, inserted or rewritten.
    #[error("broken link: prev does not match the hash of the previous record{}",
        found_seq.map(|f| format!(" (the record here says seq {f}: records are missing or out of order)")).unwrap_or_default())]
    BrokenLink {
        /// The seq the record claims, when it is not the expected one.
        found_seq: Option<u64>,
    },
    /// The record links correctly but carries another seq than its position.
    #[error("seq mismatch: the record says seq {found}")]
    SeqMismatch {
        /// The seq the record claims.
        found: u64,
    },
    /// The line is not `JSON TAB hash` (no tab, bad hash hex, too short).
    #[error("malformed line: {0}")]
    BadLine(String),
    /// The record's JSON does not parse or breaks the format's rules.
    #[error("bad json: {0}")]
    BadJson(String),
    /// An unterminated last line in a segment that is not the newest (only
    /// the newest may have a torn tail): the file was truncated.
    #[error("truncated: the line is not newline-terminated in a sealed segment")]
    Truncated,
    /// A line longer than [`MAX_LINE_BYTES`](super::MAX_LINE_BYTES).
    #[error("line longer than the limit")]
    LineTooLong,
    /// A segment header is damaged or does not match its file name.
    #[error("bad segment header: {0}")]
    BadHeader(String),
    /// A segment header's `prev` is not the hash of the last record of the
    /// segment before it.
    #[error("segment header prev does not match the hash of the previous segment's last record")]
    HeaderLink,
    /// A segment does not start where the segment before it ended.
    #[error("segment starts at seq {starts_at} but the previous segment ends before seq {expected}: records are missing or duplicated")]
    SegmentGap {
        /// The seq the segment should start at.
        expected: u64,
        /// Where it starts.
        starts_at: u64,
    },
}
