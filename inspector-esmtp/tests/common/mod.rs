//! The transcript harness: plays a scripted conversation through a Session
//! and checks the exact bytes each side receives. Every script runs twice:
//! with each write in one call, and one byte per call (a telnet user).
//! Also the policies the tests share, read as the daemon reads them.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use inspector_esmtp::policy::EsmtpPolicy;
use inspector_esmtp::{AuditEvent, Close, Output, Peers, PolicyStats, Session};

pub fn peers() -> Peers {
    Peers {
        client: "198.18.0.1:40000".parse().unwrap(),
        server: "198.18.1.1:25".parse().unwrap(),
    }
}

/// The engine's own replies, as the client sees them.
pub const UNRECOGNIZED: &str = "500 5.5.1 Command unrecognized\r\n";
pub const POLICY_CLOSE: &str = "421 4.7.0 Connection closed by security policy\r\n";
pub const SYNTAX: &str = "501 5.5.4 Syntax error in parameters or arguments\r\n";
pub const TOO_BIG: &str = "552 5.3.4 Message size exceeds fixed maximum message size\r\n";
pub const LINE_TOO_LONG: &str = "500 5.5.2 Line too long\r\n";
pub const BARE_LINE_END: &str = "550 5.5.2 Message refused: bare CR or LF next to a final dot\r\n";

/// Compiles the body of an `[esmtp]` table.
pub fn policy(esmtp_body: &str) -> EsmtpPolicy {
    EsmtpPolicy::from_toml(&format!("[esmtp]\n{esmtp_body}")).unwrap_or_else(|e| panic!("{e}"))
}

/// The default policy: `_default_esmtp_map` in modern mode.
pub fn modern() -> EsmtpPolicy {
    EsmtpPolicy::default()
}

/// The shipped policy that reproduces the firewall byte for byte.
pub fn compat() -> EsmtpPolicy {
    shipped(include_str!("../../../policies/compat.toml"))
}

/// The shipped Exchange preset.
pub fn exchange() -> EsmtpPolicy {
    shipped(include_str!("../../../policies/exchange.toml"))
}

fn shipped(text: &str) -> EsmtpPolicy {
    EsmtpPolicy::from_toml(text).unwrap_or_else(|e| panic!("{e}"))
}

/// A policy with one rule.
pub fn rule(mode: &str, criterion: &str, action: &str) -> EsmtpPolicy {
    policy(&format!(
        "mode = \"{mode}\"\n[[esmtp.match]]\nmatch = '{criterion}'\naction = \"{action}\"\n"
    ))
}

pub struct Transcript {
    pub session: Session,
    pub stats: Arc<PolicyStats>,
    pub policy: Arc<EsmtpPolicy>,
    bytewise: bool,
    pub now: Instant,
    to_client: Vec<u8>,
    to_server: Vec<u8>,
    pub audit: Vec<AuditEvent>,
    pub close: Option<Close>,
    pub opaque: bool,
    /// Passed to every call, as the proxy does: each call clears it.
    out: Output,
}

impl Transcript {
    pub fn new(policy: EsmtpPolicy, bytewise: bool) -> Self {
        let policy = Arc::new(policy);
        let stats = Arc::new(PolicyStats::new(&policy));
        Self {
            session: Session::new(policy.clone(), stats.clone(), peers()),
            stats,
            policy,
            bytewise,
            now: Instant::now(),
            to_client: Vec::new(),
            to_server: Vec::new(),
            audit: Vec::new(),
            close: None,
            opaque: false,
            out: Output::default(),
        }
    }

    fn take(&mut self) {
        let out = &mut self.out;
        self.to_client.extend_from_slice(&out.to_client);
        self.to_server.extend_from_slice(&out.to_server);
        self.audit.append(&mut out.audit);
        if out.close.is_some() {
            assert!(self.close.is_none(), "closed twice");
            self.close = out.close;
        }
        self.opaque |= out.opaque;
    }

    fn feed(&mut self, bytes: &[u8], client: bool) {
        let chunk = if self.bytewise { 1 } else { bytes.len().max(1) };
        for piece in bytes.chunks(chunk) {
            if client {
                self.session.on_client_data(piece, self.now, &mut self.out);
            } else {
                self.session.on_server_data(piece, self.now, &mut self.out);
            }
            self.take();
        }
    }

    /// The client sends `bytes`.
    pub fn c(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        self.feed(bytes.as_ref(), true);
        self
    }

    /// The server sends `bytes`.
    pub fn s(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        self.feed(bytes.as_ref(), false);
        self
    }

    /// The server got exactly `want` since the last check.
    pub fn server_got(&mut self, want: impl AsRef<[u8]>) -> &mut Self {
        let got = std::mem::take(&mut self.to_server);
        assert_eq!(show(&got), show(want.as_ref()), "bytes to the server");
        self
    }

    /// The client got exactly `want` since the last check.
    pub fn client_got(&mut self, want: impl AsRef<[u8]>) -> &mut Self {
        let got = std::mem::take(&mut self.to_client);
        assert_eq!(show(&got), show(want.as_ref()), "bytes to the client");
        self
    }

    /// Everything the server got since the last check.
    pub fn take_server(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.to_server)
    }

    /// A client command the server gets unchanged.
    pub fn pass(&mut self, cmd: &str) -> &mut Self {
        self.c(cmd).server_got(cmd).client_got("")
    }

    /// A server reply the client gets unchanged.
    pub fn reply(&mut self, reply: &str) -> &mut Self {
        self.s(reply).client_got(reply).server_got("")
    }

    /// Audit ids since the last check.
    pub fn audit_ids(&mut self) -> Vec<u32> {
        self.audit.drain(..).map(|a| a.id()).collect()
    }

    pub fn audit_texts(&mut self) -> Vec<String> {
        self.audit.drain(..).map(|a| a.to_string()).collect()
    }

    pub fn later(&mut self, d: Duration) -> &mut Self {
        self.now += d;
        self
    }

    pub fn client_eof(&mut self) -> &mut Self {
        self.session.on_client_eof(self.now, &mut self.out);
        self.take();
        self
    }

    /// Greeting and EHLO with the given extension lines (`250-` added).
    pub fn hello(&mut self, extensions: &[&str]) -> &mut Self {
        self.s("220 mx.example.net ESMTP Postfix\r\n");
        self.to_client.clear();
        self.pass("EHLO client.example\r\n");
        let mut reply = String::from("250");
        reply.push(if extensions.is_empty() { ' ' } else { '-' });
        reply.push_str("mx.example.net\r\n");
        for (i, e) in extensions.iter().enumerate() {
            let sep = if i + 1 == extensions.len() { ' ' } else { '-' };
            reply.push_str(&format!("250{sep}{e}\r\n"));
        }
        self.s(reply);
        self.to_client.clear();
        self
    }
}

/// Bytes as readable text for assertion messages.
pub fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `script` whole-write and byte-by-byte.
pub fn both(policy: impl Fn() -> EsmtpPolicy, script: impl Fn(&mut Transcript)) {
    for bytewise in [false, true] {
        let mut t = Transcript::new(policy(), bytewise);
        script(&mut t);
    }
}

/// MAIL + RCPT + DATA accepted, ready for content (server without PIPELINING).
pub fn to_data(t: &mut Transcript) {
    t.pass("MAIL FROM:<a@client.example>\r\n")
        .reply("250 2.1.0 Ok\r\n");
    t.pass("RCPT TO:<b@mx.example.net>\r\n")
        .reply("250 2.1.5 Ok\r\n");
    t.pass("DATA\r\n")
        .reply("354 End data with <CR><LF>.<CR><LF>\r\n");
}

pub fn second() -> Duration {
    Duration::from_secs(1)
}
