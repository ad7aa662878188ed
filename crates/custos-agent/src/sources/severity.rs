//! Log severity detection: [`detect`] reads the severity of a log line from
//! its first [`SCAN_BYTES`] bytes. Pure, allocation-free, never panics.
//!
//! Recognised, in this order (the first form that matches decides):
//!
//! 1. A syslog priority `<PRI>` at the very start (`<34>Oct 11 ...`,
//!    `<13>1 2003-...`), which also covers the kernel's `<3>` prefix: the
//!    severity is `PRI & 7` (0 emergency ... 7 debug). PRI at most 191.
//! 2. A `/dev/kmsg` record prefix `PRI,SEQ,TIME,FLAGS;`.
//! 3. glog: `E1122 12:00:00.000000 ...` (`I`, `W`, `E`, `F`).
//! 4. Android logcat: threadtime `03-17 16:13:38.811  1702  2395 D Tag: ...`
//!    (with or without a year) and brief `W/Tag( 123): ...`
//!    (`V`/`D` debug, `I` info, `W` warning, `E` error, `F`/`A` critical).
//! 5. Tornado-style `[W 230101 12:00:00 web:1] ...` (`D`, `I`, `W`, `E`, `C`).
//! 6. A level key: logfmt `level=warn`, `lvl=eror`, `severity="error"`, and
//!    JSON `"level":"error"`, `"level": 50`. Keys: `level`, `lvl`,
//!    `loglevel`, `log_level`, `log.level`, `levelname`, `level_name`,
//!    `severity`, `severity_text`, `severitytext`, any case. With a quoted
//!    (JSON) key the value may also be a number: 0-7 are syslog severities,
//!    10/20/30/40/50/60 the bunyan/pino scale (trace, debug, info, warn,
//!    error, fatal). A `key: value` with an unquoted key is not a level key
//!    ("battery level: 50" is not an error).
//! 7. A level word (see the vocabulary below), any case, as a whole word:
//!    not part of a longer word, a path or a key (`errors=0`, `error_count`,
//!    `/var/log/error.log`, `status=ERROR` and `error(s)` do not count). A
//!    word counts when
//!    - it is bracketed: `[error]`, `[ WARN ]`, `<warn>`, MySQL `[Note]`,
//!      Serilog `[INF]`, Xorg `(EE)`/`(WW)`/`(II)`;
//!    - or it is followed by a colon: `error: ...`, `WARNING:root:...`;
//!    - or it is written in capitals: `ERROR`, `WARN`, logrus `WARN[0000]`;
//!    - or only header fields precede it: fields that hold a digit
//!      (timestamps, pids), punctuation, month and weekday names, `UTC`,
//!      `GMT`, `AM`/`PM` or a bracketed field (`2016-09-28 04:30:30, Info ...`).
//!
//!    A lower-case word in the middle of the text (`... connection error
//!    ...`) does not count: that is a message, not a level.
//!
//! Vocabulary: `emerg`, `emergency` → emergency; `alert` → alert; `crit`,
//! `critical`, `fatal`, `fata`, `ftl`, `panic`, `pani` → critical; `err`,
//! `error`, `erro`, `eror`, `severe` (java.util.logging) → error; `warn`,
//! `warning`, `wrn` → warning; `notice`, `note` → notice; `info`, `inf`,
//! `information`, `informational` → info; `debug`, `debu`, `dbug`, `dbg`,
//! `trace`, `trac`, `verbose`, `vrb`, `fine`, `finer`, `finest` → debug.
//!
//! This covers syslog, the Linux kernel, Java/log4j/logback, Python
//! logging, Hadoop/Spark/HDFS/ZooKeeper, Apache and nginx error logs,
//! OpenStack, Go (logrus, log15, zap JSON), Rust (tracing, env_logger),
//! .NET (Serilog), MySQL, PostgreSQL (`ERROR:`, `FATAL:`, `WARNING:`) and
//! Windows CBS logs. Anything else is [`Severity::Unknown`].
//!
//! Accuracy on real logs is measured by a test on the loghub corpus (lines
//! whose level is known from their format): it must stay at or above 98%.

use custos_model::registry::Severity;

/// Only this many bytes at the start of a line are examined (a word that
/// starts within them may end after them).
pub const SCAN_BYTES: usize = 200;

/// Longest level word or value looked at (longer letter runs are skipped).
const MAX_WORD: usize = 13;

/// The severity of a log line, or [`Severity::Unknown`].
pub fn detect(line: &str) -> Severity {
    let b = line.as_bytes();
    syslog_pri(b)
        .or_else(|| kmsg(b))
        .or_else(|| glog(b))
        .or_else(|| logcat(b))
        .or_else(|| tornado(b))
        .or_else(|| key_value(b))
        .or_else(|| words(b))
        .unwrap_or(Severity::Unknown)
}

/// The syslog severity number 0-7.
fn from_syslog(n: u32) -> Severity {
    match n & 7 {
        0 => Severity::Emergency,
        1 => Severity::Alert,
        2 => Severity::Critical,
        3 => Severity::Error,
        4 => Severity::Warning,
        5 => Severity::Notice,
        6 => Severity::Info,
        _ => Severity::Debug,
    }
}

/// A level letter: Android (`V D I W E F A`), glog (`I W E F`), Tornado
/// (`D I W E C`).
fn from_letter(c: u8) -> Option<Severity> {
    Some(match c {
        b'V' | b'D' => Severity::Debug,
        b'I' => Severity::Info,
        b'W' => Severity::Warning,
        b'E' => Severity::Error,
        b'F' | b'A' | b'C' => Severity::Critical,
        _ => return None,
    })
}

/// A level word of the vocabulary (any case).
fn from_word(w: &[u8]) -> Option<Severity> {
    if w.len() < 3 || w.len() > MAX_WORD {
        return None;
    }
    let mut buf = [0u8; MAX_WORD];
    let lower = &mut buf[..w.len()];
    lower.copy_from_slice(w);
    lower.make_ascii_lowercase();
    Some(match &*lower {
        b"emerg" | b"emergency" => Severity::Emergency,
        b"alert" => Severity::Alert,
        b"crit" | b"critical" | b"fatal" | b"fata" | b"ftl" | b"panic" | b"pani" => {
            Severity::Critical
        }
        b"err" | b"error" | b"erro" | b"eror" | b"severe" => Severity::Error,
        b"warn" | b"warning" | b"wrn" => Severity::Warning,
        b"notice" | b"note" => Severity::Notice,
        b"info" | b"inf" | b"information" | b"informational" => Severity::Info,
        b"debug" | b"debu" | b"dbug" | b"dbg" | b"trace" | b"trac" | b"verbose" | b"vrb"
        | b"fine" | b"finer" | b"finest" => Severity::Debug,
        _ => return None,
    })
}

/// Parse ASCII digits `b[i..]`: (value, index after the digits), at most
/// `max` digits, at least one.
fn digits(b: &[u8], i: usize, max: usize) -> Option<(u32, usize)> {
    let mut v: u32 = 0;
    let mut j = i;
    while j < b.len() && j - i < max && b[j].is_ascii_digit() {
        v = v * 10 + u32::from(b[j] - b'0');
        j += 1;
    }
    (j > i).then_some((v, j))
}

/// `b[i..]` is exactly `n` digits (followed by a non-digit or the end).
fn exact_digits(b: &[u8], i: usize, n: usize) -> bool {
    b.len() >= i + n
        && b[i..i + n].iter().all(u8::is_ascii_digit)
        && b.get(i + n).is_none_or(|c| !c.is_ascii_digit())
}

/// `<PRI>` at the start.
fn syslog_pri(b: &[u8]) -> Option<Severity> {
    if b.first() != Some(&b'<') {
        return None;
    }
    let (v, j) = digits(b, 1, 3)?;
    (b.get(j) == Some(&b'>') && v <= 191).then(|| from_syslog(v))
}

/// `/dev/kmsg`: `PRI,SEQ,TIME,FLAGS;message`.
fn kmsg(b: &[u8]) -> Option<Severity> {
    let (pri, j) = digits(b, 0, 4)?;
    let mut j = j;
    for _ in 0..2 {
        if b.get(j) != Some(&b',') {
            return None;
        }
        j = digits(b, j + 1, 20)?.1;
    }
    if b.get(j) != Some(&b',') {
        return None;
    }
    // FLAGS: a few characters, then ';'.
    let rest = &b[j + 1..b.len().min(j + 8)];
    rest.contains(&b';').then(|| from_syslog(pri))
}

/// glog: `Lmmdd hh:mm:ss`.
fn glog(b: &[u8]) -> Option<Severity> {
    if b.len() < 14 || !matches!(b[0], b'I' | b'W' | b'E' | b'F') {
        return None;
    }
    let ok = exact_digits(b, 1, 4)
        && b[5] == b' '
        && exact_digits(b, 6, 2)
        && b[8] == b':'
        && exact_digits(b, 9, 2)
        && b[11] == b':'
        && exact_digits(b, 12, 2);
    if ok {
        from_letter(b[0])
    } else {
        None
    }
}

/// The whitespace-separated field starting at or after `i`: (start, end).
fn next_field(b: &[u8], mut i: usize) -> Option<(usize, usize)> {
    while i < b.len() && b[i] == b' ' {
        i += 1;
    }
    let s = i;
    while i < b.len() && !b[i].is_ascii_whitespace() {
        i += 1;
    }
    (i > s).then_some((s, i))
}

/// Android logcat, threadtime (`MM-DD hh:mm:ss.mmm PID TID L Tag:`, the date
/// possibly with a year) or brief (`L/Tag(PID):`).
fn logcat(b: &[u8]) -> Option<Severity> {
    if b.len() > 3 && b[1] == b'/' && from_letter(b[0]).is_some() && b[0] != b'C' {
        // brief: L/Tag( 123):
        let window = &b[..b.len().min(SCAN_BYTES)];
        let open = window.iter().position(|&c| c == b'(')?;
        let mut j = open + 1;
        while j < window.len() && window[j] == b' ' {
            j += 1;
        }
        let (_, j) = digits(window, j, 10)?;
        return (window.get(j) == Some(&b')') && window.get(j + 1) == Some(&b':'))
            .then(|| from_letter(b[0]))
            .flatten();
    }
    let (s, e) = next_field(b, 0)?;
    let date = &b[s..e];
    let date_ok = match date.len() {
        5 => exact_digits(date, 0, 2) && date[2] == b'-' && exact_digits(date, 3, 2),
        10 => {
            exact_digits(date, 0, 4)
                && date[4] == b'-'
                && exact_digits(date, 5, 2)
                && date[7] == b'-'
                && exact_digits(date, 8, 2)
        }
        _ => false,
    };
    if !date_ok {
        return None;
    }
    let (s, e) = next_field(b, e)?;
    let time = &b[s..e];
    if !(time.len() >= 8 && exact_digits(time, 0, 2) && time[2] == b':' && time[5] == b':') {
        return None;
    }
    let mut at = e;
    for _ in 0..2 {
        let (s, e) = next_field(b, at)?;
        if !b[s..e].iter().all(u8::is_ascii_digit) {
            return None;
        }
        at = e;
    }
    let (s, e) = next_field(b, at)?;
    if e - s != 1 || b[s] == b'C' {
        return None;
    }
    from_letter(b[s])
}

/// `[L yymmdd ...` (Tornado and similar).
fn tornado(b: &[u8]) -> Option<Severity> {
    if b.len() > 4 && b[0] == b'[' && b[2] == b' ' && b[3].is_ascii_digit() && b[1] != b'V' {
        from_letter(b[1]).filter(|_| b[1] != b'F' && b[1] != b'A')
    } else {
        None
    }
}

const LEVEL_KEYS: [&[u8]; 10] = [
    b"level",
    b"lvl",
    b"loglevel",
    b"log_level",
    b"log.level",
    b"levelname",
    b"level_name",
    b"severity",
    b"severity_text",
    b"severitytext",
];

/// A level key and its value: `level=warn`, `"level":"error"`, `"level":50`.
fn key_value(b: &[u8]) -> Option<Severity> {
    let limit = b.len().min(SCAN_BYTES);
    for i in 0..limit {
        let c = b[i].to_ascii_lowercase();
        if c != b'l' && c != b's' {
            continue;
        }
        let quote = match i.checked_sub(1).map(|p| b[p]) {
            None => None,
            Some(q @ (b'"' | b'\'')) => Some(q),
            Some(p)
                if p.is_ascii_whitespace()
                    || matches!(p, b'{' | b',' | b';' | b'|' | b'[' | b'(') =>
            {
                None
            }
            Some(_) => continue,
        };
        for key in LEVEL_KEYS {
            let end = i + key.len();
            if end > b.len() || !b[i..end].eq_ignore_ascii_case(key) {
                continue;
            }
            if let Some(s) = level_value(b, end, quote) {
                return Some(s);
            }
        }
    }
    None
}

/// The value after a level key ending at `j`; `quote` is the key's opening
/// quote, if any.
fn level_value(b: &[u8], mut j: usize, quote: Option<u8>) -> Option<Severity> {
    if let Some(q) = quote {
        if b.get(j) != Some(&q) {
            return None;
        }
        j += 1;
    }
    while b.get(j) == Some(&b' ') {
        j += 1;
    }
    match b.get(j) {
        Some(b'=') => {}
        Some(b':') if quote.is_some() => {}
        _ => return None,
    }
    j += 1;
    while b.get(j) == Some(&b' ') {
        j += 1;
    }
    let quoted_value = matches!(b.get(j), Some(b'"' | b'\''));
    if quoted_value {
        j += 1;
    }
    let s = j;
    while j < b.len() && j - s <= MAX_WORD && b[j].is_ascii_alphanumeric() {
        j += 1;
    }
    let v = &b[s..j];
    if v.is_empty()
        || b.get(j)
            .is_some_and(|&c| c == b'_' || c == b'-' || c == b'.')
    {
        return None;
    }
    if v.iter().all(u8::is_ascii_digit) {
        // Numbers only in JSON (a quoted key), never quoted themselves.
        if quote.is_none() || quoted_value {
            return None;
        }
        if v.len() > 2 {
            return None;
        }
        let (n, _) = digits(v, 0, 2)?;
        return match n {
            0..=7 => Some(from_syslog(n)),
            10 | 20 => Some(Severity::Debug),
            30 => Some(Severity::Info),
            40 => Some(Severity::Warning),
            50 => Some(Severity::Error),
            60 => Some(Severity::Critical),
            _ => None,
        };
    }
    from_word(v)
}

/// May a level word start after byte `c`?
fn left_ok(c: Option<u8>) -> bool {
    match c {
        None => true,
        Some(c) => {
            c.is_ascii_whitespace() || matches!(c, b'[' | b'(' | b'<' | b'{' | b'|' | b'"' | b'\'')
        }
    }
}

/// May a level word end before byte `c`?
fn right_ok(c: Option<u8>) -> bool {
    match c {
        None => true,
        Some(c) => {
            c.is_ascii_whitespace()
                || matches!(
                    c,
                    b']' | b')' | b'>' | b'}' | b'|' | b'"' | b'\'' | b':' | b',' | b';'
                )
        }
    }
}

/// Is the word `b[s..e]` enclosed in `[ ]` or `< >`, possibly padded with
/// spaces?
fn bracketed(b: &[u8], s: usize, e: usize) -> bool {
    let mut l = s;
    while l > 0 && b[l - 1] == b' ' {
        l -= 1;
    }
    let mut r = e;
    while r < b.len() && b[r] == b' ' {
        r += 1;
    }
    if l == 0 || r >= b.len() {
        return false;
    }
    matches!((b[l - 1], b[r]), (b'[', b']') | (b'<', b'>'))
}

const HEADER_WORDS: [&[u8]; 24] = [
    b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec",
    b"mon", b"tue", b"wed", b"thu", b"fri", b"sat", b"sun", b"utc", b"gmt", b"am", b"pm", b"z",
];

/// A field that may precede a level in a line's header: it holds a digit,
/// is punctuation only, is bracketed, or is a month or weekday name, a time
/// zone or AM/PM. A field with letters that ends in a colon (a program tag
/// such as `sshd[123]:`) ends the header: the message follows it.
fn header_like(f: &[u8]) -> bool {
    if f.ends_with(b":") && f.iter().any(u8::is_ascii_alphabetic) {
        return false;
    }
    if f.iter().any(u8::is_ascii_digit) || f.iter().all(u8::is_ascii_punctuation) {
        return true;
    }
    if f.len() >= 2 && f[0] == b'[' && f[f.len() - 1] == b']' {
        return true;
    }
    let f = f
        .strip_suffix(b",")
        .or_else(|| f.strip_suffix(b"."))
        .unwrap_or(f);
    HEADER_WORDS.iter().any(|w| f.eq_ignore_ascii_case(w))
}

/// Where the first field that is not header-like starts (or the limit).
fn header_end(b: &[u8], limit: usize) -> usize {
    let mut i = 0;
    while i < limit {
        while i < limit && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let s = i;
        while i < b.len() && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        if s < i && !header_like(&b[s..i]) {
            return s;
        }
    }
    limit
}

/// Xorg's `(EE)`, `(WW)`, `(II)` at `b[s..s+4]`.
fn xorg(b: &[u8], s: usize) -> Option<Severity> {
    let w = b.get(s..s + 4)?;
    if w[0] != b'(' || w[3] != b')' || w[1] != w[2] {
        return None;
    }
    if !left_ok(s.checked_sub(1).map(|p| b[p])) || !right_ok(b.get(s + 4).copied()) {
        return None;
    }
    match w[1] {
        b'E' => Some(Severity::Error),
        b'W' => Some(Severity::Warning),
        b'I' => Some(Severity::Info),
        _ => None,
    }
}

/// The first level word that counts (see the module documentation).
fn words(b: &[u8]) -> Option<Severity> {
    let limit = b.len().min(SCAN_BYTES);
    let mut header: Option<usize> = None;
    let mut i = 0;
    while i < limit {
        if b[i] == b'(' {
            if let Some(s) = xorg(b, i) {
                return Some(s);
            }
        }
        if !b[i].is_ascii_alphabetic() {
            i += 1;
            continue;
        }
        let s = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let e = i;
        if e - s > MAX_WORD {
            continue;
        }
        let left = s.checked_sub(1).map(|p| b[p]);
        let right = b.get(e).copied();
        if !left_ok(left) {
            continue;
        }
        let word = &b[s..e];
        let upper = word.iter().all(u8::is_ascii_uppercase);
        // logrus and log15 print `WARN[0000]`.
        if !(right_ok(right) || (upper && right == Some(b'['))) {
            continue;
        }
        let Some(sev) = from_word(word) else { continue };
        if upper || right == Some(b':') || bracketed(b, s, e) {
            return Some(sev);
        }
        // In the header: only header-like fields before the word's field.
        let field_start = b[..s]
            .iter()
            .rposition(u8::is_ascii_whitespace)
            .map_or(0, |p| p + 1);
        let end = *header.get_or_insert_with(|| header_end(b, limit));
        if field_start <= end {
            return Some(sev);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Path, PathBuf};
    use Severity::*;

    #[test]
    fn syslog_priority_and_kernel_prefixes() {
        assert_eq!(
            detect("<34>Oct 11 22:14:15 mymachine su: 'su root' failed"),
            Critical
        );
        assert_eq!(
            detect("<13>1 2003-10-11T22:14:15.003Z host app - - - hi"),
            Notice
        );
        assert_eq!(
            detect("<3>[ 12.345] usb 1-1: device descriptor read error"),
            Error
        );
        assert_eq!(detect("<7>debugging"), Debug);
        assert_eq!(detect("<0>panic"), Emergency);
        assert_eq!(detect("6,1234,5678901,-;eth0: link up"), Info);
        assert_eq!(detect("4,99,100,c;warning from kmsg"), Warning);
        // Not a priority: too large, not at the start, no closing bracket.
        assert_eq!(detect("<999>hello"), Unknown);
        assert_eq!(detect("x <3> hello"), Unknown);
        assert_eq!(detect("<3 hello"), Unknown);
    }

    #[test]
    fn bracketed_and_bare_words() {
        assert_eq!(
            detect("[Sun Dec 04 04:47:44 2005] [error] mod_jk child"),
            Error
        );
        assert_eq!(
            detect("[Sun Dec 04 04:47:44 2005] [notice] jk2_init() Found"),
            Notice
        );
        assert_eq!(
            detect("2023/01/01 12:00:00 [warn] 123#0: *1 upstream"),
            Warning
        );
        assert_eq!(
            detect("2023-01-01 12:00:00,123 ERROR [main] com.foo.Bar - boom"),
            Error
        );
        assert_eq!(
            detect("2015-10-18 18:01:47,978 INFO [main] org.apache.hadoop: x"),
            Info
        );
        assert_eq!(
            detect("2015-07-29 17:41:44,747 - WARN  [SendWorker:1] - leaving"),
            Warning
        );
        assert_eq!(
            detect("17/06/09 20:10:40 INFO executor.Executor: Running task"),
            Info
        );
        assert_eq!(
            detect("081109 203615 148 INFO dfs.DataNode$PacketResponder: x"),
            Info
        );
        assert_eq!(detect("2023-01-01 12:00:00 FATAL  org.x: dying"), Critical);
        assert_eq!(detect("PANIC: could not write to file"), Critical);
        assert_eq!(
            detect("2023-01-01 12:00:00.123 UTC [123] FATAL:  role does not exist"),
            Critical
        );
        assert_eq!(detect("2023-01-01 12:00:00 CRIT something"), Critical);
        assert_eq!(detect("EMERG: disk on fire"), Emergency);
        assert_eq!(detect("ALERT: intrusion"), Alert);
        assert_eq!(detect("2023-01-01T00:00:00Z NOTICE x"), Notice);
        assert_eq!(detect("12:00:00 DEBUG foo"), Debug);
        assert_eq!(detect("12:00:00 TRACE foo"), Debug);
        assert_eq!(detect("[ INFO ] started"), Info);
        assert_eq!(detect("[INFO ] started"), Info);
        assert_eq!(detect("<warn> something"), Warning);
        assert_eq!(
            detect("2023-01-01T12:00:00.123Z  WARN custos::run: slow"),
            Warning
        );
        assert_eq!(detect("[2023-01-01T12:00:00Z ERROR foo] boom"), Error);
        assert_eq!(detect("WARN[0000] logrus says"), Warning);
        assert_eq!(detect("ERRO[0001] logrus failed"), Error);
        assert_eq!(detect("[12:00:00 INF] Serilog"), Info);
        assert_eq!(detect("[12:00:00 WRN] Serilog"), Warning);
        assert_eq!(
            detect("2023-01-01T12:00:00.123456Z 0 [Warning] [MY-010068] x"),
            Warning
        );
        assert_eq!(
            detect("2023-01-01T12:00:00.123456Z 0 [Note] [MY-010000] x"),
            Notice
        );
        assert_eq!(detect("[    10.123] (EE) Failed to load module"), Error);
        assert_eq!(detect("[    10.123] (WW) warning"), Warning);
        assert_eq!(detect("SEVERE: java.util.logging"), Error);
        assert_eq!(
            detect("Dec 10 06:55:46 LabSZ sshd[24200]: error: Received disconnect"),
            Error
        );
        assert_eq!(
            detect("2016-09-28 04:30:30, Info                  CBS    Loaded"),
            Info
        );
        assert_eq!(
            detect("2016-09-28 04:30:30, Warning               CBS    x"),
            Warning
        );
        assert_eq!(detect("Sep 28 04:30:30 info something"), Info);
    }

    #[test]
    fn python_logging_formats() {
        assert_eq!(detect("WARNING:root:disk almost full"), Warning);
        assert_eq!(detect("CRITICAL:app.db:gone"), Critical);
        assert_eq!(
            detect("2023-01-01 12:00:00,123 - app.module - ERROR - failed"),
            Error
        );
        assert_eq!(
            detect("2023-01-01 12:00:00,123 app.module DEBUG details"),
            Debug
        );
    }

    #[test]
    fn glog_logcat_and_tornado_prefixes() {
        assert_eq!(detect("E1122 12:00:00.000000  1234 file.cc:12] bad"), Error);
        assert_eq!(
            detect("W1122 12:00:00.000000  1234 file.cc:12] meh"),
            Warning
        );
        assert_eq!(detect("I1122 12:00:00.000000  1234 file.cc:12] ok"), Info);
        assert_eq!(
            detect("F1122 12:00:00.000000  1234 file.cc:12] dead"),
            Critical
        );
        assert_eq!(detect("E0123 not glog"), Unknown);
        assert_eq!(
            detect("03-17 16:13:38.811  1702  2395 D WindowManager: x"),
            Debug
        );
        assert_eq!(
            detect("03-17 16:13:38.811  1702  2395 W WindowManager: ERROR x"),
            Warning
        );
        assert_eq!(detect("03-17 16:13:38.811  1702  2395 V Tag: x"), Debug);
        assert_eq!(
            detect("2023-03-17 16:13:38.811  1702  2395 E Tag: x"),
            Error
        );
        assert_eq!(detect("I/ActivityManager(  585): Start proc"), Info);
        assert_eq!(detect("E/AndroidRuntime(1234): FATAL EXCEPTION"), Error);
        assert_eq!(detect("[W 230101 12:00:00 web:2250] 404 GET"), Warning);
        assert_eq!(detect("[I 230101 12:00:00 web:2250] 200 GET"), Info);
    }

    #[test]
    fn level_keys_in_logfmt_and_json() {
        assert_eq!(
            detect("time=2023-01-01T00:00:00Z level=warn msg=\"ERROR in x\""),
            Warning
        );
        assert_eq!(detect("t=2023 lvl=eror msg=x"), Error);
        assert_eq!(detect("ts=1 level=\"debug\" msg=x"), Debug);
        assert_eq!(
            detect("{\"time\":\"2023\",\"level\":\"error\",\"msg\":\"x\"}"),
            Error
        );
        assert_eq!(detect("{\"level\": \"WARNING\", \"msg\": \"x\"}"), Warning);
        assert_eq!(detect("{\"severity\":\"CRITICAL\"}"), Critical);
        assert_eq!(detect("{\"log.level\":\"info\"}"), Info);
        assert_eq!(detect("{\"levelname\": \"ERROR\"}"), Error);
        assert_eq!(
            detect("{\"name\":\"app\",\"level\":50,\"msg\":\"x\"}"),
            Error
        );
        assert_eq!(detect("{\"level\":30}"), Info);
        assert_eq!(detect("{\"level\":60}"), Critical);
        assert_eq!(detect("{\"level\":3,\"short_message\":\"gelf\"}"), Error);
        assert_eq!(detect("{\"level\":35}"), Unknown);
        // Unquoted keys with a colon, and numbers outside JSON, are not levels.
        assert_eq!(detect("battery level: 50 percent"), Unknown);
        assert_eq!(detect("level=50"), Unknown);
        assert_eq!(detect("loglevel=error starting"), Error);
        assert_eq!(detect("sea_level=error"), Unknown);
    }

    #[test]
    fn words_in_the_message_body_do_not_count() {
        for line in [
            "Dec 10 06:55:46 LabSZ sshd[24200]: Invalid user webmaster from 173.234.31.186",
            "disk check done, errors=0 warnings=0",
            "connection error while talking to upstream",
            "wrote /var/log/error.log",
            "status=ERROR_TIMEOUT code=5",
            "status=ERROR",
            "error_count 5",
            "3 error(s) found",
            "request took 5 ms, no errors",
            "user alerted the admin about informational material",
            "the debugger attached",
            "app[12]: information about critical-path analysis",
            "",
            "    ",
        ] {
            assert_eq!(detect(line), Unknown, "{line}");
        }
    }

    #[test]
    fn only_the_start_of_a_line_is_examined() {
        let mut line = "x ".repeat(150);
        line.push_str("ERROR late");
        assert_eq!(detect(&line), Unknown);
        // A word cut at the scan limit is read whole, so "ERRORS" is not "ERROR".
        let mut line = "x".repeat(SCAN_BYTES - 5);
        line.push_str(" ERRORS ");
        assert_eq!(detect(&line), Unknown);
        let mut line = "x".repeat(SCAN_BYTES - 5);
        line.push_str(" ERROR ");
        assert_eq!(detect(&line), Error);
    }

    #[test]
    fn first_level_wins() {
        assert_eq!(
            detect("2023-01-01 INFO retrying after ERROR from server"),
            Info
        );
        assert_eq!(detect("[warn] error: x"), Warning);
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(s in ".{0,400}") {
            let _ = detect(&s);
        }

        #[test]
        fn never_panics_on_log_like_text(s in "[<>\\[\\]0-9a-zA-Z:=\"' ,;/(){}.|-]{0,300}") {
            let _ = detect(&s);
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = detect(&String::from_utf8_lossy(&b));
        }
    }

    // ---------------------------------------------------------------------
    // Accuracy on the loghub corpus.

    fn corpus() -> PathBuf {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/loghub");
        assert!(
            p.is_dir(),
            "test corpus not found at {} (shared/ must sit beside the repository)",
            p.display()
        );
        p
    }

    /// Parse CSV text (RFC 4180 quoting) into rows of fields.
    fn parse_csv(text: &str) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        let mut row = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if quoted {
                match c {
                    '"' if chars.peek() == Some(&'"') => {
                        field.push('"');
                        chars.next();
                    }
                    '"' => quoted = false,
                    _ => field.push(c),
                }
                continue;
            }
            match c {
                '"' => quoted = true,
                ',' => row.push(std::mem::take(&mut field)),
                '\r' => {}
                '\n' => {
                    row.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut row));
                }
                _ => field.push(c),
            }
        }
        if !field.is_empty() || !row.is_empty() {
            row.push(field);
            rows.push(row);
        }
        rows
    }

    /// The severity a dataset's `Level` column names.
    fn expected(level: &str) -> Severity {
        match level {
            "V" | "D" => Debug,
            "I" => Info,
            "W" => Warning,
            "E" => Error,
            "F" | "A" => Critical,
            other => from_word(other.as_bytes()).unwrap_or_else(|| panic!("level {other:?}")),
        }
    }

    #[test]
    fn detects_the_level_of_at_least_98_percent_of_loghub_lines_that_have_one() {
        let root = corpus();
        let (mut total, mut right) = (0usize, 0usize);
        let mut report = String::new();
        let mut datasets = 0;
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for dir in dirs {
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            let log = dir.join(format!("{name}_2k.log"));
            let csv = dir.join(format!("{name}_2k.log_structured.csv"));
            let (Ok(log), Ok(csv)) = (std::fs::read(&log), std::fs::read(&csv)) else {
                continue;
            };
            let rows = parse_csv(&String::from_utf8_lossy(&csv));
            let Some(col) = rows[0].iter().position(|h| h == "Level") else {
                continue;
            };
            datasets += 1;
            let lines: Vec<String> = String::from_utf8_lossy(&log)
                .lines()
                .map(str::to_string)
                .collect();
            assert_eq!(lines.len(), rows.len() - 1, "{name}: one row per line");
            let (mut n, mut ok) = (0usize, 0usize);
            let mut misses = Vec::new();
            for (line, row) in lines.iter().zip(&rows[1..]) {
                let want = expected(&row[col]);
                let got = detect(line);
                n += 1;
                if got == want {
                    ok += 1;
                } else if misses.len() < 3 {
                    misses.push(format!("    want {want:?} got {got:?}: {line}"));
                }
            }
            report.push_str(&format!("{name}: {ok}/{n}\n{}\n", misses.join("\n")));
            total += n;
            right += ok;
        }
        assert!(datasets >= 5, "too few labelled datasets found:\n{report}");
        let share = right as f64 / total as f64;
        println!("severity accuracy {right}/{total} = {share:.4}\n{report}");
        assert!(share >= 0.98, "accuracy {share:.4} below 0.98:\n{report}");
    }

    #[test]
    fn unlabelled_loghub_lines_are_rarely_given_a_severity_they_do_not_state() {
        // OpenSSH and Thunderbird lines carry no level; only lines that say
        // "error:" (or similar) themselves may get one.
        let root = corpus();
        for name in ["OpenSSH", "Thunderbird"] {
            let text = std::fs::read_to_string(root.join(format!("{name}/{name}_2k.log"))).unwrap();
            for line in text.lines() {
                let got = detect(line);
                if got != Unknown {
                    let lower = line.to_ascii_lowercase();
                    assert!(
                        [
                            "error", "warn", "fatal", "crit", "alert", "emerg", "notice", "info",
                            "debug", "panic", "err"
                        ]
                        .iter()
                        .any(|w| lower.contains(w)),
                        "{name}: {got:?} for {line}"
                    );
                }
            }
        }
    }
}
