//! How a session ends: a close, by the policy or by the client, never
//! costs a message its reply (no duplicate on retry), and the phases the
//! driver sees on the way.
//!
//! Transcripts: each script runs whole-write and byte by byte
//! (`common::both`), checking the exact bytes each side gets.

mod common;

use common::{POLICY_CLOSE, both, modern, rule, to_data};
use inspector_esmtp::{Close, Phase};

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

#[test]
fn quit_is_answered_only_once_the_server_accepts_it() {
    both(modern, |t| {
        t.hello(&[]);
        assert!(!t.session.quit_answered());
        t.c("QUIT\r\n").server_got("QUIT\r\n");
        assert!(!t.session.quit_answered(), "no reply yet");
        // A server that refuses QUIT keeps the session going.
        t.s("500 5.5.1 no\r\n").client_got("500 5.5.1 no\r\n");
        assert!(!t.session.quit_answered());
        t.c("QUIT\r\n").server_got("QUIT\r\n");
        t.s("221 2.0.0 Bye\r\n").client_got("221 2.0.0 Bye\r\n");
        assert!(t.session.quit_answered());
    });
}
