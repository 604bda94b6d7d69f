//! A client command line: the policy decides, then the command is forwarded
//! (and its reply awaited) or refused. Refusing means `X`s of the same
//! length to the server in compat mode (the server answers 500), and the
//! engine's own `500 5.5.1` in modern mode.

use std::sync::Arc;

use super::pipeline::Pending;
use super::rules::{
    CHUNK_AFTER_REFUSAL, LINE_TOO_LONG, RATE_LIMITED, TOO_MANY_RCPTS, UNRECOGNIZED, Value, Verdict,
};
use super::{ClientMode, Close, Output, RawKind, Session, Transaction, split_eol};
use crate::audit::{self, AuditEvent, AuditKind};
use crate::policy::criteria::exceeds;
use crate::policy::{Criterion, Mode, TLS_VERBS};
use crate::stats::PolicyStats;

/// Characters `special-character` looks for in addresses.
const SPECIAL_CHARACTERS: &[u8] = b"|`\0";

/// The verb of a command line, upper case (empty for an empty line).
fn verb_of(content: &[u8]) -> String {
    let end = memchr::memchr(b' ', content).unwrap_or(content.len());
    String::from_utf8_lossy(content.get(..end).unwrap_or_default()).to_ascii_uppercase()
}

/// The path argument of MAIL FROM / RCPT TO.
#[derive(Debug, PartialEq, Eq)]
struct PathArg<'a> {
    /// Between `<` and `>` (or up to a space without brackets).
    address: &'a [u8],
    /// Offset of `address` in the line.
    start: usize,
    /// ESMTP parameters after the path.
    params: &'a [u8],
}

/// Parses `VERB KEYWORD:path params` (KEYWORD is `FROM:` or `TO:`).
fn path_arg<'a>(content: &'a [u8], keyword: &[u8]) -> Option<PathArg<'a>> {
    let sp = memchr::memchr(b' ', content)?;
    let mut i = sp + 1;
    let kw = content.get(i..i + keyword.len())?;
    if !kw.eq_ignore_ascii_case(keyword) {
        return None;
    }
    i += keyword.len();
    while content.get(i) == Some(&b' ') {
        i += 1;
    }
    let rest = content.get(i..)?;
    if rest.first() == Some(&b'<') {
        // `>` inside a quoted local part does not close the path.
        let mut quoted = false;
        let mut escaped = false;
        for (j, &b) in rest.iter().enumerate().skip(1) {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => quoted = !quoted,
                b'>' if !quoted => {
                    return Some(PathArg {
                        address: rest.get(1..j)?,
                        start: i + 1,
                        params: rest.get(j + 1..)?,
                    });
                }
                _ => {}
            }
        }
        // No closing `>`: the rest is the address.
        Some(PathArg {
            address: rest.get(1..)?,
            start: i + 1,
            params: &[],
        })
    } else {
        let end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
        Some(PathArg {
            address: rest.get(..end)?,
            start: i,
            params: rest.get(end..)?,
        })
    }
}

/// A decimal number from the wire, without overflow.
fn number(word: &[u8]) -> Option<u64> {
    if word.is_empty() || word.len() > 20 {
        return None;
    }
    word.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// MAIL FROM's `SIZE=n` (RFC 1870).
fn size_param(params: &[u8]) -> Option<u64> {
    params.split(|&b| b == b' ').find_map(|p| {
        let (k, v) = p.split_at(p.iter().position(|&b| b == b'=')?);
        if k.eq_ignore_ascii_case(b"SIZE") {
            number(v.get(1..)?)
        } else {
            None
        }
    })
}

/// `BDAT size [LAST]` (RFC 3030); `None` if malformed.
fn bdat_args(content: &[u8]) -> Option<(u64, bool)> {
    let mut words = content
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .skip(1);
    let size = number(words.next()?)?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return None,
    };
    words.next().is_none().then_some((size, last))
}

/// `XEXCH50 size mode` (Exchange): the size of the blob after the 354.
fn xexch50_size(content: &[u8]) -> Option<u64> {
    let mut words = content
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .skip(1);
    number(words.next()?)
}

/// The sendmail "pipe to program" signature: `<|cmd>` or `<"|cmd">`.
fn is_program_address(address: &[u8]) -> bool {
    let a = address.strip_prefix(b"\"").unwrap_or(address);
    a.first() == Some(&b'|')
}

/// The domain of an address, lower case (`None` without `@`).
fn domain_of(address: &[u8]) -> Option<String> {
    let at = address.iter().rposition(|&b| b == b'@')?;
    let d = address.get(at + 1..)?;
    Some(String::from_utf8_lossy(d).to_ascii_lowercase())
}

/// What happens to a command after the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Forward,
    /// Compat: `X`s to the server; modern: this reply from the engine.
    Refuse(&'static [u8]),
    /// The engine's reply in either mode (modern-only settings).
    Reject(&'static [u8]),
}

impl Session {
    /// One complete command line (with its line ending).
    pub(super) fn on_command(&mut self, line: &[u8], out: &mut Output) {
        PolicyStats::bump(&self.stats.packet);
        let (content, eol) = split_eol(line);
        let verb = verb_of(content);
        let path = match verb.as_str() {
            "MAIL" => path_arg(content, b"FROM:"),
            "RCPT" => path_arg(content, b"TO:"),
            _ => None,
        };
        if verb == "RCPT" {
            self.tx.rcpt_count = self.tx.rcpt_count.saturating_add(1);
        }

        let mut v = Verdict::default();
        self.command_rules(content, &verb, path.as_ref(), &mut v, out);
        if self.conclude(&v, out) {
            return;
        }
        if let Some(p) = &path {
            if is_program_address(p.address) {
                out.audit.push(AuditEvent {
                    peers: self.peers,
                    kind: AuditKind::MaliciousAddress {
                        address: audit::excerpt(p.address),
                    },
                });
                self.close(Close::Fin, super::rules::POLICY_CLOSE, out);
                return;
            }
            self.address_params(&verb, p.address, &mut v, out);
            if self.conclude(&v, out) {
                return;
            }
        }

        let outcome = if !self.verb_allowed(&verb) || v.mask {
            Outcome::Refuse(UNRECOGNIZED)
        } else if v.rate_limited {
            Outcome::Refuse(RATE_LIMITED)
        } else if verb == "BDAT" && self.tx.bdat_refused {
            Outcome::Refuse(CHUNK_AFTER_REFUSAL)
        } else if v.reject_rcpt {
            Outcome::Reject(TOO_MANY_RCPTS)
        } else {
            Outcome::Forward
        };
        if verb == "BDAT" && matches!(outcome, Outcome::Refuse(_)) {
            self.tx.bdat_refused = true;
        }
        match outcome {
            Outcome::Forward => self.forward(line, content, &verb, path.as_ref(), out),
            Outcome::Reject(reply) => self.push(Pending::Local(reply), out),
            Outcome::Refuse(reply) if self.modern() => {
                self.push(Pending::Local(reply), out);
                // The payload of a refused BDAT follows anyway: skip it.
                if verb == "BDAT"
                    && let Some((size, last)) = bdat_args(content)
                    && size > 0
                {
                    self.mode = ClientMode::Raw {
                        remaining: size,
                        kind: RawKind::Bdat { last, relay: false },
                    };
                }
            }
            Outcome::Refuse(_) => {
                out.to_server
                    .resize(out.to_server.len() + content.len(), b'X');
                out.to_server.extend_from_slice(eol);
                self.push(Pending::Other, out);
            }
        }
        self.flush_local(out);
    }

    /// A command line longer than `MAX_LINE`: only its length was kept.
    pub(super) fn on_overlong_command(&mut self, len: u64, out: &mut Output) {
        PolicyStats::bump(&self.stats.packet);
        let policy = Arc::clone(&self.policy);
        let mut v = Verdict::default();
        for (i, rule) in policy.rules.iter().enumerate() {
            if let Criterion::CmdLineLength(limit) = rule.criterion
                && rule.matches(exceeds(len, limit))
            {
                self.hit(i, Value::Num(len), &mut v, out);
            }
        }
        if !self.conclude(&v, out) {
            self.push(Pending::Local(LINE_TOO_LONG), out);
            self.flush_local(out);
        }
    }

    /// The `cmd …` and `sender-address …` rules, in policy order.
    fn command_rules(
        &mut self,
        content: &[u8],
        verb: &str,
        path: Option<&PathArg<'_>>,
        v: &mut Verdict,
        out: &mut Output,
    ) {
        let policy = Arc::clone(&self.policy);
        let len = content.len() as u64;
        let sender = path.filter(|_| verb == "MAIL").map(|p| p.address);
        for (i, rule) in policy.rules.iter().enumerate() {
            if v.close.is_some() {
                break;
            }
            let (hit, value) = match (&rule.criterion, sender) {
                (Criterion::CmdLineLength(l), _) => (exceeds(len, *l), Value::Num(len)),
                (Criterion::CmdVerb(verbs), _) => (
                    verbs.iter().any(|x| x == verb),
                    Value::Bytes(verb.as_bytes()),
                ),
                (Criterion::CmdRcptCount(l), _) if verb == "RCPT" => {
                    let n = self.tx.rcpt_count;
                    (exceeds(n, *l), Value::Num(n))
                }
                (Criterion::SenderAddressLength(l), Some(a)) => {
                    let n = a.len() as u64;
                    (exceeds(n, *l), Value::Num(n))
                }
                (Criterion::SenderAddressRegex(r), Some(a)) => {
                    (r.is_match(&String::from_utf8_lossy(a)), Value::Bytes(a))
                }
                _ => continue,
            };
            if rule.matches(hit) {
                self.hit(i, value, v, out);
            }
        }
    }

    /// The `special-character` and `mail-relay` parameters.
    fn address_params(&mut self, verb: &str, address: &[u8], v: &mut Verdict, out: &mut Output) {
        let policy = Arc::clone(&self.policy);
        if let Some(actions) = policy.special_character
            && address.iter().any(|b| SPECIAL_CHARACTERS.contains(b))
        {
            let value = Value::Bytes(address);
            self.param_hit(
                actions,
                |s| &s.special_character,
                &"special-character",
                value,
                v,
                out,
            );
        }
        if let Some(relay) = &policy.mail_relay
            && verb == "RCPT"
            && domain_of(address).is_some_and(|d| d != relay.domain)
        {
            let text = format!("mail-relay {}", relay.domain);
            self.param_hit(
                relay.actions,
                |s| &s.mail_relay,
                &text,
                Value::Bytes(address),
                v,
                out,
            );
        }
    }

    /// Whether the verb may reach the server in the session's state.
    fn verb_allowed(&self, verb: &str) -> bool {
        if !self.policy.allows_verb(verb) {
            return false;
        }
        match verb {
            // Only when the client was shown CHUNKING.
            "BDAT" => self.ext.chunking,
            _ => true,
        }
    }

    /// Sends an accepted command on and records the reply it is owed.
    fn forward(
        &mut self,
        line: &[u8],
        content: &[u8],
        verb: &str,
        path: Option<&PathArg<'_>>,
        out: &mut Output,
    ) {
        let pending = match verb {
            "EHLO" => Pending::Ehlo,
            "HELO" => Pending::Helo,
            "MAIL" => {
                self.tx.rcpt_count = 0;
                self.tx.declared_size = path.and_then(|p| size_param(p.params));
                Pending::Mail
            }
            "RCPT" => Pending::Rcpt,
            "DATA" => Pending::Data,
            "BDAT" => match bdat_args(content) {
                Some((size, last)) => {
                    self.start_message();
                    if size == 0 && last {
                        // The empty last chunk completes the message: inspect
                        // before the server gets it.
                        if let Some(mut scan) = self.message.take() {
                            self.end_message(&mut scan, out);
                            self.message = Some(scan);
                        }
                        if self.stopped() {
                            return;
                        }
                    } else if size > 0 {
                        self.mode = ClientMode::Raw {
                            remaining: size,
                            kind: RawKind::Bdat { last, relay: true },
                        };
                    }
                    Pending::Bdat { last }
                }
                // Malformed: the server rejects it and reads commands on, as we do.
                None => Pending::Other,
            },
            "XEXCH50" => match xexch50_size(content) {
                Some(size) => Pending::Xexch50 { size },
                None => Pending::Other,
            },
            "AUTH" | "X-EXPS" => Pending::Auth,
            "RSET" => {
                // In the client's order: commands pipelined after RSET
                // belong to the next transaction.
                self.tx = Transaction::default();
                Pending::Other
            }
            "QUIT" => Pending::Quit,
            _ if TLS_VERBS.contains(&verb) => Pending::StartTls,
            _ => Pending::Other,
        };
        match path {
            // The original replaced `|` in addresses by a space (108002).
            Some(p) if self.policy.mode == Mode::Compat && p.address.contains(&b'|') => {
                let start = out.to_server.len();
                out.to_server.extend_from_slice(line);
                let from = start + p.start;
                if let Some(addr) = out.to_server.get_mut(from..from + p.address.len()) {
                    addr.iter_mut()
                        .filter(|b| **b == b'|')
                        .for_each(|b| *b = b' ');
                }
                let rewritten = out
                    .to_server
                    .get(start..start + content.len())
                    .unwrap_or_default();
                out.audit.push(AuditEvent {
                    peers: self.peers,
                    kind: AuditKind::Replaced {
                        data: audit::excerpt(rewritten),
                    },
                });
            }
            _ => out.to_server.extend_from_slice(line),
        }
        self.push(pending, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_parameters() {
        let p = path_arg(b"MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME", b"FROM:").unwrap();
        assert_eq!(p.address, b"a@b.example");
        assert_eq!(p.start, 11);
        assert_eq!(size_param(p.params), Some(1000));
        let p = path_arg(b"rcpt to: <\"x>y\"@c>", b"TO:").unwrap();
        assert_eq!(p.address, b"\"x>y\"@c");
        assert_eq!(path_arg(b"MAIL FROM:<>", b"FROM:").unwrap().address, b"");
        assert_eq!(path_arg(b"MAIL TO:<a>", b"FROM:"), None);
        assert_eq!(path_arg(b"MAIL", b"FROM:"), None);
        assert_eq!(size_param(b" SIZE=99999999999999999999999"), None);
    }

    #[test]
    fn parses_bdat_and_numbers() {
        assert_eq!(bdat_args(b"BDAT 100 LAST"), Some((100, true)));
        assert_eq!(bdat_args(b"BDAT 0"), Some((0, false)));
        assert_eq!(bdat_args(b"BDAT x"), None);
        assert_eq!(bdat_args(b"BDAT 1 LAST more"), None);
        assert_eq!(number(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(number(b"18446744073709551616"), None);
        assert_eq!(xexch50_size(b"XEXCH50 512 2"), Some(512));
    }

    #[test]
    fn recognizes_program_addresses_and_domains() {
        assert!(is_program_address(b"|/bin/sh"));
        assert!(is_program_address(b"\"|sed\"@x"));
        assert!(!is_program_address(b"a|b@x"));
        assert_eq!(domain_of(b"u@Example.COM").as_deref(), Some("example.com"));
        assert_eq!(domain_of(b"postmaster"), None);
    }
}
