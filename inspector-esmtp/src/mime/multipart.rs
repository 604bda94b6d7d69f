//! Multipart structure (RFC 2046 section 5.1): the stack of open boundaries
//! and the recognition of boundary lines without buffering whole lines.

/// One open multipart entity.
#[derive(Debug)]
pub(crate) struct Frame {
    /// The boundary, 1..=max_boundary_len bytes.
    pub(crate) boundary: Vec<u8>,
    /// multipart/digest: parts default to message/rfc822.
    pub(crate) digest: bool,
    /// Depth of the multipart entity itself; its parts are at depth + 1.
    pub(crate) depth: usize,
}

/// A recognized boundary line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Boundary {
    /// `--b`: a new part of frame `.0` begins.
    Delimiter(usize),
    /// `--b--`: frame `.0` ends.
    Close(usize),
}

/// Keeps just enough of the current line to recognize a boundary line:
/// the first `2 + max_boundary_len + 2` bytes, and whether everything after
/// them is transport padding (SP/HTAB).
#[derive(Debug)]
pub(crate) struct LinePrefix {
    buf: Vec<u8>,
    cap: usize,
    possible: bool,
}

impl LinePrefix {
    pub(crate) fn new(max_boundary_len: usize) -> Self {
        LinePrefix {
            buf: Vec::new(),
            cap: max_boundary_len + 4,
            possible: true,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.buf.clear();
        self.possible = true;
    }

    pub(crate) fn capacity_bytes(&self) -> usize {
        self.buf.capacity()
    }

    pub(crate) fn push(&mut self, mut bytes: &[u8]) {
        if !self.possible {
            return;
        }
        if self.buf.len() < self.cap {
            let take = (self.cap - self.buf.len()).min(bytes.len());
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(self.cap);
            }
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let head = &self.buf[..self.buf.len().min(2)];
            if !b"--".starts_with(head) {
                self.possible = false;
                return;
            }
        }
        if bytes.iter().any(|&b| b != b' ' && b != b'\t') {
            self.possible = false;
        }
    }

    /// At the end of the line (line ending excluded): which frame, if any,
    /// this boundary line belongs to. The innermost frame is tried first; an
    /// outer boundary implicitly closes the inner multiparts.
    pub(crate) fn matches(&self, frames: &[Frame]) -> Option<Boundary> {
        if !self.possible || frames.is_empty() {
            return None;
        }
        let line = self.buf.strip_prefix(b"--")?;
        let end = line
            .iter()
            .rposition(|&b| b != b' ' && b != b'\t')
            .map_or(0, |i| i + 1);
        let line = &line[..end];
        for (i, f) in frames.iter().enumerate().rev() {
            if let Some(rest) = line.strip_prefix(&f.boundary[..]) {
                if rest.is_empty() {
                    return Some(Boundary::Delimiter(i));
                }
                if rest == b"--" {
                    return Some(Boundary::Close(i));
                }
            }
        }
        None
    }
}

/// Where the first line of `text` (which starts at a line start) that
/// begins with `-`, and so may be a boundary line, starts.
pub(crate) fn dash_line(text: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'-', text).find(|&i| i == 0 || text[i - 1] == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bs: &[&str]) -> Vec<Frame> {
        bs.iter()
            .enumerate()
            .map(|(i, b)| Frame {
                boundary: b.as_bytes().to_vec(),
                digest: false,
                depth: i,
            })
            .collect()
    }

    fn check(line: &[&str], fs: &[Frame]) -> Option<Boundary> {
        let mut p = LinePrefix::new(10);
        for piece in line {
            p.push(piece.as_bytes());
        }
        p.matches(fs)
    }

    #[test]
    fn recognizes() {
        let fs = frames(&["outer", "in"]);
        assert_eq!(check(&["--in"], &fs), Some(Boundary::Delimiter(1)));
        assert_eq!(check(&["-", "-in-", "-"], &fs), Some(Boundary::Close(1)));
        assert_eq!(check(&["--outer \t"], &fs), Some(Boundary::Delimiter(0)));
        assert_eq!(
            check(&["--outer--", &" ".repeat(5000)], &fs),
            Some(Boundary::Close(0))
        );
        assert_eq!(check(&["--outer--", &" ".repeat(5000), "x"], &fs), None);
        assert_eq!(check(&["--inx"], &fs), None);
        assert_eq!(check(&["-in"], &fs), None);
        assert_eq!(check(&[" --in"], &fs), None);
        assert_eq!(check(&["--"], &fs), None);
        assert_eq!(check(&[""], &fs), None);
        assert_eq!(check(&["--in"], &[]), None);
    }

    #[test]
    fn innermost_first() {
        // Same boundary at two levels (RFC-violating): the inner one wins.
        let fs = frames(&["b", "b"]);
        assert_eq!(check(&["--b"], &fs), Some(Boundary::Delimiter(1)));
        // "--b--" is the close of "b", not a delimiter of "b--".
        let fs = frames(&["b--", "b"]);
        assert_eq!(check(&["--b--"], &fs), Some(Boundary::Close(1)));
    }
}
