//! Transcript tests: scripted conversations through a Session, checking the
//! exact bytes each side sees, in both modes, for every criterion, action
//! and parameter, and for each breakage of the original feature (reference
//! section 5) fixed in modern mode. Each runs whole-write and byte by byte.

mod common;

use common::{Transcript, both, policy, second};
use inspector_esmtp::policy::EsmtpPolicy;
use inspector_esmtp::{Close, Phase};

const UNRECOGNIZED: &str = "500 5.5.1 Command unrecognized\r\n";
const POLICY_CLOSE: &str = "421 4.7.0 Connection closed by security policy\r\n";

fn modern() -> EsmtpPolicy {
    EsmtpPolicy::default()
}

fn compat() -> EsmtpPolicy {
    let text = include_str!("../../policies/compat.toml");
    let body = text.split_once("[esmtp]\n").unwrap().1;
    policy(body)
}

fn exchange() -> EsmtpPolicy {
    let text = include_str!("../../policies/exchange.toml");
    policy(text.split_once("[esmtp]\n").unwrap().1)
}

/// A policy with one rule.
fn rule(mode: &str, criterion: &str, action: &str) -> EsmtpPolicy {
    policy(&format!(
        "mode = \"{mode}\"\n[[esmtp.match]]\nmatch = '{criterion}'\naction = \"{action}\"\n"
    ))
}

/// MAIL + RCPT + DATA accepted, ready for content (server without PIPELINING).
fn to_data(t: &mut Transcript) {
    t.pass("MAIL FROM:<a@client.example>\r\n")
        .reply("250 2.1.0 Ok\r\n");
    t.pass("RCPT TO:<b@mx.example.net>\r\n")
        .reply("250 2.1.5 Ok\r\n");
    t.pass("DATA\r\n")
        .reply("354 End data with <CR><LF>.<CR><LF>\r\n");
}

const EHLO_EXTENSIONS: [&str; 11] = [
    "PIPELINING",
    "SIZE 10240000",
    "VRFY",
    "STARTTLS",
    "ENHANCEDSTATUSCODES",
    "8BITMIME",
    "BINARYMIME",
    "SMTPUTF8",
    "DSN",
    "CHUNKING",
    "X-FOO bar",
];

fn ehlo_reply() -> String {
    let mut r = String::from("250-mx.example.net\r\n");
    for (i, e) in EHLO_EXTENSIONS.iter().enumerate() {
        let sep = if i + 1 == EHLO_EXTENSIONS.len() {
            ' '
        } else {
            '-'
        };
        r.push_str(&format!("250{sep}{e}\r\n"));
    }
    r
}

// ---- Banner (section 5: "banner of asterisks") ----

#[test]
fn modern_replaces_the_banner_with_a_configurable_one() {
    both(modern, |t| {
        t.s("220-mx.example.net ESMTP Postfix 3.7\r\n220 no UCE\r\n")
            .client_got("220 mail ESMTP\r\n");
    });
    both(
        || policy("banner-name = \"mx1.example.org\""),
        |t| {
            t.s("220 secret-host ESMTP Sendmail 8.1\r\n")
                .client_got("220 mx1.example.org ESMTP\r\n");
        },
    );
    // mask-banner off: the server's banner as it is.
    both(
        || policy("mask-banner = false"),
        |t| {
            t.reply("220 mx.example.net ESMTP Postfix\r\n");
        },
    );
}

#[test]
fn compat_masks_the_banner_with_asterisks_keeping_2_0_cr_lf() {
    both(compat, |t| {
        let want = format!("220{}2*0\r\n", "*".repeat(30));
        t.s("220 mx.example.net ESMTP Postfix 2.0\r\n")
            .client_got(want);
    });
}

#[test]
fn a_refusing_greeting_is_not_masked() {
    both(modern, |t| {
        t.reply("554 5.3.2 mx.example.net closed\r\n");
    });
}

// ---- EHLO (section 5: "no ESMTP", 8BITMIME/BINARYMIME masked, STARTTLS) ----

#[test]
fn modern_ehlo_passes_modern_extensions_and_removes_others() {
    both(modern, |t| {
        t.s("220 mx ESMTP\r\n").client_got("220 mail ESMTP\r\n");
        t.pass("EHLO client.example\r\n");
        t.s(ehlo_reply()).client_got(
            "250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n\
             250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-BINARYMIME\r\n250-SMTPUTF8\r\n\
             250-DSN\r\n250 CHUNKING\r\n",
        );
        assert_eq!(t.stats.rule_hits(6), 2, "STARTTLS and X-FOO masked");
    });
}

#[test]
fn compat_ehlo_masks_keywords_with_x_keeping_lengths() {
    both(compat, |t| {
        t.s("220 mx\r\n").client_got("220***\r\n");
        t.pass("EHLO client.example\r\n");
        t.s(ehlo_reply()).client_got(
            "250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n\
             250-XXXXXXXA\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-BINARYMIME\r\n\
             250-XXXXXXXB\r\n250-DSN\r\n250-XXXXXXXC\r\n250 XXXXXXXXD\r\n",
        );
    });
}

#[test]
fn ehlo_reply_parameter_criterion_actions() {
    // mask a named keyword (modern: the line disappears).
    both(
        || rule("modern", "ehlo-reply-parameter auth", "mask"),
        |t| {
            t.s("220 mx\r\n").client_got("220 mail ESMTP\r\n");
            t.pass("EHLO c\r\n");
            t.s("250-mx\r\n250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN\r\n250 SIZE 100\r\n")
                .client_got("250-mx\r\n250 SIZE 100\r\n");
        },
    );
    // drop-connection when the server offers it.
    both(
        || rule("modern", "ehlo-reply-parameter vrfy", "drop-connection log"),
        |t| {
            t.s("220 mx\r\n").client_got("220 mail ESMTP\r\n");
            t.pass("EHLO c\r\n");
            t.s("250-mx\r\n250 VRFY\r\n").client_got(POLICY_CLOSE);
            assert_eq!(t.close, Some(Close::Fin));
            assert_eq!(t.audit_ids(), [108004]);
        },
    );
    // not: mask everything except the listed keywords.
    both(
        || rule("modern", "not ehlo-reply-parameter size 8bitmime", "mask"),
        |t| {
            t.s("220 mx\r\n").client_got("220 mail ESMTP\r\n");
            t.pass("EHLO c\r\n");
            t.s("250-mx\r\n250-SIZE 5\r\n250-DSN\r\n250-8BITMIME\r\n250 PIPELINING\r\n")
                .client_got("250-mx\r\n250-SIZE 5\r\n250 8BITMIME\r\n");
        },
    );
}

#[test]
fn a_masked_pipelining_keyword_is_not_used() {
    both(
        || rule("modern", "ehlo-reply-parameter pipelining", "mask"),
        |t| {
            t.hello(&["PIPELINING"]);
            // The client pipelines anyway: the engine serializes.
            t.c("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n")
                .server_got("MAIL FROM:<a@x>\r\n");
            t.s("250 ok\r\n")
                .client_got("250 ok\r\n")
                .server_got("RCPT TO:<b@y>\r\n");
        },
    );
}

// ---- Commands (section 5: "EHLO answered 500 or a fake OK", private verbs) ----

#[test]
fn modern_answers_disallowed_commands_itself_never_ok() {
    both(modern, |t| {
        t.hello(&[]);
        t.c("XFOO bar\r\n").server_got("").client_got(UNRECOGNIZED);
        t.c("ATRN\r\n").server_got("").client_got(UNRECOGNIZED);
        // Short commands and empty lines get an answer, not silence.
        t.c("QU\r\n").server_got("").client_got(UNRECOGNIZED);
        t.c("\r\n").server_got("").client_got(UNRECOGNIZED);
        t.pass("NOOP\r\n").reply("250 2.0.0 Ok\r\n");
    });
}

#[test]
fn compat_rewrites_disallowed_commands_to_x_and_sends_them() {
    both(compat, |t| {
        t.hello(&[]);
        t.c("XFOO bar\r\n")
            .server_got("XXXXXXXX\r\n")
            .client_got("");
        t.reply("500 5.5.2 Error: command not recognized\r\n");
        t.c("X-LINK2STATE LAST CHUNK=1\r\n")
            .server_got("XXXXXXXXXXXXXXXXXXXXXXXXX\r\n");
        t.reply("500 5.5.2 Error: command not recognized\r\n");
    });
}

#[test]
fn all_fifteen_commands_pass_in_both_modes() {
    for p in [modern as fn() -> EsmtpPolicy, compat] {
        both(p, |t| {
            t.hello(&[]);
            for cmd in [
                "HELO c",
                "MAIL FROM:<a@x>",
                "RCPT TO:<b@y>",
                "RSET",
                "NOOP",
                "AUTH PLAIN AGFAAGI=",
                "ETRN x",
                "HELP",
                "SAML FROM:<a@x>",
                "SEND FROM:<a@x>",
                "SOML FROM:<a@x>",
                "VRFY u",
                "EHLO c",
            ] {
                t.pass(&format!("{cmd}\r\n")).reply("502 5.5.1 nope\r\n");
            }
            t.pass("QUIT\r\n").reply("221 bye\r\n");
        });
    }
}

#[test]
fn exchange_preset_passes_private_verbs() {
    both(exchange, |t| {
        t.s("220 exch\r\n").client_got("220 mail ESMTP\r\n");
        t.pass("EHLO c\r\n");
        t.reply("250-exch\r\n250-X-EXPS GSSAPI NTLM\r\n250-X-LINK2STATE\r\n250 XEXCH50\r\n");
        t.pass("X-LINK2STATE LAST CHUNK=aGVsbG8=\r\n")
            .reply("250 X-LINK2STATE OK\r\n");
        // XEXCH50: a binary blob after 354, never parsed as commands.
        t.pass("XEXCH50 10 2\r\n").reply("354 Send binary data\r\n");
        t.c("0123\r\nQUIT")
            .server_got("0123\r\nQUIT")
            .client_got("");
        t.reply("250 XEXCH50 OK\r\n");
        // X-EXPS authenticates like AUTH.
        t.pass("X-EXPS GSSAPI\r\n").reply("334 <challenge>\r\n");
        t.pass("YIIB...\r\n").reply("235 2.7.0 ok\r\n");
    });
}

#[test]
fn auth_exchange_passes_and_responses_are_not_commands() {
    both(modern, |t| {
        t.hello(&["AUTH LOGIN PLAIN"]);
        t.pass("AUTH LOGIN\r\n").reply("334 VXNlcm5hbWU6\r\n");
        t.pass("dXNlcg==\r\n").reply("334 UGFzc3dvcmQ6\r\n");
        t.pass("cGFzcw==\r\n")
            .reply("235 2.7.0 Authentication successful\r\n");
        t.pass("MAIL FROM:<a@x>\r\n").reply("250 ok\r\n");
    });
}

#[test]
fn cmd_verb_criterion_actions() {
    // mask, modern: the engine refuses it.
    both(
        || rule("modern", "cmd verb VRFY EXPN", "mask"),
        |t| {
            t.hello(&[]);
            t.c("VRFY root\r\n").server_got("").client_got(UNRECOGNIZED);
        },
    );
    // mask, compat: X's to the server.
    both(
        || rule("compat", "cmd verb VRFY", "mask log"),
        |t| {
            t.hello(&[]);
            t.c("VRFY root\r\n").server_got("XXXXXXXXX\r\n");
            let texts = t.audit_texts();
            assert_eq!(
                texts,
                [
                    "ESMTP Classification: Masked header flags for ESMTP Request from \
                  outside:198.18.0.1/40000 to inside:198.18.1.1/25; matched Class 1: cmd verb VRFY"
                ]
            );
        },
    );
    // reset.
    both(
        || rule("modern", "cmd verb VRFY", "reset log"),
        |t| {
            t.hello(&[]);
            t.c("VRFY root\r\n").server_got("").client_got("");
            assert_eq!(t.close, Some(Close::Reset));
            assert_eq!(
                t.stats
                    .reset_drop
                    .load(std::sync::atomic::Ordering::Relaxed),
                1
            );
            assert!(t.audit_texts()[0].contains("Reset connection for ESMTP Request"));
        },
    );
    // log only: 108005, the command passes.
    both(
        || rule("modern", "cmd verb NOOP", "log"),
        |t| {
            t.hello(&[]);
            t.pass("NOOP\r\n");
            assert_eq!(t.audit_ids(), [108005]);
        },
    );
}

#[test]
fn rate_limit_refuses_commands_over_the_rate() {
    both(
        || rule("modern", "cmd verb NOOP", "rate-limit 2 log"),
        |t| {
            t.hello(&[]);
            t.pass("NOOP\r\n").reply("250 ok\r\n");
            t.pass("NOOP\r\n").reply("250 ok\r\n");
            t.c("NOOP\r\n")
                .server_got("")
                .client_got("450 4.7.0 Rate limit exceeded, try again later\r\n");
            assert_eq!(t.audit_ids(), [108004]);
            t.later(second());
            t.pass("NOOP\r\n").reply("250 ok\r\n");
        },
    );
}

#[test]
fn match_not_turns_a_verb_list_into_an_allow_list() {
    both(
        || {
            rule(
                "modern",
                "not cmd verb EHLO HELO MAIL RCPT DATA QUIT",
                "mask",
            )
        },
        |t| {
            t.hello(&[]);
            t.c("NOOP\r\n").server_got("").client_got(UNRECOGNIZED);
            t.pass("MAIL FROM:<a@x>\r\n");
        },
    );
}

#[test]
fn cmd_line_length_drops_in_both_modes() {
    let long = format!("MAIL FROM:<{}@x.example>\r\n", "a".repeat(600));
    both(modern, |t| {
        t.hello(&[]);
        t.c(&long).server_got("").client_got(POLICY_CLOSE);
        assert_eq!(t.close, Some(Close::Fin));
        assert_eq!(
            t.audit_texts(),
            [
                "ESMTP Classification: Dropped connection for ESMTP Request from \
              outside:198.18.0.1/40000 to inside:198.18.1.1/25; matched Class 1: cmd line length gt 512"
            ]
        );
        // Nothing more after the close.
        t.c("NOOP\r\n").server_got("").client_got("");
    });
    both(compat, |t| {
        t.hello(&[]);
        // The original closes without a word.
        t.c(&long).server_got("").client_got("");
        assert_eq!(t.close, Some(Close::Fin));
    });
}

#[test]
fn over_long_lines_are_refused_without_being_buffered() {
    both(
        || policy(""),
        |t| {
            t.hello(&[]);
            let line = format!("NOOP {}\r\n", "x".repeat(20_000));
            t.c(&line)
                .server_got("")
                .client_got("500 5.5.2 Line too long\r\n");
            assert!(t.session.heap_bytes() < 64 * 1024);
            t.pass("NOOP\r\n").reply("250 ok\r\n");
        },
    );
    // ... and counted exactly for `cmd line length`.
    both(
        || rule("modern", "cmd line length gt 19999", "drop-connection"),
        |t| {
            t.hello(&[]);
            t.c(format!("{}\r\n", "x".repeat(19_999)))
                .client_got("500 5.5.2 Line too long\r\n");
            t.c(format!("{}\r\n", "x".repeat(20_000)))
                .client_got(POLICY_CLOSE);
        },
    );
}

// ---- Envelope: RCPT count, sender, addresses ----

#[test]
fn rcpt_count_drops_the_connection_by_default() {
    both(
        || rule("modern", "cmd RCPT count gt 2", "drop-connection log"),
        |t| {
            t.hello(&[]);
            t.pass("MAIL FROM:<a@x>\r\n").reply("250 ok\r\n");
            t.pass("RCPT TO:<1@y>\r\n").reply("250 ok\r\n");
            t.pass("RCPT TO:<2@y>\r\n").reply("250 ok\r\n");
            t.c("RCPT TO:<3@y>\r\n")
                .server_got("")
                .client_got(POLICY_CLOSE);
        },
    );
}

#[test]
fn modern_answers_452_to_excess_recipients_never_dropping_one_silently() {
    let p = || {
        policy(
            "reject-excess-recipients = true\n[[esmtp.match]]\nmatch = \"cmd RCPT count gt 2\"\n\
             action = \"drop-connection log\"\n",
        )
    };
    both(p, |t| {
        t.hello(&["PIPELINING"]);
        t.pass("MAIL FROM:<a@x>\r\n").reply("250 ok\r\n");
        t.c("RCPT TO:<1@y>\r\nRCPT TO:<2@y>\r\nRCPT TO:<3@y>\r\nRCPT TO:<4@y>\r\nDATA\r\n")
            .server_got("RCPT TO:<1@y>\r\nRCPT TO:<2@y>\r\nDATA\r\n")
            .client_got("");
        // Every RCPT gets its reply, in order.
        t.s("250 1\r\n250 2\r\n354 go\r\n").client_got(
            "250 1\r\n250 2\r\n452 4.5.3 Too many recipients\r\n452 4.5.3 Too many recipients\r\n354 go\r\n",
        );
        let texts = t.audit_texts();
        assert_eq!(texts.len(), 2);
        assert!(
            texts[0].contains("Rejected recipient for ESMTP Request"),
            "{texts:?}"
        );
        t.pass("x\r\n.\r\n").reply("250 queued\r\n");
        // A new transaction counts from zero.
        t.pass("MAIL FROM:<a@x>\r\n").reply("250 ok\r\n");
        t.pass("RCPT TO:<1@y>\r\n").reply("250 ok\r\n");
    });
}

#[test]
fn sender_address_criteria() {
    both(modern, |t| {
        t.hello(&[]);
        let addr = format!("{}@x.example", "s".repeat(320));
        t.c(format!("MAIL FROM:<{addr}>\r\n"))
            .server_got("")
            .client_got(POLICY_CLOSE);
        assert!(t.audit_texts()[0].ends_with("matched Class 5: sender-address length gt 320"));
    });
    both(
        || {
            rule(
                "modern",
                r"sender-address regex (?i)@spam\.example$",
                "drop-connection log",
            )
        },
        |t| {
            t.hello(&[]);
            t.pass("MAIL FROM:<a@ok.example>\r\n").reply("250 ok\r\n");
            t.pass("RSET\r\n").reply("250 ok\r\n");
            t.c("MAIL FROM:<a@SPAM.example> SIZE=10\r\n")
                .client_got(POLICY_CLOSE);
        },
    );
}

#[test]
fn program_pipe_addresses_end_the_connection_108003() {
    for p in [modern as fn() -> EsmtpPolicy, compat] {
        both(p, |t| {
            t.hello(&[]);
            t.pass("MAIL FROM:<a@x>\r\n").reply("250 ok\r\n");
            t.c("RCPT TO:<\"|/bin/sh -c id\"@x>\r\n").server_got("");
            assert_eq!(t.close, Some(Close::Fin));
            assert_eq!(
                t.audit_texts(),
                [
                    "Terminating ESMTP connection; malicious pattern detected in the mail address from \
                  outside:198.18.0.1/40000 to inside:198.18.1.1/25. Mail Address: \"|/bin/sh -c id\"@x"
                ]
            );
        });
    }
}

#[test]
fn compat_replaces_pipe_in_addresses_with_a_space_108002_modern_does_not() {
    both(compat, |t| {
        t.hello(&[]);
        t.c("MAIL FROM:<a|b@x>\r\n")
            .server_got("MAIL FROM:<a b@x>\r\n");
        assert_eq!(
            t.audit_texts(),
            ["SMTP replaced string: out 198.18.0.1 in 198.18.1.1 data: MAIL FROM:<a b@x>"]
        );
    });
    both(modern, |t| {
        t.hello(&[]);
        t.pass("MAIL FROM:<a|b@x>\r\n");
        assert!(t.audit.is_empty());
    });
}

#[test]
fn special_character_parameter() {
    both(
        || policy("special-character = \"log\""),
        |t| {
            t.hello(&[]);
            t.pass("MAIL FROM:<a`b@x>\r\n");
            assert_eq!(
                t.audit_texts(),
                [
                    "ESMTP Classification: Received ESMTP Request from outside:198.18.0.1/40000 to \
                  inside:198.18.1.1/25; matched ESMTP Parameter: special-character"
                ]
            );
        },
    );
    both(
        || policy("special-character = \"drop-connection\""),
        |t| {
            t.hello(&[]);
            t.c("MAIL FROM:<a|b@x>\r\n")
                .server_got("")
                .client_got(POLICY_CLOSE);
            assert!(t.audit.is_empty(), "no log without `log`");
        },
    );
}

#[test]
fn mail_relay_parameter() {
    both(
        || policy("mail-relay = { domain = \"MX.example.net\", action = \"drop-connection log\" }"),
        |t| {
            t.hello(&[]);
            t.pass("MAIL FROM:<a@elsewhere.org>\r\n")
                .reply("250 ok\r\n");
            t.pass("RCPT TO:<b@mx.example.NET>\r\n").reply("250 ok\r\n");
            t.pass("RCPT TO:<postmaster>\r\n").reply("250 ok\r\n");
            t.c("RCPT TO:<c@relay.example>\r\n")
                .server_got("")
                .client_got(POLICY_CLOSE);
            assert!(
                t.audit_texts()[0].ends_with("matched ESMTP Parameter: mail-relay mx.example.net")
            );
        },
    );
}

#[test]
fn invalid_recipients_count() {
    both(
        || {
            rule(
                "modern",
                "invalid-recipients count gt 1",
                "drop-connection log",
            )
        },
        |t| {
            t.hello(&[]);
            t.pass("MAIL FROM:<a@x>\r\n").reply("250 ok\r\n");
            t.pass("RCPT TO:<u1@y>\r\n").reply("550 5.1.1 unknown\r\n");
            t.pass("RCPT TO:<u2@y>\r\n").reply("250 ok\r\n");
            t.pass("RCPT TO:<u3@y>\r\n");
            t.s("550 5.1.1 unknown\r\n")
                .client_got(format!("550 5.1.1 unknown\r\n{POLICY_CLOSE}"));
            assert_eq!(t.close, Some(Close::Fin));
        },
    );
}

// ---- Message content (section 5: duplicates, XXXX inside messages) ----

#[test]
fn data_is_relayed_byte_for_byte_and_the_end_reply_as_is() {
    for p in [modern as fn() -> EsmtpPolicy, compat] {
        both(p, |t| {
            t.hello(&[]);
            to_data(t);
            // Command-like lines, pipes, dots and 8-bit bytes: untouched.
            let msg = "Subject: t\r\nTo: <a|b@x>\r\n\r\nVRFY root\r\nXFOO\r\n..leading\r\n\
                       RCPT TO:<\"|x\"@y>\r\ncaf\u{e9}\r\n.\r\n";
            t.c(msg).server_got(msg).client_got("");
            // The end of data reply is the server's, whatever it says.
            t.reply("451 4.3.0 Error: queue file write error\r\n");
            t.pass("QUIT\r\n").reply("221 2.0.0 Bye\r\n");
        });
    }
}

#[test]
fn pipelined_transaction_replies_matched_in_order() {
    both(
        || rule("modern", "cmd verb VRFY", "mask"),
        |t| {
            t.hello(&["PIPELINING"]);
            t.c("MAIL FROM:<a@x>\r\nVRFY b\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: early\r\n")
                .server_got("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")
                .client_got("");
            t.s("250 2.1.0 Ok\r\n")
                .client_got(format!("250 2.1.0 Ok\r\n{UNRECOGNIZED}"));
            // Bytes sent before the 354 wait for it, then count as content.
            t.s("250 2.1.5 Ok\r\n354 go\r\n")
                .client_got("250 2.1.5 Ok\r\n354 go\r\n")
                .server_got("Subject: early\r\n");
            t.c("\r\nbody\r\n.\r\nQUIT\r\n")
                .server_got("\r\nbody\r\n.\r\nQUIT\r\n");
            t.s("250 queued\r\n221 bye\r\n")
                .client_got("250 queued\r\n221 bye\r\n");
        },
    );
}

#[test]
fn data_refused_keeps_later_bytes_as_commands() {
    both(modern, |t| {
        t.hello(&["PIPELINING"]);
        t.c("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nQUIT\r\n")
            .server_got("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n");
        t.s("250 ok\r\n550 no\r\n554 no valid recipients\r\n")
            .server_got("QUIT\r\n");
    });
}

#[test]
fn a_client_talking_before_the_greeting_waits_for_it() {
    both(modern, |t| {
        t.c("EHLO early\r\n").server_got("");
        t.s("220 mx\r\n")
            .client_got("220 mail ESMTP\r\n")
            .server_got("EHLO early\r\n");
    });
}

#[test]
fn client_eof_mid_data_never_completes_the_message() {
    both(modern, |t| {
        t.hello(&[]);
        to_data(t);
        t.c("Subject: x\r\n\r\npartial\r\n.")
            .server_got("Subject: x\r\n\r\npartial\r\n.");
        t.client_eof();
        assert_eq!(t.close, Some(Close::Fin));
        t.server_got("");
    });
}

#[test]
fn bdat_chunks_are_counted_exactly_never_parsed() {
    both(modern, |t| {
        t.hello(&["PIPELINING", "CHUNKING"]);
        t.c("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n");
        t.take_server();
        t.s("250 ok\r\n250 ok\r\n")
            .client_got("250 ok\r\n250 ok\r\n");
        let payload = "QUIT\r\nRSET\r\n";
        let cmds = format!("BDAT {}\r\n{payload}BDAT 3 LAST\r\nX\r\n", payload.len());
        t.c(&cmds).server_got(&cmds).client_got("");
        t.s("250 2.0.0 12 octets\r\n250 2.0.0 queued\r\n")
            .client_got("250 2.0.0 12 octets\r\n250 2.0.0 queued\r\n");
        t.pass("QUIT\r\n");
    });
}

#[test]
fn bdat_without_chunking_is_refused_and_its_payload_skipped() {
    both(modern, |t| {
        t.hello(&[]);
        t.c("BDAT 6 LAST\r\nQUIT\r\n")
            .server_got("")
            .client_got(UNRECOGNIZED);
        t.pass("NOOP\r\n");
    });
}

#[test]
fn size_violation_is_audited_108006() {
    both(modern, |t| {
        t.hello(&["SIZE 1000"]);
        t.pass("MAIL FROM:<a@x> SIZE=10\r\n").reply("250 ok\r\n");
        t.pass("RCPT TO:<b@y>\r\n").reply("250 ok\r\n");
        t.pass("DATA\r\n").reply("354 go\r\n");
        let body = "Subject: x\r\n\r\n..0123456789\r\n";
        t.pass(&format!("{body}.\r\n"));
        // Un-stuffed: one dot less.
        assert_eq!(
            t.audit_texts(),
            [format!(
                "Detected ESMTP size violation from outside:198.18.0.1/40000 to \
                 inside:198.18.1.1/25; declared size is: 10, actual size is {}",
                body.len() - 1
            )]
        );
    });
}

fn message_with_header_line(len: usize) -> String {
    format!("Subject: {}\r\n\r\nbody\r\n.\r\n", "h".repeat(len - 9))
}

#[test]
fn header_line_length_drops_before_the_message_completes() {
    for p in [modern as fn() -> EsmtpPolicy, compat] {
        both(p, |t| {
            t.hello(&[]);
            to_data(t);
            t.c(message_with_header_line(999));
            let got = t.take_server();
            assert!(!got.ends_with(b"\r\n.\r\n"), "message completed");
            assert_eq!(t.close, Some(Close::Fin));
            assert!(t.audit_texts()[0].ends_with("matched Class 4: header line length gt 998"));
        });
    }
    both(modern, |t| {
        t.hello(&[]);
        to_data(t);
        t.pass(&message_with_header_line(998))
            .reply("250 queued\r\n");
    });
}

#[test]
fn header_length_and_to_fields() {
    both(
        || rule("modern", "header length gt 20", "log"),
        |t| {
            t.hello(&[]);
            to_data(t);
            t.pass("Subject: 0123456789abc\r\n\r\nb\r\n.\r\n");
            assert_eq!(t.audit_ids(), [108005]);
        },
    );
    both(
        || {
            rule(
                "modern",
                "header to-fields count gt 1",
                "drop-connection log",
            )
        },
        |t| {
            t.hello(&[]);
            to_data(t);
            t.pass("To: a@x\r\nSubject: s\r\n\r\nb\r\n.\r\n")
                .reply("250 ok\r\n");
            to_data(t);
            t.c("To: a@x\r\nTo: b@y\r\n\r\nb\r\n.\r\n");
            assert_eq!(t.close, Some(Close::Fin));
        },
    );
}

#[test]
fn body_line_length_logs_by_default_and_body_length_resets() {
    both(modern, |t| {
        t.hello(&[]);
        to_data(t);
        let msg = format!(
            "Subject: s\r\n\r\n{}\r\n{}\r\n.\r\n",
            "b".repeat(999),
            "c".repeat(2000)
        );
        t.pass(&msg).reply("250 ok\r\n");
        // Once per message.
        assert_eq!(
            t.audit_texts(),
            [
                "ESMTP Classification: Received ESMTP Request from outside:198.18.0.1/40000 to \
              inside:198.18.1.1/25; matched Class 3: body line length gt 998"
            ]
        );
    });
    both(
        || rule("modern", "body length gt 10", "reset"),
        |t| {
            t.hello(&[]);
            to_data(t);
            t.c("Subject: s\r\n\r\n0123456789ab\r\n.\r\n");
            assert_eq!(t.close, Some(Close::Reset));
            assert!(!t.take_server().ends_with(b".\r\n"));
        },
    );
}

const MULTIPART: &str = "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n\
--b1\r\nContent-Type: application/x-msdownload; name=\"run.exe\"\r\n\
Content-Disposition: attachment; filename*=utf-8''%E2%82%ACvery-long-name.exe\r\n\
Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--b1--\r\n.\r\n";

#[test]
fn mime_criteria() {
    both(
        || {
            rule(
                "modern",
                "mime filetype regex ^application/x-ms",
                "drop-connection log",
            )
        },
        |t| {
            t.hello(&[]);
            to_data(t);
            t.c(MULTIPART);
            assert_eq!(t.close, Some(Close::Fin));
            assert!(
                t.audit[0]
                    .to_string()
                    .ends_with("MIME filetype regex ^application/x-ms")
            );
        },
    );
    // The RFC 2231 name decodes to 3 + 18 = 21 octets.
    both(
        || rule("modern", "mime filename length gt 20", "drop-connection"),
        |t| {
            t.hello(&[]);
            to_data(t);
            t.c(MULTIPART);
            assert_eq!(t.close, Some(Close::Fin));
        },
    );
    both(
        || rule("modern", "mime filename length gt 21", "drop-connection"),
        |t| {
            t.hello(&[]);
            to_data(t);
            t.pass(MULTIPART);
            assert_eq!(t.close, None);
        },
    );
    both(
        || rule("modern", "mime encoding base64 binary", "log"),
        |t| {
            t.hello(&[]);
            to_data(t);
            t.pass(MULTIPART);
            assert_eq!(t.audit_ids(), [108005]);
        },
    );
}

// ---- STARTTLS ----

#[test]
fn allow_tls_passes_starttls_then_relays_opaquely_108007() {
    both(
        || policy("allow-tls = true"),
        |t| {
            t.hello(&["STARTTLS"]);
            t.pass("STARTTLS\r\n");
            t.s("220 2.0.0 Ready to start TLS\r\n")
                .client_got("220 2.0.0 Ready to start TLS\r\n");
            assert!(t.opaque);
            assert_eq!(
                t.audit_texts(),
                [
                    "TLS started on ESMTP session between client outside:198.18.0.1/40000 and \
                  server inside:198.18.1.1/25"
                ]
            );
            // Anything now: relayed raw both ways, even over-long "lines".
            let hello = format!("\x16\x03\x01{}\r\nVRFY x\r\n", "z".repeat(10_000));
            t.pass(&hello);
            t.reply("\x16\x03\x03 server hello");
        },
    );
}

#[test]
fn without_allow_tls_starttls_is_hidden_and_refused() {
    both(modern, |t| {
        t.s("220 mx\r\n").client_got("220 mail ESMTP\r\n");
        t.pass("EHLO c\r\n");
        t.s("250-mx\r\n250 STARTTLS\r\n").client_got("250 mx\r\n");
        t.c("STARTTLS\r\n").server_got("").client_got(UNRECOGNIZED);
    });
    // The original: `250 XXXXXXXA`, then the server says 500.
    both(compat, |t| {
        t.s("220 mx\r\n").client_got("220***\r\n");
        t.pass("EHLO c\r\n");
        t.s("250-mx\r\n250 STARTTLS\r\n")
            .client_got("250-mx\r\n250 XXXXXXXA\r\n");
        t.c("STARTTLS\r\n").server_got("XXXXXXXX\r\n");
    });
}

#[test]
fn refused_starttls_keeps_inspecting() {
    both(
        || policy("allow-tls = \"log\""),
        |t| {
            t.hello(&["STARTTLS"]);
            t.pass("STARTTLS\r\n")
                .reply("454 4.7.0 TLS not available\r\n");
            assert!(!t.opaque);
            t.c("XFOO\r\n").client_got(UNRECOGNIZED);
        },
    );
}

// ---- Counters ----

#[test]
fn show_service_policy_view() {
    let mut t = Transcript::new(modern(), false);
    t.s("220 mx\r\n");
    t.c("EHLO c\r\n");
    t.s("250-mx\r\n250 STARTTLS\r\n");
    t.c(format!("MAIL FROM:<{}@x>\r\n", "a".repeat(600)));
    let view = t.stats.render(&t.policy);
    assert_eq!(
        view,
        "Inspect: esmtp _default_esmtp_map, packet 4, drop 1, reset-drop 0\n\
         \x20 mask-banner, count 1\n\
         \x20 match cmd line length gt 512        drop-connection log, packet 1\n\
         \x20 match cmd RCPT count gt 100         drop-connection log, packet 0\n\
         \x20 match body line length gt 998       log, packet 0\n\
         \x20 match header line length gt 998     drop-connection log, packet 0\n\
         \x20 match sender-address length gt 320  drop-connection log, packet 0\n\
         \x20 match MIME filename length gt 255   drop-connection log, packet 0\n\
         \x20 match ehlo-reply-parameter others   mask, packet 1\n"
    );
}

// ---- Limits ----

#[test]
fn memory_stays_bounded_whatever_the_input() {
    use inspector_esmtp::SESSION_MEMORY_BOUND;
    let mut t = Transcript::new(modern(), false);
    t.hello(&["PIPELINING"]);
    to_data(&mut t);
    // A megabyte of empty lines in one read, then deep multipart nesting.
    t.c(vec![b'\n'; 1 << 20]);
    assert!(t.session.heap_bytes() <= SESSION_MEMORY_BOUND);
    let mut nest = String::new();
    for i in 0..200 {
        nest.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
        ));
    }
    t.c(nest.repeat(20));
    assert!(t.session.heap_bytes() <= SESSION_MEMORY_BOUND);
    // (After bare LFs, a CRLF first: a dot next to a bare LF closes.)
    t.c("\r\n.\r\n");
    assert_eq!(t.close, None);
    // A client that never reads replies: held up to MAX_HOLD, then 421.
    t.s("250 ok\r\n");
    let flood = "NOOP\r\n".repeat(20_000);
    t.c(&flood);
    assert!(t.session.heap_bytes() <= SESSION_MEMORY_BOUND);
    assert_eq!(t.close, Some(Close::Fin));
    println!("SESSION_MEMORY_BOUND = {SESSION_MEMORY_BOUND}");
}

#[test]
fn an_abandoned_bdat_message_does_not_leak_into_the_next() {
    both(
        || rule("modern", "header line length gt 100", "drop-connection"),
        |t| {
            t.hello(&["CHUNKING"]);
            t.pass("MAIL FROM:<a@x>\r\n").reply("250 ok\r\n");
            t.pass("RCPT TO:<b@y>\r\n").reply("250 ok\r\n");
            let chunk = format!("BDAT 90\r\nSubject: {}", "s".repeat(81));
            t.pass(&chunk).reply("250 ok\r\n");
            t.pass("RSET\r\n").reply("250 ok\r\n");
            t.pass("MAIL FROM:<a@x>\r\n").reply("250 ok\r\n");
            t.pass("RCPT TO:<b@y>\r\n").reply("250 ok\r\n");
            t.pass("BDAT 28 LAST\r\nSubject: ssssssssssssssss\r\n")
                .reply("250 ok\r\n");
            assert_eq!(t.close, None);
        },
    );
}

#[test]
fn bare_lf_commands_are_answered_not_left_hanging() {
    both(modern, |t| {
        t.hello(&[]);
        // Forwarded as sent: the server decides, and its answer comes back.
        t.pass("NOOP\n").reply("250 2.0.0 Ok\r\n");
        t.c("XFOO\n").server_got("").client_got(UNRECOGNIZED);
    });
}

// ---- A close never costs a message its reply (no duplicate on retry) ----

#[test]
fn a_close_after_a_relayed_final_dot_waits_for_the_servers_reply() {
    both(
        || {
            rule(
                "modern",
                "sender-address length gt 20",
                "drop-connection log",
            )
        },
        |t| {
            t.hello(&["PIPELINING"]);
            to_data(t);
            // The next transaction, pipelined after the final dot, breaks a rule.
            t.c("body\r\n.\r\nMAIL FROM:<a-very-long-sender@x.example>\r\nNOOP\r\n")
                .server_got("body\r\n.\r\n")
                .client_got("");
            assert_eq!(t.close, None, "the message's reply is still owed");
            // The server accepted the message: the client must learn it.
            t.s("250 2.0.0 Ok: queued as 1234\r\n")
                .client_got(format!("250 2.0.0 Ok: queued as 1234\r\n{POLICY_CLOSE}"))
                .server_got("");
            assert_eq!(t.close, Some(Close::Fin));
        },
    );
}

#[test]
fn a_close_on_a_reply_waits_for_a_pipelined_bdat_last_already_relayed() {
    both(
        || {
            rule(
                "modern",
                "invalid-recipients count gt 0",
                "drop-connection log",
            )
        },
        |t| {
            t.hello(&["PIPELINING", "CHUNKING"]);
            let cmds = "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nBDAT 5 LAST\r\nhello";
            t.c(cmds).server_got(cmds);
            t.s("250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n")
                .client_got("250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n");
            assert_eq!(t.close, None, "the BDAT LAST reply is still owed");
            // Meanwhile the client's bytes go nowhere.
            t.c("QUIT\r\n").server_got("");
            t.s("250 2.0.0 queued\r\n")
                .client_got(format!("250 2.0.0 queued\r\n{POLICY_CLOSE}"));
            assert_eq!(t.close, Some(Close::Fin));
        },
    );
}

#[test]
fn a_close_inside_a_bdat_last_chunk_is_immediate() {
    both(
        || rule("modern", "header line length gt 20", "drop-connection"),
        |t| {
            t.hello(&["PIPELINING", "CHUNKING"]);
            t.c("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n");
            t.take_server();
            t.s("250 ok\r\n250 ok\r\n")
                .client_got("250 ok\r\n250 ok\r\n");
            // Nothing else is owed: no waiting for the chunk's own reply.
            t.c(format!("BDAT 100 LAST\r\nSubject: {}\r\n", "s".repeat(40)));
            assert_eq!(t.close, Some(Close::Fin));
        },
    );
}

#[test]
fn the_reply_to_a_final_dot_does_not_reset_the_next_pipelined_transaction() {
    both(
        || rule("modern", "cmd RCPT count gt 2", "drop-connection"),
        |t| {
            t.hello(&["PIPELINING"]);
            to_data(t);
            t.pass(".\r\nMAIL FROM:<a@x>\r\nRCPT TO:<1@y>\r\nRCPT TO:<2@y>\r\n");
            t.s("250 queued\r\n250 ok\r\n250 ok\r\n250 ok\r\n");
            // The third recipient of this transaction.
            t.c("RCPT TO:<3@y>\r\n").server_got("");
            assert_eq!(t.close, Some(Close::Fin));
        },
    );
}

#[test]
fn a_pipelined_bdat_message_keeps_its_size_across_the_previous_reply() {
    both(modern, |t| {
        t.hello(&["PIPELINING", "CHUNKING", "SIZE 1000"]);
        t.pass("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 3 LAST\r\nabc");
        let second = "MAIL FROM:<a@x> SIZE=5\r\nRCPT TO:<b@y>\r\nBDAT 4\r\ndefg";
        t.pass(second);
        let replies = "250 ok\r\n250 ok\r\n250 queued\r\n250 ok\r\n250 ok\r\n250 4 octets\r\n";
        t.reply(replies);
        t.pass("BDAT 4 LAST\r\nhijk");
        assert_eq!(t.audit_ids(), [108006], "8 octets sent, 5 declared");
    });
}

#[test]
fn bytes_pipelined_after_starttls_never_reach_the_server() {
    both(
        || policy("allow-tls = true"),
        |t| {
            t.hello(&["STARTTLS"]);
            // Plaintext injected after STARTTLS (CVE-2011-0411 style).
            t.c("STARTTLS\r\nMAIL FROM:<evil@x>\r\n")
                .server_got("STARTTLS\r\n");
            t.s("220 2.0.0 Ready\r\n")
                .client_got("220 2.0.0 Ready\r\n")
                .server_got("");
            assert!(t.opaque);
            // The TLS handshake that follows is relayed.
            t.pass("\x16\x03\x01 client hello");
        },
    );
    // Refused: the held bytes are commands again.
    both(
        || policy("allow-tls = true"),
        |t| {
            t.hello(&["STARTTLS"]);
            t.c("STARTTLS\r\nNOOP\r\n").server_got("STARTTLS\r\n");
            t.s("454 4.7.0 TLS not available\r\n")
                .client_got("454 4.7.0 TLS not available\r\n")
                .server_got("NOOP\r\n");
            assert!(!t.opaque);
        },
    );
}

#[test]
fn an_ehlo_reply_ending_in_another_code_keeps_its_line_order() {
    both(modern, |t| {
        t.s("220 mx\r\n").client_got("220 mail ESMTP\r\n");
        t.pass("EHLO c\r\n");
        t.reply("250-mx\r\n250-PIPELINING\r\n421 4.3.2 Shutting down\r\n");
    });
}

#[test]
fn after_a_refused_bdat_chunk_no_later_chunk_completes_a_truncated_message() {
    both(
        || rule("modern", "cmd verb BDAT", "rate-limit 1"),
        |t| {
            t.hello(&["PIPELINING", "CHUNKING"]);
            t.pass("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n")
                .reply("250 ok\r\n250 ok\r\n");
            t.pass("BDAT 3\r\nabc");
            // Over the rate: refused, and its chunk never reaches the server.
            t.c("BDAT 3\r\ndef").server_got("").client_got("");
            t.s("250 3 octets\r\n")
                .client_got("250 3 octets\r\n450 4.7.0 Rate limit exceeded, try again later\r\n");
            // Within the rate again, but the message would lack `def`.
            t.later(second());
            t.c("BDAT 3 LAST\r\nghi")
                .server_got("")
                .client_got("503 5.5.1 Transaction failed: an earlier BDAT chunk was refused\r\n");
            // RSET ends the failed transaction on both sides.
            t.pass("RSET\r\n").reply("250 ok\r\n");
            t.later(second());
            t.pass("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 3 LAST\r\nabc");
        },
    );
}

#[test]
fn a_final_dot_next_to_a_bare_lf_ends_the_session_not_the_message() {
    // Servers disagree on whether these end the message (SMTP smuggling,
    // CVE-2023-51764): neither side may complete it, nor may what follows
    // be taken for commands.
    for end in ["x\n.\n", "x\r\n.\n", "x\n.\r\n"] {
        both(modern, |t| {
            t.hello(&["PIPELINING"]);
            to_data(t);
            t.c(format!("{end}MAIL FROM:<smuggled@x>\r\n"));
            let got = t.take_server();
            assert!(
                !got.ends_with(b".\n") && !got.ends_with(b".\r\n"),
                "{end:?}"
            );
            assert_eq!(t.close, Some(Close::Fin), "{end:?}");
        });
    }
    // A bare LF elsewhere is content.
    both(modern, |t| {
        t.hello(&[]);
        to_data(t);
        t.pass("a\nb\n\r\n.\r\n").reply("250 queued\r\n");
    });
}

#[test]
fn client_eof_after_the_final_dot_still_gets_the_servers_reply() {
    both(modern, |t| {
        t.hello(&[]);
        to_data(t);
        t.c("Subject: x\r\n\r\nbody\r\n.\r\n")
            .server_got("Subject: x\r\n\r\nbody\r\n.\r\n");
        assert_eq!(t.session.phase(), Phase::Data);
        t.client_eof();
        assert_eq!(t.close, None, "closed before the message's reply");
        t.s("250 2.0.0 Ok: queued as 1234\r\n")
            .client_got("250 2.0.0 Ok: queued as 1234\r\n");
        assert_eq!(t.close, Some(Close::Fin));
        assert_eq!(t.stats.drop.load(std::sync::atomic::Ordering::Relaxed), 0);
    });
}

#[test]
fn client_eof_with_pipelined_messages_waits_for_every_reply() {
    both(modern, |t| {
        t.hello(&["PIPELINING", "CHUNKING"]);
        t.c("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 3 LAST\r\nabc");
        t.take_server();
        t.client_eof();
        assert_eq!(t.close, None);
        t.s("250 ok\r\n250 ok\r\n");
        assert_eq!(t.close, None);
        t.s("250 2.0.0 queued\r\n");
        assert_eq!(t.close, Some(Close::Fin));
    });
}

#[test]
fn client_eof_between_commands_closes_at_once() {
    both(modern, |t| {
        t.hello(&[]);
        assert_eq!(t.session.phase(), Phase::Idle);
        t.client_eof();
        assert_eq!(t.close, Some(Close::Fin));
        assert_eq!(t.session.phase(), Phase::Closing);
    });
}

#[test]
fn phases_follow_the_session() {
    both(modern, |t| {
        assert_eq!(t.session.phase(), Phase::Greeting);
        t.hello(&[]);
        assert_eq!(t.session.phase(), Phase::Idle);
        t.pass("MAIL FROM:<a@x>\r\n");
        assert_eq!(t.session.phase(), Phase::Command);
        t.reply("250 ok\r\n");
        t.pass("RCPT TO:<b@y>\r\n").reply("250 ok\r\n");
        t.pass("DATA\r\n").reply("354 go\r\n");
        assert_eq!(t.session.phase(), Phase::Data);
    });
}
