//! Reading a client command line: its verb, the path of MAIL FROM and
//! RCPT TO with their parameters, and the arguments of BDAT and XEXCH50.
//! What the policy makes of a command is the session's.

use super::split_eol;

/// The verb of a command line, upper case (empty for an empty line).
fn verb_of(content: &[u8]) -> String {
    let end = memchr::memchr(b' ', content).unwrap_or(content.len());
    String::from_utf8_lossy(content.get(..end).unwrap_or_default()).to_ascii_uppercase()
}

/// One command line, read.
#[derive(Debug)]
pub struct Command<'a> {
    /// With its line ending.
    pub line: &'a [u8],
    /// Without it.
    pub content: &'a [u8],
    pub eol: &'a [u8],
    /// Upper case (empty for an empty line).
    pub verb: String,
    /// The path of MAIL FROM / RCPT TO.
    pub path: Option<PathArg<'a>>,
}

impl<'a> Command<'a> {
    /// Reads one complete command line (with its line ending).
    pub fn parse(line: &'a [u8]) -> Self {
        let (content, eol) = split_eol(line);
        let verb = verb_of(content);
        let path = match verb.as_str() {
            "MAIL" => path_arg(content, b"FROM:"),
            "RCPT" => path_arg(content, b"TO:"),
            _ => None,
        };
        Self {
            line,
            content,
            eol,
            verb,
            path,
        }
    }

    /// The address of MAIL FROM.
    pub fn sender(&self) -> Option<&'a [u8]> {
        self.path
            .as_ref()
            .filter(|_| self.verb == "MAIL")
            .map(|p| p.address)
    }
}

/// The path argument of MAIL FROM / RCPT TO.
#[derive(Debug, PartialEq, Eq)]
pub struct PathArg<'a> {
    /// Between `<` and `>` (or up to a space without brackets).
    pub address: &'a [u8],
    /// Offset of `address` in the line.
    start: usize,
    /// ESMTP parameters after the path.
    pub params: &'a [u8],
}

/// Parses `VERB KEYWORD:path params` (KEYWORD is `FROM:` or `TO:`).
fn path_arg<'a>(content: &'a [u8], keyword: &[u8]) -> Option<PathArg<'a>> {
    let sp = memchr::memchr(b' ', content)?;
    let mut i = sp + 1;
    let kw = content.get(i..i + keyword.len())?;
    if !kw.eq_ignore_ascii_case(keyword) {
        return None;
    }
    i += keyword.len();
    while content.get(i) == Some(&b' ') {
        i += 1;
    }
    let rest = content.get(i..)?;
    if rest.first() == Some(&b'<') {
        // `>` inside a quoted local part does not close the path.
        let mut quoted = false;
        let mut escaped = false;
        for (j, &b) in rest.iter().enumerate().skip(1) {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => quoted = !quoted,
                b'>' if !quoted => {
                    return Some(PathArg {
                        address: rest.get(1..j)?,
                        start: i + 1,
                        params: rest.get(j + 1..)?,
                    });
                }
                _ => {}
            }
        }
        // No closing `>`: the rest is the address.
        Some(PathArg {
            address: rest.get(1..)?,
            start: i + 1,
            params: &[],
        })
    } else {
        let end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
        Some(PathArg {
            address: rest.get(..end)?,
            start: i,
            params: rest.get(end..)?,
        })
    }
}

/// A decimal number from the wire, without overflow.
fn number(word: &[u8]) -> Option<u64> {
    if word.is_empty() || word.len() > 20 {
        return None;
    }
    word.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// MAIL FROM's `SIZE=n` (RFC 1870).
pub fn size_param(params: &[u8]) -> Option<u64> {
    params.split(|&b| b == b' ').find_map(|p| {
        let (k, v) = p.split_at(p.iter().position(|&b| b == b'=')?);
        if k.eq_ignore_ascii_case(b"SIZE") {
            number(v.get(1..)?)
        } else {
            None
        }
    })
}

/// `BDAT size [LAST]` (RFC 3030); `None` if malformed.
pub fn bdat_args(content: &[u8]) -> Option<(u64, bool)> {
    let mut words = content
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .skip(1);
    let size = number(words.next()?)?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return None,
    };
    words.next().is_none().then_some((size, last))
}

/// `XEXCH50 size mode` (Exchange): the size of the blob after the 354.
pub fn xexch50_size(content: &[u8]) -> Option<u64> {
    let mut words = content
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .skip(1);
    number(words.next()?)
}

/// The sendmail "pipe to program" signature: `<|cmd>` or `<"|cmd">`.
pub fn is_program_address(address: &[u8]) -> bool {
    let a = address.strip_prefix(b"\"").unwrap_or(address);
    a.first() == Some(&b'|')
}

/// The domain of an address, lower case (`None` without `@`).
pub fn domain_of(address: &[u8]) -> Option<String> {
    let at = address.iter().rposition(|&b| b == b'@')?;
    let d = address.get(at + 1..)?;
    Some(String::from_utf8_lossy(d).to_ascii_lowercase())
}

/// Compat: writes `line` with each `|` in the address of `path` replaced
/// by a space, as the firewall did (108002). Returns the rewritten command
/// without its line ending, for the audit record.
pub fn write_without_pipes<'o>(
    cmd: &Command<'_>,
    path: &PathArg<'_>,
    to: &'o mut Vec<u8>,
) -> &'o [u8] {
    let start = to.len();
    to.extend_from_slice(cmd.line);
    let from = start + path.start;
    if let Some(addr) = to.get_mut(from..from + path.address.len()) {
        addr.iter_mut()
            .filter(|b| **b == b'|')
            .for_each(|b| *b = b' ');
    }
    to.get(start..start + cmd.content.len()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_parameters() {
        let p = path_arg(b"MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME", b"FROM:").unwrap();
        assert_eq!(p.address, b"a@b.example");
        assert_eq!(p.start, 11);
        assert_eq!(size_param(p.params), Some(1000));
        let p = path_arg(b"rcpt to: <\"x>y\"@c>", b"TO:").unwrap();
        assert_eq!(p.address, b"\"x>y\"@c");
        assert_eq!(path_arg(b"MAIL FROM:<>", b"FROM:").unwrap().address, b"");
        assert_eq!(path_arg(b"MAIL TO:<a>", b"FROM:"), None);
        assert_eq!(path_arg(b"MAIL", b"FROM:"), None);
        assert_eq!(size_param(b" SIZE=99999999999999999999999"), None);
    }

    #[test]
    fn parses_bdat_and_numbers() {
        assert_eq!(bdat_args(b"BDAT 100 LAST"), Some((100, true)));
        assert_eq!(bdat_args(b"BDAT 0"), Some((0, false)));
        assert_eq!(bdat_args(b"BDAT x"), None);
        assert_eq!(bdat_args(b"BDAT 1 LAST more"), None);
        assert_eq!(number(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(number(b"18446744073709551616"), None);
        assert_eq!(xexch50_size(b"XEXCH50 512 2"), Some(512));
    }

    #[test]
    fn reads_a_command_line() {
        let cmd = Command::parse(b"mail from:<a|b@x> SIZE=5\r\n");
        assert_eq!((cmd.verb.as_str(), cmd.eol), ("MAIL", &b"\r\n"[..]));
        assert_eq!(cmd.sender(), Some(&b"a|b@x"[..]));
        let mut to = b"before ".to_vec();
        let path = cmd.path.as_ref().unwrap();
        assert_eq!(
            write_without_pipes(&cmd, path, &mut to),
            b"mail from:<a b@x> SIZE=5"
        );
        assert_eq!(to, b"before mail from:<a b@x> SIZE=5\r\n");
        let rcpt = Command::parse(b"RCPT TO:<b@y>\n");
        assert_eq!(rcpt.sender(), None);
        assert_eq!(Command::parse(b"\r\n").verb, "");
    }

    #[test]
    fn recognizes_program_addresses_and_domains() {
        assert!(is_program_address(b"|/bin/sh"));
        assert!(is_program_address(b"\"|sed\"@x"));
        assert!(!is_program_address(b"a|b@x"));
        assert_eq!(domain_of(b"u@Example.COM").as_deref(), Some("example.com"));
        assert_eq!(domain_of(b"postmaster"), None);
    }
}
