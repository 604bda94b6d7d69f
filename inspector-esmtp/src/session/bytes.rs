//! Searches in the short byte strings of commands and replies, a word of
//! eight bytes at a time: on lines of a few dozen bytes a vector search's
//! setup costs more than the search, and a byte loop is slower still.

use memchr::memchr;

const ONES: u64 = u64::from_ne_bytes([1; 8]);
const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);

/// `byte` in each of a word's bytes.
const fn splat(byte: u8) -> u64 {
    u64::from_ne_bytes([byte; 8])
}

/// The high bit of each zero byte of `word`, up to its first zero byte
/// (above it a borrow may mark others): the lowest bit set is exact.
fn zeros(word: u64) -> u64 {
    word.wrapping_sub(ONES) & !word & HIGH
}

/// Where in `word` (read little-endian) the first byte `mask` marks is.
fn first(mask: u64) -> usize {
    mask.trailing_zeros() as usize / 8
}

/// Bytes searched a word at a time before handing a longer line to
/// `memchr`.
const SHORT: usize = 64;

/// Where the first LF of `s` is. (Always inlined: it cuts every line,
/// and a call costs as much as a short line's search.)
#[inline(always)]
pub fn find_lf(s: &[u8]) -> Option<usize> {
    let head = s.get(..SHORT).unwrap_or(s);
    let (words, tail) = head.as_chunks::<8>();
    for (i, word) in words.iter().enumerate() {
        let lf = zeros(u64::from_le_bytes(*word) ^ splat(b'\n'));
        if lf != 0 {
            return Some(i * 8 + first(lf));
        }
    }
    let from = words.len() * 8;
    if let Some(p) = tail.iter().position(|&b| b == b'\n') {
        return Some(from + p);
    }
    let from = head.len();
    memchr(b'\n', s.get(from..).unwrap_or_default()).map(|p| from + p)
}

/// Where the first `byte` of `s`, a short string, is.
#[inline]
pub fn find_short(byte: u8, s: &[u8]) -> Option<usize> {
    let (words, tail) = s.as_chunks::<8>();
    for (i, word) in words.iter().enumerate() {
        let found = zeros(u64::from_le_bytes(*word) ^ splat(byte));
        if found != 0 {
            return Some(i * 8 + first(found));
        }
    }
    let from = words.len() * 8;
    tail.iter().position(|&b| b == byte).map(|p| from + p)
}

/// The first NUL or CR of `s`.
pub fn first_nul_or_cr(s: &[u8]) -> Option<u8> {
    let (words, tail) = s.as_chunks::<8>();
    for word in words {
        let w = u64::from_le_bytes(*word);
        let found = zeros(w) | zeros(w ^ splat(b'\r'));
        if found != 0 {
            return word.get(first(found)).copied();
        }
    }
    tail.iter().copied().find(|&b| b == 0 || b == b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every position, in a string shorter and longer than `SHORT`, and
    /// the bytes next to LF and CR that a word test could confuse.
    #[test]
    fn finds_the_first_byte_wherever_it_is() {
        for len in [0, 1, 7, 8, 9, 63, 64, 65, 200] {
            for at in 0..len {
                for before in [0u8, b'\t', b'\x0b', b'\x0c', b'\x0e', 0x80, 0xff] {
                    let mut s = vec![before; len];
                    s[at] = b'\n';
                    assert_eq!(find_lf(&s), Some(at), "{len} {at} {before}");
                    s[at] = b'\r';
                    let want = if before == 0 && at > 0 {
                        Some(0)
                    } else {
                        Some(b'\r')
                    };
                    assert_eq!(first_nul_or_cr(&s), want, "{len} {at} {before}");
                }
                let mut s = vec![b'a'; len];
                s[at] = 0;
                s.extend_from_slice(b"\n\r");
                assert_eq!(find_lf(&s), Some(len));
                assert_eq!(first_nul_or_cr(&s), Some(0));
            }
            assert_eq!(find_lf(&vec![b'\r'; len]), None);
            for at in 0..len {
                for before in [0u8, b'?', b'A', 0xc0] {
                    let mut s = vec![before; len];
                    s[at] = b'@';
                    assert_eq!(find_short(b'@', &s), Some(at), "{len} {at} {before}");
                    s.truncate(at);
                    assert_eq!(find_short(b'@', &s), None);
                }
            }
            assert_eq!(first_nul_or_cr(&vec![b'\n'; len]), None);
        }
    }
}
