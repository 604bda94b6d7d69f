//! The `[esmtp]` section of a policy file.

use std::ops::Range;

/// A policy value that is well-formed TOML but not a valid setting. The
/// policy loader turns `span` (byte offsets into the file) into a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub span: Option<Range<usize>>,
    /// Dotted path of the offending field, e.g. `esmtp.match[2].action`.
    pub field: String,
    pub message: String,
}

/// The raw `[esmtp]` table as written. (Placeholder until the engine lands.)
#[derive(Debug, Clone, serde::Deserialize)]
pub struct EsmtpSection(pub toml::Table);

/// A validated ESMTP policy.
#[derive(Debug, Clone, Default)]
pub struct EsmtpPolicy {}

impl EsmtpSection {
    pub fn compile(&self) -> Result<EsmtpPolicy, FieldError> {
        Ok(EsmtpPolicy {})
    }
}
