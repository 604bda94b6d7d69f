//! The actions of a `match` line: at most one of `drop-connection`, `reset`,
//! `mask`, `rate-limit N`, optionally with `log` (or `log` alone).

use std::fmt;

/// The action that changes what happens to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primary {
    /// Close both sides gracefully (FIN).
    DropConnection,
    /// Reset both sides (RST).
    Reset,
    /// Hide the matched item: an EHLO keyword, or a command (which the
    /// server never executes).
    Mask,
    /// At most N matching commands per second per session; the excess is
    /// refused like a masked command.
    RateLimit(u32),
}

/// The parsed `action` string of a rule or parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actions {
    pub primary: Option<Primary>,
    /// `log`: emit an audit record (108004, or 108005 for log alone).
    pub log: bool,
}

impl Actions {
    pub const fn new(primary: Option<Primary>, log: bool) -> Self {
        Self { primary, log }
    }
}

impl fmt::Display for Primary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DropConnection => f.write_str("drop-connection"),
            Self::Reset => f.write_str("reset"),
            Self::Mask => f.write_str("mask"),
            Self::RateLimit(n) => write!(f, "rate-limit {n}"),
        }
    }
}

impl fmt::Display for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.primary, self.log) {
            (Some(p), true) => write!(f, "{p} log"),
            (Some(p), false) => write!(f, "{p}"),
            (None, _) => f.write_str("log"),
        }
    }
}
