//! `[timeouts]`: how long the flow table keeps flows that saw no packet.

use std::time::Duration;

use inspector_esmtp::policy::FieldError;
use serde::Deserialize;
use toml::Spanned;

use super::{Section, field_error};

/// How long the sweeper keeps flows that saw no packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowTimeouts {
    /// SYN seen, handshake not completed.
    pub embryonic: Duration,
    /// An established connection.
    pub idle: Duration,
    /// A connection after its first FIN.
    pub half_closed: Duration,
}

impl Default for FlowTimeouts {
    /// The firewall's defaults.
    fn default() -> Self {
        Self {
            embryonic: Duration::from_secs(30),
            idle: Duration::from_secs(3600),
            half_closed: Duration::from_secs(600),
        }
    }
}

/// The `[timeouts]` table as written: seconds, each at least 1.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TimeoutsSection {
    embryonic: Option<Spanned<u64>>,
    idle: Option<Spanned<u64>>,
    half_closed: Option<Spanned<u64>>,
}

impl Section for TimeoutsSection {
    type Compiled = FlowTimeouts;

    fn compile(&self) -> Result<FlowTimeouts, FieldError> {
        let mut timeouts = FlowTimeouts::default();
        for (name, value, slot) in [
            ("embryonic", &self.embryonic, &mut timeouts.embryonic),
            ("idle", &self.idle, &mut timeouts.idle),
            ("half-closed", &self.half_closed, &mut timeouts.half_closed),
        ] {
            let Some(value) = value else { continue };
            if *value.get_ref() == 0 {
                return Err(field_error(
                    value,
                    format!("timeouts.{name}"),
                    "must be at least 1 (seconds)",
                ));
            }
            *slot = Duration::from_secs(*value.get_ref());
        }
        Ok(timeouts)
    }
}
