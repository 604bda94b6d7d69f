//! `inspector status`: what each running daemon of the pin directory does
//! now. For now its upstream mode (how the proxy connects to the servers,
//! what they see of the clients, and why); read from the daemon's stats
//! socket, so it works from any network namespace.

use std::path::Path;

use anyhow::Result;

use crate::{
    daemon::lock::IfaceLock,
    observe::stats_socket::{self, DaemonSnapshot},
    proxy::upstream::{Mode, UpstreamStatus},
};

pub fn show(pin_dir: &Path, json: bool) -> Result<()> {
    let mut pids: Vec<u32> = IfaceLock::holders(pin_dir).iter().map(|h| h.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    let daemons: Vec<(u32, Result<DaemonSnapshot>)> = pids
        .into_iter()
        .map(|pid| (pid, stats_socket::read_daemon(pid)))
        .collect();
    if json {
        let list: Vec<serde_json::Value> = daemons
            .iter()
            .map(|(pid, d)| match d {
                Ok(d) => serde_json::json!({"pid": pid, "upstream": d.upstream}),
                Err(e) => serde_json::json!({"pid": pid, "error": format!("{e:#}")}),
            })
            .collect();
        println!("{}", serde_json::json!({ "daemons": list }));
        return Ok(());
    }
    if daemons.is_empty() {
        println!("no daemon is running with {}", pin_dir.display());
    }
    for (pid, d) in daemons {
        match d {
            Ok(d) => print!("{}", text(pid, d.upstream.as_ref())),
            Err(e) => println!("daemon pid {pid}: {e:#}"),
        }
    }
    Ok(())
}

fn text(pid: u32, upstream: Option<&UpstreamStatus>) -> String {
    let Some(u) = upstream else {
        return format!("daemon pid {pid}: no proxy (--no-proxy): nothing is inspected\n");
    };
    let mut out = format!(
        "daemon pid {pid}\nupstream: {} (upstream-source {}): the server sees {}\n  {}\n",
        u.mode.name(),
        u.configured,
        u.mode.server_sees(),
        u.reason
    );
    for s in &u.servers {
        out += &format!(
            "  {}{}{}: {}: {}\n",
            s.address,
            s.interface
                .as_ref()
                .map_or(String::new(), |i| format!(" via {i}")),
            if s.listed { "" } else { " (seen in a session)" },
            s.mode.name(),
            s.reason
        );
    }
    if let Some(w) = &u.warning {
        let what = if u.mode == Mode::Gateway {
            ""
        } else {
            "some servers: "
        };
        out += &format!("  WARNING: {what}{w}\n");
    }
    out
}
