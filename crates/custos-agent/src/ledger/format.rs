//! Encoding and decoding of the ledger's lines (see the format in the
//! [module documentation](super)). Pure functions over bytes.

use custos_model::BatchId;
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u64 = 1;
/// Largest payload accepted by [`Ledger::append_batch`](super::Ledger::append_batch):
/// the largest payload a server accepts by default
/// (`custos_model::wire::Limits::max_payload_bytes`).
pub const MAX_PAYLOAD_BYTES: usize = 64 << 20;
/// Largest ack id accepted by [`Ledger::append_ack`](super::Ledger::append_ack), in bytes.
pub const MAX_ACK_ID_BYTES: usize = 1024;
/// Longest line a reader accepts (header or record, without its LF).
pub const MAX_LINE_BYTES: usize = MAX_PAYLOAD_BYTES + 8 * 1024;
/// Name of the writer's lock file.
pub const LOCK_FILE_NAME: &str = "LOCK";
/// The all-zero hash: the `prev` of record 0.
pub const ZERO_HASH: Hash = [0; 32];

/// Domain byte hashed before a record's JSON.
const DOMAIN_RECORD: u8 = 0x00;
/// Domain byte hashed before a header's JSON.
const DOMAIN_HEADER: u8 = 0x01;
/// The `kind` of a header.
const HEADER_KIND: &str = "custos-ledger";
/// Bytes after a line's JSON: TAB and 64 hex digits.
const HASH_SUFFIX_LEN: usize = 65;

const SEGMENT_PREFIX: &str = "seg-";
const SEGMENT_SUFFIX: &str = ".ledger";

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

/// Lowercase hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * bytes.len());
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

/// Decodes exactly 32 bytes from lowercase hex; anything else is `None`.
pub(crate) fn parse_hash(s: &[u8]) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(s[2 * i])? << 4) | nibble(s[2 * i + 1])?;
    }
    Some(out)
}

/// `SHA-256(domain || bytes)`.
fn domain_hash(domain: u8, bytes: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([domain]);
    h.update(bytes);
    h.finalize().into()
}

/// The hash of a record: `SHA-256(0x00 || json)`.
pub(crate) fn record_hash(json: &[u8]) -> Hash {
    domain_hash(DOMAIN_RECORD, json)
}

/// Appends TAB, the hex of `SHA-256(domain || out[start..])` and LF; returns the hash.
fn finish_line(domain: u8, out: &mut Vec<u8>, start: usize) -> Hash {
    let hash = domain_hash(domain, &out[start..]);
    out.push(b'\t');
    out.extend_from_slice(to_hex(&hash).as_bytes());
    out.push(b'\n');
    hash
}

fn push_record_start(
    out: &mut Vec<u8>,
    seq: u64,
    prev: &Hash,
    kind: &str,
    time: i64,
    batch_id: &BatchId,
) {
    out.extend_from_slice(b"{\"v\":");
    out.extend_from_slice(FORMAT_VERSION.to_string().as_bytes());
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"prev\":\"");
    out.extend_from_slice(to_hex(prev).as_bytes());
    out.extend_from_slice(b"\",\"kind\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"time\":");
    out.extend_from_slice(time.to_string().as_bytes());
    out.extend_from_slice(b",\"batch_id\":\"");
    out.extend_from_slice(batch_id.to_string().as_bytes());
    out.push(b'"');
}

/// Appends the full line of a batch record to `out` and returns its hash.
/// `payload` must have passed [`check_payload`].
pub(crate) fn encode_batch_line(
    out: &mut Vec<u8>,
    seq: u64,
    prev: &Hash,
    time: i64,
    batch_id: &BatchId,
    payload: &[u8],
) -> Hash {
    let start = out.len();
    push_record_start(out, seq, prev, KIND_BATCH, time, batch_id);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload);
    out.push(b'}');
    finish_line(DOMAIN_RECORD, out, start)
}

/// Appends the full line of an ack record to `out` and returns its hash.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_ack_line(
    out: &mut Vec<u8>,
    seq: u64,
    prev: &Hash,
    time: i64,
    batch_id: &BatchId,
    ack_id: &str,
    accepted: u64,
    refused: u64,
) -> Hash {
    let start = out.len();
    push_record_start(out, seq, prev, KIND_ACK, time, batch_id);
    out.extend_from_slice(b",\"ack_id\":");
    // Serialising a string cannot fail; it escapes control characters, so
    // the line gets no raw LF.
    out.extend_from_slice(serde_json::to_string(ack_id).unwrap_or_default().as_bytes());
    out.extend_from_slice(b",\"accepted\":");
    out.extend_from_slice(accepted.to_string().as_bytes());
    out.extend_from_slice(b",\"refused\":");
    out.extend_from_slice(refused.to_string().as_bytes());
    out.push(b'}');
    finish_line(DOMAIN_RECORD, out, start)
}

const KIND_BATCH: &str = "batch";
const KIND_ACK: &str = "ack";

/// The members of a payload the ledger looks at.
#[derive(Deserialize)]
struct PayloadHead {
    batch_id: BatchId,
}

/// Checks that `payload` can be embedded verbatim in a record line and
/// belongs to `batch_id`: a compact JSON object (no LF, no whitespace around
/// it) whose `batch_id` member is `batch_id`.
pub(crate) fn check_payload(payload: &[u8], batch_id: &BatchId) -> Result<(), String> {
    if payload.first() != Some(&b'{') || payload.last() != Some(&b'}') {
        return Err(
            "payload is not a json object (it must start with '{' and end with '}')".into(),
        );
    }
    if payload.contains(&b'\n') {
        return Err("payload contains a line feed (it must be compact json)".into());
    }
    let head: PayloadHead = serde_json::from_slice(payload)
        .map_err(|e| format!("payload is not a batch payload: {e}"))?;
    if head.batch_id != *batch_id {
        return Err(format!(
            "payload carries batch id {} but the record is for batch {batch_id}",
            head.batch_id
        ));
    }
    Ok(())
}

/// A line split into its JSON and its stored hash (no checks of the JSON yet).
pub(crate) struct SplitLine<'a> {
    pub json: &'a [u8],
    pub hash: Hash,
}

/// Splits a line (without its LF) into JSON, TAB and 64 hex digits.
pub(crate) fn split_line(line: &[u8]) -> Result<SplitLine<'_>, &'static str> {
    if line.len() < HASH_SUFFIX_LEN + 2 {
        return Err("line too short to hold json, a tab and a hash");
    }
    let tab = line.len() - HASH_SUFFIX_LEN;
    if line[tab] != b'\t' {
        return Err("no tab before the 64-digit hash at the end of the line");
    }
    let hash = parse_hash(&line[tab + 1..]).ok_or("hash is not 64 lowercase hex digits")?;
    Ok(SplitLine {
        json: &line[..tab],
        hash,
    })
}

/// The version a JSON object starting with `{"v":N` declares.
fn declared_version(json: &[u8]) -> Option<u64> {
    let rest = json.strip_prefix(b"{\"v\":")?;
    let end = rest
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Serde helper: a hash as 64 lowercase hex digits.
fn de_hash<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    parse_hash(s.as_bytes())
        .ok_or_else(|| serde::de::Error::custom("expected 64 lowercase hex digits"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordJsonV1<'a> {
    v: u64,
    seq: u64,
    #[serde(deserialize_with = "de_hash")]
    prev: Hash,
    kind: std::borrow::Cow<'a, str>,
    time: i64,
    batch_id: BatchId,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    ack_id: Option<String>,
    #[serde(default)]
    accepted: Option<u64>,
    #[serde(default)]
    refused: Option<u64>,
}

/// What a record says, beyond its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body<'a> {
    /// A batch that was sent: its payload bytes, verbatim.
    Batch { payload: &'a [u8] },
    /// The server's acknowledgement of a batch.
    Ack {
        ack_id: String,
        accepted: u64,
        refused: u64,
    },
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub seq: u64,
    pub prev: Hash,
    pub time: i64,
    pub batch_id: BatchId,
    pub body: Body<'a>,
}

/// Outcome of decoding a record's JSON.
pub(crate) enum Decode<'a> {
    Ok(Record<'a>),
    /// A record of another format version.
    Version(u64),
    Bad(String),
}

/// Decodes a record's JSON (whose hash the caller checks).
pub(crate) fn decode_record(json: &[u8]) -> Decode<'_> {
    // The version first, so that a newer record is reported as such and not
    // as an unknown member.
    match declared_version(json) {
        Some(FORMAT_VERSION) => {}
        Some(v) => return Decode::Version(v),
        None => return Decode::Bad("record does not start with {\"v\":<version>".into()),
    }
    let r: RecordJsonV1<'_> = match serde_json::from_slice(json) {
        Ok(r) => r,
        Err(e) => return Decode::Bad(format!("invalid record json: {e}")),
    };
    if r.v != FORMAT_VERSION {
        return Decode::Version(r.v);
    }
    let body = match (&*r.kind, r.payload, r.ack_id, r.accepted, r.refused) {
        (KIND_BATCH, Some(payload), None, None, None) => {
            let payload = payload.get().as_bytes();
            if let Err(reason) = check_payload(payload, &r.batch_id) {
                return Decode::Bad(reason);
            }
            Body::Batch { payload }
        }
        (KIND_BATCH, ..) => {
            return Decode::Bad(
                "a batch record has a payload and no ack_id, accepted or refused".into(),
            )
        }
        (KIND_ACK, None, Some(ack_id), Some(accepted), Some(refused)) => Body::Ack {
            ack_id,
            accepted,
            refused,
        },
        (KIND_ACK, ..) => {
            return Decode::Bad(
                "an ack record has ack_id, accepted and refused and no payload".into(),
            )
        }
        (other, ..) => return Decode::Bad(format!("unknown record kind {other:?}")),
    };
    Decode::Ok(Record {
        seq: r.seq,
        prev: r.prev,
        time: r.time,
        batch_id: r.batch_id,
        body,
    })
}

/// The first line of a segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub first_seq: u64,
    pub prev: Hash,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderJsonV1 {
    v: u64,
    kind: String,
    first_seq: u64,
    #[serde(deserialize_with = "de_hash")]
    prev: Hash,
}

/// Why a header line was not accepted.
pub(crate) enum HeaderError {
    /// Another format version.
    Version(u64),
    Bad(String),
}

impl SegmentHeader {
    /// The full header line, LF included.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = format!(
            "{{\"v\":{FORMAT_VERSION},\"kind\":\"{HEADER_KIND}\",\"first_seq\":{},\"prev\":\"{}\"}}",
            self.first_seq,
            to_hex(&self.prev)
        )
        .into_bytes();
        finish_line(DOMAIN_HEADER, &mut out, 0);
        out
    }

    /// Decodes a header line (without its LF).
    pub(crate) fn decode(line: &[u8]) -> Result<Self, HeaderError> {
        let split = split_line(line).map_err(|e| HeaderError::Bad(e.into()))?;
        if domain_hash(DOMAIN_HEADER, split.json) != split.hash {
            return Err(HeaderError::Bad(
                "header bytes do not match its checksum".into(),
            ));
        }
        if let Some(v) = declared_version(split.json).filter(|v| *v != FORMAT_VERSION) {
            return Err(HeaderError::Version(v));
        }
        let j: HeaderJsonV1 = serde_json::from_slice(split.json)
            .map_err(|e| HeaderError::Bad(format!("invalid header json: {e}")))?;
        if j.v != FORMAT_VERSION {
            return Err(HeaderError::Version(j.v));
        }
        if j.kind != HEADER_KIND {
            return Err(HeaderError::Bad(format!(
                "header kind is {:?}, expected {HEADER_KIND:?}",
                j.kind
            )));
        }
        if j.first_seq == 0 && j.prev != ZERO_HASH {
            return Err(HeaderError::Bad(
                "the segment starting at seq 0 must have an all-zero prev".into(),
            ));
        }
        Ok(SegmentHeader {
            first_seq: j.first_seq,
            prev: j.prev,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(id: &BatchId) -> Vec<u8> {
        format!(r#"{{"batch_id":"{id}","created":5,"events":[{{"message":"a\tb\"c\n"}}]}}"#)
            .into_bytes()
    }

    #[test]
    fn segment_names_round_trip_and_other_names_are_ignored() {
        assert_eq!(segment_file_name(42), "seg-00000000000000000042.ledger");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_file_name("seg-42.ledger"), None);
        assert_eq!(
            parse_segment_file_name("seg-0000000000000000004x.ledger"),
            None
        );
        assert_eq!(parse_segment_file_name("LOCK"), None);
    }

    #[test]
    fn hashes_are_strictly_lowercase_hex() {
        let h = [0xab; 32];
        assert_eq!(parse_hash(to_hex(&h).as_bytes()), Some(h));
        assert_eq!(parse_hash(to_hex(&h).to_uppercase().as_bytes()), None);
        assert_eq!(parse_hash(b"ab"), None);
    }

    #[test]
    fn max_payload_matches_the_wire_default() {
        assert_eq!(
            MAX_PAYLOAD_BYTES,
            custos_model::wire::Limits::default().max_payload_bytes
        );
    }

    #[test]
    fn batch_lines_embed_the_payload_verbatim_and_round_trip() {
        let id = BatchId::new();
        let p = payload(&id);
        check_payload(&p, &id).unwrap();
        let mut line = Vec::new();
        let h = encode_batch_line(&mut line, 7, &[3; 32], -5, &id, &p);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let split = split_line(&line[..line.len() - 1]).unwrap();
        assert_eq!(split.hash, h);
        assert_eq!(record_hash(split.json), h);
        let Decode::Ok(r) = decode_record(split.json) else {
            panic!("decode")
        };
        assert_eq!(
            r,
            Record {
                seq: 7,
                prev: [3; 32],
                time: -5,
                batch_id: id,
                body: Body::Batch { payload: &p }
            }
        );
    }

    #[test]
    fn ack_lines_round_trip_with_awkward_ack_ids() {
        let id = BatchId::new();
        let mut line = Vec::new();
        let ack_id = "wal:12\t\n\"x\u{1}";
        let h = encode_ack_line(&mut line, 0, &ZERO_HASH, 9, &id, ack_id, 3, 4);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let split = split_line(&line[..line.len() - 1]).unwrap();
        assert_eq!(split.hash, h);
        let Decode::Ok(r) = decode_record(split.json) else {
            panic!("decode")
        };
        assert_eq!(
            r.body,
            Body::Ack {
                ack_id: ack_id.into(),
                accepted: 3,
                refused: 4
            }
        );
    }

    #[test]
    fn payloads_that_cannot_be_embedded_verbatim_are_refused() {
        let id = BatchId::new();
        let good = payload(&id);
        let other = BatchId::new();
        let mut spaced = b" ".to_vec();
        spaced.extend_from_slice(&good);
        let pretty = format!("{{\n\"batch_id\":\"{id}\"}}").into_bytes();
        for (bad, what) in [
            (&b"[1]"[..], "object"),
            (&spaced[..], "object"),
            (&pretty[..], "line feed"),
            (&b"{\"batch_id\":1}"[..], "batch payload"),
            (&b"{\"batch_id\":\"x\"}"[..], "batch payload"),
            (&b"{} {}"[..], "batch payload"),
        ] {
            let err = check_payload(bad, &id).unwrap_err();
            assert!(err.contains(what), "{err}");
        }
        let err = check_payload(&good, &other).unwrap_err();
        assert!(err.contains("batch id"), "{err}");
    }

    #[test]
    fn other_versions_kinds_and_unknown_members_are_refused() {
        assert!(matches!(
            decode_record(b"{\"v\":2,\"seq\":0}"),
            Decode::Version(2)
        ));
        let id = BatchId::new();
        let mut line = Vec::new();
        encode_ack_line(&mut line, 0, &ZERO_HASH, 9, &id, "a", 1, 0);
        let s = String::from_utf8(line).unwrap();
        let json = s.split('\t').next().unwrap();
        for bad in [
            json.replace("\"refused\"", "\"extra\":1,\"refused\""),
            json.replace("\"kind\":\"ack\"", "\"kind\":\"batch\""),
            json.replace("\"kind\":\"ack\"", "\"kind\":\"nope\""),
            json.replace(",\"refused\":0", ""),
        ] {
            assert!(
                matches!(decode_record(bad.as_bytes()), Decode::Bad(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn headers_round_trip_and_every_flipped_bit_is_refused() {
        let h = SegmentHeader {
            first_seq: 5,
            prev: [3; 32],
        };
        let line = h.encode();
        assert_eq!(SegmentHeader::decode(&line[..line.len() - 1]).ok(), Some(h));
        for i in 0..line.len() - 1 {
            for bit in [0x01, 0x20, 0x80] {
                let mut bad = line.clone();
                bad[i] ^= bit;
                assert!(
                    SegmentHeader::decode(&bad[..bad.len() - 1]).is_err(),
                    "flip {bit:#x} at {i}"
                );
            }
        }
        let zero = SegmentHeader {
            first_seq: 0,
            prev: [1; 32],
        }
        .encode();
        assert!(SegmentHeader::decode(&zero[..zero.len() - 1]).is_err());
    }
}
