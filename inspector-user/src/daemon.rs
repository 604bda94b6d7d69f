//! `inspector run`: load, apply the policy, attach, wait for a signal, detach.

use std::{path::PathBuf, sync::Arc};

use anyhow::{Context, Result};

use crate::{
    audit::{AuditLog, SinkSpec},
    bpffs,
    esmtp_state::EsmtpState,
    exempt::ExemptTable,
    limits,
    loader::{self, AttachMode},
    lock::IfaceLock,
    metrics::{self, MetricsAddr},
    policy::{OnEmbryonicLimit, Policy},
    stats_socket::StatsSocket,
    sweeper::{self, Sweeper},
};

pub struct RunOptions {
    pub ifaces: Vec<String>,
    pub policy: Option<PathBuf>,
    pub pin_dir: PathBuf,
    pub mode: AttachMode,
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

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The state the ESMTP proxy's sessions share with the metrics endpoint
    // and `inspector stats`.
    let sink = (opts.audit.clone())
        .or_else(|| policy.audit.sink.clone())
        .unwrap_or(SinkSpec::Stdout);
    let queue = (opts.audit_queue)
        .or(policy.audit.queue)
        .unwrap_or(crate::audit::DEFAULT_QUEUE)
        .max(1);
    let audit = AuditLog::start(&sink, queue)?;
    log::info!("audit records: {sink} (queue {queue})");
    let esmtp = Arc::new(EsmtpState::new(policy.esmtp.clone(), audit));
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

    let services = Services {
        metrics: metrics_listener
            .map(|l| (l, Arc::new(metrics::registry(&opts.pin_dir, esmtp.clone())))),
        esmtp,
        stats_socket,
    };
    run_until_signal(&runtime, sweeper, services)?;
    log::info!(
        "stopping: detaching programs; pinned maps stay (remove them with `inspector unload`)"
    );
    drop(ebpf);
    Ok(())
}

/// What the daemon serves besides the kernel programs.
struct Services {
    esmtp: Arc<EsmtpState>,
    stats_socket: StatsSocket,
    metrics: Option<(
        tokio::net::TcpListener,
        Arc<prometheus_client::registry::Registry>,
    )>,
}

/// Serves the metrics endpoint and the stats socket, and sweeps the flow
/// table every [`sweeper::INTERVAL`], until SIGINT/SIGTERM.
fn run_until_signal(
    runtime: &tokio::runtime::Runtime,
    mut sweeper: Sweeper,
    services: Services,
) -> Result<()> {
    runtime.block_on(async {
        let Services {
            esmtp,
            stats_socket,
            metrics,
        } = services;
        let stats_socket = Arc::new(stats_socket);
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn({
            let (socket, esmtp) = (stats_socket.clone(), esmtp.clone());
            async move { socket.serve(esmtp).await }
        });
        // The ESMTP proxy (steered sessions) joins here as one more task
        // sharing `esmtp`: per session `esmtp.session_started()`,
        // `esmtp.new_session(peers)` and `esmtp.audit_all(out.audit)`.
        if let Some((listener, registry)) = metrics {
            log::info!(
                "metrics endpoint on http://{}/metrics",
                listener.local_addr()?
            );
            tasks.spawn(metrics::serve(listener, registry));
        }
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(sweeper::INTERVAL);
        loop {
            tokio::select! {
                _ = term.recv() => { log::info!("SIGTERM received"); break }
                _ = int.recv() => { log::info!("SIGINT received"); break }
                _ = tick.tick() => match sweeper.sweep(sweeper::monotonic_ns()) {
                    Ok(sweep) if sweep.expired > 0 => log::debug!("sweeper: {sweep:?}"),
                    Ok(_) => {}
                    Err(e) => log::warn!("sweeper: {e:#}"),
                },
            }
        }
        tasks.shutdown().await;
        Ok(())
    })
}
