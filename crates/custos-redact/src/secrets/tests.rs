use std::sync::OnceLock;

use proptest::prelude::*;
use serde::Deserialize;

use super::builtin::{AWS_ACCESS_KEY_ID, BEARER, JWT, PASSWORD_KV, PEM_PRIVATE_KEY};
use super::*;

const GITLEAKS_TOML: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/corpus/secrets/gitleaks/gitleaks.toml"
));
const TPS_FPS_JSON: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/corpus/secrets/gitleaks/rule_tps_fps.dev.json"
));

fn loaded() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| Rules::from_gitleaks_toml(GITLEAKS_TOML).expect("gitleaks.toml loads"))
}

#[derive(Deserialize)]
struct Case {
    rule_id: String,
    true_positives: Vec<String>,
    false_positives: Vec<String>,
}

#[test]
fn loads_real_gitleaks_toml() {
    let rules = loaded();
    for e in rules.skipped() {
        eprintln!("skipped: {e}");
    }
    eprintln!(
        "active rules: {} (incl. 5 built-in), skipped: {}, path-only ignored: {:?}",
        rules.len(),
        rules.skipped().len(),
        rules.path_only()
    );
    assert!(rules.len() >= 200);
    assert!(rules.skipped().len() <= 5);
}

#[test]
fn gitleaks_tps_fps() {
    let rules = loaded();
    let cases: Vec<Case> = serde_json::from_str(TPS_FPS_JSON).expect("json parses");
    let (mut tp_total, mut tp_found, mut fp_total, mut fp_flagged) = (0usize, 0usize, 0usize, 0usize);
    let mut fp_any = 0usize;
    for case in &cases {
        let known = rules.ids().any(|id| id == case.rule_id);
        let mut misses = Vec::new();
        for tp in &case.true_positives {
            tp_total += 1;
            if known && !rules.find_rule(&case.rule_id, tp).is_empty() {
                tp_found += 1;
            } else {
                misses.push(format!("TP missed: {tp:?}"));
            }
        }
        for fp in &case.false_positives {
            fp_total += 1;
            if known && !rules.find_rule(&case.rule_id, fp).is_empty() {
                fp_flagged += 1;
                misses.push(format!("FP flagged: {fp:?}"));
            }
            let any = rules.find(fp);
            if !any.is_empty() {
                fp_any += 1;
                let by: Vec<&str> = any.iter().filter_map(|s| s.rule.as_deref()).collect();
                misses.push(format!("FP (of this rule) flagged by other rules {by:?}: {fp:?}"));
            }
        }
        if !misses.is_empty() {
            eprintln!("rule {} (loaded: {known}):", case.rule_id);
            for m in misses {
                let m: String = m.chars().take(300).collect();
                eprintln!("    {m}");
            }
        }
    }
    let tp_rate = tp_found as f64 / tp_total.max(1) as f64;
    let fp_rate = fp_flagged as f64 / fp_total.max(1) as f64;
    eprintln!(
        "TP found {tp_found}/{tp_total} = {:.1}%, FP flagged by own rule {fp_flagged}/{fp_total} = {:.1}%, FP flagged by any rule {fp_any}/{fp_total}",
        tp_rate * 100.0,
        fp_rate * 100.0
    );
    assert!(tp_rate >= 0.95, "TP rate {tp_rate}");
    assert!(fp_rate <= 0.05, "FP rate {fp_rate}");
}

fn rules_of(text: &str) -> Vec<(String, String)> {
    Rules::builtin()
        .find(text)
        .into_iter()
        .map(|s| (s.rule.unwrap_or_default(), text[s.start..s.end].to_string()))
        .collect()
}

#[test]
fn builtin_pem() {
    let key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1234567890abcdef\nqwertyuiop==\n-----END RSA PRIVATE KEY-----";
    let text = format!("config:\n{key}\nrest");
    assert_eq!(rules_of(&text), vec![(PEM_PRIVATE_KEY.to_string(), key.to_string())]);
    let oneline = "-----BEGIN PRIVATE KEY-----MIIEvQIBADANBgkqhkiG9w0BAQEFAASC-----END PRIVATE KEY-----";
    assert_eq!(rules_of(oneline).len(), 1);
    assert!(rules_of("-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A\n-----END PUBLIC KEY-----").is_empty());
}

#[test]
fn builtin_jwt() {
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    let found = rules_of(&format!("token={jwt} ok"));
    assert!(found.contains(&(JWT.to_string(), jwt.to_string())), "{found:?}");
    // Three base64url parts, but the header has no "alg".
    assert!(rules_of("eyJmb28iOiJiYXIifQ.eyJzdWIiOiIxIn0.c2lnbmF0dXJl").is_empty());
}

#[test]
fn builtin_bearer() {
    let found = rules_of("GET / Authorization: Bearer abcDEF123456ghi.jkl-mno");
    assert_eq!(found, vec![(BEARER.to_string(), "abcDEF123456ghi.jkl-mno".to_string())]);
    assert_eq!(rules_of("auth bearer Zm9vYmFyYmF6cXV4").len(), 1);
    assert!(rules_of("the bearer authentication scheme").is_empty());
}

#[test]
fn builtin_aws() {
    let found = rules_of("key AKIAIOSFODNN7ABCDEFG here");
    assert_eq!(found, vec![(AWS_ACCESS_KEY_ID.to_string(), "AKIAIOSFODNN7ABCDEFG".to_string())]);
    assert!(rules_of("AKIAIOSFODNN7EXAMPLE").is_empty());
}

#[test]
fn builtin_password_values() {
    let text = "login user=bob password=hunter2 ok; db_passwd: \"s3cr3t!\" secret=abc123 pass=*** PASSWORD=${DB_PASS}";
    let found: Vec<String> = rules_of(text)
        .into_iter()
        .filter(|(r, _)| r == PASSWORD_KV)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(found, vec!["hunter2", "s3cr3t!", "abc123"]);
}

#[test]
fn keyword_prefilter_and_allowlist() {
    let toml = r#"
[allowlist]
stopwords = ["dummy"]
[[rules]]
id = "t"
regex = '''tok_([a-z0-9]{8})'''
keywords = ["TOK_"]
[[rules.allowlists]]
regexes = ['''^0+$''']
[[rules]]
id = "bad"
regex = '''(?P<x'''
[[rules]]
id = "path-only"
path = '''\.p12$'''
"#;
    let rules = Rules::gitleaks_only(toml).expect("loads");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules.path_only(), ["path-only"]);
    assert!(matches!(&rules.skipped()[0], SecretsError::Regex { rule, .. } if rule == "bad"));
    let spans = rules.find("x tok_ab12cd34 tok_00000000 tok_dummyabc");
    assert_eq!(spans.len(), 1);
    assert_eq!((spans[0].start, spans[0].end), (6, 14));
    assert!(Rules::gitleaks_only("not toml [[").is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn find_never_panics(s in "\\PC{0,200}", prefix in prop::sample::select(vec!["", "password=", "Bearer ", "AKIA", "-----BEGIN PRIVATE KEY-----", "eyJ", "api_key = "])) {
        let text = format!("{prefix}{s}");
        let spans = loaded().find(&text);
        for w in spans.windows(2) {
            prop_assert!(w[0] <= w[1]);
        }
        for sp in &spans {
            prop_assert!(sp.start < sp.end && sp.end <= text.len());
            prop_assert!(text.is_char_boundary(sp.start) && text.is_char_boundary(sp.end));
        }
    }
}
