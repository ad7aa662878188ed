//! The agent's own telemetry: its settings (`agent_settings`, level 0), its
//! security events (`security_events`, level 0), its health (`agent_health`,
//! level 1), quality (`quality`, level 1: critical alerts seen in the logs)
//! and compatibility (`compatibility`, level 1).
//!
//! [`Stats`] are the run loop's counters, shared with the control socket's
//! status and with [`InternalSource`], which turns them into events:
//!
//! - at the first poll: settings, compatibility, health and quality;
//! - whenever the effective settings change: settings;
//! - every `health_interval`: health and quality (critical alerts since the
//!   previous quality record);
//! - every 24 hours: compatibility;
//! - at every poll: the security events noted since the last poll.
//!
//! Nothing is persisted: a restart reports settings, compatibility and
//! health afresh, and security events noted but not yet acknowledged when
//! the agent dies are lost (they also went to the agent's own log).

use crate::security::SecurityNote;
use crate::sources::{Checkpoint, Poll, Source, SourceError};
use custos_model::{Category, Event, Level, TableName, Value};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A monotonic clock, injectable for tests.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// How often compatibility is reported again.
pub const COMPATIBILITY_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// The run loop's counters.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Counters {
    /// Events the sources produced.
    pub events_read: u64,
    /// Events the server acknowledged.
    pub events_uploaded: u64,
    /// Events not collected: above the effective level, or telemetry disabled.
    pub events_not_collected: u64,
    /// Events refused by the registry check (an undeclared table or field).
    pub events_invalid: u64,
    /// Events deleted from the queue (level lowered, telemetry disabled), by category.
    pub dropped_by_category: BTreeMap<String, u64>,
    /// Events the server refused (above the workspace's level or categories).
    pub refused_by_server: u64,
    /// Time of the last acknowledged upload (µs since the epoch).
    pub last_upload_time: Option<i64>,
    /// Events waiting to be sent.
    pub queued_events: u64,
    /// Batches waiting to be sent or on the wire.
    pub queued_batches: u64,
    /// Log lines at severity critical or above seen (collected or not).
    pub critical_alerts: u64,
    /// Events evicted from the full queue (or dropped on arrival), by category.
    pub evicted_by_category: BTreeMap<String, u64>,
    /// Batches moved to the dead-letter store.
    pub dead_letters: u64,
    /// Dead letters removed because the store was full.
    pub dead_letters_evicted: u64,
    /// Delivery attempts that failed and will be retried.
    pub delivery_failures: u64,
    /// Appends to the queue that failed (a full disk) and were retried.
    pub queue_write_failures: u64,
    /// Findings redacted on the host (not kept by the policy), by entity.
    pub redacted_by_entity: BTreeMap<String, u64>,
    /// Fields removed by the redaction policy (`drop_field`).
    pub redaction_fields_dropped: u64,
    /// Events dropped by the redaction policy (`drop_event`).
    pub redaction_events_dropped: u64,
    /// Pseudonym-map writes that failed (retried with the next batch).
    pub pseudonym_map_failures: u64,
}

/// Shared counters and the security-event queue.
#[derive(Debug, Default)]
pub struct Stats {
    counters: Mutex<Counters>,
    security: Mutex<VecDeque<SecurityNote>>,
}

impl Stats {
    /// Update the counters.
    pub fn update(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut crate::sources::lock(&self.counters));
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> Counters {
        crate::sources::lock(&self.counters).clone()
    }

    /// Queue a security event for the next poll of the internal source.
    pub fn note_security(&self, note: SecurityNote) {
        tracing::warn!(kind = note.kind, outcome = %note.outcome, detail = %note.detail, "security event");
        let mut q = crate::sources::lock(&self.security);
        // Bounded: a flood of failures keeps the newest 10,000.
        if q.len() >= 10_000 {
            q.pop_front();
        }
        q.push_back(note);
    }

    fn take_security(&self) -> Vec<SecurityNote> {
        crate::sources::lock(&self.security).drain(..).collect()
    }
}

/// What `agent_settings` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingsSnapshot {
    /// Telemetry enabled, and where that came from.
    pub enabled: (bool, String),
    /// Effective level, and where it came from.
    pub level: (Level, String),
    /// Usage reporting enabled, and where that came from.
    pub usage: (bool, String),
}

/// Facts for `compatibility`.
#[derive(Clone, Debug)]
pub struct Facts {
    /// The installation id.
    pub installation_id: String,
    /// The host name (the run loop pseudonymises it on the way out).
    pub hostname: String,
    /// The OS name (os-release PRETTY_NAME), if known.
    pub os_name: Option<String>,
    /// The types of the enabled sources, sorted, deduplicated.
    pub source_types: Vec<String>,
}

/// The internal source. See the module docs.
pub struct InternalSource {
    facts: Facts,
    stats: Arc<Stats>,
    settings: Box<dyn Fn() -> SettingsSnapshot + Send>,
    clock: Clock,
    health_interval: Duration,
    last_settings: Option<SettingsSnapshot>,
    last_health: Option<Instant>,
    last_compat: Option<Instant>,
    alerts_reported: u64,
    seq: u64,
}

fn table(name: &str) -> TableName {
    // Invariant: the internal tables are constant lowercase identifiers.
    #[allow(clippy::expect_used)]
    TableName::new(name).expect("internal table names are valid")
}

impl InternalSource {
    /// The source name (configured source names may not start with `@`).
    pub const NAME: &'static str = "@agent";

    /// A new internal source.
    pub fn new(facts: Facts, stats: Arc<Stats>, settings: Box<dyn Fn() -> SettingsSnapshot + Send>, health_interval: Duration) -> Self {
        Self {
            facts,
            stats,
            settings,
            clock: Arc::new(Instant::now),
            health_interval,
            last_settings: None,
            last_health: None,
            last_compat: None,
            alerts_reported: 0,
            seq: 0,
        }
    }

    /// Use `clock` for the intervals.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn event(&self, table_name: &str, category: Category, level: Level, message: String, attrs: BTreeMap<String, Value>) -> Event {
        Event {
            table: table(table_name),
            time: custos_model::now_micros(),
            level,
            category,
            host: self.facts.hostname.clone(),
            message,
            attrs,
        }
    }

    fn settings_event(&self, s: &SettingsSnapshot) -> Event {
        let mut a = BTreeMap::new();
        a.insert("installation_id".into(), Value::from(self.facts.installation_id.as_str()));
        a.insert("agent_version".into(), Value::from(env!("CARGO_PKG_VERSION")));
        a.insert("telemetry_enabled".into(), Value::Bool(s.enabled.0));
        a.insert("enabled_origin".into(), Value::from(s.enabled.1.as_str()));
        a.insert("telemetry_level".into(), Value::Int(i64::from(u8::from(s.level.0))));
        a.insert("level_origin".into(), Value::from(s.level.1.as_str()));
        a.insert("usage_enabled".into(), Value::Bool(s.usage.0));
        a.insert("usage_origin".into(), Value::from(s.usage.1.as_str()));
        let msg = format!(
            "telemetry {} at level {} ({}); usage {}",
            if s.enabled.0 { "enabled" } else { "disabled" },
            s.level.0,
            s.level.1,
            if s.usage.0 { "enabled" } else { "disabled" }
        );
        self.event("agent_settings", Category::Settings, Level::Security, msg, a)
    }

    fn health_events(&mut self, now: Instant) -> Vec<Event> {
        let c = self.stats.snapshot();
        let mut a = BTreeMap::new();
        let int = |v: u64| Value::Int(i64::try_from(v).unwrap_or(i64::MAX));
        a.insert("events_read".into(), int(c.events_read));
        a.insert("events_uploaded".into(), int(c.events_uploaded));
        let collected = c.events_read.saturating_sub(c.events_not_collected + c.events_invalid);
        let share = if collected == 0 { 1.0 } else { (c.events_uploaded as f64 / collected as f64).min(1.0) };
        a.insert("upload_share".into(), Value::Float(share));
        a.insert("events_not_collected".into(), int(c.events_not_collected));
        if let Some(t) = c.last_upload_time {
            a.insert("last_upload_time".into(), Value::Int(t));
        }
        for cat in Category::ALL {
            let n = c.dropped_by_category.get(cat.name()).copied().unwrap_or(0);
            a.insert(format!("dropped_{}", cat.name()), int(n));
            if crate::queue::eviction_class(cat).is_some() {
                let n = c.evicted_by_category.get(cat.name()).copied().unwrap_or(0);
                a.insert(format!("evicted_{}", cat.name()), int(n));
            }
        }
        a.insert("queued_events".into(), int(c.queued_events));
        a.insert("dead_letters".into(), int(c.dead_letters));
        let msg = format!("{} events read, {} uploaded, share {:.3}", c.events_read, c.events_uploaded, share);
        let health = self.event("agent_health", Category::Health, Level::Basic, msg, a);
        let window = self.last_health.map(|t| now.duration_since(t).as_secs()).unwrap_or(0);
        let alerts = c.critical_alerts.saturating_sub(self.alerts_reported);
        self.alerts_reported = c.critical_alerts;
        let mut q = BTreeMap::new();
        q.insert("critical_alerts".into(), int(alerts));
        q.insert("window_secs".into(), int(window));
        let quality = self.event("quality", Category::Health, Level::Basic, format!("{alerts} critical alerts"), q);
        vec![health, quality]
    }

    fn compat_event(&self) -> Event {
        let mut a = BTreeMap::new();
        a.insert("agent_version".into(), Value::from(env!("CARGO_PKG_VERSION")));
        if let Some(os) = &self.facts.os_name {
            a.insert("os_name".into(), Value::from(os.as_str()));
        }
        a.insert("enabled_sources".into(), Value::from(self.facts.source_types.join(",")));
        let msg = format!("custos agent {} with sources {}", env!("CARGO_PKG_VERSION"), self.facts.source_types.join(","));
        self.event("compatibility", Category::Health, Level::Basic, msg, a)
    }
}

impl Source for InternalSource {
    fn name(&self) -> String {
        Self::NAME.to_string()
    }

    fn poll(&mut self, _max_events: usize, _max_bytes: usize, _drain: bool) -> Result<Poll, SourceError> {
        let now = (self.clock)();
        let mut events = Vec::new();
        let s = (self.settings)();
        if self.last_settings.as_ref() != Some(&s) {
            events.push(self.settings_event(&s));
            self.last_settings = Some(s);
        }
        for n in self.stats.take_security() {
            let mut a = BTreeMap::new();
            a.insert("kind".into(), Value::from(n.kind));
            a.insert("outcome".into(), Value::from(n.outcome.as_str()));
            a.insert("detail".into(), Value::from(n.detail.as_str()));
            events.push(self.event("security_events", Category::Security, Level::Security, format!("{}: {}", n.kind, n.detail), a));
        }
        if self.last_compat.is_none_or(|t| now.duration_since(t) >= COMPATIBILITY_INTERVAL) {
            events.push(self.compat_event());
            self.last_compat = Some(now);
        }
        if self.last_health.is_none_or(|t| now.duration_since(t) >= self.health_interval) {
            events.extend(self.health_events(now));
            self.last_health = Some(now);
        }
        self.seq += 1;
        Ok(Poll { events, checkpoint: Checkpoint::new(Self::NAME, self.seq, None), exhausted: true })
    }

    fn commit(&mut self, checkpoint: &Checkpoint) -> Result<(), SourceError> {
        checkpoint.check_owner(Self::NAME)
    }

    fn skip_to_end(&mut self) -> Result<(), SourceError> {
        // Security notes queued while telemetry was off are not collected.
        self.stats.take_security();
        self.last_health = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_model::registry::Registry;

    fn source(clock: Clock, stats: Arc<Stats>, level: Arc<Mutex<Level>>) -> InternalSource {
        let facts = Facts {
            installation_id: uuid::Uuid::new_v4().to_string(),
            hostname: "h1".into(),
            os_name: Some("Debian GNU/Linux 12".into()),
            source_types: vec!["file".into(), "inventory".into()],
        };
        let settings = Box::new(move || SettingsSnapshot {
            enabled: (true, "default".into()),
            level: (*level.lock().unwrap(), "local".into()),
            usage: (true, "config".into()),
        });
        InternalSource::new(facts, stats, settings, Duration::from_secs(60)).with_clock(clock)
    }

    #[test]
    fn first_poll_reports_settings_compatibility_health_and_quality_all_declared_in_the_registry() {
        let stats = Arc::new(Stats::default());
        stats.note_security(SecurityNote { kind: "auth_failure", outcome: "refused".into(), detail: "server said 401".into() });
        let mut s = source(Arc::new(Instant::now), stats, Arc::new(Mutex::new(Level::Enhanced)));
        let p = s.poll(100, 1 << 20, false).unwrap();
        let tables: Vec<&str> = p.events.iter().map(|e| e.table.as_str()).collect();
        assert_eq!(tables, ["agent_settings", "security_events", "compatibility", "agent_health", "quality"]);
        for e in &p.events {
            Registry::builtin().check_event(e).unwrap_or_else(|v| panic!("{}: {v}", e.table.as_str()));
        }
        // Nothing new: nothing emitted.
        assert!(s.poll(100, 1 << 20, false).unwrap().events.is_empty());
    }

    #[test]
    fn settings_are_reported_again_when_they_change_and_health_every_interval() {
        let t0 = Instant::now();
        let offset = Arc::new(Mutex::new(Duration::ZERO));
        let o = offset.clone();
        let clock: Clock = Arc::new(move || t0 + *o.lock().unwrap());
        let stats = Arc::new(Stats::default());
        let level = Arc::new(Mutex::new(Level::Enhanced));
        let mut s = source(clock, stats.clone(), level.clone());
        s.poll(100, 1 << 20, false).unwrap();
        *level.lock().unwrap() = Level::Basic;
        let p = s.poll(100, 1 << 20, false).unwrap();
        assert_eq!(p.events.len(), 1);
        assert_eq!(p.events[0].attrs["telemetry_level"], Value::Int(1));
        stats.update(|c| c.critical_alerts += 3);
        *offset.lock().unwrap() = Duration::from_secs(61);
        let p = s.poll(100, 1 << 20, false).unwrap();
        let q = p.events.iter().find(|e| e.table.as_str() == "quality").unwrap();
        assert_eq!(q.attrs["critical_alerts"], Value::Int(3));
        assert_eq!(q.attrs["window_secs"], Value::Int(61));
    }
}
