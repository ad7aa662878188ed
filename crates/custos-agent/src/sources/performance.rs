//! The performance source: one sample of the host's CPU, load, memory, disk
//! and network use every `interval_secs`.
//!
//! Events go to the table `performance`, category performance, level
//! enhanced, with the attributes:
//!
//! - `interval_secs`: the configured interval;
//! - `cpu_percent`: share of time all CPUs were busy over the interval,
//!   0-100, from the `cpu` line of `/proc/stat` (busy: user, nice, system,
//!   irq, softirq and steal; idle: idle and iowait; guest time is already
//!   counted in user and nice);
//! - `load1`: the one-minute load average (`/proc/loadavg`), at sample time;
//! - `memory_total_bytes` and `memory_used_bytes` (`MemTotal` minus
//!   `MemAvailable` of `/proc/meminfo`), at sample time; `memory_used_bytes`
//!   is absent on kernels without `MemAvailable` (before 3.14);
//! - `disk_read_bytes_per_sec`, `disk_write_bytes_per_sec`: sectors read and
//!   written (× 512 bytes, the unit of `/proc/diskstats` whatever the
//!   device's sector size) by whole disks over the interval. Whole disks are
//!   the devices listed in `/sys/block` (partitions are not), except loop,
//!   ram, zram, device-mapper (`dm-*`) and software RAID (`md*`) devices,
//!   which sit on top of the disks and would count their I/O twice. Without
//!   a readable `/sys/block`, partitions are recognised by name (`sda1`,
//!   `nvme0n1p1`, `mmcblk0p1`);
//! - `net_rx_bytes_per_sec`, `net_tx_bytes_per_sec`: bytes received and sent
//!   over the interval by every interface of `/proc/net/dev` but `lo`
//!   (virtual interfaces such as bridges included).
//!
//! Rates need two readings: the first poll only reads the counters (it
//! primes them) and emits nothing; each later sample covers the time since
//! the previous reading, measured on the monotonic clock. So the first
//! sample arrives one interval after start. A counter that went backwards
//! (a device removed, a counter reset) leaves its rate out of that sample;
//! any fact that cannot be read is left out, and collecting never fails.
//! Nothing is persisted (a restart primes again), so commit is a no-op.
//! [`Source::skip_to_end`] forgets the counters: the next poll primes again.

use super::inventory::{dir_names, field, human_bytes, read_trimmed, Clock, InventoryPaths};
use super::{Checkpoint, Poll, Source, SourceError};
use crate::config::PerformanceSourceConfig;
use custos_model::{Category, Event, Level, TableName, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// The table performance samples go to.
pub const PERFORMANCE_TABLE: &str = "performance";

/// Bytes per sector in `/proc/diskstats` (fixed by the kernel).
const SECTOR_BYTES: u64 = 512;

/// Cumulative CPU times of the `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CpuTimes {
    total: u64,
    idle: u64,
}

/// One reading of the cumulative counters.
#[derive(Clone, Debug)]
struct Counters {
    at: Instant,
    cpu: Option<CpuTimes>,
    /// (bytes read, bytes written) by whole disks.
    disk: Option<(u64, u64)>,
    /// (bytes received, bytes sent) by every interface but lo.
    net: Option<(u64, u64)>,
}

/// Samples CPU, load, memory, disk and network use every interval.
pub struct PerformanceSource {
    cfg: PerformanceSourceConfig,
    hostname: String,
    table: TableName,
    paths: InventoryPaths,
    clock: Clock,
    /// The previous reading; `None` until the counters are primed.
    prev: Option<Counters>,
    /// When the next sample is due.
    next_due: Option<Instant>,
    seq: u64,
}

impl PerformanceSource {
    /// A source reading the running system.
    pub fn new(cfg: PerformanceSourceConfig, hostname: &str) -> Self {
        // Invariant: PERFORMANCE_TABLE is a constant lowercase identifier.
        #[allow(clippy::expect_used)]
        let table =
            TableName::new(PERFORMANCE_TABLE).expect("\"performance\" is a valid table name");
        Self {
            cfg,
            hostname: hostname.to_string(),
            table,
            paths: InventoryPaths::system(),
            clock: Arc::new(Instant::now),
            prev: None,
            next_due: None,
            seq: 0,
        }
    }

    /// Read from `paths` (its `proc_root` and `sys_root`) instead of the
    /// running system.
    pub fn with_paths(mut self, paths: InventoryPaths) -> Self {
        self.paths = paths;
        self
    }

    /// Use `clock` for the interval and the rates.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn read_counters(&self, at: Instant) -> Counters {
        let proc_root = &self.paths.proc_root;
        let cpu = std::fs::read_to_string(proc_root.join("stat"))
            .ok()
            .and_then(|t| parse_cpu(&t));
        let whole = whole_disks(&self.paths.sys_root);
        let disk = std::fs::read_to_string(proc_root.join("diskstats"))
            .ok()
            .and_then(|t| parse_diskstats(&t, |name| is_whole_disk(name, whole.as_deref())));
        let net = std::fs::read_to_string(proc_root.join("net/dev"))
            .ok()
            .and_then(|t| parse_net_dev(&t));
        Counters { at, cpu, disk, net }
    }

    /// The sample for the counters `prev` → `cur`, plus the instantaneous
    /// load and memory.
    fn sample(&self, prev: &Counters, cur: &Counters) -> Event {
        let mut a: BTreeMap<String, Value> = BTreeMap::new();
        let secs = i64::try_from(self.cfg.interval.as_secs()).unwrap_or(i64::MAX);
        a.insert("interval_secs".into(), Value::Int(secs));
        let mut parts: Vec<String> = Vec::new();
        if let (Some(p), Some(c)) = (prev.cpu, cur.cpu) {
            if let (Some(total), Some(idle)) =
                (c.total.checked_sub(p.total), c.idle.checked_sub(p.idle))
            {
                if total > 0 && idle <= total {
                    let pct = 100.0 * (total - idle) as f64 / total as f64;
                    a.insert("cpu_percent".into(), Value::Float(pct));
                    parts.push(format!("cpu {pct:.1}%"));
                }
            }
        }
        if let Some(load) =
            read_trimmed(&self.paths.proc_root.join("loadavg")).and_then(|t| parse_load1(&t))
        {
            a.insert("load1".into(), Value::Float(load));
            parts.push(format!("load {load:.2}"));
        }
        let meminfo =
            std::fs::read_to_string(self.paths.proc_root.join("meminfo")).unwrap_or_default();
        let (total, used) = parse_memory(&meminfo);
        if let Some(t) = total {
            a.insert("memory_total_bytes".into(), Value::Int(t));
        }
        if let Some(u) = used {
            a.insert("memory_used_bytes".into(), Value::Int(u));
        }
        match (used, total) {
            (Some(u), Some(t)) => {
                parts.push(format!("memory {} of {}", human_bytes(u), human_bytes(t)))
            }
            (None, Some(t)) => parts.push(format!("memory {}", human_bytes(t))),
            _ => {}
        }
        let elapsed = cur.at.saturating_duration_since(prev.at).as_secs_f64();
        let rate = |p: u64, c: u64| {
            (elapsed > 0.0)
                .then(|| c.checked_sub(p))
                .flatten()
                .map(|d| d as f64 / elapsed)
        };
        if let (Some((pr, pw)), Some((cr, cw))) = (prev.disk, cur.disk) {
            if let (Some(r), Some(w)) = (rate(pr, cr), rate(pw, cw)) {
                a.insert("disk_read_bytes_per_sec".into(), Value::Float(r));
                a.insert("disk_write_bytes_per_sec".into(), Value::Float(w));
                parts.push(format!(
                    "disk read {}/s write {}/s",
                    human_rate(r),
                    human_rate(w)
                ));
            }
        }
        if let (Some((prx, ptx)), Some((crx, ctx))) = (prev.net, cur.net) {
            if let (Some(rx), Some(tx)) = (rate(prx, crx), rate(ptx, ctx)) {
                a.insert("net_rx_bytes_per_sec".into(), Value::Float(rx));
                a.insert("net_tx_bytes_per_sec".into(), Value::Float(tx));
                parts.push(format!(
                    "net rx {}/s tx {}/s",
                    human_rate(rx),
                    human_rate(tx)
                ));
            }
        }
        let message = if parts.is_empty() {
            "performance sample (no counters readable)".to_string()
        } else {
            parts.join(", ")
        };
        Event {
            table: self.table.clone(),
            time: custos_model::now_micros(),
            level: Level::Enhanced,
            category: Category::Performance,
            host: self.hostname.clone(),
            message,
            attrs: a,
        }
    }
}

impl Source for PerformanceSource {
    fn name(&self) -> String {
        self.cfg.name.clone()
    }

    /// The first poll primes the counters and returns nothing; afterwards a
    /// poll returns one sample when the interval has passed since the
    /// previous one, else nothing. Always exhausted; `drain` and the limits
    /// make no difference (a sample is one event).
    fn poll(
        &mut self,
        _max_events: usize,
        _max_bytes: usize,
        _drain: bool,
    ) -> Result<Poll, SourceError> {
        let now = (self.clock)();
        let interval = self.cfg.interval;
        let mut events = Vec::new();
        match (&self.prev, self.next_due) {
            (Some(prev), Some(due)) if now >= due => {
                let cur = self.read_counters(now);
                events.push(self.sample(prev, &cur));
                self.prev = Some(cur);
                // Keep the schedule unless the source fell behind by more
                // than an interval.
                let next = due + interval;
                self.next_due = Some(if next > now { next } else { now + interval });
            }
            (Some(_), Some(_)) => {}
            _ => {
                self.prev = Some(self.read_counters(now));
                self.next_due = Some(now + interval);
                tracing::debug!(source = %self.cfg.name, "performance counters primed");
            }
        }
        self.seq += 1;
        Ok(Poll {
            events,
            checkpoint: Checkpoint::new(&self.cfg.name, self.seq, None),
            exhausted: true,
        })
    }

    fn commit(&mut self, checkpoint: &Checkpoint) -> Result<(), SourceError> {
        checkpoint.check_owner(&self.cfg.name)
    }

    /// Forget the counters: the next poll primes them again, so the next
    /// sample covers only time after it.
    fn skip_to_end(&mut self) -> Result<(), SourceError> {
        self.prev = None;
        self.next_due = None;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Parsers (pure).

fn human_rate(bytes_per_sec: f64) -> String {
    if bytes_per_sec.is_finite() && bytes_per_sec >= 0.0 && bytes_per_sec < i64::MAX as f64 {
        human_bytes(bytes_per_sec as i64)
    } else {
        "?".to_string()
    }
}

/// The aggregate `cpu` line of `/proc/stat`.
fn parse_cpu(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map_while(|f| f.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest, guest_nice are
    // included in user and nice).
    let total = v
        .iter()
        .take(8)
        .try_fold(0u64, |acc, x| acc.checked_add(*x))?;
    let idle = v[3].checked_add(v.get(4).copied().unwrap_or(0))?;
    Some(CpuTimes { total, idle })
}

/// The first field of `/proc/loadavg`.
fn parse_load1(text: &str) -> Option<f64> {
    let v: f64 = text.split_whitespace().next()?.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// (MemTotal, MemTotal - MemAvailable) in bytes.
fn parse_memory(meminfo: &str) -> (Option<i64>, Option<i64>) {
    let kb = |key: &str| {
        field(meminfo, key, ':')
            .and_then(|v| v.trim_end_matches("kB").trim().parse::<i64>().ok())
            .and_then(|kb| kb.checked_mul(1024))
    };
    let total = kb("MemTotal");
    let used = match (total, kb("MemAvailable")) {
        (Some(t), Some(a)) if a <= t => Some(t - a),
        _ => None,
    };
    (total, used)
}

/// The whole disks listed in `<sys>/block`, `None` when it cannot be listed.
fn whole_disks(sys_root: &Path) -> Option<Vec<String>> {
    let names = dir_names(&sys_root.join("block"));
    (!names.is_empty()).then_some(names)
}

/// Is the device `name` a whole disk whose I/O counts? `whole` is the list
/// of `/sys/block`, when readable.
fn is_whole_disk(name: &str, whole: Option<&[String]>) -> bool {
    const LAYERED: [&str; 5] = ["loop", "ram", "zram", "dm-", "md"];
    if LAYERED.iter().any(|p| name.starts_with(p)) {
        return false;
    }
    match whole {
        Some(list) => list.iter().any(|n| n == name),
        None => !looks_like_partition(name),
    }
}

/// Partition names: `sda1`, `vdb2`, `xvda1`, `hda3`, `nvme0n1p1`, `mmcblk0p1`.
fn looks_like_partition(name: &str) -> bool {
    let ends_in_digit = name.ends_with(|c: char| c.is_ascii_digit());
    if ["sd", "hd", "vd", "xvd"]
        .iter()
        .any(|p| name.starts_with(p))
    {
        return ends_in_digit;
    }
    if name.starts_with("nvme") || name.starts_with("mmcblk") {
        // A 'p' followed by digits at the end, after a digit.
        let trimmed = name.trim_end_matches(|c: char| c.is_ascii_digit());
        return ends_in_digit
            && trimmed.ends_with('p')
            && trimmed[..trimmed.len() - 1].ends_with(|c: char| c.is_ascii_digit());
    }
    false
}

/// Total (bytes read, bytes written) of the devices `whole` accepts.
fn parse_diskstats(text: &str, whole: impl Fn(&str) -> bool) -> Option<(u64, u64)> {
    let mut found = false;
    let (mut read, mut written) = (0u64, 0u64);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || !whole(f[2]) {
            continue;
        }
        let (Ok(r), Ok(w)) = (f[5].parse::<u64>(), f[9].parse::<u64>()) else {
            continue;
        };
        read = read.saturating_add(r.saturating_mul(SECTOR_BYTES));
        written = written.saturating_add(w.saturating_mul(SECTOR_BYTES));
        found = true;
    }
    found.then_some((read, written))
}

/// Total (bytes received, bytes sent) of every interface but `lo`.
fn parse_net_dev(text: &str) -> Option<(u64, u64)> {
    let mut found = false;
    let (mut rx, mut tx) = (0u64, 0u64);
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name == "lo" || name.is_empty() || name.contains('|') {
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() < 9 {
            continue;
        }
        let (Ok(r), Ok(t)) = (f[0].parse::<u64>(), f[8].parse::<u64>()) else {
            continue;
        };
        rx = rx.saturating_add(r);
        tx = tx.saturating_add(t);
        found = true;
    }
    found.then_some((rx, tx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_model::registry::Registry;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    fn cfg(secs: u64) -> PerformanceSourceConfig {
        PerformanceSourceConfig {
            name: "performance".into(),
            interval: Duration::from_secs(secs),
        }
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    const NET_HEADER: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

    /// Counters at "time 0".
    fn tree_at_start(root: &Path) {
        write(
            root,
            "proc/stat",
            "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\nbtime 1\n",
        );
        write(root, "proc/loadavg", "0.52 0.40 0.30 1/200 12345\n");
        write(
            root,
            "proc/meminfo",
            "MemTotal:       16000000 kB\nMemFree:  1000 kB\nMemAvailable:   12000000 kB\n",
        );
        write(
            root,
            "proc/diskstats",
            "   8       0 sda 100 0 1000 0 50 0 2000 0 0 0 0\n   8       1 sda1 100 0 999 0 50 0 999 0 0 0 0\n   7       0 loop0 9 0 9999 0 0 0 9999 0 0 0 0\n 259       0 nvme0n1 10 0 100 0 10 0 100 0 0 0 0\n 253       0 dm-0 1 0 5000 0 1 0 5000 0 0 0 0\n",
        );
        write(
            root,
            "proc/net/dev",
            &format!("{NET_HEADER}    lo: 9999 1 0 0 0 0 0 0 9999 1 0 0 0 0 0 0\n  eth0: 1000 10 0 0 0 0 0 0 500 5 0 0 0 0 0 0\n wlan0:100 1 0 0 0 0 0 0 50 1 0 0 0 0 0 0\n"),
        );
        for d in ["sda", "nvme0n1", "loop0", "dm-0"] {
            write(root, &format!("sys/block/{d}/size"), "1\n");
        }
    }

    /// Counters 60 s later.
    fn tree_later(root: &Path) {
        // 1000 more ticks, of which 250 idle (200 idle + 50 iowait): 75% busy.
        write(root, "proc/stat", "cpu  500 0 450 900 150 0 0 0 0 0\n");
        write(
            root,
            "proc/diskstats",
            // sda: +1200 sectors read, +600 written; nvme0n1: +0 / +120.
            "   8       0 sda 200 0 2200 0 60 0 2600 0 0 0 0\n   8       1 sda1 200 0 99999 0 60 0 99999 0 0 0 0\n   7       0 loop0 9 0 99999 0 0 0 99999 0 0 0 0\n 259       0 nvme0n1 10 0 100 0 20 0 220 0 0 0 0\n 253       0 dm-0 1 0 99999 0 1 0 99999 0 0 0 0\n",
        );
        write(
            root,
            "proc/net/dev",
            &format!("{NET_HEADER}    lo: 99999999 1 0 0 0 0 0 0 99999999 1 0 0 0 0 0 0\n  eth0: 7000 10 0 0 0 0 0 0 1700 5 0 0 0 0 0 0\n wlan0:100 1 0 0 0 0 0 0 50 1 0 0 0 0 0 0\n"),
        );
    }

    struct TestClock {
        base: Instant,
        secs: Arc<AtomicU64>,
    }

    impl TestClock {
        fn new() -> Self {
            Self {
                base: Instant::now(),
                secs: Arc::new(AtomicU64::new(0)),
            }
        }
        fn clock(&self) -> Clock {
            let (base, secs) = (self.base, Arc::clone(&self.secs));
            Arc::new(move || base + Duration::from_secs(secs.load(Ordering::SeqCst)))
        }
        fn set(&self, s: u64) {
            self.secs.store(s, Ordering::SeqCst);
        }
    }

    fn float(e: &Event, k: &str) -> f64 {
        match e.attrs.get(k) {
            Some(Value::Float(f)) => *f,
            other => panic!("{k}: {other:?}"),
        }
    }

    #[test]
    fn first_poll_primes_then_a_sample_per_interval_with_rates() {
        let dir = tempfile::tempdir().unwrap();
        tree_at_start(dir.path());
        let t = TestClock::new();
        let mut src = PerformanceSource::new(cfg(60), "h1")
            .with_paths(InventoryPaths::under(dir.path()))
            .with_clock(t.clock());
        let p = src.poll(10, 1 << 20, false).unwrap();
        assert!(p.events.is_empty() && p.exhausted, "the first poll primes");
        t.set(59);
        assert!(src.poll(10, 1 << 20, false).unwrap().events.is_empty());
        tree_later(dir.path());
        t.set(60);
        let p = src.poll(10, 1 << 20, false).unwrap();
        assert_eq!(p.events.len(), 1);
        let e = &p.events[0];
        Registry::builtin().check_event(e).unwrap();
        assert_eq!(e.table.as_str(), "performance");
        assert_eq!(
            (e.level, e.category),
            (Level::Enhanced, Category::Performance)
        );
        assert_eq!(e.host, "h1");
        assert_eq!(e.attrs["interval_secs"], Value::Int(60));
        assert!((float(e, "cpu_percent") - 75.0).abs() < 1e-9);
        assert!((float(e, "load1") - 0.52).abs() < 1e-9);
        assert_eq!(e.attrs["memory_total_bytes"], Value::Int(16_000_000 * 1024));
        assert_eq!(e.attrs["memory_used_bytes"], Value::Int(4_000_000 * 1024));
        // Whole disks only: sda and nvme0n1 (not sda1, loop0, dm-0).
        assert!((float(e, "disk_read_bytes_per_sec") - 1200.0 * 512.0 / 60.0).abs() < 1e-6);
        assert!((float(e, "disk_write_bytes_per_sec") - 720.0 * 512.0 / 60.0).abs() < 1e-6);
        // eth0 and wlan0, not lo.
        assert!((float(e, "net_rx_bytes_per_sec") - 6000.0 / 60.0).abs() < 1e-9);
        assert!((float(e, "net_tx_bytes_per_sec") - 1200.0 / 60.0).abs() < 1e-9);
        assert!(e.message.contains("cpu 75.0%"), "{}", e.message);
        // Next sample one interval later: no change, zero rates.
        t.set(119);
        assert!(src.poll(10, 1 << 20, false).unwrap().events.is_empty());
        t.set(120);
        let p = src.poll(10, 1 << 20, false).unwrap();
        assert_eq!(p.events.len(), 1);
        assert_eq!(float(&p.events[0], "disk_read_bytes_per_sec"), 0.0);
        assert!(
            !p.events[0].attrs.contains_key("cpu_percent"),
            "no CPU time passed"
        );
        src.commit(&p.checkpoint).unwrap();
    }

    #[test]
    fn missing_and_garbled_files_leave_facts_out_without_failing() {
        let dir = tempfile::tempdir().unwrap();
        let t = TestClock::new();
        let mut src = PerformanceSource::new(cfg(10), "h")
            .with_paths(InventoryPaths::under(dir.path()))
            .with_clock(t.clock());
        assert!(src.poll(1, 1, false).unwrap().events.is_empty());
        t.set(10);
        let p = src.poll(1, 1, false).unwrap();
        let e = &p.events[0];
        Registry::builtin().check_event(e).unwrap();
        assert_eq!(e.attrs.keys().collect::<Vec<_>>(), ["interval_secs"]);
        // Garbled content.
        write(dir.path(), "proc/stat", "cpu  x y z\n");
        write(dir.path(), "proc/loadavg", "nan\n");
        write(dir.path(), "proc/meminfo", "MemTotal: lots\n");
        write(
            dir.path(),
            "proc/diskstats",
            "garbage\n8 0 sda a b c d e f g\n",
        );
        write(dir.path(), "proc/net/dev", "eth0: 1 2\n");
        t.set(20);
        let e = &src.poll(1, 1, false).unwrap().events[0];
        Registry::builtin().check_event(e).unwrap();
        assert_eq!(e.attrs.keys().collect::<Vec<_>>(), ["interval_secs"]);
        // Counters that go backwards leave the rate out.
        tree_later(dir.path());
        t.set(30);
        src.poll(1, 1, false).unwrap();
        tree_at_start(dir.path());
        t.set(40);
        let e = &src.poll(1, 1, false).unwrap().events[0];
        assert!(!e.attrs.contains_key("disk_read_bytes_per_sec"));
        assert!(!e.attrs.contains_key("net_rx_bytes_per_sec"));
        assert!(!e.attrs.contains_key("cpu_percent"));
        assert!(e.attrs.contains_key("memory_used_bytes"));
    }

    #[test]
    fn skip_to_end_primes_again_so_the_next_sample_starts_fresh() {
        let dir = tempfile::tempdir().unwrap();
        tree_at_start(dir.path());
        let t = TestClock::new();
        let mut src = PerformanceSource::new(cfg(60), "h")
            .with_paths(InventoryPaths::under(dir.path()))
            .with_clock(t.clock());
        src.poll(1, 1, false).unwrap();
        tree_later(dir.path()); // activity while telemetry was disabled
        t.set(100);
        src.skip_to_end().unwrap();
        assert!(
            src.poll(1, 1, false).unwrap().events.is_empty(),
            "primes again"
        );
        t.set(160);
        let p = src.poll(1, 1, false).unwrap();
        assert_eq!(float(&p.events[0], "disk_read_bytes_per_sec"), 0.0);
        assert_eq!(float(&p.events[0], "net_rx_bytes_per_sec"), 0.0);
    }

    #[test]
    fn partitions_are_recognised_by_name_without_sysfs() {
        for p in ["sda1", "vdb2", "xvda1", "hda3", "nvme0n1p1", "mmcblk0p12"] {
            assert!(looks_like_partition(p), "{p}");
            assert!(!is_whole_disk(p, None), "{p}");
        }
        for d in ["sda", "vdb", "xvda", "nvme0n1", "mmcblk0", "sr0"] {
            assert!(!looks_like_partition(d), "{d}");
        }
        for d in ["loop0", "ram1", "zram0", "dm-3", "md127"] {
            assert!(!is_whole_disk(d, None), "{d}");
        }
    }

    #[test]
    fn samples_this_machine() {
        let t = TestClock::new();
        let mut src = PerformanceSource::new(cfg(1), "h").with_clock(t.clock());
        src.poll(1, 1, false).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        t.set(1);
        let e = &src.poll(1, 1, false).unwrap().events[0];
        Registry::builtin().check_event(e).unwrap();
        let Some(Value::Int(total)) = e.attrs.get("memory_total_bytes") else {
            panic!("no memory in {:?}", e.attrs)
        };
        assert!(*total > 16 << 20);
        assert!(e.attrs.contains_key("load1"));
    }
}
