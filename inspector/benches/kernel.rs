//! The kernel half of `cargo xtask bench` (needs root): prints one JSON
//! object with
//! - the XDP classifier's cost per packet for each class, and for the
//!   fragments and unparsable packets it follows or drops, under
//!   BPF_PROG_TEST_RUN, next to an empty XDP program run side by side
//!   (alternating, the median of `--repeats` runs of each);
//! - the kernel memory per flow-table entry, per fragment-table entry and
//!   per exemption rule, from the maps' `memlock` (fdinfo) as the kernel
//!   accounts it.
//!
//! `cargo bench -p inspector --bench kernel -- --repeats 9`

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{Map, MapData},
    programs::{TestRun, TestRunOptions, Xdp},
};
use inspector::{
    config::{Policy, parse_network},
    kernel::{
        bpffs,
        exempt::{ExemptTable, Origin},
        limits, loader,
    },
};
use inspector_common::{maps, programs};
use inspector_lab::{figures::median, packets::*};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// Runs per BPF_PROG_TEST_RUN call: the kernel reports their mean.
const RUNS: u32 = 200_000;
/// Exemption rules inserted to measure the memory per rule.
const RULES: u32 = 10_000;
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const EXEMPT_HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 9);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const PROTECTED: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 25);

fn main() -> Result<()> {
    let mut repeats = 9usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--repeats" => repeats = args.next().context("--repeats N")?.parse()?,
            // What `cargo bench` passes to every bench.
            "--bench" => {}
            _ => bail!("unknown argument {arg}"),
        }
    }
    let pins = bpffs::OwnedPinDir::new(PathBuf::from(format!(
        "/sys/fs/bpf/inspector-bench-{}",
        std::process::id()
    )))?;
    let mut ebpf = loader::load(pins.path())?;
    let empty: &mut Xdp = ebpf
        .program_mut(programs::XDP_EMPTY)
        .context("the object has no empty XDP program")?
        .try_into()?;
    empty.load()?;

    ExemptTable::open(pins.path())?.add(
        &parse_network(&EXEMPT_HOST.to_string()).unwrap(),
        Origin::Live,
    )?;
    let policy = Policy::parse(
        Path::new("(bench)"),
        &format!("[[server]]\naddress = \"{PROTECTED}\"\n"),
    )?;
    limits::apply_policy(pins.path(), &policy.servers)?;

    let truncated_v4 = frame(&[&ethernet(&[], ETH_P_IP), &[0x45, 0, 0, 40, 0, 1]]);
    // A 3,000-byte UDP datagram in fragments (its first, then a later one
    // of the same datagram, found in the fragment table), and the first
    // fragment of a SYN to port 25.
    let udp_datagram = [&udp(53)[..], &[7u8; 3000]].concat();
    let udp_fragments = fragments(
        CLIENT.into(),
        SERVER.into(),
        UDP,
        7,
        &split(&udp_datagram, &[1480, 2960]),
    );
    let syn_fragment = fragments(
        CLIENT.into(),
        SERVER.into(),
        TCP,
        8,
        &split(
            &syn(CLIENT.into(), SERVER.into(), (40000, 25), &[0; 16]),
            &[40],
        ),
    );
    let eth = |p: &[u8]| frame(&[&ethernet(&[], ETH_P_IP), p]);
    let workloads: [(&str, Vec<u8>, u32); 9] = [
        (
            "pass (IPv4 UDP)",
            frame(&[
                &ethernet(&[], ETH_P_IP),
                &ipv4(CLIENT, SERVER, UDP, 8),
                &udp(53),
            ]),
            XDP_PASS,
        ),
        (
            "inspect (IPv4 TCP/25)",
            v4_tcp(CLIENT, SERVER, 25),
            XDP_PASS,
        ),
        (
            "inspect (IPv6 TCP/25)",
            v6_tcp(
                Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2),
                Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 1),
                25,
            ),
            XDP_PASS,
        ),
        (
            "exempt (IPv4, LPM hit)",
            v4_tcp(EXEMPT_HOST, SERVER, 25),
            XDP_PASS,
        ),
        (
            "protected server (SYN, flow table)",
            v4_tcp(CLIENT, PROTECTED, 25),
            XDP_PASS,
        ),
        (
            "malformed (IPv4 cut short, dropped)",
            truncated_v4,
            XDP_DROP,
        ),
        (
            "fragment (IPv4 UDP, first)",
            eth(&udp_fragments[0]),
            XDP_PASS,
        ),
        (
            "fragment (IPv4 UDP, later)",
            eth(&udp_fragments[1]),
            XDP_PASS,
        ),
        (
            "fragment (IPv4 TCP/25, dropped)",
            eth(&syn_fragment[0]),
            XDP_DROP,
        ),
    ];

    let mut xdp_rows = Vec::new();
    for (name, frame, action) in &workloads {
        let mut ours = Vec::new();
        let mut base = Vec::new();
        for _ in 0..repeats {
            // Side by side: the empty program, then ours, on the same frame.
            base.push(run(&mut ebpf, programs::XDP_EMPTY, frame, XDP_PASS)?);
            ours.push(run(&mut ebpf, programs::XDP_CLASSIFY, frame, *action)?);
        }
        let (ours, base) = (median(ours), median(base));
        xdp_rows.push(serde_json::json!({
            "workload": name,
            "ns": ours,
            "empty_ns": base,
            "bytes": frame.len(),
        }));
    }

    let flows = map_memory(pins.path(), maps::FLOWS)?;
    let fragments = match ebpf.map("FRAGMENTS") {
        Some(Map::LruHashMap(data)) => fd_memory(data, "FRAGMENTS")?,
        _ => bail!("the object has no fragment table"),
    };
    let v4_before = map_memory(pins.path(), maps::EXEMPT_V4)?;
    let v6_before = map_memory(pins.path(), maps::EXEMPT_V6)?;
    let mut table = ExemptTable::open(pins.path())?;
    for i in 0..RULES {
        let [_, _, a, b] = i.to_be_bytes();
        let v4 = parse_network(&format!("198.19.{a}.{b}")).unwrap();
        let v6 = parse_network(&format!("2001:2:ff::{i:x}")).unwrap();
        table.add(&v4, Origin::Live)?;
        table.add(&v6, Origin::Live)?;
    }
    let v4_after = map_memory(pins.path(), maps::EXEMPT_V4)?;
    let v6_after = map_memory(pins.path(), maps::EXEMPT_V6)?;
    let per_rule = |before: (u64, u32), after: (u64, u32)| {
        after.0.saturating_sub(before.0) as f64 / f64::from(RULES)
    };
    let out = serde_json::json!({
        "repeats": repeats,
        "runs_per_repeat": RUNS,
        "xdp": xdp_rows,
        "memory": {
            "flow_table_bytes": flows.0,
            "flow_table_entries": flows.1,
            "flow_entry_bytes": flows.0 as f64 / f64::from(flows.1.max(1)),
            "fragment_table_bytes": fragments.0,
            "fragment_table_entries": fragments.1,
            "fragment_entry_bytes": fragments.0 as f64 / f64::from(fragments.1.max(1)),
            "exempt_rules_inserted": RULES,
            "exempt_v4_rule_bytes": per_rule(v4_before, v4_after),
            "exempt_v6_rule_bytes": per_rule(v6_before, v6_after),
        },
    });
    println!("{out}");
    Ok(())
}

/// Mean ns per run of `program` over `RUNS` runs on `frame`, which it must
/// answer with `action`.
fn run(ebpf: &mut Ebpf, program: &str, frame: &[u8], action: u32) -> Result<f64> {
    let xdp: &mut Xdp = ebpf
        .program_mut(program)
        .context(program.to_string())?
        .try_into()?;
    let result = xdp.test_run(TestRunOptions {
        data_in: Some(frame),
        repeat: RUNS,
        ..Default::default()
    })?;
    if result.return_value != action {
        bail!("{program} returned {} (not {action})", result.return_value);
    }
    Ok(duration_ns(result.duration))
}

fn duration_ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

/// (memlock bytes, max entries) of a pinned map, as the kernel accounts them.
fn map_memory(pin_dir: &Path, name: &str) -> Result<(u64, u32)> {
    fd_memory(&MapData::from_pin(pin_dir.join(name))?, name)
}

fn fd_memory(data: &MapData, name: &str) -> Result<(u64, u32)> {
    let fd = data.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    let field = |key: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("{key} not in the fdinfo of {name}"))
    };
    Ok((field("memlock:")?.parse()?, field("max_entries:")?.parse()?))
}
