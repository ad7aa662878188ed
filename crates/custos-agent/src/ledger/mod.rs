//! The host's transparency ledger: a local, hash-chained record of every
//! byte that left the host, and of the server's answer to it.
//!
//! Before the agent sends a batch it appends the batch's payload — the JSON
//! [`BatchPayload`](custos_model::wire::BatchPayload) bytes exactly as they
//! are framed and compressed by [`custos_model::wire::encode_raw`] — with
//! the send time and batch id, and fsyncs it ([`Ledger::append_batch`]).
//! Only then may the batch be sent. When the server acknowledges the batch,
//! an ack record follows ([`Ledger::append_ack`]). Both kinds of record form
//! one hash chain. The operator reads the ledger with [`LedgerReader`]
//! (`custos telemetry sent`) and checks it with [`verify`]
//! (`custos telemetry verify-ledger`). The ledger is bounded by size and age
//! ([`Ledger::prune`]) and is **never uploaded**: sources must refuse to read
//! it ([`is_ledger_path`]).
//!
//! The serialise-once rule that makes "the ledger holds what was sent" true
//! by construction:
//!
//! ```no_run
//! # fn f(ledger: &mut custos_agent::ledger::Ledger, payload: &custos_model::wire::BatchPayload)
//! # -> Result<(), custos_agent::ledger::LedgerError> {
//! use custos_model::wire::{self, Codec};
//! let json = wire::payload_json(payload);
//! ledger.append_batch(payload.batch_id, &json, custos_model::now_micros())?; // durable first
//! let frame = wire::encode_raw(&json, Codec::Zstd); // the same bytes, framed
//! // ... send `frame`; on the acknowledgement: ledger.append_ack(...)
//! # Ok(()) }
//! ```
//!
//! # On-disk format, version 1
//!
//! The ledger is a directory in the agent's state dir, mode 0700; every file
//! in it is mode 0600:
//!
//! ```text
//! <state_dir>/ledger/
//!   LOCK                               advisory lock held by the one writer (empty)
//!   seg-00000000000000000000.ledger    segment files, named by the seq of their first record
//!   seg-00000000000000001234.ledger    (20 decimal digits, so names sort in seq order)
//! ```
//!
//! Other files in the directory are ignored. Everything is UTF-8 text, one
//! item per line, and every line ends with LF. Hashes are **lowercase** hex
//! (readers refuse uppercase, so that every changed byte of a line shows).
//!
//! ## Header line
//!
//! The first line of every segment:
//!
//! ```text
//! {"v":1,"kind":"custos-ledger","first_seq":N,"prev":"<64 hex>"} TAB <64 hex> LF
//! ```
//!
//! `first_seq` is the seq of the segment's first record and equals the number
//! in the file name; `prev` is the hash of record `N-1` (64 zeros when
//! `N = 0`). The hex after the TAB is `SHA-256(0x01 || header JSON)`, a
//! checksum of the header (not a link of the chain). A segment may hold no
//! record after its header.
//!
//! ## Record lines
//!
//! Every other line is one record: its JSON, a TAB, the record's hash as 64
//! lowercase hex digits, and LF. The JSON is compact (no whitespace) and
//! its members are always in this order. A **batch** record (what was sent):
//!
//! ```text
//! {"v":1,"seq":S,"prev":"<64 hex>","kind":"batch","time":T,"batch_id":"<uuid>","payload":<payload JSON>}
//! ```
//!
//! `payload` is the batch payload JSON embedded **verbatim**, byte for byte
//! as it left the host (a compact JSON object; it never contains a raw LF,
//! and its `batch_id` equals the record's). An **ack** record (the server's
//! acknowledgement):
//!
//! ```text
//! {"v":1,"seq":S,"prev":"<64 hex>","kind":"ack","time":T,"batch_id":"<uuid>","ack_id":"<string>","accepted":A,"refused":R}
//! ```
//!
//! `seq` counts from 0 without gaps across the whole ledger; `prev` is the
//! hash of record `S-1` (64 zeros for seq 0); `time` is the send time
//! (batch) or the acknowledgement time (ack), microseconds since the Unix
//! epoch. Unknown members are refused. A record line is at most
//! [`MAX_LINE_BYTES`].
//!
//! ## Hash
//!
//! A record's hash is `SHA-256(0x00 || the record's JSON bytes)`: exactly the
//! bytes on disk before the TAB, so nothing is re-serialised to check it and
//! any changed byte changes it. The domain byte (0x00 for records, 0x01 for
//! headers) keeps a header from ever passing for a record. The hash is both
//! stored on the record's own line and named by the next record's `prev`:
//! one chain over batches and acks.
//!
//! ## Writing, rotation and crashes
//!
//! Each append is one `write` of the whole line followed by `fdatasync`;
//! [`Ledger::append_batch`] returns only after that, so a batch is sent only
//! once its record is durable. Before an append, when the active (newest)
//! segment holds records and has reached `segment_bytes`, a new segment is
//! started (create, write the header, fsync it and the directory): a segment
//! exceeds `segment_bytes` by at most one record.
//!
//! A **torn tail** — bytes after the last LF of the newest segment — is what
//! a crash in the middle of an append leaves. That append never returned, so
//! its batch was never sent (or, for an ack, the batch stays shown as
//! unacknowledged). It is therefore *not* tampering: [`verify`] and the reader
//! report it ([`TornTail`]) and ignore it, and the next [`Ledger::open`] cuts
//! it off. A newest segment whose header line is incomplete (a crash while
//! rotating) holds no record and is removed the same way. Everything else —
//! an unterminated line in an older segment, a bad hash, a broken link — is
//! damage ([`Damage`]), never silently dropped. The same rule as the agent's
//! queue and the server's WAL (`custos-wal`): only the end of the newest file
//! may be torn, because nothing is written after it until it is repaired.
//!
//! ## Pruning and the anchor
//!
//! [`Ledger::prune`] deletes whole segment files, oldest first: while the
//! ledger is larger than `max_bytes`, and while the oldest segment's last
//! record is older than `max_age` (a segment whose last record cannot be
//! read counts as expired). The active segment is not deleted for size;
//! when its last record has expired it is sealed first (a new, empty active
//! segment is started) and then deleted. After pruning the first remaining
//! segment's header still names, in `prev`, the hash of the last deleted
//! record: it **anchors** the chain, so the rest verifies without the deleted
//! prefix.
//!
//! ## What [`verify`] checks
//!
//! Every segment header (checksum, version, name, `prev` of zeros for seq 0);
//! that each segment starts where the one before it ended and that its
//! header's `prev` is the hash of that segment's last record; for every
//! record its hash, its JSON (version, kind, fields, the embedded payload is a
//! JSON object carrying the record's batch id), its seq (no gap) and its
//! `prev` link; that every line is complete except possibly the newest
//! segment's last (a torn tail). It names the first bad spot: file, line
//! number, the seq that position must hold, and what is wrong.
//!
//! ## What it cannot detect
//!
//! The chain has no secret and no signature: it shows accidental damage and
//! any edit, insertion or removal *inside* the chain, but someone with write
//! access to the state dir can rewrite the ledger consistently, delete its
//! oldest segments (indistinguishable from pruning), or **delete whole newest
//! records** (or the newest segment), leaving a shorter, valid chain. The
//! cross-check for that last case is the server: every batch it stored was
//! acknowledged with an ack id, and the server keeps the batch ids it stored
//! for each agent. Comparing the server's list of this agent's batch ids (and
//! ack ids) with the ledger's shows a batch the server holds that the ledger
//! lacks, i.e. a removed record — the one-sided check that matters, since
//! what must not happen is that data left the host without the ledger showing
//! it. A batch the ledger shows without an ack is one whose send failed or
//! whose acknowledgement was lost (for example a crash just after the send).
//!
//! ## Versions
//!
//! Lines start with `{"v":1,`. A reader refuses another version with
//! [`LedgerError::UnsupportedVersion`] rather than misreading it.

mod error;
mod format;
mod reader;
mod scan;
mod writer;

#[cfg(test)]
mod tests;

pub use error::{Damage, DamageKind, LedgerError};
pub use format::{
    parse_segment_file_name, segment_file_name, Hash, FORMAT_VERSION, LOCK_FILE_NAME,
    MAX_ACK_ID_BYTES, MAX_LINE_BYTES, MAX_PAYLOAD_BYTES,
};
pub use reader::{verify, AckInfo, Filter, LedgerReader, SentBatch, VerifyReport};
pub use scan::TornTail;
pub use writer::{Ledger, LedgerOptions, PruneReport, RecoveryInfo};

use std::path::{Component, Path, PathBuf};

/// Name of the ledger's directory inside the agent's state dir.
pub const LEDGER_DIR: &str = "ledger";

/// The ledger directory of a state dir: `<state_dir>/ledger`.
pub fn ledger_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(LEDGER_DIR)
}

/// Whether `path` is (or is inside) the ledger directory of `state_dir`, so
/// that a source can refuse to read it: the ledger is never uploaded.
///
/// Both paths are resolved (symbolic links followed, `.` and `..` removed,
/// relative paths taken from the current directory) as far as they exist,
/// and compared lexically as well, so a symlink or a `..` detour into the
/// ledger is caught; a hard link to a ledger file from elsewhere is caught by
/// comparing the file's device and inode with the ledger's files. A path
/// that cannot be resolved is compared as written.
pub fn is_ledger_path(state_dir: &Path, path: &Path) -> bool {
    let ledger = ledger_dir(state_dir);
    let lexical = |p: &Path| normalize(&absolute(p));
    if lexical(path).starts_with(lexical(&ledger)) {
        return true;
    }
    let ledger_resolved = resolve(&ledger);
    if resolve(path).starts_with(&ledger_resolved) {
        return true;
    }
    is_hard_link_into(&ledger_resolved, path)
}

/// `p` made absolute against the current directory (unchanged if that is unknown).
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Removes `.` and resolves `..` lexically.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Canonicalises the longest existing ancestor of `p` and appends the rest.
fn resolve(p: &Path) -> PathBuf {
    let p = normalize(&absolute(p));
    let mut existing = p.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = std::fs::canonicalize(existing) {
            let mut out = c;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return p,
        }
    }
}

/// Whether `path` is a regular file with several links, one of which is a
/// file of the ledger directory.
fn is_hard_link_into(ledger: &Path, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() || meta.nlink() < 2 {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(ledger) else {
        return false;
    };
    entries.flatten().any(|e| {
        e.metadata()
            .is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
    })
}
