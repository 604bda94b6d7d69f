//! Structured header values: Content-Type (RFC 2045 media type and
//! parameters), Content-Disposition (RFC 2183), Content-Transfer-Encoding,
//! with RFC 2231 extended/continued parameters and RFC 2047 encoded words in
//! names. Parsing is lenient in the way mail clients are: an unquoted value
//! runs to the next `;`, an unterminated quoted string to the end of the field.
//!
//! Everything here works on one stored (capped) field value; allocations are
//! bounded by its length (see `MimeLimits::memory_bound`).

use std::borrow::Cow;

use super::Encoding;
use super::encoded_word::{Charset, NameOut, NameSink, decode_2047, pct_decode};

/// Longest stored `type/subtype` (RFC 6838: 127 + 1 + 127).
pub(crate) const MAX_CONTENT_TYPE: usize = 255;
/// Longest stored unknown Content-Transfer-Encoding token.
pub(crate) const MAX_ENCODING: usize = 64;
/// Most RFC 2231 continuation sections kept per parameter.
pub(crate) const MAX_SECTIONS: usize = 256;

fn is_wsp(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s
        && is_wsp(*first)
    {
        s = rest;
    }
    while let [rest @ .., last] = s
        && is_wsp(*last)
    {
        s = rest;
    }
    s
}

/// Skips whitespace and (nested) RFC 822 comments from `pos`.
fn skip_cfws(v: &[u8], mut pos: usize) -> usize {
    while pos < v.len() {
        match v[pos] {
            b if is_wsp(b) => pos += 1,
            b'(' => {
                let mut depth = 0usize;
                while pos < v.len() {
                    match v[pos] {
                        b'\\' => pos += 1,
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                pos += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    pos += 1;
                }
            }
            _ => break,
        }
    }
    pos.min(v.len())
}

/// Removes comments (outside quoted strings) from a short head value.
fn strip_comments(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut pos = 0;
    while pos < v.len() {
        if v[pos] == b'(' {
            pos = skip_cfws(v, pos);
            out.push(b' ');
        } else {
            out.push(v[pos]);
            pos += 1;
        }
    }
    out
}

/// Iterator over `; name=value` parameters, starting at the first `;`.
pub(crate) struct Params<'a> {
    v: &'a [u8],
    pos: usize,
}

impl<'a> Params<'a> {
    /// Splits a field value into its head (before the first `;`) and params.
    pub(crate) fn split(v: &'a [u8]) -> (&'a [u8], Params<'a>) {
        let pos = memchr::memchr(b';', v).unwrap_or(v.len());
        (&v[..pos], Params { v, pos })
    }
}

impl<'a> Iterator for Params<'a> {
    type Item = (&'a [u8], Cow<'a, [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let v = self.v;
        loop {
            if self.pos >= v.len() {
                return None;
            }
            // v[pos] is ';'
            let mut pos = skip_cfws(v, self.pos + 1);
            let name_start = pos;
            while pos < v.len() && v[pos] != b'=' && v[pos] != b';' {
                pos += 1;
            }
            let name = trim(&v[name_start..pos]);
            if pos >= v.len() {
                self.pos = pos;
                return None;
            }
            if v[pos] == b';' {
                self.pos = pos;
                continue;
            }
            pos += 1; // '='
            while pos < v.len() && is_wsp(v[pos]) {
                pos += 1;
            }
            let value: Cow<'a, [u8]> = if pos < v.len() && v[pos] == b'"' {
                pos += 1;
                let start = pos;
                let mut owned: Option<Vec<u8>> = None;
                while pos < v.len() && v[pos] != b'"' {
                    if v[pos] == b'\\' && pos + 1 < v.len() {
                        let o = owned.get_or_insert_with(|| v[start..pos].to_vec());
                        o.push(v[pos + 1]);
                        pos += 2;
                        continue;
                    }
                    if let Some(o) = owned.as_mut() {
                        o.push(v[pos]);
                    }
                    pos += 1;
                }
                let value = match owned {
                    Some(o) => Cow::Owned(o),
                    None => Cow::Borrowed(&v[start..pos.min(v.len())]),
                };
                // Skip the closing quote and anything up to the next ';'.
                pos = match memchr::memchr(b';', &v[pos.min(v.len())..]) {
                    Some(i) => pos + i,
                    None => v.len(),
                };
                value
            } else {
                let end = memchr::memchr(b';', &v[pos..]).map_or(v.len(), |i| pos + i);
                let value = trim(&v[pos..end]);
                pos = end;
                Cow::Borrowed(value)
            };
            self.pos = pos;
            if name.is_empty() {
                continue;
            }
            return Some((name, value));
        }
    }
}

/// The forms one file-name parameter (`filename` or `name`) can take.
#[derive(Default)]
pub(crate) struct NameParam<'a> {
    plain: Option<Cow<'a, [u8]>>,
    single: Option<Cow<'a, [u8]>>,
    sections: Vec<(u32, bool, Cow<'a, [u8]>)>,
    /// More sections than MAX_SECTIONS: the name is incomplete.
    pub(crate) overflow: bool,
}

impl<'a> NameParam<'a> {
    /// Takes the parameter if its name is `key`, `key*`, `key*N` or `key*N*`;
    /// otherwise gives the value back.
    pub(crate) fn offer(
        &mut self,
        name: &[u8],
        value: Cow<'a, [u8]>,
        key: &[u8],
    ) -> Option<Cow<'a, [u8]>> {
        if name.len() < key.len() || !name[..key.len()].eq_ignore_ascii_case(key) {
            return Some(value);
        }
        let rest = &name[key.len()..];
        if rest.is_empty() {
            if self.plain.is_none() {
                self.plain = Some(value);
            }
            return None;
        }
        let Some(rest) = rest.strip_prefix(b"*") else {
            return Some(value);
        };
        if rest.is_empty() {
            if self.single.is_none() {
                self.single = Some(value);
            }
            return None;
        }
        let (digits, ext) = match rest.strip_suffix(b"*") {
            Some(d) => (d, true),
            None => (rest, false),
        };
        if digits.is_empty() || digits.len() > 6 || !digits.iter().all(u8::is_ascii_digit) {
            return Some(value);
        }
        let idx = digits
            .iter()
            .fold(0u32, |a, &d| a * 10 + u32::from(d - b'0'));
        if self.sections.len() >= MAX_SECTIONS {
            self.overflow = true;
        } else {
            self.sections.push((idx, ext, value));
        }
        None
    }

    pub(crate) fn is_present(&self) -> bool {
        self.plain.is_some() || self.single.is_some() || !self.sections.is_empty()
    }

    /// Decodes the name; RFC 2231 forms are preferred over the plain one.
    pub(crate) fn decode(mut self, cap: usize) -> Option<NameOut> {
        let mut sink = NameSink::new(cap);
        if !self.sections.is_empty() {
            self.sections.sort_by_key(|s| s.0);
            self.sections.dedup_by_key(|s| s.0);
            if self.sections.iter().any(|s| s.1) {
                let mut cs = Charset::Utf8;
                for (i, (_, ext, value)) in self.sections.iter().enumerate() {
                    if *ext {
                        let data = if i == 0 {
                            let (c, data) = split_charset(value);
                            cs = c;
                            data
                        } else {
                            value
                        };
                        pct_decode(data, cs, &mut sink);
                    } else {
                        sink.push(value, cs);
                    }
                }
            } else {
                // Plain continuations: join, then decode encoded words
                // (some mailers split an RFC 2047 name this way).
                let joined: Vec<u8> = self
                    .sections
                    .iter()
                    .flat_map(|s| s.2.iter().copied())
                    .collect();
                decode_2047(&joined, &mut sink);
            }
        } else if let Some(v) = &self.single {
            let (cs, data) = split_charset(v);
            pct_decode(data, cs, &mut sink);
        } else if let Some(v) = &self.plain {
            decode_2047(v, &mut sink);
        } else {
            return None;
        }
        Some(sink.finish())
    }
}

/// `charset'language'rest` (RFC 2231 section 4); without two quotes the whole
/// value is taken as the encoded text.
fn split_charset(v: &[u8]) -> (Charset, &[u8]) {
    if let Some(q1) = memchr::memchr(b'\'', v)
        && let Some(q2) = memchr::memchr(b'\'', &v[q1 + 1..])
    {
        return (Charset::from_name(&v[..q1]), &v[q1 + 1 + q2 + 1..]);
    }
    (Charset::Utf8, v)
}

fn is_token_byte(b: u8) -> bool {
    (0x21..0x7f).contains(&b) && !b"()<>@,;:\\\"/[]?=".contains(&b)
}

/// What a Content-Type field yields.
#[derive(Debug, Default)]
pub(crate) struct ContentType {
    /// Lowercased `type/subtype`, None if invalid.
    pub(crate) media_type: Option<String>,
    pub(crate) boundary: Option<Vec<u8>>,
    pub(crate) name: Option<NameOut>,
    pub(crate) incomplete: bool,
    /// A boundary parameter was given but is empty or longer than the
    /// limit: the multipart cannot be followed.
    pub(crate) bad_boundary: bool,
}

pub(crate) fn parse_content_type(v: &[u8], max_boundary: usize, max_name: usize) -> ContentType {
    let (head, params) = Params::split(v);
    let mut out = ContentType {
        media_type: parse_media_type(head),
        ..ContentType::default()
    };
    let mut name = NameParam::default();
    for (pname, value) in params {
        let Some(value) = name.offer(pname, value, b"name") else {
            continue;
        };
        if out.boundary.is_none() && pname.eq_ignore_ascii_case(b"boundary") {
            // RFC 2046: 1..70 chars, not ending in a space. We accept up to
            // max_boundary and keep inner spaces; an empty or overlong one
            // makes the multipart opaque.
            let b = &value[..];
            let b = match b.iter().rposition(|&c| c != b' ') {
                Some(i) => &b[..=i],
                None => &b[..0],
            };
            if !b.is_empty() && b.len() <= max_boundary {
                out.boundary = Some(b.to_vec());
            } else {
                out.bad_boundary = true;
            }
        }
    }
    out.incomplete = name.overflow;
    out.name = name.decode(max_name);
    out
}

fn parse_media_type(head: &[u8]) -> Option<String> {
    let head = strip_comments(head);
    let head = trim(&head);
    let slash = memchr::memchr(b'/', head)?;
    let ty = trim(&head[..slash]);
    let sub = trim(&head[slash + 1..]);
    let sub_end = sub.iter().position(|&b| is_wsp(b)).unwrap_or(sub.len());
    let sub = &sub[..sub_end];
    if ty.is_empty() || sub.is_empty() || !ty.iter().chain(sub).all(|&b| is_token_byte(b)) {
        return None;
    }
    let mut s = String::with_capacity((ty.len() + 1 + sub.len()).min(MAX_CONTENT_TYPE));
    for &b in ty.iter().chain(b"/").chain(sub).take(MAX_CONTENT_TYPE) {
        s.push(b.to_ascii_lowercase() as char);
    }
    Some(s)
}

/// What a Content-Disposition field yields: its `filename`.
pub(crate) struct Disposition {
    pub(crate) filename: Option<NameOut>,
    pub(crate) incomplete: bool,
}

pub(crate) fn parse_disposition(v: &[u8], max_name: usize) -> Disposition {
    let (_head, params) = Params::split(v);
    let mut name = NameParam::default();
    for (pname, value) in params {
        let _ = name.offer(pname, value, b"filename");
    }
    let incomplete = name.overflow;
    Disposition {
        filename: if name.is_present() {
            name.decode(max_name)
        } else {
            None
        },
        incomplete,
    }
}

pub(crate) fn parse_encoding(v: &[u8]) -> Encoding {
    let v = strip_comments(v);
    let v = trim(&v);
    let end = v
        .iter()
        .position(|&b| is_wsp(b) || b == b';')
        .unwrap_or(v.len());
    let tok = &v[..end];
    let eq = |s: &[u8]| tok.eq_ignore_ascii_case(s);
    if eq(b"7bit") {
        Encoding::SevenBit
    } else if eq(b"8bit") {
        Encoding::EightBit
    } else if eq(b"binary") {
        Encoding::Binary
    } else if eq(b"base64") {
        Encoding::Base64
    } else if eq(b"quoted-printable") {
        Encoding::QuotedPrintable
    } else {
        let s: String = String::from_utf8_lossy(&tok[..tok.len().min(MAX_ENCODING)]).to_lowercase();
        let mut s = s;
        if s.len() > MAX_ENCODING {
            let mut end = MAX_ENCODING;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
        }
        Encoding::Other(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: &str) -> Vec<(String, String)> {
        Params::split(v.as_bytes())
            .1
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn param_forms() {
        assert_eq!(
            params(r#"text/plain; charset="us-ascii" ; format=flowed;x; name = "a\"b\\c.txt" (c)"#),
            vec![
                ("charset".into(), "us-ascii".into()),
                ("format".into(), "flowed".into()),
                ("name".into(), r#"a"b\c.txt"#.into()),
            ]
        );
        // Unterminated quote runs to the end; unquoted value to the next ';'.
        assert_eq!(
            params(r#"x/y; a=b c d ; name="open.exe"#),
            vec![
                ("a".into(), "b c d".into()),
                ("name".into(), "open.exe".into())
            ]
        );
        assert!(params("x/y;;;=;=x;;").is_empty());
        assert_eq!(
            params(r#"x/y; filename="a;b.exe" junk; c=d"#),
            vec![
                ("filename".into(), "a;b.exe".into()),
                ("c".into(), "d".into())
            ]
        );
    }

    #[test]
    fn media_type() {
        let ct = |s: &str| parse_content_type(s.as_bytes(), 70, 255).media_type;
        assert_eq!(
            ct(" Text/HTML ; charset=utf-8").as_deref(),
            Some("text/html")
        );
        assert_eq!(
            ct("(c) application / octet-stream (x)").as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(ct("application"), None);
        assert_eq!(ct("a/"), None);
        assert_eq!(ct("a@b/c"), None);
        assert_eq!(
            ct(&format!("a/{}", "b".repeat(400))).map(|s| s.len()),
            Some(MAX_CONTENT_TYPE)
        );
    }

    #[test]
    fn boundary_param() {
        let b = |s: &str| parse_content_type(s.as_bytes(), 70, 255).boundary;
        assert_eq!(
            b(r#"multipart/mixed; boundary="a b:c ""#).as_deref(),
            Some(&b"a b:c"[..])
        );
        assert_eq!(
            b("multipart/mixed; BOUNDARY=xyz").as_deref(),
            Some(&b"xyz"[..])
        );
        assert_eq!(b(r#"multipart/mixed; boundary="""#), None);
        assert_eq!(
            b(&format!("multipart/mixed; boundary={}", "x".repeat(71))),
            None
        );
        assert_eq!(b("multipart/mixed"), None);
    }

    #[test]
    fn names() {
        let cd = |s: &str| {
            parse_disposition(s.as_bytes(), 255)
                .filename
                .map(|n| (n.text, n.octets))
        };
        assert_eq!(cd("attachment; filename=a.exe"), Some(("a.exe".into(), 5)));
        assert_eq!(cd("attachment"), None);
        assert_eq!(
            cd("attachment; filename*=UTF-8''%C3%A9t%C3%A9.pdf"),
            Some(("été.pdf".into(), 9))
        );
        assert_eq!(
            cd("attachment; filename*=iso-8859-1'fr'%E9t%E9.pdf"),
            Some(("été.pdf".into(), 7))
        );
        // Out-of-order continuations, extended and plain mixed, 2231 preferred.
        assert_eq!(
            cd(
                "attachment; filename=fallback.txt; filename*1=\"-part2\"; filename*0*=utf-8'en'%C3%A9; filename*2*=%2Eexe"
            ),
            Some(("é-part2.exe".into(), 12))
        );
        assert_eq!(
            cd("attachment; filename*0=\"=?utf-8?B?w6k\"; filename*1=\"=?=.txt\""),
            Some(("é.txt".into(), 6))
        );
        assert_eq!(
            cd("attachment; filename=\"=?utf-8?Q?r=C3=A9sum=C3=A9?=.doc\""),
            Some(("résumé.doc".into(), 12))
        );
        let name = |s: &str| {
            parse_content_type(s.as_bytes(), 70, 255)
                .name
                .map(|n| n.text)
        };
        assert_eq!(
            name("application/pdf; name==?utf-8?B?w6kucGRm?="),
            Some("é.pdf".into())
        );
    }

    #[test]
    fn too_many_sections() {
        let mut v = String::from("attachment");
        for i in 0..300 {
            v.push_str(&format!("; filename*{i}=x"));
        }
        let d = parse_disposition(v.as_bytes(), 1024);
        assert!(d.incomplete);
        assert_eq!(d.filename.unwrap().octets, MAX_SECTIONS);
    }

    #[test]
    fn encodings() {
        assert_eq!(parse_encoding(b" Base64 "), Encoding::Base64);
        assert_eq!(
            parse_encoding(b"(x) quoted-printable (y)"),
            Encoding::QuotedPrintable
        );
        assert_eq!(parse_encoding(b"7BIT"), Encoding::SevenBit);
        assert_eq!(parse_encoding(b"8bit"), Encoding::EightBit);
        assert_eq!(parse_encoding(b"binary"), Encoding::Binary);
        assert_eq!(
            parse_encoding(b"X-UUEncode"),
            Encoding::Other("x-uuencode".into())
        );
        assert_eq!(parse_encoding(b""), Encoding::Other(String::new()));
        match parse_encoding("é".repeat(100).as_bytes()) {
            Encoding::Other(s) => assert!(s.len() <= MAX_ENCODING && !s.is_empty()),
            e => panic!("{e:?}"),
        }
    }
}
