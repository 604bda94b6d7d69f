//! `inspector run`: load, apply the policy, attach, run the proxy, wait for
//! a signal, drain, detach.

pub mod lock;
mod signals;
mod upstream;

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
};

use anyhow::{Context, Result};
use inspector_common::SMTP_PORT;
use tokio::sync::{mpsc, watch};

use self::{lock::IfaceLock, signals::Signals, upstream::ReturnSteering};
use crate::{
    config::{DEFAULT_QUEUE, OnEmbryonicLimit, Policy, SinkSpec},
    kernel::{
        bpffs,
        exempt::ExemptTable,
        limits,
        loader::{self, AttachMode},
        routing, steer,
        sweeper::{self, Sweeper},
    },
    observe::{
        audit::AuditLog,
        esmtp::EsmtpState,
        metrics::{self, MetricsAddr},
        stats_socket::StatsSocket,
    },
    proxy::{
        self, Counters, Shared,
        upstream::{Learn, Upstream},
    },
};

pub struct RunOptions {
    pub ifaces: Vec<String>,
    pub policy: Option<PathBuf>,
    pub pin_dir: PathBuf,
    pub mode: AttachMode,
    /// Run the proxy and steer flagged flows to it (the default); `false`
    /// only classifies and counts.
    pub proxy: bool,
    /// The Prometheus endpoint.
    pub metrics: MetricsAddr,
    /// Where the ESMTP audit records go, and how many may wait for it;
    /// `None`: the policy's `[audit]`, else stdout and 4096.
    pub audit: Option<SinkSpec>,
    pub audit_queue: Option<usize>,
}

pub fn run(opts: RunOptions) -> Result<()> {
    for iface in &opts.ifaces {
        loader::check_iface_name(iface)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Caught from here on: a SIGTERM during the start still ends in a clean
    // stop (nothing attached or installed is left behind).
    let mut signals = {
        let _runtime = runtime.enter();
        Signals::new()?
    };
    let policy = match &opts.policy {
        Some(path) => Policy::load(path)?,
        None => Policy::parse(std::path::Path::new("(built-in default)"), "")?,
    };
    bpffs::prepare(&opts.pin_dir)?;
    let _locks = opts
        .ifaces
        .iter()
        .map(|iface| IfaceLock::acquire(iface, &opts.pin_dir))
        .collect::<Result<Vec<_>>>()?;

    // What the proxy's sessions share with the metrics endpoint and
    // `inspector stats`.
    let sink = (opts.audit.clone())
        .or_else(|| policy.audit.sink.clone())
        .unwrap_or(SinkSpec::Stdout);
    let queue = (opts.audit_queue)
        .or(policy.audit.queue)
        .unwrap_or(DEFAULT_QUEUE)
        .max(1);
    let facility = policy
        .audit
        .facility
        .unwrap_or(crate::config::DEFAULT_FACILITY);
    let audit = AuditLog::start_syslog(
        &sink,
        queue,
        crate::observe::audit::SyslogFormat {
            facility,
            asa_tag: policy.audit.asa_tag,
        },
    )?;
    log::info!("audit records: {sink} (queue {queue})");
    let esmtp = Arc::new(EsmtpState::new(policy.esmtp.clone(), audit));
    // How the proxy connects to the servers; servers it meets for the first
    // time are learned through `learn` (route, return steering).
    let (learn_tx, learn_rx) = mpsc::channel(64);
    let upstream = Arc::new(Upstream::new(policy.proxy.upstream_source, Some(learn_tx)));
    let stats_socket = runtime.block_on(async { StatsSocket::bind() })?;
    let metrics_listener = match opts.metrics {
        MetricsAddr::Off => None,
        MetricsAddr::Listen(addr) => Some(runtime.block_on(metrics::bind(addr))?),
    };

    let mut ebpf = loader::load(&opts.pin_dir)?;
    ExemptTable::open(&opts.pin_dir)?
        .apply_policy(&policy.exempt)
        .context("applying the policy's exemptions")?;
    limits::apply_policy(&opts.pin_dir, &policy.servers)
        .context("applying the policy's protected servers")?;
    log::info!(
        "policy {}: {} exemption(s), {} protected server(s); maps pinned in {}",
        opts.policy
            .as_ref()
            .map_or("(built-in default)".into(), |p| p.display().to_string()),
        policy.exempt.len(),
        policy.servers.len(),
        opts.pin_dir.display()
    );
    let intercepting = policy.servers.iter().any(|s| {
        s.on_embryonic_limit == OnEmbryonicLimit::Intercept
            && (s.max_embryonic | s.per_client_embryonic_max) != 0
    });
    if intercepting && opts.ifaces.len() < 2 {
        log::warn!(
            "TCP intercept rewrites packets both ways: give `--iface` for the clients' side and the servers' side, or intercepted connections will stall"
        );
    }
    let sweeper = Sweeper::open(&opts.pin_dir, policy.timeouts)?;
    for iface in &opts.ifaces {
        let mode = loader::attach_xdp(&mut ebpf, iface, opts.mode)?;
        log::info!("{iface}: classifier attached ({mode} XDP)");
    }

    // These run whenever the runtime does, with or without the proxy.
    runtime.spawn(sweep_forever(sweeper));
    runtime.spawn({
        let esmtp = esmtp.clone();
        let upstream = opts.proxy.then(|| upstream.clone());
        async move { stats_socket.serve(esmtp, upstream).await }
    });
    if let Some(listener) = metrics_listener {
        log::info!(
            "metrics endpoint on http://{}/metrics",
            listener.local_addr()?
        );
        let registry = Arc::new(metrics::registry(&opts.pin_dir, esmtp.clone()));
        runtime.spawn(metrics::serve(listener, registry));
    }
    if !opts.proxy {
        esmtp.ready.store(true, Ordering::Relaxed);
        runtime.block_on(signals.wait());
        esmtp.ready.store(false, Ordering::Relaxed);
        log::info!(
            "stopping: detaching programs; pinned maps stay (remove them with `inspector unload`)"
        );
        return Ok(());
    }
    steer::load(&mut ebpf, policy.proxy.fail)?;
    let mut steering = ReturnSteering::new(&opts.pin_dir, &opts.ifaces);
    let result = runtime.block_on(run_proxy(
        &opts,
        &policy,
        Proxy {
            esmtp,
            upstream,
            learn: learn_rx,
        },
        &mut ebpf,
        &mut steering,
        &mut signals,
    ));
    // Whatever happened: no steering is left behind by a clean exit.
    let cleanup = runtime.block_on(unsteer(&opts, &steering));
    log::info!(
        "stopping: detaching programs; pinned maps stay (remove them with `inspector unload`)"
    );
    drop(ebpf);
    result.and(cleanup)
}

/// What the proxy shares with the rest of the daemon.
struct Proxy {
    esmtp: Arc<EsmtpState>,
    upstream: Arc<Upstream>,
    /// Servers the proxy meets for the first time.
    learn: mpsc::Receiver<Learn>,
}

async fn run_proxy(
    opts: &RunOptions,
    policy: &Policy,
    proxy: Proxy,
    ebpf: &mut aya::Ebpf,
    steering: &mut ReturnSteering,
    signals: &mut Signals,
) -> Result<()> {
    let Proxy {
        esmtp,
        upstream,
        mut learn,
    } = proxy;
    // Listening first: the steering program treats the listener as the
    // proxy's liveness.
    let listeners = proxy::listeners(SMTP_PORT)?;
    let netlink = routing::connect()?;
    routing::install(&netlink)
        .await
        .context("installing the policy routing for flagged flows")?;
    for iface in &opts.ifaces {
        steer::attach(ebpf, iface, &opts.pin_dir)?;
        log::info!("{iface}: steering attached (TC ingress)");
    }
    self::upstream::start(&upstream, policy, ebpf, &netlink, steering).await?;
    esmtp
        .max_sessions
        .store(policy.proxy.max_sessions as u64, Ordering::Relaxed);
    esmtp.ready.store(true, Ordering::Relaxed);
    let shared = Arc::new(Shared {
        esmtp,
        config: policy.proxy.clone(),
        counters: Counters::default(),
        upstream: upstream.clone(),
    });
    log::info!(
        "proxy listening on port {SMTP_PORT} (fail {:?}, upstream {}, max-sessions {}, timeouts {:?})",
        policy.proxy.fail,
        policy.proxy.upstream_source,
        policy.proxy.max_sessions,
        policy.proxy.timeouts
    );
    let (stop, stopped) = watch::channel(false);
    let serve = tokio::spawn(proxy::serve(listeners, shared.clone(), stopped));
    loop {
        tokio::select! {
            () = signals.wait() => break,
            Some(Learn { server, reply }) = learn.recv() => {
                let found = steering.prepare(ebpf, &netlink, server).await;
                if let Ok(iface) = &found {
                    log::info!("{server}: a new server, via {iface}");
                }
                let _ = reply.send(found.map_err(|e| format!("{e:#}")));
            }
        }
    }
    shared.esmtp.ready.store(false, Ordering::Relaxed);
    let _ = stop.send(true);
    serve.await.context("the proxy task failed")??;
    let c = &shared.counters;
    log::info!(
        "proxy stopped: {} session(s) inspected, {} refused",
        c.accepted.load(Ordering::Relaxed),
        c.refused.load(Ordering::Relaxed)
    );
    print!("{}", shared.esmtp.stats.render(&shared.esmtp.policy));
    Ok(())
}

/// Removes the steering links and the policy routing.
async fn unsteer(opts: &RunOptions, steering: &ReturnSteering) -> Result<()> {
    let mut result = steering.remove();
    for iface in &opts.ifaces {
        if let Err(e) = steer::detach(&steer::link_pin(&opts.pin_dir, iface)) {
            result = Err(e);
        }
    }
    let netlink = routing::connect()?;
    routing::remove(&netlink)
        .await
        .context("removing the policy routing")?;
    result
}

/// Sweeps the flow table every [`sweeper::INTERVAL`].
async fn sweep_forever(mut sweeper: Sweeper) {
    let mut tick = tokio::time::interval(sweeper::INTERVAL);
    loop {
        tick.tick().await;
        match sweeper.sweep(sweeper::monotonic_ns()) {
            Ok(sweep) if sweep.expired > 0 => log::debug!("sweeper: {sweep:?}"),
            Ok(_) => {}
            Err(e) => log::warn!("sweeper: {e:#}"),
        }
    }
}
