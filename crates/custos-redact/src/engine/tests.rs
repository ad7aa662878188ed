use super::*;
use crate::pseudonym::is_marker;
use custos_model::TableName;
use proptest::prelude::*;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/corpus");

fn key() -> PseudonymKey {
    PseudonymKey::new([42; 32])
}

fn session(policy: &str) -> Session {
    let p = Policy::from_toml(policy).unwrap();
    Session::new(Arc::new(Redactor::new(p, None, Some(&key())).unwrap()))
}

fn ctx() -> Context<'static> {
    Context { table: "syslog", category: Category::Logs, level: Level::Full }
}

fn text(s: &mut Session, t: &str) -> String {
    match s.redact_str(t, &ctx()) {
        Redacted::Text(c) => c.into_owned(),
        other => panic!("{t}: {other:?}"),
    }
}

#[test]
fn default_policy_tags_cards_secrets_and_pseudonymizes_addresses() {
    let mut s = session("");
    let out = text(&mut s, "card 4111 1111 1111 1111 paid by alice@example.com from 10.1.2.3 password=hunter2secret");
    assert!(out.contains("card <CREDIT_CARD> paid"), "{out}");
    assert!(!out.contains("alice@example.com") && out.contains("@d"), "{out}");
    assert!(!out.contains("10.1.2.3"), "{out}");
    assert!(!out.contains("hunter2secret"), "{out}");
    let o = s.take_outcome();
    assert_eq!(o.redacted["CREDIT_CARD"], 1);
    assert_eq!(o.redacted["EMAIL_ADDRESS"], 1);
    assert_eq!(o.redacted["IP_ADDRESS"], 1);
    assert_eq!(o.redacted["SECRET"], 1);
    assert!(o.new_pseudonyms.iter().any(|(_, v)| v == "alice@example.com"));
    assert_eq!(s.take_outcome().total(), 0, "taking resets");
}

#[test]
fn text_without_findings_is_borrowed() {
    let mut s = session("");
    let t = "kernel: eth0: link up, 1000 Mbps, full duplex";
    assert_eq!(s.redact_str(t, &ctx()), Redacted::Text(Cow::Borrowed(t)));
}

#[test]
fn pseudonyms_are_stable_across_sessions_and_runs() {
    let line = "Accepted password for root from 183.62.140.253 port 22 ssh2";
    let a = text(&mut session(""), line);
    let b = text(&mut session(""), line);
    assert_eq!(a, b);
    assert!(!a.contains("root ") && !a.contains("183.62.140.253"), "{a}");
}

#[test]
fn every_operator_does_what_it_says() {
    let mut s = session(
        r#"
        [operators]
        EMAIL_ADDRESS = "remove"
        IP_ADDRESS = "keep"
        CREDIT_CARD = { op = "mask", keep = 4 }
        US_SSN = "tag"
        "#,
    );
    let out = text(&mut s, "a@b.example.org 10.0.0.1 4111111111111111 078-05-1120");
    assert_eq!(out, " 10.0.0.1 ************1111 <US_SSN>");
    let mut short = session("[operators]\nUSER_NAME = { op = \"mask\", keep = 4 }");
    assert_eq!(text(&mut short, "user=bob"), "user=***", "values no longer than keep are masked whole");
}

#[test]
fn drop_field_and_drop_event_in_events() {
    let mut s = session("[operators]\nEMAIL_ADDRESS = \"drop_field\"\nCREDIT_CARD = \"drop_event\"");
    let mut ev = Event {
        table: TableName::new("app_logs").unwrap(),
        time: 0,
        level: Level::Full,
        category: Category::Logs,
        host: "h1".into(),
        message: "mail from bob@example.com".into(),
        attrs: [("to".to_string(), Value::from("carol@example.com")), ("n".to_string(), Value::from(5i64))].into(),
    };
    assert!(s.redact_event(&mut ev));
    assert_eq!(ev.message, "");
    assert!(!ev.attrs.contains_key("to"));
    assert_eq!(ev.attrs["n"], Value::Int(5));
    let o = s.take_outcome();
    assert_eq!(o.fields_dropped, 2);
    ev.attrs.insert("card".into(), Value::Int(4111111111111111));
    assert!(!s.redact_event(&mut ev), "an integer card number drops the event");
    assert_eq!(s.take_outcome().events_dropped, 1);
}

#[test]
fn overrides_follow_table_category_and_level() {
    let mut s = session(
        r#"
        [operators]
        IP_ADDRESS = "keep"
        [[override]]
        tables = ["auth*"]
        levels = ["full"]
        operators = { IP_ADDRESS = "tag" }
        "#,
    );
    let line = "from 10.9.8.7";
    let full = Context { table: "auth", category: Category::Logs, level: Level::Full };
    let enhanced = Context { level: Level::Enhanced, ..full };
    let other = Context { table: "kern", ..full };
    assert_eq!(s.redact_str(line, &full), Redacted::Text("from <IP_ADDRESS>".into()));
    assert_eq!(s.redact_str(line, &enhanced), Redacted::Text(line.into()));
    assert_eq!(s.redact_str(line, &other), Redacted::Text(line.into()));
}

#[test]
fn custom_keywords_and_regexes() {
    let mut s = session(
        r#"
        [[detect.custom]]
        name = "PROJECT_CODE"
        regex = 'PRJ-[0-9]{4}'
        [[detect.custom]]
        name = "CUSTOMER"
        keywords = ["Acme Corp", "globex"]
        [operators]
        CUSTOMER = "tag"
        "#,
    );
    let out = text(&mut s, "ticket PRJ-1234 for acme corp and Globex; globexing stays");
    assert!(out.starts_with("ticket <PROJECT_CODE-"), "{out}");
    assert!(out.ends_with("for <CUSTOMER> and <CUSTOMER>; globexing stays"), "{out}");
    let spans = s.redactor().find("PRJ-0001");
    assert_eq!(spans[0].entity_name(), "PROJECT_CODE");
}

#[test]
fn a_pseudonymizing_policy_needs_a_key() {
    let err = Redactor::new(Policy::default_policy(), None, None).unwrap_err();
    assert!(err.to_string().contains("no pseudonym key"), "{err}");
    let tags = Policy::from_toml(
        "[operators]\nEMAIL_ADDRESS='tag'\nIP_ADDRESS='tag'\nMAC_ADDRESS='tag'\nDOMAIN_NAME='tag'\nUSER_NAME='tag'",
    )
    .unwrap();
    assert!(Redactor::new(tags, None, None).is_ok());
}

#[test]
fn kept_entities_do_not_run_their_detectors() {
    let p = Policy::from_toml("[operators]\nIP_ADDRESS = \"keep\"").unwrap();
    let r = Redactor::new(p.clone(), None, Some(&key())).unwrap();
    assert!(r.find("from 10.1.2.3").is_empty());
    let all = Redactor::detect_all(p, None, Some(&key())).unwrap();
    assert_eq!(all.find("from 10.1.2.3")[0].entity, Entity::IpAddress);
}

#[test]
fn json_values_are_redacted_and_keys_left_alone() {
    let mut s = session("[operators]\nCREDIT_CARD = \"drop_field\"");
    let mut v: serde_json::Value = serde_json::from_str(
        r#"{"user@example.com": "mail user@example.com", "card": 4111111111111111, "list": ["4111 1111 1111 1111", "ok"], "n": 3}"#,
    )
    .unwrap();
    assert!(s.redact_json(&mut v, &ctx()));
    let out = v.to_string();
    assert!(out.contains("\"user@example.com\":\"mail u"), "{out}");
    assert!(!out.contains("4111"), "{out}");
    assert!(out.contains("\"list\":[\"ok\"]") && out.contains("\"n\":3"), "{out}");
}

fn loghub_lines() -> Vec<String> {
    let mut lines = Vec::new();
    for sys in ["OpenSSH", "Thunderbird", "Windows", "Linux", "Apache", "Zookeeper", "HDFS", "Android", "OpenStack", "Hadoop"] {
        let Ok(dir) = std::fs::read_dir(format!("{CORPUS}/loghub/{sys}")) else { continue };
        for f in dir.flatten() {
            if f.path().extension().is_some_and(|e| e == "log") {
                let t = std::fs::read_to_string(f.path()).unwrap_or_default();
                lines.extend(t.lines().take(2000).map(str::to_string));
            }
        }
    }
    lines
}

#[test]
fn redacting_the_loghub_corpus_twice_changes_nothing() {
    let mut s = session("[detect]\nany_fqdn = true");
    let lines = loghub_lines();
    assert!(lines.len() > 10_000, "corpus present: {}", lines.len());
    let mut changed = 0;
    for l in &lines {
        let once = text(&mut s, l);
        changed += usize::from(once != *l);
        let twice = text(&mut s, &once);
        assert_eq!(once, twice, "input: {l}");
    }
    assert!(changed > 1000, "{changed}");
}

fn tag_policy() -> &'static str {
    "[operators]\nEMAIL_ADDRESS='tag'\nIP_ADDRESS='tag'\nMAC_ADDRESS='tag'\nDOMAIN_NAME='tag'\nUSER_NAME='tag'"
}

fn values() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{3,8}\\.[a-z]{2,6}@(example|corp)\\.(com|org|net)",
        (1u8..=223, 0u8..=255, 0u8..=255, 1u8..=254).prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        "(fe80|2001|fd00):([0-9a-f]{1,4}:){1,3}:[0-9a-f]{0,3}[1-9]",
        "([0-9a-f]{2}:){5}[0-9a-f]{2}",
        Just("4111 1111 1111 1111".to_string()),
        Just("5500-0000-0000-0004".to_string()),
        Just("078-05-1120".to_string()),
        Just("GB82 WEST 1234 5698 7654 32".to_string()),
        Just("+44 20 7946 0958".to_string()),
        "AKIA[A-Z2-7]{16}",
        Just("https://admin:s3cr3t-pw@db.internal.example.com/x".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_any_input(t in any::<String>(), b in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut s = session("[detect]\nany_fqdn = true\nhostnames = ['db01']\ndomains = ['example.com']");
        let _ = s.redact_str(&t, &ctx());
        let lossy = String::from_utf8_lossy(&b);
        let _ = s.redact_str(&lossy, &ctx());
    }

    #[test]
    fn redacting_twice_changes_nothing(t in "[ -~]{0,120}", v in values(), pre in "[a-z =:/,]{0,12}") {
        for policy in ["", tag_policy(), "[operators]\nEMAIL_ADDRESS={op='mask',keep=3}\nIP_ADDRESS='remove'"] {
            let mut s = session(policy);
            let line = format!("{pre}{v} {t}");
            let once = text(&mut s, &line);
            let twice = text(&mut s, &once);
            prop_assert_eq!(&once, &twice, "policy {:?}", policy);
        }
    }

    #[test]
    fn a_detected_value_never_appears_in_the_output(v in values(), w in values(), filler in "[a-z ]{0,30}") {
        for policy in ["", tag_policy()] {
            let mut s = session(policy);
            let line = format!("{filler} {v} and {w}. {filler}");
            let out = text(&mut s, &line);
            prop_assert!(!out.contains(v.as_str()), "{} in {}", v, out);
            prop_assert!(!out.contains(w.as_str()), "{} in {}", w, out);
        }
    }

    #[test]
    fn tags_name_their_entity(v in values()) {
        let mut s = session(tag_policy());
        let out = text(&mut s, &format!("x {v} y"));
        let inner = out.trim_start_matches("x ").trim_end_matches(" y");
        prop_assert!(inner.split_whitespace().any(is_marker), "{}", out);
    }
}


/// The findings of every line of `block`, once line by line and once
/// with the hints of one block scan; both must agree.
fn hinted_and_unhinted(r: &Redactor, block: &str) -> (Vec<Vec<Span>>, Vec<Vec<Span>>) {
    let mut ranges = Vec::new();
    let mut at = 0;
    for l in block.split('\n') {
        ranges.push(at..at + l.len());
        at += l.len() + 1;
    }
    let mut pre = crate::LinePrefilter::new();
    pre.scan(r, block.as_bytes(), &ranges);
    let (mut plain, mut hinted) = (Vec::new(), Vec::new());
    for (i, rg) in ranges.iter().enumerate() {
        let line = &block[rg.clone()];
        plain.push(r.find(line));
        let mut spans = Vec::new();
        r.find_hinted(line, pre.hints(i), &mut spans);
        hinted.push(spans);
    }
    (plain, hinted)
}

fn detect_all(policy: &str) -> Redactor {
    Redactor::detect_all(Policy::from_toml(policy).unwrap(), None, None).unwrap()
}

#[test]
fn hinted_equals_unhinted_on_the_loghub_corpus() {
    let r = detect_all("[detect]\nany_fqdn = true");
    let lines = loghub_lines();
    assert!(lines.len() > 10_000, "corpus present: {}", lines.len());
    // Blocks of a few hundred lines, as `custos redact` reads them.
    let mut found = 0;
    for chunk in lines.chunks(300) {
        let block = chunk.join("\n");
        let (plain, hinted) = hinted_and_unhinted(&r, &block);
        for ((p, h), l) in plain.iter().zip(&hinted).zip(chunk) {
            assert_eq!(p, h, "line: {l}");
            found += p.len();
        }
    }
    assert!(found > 5_000, "{found}");
}

#[test]
fn hints_follow_each_trigger_to_its_own_line() {
    let r = detect_all("");
    let block = "no triggers here\nmail bob@example.com now\nplain\nInvalid user admin from 10.0.0.1\n\
                 plain again\n(root) CMD (run-parts /etc/cron.hourly)\nlogon CORP\\jdoe ok\n\
                 api_key=Zk3q9XvT2mLp8RwY4nBc7HdJ\nnothing\nfe80::1 and 00:1a:2b:3c:4d:5e\n\
                 ünïcode USER=elise\nlast";
    let (plain, hinted) = hinted_and_unhinted(&r, block);
    assert_eq!(plain, hinted);
    let lines: Vec<&str> = block.split('\n').collect();
    for (i, l) in lines.iter().enumerate() {
        let want = matches!(i, 1 | 3 | 5 | 6 | 7 | 9 | 10);
        assert_eq!(!plain[i].is_empty(), want, "line {i}: {l}: {:?}", plain[i]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn hinted_equals_unhinted(parts in proptest::collection::vec(prop_oneof![
        values(),
        "[ -~]{0,40}",
        Just("\n".to_string()),
        Just("user=".to_string()),
        Just("Invalid user ".to_string()),
        Just("password for ".to_string()),
        Just(") CMD (".to_string()),
        Just("CORP\\".to_string()),
        Just("token=".to_string()),
        Just("AKIA".to_string()),
        Just("ghp_".to_string()),
        Just("é".to_string()),
        Just("@".to_string()),
        Just(":".to_string()),
    ], 0..40)) {
        let block: String = parts.concat();
        for policy in ["", "[detect]\nany_fqdn = true\nhostnames = ['db01']\ndomains = ['example.com']"] {
            let r = detect_all(policy);
            let (plain, hinted) = hinted_and_unhinted(&r, &block);
            prop_assert_eq!(plain, hinted, "{:?}", block);
        }
    }
}
