//! Process-crash test: a child process appends and syncs in a loop, printing
//! every synced lsn; the parent kills it with SIGKILL at a random moment and
//! checks that every lsn reported as synced is present with its payload.
//!
//! The child is this same test binary, re-executed with `CRASH_CHILD_DIR` set.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{len_for, payload};
use custos_wal::{Lsn, Wal, WalOptions};

const CHILD_ENV: &str = "CRASH_CHILD_DIR";
const TEST_NAME: &str = "sigkill_at_a_random_moment_loses_no_synced_record";
const MAX_LEN: usize = 3000;

fn opts(dir: &Path) -> WalOptions {
    WalOptions::new(dir).with_segment_bytes(64 * 1024)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The child: append batches, sync, report; ack now and then. Runs until killed.
fn child(dir: &Path, seed: u64) -> ! {
    let mut rng = Rng(seed | 1);
    let (mut wal, _) = Wal::open(opts(dir)).expect("child open");
    let out = std::io::stdout();
    let mut batches = 0u64;
    loop {
        let n = 1 + rng.next() % 8;
        let mut last = 0;
        for _ in 0..n {
            let lsn = wal.next_lsn();
            last = wal.append(&payload(lsn, len_for(lsn, MAX_LEN))).expect("append");
        }
        wal.sync().expect("sync");
        let mut o = out.lock();
        writeln!(o, "synced {last}").expect("stdout");
        o.flush().expect("stdout");
        drop(o);
        batches += 1;
        if batches.is_multiple_of(40) && last > 200 {
            let upto = last - 200;
            wal.ack(upto).expect("ack");
            let mut o = out.lock();
            writeln!(o, "acked {upto}").expect("stdout");
            o.flush().expect("stdout");
        }
    }
}

#[test]
fn sigkill_at_a_random_moment_loses_no_synced_record() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let seed = std::env::var("CRASH_CHILD_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
        child(Path::new(&dir), seed);
    }
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed | 1);
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut max_synced: Option<Lsn> = None;
    let mut max_acked: Lsn = 0;

    for round in 0..6 {
        let mut c = Command::new(&exe)
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, tmp.path())
            .env("CRASH_CHILD_SEED", rng.next().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = c.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<String>>()
        });
        // Let it make progress, then kill it at a random moment.
        let delay = Duration::from_millis(150 + rng.next() % 500);
        let start = Instant::now();
        while start.elapsed() < delay {
            std::thread::sleep(Duration::from_millis(10));
        }
        c.kill().unwrap(); // SIGKILL on unix
        c.wait().unwrap();
        let lines = reader.join().unwrap();
        let mut synced_this_round = 0;
        for l in &lines {
            if let Some(v) = l.strip_prefix("synced ") {
                let v: Lsn = v.parse().unwrap();
                max_synced = Some(max_synced.map_or(v, |m| m.max(v)));
                synced_this_round += 1;
            } else if let Some(v) = l.strip_prefix("acked ") {
                max_acked = max_acked.max(v.parse().unwrap());
            }
        }
        eprintln!("round {round}: child reported {synced_this_round} syncs, max synced {max_synced:?}");

        let (wal, report) = Wal::open(opts(tmp.path())).unwrap();
        assert_eq!(report.corrupt_records, 0, "round {round}: {report:?}");
        assert!(wal.acked_lsn() >= max_acked, "round {round}: ack went backwards");
        let Some(max_synced) = max_synced else { continue };
        assert!(wal.next_lsn() > max_synced, "round {round}: next lsn {} <= synced {max_synced}", wal.next_lsn());
        // Every lsn in [acked, max_synced] was appended by some child and synced.
        let mut expect = wal.acked_lsn();
        for r in wal.read_from(0).unwrap() {
            let (lsn, p) = r.unwrap();
            if lsn > max_synced {
                break;
            }
            assert_eq!(lsn, expect, "round {round}: missing lsn {expect}");
            assert_eq!(p, payload(lsn, len_for(lsn, MAX_LEN)), "round {round}: payload of lsn {lsn}");
            expect += 1;
        }
        assert_eq!(expect, max_synced + 1, "round {round}: synced records missing after lsn {}", expect);
    }
    assert!(max_synced.is_some(), "the child never synced anything");
}
