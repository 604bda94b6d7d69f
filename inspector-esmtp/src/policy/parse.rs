//! Hand-written parsers for the `match` and `action` strings. Keywords are
//! case-insensitive; error messages name the offending word and what was
//! expected there.

use regex::{Regex, RegexBuilder};

use super::actions::{Actions, Primary};
use super::criteria::{Criterion, EhloParam, MimeEncodingKw};

/// Compiled-program limit of one regex, so a policy cannot make the engine
/// allocate without bound.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Longest verb accepted in `cmd verb` (real verbs are at most 16 bytes).
const MAX_VERB_LEN: usize = 32;

/// Whitespace-separated words of a string, with the rest of the string
/// available for a trailing regex.
struct Words<'a> {
    text: &'a str,
    pos: usize,
    /// The text parsed so far, for messages ("after `cmd line`").
    seen: Vec<&'a str>,
}

impl<'a> Words<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            pos: 0,
            seen: Vec::new(),
        }
    }

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.text.get(self.pos..)?;
        let start = self.pos + (rest.len() - rest.trim_start().len());
        let rest = self.text.get(start..)?;
        if rest.is_empty() {
            return None;
        }
        let len = rest.find(char::is_whitespace).unwrap_or(rest.len());
        self.pos = start + len;
        let word = rest.get(..len)?;
        self.seen.push(word);
        Some(word)
    }

    /// Everything after the current position, trimmed.
    fn rest(&mut self) -> &'a str {
        let rest = self.text.get(self.pos..).unwrap_or("").trim();
        self.pos = self.text.len();
        rest
    }

    fn context(&self) -> String {
        if self.seen.is_empty() {
            "at the start".to_string()
        } else {
            format!("after `{}`", self.seen.join(" "))
        }
    }

    /// The next word, which must be `want` (case-insensitive).
    fn expect(&mut self, want: &str) -> Result<(), String> {
        let ctx = self.context();
        match self.next() {
            Some(w) if w.eq_ignore_ascii_case(want) => Ok(()),
            Some(w) => Err(format!("expected `{want}` {ctx}, found `{w}`")),
            None => Err(format!("expected `{want}` {ctx}, found the end")),
        }
    }

    /// `gt N`.
    fn gt_number(&mut self) -> Result<u64, String> {
        self.expect("gt")?;
        let ctx = self.context();
        let word = self
            .next()
            .ok_or_else(|| format!("expected a number {ctx}, found the end"))?;
        word.parse::<u64>()
            .map_err(|_| format!("expected a non-negative integer {ctx}, found `{word}`"))
    }

    fn end(&mut self) -> Result<(), String> {
        let ctx = self.context();
        match self.next() {
            None => Ok(()),
            Some(w) => Err(format!("unexpected `{w}` {ctx}")),
        }
    }

    /// One or more words until the end, each converted by `conv`.
    fn list<T>(
        &mut self,
        what: &str,
        mut conv: impl FnMut(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        let ctx = self.context();
        let mut out = Vec::new();
        while let Some(w) = self.next() {
            out.push(conv(w)?);
        }
        if out.is_empty() {
            return Err(format!("expected at least one {what} {ctx}"));
        }
        Ok(out)
    }
}

fn regex(pattern: &str, ctx: String) -> Result<Regex, String> {
    if pattern.is_empty() {
        return Err(format!("expected a regular expression {ctx}"));
    }
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("bad regular expression `{pattern}`: {e}"))
}

/// Parses a `match` string: `[not] CRITERION`. Returns (negated, criterion).
pub fn parse_match(text: &str) -> Result<(bool, Criterion), String> {
    let mut w = Words::new(text);
    let mut first = w.next().ok_or("empty match: expected a criterion")?;
    let negate = first.eq_ignore_ascii_case("not");
    if negate {
        first = w
            .next()
            .ok_or("expected a criterion after `not`, found the end")?;
    }
    let kw = first.to_ascii_lowercase();
    let criterion = match kw.as_str() {
        "body" => {
            let found = w.next();
            match found.map(str::to_ascii_lowercase).as_deref() {
                Some("line") => {
                    w.expect("length")?;
                    Criterion::BodyLineLength(w.gt_number()?)
                }
                Some("length") => Criterion::BodyLength(w.gt_number()?),
                _ => return Err(expected_after(&w, found, "`line length` or `length`")),
            }
        }
        "cmd" => {
            let found = w.next();
            match found.map(str::to_ascii_lowercase).as_deref() {
                Some("line") => {
                    w.expect("length")?;
                    Criterion::CmdLineLength(w.gt_number()?)
                }
                Some("rcpt") => {
                    w.expect("count")?;
                    Criterion::CmdRcptCount(w.gt_number()?)
                }
                Some("verb") => Criterion::CmdVerb(w.list("verb", verb)?),
                _ => {
                    return Err(expected_after(
                        &w,
                        found,
                        "`line length`, `RCPT count` or `verb`",
                    ));
                }
            }
        }
        "ehlo-reply-parameter" => Criterion::EhloReplyParameter(w.list("parameter", |p| {
            EhloParam::from_word(p).ok_or_else(|| {
                let all: Vec<_> = EhloParam::ALL.iter().map(|p| p.word()).collect();
                format!(
                    "unknown EHLO reply parameter `{p}`: expected one of {}",
                    all.join(", ")
                )
            })
        })?),
        "header" => {
            let found = w.next();
            match found.map(str::to_ascii_lowercase).as_deref() {
                Some("line") => {
                    w.expect("length")?;
                    Criterion::HeaderLineLength(w.gt_number()?)
                }
                Some("length") => Criterion::HeaderLength(w.gt_number()?),
                Some("to-fields") => {
                    w.expect("count")?;
                    Criterion::HeaderToFieldsCount(w.gt_number()?)
                }
                _ => {
                    return Err(expected_after(
                        &w,
                        found,
                        "`line length`, `length` or `to-fields count`",
                    ));
                }
            }
        }
        "invalid-recipients" => {
            w.expect("count")?;
            Criterion::InvalidRecipientsCount(w.gt_number()?)
        }
        "mime" => {
            let found = w.next();
            match found.map(str::to_ascii_lowercase).as_deref() {
                Some("filetype") => {
                    w.expect("regex")?;
                    let ctx = w.context();
                    Criterion::MimeFiletypeRegex(regex(w.rest(), ctx)?)
                }
                Some("filename") => {
                    w.expect("length")?;
                    Criterion::MimeFilenameLength(w.gt_number()?)
                }
                Some("encoding") => Criterion::MimeEncoding(w.list("encoding", |e| {
                    MimeEncodingKw::from_word(e).ok_or_else(|| {
                        let all: Vec<_> = MimeEncodingKw::ALL.iter().map(|e| e.word()).collect();
                        format!(
                            "unknown MIME encoding `{e}`: expected one of {}",
                            all.join(", ")
                        )
                    })
                })?),
                _ => {
                    return Err(expected_after(
                        &w,
                        found,
                        "`filetype regex`, `filename length` or `encoding`",
                    ));
                }
            }
        }
        "sender-address" => {
            let found = w.next();
            match found.map(str::to_ascii_lowercase).as_deref() {
                Some("regex") => {
                    let ctx = w.context();
                    Criterion::SenderAddressRegex(regex(w.rest(), ctx)?)
                }
                Some("length") => Criterion::SenderAddressLength(w.gt_number()?),
                _ => return Err(expected_after(&w, found, "`regex` or `length`")),
            }
        }
        _ => {
            return Err(format!(
                "unknown criterion `{first}`: expected one of body, cmd, ehlo-reply-parameter, \
                 header, invalid-recipients, mime, sender-address"
            ));
        }
    };
    w.end()?;
    Ok((negate, criterion))
}

/// The message for a wrong (or missing) word after a criterion's first
/// word; the wrong word, if any, is the last one `Words` saw.
fn expected_after(w: &Words<'_>, found: Option<&str>, what: &str) -> String {
    let n = w.seen.len() - usize::from(found.is_some());
    let before = w.seen.get(..n).unwrap_or_default().join(" ");
    match found {
        Some(f) => format!("expected {what} after `{before}`, found `{f}`"),
        None => format!("expected {what} after `{before}`, found the end"),
    }
}

fn verb(word: &str) -> Result<String, String> {
    let ok = !word.is_empty()
        && word.len() <= MAX_VERB_LEN
        && word.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(word.to_ascii_uppercase())
    } else {
        Err(format!(
            "`{word}` is not an SMTP verb (letters, digits and `-`, at most {MAX_VERB_LEN})"
        ))
    }
}

/// Parses an `action` string such as `drop-connection log` or `rate-limit 10`.
pub fn parse_actions(text: &str) -> Result<Actions, String> {
    let mut w = Words::new(text);
    let mut primary: Option<Primary> = None;
    let mut log = false;
    let mut any = false;
    while let Some(word) = w.next() {
        any = true;
        let p = match word.to_ascii_lowercase().as_str() {
            "log" => {
                if log {
                    return Err("`log` appears twice".into());
                }
                log = true;
                continue;
            }
            "drop-connection" => Primary::DropConnection,
            "reset" => Primary::Reset,
            "mask" => Primary::Mask,
            "rate-limit" => {
                let n = w
                    .next()
                    .ok_or("`rate-limit` needs a number of commands per second")?;
                match n.parse::<u32>() {
                    Ok(n) if n > 0 => Primary::RateLimit(n),
                    _ => {
                        return Err(format!(
                            "`rate-limit` needs a positive number of commands per second, found `{n}`"
                        ));
                    }
                }
            }
            _ => {
                return Err(format!(
                    "unknown action `{word}`: expected drop-connection, reset, log, mask or rate-limit N"
                ));
            }
        };
        if let Some(prev) = primary {
            return Err(format!(
                "`{p}` cannot be combined with `{prev}`: use one of drop-connection, reset, mask, \
                 rate-limit N, optionally with log"
            ));
        }
        primary = Some(p);
    }
    if !any {
        return Err(
            "empty action: expected drop-connection, reset, log, mask or rate-limit N".into(),
        );
    }
    Ok(Actions { primary, log })
}

/// Checks that `actions` are valid for `criterion`.
pub fn check_actions(criterion: &Criterion, actions: &Actions) -> Result<(), String> {
    match actions.primary {
        Some(Primary::Mask) if !criterion.can_mask() => Err(format!(
            "`mask` is valid only for `ehlo-reply-parameter` and `cmd verb`, not for `{criterion}`"
        )),
        Some(Primary::RateLimit(_)) if !criterion.can_rate_limit() => Err(format!(
            "`rate-limit` is valid only for `cmd verb`, not for `{criterion}`"
        )),
        _ => Ok(()),
    }
}

/// Parses the action of a parameter that allows only `drop-connection`
/// and/or `log` (`mail-relay`, `special-character`).
pub fn parse_param_actions(text: &str) -> Result<Actions, String> {
    let actions = parse_actions(text)?;
    match actions.primary {
        None | Some(Primary::DropConnection) => Ok(actions),
        Some(p) => Err(format!(
            "`{p}` is not valid here: expected `drop-connection`, `log` or `drop-connection log`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crit(s: &str) -> String {
        let (neg, c) = parse_match(s).unwrap();
        format!("{}{c}", if neg { "not " } else { "" })
    }

    #[test]
    fn parses_every_criterion_to_its_canonical_text() {
        for (input, canon) in [
            ("body line length gt 998", "body line length gt 998"),
            ("BODY length gt 10", "body length gt 10"),
            ("cmd line length gt 512", "cmd line length gt 512"),
            ("cmd rcpt count gt 100", "cmd RCPT count gt 100"),
            ("cmd verb vrfy Expn", "cmd verb VRFY EXPN"),
            ("ehlo-reply-parameter others", "ehlo-reply-parameter others"),
            (
                "ehlo-reply-parameter 8BITMIME auth",
                "ehlo-reply-parameter 8bitmime auth",
            ),
            ("header line length gt 998", "header line length gt 998"),
            ("header length gt 5000", "header length gt 5000"),
            ("header to-fields count gt 3", "header to-fields count gt 3"),
            (
                "invalid-recipients count gt 5",
                "invalid-recipients count gt 5",
            ),
            (
                "mime filetype regex ^application/x-ms",
                "MIME filetype regex ^application/x-ms",
            ),
            ("MIME filename length gt 255", "MIME filename length gt 255"),
            ("mime encoding binary others", "MIME encoding binary others"),
            (
                "sender-address regex .*@bad\\.example$",
                "sender-address regex .*@bad\\.example$",
            ),
            (
                "sender-address length gt 320",
                "sender-address length gt 320",
            ),
            ("not cmd verb HELO", "not cmd verb HELO"),
            ("  cmd   line length   gt 512  ", "cmd line length gt 512"),
        ] {
            assert_eq!(crit(input), canon, "{input}");
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (input, msg) in [
            ("", "empty match"),
            ("cmdd line length gt 5", "unknown criterion `cmdd`"),
            (
                "cmd line length gt x",
                "expected a non-negative integer after `cmd line length gt`, found `x`",
            ),
            (
                "cmd line length lt 5",
                "expected `gt` after `cmd line length`, found `lt`",
            ),
            (
                "cmd line length gt",
                "expected a number after `cmd line length gt`, found the end",
            ),
            ("cmd line length gt 5 6", "unexpected `6`"),
            ("cmd foo", "expected `line length`, `RCPT count` or `verb`"),
            ("cmd verb", "expected at least one verb"),
            ("cmd verb HE/LO", "`HE/LO` is not an SMTP verb"),
            (
                "ehlo-reply-parameter chunky",
                "unknown EHLO reply parameter `chunky`",
            ),
            ("mime encoding base65", "unknown MIME encoding `base65`"),
            ("sender-address regex (", "bad regular expression `(`"),
            ("sender-address regex", "expected a regular expression"),
            ("not", "expected a criterion after `not`"),
            ("body", "expected `line length` or `length`"),
        ] {
            let err = parse_match(input).unwrap_err();
            assert!(err.contains(msg), "{input:?}: {err}");
        }
    }

    #[test]
    fn actions_and_their_validity() {
        assert_eq!(
            parse_actions("drop-connection log").unwrap(),
            Actions::new(Some(Primary::DropConnection), true)
        );
        assert_eq!(parse_actions("LOG").unwrap(), Actions::new(None, true));
        assert_eq!(
            parse_actions("rate-limit 5 log").unwrap(),
            Actions::new(Some(Primary::RateLimit(5)), true)
        );
        for (bad, msg) in [
            ("", "empty action"),
            ("drop", "unknown action `drop`"),
            ("log log", "twice"),
            ("mask reset", "`reset` cannot be combined with `mask`"),
            ("rate-limit", "needs a number"),
            ("rate-limit 0", "positive number"),
        ] {
            let err = parse_actions(bad).unwrap_err();
            assert!(err.contains(msg), "{bad:?}: {err}");
        }
        let (_, header) = parse_match("header line length gt 998").unwrap();
        let (_, verb) = parse_match("cmd verb VRFY").unwrap();
        let mask = parse_actions("mask").unwrap();
        assert!(
            check_actions(&header, &mask)
                .unwrap_err()
                .contains("`mask` is valid only")
        );
        assert!(check_actions(&verb, &mask).is_ok());
        let rl = parse_actions("rate-limit 3").unwrap();
        assert!(check_actions(&header, &rl).is_err());
        assert!(check_actions(&verb, &rl).is_ok());
        assert!(parse_param_actions("mask").is_err());
        assert!(parse_param_actions("drop-connection log").is_ok());
    }
}
