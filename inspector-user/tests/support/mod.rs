//! Shared fixtures of the privileged tests: a private pin directory and the
//! CLI binary. Everything a fixture creates is removed on drop, also when the
//! test fails.
#![allow(dead_code)] // each test binary uses a different part

pub mod packets;
pub mod postfix;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// A bpffs directory of its own per test, so tests run in parallel and never
/// touch a real deployment's maps. Unloaded on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(test: &str) -> Self {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/inspector-test-{}-{test}",
            std::process::id()
        ));
        inspector::bpffs::prepare(&dir).expect("preparing bpffs (these tests need root)");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = inspector::bpffs::remove_pins(&self.0, &inspector_common::maps::ALL);
        // Steering links a killed daemon left pinned.
        if let Ok(dir) = std::fs::read_dir(&self.0) {
            for entry in dir.flatten() {
                if entry.file_name().to_string_lossy().starts_with("steer-") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

pub fn inspector_bin() -> &'static str {
    env!("CARGO_BIN_EXE_inspector")
}

/// Runs the CLI with `--pin-dir` and `args`; returns its output.
pub fn cli(pin_dir: &Path, args: &[&str]) -> Output {
    Command::new(inspector_bin())
        .arg("--pin-dir")
        .arg(pin_dir)
        .args(args)
        .output()
        .expect("running inspector")
}

/// Runs the CLI and insists it succeeds; returns stdout.
pub fn cli_ok(pin_dir: &Path, args: &[&str]) -> String {
    let out = cli(pin_dir, args);
    assert!(
        out.status.success(),
        "inspector {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
