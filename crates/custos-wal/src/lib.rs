//! A segmented, checksummed, crash-safe append-only log (write-ahead log).
//!
//! The server's ingest path appends each received batch, calls [`Wal::sync`]
//! and only then acknowledges the client; a background builder reads records
//! with [`Wal::read_from`], writes them to long-term storage and calls
//! [`Wal::ack`], which lets the log delete segment files holding only
//! consumed records. Group commit is the caller's choice: append several
//! records, then sync once.
//!
//! * Records get log sequence numbers ([`Lsn`]) 0, 1, 2, … that survive
//!   reopening; an lsn that was synced is never reused.
//! * Every record is checksummed (CRC-32C); [`Wal::open`] runs recovery:
//!   torn tails are truncated, damaged records in the middle are skipped and
//!   counted in the [`RecoveryReport`]. No file content makes it panic.
//! * Pure synchronous std I/O; one writer per directory (enforced with a lock
//!   file); readers are independent iterators over durable records.
//!
//! The on-disk format, its invariants and the recovery rules are specified in
//! [`format`](mod@format).
//!
//! ```
//! # fn main() -> Result<(), custos_wal::WalError> {
//! # let tmp = tempfile::tempdir().unwrap();
//! use custos_wal::{Wal, WalOptions};
//! let (mut wal, _report) = Wal::open(WalOptions::new(tmp.path()))?;
//! let lsn = wal.append(b"batch")?;
//! wal.sync()?; // durable: safe to acknowledge the client now
//! for rec in wal.read_from(0)? {
//!     let (l, payload) = rec?;
//!     assert_eq!((l, payload.as_slice()), (lsn, &b"batch"[..]));
//! }
//! wal.ack(lsn + 1)?; // consumed: will not be returned again
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
pub mod format;
mod reader;
mod scan;
mod wal;

pub use error::WalError;
pub use reader::WalReader;
pub use wal::{RecoveryReport, SegmentInfo, Wal, WalOptions, DEFAULT_MAX_RECORD_BYTES, DEFAULT_SEGMENT_BYTES};

/// Log sequence number of a record: 0, 1, 2, … in append order, monotonic
/// across reopen, never reused once durable.
pub type Lsn = u64;
