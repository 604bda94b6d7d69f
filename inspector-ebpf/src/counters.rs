//! Per-CPU packet and byte counters per class, summed by userspace on read.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use inspector_common::{Class, ClassCounters};

#[map]
static CLASS_STATS: PerCpuArray<ClassCounters> = PerCpuArray::pinned(Class::COUNT, 0);

#[inline(always)]
pub fn count(class: Class, bytes: u64) {
    if let Some(counters) = CLASS_STATS.get_ptr_mut(class as u32) {
        // SAFETY: the pointer is this CPU's slot of a map value; nothing else
        // writes it while this program runs on this CPU.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += bytes;
        }
    }
}
