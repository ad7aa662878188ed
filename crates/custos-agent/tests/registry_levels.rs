//! Issue 4: "the set of tables and fields collected at each level equals the
//! registry".
//!
//! Every source the run loop builds (`crates/custos-agent/src/run.rs`: the
//! internal source, the configured file, stdin, inventory, performance,
//! services and crash sources, and the usage source) reads a complete fake
//! host tree in a temporary directory, driven by injected clocks so that the
//! periodic sources produce complete events (performance rates, services'
//! CPU time, a closed usage period, agent health with a last upload time).
//! Every event goes through the run loop's gate: [`gate::classify`] (which
//! must succeed: the agent cannot emit a table or field the registry lacks)
//! then [`gate::allowed`]. The (table, field) pairs of the allowed events must
//! then be exactly what the registry declares for the level:
//! [`Registry::tables_at`] plus the switch tables (usage) when the usage
//! switch is on, with [`Registry::fields_at`] for each, and the custom log
//! table `app_logs` with exactly the fields of `logs`. So the test fails if a
//! source produces an undeclared table or field, and if the registry declares
//! a table or field no source produces.
//!
//! All sources are polled whatever the settings (the run loop does not even
//! poll telemetry sources while telemetry is disabled): here the gate alone
//! has to keep out what the settings do not allow.

use custos_agent::config::{AgentConfig, SourceConfig};
use custos_agent::gate::{self, GateState};
use custos_agent::internal::{Facts, InternalSource, SettingsSnapshot, Stats};
use custos_agent::security::{kind, SecurityNote};
use custos_agent::sources::usage::UsageClock;
use custos_agent::sources::{
    CrashSource, FileSource, InventoryPaths, InventorySource, PerformanceSource, PositionStore,
    ServicesSource, Source, StdinSource, UsageSource,
};
use custos_model::registry::{Registry, RegistryViolation, Severity, Switch};
use custos_model::{Event, Level, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The custom log table the second file source writes to.
const CUSTOM_LOG_TABLE: &str = "app_logs";
/// Limits of one poll (as the run loop's defaults, roughly).
const MAX_EVENTS: usize = 1000;
const MAX_BYTES: usize = 1 << 20;
/// A long line is cut into pieces of this many bytes, marked `truncated`.
const MAX_LINE: usize = 80;
const HOUR_US: i64 = 3_600_000_000;
/// The wall clock at start: ten minutes into an hour (some day in 2023).
const WALL_START: i64 = 1_700_000_000_000_000 / HOUR_US * HOUR_US + 10 * 60_000_000;
const BOOT_ID: &str = "0123456789abcdef0123456789abcdef";

/// Table → attribute names.
type Shape = BTreeMap<String, BTreeSet<String>>;

// ------------------------------------------------------------- the fake host

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

const NET_HEADER: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

/// A process in `/proc`: cgroup, stat (utime, stime, start time), statm.
fn process(root: &Path, pid: u32, cgroup: &str, start: u64, cpu: u64, rss_pages: u64) {
    write(root, &format!("proc/{pid}/cgroup"), cgroup);
    write(
        root,
        &format!("proc/{pid}/stat"),
        &format!("{pid} (worker) S 1 {pid} {pid} 0 -1 4194560 100 0 0 0 {cpu} {cpu} 0 0 20 0 1 0 {start} 1000000 {rss_pages} 18446744073709551615\n"),
    );
    write(
        root,
        &format!("proc/{pid}/statm"),
        &format!("1000 {rss_pages} 100 10 0 200 0\n"),
    );
}

/// The cumulative counters (CPU, disks, network, processes' CPU time) at
/// `tick`: they grow with it, so every rate of the second sample is defined.
fn counters(root: &Path, tick: u64) {
    let busy = 100 + 500 * tick;
    let idle = 700 + 300 * tick;
    write(
        root,
        "proc/stat",
        &format!("cpu  {busy} 0 {busy} {idle} 100 0 0 0 0 0\ncpu0 {busy} 0 {busy} {idle} 100 0 0 0 0 0\nintr 0\nbtime 1700000000\nprocesses 4242\n"),
    );
    let (r, w) = (1000 + 4000 * tick, 2000 + 8000 * tick);
    write(
        root,
        "proc/diskstats",
        &format!("   8       0 sda 100 0 {r} 0 50 0 {w} 0 0 0 0\n   8       1 sda1 100 0 {r} 0 50 0 {w} 0 0 0 0\n 259       0 nvme0n1 10 0 {r} 0 10 0 {w} 0 0 0 0\n   7       0 loop0 9 0 9999 0 0 0 9999 0 0 0 0\n"),
    );
    let (rx, tx) = (10_000 + 60_000 * tick, 5_000 + 12_000 * tick);
    write(
        root,
        "proc/net/dev",
        &format!("{NET_HEADER}    lo: 9999 1 0 0 0 0 0 0 9999 1 0 0 0 0 0 0\n  eth0: {rx} 10 0 0 0 0 0 0 {tx} 5 0 0 0 0 0 0\n"),
    );
    process(root, 1, "0::/init.scope\n", 1, 10 + tick, 300);
    process(
        root,
        100,
        "0::/system.slice/nginx.service\n",
        500,
        50 + 20 * tick,
        2000,
    );
    process(
        root,
        101,
        "0::/system.slice/nginx.service\n",
        501,
        5 + 3 * tick,
        1500,
    );
    process(
        root,
        200,
        "12:memory:/system.slice/postgresql.service\n1:name=systemd:/system.slice/postgresql.service\n0::/system.slice/postgresql.service\n",
        600,
        400 + 100 * tick,
        40000,
    );
}

/// Everything every source can read, below `root`.
fn fake_host(root: &Path) {
    // os-release and the kernel.
    write(
        root,
        "etc/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
    );
    write(root, "proc/sys/kernel/osrelease", "6.1.0-13-amd64\n");
    write(root, "proc/sys/kernel/ostype", "Linux\n");
    // CPUs, memory, load.
    let cpu = |n: u32| {
        format!("processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz\ncpu cores\t: 2\n\n")
    };
    write(root, "proc/cpuinfo", &format!("{}{}", cpu(0), cpu(1)));
    write(root, "sys/devices/system/cpu/online", "0-1\n");
    write(
        root,
        "proc/meminfo",
        "MemTotal:       16384000 kB\nMemFree:         1024000 kB\nMemAvailable:   12288000 kB\n",
    );
    write(root, "proc/loadavg", "0.52 0.40 0.30 1/200 12345\n");
    counters(root, 0);
    // Block devices: a rotational SATA disk and an NVMe drive, with models.
    for (name, sectors, rotational, model) in [
        ("sda", 1_953_525_168u64, "1", "WDC WD10EZEX-08W"),
        ("nvme0n1", 1_000_215_216, "0", "Samsung SSD 980 PRO 1TB"),
    ] {
        write(
            root,
            &format!("sys/block/{name}/size"),
            &format!("{sectors}\n"),
        );
        write(
            root,
            &format!("sys/block/{name}/queue/rotational"),
            &format!("{rotational}\n"),
        );
        write(
            root,
            &format!("sys/block/{name}/device/model"),
            &format!("{model}\n"),
        );
    }
    write(root, "sys/block/loop0/size", "0\n");
    // Network interfaces: a physical one (with a device) and lo.
    write(root, "sys/class/net/eth0/speed", "1000\n");
    write(root, "sys/class/net/eth0/operstate", "up\n");
    write(root, "sys/class/net/eth0/device/vendor", "0x8086\n");
    write(root, "sys/class/net/lo/operstate", "unknown\n");
    // DMI.
    write(root, "sys/class/dmi/id/sys_vendor", "Dell Inc.\n");
    write(root, "sys/class/dmi/id/product_name", "PowerEdge R640\n");
    // Crash reports: an apport report and a systemd-coredump file.
    write(
        root,
        "var/crash/_usr_sbin_mydaemon.0.crash",
        "ProblemType: Crash\nArchitecture: amd64\nDate: Mon Jan  1 12:00:00 2024\nExecutablePath: /usr/sbin/mydaemon\nProcCmdline: /usr/sbin/mydaemon --foreground\nSignal: 11\nCoreDump: base64\n H4sICAAAAAAC/0NvcmVEdW1wAA==\nUserGroups: N/A\n",
    );
    write(
        root,
        &format!("var/lib/systemd/coredump/core.worker.1000.{BOOT_ID}.4242.1700000000000000.zst"),
        "\u{28}\u{b5}/\u{fd} not really zstd",
    );
    // Logs of every severity, and a line long enough to be cut.
    write(root, "var/log/syslog", &log_lines("syslog"));
    write(root, "var/log/app/app.log", &log_lines("app"));
}

/// One line of every severity (the last one states none), then a long error
/// line that is cut into `truncated` pieces.
fn log_lines(who: &str) -> String {
    let mut s = String::new();
    for word in [
        "emerg", "alert", "crit", "error", "warn", "notice", "info", "debug",
    ] {
        s.push_str(&format!("[{word}] {who}: something happened\n"));
    }
    s.push_str(&format!("{who}: a line that states no severity\n"));
    s.push_str(&format!("[error] {who}: {}\n", "x".repeat(3 * MAX_LINE)));
    s
}

fn config(root: &Path) -> AgentConfig {
    let p = |rel: &str| root.join(rel).to_string_lossy().into_owned();
    let text = format!(
        r#"
[[sources]]
type = "file"
name = "syslog"
paths = [{syslog:?}]
max_line_bytes = {MAX_LINE}

[[sources]]
type = "file"
name = "app"
paths = [{app:?}]
table = "{CUSTOM_LOG_TABLE}"
max_line_bytes = {MAX_LINE}

[[sources]]
type = "stdin"
max_line_bytes = {MAX_LINE}

[[sources]]
type = "inventory"

[[sources]]
type = "performance"

[[sources]]
type = "services"

[[sources]]
type = "crash"
paths = [{apport:?}, {cores:?}]
"#,
        syslog = p("var/log/syslog"),
        app = p("var/log/app/*.log"),
        apport = p("var/crash/*.crash"),
        cores = p("var/lib/systemd/coredump/*"),
    );
    AgentConfig::from_toml_str(&text).unwrap()
}

// ------------------------------------------------------------------ clocks

/// Monotonic and wall clocks that advance only when told.
#[derive(Clone)]
struct SimClock {
    base: Instant,
    secs: Arc<AtomicU64>,
}

impl SimClock {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            secs: Arc::new(AtomicU64::new(0)),
        }
    }
    fn mono(&self) -> Arc<dyn Fn() -> Instant + Send + Sync> {
        let (base, secs) = (self.base, self.secs.clone());
        Arc::new(move || base + Duration::from_secs(secs.load(Ordering::SeqCst)))
    }
    fn usage(&self) -> UsageClock {
        let (base, secs) = (self.base, self.secs.clone());
        Arc::new(move || {
            let s = secs.load(Ordering::SeqCst);
            (
                WALL_START + i64::try_from(s).unwrap() * 1_000_000,
                base + Duration::from_secs(s),
            )
        })
    }
    fn advance(&self, d: Duration) {
        self.secs.fetch_add(d.as_secs(), Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------- the agent

/// Build, in the run loop's order, every source a run with `cfg` has, reading
/// the fake host below `root`.
fn build(root: &Path, cfg: &AgentConfig, st: GateState, clock: &SimClock) -> Vec<Box<dyn Source>> {
    let state = root.join("state");
    let hostname = "web-1";
    let installation_id = "7c0c3a52-8d62-4c67-9e1b-8b8f0b2f5a10";
    let paths = InventoryPaths::under(root);
    let mut out: Vec<Box<dyn Source>> = Vec::new();

    // The internal source, with a security note and counters that make every
    // health field present.
    let stats = Arc::new(Stats::default());
    stats.note_security(SecurityNote {
        kind: kind::AUTH_FAILURE,
        outcome: "refused".into(),
        detail: "server said 401".into(),
    });
    stats.update(|c| {
        c.events_read = 1000;
        c.events_uploaded = 900;
        c.events_not_collected = 50;
        c.last_upload_time = Some(WALL_START - 60_000_000);
        c.dropped_by_category.insert("logs".into(), 7);
        c.critical_alerts = 3;
    });
    let facts = Facts {
        installation_id: installation_id.into(),
        hostname: hostname.into(),
        os_name: Some("Debian GNU/Linux 12 (bookworm)".into()),
        source_types: {
            let mut t: Vec<String> = cfg
                .sources
                .iter()
                .map(|s| s.type_name().to_string())
                .collect();
            t.sort();
            t.dedup();
            t
        },
    };
    let settings = Box::new(move || SettingsSnapshot {
        enabled: (st.telemetry, "config".into()),
        level: (st.level, "local".into()),
        usage: (st.usage, "default".into()),
    });
    out.push(Box::new(
        InternalSource::new(facts, stats, settings, cfg.telemetry.health_interval)
            .with_clock(clock.mono()),
    ));

    // The configured sources (as `build_sources`, with the fake tree and clocks).
    let store = Arc::new(Mutex::new(PositionStore::open(&state).unwrap()));
    for sc in &cfg.sources {
        let s: Box<dyn Source> = match sc {
            SourceConfig::File(f) => {
                Box::new(FileSource::new(f.clone(), hostname, store.clone()).excluding_dir(&state))
            }
            SourceConfig::Stdin(s) => {
                let input = format!(
                    "{}{}",
                    log_lines("stdin"),
                    "[warn] stdin: the last line has no newline"
                );
                Box::new(
                    StdinSource::from_reader(
                        s.clone(),
                        hostname,
                        std::io::Cursor::new(input.into_bytes()),
                    )
                    .unwrap(),
                )
            }
            SourceConfig::Inventory(i) => Box::new(
                InventorySource::new(i.clone(), hostname)
                    .with_paths(paths.clone())
                    .with_clock(clock.mono()),
            ),
            SourceConfig::Performance(p) => Box::new(
                PerformanceSource::new(p.clone(), hostname)
                    .with_paths(paths.clone())
                    .with_clock(clock.mono()),
            ),
            SourceConfig::Services(s) => Box::new(
                ServicesSource::new(s.clone(), hostname)
                    .with_proc_root(&paths.proc_root)
                    .with_clock(clock.mono()),
            ),
            SourceConfig::Crash(c) => Box::new(
                CrashSource::open(c.clone(), hostname, &state)
                    .unwrap()
                    .with_settle(Duration::ZERO),
            ),
        };
        out.push(s);
    }

    // The usage source.
    out.push(Box::new(
        UsageSource::new(installation_id, hostname, clock.usage())
            .with_state_dir(&state)
            .unwrap()
            .with_period(cfg.telemetry.usage_period)
            .with_paths(paths),
    ));
    out
}

/// Poll `src` until it has nothing more right now, committing each poll (as
/// the run loop does once the batch is acknowledged).
fn drain(src: &mut dyn Source, out: &mut Vec<Event>) {
    loop {
        let p = src
            .poll(MAX_EVENTS, MAX_BYTES, true)
            .unwrap_or_else(|e| panic!("source {}: {e}", src.name()));
        out.extend(p.events);
        src.commit(&p.checkpoint)
            .unwrap_or_else(|e| panic!("source {}: {e}", src.name()));
        if p.exhausted {
            break;
        }
    }
}

/// Everything the sources produce on a fresh fake host over two rounds: at
/// start, and once every interval (inventory, performance, services, health,
/// usage period) has passed, with the counters grown in between.
fn produce(st: GateState) -> Vec<Event> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fake_host(root);
    let cfg = config(root);
    let clock = SimClock::new();
    let mut sources = build(root, &cfg, st, &clock);
    let mut events = Vec::new();
    for s in &mut sources {
        drain(s.as_mut(), &mut events);
    }
    let mut step = cfg
        .telemetry
        .health_interval
        .max(cfg.telemetry.usage_period);
    for sc in &cfg.sources {
        if let SourceConfig::Inventory(c) = sc {
            step = step.max(c.interval);
        }
        if let SourceConfig::Performance(c) = sc {
            step = step.max(c.interval);
        }
        if let SourceConfig::Services(c) = sc {
            step = step.max(c.interval);
        }
    }
    clock.advance(step + Duration::from_secs(1));
    counters(root, 1);
    for s in &mut sources {
        drain(s.as_mut(), &mut events);
    }
    events
}

/// The run loop's gate: classify (must succeed) then allowed.
fn gate_all(reg: &Registry, events: Vec<Event>, st: &GateState) -> Vec<Event> {
    events
        .into_iter()
        .filter_map(|mut e| {
            gate::classify(reg, &mut e).unwrap_or_else(|v| {
                panic!(
                    "the agent emitted an event the registry does not declare: {v}\nevent: {e:?}"
                )
            });
            gate::allowed(reg, &e, st).then_some(e)
        })
        .collect()
}

fn shape(events: &[Event]) -> Shape {
    let mut out = Shape::new();
    for e in events {
        out.entry(e.table.as_str().to_string())
            .or_default()
            .extend(e.attrs.keys().cloned());
    }
    out
}

/// What the registry says is collected under `st`, with `custom_log_tables`
/// configured.
fn expected(reg: &Registry, st: &GateState, custom_log_tables: &[&str]) -> Shape {
    let mut out = Shape::new();
    let names =
        |fields: &mut dyn Iterator<Item = &custos_model::registry::FieldDef>| -> BTreeSet<String> {
            fields.map(|f| f.name.clone()).collect()
        };
    if st.telemetry {
        for t in reg.tables_at(st.level) {
            out.insert(
                t.name.to_string(),
                names(&mut reg.fields_at(t.name.as_str(), st.level)),
            );
            if t.log_template {
                for c in custom_log_tables {
                    out.insert(c.to_string(), names(&mut reg.fields_at(c, st.level)));
                }
            }
        }
    }
    if st.usage {
        for t in reg
            .tables()
            .iter()
            .filter(|t| t.switch == Some(Switch::Usage))
        {
            out.insert(t.name.to_string(), names(&mut t.fields.iter()));
        }
    }
    out
}

/// A readable account of how `got` differs from `want`, `None` if equal.
fn diff(want: &Shape, got: &Shape) -> Option<String> {
    let tables: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    let mut lines = Vec::new();
    for t in tables {
        match (want.get(t), got.get(t)) {
            (Some(_), None) => lines.push(format!(
                "table {t}: declared by the registry at this level, but no event was collected (missing)"
            )),
            (None, Some(f)) => lines.push(format!(
                "table {t}: collected (fields {f:?}) but the registry does not list it at this level (extra)"
            )),
            (Some(w), Some(g)) => {
                let missing: Vec<&String> = w.difference(g).collect();
                let extra: Vec<&String> = g.difference(w).collect();
                if !missing.is_empty() {
                    lines.push(format!("table {t}: missing fields {missing:?} (declared, but no source produced them)"));
                }
                if !extra.is_empty() {
                    lines.push(format!("table {t}: extra fields {extra:?} (collected, but not declared at this level)"));
                }
            }
            (None, None) => {}
        }
    }
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// Gate what the sources produce under `st`; the allowed events, or an
/// account of how their tables and fields differ from the registry's.
fn collect_and_compare(st: GateState) -> (Vec<Event>, Option<String>) {
    let reg = Registry::builtin();
    let allowed = gate_all(reg, produce(st), &st);
    let got = shape(&allowed);
    let want = expected(reg, &st, &[CUSTOM_LOG_TABLE]);
    let d = diff(&want, &got).map(|d| {
        let got_tables: BTreeSet<&String> = got.keys().collect();
        let want_tables: BTreeSet<&String> = want.keys().collect();
        format!("under {st:?}:\n  tables collected: {got_tables:?}\n  tables declared:  {want_tables:?}\n{d}")
    });
    (allowed, d)
}

fn assert_collected_equals_registry(st: GateState) -> Vec<Event> {
    let (allowed, d) = collect_and_compare(st);
    if let Some(d) = d {
        panic!("what is collected differs from the registry {d}");
    }
    allowed
}

fn st(level: Level, telemetry: bool, usage: bool) -> GateState {
    GateState {
        level,
        telemetry,
        usage,
    }
}

fn severities(events: &[Event], table: &str) -> BTreeSet<Severity> {
    events
        .iter()
        .filter(|e| e.table.as_str() == table)
        .map(|e| Severity::of_value(e.attrs.get("severity")))
        .collect()
}

// ------------------------------------------------------------------- tests

#[test]
fn the_tables_and_fields_collected_at_each_level_are_exactly_the_registrys() {
    let mut failures = Vec::new();
    for level in Level::ALL {
        let (allowed, d) = collect_and_compare(st(level, true, true));
        failures.extend(d);
        // Log lines follow their severity: warning and worse from level 2,
        // every severity (unknown included) at level 3.
        for table in ["logs", CUSTOM_LOG_TABLE] {
            let got = severities(&allowed, table);
            let want: BTreeSet<Severity> = match level {
                Level::Security | Level::Basic => BTreeSet::new(),
                Level::Enhanced => Severity::ALL
                    .into_iter()
                    .filter(|s| *s <= Severity::Warning)
                    .collect(),
                Level::Full => Severity::ALL.into_iter().collect(),
            };
            if got != want {
                failures.push(format!(
                    "severities of {table} at level {level}: collected {got:?}, expected {want:?}"
                ));
            }
        }
        // Nothing above the level leaves the gate, usage records aside.
        for e in allowed
            .iter()
            .filter(|e| e.table.as_str() != "usage" && e.level > level)
        {
            failures.push(format!(
                "{} event of level {} collected at level {level}",
                e.table.as_str(),
                e.level
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "what is collected differs from the registry\n{}",
        failures.join("\n")
    );
}

#[test]
fn with_telemetry_disabled_only_usage_is_collected_at_any_level() {
    for level in Level::ALL {
        let allowed = assert_collected_equals_registry(st(level, false, true));
        let tables: BTreeSet<&str> = allowed.iter().map(|e| e.table.as_str()).collect();
        assert_eq!(tables, BTreeSet::from(["usage"]), "level {level}");
    }
}

#[test]
fn with_usage_off_no_usage_record_is_collected() {
    for level in Level::ALL {
        let allowed = assert_collected_equals_registry(st(level, true, false));
        assert!(
            allowed.iter().all(|e| e.table.as_str() != "usage"),
            "level {level}"
        );
        assert!(
            !allowed.is_empty(),
            "agent settings are always collected with telemetry on"
        );
    }
    // Both off: nothing at all.
    let allowed = assert_collected_equals_registry(st(Level::Full, false, false));
    assert!(allowed.is_empty());
}

#[test]
fn an_event_with_an_undeclared_field_fails_classification() {
    let reg = Registry::builtin();
    let events = produce(st(Level::Full, true, true));
    // One real event of every table the agent produces, each with one extra
    // attribute: the gate refuses every one.
    let mut one_per_table: BTreeMap<String, Event> = BTreeMap::new();
    for e in events {
        one_per_table
            .entry(e.table.as_str().to_string())
            .or_insert(e);
    }
    assert!(one_per_table.contains_key(CUSTOM_LOG_TABLE) && one_per_table.contains_key("usage"));
    for (table, mut e) in one_per_table {
        gate::classify(reg, &mut e.clone()).unwrap_or_else(|v| panic!("{table}: {v}"));
        e.attrs.insert("undeclared_extra".into(), Value::Int(1));
        match gate::classify(reg, &mut e) {
            Err(RegistryViolation::UnknownField { table: t, field }) => {
                assert_eq!(
                    (t.as_str(), field.as_str()),
                    (table.as_str(), "undeclared_extra")
                );
            }
            other => panic!("{table}: an undeclared field was not refused: {other:?}"),
        }
    }
}

#[test]
fn a_registry_field_or_table_no_source_produces_fails_the_comparison() {
    // The builtin registry with one more field (on its last table) and one
    // more table that no source produces.
    let text = format!(
        "{}\n[[tables.fields]]\nname = \"never_produced\"\ntype = \"int\"\npii = \"no\"\ndescription = \"A field no source produces.\"\n\n[[tables]]\nname = \"never_emitted\"\ncategory = \"health\"\nlevel = 1\ndescription = \"A table no source produces.\"\n\n[[tables.fields]]\nname = \"x\"\ntype = \"int\"\npii = \"no\"\ndescription = \"Nothing.\"\n",
        Registry::builtin_text()
    );
    let reg = Registry::parse(&text).unwrap();
    let with_field = reg
        .tables()
        .iter()
        .find(|t| t.field("never_produced").is_some())
        .unwrap();
    let state = st(Level::Full, true, true);
    let allowed = gate_all(&reg, produce(state), &state);
    let d = diff(
        &expected(&reg, &state, &[CUSTOM_LOG_TABLE]),
        &shape(&allowed),
    )
    .expect("the comparison must fail");
    assert!(
        d.contains(&format!(
            "table {}: missing fields [\"never_produced\"]",
            with_field.name
        )),
        "{d}"
    );
    assert!(d.contains("table never_emitted: declared by the registry at this level, but no event was collected"), "{d}");
    assert!(
        d.lines()
            .all(|l| l.contains("never_produced") || l.contains("never_emitted")),
        "{d}"
    );
}
