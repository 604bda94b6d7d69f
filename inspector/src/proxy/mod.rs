//! The proxy runtime (tokio): accepts the flagged sessions the kernel
//! steers to its transparent listeners, and runs one task per
//! session that drives the sans-IO engine (`inspector_esmtp::Session`)
//! between the client and a connection to the original destination.
//!
//! It runs on `workers` threads (one per core by default), each a
//! current-thread runtime with listeners of its own in one `SO_REUSEPORT`
//! group: the kernel picks a listener per connection by a hash of its
//! 4-tuple, and the session stays on that worker's thread for its life
//! ([`worker`]). What they share is touched once per session: the admission
//! (global limits), the counters, the local address set.
//!
//! How the upstream connection is opened and how the server learns who the
//! client is (transparently from the client's address by default, or
//! XCLIENT, or a PROXY v2 header, or nothing: the gateway's address) is
//! [`upstream`]'s.
//!
//! Who may start a session, and what happens when the proxy is full, is
//! [`admission`]'s: per-client limits, fair admission, stress mode.

pub mod admission;
mod linger;
pub mod session;
pub mod upstream;
mod worker;

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, atomic::AtomicU64},
};

use anyhow::{Context, Result};
use socket2::{Domain, Socket, Type};
use tokio::sync::watch;

use self::admission::Admission;
use crate::{config::ProxyConfig, kernel::local_addrs::LocalAddrs, observe::esmtp::EsmtpState};

/// How often the accept loop beats (see [`serve`]).
pub const HEARTBEAT_INTERVAL: std::time::Duration =
    std::time::Duration::from_nanos(inspector_common::HEARTBEAT_INTERVAL_NS);

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
    /// This host's addresses: a session to one of them is refused.
    pub local: Arc<LocalAddrs>,
}

/// Sessions accepted and refused, for the log.
#[derive(Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
}

/// How many workers `configured` means on this machine: all cores unless
/// the policy says.
pub fn worker_count(configured: Option<usize>) -> usize {
    configured.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The listeners of each of `workers` workers on each inspected port
/// (`[esmtp] ports`), IPv4 and IPv6, with `IP_TRANSPARENT` so they accept
/// connections to any address the policy route delivers locally
/// (`getsockname()` of an accepted socket is the original destination, its
/// port included, so a session is relayed to the port the client chose),
/// and `SO_REUSEPORT`, so the kernel spreads connections over the workers'
/// listeners.
pub fn listeners(ports: &[u16], workers: usize) -> Result<Vec<Vec<std::net::TcpListener>>> {
    let mut out = Vec::with_capacity(workers);
    let mut with_v6 = true;
    for _ in 0..workers {
        let mut mine = Vec::with_capacity(2 * ports.len());
        for &port in ports {
            let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port);
            let v6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port);
            mine.push(listener(v4)?);
            if with_v6 {
                match listener(v6) {
                    Ok(l) => mine.push(l),
                    Err(e) => {
                        log::warn!("no IPv6 listener ({e:#}): IPv6 SMTP is not inspected");
                        with_v6 = false;
                    }
                }
            }
        }
        out.push(mine);
    }
    anyhow::ensure!(
        !with_v6 || out.iter().all(|l| l.len() == 2 * ports.len()),
        "IPv6 listeners for only some of the workers"
    );
    Ok(out)
}

fn listener(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_ip_transparent_v6(true)?;
    } else {
        socket.set_ip_transparent_v4(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding the proxy's listener to {addr}"))?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Runs one worker per entry of `listeners` (each on a thread of its own)
/// until `shutdown` turns true; then each stops accepting, lets sessions in
/// DATA finish (others end at their next command boundary) and returns when
/// all ended or after the configured grace period. Meanwhile this task
/// calls `heartbeat` every [`HEARTBEAT_INTERVAL`] while every worker's loop
/// beat within the last two intervals: the proof, to the kernel's steering
/// and to systemd's watchdog, that the proxy runs (a stuck worker would
/// hold every session the kernel's hash gives it). It also runs the
/// admission's clock.
pub async fn serve(
    listeners: Vec<Vec<std::net::TcpListener>>,
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
    let epoch = std::time::Instant::now();
    let mut workers = Vec::with_capacity(listeners.len());
    for (index, mine) in listeners.into_iter().enumerate() {
        workers.push(worker::start(
            index,
            mine,
            shared.clone(),
            admission.clone(),
            shutdown.clone(),
            epoch,
        )?);
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut beat = tokio::time::interval(HEARTBEAT_INTERVAL);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let fresh = 2 * HEARTBEAT_INTERVAL;
    // A worker that ended once the stop was asked for (it had nothing to
    // drain), before this loop saw the stop.
    let mut ended_early = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            ended = futures_util::future::select_all(workers.iter_mut().map(|w| &mut w.done)) => {
                let (result, index, _) = ended;
                let result = result.unwrap_or_else(|_| Err(anyhow::anyhow!("it panicked")));
                if *shutdown.borrow() {
                    ended_early = Some((index, result));
                    break;
                }
                return Err(anyhow::anyhow!(
                    "proxy worker {index} stopped on its own: {}",
                    result.err().map_or("no error".into(), |e| format!("{e:#}"))
                ));
            }
            _ = beat.tick() => {
                if workers.iter().all(|w| w.beat_age(epoch) <= fresh) {
                    heartbeat();
                }
            }
            _ = tick.tick() => admission.tick(std::time::Instant::now()),
        }
    }
    let mut result = Ok(());
    for (index, w) in workers.into_iter().enumerate() {
        let ended = match ended_early.take_if(|(i, _)| *i == index) {
            Some((_, r)) => r,
            None => w
                .done
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("it panicked"))),
        };
        result = result.and(ended.with_context(|| format!("proxy worker {index}")));
    }
    result
}
