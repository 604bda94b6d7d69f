//! The SMTP half of `cargo xtask bench` (needs root): on a lab of its own,
//! `inspector run` on the gateway with the proxy, Postfix's `smtp-sink` on
//! the server listening on both of the server's addresses. Sessions to
//! `SERVER_V4` are steered into the proxy; `MAIL_GATEWAY_V4` is exempt in
//! the policy (`[[exempt]]`), so sessions to it are the direct path: the same
//! sink, the same namespaces and routes, only the proxy left out. The peer
//! is HAProxy (`mode tcp`) on the same gateway, listening on
//! `GATEWAY_OUTSIDE_V4:2525` and relaying to the same sink's exempt address:
//! the plain proxy an operator would otherwise put there. The three
//! alternate, `--repeats` times each:
//!
//! - messages per second of `smtp-source -s 10 -m 2000 -l 1024` (a new
//!   session per message, as smtp-source does without `-d`), and the CPU
//!   each message took: the machine's (`/proc/stat`) and the proxy
//!   process's, user and kernel apart (`/proc/PID/stat`);
//! - MB/s of `smtp-source -s 1 -m 10 -l 10485760` (10 MiB messages);
//! - the latency of single transactions (MAIL, RCPT, DATA, 1 KiB, `.`, each
//!   waiting for its reply) on one open session, and of whole sessions
//!   (connect, greeting, QUIT), timed one by one by a client in this
//!   process: median and p99 over all samples of each path.
//!
//! The daemon logs at `info` (no line per session) and the sessions the
//! proxy took are counted from its metrics endpoint.
//!
//! Then the daemon's RSS (`VmRSS`) before and after opening `--sessions`
//! idle inspected sessions (each has read its greeting, so the proxy holds
//! both the client's and the server's connection). The daemon holds two
//! sockets per session: when its descriptor limit (raised as far as the
//! hard limit allows; further needs `CAP_SYS_RESOURCE`) cannot hold them
//! all, it measures as many as fit, in whole hundreds, and says so in the
//! JSON (`requested_sessions`, `nofile_limit`); `max-sessions` is as many
//! as the daemon's own limit lets it take (it refuses to start otherwise).
//!
//! Last, small messages through the proxy with `workers = 1` and
//! `workers = 2` in the policy, a daemon started for each run, alternating.
//!
//! `cargo bench -p inspector --bench smtp -- --repeats 5 --sessions 10000`
//! (`--inspector PATH` for another `inspector` binary than the one cargo
//! builds with the bench; `--upstream MODE` for a policy `upstream-source`
//! other than the default, which is transparent on the lab: the server
//! sees the client's address).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use inspector::{daemon::nofile, kernel::bpffs};
use inspector_lab::{
    GATEWAY_OUTSIDE_V4, Lab, MAIL_GATEWAY_V4, Netns, OUTSIDE, SERVER_V4, ScopedChild,
    figures::{machine_cpu, median, process_times, quantile, rss_kib},
    inspector::{Scratch, read, start_proxy_logging, wait_until},
    load::{raise_nofile, smtp_source},
};

const SMALL_SESSIONS: usize = 10;
const SMALL_MESSAGES: usize = 2000;
const SMALL_BYTES: usize = 1024;
const LARGE_MESSAGES: usize = 10;
const LARGE_BYTES: usize = 10 << 20;
const TRANSACTIONS: usize = 200;
const SESSIONS: usize = 200;
/// HAProxy's port on the gateway (not 25, which the kernel steers).
const HAPROXY_PORT: u16 = 2525;
/// The daemon's metrics endpoint in the gateway namespace (its default).
const METRICS: &str = "127.0.0.1:9725";

/// One of the paths measured side by side.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Inspected,
    Haproxy,
    Direct,
}

/// The figures of one path.
#[derive(Default)]
struct Figures {
    small: Vec<f64>,
    large: Vec<f64>,
    transaction: Vec<f64>,
    session: Vec<f64>,
    /// Per small-message run: the machine's CPU per message, the proxy's
    /// user and kernel CPU per message (µs), the cores' idle share.
    cpu: [Vec<f64>; 4],
}

/// CPU time used so far, in seconds: the whole machine's (every core) and
/// the proxy's (none on the direct path).
#[derive(Clone, Copy)]
struct Usage {
    machine: f64,
    user: f64,
    system: f64,
}

impl Usage {
    fn now(proxy: Option<u32>) -> Result<Self> {
        let (user, system) = proxy.map_or(Ok((0.0, 0.0)), process_times)?;
        Ok(Self {
            machine: machine_cpu()?.busy,
            user,
            system,
        })
    }

    /// What was used since `before` over `elapsed`, per message (µs), and
    /// the share of the cores left idle.
    fn per_message(self, before: Usage, elapsed: Duration, messages: usize) -> [f64; 4] {
        let per = |used: f64| used / messages as f64 * 1e6;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let machine = self.machine - before.machine;
        [
            per(machine),
            per(self.user - before.user),
            per(self.system - before.system),
            (1.0 - machine / (cores * elapsed.as_secs_f64())).max(0.0),
        ]
    }
}

fn main() -> Result<()> {
    let (mut repeats, mut sessions) = (5usize, 10_000usize);
    // The policy's `upstream-source`; by default none (transparent on the lab).
    let mut upstream: Option<String> = None;
    let mut inspector = PathBuf::from(env!("CARGO_BIN_EXE_inspector"));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().context("a value");
        match arg.as_str() {
            "--repeats" => repeats = value()?.parse()?,
            "--sessions" => sessions = value()?.parse()?,
            "--inspector" => inspector = value()?.into(),
            "--upstream" => upstream = Some(value()?),
            // What `cargo bench` passes to every bench.
            "--bench" => {}
            _ => bail!("unknown argument {arg}"),
        }
    }
    if !inspector.exists() {
        bail!(
            "no inspector binary at {} (build it, or pass --inspector)",
            inspector.display()
        );
    }
    // Every socket of the sessions is a descriptor: in this process (the
    // client), in the daemon (client and server side) and in smtp-sink,
    // which inherit the limit. Without CAP_SYS_RESOURCE the hard limit
    // caps it.
    let nofile = raise_nofile(2 * sessions as u64 + 4096)?;
    // The daemon refuses a max-sessions whose sockets do not fit.
    let max_sessions = (sessions + 100).min((nofile.saturating_sub(nofile::RESERVE) / 2) as usize);

    let pid = std::process::id();
    let lab = Lab::create(&format!("bs{pid}"))?;
    let pins = bpffs::OwnedPinDir::new(PathBuf::from(format!(
        "/sys/fs/bpf/inspector-bench-smtp-{pid}"
    )))?;
    let scratch = Scratch::new(std::env::temp_dir().join(format!("inspector-bench-smtp-{pid}")))?;
    // One client address holds every idle session of the memory row, so the
    // per-client limit (50 by default) is off here; the throughput rows pass
    // with it too.
    let policy = |workers: Option<usize>| -> Result<PathBuf> {
        let path = scratch
            .path()
            .join(format!("policy-{}.toml", workers.unwrap_or(0)));
        std::fs::write(
            &path,
            format!(
                "[[exempt]]\nnetwork = \"{MAIL_GATEWAY_V4}\"\n\n[proxy]\nmax-sessions = {max_sessions}\nper-client-sessions = 0\n{}{}",
                upstream
                    .as_ref()
                    .map_or(String::new(), |u| format!("upstream-source = \"{u}\"\n")),
                workers.map_or(String::new(), |w| format!("workers = {w}\n")),
            ),
        )?;
        Ok(path)
    };
    for ns in [&lab.client, &lab.server] {
        ns.sysctl("net.core.somaxconn", "4096")?;
        ns.sysctl("net.ipv4.tcp_max_syn_backlog", "4096")?;
    }
    lab.gateway.sysctl("net.core.somaxconn", "4096")?;

    // `-m`: smtp-sink serves 256 connections at once unless told more.
    let concurrency = (sessions + 100).to_string();
    let _sink = lab.server.spawn(lab.server.command("smtp-sink").args([
        "-u",
        "nobody",
        "-m",
        &concurrency,
        "0.0.0.0:25",
        "4096",
    ]))?;
    let mut peer = haproxy(&lab, scratch.path())?;
    let log = scratch.path().join("daemon.log");
    let start = |policy: &Path| {
        let args = [
            "--iface".as_ref(),
            OUTSIDE.as_ref(),
            "--policy".as_ref(),
            policy.as_os_str(),
        ];
        let daemon =
            start_proxy_logging(&lab.gateway, &inspector, pins.path(), "info", &args, &log)?;
        if !wait_until(Duration::from_secs(10), || {
            session(&lab.client, inspected()).is_ok()
        }) {
            bail!("timed out waiting for a greeting through the proxy");
        }
        Ok(daemon)
    };
    let mut daemon = start(&policy(None)?)?;
    let routes = [
        (Route::Inspected, inspected()),
        (
            Route::Haproxy,
            SocketAddr::new(GATEWAY_OUTSIDE_V4.into(), HAPROXY_PORT),
        ),
        (Route::Direct, SocketAddr::new(MAIL_GATEWAY_V4.into(), 25)),
    ];
    for (_, server) in routes {
        if !wait_until(Duration::from_secs(10), || {
            session(&lab.client, server).is_ok()
        }) {
            bail!("timed out waiting for a greeting from {server}");
        }
    }
    let steered = || proxy_sessions(&lab.gateway);

    // Throughput and latency, alternating, checking each path went where
    // it should.
    let mut figures: Vec<Figures> = routes.iter().map(|_| Figures::default()).collect();
    for _ in 0..repeats {
        for ((route, server), fig) in routes.iter().zip(&mut figures) {
            let before = steered()?;
            eprintln!("smtp_bench: {server}: smtp-source, small messages");
            let proxy = match route {
                Route::Inspected => Some(daemon.child().id()),
                Route::Haproxy => Some(peer.child().id()),
                Route::Direct => None,
            };
            let used_before = Usage::now(proxy)?;
            let s = smtp_source(&lab, *server, SMALL_SESSIONS, SMALL_MESSAGES, SMALL_BYTES)?;
            let cpu = Usage::now(proxy)?.per_message(used_before, s, SMALL_MESSAGES);
            for (row, v) in fig.cpu.iter_mut().zip(cpu) {
                row.push(v);
            }
            let l = smtp_source(&lab, *server, 1, LARGE_MESSAGES, LARGE_BYTES)?;
            eprintln!("smtp_bench: {server}: latency");
            let (t, w) = lab
                .client
                .run(|| latencies(*server))?
                .with_context(|| format!("timing transactions to {server}"))?;
            let through_engine = steered()? - before;
            let expected = (SMALL_MESSAGES + LARGE_MESSAGES + 1 + SESSIONS) as u64;
            if *route == Route::Inspected && through_engine < expected {
                bail!("only {through_engine} of {expected} sessions to {server} were inspected");
            }
            if *route != Route::Inspected && through_engine != 0 {
                bail!("{through_engine} sessions to {server} were inspected");
            }
            fig.small.push(SMALL_MESSAGES as f64 / s.as_secs_f64());
            fig.large
                .push((LARGE_MESSAGES * LARGE_BYTES) as f64 / 1e6 / l.as_secs_f64());
            fig.transaction.extend(t);
            fig.session.extend(w);
        }
    }

    // The daemon holds two sockets per session: as many as its descriptor
    // limit and max-sessions allow, in whole hundreds.
    let fds = std::fs::read_dir(format!("/proc/{}/fd", daemon.child().id()))?.count() as u64;
    let fit = (nofile.saturating_sub(fds + 64) / 2).min(max_sessions as u64 - 50) / 100 * 100;
    let measured = sessions.min(fit as usize);
    eprintln!("smtp_bench: {measured} idle sessions");
    let mut memory = memory(&lab, &mut daemon, inspected(), measured)
        .with_context(|| format!("daemon log:\n{}", tail(&read(&log))))?;
    memory["requested_sessions"] = sessions.into();
    memory["nofile_limit"] = nofile.into();
    memory["max_sessions"] = max_sessions.into();
    daemon.terminate()?;

    // Workers: a daemon per run, 1 and 2 alternating.
    let mut by_workers = [Vec::new(), Vec::new()];
    for _ in 0..repeats {
        for (workers, runs) in [1usize, 2].into_iter().zip(&mut by_workers) {
            let daemon = start(&policy(Some(workers))?)?;
            eprintln!("smtp_bench: {workers} worker(s): smtp-source, small messages");
            let before = steered()?;
            let s = smtp_source(
                &lab,
                inspected(),
                SMALL_SESSIONS,
                SMALL_MESSAGES,
                SMALL_BYTES,
            )?;
            let through_engine = steered()? - before;
            if through_engine < SMALL_MESSAGES as u64 {
                bail!("only {through_engine} of {SMALL_MESSAGES} sessions were inspected");
            }
            runs.push(SMALL_MESSAGES as f64 / s.as_secs_f64());
            daemon.terminate()?;
        }
    }

    let us = |v: &mut Vec<f64>, q: f64| quantile(v, q) * 1e6;
    let [mut i, mut h, mut d]: [Figures; 3] = figures
        .try_into()
        .map_err(|_| anyhow::anyhow!("three paths"))?;
    let [one, two] = by_workers;
    let cpu = |fig: &Figures| {
        let [machine, user, system, idle] = fig.cpu.clone().map(median);
        serde_json::json!({
            "machine_us": machine,
            "proxy_user_us": user,
            "proxy_system_us": system,
            "idle_share": idle,
        })
    };
    let cpu = serde_json::json!({
        "inspected": cpu(&i),
        "haproxy": cpu(&h),
        "direct": cpu(&d),
    });
    let out = serde_json::json!({
        "repeats": repeats,
        "upstream_source": upstream.as_deref().unwrap_or("auto (the default: transparent on the lab)"),
        "direct_path": "the same smtp-sink on a second server address, exempt in the policy",
        "workers": inspector::proxy::worker_count(None),
        "small": {
            "sessions": SMALL_SESSIONS,
            "messages": SMALL_MESSAGES,
            "bytes": SMALL_BYTES,
            "inspected_msgs_per_s": median(i.small),
            "haproxy_msgs_per_s": median(h.small),
            "direct_msgs_per_s": median(d.small),
            "cpu_per_message": cpu,
        },
        "large": {
            "messages": LARGE_MESSAGES,
            "bytes": LARGE_BYTES,
            "inspected_mb_per_s": median(i.large),
            "haproxy_mb_per_s": median(h.large),
            "direct_mb_per_s": median(d.large),
        },
        "latency": {
            "transactions": i.transaction.len(),
            "sessions": i.session.len(),
            "transaction_inspected_median_us": us(&mut i.transaction, 0.5),
            "transaction_inspected_p99_us": us(&mut i.transaction, 0.99),
            "transaction_haproxy_median_us": us(&mut h.transaction, 0.5),
            "transaction_haproxy_p99_us": us(&mut h.transaction, 0.99),
            "transaction_direct_median_us": us(&mut d.transaction, 0.5),
            "transaction_direct_p99_us": us(&mut d.transaction, 0.99),
            "session_inspected_median_us": us(&mut i.session, 0.5),
            "session_inspected_p99_us": us(&mut i.session, 0.99),
            "session_haproxy_median_us": us(&mut h.session, 0.5),
            "session_haproxy_p99_us": us(&mut h.session, 0.99),
            "session_direct_median_us": us(&mut d.session, 0.5),
            "session_direct_p99_us": us(&mut d.session, 0.99),
        },
        "memory": memory,
        "scaling": {
            "one_worker_msgs_per_s": median(one),
            "two_workers_msgs_per_s": median(two),
        },
    });
    println!("{out}");
    Ok(())
}

fn inspected() -> SocketAddr {
    SocketAddr::new(SERVER_V4.into(), 25)
}

/// HAProxy in TCP mode on the gateway, relaying to the sink's exempt
/// address; stopped on drop.
fn haproxy(lab: &Lab, dir: &Path) -> Result<ScopedChild> {
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n    maxconn 8000\n\ndefaults\n    mode tcp\n    timeout connect 10s\n    \
             timeout client 60s\n    timeout server 60s\n\nfrontend smtp\n    bind \
             {GATEWAY_OUTSIDE_V4}:{HAPROXY_PORT}\n    default_backend sink\n\nbackend sink\n    \
             server sink {MAIL_GATEWAY_V4}:25\n"
        ),
    )?;
    let child = lab.gateway.spawn(
        lab.gateway
            .command("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config),
    )?;
    lab.gateway
        .wait_listening(&format!("{GATEWAY_OUTSIDE_V4}:{HAPROXY_PORT}"))?;
    Ok(child)
}

/// Sessions the proxy has taken so far (ended and open), from its metrics.
fn proxy_sessions(gateway: &Netns) -> Result<u64> {
    let text = gateway.run(|| -> Result<String> {
        let mut s = TcpStream::connect(METRICS)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    })??;
    let mut total = 0;
    for line in text.lines() {
        if line.starts_with("inspector_esmtp_sessions_total{")
            || line.starts_with("inspector_esmtp_sessions_active ")
        {
            let value = line.rsplit(' ').next().unwrap_or_default();
            total += value
                .parse::<f64>()
                .with_context(|| format!("metric line {line:?}"))? as u64;
        }
    }
    Ok(total)
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A line-oriented SMTP client on one connection.
struct Client {
    reader: BufReader<TcpStream>,
    line: String,
}

impl Client {
    fn connect(server: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        let mut c = Self {
            reader: BufReader::new(stream),
            line: String::new(),
        };
        c.expect("220")?;
        Ok(c)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        Ok(self.reader.get_mut().write_all(bytes)?)
    }

    /// Reads one reply, multi-line ones whole; fails unless it has `code`.
    fn expect(&mut self, code: &str) -> Result<()> {
        loop {
            self.line.clear();
            if self.reader.read_line(&mut self.line)? == 0 {
                bail!("connection closed waiting for {code}");
            }
            if !self.line.starts_with(code) {
                bail!("expected {code}, got {:?}", self.line);
            }
            if self.line.as_bytes().get(3) != Some(&b'-') {
                return Ok(());
            }
        }
    }

    fn command(&mut self, cmd: &[u8], code: &str) -> Result<()> {
        self.send(cmd)?;
        self.expect(code)
    }
}

/// Connect, greeting, QUIT, goodbye.
fn session(ns: &Netns, server: SocketAddr) -> Result<()> {
    ns.run(|| -> Result<()> {
        let mut c = Client::connect(server)?;
        c.command(b"QUIT\r\n", "221")
    })?
}

/// Seconds per transaction on one open session, and per whole session.
fn latencies(server: SocketAddr) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut body = Vec::with_capacity(SMALL_BYTES + 64);
    body.extend_from_slice(b"Subject: latency\r\n\r\n");
    while body.len() < SMALL_BYTES {
        body.extend_from_slice(
            b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopq\r\n",
        );
    }
    body.extend_from_slice(b".\r\n");
    let mut c = Client::connect(server)?;
    c.command(b"EHLO client.test\r\n", "250")?;
    let mut transactions = Vec::with_capacity(TRANSACTIONS);
    for _ in 0..TRANSACTIONS {
        let start = Instant::now();
        c.command(b"MAIL FROM:<a@client.test>\r\n", "250")?;
        c.command(b"RCPT TO:<b@server.test>\r\n", "250")?;
        c.command(b"DATA\r\n", "354")?;
        c.command(&body, "250")?;
        transactions.push(start.elapsed().as_secs_f64());
    }
    c.command(b"QUIT\r\n", "221")?;
    let mut sessions = Vec::with_capacity(SESSIONS);
    for _ in 0..SESSIONS {
        let start = Instant::now();
        let mut c = Client::connect(server)?;
        c.command(b"QUIT\r\n", "221")?;
        sessions.push(start.elapsed().as_secs_f64());
    }
    Ok((transactions, sessions))
}

/// The daemon's RSS before and after opening `count` idle inspected
/// sessions, each past its greeting.
fn memory(
    lab: &Lab,
    daemon: &mut ScopedChild,
    server: SocketAddr,
    count: usize,
) -> Result<serde_json::Value> {
    let pid = daemon.child().id();
    let before_sessions = proxy_sessions(&lab.gateway)?;
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(pid)?;
    let start = Instant::now();
    let streams = lab.client.run(|| -> Result<Vec<TcpStream>> {
        let mut streams = Vec::with_capacity(count);
        // In batches: connect a batch, then read its greetings.
        for batch in 0..count.div_ceil(200) {
            let n = (count - batch * 200).min(200);
            let mut opened = Vec::with_capacity(n);
            for _ in 0..n {
                let s = TcpStream::connect_timeout(&server, Duration::from_secs(10)).with_context(
                    || format!("connection {} of {count}", streams.len() + opened.len()),
                )?;
                opened.push(s);
            }
            for s in &opened {
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                let mut greeting = [0u8; 512];
                let got = (&*s).read(&mut greeting)?;
                if !greeting[..got].starts_with(b"220") {
                    bail!(
                        "session {}: greeting {:?}",
                        streams.len(),
                        String::from_utf8_lossy(&greeting[..got])
                    );
                }
            }
            streams.extend(opened);
        }
        Ok(streams)
    })??;
    let opened_in = start.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid)?;
    let taken = proxy_sessions(&lab.gateway)? - before_sessions;
    if taken < count as u64 {
        bail!("only {taken} of {count} sessions reached the engine");
    }
    if daemon.child().try_wait()?.is_some() {
        bail!("the daemon exited");
    }
    drop(streams);
    Ok(serde_json::json!({
        "sessions": count,
        "opened_in_s": opened_in.as_secs_f64(),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "bytes_per_session": (after.saturating_sub(before) * 1024) as f64 / count as f64,
    }))
}
