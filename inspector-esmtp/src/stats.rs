//! Hit counters shared by all sessions of one policy: the data behind
//! `show service-policy inspect esmtp`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::policy::EsmtpPolicy;

/// Counters of one policy; share one `Arc<PolicyStats>` across sessions.
#[derive(Debug, Default)]
pub struct PolicyStats {
    /// SMTP commands and replies inspected (the original's `packet N`).
    pub packet: AtomicU64,
    /// Connections closed by `drop-connection` (or a 108003 pattern).
    pub drop: AtomicU64,
    /// Connections closed by `reset`.
    pub reset_drop: AtomicU64,
    /// Greetings masked by `mask-banner`.
    pub mask_banner: AtomicU64,
    /// Matches per `match` line, in policy order.
    pub rules: Box<[AtomicU64]>,
    pub mail_relay: AtomicU64,
    pub special_character: AtomicU64,
    /// Sessions that started TLS under `allow-tls`.
    pub allow_tls: AtomicU64,
}

impl PolicyStats {
    pub fn new(policy: &EsmtpPolicy) -> Self {
        Self {
            rules: policy.rules.iter().map(|_| AtomicU64::new(0)).collect(),
            ..Self::default()
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn rule_hit(&self, index: usize) {
        if let Some(c) = self.rules.get(index) {
            Self::bump(c);
        }
    }

    /// Hits of the `index`th rule (0-based).
    pub fn rule_hits(&self, index: usize) -> u64 {
        self.rules
            .get(index)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The `show service-policy inspect esmtp` view of `policy`, which must
    /// be the policy these counters were made for.
    pub fn render(&self, policy: &EsmtpPolicy) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Inspect: esmtp {}, packet {}, drop {}, reset-drop {}",
            policy.name,
            get(&self.packet),
            get(&self.drop),
            get(&self.reset_drop)
        );
        if policy.mask_banner {
            let _ = writeln!(out, "  mask-banner, count {}", get(&self.mask_banner));
        }
        if let Some(relay) = &policy.mail_relay {
            let _ = writeln!(
                out,
                "  mail-relay {} action {}, count {}",
                relay.domain,
                relay.actions,
                get(&self.mail_relay)
            );
        }
        if let Some(actions) = &policy.special_character {
            let _ = writeln!(
                out,
                "  special-character action {actions}, count {}",
                get(&self.special_character)
            );
        }
        if let Some(log) = policy.allow_tls {
            let action = if log { " action log" } else { "" };
            let _ = writeln!(out, "  allow-tls{action}, count {}", get(&self.allow_tls));
        }
        let texts: Vec<String> = policy.rules.iter().map(|r| r.text()).collect();
        // The original aligns the actions in a column 36 wide.
        let width = texts.iter().map(|t| t.len() + 2).max().unwrap_or(0).max(36);
        for (i, (rule, text)) in policy.rules.iter().zip(&texts).enumerate() {
            let _ = writeln!(
                out,
                "  {text:<width$}{}, packet {}",
                rule.actions,
                self.rule_hits(i)
            );
        }
        out
    }
}
