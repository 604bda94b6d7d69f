//! Every counter the programs keep, in per-CPU arrays that userspace sums
//! on read: packets and bytes per class, packets dropped for their shape
//! per reason, SYNs dropped per limit, and TCP intercept events. (The connection counts the limits compare against are
//! not counters but the flow table's state: see `limits::conns`.)

use aya_ebpf::{macros::map, maps::PerCpuArray};
use inspector_common::{Class, ClassCounters, DropReason, InterceptEvent, ParseDrop};

#[map]
static CLASS_STATS: PerCpuArray<ClassCounters> = PerCpuArray::pinned(Class::COUNT, 0);

#[map]
static LIMIT_DROPS: PerCpuArray<u64> = PerCpuArray::pinned(DropReason::COUNT, 0);

#[map]
static PARSE_DROPS: PerCpuArray<u64> = PerCpuArray::pinned(ParseDrop::COUNT, 0);

#[map]
static INTERCEPTS: PerCpuArray<u64> = PerCpuArray::pinned(InterceptEvent::COUNT, 0);

/// Counts one packet of `bytes` in its class.
#[inline(always)]
pub fn count_class(class: Class, bytes: u64) {
    if let Some(counters) = CLASS_STATS.get_ptr_mut(class as u32) {
        // SAFETY: the pointer is this CPU's slot of a map value; nothing else
        // writes it while this program runs on this CPU.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += bytes;
        }
    }
}

/// Counts a packet dropped for its shape (fragments, unparsable headers).
#[inline(always)]
pub fn count_parse_drop(reason: ParseDrop) {
    increment(&PARSE_DROPS, reason as u32);
}

/// Counts a SYN dropped over a limit.
#[inline(always)]
pub fn count_limit_drop(reason: DropReason) {
    increment(&LIMIT_DROPS, reason as u32);
}

/// Counts a TCP intercept event.
#[inline(always)]
pub fn count_intercept(event: InterceptEvent) {
    increment(&INTERCEPTS, event as u32);
}

#[inline(always)]
fn increment(counters: &PerCpuArray<u64>, index: u32) {
    if let Some(count) = counters.get_ptr_mut(index) {
        // SAFETY: this CPU's slot; nothing else writes it during this run.
        unsafe { *count += 1 };
    }
}
