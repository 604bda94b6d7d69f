//! The flow marks as the sweeper sees them ([`inspector_common::FlowMarks`],
//! kept by the kernel program's `limits::marks`): mapped into the daemon,
//! so that it takes away the flows it removes with atomic subtractions,
//! exact however the kernel counts meanwhile, and settles them on the
//! flows the table holds (clearing those its evictions leave).

use std::{
    collections::HashMap,
    os::fd::{AsFd, AsRawFd},
    path::Path,
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail};
use aya::maps::MapData;
use inspector_common::{FLOW_MARK_SLOTS, FlowKey, FlowMarks as Slots, maps};

use super::bpffs;

pub struct FlowMarks {
    slots: NonNull<AtomicU32>,
    /// Slots above the flow table's count at the last pass: (the slot's
    /// count, the table's), cleared at the next pass if neither moved.
    stale: HashMap<usize, (u32, u32)>,
    _map: MapData,
}

// SAFETY: the mapping is shared memory written only through atomics.
unsafe impl Send for FlowMarks {}

const LEN: usize = std::mem::size_of::<Slots>();

impl FlowMarks {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let path = bpffs::map_path(pin_dir, maps::FLOW_MARKS);
        let map =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of the map's value, which lives as long
        // as `map` (kept here) and has exactly `LEN` bytes.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if at == libc::MAP_FAILED {
            bail!(
                "mapping {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(Self {
            slots: NonNull::new(at.cast()).context("mmap returned null")?,
            stale: HashMap::new(),
            _map: map,
        })
    }

    fn slots(&self) -> &[AtomicU32] {
        // SAFETY: `LEN` bytes of u32 slots, mapped while `self` lives.
        unsafe { std::slice::from_raw_parts(self.slots.as_ptr(), FLOW_MARK_SLOTS) }
    }

    /// The count in `key`'s slot.
    pub fn count(&self, key: &FlowKey) -> u32 {
        self.slots()[key.mark_slot()].load(Ordering::Relaxed)
    }

    /// The marks of every slot: the flows tracked, plus those evicted and
    /// not yet cleared.
    pub fn total(&self) -> u64 {
        self.slots()
            .iter()
            .map(|s| u64::from(s.load(Ordering::Relaxed)))
            .sum()
    }

    /// A flow the sweeper removed from the table: its mark goes.
    pub fn removed(&self, key: &FlowKey) {
        // Never below zero: a flow tracked before the marks existed has none.
        let _ =
            self.slots()[key.mark_slot()]
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_sub(1));
    }

    /// Settles the marks on the flows the table holds (`live`, read
    /// before this call). A slot below its flows' count (its flow inserted
    /// while a clearing below raced it; see there) is raised at once: a
    /// mark too many only costs a lookup. A slot above it (a flow the
    /// table evicted, which nothing takes away) is lowered to it only when
    /// neither count moved since the last pass, and only if it still holds
    /// what it held then (a compare-and-swap): a flow the kernel inserts or
    /// removes meanwhile changes the slot first. Returns the marks cleared.
    pub fn settle(&mut self, live: &[FlowKey]) -> usize {
        let mut held: HashMap<usize, u32> = HashMap::new();
        for key in live {
            *held.entry(key.mark_slot()).or_default() += 1;
        }
        let mut stale = HashMap::new();
        let mut cleared = 0;
        for (i, slot) in self.slots().iter().enumerate() {
            let count = slot.load(Ordering::Relaxed);
            let flows = held.get(&i).copied().unwrap_or(0);
            if count < flows {
                slot.fetch_add(flows - count, Ordering::Relaxed);
                continue;
            }
            if count == flows {
                continue;
            }
            if self.stale.get(&i) == Some(&(count, flows))
                && slot
                    .compare_exchange(count, flows, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                cleared += (count - flows) as usize;
            } else {
                stale.insert(i, (count, flows));
            }
        }
        self.stale = stale;
        cleared
    }
}

impl Drop for FlowMarks {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), LEN) };
    }
}

#[cfg(test)]
mod tests {
    use inspector_common::v4_mapped;

    use super::*;

    fn key(client: [u8; 4], port: u16) -> FlowKey {
        FlowKey {
            client: v4_mapped(client),
            server: v4_mapped([198, 18, 0, 25]),
            client_port: port,
            server_port: 25,
            protocol: 6,
            _pad: [0; 3],
        }
    }

    /// A flood's tuples (one /16, random ports) spread over the slots as
    /// random ones would: 1024 keys in 4096 slots take about
    /// 4096 (1 - e^(-1/4)) = 906 distinct slots.
    #[test]
    fn tuples_of_one_network_spread_over_the_slots() {
        assert_eq!(
            FLOW_MARK_SLOTS, 4096,
            "the expectations below are for 4096 slots"
        );
        let n = 1024u32;
        let sources: std::collections::HashSet<_> = (0..n)
            .map(|i| {
                key(
                    [198, 19, (i >> 8) as u8, i as u8],
                    1024 + (i * 7919 % 60000) as u16,
                )
            })
            .map(|k| k.mark_slot())
            .collect();
        assert!(sources.len() > 850, "{} distinct slots", sources.len());
        // Ports alone move the slot too.
        let ports: std::collections::HashSet<_> = (0..n as u16)
            .map(|p| key([198, 19, 0, 1], 1024 + p).mark_slot())
            .collect();
        assert!(ports.len() > 850, "{} distinct slots", ports.len());
    }
}
