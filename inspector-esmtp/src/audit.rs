//! Audit records, with the syslog ids and message texts of the firewall
//! feature (108002 to 108007) so that existing log searches keep working.
//! The client is on the `outside` interface, the protected server `inside`.

use std::fmt;
use std::net::SocketAddr;

/// Offending values are cut to this many bytes in audit records.
pub const MAX_AUDIT_VALUE: usize = 128;

/// The two ends of an inspected session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peers {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub peers: Peers,
    pub kind: AuditKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditKind {
    /// 108002: compat mode replaced `|` in an address by a space.
    Replaced { data: String },
    /// 108003: a program-pipe address (`<|cmd>`); the connection is closed.
    MaliciousAddress { address: String },
    /// 108004 (an action was taken) or 108005 (log only).
    Classification(Classification),
    /// 108006: the message was bigger than MAIL FROM's SIZE= declared.
    SizeViolation { declared: u64, actual: u64 },
    /// 108007: the server accepted STARTTLS; the session is relayed opaquely.
    TlsStarted,
    /// 201013: a client was refused a session over a per-client limit (the
    /// proxy's admission, not the engine, emits it: at most once a minute
    /// per client, counting the refusals in between).
    ClientLimit(ClientLimitRecord),
}

/// Which per-client limit refused a session, and by how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLimitRecord {
    pub limit: ClientLimit,
    /// The client as the limit counts it: an address, or a network
    /// (`2001:db8:1:2::/64`).
    pub client: String,
    /// Sessions held (or opened this minute), this one included.
    pub current: u64,
    pub max: u64,
    /// Sessions of this client refused since its previous record.
    pub refused_since: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientLimit {
    /// Sessions at once.
    Sessions,
    /// New sessions per minute.
    Rate,
}

/// What matched, what was done, and the value that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub verdict: Verdict,
    pub source: Source,
    /// e.g. `header line length gt 998`, `mail-relay example.com`.
    pub criterion: String,
    /// e.g. `drop-connection log`.
    pub action: String,
    /// The offending value, cut to `MAX_AUDIT_VALUE` bytes.
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Dropped,
    Reset,
    Masked,
    RateLimited,
    /// Modern mode: a RCPT past the limit answered `452 4.5.3`.
    RejectedRecipient,
    /// `log` alone (108005).
    Received,
}

/// Which part of the policy matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The Nth `match` line, counting from 1 (the firewall's "Class N").
    Class(usize),
    /// `mail-relay` or `special-character`.
    Parameter,
    /// A protocol anomaly found by the engine itself.
    Anomaly,
}

impl AuditEvent {
    /// The firewall's syslog id.
    pub fn id(&self) -> u32 {
        match &self.kind {
            AuditKind::Replaced { .. } => 108002,
            AuditKind::MaliciousAddress { .. } => 108003,
            AuditKind::Classification(c) if c.verdict == Verdict::Received => 108005,
            AuditKind::Classification(_) => 108004,
            AuditKind::SizeViolation { .. } => 108006,
            AuditKind::TlsStarted => 108007,
            AuditKind::ClientLimit(_) => 201013,
        }
    }

    /// The firewall's syslog severity.
    pub fn severity(&self) -> u8 {
        match self.id() {
            108002 | 108003 => 2,
            201013 => 3,
            108004 => 4,
            108006 => 7,
            _ => 6,
        }
    }
}

struct Ep(SocketAddr, &'static str);

impl fmt::Display for Ep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.1, self.0.ip(), self.0.port())
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Dropped => "Dropped connection for",
            Self::Reset => "Reset connection for",
            Self::Masked => "Masked header flags for",
            Self::RateLimited => "Rate-limited",
            Self::RejectedRecipient => "Rejected recipient for",
            Self::Received => "Received",
        })
    }
}

/// The firewall's message text (without the `%ASA-N-ID:` prefix).
impl fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let client = Ep(self.peers.client, "outside");
        let server = Ep(self.peers.server, "inside");
        match &self.kind {
            AuditKind::Replaced { data } => write!(
                f,
                "SMTP replaced string: out {} in {} data: {data}",
                self.peers.client.ip(),
                self.peers.server.ip()
            ),
            AuditKind::MaliciousAddress { address } => write!(
                f,
                "Terminating ESMTP connection; malicious pattern detected in the mail address \
                 from {client} to {server}. Mail Address: {address}"
            ),
            AuditKind::Classification(c) => {
                write!(
                    f,
                    "ESMTP Classification: {} ESMTP Request from {client} to {server}; ",
                    c.verdict
                )?;
                match c.source {
                    Source::Class(n) => write!(f, "matched Class {n}: {}", c.criterion),
                    Source::Parameter => write!(f, "matched ESMTP Parameter: {}", c.criterion),
                    Source::Anomaly => write!(f, "anomaly: {}", c.criterion),
                }
            }
            AuditKind::SizeViolation { declared, actual } => write!(
                f,
                "Detected ESMTP size violation from {client} to {server}; declared size is: \
                 {declared}, actual size is {actual}"
            ),
            AuditKind::TlsStarted => {
                write!(
                    f,
                    "TLS started on ESMTP session between client {client} and server {server}"
                )
            }
            AuditKind::ClientLimit(r) => {
                let (what, unit) = match r.limit {
                    ClientLimit::Sessions => ("connection limit", ""),
                    ClientLimit::Rate => ("connection rate limit", " per minute"),
                };
                write!(
                    f,
                    "Per-client {what} exceeded {}/{}{unit} for input packet from {client} to \
                     {server} on interface outside; client {}",
                    r.current, r.max, r.client
                )?;
                if r.refused_since > 1 {
                    write!(
                        f,
                        ", {} sessions refused since the last record",
                        r.refused_since
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// `bytes` as text for a record: lossy UTF-8, control characters escaped,
/// cut to `MAX_AUDIT_VALUE` bytes.
pub fn excerpt(bytes: &[u8]) -> String {
    let cut = bytes.get(..MAX_AUDIT_VALUE).unwrap_or(bytes);
    let mut s = String::new();
    for c in String::from_utf8_lossy(cut).chars() {
        if c.is_control() {
            s.extend(c.escape_default());
        } else {
            s.push(c);
        }
    }
    if cut.len() < bytes.len() {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> Peers {
        Peers {
            client: "198.18.0.1:40000".parse().unwrap(),
            server: "198.18.1.1:25".parse().unwrap(),
        }
    }

    #[test]
    fn renders_original_texts() {
        let ev = |kind| AuditEvent {
            peers: peers(),
            kind,
        };
        let c = ev(AuditKind::Classification(Classification {
            verdict: Verdict::Dropped,
            source: Source::Class(4),
            criterion: "header line length gt 998".into(),
            action: "drop-connection log".into(),
            value: "1200".into(),
        }));
        assert_eq!(c.id(), 108004);
        assert_eq!(
            c.to_string(),
            "ESMTP Classification: Dropped connection for ESMTP Request from outside:198.18.0.1/40000 \
             to inside:198.18.1.1/25; matched Class 4: header line length gt 998"
        );
        let s = ev(AuditKind::SizeViolation {
            declared: 10,
            actual: 20,
        });
        assert_eq!((s.id(), s.severity()), (108006, 7));
        assert!(
            s.to_string()
                .ends_with("declared size is: 10, actual size is 20")
        );
        let r = ev(AuditKind::Replaced {
            data: "MAIL FROM:<a b@c>".into(),
        });
        assert_eq!(
            r.to_string(),
            "SMTP replaced string: out 198.18.0.1 in 198.18.1.1 data: MAIL FROM:<a b@c>"
        );
        assert_eq!(ev(AuditKind::TlsStarted).id(), 108007);
        let l = ev(AuditKind::ClientLimit(ClientLimitRecord {
            limit: ClientLimit::Sessions,
            client: "198.18.0.1".into(),
            current: 51,
            max: 50,
            refused_since: 7,
        }));
        assert_eq!((l.id(), l.severity()), (201013, 3));
        assert_eq!(
            l.to_string(),
            "Per-client connection limit exceeded 51/50 for input packet from \
             outside:198.18.0.1/40000 to inside:198.18.1.1/25 on interface outside; client \
             198.18.0.1, 7 sessions refused since the last record"
        );
        let r = ev(AuditKind::ClientLimit(ClientLimitRecord {
            limit: ClientLimit::Rate,
            client: "2001:db8::/64".into(),
            current: 31,
            max: 30,
            refused_since: 1,
        }));
        assert!(
            r.to_string()
                .starts_with("Per-client connection rate limit exceeded 31/30 per minute for"),
            "{r}"
        );
        assert!(r.to_string().ends_with("; client 2001:db8::/64"), "{r}");
    }

    #[test]
    fn excerpt_is_cut_and_escaped() {
        assert_eq!(excerpt(b"a\r\n"), "a\\r\\n");
        let long = vec![b'x'; 1000];
        assert_eq!(excerpt(&long).len(), MAX_AUDIT_VALUE + 3);
    }
}
