//! `inspector status` and `inspector reload`: the running daemon's state,
//! and re-reading its policy, through its stats socket.

use std::path::Path;

use anyhow::Result;
use inspector_common::HEARTBEAT_STALE_NS;

use super::exit::{CONFIG, Failure, NOT_READY, NOT_RUNNING};
use crate::{
    daemon::{lock::IfaceLock, status::Status},
    kernel::{
        exempt::{ExemptTable, Origin},
        limits::LimitStats,
    },
    observe::stats_socket,
    proxy::upstream::{Mode, UpstreamStatus},
};

/// The daemons running with `pin_dir` (normally one), by pid.
fn daemons(pin_dir: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = IfaceLock::holders(pin_dir).iter().map(|h| h.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn not_running(pin_dir: &Path) -> anyhow::Error {
    Failure::error(
        NOT_RUNNING,
        format!("no daemon is running with {}", pin_dir.display()),
    )
}

/// A daemon's status, or why it could not be had.
type Answer = (u32, Result<Status>);

pub fn show(pin_dir: &Path, json: bool) -> Result<()> {
    let answers: Vec<Answer> = daemons(pin_dir)
        .into_iter()
        .map(|pid| {
            let status = stats_socket::request(pid, "status")
                .and_then(|v| serde_json::from_value(v).map_err(Into::into));
            (pid, status)
        })
        .collect();
    let rules = rule_counts(pin_dir);
    if json {
        let daemons: Vec<serde_json::Value> = answers
            .iter()
            .map(|(pid, s)| match s {
                Ok(s) => serde_json::json!(s),
                Err(e) => serde_json::json!({"pid": pid, "error": format!("{e:#}")}),
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "pin-dir": pin_dir.display().to_string(),
                "daemons": daemons,
                "rules": rules,
            })
        );
    } else {
        for (pid, status) in &answers {
            match status {
                Ok(s) => print!("{}", text(s)),
                Err(e) => println!("daemon pid {pid}: not answering: {e:#}"),
            }
        }
        if let Some(r) = &rules {
            println!(
                "kernel rules ({}): exemptions {} policy, {} live; protected servers {}",
                pin_dir.display(),
                r["exemptions"]["policy"],
                r["exemptions"]["live"],
                r["servers"]
            );
        }
    }
    if answers.is_empty() {
        return Err(not_running(pin_dir));
    }
    if let Some(why) = answers.iter().find_map(|(pid, s)| not_ready(*pid, s)) {
        return Err(Failure::error(NOT_READY, why));
    }
    Ok(())
}

/// Why a daemon is not ready, if it is not.
fn not_ready(pid: u32, status: &Result<Status>) -> Option<String> {
    let s = match status {
        Ok(s) => s,
        Err(e) => return Some(format!("daemon pid {pid} does not answer: {e:#}")),
    };
    if !s.ready {
        return Some(format!("daemon pid {pid} is not ready ({:?})", s.state).to_lowercase());
    }
    if s.proxy && stale(s) {
        return Some(format!(
            "daemon pid {pid}: the proxy's heartbeat is stale; new sessions follow `fail = \"{}\"`",
            s.fail
        ));
    }
    None
}

fn stale(s: &Status) -> bool {
    s.heartbeat_age_ms
        .is_none_or(|ms| ms * 1_000_000 > HEARTBEAT_STALE_NS)
}

fn text(s: &Status) -> String {
    let up = s.uptime_secs;
    let mut out = format!(
        "inspector {}, pid {}, up {}h {:02}m {:02}s (since {})\nstate: {}\n",
        s.version,
        s.pid,
        up / 3600,
        up / 60 % 60,
        up % 60,
        s.started,
        format!("{:?}", s.state).to_lowercase()
    );
    let p = &s.policy;
    out += &format!(
        "policy: {} (sha256 {}), loaded {}: {} exemption(s), {} protected server(s), {} ESMTP rule(s); fail {}\ninspected ports: {}\n",
        p.path.as_deref().unwrap_or("(built-in default)"),
        p.sha256,
        p.loaded,
        p.exemptions,
        p.servers,
        p.esmtp_rules,
        s.fail,
        crate::daemon::show_ports(&p.ports)
    );
    if let Some(r) = &s.last_reload {
        match &r.error {
            None => out += &format!("last reload: {} ok\n", r.time),
            Some(e) => out += &format!("last reload: {} refused: {e}\n", r.time),
        }
    }
    for i in &s.interfaces {
        out += &format!(
            "interface {}: {} XDP, steering {}\n",
            i.name, i.xdp, i.steering
        );
    }
    if s.proxy {
        let beat = match s.heartbeat_age_ms {
            Some(ms) if !stale(s) => format!("heartbeat {:.1} s ago", ms as f64 / 1000.0),
            Some(ms) => format!(
                "heartbeat STALE ({:.1} s): new sessions are not steered",
                ms as f64 / 1000.0
            ),
            None => "no heartbeat yet".into(),
        };
        out += &format!(
            "proxy: {beat}; {} session(s) active; watchdog {}\n",
            s.sessions_active,
            if s.watchdog { "on" } else { "off" }
        );
        if let Some(u) = &s.upstream {
            out += &upstream_text(u);
        }
    } else {
        out += "proxy: off (--no-proxy)\n";
    }
    out
}

/// The upstream mode in force: how the proxy connects to the servers, what
/// they see of the clients, and why; per server, and a warning when some
/// server sees the gateway's address for every client.
fn upstream_text(u: &UpstreamStatus) -> String {
    let mut out = format!(
        "upstream: {} (upstream-source {}): the server sees {}\n  {}\n",
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

/// Rules in the kernel's maps by origin, and the protected servers.
fn rule_counts(pin_dir: &Path) -> Option<serde_json::Value> {
    let rules = ExemptTable::open(pin_dir).ok()?.list().ok()?;
    let count = |o| rules.iter().filter(|r| r.origin == o).count();
    let servers = LimitStats::read(pin_dir, 0).ok()?.servers.len();
    Some(serde_json::json!({
        "exemptions": {"policy": count(Origin::Policy), "live": count(Origin::Live)},
        "servers": servers,
    }))
}

/// `inspector reload`: asks every daemon of `pin_dir` to re-read its
/// policy; fails with 78 when one refuses it (it keeps the running one).
pub fn reload(pin_dir: &Path) -> Result<()> {
    let pids = daemons(pin_dir);
    if pids.is_empty() {
        return Err(not_running(pin_dir));
    }
    let mut refused = None;
    for pid in pids {
        let answer = stats_socket::request(pid, "reload")?;
        if answer["ok"] == true {
            let p = &answer["policy"];
            println!(
                "daemon pid {pid}: reloaded {} (sha256 {})",
                p["path"].as_str().unwrap_or("(built-in default)"),
                p["sha256"].as_str().unwrap_or("?")
            );
            if let Some(names) = answer["needs-restart"].as_array().filter(|a| !a.is_empty()) {
                let names: Vec<&str> = names.iter().filter_map(|n| n.as_str()).collect();
                println!(
                    "  changed, effective at the next restart: {}",
                    names.join(", ")
                );
            }
        } else {
            let error = answer["error"].as_str().unwrap_or("refused").to_string();
            println!("daemon pid {pid}: reload refused, the running policy stays");
            refused = Some(error);
        }
    }
    match refused {
        Some(error) => Err(Failure::error(CONFIG, error)),
        None => Ok(()),
    }
}
