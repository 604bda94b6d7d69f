//! Per-server and per-client connection counts. The kernel moves them with
//! atomic adds (several CPUs count the same server at once); the userspace
//! sweeper rewrites them from the flow table, which is the truth, so any
//! race or eviction here is corrected at its next pass.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, LruHashMap},
};
use inspector_common::{CLIENT_TABLE_SIZE, ClientKey, ConnCounts, MAX_SERVERS};

/// A protected server's counts at the index its limits name
/// (`ServerLimits::counts`), which the daemon zeroes before it gives the
/// index to a server.
#[map]
static SERVER_CONNS: Array<ConnCounts> = Array::pinned(MAX_SERVERS, 0);

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

impl Current {
    /// These counts with `kind` at `count` (as an add found it).
    #[inline(always)]
    pub fn with(self, kind: Kind, count: u64) -> Self {
        match kind {
            Kind::Embryonic => Current {
                embryonic: count,
                ..self
            },
            Kind::Established => Current {
                established: count,
                ..self
            },
        }
    }
}

/// The counts of the server whose limits name `counts`.
#[inline(always)]
pub fn server(counts: u32) -> Current {
    read(SERVER_CONNS.get_ptr_mut(counts))
}

#[inline(always)]
pub fn client(key: &ClientKey) -> Current {
    read(CLIENT_CONNS.get_ptr_mut(key))
}

/// Adds `delta` (+1 or -1) to `kind` of both the server (its `counts`)
/// and the client. Returns the two counts of `kind` as the atomic adds
/// found them: of several CPUs adding at once, each sees the adds that
/// came before its own (`Current::with`).
#[inline(always)]
pub fn add(counts: u32, key: &ClientKey, kind: Kind, delta: i64) -> (u64, u64) {
    let server = match SERVER_CONNS.get_ptr_mut(counts) {
        Some(counts) => add_to(counts, kind, delta),
        None => 0,
    };
    let client = match CLIENT_CONNS.get_ptr_mut(key) {
        Some(counts) => add_to(counts, kind, delta),
        None if delta > 0 => {
            let mut fresh = ConnCounts::default();
            match kind {
                Kind::Embryonic => fresh.embryonic = delta as u64,
                Kind::Established => fresh.established = delta as u64,
            }
            // NOEXIST: if another CPU created it meanwhile, add to theirs.
            match CLIENT_CONNS.insert(key, fresh, BPF_NOEXIST as u64) {
                Ok(()) => 0,
                Err(_) => CLIENT_CONNS
                    .get_ptr_mut(key)
                    .map_or(0, |counts| add_to(counts, kind, delta)),
            }
        }
        // Releasing a client whose entry was evicted: nothing to release.
        None => 0,
    };
    (server, client)
}

/// Adds `delta` to `kind` of `counts`; returns the count before it.
#[inline(always)]
fn add_to(counts: *mut ConnCounts, kind: Kind, delta: i64) -> u64 {
    // SAFETY: `counts` points into a map value that stays valid for this
    // program run; the add is atomic because other CPUs add to it too.
    let field = unsafe {
        match kind {
            Kind::Embryonic => &raw mut (*counts).embryonic,
            Kind::Established => &raw mut (*counts).established,
        }
    };
    // A negative delta wraps: two's complement addition is the same.
    let mut before = delta as u64;
    // SAFETY: `field` is an aligned u64 of the map value, as above. The
    // instruction by hand: LLVM selects BPF's fetch-and-add (Linux 5.12)
    // only for `-mcpu=v3`, and the linker targets generic (the BPF target
    // has no compare-and-swap, so no `AtomicU64::fetch_add` either).
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_add((u64 *)({p} + 0), {v})",
            p = in(reg) field,
            v = inout(reg) before,
            options(nostack, preserves_flags),
        )
    };
    signed(before)
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
        embryonic: signed(embryonic),
        established: signed(established),
    }
}

/// A count read as signed, negative as zero.
#[inline(always)]
fn signed(count: u64) -> u64 {
    (count as i64).max(0) as u64
}
