//! The one error of the policy file: where (file, line, column), which
//! field, and what is wrong.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use inspector_esmtp::policy::FieldError;

/// A place in a policy file and what is wrong there (or, in
/// [`super::Policy::deprecations`], what to write instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 1 when the error belongs to no place in the file.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// The dotted path of the field, e.g. `server[1].address`, or
    /// `(document)`.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    /// Places a section's [`FieldError`] (byte offsets) in `text`, read
    /// from `file`.
    pub fn locate(file: &Path, text: &str, error: FieldError) -> Self {
        let (line, column) = error
            .span
            .map_or((1, 1), |span| line_and_column(text, span.start));
        Self {
            file: file.to_path_buf(),
            line,
            column,
            field: error.field,
            message: error.message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.field,
            self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// A policy file that cannot be read at all (missing, not readable, not
/// UTF-8): as much a configuration error as a wrong field.
#[derive(Debug)]
pub struct UnreadablePolicy {
    pub file: PathBuf,
    pub error: std::io::Error,
}

impl fmt::Display for UnreadablePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: cannot read policy: {}",
            self.file.display(),
            self.error
        )
    }
}

impl std::error::Error for UnreadablePolicy {}

/// Whether `error` is, or was caused by, a bad policy file: what exit code
/// 78 (`EX_CONFIG`) stands for.
pub fn is_config_error(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|e| e.is::<ConfigError>() || e.is::<UnreadablePolicy>())
}

/// The 1-based line and column (in characters) of byte `offset`.
pub(super) fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_count_from_one_in_characters() {
        let text = "a = 1\nnäme = \"x\"\n";
        assert_eq!(line_and_column(text, 0), (1, 1));
        assert_eq!(line_and_column(text, 4), (1, 5));
        assert_eq!(line_and_column(text, 6), (2, 1));
        // `=` after a two-byte character: the fifth character of line 2.
        assert_eq!(line_and_column(text, 6 + "näme ".len()), (2, 6));
        assert_eq!(line_and_column(text, 1000), (3, 1));
    }

    #[test]
    fn errors_show_file_line_column_and_field() {
        let e = ConfigError::locate(
            Path::new("p.toml"),
            "[audit]\nqueue = 0\n",
            FieldError {
                span: Some(16..17),
                field: "audit.queue".into(),
                message: "must be at least 1 (records)".into(),
            },
        );
        assert_eq!(
            e.to_string(),
            "p.toml:2:9: audit.queue: must be at least 1 (records)"
        );
        let whole = ConfigError::locate(
            Path::new("p.toml"),
            "",
            FieldError {
                span: None,
                field: "(document)".into(),
                message: "m".into(),
            },
        );
        assert_eq!((whole.line, whole.column), (1, 1));
    }
}
