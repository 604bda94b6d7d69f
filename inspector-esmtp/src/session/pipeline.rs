//! The replies the client is owed, in command order (RFC 2920: replies come
//! in the order of the commands). Each entry is either a reply the server
//! will send, or one the engine composed itself for a command it refused;
//! the engine's own replies wait their turn so the order is never broken.

use std::collections::VecDeque;

/// Most commands awaiting a reply at once (Zeek uses 1000 too).
pub const MAX_PENDING: usize = 1000;

/// What the next reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    Greeting,
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    /// DATA: 354 switches the client to message content.
    Data,
    /// The final `.` of a message.
    DataEnd,
    Bdat {
        last: bool,
    },
    /// XEXCH50: 354 switches the client to `size` raw bytes.
    Xexch50 {
        size: u64,
    },
    /// The server's reply to an XEXCH50 blob (`250` or `500`).
    Xexch50Blob,
    /// STARTTLS or X-ANONYMOUSTLS: 220 makes the session opaque.
    StartTls,
    /// AUTH or X-EXPS, and each client response: 334 asks for another line.
    Auth,
    Quit,
    Other,
    /// A reply the engine answers itself, sent when it reaches the head.
    Local(&'static [u8]),
}

impl Pending {
    /// Whether the reply tells the client a message's fate.
    pub fn ends_message(self) -> bool {
        matches!(self, Self::DataEnd | Self::Bdat { last: true })
    }

    /// Whether the client must wait for this reply before sending more
    /// (RFC 2920 section 3.1; AUTH and STARTTLS change what follows).
    pub fn ends_group(self) -> bool {
        matches!(
            self,
            Self::Greeting
                | Self::Ehlo
                | Self::Helo
                | Self::Data
                | Self::Xexch50 { .. }
                | Self::Xexch50Blob
                | Self::StartTls
                | Self::Auth
                | Self::Quit
        )
    }
}

#[derive(Debug, Default)]
pub struct Pipeline {
    queue: VecDeque<Pending>,
    /// Entries that end a group / that the server answers (kept so that
    /// `must_wait` is O(1)).
    barriers: usize,
    from_server: usize,
}

/// The queue is full: the client sent more than `MAX_PENDING` commands
/// without reading replies.
#[derive(Debug)]
pub struct Overflow;

impl Pipeline {
    #[inline]
    pub fn push(&mut self, p: Pending) -> Result<(), Overflow> {
        if self.queue.len() >= MAX_PENDING {
            return Err(Overflow);
        }
        self.count(p, true);
        self.queue.push_back(p);
        Ok(())
    }

    /// The entry the next server reply answers (`None` if unsolicited).
    pub fn head(&self) -> Option<Pending> {
        self.queue.front().copied()
    }

    pub fn pop(&mut self) -> Option<Pending> {
        let p = self.queue.pop_front()?;
        self.count(p, false);
        Some(p)
    }

    fn count(&mut self, p: Pending, add: bool) {
        let step = |n: &mut usize| {
            *n = if add {
                n.saturating_add(1)
            } else {
                n.saturating_sub(1)
            }
        };
        if p.ends_group() {
            step(&mut self.barriers);
        }
        if !matches!(p, Pending::Local(_)) {
            step(&mut self.from_server);
        }
    }

    /// Pops the engine's own replies at the head, in order.
    pub fn pop_local(&mut self) -> Option<&'static [u8]> {
        match self.queue.front() {
            Some(Pending::Local(reply)) => {
                let reply = *reply;
                self.queue.pop_front();
                Some(reply)
            }
            _ => None,
        }
    }

    /// Replies awaited for messages whose end was relayed (or is being
    /// relayed: a BDAT LAST is queued before its chunk).
    pub fn message_ends(&self) -> usize {
        self.queue.iter().filter(|p| p.ends_message()).count()
    }

    /// Whether the client must wait: a group-ending command is pending, or
    /// (without PIPELINING) any command is.
    pub fn must_wait(&self, pipelining: bool) -> bool {
        if pipelining {
            self.barriers > 0
        } else {
            self.from_server > 0
        }
    }

    /// Heap bytes held by the queue.
    pub fn heap_bytes(&self) -> usize {
        self.queue.capacity() * std::mem::size_of::<Pending>()
    }
}
