//! The connection limits' maps from userspace: protected servers from the
//! policy, and the current counts and drops for `inspector stats`.

use std::{
    collections::HashMap as StdHashMap,
    net::{IpAddr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context, Result, bail};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use inspector_common::{
    Addr16, ClientKey, ConnCounts, DropReason, InterceptEvent, MAX_SERVERS, ON_LIMIT_DROP,
    ON_LIMIT_INTERCEPT, ServerLimits, maps, v4_mapped,
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
/// stay whole (a client's flows hash to different members). Its counts'
/// index is `apply_member_policy`'s to give.
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
        counts: 0,
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
    let mut counts: Array<MapData, ConnCounts> =
        bpffs::open_map(pin_dir, maps::SERVER_CONNS)?.try_into()?;
    let wanted: Vec<Addr16> = servers.iter().map(|s| addr16(s.address)).collect();
    // Every entry, or none: a server missed here could keep an index a
    // new one is given.
    let current: StdHashMap<Addr16, u32> = table
        .iter()
        .map(|entry| entry.map(|(key, limits)| (key, limits.counts)))
        .collect::<Result<_, _>>()
        .context("reading the protected servers")?;
    let indices = counts_indices(&wanted, &current, MAX_SERVERS)?;
    // Servers no longer protected go first: an index of theirs may be
    // given to a new server, whose counts they must not move. (Their
    // flows are expired by the sweeper.)
    for key in current.keys().filter(|k| !wanted.contains(k)) {
        table.remove(key)?;
    }
    // A new index's counts are zeroed before a server has it, so the
    // kernel never counts a server in what another left there.
    for (key, &index) in &indices {
        if current.get(key) != Some(&index) {
            counts.set(index, ConnCounts::default(), 0)?;
        }
    }
    for (server, key) in servers.iter().zip(&wanted) {
        let limits = ServerLimits {
            counts: indices[key],
            ..server_limits(server, cluster)
        };
        table
            .insert(key, limits, 0)
            .with_context(|| format!("protecting {}", server.address))?;
    }
    Ok(())
}

/// The index of each `wanted` server's counts, below `max`: a server that
/// stays keeps the one it has (`current`), so a reload keeps its counts;
/// the others take the lowest free ones.
fn counts_indices(
    wanted: &[Addr16],
    current: &StdHashMap<Addr16, u32>,
    max: u32,
) -> Result<StdHashMap<Addr16, u32>> {
    let mut indices = StdHashMap::new();
    let mut taken = vec![false; max as usize];
    for key in wanted {
        // Two servers of an older version's table all had index 0: the
        // first keeps it.
        if let Some(&index) = current.get(key)
            && index < max
            && !taken[index as usize]
            && !indices.contains_key(key)
        {
            taken[index as usize] = true;
            indices.insert(*key, index);
        }
    }
    let mut free = (0..max).filter(|&i| !taken[i as usize]);
    for key in wanted {
        if indices.contains_key(key) {
            continue;
        }
        let Some(index) = free.next() else {
            bail!("more than {max} protected servers");
        };
        indices.insert(*key, index);
    }
    Ok(indices)
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
        let counts: Array<MapData, ConnCounts> =
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
            let c = counts.get(&limits.counts, 0).unwrap_or_default();
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

    fn server(n: u8) -> Addr16 {
        v4_mapped([198, 18, 1, n])
    }

    #[test]
    fn servers_that_stay_keep_their_counts_and_new_ones_take_free_indices() {
        let current = StdHashMap::from([(server(1), 2), (server(2), 0), (server(9), 1)]);
        let wanted = [server(2), server(3), server(1), server(4)];
        let got = counts_indices(&wanted, &current, 8).unwrap();
        // 9 left: its index 1 is free again, the lowest.
        assert_eq!(got[&server(1)], 2);
        assert_eq!(got[&server(2)], 0);
        assert_eq!(got[&server(3)], 1);
        assert_eq!(got[&server(4)], 3);
    }

    #[test]
    fn servers_sharing_an_index_or_out_of_range_get_their_own() {
        // An older version's table: every entry at 0; and one past the end.
        let current = StdHashMap::from([(server(1), 0), (server(2), 0), (server(3), 7)]);
        let wanted = [server(1), server(2), server(3)];
        let got = counts_indices(&wanted, &current, 4).unwrap();
        let mut indices: Vec<u32> = wanted.iter().map(|k| got[k]).collect();
        assert_eq!(indices[0], 0);
        indices.sort();
        assert_eq!(indices, [0, 1, 2]);
    }

    #[test]
    fn more_servers_than_indices_is_an_error() {
        let wanted = [server(1), server(2), server(3)];
        let err = counts_indices(&wanted, &StdHashMap::new(), 2).unwrap_err();
        assert!(err.to_string().contains("more than 2"), "{err}");
        // The same address twice is one server.
        let got = counts_indices(&[server(1), server(1)], &StdHashMap::new(), 1).unwrap();
        assert_eq!(got.len(), 1);
    }

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
