//! Keyed pseudonyms: HMAC-SHA256 under a per-installation key, stable
//! across runs, and shaped like the value they replace where that helps
//! support correlate (as `sos clean` does).
//!
//! | entity | pseudonym | example |
//! |---|---|---|
//! | IPv4 | an address in `240.0.0.0/4` (reserved, never routed): 28 bits of HMAC | `10.1.2.3` → `243.18.200.7` |
//! | IPv6 | an address in `2001:db8::/32` (documentation): 96 bits of HMAC; a `%zone` is kept | `fe80::1` → `2001:db8:9f1:…` |
//! | MAC | same length, separators and case; the first two octets `ce:c5` (locally administered, unicast), the rest HMAC | `00:1A:2B:3C:4D:5E` → `CE:C5:81:0F:3A:9B` |
//! | user name | `u` + 10 hex digits | `root` → `u5f1c0a9e2b` |
//! | e-mail | user pseudonym of the local part `@` domain pseudonym | `alice@corp.example.com` → `u0c1…@h1a2b3c4d.d5e6f7a8b.invalid` |
//! | host/domain | one label: `h` + 8 hex; two labels: `d<8 hex>.invalid`; more: `h<8 hex of the name>.d<8 hex of its parent>.invalid`, so names under one parent share a suffix | `db01.corp.example.com` → `h…​.d….invalid` |
//! | anything else | `<ENTITY-` + 10 hex + `>` | `<CREDIT_CARD-7d0c4e1a92>` |
//!
//! Inputs are normalised before hashing (IP addresses canonicalised, MACs
//! and domains lower-cased, MAC separators ignored), and every kind hashes
//! under its own label, so one value always gets one pseudonym per key.
//! A user name and the local part of an e-mail address share the user
//! label: `alice` and `alice@…` correlate.
//!
//! Pseudonyms are recognisable ([`is_pseudonym`]), so redacting redacted
//! text changes nothing. Truncation means collisions are possible (28 bits
//! for IPv4: likely beyond some ten thousand distinct addresses); the
//! pseudonym map keeps every value seen for a token.

use std::fmt::Write;
use std::net::{Ipv4Addr, Ipv6Addr};

use custos_model::Secret;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::Entity;

/// The per-installation pseudonym key: 32 random bytes. Never prints.
#[derive(Clone)]
pub struct PseudonymKey(Secret<[u8; 32]>);

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PseudonymKey(<redacted>)")
    }
}

impl PseudonymKey {
    /// Wraps key bytes (from the key file, or fresh randomness).
    pub fn new(bytes: [u8; 32]) -> Self {
        PseudonymKey(Secret::new(bytes))
    }
}

/// A pseudonym and the map entries it implies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pseudonym {
    /// What replaces the value.
    pub text: String,
    /// `(token, original)` pairs to remember: the whole pseudonym and its
    /// meaningful parts (an e-mail's domain, a host name's parent domain).
    pub entries: Vec<(String, String)>,
}

/// Makes pseudonyms under one key.
#[derive(Clone, Debug)]
pub struct Pseudonymizer {
    mac: Hmac<Sha256>,
}

fn hex(bytes: &[u8], digits: usize) -> String {
    let mut s = String::with_capacity(digits + 1);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
        if s.len() >= digits {
            break;
        }
    }
    s.truncate(digits);
    s
}

impl Pseudonymizer {
    /// A pseudonymizer for `key`.
    pub fn new(key: &PseudonymKey) -> Self {
        // Invariant: HMAC accepts keys of any length, so this cannot fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key.0.expose()).expect("hmac takes any key length");
        Pseudonymizer { mac }
    }

    fn hash(&self, label: &str, value: &str) -> [u8; 32] {
        let mut m = self.mac.clone();
        m.update(label.as_bytes());
        m.update(&[0]);
        m.update(value.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// The pseudonym of `value`, found as `entity` (`name` is the printed
    /// entity name, used for custom entities and the generic form).
    pub fn pseudonym(&self, entity: Entity, name: &str, value: &str) -> Pseudonym {
        let text = match entity {
            Entity::IpAddress => match self.ip(value) {
                Some(t) => t,
                None => self.generic(name, value),
            },
            Entity::MacAddress => self.mac_address(value),
            Entity::UserName => self.user(value),
            Entity::EmailAddress => match value.rsplit_once('@') {
                Some((local, domain)) => {
                    let d = self.domain(domain);
                    let entries = vec![
                        (format!("{}@{d}", self.user(local)), value.to_string()),
                        (d.clone(), domain.to_ascii_lowercase()),
                    ];
                    return Pseudonym { text: entries[0].0.clone(), entries };
                }
                None => self.generic(name, value),
            },
            Entity::DomainName => {
                let d = self.domain(value);
                let mut entries = vec![(d.clone(), value.to_string())];
                let lower = value.trim_end_matches('.').to_ascii_lowercase();
                if let (Some((_, parent)), Some((_, suffix))) = (lower.split_once('.'), d.split_once('.')) {
                    if parent.contains('.') {
                        entries.push((suffix.to_string(), parent.to_string()));
                    }
                }
                return Pseudonym { text: d, entries };
            }
            _ => self.generic(name, value),
        };
        Pseudonym { entries: vec![(text.clone(), value.to_string())], text }
    }

    fn generic(&self, name: &str, value: &str) -> String {
        format!("<{name}-{}>", hex(&self.hash(name, value), 10))
    }

    fn user(&self, name: &str) -> String {
        format!("u{}", hex(&self.hash("user", name), 10))
    }

    fn domain(&self, name: &str) -> String {
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        let h = |s: &str| hex(&self.hash("domain", s), 8);
        match lower.split_once('.') {
            None => format!("h{}", h(&lower)),
            Some((_, parent)) if parent.contains('.') => format!("h{}.d{}.invalid", h(&lower), h(parent)),
            Some(_) => format!("d{}.invalid", h(&lower)),
        }
    }

    fn ip(&self, value: &str) -> Option<String> {
        let (addr, zone) = match value.find('%') {
            Some(i) => (&value[..i], &value[i..]),
            None => (value, ""),
        };
        if let Ok(v4) = addr.parse::<Ipv4Addr>() {
            let h = self.hash("ip4", &v4.to_string());
            return Some(Ipv4Addr::new(0xF0 | (h[0] & 0x0F), h[1], h[2], h[3]).to_string());
        }
        let v6 = addr.parse::<Ipv6Addr>().ok()?;
        let h = self.hash("ip6", &v6.to_string());
        let mut o = [0u8; 16];
        o[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        o[4..].copy_from_slice(&h[..12]);
        Some(format!("{}{zone}", Ipv6Addr::from(o)))
    }

    fn mac_address(&self, value: &str) -> String {
        let digits: String = value.chars().filter(|c| c.is_ascii_hexdigit()).map(|c| c.to_ascii_lowercase()).collect();
        let h = self.hash("mac", &digits);
        let new = format!("cec5{}", hex(&h, digits.len().saturating_sub(4)));
        let upper = value.chars().any(|c| c.is_ascii_uppercase());
        let mut fresh = new.chars();
        value
            .chars()
            .map(|c| {
                if c.is_ascii_hexdigit() {
                    let n = fresh.next().unwrap_or('0');
                    if upper {
                        n.to_ascii_uppercase()
                    } else {
                        n
                    }
                } else {
                    c
                }
            })
            .collect()
    }
}

fn all_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `text` is a tag (`<ENTITY>`) or a generic pseudonym
/// (`<ENTITY-0123456789>`), whatever the entity.
pub fn is_marker(text: &str) -> bool {
    let Some(inner) = text.strip_prefix('<').and_then(|t| t.strip_suffix('>')) else {
        return false;
    };
    let name = match inner.rsplit_once('-') {
        Some((name, h)) if h.len() == 10 && all_hex(h) => name,
        _ => inner,
    };
    let mut b = name.bytes();
    matches!(b.next(), Some(b'A'..=b'Z')) && b.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
}

/// Whether `text`, found as `entity`, is already one of our pseudonyms or
/// tags (so a second redaction leaves it alone).
pub fn is_pseudonym(entity: Entity, text: &str) -> bool {
    if is_marker(text) {
        return true;
    }
    let is_user = |s: &str| s.len() == 11 && s.starts_with('u') && all_hex(&s[1..]);
    let is_domain = |s: &str| {
        let l = s.to_ascii_lowercase();
        l.ends_with(".invalid") || (l.len() == 9 && l.starts_with('h') && all_hex(&l[1..]))
    };
    match entity {
        Entity::IpAddress => {
            let addr = text.split('%').next().unwrap_or(text);
            if let Ok(v4) = addr.parse::<Ipv4Addr>() {
                return v4.octets()[0] >= 0xF0;
            }
            addr.parse::<Ipv6Addr>().is_ok_and(|v6| v6.segments()[..2] == [0x2001, 0x0db8])
        }
        Entity::MacAddress => {
            let d: String = text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
            d.to_ascii_lowercase().starts_with("cec5")
        }
        Entity::UserName => is_user(text),
        Entity::DomainName => is_domain(text),
        Entity::EmailAddress => text.rsplit_once('@').is_some_and(|(l, d)| is_user(l) && is_domain(d)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Pseudonymizer {
        Pseudonymizer::new(&PseudonymKey::new([7; 32]))
    }

    #[test]
    fn pseudonyms_are_stable_keyed_and_shaped_like_the_value() {
        let a = p();
        let b = Pseudonymizer::new(&PseudonymKey::new([8; 32]));
        for (e, v) in [
            (Entity::IpAddress, "10.1.2.3"),
            (Entity::IpAddress, "fe80::1%eth0"),
            (Entity::MacAddress, "00:1A:2B:3C:4D:5E"),
            (Entity::MacAddress, "001a.2b3c.4d5e"),
            (Entity::EmailAddress, "Alice@Corp.Example.com"),
            (Entity::DomainName, "db01.corp.example.com"),
            (Entity::DomainName, "db01"),
            (Entity::UserName, "root"),
            (Entity::CreditCard, "4111111111111111"),
        ] {
            let x = a.pseudonym(e, e.name(), v);
            assert_eq!(x, a.pseudonym(e, e.name(), v), "stable");
            assert_ne!(x.text, b.pseudonym(e, e.name(), v).text, "keyed");
            assert_ne!(x.text, v);
            assert!(is_pseudonym(e, &x.text), "{e} {v} -> {}", x.text);
            assert!(!is_pseudonym(e, v), "{v} is not a pseudonym");
            assert_eq!(x.entries[0], (x.text.clone(), v.to_string()));
        }
        let ip = a.pseudonym(Entity::IpAddress, "IP_ADDRESS", "10.1.2.3").text;
        assert!(ip.parse::<Ipv4Addr>().unwrap().octets()[0] >= 240);
        let v6 = a.pseudonym(Entity::IpAddress, "IP_ADDRESS", "fe80::1%eth0").text;
        assert!(v6.starts_with("2001:db8:") && v6.ends_with("%eth0"), "{v6}");
        let mac = a.pseudonym(Entity::MacAddress, "MAC_ADDRESS", "00:1A:2B:3C:4D:5E").text;
        assert!(mac.starts_with("CE:C5:") && mac.len() == 17, "{mac}");
        let cisco = a.pseudonym(Entity::MacAddress, "MAC_ADDRESS", "001a.2b3c.4d5e").text;
        assert!(cisco.starts_with("cec5.") && cisco.len() == 14, "{cisco}");
        assert_eq!(
            a.pseudonym(Entity::MacAddress, "MAC_ADDRESS", "00:1a:2b:3c:4d:5e").text.replace(':', ""),
            cisco.replace('.', ""),
            "one MAC, one pseudonym, whatever the notation"
        );
    }

    #[test]
    fn emails_hosts_and_users_correlate() {
        let a = p();
        let user = a.pseudonym(Entity::UserName, "USER_NAME", "alice").text;
        let mail = a.pseudonym(Entity::EmailAddress, "EMAIL_ADDRESS", "alice@corp.example.com");
        assert!(mail.text.starts_with(&format!("{user}@h")), "{}", mail.text);
        let host = a.pseudonym(Entity::DomainName, "DOMAIN_NAME", "corp.example.com");
        assert_eq!(mail.text.split('@').nth(1).unwrap(), host.text);
        assert_eq!(mail.entries[1], (host.text.clone(), "corp.example.com".to_string()));
        let web1 = a.pseudonym(Entity::DomainName, "DOMAIN_NAME", "web1.corp.example.com").text;
        let web2 = a.pseudonym(Entity::DomainName, "DOMAIN_NAME", "WEB2.corp.example.com.").text;
        assert_ne!(web1, web2);
        assert_eq!(web1.split_once('.').unwrap().1, web2.split_once('.').unwrap().1, "same parent, same suffix");
    }

    #[test]
    fn markers_are_recognised() {
        assert!(is_marker("<EMAIL_ADDRESS>"));
        assert!(is_marker("<CREDIT_CARD-0123456789>"));
        assert!(is_marker("<PROJECT_CODE2>"));
        assert!(!is_marker("<html>"));
        assert!(!is_marker("<A-xyz>-"));
        assert!(!is_marker("EMAIL_ADDRESS"));
    }

    #[test]
    fn key_never_prints() {
        assert_eq!(format!("{:?}", PseudonymKey::new([1; 32])), "PseudonymKey(<redacted>)");
    }
}
