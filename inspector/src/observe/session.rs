//! One record per session in the audit sinks, as Suricata's `eve.json`
//! smtp events and Postfix's log lines let an operator answer "what
//! happened to that mail at 10:14?": the session id (which every policy
//! record of the session carries too), both ends as separate fields, the
//! HELO name, TLS, each transaction (MAIL FROM, recipients, size, the
//! server's final reply), the criteria that fired, the outcome and the
//! duration. The engine says what it saw (`Session::record`); the proxy
//! keeps a [`SessionTrace`] per session and hands the record to the audit
//! log when the session ends.

use std::{
    fmt,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use inspector_esmtp::{AuditEvent, AuditKind, Peers, SessionRecord};

use super::audit::{AuditLog, rfc3339};

/// Criteria kept per session record; more are counted.
const MAX_CRITERIA: usize = 16;

/// A session's id: unique per daemon run, and across runs (its high half
/// is the second the daemon started). Shown as 16 hex digits, since JSON
/// readers lose precision past 2^53.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Hands out session ids.
#[derive(Debug)]
pub struct SessionIds {
    next: AtomicU64,
}

impl Default for SessionIds {
    fn default() -> Self {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Self {
            next: AtomicU64::new(started << 32),
        }
    }
}

impl SessionIds {
    pub fn next(&self) -> SessionId {
        SessionId(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

/// The session record, as the sinks write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    pub id: SessionId,
    pub peers: Peers,
    pub started: SystemTime,
    pub duration_ms: u64,
    pub seen: SessionRecord,
    /// STARTTLS was passed through and the server started TLS: the rest of
    /// the session was relayed opaquely (the inspector never terminates TLS).
    pub tls: bool,
    /// Each criterion that fired (`header line length gt 998`), once.
    pub criteria: Vec<String>,
    /// Criteria past [`MAX_CRITERIA`], not kept.
    pub more_criteria: u64,
    /// How it ended: `closed`, `dropped`, `reset`, `timeout`, `shutdown`,
    /// `unreachable`, `broken`, `evicted`, `refused`.
    pub outcome: &'static str,
}

/// What the proxy keeps of a session for its record, from its start.
pub struct SessionTrace {
    pub id: SessionId,
    peers: Peers,
    started: SystemTime,
    clock: Instant,
    criteria: Vec<String>,
    more_criteria: u64,
}

impl SessionTrace {
    pub fn new(id: SessionId, peers: Peers) -> Self {
        Self {
            id,
            peers,
            started: SystemTime::now(),
            clock: Instant::now(),
            criteria: Vec::new(),
            more_criteria: 0,
        }
    }

    /// The engine's policy records: noted (the criteria) and queued with
    /// the session's id. Never blocks.
    pub fn audit(&mut self, log: &AuditLog, events: Vec<AuditEvent>) {
        for event in events {
            if let AuditKind::Classification(c) = &event.kind
                && !self.criteria.contains(&c.criterion)
            {
                if self.criteria.len() < MAX_CRITERIA {
                    self.criteria.push(c.criterion.clone());
                } else {
                    self.more_criteria += 1;
                }
            }
            log.record_in(self.id, event);
        }
    }

    /// The session ended: its record goes to the sink. `seen` is `None`
    /// when the engine never ran (the server could not be reached).
    /// (Once per session: it takes the criteria noted so far.)
    pub fn finish(
        &mut self,
        log: &AuditLog,
        seen: Option<&SessionRecord>,
        tls: bool,
        outcome: &'static str,
    ) {
        log.record_session(SessionSummary {
            id: self.id,
            peers: self.peers,
            started: self.started,
            duration_ms: u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX),
            seen: seen.cloned().unwrap_or_default(),
            tls,
            criteria: std::mem::take(&mut self.criteria),
            more_criteria: self.more_criteria,
            outcome,
        });
    }
}

impl SessionSummary {
    /// The JSON object (`event_type` `session`), written at `time` (its end).
    pub fn json(&self, time: SystemTime) -> serde_json::Value {
        let (src, dest) = (self.peers.client, self.peers.server);
        let transactions: Vec<serde_json::Value> = self
            .seen
            .transactions
            .iter()
            .map(|t| {
                serde_json::json!({
                    "mail_from": t.mail_from,
                    "rcpt_count": t.recipients,
                    "size": t.size,
                    "reply": t.reply,
                })
            })
            .collect();
        let mut v = serde_json::json!({
            "time": rfc3339(time),
            "event_type": "session",
            "session_id": self.id.to_string(),
            "src_ip": ip(src),
            "src_port": src.port(),
            "dest_ip": ip(dest),
            "dest_port": dest.port(),
            "start": rfc3339(self.started),
            "duration_ms": self.duration_ms,
            "helo": self.seen.helo,
            "tls": self.tls,
            "transactions": transactions,
            "criteria": self.criteria,
            "outcome": self.outcome,
        });
        if self.seen.more_transactions > 0 {
            v["more_transactions"] = self.seen.more_transactions.into();
        }
        if self.more_criteria > 0 {
            v["more_criteria"] = self.more_criteria.into();
        }
        v
    }

    /// The syslog message text after the tag: one line, `key=value` pairs
    /// in the order of the JSON record (values with spaces quoted).
    pub fn text(&self) -> String {
        let (src, dest) = (self.peers.client, self.peers.server);
        let mut out = format!(
            "session {} src {}/{} dest {}/{} helo {} tls {} duration {}ms outcome {}",
            self.id,
            ip(src),
            src.port(),
            ip(dest),
            dest.port(),
            quoted(self.seen.helo.as_deref().unwrap_or("-")),
            if self.tls { "yes" } else { "no" },
            self.duration_ms,
            self.outcome
        );
        for (i, t) in self.seen.transactions.iter().enumerate() {
            out += &format!(
                "; transaction {} from <{}> rcpts {} size {} reply {}",
                i + 1,
                t.mail_from,
                t.recipients,
                t.size.map_or("-".into(), |s| s.to_string()),
                quoted(t.reply.as_deref().unwrap_or("-"))
            );
        }
        if !self.criteria.is_empty() {
            let criteria: Vec<String> = self.criteria.iter().map(|c| quoted(c)).collect();
            out += &format!("; criteria {}", criteria.join(", "));
        }
        out
    }
}

/// An address as the record shows it (an IPv4-mapped IPv6 one as IPv4).
fn ip(a: SocketAddr) -> String {
    match a {
        SocketAddr::V6(v6) => v6
            .ip()
            .to_ipv4_mapped()
            .map_or_else(|| v6.ip().to_string(), |v4| v4.to_string()),
        SocketAddr::V4(v4) => v4.ip().to_string(),
    }
}

fn quoted(s: &str) -> String {
    if s.contains(' ') || s.contains('"') {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use inspector_esmtp::TransactionRecord;

    use super::*;

    fn summary() -> SessionSummary {
        SessionSummary {
            id: SessionId(0x6a3f_1c20_0000_0001),
            peers: Peers {
                client: "198.18.0.2:40000".parse().unwrap(),
                server: "198.18.1.25:25".parse().unwrap(),
            },
            started: UNIX_EPOCH,
            duration_ms: 120,
            seen: SessionRecord {
                helo: Some("client.test".into()),
                transactions: vec![TransactionRecord {
                    mail_from: "a@client.test".into(),
                    recipients: 3,
                    size: Some(200),
                    reply: Some("250 2.0.0 Ok: queued as 1A".into()),
                }],
                more_transactions: 0,
            },
            tls: false,
            criteria: vec!["body line length gt 998".into()],
            more_criteria: 0,
            outcome: "closed",
        }
    }

    #[test]
    fn the_json_record_has_separate_address_fields() {
        let v = summary().json(UNIX_EPOCH);
        assert_eq!(v["event_type"], "session");
        assert_eq!(v["session_id"], "6a3f1c2000000001");
        assert_eq!(
            (v["src_ip"].as_str(), v["src_port"].as_u64()),
            (Some("198.18.0.2"), Some(40000))
        );
        assert_eq!(
            (v["dest_ip"].as_str(), v["dest_port"].as_u64()),
            (Some("198.18.1.25"), Some(25))
        );
        assert_eq!(v["transactions"][0]["rcpt_count"], 3);
        assert_eq!(v["transactions"][0]["reply"], "250 2.0.0 Ok: queued as 1A");
        assert_eq!(v["criteria"][0], "body line length gt 998");
        assert!(v.get("more_transactions").is_none());
    }

    #[test]
    fn the_text_quotes_what_has_spaces() {
        assert_eq!(
            summary().text(),
            "session 6a3f1c2000000001 src 198.18.0.2/40000 dest 198.18.1.25/25 helo client.test \
             tls no duration 120ms outcome closed; transaction 1 from <a@client.test> rcpts 3 \
             size 200 reply \"250 2.0.0 Ok: queued as 1A\"; criteria \"body line length gt 998\""
        );
    }

    #[test]
    fn ids_are_unique_and_shown_in_hex() {
        let ids = SessionIds::default();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        assert_eq!(a.to_string().len(), 16);
    }
}
