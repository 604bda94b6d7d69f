//! This host's own addresses, kept current by rtnetlink: the proxy refuses
//! a session to one of them (a client that connected to the gateway itself
//! must not be relayed to it again), and asks this set instead of binding
//! a socket per session.
//!
//! The watcher joins the address groups (`RTMGRP_IPV4_IFADDR`,
//! `RTMGRP_IPV6_IFADDR`) before it dumps the addresses, so a change during
//! the dump is in the queue it applies afterwards, and the set converges.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{Arc, RwLock},
};

use anyhow::{Context, Result};
use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::{
    constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR},
    packet_core::NetlinkPayload,
    packet_route::{RouteNetlinkMessage, address::AddressMessage},
    sys::{AsyncSocket, SocketAddr},
};

use super::routing::own_address;

/// The addresses of this network namespace's interfaces, by interface (an
/// address on two interfaces stays local until it left both).
#[derive(Debug, Default)]
pub struct LocalAddrs(RwLock<BTreeSet<(IpAddr, u32)>>);

impl LocalAddrs {
    /// Whether `ip` is one of this host's addresses (loopback included).
    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_loopback() {
            return true;
        }
        let set = self.0.read().unwrap_or_else(|e| e.into_inner());
        set.range((ip, 0)..=(ip, u32::MAX)).next().is_some()
    }

    fn apply(&self, msg: &AddressMessage, present: bool) {
        let Some(ip) = own_address(msg) else { return };
        let mut set = self.0.write().unwrap_or_else(|e| e.into_inner());
        let entry = (ip, msg.header.index);
        if present {
            set.insert(entry);
        } else {
            set.remove(&entry);
        }
    }
}

/// Dumps the addresses and keeps the set current on the current tokio
/// runtime for as long as it runs.
pub async fn watch() -> Result<Arc<LocalAddrs>> {
    let (mut connection, handle, mut events) =
        rtnetlink::new_connection().context("opening rtnetlink for the local addresses")?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        .context("joining rtnetlink's address groups")?;
    tokio::spawn(connection);
    let local = Arc::new(LocalAddrs::default());
    let mut dump = handle.address().get().execute();
    while let Some(msg) = dump
        .try_next()
        .await
        .context("listing the local addresses")?
    {
        local.apply(&msg, true);
    }
    let set = local.clone();
    tokio::spawn(async move {
        // The handle keeps the connection open.
        let _handle = handle;
        while let Some((msg, _)) = events.next().await {
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a)) => {
                    set.apply(&a, true)
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(a)) => {
                    set.apply(&a, false)
                }
                _ => {}
            }
        }
        log::warn!("rtnetlink's address events ended: the local address set is no longer updated");
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use rtnetlink::packet_route::address::AddressAttribute;

    use super::*;

    fn message(ip: IpAddr, index: u32) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Address(ip));
        m
    }

    #[test]
    fn an_address_is_local_until_it_left_every_interface() {
        let set = LocalAddrs::default();
        let ip = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
        assert!(!set.contains(ip));
        assert!(set.contains(Ipv4Addr::LOCALHOST.into()));
        set.apply(&message(ip, 2), true);
        set.apply(&message(ip, 3), true);
        assert!(set.contains(ip));
        assert!(!set.contains(Ipv4Addr::new(198, 18, 0, 2).into()));
        set.apply(&message(ip, 2), false);
        assert!(set.contains(ip));
        set.apply(&message(ip, 3), false);
        assert!(!set.contains(ip));
    }
}
