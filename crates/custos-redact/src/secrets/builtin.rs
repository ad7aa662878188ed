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

fn rule(
    id: &str,
    pattern: &str,
    group: Option<usize>,
    keywords: &[&str],
    allow: &[&str],
    check: Option<super::Check>,
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
        entropy: None,
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
    ]
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
