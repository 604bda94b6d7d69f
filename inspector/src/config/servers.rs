//! `[[server]]`: the protected servers and their connection limits.

use std::net::IpAddr;

use inspector_esmtp::policy::FieldError;
use serde::Deserialize;
use toml::Spanned;

use super::{Section, field_error};

/// A protected server and its connection limits (0 = unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server {
    pub address: IpAddr,
    pub max_conns: u32,
    pub max_embryonic: u32,
    pub per_client_max: u32,
    pub per_client_embryonic_max: u32,
    pub on_embryonic_limit: OnEmbryonicLimit,
}

/// What happens to a SYN over an embryonic limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnEmbryonicLimit {
    /// Dropped and counted.
    Drop,
    /// TCP intercept, the firewall's behaviour: the kernel answers with a
    /// SYN cookie and opens the server side only for clients that return
    /// it.
    #[default]
    Intercept,
}

impl OnEmbryonicLimit {
    /// As the policy file spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Intercept => "intercept",
        }
    }
}

/// The `[[server]]` entries as written.
#[derive(Default, Deserialize)]
#[serde(transparent)]
pub struct Servers(Vec<ServerEntry>);

// Not `#[serde(flatten)]` into `Server`: flattening loses the spans that
// errors need for their line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ServerEntry {
    address: Spanned<String>,
    max_conns: Option<Spanned<u32>>,
    /// `max-conns` under the firewall's name (`set connection conn-max`).
    conn_max: Option<Spanned<u32>>,
    max_embryonic: Option<Spanned<u32>>,
    /// `max-embryonic` under the firewall's name.
    embryonic_conn_max: Option<Spanned<u32>>,
    #[serde(default)]
    per_client_max: u32,
    #[serde(default)]
    per_client_embryonic_max: u32,
    #[serde(default)]
    on_embryonic_limit: OnEmbryonicLimit,
}

/// A limit written under our name or the firewall's (not both); 0 when
/// neither.
fn either(
    i: usize,
    ours: &str,
    value: &Option<Spanned<u32>>,
    theirs: &str,
    alias: &Option<Spanned<u32>>,
) -> Result<u32, FieldError> {
    match (value, alias) {
        (Some(_), Some(a)) => Err(field_error(
            a,
            format!("server[{i}].{theirs}"),
            format!(
                "`{theirs}` is the firewall's name of `{ours}`, which this server sets too: keep one"
            ),
        )),
        (Some(v), None) | (None, Some(v)) => Ok(*v.get_ref()),
        (None, None) => Ok(0),
    }
}

impl Section for Servers {
    type Compiled = Vec<Server>;

    fn compile(&self) -> Result<Vec<Server>, FieldError> {
        let mut servers: Vec<Server> = Vec::with_capacity(self.0.len());
        for (i, entry) in self.0.iter().enumerate() {
            let text = entry.address.get_ref();
            let field = format!("server[{i}].address");
            let address: IpAddr = text.trim().parse().map_err(|_| {
                field_error(
                    &entry.address,
                    &field,
                    format!("`{text}` is not an IP address (one host, no prefix length)"),
                )
            })?;
            if servers.iter().any(|s| s.address == address) {
                return Err(field_error(
                    &entry.address,
                    field,
                    format!("{address} is listed twice"),
                ));
            }
            let max_conns = either(
                i,
                "max-conns",
                &entry.max_conns,
                "conn-max",
                &entry.conn_max,
            )?;
            let max_embryonic = either(
                i,
                "max-embryonic",
                &entry.max_embryonic,
                "embryonic-conn-max",
                &entry.embryonic_conn_max,
            )?;
            servers.push(Server {
                address,
                max_conns,
                max_embryonic,
                per_client_max: entry.per_client_max,
                per_client_embryonic_max: entry.per_client_embryonic_max,
                on_embryonic_limit: entry.on_embryonic_limit,
            });
        }
        // After the entries' own checks, at the first server too many.
        let max = inspector_common::MAX_SERVERS as usize;
        if let Some(over) = self.0.get(max) {
            return Err(field_error(
                &over.address,
                "server",
                format!("{} servers; at most {max}", servers.len()),
            ));
        }
        Ok(servers)
    }
}
