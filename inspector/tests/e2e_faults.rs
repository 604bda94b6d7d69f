//! When things go wrong or stop: the server killed in the middle of a
//! message, the daemon killed (fail open, fail closed with a RST), a clean stop and
//! its drain, the proxy's timeouts and session limit. Needs root; fails,
//! never skips, without it.

mod support;

use std::time::Duration;

use inspector_lab::{OUTSIDE, SERVER_V4};
use support::proxy::*;

#[test]
fn server_killed_mid_data_never_gives_the_client_a_250() {
    let mut f = Fixture::new("killserver", "");
    let (client, go) = client_in_data(&f);
    // The server goes away in the middle of the message.
    f.sink.take().unwrap().terminate().unwrap();
    std::fs::write(&go, b"").unwrap();
    let out = client.wait_with_output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        !t.contains("250"),
        "the client was told the message was accepted: {t}"
    );
}

#[test]
fn fail_open_forwards_smtp_when_the_proxy_is_gone() {
    let mut f = Fixture::new("failopen", "[proxy]\nfail = \"open\"\n");
    let server = SERVER_V4.to_string();
    assert!(f.swaks(&server, &[]).status.success());
    kill_daemon(&mut f);
    let out = f.swaks(&server, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("<-  220 mail ESMTP"), "{}", text(&out));
    assert_eq!(f.stored().len(), 2);
}

#[test]
fn fail_closed_refuses_smtp_when_the_proxy_is_gone() {
    let mut f = Fixture::new("failclosed", "[proxy]\nfail = \"closed\"\n");
    let server = SERVER_V4.to_string();
    assert!(f.swaks(&server, &[]).status.success());
    kill_daemon(&mut f);
    let out = f.swaks(&server, &["--timeout", "3"]);
    assert!(!out.status.success(), "{}", text(&out));
    // The SYN is answered with a RST: the client's MTA sees the refusal at
    // once, keeps the message and retries.
    assert!(text(&out).contains("Connection refused"), "{}", text(&out));
    assert_eq!(f.stored().len(), 1);
    // A restart replaces what the killed daemon left (pinned link, rules)
    // and inspects again.
    f.start_daemon();
    let out = f.swaks(&server, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("<-  220 mail ESMTP"), "{}", text(&out));
    assert_eq!(f.stored().len(), 2);
    let rules = f.ip_rules();
    assert_eq!(rules.matches("lookup 2525").count(), 1, "{rules}");
    // Other traffic to the server is not affected.
    let r = f
        .lab
        .client
        .tcp_connect(
            inspector_lab::CLIENT_V4.into(),
            std::net::SocketAddr::new(SERVER_V4.into(), 26),
            Duration::from_secs(3),
        )
        .unwrap();
    assert_eq!(
        r.expect_err("nothing listens on 26").kind(),
        std::io::ErrorKind::ConnectionRefused
    );
}

#[test]
fn a_clean_stop_removes_the_steering() {
    let mut f = Fixture::new("stop", "[proxy]\nfail = \"closed\"\n");
    let rules = |f: &Fixture| f.ip_rules();
    assert!(rules(&f).contains("lookup 2525"), "{}", rules(&f));
    let status = f.daemon.take().unwrap().terminate().unwrap();
    assert!(status.success(), "{status}: {}", f.log());
    assert!(!rules(&f).contains("lookup 2525"), "{}", rules(&f));
    assert!(!f.pins.path().join(format!("steer-{OUTSIDE}")).exists());
    // SMTP flows straight to the server now.
    let out = f.swaks(&SERVER_V4.to_string(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("<-  220 mail ESMTP"));
}

#[test]
fn a_stop_lets_a_message_in_data_finish() {
    let mut f = Fixture::new("drain", "");
    let (client, go) = client_in_data(&f);
    let mut daemon = f.daemon.take().unwrap();
    // SAFETY: kill on the pid of our own child, not yet reaped.
    unsafe { libc::kill(daemon.child().id() as i32, libc::SIGTERM) };
    wait_for(|| f.log().contains("SIGTERM received"), "the stop");
    // While the proxy drains, new SMTP goes straight to the server
    // (fail open: its listener is closed).
    wait_for(|| f.log().contains("session(s) open"), "the drain");
    let out = f.swaks(&SERVER_V4.to_string(), &["--timeout", "5"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("<-  220 mail ESMTP"));
    std::fs::write(&go, b"").unwrap();
    let out = client.wait_with_output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("250 "),
        "the message in DATA did not finish: {t}"
    );
    assert!(t.contains("421 4.3.2"), "no shutdown notice after it: {t}");
    let status = daemon.child().wait().unwrap();
    assert!(status.success(), "{status}: {}", f.log());
    assert_eq!(f.stored().len(), 2);
}

#[test]
fn timeouts_and_max_sessions_apply() {
    let f = Fixture::new("limits", "[proxy]\nmax-sessions = 1\ncommand-timeout = 2\n");
    let out = client_py(&f, "over_max_sessions.py");
    assert!(out.contains("first: b'220 mail ESMTP"), "{out}");
    assert!(
        out.contains("second: b'421 4.3.2 Too many sessions"),
        "{out}"
    );
    assert!(out.contains("idle: b'421 4.4.2 Timeout"), "{out}");
    let secs: f64 = out
        .rsplit("after ")
        .next()
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!((1.5..10.0).contains(&secs), "timed out after {secs} s");
}
