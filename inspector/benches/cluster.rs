//! The cluster half of `cargo xtask bench --only cluster` (needs root): on
//! the cluster lab (`inspector_lab::cluster`) with 2 gateways, each running
//! `inspector run` with policies/cluster.toml plus an exemption of
//! `MAIL_GATEWAY_V4`, messages per second of `smtp-source -s 20 -m 2000 -l
//! 1024` through the router to the inspected server, alternately with one
//! gateway announced (gateway 2's route withdrawn in BIRD) and with both;
//! and, as the baseline, the same load to the exempt address (forwarded by
//! the kernel of both gateways, uninspected). Medians of `--repeats` runs.
//! Each gateway's share of the sessions (from its own counters) gives the
//! ECMP hash's imbalance.
//!
//! `cargo bench -p inspector --bench cluster -- --repeats 5`

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use inspector::kernel::bpffs;
use inspector_lab::{
    MAIL_GATEWAY_V4, OUTSIDE, SERVER_V4, ScopedChild,
    cluster::{Cluster, SERVICE_PROTOCOLS},
    figures::median,
    inspector::{Scratch, read, start_proxy, wait_until},
    load::smtp_source_from,
};

const SESSIONS: usize = 20;
const MESSAGES: usize = 2000;
const BYTES: usize = 1024;
const MEMBERS: usize = 2;

fn main() -> Result<()> {
    let mut repeats = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--repeats" => repeats = args.next().context("a value")?.parse()?,
            "--bench" => {}
            _ => bail!("unknown argument {arg}"),
        }
    }
    let inspector = PathBuf::from(env!("CARGO_BIN_EXE_inspector"));
    let pid = std::process::id();
    let cluster = Cluster::create(&format!("bc{pid}"), MEMBERS)?;
    let scratch =
        Scratch::new(std::env::temp_dir().join(format!("inspector-bench-cluster-{pid}")))?;
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/cluster.toml"),
    )?;
    let policy = scratch.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!("{base}\n[[exempt]]\nnetwork = \"{MAIL_GATEWAY_V4}\"\n"),
    )?;
    let _sink = cluster.start_sink(4096)?;

    let mut pins = Vec::new();
    let mut daemons: Vec<ScopedChild> = Vec::new();
    for m in &cluster.members {
        let dir = bpffs::OwnedPinDir::new(PathBuf::from(format!(
            "/sys/fs/bpf/inspector-bench-cluster-{pid}-gw{}",
            m.index
        )))?;
        let log = scratch.path().join(format!("gw{}.log", m.index));
        let args = [
            "--iface".as_ref(),
            OUTSIDE.as_ref(),
            "--policy".as_ref(),
            policy.as_os_str(),
        ];
        daemons.push(
            start_proxy(&m.ns, &inspector, dir.path(), &args, &log)
                .with_context(|| format!("gateway {}: {}", m.index, read(&log)))?,
        );
        pins.push(dir);
    }
    let announce = |members: usize| -> Result<()> {
        for m in &cluster.members {
            let verb = if m.index <= members {
                "enable"
            } else {
                "disable"
            };
            for proto in SERVICE_PROTOCOLS {
                m.birdc(&[verb, proto])?;
            }
        }
        let want: Vec<usize> = (1..=members).collect();
        if !wait_until(Duration::from_secs(30), || {
            cluster.routed_members().is_ok_and(|r| r == want)
        }) {
            bail!("the router's route did not come to {want:?}");
        }
        Ok(())
    };
    let msgs_per_s = |to: std::net::Ipv4Addr| -> Result<f64> {
        let took = smtp_source_from(
            &cluster.client,
            SocketAddr::new(to.into(), 25),
            SESSIONS,
            MESSAGES,
            BYTES,
        )?;
        Ok(MESSAGES as f64 / took.as_secs_f64())
    };
    let sessions_of = |m: usize| -> usize {
        read(&scratch.path().join(format!("gw{m}.log")))
            .matches(": inspecting")
            .count()
    };

    let (mut one, mut two, mut direct) = (Vec::new(), Vec::new(), Vec::new());
    let mut shares = Vec::new();
    for round in 0..repeats {
        eprintln!("cluster_bench: round {}/{repeats}", round + 1);
        announce(1)?;
        one.push(msgs_per_s(SERVER_V4)?);
        announce(2)?;
        let before = (sessions_of(1), sessions_of(2));
        two.push(msgs_per_s(SERVER_V4)?);
        let (a, b) = (sessions_of(1) - before.0, sessions_of(2) - before.1);
        shares.push(a as f64 / (a + b).max(1) as f64);
        direct.push(msgs_per_s(MAIL_GATEWAY_V4)?);
    }
    let worst = shares
        .iter()
        .map(|s| (s - 0.5).abs())
        .fold(0.0f64, f64::max);
    let out = serde_json::json!({
        "repeats": repeats,
        "sessions": SESSIONS,
        "messages": MESSAGES,
        "bytes": BYTES,
        "one_gateway_msgs_per_s": median(one),
        "two_gateways_msgs_per_s": median(two),
        "direct_msgs_per_s": median(direct),
        "gateway1_share_median": median(shares.clone()),
        "gateway1_share_worst_deviation": worst,
        "sessions_per_run": MESSAGES,
    });
    println!("{out}");
    drop(daemons);
    drop(pins);
    Ok(())
}
