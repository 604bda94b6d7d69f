//! The policy's criteria and modes as a real client sees them through the
//! inspector: each criterion of the default policy fires and is audited and
//! counted, compat and modern mode answer as they should, and a `reset`
//! action resets. Needs root; fails, never skips, without it.

mod support;

use std::path::Path;

use inspector_lab::SERVER_V4;
use support::proxy::*;

#[test]
fn a_policy_criterion_fires_through_the_real_path() {
    let f = Fixture::new("criterion", "");
    let mut m = b"Subject: long header\r\nX-Long: ".to_vec();
    m.extend_from_slice(&[b'h'; 1200]);
    m.extend_from_slice(b"\r\n\r\nbody\r\n");
    let path = f.write("long.eml", &m);
    let out = f.swaks(&SERVER_V4.to_string(), &["--data", path.to_str().unwrap()]);
    let t = text(&out);
    assert!(
        t.contains("421 4.7.0 Connection closed by security policy"),
        "{t}"
    );
    // smtp-sink may leave a dump of the aborted transaction; the message
    // itself (its body) never gets there.
    assert!(
        f.stored_raw()
            .iter()
            .all(|dump| find(dump, b"\nbody\n").is_none()),
        "the message reached the server"
    );
    // The audit writer is its own thread: its record may land just after
    // the client has seen the close.
    wait_for(|| f.log().contains("108004"), "the audit record 108004");
    let log = f.log();
    assert!(log.contains("header line length gt 998"), "{log}");
}

#[test]
fn each_default_criterion_fires_through_the_real_path() {
    let mut f = Fixture::new("criteria", "");
    let server = SERVER_V4.to_string();
    let closed_by_policy = |replies: &[String], what: &str| {
        let last = replies.last().unwrap();
        assert!(
            last.starts_with("421 4.7.0") || last == "CLOSED",
            "{what}: {replies:?}"
        );
        assert!(
            replies
                .iter()
                .any(|r| r.starts_with("421 4.7.0 Connection closed by security policy")),
            "{what}: {replies:?}"
        );
    };

    // ehlo-reply-parameter others (mask): smtp-sink offers XCLIENT and
    // XFORWARD; the client never sees them.
    let r = f.dialog(&server, &hello());
    assert!(r[0].starts_with("220 mail ESMTP"), "{r:?}");
    assert!(
        r[1].contains("PIPELINING") && !r[1].contains("XCLIENT"),
        "{r:?}"
    );

    // cmd line length gt 512.
    let mut steps = hello();
    steps.push(format!("NOOP {}\r\n", "n".repeat(600)));
    closed_by_policy(&f.dialog(&server, &steps), "cmd line length");

    // cmd RCPT count gt 100.
    let mut steps = hello();
    steps.push("MAIL FROM:<a@client.test>\r\n".into());
    for i in 0..101 {
        steps.push(format!("RCPT TO:<r{i}@server.test>\r\n"));
    }
    closed_by_policy(&f.dialog(&server, &steps), "RCPT count");

    // sender-address length gt 320.
    let mut steps = hello();
    steps.push(format!("MAIL FROM:<{}@client.test>\r\n", "s".repeat(330)));
    closed_by_policy(&f.dialog(&server, &steps), "sender-address length");

    // header line length gt 998.
    let mut steps = hello();
    steps.extend(transaction(
        "a@client.test",
        &format!("Subject: x\r\nX-Long: {}\r\n\r\nbody", "h".repeat(1200)),
    ));
    closed_by_policy(&f.dialog(&server, &steps), "header line length");

    // MIME filename length gt 255.
    let mut steps = hello();
    steps.extend(transaction(
        "a@client.test",
        &format!(
            "Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"{}.bin\"\r\n\r\ndata\r\n--b--",
            "f".repeat(300)
        ),
    ));
    closed_by_policy(&f.dialog(&server, &steps), "MIME filename length");

    // body line length gt 998: log only, the message is delivered.
    let mut steps = hello();
    steps.extend(transaction(
        "a@client.test",
        &format!("Subject: long body line\r\n\r\n{}", "b".repeat(1500)),
    ));
    steps.push("QUIT\r\n".into());
    let r = f.dialog(&server, &steps);
    assert!(r[5].starts_with("250"), "{r:?}");
    assert_eq!(f.stored().len(), 1, "only the log-only message is stored");

    // Audit records (JSON lines on stdout), and the counters the daemon
    // prints when it stops. The last record may land just after the reply.
    wait_for(
        || f.log().contains("body line length gt 998"),
        "the last audit record",
    );
    let log = f.log();
    for needle in [
        "\"id\":108004",
        "matched Class 1: cmd line length gt 512",
        "cmd RCPT count gt 100",
        "sender-address length gt 320",
        "header line length gt 998",
        "MIME filename length gt 255",
        "\"id\":108005",
        "body line length gt 998",
    ] {
        assert!(log.contains(needle), "no `{needle}` in the log: {log}");
    }
    let status = f.daemon.take().unwrap().terminate().unwrap();
    assert!(status.success());
    let log = f.log();
    for rule in [
        "cmd line length gt 512",
        "cmd RCPT count gt 100",
        "body line length gt 998",
        "header line length gt 998",
        "sender-address length gt 320",
        "MIME filename length gt 255",
        "ehlo-reply-parameter others",
    ] {
        let line = log
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("match {rule}")))
            .unwrap_or_else(|| panic!("no counter for {rule}: {log}"));
        assert!(!line.ends_with("packet 0"), "{line}");
    }
    assert!(log.contains("drop 5,"), "{log}");
}

#[test]
fn compat_and_modern_as_a_real_client_sees_them() {
    let steps = vec!["EHLO client.test\r\n".to_string(), "FOOBAR x\r\n".into()];
    let server = SERVER_V4.to_string();

    let modern = Fixture::new("modern", "");
    let r = modern.dialog(&server, &steps);
    assert_eq!(r[0], "220 mail ESMTP", "{r:?}");
    assert!(
        r[1].contains("PIPELINING") && !r[1].contains("XCLIENT"),
        "{r:?}"
    );
    assert_eq!(r[2], "500 5.5.1 Command unrecognized", "{r:?}");
    drop(modern);

    let policy = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/compat.toml"),
    )
    .unwrap();
    let compat = Fixture::new("compat", &policy);
    let r = compat.dialog(&server, &steps);
    // Every character but 2, 0, CR, LF masked.
    assert!(r[0].starts_with("220*"), "{r:?}");
    assert!(r[0].chars().all(|c| matches!(c, '2' | '0' | '*')), "{r:?}");
    // Unknown keywords become Xs, ending in the Nth letter.
    assert!(!r[1].contains("XCLIENT"), "{r:?}");
    assert!(r[1].contains("XXXXXXXA\r\n250-"), "{r:?}");
    // The command reaches the server as Xs; the server answers it.
    assert!(r[2].starts_with("5"), "{r:?}");
    assert!(!r[2].contains("5.5.1 Command unrecognized"), "{r:?}");
}

#[test]
fn a_reset_action_resets_the_client() {
    let f = Fixture::new(
        "reset",
        "[esmtp]\n[[esmtp.match]]\nmatch = \"cmd verb VRFY\"\naction = \"reset log\"\n",
    );
    let out = client_py(&f, "reset.py");
    assert!(out.trim_end().ends_with("RST"), "{out}");
    wait_for(
        || f.log().contains("Reset connection for"),
        "the reset's audit record",
    );
}
