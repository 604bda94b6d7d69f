//! What a killed test or benchmark left behind. Each run names its
//! namespaces and bpffs pins after its pid (`bg1234-gw`,
//! `/sys/fs/bpf/inspector-bench-drop-1234`, the live exemptions saved for
//! them); its guards remove them on drop, which a signal skips. So while a
//! run has a lab it holds a lock on a file named after its pid, which the
//! kernel releases however the process ends: the next lab removes what
//! carries the pid of a run whose file is no longer locked, with the
//! processes still running in its namespaces (a Postfix, a sink). A pid
//! without such a file (another pid namespace's, say) is left alone.

use inspector_common::DEFAULT_STATE_DIR as STATE_DIR;
use std::{
    fs::{self, File},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

/// How the namespaces of tests (`it`, `px`, `cl`) and benchmarks (`b…`) start;
/// anything else in /run/netns is not ours to remove.
const NETNS_PREFIXES: [&str; 9] = ["it", "px", "cl", "ba", "bc", "be", "bf", "bg", "bs"];
/// The bpffs directories tests and benchmarks pin into: the pid right
/// after the first, the last number in the name after the second.
const TEST_PINS: &str = "inspector-test-";
const BENCH_PINS: &str = "inspector-bench-";
/// The runs' lock files, one per pid.
pub const RUNS_DIR: &str = "/run/inspector-lab-runs";

/// This process's lock file while it has labs, and how many.
static CLAIM: Mutex<(usize, Option<File>)> = Mutex::new((0, None));

/// This process's claim on its names, held by each of its labs: the first
/// takes the lock, the last drops it and removes the file.
pub(crate) struct Claim(());

impl Claim {
    pub(crate) fn take() -> Self {
        let mut claim = CLAIM.lock().unwrap_or_else(|e| e.into_inner());
        if claim.0 == 0 {
            claim.1 = lock_own();
        }
        claim.0 += 1;
        Self(())
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut claim = CLAIM.lock().unwrap_or_else(|e| e.into_inner());
        claim.0 -= 1;
        if claim.0 == 0 && claim.1.take().is_some() {
            // Removed while still locked: a sweeper that opened it meanwhile
            // then finds the path gone and leaves the names alone.
            let _ = fs::remove_file(run_file(std::process::id()));
        }
    }
}

fn run_file(pid: u32) -> PathBuf {
    Path::new(RUNS_DIR).join(pid.to_string())
}

fn lock_own() -> Option<File> {
    fs::create_dir_all(RUNS_DIR).ok()?;
    let file = File::create(run_file(std::process::id())).ok()?;
    flock(&file).then_some(file)
}

/// An exclusive lock on `file`, if nobody holds one.
fn flock(file: &File) -> bool {
    // SAFETY: flock(2) on a descriptor we own.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Removes the namespaces and pins of runs that are gone. Errors are
/// ignored: whatever is still held is tried again next time.
pub fn remove() {
    let mut dead = std::collections::BTreeMap::new();
    let mut is_dead = |pid: u32| *dead.entry(pid).or_insert_with(|| gone(pid));
    for name in crate::list_namespaces() {
        if netns_owner(&name).is_some_and(&mut is_dead) {
            kill_processes_in(&name);
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
    for name in entries(Path::new("/sys/fs/bpf")) {
        if pin_owner(&name).is_some_and(&mut is_dead) {
            let _ = fs::remove_dir_all(PathBuf::from("/sys/fs/bpf").join(&name));
        }
    }
    // The live exemptions a pin directory's daemon saved, named after it
    // (`exemptions-inspector-test-1234-smtp.json`, and its `.lock`).
    for name in entries(Path::new(STATE_DIR)) {
        let pins = name.strip_prefix("exemptions-").and_then(|n| {
            n.strip_suffix(".json")
                .or_else(|| n.strip_suffix(".json.lock"))
        });
        if pins.and_then(pin_owner).is_some_and(&mut is_dead) {
            let _ = fs::remove_file(Path::new(STATE_DIR).join(&name));
        }
    }
    for (pid, was_dead) in dead {
        if was_dead {
            let _ = fs::remove_file(run_file(pid));
        }
    }
}

/// True when `pid`'s lock file exists, is still the file at its path,
/// and nobody holds its lock: the run that made it is gone.
fn gone(pid: u32) -> bool {
    let path = run_file(pid);
    let Ok(file) = File::open(&path) else {
        return false;
    };
    let same = |f: &File| {
        let (Ok(open), Ok(now)) = (f.metadata(), fs::metadata(&path)) else {
            return false;
        };
        (open.dev(), open.ino()) == (now.dev(), now.ino())
    };
    flock(&file) && same(&file)
}

fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// The pid in a run's namespace name: its prefix, the pid, a dash, and
/// it ends in one of the lab's hosts (`it1234-smtp-client`, `bg1234-gw`,
/// `bc1234-gw2`). The lab's own (`insp-lab-gw`) has
/// none: `cargo xtask run` removes it itself.
fn netns_owner(name: &str) -> Option<u32> {
    let rest = NETNS_PREFIXES.iter().find_map(|p| name.strip_prefix(p))?;
    let (pid, _) = rest.split_once('-')?;
    let (_, host) = name.rsplit_once('-')?;
    let gateway = host
        .strip_prefix("gw")
        .is_some_and(|n| n.is_empty() || number(n).is_some());
    (gateway || ["client", "server", "rtr"].contains(&host))
        .then(|| number(pid))
        .flatten()
}

/// The pid in a run's pin directory: right after `inspector-test-`
/// (`inspector-test-1234-smtp`), the last number after `inspector-bench-`
/// (`inspector-bench-drop-1234`, `inspector-bench-cluster-1234-gw1`).
fn pin_owner(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix(TEST_PINS) {
        return number(rest.split('-').next()?);
    }
    name.strip_prefix(BENCH_PINS)?.rsplit('-').find_map(number)
}

fn number(s: &str) -> Option<u32> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn kill_processes_in(netns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", netns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            // SAFETY: kill(2) has no memory effects; the pid was read from
            // the namespace just now.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_known_by_the_pid_in_its_names() {
        assert_eq!(netns_owner("it1234-smtp_v6-client"), Some(1234));
        assert_eq!(netns_owner("bg77-gw"), Some(77));
        assert_eq!(netns_owner("bc77-gw2"), Some(77));
        assert_eq!(netns_owner("cl77-two-rtr"), Some(77));
        assert_eq!(netns_owner("px77-smtp-server"), Some(77));
        assert_eq!(pin_owner("inspector-test-1234-px-smtp"), Some(1234));
        assert_eq!(pin_owner("inspector-bench-drop-1234"), Some(1234));
        assert_eq!(pin_owner("inspector-bench-cluster-99-gw1"), Some(99));
        assert_eq!(pin_owner("inspector-bench-4321"), Some(4321));
        assert_eq!(pin_owner("inspector-bench-v4-2-4321"), Some(4321));
        assert_eq!(pin_owner("inspector-test-4321-v4-2"), Some(4321));
    }

    #[test]
    fn names_without_a_pid_are_not_a_runs() {
        for name in [
            "insp-lab-gw",
            "it-client",
            "it12",
            "vm42-gw",
            "itx1-gw",
            "bg-1-gw",
        ] {
            assert_eq!(netns_owner(name), None, "{name}");
        }
        for name in [
            "inspector",
            "inspector-lab-gw1",
            "inspector-test-smtp",
            "other-1234",
        ] {
            assert_eq!(pin_owner(name), None, "{name}");
        }
    }
}
