//! The envelope: RCPT counts, sender criteria, and what addresses may
//! hold (program pipes, special characters, relaying).
//!
//! Transcripts: each script runs whole-write and byte by byte
//! (`common::both`), checking the exact bytes each side gets.

mod common;

use common::{POLICY_CLOSE, both, compat, modern, policy, rule};
use inspector_esmtp::Close;
use inspector_esmtp::policy::EsmtpPolicy;

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
