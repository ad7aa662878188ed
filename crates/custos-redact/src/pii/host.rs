//! Host and domain names (`DOMAIN_NAME`), as configured by the operator.

use std::collections::HashSet;

use crate::{Entity, Span};

use super::push;

/// Which host and domain names to report as `DOMAIN_NAME` (like
/// `sos clean --domains`). Names are compared ASCII-case-insensitively;
/// a name is a *token*, a maximal run of `[A-Za-z0-9_.-]` with leading and
/// trailing dots dropped (so `host.example.com.` and `(host.example.com)`
/// are found, and an e-mail address — whose span is longer — wins over its
/// domain part).
///
/// * `domains`: a token equal to a domain or ending in `.` + the domain
///   (`example.com` finds `example.com`, `EXAMPLE.COM`,
///   `db1.eu.example.com`, `_ldap._tcp.example.com`; not
///   `notexample.com`, `example.com.au` or `foo.example.com_bak`).
/// * `hostnames`: short host names; a token equal to one, or starting with
///   it and a dot (its FQDN form `myhost.lab.local`, but also
///   `myhost.log`), is reported whole. `myhost-1`, `myhost_x`, `xmyhost`
///   are other names. A configured name with dots (`web1.example.com`)
///   adds its first label as a short name and the whole name as a domain.
/// * `any_fqdn`: additionally any token of two or more labels
///   (`[A-Za-z0-9-]`, 1–63 characters, no leading or trailing `-`, at most
///   253 characters) whose last label is a public top-level domain from
///   a built-in list (all two-letter country codes and the common generic
///   ones), written in lower or upper case (`System.Net` is not a name).
///   Not reported: file names and code (`foo.log`, `libc.so.6`,
///   `java.lang.String`, `sshd.service`, `workers2.properties`),
///   version strings (`ganglia-3.0.1`), reverse-DNS package names whose
///   first label is `com`, `org`, `net`, `java`, `android`, …
///   (`com.tencent.mm`, `java.net`). Top-level domains that collide with
///   common file extensions (`.sh .py .pl .pm .rs .so .md .in .ac .am .mk
///   .ml .mo .la .cc .cu .mm .ps .tf .id .app .dev .info`) are reported
///   only after a generic second level (`example.co.in`, `foo.com.pl`) or
///   under `www.` (`www.example.io` is fine either way: `.io` does not
///   collide; `www.foo.sh` is reported, `deploy.sh` and `README.md` are
///   not). Generic TLDs that are mostly seen as extensions or field
///   names (`.properties .network .link .zip .mov .name .email .host
///   .key .pub .cat .inc .run .page .top .store`) are not in the list at
///   all. Private suffixes (`.local`, `.lan`, `.internal`,
///   `.localdomain`) are not public TLDs: list them in `domains`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostNames {
    /// Domains whose names (and sub-domains) are reported.
    pub domains: Vec<String>,
    /// Short host names reported as whole tokens (and in FQDN form).
    pub hostnames: Vec<String>,
    /// Also report any dotted name ending in a public top-level domain.
    pub any_fqdn: bool,
}

/// The compiled form of [`HostNames`].
#[derive(Debug, Clone)]
pub(super) struct HostMatcher {
    /// Lower-case, without leading/trailing dots.
    domains: HashSet<Vec<u8>>,
    /// Lower-case first labels.
    hosts: HashSet<Vec<u8>>,
    any_fqdn: bool,
}

/// Longest DNS name.
const MAX_NAME: usize = 253;

/// `[A-Za-z0-9_.-]`, as a table (token walks are the hot loop).
const TOK: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-';
        c += 1;
    }
    t
};

fn is_tok(c: u8) -> bool {
    TOK[usize::from(c)]
}

fn norm(s: &str) -> Vec<u8> {
    s.trim().trim_matches('.').to_ascii_lowercase().into_bytes()
}

impl HostMatcher {
    /// `None` when nothing is configured (then there is nothing to find).
    pub(super) fn new(cfg: &HostNames) -> Option<HostMatcher> {
        let mut domains: HashSet<Vec<u8>> = cfg
            .domains
            .iter()
            .map(|d| norm(d))
            .filter(|d| !d.is_empty())
            .collect();
        let mut hosts = HashSet::new();
        for h in &cfg.hostnames {
            let h = norm(h);
            if h.is_empty() {
                continue;
            }
            if let Some(dot) = h.iter().position(|&c| c == b'.') {
                hosts.insert(h[..dot].to_vec());
                domains.insert(h);
            } else {
                hosts.insert(h);
            }
        }
        if domains.is_empty() && hosts.is_empty() && !cfg.any_fqdn {
            return None;
        }
        Some(HostMatcher {
            domains,
            hosts,
            any_fqdn: cfg.any_fqdn,
        })
    }

    pub(super) fn find(&self, text: &str, out: &mut Vec<Span>) {
        let b = text.as_bytes();
        if self.dots_only() {
            // Only dotted tokens can match: start from each dot.
            let mut next = 0;
            for p in memchr::memchr_iter(b'.', b) {
                if p >= next {
                    next = self.dot(b, p, out);
                }
            }
        } else {
            let mut i = 0;
            while i < b.len() {
                if !is_tok(b[i]) {
                    i += 1;
                    continue;
                }
                let s = i;
                while i < b.len() && is_tok(b[i]) {
                    i += 1;
                }
                self.token(b, s, i, out);
            }
        }
    }

    /// True if only dotted names can match (no short host names), so
    /// [`HostMatcher::dot`] on every `.` finds everything.
    pub(super) fn dots_only(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Checks the token around the `.` at `p`; returns its end (the next
    /// dot worth trying).
    pub(super) fn dot(&self, b: &[u8], p: usize, out: &mut Vec<Span>) -> usize {
        let mut s = p;
        while s > 0 && is_tok(b[s - 1]) {
            s -= 1;
        }
        let mut e = p + 1;
        while e < b.len() && is_tok(b[e]) {
            e += 1;
        }
        self.token(b, s, e, out);
        e
    }

    /// Checks the token `b[s..e]`.
    fn token(&self, b: &[u8], mut s: usize, mut e: usize, out: &mut Vec<Span>) {
        while s < e && b[s] == b'.' {
            s += 1;
        }
        while e > s && b[e - 1] == b'.' {
            e -= 1;
        }
        if s == e || e - s > MAX_NAME {
            return;
        }
        let raw = &b[s..e];
        // The public-TLD check rejects most tokens on their last label,
        // without a copy; the configured names need a lower-case one.
        let hit = (self.any_fqdn && is_public_fqdn(raw))
            || ((!self.hosts.is_empty() || !self.domains.is_empty()) && self.configured(raw));
        if hit {
            push(out, s, e, Entity::DomainName);
        }
    }

    /// `raw` is a configured host name (or its FQDN form) or under a
    /// configured domain.
    fn configured(&self, raw: &[u8]) -> bool {
        let mut buf = [0u8; MAX_NAME];
        let name = &mut buf[..raw.len()];
        name.copy_from_slice(raw);
        name.make_ascii_lowercase();
        let name = &*name;
        let first = name.iter().position(|&c| c == b'.');
        self.hosts.contains(&name[..first.unwrap_or(name.len())])
            || (!self.domains.is_empty() && self.in_domains(name))
    }

    fn in_domains(&self, name: &[u8]) -> bool {
        if self.domains.contains(name) {
            return true;
        }
        name.iter()
            .enumerate()
            .any(|(k, &c)| c == b'.' && self.domains.contains(&name[k + 1..]))
    }
}

/// Two-letter country-code TLDs (ISO 3166 assignments in the root zone,
/// plus `eu`, `uk`, `ac`, `su`), sorted.
const CCTLDS: &[&str] = &[
    "ac", "ad", "ae", "af", "ag", "ai", "al", "am", "ao", "aq", "ar", "as", "at", "au", "aw", "ax",
    "az", "ba", "bb", "bd", "be", "bf", "bg", "bh", "bi", "bj", "bm", "bn", "bo", "bq", "br", "bs",
    "bt", "bw", "by", "bz", "ca", "cc", "cd", "cf", "cg", "ch", "ci", "ck", "cl", "cm", "cn", "co",
    "cr", "cu", "cv", "cw", "cx", "cy", "cz", "de", "dj", "dk", "dm", "do", "dz", "ec", "ee", "eg",
    "er", "es", "et", "eu", "fi", "fj", "fk", "fm", "fo", "fr", "ga", "gb", "gd", "ge", "gf", "gg",
    "gh", "gi", "gl", "gm", "gn", "gp", "gq", "gr", "gs", "gt", "gu", "gw", "gy", "hk", "hm", "hn",
    "hr", "ht", "hu", "id", "ie", "il", "im", "in", "io", "iq", "ir", "is", "it", "je", "jm", "jo",
    "jp", "ke", "kg", "kh", "ki", "km", "kn", "kp", "kr", "kw", "ky", "kz", "la", "lb", "lc", "li",
    "lk", "lr", "ls", "lt", "lu", "lv", "ly", "ma", "mc", "md", "me", "mg", "mh", "mk", "ml", "mm",
    "mn", "mo", "mp", "mq", "mr", "ms", "mt", "mu", "mv", "mw", "mx", "my", "mz", "na", "nc", "ne",
    "nf", "ng", "ni", "nl", "no", "np", "nr", "nu", "nz", "om", "pa", "pe", "pf", "pg", "ph", "pk",
    "pl", "pm", "pn", "pr", "ps", "pt", "pw", "py", "qa", "re", "ro", "rs", "ru", "rw", "sa", "sb",
    "sc", "sd", "se", "sg", "sh", "si", "sk", "sl", "sm", "sn", "so", "sr", "ss", "st", "su", "sv",
    "sx", "sy", "sz", "tc", "td", "tf", "tg", "th", "tj", "tk", "tl", "tm", "tn", "to", "tr", "tt",
    "tv", "tw", "tz", "ua", "ug", "uk", "us", "uy", "uz", "va", "vc", "ve", "vg", "vi", "vn", "vu",
    "wf", "ws", "ye", "yt", "za", "zm", "zw",
];

/// Common generic TLDs, sorted. Deliberately left out (more often a file
/// extension, a systemd unit or a field name than a domain in logs):
/// `cat inc key link mov name network page properties pub run store top
/// zip email host`.
const GTLDS: &[&str] = &[
    "academy",
    "aero",
    "agency",
    "app",
    "arpa",
    "asia",
    "biz",
    "blog",
    "center",
    "cloud",
    "club",
    "com",
    "company",
    "coop",
    "design",
    "dev",
    "digital",
    "edu",
    "gov",
    "info",
    "int",
    "jobs",
    "ltd",
    "media",
    "mil",
    "mobi",
    "museum",
    "net",
    "news",
    "online",
    "org",
    "pro",
    "shop",
    "site",
    "software",
    "solutions",
    "studio",
    "support",
    "systems",
    "team",
    "tech",
    "tel",
    "today",
    "tools",
    "travel",
    "website",
    "works",
    "world",
    "xyz",
];

/// TLDs that are also common file extensions: reported only under a
/// generic second level or `www.`. Sorted.
const COLLIDING: &[&str] = &[
    "ac", "am", "app", "cc", "cu", "dev", "id", "in", "info", "la", "md", "mk", "ml", "mm", "mo",
    "pl", "pm", "ps", "py", "rs", "sh", "so", "tf",
];

/// Generic second-level labels under country codes (`co.uk`, `com.pl`).
const SLDS: &[&str] = &[
    "ac", "co", "com", "edu", "firm", "gen", "go", "gob", "gov", "gv", "ind", "ltd", "mil", "ne",
    "net", "nic", "nom", "or", "org", "plc", "res", "sch",
];

/// First labels of reverse-DNS package and class names (`com.tencent.mm`,
/// `java.net`, `org.apache.hadoop`): such tokens are not host names.
const REVERSE_DNS: &[&str] = &[
    "android", "androidx", "com", "edu", "gov", "io", "java", "javax", "jdk", "kotlin", "net",
    "org", "scala", "sun",
];

/// Longest TLD in the lists.
const MAX_TLD: usize = 9;

/// `w` is in `list`, ASCII-case-insensitively.
fn listed_ci(list: &[&str], w: &[u8]) -> bool {
    list.iter().any(|x| x.as_bytes().eq_ignore_ascii_case(w))
}

/// Two ASCII letters as an index into a 26 × 26 table.
const fn pair(a: u8, b: u8) -> usize {
    (a.to_ascii_lowercase() - b'a') as usize * 26 + (b.to_ascii_lowercase() - b'a') as usize
}

/// The two-letter entries of `list` as a 26 × 26 table.
const fn pair_table(list: &[&str]) -> [bool; 26 * 26] {
    let mut t = [false; 26 * 26];
    let mut k = 0;
    while k < list.len() {
        let w = list[k].as_bytes();
        if w.len() == 2 {
            t[pair(w[0], w[1])] = true;
        }
        k += 1;
    }
    t
}

const CC_TABLE: [bool; 26 * 26] = pair_table(CCTLDS);
const COLLIDING_TABLE: [bool; 26 * 26] = pair_table(COLLIDING);

/// `tld` (ASCII letters) is a listed top-level domain.
fn is_tld(tld: &[u8]) -> bool {
    match tld {
        [a, b] => CC_TABLE[pair(*a, *b)],
        _ => listed_ci(GTLDS, tld),
    }
}

/// `tld` (a listed TLD, ASCII letters) collides with a file extension.
fn is_colliding(tld: &[u8]) -> bool {
    match tld {
        [a, b] => COLLIDING_TABLE[pair(*a, *b)],
        _ => listed_ci(COLLIDING, tld),
    }
}

/// `name` (as written) is a public FQDN.
fn is_public_fqdn(name: &[u8]) -> bool {
    // The last label first: it rejects almost every token.
    let Some(dot) = name.iter().rposition(|&c| c == b'.') else {
        return false;
    };
    let tld = &name[dot + 1..];
    if !(2..=MAX_TLD).contains(&tld.len()) {
        return false;
    }
    // Written in one case (`System.Net` is code) and letters only.
    let case_ok = tld.iter().all(u8::is_ascii_lowercase) || tld.iter().all(u8::is_ascii_uppercase);
    if !case_ok || !is_tld(tld) {
        return false;
    }
    let labels_ok = name.split(|&c| c == b'.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
            && l[0] != b'-'
            && l[l.len() - 1] != b'-'
    });
    if !labels_ok {
        return false;
    }
    let first = &name[..name.iter().position(|&c| c == b'.').unwrap_or(name.len())];
    if listed_ci(REVERSE_DNS, first) {
        return false;
    }
    if is_colliding(tld) {
        let rest = &name[..dot];
        let second = &rest[rest.iter().rposition(|&c| c == b'.').map_or(0, |p| p + 1)..];
        let has_sld = second.len() < rest.len() && listed_ci(SLDS, second);
        return first.eq_ignore_ascii_case(b"www") || has_sld;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_sorted() {
        for list in [CCTLDS, GTLDS, COLLIDING, SLDS, REVERSE_DNS] {
            assert!(list.windows(2).all(|w| w[0] < w[1]), "{list:?}");
        }
        assert_eq!(
            CCTLDS.iter().chain(GTLDS).map(|t| t.len()).max(),
            Some(MAX_TLD)
        );
        for c in COLLIDING {
            assert!(is_tld(c.as_bytes()), "{c}");
        }
    }

    #[test]
    fn public_fqdn() {
        let f = |s: &str| is_public_fqdn(s.as_bytes());
        for yes in [
            "example.com",
            "EXAMPLE.COM",
            "www.example.io",
            "a-b.example.co.uk",
            "example.co.in",
            "www.foo.sh",
            "ns.marryaldkfaczcz.com",
            "4.3.2.1.in-addr.arpa",
        ] {
            assert!(f(yes), "{yes}");
        }
        for no in [
            "foo.log",
            "libc.so",
            "java.lang.String",
            "sshd.service",
            "workers2.properties",
            "deploy.sh",
            "README.md",
            "Makefile.in",
            "lib.rs",
            "setup.py",
            "com.tencent.mm",
            "java.net",
            "java.io",
            "System.Net",
            "-a.com",
            "a_b.com",
            "1.2.3.4",
            "a..com",
            "pam_env.so",
            "foo.Com",
            "script.pl",
            "config.h.in",
            "Safari.app",
        ] {
            assert!(!f(no), "{no}");
        }
    }
}
