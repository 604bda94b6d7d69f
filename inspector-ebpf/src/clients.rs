//! Clients at their session limit, as the proxy says: a new SYN to an inspected port
//! (an inspected flow) from one of them is dropped here, before the kernel
//! makes a socket for it, and counted (`per-client`). The proxy writes a
//! client's network (its `client-prefix-v4`/`-v6` bits) when the client
//! reaches `per-client-sessions` and removes it when the client falls
//! below; each entry holds until when it applies, which the proxy renews
//! with its heartbeat, so a proxy that stops leaves no client blocked for
//! long. (Why the proxy counts and not the kernel: docs/limits.md.)
//! While it blocks none, `CLIENT_BLOCKED` says so and no SYN pays for a
//! trie lookup (a flood of spoofed SYNs blocks no one: only sessions the
//! proxy holds count).

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, LpmTrie},
};
use inspector_common::{CLIENT_BLOCK_MAX, DropReason};

use crate::{
    counters::count_limit_drop,
    exempt,
    parse::{self, TCP_ACK, TCP_SYN},
};

#[map]
static CLIENT_BLOCK_V4: LpmTrie<[u8; 4], u64> = LpmTrie::pinned(CLIENT_BLOCK_MAX, 0);

#[map]
static CLIENT_BLOCK_V6: LpmTrie<[u8; 16], u64> = LpmTrie::pinned(CLIENT_BLOCK_MAX, 0);

/// How many networks the tries block (their exceptions not counted),
/// written by the proxy before it adds one and after it removes one.
#[map]
static CLIENT_BLOCKED: Array<u32> = Array::pinned(1, 0);

/// Whether the whole TCP segment the classifier kept (`parse::tcp`), an
/// inspected one, is a new SYN from a blocked client: then it is counted
/// and to be dropped. A subprogram, so its frame does not add to the
/// limits' that follow.
#[inline(never)]
pub fn refuses() -> bool {
    let Some((src, _, tcp)) = parse::tcp() else {
        return false;
    };
    if tcp.flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return false;
    }
    if CLIENT_BLOCKED.get(0).is_none_or(|&blocked| blocked == 0) {
        return false;
    }
    let Some(&until) = exempt::lookup(&CLIENT_BLOCK_V4, &CLIENT_BLOCK_V6, src) else {
        return false;
    };
    // SAFETY: a helper without arguments or preconditions.
    if unsafe { bpf_ktime_get_ns() } >= until {
        return false;
    }
    count_limit_drop(DropReason::PerClient);
    true
}
