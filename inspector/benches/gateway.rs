//! What the gateway spends (needs root), on a lab of its own with the
//! programs in native mode (a pass-only program on the end hosts' veths):
//!
//! - CPU time per SYN of a spoofed flood, on the gateway: its `outside`
//!   veth does its receive work in a threaded NAPI kernel thread pinned to
//!   one CPU (the senders, which send XDP frames as a NIC would deliver
//!   them, run on the other), and that thread's run time
//!   (`/proc/PID/schedstat`) divided by the SYNs handled is the cost of a
//!   packet. Handled: dropped by our XDP limit (`on-embryonic-limit =
//!   "drop"`), by nftables `ct count` on the forward hook or by a program
//!   that only drops (the floor); answered with a SYN cookie by our XDP
//!   intercept or by nftables `synproxy`. Then the same five with the
//!   frames arriving on the gateway: one thread on its CPU makes each SYN
//!   arrive on `outside` and hands it to the handler, all in that thread,
//!   whose CPU time per SYN is the cost (no sender on another CPU shares
//!   the frames' pages or a lock with it).
//! - SMTP sessions per second through our intercept and through nftables
//!   `synproxy`, each during the same steady flood and without it.
//! - A 50 MiB transfer over an intercepted connection and over one that was
//!   not intercepted (a server address without limits), in pairs.
//!
//! `cargo bench -p inspector --bench gateway -- --repeats 5`

use std::{
    io::{Read, Write},
    net::{SocketAddr, SocketAddrV4, TcpListener},
    os::fd::AsFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::{Ebpf, programs::Xdp};
use inspector::{
    config::Policy,
    kernel::{
        bpffs::OwnedPinDir,
        limits::{self, LimitStats},
        loader::{self, AttachMode},
        sweeper::{self, Sweeper},
    },
};
use inspector_common::{DropReason, InterceptEvent};
use inspector_lab::{
    CLIENT_V4, INSIDE, Lab, MAIL_GATEWAY_V4, Netns, OUTSIDE, SERVER_V4,
    figures::{median, pin, settled},
    frame_flood::{DropAll, FrameFlood, Then},
    load::{Sessions, sessions, sessions_during_flood, wait_smtp},
    raw::mac,
    syn::{SPOOFED_V4, SynFlood},
};

const LIMIT: u32 = 100;
const SENDERS: usize = 4;
/// The CPU the gateway's receive thread runs on; the senders run on the other.
const GATEWAY_CPU: usize = 1;
const SENDER_CPU: usize = 0;
const TABLE: &str = "inspector_bench";
const TRANSFER: usize = 50 << 20;
/// Transfers of each kind per `--repeats`.
const TRANSFER_ROUNDS_PER_REPEAT: usize = 3;

/// The real clients of the sessions' capacity figure, each one session
/// after another (the other figure has one): enough to keep both cores
/// busy, so the rate is what the path can do rather than one session's
/// round trips.
const CLIENTS: usize = 8;

fn main() -> Result<()> {
    let (mut repeats, mut syns, mut seconds, mut clients) = (5usize, 100_000usize, 2u64, CLIENTS);
    // Which parts run (all by default): transfer, cpu, sessions.
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || -> Result<usize> { Ok(args.next().context("a number")?.parse()?) };
        match arg.as_str() {
            "--repeats" => repeats = value()?,
            "--syns" => syns = value()?,
            "--seconds" => seconds = value()? as u64,
            "--clients" => clients = value()?,
            "--only" => only = Some(args.next().context("transfer, cpu or sessions")?),
            "--bench" => {}
            _ => bail!("unknown argument {arg}"),
        }
    }
    let runs = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let pid = std::process::id();
    let lab = Lab::create(&format!("bg{pid}"))?;
    let prefix = format!("{}/{}", SPOOFED_V4.0, SPOOFED_V4.1);
    lab.gateway
        .ip(&["route", "add", &prefix, "via", &CLIENT_V4.to_string()])?;
    lab.server.sysctl("net.ipv4.tcp_max_syn_backlog", "4096")?;
    // What `synproxy` needs: a mid-stream ACK is not a new connection.
    lab.gateway
        .sysctl("net.netfilter.nf_conntrack_tcp_loose", "0")
        .context("conntrack's sysctl (is nf_conntrack loaded?)")?;
    let ends_pins = OwnedPinDir::new(PathBuf::from(format!(
        "/sys/fs/bpf/inspector-bench-ends-{pid}"
    )))?;
    let mut ends = loader::load_pass_only(ends_pins.path())?;
    for (ns, iface) in lab.end_host_interfaces() {
        ns.run(|| loader::attach_pass_only(&mut ends, iface))??;
    }

    let transfer = runs("transfer")
        .then(|| transfer(&lab, repeats))
        .transpose()?;

    // NAPI on `outside` with or without an XDP program (GRO asks for it),
    // in a thread of its own; the client's end too, so the answers it
    // receives are not worked on in the gateway's thread.
    lab.gateway
        .command("ethtool")
        .args(["-K", OUTSIDE, "gro", "on"])
        .status()?
        .success()
        .then_some(())
        .context("ethtool -K outside gro on")?;
    let gateway_napi = threaded_napi(&lab.gateway, OUTSIDE)?;
    pin(gateway_napi, GATEWAY_CPU)?;
    pin(threaded_napi(&lab.client, "eth0")?, SENDER_CPU)?;
    let wscale = server_wscale(&lab)?;
    let cpu = runs("cpu")
        .then(|| cpu_per_syn(&lab, gateway_napi, repeats, syns, wscale))
        .transpose()?;
    let cpu_at_gateway = runs("cpu")
        .then(|| cpu_per_syn_at_gateway(&lab, repeats, syns, wscale))
        .transpose()?;
    // Sessions wait on every packet's receive work: back to softirq, where
    // it runs at once instead of when a thread gets a CPU.
    for (ns, dev) in [(&lab.gateway, OUTSIDE), (&lab.client, "eth0")] {
        set_threaded(ns, dev, false)?;
    }
    let window = Duration::from_secs(seconds);
    let (sessions, concurrent) = if runs("sessions") {
        (
            Some(session_rates(&lab, repeats, window, wscale, 1)?),
            Some(session_rates(&lab, repeats, window, wscale, clients)?),
        )
    } else {
        (None, None)
    };
    drop(ends);
    println!(
        "{}",
        serde_json::json!({
            "repeats": repeats,
            "syns": syns,
            "senders": SENDERS,
            "gateway_cpu": GATEWAY_CPU,
            "limit": LIMIT,
            "cpu": cpu,
            "cpu_at_gateway": cpu_at_gateway,
            "sessions": sessions,
            "sessions_concurrent": concurrent,
            "transfer": transfer,
            "synproxy_wscale": wscale,
        })
    );
    Ok(())
}

/// Our programs on both gateway interfaces in native mode, with `policy`.
fn ours(lab: &Lab, pins: &Path, policy: &Policy) -> Result<Ebpf> {
    let mut ebpf = loader::load(pins)?;
    limits::apply_policy(pins, &policy.servers)?;
    for iface in [OUTSIDE, INSIDE] {
        lab.gateway
            .run(|| loader::attach_xdp(&mut ebpf, iface, AttachMode::Native).map(drop))??;
    }
    Ok(ebpf)
}

fn policy(action: &str) -> Result<Policy> {
    Ok(Policy::parse(
        Path::new("(bench)"),
        &format!(
            "[[server]]\naddress = \"{SERVER_V4}\"\nmax-embryonic = {LIMIT}\n\
             on-embryonic-limit = \"{action}\"\n"
        ),
    )?)
}

fn pins(name: &str) -> Result<OwnedPinDir> {
    OwnedPinDir::new(PathBuf::from(format!(
        "/sys/fs/bpf/inspector-bench-{name}-{}",
        std::process::id()
    )))
}

/// The pass-only program on the gateway's `outside`, natively: with an XDP
/// program a veth receives every packet in its NAPI thread, as it does
/// with ours (without one it takes packets from a local sender such as
/// the raw sockets here on the sender's CPU). Detached when dropped.
fn pass_on_outside(lab: &Lab, pins: &OwnedPinDir) -> Result<Ebpf> {
    let mut ebpf = loader::load_pass_only(pins.path())?;
    lab.gateway
        .run(|| loader::attach_pass_only(&mut ebpf, OUTSIDE))??;
    Ok(ebpf)
}

/// nftables' SYN proxy for the server (as its documentation sets it up:
/// the SYNs untracked, then answered by `synproxy`, its MSS and window
/// scale the server's own), on the forward hook.
fn synproxy_script(wscale: u8) -> String {
    format!(
        "table ip {TABLE} {{\n\
         chain pre {{\n type filter hook prerouting priority raw; policy accept;\n \
         ip daddr {SERVER_V4} tcp dport 25 tcp flags syn notrack\n}}\n\
         chain forward {{\n type filter hook forward priority filter; policy accept;\n \
         ip daddr {SERVER_V4} tcp dport 25 ct state invalid,untracked counter \
         synproxy mss 1460 wscale {wscale} timestamp sack-perm\n \
         ct state invalid drop\n}}\n}}\n"
    )
}

fn ct_count_script() -> String {
    format!(
        "table ip {TABLE} {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  \
         ip daddr {SERVER_V4} tcp dport 25 ct state new ct count over {LIMIT} counter drop\n }}\n}}\n"
    )
}

fn delete_table(lab: &Lab) -> Result<()> {
    lab.gateway.nft(&format!("delete table ip {TABLE}\n"))
}

/// What the CPU figures' runs of our programs share: the server's
/// listener (it keeps what passes half-open; the sources are routed back
/// into the client, where nothing answers), the flood's destination, and
/// pins and policies for the drop and for intercept.
struct Ours {
    _listener: TcpListener,
    dst: SocketAddrV4,
    drop_pins: OwnedPinDir,
    icept_pins: OwnedPinDir,
    drop_policy: Policy,
    icept_policy: Policy,
}

impl Ours {
    /// Pins named `<prefix>drop` and `<prefix>icept`.
    fn new(lab: &Lab, prefix: &str) -> Result<Self> {
        let server = SocketAddr::new(SERVER_V4.into(), 25);
        let SocketAddr::V4(dst) = server else {
            bail!("an IPv4 server")
        };
        Ok(Self {
            _listener: lab.server.tcp_listen(server, 4096)??,
            dst,
            drop_pins: pins(&format!("{prefix}drop"))?,
            icept_pins: pins(&format!("{prefix}icept"))?,
            drop_policy: policy("drop")?,
            icept_policy: policy("intercept")?,
        })
    }

    /// The SYNs our drop has dropped.
    fn drops(&self) -> Result<u64> {
        Ok(LimitStats::read(self.drop_pins.path(), 0)?.drops[DropReason::MaxEmbryonic as usize])
    }

    /// The SYN cookies our intercept has sent.
    fn cookies(&self) -> Result<u64> {
        Ok(LimitStats::read(self.icept_pins.path(), 0)?.intercepts
            [InterceptEvent::CookieSent as usize])
    }
}

/// The gateway's CPU time per SYN, in ns, of each way to handle a flood;
/// medians of `repeats`, the four alternating.
fn cpu_per_syn(
    lab: &Lab,
    napi: u32,
    repeats: usize,
    syns: usize,
    wscale: u8,
) -> Result<serde_json::Value> {
    let o = Ours::new(lab, "")?;
    let pass_pins = pins("pass")?;
    let flood = FrameFlood::new(&lab.client, "eth0", mac(&lab.gateway, OUTSIDE)?, o.dst)?;
    let floor_pins = pins("floor")?;
    let floor = DropAll::pin(&floor_pins.path().join("drop_all"))?;
    let mut rows: [Vec<(f64, f64)>; 5] = Default::default();
    for _ in 0..repeats {
        let ebpf = ours(lab, o.drop_pins.path(), &o.drop_policy)?;
        rows[0].push(measure(lab, napi, &flood, syns, || o.drops())?);
        drop(ebpf);

        let pass = pass_on_outside(lab, &pass_pins)?;
        lab.gateway.nft(&ct_count_script())?;
        let nft = measure(lab, napi, &flood, syns, || {
            lab.gateway.nft_counter("ip", TABLE)
        });
        delete_table(lab)?;
        rows[1].push(nft?);
        drop(pass);

        let ebpf = ours(lab, o.icept_pins.path(), &o.icept_policy)?;
        rows[2].push(measure(lab, napi, &flood, syns, || o.cookies())?);
        drop(ebpf);

        let pass = pass_on_outside(lab, &pass_pins)?;
        lab.gateway.nft(&synproxy_script(wscale))?;
        let nft = measure(lab, napi, &flood, syns, || {
            lab.gateway.nft_counter("ip", TABLE)
        });
        delete_table(lab)?;
        rows[3].push(nft?);
        drop(pass);

        let xdpdrv = |how: &[&str]| {
            let set = ["link", "set", "dev", OUTSIDE, "xdpdrv"];
            lab.gateway.ip(&[&set[..], how].concat())
        };
        xdpdrv(&["pinned", &floor.path().to_string_lossy()])?;
        let dropped = measure(lab, napi, &flood, syns, || {
            veth_stat(lab, "rx_queue_0_xdp_drops")
        });
        xdpdrv(&["off"])?;
        rows[4].push(dropped?);
    }
    medians(rows)
}

/// The same five handlers, each given the flood on the gateway's CPU by
/// one thread there: the frames arrive on `outside` (`BPF_PROG_RUN` in
/// live-frames mode, in the gateway's namespace) and are handled in that
/// thread, their pages staying on its CPU as a driver's own do, so no
/// other CPU takes part and nothing is lost before a handler. A SYN's cost
/// is the thread's CPU time per SYN handled.
fn cpu_per_syn_at_gateway(
    lab: &Lab,
    repeats: usize,
    syns: usize,
    wscale: u8,
) -> Result<serde_json::Value> {
    let o = Ours::new(lab, "local-")?;
    let peer = mac(&lab.client, "eth0")?;
    let arriving = |then: Then<'_>| FrameFlood::arriving(&lab.gateway, OUTSIDE, peer, o.dst, then);
    let ours_flood = |ebpf: &Ebpf| -> Result<FrameFlood> {
        let prog: &Xdp = ebpf
            .program("inspector_xdp")
            .context("no inspector_xdp program")?
            .try_into()?;
        arriving(Then::Handler(prog.fd()?.as_fd()))
    };
    let (pass, floor) = (arriving(Then::Pass)?, arriving(Then::Drop)?);
    let nft_counter = || lab.gateway.nft_counter("ip", TABLE);
    let mut rows: [Vec<(f64, f64)>; 5] = Default::default();
    for _ in 0..repeats {
        let ebpf = ours(lab, o.drop_pins.path(), &o.drop_policy)?;
        let flood = ours_flood(&ebpf)?;
        rows[0].push(measure_at_gateway(lab, &flood, syns, Some(&|| o.drops()))?);
        drop((flood, ebpf));

        lab.gateway.nft(&ct_count_script())?;
        let nft = measure_at_gateway(lab, &pass, syns, Some(&nft_counter));
        delete_table(lab)?;
        rows[1].push(nft?);

        let ebpf = ours(lab, o.icept_pins.path(), &o.icept_policy)?;
        let flood = ours_flood(&ebpf)?;
        rows[2].push(measure_at_gateway(
            lab,
            &flood,
            syns,
            Some(&|| o.cookies()),
        )?);
        drop((flood, ebpf));

        lab.gateway.nft(&synproxy_script(wscale))?;
        let nft = measure_at_gateway(lab, &pass, syns, Some(&nft_counter));
        delete_table(lab)?;
        rows[3].push(nft?);

        // The floor's program drops every SYN it is run on.
        rows[4].push(measure_at_gateway(lab, &floor, syns, None)?);
    }
    medians(rows)
}

/// Fills the limit, then has one thread on the gateway's CPU send `syns`
/// more through `flood`, and returns its CPU time per SYN handled (as
/// `handled` counts them; every SYN without it) and the share of the SYNs
/// handled.
fn measure_at_gateway(
    lab: &Lab,
    flood: &FrameFlood,
    syns: usize,
    handled: Option<&dyn Fn() -> Result<u64>>,
) -> Result<(f64, f64)> {
    fill_limit(lab)?;
    // Settled: the filling SYNs' own drops are not the flood's.
    let before = handled.map(settled).transpose()?;
    let ran = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<u64> {
                pin(0, GATEWAY_CPU)?;
                flood.send(syns as u32)
            })
            .join()
            .expect("sender thread")
    })?;
    let count = match (handled, before) {
        (Some(h), Some(before)) => settled(h)? - before,
        _ => syns as u64,
    };
    if count == 0 {
        bail!("none of {syns} SYNs was handled");
    }
    Ok((ran as f64 / count as f64, count as f64 / syns as f64))
}

/// Twice the limit's SYNs from spoofed sources, so that it is full before
/// a flood is measured.
fn fill_limit(lab: &Lab) -> Result<()> {
    let server = SocketAddr::new(SERVER_V4.into(), 25);
    SynFlood::new(&lab.client, server)?.send(2 * LIMIT as usize)?;
    std::thread::sleep(Duration::from_millis(100));
    Ok(())
}

/// The five handlers' medians, named as the report reads them.
fn medians(rows: [Vec<(f64, f64)>; 5]) -> Result<serde_json::Value> {
    let mut out = serde_json::Map::new();
    let names = [
        "xdp_drop",
        "nft_ct_count",
        "xdp_intercept",
        "nft_synproxy",
        "xdp_drop_all",
    ];
    for (name, row) in names.iter().zip(rows) {
        let (ns, share): (Vec<f64>, Vec<f64>) = row.into_iter().unzip();
        out.insert(format!("{name}_ns"), median(ns).into());
        out.insert(format!("{name}_handled"), median(share).into());
    }
    Ok(out.into())
}

/// Fills the limit, then sends `syns` more from [`SENDERS`] threads (as
/// `flood`'s frames) and
/// returns the gateway thread's run time per SYN handled (as `handled`
/// counts them) and the share of the SYNs sent that were handled: when
/// the gateway's thread cannot keep up, the veth's ring drops the rest
/// before any handler sees them.
fn measure(
    lab: &Lab,
    napi: u32,
    flood: &FrameFlood,
    syns: usize,
    handled: impl Fn() -> Result<u64>,
) -> Result<(f64, f64)> {
    fill_limit(lab)?;
    // Settled: the filling SYNs' own drops are not the flood's.
    let (before, ran_before) = (settled(&handled)?, run_time_ns(napi)?);
    std::thread::scope(|scope| {
        let senders: Vec<_> = (0..SENDERS)
            .map(|_| {
                scope.spawn(move || {
                    pin(0, SENDER_CPU)?;
                    flood.send((syns / SENDERS) as u32)
                })
            })
            .collect();
        senders
            .into_iter()
            .try_for_each(|s| s.join().expect("sender thread").map(drop))
    })?;
    let last = settled(&handled)?;
    let ran = run_time_ns(napi)? - ran_before;
    let count = last - before;
    if count == 0 {
        bail!("none of {syns} SYNs was handled");
    }
    Ok((ran as f64 / count as f64, count as f64 / syns as f64))
}

/// A counter of the gateway's `outside` veth (`ethtool -S`).
fn veth_stat(lab: &Lab, name: &str) -> Result<u64> {
    let out = lab
        .gateway
        .command("ethtool")
        .args(["-S", OUTSIDE])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no {name} in ethtool -S {OUTSIDE}: {text}"))
}

/// SMTP sessions per second from `clients` real clients with our intercept
/// and with nftables' synproxy, each during a steady flood and without it,
/// alternating.
fn session_rates(
    lab: &Lab,
    repeats: usize,
    window: Duration,
    wscale: u8,
    clients: usize,
) -> Result<serde_json::Value> {
    let server = SocketAddr::new(SERVER_V4.into(), 25);
    let _sink = lab.server.spawn(lab.server.command("smtp-sink").args([
        "-u",
        "nobody",
        &server.to_string(),
        "4096",
    ]))?;
    wait_smtp(lab, server)?;
    let pins = pins("sessions")?;
    let policy = policy("intercept")?;
    let mut sweeper = Sweeper::open(pins.path(), policy.timeouts).ok();
    let mut rows: [Vec<f64>; 5] = Default::default();
    // The flood's SYNs as XDP frames, as a NIC would deliver them (as in
    // `cpu_per_syn`): a raw socket's would cost the lab's shared cores a
    // send each and the gateway's veth a copy each, which a real attacker's
    // host and a real NIC leave out.
    let SocketAddr::V4(dst) = server else {
        bail!("an IPv4 server")
    };
    let flood = FrameFlood::new(&lab.client, "eth0", mac(&lab.gateway, OUTSIDE)?, dst)?;
    let send_syns = |n: usize| flood.send(n as u32).map(drop);
    let (mut synproxy_retrans, mut ours_retrans, mut synproxy_failed) = (0, 0, 0);
    // Our sessions that failed (a step waited 10 s), and all of them:
    // counted and reported, not hidden by a failed run.
    let (mut ours_failed, mut ours_sessions) = (0u32, 0u32);
    let mut count_ours = |s: Sessions| {
        if let Some(e) = &s.first_failure {
            eprintln!("our session failed: {e:#}");
        }
        ours_failed += s.failed;
        ours_sessions += s.completed + s.failed;
        s.per_s
    };
    // SYNs per second the flood sent in each flooded window.
    let mut flood_rates = Vec::new();
    for _ in 0..repeats {
        let ebpf = ours(lab, pins.path(), &policy)?;
        let sweeper = match &mut sweeper {
            Some(s) => s,
            None => sweeper.insert(Sweeper::open(pins.path(), policy.timeouts)?),
        };
        // Start from an empty embryonic count (as the daemon's sweeper
        // would leave it after the embryonic timeout).
        let later = policy.timeouts.embryonic + Duration::from_secs(1);
        sweeper.sweep(sweeper::monotonic_ns() + later.as_nanos() as u64)?;
        rows[0].push(count_ours(
            sessions(lab, server, window, clients).context("ours, without a flood")?,
        ));
        let retrans_before = retransmitted(&lab.client)?;
        let (during, sent) = sessions_during_flood(lab, send_syns, server, window, clients)?;
        rows[1].push(count_ours(during));
        flood_rates.push(sent as f64 / window.as_secs_f64());
        ours_retrans += retransmitted(&lab.client)? - retrans_before;
        let cookies = || -> Result<u64> {
            Ok(LimitStats::read(pins.path(), 0)?.intercepts[InterceptEvent::CookieSent as usize])
        };
        let flooded = cookies()?;
        if flooded == 0 {
            bail!("no SYN cookie was sent: the flood did not reach the intercept limit");
        }
        // The flood stopped, its half-open flows still filling the limit
        // (no sweep): every session intercepted, nothing else sent. What
        // intercepting costs a session, apart from the flood's own CPU.
        let after =
            count_ours(sessions(lab, server, window, clients).context("ours, after the flood")?);
        let intercepted = cookies()? - flooded;
        if (intercepted as f64) < 0.9 * after * window.as_secs_f64() {
            bail!("after the flood, {intercepted} sessions of {after:.0}/s were intercepted");
        }
        rows[4].push(after);
        drop(ebpf);

        lab.gateway.nft(&synproxy_script(wscale))?;
        let retrans_before = retransmitted(&lab.client)?;
        // synproxy's sessions may fail here (see the docs): counted, not fatal.
        let flooded = sessions(lab, server, window, clients).and_then(|quiet| {
            let (during, sent) = sessions_during_flood(lab, send_syns, server, window, clients)?;
            flood_rates.push(sent as f64 / window.as_secs_f64());
            Ok((quiet, during))
        });
        delete_table(lab)?;
        let (quiet, flooded) = flooded?;
        synproxy_retrans += retransmitted(&lab.client)? - retrans_before;
        synproxy_failed += quiet.failed + flooded.failed;
        let (quiet, flooded) = (quiet.per_s, flooded.per_s);
        rows[2].push(quiet);
        rows[3].push(flooded);
    }
    // Each repeat's windows follow one another, so their ratio leaves out
    // what drifts between repeats (the shared machine's other load).
    let paired = |num: usize, den: usize| {
        median(
            rows[num]
                .iter()
                .zip(&rows[den])
                .map(|(n, d)| n / d)
                .collect(),
        )
    };
    let (ours_ratio, after_ratio, synproxy_ratio) = (paired(1, 0), paired(4, 0), paired(3, 2));
    let windows = rows.clone();
    let [
        ours_quiet,
        ours_flood,
        synproxy_quiet,
        synproxy_flood,
        ours_after,
    ] = rows.map(median);
    let checksum_errors = [
        nstat(&lab.client, "TcpInCsumErrors")?,
        nstat(&lab.server, "TcpInCsumErrors")?,
    ];
    Ok(serde_json::json!({
        "seconds": window.as_secs(),
        "clients": clients,
        "flood_syns_per_s": median(flood_rates),
        "ours_quiet_per_s": ours_quiet,
        "ours_flood_per_s": ours_flood,
        "ours_intercepted_quiet_per_s": ours_after,
        "ours_flood_over_quiet": ours_ratio,
        "ours_intercepted_over_quiet": after_ratio,
        "synproxy_flood_over_quiet": synproxy_ratio,
        // Per window, in the order above's rows: ours without a flood,
        // during it, synproxy without, during, ours right after.
        "windows": windows,
        "synproxy_quiet_per_s": synproxy_quiet,
        "synproxy_flood_per_s": synproxy_flood,
        "synproxy_client_retransmits": synproxy_retrans,
        "synproxy_failed_sessions": synproxy_failed,
        "ours_client_retransmits": ours_retrans,
        "ours_failed_sessions": ours_failed,
        "ours_sessions": ours_sessions,
        "checksum_errors": checksum_errors,
    }))
}

/// 50 MiB from the client to a server on the same namespace: to the
/// protected address with its embryonic limit full (intercepted) and to an
/// address without limits; medians of `repeats` each, alternating, in MB/s.
fn transfer(lab: &Lab, repeats: usize) -> Result<serde_json::Value> {
    let pins = pins("transfer")?;
    let ebpf = ours(lab, pins.path(), &policy("intercept")?)?;
    let protected = SocketAddr::new(SERVER_V4.into(), 25);
    let plain = SocketAddr::new(MAIL_GATEWAY_V4.into(), 25);
    let sinks = [protected, plain]
        .map(|addr| -> Result<TcpListener> { Ok(lab.server.tcp_listen(addr, 4096)??) });
    let [protected_sink, plain_sink] = sinks;
    let (protected_sink, plain_sink) = (protected_sink?, plain_sink?);
    // Fill the embryonic limit: from now on each connection to the
    // protected address is intercepted. Nothing sweeps here, so it stays.
    SynFlood::new(&lab.client, protected)?.send(2 * LIMIT as usize)?;
    std::thread::sleep(Duration::from_millis(200));
    let verified = || -> Result<u64> {
        Ok(LimitStats::read(pins.path(), 0)?.intercepts[InterceptEvent::ClientVerified as usize])
    };
    let before = verified()?;
    // A transfer takes a fraction of a second, so what else runs on the
    // shared cores moves it: more rounds, and the ratio paired per round.
    let rounds = TRANSFER_ROUNDS_PER_REPEAT * repeats;
    let (mut intercepted, mut direct, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let i = send_through(lab, &protected_sink, protected)?;
        let d = send_through(lab, &plain_sink, plain)?;
        intercepted.push(i);
        direct.push(d);
        ratios.push(i / d);
    }
    let verified = verified()? - before;
    if verified < rounds as u64 {
        bail!("{verified} of {rounds} transfers to {protected} were intercepted");
    }
    drop(ebpf);
    Ok(serde_json::json!({
        "bytes": TRANSFER,
        "rounds": rounds,
        "intercepted_mb_per_s": median(intercepted),
        "direct_mb_per_s": median(direct),
        "ratio": median(ratios),
    }))
}

/// Connects from the client to `addr`, sends [`TRANSFER`] bytes and waits
/// for the server's count of them; MB/s from connect to that answer.
fn send_through(lab: &Lab, sink: &TcpListener, addr: SocketAddr) -> Result<f64> {
    std::thread::scope(|scope| {
        let server = scope.spawn(|| -> Result<()> {
            let (mut conn, _) = sink.accept()?;
            let (mut buf, mut got) = (vec![0u8; 1 << 16], 0u64);
            loop {
                match conn.read(&mut buf)? {
                    0 => break,
                    n => got += n as u64,
                }
            }
            conn.write_all(&got.to_be_bytes())?;
            Ok(())
        });
        let elapsed = lab.client.run(|| -> Result<Duration> {
            let start = Instant::now();
            let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            let chunk = vec![0x5au8; 1 << 16];
            for _ in 0..TRANSFER / chunk.len() {
                conn.write_all(&chunk)?;
            }
            conn.shutdown(std::net::Shutdown::Write)?;
            let mut count = [0u8; 8];
            conn.read_exact(&mut count)?;
            if u64::from_be_bytes(count) != TRANSFER as u64 {
                bail!(
                    "the server got {} of {TRANSFER} bytes",
                    u64::from_be_bytes(count)
                );
            }
            Ok(start.elapsed())
        })??;
        server.join().expect("server thread")?;
        Ok(TRANSFER as f64 / 1e6 / elapsed.as_secs_f64())
    })
}

/// The window scale the server announces (what `synproxy` must be told):
/// the client's `tcpi_snd_wscale` on a connection to it, unprotected.
fn server_wscale(lab: &Lab) -> Result<u8> {
    use std::os::fd::AsRawFd;
    let server = SocketAddr::new(SERVER_V4.into(), 25);
    let _listener = lab.server.tcp_listen(server, 16)??;
    let conn = lab
        .client
        .run(|| std::net::TcpStream::connect_timeout(&server, Duration::from_secs(3)))??;
    let mut info = [0u8; 8];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: TCP_INFO writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 || len < 7 {
        bail!("TCP_INFO: {}", std::io::Error::last_os_error());
    }
    // struct tcp_info: byte 6 holds tcpi_snd_wscale (low 4 bits) and
    // tcpi_rcv_wscale.
    Ok(info[6] & 0x0f)
}

/// Makes `dev`'s NAPI in `ns` run in a kernel thread of its own; returns
/// the thread's pid (the one `napi/DEV-*` thread that appeared).
fn threaded_napi(ns: &Netns, dev: &str) -> Result<u32> {
    let prefix = format!("napi/{dev}-");
    let before = threads(&prefix);
    set_threaded(ns, dev, true)?;
    let new: Vec<u32> = threads(&prefix)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    match new[..] {
        [pid] => Ok(pid),
        _ => bail!("{} new {prefix}* threads, not one", new.len()),
    }
}

/// TCP segments retransmitted in `ns` so far (`nstat TcpRetransSegs`).
fn retransmitted(ns: &Netns) -> Result<u64> {
    nstat(ns, "TcpRetransSegs")
}

/// A counter of the kernel's SNMP statistics in `ns`, absolute.
fn nstat(ns: &Netns, counter: &str) -> Result<u64> {
    let out = ns.command("nstat").args(["-az", counter]).output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(counter))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("nstat shows {counter}"))
}

/// Turns threaded NAPI on or off for `dev` in `ns`.
fn set_threaded(ns: &Netns, dev: &str, on: bool) -> Result<()> {
    // A namespace's sysfs shows its own devices: `ip netns exec` mounts it.
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "sh", "-c"])
        .arg(format!(
            "echo {} > /sys/class/net/{dev}/threaded",
            u8::from(on)
        ))
        .status()?;
    if !status.success() {
        bail!("threaded NAPI {on} on {dev} in {}", ns.name);
    }
    Ok(())
}

/// Pids of the kernel threads whose name starts with `prefix`.
fn threads(prefix: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with(prefix))
        })
        .collect()
}

/// The time `pid` has run on a CPU, in ns (the first field of schedstat).
fn run_time_ns(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .with_context(|| format!("the schedstat of thread {pid}"))?;
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("schedstat's run time")
}
