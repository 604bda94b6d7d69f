//! The flow table's sweeper: expires flows by the policy's timeouts and
//! rewrites the per-server and per-client counts from the flow table, which
//! is the truth. The kernel moves the counts as packets come (so limits act
//! at once); a count it got wrong (an LRU eviction, a race between CPUs, a
//! flow that ended without a FIN or RST the kernel saw) lasts at most one
//! sweep.

use std::{collections::HashMap as StdHashMap, path::Path, time::Duration};

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData};
use inspector_common::{Addr16, ClientKey, ConnCounts, FlowEntry, FlowKey, flow_state, maps};

use super::bpffs;
use crate::config::FlowTimeouts;

/// How often the daemon sweeps.
pub const INTERVAL: Duration = Duration::from_secs(1);

pub struct Sweeper {
    flows: HashMap<MapData, FlowKey, FlowEntry>,
    servers: HashMap<MapData, Addr16, ConnCounts>,
    clients: HashMap<MapData, ClientKey, ConnCounts>,
    timeouts: FlowTimeouts,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Flows still tracked.
    pub flows: usize,
    /// Flows removed because their timeout passed.
    pub expired: usize,
}

impl Sweeper {
    pub fn open(pin_dir: &Path, timeouts: FlowTimeouts) -> Result<Self> {
        Ok(Self {
            flows: bpffs::open_map(pin_dir, maps::FLOWS)?.try_into()?,
            servers: bpffs::open_map(pin_dir, maps::SERVER_CONNS)?.try_into()?,
            clients: bpffs::open_map(pin_dir, maps::CLIENT_CONNS)?.try_into()?,
            timeouts,
        })
    }

    /// The policy's timeouts after a reload (from the next sweep on).
    pub fn set_timeouts(&mut self, timeouts: FlowTimeouts) {
        self.timeouts = timeouts;
    }

    /// One pass at `now_ns` (CLOCK_MONOTONIC, the kernel's `bpf_ktime_get_ns`).
    pub fn sweep(&mut self, now_ns: u64) -> Result<Sweep> {
        let mut servers: StdHashMap<Addr16, ConnCounts> = StdHashMap::new();
        let mut clients: StdHashMap<ClientKey, ConnCounts> = StdHashMap::new();
        let mut expired = Vec::new();
        let mut live = 0;
        // Keys first, then one lookup each: entries the kernel removes
        // meanwhile are simply missing.
        let keys: Vec<FlowKey> = self.flows.keys().filter_map(|k| k.ok()).collect();
        for key in keys {
            let Ok(entry) = self.flows.get(&key, 0) else {
                continue;
            };
            let age = Duration::from_nanos(now_ns.saturating_sub(entry.last_seen_ns));
            if age > self.timeout(entry.state) {
                expired.push(key);
                continue;
            }
            live += 1;
            let client = ClientKey {
                server: key.server,
                client: key.client,
            };
            for counts in [
                servers.entry(key.server).or_default(),
                clients.entry(client).or_default(),
            ] {
                match entry.state {
                    flow_state::EMBRYONIC | flow_state::OPENING => counts.embryonic += 1,
                    flow_state::ESTABLISHED => counts.established += 1,
                    _ => {}
                }
            }
        }
        for key in &expired {
            // Gone already (FIN, RST, eviction) is fine.
            let _ = self.flows.remove(key);
        }

        // Every protected server gets its count, zero included; the kernel
        // only counts servers that have an entry, so none is created here.
        let protected: Vec<Addr16> = self.servers.keys().filter_map(|k| k.ok()).collect();
        for server in protected {
            let counts = servers.get(&server).copied().unwrap_or_default();
            self.servers
                .insert(server, counts, 0)
                .context("rewriting a server's connection counts")?;
        }
        let known: Vec<ClientKey> = self.clients.keys().filter_map(|k| k.ok()).collect();
        for key in known {
            if !clients.contains_key(&key) {
                let _ = self.clients.remove(&key);
            }
        }
        for (key, counts) in clients {
            if counts != ConnCounts::default() {
                self.clients
                    .insert(key, counts, 0)
                    .context("rewriting a client's connection counts")?;
            }
        }
        Ok(Sweep {
            flows: live,
            expired: expired.len(),
        })
    }

    fn timeout(&self, state: u32) -> Duration {
        match state {
            flow_state::EMBRYONIC | flow_state::OPENING => self.timeouts.embryonic,
            flow_state::ESTABLISHED => self.timeouts.idle,
            _ => self.timeouts.half_closed,
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
