//! One daemon per interface: an flock'ed file per (network namespace,
//! interface) under [`RUN_DIR`], released by the kernel if the daemon dies.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Write},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use crate::{RUN_DIR, observe::stats_socket};

pub struct IfaceLock {
    _file: File,
    path: PathBuf,
}

/// A running daemon found through its lock.
pub struct Holder {
    pub pid: u32,
    pub iface: String,
}

impl IfaceLock {
    pub fn acquire(iface: &str, pin_dir: &Path) -> Result<Self> {
        fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
        let netns = fs::metadata("/proc/self/ns/net")
            .context("reading this process's network namespace")?
            .ino();
        let path = Path::new(RUN_DIR).join(format!("{netns}-{iface}.lock"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if !try_lock(&file) {
            let (pid, _, _) = read_owner(&mut file);
            bail!(
                "{iface} is already inspected by another `inspector run` (pid {pid}); stop it first"
            );
        }
        file.set_len(0)?;
        writeln!(
            file,
            "{}\n{}\n{}",
            std::process::id(),
            iface,
            pin_dir.display()
        )?;
        Ok(Self { _file: file, path })
    }

    /// Daemons currently running with `pin_dir`.
    pub fn holders(pin_dir: &Path) -> Vec<Holder> {
        let Ok(entries) = fs::read_dir(RUN_DIR) else {
            return Vec::new();
        };
        let mut holders = Vec::new();
        for entry in entries.flatten() {
            let Ok(mut file) = File::open(entry.path()) else {
                continue;
            };
            if try_lock(&file) {
                continue; // nobody holds it: a leftover of a killed daemon
            }
            let (pid, iface, dir) = read_owner(&mut file);
            if Path::new(&dir) == pin_dir {
                holders.push(Holder { pid, iface });
            }
        }
        holders
    }
}

/// Removes what a killed daemon `pid` left: its lock files (the kernel
/// released the locks; the files stay; only files nobody holds go) and its
/// stats socket.
pub fn remove_leftovers_of(pid: u32) {
    if !Path::new(&format!("/proc/{pid}")).exists() {
        let _ = fs::remove_file(stats_socket::path_of(pid));
    }
    let Ok(entries) = fs::read_dir(RUN_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(mut file) = File::open(entry.path()) else {
            continue;
        };
        if entry.path().extension().is_some_and(|e| e == "lock")
            && try_lock(&file)
            && read_owner(&mut file).0 == pid
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

impl Drop for IfaceLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn try_lock(file: &File) -> bool {
    // SAFETY: flock on a file descriptor we own.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

fn read_owner(file: &mut File) -> (u32, String, String) {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let mut lines = text.lines();
    let pid = lines.next().and_then(|l| l.parse().ok()).unwrap_or(0);
    let iface = lines.next().unwrap_or("").to_string();
    let dir = lines.next().unwrap_or("").to_string();
    (pid, iface, dir)
}
