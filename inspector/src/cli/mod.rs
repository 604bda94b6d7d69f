//! The `inspector` command line: its clap definitions, and what each
//! command prints (the text and JSON views live in the submodules).

mod exempt;
pub mod exit;
mod generate;
mod policy;
mod stats;
mod status;

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

pub use self::exit::exit_code;
use crate::{
    config::{MEMBER_ENV, SinkSpec},
    daemon::{self, RunOptions, lock::IfaceLock},
    kernel::{bpffs, exempt_store, loader::AttachMode},
    observe::{
        logging::LogLevel,
        metrics::{self, MetricsAddr},
    },
};

#[derive(Parser)]
#[command(
    name = "inspector",
    version,
    about = "eBPF/XDP-accelerated ESMTP inspector"
)]
pub struct Cli {
    /// bpffs directory holding the pinned maps shared by the daemon and the CLI.
    #[arg(long, global = true, env = "INSPECTOR_PIN_DIR", default_value = bpffs::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// The level of the inspector's own log lines (each session's start and
    /// end are `debug`); without it `RUST_LOG` decides, else `info`.
    #[arg(long, global = true, value_enum, env = "INSPECTOR_LOG_LEVEL")]
    log_level: Option<LogLevel>,
    /// Where live exemptions (`exempt add`) are saved, so the daemon
    /// restores them after a reboot: one file per pin directory.
    #[arg(long, global = true, env = "INSPECTOR_STATE_DIR", default_value = exempt_store::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    pub fn log_level(&self) -> Option<LogLevel> {
        self.log_level
    }
}

#[derive(Subcommand)]
enum Command {
    /// Attach to interfaces and inspect until SIGINT/SIGTERM; SIGHUP
    /// re-reads the policy.
    Run {
        /// Interface to attach to (repeat for several).
        #[arg(long = "iface", required = true)]
        ifaces: Vec<String>,
        /// Policy file (TOML); the built-in default when omitted.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// XDP attach mode: auto tries native and falls back to generic.
        #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
        xdp_mode: AttachMode,
        /// Classify and count only: no proxy (so no ESMTP inspection), no
        /// steering (flagged SMTP is forwarded uninspected).
        #[arg(long)]
        no_proxy: bool,
        /// The old name of `--no-proxy`.
        #[arg(long, hide = true)]
        no_engine: bool,
        /// Prometheus endpoint (`GET /metrics`): ADDRESS:PORT, or `off`.
        #[arg(long, default_value = metrics::DEFAULT_ADDR)]
        metrics: MetricsAddr,
        /// ESMTP audit records: `stdout` or `file:PATH` (JSON lines),
        /// `syslog` or `syslog:SOCKET` (RFC 5424, default socket /dev/log),
        /// `syslog+udp:HOST:PORT`, `syslog+tcp:HOST:PORT` (remote), or
        /// `off`. Overrides the policy's `[audit] sink`; default stdout.
        #[arg(long)]
        audit: Option<SinkSpec>,
        /// Audit records that may wait for a slow sink; more are dropped and
        /// counted (inspector_audit_dropped_total). Overrides the policy's
        /// `[audit] queue`; default 4096.
        #[arg(long)]
        audit_queue: Option<usize>,
        /// This gateway's member index (from 1) in the policy's
        /// `[cluster]`: needed with `members = N`; with a list of the
        /// members' addresses, the one on this host is found without it.
        #[arg(long, env = MEMBER_ENV)]
        cluster_member: Option<u32>,
    },
    /// Manage exemptions live (hosts or networks never inspected).
    Exempt {
        #[command(subcommand)]
        action: exempt::Action,
    },
    /// Print the kernel's per-class counters, the connection limits' live
    /// view (per server, the top clients, SYNs dropped by reason), and the
    /// running daemon's ESMTP counters as `show service-policy inspect esmtp`.
    Stats {
        #[arg(long)]
        json: bool,
        /// How many clients to show, those with the most connections first.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// The running daemon: version, pid, uptime, policy (path and SHA-256),
    /// interfaces with their XDP mode and steering, readiness, rule counts.
    /// Exits 0 when ready, 69 when not (starting, stopping, a stale
    /// heartbeat, not answering), 3 when no daemon runs.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Make the running daemon re-read its policy (as SIGHUP does) and
    /// wait for the outcome: open sessions keep the policy they started
    /// with, new ones get the new one. A bad policy is refused (exit 78)
    /// and the running one stays.
    Reload,
    /// Policy files.
    Policy {
        #[command(subcommand)]
        action: policy::Action,
    },
    /// Remove the pinned maps (exemptions and counters). The daemon must be stopped.
    Unload,
    /// The man page and shell completions (for packaging).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        action: generate::Action,
    },
}

/// Runs one command line.
pub fn execute(cli: Cli) -> Result<()> {
    let pin_dir = cli.pin_dir;
    match cli.command {
        Command::Run {
            ifaces,
            policy,
            xdp_mode,
            no_proxy,
            no_engine,
            metrics,
            audit,
            audit_queue,
            cluster_member,
        } => {
            if no_engine {
                log::warn!("`--no-engine` is deprecated: it is now `--no-proxy`");
            }
            daemon::run(RunOptions {
                ifaces,
                policy,
                pin_dir,
                state_dir: cli.state_dir,
                mode: xdp_mode,
                proxy: !(no_proxy || no_engine),
                metrics,
                audit,
                audit_queue,
                cluster_member,
            })
        }
        Command::Exempt { action } => exempt::execute(&pin_dir, &cli.state_dir, action),
        Command::Stats { json, top } => stats::show(&pin_dir, json, top),
        Command::Generate { action } => generate::execute(action),
        Command::Status { json } => status::show(&pin_dir, json),
        Command::Reload => status::reload(&pin_dir),
        Command::Policy { action } => policy::execute(action),
        Command::Unload => {
            let holders = IfaceLock::holders(&pin_dir);
            if let Some(h) = holders.first() {
                bail!(
                    "a daemon (pid {}) is running on {} with {}; stop it first",
                    h.pid,
                    h.iface,
                    pin_dir.display()
                );
            }
            let removed = bpffs::unload(&pin_dir)?;
            println!(
                "removed {} pinned map(s) from {}",
                removed.len(),
                pin_dir.display()
            );
            Ok(())
        }
    }
}

/// A limit as the views show it: the number, or `zero` for 0 (unlimited).
fn limit(n: u32, zero: &str) -> String {
    if n == 0 {
        zero.to_string()
    } else {
        n.to_string()
    }
}
