//! How the proxy opens its connection to the server and introduces the
//! client, so that the server sees the real client and not the gateway
//! (docs/proxy.md, "What the server sees"):
//!
//! - `client` (transparent): the connection leaves from the client's own
//!   address (`IP_TRANSPARENT`). The server's answers, addressed to the
//!   client, must come back through the gateway, where the return steering
//!   (`inspector_steer_return` on the interface of the route to the server)
//!   delivers them to the proxy. The default (`auto`) uses it for every
//!   server whose return path answers, and the gateway's address, loudly,
//!   for a server whose return path does not.
//! - `xclient`: from the gateway's address; after the server's greeting
//!   and before the client's first command, the proxy sends its own EHLO
//!   and `XCLIENT ADDR=… PORT=… NAME=… HELO=… PROTO=…` and absorbs the
//!   server's new greeting; the engine never sees that exchange, so the
//!   client sees one session.
//! - `proxy`: from the gateway's address, a PROXY protocol v2 header first.
//! - `gateway`: from the gateway's address, nothing more: the server sees
//!   one address for every client.
//!
//! [`Upstream`] holds what the daemon knows of each server's return path,
//! which `inspector status` shows.

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::Duration,
};

use inspector_esmtp::Peers;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::{mpsc, oneshot},
    time::timeout,
};

use crate::config::{GATEWAY_WARNING, UpstreamSource};

/// How long a connection from a client's address may wait for the
/// server's first answer (SYN-ACK or RST) before the return path counts as
/// broken: the probes at start, and the first session to a server the
/// policy does not list.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest reply the proxy reads for itself (its EHLO, XCLIENT).
const MAX_REPLY: usize = 64 * 1024;

/// Sent to the client when the server does not take the client's identity
/// with XCLIENT (not offered to the gateway, or refused): the client's MTA
/// keeps the message and retries, and the log says what the server lacks.
pub const XCLIENT_UNAVAILABLE: &[u8] =
    b"421 4.3.5 Service not available: the mail server does not accept the client's identity from the gateway (XCLIENT)\r\n";

/// The mode one session's upstream connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Client,
    Gateway,
    Xclient,
    Proxy,
}

impl Mode {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Gateway => "gateway",
            Self::Xclient => "xclient",
            Self::Proxy => "proxy",
        }
    }

    /// What the server sees in this mode.
    pub const fn server_sees(self) -> &'static str {
        match self {
            Self::Client => "the client's address (transparent)",
            Self::Gateway => "the gateway's address for every client",
            Self::Xclient => "the client's address, port and HELO name through XCLIENT",
            Self::Proxy => "the client's address and port through a PROXY v2 header",
        }
    }
}

/// Where a server's return path stands (transparent modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathState {
    /// Not needed (the mode does not connect from the client's address).
    None,
    /// Not probed yet: the next session's connection is the probe.
    Unverified,
    /// A connection from a client's (or the probe's) address was answered.
    Verified,
    /// It was not: the server's answers to clients do not come back
    /// through this gateway.
    Failed,
}

/// What the daemon knows of one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServerPath {
    pub address: IpAddr,
    /// The interface of the route to it (where the return steering runs).
    pub interface: Option<String>,
    /// The mode its sessions use now.
    pub mode: Mode,
    pub state: PathState,
    /// Why, in words.
    pub reason: String,
    /// A protected server of the policy (probed at start), or learned from
    /// a session.
    pub listed: bool,
}

/// The upstream mode in force, as the stats socket sends it and
/// `inspector status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct UpstreamStatus {
    /// As the policy says it (`auto` when it does not).
    pub configured: UpstreamSource,
    /// What sessions to a server not listed in `servers` use.
    pub mode: Mode,
    pub reason: String,
    /// Set when some server sees the gateway's address for every client.
    pub warning: Option<String>,
    pub servers: Vec<ServerPath>,
}

/// A request to the daemon: make the return path to a server the proxy
/// has not seen yet (look up its route, attach the return steering there).
pub struct Learn {
    pub server: IpAddr,
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// The proxy's side of the upstream: the configured mode, each server's
/// return path, and the channel to the daemon for servers seen the first
/// time.
pub struct Upstream {
    configured: UpstreamSource,
    /// The gateway's name, for its own EHLO (xclient).
    pub helo_name: String,
    learn: Option<mpsc::Sender<Learn>>,
    state: Mutex<State>,
}

struct State {
    mode: Mode,
    reason: String,
    servers: HashMap<IpAddr, ServerPath>,
}

/// An open upstream connection and the mode it was opened in.
pub struct Opened {
    pub stream: TcpStream,
    pub mode: Mode,
}

impl Upstream {
    /// `learn`: where to ask for the return steering of servers seen for
    /// the first time (transparent modes).
    pub fn new(configured: UpstreamSource, learn: Option<mpsc::Sender<Learn>>) -> Self {
        let (mode, reason) = match configured {
            UpstreamSource::Auto => (
                Mode::Client,
                "the default: transparent for each server whose return path answers \
                 (the protected servers are probed at start, others by their first session), \
                 the gateway's address for a server whose return path does not"
                    .to_string(),
            ),
            UpstreamSource::Client => (
                Mode::Client,
                "upstream-source = \"client\": transparent; a server whose return path \
                 does not answer refuses the session"
                    .to_string(),
            ),
            UpstreamSource::Gateway => (Mode::Gateway, "upstream-source = \"gateway\"".to_string()),
            UpstreamSource::Xclient => (
                Mode::Xclient,
                "upstream-source = \"xclient\": the server must offer XCLIENT to the gateway"
                    .to_string(),
            ),
            UpstreamSource::Proxy => (
                Mode::Proxy,
                "upstream-source = \"proxy\": the server must expect a PROXY v2 header".to_string(),
            ),
        };
        Self {
            configured,
            helo_name: hostname(),
            learn,
            state: Mutex::new(State {
                mode,
                reason,
                servers: HashMap::new(),
            }),
        }
    }

    pub fn configured(&self) -> UpstreamSource {
        self.configured
    }

    fn transparent(&self) -> bool {
        matches!(
            self.configured,
            UpstreamSource::Auto | UpstreamSource::Client
        )
    }

    /// Records what the daemon found for a server (at start).
    pub fn set_server(&self, path: ServerPath) {
        let mut state = self.state.lock().unwrap();
        state.servers.insert(path.address, path);
    }

    pub fn server(&self, addr: IpAddr) -> Option<ServerPath> {
        self.state.lock().unwrap().servers.get(&addr).cloned()
    }

    pub fn status(&self) -> UpstreamStatus {
        let state = self.state.lock().unwrap();
        let mut servers: Vec<ServerPath> = state.servers.values().cloned().collect();
        servers.sort_by_key(|s| s.address);
        let gateway: Vec<String> = servers
            .iter()
            .filter(|s| s.mode == Mode::Gateway)
            .map(|s| s.address.to_string())
            .collect();
        let warning = if state.mode == Mode::Gateway {
            Some(GATEWAY_WARNING.to_string())
        } else if !gateway.is_empty() {
            Some(format!(
                "{} fell back to the gateway's address: {GATEWAY_WARNING}",
                gateway.join(", ")
            ))
        } else {
            None
        };
        UpstreamStatus {
            configured: self.configured,
            mode: state.mode,
            reason: state.reason.clone(),
            warning,
            servers,
        }
    }

    /// Opens the connection to `peers.server` in the mode in force for it:
    /// transparent (probing the return path if it is not verified yet),
    /// from the gateway, or from the gateway with a PROXY v2 header written.
    /// (XCLIENT comes later, once the client's first command is known; see
    /// [`xclient`].)
    pub async fn open(&self, peers: Peers, connect_timeout: Duration) -> std::io::Result<Opened> {
        let mode = match self.configured {
            UpstreamSource::Gateway => Mode::Gateway,
            UpstreamSource::Xclient => Mode::Xclient,
            UpstreamSource::Proxy => Mode::Proxy,
            UpstreamSource::Auto | UpstreamSource::Client => {
                return self.open_transparent(peers, connect_timeout).await;
            }
        };
        let mut stream = bounded(connect_timeout, TcpStream::connect(peers.server)).await?;
        if mode == Mode::Proxy {
            bounded(connect_timeout, stream.write_all(&proxy_v2_header(peers))).await?;
        }
        Ok(Opened { stream, mode })
    }

    async fn open_transparent(
        &self,
        peers: Peers,
        connect_timeout: Duration,
    ) -> std::io::Result<Opened> {
        let server = peers.server.ip();
        let known = match self.server(server) {
            Some(path) => path,
            None => self.learn(server).await,
        };
        if known.mode == Mode::Gateway {
            let stream = bounded(connect_timeout, TcpStream::connect(peers.server)).await?;
            return Ok(Opened {
                stream,
                mode: Mode::Gateway,
            });
        }
        if known.state == PathState::Verified {
            let stream = bounded(
                connect_timeout,
                connect_from(peers.client.ip(), peers.server),
            )
            .await?;
            return Ok(Opened {
                stream,
                mode: Mode::Client,
            });
        }
        // This connection is the probe.
        match timeout(
            PROBE_TIMEOUT.min(connect_timeout),
            connect_from(peers.client.ip(), peers.server),
        )
        .await
        {
            Ok(Ok(stream)) => {
                self.verified(
                    server,
                    &format!("a session from {} was answered", peers.client.ip()),
                );
                Ok(Opened {
                    stream,
                    mode: Mode::Client,
                })
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                // The server's RST came back: the path works, the server
                // does not listen.
                self.verified(
                    server,
                    &format!(
                        "a session from {} was answered (refused)",
                        peers.client.ip()
                    ),
                );
                Err(e)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => self.failed(peers, connect_timeout).await,
        }
    }

    /// Asks the daemon to look up the route to `server` and attach the
    /// return steering there; records the server as unverified.
    async fn learn(&self, server: IpAddr) -> ServerPath {
        let interface = match &self.learn {
            Some(tx) => {
                let (reply, rx) = oneshot::channel();
                let asked = tx.send(Learn { server, reply }).await.is_ok();
                match rx.await {
                    Ok(Ok(iface)) if asked => Some(iface),
                    Ok(Err(e)) => {
                        log::warn!("{server}: no return steering: {e}");
                        None
                    }
                    _ => None,
                }
            }
            None => None,
        };
        let mut state = self.state.lock().unwrap();
        state
            .servers
            .entry(server)
            .or_insert_with(|| ServerPath {
                address: server,
                interface,
                mode: Mode::Client,
                state: PathState::Unverified,
                reason: "not probed yet: its first session is the probe".to_string(),
                listed: false,
            })
            .clone()
    }

    fn verified(&self, server: IpAddr, how: &str) {
        let mut state = self.state.lock().unwrap();
        if let Some(path) = state.servers.get_mut(&server)
            && path.state != PathState::Verified
        {
            log::info!(
                "{server}: return path verified ({how}): the server sees each client's address"
            );
            path.state = PathState::Verified;
            path.mode = Mode::Client;
            path.reason = format!("return path verified: {how}");
        }
    }

    /// A connection from the client's address got no answer in time.
    async fn failed(&self, peers: Peers, connect_timeout: Duration) -> std::io::Result<Opened> {
        let server = peers.server.ip();
        let why = format!(
            "a connection from the client's address {} got no answer within {:?}: \
             the server's route to the clients does not go through this gateway",
            peers.client.ip(),
            PROBE_TIMEOUT.min(connect_timeout)
        );
        if self.configured == UpstreamSource::Client {
            log::warn!("{server}: {why} (upstream-source = \"client\": the session is refused)");
            self.mark(server, Mode::Client, PathState::Failed, &why);
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, why));
        }
        // The default: the gateway's address, if the server answers that.
        let stream = bounded(connect_timeout, TcpStream::connect(peers.server)).await?;
        log::warn!(
            "{server}: {why}; its sessions now leave from the gateway's address: {GATEWAY_WARNING}"
        );
        self.mark(server, Mode::Gateway, PathState::Failed, &why);
        Ok(Opened {
            stream,
            mode: Mode::Gateway,
        })
    }

    fn mark(&self, server: IpAddr, mode: Mode, path: PathState, reason: &str) {
        let mut state = self.state.lock().unwrap();
        if let Some(p) = state.servers.get_mut(&server) {
            p.mode = mode;
            p.state = path;
            p.reason = reason.to_string();
        }
    }

    /// Whether sessions connect from the clients' addresses at all.
    pub fn uses_client_addresses(&self) -> bool {
        self.transparent()
    }
}

async fn bounded<T>(
    limit: Duration,
    f: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {limit:?}"),
        )),
    }
}

/// Connects to `server` from `source`, an address this host need not own
/// (`IP_TRANSPARENT`).
pub async fn connect_from(source: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    // Non-blocking from its creation: two `fcntl` calls fewer a session.
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(server),
        socket2::Type::STREAM.nonblocking(),
        None,
    )?;
    if server.is_ipv6() {
        socket.set_ip_transparent_v6(true)?;
    } else {
        socket.set_ip_transparent_v4(true)?;
    }
    socket.bind(&SocketAddr::new(source, 0).into())?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    socket.connect(server).await
}

/// What a probe of a server's return path found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The server answered a connection from the probe address (it
    /// accepted it, or refused it with an RST that came back).
    Answered(&'static str),
    /// No answer within [`PROBE_TIMEOUT`].
    NoAnswer,
    /// The connection could not even be tried.
    Error(String),
}

/// Connects from `source` (not one of this host's addresses, on the
/// clients' side) to `server` and closes again: the server's answer
/// reaches the gateway only if its route to `source` goes through it and
/// the return steering delivers it.
pub async fn probe(source: IpAddr, server: SocketAddr) -> Probe {
    match timeout(PROBE_TIMEOUT, connect_from(source, server)).await {
        Ok(Ok(stream)) => {
            drop(stream);
            Probe::Answered("accepted")
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Probe::Answered("refused: nothing listens there yet")
        }
        Ok(Err(e)) => Probe::Error(e.to_string()),
        Err(_) => Probe::NoAnswer,
    }
}

/// An address to probe from: on the clients' side (in one of `nets`, the
/// addresses and prefixes of the inspected interfaces), of `server`'s
/// family, not one of this host's (`is_local`): the highest host address of
/// the first such prefix that has one free, counting down. A real host
/// there is not disturbed: the probe's answer is delivered to the gateway.
pub fn probe_source(
    nets: &[(IpAddr, u8)],
    server: IpAddr,
    is_local: impl Fn(IpAddr) -> bool,
) -> Option<IpAddr> {
    for &(addr, prefix) in nets {
        let candidates: Vec<IpAddr> = match (addr, server) {
            (IpAddr::V4(a), IpAddr::V4(_)) if prefix <= 29 => {
                let host_bits = 32 - u32::from(prefix);
                let net = u32::from(a) & !((1u64 << host_bits) as u32).wrapping_sub(1);
                let top = net | ((1u64 << host_bits) - 1) as u32;
                // Below the broadcast address.
                (2..10).map(|i| IpAddr::V4((top - i + 1).into())).collect()
            }
            (IpAddr::V6(a), IpAddr::V6(_)) if prefix <= 120 => {
                let host_bits = 128 - u32::from(prefix);
                let mask = if host_bits == 128 {
                    u128::MAX
                } else {
                    (1u128 << host_bits) - 1
                };
                let top = (u128::from(a) & !mask) | mask;
                (1..9).map(|i| IpAddr::V6((top - i).into())).collect()
            }
            _ => continue,
        };
        if let Some(c) = candidates
            .into_iter()
            .find(|c| !nets.iter().any(|(a, _)| a == c) && !is_local(*c))
        {
            return Some(c);
        }
    }
    None
}

/// The PROXY protocol v2 header for `peers` (`PROXY` command, TCP over the
/// peers' family; an IPv4 peer beside an IPv6 one is sent IPv4-mapped).
pub fn proxy_v2_header(peers: Peers) -> Vec<u8> {
    const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
    let mut out = SIGNATURE.to_vec();
    out.push(0x21); // version 2, PROXY
    match (peers.client.ip(), peers.server.ip()) {
        (IpAddr::V4(c), IpAddr::V4(s)) => {
            out.push(0x11); // TCP over IPv4
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&c.octets());
            out.extend_from_slice(&s.octets());
        }
        (c, s) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            out.push(0x21); // TCP over IPv6
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(c).octets());
            out.extend_from_slice(&v6(s).octets());
        }
    }
    out.extend_from_slice(&peers.client.port().to_be_bytes());
    out.extend_from_slice(&peers.server.port().to_be_bytes());
    out
}

/// RFC 3461 xtext: `+HH` for `+`, `=` and anything outside `!`..`~`.
pub fn xtext(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            let _ = write!(out, "+{b:02X}");
        }
    }
    out
}

/// The XCLIENT attribute value of an address: `IPV6:` before IPv6 ones.
fn xclient_addr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("IPV6:{a}"),
        },
    }
}

/// The client's first command, as far as XCLIENT needs it: its HELO name
/// and protocol when it is EHLO or HELO.
fn first_command(held: &[u8]) -> (Option<&[u8]>, Option<&'static str>) {
    let line = held.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let verb = words.next().unwrap_or_default();
    let proto = if verb.eq_ignore_ascii_case(b"EHLO") {
        Some("ESMTP")
    } else if verb.eq_ignore_ascii_case(b"HELO") {
        Some("SMTP")
    } else {
        return (None, None);
    };
    (words.next(), proto)
}

/// `XCLIENT …` for `peers` with the attributes the server offered.
pub fn xclient_command(peers: Peers, held: &[u8], offered: &[String]) -> Vec<u8> {
    let offers = |a: &str| offered.iter().any(|o| o.eq_ignore_ascii_case(a));
    let (helo, proto) = first_command(held);
    let mut attrs = Vec::new();
    if offers("NAME") {
        // The proxy does no reverse lookup of its own.
        attrs.push("NAME=[UNAVAILABLE]".to_string());
    }
    attrs.push(format!(
        "ADDR={}",
        xtext(xclient_addr(peers.client.ip()).as_bytes())
    ));
    if offers("PORT") {
        attrs.push(format!("PORT={}", peers.client.port()));
    }
    if offers("HELO")
        && let Some(helo) = helo
    {
        let value = xtext(helo);
        // Postfix takes at most 255 characters.
        if value.len() <= 255 {
            attrs.push(format!("HELO={value}"));
        }
    }
    if offers("PROTO")
        && let Some(proto) = proto
    {
        attrs.push(format!("PROTO={proto}"));
    }
    format!("XCLIENT {}\r\n", attrs.join(" ")).into_bytes()
}

/// One complete reply read by the proxy for itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The text of each line, after the code and its separator.
    pub lines: Vec<String>,
    pub raw: Vec<u8>,
}

/// Takes one complete reply from the front of `buf`, if there is one.
pub fn take_reply(buf: &mut Vec<u8>) -> Option<Result<Reply, String>> {
    let mut pos = 0;
    let mut lines = Vec::new();
    loop {
        let end = pos + buf[pos..].iter().position(|&b| b == b'\n')?;
        let line = &buf[pos..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let code = line
            .get(..3)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|_| line.len() == 3 || matches!(line[3], b' ' | b'-'));
        let Some(code) = code else {
            return Some(Err(format!(
                "not a reply line: {:?}",
                String::from_utf8_lossy(line)
            )));
        };
        lines.push(String::from_utf8_lossy(line.get(4..).unwrap_or_default()).into_owned());
        pos = end + 1;
        if line.get(3) != Some(&b'-') {
            let raw = buf.drain(..pos).collect();
            return Some(Ok(Reply { code, lines, raw }));
        }
    }
}

/// The attributes an EHLO reply's `XCLIENT` line offers, if it has one.
pub fn xclient_offered(ehlo: &Reply) -> Option<Vec<String>> {
    ehlo.lines.iter().find_map(|l| {
        let mut words = l.split_ascii_whitespace();
        words
            .next()
            .filter(|k| k.eq_ignore_ascii_case("XCLIENT"))
            .map(|_| words.map(str::to_string).collect())
    })
}

/// Why the server did not take the client's identity.
#[derive(Debug)]
pub struct Refusal {
    /// What the client gets before the close.
    pub to_client: Vec<u8>,
    /// What the log says.
    pub why: String,
}

/// Reads one reply from `server` (bytes after it stay in `buf`).
async fn read_reply<R: AsyncRead + Unpin>(
    server: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Reply, String> {
    loop {
        if let Some(reply) = take_reply(buf) {
            return reply;
        }
        if buf.len() > MAX_REPLY {
            return Err(format!("a reply longer than {MAX_REPLY} bytes"));
        }
        // Into `buf` itself: a buffer on the stack would live in every
        // session's future (this is awaited inside it), idle or not.
        let start = buf.len();
        buf.resize(start + READ_CHUNK, 0);
        let read = server.read(&mut buf[start..]).await;
        let n = *read.as_ref().unwrap_or(&0);
        buf.truncate(start + n);
        let n = read.map_err(|e| format!("reading the server: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
    }
}

/// Bytes read from the server at a time while the proxy talks to it itself.
const READ_CHUNK: usize = 4096;

/// Introduces the client with XCLIENT, between the server's greeting
/// (already relayed by the engine) and the client's first command (`held`,
/// which the caller sends afterwards): the proxy's EHLO, `XCLIENT`, and the
/// server's new greeting, none of which the engine or the client sees.
/// Returns the server's bytes read past the new greeting (normally none),
/// which belong to the engine; or why the client is refused.
pub async fn xclient<R, W>(
    server_rx: &mut R,
    server_tx: &mut W,
    peers: Peers,
    held: &[u8],
    helo_name: &str,
    limit: Duration,
) -> Result<Vec<u8>, Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let refuse = |why: String| Refusal {
        to_client: XCLIENT_UNAVAILABLE.to_vec(),
        why,
    };
    let exchange = async {
        let mut buf = Vec::new();
        server_tx
            .write_all(format!("EHLO {helo_name}\r\n").as_bytes())
            .await
            .map_err(|e| refuse(format!("writing EHLO: {e}")))?;
        let ehlo = read_reply(server_rx, &mut buf).await.map_err(refuse)?;
        if ehlo.code != 250 {
            return Err(refuse(format!(
                "the server answered the gateway's EHLO with {}",
                ehlo.code
            )));
        }
        let Some(offered) = xclient_offered(&ehlo) else {
            return Err(refuse(
                "the server does not offer XCLIENT to the gateway (Postfix: add the gateway to smtpd_authorized_xclient_hosts)"
                    .into(),
            ));
        };
        if !offered.iter().any(|a| a.eq_ignore_ascii_case("ADDR")) {
            return Err(refuse(format!(
                "the server's XCLIENT does not take ADDR (it offers {})",
                offered.join(" ")
            )));
        }
        let command = xclient_command(peers, held, &offered);
        server_tx
            .write_all(&command)
            .await
            .map_err(|e| refuse(format!("writing XCLIENT: {e}")))?;
        let greeting = read_reply(server_rx, &mut buf).await.map_err(refuse)?;
        match greeting.code {
            220 => Ok(buf),
            // The server's new greeting refuses this client (e.g. Postfix's
            // per-client connection limit): the client gets it as is.
            400..=599 if greeting.raw.len() <= 4096 && is_reply_to_client(&greeting) => {
                Err(Refusal {
                    to_client: greeting.raw.clone(),
                    why: format!(
                        "the server refused the client after XCLIENT: {}",
                        String::from_utf8_lossy(&greeting.raw).trim_end()
                    ),
                })
            }
            code => Err(refuse(format!(
                "the server answered {} with {code}: {}",
                String::from_utf8_lossy(&command).trim_end(),
                greeting.lines.join(" / ")
            ))),
        }
    };
    match timeout(limit, exchange).await {
        Ok(r) => r,
        Err(_) => Err(refuse(format!(
            "no answer from the server within {limit:?}"
        ))),
    }
}

/// Whether a refusal the server gave after XCLIENT is one to pass on: a
/// new greeting that turns the client away (`421`, `554`), not an error in
/// the XCLIENT command itself (`501`, `550 insufficient authorization`).
fn is_reply_to_client(reply: &Reply) -> bool {
    matches!(reply.code, 421 | 554)
}

/// This host's name, for the proxy's own EHLO.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let name = buf.split(|&b| b == 0).next().unwrap_or_default();
    match std::str::from_utf8(name) {
        Ok(n) if ok && !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic()) => n.to_string(),
        _ => "inspector".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn peers(client: &str, server: &str) -> Peers {
        Peers {
            client: client.parse().unwrap(),
            server: server.parse().unwrap(),
        }
    }

    #[test]
    fn proxy_v2_header_ipv4_and_ipv6() {
        let h = proxy_v2_header(peers("198.18.0.2:40000", "198.18.1.25:25"));
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(
            &h[12..],
            &[
                0x21, 0x11, 0, 12, 198, 18, 0, 2, 198, 18, 1, 25, 0x9c, 0x40, 0, 25
            ]
        );
        let h = proxy_v2_header(peers("[2001:2::2]:1025", "[2001:2:0:1::25]:25"));
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(
            &h[16..32],
            &"2001:2::2".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(&h[48..], &[0x04, 0x01, 0, 25]);
    }

    #[test]
    fn xtext_encodes_plus_equals_and_controls() {
        assert_eq!(xtext(b"client.test"), "client.test");
        assert_eq!(xtext(b"a+b=c d\x7f"), "a+2Bb+3Dc+20d+7F");
        assert_eq!(xtext(b"[198.18.0.2]"), "[198.18.0.2]");
    }

    #[test]
    fn xclient_carries_the_clients_values() {
        let all: Vec<String> = "NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT"
            .split(' ')
            .map(String::from)
            .collect();
        let p = peers("198.18.0.2:40000", "198.18.1.25:25");
        assert_eq!(
            xclient_command(p, b"EHLO client.test\r\nMAIL FROM:<a@b>\r\n", &all),
            b"XCLIENT NAME=[UNAVAILABLE] ADDR=198.18.0.2 PORT=40000 HELO=client.test PROTO=ESMTP\r\n"
        );
        assert_eq!(
            xclient_command(p, b"HELO x+y\r\n", &all),
            b"XCLIENT NAME=[UNAVAILABLE] ADDR=198.18.0.2 PORT=40000 HELO=x+2By PROTO=SMTP\r\n"
        );
        // Not a greeting command: no HELO, no PROTO; only what is offered.
        assert_eq!(
            xclient_command(p, b"NOOP\r\n", &["ADDR".into(), "PORT".into()]),
            b"XCLIENT ADDR=198.18.0.2 PORT=40000\r\n"
        );
        let p6 = peers("[2001:2::2]:1025", "[2001:2:0:1::25]:25");
        assert_eq!(
            xclient_command(p6, b"EHLO c\r\n", &["ADDR".into()]),
            b"XCLIENT ADDR=IPV6:2001:2::2\r\n"
        );
    }

    #[test]
    fn replies_are_taken_whole() {
        let mut buf = b"250-server.test\r\n250-PIPELINING\r\n250-XCLIENT NAME ADDR PORT\r\n250 8BITMIME\r\n220 next".to_vec();
        let r = take_reply(&mut buf).unwrap().unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.lines.len(), 4);
        assert_eq!(
            xclient_offered(&r).unwrap(),
            ["NAME", "ADDR", "PORT"].map(String::from)
        );
        assert_eq!(buf, b"220 next");
        assert!(take_reply(&mut buf).is_none());
        let mut bad = b"hello\r\n".to_vec();
        assert!(take_reply(&mut bad).unwrap().is_err());
        let mut plain = b"250-a\r\n250 b\r\n".to_vec();
        assert_eq!(
            xclient_offered(&take_reply(&mut plain).unwrap().unwrap()),
            None
        );
    }

    #[test]
    fn probe_source_is_a_free_address_on_the_clients_side() {
        let nets: Vec<(IpAddr, u8)> = vec![
            ("198.18.0.1".parse().unwrap(), 24),
            ("2001:2::1".parse().unwrap(), 64),
        ];
        let server4: IpAddr = "198.18.1.25".parse().unwrap();
        assert_eq!(
            probe_source(&nets, server4, |_| false),
            Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 254)))
        );
        // The gateway's own addresses are skipped.
        let own: IpAddr = "198.18.0.254".parse().unwrap();
        assert_eq!(
            probe_source(&nets, server4, |a| a == own),
            Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 253)))
        );
        assert_eq!(
            probe_source(&nets, "2001:2:0:1::25".parse().unwrap(), |_| false),
            Some("2001:2::ffff:ffff:ffff:fffe".parse().unwrap())
        );
        // A /30 or a /32 has no room for a probe.
        assert_eq!(
            probe_source(&[("10.0.0.1".parse().unwrap(), 30)], server4, |_| false),
            None
        );
    }

    /// The XCLIENT exchange is awaited inside every session's future, so
    /// what it holds across an await is held by every idle session.
    #[test]
    fn the_xclient_exchange_adds_no_buffer_to_a_sessions_future() {
        let (mut rx, mut tx) = (tokio::io::empty(), tokio::io::sink());
        let p = peers("198.18.0.2:40000", "198.18.1.25:25");
        let exchange = xclient(&mut rx, &mut tx, p, b"", "gw.test", Duration::from_secs(1));
        let size = std::mem::size_of_val(&exchange);
        assert!(size < 1024, "{size} bytes");
    }

    #[tokio::test]
    async fn xclient_exchange_is_absorbed() {
        let (mut ours, mut server) = tokio::io::duplex(4096);
        let p = peers("198.18.0.2:40000", "198.18.1.25:25");
        let fake = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"\r\n") {
                let n = server.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, b"EHLO gw.test\r\n");
            server
                .write_all(b"250-server.test\r\n250 XCLIENT NAME ADDR PORT PROTO HELO\r\n")
                .await
                .unwrap();
            got.clear();
            while !got.ends_with(b"\r\n") {
                let n = server.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            server
                .write_all(b"220 server.test ESMTP\r\n")
                .await
                .unwrap();
            got
        });
        let (mut rx, mut tx) = tokio::io::split(&mut ours);
        let left = xclient(
            &mut rx,
            &mut tx,
            p,
            b"EHLO client.test\r\n",
            "gw.test",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(left.is_empty());
        assert_eq!(
            fake.await.unwrap(),
            b"XCLIENT NAME=[UNAVAILABLE] ADDR=198.18.0.2 PORT=40000 HELO=client.test PROTO=ESMTP\r\n"
        );
    }

    #[tokio::test]
    async fn no_xclient_offered_refuses_the_client() {
        let (mut ours, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = server.read(&mut buf).await;
            let _ = server
                .write_all(b"250-server.test\r\n250 PIPELINING\r\n")
                .await;
            let _ = server.read(&mut buf).await;
        });
        let (mut rx, mut tx) = tokio::io::split(&mut ours);
        let err = xclient(
            &mut rx,
            &mut tx,
            peers("198.18.0.2:40000", "198.18.1.25:25"),
            b"EHLO c\r\n",
            "gw",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_client, XCLIENT_UNAVAILABLE);
        assert!(err.why.contains("does not offer XCLIENT"), "{}", err.why);
    }
}
