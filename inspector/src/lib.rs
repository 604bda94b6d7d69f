//! The inspector's userspace: the loader and daemon, the live exemption ACL,
//! counters, and the policy file.

pub mod audit;
pub mod bpffs;
pub mod daemon;
pub mod esmtp_state;
pub mod exempt;
pub mod limits;
pub mod loader;
pub mod lock;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod routing;
pub mod stats;
pub mod stats_socket;
pub mod steer;
pub mod sweeper;
