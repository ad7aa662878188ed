//! The batch wire format, version 1: how an agent ships events to the server.
//!
//! A batch travels as the body of `POST /v1/ingest` over mutual TLS. The
//! frame is fixed-header, little-endian:
//!
//! ```text
//! offset size field
//! 0      6    magic "CUSTOS"
//! 6      1    kind, b'B' (batch)
//! 7      1    format version, 1
//! 8      1    codec: 0 = none, 1 = zstd
//! 9      3    reserved, must be zero
//! 12     4    u32 length of the decoded payload in bytes
//! 16     4    u32 CRC-32C of the body (the bytes after this header)
//! 20     ..   body: the payload, encoded with the codec
//! ```
//!
//! The payload is a UTF-8 JSON object [`BatchPayload`]: a batch id chosen
//! by the agent (the server stores a batch id at most once per workspace, so
//! a retry never stores twice) and the events. The workspace and agent are
//! not in the payload: the server takes them from the client certificate.
//!
//! Decoding is the single entry point for these untrusted bytes. It checks,
//! in order: the frame size, the header, the CRC, the declared length against
//! [`Limits`], the decompressed length against the declared one, the JSON,
//! and every event against [`Limits`] and the naming rules. Each failure is a
//! distinct [`WireError`] naming what was wrong. Version changes get a new
//! version byte; a decoder refuses versions it does not know.

use crate::{validate_column_name, BatchId, Event, NameError, TimestampMicros, Value};
use serde::{Deserialize, Serialize};

/// The frame magic.
pub const MAGIC: &[u8; 6] = b"CUSTOS";
/// The frame kind byte for event batches.
pub const KIND_BATCH: u8 = b'B';
/// The only format version this build writes and reads.
pub const VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 20;
/// The media type of a framed batch.
pub const CONTENT_TYPE: &str = "application/vnd.custos.batch.v1";

/// Codec of the frame body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// Uncompressed.
    None = 0,
    /// Zstandard.
    Zstd = 1,
}

/// The JSON payload of a batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchPayload {
    /// Unique per batch; the deduplication key.
    pub batch_id: BatchId,
    /// When the agent built the batch (microseconds since the epoch).
    pub created: TimestampMicros,
    /// The events.
    pub events: Vec<Event>,
}

/// Bounds applied when decoding untrusted batches.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest frame accepted (header + body), in bytes.
    pub max_frame_bytes: usize,
    /// Largest decoded payload, in bytes.
    pub max_payload_bytes: usize,
    /// Most events in one batch.
    pub max_events: usize,
    /// Longest message, in bytes.
    pub max_message_bytes: usize,
    /// Longest host name, in bytes.
    pub max_host_bytes: usize,
    /// Most attributes on one event.
    pub max_attrs: usize,
    /// Longest string attribute value, in bytes.
    pub max_attr_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 16 << 20,
            max_payload_bytes: 64 << 20,
            max_events: 100_000,
            max_message_bytes: 1 << 20,
            max_host_bytes: 255,
            max_attrs: 256,
            max_attr_bytes: 64 << 10,
        }
    }
}

/// Why a batch was refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than a header.
    #[error("batch truncated: {0} bytes is shorter than the 20-byte header")]
    TooShort(usize),
    /// The frame is larger than allowed.
    #[error("batch too large: {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Received size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a custos frame.
    #[error("not a custos batch: bad magic")]
    BadMagic,
    /// Another kind of frame.
    #[error("not a batch frame: kind byte {0:#04x}")]
    BadKind(u8),
    /// A version this build does not read.
    #[error("unsupported batch format version {0} (this server reads version 1)")]
    UnsupportedVersion(u8),
    /// Unknown codec byte.
    #[error("unsupported batch codec {0}")]
    UnsupportedCodec(u8),
    /// Reserved bytes not zero.
    #[error("malformed batch header: reserved bytes are not zero")]
    ReservedNotZero,
    /// Body checksum mismatch (corrupt or truncated body).
    #[error("batch body checksum mismatch (corrupt or truncated): expected {expected:#010x}, got {actual:#010x}")]
    Checksum {
        /// From the header.
        expected: u32,
        /// Computed.
        actual: u32,
    },
    /// Declared payload larger than allowed.
    #[error("batch payload too large: declared {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Declared size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The body did not decompress to the declared length.
    #[error("batch body does not decompress to the declared {declared} bytes: {reason}")]
    Decompress {
        /// Declared payload length.
        declared: usize,
        /// What went wrong.
        reason: String,
    },
    /// The payload is not valid JSON of the expected shape.
    #[error("malformed batch payload: {0}")]
    Json(String),
    /// Too many events.
    #[error("batch has {count} events, more than the limit of {limit}")]
    TooManyEvents {
        /// Events in the batch.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// One event broke a rule.
    #[error("event {index}: {reason}")]
    Event {
        /// Index of the event in the batch.
        index: usize,
        /// What was wrong.
        reason: String,
    },
}

/// Encode a payload as a version-1 frame with the given codec.
///
/// The same as `encode_raw(&payload_json(payload), codec)`.
pub fn encode(payload: &BatchPayload, codec: Codec) -> Vec<u8> {
    encode_raw(&payload_json(payload), codec)
}

/// The payload's JSON: exactly the bytes a frame carries (before the codec)
/// and a decoder gets back after decompressing. An agent that must record
/// what leaves the host (its transparency ledger) serialises once with this,
/// records these bytes, and frames the same bytes with [`encode_raw`].
pub fn payload_json(payload: &BatchPayload) -> Vec<u8> {
    // Serialising plain data structures to a Vec cannot fail.
    serde_json::to_vec(payload).unwrap_or_default()
}

/// Frame already-serialised payload bytes (from [`payload_json`]) without
/// changing them. Also used by tests and tools that need to build
/// deliberately malformed frames.
pub fn encode_raw(json: &[u8], codec: Codec) -> Vec<u8> {
    let body = match codec {
        Codec::None => json.to_vec(),
        // Compressing an in-memory buffer only fails on allocation failure.
        Codec::Zstd => zstd::bulk::compress(json, 3).unwrap_or_else(|_| json.to_vec()),
    };
    let codec = if codec == Codec::Zstd && body.len() == json.len() && body == json {
        Codec::None
    } else {
        codec
    };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.push(KIND_BATCH);
    out.push(VERSION);
    out.push(codec as u8);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decode and validate a frame.
pub fn decode(frame: &[u8], limits: &Limits) -> Result<BatchPayload, WireError> {
    if frame.len() > limits.max_frame_bytes {
        return Err(WireError::FrameTooLarge { size: frame.len(), limit: limits.max_frame_bytes });
    }
    if frame.len() < HEADER_LEN {
        return Err(WireError::TooShort(frame.len()));
    }
    if &frame[0..6] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if frame[6] != KIND_BATCH {
        return Err(WireError::BadKind(frame[6]));
    }
    if frame[7] != VERSION {
        return Err(WireError::UnsupportedVersion(frame[7]));
    }
    let codec = match frame[8] {
        0 => Codec::None,
        1 => Codec::Zstd,
        other => return Err(WireError::UnsupportedCodec(other)),
    };
    if frame[9..12] != [0, 0, 0] {
        return Err(WireError::ReservedNotZero);
    }
    let declared = u32::from_le_bytes([frame[12], frame[13], frame[14], frame[15]]) as usize;
    let expected = u32::from_le_bytes([frame[16], frame[17], frame[18], frame[19]]);
    let body = &frame[HEADER_LEN..];
    let actual = crc32c::crc32c(body);
    if actual != expected {
        return Err(WireError::Checksum { expected, actual });
    }
    if declared > limits.max_payload_bytes {
        return Err(WireError::PayloadTooLarge { size: declared, limit: limits.max_payload_bytes });
    }
    let decoded;
    let json: &[u8] = match codec {
        Codec::None => body,
        Codec::Zstd => {
            decoded = zstd::bulk::decompress(body, declared)
                .map_err(|e| WireError::Decompress { declared, reason: e.to_string() })?;
            &decoded
        }
    };
    if json.len() != declared {
        return Err(WireError::Decompress {
            declared,
            reason: format!("got {} bytes", json.len()),
        });
    }
    let payload: BatchPayload =
        serde_json::from_slice(json).map_err(|e| WireError::Json(e.to_string()))?;
    validate(&payload, limits)?;
    Ok(payload)
}

/// Check every event of a payload against the limits and naming rules.
pub fn validate(payload: &BatchPayload, limits: &Limits) -> Result<(), WireError> {
    if payload.events.len() > limits.max_events {
        return Err(WireError::TooManyEvents { count: payload.events.len(), limit: limits.max_events });
    }
    for (index, ev) in payload.events.iter().enumerate() {
        let bad = |reason: String| WireError::Event { index, reason };
        if ev.message.len() > limits.max_message_bytes {
            return Err(bad(format!(
                "message of {} bytes exceeds the limit of {} bytes",
                ev.message.len(),
                limits.max_message_bytes
            )));
        }
        if ev.host.len() > limits.max_host_bytes {
            return Err(bad(format!("host name longer than {} bytes", limits.max_host_bytes)));
        }
        if ev.attrs.len() > limits.max_attrs {
            return Err(bad(format!("{} attributes exceed the limit of {}", ev.attrs.len(), limits.max_attrs)));
        }
        for (k, v) in &ev.attrs {
            validate_column_name(k).map_err(|e: NameError| bad(format!("attribute: {e}")))?;
            match v {
                Value::Str(s) if s.len() > limits.max_attr_bytes => {
                    return Err(bad(format!(
                        "attribute {k:?} of {} bytes exceeds the limit of {} bytes",
                        s.len(),
                        limits.max_attr_bytes
                    )))
                }
                Value::Float(f) if !f.is_finite() => {
                    return Err(bad(format!("attribute {k:?} is not a finite number")))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Category, Level, TableName};
    use proptest::prelude::*;

    fn sample(n: usize) -> BatchPayload {
        BatchPayload {
            batch_id: BatchId::new(),
            created: 1,
            events: (0..n)
                .map(|i| Event {
                    table: TableName::new("logs").unwrap(),
                    time: i as i64,
                    level: Level::Enhanced,
                    category: Category::Logs,
                    host: "h1".into(),
                    message: format!("line {i}"),
                    attrs: [("n".to_string(), Value::Int(i as i64))].into_iter().collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn round_trips_with_both_codecs() {
        let p = sample(10);
        for codec in [Codec::None, Codec::Zstd] {
            assert_eq!(decode(&encode(&p, codec), &Limits::default()).unwrap(), p);
        }
    }

    #[test]
    fn a_frame_of_payload_json_carries_exactly_those_bytes() {
        let p = sample(50);
        let json = payload_json(&p);
        for codec in [Codec::None, Codec::Zstd] {
            let frame = encode_raw(&json, codec);
            assert_eq!(frame, encode(&p, codec));
            let body = &frame[HEADER_LEN..];
            let carried = match frame[8] {
                0 => body.to_vec(),
                _ => zstd::bulk::decompress(body, json.len()).unwrap(),
            };
            assert_eq!(carried, json);
            assert_eq!(decode(&frame, &Limits::default()).unwrap(), p);
        }
    }

    #[test]
    fn truncated_frames_are_refused_with_a_clear_error() {
        let f = encode(&sample(100), Codec::Zstd);
        for cut in [0, 5, 19, 20, f.len() / 2, f.len() - 1] {
            let err = decode(&f[..cut], &Limits::default()).unwrap_err().to_string();
            assert!(err.contains("truncated") || err.contains("checksum"), "cut {cut}: {err}");
        }
    }

    #[test]
    fn oversized_frames_and_payloads_are_refused() {
        let f = encode(&sample(100), Codec::Zstd);
        let limits = Limits { max_frame_bytes: 10 + HEADER_LEN, ..Limits::default() };
        assert!(matches!(decode(&f, &limits), Err(WireError::FrameTooLarge { .. })));
        let limits = Limits { max_payload_bytes: 100, ..Limits::default() };
        assert!(matches!(decode(&f, &limits), Err(WireError::PayloadTooLarge { .. })));
        let limits = Limits { max_events: 5, ..Limits::default() };
        assert!(matches!(decode(&f, &limits), Err(WireError::TooManyEvents { .. })));
    }

    #[test]
    fn lying_length_is_refused() {
        let mut f = encode(&sample(3), Codec::Zstd);
        f[12..16].copy_from_slice(&5u32.to_le_bytes());
        assert!(matches!(decode(&f, &Limits::default()), Err(WireError::Decompress { .. })));
    }

    #[test]
    fn unknown_version_and_bad_names_are_refused() {
        let mut f = encode(&sample(1), Codec::None);
        f[7] = 9;
        assert!(matches!(decode(&f, &Limits::default()), Err(WireError::UnsupportedVersion(9))));
        let json = br#"{"batch_id":"0190c7a4-7c3e-7cc0-8000-000000000000","created":0,"events":[{"table":"Bad Table","time":0,"level":2,"category":"logs","host":"h"}]}"#;
        let err = decode(&encode_raw(json, Codec::Zstd), &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("table"), "{err}");
        let json = br#"{"batch_id":"0190c7a4-7c3e-7cc0-8000-000000000000","created":0,"events":[{"table":"logs","time":0,"level":2,"category":"logs","host":"h","attrs":{"time":1}}]}"#;
        let err = decode(&encode_raw(json, Codec::Zstd), &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
    }

    #[test]
    fn a_workspace_field_in_the_payload_is_refused() {
        let json = br#"{"batch_id":"0190c7a4-7c3e-7cc0-8000-000000000000","created":0,"workspace_id":"x","events":[]}"#;
        let err = decode(&encode_raw(json, Codec::None), &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("workspace_id"), "{err}");
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, &Limits::default());
        }

        #[test]
        fn decode_never_panics_on_mutated_frames(pos in 0usize..400, byte in any::<u8>()) {
            let mut f = encode(&sample(5), Codec::Zstd);
            let p = pos % f.len();
            f[p] = byte;
            let _ = decode(&f, &Limits::default());
        }
    }
}
