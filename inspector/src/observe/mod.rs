//! What the daemon shows of itself: the ESMTP state its sessions count
//! into, the Prometheus endpoint, the audit sinks, the stats socket that
//! `inspector stats` reads, the log, and the record of each session.

pub mod admission;
pub mod audit;
pub mod esmtp;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod session;
pub mod stats_socket;
