//! Detection throughput over the loghub corpus (issue 6, "Speed").
//!
//! Reads every `*.log` file under `../shared/corpus/loghub/<System>/`,
//! concatenates their lines and repeats them until the input is at least
//! 200 MB (override with `CUSTOS_BENCH_MB`), then times, line by line on
//! one thread:
//!
//! * `pii`      — `pii::Detector::new()` (every detector in `PII_ENTITIES`),
//! * `secrets`  — `secrets::Rules::builtin()`,
//! * `combined` — both on each line, into one reused `Vec` (`find_into`),
//! * `pii+fqdn` — `pii` with `HostNames { any_fqdn: true, .. }` (names
//!   under a public TLD, which the default policy reports),
//! * `default`  — `pii+fqdn` and `secrets` on each line: the default
//!   policy's detection work.
//!
//! Run: `cargo bench -p custos-redact --bench detect`. Plain `std::time`,
//! no harness; prints MB/s (10^6 bytes per second) by wall clock and by
//! the thread's on-CPU time (Linux `schedstat`; the two agree on an idle
//! machine, the second stays right on a busy one), and the span counts.
//! Each line is the fastest of `CUSTOS_BENCH_REPS` (default 3) passes.
//! `CUSTOS_BENCH_MB=N` changes the input size, `CUSTOS_BENCH_EACH=1` also
//! times each PII detector alone, `CUSTOS_BENCH_ONLY=pii|secrets|combined`
//! runs one line only (for profiling).

use std::time::Instant;

use custos_redact::pii::{Detector, HostNames, PII_ENTITIES};
use custos_redact::secrets::Rules;
use custos_redact::Span;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/corpus/loghub");

fn load_lines() -> Vec<String> {
    let mut systems: Vec<_> = std::fs::read_dir(CORPUS)
        .unwrap_or_else(|e| panic!("{CORPUS}: {e}"))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    systems.sort();
    let mut lines = Vec::new();
    for dir in systems {
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        files.sort();
        for f in files {
            let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let text = String::from_utf8_lossy(&bytes);
            lines.extend(text.lines().map(str::to_string));
        }
    }
    assert!(!lines.is_empty(), "no loghub *.log files under {CORPUS}");
    lines
}

/// One big buffer of `\n`-separated lines, at least `min` bytes.
fn build_input(lines: &[String], min: usize) -> String {
    let mut s = String::with_capacity(min + 1024 * 1024);
    while s.len() < min {
        for l in lines {
            s.push_str(l);
            s.push('\n');
        }
    }
    s
}

/// Time this thread has spent on a CPU, in ns (Linux `schedstat`), so
/// the figure stays meaningful on a machine busy with other work.
fn cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat").ok()?.split_whitespace().next()?.parse().ok()
}

/// The `\n`-terminated lines of `s` (as `str::lines`, with memchr).
fn lines(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (line, next) = match memchr::memchr(b'\n', rest.as_bytes()) {
            Some(p) => (&rest[..p], &rest[p + 1..]),
            None => (rest, ""),
        };
        rest = next;
        Some(line.strip_suffix('\r').unwrap_or(line))
    })
}

fn run(name: &str, input: &str, mut f: impl FnMut(&str) -> usize) -> f64 {
    if std::env::var("CUSTOS_BENCH_ONLY").is_ok_and(|o| o != name) {
        return 0.0;
    }
    // Warm-up on a slice, then timed passes over everything; the fastest
    // pass is reported (the others were slowed by something else).
    let warm = &input[..input.len().min(4 << 20)];
    let mut n = 0;
    for line in lines(warm) {
        n += f(line);
    }
    std::hint::black_box(n);
    let reps: usize = std::env::var("CUSTOS_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let (mut best_wall, mut best_cpu, mut spans) = (f64::MAX, f64::MAX, 0usize);
    for _ in 0..reps {
        let cpu0 = cpu_ns();
        let t = Instant::now();
        spans = 0;
        for line in lines(input) {
            spans += f(line);
        }
        best_wall = best_wall.min(t.elapsed().as_secs_f64());
        if let (Some(a), Some(b)) = (cpu0, cpu_ns()) {
            best_cpu = best_cpu.min(b.saturating_sub(a) as f64 / 1e9);
        }
    }
    let mbs = input.len() as f64 / best_wall / 1e6;
    if best_cpu < f64::MAX && best_cpu > 0.0 {
        let cpu_mbs = input.len() as f64 / best_cpu / 1e6;
        println!("{name:<13} {mbs:>8.1} MB/s wall  {cpu_mbs:>8.1} MB/s on-CPU  ({spans} spans; best of {reps}: {best_wall:.2} s wall, {best_cpu:.2} s on-CPU)");
    } else {
        println!("{name:<13} {mbs:>8.1} MB/s wall  ({spans} spans; best of {reps}: {best_wall:.2} s)");
    }
    mbs
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let mb: usize = std::env::var("CUSTOS_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let lines = load_lines();
    let input = build_input(&lines, mb * 1_000_000);
    println!(
        "loghub: {} lines, input {:.1} MB ({} lines), one thread",
        lines.len(),
        input.len() as f64 / 1e6,
        input.lines().count()
    );
    if std::env::var_os("CUSTOS_BENCH_EACH").is_some() {
        run("lines-only", &input, |l| usize::from(l.is_empty()));
        let none = Detector::with_entities(&[]);
        run("no-detector", &input, |l| none.find(l).len());
        for &e in PII_ENTITIES {
            let d = Detector::with_entities(&[e]);
            run(e.name(), &input, |l| d.find(l).len());
        }
    }
    let pii = Detector::new();
    let secrets = Rules::builtin();
    let mut buf: Vec<Span> = Vec::new();
    run("pii", &input, |l| pii.find(l).len());
    run("secrets", &input, |l| secrets.find(l).len());
    // One reused buffer, as a pipeline would do it (`find_into`).
    run("combined", &input, |l| {
        buf.clear();
        pii.find_into(l, &mut buf);
        secrets.find_into(l, &mut buf);
        buf.len()
    });
    // The default policy also reports any name under a public TLD.
    let fqdn = Detector::with_config(PII_ENTITIES, &HostNames { any_fqdn: true, ..HostNames::default() });
    run("pii+fqdn", &input, |l| fqdn.find(l).len());
    run("default", &input, |l| {
        buf.clear();
        fqdn.find_into(l, &mut buf);
        secrets.find_into(l, &mut buf);
        buf.len()
    });
}
