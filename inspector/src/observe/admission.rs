//! What the proxy's admission counts (sessions refused and evicted, stress
//! mode), for the metrics endpoint and `inspector stats`. The proxy moves
//! them (`proxy::admission`); scrapes read them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;

/// Why a new session was refused (`inspector_sessions_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The client holds `per-client-sessions` already.
    PerClientLimit,
    /// The client opened `per-client-rate` sessions this minute already.
    PerClientRate,
    /// `max-sessions` reached and no idle session to take the slot of.
    MaxSessions,
    /// The client connected to one of the gateway's own addresses.
    OwnAddress,
}

impl RefusalReason {
    pub const COUNT: usize = 4;
    pub const ALL: [RefusalReason; Self::COUNT] = [
        Self::PerClientLimit,
        Self::PerClientRate,
        Self::MaxSessions,
        Self::OwnAddress,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::PerClientLimit => "per-client-limit",
            Self::PerClientRate => "per-client-rate",
            Self::MaxSessions => "max-sessions",
            Self::OwnAddress => "own-address",
        }
    }
}

#[derive(Debug, Default)]
pub struct AdmissionCounts {
    refused: [AtomicU64; RefusalReason::COUNT],
    /// Idle sessions closed to give their slot to a client holding fewer.
    evicted: AtomicU64,
    /// Whether stress mode is on now.
    stress: AtomicBool,
    /// Times stress mode was entered.
    stress_entered: AtomicU64,
    /// Clients (addresses or prefixes) holding at least one session.
    clients: AtomicU64,
}

impl AdmissionCounts {
    pub fn refused(&self, reason: RefusalReason) -> u64 {
        self.refused[reason as usize].load(Ordering::Relaxed)
    }

    pub fn count_refused(&self, reason: RefusalReason) {
        self.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    pub fn count_evicted(&self) {
        self.evicted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stress(&self) -> bool {
        self.stress.load(Ordering::Relaxed)
    }

    pub fn stress_entered(&self) -> u64 {
        self.stress_entered.load(Ordering::Relaxed)
    }

    pub fn set_stress(&self, on: bool) {
        if !self.stress.swap(on, Ordering::Relaxed) && on {
            self.stress_entered.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn clients(&self) -> u64 {
        self.clients.load(Ordering::Relaxed)
    }

    pub fn set_clients(&self, n: usize) {
        self.clients.store(n as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> AdmissionSnapshot {
        AdmissionSnapshot {
            refused: RefusalReason::ALL
                .iter()
                .map(|&r| (r.name().to_string(), self.refused(r)))
                .collect(),
            evicted: self.evicted(),
            stress: self.stress(),
            stress_entered: self.stress_entered(),
            clients: self.clients(),
        }
    }
}

/// The admission's counters as `inspector stats --json` shows them (key
/// `admission` of the ESMTP view).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AdmissionSnapshot {
    /// Refused sessions by reason.
    pub refused: std::collections::BTreeMap<String, u64>,
    pub evicted: u64,
    pub stress: bool,
    pub stress_entered: u64,
    pub clients: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stress_entries_count_transitions_only() {
        let c = AdmissionCounts::default();
        c.set_stress(true);
        c.set_stress(true);
        c.set_stress(false);
        c.set_stress(true);
        assert!(c.stress());
        assert_eq!(c.stress_entered(), 2);
        c.count_refused(RefusalReason::PerClientRate);
        let snap = c.snapshot();
        assert_eq!(snap.refused["per-client-rate"], 1);
        assert_eq!(snap.refused["max-sessions"], 0);
    }
}
