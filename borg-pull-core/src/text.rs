//! Untrusted bytes on their way into a log: escaped, bounded, never fatal.
//!
//! Text that other programs write (`borg serve`'s stderr, a client's helper output) may be invalid
//! UTF-8, contain terminal escape sequences (which would recolour, retitle or rewrite the terminal
//! of whoever reads the log) or be one endless line. [`escape_for_log`] turns any bytes into one
//! printable line; [`BoundedLines`] splits a stream into lines of bounded length and keeps reading
//! to the end whatever it meets, so the writer never sees a closed pipe.
//!
//! ```
//! use borg_pull_core::text::escape_for_log;
//! assert_eq!(escape_for_log(b"\x1b[31mred\x1b[0m\n"), r"\x1b[31mred\x1b[0m\n");
//! assert_eq!(escape_for_log(b"caf\xc3\xa9 \xff"), r"café \xff");
//! ```

use std::fmt;
use std::io;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// `bytes` as one printable line: valid UTF-8 stays as it is, except that control characters
/// (C0 including ESC and newlines, DEL, C1) and Unicode bidirectional controls are shown as
/// escapes (`\n`, `\t`, `\x1b`, `\u{202e}`), and each byte of invalid UTF-8 as `\xNN`.
///
/// Backslashes are left alone: the result is for people reading logs, not for decoding.
pub fn escape_for_log(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_char(&mut out, c);
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// [`escape_for_log`] of at most the first `max` bytes, with `… [N bytes cut]` if there were more.
pub fn escape_truncated(bytes: &[u8], max: usize) -> String {
    if bytes.len() <= max {
        return escape_for_log(bytes);
    }
    let mut out = escape_for_log(&bytes[..max]);
    push_cut(&mut out, (bytes.len() - max) as u64);
    out
}

fn push_char(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x80 && c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
        c if c.is_control() || is_bidi_control(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        c => out.push(c),
    }
}

/// Characters that reorder how the rest of a line is displayed ("Trojan Source", CVE-2021-42574).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// What a program printed, as one line for a message: its non-empty lines, trimmed, each escaped
/// ([`escape_for_log`]) and joined with `; `, from at most the first `max` bytes (then
/// `… [N bytes cut]`). Escaping the whole output instead shows its line ends as literal `\n`.
pub fn escape_lines(bytes: &[u8], max: usize) -> String {
    let kept = &bytes[..bytes.len().min(max)];
    let mut out = kept
        .split(|&b| b == b'\n')
        .map(<[u8]>::trim_ascii)
        .filter(|line| !line.is_empty())
        .map(escape_for_log)
        .collect::<Vec<_>>()
        .join("; ");
    if bytes.len() > max {
        push_cut(&mut out, (bytes.len() - max) as u64);
    }
    out
}

fn push_cut(out: &mut String, cut: u64) {
    out.push_str(&format!(" … [{cut} bytes cut]"));
}

/// One line read by [`BoundedLines`]: at most its `max_line` first bytes, and how many were cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    bytes: Vec<u8>,
    cut: u64,
}

impl Line {
    /// The bytes kept, without the line ending (`\n` or `\r\n`).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// How many bytes of the line were dropped because it was longer than the limit.
    pub fn cut(&self) -> u64 {
        self.cut
    }
}

impl fmt::Display for Line {
    /// The line escaped with [`escape_for_log`], followed by `… [N bytes cut]` if it was cut.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = escape_for_log(&self.bytes);
        if self.cut > 0 {
            push_cut(&mut out, self.cut);
        }
        f.write_str(&out)
    }
}

/// Splits a byte stream into lines of at most `max_line` bytes, in bounded memory.
///
/// Unlike `AsyncBufReadExt::lines` it never fails on content: invalid UTF-8 is kept as bytes and
/// the rest of an over-long line is read and dropped (counted in [`Line::cut`]), so reading goes
/// on to EOF and the writer never gets `EPIPE`. Memory: `max_line` plus the read buffer.
#[derive(Debug)]
pub struct BoundedLines<R> {
    reader: BufReader<R>,
    max_line: usize,
    line: Vec<u8>,
    cut: u64,
}

impl<R: AsyncRead + Unpin> BoundedLines<R> {
    /// Lines of `reader`, each cut to `max_line` bytes.
    pub fn new(reader: R, max_line: usize) -> Self {
        Self {
            reader: BufReader::new(reader),
            max_line,
            line: Vec::new(),
            cut: 0,
        }
    }

    /// The next line, or `None` at EOF. A last line without a newline is returned too.
    pub async fn next_line(&mut self) -> io::Result<Option<Line>> {
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                let pending = !self.line.is_empty() || self.cut > 0;
                return Ok(pending.then(|| self.take()));
            }
            let newline = available.iter().position(|&b| b == b'\n');
            let content = &available[..newline.unwrap_or(available.len())];
            let keep = content.len().min(self.max_line - self.line.len());
            if self.line.capacity() == 0 {
                self.line.reserve_exact(self.max_line);
            }
            self.line.extend_from_slice(&content[..keep]);
            self.cut += (content.len() - keep) as u64;
            let consumed = newline.map_or(available.len(), |i| i + 1);
            self.reader.consume(consumed);
            if newline.is_some() {
                return Ok(Some(self.take()));
            }
        }
    }

    fn take(&mut self) -> Line {
        if self.cut == 0 && self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        let line = Line {
            bytes: self.line.clone(),
            cut: self.cut,
        };
        self.line.clear();
        self.cut = 0;
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_lines_joins_lines_without_escaped_line_ends() {
        assert_eq!(
            escape_lines(b"usage: borg\r\n\n  x \x1b\n", 100),
            "usage: borg; x \\x1b"
        );
        assert_eq!(escape_lines(b"abc\ndef", 5), "abc; d … [2 bytes cut]");
        assert_eq!(escape_lines(b"\n\n", 10), "");
    }
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    #[test]
    fn escapes_controls_invalid_utf8_and_bidi() {
        assert_eq!(escape_for_log(b"plain text, caf\xc3\xa9"), "plain text, café");
        assert_eq!(escape_for_log(b"\x1b]0;pwned\x07"), r"\x1b]0;pwned\x07");
        assert_eq!(escape_for_log(b"a\r\nb\tc\x7f\x00"), r"a\r\nb\tc\x7f\x00");
        assert_eq!(escape_for_log(b"\xc2\x9b"), r"\u{9b}"); // C1 CSI
        assert_eq!(escape_for_log("x\u{202e}y".as_bytes()), r"x\u{202e}y");
        assert_eq!(escape_for_log(b"\xff\xfe ok \xe2\x82"), r"\xff\xfe ok \xe2\x82");
        assert_eq!(escape_for_log(b"back\\slash"), "back\\slash");
    }

    #[test]
    fn truncates_with_a_count() {
        assert_eq!(escape_truncated(b"abc", 3), "abc");
        assert_eq!(escape_truncated(b"abcdef", 2), "ab … [4 bytes cut]");
    }

    async fn all_lines(input: &[u8], max: usize) -> Vec<Line> {
        let mut lines = BoundedLines::new(input, max);
        let mut out = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            out.push(line);
        }
        out
    }

    #[tokio::test]
    async fn invalid_utf8_does_not_end_the_lines() {
        let lines = all_lines(b"one\n\xff\xfe bad\r\nthree\nlast", 100).await;
        let shown: Vec<String> = lines.iter().map(Line::to_string).collect();
        assert_eq!(shown, ["one", r"\xff\xfe bad", "three", "last"]);
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_counted() {
        let lines = all_lines(b"abcdefgh\nxy\n\n", 4).await;
        assert_eq!(lines[0].bytes(), b"abcd");
        assert_eq!(lines[0].cut(), 4);
        assert_eq!(lines[0].to_string(), "abcd … [4 bytes cut]");
        assert_eq!((lines[1].bytes(), lines[1].cut()), (&b"xy"[..], 0));
        assert_eq!(lines[2].bytes(), b"");
        assert_eq!(lines.len(), 3);
    }

    /// `len` bytes of `x`, no newline, produced on demand (never held in memory at once).
    struct Endless {
        left: usize,
    }

    impl AsyncRead for Endless {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = buf.remaining().min(self.left);
            buf.put_slice(&vec![b'x'; n]);
            self.left -= n;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn ten_mib_without_newline_uses_bounded_memory() {
        const LEN: usize = 10 << 20;
        let mut lines = BoundedLines::new(Endless { left: LEN }, 4096);
        let line = lines.next_line().await.unwrap().unwrap();
        assert_eq!(line.bytes().len(), 4096);
        assert_eq!(line.cut(), (LEN - 4096) as u64);
        assert!(
            lines.line.capacity() <= 4096,
            "buffer grew to {}",
            lines.line.capacity()
        );
        assert!(lines.next_line().await.unwrap().is_none());
    }
}
