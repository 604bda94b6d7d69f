//! `[audit]`: where the ESMTP engine's audit records go, and how many may
//! wait for a slow sink. `inspector run --audit`/`--audit-queue` override
//! it.

use std::{path::PathBuf, str::FromStr};

use inspector_esmtp::policy::FieldError;
use serde::Deserialize;
use toml::Spanned;

use super::{Section, field_error};

/// The conventional local syslog socket.
pub const DEV_LOG: &str = "/dev/log";
/// Records waiting for the sink before new ones are dropped.
pub const DEFAULT_QUEUE: usize = 4096;

/// The `[audit]` table; `None`: not set (the command line's or the
/// default applies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditSettings {
    pub sink: Option<SinkSpec>,
    pub queue: Option<usize>,
    /// The syslog facility (`facility = "local4"`, the default).
    pub facility: Option<u8>,
    /// `tag = "asa"`: syslog messages carry `%ASA-SEV-ID:` (what SIEM
    /// parsers of the firewall's logs match) instead of `%INSPECTOR-SEV-ID:`.
    pub asa_tag: bool,
}

/// Where audit records go (`inspector run --audit SPEC`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkSpec {
    /// `off`: records are counted, not written.
    Off,
    /// `stdout`: JSON lines on standard output.
    Stdout,
    /// `file:PATH`: JSON lines appended to PATH.
    File(PathBuf),
    /// `syslog` or `syslog:SOCKET`: RFC 5424 datagrams to the local syslog
    /// socket (default `/dev/log`).
    Syslog(PathBuf),
    /// `syslog+udp:HOST:PORT`: RFC 5424 over UDP (RFC 5426), one record a
    /// datagram.
    SyslogUdp(String),
    /// `syslog+tcp:HOST:PORT`: RFC 5424 over TCP with octet counting (RFC
    /// 6587).
    SyslogTcp(String),
}

/// Syslog facilities by name (RFC 5424 6.2.1).
pub const FACILITIES: [(&str, u8); 12] = [
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
];

/// `local4`, the facility the firewall logs to by default.
pub const DEFAULT_FACILITY: u8 = 20;

impl FromStr for SinkSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "stdout" => Ok(Self::Stdout),
            "syslog" => Ok(Self::Syslog(DEV_LOG.into())),
            _ => match s.split_once(':') {
                Some(("file", path)) if !path.is_empty() => Ok(Self::File(path.into())),
                Some(("syslog", path)) if !path.is_empty() => Ok(Self::Syslog(path.into())),
                Some(("syslog+udp", hp)) if host_port(hp) => Ok(Self::SyslogUdp(hp.into())),
                Some(("syslog+tcp", hp)) if host_port(hp) => Ok(Self::SyslogTcp(hp.into())),
                _ => Err(format!(
                    "`{s}`: expected off, stdout, file:PATH, syslog, syslog:SOCKET, syslog+udp:HOST:PORT or syslog+tcp:HOST:PORT"
                )),
            },
        }
    }
}

/// `HOST:PORT` (`[V6]:PORT` for an IPv6 address).
fn host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0))
}

impl std::fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::Stdout => f.write_str("stdout"),
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Syslog(socket) => write!(f, "syslog:{}", socket.display()),
            Self::SyslogUdp(hp) => write!(f, "syslog+udp:{hp}"),
            Self::SyslogTcp(hp) => write!(f, "syslog+tcp:{hp}"),
        }
    }
}

/// The `[audit]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    sink: Option<Spanned<String>>,
    queue: Option<Spanned<u64>>,
    facility: Option<Spanned<String>>,
    tag: Option<Spanned<String>>,
}

impl Section for AuditSection {
    type Compiled = AuditSettings;

    fn compile(&self) -> Result<AuditSettings, FieldError> {
        let mut audit = AuditSettings::default();
        if let Some(sink) = &self.sink {
            let spec = sink
                .get_ref()
                .parse()
                .map_err(|m| field_error(sink, "audit.sink", m))?;
            audit.sink = Some(spec);
        }
        if let Some(queue) = &self.queue {
            if *queue.get_ref() == 0 {
                return Err(field_error(
                    queue,
                    "audit.queue",
                    "must be at least 1 (records)",
                ));
            }
            audit.queue = Some(*queue.get_ref() as usize);
        }
        if let Some(f) = &self.facility {
            let name = f.get_ref().to_ascii_lowercase();
            let code = FACILITIES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, c)| *c)
                .ok_or_else(|| {
                    let names: Vec<&str> = FACILITIES.iter().map(|(n, _)| *n).collect();
                    field_error(
                        f,
                        "audit.facility",
                        format!("expected one of {}", names.join(", ")),
                    )
                })?;
            audit.facility = Some(code);
        }
        if let Some(tag) = &self.tag {
            audit.asa_tag = match tag.get_ref().as_str() {
                "asa" => true,
                "inspector" => false,
                _ => {
                    return Err(field_error(
                        tag,
                        "audit.tag",
                        "expected \"inspector\" (%INSPECTOR-SEV-ID) or \"asa\" (%ASA-SEV-ID)",
                    ));
                }
            };
        }
        Ok(audit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!("off".parse(), Ok(SinkSpec::Off));
        assert_eq!("syslog".parse(), Ok(SinkSpec::Syslog(DEV_LOG.into())));
        assert_eq!(
            "file:/var/log/a.json".parse(),
            Ok(SinkSpec::File("/var/log/a.json".into()))
        );
        assert!("file:".parse::<SinkSpec>().is_err());
        assert_eq!(
            "syslog+udp:198.18.1.5:514".parse(),
            Ok(SinkSpec::SyslogUdp("198.18.1.5:514".into()))
        );
        assert_eq!(
            "syslog+tcp:[2001:2::5]:6514".parse(),
            Ok(SinkSpec::SyslogTcp("[2001:2::5]:6514".into()))
        );
        assert!("syslog+udp:host".parse::<SinkSpec>().is_err());
        assert!("syslog+tcp:host:0".parse::<SinkSpec>().is_err());
        assert!("json".parse::<SinkSpec>().is_err());
    }
}
