//! The ESMTP inspection engine: a sans-IO session state machine driven by the
//! proxy, and the `[esmtp]` policy language it enforces.

pub mod policy;
