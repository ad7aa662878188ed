//! Reading gitleaks' TOML rule format and translating Go RE2 patterns to
//! the `regex` crate's syntax.

use serde::Deserialize;

/// Top level of a gitleaks config (unknown keys such as `title` are ignored).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Config {
    #[serde(default)]
    pub allowlist: Option<AllowlistDef>,
    #[serde(default)]
    pub allowlists: Vec<AllowlistDef>,
    #[serde(default)]
    pub rules: Vec<RuleDef>,
}

/// One `[[rules]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RuleDef {
    pub id: String,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub secret_group: Option<usize>,
    #[serde(default)]
    pub entropy: Option<f64>,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default)]
    pub allowlist: Option<AllowlistDef>,
    #[serde(default)]
    pub allowlists: Vec<AllowlistDef>,
}

/// An `allowlist` / `[[rules.allowlists]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AllowlistDef {
    #[serde(default)]
    pub condition: Option<String>,
    #[serde(default)]
    pub regex_target: Option<String>,
    #[serde(default)]
    pub regexes: Vec<String>,
    #[serde(default)]
    pub stopwords: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub commits: Vec<String>,
}

/// Translates a Go RE2 pattern to `regex` crate syntax.
///
/// Differences handled:
/// * Go's `\w`, `\d`, `\s`, `\b` are ASCII-only; the `regex` crate's are
///   Unicode. They become `[[:word:]]`-style ASCII classes and `(?-u:\b)`.
/// * Inside a character class Go treats `[` (unless it opens `[:name:]`),
///   `&&`, `--` and `~~` literally; the `regex` crate reads nested classes
///   and set operations there, so those characters are escaped.
pub(crate) fn translate_go_regex(p: &str) -> String {
    let chars: Vec<char> = p.chars().collect();
    let mut out = String::with_capacity(p.len() + 16);
    let mut i = 0;
    // Inside a class: Some(position of the first member char).
    let mut class_start: Option<usize> = None;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && i + 1 < chars.len() {
            let n = chars[i + 1];
            let inside = class_start.is_some();
            let rep: Option<&str> = match (n, inside) {
                ('w', false) => Some("[[:word:]]"),
                ('d', false) => Some("[[:digit:]]"),
                ('s', false) => Some(r"[\t\n\f\r ]"),
                ('W', false) => Some("[^[:word:]]"),
                ('D', false) => Some("[^[:digit:]]"),
                ('S', false) => Some(r"[^\t\n\f\r ]"),
                ('b', false) => Some(r"(?-u:\b)"),
                ('B', false) => Some(r"(?-u:\B)"),
                ('w', true) => Some("[:word:]"),
                ('d', true) => Some("[:digit:]"),
                ('s', true) => Some(r"\t\n\f\r "),
                _ => None,
            };
            match rep {
                Some(r) => out.push_str(r),
                None => {
                    out.push(c);
                    out.push(n);
                }
            }
            i += 2;
            continue;
        }
        match class_start {
            None => {
                if c == '[' {
                    out.push('[');
                    i += 1;
                    if chars.get(i) == Some(&'^') {
                        out.push('^');
                        i += 1;
                    }
                    class_start = Some(i);
                    continue;
                }
                if c == '{' {
                    if let Some(len) = repetition_len(&chars[i..]) {
                        out.extend(&chars[i..i + len]);
                        i += len;
                        continue;
                    }
                    out.push_str(r"\{");
                } else if c == '}' {
                    out.push_str(r"\}");
                } else {
                    out.push(c);
                }
            }
            Some(start) => {
                if c == ']' && i != start {
                    class_start = None;
                    out.push(']');
                } else if c == ']' {
                    // `]` first in a class is a literal in Go.
                    out.push_str(r"\]");
                } else if c == '[' {
                    if chars.get(i + 1) == Some(&':') {
                        // POSIX class: copy through `:]`.
                        let mut j = i + 2;
                        while j + 1 < chars.len() && !(chars[j] == ':' && chars[j + 1] == ']') {
                            j += 1;
                        }
                        let end = (j + 2).min(chars.len());
                        out.extend(&chars[i..end]);
                        i = end;
                        continue;
                    }
                    out.push_str(r"\[");
                } else if (c == '&' || c == '~') || (c == '-' && chars.get(i + 1) == Some(&'-')) {
                    out.push('\\');
                    out.push(c);
                } else {
                    out.push(c);
                }
            }
        }
        i += 1;
    }
    out
}

/// Length of a valid `{n}`, `{n,}` or `{n,m}` at the start of `s`.
fn repetition_len(s: &[char]) -> Option<usize> {
    let mut i = 1;
    let digits = |i: &mut usize| {
        let from = *i;
        while s.get(*i).is_some_and(|c| c.is_ascii_digit()) {
            *i += 1;
        }
        *i > from
    };
    if !digits(&mut i) {
        return None;
    }
    if s.get(i) == Some(&',') {
        i += 1;
        digits(&mut i);
    }
    (s.get(i) == Some(&'}')).then_some(i + 1)
}

#[cfg(test)]
mod tests {
    use super::translate_go_regex as t;

    #[test]
    fn translates_classes() {
        assert_eq!(t(r"\w+"), "[[:word:]]+");
        assert_eq!(t(r"[\w.-]"), "[[:word:].-]");
        assert_eq!(t(r"[^]]+"), r"[^\]]+");
        assert_eq!(t(r"[[:alnum:]]{3}"), "[[:alnum:]]{3}");
        assert_eq!(t(r"[a[b]"), r"[a\[b]");
        assert_eq!(t(r"\\w"), r"\\w");
        assert_eq!(t(r"^\$(?:\d+|{\d+})$"), r"^\$(?:[[:digit:]]+|\{[[:digit:]]+\})$");
        assert_eq!(t(r"a{2,}b{1,3}c{3}"), r"a{2,}b{1,3}c{3}");
        assert!(regex::Regex::new(&t(r"[\w .-/&&]+\b")).is_ok());
    }
}
