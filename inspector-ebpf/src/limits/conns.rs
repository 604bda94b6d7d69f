//! Per-server and per-client connection counts. The kernel moves them with
//! atomic adds (several CPUs count the same server at once); the userspace
//! sweeper rewrites them from the flow table, which is the truth, so any
//! race or eviction here is corrected at its next pass.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{HashMap, LruHashMap},
};
use inspector_common::{Addr16, CLIENT_TABLE_SIZE, ClientKey, ConnCounts, MAX_SERVERS};

/// One entry per protected server, created by the daemon: the kernel only
/// counts servers the policy protects.
#[map]
static SERVER_CONNS: HashMap<Addr16, ConnCounts> = HashMap::pinned(MAX_SERVERS, 0);

/// Created by the kernel on a client's first SYN; LRU so a flood from many
/// (spoofed) sources evicts old clients instead of failing to count new ones.
#[map]
static CLIENT_CONNS: LruHashMap<ClientKey, ConnCounts> = LruHashMap::pinned(CLIENT_TABLE_SIZE, 0);

/// Which count of a [`ConnCounts`] to move.
#[derive(Clone, Copy)]
pub enum Kind {
    Embryonic,
    Established,
}

/// Current counts (negative transients read as zero).
#[derive(Clone, Copy, Default)]
pub struct Current {
    pub embryonic: u64,
    pub established: u64,
}

#[inline(always)]
pub fn server(server: &Addr16) -> Current {
    read(SERVER_CONNS.get_ptr_mut(server))
}

#[inline(always)]
pub fn client(key: &ClientKey) -> Current {
    read(CLIENT_CONNS.get_ptr_mut(key))
}

/// Adds `delta` (+1 or -1) to `kind` of both the server and the client.
#[inline(always)]
pub fn add(key: &ClientKey, kind: Kind, delta: i64) {
    if let Some(counts) = SERVER_CONNS.get_ptr_mut(&key.server) {
        add_to(counts, kind, delta);
    }
    match CLIENT_CONNS.get_ptr_mut(key) {
        Some(counts) => add_to(counts, kind, delta),
        None if delta > 0 => {
            let mut fresh = ConnCounts::default();
            match kind {
                Kind::Embryonic => fresh.embryonic = delta as u64,
                Kind::Established => fresh.established = delta as u64,
            }
            // NOEXIST: if another CPU created it meanwhile, add to theirs.
            if CLIENT_CONNS.insert(key, fresh, BPF_NOEXIST as u64).is_err()
                && let Some(counts) = CLIENT_CONNS.get_ptr_mut(key)
            {
                add_to(counts, kind, delta);
            }
        }
        // Releasing a client whose entry was evicted: nothing to release.
        None => {}
    }
}

#[inline(always)]
fn add_to(counts: *mut ConnCounts, kind: Kind, delta: i64) {
    // SAFETY: `counts` points into a map value that stays valid for this
    // program run; the add is atomic because other CPUs add to it too.
    unsafe {
        let field = match kind {
            Kind::Embryonic => &raw mut (*counts).embryonic,
            Kind::Established => &raw mut (*counts).established,
        };
        // A negative delta wraps: two's complement addition is the same.
        // The intrinsic, because the BPF target has no compare-and-swap and
        // so no `AtomicU64::fetch_add`; an unused result makes it one
        // BPF atomic add, which every kernel supports.
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, delta as u64);
    }
}

#[inline(always)]
fn read(counts: Option<*mut ConnCounts>) -> Current {
    let Some(counts) = counts else {
        return Current::default();
    };
    // SAFETY: as in `add_to`. Volatile, not atomic, loads (BPF has no
    // atomic load before v4 and the linker targets generic): an aligned
    // 8-byte load is never torn.
    let (embryonic, established) = unsafe {
        (
            (&raw const (*counts).embryonic).read_volatile(),
            (&raw const (*counts).established).read_volatile(),
        )
    };
    // Read as signed: the sweeper may have rewritten a count just before a
    // release, leaving it at -1 until its next pass.
    Current {
        embryonic: (embryonic as i64).max(0) as u64,
        established: (established as i64).max(0) as u64,
    }
}
