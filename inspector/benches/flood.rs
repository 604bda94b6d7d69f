//! The SYN-flood half of `cargo xtask bench` (needs root): on a lab of its
//! own, a spoofed SYN flood to a protected server held at 100 half-open
//! connections, dropped either by our XDP limit (`max-embryonic = 100`,
//! `on-embryonic-limit = "drop"`) or by the same limit in nftables
//! (`ct count over 100`) on the gateway's forward hook. The two alternate,
//! `--repeats` times each, with the same sender; prints one JSON object with
//! the median SYNs dropped per second of each.
//!
//! Then, with TCP intercept (`on-embryonic-limit = "intercept"`), a real
//! client completes SMTP sessions (connect, greeting, QUIT) with Postfix's
//! `smtp-sink` for `--seconds` at a time, alternately during a steady
//! spoofed flood and without it (the flood's half-open entries expired
//! first): the median sessions per second of each.
//!
//! `cargo bench -p inspector --bench flood -- --repeats 5`

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use inspector::{
    config::Policy,
    kernel::{
        bpffs, limits,
        limits::LimitStats,
        loader::{self, AttachMode},
        sweeper::{self, Sweeper},
    },
};
use inspector_common::DropReason;
use inspector_lab::{
    CLIENT_V4, INSIDE, Lab, OUTSIDE, SERVER_V4,
    figures::{median, settled},
    load::{sessions_during_flood, sessions_per_s, wait_smtp},
    syn::{SPOOFED_V4, SynFlood},
};

const LIMIT: u32 = 100;
const NFT_TABLE: &str = "inspector_bench";

fn main() -> Result<()> {
    let (mut repeats, mut syns, mut seconds) = (5usize, 200_000usize, 2usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || -> Result<usize> { Ok(args.next().context("a number")?.parse()?) };
        match arg.as_str() {
            "--repeats" => repeats = value()?,
            "--syns" => syns = value()?,
            "--seconds" => seconds = value()?,
            // What `cargo bench` passes to every bench.
            "--bench" => {}
            _ => bail!("unknown argument {arg}"),
        }
    }
    let pid = std::process::id();
    let lab = Lab::create(&format!("bf{pid}"))?;
    let pins = bpffs::OwnedPinDir::new(PathBuf::from(format!(
        "/sys/fs/bpf/inspector-bench-flood-{pid}"
    )))?;
    // The server's answers to spoofed sources go into the client namespace,
    // where nothing answers them: every SYN that passes stays half-open.
    let prefix = format!("{}/{}", SPOOFED_V4.0, SPOOFED_V4.1);
    lab.gateway
        .ip(&["route", "add", &prefix, "via", &CLIENT_V4.to_string()])?;
    lab.server.sysctl("net.ipv4.tcp_max_syn_backlog", "4096")?;
    let server = SocketAddr::new(SERVER_V4.into(), 25);
    let listener = lab.server.tcp_listen(server, 4096)??;
    let policy = Policy::parse(
        Path::new("(bench)"),
        &format!(
            "[[server]]\naddress = \"{SERVER_V4}\"\nmax-embryonic = {LIMIT}\n\
             on-embryonic-limit = \"drop\"\n"
        ),
    )?;
    let mut flood = SynFlood::new(&lab.client, server)?;

    let (mut xdp, mut nft) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        // Our XDP limit on the gateway's outside interface.
        let mut ebpf = loader::load(pins.path())?;
        limits::apply_policy(pins.path(), &policy.servers)?;
        lab.gateway
            .run(|| loader::attach_xdp(&mut ebpf, OUTSIDE, AttachMode::Native).map(drop))??;
        let xdp_drops = || -> Result<u64> {
            Ok(LimitStats::read(pins.path(), 0)?.drops[DropReason::MaxEmbryonic as usize])
        };
        xdp.push(measure(&mut flood, syns, xdp_drops)?);
        drop(ebpf); // detaches

        // The same limit in nftables.
        lab.gateway.nft(
            &format!(
                "table inet {NFT_TABLE} {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  \
                 ip daddr {SERVER_V4} tcp dport 25 ct state new ct count over {LIMIT} counter drop\n }}\n}}\n"
            ),
        )?;
        let result = measure(&mut flood, syns, || {
            lab.gateway.nft_counter("inet", NFT_TABLE)
        });
        lab.gateway
            .nft(&format!("delete table inet {NFT_TABLE}\n"))?;
        nft.push(result?);
    }
    drop(listener);
    let sessions = sessions_through_flood(&lab, flood, repeats, seconds)?;
    let out = serde_json::json!({
        "repeats": repeats,
        "syns": syns,
        "limit": LIMIT,
        "xdp_drops_per_s": median(xdp),
        "nft_drops_per_s": median(nft),
        "sessions": sessions,
    });
    println!("{out}");
    Ok(())
}

/// SMTP sessions per second with TCP intercept, during a steady flood and
/// without it, alternating.
fn sessions_through_flood(
    lab: &Lab,
    mut flood: SynFlood,
    repeats: usize,
    seconds: usize,
) -> Result<serde_json::Value> {
    let pid = std::process::id();
    let pins = bpffs::OwnedPinDir::new(PathBuf::from(format!(
        "/sys/fs/bpf/inspector-bench-intercept-{pid}"
    )))?;
    let policy = Policy::parse(
        Path::new("(bench)"),
        &format!(
            "[[server]]\naddress = \"{SERVER_V4}\"\nmax-embryonic = {LIMIT}\n\
             on-embryonic-limit = \"intercept\"\n"
        ),
    )?;
    let mut ebpf = loader::load(pins.path())?;
    limits::apply_policy(pins.path(), &policy.servers)?;
    // Generic XDP, as in the intercept test: native XDP_TX on a veth needs
    // NAPI on its peer.
    for iface in [OUTSIDE, INSIDE] {
        lab.gateway
            .run(|| loader::attach_xdp(&mut ebpf, iface, AttachMode::Generic).map(drop))??;
    }
    let _sink = lab.server.spawn(lab.server.command("smtp-sink").args([
        "-u",
        "nobody",
        &format!("{SERVER_V4}:25"),
        "4096",
    ]))?;
    let server = SocketAddr::new(SERVER_V4.into(), 25);
    wait_smtp(lab, server)?;

    let window = Duration::from_secs(seconds as u64);
    let (mut quiet, mut flooded) = (Vec::new(), Vec::new());
    let mut syns_sent = 0usize;
    let mut flood_secs = 0.0;
    let mut sweeper = Sweeper::open(pins.path(), policy.timeouts)?;
    for _ in 0..repeats {
        // Start from an empty embryonic count: expire what the last flood
        // left (as the daemon's sweeper would after the embryonic timeout).
        let later = policy.timeouts.embryonic + Duration::from_secs(1);
        sweeper.sweep(sweeper::monotonic_ns() + later.as_nanos() as u64)?;
        let embryonic = LimitStats::read(pins.path(), 0)?.servers[0].embryonic;
        if embryonic != 0 {
            bail!("{embryonic} embryonic connections left after the sweep");
        }
        quiet.push(sessions_per_s(lab, server, window, 1)?);
        let (rate, sent) = sessions_during_flood(lab, |n| flood.send(n), server, window, 1)?;
        let rate = rate.all_completed()?;
        flooded.push(rate);
        syns_sent += sent;
        flood_secs += window.as_secs_f64() + 0.2;
    }
    let stats = LimitStats::read(pins.path(), 0)?;
    let cookies = stats.intercepts[inspector_common::InterceptEvent::CookieSent as usize];
    if cookies == 0 {
        bail!("no SYN cookie was sent: the flood did not reach the intercept limit");
    }
    Ok(serde_json::json!({
        "seconds": seconds,
        "quiet_per_s": median(quiet),
        "flood_per_s": median(flooded),
        "flood_syns_per_s": syns_sent as f64 / flood_secs,
        "syn_cookies_sent": cookies,
    }))
}

/// Fills the limit, then sends `syns` more and returns the SYNs dropped per
/// second of sending. Fails unless nearly all of them were dropped.
fn measure(flood: &mut SynFlood, syns: usize, drops: impl Fn() -> Result<u64>) -> Result<f64> {
    flood.send(2 * LIMIT as usize)?;
    std::thread::sleep(Duration::from_millis(100));
    let before = drops()?;
    let start = Instant::now();
    flood.send(syns)?;
    let elapsed = start.elapsed();
    // Let the last packets through the path before reading.
    let last = settled(&drops)?;
    let dropped = last - before;
    if (dropped as f64) < syns as f64 * 0.99 {
        bail!("only {dropped} of {syns} SYNs were dropped: the limit did not hold");
    }
    Ok(dropped as f64 / elapsed.as_secs_f64())
}
