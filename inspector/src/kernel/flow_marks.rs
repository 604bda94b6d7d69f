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
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context, Result, bail};
use aya::maps::MapData;
use inspector_common::{FLOW_MARK_SLOTS, FlowKey, FlowMarks as Slots, maps, marked_flows};

use super::bpffs;

pub struct FlowMarks {
    slots: NonNull<AtomicU64>,
    /// Each slot as the last [`FlowMarks::settle`] read it (empty before the first).
    previous: Vec<u64>,
    _map: MapData,
}

// SAFETY: the mapping is shared memory written only through atomics.
unsafe impl Send for FlowMarks {}

const LEN: usize = std::mem::size_of::<Slots>();
/// The inserts' half of a slot.
const INSERTS: u64 = !(u32::MAX as u64);

impl FlowMarks {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let path = bpffs::map_path(pin_dir, maps::FLOW_MARKS);
        let map =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of the map's value, which lives as long
        // as `map` (kept here) and has exactly `LEN` bytes (the loader
        // replaces a pinned array of another size).
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
            previous: Vec::new(),
            _map: map,
        })
    }

    fn slots(&self) -> &[AtomicU64] {
        // SAFETY: `LEN` bytes of u64 slots, mapped while `self` lives.
        unsafe { std::slice::from_raw_parts(self.slots.as_ptr(), FLOW_MARK_SLOTS) }
    }

    /// The flows counted in `key`'s slot.
    pub fn count(&self, key: &FlowKey) -> u32 {
        marked_flows(self.slots()[key.mark_slot()].load(Ordering::Relaxed))
    }

    /// The flows counted in every slot: those tracked, plus those evicted
    /// and not yet settled.
    pub fn total(&self) -> u64 {
        self.slots()
            .iter()
            .map(|s| u64::from(marked_flows(s.load(Ordering::Relaxed))))
            .sum()
    }

    /// A flow the sweeper removed from the table: one flow less in its
    /// slot (never below none: a slot counts at least the flows it holds,
    /// see `settle`, but a wrong count must not borrow from the inserts).
    pub fn removed(&self, key: &FlowKey) {
        let _ =
            self.slots()[key.mark_slot()].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                (marked_flows(c) > 0).then(|| c - 1)
            });
    }

    /// Settles the slots on the flows the table holds: `live`, every key
    /// of a scan begun after the last pass (`complete` if the scan had no
    /// error). A slot counting fewer flows than it holds is raised (a
    /// mark too many only costs a lookup). A slot counting more (a flow
    /// the table evicted, which nothing takes away) is lowered to them
    /// only if no flow was inserted there since the last pass, which read
    /// its inserts before this scan began: every flow it holds was then in
    /// the table for the whole scan, so none loses its mark. The lowering
    /// is a compare-and-swap, which fails if the kernel counted meanwhile.
    /// Returns the marks cleared.
    pub fn settle(&mut self, live: &[FlowKey], complete: bool) -> usize {
        let mut held: HashMap<usize, u32> = HashMap::new();
        for key in live {
            *held.entry(key.mark_slot()).or_default() += 1;
        }
        let mut cleared = 0;
        let mut now = Vec::with_capacity(FLOW_MARK_SLOTS);
        for (i, slot) in self.slots().iter().enumerate() {
            let seen = slot.load(Ordering::Relaxed);
            now.push(seen);
            let (counted, flows) = (marked_flows(seen), held.get(&i).copied().unwrap_or(0));
            if counted < flows {
                slot.fetch_add(u64::from(flows - counted), Ordering::Relaxed);
            } else if counted > flows
                && complete
                && self
                    .previous
                    .get(i)
                    .is_some_and(|p| p & INSERTS == seen & INSERTS)
                && slot
                    .compare_exchange(
                        seen,
                        (seen & INSERTS) | u64::from(flows),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                cleared += (counted - flows) as usize;
            }
        }
        self.previous = now;
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
