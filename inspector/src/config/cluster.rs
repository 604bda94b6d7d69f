//! `[cluster]`: this gateway is member `member` of `members` behind an ECMP
//! router (docs/cluster.md). Each protected server's connection and
//! embryonic limits are divided across the members, so the members'
//! shares add up to the limit the policy gives.

use inspector_esmtp::policy::FieldError;
use serde::Deserialize;
use toml::Spanned;

use super::{Section, field_error};

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

/// The `[cluster]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    members: Spanned<u32>,
    member: Option<Spanned<u32>>,
}

impl Section for ClusterSection {
    type Compiled = Membership;

    fn compile(&self) -> Result<Membership, FieldError> {
        let members = *self.members.get_ref();
        if members == 0 {
            return Err(field_error(
                &self.members,
                "cluster.members",
                "must be at least 1 (the gateways behind the router)",
            ));
        }
        let member = match &self.member {
            Some(m) if (1..=members).contains(m.get_ref()) => *m.get_ref(),
            Some(m) => {
                return Err(field_error(
                    m,
                    "cluster.member",
                    format!("must be from 1 to members ({members})"),
                ));
            }
            None if members == 1 => 1,
            None => {
                return Err(field_error(
                    &self.members,
                    "cluster.member",
                    "missing: with more than one member, say which one this gateway is (`member = 1` …)",
                ));
            }
        };
        Ok(Membership { members, member })
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

    #[test]
    fn parses_the_table_and_defaults_to_one_member() {
        let p = parse("[cluster]\nmembers = 3\nmember = 2\n").unwrap();
        assert_eq!(
            p.cluster,
            Membership {
                members: 3,
                member: 2
            }
        );
        assert_eq!(parse("").unwrap().cluster, Membership::default());
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
                "[cluster]\nmembers = 2\n",
                (2, 11),
                "cluster.member",
                "missing",
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
        let err = parse("[cluster]\nmembers = 2\nmembre = 1\n").unwrap_err();
        assert!(err.to_string().starts_with("p.toml:3:"), "{err}");
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
