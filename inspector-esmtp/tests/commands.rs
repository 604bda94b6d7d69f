//! Client commands: which verbs pass, how each mode refuses the others
//! (reference section 5: "EHLO answered 500 or a fake OK", private verbs),
//! the `cmd verb` and `cmd line length` criteria with their actions, and
//! lines too long to buffer.
//!
//! Transcripts: each script runs whole-write and byte by byte
//! (`common::both`), checking the exact bytes each side gets.

mod common;

use common::{POLICY_CLOSE, UNRECOGNIZED, both, compat, exchange, modern, policy, rule, second};
use inspector_esmtp::Close;
use inspector_esmtp::policy::EsmtpPolicy;

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
        // The firewall closes without a word.
        t.c(&long).server_got("").client_got("");
        assert_eq!(t.close, Some(Close::Fin));
    });
}

#[test]
fn over_long_lines_are_refused_and_end_the_session() {
    // Past 2048 bytes (with the line end) Sendmail and Exim split a line
    // and run its tail: refused, and nothing after it is read as commands.
    both(
        || policy(""),
        |t| {
            t.hello(&[]);
            let line = format!("NOOP {}\r\nNOOP\r\n", "x".repeat(20_000));
            t.c(&line)
                .server_got("")
                .client_got("500 5.5.2 Line too long\r\n");
            assert!(t.session.heap_bytes() < 64 * 1024);
            assert_eq!(t.close, Some(Close::Fin));
        },
    );
    // `cmd line length` rules act first, on the length so far.
    both(
        || rule("modern", "cmd line length gt 1999", "drop-connection"),
        |t| {
            t.hello(&[]);
            t.c(format!("{}\r\n", "x".repeat(3_000)))
                .client_got(POLICY_CLOSE);
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

/// Each criterion the rules evaluate on commands, plain and negated, at
/// its limit and one past it: the rule matches exactly the commands its
/// criterion says (the session skips the rules for a command none can
/// match, so each kind of rule must still be reached by every command it
/// matches).
#[test]
fn each_command_criterion_matches_exactly_its_commands() {
    let ok = "250 ok\r\n";
    // (criterion, commands in order, whether the criterion holds for each;
    // `None` where it does not apply, so that negated it does not match
    // either)
    type Case = (&'static str, &'static [(&'static str, Option<bool>)]);
    let cases: [Case; 5] = [
        (
            "cmd line length gt 15",
            &[
                ("MAIL FROM:<a@x>\r\n", Some(false)),
                ("RCPT TO:<bb@xy>\r\n", Some(false)),
                ("RCPT TO:<bbb@xy>\r\n", Some(true)),
                ("NOOP\r\n", Some(false)),
            ],
        ),
        (
            "cmd RCPT count gt 2",
            &[
                ("MAIL FROM:<a@x>\r\n", None),
                ("RCPT TO:<b@y>\r\n", Some(false)),
                ("RCPT TO:<b@y>\r\n", Some(false)),
                ("NOOP\r\n", None),
                ("RCPT TO:<b@y>\r\n", Some(true)),
                ("MAIL FROM:<a@x>\r\n", None),
                ("RCPT TO:<b@y>\r\n", Some(false)),
            ],
        ),
        (
            "sender-address length gt 3",
            &[
                ("MAIL FROM:<a@x>\r\n", Some(false)),
                ("MAIL FROM:<ab@x>\r\n", Some(true)),
                ("MAIL FROM:<>\r\n", Some(false)),
                ("RCPT TO:<long@recipient>\r\n", None),
                ("NOOP\r\n", None),
            ],
        ),
        (
            "sender-address regex ^a",
            &[
                ("MAIL FROM:<a@x>\r\n", Some(true)),
                ("MAIL FROM:<b@x>\r\n", Some(false)),
                ("RCPT TO:<a@y>\r\n", None),
            ],
        ),
        (
            "cmd verb NOOP VRFY",
            &[
                ("NOOP\r\n", Some(true)),
                ("RSET\r\n", Some(false)),
                ("VRFY u\r\n", Some(true)),
                ("MAIL FROM:<a@x>\r\n", Some(false)),
            ],
        ),
    ];
    for (criterion, commands) in cases {
        for negated in [false, true] {
            let text = if negated {
                format!("not {criterion}")
            } else {
                criterion.to_string()
            };
            both(
                || rule("modern", &text, "log"),
                |t| {
                    t.hello(&[]);
                    for &(cmd, hit) in commands {
                        let before = t.stats.rule_hits(0);
                        t.pass(cmd).reply(ok);
                        let hits = t.stats.rule_hits(0) - before;
                        let want = hit.is_some_and(|h| h != negated);
                        assert_eq!(hits, u64::from(want), "{text}: {cmd:?}");
                    }
                },
            );
        }
    }
}
