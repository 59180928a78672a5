//! One log event, one line: the writer under the log formatter escapes every control character
//! an event's text carries, so a field that came from the network (a caller's number with
//! `LOG_PII=full`, a parse error quoting a peer's JSON, a path) cannot end the line and forge
//! the next one, or move a terminal's cursor.
//!
//! Twilio identifiers are checked at the edge (webhooks and the stream's `start`), so most
//! fields are safe by construction; this is the guarantee for the rest. The formatter writes
//! each event with one `write_all` of the whole line, so the writer sees exactly one event per
//! call: it passes it through untouched when it holds no control character (the usual case,
//! no copy) and otherwise writes `\xNN` for each one (`\u{…}` for the Unicode line breaks
//! NEL, LS and PS), keeping the final newline.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// A [`MakeWriter`] whose writers escape control characters inside each event.
#[derive(Clone, Copy, Debug)]
pub struct OneLine<M> {
    inner: M,
    /// Pass ESC through (the formatter's own colours are on).
    ansi: bool,
}

impl<M> OneLine<M> {
    /// Wraps `inner`. With `ansi`, ESC passes (the formatter colours its output, so a field's
    /// ESC cannot be told from the formatter's); without, it is escaped like the others.
    pub fn new(inner: M, ansi: bool) -> Self {
        Self { inner, ansi }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for OneLine<M> {
    type Writer = OneLineWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        OneLineWriter {
            inner: self.inner.make_writer(),
            ansi: self.ansi,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        OneLineWriter {
            inner: self.inner.make_writer_for(meta),
            ansi: self.ansi,
        }
    }
}

/// The writer [`OneLine`] makes for one event.
#[derive(Debug)]
pub struct OneLineWriter<W> {
    inner: W,
    ansi: bool,
}

impl<W: Write> Write for OneLineWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (body, newline) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, true),
            None => (buf, false),
        };
        match escaped(body, self.ansi) {
            None => self.inner.write_all(buf)?,
            Some(mut line) => {
                if newline {
                    line.push(b'\n');
                }
                self.inner.write_all(&line)?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `text` with its control characters escaped, or `None` when it has none.
fn escaped(text: &[u8], ansi: bool) -> Option<Vec<u8>> {
    let first = (0..text.len()).find(|&i| special(text, i, ansi).is_some())?;
    let mut out = Vec::with_capacity(text.len() + 16);
    out.extend_from_slice(&text[..first]);
    let mut i = first;
    while i < text.len() {
        match special(text, i, ansi) {
            Some(Special::Byte(b)) => {
                // Writing into a Vec cannot fail.
                let _ = write!(out, "\\x{b:02x}");
                i += 1;
            }
            Some(Special::LineBreak(c, len)) => {
                let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
                i += len;
            }
            None => {
                out.push(text[i]);
                i += 1;
            }
        }
    }
    Some(out)
}

/// What needs escaping at `text[i]`.
enum Special {
    /// A C0 control byte or DEL.
    Byte(u8),
    /// NEL, LS or PS (UTF-8 bytes long), which some log viewers break lines at.
    LineBreak(char, usize),
}

fn special(text: &[u8], i: usize, ansi: bool) -> Option<Special> {
    match text[i] {
        b'\t' => None,
        0x1b if ansi => None,
        b @ (0x00..=0x1f | 0x7f) => Some(Special::Byte(b)),
        0xc2 if text.get(i + 1) == Some(&0x85) => Some(Special::LineBreak('\u{85}', 2)),
        0xe2 if text.get(i + 1) == Some(&0x80) => match text.get(i + 2) {
            Some(0xa8) => Some(Special::LineBreak('\u{2028}', 3)),
            Some(0xa9) => Some(Special::LineBreak('\u{2029}', 3)),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through(event: &[u8], ansi: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut writer = OneLineWriter {
            inner: &mut out,
            ansi,
        };
        writer.write_all(event).unwrap();
        out
    }

    #[test]
    fn a_clean_line_passes_untouched() {
        let line = "2026-12-07T00:00:00Z  INFO handset: WS start call_sid=CA01 from=\"+1415***4567\"\tok\n";
        assert_eq!(through(line.as_bytes(), false), line.as_bytes());
    }

    #[test]
    fn a_forged_line_stays_inside_its_event() {
        let event = "INFO WS start from=+1\r\n2026-12-07T00:00:00Z  INFO forged line\n";
        let out = String::from_utf8(through(event.as_bytes(), false)).unwrap();
        assert_eq!(
            out,
            "INFO WS start from=+1\\x0d\\x0a2026-12-07T00:00:00Z  INFO forged line\n"
        );
        assert_eq!(out.lines().count(), 1);
    }

    #[test]
    fn terminal_escapes_and_unicode_line_breaks_are_escaped() {
        let event = "a\u{1b}[2Jb\u{85}c\u{2028}d\u{2029}e\u{7f}f é\n";
        let out = String::from_utf8(through(event.as_bytes(), false)).unwrap();
        assert_eq!(out, "a\\x1b[2Jb\\u{0085}c\\u{2028}d\\u{2029}e\\x7ff é\n");
        // With colours on, ESC is the formatter's and passes; the rest is still escaped.
        let out = String::from_utf8(through(event.as_bytes(), true)).unwrap();
        assert!(out.starts_with("a\u{1b}[2Jb\\u{0085}"));
    }
}
