//! Digit-run starts, found eight bytes at a time (SWAR: the crate
//! forbids `unsafe`, so no explicit SIMD) instead of a branch per byte.

const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const HI: u64 = 0x8080_8080_8080_8080;

/// The ASCII digits of the little-endian 8-byte word `x`: the high bit
/// of byte k is set if byte k is one. Bytes of 0x80 and up are masked out
/// first, so no addition carries into the next byte and the mask is exact.
#[inline(always)]
fn digits(x: u64) -> u64 {
    let lo = x & LO7;
    let ge30 = lo.wrapping_add(0x5050_5050_5050_5050);
    let ge3a = lo.wrapping_add(0x4646_4646_4646_4646);
    ge30 & !ge3a & !x & HI
}

/// Calls `f` with an ASCII-lower-cased copy of `b` (on the stack unless
/// `b` is long; sized in two steps, as most lines are short and zeroing
/// the buffer is part of the cost).
pub(crate) fn with_ascii_lower<R>(b: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    fn lower<'a>(buf: &'a mut [u8], b: &[u8]) -> &'a [u8] {
        let buf = &mut buf[..b.len()];
        for (d, s) in buf.iter_mut().zip(b) {
            *d = s.to_ascii_lowercase();
        }
        buf
    }
    if b.len() <= 256 {
        f(lower(&mut [0u8; 256], b))
    } else if b.len() <= 2048 {
        f(lower(&mut [0u8; 2048], b))
    } else {
        f(&b.to_ascii_lowercase())
    }
}

/// Up to this many digit-run starts are kept on the stack.
const INLINE: usize = 64;

/// The first byte of every maximal run of ASCII digits in a line,
/// ascending: computed once and shared by the card/SSN, IBAN and phone
/// scanners, which can only match from (or just before) such a byte.
pub(super) struct Starts {
    inline: [u32; INLINE],
    len: usize,
    /// All of them, when there are more than `INLINE` (or a huge text).
    heap: Vec<usize>,
}

impl Starts {
    /// The starts of `b`.
    #[cfg(test)]
    pub(super) fn new(b: &[u8]) -> Starts {
        let mut s = Starts::empty();
        s.fill(b);
        s
    }

    /// No starts yet (filled in place by [`Starts::fill`]: the struct is
    /// a few hundred bytes, not worth moving).
    #[inline(always)]
    pub(super) fn empty() -> Starts {
        Starts {
            inline: [0; INLINE],
            len: 0,
            heap: Vec::new(),
        }
    }

    /// Finds the starts of `b` (after `empty`).
    pub(super) fn fill(&mut self, b: &[u8]) {
        let huge = b.len() > u32::MAX as usize;
        // High bit set if the byte before the current word is a digit.
        let mut carry = 0u64;
        let mut base = 0;
        let mut chunks = b.chunks_exact(8);
        for w in &mut chunks {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            carry = self.word(u64::from_le_bytes(a), base, carry, huge);
            base += 8;
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut a = [0u8; 8];
            a[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(a), base, carry, huge);
        }
    }

    /// Adds the run starts of the word `x` at `base`; returns the carry.
    #[inline(always)]
    fn word(&mut self, x: u64, base: usize, carry: u64, huge: bool) -> u64 {
        let d = digits(x);
        // A start is a digit whose previous byte (8 bits lower, or the
        // previous word's last byte) is not one.
        let mut m = d & !((d << 8) | (carry >> 56));
        while m != 0 {
            let p = base + (m.trailing_zeros() / 8) as usize;
            m &= m - 1;
            if self.len < INLINE && !huge {
                self.inline[self.len] = p as u32;
                self.len += 1;
            } else {
                if self.heap.is_empty() {
                    self.heap
                        .extend(self.inline[..self.len].iter().map(|&q| q as usize));
                }
                self.heap.push(p);
            }
        }
        d & (0x80 << 56)
    }

    /// The starts, ascending.
    pub(super) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let inline = if self.heap.is_empty() {
            &self.inline[..self.len]
        } else {
            &[][..]
        };
        inline
            .iter()
            .map(|&p| p as usize)
            .chain(self.heap.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::Starts;

    #[test]
    fn digit_run_starts() {
        let naive = |b: &[u8]| -> Vec<usize> {
            (0..b.len())
                .filter(|&i| b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit()))
                .collect()
        };
        let mut texts: Vec<Vec<u8>> = vec![b"".to_vec(), b"1".to_vec(), b"a1b22c333".to_vec()];
        let long: Vec<u8> = (0..300u32)
            .map(|i| {
                if (i * 7 + i / 5) % 3 == 0 {
                    b'a'
                } else {
                    b'0' + (i % 10) as u8
                }
            })
            .collect();
        texts.push(long);
        texts.push(vec![b'7'; 200]);
        texts.push(b"1 ".repeat(150)); // more starts than fit inline
        let mut edge = vec![b'x'; 63];
        edge.extend_from_slice(b"12x");
        texts.push(edge);
        texts.push(b"1234567\xb0\xb9\xff8".to_vec());
        texts.push(b"abcdefg12345678x9".to_vec());
        for t in texts {
            assert_eq!(
                Starts::new(&t).iter().collect::<Vec<_>>(),
                naive(&t),
                "{:?}",
                String::from_utf8_lossy(&t)
            );
        }
    }
}
