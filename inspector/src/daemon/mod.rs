//! `inspector run`: load, apply the policy, attach, run the proxy, tell a
//! supervisor when it is ready, reload on SIGHUP or `inspector reload`,
//! wait for a stop signal, drain, detach.

mod caps;
mod control;
pub mod lock;
pub mod nofile;
mod notify;
mod reply_path;
mod signals;
pub mod status;
mod upstream;

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context, Result};
use inspector_common::HEARTBEAT_INTERVAL_NS;
use tokio::sync::{mpsc, watch};

use self::{
    control::{Control, ReloadRequest, Reloader},
    lock::IfaceLock,
    notify::Notifier,
    signals::{Event, Signals},
    status::{Board, PolicyInfo, Readiness},
    upstream::ReturnSteering,
};
use crate::{
    config::{DEFAULT_QUEUE, FlowTimeouts, Policy, SinkSpec},
    kernel::{
        bpffs, classify,
        clients::ClientBlocks,
        exempt::ExemptTable,
        exempt_store::Store,
        limits,
        loader::{self, AttachMode},
        local_addrs,
        reset::Resetter,
        routing,
        steer::{self, Heartbeat},
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
    /// Where live exemptions are saved (see `kernel::exempt_store`).
    pub state_dir: PathBuf,
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
    /// Which member of the policy's `[cluster]` this is, when the policy
    /// does not tell it by address.
    pub cluster_member: Option<u32>,
}

/// The policy file's name in messages when there is none.
const BUILT_IN: &str = "(built-in default)";
/// Longest the daemon's exit waits for the audit sink's last records.
const AUDIT_FLUSH: Duration = Duration::from_secs(5);

/// Reads the policy (or the built-in default) and the bytes it was read
/// from (for its hash).
fn load_policy(path: Option<&std::path::Path>) -> Result<(Policy, Vec<u8>)> {
    match path {
        Some(path) => {
            let policy = Policy::load(path)?;
            Ok((policy, std::fs::read(path).unwrap_or_default()))
        }
        None => Ok((
            Policy::parse(std::path::Path::new(BUILT_IN), "")?,
            Vec::new(),
        )),
    }
}

pub fn run(mut opts: RunOptions) -> Result<()> {
    for iface in &opts.ifaces {
        loader::check_iface_name(iface)?;
    }
    // Capabilities are per thread: opened and dropped before any thread
    // starts, so that none keeps CAP_NET_RAW.
    let resetter = Resetter::open();
    caps::drop_net_raw().context("dropping CAP_NET_RAW")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Caught from here on: a SIGTERM during the start still ends in a clean
    // stop (nothing attached or installed is left behind).
    let mut signals = {
        let _runtime = runtime.enter();
        Signals::new()?
    };
    let notifier = Arc::new(Notifier::from_env());
    let (policy, text) = load_policy(opts.policy.as_deref())?;
    // This host's addresses tell which cluster member it is (and the proxy
    // refuses sessions to them); an unknown member stops the start here.
    let local = runtime.block_on(local_addrs::watch())?;
    let member = control::membership(
        &policy.cluster,
        opts.policy.as_deref(),
        opts.cluster_member,
        &local,
    )?;
    if member.members > 1 {
        log::info!("cluster member {} of {}", member.member, member.members);
    }
    // Before anything is attached, so a refusal leaves nothing behind.
    for (iface, server) in runtime.block_on(reply_path::missing(&policy.servers, &opts.ifaces))? {
        log::info!(
            "{iface}: attached too: the route to protected server {server} leaves through it, and TCP intercept needs the server's replies"
        );
        loader::check_iface_name(&iface)?;
        opts.ifaces.push(iface);
    }
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
    let board = Arc::new(Board::new(
        PolicyInfo::new(
            opts.policy.as_deref(),
            &text,
            policy.exempt.len(),
            policy.servers.len(),
        ),
        opts.proxy,
        control::fail_name(policy.proxy.fail),
        notifier.watchdog().is_some(),
    ));
    board.set_esmtp_rules(policy.esmtp.rules.len(), &policy.esmtp.ports);
    if let Some(warning) = crate::config::submission_warning(&policy.esmtp) {
        log::warn!("{warning}");
    }
    // How the proxy connects to the servers; servers it meets for the first
    // time are learned through `learn` (route, return steering).
    let (learn_tx, learn_rx) = mpsc::channel(64);
    let upstream = Arc::new(Upstream::new(policy.proxy.upstream_source, Some(learn_tx)));
    let (reload_tx, reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let stats_socket = StatsSocket::bind()?;
    stats_socket.serve(Arc::new(Control {
        esmtp: esmtp.clone(),
        board: board.clone(),
        reload: reload_tx,
        upstream: opts.proxy.then(|| upstream.clone()),
    }))?;
    let metrics_listener = match opts.metrics {
        MetricsAddr::Off => None,
        MetricsAddr::Listen(addr) => Some(runtime.block_on(metrics::bind(addr))?),
    };

    let mut ebpf = loader::load(&opts.pin_dir)?;
    classify::configure(&mut ebpf, &policy.packets, &policy.esmtp.ports)?;
    let mut table = ExemptTable::open(&opts.pin_dir)?;
    table
        .apply_policy(&policy.exempt)
        .context("applying the policy's exemptions")?;
    let store = Store::for_pin_dir(&opts.state_dir, &opts.pin_dir);
    match store.restore(&mut table) {
        Ok(0) => {}
        Ok(n) => log::info!(
            "restored {n} live exemption(s) from {}",
            store.path().display()
        ),
        Err(e) => log::warn!("live exemptions not restored: {e:#}"),
    }
    limits::apply_member_policy(&opts.pin_dir, &policy.servers, &member)
        .context("applying the policy's protected servers")?;
    log::info!(
        "policy {}: {} exemption(s), {} protected server(s); maps pinned in {}",
        opts.policy
            .as_ref()
            .map_or(BUILT_IN.into(), |p| p.display().to_string()),
        policy.exempt.len(),
        policy.servers.len(),
        opts.pin_dir.display()
    );
    let mut sweeper = Sweeper::open(&opts.pin_dir, policy.timeouts)?;
    match resetter {
        Ok(resetter) => sweeper.reset_with(resetter),
        Err(e) => log::warn!(
            "{e:#}: half-open flows that expire stay in the servers' SYN queues until the servers give up"
        ),
    }
    for iface in &opts.ifaces {
        let mode = loader::attach_xdp(&mut ebpf, iface, opts.mode)?;
        board.add_interface(iface, mode);
        log::info!("{iface}: classifier attached ({mode} XDP)");
    }

    // These run whenever the runtime does, with or without the proxy.
    let (timeouts_tx, timeouts_rx) = watch::channel(policy.timeouts);
    runtime.spawn(sweep_forever(sweeper, timeouts_rx));
    runtime.spawn(expire_forever(store, table));
    if let Some(listener) = metrics_listener {
        log::info!(
            "metrics endpoint on http://{}/metrics",
            listener.local_addr()?
        );
        let registry = Arc::new(metrics::registry(&opts.pin_dir, esmtp.clone()));
        runtime.spawn(metrics::serve(listener, registry));
    }
    let mut reloader = Reloader {
        pin_dir: opts.pin_dir.clone(),
        path: opts.policy.clone(),
        audit_override: opts.audit.is_some(),
        policy,
        esmtp: esmtp.clone(),
        board: board.clone(),
        notifier: notifier.clone(),
        timeouts: timeouts_tx,
        cluster_member: opts.cluster_member,
        local,
    };
    let mut controls = Controls {
        signals: &mut signals,
        reloads: reload_rx,
    };
    if !opts.proxy {
        board.set_state(Readiness::Ready);
        esmtp.ready.store(true, Ordering::Relaxed);
        notifier.ready(&status_line(&board));
        log::info!("ready: classifying and counting (no proxy)");
        runtime.block_on(controls.until_stop(&mut reloader, None, &notifier, None));
        board.set_state(Readiness::Stopping);
        esmtp.ready.store(false, Ordering::Relaxed);
        notifier.stopping();
        log::info!(
            "stopping: detaching programs; pinned maps stay (remove them with `inspector unload`)"
        );
        drop(stats_socket);
        flush_audit(&esmtp);
        return Ok(());
    }
    steer::load(&mut ebpf, reloader.policy.proxy.fail)?;
    let heartbeat = Heartbeat::take(&mut ebpf)?;
    let mut steering = ReturnSteering::new(&opts.pin_dir, &opts.ifaces);
    let result = runtime.block_on(run_proxy(
        &opts,
        &mut reloader,
        &mut ebpf,
        heartbeat,
        &mut controls,
        Learner {
            upstream,
            requests: learn_rx,
            steering: &mut steering,
        },
    ));
    // Whatever happened: no steering is left behind by a clean exit.
    let cleanup = runtime.block_on(unsteer(&opts, &steering));
    log::info!(
        "stopping: detaching programs; pinned maps stay (remove them with `inspector unload`)"
    );
    drop(ebpf);
    drop(stats_socket);
    flush_audit(&reloader.esmtp);
    result.and(cleanup)
}

/// Writes the records still queued for the audit sink (the last sessions'),
/// which the process's exit would lose.
fn flush_audit(esmtp: &EsmtpState) {
    if !esmtp.audit.flush(AUDIT_FLUSH) {
        log::warn!(
            "the audit sink did not take its last records within {AUDIT_FLUSH:?}; they are lost"
        );
    }
}

/// `25, 587`, for the log.
pub fn show_ports(ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    ports.join(", ")
}

/// What `systemctl status` shows on its `Status:` line.
fn status_line(board: &Board) -> String {
    let s = board.snapshot(0);
    let ifaces: Vec<String> = s
        .interfaces
        .iter()
        .map(|i| format!("{} ({} XDP)", i.name, i.xdp))
        .collect();
    format!(
        "inspecting on {}; policy {} sha256 {}",
        ifaces.join(", "),
        s.policy.path.as_deref().unwrap_or(BUILT_IN),
        &s.policy.sha256[..12]
    )
}

/// Where the daemon's orders come from while it runs: signals, and
/// `inspector reload` through the stats socket.
struct Controls<'a> {
    signals: &'a mut Signals,
    reloads: mpsc::Receiver<ReloadRequest>,
}

/// The proxy's upstream and the daemon's side of it: servers the proxy
/// meets for the first time, whose return path the daemon prepares.
struct Learner<'a> {
    upstream: Arc<Upstream>,
    requests: mpsc::Receiver<Learn>,
    steering: &'a mut ReturnSteering,
}

/// A learn request, or never (without a proxy).
async fn next_learn(requests: Option<&mut mpsc::Receiver<Learn>>) -> Option<Learn> {
    match requests {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

impl Controls<'_> {
    /// Reloads when asked, and (with the proxy) prepares the return path
    /// to servers met for the first time, until SIGTERM or SIGINT. Without
    /// a proxy the watchdog is fed from here.
    async fn until_stop(
        &mut self,
        reloader: &mut Reloader,
        mut ebpf: Option<&mut aya::Ebpf>,
        notifier: &Notifier,
        mut learn: Option<(
            &mut mpsc::Receiver<Learn>,
            &mut ReturnSteering,
            &rtnetlink::Handle,
        )>,
    ) {
        let mut watchdog = tokio::time::interval(Duration::from_nanos(HEARTBEAT_INTERVAL_NS));
        let feed = ebpf.is_none();
        loop {
            let requests = learn.as_mut().map(|(r, _, _)| &mut **r);
            tokio::select! {
                Some(Learn { server, reply }) = next_learn(requests) => {
                    let found = match (learn.as_mut(), ebpf.as_deref_mut()) {
                        (Some((_, steering, netlink)), Some(ebpf)) => {
                            steering.prepare(ebpf, netlink, server).await
                        }
                        _ => Err(anyhow::anyhow!("no proxy")),
                    };
                    if let Ok(iface) = &found {
                        log::info!("{server}: a new server, via {iface}");
                    }
                    let _ = reply.send(found.map_err(|e| format!("{e:#}")));
                }
                event = self.signals.next() => match event {
                    Event::Stop => return,
                    Event::Reload => {
                        let _ = reloader.reload(ebpf.as_deref_mut());
                    }
                },
                Some(reply) = self.reloads.recv() => {
                    let answer = reloader.reload(ebpf.as_deref_mut());
                    let _ = reply.send(answer);
                }
                _ = watchdog.tick(), if feed => notifier.watchdog_ping(),
            }
        }
    }
}

async fn run_proxy(
    opts: &RunOptions,
    reloader: &mut Reloader,
    ebpf: &mut aya::Ebpf,
    mut heartbeat: Heartbeat,
    controls: &mut Controls<'_>,
    learner: Learner<'_>,
) -> Result<()> {
    let Learner {
        upstream,
        requests: mut learn,
        steering,
    } = learner;
    // Listening first: the steering program checks that the listener is
    // there (and that the proxy's heartbeat is fresh).
    let nofile = nofile::raise_to_hard()?;
    nofile::check_fits(reloader.policy.proxy.max_sessions, nofile)?;
    let workers = proxy::worker_count(reloader.policy.proxy.workers);
    let ports = &reloader.policy.esmtp.ports;
    let listeners = proxy::listeners(ports, workers)?;
    let local = reloader.local.clone();
    let netlink = routing::connect()?;
    routing::install(&netlink)
        .await
        .context("installing the policy routing for flagged flows")?;
    let board = reloader.board.clone();
    for iface in &opts.ifaces {
        steer::attach(ebpf, iface, &opts.pin_dir)?;
        board.set_steering(iface, "attached");
        log::info!("{iface}: steering attached (TC ingress)");
    }
    self::upstream::start(&upstream, &reloader.policy, ebpf, &netlink, steering).await?;
    let policy = &reloader.policy;
    reloader
        .esmtp
        .max_sessions
        .store(policy.proxy.max_sessions as u64, Ordering::Relaxed);
    let shared = Arc::new(Shared {
        esmtp: reloader.esmtp.clone(),
        config: policy.proxy.clone(),
        counters: Counters::default(),
        upstream: upstream.clone(),
        at_limit: client_blocks(&opts.pin_dir, &policy.proxy.clients)?,
        local,
    });
    log::info!(
        "proxy listening on port(s) {} ({workers} worker(s), fail {:?}, upstream {}, max-sessions {}, timeouts {:?})",
        show_ports(&policy.esmtp.ports),
        policy.proxy.fail,
        policy.proxy.upstream_source,
        policy.proxy.max_sessions,
        policy.proxy.timeouts
    );
    // The proxy's loop beats every second: the kernel's heartbeat (new
    // sessions are steered only while it is fresh) and systemd's watchdog.
    // Its first beat makes the daemon ready: XDP, TC, the routes and the
    // listener are all up by then.
    let notifier = reloader.notifier.clone();
    let esmtp = reloader.esmtp.clone();
    let mut first = true;
    let beat = move || {
        if let Err(e) = heartbeat.beat() {
            log::warn!("writing the heartbeat: {e:#}");
        }
        board.beat();
        if first {
            first = false;
            board.set_state(Readiness::Ready);
            esmtp.ready.store(true, Ordering::Relaxed);
            notifier.ready(&status_line(&board));
            log::info!("ready: the kernel steers new SMTP sessions to the proxy");
        }
        notifier.watchdog_ping();
    };
    let (stop, stopped) = watch::channel(false);
    let serve = tokio::spawn(proxy::serve(listeners, shared.clone(), stopped, beat));
    let notifier = reloader.notifier.clone();
    controls
        .until_stop(
            reloader,
            Some(ebpf),
            &notifier,
            Some((&mut learn, steering, &netlink)),
        )
        .await;
    reloader.board.set_state(Readiness::Stopping);
    reloader.esmtp.ready.store(false, Ordering::Relaxed);
    reloader.notifier.stopping();
    let _ = stop.send(true);
    serve.await.context("the proxy task failed")??;
    let c = &shared.counters;
    log::info!(
        "proxy stopped: {} session(s) inspected, {} refused",
        c.accepted.load(Ordering::Relaxed),
        c.refused.load(Ordering::Relaxed)
    );
    // The summary goes to stderr with the log: stdout is the default audit
    // sink (JSON lines).
    eprint!("{}", shared.esmtp.render());
    Ok(())
}

/// The kernel's share of the per-client session limit, unless the policy
/// turns it (or the limit) off.
fn client_blocks(
    pin_dir: &std::path::Path,
    limits: &crate::config::ClientLimits,
) -> Result<Option<Arc<dyn proxy::admission::AtLimit>>> {
    if !limits.in_kernel || limits.sessions == 0 {
        return Ok(None);
    }
    let blocks = ClientBlocks::open(pin_dir, &limits.exceptions)
        .context("opening the kernel's per-client block tries")?;
    log::info!(
        "a client holding {} sessions has its next SYNs dropped in XDP",
        limits.sessions
    );
    Ok(Some(Arc::new(blocks)))
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

/// Removes live exemptions whose `--for` is up, every second.
async fn expire_forever(store: Store, mut table: ExemptTable) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        match store.expire(&mut table) {
            Ok(gone) => {
                for net in gone {
                    log::info!("exemption {net} expired");
                }
            }
            Err(e) => log::warn!("expiring exemptions: {e:#}"),
        }
    }
}

/// Sweeps the flow table every [`sweeper::INTERVAL`], with the timeouts of
/// the policy in force (a reload changes them).
async fn sweep_forever(mut sweeper: Sweeper, mut timeouts: watch::Receiver<FlowTimeouts>) {
    let mut tick = tokio::time::interval(sweeper::INTERVAL);
    loop {
        tick.tick().await;
        if timeouts.has_changed().unwrap_or(false) {
            sweeper.set_timeouts(*timeouts.borrow_and_update());
        }
        match sweeper.sweep(sweeper::monotonic_ns()) {
            Ok(sweep) if sweep.did_something() => log::debug!("sweeper: {sweep:?}"),
            Ok(_) => {}
            Err(e) => log::warn!("sweeper: {e:#}"),
        }
    }
}
