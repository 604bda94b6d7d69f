//! Lab topologies in network namespaces: `client ─ gateway ─ server`, made
//! with iproute2 and removed on drop (also when a test panics).
//!
//! ```text
//!  client                 gateway (inspector)                server
//!  eth0 198.18.0.2/24 ── outside 198.18.0.1/24
//!       198.18.0.3/24     inside  198.18.1.1/24 ───────── eth0 198.18.1.25/24 (mail server)
//!       198.18.0.6/24
//!       2001:2::2/64      outside 2001:2::1/64                 198.18.1.26/24 (mail gateway)
//!                         inside  2001:2:0:1::1/64             2001:2:0:1::25/64
//! ```
//! Addresses are from 198.18.0.0/15 and 2001:2::/48, the ranges reserved for
//! benchmarking network devices; nothing leaves the namespaces.

pub mod cluster;
pub mod exim;
pub mod figures;
pub mod frame_flood;
pub mod inspector;
pub mod kubernetes;
pub mod leftovers;
pub mod load;
pub mod messages;
mod netns;
mod nft;
pub mod packets;
pub mod raw;
pub mod syn;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail};
pub use netns::{Netns, ScopedChild};

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// A second client address, for per-client rules.
pub const CLIENT2_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// A third, for what a server decides per client address.
pub const CLIENT3_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 6);
pub const GATEWAY_OUTSIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const GATEWAY_INSIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 25);
/// The mail gateway of the classic firewall deployment (exempt in its policy).
pub const MAIL_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 26);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);
pub const GATEWAY_OUTSIDE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
pub const GATEWAY_INSIDE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 1);
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 0x25);

/// The gateway's interface facing the clients (where the inspector attaches).
pub const OUTSIDE: &str = "outside";
/// The gateway's interface facing the servers.
pub const INSIDE: &str = "inside";

pub struct Lab {
    pub client: Netns,
    pub gateway: Netns,
    pub server: Netns,
    _claim: leftovers::Claim,
}

impl Lab {
    /// Creates the three namespaces, named `<prefix>-client` and so on. A
    /// leftover lab with the same prefix, and those of killed runs
    /// ([`leftovers`]), are removed first.
    pub fn create(prefix: &str) -> Result<Self> {
        if !is_root() {
            bail!("the lab needs root (network namespaces, veth, XDP): run as root");
        }
        let claim = leftovers::Claim::take();
        leftovers::remove();
        let lab = Self {
            client: Netns::new(format!("{prefix}-client")),
            gateway: Netns::new(format!("{prefix}-gw")),
            server: Netns::new(format!("{prefix}-server")),
            _claim: claim,
        };
        lab.build()
            .with_context(|| format!("building lab {prefix}"))?;
        Ok(lab)
    }

    fn build(&self) -> Result<()> {
        for ns in self.namespaces() {
            ns.create_fresh()?;
        }
        veth(&self.client, "eth0", &self.gateway, OUTSIDE)?;
        veth(&self.gateway, INSIDE, &self.server, "eth0")?;

        end_host(
            &self.client,
            &[CLIENT_V4, CLIENT2_V4, CLIENT3_V4],
            CLIENT_V6,
            GATEWAY_OUTSIDE_V4,
            GATEWAY_OUTSIDE_V6,
        )?;
        end_host(
            &self.server,
            &[SERVER_V4, MAIL_GATEWAY_V4],
            SERVER_V6,
            GATEWAY_INSIDE_V4,
            GATEWAY_INSIDE_V6,
        )?;

        // The client opens thousands of connections a second to one server:
        // without reusing its ports in TIME-WAIT (safe with timestamps, RFC
        // 6191), 28,000 of them fill the port range within seconds, and
        // each connect then searches it, which cut a client's sessions to
        // about 470/s and made every sessions figure measure that search.
        self.client.sysctl("net.ipv4.tcp_tw_reuse", "1")?;

        let g = &self.gateway;
        g.addr(OUTSIDE, &[GATEWAY_OUTSIDE_V4.into()], 24)?;
        g.addr(OUTSIDE, &[GATEWAY_OUTSIDE_V6.into()], 64)?;
        g.addr(INSIDE, &[GATEWAY_INSIDE_V4.into()], 24)?;
        g.addr(INSIDE, &[GATEWAY_INSIDE_V6.into()], 64)?;
        g.sysctl("net.ipv4.ip_forward", "1")?;
        g.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        Ok(())
    }

    /// The end hosts' interfaces, the far ends of the gateway's veths
    /// (where a pass-only XDP program lets native `XDP_TX` frames arrive).
    pub fn end_host_interfaces(&self) -> [(&Netns, &'static str); 2] {
        [(&self.client, "eth0"), (&self.server, "eth0")]
    }

    pub fn namespaces(&self) -> [&Netns; 3] {
        [&self.client, &self.gateway, &self.server]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veths (and their peers) and
        // detaches any XDP program on them.
        for ns in self.namespaces() {
            ns.delete();
        }
    }
}

impl Netns {
    /// Makes this namespace anew (a leftover of the same name removed),
    /// its loopback up.
    pub(crate) fn create_fresh(&self) -> Result<()> {
        self.delete();
        ip(&["netns", "add", &self.name])?;
        self.ip(&["link", "set", "lo", "up"])?;
        // No duplicate address detection: a link-local address still
        // tentative delays neighbour discovery and so the first packets.
        self.sysctl("net.ipv6.conf.default.accept_dad", "0")
    }
}

/// Addresses and default routes (via the gateway) of a host on `eth0`.
pub(crate) fn end_host(
    ns: &Netns,
    v4: &[Ipv4Addr],
    v6: Ipv6Addr,
    gw4: Ipv4Addr,
    gw6: Ipv6Addr,
) -> Result<()> {
    let v4: Vec<IpAddr> = v4.iter().map(|&a| a.into()).collect();
    ns.addr("eth0", &v4, 24)?;
    ns.addr("eth0", &[v6.into()], 64)?;
    ns.ip(&["route", "add", "default", "via", &gw4.to_string()])?;
    ns.ip(&["-6", "route", "add", "default", "via", &gw6.to_string()])
}

/// A veth pair from `a`/`a_dev` to `b`/`b_dev`. It is made in the root
/// namespace under unique temporary names (parallel tests), then moved.
pub(crate) fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> Result<()> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let id = format!(
        "lv{:x}{:x}",
        std::process::id() & 0xfffff,
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let (ta, tb) = (format!("{id}a"), format!("{id}b"));
    ip(&["link", "add", &ta, "type", "veth", "peer", "name", &tb])?;
    for (tmp, ns, dev) in [(&ta, a, a_dev), (&tb, b, b_dev)] {
        ip(&["link", "set", tmp, "netns", &ns.name])?;
        ns.ip(&["link", "set", tmp, "name", dev])?;
        ns.ip(&["link", "set", dev, "up"])?;
    }
    Ok(())
}

/// Runs `ip ARGS` in the root namespace.
pub fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args))
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Names of the network namespaces that exist now.
pub fn list_namespaces() -> Vec<String> {
    std::fs::read_dir(netns::NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `addr` is one of the lab's (so callers can refuse others).
pub fn is_lab_address(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.octets()[0] == 198 && (a.octets()[1] & 0xfe) == 18,
        IpAddr::V6(a) => a.segments()[0] == 0x2001 && a.segments()[1] == 2 && a.segments()[2] == 0,
    }
}
