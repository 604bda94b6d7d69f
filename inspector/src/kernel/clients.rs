//! Clients the proxy holds at their session limit, in the pinned tries the
//! XDP program checks on each inspected SYN (`inspector-ebpf`'s
//! `clients`): the proxy's admission sets a client's network when it
//! reaches `per-client-sessions` and clears it when it falls below, so the
//! client's next SYNs are dropped before the kernel makes a socket for
//! them. Each entry holds until a time the proxy renews every second and
//! that lies `HEARTBEAT_STALE_NS` ahead: a proxy that stops or hangs leaves
//! no client blocked for longer than it leaves sessions steered to it.
//! How many networks are blocked is written beside them (`CLIENT_BLOCKED`)
//! before one is added or renewed (not at all if that write fails) and
//! after one is removed: while it is 0, XDP skips the lookups, so it is
//! never 0 while a network is blocked. One proxy writes a pin directory's
//! tries (it empties them when it starts and when it stops).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    sync::{Mutex, MutexGuard},
};

use anyhow::{Context, Result};
use aya::maps::{
    Array, MapData,
    lpm_trie::{Key, LpmTrie},
};
use inspector_common::{HEARTBEAT_STALE_NS, maps};
use ipnet::IpNet;
use serde::Serialize;

use super::{bpffs, sweeper::monotonic_ns};
use crate::proxy::admission::{AtLimit, ClientKey};

/// "Never blocked": the value of an exception's entry, which, more
/// specific than a client's network around it, keeps its SYNs passing.
const NEVER: u64 = 0;

struct Tries {
    v4: LpmTrie<MapData, [u8; 4], u64>,
    v6: LpmTrie<MapData, [u8; 16], u64>,
}

impl Tries {
    fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Self {
            v4: bpffs::open_map(pin_dir, maps::CLIENT_BLOCK_V4)?.try_into()?,
            v6: bpffs::open_map(pin_dir, maps::CLIENT_BLOCK_V6)?.try_into()?,
        })
    }

    fn insert(&mut self, net: &IpNet, until: u64) -> Result<()> {
        match net {
            IpNet::V4(n) => self
                .v4
                .insert(&key(n.prefix_len(), n.network().octets()), until, 0),
            IpNet::V6(n) => self
                .v6
                .insert(&key(n.prefix_len(), n.network().octets()), until, 0),
        }
        .with_context(|| format!("blocking {net} in the kernel (is the trie full?)"))
    }

    fn remove(&mut self, net: &IpNet) -> Result<()> {
        let result = match net {
            IpNet::V4(n) => self.v4.remove(&key(n.prefix_len(), n.network().octets())),
            IpNet::V6(n) => self.v6.remove(&key(n.prefix_len(), n.network().octets())),
        };
        match result {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("unblocking {net} in the kernel")),
        }
    }

    /// Every entry, with its value.
    fn entries(&self) -> Result<Vec<(IpNet, u64)>> {
        let mut out = Vec::new();
        for entry in self.v4.iter() {
            let (k, until) = entry?;
            out.push((net(Ipv4Addr::from(k.data()).into(), k.prefix_len())?, until));
        }
        for entry in self.v6.iter() {
            let (k, until) = entry?;
            out.push((net(Ipv6Addr::from(k.data()).into(), k.prefix_len())?, until));
        }
        Ok(out)
    }
}

fn key<const N: usize>(prefix: u8, octets: [u8; N]) -> Key<[u8; N]> {
    Key::new(prefix.into(), octets)
}

fn net(addr: IpAddr, prefix: u32) -> Result<IpNet> {
    let prefix = u8::try_from(prefix).context("corrupt client block entry")?;
    Ok(IpNet::new(addr, prefix)?)
}

fn network(client: ClientKey) -> IpNet {
    IpNet::new(client.network, client.prefix).expect("a client key's prefix fits its address")
}

/// The proxy's writer of the tries. Made when the proxy starts (clearing
/// what an earlier run left), emptied when dropped.
pub struct ClientBlocks {
    inner: Mutex<Inner>,
}

struct Inner {
    tries: Tries,
    /// `CLIENT_BLOCKED`: how many of them XDP is told there are.
    count: Array<MapData, u32>,
    /// The networks blocked now.
    blocked: BTreeSet<IpNet>,
}

impl Inner {
    /// Tells XDP how many networks are blocked (`blocked`'s size).
    fn write_count(&mut self) -> Result<()> {
        let n = u32::try_from(self.blocked.len()).unwrap_or(u32::MAX);
        self.count
            .set(0, n, 0)
            .context("writing how many clients are blocked")
    }
}

impl ClientBlocks {
    /// Opens the tries, empties them and writes the `exceptions` (the
    /// clients the limits do not apply to) as never blocked.
    pub fn open(pin_dir: &Path, exceptions: &[IpNet]) -> Result<Self> {
        let mut tries = Tries::open(pin_dir)?;
        for (net, _) in tries.entries()? {
            tries.remove(&net)?;
        }
        for net in exceptions {
            tries.insert(&net.trunc(), NEVER)?;
        }
        let mut inner = Inner {
            tries,
            count: bpffs::open_map(pin_dir, maps::CLIENT_BLOCKED)?.try_into()?,
            blocked: BTreeSet::new(),
        };
        inner.write_count()?;
        Ok(Self {
            inner: Mutex::new(inner),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn until() -> u64 {
    monotonic_ns() + HEARTBEAT_STALE_NS
}

impl AtLimit for ClientBlocks {
    fn set(&self, client: ClientKey, at_limit: bool) {
        let net = network(client);
        let mut inner = self.inner();
        let result = if at_limit {
            if !inner.blocked.insert(net) {
                return;
            }
            log::debug!("client {client} at its session limit: its SYNs are dropped in XDP");
            // Not blocked in the kernel unless counted (the proxy still
            // refuses the client's sessions itself).
            inner
                .write_count()
                .and_then(|()| inner.tries.insert(&net, until()))
        } else {
            if !inner.blocked.remove(&net) {
                return;
            }
            log::debug!("client {client} below its session limit: its SYNs pass again");
            let removed = inner.tries.remove(&net);
            removed.and(inner.write_count())
        };
        if let Err(e) = result {
            // The proxy still refuses the client's sessions itself.
            log::warn!("{e:#}");
        }
    }

    fn renew(&self) {
        let until = until();
        let inner = &mut *self.inner();
        // Again, for a block `set` could not count; without the count the
        // entries are not renewed and lapse.
        if let Err(e) = inner.write_count() {
            log::warn!("{e:#}");
            return;
        }
        for net in &inner.blocked {
            if let Err(e) = inner.tries.insert(net, until) {
                log::warn!("{e:#}");
            }
        }
    }
}

impl Drop for ClientBlocks {
    fn drop(&mut self) {
        let inner = &mut *self.inner();
        if let Ok(entries) = inner.tries.entries() {
            for (net, _) in entries {
                let _ = inner.tries.remove(&net);
            }
        }
        inner.blocked.clear();
        let _ = inner.write_count();
    }
}

/// A client blocked now, as `inspector stats` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocked {
    pub client: IpNet,
}

/// The clients whose SYNs XDP drops now (entries not expired; exceptions
/// left out), sorted.
pub fn blocked(pin_dir: &Path) -> Result<Vec<Blocked>> {
    let now = monotonic_ns();
    let mut out: Vec<Blocked> = Tries::open(pin_dir)?
        .entries()?
        .into_iter()
        .filter(|&(_, until)| until > now)
        .map(|(client, _)| Blocked { client })
        .collect();
    out.sort_by_key(|b| b.client);
    Ok(out)
}
