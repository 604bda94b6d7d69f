//! One inspected session: the client's connection, a connection to the
//! original destination, and the sans-IO engine between them.
//!
//! A session owns no read buffer: it waits until a side is readable, then
//! reads into its worker thread's buffer of `READ_BUF` bytes and hands the
//! bytes to the engine before it awaits anything else, so an idle session
//! holds its sockets, the engine's state (which keeps only the bytes of an
//! incomplete line) and its task. What the engine emits for one read is
//! written out before the next read, so a slow side slows the other down
//! (TCP backpressure) and a session holds at most the engine's own bound
//! (`SESSION_MEMORY_BOUND`) plus one read's worth of output.
//!
//! Closing never destroys what it was meant to deliver. The kernel answers
//! a close with a RST, and throws its send queue away, when the socket
//! still holds unread bytes or has SO_LINGER 0 (`reset`); the client then
//! misses the reply the close waited for (the server's `250` to a message
//! it received in full) and sends the message again: a duplicate. So every
//! close lingers (see [`super::linger`]): it reads and discards what the
//! client still sends until the client has acknowledged every byte sent to
//! it.

use std::{
    cell::RefCell,
    io::{ErrorKind, Read as _},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use inspector_esmtp::{AuditEvent, AuditKind, Close, Output, Peers, Phase, Session, audit};
use tokio::{
    io::{AsyncWriteExt, Interest},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    time::{Instant, sleep_until, timeout},
};

use super::{
    Shared,
    admission::{self, StressWatch, Ticket},
    linger::{Then, linger},
    upstream::{self, Mode},
};
use crate::observe::{
    esmtp::{ErrorReason, SessionOutcome},
    session::SessionTrace,
};

/// Bytes read from one side at a time.
pub const READ_BUF: usize = 16 * 1024;

thread_local! {
    /// The worker's read buffer (each worker is one thread): borrowed only
    /// between a read and the engine's taking of its bytes, never across an
    /// await.
    static READ: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_BUF].into_boxed_slice());
}

/// Runs `f` on the worker's read buffer.
pub(super) fn with_buffer<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    READ.with_borrow_mut(|b| f(b))
}

/// Outputs kept per worker for the engine to write into, so that a call
/// allocates nothing: one is taken for a call and the writes of what it
/// produced (across awaits), and given back after.
const SPARE_OUTPUTS: usize = 8;
/// Buffers past this capacity are not kept (an output rarely holds more
/// than a read).
const KEPT_OUTPUT: usize = 2 * READ_BUF;

thread_local! {
    static OUTPUTS: RefCell<Vec<Output>> = const { RefCell::new(Vec::new()) };
}

/// An empty output, one given back if there is one.
fn spare_output() -> Output {
    OUTPUTS.with_borrow_mut(Vec::pop).unwrap_or_default()
}

/// Keeps `out` for another call, unless enough are kept or it grew large.
fn give_back(out: Output) {
    if out.to_client.capacity() <= KEPT_OUTPUT && out.to_server.capacity() <= KEPT_OUTPUT {
        OUTPUTS.with_borrow_mut(|spare| {
            if spare.len() < SPARE_OUTPUTS {
                spare.push(out);
            }
        });
    }
}

/// What one read of a side that was readable brought.
pub(super) enum Read<T> {
    /// Bytes: their count, or what the engine made of them.
    Bytes(T),
    /// Nothing after all (a spurious wake-up).
    Nothing,
    /// The end of the stream, or an error.
    Closed,
}

/// One non-blocking read of `side` into `buf`. A read shorter than `buf`
/// has drained the socket, so it also forgets the socket's readiness, as
/// tokio's own `AsyncRead` does on epoll: the next wait is then for new
/// bytes (their edge sets it again), not a read that would find none.
/// Without that, every read was followed by one that failed with
/// `EAGAIN`, an extra syscall and loop per event. A FIN or an error stays
/// seen: tokio never forgets those.
pub(super) fn try_read(side: &TcpStream, buf: &mut [u8]) -> Read<usize> {
    let len = buf.len();
    let mut drained = 0;
    let read = side.try_io(Interest::READABLE, || {
        match (&*socket2::SockRef::from(side)).read(buf)? {
            n if n > 0 && n < len => {
                drained = n;
                Err(ErrorKind::WouldBlock.into())
            }
            n => Ok(n),
        }
    });
    match read {
        Ok(0) => Read::Closed,
        Ok(n) => Read::Bytes(n),
        Err(e) if e.kind() == ErrorKind::WouldBlock && drained > 0 => Read::Bytes(drained),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Read::Nothing,
        Err(_) => Read::Closed,
    }
}

/// Sent when the server cannot be reached.
const UNREACHABLE: &[u8] = b"421 4.4.1 Service not available, the server cannot be reached\r\n";
/// Sent between commands when the session times out.
const TIMED_OUT: &[u8] = b"421 4.4.2 Timeout, closing connection\r\n";
/// Sent between commands when the proxy stops.
const SHUTTING_DOWN: &[u8] = b"421 4.3.2 Service shutting down, closing connection\r\n";

/// Longest a close waits for the client to acknowledge what it was sent
/// (and, for a FIN, to stop sending), reading and discarding its bytes.
const LINGER: Duration = Duration::from_secs(5);
/// The same, for a connection refused before any session (over
/// `max-sessions`, the server unreachable): short, as those come in floods.
const REFUSE_LINGER: Duration = Duration::from_secs(2);

/// How a session ended, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed.
    Closed,
    /// The engine closed it on what a side sent (a policy's
    /// `drop-connection`, or a protocol violation).
    Dropped,
    Reset,
    Timeout(Phase),
    Shutdown,
    /// The server could not be reached.
    Unreachable,
    /// A write to one side failed.
    Broken,
    /// Closed between commands to give its slot to a client holding fewer
    /// sessions (fair admission).
    Evicted,
    /// The server did not take the client's identity (XCLIENT).
    Refused,
}

impl End {
    /// Why it ended in error, for `inspector_esmtp_session_errors_total`
    /// (a server that refused the client's identity counts as unreachable).
    pub fn error_reason(self) -> Option<ErrorReason> {
        match self {
            End::Unreachable | End::Refused => Some(ErrorReason::ServerUnreachable),
            End::Timeout(_) => Some(ErrorReason::Timeout),
            End::Broken => Some(ErrorReason::Reset),
            End::Closed | End::Shutdown | End::Evicted | End::Dropped | End::Reset => None,
        }
    }

    /// As the session record names it.
    pub fn name(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Dropped => "dropped",
            End::Reset => "reset",
            End::Timeout(_) => "timeout",
            End::Shutdown => "shutdown",
            End::Unreachable => "unreachable",
            End::Broken => "broken",
            End::Evicted => "evicted",
            End::Refused => "refused",
        }
    }

    /// As `inspector_esmtp_sessions_total{outcome}` counts it.
    pub fn outcome(self) -> SessionOutcome {
        match self {
            End::Closed | End::Shutdown | End::Evicted => SessionOutcome::Closed,
            End::Dropped => SessionOutcome::Dropped,
            End::Reset => SessionOutcome::Reset,
            End::Timeout(_) | End::Unreachable | End::Broken | End::Refused => {
                SessionOutcome::Error
            }
        }
    }
}

pub async fn run(
    client: TcpStream,
    peers: Peers,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    ticket: Ticket,
) -> End {
    let t = ticket.timeouts(shared.config.timeouts);
    // The session's record, and the id its policy records carry.
    let mut trace = SessionTrace::new(shared.esmtp.session_ids.next(), peers);
    let started = std::time::Instant::now();
    let opened = match shared.upstream.open(peers, t.connect).await {
        Ok(o) => {
            (shared.esmtp.timings.upstream_connect).observe(started.elapsed().as_secs_f64());
            o
        }
        Err(e) => {
            log::debug!("{}: cannot connect to the server: {e}", show(peers));
            ticket.release();
            trace.finish(&shared.esmtp.audit, None, false, End::Unreachable.name());
            return refuse(client, UNREACHABLE).await;
        }
    };
    let server = opened.stream;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut driver = Driver::new(client, server, peers, shared, shutdown, ticket, trace);
    driver.xclient_pending = opened.mode == Mode::Xclient;
    let end = driver.drive().await;
    let seen = driver.session.record();
    let tls = driver.session.is_opaque();
    driver
        .trace
        .finish(&driver.shared.esmtp.audit, Some(seen), tls, end.name());
    if end == End::Reset {
        // Close without a FIN first: dropping a write half would shut it
        // down; forgetting it leaves the close (with SO_LINGER 0: a RST) to
        // the read half.
        let Driver { cw, sw, .. } = driver;
        cw.forget();
        sw.forget();
    }
    end
}

/// Writes `reply` and closes (bounded by a short timeout), lingering so
/// that bytes the client sent first do not turn the close into a RST that
/// destroys the reply.
pub async fn refuse(mut client: TcpStream, reply: &[u8]) -> End {
    let deadline = Instant::now() + REFUSE_LINGER;
    let fin = timeout(Duration::from_secs(5), async {
        client.write_all(reply).await?;
        client.shutdown().await
    })
    .await;
    let mut open = true;
    linger(
        &client,
        &mut open,
        deadline,
        Then::Fin(matches!(fin, Ok(Ok(())))),
    )
    .await;
    End::Unreachable
}

fn show(p: Peers) -> String {
    format!("{} -> {}", p.client, p.server)
}

enum Event {
    /// The client's side is readable (or failed).
    Client(std::io::Result<()>),
    Server(std::io::Result<()>),
    Timeout,
    Shutdown,
    /// Stress mode turned on or off: the timeouts changed.
    Stress,
    Evicted,
}

struct Driver {
    cr: OwnedReadHalf,
    cw: OwnedWriteHalf,
    sr: OwnedReadHalf,
    sw: OwnedWriteHalf,
    peers: Peers,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    session: Session,
    client_open: bool,
    server_open: bool,
    stopping: bool,
    /// The engine decided to close on what a side sent.
    dropped: bool,
    /// The client closed its side when no close was under way: the session
    /// ends with the client's close (once the replies owed to its messages
    /// are relayed), not by the engine's decision.
    client_closed_first: bool,
    /// When the session last made progress: a byte from the server, or a
    /// client byte the engine did something with. The phase's timeout
    /// counts from here, so a client trickling the bytes of a command that
    /// never ends is not kept alive by them.
    last: Instant,
    /// The session's slot in the admission's table.
    ticket: Ticket,
    stress: StressWatch,
    /// `upstream-source = "xclient"`: the client is introduced to the
    /// server before the engine's first bytes for it.
    xclient_pending: bool,
    /// Server bytes read past the XCLIENT exchange, for the engine.
    server_leftover: Vec<u8>,
    /// The session's id and what its record needs.
    trace: SessionTrace,
}

impl Driver {
    fn new(
        client: TcpStream,
        server: TcpStream,
        peers: Peers,
        shared: Arc<Shared>,
        shutdown: watch::Receiver<bool>,
        ticket: Ticket,
        trace: SessionTrace,
    ) -> Self {
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        let session = shared.esmtp.new_session(peers);
        let stopping = *shutdown.borrow();
        Self {
            cr,
            cw,
            sr,
            sw,
            peers,
            shared,
            shutdown,
            session,
            client_open: true,
            server_open: true,
            stopping,
            dropped: false,
            client_closed_first: false,
            last: Instant::now(),
            stress: ticket.stress_watch(),
            ticket,
            xclient_pending: false,
            server_leftover: Vec::new(),
            trace,
        }
    }

    /// When the current phase times out: its limit after the last
    /// progress, and for a command line under way, `command-timeout` (the
    /// stress timeout under stress) after its first byte however the client
    /// trickles the rest.
    fn deadline(&self, phase: Phase) -> Instant {
        let idle = self.last + self.limit(phase);
        match self.session.command_started() {
            Some(start) => idle.min(Instant::from_std(start) + self.limit(Phase::Command)),
            None => idle,
        }
    }

    /// The timeout of `phase` now (shorter under stress).
    fn limit(&self, phase: Phase) -> Duration {
        let t = self.ticket.timeouts(self.shared.config.timeouts);
        match phase {
            Phase::Greeting => t.greeting,
            Phase::Idle | Phase::Command => t.command,
            // Closing waits for the server's reply to a complete message.
            Phase::Data | Phase::Closing => t.data,
            Phase::Opaque => t.idle,
        }
    }

    async fn drive(&mut self) -> End {
        // One timer for the session's life, moved only when its deadline
        // comes closer or it fires early: progress pushes the deadline back
        // at every event, and re-arming a timer per event would cost a
        // timer-wheel update each time.
        let mut armed = self.deadline(self.session.phase());
        let timer = sleep_until(armed);
        tokio::pin!(timer);
        loop {
            let phase = self.session.phase();
            if self.stopping && matches!(phase, Phase::Idle | Phase::Greeting) {
                let reply = if phase == Phase::Idle {
                    SHUTTING_DOWN
                } else {
                    &[][..]
                };
                self.write_client(reply).await;
                self.close(Close::Fin).await;
                return End::Shutdown;
            }
            let deadline = self.deadline(phase);
            if deadline < armed {
                armed = deadline;
                timer.as_mut().reset(armed);
            }
            // Between commands the session may be evicted for another
            // client; nowhere else (no message is ever cut).
            let idle = phase == Phase::Idle;
            self.ticket.set_idle(idle.then(|| self.last.into_std()));
            self.ticket.set_memory(self.session.heap_bytes());
            if !self.server_leftover.is_empty() {
                let bytes = std::mem::take(&mut self.server_leftover);
                let out = self.on_data(false, &bytes, std::time::Instant::now());
                if let Some(end) = self.apply(out).await {
                    return end;
                }
                continue;
            }
            let event = tokio::select! {
                r = self.cr.readable(), if self.client_open => Event::Client(r),
                r = self.sr.readable(), if self.server_open => Event::Server(r),
                () = &mut timer => Event::Timeout,
                _ = self.shutdown.changed(), if !self.stopping => Event::Shutdown,
                () = self.stress.changed() => Event::Stress,
                () = self.ticket.evicted(), if idle => Event::Evicted,
            };
            self.ticket.set_idle(None);
            let now = std::time::Instant::now();
            let out = match event {
                Event::Shutdown => {
                    self.stopping = true;
                    continue;
                }
                Event::Stress => continue,
                Event::Evicted => {
                    log::info!(
                        "{}: closed between commands for a client holding fewer sessions",
                        show(self.peers)
                    );
                    let _ = timeout(
                        Duration::from_secs(5),
                        self.cw.write_all(admission::EVICTED),
                    )
                    .await;
                    self.close(Close::Fin).await;
                    return End::Evicted;
                }
                Event::Timeout if Instant::now() < self.deadline(phase) => {
                    // Fired at a deadline progress has pushed back since.
                    armed = self.deadline(phase);
                    timer.as_mut().reset(armed);
                    continue;
                }
                Event::Timeout => {
                    log::debug!(
                        "{}: no traffic for {:?} ({phase:?}): closing",
                        show(self.peers),
                        self.limit(phase)
                    );
                    if phase == Phase::Idle {
                        self.write_client(TIMED_OUT).await;
                    }
                    self.close(Close::Fin).await;
                    return End::Timeout(phase);
                }
                Event::Client(r) => match r.map(|()| self.read_side(true, now)) {
                    Ok(Read::Bytes(out)) => {
                        // Bytes the engine only buffered (part of a command
                        // line, or held while a reply is owed) are no progress.
                        if !out.to_server.is_empty()
                            || !out.to_client.is_empty()
                            || out.close.is_some()
                        {
                            self.last = Instant::now();
                        }
                        out
                    }
                    Ok(Read::Nothing) => continue,
                    Err(_) | Ok(Read::Closed) => {
                        self.client_open = false;
                        self.client_closed_first = phase != Phase::Closing;
                        if self.session.is_opaque() {
                            // TLS: pass the half-close on, keep the other way.
                            let _ = self.sw.shutdown().await;
                            if !self.server_open {
                                return End::Closed;
                            }
                            continue;
                        }
                        self.eof(true, now)
                    }
                },
                Event::Server(r) => match r.map(|()| self.read_side(false, now)) {
                    Ok(Read::Bytes(out)) => {
                        self.last = Instant::now();
                        out
                    }
                    Ok(Read::Nothing) => continue,
                    Err(_) | Ok(Read::Closed) => {
                        self.server_open = false;
                        if self.session.is_opaque() {
                            let _ = self.cw.shutdown().await;
                            if !self.client_open {
                                return End::Closed;
                            }
                            continue;
                        }
                        self.eof(false, now)
                    }
                },
            };
            if let Some(end) = self.apply(out).await {
                return end;
            }
        }
    }

    /// Reads what the client's (`true`) or the server's side has, through
    /// the worker's buffer, into the engine.
    fn read_side(&mut self, from_client: bool, now: std::time::Instant) -> Read<Output> {
        with_buffer(|buf| {
            let side = if from_client { &self.cr } else { &self.sr }.as_ref();
            match try_read(side, buf) {
                Read::Bytes(n) => Read::Bytes(self.on_data(from_client, &buf[..n], now)),
                Read::Nothing => Read::Nothing,
                Read::Closed => Read::Closed,
            }
        })
    }

    /// Feeds bytes from the client (`true`) or the server to the engine,
    /// noting when it decides to close on them. A close that completes the
    /// client's own (its half-close after the final dot, once the reply is
    /// relayed) is no drop, unless the engine found an anomaly meanwhile.
    fn on_data(&mut self, from_client: bool, bytes: &[u8], now: std::time::Instant) -> Output {
        let mut out = spare_output();
        if from_client {
            self.session.on_client_data(bytes, now, &mut out);
        } else {
            self.session.on_server_data(bytes, now, &mut out);
        }
        if out.close == Some(Close::Fin) {
            self.dropped |= !self.client_closed_first || out.audit.iter().any(is_drop);
        }
        out
    }

    /// The client (`true`) or the server closed its side.
    fn eof(&mut self, from_client: bool, now: std::time::Instant) -> Output {
        let mut out = spare_output();
        if from_client {
            self.session.on_client_eof(now, &mut out);
        } else {
            self.session.on_server_eof(now, &mut out);
        }
        out
    }

    /// Sends what the engine produced, and closes if it says so; the
    /// output is kept for another call.
    async fn apply(&mut self, mut out: Output) -> Option<End> {
        let end = self.send(&mut out).await;
        give_back(out);
        end
    }

    async fn send(&mut self, out: &mut Output) -> Option<End> {
        if out.close.is_some()
            || self.session.phase() == Phase::Closing
            || self.session.quit_answered()
        {
            // Only closing (or QUIT answered): the slot is free before the last reply goes
            // out. Once the client has it, it may open its next session,
            // on another worker, while this one's thread has not come back
            // from the write yet.
            self.ticket.release();
        }
        // Never blocks: a slow sink drops (and counts) records.
        self.trace
            .audit(&self.shared.esmtp.audit, std::mem::take(&mut out.audit));
        if !out.to_server.is_empty() && self.server_open && self.xclient_pending {
            self.xclient_pending = false;
            if let Some(end) = self.introduce(&out.to_server).await {
                return Some(end);
            }
        }
        if !out.to_server.is_empty() && self.server_open {
            let limit = self.limit(self.session.phase());
            if !matches!(
                timeout(limit, self.sw.write_all(&out.to_server)).await,
                Ok(Ok(()))
            ) {
                // The server is gone: the engine decides what the client
                // gets (never a success for a message it did not confirm).
                self.server_open = false;
                let more = self.eof(false, std::time::Instant::now());
                self.write_client(&out.to_client).await;
                self.write_client(&more.to_client).await;
                self.close(more.close.unwrap_or(Close::Fin)).await;
                return Some(End::Broken);
            }
        }
        if !out.to_client.is_empty() && !self.write_client(&out.to_client).await {
            self.close(Close::Fin).await;
            return Some(End::Broken);
        }
        match out.close {
            Some(how) => {
                self.close(how).await;
                Some(match how {
                    Close::Fin if self.dropped => End::Dropped,
                    Close::Fin => End::Closed,
                    Close::Reset => End::Reset,
                })
            }
            None => None,
        }
    }

    /// XCLIENT before the engine's first bytes for the server (`held`, the
    /// client's first command, sent by the caller afterwards); on a refusal
    /// the client gets its reply and the session closes.
    async fn introduce(&mut self, held: &[u8]) -> Option<End> {
        let limit = self.limit(Phase::Command);
        let helo = self.shared.upstream.helo_name.clone();
        match upstream::xclient(&mut self.sr, &mut self.sw, self.peers, held, &helo, limit).await {
            Ok(leftover) => {
                self.server_leftover = leftover;
                None
            }
            Err(refusal) => {
                log::warn!("{}: {}", show(self.peers), refusal.why);
                self.write_client(&refusal.to_client).await;
                self.close(Close::Fin).await;
                Some(End::Refused)
            }
        }
    }

    async fn write_client(&mut self, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return true;
        }
        let limit = self.limit(self.session.phase());
        matches!(timeout(limit, self.cw.write_all(bytes)).await, Ok(Ok(())))
    }

    /// Ends both connections, once the client has what it was sent (see
    /// [`linger`]). A FIN follows the last byte; a reset (SO_LINGER 0,
    /// which discards the send queue) waits until the client acknowledged
    /// it, so the reply to a message the close waited for is never lost.
    async fn close(&mut self, how: Close) {
        self.ticket.release();
        let deadline = Instant::now() + LINGER;
        let client = self.cr.as_ref();
        if how == Close::Reset {
            linger(client, &mut self.client_open, deadline, Then::Reset).await;
            for sock in [self.cw.as_ref(), self.sw.as_ref()] {
                let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
            }
            return;
        }
        // A shutdown only queues the FIN: it never waits.
        let fin = self.cw.shutdown().await.is_ok();
        let _ = self.sw.shutdown().await;
        linger(client, &mut self.client_open, deadline, Then::Fin(fin)).await;
    }
}

/// Whether an audit record is of the engine dropping the session.
fn is_drop(event: &AuditEvent) -> bool {
    match &event.kind {
        AuditKind::MaliciousAddress { .. } => true,
        AuditKind::Classification(c) => c.verdict == audit::Verdict::Dropped,
        _ => false,
    }
}

/// The destination the client asked for, as the kernel kept it on the
/// accepted (transparent) socket.
pub fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    stream.local_addr().map(|a| match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        a => a,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_have_a_reason_and_the_rest_none() {
        assert_eq!(
            End::Unreachable.error_reason(),
            Some(ErrorReason::ServerUnreachable)
        );
        assert_eq!(
            End::Timeout(Phase::Idle).error_reason(),
            Some(ErrorReason::Timeout)
        );
        assert_eq!(End::Broken.error_reason(), Some(ErrorReason::Reset));
        for end in [End::Closed, End::Shutdown, End::Dropped, End::Reset] {
            assert_eq!(end.error_reason(), None, "{end:?}");
            assert_ne!(end.outcome(), SessionOutcome::Error);
        }
    }
}
