//! Message transfer: DATA and BDAT content is relayed byte for byte and
//! its end found exactly, never guessed (reference section 5: duplicates,
//! XXXX inside messages; SMTP smuggling), in the client's order however
//! the commands are pipelined.
//!
//! Transcripts: each script runs whole-write and byte by byte
//! (`common::both`), checking the exact bytes each side gets.

mod common;

use common::{UNRECOGNIZED, both, compat, modern, rule, second, to_data};
use inspector_esmtp::Close;
use inspector_esmtp::policy::EsmtpPolicy;

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
            // Permanent: a 4xx would have the sender retry it for days.
            t.client_got("550 5.5.2 Message refused: bare CR or LF next to a final dot\r\n");
        });
    }
    // A bare LF elsewhere is content.
    both(modern, |t| {
        t.hello(&[]);
        to_data(t);
        t.pass("a\nb\n\r\n.\r\n").reply("250 queued\r\n");
    });
}
