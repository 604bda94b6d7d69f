//! The classifier's settings (`CLASSIFY_CONFIG`, read by the XDP and TC
//! programs alike; see `inspector-ebpf/src/classify.rs`). Not pinned: each
//! daemon start writes it. Until it is written every setting reads as 0,
//! which is the safe default (`unparsable = "drop"`).

use anyhow::{Context, Result};
use aya::{Ebpf, maps::Array};
use inspector_common::{CLASSIFY_CONFIG_MAP, ClassifyConfig, UNPARSABLE_DROP, UNPARSABLE_PASS};

use crate::config::{PacketPolicy, Unparsable};

/// Writes the policy's `[packets]` settings for both programs.
pub fn configure(ebpf: &mut Ebpf, policy: &PacketPolicy) -> Result<()> {
    let mut config: Array<_, ClassifyConfig> = Array::try_from(
        ebpf.map_mut(CLASSIFY_CONFIG_MAP)
            .context("the object has no classifier settings map")?,
    )?;
    let unparsable = match policy.unparsable {
        Unparsable::Drop => UNPARSABLE_DROP,
        Unparsable::Pass => UNPARSABLE_PASS,
    };
    config
        .set(0, ClassifyConfig { unparsable }, 0)
        .context("writing the classifier's settings")?;
    Ok(())
}
