//! The `inspector` command line (see [`inspector::cli`]).

use std::process::ExitCode;

use clap::Parser;
use inspector::{
    cli::{Cli, execute, exit_code},
    observe::logging,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_level());
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::report_error(&e);
            ExitCode::from(exit_code(&e))
        }
    }
}
