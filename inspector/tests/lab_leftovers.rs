//! A run killed by a signal skips its guards: the next lab removes what it
//! left (namespaces, the processes in them, bpffs pins, the live
//! exemptions saved for them), and nothing of a run still alive or of a
//! pid it cannot tell is gone (no lock file of its own: another pid
//! namespace's, say).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use inspector_lab::{Lab, leftovers::RUNS_DIR};

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

/// What a run with this pid leaves: a namespace, a pin directory and the
/// exemptions saved for it.
struct Planted {
    ns: String,
    pins: PathBuf,
    store: PathBuf,
}

impl Planted {
    fn new(ns: String, pins: String) -> Self {
        ip(&["netns", "add", &ns]);
        let pins = PathBuf::from("/sys/fs/bpf").join(pins);
        std::fs::create_dir_all(&pins).unwrap();
        let name = pins.file_name().unwrap().to_string_lossy().into_owned();
        let store = Path::new("/var/lib/inspector").join(format!("exemptions-{name}.json"));
        std::fs::write(&store, "[]").unwrap();
        Self { ns, pins, store }
    }

    fn present(&self) -> (bool, bool, bool) {
        (
            netns(&self.ns).exists(),
            self.pins.exists(),
            self.store.exists(),
        )
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        if netns(&self.ns).exists() {
            let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_file(&self.store);
    }
}

#[test]
fn the_next_lab_removes_what_a_killed_run_left_and_keeps_a_live_runs() {
    let (dead, foreign, alive) = (dead_pid(), dead_pid(), std::process::id());
    let made_state_dir = !Path::new("/var/lib/inspector").exists();
    std::fs::create_dir_all("/var/lib/inspector").unwrap();
    // The killed run's lock file, no longer locked; the live run's is
    // locked by its lab (the one built below); the foreign pid has none.
    std::fs::create_dir_all(RUNS_DIR).unwrap();
    let dead_run = Path::new(RUNS_DIR).join(dead.to_string());
    std::fs::write(&dead_run, "").unwrap();
    let killed = Planted::new(
        format!("bg{dead}-gw"),
        format!("inspector-bench-drop-{dead}"),
    );
    let live = Planted::new(
        format!("bg{alive}-leftovers-gw"),
        format!("inspector-test-{alive}-leftovers"),
    );
    let unknown = Planted::new(
        format!("bg{foreign}-gw"),
        format!("inspector-bench-drop-{foreign}"),
    );
    // What a killed bench leaves running in its namespace.
    let mut orphan = Command::new("nsenter")
        .arg(format!("--net={}", netns(&killed.ns).display()))
        .args(["--", "sleep", "600"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    let lab = Lab::create(&format!("it{alive}-leftovers"));

    let orphan_killed = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        orphan.try_wait().unwrap().is_some()
    });
    let found = (
        killed.present(),
        dead_run.exists(),
        live.present(),
        unknown.present(),
    );
    // Ours removed before asserting, so a failure leaves nothing either.
    let _ = orphan.kill();
    let _ = orphan.wait();
    drop((killed, live, unknown));
    let _ = std::fs::remove_file(&dead_run);
    if made_state_dir {
        let _ = std::fs::remove_dir("/var/lib/inspector");
    }
    lab.expect("creating the lab (needs root)");

    let (killed, dead_run, live, unknown) = found;
    assert_eq!(
        killed,
        (false, false, false),
        "a killed run's namespace, pins and saved exemptions are removed"
    );
    assert!(!dead_run, "and its lock file");
    assert!(
        orphan_killed,
        "the process in a killed run's namespace is killed"
    );
    assert_eq!(
        live,
        (true, true, true),
        "a live run's namespace, pins and saved exemptions are kept"
    );
    assert_eq!(
        unknown,
        (true, true, true),
        "a pid without a lock file of its own is not taken for a dead run"
    );
}
