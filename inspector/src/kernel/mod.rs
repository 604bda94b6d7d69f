//! Everything that faces the kernel: loading the programs, the bpffs pin
//! directory, the pinned maps each concern reads and writes, the steering
//! link and the policy routing. A concern's file has the name of its
//! program module in `inspector-ebpf` (classify, clients, exempt, counters,
//! limits, steer).

pub mod bpffs;
pub mod classify;
pub mod clients;
pub mod counters;
pub mod exempt;
pub mod exempt_store;
pub mod flow_marks;
pub mod limits;
pub mod loader;
pub mod local_addrs;
pub mod reset;
pub mod routing;
pub mod steer;
pub mod sweeper;
