//! What the firewall's addresses mean: `name` aliases, `object network`
//! and `object-group network` definitions, the address translations
//! (`static`, object NAT, twice NAT), and `access-list` entries.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;

use super::lines::{Line, Node};

/// Which address of a translated host the policy uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AddressSide {
    /// The address on the host's own side (`static (inside,outside) MAPPED
    /// REAL`: REAL): the inspector stands where the firewall stood and the
    /// translation is gone or done behind it.
    #[default]
    Real,
    /// The published address (MAPPED): the translation is still done,
    /// behind the inspector.
    Mapped,
}

impl AddressSide {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Real => "real",
            Self::Mapped => "mapped",
        }
    }
}

/// One address translation, host or subnet: `real` is published as
/// `mapped`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nat {
    pub real: IpNet,
    pub mapped: IpNet,
    pub line: usize,
}

/// Names, objects and translations of a configuration.
#[derive(Debug, Default)]
pub struct Objects {
    /// `name ADDRESS NAME`.
    pub names: HashMap<String, IpAddr>,
    /// `object network` and `object-group network`, resolved.
    pub networks: HashMap<String, Vec<IpNet>>,
    pub nats: Vec<Nat>,
}

/// One side of an access-list entry (or a `match` address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// `any` (both families), `any4`, `any6`.
    Any {
        v4: bool,
        v6: bool,
    },
    Nets(Vec<IpNet>),
    /// `interface NAME`: the firewall's own address there.
    Interface(String),
}

impl Spec {
    pub fn is_any(&self) -> bool {
        matches!(self, Self::Any { .. })
    }

    /// The networks `any` stands for.
    pub fn any_nets(v4: bool, v6: bool) -> Vec<IpNet> {
        let mut out = Vec::new();
        if v4 {
            out.push(IpNet::new(Ipv4Addr::UNSPECIFIED.into(), 0).expect("/0"));
        }
        if v6 {
            out.push(IpNet::new(Ipv6Addr::UNSPECIFIED.into(), 0).expect("/0"));
        }
        out
    }
}

/// A port condition of an access-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ports {
    Any,
    Eq(u16),
    Neq(u16),
    Lt(u16),
    Gt(u16),
    Range(u16, u16),
    /// `object-group NAME` of services: not resolved.
    Group(String),
}

impl Ports {
    /// Whether `port` matches; `None` when it cannot be told.
    pub fn matches(&self, port: u16) -> Option<bool> {
        Some(match *self {
            Self::Any => true,
            Self::Eq(p) => port == p,
            Self::Neq(p) => port != p,
            Self::Lt(p) => port < p,
            Self::Gt(p) => port > p,
            Self::Range(a, b) => (a..=b).contains(&port),
            Self::Group(_) => return None,
        })
    }
}

/// One `access-list NAME [line N] [extended] permit|deny …` entry.
#[derive(Debug, Clone)]
pub struct AclEntry {
    pub line: Line,
    pub permit: bool,
    /// `ip`, `tcp`, or another protocol (lower case).
    pub protocol: String,
    pub src: Spec,
    pub src_ports: Ports,
    pub dst: Spec,
    pub dst_ports: Ports,
    /// `inactive`: the entry does nothing.
    pub inactive: bool,
    /// What the reading assumed (e.g. a bare address read as a host).
    pub notes: Vec<String>,
}

impl AclEntry {
    /// Whether the entry can match TCP to `port`.
    pub fn can_match_tcp(&self, port: u16) -> Option<bool> {
        match self.protocol.as_str() {
            "ip" => Some(true),
            "tcp" | "tcp-udp" => self.dst_ports.matches(port),
            _ => Some(false),
        }
    }
}

/// The prefix length of a dotted IPv4 netmask (`255.255.255.0` → 24).
pub fn mask_len(mask: &str) -> Option<u8> {
    let m: Ipv4Addr = mask.parse().ok()?;
    let bits = u32::from(m);
    let len = bits.leading_ones();
    (bits.checked_shl(len).unwrap_or(0) == 0).then_some(len as u8)
}

/// A well-known port name of the firewall, or a number.
pub fn port(word: &str) -> Option<u16> {
    if let Ok(n) = word.parse() {
        return Some(n);
    }
    Some(match word.to_ascii_lowercase().as_str() {
        "smtp" => 25,
        "ftp" => 21,
        "ssh" => 22,
        "telnet" => 23,
        "domain" => 53,
        "www" | "http" => 80,
        "pop3" => 110,
        "imap4" => 143,
        "https" => 443,
        "ldap" => 389,
        "ldaps" => 636,
        _ => return None,
    })
}

/// `hh:mm:ss` (or `mm:ss`, or seconds) as seconds.
pub fn duration(word: &str) -> Option<u64> {
    let mut total = 0u64;
    for part in word.split(':') {
        total = total.checked_mul(60)?.checked_add(part.parse().ok()?)?;
    }
    Some(total)
}

impl Objects {
    /// An address: a literal or a `name`.
    pub fn address(&self, word: &str) -> Option<IpAddr> {
        word.parse().ok().or_else(|| self.names.get(word).copied())
    }

    /// Reads `name`, `object network`, `object-group network` and the
    /// translations (`static`, object NAT, twice NAT). Returns the lines it
    /// could not read, with why.
    pub fn collect(roots: &[Node]) -> (Self, Vec<(usize, String)>) {
        let mut objects = Self::default();
        let mut problems = Vec::new();
        for node in roots {
            let l = &node.line;
            if l.starts(&["name"]) && l.words.len() >= 3 {
                match l.word(1).parse::<IpAddr>() {
                    Ok(a) => {
                        objects.names.insert(l.word(2).to_string(), a);
                    }
                    Err(_) => problems.push((l.no, format!("`{}`: not an address", l.word(1)))),
                }
            }
        }
        // Objects may refer to each other: a few passes resolve any order.
        for _ in 0..4 {
            for node in roots {
                if node.line.starts(&["object", "network"]) {
                    objects.object_network(node, &mut Vec::new());
                } else if node.line.starts(&["object-group", "network"]) {
                    objects.object_group(node, &mut Vec::new());
                }
            }
        }
        for node in roots {
            if node.line.starts(&["object", "network"]) {
                objects.object_network(node, &mut problems);
            } else if node.line.starts(&["object-group", "network"]) {
                objects.object_group(node, &mut problems);
            }
        }
        for node in roots {
            if node.line.starts(&["object", "network"]) {
                objects.object_nat(node, &mut problems);
            } else if node.line.starts(&["nat"]) {
                objects.twice_nat(&node.line, &mut problems);
            }
        }
        (objects, problems)
    }

    fn object_network(&mut self, node: &Node, problems: &mut Vec<(usize, String)>) {
        let name = node.line.word(2).to_string();
        let mut nets = Vec::new();
        for child in &node.children {
            let c = &child.line;
            let net = match c.word(0).to_ascii_lowercase().as_str() {
                "host" => self.address(c.word(1)).map(IpNet::from),
                "subnet" => subnet(self, c.word(1), c.word(2)),
                "range" => {
                    problems.push((c.no, "address ranges are not translated".into()));
                    continue;
                }
                "fqdn" => {
                    problems.push((
                        c.no,
                        "FQDN objects are not translated (no DNS lookups)".into(),
                    ));
                    continue;
                }
                _ => continue,
            };
            match net {
                Some(n) => nets.push(n),
                None => problems.push((c.no, format!("`{}`: not an address", c.text))),
            }
        }
        self.networks.insert(name, nets);
    }

    fn object_group(&mut self, node: &Node, problems: &mut Vec<(usize, String)>) {
        let name = node.line.word(2).to_string();
        let mut nets = Vec::new();
        for child in &node.children {
            let c = &child.line;
            let found = match c.word(0).to_ascii_lowercase().as_str() {
                "network-object" => match c.word(1).to_ascii_lowercase().as_str() {
                    "host" => self.address(c.word(2)).map(|a| vec![IpNet::from(a)]),
                    "object" => self.networks.get(c.word(2)).cloned(),
                    _ => subnet(self, c.word(1), c.word(2)).map(|n| vec![n]),
                },
                "group-object" => self.networks.get(c.word(1)).cloned(),
                _ => continue,
            };
            match found {
                Some(mut n) => nets.append(&mut n),
                None => problems.push((c.no, format!("`{}`: not resolved", c.text))),
            }
        }
        self.networks.insert(name, nets);
    }

    /// `object network X` / `host A` / `nat (in,out) static B`.
    fn object_nat(&mut self, node: &Node, problems: &mut Vec<(usize, String)>) {
        let real = self.networks.get(node.line.word(2)).cloned();
        for child in &node.children {
            let c = &child.line;
            if !c.starts(&["nat"]) {
                continue;
            }
            let Some(at) = c
                .words
                .iter()
                .position(|w| w.eq_ignore_ascii_case("static"))
            else {
                problems.push((
                    c.no,
                    "dynamic NAT: no published address to map, not translated".into(),
                ));
                continue;
            };
            let mapped_word = c.word(at + 1);
            let mapped = self
                .networks
                .get(mapped_word)
                .and_then(|n| n.first().copied())
                .or_else(|| self.address(mapped_word).map(IpNet::from));
            match (real.as_ref().and_then(|r| r.first()), mapped) {
                (Some(&real), Some(mapped)) => {
                    let mapped = if mapped.prefix_len() == mapped.max_prefix_len() {
                        IpNet::new(mapped.addr(), real.prefix_len()).unwrap_or(mapped)
                    } else {
                        mapped
                    };
                    self.nats.push(Nat {
                        real,
                        mapped,
                        line: c.no,
                    })
                }
                _ => problems.push((
                    c.no,
                    format!(
                        "`{}`: the addresses are not resolved, not translated",
                        c.text
                    ),
                )),
            }
        }
    }

    /// `nat (in,out) source static REAL MAPPED …`.
    fn twice_nat(&mut self, l: &Line, problems: &mut Vec<(usize, String)>) {
        let Some(at) = l.words.windows(2).position(|w| {
            w[0].eq_ignore_ascii_case("source") && w[1].eq_ignore_ascii_case("static")
        }) else {
            problems.push((
                l.no,
                "dynamic NAT: no published address to map, not translated".into(),
            ));
            return;
        };
        let net = |w: &str| {
            self.networks
                .get(w)
                .and_then(|n| n.first().copied())
                .or_else(|| self.address(w).map(IpNet::from))
        };
        match (net(l.word(at + 2)), net(l.word(at + 3))) {
            (Some(real), Some(mapped)) => self.nats.push(Nat {
                real,
                mapped,
                line: l.no,
            }),
            _ => problems.push((
                l.no,
                "the addresses are not resolved, not translated".into(),
            )),
        }
    }

    /// `net` on `side`: the other side of a translation it falls in, or
    /// itself; with the translation's line when one applied.
    pub fn to_side(&self, net: IpNet, side: AddressSide) -> (IpNet, Option<usize>) {
        for nat in &self.nats {
            let (from, to) = match side {
                AddressSide::Real => (nat.mapped, nat.real),
                AddressSide::Mapped => (nat.real, nat.mapped),
            };
            if from.contains(&net)
                && from.prefix_len() <= net.prefix_len()
                && let Some(moved) = shift(net, from, to)
            {
                return (moved, Some(nat.line));
            }
        }
        (net, None)
    }

    /// Reads one side of an access-list entry at `words[*i]`, moving `i`
    /// past it.
    pub fn spec(
        &self,
        words: &[String],
        i: &mut usize,
        notes: &mut Vec<String>,
    ) -> Result<Spec, String> {
        let w = |k: usize| words.get(k).map_or("", String::as_str);
        let first = w(*i).to_ascii_lowercase();
        *i += 1;
        match first.as_str() {
            "" => Err("an address is missing".into()),
            "any" => Ok(Spec::Any { v4: true, v6: true }),
            "any4" => Ok(Spec::Any {
                v4: true,
                v6: false,
            }),
            "any6" => Ok(Spec::Any {
                v4: false,
                v6: true,
            }),
            "host" => {
                let a = self
                    .address(w(*i))
                    .ok_or_else(|| format!("`{}`: not an address", w(*i)))?;
                *i += 1;
                Ok(Spec::Nets(vec![a.into()]))
            }
            "object" | "object-group" => {
                let name = w(*i);
                *i += 1;
                self.networks
                    .get(name)
                    .cloned()
                    .map(Spec::Nets)
                    .ok_or_else(|| format!("`{first} {name}`: no such network object"))
            }
            "interface" => {
                *i += 1;
                Ok(Spec::Interface(w(*i - 1).to_string()))
            }
            _ => {
                let word = &words[*i - 1];
                if let Ok(net) = word.parse::<IpNet>() {
                    return Ok(Spec::Nets(vec![net.trunc()]));
                }
                let addr = self
                    .address(word)
                    .ok_or_else(|| format!("`{word}`: not an address"))?;
                if let (IpAddr::V4(_), Some(len)) = (addr, mask_len(w(*i))) {
                    *i += 1;
                    let net = IpNet::new(addr, len).map_err(|e| e.to_string())?;
                    return Ok(Spec::Nets(vec![net.trunc()]));
                }
                // The firewall wants `host A` or `A MASK`; a bare address
                // (as documents print it) can only mean the host.
                notes.push(format!(
                    "`{word}` without `host` or a mask: read as the host {addr}"
                ));
                Ok(Spec::Nets(vec![addr.into()]))
            }
        }
    }

    /// One access-list entry; `Ok(None)` for a `remark`.
    pub fn acl_entry(&self, line: &Line) -> Result<Option<AclEntry>, String> {
        let words = &line.words;
        let mut i = 2;
        let w = |k: usize| words.get(k).map_or("", String::as_str).to_ascii_lowercase();
        if w(i) == "line" {
            i += 2;
        }
        match w(i).as_str() {
            "remark" => return Ok(None),
            "extended" => i += 1,
            "standard" | "webtype" | "ethertype" => {
                return Err(format!("a {} access-list: not translated", w(i)));
            }
            _ => {}
        }
        let permit = match w(i).as_str() {
            "permit" => true,
            "deny" => false,
            other => return Err(format!("expected permit or deny, found `{other}`")),
        };
        i += 1;
        let mut protocol = w(i);
        i += 1;
        if protocol == "object-group" || protocol == "object" {
            // A service object: which protocols and ports it holds is not
            // read; taken as possibly TCP to any port.
            protocol = "tcp".into();
            i += 1;
        }
        let mut notes = Vec::new();
        let src = self.spec(words, &mut i, &mut notes)?;
        let src_ports = ports(self, words, &mut i)?;
        let dst = self.spec(words, &mut i, &mut notes)?;
        let dst_ports = ports(self, words, &mut i)?;
        let inactive = words[i.min(words.len())..]
            .iter()
            .any(|w| w.eq_ignore_ascii_case("inactive"));
        Ok(Some(AclEntry {
            line: line.clone(),
            permit,
            protocol,
            src,
            src_ports,
            dst,
            dst_ports,
            inactive,
            notes,
        }))
    }
}

/// `A MASK` (IPv4) or `A/LEN`.
fn subnet(objects: &Objects, a: &str, mask: &str) -> Option<IpNet> {
    if let Ok(net) = a.parse::<IpNet>() {
        return Some(net.trunc());
    }
    let addr = objects.address(a)?;
    IpNet::new(addr, mask_len(mask)?).ok().map(|n| n.trunc())
}

/// `net`, inside `from`, moved to the same place inside `to`.
fn shift(net: IpNet, from: IpNet, to: IpNet) -> Option<IpNet> {
    let offset = |a: IpAddr, base: IpAddr| -> Option<u128> {
        match (a, base) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                Some(u128::from(u32::from(a).wrapping_sub(u32::from(b))))
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => Some(u128::from(a).wrapping_sub(u128::from(b))),
            _ => None,
        }
    };
    let off = offset(net.addr(), from.network())?;
    let addr = match to.network() {
        IpAddr::V4(b) => IpAddr::V4(Ipv4Addr::from(u32::from(b).wrapping_add(off as u32))),
        IpAddr::V6(b) => IpAddr::V6(Ipv6Addr::from(u128::from(b).wrapping_add(off))),
    };
    let len = net.prefix_len() + to.prefix_len().saturating_sub(from.prefix_len());
    IpNet::new(addr, len.min(to.max_prefix_len())).ok()
}

/// A port condition at `words[*i]`, if there is one.
fn ports(objects: &Objects, words: &[String], i: &mut usize) -> Result<Ports, String> {
    let w = |k: usize| words.get(k).map_or("", String::as_str);
    let op = w(*i).to_ascii_lowercase();
    let num = |k: usize| port(w(k)).ok_or_else(|| format!("`{}`: not a port", w(k)));
    let p = match op.as_str() {
        "eq" => Ports::Eq(num(*i + 1)?),
        "neq" => Ports::Neq(num(*i + 1)?),
        "lt" => Ports::Lt(num(*i + 1)?),
        "gt" => Ports::Gt(num(*i + 1)?),
        "range" => {
            let p = Ports::Range(num(*i + 1)?, num(*i + 2)?);
            *i += 3;
            return Ok(p);
        }
        // After an address, `object-group NAME` is either a service group
        // (ports, not read) or the next address's network group.
        "object-group" if !objects.networks.contains_key(w(*i + 1)) => {
            Ports::Group(w(*i + 1).to_string())
        }
        _ => return Ok(Ports::Any),
    };
    *i += 2;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::asa::lines;

    fn objects(text: &str) -> Objects {
        let (o, problems) = Objects::collect(&lines::parse(text));
        assert!(problems.is_empty(), "{problems:?}");
        o
    }

    fn entry(o: &Objects, text: &str) -> AclEntry {
        o.acl_entry(&lines::lines(text)[0]).unwrap().unwrap()
    }

    #[test]
    fn masks_ports_and_durations() {
        assert_eq!(mask_len("255.255.255.255"), Some(32));
        assert_eq!(mask_len("255.255.255.0"), Some(24));
        assert_eq!(mask_len("0.0.0.0"), Some(0));
        assert_eq!(mask_len("255.0.255.0"), None);
        assert_eq!(port("smtp"), Some(25));
        assert_eq!(port("587"), Some(587));
        assert_eq!(port("gopher7"), None);
        assert_eq!(duration("1:00:00"), Some(3600));
        assert_eq!(duration("0:10:00"), Some(600));
        assert_eq!(duration("0:00:30"), Some(30));
        assert_eq!(duration("x"), None);
    }

    #[test]
    fn acl_entries_of_every_form() {
        let o = objects(
            "name 192.168.1.1 esa\nobject network mail\n host 192.168.1.25\nobject-group network both\n network-object object mail\n network-object host esa\n network-object 10.1.0.0 255.255.0.0\n",
        );
        let e = entry(&o, "access-list a extended permit ip any 192.168.1.1");
        assert_eq!(e.dst, Spec::Nets(vec!["192.168.1.1/32".parse().unwrap()]));
        assert!(e.src.is_any() && e.permit);
        assert_eq!(e.notes.len(), 1, "a bare address is read as a host");
        let e = entry(
            &o,
            "access-list a line 3 extended deny tcp host esa any eq smtp",
        );
        assert!(!e.permit);
        assert_eq!(e.src, Spec::Nets(vec!["192.168.1.1/32".parse().unwrap()]));
        assert_eq!(e.dst_ports, Ports::Eq(25));
        assert!(e.notes.is_empty());
        let e = entry(
            &o,
            "access-list a extended permit tcp 10.0.0.0 255.0.0.0 object-group both range 20 30",
        );
        assert_eq!(e.src, Spec::Nets(vec!["10.0.0.0/8".parse().unwrap()]));
        assert_eq!(
            e.dst,
            Spec::Nets(
                ["192.168.1.25/32", "192.168.1.1/32", "10.1.0.0/16"]
                    .map(|n| n.parse().unwrap())
                    .to_vec()
            )
        );
        assert_eq!(e.can_match_tcp(25), Some(true));
        assert_eq!(e.can_match_tcp(587), Some(false));
        let e = entry(&o, "access-list a permit ip any6 2001:db8::/64 inactive");
        assert_eq!(
            e.src,
            Spec::Any {
                v4: false,
                v6: true
            }
        );
        assert!(e.inactive);
        assert!(
            o.acl_entry(&lines::lines("access-list a remark x")[0])
                .unwrap()
                .is_none()
        );
        assert!(
            o.acl_entry(&lines::lines("access-list a permit ip any host nowhere")[0])
                .is_err()
        );
    }

    #[test]
    fn translations_move_addresses_between_sides() {
        let o = objects(
            "static (inside,outside) 1.1.1.1 192.168.1.1 netmask 255.255.255.255 tcp 50 100\nobject network web\n host 192.168.1.80\n nat (inside,outside) static 1.1.1.80\nobject network lan\n subnet 192.168.2.0 255.255.255.0\n nat (inside,outside) static 1.1.2.0\n",
        );
        // `static` lines are read by the importer itself; here only objects.
        assert_eq!(o.nats.len(), 2);
        let host = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(
            o.to_side(host("1.1.1.80/32"), AddressSide::Real),
            (host("192.168.1.80/32"), Some(4))
        );
        assert_eq!(
            o.to_side(host("192.168.2.7/32"), AddressSide::Mapped),
            (host("1.1.2.7/32"), Some(7))
        );
        assert_eq!(
            o.to_side(host("192.168.2.7/32"), AddressSide::Real),
            (host("192.168.2.7/32"), None)
        );
    }
}
