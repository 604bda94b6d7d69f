//! The policy routing that delivers marked (flagged) packets locally, made
//! and removed over rtnetlink:
//!
//! ```text
//! ip rule add pref STEER_RULE_PRIORITY fwmark STEER_MARK lookup STEER_TABLE
//! ip route add local 0.0.0.0/0 dev lo table STEER_TABLE
//! (and the same with -6, ::/0)
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use inspector_common::{STEER_MARK, STEER_RULE_PRIORITY, STEER_TABLE};
use rtnetlink::{
    Handle, IpVersion, RouteMessageBuilder,
    packet_route::{
        route::{RouteScope, RouteType},
        rule::{RuleAction, RuleAttribute, RuleMessage},
    },
};

/// Opens a netlink connection for this network namespace (the connection
/// task runs on the current tokio runtime).
pub fn connect() -> Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(connection);
    Ok(handle)
}

fn loopback_index() -> Result<u32> {
    // SAFETY: a NUL-terminated constant string.
    let index = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    anyhow::ensure!(index != 0, "no loopback interface in this namespace");
    Ok(index)
}

fn local_route_v4(lo: u32) -> rtnetlink::packet_route::route::RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
        .output_interface(lo)
        .table_id(STEER_TABLE)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .build()
}

fn local_route_v6(lo: u32) -> rtnetlink::packet_route::route::RouteMessage {
    RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
        .output_interface(lo)
        .table_id(STEER_TABLE)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .build()
}

/// Installs the rules and routes (replacing leftovers of a killed daemon).
pub async fn install(handle: &Handle) -> Result<()> {
    remove(handle).await?;
    let lo = loopback_index()?;
    handle
        .route()
        .add(local_route_v4(lo))
        .replace()
        .execute()
        .await
        .context("adding `local 0.0.0.0/0 dev lo` to the steering table")?;
    let rule = || {
        handle
            .rule()
            .add()
            .fw_mark(STEER_MARK)
            .table_id(STEER_TABLE)
            .priority(STEER_RULE_PRIORITY)
            .action(RuleAction::ToTable)
    };
    rule()
        .v4()
        .execute()
        .await
        .context("adding the IPv4 fwmark rule")?;
    // IPv6 may be disabled on the host: then only IPv4 SMTP is steered
    // (the steering program's IPv6 marks stay without effect).
    let v6 = async {
        handle
            .route()
            .add(local_route_v6(lo))
            .replace()
            .execute()
            .await
            .context("adding `local ::/0 dev lo` to the steering table")?;
        rule()
            .v6()
            .execute()
            .await
            .context("adding the IPv6 fwmark rule")
    };
    if let Err(e) = v6.await {
        log::warn!("no IPv6 steering ({e:#}): IPv6 SMTP is not inspected");
    }
    Ok(())
}

/// Whether `rule` is one of ours (our priority, mark and table).
fn is_ours(rule: &RuleMessage) -> bool {
    let has = |a: RuleAttribute| rule.attributes.contains(&a);
    has(RuleAttribute::Priority(STEER_RULE_PRIORITY))
        && has(RuleAttribute::FwMark(STEER_MARK))
        && has(RuleAttribute::Table(STEER_TABLE))
}

/// Our rules present now, both IP versions.
pub async fn rules(handle: &Handle) -> Result<Vec<RuleMessage>> {
    let mut ours = Vec::new();
    for (version, required) in [(IpVersion::V4, true), (IpVersion::V6, false)] {
        let mut stream = handle.rule().get(version).execute();
        loop {
            match stream.try_next().await {
                Ok(Some(rule)) if is_ours(&rule) => ours.push(rule),
                Ok(Some(_)) => {}
                Ok(None) => break,
                // IPv6 may be disabled: nothing of ours there.
                Err(_) if !required => break,
                Err(e) => return Err(e).context("listing rules"),
            }
        }
    }
    Ok(ours)
}

/// Removes the rules and routes; what is already gone is fine.
pub async fn remove(handle: &Handle) -> Result<()> {
    for rule in rules(handle).await? {
        handle
            .rule()
            .del(rule)
            .execute()
            .await
            .context("deleting a steering rule")?;
    }
    let lo = loopback_index()?;
    for (route, required) in [(local_route_v4(lo), true), (local_route_v6(lo), false)] {
        match handle.route().del(route).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e))
                if e.raw_code().abs() == libc::ESRCH || e.raw_code().abs() == libc::ENOENT => {}
            // IPv6 may be disabled: no route of ours there.
            Err(_) if !required => {}
            Err(e) => return Err(e).context("deleting a steering route"),
        }
    }
    Ok(())
}
