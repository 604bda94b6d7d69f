//! The flow table's sweeper: expires flows by the policy's timeouts and
//! rewrites the per-server and per-client counts from the flow table, which
//! is the truth. The kernel moves the counts as packets come (so limits act
//! at once); a count it got wrong (an LRU eviction, a race between CPUs, a
//! flow that ended without a FIN or RST the kernel saw) lasts at most one
//! sweep.
//!
//! A half-open flow it gives up on is reset at the server (`reset`), so
//! the server's SYN queue lets it go too: one whose embryonic timeout
//! passed, one the client sent an RST for (which may not have reached the
//! server), and the oldest half-open flows of a server (or client) whose
//! connections exceed `max-conns` (`per-client-max`) because verified
//! clients took their slots (the kernel's `half-open-displaced`). For an
//! established flow the client sent an RST for, it asks the server
//! whether it still has it (`Resetter::probe`), every sweep until the
//! server answers or the idle timeout expires it.
//!
//! An intercepted flow whose server has not answered the SYN the kernel
//! sent it a second after (`RESEND_AFTER`; the SYN or the server's
//! SYN-ACK lost) has its client nudged (`Resetter::nudge_client`): its
//! answer, a duplicate ACK, goes to the server as the SYN again. Else the
//! client, which took the cookie for the server's handshake, would wait
//! for a greeting that never comes. One the embryonic timeout expires is
//! reset at both ends, so the client fails at once and connects again.

use std::{collections::HashMap as StdHashMap, path::Path, time::Duration};

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues};
use inspector_common::{
    Addr16, ClientKey, ConnCounts, FlowEntry, FlowKey, InterceptEvent, ServerLimits, flow_flags,
    flow_state, maps,
};

use super::{bpffs, flow_marks::FlowMarks, reset::Resetter};
use crate::config::FlowTimeouts;

/// How often the daemon sweeps.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// How long an intercepted flow both sides closed is kept (at most the
/// half-closed timeout; the kernel forgets any other at once): for its
/// last ACK and the FINs resent when that ACK is lost (five resends from
/// Linux's 200 ms minimum timeout take 6.2 s), which must still be
/// translated. Kept for the half-closed timeout instead (10 minutes by
/// default), closed flows would fill the flow table at more than about
/// 110 connections a second, and its LRU would then evict live ones.
const CLOSED_LINGER: Duration = Duration::from_secs(10);

/// How long an intercepted flow waits for its server before its client is
/// nudged, and the SYN sent again: Linux's initial retransmission timeout
/// (RFC 6298: 1 s), the time the client's own SYN would have been sent
/// again. At least the kernel program's `RESEND_SYN_AFTER_NS`.
const RESEND_AFTER: Duration = Duration::from_secs(1);

pub struct Sweeper {
    flows: HashMap<MapData, FlowKey, FlowEntry>,
    servers: Array<MapData, ConnCounts>,
    clients: HashMap<MapData, ClientKey, ConnCounts>,
    limits: HashMap<MapData, Addr16, ServerLimits>,
    events: PerCpuArray<MapData, u64>,
    marks: FlowMarks,
    resetter: Option<Resetter>,
    timeouts: FlowTimeouts,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Flows still tracked.
    pub flows: usize,
    /// Flows removed because their timeout passed.
    pub expired: usize,
    /// Half-open flows removed to give their slots back.
    pub displaced: usize,
    /// Half-open flows removed after the client's RST (and reset at the
    /// server by ours).
    pub reset_by_client: usize,
    /// RSTs sent to servers (for expired, displaced or client-reset
    /// half-open flows).
    pub resets: usize,
    /// Servers asked whether they still hold an established flow the
    /// client reset.
    pub probes: usize,
    /// Flow marks cleared that no tracked flow held (the table's evictions).
    pub stale_marks: usize,
    /// Clients of intercepted flows still opening asked for the ACK that
    /// sends their SYN to the server again.
    pub nudges: usize,
    /// RSTs sent to clients of intercepted flows whose server never
    /// answered (expired while opening).
    pub client_resets: usize,
}

impl Sweep {
    /// Whether it removed a flow or sent a packet.
    pub fn did_something(&self) -> bool {
        self.expired
            + self.displaced
            + self.reset_by_client
            + self.resets
            + self.probes
            + self.stale_marks
            + self.nudges
            + self.client_resets
            > 0
    }
}

/// A half-open flow the client's SYN opened at the server.
struct HalfOpen {
    key: FlowKey,
    last_seen_ns: u64,
    client_next: u32,
}

impl Sweeper {
    pub fn open(pin_dir: &Path, timeouts: FlowTimeouts) -> Result<Self> {
        Ok(Self {
            flows: bpffs::open_map(pin_dir, maps::FLOWS)?.try_into()?,
            servers: bpffs::open_map(pin_dir, maps::SERVER_CONNS)?.try_into()?,
            clients: bpffs::open_map(pin_dir, maps::CLIENT_CONNS)?.try_into()?,
            limits: bpffs::open_map(pin_dir, maps::SERVERS)?.try_into()?,
            events: bpffs::open_map(pin_dir, maps::INTERCEPTS)?.try_into()?,
            marks: FlowMarks::open(pin_dir)?,
            resetter: None,
            timeouts,
        })
    }

    /// From now on, half-open flows given up on are reset at the server.
    pub fn reset_with(&mut self, resetter: Resetter) {
        self.resetter = Some(resetter);
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
        let mut half_open = Vec::new();
        let mut resets = Vec::new();
        let mut reset_by_client = Vec::new();
        let mut probes = Vec::new();
        let mut nudges = Vec::new();
        let mut client_resets = Vec::new();
        let mut tracked = Vec::new();
        // Keys first, then one lookup each: entries the kernel removes
        // meanwhile are simply missing.
        let mut complete = true;
        let keys: Vec<FlowKey> = self
            .flows
            .keys()
            .filter_map(|k| k.map_err(|_| complete = false).ok())
            .collect();
        for key in keys {
            let Ok(entry) = self.flows.get(&key, 0) else {
                continue;
            };
            tracked.push(key);
            let age = Duration::from_nanos(now_ns.saturating_sub(entry.last_seen_ns));
            if age > self.timeout(entry.state) {
                if matches!(entry.state, flow_state::EMBRYONIC | flow_state::OPENING) {
                    resets.push((key, entry.client_next));
                }
                if entry.state == flow_state::OPENING {
                    // While opening, `seq_delta` is the cookie, the
                    // client's view of the server's ISN.
                    client_resets.push((key, entry.seq_delta.wrapping_add(1)));
                }
                expired.push(key);
                continue;
            }
            if entry.state == flow_state::OPENING && age >= RESEND_AFTER {
                // While opening, `ts_delta` is our SYN-ACK's timestamp.
                let ts = (entry.flags & flow_flags::TS != 0).then_some(entry.ts_delta);
                nudges.push((key, entry.seq_delta, entry.client_next, ts));
            }
            if entry.client_reset != 0 {
                match entry.state {
                    // Ours at the number the server's SYN-ACK acknowledged
                    // ends it for sure, whatever the client's was.
                    flow_state::EMBRYONIC => {
                        resets.push((key, entry.client_next));
                        reset_by_client.push(key);
                        continue;
                    }
                    // An answering RST releases it (the kernel program).
                    flow_state::ESTABLISHED => probes.push((key, entry)),
                    _ => {}
                }
            }
            if entry.state == flow_state::EMBRYONIC {
                half_open.push(HalfOpen {
                    key,
                    last_seen_ns: entry.last_seen_ns,
                    client_next: entry.client_next,
                });
            }
            let client = ClientKey {
                server: key.server,
                client: key.client,
            };
            for counts in [
                servers.entry(key.server).or_default(),
                clients.entry(client).or_default(),
            ] {
                // As the kernel counts them: an opening flow's client is verified.
                match entry.state {
                    flow_state::EMBRYONIC => counts.embryonic += 1,
                    flow_state::ESTABLISHED | flow_state::OPENING => counts.established += 1,
                    _ => {}
                }
            }
        }
        let displaced = self.displaced(half_open, &mut servers, &mut clients);
        for flow in &displaced {
            resets.push((flow.key, flow.client_next));
            expired.push(flow.key);
        }
        let removed: std::collections::HashSet<FlowKey> =
            expired.iter().chain(&reset_by_client).copied().collect();
        for key in &removed {
            // Gone already (FIN, RST, eviction) is fine: whoever removed
            // it took its mark away.
            if self.flows.remove(key).is_ok() {
                self.marks.removed(key);
            }
        }
        tracked.retain(|k| !removed.contains(k));
        let stale_marks = self.marks.settle(&tracked, complete);
        let reset = self.send_resets(&resets);
        let probed = self.send_probes(&probes);
        let nudged = self.send_each(
            &nudges,
            "a nudge to a client",
            |r, (key, cookie, next, ts)| r.nudge_client(key, *cookie, *next, *ts),
        );
        let client_reset = self.send_each(&client_resets, "an RST to a client", |r, (key, seq)| {
            r.reset_client(key, *seq)
        });
        self.count(InterceptEvent::ClientReset, client_reset);

        // Every protected server gets its count, zero included, at the
        // index its limits name.
        let protected: Vec<(Addr16, u32)> = self
            .limits
            .iter()
            .filter_map(|e| e.ok())
            .map(|(server, limits)| (server, limits.counts))
            .collect();
        // Written only where the kernel's count differs: an add another
        // CPU makes between the read and the write is lost (until the
        // next sweep).
        for (server, index) in protected {
            let counts = servers.get(&server).copied().unwrap_or_default();
            if self.servers.get(&index, 0).ok() != Some(counts) {
                self.servers
                    .set(index, counts, 0)
                    .context("rewriting a server's connection counts")?;
            }
        }
        let known: Vec<ClientKey> = self.clients.keys().filter_map(|k| k.ok()).collect();
        for key in known {
            if !clients.contains_key(&key) {
                let _ = self.clients.remove(&key);
            }
        }
        for (key, counts) in clients {
            if counts != ConnCounts::default() && self.clients.get(&key, 0).ok() != Some(counts) {
                self.clients
                    .insert(key, counts, 0)
                    .context("rewriting a client's connection counts")?;
            }
        }
        Ok(Sweep {
            flows: tracked.len(),
            expired: expired.len() - displaced.len(),
            displaced: displaced.len(),
            reset_by_client: reset_by_client.len(),
            resets: reset,
            probes: probed,
            stale_marks,
            nudges: nudged,
            client_resets: client_reset,
        })
    }

    /// The oldest half-open flows of each server (then client) whose
    /// connections exceed `max-conns` (`per-client-max`), as many as the
    /// excess, taken out of `servers` and `clients`.
    fn displaced(
        &self,
        mut half_open: Vec<HalfOpen>,
        servers: &mut StdHashMap<Addr16, ConnCounts>,
        clients: &mut StdHashMap<ClientKey, ConnCounts>,
    ) -> Vec<HalfOpen> {
        let over = |limit: u32, c: &ConnCounts| {
            limit != 0 && c.embryonic > 0 && c.embryonic + c.established > limit as u64
        };
        let limits: StdHashMap<Addr16, ServerLimits> =
            self.limits.iter().filter_map(|e| e.ok()).collect();
        half_open.sort_by_key(|f| f.last_seen_ns);
        let mut out = Vec::new();
        for flow in half_open {
            let Some(limits) = limits.get(&flow.key.server) else {
                continue;
            };
            let client = ClientKey {
                server: flow.key.server,
                client: flow.key.client,
            };
            let (Some(s), Some(c)) = (servers.get(&flow.key.server), clients.get(&client)) else {
                continue;
            };
            if !over(limits.max_conns, s) && !over(limits.per_client_max, c) {
                continue;
            }
            for counts in [servers.get_mut(&flow.key.server), clients.get_mut(&client)]
                .into_iter()
                .flatten()
            {
                counts.embryonic -= 1;
            }
            out.push(flow);
        }
        out
    }

    /// Resets each flow at its server; counts those sent.
    fn send_resets(&mut self, flows: &[(FlowKey, u32)]) -> usize {
        let sent = self.send_each(flows, "an RST to a server", |r, (key, seq)| {
            r.reset(key, *seq)
        });
        self.count(InterceptEvent::ServerReset, sent);
        sent
    }

    /// Asks each flow's server whether it still has it; counts those sent.
    fn send_probes(&self, flows: &[(FlowKey, FlowEntry)]) -> usize {
        self.send_each(
            flows,
            "asking a server about a client's RST",
            |r, (key, e)| r.probe(key, e.client_next, e.server_next),
        )
    }

    /// Sends one packet per item through the resetter, if there is one;
    /// how many went out.
    fn send_each<T>(
        &self,
        items: &[T],
        what: &str,
        send: impl Fn(&Resetter, &T) -> std::io::Result<()>,
    ) -> usize {
        let Some(resetter) = &self.resetter else {
            return 0;
        };
        let mut sent = 0;
        for item in items {
            match send(resetter, item) {
                Ok(()) => sent += 1,
                Err(e) => log::warn!("sweeper: {what}: {e}"),
            }
        }
        sent
    }

    /// Adds `sent` to `event`, one only userspace counts.
    fn count(&mut self, event: InterceptEvent, sent: usize) {
        if sent > 0
            && let Err(e) = self.add_to(event, sent as u64)
        {
            log::warn!("sweeper: counting {}: {e:#}", event.name());
        }
    }

    fn add_to(&mut self, event: InterceptEvent, sent: u64) -> Result<()> {
        // Only userspace writes this counter: a read-modify-write is safe.
        let index = event as u32;
        let mut values: Vec<u64> = self.events.get(&index, 0)?.iter().copied().collect();
        values[0] += sent;
        self.events.set(index, PerCpuValues::try_from(values)?, 0)?;
        Ok(())
    }

    fn timeout(&self, state: u32) -> Duration {
        match state {
            flow_state::EMBRYONIC | flow_state::OPENING => self.timeouts.embryonic,
            flow_state::ESTABLISHED => self.timeouts.idle,
            flow_state::CLOSED => CLOSED_LINGER.min(self.timeouts.half_closed),
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
