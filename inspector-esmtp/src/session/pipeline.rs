//! The replies the client is owed, in command order (RFC 2920: replies come
//! in the order of the commands). Each entry is either a reply the server
//! will send, or one the engine composed itself for a command it refused;
//! the engine's own replies wait their turn so the order is never broken.

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

/// The queue, in a ring whose capacity is a power of two, doubled as it
/// fills (up to `MAX_PENDING.next_power_of_two()`): an idle session holds
/// little, and a push or pop is a mask and a copy, inlined (`VecDeque`'s
/// push was a call per command).
#[derive(Debug, Default)]
struct Ring {
    /// Its length is the capacity: 0, or a power of two.
    buf: Vec<Pending>,
    head: usize,
    len: usize,
}

impl Ring {
    #[inline]
    fn push_back(&mut self, p: Pending) {
        if self.len == self.buf.len() {
            self.grow();
        }
        let at = (self.head + self.len) & self.buf.len().wrapping_sub(1);
        if let Some(slot) = self.buf.get_mut(at) {
            *slot = p;
            self.len += 1;
        }
    }

    #[cold]
    fn grow(&mut self) {
        let cap = (self.buf.len() * 2).max(4);
        let mut buf = Vec::with_capacity(cap);
        buf.extend(self.iter());
        buf.resize(cap, Pending::Other);
        self.buf = buf;
        self.head = 0;
    }

    #[inline]
    fn front(&self) -> Option<Pending> {
        if self.len == 0 {
            return None;
        }
        self.buf.get(self.head).copied()
    }

    #[inline]
    fn pop_front(&mut self) -> Option<Pending> {
        let p = self.front()?;
        self.head = (self.head + 1) & self.buf.len().wrapping_sub(1);
        self.len -= 1;
        Some(p)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn iter(&self) -> impl Iterator<Item = Pending> + '_ {
        let mask = self.buf.len().wrapping_sub(1);
        (0..self.len).filter_map(move |i| self.buf.get((self.head + i) & mask).copied())
    }

    fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

#[derive(Debug, Default)]
pub struct Pipeline {
    queue: Ring,
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
    #[inline]
    pub fn head(&self) -> Option<Pending> {
        self.queue.front()
    }

    #[inline]
    pub fn pop(&mut self) -> Option<Pending> {
        let p = self.queue.pop_front()?;
        self.count(p, false);
        Some(p)
    }

    /// `pop` of a head known to be one the server answers and that ends
    /// no group (`Mail`, `Rcpt`, `Other`): only `from_server` counts it.
    #[inline]
    pub fn pop_plain(&mut self) {
        debug_assert!(matches!(
            self.head(),
            Some(Pending::Mail | Pending::Rcpt | Pending::Other)
        ));
        if self.queue.pop_front().is_some() {
            self.from_server = self.from_server.saturating_sub(1);
        }
    }

    #[inline]
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
                self.queue.pop_front();
                Some(reply)
            }
            _ => None,
        }
    }

    /// Whether the engine's own reply is next.
    #[inline]
    pub fn local_at_head(&self) -> bool {
        matches!(self.queue.front(), Some(Pending::Local(_)))
    }

    /// Replies awaited for messages whose end was relayed (or is being
    /// relayed: a BDAT LAST is queued before its chunk).
    pub fn message_ends(&self) -> usize {
        self.queue.iter().filter(|p| p.ends_message()).count()
    }

    /// Whether the client must wait: a group-ending command is pending, or
    /// (without PIPELINING) any command is.
    #[inline]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries come out in order across the ring's wrap and each doubling,
    /// up to `MAX_PENDING`, and the capacity stays within the memory bound.
    #[test]
    fn the_ring_keeps_order_through_wraps_and_growth() {
        let mut p = Pipeline::default();
        let entry = |i: usize| Pending::Xexch50 { size: i as u64 };
        let (mut next_in, mut next_out) = (0, 0);
        // Fill partly, drain partly, so the head moves round the ring
        // before and while it grows.
        for round in 0..50 {
            for _ in 0..(round * 7 % 40 + 1) {
                if p.push(entry(next_in)).is_ok() {
                    next_in += 1;
                }
            }
            for _ in 0..(round * 5 % 30) {
                if let Some(e) = p.pop() {
                    assert_eq!(e, entry(next_out));
                    next_out += 1;
                }
            }
            assert_eq!(p.queue.len(), next_in - next_out);
            assert_eq!(p.head(), (next_in > next_out).then(|| entry(next_out)));
        }
        // At capacity: the 1001st is refused, and the order still holds.
        while p.push(entry(next_in)).is_ok() {
            next_in += 1;
        }
        assert_eq!(p.queue.len(), MAX_PENDING);
        assert!(p.heap_bytes() <= MAX_PENDING.next_power_of_two() * size_of::<Pending>());
        // Wrap at full capacity: pop one, push one, many times.
        for _ in 0..3000 {
            assert_eq!(p.pop(), Some(entry(next_out)));
            next_out += 1;
            assert!(p.push(entry(next_in)).is_ok());
            next_in += 1;
        }
        let rest: Vec<_> = std::iter::from_fn(|| p.pop()).collect();
        let want: Vec<_> = (next_out..next_in).map(entry).collect();
        assert_eq!(rest, want);
        assert_eq!(p.head(), None);
        assert_eq!(p.pop(), None);
        assert!(!p.must_wait(false));
    }

    #[test]
    fn local_replies_pop_from_the_head_only() {
        let mut p = Pipeline::default();
        assert_eq!(p.pop_local(), None);
        p.push(Pending::Local(b"a")).unwrap();
        p.push(Pending::Mail).unwrap();
        p.push(Pending::Local(b"b")).unwrap();
        assert_eq!(p.pop_local(), Some(&b"a"[..]));
        assert_eq!(p.pop_local(), None);
        assert!(p.must_wait(false));
        assert_eq!(p.pop(), Some(Pending::Mail));
        assert!(!p.must_wait(false));
        // `pop_plain` counts as `pop` does.
        p.push(Pending::Rcpt).unwrap();
        assert!(p.must_wait(false));
        p.pop_local();
        p.pop_plain();
        assert!(!p.must_wait(false));
        p.push(Pending::Local(b"b")).unwrap();
        assert_eq!(p.pop_local(), Some(&b"b"[..]));
        assert_eq!(p.head(), None);
    }
}
