//! `cargo xtask run -- --gateways N`: the cluster lab (`inspector_lab::
//! cluster`): a router running BIRD spreads the clients' flows over N
//! gateways with ECMP; each gateway runs the inspector, and announces the
//! service prefix over BGP only while `inspector status` says it is ready
//! (deploy/bird/inspector-announce).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result};
use inspector_lab::{
    OUTSIDE, SERVER_V4, ScopedChild,
    cluster::{Cluster, SERVICE_V4},
    inspector::wait_until,
};

use crate::workspace_root;

const PREFIX: &str = "insp-cl";
/// How often each gateway checks its inspector's readiness.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Each member's maps, apart from a real deployment's and from each other.
fn pin_dir(member: usize) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/inspector-lab-gw{member}"))
}

/// Takes `--gateways N` (or `--gateways=N`) out of `args`, if there.
pub fn take_gateways(args: &[String]) -> Result<(Option<usize>, Vec<String>)> {
    let mut rest = Vec::new();
    let mut gateways = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = if arg == "--gateways" {
            it.next().context("--gateways needs a number")?.as_str()
        } else if let Some(v) = arg.strip_prefix("--gateways=") {
            v
        } else {
            rest.push(arg.clone());
            continue;
        };
        gateways = Some(
            value
                .parse()
                .with_context(|| format!("--gateways {value}: not a number"))?,
        );
    }
    Ok((gateways, rest))
}

pub fn run(inspector: &Path, gateways: usize, extra: &[String]) -> Result<()> {
    let cluster = Cluster::create(PREFIX, gateways)?;
    let _sink = cluster.start_sink(128)?;
    let logs = std::env::temp_dir().join(format!("{PREFIX}-logs"));
    std::fs::create_dir_all(&logs)?;
    // One policy file for every gateway: each finds itself in `[cluster]`
    // by its own address.
    let base = std::fs::read_to_string(workspace_root().join("policies/cluster.toml"))?;
    let policy = logs.join("policy.toml");
    std::fs::write(&policy, format!("{base}\n{}", cluster.cluster_table()))?;
    let mut daemons = Vec::new();
    let mut announcers: Vec<ScopedChild> = Vec::new();
    for m in &cluster.members {
        let mut cmd = m.ns.command(inspector);
        cmd.arg("--pin-dir")
            .arg(pin_dir(m.index))
            .args(["run", "--iface", OUTSIDE, "--policy"])
            .arg(&policy)
            .args(extra);
        daemons.push(m.ns.spawn(&mut cmd)?);
        let log = logs.join(format!("announce-gw{}.log", m.index));
        announcers.push(m.announce_while_ready(inspector, &pin_dir(m.index), CHECK_EVERY, &log)?);
    }
    let all_routed = || {
        cluster
            .routed_members()
            .is_ok_and(|r| r.len() == cluster.members.len())
    };
    if wait_until(Duration::from_secs(60), all_routed) {
        print_instructions(inspector, &cluster, &logs);
    } else {
        eprintln!(
            "not every gateway announced {SERVICE_V4} within 60 s (logs in {})",
            logs.display()
        );
    }

    // As the single lab: Ctrl-C reaches the whole process group; we
    // outlive the daemons to take the lab down.
    crate::lab_run::ignore_sigint_here();
    for d in &mut daemons {
        let exit = d.child().wait()?;
        eprintln!("inspector exited ({exit})");
    }
    drop(announcers);
    for m in &cluster.members {
        let _ = Command::new(inspector)
            .arg("--pin-dir")
            .arg(pin_dir(m.index))
            .arg("unload")
            .status();
        let _ = std::fs::remove_file(format!(
            "/var/lib/inspector/exemptions-inspector-lab-gw{}.json",
            m.index
        ));
    }
    eprintln!("removing the cluster lab");
    drop(cluster);
    Ok(())
}

fn print_instructions(inspector: &Path, cluster: &Cluster, logs: &Path) {
    let bin = inspector
        .strip_prefix(workspace_root())
        .unwrap_or(inspector)
        .display();
    let client = format!("ip netns exec {PREFIX}-client");
    let n = cluster.members.len();
    println!(
        "
Cluster lab {PREFIX} is up: client 198.18.0.2 ── router ({PREFIX}-rtr, BIRD, ECMP on the 5-tuple)
  ── {n} gateway(s) {PREFIX}-gw1… (inspector, BIRD announcing {SERVICE_V4} while ready) ── server {SERVER_V4} (smtp-sink)

Try, in another terminal:
  ip -n {PREFIX}-rtr route show {SERVICE_V4}     # one next hop per ready gateway
  {client} smtp-source -s 20 -m 200 -f a@client.test -t b@server.test {SERVER_V4}:25
  {bin} --pin-dir /sys/fs/bpf/inspector-lab-gw1 stats     # what gateway 1 took
  {bin} --pin-dir /sys/fs/bpf/inspector-lab-gw1 status
  birdc -s {} show protocols                   # gateway 1's BIRD
  kill -9 $(pgrep -f 'inspector-lab-gw1 run')   # its route is withdrawn within a second
Readiness logs: {}

Ctrl-C stops the inspectors and removes the lab.
",
        cluster.members[0].bird_socket.display(),
        logs.display(),
    );
}
