//! Streaming parse of one entity's header block (RFC 5322 section 2.2 with
//! folding): field names are recognized as bytes arrive; only the three
//! MIME fields we need are stored (unfolded, capped), the others are skipped.

use super::encoded_word::NameOut;
use super::params::{parse_content_type, parse_disposition, parse_encoding};
use super::{Encoding, MimeLimits, PartInfo, Unreadable};

/// Longest field name kept for classification (longer ones are "other").
const NAME_CAP: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    ContentType,
    Disposition,
    Encoding,
    Other,
}

/// Appends at most `cap - buf.len()` bytes, growing the allocation
/// geometrically but never beyond `cap`. Returns true if bytes were dropped.
pub(crate) fn push_capped(buf: &mut Vec<u8>, data: &[u8], cap: usize) -> bool {
    let take = cap.saturating_sub(buf.len()).min(data.len());
    if take > 0 {
        let need = buf.len() + take;
        if need > buf.capacity() {
            let target = need.max(buf.capacity() * 2).max(64).min(cap);
            buf.reserve_exact(target - buf.len());
        }
        buf.extend_from_slice(&data[..take]);
    }
    take < data.len()
}

#[derive(Debug, Default)]
pub(crate) struct HeaderState {
    // Current line.
    in_name: bool,
    name: [u8; NAME_CAP],
    name_len: usize,
    name_overflow: bool,
    line_is_to: bool,
    // Current field (after its colon; folded lines continue it).
    field: Option<Field>,
    value: Vec<u8>,
    value_truncated: bool,
    // Results for this entity (first occurrence of each field wins).
    media_type: Option<Option<String>>,
    boundary: Option<Vec<u8>>,
    ct_name: Option<NameOut>,
    cd_seen: bool,
    cd_name: Option<NameOut>,
    encoding: Option<Encoding>,
    truncated: bool,
    /// What about this entity the scanner cannot follow (`Unreadable`).
    unreadable: Option<Unreadable>,
}

impl HeaderState {
    /// Heap bytes held (capacities).
    pub(crate) fn heap_bytes(&self) -> usize {
        let name = |n: &Option<NameOut>| n.as_ref().map_or(0, |n| n.text.capacity());
        self.value.capacity()
            + self
                .media_type
                .as_ref()
                .and_then(|m| m.as_ref())
                .map_or(0, String::capacity)
            + self.boundary.as_ref().map_or(0, Vec::capacity)
            + name(&self.ct_name)
            + name(&self.cd_name)
            + match &self.encoding {
                Some(Encoding::Other(s)) => s.capacity(),
                _ => 0,
            }
    }

    /// Bytes of the current physical line (line ending excluded), in order.
    /// `line_start` is true for the first bytes of the line.
    pub(crate) fn content(&mut self, mut bytes: &[u8], line_start: bool, limits: &MimeLimits) {
        if bytes.is_empty() {
            return;
        }
        if line_start {
            if bytes[0] == b' ' || bytes[0] == b'\t' {
                // Folded continuation of the current field (if any).
            } else {
                self.complete_field(limits);
                self.in_name = true;
                self.name_len = 0;
                self.name_overflow = false;
            }
        }
        if self.in_name {
            let (name_part, rest) = match memchr::memchr(b':', bytes) {
                Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
                None => (bytes, None),
            };
            let take = (NAME_CAP - self.name_len).min(name_part.len());
            self.name[self.name_len..self.name_len + take].copy_from_slice(&name_part[..take]);
            self.name_len += take;
            self.name_overflow |= take < name_part.len();
            let Some(rest) = rest else { return };
            self.in_name = false;
            let field = self.classify();
            self.field = Some(field);
            if field != Field::Other {
                self.value.clear();
                self.value_truncated = false;
            }
            bytes = rest;
        }
        if matches!(self.field, Some(f) if f != Field::Other) {
            self.value_truncated |= push_capped(&mut self.value, bytes, limits.max_header_value);
        }
    }

    fn classify(&mut self) -> Field {
        let mut name = &self.name[..self.name_len];
        while let [rest @ .., b' ' | b'\t'] = name {
            name = rest;
        }
        if self.name_overflow {
            return Field::Other;
        }
        if name.eq_ignore_ascii_case(b"to") {
            self.line_is_to = true;
            Field::Other
        } else if name.eq_ignore_ascii_case(b"content-type") {
            Field::ContentType
        } else if name.eq_ignore_ascii_case(b"content-disposition") {
            Field::Disposition
        } else if name.eq_ignore_ascii_case(b"content-transfer-encoding") {
            Field::Encoding
        } else {
            Field::Other
        }
    }

    /// End of a non-empty physical header line. Returns true if it began a
    /// To: field.
    pub(crate) fn line_end(&mut self) -> bool {
        if self.in_name {
            // No colon: a malformed line. It ends the previous field (already
            // completed at its start) and is otherwise ignored.
            self.in_name = false;
            self.field = None;
        }
        std::mem::take(&mut self.line_is_to)
    }

    fn complete_field(&mut self, limits: &MimeLimits) {
        let Some(field) = self.field.take() else {
            return;
        };
        let v = &self.value[..];
        match field {
            Field::ContentType if self.media_type.is_none() => {
                let ct = parse_content_type(v, limits.max_boundary_len, limits.max_filename);
                self.media_type = Some(ct.media_type);
                self.boundary = ct.boundary;
                self.ct_name = ct.name;
                self.truncated |= self.value_truncated || ct.incomplete;
                if ct.bad_boundary {
                    self.unreadable.get_or_insert(Unreadable::Boundary);
                }
            }
            Field::Disposition if !self.cd_seen => {
                let d = parse_disposition(v, limits.max_filename);
                self.cd_seen = true;
                self.cd_name = d.filename;
                self.truncated |= self.value_truncated || d.incomplete;
            }
            Field::Encoding if self.encoding.is_none() => {
                self.encoding = Some(parse_encoding(v));
                self.truncated |= self.value_truncated;
            }
            // A second Content-Type, -Disposition or -Transfer-Encoding:
            // the scanner takes the first, some readers the last.
            Field::ContentType | Field::Disposition | Field::Encoding => {
                self.unreadable.get_or_insert(Unreadable::DuplicateField);
            }
            Field::Other => {}
        }
        self.value.clear();
        self.value_truncated = false;
    }

    /// The header block of the entity ended (empty line, boundary, or end of
    /// message). Returns its description and its multipart boundary, and
    /// resets for the next entity.
    pub(crate) fn finish(
        &mut self,
        limits: &MimeLimits,
        depth: usize,
        default_type: &str,
    ) -> (PartInfo, Option<Vec<u8>>, Option<Unreadable>) {
        self.complete_field(limits);
        let mut st = std::mem::take(self);
        // Keep the value allocation for the next entity.
        self.value = std::mem::take(&mut st.value);
        let content_type = st
            .media_type
            .flatten()
            .unwrap_or_else(|| default_type.to_string());
        let name = st.cd_name.or(st.ct_name);
        let info = PartInfo {
            content_type,
            filename_len: name.as_ref().map(|n| n.octets),
            filename: name.map(|n| n.text),
            encoding: st.encoding.unwrap_or(Encoding::SevenBit),
            depth,
            truncated: st.truncated,
        };
        let boundary = if info.content_type.starts_with("multipart/") {
            st.boundary
        } else {
            None
        };
        (info, boundary, st.unreadable)
    }
}
