//! The policy file: one TOML document holding the exemptions, the protected
//! servers with their limits, the flow timeouts, what the classifier does
//! with packets it cannot parse, the ESMTP inspection policy, the proxy and
//! the audit settings, and this gateway's place in a cluster.
//!
//! One pipeline reads it: the text is deserialized into the raw document
//! ([`document::deserialize`]), each section of the document compiles into
//! its settings through [`Section`], and any failure on the way is a
//! [`FieldError`] (span, field path, message) that [`Policy::parse`] places
//! in the file as a [`ConfigError`] (file, line, column, field, message).
//! Every type the policy configures lives here; the kernel and proxy
//! modules take them from here.

pub mod asa;
mod audit;
mod cluster;
mod document;
mod error;
mod esmtp;
mod exempt;
mod packets;
mod proxy;
mod servers;
mod timeouts;

use std::path::Path;

pub use inspector_esmtp::policy::FieldError;
use inspector_esmtp::policy::{EsmtpPolicy, EsmtpSection};
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

pub use audit::{AuditSettings, DEFAULT_FACILITY, DEFAULT_QUEUE, DEV_LOG, FACILITIES, SinkSpec};
pub use cluster::{Cluster, MEMBER_ENV, Membership};
pub use error::{ConfigError, UnreadablePolicy, is_config_error};
pub use esmtp::{SUBMISSION_PORT, submission_warning};
pub use exempt::parse_network;
pub use packets::{PacketPolicy, Unparsable};
pub use proxy::{
    ClientLimits, FailMode, GATEWAY_WARNING, ProxyConfig, SessionTimeouts, StressPolicy,
    UpstreamSource,
};
pub use servers::{OnEmbryonicLimit, Server};
pub use timeouts::FlowTimeouts;

use proxy::ProxySection;

/// A section of the policy file as written, and how it compiles into the
/// settings it stands for. An error names the field with the span of the
/// value that is wrong.
pub trait Section {
    type Compiled;
    fn compile(&self) -> Result<Self::Compiled, FieldError>;
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub exempt: Vec<IpNet>,
    pub servers: Vec<Server>,
    pub timeouts: FlowTimeouts,
    /// The `[packets]` table: packets the classifier cannot parse.
    pub packets: PacketPolicy,
    pub esmtp: EsmtpPolicy,
    /// The `[proxy]` table (formerly `[engine]`).
    pub proxy: ProxyConfig,
    pub audit: AuditSettings,
    /// The `[cluster]` table: this gateway's place among its members.
    pub cluster: Cluster,
    /// Old spellings the file still uses: accepted, each with where it is
    /// and what to write instead. [`Policy::load`] logs them as warnings.
    pub deprecations: Vec<ConfigError>,
}

/// The whole file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    exempt: exempt::Exemptions,
    #[serde(default)]
    server: servers::Servers,
    timeouts: Option<timeouts::TimeoutsSection>,
    packets: Option<packets::PacketsSection>,
    esmtp: Option<EsmtpSection>,
    proxy: Option<Spanned<ProxySection>>,
    /// `[proxy]` under its old name.
    engine: Option<Spanned<ProxySection>>,
    audit: Option<audit::AuditSection>,
    cluster: Option<cluster::ClusterSection>,
}

impl Policy {
    /// Reads and parses the file at `path`, and logs its deprecations.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|error| UnreadablePolicy {
            file: path.to_path_buf(),
            error,
        })?;
        let policy = Self::parse(path, &text)?;
        for deprecation in &policy.deprecations {
            log::warn!("{deprecation}");
        }
        Ok(policy)
    }

    /// Parses and validates `text`, read from `file` (used in messages).
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let locate = |e| ConfigError::locate(file, text, e);
        let (mut policy, deprecations) = compile(text).map_err(locate)?;
        policy.deprecations = deprecations.into_iter().map(locate).collect();
        Ok(policy)
    }
}

/// The pipeline: the document, then each section; returns the policy and
/// its deprecations, not yet placed in the file.
fn compile(text: &str) -> Result<(Policy, Vec<FieldError>), FieldError> {
    let doc: Document = document::deserialize(text)?;
    let mut deprecations = Vec::new();
    let proxy = match (doc.proxy, doc.engine) {
        (Some(new), Some(old)) => {
            let (line, _) = error::line_and_column(text, new.span().start);
            return Err(field_error(
                &old,
                ProxySection::OLD_NAME,
                format!(
                    "`[{}]` is the old name of `[{}]`, which is on line {line}: keep one",
                    ProxySection::OLD_NAME,
                    ProxySection::NAME
                ),
            ));
        }
        (None, Some(mut old)) => {
            deprecations.push(field_error(
                &old,
                ProxySection::OLD_NAME,
                format!("deprecated: the table is now `[{}]`", ProxySection::NAME),
            ));
            old.get_mut().table = ProxySection::OLD_NAME;
            Some(old)
        }
        (new, None) => new,
    };
    let esmtp = or_default(doc.esmtp.as_ref())?;
    if let Some(proxy) = &proxy {
        proxy.get_ref().check_against(&esmtp)?;
    }
    let policy = Policy {
        exempt: doc.exempt.compile()?,
        servers: doc.server.compile()?,
        timeouts: or_default(doc.timeouts.as_ref())?,
        packets: or_default(doc.packets.as_ref())?,
        esmtp,
        proxy: or_default(proxy.as_ref().map(Spanned::get_ref))?,
        audit: or_default(doc.audit.as_ref())?,
        cluster: or_default(doc.cluster.as_ref())?,
        deprecations: Vec::new(),
    };
    Ok((policy, deprecations))
}

/// A section's settings, or the defaults when the file leaves it out.
fn or_default<S: Section>(section: Option<&S>) -> Result<S::Compiled, FieldError>
where
    S::Compiled: Default,
{
    section.map_or_else(|| Ok(S::Compiled::default()), Section::compile)
}

/// An error at `value`.
fn field_error<T>(
    value: &Spanned<T>,
    field: impl Into<String>,
    message: impl Into<String>,
) -> FieldError {
    FieldError {
        span: Some(value.span()),
        field: field.into(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, time::Duration};

    use super::*;

    fn parse(text: &str) -> Result<Policy, ConfigError> {
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
        assert_eq!((err.line, err.column), (6, 11));
        assert_eq!(err.field, "exempt[1].network");
        assert!(
            err.to_string()
                .starts_with("p.toml:6:11: exempt[1].network: `10.0.0.300` is not a network"),
            "{err}"
        );
    }

    #[test]
    fn unknown_field_names_it() {
        let err = parse("[[exempt]]\nnetwork = \"198.18.1.26\"\nnetwrok = \"x\"\n").unwrap_err();
        assert_eq!((err.line, err.column), (3, 1));
        assert_eq!(err.field, "exempt[0].netwrok");
        assert!(err.message.contains("unknown field"), "{err}");
    }

    #[test]
    fn missing_field_and_syntax_errors_have_a_line() {
        let err = parse("\n[[exempt]]\n").unwrap_err();
        assert!(err.message.contains("missing field `network`"), "{err}");
        assert_eq!(err.line, 2);
        assert_eq!(err.field, "exempt[0]");
        let err = parse("[[exempt]]\nnetwork = \n").unwrap_err();
        assert_eq!((err.line, err.column), (2, 11));
        assert_eq!(err.field, "exempt[0].network");
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
            "the firewall's default"
        );
        assert_eq!(b.address, "2001:2:0:1::25".parse::<IpAddr>().unwrap());
        assert_eq!((b.max_conns, b.max_embryonic), (0, 0));
        assert_eq!((b.per_client_max, b.per_client_embryonic_max), (2, 1));
        assert_eq!(b.on_embryonic_limit, OnEmbryonicLimit::Drop);
        assert_eq!(p.timeouts.embryonic, Duration::from_secs(5));
        assert_eq!(p.timeouts.idle, Duration::from_secs(3600));
        assert_eq!(p.timeouts.half_closed, Duration::from_secs(600));
    }

    /// The firewall's names of the limits (`set connection conn-max …`)
    /// are accepted too, but not beside ours.
    #[test]
    fn servers_accept_the_firewalls_spellings() {
        let p = parse(
            "[[server]]\naddress = \"198.18.1.25\"\nconn-max = 50\nembryonic-conn-max = 100\nper-client-max = 5\nper-client-embryonic-max = 2\n",
        )
        .unwrap();
        let s = p.servers[0];
        assert_eq!(
            (
                s.max_conns,
                s.max_embryonic,
                s.per_client_max,
                s.per_client_embryonic_max
            ),
            (50, 100, 5, 2)
        );
        let err = parse("[[server]]\naddress = \"198.18.1.25\"\nmax-conns = 5\nconn-max = 50\n")
            .unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (4, "server[0].conn-max"));
        assert!(err.message.contains("keep one"), "{err}");
    }

    #[test]
    fn default_timeouts_are_the_originals() {
        let p = parse("").unwrap();
        assert!(p.servers.is_empty());
        assert_eq!(
            p.timeouts,
            FlowTimeouts {
                embryonic: Duration::from_secs(30),
                idle: Duration::from_secs(3600),
                half_closed: Duration::from_secs(600),
            }
        );
    }

    /// `[engine]` is the old name of `[proxy]`: the same settings, and a
    /// deprecation that names its line.
    #[test]
    fn proxy_section_defaults_and_values() {
        let p = parse("").unwrap();
        assert_eq!(p.proxy, ProxyConfig::default());
        assert_eq!(p.proxy.fail, FailMode::Open);
        for table in ["proxy", "engine"] {
            let p = parse(&format!(
                "[{table}]\nfail = \"closed\"\nmax-sessions = 7\ndata-timeout = 9\n"
            ))
            .unwrap();
            assert_eq!(p.proxy.fail, FailMode::Closed);
            assert_eq!(p.proxy.upstream_source, UpstreamSource::Auto);
            assert_eq!(p.proxy.max_sessions, 7);
            assert_eq!(p.proxy.timeouts.data, Duration::from_secs(9));
            assert_eq!(p.proxy.timeouts.command, Duration::from_secs(300));
            assert_eq!(p.deprecations.len(), usize::from(table == "engine"));
            for source in [
                UpstreamSource::Auto,
                UpstreamSource::Gateway,
                UpstreamSource::Client,
                UpstreamSource::Xclient,
                UpstreamSource::Proxy,
            ] {
                let p = parse(&format!("[{table}]\nupstream-source = \"{source}\"\n")).unwrap();
                assert_eq!(p.proxy.upstream_source, source);
            }
        }
        let p = parse("# old\n[engine]\nfail = \"open\"\n").unwrap();
        assert_eq!(p.deprecations.len(), 1);
        let d = &p.deprecations[0];
        assert_eq!((d.line, d.column, d.field.as_str()), (2, 1, "engine"));
        assert_eq!(
            d.to_string(),
            "p.toml:2:1: engine: deprecated: the table is now `[proxy]`"
        );
    }

    #[test]
    fn xclient_with_a_client_allowed_to_send_xclient_is_an_error() {
        let err = parse(
            "[proxy]\nupstream-source = \"xclient\"\n\n[esmtp]\nallow-verbs = [\"XCLIENT\"]\n",
        )
        .unwrap_err();
        assert_eq!(
            (err.line, err.column, err.field.as_str()),
            (2, 19, "proxy.upstream-source")
        );
        assert!(err.message.contains("send its own XCLIENT"), "{err}");
        assert!(
            parse("[proxy]\nupstream-source = \"proxy\"\n\n[esmtp]\nallow-verbs = [\"XCLIENT\"]\n")
                .is_ok()
        );
    }

    #[test]
    fn unparsable_packets_are_dropped_unless_the_policy_says_pass() {
        assert_eq!(parse("").unwrap().packets.unparsable, Unparsable::Drop);
        for (text, want) in [("drop", Unparsable::Drop), ("pass", Unparsable::Pass)] {
            let p = parse(&format!("[packets]\nunparsable = \"{text}\"\n")).unwrap();
            assert_eq!(p.packets.unparsable, want);
            assert_eq!(want.name(), text);
        }
        let err = parse("[packets]\nunparsable = \"accept\"\n").unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (2, "packets.unparsable"));
        assert!(err.message.contains("unknown variant"), "{err}");
        let err = parse("[packets]\nfragments = \"pass\"\n").unwrap_err();
        assert!(err.message.contains("unknown field"), "{err}");
    }

    #[test]
    fn proxy_and_engine_together_are_an_error() {
        let err = parse("[proxy]\nfail = \"open\"\n\n[engine]\nfail = \"open\"\n").unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (4, "engine"));
        assert!(
            err.message
                .contains("old name of `[proxy]`, which is on line 1"),
            "{err}"
        );
        // In either order.
        let err = parse("[engine]\n[proxy]\n").unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (1, "engine"));
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
        assert_eq!((err.line, err.field.as_str()), (3, "server[0].max-conns"));

        let err = parse("[[server]]\naddress = \"198.18.1.25\"\non-embryonic-limit = \"reset\"\n")
            .unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.message.contains("unknown variant"), "{err}");

        let err = parse("[[server]]\nmax-conns = 5\n").unwrap_err();
        assert!(err.message.contains("missing field `address`"), "{err}");
    }

    #[test]
    fn too_many_servers_name_the_first_one_too_many() {
        let max = inspector_common::MAX_SERVERS as usize;
        let text: String = (0..=max)
            .map(|i| format!("[[server]]\naddress = \"10.0.{}.{}\"\n", i / 256, i % 256))
            .collect();
        let err = parse(&text).unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (2 * max + 2, "server"));
        assert_eq!(err.message, format!("{} servers; at most {max}", max + 1));
        let ok: String = text
            .lines()
            .take(2 * max)
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(parse(&ok).unwrap().servers.len(), max);
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

    /// Under its name and its old name: errors name the table as written.
    #[test]
    fn proxy_section_errors_name_line_and_field() {
        for table in ["proxy", "engine"] {
            let err = parse(&format!(
                "[{table}]\nfail = \"open\"\n\ncommand-timeout = 0\n"
            ))
            .unwrap_err();
            assert_eq!(
                (err.line, err.field),
                (4, format!("{table}.command-timeout"))
            );
            let err = parse(&format!("[{table}]\nfail = \"ajar\"\n")).unwrap_err();
            assert_eq!((err.line, err.field), (2, format!("{table}.fail")));
            let err = parse(&format!("[{table}]\nmax-session = 3\n")).unwrap_err();
            assert_eq!((err.line, err.field), (2, format!("{table}.max-session")));
        }
    }

    #[test]
    fn audit_section_parses_and_names_bad_fields() {
        let p = parse("[audit]\nsink = \"syslog\"\nqueue = 100\n").unwrap();
        assert_eq!(
            p.audit,
            AuditSettings {
                sink: Some(SinkSpec::Syslog(DEV_LOG.into())),
                queue: Some(100),
                facility: None,
                asa_tag: false,
            }
        );
        assert!(parse("[audit]\ntag = \"asa\"\n").unwrap().audit.asa_tag);
        let err = parse("[audit]\ntag = \"pix\"\n").unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (2, "audit.tag"));
        let p = parse("[audit]\nfacility = \"mail\"\n").unwrap();
        assert_eq!(p.audit.facility, Some(2));
        let err = parse("[audit]\nfacility = \"local9\"\n").unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (2, "audit.facility"));
        assert_eq!(parse("").unwrap().audit, AuditSettings::default());
        let err = parse("[audit]\nqueue = 1\nsink = \"json\"\n").unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (3, "audit.sink"));
        assert!(err.message.contains("file:PATH"), "{err}");
        let err = parse("[audit]\nqueue = 0\n").unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (2, "audit.queue"));
    }

    #[test]
    fn ports_default_to_25_and_name_a_bad_entry() {
        assert_eq!(parse("").unwrap().esmtp.ports, [25]);
        let p = parse("[esmtp]\nports = [25, 587]\n").unwrap();
        assert_eq!(p.esmtp.ports, [25, 587]);
        let p = parse("[esmtp]\nports = [587]\n").unwrap();
        assert_eq!(p.esmtp.ports, [587]);
        for (text, field, message) in [
            ("ports = [25, 0]", "esmtp.ports[1]", "0 is not a TCP port"),
            (
                "ports = [65536]",
                "esmtp.ports[0]",
                "65536 is not a TCP port",
            ),
            ("ports = [-1]", "esmtp.ports[0]", "-1 is not a TCP port"),
            ("ports = [25, 587, 25]", "esmtp.ports[2]", "listed twice"),
            ("ports = []", "esmtp.ports", "1 to 8 ports"),
            (
                "ports = [1, 2, 3, 4, 5, 6, 7, 8, 9]",
                "esmtp.ports",
                "not 9",
            ),
        ] {
            let err = parse(&format!("[esmtp]\nmode = \"modern\"\n{text}\n")).unwrap_err();
            assert_eq!((err.line, err.field.as_str()), (3, field), "{text}: {err}");
            assert!(err.message.contains(message), "{text}: {err}");
        }
        let err = parse("[esmtp]\nports = [\"587\"]\n").unwrap_err();
        assert_eq!(err.line, 2, "{err}");
    }

    #[test]
    fn shipped_policies_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let policy = Policy::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
                assert!(
                    policy.deprecations.is_empty(),
                    "{}: {:?}",
                    path.display(),
                    policy.deprecations
                );
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
