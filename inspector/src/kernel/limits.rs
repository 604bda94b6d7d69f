//! The connection limits' maps from userspace: protected servers from the
//! policy, and the current counts and drops for `inspector stats`.

use std::{
    net::{IpAddr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData, PerCpuArray};
use inspector_common::{
    Addr16, ClientKey, ConnCounts, DropReason, InterceptEvent, ON_LIMIT_DROP, ON_LIMIT_INTERCEPT,
    ServerLimits, maps, v4_mapped,
};
use serde::Serialize;

use super::bpffs;
use crate::config::{Membership, OnEmbryonicLimit, Server};

pub fn addr16(addr: IpAddr) -> Addr16 {
    match addr {
        IpAddr::V4(a) => v4_mapped(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The inverse of [`addr16`]: IPv4-mapped addresses come back as IPv4.
pub fn ip_of(addr: &Addr16) -> IpAddr {
    let v6 = Ipv6Addr::from(*addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// What the kernel enforces for `server` on this member: its share of the
/// connection and embryonic limits (`[cluster]`); the per-client limits
/// stay whole (a client's flows hash to different members).
pub fn server_limits(server: &Server, cluster: &Membership) -> ServerLimits {
    ServerLimits {
        max_conns: cluster.share(server.max_conns),
        max_embryonic: cluster.share(server.max_embryonic),
        per_client_max: server.per_client_max,
        per_client_embryonic_max: server.per_client_embryonic_max,
        on_embryonic_limit: match server.on_embryonic_limit {
            OnEmbryonicLimit::Drop => ON_LIMIT_DROP,
            OnEmbryonicLimit::Intercept => ON_LIMIT_INTERCEPT,
        },
        _pad: 0,
    }
}

/// Counts as the kernel keeps them: u64 moved by atomic adds, briefly
/// negative after a sweeper rewrite; shown as zero then.
pub fn count(value: u64) -> u64 {
    (value as i64).max(0) as u64
}

/// Makes the kernel's protected servers exactly the policy's. Counts of
/// servers that stay are kept (a restart does not forget connections);
/// new servers start at zero; removed servers' flows are expired by the
/// sweeper.
pub fn apply_policy(pin_dir: &Path, servers: &[Server]) -> Result<()> {
    apply_member_policy(pin_dir, servers, &Membership::default())
}

/// [`apply_policy`] for member `cluster.member` of a cluster: each limit
/// divided across the members.
pub fn apply_member_policy(pin_dir: &Path, servers: &[Server], cluster: &Membership) -> Result<()> {
    let mut table: HashMap<MapData, Addr16, ServerLimits> =
        bpffs::open_map(pin_dir, maps::SERVERS)?.try_into()?;
    let mut counts: HashMap<MapData, Addr16, ConnCounts> =
        bpffs::open_map(pin_dir, maps::SERVER_CONNS)?.try_into()?;
    let wanted: Vec<Addr16> = servers.iter().map(|s| addr16(s.address)).collect();
    // Counts first, so the kernel never sees a server without its counts.
    for key in &wanted {
        if counts.get(key, 0).is_err() {
            counts.insert(key, ConnCounts::default(), 0)?;
        }
    }
    for (server, key) in servers.iter().zip(&wanted) {
        table
            .insert(key, server_limits(server, cluster), 0)
            .with_context(|| format!("protecting {}", server.address))?;
    }
    retain(&mut table, &wanted)?;
    retain(&mut counts, &wanted)
}

/// Removes the entries of `map` whose key is not in `wanted`.
fn retain<V: aya::Pod>(map: &mut HashMap<MapData, Addr16, V>, wanted: &[Addr16]) -> Result<()> {
    let stale: Vec<Addr16> = map
        .keys()
        .flatten()
        .filter(|k| !wanted.contains(k))
        .collect();
    for key in stale {
        map.remove(&key)?;
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServerView {
    pub address: IpAddr,
    pub embryonic: u64,
    pub established: u64,
    pub max_conns: u32,
    pub max_embryonic: u32,
    pub per_client_max: u32,
    pub per_client_embryonic_max: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientView {
    pub server: IpAddr,
    pub client: IpAddr,
    pub embryonic: u64,
    pub established: u64,
}

/// The limits' live view: per server, the top clients, drops by reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitStats {
    pub servers: Vec<ServerView>,
    /// The `top` clients with the most connections, most first.
    pub clients: Vec<ClientView>,
    /// In [`DropReason::ALL`] order.
    pub drops: [u64; DropReason::COUNT as usize],
    /// In [`InterceptEvent::ALL`] order.
    pub intercepts: [u64; InterceptEvent::COUNT as usize],
}

impl LimitStats {
    pub fn read(pin_dir: &Path, top: usize) -> Result<Self> {
        let table: HashMap<MapData, Addr16, ServerLimits> =
            bpffs::open_map(pin_dir, maps::SERVERS)?.try_into()?;
        let counts: HashMap<MapData, Addr16, ConnCounts> =
            bpffs::open_map(pin_dir, maps::SERVER_CONNS)?.try_into()?;
        let client_counts: HashMap<MapData, ClientKey, ConnCounts> =
            bpffs::open_map(pin_dir, maps::CLIENT_CONNS)?.try_into()?;
        let drop_counts: PerCpuArray<MapData, u64> =
            bpffs::open_map(pin_dir, maps::LIMIT_DROPS)?.try_into()?;
        let intercept_counts: PerCpuArray<MapData, u64> =
            bpffs::open_map(pin_dir, maps::INTERCEPTS)?.try_into()?;

        let mut servers = Vec::new();
        for entry in table.iter() {
            let (key, limits) = entry?;
            let c = counts.get(&key, 0).unwrap_or_default();
            servers.push(ServerView {
                address: ip_of(&key),
                embryonic: count(c.embryonic),
                established: count(c.established),
                max_conns: limits.max_conns,
                max_embryonic: limits.max_embryonic,
                per_client_max: limits.per_client_max,
                per_client_embryonic_max: limits.per_client_embryonic_max,
            });
        }
        servers.sort_by_key(|s| s.address);

        // `top == 0` (the metrics endpoint) skips the walk of the client table.
        let mut clients: Vec<ClientView> = client_counts
            .iter()
            .take(if top == 0 { 0 } else { usize::MAX })
            .flatten()
            .map(|(key, c)| ClientView {
                server: ip_of(&key.server),
                client: ip_of(&key.client),
                embryonic: count(c.embryonic),
                established: count(c.established),
            })
            .filter(|c| c.embryonic + c.established > 0)
            .collect();
        clients.sort_by(|a, b| {
            (b.embryonic + b.established)
                .cmp(&(a.embryonic + a.established))
                .then((a.server, a.client).cmp(&(b.server, b.client)))
        });
        clients.truncate(top);

        let mut drops = [0; DropReason::COUNT as usize];
        for reason in DropReason::ALL {
            // A reason newer than the pinned map (kept from an older build)
            // has never been counted.
            drops[reason as usize] = match drop_counts.get(&(reason as u32), 0) {
                Ok(per_cpu) => per_cpu.iter().sum(),
                Err(aya::maps::MapError::OutOfBounds { .. }) => 0,
                Err(e) => return Err(e.into()),
            };
        }
        let mut intercepts = [0; InterceptEvent::COUNT as usize];
        for event in InterceptEvent::ALL {
            // A map pinned by an older version may have fewer events: zero.
            intercepts[event as usize] = intercept_counts
                .get(&(event as u32), 0)
                .map_or(0, |v| v.iter().sum());
        }
        Ok(Self {
            servers,
            clients,
            drops,
            intercepts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_addr16() {
        for text in ["198.18.1.25", "2001:2:0:1::25", "::1"] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(ip_of(&addr16(ip)), ip);
        }
        assert_eq!(
            addr16("198.18.1.25".parse().unwrap())[10..],
            [0xff, 0xff, 198, 18, 1, 25]
        );
    }

    #[test]
    fn negative_transients_read_as_zero() {
        assert_eq!(count(u64::MAX), 0);
        assert_eq!(count(3), 3);
    }
}
