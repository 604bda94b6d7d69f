//! What a match does: counters, audit records, and the effect on the
//! session (close, mask, rate-limit, 452), for rules and parameters alike.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ClientMode, Close, Closing, Output, RawKind, Session};
use crate::audit::{self, AuditEvent, AuditKind, Classification, Source};
use crate::policy::{Actions, Criterion, Primary};
use crate::stats::PolicyStats;

/// Replies the engine sends itself. Never a success: the engine only
/// refuses, it never answers for the server.
pub const UNRECOGNIZED: &[u8] = b"500 5.5.1 Command unrecognized\r\n";
pub const LINE_TOO_LONG: &[u8] = b"500 5.5.2 Line too long\r\n";
pub const TOO_MANY_RCPTS: &[u8] = b"452 4.5.3 Too many recipients\r\n";
pub const RATE_LIMITED: &[u8] = b"450 4.7.0 Rate limit exceeded, try again later\r\n";
pub const CHUNK_AFTER_REFUSAL: &[u8] =
    b"503 5.5.1 Transaction failed: an earlier BDAT chunk was refused\r\n";
pub const POLICY_CLOSE: &[u8] = b"421 4.7.0 Connection closed by security policy\r\n";
pub const PROTOCOL_CLOSE: &[u8] = b"421 4.5.0 Protocol error, closing connection\r\n";

/// The combined effect of the rules that matched one item.
#[derive(Debug, Default)]
pub struct Verdict {
    pub close: Option<Close>,
    pub mask: bool,
    pub rate_limited: bool,
    pub reject_rcpt: bool,
}

/// The value a criterion was evaluated on, formatted only when logged.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Num(u64),
    Bytes(&'a [u8]),
}

impl Value<'_> {
    fn excerpt(self) -> String {
        match self {
            Self::Num(n) => n.to_string(),
            Self::Bytes(b) => audit::excerpt(b),
        }
    }
}

/// Matching commands of a `rate-limit N` rule in the current second.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateWindow {
    start: Option<Instant>,
    count: u32,
}

impl RateWindow {
    /// Counts one command at `now`; whether it is within `limit` per second.
    fn allow(&mut self, now: Instant, limit: u32) -> bool {
        let fresh = self
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1));
        if fresh {
            *self = Self {
                start: Some(now),
                count: 0,
            };
        }
        self.count = self.count.saturating_add(1);
        self.count <= limit
    }
}

/// What a matched action does here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// `log` alone, or `rate-limit` within its rate.
    Nothing,
    Close(Close),
    Mask,
    RateLimited,
    RejectRcpt,
}

struct Negated<'a>(bool, &'a Criterion);

impl fmt::Display for Negated<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 {
            f.write_str("not ")?;
        }
        self.1.fmt(f)
    }
}

impl Session {
    /// Rule `index` (0-based) matched on `value`.
    pub(super) fn hit(
        &mut self,
        index: usize,
        value: Value<'_>,
        v: &mut Verdict,
        out: &mut Output,
    ) {
        let policy = Arc::clone(&self.policy);
        let Some(rule) = policy.rules.get(index) else {
            return;
        };
        self.stats.rule_hit(index);
        let effect = match rule.actions.primary {
            None => Effect::Nothing,
            // Modern mode may refuse the extra recipients instead (never silently).
            Some(Primary::DropConnection | Primary::Reset)
                if policy.reject_excess_recipients
                    && !rule.negate
                    && matches!(rule.criterion, Criterion::CmdRcptCount(_)) =>
            {
                Effect::RejectRcpt
            }
            Some(Primary::DropConnection) => Effect::Close(Close::Fin),
            Some(Primary::Reset) => Effect::Close(Close::Reset),
            Some(Primary::Mask) => Effect::Mask,
            Some(Primary::RateLimit(limit)) => {
                if self.rate.len() <= index {
                    self.rate.resize(index + 1, RateWindow::default());
                }
                let now = self.now.unwrap_or_else(Instant::now);
                let within = self.rate.get_mut(index).is_none_or(|w| w.allow(now, limit));
                if within {
                    Effect::Nothing
                } else {
                    Effect::RateLimited
                }
            }
        };
        let criterion = Negated(rule.negate, &rule.criterion);
        self.apply(
            effect,
            &rule.actions,
            Source::Class(index + 1),
            &criterion,
            value,
            v,
            out,
        );
    }

    /// A parameter (`mail-relay`, `special-character`) matched.
    pub(super) fn param_hit(
        &mut self,
        actions: Actions,
        counter: fn(&PolicyStats) -> &std::sync::atomic::AtomicU64,
        criterion: &dyn fmt::Display,
        value: Value<'_>,
        v: &mut Verdict,
        out: &mut Output,
    ) {
        PolicyStats::bump(counter(&self.stats));
        let effect = match actions.primary {
            Some(Primary::DropConnection) => Effect::Close(Close::Fin),
            _ => Effect::Nothing,
        };
        self.apply(
            effect,
            &actions,
            Source::Parameter,
            criterion,
            value,
            v,
            out,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        effect: Effect,
        actions: &Actions,
        source: Source,
        criterion: &dyn fmt::Display,
        value: Value<'_>,
        v: &mut Verdict,
        out: &mut Output,
    ) {
        let verdict = match effect {
            Effect::Nothing if actions.primary.is_some() => None,
            Effect::Nothing => Some(audit::Verdict::Received),
            Effect::Close(Close::Fin) => Some(audit::Verdict::Dropped),
            Effect::Close(Close::Reset) => Some(audit::Verdict::Reset),
            Effect::Mask => Some(audit::Verdict::Masked),
            Effect::RateLimited => Some(audit::Verdict::RateLimited),
            Effect::RejectRcpt => Some(audit::Verdict::RejectedRecipient),
        };
        match effect {
            Effect::Close(how) => {
                v.close.get_or_insert(how);
            }
            Effect::Mask => v.mask = true,
            Effect::RateLimited => v.rate_limited = true,
            Effect::RejectRcpt => v.reject_rcpt = true,
            Effect::Nothing => {}
        }
        if let (true, Some(verdict)) = (actions.log, verdict) {
            out.audit.push(AuditEvent {
                peers: self.peers,
                kind: AuditKind::Classification(Classification {
                    verdict,
                    source,
                    criterion: criterion.to_string(),
                    action: actions.to_string(),
                    value: value.excerpt(),
                }),
            });
        }
    }

    /// Closes the session if the verdict says so; returns whether it did.
    pub(super) fn conclude(&mut self, v: &Verdict, out: &mut Output) -> bool {
        match v.close {
            Some(how) => {
                self.close(how, POLICY_CLOSE, out);
                true
            }
            None => false,
        }
    }

    /// Ends the session, once the server has answered every message it
    /// already received in full: closing before those replies reach the
    /// client would make it send the message again (a duplicate). Until
    /// then the client's bytes are discarded and replies relayed.
    pub(super) fn close(&mut self, how: Close, reply: &'static [u8], out: &mut Output) {
        if self.stopped() {
            return;
        }
        let owed = self.owed_message_replies();
        if owed > 0 {
            self.closing = Some(Closing {
                how,
                reply,
                owed,
                eof: false,
            });
            self.cbuf = Vec::new();
            return;
        }
        self.close_now(how, reply, out);
    }

    /// Replies the server owes to messages it received in full. A BDAT LAST
    /// whose chunk is still arriving is not complete at the server: its
    /// reply is not waited for.
    pub(super) fn owed_message_replies(&self) -> usize {
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

    /// The server answered a complete message: close if it was the last
    /// one a pending close waited for.
    pub(super) fn message_answered(&mut self, out: &mut Output) {
        let Some(c) = &mut self.closing else {
            return;
        };
        c.owed = c.owed.saturating_sub(1);
        if c.owed == 0 {
            let (how, reply, eof) = (c.how, c.reply, c.eof);
            if eof {
                self.closing = None;
                self.closed = true;
                out.close = Some(Close::Fin);
                self.cbuf = Vec::new();
                self.sbuf = Vec::new();
            } else {
                self.close_now(how, reply, out);
            }
        }
    }

    /// Ends the session now. Modern mode tells the client why with a `421`
    /// (the original closed silently).
    pub(super) fn close_now(&mut self, how: Close, reply: &'static [u8], out: &mut Output) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.closing = None;
        out.close = Some(how);
        match how {
            Close::Fin => PolicyStats::bump(&self.stats.drop),
            Close::Reset => PolicyStats::bump(&self.stats.reset_drop),
        }
        if how == Close::Fin && self.modern() {
            out.to_client.extend_from_slice(reply);
        }
        self.cbuf = Vec::new();
        self.sbuf = Vec::new();
    }

    /// A protocol anomaly the session cannot continue after: audited
    /// (108004) and closed.
    pub(super) fn anomaly(&mut self, what: &'static str, out: &mut Output) {
        self.audit_anomaly(what, out);
        self.close(Close::Fin, PROTOCOL_CLOSE, out);
    }

    /// The 108004 record of an anomaly.
    pub(super) fn audit_anomaly(&self, what: &'static str, out: &mut Output) {
        out.audit.push(AuditEvent {
            peers: self.peers,
            kind: AuditKind::Classification(Classification {
                verdict: audit::Verdict::Dropped,
                source: Source::Anomaly,
                criterion: what.to_string(),
                action: "drop-connection log".to_string(),
                value: String::new(),
            }),
        });
    }
}
