//! Reading the ledger (`custos telemetry sent`) and verifying it
//! (`custos telemetry verify-ledger`). Both may run while the agent appends:
//! they read a snapshot, treat an unterminated last line as an append in
//! progress, and start over if pruning removes a file under them.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use custos_model::wire::BatchPayload;
use custos_model::BatchId;

use super::error::LedgerError;
use super::format::{to_hex, Body};
use super::ledger_dir;
use super::scan::{walk, with_retries, TornTail};

/// Which sent batches [`LedgerReader::list`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only batches sent at or after this time (microseconds since the epoch).
    pub since: Option<i64>,
    /// Only batches whose record seq is at least this (for paging: the last
    /// seen seq + 1).
    pub from_seq: u64,
    /// At most this many batches (the oldest that match).
    pub limit: Option<usize>,
}

/// The server's acknowledgement of a sent batch, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckInfo {
    /// Seq of the ack record.
    pub seq: u64,
    /// When the acknowledgement arrived (microseconds since the epoch).
    pub time: i64,
    /// The server's acknowledgement id.
    pub ack_id: String,
    /// Events the server accepted.
    pub accepted: u64,
    /// Events the server refused.
    pub refused: u64,
}

/// One batch that left the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentBatch {
    /// Seq of the batch record.
    pub seq: u64,
    /// When it was sent (microseconds since the epoch).
    pub time: i64,
    /// The batch id.
    pub batch_id: BatchId,
    /// The payload exactly as sent: the JSON `BatchPayload` bytes before
    /// compression.
    pub payload: Vec<u8>,
    /// The server's acknowledgement (the newest ack record for this batch
    /// id), or `None` if none was recorded: the send failed, is still in
    /// progress, or the agent stopped before recording the answer.
    pub ack: Option<AckInfo>,
}

impl SentBatch {
    /// The payload parsed into events.
    pub fn decode(&self) -> Result<BatchPayload, LedgerError> {
        serde_json::from_slice(&self.payload).map_err(|e| {
            LedgerError::InvalidPayload(format!("batch {} (seq {}): {e}", self.batch_id, self.seq))
        })
    }

    /// The payload as text (it is JSON, so UTF-8; checked when read).
    pub fn payload_str(&self) -> &str {
        std::str::from_utf8(&self.payload).unwrap_or_default()
    }
}

/// Reads a ledger. Every record read is checked (hash, link, seq) on the
/// way, so damage is reported rather than shown.
#[derive(Clone, Debug)]
pub struct LedgerReader {
    dir: PathBuf,
}

impl LedgerReader {
    /// A reader for the ledger of `state_dir` ([`LedgerError::NotFound`]
    /// if it has none).
    pub fn open(state_dir: &Path) -> Result<LedgerReader, LedgerError> {
        let dir = ledger_dir(state_dir);
        if !dir.is_dir() {
            return Err(LedgerError::NotFound { path: dir });
        }
        Ok(LedgerReader { dir })
    }

    /// The sent batches passing `filter`, oldest first, each joined with
    /// the newest ack record for its batch id. Reads the whole ledger (acks
    /// follow their batches), holding only the returned payloads in memory.
    pub fn list(&self, filter: &Filter) -> Result<Vec<SentBatch>, LedgerError> {
        with_retries(|| {
            let mut out: Vec<SentBatch> = Vec::new();
            let mut by_id: HashMap<BatchId, Vec<usize>> = HashMap::new();
            walk(&self.dir, |rec, _, _| {
                match &rec.body {
                    Body::Batch { payload } => {
                        let wanted = rec.seq >= filter.from_seq
                            && filter.since.is_none_or(|s| rec.time >= s)
                            && filter.limit.is_none_or(|l| out.len() < l);
                        if wanted {
                            by_id.entry(rec.batch_id).or_default().push(out.len());
                            out.push(SentBatch {
                                seq: rec.seq,
                                time: rec.time,
                                batch_id: rec.batch_id,
                                payload: payload.to_vec(),
                                ack: None,
                            });
                        }
                    }
                    Body::Ack {
                        ack_id,
                        accepted,
                        refused,
                    } => {
                        for &i in by_id.get(&rec.batch_id).into_iter().flatten() {
                            if out[i].seq < rec.seq {
                                out[i].ack = Some(AckInfo {
                                    seq: rec.seq,
                                    time: rec.time,
                                    ack_id: ack_id.clone(),
                                    accepted: *accepted,
                                    refused: *refused,
                                });
                            }
                        }
                    }
                }
                Ok(())
            })?;
            Ok(out)
        })
    }
}

/// What [`verify`] checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records whose line, hash, JSON, seq and link were checked.
    pub records: u64,
    /// Of which batch records.
    pub batches: u64,
    /// Of which ack records.
    pub acks: u64,
    /// Batches present without an ack record after them.
    pub unacknowledged_batches: u64,
    /// Seq of the oldest record present (greater than 0 after pruning).
    pub first_seq: Option<u64>,
    /// Seq of the newest complete record.
    pub last_seq: Option<u64>,
    /// Hash of the newest complete record (lowercase hex): the chain head.
    pub head: Option<String>,
    /// Segment files read.
    pub segments: usize,
    /// Bytes checked.
    pub bytes: u64,
    /// An unterminated last line of the newest segment: a crash mid-append
    /// (cut by the next open) or an append in progress. Not damage.
    pub torn_tail: Option<TornTail>,
    /// A newest segment whose header line is incomplete: a crash while
    /// rotating (removed by the next open). Not damage.
    pub torn_segment: Option<PathBuf>,
}

/// Verifies the ledger of `state_dir` (see "What verify checks" in the
/// [module documentation](super)). Returns the first problem as
/// [`LedgerError::Damaged`], naming the file, line, seq and what is wrong.
/// Streams the files: memory does not grow with the ledger.
pub fn verify(state_dir: &Path) -> Result<VerifyReport, LedgerError> {
    let dir = ledger_dir(state_dir);
    with_retries(|| {
        let mut report = VerifyReport::default();
        let mut unacked: HashSet<BatchId> = HashSet::new();
        let walked = walk(&dir, |rec, _, _| {
            match rec.body {
                Body::Batch { .. } => {
                    report.batches += 1;
                    unacked.insert(rec.batch_id);
                }
                Body::Ack { .. } => {
                    report.acks += 1;
                    unacked.remove(&rec.batch_id);
                }
            }
            Ok(())
        })?;
        report.records = walked.records;
        report.unacknowledged_batches = unacked.len() as u64;
        report.segments = walked.segments;
        report.bytes = walked.bytes;
        if walked.records > 0 {
            report.first_seq = Some(walked.first_seq);
            if let Some(chain) = walked.chain {
                report.last_seq = Some(chain.next - 1);
                report.head = Some(to_hex(&chain.prev));
            }
        }
        report.torn_tail = walked.torn_tail;
        report.torn_segment = walked.torn_segment;
        Ok(report)
    })
}
