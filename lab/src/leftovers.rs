//! What a killed test or benchmark left behind. Each run names its
//! namespaces and bpffs pins after its pid (`bg1234-gw`,
//! `/sys/fs/bpf/inspector-bench-drop-1234`, the live exemptions saved for
//! them); its guards remove them on drop, which a signal skips. The next
//! lab removes those of pids that are gone, with the processes still
//! running in them (a Postfix, a sink).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// Where the namespaces' bind mounts are.
const NETNS_DIR: &str = "/run/netns";
/// How the namespaces of tests (`it`, `px`, `cl`) and benchmarks (`b…`) start;
/// anything else in /run/netns is not ours to remove.
const NETNS_PREFIXES: [&str; 9] = ["it", "px", "cl", "ba", "bc", "be", "bf", "bg", "bs"];
/// The bpffs directories tests and benchmarks pin into.
const PIN_PREFIXES: [&str; 2] = ["inspector-test-", "inspector-bench-"];
/// The daemon's default state directory.
const STATE_DIR: &str = "/var/lib/inspector";

/// Removes the namespaces and pins of runs whose process is gone. Errors
/// are ignored: whatever is still held is tried again next time.
pub fn remove() {
    for name in entries(Path::new(NETNS_DIR)) {
        if netns_owner(&name).is_some_and(gone) {
            kill_processes_in(&name);
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
    for name in entries(Path::new("/sys/fs/bpf")) {
        if pin_owner(&name).is_some_and(gone) {
            let _ = fs::remove_dir_all(PathBuf::from("/sys/fs/bpf").join(&name));
        }
    }
    // The live exemptions a pin directory's daemon saved, named after it
    // (`exemptions-inspector-test-1234-smtp.json`).
    for name in entries(Path::new(STATE_DIR)) {
        let pins = name
            .strip_prefix("exemptions-")
            .and_then(|n| n.strip_suffix(".json"));
        if pins.and_then(pin_owner).is_some_and(gone) {
            let _ = fs::remove_file(Path::new(STATE_DIR).join(&name));
        }
    }
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

/// The pid in a run's pin directory: the first part of the name after the
/// prefix that is a number (`inspector-test-1234-smtp`,
/// `inspector-bench-drop-1234`, `inspector-bench-cluster-1234-gw1`).
fn pin_owner(name: &str) -> Option<u32> {
    let rest = PIN_PREFIXES.iter().find_map(|p| name.strip_prefix(p))?;
    rest.split('-').find_map(number)
}

fn number(s: &str) -> Option<u32> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// True when no process has this pid. A pid taken again by another
/// process keeps the leftover until that one is gone too.
fn gone(pid: u32) -> bool {
    !Path::new("/proc").join(pid.to_string()).exists()
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
