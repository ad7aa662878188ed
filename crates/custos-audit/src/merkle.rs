//! RFC 6962 (Certificate Transparency) Merkle tree hashing, proofs and
//! their verification. Pure, synchronous, no I/O.
//!
//! * leaf hash: `SHA-256(0x00 || leaf bytes)`
//! * node hash: `SHA-256(0x01 || left || right)`
//! * the tree over `n > 1` leaves splits at `k`, the largest power of two
//!   smaller than `n`: `MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n]))`;
//!   the empty tree's hash is `SHA-256("")`.
//!
//! Proof generation follows RFC 6962 §2.1.1 (`PATH`) and §2.1.2 (`PROOF`);
//! verification follows RFC 9162 §2.1.3.2 and §2.1.4.2. Proofs hold
//! `O(log n)` hashes.
//!
//! Everything here works on leaf *hashes*: the audit log's record hash is
//! already the RFC 6962 leaf hash of the record's bytes.
//!
//! A [`Frontier`] (also called a compact range) is the list of roots of the
//! perfect subtrees covering leaves `[0, n)`, one per set bit of `n`, largest
//! first. It is enough to compute the root of the tree of size `n` and to keep
//! extending it, and — because every left sibling on the path of a leaf at or
//! after `n` that lies entirely before `n` is one of its nodes — it is all a
//! prover needs of a pruned prefix. [`RangeHasher`] uses that to compute the
//! subtree hashes a proof needs from a frontier plus the leaves after it.

use std::ops::Range;

use sha2::{Digest, Sha256};

/// A SHA-256 hash: a leaf hash, a node hash or a tree root.
pub type Hash = [u8; 32];

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The RFC 6962 leaf hash of `data`: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// The RFC 6962 interior node hash: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two strictly smaller than `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The Merkle tree hash (root) of the given leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            // usize -> u64 is lossless on every supported target; the split
            // point is < n, so it fits back into usize.
            let k = split_point(n as u64) as usize;
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The leaf ranges whose subtree hashes make up the inclusion proof of leaf
/// `index` in the tree of `size` leaves, in proof order (bottom-up).
///
/// Each range is a node of the tree (RFC 6962 `PATH(m, D[n])`). Empty when
/// `size <= 1`; the caller checks `index < size`.
pub fn inclusion_ranges(index: u64, size: u64) -> Vec<Range<u64>> {
    fn path(m: u64, lo: u64, hi: u64, out: &mut Vec<Range<u64>>) {
        let n = hi - lo;
        if n <= 1 {
            return;
        }
        let k = split_point(n);
        if m < lo + k {
            path(m, lo, lo + k, out);
            out.push(lo + k..hi);
        } else {
            path(m, lo + k, hi, out);
            out.push(lo..lo + k);
        }
    }
    let mut out = Vec::new();
    if index < size {
        path(index, 0, size, &mut out);
    }
    out
}

/// The leaf ranges whose subtree hashes make up the consistency proof between
/// the trees of `old_size` and `new_size` leaves (RFC 6962 `PROOF(m, D[n])`),
/// in proof order. Empty when `old_size == 0` or `old_size >= new_size`.
pub fn consistency_ranges(old_size: u64, new_size: u64) -> Vec<Range<u64>> {
    fn subproof(m: u64, lo: u64, hi: u64, whole: bool, out: &mut Vec<Range<u64>>) {
        let n = hi - lo;
        if m == n {
            if !whole {
                out.push(lo..hi);
            }
            return;
        }
        let k = split_point(n);
        if m <= k {
            subproof(m, lo, lo + k, whole, out);
            out.push(lo + k..hi);
        } else {
            subproof(m - k, lo + k, hi, false, out);
            out.push(lo..lo + k);
        }
    }
    let mut out = Vec::new();
    if old_size > 0 && old_size < new_size {
        subproof(old_size, 0, new_size, true, &mut out);
    }
    out
}

fn hash_ranges(leaves: &[Hash], ranges: Vec<Range<u64>>) -> Vec<Hash> {
    // Ranges come from inclusion_ranges/consistency_ranges over a size that
    // is leaves.len(), so they index within the slice.
    ranges
        .into_iter()
        .map(|r| root(&leaves[r.start as usize..r.end as usize]))
        .collect()
}

/// The inclusion proof (audit path) of leaf `index` in the tree over all of
/// `leaves`, or `None` when `index` is out of range.
pub fn inclusion_path(leaves: &[Hash], index: u64) -> Option<Vec<Hash>> {
    let size = leaves.len() as u64;
    (index < size).then(|| hash_ranges(leaves, inclusion_ranges(index, size)))
}

/// The consistency proof from the tree over `leaves[..old_size]` to the tree
/// over all of `leaves`, or `None` when `old_size > leaves.len()`.
pub fn consistency_path(leaves: &[Hash], old_size: u64) -> Option<Vec<Hash>> {
    let size = leaves.len() as u64;
    (old_size <= size).then(|| hash_ranges(leaves, consistency_ranges(old_size, size)))
}

/// Verifies that `leaf` is leaf `index` of the tree of `size` leaves whose
/// root is `root`, given the audit `path` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion_path(
    index: u64,
    size: u64,
    leaf: &Hash,
    path: &[Hash],
    root: &Hash,
) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// Verifies that the tree of `old_size` leaves with root `old_root` is a
/// prefix of the tree of `new_size` leaves with root `new_root`, given the
/// consistency `path` (RFC 9162 §2.1.4.2).
///
/// Degenerate cases: equal sizes need an empty path and equal roots; an old
/// size of 0 needs an empty path and `old_root` equal to [`empty_root`].
pub fn verify_consistency_path(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    path: &[Hash],
) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return path.is_empty() && old_root == new_root;
    }
    if old_size == 0 {
        return path.is_empty() && *old_root == empty_root();
    }
    let mut nodes: Vec<Hash> = Vec::with_capacity(path.len() + 1);
    if old_size.is_power_of_two() {
        nodes.push(*old_root);
    }
    nodes.extend_from_slice(path);
    let Some((first, rest)) = nodes.split_first() else {
        return false;
    };
    let (mut f, mut s) = (old_size - 1, new_size - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && fr == *old_root && sr == *new_root
}

/// The compact range `[0, size)`: roots of the perfect subtrees covering the
/// first `size` leaves, one per set bit of `size`, largest (leftmost) first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a frontier from its parts; `None` unless there is exactly one
    /// node per set bit of `size`.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Option<Self> {
        (nodes.len() == size.count_ones() as usize).then_some(Frontier { size, nodes })
    }

    /// Number of leaves covered.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The subtree roots, largest (leftmost) first.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Appends one leaf hash. Amortised O(1) node hashes.
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut s = self.size;
        while s & 1 == 1 {
            // One node per set bit of size: a set low bit means a node to merge.
            let Some(left) = self.nodes.pop() else { break };
            h = node_hash(&left, &h);
            s >>= 1;
        }
        self.nodes.push(h);
        self.size += 1;
    }

    /// The root of the tree over the covered leaves.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }

    /// The leaf ranges of the nodes, left to right.
    pub fn node_ranges(&self) -> Vec<Range<u64>> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut start = 0u64;
        for bit in (0..64).rev() {
            let w = 1u64 << bit;
            if self.size & w != 0 {
                out.push(start..start + w);
                start += w;
            }
        }
        out
    }

    /// The frontier of leaves `[at, size)` (positions relative to `at`), when
    /// `at` is a node boundary (0, `size`, or the end of a node).
    fn suffix_from(&self, at: u64) -> Option<Frontier> {
        if at == self.size {
            return Some(Frontier::new());
        }
        let ranges = self.node_ranges();
        let i = ranges.iter().position(|r| r.start == at)?;
        Some(Frontier {
            size: self.size - at,
            nodes: self.nodes[i..].to_vec(),
        })
    }

    /// The hash of `[a, b)` when both are node boundaries and `a < b`.
    fn span_hash(&self, a: u64, b: u64) -> Option<Hash> {
        let ranges = self.node_ranges();
        let i = ranges.iter().position(|r| r.start == a)?;
        let j = ranges.iter().position(|r| r.end == b)?;
        (i <= j).then(|| {
            Frontier {
                size: b - a,
                nodes: self.nodes[i..=j].to_vec(),
            }
            .root()
        })
    }

    /// Whether `range` can be hashed from this frontier plus the leaves that
    /// follow it (see [`RangeHasher`]).
    pub fn can_hash(&self, range: &Range<u64>) -> bool {
        let (a, b, p) = (range.start, range.end, self.size);
        if a >= b {
            return false;
        }
        if a >= p {
            return true;
        }
        let boundary = |x: u64| x == 0 || x == p || self.node_ranges().iter().any(|r| r.end == x);
        boundary(a) && (b > p || boundary(b))
    }
}

/// Computes the hashes of a set of leaf ranges from a [`Frontier`] of
/// `[0, p)` plus the leaf hashes from `p` on, fed in order with
/// [`RangeHasher::push`].
///
/// A range may start inside the prefix only at a node boundary of the
/// frontier ([`Frontier::can_hash`]); proof ranges always do when `p` is at
/// most the proven leaf (inclusion) or the old size (consistency).
#[derive(Debug)]
pub struct RangeHasher {
    next: u64,
    end: u64,
    targets: Vec<Target>,
}

#[derive(Debug)]
struct Target {
    range: Range<u64>,
    acc: Frontier,
    done: Option<Hash>,
}

impl RangeHasher {
    /// Plans the computation; `None` if some range cannot be hashed from
    /// `base` (see [`Frontier::can_hash`]).
    pub fn new(base: &Frontier, ranges: &[Range<u64>]) -> Option<Self> {
        let p = base.size();
        let mut targets = Vec::with_capacity(ranges.len());
        let mut end = p;
        for r in ranges {
            if !base.can_hash(r) {
                return None;
            }
            let t = if r.end <= p {
                Target {
                    range: r.clone(),
                    acc: Frontier::new(),
                    done: Some(base.span_hash(r.start, r.end)?),
                }
            } else if r.start < p {
                Target {
                    range: r.clone(),
                    acc: base.suffix_from(r.start)?,
                    done: None,
                }
            } else {
                Target {
                    range: r.clone(),
                    acc: Frontier::new(),
                    done: None,
                }
            };
            end = end.max(r.end);
            targets.push(t);
        }
        Some(RangeHasher {
            next: p,
            end,
            targets,
        })
    }

    /// Index of the next leaf [`push`](Self::push) expects.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// One past the last leaf any range needs; pushing can stop there.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Feeds the leaf hash at [`next_index`](Self::next_index).
    pub fn push(&mut self, leaf: Hash) {
        let i = self.next;
        for t in &mut self.targets {
            if t.done.is_none() && t.range.contains(&i) {
                t.acc.push(leaf);
                if i + 1 == t.range.end {
                    t.done = Some(t.acc.root());
                }
            }
        }
        self.next += 1;
    }

    /// The range hashes in the order given to [`new`](Self::new), or `None`
    /// if not all needed leaves were pushed.
    pub fn finish(self) -> Option<Vec<Hash>> {
        self.targets.into_iter().map(|t| t.done).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Hash {
        let v = hex::decode(s).unwrap();
        v.try_into().unwrap()
    }

    /// The Certificate Transparency reference inputs (RFC 6962 test data used
    /// by certificate-transparency-go and the C++ log).
    fn ct_leaves() -> Vec<Hash> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|s| leaf_hash(&hex::decode(s).unwrap()))
        .collect()
    }

    const CT_ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn roots_match_the_ct_reference_vectors() {
        let leaves = ct_leaves();
        for (n, want) in CT_ROOTS.iter().enumerate() {
            assert_eq!(root(&leaves[..n]), h(want), "size {n}");
            let mut f = Frontier::new();
            for l in &leaves[..n] {
                f.push(*l);
            }
            assert_eq!(f.root(), h(want), "frontier size {n}");
        }
    }

    #[test]
    fn inclusion_proofs_match_the_ct_reference_vectors() {
        let leaves = ct_leaves();
        let cases: [(u64, &[&str]); 2] = [
            (
                0,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (index, want) in cases {
            let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
            assert_eq!(inclusion_path(&leaves, index).unwrap(), want);
            assert!(verify_inclusion_path(
                index,
                8,
                &leaves[index as usize],
                &want,
                &h(CT_ROOTS[8])
            ));
        }
    }

    #[test]
    fn consistency_proofs_match_the_ct_reference_vectors() {
        let leaves = ct_leaves();
        let cases: [(u64, &[&str]); 2] = [
            (
                2,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (old, want) in cases {
            let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
            assert_eq!(consistency_path(&leaves, old).unwrap(), want);
            assert!(verify_consistency_path(
                old,
                8,
                &h(CT_ROOTS[old as usize]),
                &h(CT_ROOTS[8]),
                &want
            ));
        }
    }

    #[test]
    fn degenerate_cases() {
        let leaves = ct_leaves();
        let r4 = root(&leaves[..4]);
        let r5 = root(&leaves[..5]);
        assert!(verify_consistency_path(4, 4, &r4, &r4, &[]));
        assert!(!verify_consistency_path(4, 4, &r4, &r5, &[]));
        assert!(!verify_consistency_path(4, 4, &r4, &r4, &[[0; 32]]));
        assert!(verify_consistency_path(
            0,
            8,
            &empty_root(),
            &h(CT_ROOTS[8]),
            &[]
        ));
        assert!(!verify_consistency_path(0, 8, &r4, &h(CT_ROOTS[8]), &[]));
        assert!(!verify_consistency_path(5, 4, &r5, &r4, &[]));
        assert!(!verify_inclusion_path(
            8,
            8,
            &leaves[0],
            &[],
            &h(CT_ROOTS[8])
        ));
        assert!(verify_inclusion_path(0, 1, &leaves[0], &[], &leaves[0]));
        assert!(!verify_inclusion_path(
            0,
            1,
            &leaves[0],
            &[[0; 32]],
            &leaves[0]
        ));
        assert_eq!(inclusion_path(&leaves, 8), None);
        assert_eq!(consistency_path(&leaves, 9), None);
    }

    #[test]
    fn frontier_ranges_and_parts() {
        let mut f = Frontier::new();
        for i in 0..13u8 {
            f.push(leaf_hash(&[i]));
        }
        assert_eq!(f.node_ranges(), vec![0..8, 8..12, 12..13]);
        assert!(Frontier::from_parts(13, f.nodes().to_vec()).is_some());
        assert!(Frontier::from_parts(12, f.nodes().to_vec()).is_none());
        assert!(f.can_hash(&(8..12)));
        assert!(f.can_hash(&(8..16)));
        assert!(f.can_hash(&(0..13)));
        assert!(!f.can_hash(&(4..8)));
        assert!(!f.can_hash(&(8..10)));
        assert!(f.can_hash(&(13..20)));
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_le_bytes())).collect()
    }

    fn tamper(path: &[Hash], which: usize, bit: u8) -> Vec<Hash> {
        let mut p = path.to_vec();
        let i = which % p.len();
        p[i][usize::from(bit) % 32] ^= 1 << (bit % 8);
        p
    }

    #[test]
    fn exhaustive_small_trees() {
        let all = leaves(40);
        for n in 0..=40u64 {
            let l = &all[..n as usize];
            let r = root(l);
            for i in 0..n {
                let p = inclusion_path(l, i).unwrap();
                assert!(
                    verify_inclusion_path(i, n, &l[i as usize], &p, &r),
                    "incl {i}/{n}"
                );
                assert!(p.len() <= 64 - (n.leading_zeros() as usize) + 1);
            }
            for m in 0..=n {
                let p = consistency_path(l, m).unwrap();
                assert!(
                    verify_consistency_path(m, n, &root(&l[..m as usize]), &r, &p),
                    "cons {m}->{n}"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn every_inclusion_proof_verifies_and_tampering_fails(n in 1u64..200, bit in any::<u8>(), which in any::<usize>()) {
            let l = leaves(n);
            let r = root(&l);
            for i in 0..n {
                let p = inclusion_path(&l, i).unwrap();
                prop_assert!(verify_inclusion_path(i, n, &l[i as usize], &p, &r));
                prop_assert!((p.len() as u32) <= 64 - (n - 1).leading_zeros());
                // Wrong leaf, wrong index, wrong size, tampered, shortened or extended paths fail.
                prop_assert!(!verify_inclusion_path(i, n, &leaf_hash(b"other"), &p, &r));
                if n > 1 {
                    prop_assert!(!verify_inclusion_path((i + 1) % n, n, &l[i as usize], &p, &r));
                }
                if !p.is_empty() {
                    prop_assert!(!verify_inclusion_path(i, n, &l[i as usize], &tamper(&p, which, bit), &r));
                    prop_assert!(!verify_inclusion_path(i, n, &l[i as usize], &p[..p.len() - 1], &r));
                }
                let mut longer = p.clone();
                longer.push([0xab; 32]);
                prop_assert!(!verify_inclusion_path(i, n, &l[i as usize], &longer, &r));
            }
        }

        #[test]
        fn every_consistency_proof_verifies_and_tampering_fails(n in 1u64..150, bit in any::<u8>(), which in any::<usize>()) {
            let l = leaves(n);
            let r = root(&l);
            for m in 0..=n {
                let old = root(&l[..m as usize]);
                let p = consistency_path(&l, m).unwrap();
                prop_assert!(verify_consistency_path(m, n, &old, &r, &p));
                prop_assert!((p.len() as u32) <= 2 * (64 - n.leading_zeros()));
                if !p.is_empty() {
                    prop_assert!(!verify_consistency_path(m, n, &old, &r, &tamper(&p, which, bit)));
                    prop_assert!(!verify_consistency_path(m, n, &old, &r, &p[..p.len() - 1]));
                    let mut longer = p.clone();
                    longer.push([0xcd; 32]);
                    prop_assert!(!verify_consistency_path(m, n, &old, &r, &longer));
                }
                if m > 0 && m < n {
                    prop_assert!(!verify_consistency_path(m, n, &leaf_hash(b"x"), &r, &p));
                    prop_assert!(!verify_consistency_path(m, n, &old, &leaf_hash(b"x"), &p));
                }
            }
        }

        #[test]
        fn range_hasher_matches_in_memory_proofs(n in 1u64..600, i_seed in any::<u64>(), p_seed in any::<u64>(), m_seed in any::<u64>()) {
            let l = leaves(n);
            let i = i_seed % n;
            // Any base at or before the leaf works for inclusion.
            let p = p_seed % (i + 1);
            let mut base = Frontier::new();
            for x in &l[..p as usize] { base.push(*x); }
            let ranges = inclusion_ranges(i, n);
            let mut rh = RangeHasher::new(&base, &ranges).expect("inclusion ranges are hashable from any base <= leaf");
            while rh.next_index() < rh.end() { let k = rh.next_index() as usize; rh.push(l[k]); }
            prop_assert_eq!(rh.finish().unwrap(), inclusion_path(&l, i).unwrap());

            // Any base at or before the old size works for consistency.
            let m = m_seed % (n + 1);
            let p = if m == 0 { 0 } else { p_seed % (m + 1) };
            let mut base = Frontier::new();
            for x in &l[..p as usize] { base.push(*x); }
            let ranges = consistency_ranges(m, n);
            let mut rh = RangeHasher::new(&base, &ranges).expect("consistency ranges are hashable from any base <= old size");
            while rh.next_index() < rh.end() { let k = rh.next_index() as usize; rh.push(l[k]); }
            prop_assert_eq!(rh.finish().unwrap(), consistency_path(&l, m).unwrap());
        }
    }
}
