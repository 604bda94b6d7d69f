//! The exemption ACL as userspace sees it: CIDR rules in the pinned LPM
//! tries, changed live by the CLI and replaced from the policy by the daemon.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context, Result, bail};
use aya::maps::{
    MapData,
    lpm_trie::{Key, LpmTrie},
};
use inspector_common::{ExemptRule, RuleOrigin, maps};
use ipnet::IpNet;
use serde::Serialize;

use super::bpffs;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Rule {
    pub network: IpNet,
    pub origin: Origin,
    /// Packets it exempted since it was made.
    pub hits: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Policy,
    Live,
}

impl Origin {
    fn to_value(self) -> ExemptRule {
        let origin = match self {
            Origin::Policy => RuleOrigin::Policy,
            Origin::Live => RuleOrigin::Live,
        };
        ExemptRule {
            origin: origin as u32,
            _pad: 0,
            hits: 0,
        }
    }

    fn from_value(value: ExemptRule) -> Self {
        if value.origin == RuleOrigin::Policy as u32 {
            Origin::Policy
        } else {
            Origin::Live
        }
    }
}

/// The two pinned tries, opened for reading and writing.
pub struct ExemptTable {
    v4: LpmTrie<MapData, [u8; 4], ExemptRule>,
    v6: LpmTrie<MapData, [u8; 16], ExemptRule>,
}

impl ExemptTable {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let v4 = bpffs::open_map(pin_dir, maps::EXEMPT_V4)?.try_into()?;
        let v6 = bpffs::open_map(pin_dir, maps::EXEMPT_V6)?.try_into()?;
        Ok(Self { v4, v6 })
    }

    pub fn list(&self) -> Result<Vec<Rule>> {
        let mut rules = Vec::new();
        for entry in self.v4.iter() {
            let (key, value) = entry?;
            let addr = IpAddr::V4(Ipv4Addr::from(key.data()));
            rules.push(rule(addr, key.prefix_len(), value)?);
        }
        for entry in self.v6.iter() {
            let (key, value) = entry?;
            let addr = IpAddr::V6(Ipv6Addr::from(key.data()));
            rules.push(rule(addr, key.prefix_len(), value)?);
        }
        rules.sort();
        Ok(rules)
    }

    /// The origin of the rule for exactly `net`, if there is one.
    pub fn origin(&self, net: &IpNet) -> Result<Option<Origin>> {
        self.contains(net)
    }

    fn contains(&self, net: &IpNet) -> Result<Option<Origin>> {
        let found = match net {
            IpNet::V4(n) => self
                .v4
                .get(&Key::new(n.prefix_len().into(), n.addr().octets()), 0),
            IpNet::V6(n) => self
                .v6
                .get(&Key::new(n.prefix_len().into(), n.addr().octets()), 0),
        };
        match found {
            Ok(value) => Ok(Some(Origin::from_value(value))),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Adds a rule; an existing rule keeps its origin. Returns false if the
    /// network was already exempt.
    pub fn add(&mut self, net: &IpNet, origin: Origin) -> Result<bool> {
        if self.contains(net)?.is_some() {
            return Ok(false);
        }
        let value = origin.to_value();
        match net {
            IpNet::V4(n) => self.v4.insert(
                &Key::new(n.prefix_len().into(), n.addr().octets()),
                value,
                0,
            ),
            IpNet::V6(n) => self.v6.insert(
                &Key::new(n.prefix_len().into(), n.addr().octets()),
                value,
                0,
            ),
        }
        .with_context(|| format!("adding exemption {net} (is the table full?)"))?;
        Ok(true)
    }

    /// Removes a rule. Returns false if there was no such rule.
    pub fn remove(&mut self, net: &IpNet) -> Result<bool> {
        let result = match net {
            IpNet::V4(n) => self
                .v4
                .remove(&Key::new(n.prefix_len().into(), n.addr().octets())),
            IpNet::V6(n) => self
                .v6
                .remove(&Key::new(n.prefix_len().into(), n.addr().octets())),
        };
        match result {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("removing exemption {net}")),
        }
    }

    /// Makes the policy-origin rules equal to `policy`, leaving live rules
    /// alone: the daemon calls this on start so that a rule dropped from the
    /// policy file stops applying, while `exempt add` rules survive.
    pub fn apply_policy(&mut self, policy: &[IpNet]) -> Result<()> {
        let wanted: BTreeSet<IpNet> = policy.iter().copied().collect();
        for rule in self.list()? {
            if rule.origin == Origin::Policy && !wanted.contains(&rule.network) {
                self.remove(&rule.network)?;
            }
        }
        for net in &wanted {
            self.add(net, Origin::Policy)?;
        }
        Ok(())
    }
}

fn rule(addr: IpAddr, prefix_len: u32, value: ExemptRule) -> Result<Rule> {
    let Ok(prefix) = u8::try_from(prefix_len) else {
        bail!("corrupt exemption entry: prefix length {prefix_len}");
    };
    Ok(Rule {
        network: IpNet::new(addr, prefix)?,
        origin: Origin::from_value(value),
        hits: value.hits,
    })
}
