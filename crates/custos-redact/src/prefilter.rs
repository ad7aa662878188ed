//! Line prefilters computed over a whole block of lines at once.
//!
//! Many detectors need a rare trigger before they can match anything: an
//! `@` (e-mail, credential URL), one of the
//! secret rules' keywords, one of the user-name contexts' literals, cron's
//! `) CMD `, a `\` (`DOMAIN\user`). Checked line by line, each check is a
//! short search with a fixed cost per call, and over short log lines those
//! costs add up to a large part of the work (two lower-cased copies and two
//! Aho-Corasick searches per line for the keyword sets alone). A caller
//! with many lines in one buffer (`custos redact` reads 256 KiB at a time)
//! can instead run each search once over the whole block with
//! [`LinePrefilter::scan`] and pass each line's [`LineHints`] to
//! [`crate::Session::redact_hinted`].
//!
//! Exactness: a hint only ever skips a detector that could not match.
//! None of the triggers contains a line break, so an occurrence found in
//! the block lies within one line, and the searches are restarted after
//! each match, which cannot hide the first occurrence of a later line:
//! a line gets a trigger's bit if and only if the trigger occurs in it,
//! exactly as the per-line check decides (test `hinted_equals_unhinted`).

use std::ops::Range;

use crate::engine::Redactor;

/// What a block pass learned about one line: which rare triggers may
/// occur in it. [`LineHints::UNKNOWN`] (what a text redacted on its own
/// gets) makes every detector check the line itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineHints(u8);

impl LineHints {
    pub(crate) const AT: u8 = 1;
    /// A keyword of a secret rule (or the line was not checked for one).
    pub(crate) const SECRET: u8 = 1 << 2;
    /// A literal of a user-name context, or a non-ASCII byte (the context
    /// regex is Unicode case-insensitive, see `UserScanner`).
    pub(crate) const USER: u8 = 1 << 3;
    pub(crate) const CRON: u8 = 1 << 4;
    pub(crate) const BACKSLASH: u8 = 1 << 5;
    /// Set when the bits are exact (from a block scan), clear when
    /// nothing is known and every bit means "check".
    const EXACT: u8 = 1 << 7;

    /// Nothing known about the line: every detector checks it.
    pub const UNKNOWN: LineHints = LineHints(0x7f);

    /// Whether the trigger `bit` may occur (always, when unknown).
    pub(crate) fn may(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    /// Whether the bits are exact, so a set bit means the trigger occurs
    /// (no need to look again).
    pub(crate) fn exact(self) -> bool {
        self.0 & Self::EXACT != 0
    }

    fn set(&mut self, bit: u8) {
        self.0 |= bit;
    }
}

/// A search for one trigger: `find(from)` is its first occurrence at or
/// after `from`.
pub(crate) type Find<'a> = dyn FnMut(usize) -> Option<usize> + 'a;

/// Marks the lines holding a trigger (its hint bit, its search).
pub(crate) type Mark<'a> = dyn FnMut(u8, &mut Find<'_>) + 'a;

/// The hints of every line of a block, and the scratch space to compute
/// them; reused from block to block.
#[derive(Debug, Default)]
pub struct LinePrefilter {
    hints: Vec<LineHints>,
    lower: Vec<u8>,
}

/// Marks the lines of `block` in which `find(block, from)` (the first
/// occurrence of a trigger at or after `from`) finds one. After a hit the
/// search resumes at the next line, so a trigger that is dense (`:` in
/// timestamps, a keyword repeated) costs one search per line, not one per
/// occurrence.
fn mark_lines(lines: &[Range<usize>], len: usize, mut find: impl FnMut(usize) -> Option<usize>, mut mark: impl FnMut(usize)) {
    let (mut from, mut k) = (0, 0);
    while from < len {
        let Some(p) = find(from) else { break };
        while k < lines.len() && lines[k].end <= p {
            k += 1;
        }
        let Some(line) = lines.get(k) else { break };
        if line.start <= p {
            mark(k);
            // Past this line's end: its `\n` (or the block's end).
            from = line.end + 1;
            k += 1;
        } else {
            // Between lines (a `\n`): go on from the next line.
            from = line.start;
        }
    }
}

impl LinePrefilter {
    /// A prefilter with no block scanned yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans `block`, whose lines are `lines` (ascending, non-overlapping
    /// byte ranges that hold no `\n`), for the triggers of `r`'s detectors.
    pub fn scan(&mut self, r: &Redactor, block: &[u8], lines: &[Range<usize>]) {
        let LinePrefilter { hints, lower } = self;
        hints.clear();
        hints.resize(lines.len(), LineHints(LineHints::EXACT));
        let len = block.len();
        let mut mark = |bit: u8, find: &mut Find<'_>| {
            mark_lines(lines, len, find, |k| hints[k].set(bit));
        };
        for (bit, c) in [(LineHints::AT, b'@'), (LineHints::BACKSLASH, b'\\')] {
            mark(bit, &mut |from| memchr::memchr(c, &block[from..]).map(|i| from + i));
        }
        r.block_triggers(block, lower, &mut mark);
        if !block.is_ascii() {
            for (h, l) in hints.iter_mut().zip(lines) {
                if !block[l.clone()].is_ascii() {
                    h.set(LineHints::USER);
                }
            }
        }
    }

    /// The hints of line `i` of the last block scanned
    /// ([`LineHints::UNKNOWN`] past its end).
    pub fn hints(&self, i: usize) -> LineHints {
        self.hints.get(i).copied().unwrap_or(LineHints::UNKNOWN)
    }
}
