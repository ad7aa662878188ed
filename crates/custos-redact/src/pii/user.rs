//! User names in log contexts; the span covers the name only.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::Regex;

use crate::prefilter::LineHints;
use crate::{Entity, Span};

use super::push;
use super::scan::with_ascii_lower;

/// Words that follow `user` in logs and are not names.
const STOP: &[&str] = &[
    "unknown", "from", "by", "for", "name", "names", "id", "is", "not", "the", "a", "an", "to", "in", "with", "and",
    "or", "of", "on", "at", "as", "authentication", "auth", "none", "null", "invalid", "illegal", "account", "session",
    "request", "login", "logged", "list", "has", "was", "does", "did", "cannot", "can", "must", "should", "will",
    "could", "info", "data", "agent", "mode", "space", "time", "changed", "default", "public", "all", "system",
    "local", "network", "this", "that", "-",
];

#[derive(Debug, Clone)]
pub(super) struct UserScanner {
    ctx: Regex,
    /// The literal part of every context, lower case (see `may_have_context`).
    pre: Option<AhoCorasick>,
    /// `) CMD ` (cron), built once: a searcher built per line costs more
    /// than the search.
    cron: memchr::memmem::Finder<'static>,
}

/// Every match of the context regex contains one of these (ASCII
/// case-insensitively).
const CONTEXT_LITERALS: &[&str] = &[
    "user ",
    "user=",
    "\\users\\",
    "/home/",
    "logname=",
    "password for ",
    "publickey for ",
    "keyboard-interactive/pam for ",
    "hostbased for ",
    "failures for ",
    "failure for ",
    "ctladdr=",
];

fn is_name(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'$' | b'@')
}

fn is_stop(name: &str) -> bool {
    STOP.iter().any(|s| s.eq_ignore_ascii_case(name))
}

impl UserScanner {
    pub(super) fn new() -> Self {
        // The pattern is a constant known to compile (checked by the tests);
        // falling back to a never-matching regex keeps `new` infallible.
        let ctx = Regex::new(
            r"(?i)(?:(?:\b(?:password|publickey|keyboard-interactive/pam|hostbased|failures?) for (?:invalid user |illegal user )?)|\b(?:(?:invalid|illegal) )?user[ =]|\b(?:ruser|logname|ctladdr)=|/home/|\\users\\)",
        )
        .unwrap_or_else(|_| never());
        // Without the automaton (it cannot fail to build for these few
        // literals) every text goes to the regex: slower, same result.
        let pre = AhoCorasickBuilder::new().match_kind(MatchKind::LeftmostFirst).build(CONTEXT_LITERALS).ok();
        UserScanner { ctx, pre, cron: memchr::memmem::Finder::new(b") CMD ").into_owned() }
    }

    /// False only if the context regex cannot match: every match holds
    /// one of `CONTEXT_LITERALS`, looked for in an ASCII-lower-cased copy.
    /// The regex is Unicode case-insensitive (`ſ` matches `s`, `K` matches
    /// `k`), so text with non-ASCII bytes always goes to the regex.
    fn may_have_context(&self, b: &[u8]) -> bool {
        let Some(pre) = &self.pre else { return true };
        if !b.is_ascii() {
            return true;
        }
        with_ascii_lower(b, |lower| pre.is_match(lower))
    }

    /// The first context literal at or after `from` in `lower` (an
    /// ASCII-lower-cased text); without the automaton, `from` itself.
    pub(super) fn context_find(&self, lower: &[u8], from: usize) -> Option<usize> {
        match &self.pre {
            Some(pre) => pre.find(aho_corasick::Input::new(lower).range(from..)).map(|m| m.start()),
            None => (from < lower.len()).then_some(from),
        }
    }

    /// The first cron `) CMD ` at or after `from` in `b`.
    pub(super) fn cron_find(&self, b: &[u8], from: usize) -> Option<usize> {
        self.cron.find(&b[from..]).map(|i| from + i)
    }

    /// The user names in `text`; `hints` may say which contexts cannot
    /// occur (see [`LineHints`]).
    pub(super) fn find(&self, text: &str, hints: LineHints, out: &mut Vec<Span>) {
        let b = text.as_bytes();
        let may = if hints.exact() { hints.may(LineHints::USER) } else { self.may_have_context(b) };
        let contexts = if may { Some(self.ctx.find_iter(text)) } else { None };
        for m in contexts.into_iter().flatten() {
            // Only the plain `user X` is weak enough to need the stop list
            // (`user unknown`); after `invalid user`, `password for`,
            // `user=` … the next word is the name, whatever it is.
            let weak = m.as_str().eq_ignore_ascii_case("user ");
            let mut s = m.end();
            if m.as_str().ends_with(' ') {
                // `Invalid user  0101`: an empty-looking name padded by a space.
                while s < b.len() && b[s] == b' ' && s < m.end() + 2 {
                    s += 1;
                }
            }
            let mut e = s;
            while e < b.len() && is_name(b[e]) {
                e += 1;
            }
            while e > s && matches!(b[e - 1], b'.' | b'-' | b'@') {
                e -= 1;
            }
            if e == s || !(b[s].is_ascii_alphanumeric() || b[s] == b'_') {
                continue;
            }
            if (weak && is_stop(&text[s..e])) || matches!(&text[s..e], "-") || text[s..e].eq_ignore_ascii_case("unknown") {
                continue;
            }
            push(out, s, e, Entity::UserName);
        }
        if hints.may(LineHints::CRON) {
            cron_user(&self.cron, text, out);
        }
        if hints.may(LineHints::BACKSLASH) {
            domain_user(text, out);
        }
    }
}

/// cron's `(root) CMD (...)`: the name in the parentheses.
fn cron_user(cmd: &memchr::memmem::Finder<'_>, text: &str, out: &mut Vec<Span>) {
    let b = text.as_bytes();
    for at in cmd.find_iter(b) {
        let Some(open) = b[..at].iter().rposition(|&c| c == b'(') else { continue };
        let (s, e) = (open + 1, at);
        if e > s && b[s..e].iter().all(|&c| is_name(c)) && (b[s].is_ascii_alphanumeric() || b[s] == b'_') {
            push(out, s, e, Entity::UserName);
        }
    }
}

fn never() -> Regex {
    // `[^\s\S]` matches nothing; it always compiles.
    #[allow(clippy::unwrap_used)]
    Regex::new(r"[^\s\S]").unwrap()
}

/// A whole token `DOMAIN\name` (NetBIOS domain of 1–15 characters).
fn domain_user(text: &str, out: &mut Vec<Span>) {
    let b = text.as_bytes();
    for bs in memchr::memchr_iter(b'\\', b) {
        let mut s = bs;
        while s > 0 && (b[s - 1].is_ascii_alphanumeric() || b[s - 1] == b'-') {
            s -= 1;
        }
        let dom_len = bs - s;
        let left_ok = s == 0 || matches!(b[s - 1], b' ' | b'\t' | b'"' | b'\'' | b'=' | b'(' | b'[' | b',');
        if dom_len == 0 || dom_len > 15 || !left_ok || !b[s..bs].iter().any(u8::is_ascii_alphabetic) {
            continue;
        }
        if text[s..bs].eq_ignore_ascii_case("users") {
            continue;
        }
        let n = bs + 1;
        let mut e = n;
        while e < b.len() && (b[e].is_ascii_alphanumeric() || matches!(b[e], b'_' | b'.' | b'-' | b'$')) {
            e += 1;
        }
        while e > n && matches!(b[e - 1], b'.' | b'-') {
            e -= 1;
        }
        let right_ok = e == b.len() || matches!(b[e], b' ' | b'\t' | b'"' | b'\'' | b')' | b']' | b',' | b';' | b'\r' | b'\n');
        if e == n || !right_ok || is_stop(&text[n..e]) {
            continue;
        }
        push(out, n, e, Entity::UserName);
    }
}
