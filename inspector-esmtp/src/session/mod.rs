//! The sans-IO inspection session: bytes in from each side, bytes out to
//! each side, a close decision and audit records. No sockets, no clock (the
//! caller passes the time in).
//!
//! `Session` is the state machine; its helpers each do one thing and know
//! nothing of it: `command` and `reply` read (and rewrite) lines, `data`
//! finds the end of message content and scans it, `pipeline` keeps the
//! replies owed in command order, `rules` evaluates the policy on one item
//! into a verdict, `close` is how a session ends, and `replies` holds the
//! engine's own reply texts.
//!
//! The path of a client command: `on_client_data` → `feed_client` (waits
//! while a reply is owed, see `Pipeline::must_wait`) → `step_command`
//! (bounded line reassembly) → `on_command` (the rules' verdict, then
//! forward or refuse) → a `Pending` entry that the server's reply resolves
//! in `on_reply_line`. Message content goes through `step_data` and
//! `step_raw` instead and is relayed unchanged.

mod bytes;
mod close;
mod command;
mod data;
mod pipeline;
mod record;
mod replies;
mod reply;
mod rules;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use memchr::memchr;

use crate::audit::{self, AuditEvent, AuditKind, Peers};
use crate::mime::{MimeEvent, MimeLimits};
use crate::policy::{EsmtpPolicy, Mode, TLS_VERBS};
use crate::stats::PolicyStats;

use close::{Ending, Tell};
use command::{Args, Command, MAX_BDAT, Verb, is_program_address};
pub use command::{Reading, read as read_command};
use data::{DotEnd, DotScanner, MessageScan};
pub use pipeline::MAX_PENDING;
use pipeline::{Pending, Pipeline};
pub use record::{MAX_TRANSACTIONS, SessionRecord, TransactionRecord};
use replies::{
    BARE_LINE_END, CHUNK_AFTER_REFUSAL, LINE_TOO_LONG, POLICY_CLOSE, PROTOCOL_CLOSE, RATE_LIMITED,
    SYNTAX, TOO_BIG, TOO_MANY_RCPTS, UNRECOGNIZED,
};
use reply::{EhloRewrite, Extensions, code_of, ehlo_keyword};
use rules::{Judge, RuleState, Verdict};

/// Longest reply line the engine reassembles, line ending included (a
/// longer reply ends the session; RFC 5321 allows 512), and longest line
/// of a verb in `allow-verbs` (Exchange's X-LINK2STATE lines are long).
pub const MAX_LINE: usize = 8192;

/// Longest command line, line ending included, that every mainstream server
/// reads as one line: Postfix's `line_length_limit` (2048 with the LF,
/// `mail_params.h`), Sendmail's `MAXLINE` (2048 with CR LF, `conf.h`;
/// longer lines are split into several commands without SASL). A longer
/// line is answered `500 5.5.2` and the session closed: the servers would
/// read its tail as a command of its own.
pub const MAX_COMMAND_LINE: usize = 2048;

/// Longest `AUTH` command line and SASL response line, line ending
/// included: Sendmail's `MAXINPLINE` buffer of 12288 bytes holds 12287 and
/// a NUL (`conf.h`; the rest becomes the next line). RFC 4954 asks servers
/// for 12288; one byte less is what every server takes whole.
pub const MAX_AUTH_LINE: usize = 12287;

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
    + MIME_EVENTS_KEPT * std::mem::size_of::<MimeEvent>()
    + SessionRecord::MEMORY_BOUND;

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

/// What one call produced (see [`Session::on_client_data`]).
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

impl Output {
    /// Empties it, keeping the buffers' capacity.
    pub fn clear(&mut self) {
        self.to_client.clear();
        self.to_server.clear();
        self.close = None;
        self.audit.clear();
        self.opaque = false;
    }
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

/// What happens to a command after the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Forward,
    /// Compat: `X`s to the server (the server answers 500); modern: this
    /// reply from the engine.
    Refuse(&'static [u8]),
    /// The engine's reply in either mode (modern-only settings).
    Reject(&'static [u8]),
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
    /// Chunk bytes announced by the BDATs relayed in this message.
    bdat_total: u64,
}

/// One inspected ESMTP session: the state machine between a client and the
/// protected server.
pub struct Session {
    policy: Arc<EsmtpPolicy>,
    stats: Arc<PolicyStats>,
    peers: Peers,
    now: Option<Instant>,
    mode: ClientMode,
    /// A partial command line, or client bytes held while a reply is owed.
    cbuf: Vec<u8>,
    /// Since when a command line (or SASL response line) is incomplete.
    partial_since: Option<Instant>,
    /// Length of the incomplete command line that `cmd line length` rules
    /// have already been evaluated on (each fires once per line).
    checked_len: u64,
    /// Bytes of the SASL response line being relayed.
    auth_len: usize,
    /// A partial reply line.
    sbuf: Vec<u8>,
    /// Index of the next line within the reply being relayed.
    reply_line: usize,
    /// The EHLO reply being relayed; its extensions are committed at its end.
    ehlo: EhloRewrite,
    pipeline: Pipeline,
    /// Extensions the client was shown in the last EHLO reply.
    ext: Extensions,
    tx: Transaction,
    message: Option<MessageScan>,
    rules: RuleState,
    /// RCPTs the server rejected (5xx) in this session.
    invalid_rcpts: u64,
    ending: Ending,
    opaque: bool,
    /// The server accepted QUIT: the session is over but for the closes.
    quit_answered: bool,
    /// Body lines no rule acts on (`rules::quiet_body_line`).
    quiet: Option<usize>,
    /// Whether each of `Verb::NAMES` may reach the server at all
    /// (`EsmtpPolicy::allows_verb`, asked once rather than per command).
    allowed: [bool; Verb::NAMES.len()],
    /// Commands and replies inspected in this call: added to the shared
    /// `packet` counter once, at the end of the call, not once per line.
    packets: u64,
    /// What the session saw, for its record (`record`).
    record: SessionRecord,
}

impl Session {
    pub fn new(policy: Arc<EsmtpPolicy>, stats: Arc<PolicyStats>, peers: Peers) -> Self {
        let mut pipeline = Pipeline::default();
        // An empty queue cannot be full.
        let _ = pipeline.push(Pending::Greeting);
        let modern = policy.mode == Mode::Modern;
        let rules = RuleState::new(&policy);
        let quiet = rules::quiet_body_line(&policy);
        let allowed = Verb::NAMES.map(|v| policy.allows_verb(v));
        Self {
            policy,
            stats,
            peers,
            now: None,
            mode: ClientMode::Command,
            cbuf: Vec::new(),
            partial_since: None,
            checked_len: 0,
            auth_len: 0,
            sbuf: Vec::new(),
            reply_line: 0,
            ehlo: EhloRewrite::new(modern),
            pipeline,
            ext: Extensions::default(),
            tx: Transaction::default(),
            message: None,
            rules,
            invalid_rcpts: 0,
            ending: Ending::new(modern),
            opaque: false,
            quit_answered: false,
            quiet,
            allowed,
            packets: 0,
            record: SessionRecord::default(),
        }
    }

    /// Bytes from the client. Each of the four calls writes what it
    /// produced into `out`, cleared first: a caller that passes the same
    /// `Output` again reuses its buffers, and the call allocates nothing.
    pub fn on_client_data(&mut self, data: &[u8], now: Instant, out: &mut Output) {
        self.start(now, out);
        // Most of it is relayed: one allocation at most rather than one per
        // doubling.
        out.to_server.reserve(data.len());
        self.feed_client(data, out);
        self.finish(out);
    }

    /// Bytes from the server (the greeting first).
    pub fn on_server_data(&mut self, data: &[u8], now: Instant, out: &mut Output) {
        self.start(now, out);
        out.to_client.reserve(data.len());
        self.feed_server(data, out);
        self.finish(out);
    }

    /// The client closed its side: an incomplete command or message is
    /// discarded (the server never completes a message it did not fully get).
    /// If the server owes the reply to a message it received in full, the
    /// session stays open until that reply is relayed (a client that
    /// half-closed after its final `.` still learns the message's fate);
    /// only then does it close.
    pub fn on_client_eof(&mut self, now: Instant, out: &mut Output) {
        self.start(now, out);
        let owed = if self.opaque {
            0
        } else {
            self.owed_message_replies()
        };
        if self.ending.client_eof(owed, out) {
            self.release();
        }
        self.finish(out);
    }

    /// The server closed its side: an incomplete reply line is discarded.
    pub fn on_server_eof(&mut self, now: Instant, out: &mut Output) {
        self.start(now, out);
        if self.ending.eof(out) {
            self.release();
        }
        self.finish(out);
    }

    /// Whether the server accepted the client's QUIT (RFC 5321 section
    /// 4.1.1.10: it then closes): the session holds nothing more but its
    /// sockets, so the driver can give its admission slot back before the
    /// reply reaches the client, which may open its next session at once.
    pub fn quit_answered(&self) -> bool {
        self.quit_answered
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

    /// Since when the client has been sending a command line that has not
    /// ended yet (a command, or a response to an AUTH challenge), if it is:
    /// the driver counts its command timeout from this instant, so that a
    /// client trickling bytes of a line that never ends is closed by it
    /// however often it sends. `None` between commands, while the client
    /// waits for a reply, in message content, and once closing or opaque.
    pub fn command_started(&self) -> Option<Instant> {
        if self.stopped() || self.opaque {
            None
        } else {
            self.partial_since
        }
    }

    /// Whether the session relays raw bytes (after STARTTLS).
    pub fn is_opaque(&self) -> bool {
        self.opaque
    }

    /// What the session saw: HELO name, transactions.
    pub fn record(&self) -> &SessionRecord {
        &self.record
    }

    pub fn is_closed(&self) -> bool {
        self.ending.is_closed()
    }

    /// Heap bytes held now (always below `SESSION_MEMORY_BOUND`).
    pub fn heap_bytes(&self) -> usize {
        self.cbuf.capacity()
            + self.sbuf.capacity()
            + self.ehlo.heap_bytes()
            + self.pipeline.heap_bytes()
            + self.message.as_ref().map_or(0, MessageScan::heap_bytes)
            + self.record.heap_bytes()
    }

    // ---- Client bytes ----

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
                ClientMode::Command => match self.step_commands(input, out) {
                    0 => self.step_command(input, out),
                    n => n,
                },
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

    /// Command mode, pipelined: the complete lines of `input` while
    /// nothing is held or awaited, each as `step_command` takes it; the
    /// lines forwarded as they are go to the server as runs, in one copy
    /// each. Returns the bytes used (0: `step_command` takes the next line).
    fn step_commands(&mut self, input: &[u8], out: &mut Output) -> usize {
        // `input[run..pos]`: lines forwarded unchanged, not yet copied.
        let (mut run, mut pos) = (0, 0);
        while self.mode == ClientMode::Command
            && self.cbuf.is_empty()
            && !self.stopped()
            && !self.opaque
            && !self.pipeline.must_wait(self.ext.pipelining)
            && let Some(rest) = input.get(pos..)
            && let Some(lf) = bytes::find_lf(rest)
            && lf < MAX_COMMAND_LINE
        {
            let line = rest.get(..=lf).unwrap_or(rest);
            let start = pos;
            pos += line.len();
            let before = out.to_server.len();
            let relay = self.on_command(line, out);
            self.partial_since = None;
            self.checked_len = 0;
            if !relay {
                // The run ends before this line, and goes before anything
                // written for it (compat: `X`s, or the rewritten address).
                let done = input.get(run..start).unwrap_or_default();
                if out.to_server.len() == before {
                    out.to_server.extend_from_slice(done);
                } else {
                    out.to_server.splice(before..before, done.iter().copied());
                }
                run = pos;
            }
        }
        out.to_server
            .extend_from_slice(input.get(run..pos).unwrap_or_default());
        pos
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
        let lf = bytes::find_lf(input);
        let take = lf.map_or(input.len(), |p| p + 1);
        let part = input.get(..take).unwrap_or(input);
        let total = self.cbuf.len().saturating_add(part.len());
        if total > MAX_COMMAND_LINE && total > self.line_cap(part) {
            // Without the line ending (or a CR that may start it).
            let ending = lf.map_or(0, |_| 1) + usize::from(total > 1 && self.byte_before_end(part));
            self.overlong(total.saturating_sub(ending) as u64, out);
            return 0;
        }
        let Some(_) = lf else {
            if self.partial_since.is_none() {
                self.partial_since = self.now;
            }
            extend_bounded(&mut self.cbuf, part, MAX_AUTH_LINE);
            let len = total - usize::from(part.last() == Some(&b'\r'));
            self.pending_length(len as u64, out);
            return if self.stopped() { 0 } else { take };
        };
        if self.cbuf.is_empty() {
            if self.on_command(part, out) {
                out.to_server.extend_from_slice(part);
            }
        } else {
            let mut line = std::mem::take(&mut self.cbuf);
            extend_bounded(&mut line, part, MAX_AUTH_LINE);
            if self.on_command(&line, out) {
                out.to_server.extend_from_slice(&line);
            }
            // Keep the allocation for the next line (unless bytes were
            // held meanwhile, which live in `cbuf` now).
            if self.cbuf.is_empty() {
                line.clear();
                self.cbuf = line;
            }
        }
        self.partial_since = None;
        self.checked_len = 0;
        take
    }

    /// Whether the byte before the last of the pending line (`cbuf` then
    /// `part`) is a CR: the CR of a CR LF.
    fn byte_before_end(&self, part: &[u8]) -> bool {
        match part.len() {
            0 => false,
            1 => self.cbuf.last() == Some(&b'\r'),
            n => part.get(n - 2) == Some(&b'\r'),
        }
    }

    /// The longest line the pending command may have, by its verb:
    /// `MAX_AUTH_LINE` for AUTH, `MAX_LINE` for a verb of `allow-verbs`
    /// (the policy says which server is behind), `MAX_COMMAND_LINE` else.
    fn line_cap(&self, part: &[u8]) -> usize {
        let head = if self.cbuf.is_empty() {
            part
        } else {
            &self.cbuf
        };
        let verb = head
            .get(..memchr(b' ', head).unwrap_or(0))
            .unwrap_or_default();
        if verb.eq_ignore_ascii_case(b"AUTH") {
            MAX_AUTH_LINE
        } else if self
            .policy
            .allow_verbs
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(verb))
        {
            MAX_LINE
        } else {
            MAX_COMMAND_LINE
        }
    }

    /// `cmd line length` on the line still arriving, `len` bytes so far:
    /// a rule acts as soon as the line is longer than its limit.
    fn pending_length(&mut self, len: u64, out: &mut Output) {
        if len <= self.checked_len {
            return;
        }
        let from = self.checked_len;
        self.checked_len = len;
        let v = self.judge(&mut out.audit).line_length(len, from);
        self.conclude(&v, out);
    }

    /// A command line longer than any server reads whole (`len` bytes
    /// before its line ending, so far): its `cmd line length` rules, then
    /// `500 5.5.2` and the close. Resynchronising at the next LF is not
    /// safe: Exim and Sendmail split such lines, and execute the tail.
    fn overlong(&mut self, len: u64, out: &mut Output) {
        self.packets += 1;
        let from = self.checked_len;
        self.checked_len = len;
        let v = self.judge(&mut out.audit).line_length(len, from);
        if !self.conclude(&v, out) {
            self.refuse_and_close("command line too long", LINE_TOO_LONG, out);
        }
    }

    /// AUTH: the client's answer to a 334 challenge, relayed unchanged, up
    /// to `MAX_AUTH_LINE` (Exim reads the rest of a longer one as commands,
    /// `auths/get_data.c`).
    fn step_auth_response(&mut self, input: &[u8], out: &mut Output) -> usize {
        let lf = memchr(b'\n', input);
        let take = lf.map_or(input.len(), |p| p + 1);
        self.auth_len = self.auth_len.saturating_add(take);
        if self.auth_len > MAX_AUTH_LINE {
            self.refuse_and_close("SASL response line too long", LINE_TOO_LONG, out);
            return 0;
        }
        out.to_server
            .extend_from_slice(input.get(..take).unwrap_or(input));
        if lf.is_some() {
            self.mode = ClientMode::Command;
            self.auth_len = 0;
            self.partial_since = None;
            self.push(Pending::Auth, out);
        } else if self.partial_since.is_none() {
            self.partial_since = self.now;
        }
        take
    }

    /// One complete command line (with its line ending): the rules decide,
    /// then the command is forwarded (and its reply awaited) or refused.
    /// Refusing means `X`s of the same length to the server in compat mode
    /// (the server answers 500), and the engine's own reply in modern mode;
    /// a line some server would read differently from the engine is
    /// answered by the engine in both modes.
    fn on_command(&mut self, line: &[u8], out: &mut Output) -> bool {
        self.packets += 1;
        let cmd = Command::parse(line);
        if cmd.kind == Verb::Rcpt {
            self.tx.rcpt_count = self.tx.rcpt_count.saturating_add(1);
        }
        let rcpt_count = self.tx.rcpt_count;
        let checked = self.checked_len;
        // The rules' state is asked first: most commands no rule can match,
        // and then no `Judge` is built.
        let v = if self.rules.command_may_match(&cmd, rcpt_count) {
            self.judge(&mut out.audit)
                .command(&cmd, rcpt_count, checked)
        } else {
            Verdict::default()
        };
        if self.conclude(&v, out) {
            return false;
        }
        if let Some(p) = &cmd.path {
            if is_program_address(&p.judged) || is_program_address(p.raw) {
                out.audit.push(AuditEvent {
                    peers: self.peers,
                    kind: AuditKind::MaliciousAddress {
                        address: audit::excerpt(p.raw),
                    },
                });
                self.close(Close::Fin, Tell::Modern(POLICY_CLOSE), out);
                return false;
            }
            if rules::address_params(&self.policy) {
                let params = self.judge(&mut out.audit).address(cmd.kind, &p.judged);
                if self.conclude(&params, out) {
                    return false;
                }
            }
        }

        // `BDAT\t5`, ` BDAT 5`: a BDAT to Postfix and Sendmail's tokenizers.
        // A line whose verb is another one the session knows starts with
        // its letters, which no tokenizer reads as BDAT.
        let bdat = match cmd.kind {
            Verb::Bdat => true,
            Verb::Other => command::names_bdat(cmd.content),
            _ => false,
        };
        let outcome = if !self.verb_allowed(&cmd) || v.mask {
            Outcome::Refuse(UNRECOGNIZED)
        } else if v.rate_limited {
            Outcome::Refuse(RATE_LIMITED)
        } else if let Some(why) = cmd.refusal {
            if bdat {
                // Its chunk follows, of a size no one can be sure of.
                self.refuse_and_close(why, SYNTAX, out);
                return false;
            }
            Outcome::Reject(SYNTAX)
        } else if bdat && self.tx.bdat_refused {
            Outcome::Refuse(CHUNK_AFTER_REFUSAL)
        } else if let Args::Bdat { size, .. } = cmd.args
            && self.bdat_too_big(size)
        {
            self.refuse_and_close("BDAT over the size limit", TOO_BIG, out);
            return false;
        } else if v.reject_rcpt {
            Outcome::Reject(TOO_MANY_RCPTS)
        } else {
            Outcome::Forward
        };
        if bdat && matches!(outcome, Outcome::Refuse(_)) {
            self.tx.bdat_refused = true;
        }
        let mut relay = false;
        match outcome {
            Outcome::Forward => relay = self.forward(&cmd, out),
            Outcome::Reject(reply) => self.push(Pending::Local(reply), out),
            Outcome::Refuse(reply) if self.modern() => {
                if bdat {
                    // The payload of a refused BDAT follows anyway: skip it,
                    // or close if its size cannot be read for sure.
                    match cmd.args {
                        Args::Bdat { size, last } if size > 0 => {
                            self.mode = ClientMode::Raw {
                                remaining: size,
                                kind: RawKind::Bdat { last, relay: false },
                            };
                        }
                        Args::Bdat { .. } => {}
                        _ => {
                            let why = cmd.refusal.unwrap_or("malformed BDAT");
                            self.refuse_and_close(why, SYNTAX, out);
                            return false;
                        }
                    }
                }
                self.push(Pending::Local(reply), out);
            }
            // Compat: the server answers 500 and reads what follows as
            // commands, as the engine does (BDAT is never allowed there).
            Outcome::Refuse(_) => {
                out.to_server
                    .resize(out.to_server.len() + cmd.content.len(), b'X');
                out.to_server.extend_from_slice(cmd.eol);
                self.push(Pending::Other, out);
            }
        }
        self.flush_local(out);
        relay
    }

    /// Whether a chunk of `size` bytes would take the message over the
    /// server's SIZE (when it advertised a limit) or over 2^31-1, which
    /// Exim and Exchange cannot count past.
    fn bdat_too_big(&self, size: u64) -> bool {
        let limit = self
            .ext
            .size
            .filter(|&s| s > 0)
            .map_or(MAX_BDAT, |s| s.min(MAX_BDAT));
        size > limit || self.tx.bdat_total.saturating_add(size) > limit
    }

    /// The engine refuses what it cannot let through, in either mode: the
    /// reply, a 108004 record, and the close (once the server answered the
    /// messages it already has).
    fn refuse_and_close(&mut self, what: &str, reply: &'static [u8], out: &mut Output) {
        out.audit.push(close::anomaly(self.peers, what));
        self.close(Close::Fin, Tell::Always(reply), out);
    }

    /// Whether the command's verb may reach the server in the session's
    /// state.
    fn verb_allowed(&self, cmd: &Command<'_>) -> bool {
        let allowed = self
            .allowed
            .get(cmd.kind.index())
            .copied()
            .unwrap_or_else(|| self.policy.allows_verb(&cmd.verb));
        // BDAT only when the client was shown CHUNKING.
        allowed && (cmd.kind != Verb::Bdat || self.ext.chunking)
    }

    /// Sends an accepted command on and records the reply it is owed.
    /// Returns whether the line goes as is, which the caller copies.
    fn forward(&mut self, cmd: &Command<'_>, out: &mut Output) -> bool {
        self.record.command(cmd);
        let pending = match cmd.kind {
            Verb::Ehlo => Pending::Ehlo,
            Verb::Helo => Pending::Helo,
            Verb::Mail => {
                self.tx.rcpt_count = 0;
                self.tx.declared_size = match cmd.args {
                    Args::Mail { size } => size,
                    _ => None,
                };
                Pending::Mail
            }
            Verb::Rcpt => Pending::Rcpt,
            Verb::Data => Pending::Data,
            Verb::Bdat => match cmd.args {
                Args::Bdat { size, last } => {
                    self.start_message();
                    self.tx.bdat_total = self.tx.bdat_total.saturating_add(size);
                    if size == 0 && last {
                        // The empty last chunk completes the message: inspect
                        // before the server gets it.
                        if let Some(mut scan) = self.message.take() {
                            self.end_message(&mut scan, out);
                            self.message = Some(scan);
                        }
                        if self.stopped() {
                            return false;
                        }
                    } else if size > 0 {
                        self.mode = ClientMode::Raw {
                            remaining: size,
                            kind: RawKind::Bdat { last, relay: true },
                        };
                    }
                    Pending::Bdat { last }
                }
                // Not reached: a BDAT the strict reading refuses is not forwarded.
                _ => Pending::Other,
            },
            Verb::Rset => {
                // In the client's order: commands pipelined after RSET
                // belong to the next transaction.
                self.tx = Transaction::default();
                Pending::Other
            }
            Verb::Quit => Pending::Quit,
            Verb::Noop => Pending::Other,
            Verb::Other => match &*cmd.verb {
                "XEXCH50" => match cmd.args {
                    Args::Xexch50 { size } => Pending::Xexch50 { size },
                    _ => Pending::Other,
                },
                "AUTH" | "X-EXPS" => Pending::Auth,
                verb if TLS_VERBS.contains(&verb) => Pending::StartTls,
                _ => Pending::Other,
            },
        };
        let relay = match &cmd.path {
            // The firewall replaced `|` in addresses by a space (108002).
            Some(p) if self.policy.mode == Mode::Compat && p.raw.contains(&b'|') => {
                let rewritten = command::write_without_pipes(cmd, p, &mut out.to_server);
                out.audit.push(AuditEvent {
                    peers: self.peers,
                    kind: AuditKind::Replaced {
                        data: audit::excerpt(rewritten),
                    },
                });
                false
            }
            _ => true,
        };
        self.push(pending, out);
        relay
    }

    // ---- Server bytes ----

    fn feed_server(&mut self, data: &[u8], out: &mut Output) {
        // Replies that `plain_reply` takes are relayed as one run, copied
        // when something else is written or the input ends: `data[run..pos]`.
        let (mut run, mut pos) = (0, 0);
        while let Some(input) = data.get(pos..).filter(|i| !i.is_empty())
            && !self.is_closed()
        {
            if self.opaque {
                out.to_client
                    .extend_from_slice(data.get(run..).unwrap_or_default());
                return;
            }
            let Some(p) = bytes::find_lf(input) else {
                out.to_client
                    .extend_from_slice(data.get(run..pos).unwrap_or_default());
                if self.sbuf.len().saturating_add(input.len()) > MAX_LINE {
                    self.reply_too_long(out);
                } else {
                    extend_bounded(&mut self.sbuf, input, MAX_LINE);
                }
                return;
            };
            let part = input.get(..=p).unwrap_or(input);
            let plain = self.sbuf.is_empty() && self.plain_reply(part);
            let done = pos;
            pos += part.len();
            if plain {
                if self.cbuf.is_empty() {
                    // While the replies are plain, nothing the loop above
                    // tests changes (no close, no held bytes, no partial
                    // line): the next ones are taken here, up to one that
                    // is not (an engine's reply at the head is not).
                    while let Some(line) = data
                        .get(pos..)
                        .and_then(|rest| rest.get(..=bytes::find_lf(rest)?))
                        && self.plain_reply(line)
                    {
                        pos += line.len();
                    }
                    if !self.pipeline.local_at_head() {
                        continue;
                    }
                }
                // The rest of `on_reply_end`: the engine's replies now at
                // the head, then the client bytes held for this reply.
                out.to_client
                    .extend_from_slice(data.get(run..pos).unwrap_or_default());
                run = pos;
                self.flush_local(out);
                self.release_held(out);
                continue;
            }
            out.to_client
                .extend_from_slice(data.get(run..done).unwrap_or_default());
            run = pos;
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
        out.to_client
            .extend_from_slice(data.get(run..pos).unwrap_or_default());
    }

    /// The usual reply, taken whole here rather than by `on_reply_line`:
    /// a reply of one line with a code, to a MAIL, to a RCPT (not 5xx: a
    /// rejected recipient counts), or to a command whose reply changes
    /// nothing (`Pending::Other`). Its only effects are the queue's pop and
    /// the count; the caller relays the line. Returns whether it was one.
    #[inline(always)]
    fn plain_reply(&mut self, line: &[u8]) -> bool {
        if self.reply_line != 0 || self.ehlo.holds() {
            return false;
        }
        // `code_of` and the `-` test of `on_reply_line`, on the line itself:
        // three digits are never part of the line ending, and neither is a
        // `-` after them. A code of 500 to 599 starts with a 5.
        let Some(&[first, b, c]) = line.first_chunk::<3>() else {
            return false;
        };
        if !(first.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit())
            || line.get(3) == Some(&b'-')
        {
            return false;
        }
        let plain = match self.pipeline.head() {
            Some(Pending::Mail | Pending::Other) => true,
            Some(Pending::Rcpt) => first != b'5',
            _ => false,
        };
        if plain {
            self.pipeline.pop_plain();
            self.packets += 1;
        }
        plain
    }

    /// The server broke its reply framing: nothing it says can be trusted
    /// any more, so the session ends at once.
    fn reply_too_long(&mut self, out: &mut Output) {
        out.audit
            .push(close::anomaly(self.peers, "server reply line too long"));
        self.close_now(Close::Fin, Tell::Modern(PROTOCOL_CLOSE), out);
    }

    /// One complete reply line (with its line ending). Each reply answers
    /// the oldest pending command.
    fn on_reply_line(&mut self, line: &[u8], out: &mut Output) {
        let (content, _) = split_eol(line);
        let code = code_of(content);
        // A line without a code ends the reply, so the queue cannot stall.
        let last = !(code.is_some() && content.get(3) == Some(&b'-'));
        let head = self.pipeline.head();
        if last && head.is_some_and(Pending::ends_message) {
            self.record.final_reply(content);
        }
        match head {
            Some(Pending::Greeting) if code == Some(220) && self.policy.mask_banner => {
                self.mask_banner_line(line, last, out);
            }
            Some(Pending::Ehlo) if code == Some(250) => {
                self.ehlo_line(line, content, last, out);
                if self.is_closed() {
                    return;
                }
            }
            _ => {
                self.ehlo.flush(&mut out.to_client);
                out.to_client.extend_from_slice(line);
            }
        }
        self.reply_line += 1;
        if last {
            self.reply_line = 0;
            self.packets += 1;
            self.on_reply_end(head, code, out);
        }
    }

    /// `mask-banner`: compat turns the greeting into asterisks, modern
    /// replaces it with `220 <banner-name> ESMTP`.
    fn mask_banner_line(&mut self, line: &[u8], last: bool, out: &mut Output) {
        if self.modern() {
            if last {
                replies::banner(&self.policy.banner_name, &mut out.to_client);
            }
        } else {
            reply::asterisks(line, &mut out.to_client);
        }
        if last {
            PolicyStats::bump(&self.stats.mask_banner);
        }
    }

    /// A line of a 250 EHLO reply: the first names the server, each other
    /// one an extension, which `ehlo-reply-parameter` rules may mask.
    fn ehlo_line(&mut self, line: &[u8], content: &[u8], last: bool, out: &mut Output) {
        if self.reply_line == 0 {
            self.ehlo.start(line, last, &mut out.to_client);
            return;
        }
        let keyword = ehlo_keyword(content);
        let v = self.judge(&mut out.audit).ehlo_keyword(&keyword);
        if self.conclude(&v, out) {
            return;
        }
        self.ehlo
            .extension(line, &keyword, last, v.mask, &mut out.to_client);
    }

    /// A complete reply: the command it answers takes effect.
    fn on_reply_end(&mut self, head: Option<Pending>, code: Option<u16>, out: &mut Output) {
        if head.is_some() {
            self.pipeline.pop();
        }
        let code = code.unwrap_or(0);
        let positive = (200..400).contains(&code);
        match head {
            Some(Pending::Ehlo) if positive => {
                self.ext = self.ehlo.extensions();
                self.tx = Transaction::default();
            }
            Some(Pending::Helo) if positive => {
                self.ext = Extensions::default();
                self.tx = Transaction::default();
            }
            Some(Pending::Rcpt) if (500..600).contains(&code) => self.invalid_recipient(out),
            Some(Pending::Data) if code == 354 => {
                self.start_message();
                self.mode = ClientMode::Data(DotScanner::new());
            }
            Some(Pending::Xexch50 { size }) if code == 354 && size > 0 => {
                self.mode = ClientMode::Raw {
                    remaining: size,
                    kind: RawKind::Xexch50,
                };
                // The server answers the blob too (250 or 500): the next
                // command waits for that reply, not for this one.
                self.push(Pending::Xexch50Blob, out);
            }
            Some(Pending::Quit) if positive => self.quit_answered = true,
            Some(Pending::Auth) if code == 334 => self.mode = ClientMode::AuthResponse,
            Some(Pending::StartTls) if code == 220 => {
                // Bytes the client sent before this reply are plaintext
                // injected ahead of the handshake (RFC 3207 section 4.2,
                // CVE-2011-0411): discarded, as the server would.
                self.cbuf = Vec::new();
                self.opaque = true;
                PolicyStats::bump(&self.stats.allow_tls);
                // `allow-tls = "log"` (the firewall's `allow-tls action log`).
                if self.policy.allow_tls == Some(true) {
                    out.audit.push(AuditEvent {
                        peers: self.peers,
                        kind: AuditKind::TlsStarted,
                    });
                }
            }
            _ => {}
        }
        if head.is_some_and(Pending::ends_message) && self.ending.message_answered(&self.stats, out)
        {
            self.release();
        }
        if self.is_closed() {
            return;
        }
        self.flush_local(out);
        self.release_held(out);
    }

    /// The server rejected a RCPT: `invalid-recipients count gt N`.
    fn invalid_recipient(&mut self, out: &mut Output) {
        self.invalid_rcpts = self.invalid_rcpts.saturating_add(1);
        let n = self.invalid_rcpts;
        let v = self.judge(&mut out.audit).invalid_recipients(n);
        self.conclude(&v, out);
    }

    // ---- Message content ----

    /// A message starts (DATA accepted with 354, or the first BDAT).
    fn start_message(&mut self) {
        if self.tx.in_message {
            return;
        }
        self.tx.in_message = true;
        let quiet = self.quiet;
        self.message
            .get_or_insert_with(|| MessageScan::new(quiet))
            .restart();
        self.rules.new_message();
    }

    /// DATA content up to and including the final `.` line.
    fn step_data(&mut self, input: &[u8], out: &mut Output) -> usize {
        let ClientMode::Data(mut dots) = self.mode else {
            return 0;
        };
        let mut scan = self
            .message
            .take()
            .unwrap_or_else(|| MessageScan::new(self.quiet));
        // Inspected before relayed: a close keeps this read from the server.
        let (used, found) = dots.scan(input, |c| self.inspect_content(&mut scan, c, out));
        self.mode = ClientMode::Data(dots);
        match found {
            DotEnd::End if !self.stopped() => self.end_message(&mut scan, out),
            DotEnd::Ambiguous => {
                self.refuse_and_close("bare CR or LF next to a final dot", BARE_LINE_END, out);
            }
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
            self.push(Pending::DataEnd, out);
        }
        used
    }

    /// A BDAT chunk or an XEXCH50 blob: exactly the announced bytes.
    fn step_raw(&mut self, input: &[u8], out: &mut Output) -> usize {
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
                let mut scan = self
                    .message
                    .take()
                    .unwrap_or_else(|| MessageScan::new(self.quiet));
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
    /// slice, so the event buffer stays small whatever the read size. Runs
    /// of lines that give no event are passed in bulk; a slice ends at a
    /// line end where it can, so that the next run starts right after.
    fn inspect_content(&mut self, scan: &mut MessageScan, content: &[u8], out: &mut Output) {
        scan.grow(content.len());
        let mut rest = content;
        while !rest.is_empty() {
            if self.stopped() {
                return;
            }
            rest = rest.get(scan.skip_quiet(rest)..).unwrap_or_default();
            let head = rest.get(..MIME_SLICE).unwrap_or(rest);
            let n = memchr(b'\n', head).map_or(head.len(), |lf| lf + 1);
            let (slice, tail) = rest.split_at(n);
            scan.feed(slice);
            self.inspect_events(scan, out);
            rest = tail;
        }
    }

    /// The whole message has been seen (and not yet completed at the server).
    fn end_message(&mut self, scan: &mut MessageScan, out: &mut Output) {
        scan.finish();
        self.record.message_end(scan.size());
        self.inspect_events(scan, out);
        if let Some(declared) = self.tx.declared_size
            && scan.size() > declared
        {
            out.audit.push(AuditEvent {
                peers: self.peers,
                kind: AuditKind::SizeViolation {
                    declared,
                    actual: scan.size(),
                },
            });
        }
        // The transaction ends here, in the client's order: with PIPELINING
        // the next one may be under way before the server's reply comes.
        self.tx = Transaction::default();
        self.packets += 1;
    }

    /// The header, body and MIME rules on the scanner's events so far.
    fn inspect_events(&mut self, scan: &mut MessageScan, out: &mut Output) {
        let v = scan.judge(self.judge(&mut out.audit));
        self.conclude(&v, out);
    }

    // ---- Verdicts and closing ----

    /// The policy's rules, ready to evaluate one item.
    fn judge<'a>(&'a mut self, audit: &'a mut Vec<AuditEvent>) -> Judge<'a> {
        Judge {
            policy: &self.policy,
            stats: &self.stats,
            peers: &self.peers,
            now: self.now,
            state: &mut self.rules,
            audit,
        }
    }

    /// Closes the session if the verdict says so; returns whether it did.
    fn conclude(&mut self, v: &Verdict, out: &mut Output) -> bool {
        match v.close {
            Some(how) => {
                self.close(how, Tell::Modern(POLICY_CLOSE), out);
                true
            }
            None => false,
        }
    }

    /// A protocol anomaly the session cannot continue after: audited
    /// (108004) and closed.
    #[cold]
    fn anomaly(&mut self, what: &'static str, out: &mut Output) {
        out.audit.push(close::anomaly(self.peers, what));
        self.close(Close::Fin, Tell::Modern(PROTOCOL_CLOSE), out);
    }

    /// Ends the session once the server has answered every message it
    /// already received in full (see `close`).
    fn close(&mut self, how: Close, reply: Tell, out: &mut Output) {
        let owed = self.owed_message_replies();
        if self.ending.close(how, reply, owed, &self.stats, out) {
            self.release();
        }
    }

    /// Ends the session now.
    fn close_now(&mut self, how: Close, reply: Tell, out: &mut Output) {
        if self.ending.close_now(how, reply, &self.stats, out) {
            self.release();
        }
    }

    /// After the session stopped or closed: a stopped session holds no
    /// client bytes, a closed one no bytes at all.
    fn release(&mut self) {
        if self.ending.stopped() {
            self.cbuf = Vec::new();
        }
        if self.ending.is_closed() {
            self.sbuf = Vec::new();
        }
    }

    /// Replies the server owes to messages it received in full. A BDAT LAST
    /// whose chunk is still arriving is not complete at the server: its
    /// reply is not waited for.
    fn owed_message_replies(&self) -> usize {
        let in_progress = matches!(
            self.mode,
            ClientMode::Raw {
                kind: RawKind::Bdat { last: true, .. },
                ..
            }
        );
        self.pipeline
            .message_ends()
            .saturating_sub(usize::from(in_progress))
    }

    /// Closed, or closing: no more client bytes go to the server.
    fn stopped(&self) -> bool {
        self.ending.stopped()
    }

    // ---- Helpers ----

    /// Queues the reply a command is owed; a client that never reads its
    /// replies ends the session. (Inlined: one per command.)
    #[inline]
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

    /// A call starts.
    fn start(&mut self, now: Instant, out: &mut Output) {
        self.now = Some(now);
        out.clear();
    }

    /// A call ends.
    fn finish(&mut self, out: &mut Output) {
        out.opaque = self.opaque;
        if self.packets > 0 {
            self.stats
                .packet
                .fetch_add(std::mem::take(&mut self.packets), Ordering::Relaxed);
        }
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
