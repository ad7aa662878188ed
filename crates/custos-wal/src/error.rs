//! The error type of the crate.

use std::io;
use std::path::PathBuf;

use crate::Lsn;

/// Everything that can go wrong while opening, writing or reading a [`Wal`](crate::Wal).
///
/// Messages are lowercase and name the file (and the offset, where one is
/// meaningful) so that an operator can find the damaged spot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// An I/O operation on a file or directory failed.
    #[error("wal i/o error: {op} {path}: {source}")]
    Io {
        /// What was being done ("open", "fsync", "rename", ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An I/O operation at a known offset of a file failed.
    #[error("wal i/o error: {op} {path} at offset {offset}: {source}")]
    IoAt {
        /// What was being done ("read", "write", "truncate", ...).
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        /// Byte offset in the file.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The options passed to [`Wal::open`](crate::Wal::open) are unusable.
    #[error("invalid wal options: {0}")]
    InvalidOptions(String),
    /// Another process (or another `Wal` in this process) holds the directory lock.
    #[error("wal directory {path} is locked by another writer")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// An append was refused because the payload is larger than `max_record_bytes`.
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// Size of the refused payload.
        len: u64,
        /// The configured limit.
        max: u32,
    },
    /// A segment file has a valid header written by an unknown format version.
    #[error("segment {path} has unsupported format version {version} (this build reads version {supported})")]
    UnsupportedSegmentVersion {
        /// The segment file.
        path: PathBuf,
        /// Version found in the header.
        version: u16,
        /// Version this build understands.
        supported: u16,
    },
    /// The ack file has a valid checksum but an unknown format version.
    #[error("ack file {path} has unsupported format version {version} (this build reads version {supported})")]
    UnsupportedAckVersion {
        /// The ack file.
        path: PathBuf,
        /// Version found in the file.
        version: u16,
        /// Version this build understands.
        supported: u16,
    },
    /// A segment's (checksummed, hence trustworthy) header disagrees with its file name.
    #[error("segment {path} header says first lsn {header_lsn} but its file name says {name_lsn}")]
    SegmentNameMismatch {
        /// The segment file.
        path: PathBuf,
        /// First lsn according to the header.
        header_lsn: Lsn,
        /// First lsn according to the file name.
        name_lsn: Lsn,
    },
    /// [`Wal::ack`](crate::Wal::ack) was asked to consume records that were never appended.
    #[error("cannot ack up to lsn {upto}: the next lsn to be appended is {next_lsn}")]
    AckBeyondEnd {
        /// The requested ack position.
        upto: Lsn,
        /// The lsn the next append would get.
        next_lsn: Lsn,
    },
    /// A reader met a damaged record that recovery had not seen (the file was
    /// damaged after the wal was opened). The reader skips it and goes on.
    #[error("corrupt record in {path} at offset {offset}, skipped {len} bytes")]
    CorruptRecord {
        /// The segment file.
        path: PathBuf,
        /// Offset of the first damaged byte.
        offset: u64,
        /// Length of the skipped region.
        len: u64,
    },
    /// The lsn counter reached `u64::MAX`.
    #[error("lsn space exhausted in {path}")]
    LsnExhausted {
        /// The wal directory.
        path: PathBuf,
    },
    /// An earlier write or fsync failed, so what reached the disk is unknown.
    /// Appends and syncs are refused until the wal is reopened (which runs recovery).
    #[error("wal {path} is unusable after an earlier i/o failure ({cause}); reopen it to recover")]
    Poisoned {
        /// The wal directory.
        path: PathBuf,
        /// The message of the original failure.
        cause: String,
    },
}

impl WalError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        WalError::Io { op, path: path.into(), source }
    }

    pub(crate) fn io_at(
        op: &'static str,
        path: impl Into<PathBuf>,
        offset: u64,
        source: io::Error,
    ) -> Self {
        WalError::IoAt { op, path: path.into(), offset, source }
    }
}
