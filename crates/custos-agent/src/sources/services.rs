//! The services source: processes, CPU time and memory grouped by systemd
//! service, every `interval_secs`.
//!
//! Each process of `/proc` is put in the service of its control group
//! (`/proc/<pid>/cgroup`): the deepest path component ending in `.service`
//! of the unified (v2) hierarchy, else of the `name=systemd` hierarchy, else
//! of any hierarchy (`0::/system.slice/nginx.service` → `nginx.service`).
//! Processes outside any service (scopes, slices, kernel threads) go to
//! `other`. One event per service goes to the table `service_usage`,
//! category performance, level enhanced, with the attributes:
//!
//! - `service`: the unit name (`nginx.service`) or `other`;
//! - `processes`: how many processes it has;
//! - `cpu_seconds`: CPU time (user + system, `/proc/<pid>/stat` fields 14
//!   and 15) its processes used since the previous report. A process seen
//!   for the first time was started after the previous report, so all its
//!   CPU time counts; processes that ended in between are not seen, and
//!   their last CPU time is lost. Absent in the first report after start
//!   (and after [`Source::skip_to_end`]), which has nothing to compare with.
//!   Ticks are converted at [`CLOCK_TICKS_PER_SEC`] per second;
//! - `memory_bytes`: resident memory of its processes (`/proc/<pid>/statm`
//!   resident pages × [`PAGE_SIZE`]); shared pages count in every process
//!   that maps them.
//!
//! Processes are identified by pid and start time, so a reused pid is a new
//! process. A process that ends during the scan (its files vanish) is
//! skipped; a fact that cannot be read is left out and collecting never
//! fails. The first report is taken at the first poll, then every
//! interval. Nothing is persisted, so commit is a no-op.

use super::inventory::{human_bytes, Clock};
use super::{take_limited, Checkpoint, Poll, Source, SourceError};
use crate::config::ServicesSourceConfig;
use custos_model::{Category, Event, Level, TableName, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The table service usage events go to.
pub const SERVICES_TABLE: &str = "service_usage";

/// The service of processes outside any systemd service.
pub const OTHER_SERVICE: &str = "other";

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`). It is 100
/// on every Linux architecture the agent supports; reading it with
/// `sysconf(_SC_CLK_TCK)` would need `unsafe` FFI, which the agent forbids.
pub const CLOCK_TICKS_PER_SEC: u64 = 100;

/// Bytes per page of `/proc/<pid>/statm`. 4096 on x86-64 and on the usual
/// arm64 kernels; on a kernel with larger pages memory is under-reported.
pub const PAGE_SIZE: u64 = 4096;

/// A process: (pid, start time in ticks since boot).
type ProcKey = (u32, u64);

/// One process as read from /proc.
#[derive(Clone, Debug, PartialEq)]
struct ProcInfo {
    key: ProcKey,
    service: String,
    /// utime + stime, in ticks.
    cpu_ticks: u64,
    rss_bytes: u64,
}

/// Per-service totals of one report.
#[derive(Clone, Debug, Default, PartialEq)]
struct ServiceTotals {
    processes: i64,
    /// CPU ticks since the previous report; `None` without one.
    cpu_ticks: Option<u64>,
    rss_bytes: u64,
}

/// Groups processes by systemd service every interval.
pub struct ServicesSource {
    cfg: ServicesSourceConfig,
    hostname: String,
    table: TableName,
    proc_root: PathBuf,
    clock: Clock,
    last_collected: Option<Instant>,
    /// CPU ticks of every process at the previous report.
    prev_cpu: Option<HashMap<ProcKey, u64>>,
    /// Events of the current report not yet returned.
    pending: VecDeque<Event>,
    seq: u64,
}

impl ServicesSource {
    /// A source reading the running system's `/proc`.
    pub fn new(cfg: ServicesSourceConfig, hostname: &str) -> Self {
        // Invariant: SERVICES_TABLE is a constant lowercase identifier.
        #[allow(clippy::expect_used)]
        let table =
            TableName::new(SERVICES_TABLE).expect("\"service_usage\" is a valid table name");
        Self {
            cfg,
            hostname: hostname.to_string(),
            table,
            proc_root: PathBuf::from("/proc"),
            clock: Arc::new(Instant::now),
            last_collected: None,
            prev_cpu: None,
            pending: VecDeque::new(),
            seq: 0,
        }
    }

    /// Read processes from `proc_root` instead of `/proc`.
    pub fn with_proc_root(mut self, proc_root: &Path) -> Self {
        self.proc_root = proc_root.to_path_buf();
        self
    }

    /// Use `clock` to decide when the interval has passed.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Take a report now: one event per service, sorted by service name.
    fn collect(&mut self) -> Vec<Event> {
        let procs = scan_processes(&self.proc_root);
        let totals = group(&procs, self.prev_cpu.as_ref());
        self.prev_cpu = Some(procs.iter().map(|p| (p.key, p.cpu_ticks)).collect());
        let time = custos_model::now_micros();
        totals
            .into_iter()
            .map(|(service, t)| {
                let mut a: BTreeMap<String, Value> = BTreeMap::new();
                a.insert("service".into(), Value::Str(service.clone()));
                a.insert("processes".into(), Value::Int(t.processes));
                a.insert("memory_bytes".into(), Value::from(t.rss_bytes));
                let mut message = format!(
                    "{service}: {} process{}, {} resident",
                    t.processes,
                    if t.processes == 1 { "" } else { "es" },
                    human_bytes(i64::try_from(t.rss_bytes).unwrap_or(i64::MAX))
                );
                if let Some(ticks) = t.cpu_ticks {
                    let secs = ticks as f64 / CLOCK_TICKS_PER_SEC as f64;
                    a.insert("cpu_seconds".into(), Value::Float(secs));
                    message.push_str(&format!(", {secs:.2} s CPU"));
                }
                Event {
                    table: self.table.clone(),
                    time,
                    level: Level::Enhanced,
                    category: Category::Performance,
                    host: self.hostname.clone(),
                    message,
                    attrs: a,
                }
            })
            .collect()
    }
}

impl Source for ServicesSource {
    fn name(&self) -> String {
        self.cfg.name.clone()
    }

    /// Returns the report (over several polls if the limits are small), then
    /// nothing, exhausted, until `interval_secs` has passed since it was
    /// taken. `drain` makes no difference.
    fn poll(
        &mut self,
        max_events: usize,
        max_bytes: usize,
        _drain: bool,
    ) -> Result<Poll, SourceError> {
        let now = (self.clock)();
        let due = self
            .last_collected
            .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.interval);
        if self.pending.is_empty() && due {
            self.pending = self.collect().into();
            self.last_collected = Some(now);
            tracing::debug!(source = %self.cfg.name, services = self.pending.len(), "services collected");
        }
        let events = take_limited(&mut self.pending, max_events, max_bytes);
        self.seq += 1;
        Ok(Poll {
            events,
            checkpoint: Checkpoint::new(&self.cfg.name, self.seq, None),
            exhausted: self.pending.is_empty(),
        })
    }

    fn commit(&mut self, checkpoint: &Checkpoint) -> Result<(), SourceError> {
        checkpoint.check_owner(&self.cfg.name)
    }

    /// Drop the report not yet returned and start over as at start: the
    /// next poll reports at once, without `cpu_seconds`.
    fn skip_to_end(&mut self) -> Result<(), SourceError> {
        self.pending.clear();
        self.prev_cpu = None;
        self.last_collected = None;
        Ok(())
    }
}


// ---------------------------------------------------------------------------
// Reading /proc.

/// Every process whose cgroup, stat and statm could be read.
fn scan_processes(proc_root: &Path) -> Vec<ProcInfo> {
    let rd = match std::fs::read_dir(proc_root) {
        Ok(rd) => rd,
        Err(e) => {
            tracing::debug!(dir = %proc_root.display(), error = %e, "cannot list processes");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in rd.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let dir = entry.path();
        // Any of these failing means the process ended mid-scan (or is not
        // readable): skip it.
        let Ok(cgroup) = std::fs::read_to_string(dir.join("cgroup")) else {
            continue;
        };
        let Some((start, cpu_ticks)) = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        else {
            continue;
        };
        let Some(rss_pages) = std::fs::read_to_string(dir.join("statm"))
            .ok()
            .and_then(|s| parse_statm(&s))
        else {
            continue;
        };
        out.push(ProcInfo {
            key: (pid, start),
            service: service_of(&cgroup).unwrap_or(OTHER_SERVICE).to_string(),
            cpu_ticks,
            rss_bytes: rss_pages.saturating_mul(PAGE_SIZE),
        });
    }
    out
}

/// Totals per service; CPU since `prev` when there is a previous report.
fn group(
    procs: &[ProcInfo],
    prev: Option<&HashMap<ProcKey, u64>>,
) -> BTreeMap<String, ServiceTotals> {
    let mut out: BTreeMap<String, ServiceTotals> = BTreeMap::new();
    for p in procs {
        let t = out.entry(p.service.clone()).or_default();
        t.processes += 1;
        t.rss_bytes = t.rss_bytes.saturating_add(p.rss_bytes);
        if let Some(prev) = prev {
            let before = prev.get(&p.key).copied().unwrap_or(0);
            let used = p.cpu_ticks.saturating_sub(before);
            t.cpu_ticks = Some(t.cpu_ticks.unwrap_or(0).saturating_add(used));
        }
    }
    out
}

/// The service of a `/proc/<pid>/cgroup` text (see the module
/// documentation), `None` outside any service.
fn service_of(cgroup: &str) -> Option<&str> {
    let mut lines: Vec<(u8, &str)> = cgroup
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let rank = if id == "0" && controllers.is_empty() {
                0
            } else if controllers == "name=systemd" {
                1
            } else {
                2
            };
            Some((rank, path))
        })
        .collect();
    lines.sort_by_key(|(rank, _)| *rank);
    lines.into_iter().find_map(|(_, path)| {
        path.rsplit('/')
            .find(|c| c.len() > ".service".len() && c.ends_with(".service"))
    })
}

/// (start time, utime + stime) from `/proc/<pid>/stat`. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after
/// its last `)`.
fn parse_stat(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): field n is f[n - 3].
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let start: u64 = f.get(19)?.parse().ok()?;
    Some((start, utime.checked_add(stime)?))
}

/// Resident pages: the second field of `/proc/<pid>/statm`.
fn parse_statm(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_model::registry::Registry;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    fn cfg(secs: u64) -> ServicesSourceConfig {
        ServicesSourceConfig {
            name: "services".into(),
            interval: Duration::from_secs(secs),
        }
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// A fake process: cgroup text, start time, utime, stime, resident pages.
    fn proc(root: &Path, pid: u32, cgroup: &str, start: u64, utime: u64, stime: u64, rss: u64) {
        write(root, &format!("{pid}/cgroup"), cgroup);
        write(
            root,
            &format!("{pid}/stat"),
            &format!("{pid} (my (odd) name) S 1 {pid} {pid} 0 -1 4194560 100 0 0 0 {utime} {stime} 0 0 20 0 1 0 {start} 1000000 {rss} 18446744073709551615\n"),
        );
        write(
            root,
            &format!("{pid}/statm"),
            &format!("1000 {rss} 100 10 0 200 0\n"),
        );
    }

    fn by_service(events: &[Event]) -> BTreeMap<String, &Event> {
        events
            .iter()
            .map(|e| match &e.attrs["service"] {
                Value::Str(s) => (s.clone(), e),
                v => panic!("{v:?}"),
            })
            .collect()
    }

    struct TestClock(Instant, Arc<AtomicU64>);
    impl TestClock {
        fn new() -> Self {
            Self(Instant::now(), Arc::new(AtomicU64::new(0)))
        }
        fn clock(&self) -> Clock {
            let (base, secs) = (self.0, Arc::clone(&self.1));
            Arc::new(move || base + Duration::from_secs(secs.load(Ordering::SeqCst)))
        }
        fn set(&self, s: u64) {
            self.1.store(s, Ordering::SeqCst);
        }
    }

    #[test]
    fn groups_processes_by_service_and_reports_cpu_since_the_previous_report() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        proc(root, 1, "0::/init.scope\n", 1, 50, 50, 100);
        proc(
            root,
            10,
            "0::/system.slice/nginx.service\n",
            100,
            100,
            100,
            1000,
        );
        proc(
            root,
            11,
            "0::/system.slice/nginx.service\n",
            101,
            10,
            0,
            500,
        );
        proc(
            root,
            12,
            "12:memory:/system.slice/db.service\n1:name=systemd:/system.slice/db.service\n0::/\n",
            102,
            0,
            0,
            10,
        );
        proc(
            root,
            13,
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/my-app.service\n",
            103,
            1,
            1,
            1,
        );
        proc(root, 2, "0::/\n", 0, 0, 0, 0); // a kernel thread
        write(root, "self/stat", "not a process dir\n");
        write(root, "99/cgroup", "0::/system.slice/gone.service\n"); // vanished mid-scan
        let t = TestClock::new();
        let mut src = ServicesSource::new(cfg(300), "h1")
            .with_proc_root(root)
            .with_clock(t.clock());
        let p = src.poll(100, 1 << 20, false).unwrap();
        assert!(p.exhausted);
        let reg = Registry::builtin();
        for e in &p.events {
            reg.check_event(e).unwrap();
            assert_eq!(e.table.as_str(), "service_usage");
            assert_eq!(
                (e.level, e.category),
                (Level::Enhanced, Category::Performance)
            );
            assert!(
                !e.attrs.contains_key("cpu_seconds"),
                "nothing to compare with yet"
            );
        }
        let m = by_service(&p.events);
        assert_eq!(
            m.keys().map(String::as_str).collect::<Vec<_>>(),
            ["db.service", "my-app.service", "nginx.service", "other"]
        );
        assert_eq!(m["nginx.service"].attrs["processes"], Value::Int(2));
        assert_eq!(
            m["nginx.service"].attrs["memory_bytes"],
            Value::Int(1500 * 4096)
        );
        assert_eq!(m["other"].attrs["processes"], Value::Int(2));
        assert_eq!(m["db.service"].attrs["processes"], Value::Int(1));

        // 300 s later: nginx used 2 s more, pid 11 was replaced by a new
        // process with the same pid (counts in full), db was idle.
        proc(
            root,
            10,
            "0::/system.slice/nginx.service\n",
            100,
            200,
            200,
            1000,
        );
        proc(
            root,
            11,
            "0::/system.slice/nginx.service\n",
            5000,
            30,
            20,
            500,
        );
        t.set(299);
        assert!(src.poll(100, 1 << 20, false).unwrap().events.is_empty());
        t.set(300);
        let p = src.poll(100, 1 << 20, false).unwrap();
        let m = by_service(&p.events);
        assert_eq!(m["nginx.service"].attrs["cpu_seconds"], Value::Float(2.5));
        assert_eq!(m["db.service"].attrs["cpu_seconds"], Value::Float(0.0));
        assert!(
            m["nginx.service"].message.contains("2 processes"),
            "{}",
            m["nginx.service"].message
        );
        for e in &p.events {
            reg.check_event(e).unwrap();
        }
    }

    #[test]
    fn limits_spread_a_report_over_polls() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5u32 {
            proc(
                dir.path(),
                100 + i,
                &format!("0::/system.slice/s{i}.service\n"),
                1,
                0,
                0,
                1,
            );
        }
        let mut src = ServicesSource::new(cfg(300), "h").with_proc_root(dir.path());
        let p = src.poll(2, 1 << 20, false).unwrap();
        assert_eq!(p.events.len(), 2);
        assert!(!p.exhausted);
        let p = src.poll(10, 1 << 20, false).unwrap();
        assert_eq!(p.events.len(), 3);
        assert!(p.exhausted);
    }

    #[test]
    fn missing_or_garbled_files_skip_the_process_without_failing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        proc(root, 10, "0::/system.slice/ok.service\n", 1, 1, 1, 1);
        write(root, "11/cgroup", "0::/system.slice/bad.service\n");
        write(root, "11/stat", "11 (x) S garbage\n");
        write(root, "11/statm", "1 2 3\n");
        write(root, "12/cgroup", "garbage without colons\n");
        write(
            root,
            "12/stat",
            &std::fs::read_to_string(root.join("10/stat")).unwrap(),
        );
        write(root, "12/statm", "x\n");
        let mut src = ServicesSource::new(cfg(300), "h").with_proc_root(root);
        let m = src.poll(100, 1 << 20, false).unwrap().events;
        assert_eq!(by_service(&m).keys().collect::<Vec<_>>(), ["ok.service"]);
        let mut src = ServicesSource::new(cfg(300), "h").with_proc_root(&root.join("missing"));
        assert!(src.poll(100, 1 << 20, false).unwrap().events.is_empty());
    }

    #[test]
    fn skip_to_end_drops_the_pending_report_and_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..3u32 {
            proc(
                dir.path(),
                100 + i,
                &format!("0::/system.slice/s{i}.service\n"),
                1,
                0,
                0,
                1,
            );
        }
        let t = TestClock::new();
        let mut src = ServicesSource::new(cfg(300), "h")
            .with_proc_root(dir.path())
            .with_clock(t.clock());
        assert_eq!(src.poll(1, 1 << 20, false).unwrap().events.len(), 1);
        t.set(10);
        src.skip_to_end().unwrap();
        let p = src.poll(100, 1 << 20, false).unwrap();
        assert_eq!(p.events.len(), 3, "a fresh report at once");
        assert!(p
            .events
            .iter()
            .all(|e| !e.attrs.contains_key("cpu_seconds")));
    }

    #[test]
    fn parses_stat_with_parentheses_in_the_name_and_cgroup_v1_v2() {
        let stat = "42 (a) b) c) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20\n";
        // After the last ')': R=3, utime=f14 -> 11, stime=f15 -> 12, start=f22 -> 19.
        assert_eq!(parse_stat(stat), Some((19, 11 + 12)));
        assert_eq!(parse_stat("no paren"), None);
        assert_eq!(
            service_of("0::/system.slice/a.service/sub\n"),
            Some("a.service")
        );
        assert_eq!(service_of("0::/system.slice\n"), None);
        assert_eq!(service_of("0::/.service\n"), None);
        assert_eq!(
            service_of("3:cpu:/system.slice/x.service\n1:name=systemd:/system.slice/y.service\n"),
            Some("y.service")
        );
    }

    #[test]
    fn reads_this_machine() {
        let mut src = ServicesSource::new(cfg(300), "h");
        let events = src.poll(100_000, usize::MAX, false).unwrap().events;
        assert!(!events.is_empty(), "at least this process is somewhere");
        let total: i64 = events
            .iter()
            .map(|e| match e.attrs["processes"] {
                Value::Int(n) => n,
                _ => 0,
            })
            .sum();
        assert!(total >= 1);
        for e in &events {
            Registry::builtin().check_event(e).unwrap();
        }
    }
}
