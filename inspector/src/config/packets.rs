//! `[packets]`: what the kernel classifier does with packets it cannot
//! parse. (Fragments need no setting: TCP fragments to port 25 or to a
//! protected server are always dropped, other fragments always pass.)

use inspector_esmtp::policy::FieldError;
use serde::Deserialize;

use super::Section;

/// What happens to a packet whose transport header the classifier cannot
/// find (a header cut short or impossible, an IPv6 extension chain longer
/// than it walks, an encapsulation it does not look into) when it could be
/// TCP to port 25 or is addressed to a protected server. Other such
/// packets are always passed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unparsable {
    /// Dropped and counted: it cannot reach the server uninspected.
    #[default]
    Drop,
    /// Passed and counted `malformed`, as before this setting existed.
    Pass,
}

impl Unparsable {
    /// As the policy file spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Pass => "pass",
        }
    }
}

/// The classifier's settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketPolicy {
    pub unparsable: Unparsable,
}

/// The `[packets]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PacketsSection {
    #[serde(default)]
    unparsable: Unparsable,
}

impl Section for PacketsSection {
    type Compiled = PacketPolicy;

    fn compile(&self) -> Result<PacketPolicy, FieldError> {
        Ok(PacketPolicy {
            unparsable: self.unparsable,
        })
    }
}
