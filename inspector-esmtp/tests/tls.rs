//! STARTTLS: refused and hidden unless `allow-tls`, then opaque; plaintext
//! injected ahead of the handshake never reaches the server.
//!
//! Transcripts: each script runs whole-write and byte by byte
//! (`common::both`), checking the exact bytes each side gets.

mod common;

use common::{UNRECOGNIZED, both, compat, modern, policy};

#[test]
fn allow_tls_log_passes_starttls_then_relays_opaquely_108007() {
    both(
        || policy("allow-tls = \"log\""),
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
fn allow_tls_true_counts_without_a_record_log_adds_108007() {
    for (setting, records, row) in [
        ("true", 0, "  allow-tls, count 1\n"),
        ("\"log\"", 1, "  allow-tls action log, count 1\n"),
    ] {
        let mut t = common::Transcript::new(policy(&format!("allow-tls = {setting}")), false);
        t.hello(&["STARTTLS"]);
        t.pass("STARTTLS\r\n").reply("220 2.0.0 Ready\r\n");
        assert_eq!(t.audit_ids().len(), records, "allow-tls = {setting}");
        assert!(
            t.stats.render(&t.policy).contains(row),
            "allow-tls = {setting}"
        );
    }
}

#[test]
fn without_allow_tls_starttls_is_hidden_and_refused() {
    both(modern, |t| {
        t.s("220 mx\r\n").client_got("220 mail ESMTP\r\n");
        t.pass("EHLO c\r\n");
        t.s("250-mx\r\n250 STARTTLS\r\n").client_got("250 mx\r\n");
        t.c("STARTTLS\r\n").server_got("").client_got(UNRECOGNIZED);
    });
    // The firewall: `250 XXXXXXXA`, then the server says 500.
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
