//! `cargo xtask test`: every check CI runs, in order of cost.

use std::process::Command;

use anyhow::{Context, Result};

use crate::{cargo, status, workspace_root};

/// Seconds each fuzz target runs: long enough to cover the seed corpus and
/// mutate well past it, short enough for every CI run.
const FUZZ_SECONDS: u32 = 30;
const FUZZ_TARGETS: [&str; 3] = ["client", "server", "differential"];

pub fn run(extra: &[String]) -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    // The default members only: the eBPF crate builds for the BPF target
    // alone (the inspector crate's build script compiles it).
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    // The eBPF crate, for its target, with the nightly that builds it
    // (rustup's `cargo`, which reads `+nightly`).
    status(
        Command::new("cargo")
            .args(["+nightly", "clippy", "-p", "inspector-ebpf"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"])
            .current_dir(workspace_root()),
    )?;
    // Unit tests, BPF_PROG_TEST_RUN tests and the namespace tests. The
    // privileged ones fail (never skip) when they cannot run.
    let mut args = vec!["test"];
    if !extra.is_empty() {
        args.push("--");
        args.extend(extra.iter().map(String::as_str));
    }
    cargo(&args)?;
    if extra.is_empty() {
        // The Debian package: a release build, then its contents, an
        // install into a throwaway root and its unit checked.
        let deb = crate::deb::build()?;
        crate::deb::check(&deb)?;
        fuzz()?;
    }
    Ok(())
}

/// Runs each engine fuzz target for a bounded time. New inputs go to a
/// scratch directory; the committed corpus is only read.
fn fuzz() -> Result<()> {
    let fuzz_dir = workspace_root().join("inspector-esmtp/fuzz");
    for target in FUZZ_TARGETS {
        let scratch = std::env::temp_dir().join(format!("inspector-fuzz-{target}"));
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        let result = status(
            Command::new("cargo")
                .args(["+nightly", "fuzz", "run", "--fuzz-dir"])
                .arg(&fuzz_dir)
                .arg(target)
                .arg(&scratch)
                .arg(fuzz_dir.join("corpus").join(target))
                .arg("--")
                .arg(format!("-max_total_time={FUZZ_SECONDS}"))
                .current_dir(workspace_root()),
        );
        let _ = std::fs::remove_dir_all(&scratch);
        result.with_context(|| {
            format!("fuzz target {target} found a failure (see its artifact above)")
        })?;
    }
    Ok(())
}
