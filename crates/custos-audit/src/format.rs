//! # On-disk format, version 1
//!
//! An audit log is a directory:
//!
//! ```text
//! <dir>/
//!   LOCK                              advisory lock held by the one writer
//!   seg-00000000000000000000.audit    segment files, named by the seq of their first record
//!   seg-00000000000000163840.audit    (20 decimal digits, so names sort in seq order)
//!   checkpoints.log                   signed checkpoints, one per line
//! ```
//!
//! Everything is UTF-8 text, one item per line, lines end with `\n` (LF).
//! Hashes and signatures are **lowercase** hex; readers refuse uppercase so
//! that every single-byte change of a line is visible.
//!
//! ## Segment files
//!
//! The first line of every segment is its **header**:
//!
//! ```text
//! {"v":1,"kind":"segment","first_seq":N,"prev":"<hex>","frontier":["<hex>",...]} TAB <sha256 hex of the JSON> LF
//! ```
//!
//! * `first_seq`: seq of the first record in the file; equals the number in
//!   the file name.
//! * `prev`: hash of record `N-1` (64 zeros when `N = 0`).
//! * `frontier`: the Merkle compact range of records `[0, N)` — the roots of
//!   the perfect subtrees covering them, one per set bit of `N`, largest
//!   first (see [`Frontier`]).
//!
//! The header is the **anchor** that makes retention pruning possible:
//! pruning deletes whole, older segment files, and the first remaining
//! header still carries the chain link (`prev`) and the Merkle frontier of
//! everything deleted. Verification and proofs for the remaining records
//! need nothing else from the pruned prefix, because any proof node lying
//! wholly in `[0, N)` is a frontier node (or a run of them). Headers are
//! not signed; a changed header is caught because the chain link or the
//! signed checkpoint roots no longer match.
//!
//! Every following line is one **record**:
//!
//! ```text
//! {"v":1,"seq":S,"prev":"<hex>","time":T,"principal":...,"role":...,"action":...,"target":...,
//!  "workspace":...,"outcome":...,"status":...,"request_id":...,"client":...,"grant":...,"details":{...}} TAB <hash hex> LF
//! ```
//!
//! (one line; wrapped here). The JSON is compact and its fields are always
//! in this order, `details` keys sorted; absent options are `null`. `seq`
//! counts from 0 without gaps across the whole log. `prev` is the hash of
//! record `S-1` (64 zeros for seq 0). The **hash** is
//! `SHA-256(0x00 || the raw JSON bytes)` — the RFC 6962 Merkle leaf hash of
//! exactly the bytes on disk, so no re-serialisation is ever needed to check
//! it and any changed byte changes it. The same hash is the hash-chain link
//! (the next record's `prev`) and the Merkle tree leaf. JSON escapes control
//! characters, so the JSON never contains a raw TAB or LF; readers split a
//! line at its first TAB.
//!
//! A record's JSON is at most [`MAX_RECORD_BYTES`]; larger appends are
//! refused.
//!
//! The writer appends a group of records with one `write` and one
//! `fdatasync`, and acknowledges them only after that. It starts a new
//! segment (create, write the header, fsync the file, fsync the directory)
//! before a group when the active segment has reached the configured size,
//! so a segment may exceed it by one group.
//!
//! ## `checkpoints.log`
//!
//! One [`Checkpoint`] per line, compact JSON:
//!
//! ```text
//! {"v":1,"size":N,"root":"<hex>","chain_head":"<hex>","time":T,"signature":"<128 hex>"} LF
//! ```
//!
//! `root` is the RFC 6962 Merkle tree hash of records `[0, N)`,
//! `chain_head` the hash of record `N-1`, `time` the writer's clock in
//! microseconds since the Unix epoch. `signature` is Ed25519 over
//! [`Checkpoint::signed_message`]:
//!
//! ```text
//! custos-audit checkpoint v1\n
//! size <N>\n
//! root <hex>\n
//! chain_head <hex>\n
//! time <T>\n
//! ```
//!
//! Checkpoints are appended (and fsynced) only after the records they cover
//! are durable, and their sizes strictly increase.
//!
//! ## Recovery
//!
//! On open, the newest segment is read (older ones are sealed and left to
//! [`verify`](crate::verify)):
//!
//! * bytes after its last LF are a **torn tail** from a crash mid-write:
//!   they were never acknowledged, so they are truncated and reported;
//! * a newest segment whose header line is incomplete is a crash during
//!   rotation: it holds no records and is removed (and reported);
//! * a torn last line of `checkpoints.log` is truncated likewise;
//! * anything else — a bad hash, a broken link, a gap, an unparsable
//!   complete line, a latest checkpoint claiming more records than exist or
//!   not matching them, or not signed by the log's key — is an error. Nothing
//!   is silently dropped.
//!
//! ## Retention
//!
//! [`AuditLog::prune`](crate::AuditLog::prune) deletes whole sealed segment
//! files, oldest first, whose newest record is older than the retention
//! period, and never the newest segment. Checkpoints are kept; those older
//! than the pruned prefix can then only be checked for their signature.
//!
//! [`Frontier`]: crate::merkle::Frontier
//! [`Checkpoint`]: crate::Checkpoint
//! [`Checkpoint::signed_message`]: crate::Checkpoint::signed_message

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::merkle::{leaf_hash, Frontier, Hash};
use crate::record::AuditRecord;

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u64 = 1;
/// Largest accepted record JSON, in bytes.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// Longest line a reader accepts (records, headers and checkpoints).
pub const MAX_LINE_BYTES: usize = MAX_RECORD_BYTES + 1024;
/// Name of the checkpoint file.
pub const CHECKPOINT_FILE_NAME: &str = "checkpoints.log";
/// Name of the writer's lock file.
pub const LOCK_FILE_NAME: &str = "LOCK";
/// The all-zero hash: the `prev` of record 0.
pub const ZERO_HASH: Hash = [0; 32];

const SEGMENT_PREFIX: &str = "seg-";
const SEGMENT_SUFFIX: &str = ".audit";

/// The file name of the segment whose first record is `first_seq`.
pub fn segment_file_name(first_seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_seq:020}{SEGMENT_SUFFIX}")
}

/// The first seq encoded in a segment file name, or `None` for other names.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(crate) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(segment_file_name(first_seq))
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Decodes exactly `N` bytes from lowercase hex; uppercase is refused.
pub fn parse_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(s[2 * i])? << 4) | nibble(s[2 * i + 1])?;
    }
    Some(out)
}

/// Serde helpers writing hashes and signatures as lowercase hex.
pub(crate) mod hexser {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn ser<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::to_hex(v))
    }

    pub(crate) fn de<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u8; N], D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::parse_hex::<N>(s.as_bytes())
            .ok_or_else(|| D::Error::custom(format!("expected {} lowercase hex digits", 2 * N)))
    }

    pub(crate) fn ser_vec<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|h| super::to_hex(h)))
    }

    pub(crate) fn de_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        let v = <Vec<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        v.iter()
            .map(|s| {
                super::parse_hex::<32>(s.as_bytes())
                    .ok_or_else(|| D::Error::custom("expected 64 lowercase hex digits"))
            })
            .collect()
    }
}

/// Encodes a record's fields as the compact JSON object that follows `seq`
/// and `prev` on its line (done by the caller, off the writer thread).
pub(crate) fn encode_body(rec: &AuditRecord) -> Result<Vec<u8>, crate::AuditError> {
    let body = serde_json::to_vec(rec).map_err(|e| crate::AuditError::Encode(e.to_string()))?;
    // The line adds `"v":1,"seq":…,"prev":"…",` (< 120 bytes) to the body.
    if body.len() + 120 > MAX_RECORD_BYTES {
        return Err(crate::AuditError::RecordTooLarge {
            len: body.len() + 120,
            max: MAX_RECORD_BYTES,
        });
    }
    if body.len() < 2 || body[0] != b'{' {
        return Err(crate::AuditError::Encode(
            "record did not encode as a json object".into(),
        ));
    }
    Ok(body)
}

/// Appends the full line of a record (JSON, TAB, hash, LF) to `out` and
/// returns the record's hash. `body` comes from [`encode_body`].
pub(crate) fn encode_record_line(seq: u64, prev: &Hash, body: &[u8], out: &mut Vec<u8>) -> Hash {
    let start = out.len();
    out.extend_from_slice(b"{\"v\":1,\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"prev\":\"");
    out.extend_from_slice(to_hex(prev).as_bytes());
    out.extend_from_slice(b"\",");
    out.extend_from_slice(&body[1..]);
    let hash = leaf_hash(&out[start..]);
    out.push(b'\t');
    out.extend_from_slice(to_hex(&hash).as_bytes());
    out.push(b'\n');
    hash
}

/// A record line split into its JSON and its stored hash (no checks yet).
pub(crate) struct SplitLine<'a> {
    pub json: &'a [u8],
    pub hash: Hash,
}

/// Splits a line (without its LF) at the first TAB and decodes the hash.
pub(crate) fn split_line(line: &[u8]) -> Result<SplitLine<'_>, String> {
    let tab = line
        .iter()
        .position(|&b| b == b'\t')
        .ok_or("no tab between json and hash")?;
    let (json, rest) = (&line[..tab], &line[tab + 1..]);
    let hash = parse_hex::<32>(rest).ok_or("hash is not 64 lowercase hex digits")?;
    Ok(SplitLine { json, hash })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordJsonV1 {
    v: u64,
    seq: u64,
    #[serde(deserialize_with = "hexser::de")]
    prev: Hash,
    time: i64,
    principal: Option<String>,
    role: String,
    action: String,
    target: String,
    workspace: Option<String>,
    outcome: String,
    status: u16,
    request_id: String,
    client: String,
    grant: Option<String>,
    details: BTreeMap<String, String>,
}

/// A record as decoded from its JSON.
pub(crate) struct DecodedRecord {
    pub seq: u64,
    pub prev: Hash,
    pub record: AuditRecord,
}

/// Outcome of decoding a record's JSON.
pub(crate) enum Decode {
    Ok(Box<DecodedRecord>),
    /// A well-formed record of another format version.
    Version(u64),
    Bad(String),
}

/// Decodes a record's JSON (whose hash was already checked).
pub(crate) fn decode_record_json(json: &[u8]) -> Decode {
    // Check the version first so a newer record is reported as such and not
    // as an unknown field.
    if let Some(rest) = json.strip_prefix(b"{\"v\":") {
        let digits: Vec<u8> = rest
            .iter()
            .copied()
            .take_while(u8::is_ascii_digit)
            .collect();
        if let Some(v) = std::str::from_utf8(&digits)
            .ok()
            .and_then(|d| d.parse::<u64>().ok())
        {
            if v != FORMAT_VERSION {
                return Decode::Version(v);
            }
        }
    }
    match serde_json::from_slice::<RecordJsonV1>(json) {
        Ok(r) if r.v != FORMAT_VERSION => Decode::Version(r.v),
        Ok(r) => Decode::Ok(Box::new(DecodedRecord {
            seq: r.seq,
            prev: r.prev,
            record: AuditRecord {
                time: r.time,
                principal: r.principal,
                role: r.role,
                action: r.action,
                target: r.target,
                workspace: r.workspace,
                outcome: r.outcome,
                status: r.status,
                request_id: r.request_id,
                client: r.client,
                grant: r.grant,
                details: r.details,
            },
        })),
        Err(e) => Decode::Bad(format!("invalid record json: {e}")),
    }
}

/// The first line of a segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub first_seq: u64,
    pub prev: Hash,
    pub frontier: Frontier,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderJsonV1 {
    v: u64,
    kind: String,
    first_seq: u64,
    #[serde(serialize_with = "hexser::ser", deserialize_with = "hexser::de")]
    prev: Hash,
    #[serde(
        serialize_with = "hexser::ser_vec",
        deserialize_with = "hexser::de_vec"
    )]
    frontier: Vec<Hash>,
}

const HEADER_KIND: &str = "segment";

impl SegmentHeader {
    /// The full header line, LF included.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let j = HeaderJsonV1 {
            v: FORMAT_VERSION,
            kind: HEADER_KIND.into(),
            first_seq: self.first_seq,
            prev: self.prev,
            frontier: self.frontier.nodes().to_vec(),
        };
        // Serialising a struct of integers, strings and hex strings cannot fail.
        let mut out = serde_json::to_vec(&j).unwrap_or_default();
        let sum: Hash = Sha256::digest(&out).into();
        out.push(b'\t');
        out.extend_from_slice(to_hex(&sum).as_bytes());
        out.push(b'\n');
        out
    }

    /// Decodes a header line (without its LF). `Err(Ok(v))` is another
    /// format version, `Err(Err(reason))` damage.
    pub(crate) fn decode(line: &[u8]) -> Result<Self, Result<u64, String>> {
        let split = split_line(line).map_err(Err)?;
        let sum: Hash = Sha256::digest(split.json).into();
        if sum != split.hash {
            return Err(Err("header bytes do not match its checksum".into()));
        }
        let j: HeaderJsonV1 = serde_json::from_slice(split.json)
            .map_err(|e| Err(format!("invalid header json: {e}")))?;
        if j.v != FORMAT_VERSION {
            return Err(Ok(j.v));
        }
        if j.kind != HEADER_KIND {
            return Err(Err(format!(
                "header kind is {:?}, expected {HEADER_KIND:?}",
                j.kind
            )));
        }
        let frontier = Frontier::from_parts(j.first_seq, j.frontier).ok_or_else(|| {
            Err("frontier does not have one node per set bit of first_seq".to_string())
        })?;
        if j.first_seq == 0 && j.prev != ZERO_HASH {
            return Err(Err(
                "first segment of the log must have an all-zero prev".into()
            ));
        }
        Ok(SegmentHeader {
            first_seq: j.first_seq,
            prev: j.prev,
            frontier,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> AuditRecord {
        AuditRecord {
            time: 1_700_000_000_000_000,
            principal: Some("p\t\n\"x".into()),
            role: "admin".into(),
            action: "workspace.query".into(),
            target: "/v1/workspaces/w/query".into(),
            workspace: None,
            outcome: "ok".into(),
            status: 200,
            request_id: "r1".into(),
            client: "127.0.0.1:5".into(),
            grant: None,
            details: [("rows".to_string(), "3".to_string())].into(),
        }
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_file_name(42), "seg-00000000000000000042.audit");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_file_name("seg-42.audit"), None);
        assert_eq!(
            parse_segment_file_name("seg-0000000000000000004x.audit"),
            None
        );
        assert_eq!(parse_segment_file_name("checkpoints.log"), None);
    }

    #[test]
    fn hex_is_strictly_lowercase() {
        assert_eq!(parse_hex::<2>(b"0aff"), Some([0x0a, 0xff]));
        assert_eq!(parse_hex::<2>(b"0AFF"), None);
        assert_eq!(parse_hex::<2>(b"0af"), None);
        assert_eq!(parse_hex::<2>(b"0afg"), None);
    }

    #[test]
    fn record_lines_round_trip_and_have_no_raw_tabs_or_newlines_in_json() {
        let body = encode_body(&rec()).unwrap();
        let mut line = Vec::new();
        let prev = [7u8; 32];
        let h = encode_record_line(9, &prev, &body, &mut line);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(line.iter().filter(|&&b| b == b'\t').count(), 1);
        let split = split_line(&line[..line.len() - 1]).unwrap();
        assert_eq!(split.hash, h);
        assert_eq!(leaf_hash(split.json), h);
        assert!(split
            .json
            .starts_with(b"{\"v\":1,\"seq\":9,\"prev\":\"0707"));
        let Decode::Ok(d) = decode_record_json(split.json) else {
            panic!("decode")
        };
        assert_eq!((d.seq, d.prev, d.record), (9, prev, rec()));
    }

    #[test]
    fn other_versions_and_unknown_fields_are_refused() {
        assert!(matches!(
            decode_record_json(b"{\"v\":2,\"seq\":0}"),
            Decode::Version(2)
        ));
        let body = encode_body(&rec()).unwrap();
        let mut line = Vec::new();
        encode_record_line(0, &ZERO_HASH, &body, &mut line);
        let s = String::from_utf8(line)
            .unwrap()
            .replace("\"details\"", "\"extra\":1,\"details\"");
        let json = s.split('\t').next().unwrap();
        assert!(matches!(
            decode_record_json(json.as_bytes()),
            Decode::Bad(_)
        ));
    }

    #[test]
    fn oversized_records_are_refused() {
        let mut r = rec();
        r.details.insert("big".into(), "x".repeat(MAX_RECORD_BYTES));
        assert!(matches!(
            encode_body(&r),
            Err(crate::AuditError::RecordTooLarge { .. })
        ));
    }

    #[test]
    fn headers_round_trip_and_detect_changes() {
        let mut f = Frontier::new();
        for i in 0..5u8 {
            f.push(leaf_hash(&[i]));
        }
        let h = SegmentHeader {
            first_seq: 5,
            prev: [3; 32],
            frontier: f,
        };
        let line = h.encode();
        assert_eq!(SegmentHeader::decode(&line[..line.len() - 1]).unwrap(), h);
        for i in 0..line.len() - 1 {
            let mut bad = line.clone();
            bad[i] ^= 0x01;
            assert!(
                SegmentHeader::decode(&bad[..bad.len() - 1]).is_err(),
                "flip at {i}"
            );
        }
    }
}
