//! The admission half of `cargo xtask bench` (needs root): legitimate mail
//! while attackers hold idle sessions through the inspector. On a lab of
//! its own, `inspector run` with the default policy (`max-sessions = 1024`,
//! `per-client-sessions = 50`, stress at 80 %), Postfix's `smtp-sink` on the
//! server. The legitimate client is `smtp-source -s 10 -m 2000 -l 1024`
//! from the client namespace's own address (198.18.0.2); its messages per
//! second are measured alternately during an attack and without one,
//! `--repeats` times each, for two attacks:
//!
//! - `one-address`: the attack, one address (198.18.0.3) opening
//!   1,030 sessions and holding each idle after the greeting;
//! - `many-addresses`: 40 addresses (198.18.0.100 to .139) opening 50
//!   sessions each, 2,000 in all: more than `max-sessions`, so the proxy is
//!   full and in stress mode, and every legitimate session has to take the
//!   slot of an idle one.
//!
//! The attacker keeps up the pressure: a connection closed or refused is
//! opened again a second later. Prints one JSON object, with the cores the
//! machine, the daemon and the attacker (this process) used while the
//! last runs of each kind measured: they all share the machine's 2 cores
//! with the legitimate client and the server.
//!
//! `cargo bench -p inspector --bench attack -- --repeats 5`

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use inspector::kernel::bpffs;
use inspector_lab::{
    Lab, Netns, OUTSIDE, SERVER_V4,
    figures::{machine_cpu, median, process_cpu},
    inspector::{Scratch, read, start_proxy, wait_until},
    load::{raise_nofile, smtp_source},
};
use tokio::io::AsyncReadExt;

const MESSAGES: usize = 2000;
const SESSIONS: usize = 10;
const BYTES: usize = 1024;
const METRICS: &str = "127.0.0.1:9725";

/// One attack: its name, the addresses it opens from, sockets per address.
struct Attack {
    name: &'static str,
    sources: Vec<IpAddr>,
    per_source: usize,
}

fn attacks() -> [Attack; 2] {
    [
        Attack {
            name: "one-address",
            sources: vec![Ipv4Addr::new(198, 18, 0, 3).into()],
            per_source: 1030,
        },
        Attack {
            name: "many-addresses",
            sources: (100..140)
                .map(|i| Ipv4Addr::new(198, 18, 0, i).into())
                .collect(),
            per_source: 50,
        },
    ]
}

/// What the attacker saw, summed over its sockets.
#[derive(Default)]
struct Tally {
    /// Sockets greeted with 220 and held now.
    held: AtomicU64,
    greeted: AtomicU64,
    /// First replies that were not 220 (`421 …`).
    refused: AtomicU64,
    /// Held sockets the server side closed (evicted, timed out).
    closed: AtomicU64,
    /// Connects that failed or timed out.
    failed: AtomicU64,
}

fn main() -> Result<()> {
    let mut repeats = 5usize;
    let mut inspector = PathBuf::from(env!("CARGO_BIN_EXE_inspector"));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().context("a value");
        match arg.as_str() {
            "--repeats" => repeats = value()?.parse()?,
            "--inspector" => inspector = value()?.into(),
            "--bench" => {}
            _ => bail!("unknown argument {arg}"),
        }
    }
    let nofile = raise_nofile(16_384)?;
    let pid = std::process::id();
    let lab = Lab::create(&format!("ba{pid}"))?;
    let pins = bpffs::OwnedPinDir::new(PathBuf::from(format!(
        "/sys/fs/bpf/inspector-bench-attack-{pid}"
    )))?;
    let scratch = Scratch::new(std::env::temp_dir().join(format!("inspector-bench-attack-{pid}")))?;
    for ns in [&lab.client, &lab.gateway, &lab.server] {
        ns.sysctl("net.core.somaxconn", "4096")?;
        ns.sysctl("net.ipv4.tcp_max_syn_backlog", "4096")?;
    }
    for attack in &attacks() {
        for a in &attack.sources {
            if *a != IpAddr::from(inspector_lab::CLIENT2_V4) {
                lab.client
                    .ip(&["addr", "add", &format!("{a}/24"), "dev", "eth0"])?;
            }
        }
    }
    let _sink = lab.server.spawn(lab.server.command("smtp-sink").args([
        "-u",
        "nobody",
        "-m",
        "4096",
        "0.0.0.0:25",
        "4096",
    ]))?;
    lab.server.wait_listening("0.0.0.0:25")?;
    // The default policy: nothing in the file.
    let policy = scratch.path().join("policy.toml");
    std::fs::write(&policy, "")?;
    let log = scratch.path().join("daemon.log");
    let args = [
        "--iface".as_ref(),
        OUTSIDE.as_ref(),
        "--policy".as_ref(),
        policy.as_os_str(),
        "--audit".as_ref(),
        "off".as_ref(),
        "--metrics".as_ref(),
        METRICS.as_ref(),
    ];
    let mut daemon = start_proxy(&lab.gateway, &inspector, pins.path(), &args, &log)?;
    let daemon_pid = daemon.child().id();
    let server = SocketAddr::new(SERVER_V4.into(), 25);

    let mut results = Vec::new();
    for attack in attacks() {
        let (mut during, mut without) = (Vec::new(), Vec::new());
        let (mut seen, mut cores_without) = (serde_json::Value::Null, serde_json::Value::Null);
        for _ in 0..repeats {
            eprintln!("attack_bench: {}: without", attack.name);
            drained(&lab)?;
            let (r, cores) = rate(&lab, server, daemon_pid)?;
            without.push(r);
            cores_without = cores;
            eprintln!("attack_bench: {}: during", attack.name);
            // From a proxy as idle as the run without: the sessions of that
            // run may linger a moment after its client is done.
            drained(&lab)?;
            let (r, s) = during_attack(&lab, server, &attack, &log, daemon_pid)?;
            during.push(r);
            seen = s;
        }
        let (d, w) = (median(during), median(without));
        results.push(serde_json::json!({
            "attack": attack.name,
            "addresses": attack.sources.len(),
            "sockets": attack.sources.len() * attack.per_source,
            "during_msgs_per_s": d,
            "without_msgs_per_s": w,
            "ratio": d / w,
            "last_attack": seen,
            "cores_without": cores_without,
        }));
    }
    drained(&lab)?;
    let out = serde_json::json!({
        "repeats": repeats,
        "messages": MESSAGES,
        "sessions": SESSIONS,
        "bytes": BYTES,
        "nofile_limit": nofile,
        "policy": "max-sessions 1024, per-client-sessions 50, stress-threshold 80, stress-timeout 10",
        "attacks": results,
    });
    println!("{out}");
    Ok(())
}

/// Messages per second of one smtp-source run, and the cores used
/// meanwhile: by the machine (of which softirq), the daemon, and this
/// process (the attacker's threads).
fn rate(lab: &Lab, server: SocketAddr, daemon: u32) -> Result<(f64, serde_json::Value)> {
    let me = std::process::id();
    let (m0, d0, a0) = (machine_cpu()?, process_cpu(daemon)?, process_cpu(me)?);
    let elapsed = smtp_source(lab, server, SESSIONS, MESSAGES, BYTES)?.as_secs_f64();
    let (m, d, a) = (
        machine_cpu()? - m0,
        process_cpu(daemon)? - d0,
        process_cpu(me)? - a0,
    );
    let cores = |s: f64| (s / elapsed * 100.0).round() / 100.0;
    let used = serde_json::json!({
        "machine": cores(m.busy),
        "softirq": cores(m.softirq),
        "daemon": cores(d),
        "attacker": cores(a),
    });
    Ok((MESSAGES as f64 / elapsed, used))
}

/// Starts the attack, waits until it holds what it can, measures, stops it;
/// returns the rate and what the attacker and the proxy saw.
fn during_attack(
    lab: &Lab,
    server: SocketAddr,
    attack: &Attack,
    log: &Path,
    daemon: u32,
) -> Result<(f64, serde_json::Value)> {
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let before = scrape(lab)?;
    std::thread::scope(|scope| -> Result<_> {
        let attacker = scope.spawn({
            let (tally, stop) = (tally.clone(), stop.clone());
            let client = &lab.client;
            move || attacker(client, server, attack, tally, stop)
        });
        // Until every socket has had its first answer (and a moment for the
        // proxy to settle).
        let total = (attack.sources.len() * attack.per_source) as u64;
        let settled = wait_until(Duration::from_secs(60), || {
            let t = &tally;
            t.greeted.load(Ordering::Relaxed)
                + t.refused.load(Ordering::Relaxed)
                + t.failed.load(Ordering::Relaxed)
                >= total
        });
        std::thread::sleep(Duration::from_millis(500));
        let held = tally.held.load(Ordering::Relaxed);
        let start = scrape(lab)?;
        let measured = rate(lab, server, daemon);
        let end = scrape(lab)?;
        stop.store(true, Ordering::Relaxed);
        attacker
            .join()
            .map_err(|_| anyhow::anyhow!("the attacker panicked"))??;
        if !settled {
            bail!(
                "the attack did not get its answers within 60 s:\n{}",
                read(log)
            );
        }
        let (measured, cores) = measured?;
        let t = &tally;
        let per_client_syns = "inspector_limit_drops_total{reason=\"per-client\"}";
        let seen = serde_json::json!({
            "cores": cores,
            "syns_dropped_per_client_while_measuring": metric(&end, per_client_syns)
                - metric(&start, per_client_syns),
            "clients_blocked_when_measuring": metric(&start, "inspector_clients_blocked"),
            "held_when_measuring": held,
            "greeted": t.greeted.load(Ordering::Relaxed),
            "refused": t.refused.load(Ordering::Relaxed),
            "closed_by_proxy": t.closed.load(Ordering::Relaxed),
            "connect_failed": t.failed.load(Ordering::Relaxed),
            "sessions_active_when_measuring": metric(&start, "inspector_esmtp_sessions_active"),
            "stress_when_measuring": metric(&start, "inspector_stress"),
            "evicted_while_measuring": metric(&end, "inspector_sessions_evicted_total")
                - metric(&start, "inspector_sessions_evicted_total"),
            "refused_per_client_limit": metric(&end, "inspector_sessions_refused_total{reason=\"per-client-limit\"}")
                - metric(&before, "inspector_sessions_refused_total{reason=\"per-client-limit\"}"),
            "refused_max_sessions": metric(&end, "inspector_sessions_refused_total{reason=\"max-sessions\"}")
                - metric(&before, "inspector_sessions_refused_total{reason=\"max-sessions\"}"),
        });
        Ok((measured, seen))
    })
}

/// Holds `per_source` sockets from each source until `stop`, re-opening
/// each a second after it is refused or closed.
fn attacker(
    client: &Netns,
    server: SocketAddr,
    attack: &Attack,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    client.run(|| -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for &src in &attack.sources {
                for _ in 0..attack.per_source {
                    let (tally, stop) = (tally.clone(), stop.clone());
                    tasks.spawn(hold(src, server, tally, stop));
                }
            }
            while tasks.join_next().await.is_some() {}
        });
        Ok(())
    })?
}

async fn hold(src: IpAddr, server: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let stopped = || stop.load(Ordering::Relaxed);
    let pause = Duration::from_secs(1);
    while !stopped() {
        let connect = async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(src, 0))?;
            socket.connect(server).await
        };
        let mut stream = match tokio::time::timeout(Duration::from_secs(3), connect).await {
            Ok(Ok(s)) => s,
            _ => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let mut buf = [0u8; 512];
        let first = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await;
        match first {
            Ok(Ok(n)) if buf[..n].starts_with(b"220") => {
                tally.greeted.fetch_add(1, Ordering::Relaxed);
                tally.held.fetch_add(1, Ordering::Relaxed);
                // Idle: read until the proxy closes it, or the attack stops.
                loop {
                    if stopped() {
                        tally.held.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                    match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf))
                        .await
                    {
                        Err(_) => continue,
                        Ok(Ok(n)) if n > 0 => continue,
                        Ok(_) => break,
                    }
                }
                tally.held.fetch_sub(1, Ordering::Relaxed);
                tally.closed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(_)) => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(stream);
        tokio::time::sleep(pause).await;
    }
}

/// The metrics endpoint's body, scraped in the gateway.
fn scrape(lab: &Lab) -> Result<String> {
    let out = lab
        .gateway
        .command("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://{METRICS}/metrics"))
        .output()
        .context("running curl")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn metric(body: &str, series: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the proxy holds no session (the previous attack's are gone).
fn drained(lab: &Lab) -> Result<()> {
    if !wait_until(Duration::from_secs(30), || {
        scrape(lab).is_ok_and(|b| {
            b.contains("\ninspector_esmtp_sessions_active 0\n")
                && b.contains("\ninspector_stress 0\n")
        })
    }) {
        bail!("the proxy still holds sessions 30 s after the attack stopped");
    }
    Ok(())
}
