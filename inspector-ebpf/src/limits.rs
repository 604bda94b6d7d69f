//! Connection limits of protected servers: a flow table of the TCP
//! connections to them, the embryonic/established counts it implies
//! (`conns`), and the four limits enforced on new SYNs.
//!
//! A connection is embryonic from the client's SYN until the client's
//! handshake-completing ACK, then established until a FIN (either side:
//! released, kept as closing until the half-closed timeout) or an RST
//! (released and forgotten). Only packets crossing an interface the
//! program is attached to are seen: the client's side must be (SYN, ACK),
//! the server's side should be too (its FIN and RST; else the sweeper's
//! timeouts release those flows).

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use inspector_common::{
    Addr16, ClientKey, DropReason, FLOW_TABLE_SIZE, FlowEntry, FlowKey, MAX_SERVERS, ServerLimits,
    flow_state, v4_mapped,
};

use crate::{
    conns::{self, Kind},
    parse::{Addr, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Tcp},
};

/// The protected servers and their limits, written by the daemon.
#[map]
static SERVERS: HashMap<Addr16, ServerLimits> = HashMap::pinned(MAX_SERVERS, 0);

/// The tracked connections. LRU: when it is full, the least recently used
/// flow is evicted (its counts are corrected by the sweeper).
#[map]
static FLOWS: LruHashMap<FlowKey, FlowEntry> = LruHashMap::pinned(FLOW_TABLE_SIZE, 0);

#[map]
static LIMIT_DROPS: PerCpuArray<u64> = PerCpuArray::pinned(DropReason::COUNT, 0);

const IPPROTO_TCP: u8 = 6;

pub enum Verdict {
    Pass,
    Drop,
}

/// Tracks one TCP packet: client -> protected server, or back.
#[inline(always)]
pub fn track(src: &Addr, dst: &Addr, tcp: &Tcp) -> Verdict {
    let server = addr16(dst);
    // SAFETY: the value is copied out at once; the daemon replaces entries
    // whole, so at worst we read the previous limits.
    if let Some(limits) = unsafe { SERVERS.get(&server) } {
        let key = flow_key(addr16(src), server, tcp.src_port, tcp.dst_port);
        return from_client(&key, *limits, tcp.flags);
    }
    let server = addr16(src);
    if SERVERS.get_ptr(&server).is_some() {
        let key = flow_key(addr16(dst), server, tcp.dst_port, tcp.src_port);
        from_server(&key, tcp.flags);
    }
    Verdict::Pass
}

#[inline(always)]
fn from_client(key: &FlowKey, limits: ServerLimits, flags: u8) -> Verdict {
    let new_syn = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if flags & TCP_RST != 0 {
        forget(key);
        return Verdict::Pass;
    }
    match FLOWS.get_ptr_mut(key) {
        Some(entry) => {
            // SAFETY: a map value, valid during this run; racing writers on
            // other CPUs can only cost a count the sweeper corrects.
            let state = unsafe {
                (*entry).last_seen_ns = now();
                (*entry).state
            };
            if !new_syn {
                if flags & TCP_FIN != 0 {
                    close(key, entry, state);
                } else if flags & TCP_ACK != 0 && state == flow_state::EMBRYONIC {
                    // The client's ACK after our SYN: the handshake is complete.
                    unsafe { (*entry).state = flow_state::ESTABLISHED };
                    let client = client_key(key);
                    conns::add(&client, Kind::Embryonic, -1);
                    conns::add(&client, Kind::Established, 1);
                }
                return Verdict::Pass;
            }
            if state == flow_state::EMBRYONIC {
                return Verdict::Pass; // a retransmitted SYN
            }
            // A new connection on the tuple of an old one: forget the old.
            forget(key);
        }
        // Not ours to count: it began before we ran, or was evicted.
        None if !new_syn => return Verdict::Pass,
        None => {}
    }
    admit(key, &limits)
}

/// A new SYN: dropped if any limit is reached, else tracked as embryonic.
#[inline(always)]
fn admit(key: &FlowKey, limits: &ServerLimits) -> Verdict {
    let client = client_key(key);
    let s = conns::server(&key.server);
    let c = conns::client(&client);
    // Every limit that applies is checked, so the lowest one wins.
    let reason = if reached(limits.max_conns, s.embryonic + s.established) {
        Some(DropReason::MaxConns)
    } else if reached(limits.max_embryonic, s.embryonic) {
        // `on_embryonic_limit = intercept` is not implemented yet: drop too.
        Some(DropReason::MaxEmbryonic)
    } else if reached(limits.per_client_max, c.embryonic + c.established) {
        Some(DropReason::PerClientMax)
    } else if reached(limits.per_client_embryonic_max, c.embryonic) {
        Some(DropReason::PerClientEmbryonicMax)
    } else {
        None
    };
    if let Some(reason) = reason {
        count_drop(reason);
        return Verdict::Drop;
    }
    let entry = FlowEntry {
        last_seen_ns: now(),
        state: flow_state::EMBRYONIC,
        _pad: 0,
    };
    // Fails only under memory pressure: the flow then goes uncounted
    // rather than refused.
    if FLOWS.insert(key, entry, BPF_ANY as u64).is_ok() {
        conns::add(&client, Kind::Embryonic, 1);
    }
    Verdict::Pass
}

#[inline(always)]
fn from_server(key: &FlowKey, flags: u8) {
    if flags & TCP_RST != 0 {
        forget(key);
        return;
    }
    if let Some(entry) = FLOWS.get_ptr_mut(key) {
        // SAFETY: as in `from_client`. The server's retransmitted SYN-ACKs
        // do not keep a half-open flow alive: its embryonic timeout runs
        // from the client's last SYN.
        let state = unsafe {
            if (*entry).state != flow_state::EMBRYONIC {
                (*entry).last_seen_ns = now();
            }
            (*entry).state
        };
        if flags & TCP_FIN != 0 {
            close(key, entry, state);
        }
    }
}

/// A FIN: the connection no longer counts; its entry stays (closing) so
/// the last packets are not mistaken for anything else.
#[inline(always)]
fn close(key: &FlowKey, entry: *mut FlowEntry, state: u32) {
    release(key, state);
    // SAFETY: as in `from_client`.
    unsafe { (*entry).state = flow_state::CLOSING };
}

/// An RST (or a reused tuple): release the flow's count and drop its entry.
#[inline(always)]
fn forget(key: &FlowKey) {
    if let Some(entry) = FLOWS.get_ptr(key) {
        // SAFETY: as in `from_client`.
        release(key, unsafe { (*entry).state });
        let _ = FLOWS.remove(key);
    }
}

#[inline(always)]
fn release(key: &FlowKey, state: u32) {
    let kind = match state {
        flow_state::EMBRYONIC => Kind::Embryonic,
        flow_state::ESTABLISHED => Kind::Established,
        _ => return,
    };
    conns::add(&client_key(key), kind, -1);
}

#[inline(always)]
fn reached(limit: u32, count: u64) -> bool {
    limit != 0 && count >= limit as u64
}

#[inline(always)]
fn count_drop(reason: DropReason) {
    if let Some(count) = LIMIT_DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: this CPU's slot; nothing else writes it during this run.
        unsafe { *count += 1 };
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper without arguments or preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn addr16(addr: &Addr) -> Addr16 {
    match addr {
        Addr::V4(a) => v4_mapped(*a),
        Addr::V6(a) => *a,
    }
}

#[inline(always)]
fn flow_key(client: Addr16, server: Addr16, client_port: u16, server_port: u16) -> FlowKey {
    FlowKey {
        client,
        server,
        client_port,
        server_port,
        protocol: IPPROTO_TCP,
        _pad: [0; 3],
    }
}

#[inline(always)]
fn client_key(key: &FlowKey) -> ClientKey {
    ClientKey {
        server: key.server,
        client: key.client,
    }
}
