//! The inspector daemon on a lab: started as the tests and benchmarks need
//! it, with its log in a file.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{Netns, ScopedChild};

/// What the daemon logs once its proxy listens.
pub const PROXY_LISTENING: &str = "proxy listening";

/// Starts `INSPECTOR --pin-dir PIN_DIR --log-level debug run ARGS` in `ns`
/// (each session's lines are `debug`), its stdout and stderr in `log`, and
/// waits up to 30 s for it to be ready ([`wait_ready`]). Fails, with the
/// log, if it exits or does not get there.
pub fn start_proxy(
    ns: &Netns,
    inspector: &Path,
    pin_dir: &Path,
    args: &[impl AsRef<OsStr>],
    log: &Path,
) -> Result<ScopedChild> {
    start_proxy_logging(ns, inspector, pin_dir, "debug", args, log)
}

/// [`start_proxy`] with the log at `level` (a benchmark runs at `info`, so
/// that no session pays for log lines).
pub fn start_proxy_logging(
    ns: &Netns,
    inspector: &Path,
    pin_dir: &Path,
    level: &str,
    args: &[impl AsRef<OsStr>],
    log: &Path,
) -> Result<ScopedChild> {
    let file = std::fs::File::create(log)?;
    let mut cmd: Command = ns.command(inspector);
    cmd.arg("--pin-dir")
        .arg(pin_dir)
        .args(["--log-level", level, "run"])
        .args(args)
        .stdout(file.try_clone()?)
        .stderr(file);
    let mut daemon = ns.spawn(&mut cmd)?;
    if let Err(e) = wait_ready(inspector, pin_dir, &mut daemon, Duration::from_secs(30)) {
        bail!("{e:#}; its log:\n{}", read(log));
    }
    Ok(daemon)
}

/// Waits up to `within` until `INSPECTOR --pin-dir PIN_DIR status`
/// succeeds: the daemon `daemon` is ready (for a proxy, its heartbeat is
/// fresh, so the kernel steers new sessions to it). Fails if the daemon
/// exits first or the time passes.
pub fn wait_ready(
    inspector: &Path,
    pin_dir: &Path,
    daemon: &mut ScopedChild,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let status = Command::new(inspector)
            .arg("--pin-dir")
            .arg(pin_dir)
            .arg("status")
            .output()?;
        if status.status.success() {
            return Ok(());
        }
        if let Some(exit) = daemon.child().try_wait()? {
            bail!("the daemon exited before it was ready: {exit}");
        }
        if Instant::now() > deadline {
            bail!(
                "the daemon was not ready within {within:?}: {}",
                String::from_utf8_lossy(&status.stderr).trim()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A file's text, or nothing if it cannot be read (yet).
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Polls `check` every 50 ms until it holds or `within` passes.
pub fn wait_until(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A scratch directory of one run, made empty when created and removed on
/// drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(path: PathBuf) -> Result<Self> {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
