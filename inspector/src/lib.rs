//! The inspector's userspace, in folders by role:
//!
//! - [`config`]: the policy file, read in one pipeline into the settings
//!   every other module takes (exemptions, protected servers, flow
//!   timeouts, the ESMTP policy, the proxy, audit).
//! - [`kernel`]: loading the kernel programs and reaching their pinned maps
//!   and links (exemptions, counters, limits, steering, the flow table's
//!   sweeper, the policy routing). Files share the kernel crate's names.
//! - [`proxy`]: the tokio runtime that carries flagged sessions through the
//!   ESMTP engine (`inspector-esmtp`).
//! - [`observe`]: the Prometheus endpoint, audit sinks, the stats socket and
//!   the ESMTP state they read.
//! - [`daemon`]: `inspector run`: start, locks, signals, stop.
//! - [`cli`]: the command line and the text/JSON views it prints.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod kernel;
pub mod observe;
pub mod proxy;

/// Where a running daemon keeps its per-run files: one lock per interface
/// (see [`daemon::lock`]) and its stats socket (see
/// [`observe::stats_socket`]).
pub const RUN_DIR: &str = "/run/inspector";
