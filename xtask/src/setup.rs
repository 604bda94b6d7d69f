//! `cargo xtask setup`: everything a fresh Debian 12 machine lacks to build
//! and test the project. Each step checks first, so a second run is a no-op.

use std::process::{Command, Stdio};

use anyhow::{Result, bail};

use crate::status;

/// Debian packages: LLVM 22 for bpf-linker, tools the tests drive, and the
/// real SMTP software the tests and the lab use.
const PACKAGES: &[&str] = &[
    // bpf-linker 0.13 links against LLVM 22 (the nightly's LLVM).
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // Kernel-side tooling and the lab.
    "bpftool",
    "iproute2",
    "nftables",
    // Checksum offload on the lab's veths (intercept tests), GRO for the
    // gateway bench's NAPI thread.
    "ethtool",
    // A real HTTP client for the metrics endpoint's tests.
    "curl",
    // promtool, which checks the shipped alert rules (deploy/prometheus).
    "prometheus",
    // Real SMTP peers: Postfix (and its smtp-sink/smtp-source), swaks
    // (which needs IO::Socket::INET6 to speak over IPv6).
    "postfix",
    "swaks",
    "libio-socket-inet6-perl",
    // The end-to-end tests' other client (smtplib) and their test
    // certificate; `ss` (iproute2) waits for listeners.
    "python3",
    "openssl",
    // A virtual environment for the Kubernetes manifest validator
    // (`kubernetes_validate`).
    "python3-venv",
    // The cluster lab's routing daemon (BGP, ECMP routes in the kernel).
    "bird2",
    // The private Exim's one library that Postfix does not pull in (see
    // `exim_private`).
    "libidn12",
    // The plain proxy the SMTP benchmark measures the inspector against
    // (`mode tcp`), and `perf` for profiles.
    "haproxy",
    "linux-perf",
];

/// The Debian package the private Exim is unpacked from.
const EXIM_PACKAGE: &str = "exim4-daemon-light";

const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn install_missing() -> Result<()> {
    if !is_root() {
        bail!("setup installs Debian packages and needs root");
    }
    apt_packages()?;
    exim_private()?;
    kubernetes_validate()?;
    nightly_components()?;
    bpf_linker()?;
    cargo_fuzz()?;
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !deb_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    // Postfix asks how to configure itself; the tests write their own
    // configuration, so install it unconfigured.
    let mut debconf = Command::new("debconf-set-selections")
        .stdin(Stdio::piped())
        .spawn()?;
    use std::io::Write;
    debconf
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(b"postfix postfix/main_mailer_type select No configuration\n")?;
    debconf.wait()?;
    status(Command::new("apt-get").args(["update", "-q"]))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Exim beside Postfix: Debian's packages conflict (both provide
/// `mail-transport-agent`), so the binary package is downloaded and
/// unpacked into a directory of its own (`inspector_lab::exim::DIR`), never
/// installed. Its shared libraries come with Postfix and `libidn12`; its
/// compiled-in user `Debian-exim` is created here. The tests run it with
/// their own configuration (`-C`), spool and log directories.
fn exim_private() -> Result<()> {
    exim_user()?;
    let dir = std::path::Path::new(inspector_lab::exim::DIR);
    if exim_runs() {
        return Ok(());
    }
    eprintln!(
        "setup: unpacking {EXIM_PACKAGE} into {} (Exim for the differential tests)",
        dir.display()
    );
    let parent = dir.parent().expect("the Exim directory has a parent");
    std::fs::create_dir_all(parent)?;
    let work = parent.join(".exim-download");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    // apt fetches as `_apt` when that user may write here (no warning).
    let _ = Command::new("chown").arg("_apt").arg(&work).status();
    let fetched = status(
        Command::new("apt-get")
            .args(["download", "-q", EXIM_PACKAGE])
            .current_dir(&work),
    );
    if fetched.is_err() {
        // A fresh machine may not have the package lists yet.
        status(Command::new("apt-get").args(["update", "-q"]))?;
        status(
            Command::new("apt-get")
                .args(["download", "-q", EXIM_PACKAGE])
                .current_dir(&work),
        )?;
    }
    let deb = std::fs::read_dir(&work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| anyhow::anyhow!("apt-get download left no .deb"))?;
    let staging = work.join("root");
    status(Command::new("dpkg").arg("-x").arg(&deb).arg(&staging))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&staging, dir)?;
    let _ = std::fs::remove_dir_all(&work);
    if !exim_runs() {
        bail!(
            "{} was unpacked but does not run (missing libraries?)",
            inspector_lab::exim::binary().display()
        );
    }
    Ok(())
}

/// PyPI's kubernetes-validate (with the Kubernetes API schemas inside) in
/// a virtual environment of its own, for the DaemonSet's test.
fn kubernetes_validate() -> Result<()> {
    use inspector_lab::kubernetes::{DIR, VERSION, binary};
    let installed = Command::new(binary())
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(VERSION));
    if installed {
        return Ok(());
    }
    eprintln!("setup: installing kubernetes-validate {VERSION} into {DIR}");
    status(Command::new("python3").args(["-m", "venv", DIR]))?;
    status(
        Command::new(std::path::Path::new(DIR).join("bin/pip"))
            .args(["install", "-q"])
            .arg(format!("kubernetes-validate=={VERSION}")),
    )
}

/// The unpacked Exim prints its version (with an empty configuration).
fn exim_runs() -> bool {
    Command::new(inspector_lab::exim::binary())
        .args(["-C", "/dev/null", "-bV"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The system user Debian's Exim is built to run as.
fn exim_user() -> Result<()> {
    let user = inspector_lab::exim::USER;
    let exists = Command::new("id")
        .arg("-u")
        .arg(user)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if exists {
        return Ok(());
    }
    eprintln!("setup: adding the system user {user}");
    status(Command::new("useradd").args([
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        user,
    ]))
}

fn deb_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout) == "install ok installed")
}

/// The nightly's components: `rust-src` (the eBPF build compiles core from
/// source) and `clippy` (`cargo xtask test` lints the eBPF crate with it).
fn nightly_components() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()?;
    let installed = String::from_utf8_lossy(&out.stdout).into_owned();
    for component in ["rust-src", "clippy"] {
        if installed.lines().any(|l| l.starts_with(component)) {
            continue;
        }
        eprintln!("setup: adding {component} to the nightly toolchain");
        status(Command::new("rustup").args([
            "component",
            "add",
            component,
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// bpf-linker must be this version and linked against LLVM 22, the LLVM of
/// the nightly that compiles the eBPF crate.
fn bpf_linker() -> Result<()> {
    if bpf_linker_ok() {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    status(
        Command::new("cargo")
            .args([
                "install",
                "--force",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )?;
    if !bpf_linker_ok() {
        bail!("bpf-linker was installed but is not on PATH or not linked against LLVM 22");
    }
    Ok(())
}

/// cargo-fuzz drives the engine's fuzz targets (libFuzzer, nightly).
fn cargo_fuzz() -> Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if installed {
        return Ok(());
    }
    eprintln!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    status(Command::new("cargo").args([
        "install",
        "--locked",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}

fn bpf_linker_ok() -> bool {
    let Ok(path) = which("bpf-linker") else {
        return false;
    };
    let version = Command::new(&path)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION));
    let llvm22 = Command::new("ldd")
        .arg(&path)
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("libLLVM.so.22"));
    version && llvm22
}

fn which(program: &str) -> Result<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("{program} not found on PATH"))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
