//! The first step of the pipeline: TOML text into the raw document's
//! types, every failure a [`FieldError`] with the span and the dotted path
//! of the field. Deserialization errors get their path from
//! `serde_path_to_error`; a syntax error (no document to deserialize) gets
//! the path of the key at its offset in what the parser recovered.

use std::fmt::Write as _;

use inspector_esmtp::policy::FieldError;
use serde::Deserialize;
use serde_path_to_error::{Path, Segment};
use toml::{
    Spanned,
    de::{DeTable, DeValue, Deserializer},
};

/// The path of the whole document.
pub const DOCUMENT: &str = "(document)";

/// `toml::Spanned` deserializes as a struct of these private fields; they are
/// no part of the path the user wrote.
const SPANNED_PRIVATE: &str = "$__serde_spanned_private";

pub fn deserialize<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, FieldError> {
    let table = DeTable::parse(text).map_err(|e| syntax_error(text, &e))?;
    serde_path_to_error::deserialize(Deserializer::from(table)).map_err(|e| FieldError {
        span: e.inner().span(),
        field: dotted(e.path()),
        message: e.inner().message().trim().to_string(),
    })
}

fn syntax_error(text: &str, e: &toml::de::Error) -> FieldError {
    let field = e
        .span()
        .and_then(|span| {
            let (recovered, _) = DeTable::parse_recoverable(text);
            let mut path = String::new();
            key_at(recovered.get_ref(), span.start, &mut path).then_some(path)
        })
        .unwrap_or_else(|| DOCUMENT.into());
    FieldError {
        span: e.span(),
        field,
        message: e.message().trim().to_string(),
    }
}

/// `a.b[0].c`, leaving out the segments `Spanned` adds.
fn dotted(path: &Path) -> String {
    let mut out = String::new();
    for segment in path {
        let name = match segment {
            Segment::Seq { index } => {
                let _ = write!(out, "[{index}]");
                continue;
            }
            Segment::Map { key } if key.starts_with(SPANNED_PRIVATE) => continue,
            Segment::Map { key } => key.as_str(),
            Segment::Enum { variant } => variant.as_str(),
            Segment::Unknown => "?",
        };
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(name);
    }
    if out.is_empty() {
        out = DOCUMENT.into();
    }
    out
}

/// Appends to `path` the key of `table` that `offset` belongs to: the last
/// key before it, descending into tables and arrays; a plain value counts
/// only if its span holds `offset`. Returns whether it found one.
fn key_at(table: &DeTable<'_>, offset: usize, path: &mut String) -> bool {
    let Some((key, value)) = table
        .iter()
        .filter(|(key, _)| key.span().start <= offset)
        .max_by_key(|(key, _)| key.span().start)
    else {
        return false;
    };
    let len = path.len();
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key.get_ref());
    if value_at(value, offset, path) {
        return true;
    }
    path.truncate(len);
    false
}

fn value_at(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut String) -> bool {
    match value.get_ref() {
        DeValue::Table(table) => {
            key_at(table, offset, path);
            true
        }
        DeValue::Array(array) => {
            if let Some((i, item)) = array
                .iter()
                .enumerate()
                .rfind(|(_, item)| item.span().start <= offset)
            {
                let len = path.len();
                let _ = write!(path, "[{i}]");
                if !value_at(item, offset, path) {
                    path.truncate(len);
                }
            }
            true
        }
        _ => value.span().contains(&offset) || value.span().end == offset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // read through Debug only
    struct Doc {
        #[serde(default)]
        list: Vec<Item>,
        table: Option<Spanned<Item>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        name: Option<Spanned<String>>,
    }

    fn field(text: &str) -> String {
        deserialize::<Doc>(text).unwrap_err().field
    }

    #[test]
    fn deserialization_errors_have_the_path_as_written() {
        assert_eq!(field("[[list]]\n[[list]]\nname = 5\n"), "list[1].name");
        assert_eq!(field("[table]\nnmae = \"x\"\n"), "table.nmae");
        assert_eq!(field("other = 1\n"), "other");
        assert_eq!(field("list = 1\n"), "list");
    }

    #[test]
    fn syntax_errors_have_the_path_of_the_key_they_are_in() {
        assert_eq!(field("[[list]]\nname = \n"), "list[0].name");
        assert_eq!(field("[table]\nname = \"x\n"), "table.name");
        assert_eq!(field("= 1\n"), DOCUMENT);
        let e = deserialize::<Doc>("[[list]]\nname = \n").unwrap_err();
        assert_eq!(e.span, Some(16..16));
    }
}
