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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotScanner {
    /// At the first byte of a line.
    LineStart,
    /// After a `.` at the start of a line: stuffing, or the end.
    Dot,
    /// After `.` CR at the start of a line.
    DotCr,
    InLine,
}

impl DotScanner {
    pub fn new() -> Self {
        Self::LineStart
    }

    /// Scans `input` and passes the un-stuffed content to `content`.
    /// Returns the bytes consumed and whether they end the message. A line
    /// holding only `.` ends it, with CRLF or a bare LF, so that the engine
    /// never thinks a message continues after a lenient server ended it.
    pub fn scan(&mut self, input: &[u8], mut content: impl FnMut(&[u8])) -> (usize, bool) {
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            match *self {
                Self::LineStart if b == b'.' => {
                    *self = Self::Dot;
                    i += 1;
                }
                Self::LineStart => *self = Self::InLine,
                Self::Dot => match b {
                    b'\n' => return (i + 1, true),
                    b'\r' => {
                        *self = Self::DotCr;
                        i += 1;
                    }
                    // A stuffed dot: dropped from the content, as the server does.
                    _ => *self = Self::InLine,
                },
                Self::DotCr if b == b'\n' => return (i + 1, true),
                Self::DotCr => {
                    content(b"\r");
                    *self = Self::InLine;
                }
                Self::InLine => {
                    let rest = input.get(i..).unwrap_or_default();
                    // Only a line starting with `.` needs a closer look.
                    match memmem::find(rest, b"\n.") {
                        Some(p) => {
                            content(rest.get(..=p).unwrap_or(rest));
                            i += p + 1;
                            *self = Self::LineStart;
                        }
                        None => {
                            content(rest);
                            if rest.last() == Some(&b'\n') {
                                *self = Self::LineStart;
                            }
                            i = input.len();
                        }
                    }
                }
            }
        }
        (input.len(), false)
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
        let (used, end) = dots.scan(input, |c| self.inspect_content(&mut scan, c, out));
        self.mode = ClientMode::Data(dots);
        if end && !self.closed {
            self.end_message(&mut scan, out);
        }
        self.message = Some(scan);
        if self.closed {
            return 0;
        }
        out.to_server
            .extend_from_slice(input.get(..used).unwrap_or(input));
        if end {
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
                if remaining == 0 && last && !self.closed {
                    self.end_message(&mut scan, out);
                }
                self.message = Some(scan);
                if self.closed {
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
            if self.closed {
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
        self.tx.in_message = false;
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
    use super::DotScanner;

    fn scan_all(chunks: &[&[u8]]) -> (Vec<u8>, Option<usize>) {
        let mut d = DotScanner::new();
        let mut content = Vec::new();
        let mut offset = 0;
        for c in chunks {
            let (used, end) = d.scan(c, |p| content.extend_from_slice(p));
            if end {
                return (content, Some(offset + used));
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
        assert_eq!(end, Some(msg.len() - 6));
        // Byte by byte gives the same.
        let bytes: Vec<&[u8]> = msg.chunks(1).collect();
        assert_eq!(scan_all(&bytes), (content, end));
    }

    #[test]
    fn dot_lines_that_do_not_end() {
        let (content, end) = scan_all(&[b".\rx\r\n", b"a.\r\n", b"\r\n.\n"]);
        assert_eq!(content, b"\rx\r\na.\r\n\r\n");
        assert_eq!(end, Some(13));
        assert_eq!(scan_all(&[b".\r\n"]), (Vec::new(), Some(3)));
        assert_eq!(scan_all(&[b"abc"]).1, None);
    }
}
