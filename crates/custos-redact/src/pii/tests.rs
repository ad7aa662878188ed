use super::*;
use proptest::prelude::*;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/corpus");

fn found(text: &str) -> Vec<(Entity, &str)> {
    Detector::new().find(text).into_iter().map(|s| (s.entity, &text[s.start..s.end])).collect()
}

fn of(text: &str, e: Entity) -> Vec<&str> {
    found(text).into_iter().filter(|(k, _)| *k == e).map(|(_, v)| v).collect()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(format!("{CORPUS}/{rel}")).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn user_regex_compiles() {
    let d = user::UserScanner::new();
    let mut out = Vec::new();
    d.find("Failed password for root from 1.2.3.4", crate::LineHints::UNKNOWN, &mut out);
    assert_eq!(out.len(), 1);
}

#[test]
fn emails() {
    assert_eq!(of("mail to john.doe+x@example.co.uk, ok", Entity::EmailAddress), ["john.doe+x@example.co.uk"]);
    assert!(of("00000001@2016/9/27 @0x7fed806eb5d a@b", Entity::EmailAddress).is_empty());
}

#[test]
fn ipv4() {
    assert_eq!(of("from 183.62.140.253 port 22", Entity::IpAddress), ["183.62.140.253"]);
    assert_eq!(of("[10.0.0.1]:80 and 10.0.0.1/24", Entity::IpAddress), ["10.0.0.1", "10.0.0.1"]);
    for trap in ["v6.1.7601.23505", "6.1.7601.23505", "10.1.2.350", "mycoolpackage-1.2.3.4.5", "0.0.0.0", "0.0.0.6", "1.2.3.4.5", "x.1.2.3.4", "01.02.03.04", "2016.1.2.3"] {
        assert!(of(trap, Entity::IpAddress).is_empty(), "{trap}");
    }
}

#[test]
fn ipv6() {
    for (t, want) in [
        ("a fe80::1%eth0 b", "fe80::1%eth0"),
        ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8:0:0:1:0:0:1"),
        ("/10.10.34.11:3888", "10.10.34.11"),
        ("::1", "::1"),
        ("2001:db8::7:8080 port", "2001:db8::7:8080"),
        ("2001:DB8::ABCD.", "2001:DB8::ABCD"),
    ] {
        assert_eq!(of(t, Entity::IpAddress), [want], "{t}");
    }
    for trap in ["::", "::0", "0:0:0:0:0:0:0:0", "x/0:0:0:0:0:0:0:0:2181:FastLeaderElection@774", "trusted_ca::ca", "dead::beef", "12:01:01", "std::fmt"] {
        assert!(of(trap, Entity::IpAddress).is_empty(), "{trap}");
    }
}

#[test]
fn macs() {
    for t in ["00:1a:2b:3c:4d:5e", "00-1A-2B-3C-4D-5E", "001a.2b3c.4d5e", "AABB:CCDD:EEFF:FFAA", "AA:BB:CC:FF:FE:DD:EE:FF"] {
        assert_eq!(found(t), [(Entity::MacAddress, t)], "{t}");
    }
    assert!(found("2D:4F:6E:55:4F:E8:5E:D2:D2:A3:73:62:AB:FD:F9:C5:A5:53:31:93").is_empty());
    assert!(found("550e8400-e29b-41d4-a716-446655440000").is_empty());
}

#[test]
fn cards_ssn_iban() {
    assert_eq!(of("card 4111 1111 1111 1111 ok", Entity::CreditCard), ["4111 1111 1111 1111"]);
    assert_eq!(of("card 4111-1111-1111-1111", Entity::CreditCard), ["4111-1111-1111-1111"]);
    assert_eq!(of("amex 378282246310005", Entity::CreditCard), ["378282246310005"]);
    assert!(of("card 4111 1111 1111 1112", Entity::CreditCard).is_empty());
    assert!(of("blk_-1608999687919862906", Entity::CreditCard).is_empty());
    assert_eq!(of("ssn 123-45-6789.", Entity::UsSsn), ["123-45-6789"]);
    assert_eq!(of("born 1990 123-45-6789 x", Entity::UsSsn), ["123-45-6789"]);
    for bad in ["000-12-3456", "666-12-3456", "912-12-3456", "123-00-4567", "123-45-0000", "1123-45-6789"] {
        assert!(of(bad, Entity::UsSsn).is_empty(), "{bad}");
    }
    assert_eq!(of("IBAN DE89 3704 0044 0532 0130 00 end", Entity::IbanCode), ["DE89 3704 0044 0532 0130 00"]);
    assert_eq!(of("GB82WEST12345698765432", Entity::IbanCode), ["GB82WEST12345698765432"]);
    assert!(of("GB82WEST12345698765433", Entity::IbanCode).is_empty());
    assert_eq!(of("iban gb82west12345698765432.", Entity::IbanCode), ["gb82west12345698765432"]);
    assert_eq!(of("jcb 180016070420458", Entity::CreditCard), ["180016070420458"]);
}

#[test]
fn phones() {
    for t in [
        "+1 555 123 4567",
        "+44 20 7946 0958",
        "(555) 123-4567",
        "(898)666-3621x0135",
        "555-123-4567",
        "555.123.4567",
        "+4915112345678",
        "+1-903-140-4508x769",
        "001-518-640-0854",
        "259.735.7502 ext. 459",
        "0490 75 40 81",
        "03.93.92.16.85",
        "0961-7596216",
    ] {
        assert_eq!(of(&format!("call {t} now"), Entity::PhoneNumber), [t], "{t}");
    }
    for trap in ["2016-09-28 04:30:30", "+2016-09-28 04:30:30", "v1.555.123.4567", "12345678901234", "1131566461", "10.10.34.11", "+0800", "0 12 34", "00 123 456 789", "v0490 75 40 81", "555-123-45678", "081109 010354 5184 INFO", "010354 5184 12"] {
        assert!(of(trap, Entity::PhoneNumber).is_empty(), "{trap}");
    }
}

#[test]
fn urls_and_users() {
    let t = "get https://bob:s3cr3t@db.example.com:5432/x?y=1 done";
    assert_eq!(found(t), [(Entity::Url, "https://bob:s3cr3t@db.example.com:5432/x?y=1")]);
    assert!(of("see https://example.com/a@b", Entity::Url).is_empty());
    for (t, u) in [
        ("Failed password for root from 183.62.140.253 port 22 ssh2", "root"),
        ("Failed password for invalid user admin from 1.2.3.4", "admin"),
        ("Accepted publickey for alice from 1.2.3.4", "alice"),
        ("session opened for user root by (uid=0)", "root"),
        ("Invalid user webmaster from 173.234.31.186", "webmaster"),
        ("pam_unix: user=bob tty=ssh", "bob"),
        ("open /home/carol/.bashrc", "carol"),
        (r"C:\Users\dave\AppData", "dave"),
        (r"DOMAIN\myusername", "myusername"),
    ] {
        assert_eq!(of(t, Entity::UserName), [u], "{t}");
    }
    assert!(of("check pass; user unknown", Entity::UserName).is_empty());
    assert!(of(r"C:\Windows\winsxs\x.dll", Entity::UserName).is_empty());
}

#[test]
fn sos_cleaner_line_cases() {
    let cases: serde_json::Value = serde_json::from_str(&read("pii/sos-cleaner/parser_line_cases.json")).unwrap();
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 28);
    // What sos' tests configure: the domain example.com (`--domains`, and
    // the realm the sssd.conf prepper reads) and the host names of the
    // host parser and the /etc/hosts prepper.
    let d = Detector::with_config(PII_ENTITIES, &hosts(&["example.com"], &["myhost", "shortonly"], false));
    let mut checked = 0;
    for c in cases {
        let parser = c["parser"].as_str().unwrap();
        let input = c["input"].as_str().unwrap();
        let want = c["expect_changed"].as_bool().unwrap();
        // Keywords are the policy's custom keywords, not a PII detector.
        if matches!(parser, "kw_parser" | "kw_parser_none") {
            continue;
        }
        let got = !d.find(input).is_empty();
        assert_eq!(got, want, "{}: {input:?} -> {:?}", c["test"], d.find(input));
        checked += 1;
    }
    assert_eq!(checked, 25);
    // Unconfigured, the host-name cases find nothing.
    let plain = Detector::new();
    for c in cases.iter().filter(|c| matches!(c["parser"].as_str(), Some("host_parser" | "parser"))) {
        assert!(plain.find(c["input"].as_str().unwrap()).is_empty(), "{}", c["test"]);
    }
}

#[test]
fn sos_cleaner_clean_config_domain() {
    // sos' clean_config test: `domains = sosexample.com`.
    let text = read("pii/sos-cleaner/clean_config_test.txt");
    let d = Detector::with_config(&[Entity::DomainName], &hosts(&["sosexample.com"], &[], false));
    let got: Vec<&str> = text.lines().flat_map(|l| d.find(l).into_iter().map(move |s| &l[s.start..s.end])).collect();
    assert_eq!(got, ["sosexample.com", "foobar.sosexample.com"]);
}

fn hosts(domains: &[&str], hostnames: &[&str], any_fqdn: bool) -> HostNames {
    HostNames {
        domains: domains.iter().map(|s| s.to_string()).collect(),
        hostnames: hostnames.iter().map(|s| s.to_string()).collect(),
        any_fqdn,
    }
}

fn found_with<'a>(d: &Detector, text: &'a str) -> Vec<(Entity, &'a str)> {
    d.find(text).into_iter().map(|s| (s.entity, &text[s.start..s.end])).collect()
}

#[test]
fn configured_domains() {
    let d = Detector::with_config(PII_ENTITIES, &hosts(&["example.com", ".Corp.Local."], &[], false));
    let dom = |t: &str| -> Vec<String> {
        found_with(&d, t).into_iter().filter(|(e, _)| *e == Entity::DomainName).map(|(_, v)| v.to_string()).collect()
    };
    for (line, want) in [
        ("connect to db01.prod.example.com:5432 failed", vec!["db01.prod.example.com"]),
        ("krb5_realm = EXAMPLE.COM", vec!["EXAMPLE.COM"]),
        ("GET https://api.example.com/v1?x=1 200", vec!["api.example.com"]),
        ("resolved host.example.com. to 10.1.2.3", vec!["host.example.com"]),
        ("(ldap://_ldap._tcp.example.com)", vec!["_ldap._tcp.example.com"]),
        ("dc1.corp.local and corp.local and CORP.LOCAL", vec!["dc1.corp.local", "corp.local", "CORP.LOCAL"]),
        ("server-example.com notexample.com example.com.au example.community x.example.com_bak", vec![]),
        ("example.org and examplexcom", vec![]),
    ] {
        assert_eq!(dom(line), want, "{line}");
    }
    // The e-mail address is longer and wins; the URL with credentials too.
    assert_eq!(found_with(&d, "mail from bob@mail.example.com ok"), [(Entity::EmailAddress, "bob@mail.example.com")]);
    let url = "https://bob:pw@db.example.com/x";
    assert_eq!(found_with(&d, url), [(Entity::Url, url)]);
    // Nothing configured: nothing found, whatever the entity list says.
    assert!(Detector::new().find("db01.prod.example.com").is_empty());
    assert!(Detector::with_config(&[Entity::IpAddress], &hosts(&["example.com"], &["myhost"], true)).find("myhost.example.com").is_empty());
}

#[test]
fn configured_hostnames() {
    let d = Detector::with_config(&[Entity::DomainName], &hosts(&[], &["web01", "DB-2", "mail.example.org"], false));
    let dom = |t: &str| -> Vec<String> { found_with(&d, t).into_iter().map(|(_, v)| v.to_string()).collect() };
    assert_eq!(dom("Jan  1 00:00:01 web01 sshd[42]: Connection closed"), ["web01"]);
    assert_eq!(dom("ping WEB01.lab.local, db-2 and mail"), ["WEB01.lab.local", "db-2", "mail"]);
    assert_eq!(dom("/var/log/web01/messages"), ["web01"]);
    assert_eq!(dom("relay mail.example.org:25"), ["mail.example.org"]);
    assert!(dom("web011 web01-backup xweb01 web01_old db-20 email").is_empty());
    // Thunderbird: every whole-word occurrence of the node name.
    let tb = read("loghub/Thunderbird/Thunderbird_2k.log");
    let d = Detector::with_config(&[Entity::DomainName], &hosts(&[], &["dn228"], false));
    for line in tb.lines().filter(|l| l.contains("dn228")) {
        let words = line.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))).filter(|w| *w == "dn228").count();
        let spans = d.find(line);
        assert_eq!(spans.len(), words, "{line}");
        assert!(spans.iter().all(|s| &line[s.start..s.end] == "dn228"), "{line}");
    }
}

#[test]
fn any_fqdn_on_loghub() {
    // Every dotted name with a public TLD in the nine logs is a real host
    // name; the file names, Java classes, versions and Android packages
    // (`workers2.properties`, `java.net`, `com.tencent.mm`,
    // `ganglia-3.0.1`, `xinetd.d`, `meta_data.json`) are not reported.
    let d = Detector::with_config(&[Entity::DomainName], &hosts(&[], &[], true));
    let mut seen = std::collections::BTreeMap::new();
    for sys in ["Android", "Apache", "HDFS", "Hadoop", "OpenSSH", "OpenStack", "Thunderbird", "Windows", "Zookeeper"] {
        let text = read(&format!("loghub/{sys}/{sys}_2k.log"));
        for line in text.lines() {
            for s in d.find(line) {
                *seen.entry(line[s.start..s.end].to_string()).or_insert(0usize) += 1;
            }
        }
    }
    let want = [
        ("04DN8IQ.fareast.corp.microsoft.com", 4),
        ("191-210-223-172.user.vivozap.com.br", 1),
        ("195-154-37-122.rev.poneytelecom.eu", 2),
        ("5.36.59.76.dynamic-dsl-ip.omantel.net.om", 2),
        ("MININT-FNANLI5.fareast.corp.microsoft.com", 13),
        ("MSRA-SA-39.fareast.corp.microsoft.com", 21),
        ("MSRA-SA-41.fareast.corp.microsoft.com", 29),
        ("cp-1.slowvm1.tcloud-pg0.utah.cloudlab.us", 69),
        ("customer-187-141-143-180-sta.uninet-ide.com.mx", 80),
        ("ec2-52-80-34-196.cn-north-1.compute.amazonaws.com.cn", 5),
        ("ns.marryaldkfaczcz.com", 2),
        ("wiki.apache.org", 6),
    ];
    let want: std::collections::BTreeMap<String, usize> = want.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(seen, want);
    // The same names, configured as domains instead.
    let d = Detector::with_config(&[Entity::DomainName], &hosts(&["fareast.corp.microsoft.com", "utah.cloudlab.us"], &[], false));
    let hadoop = read("loghub/Hadoop/Hadoop_2k.log");
    let n: usize = hadoop.lines().map(|l| d.find(l).len()).sum();
    assert_eq!(n, 4 + 13 + 21 + 29);
}

#[test]
fn loghub_traps_and_hits() {
    let d = Detector::new();
    for sys in ["Windows", "Zookeeper", "Thunderbird"] {
        let text = read(&format!("loghub/{sys}/{sys}_2k.log"));
        for line in text.lines() {
            for s in d.find(line) {
                let v = &line[s.start..s.end];
                if s.entity == Entity::IpAddress {
                    assert!(!v.starts_with("0.") && !v.starts_with("0:0") && v != "::", "{sys}: {v} in {line}");
                    if sys == "Windows" {
                        panic!("Windows has no IPs: {v} in {line}");
                    }
                }
            }
        }
    }
    let ssh = read("loghub/OpenSSH/OpenSSH_2k.log");
    let line = ssh.lines().find(|l| l.contains("Failed password for root from 5.36.59.76 port 42393")).unwrap();
    let f: Vec<_> = d.find(line).into_iter().map(|s| (s.entity, &line[s.start..s.end])).collect();
    assert!(f.contains(&(Entity::IpAddress, "5.36.59.76")), "{f:?}");
    assert!(f.contains(&(Entity::UserName, "root")), "{f:?}");
    let brief = "Failed password for root from 183.62.140.253 port 22";
    assert_eq!(found(brief), [(Entity::UserName, "root"), (Entity::IpAddress, "183.62.140.253")]);
    // Every OpenSSH line mentioning "from <ipv4> port" has that IP found.
    for line in ssh.lines().filter(|l| l.contains(" port ") && l.contains(" from ")) {
        let ips = d.find(line).into_iter().filter(|s| s.entity == Entity::IpAddress).count();
        assert!(ips >= 1, "{line}");
    }
}

#[test]
fn loghub_false_positive_summary() {
    // Prints what is found per system (run with --nocapture to inspect).
    let d = Detector::new();
    for sys in ["Android", "Apache", "HDFS", "Hadoop", "OpenSSH", "OpenStack", "Thunderbird", "Windows", "Zookeeper"] {
        let text = read(&format!("loghub/{sys}/{sys}_2k.log"));
        let mut counts = std::collections::BTreeMap::new();
        for line in text.lines() {
            for s in d.find(line) {
                *counts.entry(s.entity.name()).or_insert(0usize) += 1;
            }
        }
        println!("{sys}: {counts:?}");
        // No cards, SSNs, IBANs or phones in these logs.
        for e in ["CREDIT_CARD", "US_SSN", "IBAN_CODE", "PHONE_NUMBER"] {
            assert!(!counts.contains_key(e), "{sys}: {e} {counts:?}");
        }
    }
}

#[test]
fn throughput() {
    // Not an assertion: prints MB/s over the four loghub files.
    let d = Detector::new();
    let texts: Vec<String> = ["OpenSSH", "Thunderbird", "Windows", "Zookeeper"].iter().map(|s| read(&format!("loghub/{s}/{s}_2k.log"))).collect();
    let bytes: usize = texts.iter().map(String::len).sum();
    let rounds = 5;
    let t = std::time::Instant::now();
    let mut n = 0;
    for _ in 0..rounds {
        for text in &texts {
            for line in text.lines() {
                n += d.find(line).len();
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!("pii throughput: {:.1} MB/s ({n} spans)", (bytes * rounds) as f64 / secs / 1e6);
}

proptest! {
    #[test]
    fn any_ipv4_is_found(o in any::<[u8; 4]>()) {
        prop_assume!(o[0] != 0);
        let ip = std::net::Ipv4Addr::from(o).to_string();
        let line = format!("Failed password for root from {ip} port 22");
        prop_assert_eq!(of(&line, Entity::IpAddress), [ip.as_str()]);
    }

    #[test]
    fn any_ipv6_is_found(seg in any::<[u16; 8]>(), bracket in any::<bool>()) {
        let addr = std::net::Ipv6Addr::from(seg);
        let ip = addr.to_string();
        prop_assume!(!addr.is_unspecified() && ip.bytes().any(|c| c.is_ascii_digit()));
        let line = if bracket { format!("conn [{ip}]:443 ok") } else { format!("conn {ip} ok") };
        let got = found(&line);
        // Eight two-digit groups read as an EUI-64 MAC; both are redacted.
        prop_assert!(got == [(Entity::IpAddress, ip.as_str())] || got == [(Entity::MacAddress, ip.as_str())], "{:?}", got);
    }

    #[test]
    fn never_panics_and_spans_are_well_formed(s in "\\PC{0,200}") {
        check(&s);
    }

    #[test]
    fn never_panics_on_pii_like_text(s in "[0-9a-fA-F:.@+ ()\\-/%\\\\=a-z]{0,80}") {
        check(&s);
    }
}

fn check(s: &str) {
    let spans = Detector::new().find(s);
    let mut last = 0;
    for sp in &spans {
        assert!(sp.start < sp.end && sp.end <= s.len());
        assert!(s.is_char_boundary(sp.start) && s.is_char_boundary(sp.end));
        assert!(sp.start >= last, "overlap or unsorted: {spans:?}");
        last = sp.end;
    }
}

#[test]
#[ignore = "diagnostic dump"]
fn dump_values() {
    let d = Detector::new();
    for sys in ["Android", "Apache", "HDFS", "Hadoop", "OpenSSH", "OpenStack", "Thunderbird", "Windows", "Zookeeper"] {
        let text = read(&format!("loghub/{sys}/{sys}_2k.log"));
        let mut seen = std::collections::BTreeMap::new();
        for line in text.lines() {
            for s in d.find(line) {
                *seen.entry((s.entity.name(), line[s.start..s.end].to_string())).or_insert(0usize) += 1;
            }
        }
        for ((e, v), n) in seen {
            println!("{sys}\t{e}\t{v}\t{n}");
        }
    }
}

/// Recall (by value) on presidio-research's synthetic dataset, printed;
/// asserts only a floor well below what was measured.
#[test]
fn presidio_recall() {
    // DOMAIN_NAME needs configuration; `any_fqdn` is the one that applies
    // to free text.
    let d = Detector::with_config(PII_ENTITIES, &hosts(&[], &[], true));
    let data: serde_json::Value = serde_json::from_str(&read("pii/presidio-research/synth_dataset_v2.dev.json")).unwrap();
    let mut stats: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    let mut misses = Vec::new();
    let mut extra = Vec::new();
    for rec in data.as_array().unwrap() {
        let text = rec["full_text"].as_str().unwrap();
        let found = d.find(text);
        let labels: Vec<&str> = rec["spans"].as_array().unwrap().iter().map(|sp| sp["entity_value"].as_str().unwrap().trim()).collect();
        for f in &found {
            let v = &text[f.start..f.end];
            if !labels.iter().any(|l| l.contains(v) || v.contains(l)) {
                extra.push(format!("{}: {v}", f.entity.name()));
            }
        }
        for sp in rec["spans"].as_array().unwrap() {
            let ty = sp["entity_type"].as_str().unwrap();
            let Some(&e) = PII_ENTITIES.iter().find(|e| e.name() == ty) else { continue };
            let v = sp["entity_value"].as_str().unwrap().trim();
            let hit = found.iter().any(|f| f.entity == e && (text[f.start..f.end].contains(v) || v.contains(&text[f.start..f.end])));
            let st = stats.entry(e.name()).or_default();
            st.0 += 1;
            if hit {
                st.1 += 1;
            } else {
                misses.push(format!("{ty}: {v}"));
            }
        }
    }
    println!("presidio recall: {stats:?}");
    for m in &misses {
        println!("  miss {m}");
    }
    println!("presidio: {} findings not matching any labelled value", extra.len());
    for m in &extra {
        println!("  extra {m}");
    }
    let (all, hit) = stats.values().fold((0, 0), |a, s| (a.0 + s.0, a.1 + s.1));
    assert!(hit * 2 >= all, "{stats:?}");
}

#[test]
fn overlaps_keep_the_longer() {
    let spans = vec![
        Span { start: 5, end: 9, entity: Entity::EmailAddress, rule: None },
        Span { start: 0, end: 20, entity: Entity::Url, rule: None },
        Span { start: 20, end: 25, entity: Entity::IpAddress, rule: None },
        Span { start: 22, end: 24, entity: Entity::UserName, rule: None },
    ];
    let got: Vec<_> = resolve(spans).into_iter().map(|s| (s.start, s.end)).collect();
    assert_eq!(got, [(0, 20), (20, 25)]);
}

#[test]
fn many_findings_stay_fast() {
    let line = "1.2.3.4 ".repeat(20_000);
    let t = std::time::Instant::now();
    assert_eq!(Detector::new().find(&line).len(), 20_000);
    assert!(t.elapsed().as_secs() < 20);
}

