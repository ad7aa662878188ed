use std::sync::OnceLock;

use proptest::prelude::*;
use serde::Deserialize;

use super::builtin::{
    API_KEY_KV, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AZURE_KEY, BEARER, GCP_API_KEY, GITHUB_TOKEN, JWT, PASSWORD_KV,
    PEM_PRIVATE_KEY, SLACK_TOKEN,
};
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
        "active rules: {} (incl. 11 built-in), skipped: {}, path-only ignored: {:?}",
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

/// The values `rule` finds in `text` (built-ins only).
fn values_of(rule: &str, text: &str) -> Vec<String> {
    rules_of(text).into_iter().filter(|(r, _)| r == rule).map(|(_, v)| v).collect()
}

#[test]
fn builtin_aws_secret_access_key() {
    let key = "Zq3vK8pT2mW9xR4nB7cY1dF6gH0jL5sA8eU3iO2w";
    for text in [
        format!("aws_secret_access_key = {key}"),
        format!("AWS_SECRET_ACCESS_KEY={key}"),
        format!("export AWS_SECRET_ACCESS_KEY=\"{key}\""),
        format!("{{\"AccessKeyId\": \"ASIA...\", \"SecretAccessKey\": \"{key}\"}}"),
        format!("aws.secret-access-key: '{key}'"),
    ] {
        assert_eq!(values_of(AWS_SECRET_ACCESS_KEY, &text), [key], "{text}");
    }
    for text in [
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", // the documentation's example
        "aws_secret_access_key = Zq3vK8pT2mW9xR4nB7cY1dF6gH0jL5sA8eU3iO2", // 39 characters
        "aws_secret_access_key = Zq3vK8pT2mW9xR4nB7cY1dF6gH0jL5sA8eU3iO2wX", // 41
        "aws_secret_access_key = ${AWS_SECRET}",
        "Zq3vK8pT2mW9xR4nB7cY1dF6gH0jL5sA8eU3iO2w", // no context
    ] {
        assert!(values_of(AWS_SECRET_ACCESS_KEY, text).is_empty(), "{text}");
    }
}

#[test]
fn builtin_gcp_api_key() {
    let key = "AIzaSyNHxIf32IQ1a1yjl3ZJIqKZqzLAK1XhDk-";
    assert_eq!(values_of(GCP_API_KEY, &format!("GET /maps?key={key}&q=x")), [key]);
    assert_eq!(values_of(GCP_API_KEY, &format!("\"apiKey\": \"{key}\"")), [key]);
    for text in [
        "AIzaSyNHxIf32IQ1a1yjl3ZJIqKZqzLAK1XhDk", // 34 after AIza
        "AIzaSyNHxIf32IQ1a1yjl3ZJIqKZqzLAK1XhDk-x", // 36
        "AIzaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", // no entropy
        "AIzaSyCkEhVjf3pduRDt6d1yKOMitrUEke8agEM", // published in Google's SDKs
        "xAIzaSyNHxIf32IQ1a1yjl3ZJIqKZqzLAK1XhDk-",
    ] {
        assert!(values_of(GCP_API_KEY, text).is_empty(), "{text}");
    }
}

#[test]
fn builtin_github_tokens() {
    let tail = "16C7e42F292c6912E7710c838347Ae178B4a";
    for prefix in ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"] {
        let tok = format!("{prefix}{tail}");
        assert_eq!(values_of(GITHUB_TOKEN, &format!("Authorization: token {tok}")), [tok.as_str()]);
    }
    let pat = format!("github_pat_11ABCDEFG0{}", &"aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6kL9nP2qR5tU8wX1zA4cD7fG0hJ3kM6nP9qS2uV5xY8a"[..72]);
    assert_eq!(pat.len(), 93);
    assert_eq!(values_of(GITHUB_TOKEN, &format!("GH_TOKEN={pat}")), [pat.as_str()]);
    for text in [
        "ghp_16C7e42F292c6912E7710c838347Ae178B4", // 35
        "ghp_16C7e42F292c6912E7710c838347Ae178B4aZ", // 37
        "ghx_16C7e42F292c6912E7710c838347Ae178B4a",
        "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "github_pat_short",
    ] {
        assert!(values_of(GITHUB_TOKEN, text).is_empty(), "{text}");
    }
}

#[test]
fn builtin_slack_tokens() {
    for tok in [
        "xoxb-781236542736-2364535789652-GkwFDQoHqzXDVsC6GzqYUypD",
        "xoxb-263594206564-FGqddMF8t08v8N7Oq4i57vs1",
        "xoxp-41684372915-1320496754-45609968301-e708ba56e1517a99f6b5fb07349476ef",
        "xoxs-3206092076-3204538285-3743137121-836b042620",
        "xoxa-2-511111111-31111111111-3111111111111-e039d02840a0b9379c",
        "xoxr-563214521478-1120123456789-v5R2Xa8TqPz9LmK3",
    ] {
        let tok = tok.replace("xoxa-2-", "xoxa-");
        assert_eq!(values_of(SLACK_TOKEN, &format!("\"token\": \"{tok}\"")), [tok.as_str()], "{tok}");
    }
    for text in [
        "xoxb-12345-abcd234",
        "xoxp-1234567890",
        "xoxp-572370529330-573807301142-572331691188-####################",
        "xoxb-xxxxxxxxxxxx-xxxxxxxxxxxx",
        "xoxq-781236542736-2364535789652-GkwFDQoHqzXDVsC6GzqYUypD",
    ] {
        assert!(values_of(SLACK_TOKEN, text).is_empty(), "{text}");
    }
}

#[test]
fn builtin_azure_keys() {
    let key = format!("{}==", "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw".get(..86).unwrap_or_default());
    let conn = format!("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={key};EndpointSuffix=core.windows.net");
    assert_eq!(values_of(AZURE_KEY, &conn), [key.as_str()]);
    let sb = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey=q8T3bW9vN2mX5cR7yK1pL4sD6fH0jZ3aQ9wE2rT5yU8=";
    assert_eq!(values_of(AZURE_KEY, sb), ["q8T3bW9vN2mX5cR7yK1pL4sD6fH0jZ3aQ9wE2rT5yU8="]);
    for text in ["AccountKey=<your-key>", "AccountKey=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx==", "AccountKey=abc123==", "SharedAccessKeyName=RootManageSharedAccessKey"] {
        assert!(values_of(AZURE_KEY, text).is_empty(), "{text}");
    }
}

#[test]
fn builtin_api_key_values() {
    for (text, want) in [
        ("GET /v1/x?api_key=9f8e7d6c5b4a39281706f5e4d3c2b1a0 HTTP/1.1", "9f8e7d6c5b4a39281706f5e4d3c2b1a0"),
        ("config: apiKey: \"k3Y_9fQ2xLm7Pz4Rt8Vw1Bn6\"", "k3Y_9fQ2xLm7Pz4Rt8Vw1Bn6"),
        ("token=Q2xpZW50SWQ6U2VjcmV0S2V5MTIz", "Q2xpZW50SWQ6U2VjcmV0S2V5MTIz"),
        ("\"access_token\": \"ya29.a0AfH6SMBx7Qk2-LpV9wR3tY8uI1oP4\"", "ya29.a0AfH6SMBx7Qk2-LpV9wR3tY8uI1oP4"),
        ("client_secret=bP88Q~rcBcYjzzOhg1Hnn76Wm3jGgakZiZ.8vMgR", "bP88Q~rcBcYjzzOhg1Hnn76Wm3jGgakZiZ.8vMgR"),
        ("DEPLOY_TOKEN=glpat-8d7A3kPq2LmN9xZ4vB6c", "glpat-8d7A3kPq2LmN9xZ4vB6c"),
    ] {
        assert_eq!(values_of(API_KEY_KV, text), [want], "{text}");
    }
    for text in [
        "token=abc123",                                // short
        "token: aaaaaaaaaaaaaaaaaaaaaaaaaaaa1",        // no entropy
        "token=this-is-not-a-secret-at-all",           // no digit
        "api_key=1234567890123456789",                 // no letter
        "token=${API_TOKEN_FROM_ENVIRONMENT_1}",       // placeholder: `$` ends the value before 16 chars
        "api_key=xxxxxxxxxxxxxxxxxxxxxxxx",
        "csrf-token=Mj2qykJO5rELyHgezQ69nzUX0i3OH67V7+V4eUrLfpuyOuxmiW9rhROG",
        "tokens issued: 1234 in 5678 ms",
        "monkey=Q2xpZW50SWQ6U2VjcmV0S2V5MTIz",
        "token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlMTIz", // a JWT: the JWT rule's
    ] {
        assert!(values_of(API_KEY_KV, text).is_empty(), "{text}");
    }
}

/// The built-ins alone against gitleaks' examples of the matching
/// gitleaks rules (the default policy has no gitleaks file).
#[test]
fn builtin_against_gitleaks_examples() {
    let cases: Vec<Case> = serde_json::from_str(TPS_FPS_JSON).expect("json parses");
    let builtin = Rules::builtin();
    let related = |id: &str| {
        id.starts_with("slack-") && id != "slack-webhook-url" || id == "gcp-api-key" || id.starts_with("github-")
    };
    let (mut tp, mut tp_hit, mut fp, mut fp_hit) = (0, 0, 0, 0);
    for case in cases.iter().filter(|c| related(&c.rule_id)) {
        for t in &case.true_positives {
            tp += 1;
            if builtin.find(t).is_empty() {
                eprintln!("builtin misses {} TP {t:?}", case.rule_id);
            } else {
                tp_hit += 1;
            }
        }
        for f in &case.false_positives {
            fp += 1;
            let by: Vec<String> = builtin.find(f).into_iter().filter_map(|s| s.rule).collect();
            if !by.is_empty() {
                fp_hit += 1;
                eprintln!("builtin {by:?} flags {} FP {f:?}", case.rule_id);
            }
        }
    }
    eprintln!("built-ins on gitleaks slack/gcp/github examples: TP {tp_hit}/{tp}, FP {fp_hit}/{fp}");
    assert!(tp_hit * 100 >= tp * 95, "TP {tp_hit}/{tp}");
    assert!(fp_hit * 100 <= fp * 10, "FP {fp_hit}/{fp}");
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
