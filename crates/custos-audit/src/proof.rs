//! Inclusion and consistency proofs computed from a log directory.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::format::hexser;
use crate::format::split_line;
use crate::merkle::{
    consistency_ranges, inclusion_ranges, verify_consistency_path, verify_inclusion_path, Frontier,
    Hash, RangeHasher,
};
use crate::segments::{
    list_segments, read_header_strict, read_last_checkpoint, CheckpointLines, Line,
};
use crate::{AuditError, Checkpoint};

/// Proof that record `seq` is leaf `seq` of the Merkle tree of `tree_size`
/// records (RFC 6962 audit path, `O(log n)` hashes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// The record (leaf index).
    pub seq: u64,
    /// The tree size the proof is for (usually a checkpoint's size).
    pub tree_size: u64,
    /// The record's hash as stored (informational; verify against a hash you computed).
    #[serde(serialize_with = "hexser::ser", deserialize_with = "hexser::de")]
    pub leaf_hash: Hash,
    /// Sibling hashes, bottom-up.
    #[serde(
        serialize_with = "hexser::ser_vec",
        deserialize_with = "hexser::de_vec"
    )]
    pub path: Vec<Hash>,
}

/// Proof that the tree of `old_size` records is a prefix of the tree of
/// `new_size` records (RFC 6962 consistency proof, `O(log n)` hashes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    /// The older tree size.
    pub old_size: u64,
    /// The newer tree size.
    pub new_size: u64,
    /// The proof hashes.
    #[serde(
        serialize_with = "hexser::ser_vec",
        deserialize_with = "hexser::de_vec"
    )]
    pub path: Vec<Hash>,
}

/// Whether `proof` shows that `leaf_hash` is leaf `proof.seq` of the tree
/// with root `root` and size `proof.tree_size`. Pure.
pub fn verify_inclusion(proof: &InclusionProof, leaf_hash: &Hash, root: &Hash) -> bool {
    verify_inclusion_path(proof.seq, proof.tree_size, leaf_hash, &proof.path, root)
}

/// Whether `proof` shows that the tree with `old_root` is a prefix of the
/// tree with `new_root`. Pure.
pub fn verify_consistency(proof: &ConsistencyProof, old_root: &Hash, new_root: &Hash) -> bool {
    verify_consistency_path(
        proof.old_size,
        proof.new_size,
        old_root,
        new_root,
        &proof.path,
    )
}

/// The latest complete checkpoint in `dir`, if any (not verified; see
/// [`Checkpoint::verify`]).
pub fn latest_checkpoint(dir: &Path) -> Result<Option<Checkpoint>, AuditError> {
    Ok(read_last_checkpoint(dir)?.0)
}

/// The checkpoint of exactly `size` records in `dir`, if one was written
/// (not verified; see [`Checkpoint::verify`]). Streams `checkpoints.log`.
///
/// Verify proofs against the root of a checkpoint whose signature checks,
/// not against a root recomputed from the same files.
pub fn find_checkpoint(dir: &Path, size: u64) -> Result<Option<Checkpoint>, AuditError> {
    let mut lines = CheckpointLines::open(dir)?;
    while let Some((_, cp)) = lines.next_checkpoint()? {
        if cp.size == size {
            return Ok(Some(cp));
        }
        if cp.size > size {
            break;
        }
    }
    Ok(None)
}

/// The inclusion proof of record `seq` in the tree of `tree_size` records,
/// by default the size of the latest checkpoint.
///
/// Reads the records from the segment holding `seq` up to `tree_size`; the
/// segment header supplies everything needed from before it.
pub fn inclusion_proof(
    dir: &Path,
    seq: u64,
    tree_size: Option<u64>,
) -> Result<InclusionProof, AuditError> {
    let tree_size = match tree_size {
        Some(s) => s,
        None => {
            latest_checkpoint(dir)?
                .ok_or_else(|| AuditError::NoCheckpoint {
                    path: dir.to_path_buf(),
                })?
                .size
        }
    };
    if seq >= tree_size {
        return Err(AuditError::OutOfRange(format!(
            "record {seq} is not in a tree of {tree_size} records"
        )));
    }
    let mut ranges = inclusion_ranges(seq, tree_size);
    ranges.push(seq..seq + 1);
    let mut hashes = hash_ranges(dir, &ranges)?;
    let leaf_hash = hashes
        .pop()
        .ok_or_else(|| AuditError::OutOfRange("no leaf hash".into()))?;
    Ok(InclusionProof {
        seq,
        tree_size,
        leaf_hash,
        path: hashes,
    })
}

/// The consistency proof between the trees of `old_size` and `new_size`
/// records. Reads the records from the segment holding `old_size - 1` on.
pub fn consistency_proof(
    dir: &Path,
    old_size: u64,
    new_size: u64,
) -> Result<ConsistencyProof, AuditError> {
    if old_size > new_size {
        return Err(AuditError::OutOfRange(format!(
            "old size {old_size} is larger than new size {new_size}"
        )));
    }
    let ranges = consistency_ranges(old_size, new_size);
    // Also make sure the new tree exists even when the proof is empty.
    let mut all = ranges.clone();
    if new_size > 0 {
        all.push(new_size - 1..new_size);
    }
    let mut hashes = hash_ranges(dir, &all)?;
    hashes.truncate(ranges.len());
    Ok(ConsistencyProof {
        old_size,
        new_size,
        path: hashes,
    })
}

/// The Merkle root of the first `size` records, computed from the files.
///
/// This shows what the files say now; to detect tampering compare it with
/// (or verify proofs against) a signed [`Checkpoint`] root.
pub fn tree_root(dir: &Path, size: u64) -> Result<Hash, AuditError> {
    if size == 0 {
        return Ok(crate::merkle::empty_root());
    }
    let whole = std::iter::once(0..size).collect::<Vec<_>>();
    Ok(hash_ranges(dir, &whole)?
        .pop()
        .unwrap_or_else(crate::merkle::empty_root))
}

/// Hashes of the given leaf ranges, streaming records from the newest
/// segment whose header frontier makes that possible.
fn hash_ranges(dir: &Path, ranges: &[std::ops::Range<u64>]) -> Result<Vec<Hash>, AuditError> {
    if ranges.is_empty() {
        return Ok(Vec::new());
    }
    let segs = list_segments(dir)?;
    let Some(first) = segs.first() else {
        return Err(AuditError::OutOfRange(format!(
            "audit log {} has no records",
            dir.display()
        )));
    };
    let feasible = |p: u64| {
        Frontier::from_parts(p, vec![[0; 32]; p.count_ones() as usize])
            .is_some_and(|f| ranges.iter().all(|r| f.can_hash(r)))
    };
    let start = segs
        .iter()
        .rposition(|s| feasible(s.first_seq))
        .ok_or(AuditError::Pruned {
            first_kept: first.first_seq,
        })?;
    let (header, mut reader) = read_header_strict(&segs[start])?;
    let mut rh = RangeHasher::new(&header.frontier, ranges).ok_or_else(|| {
        AuditError::OutOfRange("proof ranges cannot be computed from this segment".into())
    })?;
    let mut idx = start;
    let mut buf = Vec::new();
    while rh.next_index() < rh.end() {
        match reader.next_line(&mut buf)? {
            Line::Complete => {
                let split = split_line(&buf).map_err(|reason| crate::Damage::Unparsable {
                    seq: rh.next_index(),
                    path: reader.path().to_path_buf(),
                    reason: reason.to_string(),
                })?;
                rh.push(split.hash);
            }
            Line::Eof if idx + 1 < segs.len() => {
                idx += 1;
                let (h, r) = read_header_strict(&segs[idx])?;
                if h.first_seq != rh.next_index() {
                    return Err(crate::Damage::MissingRecords {
                        seq: rh.next_index(),
                        path: segs[idx].path.clone(),
                        starts_at: h.first_seq,
                    }
                    .into());
                }
                reader = r;
            }
            Line::Eof | Line::Partial | Line::TooLong => {
                return Err(AuditError::OutOfRange(format!(
                    "tree size {} exceeds the {} records in the log",
                    rh.end(),
                    rh.next_index()
                )))
            }
        }
    }
    rh.finish()
        .ok_or_else(|| AuditError::OutOfRange("not all proof ranges could be computed".into()))
}
