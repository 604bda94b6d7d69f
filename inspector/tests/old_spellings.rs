//! The old spellings of the proxy's settings still work, each with a
//! deprecation warning: the `[engine]` table (now `[proxy]`) and
//! `inspector run --no-engine` (now `--no-proxy`). The daemon tests need
//! root; they fail, never skip, without it.

mod support;

use std::{path::Path, process::Command, time::Duration};

use inspector_lab::{OUTSIDE, SERVER_V4};
use support::{inspector_bin, proxy::*, wait_until, xdp_attached};

fn policy_check(file: &Path) -> (bool, String, String) {
    let out = Command::new(inspector_bin())
        .args(["policy", "check"])
        .arg(file)
        .output()
        .expect("running inspector");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn policy_check_accepts_the_engine_table_and_warns() {
    let policy = support::PolicyFile::new("oldtable", "[engine]\nfail = \"closed\"\n");
    let (ok, stdout, stderr) = policy_check(policy.path());
    assert!(ok, "{stderr}");
    assert!(stdout.contains(": ok\n"), "{stdout}");
    let warning = format!(
        "{}:1:1: engine: deprecated: the table is now `[proxy]`",
        policy.path().display()
    );
    assert_eq!(stderr.matches(&warning).count(), 1, "{stderr}");

    let policy = support::PolicyFile::new("newtable", "[proxy]\nfail = \"closed\"\n");
    let (ok, _, stderr) = policy_check(policy.path());
    assert!(ok && !stderr.contains("deprecated"), "{stderr}");
}

#[test]
fn proxy_and_engine_tables_together_are_an_error_naming_the_line() {
    let policy = support::PolicyFile::new(
        "bothtables",
        "[proxy]\nfail = \"open\"\n\n[engine]\nfail = \"closed\"\n",
    );
    let (ok, _, stderr) = policy_check(policy.path());
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "{}:4:1: engine: `[engine]` is the old name of `[proxy]`, which is on line 1: keep one",
            policy.path().display()
        )),
        "{stderr}"
    );
}

/// The daemon reads `[engine]` as `[proxy]` (its log shows the settings
/// the proxy got) and inspects, warning once.
#[test]
fn the_daemon_takes_the_engine_table_and_warns() {
    let f = Fixture::new(
        "oldtable",
        "[engine]\nfail = \"closed\"\nmax-sessions = 7\n",
    );
    let log = f.log();
    assert_eq!(
        log.matches("engine: deprecated: the table is now `[proxy]`")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains(" fail Closed,"), "{log}");
    assert!(log.contains("max-sessions 7,"), "{log}");
    let out = f.swaks(&SERVER_V4.to_string(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(f.sessions(), 1, "{}", f.log());
}

/// `--no-engine` still means `--no-proxy`: the classifier only, no proxy
/// and no steering; the daemon warns once.
#[test]
fn no_engine_still_runs_without_the_proxy_and_warns() {
    let f = Fixture::bare("noengine", "");
    let log_path = f.dir.join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = f.lab.gateway.command(inspector_bin());
    cmd.arg("--pin-dir")
        .arg(f.pins.path())
        .args(["run", "--no-engine", "--iface", OUTSIDE])
        .args(["--metrics", "off", "--audit", "off"])
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let daemon = f.lab.gateway.spawn(&mut cmd).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || xdp_attached(&f.lab, OUTSIDE)),
        "the daemon did not attach: {}",
        f.log()
    );
    // Time for a proxy to start, were there one.
    std::thread::sleep(Duration::from_secs(1));
    let log = f.log();
    assert_eq!(
        log.matches("`--no-engine` is deprecated: it is now `--no-proxy`")
            .count(),
        1,
        "{log}"
    );
    assert!(
        !log.contains(inspector_lab::inspector::PROXY_LISTENING),
        "{log}"
    );
    assert!(
        !inspector::kernel::steer::link_pin(f.pins.path(), OUTSIDE).exists(),
        "steering attached"
    );
    assert!(daemon.terminate().unwrap().success(), "{}", f.log());
}
