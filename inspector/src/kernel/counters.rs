//! The kernel's per-class counters and its drops for a packet's shape,
//! summed over CPUs.

use std::path::Path;

use anyhow::Result;
use aya::maps::{MapData, PerCpuArray};
use inspector_common::{Class, ClassCounters, ParseDrop, maps};
use serde::Serialize;

use super::bpffs;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// One [`Counter`] per class, in [`Class::ALL`] order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassStats(pub [Counter; Class::COUNT as usize]);

impl ClassStats {
    pub fn read(pin_dir: &Path) -> Result<Self> {
        let array: PerCpuArray<MapData, ClassCounters> =
            bpffs::open_map(pin_dir, maps::CLASS_STATS)?.try_into()?;
        let mut stats = Self::default();
        for class in Class::ALL {
            let per_cpu = array.get(&(class as u32), 0)?;
            let total = &mut stats.0[class as usize];
            for cpu in per_cpu.iter() {
                total.packets += cpu.packets;
                total.bytes += cpu.bytes;
            }
        }
        Ok(stats)
    }

    pub fn get(&self, class: Class) -> Counter {
        self.0[class as usize]
    }
}

/// Packets the classifier dropped for their shape (fragments, headers it
/// cannot parse), in [`ParseDrop::ALL`] order. XDP and TC count into the
/// same map; a packet is dropped (and counted) by one of them at most.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParseDrops(pub [u64; ParseDrop::COUNT as usize]);

impl ParseDrops {
    pub fn read(pin_dir: &Path) -> Result<Self> {
        let array: PerCpuArray<MapData, u64> =
            bpffs::open_map(pin_dir, maps::PARSE_DROPS)?.try_into()?;
        let mut drops = Self::default();
        for reason in ParseDrop::ALL {
            drops.0[reason as usize] = array.get(&(reason as u32), 0)?.iter().sum();
        }
        Ok(drops)
    }

    pub fn get(&self, reason: ParseDrop) -> u64 {
        self.0[reason as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}
