//! `cargo xtask test`: every check CI runs, in order of cost.

use anyhow::Result;

use crate::cargo;

pub fn run(extra: &[String]) -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // Unit tests, BPF_PROG_TEST_RUN tests and the namespace tests. The
    // privileged ones fail (never skip) when they cannot run.
    let mut args = vec!["test"];
    if !extra.is_empty() {
        args.push("--");
        args.extend(extra.iter().map(String::as_str));
    }
    cargo(&args)
}
