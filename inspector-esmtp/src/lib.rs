//! The ESMTP inspection engine: a sans-IO session state machine driven by the
//! proxy, and the `[esmtp]` policy language it enforces.
//!
//! ```
//! use std::{sync::Arc, time::Instant};
//! use inspector_esmtp::{Output, Peers, PolicyStats, Session, policy::EsmtpPolicy};
//!
//! let policy = Arc::new(EsmtpPolicy::default());
//! let stats = Arc::new(PolicyStats::new(&policy));
//! let peers = Peers { client: "198.18.0.1:40000".parse().unwrap(), server: "198.18.1.1:25".parse().unwrap() };
//! let mut s = Session::new(policy, stats, peers);
//! let mut out = Output::default();
//! s.on_server_data(b"220 mx.example ESMTP Postfix\r\n", Instant::now(), &mut out);
//! assert_eq!(out.to_client, b"220 mail ESMTP\r\n");
//! ```

pub mod audit;
pub mod mime;
pub mod policy;
mod session;
pub mod stats;

pub use audit::{AuditEvent, AuditKind, Peers};
pub use session::{
    Close, MAX_AUTH_LINE, MAX_COMMAND_LINE, MAX_HOLD, MAX_LINE, MAX_PENDING, MAX_TRANSACTIONS,
    Output, Phase, Reading, SESSION_MEMORY_BOUND, Session, SessionRecord, TransactionRecord,
    read_command,
};
pub use stats::PolicyStats;
