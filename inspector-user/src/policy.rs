//! The policy file: one TOML document holding the exemptions and the ESMTP
//! inspection policy (later issues add protected servers). Every error names
//! the file, the line and the field.

use std::{
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

use inspector_esmtp::policy::{EsmtpPolicy, EsmtpSection, FieldError};
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::{
    exempt,
    proxy::config::{EngineConfig, EngineSection},
};

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub exempt: Vec<IpNet>,
    pub esmtp: EsmtpPolicy,
    /// The `[engine]` table: the proxy's limits and the failure mode.
    pub engine: EngineConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    exempt: Vec<RawExempt>,
    esmtp: Option<EsmtpSection>,
    engine: Option<EngineSection>,
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
        Ok(Self {
            exempt,
            esmtp,
            engine,
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
