//! Hit counters shared by all sessions of one policy: the data behind
//! `show service-policy inspect esmtp`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::policy::EsmtpPolicy;

/// The hits of one criterion of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriterionHits {
    /// e.g. `match cmd RCPT count gt 100`, `mask-banner`.
    pub criterion: String,
    /// e.g. `drop-connection log`.
    pub action: String,
    pub hits: u64,
}

/// Counters of one policy; share one `Arc<PolicyStats>` across sessions.
#[derive(Debug, Default)]
pub struct PolicyStats {
    /// SMTP commands and replies inspected (the firewall's `packet N`).
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
    /// Messages with MIME the scanner cannot follow (`mime-anomaly`).
    pub mime_anomaly: AtomicU64,
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

    /// One entry per criterion of `policy` that counts its hits (the
    /// parameters first, then the `match` lines in order), with its action
    /// as the policy writes it: the rows of `show service-policy` and of
    /// the `inspector_esmtp_matches_total` metric.
    pub fn criteria(&self, policy: &EsmtpPolicy) -> Vec<CriterionHits> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = Vec::new();
        if policy.mask_banner {
            out.push(CriterionHits {
                criterion: "mask-banner".into(),
                action: "mask".into(),
                hits: get(&self.mask_banner),
            });
        }
        if let Some(relay) = &policy.mail_relay {
            out.push(CriterionHits {
                criterion: format!("mail-relay {}", relay.domain),
                action: relay.actions.to_string(),
                hits: get(&self.mail_relay),
            });
        }
        if let Some(actions) = &policy.special_character {
            out.push(CriterionHits {
                criterion: "special-character".into(),
                action: actions.to_string(),
                hits: get(&self.special_character),
            });
        }
        if let Some(actions) = &policy.mime_anomaly {
            out.push(CriterionHits {
                criterion: "mime-anomaly".into(),
                action: actions.to_string(),
                hits: get(&self.mime_anomaly),
            });
        }
        if let Some(log) = policy.allow_tls {
            out.push(CriterionHits {
                criterion: "allow-tls".into(),
                action: if log { "allow log" } else { "allow" }.into(),
                hits: get(&self.allow_tls),
            });
        }
        for (i, rule) in policy.rules.iter().enumerate() {
            out.push(CriterionHits {
                criterion: rule.text(),
                action: rule.actions.to_string(),
                hits: self.rule_hits(i),
            });
        }
        out
    }

    /// `(packet, drop, reset-drop)`: the first line of `show service-policy`.
    pub fn totals(&self) -> (u64, u64, u64) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        (get(&self.packet), get(&self.drop), get(&self.reset_drop))
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
        if let Some(actions) = &policy.mime_anomaly {
            let _ = writeln!(
                out,
                "  mime-anomaly action {actions}, count {}",
                get(&self.mime_anomaly)
            );
        }
        if let Some(log) = policy.allow_tls {
            let action = if log { " action log" } else { "" };
            let _ = writeln!(out, "  allow-tls{action}, count {}", get(&self.allow_tls));
        }
        let texts: Vec<String> = policy.rules.iter().map(|r| r.text()).collect();
        // The firewall aligns the actions in a column 36 wide.
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
