//! Audit records: what callers supply and what the log stores.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::merkle::Hash;

/// One audited action, as supplied by the caller. The log assigns the
/// sequence number, the `prev` link and the hash.
///
/// Field order is the on-disk order (see [`format`](mod@crate::format)); keep
/// secrets and personal data out of it — put identifiers, counts, or values
/// pseudonymised with [`Hmacer`](crate::Hmacer) into `details`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct AuditRecord {
    /// Microseconds since the Unix epoch (the caller's clock; may be injected).
    pub time: i64,
    /// Who acted: a principal uuid, `agent:<uuid>`, ...; `None` when unauthenticated.
    pub principal: Option<String>,
    /// The role the action was performed under: `admin`, `support`, `owner`, `agent`, `anonymous`, ...
    pub role: String,
    /// What was done, e.g. `workspace.query`.
    pub action: String,
    /// What it was done to: a request path or an object id.
    pub target: String,
    /// The workspace uuid, if the action concerns one.
    pub workspace: Option<String>,
    /// `ok`, `denied`, `error` or `started`.
    pub outcome: String,
    /// HTTP status (0 for `started`).
    pub status: u16,
    /// The request id, to correlate with other logs.
    pub request_id: String,
    /// The peer address.
    pub client: String,
    /// The lockbox grant id used, if any.
    pub grant: Option<String>,
    /// Further facts; values must already be safe (ids, counts) or HMAC'd.
    pub details: BTreeMap<String, String>,
}

/// A record as stored: the caller's record plus the log's bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// Position in the log: 0, 1, 2, … without gaps.
    pub seq: u64,
    /// Hash of the previous record (all zeros for seq 0).
    pub prev: Hash,
    /// `SHA-256(0x00 || the record's JSON bytes)`: chain link and Merkle leaf hash.
    pub hash: Hash,
    /// The record.
    pub record: AuditRecord,
}
