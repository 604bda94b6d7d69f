//! The cluster lab: many gateways behind a router that spreads flows over
//! them with ECMP, each gateway announcing the service prefix over BGP.
//!
//! ```text
//!  client             router (BIRD, AS 65000)        gateway i (BIRD, AS 65001)         server
//!  eth0 198.18.0.2 ── eth0 198.18.0.1
//!                     gwI  198.18.(16+i).1/24 ─────── outside 198.18.(16+i).2/24
//!                                                     inside  198.18.(32+i).1/24 ─────── gwI 198.18.(32+i).25/24
//!                                                                                        lo  198.18.1.25, 198.18.1.26,
//!                                                                                            2001:2:0:1::25
//! ```
//! IPv6 alike: 2001:2::/64 at the client, 2001:2:0:(0x10+i)::/64 and
//! 2001:2:0:(0x20+i)::/64 on gateway i's links. The router hashes on the
//! 5-tuple (`fib_multipath_hash_policy = 1`). Each gateway's BIRD has the
//! service prefixes as static protocols [`SERVICE_PROTOCOLS`], disabled at
//! start: whoever drives readiness (`deploy/bird/inspector-announce`)
//! enables them. The server returns what it answers to a gateway's own
//! address over that gateway's link; its default route (client addresses)
//! is ECMP over every gateway.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{
    CLIENT_V4, CLIENT_V6, CLIENT2_V4, CLIENT3_V4, MAIL_GATEWAY_V4, Netns, SERVER_V4, SERVER_V6,
    ScopedChild, end_host, inspector::Scratch, veth,
};

/// The router's address facing the clients.
pub const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
/// The prefixes every gateway announces while its inspector is ready.
pub const SERVICE_V4: &str = "198.18.1.0/24";
pub const SERVICE_V6: &str = "2001:2:0:1::/64";
/// BIRD's static protocols holding them on each gateway.
pub const SERVICE_PROTOCOLS: [&str; 2] = ["service4", "service6"];
/// Gateways a lab may have (one /24 per link in 198.18.16.0/20).
pub const MAX_MEMBERS: usize = 15;
const ROUTER_AS: u32 = 65000;
const GATEWAY_AS: u32 = 65001;

/// One gateway of the cluster, numbered from 1.
pub struct Member {
    pub index: usize,
    pub ns: Netns,
    /// Its BIRD's control socket (for `birdc -s`).
    pub bird_socket: PathBuf,
}

impl Member {
    /// The address the router reaches it at (its BGP next hop).
    pub fn outside_v4(&self) -> Ipv4Addr {
        link_v4(16, self.index, 2)
    }

    /// Its address towards the server: what the server sees of sessions it
    /// inspects with `upstream-source = "gateway"`.
    pub fn inside_v4(&self) -> Ipv4Addr {
        link_v4(32, self.index, 1)
    }

    /// Runs `birdc ARGS` against this member's BIRD.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        birdc(&self.bird_socket, args)
    }

    /// Starts `deploy/bird/inspector-announce`: the service prefixes are
    /// announced while `INSPECTOR --pin-dir PIN_DIR status` succeeds
    /// (checked every `interval`), withdrawn otherwise and when the guard
    /// drops. Its log goes to `log`.
    pub fn announce_while_ready(
        &self,
        inspector: &Path,
        pin_dir: &Path,
        interval: Duration,
        log: &Path,
    ) -> Result<ScopedChild> {
        let file = std::fs::File::create(log)?;
        let mut cmd = self.ns.command(announce_script());
        cmd.env("INSPECTOR_PIN_DIR", pin_dir)
            .arg("-i")
            .arg(format!("{}", interval.as_secs_f64()))
            .arg("-s")
            .arg(&self.bird_socket)
            .arg("-b")
            .arg(inspector)
            .args(SERVICE_PROTOCOLS)
            .stdout(file.try_clone()?)
            .stderr(file);
        self.ns.spawn(&mut cmd)
    }
}

/// The readiness-to-BGP loop shipped in deploy/.
pub fn announce_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/bird/inspector-announce")
}

fn link_v4(base: u8, index: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, base + index as u8, host)
}

fn link_v6(base: u16, index: usize, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 2, 0, base + index as u16, 0, 0, 0, host)
}

pub struct Cluster {
    pub client: Netns,
    pub router: Netns,
    pub members: Vec<Member>,
    pub server: Netns,
    router_socket: PathBuf,
    birds: Vec<ScopedChild>,
    dir: Option<Scratch>,
    _claim: crate::leftovers::Claim,
}

impl Cluster {
    /// Builds the namespaces `<prefix>-client`, `-rtr`, `-gw1`…`-gwN` and
    /// `-server`, starts BIRD on the router and each gateway and waits
    /// until every BGP session is established (nothing is announced yet).
    /// A leftover cluster with the same prefix, and those of killed runs
    /// ([`crate::leftovers`]), are removed first.
    pub fn create(prefix: &str, members: usize) -> Result<Self> {
        if !crate::is_root() {
            bail!("the cluster lab needs root (network namespaces, veth, XDP): run as root");
        }
        let claim = crate::leftovers::Claim::take();
        crate::leftovers::remove();
        if !(1..=MAX_MEMBERS).contains(&members) {
            bail!("a cluster lab has 1 to {MAX_MEMBERS} gateways, not {members}");
        }
        let dir = Scratch::new(std::env::temp_dir().join(format!("{prefix}-bird")))?;
        let mut cluster = Self {
            client: Netns::new(format!("{prefix}-client")),
            router: Netns::new(format!("{prefix}-rtr")),
            members: (1..=members)
                .map(|index| Member {
                    index,
                    ns: Netns::new(format!("{prefix}-gw{index}")),
                    bird_socket: dir.path().join(format!("gw{index}.ctl")),
                })
                .collect(),
            server: Netns::new(format!("{prefix}-server")),
            router_socket: dir.path().join("router.ctl"),
            birds: Vec::new(),
            dir: Some(dir),
            _claim: claim,
        };
        cluster
            .build()
            .and_then(|()| cluster.start_birds())
            .with_context(|| format!("building cluster lab {prefix}"))?;
        Ok(cluster)
    }

    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut all = vec![&self.client, &self.router, &self.server];
        all.extend(self.members.iter().map(|m| &m.ns));
        all
    }

    fn build(&self) -> Result<()> {
        // A killed run with more gateways leaves more than these.
        let prefix = self.router.name.trim_end_matches("-rtr");
        for i in self.members.len() + 1..=MAX_MEMBERS {
            Netns::new(format!("{prefix}-gw{i}")).delete();
        }
        for ns in self.namespaces() {
            ns.create_fresh()?;
        }
        veth(&self.client, "eth0", &self.router, "eth0")?;
        end_host(
            &self.client,
            &[CLIENT_V4, CLIENT2_V4, CLIENT3_V4],
            CLIENT_V6,
            ROUTER_V4,
            ROUTER_V6,
        )?;
        let r = &self.router;
        r.addr("eth0", &[ROUTER_V4.into()], 24)?;
        r.addr("eth0", &[ROUTER_V6.into()], 64)?;
        for ns in [&self.router, &self.server] {
            // ECMP on the 5-tuple, so one client's sessions spread too.
            ns.sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
            ns.sysctl("net.ipv6.fib_multipath_hash_policy", "1")?;
        }
        let s = &self.server;
        s.addr("lo", &[SERVER_V4.into(), MAIL_GATEWAY_V4.into()], 32)?;
        s.addr("lo", &[SERVER_V6.into()], 128)?;
        for m in &self.members {
            self.build_member(m)?;
        }
        for ns in [&self.router]
            .into_iter()
            .chain(self.members.iter().map(|m| &m.ns))
        {
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        }
        // The server's way back to the clients: over every gateway.
        let mut v4 = vec!["route", "add", "default"];
        let mut v6 = vec!["-6", "route", "add", "default"];
        let hops: Vec<(String, String, String)> = self
            .members
            .iter()
            .map(|m| {
                (
                    m.inside_v4().to_string(),
                    link_v6(0x20, m.index, 1).to_string(),
                    format!("gw{}", m.index),
                )
            })
            .collect();
        for (h4, h6, dev) in &hops {
            v4.extend(["nexthop", "via", h4, "dev", dev]);
            v6.extend(["nexthop", "via", h6, "dev", dev]);
        }
        s.ip(&v4)?;
        s.ip(&v6)
    }

    fn build_member(&self, m: &Member) -> Result<()> {
        let (g, i) = (&m.ns, m.index);
        let dev = format!("gw{i}");
        veth(&self.router, &dev, g, crate::OUTSIDE)?;
        veth(g, crate::INSIDE, &self.server, &dev)?;
        self.router.addr(&dev, &[link_v4(16, i, 1).into()], 24)?;
        self.router.addr(&dev, &[link_v6(0x10, i, 1).into()], 64)?;
        g.addr(crate::OUTSIDE, &[m.outside_v4().into()], 24)?;
        g.addr(crate::OUTSIDE, &[link_v6(0x10, i, 2).into()], 64)?;
        g.addr(crate::INSIDE, &[m.inside_v4().into()], 24)?;
        g.addr(crate::INSIDE, &[link_v6(0x20, i, 1).into()], 64)?;
        self.server.addr(&dev, &[link_v4(32, i, 25).into()], 24)?;
        self.server
            .addr(&dev, &[link_v6(0x20, i, 0x25).into()], 64)?;
        g.ip(&[
            "route",
            "add",
            "default",
            "via",
            &link_v4(16, i, 1).to_string(),
        ])?;
        g.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &link_v6(0x10, i, 1).to_string(),
        ])?;
        g.ip(&[
            "route",
            "add",
            SERVICE_V4,
            "via",
            &link_v4(32, i, 25).to_string(),
        ])?;
        g.ip(&[
            "-6",
            "route",
            "add",
            SERVICE_V6,
            "via",
            &link_v6(0x20, i, 0x25).to_string(),
        ])
    }

    fn start_birds(&mut self) -> Result<()> {
        let dir = self.dir.as_ref().expect("dir until drop").path().to_owned();
        let router_conf = dir.join("router.conf");
        std::fs::write(&router_conf, router_config(self.members.len()))?;
        let bird = start_bird(&self.router, &router_conf, &self.router_socket)?;
        self.birds.push(bird);
        for m in &self.members {
            let conf = dir.join(format!("gw{}.conf", m.index));
            std::fs::write(&conf, member_config(m.index))?;
            let bird = start_bird(&m.ns, &conf, &m.bird_socket)?;
            self.birds.push(bird);
        }
        let want = 2 * self.members.len();
        let established = || {
            birdc(&self.router_socket, &["show", "protocols"])
                .is_ok_and(|out| out.matches("Established").count() == want)
        };
        if !crate::inspector::wait_until(Duration::from_secs(30), established) {
            bail!(
                "the router's BGP sessions did not come up:\n{}",
                birdc(&self.router_socket, &["show", "protocols"]).unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Postfix's smtp-sink on the server's `0.0.0.0:25` with `backlog`,
    /// listening when this returns.
    pub fn start_sink(&self, backlog: u32) -> Result<ScopedChild> {
        let mut cmd = self.server.command("smtp-sink");
        cmd.args(["-u", "nobody", "0.0.0.0:25", &backlog.to_string()]);
        let sink = self
            .server
            .spawn(&mut cmd)
            .context("starting smtp-sink (cargo xtask setup installs postfix)")?;
        self.server.wait_listening("0.0.0.0:25")?;
        Ok(sink)
    }

    /// The policy's `[cluster]` table for this lab: each member's address
    /// towards the router (its BGP next hop), so one policy file serves
    /// every member, each finding itself by its own address.
    pub fn cluster_table(&self) -> String {
        let addresses: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("\"{}\"", m.outside_v4()))
            .collect();
        format!("[cluster]\nmembers = [{}]\n", addresses.join(", "))
    }

    /// The members the router's route to [`SERVICE_V4`] leads to now.
    pub fn routed_members(&self) -> Result<Vec<usize>> {
        let out = self
            .router
            .command("ip")
            .args(["route", "show", SERVICE_V4])
            .output()
            .context("reading the router's routes")?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(self
            .members
            .iter()
            .filter(|m| text.contains(&format!("via {} ", m.outside_v4())))
            .map(|m| m.index)
            .collect())
    }

    /// The member whose inside address is `addr`, as a server saw it.
    pub fn member_at(&self, addr: IpAddr) -> Option<usize> {
        self.members
            .iter()
            .find(|m| IpAddr::from(m.inside_v4()) == addr)
            .map(|m| m.index)
    }

    /// Runs `birdc ARGS` against the router's BIRD.
    pub fn router_birdc(&self, args: &[&str]) -> Result<String> {
        birdc(&self.router_socket, args)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // BIRD first: a process keeps its namespace alive after `ip netns del`.
        self.birds.clear();
        for ns in self.namespaces() {
            ns.delete();
        }
        self.dir.take();
    }
}

fn start_bird(ns: &Netns, conf: &Path, socket: &Path) -> Result<ScopedChild> {
    let mut cmd = ns.command("bird");
    // -f: in the foreground, so the guard's signal stops it.
    cmd.arg("-f")
        .arg("-c")
        .arg(conf)
        .arg("-s")
        .arg(socket)
        .stdout(std::process::Stdio::null());
    ns.spawn(&mut cmd)
        .context("starting BIRD (cargo xtask setup installs bird2)")
}

fn birdc(socket: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("birdc")
        .arg("-s")
        .arg(socket)
        .args(args)
        .output()
        .context("running birdc")?;
    if !out.status.success() {
        bail!("birdc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Short timers, so a dead gateway (BIRD gone with it) is dropped in 3 s.
const TIMERS: &str = "hold time 3; keepalive time 1; connect retry time 1;";

/// The router: one eBGP session per gateway and address family, every
/// equal route merged into one ECMP route in the kernel.
fn router_config(members: usize) -> String {
    let mut conf = format!(
        "router id {ROUTER_V4};\nprotocol device {{}}\n\
         protocol kernel {{ ipv4 {{ export all; }}; merge paths on; }}\n\
         protocol kernel {{ ipv6 {{ export all; }}; merge paths on; }}\n"
    );
    for i in 1..=members {
        for (family, local, peer) in [
            (
                "ipv4",
                link_v4(16, i, 1).to_string(),
                link_v4(16, i, 2).to_string(),
            ),
            (
                "ipv6",
                link_v6(0x10, i, 1).to_string(),
                link_v6(0x10, i, 2).to_string(),
            ),
        ] {
            conf += &format!(
                "protocol bgp gw{i}_{family} {{ local {local} as {ROUTER_AS}; \
                 neighbor {peer} as {GATEWAY_AS}; {TIMERS} \
                 {family} {{ import all; export none; }}; }}\n"
            );
        }
    }
    conf
}

/// A gateway: the service prefixes as static routes, disabled until
/// readiness enables them, exported to the router and nothing imported.
fn member_config(i: usize) -> String {
    let [s4, s6] = SERVICE_PROTOCOLS;
    let mut conf = format!(
        "router id {};\nprotocol device {{}}\n\
         protocol static {s4} {{ disabled; ipv4; route {SERVICE_V4} via {}; }}\n\
         protocol static {s6} {{ disabled; ipv6; route {SERVICE_V6} via {}; }}\n",
        link_v4(16, i, 2),
        link_v4(32, i, 25),
        link_v6(0x20, i, 0x25),
    );
    for (family, local, peer, static_proto) in [
        (
            "ipv4",
            link_v4(16, i, 2).to_string(),
            link_v4(16, i, 1).to_string(),
            s4,
        ),
        (
            "ipv6",
            link_v6(0x10, i, 2).to_string(),
            link_v6(0x10, i, 1).to_string(),
            s6,
        ),
    ] {
        conf += &format!(
            "protocol bgp up_{family} {{ local {local} as {GATEWAY_AS}; \
             neighbor {peer} as {ROUTER_AS}; {TIMERS} \
             {family} {{ import none; export where proto = \"{static_proto}\"; }}; }}\n"
        );
    }
    conf
}
