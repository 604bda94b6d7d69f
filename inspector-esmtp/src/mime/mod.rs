//! Streaming MIME scanner for DATA/BDAT content.
//!
//! [`MimeScanner`] observes the message content in arbitrary pieces and
//! reports what the ESMTP header, body and MIME criteria need:
//! physical line lengths of the top-level header and of the body, the header
//! and body sizes, `To:` fields, and for every MIME entity its content type,
//! decoded file name (RFC 2231 and RFC 2047) and transfer encoding. It never
//! changes or holds back content: the caller relays the bytes unchanged.
//!
//! # Memory bound
//!
//! A scanner holds at most [`MimeLimits::memory_bound`] heap bytes whatever
//! the input: 53,202 bytes (52 KiB) at the default limits, and
//! [`MimeScanner::MAX_MEMORY`] = 732,830 bytes (716 KiB) at the largest
//! allowed limits (64-bit targets). Counted as capacities requested from the
//! allocator, including the short-lived buffers used while parsing one header
//! field; the `events` vector belongs to the caller (each `Part` event owns at
//! most 255 + `max_filename` + 64 bytes of strings). Lines are never
//! buffered: only the first `max_boundary_len + 4` bytes of a body line (to
//! recognize boundaries) and
//! the unfolded value of the Content-Type, Content-Disposition and
//! Content-Transfer-Encoding fields (capped at `max_header_value`) are
//! stored; lengths are counted past any cap.
//!
//! # Rules
//!
//! Lines end at LF (CRLF or bare LF); lengths exclude the line ending. The
//! top-level header block ends at the first empty line only: a line without a
//! colon is a malformed header line (counted, ignored for parsing). Folded
//! lines (starting with SP or HTAB) continue the field for parsing, but
//! events stay per physical line. For each entity the first Content-Type,
//! Content-Disposition and Content-Transfer-Encoding field is used. Boundary
//! lines are `--b` or `--b--` plus optional SP/HTAB; an outer boundary closes
//! open inner multiparts; preamble and epilogue are ignored. The entity of a
//! `message/rfc822` (or `message/global`) part with an identity encoding is
//! parsed too. Past `max_depth`, nested entities are opaque.

mod encoded_word;
mod header;
mod multipart;
mod params;
#[cfg(test)]
mod tests;

use header::HeaderState;
use multipart::{Boundary, Frame, LinePrefix};

/// Resource limits of a [`MimeScanner`]; every field is clamped to the range
/// given in its documentation, so that [`MimeScanner::MAX_MEMORY`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MimeLimits {
    /// Deepest entity recognized (top level = 0): the parts of a multipart,
    /// or the entity of a message/rfc822 part, at this depth are not parsed
    /// (a DepthExceeded event). Default 16, clamped to 1..=64.
    pub max_depth: usize,
    /// Stored bytes of one unfolded Content-Type, Content-Disposition or
    /// Content-Transfer-Encoding value. Default 8192, clamped to
    /// 256..=65536.
    pub max_header_value: usize,
    /// Longest boundary recognized. RFC 2046 allows 70; longer ones are
    /// accepted by mail clients, so they must not hide parts from us.
    /// A multipart with a longer one is opaque. Default 256, clamped to
    /// 1..=998.
    pub max_boundary_len: usize,
    /// Stored bytes of a decoded file name (the length is counted in full).
    /// Default 1024, clamped to 16..=65536.
    pub max_filename: usize,
}

impl Default for MimeLimits {
    fn default() -> Self {
        MimeLimits {
            max_depth: 16,
            max_header_value: 8192,
            max_boundary_len: 256,
            max_filename: 1024,
        }
    }
}

impl MimeLimits {
    const MAX: MimeLimits = MimeLimits {
        max_depth: 64,
        max_header_value: 65536,
        max_boundary_len: 998,
        max_filename: 65536,
    };

    fn clamped(self) -> Self {
        MimeLimits {
            max_depth: self.max_depth.clamp(1, Self::MAX.max_depth),
            max_header_value: self.max_header_value.clamp(256, Self::MAX.max_header_value),
            max_boundary_len: self.max_boundary_len.clamp(1, Self::MAX.max_boundary_len),
            max_filename: self.max_filename.clamp(16, Self::MAX.max_filename),
        }
    }

    /// Peak heap bytes a scanner with these limits holds, including the
    /// transient buffers of parsing one field value.
    pub const fn memory_bound(&self) -> usize {
        let l = self;
        // Persistent state.
        let value = l.max_header_value;
        let media_type = params::MAX_CONTENT_TYPE;
        let encoding = params::MAX_ENCODING;
        let boundary = l.max_boundary_len;
        let names = 2 * l.max_filename;
        let prefix = l.max_boundary_len + 4;
        let frames = l.max_depth * (std::mem::size_of::<Frame>() + l.max_boundary_len);
        // Transient, while one field is parsed: unescaped quoted values and
        // joined continuations (each at most the value), the section table,
        // the decoded name before it is cut (lossy UTF-8: 3 bytes per octet),
        // comment-stripped heads, and a media type / encoding being built.
        let sections = params::MAX_SECTIONS
            * std::mem::size_of::<(u32, bool, std::borrow::Cow<'static, [u8]>)>();
        let transient = 3 * l.max_header_value
            + sections
            + 4 * (l.max_filename + 4)
            + media_type
            + 4 * encoding;
        value + media_type + encoding + boundary + names + prefix + frames + transient
    }
}

/// How a MIME entity's content is transfer-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoding {
    SevenBit,
    EightBit,
    Binary,
    Base64,
    QuotedPrintable,
    /// Anything else, lowercased, at most 64 bytes.
    Other(String),
}

impl Encoding {
    /// The policy keyword of `mime encoding`.
    pub fn keyword(&self) -> &'static str {
        match self {
            Encoding::SevenBit => "7bit",
            Encoding::EightBit => "8bit",
            Encoding::Binary => "binary",
            Encoding::Base64 => "base64",
            Encoding::QuotedPrintable => "quoted-printable",
            Encoding::Other(_) => "others",
        }
    }
}

/// A MIME entity whose header block is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    /// Lowercased `type/subtype` (at most 255 bytes). Default `text/plain`
    /// (`message/rfc822` for the parts of a multipart/digest); an invalid
    /// value gives the default.
    pub content_type: String,
    /// Decoded file name: Content-Disposition `filename`, else Content-Type
    /// `name`. RFC 2231 forms (`filename*`, continuations `filename*0*`,
    /// `filename*1`, in any order) win over the plain one; RFC 2047 encoded
    /// words are decoded in plain values. utf-8, us-ascii and unknown
    /// charsets become lossy UTF-8, iso-8859-1/windows-1252 Latin-1. At most
    /// `max_filename` bytes (cut at a character boundary).
    pub filename: Option<String>,
    /// Length of the decoded name in octets (after `%XX`/base64/Q decoding,
    /// before charset conversion), also when `filename` was cut. Exact unless
    /// `truncated`, then a lower bound.
    pub filename_len: Option<usize>,
    /// Content-Transfer-Encoding; default 7bit.
    pub encoding: Encoding,
    /// 0 for the message itself, parent depth + 1 for the parts of a
    /// multipart and the entity inside a message/rfc822 part.
    pub depth: usize,
    /// A Content-Type, -Disposition or -Transfer-Encoding value was longer
    /// than `max_header_value` (or had more than 256 RFC 2231 sections): the
    /// values come from its stored prefix.
    pub truncated: bool,
}

/// What the scanner reports, in content order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MimeEvent {
    /// One physical top-level header line; length without the line ending,
    /// counted however long the line is.
    HeaderLine { len: usize },
    /// A top-level `To:` field; comes just before the HeaderLine of the
    /// field's first line.
    ToField,
    /// End of the top-level header block (its empty line, or the end of the
    /// message): bytes of the header lines including their line endings,
    /// without the empty line. header + empty line + body = message size.
    HeaderEnd { len: usize },
    /// One physical line after the top-level header block (part headers,
    /// boundary lines and content alike); length without the line ending.
    BodyLine { len: usize },
    /// At [`MimeScanner::finish`]: bytes after the empty line ending the
    /// header, line endings included (0 if there is none).
    BodyEnd { len: usize },
    /// An entity's header block is complete: at its empty line, or cut short
    /// by a boundary line or the end of the message. For every entity: the
    /// message itself (right after HeaderEnd), multipart containers, leaves.
    Part(PartInfo),
    /// The multipart (or message/rfc822) entity at `depth` has children
    /// deeper than `max_depth`: they are not parsed (lines still counted).
    DepthExceeded { depth: usize },
    /// Something about the entity at `depth` that the scanner cannot
    /// follow, so its parts may hold what the MIME criteria never see.
    /// Comes just before the entity's `Part`.
    Unreadable { what: Unreadable, depth: usize },
}

/// What the scanner cannot follow in an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// A multipart boundary that is empty or longer than `max_boundary_len`:
    /// the multipart is opaque.
    Boundary,
    /// A second Content-Type, Content-Disposition or
    /// Content-Transfer-Encoding field: the scanner reads the first, some
    /// mail readers the last.
    DuplicateField,
    /// A message/rfc822 (or message/global) part with a transfer encoding
    /// (RFC 2046 forbids it): its entity is not parsed.
    EncodedMessage,
    /// Nesting deeper than `max_depth`.
    TooDeep,
}

impl Unreadable {
    /// For audit records.
    pub fn text(self) -> &'static str {
        match self {
            Self::Boundary => "MIME boundary empty or too long",
            Self::DuplicateField => "MIME field repeated",
            Self::EncodedMessage => "encoded message/rfc822 part",
            Self::TooDeep => "MIME nesting too deep",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Parsing an entity's header block.
    Header,
    /// Inside content: a leaf body, a preamble or an epilogue.
    Content,
}

/// The streaming scanner of one message; see the module documentation.
#[derive(Debug)]
pub struct MimeScanner {
    limits: MimeLimits,
    /// Bytes of content seen.
    total: usize,
    /// Offset of the current line's first byte.
    line_start: usize,
    /// Length of the current line so far (without line ending).
    line_len: usize,
    at_line_start: bool,
    /// The last byte seen was a CR, not yet counted: a line ending if an LF
    /// follows, content otherwise.
    pending_cr: bool,
    /// Still in the top-level header block.
    in_top_header: bool,
    /// Offset of the first body byte, once the header ended.
    body_start: Option<usize>,
    mode: Mode,
    /// Depth of the entity whose header is parsed in Mode::Header.
    depth: usize,
    default_type: &'static str,
    hdr: HeaderState,
    frames: Vec<Frame>,
    prefix: LinePrefix,
    /// Body lines up to this length are not reported (`quiet_body_lines`).
    quiet: Option<usize>,
}

impl MimeScanner {
    /// Upper bound of the heap bytes any scanner holds (limits at their
    /// largest allowed values).
    pub const MAX_MEMORY: usize = MimeLimits::MAX.memory_bound();

    pub fn new(limits: MimeLimits) -> Self {
        let limits = limits.clamped();
        MimeScanner {
            limits,
            total: 0,
            line_start: 0,
            line_len: 0,
            at_line_start: true,
            pending_cr: false,
            in_top_header: true,
            body_start: None,
            mode: Mode::Header,
            depth: 0,
            default_type: "text/plain",
            hdr: HeaderState::default(),
            frames: Vec::new(),
            prefix: LinePrefix::new(limits.max_boundary_len),
            quiet: None,
        }
    }

    /// Leaves out the `BodyLine` events of lines no longer than `max_len`
    /// (line ending excluded), for a caller whose criteria cannot act on
    /// them; every other event stays. Such lines can then be skipped in
    /// bulk (`skip_quiet`). Kept across `finish`.
    pub fn quiet_body_lines(&mut self, max_len: usize) {
        self.quiet = Some(max_len);
    }

    /// Consumes the leading complete lines of `data` that give no event at
    /// all: quiet body lines (see `quiet_body_lines`) of content (a leaf
    /// body, a preamble or an epilogue) that cannot be a boundary line.
    /// Returns their bytes; feeding the rest of `data` then gives the same
    /// events as feeding all of it. This is what lets content run at
    /// memory speed: a run of such lines costs a few vector scans, not
    /// work per line.
    pub fn skip_quiet(&mut self, data: &[u8]) -> usize {
        let Some(max_len) = self.quiet else {
            return 0;
        };
        if self.in_top_header
            || self.mode != Mode::Content
            || !self.at_line_start
            || self.pending_cr
        {
            return 0;
        }
        let Some(last_lf) = memchr::memrchr(b'\n', data) else {
            return 0;
        };
        let mut lines = &data[..=last_lf];
        if !self.frames.is_empty()
            && let Some(dash) = multipart::dash_line(lines)
        {
            lines = &lines[..dash];
        }
        let n = short_lines(lines, max_len);
        self.total += n;
        self.line_start = self.total;
        n
    }

    /// The limits in force (after clamping).
    pub fn limits(&self) -> MimeLimits {
        self.limits
    }

    /// Heap bytes held now (capacities), always at most
    /// `self.limits().memory_bound()`.
    pub fn heap_bytes(&self) -> usize {
        self.hdr.heap_bytes()
            + self.prefix.capacity_bytes()
            + self.frames.capacity() * std::mem::size_of::<Frame>()
            + self
                .frames
                .iter()
                .map(|f| f.boundary.capacity())
                .sum::<usize>()
    }

    /// Message content: for DATA already un-dot-stuffed and without the
    /// final ".\r\n"; for BDAT the raw chunk bytes. Any split of the content
    /// into calls gives the same events.
    pub fn feed(&mut self, data: &[u8], events: &mut Vec<MimeEvent>) {
        let mut rest = data;
        while !rest.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    self.segment(&rest[..i], true, events);
                    rest = &rest[i + 1..];
                }
                None => {
                    self.segment(rest, false, events);
                    break;
                }
            }
        }
    }

    /// End of the message: flushes the pending line and entity, reports
    /// HeaderEnd (if the header never ended) and BodyEnd, then resets the
    /// scanner (same limits) for the next message.
    pub fn finish(&mut self, events: &mut Vec<MimeEvent>) {
        if self.pending_cr {
            self.pending_cr = false;
            self.total += 1;
            self.content(b"\r");
        }
        if !self.at_line_start {
            self.end_line(events);
        }
        if self.in_top_header {
            events.push(MimeEvent::HeaderEnd { len: self.total });
            let (info, _, what) = self.hdr.finish(&self.limits, 0, self.default_type);
            push_part(events, info, what);
        } else if self.mode == Mode::Header {
            let (info, _, what) = self.hdr.finish(&self.limits, self.depth, self.default_type);
            push_part(events, info, what);
        }
        let body = self.body_start.map_or(0, |s| self.total - s);
        events.push(MimeEvent::BodyEnd { len: body });
        *self = MimeScanner {
            quiet: self.quiet,
            ..MimeScanner::new(self.limits)
        };
    }

    /// Bytes of one line up to (not including) an LF, or up to the end of
    /// the data if `lf` is false.
    fn segment(&mut self, seg: &[u8], lf: bool, events: &mut Vec<MimeEvent>) {
        if self.pending_cr {
            self.pending_cr = false;
            if seg.is_empty() && lf {
                // CR LF: the CR belongs to the line ending.
                self.total += 1;
            } else {
                self.total += 1;
                self.content(b"\r");
            }
        }
        let mut body = seg;
        if let [rest @ .., b'\r'] = seg {
            body = rest;
            if !lf {
                self.pending_cr = true;
            }
        }
        self.total += body.len();
        self.content(body);
        if lf {
            // The CR of a CR LF (if any) and the LF.
            self.total += seg.len() - body.len() + 1;
            self.end_line(events);
        }
    }

    fn content(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.mode == Mode::Header {
            self.hdr.content(bytes, self.at_line_start, &self.limits);
        }
        if !self.in_top_header && !self.frames.is_empty() {
            self.prefix.push(bytes);
        }
        self.line_len += bytes.len();
        self.at_line_start = false;
    }

    fn end_line(&mut self, events: &mut Vec<MimeEvent>) {
        let len = self.line_len;
        let start = self.line_start;
        self.line_start = self.total;
        self.line_len = 0;
        self.at_line_start = true;
        if self.in_top_header {
            if len == 0 {
                events.push(MimeEvent::HeaderEnd { len: start });
                self.in_top_header = false;
                self.body_start = Some(self.total);
                self.end_header(events, 0);
            } else {
                if self.hdr.line_end() {
                    events.push(MimeEvent::ToField);
                }
                events.push(MimeEvent::HeaderLine { len });
            }
            return;
        }
        if self.quiet.is_none_or(|q| len > q) {
            events.push(MimeEvent::BodyLine { len });
        }
        let boundary = self.prefix.matches(&self.frames);
        self.prefix.reset();
        if let Some(b) = boundary {
            self.on_boundary(b, events);
            return;
        }
        if self.mode == Mode::Header {
            if len == 0 {
                self.end_header(events, self.depth);
            } else {
                self.hdr.line_end();
            }
        }
    }

    /// The entity's header block ended at its empty line: report it and
    /// descend into its structure if it has one.
    fn end_header(&mut self, events: &mut Vec<MimeEvent>, depth: usize) {
        let (info, boundary, mut what) = self.hdr.finish(&self.limits, depth, self.default_type);
        let ct = info.content_type.as_str();
        let message = matches!(ct, "message/rfc822" | "message/global");
        let identity = matches!(
            info.encoding,
            Encoding::SevenBit | Encoding::EightBit | Encoding::Binary
        );
        if message && !identity {
            what.get_or_insert(Unreadable::EncodedMessage);
        }
        let nested_message = message && identity;
        let structured = boundary.is_some() || nested_message;
        let digest = ct == "multipart/digest";
        push_part(events, info, what);
        self.mode = Mode::Content;
        if !structured {
            return;
        }
        if depth >= self.limits.max_depth {
            events.push(MimeEvent::DepthExceeded { depth });
            return;
        }
        if let Some(boundary) = boundary {
            if self.frames.len() == self.frames.capacity() {
                let want = (self.frames.capacity() * 2)
                    .max(4)
                    .min(self.limits.max_depth);
                self.frames.reserve_exact(want - self.frames.len());
            }
            self.frames.push(Frame {
                boundary,
                digest,
                depth,
            });
        } else {
            self.mode = Mode::Header;
            self.depth = depth + 1;
            self.default_type = "text/plain";
        }
    }

    fn on_boundary(&mut self, b: Boundary, events: &mut Vec<MimeEvent>) {
        if self.mode == Mode::Header {
            // An entity whose header block was cut short by the boundary.
            let (info, _, what) = self.hdr.finish(&self.limits, self.depth, self.default_type);
            push_part(events, info, what);
        }
        match b {
            Boundary::Delimiter(i) => {
                self.frames.truncate(i + 1);
                let f = &self.frames[i];
                self.mode = Mode::Header;
                self.depth = f.depth + 1;
                self.default_type = if f.digest {
                    "message/rfc822"
                } else {
                    "text/plain"
                };
            }
            Boundary::Close(i) => {
                self.frames.truncate(i);
                self.mode = Mode::Content;
            }
        }
    }
}

/// The bytes of the leading lines of `lines` (which ends with an LF) that
/// hold at most `max_len` bytes before their LF. Searching each window of
/// `max_len + 1` bytes backwards for its last LF passes every line in it
/// at once.
fn short_lines(lines: &[u8], max_len: usize) -> usize {
    let mut start = 0;
    while start < lines.len() {
        let end = start.saturating_add(max_len).saturating_add(1);
        let window = &lines[start..end.min(lines.len())];
        match memchr::memrchr(b'\n', window) {
            Some(lf) => start += lf + 1,
            None => break,
        }
    }
    start
}

/// An entity's `Part` event, after the `Unreadable` one if any.
fn push_part(events: &mut Vec<MimeEvent>, info: PartInfo, what: Option<Unreadable>) {
    if let Some(what) = what {
        events.push(MimeEvent::Unreadable {
            what,
            depth: info.depth,
        });
    }
    events.push(MimeEvent::Part(info));
}
