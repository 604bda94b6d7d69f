//! How a session ends. The policy, or an anomaly the session cannot go on
//! after, ends it with a close (FIN) or a reset (RST); modern mode tells
//! the client why with a `421` first (the firewall closed silently), and
//! the counters count a drop or a reset-drop. The client or the server
//! closing its side ends it too, counted as neither.
//!
//! A close waits until the server has answered every message it already
//! received in full: closing before those replies reach the client would
//! make it send the message again (a duplicate). Meanwhile the session is
//! stopped: the client's bytes are discarded, the server's replies relayed.

use super::{Close, Output};
use crate::audit::{self, AuditEvent, AuditKind, Classification, Peers, Source};
use crate::stats::PolicyStats;

/// What the client is told when the session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tell {
    /// Modern mode only (compat closes silently, as the firewall did).
    Modern(&'static [u8]),
    /// Both modes: the engine's refusal of what it cannot let through, a
    /// security fix that compat mode has too.
    Always(&'static [u8]),
}

/// A close decided while the server still owes replies to messages it
/// received in full.
#[derive(Debug, Clone, Copy)]
struct Closing {
    how: Close,
    reply: Tell,
    /// Message-completing replies still awaited.
    owed: usize,
    /// The client ended the session (EOF), not the policy: not counted as
    /// a drop, and no `421` is sent.
    eof: bool,
}

/// Where the session stands on its way out. Each method that changes it
/// returns whether it did: the session then frees the buffers it no longer
/// needs (a stopped session holds no client bytes, a closed one none).
#[derive(Debug)]
pub struct Ending {
    /// Modern mode: a close tells the client why.
    tell_why: bool,
    /// Set: the session closes once the owed replies are relayed.
    closing: Option<Closing>,
    closed: bool,
}

impl Ending {
    pub fn new(tell_why: bool) -> Self {
        Self {
            tell_why,
            closing: None,
            closed: false,
        }
    }

    /// Closed, or closing: no more client bytes go to the server.
    pub fn stopped(&self) -> bool {
        self.closed || self.closing.is_some()
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The policy or an anomaly ends the session: now if `owed` (the
    /// replies the server owes to messages it received in full) is zero,
    /// else once they are relayed.
    pub fn close(
        &mut self,
        how: Close,
        reply: Tell,
        owed: usize,
        stats: &PolicyStats,
        out: &mut Output,
    ) -> bool {
        if self.stopped() {
            return false;
        }
        if owed > 0 {
            self.closing = Some(Closing {
                how,
                reply,
                owed,
                eof: false,
            });
            return true;
        }
        self.close_now(how, reply, stats, out)
    }

    /// Ends the session now, whatever is owed.
    pub fn close_now(
        &mut self,
        how: Close,
        reply: Tell,
        stats: &PolicyStats,
        out: &mut Output,
    ) -> bool {
        if self.closed {
            return false;
        }
        self.closed = true;
        self.closing = None;
        out.close = Some(how);
        match how {
            Close::Fin => PolicyStats::bump(&stats.drop),
            Close::Reset => PolicyStats::bump(&stats.reset_drop),
        }
        match reply {
            Tell::Always(r) => out.to_client.extend_from_slice(r),
            Tell::Modern(r) if how == Close::Fin && self.tell_why => {
                out.to_client.extend_from_slice(r);
            }
            Tell::Modern(_) => {}
        }
        true
    }

    /// The client closed its side: the session ends once the `owed`
    /// message replies are relayed (a client that half-closed after its
    /// final `.` still learns the message's fate), now if none are.
    pub fn client_eof(&mut self, owed: usize, out: &mut Output) -> bool {
        if self.stopped() {
            return false;
        }
        if owed > 0 {
            self.closing = Some(Closing {
                how: Close::Fin,
                reply: Tell::Modern(b""),
                owed,
                eof: true,
            });
            return true;
        }
        self.eof(out)
    }

    /// A side closed and nothing is waited for: the session ends now.
    pub fn eof(&mut self, out: &mut Output) -> bool {
        if self.closed {
            return false;
        }
        self.closed = true;
        out.close = Some(Close::Fin);
        true
    }

    /// The server answered a complete message: the session ends if that
    /// was the last reply a pending close waited for.
    pub fn message_answered(&mut self, stats: &PolicyStats, out: &mut Output) -> bool {
        let Some(c) = &mut self.closing else {
            return false;
        };
        c.owed = c.owed.saturating_sub(1);
        if c.owed > 0 {
            return false;
        }
        let Closing {
            how, reply, eof, ..
        } = *c;
        if eof {
            self.closing = None;
            self.eof(out)
        } else {
            self.close_now(how, reply, stats, out)
        }
    }
}

/// The record of a protocol anomaly the session cannot go on after
/// (108004).
pub fn anomaly(peers: Peers, what: &str) -> AuditEvent {
    AuditEvent {
        peers,
        kind: AuditKind::Classification(Classification {
            verdict: audit::Verdict::Dropped,
            source: Source::Anomaly,
            criterion: what.to_string(),
            action: "drop-connection log".to_string(),
            value: String::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::policy::EsmtpPolicy;

    fn stats() -> PolicyStats {
        PolicyStats::new(&EsmtpPolicy::default())
    }

    #[test]
    fn a_close_waits_for_the_owed_replies_then_tells_why() {
        let stats = stats();
        let mut e = Ending::new(true);
        let mut out = Output::default();
        assert!(e.close(Close::Fin, Tell::Modern(b"421 x\r\n"), 2, &stats, &mut out));
        assert!(e.stopped() && !e.is_closed());
        assert_eq!(out, Output::default());
        assert!(
            !e.close(Close::Reset, Tell::Modern(b""), 0, &stats, &mut out),
            "decided once"
        );
        assert!(!e.message_answered(&stats, &mut out));
        assert!(e.message_answered(&stats, &mut out));
        assert!(e.is_closed());
        assert_eq!(out.close, Some(Close::Fin));
        assert_eq!(out.to_client, b"421 x\r\n");
        assert_eq!(stats.drop.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_reset_or_compat_close_says_nothing_and_eof_is_no_drop() {
        let stats = stats();
        let mut out = Output::default();
        let tell = Tell::Modern(b"421 x\r\n");
        assert!(Ending::new(true).close_now(Close::Reset, tell, &stats, &mut out));
        assert!(Ending::new(false).close_now(Close::Fin, tell, &stats, &mut out));
        assert!(out.to_client.is_empty());
        // A refusal is told in compat mode too.
        let mut out = Output::default();
        let refusal = Tell::Always(b"501 x\r\n");
        assert!(Ending::new(false).close_now(Close::Fin, refusal, &stats, &mut out));
        assert_eq!(out.to_client, b"501 x\r\n");
        assert_eq!(stats.reset_drop.load(Ordering::Relaxed), 1);

        let mut e = Ending::new(true);
        let mut out = Output::default();
        assert!(e.client_eof(1, &mut out));
        assert!(e.message_answered(&stats, &mut out));
        assert_eq!((out.close, out.to_client.len()), (Some(Close::Fin), 0));
        assert_eq!(
            stats.drop.load(Ordering::Relaxed),
            2,
            "only the two compat closes"
        );
        assert!(!e.eof(&mut out), "closed once");
    }
}
