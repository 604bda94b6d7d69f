//! `[esmtp] ports` through the real path: a session to a listed port other
//! than 25 (587, submission) is steered to the proxy, inspected (the
//! policy's criteria fire, audited with the port) and relayed to the port
//! the client chose; a port not listed goes straight to the server; a list
//! without 25 leaves port 25 uninspected. Needs root; fails, never skips,
//! without it.

mod support;

use inspector_lab::SERVER_V4;
use support::proxy::*;

/// The client's view of one swaks session to `port`: its transcript, and
/// whether the inspector masked the server's XCLIENT (smtp-sink offers it;
/// `ehlo-reply-parameter others` masks it).
fn session(f: &Fixture, port: u16, extra: &[&str]) -> (String, bool) {
    let port = port.to_string();
    let mut args = vec!["--port", port.as_str()];
    args.extend_from_slice(extra);
    let t = text(&f.swaks(&SERVER_V4.to_string(), &args));
    let masked = !t.contains("XCLIENT");
    (t, masked)
}

/// The default policy (its criteria), inspecting `ports`, STARTTLS allowed
/// (as submission clients need it).
fn policy(ports: &str) -> String {
    let p = inspector_esmtp::policy::DEFAULT_POLICY_TOML.replace(
        "allow-tls = false",
        &format!("allow-tls = true\nports = {ports}"),
    );
    assert!(p.contains("ports ="));
    p
}

fn long_header(f: &Fixture) -> String {
    let mut m = b"Subject: long header\r\nX-Long: ".to_vec();
    m.extend_from_slice(&[b'h'; 1200]);
    m.extend_from_slice(b"\r\n\r\nbody\r\n");
    f.write("long.eml", &m).display().to_string()
}

#[test]
fn a_listed_port_is_inspected_and_relayed_to_that_port() {
    // No server on port 25: a session to 587 can only be delivered to 587.
    let mut f = Fixture::bare("ports", &policy("[25, 587]"));
    f.sink = Some(f.start_sink("0.0.0.0:587"));
    f.sink_v6 = Some(f.start_sink("0.0.0.0:2525"));
    f.start_daemon();
    let status = support::cli_ok(f.pins.path(), &["status"]);
    assert!(status.contains("inspected ports: 25, 587\n"), "{status}");

    let (t, masked) = session(&f, 587, &["--body", "to the submission port"]);
    assert!(t.contains("250 2.0.0 Ok"), "{t}");
    assert!(masked, "the session to 587 was not inspected: {t}");
    assert_eq!(f.sessions(), 1, "{}", f.log());
    assert_eq!(f.stored().len(), 1);

    // A criterion fires on 587 as on 25, audited with the port.
    let path = long_header(&f);
    let (t, _) = session(&f, 587, &["--data", &path]);
    assert!(
        t.contains("421 4.7.0 Connection closed by security policy"),
        "{t}"
    );
    wait_for(
        || f.log().contains("\"id\":108004"),
        "the audit record 108004",
    );
    let log = f.log();
    assert!(
        log.contains(&format!("\"server\":\"{SERVER_V4}:587\"")),
        "{log}"
    );
    assert_eq!(f.stored().len(), 1, "the refused message was stored");

    // Port 2525 is not listed: straight to the server, uninspected.
    let (t, masked) = session(&f, 2525, &["--data", &path]);
    assert!(t.contains("250 2.0.0 Ok"), "{t}");
    assert!(!masked, "the session to 2525 was inspected: {t}");
    assert_eq!(f.sessions(), 2, "{}", f.log());
    assert_eq!(f.stored().len(), 2);
}

#[test]
fn without_25_in_the_list_port_25_is_not_inspected() {
    let mut f = Fixture::bare("ports587", &policy("[587]"));
    f.sink = Some(f.start_sink("0.0.0.0:25"));
    f.sink_v6 = Some(f.start_sink("0.0.0.0:587"));
    f.start_daemon();
    let path = long_header(&f);
    let (t, masked) = session(&f, 25, &["--data", &path]);
    assert!(t.contains("250 2.0.0 Ok"), "{t}");
    assert!(!masked, "the session to 25 was inspected: {t}");
    assert_eq!(f.sessions(), 0, "{}", f.log());
    let (t, masked) = session(&f, 587, &["--data", &path]);
    assert!(t.contains("421 4.7.0"), "{t}");
    assert!(masked, "{t}");
    assert_eq!(f.sessions(), 1, "{}", f.log());
    assert_eq!(f.stored().len(), 1, "only the message to port 25 is stored");
}
