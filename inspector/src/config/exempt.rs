//! `[[exempt]]`: hosts and networks never inspected.

use std::net::IpAddr;

use inspector_esmtp::policy::FieldError;
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::{Section, field_error};

/// The `[[exempt]]` entries as written.
#[derive(Default, Deserialize)]
#[serde(transparent)]
pub struct Exemptions(Vec<Exemption>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Exemption {
    network: Spanned<String>,
}

impl Section for Exemptions {
    type Compiled = Vec<IpNet>;

    fn compile(&self) -> Result<Vec<IpNet>, FieldError> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                parse_network(rule.network.get_ref())
                    .map_err(|m| field_error(&rule.network, format!("exempt[{i}].network"), m))
            })
            .collect()
    }
}

/// Parses an exemption network: a CIDR (`198.18.1.0/24`, `2001:2::/48`) or a
/// bare address (a host: /32 or /128). Host bits must be zero, as `ip route`
/// requires, so a typo does not silently exempt a different network.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match text.parse::<IpAddr>() {
            Ok(addr) => IpNet::from(addr),
            Err(_) => {
                return Err(format!(
                    "`{text}` is not a network: expected an IPv4 or IPv6 address with an optional /prefix, e.g. 198.18.1.26/32 or 2001:2::/48"
                ));
            }
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "`{text}` has host bits set; the network is {}",
            net.trunc()
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cidrs_and_hosts() {
        assert_eq!(
            parse_network("198.18.1.26/32").unwrap().to_string(),
            "198.18.1.26/32"
        );
        assert_eq!(
            parse_network("198.18.1.26").unwrap().to_string(),
            "198.18.1.26/32"
        );
        assert_eq!(
            parse_network("2001:2::/48").unwrap().to_string(),
            "2001:2::/48"
        );
        assert_eq!(
            parse_network(" 2001:2::1 ").unwrap().to_string(),
            "2001:2::1/128"
        );
        assert_eq!(parse_network("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
    }

    #[test]
    fn rejects_bad_networks_clearly() {
        for bad in [
            "",
            "198.18.1",
            "198.18.1.0/33",
            "host",
            "2001:2::/129",
            "198.18.1.0/-1",
        ] {
            let err = parse_network(bad).unwrap_err();
            assert!(err.contains("is not a network"), "{bad}: {err}");
        }
        let err = parse_network("198.18.1.26/24").unwrap_err();
        assert!(
            err.contains("host bits") && err.contains("198.18.1.0/24"),
            "{err}"
        );
    }
}
