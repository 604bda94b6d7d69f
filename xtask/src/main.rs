//! `cargo xtask`: the project's tasks. The README's two commands are
//! `cargo xtask run` and `cargo xtask test`; both install what is missing.

mod bench;
mod deb;
mod lab_cluster;
mod lab_run;
mod setup;
mod test;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Build the inspector (kernel programs included) in release mode.
    Build,
    /// Run the inspector: on a self-made lab when no --iface is given
    /// (`-- --gateways N`: N gateways behind a BGP/ECMP router),
    /// otherwise `inspector run` with the arguments after `--`.
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every check and test: formatting, lints, unit, kernel and
    /// namespace tests. Needs root.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build the Debian package (target/deb/inspector_VERSION_ARCH.deb) and
    /// check it: contents, an install into a throwaway root, the unit.
    Deb,
    /// Measure (XDP per packet vs an empty program, kernel memory, the
    /// engine vs memchr, SMTP, legitimate mail during attacks), print a
    /// table and write docs/benchmarks.md. Needs root.
    Bench {
        /// Measure only this part and replace its section of
        /// docs/benchmarks.md (`attack`, `engine`, ...).
        #[arg(long)]
        only: Option<bench::Part>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup::install_missing(),
        Task::Build => {
            setup::install_missing()?;
            build_release()
        }
        Task::Run { args } => {
            setup::install_missing()?;
            build_release()?;
            lab_run::run(&args)
        }
        Task::Test { args } => {
            setup::install_missing()?;
            test::run(&args)
        }
        Task::Deb => {
            setup::install_missing()?;
            let deb = deb::build()?;
            deb::check(&deb)
        }
        Task::Bench { only } => {
            setup::install_missing()?;
            match only {
                None => bench::run(),
                Some(part) => bench::run_part(part),
            }
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn build_release() -> Result<()> {
    cargo(&["build", "--release", "--package", "inspector"])
}

/// The release `inspector` binary that `build_release` produces.
pub fn inspector_binary() -> PathBuf {
    workspace_root().join("target/release/inspector")
}

/// Runs cargo with `args` in the workspace root; fails if it fails.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    status(Command::new(cargo).args(args).current_dir(workspace_root()))
}

pub fn status(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
