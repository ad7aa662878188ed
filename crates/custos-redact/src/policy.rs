//! Redaction policy: which detectors run and what happens to each finding.
//!
//! A policy is TOML (format version 1), parsed with `deny_unknown_fields`
//! and validated into [`Policy`]. Every field is optional; an empty file is
//! the [default policy](Policy::default_policy).
//!
//! ```toml
//! version = 1
//!
//! [detect]
//! domains = ["corp.example.com"]   # these and every sub-domain: DOMAIN_NAME
//! hostnames = ["db01"]             # whole-token host names: DOMAIN_NAME
//! any_fqdn = true                  # every name under a public TLD (default)
//! secrets = "builtin"              # "builtin" or "none"
//! gitleaks_rules = "/etc/custos/gitleaks.toml"   # read by the caller
//!
//! [[detect.custom]]
//! name = "PROJECT_CODE"            # printed as the entity name
//! regex = 'PRJ-[0-9]{4}'
//!
//! [[detect.custom]]
//! name = "CUSTOMER"
//! keywords = ["Acme Corp", "Globex"]  # whole words, case-insensitive
//!
//! [operators]                      # per entity; unnamed ones keep the default
//! IP_ADDRESS = "keep"
//! PHONE_NUMBER = { op = "mask", keep = 4 }
//! PROJECT_CODE = "pseudonym"
//!
//! [[override]]                     # first matching override wins, per entity
//! tables = ["auth*"]          # `*` matches any run of characters
//! categories = ["logs"]
//! levels = ["full"]
//! operators = { USER_NAME = "tag" }
//! ```
//!
//! Operators: `keep`, `remove`, `tag` (`<EMAIL_ADDRESS>`), `mask` (keep the
//! last `keep` characters, default 4; values not longer than that are masked
//! whole), `pseudonym` (keyed HMAC, format-preserving for IP, MAC, e-mail,
//! host and user names; see [`crate::pseudonym`]), `drop_field` (the field
//! holding the finding is removed) and `drop_event` (the whole event is
//! dropped).
//!
//! The default policy lets no credit card number, password, secret or
//! e-mail address leave the host: cards, IBANs, SSNs, phone numbers,
//! secrets and URLs with credentials become tags; e-mail, IP and MAC
//! addresses, host/domain names, user names and custom entities become
//! pseudonyms.

use std::collections::BTreeMap;

use custos_model::{Category, Level};
use serde::Deserialize;

use crate::Entity;

/// What a policy file did wrong.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    /// Not TOML, or a field that does not exist or has the wrong type.
    #[error("redaction policy: {0}")]
    Toml(String),
    /// A format version this build does not know.
    #[error("redaction policy: version {0} is not supported (this build reads version 1)")]
    Version(u32),
    /// An operator table names an entity that is neither built in nor custom.
    #[error("redaction policy: unknown entity `{name}` in {place} (known: {known})")]
    UnknownEntity { name: String, place: String, known: String },
    /// An operator name that does not exist.
    #[error("redaction policy: unknown operator `{op}` for {entity} in {place} (keep, remove, tag, mask, pseudonym, drop_field, drop_event)")]
    UnknownOperator { op: String, entity: String, place: String },
    /// `keep` given to an operator other than `mask`.
    #[error("redaction policy: `keep` only applies to the mask operator ({entity} in {place})")]
    KeepWithoutMask { entity: String, place: String },
    /// A custom entity with a bad name, or neither/both of regex and keywords.
    #[error("redaction policy: custom entity `{name}`: {reason}")]
    Custom { name: String, reason: String },
    /// A custom regular expression that does not compile.
    #[error("redaction policy: custom entity `{name}`: regex does not compile: {message}")]
    Regex { name: String, message: String },
    /// An override names an unknown category or level.
    #[error("redaction policy: override {index}: unknown {what} `{value}`")]
    Scope { index: usize, what: &'static str, value: String },
    /// `secrets` is neither `builtin` nor `none`.
    #[error("redaction policy: detect.secrets must be \"builtin\" or \"none\", not {0:?}")]
    Secrets(String),
}

/// What happens to a finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    /// Left as it is.
    Keep,
    /// Deleted.
    Remove,
    /// Replaced by `<ENTITY_NAME>`.
    Tag,
    /// Every character but the last `keep` replaced by `*` (all of them
    /// when the value has no more than `keep` characters).
    Mask {
        /// Characters kept at the end.
        keep: usize,
    },
    /// Replaced by a keyed pseudonym.
    Pseudonym,
    /// The field holding the finding is removed.
    DropField,
    /// The event holding the finding is dropped.
    DropEvent,
}

impl Operator {
    /// The operator's name in policy files.
    pub fn name(self) -> &'static str {
        match self {
            Operator::Keep => "keep",
            Operator::Remove => "remove",
            Operator::Tag => "tag",
            Operator::Mask { .. } => "mask",
            Operator::Pseudonym => "pseudonym",
            Operator::DropField => "drop_field",
            Operator::DropEvent => "drop_event",
        }
    }

    /// How strongly the operator removes data: when two overlapping
    /// findings disagree the stronger one applies.
    pub(crate) fn strength(self) -> u8 {
        match self {
            Operator::Keep => 0,
            Operator::Mask { .. } => 1,
            Operator::Pseudonym => 2,
            Operator::Tag => 3,
            Operator::Remove => 4,
            Operator::DropField => 5,
            Operator::DropEvent => 6,
        }
    }
}

/// Default characters kept by `mask`.
pub const DEFAULT_MASK_KEEP: usize = 4;

// ---- file format --------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    /// Format version; 1.
    version: Option<u32>,
    #[serde(default)]
    detect: DetectFile,
    #[serde(default)]
    operators: BTreeMap<String, OpFile>,
    #[serde(default, rename = "override")]
    overrides: Vec<OverrideFile>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DetectFile {
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default = "yes")]
    any_fqdn: bool,
    secrets: Option<String>,
    gitleaks_rules: Option<String>,
    #[serde(default)]
    custom: Vec<CustomFile>,
}

impl Default for DetectFile {
    fn default() -> Self {
        DetectFile {
            domains: Vec::new(),
            hostnames: Vec::new(),
            any_fqdn: true,
            secrets: None,
            gitleaks_rules: None,
            custom: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomFile {
    name: String,
    regex: Option<String>,
    #[serde(default)]
    keywords: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OpFile {
    Name(String),
    Table { op: String, keep: Option<usize> },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideFile {
    #[serde(default)]
    tables: Vec<String>,
    #[serde(default)]
    categories: Vec<String>,
    #[serde(default)]
    levels: Vec<String>,
    operators: BTreeMap<String, OpFile>,
}

// ---- validated ----------------------------------------------------------

/// A custom detector: a regular expression or a keyword list.
#[derive(Clone, Debug)]
pub struct CustomEntity {
    /// The entity name printed for its findings (`[A-Z][A-Z0-9_]*`).
    pub name: String,
    /// What it matches.
    pub matcher: CustomMatcher,
}

/// How a custom entity matches.
#[derive(Clone, Debug)]
pub enum CustomMatcher {
    /// Every match of the expression (Rust `regex` syntax).
    Regex(regex::Regex),
    /// These words, whole-word and case-insensitive.
    Keywords(Vec<String>),
}

/// Which findings a scope applies to.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Table name patterns (`*` wildcard); empty: any table.
    pub tables: Vec<String>,
    /// Categories; empty: any.
    pub categories: Vec<Category>,
    /// Levels; empty: any.
    pub levels: Vec<Level>,
}

impl Scope {
    fn matches(&self, table: &str, category: Category, level: Level) -> bool {
        (self.tables.is_empty() || self.tables.iter().any(|p| glob(p, table)))
            && (self.categories.is_empty() || self.categories.contains(&category))
            && (self.levels.is_empty() || self.levels.contains(&level))
    }
}

/// `*` matches any run of characters; everything else literally.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// One `[[override]]`: operators for findings in a scope.
#[derive(Clone, Debug)]
pub struct Override {
    /// Where it applies.
    pub scope: Scope,
    /// Operator per entity slot (see [`Policy::slot`]); `None`: not set here.
    ops: Vec<Option<Operator>>,
}

/// A validated redaction policy.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Domains whose names (and sub-domains) are DOMAIN_NAME findings.
    pub domains: Vec<String>,
    /// Host names matched as whole tokens.
    pub hostnames: Vec<String>,
    /// Report every name under a public top-level domain (default true).
    pub any_fqdn: bool,
    /// Run the built-in secret rules.
    pub builtin_secrets: bool,
    /// A gitleaks TOML rule file the caller should read and pass to
    /// [`crate::Redactor::new`].
    pub gitleaks_rules: Option<String>,
    /// Custom detectors, in file order.
    pub custom: Vec<CustomEntity>,
    /// Default operator per slot: built-in entities in [`Entity::BUILTIN`]
    /// order, then the custom entities.
    defaults: Vec<Operator>,
    /// Overrides in file order.
    overrides: Vec<Override>,
}

fn default_op(e: Entity) -> Operator {
    match e {
        Entity::EmailAddress
        | Entity::IpAddress
        | Entity::MacAddress
        | Entity::DomainName
        | Entity::UserName
        | Entity::Custom => Operator::Pseudonym,
        Entity::CreditCard
        | Entity::IbanCode
        | Entity::UsSsn
        | Entity::PhoneNumber
        | Entity::Url
        | Entity::Secret => Operator::Tag,
    }
}

fn custom_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('A'..='Z'))
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 64
}

impl Default for Policy {
    fn default() -> Self {
        Self::default_policy()
    }
}

impl Policy {
    /// The default policy (see the module documentation).
    pub fn default_policy() -> Policy {
        // Invariant: an empty file is valid (covered by tests).
        Policy::from_file(PolicyFile::default()).expect("the empty policy is valid")
    }

    /// Parses and validates a policy file.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Toml(e.to_string()))?;
        Policy::from_file(file)
    }

    fn from_file(file: PolicyFile) -> Result<Policy, PolicyError> {
        if let Some(v) = file.version {
            if v != 1 {
                return Err(PolicyError::Version(v));
            }
        }
        let builtin_secrets = match file.detect.secrets.as_deref() {
            None | Some("builtin") => true,
            Some("none") => false,
            Some(other) => return Err(PolicyError::Secrets(other.to_string())),
        };
        let mut custom = Vec::new();
        for c in file.detect.custom {
            if !custom_name_ok(&c.name) {
                return Err(PolicyError::Custom {
                    name: c.name,
                    reason: "the name must be upper case letters, digits and `_`, starting with a letter".into(),
                });
            }
            if Entity::from_name(&c.name).is_some() || custom.iter().any(|o: &CustomEntity| o.name == c.name) {
                return Err(PolicyError::Custom { name: c.name, reason: "the name is already taken".into() });
            }
            let matcher = match (c.regex, c.keywords.is_empty()) {
                (Some(re), true) => {
                    let regex = regex::RegexBuilder::new(&re)
                        .size_limit(16 << 20)
                        .build()
                        .map_err(|e| PolicyError::Regex { name: c.name.clone(), message: e.to_string() })?;
                    if regex.is_match("") {
                        return Err(PolicyError::Custom { name: c.name, reason: "the regex matches the empty string".into() });
                    }
                    CustomMatcher::Regex(regex)
                }
                (None, false) => {
                    if c.keywords.iter().any(|k| k.trim().is_empty()) {
                        return Err(PolicyError::Custom { name: c.name, reason: "a keyword is empty".into() });
                    }
                    CustomMatcher::Keywords(c.keywords)
                }
                (Some(_), false) => {
                    return Err(PolicyError::Custom { name: c.name, reason: "give either regex or keywords, not both".into() })
                }
                (None, true) => {
                    return Err(PolicyError::Custom { name: c.name, reason: "give a regex or keywords".into() })
                }
            };
            custom.push(CustomEntity { name: c.name, matcher });
        }
        let mut policy = Policy {
            domains: file.detect.domains.iter().map(|d| d.trim_matches('.').to_ascii_lowercase()).collect(),
            hostnames: file.detect.hostnames.iter().map(|h| h.to_ascii_lowercase()).collect(),
            any_fqdn: file.detect.any_fqdn,
            builtin_secrets,
            gitleaks_rules: file.detect.gitleaks_rules,
            defaults: Vec::new(),
            overrides: Vec::new(),
            custom,
        };
        policy.defaults = Entity::BUILTIN
            .iter()
            .map(|&e| default_op(e))
            .chain(policy.custom.iter().map(|_| default_op(Entity::Custom)))
            .collect();
        for (name, op) in &file.operators {
            let slot = policy.slot_named(name, "[operators]")?;
            policy.defaults[slot] = parse_op(op, name, "[operators]")?;
        }
        for (index, o) in file.overrides.iter().enumerate() {
            let place = format!("override {}", index + 1);
            let mut ops = vec![None; policy.defaults.len()];
            for (name, op) in &o.operators {
                let slot = policy.slot_named(name, &place)?;
                ops[slot] = Some(parse_op(op, name, &place)?);
            }
            let categories = o
                .categories
                .iter()
                .map(|c| {
                    Category::ALL.into_iter().find(|k| k.name() == c).ok_or_else(|| PolicyError::Scope {
                        index: index + 1,
                        what: "category",
                        value: c.clone(),
                    })
                })
                .collect::<Result<_, _>>()?;
            let levels = o
                .levels
                .iter()
                .map(|l| {
                    Level::ALL.into_iter().find(|k| k.name() == l).ok_or_else(|| PolicyError::Scope {
                        index: index + 1,
                        what: "level",
                        value: l.clone(),
                    })
                })
                .collect::<Result<_, _>>()?;
            policy.overrides.push(Override {
                scope: Scope { tables: o.tables.clone(), categories, levels },
                ops,
            });
        }
        Ok(policy)
    }

    fn slot_named(&self, name: &str, place: &str) -> Result<usize, PolicyError> {
        if let Some(e) = Entity::from_name(name).filter(|e| *e != Entity::Custom) {
            return Ok(e.index());
        }
        if let Some(i) = self.custom.iter().position(|c| c.name == name) {
            return Ok(Entity::BUILTIN.len() + i);
        }
        let known: Vec<&str> = Entity::BUILTIN
            .iter()
            .map(|e| e.name())
            .chain(self.custom.iter().map(|c| c.name.as_str()))
            .collect();
        Err(PolicyError::UnknownEntity { name: name.to_string(), place: place.to_string(), known: known.join(", ") })
    }

    /// Number of operator slots: built-in entities, then custom ones.
    pub fn slots(&self) -> usize {
        self.defaults.len()
    }

    /// The slot of a finding: its built-in entity, or for a custom
    /// finding the position of its custom entity after the built-ins.
    pub fn slot(&self, entity: Entity, rule: Option<&str>) -> Option<usize> {
        match entity {
            Entity::Custom => {
                let name = rule?;
                self.custom.iter().position(|c| c.name == name).map(|i| Entity::BUILTIN.len() + i)
            }
            e => Some(e.index()),
        }
    }

    /// The operator for each slot in a scope: the first override matching
    /// the scope that sets the slot, else the default.
    pub fn operators_for(&self, table: &str, category: Category, level: Level) -> Vec<Operator> {
        let mut ops = self.defaults.clone();
        let mut set = vec![false; ops.len()];
        for o in self.overrides.iter().filter(|o| o.scope.matches(table, category, level)) {
            for (slot, op) in o.ops.iter().enumerate() {
                if let (Some(op), false) = (op, set[slot]) {
                    ops[slot] = *op;
                    set[slot] = true;
                }
            }
        }
        ops
    }

    /// Whether the slot's operator is `keep` in every scope (its detector
    /// need not run).
    pub fn always_kept(&self, slot: usize) -> bool {
        self.defaults[slot] == Operator::Keep
            && self.overrides.iter().all(|o| matches!(o.ops[slot], None | Some(Operator::Keep)))
    }

    /// Whether any scope pseudonymizes anything (a key is then needed).
    pub fn uses_pseudonyms(&self) -> bool {
        self.defaults.contains(&Operator::Pseudonym)
            || self.overrides.iter().any(|o| o.ops.contains(&Some(Operator::Pseudonym)))
    }

    /// The name of a slot (entity or custom entity name).
    pub fn slot_name(&self, slot: usize) -> &str {
        match Entity::BUILTIN.get(slot) {
            Some(e) => e.name(),
            None => &self.custom[slot - Entity::BUILTIN.len()].name,
        }
    }
}

fn parse_op(op: &OpFile, entity: &str, place: &str) -> Result<Operator, PolicyError> {
    let (name, keep) = match op {
        OpFile::Name(n) => (n.as_str(), None),
        OpFile::Table { op, keep } => (op.as_str(), *keep),
    };
    let op = match name {
        "keep" => Operator::Keep,
        "remove" => Operator::Remove,
        "tag" => Operator::Tag,
        "mask" => Operator::Mask { keep: keep.unwrap_or(DEFAULT_MASK_KEEP) },
        "pseudonym" => Operator::Pseudonym,
        "drop_field" => Operator::DropField,
        "drop_event" => Operator::DropEvent,
        other => {
            return Err(PolicyError::UnknownOperator {
                op: other.to_string(),
                entity: entity.to_string(),
                place: place.to_string(),
            })
        }
    };
    if keep.is_some() && !matches!(op, Operator::Mask { .. }) {
        return Err(PolicyError::KeepWithoutMask { entity: entity.to_string(), place: place.to_string() });
    }
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(p: &Policy, table: &str, c: Category, l: Level, e: Entity) -> Operator {
        p.operators_for(table, c, l)[e.index()]
    }

    #[test]
    fn default_policy_lets_no_card_secret_or_email_leave() {
        let p = Policy::default_policy();
        for e in [Entity::CreditCard, Entity::Secret, Entity::Url] {
            assert_eq!(op(&p, "syslog", Category::Logs, Level::Full, e), Operator::Tag);
        }
        assert_eq!(op(&p, "syslog", Category::Logs, Level::Full, Entity::EmailAddress), Operator::Pseudonym);
        assert!(p.builtin_secrets);
        assert!(Entity::BUILTIN.iter().all(|e| !p.always_kept(e.index())));
    }

    #[test]
    fn overrides_apply_in_their_scope_first_match_wins() {
        let p = Policy::from_toml(
            r#"
            version = 1
            [operators]
            IP_ADDRESS = "keep"
            PHONE_NUMBER = { op = "mask", keep = 2 }
            [[override]]
            tables = ["auth*"]
            levels = ["full"]
            operators = { IP_ADDRESS = "tag" }
            [[override]]
            categories = ["logs"]
            operators = { IP_ADDRESS = "remove", USER_NAME = "drop_event" }
            "#,
        )
        .unwrap();
        assert_eq!(op(&p, "auth", Category::Logs, Level::Full, Entity::IpAddress), Operator::Tag);
        assert_eq!(op(&p, "auth_x", Category::Logs, Level::Enhanced, Entity::IpAddress), Operator::Remove);
        assert_eq!(op(&p, "perf_cpu", Category::Performance, Level::Full, Entity::IpAddress), Operator::Keep);
        assert_eq!(op(&p, "syslog", Category::Logs, Level::Full, Entity::UserName), Operator::DropEvent);
        assert_eq!(op(&p, "syslog", Category::Logs, Level::Full, Entity::PhoneNumber), Operator::Mask { keep: 2 });
        assert!(!p.always_kept(Entity::IpAddress.index()));
    }

    #[test]
    fn custom_entities_get_slots_and_operators() {
        let p = Policy::from_toml(
            r#"
            [[detect.custom]]
            name = "PROJECT_CODE"
            regex = 'PRJ-[0-9]{4}'
            [[detect.custom]]
            name = "CUSTOMER"
            keywords = ["Acme Corp"]
            [operators]
            CUSTOMER = "tag"
            "#,
        )
        .unwrap();
        let s = p.slot(Entity::Custom, Some("CUSTOMER")).unwrap();
        assert_eq!(p.slot_name(s), "CUSTOMER");
        let ops = p.operators_for("t", Category::Logs, Level::Full);
        assert_eq!(ops[s], Operator::Tag);
        assert_eq!(ops[p.slot(Entity::Custom, Some("PROJECT_CODE")).unwrap()], Operator::Pseudonym);
    }

    #[test]
    fn bad_policies_are_refused_with_a_clear_error() {
        let cases = [
            ("version = 2", "version 2"),
            ("colour = 1", "unknown field"),
            ("[operators]\nEMAIL = \"tag\"", "unknown entity `EMAIL`"),
            ("[operators]\nEMAIL_ADDRESS = \"shred\"", "unknown operator `shred`"),
            ("[operators]\nEMAIL_ADDRESS = { op = \"tag\", keep = 3 }", "only applies to the mask"),
            ("[[detect.custom]]\nname = \"x\"\nregex = 'a'", "upper case"),
            ("[[detect.custom]]\nname = \"X\"\nregex = '('", "does not compile"),
            ("[[detect.custom]]\nname = \"X\"\nregex = 'a*'", "empty string"),
            ("[[detect.custom]]\nname = \"X\"", "give a regex or keywords"),
            ("[[detect.custom]]\nname = \"EMAIL_ADDRESS\"\nkeywords = ['a']", "already taken"),
            ("[[override]]\nlevels = [\"loud\"]\noperators = {}", "unknown level `loud`"),
            ("[detect]\nsecrets = \"all\"", "builtin"),
        ];
        for (text, want) in cases {
            let err = Policy::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn the_example_policy_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/redact-policy.toml");
        let p = Policy::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(p.custom.len(), 2);
        assert_eq!(op(&p, "auth_log", Category::Logs, Level::Full, Entity::UserName), Operator::Tag);
        assert_eq!(op(&p, "syslog", Category::Logs, Level::Full, Entity::UserName), Operator::Pseudonym);
        assert_eq!(op(&p, "crashes", Category::Crash, Level::Full, Entity::Secret), Operator::DropEvent);
    }

    #[test]
    fn glob_matches_stars() {
        assert!(glob("logs.*", "logs.syslog"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxc"));
        assert!(!glob("logs", "syslog"));
        assert!(!glob("ab*ba", "aba"));
    }
}
