//! The `inspector` command line (see [`inspector::cli`]).

use std::process::ExitCode;

use clap::Parser;
use inspector::cli::{Cli, execute};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    match execute(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inspector: {e:#}");
            ExitCode::FAILURE
        }
    }
}
