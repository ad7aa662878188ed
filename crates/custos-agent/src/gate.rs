//! The consent gate: pure decisions about each event, made twice.
//!
//! 1. **At collection** ([`classify`] then [`allowed`]): every event a source
//!    produces is checked against the registry (an event of a table or field
//!    the registry does not declare is never collected, and counted as
//!    invalid), its level is raised to the registry's minimum for it (a log
//!    line's level follows its severity; a source's configured `level` can
//!    only raise it), and it is kept only if the effective settings allow it:
//!    usage records when the usage switch is on; everything else when
//!    telemetry is enabled and the event's level is at most the effective
//!    level.
//! 2. **Before every send attempt** ([`allowed`] again, with the settings of
//!    that moment): an event that was queued under a higher level, or before
//!    telemetry was disabled, is deleted instead of sent. What is sent is
//!    [`pseudonymise_hosts`]: below level 3 the host name is replaced by the
//!    installation's keyed pseudonym.
//!
//! Nothing here does I/O; the run loop applies the decisions.

use crate::installation::Installation;
use custos_model::registry::{Registry, RegistryViolation, Switch};
use custos_model::{Event, Level};

/// The effective settings the gate needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateState {
    /// The effective consent level.
    pub level: Level,
    /// Telemetry collection and upload enabled.
    pub telemetry: bool,
    /// Usage (billing) reporting enabled.
    pub usage: bool,
}

impl GateState {
    /// Whether host names leave the host in clear (level 3 only).
    pub fn clear_host_names(&self) -> bool {
        self.level >= Level::Full
    }
}

/// Validate `e` against the registry and raise its level to the lowest level
/// at which the registry allows it to be collected.
pub fn classify(reg: &Registry, e: &mut Event) -> Result<(), RegistryViolation> {
    // `assess` is `check_event` and `min_level` in one pass over the event.
    let min = reg.assess(e)?;
    if e.level < min {
        e.level = min;
    }
    Ok(())
}

/// Whether `e` is a usage (billing) record, governed by the usage switch
/// rather than the telemetry level.
pub fn is_usage(reg: &Registry, e: &Event) -> bool {
    reg.table(e.table.as_str()).is_some_and(|t| t.switch == Some(Switch::Usage))
}

/// Whether a classified event may be collected and sent under `st`.
pub fn allowed(reg: &Registry, e: &Event, st: &GateState) -> bool {
    if is_usage(reg, e) {
        st.usage
    } else {
        st.telemetry && e.level <= st.level
    }
}

/// The batch as it leaves the host under `st`, made in place (a batch of log lines is several
/// MiB; copying it only to change host names doubles the agent's memory):
/// below level 3 every host name is replaced by its pseudonym, and the real
/// names are returned, in order, for [`restore_hosts`]; at level 3 nothing
/// changes and the list is empty. The pseudonym is computed once per run of
/// events with the same host.
pub fn pseudonymise_hosts(events: &mut [Event], st: &GateState, inst: &Installation) -> Vec<String> {
    if st.clear_host_names() {
        return Vec::new();
    }
    let mut real = Vec::with_capacity(events.len());
    let mut last: Option<(String, String)> = None;
    for e in events.iter_mut() {
        let pseudonym = match &last {
            Some((host, p)) if *host == e.host => p.clone(),
            _ => {
                let p = inst.host_pseudonym(&e.host);
                last = Some((e.host.clone(), p.clone()));
                p
            }
        };
        real.push(std::mem::replace(&mut e.host, pseudonym));
    }
    real
}

/// Undo [`pseudonymise_hosts`]: put the real host names back (`real` as it
/// returned them; empty leaves the events as they are).
pub fn restore_hosts(events: &mut [Event], real: Vec<String>) {
    for (e, host) in events.iter_mut().zip(real) {
        e.host = host;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_model::{Category, TableName, Value};
    use std::collections::BTreeMap;

    fn ev(table: &str, category: Category, level: Level, attrs: &[(&str, Value)]) -> Event {
        Event {
            table: TableName::new(table).unwrap(),
            time: 1,
            level,
            category,
            host: "web-1".into(),
            message: "m".into(),
            attrs: attrs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<BTreeMap<_, _>>(),
        }
    }

    fn st(level: Level, telemetry: bool, usage: bool) -> GateState {
        GateState { level, telemetry, usage }
    }

    #[test]
    fn a_log_line_is_raised_to_the_level_of_its_severity() {
        let reg = Registry::builtin();
        let mut warn = ev("logs", Category::Logs, Level::Security, &[("severity", "warning".into())]);
        classify(reg, &mut warn).unwrap();
        assert_eq!(warn.level, Level::Enhanced);
        let mut info = ev("logs", Category::Logs, Level::Enhanced, &[("severity", "info".into())]);
        classify(reg, &mut info).unwrap();
        assert_eq!(info.level, Level::Full);
        // A configured floor above the severity's level stays.
        let mut floor = ev("app_logs", Category::Logs, Level::Full, &[("severity", "error".into())]);
        classify(reg, &mut floor).unwrap();
        assert_eq!(floor.level, Level::Full);
    }

    #[test]
    fn an_undeclared_table_or_field_is_refused() {
        let reg = Registry::builtin();
        let mut t = ev("secret_stuff", Category::Performance, Level::Enhanced, &[]);
        assert!(classify(reg, &mut t).is_err());
        let mut f = ev("performance", Category::Performance, Level::Enhanced, &[("ssn", "123".into())]);
        assert!(classify(reg, &mut f).is_err());
    }

    #[test]
    fn levels_are_cumulative_and_disable_stops_everything_but_usage() {
        let reg = Registry::builtin();
        let mut settings = ev("agent_settings", Category::Settings, Level::Security, &[]);
        let mut perf = ev("performance", Category::Performance, Level::Security, &[]);
        let mut usage = ev("usage", Category::Usage, Level::Security, &[]);
        for e in [&mut settings, &mut perf, &mut usage] {
            classify(reg, e).unwrap();
        }
        assert!(allowed(reg, &settings, &st(Level::Security, true, false)));
        assert!(!allowed(reg, &perf, &st(Level::Basic, true, true)));
        assert!(allowed(reg, &perf, &st(Level::Enhanced, true, true)));
        assert!(allowed(reg, &perf, &st(Level::Full, true, true)));
        // Disabled: nothing but usage, and usage only under its own switch.
        assert!(!allowed(reg, &settings, &st(Level::Full, false, true)));
        assert!(allowed(reg, &usage, &st(Level::Security, false, true)));
        assert!(!allowed(reg, &usage, &st(Level::Full, true, false)));
    }

    #[test]
    fn host_names_leave_in_clear_only_at_level_3() {
        let inst = Installation::from_parts(uuid::Uuid::nil(), [1u8; 32]);
        let mut below = vec![ev("logs", Category::Logs, Level::Enhanced, &[])];
        pseudonymise_hosts(&mut below, &st(Level::Enhanced, true, true), &inst);
        assert_eq!(below[0].host, inst.host_pseudonym("web-1"));
        assert_ne!(below[0].host, "web-1");
        let mut full = vec![ev("logs", Category::Logs, Level::Enhanced, &[])];
        pseudonymise_hosts(&mut full, &st(Level::Full, true, true), &inst);
        assert_eq!(full[0].host, "web-1");
    }

    #[test]
    fn pseudonymising_a_batch_in_place_replaces_every_host_and_restores_the_real_names() {
        let inst = Installation::from_parts(uuid::Uuid::nil(), [1u8; 32]);
        let mut batch: Vec<Event> = ["web-1", "web-1", "db-2", "web-1"]
            .iter()
            .map(|h| Event { host: (*h).into(), ..ev("logs", Category::Logs, Level::Enhanced, &[]) })
            .collect();
        let original = batch.clone();
        for level in [Level::Security, Level::Basic, Level::Enhanced, Level::Full] {
            let state = st(level, true, true);
            let real = pseudonymise_hosts(&mut batch, &state, &inst);
            let expected: Vec<Event> = original
                .iter()
                .map(|e| Event { host: if level == Level::Full { e.host.clone() } else { inst.host_pseudonym(&e.host) }, ..e.clone() })
                .collect();
            assert_eq!(batch, expected, "level {level}");
            assert_eq!(real.is_empty(), level == Level::Full);
            restore_hosts(&mut batch, real);
            assert_eq!(batch, original, "level {level}");
        }
    }
}
