//! `custos redact`: the host's redaction engine as a stream filter, and
//! `custos redact lookup TOKEN` to resolve a pseudonym support mentions.
//!
//! Reads lines from standard input and writes each one redacted (or, with
//! `--spans`, what was found in it) to standard output. Lines that are JSON
//! objects have their string values redacted and keys kept (`--format
//! json`, or `auto`, the default, for lines starting with `{`); other lines
//! are text. Input that is not UTF-8 is read lossily (invalid bytes become
//! U+FFFD). The pseudonym key and map are those of the agent's state
//! directory, so the agent and this command agree on every pseudonym.

use std::borrow::Cow;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use custos_agent::pseudomap::{self, PseudonymMap};
use custos_agent::redaction;
use custos_model::{Category, Level};
use custos_redact::{Context as Scope, LineHints, LinePrefilter, Redactor, Session, Verdict};
use serde_json::json;

use crate::output::Output;
use crate::telemetry::DEFAULT_STATE_DIR;

/// How input lines are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// JSON objects when a line starts with `{` and parses, text otherwise.
    Auto,
    /// Every line is text.
    Text,
    /// Every line is a JSON value (a line that does not parse is an error).
    Json,
}

/// `custos redact`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Redaction policy (TOML); default: the built-in default policy.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Print the findings of each line as JSON instead of redacting:
    /// {"line": N, "spans": [{"start": S, "end": E, "entity": "..."}]}
    /// (byte offsets into the line; every detector runs).
    #[arg(long)]
    pub spans: bool,
    /// Input format.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// Agent state directory: holds the pseudonym key and map.
    #[arg(long, default_value = DEFAULT_STATE_DIR, global = true)]
    pub state_dir: PathBuf,
    /// Table the input belongs to (selects the policy's overrides).
    #[arg(long, default_value = "stdin")]
    pub table: String,
    /// Category of the input (selects the policy's overrides).
    #[arg(long, default_value = "logs")]
    pub category: String,
    /// Consent level of the input (selects the policy's overrides).
    #[arg(long, default_value = "full")]
    pub level: String,
    /// At the end, print what was found and done to standard error.
    #[arg(long)]
    pub stats: bool,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

/// `custos redact` subcommands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Show what a pseudonym stands for, from this host's encrypted map.
    Lookup {
        /// The pseudonym, as support quoted it (`u0c1d2e3f4a`,
        /// `243.18.200.7`, `<CREDIT_CARD-7d0c4e1a92>`, …).
        token: String,
    },
}

/// Lines between pseudonym-map writes.
const MAP_EVERY: usize = 65_536;

pub fn run(out: Output, args: Args) -> Result<()> {
    if let Some(Cmd::Lookup { token }) = &args.cmd {
        return lookup(out, &args.state_dir, token);
    }
    let category = Category::ALL
        .into_iter()
        .find(|c| c.name() == args.category)
        .with_context(|| format!("unknown category {:?}", args.category))?;
    let level = Level::ALL
        .into_iter()
        .find(|l| l.name() == args.level)
        .with_context(|| format!("unknown level {:?}", args.level))?;
    let scope = Scope {
        table: &args.table,
        category,
        level,
    };
    let loaded = redaction::load_policy(args.policy.as_deref())?;
    let stdout = std::io::stdout();
    let mut w = BufWriter::with_capacity(1 << 20, stdout.lock());
    let mut n = 0usize;
    if args.spans {
        let r = Redactor::detect_all(loaded.policy, loaded.gitleaks.as_deref(), None)?;
        let mut lines = Lines::new(std::io::stdin().lock());
        while let Some(block) = lines.next_block()? {
            for raw in block
                .strip_suffix(b"\n")
                .unwrap_or(block)
                .split(|&c| c == b'\n')
            {
                n += 1;
                let line = String::from_utf8_lossy(raw);
                let spans: Vec<serde_json::Value> = r
                    .find(&line)
                    .iter()
                    .map(|s| {
                        let mut o =
                            json!({"start": s.start, "end": s.end, "entity": s.entity_name()});
                        if let (custos_redact::Entity::Secret, Some(rule)) = (s.entity, &s.rule) {
                            o["rule"] = json!(rule);
                        }
                        o
                    })
                    .collect();
                serde_json::to_writer(&mut w, &json!({"line": n, "spans": spans}))?;
                w.write_all(b"\n")?;
            }
        }
        w.flush()?;
        return Ok(());
    }
    let uses_map = loaded.policy.uses_pseudonyms();
    let redactor = redaction::build(&args.state_dir, loaded).with_context(|| {
        format!(
            "pseudonyms need the key in {} (pass --state-dir, or a policy without pseudonyms)",
            args.state_dir.display()
        )
    })?;
    let mut map = if uses_map {
        Some(
            PseudonymMap::open(&args.state_dir)
                .with_context(|| format!("pseudonym map in {}", args.state_dir.display()))?,
        )
    } else {
        None
    };
    let mut session = Session::new(Arc::new(redactor));
    let mut pending: Vec<(String, String)> = Vec::new();
    let (mut dropped_lines, mut totals) = (0u64, custos_redact::Outcome::default());
    let mut flush_map = |session: &mut Session,
                         pending: &mut Vec<(String, String)>,
                         totals: &mut custos_redact::Outcome|
     -> Result<()> {
        let mut o = session.take_outcome();
        pending.append(&mut o.new_pseudonyms);
        totals.merge(o);
        if let Some(m) = map.as_mut() {
            m.record(pending).context("recording pseudonyms")?;
        }
        pending.clear();
        Ok(())
    };
    let mut rewritten = String::new();
    let mut ranges = Vec::new();
    let mut prefilter = LinePrefilter::new();
    let mut lines = Lines::new(std::io::stdin().lock());
    while let Some(block) = lines.next_block()? {
        // Unchanged lines are written straight from the input block, as
        // runs: `copy_from` is where the current run began.
        let mut copy_from = 0;
        let emit = |w: &mut BufWriter<_>,
                    copy_from: &mut usize,
                    line_start: usize,
                    next: usize,
                    with: Option<&[u8]>|
         -> Result<()> {
            w.write_all(&block[*copy_from..line_start])?;
            if let Some(bytes) = with {
                w.write_all(bytes)?;
                w.write_all(b"\n")?;
            }
            *copy_from = next;
            Ok(())
        };
        let valid = std::str::from_utf8(block).ok();
        ranges.clear();
        let mut s = 0;
        for nl in memchr::memchr_iter(b'\n', block) {
            ranges.push(s..nl);
            s = nl + 1;
        }
        if s < block.len() {
            ranges.push(s..block.len());
        }
        // The detectors' rare triggers, searched once over the block.
        prefilter.scan(session.redactor(), block, &ranges);
        for (i, range) in ranges.iter().enumerate() {
            let (start, end) = (range.start, range.end);
            let next = (end + 1).min(block.len());
            n += 1;
            let line: Cow<str> = match valid {
                Some(v) => Cow::Borrowed(&v[start..end]),
                None => String::from_utf8_lossy(&block[start..end]),
            };
            // A lossily decoded line is never written from the input.
            let lossy = matches!(line, Cow::Owned(_));
            let json_line = match args.format {
                Format::Text => false,
                Format::Json => true,
                Format::Auto => line.trim_start().starts_with('{'),
            };
            let mut done = false;
            if json_line {
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(mut v) => {
                        emit(&mut w, &mut copy_from, start, next, None)?;
                        if session.redact_json(&mut v, &scope) {
                            serde_json::to_writer(&mut w, &v)?;
                            w.write_all(b"\n")?;
                        } else {
                            dropped_lines += 1;
                        }
                        done = true;
                    }
                    Err(e) if args.format == Format::Json => bail!("line {n}: not JSON: {e}"),
                    Err(_) => {}
                }
            }
            if !done {
                rewritten.clear();
                let hints = if lossy {
                    LineHints::UNKNOWN
                } else {
                    prefilter.hints(i)
                };
                match session.redact_hinted(&line, hints, &scope, &mut rewritten) {
                    Verdict::Unchanged if !lossy => {
                        // Written with its run; a last line without `\n`
                        // gets one, as every other line.
                        if next == end {
                            emit(&mut w, &mut copy_from, start, next, Some(line.as_bytes()))?;
                        }
                    }
                    Verdict::Unchanged => {
                        emit(&mut w, &mut copy_from, start, next, Some(line.as_bytes()))?
                    }
                    Verdict::Rewritten => emit(
                        &mut w,
                        &mut copy_from,
                        start,
                        next,
                        Some(rewritten.as_bytes()),
                    )?,
                    // The line is the field: it stays, empty, so line numbers hold.
                    Verdict::DropField => emit(&mut w, &mut copy_from, start, next, Some(b""))?,
                    Verdict::DropEvent => {
                        emit(&mut w, &mut copy_from, start, next, None)?;
                        dropped_lines += 1;
                    }
                }
            }
            if n.is_multiple_of(MAP_EVERY) {
                flush_map(&mut session, &mut pending, &mut totals)?;
            }
        }
        emit(&mut w, &mut copy_from, block.len(), block.len(), None)?;
    }
    flush_map(&mut session, &mut pending, &mut totals)?;
    w.flush()?;
    if args.stats {
        let summary = json!({
            "lines": n,
            "lines_dropped": dropped_lines,
            "redacted": totals.redacted,
            "fields_dropped": totals.fields_dropped,
            "events_dropped": totals.events_dropped,
        });
        if out == Output::Json {
            eprintln!("{summary}");
        } else {
            let by: Vec<String> = totals
                .redacted
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            eprintln!(
                "{n} lines, {} findings redacted ({}), {dropped_lines} lines dropped",
                totals.total(),
                by.join(", ")
            );
        }
    }
    Ok(())
}

/// Input read in blocks of whole lines.
///
/// Each block is read with few large `read`s and handed out whole: the
/// caller splits it at `\n` in place, so no line is copied. Every block
/// ends with `\n` except, possibly, the last one of the input. A line longer
/// than the buffer grows it.
struct Lines<R> {
    input: R,
    buf: Vec<u8>,
    /// Bytes in `buf` (a partial line carried from the last block first).
    filled: usize,
    /// Bytes of `buf` handed out as the last block.
    handed: usize,
    eof: bool,
}

/// Block size. Measured (200 MB of loghub, default policy): blocks that
/// stay in the L2 cache between the kernel's copy and the scan are cheaper
/// than 1 MiB ones; 8 KiB reads cost a fifth of the run in syscalls.
const BLOCK: usize = 256 << 10;

impl<R: std::io::Read> Lines<R> {
    fn new(input: R) -> Self {
        Lines {
            input,
            buf: vec![0; BLOCK],
            filled: 0,
            handed: 0,
            eof: false,
        }
    }

    /// The next block of whole lines; `None` at the end of the input.
    fn next_block(&mut self) -> Result<Option<&[u8]>> {
        self.buf.copy_within(self.handed..self.filled, 0);
        self.filled -= self.handed;
        self.handed = 0;
        loop {
            if !self.eof {
                if self.filled == self.buf.len() {
                    let grown = self.buf.len() * 2;
                    self.buf.resize(grown, 0);
                }
                match self.input.read(&mut self.buf[self.filled..]) {
                    Ok(0) => self.eof = true,
                    Ok(k) => self.filled += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).context("reading standard input"),
                }
            }
            if self.eof {
                self.handed = self.filled;
                return Ok((self.filled > 0).then(|| &self.buf[..self.filled]));
            }
            // Fill the buffer at least half first (a pipe gives 64 KiB
            // per read), so blocks stay large.
            if self.filled < self.buf.len() / 2 {
                continue;
            }
            if let Some(i) = memchr::memrchr(b'\n', &self.buf[..self.filled]) {
                self.handed = i + 1;
                return Ok(Some(&self.buf[..self.handed]));
            }
        }
    }
}

fn lookup(out: Output, state_dir: &std::path::Path, token: &str) -> Result<()> {
    let values = pseudomap::lookup(state_dir, token)
        .with_context(|| format!("pseudonym map in {}", state_dir.display()))?;
    if values.is_empty() {
        bail!(
            "no pseudonym {token:?} in the map of {}",
            state_dir.display()
        );
    }
    match out {
        Output::Json => println!("{}", json!({"token": token, "values": values})),
        _ => {
            for v in values {
                println!("{v}");
            }
        }
    }
    Ok(())
}
