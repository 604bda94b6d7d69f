//! Connection limits of protected servers: a flow table of the TCP
//! connections to them, the embryonic/established counts it implies
//! (`conns`), the marks that tell a new SYN whether the table could hold
//! its tuple (`marks`), and the four limits enforced on new SYNs.
//!
//! A connection is embryonic from the client's SYN until the client's
//! handshake-completing ACK, then established until a FIN (either side:
//! released, kept as closing until the half-closed timeout) or an RST
//! (released and forgotten). Only packets crossing an interface the
//! program is attached to are seen: the client's side must be (SYN, ACK),
//! the server's side should be too (its FIN and RST; else the sweeper's
//! timeouts release those flows), and must be for TCP intercept, whose
//! flows are rewritten in both directions (`intercept`).
//!
//! A new SYN, against the server's and the client's counts:
//!
//! | the SYN finds | `drop` | `intercept` |
//! |---|---|---|
//! | every limit below its value | passed, embryonic | passed, embryonic |
//! | an embryonic limit reached | dropped | SYN cookie |
//! | `max-conns`/`per-client-max` reached, but not by established flows alone | dropped | SYN cookie |
//! | `max-conns`/`per-client-max` reached by established flows | dropped | dropped |
//!
//! A client that returns a valid cookie has completed its handshake: it
//! is counted established (its server side opening) whenever fewer than
//! `max-conns` (and `per-client-max`) established flows exist, even if
//! half-open flows fill the slots; it then holds one slot more than the
//! limit allows, until the sweeper resets the oldest of those half-open
//! flows (an RST to the server) and gives the slot back. So a flood of
//! spoofed SYNs never locks out a client that completes the handshake.

mod conns;
mod marks;
mod seq;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, xdp_md},
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use inspector_common::{
    Addr16, ClientKey, DropReason, FLOW_TABLE_SIZE, FlowEntry, FlowKey, InterceptEvent,
    MAX_SERVERS, ON_LIMIT_INTERCEPT, ServerLimits, flow_flags, flow_state,
    tcpopt::{MAX_WSCALE, NO_WSCALE},
};

use self::{
    conns::{Current, Kind},
    seq::Side,
};
use crate::{
    counters::{count_intercept, count_limit_drop},
    packet::Packet,
    parse::{self, Addr, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Tcp},
    steer,
};

/// The protected servers and their limits, written by the daemon.
#[map]
static SERVERS: HashMap<Addr16, ServerLimits> = HashMap::pinned(MAX_SERVERS, 0);

/// The tracked connections. LRU: when it is full, the least recently used
/// flow is evicted (its counts are corrected by the sweeper).
#[map]
static FLOWS: LruHashMap<FlowKey, FlowEntry> = LruHashMap::pinned(FLOW_TABLE_SIZE, 0);

/// Each protected server's window scale, as its last SYN-ACK to an
/// intercepted client announced it: the scale announced to the next
/// intercepted clients, so that the server's windows need no rescaling.
#[map]
static SERVER_WSCALE: HashMap<Addr16, u32> = HashMap::with_max_entries(MAX_SERVERS, 0);

/// The protected servers whose SYN-ACKs the program has seen: their
/// replies cross an interface it is attached to, so what they acknowledge
/// is the truth about what they received (`from_client_checked`). A server
/// on this host, or one whose side is not attached, is never here.
#[map]
static REPLIES_SEEN: HashMap<Addr16, u32> = HashMap::with_max_entries(MAX_SERVERS, 0);

/// The window scale announced before a server's is known (Linux's with its
/// default buffers).
const DEFAULT_WSCALE: u8 = 7;

const IPPROTO_TCP: u8 = 6;

/// How long after opening an intercepted flow's server side a pure ACK
/// from its client makes the SYN to the server go again. Before it, such
/// an ACK is a copy of the one that opened the flow (a duplicated frame);
/// the sweeper nudges the client for one only after a second.
const RESEND_SYN_AFTER_NS: u64 = 500_000_000;

/// What a map update returns for an entry that `BPF_NOEXIST` finds.
const EEXIST: i32 = 17;

/// What to do with the packet. The TCP intercept rewrites are left to the
/// caller (`intercept::apply`), so that the rewrites' stack frames never
/// stack on this module's (together they would not fit the BPF stack);
/// what they need is in this CPU's [`Work`].
#[repr(u32)]
#[derive(Clone, Copy)]
pub enum Verdict {
    Pass = 0,
    Drop = 1,
    /// Over a limit with `intercept`: answer with a SYN cookie, announcing
    /// `Work::entry.wscale_ours`.
    AnswerSyn = 2,
    /// An untracked client ACK to a server with `intercept`: if it carries
    /// a valid cookie, open the server side (then [`opening`]).
    VerifyClient = 3,
    /// The server's SYN-ACK of an intercepted flow being opened (its entry
    /// in `Work::entry`): answer it with the ACK (then [`server_answered`]).
    CompleteServer = 4,
    /// A packet of an intercepted flow (its entry in `Work::entry`),
    /// client to server: translate, then pass.
    ToServer = 5,
    /// The same, server to client.
    ToClient = 6,
    /// A pure ACK of an intercepted flow still opening, long after its
    /// client was verified (its entry in `Work::entry`): the client's
    /// answer to the sweeper's nudge, because the server has not answered
    /// the SYN it was sent (lost, perhaps). It becomes that SYN again.
    ResendSyn = 7,
}

/// Tracks one TCP packet: client -> protected server, or back. The limits
/// see every TCP packet to or from a protected server, exempt or not: like
/// the firewall's `static … tcp 50 100`, they protect the server whatever
/// inspects its traffic.
#[inline(always)]
pub fn track(ctx: &XdpContext, inspected: bool) -> Verdict {
    match inspector_track(ctx.ctx, inspected as u32) {
        1 => Verdict::Drop,
        2 => Verdict::AnswerSyn,
        3 => Verdict::VerifyClient,
        4 => Verdict::CompleteServer,
        5 => Verdict::ToServer,
        6 => Verdict::ToClient,
        7 => Verdict::ResendSyn,
        _ => Verdict::Pass,
    }
}

/// [`track`] as a global function: the verifier checks it once, on its
/// own, instead of once for each state its caller reaches it in. It reads
/// the headers the classifier kept (`parse::tcp`), not parsing again.
/// It returns the verdict's number; what intercept needs is in [`Work`].
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn inspector_track(md: *mut xdp_md, inspected: u32) -> u32 {
    let ctx = XdpContext::new(md);
    let packet = Packet::of(&ctx);
    let Some((src, dst, tcp)) = parse::tcp() else {
        return Verdict::Pass as u32;
    };
    let tcp = &tcp;
    let Some(w) = work() else {
        return Verdict::Pass as u32;
    };
    w.tcp = TcpAt {
        l3: tcp.l3 as u32,
        l4: tcp.l4 as u32,
        flags: tcp.flags as u32,
        _pad: 0,
    };
    w.inspected = inspected;
    let key = flow_key(w, src, dst, tcp.src_port, tcp.dst_port);
    // SAFETY: the value is copied out at once; the daemon replaces entries
    // whole, so at worst we read the previous limits.
    if let Some(limits) = unsafe { SERVERS.get(&key.server) } {
        let limits = *limits;
        w.server_counts = limits.counts;
        return from_client(&packet, tcp, w, limits) as u32;
    }
    let key = flow_key(w, dst, src, tcp.dst_port, tcp.src_port);
    // SAFETY: as above.
    if let Some(limits) = unsafe { SERVERS.get(&key.server) } {
        w.server_counts = limits.counts;
        return from_server(&packet, tcp, w) as u32;
    }
    Verdict::Pass as u32
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
fn from_client(packet: &Packet, tcp: &Tcp, w: &mut Work, limits: ServerLimits) -> Verdict {
    let key = &w.flow;
    let flags = tcp.flags;
    let new_syn = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    // A new SYN whose tuple the marks count no flow for is untracked: no
    // lookup.
    let tracked = if new_syn && !marks::marked(key) {
        None
    } else {
        FLOWS.get_ptr_mut(key)
    };
    match tracked {
        Some(entry) => {
            // SAFETY: a map value, valid during this run; racing writers on
            // other CPUs can only cost a count the sweeper corrects.
            let state = unsafe { (*entry).state };
            if state == flow_state::OPENING && !new_syn {
                // The server side is still opening: the client's packets
                // wait (TCP resends them), and do not keep the flow alive:
                // it has the embryonic timeout from its opening on, which
                // is also when the sweeper nudges the client. A new SYN
                // starts over (below).
                // SAFETY: as above.
                let (opened_ns, client_next) =
                    unsafe { ((*entry).last_seen_ns, (*entry).client_next) };
                if flags & TCP_RST != 0 {
                    // The client gave up (or its socket is gone and it
                    // answered a nudge): the flow ends, at the client's
                    // exact next number only, which a blind RST cannot
                    // guess. The RST goes on: at that number it also ends
                    // the server's half-open connection, if it has one.
                    if seq(packet, tcp) == Some(client_next) {
                        forget(w);
                        return Verdict::Pass;
                    }
                    return Verdict::Drop;
                }
                if flags & (TCP_SYN | TCP_RST | TCP_FIN | TCP_ACK) == TCP_ACK
                    && now().saturating_sub(opened_ns) >= RESEND_SYN_AFTER_NS
                {
                    // SAFETY: as above.
                    w.entry = unsafe { *entry };
                    return Verdict::ResendSyn;
                }
                return Verdict::Drop;
            }
            // SAFETY: as above.
            unsafe { (*entry).last_seen_ns = now() };
            // The client's packets, in the server's numbers.
            let pass = if unsafe { (*entry).flags } & flow_flags::INTERCEPTED != 0
                && state != flow_state::OPENING
            {
                // SAFETY: as above.
                w.entry = unsafe { *entry };
                Verdict::ToServer
            } else {
                Verdict::Pass
            };
            if flags & TCP_RST != 0 || flags & TCP_SYN == 0 {
                // SAFETY: as above.
                let e = unsafe { &mut *entry };
                if e.local == 0 && replies_seen(e, &w.flow.server) {
                    from_client_checked(packet, tcp, w, e, state);
                } else {
                    // An RST or a FIN releases the flow only at the
                    // client's next sequence number, as the server reads
                    // them (`seq`): a half-open flow's is what the
                    // server's SYN-ACK acknowledged, so a blind, spoofed
                    // RST frees no slot.
                    end_or_continue(packet, tcp, w, e, Side::Client, state);
                    if flags & (TCP_RST | TCP_FIN) == 0
                        && flags & TCP_ACK != 0
                        && state == flow_state::EMBRYONIC
                    {
                        // The client's ACK after the SYN-ACK: the
                        // handshake is complete.
                        e.state = flow_state::ESTABLISHED;
                        established(w);
                    }
                }
                return pass;
            }
            if !new_syn {
                return pass;
            }
            if state == flow_state::EMBRYONIC {
                // A retransmitted SYN (perhaps with a new ISN).
                if let Some(isn) = seq(packet, tcp) {
                    // SAFETY: as above.
                    seq::set(unsafe { &mut *entry }, Side::Client, isn.wrapping_add(1));
                }
                return Verdict::Pass;
            }
            if state == flow_state::ESTABLISHED {
                // A SYN on an established connection: the server answers
                // it with a challenge ACK and keeps the connection (RFC
                // 5961 section 4), so it stays counted. A client that
                // really starts over answers that ACK with an RST at our
                // next number, which releases it; its next SYN is new.
                return pass;
            }
            // A new connection on the tuple of a closing one (or one the
            // server has not answered yet): forget the old.
            forget(w);
        }
        None if flags & TCP_RST != 0 => return Verdict::Pass,
        // Not ours to count (it began before we ran, or was evicted), or
        // the ACK of a client we answered with a SYN cookie.
        None if !new_syn => {
            let pure_ack = flags & (TCP_SYN | TCP_RST | TCP_FIN | TCP_ACK) == TCP_ACK;
            if pure_ack && limits.on_embryonic_limit == ON_LIMIT_INTERCEPT {
                // For `adopt`.
                w.entry.client_next = seq(packet, tcp).unwrap_or(0);
                return verify_client(w, &limits);
            }
            return Verdict::Pass;
        }
        None => {}
    }
    admit(packet, tcp, w, &limits)
}

/// A new SYN: passed and tracked as embryonic if every limit has room;
/// else, with `intercept`, answered with a SYN cookie unless established
/// flows alone fill `max-conns` or `per-client-max`; else dropped.
#[inline(always)]
fn admit(packet: &Packet, tcp: &Tcp, w: &mut Work, limits: &ServerLimits) -> Verdict {
    let (s, c) = counts(w, limits);
    let mut reason = match first_full(limits, &s, &c) {
        Some(reason) => reason,
        None => match take_slot(packet, tcp, w, limits) {
            None => return Verdict::Pass,
            Some(reason) => reason,
        },
    };
    if limits.on_embryonic_limit == ON_LIMIT_INTERCEPT {
        match established_full(limits, &s, &c) {
            None => {
                w.entry.wscale_ours = server_wscale(&w.flow.server);
                return Verdict::AnswerSyn;
            }
            // A verified client would find no slot either.
            Some(full) => reason = full,
        }
    }
    count_limit_drop(reason);
    Verdict::Drop
}

/// The first limit the counts reach (every limit that applies is checked,
/// so the lowest one wins).
#[inline(always)]
fn first_full(limits: &ServerLimits, s: &Current, c: &Current) -> Option<DropReason> {
    if reached(limits.max_conns, s.embryonic + s.established) {
        Some(DropReason::MaxConns)
    } else if reached(limits.max_embryonic, s.embryonic) {
        Some(DropReason::MaxEmbryonic)
    } else if reached(limits.per_client_max, c.embryonic + c.established) {
        Some(DropReason::PerClientMax)
    } else if reached(limits.per_client_embryonic_max, c.embryonic) {
        Some(DropReason::PerClientEmbryonicMax)
    } else {
        None
    }
}

/// Tracks a SYN that found room, and checks the limits again against the
/// counts its atomic add found: of two CPUs that both read the last slot
/// free, the one whose add came second finds it taken and gives it back,
/// so no limit is passed and the slot is not lost. Returns the limit it
/// gave the slot back for.
#[inline(always)]
fn take_slot(
    packet: &Packet,
    tcp: &Tcp,
    w: &mut Work,
    limits: &ServerLimits,
) -> Option<DropReason> {
    let isn = seq(packet, tcp).unwrap_or(0);
    // Not tracked: a copy of this SYN tracked on another CPU meanwhile (it
    // holds the slot), or a table that refused it. Passed, not counted.
    let kind = Kind::Embryonic;
    let added = track_new(w, flow_state::EMBRYONIC, kind, isn.wrapping_add(1)).ok()?;
    let (s, c) = counts_before(w, limits, kind, added);
    let reason = first_full(limits, &s, &c)?;
    forget(w);
    Some(reason)
}

/// Which connection limit established flows alone fill, if any: then
/// there is no slot even for a client that completes the handshake.
#[inline(always)]
fn established_full(limits: &ServerLimits, s: &Current, c: &Current) -> Option<DropReason> {
    if reached(limits.max_conns, s.established) {
        Some(DropReason::MaxConns)
    } else if reached(limits.per_client_max, c.established) {
        Some(DropReason::PerClientMax)
    } else {
        None
    }
}

/// An untracked client ACK to a server with `intercept`: if it carries a
/// valid SYN cookie, the client is real and its ACK becomes its SYN to the
/// server. The connection limits count established flows only here: half-
/// open flows give their slots to verified clients (the sweeper resets
/// them), and the embryonic limits do not apply (this is how a verified
/// client gets through a SYN flood).
#[inline(always)]
fn verify_client(w: &mut Work, limits: &ServerLimits) -> Verdict {
    let (s, c) = counts(w, limits);
    if established_full(limits, &s, &c).is_some() {
        // No cookie check: an ACK without a flow is let through, as for
        // any flow that predates us (the server answers it with an RST).
        return Verdict::Pass;
    }
    w.displaces = (reached(limits.max_conns, s.embryonic + s.established)
        || reached(limits.per_client_max, c.embryonic + c.established)) as u32;
    w.limits = *limits;
    Verdict::VerifyClient
}

/// What [`opening`] did with a verified client's ACK.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Tracked, counted established: rewrite the ACK into the SYN.
    Taken,
    /// No slot or no table entry for it: the ACK goes on unchanged.
    Refused,
    /// A copy of an ACK whose flow another CPU is opening (a duplicated
    /// frame): dropped, so the server sees one SYN and no stray ACK, and
    /// the flow is counted once.
    Copy,
}

/// What the client's validated ACK said, for its flow entry.
pub struct Opened {
    pub cookie: u32,
    pub client_next: u32,
    pub window: u16,
    /// Our SYN-ACK's timestamp, echoed by the client (with `flow_flags::TS`).
    pub our_ts: u32,
    pub flags: u8,
    pub wscale_ours: u8,
    pub wscale_client: u8,
}

/// The client's ACK carries a valid cookie: track the flow, counted
/// established, until the server answers; the caller then rewrites the
/// ACK into the client's SYN to the server ([`opened`] once it did).
/// Refused if the client lost the last established slot to another CPU's
/// verified client: as in `take_slot`, the flow is counted in and the
/// slot given back if the counts its add found are full; the ACK then
/// goes on unchanged, as when
/// established flows fill the limit (`verify_client`), and the server
/// resets it. Refused too if the flow cannot be tracked (the table refused
/// it): its packets could not be translated. A copy of the same ACK seen
/// on another CPU first finds the flow in the table: [`Opening::Copy`].
#[inline(never)]
pub fn opening(o: &Opened) -> Opening {
    let Some(w) = work() else {
        return Opening::Refused;
    };
    let entry = FlowEntry {
        last_seen_ns: now(),
        state: flow_state::OPENING,
        seq_delta: o.cookie,
        ts_delta: o.our_ts,
        client_next: o.client_next,
        window: o.window,
        flags: o.flags | flow_flags::INTERCEPTED,
        client_reset: 0,
        wscale_ours: o.wscale_ours,
        wscale_server: 0,
        wscale_client: o.wscale_client,
        fins: 0,
        // The server's, from its SYN-ACK (`server_answered`).
        server_next: 0,
        seq_known: inspector_common::seq_known::CLIENT,
        local: 0,
        _pad3: [0; 2],
    };
    let kind = Kind::Established;
    let added = match insert(w, &entry, kind) {
        Err(Untracked::Exists) => return Opening::Copy,
        Err(Untracked::Refused) => return Opening::Refused,
        Ok(added) => added,
    };
    let (s, c) = counts_before(w, &w.limits, kind, added);
    if established_full(&w.limits, &s, &c).is_some() {
        forget(w);
        return Opening::Refused;
    }
    Opening::Taken
}

/// The [`opening`] flow's ACK went to the server as the client's SYN.
#[inline(never)]
pub fn opened() {
    count_intercept(InterceptEvent::ClientVerified);
    if work().is_some_and(|w| w.displaces != 0) {
        count_intercept(InterceptEvent::HalfOpenDisplaced);
    }
}

/// The rewrite of an [`opening`] flow's ACK failed: the ACK goes on as it
/// was, and the flow is not tracked.
#[inline(never)]
pub fn not_opened() {
    if let Some(w) = work() {
        forget(w);
    }
}

/// What the server's SYN-ACK to an intercepted client said.
pub struct Answered {
    pub isn: u32,
    /// The server's timestamp, if `has_ts`.
    pub ts: u32,
    pub has_ts: bool,
    /// The server's window scale, or `tcpopt::NO_WSCALE`.
    pub wscale: u8,
    /// Its checksum was pending offload.
    pub partial: bool,
}

/// The server's SYN-ACK of a flow being opened, answered with the ACK
/// that completes its handshake: from now on the flow is translated both
/// ways.
#[inline(never)]
pub fn server_answered(a: &Answered) {
    let Some(w) = work() else {
        return;
    };
    let Some(entry) = FLOWS.get_ptr_mut(&w.flow) else {
        return;
    };
    // SAFETY: as in `from_client`. While opening, `seq_delta` holds the
    // cookie and `ts_delta` our timestamp.
    unsafe {
        let e = &mut *entry;
        e.seq_delta = a.isn.wrapping_sub(e.seq_delta);
        seq::set(e, Side::Server, a.isn.wrapping_add(1));
        if a.has_ts && e.flags & flow_flags::TS != 0 {
            e.ts_delta = a.ts.wrapping_sub(e.ts_delta);
        } else {
            e.flags &= !flow_flags::TS;
            e.ts_delta = 0;
        }
        if e.wscale_ours != NO_WSCALE {
            // The client was told our scale. A server that answered with
            // none scales neither its windows nor, reading them, the
            // client's.
            let server = if a.wscale == NO_WSCALE {
                e.flags |= flow_flags::RESCALE_TO_SERVER;
                0
            } else {
                let _ = SERVER_WSCALE.insert(&w.flow.server, a.wscale as u32, BPF_ANY as u64);
                a.wscale
            };
            e.wscale_server = server;
            if server != e.wscale_ours {
                e.flags |= flow_flags::RESCALE_TO_CLIENT;
            }
        }
        if a.partial {
            e.flags |= flow_flags::SERVER_PARTIAL;
        }
        e.last_seen_ns = now();
        e.state = flow_state::ESTABLISHED;
    }
    count_intercept(InterceptEvent::ServerOpened);
}

/// A client the engine's listener accepted beyond a limit (the kernel,
/// not us, answered its SYN): counted established from its
/// handshake-completing ACK on, so `max-conns` still holds.
#[inline(never)]
pub fn adopt() {
    let Some(w) = work() else {
        return;
    };
    // The client's handshake-completing ACK starts at its next sequence
    // number (`verify_client` kept it); the server's side is the local
    // listener, whose packets we do not see.
    let entry = FlowEntry {
        last_seen_ns: now(),
        state: flow_state::ESTABLISHED,
        client_next: w.entry.client_next,
        seq_known: inspector_common::seq_known::CLIENT,
        local: 1,
        ..FlowEntry::default()
    };
    // A copy of this ACK adopted on another CPU meanwhile: counted there.
    if insert(w, &entry, Kind::Established).is_err() {
        return;
    }
    if w.displaces != 0 {
        count_intercept(InterceptEvent::HalfOpenDisplaced);
    }
}

/// Starts tracking a flow that is not intercepted.
#[inline(always)]
fn track_new(w: &Work, state: u32, kind: Kind, client_next: u32) -> Result<(u64, u64), Untracked> {
    let entry = FlowEntry {
        last_seen_ns: now(),
        state,
        client_next,
        seq_known: inspector_common::seq_known::CLIENT,
        // Asked once per flow, not per packet.
        local: steer::engine_takes(w.inspected != 0) as u8,
        ..FlowEntry::default()
    };
    insert(w, &entry, kind)
}

/// Why [`insert`] did not track a flow.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Untracked {
    /// The flow is in the table already: every caller looked it up first
    /// and found none, so another CPU tracked a copy of the same packet
    /// meanwhile (a duplicated frame) and counted it.
    Exists,
    /// The table refused it (memory pressure): the flow goes uncounted
    /// rather than refused.
    Refused,
}

/// Tracks a flow the table does not hold, counted as `kind`. `NOEXIST`,
/// so that two copies of one packet on two CPUs count the flow once.
/// Returns the server's and the client's counts of `kind` as its add
/// found them.
#[inline(always)]
fn insert(w: &Work, entry: &FlowEntry, kind: Kind) -> Result<(u64, u64), Untracked> {
    // Marked first: once the entry is there, its SYNs are looked up.
    marks::inserting(&w.flow);
    match FLOWS.insert(&w.flow, entry, BPF_NOEXIST as u64) {
        Ok(()) => Ok(conns::add(w.server_counts, &w.client, kind, 1)),
        Err(e) => {
            marks::gone(&w.flow);
            Err(if e == -EEXIST {
                Untracked::Exists
            } else {
                Untracked::Refused
            })
        }
    }
}

#[inline(always)]
fn from_server(packet: &Packet, tcp: &Tcp, w: &mut Work) -> Verdict {
    let flags = tcp.flags;
    let Some(entry) = FLOWS.get_ptr_mut(&w.flow) else {
        return Verdict::Pass;
    };
    // SAFETY: as in `from_client`. The server's retransmitted SYN-ACKs do
    // not keep a half-open flow alive: its embryonic timeout runs from the
    // client's last SYN. Nor do its packets keep an intercepted flow
    // still opening alive: it has the embryonic timeout from its opening
    // on (`server_answered` starts the established flow's clock).
    let state = unsafe {
        let state = (*entry).state;
        if state != flow_state::EMBRYONIC && state != flow_state::OPENING {
            (*entry).last_seen_ns = now();
        }
        state
    };
    let intercepted = unsafe { (*entry).flags } & flow_flags::INTERCEPTED != 0;
    if intercepted {
        w.entry = unsafe { *entry };
    }
    if flags & TCP_RST != 0 && unsafe { (*entry).client_reset } != 0 {
        // The server has no connection left where the client reset one
        // (its answer to the sweeper's question, or its own reset): the
        // flow is gone. The client's side was gone already.
        forget(w);
        return Verdict::Drop;
    }
    if flags & TCP_ACK != 0
        && flags & TCP_RST == 0
        && state != flow_state::OPENING
        && let Some(a) = ack(packet, tcp)
    {
        // What the server took from the client: the only client sequence
        // number the kernel trusts once the server's side is seen.
        // SAFETY: as in `from_client`.
        seq::acknowledged(unsafe { &mut *entry }, a);
    }
    if state == flow_state::OPENING {
        if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
            return Verdict::CompleteServer;
        }
        if flags & TCP_RST == 0 {
            // Not an answer to the SYN (a connection the server still
            // holds on this tuple acknowledging it, say), and not in the
            // client's numbers yet: dropped.
            return Verdict::Drop;
        }
        // The server refused the connection: so do we, to the client, with
        // the sequence number it expects from us (the cookie + 1).
        forget(w);
        let Some(seq) = seq(packet, tcp) else {
            return Verdict::Drop;
        };
        w.entry.seq_delta = seq.wrapping_sub(w.entry.seq_delta.wrapping_add(1));
        w.entry.flags = flow_flags::INTERCEPTED;
        return Verdict::ToClient;
    }
    if flags & TCP_SYN != 0 && flags & TCP_RST == 0 {
        // The server's SYN-ACK (again, after a lost ACK, perhaps): where
        // its sequence numbers start. Only while half-open, so that no
        // spoofed SYN-ACK moves an established flow's.
        if state == flow_state::EMBRYONIC
            && let Some(isn) = seq(packet, tcp)
        {
            // SAFETY: as in `from_client`.
            seq::set(unsafe { &mut *entry }, Side::Server, isn.wrapping_add(1));
            if REPLIES_SEEN.get_ptr(&w.flow.server).is_none() {
                let _ = REPLIES_SEEN.insert(&w.flow.server, &1, BPF_ANY as u64);
            }
        }
    } else if flags & TCP_RST != 0 && state == flow_state::EMBRYONIC {
        // SAFETY: as in `from_client`.
        if refuses(packet, tcp, unsafe { &*entry }) {
            forget(w);
        }
    } else {
        // SAFETY: as in `from_client`.
        end_or_continue(packet, tcp, w, unsafe { &mut *entry }, Side::Server, state);
    }
    if intercepted {
        Verdict::ToClient
    } else {
        Verdict::Pass
    }
}

/// A client's segment, not a SYN, of a flow forwarded to a server whose
/// replies we see (`REPLIES_SEEN`; the daemon attaches to an intercepted
/// server's route itself): the server's answers tell what it took (`seq`),
/// and the client's own segments move nothing they could lie about. A bad
/// checksum, a TTL that ends at the gateway or a segment past the server's
/// window reach the kernel here but never the server.
///
/// - An RST frees nothing at once: the flow is marked `client_reset`, and
///   the sweeper resets a half-open one at the server itself, or asks the
///   server whether it still has an established one (an answering RST
///   releases it: `from_server`).
/// - A FIN frees nothing: the server's own FIN, once it read the client's,
///   releases the flow. One right after all the server took is noted, so
///   that a flow both sides closed is kept only briefly.
/// - The handshake-completing ACK counts only when it acknowledges the
///   server's SYN-ACK (a spoofed source never saw it), so a flood of SYNs
///   and blind ACKs stays embryonic.
#[inline(always)]
fn from_client_checked(packet: &Packet, tcp: &Tcp, w: &Work, e: &mut FlowEntry, state: u32) {
    let flags = tcp.flags;
    if flags & TCP_RST != 0 {
        // A half-open flow's RST only at the client's ISN + 1: a blind one
        // elsewhere must not get a real client's handshake reset.
        let plausible = state != flow_state::EMBRYONIC
            || seq(packet, tcp).is_some_and(|at| seq::at_next(e, Side::Client, at));
        if plausible && matches!(state, flow_state::EMBRYONIC | flow_state::ESTABLISHED) {
            e.client_reset = 1;
        }
        return;
    }
    if flags & (TCP_FIN | TCP_ACK) == TCP_ACK
        && state == flow_state::EMBRYONIC
        && ack(packet, tcp).is_some_and(|a| seq::at_next(e, Side::Server, a))
    {
        e.state = flow_state::ESTABLISHED;
        established(w);
    }
    if flags & TCP_FIN != 0 && seq(packet, tcp).is_some_and(|at| seq::at_next(e, Side::Client, at))
    {
        // Right after all the server took: it only shortens how long the
        // flow is kept once the server's own FIN (which releases it) is
        // in too.
        e.fins |= Side::Client.bit();
        if state == flow_state::CLOSING {
            closing_or_closed(w, e);
        }
    }
}

/// Whether the server's replies are seen: this flow's SYN-ACK was (most
/// packets ask only that), or another flow's to the same server.
#[inline(always)]
fn replies_seen(e: &FlowEntry, server: &Addr16) -> bool {
    seq::next(e, Side::Server).is_some() || REPLIES_SEEN.get_ptr(server).is_some()
}

/// Whether the server's RST to a half-open flow ends it at the server: an
/// answer to the SYN (RST+ACK of the client's ISN + 1, before any SYN-ACK),
/// or one at the server's own next number. The RST Linux sends for an ACK
/// that does not acknowledge its SYN-ACK (a spoofed source's blind ACK)
/// leaves its half-open connection in place (`tcp_check_req` returns the
/// listener, which resets the segment, not the request), and starts at the
/// number that ACK acknowledged, which only a client that saw the SYN-ACK
/// gets right.
#[inline(always)]
fn refuses(packet: &Packet, tcp: &Tcp, e: &FlowEntry) -> bool {
    match seq::next(e, Side::Server) {
        Some(next) => seq(packet, tcp) == Some(next),
        None => tcp.flags & TCP_ACK != 0 && ack(packet, tcp) == seq::next(e, Side::Client),
    }
}

/// A segment of a tracked flow from `side`, not a SYN: an RST at the
/// side's next sequence number forgets the flow and a FIN there closes it;
/// anywhere else they change nothing here and are passed on, for the peer
/// to judge (`seq`). Any other segment moves the side's next number.
#[inline(always)]
fn end_or_continue(
    packet: &Packet,
    tcp: &Tcp,
    w: &Work,
    e: &mut FlowEntry,
    side: Side,
    state: u32,
) {
    let Some(at) = seq(packet, tcp) else {
        return;
    };
    let exact = seq::at_next(e, side, at);
    if tcp.flags & TCP_RST != 0 {
        if exact {
            forget(w);
        }
        return;
    }
    if let Some(end) = seq::end(packet, tcp, at) {
        seq::advance(e, side, at, end);
    }
    if tcp.flags & TCP_FIN != 0 && exact {
        close(w, e, state, side);
    }
}

/// Embryonic -> established, in the server's and the client's counts.
#[inline(always)]
fn established(w: &Work) {
    conns::add(w.server_counts, &w.client, Kind::Embryonic, -1);
    conns::add(w.server_counts, &w.client, Kind::Established, 1);
}

/// A FIN from `side`: the connection no longer counts; its entry stays
/// (closing, or closed once both sides' FINs are in) so the last packets
/// are not mistaken for anything else.
#[inline(always)]
fn close(w: &Work, entry: &mut FlowEntry, state: u32, side: Side) {
    release(w, state);
    entry.fins |= if entry.local != 0 {
        // A session the engine's listener answers: its FIN is never seen
        // here (it leaves through egress), and it closes when its client
        // has.
        Side::Client.bit() | Side::Server.bit()
    } else {
        side.bit()
    };
    closing_or_closed(w, entry);
}

/// Closing, or, once both sides' FINs are in, closed: an intercepted flow
/// is then kept a little longer (the sweeper's `CLOSED_LINGER`), for its
/// last packets to be translated; any other is forgotten at once, so that
/// closed flows never crowd live ones out of the table (its last packets
/// pass untracked, as do those of any flow that predates us).
#[inline(always)]
fn closing_or_closed(w: &Work, entry: &mut FlowEntry) {
    if entry.fins != Side::Client.bit() | Side::Server.bit() {
        entry.state = flow_state::CLOSING;
        return;
    }
    entry.state = flow_state::CLOSED;
    if entry.flags & flow_flags::INTERCEPTED == 0 {
        // Its count went with the first FIN.
        remove(w);
    }
}

/// An RST (or a reused tuple): release the flow's count and drop its entry.
#[inline(always)]
fn forget(w: &Work) {
    if let Some(entry) = FLOWS.get_ptr(&w.flow) {
        // SAFETY: as in `from_client`.
        let state = unsafe { (*entry).state };
        // Released by the CPU whose delete took it: two that forget the
        // same flow at once release it once.
        if remove(w) {
            release(w, state);
        }
    }
}

/// Drops the flow's entry and its mark; whether this CPU's delete took it.
#[inline(always)]
fn remove(w: &Work) -> bool {
    let removed = FLOWS.remove(&w.flow).is_ok();
    if removed {
        marks::gone(&w.flow);
    }
    removed
}

#[inline(always)]
fn release(w: &Work, state: u32) {
    let kind = match state {
        flow_state::EMBRYONIC => Kind::Embryonic,
        flow_state::ESTABLISHED | flow_state::OPENING => Kind::Established,
        _ => return,
    };
    conns::add(w.server_counts, &w.client, kind, -1);
}

/// The server's and the client's current counts; the client's only where
/// a per-client limit asks for them: under a spoofed flood each client is
/// new, and its lookup misses in a large table: with it, the program took
/// about 750 ns per dropped SYN of the gateway bench's flood, without it
/// about 230 (`kernel.bpf_stats_enabled`).
#[inline(always)]
fn counts(w: &Work, limits: &ServerLimits) -> (Current, Current) {
    let client = if limits.per_client_max != 0 || limits.per_client_embryonic_max != 0 {
        conns::client(&w.client)
    } else {
        Current::default()
    };
    (conns::server(w.server_counts), client)
}

/// [`counts`] as a flow's own add of `kind` found them (`added`, the
/// server's and the client's): the adds before it, not after.
#[inline(always)]
fn counts_before(
    w: &Work,
    limits: &ServerLimits,
    kind: Kind,
    added: (u64, u64),
) -> (Current, Current) {
    let (s, c) = counts(w, limits);
    (s.with(kind, added.0), c.with(kind, added.1))
}

#[inline(always)]
fn server_wscale(server: &Addr16) -> u8 {
    match unsafe { SERVER_WSCALE.get(server) } {
        Some(&ws) if ws <= MAX_WSCALE as u32 => ws as u8,
        _ => DEFAULT_WSCALE,
    }
}

/// The packet's sequence number.
#[inline(always)]
fn seq(packet: &Packet, tcp: &Tcp) -> Option<u32> {
    packet.read::<[u8; 4]>(tcp.l4 + 4).map(u32::from_be_bytes)
}

/// The packet's acknowledgment number.
#[inline(always)]
fn ack(packet: &Packet, tcp: &Tcp) -> Option<u32> {
    packet.read::<[u8; 4]>(tcp.l4 + 8).map(u32::from_be_bytes)
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

/// Where the TCP header of the packet being tracked is, and its flags.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpAt {
    l3: u32,
    l4: u32,
    pub flags: u32,
    _pad: u32,
}

impl TcpAt {
    /// Offsets masked so the verifier sees them bounded (the parser never
    /// finds a header that far in).
    #[inline(always)]
    pub fn l3(&self) -> usize {
        (self.l3 & 0x3fff) as usize
    }

    #[inline(always)]
    pub fn l4(&self) -> usize {
        (self.l4 & 0x3fff) as usize
    }
}

/// This CPU's working memory for the packet being tracked: the flow's
/// keys (in per-CPU memory rather than on the stack: the BPF stack is 512
/// bytes for the whole program, and these would be copied into every
/// helper that builds one) and what TCP intercept needs from the flow.
#[repr(C)]
pub struct Work {
    flow: FlowKey,
    client: ClientKey,
    /// A copy of the flow's entry, for the intercept verdicts.
    pub entry: FlowEntry,
    pub tcp: TcpAt,
    /// 1 when a verified client takes the slot of a half-open flow.
    displaces: u32,
    /// 1 for a packet the engine inspects (`FlowEntry::local` of a new flow).
    inspected: u32,
    /// The server's limits, for a verified client's [`opening`].
    limits: ServerLimits,
    /// The server's `ServerLimits::counts`, set with the flow's key.
    server_counts: u32,
    _pad: u32,
}

#[map]
static WORK: PerCpuArray<Work> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's [`Work`], as `track` left it.
#[inline(always)]
pub fn work() -> Option<&'static mut Work> {
    // SAFETY: this CPU's slot, used by this program run only.
    WORK.get_ptr_mut(0).map(|k| unsafe { &mut *k })
}

/// Sets the flow key client -> server, oriented as given, and the
/// per-client counters' key with it.
#[inline(always)]
fn flow_key<'a>(
    w: &'a mut Work,
    client: &Addr,
    server: &Addr,
    client_port: u16,
    server_port: u16,
) -> &'a FlowKey {
    let key = &mut w.flow;
    set_addr16(&mut key.client, client);
    set_addr16(&mut key.server, server);
    key.client_port = client_port;
    key.server_port = server_port;
    key.protocol = IPPROTO_TCP;
    key._pad = [0; 3];
    w.client.server = w.flow.server;
    w.client.client = w.flow.client;
    &w.flow
}

#[inline(always)]
fn set_addr16(to: &mut Addr16, addr: &Addr) {
    addr.write16(to);
}
