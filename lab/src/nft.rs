//! nftables in a lab namespace: a script loaded with `nft -f -`, and the
//! packets a table's counter saw.

use std::io::Write;

use anyhow::{Context, Result, bail};

use crate::Netns;

impl Netns {
    /// Runs `nft -f -` on `script` in this namespace.
    pub fn nft(&self, script: &str) -> Result<()> {
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("starting nft (is nftables installed?)")?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(script.as_bytes())?;
        let status = child.wait()?;
        if !status.success() {
            bail!("nft -f failed ({status}) on:\n{script}");
        }
        Ok(())
    }

    /// The packets of the first `counter` in table `family name`.
    pub fn nft_counter(&self, family: &str, name: &str) -> Result<u64> {
        let out = self
            .command("nft")
            .args(["list", "table", family, name])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no counter in {text}"))
    }
}
