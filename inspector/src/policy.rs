//! The policy file: one TOML document holding the exemptions, the protected
//! servers with their connection limits and timeouts, and the ESMTP
//! inspection policy. Every error names the file, the line and the field.

use std::{
    fmt,
    net::IpAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use inspector_esmtp::policy::{EsmtpPolicy, EsmtpSection, FieldError};
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::{
    audit::SinkSpec,
    exempt,
    proxy::config::{EngineConfig, EngineSection},
};

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub exempt: Vec<IpNet>,
    pub servers: Vec<Server>,
    pub timeouts: Timeouts,
    pub esmtp: EsmtpPolicy,
    /// The `[engine]` table: the proxy's limits and the failure mode.
    pub engine: EngineConfig,
    pub audit: AuditSettings,
}

/// The `[audit]` table; `inspector run --audit`/`--audit-queue` override it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditSettings {
    pub sink: Option<SinkSpec>,
    pub queue: Option<usize>,
}

/// A protected server and its connection limits (0 = unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server {
    pub address: IpAddr,
    pub max_conns: u32,
    pub max_embryonic: u32,
    pub per_client_max: u32,
    pub per_client_embryonic_max: u32,
    pub on_embryonic_limit: OnEmbryonicLimit,
}

/// What happens to a SYN over an embryonic limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnEmbryonicLimit {
    /// Dropped and counted.
    Drop,
    /// TCP intercept, the original's behaviour: the kernel answers with a
    /// SYN cookie and opens the server side only for clients that return
    /// it.
    #[default]
    Intercept,
}

/// How long the sweeper keeps flows that saw no packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// SYN seen, handshake not completed.
    pub embryonic: Duration,
    /// An established connection.
    pub idle: Duration,
    /// A connection after its first FIN.
    pub half_closed: Duration,
}

impl Default for Timeouts {
    /// The original's defaults.
    fn default() -> Self {
        Self {
            embryonic: Duration::from_secs(30),
            idle: Duration::from_secs(3600),
            half_closed: Duration::from_secs(600),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    exempt: Vec<RawExempt>,
    #[serde(default)]
    server: Vec<RawServer>,
    timeouts: Option<RawTimeouts>,
    esmtp: Option<EsmtpSection>,
    engine: Option<EngineSection>,
    audit: Option<RawAudit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    sink: Option<Spanned<String>>,
    queue: Option<Spanned<u64>>,
}

// Not `#[serde(flatten)]` into `Server`: flattening loses the spans that
// errors need for their line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawServer {
    address: Spanned<String>,
    #[serde(default)]
    max_conns: u32,
    #[serde(default)]
    max_embryonic: u32,
    #[serde(default)]
    per_client_max: u32,
    #[serde(default)]
    per_client_embryonic_max: u32,
    #[serde(default)]
    on_embryonic_limit: OnEmbryonicLimit,
}

/// Seconds; each must be at least 1.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTimeouts {
    embryonic: Option<Spanned<u64>>,
    idle: Option<Spanned<u64>>,
    half_closed: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExempt {
    network: Spanned<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: usize,
    pub field: String,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.field,
            self.message
        )
    }
}

impl std::error::Error for PolicyError {}

impl Policy {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read policy: {e}", path.display()))?;
        Ok(Self::parse(path, &text)?)
    }

    /// Parses and validates `text`, read from `file` (used in messages).
    pub fn parse(file: &Path, text: &str) -> Result<Self, PolicyError> {
        let at = |span: Option<Range<usize>>, field: String, message: String| PolicyError {
            file: file.to_path_buf(),
            line: span.map_or(1, |s| line_of(text, s.start)),
            field,
            message,
        };
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let field = e
                .span()
                .map(|s| field_at(text, s))
                .unwrap_or_else(|| "(document)".into());
            at(e.span(), field, e.message().trim().to_string())
        })?;

        let mut exempt = Vec::with_capacity(raw.exempt.len());
        for (i, rule) in raw.exempt.iter().enumerate() {
            let net = exempt::parse_network(rule.network.get_ref()).map_err(|message| {
                at(
                    Some(rule.network.span()),
                    format!("exempt[{i}].network"),
                    message,
                )
            })?;
            exempt.push(net);
        }

        let mut servers: Vec<Server> = Vec::with_capacity(raw.server.len());
        for (i, raw_server) in raw.server.iter().enumerate() {
            let text = raw_server.address.get_ref();
            let span = Some(raw_server.address.span());
            let field = format!("server[{i}].address");
            let address: IpAddr = text.trim().parse().map_err(|_| {
                at(
                    span.clone(),
                    field.clone(),
                    format!("`{text}` is not an IP address (one host, no prefix length)"),
                )
            })?;
            if servers.iter().any(|s| s.address == address) {
                return Err(at(span, field, format!("{address} is listed twice")));
            }
            servers.push(Server {
                address,
                max_conns: raw_server.max_conns,
                max_embryonic: raw_server.max_embryonic,
                per_client_max: raw_server.per_client_max,
                per_client_embryonic_max: raw_server.per_client_embryonic_max,
                on_embryonic_limit: raw_server.on_embryonic_limit,
            });
        }
        if servers.len() > inspector_common::MAX_SERVERS as usize {
            return Err(at(
                None,
                "server".into(),
                format!(
                    "{} servers; at most {}",
                    servers.len(),
                    inspector_common::MAX_SERVERS
                ),
            ));
        }

        let mut timeouts = Timeouts::default();
        if let Some(raw_timeouts) = &raw.timeouts {
            for (name, value, slot) in [
                (
                    "embryonic",
                    &raw_timeouts.embryonic,
                    &mut timeouts.embryonic,
                ),
                ("idle", &raw_timeouts.idle, &mut timeouts.idle),
                (
                    "half-closed",
                    &raw_timeouts.half_closed,
                    &mut timeouts.half_closed,
                ),
            ] {
                let Some(value) = value else { continue };
                if *value.get_ref() == 0 {
                    return Err(at(
                        Some(value.span()),
                        format!("timeouts.{name}"),
                        "must be at least 1 (seconds)".into(),
                    ));
                }
                *slot = Duration::from_secs(*value.get_ref());
            }
        }

        let esmtp = match &raw.esmtp {
            Some(section) => section.compile().map_err(
                |FieldError {
                     span,
                     field,
                     message,
                 }| at(span, field, message),
            )?,
            None => EsmtpPolicy::default(),
        };
        let engine = match &raw.engine {
            Some(section) => section
                .compile()
                .map_err(|(span, field, message)| at(Some(span), field, message))?,
            None => EngineConfig::default(),
        };
        let mut audit = AuditSettings::default();
        if let Some(raw_audit) = &raw.audit {
            if let Some(sink) = &raw_audit.sink {
                let spec = sink
                    .get_ref()
                    .parse()
                    .map_err(|m| at(Some(sink.span()), "audit.sink".into(), m))?;
                audit.sink = Some(spec);
            }
            if let Some(queue) = &raw_audit.queue {
                if *queue.get_ref() == 0 {
                    return Err(at(
                        Some(queue.span()),
                        "audit.queue".into(),
                        "must be at least 1 (records)".into(),
                    ));
                }
                audit.queue = Some(*queue.get_ref() as usize);
            }
        }
        Ok(Self {
            exempt,
            servers,
            timeouts,
            esmtp,
            engine,
            audit,
        })
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The field a TOML error points at, as `table.key`: the key on the
/// error's line, under the nearest table header above it.
fn field_at(text: &str, span: Range<usize>) -> String {
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[line_start..line_end].trim();
    let header = |l: &str| {
        let l = l.trim();
        l.starts_with('[')
            .then(|| l.trim_matches(|c| c == '[' || c == ']').trim().to_string())
    };
    if let Some(table) = header(line) {
        return table;
    }
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string());
    let table = text[..line_start].lines().rev().find_map(header);
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (None, Some(k)) => k,
        (Some(t), None) => t,
        (None, None) => "(document)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse(Path::new("p.toml"), text)
    }

    #[test]
    fn parses_exemptions() {
        let p = parse(
            "[[exempt]]\nnetwork = \"198.18.1.26/32\"\n[[exempt]]\nnetwork = \"2001:2::/48\"\n",
        )
        .unwrap();
        let nets: Vec<String> = p.exempt.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["198.18.1.26/32", "2001:2::/48"]);
    }

    #[test]
    fn empty_policy_is_valid() {
        assert!(parse("").unwrap().exempt.is_empty());
    }

    #[test]
    fn bad_network_names_file_line_and_field() {
        let err = parse("# comment\n[[exempt]]\nnetwork = \"198.18.1.26/32\"\n\n[[exempt]]\nnetwork = \"10.0.0.300\"\n")
            .unwrap_err();
        assert_eq!(err.line, 6);
        assert_eq!(err.field, "exempt[1].network");
        assert!(
            err.to_string()
                .starts_with("p.toml:6: exempt[1].network: `10.0.0.300` is not a network"),
            "{err}"
        );
    }

    #[test]
    fn unknown_field_names_it() {
        let err = parse("[[exempt]]\nnetwork = \"198.18.1.26\"\nnetwrok = \"x\"\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert_eq!(err.field, "exempt.netwrok");
        assert!(err.message.contains("unknown field"), "{err}");
    }

    #[test]
    fn missing_field_and_syntax_errors_have_a_line() {
        let err = parse("\n[[exempt]]\n").unwrap_err();
        assert!(err.message.contains("missing field `network`"), "{err}");
        assert_eq!(err.line, 2);
        let err = parse("[[exempt]]\nnetwork = \n").unwrap_err();
        assert_eq!(err.line, 2);
        assert_eq!(err.field, "exempt.network");
    }

    #[test]
    fn servers_and_timeouts_parse_with_defaults() {
        let p = parse(
            "[[server]]\naddress = \"198.18.1.25\"\nmax-conns = 50\nmax-embryonic = 100\n\n[[server]]\naddress = \"2001:2:0:1::25\"\nper-client-max = 2\nper-client-embryonic-max = 1\non-embryonic-limit = \"drop\"\n\n[timeouts]\nembryonic = 5\n",
        )
        .unwrap();
        assert_eq!(p.servers.len(), 2);
        let (a, b) = (p.servers[0], p.servers[1]);
        assert_eq!(a.address, "198.18.1.25".parse::<IpAddr>().unwrap());
        assert_eq!((a.max_conns, a.max_embryonic), (50, 100));
        assert_eq!((a.per_client_max, a.per_client_embryonic_max), (0, 0));
        assert_eq!(
            a.on_embryonic_limit,
            OnEmbryonicLimit::Intercept,
            "the original's default"
        );
        assert_eq!(b.address, "2001:2:0:1::25".parse::<IpAddr>().unwrap());
        assert_eq!((b.max_conns, b.max_embryonic), (0, 0));
        assert_eq!((b.per_client_max, b.per_client_embryonic_max), (2, 1));
        assert_eq!(b.on_embryonic_limit, OnEmbryonicLimit::Drop);
        assert_eq!(p.timeouts.embryonic, Duration::from_secs(5));
        assert_eq!(p.timeouts.idle, Duration::from_secs(3600));
        assert_eq!(p.timeouts.half_closed, Duration::from_secs(600));
    }

    #[test]
    fn default_timeouts_are_the_originals() {
        let p = parse("").unwrap();
        assert!(p.servers.is_empty());
        assert_eq!(
            p.timeouts,
            Timeouts {
                embryonic: Duration::from_secs(30),
                idle: Duration::from_secs(3600),
                half_closed: Duration::from_secs(600),
            }
        );
    }

    #[test]
    fn engine_section_defaults_and_values() {
        let p = parse("").unwrap();
        assert_eq!(p.engine, EngineConfig::default());
        assert_eq!(p.engine.fail, crate::steer::FailMode::Open);
        let p = parse("[engine]\nfail = \"closed\"\nmax-sessions = 7\ndata-timeout = 9\n").unwrap();
        assert_eq!(p.engine.fail, crate::steer::FailMode::Closed);
        assert_eq!(
            p.engine.upstream_source,
            crate::proxy::UpstreamSource::Gateway
        );
        assert_eq!(p.engine.max_sessions, 7);
        assert_eq!(p.engine.timeouts.data, std::time::Duration::from_secs(9));
        assert_eq!(
            p.engine.timeouts.command,
            std::time::Duration::from_secs(300)
        );
        let p = parse("[engine]\nupstream-source = \"client\"\n").unwrap();
        assert_eq!(
            p.engine.upstream_source,
            crate::proxy::UpstreamSource::Client
        );
    }

    #[test]
    fn bad_server_entries_name_file_line_and_field() {
        let err = parse("[[server]]\naddress = \"198.18.1.0/24\"\n").unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (2, "server[0].address"));
        assert!(err.message.contains("not an IP address"), "{err}");

        let err =
            parse("[[server]]\naddress = \"198.18.1.25\"\n[[server]]\naddress = \"198.18.1.25\"\n")
                .unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (4, "server[1].address"));
        assert!(err.message.contains("listed twice"), "{err}");

        let err = parse("[[server]]\naddress = \"198.18.1.25\"\nmax-conns = -1\n").unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (3, "server.max-conns"));

        let err = parse("[[server]]\naddress = \"198.18.1.25\"\non-embryonic-limit = \"reset\"\n")
            .unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.message.contains("unknown variant"), "{err}");

        let err = parse("[[server]]\nmax-conns = 5\n").unwrap_err();
        assert!(err.message.contains("missing field `address`"), "{err}");
    }

    #[test]
    fn bad_timeouts_name_file_line_and_field() {
        let err = parse("[timeouts]\nidle = 60\nembryonic = 0\n").unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (3, "timeouts.embryonic"));
        assert!(err.message.contains("at least 1"), "{err}");
        let err = parse("[timeouts]\nhalf-open = 5\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("unknown field"), "{err}");
    }

    #[test]
    fn engine_section_errors_name_line_and_field() {
        let err = parse("[engine]\nfail = \"open\"\n\ncommand-timeout = 0\n").unwrap_err();
        assert_eq!(
            (err.line, err.field.as_str()),
            (4, "engine.command-timeout")
        );
        let err = parse("[engine]\nfail = \"ajar\"\n").unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (2, "engine.fail"), "{err}");
        let err = parse("[engine]\nmax-session = 3\n").unwrap_err();
        assert_eq!(
            (err.line, err.field.as_str()),
            (2, "engine.max-session"),
            "{err}"
        );
    }

    #[test]
    fn audit_section_parses_and_names_bad_fields() {
        let p = parse("[audit]\nsink = \"syslog\"\nqueue = 100\n").unwrap();
        assert_eq!(
            p.audit,
            AuditSettings {
                sink: Some(SinkSpec::Syslog(crate::audit::DEV_LOG.into())),
                queue: Some(100),
            }
        );
        assert_eq!(parse("").unwrap().audit, AuditSettings::default());
        let err = parse("[audit]\nqueue = 1\nsink = \"json\"\n").unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (3, "audit.sink"));
        assert!(err.message.contains("file:PATH"), "{err}");
        let err = parse("[audit]\nqueue = 0\n").unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (2, "audit.queue"));
    }

    #[test]
    fn shipped_policies_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Policy::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
                checked += 1;
            }
        }
        assert!(
            checked >= 2,
            "found only {checked} policies in {}",
            dir.display()
        );
    }
}
