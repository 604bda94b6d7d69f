//! A policy document as written: the TOML file whose `[esmtp]` table is
//! the engine's. The other tables (`[[exempt]]`, `[[server]]`,
//! `[timeouts]`, …) belong to the daemon and are skipped here.

use serde::Deserialize;
use serde_path_to_error::{Path, Segment};

use super::{EsmtpPolicy, EsmtpSection, FieldError};

/// The part of a policy document the engine reads.
#[derive(Deserialize)]
struct Document {
    esmtp: Option<EsmtpSection>,
}

impl EsmtpPolicy {
    /// Reads a whole policy document and compiles its `[esmtp]` table (the
    /// default policy when there is none). Every error names the field,
    /// e.g. `esmtp.match[2].action`, and the span of the offending text.
    pub fn from_toml(text: &str) -> Result<Self, FieldError> {
        match section(text)? {
            Some(section) => section.compile(),
            None => Ok(Self::default()),
        }
    }
}

/// The `[esmtp]` table of a document, if it has one.
pub(super) fn section(text: &str) -> Result<Option<EsmtpSection>, FieldError> {
    let de = toml::Deserializer::parse(text).map_err(|e| error(None, &e))?;
    let document: Document =
        serde_path_to_error::deserialize(de).map_err(|e| error(Some(e.path()), e.inner()))?;
    Ok(document.esmtp)
}

/// A TOML error as a field error: the path serde was at, and the span and
/// message of the error.
fn error(path: Option<&Path>, e: &toml::de::Error) -> FieldError {
    FieldError {
        span: e.span(),
        field: path
            .map(field)
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| "(document)".into()),
        message: e.message().trim().to_string(),
    }
}

/// The prefix of the keys serde_spanned reads a `Spanned` value through.
const SPANNED_KEY: &str = "$__serde_spanned_private_";

/// A path as the policy's dotted field name (`esmtp.match[2].action`).
/// The key through which toml hands out a `Spanned` value is not a field.
fn field(path: &Path) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if key.starts_with(SPANNED_KEY) => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text`'s error names `field`, its span covers `at`, and its message
    /// starts with `message`. Returns the error.
    fn fails(text: &str, field: &str, at: &str, message: &str) -> FieldError {
        let e = EsmtpPolicy::from_toml(text).unwrap_err();
        let covered = e.span.clone().map_or("", |s| &text[s]);
        assert_eq!((e.field.as_str(), covered), (field, at), "{text:?}");
        assert!(e.message.starts_with(message), "{text:?}: {}", e.message);
        e
    }

    const TWO_RULES: &str = "[esmtp]\n\
        [[esmtp.match]]\nmatch = \"cmd verb VRFY\"\naction = \"log\"\n\
        [[esmtp.match]]\nmatch = \"cmd verb EXPN\"\naction = \"log\"\n";

    #[test]
    fn a_type_error_deep_in_the_match_list_names_its_path_and_span() {
        let text = format!("{TWO_RULES}[[esmtp.match]]\nmatch = \"cmd verb X\"\naction = 5\n");
        let e = fails(&text, "esmtp.match[2].action", "5", "invalid type");
        assert_eq!(e.message, "invalid type: integer `5`, expected a string");
        let text = "[esmtp]\nallow-verbs = [\"XFOO\", 3]\n";
        fails(text, "esmtp.allow-verbs[1]", "3", "invalid type");
        let text = "[esmtp]\nmail-relay = { domain = 3, action = \"log\" }\n";
        fails(text, "esmtp.mail-relay.domain", "3", "invalid type");
        let text = "[esmtp]\nmode = \"legacy\"\n";
        fails(text, "esmtp.mode", "\"legacy\"", "unknown variant `legacy`");
    }

    #[test]
    fn unknown_and_missing_fields_name_where_they_are() {
        let rule = "[[esmtp.match]]\nmatch = \"cmd verb X\"\n";
        let text = format!("{TWO_RULES}{rule}action = \"log\"\nactoin = \"x\"\n");
        fails(
            &text,
            "esmtp.match[2].actoin",
            "actoin",
            "unknown field `actoin`",
        );
        let text = format!("{TWO_RULES}{rule}");
        let e = fails(
            &text,
            "esmtp.match[2]",
            "[[esmtp.match]]",
            "missing field `action`",
        );
        assert_eq!(e.span.unwrap().start, TWO_RULES.len());
    }

    #[test]
    fn syntax_errors_are_the_documents() {
        let e = fails("[esmtp]\nmode = \n", "(document)", "", "");
        assert_eq!(e.span.map(|s| s.start), Some(15));
    }

    #[test]
    fn compile_errors_come_through_unchanged() {
        let text =
            format!("{TWO_RULES}[[esmtp.match]]\nmatch = \"cmdd verb X\"\naction = \"log\"\n");
        let (field, at) = ("esmtp.match[2].match", "\"cmdd verb X\"");
        fails(&text, field, at, "unknown criterion `cmdd`");
    }

    #[test]
    fn other_tables_are_not_the_engines() {
        let daemon = "[[exempt]]\nnetwork = 5\n[[server]]\naddress = \"198.18.1.25\"\n\
                      [timeouts]\nidle = \"x\"\n[proxy]\n[engine]\nfoo = 1\n[audit]\nsink = 0\n";
        let p = EsmtpPolicy::from_toml(&format!("{daemon}{TWO_RULES}")).unwrap();
        assert_eq!(p.rules.len(), 2);
        let default = format!("{:?}", EsmtpPolicy::default());
        for text in [daemon, ""] {
            let p = EsmtpPolicy::from_toml(text).unwrap();
            assert_eq!(format!("{p:?}"), default, "{text:?}");
        }
    }
}
