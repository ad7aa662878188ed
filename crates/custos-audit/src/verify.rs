//! Offline verification of a whole log directory.

use std::path::Path;

use ed25519_dalek::VerifyingKey;

use crate::error::Damage;
use crate::merkle::Frontier;
use crate::segments::{
    check_record, checkpoint_path, list_segments, read_header, Chain, CheckpointLines, HeaderRead,
    Line,
};
use crate::{AuditError, Checkpoint};

/// What [`verify`] checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records whose hash, seq and chain link were checked.
    pub records_checked: u64,
    /// Seq of the oldest record present (greater than 0 after pruning).
    pub first_seq: Option<u64>,
    /// Seq of the newest complete record.
    pub last_seq: Option<u64>,
    /// Segment files read.
    pub segments_checked: usize,
    /// Checkpoints whose signature, Merkle root and chain head were checked against the records.
    pub checkpoints_checked: u64,
    /// Checkpoints older than the pruned prefix: only their signature could be checked.
    pub checkpoints_signature_only: u64,
    /// The newest checkpoint.
    pub last_checkpoint: Option<Checkpoint>,
    /// Records after the newest checkpoint (not yet signed).
    pub unsigned_records: u64,
    /// The newest segment ends with an unterminated line no checkpoint covers
    /// (a write in progress, or a crash the writer has not recovered yet).
    pub incomplete_tail: bool,
}

struct Cps<'a> {
    lines: CheckpointLines,
    key: &'a VerifyingKey,
    prev_size: Option<u64>,
    next: Option<(u64, Checkpoint)>,
}

impl Cps<'_> {
    fn advance(&mut self, dir: &Path) -> Result<(), AuditError> {
        self.next = self.lines.next_checkpoint()?;
        if let Some((line, cp)) = &self.next {
            if let Some(previous) = self.prev_size {
                if cp.size <= previous {
                    return Err(Damage::CheckpointOrder {
                        line: *line,
                        path: checkpoint_path(dir),
                        size: cp.size,
                        previous,
                    }
                    .into());
                }
            }
            self.prev_size = Some(cp.size);
        }
        Ok(())
    }

    /// Checks the signature of the next checkpoint (done when it is used,
    /// so that record damage before it is reported first).
    fn check_signature(&self, dir: &Path) -> Result<(), AuditError> {
        match &self.next {
            Some((line, cp)) if !cp.verify(self.key) => Err(Damage::CheckpointSignature {
                line: *line,
                path: checkpoint_path(dir),
                size: cp.size,
            }
            .into()),
            _ => Ok(()),
        }
    }
}

/// Verifies the log in `dir` against the public key: every record's hash,
/// seq and `prev` link, segment headers, every checkpoint's signature, and
/// every checkpoint's Merkle root and chain head against the records.
///
/// Returns the first problem as [`AuditError::Damaged`]; [`Damage::seq`]
/// names the first bad record where one is to blame. A log truncated below
/// a signed checkpoint is reported as [`Damage::Truncated`]. Safe to run
/// while a writer appends (a final unterminated line not covered by a
/// checkpoint is reported in [`VerifyReport::incomplete_tail`], not as damage).
/// Streams the files; memory use does not grow with the log.
pub fn verify(dir: &Path, key: &VerifyingKey) -> Result<VerifyReport, AuditError> {
    let mut report = VerifyReport::default();
    let mut cps = Cps {
        lines: CheckpointLines::open(dir)?,
        key,
        prev_size: None,
        next: None,
    };
    cps.advance(dir)?;
    let segs = list_segments(dir)?;

    let mut chain = Chain {
        next: 0,
        prev: [0; 32],
    };
    let mut frontier = Frontier::new();
    // Size of the last checkpoint verified against records (start of the suspect range).
    let mut verified_upto = 0u64;
    let mut buf = Vec::new();
    let mut started = false;

    // Checks the checkpoint of size `chain.next`, if that is the next one.
    let at_size = |cps: &mut Cps<'_>,
                   chain: &Chain,
                   frontier: &Frontier,
                   report: &mut VerifyReport,
                   verified_upto: &mut u64|
     -> Result<(), AuditError> {
        while let Some((_, cp)) = cps.next.as_ref().filter(|(_, cp)| cp.size <= chain.next) {
            cps.check_signature(dir)?;
            if cp.size < chain.next {
                // Older than the first record present: pruned.
                report.checkpoints_signature_only += 1;
            } else {
                if cp.root != frontier.root() {
                    return Err(Damage::CheckpointRoot {
                        path: checkpoint_path(dir),
                        size: cp.size,
                        from: *verified_upto,
                    }
                    .into());
                }
                if cp.size > 0 && cp.chain_head != chain.prev {
                    return Err(Damage::CheckpointChainHead {
                        path: checkpoint_path(dir),
                        size: cp.size,
                        seq: cp.size - 1,
                    }
                    .into());
                }
                report.checkpoints_checked += 1;
                *verified_upto = cp.size;
            }
            report.last_checkpoint = Some(cp.clone());
            cps.advance(dir)?;
        }
        Ok(())
    };

    for (i, seg) in segs.iter().enumerate() {
        let is_last = i + 1 == segs.len();
        let (h, mut r) = match read_header(seg)? {
            HeaderRead::Ok(h, r) => (h, r),
            // The writer is creating this segment right now.
            HeaderRead::Torn if is_last => break,
            HeaderRead::Torn => {
                return Err(Damage::SegmentHeader {
                    path: seg.path.clone(),
                    reason: "header line is incomplete".into(),
                }
                .into())
            }
        };
        report.segments_checked += 1;
        if !started {
            started = true;
            chain = Chain {
                next: h.first_seq,
                prev: h.prev,
            };
            frontier = h.frontier;
            verified_upto = h.first_seq;
            if h.first_seq > 0 {
                report.first_seq = Some(h.first_seq);
            }
            at_size(&mut cps, &chain, &frontier, &mut report, &mut verified_upto)?;
        } else {
            if h.first_seq != chain.next {
                return Err(Damage::MissingRecords {
                    seq: chain.next,
                    path: seg.path.clone(),
                    starts_at: h.first_seq,
                }
                .into());
            }
            if h.prev != chain.prev {
                return Err(Damage::SegmentHeader {
                    path: seg.path.clone(),
                    reason: format!(
                        "prev does not match the hash of record {}",
                        chain.next.saturating_sub(1)
                    ),
                }
                .into());
            }
            if h.frontier != frontier {
                return Err(Damage::SegmentHeader {
                    path: seg.path.clone(),
                    reason: "merkle frontier does not match the records before it".into(),
                }
                .into());
            }
        }
        loop {
            match r.next_line(&mut buf)? {
                Line::Complete => {
                    let (hash, rec) = check_record(&buf, &chain, &seg.path)?;
                    report.first_seq.get_or_insert(rec.seq);
                    report.last_seq = Some(rec.seq);
                    report.records_checked += 1;
                    chain = Chain {
                        next: chain.next + 1,
                        prev: hash,
                    };
                    frontier.push(hash);
                    at_size(&mut cps, &chain, &frontier, &mut report, &mut verified_upto)?;
                }
                Line::Eof => break,
                Line::TooLong => {
                    return Err(Damage::Unparsable {
                        seq: chain.next,
                        path: seg.path.clone(),
                        reason: "line too long".into(),
                    }
                    .into())
                }
                Line::Partial => {
                    let covered = cps
                        .next
                        .as_ref()
                        .is_some_and(|(_, cp)| cp.size > chain.next);
                    if covered {
                        cps.check_signature(dir)?;
                    }
                    if !is_last || covered {
                        return Err(Damage::Incomplete {
                            seq: chain.next,
                            path: seg.path.clone(),
                        }
                        .into());
                    }
                    report.incomplete_tail = true;
                    break;
                }
            }
        }
    }

    if let Some((_, cp)) = &cps.next {
        cps.check_signature(dir)?;
        return Err(Damage::Truncated {
            path: checkpoint_path(dir),
            claimed: cp.size,
            present: chain.next,
        }
        .into());
    }
    report.unsigned_records = chain.next
        - report
            .last_checkpoint
            .as_ref()
            .map_or(0, |c| c.size)
            .min(chain.next);
    Ok(report)
}
