//! `inspector exempt`: change and list the exemptions live.

use std::path::Path;

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::{
    config::parse_network,
    kernel::{
        exempt::{ExemptTable, Origin},
        exempt_store::{self, Store},
    },
    observe::audit::rfc3339,
};

#[derive(Subcommand)]
pub enum Action {
    /// Exempt a network (CIDR) or a host, in both directions. The rule is
    /// saved in the state directory and restored at the daemon's start.
    Add {
        network: String,
        /// Why (shown by `exempt list`).
        #[arg(long)]
        comment: Option<String>,
        /// How long it lasts (90s, 30m, 2h, 1d); the daemon removes it then.
        #[arg(long = "for", value_parser = exempt_store::parse_duration)]
        lasts: Option<std::time::Duration>,
    },
    /// Remove an exemption.
    Del { network: String },
    /// List exemptions and where they came from (policy or live).
    List {
        #[arg(long)]
        json: bool,
    },
}

pub fn execute(pin_dir: &Path, state_dir: &Path, action: Action) -> Result<()> {
    let parse = |text: &str| parse_network(text).map_err(anyhow::Error::msg);
    let store = Store::for_pin_dir(state_dir, pin_dir);
    match action {
        Action::Add {
            network,
            comment,
            lasts,
        } => {
            let net = parse(&network)?;
            let mut table = ExemptTable::open(pin_dir)?;
            if table.add(&net, Origin::Live)? {
                println!("exempted {net}");
            } else {
                println!("{net} was already exempt");
            }
            if table.origin(&net)? == Some(Origin::Live) {
                let saved = store.add(net, comment, lasts)?;
                if let Some(t) = saved.expires {
                    println!("  until {}", rfc3339(at(t)));
                }
            }
        }
        Action::Del { network } => {
            let net = parse(&network)?;
            let removed = ExemptTable::open(pin_dir)?.remove(&net)?;
            let forgotten = store.remove(&net)?;
            if !(removed || forgotten) {
                bail!("{net} is not exempt");
            }
            println!("removed exemption {net}");
        }
        Action::List { json } => {
            let rules = ExemptTable::open(pin_dir)?.list()?;
            let saved = store.rules().unwrap_or_default();
            let rows: Vec<serde_json::Value> = rules
                .iter()
                .map(|rule| {
                    let mut row = serde_json::json!(rule);
                    let live = rule.origin == Origin::Live;
                    if let Some(s) = saved.iter().find(|s| live && s.network == rule.network) {
                        if let Some(c) = &s.comment {
                            row["comment"] = c.as_str().into();
                        }
                        if let Some(t) = s.expires {
                            row["expires"] = rfc3339(at(t)).into();
                        }
                    }
                    row
                })
                .collect();
            if json {
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!(
                    "{:<43} {:<6} {:>14}  {:<27} comment",
                    "network", "origin", "hits", "expires"
                );
                for row in rows {
                    println!(
                        "{:<43} {:<6} {:>14}  {:<27} {}",
                        row["network"].as_str().unwrap_or(""),
                        row["origin"].as_str().unwrap_or(""),
                        row["hits"],
                        row["expires"].as_str().unwrap_or("-"),
                        row["comment"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(())
}

fn at(unix: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix)
}
