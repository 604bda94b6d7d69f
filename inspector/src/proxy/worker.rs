//! One proxy worker: a thread with a current-thread tokio runtime, its own
//! listeners (one `SO_REUSEPORT` group with the other workers'), and the
//! sessions it accepted, which never leave it. Its read buffer is the
//! thread's (see [`super::session`]): a session owns none.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use inspector_esmtp::Peers;
use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
    task::JoinSet,
};

use super::{
    HEARTBEAT_INTERVAL, Shared,
    admission::{Admission, Admit},
    session,
};
use crate::observe::admission::RefusalReason;

/// Sent to a client that connected to the gateway itself.
const LOOP: &[u8] = b"421 4.3.0 Not a mail server\r\n";

/// A running worker, as the coordinator ([`super::serve`]) sees it.
pub struct Worker {
    /// When its loop last beat, in ns since the coordinator's epoch.
    beat: Arc<AtomicU64>,
    /// Its result, when its thread ends.
    pub done: oneshot::Receiver<Result<()>>,
}

impl Worker {
    /// How long ago the worker's loop last beat.
    pub fn beat_age(&self, epoch: Instant) -> Duration {
        let at = Duration::from_nanos(self.beat.load(Ordering::Relaxed));
        epoch.elapsed().saturating_sub(at)
    }
}

/// Starts worker `index` on a thread of its own.
pub fn start(
    index: usize,
    listeners: Vec<std::net::TcpListener>,
    shared: Arc<Shared>,
    admission: Arc<Admission>,
    shutdown: watch::Receiver<bool>,
    epoch: Instant,
) -> Result<Worker> {
    let beat = Arc::new(AtomicU64::new(epoch.elapsed().as_nanos() as u64));
    let (tx, done) = oneshot::channel();
    let mine = beat.clone();
    std::thread::Builder::new()
        .name(format!("proxy-{index}"))
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a proxy worker's runtime")
                .and_then(|rt| {
                    rt.block_on(run(
                        index, listeners, shared, admission, shutdown, mine, epoch,
                    ))
                });
            let _ = tx.send(result);
        })
        .context("starting a proxy worker's thread")?;
    Ok(Worker { beat, done })
}

/// Accepts and runs sessions until `shutdown` turns true, then drains them
/// (see [`super::serve`]).
async fn run(
    index: usize,
    listeners: Vec<std::net::TcpListener>,
    shared: Arc<Shared>,
    admission: Arc<Admission>,
    mut shutdown: watch::Receiver<bool>,
    beat: Arc<AtomicU64>,
    epoch: Instant,
) -> Result<()> {
    let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sessions = JoinSet::new();
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::channel(64);
    let mut acceptors = JoinSet::new();
    for l in listeners {
        let l = TcpListener::from_std(l)?;
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
            _ = ticks.tick() => beat.store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed),
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
                if shared.local.contains(server.ip()) {
                    shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                    shared.esmtp.admission.count_refused(RefusalReason::OwnAddress);
                    log::debug!("{client} -> {server}: the gateway's own address, refused");
                    sessions.spawn(session::refuse(stream, LOOP));
                    continue;
                }
                let peers = Peers { client, server };
                // Logged (at most once a minute per client) by the admission.
                let ticket = match admission.admit(peers, Instant::now()) {
                    Admit::Yes(ticket) => ticket,
                    Admit::No { reply, .. } => {
                        shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                        sessions.spawn(async move { session::refuse(stream, &reply).await });
                        continue;
                    }
                };
                let n = shared.counters.accepted.fetch_add(1, Ordering::Relaxed) + 1;
                log::debug!("session {n} (worker {index}): {client} -> {server}: inspecting");
                let shared = shared.clone();
                let stop = shutdown.clone();
                sessions.spawn(async move {
                    let mut counted = shared.esmtp.session_started();
                    let started = Instant::now();
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
