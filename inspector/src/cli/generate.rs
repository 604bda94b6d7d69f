//! `inspector generate`: the man page `inspector(8)` and the shell
//! completions, made from the clap definitions (for the Debian package:
//! `cargo xtask deb`).

use std::path::Path;

use anyhow::{Context, Result};
use clap::{CommandFactory, Subcommand};
use clap_complete::Shell;

use super::Cli;

#[derive(Subcommand)]
pub enum Action {
    /// Write inspector.8 (roff) into DIR.
    Man { dir: std::path::PathBuf },
    /// Write bash, zsh and fish completions into DIR.
    Completions { dir: std::path::PathBuf },
}

pub fn execute(action: Action) -> Result<()> {
    match action {
        Action::Man { dir } => man(&dir),
        Action::Completions { dir } => {
            std::fs::create_dir_all(&dir)?;
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                let path =
                    clap_complete::generate_to(shell, &mut Cli::command(), "inspector", &dir)
                        .with_context(|| format!("writing {shell} completions"))?;
                println!("{}", path.display());
            }
            Ok(())
        }
    }
}

fn man(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let command = Cli::command();
    let mut out = Vec::new();
    clap_mangen::Man::new(command.clone())
        .section("8")
        .render(&mut out)?;
    // One section per subcommand, as `inspector SUBCOMMAND --help` says.
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name();
        out.extend_from_slice(format!(".SH \"INSPECTOR {}\"\n", name.to_uppercase()).as_bytes());
        let page = clap_mangen::Man::new(sub.clone().bin_name(format!("inspector {name}")));
        page.render_synopsis_section(&mut out)?;
        page.render_description_section(&mut out)?;
        page.render_options_section(&mut out)?;
        page.render_subcommands_section(&mut out)?;
    }
    let path = dir.join("inspector.8");
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}
