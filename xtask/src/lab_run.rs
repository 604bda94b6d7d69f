//! `cargo xtask run`: the inspector on a lab (no --iface; `--gateways N`:
//! the cluster lab, lab_cluster.rs) or on a real
//! interface (arguments passed to `inspector run`). On the lab the proxy
//! runs in the default upstream mode, transparent: the daemon attaches
//! the return steering to `inside` (the interface of the route to the
//! server) at the first session, which verifies the return path.

use std::{path::Path, process::Command};

use anyhow::{Context, Result};
use inspector_lab::{Lab, MAIL_GATEWAY_V4, OUTSIDE, SERVER_V4, inspector::wait_ready};

use crate::{inspector_binary, status, workspace_root};

const LAB_PREFIX: &str = "insp-lab";
/// The lab pins its maps apart from a real deployment's, and removes them.
const LAB_PIN_DIR: &str = "/sys/fs/bpf/inspector-lab";
/// Longest the lab waits for the daemon to say it is ready.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

pub fn run(args: &[String]) -> Result<()> {
    let inspector = inspector_binary();
    if args
        .iter()
        .any(|a| a == "--iface" || a.starts_with("--iface="))
    {
        return status(Command::new(&inspector).arg("run").args(args));
    }
    let (gateways, rest) = crate::lab_cluster::take_gateways(args)?;
    if let Some(n) = gateways {
        return crate::lab_cluster::run(&inspector, n, &rest);
    }
    let policy = workspace_root().join("policies/default.toml");
    run_lab(&inspector, &policy, args)
}

fn run_lab(inspector: &Path, policy: &Path, extra: &[String]) -> Result<()> {
    let lab = Lab::create(LAB_PREFIX)?;
    let _sink = lab
        .server
        .spawn(
            lab.server
                .command("smtp-sink")
                .args(["-u", "nobody", "0.0.0.0:25", "128"]),
        )
        .context(
            "starting smtp-sink in the server namespace (cargo xtask setup installs postfix)",
        )?;

    let mut daemon_cmd = lab.gateway.command(inspector);
    daemon_cmd
        .args([
            "--pin-dir",
            LAB_PIN_DIR,
            // Each session's start and end, as the instructions say.
            "--log-level",
            "debug",
            "run",
            "--iface",
            OUTSIDE,
            "--policy",
        ])
        .arg(policy)
        .args(extra);
    let mut daemon = lab.gateway.spawn(&mut daemon_cmd)?;
    // The instructions once sessions are inspected: before the proxy's
    // first heartbeat they would reach the server uninspected.
    match wait_ready(inspector, Path::new(LAB_PIN_DIR), &mut daemon, READY_WITHIN) {
        Ok(()) => print_instructions(inspector),
        Err(e) => eprintln!("{e:#}"),
    }

    // Ctrl-C reaches the whole foreground process group: the daemon stops on
    // it, and we must outlive it to take the lab down.
    ignore_sigint_here();
    let exit = daemon.child().wait()?;
    eprintln!("inspector exited ({exit}); removing the lab");
    let _ = Command::new(inspector)
        .args(["--pin-dir", LAB_PIN_DIR, "unload"])
        .status();
    // The lab's live exemptions, saved for a restart of the daemon.
    let _ = std::fs::remove_file("/var/lib/inspector/exemptions-inspector-lab.json");
    drop(lab);
    Ok(())
}

fn print_instructions(inspector: &Path) {
    let bin = inspector
        .strip_prefix(workspace_root())
        .unwrap_or(inspector)
        .display();
    let cli = format!("{bin} --pin-dir {LAB_PIN_DIR}");
    let client = format!("ip netns exec {LAB_PREFIX}-client");
    println!(
        "
Lab {LAB_PREFIX} is up:
  client 198.18.0.2 ── outside [gateway: inspector] inside ── server {SERVER_V4} (smtp-sink), mail gateway {MAIL_GATEWAY_V4}

Try, in another terminal:
  {client} swaks --server {SERVER_V4} --from a@client.test --to b@server.test
      # inspected: the banner is the engine's `220 mail ESMTP`, and the
      # inspector's log here shows `session 1: 198.18.0.2:… -> {SERVER_V4}:25: inspecting`
  {client} swaks --server {SERVER_V4} --from a@client.test --to b@server.test --header \"X-Long: $(head -c 1200 /dev/zero | tr '\\0' x)\"
      # a policy criterion: `421 4.7.0 Connection closed by security policy`, audit 108004 here
  {cli} status
      # upstream: client (auto): smtp-sink saw 198.18.0.2, not the gateway; the return
      # steering went to `inside` by itself (the route to {SERVER_V4})
  {cli} stats                      # the sessions were classified `inspect`
  {cli} exempt add {SERVER_V4}       # exempt the server, live
  {client} swaks --server {SERVER_V4} --from a@client.test --to b@server.test
      # not inspected: smtp-sink's own banner
  {cli} stats                      # now `exempt`
  {cli} exempt list
  {cli} exempt del {SERVER_V4}

Ctrl-C stops the inspector and removes the lab.
"
    );
}

extern "C" fn on_sigint(_: libc::c_int) {}

pub fn ignore_sigint_here() {
    // A handler, not SIG_IGN: handlers are reset in children, ignores are not.
    // SAFETY: installing an async-signal-safe no-op handler.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
}
