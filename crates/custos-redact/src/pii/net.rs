//! IP (v4, v6) and MAC address scanners.

use std::net::Ipv6Addr;

use crate::Entity;

use super::host::HostMatcher;
use super::{is_word, push};
use crate::Span;

fn is_hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}

/// Everything found from the dots (and dashes), in one pass: IPv4 dotted
/// quads ([`ipv4_at`]) when `ip`, dash and Cisco MACs ([`mac_at`]) when
/// `mac`, and the dotted names of `hosts` ([`HostMatcher::dot`]). Each
/// keeps its own resume point, as a separate pass would.
pub(super) fn dots(
    text: &str,
    dots_dashes: impl Iterator<Item = usize>,
    ip: bool,
    mac: bool,
    hosts: Option<&HostMatcher>,
    out: &mut Vec<Span>,
) {
    let b = text.as_bytes();
    let (mut next_ip, mut next_host) = (0, 0);
    let mut at_dot = |p: usize, out: &mut Vec<Span>| {
        if ip && p >= next_ip {
            next_ip = ipv4_at(text, p, out);
        }
        if let Some(h) = hosts {
            if p >= next_host {
                next_host = h.dot(b, p, out);
            }
        }
    };
    for p in dots_dashes {
        if b[p] == b'.' {
            at_dot(p, out);
        }
        if mac {
            mac_at(b, p, out);
        }
    }
}

/// The IPv4 dotted quad around the dot at `dot`, if any; returns the
/// first position from which the next dot is worth trying. Rejects
/// version strings (more than four dotted parts, a quad touching
/// `.digit`), components > 255 or with leading zeros (std parsing), and
/// any address in `0.0.0.0/8` (the wildcard, and versions like
/// `0.0.0.6`).
fn ipv4_at(text: &str, dot: usize, out: &mut Vec<Span>) -> usize {
    let b = text.as_bytes();
    // Walk back to the start of the digit run before this dot.
    let mut s = dot;
    while s > 0 && b[s - 1].is_ascii_digit() {
        s -= 1;
    }
    if s == dot || dot - s > 3 {
        return dot + 1;
    }
    // Parse four dotted digit groups from s.
    let mut p = s;
    let mut parts = 0;
    let mut ok = true;
    loop {
        let g = p;
        while p < b.len() && b[p].is_ascii_digit() && p - g < 4 {
            p += 1;
        }
        let len = p - g;
        if len == 0 || len > 3 {
            ok = false;
            break;
        }
        parts += 1;
        if parts == 4 {
            break;
        }
        if p < b.len() && b[p] == b'.' {
            p += 1;
        } else {
            ok = false;
            break;
        }
    }
    if !ok {
        return dot + 1;
    }
    let e = p;
    let prev_bad = s > 0 && {
        let c = b[s - 1];
        is_word(c) || matches!(c, b'~' | b'-' | b'.')
    };
    let next_bad = e < b.len() && {
        let c = b[e];
        is_word(c) || (c == b'.' && e + 1 < b.len() && b[e + 1].is_ascii_digit())
    };
    if !prev_bad && !next_bad && quad_ok(&b[s..e]) {
        push(out, s, e, Entity::IpAddress);
    }
    // Skip the whole dotted run so its inner parts are not re-tried.
    let mut q = e;
    while q < b.len() && (b[q].is_ascii_digit() || b[q] == b'.') {
        q += 1;
    }
    q.max(dot + 1)
}

/// Whether `q`, four dot-separated groups of 1–3 ASCII digits, is an
/// address as `std::net::Ipv4Addr` parses it (each part at most 255, no
/// leading zero) outside `0.0.0.0/8`.
fn quad_ok(q: &[u8]) -> bool {
    let mut first = true;
    for part in q.split(|&c| c == b'.') {
        if part.len() > 1 && part[0] == b'0' {
            return false;
        }
        let v = part.iter().fold(0u32, |v, &d| v * 10 + u32::from(d - b'0'));
        if v > 255 || (first && v == 0) {
            return false;
        }
        first = false;
    }
    true
}

/// Runs of `[0-9A-Fa-f:.]` containing colons: IPv6 (all textual forms,
/// optional `%zone`, optional trailing `:port`) and colon-separated MACs
/// (6 or 8 two-digit groups, or the `AABB:CCDD:EEFF:0011` quad form).
pub(super) fn colon_runs(text: &str, colons: impl Iterator<Item = usize>, want_ip: bool, want_mac: bool, out: &mut Vec<Span>) {
    let b = text.as_bytes();
    let mut i = 0;
    for colon in colons {
        if colon < i {
            continue;
        }
        let mut s = colon;
        while s > 0 && (is_hex(b[s - 1]) || b[s - 1] == b':' || b[s - 1] == b'.') {
            s -= 1;
        }
        let mut e = colon;
        while e < b.len() && (is_hex(b[e]) || b[e] == b':' || b[e] == b'.') {
            e += 1;
        }
        i = e.max(colon + 1);
        // A lone leading ':' (as in `host:fe80::1`) is a separator.
        if b[s] == b':' && b.get(s + 1) != Some(&b':') {
            s += 1;
        } else if b[s] == b'.' {
            continue;
        }
        // Trailing '.' or lone ':' is punctuation.
        while e > s && b[e - 1] == b'.' {
            e -= 1;
        }
        if e > s && b[e - 1] == b':' && !(e >= s + 2 && b[e - 2] == b':') {
            e -= 1;
        }
        if e <= s || s > 0 && is_word(b[s - 1]) {
            continue;
        }
        let cand = &text[s..e];
        let cb = cand.as_bytes();
        let colons = cb.iter().filter(|&&c| c == b':').count();
        let double = cb.windows(2).any(|w| w == b"::");
        if colons < 2 && !double {
            // one colon: maybe a MAC quad? no: those have 3 colons.
            continue;
        }
        // A MAC has 3, 5 or 7 colons; an IPv6 address `::`, or 7 colons
        // (6 before an embedded IPv4), 8 with a `:port`. `12:01:01` is
        // neither.
        let mac_shape = want_mac && matches!(colons, 3 | 5 | 7);
        let ip_shape = want_ip && (double || colons >= 6);
        if !mac_shape && !ip_shape {
            continue;
        }
        // Zone id.
        let mut end = e;
        if b.get(e) == Some(&b'%') {
            let mut z = e + 1;
            while z < b.len() && (b[z].is_ascii_alphanumeric() || b[z] == b'_' || b[z] == b'-' || b[z] == b'.') {
                z += 1;
            }
            if z > e + 1 {
                end = z;
            }
        }
        if end < b.len() && is_word(b[end]) {
            continue;
        }
        if mac_shape && !cb.contains(&b'.') && is_mac_colon(cand) {
            push(out, s, e, Entity::MacAddress);
            continue;
        }
        if !ip_shape || !cb.iter().any(u8::is_ascii_digit) {
            continue;
        }
        if let Some(len) = ipv6_prefix(cand) {
            let stop = if len == cand.len() { end } else { s + len };
            push(out, s, stop, Entity::IpAddress);
        }
    }
}

/// Length of the IPv6 address at the start of `cand`: the whole candidate,
/// or the candidate minus a trailing `:port`. None for unspecified (`::`).
fn ipv6_prefix(cand: &str) -> Option<usize> {
    let try_parse = |s: &str| s.parse::<Ipv6Addr>().ok().filter(|a| !a.is_unspecified());
    if cand.parse::<Ipv6Addr>().is_ok() {
        return try_parse(cand).map(|_| cand.len());
    }
    let cut = cand.rfind(':')?;
    let port = &cand[cut + 1..];
    if port.is_empty() || !port.bytes().all(|c| c.is_ascii_digit()) || cand[..cut].ends_with(':') {
        return None;
    }
    try_parse(&cand[..cut]).map(|_| cut)
}

fn is_mac_colon(cand: &str) -> bool {
    let b = cand.as_bytes();
    let groups = b.iter().filter(|&&c| c == b':').count() + 1;
    let all = |n: usize| b.split(|&c| c == b':').all(|g| g.len() == n && g.iter().all(|&c| is_hex(c)));
    let mac = ((groups == 6 || groups == 8) && all(2)) || (groups == 4 && all(4));
    mac && b.iter().any(|&c| c != b'0' && c != b':')
}

/// Dash-separated (`aa-bb-cc-dd-ee-ff`) and Cisco (`aabb.ccdd.eeff`) MACs:
/// a dash MAC has a `-` at start + 2, a Cisco one a `.` at start + 4: the
/// MAC, if any, for which the byte at `p` is that one. Candidates are
/// independent: a start inside (or right after) a MAC has a hex digit,
/// `-` or `.` before it and is rejected, so they can be tried in any
/// order.
fn mac_at(b: &[u8], p: usize, out: &mut Vec<Span>) {
    let n = b.len();
    let i = match b[p] {
        b'-' if p >= 2 => p - 2,
        b'.' if p >= 4 => p - 4,
        _ => return,
    };
    if !is_hex(b[i]) || (i > 0 && (is_word(b[i - 1]) || b[i - 1] == b'-' || b[i - 1] == b'.')) {
        return;
    }
    // Dash form: 17 bytes.
    if i + 17 <= n && b[i + 2] == b'-' {
        let ok = (0..6).all(|k| is_hex(b[i + 3 * k]) && is_hex(b[i + 3 * k + 1])) && (0..5).all(|k| b[i + 3 * k + 2] == b'-');
        if ok && boundary_after(b, i + 17) {
            push(out, i, i + 17, Entity::MacAddress);
            return;
        }
    }
    // Cisco form: 14 bytes.
    if i + 14 <= n && b[i + 4] == b'.' {
        let ok = (0..3).all(|k| (0..4).all(|j| is_hex(b[i + 5 * k + j]))) && b[i + 9] == b'.';
        let has_digit_and_letter = b[i..i + 14].iter().any(u8::is_ascii_digit);
        if ok && has_digit_and_letter && boundary_after(b, i + 14) {
            push(out, i, i + 14, Entity::MacAddress);
        }
    }
}

fn boundary_after(b: &[u8], e: usize) -> bool {
    match b.get(e) {
        None => true,
        Some(&c) => !(is_word(c) || ((c == b'-' || c == b'.' || c == b':') && b.get(e + 1).is_some_and(|d| is_hex(*d)))),
    }
}

#[cfg(test)]
mod tests {
    use super::quad_ok;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn quad_ok_agrees_with_std(parts in proptest::collection::vec("[0-9]{1,3}", 4)) {
            let q = parts.join(".");
            let std = q.parse::<std::net::Ipv4Addr>().is_ok_and(|a| a.octets()[0] != 0);
            prop_assert_eq!(quad_ok(q.as_bytes()), std, "{}", q);
        }
    }
}
