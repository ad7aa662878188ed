//! The stdin source: lines read from standard input until it ends.
//!
//! A background thread reads the input (any `BufRead + Send`, so tests can
//! inject one) and hands lines over a bounded channel, so a poll without
//! `drain` never blocks. With `drain`, a poll waits until its limits are
//! reached or the input ends, so `--once` reads all of a piped input; a
//! caller shutting down must therefore not drain a stdin source that may
//! never end (an interactive terminal).
//!
//! Lines are split as in the file source (trailing '\r' stripped, empty lines
//! skipped, long lines cut and marked `truncated = true`); the final line is
//! emitted at end of input even without a newline. Each event carries the
//! attributes `source = "stdin"` and `severity` (detected in the line, see
//! [`super::severity`]); its level is the higher of the severity's level and
//! the configured `level`. Nothing is persisted: standard input cannot be
//! re-read, so commit is a no-op. [`Source::skip_to_end`] drops the lines
//! read but not yet returned.

use super::lines::{Line, LineSplitter};
use super::{line_event, Checkpoint, Poll, Source, SourceError};
use crate::config::StdinSourceConfig;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::sync::mpsc::{self, Receiver, RecvError, SyncSender, TryRecvError};

/// Lines buffered between the reader thread and the poller.
const CHANNEL_LINES: usize = 1024;

enum Msg {
    Line(Line),
    Failed(std::io::Error),
}

/// Reads lines from standard input (or an injected reader) until it ends.
pub struct StdinSource {
    cfg: StdinSourceConfig,
    hostname: String,
    rx: Receiver<Msg>,
    /// A line received that did not fit in the previous poll.
    held: Option<Line>,
    /// A read error not yet reported.
    failed: Option<std::io::Error>,
    /// The input ended (or failed): exhausted forever.
    ended: bool,
    seq: u64,
}

impl StdinSource {
    /// A source reading the process's standard input.
    pub fn from_stdin(cfg: StdinSourceConfig, hostname: &str) -> Result<Self, SourceError> {
        Self::from_reader(cfg, hostname, BufReader::new(std::io::stdin()))
    }

    /// A source reading `reader` on a background thread.
    pub fn from_reader<R: BufRead + Send + 'static>(
        cfg: StdinSourceConfig,
        hostname: &str,
        reader: R,
    ) -> Result<Self, SourceError> {
        let (tx, rx) = mpsc::sync_channel(CHANNEL_LINES);
        let max_line = cfg.max_line_bytes;
        std::thread::Builder::new()
            .name(format!("custos-{}", cfg.name))
            .spawn(move || pump(reader, max_line, tx))
            .map_err(|source| SourceError::Thread {
                name: cfg.name.clone(),
                source,
            })?;
        Ok(Self {
            cfg,
            hostname: hostname.to_string(),
            rx,
            held: None,
            failed: None,
            ended: false,
            seq: 0,
        })
    }

    /// The next line: the held one, else from the channel (waiting if
    /// `block`). `None` when nothing is available now or the input ended.
    fn next_line(&mut self, block: bool) -> Option<Line> {
        if let Some(l) = self.held.take() {
            return Some(l);
        }
        if self.ended {
            return None;
        }
        let msg = if block {
            self.rx
                .recv()
                .map_err(|RecvError| TryRecvError::Disconnected)
        } else {
            self.rx.try_recv()
        };
        match msg {
            Ok(Msg::Line(l)) => Some(l),
            Ok(Msg::Failed(e)) => {
                tracing::error!(source = %self.cfg.name, error = %e, "reading standard input failed; no more input");
                self.failed = Some(e);
                self.ended = true;
                None
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                tracing::info!(source = %self.cfg.name, "end of standard input");
                self.ended = true;
                None
            }
        }
    }
}

/// The reader thread: split the input into lines and send them until the
/// input ends, fails, or the source is dropped.
fn pump<R: BufRead>(mut reader: R, max_line: usize, tx: SyncSender<Msg>) {
    let mut splitter = LineSplitter::new(max_line);
    let mut pending: Vec<u8> = Vec::new();
    let mut start = 0usize;
    let mut eof = false;
    loop {
        match splitter.next(&pending[start..], eof) {
            Some(piece) => {
                start += piece.consumed;
                if let Some(line) = piece.line {
                    if tx.send(Msg::Line(line)).is_err() {
                        return; // the source was dropped
                    }
                }
            }
            None if eof => return,
            None => {
                pending.drain(..start);
                start = 0;
                match reader.fill_buf() {
                    Ok([]) => eof = true,
                    Ok(buf) => {
                        let n = buf.len();
                        pending.extend_from_slice(buf);
                        reader.consume(n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.send(Msg::Failed(e));
                        return;
                    }
                }
            }
        }
    }
}

impl Source for StdinSource {
    fn name(&self) -> String {
        self.cfg.name.clone()
    }

    /// Without `drain`, returns the lines already read and never blocks. With
    /// `drain`, waits until a line beyond the limits has arrived or the input
    /// ends, so a drained poll that is `exhausted` means the input ended.
    /// After the end of input, always returns no events, exhausted. A read
    /// error is returned once, then the source stays ended.
    fn poll(
        &mut self,
        max_events: usize,
        max_bytes: usize,
        drain: bool,
    ) -> Result<Poll, SourceError> {
        if let Some(e) = self.failed.take() {
            return Err(SourceError::Stdin(e));
        }
        let (max_events, max_bytes) = (max_events.max(1), max_bytes.max(1));
        let mut events = Vec::new();
        let mut bytes = 0usize;
        let mut full = false;
        loop {
            // With `drain`, this also waits for one line past the count limit
            // (or the end of input), so `exhausted` is exact: drained and
            // exhausted means the input ended.
            let at_count_limit = events.len() >= max_events;
            let Some(line) = self.next_line(drain) else {
                break;
            };
            if !events.is_empty() && (at_count_limit || bytes + line.text.len() > max_bytes) {
                self.held = Some(line);
                full = true;
                break;
            }
            bytes += line.text.len();
            let mut attrs = BTreeMap::new();
            attrs.insert("source".to_string(), "stdin".into());
            if line.truncated {
                attrs.insert("truncated".to_string(), true.into());
            }
            events.push(line_event(
                &self.cfg.table,
                self.cfg.level,
                &self.hostname,
                line.text,
                attrs,
            ));
        }
        if events.is_empty() {
            if let Some(e) = self.failed.take() {
                return Err(SourceError::Stdin(e));
            }
        }
        self.seq += 1;
        Ok(Poll {
            events,
            checkpoint: Checkpoint::new(&self.cfg.name, self.seq, None),
            exhausted: !full,
        })
    }

    fn commit(&mut self, checkpoint: &Checkpoint) -> Result<(), SourceError> {
        checkpoint.check_owner(&self.cfg.name)
    }

    /// Drop every line already read (buffered in the channel or held from
    /// the previous poll). Never blocks; a line the reader thread is still
    /// assembling arrives later.
    fn skip_to_end(&mut self) -> Result<(), SourceError> {
        let mut dropped = usize::from(self.held.take().is_some());
        while self.next_line(false).is_some() {
            dropped += 1;
        }
        tracing::debug!(source = %self.cfg.name, lines = dropped, "skipped buffered input");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_model::{Category, Level, TableName, Value};
    use std::io::{Cursor, Write};
    use std::time::{Duration, Instant};

    fn cfg(max_line_bytes: usize) -> StdinSourceConfig {
        StdinSourceConfig {
            name: "stdin".into(),
            table: TableName::new("app").unwrap(),
            level: Level::Basic,
            max_line_bytes,
        }
    }

    fn messages(p: &Poll) -> Vec<String> {
        p.events.iter().map(|e| e.message.clone()).collect()
    }

    #[test]
    fn reads_all_lines_until_eof_then_is_exhausted_forever() {
        let input = Cursor::new(b"one\r\n\ntwo\nlast-without-newline".to_vec());
        let mut src = StdinSource::from_reader(cfg(1000), "h1", input).unwrap();
        let p = src.poll(100, 1 << 20, true).unwrap();
        assert_eq!(messages(&p), ["one", "two", "last-without-newline"]);
        assert!(p.exhausted);
        let e = &p.events[0];
        assert_eq!(e.table.as_str(), "app");
        // No severity in the line: unknown, level full (above the floor).
        assert_eq!((e.level, e.category), (Level::Full, Category::Logs));
        assert_eq!(e.attrs.get("severity"), Some(&Value::Str("unknown".into())));
        assert_eq!(e.host, "h1");
        assert_eq!(e.attrs.get("source"), Some(&Value::Str("stdin".into())));
        for e in &p.events {
            custos_model::registry::Registry::builtin()
                .check_event(e)
                .unwrap();
        }
        src.commit(&p.checkpoint).unwrap();
        for drain in [false, true] {
            let p = src.poll(100, 1 << 20, drain).unwrap();
            assert!(p.events.is_empty() && p.exhausted);
        }
    }

    #[test]
    fn level_is_the_higher_of_the_severity_level_and_the_configured_floor() {
        let input = Cursor::new(b"ERROR disk\nINFO ok\n[warn] x\n".to_vec());
        let mut src = StdinSource::from_reader(cfg(1000), "h", input).unwrap();
        let p = src.poll(100, 1 << 20, true).unwrap();
        let got: Vec<(Level, Value)> = p
            .events
            .iter()
            .map(|e| (e.level, e.attrs["severity"].clone()))
            .collect();
        assert_eq!(
            got,
            [
                (Level::Enhanced, Value::Str("error".into())),
                (Level::Full, Value::Str("info".into())),
                (Level::Enhanced, Value::Str("warning".into())),
            ]
        );
        let mut c = cfg(1000);
        c.level = Level::Full;
        let input = Cursor::new(b"ERROR disk\n".to_vec());
        let mut src = StdinSource::from_reader(c, "h", input).unwrap();
        assert_eq!(
            src.poll(100, 1 << 20, true).unwrap().events[0].level,
            Level::Full
        );
    }

    #[test]
    fn skip_to_end_drops_buffered_lines() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let mut src = StdinSource::from_reader(cfg(1000), "h", BufReader::new(reader)).unwrap();
        writer.write_all(b"old 1\nold 2\nold 3\n").unwrap();
        // Wait until the reader thread has passed them on.
        let deadline = Instant::now() + Duration::from_secs(10);
        let p = src.poll(1, 1 << 20, false).unwrap();
        let mut got = messages(&p);
        while got.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            got = messages(&src.poll(1, 1 << 20, false).unwrap());
        }
        assert_eq!(got, ["old 1"]);
        std::thread::sleep(Duration::from_millis(50));
        src.skip_to_end().unwrap();
        writer.write_all(b"new\n").unwrap();
        drop(writer);
        assert_eq!(messages(&src.poll(100, 1 << 20, true).unwrap()), ["new"]);
    }

    #[test]
    fn limits_bound_each_poll() {
        let input = Cursor::new(b"a\nb\nc\n".to_vec());
        let mut src = StdinSource::from_reader(cfg(1000), "h", input).unwrap();
        let p = src.poll(2, 1 << 20, true).unwrap();
        assert_eq!(messages(&p), ["a", "b"]);
        assert!(!p.exhausted);
        assert_eq!(messages(&src.poll(2, 1 << 20, true).unwrap()), ["c"]);
    }

    #[test]
    fn long_lines_are_split_and_marked_truncated() {
        let input = Cursor::new(b"abcdef\n".to_vec());
        let mut src = StdinSource::from_reader(cfg(4), "h", input).unwrap();
        let p = src.poll(100, 1 << 20, true).unwrap();
        assert_eq!(messages(&p), ["abcd", "ef"]);
        assert!(p
            .events
            .iter()
            .all(|e| e.attrs.get("truncated") == Some(&Value::Bool(true))));
    }

    #[test]
    fn poll_without_drain_does_not_block_on_open_input() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let mut src = StdinSource::from_reader(cfg(1000), "h", BufReader::new(reader)).unwrap();
        writer.write_all(b"early\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.is_empty() && Instant::now() < deadline {
            let p = src.poll(100, 1 << 20, false).unwrap();
            assert!(p.exhausted);
            got.extend(messages(&p));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(got, ["early"]);
        writer.write_all(b"late").unwrap();
        drop(writer);
        assert_eq!(messages(&src.poll(100, 1 << 20, true).unwrap()), ["late"]);
    }

    #[test]
    fn foreign_checkpoint_is_refused() {
        let mut src = StdinSource::from_reader(cfg(10), "h", Cursor::new(Vec::new())).unwrap();
        let other = Checkpoint::new("other", 1, None);
        assert!(src
            .commit(&other)
            .unwrap_err()
            .to_string()
            .contains("other"));
    }
}
