//! A firewall configuration imported with `inspector policy import-asa`
//! and run on the lab: the session behaves as the configuration says (the
//! mail gateway exempt, the mail server inspected by the configuration's
//! own map, its published limits in place). Needs root; fails, never
//! skips, without it.

mod support;

use std::path::Path;

use inspector_lab::{INSIDE, MAIL_GATEWAY_V4, OUTSIDE, SERVER_V4};
use support::proxy::*;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/asa")
        .join(name)
}

#[test]
fn an_imported_configuration_behaves_as_it_says() {
    // The import, as an operator runs it: warnings on stderr, the policy
    // in a file that `policy check` accepts.
    let dir = std::env::temp_dir().join(format!("inspector-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let imported = dir.join("policy.toml");
    let out = std::process::Command::new(support::inspector_bin())
        .args(["policy", "import-asa", "--strict", "--output"])
        .arg(&imported)
        .arg(fixture("lab.cfg"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(": 0 warning(s)"),
        "{}",
        text(&out)
    );
    let check = std::process::Command::new(support::inspector_bin())
        .args(["policy", "check"])
        .arg(&imported)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(check.status.success(), "{}", text(&check));
    for line in [
        "exemptions: 1\n  198.18.1.26/32\n",
        "  198.18.1.25: max-conns 50, max-embryonic 100,",
        "timeouts: embryonic 30s, idle 1800s, half-closed 300s",
        "Inspect: esmtp lab_map,",
        "  match cmd verb VRFY",
        "  match cmd RCPT count gt 2",
    ] {
        assert!(shown.contains(line), "{line} not in {shown}");
    }
    let policy = std::fs::read_to_string(&imported).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let mut f = Fixture::bare("importasa", &policy);
    f.sink = Some(f.start_sink("0.0.0.0:25"));
    // Both sides: the published limits use TCP intercept.
    f.start_daemon_on(&[OUTSIDE, INSIDE]);

    // The mail server is inspected with the configuration's map: its
    // banner masked, unknown EHLO keywords masked, VRFY closes the session.
    let server = SERVER_V4.to_string();
    let mut steps = hello();
    steps.push("VRFY postmaster\r\n".into());
    let r = f.dialog(&server, &steps);
    assert_eq!(r[0], "220 mail ESMTP", "{r:?}");
    assert!(
        r[1].contains("PIPELINING") && !r[1].contains("XCLIENT"),
        "{r:?}"
    );
    assert!(
        r[2].starts_with("421 4.7.0 Connection closed by security policy"),
        "{r:?}"
    );
    // The third recipient is over `cmd RCPT count gt 2`.
    let mut steps = hello();
    steps.push("MAIL FROM:<a@client.test>\r\n".into());
    for i in 0..3 {
        steps.push(format!("RCPT TO:<r{i}@server.test>\r\n"));
    }
    let r = f.dialog(&server, &steps);
    assert!(r[3].starts_with("250") && r[4].starts_with("250"), "{r:?}");
    assert!(r[5].starts_with("421 4.7.0"), "{r:?}");
    wait_for(
        || f.log().matches("108004").count() >= 2,
        "two audit records",
    );
    let log = f.log();
    assert!(log.contains("matched Class 1: cmd verb VRFY"), "{log}");
    assert!(
        log.contains("matched Class 2: cmd RCPT count gt 2"),
        "{log}"
    );
    let inspected = f.sessions();
    assert_eq!(inspected, 2, "{log}");

    // The mail gateway is exempt: the server's own banner and keywords,
    // VRFY answered by the server, no session in the proxy.
    let gateway = MAIL_GATEWAY_V4.to_string();
    let mut steps = hello();
    steps.push("VRFY postmaster\r\n".into());
    let r = f.dialog(&gateway, &steps);
    assert_ne!(r[0], "220 mail ESMTP", "{r:?}");
    assert!(r[1].contains("XCLIENT"), "{r:?}");
    assert!(!r[2].starts_with("421") && r[2] != "CLOSED", "{r:?}");
    assert_eq!(f.sessions(), inspected, "{}", f.log());

    // The published limits protect the mail server.
    let json = support::stats_json(f.pins.path());
    let servers = json["limits"]["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1, "{json}");
    assert_eq!(servers[0]["address"], server);
    assert_eq!(servers[0]["max-conns"], 50);
    assert_eq!(servers[0]["max-embryonic"], 100);
    // The whole delivery works through the imported policy.
    let out = f.swaks(&server, &[]);
    assert!(out.status.success(), "{}", text(&out));
}
