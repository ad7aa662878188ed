//! The usage source: hourly usage (billing) records, `cores × hours` the
//! agent ran. Not configured in `[[sources]]`: the run loop always builds
//! it and the usage switch (`custos usage enable|disable`) governs it, not
//! the consent level.
//!
//! Periods are aligned to the clock: `[k × period, (k + 1) × period)` in UTC
//! (whole hours by default). When a period has ended, one event goes to the
//! table `usage`, category usage, level security (0), time = the end of the
//! period, with the attributes `installation_id`, `period_start` and
//! `period_end` (microseconds since the epoch), `cores` (logical CPUs from
//! `/proc/cpuinfo`, else `/sys/devices/system/cpu/online`, else the CPUs
//! this process may use), `core_hours` = cores × hours the agent ran within
//! the period, and `agents` = 1. A period in which the agent did not run
//! gives no record.
//!
//! # How run time is counted
//!
//! At every poll the time since the previous poll counts as running time,
//! measured on the monotonic clock (which does not advance while the
//! machine is suspended) and placed on the wall clock just before the poll;
//! it is split between periods at their boundaries. So a partial first
//! period (the agent started at 10:20) counts 40 minutes, a partial last
//! one its real duration, a poll delayed by a long upload still counts the
//! time in between, and a suspended laptop does not. Wall-clock time that
//! was already accounted is never accounted again (a clock set back counts
//! nothing until it has caught up), so run time is never counted twice.
//!
//! # State file
//!
//! `<state_dir>/`[`USAGE_STATE_FILE`] keeps the start of the current period
//! and the run time accrued in it, so a restart neither double-counts nor
//! forgets: after a restart the agent continues the persisted period (the
//! time the agent was down is not counted), and if that period has ended
//! meanwhile its record is sent at the first poll. Periods before the
//! persisted one were reported and are never reported again. Written
//! atomically, only in [`Source::commit`] (after the server acknowledged the
//! records before it), and at most every [`PERSIST_EVERY`] of accrued time
//! unless a record was sent or the poll was a drain: a crash loses at most
//! that much run time (counted short, never twice). A crash between the
//! server's acknowledgement of a record and its commit sends the record
//! again (the records are then identical in installation and period; the
//! server side may deduplicate on them). Format version 1:
//!
//! ```json
//! { "version": 1, "period_start": 1700000000000000, "accrued_us": 1200000000 }
//! ```

use super::inventory::{count_cpu_list, parse_cpuinfo, read_trimmed, InventoryPaths};
use super::take_limited;
use super::{Checkpoint, Poll, Saved, Source, SourceError};
use custos_model::{Category, Event, Level, TableName, TimestampMicros, Value};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The table usage records go to.
pub const USAGE_TABLE: &str = "usage";
/// The name of the usage state file inside the state directory.
pub const USAGE_STATE_FILE: &str = "usage.json";
/// The default period: one hour.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(3600);
/// Accrued run time between two writes of the state file.
pub const PERSIST_EVERY: Duration = Duration::from_secs(60);
/// The source's name.
pub const USAGE_SOURCE_NAME: &str = "usage";
const FORMAT_VERSION: u32 = 1;
const MICROS_PER_HOUR: f64 = 3_600_000_000.0;

/// Reads the wall clock (microseconds since the Unix epoch) and the
/// monotonic clock together; injectable for tests.
pub type UsageClock = Arc<dyn Fn() -> (TimestampMicros, Instant) + Send + Sync>;

/// The system's wall and monotonic clocks.
pub fn system_clock() -> UsageClock {
    Arc::new(|| (custos_model::now_micros(), Instant::now()))
}

/// The accounting state: the current period and the run time in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UsageState {
    /// Start of the current (not yet reported) period, µs since the epoch.
    period_start: TimestampMicros,
    /// Run time accrued in the current period, µs.
    accrued_us: i64,
}

/// What a usage checkpoint carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UsageCheckpoint {
    state: UsageState,
    /// Write the state even if little changed (a drain).
    force: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    period_start: TimestampMicros,
    accrued_us: i64,
}

/// Where the process is in its accounting.
#[derive(Clone, Copy, Debug)]
struct Running {
    /// Wall time up to which run time has been accounted.
    mark: TimestampMicros,
    /// Monotonic time of the previous poll.
    last: Instant,
}

/// Emits hourly usage records.
pub struct UsageSource {
    installation_id: String,
    hostname: String,
    table: TableName,
    clock: UsageClock,
    period_us: i64,
    paths: InventoryPaths,
    state_path: Option<PathBuf>,
    state: UsageState,
    /// `None` until the first poll of this process.
    running: Option<Running>,
    /// Records not yet returned, each with the state after it.
    pending: VecDeque<(Event, UsageState)>,
    /// The state covering every record returned so far.
    returned_state: UsageState,
    /// The state last written to the state file.
    persisted: Option<UsageState>,
    seq: u64,
    committed_seq: Option<u64>,
}

impl UsageSource {
    /// A usage source for the installation `installation_id`, reporting
    /// `hostname`, reading time from `clock` (see [`system_clock`]). Without
    /// [`UsageSource::with_state_dir`] nothing is persisted.
    pub fn new(installation_id: &str, hostname: &str, clock: UsageClock) -> Self {
        // Invariant: USAGE_TABLE is a constant lowercase identifier.
        #[allow(clippy::expect_used)]
        let table = TableName::new(USAGE_TABLE).expect("\"usage\" is a valid table name");
        let state = UsageState {
            period_start: i64::MIN,
            accrued_us: 0,
        };
        Self {
            installation_id: installation_id.to_string(),
            hostname: hostname.to_string(),
            table,
            clock,
            period_us: micros_of(DEFAULT_PERIOD),
            paths: InventoryPaths::system(),
            state_path: None,
            state,
            running: None,
            pending: VecDeque::new(),
            returned_state: state,
            persisted: None,
            seq: 0,
            committed_seq: None,
        }
    }

    /// Keep the accounting state in `state_dir` (created if missing),
    /// continuing from what it holds.
    pub fn with_state_dir(mut self, state_dir: &Path) -> Result<Self, SourceError> {
        std::fs::create_dir_all(state_dir).map_err(|source| SourceError::Io {
            action: "creating state directory",
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join(USAGE_STATE_FILE);
        if let Some(s) = load_state(&path)? {
            self.state = s;
            self.returned_state = s;
            self.persisted = Some(s);
        }
        self.state_path = Some(path);
        Ok(self)
    }

    /// Use periods of `period` (at least one second) instead of an hour.
    pub fn with_period(mut self, period: Duration) -> Self {
        self.period_us = micros_of(period).max(1_000_000);
        self
    }

    /// Count CPUs from `paths` instead of the running system.
    pub fn with_paths(mut self, paths: InventoryPaths) -> Self {
        self.paths = paths;
        self
    }

    fn period_of(&self, t: TimestampMicros) -> TimestampMicros {
        t.div_euclid(self.period_us) * self.period_us
    }

    fn cores(&self) -> i64 {
        let from_cpuinfo = std::fs::read_to_string(self.paths.proc_root.join("cpuinfo"))
            .map(|t| parse_cpuinfo(&t).1)
            .unwrap_or(0);
        if from_cpuinfo > 0 {
            return from_cpuinfo;
        }
        read_trimmed(&self.paths.sys_root.join("devices/system/cpu/online"))
            .and_then(|l| count_cpu_list(&l))
            .or_else(|| {
                std::thread::available_parallelism()
                    .ok()
                    .and_then(|n| i64::try_from(n.get()).ok())
            })
            .unwrap_or(1)
    }

    fn record(&self, start: TimestampMicros, accrued_us: i64) -> Event {
        let end = start.saturating_add(self.period_us);
        let cores = self.cores();
        let hours = accrued_us as f64 / MICROS_PER_HOUR;
        let core_hours = cores as f64 * hours;
        let mut a: BTreeMap<String, Value> = BTreeMap::new();
        a.insert(
            "installation_id".into(),
            Value::Str(self.installation_id.clone()),
        );
        a.insert("period_start".into(), Value::Int(start));
        a.insert("period_end".into(), Value::Int(end));
        a.insert("cores".into(), Value::Int(cores));
        a.insert("core_hours".into(), Value::Float(core_hours));
        a.insert("agents".into(), Value::Int(1));
        Event {
            table: self.table.clone(),
            time: end,
            level: Level::Security,
            category: Category::Usage,
            host: self.hostname.clone(),
            message: format!("usage: {cores} cores x {hours:.3} h = {core_hours:.3} core-hours"),
            attrs: a,
        }
    }

    /// Close the current period (queue its record if the agent ran in it)
    /// and start the one beginning at `next`.
    fn close_period(&mut self, next: TimestampMicros) {
        if self.state.accrued_us > 0 {
            let e = self.record(self.state.period_start, self.state.accrued_us);
            self.state = UsageState {
                period_start: next,
                accrued_us: 0,
            };
            self.pending.push_back((e, self.state));
        } else {
            self.state = UsageState {
                period_start: next,
                accrued_us: 0,
            };
        }
    }

    /// Count `[from, to)` (wall time) as running time, closing every period
    /// that ends by `to`.
    fn accrue(&mut self, from: TimestampMicros, to: TimestampMicros) {
        let mut from = from.max(self.state.period_start);
        loop {
            let end = self.state.period_start.saturating_add(self.period_us);
            if to < end {
                if to > from {
                    self.state.accrued_us = self.state.accrued_us.saturating_add(to - from);
                }
                return;
            }
            if end > from {
                self.state.accrued_us = self.state.accrued_us.saturating_add(end - from);
            }
            // Skip straight over periods with nothing in them.
            let next = end.max(self.period_of(from));
            self.close_period(next);
            from = from.max(next);
        }
    }

    /// Account the time up to now.
    fn tick(&mut self) {
        let (wall, mono) = (self.clock)();
        let Some(r) = self.running else {
            // First poll of this process: the time before it is not counted.
            let current = self.period_of(wall);
            if self.state.period_start == i64::MIN {
                self.state.period_start = current;
            } else if current > self.state.period_start {
                // The persisted period ended while the agent was down.
                self.close_period(current);
            }
            self.running = Some(Running {
                mark: wall.max(self.state.period_start),
                last: mono,
            });
            return;
        };
        let ran = micros_of(mono.saturating_duration_since(r.last));
        let from = wall.saturating_sub(ran).max(r.mark);
        self.accrue(from, wall.max(from));
        self.running = Some(Running {
            mark: r.mark.max(wall),
            last: mono,
        });
    }
}

impl Source for UsageSource {
    fn name(&self) -> String {
        USAGE_SOURCE_NAME.to_string()
    }

    /// Accounts the time since the previous poll and returns the records of
    /// the periods that ended (within the limits). The first poll of a
    /// process starts counting. `drain` makes the next commit write the
    /// state file whatever changed.
    fn poll(
        &mut self,
        max_events: usize,
        max_bytes: usize,
        drain: bool,
    ) -> Result<Poll, SourceError> {
        self.tick();
        let mut queue: VecDeque<Event> = self.pending.iter().map(|(e, _)| e.clone()).collect();
        let events = take_limited(&mut queue, max_events, max_bytes);
        for _ in 0..events.len() {
            if let Some((_, s)) = self.pending.pop_front() {
                self.returned_state = s;
            }
        }
        // With nothing left to return, the checkpoint covers the current
        // accrual too; otherwise only what was returned.
        let state = if self.pending.is_empty() {
            self.state
        } else {
            self.returned_state
        };
        self.returned_state = state;
        self.seq += 1;
        Ok(Poll {
            events,
            checkpoint: Checkpoint::with_saved(
                USAGE_SOURCE_NAME,
                self.seq,
                Some(Saved::Usage(UsageCheckpoint {
                    state,
                    force: drain,
                })),
            ),
            exhausted: self.pending.is_empty(),
        })
    }

    fn commit(&mut self, checkpoint: &Checkpoint) -> Result<(), SourceError> {
        checkpoint.check_owner(USAGE_SOURCE_NAME)?;
        if self.committed_seq.is_some_and(|c| checkpoint.seq() <= c) {
            return Ok(());
        }
        self.committed_seq = Some(checkpoint.seq());
        let Some(Saved::Usage(cp)) = checkpoint.saved() else {
            return Ok(());
        };
        let due = match self.persisted {
            None => true,
            Some(p) => {
                cp.force && p != cp.state
                    || p.period_start != cp.state.period_start
                    || cp.state.accrued_us - p.accrued_us >= micros_of(PERSIST_EVERY)
            }
        };
        if due {
            self.persist(cp.state)?;
        }
        Ok(())
    }

    /// Drop the records not yet returned and the run time accrued in the
    /// current period, and count again from the next poll (used when usage
    /// reporting is enabled again: the time it was disabled is not counted).
    /// The reset state is written at once.
    fn skip_to_end(&mut self) -> Result<(), SourceError> {
        self.pending.clear();
        if self.state.period_start != i64::MIN {
            self.state.accrued_us = 0;
        }
        self.returned_state = self.state;
        self.running = None;
        self.seq += 1;
        self.committed_seq = Some(self.seq);
        if self.state.period_start != i64::MIN {
            self.persist(self.state)?;
        }
        Ok(())
    }
}

impl UsageSource {
    fn persist(&mut self, state: UsageState) -> Result<(), SourceError> {
        let Some(path) = &self.state_path else {
            return Ok(());
        };
        let file = StateFile {
            version: FORMAT_VERSION,
            period_start: state.period_start,
            accrued_us: state.accrued_us,
        };
        let mut bytes = serde_json::to_vec(&file).map_err(|e| SourceError::Io {
            action: "encoding",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        bytes.push(b'\n');
        crate::fsutil::write_atomic(path, &bytes, 0o600).map_err(|source| SourceError::Io {
            action: "writing",
            path: path.clone(),
            source,
        })?;
        self.persisted = Some(state);
        Ok(())
    }
}

fn micros_of(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn load_state(path: &Path) -> Result<Option<UsageState>, SourceError> {
    let corrupt = |reason: String| SourceError::CorruptState {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let f: StateFile =
                serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
            if f.version != FORMAT_VERSION {
                return Err(corrupt(format!(
                    "unsupported version {} (expected {FORMAT_VERSION})",
                    f.version
                )));
            }
            if f.accrued_us < 0 || f.period_start == i64::MIN {
                return Err(corrupt("negative run time or impossible period".into()));
            }
            Ok(Some(UsageState {
                period_start: f.period_start,
                accrued_us: f.accrued_us,
            }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SourceError::Io {
            action: "reading",
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_model::registry::Registry;
    use std::sync::Mutex;

    const HOUR: i64 = 3_600_000_000;
    const MIN: i64 = 60_000_000;
    /// A whole hour, some day in 2023.
    const T0: i64 = 1_700_000_000_000_000 / HOUR * HOUR;

    /// A test clock: wall and monotonic time advance together unless set
    /// apart.
    #[derive(Clone)]
    struct TestClock(Arc<Mutex<(i64, Instant)>>);

    impl TestClock {
        fn new(wall: i64) -> Self {
            Self(Arc::new(Mutex::new((wall, Instant::now()))))
        }
        fn clock(&self) -> UsageClock {
            let c = Arc::clone(&self.0);
            Arc::new(move || *c.lock().unwrap())
        }
        /// Both clocks move by `us`.
        fn run(&self, us: i64) {
            let mut g = self.0.lock().unwrap();
            g.0 += us;
            g.1 += Duration::from_micros(us as u64);
        }
        /// Only the wall clock moves (suspend, or the agent was not running).
        fn jump(&self, us: i64) {
            self.0.lock().unwrap().0 += us;
        }
    }

    fn fake_root(cores: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        let text: String = (0..cores)
            .map(|i| format!("processor\t: {i}\n\n"))
            .collect();
        std::fs::write(dir.path().join("proc/cpuinfo"), text).unwrap();
        dir
    }

    fn source(clock: &TestClock, root: &Path, state: Option<&Path>) -> UsageSource {
        let s =
            UsageSource::new("inst-1", "h1", clock.clock()).with_paths(InventoryPaths::under(root));
        match state {
            Some(d) => s.with_state_dir(d).unwrap(),
            None => s,
        }
    }

    fn core_hours(e: &Event) -> f64 {
        match e.attrs["core_hours"] {
            Value::Float(f) => f,
            ref v => panic!("{v:?}"),
        }
    }

    /// Poll every `step` µs for `total` µs; return the records.
    fn run_for(src: &mut UsageSource, clock: &TestClock, total: i64, step: i64) -> Vec<Event> {
        let mut out = Vec::new();
        let mut t = 0;
        while t < total {
            clock.run(step);
            t += step;
            let p = src.poll(100, 1 << 20, false).unwrap();
            src.commit(&p.checkpoint).unwrap();
            out.extend(p.events);
        }
        out
    }

    #[test]
    fn a_record_per_hour_with_partial_first_hour_counting_its_real_duration() {
        let root = fake_root(4);
        let clock = TestClock::new(T0 + 20 * MIN);
        let mut src = source(&clock, root.path(), None);
        assert!(src.poll(100, 1 << 20, false).unwrap().events.is_empty());
        let records = run_for(&mut src, &clock, 99 * MIN, MIN);
        assert_eq!(records.len(), 1, "10:20 to 11:59: one hour ended");
        let e = &records[0];
        Registry::builtin().check_event(e).unwrap();
        assert_eq!(e.table.as_str(), "usage");
        assert_eq!((e.level, e.category), (Level::Security, Category::Usage));
        assert_eq!(e.attrs["installation_id"], Value::Str("inst-1".into()));
        assert_eq!(e.attrs["period_start"], Value::Int(T0));
        assert_eq!(e.attrs["period_end"], Value::Int(T0 + HOUR));
        assert_eq!(e.time, T0 + HOUR);
        assert_eq!(e.attrs["cores"], Value::Int(4));
        assert_eq!(e.attrs["agents"], Value::Int(1));
        assert!(
            (core_hours(e) - 4.0 * 40.0 / 60.0).abs() < 1e-9,
            "{}",
            core_hours(e)
        );
        let records = run_for(&mut src, &clock, 56 * MIN, 7 * MIN);
        assert_eq!(records.len(), 1);
        assert!((core_hours(&records[0]) - 4.0).abs() < 1e-9);
        assert_eq!(records[0].attrs["period_start"], Value::Int(T0 + HOUR));
    }

    #[test]
    fn a_long_gap_between_polls_still_counts_but_a_suspend_does_not() {
        let root = fake_root(2);
        let clock = TestClock::new(T0);
        let mut src = source(&clock, root.path(), None);
        src.poll(100, 1 << 20, false).unwrap();
        // A poll delayed 150 minutes (an upload blocked): three periods end,
        // 2 cores x (60 + 60 + 30 min).
        clock.run(150 * MIN);
        let p = src.poll(100, 1 << 20, false).unwrap();
        let hours: Vec<f64> = p.events.iter().map(core_hours).collect();
        assert_eq!(hours.len(), 2);
        assert!((hours[0] - 2.0).abs() < 1e-9 && (hours[1] - 2.0).abs() < 1e-9);
        // Suspended 3 hours: the wall clock moves, the monotonic one does not.
        clock.jump(3 * HOUR);
        clock.run(10 * MIN);
        let p = src.poll(100, 1 << 20, false).unwrap();
        assert_eq!(p.events.len(), 1, "only the period with run time in it");
        assert!((core_hours(&p.events[0]) - 2.0 * 0.5).abs() < 1e-9);
    }

    #[test]
    fn limits_return_records_over_several_polls() {
        let root = fake_root(1);
        let clock = TestClock::new(T0);
        let mut src = source(&clock, root.path(), None);
        src.poll(100, 1 << 20, false).unwrap();
        clock.run(3 * HOUR + MIN);
        let p = src.poll(1, 1 << 20, false).unwrap();
        assert_eq!(p.events.len(), 1);
        assert!(!p.exhausted);
        let p = src.poll(5, 1 << 20, false).unwrap();
        assert_eq!(p.events.len(), 2);
        assert!(p.exhausted);
    }

    #[test]
    fn a_restart_continues_the_persisted_period_without_double_counting() {
        let root = fake_root(1);
        let state = tempfile::tempdir().unwrap();
        let clock = TestClock::new(T0);
        let mut src = source(&clock, root.path(), Some(state.path()));
        src.poll(100, 1 << 20, false).unwrap();
        assert!(run_for(&mut src, &clock, 20 * MIN, MIN).is_empty());
        drop(src);
        assert!(state.path().join(USAGE_STATE_FILE).exists());
        // Down for 10 minutes, then up again for the rest of the hour.
        clock.jump(10 * MIN);
        let mut src = source(&clock, root.path(), Some(state.path()));
        assert!(src.poll(100, 1 << 20, false).unwrap().events.is_empty());
        let records = run_for(&mut src, &clock, 30 * MIN + 1, MIN);
        assert_eq!(records.len(), 1);
        assert!(
            (core_hours(&records[0]) - 50.0 / 60.0).abs() < 1e-6,
            "{}",
            core_hours(&records[0])
        );
        // The record was committed: restarting reports nothing again.
        drop(src);
        let mut src = source(&clock, root.path(), Some(state.path()));
        assert!(src.poll(100, 1 << 20, false).unwrap().events.is_empty());
        clock.run(MIN);
        assert!(src.poll(100, 1 << 20, false).unwrap().events.is_empty());
    }

    #[test]
    fn a_period_that_ended_while_the_agent_was_down_is_reported_at_start() {
        let root = fake_root(8);
        let state = tempfile::tempdir().unwrap();
        let clock = TestClock::new(T0);
        let mut src = source(&clock, root.path(), Some(state.path()));
        src.poll(100, 1 << 20, false).unwrap();
        clock.run(30 * MIN);
        let p = src.poll(100, 1 << 20, true).unwrap(); // a drain persists at once
        src.commit(&p.checkpoint).unwrap();
        drop(src);
        clock.jump(5 * HOUR);
        let mut src = source(&clock, root.path(), Some(state.path()));
        let p = src.poll(100, 1 << 20, false).unwrap();
        assert_eq!(p.events.len(), 1);
        assert_eq!(p.events[0].attrs["period_start"], Value::Int(T0));
        assert!((core_hours(&p.events[0]) - 4.0).abs() < 1e-9);
        // Not committed (not acknowledged): a restart sends it again.
        drop(src);
        let mut src = source(&clock, root.path(), Some(state.path()));
        let p = src.poll(100, 1 << 20, false).unwrap();
        assert_eq!(p.events.len(), 1);
        src.commit(&p.checkpoint).unwrap();
        drop(src);
        let mut src = source(&clock, root.path(), Some(state.path()));
        assert!(src.poll(100, 1 << 20, false).unwrap().events.is_empty());
    }

    #[test]
    fn a_clock_set_back_counts_nothing_twice() {
        let root = fake_root(1);
        let clock = TestClock::new(T0 + 50 * MIN);
        let mut src = source(&clock, root.path(), None);
        src.poll(100, 1 << 20, false).unwrap();
        clock.run(20 * MIN); // into the next hour: 10 min of the first reported
        let p = src.poll(100, 1 << 20, false).unwrap();
        assert_eq!(p.events.len(), 1);
        clock.jump(-2 * HOUR);
        let mut periods = Vec::new();
        for _ in 0..300 {
            clock.run(MIN);
            let p = src.poll(100, 1 << 20, false).unwrap();
            for e in &p.events {
                let Value::Int(start) = e.attrs["period_start"] else {
                    panic!()
                };
                periods.push((start, core_hours(e)));
            }
        }
        // Wall time up to T0+1h10 was accounted before the jump; after it,
        // counting resumes only from there: each hour is reported once, with
        // at most an hour in it.
        let starts: Vec<i64> = periods.iter().map(|p| p.0).collect();
        assert_eq!(starts, [T0 + HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR]);
        assert!(periods.iter().all(|p| p.1 <= 1.0 + 1e-9), "{periods:?}");
    }

    #[test]
    fn skip_to_end_forgets_the_current_accrual() {
        let root = fake_root(1);
        let state = tempfile::tempdir().unwrap();
        let clock = TestClock::new(T0);
        let mut src = source(&clock, root.path(), Some(state.path()));
        src.poll(100, 1 << 20, false).unwrap();
        clock.run(30 * MIN);
        src.poll(100, 1 << 20, false).unwrap();
        src.skip_to_end().unwrap();
        clock.run(10 * MIN);
        assert!(src.poll(100, 1 << 20, false).unwrap().events.is_empty());
        let records = run_for(&mut src, &clock, 21 * MIN, MIN);
        assert_eq!(records.len(), 1);
        assert!(
            (core_hours(&records[0]) - 20.0 / 60.0).abs() < 1e-6,
            "{}",
            core_hours(&records[0])
        );
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file() {
        let state = tempfile::tempdir().unwrap();
        std::fs::write(
            state.path().join(USAGE_STATE_FILE),
            "{\"version\":2,\"period_start\":0,\"accrued_us\":0}",
        )
        .unwrap();
        let clock = TestClock::new(T0);
        let e = UsageSource::new("i", "h", clock.clock())
            .with_state_dir(state.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(USAGE_STATE_FILE) && e.contains("version 2"),
            "{e}"
        );
    }

    #[test]
    fn short_periods_for_tests_and_cores_fallbacks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sys/devices/system/cpu")).unwrap();
        std::fs::write(dir.path().join("sys/devices/system/cpu/online"), "0-5\n").unwrap();
        let clock = TestClock::new(T0);
        let mut src = UsageSource::new("i", "h", clock.clock())
            .with_paths(InventoryPaths::under(dir.path()))
            .with_period(Duration::from_secs(10));
        src.poll(100, 1 << 20, false).unwrap();
        clock.run(25_000_000);
        let p = src.poll(100, 1 << 20, false).unwrap();
        assert_eq!(p.events.len(), 2);
        assert_eq!(p.events[0].attrs["cores"], Value::Int(6));
        assert_eq!(p.events[0].attrs["period_end"], Value::Int(T0 + 10_000_000));
        assert!((core_hours(&p.events[0]) - 6.0 * 10.0 / 3600.0).abs() < 1e-9);
        for e in &p.events {
            Registry::builtin().check_event(e).unwrap();
        }
    }
}
