//! Server reply lines: each reply answers the oldest pending command. The
//! greeting may be masked (`mask-banner`), EHLO keywords masked per policy;
//! every other reply, including the one to the end of a message, is relayed
//! exactly as the server sent it.

use std::sync::Arc;

use super::pipeline::Pending;
use super::rules::{Value, Verdict};
use super::{ClientMode, DotScanner, Extensions, Output, RawKind, Session, Transaction, split_eol};
use crate::audit::{AuditEvent, AuditKind};
use crate::policy::Criterion;
use crate::policy::criteria::exceeds;
use crate::stats::PolicyStats;

/// The reply code of a line, if it starts with three digits.
fn code_of(content: &[u8]) -> Option<u16> {
    match content.get(..3)? {
        [a, b, c] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    }
}

/// The keyword of an EHLO reply line (`250-SIZE 1000` → `SIZE`), upper case.
fn ehlo_keyword(content: &[u8]) -> String {
    let text = content.get(4..).unwrap_or_default();
    let end = text
        .iter()
        .position(|&b| b == b' ' || b == b'=')
        .unwrap_or(text.len());
    String::from_utf8_lossy(text.get(..end).unwrap_or_default()).to_ascii_uppercase()
}

impl Session {
    /// One complete reply line (with its line ending).
    pub(super) fn on_reply_line(&mut self, line: &[u8], out: &mut Output) {
        let (content, _) = split_eol(line);
        let code = code_of(content);
        // A line without a code ends the reply, so the queue cannot stall.
        let last = !(code.is_some() && content.get(3) == Some(&b'-'));
        let head = self.pipeline.head();
        match head {
            Some(Pending::Greeting) if code == Some(220) && self.policy.mask_banner => {
                self.mask_banner_line(line, last, out);
            }
            Some(Pending::Ehlo) if code == Some(250) => {
                self.ehlo_line(line, content, last, out);
                if self.closed {
                    return;
                }
            }
            _ => {
                // A held EHLO line goes first, whatever ends its reply.
                if let Some(held) = self.reply.ehlo_held.take() {
                    out.to_client.extend_from_slice(&held);
                }
                out.to_client.extend_from_slice(line);
            }
        }
        self.reply.line += 1;
        if last {
            self.reply.line = 0;
            PolicyStats::bump(&self.stats.packet);
            self.on_reply_end(head, code, out);
        }
    }

    /// Compat: every character but `2`, `0`, CR and LF becomes `*`.
    /// Modern: the greeting becomes `220 <banner-name> ESMTP`.
    fn mask_banner_line(&mut self, line: &[u8], last: bool, out: &mut Output) {
        if self.modern() {
            if last {
                out.to_client.extend_from_slice(b"220 ");
                out.to_client
                    .extend_from_slice(self.policy.banner_name.as_bytes());
                out.to_client.extend_from_slice(b" ESMTP\r\n");
            }
        } else {
            out.to_client.extend(line.iter().map(|&b| match b {
                b'2' | b'0' | b'\r' | b'\n' => b,
                _ => b'*',
            }));
        }
        if last {
            PolicyStats::bump(&self.stats.mask_banner);
        }
    }

    /// A line of a 250 EHLO reply: the first names the server, each other
    /// one an extension, which `ehlo-reply-parameter` rules may mask.
    fn ehlo_line(&mut self, line: &[u8], content: &[u8], last: bool, out: &mut Output) {
        let modern = self.modern();
        if self.reply.line == 0 {
            self.reply.masked = 0;
            self.reply.ext = Extensions::default();
            if modern && !last {
                self.reply.ehlo_held = Some(line.to_vec());
            } else {
                out.to_client.extend_from_slice(line);
            }
            return;
        }
        let keyword = ehlo_keyword(content);
        let policy = Arc::clone(&self.policy);
        let mut v = Verdict::default();
        for (i, rule) in policy.rules.iter().enumerate() {
            if let Criterion::EhloReplyParameter(params) = &rule.criterion
                && v.close.is_none()
                && rule.matches(policy.keyword_in(&keyword, params))
            {
                self.hit(i, Value::Bytes(keyword.as_bytes()), &mut v, out);
            }
        }
        if self.conclude(&v, out) {
            return;
        }
        if !v.mask {
            match keyword.as_str() {
                "PIPELINING" => self.reply.ext.pipelining = true,
                "CHUNKING" => self.reply.ext.chunking = true,
                _ => {}
            }
        }
        match (modern, v.mask) {
            // Compat: the line keeps its length; the Nth masked keyword ends
            // in the Nth letter (STARTTLS shows as `XXXXXXXA`).
            (false, true) => {
                let text_len = content.len().saturating_sub(4);
                out.to_client
                    .extend_from_slice(line.get(..4).unwrap_or_default());
                if text_len > 0 {
                    out.to_client
                        .resize(out.to_client.len() + text_len - 1, b'X');
                    out.to_client.push(b'A' + self.reply.masked % 26);
                }
                out.to_client
                    .extend_from_slice(line.get(content.len()..).unwrap_or_default());
                self.reply.masked = self.reply.masked.wrapping_add(1);
            }
            (false, false) => out.to_client.extend_from_slice(line),
            // Modern: the line is removed; if it was the last one, the line
            // before becomes the last.
            (true, true) => {
                if last && let Some(mut prev) = self.reply.ehlo_held.take() {
                    if let Some(sep) = prev.get_mut(3) {
                        *sep = b' ';
                    }
                    out.to_client.extend_from_slice(&prev);
                }
            }
            (true, false) => {
                if let Some(prev) = self.reply.ehlo_held.take() {
                    out.to_client.extend_from_slice(&prev);
                }
                if last {
                    out.to_client.extend_from_slice(line);
                } else {
                    self.reply.ehlo_held = Some(line.to_vec());
                }
            }
        }
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
                self.ext = self.reply.ext;
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
            }
            Some(Pending::Auth) if code == 334 => self.mode = ClientMode::AuthResponse,
            Some(Pending::StartTls) if code == 220 => {
                // Bytes the client sent before this reply are plaintext
                // injected ahead of the handshake (RFC 3207 section 4.2,
                // CVE-2011-0411): discarded, as the server would.
                self.cbuf = Vec::new();
                self.opaque = true;
                PolicyStats::bump(&self.stats.allow_tls);
                out.audit.push(AuditEvent {
                    peers: self.peers,
                    kind: AuditKind::TlsStarted,
                });
            }
            _ => {}
        }
        if head.is_some_and(Pending::ends_message) {
            self.message_answered(out);
        }
        if self.closed {
            return;
        }
        self.flush_local(out);
        self.release_held(out);
    }

    /// The server rejected a RCPT: `invalid-recipients count gt N`.
    fn invalid_recipient(&mut self, out: &mut Output) {
        self.invalid_rcpts = self.invalid_rcpts.saturating_add(1);
        let n = self.invalid_rcpts;
        let policy = Arc::clone(&self.policy);
        let mut v = Verdict::default();
        for (i, rule) in policy.rules.iter().enumerate() {
            if let Criterion::InvalidRecipientsCount(limit) = rule.criterion
                && v.close.is_none()
                && rule.matches(exceeds(n, limit))
            {
                self.hit(i, Value::Num(n), &mut v, out);
            }
        }
        self.conclude(&v, out);
    }
}
