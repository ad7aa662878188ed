//! Detectors of personal data.
//!
//! [`Detector`] is built once and reused; [`Detector::find`] returns byte
//! spans over one line or text, sorted by start and non-overlapping (when
//! two candidates overlap the longer one wins; on equal length the more
//! specific entity, in [`Entity`] order, wins). [`Detector::find_into`]
//! does the same into a caller's `Vec`, so a loop over lines allocates
//! nothing (a line without findings never allocates).
//!
//! Detectors (all hand-written byte scanners, plus one regex for
//! user-name contexts behind a literal prefilter):
//!
//! | entity | what |
//! |---|---|
//! | `EMAIL_ADDRESS` | `local@domain.tld` (found from each `@`) |
//! | `IP_ADDRESS` | IPv4 dotted quads; IPv6 in every textual form (`::`, embedded IPv4, `%zone`, trailing `:port` dropped); each candidate validated by `std::net`. Not matched: the wildcards (`0.0.0.0` and all of `0.0.0.0/8`, `::`, `::0`, `0:0:0:0:0:0:0:0`), version strings (more than four dotted parts, a quad touching `.digit` or a word character, components > 255 or with leading zeros), runs glued to word characters (`trusted_ca::ca`), and IPv6 candidates without any digit (`dead::beef`). |
//! | `MAC_ADDRESS` | `aa:bb:cc:dd:ee:ff`, 8-group EUI-64, `aabb:ccdd:eeff:0011`, `aa-bb-cc-dd-ee-ff`, Cisco `aabb.ccdd.eeff` |
//! | `CREDIT_CARD` | 13–19 digits, first digit 2–6 (or 15-digit JCB `1800…`), Luhn, no or uniform space/dash separators in 4-digit groups (or Amex 4-6-5) |
//! | `IBAN_CODE` | country code with its registry length, mod-97, optional single spaces |
//! | `US_SSN` | `ddd-dd-dddd` without area 000/666/900–999, group 00, serial 0000 |
//! | `PHONE_NUMBER` | E.164 `+` and 8–15 digits (separators ` -.()`; not followed by `:` so `+2016-09-28 04:30` is skipped); North American `(555) 123-4567`, `(555)123-4567`, `555-123-4567`, `555.123.4567` (area code 2–9, optional `1-`/`001-` prefix); trunk-prefixed national numbers `0490 75 40 81`, `03.93.92.16.85` (a `0`, then 2–5 groups, 9–11 digits, one kind of separator); optional extension `x123`/`ext. 123`/`#123` |
//! | `URL` | URLs with `user:pass@` in the authority (whole URL) |
//! | `DOMAIN_NAME` | only when configured ([`Detector::with_config`], [`HostNames`]): names equal to or under a configured domain (`db1.example.com`, `EXAMPLE.COM`; not `notexample.com`, `example.com.au`), configured short host names as whole tokens and their FQDN form (`web01`, `web01.lab.local`; not `web011`, `web01-b`), and with `any_fqdn` any dotted name whose last label is a public TLD from a built-in list, minus file names, code and versions (`foo.log`, `libc.so.6`, `java.lang.String`, `sshd.service`, `README.md`, `com.tencent.mm`). A token is a run of `[A-Za-z0-9_.-]` without its leading/trailing dots; an e-mail address or credential URL around it is longer and wins. [`Detector::new`] configures none, so it reports no `DOMAIN_NAME`. |
//! | `USER_NAME` | the name only, after `user=`, `ruser=`, `logname=`, `user X`, `for user X`, `for invalid user X`, `password/publickey for X`, `/home/X`, `C:\Users\X`, and a whole-token `DOMAIN\X` |
//!
//! How it stays fast (see `benches/detect.rs`): which scanners run on a
//! line follows from cheap checks (no `@`: no e-mail or credential URL);
//! one SWAR pass over the line, eight bytes at a time (`scan::Masks`,
//! private), finds the first byte of every digit run, every `.`/`-`, every
//! `:` and every `+`/`(` at once, instead of one `memchr` per byte class
//! (whose fixed cost per call dominated on short lines); the digit-run
//! starts serve cards, SSNs, IBANs and national phone numbers (each
//! candidate first rejected on its run length and neighbours), the dots and
//! dashes serve IPv4, the dash/Cisco MACs and dotted host names (a token is
//! first judged on its last label), the colons IPv6 and colon MACs; the
//! user-name regex runs only on lines holding one of its literals
//! (Aho-Corasick over a lower-cased copy, or once per block of lines with
//! [`crate::LinePrefilter`]); Luhn / mod-97 and address parsing only run
//! on candidates of the right shape.
//!
//! Speed, `cargo bench -p custos-redact --bench detect` (every loghub
//! `*.log` repeated, one line at a time, one thread, release build,
//! fastest of the passes; 2 cores shared with other work, so figures move
//! by 10–20 % between runs). 2026-11-30, 100 MB, after the `Masks` pass:
//! `Detector::new()` about 330 MB/s; `secrets::Rules::builtin()` about
//! 1,500 MB/s; with `any_fqdn` on as the default policy has it, the PII
//! detectors about 320 MB/s and PII plus built-in secrets — the default
//! policy's detection work, line by line without block hints — about
//! 270 MB/s (250 before the `Masks` pass; 83–90 MB/s for the PII detectors
//! before the scanners were first reworked). Alone, each scanner family
//! runs at 940–1,150 MB/s (IP, MAC, card, IBAN, SSN, phone, user names;
//! most of that is the shared `Masks` pass) and e-mail, URL and domain
//! names at 3,100–4,200 MB/s (`CUSTOS_BENCH_EACH=1`).
//!
//! Measured quality: on presidio-research's `synth_dataset_v2.dev.json`
//! (`tests::presidio_recall`, matched by value, `any_fqdn` on) recall is
//! e-mail 18/18, IP 9/9, SSN 10/10, IBAN 16/16, card 97/105, phone 51/75,
//! domain 17/17, with no finding outside the labelled values. On the
//! loghub logs: every dotted quad not in `0.0.0.0/8` is found (checked
//! for OpenSSH, Thunderbird, Zookeeper), no IP in Windows, none of the
//! Zookeeper wildcards, and no card/SSN/IBAN/phone hit in any of the nine
//! systems (HDFS `date time pid` triples were a phone trap, now
//! excluded); with `any_fqdn` exactly 12 distinct names are reported
//! (`tests::any_fqdn_on_loghub`), all real host names
//! (`MSRA-SA-41.fareast.corp.microsoft.com`,
//! `customer-187-141-143-180-sta.uninet-ide.com.mx`, `wiki.apache.org`,
//! …), none of the file, class, package or version names around them.
//! The 25 sos cleaner line cases that are not keyword cases behave as
//! expected with the domain and host names sos' tests configure.
//!
//! Known misses: phone numbers without a `+`, a trunk `0` or North
//! American shape (`699 956 915`, `(37) 788-063`, bare `9498777106` —
//! plain digit runs are left alone on purpose); 12-digit Maestro cards
//! and cards whose groups are not 4-digit (or Amex 4-6-5); IBANs of
//! countries missing from the table; `::1`-style loopbacks are reported
//! (they are addresses); IPv6 without any decimal digit (`dead::beef`) is
//! skipped to avoid `a::b` code paths; user names in contexts other than
//! those above; with `any_fqdn` only, host names under private suffixes
//! (`.local`, `.lan`, `.internal`) and under TLDs that collide with file
//! extensions unless a generic second level or `www.` precedes them
//! (`example.in` is missed, `example.co.in` found; see [`HostNames`]).
//! Over-matches: `user X` takes any word not in a small stop list
//! (Android's numeric `user=0` is reported); a configured short host name
//! also matches `name.anything` (`web01.log`).

mod host;
mod net;
pub(crate) mod scan;
mod text;
mod user;

#[cfg(test)]
mod tests;

use crate::prefilter::LineHints;
pub(crate) use scan::Masks;
use crate::{Entity, Span};

pub use host::HostNames;

/// `[A-Za-z0-9_]`.
fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn push(out: &mut Vec<Span>, start: usize, end: usize, entity: Entity) {
    out.push(Span { start, end, entity, rule: None });
}

/// The PII detectors, built once and reused across lines.
#[derive(Debug, Clone)]
pub struct Detector {
    /// Bit `e as u32` set for each enabled entity.
    enabled: u32,
    users: user::UserScanner,
    /// Host and domain names to look for (DOMAIN_NAME), when configured.
    hosts: Option<host::HostMatcher>,
}

impl Default for Detector {
    fn default() -> Self {
        Self::new()
    }
}

/// Every entity the PII detectors can report. `DOMAIN_NAME` reports
/// nothing unless host names, domains or `any_fqdn` are configured
/// ([`Detector::with_config`]), so it is harmless in this list.
pub const PII_ENTITIES: &[Entity] = &[
    Entity::EmailAddress,
    Entity::IpAddress,
    Entity::MacAddress,
    Entity::CreditCard,
    Entity::IbanCode,
    Entity::UsSsn,
    Entity::PhoneNumber,
    Entity::Url,
    Entity::DomainName,
    Entity::UserName,
];

fn bit(e: Entity) -> u32 {
    1u32 << (e as u32 & 31)
}

impl Detector {
    /// All PII detectors (no host names or domains configured, so
    /// `DOMAIN_NAME` finds nothing).
    pub fn new() -> Self {
        Self::with_entities(PII_ENTITIES)
    }

    /// Only the detectors for `entities` (others in the list are ignored).
    pub fn with_entities(entities: &[Entity]) -> Self {
        Self::with_config(entities, &HostNames::default())
    }

    /// The detectors for `entities`, with the host names and domains of
    /// `hosts` reported as `DOMAIN_NAME` when that entity is listed (see
    /// [`HostNames`] for the matching rules).
    pub fn with_config(entities: &[Entity], hosts: &HostNames) -> Self {
        let enabled = entities.iter().fold(0, |m, &e| m | bit(e));
        let hosts = if enabled & bit(Entity::DomainName) != 0 { host::HostMatcher::new(hosts) } else { None };
        Detector { enabled, users: user::UserScanner::new(), hosts }
    }

    fn on(&self, e: Entity) -> bool {
        self.enabled & bit(e) != 0
    }

    /// Findings in `text`: sorted by start, non-overlapping.
    pub fn find(&self, text: &str) -> Vec<Span> {
        let mut out = Vec::new();
        self.find_into(text, &mut out);
        out
    }

    /// Like [`Detector::find`], but appends the findings to `out` (what
    /// `out` already holds is left alone; the appended spans are sorted and
    /// non-overlapping among themselves). Reusing one `out` across lines
    /// avoids an allocation per line; nothing is allocated for a line
    /// without findings.
    pub fn find_into(&self, text: &str, out: &mut Vec<Span>) {
        Masks::with_local(|masks| self.find_hinted(text, LineHints::UNKNOWN, out, masks));
    }

    /// Whether the user-name scanner runs.
    pub(crate) fn users_on(&self) -> bool {
        self.on(Entity::UserName)
    }

    /// See `UserScanner::context_find`.
    pub(crate) fn user_context_find(&self, lower: &[u8], from: usize) -> Option<usize> {
        self.users.context_find(lower, from)
    }

    /// See `UserScanner::cron_find`.
    pub(crate) fn cron_find(&self, b: &[u8], from: usize) -> Option<usize> {
        self.users.cron_find(b, from)
    }

    /// [`Detector::find_into`] with what a block prefilter learned about
    /// `text` (see [`crate::prefilter`]).
    /// `masks` is scratch space (kept by the caller to reuse its memory).
    pub(crate) fn find_hinted(&self, text: &str, hints: LineHints, out: &mut Vec<Span>, masks: &mut Masks) {
        let from = out.len();
        let b = text.as_bytes();
        // Which characters occur decides which scanners can match at all.
        let has = |c: u8| memchr::memchr(c, b).is_some();
        let has_at = hints.may(LineHints::AT) && (hints.exact() || has(b'@'));
        if self.on(Entity::Url) && has_at && has(b':') {
            text::cred_url(text, out);
        }
        if self.on(Entity::EmailAddress) && has_at {
            text::email(text, out);
        }
        let (ip, mac) = (self.on(Entity::IpAddress), self.on(Entity::MacAddress));
        // Dotted host names ride on the same pass over the dots.
        let dot_hosts = self.hosts.as_ref().filter(|h| h.dots_only());
        let want = text::Numeric {
            card: self.on(Entity::CreditCard),
            ssn: self.on(Entity::UsSsn),
            iban: self.on(Entity::IbanCode),
            phone: self.on(Entity::PhoneNumber),
        };
        let numeric = want.card || want.ssn || want.iban || want.phone;
        if ip || mac || dot_hosts.is_some() || numeric {
            // One pass finds where each of these scanners starts.
            masks.fill(b);
        }
        if ip || mac || dot_hosts.is_some() {
            net::dots(text, masks.dots_dashes(), ip, mac, dot_hosts, out);
        }
        if ip || mac {
            net::colon_runs(text, masks.colons(), ip, mac, out);
        }
        if numeric {
            // Every one of these starts at (or just before) a digit run,
            // a `+` or a `(`.
            text::numeric(text, masks.starts(), masks.plus_paren(), want, out);
        }
        if let Some(h) = self.hosts.as_ref().filter(|h| !h.dots_only()) {
            h.find(text, out);
        }
        if self.on(Entity::UserName) {
            self.users.find(text, hints, out);
        }
        resolve_tail(out, from);
    }
}

/// Keeps the longest of overlapping spans (ties: lower `Entity`, then
/// earlier start), returns them sorted by start.
#[cfg(test)]
pub(crate) fn resolve(mut spans: Vec<Span>) -> Vec<Span> {
    resolve_tail(&mut spans, 0);
    spans
}

/// Priority order: longer first, then lower entity, then earlier start.
fn priority(a: &Span, b: &Span) -> std::cmp::Ordering {
    (b.end - b.start).cmp(&(a.end - a.start)).then(a.entity.cmp(&b.entity)).then(a.start.cmp(&b.start))
}

/// Keeps the longest of overlapping spans in `spans[from..]` (ties: lower
/// `Entity`, then earlier start), sorted by start, in place. Also used by
/// the engine to merge PII, secret and custom findings.
pub(crate) fn resolve_tail(spans: &mut Vec<Span>, from: usize) {
    let mut k = from;
    while k < spans.len() {
        if spans[k].start < spans[k].end {
            k += 1;
        } else {
            spans.swap_remove(k);
        }
    }
    let n = spans.len() - from;
    if n <= 1 {
        return;
    }
    let tail = &mut spans[from..];
    // Fast path, no overlap at all (the common case): just sort by start.
    tail.sort_unstable_by(|a, b| a.start.cmp(&b.start).then_with(|| priority(a, b)));
    if tail.windows(2).all(|w| w[0].end <= w[1].start) {
        return;
    }
    tail.sort_by(priority);
    if n <= 32 {
        // Greedy by priority against the (few) accepted ones.
        let mut kept = 0;
        for i in 0..n {
            let (s, e) = (tail[i].start, tail[i].end);
            if tail[..kept].iter().all(|k| k.end <= s || e <= k.start) {
                tail.swap(kept, i);
                kept += 1;
            }
        }
        spans.truncate(from + kept);
    } else {
        // Accepted spans by start; they never overlap, so checking the
        // nearest one on each side is enough (O(n log n)).
        let mut kept: std::collections::BTreeMap<usize, Span> = std::collections::BTreeMap::new();
        for s in spans.drain(from..) {
            let before_ok = kept.range(..=s.start).next_back().is_none_or(|(_, k)| k.end <= s.start);
            let after_ok = kept.range(s.start..).next().is_none_or(|(_, k)| s.end <= k.start);
            if before_ok && after_ok {
                kept.insert(s.start, s);
            }
        }
        spans.extend(kept.into_values());
        return;
    }
    spans[from..].sort_unstable_by_key(|s| s.start);
}
