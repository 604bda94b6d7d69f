//! Fragment tracking: every fragment of an IP datagram gets the class and
//! the verdict of its datagram, which only the first fragment shows (it
//! holds the ports). An LRU table keyed as the receiver's reassembly keys
//! a datagram remembers what its first fragment said (Cilium's fragment
//! tracking is the model; unlike Cilium it also tells overlaps).
//!
//! TCP with path MTU discovery never fragments, so mail loses nothing to
//! these rules:
//! - a fragment of TCP to an inspected port (not exempt) or to a protected server is
//!   dropped (`tcp-fragment`), and with it every later fragment of its
//!   datagram: it would reach the server without meeting the engine or the
//!   limits;
//! - a fragment overlapping the first fragment, or a second first fragment
//!   of another length, drops the datagram (`fragment-overlap`): that is
//!   how ports and flags are rewritten behind a filter (RFC 1858, 3128);
//! - a later fragment of TCP whose first was not seen (out of order,
//!   evicted, never sent) is dropped (`fragment-without-first`), unless
//!   its datagram would not be inspected or limited anyway (exempt, not to
//!   a protected server);
//! - everything else (UDP, ICMP, other TCP) passes with its datagram's class.
//!
//! A tiny first fragment is refused by the parser's caller (`classify`),
//! before it gets here. XDP keeps the table; TC only reads it: it runs
//! after XDP on the same packet, so it finds the state XDP left for it and
//! takes the same decision.

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use inspector_common::{
    Class, FRAG_TABLE_SIZE, FRAG_TIMEOUT_V4_NS, FRAG_TIMEOUT_V6_NS, FragEntry, FragKey, ParseDrop,
};

use crate::{
    classify::Stage,
    exempt, limits,
    parse::{Addr, Fragment, IPPROTO_TCP, Transport},
};

/// The datagrams being fragmented. LRU: when it is full the oldest is
/// forgotten, and its later fragments are judged as if their first had
/// not been seen (which never lets a TCP fragment through that would not
/// pass anyway).
#[map]
static FRAGMENTS: LruHashMap<FragKey, FragEntry> = LruHashMap::with_max_entries(FRAG_TABLE_SIZE, 0);

/// A fragment's key and a new entry, in per-CPU memory rather than on the
/// BPF stack (512 bytes for the whole program, shared with the limits).
#[repr(C)]
struct Scratch {
    key: FragKey,
    entry: FragEntry,
}

#[map]
static FRAG_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// `FragEntry::min_later` when no later fragment came before the first.
const NO_LATER: u16 = 0xffff;
/// The largest IP datagram.
const MAX_DATAGRAM: u32 = 65_535;

/// The class and the verdict of one fragment. The part inline in the
/// classifier only gathers what the verdict needs (the key, in per-CPU
/// memory; the class; the ports); the rest is a subprogram, so that
/// packets that are not fragments pay nothing for it, not even stack.
#[inline(always)]
pub fn judge(
    src: &Addr,
    dst: &Addr,
    transport: &Transport,
    f: &Fragment,
    stage: Stage,
) -> (Class, Option<ParseDrop>) {
    let class = exempt::classify(src, dst, transport, stage);
    let l4 = match transport {
        Transport::Tcp(t) => L4::tcp(t.src_port, t.dst_port),
        Transport::Udp(s, d) => L4::ports(*s, *d),
        Transport::Other | Transport::Unparsable(..) => L4::ports(0, 0),
    };
    let Some(scratch) = FRAG_SCRATCH.get_ptr_mut(0) else {
        // Never: a one-entry array always has its entry.
        return (class, Some(ParseDrop::FragmentWithoutFirst));
    };
    // SAFETY: this CPU's slot, used by this program run only (XDP and TC
    // runs do not nest on one CPU).
    let key = unsafe { &mut (*scratch).key };
    src.write16(&mut key.src);
    dst.write16(&mut key.dst);
    key.id = f.id;
    // IPv6 reassembly ignores the Next Header of later fragments.
    key.protocol = if f.version == 4 { f.protocol } else { 0 };
    key.version = f.version;
    key._pad = [0; 2];
    let verdict = judge_packed(f, class as u32, l4.0, stage == Stage::Xdp);
    (
        Class::from_u8(verdict as u8),
        ParseDrop::from_u8(((verdict >> 8) as u8).wrapping_sub(1)),
    )
}

/// The transport facts a verdict needs, in one register: TCP or not, the
/// ports.
#[derive(Clone, Copy)]
struct L4(u64);

impl L4 {
    #[inline(always)]
    fn ports(src: u16, dst: u16) -> Self {
        Self(((src as u64) << 16) | ((dst as u64) << 32))
    }

    #[inline(always)]
    fn tcp(src: u16, dst: u16) -> Self {
        Self(Self::ports(src, dst).0 | 1)
    }

    #[inline(always)]
    fn is_tcp(self) -> bool {
        self.0 & 1 != 0
    }

    #[inline(always)]
    fn src_port(self) -> u16 {
        (self.0 >> 16) as u16
    }

    #[inline(always)]
    fn dst_port(self) -> u16 {
        (self.0 >> 32) as u16
    }
}

/// The verdict, from the key `judge` left in `FRAG_SCRATCH`: the class in
/// the low byte, the drop reason + 1 (0: pass) in the next.
#[inline(never)]
fn judge_packed(f: &Fragment, class: u32, l4: u64, xdp: bool) -> u32 {
    let (class, l4) = (Class::from_u8(class as u8), L4(l4));
    let (class, drop) = match FRAG_SCRATCH.get_ptr_mut(0) {
        _ if f.offset + f.len > MAX_DATAGRAM => {
            // The receiver drops the datagram too (it would be too long).
            (class, Some(ParseDrop::FragmentBadOffset))
        }
        // SAFETY: as in `judge`.
        Some(scratch) => unsafe {
            let scratch = &mut *scratch;
            if xdp {
                track(&scratch.key, &mut scratch.entry, class, l4, f)
            } else {
                look(&scratch.key, class, l4, f)
            }
        },
        None => (class, Some(ParseDrop::FragmentWithoutFirst)),
    };
    class as u32 | (drop.map_or(0, |r| r as u32 + 1) << 8)
}

/// XDP: judges the fragment and records it in its datagram's entry.
#[inline(always)]
fn track(
    key: &FragKey,
    new: &mut FragEntry,
    class: Class,
    l4: L4,
    f: &Fragment,
) -> (Class, Option<ParseDrop>) {
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout = if f.version == 4 {
        FRAG_TIMEOUT_V4_NS
    } else {
        FRAG_TIMEOUT_V6_NS
    };
    if let Some(entry) = FRAGMENTS.get_ptr_mut(key) {
        // SAFETY: a map value, valid during this run. Fragments of one
        // datagram normally arrive on one CPU (RSS hashes them by
        // addresses); a race costs at worst an overlap not seen.
        let e = unsafe { &mut *entry };
        let done = e.total != 0 && e.received >= e.total;
        if done || now.wrapping_sub(e.created_ns) >= timeout {
            // The datagram was reassembled or given up by the receiver:
            // this packet belongs to a new one with the same identity.
            reset(e, now);
        }
        return follow(e, key, class, l4, f);
    }
    reset(new, now);
    let verdict = follow(new, key, class, l4, f);
    // Fails only under memory pressure: the later fragments are then
    // judged as if the first had not been seen.
    let _ = FRAGMENTS.insert(key, &*new, BPF_ANY as u64);
    verdict
}

#[inline(always)]
fn reset(e: &mut FragEntry, now: u64) {
    e.created_ns = now;
    e.received = 0;
    e.total = 0;
    e.src_port = 0;
    e.dst_port = 0;
    e.first_end = 0;
    e.min_later = NO_LATER;
    e.first_seen = 0;
    e.drop = 0;
    e.class = 0;
    e.protocol = 0;
    e._pad = 0;
}

/// Adds the fragment to its datagram's entry; returns its class and verdict.
#[inline(always)]
fn follow(
    e: &mut FragEntry,
    key: &FragKey,
    class: Class,
    l4: L4,
    f: &Fragment,
) -> (Class, Option<ParseDrop>) {
    e.received = e.received.wrapping_add(f.len);
    if f.last {
        e.total = f.offset + f.len;
    }
    if f.later {
        if e.first_seen == 0 {
            if f.offset < e.min_later as u32 {
                e.min_later = f.offset as u16;
            }
            return without_first(key, class, f);
        }
        let mut drop = stored(e);
        if drop.is_none() && f.offset < e.first_end as u32 {
            drop = Some(ParseDrop::FragmentOverlap);
            e.drop = ParseDrop::FragmentOverlap as u8 + 1;
        }
        return (Class::from_u8(e.class), drop);
    }
    let mut drop = first(key, class, l4);
    if e.first_seen != 0 {
        if e.first_end as u32 != f.len {
            // A second first fragment, another length: RFC 3128.
            drop = Some(ParseDrop::FragmentOverlap);
        } else if drop.is_none() {
            // A duplicate: the datagram's verdict.
            drop = stored(e);
        }
    } else {
        if (e.min_later as u32) < f.len {
            // A later fragment that came first overlaps this one.
            drop = Some(ParseDrop::FragmentOverlap);
        }
        e.first_seen = 1;
        e.first_end = f.len as u16;
        e.src_port = l4.src_port();
        e.dst_port = l4.dst_port();
        e.class = class as u8;
        e.protocol = f.protocol;
    }
    if let Some(reason) = drop
        && e.drop == 0
    {
        e.drop = reason as u8 + 1;
    }
    (class, drop)
}

/// TC: the verdict XDP recorded for this packet, or, with no record, the
/// same rules without state.
#[inline(always)]
fn look(key: &FragKey, class: Class, l4: L4, f: &Fragment) -> (Class, Option<ParseDrop>) {
    // SAFETY: the value is copied out at once.
    if let Some(e) = unsafe { FRAGMENTS.get(key) }
        && e.first_seen != 0
    {
        let class = if f.later {
            Class::from_u8(e.class)
        } else {
            class
        };
        return (class, stored(e));
    }
    if f.later {
        without_first(key, class, f)
    } else {
        (class, first(key, class, l4))
    }
}

/// The verdict of a first fragment on its own: TCP to an inspected port (not
/// exempt: class `Inspect`) or to a protected server is dropped.
#[inline(always)]
fn first(key: &FragKey, class: Class, l4: L4) -> Option<ParseDrop> {
    (l4.is_tcp() && (class == Class::Inspect || limits::is_protected16(&key.dst)))
        .then_some(ParseDrop::TcpFragment)
}

/// The verdict of a later fragment whose first was not seen (`class`
/// comes from its addresses alone): its ports are unknown, so a TCP one is
/// dropped unless exempt and not to a protected server.
#[inline(always)]
fn without_first(key: &FragKey, class: Class, f: &Fragment) -> (Class, Option<ParseDrop>) {
    let tcp = f.protocol == IPPROTO_TCP;
    let drop = (tcp && (class != Class::Exempt || limits::is_protected16(&key.dst)))
        .then_some(ParseDrop::FragmentWithoutFirst);
    (class, drop)
}

#[inline(always)]
fn stored(e: &FragEntry) -> Option<ParseDrop> {
    match e.drop {
        0 => None,
        // An unknown value cannot be written by us; read it as a drop.
        v => Some(ParseDrop::from_u8(v - 1).unwrap_or(ParseDrop::FragmentOverlap)),
    }
}
