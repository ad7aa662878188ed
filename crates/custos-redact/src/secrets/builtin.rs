//! Built-in detectors, independent of any gitleaks file.

use regex::Regex;

use super::{Allowlist, Rule, Target};

/// PEM private key block, possibly spanning lines.
pub const PEM_PRIVATE_KEY: &str = "custos-pem-private-key";
/// JSON Web Token with a decodable header carrying `alg`.
pub const JWT: &str = "custos-jwt";
/// `Authorization: Bearer <token>` / `bearer <token>`.
pub const BEARER: &str = "custos-bearer-token";
/// AWS access key id (AKIA…, ASIA…).
pub const AWS_ACCESS_KEY_ID: &str = "custos-aws-access-key-id";
/// Value of a `password=` / `passwd:` / `secret=` pair.
pub const PASSWORD_KV: &str = "custos-password-value";
/// AWS secret access key after `aws_secret_access_key =` (or
/// `SecretAccessKey":`, as the AWS CLI prints it).
pub const AWS_SECRET_ACCESS_KEY: &str = "custos-aws-secret-access-key";
/// Google (GCP, Firebase, Maps) API key `AIza…`.
pub const GCP_API_KEY: &str = "custos-gcp-api-key";
/// GitHub tokens: `ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`.
pub const GITHUB_TOKEN: &str = "custos-github-token";
/// Slack tokens `xoxb-`, `xoxa-`, `xoxp-`, `xoxr-`, `xoxs-` (also
/// `xoxe-`, `xoxo-`): numeric team/user ids, then the random part.
pub const SLACK_TOKEN: &str = "custos-slack-token";
/// Azure storage account key / Service Bus key in a connection string
/// (`AccountKey=…`, `SharedAccessKey=…`).
pub const AZURE_KEY: &str = "custos-azure-account-key";
/// High-entropy value of an `api_key=` / `token:` / `access_token=` /
/// `client_secret=` / `private_key=` pair.
pub const API_KEY_KV: &str = "custos-api-key-value";

/// Google API keys embedded in Google's own SDKs, public by design.
const GCP_PUBLIC_KEYS: &str = "^(?:AIzaSyabcdefghijklmnopqrstuvwxyz1234567|AIzaSyAnLA7NfeLquW1tJFpx_eQCxoX-oo6YyIs|\
AIzaSyCkEhVjf3pduRDt6d1yKOMitrUEke8agEM|AIzaSyDMAScliyLx7F0NPDEJi1QmyCgHIAODrlU|AIzaSyD3asb-2pEZVqMkmL6M9N6nHZRR_znhrh0|\
AIzayDNSXIbFmlXbIE6mCzDLQAqITYefhixbX4A|AIzaSyAdOS2zB6NCsk1pCdZ4-P6GBdi_UUPwX7c|AIzaSyASWm6HmTMdYWpgMnjRBjxcQ9CKctWmLd4|\
AIzaSyANUvH9H9BsUccjsu2pCmEkOPjjaXeDQgY|AIzaSyA5_iVawFQ8ABuTZNUdcwERLJv_a_p4wtM|AIzaSyA4UrcGxgwQFTfaI3no3t7Lt1sjmdnP5sQ|\
AIzaSyDSb51JiIcB6OJpwwMicseKRhhrOq1cS7g|AIzaSyBF2RrAIm4a0mO64EShQfqfd2AFnzAvvuU|AIzaSyBcE-OOIbhjyR83gm4r2MFCu4MJmprNXsw|\
AIzaSyB8qGxt4ec15vitgn44duC5ucxaOi4FmqE|AIzaSyA8vmApnrHNFE0bApF4hoZ11srVL_n0nvY)$";

fn rule(
    id: &str,
    pattern: &str,
    group: Option<usize>,
    keywords: &[&str],
    allow: &[&str],
    check: Option<super::Check>,
) -> Rule {
    rule_entropy(id, pattern, group, keywords, allow, check, None)
}

fn rule_entropy(
    id: &str,
    pattern: &str,
    group: Option<usize>,
    keywords: &[&str],
    allow: &[&str],
    check: Option<super::Check>,
    entropy: Option<f64>,
) -> Rule {
    // Invariant: the patterns below are constants, covered by the tests in
    // `secrets::tests` (`builtin_*`), so they always compile.
    let regex = Regex::new(pattern).expect("built-in secret pattern compiles");
    let regexes: Vec<Regex> = allow
        .iter()
        .map(|p| Regex::new(p).expect("built-in allowlist pattern compiles"))
        .collect();
    let allowlists = if regexes.is_empty() {
        Vec::new()
    } else {
        vec![Allowlist {
            and: false,
            target: Target::Secret,
            regexes,
            stopwords: Vec::new(),
            needs_path: false,
        }]
    };
    Rule {
        id: id.to_string(),
        regex,
        secret_group: group,
        entropy,
        keywords: keywords.iter().map(|k| k.to_string()).collect(),
        allowlists,
        check,
    }
}

pub(super) fn rules() -> Vec<Rule> {
    vec![
        rule(
            PEM_PRIVATE_KEY,
            r"-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----[\s\S]{16,}?-----END[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----",
            None,
            &["private key"],
            &[],
            None,
        ),
        rule(
            JWT,
            r"(?-u:\b)(eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*)",
            Some(1),
            &["eyj"],
            &[],
            Some(jwt_header_ok),
        ),
        rule(
            BEARER,
            r"(?i)(?-u:\b)bearer[ \t]+([A-Za-z0-9._~+/-]{8,}=*)",
            Some(1),
            &["bearer"],
            &[r"^[A-Za-z_.-]+$", r"^(?:x+|\*+|\.+)$"],
            None,
        ),
        rule(
            AWS_ACCESS_KEY_ID,
            r"(?-u:\b)((?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})(?-u:\b)",
            Some(1),
            &["akia", "asia", "abia", "acca", "a3t"],
            &[r"EXAMPLE$", r"X{6,}"],
            None,
        ),
        rule(
            PASSWORD_KV,
            r#"(?i)(?:^|[^A-Za-z])(?:pass(?:word|wd|phrase)?|pwd|secret)(?:[_.-]?key)?["']?[ \t]*(?:=|:)[ \t]*["']?([^\s"',;&]{1,200})"#,
            Some(1),
            &["pass", "pwd", "secret"],
            &[
                r"(?i)^(?:\*+|x+|\.+|-+|null|nil|none|true|false|redacted|\[redacted\]|<redacted>|changeme|hidden|masked|undefined|empty)$",
                r"^<[^>]*>$",
                r"^\$\{?[A-Za-z_][A-Za-z0-9_]*\}?$",
                r"^%[A-Za-z_]+%$",
                r"^\{\{.*\}\}$",
                r"^[\[{(]$",
                r"(?i)x{6,}|\*{3,}|redacted|^\$\(",
            ],
            None,
        ),
        rule(
            AWS_SECRET_ACCESS_KEY,
            r#"(?i)(?:aws)?[_.-]?secret[_.-]?access[_.-]?key["']?[ \t]*(?:=|:|=>)[ \t]*["']?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"#,
            Some(1),
            &["secret"],
            &[r"EXAMPLE", r"(?i)x{6,}|^[a-z]+$|^[A-Z]+$"],
            None,
        ),
        rule_entropy(
            GCP_API_KEY,
            r"(?-u:\b)(AIza[0-9A-Za-z_-]{35})(?:[^0-9A-Za-z_-]|$)",
            Some(1),
            &["aiza"],
            // Keys Google publishes in its SDKs (gitleaks' allowlist).
            &[r"(?i)x{6,}|EXAMPLE", GCP_PUBLIC_KEYS],
            None,
            Some(4.0),
        ),
        rule(
            GITHUB_TOKEN,
            r"(?-u:\b)((?:ghp|gho|ghu|ghs|ghr)_[0-9A-Za-z]{36}|github_pat_[0-9A-Za-z_]{82})(?-u:\b)",
            Some(1),
            &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
            &[r"(?i)x{6,}"],
            None,
        ),
        rule(
            SLACK_TOKEN,
            r"(?-u:\b)(xox[abeoprs]-(?:[0-9]{6,13}-){1,3}[0-9A-Za-z]{10,128}|xoxe-1-[0-9A-Za-z]{100,300})(?-u:\b)",
            Some(1),
            &["xoxa-", "xoxb-", "xoxe-", "xoxo-", "xoxp-", "xoxr-", "xoxs-"],
            &[r"(?i)x{6,}"],
            Some(slack_ok),
        ),
        rule(
            AZURE_KEY,
            r"(?i)(?-u:\b)(?:AccountKey|SharedAccessKey)[ \t]*=[ \t]*([A-Za-z0-9+/]{40,100}={0,2})",
            Some(1),
            &["accountkey", "sharedaccesskey"],
            &[r"(?i)x{6,}"],
            None,
        ),
        rule_entropy(
            API_KEY_KV,
            r#"(?i)(?:^|[^A-Za-z0-9])(?:api[_.-]?key|api[_.-]?token|(?:access|auth|bearer|refresh|session|secret)[_.-]?token|token|client[_.-]?secret|private[_.-]?key)["']?[ \t]*(?:=|:|=>)[ \t]*["']?([A-Za-z0-9_+/=.~-]{16,256})"#,
            Some(1),
            &["apikey", "api_key", "api-key", "api.key", "api_token", "apitoken", "api-token", "api.token", "token", "client_secret", "clientsecret", "client-secret", "client.secret", "private_key", "privatekey", "private-key", "private.key"],
            // Values of a known shape are left to their own rule (the JWT
            // rule checks the header), which then names the finding.
            &[r"(?i)x{6,}|\*{3,}|redacted|example|^[a-z._-]+$|^[0-9._-]+$", r"^(?:eyJ|xox[abeoprs]-|gh[pousr]_|github_pat_|AIza|AKIA|ASIA)"],
            Some(mixed_chars),
            Some(3.5),
        )
        // Anti-CSRF tokens are per-form nonces, not credentials.
        .allow_line(r#"(?i)(?:csrf|xsrf)[_.-]?token["']?[ \t]*(?:=|:)"#),
    ]
}

/// The random part of a Slack token (after the numeric ids) has letters.
fn slack_ok(token: &str) -> bool {
    token.rsplit('-').next().is_some_and(|last| last.bytes().any(|c| c.is_ascii_alphabetic()))
}

/// Both a letter and a digit (random keys have both; words and numbers
/// are not keys).
fn mixed_chars(s: &str) -> bool {
    s.bytes().any(|c| c.is_ascii_digit()) && s.bytes().any(|c| c.is_ascii_alphabetic())
}

impl Rule {
    /// Adds an allowlist regex tested against the line of the match.
    fn allow_line(mut self, pattern: &str) -> Rule {
        self.allowlists.push(Allowlist {
            and: false,
            target: Target::Line,
            regexes: vec![Regex::new(pattern).expect("built-in allowlist pattern compiles")],
            stopwords: Vec::new(),
            needs_path: false,
        });
        self
    }
}

/// Decodes base64url (padding optional); `None` on bad input.
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// True if the first part decodes to a JSON object with an `alg` member.
fn jwt_header_ok(token: &str) -> bool {
    let header = token.split('.').next().unwrap_or("");
    base64url_decode(header)
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|v| v.get("alg").is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_base64url() {
        assert_eq!(base64url_decode("eyJhbGciOiJIUzI1NiJ9").as_deref(), Some(&br#"{"alg":"HS256"}"#[..]));
        assert!(jwt_header_ok("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig"));
        assert!(!jwt_header_ok("eyJmb28iOiJiYXIifQ.eyJzdWIiOiIxIn0.sig"));
    }
}
