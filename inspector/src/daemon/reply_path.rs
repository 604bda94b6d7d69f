//! The servers' side: TCP intercept rewrites every packet of an
//! intercepted flow both ways, so the kernel program must also run where
//! the protected server's replies come in. The daemon attaches to the
//! interface the route to each such server uses, as the firewall inspects
//! both of its interfaces; a server it cannot find a route to is refused.

use std::net::IpAddr;

use anyhow::{Context, Result};

use crate::{
    config::{OnEmbryonicLimit, Server},
    kernel::routing,
};

/// Whether the kernel may intercept connections to `server` (it answers
/// SYNs over any of its limits with cookies), so needs its replies.
pub fn needs_replies(server: &Server) -> bool {
    server.on_embryonic_limit == OnEmbryonicLimit::Intercept
        && (server.max_conns
            | server.max_embryonic
            | server.per_client_max
            | server.per_client_embryonic_max)
            != 0
}

/// The interfaces, beyond `named`, that the routes to the servers needing
/// replies leave through, each with the first server that needs it.
pub async fn missing(servers: &[Server], named: &[String]) -> Result<Vec<(String, IpAddr)>> {
    let wanted: Vec<IpAddr> = servers
        .iter()
        .filter(|s| needs_replies(s))
        .map(|s| s.address)
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let netlink = routing::connect()?;
    let mut out: Vec<(String, IpAddr)> = Vec::new();
    for server in wanted {
        let route = routing::route_to(&netlink, server).await.with_context(|| {
            format!(
                "protected server {server} (TCP intercept needs its replies): no interface to attach to"
            )
        })?;
        // A server on this host answers through the loopback, where the
        // replies never cross XDP: nothing to attach.
        if route.iface == "lo" || named.contains(&route.iface) {
            continue;
        }
        if !out.iter().any(|(iface, _)| *iface == route.iface) {
            out.push((route.iface, server));
        }
    }
    Ok(out)
}
