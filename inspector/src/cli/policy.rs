//! `inspector policy check`: validate a policy file and show what it sets.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use inspector_esmtp::{policy::Mode, stats::PolicyStats};

use crate::{
    config::{
        Cluster, DEFAULT_QUEUE, GATEWAY_WARNING, MEMBER_ENV, Policy, Server, UpstreamSource,
        asa::{self, AddressSide},
        submission_warning,
    },
    kernel::local_addrs,
};

#[derive(Subcommand)]
pub enum Action {
    /// Validate a policy file; errors name the file, line, column and field.
    Check { file: PathBuf },
    /// Translate a firewall's running-config (`inspect esmtp`, its
    /// exemptions, connection limits and timeouts) into a policy file.
    /// What cannot be translated is a warning naming its line.
    ImportAsa {
        /// The running-config (`show running-config`).
        file: PathBuf,
        /// Write the policy here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// The addresses of translated hosts: `real` (the inspector stands
        /// where the firewall stood) or `mapped` (the published addresses:
        /// the translation is still done behind the inspector).
        #[arg(long, value_enum, default_value_t = AddressSide::Real)]
        addresses: AddressSide,
        /// The policy's mode: `modern` (the controls without breaking mail)
        /// or `compat` (the firewall's behaviour byte for byte).
        #[arg(long, value_enum, default_value_t = ImportMode::Modern)]
        mode: ImportMode,
        /// Fail (exit 1, nothing written) when anything warns.
        #[arg(long)]
        strict: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ImportMode {
    Modern,
    Compat,
}

pub fn execute(action: Action) -> Result<()> {
    match action {
        Action::Check { file } => {
            let policy = Policy::load(&file)?;
            if policy.proxy.upstream_source == UpstreamSource::Gateway {
                log::warn!(
                    "{}: proxy.upstream-source = \"gateway\": {GATEWAY_WARNING}",
                    file.display()
                );
            }
            if let Some(warning) = submission_warning(&policy.esmtp) {
                log::warn!("{}: {warning}", file.display());
            }
            println!("{}: ok", file.display());
            print!("{}", render(&policy));
            if policy.cluster.members > 1 {
                println!("{}", cluster_line(&policy.cluster));
            }
            Ok(())
        }
        Action::ImportAsa {
            file,
            output,
            addresses,
            mode,
            strict,
        } => import_asa(&file, output.as_deref(), addresses, mode, strict),
    }
}

/// Which member of `cluster` this host would be, or why that cannot be
/// told here (`--cluster-member` is the daemon's; its variable is read).
fn cluster_line(cluster: &Cluster) -> String {
    let given = std::env::var(MEMBER_ENV).ok().and_then(|v| v.parse().ok());
    let local = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(local_addrs::watch()));
    let found = match local {
        Ok(local) => cluster.membership(given, |ip| local.contains(ip)),
        Err(e) => Err(format!("this host's addresses: {e:#}")),
    };
    match found {
        Ok(m) => format!(
            "cluster: on this host, member {} of {}",
            m.member, m.members
        ),
        Err(e) => format!(
            "cluster: {} members; which one this host is cannot be told: {e}",
            cluster.members
        ),
    }
}

fn import_asa(
    file: &Path,
    output: Option<&Path>,
    addresses: AddressSide,
    mode: ImportMode,
    strict: bool,
) -> Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("{}: cannot read the configuration", file.display()))?;
    let source = file.display().to_string();
    let imported = asa::import(
        &text,
        &asa::Options {
            mode: match mode {
                ImportMode::Modern => Mode::Modern,
                ImportMode::Compat => Mode::Compat,
            },
            addresses,
            source: source.clone(),
        },
    );
    for d in &imported.diagnostics {
        eprintln!("{}", d.located(&source));
    }
    let warnings = imported.warnings().count();
    eprintln!(
        "{source}: {warnings} warning(s), {} note(s)",
        imported.diagnostics.len() - warnings
    );
    // What `policy check` will say: the translation must be a valid policy.
    let name = output.map_or_else(|| "(the translation)".into(), |p| p.display().to_string());
    Policy::parse(Path::new(&name), &imported.toml)
        .context("the translation is not a valid policy (a bug in the importer)")?;
    if strict && warnings > 0 {
        bail!("{warnings} warning(s) and --strict: nothing written");
    }
    match output {
        Some(path) => std::fs::write(path, &imported.toml)
            .with_context(|| format!("writing {}", path.display()))?,
        None => print!("{}", imported.toml),
    }
    Ok(())
}

/// What the policy's `upstream-source` means, for `policy check`.
fn upstream_line(source: UpstreamSource) -> String {
    let what = match source {
        UpstreamSource::Auto => {
            "transparent (the client's address) for each server whose return path verifies at start or at its first session; the gateway's address, with a warning, for one whose does not"
        }
        UpstreamSource::Client => {
            "transparent (the client's address); the daemon refuses to start when a protected server's return path does not verify"
        }
        UpstreamSource::Gateway => {
            "the gateway's address for every client (WARNING: the server cannot tell clients apart)"
        }
        UpstreamSource::Xclient => {
            "the gateway's address, then XCLIENT with the client's address, port and HELO name (the server must offer XCLIENT to the gateway)"
        }
        UpstreamSource::Proxy => {
            "the gateway's address, a PROXY v2 header with the client's address first (the server must expect it)"
        }
    };
    format!("upstream: {source}: {what}\n")
}

/// What `policy check` shows of a valid policy, after its first line.
fn render(policy: &Policy) -> String {
    let mut out = format!("exemptions: {}\n", policy.exempt.len());
    for net in &policy.exempt {
        out += &format!("  {net}\n");
    }
    out += &format!("protected servers: {}\n", policy.servers.len());
    for server in &policy.servers {
        out += &format!("  {}\n", describe(server));
    }
    let t = &policy.timeouts;
    out += &format!(
        "timeouts: embryonic {}s, idle {}s, half-closed {}s\n",
        t.embryonic.as_secs(),
        t.idle.as_secs(),
        t.half_closed.as_secs()
    );
    out += &format!(
        "inspected ports: {}\n",
        crate::daemon::show_ports(&policy.esmtp.ports)
    );
    if let Some(warning) = submission_warning(&policy.esmtp) {
        out += &format!("  WARNING: {warning}\n");
    }
    out += &format!("unparsable packets: {}\n", policy.packets.unparsable.name());
    out += &format!(
        "audit: sink {}, queue {}\n",
        policy
            .audit
            .sink
            .as_ref()
            .map_or("stdout (default)".to_string(), ToString::to_string),
        policy
            .audit
            .queue
            .map_or(format!("{DEFAULT_QUEUE} (default)"), |q| q.to_string())
    );
    out += &upstream_line(policy.proxy.upstream_source);
    if policy.proxy.upstream_source == UpstreamSource::Gateway {
        out += &format!("  WARNING: {GATEWAY_WARNING}\n");
    }
    // The ESMTP policy as `show service-policy` will show it.
    let esmtp = &policy.esmtp;
    out += &format!(
        "esmtp mode: {}\n",
        format!("{:?}", esmtp.mode).to_lowercase()
    );
    out += &PolicyStats::new(esmtp).render(esmtp);
    out
}

/// One line per protected server.
fn describe(server: &Server) -> String {
    let limit = |n| super::limit(n, "unlimited");
    format!(
        "{}: max-conns {}, max-embryonic {}, per-client-max {}, per-client-embryonic-max {}, on-embryonic-limit {}",
        server.address,
        limit(server.max_conns),
        limit(server.max_embryonic),
        limit(server.per_client_max),
        limit(server.per_client_embryonic_max),
        server.on_embryonic_limit.name()
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn shows_servers_timeouts_and_audit_defaults() {
        let p = Policy::parse(
            Path::new("p.toml"),
            "[[server]]\naddress = \"198.18.1.26\"\nmax-conns = 50\non-embryonic-limit = \"drop\"\n",
        )
        .unwrap();
        let text = render(&p);
        assert!(
            text.starts_with(
                "exemptions: 0\nprotected servers: 1\n  198.18.1.26: max-conns 50, max-embryonic unlimited, \
                 per-client-max unlimited, per-client-embryonic-max unlimited, on-embryonic-limit drop\n\
                 timeouts: embryonic 30s, idle 3600s, half-closed 600s\n\
                 inspected ports: 25\n\
                 unparsable packets: drop\n\
                 audit: sink stdout (default), queue 4096 (default)\nupstream: auto: transparent"
            ),
            "{text}"
        );
    }
}

#[cfg(test)]
mod ports_tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_submission_port_without_tls_warns() {
        let parse = |text| Policy::parse(Path::new("p.toml"), text).unwrap();
        let text = render(&parse("[esmtp]\nports = [25, 587]\n"));
        assert!(text.contains("inspected ports: 25, 587\n  WARNING: esmtp.ports lists 587 (submission) but allow-tls is false"), "{text}");
        let text = render(&parse("[esmtp]\nports = [25, 587]\nallow-tls = true\n"));
        assert!(
            text.contains("inspected ports: 25, 587\n") && !text.contains("WARNING"),
            "{text}"
        );
    }
}

#[cfg(test)]
mod upstream_tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn gateway_mode_says_what_it_breaks() {
        let p = Policy::parse(
            Path::new("p.toml"),
            "[proxy]\nupstream-source = \"gateway\"\n",
        )
        .unwrap();
        let text = render(&p);
        assert!(
            text.contains("upstream: gateway: the gateway's address for every client"),
            "{text}"
        );
        assert!(
            text.contains(
                "WARNING: the mail server sees the gateway's address for every client: SPF"
            ),
            "{text}"
        );
        assert!(text.contains("mynetworks"), "{text}");
        let p = Policy::parse(Path::new("p.toml"), "").unwrap();
        assert!(!render(&p).contains("WARNING"));
    }
}
