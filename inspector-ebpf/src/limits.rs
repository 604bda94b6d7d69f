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
//! timeouts release those flows), and must be for TCP intercept, whose
//! flows are rewritten in both directions (`intercept`).

mod conns;

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use inspector_common::{
    Addr16, ClientKey, DropReason, FLOW_TABLE_SIZE, FlowEntry, FlowKey, InterceptEvent,
    MAX_SERVERS, ON_LIMIT_INTERCEPT, ServerLimits, flow_state,
};

use self::conns::Kind;
use crate::{
    counters::{count_intercept, count_limit_drop},
    intercept,
    packet::Packet,
    parse::{self, Addr, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Tcp},
};

/// The protected servers and their limits, written by the daemon.
#[map]
static SERVERS: HashMap<Addr16, ServerLimits> = HashMap::pinned(MAX_SERVERS, 0);

/// The tracked connections. LRU: when it is full, the least recently used
/// flow is evicted (its counts are corrected by the sweeper).
#[map]
static FLOWS: LruHashMap<FlowKey, FlowEntry> = LruHashMap::pinned(FLOW_TABLE_SIZE, 0);

const IPPROTO_TCP: u8 = 6;

/// What to do with the packet. The TCP intercept rewrites are left to the
/// caller (`intercept::apply`), so that the rewrites' stack frames never
/// stack on this module's (together they would not fit the BPF stack).
pub enum Verdict {
    Pass,
    Drop,
    /// Over an embryonic limit with `intercept`: answer with a SYN cookie.
    AnswerSyn,
    /// An untracked client ACK to a server with `intercept`: if it carries
    /// a valid cookie, open the server side (then [`opening`]).
    VerifyClient,
    /// The server's SYN-ACK of an intercepted flow (already marked
    /// established): answer it with the ACK, announcing this window.
    CompleteServer(u16),
    /// An intercepted flow: add the delta to the field, then pass.
    Shift(usize, u32),
}

/// Tracks one TCP packet: client -> protected server, or back. The limits
/// see every TCP packet to or from a protected server, exempt or not: like
/// the firewall's `static … tcp 50 100`, they protect the server whatever
/// inspects its traffic.
///
/// A subprogram that reads the headers the classifier kept (`parse::tcp`):
/// passing the parsed headers from the caller makes LLVM spill enum fields
/// that are undefined on the non-TCP paths, which the verifier rejects.
#[inline(never)]
pub fn track(ctx: &XdpContext) -> Verdict {
    let Some((src, dst, tcp)) = parse::tcp() else {
        return Verdict::Pass;
    };
    let tcp = &tcp;
    let Some(key) = flow_key(src, dst, tcp.src_port, tcp.dst_port) else {
        return Verdict::Pass;
    };
    // SAFETY: the value is copied out at once; the daemon replaces entries
    // whole, so at worst we read the previous limits.
    if let Some(limits) = unsafe { SERVERS.get(&key.server) } {
        return from_client(tcp, key, *limits);
    }
    let Some(key) = flow_key(dst, src, tcp.dst_port, tcp.src_port) else {
        return Verdict::Pass;
    };
    if SERVERS.get_ptr(&key.server).is_some() {
        return from_server(ctx, tcp, key);
    }
    Verdict::Pass
}

/// Whether `addr` is a protected server (the limits apply to it).
#[inline(always)]
pub fn is_protected(addr: &Addr) -> bool {
    let mut key = [0u8; 16];
    set_addr16(&mut key, addr);
    is_protected16(&key)
}

/// [`is_protected`] for an address in its 16-byte form.
#[inline(always)]
pub fn is_protected16(addr: &Addr16) -> bool {
    SERVERS.get_ptr(addr).is_some()
}

#[inline(always)]
fn from_client(tcp: &Tcp, key: &FlowKey, limits: ServerLimits) -> Verdict {
    let flags = tcp.flags;
    let new_syn = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    match FLOWS.get_ptr_mut(key) {
        Some(entry) => {
            // SAFETY: a map value, valid during this run; racing writers on
            // other CPUs can only cost a count the sweeper corrects.
            let (state, delta) = unsafe {
                (*entry).last_seen_ns = now();
                ((*entry).state, (*entry).seq_delta)
            };
            // The client's acknowledgments, in the server's numbers.
            let pass = if delta != 0 && flags & TCP_ACK != 0 && state != flow_state::OPENING {
                Verdict::Shift(intercept::ACK, delta)
            } else {
                Verdict::Pass
            };
            if state == flow_state::OPENING && flags & TCP_RST == 0 && !new_syn {
                // The server side is still opening: the client's packets
                // wait (TCP resends them); an RST or a new SYN starts over.
                return Verdict::Drop;
            }
            if flags & TCP_RST != 0 {
                forget(key);
                return pass;
            }
            if !new_syn {
                if flags & TCP_FIN != 0 {
                    close(key, entry, state);
                } else if flags & TCP_ACK != 0 && state == flow_state::EMBRYONIC {
                    // The client's ACK after the server's SYN-ACK: the
                    // handshake is complete.
                    unsafe { (*entry).state = flow_state::ESTABLISHED };
                    established(key);
                }
                return pass;
            }
            if state == flow_state::EMBRYONIC {
                return Verdict::Pass; // a retransmitted SYN
            }
            // A new connection on the tuple of an old one: forget the old.
            forget(key);
        }
        None if flags & TCP_RST != 0 => return Verdict::Pass,
        // Not ours to count (it began before we ran, or was evicted), or
        // the ACK of a client we answered with a SYN cookie.
        None if !new_syn => {
            let pure_ack = flags & (TCP_SYN | TCP_RST | TCP_FIN | TCP_ACK) == TCP_ACK;
            if pure_ack && limits.on_embryonic_limit == ON_LIMIT_INTERCEPT {
                return verify_client(key, &limits);
            }
            return Verdict::Pass;
        }
        None => {}
    }
    admit(key, &limits)
}

/// A new SYN: dropped if a limit is reached (or, over an embryonic limit
/// with `intercept`, answered with a SYN cookie), else tracked as embryonic.
#[inline(always)]
fn admit(key: &FlowKey, limits: &ServerLimits) -> Verdict {
    let s = conns::server(&key.server);
    let c = client_key(key).map(conns::client).unwrap_or_default();
    // Every limit that applies is checked, so the lowest one wins.
    let reason = if reached(limits.max_conns, s.embryonic + s.established) {
        Some(DropReason::MaxConns)
    } else if reached(limits.max_embryonic, s.embryonic) {
        Some(DropReason::MaxEmbryonic)
    } else if reached(limits.per_client_max, c.embryonic + c.established) {
        Some(DropReason::PerClientMax)
    } else if reached(limits.per_client_embryonic_max, c.embryonic) {
        Some(DropReason::PerClientEmbryonicMax)
    } else {
        None
    };
    match reason {
        None => {}
        Some(DropReason::MaxEmbryonic | DropReason::PerClientEmbryonicMax)
            if limits.on_embryonic_limit == ON_LIMIT_INTERCEPT =>
        {
            return Verdict::AnswerSyn;
        }
        Some(reason) => {
            count_limit_drop(reason);
            return Verdict::Drop;
        }
    }
    track_new(key, flow_state::EMBRYONIC, 0, 0);
    Verdict::Pass
}

/// An untracked client ACK to a server with `intercept`: if it carries a
/// valid SYN cookie, the client is real and its ACK becomes its SYN to the
/// server. Connection limits still apply; the embryonic ones do not (this
/// is how a verified client gets through a SYN flood).
#[inline(always)]
fn verify_client(key: &FlowKey, limits: &ServerLimits) -> Verdict {
    let s = conns::server(&key.server);
    let c = client_key(key).map(conns::client).unwrap_or_default();
    if reached(limits.max_conns, s.embryonic + s.established)
        || reached(limits.per_client_max, c.embryonic + c.established)
    {
        // No cookie check: an ACK without a flow is let through, as for
        // any flow that predates us (the server answers it with an RST).
        return Verdict::Pass;
    }
    Verdict::VerifyClient
}

/// The client's ACK carried a valid `cookie` and became its SYN to the
/// server: track the flow until the server answers.
#[inline(never)]
pub fn opening(src: &Addr, dst: &Addr, tcp: &Tcp, cookie: u32, window: u16) {
    if let Some(key) = flow_key(src, dst, tcp.src_port, tcp.dst_port) {
        track_new(key, flow_state::OPENING, cookie, window as u32);
    }
    count_intercept(InterceptEvent::ClientVerified);
}

/// A client the engine's listener accepted beyond the embryonic limit (the
/// kernel, not us, answered its SYN): counted from its handshake-completing
/// ACK on, so `max-conns` still holds.
#[inline(never)]
pub fn adopt(src: &Addr, dst: &Addr, tcp: &Tcp) {
    if let Some(key) = flow_key(src, dst, tcp.src_port, tcp.dst_port) {
        track_new(key, flow_state::EMBRYONIC, 0, 0);
        established(key);
    }
}

/// Starts tracking a flow, counted as embryonic.
#[inline(always)]
fn track_new(key: &FlowKey, state: u32, seq_delta: u32, window: u32) {
    let entry = FlowEntry {
        last_seen_ns: now(),
        state,
        seq_delta,
        window,
        _pad: 0,
    };
    // Fails only under memory pressure: the flow then goes uncounted
    // rather than refused.
    if FLOWS.insert(key, entry, BPF_ANY as u64).is_ok() {
        if let Some(client) = client_key(key) {
            conns::add(client, Kind::Embryonic, 1);
        }
    }
}

#[inline(always)]
fn from_server(ctx: &XdpContext, tcp: &Tcp, key: &FlowKey) -> Verdict {
    let flags = tcp.flags;
    let Some(entry) = FLOWS.get_ptr_mut(key) else {
        return Verdict::Pass;
    };
    // SAFETY: as in `from_client`. The server's retransmitted SYN-ACKs do
    // not keep a half-open flow alive: its embryonic timeout runs from the
    // client's last SYN.
    let (state, delta, window) = unsafe {
        if (*entry).state != flow_state::EMBRYONIC {
            (*entry).last_seen_ns = now();
        }
        ((*entry).state, (*entry).seq_delta, (*entry).window)
    };
    if state == flow_state::OPENING {
        if flags & (TCP_SYN | TCP_ACK) != TCP_SYN | TCP_ACK {
            if flags & TCP_RST != 0 {
                forget(key);
            }
            return Verdict::Pass;
        }
        let Some(server_isn) = Packet::new(ctx.data(), ctx.data_end()).read::<[u8; 4]>(tcp.l4 + 4)
        else {
            return Verdict::Drop;
        };
        // SAFETY: as above. While opening, `seq_delta` holds the cookie.
        unsafe {
            (*entry).seq_delta = u32::from_be_bytes(server_isn).wrapping_sub(delta);
            (*entry).state = flow_state::ESTABLISHED;
        }
        established(key);
        count_intercept(InterceptEvent::ServerOpened);
        return Verdict::CompleteServer(window as u16);
    }
    if flags & TCP_RST != 0 {
        forget(key);
    } else if flags & TCP_FIN != 0 {
        close(key, entry, state);
    }
    // The server's sequence numbers, in the cookie's terms.
    if delta != 0 {
        Verdict::Shift(intercept::SEQ, delta.wrapping_neg())
    } else {
        Verdict::Pass
    }
}

/// Embryonic -> established, in the server's and the client's counts.
#[inline(always)]
fn established(key: &FlowKey) {
    if let Some(client) = client_key(key) {
        conns::add(client, Kind::Embryonic, -1);
        conns::add(client, Kind::Established, 1);
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
        flow_state::EMBRYONIC | flow_state::OPENING => Kind::Embryonic,
        flow_state::ESTABLISHED => Kind::Established,
        _ => return,
    };
    if let Some(client) = client_key(key) {
        conns::add(client, kind, -1);
    }
}

#[inline(always)]
fn reached(limit: u32, count: u64) -> bool {
    limit != 0 && count >= limit as u64
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper without arguments or preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The keys of the flow being tracked, in per-CPU memory rather than on
/// the stack (the BPF stack is 512 bytes for the whole program, and these
/// would be copied into every helper that builds one).
#[repr(C)]
struct Keys {
    flow: FlowKey,
    client: ClientKey,
}

#[map]
static KEYS: PerCpuArray<Keys> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn keys() -> Option<&'static mut Keys> {
    // SAFETY: this CPU's slot, used by this program run only.
    KEYS.get_ptr_mut(0).map(|k| unsafe { &mut *k })
}

/// The flow key client -> server, oriented as given.
#[inline(always)]
fn flow_key(
    client: &Addr,
    server: &Addr,
    client_port: u16,
    server_port: u16,
) -> Option<&'static FlowKey> {
    let keys = keys()?;
    let key = &mut keys.flow;
    set_addr16(&mut key.client, client);
    set_addr16(&mut key.server, server);
    key.client_port = client_port;
    key.server_port = server_port;
    key.protocol = IPPROTO_TCP;
    key._pad = [0; 3];
    Some(key)
}

/// The per-client counters' key of `flow`.
#[inline(always)]
fn client_key(flow: &FlowKey) -> Option<&'static ClientKey> {
    let keys = keys()?;
    keys.client.server = flow.server;
    keys.client.client = flow.client;
    Some(&keys.client)
}

#[inline(always)]
fn set_addr16(to: &mut Addr16, addr: &Addr) {
    addr.write16(to);
}
