//! What a session counts and what it holds: the `show service-policy`
//! counters, and the memory bound whatever the input.
//! Transcripts played whole-write (`common::Transcript`).

mod common;

use common::{Transcript, modern, to_data};
use inspector_esmtp::Close;

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
         \x20 mime-anomaly action drop-connection log, count 0\n\
         \x20 match cmd line length gt 512        drop-connection log, packet 1\n\
         \x20 match cmd RCPT count gt 100         drop-connection log, packet 0\n\
         \x20 match body line length gt 998       log, packet 0\n\
         \x20 match header line length gt 998     drop-connection log, packet 0\n\
         \x20 match sender-address length gt 320  drop-connection log, packet 0\n\
         \x20 match MIME filename length gt 255   drop-connection log, packet 0\n\
         \x20 match ehlo-reply-parameter others   mask, packet 1\n"
    );
}

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
