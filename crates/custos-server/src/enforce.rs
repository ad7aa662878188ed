//! Server-side enforcement of the consent level and the workspace's policy:
//! a pure function over a batch's events, the telemetry registry and the
//! workspace's [`WorkspacePolicy`]. No I/O; `ingest` calls it once per
//! batch, before anything of the batch is written.
//!
//! For every event, in this order:
//!
//! 1. **schema**: the event must match the registry
//!    ([`Registry::check_event`]: declared table or a log line in a log
//!    table, the table's category, declared fields of the declared types;
//!    both steps run as one [`Registry::assess`]).
//! 2. **effective level** = max(the level the agent declared,
//!    [`Registry::min_level`]): an agent cannot lower a level by declaring
//!    less (a log line at severity info declared level 2 is level 3).
//! 3. **category**: the workspace must store the event's category.
//! 4. **level**: the effective level must be at most the workspace's
//!    maximum.
//!
//! An event failing a step is refused for that step's reason (the first
//! that fails) and counted by (reason, category); an allowed event is kept
//! with its `level` set to the effective level. The outcome depends only on
//! its inputs, so deciding once and recording the outcome is enough for the
//! ingest log to replay the same result.

use custos_catalog::WorkspacePolicy;
use custos_model::api::RefusalReason;
use custos_model::{Category, Event, Registry};
use std::collections::BTreeMap;

/// The outcome for one batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    /// The allowed events, in batch order, each with its effective level.
    pub allowed: Vec<Event>,
    /// Refused events per (reason, category).
    pub refused: BTreeMap<(RefusalReason, Category), u64>,
    /// Whether any allowed event's level was raised to its effective level
    /// (then the stored events differ from those received, even with
    /// nothing refused).
    pub raised: bool,
}

impl Verdict {
    /// Events refused, all reasons.
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

    /// Whether the events to store differ from the events received.
    pub fn changed(&self) -> bool {
        self.raised || !self.refused.is_empty()
    }
}

/// Why one event may not be stored, if it may not.
pub fn refusal(registry: &Registry, policy: &WorkspacePolicy, ev: &Event) -> Result<custos_model::Level, RefusalReason> {
    // check_event and min_level in one pass.
    let min = registry.assess(ev).map_err(|_| RefusalReason::Schema)?;
    let effective = ev.level.max(min);
    if !policy.allows_category(ev.category) {
        return Err(RefusalReason::Category);
    }
    if effective > policy.max_level {
        return Err(RefusalReason::Level);
    }
    Ok(effective)
}

/// Decide a batch: see the module documentation.
pub fn judge(registry: &Registry, policy: &WorkspacePolicy, events: Vec<Event>) -> Verdict {
    let mut v = Verdict { allowed: Vec::with_capacity(events.len()), ..Default::default() };
    for mut ev in events {
        match refusal(registry, policy, &ev) {
            Ok(level) => {
                if level != ev.level {
                    ev.level = level;
                    v.raised = true;
                }
                v.allowed.push(ev);
            }
            Err(reason) => *v.refused.entry((reason, ev.category)).or_insert(0) += 1,
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_model::{Level, TableName, Value};

    fn ev(table: &str, category: Category, level: Level, attrs: &[(&str, Value)]) -> Event {
        Event {
            table: TableName::new(table).unwrap(),
            time: 1,
            level,
            category,
            host: "h".into(),
            message: "m".into(),
            attrs: attrs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        }
    }

    fn line(severity: &str, declared: Level) -> Event {
        ev("logs", Category::Logs, declared, &[("severity", Value::from(severity))])
    }

    #[test]
    fn everything_valid_is_kept_by_the_default_policy() {
        let r = Registry::builtin();
        let events = vec![line("error", Level::Enhanced), line("debug", Level::Full), ev("crash_reports", Category::Crash, Level::Full, &[])];
        let v = judge(r, &WorkspacePolicy::default(), events.clone());
        assert_eq!(v.allowed, events);
        assert!(!v.changed());
        assert_eq!(v.refused_total(), 0);
    }

    #[test]
    fn a_lying_agent_cannot_lower_a_level() {
        let r = Registry::builtin();
        // An info line declared level 2 is level 3.
        let v = judge(r, &WorkspacePolicy::default(), vec![line("info", Level::Enhanced)]);
        assert_eq!(v.allowed[0].level, Level::Full);
        assert!(v.raised && v.changed());
        let strict = WorkspacePolicy { max_level: Level::Enhanced, categories: None };
        let v = judge(r, &strict, vec![line("info", Level::Enhanced), line("warning", Level::Enhanced)]);
        assert_eq!(v.allowed.len(), 1);
        assert_eq!(v.refused, BTreeMap::from([((RefusalReason::Level, Category::Logs), 1)]));
        // A higher declared level than the registry's is kept (the agent may be stricter).
        let v = judge(r, &WorkspacePolicy::default(), vec![line("error", Level::Full)]);
        assert_eq!(v.allowed[0].level, Level::Full);
        assert!(!v.changed());
    }

    #[test]
    fn refusals_are_counted_by_first_failing_reason_and_category() {
        let r = Registry::builtin();
        let policy = WorkspacePolicy::with_categories(Level::Basic, [Category::Logs, Category::Inventory, Category::Security]);
        let events = vec![
            // schema: unknown field, even though the category is also not allowed
            ev("performance", Category::Performance, Level::Enhanced, &[("gpu", Value::Int(1))]),
            // schema: wrong category for a declared table
            ev("inventory", Category::Logs, Level::Basic, &[]),
            // category (also above the level): performance is not stored
            ev("performance", Category::Performance, Level::Enhanced, &[("cpu_percent", Value::Float(1.0))]),
            // level: logs are at least 2
            line("critical", Level::Enhanced),
            // kept
            ev("inventory", Category::Inventory, Level::Basic, &[("kind", Value::from("host"))]),
            ev("security_events", Category::Security, Level::Security, &[("kind", Value::from("auth_failure"))]),
        ];
        let v = judge(r, &policy, events);
        assert_eq!(v.allowed.len(), 2);
        assert_eq!(
            v.refused,
            BTreeMap::from([
                ((RefusalReason::Schema, Category::Performance), 1),
                ((RefusalReason::Schema, Category::Logs), 1),
                ((RefusalReason::Category, Category::Performance), 1),
                ((RefusalReason::Level, Category::Logs), 1),
            ])
        );
        assert_eq!(v.refused_total(), 4);
    }

    #[test]
    fn usage_follows_the_category_not_the_level() {
        let r = Registry::builtin();
        let usage = ev("usage", Category::Usage, Level::Security, &[("cores", Value::Int(4)), ("core_hours", Value::Int(4))]);
        let level0 = WorkspacePolicy { max_level: Level::Security, categories: None };
        assert_eq!(judge(r, &level0, vec![usage.clone()]).allowed.len(), 1);
        let no_usage = WorkspacePolicy::with_categories(Level::Full, Category::ALL.into_iter().filter(|c| *c != Category::Usage));
        assert_eq!(judge(r, &no_usage, vec![usage]).refused, BTreeMap::from([((RefusalReason::Category, Category::Usage), 1)]));
    }

    #[test]
    fn judging_is_deterministic() {
        let r = Registry::builtin();
        let policy = WorkspacePolicy { max_level: Level::Enhanced, categories: None };
        let events: Vec<Event> = (0..50)
            .map(|i| line(["error", "info", "debug", "warning", "bogus"][i % 5], Level::ALL[i % 4]))
            .collect();
        assert_eq!(judge(r, &policy, events.clone()), judge(r, &policy, events));
    }
}
