//! Shared fixtures of the privileged tests: a private pin directory and the
//! CLI binary. Everything a fixture creates is removed on drop, also when the
//! test fails.
#![allow(dead_code)] // each test binary uses a different part

pub mod exim;
pub mod flood;
pub mod postfix;
pub mod proxy;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    thread::sleep,
    time::{Duration, Instant},
};

pub use inspector_lab::inspector::wait_until;
use inspector_lab::{Lab, ScopedChild, inspector::wait_ready};

/// The envelope of one message a server accepted: a transaction it
/// executed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Envelope {
    pub sender: String,
    pub rcpts: Vec<String>,
}

/// A bpffs directory of its own per test, so tests run in parallel and never
/// touch a real deployment's maps. Unloaded on drop.
pub struct PinDir(inspector::kernel::bpffs::OwnedPinDir);

impl PinDir {
    pub fn new(test: &str) -> Self {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/inspector-test-{}-{test}",
            std::process::id()
        ));
        Self(
            inspector::kernel::bpffs::OwnedPinDir::new(dir)
                .expect("preparing bpffs (these tests need root)"),
        )
    }

    pub fn path(&self) -> &Path {
        self.0.path()
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

/// A lab of its own per test (the pid keeps parallel runs apart).
pub fn lab(test: &str) -> Lab {
    Lab::create(&format!("it{}-{test}", std::process::id())).expect("creating the lab (needs root)")
}

/// Starts `inspector run` in the gateway and waits until its programs are
/// attached to every interface in `ifaces` and it says it is ready: before
/// the proxy's first heartbeat, new sessions follow `fail` and are not
/// inspected, so a test that connected earlier would see a bypass.
pub fn start_daemon(
    lab: &Lab,
    pins: &PinDir,
    ifaces: &[&str],
    policy: Option<&Path>,
) -> ScopedChild {
    // The kernel programs only: these tests count and limit the packets of
    // connections to the lab's servers, which the proxy would terminate.
    start_daemon_with(lab, pins, ifaces, policy, &["--no-proxy"])
}

/// [`start_daemon`] with more arguments for `inspector run`.
pub fn start_daemon_with(
    lab: &Lab,
    pins: &PinDir,
    ifaces: &[&str],
    policy: Option<&Path>,
    args: &[&str],
) -> ScopedChild {
    let mut cmd = lab.gateway.command(inspector_bin());
    cmd.arg("--pin-dir").arg(pins.path()).arg("run").args(args);
    for iface in ifaces {
        cmd.args(["--iface", iface]);
    }
    if let Some(policy) = policy {
        cmd.arg("--policy").arg(policy);
    }
    let mut daemon = lab.gateway.spawn(&mut cmd).expect("starting the daemon");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ifaces.iter().all(|i| xdp_attached(lab, i)) {
        if let Some(status) = daemon.child().try_wait().unwrap() {
            panic!("the daemon exited before attaching: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not attach within 20 s"
        );
        sleep(Duration::from_millis(50));
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if let Err(e) = wait_ready(Path::new(inspector_bin()), pins.path(), &mut daemon, left) {
        panic!("{e:#}");
    }
    daemon
}

pub fn xdp_attached(lab: &Lab, iface: &str) -> bool {
    let out = lab
        .gateway
        .command("ip")
        .args(["-d", "link", "show", "dev", iface])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

/// A policy file written for one test, removed on drop.
pub struct PolicyFile(pub PathBuf);

impl PolicyFile {
    pub fn new(test: &str, text: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("inspector-test-{}-{test}.toml", std::process::id()));
        std::fs::write(&path, text).expect("writing the test policy");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PolicyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `inspector stats --json`, parsed.
pub fn stats_json(pin_dir: &Path) -> serde_json::Value {
    serde_json::from_str(&cli_ok(pin_dir, &["stats", "--json"])).expect("stats --json is JSON")
}

/// The pass-only XDP program attached natively on the lab's end hosts, so
/// the gateway's native `XDP_TX` frames reach them (see
/// `inspector::kernel::loader::load_pass_only`); detached when dropped.
pub struct EndHostXdp {
    _ebpf: aya::Ebpf,
    _pins: PinDir,
}

pub fn pass_on_end_hosts(lab: &Lab, test: &str) -> EndHostXdp {
    use inspector::kernel::loader;
    let pins = PinDir::new(&format!("{test}-ends"));
    let mut ebpf = loader::load_pass_only(pins.path()).expect("loading the pass-only program");
    for (ns, iface) in lab.end_host_interfaces() {
        ns.run(|| loader::attach_pass_only(&mut ebpf, iface))
            .unwrap()
            .unwrap_or_else(|e| panic!("{}: {iface}: {e:#}", ns.name));
    }
    EndHostXdp {
        _ebpf: ebpf,
        _pins: pins,
    }
}
