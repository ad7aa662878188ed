//! The redactor: detectors and a policy put together.
//!
//! [`Redactor`] is built once from a [`Policy`] (immutable, `Send + Sync`,
//! shared behind an `Arc`); each thread or task redacts through its own
//! [`Session`], which keeps a cache of pseudonyms, the counts of what was
//! found, and the pseudonym-map entries not yet handed to the caller.
//!
//! For one piece of text:
//!
//! 1. every enabled detector runs (PII, secret rules, custom keywords and
//!    regexes); detectors whose entity the policy keeps in every scope do
//!    not run at all;
//! 2. overlapping findings are resolved: the longest wins, ties go to the
//!    entity listed first in [`Entity::BUILTIN`];
//! 3. findings that already are our own output (a tag, a pseudonym, see
//!    [`crate::pseudonym::is_pseudonym`]) are dropped, so redacting twice
//!    changes nothing;
//! 4. the operator of each finding is looked up for the event's table,
//!    category and level; the strongest one decides for the field:
//!    `drop_event` drops the event, `drop_field` the field; otherwise each
//!    finding is rewritten in place.
//!
//! Text without findings is returned borrowed: no allocation, no copy.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use custos_model::{Category, Event, Level, Value};
use serde::Serialize;

use crate::pii::{Detector, HostNames, Masks, PII_ENTITIES};
use crate::policy::{CustomMatcher, Operator, Policy};
use crate::prefilter::{LineHints, Mark};
use crate::pseudonym::{is_pseudonym, PseudonymKey, Pseudonymizer};
use crate::secrets::{Rules, SecretsError};
use crate::{Entity, Span};

/// Why a redactor could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    /// The policy pseudonymizes but no key was given.
    #[error("the redaction policy uses pseudonyms but no pseudonym key was given")]
    NoKey,
    /// The gitleaks rule file named by the policy is not usable.
    #[error("gitleaks rules: {0}")]
    Secrets(#[from] SecretsError),
}

/// Where a piece of text comes from; selects the policy's overrides.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The destination table.
    pub table: &'a str,
    /// The event's category.
    pub category: Category,
    /// The event's consent level.
    pub level: Level,
}

impl<'a> Context<'a> {
    /// The context of an event.
    pub fn of(event: &'a Event) -> Self {
        Context { table: event.table.as_str(), category: event.category, level: event.level }
    }
}

/// The result of redacting one field.
#[derive(Debug, PartialEq, Eq)]
pub enum Redacted<'a> {
    /// The (possibly rewritten) text.
    Text(Cow<'a, str>),
    /// The policy removes the whole field.
    DropField,
    /// The policy drops the whole event.
    DropEvent,
}

/// What a session found and did, since it was last taken.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Findings that were not kept, by entity name.
    pub redacted: BTreeMap<String, u64>,
    /// Fields removed by `drop_field`.
    pub fields_dropped: u64,
    /// Events dropped by `drop_event`.
    pub events_dropped: u64,
    /// Pseudonym-map entries `(token, original)` made since the last take.
    #[serde(skip)]
    pub new_pseudonyms: Vec<(String, String)>,
}

impl Outcome {
    /// Total findings not kept.
    pub fn total(&self) -> u64 {
        self.redacted.values().sum()
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: Outcome) {
        for (k, v) in other.redacted {
            *self.redacted.entry(k).or_default() += v;
        }
        self.fields_dropped += other.fields_dropped;
        self.events_dropped += other.events_dropped;
        self.new_pseudonyms.extend(other.new_pseudonyms);
    }
}

#[derive(Debug)]
enum Custom {
    Regex(regex::Regex),
    Keywords(AhoCorasick),
}

/// Detectors and policy, built once.
#[derive(Debug)]
pub struct Redactor {
    policy: Policy,
    pii: Detector,
    pii_on: bool,
    secrets: Option<Rules>,
    custom: Vec<(String, Custom)>,
    pseudo: Option<Pseudonymizer>,
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

impl Redactor {
    /// Builds the detectors the policy needs. `gitleaks` is the text of
    /// the policy's `gitleaks_rules` file, read by the caller; `key` is the
    /// pseudonym key, needed when the policy pseudonymizes.
    pub fn new(policy: Policy, gitleaks: Option<&str>, key: Option<&PseudonymKey>) -> Result<Redactor, RedactError> {
        Self::build(policy, gitleaks, key, false)
    }

    /// Like [`Redactor::new`], but every detector runs whatever the
    /// operators say (for `custos redact --spans` and measurements).
    pub fn detect_all(policy: Policy, gitleaks: Option<&str>, key: Option<&PseudonymKey>) -> Result<Redactor, RedactError> {
        Self::build(policy, gitleaks, key, true)
    }

    fn build(policy: Policy, gitleaks: Option<&str>, key: Option<&PseudonymKey>, all: bool) -> Result<Redactor, RedactError> {
        let wanted = |e: Entity| all || !policy.always_kept(e.index());
        let mut entities: Vec<Entity> = PII_ENTITIES.iter().copied().filter(|&e| wanted(e)).collect();
        let hosts = HostNames {
            domains: policy.domains.clone(),
            hostnames: policy.hostnames.clone(),
            any_fqdn: policy.any_fqdn,
        };
        let has_hosts = !hosts.domains.is_empty() || !hosts.hostnames.is_empty() || hosts.any_fqdn;
        if has_hosts && wanted(Entity::DomainName) && !entities.contains(&Entity::DomainName) {
            entities.push(Entity::DomainName);
        }
        let pii_on = !entities.is_empty();
        let pii = Detector::with_config(&entities, &hosts);
        let secrets = if wanted(Entity::Secret) {
            match (policy.builtin_secrets, gitleaks) {
                (true, Some(t)) => Some(Rules::from_gitleaks_toml(t)?),
                (false, Some(t)) => Some(Rules::gitleaks_only(t)?),
                (true, None) => Some(Rules::builtin()),
                (false, None) => None,
            }
        } else {
            None
        };
        let mut custom = Vec::new();
        for (i, c) in policy.custom.iter().enumerate() {
            if !all && policy.always_kept(Entity::BUILTIN.len() + i) {
                continue;
            }
            let m = match &c.matcher {
                CustomMatcher::Regex(r) => Custom::Regex(r.clone()),
                CustomMatcher::Keywords(k) => Custom::Keywords(
                    AhoCorasickBuilder::new()
                        .ascii_case_insensitive(true)
                        .match_kind(MatchKind::LeftmostLongest)
                        .build(k)
                        // Invariant: a few literal keywords (validated
                        // non-empty) always fit the automaton's limits.
                        .expect("keyword automaton builds"),
                ),
            };
            custom.push((c.name.clone(), m));
        }
        let pseudo = match key {
            Some(k) => Some(Pseudonymizer::new(k)),
            // Detection alone never makes a pseudonym.
            None if policy.uses_pseudonyms() && !all => return Err(RedactError::NoKey),
            None => None,
        };
        Ok(Redactor { policy, pii, pii_on, secrets, custom, pseudo })
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Every finding in `text`, resolved (sorted, non-overlapping) and
    /// without our own tags and pseudonyms.
    pub fn find(&self, text: &str) -> Vec<Span> {
        let mut spans = Vec::new();
        self.find_into(text, &mut spans);
        spans
    }

    /// Like [`Redactor::find`], into `spans` (cleared first): a caller
    /// that reuses one `Vec` across texts allocates nothing for a text
    /// without findings.
    pub fn find_into(&self, text: &str, spans: &mut Vec<Span>) {
        self.find_hinted(text, LineHints::UNKNOWN, spans);
    }

    /// Like [`Redactor::find_into`], with what a block prefilter learned
    /// about `text` ([`crate::LinePrefilter`]).
    pub fn find_hinted(&self, text: &str, hints: LineHints, spans: &mut Vec<Span>) {
        Masks::with_local(|masks| self.find_with(text, hints, spans, masks));
    }

    fn find_with(&self, text: &str, hints: LineHints, spans: &mut Vec<Span>, masks: &mut Masks) {
        spans.clear();
        if self.pii_on {
            self.pii.find_hinted(text, hints, spans, masks);
        }
        let before = spans.len();
        if let Some(r) = &self.secrets {
            r.find_hinted(text, hints.may(LineHints::SECRET), spans);
        }
        for (name, c) in &self.custom {
            let mut push = |start, end| {
                spans.push(Span { start, end, entity: Entity::Custom, rule: Some(name.clone()) })
            };
            match c {
                Custom::Regex(r) => r.find_iter(text).filter(|m| !m.is_empty()).for_each(|m| push(m.start(), m.end())),
                Custom::Keywords(ac) => {
                    let b = text.as_bytes();
                    for m in ac.find_iter(text) {
                        let left = m.start() == 0 || !is_word(b[m.start() - 1]);
                        let right = m.end() == b.len() || !is_word(b[m.end()]);
                        if left && right {
                            push(m.start(), m.end());
                        }
                    }
                }
            }
        }
        if spans.len() != before {
            crate::pii::resolve_tail(spans, 0);
        }
        spans.retain(|s| !is_pseudonym(s.entity, &text[s.start..s.end]));
    }
}

impl Redactor {
    /// Hands `mark(bit, find)` a search for each trigger of an enabled
    /// detector that needs more than a byte search: secret keywords and
    /// user-name contexts (in `lower`, a lower-cased copy of `block` made
    /// here), cron's `) CMD ` (see [`crate::LinePrefilter::scan`]). `find(from)`
    /// is the first occurrence at or after `from`.
    pub(crate) fn block_triggers(
        &self,
        block: &[u8],
        lower: &mut Vec<u8>,
        mark: &mut Mark<'_>,
    ) {
        let secrets = self.secrets.as_ref().filter(|r| r.has_keywords());
        let users = self.pii_on && self.pii.users_on();
        if users {
            mark(LineHints::CRON, &mut |from| self.pii.cron_find(block, from));
        }
        if secrets.is_none() && !users {
            return;
        }
        lower.clear();
        lower.extend(block.iter().map(u8::to_ascii_lowercase));
        if let Some(r) = secrets {
            mark(LineHints::SECRET, &mut |from| r.keyword_find(lower, from));
        }
        if users {
            mark(LineHints::USER, &mut |from| self.pii.user_context_find(lower, from));
        }
    }
}

/// Entries in the pseudonym cache before it is cleared.
const CACHE_LIMIT: usize = 1 << 16;

/// One thread's or task's redaction state.
#[derive(Debug)]
pub struct Session {
    r: Arc<Redactor>,
    counts: Vec<u64>,
    outcome: Outcome,
    /// Pseudonyms made, per policy slot (original → pseudonym).
    cache: Vec<HashMap<String, String>>,
    cached: usize,
    scope: Option<(String, Category, Level, Vec<Operator>)>,
    /// Scratch: the findings of the text being redacted.
    spans: Vec<Span>,
    /// Scratch: each finding's operator and policy slot.
    ops_buf: Vec<(Operator, usize)>,
    /// Scratch: the PII scanners' start positions.
    masks: Masks,
}

/// What [`Session::redact_to`] decided for one text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to change: the text stays as it is (nothing was written).
    Unchanged,
    /// The rewritten text was appended to the output.
    Rewritten,
    /// The policy removes the whole field.
    DropField,
    /// The policy drops the whole event.
    DropEvent,
}

impl Session {
    /// A session over a shared redactor.
    pub fn new(r: Arc<Redactor>) -> Self {
        let counts = vec![0; r.policy.slots()];
        Session {
            r,
            counts,
            outcome: Outcome::default(),
            cache: Vec::new(),
            cached: 0,
            scope: None,
            spans: Vec::new(),
            ops_buf: Vec::new(),
            masks: Masks::default(),
        }
    }

    /// The redactor.
    pub fn redactor(&self) -> &Redactor {
        &self.r
    }

    /// What was found and done since the last call; resets the counts.
    pub fn take_outcome(&mut self) -> Outcome {
        let mut o = std::mem::take(&mut self.outcome);
        for (slot, n) in self.counts.iter_mut().enumerate() {
            if *n > 0 {
                *o.redacted.entry(self.r.policy.slot_name(slot).to_string()).or_default() += *n;
                *n = 0;
            }
        }
        o
    }

    fn ops(&mut self, ctx: &Context) -> &[Operator] {
        let hit = matches!(&self.scope, Some((t, c, l, _)) if t == ctx.table && *c == ctx.category && *l == ctx.level);
        if !hit {
            let ops = self.r.policy.operators_for(ctx.table, ctx.category, ctx.level);
            self.scope = Some((ctx.table.to_string(), ctx.category, ctx.level, ops));
        }
        match &self.scope {
            Some((_, _, _, ops)) => ops,
            None => &[],
        }
    }

    /// Redacts one field's text.
    pub fn redact_str<'a>(&mut self, text: &'a str, ctx: &Context) -> Redacted<'a> {
        let mut out = String::new();
        match self.redact_to(text, ctx, &mut out) {
            Verdict::Unchanged => Redacted::Text(Cow::Borrowed(text)),
            Verdict::Rewritten => Redacted::Text(Cow::Owned(out)),
            Verdict::DropField => Redacted::DropField,
            Verdict::DropEvent => Redacted::DropEvent,
        }
    }

    /// Redacts one field's text, appending the rewritten text to `out`
    /// when (and only when) the verdict is [`Verdict::Rewritten`]: a
    /// caller that reuses `out` allocates nothing per text, and one whose
    /// text is unchanged can keep (or write) the original as it is.
    pub fn redact_to(&mut self, text: &str, ctx: &Context, out: &mut String) -> Verdict {
        self.redact_hinted(text, LineHints::UNKNOWN, ctx, out)
    }

    /// Like [`Session::redact_to`], with what a block prefilter learned
    /// about `text` ([`crate::LinePrefilter`]): the same result, less work.
    pub fn redact_hinted(&mut self, text: &str, hints: LineHints, ctx: &Context, out: &mut String) -> Verdict {
        let mut spans = std::mem::take(&mut self.spans);
        self.r.find_with(text, hints, &mut spans, &mut self.masks);
        let verdict = self.apply(text, ctx, &spans, out);
        self.spans = spans;
        verdict
    }

    fn apply(&mut self, text: &str, ctx: &Context, spans: &[Span], out: &mut String) -> Verdict {
        if spans.is_empty() {
            return Verdict::Unchanged;
        }
        let mut ops = std::mem::take(&mut self.ops_buf);
        ops.clear();
        {
            let r = Arc::clone(&self.r);
            let table = self.ops(ctx);
            ops.extend(spans.iter().map(|s| match r.policy.slot(s.entity, s.rule.as_deref()) {
                Some(i) => (table[i], i),
                // A custom span whose entity is not in the policy cannot
                // occur (custom detectors come from the policy); redact it
                // as a secret to be safe.
                None => (Operator::Tag, Entity::Secret.index()),
            }));
        }
        for &(op, slot) in &ops {
            if op != Operator::Keep {
                self.counts[slot] += 1;
            }
        }
        let strongest = ops.iter().map(|(op, _)| *op).max_by_key(|op| op.strength()).unwrap_or(Operator::Keep);
        let verdict = match strongest {
            Operator::DropEvent => Verdict::DropEvent,
            Operator::DropField => Verdict::DropField,
            Operator::Keep => Verdict::Unchanged,
            _ => Verdict::Rewritten,
        };
        if verdict == Verdict::Rewritten {
            out.reserve(text.len());
            let mut at = 0;
            for (s, &(op, slot)) in spans.iter().zip(&ops) {
                out.push_str(&text[at..s.start]);
                let value = &text[s.start..s.end];
                match op {
                    Operator::Keep => out.push_str(value),
                    Operator::Remove => {}
                    Operator::Tag => {
                        out.push('<');
                        out.push_str(s.entity_name());
                        out.push('>');
                    }
                    Operator::Mask { keep } => {
                        let n = value.chars().count();
                        let kept = if n > keep { keep } else { 0 };
                        out.extend(std::iter::repeat_n('*', n - kept));
                        out.extend(value.chars().skip(n - kept));
                    }
                    Operator::Pseudonym => self.pseudonym_into(slot, s, value, out),
                    Operator::DropField | Operator::DropEvent => {}
                }
                at = s.end;
            }
            out.push_str(&text[at..]);
        }
        self.ops_buf = ops;
        verdict
    }

    fn pseudonym_into(&mut self, slot: usize, s: &Span, value: &str, out: &mut String) {
        if let Some(t) = self.cache.get(slot).and_then(|m| m.get(value)) {
            out.push_str(t);
            return;
        }
        let Some(p) = &self.r.pseudo else {
            // Redactor::build refuses a pseudonymizing policy without a key.
            out.push('<');
            out.push_str(s.entity_name());
            out.push('>');
            return;
        };
        let made = p.pseudonym(s.entity, s.entity_name(), value);
        if self.cached >= CACHE_LIMIT {
            self.cache.iter_mut().for_each(HashMap::clear);
            self.cached = 0;
        }
        out.push_str(&made.text);
        if self.cache.len() <= slot {
            self.cache.resize_with(slot + 1, HashMap::new);
        }
        self.cache[slot].insert(value.to_string(), made.text);
        self.cached += 1;
        self.outcome.new_pseudonyms.extend(made.entries);
    }

    /// Redacts an event in place: the message, the host and every string
    /// attribute (and integer attributes long enough to be a card or phone
    /// number). Returns `false` when the policy drops the event.
    pub fn redact_event(&mut self, ev: &mut Event) -> bool {
        // Borrows only the `table` field, so the others can be rewritten
        // below without copying the table name for every event.
        let ctx = Context { table: ev.table.as_str(), category: ev.category, level: ev.level };
        match self.redact_str(&ev.message, &ctx) {
            Redacted::Text(Cow::Borrowed(_)) => {}
            Redacted::Text(Cow::Owned(s)) => ev.message = s,
            Redacted::DropField => {
                ev.message.clear();
                self.outcome.fields_dropped += 1;
            }
            Redacted::DropEvent => return self.dropped(),
        }
        match self.redact_str(&ev.host, &ctx) {
            Redacted::Text(Cow::Borrowed(_)) => {}
            Redacted::Text(Cow::Owned(s)) => ev.host = s,
            Redacted::DropField => {
                ev.host = format!("<{}>", Entity::DomainName.name());
                self.outcome.fields_dropped += 1;
            }
            Redacted::DropEvent => return self.dropped(),
        }
        let mut drop = Vec::new();
        for (k, v) in ev.attrs.iter_mut() {
            let owned;
            let text: &str = match v {
                Value::Str(s) => s,
                Value::Int(i) if i.unsigned_abs() >= 100_000_000 => {
                    owned = i.to_string();
                    &owned
                }
                _ => continue,
            };
            match self.redact_str(text, &ctx) {
                Redacted::Text(Cow::Borrowed(_)) => {}
                Redacted::Text(Cow::Owned(s)) => *v = Value::Str(s),
                Redacted::DropField => drop.push(k.clone()),
                Redacted::DropEvent => return self.dropped(),
            }
        }
        for k in drop {
            ev.attrs.remove(&k);
            self.outcome.fields_dropped += 1;
        }
        true
    }

    fn dropped(&mut self) -> bool {
        self.outcome.events_dropped += 1;
        false
    }

    /// Redacts every string (and long integer) in a JSON value; keys are
    /// left alone. Returns `false` when the policy drops the event.
    pub fn redact_json(&mut self, v: &mut serde_json::Value, ctx: &Context) -> bool {
        match self.json(v, ctx) {
            JsonVerdict::Keep => true,
            JsonVerdict::DropField => {
                // The whole value is one field.
                *v = serde_json::Value::Null;
                self.outcome.fields_dropped += 1;
                true
            }
            JsonVerdict::DropEvent => self.dropped(),
        }
    }

    fn json(&mut self, v: &mut serde_json::Value, ctx: &Context) -> JsonVerdict {
        use serde_json::Value as J;
        let redacted = match v {
            J::String(s) => match self.redact_str(s, ctx) {
                Redacted::Text(Cow::Borrowed(_)) => return JsonVerdict::Keep,
                Redacted::Text(Cow::Owned(n)) => n,
                Redacted::DropField => return JsonVerdict::DropField,
                Redacted::DropEvent => return JsonVerdict::DropEvent,
            },
            J::Number(n) if n.as_i64().is_none_or(|i| i.unsigned_abs() >= 100_000_000) => {
                let s = n.to_string();
                match self.redact_str(&s, ctx) {
                    Redacted::Text(Cow::Borrowed(_)) => return JsonVerdict::Keep,
                    Redacted::Text(Cow::Owned(n)) => n,
                    Redacted::DropField => return JsonVerdict::DropField,
                    Redacted::DropEvent => return JsonVerdict::DropEvent,
                }
            }
            J::Array(items) => {
                let mut i = 0;
                while i < items.len() {
                    match self.json(&mut items[i], ctx) {
                        JsonVerdict::Keep => i += 1,
                        JsonVerdict::DropField => {
                            items.remove(i);
                            self.outcome.fields_dropped += 1;
                        }
                        JsonVerdict::DropEvent => return JsonVerdict::DropEvent,
                    }
                }
                return JsonVerdict::Keep;
            }
            J::Object(map) => {
                let mut gone = Vec::new();
                for (k, item) in map.iter_mut() {
                    match self.json(item, ctx) {
                        JsonVerdict::Keep => {}
                        JsonVerdict::DropField => gone.push(k.clone()),
                        JsonVerdict::DropEvent => return JsonVerdict::DropEvent,
                    }
                }
                for k in gone {
                    map.remove(&k);
                    self.outcome.fields_dropped += 1;
                }
                return JsonVerdict::Keep;
            }
            _ => return JsonVerdict::Keep,
        };
        *v = J::String(redacted);
        JsonVerdict::Keep
    }
}

enum JsonVerdict {
    Keep,
    DropField,
    DropEvent,
}

#[cfg(test)]
mod tests;
