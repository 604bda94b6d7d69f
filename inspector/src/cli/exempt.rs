//! `inspector exempt`: change and list the exemptions live.

use std::path::Path;

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::{
    config::parse_network,
    kernel::exempt::{ExemptTable, Origin},
};

#[derive(Subcommand)]
pub enum Action {
    /// Exempt a network (CIDR) or a host, in both directions.
    Add { network: String },
    /// Remove an exemption.
    Del { network: String },
    /// List exemptions and where they came from (policy or live).
    List {
        #[arg(long)]
        json: bool,
    },
}

pub fn execute(pin_dir: &Path, action: Action) -> Result<()> {
    let parse = |text: &str| parse_network(text).map_err(anyhow::Error::msg);
    match action {
        Action::Add { network } => {
            let net = parse(&network)?;
            if ExemptTable::open(pin_dir)?.add(&net, Origin::Live)? {
                println!("exempted {net}");
            } else {
                println!("{net} was already exempt");
            }
        }
        Action::Del { network } => {
            let net = parse(&network)?;
            if !ExemptTable::open(pin_dir)?.remove(&net)? {
                bail!("{net} is not exempt");
            }
            println!("removed exemption {net}");
        }
        Action::List { json } => {
            let rules = ExemptTable::open(pin_dir)?.list()?;
            if json {
                println!("{}", serde_json::to_string(&rules)?);
            } else {
                for rule in rules {
                    let origin = match rule.origin {
                        Origin::Policy => "policy",
                        Origin::Live => "live",
                    };
                    println!("{:<43} {origin}", rule.network);
                }
            }
        }
    }
    Ok(())
}
