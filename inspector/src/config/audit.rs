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
}

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
                _ => Err(format!(
                    "`{s}`: expected off, stdout, file:PATH, syslog or syslog:SOCKET"
                )),
            },
        }
    }
}

impl std::fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::Stdout => f.write_str("stdout"),
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Syslog(socket) => write!(f, "syslog:{}", socket.display()),
        }
    }
}

/// The `[audit]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    sink: Option<Spanned<String>>,
    queue: Option<Spanned<u64>>,
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
        assert!("json".parse::<SinkSpec>().is_err());
    }
}
