//! E-mail, credential URL, payment card, IBAN, SSN, phone scanners.

use crate::{Entity, Span};

use super::{is_word, push};

fn is_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'.' || c == b'-'
}

/// `local@domain.tld`, found from each `@`.
pub(super) fn email(text: &str, out: &mut Vec<Span>) {
    let b = text.as_bytes();
    for at in memchr::memchr_iter(b'@', b) {
        let mut s = at;
        while s > 0 && is_local(b[s - 1]) {
            s -= 1;
        }
        while s < at && matches!(b[s], b'.' | b'-' | b'+') {
            s += 1;
        }
        let mut e = at + 1;
        while e < b.len() && is_domain(b[e]) {
            e += 1;
        }
        while e > at + 1 && matches!(b[e - 1], b'.' | b'-') {
            e -= 1;
        }
        if s == at || e <= at + 1 || b[at - 1] == b'.' {
            continue;
        }
        let domain = &text[at + 1..e];
        let labels: Vec<&str> = domain.split('.').collect();
        let tld_ok = labels.last().is_some_and(|t| t.len() >= 2 && t.bytes().all(|c| c.is_ascii_alphabetic()));
        let labels_ok = labels.len() >= 2 && labels.iter().all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'));
        if tld_ok && labels_ok {
            push(out, s, e, Entity::EmailAddress);
        }
    }
}

/// `scheme://user:pass@host…`: the whole URL up to whitespace or a quote.
pub(super) fn cred_url(text: &str, out: &mut Vec<Span>) {
    let b = text.as_bytes();
    for sep in memchr::memmem::find_iter(b, b"://") {
        let mut s = sep;
        while s > 0 && (b[s - 1].is_ascii_alphanumeric() || matches!(b[s - 1], b'+' | b'.' | b'-')) {
            s -= 1;
        }
        while s < sep && !b[s].is_ascii_alphabetic() {
            s += 1;
        }
        if s == sep {
            continue;
        }
        let auth = sep + 3;
        let mut e = auth;
        let mut at = None;
        let mut colon = false;
        while e < b.len() && !b[e].is_ascii_whitespace() && !matches!(b[e], b'"' | b'\'' | b'<' | b'>' | b'`') {
            match b[e] {
                b'@' => at = Some(e),
                b':' if at.is_none() => colon = true,
                b'/' | b'?' | b'#' if at.is_none() => break,
                _ => {}
            }
            e += 1;
        }
        let Some(at) = at else { continue };
        if !colon || at == auth || at + 1 >= e {
            continue;
        }
        // Continue to the end of the URL.
        while e < b.len() && !b[e].is_ascii_whitespace() && !matches!(b[e], b'"' | b'\'' | b'<' | b'>' | b'`') {
            e += 1;
        }
        while e > at + 1 && matches!(b[e - 1], b'.' | b',' | b';' | b')' | b']') {
            e -= 1;
        }
        push(out, s, e, Entity::Url);
    }
}

fn digit_sep_run(b: &[u8], s: usize, seps: &[u8]) -> usize {
    // End of a run of digits with single separators between them.
    let mut e = s;
    // Capped: a card is at most 19 digits and 4 separators.
    while e < b.len() && e - s < 24 {
        let sep_ok = seps.contains(&b[e]) && e + 1 < b.len() && b[e + 1].is_ascii_digit() && e > s;
        if b[e].is_ascii_digit() || sep_ok {
            e += 1;
        } else {
            break;
        }
    }
    e
}

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (k, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if k % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn left_ok(b: &[u8], s: usize) -> bool {
    s == 0 || {
        let c = b[s - 1];
        !(is_word(c) || matches!(c, b'.' | b'-' | b'+' | b'/' | b':'))
    }
}

fn right_ok(b: &[u8], e: usize) -> bool {
    match b.get(e) {
        None => true,
        Some(&c) => !(is_word(c) || (matches!(c, b'.' | b'-' | b'/' | b':') && b.get(e + 1).is_some_and(u8::is_ascii_digit))),
    }
}

/// A payment card (Luhn, 13–19 digits, IIN starting 2–6, 4-digit
/// grouping or Amex 4-6-5, no or uniform space/dash separators) or a US
/// SSN (`ddd-dd-dddd`, valid ranges) at the digit-run start `i` (with
/// `left_ok`), whose first run of digits is `run` long.
fn number_at(b: &[u8], i: usize, run: usize, card: bool, ssn: bool) -> Option<(usize, Entity)> {
    if ssn && run == 3 && i + 11 <= b.len() && b[i + 3] == b'-' && right_ok(b, i + 11) {
        let w = &b[i..i + 11];
        let shape = w[3] == b'-'
            && w[6] == b'-'
            && w.iter().enumerate().all(|(k, c)| k == 3 || k == 6 || c.is_ascii_digit());
        let valid = shape && &w[0..3] != b"000" && &w[0..3] != b"666" && w[0] != b'9' && &w[4..6] != b"00" && &w[7..11] != b"0000";
        if valid {
            return Some((i + 11, Entity::UsSsn));
        }
    }
    // A card's first digit is 2–6, or 1 for JCB `1800…`; its first
    // group has 4 digits (then the second 4 or 6) or it is one group
    // of 13–19.
    if !card || !(b'1'..=b'6').contains(&b[i]) || !card_shape(b, i, run) {
        return None;
    }
    let e = digit_sep_run(b, i, b" -");
    if e - i < 13 {
        return None;
    }
    if right_ok(b, e) {
        if let Some(e) = card_at(b, i, e) {
            return Some((e, Entity::CreditCard));
        }
    }
    // The run may go on into the next number (`4111111111111111 078-05-1120`):
    // try it cut at each separator, longest first.
    (i + 13..e)
        .rev()
        .filter(|&k| matches!(b[k], b' ' | b'-') && b[k - 1].is_ascii_digit())
        .find_map(|k| card_at(b, i, k))
        .map(|e| (e, Entity::CreditCard))
}

/// Cheap necessary condition for [`card_at`]: the first group of digits
/// at `i` is 4 long and followed by a separator and a group of 4 or 6,
/// or it is at least 13 long.
fn card_shape(b: &[u8], i: usize, run: usize) -> bool {
    match run {
        4 => matches!(b.get(i + 4), Some(b' ' | b'-')) && matches!(digit_run(b, i + 5, 7), 4 | 6),
        l => l >= 13,
    }
}

/// Length of the run of ASCII digits at `i`, counted up to `max`.
fn digit_run(b: &[u8], i: usize, max: usize) -> usize {
    b.get(i..).map_or(0, |r| r.iter().take(max).take_while(|c| c.is_ascii_digit()).count())
}

/// The digit run `b[i..e]` (digits with single separators, at most 24
/// bytes) if it reads as a payment card: 13–19 digits, IIN 2–6 or a
/// 15-digit JCB `1800…`, uniform separators, 4-digit groups (or Amex
/// 4-6-5), Luhn.
fn card_at(b: &[u8], i: usize, e: usize) -> Option<usize> {
    let run = &b[i..e];
    let mut digits = [0u8; 24];
    let mut nd = 0;
    let mut groups = [0usize; 25];
    let mut ng = 1;
    let mut sep = None;
    let mut uniform = true;
    for &c in run {
        if c.is_ascii_digit() {
            digits[nd] = c;
            nd += 1;
            groups[ng - 1] += 1;
        } else {
            uniform &= sep.is_none_or(|s| s == c);
            sep = Some(c);
            ng += 1;
        }
    }
    let digits = &digits[..nd];
    let groups = &groups[..ng];
    let jcb15 = digits.len() == 15 && digits.starts_with(b"1800");
    if !((13..=19).contains(&digits.len()) && ((b'2'..=b'6').contains(&digits[0]) || jcb15)) {
        return None;
    }
    let grouping = groups.len() == 1
        || (groups[..groups.len() - 1].iter().all(|&g| g == 4) && groups.last().is_some_and(|&g| (1..=4).contains(&g)))
        || (groups.len() == 3 && groups[0] == 4 && groups[1] == 6 && (4..=5).contains(&groups[2]));
    (uniform && grouping && luhn(digits)).then_some(e)
}

const IBAN_LEN: &[(&str, usize)] = &[
    ("AD", 24), ("AE", 23), ("AL", 28), ("AT", 20), ("AZ", 28), ("BA", 20), ("BE", 16), ("BG", 22), ("BH", 22),
    ("BR", 29), ("BY", 28), ("CH", 21), ("CR", 22), ("CY", 28), ("CZ", 24), ("DE", 22), ("DK", 18), ("DO", 28),
    ("EE", 20), ("EG", 29), ("ES", 24), ("FI", 18), ("FO", 18), ("FR", 27), ("GB", 22), ("GE", 22), ("GI", 23),
    ("GL", 18), ("GR", 27), ("GT", 28), ("HR", 21), ("HU", 28), ("IE", 22), ("IL", 23), ("IQ", 23), ("IS", 26),
    ("IT", 27), ("JO", 30), ("KW", 30), ("KZ", 20), ("LB", 28), ("LC", 32), ("LI", 21), ("LT", 20), ("LU", 20),
    ("LV", 21), ("MC", 27), ("MD", 24), ("ME", 22), ("MK", 19), ("MR", 27), ("MT", 31), ("MU", 30), ("NL", 18),
    ("NO", 15), ("PK", 24), ("PL", 28), ("PS", 29), ("PT", 25), ("QA", 29), ("RO", 24), ("RS", 22), ("SA", 24),
    ("SC", 31), ("SE", 24), ("SI", 19), ("SK", 24), ("SM", 27), ("ST", 25), ("SV", 28), ("TL", 23), ("TN", 24),
    ("TR", 26), ("UA", 29), ("VA", 22), ("VG", 24), ("XK", 20),
];

/// `IBAN_LEN` as a table indexed by the two upper-case letters (0: none).
const IBAN_TABLE: [u8; 26 * 26] = {
    let mut t = [0u8; 26 * 26];
    let mut k = 0;
    while k < IBAN_LEN.len() {
        let (cc, len) = IBAN_LEN[k];
        let cc = cc.as_bytes();
        t[(cc[0] - b'A') as usize * 26 + (cc[1] - b'A') as usize] = len as u8;
        k += 1;
    }
    t
};

/// The IBAN length of the country `a b` (ASCII letters, either case).
fn iban_len(a: u8, b: u8) -> Option<usize> {
    let len = IBAN_TABLE[(a.to_ascii_uppercase() - b'A') as usize * 26 + (b.to_ascii_uppercase() - b'A') as usize];
    (len != 0).then_some(usize::from(len))
}

/// An IBAN at `i`, whose check digits start a digit run at `i + 2`:
/// country code, 2 check digits, BBAN (either case); spaces allowed
/// between characters; per-country length and mod-97 checked.
fn iban_at(b: &[u8], i: usize) -> Option<usize> {
    let n = b.len();
    let start_ok = i + 15 <= n
        && b[i].is_ascii_alphabetic()
        && b[i + 1].is_ascii_alphabetic()
        && b[i].is_ascii_uppercase() == b[i + 1].is_ascii_uppercase()
        && b[i + 2].is_ascii_digit()
        && b[i + 3].is_ascii_digit()
        && (i == 0 || !is_word(b[i - 1]));
    if !start_ok {
        return None;
    }
    let len = iban_len(b[i], b[i + 1])?;
    let mut chars = [0u8; 40];
    let mut nc = 0;
    let mut e = i;
    while e < n && nc < len {
        let c = b[e];
        if c.is_ascii_alphanumeric() {
            chars[nc] = c.to_ascii_uppercase();
            nc += 1;
            e += 1;
        } else if c == b' ' && e + 1 < n && b[e + 1].is_ascii_alphanumeric() && nc != 0 {
            e += 1;
        } else {
            break;
        }
    }
    (nc == len && (e == n || !is_word(b[e])) && mod97(&chars[..nc])).then_some(e)
}

fn mod97(chars: &[u8]) -> bool {
    let mut r: u32 = 0;
    for &c in chars[4..].iter().chain(&chars[..4]) {
        if c.is_ascii_digit() {
            r = (r * 10 + u32::from(c - b'0')) % 97;
        } else {
            let v = u32::from(c - b'A') + 10;
            r = (r * 100 + v) % 97;
        }
    }
    r == 1
}

/// Which of the digit-run scanners run.
#[derive(Clone, Copy)]
pub(super) struct Numeric {
    pub card: bool,
    pub ssn: bool,
    pub iban: bool,
    pub phone: bool,
}

/// Everything found from digit runs, in one pass over their starts:
///
/// * payment cards and US SSNs ([`number_at`]),
/// * IBANs ([`iban_at`]: two letters, then the check digits),
/// * phone numbers: E.164 (`+` then 8–15 digits with space, dash, dot or
///   parenthesis separators; [`e164_at`]) and the national forms of
///   [`national`] (North American `(555) 123-4567`, `555-123-4567`,
///   `555.123.4567`, trunk-prefixed `0490 75 40 81`).
///
/// Each kind keeps its own resume point (a finding is not searched
/// again inside itself), as a separate scan per kind would.
pub(super) fn numeric(
    text: &str,
    starts: impl Iterator<Item = usize>,
    plus_paren: impl Iterator<Item = usize>,
    want: Numeric,
    out: &mut Vec<Span>,
) {
    let b = text.as_bytes();
    let (mut r_num, mut r_iban, mut r_phone) = (0, 0, 0);
    // Phone candidates besides digit-run starts: every `+` and `(`,
    // taken in position order with the starts.
    let mut puncts = want.phone.then_some(plus_paren);
    let mut next_punct = puncts.as_mut().and_then(Iterator::next);
    let punct = |p: usize, r_phone: &mut usize, out: &mut Vec<Span>| {
        if p < *r_phone {
            return;
        }
        let found = if b[p] == b'+' { e164_at(b, p) } else if left_ok(b, p) { national(b, p, 0) } else { None };
        if let Some(e) = found {
            push(out, p, e, Entity::PhoneNumber);
            *r_phone = e;
        }
    };
    for i in starts {
        while let Some(p) = next_punct.filter(|&p| p < i) {
            punct(p, &mut r_phone, out);
            next_punct = puncts.as_mut().and_then(Iterator::next);
        }
        if i > 0 && b[i - 1].is_ascii_alphabetic() {
            // Only an IBAN's check digits follow a letter.
            if want.iban && i >= 2 && i - 2 >= r_iban {
                if let Some(e) = iban_at(b, i - 2) {
                    push(out, i - 2, e, Entity::IbanCode);
                    r_iban = e;
                }
            }
            continue;
        }
        // Cards, SSNs and national phone numbers need the same clean left
        // boundary.
        if !left_ok(b, i) {
            continue;
        }
        let run = digit_run(b, i, 13);
        if (want.card || want.ssn) && i >= r_num {
            if let Some((e, entity)) = number_at(b, i, run, want.card, want.ssn) {
                push(out, i, e, entity);
                r_num = e;
            }
        }
        if want.phone && i >= r_phone {
            if let Some(e) = national(b, i, run) {
                push(out, i, e, Entity::PhoneNumber);
                r_phone = e;
            }
        }
    }
    while let Some(p) = next_punct {
        punct(p, &mut r_phone, out);
        next_punct = puncts.as_mut().and_then(Iterator::next);
    }
}

/// An E.164 number at the `+` at `i`: 8–15 digits, at most two
/// separators (` -.()`) in a row, an optional extension, not followed by
/// a word character or `:` (`+2016-09-28 04:30` is a time).
fn e164_at(b: &[u8], i: usize) -> Option<usize> {
    let n = b.len();
    if !(b.get(i + 1).is_some_and(|d| (b'1'..=b'9').contains(d)) && (i == 0 || !is_word(b[i - 1]))) {
        return None;
    }
    let mut e = i + 1;
    let mut digits = 0;
    let mut last_digit = e;
    let mut seps = 0;
    while e < n {
        let d = b[e];
        if d.is_ascii_digit() {
            digits += 1;
            e += 1;
            last_digit = e;
            seps = 0;
        } else if matches!(d, b' ' | b'-' | b'.' | b'(' | b')') && seps < 2 {
            seps += 1;
            e += 1;
        } else {
            break;
        }
    }
    let e = extension(b, last_digit);
    let next_bad = b.get(e).is_some_and(|&d| is_word(d) || d == b':');
    ((8..=15).contains(&digits) && !next_bad).then_some(e)
}

/// A North American number at `j`: `(ddd) ddd-dddd`, `(ddd)ddd-dddd`,
/// `ddd-ddd-dddd`, `ddd.ddd.dddd` (area code 2–9); the end.
fn nanp_at(b: &[u8], j: usize) -> Option<usize> {
    let d = |k: usize| b.get(k).is_some_and(u8::is_ascii_digit);
    let digits = |k: usize, n: usize| (k..k + n).all(d);
    let area_ok = |k: usize| b.get(k).is_some_and(|c| (b'2'..=b'9').contains(c));
    if b.get(j) == Some(&b'(') {
        if !(area_ok(j + 1) && digits(j + 1, 3) && b.get(j + 4) == Some(&b')')) {
            return None;
        }
        let k = if b.get(j + 5) == Some(&b' ') { j + 6 } else { j + 5 };
        let sep_ok = b.get(k + 3).is_some_and(|c| matches!(c, b'-' | b'.' | b' '));
        return (digits(k, 3) && sep_ok && digits(k + 4, 4)).then_some(k + 8);
    }
    let sep = *b.get(j + 3)?;
    let ok = area_ok(j) && digits(j, 3) && matches!(sep, b'-' | b'.') && digits(j + 4, 3) && b.get(j + 7) == Some(&sep) && digits(j + 8, 4);
    ok.then_some(j + 12)
}

/// A trunk-prefixed national number (`0` then a non-zero digit): 2 to 5
/// groups (first 2–5 digits, others 2–4, or one 6–8 digit tail), 9–11 digits in all, with one kind of single
/// separator (space, dot, dash): `0490 75 40 81`, `03.93.92.16.85`.
fn trunk_at(b: &[u8], j: usize) -> Option<usize> {
    if b.get(j) != Some(&b'0') || !b.get(j + 1).is_some_and(|c| (b'1'..=b'9').contains(c)) {
        return None;
    }
    // Part of a longer run of numbers (`081109 010354 5184` timestamps).
    if j >= 2 && matches!(b[j - 1], b' ' | b'.' | b'-') && b[j - 2].is_ascii_digit() {
        return None;
    }
    let mut k = j;
    let (mut digits, mut groups, mut sep) = (0usize, 0usize, None);
    loop {
        let g = k;
        while b.get(k).is_some_and(u8::is_ascii_digit) {
            k += 1;
        }
        let len = k - g;
        let max = if groups == 0 { 5 } else { 4 };
        // A single long subscriber group after the area code: `0341 8387176`.
        let more = b.get(k).is_some_and(|c| matches!(c, b' ' | b'.' | b'-')) && b.get(k + 1).is_some_and(u8::is_ascii_digit);
        let long_tail = groups == 1 && (6..=8).contains(&len) && !more;
        if len < 2 || (len > max && !long_tail) {
            return None;
        }
        digits += len;
        groups += 1;
        match b.get(k) {
            Some(&c) if matches!(c, b' ' | b'.' | b'-') && b.get(k + 1).is_some_and(u8::is_ascii_digit) && sep.is_none_or(|s| s == c) && groups < 5 => {
                sep = Some(c);
                k += 1;
            }
            _ => break,
        }
    }
    ((9..=11).contains(&digits) && groups >= 2).then_some(k)
}

/// An extension after a number: ` x123`, `x123`, `ext. 12`, `#12`.
fn extension(b: &[u8], e: usize) -> usize {
    let mut k = e;
    if b.get(k) == Some(&b' ') {
        k += 1;
    }
    let rest = &b[k.min(b.len())..];
    let skip = [&b"ext. "[..], b"ext.", b"ext ", b"ext", b"x", b"#"].iter().find(|p| rest.starts_with(p)).map(|p| p.len());
    let Some(skip) = skip else { return e };
    let s = k + skip;
    let mut t = s;
    while t < b.len() && t - s < 6 && b[t].is_ascii_digit() {
        t += 1;
    }
    if t > s { t } else { e }
}

/// National forms at `i` (with an optional `1-`/`001-` prefix for North
/// America), an optional extension, and a clean right boundary. `i` is a
/// `(` or the start of a digit run `run` long.
fn national(b: &[u8], i: usize, run: usize) -> Option<usize> {
    let done = |e: Option<usize>| e.map(|e| extension(b, e)).filter(|&e| right_ok(b, e));
    // The forms, tried in this order: `nanp_at(i)`, the prefixes `1-`,
    // `1 `, `1.`, `001-`, `001 ` before a North American number, a trunk
    // number. Which can match follows from the first byte (and the length
    // of the digit run there): a North American area code is 2–9 (or
    // `(`), a trunk number starts with `0`.
    match b[i] {
        b'(' => done(nanp_at(b, i)),
        b'0' => {
            for p in [&b"001-"[..], b"001 "] {
                if b[i..].starts_with(p) {
                    if let Some(e) = done(nanp_at(b, i + p.len())) {
                        return Some(e);
                    }
                }
            }
            done(trunk_at(b, i))
        }
        c => {
            // `run`: the digit run at `i` (counted up to at least 4).
            if run == 3 && c != b'1' {
                done(nanp_at(b, i))
            } else if run == 1 && c == b'1' {
                let p = b.get(i + 1).copied();
                if matches!(p, Some(b'-' | b' ' | b'.')) {
                    done(nanp_at(b, i + 2))
                } else {
                    None
                }
            } else {
                None
            }
        }
    }
}
