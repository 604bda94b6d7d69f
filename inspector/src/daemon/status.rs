//! What `inspector status` shows of a running daemon: its version, pid and
//! uptime, the policy it runs (path and SHA-256, when it was loaded, the
//! last reload), each interface with its XDP mode and steering, its
//! readiness and the proxy's heartbeat. The daemon keeps a [`Board`] up to
//! date; the stats socket answers `status` with a [`Status`] read from it.

use std::{
    path::Path,
    sync::Mutex,
    time::{Instant, SystemTime},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{observe::audit::rfc3339, proxy::upstream::UpstreamStatus};

/// Where the daemon is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Readiness {
    /// Loading, attaching, waiting for the proxy's first heartbeat.
    Starting,
    /// Inspecting; `READY=1` was sent.
    Ready,
    /// Re-reading the policy (sessions go on meanwhile).
    Reloading,
    /// Draining: the listener is closed, sessions are finishing.
    Stopping,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyInfo {
    /// `None`: the built-in default.
    pub path: Option<String>,
    /// Of the file's bytes as read (compare with `sha256sum FILE`).
    pub sha256: String,
    pub loaded: String,
    pub exemptions: usize,
    pub servers: usize,
    pub esmtp_rules: usize,
    /// The inspected TCP ports in effect (a change waits for a restart).
    #[serde(default)]
    pub ports: Vec<u16>,
}

impl PolicyInfo {
    pub fn new(path: Option<&Path>, text: &[u8], exemptions: usize, servers: usize) -> Self {
        Self {
            path: path.map(|p| p.display().to_string()),
            sha256: sha256_hex(text),
            loaded: rfc3339(SystemTime::now()),
            exemptions,
            servers,
            esmtp_rules: 0,
            ports: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Interface {
    pub name: String,
    /// `native` or `generic`.
    pub xdp: String,
    /// `attached` (TC ingress, marking for the proxy) or `off` (`--no-proxy`).
    pub steering: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Reload {
    pub time: String,
    pub ok: bool,
    /// Why a reload was refused (file:line:column: field: message).
    pub error: Option<String>,
}

/// One daemon's status, as `inspector status --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub started: String,
    pub uptime_secs: u64,
    pub state: Readiness,
    pub ready: bool,
    pub policy: PolicyInfo,
    pub interfaces: Vec<Interface>,
    pub proxy: bool,
    /// `open` or `closed`.
    pub fail: String,
    /// Milliseconds since the proxy's loop last wrote its heartbeat; `None`
    /// before the first (or without a proxy).
    pub heartbeat_age_ms: Option<u64>,
    pub sessions_active: u64,
    pub last_reload: Option<Reload>,
    pub watchdog: bool,
    /// The upstream mode in force (how the proxy connects to the servers,
    /// what they see of the clients, and why); `None` without a proxy.
    #[serde(default)]
    pub upstream: Option<UpstreamStatus>,
}

/// What the daemon updates as it goes.
pub struct Board {
    started: Instant,
    started_wall: SystemTime,
    inner: Mutex<Inner>,
}

struct Inner {
    state: Readiness,
    policy: PolicyInfo,
    interfaces: Vec<Interface>,
    proxy: bool,
    fail: String,
    last_beat: Option<Instant>,
    last_reload: Option<Reload>,
    watchdog: bool,
}

impl Board {
    pub fn new(policy: PolicyInfo, proxy: bool, fail: &str, watchdog: bool) -> Self {
        Self {
            started: Instant::now(),
            started_wall: SystemTime::now(),
            inner: Mutex::new(Inner {
                state: Readiness::Starting,
                policy,
                interfaces: Vec::new(),
                proxy,
                fail: fail.to_string(),
                last_beat: None,
                last_reload: None,
                watchdog,
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn set_state(&self, state: Readiness) {
        self.with(|i| i.state = state);
    }

    pub fn state(&self) -> Readiness {
        self.with(|i| i.state)
    }

    pub fn add_interface(&self, name: &str, xdp: &str) {
        self.with(|i| {
            i.interfaces.push(Interface {
                name: name.to_string(),
                xdp: xdp.to_string(),
                steering: "off".into(),
            })
        });
    }

    pub fn set_steering(&self, name: &str, steering: &str) {
        self.with(|i| {
            for iface in i.interfaces.iter_mut().filter(|i| i.name == name) {
                iface.steering = steering.to_string();
            }
        });
    }

    pub fn beat(&self) {
        self.with(|i| i.last_beat = Some(Instant::now()));
    }

    pub fn reloaded(&self, policy: Option<(PolicyInfo, String)>, error: Option<String>) {
        self.with(|i| {
            if let Some((policy, fail)) = policy {
                i.policy = policy;
                i.fail = fail;
            }
            i.last_reload = Some(Reload {
                time: rfc3339(SystemTime::now()),
                ok: error.is_none(),
                error,
            });
        });
    }

    pub fn set_esmtp_rules(&self, n: usize, ports: &[u16]) {
        self.with(|i| {
            i.policy.esmtp_rules = n;
            i.policy.ports = ports.to_vec();
        });
    }

    pub fn snapshot(&self, sessions_active: u64) -> Status {
        self.with(|i| Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            started: rfc3339(self.started_wall),
            uptime_secs: self.started.elapsed().as_secs(),
            state: i.state,
            ready: i.state == Readiness::Ready || i.state == Readiness::Reloading,
            policy: i.policy.clone(),
            interfaces: i.interfaces.clone(),
            proxy: i.proxy,
            fail: i.fail.clone(),
            heartbeat_age_ms: i.last_beat.map(|t| t.elapsed().as_millis() as u64),
            sessions_active,
            last_reload: i.last_reload.clone(),
            watchdog: i.watchdog,
            upstream: None,
        })
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_sha256sums() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn ready_only_after_start() {
        let b = Board::new(PolicyInfo::new(None, b"", 0, 0), true, "open", false);
        assert!(!b.snapshot(0).ready);
        b.add_interface("outside", "native");
        b.set_steering("outside", "attached");
        b.set_state(Readiness::Ready);
        let s = b.snapshot(2);
        assert!(s.ready && s.sessions_active == 2);
        assert_eq!(s.interfaces[0].steering, "attached");
        assert_eq!(s.heartbeat_age_ms, None);
    }
}
