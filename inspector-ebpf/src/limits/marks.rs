//! The flow marks ([`FlowMarks`]): which tuples the flow table may hold.
//! A spoofed flood's SYNs all come from tuples the table has never seen,
//! and looking each up in a table far larger than the caches was the
//! largest part of dropping one (docs/benchmarks.md); a slot at zero
//! answers the same question from a small array that stays cached.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{bindings::BPF_F_MMAPABLE, macros::map, maps::Array};
use inspector_common::{FLOW_MARK_SLOTS, FlowKey, FlowMarks};

/// Mmapable, so that the sweeper takes its removals away with atomic
/// subtractions of its own rather than rewriting slots the kernel counts.
#[map]
static FLOW_MARKS: Array<FlowMarks> = Array::pinned(1, BPF_F_MMAPABLE);

/// Whether a flow with `key`'s tuple may be tracked (false: certainly not).
#[inline(always)]
pub fn marked(key: &FlowKey) -> bool {
    match slot(key) {
        // SAFETY: a map value's slot; an aligned 4-byte load is never torn.
        Some(count) => (unsafe { count.read_volatile() }) != 0,
        // No marks (cannot happen once loaded): look the flow up.
        None => true,
    }
}

/// Adds `delta` (+1 before a flow is inserted, -1 after it is removed or
/// its insert failed) to `key`'s slot.
#[inline(always)]
pub fn add(key: &FlowKey, delta: i32) {
    if let Some(count) = slot(key) {
        // SAFETY: as in `marked`; atomic because other CPUs and the
        // sweeper change the same slot (a negative delta wraps, as in
        // `conns::add_to`).
        unsafe {
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(count, delta as u32);
        }
    }
}

#[inline(always)]
fn slot(key: &FlowKey) -> Option<*mut u32> {
    let marks = FLOW_MARKS.get_ptr_mut(0)?;
    // The mask bounds the index for the verifier.
    let i = key.mark_slot() & (FLOW_MARK_SLOTS - 1);
    // SAFETY: `i` is within the array.
    Some(unsafe { (&raw mut (*marks).slots).cast::<u32>().add(i) })
}
