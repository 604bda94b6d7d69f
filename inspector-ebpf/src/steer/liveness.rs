//! The proxy's liveness as the kernel sees it: a heartbeat the proxy's own
//! loop writes every second (`bpf_ktime_get_ns`'s clock, CLOCK_MONOTONIC,
//! read with `clock_gettime` in userspace). A listener that is still there
//! proves only that the process exists; a fresh heartbeat proves its loop
//! runs. A stopped (SIGSTOP) or stuck proxy stops beating, and within
//! `HEARTBEAT_STALE_NS` new sessions are no longer steered into its backlog:
//! they follow `fail` as with no proxy at all.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::Array};
use inspector_common::HEARTBEAT_STALE_NS;

/// One u64 at index 0: the CLOCK_MONOTONIC nanoseconds of the last beat;
/// 0 until the proxy's loop first runs. Not pinned: each daemon start has
/// its own, held by its programs (and by a pinned link after it dies).
#[map]
static HEARTBEAT: Array<u64> = Array::with_max_entries(1, 0);

/// Whether the proxy's last heartbeat is at most `HEARTBEAT_STALE_NS` old.
#[inline(always)]
pub fn proxy_alive() -> bool {
    let Some(&beat) = HEARTBEAT.get(0) else {
        return false;
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    beat != 0 && now.saturating_sub(beat) <= HEARTBEAT_STALE_NS
}
