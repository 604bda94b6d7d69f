//! The proxy runtime (tokio): accepts the flagged sessions the kernel
//! steers to its transparent listeners, and runs one task per
//! session that drives the sans-IO engine (`inspector_esmtp::Session`)
//! between the client and a connection to the original destination.
//!
//! How the upstream connection is opened and how the server learns who the
//! client is (transparently from the client's address by default, or
//! XCLIENT, or a PROXY v2 header, or nothing: the gateway's address) is
//! [`upstream`]'s.
//!
//! Who may start a session, and what happens when the proxy is full, is
//! [`admission`]'s: per-client limits, fair admission, stress mode.

pub mod admission;
pub mod session;
pub mod upstream;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context, Result};
use inspector_esmtp::Peers;
use socket2::{Domain, Socket, Type};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};

use self::admission::{Admission, Admit};
use crate::{
    config::ProxyConfig,
    observe::{admission::RefusalReason, esmtp::EsmtpState},
};

/// How often the accept loop beats (see [`serve`]).
pub const HEARTBEAT_INTERVAL: std::time::Duration =
    std::time::Duration::from_nanos(inspector_common::HEARTBEAT_INTERVAL_NS);

/// Sent to a client that connected to the gateway itself.
const LOOP: &[u8] = b"421 4.3.0 Not a mail server\r\n";

/// What every session shares.
pub struct Shared {
    /// The policy, its counters, the session gauges and the audit log.
    pub esmtp: Arc<EsmtpState>,
    pub config: ProxyConfig,
    pub counters: Counters,
    /// How sessions connect to their servers, and each server's return path.
    pub upstream: Arc<upstream::Upstream>,
    /// Told which clients are at their session limit (the kernel drops
    /// their SYNs), if anyone.
    pub at_limit: Option<Arc<dyn admission::AtLimit>>,
}

/// Sessions accepted and refused, for the log.
#[derive(Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
}

/// The proxy's listeners on each inspected port (`[esmtp] ports`), IPv4
/// and IPv6, with `IP_TRANSPARENT` so they accept connections to any
/// address the policy route delivers locally; `getsockname()` of an
/// accepted socket is the original destination, its port included, so a
/// session is relayed to the port the client chose.
pub fn listeners(ports: &[u16]) -> Result<Vec<TcpListener>> {
    let mut out = Vec::with_capacity(2 * ports.len());
    for &port in ports {
        let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port);
        let v6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port);
        out.push(listener(v4)?);
        match listener(v6) {
            Ok(l) => out.push(l),
            Err(e) => {
                log::warn!("no IPv6 listener ({e:#}): IPv6 SMTP to port {port} is not inspected")
            }
        }
    }
    Ok(out)
}

fn listener(addr: SocketAddr) -> Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_ip_transparent_v6(true)?;
    } else {
        socket.set_ip_transparent_v4(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding the proxy's listener to {addr}"))?;
    socket.listen(1024)?;
    Ok(TcpListener::from_std(socket.into())?)
}

/// Whether `ip` is one of this host's own addresses (a client that
/// connected to the gateway itself must not be relayed to it again).
fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Accepts and runs sessions until `shutdown` turns true, then stops
/// accepting, lets sessions in DATA finish (others end at their next
/// command boundary) and returns when all ended or after the configured
/// grace period. Until then the loop calls `heartbeat` every
/// [`HEARTBEAT_INTERVAL`]: the proof, to the kernel's steering and to
/// systemd's watchdog, that this loop runs.
pub async fn serve(
    listeners: Vec<TcpListener>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    mut heartbeat: impl FnMut() + Send + 'static,
) -> Result<()> {
    let admission = Admission::new(
        &shared.config,
        shared.esmtp.admission.clone(),
        shared.esmtp.audit.clone(),
    );
    if let Some(at_limit) = &shared.at_limit {
        admission.tell(at_limit.clone());
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut beat = tokio::time::interval(HEARTBEAT_INTERVAL);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sessions = JoinSet::new();
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::channel(64);
    let mut acceptors = JoinSet::new();
    for l in listeners {
        let tx = accepted_tx.clone();
        acceptors.spawn(async move {
            loop {
                let r = l.accept().await;
                if tx.send(r).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(accepted_tx);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = beat.tick() => heartbeat(),
            Some(r) = accepted_rx.recv() => {
                let (stream, client) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        log::warn!("accept: {e}");
                        continue;
                    }
                };
                let server = match session::original_destination(&stream) {
                    Ok(a) => a,
                    Err(e) => {
                        log::warn!("getsockname: {e}");
                        continue;
                    }
                };
                let client = normalize(client);
                if is_local(server.ip()) {
                    shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                    shared.esmtp.admission.count_refused(RefusalReason::OwnAddress);
                    log::debug!("{client} -> {server}: the gateway's own address, refused");
                    sessions.spawn(session::refuse(stream, LOOP));
                    continue;
                }
                let peers = Peers { client, server };
                // Logged (at most once a minute per client) by the admission.
                let ticket = match admission.admit(peers, std::time::Instant::now()) {
                    Admit::Yes(ticket) => ticket,
                    Admit::No { reply, .. } => {
                        shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                        sessions.spawn(async move { session::refuse(stream, &reply).await });
                        continue;
                    }
                };
                let n = shared.counters.accepted.fetch_add(1, Ordering::Relaxed) + 1;
                log::debug!("session {n}: {client} -> {server}: inspecting");
                let shared = shared.clone();
                let stop = shutdown.clone();
                sessions.spawn(async move {
                    let mut counted = shared.esmtp.session_started();
                    let started = std::time::Instant::now();
                    let end = session::run(stream, peers, shared.clone(), stop, ticket).await;
                    (shared.esmtp.timings.session_duration)
                        .observe(started.elapsed().as_secs_f64());
                    if let Some(reason) = end.error_reason() {
                        shared.esmtp.session_error(reason);
                    }
                    counted.set_outcome(end.outcome());
                    drop(counted);
                    log::debug!("session {n}: {client} -> {server}: ended ({end:?})");
                    end
                });
            }
            _ = tick.tick() => admission.tick(std::time::Instant::now()),
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    acceptors.shutdown().await;
    let open = sessions.len();
    if open > 0 {
        log::info!(
            "stopping: {open} session(s) open; those in DATA get up to {:?} to finish",
            shared.config.shutdown_grace
        );
    }
    let drained = tokio::time::timeout(shared.config.shutdown_grace, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        log::warn!(
            "stopping: {} session(s) still open after the grace period, closed",
            sessions.len()
        );
        sessions.shutdown().await;
    }
    Ok(())
}

fn normalize(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        a => a,
    }
}
