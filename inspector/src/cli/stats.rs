//! `inspector stats`: the kernel's class counters, its drops for a
//! packet's shape, and its limits (read from the pinned maps), and each
//! running daemon's ESMTP counters (read from its stats socket), as text or
//! JSON.

use std::path::Path;

use anyhow::Result;
use inspector_common::{Class, DropReason, InterceptEvent, ParseDrop};

use crate::{
    daemon::lock::IfaceLock,
    kernel::{
        clients::{self, Blocked},
        counters::{ClassStats, ParseDrops},
        limits::LimitStats,
    },
    observe::{esmtp::EsmtpSnapshot, stats_socket},
};

pub fn show(pin_dir: &Path, json: bool, top: usize) -> Result<()> {
    let classes = ClassStats::read(pin_dir)?;
    let parse_drops = ParseDrops::read(pin_dir)?;
    let limits = LimitStats::read(pin_dir, top)?;
    let blocked = clients::blocked(pin_dir)?;
    let esmtp = read_daemons(pin_dir);
    if json {
        let mut out = classes_json(&classes);
        out["parse_drops"] = parse_drops_json(&parse_drops);
        out["limits"] = limits_json(&limits);
        out["limits"]["clients_blocked"] = serde_json::json!(blocked);
        out["esmtp"] = esmtp
            .iter()
            .map(|(pid, snap)| match snap {
                Ok(snap) => serde_json::json!(snap),
                Err(e) => serde_json::json!({"pid": pid, "error": format!("{e:#}")}),
            })
            .collect();
        println!("{out}");
    } else {
        print!(
            "{}{}{}{}",
            classes_text(&classes),
            parse_drops_text(&parse_drops),
            limits_text(&limits),
            blocked_text(&blocked, top)
        );
        println!();
        if esmtp.is_empty() {
            println!("ESMTP: no daemon is running with {}", pin_dir.display());
        }
        for (pid, snap) in esmtp {
            match snap {
                Ok(snap) => print!("{}", esmtp_text(pid, &snap)),
                Err(e) => println!("ESMTP (daemon pid {pid}): {e:#}"),
            }
        }
    }
    Ok(())
}

/// The ESMTP counters of every daemon running with `pin_dir` (normally
/// one), by pid: the daemons are found through their interface locks, so
/// this works across network namespaces.
fn read_daemons(pin_dir: &Path) -> Vec<(u32, Result<EsmtpSnapshot>)> {
    let mut pids: Vec<u32> = IfaceLock::holders(pin_dir).iter().map(|h| h.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter()
        .map(|pid| (pid, stats_socket::read(pid)))
        .collect()
}

fn esmtp_text(pid: u32, snap: &EsmtpSnapshot) -> String {
    let ended: Vec<String> = snap
        .sessions
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let a = &snap.admission;
    let refused: Vec<String> = a.refused.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!(
        "ESMTP (daemon pid {pid})\n{}  sessions: active {}, ended: {}; audit records dropped {}\n  \
         admission: {} client(s) holding sessions; refused: {}; evicted {}; stress {} \
         (entered {} time(s))\n",
        snap.show,
        snap.sessions_active,
        ended.join(", "),
        snap.audit_dropped,
        a.clients,
        refused.join(", "),
        a.evicted,
        if a.stress { "on" } else { "off" },
        a.stress_entered
    )
}

/// `{"classes": {"pass": {"packets": N, "bytes": N}, ...}}`
fn classes_json(classes: &ClassStats) -> serde_json::Value {
    let by_class: serde_json::Map<String, serde_json::Value> = Class::ALL
        .iter()
        .map(|&c| (c.name().to_string(), serde_json::json!(classes.get(c))))
        .collect();
    serde_json::json!({ "classes": by_class })
}

fn classes_text(classes: &ClassStats) -> String {
    let mut out = format!("{:<10} {:>14} {:>18}\n", "class", "packets", "bytes");
    for class in Class::ALL {
        let c = classes.get(class);
        out += &format!("{:<10} {:>14} {:>18}\n", class.name(), c.packets, c.bytes);
    }
    out
}

/// `{"tcp-fragment": N, "tiny-fragment": N, ...}`
fn parse_drops_json(drops: &ParseDrops) -> serde_json::Value {
    ParseDrop::ALL
        .iter()
        .map(|&r| (r.name().to_string(), drops.get(r).into()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn parse_drops_text(drops: &ParseDrops) -> String {
    let mut out = String::from("\npackets dropped for their shape (fragments, unparsable)\n");
    for reason in ParseDrop::ALL {
        out += &format!("{:<26} {:>14}\n", reason.name(), drops.get(reason));
    }
    out
}

fn limits_json(limits: &LimitStats) -> serde_json::Value {
    let drops: serde_json::Map<String, serde_json::Value> = DropReason::ALL
        .iter()
        .map(|&r| (r.name().to_string(), limits.drops[r as usize].into()))
        .collect();
    let intercept: serde_json::Map<String, serde_json::Value> = InterceptEvent::ALL
        .iter()
        .map(|&e| (e.name().to_string(), limits.intercepts[e as usize].into()))
        .collect();
    serde_json::json!({
        "servers": limits.servers,
        "clients": limits.clients,
        "drops": drops,
        "intercept": intercept,
    })
}

fn limits_text(limits: &LimitStats) -> String {
    let limit = |n| super::limit(n, "-");
    let mut out = format!(
        "\n{:<39} {:>10} {:>11} {:>9} {:>13} {:>10} {:>14}\n",
        "server",
        "embryonic",
        "established",
        "max-conns",
        "max-embryonic",
        "per-client",
        "per-client-emb"
    );
    for s in &limits.servers {
        out += &format!(
            "{:<39} {:>10} {:>11} {:>9} {:>13} {:>10} {:>14}\n",
            s.address,
            s.embryonic,
            s.established,
            limit(s.max_conns),
            limit(s.max_embryonic),
            limit(s.per_client_max),
            limit(s.per_client_embryonic_max)
        );
    }
    if limits.servers.is_empty() {
        out += "(no protected servers)\n";
    }
    if !limits.clients.is_empty() {
        out += &format!(
            "\n{:<39} {:<39} {:>10} {:>11}\n",
            "client", "server", "embryonic", "established"
        );
        for c in &limits.clients {
            out += &format!(
                "{:<39} {:<39} {:>10} {:>11}\n",
                c.client, c.server, c.embryonic, c.established
            );
        }
    }
    out += "\nSYNs dropped\n";
    for reason in DropReason::ALL {
        out += &format!(
            "{:<26} {:>14}\n",
            reason.name(),
            limits.drops[reason as usize]
        );
    }
    out
}

/// The clients at their per-client session limit, the first `top` named.
fn blocked_text(blocked: &[Blocked], top: usize) -> String {
    let mut out = format!(
        "\nclients at their session limit, new SYNs dropped in XDP: {}\n",
        blocked.len()
    );
    for b in blocked.iter().take(top) {
        out += &format!("  {}\n", b.client);
    }
    out
}
