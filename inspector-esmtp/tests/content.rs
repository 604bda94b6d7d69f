//! The header, body and MIME criteria, evaluated on message content
//! before the bytes that break them reach the server.
//!
//! Transcripts: each script runs whole-write and byte by byte
//! (`common::both`), checking the exact bytes each side gets.

mod common;

use common::{both, compat, modern, rule, to_data};
use inspector_esmtp::Close;
use inspector_esmtp::policy::EsmtpPolicy;

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

/// Body lines no rule can act on are passed in bulk: the first line over
/// the limit after a run of them is still found (998 bytes pass, 999 do
/// not), inside a multipart too, and a negated rule still sees short ones.
#[test]
fn body_line_length_after_runs_of_short_lines() {
    let short = format!("{}\r\n", "s".repeat(70)).repeat(40);
    let message = |long: usize| {
        format!(
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n{short}--b\r\n\r\n\
             {short}-x\r\n{short}{}\r\n{short}--b--\r\n{short}.\r\n",
            "b".repeat(long)
        )
    };
    both(modern, |t| {
        t.hello(&[]);
        to_data(t);
        t.pass(&message(998)).reply("250 ok\r\n");
        assert!(t.audit_texts().is_empty());
        to_data(t);
        t.pass(&message(999)).reply("250 ok\r\n");
        let texts = t.audit_texts();
        assert_eq!(texts.len(), 1);
        assert!(texts[0].ends_with("matched Class 3: body line length gt 998"));
    });
    both(
        || rule("modern", "not body line length gt 998", "log"),
        |t| {
            t.hello(&[]);
            to_data(t);
            t.pass(&format!("Subject: s\r\n\r\n{short}.\r\n"))
                .reply("250 ok\r\n");
            let texts = t.audit_texts();
            assert_eq!(texts.len(), 1);
            assert!(texts[0].ends_with("matched Class 1: not body line length gt 998"));
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
