//! The `inspector` command line.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use inspector::{
    audit::SinkSpec,
    bpffs,
    daemon::{self, RunOptions},
    exempt::{self, ExemptTable, Origin},
    limits::{self, LimitStats},
    loader::AttachMode,
    lock::IfaceLock,
    metrics::{self, MetricsAddr},
    policy::Policy,
    stats::ClassStats,
    stats_socket,
};
use inspector_esmtp::stats::PolicyStats;

#[derive(Parser)]
#[command(
    name = "inspector",
    version,
    about = "eBPF/XDP-accelerated ESMTP inspector"
)]
struct Cli {
    /// bpffs directory holding the pinned maps shared by the daemon and the CLI.
    #[arg(long, global = true, env = "INSPECTOR_PIN_DIR", default_value = bpffs::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to interfaces and inspect until SIGINT/SIGTERM.
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
        /// Classify and count only: no ESMTP engine, no steering (flagged
        /// SMTP is forwarded uninspected).
        #[arg(long)]
        no_engine: bool,
        /// Prometheus endpoint (`GET /metrics`): ADDRESS:PORT, or `off`.
        #[arg(long, default_value = metrics::DEFAULT_ADDR)]
        metrics: MetricsAddr,
        /// ESMTP audit records: `stdout` or `file:PATH` (JSON lines),
        /// `syslog` or `syslog:SOCKET` (RFC 5424, default socket /dev/log), or
        /// `off`. Overrides the policy's `[audit] sink`; default stdout.
        #[arg(long)]
        audit: Option<SinkSpec>,
        /// Audit records that may wait for a slow sink; more are dropped and
        /// counted (inspector_audit_dropped_total). Overrides the policy's
        /// `[audit] queue`; default 4096.
        #[arg(long)]
        audit_queue: Option<usize>,
    },
    /// Manage exemptions live (hosts or networks never inspected).
    Exempt {
        #[command(subcommand)]
        action: ExemptAction,
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
    /// Policy files.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Remove the pinned maps (exemptions and counters). The daemon must be stopped.
    Unload,
}

#[derive(Subcommand)]
enum ExemptAction {
    /// Exempt a network (CIDR) or a host, in both directions.
    Add { network: String },
    /// Remove an exemption.
    Del { network: String },
    /// List exemptions and where they came from (policy or live).
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Validate a policy file; errors name the file, line and field.
    Check { file: PathBuf },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    match execute(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inspector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(cli: Cli) -> Result<()> {
    let pin_dir = cli.pin_dir;
    match cli.command {
        Command::Run {
            ifaces,
            policy,
            xdp_mode,
            no_engine,
            metrics,
            audit,
            audit_queue,
        } => daemon::run(RunOptions {
            ifaces,
            policy,
            pin_dir,
            mode: xdp_mode,
            engine: !no_engine,
            metrics,
            audit,
            audit_queue,
        }),
        Command::Exempt { action } => exempt_command(&pin_dir, action),
        Command::Stats { json, top } => {
            let classes = ClassStats::read(&pin_dir)?;
            let limits = LimitStats::read(&pin_dir, top)?;
            let esmtp = stats_socket::read_all(&pin_dir);
            if json {
                let mut out = classes.to_json();
                out["limits"] = limits.to_json();
                out["esmtp"] = esmtp
                    .iter()
                    .map(|(pid, snap)| match snap {
                        Ok(snap) => serde_json::json!(snap),
                        Err(e) => serde_json::json!({"pid": pid, "error": format!("{e:#}")}),
                    })
                    .collect();
                println!("{out}");
            } else {
                print!("{}{}", classes.to_text(), limits.to_text());
                println!();
                if esmtp.is_empty() {
                    println!("ESMTP: no daemon is running with {}", pin_dir.display());
                }
                for (pid, snap) in esmtp {
                    match snap {
                        Ok(snap) => {
                            println!("ESMTP (daemon pid {pid})");
                            print!("{}", snap.show);
                            let ended: Vec<String> = snap
                                .sessions
                                .iter()
                                .map(|(k, v)| format!("{k} {v}"))
                                .collect();
                            println!(
                                "  sessions: active {}, ended: {}; audit records dropped {}",
                                snap.sessions_active,
                                ended.join(", "),
                                snap.audit_dropped
                            );
                        }
                        Err(e) => println!("ESMTP (daemon pid {pid}): {e:#}"),
                    }
                }
            }
            Ok(())
        }
        Command::Policy {
            action: PolicyAction::Check { file },
        } => {
            let policy = Policy::load(&file)?;
            println!("{}: ok", file.display());
            println!("exemptions: {}", policy.exempt.len());
            for net in &policy.exempt {
                println!("  {net}");
            }
            println!("protected servers: {}", policy.servers.len());
            for server in &policy.servers {
                println!("  {}", limits::describe(server));
            }
            let t = &policy.timeouts;
            println!(
                "timeouts: embryonic {}s, idle {}s, half-closed {}s",
                t.embryonic.as_secs(),
                t.idle.as_secs(),
                t.half_closed.as_secs()
            );
            println!(
                "audit: sink {}, queue {}",
                policy
                    .audit
                    .sink
                    .as_ref()
                    .map_or("stdout (default)".to_string(), ToString::to_string),
                policy
                    .audit
                    .queue
                    .map_or("4096 (default)".to_string(), |q| q.to_string())
            );
            // The ESMTP policy as `show service-policy` will show it.
            let esmtp = &policy.esmtp;
            println!("esmtp mode: {}", format!("{:?}", esmtp.mode).to_lowercase());
            print!("{}", PolicyStats::new(esmtp).render(esmtp));
            Ok(())
        }
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

fn exempt_command(pin_dir: &std::path::Path, action: ExemptAction) -> Result<()> {
    let parse = |text: &str| exempt::parse_network(text).map_err(anyhow::Error::msg);
    match action {
        ExemptAction::Add { network } => {
            let net = parse(&network)?;
            if ExemptTable::open(pin_dir)?.add(&net, Origin::Live)? {
                println!("exempted {net}");
            } else {
                println!("{net} was already exempt");
            }
        }
        ExemptAction::Del { network } => {
            let net = parse(&network)?;
            if !ExemptTable::open(pin_dir)?.remove(&net)? {
                bail!("{net} is not exempt");
            }
            println!("removed exemption {net}");
        }
        ExemptAction::List { json } => {
            let rules = ExemptTable::open(pin_dir)?.list()?;
            if json {
                println!("{}", serde_json::to_string(&rules)?);
            } else {
                for rule in rules {
                    let origin = match rule.origin {
                        Origin::Policy => "policy",
                        Origin::Live => "live",
                    };
                    println!("{:<43} {origin}", rule.network);
                }
            }
        }
    }
    Ok(())
}
