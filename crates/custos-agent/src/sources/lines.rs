//! Splitting a byte stream into lines, shared by the file and stdin sources.

/// One step of splitting: how many bytes were consumed, and the line they
/// held (`None` for an empty line, which is skipped).
#[derive(Debug, PartialEq)]
pub(crate) struct Piece {
    /// Bytes consumed from the front of the buffer (including the newline).
    pub consumed: usize,
    /// The line, if not empty.
    pub line: Option<Line>,
}

/// A line of text.
#[derive(Debug, PartialEq)]
pub(crate) struct Line {
    /// The text: trailing '\r' stripped, invalid UTF-8 replaced.
    pub text: String,
    /// True when the line was longer than the limit and this is one piece of it.
    pub truncated: bool,
}

/// Splits lines on '\n', cutting lines longer than `max_line` bytes into
/// pieces. Remembers across calls whether the current line was already cut,
/// so every piece of a long line is marked truncated.
#[derive(Clone, Debug)]
pub(crate) struct LineSplitter {
    max_line: usize,
    in_long_line: bool,
}

impl LineSplitter {
    /// A splitter cutting lines at `max_line` bytes (at least 1).
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line: max_line.max(1),
            in_long_line: false,
        }
    }

    /// Forget that a long line was being cut (the stream restarted).
    pub fn reset(&mut self) {
        self.in_long_line = false;
    }

    /// The next piece at the front of `buf`, or `None` when `buf` holds only
    /// an incomplete line that must wait for more data. With `flush`, an
    /// incomplete non-empty line is returned as a line (end of stream).
    pub fn next(&mut self, buf: &[u8], flush: bool) -> Option<Piece> {
        let window = &buf[..buf.len().min(self.max_line + 1)];
        if let Some(i) = window.iter().position(|&b| b == b'\n') {
            let truncated = std::mem::take(&mut self.in_long_line);
            return Some(Piece {
                consumed: i + 1,
                line: make_line(&buf[..i], truncated),
            });
        }
        if buf.len() > self.max_line {
            let cut = char_boundary_cut(buf, self.max_line);
            self.in_long_line = true;
            return Some(Piece {
                consumed: cut,
                line: make_line(&buf[..cut], true),
            });
        }
        if flush && !buf.is_empty() {
            let truncated = std::mem::take(&mut self.in_long_line);
            return Some(Piece {
                consumed: buf.len(),
                line: make_line(buf, truncated),
            });
        }
        None
    }
}

/// Where to cut `buf` (longer than `max`) so the piece holds at most `max`
/// bytes and, when possible, does not end inside a UTF-8 sequence.
fn char_boundary_cut(buf: &[u8], max: usize) -> usize {
    let is_continuation = |b: u8| b & 0xC0 == 0x80;
    let mut cut = max;
    // A UTF-8 sequence has at most 3 continuation bytes; back off at most that
    // far, and never to 0 so that progress is always made.
    for _ in 0..3 {
        if cut > 1 && is_continuation(buf[cut]) {
            cut -= 1;
        } else {
            break;
        }
    }
    if is_continuation(buf[cut]) {
        max
    } else {
        cut
    }
}

fn make_line(bytes: &[u8], truncated: bool) -> Option<Line> {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if bytes.is_empty() {
        return None;
    }
    Some(Line {
        text: String::from_utf8_lossy(bytes).into_owned(),
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(max: usize, data: &[u8], flush: bool) -> Vec<(String, bool)> {
        let mut s = LineSplitter::new(max);
        let mut at = 0;
        let mut out = Vec::new();
        while let Some(p) = s.next(&data[at..], flush) {
            at += p.consumed;
            if let Some(l) = p.line {
                out.push((l.text, l.truncated));
            }
        }
        out
    }

    #[test]
    fn splits_on_newline_strips_cr_and_skips_empty_lines() {
        let got = all(100, b"a\r\n\n\r\nbc\nrest", false);
        assert_eq!(got, vec![("a".into(), false), ("bc".into(), false)]);
        let got = all(100, b"a\nrest", true);
        assert_eq!(got, vec![("a".into(), false), ("rest".into(), false)]);
    }

    #[test]
    fn long_lines_are_cut_and_every_piece_is_marked() {
        let got = all(4, b"abcdefghij\nxy\n", false);
        assert_eq!(
            got,
            vec![
                ("abcd".into(), true),
                ("efgh".into(), true),
                ("ij".into(), true),
                ("xy".into(), false)
            ]
        );
        assert_eq!(all(4, b"abcd\n", false), vec![("abcd".into(), false)]);
    }

    #[test]
    fn cuts_do_not_split_utf8_sequences() {
        // "aé" is 3 bytes; a cut at 2 would fall inside "é".
        let got = all(2, "aéb\n".as_bytes(), false);
        assert_eq!(
            got,
            vec![("a".into(), true), ("é".into(), true), ("b".into(), true)]
        );
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(
            all(100, b"a\xffb\n", false),
            vec![("a\u{fffd}b".into(), false)]
        );
    }
}
