//! The connection limits as an attacker meets them, on a real lab: spoofed
//! SYN floods against a real server (Postfix's smtp-sink) while a real
//! client (swaks) delivers a message; per-client limits in every
//! combination with the server's; half-open flows reset at the server when
//! they expire or are displaced; the servers' side attached by the daemon
//! itself. Needs root; fails, never skips, without it.

mod support;

use std::{
    io::Read,
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use inspector_lab::{
    CLIENT_V4, CLIENT_V6, CLIENT2_V4, INSIDE, Lab, OUTSIDE, SERVER_V4, SERVER_V6, syn::SynFlood,
};
use support::{
    PinDir, PolicyFile,
    flood::{PORT, route_spoofed_sources_to_client, start_smtp_sink, swaks_during_flood, syn_recv},
    lab, start_daemon_with, stats_json, wait_until, xdp_attached,
};

/// Generic XDP, as in the other intercept tests (see limits.rs): native
/// `XDP_TX` on a veth needs an XDP program on its peer.
const NO_PROXY: [&str; 3] = ["--no-proxy", "--xdp-mode", "generic"];

/// A server's limits, as a `[[server]]` entry.
#[derive(Clone, Copy)]
struct Limits {
    max_conns: u32,
    max_embryonic: u32,
    per_client_max: u32,
    per_client_embryonic_max: u32,
}

impl Limits {
    fn entry(&self, server: IpAddr, action: &str) -> String {
        format!(
            "[[server]]\naddress = \"{server}\"\nmax-conns = {}\nmax-embryonic = {}\n\
             per-client-max = {}\nper-client-embryonic-max = {}\non-embryonic-limit = \"{action}\"\n",
            self.max_conns, self.max_embryonic, self.per_client_max, self.per_client_embryonic_max
        )
    }
}

fn counter(json: &serde_json::Value, section: &str, name: &str) -> u64 {
    json["limits"][section][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no limits.{section}.{name} in {json}"))
}

fn server_counts(pins: &PinDir, server: IpAddr) -> (u64, u64) {
    let json = stats_json(pins.path());
    let s = json["limits"]["servers"]
        .as_array()
        .expect("limits.servers")
        .iter()
        .find(|s| s["address"] == server.to_string())
        .unwrap_or_else(|| panic!("{server} not in {json}"))
        .clone();
    (
        s["embryonic"].as_u64().unwrap(),
        s["established"].as_u64().unwrap(),
    )
}

/// A spoofed flood with per-client limits next to the server's: the real
/// client is answered with a cookie (never dropped: no established flow
/// fills a limit) and delivers its message; the server never holds more
/// half-open connections than the lowest server limit.
fn per_client_through_flood(test: &str, limits: Limits) {
    let (client, server) = (IpAddr::from(CLIENT_V4), IpAddr::from(SERVER_V4));
    let lab = lab(test);
    let pins = PinDir::new(test);
    let policy = PolicyFile::new(test, &limits.entry(server, "intercept"));
    let _daemon = start_daemon_with(
        &lab,
        &pins,
        &[OUTSIDE, INSIDE],
        Some(policy.path()),
        &NO_PROXY,
    );
    route_spoofed_sources_to_client(&lab);
    let _sink = start_smtp_sink(&lab, server);

    let through = swaks_during_flood(&lab, client, server);
    let json = stats_json(pins.path());
    through.assert_delivered(&json.to_string());
    let held = limits.max_conns.min(limits.max_embryonic) as usize;
    assert!(through.most > 0, "the flood reached the server at all");
    assert!(
        through.most <= held,
        "the server held {} half-open",
        through.most
    );
    assert!(
        counter(&json, "intercept", "syn-cookies-sent") >= 500 - held as u64,
        "{json}"
    );
    assert!(
        counter(&json, "intercept", "clients-verified") >= 1,
        "{json}"
    );
    for reason in [
        "max-conns",
        "max-embryonic",
        "per-client-max",
        "per-client-embryonic-max",
    ] {
        assert_eq!(counter(&json, "drops", reason), 0, "{reason}: {json}");
    }
}

/// The document's `tcp 50 100` (max-conns below max-embryonic) with
/// per-client limits below both, the embryonic one lowest.
#[test]
fn per_client_limits_with_tcp_50_100_serve_a_real_client_through_a_flood() {
    per_client_through_flood(
        "pc50",
        Limits {
            max_conns: 50,
            max_embryonic: 100,
            per_client_max: 5,
            per_client_embryonic_max: 2,
        },
    );
}

/// `tcp 3 20` with per-client limits of one: max-conns is full of
/// half-open flows and the client's own limits are as low as they go.
#[test]
fn per_client_limits_of_one_with_tcp_3_20_serve_a_real_client_through_a_flood() {
    per_client_through_flood(
        "pc3",
        Limits {
            max_conns: 3,
            max_embryonic: 20,
            per_client_max: 1,
            per_client_embryonic_max: 1,
        },
    );
}

/// max-embryonic below max-conns, per-client limits between them.
#[test]
fn per_client_limits_with_max_embryonic_below_max_conns_serve_a_real_client() {
    per_client_through_flood(
        "pcemb",
        Limits {
            max_conns: 100,
            max_embryonic: 3,
            per_client_max: 10,
            per_client_embryonic_max: 1,
        },
    );
}

/// The one row where intercept drops: a client whose established
/// connections fill `per-client-max` gets no more, even through a cookie,
/// while another client is served through the same flood.
#[test]
fn per_client_max_full_of_established_drops_that_client_only() {
    let (server, test) = (IpAddr::from(SERVER_V4), "pcfull");
    let lab = lab(test);
    let pins = PinDir::new(test);
    let limits = Limits {
        max_conns: 10,
        max_embryonic: 3,
        per_client_max: 1,
        per_client_embryonic_max: 1,
    };
    let policy = PolicyFile::new(test, &limits.entry(server, "intercept"));
    let _daemon = start_daemon_with(
        &lab,
        &pins,
        &[OUTSIDE, INSIDE],
        Some(policy.path()),
        &NO_PROXY,
    );
    route_spoofed_sources_to_client(&lab);
    let _sink = start_smtp_sink(&lab, server);
    let addr = SocketAddr::new(server, PORT);
    let held = banner(&lab, CLIENT_V4.into(), addr).expect("the first connection");

    let through = swaks_during_flood(&lab, CLIENT2_V4.into(), server);
    through.assert_delivered("another client");
    let err = lab
        .client
        .tcp_connect(CLIENT_V4.into(), addr, Duration::from_secs(2))
        .unwrap()
        .expect_err("over per-client-max");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    let json = stats_json(pins.path());
    assert!(counter(&json, "drops", "per-client-max") >= 1, "{json}");
    drop(held);
}

/// Connects from `client` and reads the server's banner.
fn banner(lab: &Lab, client: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = lab
        .client
        .tcp_connect(client, addr, Duration::from_secs(5))
        .unwrap()?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut b = [0u8; 64];
    let n = s.read(&mut b)?;
    assert!(
        b[..n].starts_with(b"220"),
        "{:?}",
        String::from_utf8_lossy(&b[..n])
    );
    Ok(s)
}

/// Item 3: half-open flows that expire are reset at the server, so its SYN
/// queue empties long before its own SYN-ACK retries (5, about 63 s)
/// would give up; the flood goes on during the expiry. Both actions.
fn expired_flows_are_reset(test: &str, client: IpAddr, server: IpAddr, action: &str) {
    let lab = lab(test);
    let pins = PinDir::new(test);
    let limits = Limits {
        max_conns: 0,
        max_embryonic: 20,
        per_client_max: 0,
        per_client_embryonic_max: 0,
    };
    let policy = PolicyFile::new(
        test,
        &format!(
            "{}\n[timeouts]\nembryonic = 2\n",
            limits.entry(server, action)
        ),
    );
    let _daemon = start_daemon_with(
        &lab,
        &pins,
        &[OUTSIDE, INSIDE],
        Some(policy.path()),
        &NO_PROXY,
    );
    route_spoofed_sources_to_client(&lab);
    let _sink = start_smtp_sink(&lab, server);
    let mut flood = SynFlood::new(&lab.client, SocketAddr::new(server, PORT)).unwrap();
    flood.send(200).unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || syn_recv(&lab.server) == 20),
        "20 half-open at the server: {}",
        syn_recv(&lab.server)
    );
    // Flooding through several expiries: each sweep resets what expired
    // and new SYNs take the freed slots.
    for _ in 0..50 {
        flood.send(20).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    // 30 s: half the time the server would keep them by itself.
    assert!(
        wait_until(Duration::from_secs(30), || syn_recv(&lab.server) == 0),
        "the server's SYN queue still holds {} after the embryonic timeout: {}",
        syn_recv(&lab.server),
        stats_json(pins.path())
    );
    let json = stats_json(pins.path());
    let resets = counter(&json, "intercept", "server-resets");
    assert!(resets >= 40, "{json}");
    // The server took them as resets of its half-open connections.
    assert!(
        embryonic_rsts(&lab) >= 40,
        "{} of {resets}",
        embryonic_rsts(&lab)
    );
    assert_eq!(server_counts(&pins, server), (0, 0), "{json}");
    // And the real client is still served afterwards.
    let out = support::flood::swaks(&lab, client, server);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// RSTs the server's kernel took as resets of half-open connections
/// (`tcp_check_req`'s `LINUX_MIB_EMBRYONICRSTS`).
fn embryonic_rsts(lab: &Lab) -> u64 {
    let out = lab
        .server
        .command("nstat")
        .args(["-az", "TcpExtEmbryonicRsts"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("TcpExtEmbryonicRsts"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("nstat shows TcpExtEmbryonicRsts")
}

#[test]
fn expired_half_open_flows_are_reset_at_the_server_v4() {
    expired_flows_are_reset("rst4", CLIENT_V4.into(), SERVER_V4.into(), "drop");
}

#[test]
fn expired_half_open_flows_are_reset_at_the_server_v6() {
    expired_flows_are_reset("rst6", CLIENT_V6.into(), SERVER_V6.into(), "drop");
}

#[test]
fn expired_half_open_flows_are_reset_at_the_server_with_intercept() {
    expired_flows_are_reset("rsti", CLIENT_V4.into(), SERVER_V4.into(), "intercept");
}

/// A verified client that takes the slot of a half-open flow (`tcp 3 20`,
/// max-conns full of the flood) has that flow reset at the server at the
/// next sweep, long before its embryonic timeout (30 s): the server holds
/// max-conns connections again, the client's included.
#[test]
fn a_displaced_half_open_flow_is_reset_at_once() {
    let (server, test) = (IpAddr::from(SERVER_V4), "displace");
    let lab = lab(test);
    let pins = PinDir::new(test);
    let limits = Limits {
        max_conns: 3,
        max_embryonic: 20,
        per_client_max: 0,
        per_client_embryonic_max: 0,
    };
    let policy = PolicyFile::new(test, &limits.entry(server, "intercept"));
    let _daemon = start_daemon_with(
        &lab,
        &pins,
        &[OUTSIDE, INSIDE],
        Some(policy.path()),
        &NO_PROXY,
    );
    route_spoofed_sources_to_client(&lab);
    let _sink = start_smtp_sink(&lab, server);
    let mut flood = SynFlood::new(&lab.client, SocketAddr::new(server, PORT)).unwrap();
    flood.send(200).unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || syn_recv(&lab.server) == 3),
        "max-conns of half-open at the server: {}",
        syn_recv(&lab.server)
    );
    let held = banner(&lab, CLIENT_V4.into(), SocketAddr::new(server, PORT))
        .expect("a verified client through the cookie");
    assert!(
        wait_until(Duration::from_secs(5), || syn_recv(&lab.server) == 2
            && server_counts(&pins, server) == (2, 1)),
        "one half-open flow reset: {} at the server, counts {:?}",
        syn_recv(&lab.server),
        server_counts(&pins, server)
    );
    let json = stats_json(pins.path());
    assert!(
        counter(&json, "intercept", "half-open-displaced") >= 1,
        "{json}"
    );
    assert_eq!(counter(&json, "intercept", "server-resets"), 1, "{json}");
    drop(held);
}

/// Item 5: started with the clients' side only, the daemon attaches to the
/// interface the route to an intercepted server uses, an intercepted
/// session completes through a flood, and nothing stays attached after
/// the stop.
#[test]
fn the_daemon_attaches_to_the_servers_side_itself() {
    let (server, test) = (IpAddr::from(SERVER_V4), "replyside");
    let lab = lab(test);
    let pins = PinDir::new(test);
    let limits = Limits {
        max_conns: 3,
        max_embryonic: 20,
        per_client_max: 0,
        per_client_embryonic_max: 0,
    };
    let policy = PolicyFile::new(test, &limits.entry(server, "intercept"));
    let daemon = start_daemon_with(&lab, &pins, &[OUTSIDE], Some(policy.path()), &NO_PROXY);
    assert!(
        wait_until(Duration::from_secs(10), || xdp_attached(&lab, INSIDE)),
        "attached to {INSIDE}, the route to {server}"
    );
    route_spoofed_sources_to_client(&lab);
    let _sink = start_smtp_sink(&lab, server);
    let through = swaks_during_flood(&lab, CLIENT_V4.into(), server);
    let json = stats_json(pins.path());
    through.assert_delivered(&json.to_string());
    assert!(counter(&json, "intercept", "servers-opened") >= 1, "{json}");
    let status = daemon.terminate().unwrap();
    assert!(status.success(), "{status}");
    for iface in [OUTSIDE, INSIDE] {
        assert!(!xdp_attached(&lab, iface), "{iface} still attached");
    }
}

/// Item 5: an intercepted server the gateway has no route to is refused
/// at start, the error naming it; nothing is attached.
#[test]
fn the_daemon_refuses_an_intercepted_server_it_cannot_reach() {
    let test = "noroute";
    let lab = lab(test);
    let pins = PinDir::new(test);
    // In the lab's range, routed nowhere.
    let server: IpAddr = "198.18.200.25".parse().unwrap();
    let limits = Limits {
        max_conns: 3,
        max_embryonic: 20,
        per_client_max: 0,
        per_client_embryonic_max: 0,
    };
    let policy = PolicyFile::new(test, &limits.entry(server, "intercept"));
    lab.gateway.ip(&["route", "del", "default"]).ok();
    let out = lab
        .gateway
        .command(support::inspector_bin())
        .arg("--pin-dir")
        .arg(pins.path())
        .args(["run", "--no-proxy", "--iface", OUTSIDE, "--policy"])
        .arg(policy.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started: {stderr}");
    assert!(
        stderr.contains("198.18.200.25") && stderr.contains("TCP intercept"),
        "{stderr}"
    );
    assert!(!xdp_attached(&lab, OUTSIDE), "attached despite the refusal");
}
