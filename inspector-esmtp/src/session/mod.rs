//! The sans-IO inspection session: bytes in from each side, bytes out to
//! each side, a close decision and audit records. No sockets, no clock (the
//! caller passes the time in).
//!
//! The path of a client command: `on_client_data` → `feed_client` (waits
//! while a reply is owed, see `Pipeline::must_wait`) → `step_command`
//! (bounded line reassembly) → `command::on_command` (policy, then forward
//! or refuse) → a `Pending` entry that the server's reply resolves in
//! `reply::on_reply_line`. Message content goes through `data` instead and
//! is relayed unchanged.

mod command;
mod data;
mod pipeline;
mod reply;
mod rules;

use std::sync::Arc;
use std::time::Instant;

use memchr::memchr;

use crate::audit::{AuditEvent, Peers};
use crate::mime::{MimeEvent, MimeLimits};
use crate::policy::{EsmtpPolicy, Mode};
use crate::stats::PolicyStats;

use data::{DotScanner, MessageScan};
pub use pipeline::MAX_PENDING;
use pipeline::{Pending, Pipeline};
use rules::RateWindow;

/// Longest command or reply line the engine reassembles, line ending
/// included. A longer command is answered `500 5.5.2` without being
/// buffered; a longer reply ends the session (RFC 5321 allows 512).
pub const MAX_LINE: usize = 8192;

/// Most client bytes held while the client should be waiting for a reply
/// (before the greeting, after DATA/STARTTLS/AUTH/EHLO, or after any command
/// without PIPELINING). Held bytes are processed, in order, once the reply
/// arrives; more than this ends the session with `421`.
pub const MAX_HOLD: usize = 32 * 1024;

/// Message content is fed to the MIME scanner in slices of this size, which
/// bounds the events one call produces (at most 3 per byte).
const MIME_SLICE: usize = 256;

/// Event buffer capacity kept between calls; a bigger one is shrunk back.
const MIME_EVENTS_KEPT: usize = 64;

/// The MIME scanner's limits (the scanner's defaults, as a constant so the
/// memory bound below is one).
const MIME_LIMITS: MimeLimits = MimeLimits {
    max_depth: 16,
    max_header_value: 8192,
    max_boundary_len: 256,
    max_filename: 1024,
};

/// Upper bound of the heap one session keeps between calls, whatever the
/// input: the held client bytes, one reply line, one held EHLO line, the
/// reply queue, the MIME scanner and its event buffer. The policy adds one
/// byte per rule and 16 bytes per `rate-limit` rule. (Within one call, the
/// events of one slice of content add at most
/// `3 * MIME_SLICE * size_of::<MimeEvent>()` plus their strings.)
pub const SESSION_MEMORY_BOUND: usize = MAX_HOLD
    + 2 * MAX_LINE
    + MAX_PENDING.next_power_of_two() * std::mem::size_of::<Pending>()
    + MIME_LIMITS.memory_bound()
    + MIME_EVENTS_KEPT * std::mem::size_of::<MimeEvent>();

/// How to end the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Send the pending output, then close both sides gracefully.
    Fin,
    /// Send the pending output, then reset both sides. The output may hold
    /// the server's reply to a message the close waited for, which the
    /// client must get.
    Reset,
}

/// A close decided while the server still owes replies to messages it
/// received in full (see `Session::close`).
#[derive(Debug, Clone, Copy)]
struct Closing {
    how: Close,
    reply: &'static [u8],
    /// Message-completing replies still awaited.
    owed: usize,
    /// The client ended the session (EOF), not the policy: not counted as
    /// a drop, and no `421` is sent.
    eof: bool,
}

/// Where the session is, for the driver's timers and graceful shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The server's greeting has not arrived yet.
    Greeting,
    /// Between commands: no reply is owed and no message is in transfer.
    Idle,
    /// Commands are awaiting replies (none of them completes a message).
    Command,
    /// Message content is arriving (DATA or BDAT), or the server owes the
    /// reply to a complete message.
    Data,
    /// After STARTTLS: bytes are relayed unchanged.
    Opaque,
    /// Closed, or closing once owed replies are relayed.
    Closing,
}

/// What one call produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Output {
    pub to_client: Vec<u8>,
    pub to_server: Vec<u8>,
    /// Set once: after it, the session ignores input.
    pub close: Option<Close>,
    pub audit: Vec<AuditEvent>,
    /// The server accepted STARTTLS: from now on every byte is relayed
    /// unchanged both ways (the driver may stop calling the engine).
    pub opaque: bool,
}

/// What the client is sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientMode {
    Command,
    /// DATA content up to the final `.`.
    Data(DotScanner),
    /// A counted payload: a BDAT chunk or an XEXCH50 blob.
    Raw {
        remaining: u64,
        kind: RawKind,
    },
    /// The next line answers an AUTH challenge (334): relayed as is.
    AuthResponse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawKind {
    /// `relay: false`: a chunk of a BDAT the engine refused, discarded.
    Bdat {
        last: bool,
        relay: bool,
    },
    Xexch50,
}

/// Extensions the client was shown in the last EHLO reply (after masking).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Extensions {
    pipelining: bool,
    chunking: bool,
}

/// The mail transaction in progress.
#[derive(Debug, Clone, Copy, Default)]
struct Transaction {
    /// RCPT commands since MAIL.
    rcpt_count: u64,
    /// MAIL FROM's `SIZE=`.
    declared_size: Option<u64>,
    /// Message content is being inspected (DATA after 354, or BDAT).
    in_message: bool,
    /// The engine refused a BDAT: the server never got that chunk, so no
    /// later chunk may reach it until RSET (or EHLO/HELO) ends the
    /// transaction there too, or it would deliver a truncated message.
    bdat_refused: bool,
}

/// Lines of the reply being relayed.
#[derive(Debug, Default)]
struct ReplyState {
    /// Index of the next line within the reply.
    line: usize,
    /// Modern EHLO masking holds one line back, so that removing the final
    /// line can turn the previous one into the final one.
    ehlo_held: Option<Vec<u8>>,
    /// Compat EHLO masking: keywords masked so far (`XXXXXXXA`, `…B`, …).
    masked: u8,
    /// Extensions seen in this EHLO reply, committed at its end.
    ext: Extensions,
}

pub struct Session {
    policy: Arc<EsmtpPolicy>,
    stats: Arc<PolicyStats>,
    peers: Peers,
    now: Option<Instant>,
    mode: ClientMode,
    /// A partial command line, or client bytes held while a reply is owed.
    cbuf: Vec<u8>,
    /// A command line too long to buffer: (bytes so far, last byte was CR).
    overlong: Option<(u64, bool)>,
    /// A partial reply line.
    sbuf: Vec<u8>,
    reply: ReplyState,
    pipeline: Pipeline,
    ext: Extensions,
    tx: Transaction,
    message: Option<MessageScan>,
    /// Rules that already matched in the current message (each fires once).
    fired: Vec<bool>,
    /// RCPTs the server rejected (5xx) in this session.
    invalid_rcpts: u64,
    rate: Vec<RateWindow>,
    /// Set: the session closes once these replies are relayed, and client
    /// bytes are discarded meanwhile.
    closing: Option<Closing>,
    opaque: bool,
    closed: bool,
}

impl Session {
    pub fn new(policy: Arc<EsmtpPolicy>, stats: Arc<PolicyStats>, peers: Peers) -> Self {
        let mut pipeline = Pipeline::default();
        // An empty queue cannot be full.
        let _ = pipeline.push(Pending::Greeting);
        let rules = policy.rules.len();
        Self {
            policy,
            stats,
            peers,
            now: None,
            mode: ClientMode::Command,
            cbuf: Vec::new(),
            overlong: None,
            sbuf: Vec::new(),
            reply: ReplyState::default(),
            pipeline,
            ext: Extensions::default(),
            tx: Transaction::default(),
            message: None,
            fired: vec![false; rules],
            invalid_rcpts: 0,
            rate: Vec::new(),
            closing: None,
            opaque: false,
            closed: false,
        }
    }

    /// Bytes from the client.
    pub fn on_client_data(&mut self, data: &[u8], now: Instant) -> Output {
        self.now = Some(now);
        let mut out = Output::default();
        self.feed_client(data, &mut out);
        self.finish(out)
    }

    /// Bytes from the server (the greeting first).
    pub fn on_server_data(&mut self, data: &[u8], now: Instant) -> Output {
        self.now = Some(now);
        let mut out = Output::default();
        self.feed_server(data, &mut out);
        self.finish(out)
    }

    /// The client closed its side: an incomplete command or message is
    /// discarded (the server never completes a message it did not fully get).
    /// If the server owes the reply to a message it received in full, the
    /// session stays open until that reply is relayed (a client that
    /// half-closed after its final `.` still learns the message's fate);
    /// only then does it close.
    pub fn on_client_eof(&mut self, now: Instant) -> Output {
        self.now = Some(now);
        if self.closed || self.closing.is_some() {
            return self.finish(Output::default());
        }
        let owed = self.owed_message_replies();
        if owed > 0 && !self.opaque {
            self.closing = Some(Closing {
                how: Close::Fin,
                reply: b"",
                owed,
                eof: true,
            });
            self.cbuf = Vec::new();
            return self.finish(Output::default());
        }
        self.on_eof(now)
    }

    /// The server closed its side: an incomplete reply line is discarded.
    pub fn on_server_eof(&mut self, now: Instant) -> Output {
        self.on_eof(now)
    }

    fn on_eof(&mut self, now: Instant) -> Output {
        self.now = Some(now);
        let mut out = Output::default();
        if !self.closed {
            self.closed = true;
            out.close = Some(Close::Fin);
            self.cbuf = Vec::new();
            self.sbuf = Vec::new();
        }
        self.finish(out)
    }

    /// Where the session is (see [`Phase`]).
    pub fn phase(&self) -> Phase {
        if self.stopped() {
            Phase::Closing
        } else if self.opaque {
            Phase::Opaque
        } else if self.pipeline.head() == Some(Pending::Greeting) {
            Phase::Greeting
        } else if self.mode != ClientMode::Command || self.pipeline.message_ends() > 0 {
            Phase::Data
        } else if self.pipeline.head().is_some() {
            Phase::Command
        } else {
            Phase::Idle
        }
    }

    /// Whether the session relays raw bytes (after STARTTLS).
    pub fn is_opaque(&self) -> bool {
        self.opaque
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Closed, or closing: no more client bytes go to the server.
    fn stopped(&self) -> bool {
        self.closed || self.closing.is_some()
    }

    /// Heap bytes held now (always below `SESSION_MEMORY_BOUND`).
    pub fn heap_bytes(&self) -> usize {
        self.cbuf.capacity()
            + self.sbuf.capacity()
            + self.reply.ehlo_held.as_ref().map_or(0, Vec::capacity)
            + self.pipeline.heap_bytes()
            + self.message.as_ref().map_or(0, MessageScan::heap_bytes)
    }

    fn finish(&mut self, mut out: Output) -> Output {
        out.opaque = self.opaque;
        out
    }

    fn feed_client(&mut self, mut input: &[u8], out: &mut Output) {
        while !input.is_empty() && !self.stopped() {
            if self.opaque {
                out.to_server.extend_from_slice(input);
                return;
            }
            if self.mode == ClientMode::Command && self.pipeline.must_wait(self.ext.pipelining) {
                self.hold(input, out);
                return;
            }
            let used = match self.mode {
                ClientMode::Command => self.step_command(input, out),
                ClientMode::Data(_) => self.step_data(input, out),
                ClientMode::Raw { .. } => self.step_raw(input, out),
                ClientMode::AuthResponse => self.step_auth_response(input, out),
            };
            match input.get(used..) {
                Some(rest) if used > 0 => input = rest,
                // Every step consumes input unless it stopped the session.
                _ => return,
            }
        }
    }

    /// Keeps client bytes until the owed reply arrives.
    fn hold(&mut self, input: &[u8], out: &mut Output) {
        if self.cbuf.len().saturating_add(input.len()) > MAX_HOLD {
            self.anomaly("client sent too much without waiting for replies", out);
            return;
        }
        extend_bounded(&mut self.cbuf, input, MAX_HOLD);
    }

    /// Processes client bytes held back, after a reply arrived.
    fn release_held(&mut self, out: &mut Output) {
        if self.cbuf.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.cbuf);
        self.feed_client(&held, out);
    }

    /// Command mode: reassembles one line (bounded) and hands it on.
    fn step_command(&mut self, input: &[u8], out: &mut Output) -> usize {
        let lf = memchr(b'\n', input);
        if let Some((len, cr)) = self.overlong {
            let Some(p) = lf else {
                let cr = input.last() == Some(&b'\r');
                self.overlong = Some((len.saturating_add(input.len() as u64), cr));
                return input.len();
            };
            let before = input.get(..p).unwrap_or_default();
            let ends_cr = if p == 0 {
                cr
            } else {
                before.last() == Some(&b'\r')
            };
            let total = len
                .saturating_add(p as u64)
                .saturating_sub(u64::from(ends_cr));
            self.overlong = None;
            self.on_overlong_command(total, out);
            return p + 1;
        }
        let take = lf.map_or(input.len(), |p| p + 1);
        let part = input.get(..take).unwrap_or(input);
        if self.cbuf.len().saturating_add(part.len()) > MAX_LINE {
            // Too long to buffer: from here on it is only counted.
            let prev_cr = self.cbuf.last() == Some(&b'\r');
            let len = self.cbuf.len().saturating_add(part.len()) as u64;
            self.cbuf.clear();
            if lf.is_none() {
                self.overlong = Some((len, part.last() == Some(&b'\r')));
                return take;
            }
            let ends_cr = match part.len() {
                1 => prev_cr,
                n => part.get(n - 2) == Some(&b'\r'),
            };
            self.on_overlong_command(len.saturating_sub(1 + u64::from(ends_cr)), out);
            return take;
        }
        match lf {
            None => extend_bounded(&mut self.cbuf, part, MAX_LINE),
            Some(_) if self.cbuf.is_empty() => self.on_command(part, out),
            Some(_) => {
                let mut line = std::mem::take(&mut self.cbuf);
                extend_bounded(&mut line, part, MAX_LINE);
                self.on_command(&line, out);
                // Keep the allocation for the next line (unless bytes were
                // held meanwhile, which live in `cbuf` now).
                if self.cbuf.is_empty() {
                    line.clear();
                    self.cbuf = line;
                }
            }
        }
        take
    }

    /// AUTH: the client's answer to a 334 challenge, relayed unchanged.
    fn step_auth_response(&mut self, input: &[u8], out: &mut Output) -> usize {
        match memchr(b'\n', input) {
            None => {
                out.to_server.extend_from_slice(input);
                input.len()
            }
            Some(p) => {
                out.to_server
                    .extend_from_slice(input.get(..=p).unwrap_or(input));
                self.mode = ClientMode::Command;
                self.push(Pending::Auth, out);
                p + 1
            }
        }
    }

    fn feed_server(&mut self, mut input: &[u8], out: &mut Output) {
        while !input.is_empty() && !self.closed {
            if self.opaque {
                out.to_client.extend_from_slice(input);
                return;
            }
            let Some(p) = memchr(b'\n', input) else {
                if self.sbuf.len().saturating_add(input.len()) > MAX_LINE {
                    self.reply_too_long(out);
                } else {
                    extend_bounded(&mut self.sbuf, input, MAX_LINE);
                }
                return;
            };
            let (part, rest) = input.split_at(p + 1);
            input = rest;
            if self.sbuf.is_empty() {
                self.on_reply_line(part, out);
            } else if self.sbuf.len().saturating_add(part.len()) > MAX_LINE {
                self.reply_too_long(out);
            } else {
                let mut line = std::mem::take(&mut self.sbuf);
                extend_bounded(&mut line, part, MAX_LINE);
                self.on_reply_line(&line, out);
                line.clear();
                self.sbuf = line;
            }
        }
    }

    /// The server broke its reply framing: nothing it says can be trusted
    /// any more, so the session ends at once.
    fn reply_too_long(&mut self, out: &mut Output) {
        self.audit_anomaly("server reply line too long", out);
        self.close_now(Close::Fin, rules::PROTOCOL_CLOSE, out);
    }

    /// Queues the reply a command is owed; a client that never reads its
    /// replies ends the session.
    fn push(&mut self, pending: Pending, out: &mut Output) {
        if self.pipeline.push(pending).is_err() {
            self.anomaly("too many commands awaiting replies", out);
        }
    }

    /// Sends the engine's own replies that are now at the head of the queue.
    fn flush_local(&mut self, out: &mut Output) {
        while let Some(reply) = self.pipeline.pop_local() {
            out.to_client.extend_from_slice(reply);
        }
    }

    fn modern(&self) -> bool {
        self.policy.mode == Mode::Modern
    }
}

/// A line without its ending (CRLF or bare LF), and the ending.
fn split_eol(line: &[u8]) -> (&[u8], &[u8]) {
    let n = if line.ends_with(b"\r\n") {
        2
    } else {
        usize::from(line.ends_with(b"\n"))
    };
    line.split_at(line.len() - n)
}

/// Appends `data`, growing the buffer's capacity by doubling but never past
/// `cap` (callers check that the result fits), so that the memory bound
/// holds for capacities, not just lengths.
fn extend_bounded(buf: &mut Vec<u8>, data: &[u8], cap: usize) {
    let need = buf.len().saturating_add(data.len());
    if need > buf.capacity() {
        let want = buf.capacity().saturating_mul(2).clamp(need, cap.max(need));
        buf.reserve_exact(want - buf.len());
    }
    buf.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<Session>();
        send::<Output>();
    }

    #[test]
    fn eol_split() {
        assert_eq!(split_eol(b"NOOP\r\n"), (&b"NOOP"[..], &b"\r\n"[..]));
        assert_eq!(split_eol(b"NOOP\n"), (&b"NOOP"[..], &b"\n"[..]));
        assert_eq!(split_eol(b"NOOP"), (&b"NOOP"[..], &b""[..]));
    }
}
