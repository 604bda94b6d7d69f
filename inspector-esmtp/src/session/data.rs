//! Message content: where DATA ends (dot-stuffed, at a line holding only
//! `.`), found byte by byte and never guessed, and the MIME scan of the
//! message in progress, on whose events the content rules are evaluated.
//! The session relays content exactly as received, once inspected, so a
//! message that must be dropped is never completed at the server.

use super::rules::{Judge, Verdict};
use super::{MIME_EVENTS_KEPT, MIME_LIMITS};
use crate::mime::{MimeEvent, MimeScanner};

/// Where DATA content stands, byte by byte, to find the final `.` exactly.
/// `crlf`: the line before ended in CRLF (true for the first line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotScanner {
    /// At the first byte of a line.
    LineStart { crlf: bool },
    /// After a `.` at the start of a line: stuffing, or the end.
    Dot { crlf: bool },
    /// After `.` CR at the start of a line.
    DotCr { crlf: bool },
    /// Inside a line; `cr`: its last byte so far is CR.
    InLine { cr: bool },
}

/// What a scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotEnd {
    /// No end yet: all of the input is content.
    More,
    /// CRLF `.` CRLF: the end of the message.
    End,
    /// A `.` line with a bare LF or a bare CR before or after it. Some
    /// servers end the message there and some do not (SMTP smuggling,
    /// CVE-2023-51764; some servers and gateways take a bare CR for a line
    /// end), so it must reach neither.
    Ambiguous,
}

impl DotScanner {
    pub fn new() -> Self {
        Self::LineStart { crlf: true }
    }

    /// Scans `input` and passes the un-stuffed content to `content`.
    /// Returns the bytes consumed (up to the line ending of a `.` line) and
    /// what they end with.
    pub fn scan(&mut self, input: &[u8], mut content: impl FnMut(&[u8])) -> (usize, DotEnd) {
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            match *self {
                Self::LineStart { crlf } if b == b'.' => {
                    *self = Self::Dot { crlf };
                    i += 1;
                }
                Self::LineStart { .. } => *self = Self::InLine { cr: false },
                Self::Dot { crlf } => match b {
                    b'\n' => return (i + 1, DotEnd::Ambiguous),
                    // After a bare LF, `.` CR is ambiguous whatever follows.
                    b'\r' if !crlf => return (i + 1, DotEnd::Ambiguous),
                    b'\r' => {
                        *self = Self::DotCr { crlf };
                        i += 1;
                    }
                    // A stuffed dot: dropped from the content, as the server does.
                    _ => *self = Self::InLine { cr: false },
                },
                Self::DotCr { crlf } if b == b'\n' => {
                    let end = if crlf { DotEnd::End } else { DotEnd::Ambiguous };
                    return (i + 1, end);
                }
                // `.` then a bare CR: a line of its own to a server that
                // ends lines at a bare CR (`\r\n.\r\r\n` ends the message
                // for smtp-proto and for Postfix's mynetworks clients).
                Self::DotCr { .. } => return (i + 1, DotEnd::Ambiguous),
                // A bare CR, then `.`: a dot line to such a server.
                Self::InLine { cr: true } if b == b'.' => return (i + 1, DotEnd::Ambiguous),
                Self::InLine { cr } => {
                    let rest = input.get(i..).unwrap_or_default();
                    // Whether the LF at `lf` in `rest` ends a CRLF.
                    let crlf_at = |lf: usize| match lf.checked_sub(1) {
                        Some(j) => rest.get(j) == Some(&b'\r'),
                        None => cr,
                    };
                    // Only a line starting with `.` needs a closer look:
                    // the next `.` after an LF (a dot line) or a bare CR
                    // (one to a server that ends lines there). One search
                    // for the dot finds either, in content that has few.
                    match next_dot_line(rest) {
                        Some((c, b'\r')) => {
                            content(rest.get(..=c).unwrap_or(rest));
                            return (i + c + 2, DotEnd::Ambiguous);
                        }
                        Some((p, _)) => {
                            content(rest.get(..=p).unwrap_or(rest));
                            i += p + 1;
                            *self = Self::LineStart { crlf: crlf_at(p) };
                        }
                        None => {
                            content(rest);
                            *self = match rest.len().checked_sub(1) {
                                Some(last) if rest.get(last) == Some(&b'\n') => Self::LineStart {
                                    crlf: crlf_at(last),
                                },
                                _ => Self::InLine {
                                    cr: rest.last().map_or(cr, |&l| l == b'\r'),
                                },
                            };
                            i = input.len();
                        }
                    }
                }
            }
        }
        (input.len(), DotEnd::More)
    }
}

/// The first `.` in `text` right after an LF or a CR (not at its start):
/// the offset of that LF or CR, and which it is.
fn next_dot_line(text: &[u8]) -> Option<(usize, u8)> {
    memchr::memchr_iter(b'.', text).find_map(|dot| {
        let before = dot.checked_sub(1)?;
        match text.get(before) {
            Some(&b) if b == b'\n' || b == b'\r' => Some((before, b)),
            _ => None,
        }
    })
}

/// The MIME scan of the message in progress, and its counters.
#[derive(Debug)]
pub struct MessageScan {
    mime: MimeScanner,
    events: Vec<MimeEvent>,
    to_fields: u64,
    /// Content bytes (un-stuffed), for SIZE.
    size: u64,
    /// The scanner holds state of a message not finished (abandoned by
    /// RSET, say): the next message needs a fresh one.
    dirty: bool,
    /// Body lines no rule acts on (see `rules::quiet_body_line`).
    quiet: Option<usize>,
}

impl MessageScan {
    pub fn new(quiet: Option<usize>) -> Self {
        let mut mime = MimeScanner::new(MIME_LIMITS);
        if let Some(q) = quiet {
            mime.quiet_body_lines(q);
        }
        Self {
            mime,
            events: Vec::new(),
            to_fields: 0,
            size: 0,
            dirty: false,
            quiet,
        }
    }

    /// A message starts: its counters from zero, and a fresh scanner if
    /// the last message was abandoned.
    pub fn restart(&mut self) {
        if self.dirty {
            *self = Self::new(self.quiet);
        }
        self.to_fields = 0;
        self.size = 0;
    }

    /// Content bytes seen (un-stuffed), for SIZE.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Counts `len` more content bytes.
    pub fn grow(&mut self, len: usize) {
        self.size = self.size.saturating_add(len as u64);
    }

    /// Passes the leading lines of `content` that give no event, if any;
    /// returns their bytes (see `MimeScanner::skip_quiet`).
    pub fn skip_quiet(&mut self, content: &[u8]) -> usize {
        self.dirty = true;
        self.mime.skip_quiet(content)
    }

    /// Scans one slice of content; its events wait for `judge`.
    pub fn feed(&mut self, slice: &[u8]) {
        self.dirty = true;
        self.mime.feed(slice, &mut self.events);
    }

    /// The end of the message; its last events wait for `judge`.
    pub fn finish(&mut self) {
        self.mime.finish(&mut self.events);
        self.dirty = false;
    }

    /// Evaluates the content rules on the events found so far, each with
    /// the count of `To:` fields up to it, and keeps the event buffer small.
    pub fn judge(&mut self, judge: Judge<'_>) -> Verdict {
        if self.events.is_empty() {
            return Verdict::default();
        }
        let to_fields = &mut self.to_fields;
        let events = self.events.drain(..).map(|ev| {
            if let MimeEvent::ToField = ev {
                *to_fields = to_fields.saturating_add(1);
            }
            (ev, *to_fields)
        });
        let verdict = judge.content(events);
        if self.events.capacity() > MIME_EVENTS_KEPT {
            self.events.shrink_to(MIME_EVENTS_KEPT);
        }
        verdict
    }

    pub fn heap_bytes(&self) -> usize {
        self.mime.heap_bytes() + self.events.capacity() * std::mem::size_of::<MimeEvent>()
    }
}

#[cfg(test)]
mod tests {
    use super::{DotEnd, DotScanner};

    fn scan_all(chunks: &[&[u8]]) -> (Vec<u8>, Option<(usize, DotEnd)>) {
        let mut d = DotScanner::new();
        let mut content = Vec::new();
        let mut offset = 0;
        for c in chunks {
            let (used, found) = d.scan(c, |p| content.extend_from_slice(p));
            if found != DotEnd::More {
                return (content, Some((offset + used, found)));
            }
            offset += used;
        }
        (content, None)
    }

    #[test]
    fn finds_the_end_and_unstuffs() {
        let msg: &[u8] = b"Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n";
        let (content, end) = scan_all(&[msg]);
        assert_eq!(content, b"Subject: x\r\n\r\n.leading dot\r\n");
        assert_eq!(end, Some((msg.len() - 6, DotEnd::End)));
        // Byte by byte gives the same.
        let bytes: Vec<&[u8]> = msg.chunks(1).collect();
        assert_eq!(scan_all(&bytes), (content, end));
    }

    #[test]
    fn dot_lines_that_do_not_end() {
        let (content, end) = scan_all(&[b"..\rx\r\n", b"a.\r\n", b"\r\n.\n"]);
        assert_eq!(content, b".\rx\r\na.\r\n\r\n");
        assert_eq!(end, Some((14, DotEnd::Ambiguous)));
        assert_eq!(scan_all(&[b".\r\n"]), (Vec::new(), Some((3, DotEnd::End))));
        assert_eq!(scan_all(&[b"abc"]).1, None);
    }

    #[test]
    fn a_bare_lf_next_to_a_dot_line_is_ambiguous_in_any_split() {
        for msg in [&b"a\n.\r\n"[..], b"a\r\n.\n", b"a\n.\n", b".\n"] {
            let whole = scan_all(&[msg]).1.map(|(_, e)| e);
            assert_eq!(whole, Some(DotEnd::Ambiguous), "{msg:?}");
            let bytes: Vec<&[u8]> = msg.chunks(1).collect();
            assert_eq!(scan_all(&bytes).1.map(|(_, e)| e), whole, "{msg:?}");
        }
        // A bare CR next to a dot line: a line end to some.
        for msg in [
            &b"a\r.\r"[..],
            b"a\n.\r",
            b"a\r.\r\n",
            b"a\r\n.\rx",
            b"a\r\n.\r\r\n",
            b"\r.",
            b".\r.",
        ] {
            let whole = scan_all(&[msg]).1.map(|(_, e)| e);
            assert_eq!(whole, Some(DotEnd::Ambiguous), "{msg:?}");
            let bytes: Vec<&[u8]> = msg.chunks(1).collect();
            assert_eq!(scan_all(&bytes).1.map(|(_, e)| e), whole, "{msg:?}");
        }
        // A bare CR elsewhere is content, and many dot lines cost linear time.
        assert_eq!(scan_all(&[b"a\rb\r\n.\r\n"]).1, Some((8, DotEnd::End)));
        let many = b"\r\n.x".repeat(100_000);
        assert_eq!(
            scan_all(&[&many, b"\r\n.\r\n"]).1.map(|(_, e)| e),
            Some(DotEnd::End)
        );
        // CR then a separate LF still makes a CRLF.
        assert_eq!(scan_all(&[b"a\r", b"\n.\r\n"]).1, Some((6, DotEnd::End)));
        assert_eq!(scan_all(&[b"a\nb\r\n.\r\n"]).1, Some((8, DotEnd::End)));
    }
}
