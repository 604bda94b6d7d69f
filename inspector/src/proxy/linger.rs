//! The lingering part of a close (why a close lingers: see
//! [`super::session`]): it reads and discards what the client still sends
//! until the client has acknowledged every byte sent to it, and waits for
//! that without a cost per lingering session.
//!
//! Most closes end on an event: the client's FIN, bytes or RST, each
//! carrying its acknowledgments, and the send queue is looked at then.
//! Only a client that stays open and silent, or closed its side before its
//! acknowledgment came, is looked at again on a timer: the one timer of
//! the linger (its deadline), brought forward to the next look with a
//! backoff (`FIRST_LOOK`, doubling up to `LAST_LOOK`), not a tick per
//! lingering session.
//!
//! A connection the kernel has ended has nothing left to wait for: the
//! client reset it (as a client that closed without reading the last reply
//! does once that reply reaches it), so its send queue is gone and no
//! acknowledgment will come; or it timed out. Such a close ends at once
//! instead of at the deadline.

use std::{
    os::fd::{AsRawFd, RawFd},
    time::Duration,
};

use tokio::{
    net::TcpStream,
    time::{Instant, sleep_until},
};

use super::session::{Read, try_read, with_buffer};

/// A client still sending once it has acknowledged everything is given
/// this long without a byte before the close.
const QUIET: Duration = Duration::from_millis(200);
/// The first look at the send queue that no event asked for, after the
/// linger began: about the time an acknowledgment takes on a loaded host.
const FIRST_LOOK: Duration = Duration::from_millis(1);
/// The longest wait between two such looks: a client that acknowledges
/// late is closed at most this much later than it could have been.
const LAST_LOOK: Duration = Duration::from_millis(200);

/// How the close that lingers ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// A FIN, queued already (`true`) or not (the shutdown failed): the
    /// client is also given `QUIET` to stop sending.
    Fin(bool),
    /// A reset (SO_LINGER 0), which discards the send queue: only the
    /// acknowledgment counts.
    Reset,
}

/// What became of the bytes sent on a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// All acknowledged, or the kernel cannot say (never wait on what
    /// cannot be seen).
    Acknowledged,
    /// Not all, and the kernel has ended the connection (reset, timed
    /// out): none of it can still arrive.
    Gone,
    Pending,
}

/// Bytes sent on `fd` that its peer has not acknowledged yet (SIOCOUTQ,
/// a queued FIN counting as one), or `None` if the kernel cannot say.
fn unacknowledged(fd: RawFd) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) on a TCP socket writes one int.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    (rc == 0).then(|| usize::try_from(n).unwrap_or(0))
}

/// `TCP_CLOSE` in the kernel's TCP states (`include/net/tcp_states.h`):
/// after a reset or a timeout; a socket that closed in order has had
/// everything acknowledged by then.
const TCP_CLOSE: u8 = 7;

/// Whether the kernel has ended the connection on `fd`.
fn ended(fd: RawFd) -> bool {
    // `tcpi_state`, the first byte of `struct tcp_info`: the kernel copies
    // as much of the struct as it is given room for.
    let mut state: u8 = 0;
    let mut len = 1 as libc::socklen_t;
    // SAFETY: TCP_INFO writes at most `len` bytes to `state`, and the
    // length it wrote to `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut state).cast(),
            &mut len,
        )
    };
    rc == 0 && len == 1 && state == TCP_CLOSE
}

/// What the peer of `fd` has of what was sent to it; `fin`: a FIN is
/// queued after the bytes. The FIN is not part of what the client waits
/// for, and a close leaves it to the kernel to send (only a reset
/// discards the send queue), so a queue holding only the FIN counts as
/// acknowledged.
fn sent(fd: RawFd, fin: bool) -> Sent {
    match unacknowledged(fd) {
        None => Sent::Acknowledged,
        Some(n) if n <= usize::from(fin) => Sent::Acknowledged,
        Some(_) if ended(fd) => Sent::Gone,
        Some(_) => Sent::Pending,
    }
}

/// Reads and discards what the client on `client` still sends, until it
/// has acknowledged every byte sent to it (its kernel has them: a RST can
/// no longer destroy them) and, for a FIN, has either closed its side or
/// sent nothing for `QUIET`; or until the connection is gone; or until
/// `deadline`. `open` says whether the client's side is still open, and
/// is cleared when it closes.
pub async fn linger(client: &TcpStream, open: &mut bool, deadline: Instant, then: Then) {
    let fd = client.as_raw_fd();
    let (quiet, fin) = match then {
        Then::Fin(queued) => (true, queued),
        Then::Reset => (false, false),
    };
    let mut wait = FIRST_LOOK;
    let timer = sleep_until((Instant::now() + wait).min(deadline));
    tokio::pin!(timer);
    let mut acknowledged = false;
    let mut last_byte: Option<Instant> = None;
    loop {
        // Acknowledged stays so: nothing more is written.
        if !acknowledged {
            match sent(fd, fin) {
                Sent::Acknowledged => acknowledged = true,
                Sent::Gone => return,
                Sent::Pending => {}
            }
        }
        let now = Instant::now();
        let quiet_from = last_byte.filter(|_| quiet && *open).map(|t| t + QUIET);
        if (acknowledged && quiet_from.is_none_or(|t| now >= t)) || now >= deadline {
            return;
        }
        tokio::select! {
            biased;
            r = client.readable(), if *open => match r.map(|()| with_buffer(|b| try_read(client, b))) {
                Ok(Read::Bytes(_)) => last_byte = Some(Instant::now()),
                Ok(Read::Nothing) => {}
                _ => *open = false,
            },
            () = &mut timer => {
                // The next look: the end of the client's quiet if that is
                // all that is left, else the backoff's. A byte only moves
                // the quiet's end; the timer follows when it fires.
                let next = match quiet_from {
                    Some(t) if acknowledged => t,
                    _ => {
                        wait = (wait * 2).min(LAST_LOOK);
                        Instant::now() + wait
                    }
                };
                timer.as_mut().reset(next.min(deadline));
            }
        }
    }
}
