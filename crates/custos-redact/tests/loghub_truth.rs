//! Ground truth from loghub's own parse: each line of the OpenSSH,
//! Thunderbird and Windows samples comes with its event template, whose
//! `<*>` parameters are the variable values. Every parameter that is an IP
//! address (it parses as one), a MAC address, an e-mail address, or a user
//! name (the template puts it after `user `, `user=`, `for `, …) must be
//! found by the default detectors, as exactly that text and entity. The
//! values nobody labelled are checked the other way: no IP finding may be a
//! string that does not parse as an address (the version-string and
//! wildcard traps).

use std::net::IpAddr;

use custos_redact::{Entity, Policy, Redactor};
use regex::Regex;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/corpus/loghub");

/// Minimal CSV: commas, double quotes with `""` escapes, one record per line.
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn template_regex(t: &str) -> Regex {
    let parts: Vec<String> = t.split("<*>").map(regex::escape).collect();
    Regex::new(&format!("^{}$", parts.join("(.*?)"))).unwrap()
}

fn user_context(before: &str) -> bool {
    let b = before.trim_end_matches(['[', '(']).to_ascii_lowercase();
    ["user ", "user=", "password for ", "publickey for ", "none for ", "invalid user "].iter().any(|k| b.ends_with(k))
}

#[derive(Debug, PartialEq)]
enum Want {
    Ip,
    Mac,
    Email,
    User,
}

fn classify(before: &str, v: &str) -> Option<Want> {
    let mac = Regex::new(r"(?i)^([0-9a-f]{2}[:-]){5}[0-9a-f]{2}$").unwrap();
    let email = Regex::new(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$").unwrap();
    // 0.0.0.0/8 is "this network", never a host (and `version 0.0.0.6` is
    // a version string): not an address to find.
    let this_net = |ip: &IpAddr| matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 0);
    if v.parse::<IpAddr>().is_ok_and(|ip| !ip.is_unspecified() && !this_net(&ip) && !before.ends_with("version ")) {
        Some(Want::Ip)
    } else if mac.is_match(v) {
        Some(Want::Mac)
    } else if email.is_match(v) {
        Some(Want::Email)
    } else if user_context(before) && !v.is_empty() && !v.contains(' ') && v != "unknown" {
        Some(Want::User)
    } else {
        None
    }
}

fn entity(w: &Want) -> Entity {
    match w {
        Want::Ip => Entity::IpAddress,
        Want::Mac => Entity::MacAddress,
        Want::Email => Entity::EmailAddress,
        Want::User => Entity::UserName,
    }
}

#[test]
fn every_labelled_ip_mac_email_and_user_name_is_found_and_no_trap_is() {
    let r = Redactor::detect_all(Policy::default_policy(), None, None).unwrap();
    let mut report = Vec::new();
    for sys in ["OpenSSH", "Thunderbird", "Windows"] {
        let text = std::fs::read_to_string(format!("{CORPUS}/{sys}/{sys}_2k.log_structured.csv")).unwrap();
        let mut lines = text.lines();
        let header = csv_fields(lines.next().unwrap());
        let content = header.iter().position(|h| h == "Content").unwrap();
        let template = header.iter().position(|h| h == "EventTemplate").unwrap();
        let mut cache = std::collections::HashMap::new();
        let (mut labelled, mut missed, mut traps) = (std::collections::BTreeMap::<String, usize>::new(), Vec::new(), Vec::new());
        for line in lines {
            let f = csv_fields(line);
            let (c, t) = (&f[content], &f[template]);
            let re = cache.entry(t.clone()).or_insert_with(|| template_regex(t));
            let spans = r.find(c);
            for s in &spans {
                if s.entity == Entity::IpAddress {
                    let v = &c[s.start..s.end];
                    let addr = v.split('%').next().unwrap_or(v);
                    if addr.parse::<IpAddr>().is_err() {
                        traps.push(format!("{v} in {c}"));
                    }
                }
            }
            let Some(caps) = re.captures(c) else { continue };
            for g in caps.iter().skip(1).flatten() {
                let before = &c[..g.start()];
                let Some(want) = classify(before, g.as_str()) else { continue };
                *labelled.entry(format!("{want:?}")).or_default() += 1;
                let e = entity(&want);
                if !spans.iter().any(|s| s.entity == e && s.start <= g.start() && s.end >= g.end()) {
                    missed.push(format!("{want:?} {:?} in {c}", g.as_str()));
                }
            }
        }
        report.push(format!("{sys}: labelled {labelled:?}, missed {}, traps hit {}", missed.len(), traps.len()));
        assert!(missed.is_empty(), "{sys}: {} missed, e.g. {:#?}", missed.len(), &missed[..missed.len().min(10)]);
        assert!(traps.is_empty(), "{sys}: {traps:#?}");
    }
    println!("{}", report.join("\n"));
    assert!(report[0].contains("User") && report[0].contains("Ip"), "the OpenSSH sample has users and IPs: {report:?}");
}
