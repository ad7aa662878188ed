//! The tamper-evident audit log of the custos server.
//!
//! Every API request that reads or changes data writes one [`AuditRecord`]
//! before its response leaves; if the record cannot be made durable the
//! request is refused (fail closed). The log provides:
//!
//! * durable, group-committed appends ([`AuditLog::append`]): concurrent
//!   appends share one write and one `fdatasync`; each resolves only once
//!   its record is on disk; after any I/O failure the log refuses appends
//!   until reopened;
//! * a hash chain: each record carries the hash of the one before;
//! * an RFC 6962 Merkle tree over the records, whose root is periodically
//!   signed with Ed25519 into a [`Checkpoint`];
//! * offline [`verify`]cation that names the first bad record;
//! * [`inclusion_proof`]s and [`consistency_proof`]s of `O(log n)` hashes,
//!   checked by the pure [`verify_inclusion`] and [`verify_consistency`];
//! * retention pruning of whole old segments ([`AuditLog::prune`]) that keeps
//!   verification and proofs working for the rest;
//! * an [`AuditReader`] to list records by workspace and time;
//! * key management ([`load_or_create_keys`]) and an [`Hmacer`] to
//!   pseudonymise values before they go into records.
//!
//! The on-disk format is documented in [`format`](mod@format); the Merkle tree code in
//! [`merkle`] is pure and I/O-free.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), custos_audit::AuditError> {
//! # let tmp = tempfile::tempdir().unwrap();
//! use custos_audit::*;
//! let (key, _hmacer) = load_or_create_keys(&tmp.path().join("keys"))?;
//! let public = key.verifying_key();
//! let dir = tmp.path().join("audit");
//! let (log, _recovery) = AuditLog::open(AuditOptions::new(&dir), key)?;
//! let seq = log
//!     .append(AuditRecord { action: "workspace.query".into(), outcome: "ok".into(), status: 200, ..Default::default() })
//!     .await?; // durable now: the response may leave
//! let cp = log.checkpoint().await?.expect("one new record");
//! let proof = inclusion_proof(&dir, seq, None)?;
//! assert!(verify_inclusion(&proof, &proof.leaf_hash, &cp.root));
//! log.close().await?;
//! assert_eq!(verify(&dir, &public)?.records_checked, 1);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod checkpoint;
mod error;
pub mod format;
mod keys;
mod log;
pub mod merkle;
mod proof;
mod reader;
mod record;
mod segments;
mod verify;

pub use checkpoint::Checkpoint;
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use error::{AuditError, Damage};
pub use keys::{
    load_or_create_keys, parse_public_key, public_key_path, read_public_key, sign_document, verify_document, Hmacer, HMAC_KEY_FILE,
    PUBLIC_KEY_FILE, SIGNING_KEY_FILE,
};
pub use log::{
    AuditLog, AuditOptions, AuditStats, PruneReport, RecoveryInfo,
    DEFAULT_CHECKPOINT_EVERY_RECORDS, DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_RETENTION,
    DEFAULT_SEGMENT_BYTES,
};
pub use merkle::Hash;
pub use proof::{
    consistency_proof, find_checkpoint, inclusion_proof, latest_checkpoint, tree_root,
    verify_consistency, verify_inclusion, ConsistencyProof, InclusionProof,
};
pub use reader::{AuditReader, RecordFilter, Records};
pub use record::{AuditRecord, StoredRecord};
pub use verify::{verify, VerifyReport};
