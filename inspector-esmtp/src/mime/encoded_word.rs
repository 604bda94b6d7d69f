//! RFC 2047 encoded words (`=?charset?B?...?=`, `=?charset?Q?...?=`) and the
//! bounded sink that turns decoded octets into a (capped) display string.

/// How decoded octets become text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Charset {
    /// UTF-8, US-ASCII and every charset we do not convert: lossy UTF-8.
    Utf8,
    /// ISO-8859-1 and its aliases, windows-1252 (approximated): one char per octet.
    Latin1,
}

impl Charset {
    /// Maps a MIME charset name (RFC 2231 `*lang` suffix allowed) to a converter.
    pub(crate) fn from_name(name: &[u8]) -> Charset {
        let name = match name.iter().position(|&b| b == b'*') {
            Some(i) => &name[..i],
            None => name,
        };
        const LATIN1: [&[u8]; 9] = [
            b"iso-8859-1",
            b"iso8859-1",
            b"iso_8859-1",
            b"latin1",
            b"latin-1",
            b"l1",
            b"windows-1252",
            b"cp1252",
            b"cp819",
        ];
        if LATIN1.iter().any(|n| name.eq_ignore_ascii_case(n)) {
            Charset::Latin1
        } else {
            Charset::Utf8
        }
    }
}

/// A decoded name: display text (capped) and its full decoded length in octets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NameOut {
    pub(crate) text: String,
    pub(crate) octets: usize,
}

/// Collects decoded octets: counts all of them, keeps at most `cap + 4` raw
/// octets (enough for `cap` bytes of text, since conversion never shrinks
/// text below the octets it consumed), converts runs of one charset at once
/// so that a UTF-8 character split across encoded words survives.
pub(crate) struct NameSink {
    octets: usize,
    text: String,
    pending: Vec<u8>,
    pending_cs: Charset,
    stored: usize,
    cap: usize,
}

impl NameSink {
    pub(crate) fn new(cap: usize) -> Self {
        NameSink {
            octets: 0,
            text: String::new(),
            pending: Vec::new(),
            pending_cs: Charset::Utf8,
            stored: 0,
            cap,
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8], cs: Charset) {
        self.octets += bytes.len();
        if cs != self.pending_cs {
            self.flush();
            self.pending_cs = cs;
        }
        let room = (self.cap + 4).saturating_sub(self.stored);
        let take = room.min(bytes.len());
        self.pending.extend_from_slice(&bytes[..take]);
        self.stored += take;
    }

    pub(crate) fn push_byte(&mut self, b: u8, cs: Charset) {
        self.push(&[b], cs);
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        match self.pending_cs {
            Charset::Utf8 => self.text.push_str(&String::from_utf8_lossy(&self.pending)),
            Charset::Latin1 => self.text.extend(self.pending.iter().map(|&b| b as char)),
        }
        self.pending.clear();
    }

    pub(crate) fn finish(mut self) -> NameOut {
        self.flush();
        if self.text.len() > self.cap {
            let mut end = self.cap;
            while !self.text.is_char_boundary(end) {
                end -= 1;
            }
            self.text.truncate(end);
        }
        self.text.shrink_to_fit();
        NameOut {
            text: self.text,
            octets: self.octets,
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `%XX` decoding (RFC 2231 extended values); a malformed `%` stays literal.
pub(crate) fn pct_decode(data: &[u8], cs: Charset, sink: &mut NameSink) {
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'%'
            && i + 2 < data.len()
            && let (Some(h), Some(l)) = (hex(data[i + 1]), hex(data[i + 2]))
        {
            sink.push_byte(h << 4 | l, cs);
            i += 3;
            continue;
        }
        sink.push_byte(data[i], cs);
        i += 1;
    }
}

fn b64_value(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Lenient base64: characters outside the alphabet are skipped, `=` ends it.
fn b64_decode(text: &[u8], cs: Charset, sink: &mut NameSink) {
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &b in text {
        if b == b'=' {
            break;
        }
        let Some(v) = b64_value(b) else { continue };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            sink.push_byte((acc >> bits) as u8, cs);
            acc &= (1 << bits) - 1;
        }
    }
}

/// RFC 2047 "Q": `_` is a space, `=XX` an octet, a malformed `=` stays literal.
fn q_decode(text: &[u8], cs: Charset, sink: &mut NameSink) {
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'_' => sink.push_byte(b' ', cs),
            b'=' if i + 2 < text.len() => {
                if let (Some(h), Some(l)) = (hex(text[i + 1]), hex(text[i + 2])) {
                    sink.push_byte(h << 4 | l, cs);
                    i += 3;
                    continue;
                }
                sink.push_byte(b'=', cs);
            }
            b => sink.push_byte(b, cs),
        }
        i += 1;
    }
}

/// Parses an encoded word starting at `input[0..2] == "=?"`. Returns
/// (charset, is_base64, text, length consumed).
fn parse_word(input: &[u8]) -> Option<(&[u8], bool, &[u8], usize)> {
    let rest = input.strip_prefix(b"=?")?;
    let q1 = rest.iter().position(|&b| b == b'?')?;
    let charset = &rest[..q1];
    if charset.is_empty() || charset.iter().any(|&b| b <= b' ' || b == b'"') {
        return None;
    }
    let after = &rest[q1 + 1..];
    let (&enc, after) = after.split_first()?;
    let b64 = match enc {
        b'B' | b'b' => true,
        b'Q' | b'q' => false,
        _ => return None,
    };
    let after = after.strip_prefix(b"?")?;
    let q2 = after.iter().position(|&b| b == b'?')?;
    if after.get(q2 + 1) != Some(&b'=') {
        return None;
    }
    let text = &after[..q2];
    if text.iter().any(|&b| b == b' ' || b == b'\t') {
        return None;
    }
    let consumed = 2 + q1 + 1 + 1 + 1 + q2 + 2;
    Some((charset, b64, text, consumed))
}

/// Decodes every RFC 2047 encoded word in `input` (also where RFC 2047 does
/// not allow them, like quoted parameter values: mail clients decode them
/// there). Whitespace between two adjacent encoded words is dropped; other
/// text is passed through as (lossy) UTF-8 octets.
pub(crate) fn decode_2047(input: &[u8], sink: &mut NameSink) {
    let mut i = 0;
    let mut after_word = false;
    let mut ws_start: Option<usize> = None;
    while i < input.len() {
        let b = input[i];
        if b == b'='
            && input.get(i + 1) == Some(&b'?')
            && let Some((charset, b64, text, consumed)) = parse_word(&input[i..])
        {
            if let Some(ws) = ws_start.take()
                && !after_word
            {
                sink.push(&input[ws..i], Charset::Utf8);
            }
            let cs = Charset::from_name(charset);
            if b64 {
                b64_decode(text, cs, sink);
            } else {
                q_decode(text, cs, sink);
            }
            after_word = true;
            i += consumed;
            continue;
        }
        if b == b' ' || b == b'\t' {
            if ws_start.is_none() {
                ws_start = Some(i);
            }
            i += 1;
            continue;
        }
        if let Some(ws) = ws_start.take() {
            sink.push(&input[ws..i], Charset::Utf8);
        }
        after_word = false;
        sink.push_byte(b, Charset::Utf8);
        i += 1;
    }
    if let Some(ws) = ws_start
        && !after_word
    {
        sink.push(&input[ws..], Charset::Utf8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> NameOut {
        let mut sink = NameSink::new(1024);
        decode_2047(s.as_bytes(), &mut sink);
        sink.finish()
    }

    #[test]
    fn b_and_q_words() {
        assert_eq!(dec("=?utf-8?B?w6lsw6h2ZS5leGU=?=").text, "élève.exe");
        assert_eq!(dec("=?UTF-8?Q?=C3=A9l=C3=A8ve_1.exe?=").text, "élève 1.exe");
        assert_eq!(dec("=?iso-8859-1?q?caf=E9.doc?=").text, "café.doc");
        assert_eq!(dec("=?iso-8859-1?q?caf=E9.doc?=").octets, 8);
    }

    #[test]
    fn adjacent_words_and_split_utf8_char() {
        // "é" (C3 A9) split across two words, whitespace between words dropped.
        let out = dec("=?utf-8?B?w6k=?= =?utf-8?Q?=C3?=\t=?utf-8?Q?=A9x?=");
        assert_eq!(out.text, "ééx");
        assert_eq!(out.octets, 5);
    }

    #[test]
    fn text_around_words_kept() {
        assert_eq!(dec("a =?utf-8?Q?b?= c").text, "a b c");
        assert_eq!(dec("plain name.txt").text, "plain name.txt");
    }

    #[test]
    fn malformed_words_stay_literal() {
        for s in [
            "=?",
            "=?utf-8",
            "=?utf-8?",
            "=?utf-8?X?abc?=",
            "=?utf-8?B?abc",
            "=??B?abc?=",
            "=?utf-8?Q?a=",
            "=?utf-8?Q?a=Z?=",
        ] {
            let out = dec(s);
            if s == "=?utf-8?Q?a=Z?=" {
                assert_eq!(out.text, "a=Z");
            } else {
                assert_eq!(out.text, s, "{s}");
            }
        }
    }

    #[test]
    fn sink_caps_text_but_counts_all() {
        let mut sink = NameSink::new(16);
        for _ in 0..100 {
            sink.push("é".as_bytes(), Charset::Utf8);
        }
        let out = sink.finish();
        assert_eq!(out.octets, 200);
        assert!(out.text.len() <= 16);
        assert_eq!(out.text, "éééééééé");
    }

    #[test]
    fn pct() {
        let mut sink = NameSink::new(64);
        pct_decode(b"a%20b%zz%4", Charset::Utf8, &mut sink);
        assert_eq!(sink.finish().text, "a b%zz%4");
    }
}
