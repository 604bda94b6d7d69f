//! Reading and rewriting server reply lines: the reply code, the keyword
//! of an EHLO line, the compat greeting in asterisks, and the EHLO reply
//! with the keywords the policy masks taken out. Every other reply,
//! including the one to the end of a message, is relayed exactly as the
//! server sent it.

use super::split_eol;

/// The reply code of a line, if it starts with three digits.
pub fn code_of(content: &[u8]) -> Option<u16> {
    match content.get(..3)? {
        [a, b, c] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    }
}

/// The keyword of an EHLO reply line (`250-SIZE 1000` → `SIZE`), upper case.
pub fn ehlo_keyword(content: &[u8]) -> String {
    let text = content.get(4..).unwrap_or_default();
    let end = text
        .iter()
        .position(|&b| b == b' ' || b == b'=')
        .unwrap_or(text.len());
    String::from_utf8_lossy(text.get(..end).unwrap_or_default()).to_ascii_uppercase()
}

/// The number of an EHLO `SIZE n` line (`250-SIZE 10240000`).
fn size_limit(content: &[u8]) -> Option<u64> {
    let value = content.get(9..)?;
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Compat: the greeting with every character but `2`, `0`, CR and LF
/// turned into `*`.
pub fn asterisks(line: &[u8], to: &mut Vec<u8>) {
    to.extend(line.iter().map(|&b| match b {
        b'2' | b'0' | b'\r' | b'\n' => b,
        _ => b'*',
    }));
}

/// Extensions the client was shown in the last EHLO reply (after masking).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub chunking: bool,
    /// The server's SIZE limit (RFC 1870), when it gave one; also when the
    /// policy hides the keyword from the client: the server enforces it.
    pub size: Option<u64>,
}

/// A 250 EHLO reply as the client gets it, line by line: the first line
/// names the server, each other one an extension, which the policy may
/// mask.
#[derive(Debug)]
pub struct EhloRewrite {
    /// Modern mode removes a masked line, compat mode writes over it.
    modern: bool,
    /// Modern mode holds one line back, so that removing the final line
    /// can turn the previous one into the final one.
    held: Option<Vec<u8>>,
    /// Compat: keywords masked so far (`XXXXXXXA`, `…B`, …).
    masked: u8,
    /// Extensions shown in this reply so far.
    ext: Extensions,
}

impl EhloRewrite {
    pub fn new(modern: bool) -> Self {
        Self {
            modern,
            held: None,
            masked: 0,
            ext: Extensions::default(),
        }
    }

    /// The first line of the reply.
    pub fn start(&mut self, line: &[u8], last: bool, to: &mut Vec<u8>) {
        self.masked = 0;
        self.ext = Extensions::default();
        if self.modern && !last {
            self.held = Some(line.to_vec());
        } else {
            to.extend_from_slice(line);
        }
    }

    /// An extension line, whose `keyword` (upper case) the policy masks or
    /// not.
    pub fn extension(
        &mut self,
        line: &[u8],
        keyword: &str,
        last: bool,
        mask: bool,
        to: &mut Vec<u8>,
    ) {
        let (content, _) = split_eol(line);
        match keyword {
            "PIPELINING" if !mask => self.ext.pipelining = true,
            "CHUNKING" if !mask => self.ext.chunking = true,
            "SIZE" => self.ext.size = size_limit(content),
            _ => {}
        }
        match (self.modern, mask) {
            // Compat: the line keeps its length; the Nth masked keyword ends
            // in the Nth letter (STARTTLS shows as `XXXXXXXA`).
            (false, true) => {
                let text_len = content.len().saturating_sub(4);
                to.extend_from_slice(line.get(..4).unwrap_or_default());
                if text_len > 0 {
                    to.resize(to.len() + text_len - 1, b'X');
                    to.push(b'A' + self.masked % 26);
                }
                to.extend_from_slice(line.get(content.len()..).unwrap_or_default());
                self.masked = self.masked.wrapping_add(1);
            }
            (false, false) => to.extend_from_slice(line),
            // Modern: the line is removed; if it was the last one, the line
            // before becomes the last.
            (true, true) => {
                if last && let Some(mut prev) = self.held.take() {
                    if let Some(sep) = prev.get_mut(3) {
                        *sep = b' ';
                    }
                    to.extend_from_slice(&prev);
                }
            }
            (true, false) => {
                if let Some(prev) = self.held.take() {
                    to.extend_from_slice(&prev);
                }
                if last {
                    to.extend_from_slice(line);
                } else {
                    self.held = Some(line.to_vec());
                }
            }
        }
    }

    /// Whether a line is held back.
    pub fn holds(&self) -> bool {
        self.held.is_some()
    }

    /// A line held back goes out first, whatever ends the reply.
    pub fn flush(&mut self, to: &mut Vec<u8>) {
        if let Some(held) = self.held.take() {
            to.extend_from_slice(&held);
        }
    }

    /// The extensions the reply showed.
    pub fn extensions(&self) -> Extensions {
        self.ext
    }

    pub fn heap_bytes(&self) -> usize {
        self.held.as_ref().map_or(0, Vec::capacity)
    }
}
