//! What the daemon keeps about ESMTP inspection, shared by the proxy's
//! sessions, the metrics endpoint and the stats socket: the policy, its hit
//! counters, session gauges and counters, and the audit log.
//!
//! The proxy plugs in with a few lines per session:
//!
//! ```no_run
//! # use std::{sync::Arc, time::Instant};
//! # use inspector::observe::esmtp::{EsmtpState, SessionOutcome};
//! # fn f(state: Arc<EsmtpState>, peers: inspector_esmtp::Peers, bytes: &[u8]) {
//! let mut guard = state.session_started(); // sessions_active + 1
//! let mut session = state.new_session(peers);
//! let mut out = inspector_esmtp::Output::default();
//! session.on_client_data(bytes, Instant::now(), &mut out);
//! state.audit_all(std::mem::take(&mut out.audit)); // never blocks
//! guard.set_outcome(SessionOutcome::from_close(out.close));
//! drop(guard); // sessions_active - 1, sessions_total{outcome} + 1
//! # }
//! ```

use std::sync::{
    Arc, Mutex, RwLock,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use inspector_esmtp::{AuditEvent, Close, Peers, PolicyStats, Session, policy::EsmtpPolicy};
use serde::Serialize;

use super::{
    admission::{AdmissionCounts, AdmissionSnapshot},
    audit::AuditLog,
    session::SessionIds,
};

/// How an inspected session ended (`inspector_esmtp_sessions_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOutcome {
    /// Both sides closed normally.
    Closed,
    /// The policy closed it (`drop-connection`, a 108003 pattern).
    Dropped,
    /// The policy reset it (`reset`).
    Reset,
    /// A socket error or a timeout ended it.
    Error,
}

impl SessionOutcome {
    pub const COUNT: usize = 4;
    pub const ALL: [SessionOutcome; Self::COUNT] =
        [Self::Closed, Self::Dropped, Self::Reset, Self::Error];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Dropped => "dropped",
            Self::Reset => "reset",
            Self::Error => "error",
        }
    }

    /// The outcome of a session the engine decided to close (`Some`), or
    /// that ended on its own (`None`).
    pub fn from_close(close: Option<Close>) -> Self {
        match close {
            None => Self::Closed,
            Some(Close::Fin) => Self::Dropped,
            Some(Close::Reset) => Self::Reset,
        }
    }
}

/// Why a session ended in error (`inspector_esmtp_session_errors_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReason {
    /// The server refused the connection or could not be reached in time.
    ServerUnreachable,
    /// No traffic for the phase's timeout.
    Timeout,
    /// A side reset the connection or a write to it failed.
    Reset,
}

impl ErrorReason {
    pub const COUNT: usize = 3;
    pub const ALL: [Self; Self::COUNT] = [Self::ServerUnreachable, Self::Timeout, Self::Reset];

    pub const fn name(self) -> &'static str {
        match self {
            Self::ServerUnreachable => "server-unreachable",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
        }
    }
}

/// Seconds histograms of the sessions (`inspector_session_duration_seconds`,
/// `inspector_upstream_connect_seconds`).
#[derive(Debug, Clone)]
pub struct Timings {
    pub session_duration: prometheus_client::metrics::histogram::Histogram,
    pub upstream_connect: prometheus_client::metrics::histogram::Histogram,
}

impl Default for Timings {
    fn default() -> Self {
        use prometheus_client::metrics::histogram::Histogram;
        Self {
            // 10 ms to about 45 minutes.
            session_duration: Histogram::new([
                0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0,
            ]),
            // 100 µs to the default connect-timeout.
            upstream_connect: Histogram::new([
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
            ]),
        }
    }
}

/// The policy new sessions get and the counters they count into. A reload
/// makes a new generation; sessions already open keep theirs (they hold
/// its `Arc`s) until they end.
#[derive(Clone)]
pub struct Generation {
    pub policy: Arc<EsmtpPolicy>,
    pub stats: Arc<PolicyStats>,
}

impl Generation {
    fn new(policy: EsmtpPolicy) -> Self {
        Self {
            stats: Arc::new(PolicyStats::new(&policy)),
            policy: Arc::new(policy),
        }
    }
}

pub struct EsmtpState {
    current: RwLock<Generation>,
    /// Every generation's counters, the current one last: the totals
    /// (`packet`, `drop`, `reset-drop`) add them up, so they never go back
    /// at a reload; per-criterion counts are the current policy's.
    generations: Mutex<Vec<Arc<PolicyStats>>>,
    pub audit: AuditLog,
    /// Each session's id (its record's, and its policy records').
    pub session_ids: SessionIds,
    /// The proxy's admission: refusals, evictions, stress mode.
    pub admission: Arc<AdmissionCounts>,
    /// The daemon is attached and (unless `--no-proxy`) its proxy listens
    /// (`inspector_ready`).
    pub ready: AtomicBool,
    /// The proxy's `max-sessions` (`inspector_proxy_max_sessions`); 0
    /// without a proxy.
    pub max_sessions: AtomicU64,
    pub timings: Timings,
    active: AtomicU64,
    outcomes: [AtomicU64; SessionOutcome::COUNT],
    errors: [AtomicU64; ErrorReason::COUNT],
}

impl EsmtpState {
    pub fn new(policy: EsmtpPolicy, audit: AuditLog) -> Self {
        let generation = Generation::new(policy);
        Self {
            generations: Mutex::new(vec![generation.stats.clone()]),
            current: RwLock::new(generation),
            audit,
            session_ids: SessionIds::default(),
            admission: Arc::default(),
            ready: AtomicBool::new(false),
            max_sessions: AtomicU64::new(0),
            timings: Timings::default(),
            active: AtomicU64::new(0),
            outcomes: Default::default(),
            errors: Default::default(),
        }
    }

    /// The policy and counters new sessions get now.
    pub fn current(&self) -> Generation {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn policy(&self) -> Arc<EsmtpPolicy> {
        self.current().policy
    }

    /// Makes `policy` the one new sessions get (a reload); open sessions
    /// keep the one they started with.
    pub fn replace_policy(&self, policy: EsmtpPolicy) {
        let generation = Generation::new(policy);
        self.generations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(generation.stats.clone());
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = generation;
    }

    /// `packet`, `drop` and `reset-drop` over every generation.
    pub fn totals(&self) -> (u64, u64, u64) {
        let generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        generations.iter().fold((0, 0, 0), |(p, d, r), stats| {
            let (p2, d2, r2) = stats.totals();
            (p + p2, d + d2, r + r2)
        })
    }

    /// The `show service-policy inspect esmtp` view of the current policy
    /// (its totals over every generation).
    pub fn render(&self) -> String {
        self.snapshot().show
    }

    /// An engine session counting into the current generation's
    /// [`PolicyStats`], with its policy for as long as it lasts.
    pub fn new_session(&self, peers: Peers) -> Session {
        let generation = self.current();
        Session::new(generation.policy, generation.stats, peers)
    }

    /// Counts a session as active until the guard drops, then counts its
    /// outcome ([`SessionOutcome::Closed`] unless set).
    pub fn session_started(self: &Arc<Self>) -> SessionGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        SessionGuard {
            state: self.clone(),
            outcome: SessionOutcome::Closed,
        }
    }

    /// Hands the engine's records to the audit log (never blocks).
    pub fn audit_all(&self, events: Vec<AuditEvent>) {
        for event in events {
            self.audit.record(event);
        }
    }

    /// Counts why a session ended in error.
    pub fn session_error(&self, reason: ErrorReason) {
        self.errors[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn session_errors(&self, reason: ErrorReason) -> u64 {
        self.errors[reason as usize].load(Ordering::Relaxed)
    }

    pub fn sessions_active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    pub fn sessions_total(&self, outcome: SessionOutcome) -> u64 {
        self.outcomes[outcome as usize].load(Ordering::Relaxed)
    }

    /// Everything `inspector stats` shows about ESMTP, as the stats socket
    /// sends it.
    pub fn snapshot(&self) -> EsmtpSnapshot {
        let Generation { policy, stats } = self.current();
        let (packet, drop, reset_drop) = self.totals();
        EsmtpSnapshot {
            pid: std::process::id(),
            policy: policy.name.clone(),
            packet,
            drop,
            reset_drop,
            sessions_active: self.sessions_active(),
            sessions: SessionOutcome::ALL
                .iter()
                .map(|&o| (o.name().to_string(), self.sessions_total(o)))
                .collect(),
            criteria: stats
                .criteria(&policy)
                .into_iter()
                .map(|c| CriterionView {
                    criterion: c.criterion,
                    action: c.action,
                    count: c.hits,
                })
                .collect(),
            audit_dropped: self.audit.dropped(),
            show: show(&stats, &policy, (packet, drop, reset_drop)),
            admission: self.admission.snapshot(),
        }
    }
}

/// `stats.render(policy)` with the first line's totals over every
/// generation (`packet`, `drop` and `reset-drop` go on across reloads).
fn show(
    stats: &PolicyStats,
    policy: &EsmtpPolicy,
    (packet, drop, reset_drop): (u64, u64, u64),
) -> String {
    let text = stats.render(policy);
    let rest = text.split_once('\n').map_or("", |(_, rest)| rest);
    format!(
        "Inspect: esmtp {}, packet {packet}, drop {drop}, reset-drop {reset_drop}\n{rest}",
        policy.name
    )
}

/// Ends one session's count; see [`EsmtpState::session_started`].
pub struct SessionGuard {
    state: Arc<EsmtpState>,
    outcome: SessionOutcome,
}

impl SessionGuard {
    pub fn set_outcome(&mut self, outcome: SessionOutcome) {
        self.outcome = outcome;
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::Relaxed);
        self.state.outcomes[self.outcome as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// One daemon's ESMTP counters (`inspector stats --json`, key `esmtp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EsmtpSnapshot {
    pub pid: u32,
    pub policy: String,
    pub packet: u64,
    pub drop: u64,
    pub reset_drop: u64,
    pub sessions_active: u64,
    /// Ended sessions by outcome.
    pub sessions: std::collections::BTreeMap<String, u64>,
    pub criteria: Vec<CriterionView>,
    pub audit_dropped: u64,
    /// The `show service-policy inspect esmtp` text.
    pub show: String,
    /// Refused and evicted sessions, stress mode.
    #[serde(default)]
    pub admission: AdmissionSnapshot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CriterionView {
    pub criterion: String,
    pub action: String,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn policy() -> EsmtpPolicy {
        crate::config::Policy::parse(
            std::path::Path::new("test.toml"),
            "[esmtp]\n[[esmtp.match]]\nmatch = \"cmd verb VRFY\"\naction = \"drop-connection log\"\n",
        )
        .unwrap()
        .esmtp
    }

    /// A real engine session counts into the daemon's state.
    #[test]
    fn a_session_moves_the_counters() {
        let state = Arc::new(EsmtpState::new(policy(), AuditLog::off()));
        let peers = Peers {
            client: "198.18.0.2:40000".parse().unwrap(),
            server: "198.18.1.25:25".parse().unwrap(),
        };
        let mut guard = state.session_started();
        assert_eq!(state.sessions_active(), 1);
        let mut s = state.new_session(peers);
        let now = Instant::now();
        let mut out = inspector_esmtp::Output::default();
        s.on_server_data(b"220 mx ESMTP\r\n", now, &mut out);
        s.on_client_data(b"VRFY root\r\n", now, &mut out);
        assert_eq!(out.close, Some(Close::Fin));
        guard.set_outcome(SessionOutcome::from_close(out.close));
        drop(guard);
        let snap = state.snapshot();
        assert_eq!(snap.sessions_active, 0);
        assert_eq!(snap.sessions["dropped"], 1);
        assert_eq!(snap.drop, 1);
        let vrfy = snap
            .criteria
            .iter()
            .find(|c| c.criterion == "match cmd verb VRFY")
            .unwrap();
        assert_eq!(
            (vrfy.action.as_str(), vrfy.count),
            ("drop-connection log", 1)
        );
        assert!(snap.show.contains("drop 1"), "{}", snap.show);
    }
}
