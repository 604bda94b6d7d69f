//! The classifier's settings (`CLASSIFY_CONFIG`, read by the XDP and TC
//! programs alike; see `inspector-ebpf/src/classify.rs`). Not pinned: each
//! daemon start writes it. Until it is written every setting reads as 0,
//! which is the safe default (`unparsable = "drop"`, port 25 inspected).

use anyhow::{Context, Result, ensure};
use aya::{Ebpf, maps::Array};
use inspector_common::{
    CLASSIFY_CONFIG_MAP, ClassifyConfig, INSPECT_MAX_PORTS, UNPARSABLE_DROP, UNPARSABLE_PASS,
};

use crate::config::{PacketPolicy, Unparsable};

/// Writes the policy's `[packets]` settings and its inspected ports
/// (`[esmtp] ports`) for both programs.
pub fn configure(ebpf: &mut Ebpf, policy: &PacketPolicy, ports: &[u16]) -> Result<()> {
    let mut config: Array<_, ClassifyConfig> = Array::try_from(
        ebpf.map_mut(CLASSIFY_CONFIG_MAP)
            .context("the object has no classifier settings map")?,
    )?;
    let unparsable = match policy.unparsable {
        Unparsable::Drop => UNPARSABLE_DROP,
        Unparsable::Pass => UNPARSABLE_PASS,
    };
    config
        .set(0, settings(unparsable, ports)?, 0)
        .context("writing the classifier's settings")?;
    Ok(())
}

/// The settings as the programs read them (the policy checked the ports;
/// this only refuses what the map cannot hold).
fn settings(unparsable: u32, ports: &[u16]) -> Result<ClassifyConfig> {
    ensure!(
        !ports.is_empty() && ports.len() <= INSPECT_MAX_PORTS && !ports.contains(&0),
        "the classifier takes 1 to {INSPECT_MAX_PORTS} ports from 1 to 65535, not {ports:?}"
    );
    let mut slots = [0; INSPECT_MAX_PORTS];
    slots[..ports.len()].copy_from_slice(ports);
    Ok(ClassifyConfig {
        unparsable,
        ports: slots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zero_settings_inspect_port_25_alone() {
        let zero = ClassifyConfig::default();
        assert!(zero.inspects(25));
        assert!(!zero.inspects(587) && !zero.inspects(0));
    }

    #[test]
    fn listed_ports_replace_port_25() {
        let c = settings(UNPARSABLE_DROP, &[587]).unwrap();
        assert!(c.inspects(587));
        assert!(!c.inspects(25) && !c.inspects(0) && !c.inspects(2525));
        let c = settings(UNPARSABLE_DROP, &[25, 587]).unwrap();
        assert!(c.inspects(25) && c.inspects(587));
    }

    #[test]
    fn refuses_what_the_map_cannot_hold() {
        assert!(settings(0, &[]).is_err());
        assert!(settings(0, &[0]).is_err());
        assert!(settings(0, &[1; INSPECT_MAX_PORTS + 1]).is_err());
    }
}
