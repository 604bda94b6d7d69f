//! The SYN-flood half of `cargo xtask bench` (needs root): on a lab of its
//! own, a spoofed SYN flood to a protected server held at 100 half-open
//! connections, dropped either by our XDP limit (`max-embryonic = 100`,
//! `on-embryonic-limit = "drop"`) or by the same limit in nftables
//! (`ct count over 100`) on the gateway's forward hook. The two alternate,
//! `--repeats` times each, with the same sender; prints one JSON object with
//! the median SYNs dropped per second of each.
//!
//! `cargo run --release -p inspector-user --example flood_bench -- --repeats 5`

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use inspector::{
    bpffs, limits,
    limits::LimitStats,
    loader::{self, AttachMode},
    policy::Policy,
};
use inspector_common::{DropReason, maps};
use inspector_lab::{
    CLIENT_V4, Lab, OUTSIDE, SERVER_V4,
    syn::{SPOOFED_V4, SynFlood},
};

const LIMIT: u32 = 100;
const NFT_TABLE: &str = "inspector_bench";

/// The bench's own pin directory, removed on drop.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = bpffs::remove_pins(&self.0, &maps::ALL);
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn main() -> Result<()> {
    let (mut repeats, mut syns) = (5usize, 200_000usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || -> Result<usize> { Ok(args.next().context("a number")?.parse()?) };
        match arg.as_str() {
            "--repeats" => repeats = value()?,
            "--syns" => syns = value()?,
            _ => bail!("unknown argument {arg}"),
        }
    }
    let pid = std::process::id();
    let lab = Lab::create(&format!("bf{pid}"))?;
    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/inspector-bench-flood-{pid}"
    )));
    bpffs::prepare(&pins.0)?;
    // The server's answers to spoofed sources go into the client namespace,
    // where nothing answers them: every SYN that passes stays half-open.
    let prefix = format!("{}/{}", SPOOFED_V4.0, SPOOFED_V4.1);
    lab.gateway
        .ip(&["route", "add", &prefix, "via", &CLIENT_V4.to_string()])?;
    lab.server.sysctl("net.ipv4.tcp_max_syn_backlog", "4096")?;
    let server = SocketAddr::new(SERVER_V4.into(), 25);
    let _listener = lab.server.tcp_listen(server, 4096)??;
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
        let mut ebpf = loader::load(&pins.0)?;
        limits::apply_policy(&pins.0, &policy.servers)?;
        lab.gateway
            .run(|| loader::attach_xdp(&mut ebpf, OUTSIDE, AttachMode::Native).map(drop))??;
        let xdp_drops = || -> Result<u64> {
            Ok(LimitStats::read(&pins.0, 0)?.drops[DropReason::MaxEmbryonic as usize])
        };
        xdp.push(measure(&mut flood, syns, xdp_drops)?);
        drop(ebpf); // detaches

        // The same limit in nftables.
        nft_script(
            &lab,
            &format!(
                "table inet {NFT_TABLE} {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  \
                 ip daddr {SERVER_V4} tcp dport 25 ct state new ct count over {LIMIT} counter drop\n }}\n}}\n"
            ),
        )?;
        let result = measure(&mut flood, syns, || nft_drops(&lab));
        nft_script(&lab, &format!("delete table inet {NFT_TABLE}\n"))?;
        nft.push(result?);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let out = serde_json::json!({
        "repeats": repeats,
        "syns": syns,
        "limit": LIMIT,
        "xdp_drops_per_s": median(xdp),
        "nft_drops_per_s": median(nft),
    });
    println!("{out}");
    Ok(())
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
    let mut last = drops()?;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = drops()?;
        if now == last {
            break;
        }
        last = now;
    }
    let dropped = last - before;
    if (dropped as f64) < syns as f64 * 0.99 {
        bail!("only {dropped} of {syns} SYNs were dropped: the limit did not hold");
    }
    Ok(dropped as f64 / elapsed.as_secs_f64())
}

fn nft_script(lab: &Lab, script: &str) -> Result<()> {
    use std::io::Write;
    let mut child = lab
        .gateway
        .command("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("starting nft (is nftables installed?)")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("nft -f failed ({status}) on:\n{script}");
    }
    Ok(())
}

/// Packets the nftables rule dropped (`counter packets N`).
fn nft_drops(lab: &Lab) -> Result<u64> {
    let out = lab
        .gateway
        .command("nft")
        .args(["list", "table", "inet", NFT_TABLE])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no counter in {text}"))
}
