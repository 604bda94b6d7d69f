//! The inspector as a service, what needs no privileges: journald's
//! priority prefixes and the exit codes a supervisor reads.

use std::{
    io::Read,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::PathBuf,
    process::{Command, Stdio},
};

fn inspector() -> Command {
    Command::new(env!("CARGO_BIN_EXE_inspector"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("inspector-svc-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `cmd` with stderr on a pipe that `JOURNAL_STREAM` names, as
/// systemd does with a stream to journald; returns the exit code and what
/// it wrote there.
fn as_if_journald(cmd: &mut Command) -> (i32, String) {
    let (mut reader, writer) = std::io::pipe().unwrap();
    let meta = std::fs::metadata(format!("/proc/self/fd/{}", writer.as_raw_fd())).unwrap();
    let mut child = cmd
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stdout(Stdio::null())
        .stderr(Stdio::from(writer))
        .spawn()
        .unwrap();
    // Close the command's copy of the write end: EOF when the child exits.
    cmd.stderr(Stdio::null());
    let mut text = String::new();
    reader.read_to_string(&mut text).unwrap();
    (child.wait().unwrap().code().unwrap(), text)
}

#[test]
fn under_journald_lines_carry_their_priority() {
    let dir = scratch("journal");
    let old = dir.join("old.toml");
    std::fs::write(&old, "[engine]\nfail = \"open\"\n").unwrap();
    let (code, text) = as_if_journald(inspector().args(["policy", "check"]).arg(&old));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("<4>") && l.contains("engine: deprecated")),
        "a warning is <4>: {text}"
    );
    assert!(!text.contains(" WARN "), "no env_logger header: {text}");

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[proxy]\nfail = \"ajar\"\n").unwrap();
    let (code, text) = as_if_journald(inspector().args(["policy", "check"]).arg(&bad));
    assert_eq!(code, 78, "a bad policy exits EX_CONFIG: {text}");
    assert!(
        text.starts_with(&format!("<3>inspector: {}:2:8: proxy.fail:", bad.display())),
        "the error is <3> with file:line:column: field: {text}"
    );

    // Not under journald (stderr is not the stream named): no prefixes.
    let out = inspector()
        .args(["policy", "check"])
        .arg(&bad)
        .env("JOURNAL_STREAM", "1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("inspector: "));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_policy_is_a_configuration_error() {
    let out = inspector()
        .args(["policy", "check", "/nonexistent/inspector/policy.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read policy"));
}
