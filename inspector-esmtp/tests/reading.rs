//! Reading the client's bytes as the server behind will (issue 10): every
//! line some mainstream server (Postfix, Exim, Sendmail, Exchange) would
//! read differently from the engine is refused by the engine, in both
//! modes, and what any of them might execute is what the criteria judge.
//! The forms come from the reference's tables (BDAT framing, address forms,
//! bare CR, line lengths, XEXCH50); docs/policy.md ("What the engine
//! refuses by itself") cites the server sources.
//!
//! Transcripts: each script runs whole-write and byte by byte
//! (`common::both`), checking the exact bytes each side gets.

mod common;

use std::time::Duration;

use common::{
    BARE_LINE_END, LINE_TOO_LONG, POLICY_CLOSE, SYNTAX, TOO_BIG, Transcript, both, compat,
    exchange, modern, policy, rule, to_data,
};
use inspector_esmtp::Close;
use inspector_esmtp::policy::EsmtpPolicy;

/// MAIL and RCPT accepted, with CHUNKING (and the given extensions).
fn to_bdat(t: &mut Transcript, extensions: &[&str]) {
    let mut ext = vec!["CHUNKING"];
    ext.extend_from_slice(extensions);
    t.hello(&ext);
    t.pass("MAIL FROM:<a@x>\r\n").reply("250 ok\r\n");
    t.pass("RCPT TO:<b@y>\r\n").reply("250 ok\r\n");
}

#[test]
fn bdat_framings_servers_read_differently_are_refused_and_end_the_session() {
    // Exim reads 4294967301 as 5 (`unsigned int`) and runs the rest as
    // commands; `+5`, `-1`, `5abc` are sscanf's; LASTX / LAST foo are not
    // last to Exim, last to smtp-proto; a TAB makes Exim answer 500 and read
    // the chunk as commands; smtp-proto restarts long digit strings.
    for bdat in [
        "BDAT 4294967301 LAST",
        "BDAT 99999999999999999999999",
        "BDAT +5",
        "BDAT -1",
        "BDAT 5abc",
        "BDAT 0x5",
        "BDAT 5 LASTX",
        "BDAT 5 LAST foo",
        "BDAT\t5",
        "BDAT  5",
        "BDAT 5\tLAST",
        "BDAT 0",
        "BDAT",
    ] {
        both(modern, |t| {
            to_bdat(t, &["PIPELINING"]);
            t.c(format!(
                "{bdat}\r\nMAIL FROM:<smuggled@x>\r\nRCPT TO:<c@y>\r\n"
            ))
            .server_got("");
            let want = if bdat.starts_with("BDAT 4294967301") {
                TOO_BIG
            } else {
                SYNTAX
            };
            t.client_got(want);
            assert_eq!(t.close, Some(Close::Fin), "{bdat:?}");
            assert_eq!(t.audit_ids(), [108004], "{bdat:?}");
        });
    }
}

#[test]
fn bdat_is_capped_at_the_servers_size_and_2_31() {
    both(modern, |t| {
        to_bdat(t, &["SIZE 1000"]);
        t.c("BDAT 1001 LAST\r\n").server_got("").client_got(TOO_BIG);
        assert_eq!(t.close, Some(Close::Fin));
    });
    // The running total counts too.
    both(modern, |t| {
        to_bdat(t, &["SIZE 1000"]);
        t.pass(&format!("BDAT 600\r\n{}", "a".repeat(600)))
            .reply("250 ok\r\n");
        t.c("BDAT 401 LAST\r\n").server_got("").client_got(TOO_BIG);
        assert_eq!(t.close, Some(Close::Fin));
    });
    // Without SIZE (or SIZE 0): 2^31-1, what Exim and Exchange can count.
    for ext in [&[][..], &["SIZE 0"]] {
        both(modern, |t| {
            to_bdat(t, ext);
            t.c("BDAT 2147483648\r\n")
                .server_got("")
                .client_got(TOO_BIG);
            assert_eq!(t.close, Some(Close::Fin));
        });
    }
    both(modern, |t| {
        to_bdat(t, &[]);
        t.pass("BDAT 2147483647\r\n");
    });
}

#[test]
fn canonical_bdat_forms_pass() {
    // (Content rules aside: 1010 bytes without a line end.)
    both(
        || policy(""),
        |t| {
            to_bdat(t, &["SIZE 10000"]);
            t.pass(&format!("BDAT 1000\r\n{}", "a".repeat(1000)))
                .reply("250 ok\r\n");
            t.pass("bdat 10 last\r\n0123456789").reply("250 ok\r\n");
            t.pass("MAIL FROM:<a@x>\r\n").reply("250 ok\r\n");
            t.pass("RCPT TO:<b@y>\r\n").reply("250 ok\r\n");
            t.pass("BDAT 0 LAST\r\n").reply("250 ok\r\n");
            assert_eq!(t.close, None);
        },
    );
}

/// The address forms of the reference's table on which the servers
/// disagree (rules 5 to 9).
const AMBIGUOUS_ADDRESSES: [&str; 24] = [
    "MAIL  FROM:<a@x>",
    "MAIL FROM :<a@x>",
    "MAIL FROM:a@x",
    "MAIL FROM:<@r1,@r2:a@x>",
    "MAIL FROM:<a@x> (comment)",
    "MAIL FROM:(comment)<a@x>",
    "MAIL FROM:<a(comment)@x>",
    "MAIL FROM:<a@x>\t SIZE=1\tBODY=8BITMIME",
    "MAIL FROM:<a@x>SIZE=100",
    "MAIL FROM:<a b@x>",
    "MAIL FROM:Bob <a@x>",
    "MAIL FROM:Bob<a@x>",
    "MAIL FROM:<a@x",
    "MAIL FROM:<<a@x>>",
    "MAIL FROM:<a@x>>",
    "MAIL FROM:<a@x> <c@d>",
    "MAIL FROM:<a@x> SIZE=abc",
    "MAIL FROM:<a@x> SIZE=99999999999999999999999",
    "MAIL FROM:<a@x>\0x",
    "RCPT TO:<>",
    "RCPT  TO:<b@y>",
    "RCPT TO :<b@y>",
    "RCPT TO:b@y",
    "RCPT TO:<b@y> <c@z>",
];

#[test]
fn address_forms_servers_read_differently_are_refused_in_both_modes() {
    for p in [modern as fn() -> EsmtpPolicy, compat] {
        for line in AMBIGUOUS_ADDRESSES {
            both(p, |t| {
                t.hello(&[]);
                t.c(format!("{line}\r\n")).server_got("").client_got(SYNTAX);
                assert_eq!(t.close, None, "{line:?}");
                t.pass("NOOP\r\n").reply("250 ok\r\n");
            });
        }
    }
}

#[test]
fn canonical_address_forms_pass() {
    for p in [modern as fn() -> EsmtpPolicy, compat] {
        both(p, |t| {
            t.hello(&[]);
            for (line, reply) in [
                ("MAIL FROM:<a@x> SIZE=123 BODY=8BITMIME", "250 ok"),
                ("RSET", "250 ok"),
                ("MAIL FROM: <a@x>", "250 ok"),
                ("RCPT TO:<\"quoted local\"@y>", "250 ok"),
                ("RCPT TO:<postmaster>", "250 ok"),
                ("RSET", "250 ok"),
                ("mail from:<>", "250 ok"),
                ("RSET", "250 ok"),
                ("MAIL FROM:\t<a@x>", "250 ok"),
            ] {
                t.pass(&format!("{line}\r\n"))
                    .reply(&format!("{reply}\r\n"));
            }
        });
    }
}

#[test]
fn criteria_judge_the_address_any_server_might_execute() {
    // sender-address: two spaces before FROM:, `FROM :`, a TAB after the colon.
    for line in [
        "MAIL  FROM:<x@spam.example>",
        "MAIL FROM :<x@spam.example>",
        "MAIL FROM:\t<x@spam.example>",
        "MAIL FROM:Bob <x@spam.example>",
        "MAIL FROM:<\"x\"@spam.example>",
    ] {
        both(
            || {
                rule(
                    "modern",
                    r"sender-address regex ^x@spam\.example$",
                    "drop-connection log",
                )
            },
            |t| {
                t.hello(&[]);
                t.c(format!("{line}\r\n"))
                    .server_got("")
                    .client_got(POLICY_CLOSE);
                assert_eq!(t.audit_ids(), [108004], "{line:?}");
            },
        );
    }
    // mail-relay.
    for line in [
        "RCPT TO :<c@relay.example>",
        "RCPT  TO:<c@relay.example>",
        "RCPT TO:\t<c@relay.example>",
    ] {
        both(
            || policy("mail-relay = { domain = \"y\", action = \"drop-connection log\" }"),
            |t| {
                t.hello(&[]);
                t.pass("MAIL FROM:<a@x>\r\n").reply("250 ok\r\n");
                t.c(format!("{line}\r\n"))
                    .server_got("")
                    .client_got(POLICY_CLOSE);
            },
        );
    }
    // special-character, and the program pipe (108003).
    both(
        || policy("special-character = \"drop-connection\""),
        |t| {
            t.hello(&[]);
            t.c("MAIL FROM:\t<a`b@x>\r\n").client_got(POLICY_CLOSE);
        },
    );
    for line in [
        "RCPT TO :<\"|/bin/sh\"@x>",
        "RCPT TO:\t<|/bin/sh>",
        "RCPT  TO:<\"|id\"@x>",
    ] {
        both(modern, |t| {
            t.hello(&[]);
            t.pass("MAIL FROM:<a@x>\r\n").reply("250 ok\r\n");
            t.c(format!("{line}\r\n")).server_got("");
            assert_eq!(t.audit_ids(), [108003], "{line:?}");
            assert_eq!(t.close, Some(Close::Fin));
        });
    }
    // Compat rewrites `|` wherever the path is.
    both(compat, |t| {
        t.hello(&[]);
        t.c("MAIL FROM:\t<a|b@x>\r\n")
            .server_got("MAIL FROM:\t<a b@x>\r\n");
        assert_eq!(t.audit_ids(), [108002]);
    });
    // SIZE= after a TAB-separated path.
    both(modern, |t| {
        t.hello(&["SIZE 1000"]);
        t.pass("MAIL FROM:\t<a@x> SIZE=3\r\n").reply("250 ok\r\n");
        t.pass("RCPT TO:<b@y>\r\n").reply("250 ok\r\n");
        t.pass("DATA\r\n").reply("354 go\r\n");
        t.pass("0123456789\r\n.\r\n");
        assert_eq!(t.audit_ids(), [108006]);
    });
}

#[test]
fn bare_cr_and_nul_in_a_command_line_are_refused() {
    for p in [modern as fn() -> EsmtpPolicy, compat] {
        for line in [
            "NOOP a\rb\r\n",
            "MAIL FROM:<a@\rx>\r\n",
            "MAIL FROM:<a@x>\r\r\n",
            "HELO x\rRSET\r\n",
            "MAIL FROM:<a@x>\0x\r\n",
            "VRFY a\0b\r\n",
        ] {
            both(p, |t| {
                t.hello(&[]);
                t.c(line).server_got("").client_got(SYNTAX);
                t.pass("NOOP\r\n").reply("250 ok\r\n");
            });
        }
    }
}

#[test]
fn a_final_dot_next_to_a_bare_cr_or_lf_ends_the_session_with_a_5xx() {
    for end in [
        "x\r.\r",
        "x\n.\r",
        "x\r.\r\n",
        "x\r\n.\r\r\n",
        "x\r\n.\rMAIL",
        "x\n.\n",
        "x\r\n.\n",
        "x\n.\r\n",
    ] {
        for p in [modern as fn() -> EsmtpPolicy, compat] {
            both(p, |t| {
                t.hello(&["PIPELINING"]);
                to_data(t);
                t.c(format!(
                    "{end}MAIL FROM:<smuggled@x>\r\nRCPT TO:<c@y>\r\nDATA\r\n"
                ));
                let got = t.take_server();
                assert!(!got.windows(4).any(|w| w == b"MAIL"), "{end:?}");
                t.client_got(BARE_LINE_END);
                assert_eq!(t.close, Some(Close::Fin), "{end:?}");
            });
        }
    }
}

#[test]
fn a_line_longer_than_every_server_reads_whole_is_refused_and_closes() {
    // Exim splits at 16384 and runs the tail; Sendmail without SASL at 2047.
    let smuggle = format!("NOOP {}XMAIL FROM:<smuggled@b>\r\n", "a".repeat(16379));
    both(
        || policy(""),
        |t| {
            t.hello(&[]);
            t.c(&smuggle).server_got("").client_got(LINE_TOO_LONG);
            assert_eq!(t.close, Some(Close::Fin));
            assert_eq!(t.audit_ids(), [108004]);
        },
    );
    // 2048 bytes with the CR LF pass; one more is refused.
    both(
        || policy(""),
        |t| {
            t.hello(&[]);
            t.pass(&format!("NOOP {}\r\n", "a".repeat(2041)));
            t.reply("250 ok\r\n");
            t.c(format!("NOOP {}\r\n", "a".repeat(2042)))
                .server_got("")
                .client_got(LINE_TOO_LONG);
            assert_eq!(t.close, Some(Close::Fin));
        },
    );
}

#[test]
fn a_line_that_never_ends_is_answered_and_closed_without_waiting() {
    // 4 MiB without a line end, in reads of 64 KiB.
    let mut t = Transcript::new(policy(""), false);
    t.hello(&[]);
    let read = vec![b'a'; 64 << 10];
    for _ in 0..64 {
        t.c(&read);
    }
    t.server_got("").client_got(LINE_TOO_LONG);
    assert_eq!(t.close, Some(Close::Fin));
    // With the default policy, `cmd line length gt 512` acts at byte 513.
    let mut t = Transcript::new(modern(), true);
    t.hello(&[]);
    t.c("x".repeat(512)).client_got("");
    assert_eq!(t.close, None);
    t.c("x").server_got("").client_got(POLICY_CLOSE);
    assert_eq!(t.close, Some(Close::Fin));
}

#[test]
fn cmd_line_length_acts_on_the_pending_line_once() {
    both(
        || rule("modern", "cmd line length gt 10", "log"),
        |t| {
            t.hello(&[]);
            t.audit_ids(); // EHLO's line
            t.c("NOOP 0123456789");
            assert_eq!(t.audit_ids(), [108005], "as soon as it passes 10");
            t.c("more\r\n").server_got("NOOP 0123456789more\r\n");
            assert!(t.audit.is_empty(), "once per line");
            t.reply("250 ok\r\n");
            t.pass("NOOP 0123456789\r\n");
            assert_eq!(t.audit_ids(), [108005], "the next line counts anew");
        },
    );
    // `not`: decided when the line is complete.
    both(
        || rule("modern", "not cmd line length gt 10", "log"),
        |t| {
            t.hello(&[]);
            t.pass("NOOP\r\n");
            assert_eq!(t.audit_ids(), [108005]);
        },
    );
}

#[test]
fn command_started_is_the_start_of_the_pending_line() {
    let mut t = Transcript::new(modern(), false);
    t.hello(&["AUTH PLAIN LOGIN"]);
    assert_eq!(t.session.command_started(), None);
    let start = t.now;
    t.c("NO");
    t.later(Duration::from_secs(5));
    t.c("O");
    assert_eq!(t.session.command_started(), Some(start));
    t.c("P\r\n").server_got("NOOP\r\n");
    assert_eq!(
        t.session.command_started(),
        None,
        "complete: the server's turn"
    );
    t.reply("250 ok\r\n");
    // A SASL response trickled the same way.
    t.pass("AUTH LOGIN\r\n").reply("334 VXNlcm5hbWU6\r\n");
    let start = t.now;
    t.c("dXNl");
    t.later(Duration::from_secs(5));
    t.c("cg==");
    assert_eq!(t.session.command_started(), Some(start));
    t.c("\r\n");
    assert_eq!(t.session.command_started(), None);
}

#[test]
fn auth_lines_take_12287_bytes_with_their_line_end() {
    let initial = |n: usize| format!("AUTH PLAIN {}\r\n", "A".repeat(n - 13));
    both(
        || policy(""),
        |t| {
            t.hello(&["AUTH PLAIN LOGIN"]);
            t.pass(&initial(12287)).reply("535 no\r\n");
            t.c(initial(12288)).server_got("").client_got(LINE_TOO_LONG);
            assert_eq!(t.close, Some(Close::Fin));
        },
    );
    both(
        || policy(""),
        |t| {
            t.hello(&["AUTH PLAIN LOGIN"]);
            t.pass("AUTH LOGIN\r\n").reply("334 VXNlcm5hbWU6\r\n");
            t.pass(&format!("{}\r\n", "A".repeat(12285)))
                .reply("334 UGFzc3dvcmQ6\r\n");
            t.c(format!("{}\r\n", "A".repeat(12286)))
                .client_got(LINE_TOO_LONG);
            assert_eq!(t.close, Some(Close::Fin));
        },
    );
}

#[test]
fn the_reply_to_an_xexch50_blob_is_awaited_before_the_next_command() {
    both(exchange, |t| {
        t.s("220 exch\r\n").client_got("220 mail ESMTP\r\n");
        t.pass("EHLO c\r\n");
        t.reply("250-exch\r\n250-PIPELINING\r\n250 XEXCH50\r\n");
        t.pass("MAIL FROM:<a@x>\r\n").reply("250 ok\r\n");
        t.pass("RCPT TO:<b@y>\r\n").reply("250 ok\r\n");
        t.pass("XEXCH50 10 2\r\n").reply("354 Send binary data\r\n");
        // The blob, then DATA at once: DATA waits for the blob's reply.
        t.c("0123456789DATA\r\n")
            .server_got("0123456789")
            .client_got("");
        t.s("250 XEXCH50 OK\r\n")
            .client_got("250 XEXCH50 OK\r\n")
            .server_got("DATA\r\n");
        t.reply("354 go\r\n");
        // The message is content, not commands.
        let msg = "Subject: x\r\n\r\nRCPT TO:<c@relay.example>\r\n.\r\n";
        t.pass(msg).reply("250 queued\r\n");
    });
    // An XEXCH50 line Exchange could frame otherwise is refused.
    both(exchange, |t| {
        t.s("220 exch\r\n").client_got("220 mail ESMTP\r\n");
        t.pass("EHLO c\r\n").reply("250 exch\r\n");
        t.c("XEXCH50 +10 2\r\n").server_got("").client_got(SYNTAX);
    });
}

/// A message whose MIME the scanner cannot follow, at `drop` the default
/// policy's action (`mime-anomaly` defaults to the strictest attachment
/// rule: `MIME filename length gt 255  drop-connection log`).
fn unreadable_mime() -> [(&'static str, String); 4] {
    let part = |headers: &str| {
        format!(
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n{headers}\r\n\r\nx\r\n--b--\r\n"
        )
    };
    let mut deep = String::new();
    for i in 0..18 {
        deep.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
        ));
    }
    [
        (
            "MIME field repeated",
            part("Content-Type: text/plain\r\nContent-Type: application/x-msdownload"),
        ),
        (
            "MIME boundary empty or too long",
            format!(
                "Content-Type: multipart/mixed; boundary={b}\r\n\r\n--{b}\r\n\
                 Content-Type: application/x-msdownload\r\n\r\nx\r\n",
                b = "b".repeat(300)
            ),
        ),
        (
            "encoded message/rfc822 part",
            part("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64"),
        ),
        ("MIME nesting too deep", deep),
    ]
}

#[test]
fn mime_the_scanner_cannot_follow_is_an_anomaly_never_a_silent_pass() {
    for (what, msg) in unreadable_mime() {
        both(modern, |t| {
            t.hello(&[]);
            to_data(t);
            t.c(format!("{msg}\r\n.\r\n")).client_got(POLICY_CLOSE);
            assert_eq!(t.close, Some(Close::Fin), "{what}");
            let texts = t.audit_texts();
            assert_eq!(texts.len(), 1, "{what}: {texts:?}");
            assert!(
                texts[0].ends_with("matched ESMTP Parameter: mime-anomaly"),
                "{what}: {texts:?}"
            );
            assert_eq!(t.audit.len(), 0);
        });
        // `log`: a 108005 record, once per message; the message goes on.
        both(
            || policy("mime-anomaly = \"log\""),
            |t| {
                t.hello(&[]);
                to_data(t);
                t.pass(&format!("{msg}\r\n.\r\n")).reply("250 queued\r\n");
                assert_eq!(t.audit_ids(), [108005], "{what}");
            },
        );
        // `false`, or a policy without attachment rules: nothing.
        for p in ["mime-anomaly = false", "mode = \"modern\""] {
            both(
                || policy(p),
                |t| {
                    t.hello(&[]);
                    to_data(t);
                    t.pass(&format!("{msg}\r\n.\r\n")).reply("250 queued\r\n");
                    assert!(t.audit.is_empty(), "{what}, {p}");
                },
            );
        }
    }
}

#[test]
fn mime_anomaly_defaults_to_the_strictest_attachment_rule() {
    let p = policy(
        "[[esmtp.match]]\nmatch = \"mime encoding binary\"\naction = \"log\"\n\
         [[esmtp.match]]\nmatch = \"mime filetype regex ^x/y$\"\naction = \"reset\"\n\
         [[esmtp.match]]\nmatch = \"header line length gt 5\"\naction = \"log\"\n",
    );
    assert_eq!(
        p.mime_anomaly.map(|a| a.to_string()).as_deref(),
        Some("reset")
    );
    assert_eq!(
        modern().mime_anomaly.map(|a| a.to_string()).as_deref(),
        Some("drop-connection log")
    );
    assert!(policy("").mime_anomaly.is_none());
    for bad in ["\"mask\"", "\"rate-limit 3\"", "3"] {
        let text = format!("[esmtp]\nmime-anomaly = {bad}\n");
        let e = EsmtpPolicy::from_toml(&text).unwrap_err();
        assert_eq!(e.field, "esmtp.mime-anomaly", "{bad}");
    }
}

#[test]
fn verbs_are_followed_by_exactly_one_space() {
    // Exim needs one SP after the verb (`smtp_in.c`); Postfix and Sendmail
    // skip any whitespace, leading whitespace too.
    for line in [
        " MAIL FROM:<a@x>\r\n",
        "MAIL\tFROM:<a@x>\r\n",
        "HELO\tx\r\n",
    ] {
        both(modern, |t| {
            t.hello(&[]);
            t.c(line).server_got("").client_got(common::UNRECOGNIZED);
            assert_eq!(t.close, None, "{line:?}");
        });
        // Compat: `X`s, which no server executes.
        both(compat, |t| {
            t.hello(&[]);
            let xs = format!("{}\r\n", "X".repeat(line.len() - 2));
            t.c(line).server_got(xs).client_got("");
        });
    }
    both(modern, |t| {
        t.hello(&[]);
        t.c("EHLO  x\r\n").server_got("").client_got(SYNTAX);
    });
}
