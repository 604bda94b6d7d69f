//! `[proxy]` (formerly `[engine]`): the proxy that carries flagged sessions
//! through the ESMTP engine: its limits, timeouts and failure mode.

use std::time::Duration;

use inspector_esmtp::policy::FieldError;
use serde::Deserialize;
use toml::Spanned;

use super::{Section, field_error};

/// What happens to new flagged flows when the proxy is not listening.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Forwarded to the server, uninspected.
    #[default]
    Open,
    /// Refused: the SYN is dropped, so the client's MTA keeps the message
    /// and retries later.
    Closed,
}

/// Settings of the proxy that carries flagged sessions through the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    pub fail: FailMode,
    /// The source address of the connection to the server.
    pub upstream_source: UpstreamSource,
    /// Sessions at once; more are answered `421 4.3.2` and closed.
    pub max_sessions: usize,
    pub timeouts: SessionTimeouts,
    /// How long a stop waits for sessions in DATA to finish.
    pub shutdown_grace: Duration,
}

/// Where the proxy's connection to the server comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamSource {
    /// The gateway's own address (chosen by the route to the server): the
    /// server's answers come back by ordinary routing.
    #[default]
    Gateway,
    /// The client's address (`IP_TRANSPARENT`), so a server's IP-based rules
    /// still see the client. The server's answers must reach the gateway:
    /// the steering program must run on the interface facing the servers
    /// too (`inspector run --iface OUTSIDE --iface INSIDE`), and the server's
    /// route to the clients must go through the gateway.
    Client,
}

/// Inactivity limits: how long a session may go without a byte from either
/// side, depending on where it is. RFC 5321 section 4.5.3.2 values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimeouts {
    /// Connecting to the server.
    pub connect: Duration,
    /// Until the server's greeting (RFC 5321: 5 minutes).
    pub greeting: Duration,
    /// Between commands, and waiting for a reply (RFC 5321: 5 minutes).
    pub command: Duration,
    /// Message content, and the reply to its end (RFC 5321: 3 minutes
    /// between blocks, 10 minutes for the final reply; the longer applies).
    pub data: Duration,
    /// After STARTTLS, when the engine no longer sees commands.
    pub idle: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            fail: FailMode::Open,
            upstream_source: UpstreamSource::Gateway,
            max_sessions: 1024,
            timeouts: SessionTimeouts::default(),
            shutdown_grace: Duration::from_secs(60),
        }
    }
}

impl Default for SessionTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(30),
            greeting: Duration::from_secs(300),
            command: Duration::from_secs(300),
            data: Duration::from_secs(600),
            idle: Duration::from_secs(3600),
        }
    }
}

/// The `[proxy]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProxySection {
    /// The table's name in the file, for errors: `proxy`, or `engine` for
    /// a file that still uses the old name.
    #[serde(skip, default = "ProxySection::name")]
    pub(super) table: &'static str,
    #[serde(default)]
    fail: FailMode,
    #[serde(default)]
    upstream_source: UpstreamSource,
    max_sessions: Option<Spanned<u64>>,
    connect_timeout: Option<Spanned<u64>>,
    greeting_timeout: Option<Spanned<u64>>,
    command_timeout: Option<Spanned<u64>>,
    data_timeout: Option<Spanned<u64>>,
    idle_timeout: Option<Spanned<u64>>,
    shutdown_grace: Option<Spanned<u64>>,
}

impl ProxySection {
    pub const NAME: &str = "proxy";
    /// The name `[proxy]` had before; still accepted, with a warning.
    pub const OLD_NAME: &str = "engine";

    fn name() -> &'static str {
        Self::NAME
    }
}

impl Section for ProxySection {
    type Compiled = ProxyConfig;

    fn compile(&self) -> Result<ProxyConfig, FieldError> {
        let d = ProxyConfig::default();
        let positive = |v: &Option<Spanned<u64>>, field: &str, default: u64| match v {
            None => Ok(default),
            Some(s) if *s.get_ref() == 0 || *s.get_ref() > 86_400 * 7 => Err(field_error(
                s,
                format!("{}.{field}", self.table),
                "must be between 1 and 604800",
            )),
            Some(s) => Ok(*s.get_ref()),
        };
        let secs = |v, field, default: Duration| {
            positive(v, field, default.as_secs()).map(Duration::from_secs)
        };
        Ok(ProxyConfig {
            fail: self.fail,
            upstream_source: self.upstream_source,
            max_sessions: positive(&self.max_sessions, "max-sessions", d.max_sessions as u64)?
                as usize,
            timeouts: SessionTimeouts {
                connect: secs(&self.connect_timeout, "connect-timeout", d.timeouts.connect)?,
                greeting: secs(
                    &self.greeting_timeout,
                    "greeting-timeout",
                    d.timeouts.greeting,
                )?,
                command: secs(&self.command_timeout, "command-timeout", d.timeouts.command)?,
                data: secs(&self.data_timeout, "data-timeout", d.timeouts.data)?,
                idle: secs(&self.idle_timeout, "idle-timeout", d.timeouts.idle)?,
            },
            shutdown_grace: secs(&self.shutdown_grace, "shutdown-grace", d.shutdown_grace)?,
        })
    }
}
