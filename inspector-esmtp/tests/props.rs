//! Properties: for any message content and any split of either byte stream
//! into reads, the server receives exactly the bytes the client sent (the
//! content is never altered), and every output is the same as with one read
//! per write. Arbitrary input never panics and stays within the memory bound.

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{peers, policy};
use inspector_esmtp::policy::EsmtpPolicy;
use inspector_esmtp::{Output, PolicyStats, SESSION_MEMORY_BOUND, Session};
use proptest::prelude::*;

/// One write by one side.
#[derive(Debug, Clone)]
enum Step {
    Client(Vec<u8>),
    Server(Vec<u8>),
}

/// Everything both sides received, and the audit ids.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    client: Vec<u8>,
    server: Vec<u8>,
    audit: Vec<u32>,
    closed: bool,
}

impl Seen {
    fn add(&mut self, out: &Output) {
        self.client.extend_from_slice(&out.to_client);
        self.server.extend_from_slice(&out.to_server);
        self.audit.extend(out.audit.iter().map(|a| a.id()));
        self.closed |= out.close.is_some();
    }
}

/// Plays `steps`, cutting each write into reads of the sizes in `cuts`
/// (cycled; 0 means the whole write).
fn play(policy: &Arc<EsmtpPolicy>, steps: &[Step], cuts: &[usize]) -> Seen {
    let mut s = Session::new(policy.clone(), Arc::new(PolicyStats::new(policy)), peers());
    let now = Instant::now();
    let mut seen = Seen::default();
    let mut out = Output::default();
    let mut cut = cuts.iter().copied().cycle();
    for step in steps {
        let (bytes, client) = match step {
            Step::Client(b) => (b, true),
            Step::Server(b) => (b, false),
        };
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            let n = match cut.next().unwrap_or(0) {
                0 => rest.len(),
                n => n.min(rest.len()),
            };
            let (read, tail) = rest.split_at(n);
            rest = tail;
            if client {
                s.on_client_data(read, now, &mut out);
            } else {
                s.on_server_data(read, now, &mut out);
            }
            seen.add(&out);
            assert!(
                s.heap_bytes() <= SESSION_MEMORY_BOUND,
                "{} bytes held",
                s.heap_bytes()
            );
        }
    }
    seen
}

/// Dot-stuffs `content` the way a client does, ending it with CRLF.
fn stuffed(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 8);
    let mut line_start = true;
    for &b in content {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Message bytes rich in what matters: dots, CR, LF, command words, `|`,
/// 8-bit bytes, MIME structure.
fn content() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop::sample::select(vec![
        &b"."[..],
        b"\r",
        b"\n",
        b"\r\n",
        b"a",
        b"XXXX",
        b"|",
        b"\xe9",
        b"\0",
        b"RCPT TO:<a|b@x>",
        b"QUIT\r\n",
        b"Content-Type: multipart/mixed; boundary=b\r\n",
        b"--b\r\n",
        b"To: x\r\n",
        b"Content-Disposition: attachment; filename=\"f.txt\"\r\n",
        b"\r\n.\r\n",
        b"..",
        b"                                                  ",
    ]);
    prop::collection::vec(pieces, 0..120).prop_map(|v| v.concat())
}

fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0usize..40, 1..20)
}

/// A policy whose rules only log, so content never ends the session.
fn logging_policy() -> Arc<EsmtpPolicy> {
    Arc::new(policy(
        "mask-banner = false\n\
         [[esmtp.match]]\nmatch = \"body line length gt 20\"\naction = \"log\"\n\
         [[esmtp.match]]\nmatch = \"header line length gt 20\"\naction = \"log\"\n\
         [[esmtp.match]]\nmatch = \"header to-fields count gt 1\"\naction = \"log\"\n\
         [[esmtp.match]]\nmatch = \"mime filename length gt 3\"\naction = \"log\"\n",
    ))
}

fn c(b: &[u8]) -> Step {
    Step::Client(b.to_vec())
}

fn s(b: &[u8]) -> Step {
    Step::Server(b.to_vec())
}

/// Command lines for pipelined writes: the usual ones the session takes
/// in its loop, and ones it refuses, masks, rewrites (compat) or waits on.
fn command_lines() -> impl Strategy<Value = Vec<u8>> {
    let lines = prop::sample::select(vec![
        &b"MAIL FROM:<sender@client.example>\r\n"[..],
        b"MAIL FROM:<a|b@x>\r\n",
        b"MAIL FROM:<a@b> SIZE=10\r\n",
        b"mail from:<>\n",
        b"RCPT TO:<user@mx.example>\r\n",
        b"RCPT TO:<a b@c>\r\n",
        b"RCPT TO:<\"q\"@x>\r\n",
        b"rcpt to:<postmaster>\n",
        b"RCPT TO:<|cmd@x>\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"NOOP\rX\r\n",
        b"VRFY x\r\n",
        b"XYZZY\r\n",
        b"\r\n",
        b"DATA\r\n",
        b"QUIT\r\n",
        b"BDAT 3 LAST\r\nabc",
    ]);
    prop::collection::vec(lines, 1..40).prop_map(|v| v.concat())
}

/// Replies, single and multi-line, answering or not.
fn reply_lines() -> impl Strategy<Value = Vec<u8>> {
    let lines = prop::sample::select(vec![
        &b"250 2.0.0 Ok\r\n"[..],
        b"250 ok\n",
        b"550 5.1.1 no such user\r\n",
        b"452 later\r\n",
        b"250-first\r\n250 last\r\n",
        b"354 go ahead\r\n",
        b"221 bye\r\n",
        b"no code\r\n",
        b"250\r\n",
        b"550\n",
        b"25\r\n",
        b"2\n",
        b"250-\r\n",
        b"5x0 odd\r\n",
    ]);
    prop::collection::vec(lines, 1..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Pipelined commands and replies give the same output whole (the
    /// loops of usual lines and plain replies, runs copied at once), in
    /// pieces, and a byte at a time (every line reassembled), whatever
    /// the policy.
    #[test]
    fn pipelined_lines_read_alike_whole_and_in_pieces(
        rounds in prop::collection::vec((command_lines(), reply_lines()), 1..6),
        cuts in cuts(),
        which in 0usize..5,
    ) {
        let policy = Arc::new(match which {
            0 => common::modern(),
            1 => common::compat(),
            2 => common::rule("modern", "cmd verb VRFY NOOP", "mask log"),
            3 => common::rule("modern", "cmd RCPT count gt 1", "drop-connection log"),
            _ => common::rule("modern", "invalid-recipients count gt 1", "drop-connection log"),
        });
        let mut steps = vec![
            s(b"220 mx ESMTP\r\n"),
            c(b"EHLO c\r\n"),
            s(b"250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n"),
        ];
        for (commands, replies) in rounds {
            steps.push(Step::Client(commands));
            steps.push(Step::Server(replies));
        }
        let whole = play(&policy, &steps, &[0]);
        let bytes = play(&policy, &steps, &[1]);
        prop_assert_eq!(&whole, &bytes);
        let split = play(&policy, &steps, &cuts);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn data_content_reaches_the_server_unchanged(
        // A bare CR then a dot is a line start to some servers: refused.
        body in content().prop_map(|m| stuffed(&m)).prop_filter("bare CR before a dot", |b| {
            !b.windows(2).any(|w| w == b"\r.")
        }),
        cuts in cuts(),
        pipelining: bool,
    ) {
        let ehlo: &[u8] = if pipelining {
            b"250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        } else {
            b"250-mx\r\n250 8BITMIME\r\n"
        };
        let mut client_stream = Vec::new();
        let mut steps = vec![s(b"220 mx ESMTP\r\n")];
        for (who, bytes) in [
            (true, &b"EHLO c\r\n"[..]), (false, ehlo),
            (true, b"MAIL FROM:<a@x>\r\n"), (false, b"250 ok\r\n"),
            (true, b"RCPT TO:<b@y>\r\n"), (false, b"250 ok\r\n"),
            (true, b"DATA\r\n"), (false, b"354 go\r\n"),
            (true, &body), (true, b".\r\n"), (false, b"250 queued\r\n"),
            (true, b"QUIT\r\n"), (false, b"221 bye\r\n"),
        ] {
            if who {
                client_stream.extend_from_slice(bytes);
                steps.push(c(bytes));
            } else {
                steps.push(s(bytes));
            }
        }
        let policy = logging_policy();
        let split = play(&policy, &steps, &cuts);
        prop_assert_eq!(&split.server, &client_stream, "the server got other bytes");
        prop_assert!(!split.closed);
        let whole = play(&policy, &steps, &[0]);
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn bdat_chunks_reach_the_server_unchanged(
        // Only the last chunk may be empty (`BDAT 0` is refused).
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..4),
        last in prop::collection::vec(any::<u8>(), 0..300),
        cuts in cuts(),
    ) {
        let mut steps = vec![
            s(b"220 mx\r\n"), c(b"EHLO c\r\n"), s(b"250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n"),
            c(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n"), s(b"250 ok\r\n250 ok\r\n"),
        ];
        let mut client_stream = b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n".to_vec();
        let mut replies = Vec::new();
        let chunks: Vec<Vec<u8>> = chunks.into_iter().chain([last]).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = if i + 1 == chunks.len() { " LAST" } else { "" };
            let mut write = format!("BDAT {}{last}\r\n", chunk.len()).into_bytes();
            write.extend_from_slice(chunk);
            client_stream.extend_from_slice(&write);
            steps.push(Step::Client(write));
            replies.extend_from_slice(b"250 ok\r\n");
        }
        steps.push(Step::Server(replies.clone()));
        let policy = logging_policy();
        let split = play(&policy, &steps, &cuts);
        prop_assert_eq!(&split.server, &client_stream);
        let whole = play(&policy, &steps, &[0]);
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn arbitrary_input_never_panics_and_stays_bounded(
        steps in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..2000)), 0..12),
        cuts in cuts(),
        compat: bool,
    ) {
        let steps: Vec<Step> = steps
            .into_iter()
            .map(|(client, b)| if client { Step::Client(b) } else { Step::Server(b) })
            .collect();
        let policy = Arc::new(if compat { common::compat() } else { common::modern() });
        play(&policy, &steps, &cuts);
    }
}
