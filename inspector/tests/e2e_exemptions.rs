//! Exempt traffic never reaches the proxy, from the policy or exempted
//! live. Needs root; fails, never skips, without it.

mod support;

use inspector_lab::{MAIL_GATEWAY_V4, SERVER_V4};
use support::proxy::*;

#[test]
fn exempt_traffic_never_reaches_the_proxy() {
    let f = Fixture::new("exempt", "[[exempt]]\nnetwork = \"198.18.1.26\"\n");
    let out = f.swaks(&MAIL_GATEWAY_V4.to_string(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    // smtp-sink's own banner: not the engine's.
    assert!(!text(&out).contains("<-  220 mail ESMTP"), "{}", text(&out));
    assert_eq!(f.sessions(), 0, "{}", f.log());

    // Inspected, then exempted live: the next session bypasses the proxy.
    let server = SERVER_V4.to_string();
    assert!(f.swaks(&server, &[]).status.success());
    assert_eq!(f.sessions(), 1);
    support::cli_ok(f.pins.path(), &["exempt", "add", &server]);
    let out = f.swaks(&server, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("<-  220 mail ESMTP"), "{}", text(&out));
    assert_eq!(f.sessions(), 1, "{}", f.log());
    assert_eq!(f.stored().len(), 3);
}
