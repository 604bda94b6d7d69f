//! What the daemon does when asked: answering the stats socket (`stats`,
//! `status`, `reload`) and reloading the policy.
//!
//! A reload re-reads the policy file and applies what it says without a
//! restart: the exemptions and protected servers are made the file's again
//! (live exemptions are kept, connection counts too), the flow timeouts
//! change from the next sweep, the ESMTP policy is the one new sessions get
//! (sessions already open keep the one they started with), the kernel's
//! `fail` mode changes for the next SYN, and the audit sink is reopened (a
//! file after logrotate, a restarted syslog). A policy with an error is
//! refused whole, with its file:line:column: field, and the running one
//! stays. What only a restart can change (the proxy's sessions limit,
//! timeouts, upstream source and shutdown grace, the audit sink's kind or
//! queue) is named in the log and in the answer.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    BUILT_IN, load_policy,
    notify::Notifier,
    status::{Board, PolicyInfo, Readiness},
};
use crate::{
    config::{Cluster, FailMode, FlowTimeouts, Membership, Policy},
    kernel::{exempt::ExemptTable, limits, local_addrs::LocalAddrs, steer},
    observe::{esmtp::EsmtpState, stats_socket},
    proxy::upstream::Upstream,
};

/// A reload asked through the socket, and where its answer goes.
pub type ReloadRequest = oneshot::Sender<ReloadAnswer>;

/// The answer to `reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ReloadAnswer {
    pub ok: bool,
    /// Why the policy was refused (file:line:column: field: message).
    pub error: Option<String>,
    /// The policy now in force, when it was accepted.
    pub policy: Option<PolicyInfo>,
    /// Changed settings that take effect at the next restart only.
    pub needs_restart: Vec<String>,
}

pub fn fail_name(fail: FailMode) -> &'static str {
    match fail {
        FailMode::Open => "open",
        FailMode::Closed => "closed",
    }
}

/// The stats socket's side of the daemon.
pub struct Control {
    pub esmtp: Arc<EsmtpState>,
    pub board: Arc<Board>,
    pub reload: mpsc::Sender<ReloadRequest>,
    /// The proxy's upstream, for `status` (`None` without a proxy).
    pub upstream: Option<Arc<Upstream>>,
}

impl stats_socket::Control for Control {
    fn answer(&self, request: &str) -> serde_json::Value {
        match request {
            "stats" => serde_json::json!(self.esmtp.snapshot()),
            "status" => {
                let mut status = self.board.snapshot(self.esmtp.sessions_active());
                status.upstream = self.upstream.as_ref().map(|u| u.status());
                serde_json::json!(status)
            }
            "reload" => {
                // On a thread of the socket's own: waiting is fine.
                let (tx, rx) = oneshot::channel();
                let answer = match self.reload.blocking_send(tx) {
                    Ok(()) => rx.blocking_recv().ok(),
                    Err(_) => None,
                };
                serde_json::json!(answer.unwrap_or(ReloadAnswer {
                    ok: false,
                    error: Some("the daemon is stopping".into()),
                    policy: None,
                    needs_restart: Vec::new(),
                }))
            }
            other => serde_json::json!({"error": format!("unknown request `{other}`")}),
        }
    }
}

/// What a reload needs of the running daemon.
pub struct Reloader {
    pub pin_dir: PathBuf,
    pub path: Option<PathBuf>,
    /// `--audit` was given: the policy's `[audit] sink` does not apply.
    pub audit_override: bool,
    /// The policy in force.
    pub policy: Policy,
    pub esmtp: Arc<EsmtpState>,
    pub board: Arc<Board>,
    pub notifier: Arc<Notifier>,
    pub timeouts: watch::Sender<FlowTimeouts>,
    /// `--cluster-member`, and this host's addresses: which member of the
    /// policy's `[cluster]` this gateway is, found again on each reload.
    pub cluster_member: Option<u32>,
    pub local: Arc<LocalAddrs>,
}

/// Which member of `cluster` (from the policy at `path`) this host is.
pub fn membership(
    cluster: &Cluster,
    path: Option<&Path>,
    given: Option<u32>,
    local: &LocalAddrs,
) -> Result<Membership> {
    cluster
        .membership(given, |ip| local.contains(ip))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.unwrap_or(Path::new(BUILT_IN)).display()))
}

impl Reloader {
    /// Re-reads and applies the policy; `ebpf` is the loaded object when
    /// the proxy runs (its `fail` setting lives there).
    pub fn reload(&mut self, ebpf: Option<&mut aya::Ebpf>) -> ReloadAnswer {
        self.notifier.reloading();
        let before = self.board.state();
        self.board.set_state(Readiness::Reloading);
        let answer = match self.try_reload(ebpf) {
            Ok(answer) => answer,
            Err(e) => {
                let error = format!("{e:#}");
                log::error!("reload refused, the running policy stays: {error}");
                self.board.reloaded(None, Some(error.clone()));
                ReloadAnswer {
                    ok: false,
                    error: Some(error),
                    policy: None,
                    needs_restart: Vec::new(),
                }
            }
        };
        self.board.set_state(before);
        self.notifier.ready(&format!(
            "reloaded: {}",
            if answer.ok { "ok" } else { "refused" }
        ));
        answer
    }

    fn try_reload(&mut self, ebpf: Option<&mut aya::Ebpf>) -> Result<ReloadAnswer> {
        let (new, text) = load_policy(self.path.as_deref())?;
        // Before anything applies: a policy whose member cannot be told is
        // refused whole.
        let member = membership(
            &new.cluster,
            self.path.as_deref(),
            self.cluster_member,
            &self.local,
        )?;
        ExemptTable::open(&self.pin_dir)?
            .apply_policy(&new.exempt)
            .context("applying the policy's exemptions")?;
        limits::apply_member_policy(&self.pin_dir, &new.servers, &member)
            .context("applying the policy's protected servers")?;
        self.timeouts.send_replace(new.timeouts);
        self.esmtp.replace_policy(new.esmtp.clone());
        if let Some(ebpf) = ebpf {
            steer::set_fail(ebpf, new.proxy.fail)?;
        }
        self.esmtp.audit.reopen();

        let old = &self.policy;
        let mut needs_restart = Vec::new();
        let (a, b) = (&old.proxy, &new.proxy);
        for (name, changed) in [
            ("proxy.max-sessions", a.max_sessions != b.max_sessions),
            ("proxy.workers", a.workers != b.workers),
            ("proxy timeouts", a.timeouts != b.timeouts),
            (
                "proxy.upstream-source",
                a.upstream_source != b.upstream_source,
            ),
            ("proxy.shutdown-grace", a.shutdown_grace != b.shutdown_grace),
            (
                "audit.sink",
                !self.audit_override && old.audit.sink != new.audit.sink,
            ),
            ("audit.queue", old.audit.queue != new.audit.queue),
            // The listeners and the classifier's ports are set at start.
            ("esmtp.ports", old.esmtp.ports != new.esmtp.ports),
        ] {
            if changed {
                needs_restart.push(name.to_string());
            }
        }
        if !needs_restart.is_empty() {
            log::warn!(
                "reload: {} changed; that takes effect at the next restart",
                needs_restart.join(", ")
            );
        }
        let mut info = PolicyInfo::new(
            self.path.as_deref(),
            &text,
            new.exempt.len(),
            new.servers.len(),
        );
        info.esmtp_rules = new.esmtp.rules.len();
        info.ports = old.esmtp.ports.clone();
        log::info!(
            "reloaded policy {} (sha256 {}): {} exemption(s), {} protected server(s), {} ESMTP rule(s), fail {}; open sessions keep the policy they started with",
            self.path
                .as_ref()
                .map_or(BUILT_IN.into(), |p| p.display().to_string()),
            &info.sha256[..12],
            new.exempt.len(),
            new.servers.len(),
            info.esmtp_rules,
            fail_name(new.proxy.fail),
        );
        self.board
            .reloaded(Some((info.clone(), fail_name(new.proxy.fail).into())), None);
        self.policy = new;
        Ok(ReloadAnswer {
            ok: true,
            error: None,
            policy: Some(info),
            needs_restart,
        })
    }
}
