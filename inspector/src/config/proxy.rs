//! `[proxy]` (formerly `[engine]`): the proxy that carries flagged sessions
//! through the ESMTP engine: its limits, timeouts and failure mode, and
//! what one client may take of it (per-client limits, stress mode).

use std::time::Duration;

use inspector_esmtp::policy::{EsmtpPolicy, FieldError};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{Section, exempt::parse_network, field_error};

/// What happens to new flagged flows when the proxy is not listening.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Forwarded to the server, uninspected.
    #[default]
    Open,
    /// Refused: the SYN is answered with a RST, so the client's MTA keeps
    /// the message and retries later.
    Closed,
}

/// The most `workers` a policy may ask for.
pub const MAX_WORKERS: u64 = 1024;

/// Settings of the proxy that carries flagged sessions through the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    pub fail: FailMode,
    /// The source address of the connection to the server.
    pub upstream_source: UpstreamSource,
    /// Sessions at once; more are answered `421 4.3.2` and closed.
    pub max_sessions: usize,
    /// Proxy workers (threads, each with its own listener); `None`: one per
    /// core.
    pub workers: Option<usize>,
    pub timeouts: SessionTimeouts,
    /// How long a stop waits for sessions in DATA to finish.
    pub shutdown_grace: Duration,
    /// What one client may hold and open.
    pub clients: ClientLimits,
    /// When the proxy counts as loaded, and what changes then.
    pub stress: StressPolicy,
}

/// What one client may take of the proxy. A client is its address, or for
/// IPv6 (and, if set, IPv4) the network of `prefix_v6` (`prefix_v4`) bits
/// around it, so a host that rotates addresses inside its /64 counts once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLimits {
    /// Sessions one client may hold at once (Postfix's
    /// `smtpd_client_connection_count_limit`); 0: no limit.
    pub sessions: usize,
    /// New sessions one client may open per minute (Postfix's
    /// `smtpd_client_connection_rate_limit` with `anvil_rate_time_unit =
    /// 60s`); 0: no limit.
    pub rate: u32,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    /// Clients the per-client limits do not apply to (Postfix's
    /// `smtpd_client_event_limit_exceptions`).
    pub exceptions: Vec<IpNet>,
    /// A client at `sessions` has its next SYNs dropped in XDP, before a
    /// socket exists (`false`: the proxy accepts and answers them `421`).
    pub in_kernel: bool,
}

/// Stress mode: above `threshold` percent of `max-sessions` (or of the
/// memory budget), the greeting, command and idle timeouts shrink to
/// `timeout`, as Postfix's `smtpd_timeout` does under stress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StressPolicy {
    /// Percent of `max-sessions` or of the memory budget; 0: never.
    pub threshold: u8,
    pub timeout: Duration,
    /// Bytes the sessions may hold before the proxy counts as loaded;
    /// `None`: `max-sessions` times the bound of one session, so the count of
    /// sessions decides.
    pub memory_budget: Option<u64>,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            sessions: 50,
            rate: 0,
            prefix_v4: 32,
            prefix_v6: 64,
            exceptions: Vec::new(),
            in_kernel: true,
        }
    }
}

impl Default for StressPolicy {
    fn default() -> Self {
        Self {
            threshold: 80,
            timeout: Duration::from_secs(10),
            memory_budget: None,
        }
    }
}

/// How the proxy's connection to the server is opened and introduced, so
/// that the server sees the real client (see docs/proxy.md, "What the
/// server sees").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamSource {
    /// Not said (or `"auto"`): transparent ([`Self::Client`]) for each
    /// server whose return path the daemon verifies, else [`Self::Gateway`]
    /// for that server, with a warning in the log and in `inspector status`.
    #[default]
    Auto,
    /// The gateway's own address (chosen by the route to the server): the
    /// server's answers come back by ordinary routing, and the server sees
    /// one address for every client.
    Gateway,
    /// The client's address (`IP_TRANSPARENT`), so the server sees the
    /// client. The server's answers, addressed to the client, must reach
    /// the gateway (its route to the clients goes through it); the daemon
    /// attaches the return steering to the interface of the route to each
    /// server and refuses to start when a protected server's return path
    /// fails its probe.
    Client,
    /// The gateway's address, then Postfix's `XCLIENT` with the client's
    /// address, port and HELO name after the server's greeting, before the
    /// client's first command (the server must offer XCLIENT to the gateway).
    Xclient,
    /// The gateway's address, and a PROXY protocol v2 header with the
    /// client's address first (Postfix `smtpd_upstream_proxy_protocol =
    /// haproxy`).
    Proxy,
}

impl UpstreamSource {
    /// As the policy file spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Gateway => "gateway",
            Self::Client => "client",
            Self::Xclient => "xclient",
            Self::Proxy => "proxy",
        }
    }
}

impl std::fmt::Display for UpstreamSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the server cannot tell apart when it sees the gateway's address
/// for every client: said wherever the mode is `gateway`.
pub const GATEWAY_WARNING: &str = "the mail server sees the gateway's address for every client: \
SPF checks the gateway and fails, DNS blocklists look up the gateway and never match, \
per-client limits (anvil, postscreen) count all clients as one, and a server that trusts \
the gateway (mynetworks) relays for every client; use the default (transparent), \
\"xclient\" or \"proxy\" (docs/proxy.md)";

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
            upstream_source: UpstreamSource::Auto,
            max_sessions: 1024,
            workers: None,
            timeouts: SessionTimeouts::default(),
            shutdown_grace: Duration::from_secs(60),
            clients: ClientLimits::default(),
            stress: StressPolicy::default(),
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
    upstream_source: Option<Spanned<UpstreamSource>>,
    max_sessions: Option<Spanned<u64>>,
    workers: Option<Spanned<u64>>,
    connect_timeout: Option<Spanned<u64>>,
    greeting_timeout: Option<Spanned<u64>>,
    command_timeout: Option<Spanned<u64>>,
    data_timeout: Option<Spanned<u64>>,
    idle_timeout: Option<Spanned<u64>>,
    shutdown_grace: Option<Spanned<u64>>,
    per_client_sessions: Option<Spanned<u64>>,
    per_client_rate: Option<Spanned<u64>>,
    client_prefix_v4: Option<Spanned<u64>>,
    client_prefix_v6: Option<Spanned<u64>>,
    #[serde(default)]
    per_client_exceptions: Vec<Spanned<String>>,
    per_client_in_kernel: Option<bool>,
    stress_threshold: Option<Spanned<u64>>,
    stress_timeout: Option<Spanned<u64>>,
    /// MiB.
    memory_budget: Option<Spanned<u64>>,
}

impl ProxySection {
    pub const NAME: &str = "proxy";
    /// The name `[proxy]` had before; still accepted, with a warning.
    pub const OLD_NAME: &str = "engine";

    fn name() -> &'static str {
        Self::NAME
    }

    /// What the proxy's settings require of the rest of the policy: with
    /// `xclient`, a client's own XCLIENT must never reach the server, which
    /// trusts the gateway's connection with it.
    pub(super) fn check_against(&self, esmtp: &EsmtpPolicy) -> Result<(), FieldError> {
        let Some(source) = &self.upstream_source else {
            return Ok(());
        };
        if *source.get_ref() == UpstreamSource::Xclient
            && let Some(verb) = esmtp
                .allow_verbs
                .iter()
                .find(|v| matches!(v.as_str(), "XCLIENT" | "XFORWARD"))
        {
            return Err(field_error(
                source,
                format!("{}.upstream-source", self.table),
                format!(
                    "\"xclient\" with `{verb}` in the esmtp policy's allowed verbs: a client could \
                     send its own {verb} through the gateway, which the server trusts with it"
                ),
            ));
        }
        Ok(())
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
        let within =
            |v: &Option<Spanned<u64>>, field: &str, range: (u64, u64), default: u64| match v {
                None => Ok(default),
                Some(s) if !(range.0..=range.1).contains(s.get_ref()) => Err(field_error(
                    s,
                    format!("{}.{field}", self.table),
                    format!("must be between {} and {}", range.0, range.1),
                )),
                Some(s) => Ok(*s.get_ref()),
            };
        let dc = &d.clients;
        let clients = ClientLimits {
            sessions: within(
                &self.per_client_sessions,
                "per-client-sessions",
                (0, 1_000_000),
                dc.sessions as u64,
            )? as usize,
            rate: within(
                &self.per_client_rate,
                "per-client-rate",
                (0, 1_000_000),
                u64::from(dc.rate),
            )? as u32,
            prefix_v4: within(
                &self.client_prefix_v4,
                "client-prefix-v4",
                (1, 32),
                u64::from(dc.prefix_v4),
            )? as u8,
            prefix_v6: within(
                &self.client_prefix_v6,
                "client-prefix-v6",
                (1, 128),
                u64::from(dc.prefix_v6),
            )? as u8,
            exceptions: self
                .per_client_exceptions
                .iter()
                .enumerate()
                .map(|(i, net)| {
                    parse_network(net.get_ref()).map_err(|m| {
                        field_error(net, format!("{}.per-client-exceptions[{i}]", self.table), m)
                    })
                })
                .collect::<Result<_, _>>()?,
            in_kernel: self.per_client_in_kernel.unwrap_or(dc.in_kernel),
        };
        let ds = d.stress;
        let stress = StressPolicy {
            threshold: within(
                &self.stress_threshold,
                "stress-threshold",
                (0, 100),
                u64::from(ds.threshold),
            )? as u8,
            timeout: secs(&self.stress_timeout, "stress-timeout", ds.timeout)?,
            memory_budget: match &self.memory_budget {
                None => None,
                Some(_) => {
                    Some(within(&self.memory_budget, "memory-budget", (1, 1 << 20), 0)? << 20)
                }
            },
        };
        Ok(ProxyConfig {
            fail: self.fail,
            upstream_source: self
                .upstream_source
                .as_ref()
                .map_or(UpstreamSource::Auto, |s| *s.get_ref()),
            max_sessions: positive(&self.max_sessions, "max-sessions", d.max_sessions as u64)?
                as usize,
            workers: match &self.workers {
                None => None,
                Some(_) => Some(within(&self.workers, "workers", (1, MAX_WORKERS), 1)? as usize),
            },
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
            clients,
            stress,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use super::super::{ConfigError, Policy};

    fn parse(text: &str) -> Result<Policy, ConfigError> {
        Policy::parse(Path::new("p.toml"), text)
    }

    #[test]
    fn client_limits_and_stress_have_postfix_like_defaults() {
        let p = parse("").unwrap().proxy;
        assert_eq!(p.clients.sessions, 50);
        assert_eq!(p.clients.rate, 0);
        assert_eq!((p.clients.prefix_v4, p.clients.prefix_v6), (32, 64));
        assert!(p.clients.exceptions.is_empty());
        assert!(p.clients.in_kernel);
        assert_eq!(p.stress.threshold, 80);
        assert_eq!(p.stress.timeout, Duration::from_secs(10));
        assert_eq!(p.stress.memory_budget, None);
        assert_eq!(p.workers, None);
        assert_eq!(
            parse("[proxy]\nworkers = 3\n").unwrap().proxy.workers,
            Some(3)
        );
    }

    #[test]
    fn client_limits_and_stress_parse() {
        let p = parse(
            "[proxy]\nper-client-sessions = 10\nper-client-rate = 30\nclient-prefix-v4 = 24\n\
             client-prefix-v6 = 56\nper-client-exceptions = [\"198.18.7.0/24\", \"2001:2::/48\"]\n\
             stress-threshold = 0\nstress-timeout = 5\nmemory-budget = 64\n\
             per-client-in-kernel = false\n",
        )
        .unwrap()
        .proxy;
        assert_eq!((p.clients.sessions, p.clients.rate), (10, 30));
        assert_eq!((p.clients.prefix_v4, p.clients.prefix_v6), (24, 56));
        let nets: Vec<String> = p.clients.exceptions.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["198.18.7.0/24", "2001:2::/48"]);
        assert!(!p.clients.in_kernel);
        assert_eq!(p.stress.threshold, 0);
        assert_eq!(p.stress.timeout, Duration::from_secs(5));
        assert_eq!(p.stress.memory_budget, Some(64 << 20));
        let off = parse("[proxy]\nper-client-sessions = 0\n").unwrap().proxy;
        assert_eq!(off.clients.sessions, 0);
    }

    #[test]
    fn bad_client_limits_name_file_line_column_and_field() {
        for (text, line, column, field, message) in [
            (
                "[proxy]\nclient-prefix-v6 = 0\n",
                2,
                20,
                "proxy.client-prefix-v6",
                "must be between 1 and 128",
            ),
            (
                "[proxy]\nmax-sessions = 5\nclient-prefix-v4 = 33\n",
                3,
                20,
                "proxy.client-prefix-v4",
                "must be between 1 and 32",
            ),
            (
                "[proxy]\nstress-threshold = 101\n",
                2,
                20,
                "proxy.stress-threshold",
                "must be between 0 and 100",
            ),
            (
                "[proxy]\nstress-timeout = 0\n",
                2,
                18,
                "proxy.stress-timeout",
                "must be between 1 and 604800",
            ),
            (
                "[proxy]\nmemory-budget = 0\n",
                2,
                17,
                "proxy.memory-budget",
                "must be between 1 and 1048576",
            ),
            (
                "[proxy]\nworkers = 0\n",
                2,
                11,
                "proxy.workers",
                "must be between 1 and 1024",
            ),
            (
                "[proxy]\nper-client-rate = -1\n",
                2,
                19,
                "proxy.per-client-rate",
                "",
            ),
            (
                "[proxy]\nper-client-exceptions = [\"198.18.0.0/24\", \"198.18.0.1/24\"]\n",
                2,
                43,
                "proxy.per-client-exceptions[1]",
                "has host bits set",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(
                (err.line, err.column, err.field.as_str()),
                (line, column, field),
                "{err}"
            );
            assert!(err.message.contains(message), "{err}");
        }
        // Under the old name of the table, too.
        let err = parse("[engine]\nper-client-sessions = 2000000\n").unwrap_err();
        assert_eq!(err.field, "engine.per-client-sessions");
        assert!(
            err.to_string().starts_with(
                "p.toml:2:23: engine.per-client-sessions: must be between 0 and 1000000"
            ),
            "{err}"
        );
    }
}
