//! The inventory source: hardware and operating system facts read from
//! `/proc`, `/sys` and `os-release`.
//!
//! Events go to the table `inventory`, category inventory, level basic, and
//! carry an attribute `kind`:
//!
//! - `kind = "host"` (one event): `os_name` (os-release `PRETTY_NAME`, else
//!   `NAME`), `os_version` (`VERSION_ID`), `kernel` (`/proc/sys/kernel/osrelease`),
//!   `cpu_model`, `cpu_cores` (logical CPUs), `memory_total_bytes`
//!   (`/proc/meminfo` MemTotal), `boot_time` (microseconds since the Unix
//!   epoch, from `/proc/stat` btime), `vendor` and `model` (DMI
//!   `/sys/class/dmi/id/sys_vendor` and `product_name`; absent when
//!   unreadable or empty, as on most non-x86 machines), `nic_count` (the
//!   physical network interfaces: those of `/sys/class/net` with a
//!   `device` link, so bridges, veth pairs, tunnels and `lo` do not count).
//! - `kind = "disk"` (one per block device in `/sys/block`, except loop, ram
//!   and zram devices): `disk_name`, `disk_size_bytes`, `disk_rotational`
//!   (bool), `disk_type`, `disk_model` when the device reports one.
//!   `disk_type` is decided in this order: `nvme` for `nvme*` names;
//!   `virtual` for paravirtual and layered devices (`vd*` virtio, `xvd*`
//!   Xen, `dm-*` device mapper, `md*` software RAID), whose rotational flag
//!   says nothing about the hardware below; else `ssd` when
//!   `queue/rotational` is 0, `hdd` when it is 1, `unknown` otherwise.
//! - `kind = "nic"` (one per interface in `/sys/class/net`, except `lo`):
//!   `nic_name`, `nic_speed_mbps` (absent when unknown), `nic_operstate`.
//!
//! A fact that cannot be read is left out; collecting never fails. The
//! message is a short human summary. The snapshot is taken at the first poll
//! and again every `interval_secs`; nothing is persisted (a restart collects
//! again), so commit is a no-op. [`Source::skip_to_end`] drops the snapshot
//! not yet returned and takes a fresh one at the next poll.

use super::{Checkpoint, Poll, Source, SourceError};
use crate::config::InventorySourceConfig;
use custos_model::{Category, Event, Level, TableName, Value};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The table inventory events go to.
pub const INVENTORY_TABLE: &str = "inventory";

/// A monotonic clock, injectable for tests.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Where the inventory is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InventoryPaths {
    /// The procfs root (`/proc`).
    pub proc_root: PathBuf,
    /// The sysfs root (`/sys`).
    pub sys_root: PathBuf,
    /// os-release files, the first readable one wins
    /// (`/etc/os-release`, `/usr/lib/os-release`).
    pub os_release: Vec<PathBuf>,
}

impl InventoryPaths {
    /// The running system's paths.
    pub fn system() -> Self {
        Self::under(Path::new("/"))
    }

    /// The same layout below `root` (for a fake tree, or a host file system
    /// mounted in a container).
    pub fn under(root: &Path) -> Self {
        Self {
            proc_root: root.join("proc"),
            sys_root: root.join("sys"),
            os_release: vec![root.join("etc/os-release"), root.join("usr/lib/os-release")],
        }
    }
}

impl Default for InventoryPaths {
    fn default() -> Self {
        Self::system()
    }
}

/// Collects the host inventory every `interval`.
pub struct InventorySource {
    cfg: InventorySourceConfig,
    hostname: String,
    table: TableName,
    paths: InventoryPaths,
    clock: Clock,
    last_collected: Option<Instant>,
    /// Events of the current snapshot not yet returned.
    pending: VecDeque<Event>,
    seq: u64,
}

impl InventorySource {
    /// A source reading the running system.
    pub fn new(cfg: InventorySourceConfig, hostname: &str) -> Self {
        // Invariant: INVENTORY_TABLE is a constant lowercase identifier.
        #[allow(clippy::expect_used)]
        let table = TableName::new(INVENTORY_TABLE).expect("\"inventory\" is a valid table name");
        Self {
            cfg,
            hostname: hostname.to_string(),
            table,
            paths: InventoryPaths::system(),
            clock: Arc::new(Instant::now),
            last_collected: None,
            pending: VecDeque::new(),
            seq: 0,
        }
    }

    /// Read from `paths` instead of the running system.
    pub fn with_paths(mut self, paths: InventoryPaths) -> Self {
        self.paths = paths;
        self
    }

    /// Use `clock` to decide when the interval has passed.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Take a snapshot now: the host event, then disks, then NICs.
    pub fn collect(&self) -> Vec<Event> {
        let time = custos_model::now_micros();
        let mut events = Vec::new();
        let mut push = |message: String, attrs: BTreeMap<String, Value>| {
            events.push(Event {
                table: self.table.clone(),
                time,
                level: Level::Basic,
                category: Category::Inventory,
                host: self.hostname.clone(),
                message,
                attrs,
            });
        };
        let (msg, attrs) = host_facts(&self.paths);
        push(msg, attrs);
        for (msg, attrs) in disk_facts(&self.paths.sys_root) {
            push(msg, attrs);
        }
        for (msg, attrs) in nic_facts(&self.paths.sys_root) {
            push(msg, attrs);
        }
        events
    }
}

impl Source for InventorySource {
    fn name(&self) -> String {
        self.cfg.name.clone()
    }

    /// Returns the snapshot (over several polls if the limits are small),
    /// then nothing, exhausted, until `interval_secs` has passed since it was
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
            tracing::debug!(source = %self.cfg.name, events = self.pending.len(), "inventory collected");
        }
        let events = super::take_limited(&mut self.pending, max_events, max_bytes);
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

    fn skip_to_end(&mut self) -> Result<(), SourceError> {
        self.pending.clear();
        self.last_collected = None;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Readers. Every one returns None (or nothing) when the data is unavailable.

pub(super) fn read_trimmed(path: &Path) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Parse os-release `KEY=value` lines, unquoting values.
fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        let v = if v.len() >= 2
            && (v.starts_with('"') && v.ends_with('"') || v.starts_with('\'') && v.ends_with('\''))
        {
            let inner = &v[1..v.len() - 1];
            let mut s = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        s.push(n);
                    }
                } else {
                    s.push(c);
                }
            }
            s
        } else {
            v.to_string()
        };
        out.insert(k.trim().to_string(), v);
    }
    out
}

/// `key : value` lines of /proc/cpuinfo: (model, logical CPU count).
pub(super) fn parse_cpuinfo(text: &str) -> (Option<String>, i64) {
    let mut count = 0i64;
    let mut model: Option<(usize, String)> = None;
    // Keys naming the CPU model on various architectures, best first.
    const MODEL_KEYS: [&str; 5] = ["model name", "cpu model", "Hardware", "uarch", "cpu"];
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k == "processor" {
            count += 1;
        }
        if let Some(rank) = MODEL_KEYS.iter().position(|m| *m == k) {
            if !v.is_empty() && model.as_ref().is_none_or(|(r, _)| rank < *r) {
                model = Some((rank, v.to_string()));
            }
        }
    }
    (model.map(|(_, m)| m), count)
}

/// Count CPUs in a sysfs CPU list such as `0-3,8,10-11`.
pub(super) fn count_cpu_list(list: &str) -> Option<i64> {
    let mut n = 0i64;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (i64, i64) = (a.parse().ok()?, b.parse().ok()?);
                n += (b - a + 1).max(0);
            }
            None => {
                part.parse::<i64>().ok()?;
                n += 1;
            }
        }
    }
    (n > 0).then_some(n)
}

/// `key: value` lookup in /proc/meminfo or /proc/stat style text.
pub(super) fn field<'a>(text: &'a str, key: &str, sep: char) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(sep)?;
        (k.trim() == key).then(|| v.trim())
    })
}

pub(super) fn human_bytes(b: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

type Facts = (String, BTreeMap<String, Value>);

/// The running system's operating system name, as the inventory's host
/// record reports it (`os_name`): os-release `PRETTY_NAME`, else `NAME`,
/// else the kernel's `ostype`. `None` when none is readable.
pub fn os_name() -> Option<String> {
    let paths = InventoryPaths::system();
    let os = read_os_release(&paths);
    os_name_of(&os, &paths)
}

fn read_os_release(paths: &InventoryPaths) -> BTreeMap<String, String> {
    paths
        .os_release
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| parse_os_release(&t))
        .unwrap_or_default()
}

fn os_name_of(os: &BTreeMap<String, String>, paths: &InventoryPaths) -> Option<String> {
    os.get("PRETTY_NAME")
        .or_else(|| os.get("NAME"))
        .filter(|s| !s.is_empty())
        .cloned()
        .or_else(|| read_trimmed(&paths.proc_root.join("sys/kernel/ostype")))
}

fn host_facts(paths: &InventoryPaths) -> Facts {
    let mut a: BTreeMap<String, Value> = BTreeMap::new();
    a.insert("kind".into(), "host".into());
    let os = read_os_release(paths);
    let os_name = os_name_of(&os, paths);
    if let Some(v) = &os_name {
        a.insert("os_name".into(), v.as_str().into());
    }
    if let Some(v) = os.get("VERSION_ID").filter(|s| !s.is_empty()) {
        a.insert("os_version".into(), v.as_str().into());
    }
    let kernel = read_trimmed(&paths.proc_root.join("sys/kernel/osrelease"));
    if let Some(v) = &kernel {
        a.insert("kernel".into(), v.as_str().into());
    }
    let (cpu_model, mut cores) = std::fs::read_to_string(paths.proc_root.join("cpuinfo"))
        .map(|t| parse_cpuinfo(&t))
        .unwrap_or((None, 0));
    if cores == 0 {
        cores = read_trimmed(&paths.sys_root.join("devices/system/cpu/online"))
            .and_then(|l| count_cpu_list(&l))
            .unwrap_or(0);
    }
    if let Some(v) = &cpu_model {
        a.insert("cpu_model".into(), v.as_str().into());
    }
    if cores > 0 {
        a.insert("cpu_cores".into(), Value::Int(cores));
    }
    let meminfo = std::fs::read_to_string(paths.proc_root.join("meminfo")).unwrap_or_default();
    let mem = field(&meminfo, "MemTotal", ':')
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<i64>().ok())
        .and_then(|kb| kb.checked_mul(1024));
    if let Some(v) = mem {
        a.insert("memory_total_bytes".into(), Value::Int(v));
    }
    let stat = std::fs::read_to_string(paths.proc_root.join("stat")).unwrap_or_default();
    let boot = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .and_then(|s| s.checked_mul(1_000_000));
    if let Some(v) = boot {
        a.insert("boot_time".into(), Value::Int(v));
    }
    let dmi = paths.sys_root.join("class/dmi/id");
    let vendor = read_trimmed(&dmi.join("sys_vendor"));
    let model = read_trimmed(&dmi.join("product_name"));
    if let Some(v) = &vendor {
        a.insert("vendor".into(), v.as_str().into());
    }
    if let Some(v) = &model {
        a.insert("model".into(), v.as_str().into());
    }
    let net = paths.sys_root.join("class/net");
    let nics = dir_names(&net)
        .iter()
        .filter(|n| *n != "lo" && net.join(n).join("device").exists())
        .count();
    a.insert(
        "nic_count".into(),
        Value::Int(i64::try_from(nics).unwrap_or(i64::MAX)),
    );
    let mut parts = vec![os_name.unwrap_or_else(|| "unknown OS".into())];
    match (vendor, model) {
        (Some(v), Some(m)) => parts.push(format!("{v} {m}")),
        (Some(x), None) | (None, Some(x)) => parts.push(x),
        (None, None) => {}
    }
    if let Some(k) = kernel {
        parts.push(format!("kernel {k}"));
    }
    if cores > 0 || cpu_model.is_some() {
        parts.push(format!(
            "{} x {}",
            cores,
            cpu_model.as_deref().unwrap_or("CPU")
        ));
    }
    if let Some(m) = mem {
        parts.push(format!("{} memory", human_bytes(m)));
    }
    (parts.join("; "), a)
}

/// Sorted names of the entries of `dir` (empty when unreadable).
pub(super) fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) => {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot list directory");
            Vec::new()
        }
    };
    names.sort();
    names
}

fn disk_facts(sys_root: &Path) -> Vec<Facts> {
    let block = sys_root.join("block");
    let mut out = Vec::new();
    for name in dir_names(&block) {
        if ["loop", "ram", "zram"].iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let dev = block.join(&name);
        let mut a: BTreeMap<String, Value> = BTreeMap::new();
        a.insert("kind".into(), "disk".into());
        a.insert("disk_name".into(), name.as_str().into());
        let size = read_trimmed(&dev.join("size"))
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(|sectors| sectors.checked_mul(512));
        if let Some(v) = size {
            a.insert("disk_size_bytes".into(), Value::Int(v));
        }
        let rotational = match read_trimmed(&dev.join("queue/rotational")).as_deref() {
            Some("1") => Some(true),
            Some("0") => Some(false),
            _ => None,
        };
        if let Some(v) = rotational {
            a.insert("disk_rotational".into(), Value::Bool(v));
        }
        a.insert("disk_type".into(), disk_type(&name, rotational).into());
        let model = read_trimmed(&dev.join("device/model"));
        if let Some(v) = &model {
            a.insert("disk_model".into(), v.as_str().into());
        }
        let mut msg = format!("disk {name}");
        if let Some(s) = size {
            msg.push_str(&format!(", {}", human_bytes(s)));
        }
        match rotational {
            Some(true) => msg.push_str(", rotational"),
            Some(false) => msg.push_str(", non-rotational"),
            None => {}
        }
        if let Some(m) = model {
            msg.push_str(&format!(", {m}"));
        }
        out.push((msg, a));
    }
    out
}

/// The `disk_type` of a block device (see the module documentation).
fn disk_type(name: &str, rotational: Option<bool>) -> &'static str {
    if name.starts_with("nvme") {
        return "nvme";
    }
    if ["vd", "xvd", "dm-", "md"]
        .iter()
        .any(|p| name.starts_with(p))
    {
        return "virtual";
    }
    match rotational {
        Some(false) => "ssd",
        Some(true) => "hdd",
        None => "unknown",
    }
}

fn nic_facts(sys_root: &Path) -> Vec<Facts> {
    let net = sys_root.join("class/net");
    let mut out = Vec::new();
    for name in dir_names(&net) {
        if name == "lo" {
            continue;
        }
        let dev = net.join(&name);
        let mut a: BTreeMap<String, Value> = BTreeMap::new();
        a.insert("kind".into(), "nic".into());
        a.insert("nic_name".into(), name.as_str().into());
        // Reading `speed` fails (EINVAL) or gives -1 when the link is down or
        // the driver does not know.
        let speed = read_trimmed(&dev.join("speed"))
            .and_then(|s| s.parse::<i64>().ok())
            .filter(|s| *s >= 0);
        if let Some(v) = speed {
            a.insert("nic_speed_mbps".into(), Value::Int(v));
        }
        let state = read_trimmed(&dev.join("operstate"));
        if let Some(v) = &state {
            a.insert("nic_operstate".into(), v.as_str().into());
        }
        let mut msg = format!("nic {name}");
        if let Some(s) = state {
            msg.push_str(&format!(", {s}"));
        }
        if let Some(s) = speed {
            msg.push_str(&format!(", {s} Mb/s"));
        }
        out.push((msg, a));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    fn cfg(secs: u64) -> InventorySourceConfig {
        InventorySourceConfig {
            name: "inventory".into(),
            interval: Duration::from_secs(secs),
        }
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn fake_tree(root: &Path) {
        write(root, "etc/os-release", "NAME=\"Fake Linux\"\nPRETTY_NAME=\"Fake Linux 9 (Test)\"\nVERSION_ID=\"9.1\"\n# comment\n");
        write(root, "proc/sys/kernel/osrelease", "6.1.0-fake\n");
        write(
            root,
            "proc/cpuinfo",
            "processor\t: 0\nmodel name\t: Fake CPU @ 3.00GHz\n\nprocessor\t: 1\nmodel name\t: Fake CPU @ 3.00GHz\n",
        );
        write(
            root,
            "proc/meminfo",
            "MemTotal:       16318964 kB\nMemFree:         1000 kB\n",
        );
        write(root, "proc/stat", "cpu  1 2 3\nbtime 1700000000\n");
        write(root, "sys/block/sda/size", "1953525168\n");
        write(root, "sys/block/sda/queue/rotational", "1\n");
        write(root, "sys/block/sda/device/model", "FAKEDISK 1TB   \n");
        write(root, "sys/block/nvme0n1/size", "1000\n");
        write(root, "sys/block/nvme0n1/queue/rotational", "0\n");
        write(root, "sys/block/loop0/size", "8\n");
        write(root, "sys/block/ram0/size", "8\n");
        write(root, "sys/block/vda/size", "10\n");
        write(root, "sys/block/vda/queue/rotational", "1\n");
        write(root, "sys/block/sdb/size", "10\n");
        write(root, "sys/block/sdb/queue/rotational", "0\n");
        write(root, "sys/block/sdc/size", "10\n");
        write(root, "sys/block/sdc/queue/rotational", "maybe\n");
        write(root, "sys/class/net/lo/operstate", "unknown\n");
        write(root, "sys/class/net/eth0/operstate", "up\n");
        write(root, "sys/class/net/eth0/speed", "1000\n");
        write(root, "sys/class/net/eth0/device/vendor", "0x8086\n");
        write(root, "sys/class/net/wlan0/operstate", "down\n");
        write(root, "sys/class/net/wlan0/speed", "-1\n");
        write(root, "sys/class/net/wlan0/device/vendor", "0x8086\n");
        write(root, "sys/class/net/docker0/operstate", "up\n");
        write(root, "sys/class/dmi/id/sys_vendor", "Fake Computers Inc.\n");
        write(root, "sys/class/dmi/id/product_name", "Model 9000\n");
    }

    fn by_kind<'a>(events: &'a [Event], kind: &str) -> Vec<&'a Event> {
        events
            .iter()
            .filter(|e| e.attrs.get("kind") == Some(&Value::Str(kind.into())))
            .collect()
    }

    fn assert_valid_attr_names(events: &[Event]) {
        for e in events {
            for k in e.attrs.keys() {
                custos_model::validate_column_name(k).unwrap_or_else(|err| panic!("{k}: {err}"));
            }
            custos_model::registry::Registry::builtin()
                .check_event(e)
                .unwrap_or_else(|err| panic!("{e:?}: {err}"));
        }
    }

    #[test]
    fn collects_host_disks_and_nics_from_a_fake_tree() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(dir.path());
        let src = InventorySource::new(cfg(60), "h1").with_paths(InventoryPaths::under(dir.path()));
        let events = src.collect();
        assert_valid_attr_names(&events);
        for e in &events {
            assert_eq!(e.table.as_str(), "inventory");
            assert_eq!((e.level, e.category), (Level::Basic, Category::Inventory));
            assert_eq!(e.host, "h1");
        }
        let host = by_kind(&events, "host");
        assert_eq!(host.len(), 1);
        let h = &host[0].attrs;
        assert_eq!(h["os_name"], Value::Str("Fake Linux 9 (Test)".into()));
        assert_eq!(h["os_version"], Value::Str("9.1".into()));
        assert_eq!(h["kernel"], Value::Str("6.1.0-fake".into()));
        assert_eq!(h["cpu_model"], Value::Str("Fake CPU @ 3.00GHz".into()));
        assert_eq!(h["cpu_cores"], Value::Int(2));
        assert_eq!(h["memory_total_bytes"], Value::Int(16318964 * 1024));
        assert_eq!(h["boot_time"], Value::Int(1_700_000_000_000_000));
        assert_eq!(h["vendor"], Value::Str("Fake Computers Inc.".into()));
        assert_eq!(h["model"], Value::Str("Model 9000".into()));
        assert_eq!(h["nic_count"], Value::Int(2), "physical NICs only");
        assert!(host[0].message.contains("Fake Linux 9") && host[0].message.contains("6.1.0-fake"));
        assert!(host[0].message.contains("Fake Computers Inc. Model 9000"));

        let disks = by_kind(&events, "disk");
        let names: Vec<&Value> = disks.iter().map(|e| &e.attrs["disk_name"]).collect();
        assert_eq!(
            names,
            ["nvme0n1", "sda", "sdb", "sdc", "vda"]
                .map(|n| Value::Str(n.into()))
                .iter()
                .collect::<Vec<_>>()
        );
        let sda = &disks[1].attrs;
        assert_eq!(sda["disk_size_bytes"], Value::Int(1953525168 * 512));
        assert_eq!(sda["disk_rotational"], Value::Bool(true));
        assert_eq!(sda["disk_model"], Value::Str("FAKEDISK 1TB".into()));
        assert_eq!(disks[0].attrs["disk_rotational"], Value::Bool(false));
        assert!(!disks[0].attrs.contains_key("disk_model"));
        let types: Vec<&Value> = disks.iter().map(|e| &e.attrs["disk_type"]).collect();
        assert_eq!(
            types,
            ["nvme", "hdd", "ssd", "unknown", "virtual"]
                .map(|n| Value::Str(n.into()))
                .iter()
                .collect::<Vec<_>>()
        );
        assert!(
            !disks[3].attrs.contains_key("disk_rotational"),
            "garbled flag left out"
        );

        let nics = by_kind(&events, "nic");
        assert_eq!(nics.len(), 3, "lo is skipped");
        assert_eq!(nics[1].attrs["nic_name"], Value::Str("eth0".into()));
        assert_eq!(nics[1].attrs["nic_speed_mbps"], Value::Int(1000));
        assert_eq!(nics[1].attrs["nic_operstate"], Value::Str("up".into()));
        assert!(
            !nics[2].attrs.contains_key("nic_speed_mbps"),
            "unknown speed is absent"
        );
    }

    #[test]
    fn missing_files_leave_facts_out_without_failing() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "sys/devices/system/cpu/online", "0-3,6\n");
        let src = InventorySource::new(cfg(60), "h").with_paths(InventoryPaths::under(dir.path()));
        let events = src.collect();
        assert_valid_attr_names(&events);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].attrs["cpu_cores"], Value::Int(5));
        assert!(!events[0].attrs.contains_key("kernel"));
        assert!(!events[0].attrs.contains_key("vendor"));
        assert!(!events[0].attrs.contains_key("model"));
        assert_eq!(events[0].attrs["nic_count"], Value::Int(0));
    }

    #[test]
    fn skip_to_end_drops_the_pending_snapshot_and_collects_afresh() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(dir.path());
        let clock: Clock = Arc::new(Instant::now);
        let mut src = InventorySource::new(cfg(3600), "h")
            .with_paths(InventoryPaths::under(dir.path()))
            .with_clock(clock);
        assert_eq!(src.poll(1, 1 << 20, false).unwrap().events.len(), 1);
        src.skip_to_end().unwrap();
        write(dir.path(), "proc/sys/kernel/osrelease", "6.2.0-new\n");
        let p = src.poll(100, 1 << 20, false).unwrap();
        assert_eq!(
            p.events.len(),
            9,
            "a whole new snapshot, not the rest of the old one"
        );
        assert_eq!(p.events[0].attrs["kernel"], Value::Str("6.2.0-new".into()));
    }

    #[test]
    fn collects_sane_values_from_this_machine() {
        let src = InventorySource::new(cfg(60), "h");
        let events = src.collect();
        assert_valid_attr_names(&events);
        let host = by_kind(&events, "host");
        assert_eq!(host.len(), 1);
        let h = &host[0].attrs;
        let Some(Value::Str(kernel)) = h.get("kernel") else {
            panic!("no kernel in {h:?}")
        };
        assert!(
            kernel.chars().next().is_some_and(|c| c.is_ascii_digit()),
            "{kernel}"
        );
        let Some(Value::Int(cores)) = h.get("cpu_cores") else {
            panic!("no cpu_cores in {h:?}")
        };
        assert!((1..=65536).contains(cores));
        let Some(Value::Int(mem)) = h.get("memory_total_bytes") else {
            panic!("no memory in {h:?}")
        };
        assert!(*mem > 16 * 1024 * 1024, "{mem}");
        if let Some(Value::Int(boot)) = h.get("boot_time") {
            assert!(*boot > 1_000_000_000_000_000 && *boot < custos_model::now_micros());
        }
        for d in by_kind(&events, "disk") {
            assert!(matches!(d.attrs.get("disk_size_bytes"), Some(Value::Int(s)) if *s >= 0));
        }
        assert!(by_kind(&events, "nic")
            .iter()
            .all(|n| n.attrs["nic_name"] != Value::Str("lo".into())));
    }

    #[test]
    fn snapshot_is_returned_once_then_again_after_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(dir.path());
        let base = Instant::now();
        let offset_secs = Arc::new(AtomicU64::new(0));
        let o = Arc::clone(&offset_secs);
        let clock: Clock = Arc::new(move || base + Duration::from_secs(o.load(Ordering::SeqCst)));
        let mut src = InventorySource::new(cfg(60), "h")
            .with_paths(InventoryPaths::under(dir.path()))
            .with_clock(clock);
        let p = src.poll(2, 1 << 20, false).unwrap();
        assert_eq!(p.events.len(), 2);
        assert!(
            !p.exhausted,
            "the rest of the snapshot waits for the next poll"
        );
        let p = src.poll(100, 1 << 20, false).unwrap();
        assert_eq!(p.events.len(), 7);
        assert!(p.exhausted);
        src.commit(&p.checkpoint).unwrap();
        offset_secs.store(59, Ordering::SeqCst);
        let p = src.poll(100, 1 << 20, false).unwrap();
        assert!(p.events.is_empty() && p.exhausted);
        offset_secs.store(60, Ordering::SeqCst);
        assert_eq!(src.poll(100, 1 << 20, false).unwrap().events.len(), 9);
        assert!(src.poll(100, 1 << 20, false).unwrap().events.is_empty());
    }

    #[test]
    fn os_name_of_this_machine_matches_the_host_record() {
        let events = InventorySource::new(cfg(60), "h").collect();
        assert_eq!(
            os_name().map(Value::Str).as_ref(),
            events[0].attrs.get("os_name")
        );
    }

    #[test]
    fn os_release_values_are_unquoted() {
        let m = parse_os_release("A=plain\nB=\"dq \\\"x\\\"\"\nC='sq'\nbad line\n");
        assert_eq!(m["A"], "plain");
        assert_eq!(m["B"], "dq \"x\"");
        assert_eq!(m["C"], "sq");
    }
}
