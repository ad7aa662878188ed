//! The scanners' start positions, found eight bytes at a time (SWAR: the
//! crate forbids `unsafe`, so no explicit SIMD) instead of a branch per
//! byte.

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

/// The high bit of each byte of `x` that equals `c` (exact: no carry
/// crosses a byte).
#[inline(always)]
fn eq(x: u64, c: u8) -> u64 {
    let y = x ^ (u64::from(c) * 0x0101_0101_0101_0101);
    !(((y & LO7).wrapping_add(LO7)) | y | LO7)
}

/// Where the scanners of one line start, found in a single pass eight
/// bytes at a time: per 8-byte word, a mask (high bit of each byte) of
/// the digit-run starts (the first digit of each maximal run, unless a
/// `.`, `-` or `:` precedes it), the `.`
/// and `-` bytes (IPv4, dash and Cisco MACs, dotted names), the `:`
/// bytes (IPv6, colon MACs) and the `+` and `(` bytes (phone numbers).
/// One pass replaces a search per byte class, each of which had a fixed
/// cost per call that dominated on short lines. Kept in the caller's
/// session and refilled per line, so it allocates only when a line is
/// longer than any before.
#[derive(Debug, Default, Clone)]
pub(crate) struct Masks {
    words: Vec<[u64; 4]>,
}

const STARTS: usize = 0;
const DOT_DASH: usize = 1;
const COLON: usize = 2;
const PLUS_PAREN: usize = 3;

/// The masks of the word `x`; `carry` has its high bit set if the byte
/// before `x` is a digit, and is updated for the next word.
#[inline(always)]
fn word(x: u64, carry: &mut u64) -> [u64; 4] {
    let d = digits(x);
    let (dot_dash, colon) = (eq(x, b'.') | eq(x, b'-'), eq(x, b':'));
    // A start is a digit whose previous byte (8 bits lower, or the
    // previous word's last byte) is not a digit, nor a `.`, `-` or `:`
    // (after which no numeric scanner may start: `left_ok` in text.rs).
    let before = d | dot_dash | colon;
    let starts = d & !((before << 8) | (*carry >> 56));
    *carry = before & (0x80 << 56);
    [starts, dot_dash, colon, eq(x, b'+') | eq(x, b'(')]
}

thread_local! {
    /// Scratch masks for callers without a session of their own.
    static LOCAL: std::cell::RefCell<Masks> = std::cell::RefCell::new(Masks::default());
}

impl Masks {
    /// Calls `f` with this thread's scratch masks (fresh ones if they are
    /// in use further up the stack).
    pub(crate) fn with_local<R>(f: impl FnOnce(&mut Masks) -> R) -> R {
        LOCAL.with(|m| match m.try_borrow_mut() {
            Ok(mut m) => f(&mut m),
            Err(_) => f(&mut Masks::default()),
        })
    }

    /// Computes the masks of `b`.
    pub(crate) fn fill(&mut self, b: &[u8]) {
        self.words.clear();
        // High bit set if the byte before the current word is a digit.
        let mut carry = 0u64;
        let chunks = b.chunks_exact(8);
        let rest = chunks.remainder();
        // One `extend` over an exact-size iterator: no capacity check
        // per word.
        self.words.extend(chunks.map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            word(u64::from_le_bytes(a), &mut carry)
        }));
        if !rest.is_empty() {
            // Zero padding: neither a digit nor any of the bytes looked for.
            let mut a = [0u8; 8];
            a[..rest.len()].copy_from_slice(rest);
            self.words.push(word(u64::from_le_bytes(a), &mut carry));
        }
    }

    fn bits(&self, class: usize) -> Bits<'_> {
        Bits { words: &self.words, class, k: 0, cur: self.words.first().map_or(0, |w| w[class]) }
    }

    /// The first byte of every maximal run of ASCII digits that does not
    /// follow a `.`, `-` or `:`, ascending: shared by the card/SSN, IBAN
    /// and phone scanners, which can only match from (or just before) such
    /// a byte (a run after one of those three is never a clean start).
    pub(crate) fn starts(&self) -> Bits<'_> {
        self.bits(STARTS)
    }

    /// Every `.` and `-`, ascending.
    pub(crate) fn dots_dashes(&self) -> Bits<'_> {
        self.bits(DOT_DASH)
    }

    /// Every `:`, ascending.
    pub(crate) fn colons(&self) -> Bits<'_> {
        self.bits(COLON)
    }

    /// Every `+` and `(`, ascending.
    pub(crate) fn plus_paren(&self) -> Bits<'_> {
        self.bits(PLUS_PAREN)
    }
}

/// The positions of one class of [`Masks`], ascending.
pub(crate) struct Bits<'a> {
    words: &'a [[u64; 4]],
    class: usize,
    k: usize,
    cur: u64,
}

impl Iterator for Bits<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        while self.cur == 0 {
            self.k += 1;
            self.cur = self.words.get(self.k)?[self.class];
        }
        let p = self.k * 8 + (self.cur.trailing_zeros() / 8) as usize;
        self.cur &= self.cur - 1;
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::Masks;

    fn masks(b: &[u8]) -> Masks {
        let mut m = Masks::default();
        m.fill(b);
        m
    }

    #[test]
    fn digit_run_starts() {
        let naive = |b: &[u8]| -> Vec<usize> {
            (0..b.len())
                .filter(|&i| b[i].is_ascii_digit() && (i == 0 || !(b[i - 1].is_ascii_digit() || b":.-".contains(&b[i - 1]))))
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
        texts.push(b"10.0.0.1:22 fe80::1 +1 (555) 2015-10-18 \xae\xba\xab\xa8-.:+(".to_vec());
        texts.push((0u8..=255).collect());
        for t in texts {
            let m = masks(&t);
            assert_eq!(m.starts().collect::<Vec<_>>(), naive(&t), "{:?}", String::from_utf8_lossy(&t));
            let all = |f: &dyn Fn(u8) -> bool| (0..t.len()).filter(|&i| f(t[i])).collect::<Vec<_>>();
            assert_eq!(m.dots_dashes().collect::<Vec<_>>(), all(&|c| c == b'.' || c == b'-'));
            assert_eq!(m.colons().collect::<Vec<_>>(), all(&|c| c == b':'));
            assert_eq!(m.plus_paren().collect::<Vec<_>>(), all(&|c| c == b'+' || c == b'('));
        }
    }
}
