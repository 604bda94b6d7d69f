//! What a session saw, for the proxy's one record per session (the audit
//! sinks' `session` record): the HELO name and each transaction's MAIL
//! FROM, recipients, message size and the server's final reply. Kept
//! beside the state machine, which calls it at three points (a command
//! forwarded, a message's end, a reply line), and bounded: at most
//! [`MAX_TRANSACTIONS`] transactions, each value cut to
//! [`MAX_AUDIT_VALUE`](crate::audit::MAX_AUDIT_VALUE) bytes.

use crate::audit::{MAX_AUDIT_VALUE, excerpt};

use super::command::{Command, Verb};

/// Transactions kept per session; later ones are only counted.
pub const MAX_TRANSACTIONS: usize = 16;

/// What the session saw so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionRecord {
    /// The argument of the last EHLO or HELO the server was sent.
    pub helo: Option<String>,
    /// In the client's order.
    pub transactions: Vec<TransactionRecord>,
    /// Transactions past [`MAX_TRANSACTIONS`], not kept.
    pub more_transactions: u64,
}

/// One MAIL FROM and what followed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransactionRecord {
    /// The reverse path as written (without `<>`; empty for the null path).
    pub mail_from: String,
    /// RCPT commands sent to the server.
    pub recipients: u64,
    /// The message's bytes as the client sent them (DATA content before
    /// the final dot, or the BDAT chunks); `None` when no message came.
    pub size: Option<u64>,
    /// The last line of the server's reply to the message's end (its
    /// fate: `250 2.0.0 Ok: queued as …`); `None` when none came.
    pub reply: Option<String>,
}

impl SessionRecord {
    /// A command the engine sends to the server (inlined: for most
    /// commands there is nothing to do).
    #[inline]
    pub(super) fn command(&mut self, cmd: &Command<'_>) {
        match cmd.kind {
            Verb::Ehlo | Verb::Helo => {
                let name = cmd
                    .content
                    .get(4..)
                    .unwrap_or_default()
                    .trim_ascii_start()
                    .split(|b| b.is_ascii_whitespace())
                    .next()
                    .unwrap_or_default();
                self.helo = Some(kept(name));
            }
            Verb::Mail => {
                if self.transactions.len() == MAX_TRANSACTIONS {
                    self.more_transactions += 1;
                    return;
                }
                let from = cmd.path.as_ref().map_or(&b""[..], |p| p.raw);
                self.transactions.push(TransactionRecord {
                    mail_from: kept(from),
                    ..TransactionRecord::default()
                });
            }
            Verb::Rcpt => {
                if self.more_transactions == 0
                    && let Some(t) = self.transactions.last_mut()
                {
                    t.recipients += 1;
                }
            }
            _ => {}
        }
    }

    /// The client finished a message of `size` bytes.
    pub(super) fn message_end(&mut self, size: u64) {
        if self.more_transactions == 0
            && let Some(t) = self.transactions.last_mut()
            && t.size.is_none()
        {
            t.size = Some(size);
        }
    }

    /// The last line of the server's reply to a message's end: it belongs
    /// to the oldest message still owed one (replies come in order).
    pub(super) fn final_reply(&mut self, line: &[u8]) {
        if let Some(t) = self
            .transactions
            .iter_mut()
            .find(|t| t.size.is_some() && t.reply.is_none())
        {
            t.reply = Some(kept(line));
        }
    }

    /// Heap bytes held (bounded by [`MAX_TRANSACTIONS`] values).
    pub fn heap_bytes(&self) -> usize {
        self.helo.as_ref().map_or(0, String::capacity)
            + self.transactions.capacity() * std::mem::size_of::<TransactionRecord>()
            + self
                .transactions
                .iter()
                .map(|t| t.mail_from.capacity() + t.reply.as_ref().map_or(0, String::capacity))
                .sum::<usize>()
    }

    /// The most [`Self::heap_bytes`] can reach: `1 + 2 * MAX_TRANSACTIONS`
    /// values of at most [`MAX_VALUE`] bytes, and the transactions.
    pub const MEMORY_BOUND: usize = (1 + 2 * MAX_TRANSACTIONS) * MAX_VALUE
        + MAX_TRANSACTIONS * std::mem::size_of::<TransactionRecord>();
}

/// Longest value kept: an excerpt escapes each of its bytes into at most
/// 10 (`\u{10ffff}`), plus the `...` of a cut one.
const MAX_VALUE: usize = 10 * MAX_AUDIT_VALUE + 3;

/// `bytes` as an excerpt holding no spare capacity.
fn kept(bytes: &[u8]) -> String {
    let mut s = excerpt(bytes);
    s.shrink_to_fit();
    s
}
