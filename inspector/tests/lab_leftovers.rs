//! A run killed by a signal skips its guards: the next lab removes what it
//! left (namespaces, the processes in them, bpffs pins, the live
//! exemptions saved for them), and nothing of a run still alive.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use inspector_lab::Lab;

fn ip(args: &[&str]) {
    assert!(
        Command::new("ip").args(args).status().unwrap().success(),
        "ip {args:?}"
    );
}

/// A pid no process has now: a child that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    child.id()
}

fn netns(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

#[test]
fn the_next_lab_removes_what_a_killed_run_left_and_keeps_a_live_runs() {
    let (dead, alive) = (dead_pid(), std::process::id());
    let (dead_ns, alive_ns) = (format!("bg{dead}-gw"), format!("bg{alive}-leftovers-gw"));
    let dead_pins = PathBuf::from(format!("/sys/fs/bpf/inspector-bench-drop-{dead}"));
    let alive_pins = PathBuf::from(format!("/sys/fs/bpf/inspector-test-{alive}-leftovers"));
    for ns in [&dead_ns, &alive_ns] {
        ip(&["netns", "add", ns]);
    }
    for dir in [&dead_pins, &alive_pins] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let store = |pins: &Path| {
        let name = pins.file_name().unwrap().to_string_lossy();
        Path::new("/var/lib/inspector").join(format!("exemptions-{name}.json"))
    };
    let (dead_store, alive_store) = (store(&dead_pins), store(&alive_pins));
    let made_state_dir = !Path::new("/var/lib/inspector").exists();
    std::fs::create_dir_all("/var/lib/inspector").unwrap();
    for file in [&dead_store, &alive_store] {
        std::fs::write(file, "[]").unwrap();
    }
    // What a killed bench leaves running in its namespace.
    let mut orphan = Command::new("nsenter")
        .arg(format!("--net={}", netns(&dead_ns).display()))
        .args(["--", "sleep", "600"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    let lab = Lab::create(&format!("it{alive}-leftovers"));

    let orphan_killed = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        orphan.try_wait().unwrap().is_some()
    });
    let left = (
        netns(&dead_ns).exists(),
        dead_pins.exists(),
        dead_store.exists(),
    );
    let kept = (
        netns(&alive_ns).exists(),
        alive_pins.exists(),
        alive_store.exists(),
    );
    // Ours removed before asserting, so a failure leaves nothing either.
    let _ = orphan.kill();
    let _ = orphan.wait();
    for ns in [&dead_ns, &alive_ns] {
        if netns(ns).exists() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
    for dir in [&dead_pins, &alive_pins] {
        let _ = std::fs::remove_dir_all(dir);
    }
    for file in [&dead_store, &alive_store] {
        let _ = std::fs::remove_file(file);
    }
    if made_state_dir {
        let _ = std::fs::remove_dir("/var/lib/inspector");
    }
    lab.expect("creating the lab (needs root)");

    assert_eq!(
        left,
        (false, false, false),
        "a dead run's namespace, pins and saved exemptions are removed"
    );
    assert!(
        orphan_killed,
        "the process in a dead run's namespace is killed"
    );
    assert_eq!(
        kept,
        (true, true, true),
        "a live run's namespace, pins and saved exemptions are kept"
    );
}
