//! The server's greeting and its EHLO reply as the client sees them: the
//! masked banner (reference section 5: "banner of asterisks"), the EHLO
//! keywords each mode shows or masks ("no ESMTP", 8BITMIME/BINARYMIME
//! masked, STARTTLS), and the `ehlo-reply-parameter` criterion.
//!
//! Transcripts: each script runs whole-write and byte by byte
//! (`common::both`), checking the exact bytes each side gets.

mod common;

use common::{POLICY_CLOSE, both, compat, modern, policy, rule};
use inspector_esmtp::Close;

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
fn an_ehlo_reply_ending_in_another_code_keeps_its_line_order() {
    both(modern, |t| {
        t.s("220 mx\r\n").client_got("220 mail ESMTP\r\n");
        t.pass("EHLO c\r\n");
        t.reply("250-mx\r\n250-PIPELINING\r\n421 4.3.2 Shutting down\r\n");
    });
}
