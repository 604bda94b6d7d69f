//! Message content: DATA (dot-stuffed, ends at a line holding only `.`) and
//! BDAT/XEXCH50 (counted bytes). Content is relayed exactly as received;
//! the MIME scanner sees it un-stuffed, and the header/body/MIME criteria are
//! evaluated on its events before the bytes that produced them are relayed,
//! so a message that must be dropped is never completed at the server.

use memchr::memmem;

use super::rules::{Value, Verdict};
use super::{ClientMode, MIME_EVENTS_KEPT, MIME_LIMITS, MIME_SLICE, Output, RawKind, Session};
use crate::audit::{AuditEvent, AuditKind};
use crate::mime::{MimeEvent, MimeScanner};
use crate::policy::Criterion;
use crate::policy::criteria::exceeds;

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
    /// A `.` line with a bare LF before or after it. Some servers end the
    /// message there and some do not (SMTP smuggling, CVE-2023-51764), so
    /// it must reach neither.
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
                Self::DotCr { .. } => {
                    content(b"\r");
                    *self = Self::InLine { cr: true };
                }
                Self::InLine { cr } => {
                    let rest = input.get(i..).unwrap_or_default();
                    // Whether the LF at `lf` in `rest` ends a CRLF.
                    let crlf_at = |lf: usize| match lf.checked_sub(1) {
                        Some(j) => rest.get(j) == Some(&b'\r'),
                        None => cr,
                    };
                    // Only a line starting with `.` needs a closer look.
                    match memmem::find(rest, b"\n.") {
                        Some(p) => {
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
}

impl MessageScan {
    fn new() -> Self {
        Self {
            mime: MimeScanner::new(MIME_LIMITS),
            events: Vec::new(),
            to_fields: 0,
            size: 0,
            dirty: false,
        }
    }

    pub fn heap_bytes(&self) -> usize {
        self.mime.heap_bytes() + self.events.capacity() * std::mem::size_of::<MimeEvent>()
    }
}

impl Session {
    /// A message starts (DATA accepted with 354, or the first BDAT).
    pub(super) fn start_message(&mut self) {
        if self.tx.in_message {
            return;
        }
        self.tx.in_message = true;
        let scan = self.message.get_or_insert_with(MessageScan::new);
        if scan.dirty {
            *scan = MessageScan::new();
        }
        scan.to_fields = 0;
        scan.size = 0;
        self.fired.iter_mut().for_each(|f| *f = false);
    }

    /// DATA content up to and including the final `.` line.
    pub(super) fn step_data(&mut self, input: &[u8], out: &mut Output) -> usize {
        let ClientMode::Data(mut dots) = self.mode else {
            return 0;
        };
        let mut scan = self.message.take().unwrap_or_else(MessageScan::new);
        // Inspected before relayed: a close keeps this read from the server.
        let (used, found) = dots.scan(input, |c| self.inspect_content(&mut scan, c, out));
        self.mode = ClientMode::Data(dots);
        match found {
            DotEnd::End if !self.stopped() => self.end_message(&mut scan, out),
            DotEnd::Ambiguous => self.anomaly("bare LF next to the final dot", out),
            _ => {}
        }
        self.message = Some(scan);
        if self.stopped() {
            return 0;
        }
        out.to_server
            .extend_from_slice(input.get(..used).unwrap_or(input));
        if found == DotEnd::End {
            self.mode = ClientMode::Command;
            self.push(super::Pending::DataEnd, out);
        }
        used
    }

    /// A BDAT chunk or an XEXCH50 blob: exactly the announced bytes.
    pub(super) fn step_raw(&mut self, input: &[u8], out: &mut Output) -> usize {
        let ClientMode::Raw { remaining, kind } = self.mode else {
            return 0;
        };
        let n = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(input.len());
        let chunk = input.get(..n).unwrap_or(input);
        let remaining = remaining - n as u64;
        match kind {
            RawKind::Bdat { last, relay: true } => {
                let mut scan = self.message.take().unwrap_or_else(MessageScan::new);
                self.inspect_content(&mut scan, chunk, out);
                if remaining == 0 && last && !self.stopped() {
                    self.end_message(&mut scan, out);
                }
                self.message = Some(scan);
                if self.stopped() {
                    return 0;
                }
                out.to_server.extend_from_slice(chunk);
            }
            // A refused BDAT: the chunk is skipped so it is not taken for commands.
            RawKind::Bdat { relay: false, .. } => {}
            RawKind::Xexch50 => out.to_server.extend_from_slice(chunk),
        }
        self.mode = if remaining == 0 {
            ClientMode::Command
        } else {
            ClientMode::Raw { remaining, kind }
        };
        n
    }

    /// Feeds content to the MIME scanner and evaluates its events, slice by
    /// slice, so the event buffer stays small whatever the read size.
    fn inspect_content(&mut self, scan: &mut MessageScan, content: &[u8], out: &mut Output) {
        scan.size = scan.size.saturating_add(content.len() as u64);
        for slice in content.chunks(MIME_SLICE) {
            if self.stopped() {
                return;
            }
            scan.dirty = true;
            scan.mime.feed(slice, &mut scan.events);
            self.inspect_events(scan, out);
        }
    }

    /// The whole message has been seen (and not yet completed at the server).
    pub(super) fn end_message(&mut self, scan: &mut MessageScan, out: &mut Output) {
        scan.mime.finish(&mut scan.events);
        scan.dirty = false;
        self.inspect_events(scan, out);
        if let Some(declared) = self.tx.declared_size
            && scan.size > declared
        {
            out.audit.push(AuditEvent {
                peers: self.peers,
                kind: AuditKind::SizeViolation {
                    declared,
                    actual: scan.size,
                },
            });
        }
        // The transaction ends here, in the client's order: with PIPELINING
        // the next one may be under way before the server's reply comes.
        self.tx = super::Transaction::default();
        crate::stats::PolicyStats::bump(&self.stats.packet);
    }

    /// Evaluates the header, body and MIME criteria on the scanner's events.
    /// Each rule fires at most once per message.
    fn inspect_events(&mut self, scan: &mut MessageScan, out: &mut Output) {
        let policy = std::sync::Arc::clone(&self.policy);
        let mut v = Verdict::default();
        for ev in scan.events.drain(..) {
            if let MimeEvent::ToField = ev {
                scan.to_fields = scan.to_fields.saturating_add(1);
            }
            for (i, rule) in policy.rules.iter().enumerate() {
                if self.fired.get(i).copied().unwrap_or(true) || v.close.is_some() {
                    continue;
                }
                let Some((hit, value)) = content_hit(&rule.criterion, &ev, scan.to_fields) else {
                    continue;
                };
                if rule.matches(hit) {
                    if let Some(f) = self.fired.get_mut(i) {
                        *f = true;
                    }
                    self.hit(i, value, &mut v, out);
                }
            }
        }
        if scan.events.capacity() > MIME_EVENTS_KEPT {
            scan.events.shrink_to(MIME_EVENTS_KEPT);
        }
        self.conclude(&v, out);
    }
}

/// Whether a content criterion applies to `ev`, and if so its outcome and
/// the value that decided it.
fn content_hit<'a>(c: &Criterion, ev: &'a MimeEvent, to_fields: u64) -> Option<(bool, Value<'a>)> {
    let n = |len: usize| len as u64;
    let count = |len: u64, limit: &u64| Some((exceeds(len, *limit), Value::Num(len)));
    match (c, ev) {
        (Criterion::HeaderLineLength(l), MimeEvent::HeaderLine { len }) => count(n(*len), l),
        (Criterion::HeaderLength(l), MimeEvent::HeaderEnd { len }) => count(n(*len), l),
        (Criterion::HeaderToFieldsCount(l), MimeEvent::HeaderEnd { .. }) => count(to_fields, l),
        (Criterion::BodyLineLength(l), MimeEvent::BodyLine { len }) => count(n(*len), l),
        (Criterion::BodyLength(l), MimeEvent::BodyEnd { len }) => count(n(*len), l),
        // MIME criteria look at parts that hold content, not at containers.
        (_, MimeEvent::Part(p)) if p.content_type.starts_with("multipart/") => None,
        (Criterion::MimeFiletypeRegex(r), MimeEvent::Part(p)) => Some((
            r.is_match(&p.content_type),
            Value::Bytes(p.content_type.as_bytes()),
        )),
        (Criterion::MimeFilenameLength(l), MimeEvent::Part(p)) => {
            let len = p.filename_len?;
            count(n(len), l)
        }
        (Criterion::MimeEncoding(encs), MimeEvent::Part(p)) => {
            let kw = p.encoding.keyword();
            Some((
                encs.iter().any(|e| e.word() == kw),
                Value::Bytes(kw.as_bytes()),
            ))
        }
        _ => None,
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
        let (content, end) = scan_all(&[b".\rx\r\n", b"a.\r\n", b"\r\n.\n"]);
        assert_eq!(content, b"\rx\r\na.\r\n\r\n");
        assert_eq!(end, Some((13, DotEnd::Ambiguous)));
        assert_eq!(scan_all(&[b".\r\n"]), (Vec::new(), Some((3, DotEnd::End))));
        assert_eq!(scan_all(&[b"abc"]).1, None);
    }

    #[test]
    fn a_bare_lf_next_to_a_dot_line_is_ambiguous_in_any_split() {
        for msg in [&b"a\n.\r\n"[..], b"a\r\n.\n", b"a\n.\n", b".\n"] {
            let whole = scan_all(&[msg]).1;
            assert_eq!(whole, Some((msg.len(), DotEnd::Ambiguous)), "{msg:?}");
            let bytes: Vec<&[u8]> = msg.chunks(1).collect();
            assert_eq!(scan_all(&bytes).1, whole, "{msg:?}");
        }
        // CR then a separate LF still makes a CRLF.
        assert_eq!(scan_all(&[b"a\r", b"\n.\r\n"]).1, Some((6, DotEnd::End)));
        assert_eq!(scan_all(&[b"a\nb\r\n.\r\n"]).1, Some((8, DotEnd::End)));
    }
}
