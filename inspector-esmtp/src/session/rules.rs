//! Rule evaluation: which of the policy's rules and parameters match one
//! item (a command, an address, an EHLO keyword, a rejected recipient, an
//! event of message content), with their counters and audit records, and
//! the combined `Verdict` of what they ask for. What a verdict does to the
//! session (close, refuse, mask) is the session's to carry out.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use super::Close;
use super::command::{Command, Verb, domain_of};
use crate::audit::{self, AuditEvent, AuditKind, Classification, Peers, Source};
use crate::mime::{MimeEvent, Unreadable};
use crate::policy::criteria::exceeds;
use crate::policy::{Actions, Criterion, EsmtpPolicy, Primary};
use crate::stats::PolicyStats;

/// Characters `special-character` looks for in addresses.
const SPECIAL_CHARACTERS: &[u8] = b"|`\0";

/// The combined effect of the rules that matched one item.
#[derive(Debug, Default)]
pub struct Verdict {
    pub close: Option<Close>,
    pub mask: bool,
    pub rate_limited: bool,
    pub reject_rcpt: bool,
}

/// What a session keeps of the rules between items: their state, and
/// which commands they can act on.
#[derive(Debug)]
pub struct RuleState {
    /// Per rule, created on the first `rate-limit` hit.
    rate: Vec<RateWindow>,
    /// Rules that already matched in the current message (each fires once).
    fired: Vec<bool>,
    /// `mime-anomaly` already matched in the current message.
    anomaly_fired: bool,
    commands: CommandRules,
}

impl RuleState {
    pub fn new(policy: &EsmtpPolicy) -> Self {
        Self {
            rate: Vec::new(),
            fired: vec![false; policy.rules.len()],
            anomaly_fired: false,
            commands: CommandRules::new(policy),
        }
    }

    /// Whether some `cmd …` or `sender-address …` rule can match `cmd`
    /// (false only if none can; `Judge::command` then has nothing to do).
    #[inline]
    pub fn command_may_match(&self, cmd: &Command<'_>, rcpt_count: u64) -> bool {
        self.commands.may_match(cmd, rcpt_count)
    }

    /// A message starts: every content rule may fire again.
    pub fn new_message(&mut self) {
        self.fired.iter_mut().for_each(|f| *f = false);
        self.anomaly_fired = false;
    }
}

/// The longest body line (line ending excluded) that no rule can act on,
/// so that the MIME scanner need not report it: one no longer than every
/// `body line length gt N`. `None` if a negated one acts on short lines.
pub fn quiet_body_line(policy: &EsmtpPolicy) -> Option<usize> {
    let mut quiet = usize::MAX;
    for rule in &policy.rules {
        if let Criterion::BodyLineLength(limit) = rule.criterion {
            if rule.negate {
                return None;
            }
            quiet = quiet.min(usize::try_from(limit).unwrap_or(usize::MAX));
        }
    }
    Some(quiet)
}

/// Which commands the `cmd …` and `sender-address …` rules can match, by
/// what each looks at, so that a command none of them can match skips the
/// rules loop (most commands, with the usual `gt N` limits). Each field is
/// the least value some rule can match from (`gt N`: `N + 1`; a negated
/// rule or a regex: 0), `None` without such a rule.
#[derive(Debug, Default)]
struct CommandRules {
    line_length: Option<u64>,
    rcpt_count: Option<u64>,
    sender_length: Option<u64>,
    /// The verbs of the `cmd verb` rules, and whether one is negated (it
    /// matches the verbs it does not name).
    verbs: Vec<String>,
    any_verb: bool,
}

impl CommandRules {
    fn new(policy: &EsmtpPolicy) -> Self {
        // `gt limit` can match from `limit + 1` (never past u64::MAX);
        // negated, from 0.
        let from = |negate: bool, limit: u64| {
            if negate {
                Some(0)
            } else {
                limit.checked_add(1)
            }
        };
        let lowest = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            _ => a.or(b),
        };
        let mut c = Self::default();
        for rule in &policy.rules {
            let n = rule.negate;
            match &rule.criterion {
                Criterion::CmdLineLength(l) => c.line_length = lowest(c.line_length, from(n, *l)),
                Criterion::CmdRcptCount(l) => c.rcpt_count = lowest(c.rcpt_count, from(n, *l)),
                Criterion::SenderAddressLength(l) => {
                    c.sender_length = lowest(c.sender_length, from(n, *l));
                }
                Criterion::SenderAddressRegex(_) => c.sender_length = Some(0),
                Criterion::CmdVerb(_) if n => c.any_verb = true,
                Criterion::CmdVerb(verbs) => c.verbs.extend(verbs.iter().cloned()),
                _ => {}
            }
        }
        c
    }

    /// Whether some rule can match `cmd` (false only if none can).
    #[inline]
    fn may_match(&self, cmd: &Command<'_>, rcpt_count: u64) -> bool {
        let reaches = |from: Option<u64>, value: u64| from.is_some_and(|f| value >= f);
        reaches(self.line_length, cmd.content.len() as u64)
            || (cmd.kind == Verb::Rcpt && reaches(self.rcpt_count, rcpt_count))
            || cmd
                .sender()
                .is_some_and(|a| reaches(self.sender_length, a.len() as u64))
            || self.any_verb
            || self.verbs.iter().any(|v| *v == cmd.verb)
    }
}

/// Whether the policy has a parameter on addresses (`special-character`,
/// `mail-relay`): without one, `Judge::address` has nothing to do.
#[inline]
pub fn address_params(policy: &EsmtpPolicy) -> bool {
    policy.special_character.is_some() || policy.mail_relay.is_some()
}

/// Matching commands of a `rate-limit N` rule in the current second.
#[derive(Debug, Clone, Copy, Default)]
struct RateWindow {
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

/// The value a criterion was evaluated on, formatted only when logged.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
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

/// The policy's rules, ready to evaluate one item: what they need of the
/// session. Each method evaluates the criteria that apply to its kind of
/// item, in policy order, and returns the verdict.
pub struct Judge<'a> {
    pub policy: &'a EsmtpPolicy,
    pub stats: &'a PolicyStats,
    pub peers: &'a Peers,
    /// For `rate-limit`.
    pub now: Option<Instant>,
    pub state: &'a mut RuleState,
    /// Where the matches' audit records go.
    pub audit: &'a mut Vec<AuditEvent>,
}

impl Judge<'_> {
    /// The `cmd …` and `sender-address …` rules; `rcpt_count` counts the
    /// RCPTs of the transaction, this one included. `cmd line length` rules
    /// whose limit is below `checked_len` already fired while the line was
    /// arriving (`line_length`).
    /// (Inlined: most commands stop at the first test.)
    #[inline]
    pub fn command(self, cmd: &Command<'_>, rcpt_count: u64, checked_len: u64) -> Verdict {
        if self.state.commands.may_match(cmd, rcpt_count) {
            self.command_rules(cmd, rcpt_count, checked_len)
        } else {
            Verdict::default()
        }
    }

    fn command_rules(mut self, cmd: &Command<'_>, rcpt_count: u64, checked_len: u64) -> Verdict {
        let mut v = Verdict::default();
        let policy = self.policy;
        let len = cmd.content.len() as u64;
        let sender = cmd.sender();
        for (i, rule) in policy.rules.iter().enumerate() {
            if v.close.is_some() {
                break;
            }
            let (hit, value) = match (&rule.criterion, sender) {
                (Criterion::CmdLineLength(l), _) if rule.negate || *l >= checked_len => {
                    (exceeds(len, *l), Value::Num(len))
                }
                (Criterion::CmdLineLength(_), _) => continue,
                (Criterion::CmdVerb(verbs), _) => {
                    let verb = &*cmd.verb;
                    (
                        verbs.iter().any(|v| v == verb),
                        Value::Bytes(verb.as_bytes()),
                    )
                }
                (Criterion::CmdRcptCount(l), _) if cmd.kind == Verb::Rcpt => {
                    (exceeds(rcpt_count, *l), Value::Num(rcpt_count))
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
                self.hit(i, value, &mut v);
            }
        }
        v
    }

    /// The `special-character` and `mail-relay` parameters on the address
    /// of a MAIL or RCPT. They only close or log.
    /// (Inlined: without either parameter there is nothing to do.)
    #[inline]
    pub fn address(self, verb: Verb, address: &[u8]) -> Verdict {
        if !address_params(self.policy) {
            return Verdict::default();
        }
        self.address_params(verb, address)
    }

    fn address_params(mut self, verb: Verb, address: &[u8]) -> Verdict {
        let mut v = Verdict::default();
        let policy = self.policy;
        if let Some(actions) = policy.special_character
            && address.iter().any(|b| SPECIAL_CHARACTERS.contains(b))
        {
            let value = Value::Bytes(address);
            self.param_hit(
                actions,
                |s| &s.special_character,
                &"special-character",
                value,
                &mut v,
            );
        }
        if let Some(relay) = &policy.mail_relay
            && verb == Verb::Rcpt
            && domain_of(address).is_some_and(|d| d != relay.domain)
        {
            let text = format!("mail-relay {}", relay.domain);
            let value = Value::Bytes(address);
            self.param_hit(relay.actions, |s| &s.mail_relay, &text, value, &mut v);
        }
        v
    }

    /// `cmd line length` on a line still arriving, `len` bytes so far:
    /// the rules (not negated) whose limit lies in `from..len`, which it
    /// has just passed. Every such rule is evaluated, whatever the first
    /// one does.
    pub fn line_length(mut self, len: u64, from: u64) -> Verdict {
        let mut v = Verdict::default();
        let policy = self.policy;
        for (i, rule) in policy.rules.iter().enumerate() {
            if let Criterion::CmdLineLength(limit) = rule.criterion
                && !rule.negate
                && limit >= from
                && exceeds(len, limit)
            {
                self.hit(i, Value::Num(len), &mut v);
            }
        }
        v
    }

    /// `ehlo-reply-parameter` on one keyword (upper case) of an EHLO reply.
    pub fn ehlo_keyword(mut self, keyword: &str) -> Verdict {
        let mut v = Verdict::default();
        let policy = self.policy;
        for (i, rule) in policy.rules.iter().enumerate() {
            if let Criterion::EhloReplyParameter(params) = &rule.criterion
                && v.close.is_none()
                && rule.matches(policy.keyword_in(keyword, params))
            {
                self.hit(i, Value::Bytes(keyword.as_bytes()), &mut v);
            }
        }
        v
    }

    /// `invalid-recipients count` once the server rejected the `n`th RCPT.
    pub fn invalid_recipients(mut self, n: u64) -> Verdict {
        let mut v = Verdict::default();
        let policy = self.policy;
        for (i, rule) in policy.rules.iter().enumerate() {
            if let Criterion::InvalidRecipientsCount(limit) = rule.criterion
                && v.close.is_none()
                && rule.matches(exceeds(n, limit))
            {
                self.hit(i, Value::Num(n), &mut v);
            }
        }
        v
    }

    /// The header, body and MIME rules on the scanner's events, each with
    /// the count of `To:` fields up to it. Each rule fires at most once
    /// per message.
    pub fn content(mut self, events: impl Iterator<Item = (MimeEvent, u64)>) -> Verdict {
        let mut v = Verdict::default();
        let policy = self.policy;
        for (ev, to_fields) in events {
            let unreadable = match ev {
                MimeEvent::Unreadable { what, .. } => Some(what),
                MimeEvent::DepthExceeded { .. } => Some(Unreadable::TooDeep),
                _ => None,
            };
            // What the scanner cannot follow may hide what the attachment
            // rules look for: never a silent pass (`mime-anomaly`).
            if let (Some(what), Some(actions)) = (unreadable, policy.mime_anomaly)
                && !self.state.anomaly_fired
                && v.close.is_none()
            {
                self.state.anomaly_fired = true;
                let value = Value::Bytes(what.text().as_bytes());
                self.param_hit(actions, |s| &s.mime_anomaly, &"mime-anomaly", value, &mut v);
            }
            for (i, rule) in policy.rules.iter().enumerate() {
                let fired = self.state.fired.get(i).copied().unwrap_or(true);
                if fired || v.close.is_some() {
                    continue;
                }
                let Some((hit, value)) = content_hit(&rule.criterion, &ev, to_fields) else {
                    continue;
                };
                if rule.matches(hit) {
                    if let Some(f) = self.state.fired.get_mut(i) {
                        *f = true;
                    }
                    self.hit(i, value, &mut v);
                }
            }
        }
        v
    }

    /// Rule `index` (0-based) matched on `value`.
    fn hit(&mut self, index: usize, value: Value<'_>, v: &mut Verdict) {
        let policy = self.policy;
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
                let rate = &mut self.state.rate;
                if rate.len() <= index {
                    rate.resize(index + 1, RateWindow::default());
                }
                let now = self.now.unwrap_or_else(Instant::now);
                let within = rate.get_mut(index).is_none_or(|w| w.allow(now, limit));
                if within {
                    Effect::Nothing
                } else {
                    Effect::RateLimited
                }
            }
        };
        let criterion = Negated(rule.negate, &rule.criterion);
        let source = Source::Class(index + 1);
        self.apply(effect, &rule.actions, source, &criterion, value, v);
    }

    /// A parameter (`mail-relay`, `special-character`, `mime-anomaly`)
    /// matched.
    fn param_hit(
        &mut self,
        actions: Actions,
        counter: fn(&PolicyStats) -> &AtomicU64,
        criterion: &dyn fmt::Display,
        value: Value<'_>,
        v: &mut Verdict,
    ) {
        PolicyStats::bump(counter(self.stats));
        let effect = match actions.primary {
            Some(Primary::DropConnection) => Effect::Close(Close::Fin),
            Some(Primary::Reset) => Effect::Close(Close::Reset),
            _ => Effect::Nothing,
        };
        self.apply(effect, &actions, Source::Parameter, criterion, value, v);
    }

    fn apply(
        &mut self,
        effect: Effect,
        actions: &Actions,
        source: Source,
        criterion: &dyn fmt::Display,
        value: Value<'_>,
        v: &mut Verdict,
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
            self.audit.push(AuditEvent {
                peers: *self.peers,
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
