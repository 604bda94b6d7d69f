//! The flow marks ([`FlowMarks`]): which tuples the flow table may hold.
//! A spoofed flood's SYNs all come from tuples the table has never seen,
//! and looking each up in a table far larger than the caches was the
//! largest part of dropping one (docs/benchmarks.md); a slot at zero
//! answers the same question from a small array that stays cached.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{bindings::BPF_F_MMAPABLE, macros::map, maps::Array};
use inspector_common::{FLOW_MARK_INSERT, FLOW_MARK_SLOTS, FlowKey, FlowMarks, marked_flows};

/// Mmapable, so that the sweeper takes its removals away with atomic
/// subtractions of its own rather than rewriting slots the kernel counts.
#[map]
static FLOW_MARKS: Array<FlowMarks> = Array::pinned(1, BPF_F_MMAPABLE);

/// Whether a flow with `key`'s tuple may be tracked (false: the marks
/// count none there).
#[inline(always)]
pub fn marked(key: &FlowKey) -> bool {
    match slot(key) {
        // SAFETY: a map value's slot; an aligned 8-byte load is never torn.
        Some(slot) => marked_flows(unsafe { slot.read_volatile() }) != 0,
        // No marks (cannot happen once loaded): look the flow up.
        None => true,
    }
}

/// Before `key`'s flow is inserted: one flow more, one insert more.
#[inline(always)]
pub fn inserting(key: &FlowKey) {
    add(key, FLOW_MARK_INSERT);
}

/// After `key`'s flow was removed, or its insert failed: one flow less.
#[inline(always)]
pub fn gone(key: &FlowKey) {
    add(key, u64::MAX);
}

#[inline(always)]
fn add(key: &FlowKey, delta: u64) {
    if let Some(slot) = slot(key) {
        // SAFETY: as in `marked`; atomic because other CPUs and the
        // sweeper change the same slot (`u64::MAX` wraps to one less, as
        // in `conns::add_to`).
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, delta);
        }
    }
}

#[inline(always)]
fn slot(key: &FlowKey) -> Option<*mut u64> {
    let marks = FLOW_MARKS.get_ptr_mut(0)?;
    // The mask bounds the index for the verifier.
    let i = key.mark_slot() & (FLOW_MARK_SLOTS - 1);
    // SAFETY: `i` is within the array.
    Some(unsafe { (&raw mut (*marks).slots).cast::<u64>().add(i) })
}
