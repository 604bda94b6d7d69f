//! The match criteria of an ESMTP inspect policy, in the firewall feature's
//! words, and how each one is shown (`show service-policy inspect esmtp`).

use std::fmt;

use regex::Regex;

/// One criterion of a `match` line (without `not`).
#[derive(Debug, Clone)]
pub enum Criterion {
    /// `body line length gt N`: one line of the message body.
    BodyLineLength(u64),
    /// `body length gt N`: the whole body.
    BodyLength(u64),
    /// `cmd line length gt N`: one client command line (without its CRLF).
    CmdLineLength(u64),
    /// `cmd RCPT count gt N`: RCPT commands in one transaction.
    CmdRcptCount(u64),
    /// `cmd verb V…`: commands with one of these verbs (upper case).
    CmdVerb(Vec<String>),
    /// `ehlo-reply-parameter P…`: keywords of the server's EHLO reply.
    EhloReplyParameter(Vec<EhloParam>),
    /// `header line length gt N`: one physical top-level header line.
    HeaderLineLength(u64),
    /// `header length gt N`: the whole top-level header block.
    HeaderLength(u64),
    /// `header to-fields count gt N`: number of top-level `To:` fields.
    HeaderToFieldsCount(u64),
    /// `invalid-recipients count gt N`: RCPTs the server rejected (5xx), per session.
    InvalidRecipientsCount(u64),
    /// `mime filetype regex R`: content type of a MIME part.
    MimeFiletypeRegex(Regex),
    /// `mime filename length gt N`: decoded file name of a MIME part.
    MimeFilenameLength(u64),
    /// `mime encoding T…`: Content-Transfer-Encoding of a MIME part.
    MimeEncoding(Vec<MimeEncodingKw>),
    /// `sender-address regex R`: the MAIL FROM address.
    SenderAddressRegex(Regex),
    /// `sender-address length gt N`: the MAIL FROM address length.
    SenderAddressLength(u64),
}

impl Criterion {
    /// Whether the `mask` action makes sense for this criterion.
    pub fn can_mask(&self) -> bool {
        matches!(self, Self::CmdVerb(_) | Self::EhloReplyParameter(_))
    }

    /// Whether `rate-limit N` makes sense: only discrete client commands can
    /// be refused one by one.
    pub fn can_rate_limit(&self) -> bool {
        matches!(self, Self::CmdVerb(_))
    }
}

/// The `gt N` comparison every counting criterion uses.
pub fn exceeds(value: u64, limit: u64) -> bool {
    value > limit
}

/// A parameter word of `ehlo-reply-parameter`. The first ten are the
/// original feature's; `smtputf8`, `chunking` and `starttls` name modern
/// keywords explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EhloParam {
    EightBitMime,
    Auth,
    BinaryMime,
    Checkpnt,
    Dsn,
    Ecode,
    Etrn,
    Pipelining,
    Size,
    Vrfy,
    SmtpUtf8,
    Chunking,
    StartTls,
    /// Any keyword the policy does not know (see `EsmtpPolicy::is_known_keyword`).
    Others,
}

impl EhloParam {
    pub const ALL: [EhloParam; 14] = [
        Self::EightBitMime,
        Self::Auth,
        Self::BinaryMime,
        Self::Checkpnt,
        Self::Dsn,
        Self::Ecode,
        Self::Etrn,
        Self::Pipelining,
        Self::Size,
        Self::Vrfy,
        Self::SmtpUtf8,
        Self::Chunking,
        Self::StartTls,
        Self::Others,
    ];

    /// The word used in a policy.
    pub fn word(self) -> &'static str {
        match self {
            Self::EightBitMime => "8bitmime",
            Self::Auth => "auth",
            Self::BinaryMime => "binarymime",
            Self::Checkpnt => "checkpnt",
            Self::Dsn => "dsn",
            Self::Ecode => "ecode",
            Self::Etrn => "etrn",
            Self::Pipelining => "pipelining",
            Self::Size => "size",
            Self::Vrfy => "vrfy",
            Self::SmtpUtf8 => "smtputf8",
            Self::Chunking => "chunking",
            Self::StartTls => "starttls",
            Self::Others => "others",
        }
    }

    /// The EHLO keyword it stands for (upper case); `None` for `others`.
    pub fn keyword(self) -> Option<&'static str> {
        Some(match self {
            Self::EightBitMime => "8BITMIME",
            Self::Auth => "AUTH",
            Self::BinaryMime => "BINARYMIME",
            Self::Checkpnt => "CHECKPOINT",
            Self::Dsn => "DSN",
            Self::Ecode => "ENHANCEDSTATUSCODES",
            Self::Etrn => "ETRN",
            Self::Pipelining => "PIPELINING",
            Self::Size => "SIZE",
            Self::Vrfy => "VRFY",
            Self::SmtpUtf8 => "SMTPUTF8",
            Self::Chunking => "CHUNKING",
            Self::StartTls => "STARTTLS",
            Self::Others => return None,
        })
    }

    pub fn from_word(word: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.word().eq_ignore_ascii_case(word))
    }
}

/// A word of `mime encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MimeEncodingKw {
    SevenBit,
    EightBit,
    Base64,
    Binary,
    QuotedPrintable,
    Others,
}

impl MimeEncodingKw {
    pub const ALL: [MimeEncodingKw; 6] = [
        Self::SevenBit,
        Self::EightBit,
        Self::Base64,
        Self::Binary,
        Self::QuotedPrintable,
        Self::Others,
    ];

    /// The word used in a policy, also `mime::Encoding::keyword()`.
    pub fn word(self) -> &'static str {
        match self {
            Self::SevenBit => "7bit",
            Self::EightBit => "8bit",
            Self::Base64 => "base64",
            Self::Binary => "binary",
            Self::QuotedPrintable => "quoted-printable",
            Self::Others => "others",
        }
    }

    pub fn from_word(word: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.word().eq_ignore_ascii_case(word))
    }
}

fn join_words<'a>(f: &mut fmt::Formatter<'_>, words: impl Iterator<Item = &'a str>) -> fmt::Result {
    for (i, w) in words.enumerate() {
        if i > 0 {
            f.write_str(" ")?;
        }
        f.write_str(w)?;
    }
    Ok(())
}

/// The canonical text, as `show service-policy inspect esmtp` prints it.
impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BodyLineLength(n) => write!(f, "body line length gt {n}"),
            Self::BodyLength(n) => write!(f, "body length gt {n}"),
            Self::CmdLineLength(n) => write!(f, "cmd line length gt {n}"),
            Self::CmdRcptCount(n) => write!(f, "cmd RCPT count gt {n}"),
            Self::CmdVerb(verbs) => {
                f.write_str("cmd verb ")?;
                join_words(f, verbs.iter().map(String::as_str))
            }
            Self::EhloReplyParameter(params) => {
                f.write_str("ehlo-reply-parameter ")?;
                join_words(f, params.iter().map(|p| p.word()))
            }
            Self::HeaderLineLength(n) => write!(f, "header line length gt {n}"),
            Self::HeaderLength(n) => write!(f, "header length gt {n}"),
            Self::HeaderToFieldsCount(n) => write!(f, "header to-fields count gt {n}"),
            Self::InvalidRecipientsCount(n) => write!(f, "invalid-recipients count gt {n}"),
            Self::MimeFiletypeRegex(r) => write!(f, "MIME filetype regex {}", r.as_str()),
            Self::MimeFilenameLength(n) => write!(f, "MIME filename length gt {n}"),
            Self::MimeEncoding(encs) => {
                f.write_str("MIME encoding ")?;
                join_words(f, encs.iter().map(|e| e.word()))
            }
            Self::SenderAddressRegex(r) => write!(f, "sender-address regex {}", r.as_str()),
            Self::SenderAddressLength(n) => write!(f, "sender-address length gt {n}"),
        }
    }
}
