//! `inspector policy check`: validate a policy file and show what it sets.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use inspector_esmtp::stats::PolicyStats;

use crate::config::{DEFAULT_QUEUE, Policy, Server};

#[derive(Subcommand)]
pub enum Action {
    /// Validate a policy file; errors name the file, line, column and field.
    Check { file: PathBuf },
}

pub fn execute(action: Action) -> Result<()> {
    let Action::Check { file } = action;
    let policy = Policy::load(&file)?;
    println!("{}: ok", file.display());
    print!("{}", render(&policy));
    Ok(())
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
                 audit: sink stdout (default), queue 4096 (default)\nesmtp mode: modern\n"
            ),
            "{text}"
        );
    }
}
