//! The `[esmtp]` section of a policy file: its TOML form (`EsmtpSection`),
//! validated and compiled into the `EsmtpPolicy` the engine enforces.
//! `EsmtpPolicy::from_toml` does both for a whole policy document.

pub mod actions;
pub mod criteria;
mod document;
pub mod parse;
pub mod ports;

use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

pub use actions::{Actions, Primary};
pub use criteria::{Criterion, EhloParam, MimeEncodingKw};

/// What is wrong with one field of a policy: a value that is not a valid
/// setting, or (from `EsmtpPolicy::from_toml`) one that is not even the
/// right TOML. The policy loader turns `span` (byte offsets into the file)
/// into a line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub span: Option<Range<usize>>,
    /// Dotted path of the offending field, e.g. `esmtp.match[2].action`;
    /// `(document)` for a TOML syntax error.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

impl FieldError {
    fn at<T>(value: &Spanned<T>, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            span: Some(value.span()),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// `compat` reproduces the firewall feature byte for byte; `modern` (the
/// default) keeps its controls without breaking mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Compat,
    #[default]
    Modern,
}

/// The `[esmtp]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EsmtpSection {
    /// Shown in `show service-policy inspect esmtp`; default `_default_esmtp_map`.
    #[serde(default)]
    name: Option<Spanned<String>>,
    #[serde(default)]
    mode: Mode,
    /// Default true, like the firewall.
    #[serde(default)]
    mask_banner: Option<bool>,
    /// Modern mode: the masked banner is `220 <banner-name> ESMTP`.
    #[serde(default)]
    banner_name: Option<Spanned<String>>,
    /// `false` (default), `true`, or `"log"` (allow and log, 108007 at severity 6).
    #[serde(default)]
    allow_tls: Option<Spanned<toml::Value>>,
    /// `false` (default) or the action: `"drop-connection"`, `"log"`, `"drop-connection log"`.
    #[serde(default)]
    special_character: Option<Spanned<toml::Value>>,
    #[serde(default)]
    mail_relay: Option<MailRelaySection>,
    /// What to do with MIME the scanner cannot follow: `false`, or an
    /// action (`drop-connection`, `reset`, `log`, with or without `log`).
    /// Default: the action of the strictest attachment rule.
    #[serde(default)]
    mime_anomaly: Option<Spanned<toml::Value>>,
    /// Verbs allowed on top of the base set (e.g. the Exchange extensions).
    #[serde(default)]
    allow_verbs: Vec<Spanned<String>>,
    /// Modern mode: answer `452 4.5.3 Too many recipients` to the RCPTs past
    /// a `cmd RCPT count gt N` limit instead of dropping or resetting.
    #[serde(default)]
    reject_excess_recipients: Option<Spanned<bool>>,
    /// TCP ports inspected; default `[25]` (see `ports`).
    #[serde(default)]
    ports: Option<Spanned<Vec<Spanned<i64>>>>,
    #[serde(default, rename = "match")]
    matches: Vec<MatchSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MailRelaySection {
    domain: Spanned<String>,
    action: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchSection {
    #[serde(rename = "match")]
    criterion: Spanned<String>,
    action: Spanned<String>,
}

/// One compiled `match` line.
#[derive(Debug, Clone)]
pub struct Rule {
    pub negate: bool,
    pub criterion: Criterion,
    pub actions: Actions,
}

impl Rule {
    /// `match [not] CRITERION`, as shown by `show service-policy`.
    pub fn text(&self) -> String {
        let not = if self.negate { "not " } else { "" };
        format!("match {not}{}", self.criterion)
    }

    /// Whether the criterion, evaluated to `hit`, makes the rule match.
    pub fn matches(&self, hit: bool) -> bool {
        hit != self.negate
    }
}

/// `mail-relay DOMAIN action …`: a RCPT outside DOMAIN is a relay attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailRelay {
    /// Lower case.
    pub domain: String,
    pub actions: Actions,
}

/// A validated ESMTP policy.
#[derive(Debug, Clone)]
pub struct EsmtpPolicy {
    pub name: String,
    pub mode: Mode,
    pub mask_banner: bool,
    /// The modern-mode banner: `220 <banner_name> ESMTP`.
    pub banner_name: String,
    /// `Some(log)` when STARTTLS is allowed.
    pub allow_tls: Option<bool>,
    pub special_character: Option<Actions>,
    pub mail_relay: Option<MailRelay>,
    /// MIME the scanner cannot follow (`mime-anomaly`): what happens to
    /// the message, `None` to let it pass unrecorded.
    pub mime_anomaly: Option<Actions>,
    /// Upper case, on top of `BASE_VERBS`.
    pub allow_verbs: Vec<String>,
    pub reject_excess_recipients: bool,
    pub rules: Vec<Rule>,
    /// The inspected TCP ports, in the order written (`ports`).
    pub ports: Vec<u16>,
}

/// The fifteen commands of the firewall: the seven of RFC 821 and eight
/// ESMTP ones.
pub const BASE_VERBS: [&str; 15] = [
    "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "AUTH", "EHLO", "ETRN", "HELP", "SAML",
    "SEND", "SOML", "VRFY",
];

/// Verbs that start TLS (the server answers 220, then TLS): STARTTLS, and
/// Exchange's X-ANONYMOUSTLS.
pub const TLS_VERBS: [&str; 2] = ["STARTTLS", "X-ANONYMOUSTLS"];

/// EHLO keywords modern mode never counts as `others`: what modern MTAs
/// need to deliver mail unchanged (the classic ten plus these).
const MODERN_KEYWORDS: [&str; 2] = ["SMTPUTF8", "CHUNKING"];

/// The default policy, the firewall's `_default_esmtp_map`, in modern mode.
pub const DEFAULT_POLICY_TOML: &str = r#"
[esmtp]
name = "_default_esmtp_map"
mode = "modern"
mask-banner = true
allow-tls = false
special-character = false

[[esmtp.match]]
match = "cmd line length gt 512"
action = "drop-connection log"

[[esmtp.match]]
match = "cmd RCPT count gt 100"
action = "drop-connection log"

[[esmtp.match]]
match = "body line length gt 998"
action = "log"

[[esmtp.match]]
match = "header line length gt 998"
action = "drop-connection log"

[[esmtp.match]]
match = "sender-address length gt 320"
action = "drop-connection log"

[[esmtp.match]]
match = "MIME filename length gt 255"
action = "drop-connection log"

[[esmtp.match]]
match = "ehlo-reply-parameter others"
action = "mask"
"#;

const DEFAULT_NAME: &str = "_default_esmtp_map";
const DEFAULT_BANNER_NAME: &str = "mail";
/// Longest accepted policy name / banner name.
const MAX_NAME_LEN: usize = 64;

impl Default for EsmtpPolicy {
    /// `_default_esmtp_map` in modern mode.
    fn default() -> Self {
        // The embedded text is fixed and covered by tests.
        document::section(DEFAULT_POLICY_TOML)
            .expect("default policy parses")
            .expect("default policy has an [esmtp] table")
            .compile()
            .expect("default policy compiles")
    }
}

impl EsmtpPolicy {
    /// Whether `verb` (upper case) may be sent to the server at all, before
    /// any `cmd verb` rule. BDAT and TLS verbs have further conditions that
    /// the session checks (CHUNKING advertised, `allow-tls`).
    pub fn allows_verb(&self, verb: &str) -> bool {
        let tls = TLS_VERBS.contains(&verb);
        if tls {
            // STARTTLS needs only allow-tls; other TLS verbs also the allow list.
            return self.allow_tls.is_some()
                && (verb == "STARTTLS" || self.allow_verbs.iter().any(|v| v == verb));
        }
        BASE_VERBS.contains(&verb)
            || (self.mode == Mode::Modern && verb == "BDAT")
            || self.allow_verbs.iter().any(|v| v == verb)
    }

    /// Whether an EHLO keyword (upper case) is one the policy knows, i.e. not
    /// `others`.
    pub fn is_known_keyword(&self, keyword: &str) -> bool {
        let original = EhloParam::ALL
            .iter()
            .take(10)
            .any(|p| p.keyword() == Some(keyword));
        original
            || (TLS_VERBS.contains(&keyword) && self.allows_verb(keyword))
            || (self.mode == Mode::Modern
                && (MODERN_KEYWORDS.contains(&keyword)
                    || self.allow_verbs.iter().any(|v| v == keyword)))
    }

    /// Whether `keyword` (upper case) is one of `params`.
    pub fn keyword_in(&self, keyword: &str, params: &[EhloParam]) -> bool {
        params.iter().any(|p| match p.keyword() {
            Some(k) => k == keyword,
            None => !self.is_known_keyword(keyword),
        })
    }
}

impl EsmtpSection {
    pub fn compile(&self) -> Result<EsmtpPolicy, FieldError> {
        let name = match &self.name {
            Some(n) => checked_name(n, "esmtp.name")?,
            None => DEFAULT_NAME.to_string(),
        };
        let banner_name = match &self.banner_name {
            Some(n) if self.mode == Mode::Compat => {
                return Err(FieldError::at(
                    n,
                    "esmtp.banner-name",
                    "only in modern mode: compat mode masks the banner with asterisks",
                ));
            }
            Some(n) => checked_name(n, "esmtp.banner-name")?,
            None => DEFAULT_BANNER_NAME.to_string(),
        };
        let allow_tls = match &self.allow_tls {
            None => None,
            Some(v) => match v.get_ref() {
                toml::Value::Boolean(false) => None,
                toml::Value::Boolean(true) => Some(false),
                toml::Value::String(s) if s.eq_ignore_ascii_case("log") => Some(true),
                _ => {
                    return Err(FieldError::at(
                        v,
                        "esmtp.allow-tls",
                        "expected true, false or \"log\"",
                    ));
                }
            },
        };
        let special_character = match &self.special_character {
            None => None,
            Some(v) => match v.get_ref() {
                toml::Value::Boolean(false) => None,
                toml::Value::String(s) => Some(
                    parse::parse_param_actions(s)
                        .map_err(|m| FieldError::at(v, "esmtp.special-character", m))?,
                ),
                _ => {
                    return Err(FieldError::at(
                        v,
                        "esmtp.special-character",
                        "expected false or an action: \"drop-connection\", \"log\" or \"drop-connection log\"",
                    ));
                }
            },
        };
        let mail_relay = match &self.mail_relay {
            None => None,
            Some(m) => {
                let domain = m.domain.get_ref().trim().to_ascii_lowercase();
                let valid = !domain.is_empty()
                    && domain.len() <= 255
                    && domain
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                if !valid {
                    return Err(FieldError::at(
                        &m.domain,
                        "esmtp.mail-relay.domain",
                        format!("`{}` is not a domain name", m.domain.get_ref()),
                    ));
                }
                let actions = parse::parse_param_actions(m.action.get_ref())
                    .map_err(|e| FieldError::at(&m.action, "esmtp.mail-relay.action", e))?;
                Some(MailRelay { domain, actions })
            }
        };
        let mut allow_verbs = Vec::with_capacity(self.allow_verbs.len());
        for (i, v) in self.allow_verbs.iter().enumerate() {
            let field = format!("esmtp.allow-verbs[{i}]");
            let (_, c) =
                parse::parse_match(&format!("cmd verb {}", v.get_ref())).map_err(|_| {
                    FieldError::at(v, &field, format!("`{}` is not an SMTP verb", v.get_ref()))
                })?;
            match c {
                Criterion::CmdVerb(mut verbs) if verbs.len() == 1 => allow_verbs.append(&mut verbs),
                _ => {
                    return Err(FieldError::at(v, field, "expected exactly one verb"));
                }
            }
        }
        let reject_excess_recipients = match &self.reject_excess_recipients {
            Some(v) if *v.get_ref() && self.mode == Mode::Compat => {
                return Err(FieldError::at(
                    v,
                    "esmtp.reject-excess-recipients",
                    "only in modern mode: the firewall drops or resets the connection",
                ));
            }
            Some(v) => *v.get_ref(),
            None => false,
        };
        let mut rules = Vec::with_capacity(self.matches.len());
        for (i, m) in self.matches.iter().enumerate() {
            let (negate, criterion) = parse::parse_match(m.criterion.get_ref())
                .map_err(|e| FieldError::at(&m.criterion, format!("esmtp.match[{i}].match"), e))?;
            let field = format!("esmtp.match[{i}].action");
            let actions = parse::parse_actions(m.action.get_ref())
                .map_err(|e| FieldError::at(&m.action, &field, e))?;
            parse::check_actions(&criterion, &actions)
                .map_err(|e| FieldError::at(&m.action, &field, e))?;
            rules.push(Rule {
                negate,
                criterion,
                actions,
            });
        }
        let mime_anomaly = match &self.mime_anomaly {
            None => strictest_attachment_rule(&rules),
            Some(v) => match v.get_ref() {
                toml::Value::Boolean(false) => None,
                toml::Value::String(s) => Some(
                    parse::parse_actions(s)
                        .and_then(|a| match a.primary {
                            None | Some(Primary::DropConnection | Primary::Reset) => Ok(a),
                            Some(p) => Err(format!(
                                "`{p}` is not valid here: expected drop-connection, reset or log"
                            )),
                        })
                        .map_err(|m| FieldError::at(v, "esmtp.mime-anomaly", m))?,
                ),
                _ => {
                    return Err(FieldError::at(
                        v,
                        "esmtp.mime-anomaly",
                        "expected false or an action: \"drop-connection\", \"reset\" or \"log\", \
                         optionally with \"log\"",
                    ));
                }
            },
        };
        Ok(EsmtpPolicy {
            name,
            mode: self.mode,
            mask_banner: self.mask_banner.unwrap_or(true),
            banner_name,
            allow_tls,
            special_character,
            mail_relay,
            mime_anomaly,
            allow_verbs,
            reject_excess_recipients,
            rules,
            ports: ports::compile(self.ports.as_ref())?,
        })
    }
}

/// The default of `mime-anomaly`: the action of the strictest rule on
/// attachments (`mime filetype`, `mime filename length`, `mime encoding`),
/// since MIME the scanner cannot follow could hide what they look for.
/// Reset is stricter than drop-connection, which is stricter than log.
fn strictest_attachment_rule(rules: &[Rule]) -> Option<Actions> {
    let rank = |a: &Actions| match a.primary {
        Some(Primary::Reset) => 2,
        Some(Primary::DropConnection) => 1,
        _ => 0,
    };
    rules
        .iter()
        .filter(|r| {
            matches!(
                r.criterion,
                Criterion::MimeFiletypeRegex(_)
                    | Criterion::MimeFilenameLength(_)
                    | Criterion::MimeEncoding(_)
            )
        })
        .map(|r| r.actions)
        .reduce(|a, b| match rank(&a).cmp(&rank(&b)) {
            std::cmp::Ordering::Less => b,
            std::cmp::Ordering::Greater => a,
            std::cmp::Ordering::Equal => Actions::new(a.primary, a.log || b.log),
        })
}

/// A policy or banner name: printable ASCII without spaces, so it can
/// neither break a reply line nor the `show` output.
fn checked_name(value: &Spanned<String>, field: &str) -> Result<String, FieldError> {
    let s = value.get_ref();
    let ok = !s.is_empty() && s.len() <= MAX_NAME_LEN && s.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(s.clone())
    } else {
        Err(FieldError::at(
            value,
            field,
            format!("expected 1 to {MAX_NAME_LEN} printable ASCII characters without spaces"),
        ))
    }
}
