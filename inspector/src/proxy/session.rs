//! One inspected session: the client's connection, a connection to the
//! original destination, and the sans-IO engine between them.
//!
//! Reads on both sides go into fixed buffers of `READ_BUF` bytes; what the
//! engine emits for one read is written out before the next read, so a
//! slow side slows the other down (TCP backpressure) and a session holds at
//! most two read buffers plus the engine's own bound
//! (`SESSION_MEMORY_BOUND`) plus one read's worth of output.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use inspector_esmtp::{Close, Output, Peers, Phase, Session};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    time::{Instant, sleep_until, timeout},
};

use super::Shared;
use crate::{config::UpstreamSource, observe::esmtp::SessionOutcome};

/// Bytes read from one side at a time.
pub const READ_BUF: usize = 16 * 1024;

/// Sent when the server cannot be reached.
const UNREACHABLE: &[u8] = b"421 4.4.1 Service not available, the server cannot be reached\r\n";
/// Sent between commands when the session times out.
const TIMED_OUT: &[u8] = b"421 4.4.2 Timeout, closing connection\r\n";
/// Sent between commands when the proxy stops.
const SHUTTING_DOWN: &[u8] = b"421 4.3.2 Service shutting down, closing connection\r\n";

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
}

impl End {
    /// As `inspector_esmtp_sessions_total{outcome}` counts it.
    pub fn outcome(self) -> SessionOutcome {
        match self {
            End::Closed | End::Shutdown => SessionOutcome::Closed,
            End::Dropped => SessionOutcome::Dropped,
            End::Reset => SessionOutcome::Reset,
            End::Timeout(_) | End::Unreachable | End::Broken => SessionOutcome::Error,
        }
    }
}

pub async fn run(
    client: TcpStream,
    peers: Peers,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> End {
    let t = shared.config.timeouts;
    let source = shared.config.upstream_source;
    let server = match timeout(t.connect, connect(peers, source)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            log::info!("{}: cannot connect to the server: {e}", show(peers));
            return refuse(client, UNREACHABLE).await;
        }
        Err(_) => {
            log::info!("{}: connecting to the server timed out", show(peers));
            return refuse(client, UNREACHABLE).await;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut driver = Driver::new(client, server, peers, shared, shutdown);
    let end = driver.drive().await;
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

/// Connects to the original destination, from the gateway's address or
/// (transparently) from the client's.
async fn connect(peers: Peers, source: UpstreamSource) -> std::io::Result<TcpStream> {
    if source == UpstreamSource::Gateway {
        return TcpStream::connect(peers.server).await;
    }
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(peers.server),
        socket2::Type::STREAM,
        None,
    )?;
    if peers.server.is_ipv6() {
        socket.set_ip_transparent_v6(true)?;
    } else {
        socket.set_ip_transparent_v4(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(peers.client.ip(), 0).into())?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    socket.connect(peers.server).await
}

/// Writes `reply` and closes (bounded by a short timeout).
pub async fn refuse(mut client: TcpStream, reply: &[u8]) -> End {
    let _ = timeout(Duration::from_secs(5), async {
        client.write_all(reply).await?;
        client.shutdown().await
    })
    .await;
    End::Unreachable
}

fn show(p: Peers) -> String {
    format!("{} -> {}", p.client, p.server)
}

enum Event {
    Client(std::io::Result<usize>),
    Server(std::io::Result<usize>),
    Timeout,
    Shutdown,
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
    last: Instant,
}

impl Driver {
    fn new(
        client: TcpStream,
        server: TcpStream,
        peers: Peers,
        shared: Arc<Shared>,
        shutdown: watch::Receiver<bool>,
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
            last: Instant::now(),
        }
    }

    fn limit(&self, phase: Phase) -> Duration {
        let t = self.shared.config.timeouts;
        match phase {
            Phase::Greeting => t.greeting,
            Phase::Idle | Phase::Command => t.command,
            // Closing waits for the server's reply to a complete message.
            Phase::Data | Phase::Closing => t.data,
            Phase::Opaque => t.idle,
        }
    }

    async fn drive(&mut self) -> End {
        let mut cbuf = vec![0u8; READ_BUF];
        let mut sbuf = vec![0u8; READ_BUF];
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
            let deadline = self.last + self.limit(phase);
            let event = tokio::select! {
                r = self.cr.read(&mut cbuf), if self.client_open => Event::Client(r),
                r = self.sr.read(&mut sbuf), if self.server_open => Event::Server(r),
                () = sleep_until(deadline) => Event::Timeout,
                _ = self.shutdown.changed(), if !self.stopping => Event::Shutdown,
            };
            let now = std::time::Instant::now();
            let out = match event {
                Event::Shutdown => {
                    self.stopping = true;
                    continue;
                }
                Event::Timeout => {
                    log::info!(
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
                Event::Client(Ok(n)) if n > 0 => {
                    self.last = Instant::now();
                    self.on_data(true, &cbuf[..n], now)
                }
                Event::Client(_) => {
                    self.client_open = false;
                    if self.session.is_opaque() {
                        // TLS: pass the half-close on, keep the other way.
                        let _ = self.sw.shutdown().await;
                        if !self.server_open {
                            return End::Closed;
                        }
                        continue;
                    }
                    self.session.on_client_eof(now)
                }
                Event::Server(Ok(n)) if n > 0 => {
                    self.last = Instant::now();
                    self.on_data(false, &sbuf[..n], now)
                }
                Event::Server(_) => {
                    self.server_open = false;
                    if self.session.is_opaque() {
                        let _ = self.cw.shutdown().await;
                        if !self.client_open {
                            return End::Closed;
                        }
                        continue;
                    }
                    self.session.on_server_eof(now)
                }
            };
            if let Some(end) = self.apply(out).await {
                return end;
            }
        }
    }

    /// Feeds bytes from the client (`true`) or the server to the engine,
    /// noting when it decides to close on them.
    fn on_data(&mut self, from_client: bool, bytes: &[u8], now: std::time::Instant) -> Output {
        let out = if from_client {
            self.session.on_client_data(bytes, now)
        } else {
            self.session.on_server_data(bytes, now)
        };
        self.dropped |= out.close == Some(Close::Fin);
        out
    }

    /// Sends what the engine produced, and closes if it says so.
    async fn apply(&mut self, mut out: Output) -> Option<End> {
        // Never blocks: a slow sink drops (and counts) records.
        self.shared.esmtp.audit_all(std::mem::take(&mut out.audit));
        if !out.to_server.is_empty() && self.server_open {
            let limit = self.limit(self.session.phase());
            if !matches!(
                timeout(limit, self.sw.write_all(&out.to_server)).await,
                Ok(Ok(()))
            ) {
                // The server is gone: the engine decides what the client
                // gets (never a success for a message it did not confirm).
                self.server_open = false;
                let more = self.session.on_server_eof(std::time::Instant::now());
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

    async fn write_client(&mut self, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return true;
        }
        let limit = self.limit(self.session.phase());
        matches!(timeout(limit, self.cw.write_all(bytes)).await, Ok(Ok(())))
    }

    async fn close(&mut self, how: Close) {
        if how == Close::Reset {
            for sock in [self.cw.as_ref(), self.sw.as_ref()] {
                let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
            }
            return;
        }
        let grace = Duration::from_secs(5);
        let _ = timeout(grace, self.cw.shutdown()).await;
        let _ = timeout(grace, self.sw.shutdown()).await;
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
