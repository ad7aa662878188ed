//! Retention arithmetic: which period applies to a table, when a change
//! takes effect, and which segments have expired. Pure and free of I/O;
//! the server's sweeper does the deleting.
//!
//! # Rules
//!
//! - A table's period is its override if it has one; otherwise, for a
//!   rollup table (`<table>_rollup`, see [`rollup_table`]), the plan's
//!   rollup period; otherwise the workspace default.
//! - A row has expired when its time is before `now - period`
//!   ([`Retention::cutoff`]). A segment is dropped only when *every* row
//!   has expired, i.e. its `max_time` is before the cutoff
//!   ([`segment_expired`]); the sweeper never reads a segment to decide.
//!   Rows of a segment that straddles the cutoff are hidden from queries
//!   until the whole segment expires.
//! - A change that lengthens a period (or keeps it) applies at once; one
//!   that shortens it waits for the grace period, unless it is asked for
//!   `now` ([`decide_change`]). Locks are checked by the catalog.

use std::collections::BTreeMap;

use custos_model::{TableName, TimestampMicros};

/// Microseconds in a day.
pub const DAY_MICROS: i64 = 86_400 * 1_000_000;

/// The suffix of rollup tables.
pub const ROLLUP_SUFFIX: &str = "_rollup";

/// The longest period accepted anywhere (ten years), whatever a plan says.
pub const MAX_DAYS: u32 = 3650;

/// Errors of retention settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RetentionError {
    /// A period outside what the plan allows.
    #[error("retention of {days} days is outside plan {plan:?}: it allows 1 to {max} days")]
    OutsidePlan {
        /// The period asked for.
        days: u32,
        /// The plan.
        plan: String,
        /// Its longest period.
        max: u32,
    },
    /// A plan whose limits contradict each other.
    #[error("plan {plan:?}: {problem}")]
    BadPlan {
        /// The plan.
        plan: String,
        /// What is wrong.
        problem: String,
    },
}

/// A plan's retention limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Its name.
    pub name: String,
    /// The default period of a new workspace, days.
    pub default_days: u32,
    /// The longest period the workspace default or a table may have, days.
    pub max_days: u32,
    /// The period of rollup tables without an override, days; it may be
    /// longer than `max_days` (aggregates outlive raw rows), and a rollup
    /// table's override may go up to the longer of the two.
    pub rollup_days: u32,
}

impl Plan {
    /// Checks the limits: every period at least 1 day and at most
    /// [`MAX_DAYS`], the default at most `max_days`.
    pub fn validate(&self) -> Result<(), RetentionError> {
        let bad = |problem: String| Err(RetentionError::BadPlan { plan: self.name.clone(), problem });
        if self.default_days == 0 || self.max_days == 0 || self.rollup_days == 0 {
            return bad("every period must be at least 1 day".into());
        }
        if self.max_days > MAX_DAYS || self.rollup_days > MAX_DAYS {
            return bad(format!("max_days and rollup_days must be at most {MAX_DAYS}"));
        }
        if self.default_days > self.max_days {
            return bad(format!("default_days {} is above max_days {}", self.default_days, self.max_days));
        }
        Ok(())
    }

    /// The longest period `table` (None: the workspace default) may have.
    pub fn max_for(&self, table: Option<&TableName>) -> u32 {
        match table {
            Some(t) if is_rollup(t) => self.max_days.max(self.rollup_days),
            _ => self.max_days,
        }
    }

    /// Checks that `days` is a period the plan allows for `table` (None:
    /// the workspace default).
    pub fn check(&self, table: Option<&TableName>, days: u32) -> Result<(), RetentionError> {
        let max = self.max_for(table);
        if days == 0 || days > max {
            return Err(RetentionError::OutsidePlan { days, plan: self.name.clone(), max });
        }
        Ok(())
    }
}

/// The rollup table of `table` (`<table>_rollup`); None if `table` is
/// itself a rollup table or the name would be too long.
pub fn rollup_table(table: &TableName) -> Option<TableName> {
    if is_rollup(table) {
        return None;
    }
    TableName::new(format!("{}{ROLLUP_SUFFIX}", table.as_str())).ok()
}

/// Whether `table` is a rollup table.
pub fn is_rollup(table: &TableName) -> bool {
    table.as_str().ends_with(ROLLUP_SUFFIX)
}

/// The periods in force for one workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// The workspace default, days.
    pub default_days: u32,
    /// Per-table overrides, days.
    pub tables: BTreeMap<TableName, u32>,
    /// The period of rollup tables without an override, days.
    pub rollup_days: u32,
}

impl Retention {
    /// The period of `table`, days.
    pub fn days_for(&self, table: &TableName) -> u32 {
        if let Some(d) = self.tables.get(table) {
            return *d;
        }
        if is_rollup(table) {
            self.rollup_days
        } else {
            self.default_days
        }
    }

    /// The oldest event time still kept in `table` at `now`: rows before it
    /// have expired.
    pub fn cutoff(&self, table: &TableName, now: TimestampMicros) -> TimestampMicros {
        cutoff(now, self.days_for(table))
    }
}

/// `now` minus `days` (saturating).
pub fn cutoff(now: TimestampMicros, days: u32) -> TimestampMicros {
    now.saturating_sub(i64::from(days).saturating_mul(DAY_MICROS))
}

/// Whether a segment whose latest row is at `max_time` has wholly expired.
pub fn segment_expired(max_time: TimestampMicros, cutoff: TimestampMicros) -> bool {
    max_time < cutoff
}

/// When a change of a period from `from` to `to` days takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeTiming {
    /// At once.
    Now,
    /// At this time (a reduction in its grace period).
    At(TimestampMicros),
}

/// When a change takes effect: a lengthening (or no change) at once; a
/// reduction after `grace_days`, or at once when `immediately` is asked
/// (the caller checks the workspace is not locked: the catalog refuses
/// reductions of locked workspaces either way).
pub fn decide_change(from: u32, to: u32, now: TimestampMicros, grace_days: u32, immediately: bool) -> ChangeTiming {
    if to >= from || immediately || grace_days == 0 {
        ChangeTiming::Now
    } else {
        ChangeTiming::At(now.saturating_add(i64::from(grace_days).saturating_mul(DAY_MICROS)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> TableName {
        TableName::new(s).unwrap()
    }

    fn plan() -> Plan {
        Plan { name: "paid".into(), default_days: 31, max_days: 730, rollup_days: 400 }
    }

    #[test]
    fn a_table_override_wins_then_the_rollup_period_then_the_default() {
        let r = Retention { default_days: 31, tables: [(t("logs"), 7), (t("logs_rollup"), 90)].into(), rollup_days: 400 };
        assert_eq!(r.days_for(&t("logs")), 7);
        assert_eq!(r.days_for(&t("logs_rollup")), 90);
        assert_eq!(r.days_for(&t("health_rollup")), 400);
        assert_eq!(r.days_for(&t("health")), 31);
        assert_eq!(r.cutoff(&t("logs"), 10 * DAY_MICROS), 3 * DAY_MICROS);
    }

    #[test]
    fn rollup_names_add_the_suffix_once() {
        assert_eq!(rollup_table(&t("logs")), Some(t("logs_rollup")));
        assert_eq!(rollup_table(&t("logs_rollup")), None);
        assert!(is_rollup(&t("usage_rollup")));
        assert!(!is_rollup(&t("usage")));
    }

    #[test]
    fn plans_check_their_limits() {
        assert_eq!(plan().validate(), Ok(()));
        assert_eq!(plan().check(None, 730), Ok(()));
        let e = plan().check(Some(&t("logs")), 731).unwrap_err();
        assert_eq!(e.to_string(), "retention of 731 days is outside plan \"paid\": it allows 1 to 730 days");
        assert!(plan().check(None, 0).is_err());
        let free = Plan { name: "free".into(), default_days: 7, max_days: 7, rollup_days: 90 };
        assert_eq!(free.validate(), Ok(()));
        assert!(free.check(Some(&t("logs")), 8).is_err());
        assert_eq!(free.check(Some(&t("logs_rollup")), 90), Ok(()), "rollups may outlive raw rows");
        assert!(free.check(Some(&t("logs_rollup")), 91).is_err());
        for bad in [
            Plan { default_days: 0, ..plan() },
            Plan { default_days: 800, ..plan() },
            Plan { rollup_days: 5000, ..plan() },
            Plan { max_days: 5000, default_days: 1, rollup_days: 1, ..plan() },
        ] {
            assert!(matches!(bad.validate(), Err(RetentionError::BadPlan { .. })), "{bad:?}");
        }
    }

    #[test]
    fn reductions_wait_for_the_grace_period_unless_asked_for_now() {
        let now = 1_000 * DAY_MICROS;
        assert_eq!(decide_change(31, 60, now, 30, false), ChangeTiming::Now);
        assert_eq!(decide_change(31, 31, now, 30, false), ChangeTiming::Now);
        assert_eq!(decide_change(31, 7, now, 30, false), ChangeTiming::At(now + 30 * DAY_MICROS));
        assert_eq!(decide_change(31, 7, now, 30, true), ChangeTiming::Now);
        assert_eq!(decide_change(31, 7, now, 0, false), ChangeTiming::Now);
    }

    proptest! {
        /// A segment is dropped exactly when all its rows are before the
        /// cutoff: no row at or after the cutoff is ever in a dropped
        /// segment, whatever the period and clock.
        #[test]
        fn no_row_inside_the_period_is_ever_in_an_expired_segment(
            rows in proptest::collection::vec(-(1i64 << 50)..(1i64 << 50), 1..50),
            days in 1u32..4000,
            now in -(1i64 << 52)..(1i64 << 52),
        ) {
            let max = *rows.iter().max().unwrap();
            let c = cutoff(now, days);
            if segment_expired(max, c) {
                prop_assert!(rows.iter().all(|r| *r < c));
            } else {
                prop_assert!(rows.iter().any(|r| *r >= c));
            }
        }
    }
}
