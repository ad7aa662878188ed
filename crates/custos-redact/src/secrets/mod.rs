//! Secret detection: gitleaks-format rules and built-in detectors.
//!
//! [`Rules::from_gitleaks_toml`] reads a gitleaks rule file (the
//! `[[rules]]` format of gitleaks v8: `id`, `regex`, `secretGroup`,
//! `entropy`, `keywords`, `allowlist`/`allowlists` with `regexes`,
//! `stopwords`, `regexTarget`, `condition`, plus the global `[allowlist]`)
//! and merges it with the built-in detectors of [`Rules::builtin`].
//! [`Rules::find`] returns [`Span`]s with [`Entity::Secret`] and the rule id.
//!
//! Semantics follow gitleaks' detector:
//! * keywords are a case-insensitive prefilter; a rule with keywords runs
//!   only if one occurs, one without always runs. (Implementation: the
//!   lower-cased keywords are searched in an ASCII-lower-cased copy of the
//!   text — the same matches as an ASCII case-insensitive search — first
//!   leftmost-first, which lets Aho-Corasick use its SIMD prefilter, and
//!   only after a hit overlapping, to collect every keyword; a text
//!   without keywords allocates nothing and runs no regex.)
//! * the secret is capture group `secretGroup` if set, else the first
//!   non-empty capture group, else the whole match; the span covers it;
//! * `entropy` drops secrets whose Shannon entropy is not above it;
//! * an allowlist drops a finding if (OR, the default) any of its regexes
//!   matches the target (`regexTarget` = `secret` (default), `match` or
//!   `line`) or the lower-cased secret contains a stopword; with
//!   `condition = "AND"` all criteria it lists must hold. Paths and commits
//!   cannot be checked on plain text: under OR they are ignored, under AND
//!   an allowlist that needs one never applies.
//! * Rules with only a `path` (no content regex) are ignored (counted in
//!   [`Rules::path_only`]); a rule with both is run on content alone.
//!
//! Go RE2 patterns are translated (see `gitleaks::translate_go_regex`):
//! ASCII `\w \d \s \b`, literal `[`/`&&`/`--`/`~~` inside classes. A rule
//! whose pattern still fails to compile is skipped and reported in
//! [`Rules::skipped`]; with the shipped gitleaks.toml none is.
//!
//! Evaluation on `rule_tps_fps.dev.json` (each rule against its own literal
//! tps/fps, as gitleaks' own tests do; test `gitleaks_tps_fps`, which
//! prints the misses): with the shipped gitleaks.toml 221 rules load
//! (+ 11 built-in), 0 are skipped, 1 (`pkcs12-file`) is path-only.
//! TPs found: 181/183 (98.9 %); FPs flagged by their own rule: 0/221 (0 %).
//! Run through the whole merged set, 11/221 FP strings are flagged by some
//! *other* rule (9/221 before the built-ins grew): gitleaks' own
//! `generic-api-key` (3), the two Anthropic rules flagging each other's
//! examples (2), and the built-in `custos-api-key-value` (6: high-entropy
//! values after `token`/`api-key` that are negatives for a vendor rule
//! only because they miss its exact format, e.g.
//! `DATABRICKS_TOKEN=dapi…defg5`, `meraki-api-key: …`; where two rules
//! report the same range the finding carries one rule id) —
//! expected, since those strings are negatives only for the rule they
//! belong to. The built-ins alone find all 27 examples of gitleaks' Slack,
//! GCP API key and GitHub rules and flag none of their 38 negatives
//! (`builtin_against_gitleaks_examples`).
//!
//! Built-ins ([`Rules::builtin`], the default policy's secret rules; all
//! keyword-prefiltered): PEM private-key blocks, JWTs (header must decode
//! with an `alg`), `Bearer` tokens, AWS access key ids, AWS secret access
//! keys after `aws_secret_access_key`/`SecretAccessKey`, GCP API keys
//! `AIza…` (entropy > 4, Google's published SDK keys allowed), GitHub
//! tokens `ghp_ gho_ ghu_ ghs_ ghr_ github_pat_`, Slack tokens
//! `xox[abeoprs]-` with numeric ids, Azure `AccountKey=`/`SharedAccessKey=`
//! values, `password=`-style values, and high-entropy (> 3.5 bits, letters
//! and digits) values of `api_key`/`token`/`access_token`/`client_secret`/
//! `private_key`-style pairs (not anti-CSRF tokens; values of a known shape
//! are left to their own rule, which then names the finding).
//!
//! Known misses (see [`KNOWN_MISSES`]):
//! * `gcp-service-account`, `square-secret`: the JSON has examples for
//!   them but the shipped gitleaks.toml has no such rule (gitleaks does not
//!   generate them into the default config), so their 2 TPs cannot match.

mod builtin;
mod gitleaks;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::{Regex, RegexBuilder};

use crate::pii::scan::with_ascii_lower;
use crate::{Entity, Span};

/// Rules that miss some of the literal examples in `rule_tps_fps.dev.json`,
/// and why (kept in step with the `gitleaks_tps_fps` test output).
pub const KNOWN_MISSES: &[(&str, &str)] = &[
    (
        "gcp-service-account",
        "no such rule in the shipped gitleaks.toml (examples exist in the JSON only)",
    ),
    (
        "square-secret",
        "no such rule in the shipped gitleaks.toml (examples exist in the JSON only)",
    ),
];

/// What went wrong loading rules.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum SecretsError {
    /// The file is not valid TOML or not gitleaks' shape.
    #[error("gitleaks config is not valid: {0}")]
    Config(String),
    /// A rule's regex does not compile with the `regex` crate.
    #[error("rule {rule}: regex does not compile: {message}")]
    Regex {
        /// The rule id.
        rule: String,
        /// The compiler's message.
        message: String,
    },
    /// An allowlist regex of a rule (or `<global>`) does not compile.
    #[error("rule {rule}: allowlist regex {pattern:?} does not compile: {message}")]
    AllowlistRegex {
        /// The rule id, or `<global>`.
        rule: String,
        /// The pattern as written.
        pattern: String,
        /// The compiler's message.
        message: String,
    },
    /// `secretGroup` names a group the regex does not have.
    #[error("rule {rule}: secretGroup {group} but the regex has {groups} groups")]
    SecretGroup {
        /// The rule id.
        rule: String,
        /// The configured group.
        group: usize,
        /// Capture groups in the regex.
        groups: usize,
    },
    /// An allowlist `condition` other than OR / AND.
    #[error("rule {rule}: unknown allowlist condition {condition:?}")]
    Condition {
        /// The rule id.
        rule: String,
        /// The value found.
        condition: String,
    },
    /// An allowlist `regexTarget` other than secret / match / line.
    #[error("rule {rule}: unknown allowlist regexTarget {target:?}")]
    RegexTarget {
        /// The rule id.
        rule: String,
        /// The value found.
        target: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Secret,
    Match,
    Line,
}

#[derive(Debug)]
struct Allowlist {
    and: bool,
    target: Target,
    regexes: Vec<Regex>,
    /// Lower-cased.
    stopwords: Vec<String>,
    /// Lists paths or commits, which plain text cannot satisfy.
    needs_path: bool,
}

impl Allowlist {
    fn allows(&self, secret: &str, whole: &str, line: &str) -> bool {
        let target = match self.target {
            Target::Secret => secret,
            Target::Match => whole,
            Target::Line => line,
        };
        let has_re = !self.regexes.is_empty();
        let has_sw = !self.stopwords.is_empty();
        let re_hit = has_re && self.regexes.iter().any(|r| r.is_match(target));
        let sw_hit = has_sw && {
            let lower = secret.to_lowercase();
            self.stopwords.iter().any(|s| lower.contains(s.as_str()))
        };
        if self.and {
            if self.needs_path || (!has_re && !has_sw) {
                return false;
            }
            (!has_re || re_hit) && (!has_sw || sw_hit)
        } else {
            re_hit || sw_hit
        }
    }
}

/// Extra check a built-in detector applies to its secret.
type Check = fn(&str) -> bool;

#[derive(Debug)]
struct Rule {
    id: String,
    regex: Regex,
    secret_group: Option<usize>,
    entropy: Option<f64>,
    keywords: Vec<String>,
    allowlists: Vec<Allowlist>,
    check: Option<Check>,
}

/// A compiled set of secret rules.
#[derive(Debug)]
pub struct Rules {
    rules: Vec<Rule>,
    global: Vec<Allowlist>,
    /// Keyword automata; pattern i belongs to the rules in `kw_rules[i]`.
    keywords: Option<Keywords>,
    kw_rules: Vec<Vec<usize>>,
    /// Rules without keywords.
    always: Vec<usize>,
    skipped: Vec<SecretsError>,
    path_only: Vec<String>,
}

/// The keyword prefilter: lower-cased keywords searched in an ASCII
/// lower-cased copy of the text (the same matches as an ASCII
/// case-insensitive search, but it lets aho-corasick use its SIMD
/// prefilters, which case-insensitive automata mostly cannot).
#[derive(Debug)]
struct Keywords {
    /// Leftmost-first: the first keyword occurrence, found fast; no
    /// occurrence starts before it.
    first: AhoCorasick,
    /// Overlapping: every occurrence from there on.
    all: AhoCorasick,
}

impl Keywords {
    fn new(patterns: &[String]) -> Option<Keywords> {
        let build = |kind| AhoCorasickBuilder::new().match_kind(kind).build(patterns).ok();
        Some(Keywords { first: build(MatchKind::LeftmostFirst)?, all: build(MatchKind::Standard)? })
    }

    /// Calls `f` with the pattern id of every keyword occurrence in `text`.
    fn each(&self, text: &str, mut f: impl FnMut(usize)) {
        with_ascii_lower(text.as_bytes(), |lower| {
            let Some(m) = self.first.find(lower) else { return };
            for m in self.all.find_overlapping_iter(&lower[m.start()..]) {
                f(m.pattern().as_usize());
            }
        });
    }
}

/// Shannon entropy (bits per symbol) of `s`, as gitleaks computes it.
pub fn shannon_entropy(s: &str) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = std::collections::HashMap::<char, usize>::new();
    for c in s.chars() {
        *counts.entry(c).or_insert(0) += 1;
    }
    let len = s.len() as f64;
    counts
        .values()
        .map(|&n| {
            let p = n as f64 / len;
            -p * p.log2()
        })
        .sum()
}

fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(&gitleaks::translate_go_regex(pattern))
        .size_limit(64 << 20)
        .dfa_size_limit(16 << 20)
        .build()
}

fn compile_allowlist(
    rule: &str,
    def: &gitleaks::AllowlistDef,
) -> Result<Allowlist, SecretsError> {
    let and = match def.condition.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("OR") | Some("") => false,
        Some("AND") => true,
        Some(other) => {
            return Err(SecretsError::Condition {
                rule: rule.to_string(),
                condition: other.to_string(),
            })
        }
    };
    let target = match def.regex_target.as_deref() {
        None | Some("") | Some("secret") => Target::Secret,
        Some("match") => Target::Match,
        Some("line") => Target::Line,
        Some(other) => {
            return Err(SecretsError::RegexTarget {
                rule: rule.to_string(),
                target: other.to_string(),
            })
        }
    };
    let regexes = def
        .regexes
        .iter()
        .map(|p| {
            compile(p).map_err(|e| SecretsError::AllowlistRegex {
                rule: rule.to_string(),
                pattern: p.clone(),
                message: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Allowlist {
        and,
        target,
        regexes,
        stopwords: def.stopwords.iter().map(|s| s.to_lowercase()).collect(),
        needs_path: !def.paths.is_empty() || !def.commits.is_empty(),
    })
}

fn compile_rule(def: &gitleaks::RuleDef, pattern: &str) -> Result<Rule, SecretsError> {
    let regex = compile(pattern).map_err(|e| SecretsError::Regex {
        rule: def.id.clone(),
        message: e.to_string(),
    })?;
    let groups = regex.captures_len() - 1;
    let secret_group = def.secret_group.filter(|&g| g != 0);
    if let Some(g) = secret_group {
        if g > groups {
            return Err(SecretsError::SecretGroup {
                rule: def.id.clone(),
                group: g,
                groups,
            });
        }
    }
    let allowlists = def
        .allowlist
        .iter()
        .chain(def.allowlists.iter())
        .map(|a| compile_allowlist(&def.id, a))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Rule {
        id: def.id.clone(),
        regex,
        secret_group,
        entropy: def.entropy.filter(|&e| e > 0.0),
        keywords: def.keywords.iter().map(|k| k.to_lowercase()).collect(),
        allowlists,
        check: None,
    })
}

impl Rules {
    /// The built-in detectors only: PEM private keys, JWTs, bearer tokens,
    /// AWS access key ids and secret access keys, GCP API keys, GitHub and
    /// Slack tokens, Azure storage/Service Bus keys, `password=`-style
    /// values and high-entropy `api_key=`/`token=`-style values.
    pub fn builtin() -> Rules {
        Rules::assemble(builtin::rules(), Vec::new(), Vec::new(), Vec::new())
    }

    /// Gitleaks rules from a TOML string, merged with [`Rules::builtin`].
    /// Rules that cannot be compiled are skipped and listed in
    /// [`Rules::skipped`]; only an unreadable file is an error.
    pub fn from_gitleaks_toml(toml_text: &str) -> Result<Rules, SecretsError> {
        let mut rules = builtin::rules();
        let (more, global, skipped, path_only) = Self::parse_gitleaks(toml_text)?;
        rules.extend(more);
        Ok(Rules::assemble(rules, global, skipped, path_only))
    }

    /// Gitleaks rules from a TOML string, without the built-in detectors.
    pub fn gitleaks_only(toml_text: &str) -> Result<Rules, SecretsError> {
        let (rules, global, skipped, path_only) = Self::parse_gitleaks(toml_text)?;
        Ok(Rules::assemble(rules, global, skipped, path_only))
    }

    #[allow(clippy::type_complexity)]
    fn parse_gitleaks(
        toml_text: &str,
    ) -> Result<(Vec<Rule>, Vec<Allowlist>, Vec<SecretsError>, Vec<String>), SecretsError> {
        let config: gitleaks::Config =
            toml::from_str(toml_text).map_err(|e| SecretsError::Config(e.to_string()))?;
        let mut skipped = Vec::new();
        let mut global = Vec::new();
        for def in config.allowlist.iter().chain(config.allowlists.iter()) {
            match compile_allowlist("<global>", def) {
                Ok(a) => global.push(a),
                Err(e) => skipped.push(e),
            }
        }
        let mut rules = Vec::new();
        let mut path_only = Vec::new();
        for def in &config.rules {
            let Some(pattern) = def.regex.as_deref().filter(|p| !p.is_empty()) else {
                path_only.push(def.id.clone());
                continue;
            };
            match compile_rule(def, pattern) {
                Ok(r) => rules.push(r),
                Err(e) => skipped.push(e),
            }
        }
        Ok((rules, global, skipped, path_only))
    }

    fn assemble(
        rules: Vec<Rule>,
        global: Vec<Allowlist>,
        skipped: Vec<SecretsError>,
        path_only: Vec<String>,
    ) -> Rules {
        let mut patterns: Vec<String> = Vec::new();
        let mut kw_rules: Vec<Vec<usize>> = Vec::new();
        let mut always = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let kws: Vec<&String> = r.keywords.iter().filter(|k| !k.is_empty()).collect();
            if kws.is_empty() {
                always.push(i);
            }
            for k in kws {
                match patterns.iter().position(|p| p == k) {
                    Some(pi) => kw_rules[pi].push(i),
                    None => {
                        patterns.push(k.clone());
                        kw_rules.push(vec![i]);
                    }
                }
            }
        }
        // Building can only fail on size limits; without an automaton every
        // keyword rule then runs unconditionally (correct, just slower).
        let keywords = Keywords::new(&patterns);
        if keywords.is_none() {
            always = (0..rules.len()).collect();
        }
        Rules {
            rules,
            global,
            keywords,
            kw_rules,
            always,
            skipped,
            path_only,
        }
    }

    /// Rules that could not be compiled, with the reason.
    pub fn skipped(&self) -> &[SecretsError] {
        &self.skipped
    }

    /// Ids of gitleaks rules ignored because they only match file paths.
    pub fn path_only(&self) -> &[String] {
        &self.path_only
    }

    /// Number of active rules (built-in and loaded).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True if there is no active rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Ids of the active rules.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.id.as_str())
    }

    /// Secrets in `text`, sorted by position, one span per distinct range.
    pub fn find(&self, text: &str) -> Vec<Span> {
        let mut out = Vec::new();
        self.find_filtered(text, true, |_| true, &mut out);
        out
    }

    /// Like [`Rules::find`], but appends the findings to `out` (what `out`
    /// already holds is left alone). Nothing is allocated for a text in
    /// which no keyword occurs and no keyword-less rule matches.
    pub fn find_into(&self, text: &str, out: &mut Vec<Span>) {
        self.find_filtered(text, true, |_| true, out);
    }

    /// Like [`Rules::find_into`]; `keyword` false says no keyword occurs
    /// in `text` (a block prefilter found none), so only the rules without
    /// keywords run.
    pub(crate) fn find_hinted(&self, text: &str, keyword: bool, out: &mut Vec<Span>) {
        self.find_filtered(text, keyword, |_| true, out);
    }

    /// Whether any rule has keywords (else the keyword prefilter is moot).
    pub(crate) fn has_keywords(&self) -> bool {
        self.keywords.is_some()
    }

    /// The start of the first keyword occurrence at or after `from` in
    /// `lower` (an ASCII-lower-cased text).
    pub(crate) fn keyword_find(&self, lower: &[u8], from: usize) -> Option<usize> {
        let kw = self.keywords.as_ref()?;
        kw.first.find(aho_corasick::Input::new(lower).range(from..)).map(|m| m.start())
    }

    /// Like [`Rules::find`] but only runs the rule with id `rule_id`
    /// (keyword prefilter included).
    pub fn find_rule(&self, rule_id: &str, text: &str) -> Vec<Span> {
        let mut out = Vec::new();
        self.find_filtered(text, true, |r| r.id == rule_id, &mut out);
        out
    }

    fn find_filtered(&self, text: &str, keyword: bool, want: impl Fn(&Rule) -> bool, out: &mut Vec<Span>) {
        let from = out.len();
        let mut active: Vec<bool> = Vec::new();
        if let Some(kw) = self.keywords.as_ref().filter(|_| keyword) {
            kw.each(text, |p| {
                if active.is_empty() {
                    active.resize(self.rules.len(), false);
                }
                for &i in &self.kw_rules[p] {
                    active[i] = true;
                }
            });
        }
        if active.is_empty() {
            // No keyword: only the rules without keywords can run.
            for &i in &self.always {
                let rule = &self.rules[i];
                if want(rule) {
                    self.run_rule(rule, text, out);
                }
            }
        } else {
            for &i in &self.always {
                active[i] = true;
            }
            for (rule, _) in self.rules.iter().zip(&active).filter(|(r, a)| **a && want(r)) {
                self.run_rule(rule, text, out);
            }
        }
        if out.len() - from > 1 {
            let tail = &mut out[from..];
            tail.sort();
            let mut w = from + 1;
            for r in from + 1..out.len() {
                if (out[r].start, out[r].end) != (out[w - 1].start, out[w - 1].end) {
                    out.swap(w, r);
                    w += 1;
                }
            }
            out.truncate(w);
        }
    }

    fn run_rule(&self, rule: &Rule, text: &str, out: &mut Vec<Span>) {
        for caps in rule.regex.captures_iter(text) {
            let Some(whole) = caps.get(0) else { continue };
            let secret = match rule.secret_group {
                Some(g) => caps.get(g),
                None => caps.iter().skip(1).flatten().find(|m| !m.is_empty()),
            }
            .unwrap_or(whole);
            let s = secret.as_str();
            if s.is_empty() {
                continue;
            }
            if let Some(min) = rule.entropy {
                if shannon_entropy(s) <= min {
                    continue;
                }
            }
            if let Some(check) = rule.check {
                if !check(s) {
                    continue;
                }
            }
            let line = line_around(text, whole.start(), whole.end());
            let allowed = |a: &Allowlist| a.allows(s, whole.as_str(), line);
            if self.global.iter().any(allowed) || rule.allowlists.iter().any(allowed) {
                continue;
            }
            out.push(Span {
                start: secret.start(),
                end: secret.end(),
                entity: Entity::Secret,
                rule: Some(rule.id.clone()),
            });
        }
    }
}

/// The line(s) holding `start..end`.
fn line_around(text: &str, start: usize, end: usize) -> &str {
    let ls = memchr::memrchr(b'\n', &text.as_bytes()[..start]).map_or(0, |p| p + 1);
    let le = memchr::memchr(b'\n', &text.as_bytes()[end..]).map_or(text.len(), |p| end + p);
    &text[ls..le]
}

#[cfg(test)]
mod tests;
