//! The policy routing that delivers marked (flagged) packets locally, made
//! and removed over rtnetlink:
//!
//! ```text
//! ip rule add pref STEER_RULE_PRIORITY fwmark STEER_MARK lookup STEER_TABLE
//! ip route add local 0.0.0.0/0 dev lo table STEER_TABLE
//! (and the same with -6, ::/0)
//! ```
//!
//! And the lookups the daemon makes of this namespace's routing: the
//! interface the route to an address uses ([`route_to`], as `ip route get`)
//! and the addresses of an interface ([`addresses_of`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use inspector_common::{STEER_MARK, STEER_RULE_PRIORITY, STEER_TABLE};
use rtnetlink::{
    Handle, IpVersion, RouteMessageBuilder,
    packet_route::{
        address::{AddressAttribute, AddressMessage, AddressScope},
        route::{RouteAddress, RouteAttribute, RouteScope, RouteType},
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

/// Where the route to an address leaves this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The output interface.
    pub ifindex: u32,
    pub iface: String,
    /// The next hop, when the address is not on the interface's link.
    pub via: Option<IpAddr>,
}

/// The route this namespace's kernel would use to reach `addr` (`ip route
/// get ADDR`: the main tables, not the steering table, which only marked
/// packets use). Shared by whatever needs "the interface facing X".
pub async fn route_to(handle: &Handle, addr: IpAddr) -> Result<Route> {
    let message = match addr {
        IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(a, 32)
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(a, 128)
            .build(),
    };
    let mut replies = handle.route().get(message).execute();
    let route = replies
        .try_next()
        .await
        .with_context(|| format!("looking up the route to {addr}"))?
        .with_context(|| format!("no route to {addr}"))?;
    let mut ifindex = None;
    let mut via = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Oif(i) => ifindex = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => via = Some(IpAddr::V4(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => via = Some(IpAddr::V6(*a)),
            _ => {}
        }
    }
    let ifindex = ifindex.with_context(|| format!("the route to {addr} has no interface"))?;
    Ok(Route {
        ifindex,
        iface: iface_name(ifindex)?,
        via,
    })
}

/// The name of the interface with index `index`.
pub fn iface_name(index: u32) -> Result<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer has IF_NAMESIZE bytes, as the call requires.
    let name = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    anyhow::ensure!(!name.is_null(), "no interface with index {index}");
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}

/// The index of the interface named `iface`.
pub fn iface_index(iface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: a NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    anyhow::ensure!(index != 0, "no interface named {iface}");
    Ok(index)
}

/// The global (universe scope) addresses of an interface, with their
/// prefix lengths.
pub async fn addresses_of(handle: &Handle, ifindex: u32) -> Result<Vec<(IpAddr, u8)>> {
    let mut stream = handle
        .address()
        .get()
        .set_link_index_filter(ifindex)
        .execute();
    let mut out = Vec::new();
    while let Some(msg) = stream.try_next().await.context("listing addresses")? {
        if msg.header.index != ifindex || msg.header.scope != AddressScope::Universe {
            continue;
        }
        if let Some(ip) = own_address(&msg) {
            out.push((ip, msg.header.prefix_len));
        }
    }
    Ok(out)
}

/// The interface's own address in an address message: IFA_LOCAL (IFA_ADDRESS
/// is the peer's on a point-to-point link); IPv6 has only IFA_ADDRESS.
pub fn own_address(msg: &AddressMessage) -> Option<IpAddr> {
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    local.or(address)
}
