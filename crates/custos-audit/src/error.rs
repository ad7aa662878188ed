//! The error type of the crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while writing, reading, verifying or proving
/// from an audit log.
///
/// Messages are lowercase and name the file and, for damage, the sequence
/// number of the first bad record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// An I/O operation on a file or directory failed.
    #[error("audit i/o error: {op} {path}: {source}")]
    Io {
        /// What was being done ("open", "fsync", "rename", ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The options passed to [`AuditLog::open`](crate::AuditLog::open) are unusable.
    #[error("invalid audit log options: {0}")]
    InvalidOptions(String),
    /// Another process (or another `AuditLog` in this process) has the log open.
    #[error("audit log {path} is locked by another writer")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A record is larger than [`MAX_RECORD_BYTES`](crate::format::MAX_RECORD_BYTES) once encoded.
    #[error("audit record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// Encoded size of the refused record.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A record could not be encoded as JSON.
    #[error("cannot encode audit record: {0}")]
    Encode(String),
    /// The log's files contradict themselves: a record, segment header or
    /// checkpoint was changed, removed or damaged. Names the first bad spot.
    /// (Not a `#[source]`: the message already includes the damage, and a
    /// source would print it twice in error chains.)
    #[error("audit log is damaged: {0}")]
    Damaged(Damage),
    /// A file was written by an unknown (newer) format version.
    #[error("{path} has unsupported audit format version {version} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Version found.
        version: u64,
        /// Version this build understands.
        supported: u64,
    },
    /// An earlier write or fsync failed, so what reached the disk is unknown.
    /// Every later append is refused until the log is reopened (which runs recovery).
    #[error(
        "audit log {path} is unusable after an earlier i/o failure ({cause}); reopen it to recover"
    )]
    Poisoned {
        /// The log directory.
        path: PathBuf,
        /// The message of the original failure.
        cause: String,
    },
    /// The log was closed (or its writer thread stopped); nothing more can be appended.
    #[error("audit log is closed")]
    Closed,
    /// The latest checkpoint on disk does not verify under the key the log was opened with.
    #[error("latest checkpoint in {path} (size {size}) is not signed by this signing key; refusing to continue the log under a different key")]
    ForeignCheckpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// Size claimed by the checkpoint.
        size: u64,
    },
    /// A key file is missing, malformed or has unsafe permissions.
    #[error("audit key file {path}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A proof or read asked for something the log does not have.
    #[error("{0}")]
    OutOfRange(String),
    /// A proof needs records that were deleted by retention pruning.
    #[error("proof needs records before seq {first_kept}, which were pruned")]
    Pruned {
        /// The first record still present.
        first_kept: u64,
    },
    /// A proof was requested against the latest checkpoint, but there is none.
    #[error("audit log {path} has no checkpoint yet")]
    NoCheckpoint {
        /// The log directory.
        path: PathBuf,
    },
}

impl AuditError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        AuditError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// The damage found, if this is [`AuditError::Damaged`].
    pub fn damage(&self) -> Option<&Damage> {
        match self {
            AuditError::Damaged(d) => Some(d),
            _ => None,
        }
    }
}

/// What is wrong with a damaged (or tampered-with) log.
///
/// Record positions are named by the sequence number the record *should*
/// have (its position in the log), which is what an operator needs even when
/// the damage hit the record's own `seq` field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Damage {
    /// A record line cannot be parsed (no tab, bad hash hex, bad JSON, ...).
    #[error("unparsable line at seq {seq} in {path}: {reason}")]
    Unparsable {
        /// Sequence number of the damaged record.
        seq: u64,
        /// The segment file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The hash stored on a record's line is not the hash of its bytes.
    #[error("bad hash at seq {seq} in {path}: the record's bytes do not match its stored hash")]
    BadHash {
        /// Sequence number of the damaged record.
        seq: u64,
        /// The segment file.
        path: PathBuf,
    },
    /// A record's `prev` is not the hash of the record before it.
    #[error("broken prev link at seq {seq} in {path}: prev does not match the hash of the previous record")]
    BrokenLink {
        /// Sequence number of the record whose link is broken.
        seq: u64,
        /// The segment file.
        path: PathBuf,
    },
    /// A record carries another sequence number than its position.
    #[error("gap in seq at {seq} in {path}: found a record with seq {found}")]
    SeqGap {
        /// The sequence number expected at this position.
        seq: u64,
        /// The sequence number found.
        found: u64,
        /// The segment file.
        path: PathBuf,
    },
    /// A record line is not newline-terminated although it must be complete
    /// (it is in a sealed segment or a checkpoint covers it).
    #[error("incomplete record at seq {seq} in {path}: the line is not newline-terminated")]
    Incomplete {
        /// Sequence number of the incomplete record.
        seq: u64,
        /// The segment file.
        path: PathBuf,
    },
    /// Segment files do not follow each other (a file is missing or misnamed).
    #[error("records missing from seq {seq}: {path} starts at seq {starts_at}")]
    MissingRecords {
        /// The first missing sequence number.
        seq: u64,
        /// The segment file that follows the gap.
        path: PathBuf,
        /// Where that file starts.
        starts_at: u64,
    },
    /// A segment header is damaged or disagrees with the records before it.
    #[error("bad segment header in {path}: {reason}")]
    SegmentHeader {
        /// The segment file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint line cannot be parsed.
    #[error("unparsable checkpoint at line {line} of {path}: {reason}")]
    CheckpointUnparsable {
        /// 1-based line number in the checkpoint file.
        line: u64,
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint's signature does not verify under the given public key.
    #[error("checkpoint signature invalid at line {line} of {path} (size {size})")]
    CheckpointSignature {
        /// 1-based line number in the checkpoint file.
        line: u64,
        /// The checkpoint file.
        path: PathBuf,
        /// Size claimed by the checkpoint.
        size: u64,
    },
    /// Checkpoint sizes do not strictly increase.
    #[error("checkpoint at line {line} of {path} has size {size}, not larger than the previous checkpoint's {previous}")]
    CheckpointOrder {
        /// 1-based line number in the checkpoint file.
        line: u64,
        /// The checkpoint file.
        path: PathBuf,
        /// Size claimed by the checkpoint.
        size: u64,
        /// Size of the checkpoint before it.
        previous: u64,
    },
    /// A signed checkpoint's Merkle root does not match the records: one of
    /// the records in `[from, size)` (or the segment header anchoring them)
    /// was rewritten with a recomputed hash chain.
    #[error("checkpoint root does not match records in range [{from}, {size}) (checkpoint of size {size} in {path})")]
    CheckpointRoot {
        /// The checkpoint file.
        path: PathBuf,
        /// Size of the checkpoint.
        size: u64,
        /// First record of the suspect range (the size of the previous verified checkpoint).
        from: u64,
    },
    /// A signed checkpoint's chain head is not the hash of record `size - 1`.
    #[error("checkpoint chain head does not match the hash of record {seq} (checkpoint of size {size} in {path})")]
    CheckpointChainHead {
        /// The checkpoint file.
        path: PathBuf,
        /// Size of the checkpoint.
        size: u64,
        /// The record the chain head should be the hash of (`size - 1`).
        seq: u64,
    },
    /// A signed checkpoint covers more records than the log holds: the log
    /// was truncated.
    #[error("log truncated: checkpoint of size {claimed} in {path} claims {claimed} records, only {present} present (first missing seq {present})")]
    Truncated {
        /// The checkpoint file.
        path: PathBuf,
        /// Records the checkpoint covers.
        claimed: u64,
        /// Records present.
        present: u64,
    },
}

impl Damage {
    /// The sequence number of the first bad record, when the damage is
    /// attributable to one record.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Damage::Unparsable { seq, .. }
            | Damage::BadHash { seq, .. }
            | Damage::BrokenLink { seq, .. }
            | Damage::SeqGap { seq, .. }
            | Damage::Incomplete { seq, .. }
            | Damage::MissingRecords { seq, .. }
            | Damage::CheckpointChainHead { seq, .. } => Some(*seq),
            Damage::Truncated { present, .. } => Some(*present),
            Damage::SegmentHeader { .. }
            | Damage::CheckpointUnparsable { .. }
            | Damage::CheckpointSignature { .. }
            | Damage::CheckpointOrder { .. }
            | Damage::CheckpointRoot { .. } => None,
        }
    }
}

impl From<Damage> for AuditError {
    fn from(d: Damage) -> Self {
        AuditError::Damaged(d)
    }
}
