//! `[cluster]`: this gateway is one of the members behind an ECMP router
//! (docs/cluster.md). Each protected server's connection and embryonic
//! limits are divided across the members, so the members' shares add up to
//! the limit the policy gives.
//!
//! One file serves every member: `members` lists each member's address and
//! a gateway is the member whose address is one of its own (found at start
//! and on reload, [`Cluster::membership`]). `members = N` with the index
//! from the command line (`--cluster-member`) does too; `member = i` in the
//! file is still read, for files written that way.

use std::net::IpAddr;

use inspector_esmtp::policy::FieldError;
use serde::Deserialize;
use toml::Spanned;

use super::{Section, field_error};

/// The environment variable `inspector run --cluster-member` reads.
pub const MEMBER_ENV: &str = "INSPECTOR_CLUSTER_MEMBER";

/// Where this gateway stands in its cluster; one member alone by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    pub members: u32,
    /// From 1 to `members`.
    pub member: u32,
}

impl Default for Membership {
    fn default() -> Self {
        Self {
            members: 1,
            member: 1,
        }
    }
}

impl Membership {
    /// This member's share of a cluster-wide `limit` (0: unlimited, and so
    /// stays). The remainder goes one each to the first members, so the
    /// shares add up to `limit` exactly; a limit below the member count
    /// still gives each member 1 (0 would mean unlimited), the one case
    /// where the shares add up to more (`members` at most).
    pub fn share(&self, limit: u32) -> u32 {
        if limit == 0 {
            return 0;
        }
        let extra = u32::from(self.member <= limit % self.members);
        (limit / self.members + extra).max(1)
    }
}

/// The `[cluster]` table as compiled: who the members are, not yet which
/// one this host is (that needs the host's addresses or the command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub members: u32,
    /// Each member's address, member 1 first; empty with `members = N`.
    pub addresses: Vec<IpAddr>,
    /// `member = i` in the file.
    pub member: Option<u32>,
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            members: 1,
            addresses: Vec::new(),
            member: None,
        }
    }
}

impl Cluster {
    /// Which member this host is: `given` (`--cluster-member`), else the
    /// file's `member`, else the one listed address that `is_local`.
    pub fn membership(
        &self,
        given: Option<u32>,
        is_local: impl Fn(IpAddr) -> bool,
    ) -> Result<Membership, String> {
        let members = self.members;
        if let Some(member) = given.or(self.member) {
            if !(1..=members).contains(&member) {
                return Err(format!(
                    "cluster member {member}: must be from 1 to members ({members})"
                ));
            }
            return Ok(Membership { members, member });
        }
        if self.addresses.is_empty() {
            if members == 1 {
                return Ok(Membership::default());
            }
            return Err(format!(
                "cluster.members = {members}: say which member this gateway is \
                 (`inspector run --cluster-member I` or {MEMBER_ENV}=I), \
                 or list each member's address (`members = [\"198.18.0.1\", …]`)"
            ));
        }
        let list = |ips: &mut dyn Iterator<Item = &IpAddr>| {
            ips.map(ToString::to_string).collect::<Vec<_>>().join(", ")
        };
        let mine: Vec<usize> = (0..self.addresses.len())
            .filter(|&i| is_local(self.addresses[i]))
            .collect();
        match mine[..] {
            [i] => Ok(Membership {
                members,
                member: i as u32 + 1,
            }),
            [] => Err(format!(
                "cluster.members: none of {} is an address of this host \
                 (or say which member it is: --cluster-member I)",
                list(&mut self.addresses.iter())
            )),
            _ => Err(format!(
                "cluster.members: {} are all addresses of this host; \
                 each member's address must be on that member alone",
                list(&mut mine.iter().map(|&i| &self.addresses[i]))
            )),
        }
    }
}

/// `members` as written: how many, or each one's address.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a member count (members = 2) or each member's address (members = [\"198.18.0.1\", \"198.18.0.2\"])"
)]
enum Members {
    Count(u32),
    Addresses(Vec<String>),
}

/// The `[cluster]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    members: Spanned<Members>,
    member: Option<Spanned<u32>>,
}

impl Section for ClusterSection {
    type Compiled = Cluster;

    fn compile(&self) -> Result<Cluster, FieldError> {
        let at = |message: String| field_error(&self.members, "cluster.members", message);
        let addresses = match self.members.get_ref() {
            Members::Count(0) => {
                return Err(at(
                    "must be at least 1 (the gateways behind the router)".into()
                ));
            }
            Members::Count(_) => Vec::new(),
            Members::Addresses(list) if list.is_empty() => {
                return Err(at("lists no member: give each member's address".into()));
            }
            Members::Addresses(list) => {
                let mut addresses: Vec<IpAddr> = Vec::with_capacity(list.len());
                for (i, text) in list.iter().enumerate() {
                    let ip = text.parse().map_err(|_| {
                        at(format!("member {}: {text:?} is not an IP address", i + 1))
                    })?;
                    if let Some(first) = addresses.iter().position(|a| *a == ip) {
                        return Err(at(format!(
                            "members {} and {} are both {ip}",
                            first + 1,
                            i + 1
                        )));
                    }
                    addresses.push(ip);
                }
                addresses
            }
        };
        let members = match self.members.get_ref() {
            Members::Count(n) => *n,
            Members::Addresses(_) => addresses.len() as u32,
        };
        let member = match &self.member {
            Some(m) if (1..=members).contains(m.get_ref()) => Some(*m.get_ref()),
            Some(m) => {
                return Err(field_error(
                    m,
                    "cluster.member",
                    format!("must be from 1 to members ({members})"),
                ));
            }
            None => None,
        };
        Ok(Cluster {
            members,
            addresses,
            member,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Policy;

    fn parse(text: &str) -> Result<Policy, crate::config::ConfigError> {
        Policy::parse(Path::new("p.toml"), text)
    }

    const TWO: &str = "[cluster]\nmembers = [\"198.18.0.1\", \"2001:2::1\"]\n";

    #[test]
    fn parses_both_shapes_and_defaults_to_one_member() {
        let p = parse("[cluster]\nmembers = 3\nmember = 2\n").unwrap();
        assert_eq!(
            p.cluster.membership(None, |_| false),
            Ok(Membership {
                members: 3,
                member: 2
            })
        );
        let p = parse(TWO).unwrap();
        assert_eq!(p.cluster.members, 2);
        assert_eq!(
            p.cluster.addresses,
            [
                "198.18.0.1".parse::<IpAddr>().unwrap(),
                "2001:2::1".parse().unwrap()
            ]
        );
        assert_eq!(parse("").unwrap().cluster, Cluster::default());
        assert_eq!(
            Cluster::default().membership(None, |_| false),
            Ok(Membership::default())
        );
    }

    #[test]
    fn a_member_is_the_one_whose_address_is_local() {
        let c = parse(TWO).unwrap().cluster;
        let only = |ip: &'static str| move |a: IpAddr| a == ip.parse::<IpAddr>().unwrap();
        assert_eq!(c.membership(None, only("2001:2::1")).unwrap().member, 2);
        assert_eq!(c.membership(None, only("198.18.0.1")).unwrap().member, 1);
        // The command line wins over the addresses.
        assert_eq!(c.membership(Some(2), only("198.18.0.1")).unwrap().member, 2);
    }

    #[test]
    fn a_member_that_cannot_be_told_is_a_clear_error() {
        let c = parse(TWO).unwrap().cluster;
        let none = c.membership(None, |_| false).unwrap_err();
        assert!(
            none.contains("none of 198.18.0.1, 2001:2::1 is an address of this host"),
            "{none}"
        );
        let both = c.membership(None, |_| true).unwrap_err();
        assert!(
            both.contains("198.18.0.1, 2001:2::1 are all addresses of this host"),
            "{both}"
        );
        let out = c.membership(Some(3), |_| false).unwrap_err();
        assert!(out.contains("must be from 1 to members (2)"), "{out}");
        let count = parse("[cluster]\nmembers = 2\n").unwrap().cluster;
        let unsaid = count.membership(None, |_| true).unwrap_err();
        assert!(unsaid.contains("--cluster-member I"), "{unsaid}");
        assert!(unsaid.contains(MEMBER_ENV), "{unsaid}");
        assert_eq!(count.membership(Some(2), |_| false).unwrap().member, 2);
    }

    #[test]
    fn bad_tables_name_the_line_and_field() {
        for (text, at, field, says) in [
            (
                "[cluster]\nmembers = 0\n",
                (2, 11),
                "cluster.members",
                "at least 1",
            ),
            (
                "[cluster]\nmembers = 2\nmember = 3\n",
                (3, 10),
                "cluster.member",
                "from 1 to members (2)",
            ),
            (
                "[cluster]\nmembers = 2\nmember = 0\n",
                (3, 10),
                "cluster.member",
                "from 1 to",
            ),
            (
                "[cluster]\nmembers = [\"198.18.0.1\"]\nmember = 2\n",
                (3, 10),
                "cluster.member",
                "from 1 to members (1)",
            ),
            (
                "[cluster]\nmembers = []\n",
                (2, 11),
                "cluster.members",
                "lists no member",
            ),
            (
                "[cluster]\nmembers = [\"198.18.0.1\", \"gw2\"]\n",
                (2, 11),
                "cluster.members",
                "member 2: \"gw2\" is not an IP address",
            ),
            (
                "[cluster]\nmembers = [\"198.18.0.1\", \"198.18.0.1\"]\n",
                (2, 11),
                "cluster.members",
                "members 1 and 2 are both 198.18.0.1",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(
                (err.line, err.column, err.field.as_str()),
                (at.0, at.1, field),
                "{err}"
            );
            assert!(err.message.contains(says), "{err}");
        }
        for text in [
            "[cluster]\nmembers = 2\nmembre = 1\n",
            "[cluster]\nmembers = -1\n",
            "[cluster]\nmembers = \"198.18.0.1\"\n",
            "[cluster]\nmember = 1\n",
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.to_string().starts_with("p.toml:"), "{err}");
        }
        let err = parse("[cluster]\nmembers = -1\n").unwrap_err();
        assert!(err.to_string().contains("each member's address"), "{err}");
    }

    #[test]
    fn shares_add_up_to_the_limit() {
        for members in 1..=7 {
            for limit in [members, 10, 11, 100, 1001] {
                let total: u32 = (1..=members)
                    .map(|member| Membership { members, member }.share(limit))
                    .sum();
                assert_eq!(total, limit, "{limit} over {members}");
            }
        }
    }

    #[test]
    fn unlimited_stays_unlimited_and_small_limits_give_one_each() {
        let m = Membership {
            members: 4,
            member: 4,
        };
        assert_eq!(m.share(0), 0);
        assert_eq!(m.share(2), 1);
        assert_eq!(Membership::default().share(50), 50);
    }
}
